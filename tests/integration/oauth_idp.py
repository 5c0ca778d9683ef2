"""A stand-in OAuth2 identity provider (the one thing the OAuth2 tests cannot
run for real here) and a private Dovecot that accepts only OAuth2 tokens,
which it checks with that provider.

It checks what Google's and Microsoft's endpoints check, or a test that
passes against it proves nothing: PKCE, the redirect URI, single-use
codes, assertion signatures (RSA, verified with the ``openssl`` command:
Python's standard library has no RSA) and claims.

IdP: HTTPS on 127.0.0.1 (the testbed's certificate), with

- GET /authorize (the browser's sign-in, RFC 6749 4.1 with PKCE, RFC 7636,
  and a loopback redirect, RFC 8252). Every request is recorded in
  ``authorize_requests`` (the query as a dict). Answered with an error page and
  no redirect (as the providers do) when ``client_id`` is not ``CLIENT_ID``
  or ``redirect_uri`` is not ``http://127.0.0.1:PORT/...`` (loopback, any
  port, as Google allows Desktop-app clients; exactly
  ``registered_redirect_port`` if a test set it) (401 for the client id,
  400 for the redirect URI or a repeated parameter). Otherwise redirected (302)
  to the redirect URI with ``error=`` (and the ``state`` as given) when
  ``response_type`` is not ``code`` (unsupported_response_type), ``scope``
  is missing, ``code_challenge_method`` is not ``S256`` or
  ``code_challenge`` is not 43 base64url characters (invalid_request), or
  ``deny_consent`` is set (access_denied: the user clicked Cancel);
  else with ``state=<as given>&code=<one-time code>&scope=...`` (Google's
  order), the code bound to client id, redirect URI, challenge, scope and
  the account ``consent_account``, good for ten minutes.
- POST /token, by ``grant_type``:
  - ``authorization_code``: client authentication first: a public client
    (``auth_code_client_secret`` None) must send no ``client_secret``, a
    confidential one the right one (else 401 invalid_client); then
    invalid_grant unless the code exists, was never presented before (it is
    used up by the first attempt, right or wrong), is not expired, was
    issued to this client_id, ``redirect_uri`` is character for character
    the one given to /authorize, and BASE64URL(SHA256(code_verifier)) is
    the challenge (the verifier 43-128 unreserved characters). Answers an
    access token for the consenting account and a refresh token that the
    ``refresh_token`` grant takes.
  - ``urn:ietf:params:oauth:grant-type:jwt-bearer`` (a Google service
    account, RFC 7523 2.1; no client_id needed): the ``assertion`` is a
    compact JWS; invalid_grant unless the header says alg RS256 (typ, if
    given, JWT), ``iss`` is a registered service account's client_email
    (``add_service_account``), ``kid`` its private_key_id, the RS256
    signature verifies with its public key, ``aud`` is this token URL,
    ``iat`` and ``exp`` are integers with exp > now, iat <= now + 60 and
    0 < exp - iat <= 3600; invalid_scope without ``scope``; 400
    unauthorized_client (Google's answer for a subject the account is not
    delegated for) unless ``sub`` is in ``delegated_mailboxes``. The access
    token is good for ``sub`` only (/introspect says inactive for anyone
    else). Counted per mailbox: ``counts["jwt:" + sub]``.
  - ``client_credentials`` with ``client_assertion`` (a certificate
    credential, RFC 7523 2.2, as Microsoft takes it): 400 invalid_request
    if ``client_assertion_type`` is not the jwt-bearer URN or a
    ``client_secret`` comes along; 401 invalid_client unless the header
    says alg RS256, ``x5t#S256`` is the SHA-256 thumbprint (base64url of
    the DER) of a registered certificate (``add_client_certificate``) whose
    notAfter has not passed, ``x5t`` (if given) its SHA-1 thumbprint, the
    signature verifies with that certificate's public key, ``iss`` ==
    ``sub`` == ``CLIENT_ID`` (and the form's client_id, if given), ``aud``
    is this token URL, ``exp`` > now and ``exp`` - now <= 600, ``nbf`` and
    ``iat`` (if given) not in the future, and ``jti`` was never seen
    before (a replay). Counted as ``counts["cert"]``. An app-only token.
  - ``client_credentials`` with ``client_secret`` == ``CLIENT_SECRET``:
    app-only (the token is good for every mailbox), as before.
  - ``refresh_token``: delegated, good for the consenting account; the
    refresh token is rotated and the old one is dead at once.
  - the device-code grant: authorization_pending for the first poll, one
    slow_down, then tokens; or expired_token.
  Every grant but jwt-bearer needs ``client_id`` == ``CLIENT_ID`` (else 401
  invalid_client). Every assertion, code exchange and token request that
  passed all checks is appended to ``verified`` (grant, header, claims,
  the form's field names).
- POST /devicecode: RFC 8628 device authorization;
- POST /introspect: token + user -> {"active": bool}, for Dovecot's side.

Knobs (``reset()`` puts them back): ``fail`` makes the next token requests
answer 500, ``slow`` delays them, ``invalid_grant`` refuses refresh tokens,
``refuse`` = {"authorization_code" | "jwt_bearer" | "jwt_bearer:MAILBOX" |
"client_credentials" | "refresh_token": "invalid_grant" |
"unauthorized_client" | "invalid_client"} answers that error to requests of
that grant that passed every check (the provider revoked the grant),
``deny_consent`` makes /authorize answer access_denied,
``registered_redirect_port`` pins the redirect port,
``auth_code_client_secret`` makes the authorization-code client
confidential, ``slow_introspect`` delays the IMAP side. ``counts`` counts
requests per grant (``"/token:" + grant_type``, ``"token"``, ``"authorize"``,
``"jwt:" + mailbox``, ``"cert"``). Bounded: at most ``MAX_REQUESTS``
requests are served.

Key material, made with the ``openssl`` command: ``make_client_certificate``
(an RSA 2048 key and a self-signed certificate, ``days`` long) and
``make_service_account`` (a Google-style JSON key file); ``sign_jwt``
builds an RS256 JWT as a client would.

Dovecot: ``auth_mechanisms = xoauth2 oauthbearer`` and a checkpassword
passdb (a script written next to its config) that asks /introspect, so
every token pop3server sends really goes through Dovecot's SASL.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import html
import json
import os
import re
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, Optional, Tuple

import testbed

CLIENT_ID = "pop3server-test"
CLIENT_SECRET = "cl1ent-s3cret-value"

JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
CODE_LIFETIME = 600          # seconds an authorization code is good for
CLOCK_SKEW = 60              # seconds a client's clock may be ahead
SERVICE_ACCOUNT_MAX_LIFETIME = 3600
CLIENT_ASSERTION_MAX_LIFETIME = 600
_LOOPBACK_REDIRECT = re.compile(r"http://127\.0\.0\.1:([0-9]{1,5})(/[^?#]*)?")
_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")
_VERIFIER = re.compile(r"[A-Za-z0-9._~-]{43,128}")


# -- JWT and RSA with the openssl command --------------------------------------

def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    """Unpadded base64url, as JWS writes it; anything else is an error."""
    if not re.fullmatch(r"[A-Za-z0-9_-]*", text) or len(text) % 4 == 1:
        raise ValueError("not unpadded base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _openssl(*args: str, data: Optional[bytes] = None) -> subprocess.CompletedProcess:
    return subprocess.run([testbed.find_openssl()] + list(args), input=data,
                          capture_output=True, timeout=60)


def _openssl_ok(*args: str, data: Optional[bytes] = None) -> bytes:
    r = _openssl(*args, data=data)
    if r.returncode != 0:
        raise RuntimeError("openssl %s failed: %s" % (args[0], r.stderr.decode(errors="replace")))
    return r.stdout


def rsa_sign(key_path: str, data: bytes) -> bytes:
    """RSASSA-PKCS1-v1_5 with SHA-256 (RS256) of ``data``."""
    with tempfile.TemporaryDirectory(prefix="jws-") as d:
        src = os.path.join(d, "data")
        with open(src, "wb") as f:
            f.write(data)
        return _openssl_ok("dgst", "-sha256", "-sign", key_path, src)


def rsa_verify(pub_path: str, data: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is an RS256 signature of ``data`` by the key
    whose public half is in ``pub_path`` (PEM)."""
    with tempfile.TemporaryDirectory(prefix="jws-") as d:
        src, sig = os.path.join(d, "data"), os.path.join(d, "sig")
        with open(src, "wb") as f:
            f.write(data)
        with open(sig, "wb") as f:
            f.write(signature)
        r = _openssl("dgst", "-sha256", "-verify", pub_path, "-signature", sig, src)
        return r.returncode == 0 and b"Verified OK" in r.stdout


def sign_jwt(header: dict, claims: dict, key_path: str) -> str:
    """A compact JWS: header and claims as given, RS256-signed with the key."""
    signing_input = (b64url(json.dumps(header).encode()) + "." +
                     b64url(json.dumps(claims).encode()))
    return signing_input + "." + b64url(rsa_sign(key_path, signing_input.encode()))


def parse_jwt(token: str) -> Tuple[dict, dict, bytes, bytes]:
    """(header, claims, signing input, signature) of a compact JWS; raises
    ValueError if it is not one."""
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("not three dot-separated parts")
    try:
        header = json.loads(b64url_decode(parts[0]))
        claims = json.loads(b64url_decode(parts[1]))
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError("header or claims are not base64url JSON: %s" % e)
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise ValueError("header or claims are not JSON objects")
    return header, claims, (parts[0] + "." + parts[1]).encode(), b64url_decode(parts[2])


# -- key material ----------------------------------------------------------------

def make_client_certificate(directory: str, name: str = "client", days: int = 365) -> dict:
    """An RSA 2048 key (PKCS#8 PEM) and a self-signed certificate valid for
    ``days`` days, as an admin makes one for an app registration. Returns
    the paths (cert, key, pub), the thumbprints (x5t: base64url SHA-1 of
    the DER, x5t#S256: SHA-256) and not_after (Unix seconds)."""
    os.makedirs(directory, exist_ok=True)
    p = lambda ext: os.path.join(directory, name + ext)  # noqa: E731
    with open(p(".cnf"), "w") as f:
        f.write("[req]\ndistinguished_name = dn\nprompt = no\nx509_extensions = ext\n"
                "[dn]\nCN = pop3server test client %s\n"
                "[ext]\nbasicConstraints = critical, CA:FALSE\n"
                "keyUsage = critical, digitalSignature\nsubjectKeyIdentifier = hash\n" % name)
    _openssl_ok("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256",
                "-days", str(days), "-config", p(".cnf"),
                "-keyout", p(".key"), "-out", p(".pem"))
    der = _openssl_ok("x509", "-in", p(".pem"), "-outform", "DER")
    with open(p(".pub"), "wb") as f:
        f.write(_openssl_ok("x509", "-in", p(".pem"), "-pubkey", "-noout"))
    end = _openssl_ok("x509", "-in", p(".pem"), "-noout", "-enddate").decode().strip()
    os.chmod(p(".key"), 0o600)
    os.chmod(p(".pem"), 0o644)
    return {"cert": p(".pem"), "key": p(".key"), "pub": p(".pub"),
            "x5t": b64url(hashlib.sha1(der).digest()),
            "x5t#S256": b64url(hashlib.sha256(der).digest()),
            "not_after": int(ssl.cert_time_to_seconds(end.split("=", 1)[1]))}


def make_service_account(directory: str, token_uri: str, name: str = "sa") -> dict:
    """A Google service account's JSON key file (mode 0600) with a new RSA
    2048 key. Returns file, client_email, private_key_id, key (the private
    key's PEM file) and pub (the public key's)."""
    os.makedirs(directory, exist_ok=True)
    p = lambda ext: os.path.join(directory, name + ext)  # noqa: E731
    _openssl_ok("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                "-out", p(".key"))
    os.chmod(p(".key"), 0o600)
    _openssl_ok("pkey", "-in", p(".key"), "-pubout", "-out", p(".pub"))
    with open(p(".key")) as f:
        pem = f.read()
    email = "pop3-%s-%s@pop3server-test.iam.gserviceaccount.com" % (name, os.urandom(3).hex())
    key = {
        "type": "service_account",
        "project_id": "pop3server-test",
        "private_key_id": os.urandom(20).hex(),
        "private_key": pem,
        "client_email": email,
        "client_id": str(100000000000000000000 + int.from_bytes(os.urandom(7), "big")),
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "client_x509_cert_url": "https://www.googleapis.com/robot/v1/metadata/x509/"
                                + urllib.parse.quote(email),
        "universe_domain": "googleapis.com",
    }
    fd = os.open(p(".json"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(key, f, indent=2)
    return {"file": p(".json"), "client_email": email, "private_key_id": key["private_key_id"],
            "key": p(".key"), "pub": p(".pub")}


def _error(code: str, description: str):
    return (401 if code == "invalid_client" else 400), \
        {"error": code, "error_description": description}


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
        self.codes: Dict[str, dict] = {}           # authorization code -> binding
        self.service_accounts: Dict[str, dict] = {}  # client_email -> key info
        self.certificates: Dict[str, dict] = {}    # x5t#S256 -> certificate info
        self.seen_jti: set = set()
        self.authorize_requests: list = []         # each /authorize query, as a dict
        self.verified: list = []                   # requests that passed every check
        self.issued: list = []                     # every token handed out
        self._seq = 0
        self.served = 0
        self.reset()
        idp = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _count(self) -> bool:
                with idp.lock:
                    idp.served += 1
                    if idp.served > IdP.MAX_REQUESTS:
                        self.send_error(503)
                        return False
                return True

            def _send(self, status: int, ctype: str, data: bytes, headers=()) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers:
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if not self._count():
                    return
                path, _, query = self.path.partition("?")
                if path != "/authorize":
                    self._send(404, "text/plain", b"not found\n")
                    return
                status, location, page = idp.authorize(query)
                self._send(status, "text/html; charset=utf-8", page.encode(),
                           [("Location", location)] if location else [])

            def do_POST(self):
                if not self._count():
                    return
                n = int(self.headers.get("Content-Length", "0") or 0)
                form = {k: v[0] for k, v in urllib.parse.parse_qs(
                    self.rfile.read(min(n, 1 << 16)).decode()).items()}
                status, body = idp.handle(self.path, form)
                self._send(status, "application/json", json.dumps(body).encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(tls["cert"], tls["key"])
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.2}, daemon=True)
        self.thread.start()

    def reset(self) -> None:
        """The knobs back to a provider that works (tokens, codes and
        registrations stay)."""
        self.fail = 0                              # answer this many with 500
        self.slow = 0.0                            # seconds before answering /token
        self.slow_introspect = 0.0
        self.invalid_grant = False
        self.refuse: Dict[str, str] = {}
        self.deny_consent = False
        self.registered_redirect_port: Optional[int] = None
        self.auth_code_client_secret: Optional[str] = None
        self.delegated_mailboxes: set = set()
        self.consent_account = "alice@example.org"
        self.device_expired = False

    def url(self, path: str) -> str:
        return "https://127.0.0.1:%d%s" % (self.port, path)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- registrations --
    def add_service_account(self, directory: str, name: str = "sa") -> dict:
        """A new service account key file whose public key the provider
        knows (see make_service_account)."""
        sa = make_service_account(directory, self.url("/token"), name)
        with self.lock:
            self.service_accounts[sa["client_email"]] = sa
        return sa

    def add_client_certificate(self, directory: str, name: str = "client",
                               days: int = 365) -> dict:
        """A new certificate uploaded to the app registration of CLIENT_ID
        (see make_client_certificate)."""
        cert = make_client_certificate(directory, name, days)
        with self.lock:
            self.certificates[cert["x5t#S256"]] = cert
        return cert

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

    def _refused(self, *keys: str):
        """The error a test told the provider to answer, if any."""
        for key in keys:
            code = self.refuse.get(key)
            if code:
                return _error(code, "refused by the test (idp.refuse[%r])" % key)
        return None

    def authorize(self, query: str):
        """GET /authorize: (status, Location or None, HTML page)."""
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        q = dict(pairs)
        with self.lock:
            self.counts["authorize"] += 1
            self.authorize_requests.append(q)

        def page(status: int, text: str):
            return status, None, ("<!doctype html><title>Sign in</title><p>%s</p>\n"
                                  % html.escape(text))
        if len(q) != len(pairs):
            return page(400, "Error 400: invalid_request: a parameter is repeated")
        if q.get("client_id") != CLIENT_ID:
            return page(401, "Error 401: invalid_client: The OAuth client was not found.")
        redirect = q.get("redirect_uri", "")
        m = _LOOPBACK_REDIRECT.fullmatch(redirect)
        if not m or not 0 < int(m.group(1)) < 65536 or (
                self.registered_redirect_port is not None
                and int(m.group(1)) != self.registered_redirect_port):
            return page(400, "Error 400: redirect_uri_mismatch: %s is not registered "
                             "for this client" % redirect)
        state = [("state", q["state"])] if "state" in q else []

        def back(params):
            return 302, redirect + "?" + urllib.parse.urlencode(params), \
                "<!doctype html><p>Redirecting</p>\n"
        if q.get("response_type") != "code":
            return back([("error", "unsupported_response_type"),
                         ("error_description", "response_type must be code")] + state)
        if not q.get("scope"):
            return back([("error", "invalid_request"),
                         ("error_description", "Missing required parameter: scope")] + state)
        if q.get("code_challenge_method") != "S256" or \
                not _CHALLENGE.fullmatch(q.get("code_challenge", "")):
            return back([("error", "invalid_request"),
                         ("error_description", "code_challenge (S256) required")] + state)
        if self.deny_consent:
            return back([("error", "access_denied"),
                         ("error_description", "The user denied the request")] + state)
        with self.lock:
            code = self._new("ac")
            self.codes[code] = {"client_id": q["client_id"], "redirect_uri": redirect,
                                "challenge": q["code_challenge"], "scope": q["scope"],
                                "account": self.consent_account,
                                "expires": time.time() + CODE_LIFETIME, "used": False}
        return back(state + [("code", code), ("scope", q["scope"])])

    def handle(self, path: str, form: dict):
        if path == "/introspect":
            if self.slow_introspect:
                time.sleep(self.slow_introspect)
            with self.lock:
                entry = self.access.get(form.get("token", ""))
            ok = bool(entry) and entry[0] > time.time() and entry[1] in (None, form.get("user"))
            return 200, {"active": ok}
        grant = form.get("grant_type")
        with self.lock:
            self.counts[path + ":" + form.get("grant_type", "-")] += 1
            if path == "/token":
                self.counts["token"] += 1
                if grant == "client_credentials" and "client_assertion" in form:
                    self.counts["cert"] += 1
            fail = self.fail > 0
            if fail:
                self.fail -= 1
        if path == "/token" and self.slow:
            time.sleep(self.slow)
        if fail:
            return 500, {"error": "server_error"}
        if path == "/token" and grant == JWT_BEARER_GRANT:
            return self._jwt_bearer(form)   # the assertion names the client
        if form.get("client_id") != CLIENT_ID:
            return 401, {"error": "invalid_client"}
        if path == "/token" and grant == "client_credentials" and "client_assertion" in form:
            return self._client_assertion(form)
        with self.lock:
            if path == "/devicecode":
                code = self._new("dc")
                self.devices[code] = {"polls": 0}
                return 200, {"device_code": code, "user_code": "WDJB-MJHT",
                             "verification_uri": "https://idp.example/device",
                             "expires_in": 60, "interval": 1}
            if path != "/token":
                return 404, {"error": "not_found"}
            if grant == "client_credentials":
                if form.get("client_secret") != CLIENT_SECRET:
                    return 401, {"error": "invalid_client"}
                refused = self._refused("client_credentials")
                if refused:
                    return refused
                self.verified.append({"grant": "client_credentials", "proof": "secret",
                                      "fields": sorted(form)})
                return 200, self._tokens(None, with_refresh=False)
            if grant == "authorization_code":
                return self._authorization_code(form)
            if grant == "refresh_token":
                account = self.refresh.pop(form.get("refresh_token", ""), None)
                if account is None or self.invalid_grant:
                    return 400, {"error": "invalid_grant",
                                 "error_description": "refresh token expired or revoked"}
                refused = self._refused("refresh_token")
                if refused:
                    return refused
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

    def _authorization_code(self, form: dict):
        """grant_type=authorization_code; called with the lock held."""
        secret = self.auth_code_client_secret
        if secret is None and "client_secret" in form:
            return _error("invalid_client", "public client: no client_secret expected")
        if secret is not None and form.get("client_secret") != secret:
            return _error("invalid_client", "The OAuth client secret is wrong or missing.")
        entry = self.codes.get(form.get("code", ""))
        if entry is None:
            return _error("invalid_grant", "Malformed auth code.")
        if entry["used"]:
            return _error("invalid_grant", "Code was already redeemed.")
        entry["used"] = True
        if entry["expires"] < time.time():
            return _error("invalid_grant", "Code expired.")
        if entry["client_id"] != form.get("client_id"):
            return _error("invalid_grant", "The code was issued to another client.")
        if form.get("redirect_uri") != entry["redirect_uri"]:
            return _error("invalid_grant", "redirect_uri does not match the one at /authorize")
        verifier = form.get("code_verifier", "")
        if not _VERIFIER.fullmatch(verifier):
            return _error("invalid_grant", "Missing code verifier.")
        if b64url(hashlib.sha256(verifier.encode()).digest()) != entry["challenge"]:
            return _error("invalid_grant", "Invalid code verifier.")
        refused = self._refused("authorization_code")
        if refused:
            return refused
        self.verified.append({"grant": "authorization_code", "account": entry["account"],
                              "redirect_uri": entry["redirect_uri"], "fields": sorted(form)})
        out = self._tokens(entry["account"], with_refresh=True)
        out["scope"] = entry["scope"]
        return 200, out

    def _jwt_bearer(self, form: dict):
        """A service account's assertion (no lock held: openssl runs)."""
        def bad(why: str):
            return _error("invalid_grant", why)
        try:
            header, claims, signed, sig = parse_jwt(form.get("assertion", ""))
        except ValueError as e:
            with self.lock:
                self.counts["jwt:?"] += 1
            return bad("Invalid JWT: %s" % e)
        sub = claims.get("sub")
        with self.lock:
            self.counts["jwt:%s" % sub] += 1
            account = self.service_accounts.get(claims.get("iss"))
        if header.get("alg") != "RS256" or header.get("typ", "JWT") != "JWT":
            return bad("Invalid JWT: alg must be RS256")
        if account is None:
            return bad("Invalid grant: account not found")
        if header.get("kid") != account["private_key_id"]:
            return bad("Invalid JWT Signature. (no key %r for this account)" % header.get("kid"))
        if not rsa_verify(account["pub"], signed, sig):
            return bad("Invalid JWT Signature.")
        if claims.get("aud") != self.url("/token"):
            return bad("Invalid JWT: Failed audience check.")
        iat, exp, now = claims.get("iat"), claims.get("exp"), time.time()
        if not (type(iat) is int and type(exp) is int and exp > now and iat <= now + CLOCK_SKEW
                and 0 < exp - iat <= SERVICE_ACCOUNT_MAX_LIFETIME):
            return bad("Invalid JWT: Token must be a short-lived token (60 minutes) and in a "
                       "reasonable timeframe. Check your iat and exp values in the JWT claim.")
        if not isinstance(claims.get("scope"), str) or not claims["scope"].strip():
            return _error("invalid_scope", "Invalid OAuth scope or ID token audience provided.")
        with self.lock:
            if not isinstance(sub, str) or sub not in self.delegated_mailboxes:
                return _error("unauthorized_client",
                              "Client is unauthorized to retrieve access tokens using this "
                              "method, or client not authorized for any of the scopes "
                              "requested.")
            refused = self._refused("jwt_bearer:" + sub, "jwt_bearer")
            if refused:
                return refused
            self.verified.append({"grant": "jwt_bearer", "header": header, "claims": claims,
                                  "fields": sorted(form)})
            return 200, self._tokens(sub, with_refresh=False)

    def _client_assertion(self, form: dict):
        """client_credentials with a certificate (no lock held: openssl runs)."""
        def bad(why: str):
            return _error("invalid_client", why)
        if form.get("client_assertion_type") != CLIENT_ASSERTION_TYPE:
            return _error("invalid_request", "client_assertion_type must be %s"
                          % CLIENT_ASSERTION_TYPE)
        if "client_secret" in form:
            return _error("invalid_request", "Only one client authentication method may be "
                          "used: client_secret and client_assertion were both given")
        try:
            header, claims, signed, sig = parse_jwt(form.get("client_assertion", ""))
        except ValueError as e:
            return bad("The client assertion is not a JWT: %s" % e)
        if header.get("alg") != "RS256":
            return bad("Client assertion: alg must be RS256")
        with self.lock:
            cert = self.certificates.get(header.get("x5t#S256", ""))
        if cert is None:
            return bad("Client assertion contains an invalid signature. "
                       "[Reason - The key was not found.]")
        if "x5t" in header and header["x5t"] != cert["x5t"]:
            return bad("Client assertion: x5t does not match x5t#S256")
        if cert["not_after"] <= time.time():
            return bad("Client assertion contains an invalid signature. "
                       "[Reason - The key used is expired.]")
        if not rsa_verify(cert["pub"], signed, sig):
            return bad("Client assertion contains an invalid signature.")
        jti = claims.get("jti")
        with self.lock:
            replay = not isinstance(jti, str) or not jti or jti in self.seen_jti
            if isinstance(jti, str):
                self.seen_jti.add(jti)
        if replay:
            return bad("The provided client assertion has no jti or a jti already used "
                       "(a replay).")
        if not (claims.get("iss") == claims.get("sub") == CLIENT_ID):
            return bad("Client assertion: iss and sub must be the client id")
        if claims.get("aud") != self.url("/token"):
            return bad("Client assertion audience claim does not match the token endpoint.")
        now = time.time()
        exp = claims.get("exp")
        if not (type(exp) is int and now < exp <= now + CLIENT_ASSERTION_MAX_LIFETIME):
            return bad("Client assertion is not within its valid time range.")
        for key in ("nbf", "iat"):
            if key in claims and not (type(claims[key]) is int
                                      and claims[key] <= now + CLOCK_SKEW):
                return bad("Client assertion is not within its valid time range (%s)." % key)
        with self.lock:
            refused = self._refused("client_credentials")
            if refused:
                return refused
            self.verified.append({"grant": "client_credentials", "proof": "certificate",
                                  "header": header, "claims": claims, "fields": sorted(form)})
            return 200, self._tokens(None, with_refresh=False)

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
