#!/usr/bin/env python3
"""Check that the crate's dependencies point down (issue 22).

Reads every .rs file under src/, finds each reference to another top-level
module of the crate (`crate::X`, `use crate::{X, Y::...}`, `super::...` paths
that climb to the crate root, and `pop3server::X` in the binary, src/main.rs)
and fails when

  - the graph of top-level modules has a cycle (a folder such as src/imap/
    counts as one module; each cycle is printed with its edges and the
    file:line of every reference, so you see what to cut), or
  - a module below the top of the house imports `config`.

Comments and string, character and raw-string literals are skipped, so a doc
comment that mentions crate::x does not count. The test-only helper module
`test_support` is left out of the graph entirely.

Usage:
  scripts/check-layers.py              check; one line on success
  scripts/check-layers.py --graph      also print the modules bottom-up,
                                       each with its dependencies
  scripts/check-layers.py --self-test  run the scanner on built-in snippets

Python 3.11 standard library only (Debian 12's /usr/bin/python3).
"""

import os
import sys
import tomllib

import rust_tokens
from rust_tokens import LexError

# The top of the house: configuration is assembled at the top, and only the
# top sees the whole Config (main, the session driver, the `--check` probe and
# the admin commands). Every other module takes its own settings type, which
# it defines itself; `config` imports those types, never the other way round.
# `config` is listed because it may of course refer to itself.
TOP_OF_HOUSE = ("main", "config", "driver", "check", "admin")

# Modules left out of the graph: test-only helpers, reached only from
# #[cfg(test)] code.
EXCLUDED = frozenset({"test_support"})

# The crate root (only declares the modules) and the binary.
LIB_ROOT = "lib.rs"
BIN_ROOT = "main.rs"
BIN_MODULE = "main"

PREFIX = "check-layers: "


# ---------------------------------------------------------------- lexing --

IDENT_START = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")


def tokenize(text):
    """Return [(token, line)] of identifiers, `::` and single punctuation:
    the code without its comments and literals."""
    return [(value, line) for kind, value, line in rust_tokens.tokenize(text) if kind != "str"]


def is_ident(tok):
    return tok[:1] in IDENT_START


# --------------------------------------------------------------- scanning --


def group_heads(tokens, k):
    """tokens[k] is the `{` of a use group; return ([(name, line)], end).

    The names are the first segment of each item at the group's top level:
    `{a::{b, c}, d}` gives a and d. `self` and `*` are left out.
    """
    heads = []
    depth = 0
    expect_head = True
    j = k
    while j < len(tokens):
        tok, ln = tokens[j]
        if tok == "{":
            depth += 1
            if depth == 1:
                expect_head = True
        elif tok == "}":
            depth -= 1
            if depth == 0:
                return heads, j + 1
        elif depth == 1 and tok == ",":
            expect_head = True
        elif depth == 1 and expect_head:
            if tok == "::":
                pass  # `{::x}` is not valid at this level, ignore
            else:
                if is_ident(tok) and tok != "self":
                    heads.append((tok, ln))
                expect_head = False
        j += 1
    return heads, j


def scan_file(relpath, text, crate_name):
    """Return (module, [(target, line)]) for one file under src/.

    relpath uses "/" and is relative to src/. module is None for the crate
    root (src/lib.rs), whose references are not edges of the graph.
    """
    parts = relpath.split("/")
    if relpath == LIB_ROOT:
        return None, []
    if relpath == BIN_ROOT:
        module = BIN_MODULE
        base = []  # the binary crate's own root
    else:
        module = parts[0].removesuffix(".rs")
        base = [p.removesuffix(".rs") for p in parts]
        if base[-1] == "mod":
            base.pop()
    tokens = tokenize(text)

    refs = []
    # Inline modules (`mod tests { ... }`): a stack of (name, brace depth).
    mod_stack = []
    depth = 0
    pending_mod = None
    k = 0
    while k < len(tokens):
        tok, ln = tokens[k]
        nxt = tokens[k + 1][0] if k + 1 < len(tokens) else ""
        if tok == "mod" and is_ident(nxt):
            pending_mod = nxt
            k += 2
            continue
        if tok == "{":
            depth += 1
            if pending_mod is not None:
                mod_stack.append((pending_mod, depth))
                pending_mod = None
            k += 1
            continue
        if tok == "}":
            if mod_stack and mod_stack[-1][1] == depth:
                mod_stack.pop()
            depth -= 1
            k += 1
            continue
        if tok == ";":
            pending_mod = None  # `mod x;` declares a file module
            k += 1
            continue
        prev = tokens[k - 1][0] if k > 0 else ""
        if nxt != "::" or prev == "::":
            k += 1
            continue
        # A path start: crate::, $crate::, pop3server:: (binary), super::
        root_relative = False
        after = k + 2
        if tok == "crate" and module != BIN_MODULE:
            root_relative = True
        elif tok == crate_name and module == BIN_MODULE:
            root_relative = True
        elif tok == "super" and module != BIN_MODULE:
            path = base + [m for m, _ in mod_stack]
            climbs = 1
            while (
                after + 1 < len(tokens)
                and tokens[after][0] == "super"
                and tokens[after + 1][0] == "::"
            ):
                climbs += 1
                after += 2
            if climbs >= len(path):
                root_relative = True
            else:
                if path[0] != module:
                    refs.append((path[0], ln))
        if not root_relative or after >= len(tokens):
            k = after
            continue
        head, hln = tokens[after]
        if head == "{":
            heads, end = group_heads(tokens, after)
            refs.extend(heads)
            # The group's braces are balanced; skip them for the depth count.
            k = end
            continue
        if is_ident(head) and head != "self":
            refs.append((head, hln))
        k = after + 1
    return module, refs


def crate_name_of(root):
    try:
        with open(os.path.join(root, "Cargo.toml"), "rb") as f:
            cargo = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError):
        return "pop3server"
    name = cargo.get("lib", {}).get("name") or cargo.get("package", {}).get(
        "name", "pop3server"
    )
    return name.replace("-", "_")


def build_graph(files, crate_name):
    """files: {relpath under src/: text}. Returns (modules, edges, unknown).

    edges: {(from, to): [(relpath, line)]}; unknown: targets that are not a
    module (macros exported at the crate root, re-exports of lib.rs), as
    {(from, name): [(relpath, line)]}.
    """
    modules = set()
    for rel in files:
        if rel == LIB_ROOT:
            continue
        mod = BIN_MODULE if rel == BIN_ROOT else rel.split("/")[0].removesuffix(".rs")
        if mod not in EXCLUDED:
            modules.add(mod)
    edges = {}
    unknown = {}
    for rel in sorted(files):
        module, refs = scan_file(rel, files[rel], crate_name)
        if module is None or module in EXCLUDED:
            continue
        for target, ln in refs:
            if target == module or target in EXCLUDED:
                continue
            where = edges if target in modules else unknown
            where.setdefault((module, target), []).append((rel, ln))
    return modules, edges, unknown


def read_tree(src):
    files = {}
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames.sort()
        for name in sorted(filenames):
            if name.endswith(".rs"):
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, src).replace(os.sep, "/")
                with open(path, encoding="utf-8") as f:
                    files[rel] = f.read()
    return files


# ------------------------------------------------------------------ graph --


def strongly_connected(modules, edges):
    """Tarjan's algorithm without recursion; returns a list of sets."""
    succ = {m: sorted({t for (f, t) in edges if f == m}) for m in modules}
    index = {}
    low = {}
    on_stack = set()
    stack = []
    result = []
    counter = 0
    for start in sorted(modules):
        if start in index:
            continue
        work = [(start, 0)]
        while work:
            v, pos = work.pop()
            if pos == 0:
                index[v] = low[v] = counter
                counter += 1
                stack.append(v)
                on_stack.add(v)
            if pos < len(succ[v]):
                work.append((v, pos + 1))
                w = succ[v][pos]
                if w not in index:
                    work.append((w, 0))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            if low[v] == index[v]:
                comp = set()
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.add(w)
                    if w == v:
                        break
                result.append(comp)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
    return result


def levels(modules, edges):
    """Level 0 for a module without dependencies, else 1 + the highest level
    of its dependencies. Only for an acyclic graph; bounded by len(modules)
    rounds."""
    deps = {m: {t for (f, t) in edges if f == m} for m in modules}
    level = {}
    for _ in range(len(modules) + 1):
        progressed = False
        for m in sorted(modules):
            if m not in level and all(d in level for d in deps[m]):
                level[m] = 1 + max((level[d] for d in deps[m]), default=-1)
                progressed = True
        if not progressed:
            break
    return level, deps


def problems(modules, edges):
    """Return (cycle lines, config lines), each line without the prefix."""
    cycles = []
    for comp in strongly_connected(modules, edges):
        if len(comp) < 2:
            continue
        names = sorted(comp)
        inner = sorted((f, t) for (f, t) in edges if f in comp and t in comp)
        cycles.append(
            f"cycle among {len(names)} modules: {', '.join(names)} "
            f"({len(inner)} edges; cut one so the rest point down)"
        )
        for f, t in inner:
            cycles.append(f"  {f} -> {t}: {places(edges[(f, t)])}")
    config = []
    for (f, t), where in sorted(edges.items()):
        if t == "config" and f not in TOP_OF_HOUSE:
            config.append(
                f"{f} imports config, which only the top of the house "
                f"({', '.join(TOP_OF_HOUSE)}) may: {places(where)}"
            )
    return cycles, config


def places(where):
    return ", ".join(f"src/{rel}:{ln}" for rel, ln in where)


# -------------------------------------------------------------- self-test --


def self_test():
    failures = []

    def expect(what, ok):
        if not ok:
            failures.append(what)

    def deps_of(files, module):
        modules, edges, _ = build_graph(files, "pop3server")
        return sorted(t for (f, t) in edges if f == module)

    stubs = {f"{m}.rs": "" for m in "abcdefgwxyz"}

    files = dict(stubs, **{"q.rs": "use crate::{a::{b, c}, d};\nfn f() {}\n"})
    got = deps_of(files, "q")
    expect(f"nested use group: want [a, d], got {got}", got == ["a", "d"])

    files = dict(stubs, **{"q.rs": "use crate::{self as _, a::{self, b}, d::*, e};"})
    got = deps_of(files, "q")
    expect(f"group with self and glob: want [a, d, e], got {got}", got == ["a", "d", "e"])

    files = dict(
        stubs,
        **{
            "q.rs": (
                "//! see crate::x\n/// and crate::x::f\n// crate::x\n"
                "/* crate::x /* nested crate::x */ still crate::x */\n"
                "fn f() { crate::a::g(); }\n"
            )
        },
    )
    got = deps_of(files, "q")
    expect(f"comments must not count: want [a], got {got}", got == ["a"])

    files = dict(
        stubs,
        **{
            "q.rs": (
                'const S: &str = "crate::y";\n'
                'const R: &str = r#"say "crate::y" twice"#;\n'
                'const B: &[u8] = b"crate::y\\" crate::y";\n'
                "const C: char = '\"'; fn f<'a>(x: &'a str) { crate::b::h(); }\n"
                "const E: char = '\\''; const Q: u8 = b'\"'; use crate::c;\n"
                'const M: &str = "multi\nline crate::y";\nuse crate::d;\n'
            )
        },
    )
    got = deps_of(files, "q")
    expect(f"strings must not count: want [b, c, d], got {got}", got == ["b", "c", "d"])
    _, refs = scan_file("q.rs", files["q.rs"], "pop3server")
    got = [ln for t, ln in refs if t == "d"]
    expect(f"line numbers after a multi-line string: want [8], got {got}", got == [8])

    files = dict(
        stubs,
        **{
            "q/mod.rs": "mod inner;\nuse super::a;\n",
            "q/inner.rs": (
                "use super::inner2;\nuse super::super::b;\n"
                "mod tests { use super::super::x; use super::super::super::{c, d}; }\n"
            ),
        },
    )
    got = deps_of(files, "q")
    expect(f"super paths: want [a, b, c, d], got {got}", got == ["a", "b", "c", "d"])

    files = dict(stubs, **{"main.rs": "use pop3server::{a, b::X};\nfn main() { pop3server::c::run(); crate::d(); }\n"})
    got = deps_of(files, "main")
    expect(f"binary: want [a, b, c], got {got}", got == ["a", "b", "c"])

    files = dict(
        stubs,
        **{
            "test_support.rs": "use crate::a;",
            "q.rs": "#[cfg(test)]\nmod tests { use crate::test_support::T; use crate::e; }\n",
        },
    )
    modules, edges, _ = build_graph(files, "pop3server")
    got = deps_of(files, "q")
    expect(f"test code counts, test_support does not: want [e], got {got}", got == ["e"])
    expect("test_support must not be a module", "test_support" not in modules)

    files = dict(
        stubs,
        **{"a.rs": "use crate::b::X;", "b.rs": "fn f() { crate::a::g() }", "c.rs": "use crate::a;"},
    )
    modules, edges, _ = build_graph(files, "pop3server")
    cycles, config = problems(modules, edges)
    expect(f"two-module cycle: want 3 lines, got {cycles}", len(cycles) == 3)
    expect(
        "cycle lines must name a, b and their places",
        bool(cycles)
        and cycles[0].startswith("cycle among 2 modules: a, b")
        and "a -> b: src/a.rs:1" in cycles[1]
        and "b -> a: src/b.rs:1" in cycles[2],
    )

    files = dict(
        stubs,
        **{
            "config.rs": "use crate::a::ASettings;",
            "logging.rs": "\n\nuse crate::config::LogTarget;",
            "driver.rs": "use crate::config::Config;",
            "main.rs": "use pop3server::config::Config;",
        },
    )
    modules, edges, _ = build_graph(files, "pop3server")
    cycles, config = problems(modules, edges)
    expect(f"config from below: want 1 line, got {config}", len(config) == 1)
    expect(
        "config line must name logging and src/logging.rs:3",
        bool(config) and config[0].startswith("logging imports config") and "src/logging.rs:3" in config[0],
    )
    expect(f"no cycle expected, got {cycles}", cycles == [])

    level, deps = levels({"a", "b", "c"}, {("c", "b"): [], ("b", "a"): []})
    expect(f"levels: got {level}", level == {"a": 0, "b": 1, "c": 2})

    for f in failures:
        print(f"{PREFIX}self-test failed: {f}", file=sys.stderr)
    if failures:
        return 1
    print(f"{PREFIX}self-test passed")
    return 0


# ------------------------------------------------------------------- main --


def main(argv):
    args = argv[1:]
    unknown_args = [a for a in args if a not in ("--graph", "--self-test", "-h", "--help")]
    if unknown_args or "-h" in args or "--help" in args:
        print(__doc__.strip(), file=sys.stderr if unknown_args else sys.stdout)
        return 2 if unknown_args else 0
    if "--self-test" in args:
        return self_test()

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    src = os.path.join(root, "src")
    try:
        files = read_tree(src)
    except (OSError, UnicodeDecodeError) as e:
        print(f"{PREFIX}cannot read {src}: {e}", file=sys.stderr)
        return 1
    try:
        modules, edges, _unknown = build_graph(files, crate_name_of(root))
    except LexError as e:
        print(f"{PREFIX}{e}", file=sys.stderr)
        return 1

    cycles, config = problems(modules, edges)
    if "--graph" in args and not cycles:
        level, deps = levels(modules, edges)
        width = max(len(m) for m in modules)
        for m in sorted(modules, key=lambda m: (level[m], m)):
            print(f"{level[m]:2}  {m:<{width}}  {' '.join(sorted(deps[m]))}".rstrip())
    if cycles or config:
        for line in cycles + config:
            print(PREFIX + line, file=sys.stderr)
        return 1
    users = sorted(f for (f, t) in edges if t == "config")
    users = [m for m in TOP_OF_HOUSE if m in users]
    print(
        f"{PREFIX}{len(modules)} modules, {len(edges)} dependencies, no cycle, "
        f"config used only by {', '.join(users) if users else 'nobody'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
