"""A stand-in OAuth2 identity provider (the one thing the OAuth2 tests cannot
run for real here) and a private Dovecot that accepts only OAuth2 tokens,
which it checks with that provider.

IdP: HTTPS on 127.0.0.1 (the testbed's certificate), with
- POST /token: grant_type client_credentials (app-only: the token is good
  for every mailbox), refresh_token (delegated: good for the consenting
  account; the refresh token is rotated and the old one is dead at once)
  and the device-code grant (authorization_pending for the first polls,
  one slow_down, then tokens; or expired_token);
- POST /devicecode: RFC 8628 device authorization;
- POST /introspect: token + user -> {"active": bool}, for Dovecot's side.
``fail`` makes the next token requests answer 500, ``slow`` delays them,
``invalid_grant`` refuses refresh tokens, ``slow_introspect`` delays the
IMAP side. ``counts`` counts requests per grant. Bounded: at most
``MAX_REQUESTS`` requests are served.

Dovecot: ``auth_mechanisms = xoauth2 oauthbearer`` and a checkpassword
passdb (a script written next to its config) that asks /introspect, so
every token pop3server sends really goes through Dovecot's SASL.
"""

from __future__ import annotations

import collections
import json
import os
import re
import ssl
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, Optional

import testbed

CLIENT_ID = "pop3server-test"
CLIENT_SECRET = "cl1ent-s3cret-value"


class IdP:
    MAX_REQUESTS = 5000

    def __init__(self, tls: Dict[str, str], access_ttl: int = 3600):
        self.ca = tls["ca"]
        self.lock = threading.Lock()
        self.counts: collections.Counter = collections.Counter()
        self.access_ttl = access_ttl
        # access token -> (expires_at, account or None for app-only)
        self.access: Dict[str, tuple] = {}
        self.refresh: Dict[str, str] = {}          # refresh token -> account
        self.devices: Dict[str, dict] = {}         # device_code -> state
        self.fail = 0                              # answer this many with 500
        self.slow = 0.0                            # seconds before answering /token
        self.slow_introspect = 0.0
        self.invalid_grant = False
        self.consent_account = "alice@example.org"
        self.device_expired = False
        self.issued: list = []                     # every token handed out
        self._seq = 0
        self.served = 0
        idp = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                with idp.lock:
                    idp.served += 1
                    if idp.served > IdP.MAX_REQUESTS:
                        self.send_error(503)
                        return
                n = int(self.headers.get("Content-Length", "0") or 0)
                form = {k: v[0] for k, v in urllib.parse.parse_qs(
                    self.rfile.read(min(n, 1 << 16)).decode()).items()}
                status, body = idp.handle(self.path, form)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(tls["cert"], tls["key"])
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.2}, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return "https://127.0.0.1:%d%s" % (self.port, path)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- the provider --
    def _new(self, prefix: str) -> str:
        self._seq += 1
        tok = "%s-%d-%s" % (prefix, self._seq, os.urandom(8).hex())
        self.issued.append(tok)
        return tok

    def _tokens(self, account: Optional[str], with_refresh: bool) -> dict:
        at = self._new("at")
        self.access[at] = (time.time() + self.access_ttl, account)
        out = {"access_token": at, "token_type": "Bearer", "expires_in": self.access_ttl}
        if with_refresh:
            rt = self._new("rt")
            self.refresh[rt] = account
            out["refresh_token"] = rt
        return out

    def handle(self, path: str, form: dict):
        if path == "/introspect":
            if self.slow_introspect:
                time.sleep(self.slow_introspect)
            with self.lock:
                entry = self.access.get(form.get("token", ""))
            ok = bool(entry) and entry[0] > time.time() and entry[1] in (None, form.get("user"))
            return 200, {"active": ok}
        with self.lock:
            self.counts[path + ":" + form.get("grant_type", "-")] += 1
            if path == "/token":
                self.counts["token"] += 1
            fail = self.fail > 0
            if fail:
                self.fail -= 1
        if path == "/token" and self.slow:
            time.sleep(self.slow)
        if fail:
            return 500, {"error": "server_error"}
        if form.get("client_id") != CLIENT_ID:
            return 401, {"error": "invalid_client"}
        with self.lock:
            if path == "/devicecode":
                code = self._new("dc")
                self.devices[code] = {"polls": 0}
                return 200, {"device_code": code, "user_code": "WDJB-MJHT",
                             "verification_uri": "https://idp.example/device",
                             "expires_in": 60, "interval": 1}
            if path != "/token":
                return 404, {"error": "not_found"}
            grant = form.get("grant_type")
            if grant == "client_credentials":
                if form.get("client_secret") != CLIENT_SECRET:
                    return 401, {"error": "invalid_client"}
                return 200, self._tokens(None, with_refresh=False)
            if grant == "refresh_token":
                account = self.refresh.pop(form.get("refresh_token", ""), None)
                if account is None or self.invalid_grant:
                    return 400, {"error": "invalid_grant",
                                 "error_description": "refresh token expired or revoked"}
                return 200, self._tokens(account, with_refresh=True)
            if grant == "urn:ietf:params:oauth:grant-type:device_code":
                state = self.devices.get(form.get("device_code", ""))
                if state is None:
                    return 400, {"error": "invalid_grant"}
                state["polls"] += 1
                if self.device_expired:
                    return 400, {"error": "expired_token"}
                if state["polls"] == 1:
                    return 400, {"error": "authorization_pending"}
                if state["polls"] == 2:
                    return 400, {"error": "slow_down"}
                del self.devices[form["device_code"]]
                return 200, self._tokens(self.consent_account, with_refresh=True)
            return 400, {"error": "unsupported_grant_type"}

    def revoke_access(self) -> None:
        with self.lock:
            self.access.clear()


CHECKPASSWORD = """#!/usr/bin/python3
# Dovecot checkpassword for the OAuth2-only test Dovecot: fd 3 carries
# user NUL token NUL; the test IdP says whether the token is good for user.
import json, os, ssl, sys, urllib.parse, urllib.request
data = os.read(3, 65536)
parts = data.split(b"\\0")
user, token = parts[0].decode(), parts[1].decode()
req = urllib.request.Request({url!r}, data=urllib.parse.urlencode(
    {{"token": token, "user": user}}).encode())
try:
    with urllib.request.urlopen(req, context=ssl.create_default_context(cafile={ca!r}),
                                timeout=30) as r:
        active = json.load(r).get("active")
except Exception:
    sys.exit(111)
if not active:
    sys.exit(1)
os.environ["USER"] = user
os.execv(sys.argv[1], sys.argv[1:])
"""


class OAuthDovecot(testbed.Dovecot):
    """The testbed's Dovecot, but IMAP takes only XOAUTH2/OAUTHBEARER tokens,
    checked by ``idp``."""

    def __init__(self, directory: str, idp: IdP):
        super().__init__(directory)
        script = os.path.join(self.dir, "oauth-check.py")
        with open(script, "w") as f:
            f.write(CHECKPASSWORD.format(url=idp.url("/introspect"), ca=idp.ca))
        os.chmod(script, 0o755)
        with open(self.conf) as f:
            conf = f.read()
        conf = conf.replace("auth_mechanisms = plain login",
                            "auth_mechanisms = xoauth2 oauthbearer")
        conf = re.sub(r"passdb \{.*?\n\}\n", "", conf, flags=re.S)
        conf += ("passdb {\n  driver = checkpassword\n  mechanisms = xoauth2 oauthbearer\n"
                 "  args = %s\n}\nservice auth-worker {\n  user = root\n}\n" % script)
        with open(self.conf, "w") as f:
            f.write(conf)
