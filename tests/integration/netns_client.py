#!/usr/bin/env python3
"""POP3 client run inside a network namespace by helpers.NetNs.run_client.

Reads JSON from stdin: {"host", "port", "cafile", "implicit_tls", "actions": [...]}
(implicit_tls: POP3S, the handshake before the greeting, checked against cafile
for "localhost"), where an
action is ["cmd", LINE] (one status line back), ["multi", LINE] (status line
and, after +OK, the lines of the multi-line answer), ["stls"] (STLS, and the
TLS handshake after +OK, checking the certificate against cafile for the
name "localhost"), ["peer"] (the client's own address), ["send", DATA]
(DATA, latin-1, sent as is: for pipelining; no answer read) or ["read"]
(one status line).  Prints the
transcript as JSON: [[action, answer], ...]; the first entry is the greeting.
"""

import json
import os
import ssl
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from helpers import Pop3  # noqa: E402


def main() -> int:
    req = json.load(sys.stdin)
    out = []
    ctx = None
    if req.get("implicit_tls"):
        ctx = ssl.create_default_context(cafile=req["cafile"])
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
                ctx = ssl.create_default_context(cafile=req["cafile"])
                p.starttls(ctx, server_hostname="localhost")
            out.append([action, st.decode("latin-1")])
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
