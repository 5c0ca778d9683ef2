"""The grants real Google and Microsoft tenants need, against the stand-in
provider (oauth_idp.IdP), which checks what they check, and the real
Dovecot that takes only tokens (oauth_idp.OAuthDovecot):

- the browser consent (``grant = "authorization_code"``, PKCE S256, a
  loopback redirect): finished by the browser's redirect or by the address
  pasted on standard input; a wrong state, a denied consent, a refused code
  and a consent nobody finishes store nothing; then a device reads mail;
- a Google service account (``grant = "jwt_bearer"``): one token per
  mailbox, a mailbox it is not delegated for refused;
- a certificate credential for ``client_credentials``: the provider
  verifies the thumbprint and the signature;
- a dead grant rests (no request to the provider, -ERR [SYS/TEMP] at once)
  until the rest is over, the configuration changes or a new consent;
- ``--oauth-status`` for fresh, expiring and broken sources; ``--check``
  with every new grant.

``test_the_stand_in_checks_what_the_provider_checks`` proves the stand-in
itself (no pop3server needed): a test that passes against a provider that
accepts anything proves nothing."""

from __future__ import annotations

import datetime
import functools
import hashlib
import http.client
import imaplib
import json
import os
import queue
import re
import signal
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

import testbed
from helpers import Pop3, ok, pop3_expected, server_bin
from oauth_idp import (CLIENT_ASSERTION_TYPE, CLIENT_ID, CLIENT_SECRET, JWT_BEARER_GRANT, IdP,
                       OAuthDovecot, b64url, b64url_decode, make_client_certificate, sign_jwt)

ALICE = "alice@example.org"          # the account that consents in the browser
MB1 = "scans@example.org"            # mailboxes the service account is delegated for
MB2 = "copies@example.org"
MB3 = "outsider@example.org"         # ... and one it is not
GMAIL_SCOPE = "https://mail.google.com/"
MS_SCOPE = "https://outlook.office365.com/.default"
DEVICE_PW = "scanner-pw-1"
COPIER_PW = "copier-pw-2"
OUTSIDER_PW = "outsider-pw-3"
MESSAGES = {
    ALICE: [testbed.simple_message("alice-grants", n, body_lines=n) for n in (1, 2)],
    MB1: [testbed.simple_message("scans", n, body_lines=n) for n in (1, 2, 3)],
    MB2: [testbed.simple_message("copies", n, body_lines=n) for n in (1, 2)],
    MB3: [testbed.simple_message("outsider", 1)],
}
DAY = 86400
REST = 3600       # the longest a dead grant rests: backdating by more ends it


@pytest.fixture(scope="module")
def idp(dovecot):
    p = IdP(dovecot.tls)
    yield p
    p.stop()


@pytest.fixture(autouse=True)
def _provider_knobs_back(idp):
    """Every test starts with a provider that works."""
    idp.reset()
    yield
    idp.reset()


@pytest.fixture(scope="module")
def oauth_dovecot(workdir, idp):
    dc = OAuthDovecot(os.path.join(workdir, "oauth-grants-dovecot"), idp)
    for mailbox, messages in MESSAGES.items():
        dc.add_user(mailbox, "unused", messages)
    try:
        dc.start()
    except Exception:
        dc.stop()
        raise
    yield dc
    dc.stop()


# -- talking to the provider as a client and as a browser ----------------------

def post(idp: IdP, path: str, form: dict):
    """(HTTP status, JSON answer) of a form POST to the stand-in."""
    req = urllib.request.Request(idp.url(path), data=urllib.parse.urlencode(form).encode())
    ctx = ssl.create_default_context(cafile=idp.ca)
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=60) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        with e:
            return e.code, json.load(e)


def browse(url: str, ca: str = None):
    """A browser's GET that does not follow redirects: (status, Location or
    None, body). https:// (the provider) or http:// (the loopback redirect)."""
    u = urllib.parse.urlsplit(url)
    if u.scheme == "https":
        conn = http.client.HTTPSConnection(u.hostname, u.port, timeout=60,
                                           context=ssl.create_default_context(cafile=ca))
    else:
        assert u.scheme == "http" and u.hostname == "127.0.0.1", url
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    try:
        conn.request("GET", u.path + ("?" + u.query if u.query else ""))
        r = conn.getresponse()
        return r.status, r.getheader("Location"), r.read(1 << 16).decode("utf-8", "replace")
    finally:
        conn.close()


def sign_in(idp: IdP, url: str) -> str:
    """The user signs in and consents: where the provider sends the browser."""
    status, location, body = browse(url, idp.ca)
    assert status == 302 and location, (status, body)
    return location


def query(url: str) -> dict:
    pairs = urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query, keep_blank_values=True)
    q = dict(pairs)
    assert len(q) == len(pairs), "a parameter is repeated: %s" % url
    return q


def pkce():
    verifier = b64url(os.urandom(32))
    return verifier, b64url(hashlib.sha256(verifier.encode()).digest())


def authorize_url(idp: IdP, redirect: str, challenge: str, **over) -> str:
    params = {"response_type": "code", "client_id": CLIENT_ID, "redirect_uri": redirect,
              "scope": GMAIL_SCOPE, "state": "st4te-" + os.urandom(4).hex(),
              "code_challenge": challenge, "code_challenge_method": "S256",
              "access_type": "offline", "prompt": "consent"}
    params.update(over)
    return idp.url("/authorize") + "?" + urllib.parse.urlencode(
        {k: v for k, v in params.items() if v is not None})


def introspect(idp: IdP, token: str, user: str) -> bool:
    return idp.handle("/introspect", {"token": token, "user": user})[1]["active"]


def imap_token_login(port: int, user: str, token: str) -> bool:
    """XOAUTH2 to the OAuth2-only Dovecot (its checkpassword asks the IdP)."""
    m = imaplib.IMAP4("127.0.0.1", port, timeout=30)
    calls = []

    def respond(_challenge):
        calls.append(1)
        if len(calls) == 1:
            return ("user=%s\x01auth=Bearer %s\x01\x01" % (user, token)).encode()
        return b""  # after a failure Dovecot sends the error JSON; answer empty
    try:
        m.authenticate("XOAUTH2", respond)
        return True
    except imaplib.IMAP4.error:
        return False
    finally:
        try:
            m.logout()
        except Exception:  # noqa: BLE001 - a refused login may have closed it
            pass


def sa_assertion(idp: IdP, sa: dict, key: str = None, header=None, **claims) -> str:
    """A service account's assertion as Google documents it; keyword
    arguments replace claims (None removes one)."""
    now = int(time.time())
    c = {"iss": sa["client_email"], "scope": GMAIL_SCOPE, "aud": idp.url("/token"),
         "sub": MB1, "iat": now, "exp": now + 3600}
    c.update(claims)
    h = {"alg": "RS256", "typ": "JWT", "kid": sa["private_key_id"]}
    h.update(header or {})
    return sign_jwt({k: v for k, v in h.items() if v is not None},
                    {k: v for k, v in c.items() if v is not None}, key or sa["key"])


def client_assertion(idp: IdP, cert: dict, key: str = None, header=None, **claims) -> str:
    """A certificate credential's client assertion as Microsoft documents it."""
    now = int(time.time())
    c = {"iss": CLIENT_ID, "sub": CLIENT_ID, "aud": idp.url("/token"),
         "jti": os.urandom(16).hex(), "nbf": now, "iat": now, "exp": now + 300}
    c.update(claims)
    h = {"alg": "RS256", "typ": "JWT", "x5t": cert["x5t"], "x5t#S256": cert["x5t#S256"]}
    h.update(header or {})
    return sign_jwt({k: v for k, v in h.items() if v is not None},
                    {k: v for k, v in c.items() if v is not None}, key or cert["key"])


def tamper_signature(jwt: str) -> str:
    head, claims, sig = jwt.split(".")
    raw = bytearray(b64url_decode(sig))
    raw[17] ^= 0x01
    return "%s.%s.%s" % (head, claims, b64url(bytes(raw)))


def swap_claims(jwt: str, **claims) -> str:
    """Other claims under the original signature."""
    head, body, sig = jwt.split(".")
    c = json.loads(b64url_decode(body))
    c.update(claims)
    return "%s.%s.%s" % (head, b64url(json.dumps(c).encode()), sig)


def error_of(answer) -> tuple:
    status, body = answer
    return status, body.get("error")


# -- the stand-in itself ---------------------------------------------------------

def test_the_stand_in_checks_what_the_provider_checks(idp, oauth_dovecot, tmp_path):
    # ---- the browser consent: /authorize ----
    verifier, challenge = pkce()
    redirect = "http://127.0.0.1:%d/" % testbed.free_port()
    for bad in ({"redirect_uri": "https://evil.example/"},
                {"redirect_uri": "http://localhost.evil.example:80/"},
                {"client_id": "someone-else"}):
        status, location, _ = browse(authorize_url(idp, redirect, challenge, **bad), idp.ca)
        assert status in (400, 401) and location is None, (bad, status, location)
    idp.registered_redirect_port = testbed.free_port()
    status, location, _ = browse(authorize_url(idp, redirect, challenge), idp.ca)
    assert status == 400 and location is None, "a port other than the registered one"
    idp.registered_redirect_port = None
    for bad, error in (({"code_challenge_method": "plain"}, "invalid_request"),
                       ({"code_challenge_method": None}, "invalid_request"),
                       ({"code_challenge": None}, "invalid_request"),
                       ({"scope": None}, "invalid_request"),
                       ({"response_type": "token"}, "unsupported_response_type")):
        q = query(sign_in(idp, authorize_url(idp, redirect, challenge, state="s-1", **bad)))
        assert q.get("error") == error and q.get("state") == "s-1" and "code" not in q, (bad, q)
    idp.deny_consent = True
    location = sign_in(idp, authorize_url(idp, redirect, challenge, state="s-2"))
    assert location.startswith(redirect + "?")
    assert query(location)["error"] == "access_denied" and query(location)["state"] == "s-2"
    idp.deny_consent = False
    assert idp.authorize_requests[-1]["access_type"] == "offline"

    def new_code(v_challenge=challenge, to=redirect) -> str:
        location = sign_in(idp, authorize_url(idp, to, v_challenge, state="s-3"))
        assert location.startswith(to + "?"), location
        q = query(location)
        assert q["state"] == "s-3" and q["scope"] == GMAIL_SCOPE, q
        return q["code"]

    def exchange(code, **over):
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect,
                "client_id": CLIENT_ID, "code_verifier": verifier}
        form.update(over)
        return post(idp, "/token", {k: v for k, v in form.items() if v is not None})

    before = len(idp.verified)
    code = new_code()
    assert error_of(exchange(code, code_verifier=pkce()[0])) == (400, "invalid_grant")
    assert error_of(exchange(code)) == (400, "invalid_grant"), "the code is used up"
    assert error_of(exchange(new_code(), code_verifier=None)) == (400, "invalid_grant")
    other = "http://127.0.0.1:%d/" % testbed.free_port()
    assert error_of(exchange(new_code(), redirect_uri=other)) == (400, "invalid_grant")
    assert error_of(exchange(new_code(), redirect_uri=redirect + "x")) == (400, "invalid_grant")
    assert error_of(exchange("ac-0-forged")) == (400, "invalid_grant")
    code = new_code()
    assert error_of(exchange(code, client_secret=CLIENT_SECRET)) == (401, "invalid_client"), \
        "a public client sends no secret"
    assert error_of(exchange(code, client_id="someone-else")) == (401, "invalid_client")
    status, tokens = exchange(code)
    assert status == 200 and tokens["refresh_token"] and tokens["access_token"], tokens
    assert error_of(exchange(code)) == (400, "invalid_grant"), "a code is good once"
    assert introspect(idp, tokens["access_token"], ALICE)
    assert not introspect(idp, tokens["access_token"], MB1)
    status, again = post(idp, "/token", {"grant_type": "refresh_token", "client_id": CLIENT_ID,
                                         "refresh_token": tokens["refresh_token"]})
    assert status == 200 and again["refresh_token"] != tokens["refresh_token"], again
    # A confidential client (Google's Desktop-app clients have a secret).
    idp.auth_code_client_secret = CLIENT_SECRET
    code = new_code()
    assert error_of(exchange(code)) == (401, "invalid_client")
    assert error_of(exchange(code, client_secret="wrong")) == (401, "invalid_client")
    assert exchange(code, client_secret=CLIENT_SECRET)[0] == 200
    idp.auth_code_client_secret = None
    idp.refuse["authorization_code"] = "invalid_grant"
    assert error_of(exchange(new_code())) == (400, "invalid_grant")
    idp.refuse.clear()
    assert [v["grant"] for v in idp.verified[before:]] == ["authorization_code"] * 2

    # ---- a service account: the JWT bearer grant ----
    sa = idp.add_service_account(str(tmp_path / "keys"))
    stranger = idp.add_service_account(str(tmp_path / "keys"), name="stranger")
    idp.delegated_mailboxes = {MB1, MB2}
    with open(sa["file"]) as f:
        key_file = json.load(f)
    assert key_file["type"] == "service_account" and key_file["token_uri"] == idp.url("/token")
    assert key_file["private_key"].startswith("-----BEGIN PRIVATE KEY-----\n")

    def jwt_grant(assertion):
        return post(idp, "/token", {"grant_type": JWT_BEARER_GRANT, "assertion": assertion})
    n1 = idp.counts["jwt:" + MB1]
    status, token = jwt_grant(sa_assertion(idp, sa))
    assert status == 200 and "refresh_token" not in token, token
    assert idp.counts["jwt:" + MB1] == n1 + 1
    at = token["access_token"]
    assert introspect(idp, at, MB1) and not introspect(idp, at, MB2), "bound to its mailbox"
    assert imap_token_login(oauth_dovecot.port, MB1, at)
    assert not imap_token_login(oauth_dovecot.port, MB2, at)
    good = sa_assertion(idp, sa, sub=MB2)
    refusals = [
        ("tampered signature", tamper_signature(good), "invalid_grant"),
        ("claims changed under the signature", swap_claims(good, sub=MB1), "invalid_grant"),
        ("signed with another key", sa_assertion(idp, sa, key=stranger["key"]), "invalid_grant"),
        ("kid of another key", sa_assertion(idp, sa, header={"kid": stranger["private_key_id"]}),
         "invalid_grant"),
        ("no kid", sa_assertion(idp, sa, header={"kid": None}), "invalid_grant"),
        ("alg HS256", sa_assertion(idp, sa, header={"alg": "HS256"}), "invalid_grant"),
        ("unknown account", sa_assertion(idp, sa, iss="nobody@x.iam.gserviceaccount.com"),
         "invalid_grant"),
        ("wrong aud", sa_assertion(idp, sa, aud="https://oauth2.googleapis.com/token"),
         "invalid_grant"),
        ("lifetime over an hour", sa_assertion(idp, sa, exp=int(time.time()) + 3700),
         "invalid_grant"),
        ("expired", sa_assertion(idp, sa, iat=int(time.time()) - 3700,
                                 exp=int(time.time()) - 100), "invalid_grant"),
        ("no scope", sa_assertion(idp, sa, scope=None), "invalid_scope"),
        ("not a JWT", "not.a.jwt", "invalid_grant"),
        ("a mailbox it is not delegated for", sa_assertion(idp, sa, sub=MB3),
         "unauthorized_client"),
        ("no subject", sa_assertion(idp, sa, sub=None), "unauthorized_client"),
    ]
    for what, assertion, error in refusals:
        assert error_of(jwt_grant(assertion)) == (400, error), what
    assert idp.counts["jwt:" + MB3] == 1
    idp.refuse["jwt_bearer:" + MB1] = "invalid_grant"
    assert error_of(jwt_grant(sa_assertion(idp, sa))) == (400, "invalid_grant")
    assert jwt_grant(good)[0] == 200, "the refusal is for the one mailbox"
    idp.refuse.clear()

    # ---- a certificate credential: client_credentials with a client assertion ----
    cert = idp.add_client_certificate(str(tmp_path / "keys"))
    unregistered = make_client_certificate(str(tmp_path / "keys"), "unregistered")
    short = make_client_certificate(str(tmp_path / "keys"), "short", days=5)
    assert 4 * DAY < short["not_after"] - time.time() <= 5 * DAY + 60, short["not_after"]

    def cert_grant(assertion, **over):
        form = {"grant_type": "client_credentials", "client_id": CLIENT_ID, "scope": MS_SCOPE,
                "client_assertion_type": CLIENT_ASSERTION_TYPE, "client_assertion": assertion}
        form.update(over)
        return post(idp, "/token", {k: v for k, v in form.items() if v is not None})
    n = idp.counts["cert"]
    assertion = client_assertion(idp, cert)
    status, token = cert_grant(assertion)
    assert status == 200, token
    assert introspect(idp, token["access_token"], MB1) and \
        introspect(idp, token["access_token"], MB2), "app-only: every mailbox"
    assert idp.verified[-1]["header"]["x5t#S256"] == cert["x5t#S256"]
    refusals = [
        ("replayed jti", assertion, {}, (401, "invalid_client")),
        ("tampered signature", tamper_signature(client_assertion(idp, cert)), {},
         (401, "invalid_client")),
        ("claims changed under the signature",
         swap_claims(client_assertion(idp, cert), exp=int(time.time()) + 200), {},
         (401, "invalid_client")),
        ("an unregistered certificate", client_assertion(idp, unregistered), {},
         (401, "invalid_client")),
        ("the registered thumbprint, another key",
         client_assertion(idp, cert, key=unregistered["key"]), {}, (401, "invalid_client")),
        ("x5t of another certificate", client_assertion(idp, cert,
                                                        header={"x5t": unregistered["x5t"]}),
         {}, (401, "invalid_client")),
        ("no x5t#S256", client_assertion(idp, cert, header={"x5t#S256": None}), {},
         (401, "invalid_client")),
        ("wrong aud", client_assertion(idp, cert, aud=idp.url("/devicecode")), {},
         (401, "invalid_client")),
        ("iss not the client", client_assertion(idp, cert, iss="another-app"), {},
         (401, "invalid_client")),
        ("sub not the client", client_assertion(idp, cert, sub="another-app"), {},
         (401, "invalid_client")),
        ("no jti", client_assertion(idp, cert, jti=None), {}, (401, "invalid_client")),
        ("lifetime an hour", client_assertion(idp, cert, exp=int(time.time()) + 3600), {},
         (401, "invalid_client")),
        ("expired", client_assertion(idp, cert, exp=int(time.time()) - 10), {},
         (401, "invalid_client")),
        ("not yet valid", client_assertion(idp, cert, nbf=int(time.time()) + 600), {},
         (401, "invalid_client")),
        ("a secret as well", client_assertion(idp, cert), {"client_secret": CLIENT_SECRET},
         (400, "invalid_request")),
        ("another assertion type", client_assertion(idp, cert),
         {"client_assertion_type": JWT_BEARER_GRANT}, (400, "invalid_request")),
        ("another client_id", client_assertion(idp, cert), {"client_id": "another-app"},
         (401, "invalid_client")),
    ]
    for what, a, over, answer in refusals:
        assert error_of(cert_grant(a, **over)) == answer, what
    assert idp.counts["cert"] == n + 1 + len(refusals), "each request is counted"
    idp.refuse["client_credentials"] = "invalid_client"
    assert error_of(cert_grant(client_assertion(idp, cert))) == (401, "invalid_client")
    idp.refuse.clear()
    # The secret keeps working, and the plain refusals are as before.
    status, token = post(idp, "/token", {"grant_type": "client_credentials",
                                         "client_id": CLIENT_ID, "scope": MS_SCOPE,
                                         "client_secret": CLIENT_SECRET})
    assert status == 200 and imap_token_login(oauth_dovecot.port, MB2, token["access_token"])
    assert error_of(post(idp, "/token", {"grant_type": "client_credentials",
                                         "client_id": CLIENT_ID,
                                         "client_secret": "wrong"})) == (401, "invalid_client")


# -- pop3server's side -------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def device_hash(password: str) -> str:
    r = subprocess.run([server_bin(), "--config", "/dev/null", "--hash-password"],
                       input=password + "\n", capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout.startswith("$argon2id$"), r.stderr
    return r.stdout.strip()


def auth_code_source(idp: IdP, secret_file=None, redirect_port=None, extra="") -> str:
    s = ('grant = "authorization_code"\nauthorization_url = "%s"\ntoken_url = "%s"\n'
         'client_id = "%s"\nscope = "%s"\n'
         % (idp.url("/authorize"), idp.url("/token"), CLIENT_ID, GMAIL_SCOPE))
    if secret_file:
        s += 'client_secret_file = "%s"\n' % secret_file
    if redirect_port:
        s += "redirect_port = %d\n" % redirect_port
    return s + extra


def service_account_source(sa: dict) -> str:
    # token_url left out: the key file's token_uri (the stand-in's) is used.
    return ('grant = "jwt_bearer"\nservice_account_file = "%s"\nscope = "%s"\n'
            % (sa["file"], GMAIL_SCOPE))


def certificate_source(idp: IdP, cert: dict, extra="") -> str:
    return ('grant = "client_credentials"\ntoken_url = "%s"\nclient_id = "%s"\n'
            'client_certificate_file = "%s"\nclient_key_file = "%s"\nscope = "%s"\n'
            % (idp.url("/token"), CLIENT_ID, cert["cert"], cert["key"], MS_SCOPE)) + extra


def write_secret(tmp_path) -> str:
    path = tmp_path / "client.secret"
    path.write_text(CLIENT_SECRET + "\n")
    os.chmod(path, 0o600)
    return str(path)


class Site:
    """A configuration with one token source ``[oauth.src]`` (the TOML keys
    in ``source``) and devices (name, password, mailbox) that use it."""

    def __init__(self, tmp_path, idp: IdP, source: str,
                 devices=(("scanner", DEVICE_PW, MB1),)):
        self.dir = tmp_path
        self.idp = idp
        self.devices = list(devices)
        self.state_dir = str(tmp_path / "state")
        self.oauth_dir = os.path.join(self.state_dir, "oauth")
        self.store = os.path.join(self.oauth_dir, "src.json")
        self.conf = str(tmp_path / "pop3server.toml")
        self.devices_file = tmp_path / "devices.toml"
        self.devices_file.write_text("".join(
            '[device.%s]\npassword = "%s"\nmailbox = "%s"\noauth = "src"\n'
            % (name, device_hash(pw), mailbox) for name, pw, mailbox in self.devices))
        os.chmod(self.devices_file, 0o640)
        self.write(source)

    def write(self, source: str) -> None:
        """(Re)writes the configuration with this ``[oauth.src]``."""
        with open(self.conf, "w") as f:
            f.write('devices_file = "%s"\nstate_dir = "%s"\nconsent_timeout = 60\n\n'
                    '[oauth.src]\n%sca_file = "%s"\n'
                    % (self.devices_file, self.state_dir, source, self.idp.ca))

    def args(self, *extra):
        return ["--config", self.conf, "--debug"] + list(extra)

    def password(self, device: str) -> str:
        return next(pw for name, pw, _ in self.devices if name == device)

    def mailbox_stores(self) -> dict:
        """A service account's token files: mailbox -> path."""
        out = {}
        if not os.path.isdir(self.oauth_dir):
            return out
        for name in sorted(os.listdir(self.oauth_dir)):
            if re.fullmatch(r"src\.[0-9a-f]{16}\.json", name):
                path = os.path.join(self.oauth_dir, name)
                out[load(path)["mailbox"]] = path
        return out

    def status(self) -> subprocess.CompletedProcess:
        return subprocess.run([server_bin(), "--config", self.conf, "--oauth-status",
                               "--log", "stderr"], capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL)

    def check(self, backend_port: int, device: str = "scanner") -> subprocess.CompletedProcess:
        pw = self.dir / ("pw-" + device)
        pw.write_text(self.password(device) + "\n")
        return subprocess.run([server_bin(), "--config", self.conf, "--backend-host", "127.0.0.1",
                               "--backend-port", str(backend_port), "--backend-tls", "none",
                               "--log", "stderr", "--check", "--user", device,
                               "--password-file", str(pw)],
                              capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL)


def load(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def rewrite(path: str, **changes) -> None:
    """Changes fields of a store file in place (same inode, owner, mode)."""
    saved = load(path)
    saved.update(changes)
    with open(path, "r+") as f:
        f.seek(0)
        f.truncate()
        f.write(json.dumps(saved))


def expire_access_token(path: str) -> None:
    rewrite(path, expires_at=1)


class Consent:
    """``pop3server --oauth-consent src`` as an admin runs it for a browser
    sign-in: standard output and error read by threads (no read of the test
    blocks), standard input a pipe for the pasted address. Killed (its own
    process group) if still running at the end."""

    MAX_LINES = 1000

    def __init__(self, site: Site, *extra: str):
        self.site = site
        self.proc = subprocess.Popen(
            [server_bin(), "--config", site.conf, "--oauth-consent", "src", "--log", "stderr"]
            + list(extra), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.lines: queue.Queue = queue.Queue()
        self.out, self.err = [], []
        self.readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.out, True),
                             daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.err, False),
                             daemon=True)]
        for t in self.readers:
            t.start()

    def _read(self, stream, into: list, lines: bool) -> None:
        for _ in range(self.MAX_LINES):
            line = stream.readline()
            if not line:
                break
            into.append(line)
            if lines:
                self.lines.put(line)
        if lines:
            self.lines.put(None)  # end of output

    def url(self, timeout: float = 30) -> str:
        """The authorization URL from standard output."""
        prefix = self.site.idp.url("/authorize") + "?"
        deadline = time.monotonic() + timeout
        for _ in range(self.MAX_LINES):
            left = deadline - time.monotonic()
            try:
                line = self.lines.get(timeout=max(left, 0.01))
            except queue.Empty:
                line = None
            if line is None:
                break
            if line.startswith(prefix):
                return line.split()[0]
        raise AssertionError("no authorization URL within %ss (rc=%s):\n%s\n%s"
                             % (timeout, self.proc.poll(), "".join(self.out), "".join(self.err)))

    def paste(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def finish(self, timeout: float = 60):
        """(exit status, stdout, stderr) once it ended."""
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.close()
            raise AssertionError("--oauth-consent still running after %ss:\n%s\n%s"
                                 % (timeout, "".join(self.out), "".join(self.err)))
        for t in self.readers:
            t.join(5)
        return rc, "".join(self.out), "".join(self.err)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                stream.close()
            except OSError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


def check_authorization_url(url: str, site: Site, port: int = None) -> dict:
    """What pop3server must send to the provider; returns the parameters."""
    q = query(url)
    assert q["response_type"] == "code" and q["client_id"] == CLIENT_ID, q
    assert q["scope"] == GMAIL_SCOPE, q
    m = re.fullmatch(r"http://127\.0\.0\.1:(\d+)/", q["redirect_uri"])
    assert m, q["redirect_uri"]
    if port is not None:
        assert int(m.group(1)) == port, q["redirect_uri"]
    assert "redirect_uri=http%3A%2F%2F127.0.0.1%3A" in url, "percent-encoded: " + url
    assert q["code_challenge_method"] == "S256" and re.fullmatch(r"[A-Za-z0-9_-]{43}",
                                                                 q["code_challenge"]), q
    assert len(q["state"]) >= 16, "a random state: %r" % q["state"]
    assert q["access_type"] == "offline" and q["prompt"] == "consent", q
    return q


def session(port: int, user: str = "scanner", password: str = DEVICE_PW) -> bytes:
    with Pop3(port, timeout=60) as p:
        st = p.login(user, password)
        if ok(st):
            assert p.quit().startswith(b"+OK")
        return st


def timed_session(port: int, user: str = "scanner", password: str = DEVICE_PW):
    t0 = time.monotonic()
    st = session(port, user, password)
    return st, time.monotonic() - t0


def reads_all_mail(port: int, mailbox: str, user: str = "scanner",
                   password: str = DEVICE_PW, log=lambda: "") -> None:
    with Pop3(port, timeout=60) as p:
        st = p.login(user, password)
        assert ok(st), (st, log()[-3000:])
        assert p.cmd("STAT").startswith(b"+OK %d " % len(MESSAGES[mailbox]))
        for n, body in enumerate(MESSAGES[mailbox], 1):
            st, got = p.retr(n)
            assert ok(st) and got == pop3_expected(body), (mailbox, n)
        assert p.quit().startswith(b"+OK")


def assert_no_secrets(text: str, idp: IdP, *key_files: str) -> None:
    secrets = [CLIENT_SECRET, DEVICE_PW, COPIER_PW, OUTSIDER_PW] + idp.issued
    for path in key_files:
        with open(path) as f:
            pem = f.read()
        if path.endswith(".json"):
            pem = json.loads(pem)["private_key"]
        secrets += [ln for ln in pem.splitlines() if ln and not ln.startswith("-----")][1:3]
    for secret in secrets:
        assert secret not in text, "a secret reached the output: %s..." % secret[:6]


def consent_by_paste(site: Site) -> None:
    """A whole consent, finished by pasting the address; must succeed."""
    with Consent(site) as c:
        location = sign_in(site.idp, c.url())
        c.paste(location)
        rc, out, err = c.finish()
    assert rc == 0, out + err
    assert "Authorised: tokens stored in %s" % site.store in out, out


# ---- the browser consent ----

def test_browser_consent_finished_by_the_redirect_then_a_device_reads_mail(
        tmp_path, idp, oauth_dovecot, make_server):
    # Google's Desktop-app clients come with a (not very secret) secret.
    idp.auth_code_client_secret = CLIENT_SECRET
    site = Site(tmp_path, idp, auth_code_source(idp, secret_file=write_secret(tmp_path)),
                devices=[("scanner", DEVICE_PW, ALICE)])
    s = make_server(site.args(), backend_port=oauth_dovecot.port)
    # Before consent: no token, and the log says what to run.
    st = session(s.port)
    assert st.startswith(b"-ERR [SYS/TEMP]"), st
    assert s.wait_log(r"--oauth-consent src", 5), s.log()[-2000:]
    before = idp.counts["/token:authorization_code"]
    with Consent(site) as c:
        url = c.url()
        q = check_authorization_url(url, site)
        location = sign_in(idp, url)
        assert location.startswith(q["redirect_uri"] + "?") and "code=" in location, location
        # The browser follows the redirect to pop3server's loopback listener.
        status, _, page = browse(location)
        assert status == 200, (status, page)
        rc, out, err = c.finish()
    assert rc == 0, out + err
    assert "Authorised: tokens stored in %s" % site.store in out, out
    assert idp.counts["/token:authorization_code"] == before + 1
    exchange = idp.verified[-1]
    assert exchange["grant"] == "authorization_code" and exchange["account"] == ALICE
    assert exchange["redirect_uri"] == q["redirect_uri"]
    assert "client_secret" in exchange["fields"] and "code_verifier" in exchange["fields"]
    saved = load(site.store)
    assert saved.get("refresh_token") and abs(saved.get("consented_at", 0) - time.time()) < 120, \
        sorted(saved)
    # The loopback listener is gone with the process.
    with pytest.raises(OSError):
        browse(location)
    # A device logs in with its own password and reads the consenting
    # account's mail; the token is refreshed with the stored refresh token.
    reads_all_mail(s.port, ALICE, log=s.log)
    expire_access_token(site.store)
    before = idp.counts["/token:refresh_token"]
    assert ok(session(s.port)), s.log()[-2000:]
    assert idp.counts["/token:refresh_token"] == before + 1
    assert_no_secrets(s.log() + out + err, idp)


def test_browser_consent_finished_by_pasting_the_address_on_a_fixed_port(
        tmp_path, idp, oauth_dovecot, make_server):
    port = testbed.free_port()
    idp.registered_redirect_port = port  # a public client with one registered port
    site = Site(tmp_path, idp, auth_code_source(idp, redirect_port=port),
                devices=[("scanner", DEVICE_PW, ALICE)])
    before = idp.counts["/token:authorization_code"]
    with Consent(site) as c:
        url = c.url()
        check_authorization_url(url, site, port=port)
        # A headless server: the redirect page does not load, its address
        # is pasted from the browser's address bar.
        location = sign_in(idp, url)
        c.paste(location)
        rc, out, err = c.finish()
    assert rc == 0, out + err
    assert "Authorised: tokens stored in %s" % site.store in out, out
    assert idp.counts["/token:authorization_code"] == before + 1
    assert "client_secret" not in idp.verified[-1]["fields"], "a public client"
    s = make_server(site.args(), backend_port=oauth_dovecot.port)
    reads_all_mail(s.port, ALICE, log=s.log)
    assert_no_secrets(s.log() + out + err, idp)


def test_a_pasted_address_with_a_wrong_state_stores_nothing(tmp_path, idp, oauth_dovecot):
    site = Site(tmp_path, idp, auth_code_source(idp), devices=[("scanner", DEVICE_PW, ALICE)])
    before = idp.counts["/token:authorization_code"]
    with Consent(site) as c:
        location = sign_in(idp, c.url())
        q = query(location)
        u = urllib.parse.urlsplit(location)
        forged = urllib.parse.urlunsplit(u._replace(query=urllib.parse.urlencode(
            [(k, "forged" + os.urandom(8).hex() if k == "state" else v)
             for k, v in urllib.parse.parse_qsl(u.query)])))
        assert query(forged)["code"] == q["code"] and query(forged)["state"] != q["state"]
        c.paste(forged)
        rc, out, err = c.finish()
    assert rc != 0, out + err
    assert re.search(r"(?i)state", err), err
    assert not os.path.exists(site.store)
    assert idp.counts["/token:authorization_code"] == before, "a forged answer is not redeemed"
    assert not idp.codes[q["code"]]["used"]


def test_a_denied_consent_stores_nothing(tmp_path, idp, oauth_dovecot):
    site = Site(tmp_path, idp, auth_code_source(idp), devices=[("scanner", DEVICE_PW, ALICE)])
    idp.deny_consent = True
    before = idp.counts["token"]
    with Consent(site) as c:
        location = sign_in(idp, c.url())
        assert query(location)["error"] == "access_denied"
        status, _, page = browse(location)  # the browser lands on the loopback port
        rc, out, err = c.finish()
    assert status != 200 or "access_denied" in page or "denied" in page, (status, page)
    assert rc != 0, out + err
    assert "access_denied" in err, err
    assert not os.path.exists(site.store)
    assert idp.counts["token"] == before


def test_a_refused_code_stores_nothing(tmp_path, idp, oauth_dovecot):
    site = Site(tmp_path, idp, auth_code_source(idp), devices=[("scanner", DEVICE_PW, ALICE)])
    idp.refuse["authorization_code"] = "invalid_grant"
    before = idp.counts["/token:authorization_code"]
    with Consent(site) as c:
        c.paste(sign_in(idp, c.url()))
        rc, out, err = c.finish()
    assert rc != 0, out + err
    assert "invalid_grant" in err, err
    assert not os.path.exists(site.store)
    assert idp.counts["/token:authorization_code"] == before + 1


def test_a_consent_nobody_finishes_ends_after_the_timeout(tmp_path, idp, oauth_dovecot):
    site = Site(tmp_path, idp, auth_code_source(idp), devices=[("scanner", DEVICE_PW, ALICE)])
    t0 = time.monotonic()
    with Consent(site, "--consent-timeout", "2") as c:
        c.url()
        rc, out, err = c.finish(timeout=30)
    assert rc != 0 and time.monotonic() - t0 >= 1.5, out + err
    assert re.search(r"(?i)tim(e|ed) ?out|within|in time", err), err
    assert not os.path.exists(site.store)


# ---- a service account ----

def test_service_account_one_token_per_mailbox_and_an_undelegated_one_refused(
        tmp_path, idp, oauth_dovecot, make_server):
    sa = idp.add_service_account(str(tmp_path / "keys"))
    idp.delegated_mailboxes = {MB1, MB2}
    site = Site(tmp_path, idp, service_account_source(sa),
                devices=[("scanner", DEVICE_PW, MB1), ("copier", COPIER_PW, MB2),
                         ("outsider", OUTSIDER_PW, MB3)])
    s = make_server(site.args(), backend_port=oauth_dovecot.port)
    n1, n2, n3 = (idp.counts["jwt:" + m] for m in (MB1, MB2, MB3))
    reads_all_mail(s.port, MB1, log=s.log)
    reads_all_mail(s.port, MB2, "copier", COPIER_PW, log=s.log)
    assert (idp.counts["jwt:" + MB1], idp.counts["jwt:" + MB2]) == (n1 + 1, n2 + 1)
    # Each mailbox's token is reused.
    assert ok(session(s.port)) and ok(session(s.port, "copier", COPIER_PW))
    assert (idp.counts["jwt:" + MB1], idp.counts["jwt:" + MB2]) == (n1 + 1, n2 + 1)
    stores = site.mailbox_stores()
    assert sorted(stores) == sorted([MB1, MB2]), stores
    for path in stores.values():
        assert os.stat(path).st_mode & 0o777 == 0o600, path
    # What the provider verified: the assertion as Google documents it.
    for mailbox in (MB1, MB2):
        v = [v for v in idp.verified if v["grant"] == "jwt_bearer"
             and v["claims"]["sub"] == mailbox and v["claims"]["iss"] == sa["client_email"]]
        assert len(v) == 1, v
        h, c = v[0]["header"], v[0]["claims"]
        assert (h["alg"], h.get("typ"), h["kid"]) == ("RS256", "JWT", sa["private_key_id"]), h
        assert c["aud"] == idp.url("/token") and c["scope"] == GMAIL_SCOPE, c
        assert c["exp"] - c["iat"] == 3600, c
        assert sorted(v[0]["fields"]) == ["assertion", "grant_type"], v[0]["fields"]
    # A mailbox the account is not delegated for: refused, and the log says why.
    st = session(s.port, "outsider", OUTSIDER_PW)
    assert st.startswith(b"-ERR"), st
    assert idp.counts["jwt:" + MB3] == n3 + 1
    assert s.wait_log(r"outsider.*unauthorized_client|unauthorized_client.*outsider", 5), \
        s.log()[-3000:]
    # ... which rests that mailbox only.
    assert session(s.port, "outsider", OUTSIDER_PW).startswith(b"-ERR")
    assert idp.counts["jwt:" + MB3] == n3 + 1
    assert ok(session(s.port))
    assert_no_secrets(s.log(), idp, sa["file"])


# ---- a certificate credential ----

def test_certificate_credential_the_provider_verifies_thumbprint_and_signature(
        tmp_path, idp, oauth_dovecot, make_server):
    cert = idp.add_client_certificate(str(tmp_path / "keys"))
    site = Site(tmp_path, idp, certificate_source(idp, cert))
    s = make_server(site.args(), backend_port=oauth_dovecot.port)
    before = idp.counts["cert"]
    reads_all_mail(s.port, MB1, log=s.log)
    assert idp.counts["cert"] == before + 1
    v = idp.verified[-1]
    assert v["grant"] == "client_credentials" and v["proof"] == "certificate", v
    h, c = v["header"], v["claims"]
    assert h["alg"] == "RS256" and h["x5t#S256"] == cert["x5t#S256"] and \
        h["x5t"] == cert["x5t"], h
    assert c["iss"] == c["sub"] == CLIENT_ID and c["aud"] == idp.url("/token"), c
    assert 0 < c["exp"] - time.time() <= 300 + 5 and len(c["jti"]) >= 16, c
    assert "client_secret" not in v["fields"] and "scope" in v["fields"], v["fields"]
    # The token is reused by the next session.
    assert ok(session(s.port))
    assert idp.counts["cert"] == before + 1
    assert os.path.exists(site.store)
    assert_no_secrets(s.log(), idp, cert["key"])


# ---- dead grants rest ----

def test_a_dead_service_account_grant_rests_until_the_rest_is_over(
        tmp_path, idp, oauth_dovecot, make_server):
    sa = idp.add_service_account(str(tmp_path / "keys"))
    idp.delegated_mailboxes = {MB1, MB2}
    site = Site(tmp_path, idp, service_account_source(sa),
                devices=[("scanner", DEVICE_PW, MB1), ("copier", COPIER_PW, MB2)])
    s = make_server(site.args(), backend_port=oauth_dovecot.port)
    idp.refuse["jwt_bearer:" + MB1] = "invalid_grant"
    n1 = idp.counts["jwt:" + MB1]
    st = session(s.port)
    assert st.startswith(b"-ERR [SYS/TEMP]"), st
    assert idp.counts["jwt:" + MB1] == n1 + 1
    assert s.wait_log(r"invalid_grant", 5), s.log()[-3000:]
    store = site.mailbox_stores()[MB1]
    saved = load(store)
    assert abs(saved["dead_since"] - time.time()) < 120 and saved["dead_reason"], saved
    # Resting: devices are told at once, the provider is not asked.
    for _ in range(3):
        st, took = timed_session(s.port)
        assert st.startswith(b"-ERR [SYS/TEMP]") and took < 5, (st, took)
    idp.refuse.clear()  # the admin fixed the delegation; the rest goes on
    st, took = timed_session(s.port)
    assert st.startswith(b"-ERR [SYS/TEMP]") and took < 5, (st, took)
    assert idp.counts["jwt:" + MB1] == n1 + 1, "no request during the rest"
    # The other mailbox of the same account is not resting.
    assert ok(session(s.port, "copier", COPIER_PW)), s.log()[-2000:]
    # The rest is over: one request, and the device is in.
    rewrite(store, dead_since=load(store)["dead_since"] - REST - 100)
    assert ok(session(s.port)), s.log()[-2000:]
    assert idp.counts["jwt:" + MB1] == n1 + 2
    assert "dead_since" not in load(store) or load(store)["dead_since"] is None


def test_a_dead_certificate_grant_rests_until_the_configuration_changes(
        tmp_path, idp, oauth_dovecot, make_server):
    cert = idp.add_client_certificate(str(tmp_path / "keys"))
    site = Site(tmp_path, idp, certificate_source(idp, cert))
    s = make_server(site.args(), backend_port=oauth_dovecot.port)
    idp.refuse["client_credentials"] = "invalid_client"
    before = idp.counts["cert"]
    st = session(s.port)
    assert st.startswith(b"-ERR [SYS/TEMP]"), st
    assert idp.counts["cert"] == before + 1
    assert s.wait_log(r"invalid_client", 5), s.log()[-3000:]
    assert load(site.store).get("dead_since"), load(site.store)
    st, took = timed_session(s.port)
    assert st.startswith(b"-ERR [SYS/TEMP]") and took < 5, (st, took)
    # The rest is in the state directory: a restarted server rests as well.
    s.stop()
    s = make_server(site.args(), backend_port=oauth_dovecot.port)
    st, took = timed_session(s.port)
    assert st.startswith(b"-ERR [SYS/TEMP]") and took < 5, (st, took)
    assert idp.counts["cert"] == before + 1, "no request during the rest"
    # The admin uploads a new certificate and configures it: asked at once.
    idp.refuse.clear()
    new = idp.add_client_certificate(str(tmp_path / "keys"), name="renewed")
    site.write(certificate_source(idp, new))
    s.stop()
    s = make_server(site.args(), backend_port=oauth_dovecot.port)
    assert ok(session(s.port)), s.log()[-2000:]
    assert idp.counts["cert"] == before + 2
    assert idp.verified[-1]["header"]["x5t#S256"] == new["x5t#S256"]


def test_a_dead_refresh_token_rests_until_a_new_consent(
        tmp_path, idp, oauth_dovecot, make_server):
    site = Site(tmp_path, idp, auth_code_source(idp), devices=[("scanner", DEVICE_PW, ALICE)])
    s = make_server(site.args(), backend_port=oauth_dovecot.port)
    consent_by_paste(site)
    assert ok(session(s.port)), s.log()[-2000:]
    expire_access_token(site.store)
    idp.invalid_grant = True  # e.g. unused for 90 days, or a policy ended it
    before = idp.counts["/token:refresh_token"]
    st = session(s.port)
    assert st.startswith(b"-ERR [SYS/TEMP]"), st
    assert idp.counts["/token:refresh_token"] == before + 1
    assert s.wait_log(r"invalid_grant.*--oauth-consent src", 5), s.log()[-3000:]
    idp.invalid_grant = False
    for _ in range(2):
        st, took = timed_session(s.port)
        assert st.startswith(b"-ERR [SYS/TEMP]") and took < 5, (st, took)
    assert idp.counts["/token:refresh_token"] == before + 1, "no request during the rest"
    consent_by_paste(site)
    assert ok(session(s.port)), s.log()[-2000:]


# ---- token health ----

def status_block(r: subprocess.CompletedProcess, grant: str) -> str:
    """The ``[oauth.src]`` block of --oauth-status's output: its head line
    and the indented detail lines after it."""
    lines = r.stdout.splitlines()
    head = [i for i, ln in enumerate(lines) if ln.startswith("[oauth.src] grant %s: " % grant)]
    assert len(head) == 1, r.stdout + r.stderr
    block = [lines[head[0]]]
    for ln in lines[head[0] + 1:]:
        if not ln[:1].isspace():
            break
        block.append(ln)
    assert len(block) > 1, "detail lines: " + r.stdout
    return "\n".join(block)


def utc_date(secs: float) -> str:
    return datetime.datetime.fromtimestamp(secs, datetime.timezone.utc).strftime("%Y-%m-%d")


def test_oauth_status_of_fresh_sources_is_ok(tmp_path, idp, oauth_dovecot, make_server):
    cert = idp.add_client_certificate(str(tmp_path / "keys"))
    (tmp_path / "cert").mkdir()
    site = Site(tmp_path / "cert", idp, certificate_source(idp, cert))
    s = make_server(site.args(), backend_port=oauth_dovecot.port)
    assert ok(session(s.port)), s.log()[-2000:]
    r = site.status()
    assert r.returncode == 0, r.stdout + r.stderr
    block = status_block(r, "client_credentials")
    assert block.startswith("[oauth.src] grant client_credentials: ok"), block
    assert utc_date(cert["not_after"]) in block, "the certificate's notAfter: " + block
    # A browser consent just made, with the providers' limits configured.
    (tmp_path / "consent").mkdir()
    site = Site(tmp_path / "consent", idp, auth_code_source(
        idp, extra="refresh_token_max_idle_days = 90\nrefresh_token_max_age_days = 180\n"),
        devices=[("scanner", DEVICE_PW, ALICE)])
    consent_by_paste(site)
    r = site.status()
    assert r.returncode == 0, r.stdout + r.stderr
    assert status_block(r, "authorization_code").startswith(
        "[oauth.src] grant authorization_code: ok"), r.stdout
    assert_no_secrets(r.stdout + r.stderr, idp, cert["key"])


def test_oauth_status_of_expiring_sources(tmp_path, idp, oauth_dovecot, make_server):
    # A certificate that ends in five days.
    cert = idp.add_client_certificate(str(tmp_path / "keys"), name="short", days=5)
    (tmp_path / "cert").mkdir()
    site = Site(tmp_path / "cert", idp, certificate_source(idp, cert))
    s = make_server(site.args(), backend_port=oauth_dovecot.port)
    assert ok(session(s.port)), s.log()[-2000:]
    r = site.status()
    assert r.returncode == 1, r.stdout + r.stderr
    block = status_block(r, "client_credentials")
    assert block.startswith("[oauth.src] grant client_credentials: expiring"), block
    assert utc_date(cert["not_after"]) in block, block
    # A client secret the admin says expires in ten days.
    (tmp_path / "secret").mkdir()
    date = utc_date(time.time() + 10 * DAY)
    site = Site(tmp_path / "secret", idp, (
        'grant = "client_credentials"\ntoken_url = "%s"\nclient_id = "%s"\n'
        'client_secret_file = "%s"\nscope = "%s"\nclient_secret_expires = "%s"\n'
        % (idp.url("/token"), CLIENT_ID, write_secret(tmp_path), MS_SCOPE, date)))
    r = site.status()
    assert r.returncode == 1, r.stdout + r.stderr
    block = status_block(r, "client_credentials")
    assert block.startswith("[oauth.src] grant client_credentials: expiring") and date in block, \
        block
    # A refresh token unused for 80 of the provider's 90 days.
    (tmp_path / "consent").mkdir()
    site = Site(tmp_path / "consent", idp, auth_code_source(
        idp, extra="refresh_token_max_idle_days = 90\n"), devices=[("scanner", DEVICE_PW, ALICE)])
    consent_by_paste(site)
    then = int(time.time()) - 80 * DAY
    rewrite(site.store, consented_at=then, refresh_used_at=then)
    r = site.status()
    assert r.returncode == 1, r.stdout + r.stderr
    assert status_block(r, "authorization_code").startswith(
        "[oauth.src] grant authorization_code: expiring"), r.stdout


def test_oauth_status_of_broken_sources(tmp_path, idp, oauth_dovecot, make_server):
    # No consent yet.
    (tmp_path / "unconsented").mkdir()
    site = Site(tmp_path / "unconsented", idp, auth_code_source(idp),
                devices=[("scanner", DEVICE_PW, ALICE)])
    r = site.status()
    assert r.returncode == 2, r.stdout + r.stderr
    block = status_block(r, "authorization_code")
    assert block.startswith("[oauth.src] grant authorization_code: broken"), block
    assert "--oauth-consent src" in block, block
    # A service account whose grant the provider refused: resting, with the
    # provider's words.
    sa = idp.add_service_account(str(tmp_path / "keys"))
    idp.delegated_mailboxes = {MB1}
    idp.refuse["jwt_bearer"] = "invalid_grant"
    (tmp_path / "dead").mkdir()
    site = Site(tmp_path / "dead", idp, service_account_source(sa))
    s = make_server(site.args(), backend_port=oauth_dovecot.port)
    assert session(s.port).startswith(b"-ERR [SYS/TEMP]")
    r = site.status()
    assert r.returncode == 2, r.stdout + r.stderr
    block = status_block(r, "jwt_bearer")
    assert block.startswith("[oauth.src] grant jwt_bearer: broken"), block
    assert "invalid_grant" in block and MB1 in block, block
    # A client secret that expired yesterday.
    (tmp_path / "secret").mkdir()
    site = Site(tmp_path / "secret", idp, (
        'grant = "client_credentials"\ntoken_url = "%s"\nclient_id = "%s"\n'
        'client_secret_file = "%s"\nscope = "%s"\nclient_secret_expires = "%s"\n'
        % (idp.url("/token"), CLIENT_ID, write_secret(tmp_path), MS_SCOPE,
           utc_date(time.time() - DAY))))
    r = site.status()
    assert r.returncode == 2, r.stdout + r.stderr
    assert status_block(r, "client_credentials").startswith(
        "[oauth.src] grant client_credentials: broken"), r.stdout
    assert_no_secrets(r.stdout + r.stderr, idp, sa["file"])


# ---- --check ----

def test_check_works_with_a_service_account_and_a_certificate(tmp_path, idp, oauth_dovecot):
    sa = idp.add_service_account(str(tmp_path / "keys"))
    idp.delegated_mailboxes = {MB1}
    cert = idp.add_client_certificate(str(tmp_path / "keys"))
    for name, source, key in (("sa", service_account_source(sa), sa["file"]),
                              ("cert", certificate_source(idp, cert), cert["key"])):
        (tmp_path / name).mkdir()
        site = Site(tmp_path / name, idp, source)
        r = site.check(oauth_dovecot.port)
        assert r.returncode == 0, (name, r.stdout + r.stderr)
        for line in ("token source [oauth.src]", "login: ok", "folder INBOX: 3 messages"):
            assert line in r.stdout, (name, line, r.stdout)
        assert_no_secrets(r.stdout + r.stderr, idp, key)
