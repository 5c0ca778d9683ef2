#!/usr/bin/env python3
"""POP3 client run inside a network namespace by helpers.NetNs.run_client.

Reads JSON from stdin: {"host", "port", "cafile", "implicit_tls", "tls_version",
"actions": [...]} (implicit_tls: POP3S, the handshake before the greeting, checked
against cafile for "localhost"; tls_version, e.g. "TLSv1": that version and no
other, with the ciphers of OpenSSL's security level 0, as an old device speaks
it, for implicit TLS and STLS alike), where an
action is ["cmd", LINE] (one status line back), ["multi", LINE] (status line
and, after +OK, the lines of the multi-line answer), ["stls"] (STLS, and the
TLS handshake after +OK, checking the certificate against cafile for the
name "localhost"), ["peer"] (the client's own address), ["send", DATA]
(DATA, latin-1, sent as is: for pipelining; no answer read), ["read"]
(one status line), ["tls"] (the TLS version the connection speaks, or
"none") or ["stls_try"] (STLS, and after +OK a handshake that may fail: the
answer is "STATUS | handshake ok VERSION" or "STATUS | handshake failed:
ERROR", and after a failure no more actions are run).  Prints the
transcript as JSON: [[action, answer], ...]; the first entry is the greeting.
"""

import json
import os
import ssl
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from helpers import Pop3  # noqa: E402


def context(req):
    ctx = ssl.create_default_context(cafile=req["cafile"])
    version = req.get("tls_version")
    if version:
        with warnings.catch_warnings():  # TLS 1.0 and 1.1 are deprecated: the point
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion[version]
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


def main() -> int:
    req = json.load(sys.stdin)
    out = []
    ctx = None
    if req.get("implicit_tls"):
        ctx = context(req)
    p = Pop3(req["port"], host=req["host"], timeout=20, tls_context=ctx,
             server_hostname="localhost")
    out.append([["greeting"], p.greeting.decode("latin-1")])
    for action in req["actions"][:100]:
        kind = action[0]
        if kind == "cmd":
            out.append([action, p.cmd(action[1].encode("latin-1")).decode("latin-1")])
        elif kind == "multi":
            st, lines = p.multi_lines(action[1].encode("latin-1"))
            out.append([action, [st.decode("latin-1")] + [ln.decode("latin-1") for ln in lines]])
        elif kind == "stls":
            st = p.cmd(b"STLS")
            if st.startswith(b"+OK"):
                p.starttls(context(req), server_hostname="localhost")
            out.append([action, st.decode("latin-1")])
        elif kind == "stls_try":
            st = p.cmd(b"STLS")
            answer = st.decode("latin-1")
            if st.startswith(b"+OK"):
                try:
                    p.starttls(context(req), server_hostname="localhost")
                    answer += " | handshake ok " + p.sock.version()
                except (ssl.SSLError, OSError) as e:
                    out.append([action, answer + " | handshake failed: %s" % e])
                    break
            out.append([action, answer])
        elif kind == "tls":
            out.append([action, p.sock.version() if isinstance(p.sock, ssl.SSLSocket)
                        else "none"])
        elif kind == "send":
            p.send(action[1].encode("latin-1"))
            out.append([action, None])
        elif kind == "read":
            out.append([action, p.readline().decode("latin-1")])
        elif kind == "peer":
            out.append([action, "%s:%d" % p.sock.getsockname()[:2]])
        else:
            raise SystemExit("unknown action %r" % (action,))
    p.close()
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
