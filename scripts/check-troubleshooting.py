#!/usr/bin/env python3
"""Check that docs/troubleshooting.md explains every warning and error line.

Reads every .rs file under src/ (whatever the files are called: the code
moves), finds each `warn!`, `error!` and `log!` call (also written
`log::warn!`, `log::error!`, `log::log!(LEVEL, ...)`), takes its format
string and cuts it at the placeholders (`{}`, `{name}`, `{name:?}`,
`{:.3}`; `{{` and `}}` are literal braces). The longest fixed piece of at
least 12 characters must appear in docs/troubleshooting.md; where every
piece is shorter, the whole line must, with anything in place of its
placeholders (the guide shows them as USER, HOST:PORT, ERROR ...). A
format without fixed text (`"{e}"`: the text comes from an error type) is
listed but not checked: the guide explains those texts by hand.

Runs of whitespace count as one space on both sides, so the guide may wrap
lines and the code may use `\\` line continuations, multi-line macro calls
and `concat!` of literals. Comments, other string literals and the calls
inside `#[cfg(test)] mod ... { }` are skipped.

Usage:
  scripts/check-troubleshooting.py             check; one line on success,
                                               else `file:line: "fragment"`
                                               for each missing one, exit 1
  scripts/check-troubleshooting.py --list      print every call's fragment
  scripts/check-troubleshooting.py --self-test run the scanner on built-in
                                               snippets
  --src DIR, --doc FILE                        other places (tests)

Python 3 standard library only (Debian 12's /usr/bin/python3).
"""

import os
import re
import sys

from rust_tokens import LexError, tokenize

PREFIX = "check-troubleshooting: "
MIN_FRAGMENT = 12
# What may stand for one placeholder when a whole short line is matched.
PLACEHOLDER = r".{1,80}?"
MACROS = {"warn", "error", "log"}

# --------------------------------------------------------------- scanning --

OPEN = {"(": ")", "[": "]", "{": "}"}


def matching(tokens, k):
    """tokens[k] opens a delimiter; the index of its closing token."""
    stack = []
    j = k
    while j < len(tokens):
        kind, val, _ = tokens[j]
        if kind == "punct" and val in OPEN:
            stack.append(OPEN[val])
        elif kind == "punct" and val in (")", "]", "}"):
            if not stack or stack.pop() != val:
                raise LexError(f"line {tokens[j][2]}: unbalanced {val}")
            if not stack:
                return j
        j += 1
    raise LexError(f"line {tokens[k][2]}: {tokens[k][1]} never closed")


def split_args(tokens, start, end):
    """The top-level comma-separated arguments of tokens[start:end]."""
    args, cur, depth = [], [], 0
    for tok in tokens[start:end]:
        kind, val, _ = tok
        if kind == "punct" and val in OPEN:
            depth += 1
        elif kind == "punct" and val in (")", "]", "}"):
            depth -= 1
        if depth == 0 and kind == "punct" and val == ",":
            args.append(cur)
            cur = []
        else:
            cur.append(tok)
    if cur:
        args.append(cur)
    return args


def literal_of(arg):
    """The string an argument stands for: one literal, or concat! of
    literals. None if it is anything else."""
    if len(arg) == 1 and arg[0][0] == "str":
        return arg[0][1]
    if (len(arg) >= 4 and arg[0][:2] == ("ident", "concat") and arg[1][1] == "!"
            and arg[2][1] in OPEN):
        parts = split_args(arg, 3, len(arg) - 1)
        if parts and all(len(p) == 1 and p[0][0] == "str" for p in parts):
            return "".join(p[0][1] for p in parts)
    return None


def is_test_module(tokens, k):
    """tokens[k] is `#`: is this `#[cfg(test)]` (attributes may follow)
    before `mod NAME {`? Returns the index of that `{`, or None."""
    want = [("punct", "#"), ("punct", "["), ("ident", "cfg"), ("punct", "("),
            ("ident", "test"), ("punct", ")"), ("punct", "]")]
    if [t[:2] for t in tokens[k:k + len(want)]] != want:
        return None
    j = k + len(want)
    while j < len(tokens) and tokens[j][1] == "#":  # more attributes
        if j + 1 < len(tokens) and tokens[j + 1][1] == "[":
            j = matching(tokens, j + 1) + 1
        else:
            return None
    if j < len(tokens) and tokens[j][1] == "pub":
        j += 1
    if (j + 2 < len(tokens) and tokens[j][1] == "mod" and tokens[j + 1][0] == "ident"
            and tokens[j + 2][1] == "{"):
        return j + 2
    return None


def log_calls(text):
    """[(line, level, format or None)] of the file's warn!/error!/log! calls."""
    tokens = tokenize(text)
    calls = []
    k = 0
    while k < len(tokens):
        kind, val, line = tokens[k]
        if kind == "punct" and val == "#":
            body = is_test_module(tokens, k)
            if body is not None:
                k = matching(tokens, body) + 1
                continue
        if (kind == "ident" and val in MACROS and k + 2 < len(tokens)
                and tokens[k + 1][1] == "!" and tokens[k + 2][1] in OPEN
                and not (k > 0 and tokens[k - 1][1] == ".")
                and not (k > 0 and tokens[k - 1][1] == "rules")):
            close = matching(tokens, k + 2)
            args = split_args(tokens, k + 3, close)
            if args and len(args[0]) >= 2 and args[0][0][1] == "target" \
                    and args[0][1][1] == ":":
                args = args[1:]
            level = val
            if val == "log":
                level = "log(" + "".join(t[1] for t in args[0]) + ")" if args else "log"
                args = args[1:]
            fmt = literal_of(args[0]) if args else None
            calls.append((line, level, fmt))
            k = close + 1
            continue
        k += 1
    return calls


# ------------------------------------------------------------- fragments --

PLACEHOLDER_RE = re.compile(r"\{\{|\}\}|\{[^{}]*\}")


def pieces(fmt):
    """The fixed pieces of a format string, in order: one more than there
    are placeholders."""
    out, cur, pos = [], [], 0
    for m in PLACEHOLDER_RE.finditer(fmt):
        cur.append(fmt[pos:m.start()])
        if m.group() == "{{":
            cur.append("{")
        elif m.group() == "}}":
            cur.append("}")
        else:
            out.append("".join(cur))
            cur = []
        pos = m.end()
    cur.append(fmt[pos:])
    out.append("".join(cur))
    return out


def squash(text):
    return re.sub(r"\s+", " ", text)


def requirement(fmt):
    """(shown, regex or None): what the guide must contain for this format.
    None: no fixed text at all."""
    parts = [squash(p) for p in pieces(fmt)]
    longest = max(parts, key=lambda p: len(p.strip()))
    if len(longest.strip()) >= MIN_FRAGMENT:
        shown = longest.strip()
        return shown, re.escape(shown)
    if not any(p.strip() for p in parts):
        return None, None
    # Short pieces: the whole line, each placeholder standing for anything.
    shown = "{…}".join(parts).strip()
    inner = [re.escape(p) for p in parts]
    # Leading and trailing placeholders need not be matched.
    while inner and inner[0] == "":
        inner.pop(0)
    while inner and inner[-1] == "":
        inner.pop()
    return shown, PLACEHOLDER.join(inner)


def scan_tree(src):
    """[(path, line, level, format)] of every .rs file under src, sorted."""
    found = []
    for root, dirs, files in os.walk(src):
        dirs.sort()
        for name in sorted(files):
            if not name.endswith(".rs"):
                continue
            path = os.path.join(root, name)
            with open(path, encoding="utf-8") as f:
                text = f.read()
            try:
                calls = log_calls(text)
            except LexError as e:
                raise LexError(f"{path}: {e}") from None
            for line, level, fmt in calls:
                found.append((path, line, level, fmt))
    return found


# ------------------------------------------------------------- self-test --

SELF_TEST = r'''
use log::{error, warn};
// warn!("in a comment: not a call");
/* error!("nor in a block comment") */
fn f() {
    let s = "warn!(\"in a string: not a call\")";
    warn!("plain fixed text of some length");
    log::error!(
        "cannot lock {}: {e}; check that lock_dir exists and is writable by the service user",
        path.display()
    );
    warn!(
        "cluster lock: Redis {}: {e}; this session has the local lock only \
         (cluster_lock_fallback = local)",
        settings.address
    );
    error!("device {device}: no token: {error}");
    warn!("{header}");
    log::log!(e.level(), "{e}");
    warn!(target: "x", "backend {at}: {what}: {e}");
    warn!("braces {{literal}} and {name:?} and {:.3} of more text here", name, x);
    warn!(concat!("first half, ", "second half"));
    let c = '"'; let l: &'static str = "x"; let b = b'\'';
    error!(r#"raw "quoted" string of some length"#);
}
#[cfg(test)]
mod tests {
    fn t() { warn!("only in a test, never in the guide"); }
}
'''

SELF_EXPECT = [
    ("warn", "plain fixed text of some length"),
    ("error", "; check that lock_dir exists and is writable by the service user"),
    ("warn", "; this session has the local lock only (cluster_lock_fallback = local)"),
    ("error", "device {…}: no token: {…}"),
    ("warn", None),
    ("log(e.level())", None),
    ("warn", "backend {…}: {…}: {…}"),
    ("warn", "braces {literal} and"),
    ("warn", "first half, second half"),
    ("error", 'raw "quoted" string of some length'),
]


def self_test():
    calls = log_calls(SELF_TEST)
    got = [(level, requirement(fmt)[0] if fmt is not None else "?") for _, level, fmt in calls]
    expect = [(lv, s) for lv, s in SELF_EXPECT]
    ok = got == expect
    doc = squash("""
        - `device scanner: no token: the grant is no longer valid: ...`
        - `backend imap.example.org:143: connect: cannot connect to backend: ...`
        - `cannot lock LOCK_DIR/FILE: ERROR; check that lock_dir exists and is
          writable by the service user`
    """)
    checks = [
        ("device {device}: no token: {error}", True),
        ("backend {at}: {what}: {e}", True),
        ("cannot lock {}: {e}; check that lock_dir exists and is writable by the service user",
         True),
        ("device {device}: no token now: {error}", False),
        ("something else entirely, not there", False),
    ]
    for fmt, present in checks:
        _, rx = requirement(fmt)
        if (re.search(rx, doc) is not None) != present:
            print(PREFIX + f"self-test: {fmt!r} should {'' if present else 'not '}match")
            ok = False
    if not ok:
        for g, e in zip(got + [None] * 20, expect):
            if g != e:
                print(PREFIX + f"self-test: got {g!r}, expected {e!r}")
        print(PREFIX + "self-test FAILED")
        return 1
    print(PREFIX + f"self-test passed ({len(calls)} calls, {len(checks)} matches)")
    return 0


# ------------------------------------------------------------------ main --


def main(argv):
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    src = os.path.join(root, "src")
    doc = os.path.join(root, "docs", "troubleshooting.md")
    mode = "check"
    args = list(argv[1:])
    while args:
        a = args.pop(0)
        if a == "--list":
            mode = "list"
        elif a == "--self-test":
            mode = "self-test"
        elif a == "--src" and args:
            src = args.pop(0)
        elif a == "--doc" and args:
            doc = args.pop(0)
        elif a in ("-h", "--help"):
            print(__doc__)
            return 0
        else:
            print(PREFIX + f"unknown argument {a!r} (see --help)", file=sys.stderr)
            return 2
    if mode == "self-test":
        return self_test()

    try:
        calls = scan_tree(src)
    except LexError as e:
        print(PREFIX + str(e), file=sys.stderr)
        return 2
    if not calls:
        print(PREFIX + f"no warn!/error! calls found under {src}", file=sys.stderr)
        return 2
    cwd = os.getcwd()

    def where(path, line):
        rel = os.path.relpath(path, cwd)
        return f"{path if rel.startswith('..') else rel}:{line}"

    unreadable = [(p, ln) for p, ln, _, fmt in calls if fmt is None]
    for p, ln in unreadable:
        print(f"{where(p, ln)}: the format is not a string literal: cannot check it",
              file=sys.stderr)

    if mode == "list":
        for p, ln, level, fmt in calls:
            if fmt is None:
                continue
            shown, _ = requirement(fmt)
            text = '"%s"' % shown if shown is not None else "(no fixed text)"
            print(f"{where(p, ln)}: {level}: {text}")
        return 1 if unreadable else 0

    try:
        with open(doc, encoding="utf-8") as f:
            guide = squash(f.read())
    except OSError as e:
        print(PREFIX + f"cannot read {doc}: {e}", file=sys.stderr)
        return 2
    missing = []
    checked = 0
    for p, ln, _, fmt in calls:
        if fmt is None:
            continue
        shown, rx = requirement(fmt)
        if rx is None:
            continue
        checked += 1
        if not re.search(rx, guide):
            missing.append((p, ln, shown))
    for p, ln, shown in missing:
        print(f'{where(p, ln)}: "{shown}"')
    docname = os.path.relpath(doc, cwd)
    if docname.startswith(".."):
        docname = doc
    if missing:
        print(PREFIX + f"{len(missing)} of {checked} log lines are not explained in {docname}: "
              "add each (its fixed text, what it means, what to do)", file=sys.stderr)
        return 1
    if unreadable:
        return 1
    print(PREFIX + f"{len(calls)} warn!/error!/log! calls, {checked} with fixed text, "
          f"all in {docname}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
