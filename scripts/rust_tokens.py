"""A small Rust lexer for the repository's checks (scripts/check-layers.py,
scripts/check-troubleshooting.py): enough of Rust's token grammar to tell
code from comments and string literals, and to read a literal's value.
Standard library only: it runs with Debian 12's /usr/bin/python3."""


IDENT_START = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
IDENT_CHARS = IDENT_START | set("0123456789")


class LexError(Exception):
    pass


def unescape(body, line):
    """The value of a (non-raw) Rust string literal's body."""
    out = []
    i = 0
    n = len(body)
    while i < n:
        c = body[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        if i + 1 >= n:
            raise LexError(f"line {line}: backslash at the end of a string")
        e = body[i + 1]
        if e == "\n" or (e == "\r" and body[i + 2:i + 3] == "\n"):
            # Line continuation: the newline and the whitespace after it go.
            i += 2
            while i < n and body[i] in " \t\r\n":
                i += 1
            continue
        simple = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "\\": "\\",
                  '"': '"', "'": "'"}
        if e in simple:
            out.append(simple[e])
            i += 2
        elif e == "x":
            out.append(chr(int(body[i + 2:i + 4], 16)))
            i += 4
        elif e == "u" and body[i + 2:i + 3] == "{":
            end = body.index("}", i)
            out.append(chr(int(body[i + 3:end].replace("_", ""), 16)))
            i = end + 1
        else:
            raise LexError(f"line {line}: unknown escape \\{e}")
    return "".join(out)


def tokenize(text):
    """[(kind, value, line)]: kind is "ident", "str" (value decoded) or
    "punct" (one character, or `::`). Comments (line, doc and nested block
    comments), char literals and lifetimes' quotes are dropped; numbers come
    out as identifier-like tokens; byte, C and raw strings (any number of
    #) come out as "str" too. Every loop advances `i`, so the lexer ends
    after at most len(text) steps of the outer loop."""
    tokens = []
    i = 0
    n = len(text)
    line = 1

    def quoted_end(start, quote):
        # start: just after the opening quote; returns the index of the
        # closing quote.
        j = start
        while j < n:
            c = text[j]
            if c == "\\":
                j += 2
                continue
            if c == quote:
                return j
            j += 1
        raise LexError(f"line {line}: unterminated {quote}-literal")

    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            i += 1
        elif c in " \t\r\f\v":
            i += 1
        elif text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            depth = 0
            j = i
            while j < n:
                if text.startswith("/*", j):
                    depth += 1
                    j += 2
                elif text.startswith("*/", j):
                    depth -= 1
                    j += 2
                    if depth == 0:
                        break
                else:
                    j += 1
            else:
                raise LexError(f"line {line}: unterminated block comment")
            line += text.count("\n", i, j)
            i = j
        elif c == '"':
            end = quoted_end(i + 1, '"')
            tokens.append(("str", unescape(text[i + 1:end], line), line))
            line += text.count("\n", i, end)
            i = end + 1
        elif c == "'":
            # A char literal ('x', '\n', '\u{1F600}') or a lifetime ('a).
            if i + 1 < n and text[i + 1] == "\\":
                end = quoted_end(i + 1, "'")
                i = end + 1
            elif i + 2 < n and text[i + 2] == "'":
                if text[i + 1] == "\n":
                    line += 1
                i += 3
            else:
                i += 1  # lifetime: the name follows as an identifier
        elif c in IDENT_START or c.isdigit() or ord(c) > 127:
            j = i
            while j < n and (text[j] in IDENT_CHARS or ord(text[j]) > 127):
                j += 1
            word = text[i:j]
            nxt = text[j] if j < n else ""
            if word in ("r", "br", "cr") and nxt in ('"', "#"):
                k = j
                while k < n and text[k] == "#":
                    k += 1
                if k < n and text[k] == '"':
                    closing = '"' + "#" * (k - j)
                    end = text.find(closing, k + 1)
                    if end < 0:
                        raise LexError(f"line {line}: unterminated raw string")
                    tokens.append(("str", text[k + 1:end], line))
                    line += text.count("\n", i, end)
                    i = end + len(closing)
                    continue
                if word == "r" and k == j + 1 and k < n and text[k] in IDENT_START:
                    m = k
                    while m < n and text[m] in IDENT_CHARS:
                        m += 1
                    tokens.append(("ident", text[k:m], line))
                    i = m
                    continue
            if word in ("b", "c") and nxt == '"':
                end = quoted_end(j + 1, '"')
                tokens.append(("str", unescape(text[j + 1:end], line), line))
                line += text.count("\n", i, end)
                i = end + 1
                continue
            if word == "b" and nxt == "'":
                i = quoted_end(j + 1, "'") + 1
                continue
            tokens.append(("ident", word, line))
            i = j
        elif text.startswith("::", i):
            tokens.append(("punct", "::", line))
            i += 2
        else:
            tokens.append(("punct", c, line))
            i += 1
    return tokens
