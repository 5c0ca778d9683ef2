"""Devices with a password of their own in front of an IMAP server that only
takes OAuth2 tokens: the real Dovecot checks every token through its SASL
(oauth_idp.OAuthDovecot) with the stand-in identity provider (oauth_idp.IdP),
which is the one thing that cannot run for real here.

Covered: a device logs in and RETRs byte-exact; a wrong password and an
unknown device get the same answer; tokens are reused, refreshed when
expired, refreshed once when the backend refuses one, and twenty sessions
with an expired token make one request; the device-code consent and the
rotation of refresh tokens, also across a SIGKILL before the request and
after the write; invalid_grant and an unreachable or failing endpoint give
-ERR [SYS/TEMP] and a log line that says what to do; re-consent without a
restart; no secret in any log line (debug on); the store's permissions."""

from __future__ import annotations

import fcntl
import os
import re
import signal
import stat
import subprocess
import threading
import time

import pytest

import testbed
from helpers import Pop3, ok, pop3_expected, server_bin, wait_for
from oauth_idp import CLIENT_ID, CLIENT_SECRET, IdP, OAuthDovecot

MAILBOX = "scans@example.org"
DELEGATED = "alice@example.org"
DEVICE_PW = "scanner-pw-1"
MESSAGES = [testbed.simple_message("scans", n, body_lines=n) for n in (1, 2, 3)]


@pytest.fixture(scope="module")
def idp(dovecot):
    p = IdP(dovecot.tls)
    yield p
    p.stop()


@pytest.fixture(scope="module")
def oauth_dovecot(workdir, idp):
    dc = OAuthDovecot(os.path.join(workdir, "oauth-dovecot"), idp)
    dc.add_user(MAILBOX, "unused", MESSAGES)
    dc.add_user(DELEGATED, "unused", [testbed.simple_message("alice-oauth", 1)])
    try:
        dc.start()
    except Exception:
        dc.stop()
        raise
    yield dc
    dc.stop()


def device_hash(password: str) -> str:
    r = subprocess.run([server_bin(), "--config", "/dev/null", "--hash-password"],
                       input=password + "\n", capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout.startswith("$argon2id$"), r.stderr
    return r.stdout.strip()


class Site:
    """A configuration with one token source ``src`` and devices."""

    def __init__(self, tmp_path, idp: IdP, dovecot, grant: str = "client_credentials",
                 mailbox: str = MAILBOX, mechanism: str = "xoauth2"):
        self.dir = tmp_path
        self.state_dir = str(tmp_path / "state")
        self.conf = str(tmp_path / "pop3server.toml")
        secret = tmp_path / "client.secret"
        secret.write_text(CLIENT_SECRET + "\n")
        os.chmod(secret, 0o600)
        devices = tmp_path / "devices.toml"
        h = device_hash(DEVICE_PW)
        devices.write_text(
            '[device.scanner]\npassword = "%s"\nmailbox = "%s"\noauth = "src"\n'
            '[device.copier]\npassword = "%s"\nmailbox = "%s"\noauth = "src"\n'
            % (h, mailbox, device_hash("copier-pw"), mailbox))
        os.chmod(devices, 0o640)
        with open(self.conf, "w") as f:
            f.write('devices_file = "%s"\nstate_dir = "%s"\n\n[oauth.src]\n'
                    'grant = "%s"\ntoken_url = "%s"\ndevice_authorization_url = "%s"\n'
                    'client_id = "%s"\nclient_secret_file = "%s"\n'
                    'scope = "https://outlook.office365.com/.default offline_access"\n'
                    'ca_file = "%s"\nmechanism = "%s"\n'
                    % (devices, self.state_dir, grant, idp.url("/token"),
                       idp.url("/devicecode"), CLIENT_ID, secret, idp.ca, mechanism))
        self.store = os.path.join(self.state_dir, "oauth", "src.json")

    def args(self, *extra):
        return ["--config", self.conf, "--debug"] + list(extra)

    def consent(self, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([server_bin(), "--config", self.conf, "--oauth-consent", "src",
                               "--log", "stderr"],
                              capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)


def assert_no_secrets(text: str, idp: IdP) -> None:
    for secret in [CLIENT_SECRET, DEVICE_PW, "copier-pw"] + idp.issued:
        assert secret not in text, "a secret reached the log: %s..." % secret[:6]


def session(port: int, user: str = "scanner", password: str = DEVICE_PW) -> bytes:
    with Pop3(port, timeout=60) as p:
        st = p.login(user, password)
        if ok(st):
            assert p.quit().startswith(b"+OK")
        return st


def test_device_logs_in_with_its_password_and_retrieves_byte_exact(
        tmp_path, idp, oauth_dovecot, make_server):
    site = Site(tmp_path, idp, oauth_dovecot)
    s = make_server(site.args(), backend_port=oauth_dovecot.port)
    before = idp.counts["token"]
    with Pop3(s.port, timeout=60) as p:
        st = p.login("scanner", DEVICE_PW)
        assert ok(st), (st, s.log()[-3000:])
        assert p.cmd("STAT").startswith(b"+OK 3 ")
        for n, body in enumerate(MESSAGES, 1):
            st, got = p.retr(n)
            assert ok(st) and got == pop3_expected(body), n
        assert p.quit().startswith(b"+OK")
    assert idp.counts["token"] == before + 1
    # The next session, and another device of the same mailbox, reuse it.
    assert ok(session(s.port))
    assert ok(session(s.port, "copier", "copier-pw"))
    assert idp.counts["token"] == before + 1
    assert s.wait_log(r"device login: user=scanner mailbox=scans@example\.org", 5)
    assert s.wait_log(r"session end: user=scanner .* end=quit", 5)
    # The store: 0600 in a 0700 directory.
    assert stat.S_IMODE(os.stat(site.store).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(site.store)).st_mode) == 0o700
    assert_no_secrets(s.log(), idp)


def test_wrong_password_and_unknown_device_get_the_same_answer(
        tmp_path, idp, oauth_dovecot, make_server):
    site = Site(tmp_path, idp, oauth_dovecot)
    s = make_server(site.args(), backend_port=oauth_dovecot.port)
    before = idp.counts["token"]
    answers = [session(s.port, "scanner", "wrong"), session(s.port, "nosuchdevice", DEVICE_PW)]
    assert answers == [b"-ERR [AUTH] Authentication failed"] * 2, answers
    assert idp.counts["token"] == before, "no token for a failed device login"
    assert s.wait_log(r"login failed: rip=127\.0\.0\.1 method=USER user=<nosuchdevice> "
                      r"reason=no such device", 5), s.log()[-2000:]
    assert_no_secrets(s.log(), idp)


def test_failed_logins_from_one_address_slow_down_across_processes(
        tmp_path, idp, oauth_dovecot, make_server):
    site = Site(tmp_path, idp, oauth_dovecot)
    s = make_server(site.args(), backend_port=oauth_dovecot.port)
    times = []
    for _ in range(3):  # each in its own session process
        t0 = time.monotonic()
        assert session(s.port, "scanner", "wrong").startswith(b"-ERR [AUTH]")
        times.append(time.monotonic() - t0)
    # The third failure from 127.0.0.1 waits 2 s more than the first.
    assert times[2] - times[0] > 1.5, times
    files = [f for f in os.listdir(s.lock_dir) if f.startswith("penalty-")]
    assert len(files) == 1, files
    # The right password is still let in (after its delay), and resets it.
    assert ok(session(s.port))
    assert not [f for f in os.listdir(s.lock_dir) if f.startswith("penalty-")]


def test_expired_token_is_refreshed_and_twenty_sessions_make_one_request(
        tmp_path, idp, oauth_dovecot, make_server):
    site = Site(tmp_path, idp, oauth_dovecot)
    s = make_server(site.args(), backend_port=oauth_dovecot.port)
    assert ok(session(s.port))
    # Make the stored token expire; the next sessions need a new one.
    with open(site.store) as f:
        saved = f.read()
    with open(site.store, "w") as f:
        f.write(re.sub(r'"expires_at":\d+', '"expires_at":1', saved))
    before = idp.counts["token"]
    idp.slow = 1.0  # so that the sessions really overlap
    results = [None] * 20

    def one(i):
        try:
            results[i] = session(s.port)
        except Exception as e:  # noqa: BLE001 - reported below
            results[i] = repr(e).encode()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        idp.slow = 0
    # Devices of one mailbox take turns: a session that finds the maildrop
    # locked is told so; every other one logged in.
    assert all(r and (ok(r) or r.startswith(b"-ERR [IN-USE]")) for r in results), results
    print("20 sessions:", sum(1 for r in results if ok(r)), "logged in,",
          sum(1 for r in results if r.startswith(b"-ERR [IN-USE]")), "found the maildrop in use")
    assert sum(1 for r in results if ok(r)) >= 1, results
    assert idp.counts["token"] == before + 1, idp.counts


def test_a_refused_token_is_refreshed_once_and_the_login_retried(
        tmp_path, idp, oauth_dovecot, make_server):
    site = Site(tmp_path, idp, oauth_dovecot)
    s = make_server(site.args(), backend_port=oauth_dovecot.port)
    assert ok(session(s.port))
    before = idp.counts["token"]
    idp.revoke_access()  # the stored token looks valid but is dead
    assert ok(session(s.port)), s.log()[-2000:]
    assert idp.counts["token"] == before + 1


def test_consent_then_rotating_refresh_tokens_survive_sigkill(
        tmp_path, idp, oauth_dovecot, make_server):
    site = Site(tmp_path, idp, oauth_dovecot, grant="refresh_token", mailbox=DELEGATED)
    s = make_server(site.args(), backend_port=oauth_dovecot.port)
    # Before consent: no token, and the log says what to run.
    assert session(s.port).startswith(b"-ERR [SYS/TEMP]")
    assert s.wait_log(r"no refresh token yet: run pop3server --oauth-consent src", 5)
    r = site.consent()
    assert r.returncode == 0, r.stdout + r.stderr
    assert "https://idp.example/device" in r.stdout and "WDJB-MJHT" in r.stdout, r.stdout
    assert "Authorised" in r.stdout
    assert idp.counts["/token:urn:ietf:params:oauth:grant-type:device_code"] >= 3  # pending, slow_down, ok
    assert ok(session(s.port)), s.log()[-2000:]

    def expire():
        with open(site.store) as f:
            saved = f.read()
        with open(site.store, "w") as f:
            f.write(re.sub(r'"expires_at":\d+', '"expires_at":1', saved))

    # Each refresh rotates the refresh token; the old one is dead at once.
    for _ in range(2):
        expire()
        assert ok(session(s.port)), s.log()[-2000:]

    # Killed before the request: waiting for the refresh lock, which the
    # test holds. Nothing was asked of the provider, nothing is lost.
    expire()
    before = idp.counts["token"]
    lock = open(os.path.join(site.state_dir, "oauth", "src.lock"), "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        c = Pop3(s.port, timeout=60)
        c.cmd("USER scanner")
        c.send(b"PASS " + DEVICE_PW.encode() + b"\r\n")
        assert wait_for(lambda: len(_children(s)) > 0, 5)
        time.sleep(0.5)
        for pid in _children(s):
            os.kill(pid, signal.SIGKILL)
        c.close()
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()
    assert idp.counts["token"] == before
    assert ok(session(s.port)), s.log()[-2000:]

    # Killed after the write: the rotated token is on disk, the IMAP login
    # is still under way (the IdP answers Dovecot slowly) when the process
    # dies. The next session logs in with what was written.
    expire()
    idp.slow_introspect = 3.0
    try:
        c = Pop3(s.port, timeout=60)
        c.cmd("USER scanner")
        c.send(b"PASS " + DEVICE_PW.encode() + b"\r\n")
        assert wait_for(lambda: "expires_at\":1," not in open(site.store).read(), 10)
        for pid in _children(s):
            os.kill(pid, signal.SIGKILL)
        c.close()
    finally:
        idp.slow_introspect = 0
    assert ok(session(s.port)), s.log()[-2000:]
    # ... and the rotated refresh token written then is the one that works.
    expire()
    assert ok(session(s.port)), s.log()[-2000:]
    assert_no_secrets(s.log() + r.stdout + r.stderr, idp)


def _children(s) -> list:
    """PIDs of the standalone server's session processes."""
    out = subprocess.run(["pgrep", "-P", str(s.proc.pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def test_invalid_grant_says_which_consent_to_run_and_reconsent_needs_no_restart(
        tmp_path, idp, oauth_dovecot, make_server):
    site = Site(tmp_path, idp, oauth_dovecot, grant="refresh_token", mailbox=DELEGATED)
    s = make_server(site.args(), backend_port=oauth_dovecot.port)
    assert site.consent().returncode == 0
    with open(site.store) as f:
        saved = f.read()
    with open(site.store, "w") as f:
        f.write(re.sub(r'"expires_at":\d+', '"expires_at":1', saved))
    idp.invalid_grant = True
    try:
        st = session(s.port)
        assert st.startswith(b"-ERR [SYS/TEMP]"), st
        assert s.wait_log(r"device scanner: no token: .*invalid_grant.*"
                          r"run pop3server --oauth-consent src to authorise again", 5), \
            s.log()[-2000:]
    finally:
        idp.invalid_grant = False
    # The admin re-consents; the running server's next session works.
    assert site.consent().returncode == 0
    assert ok(session(s.port)), s.log()[-2000:]


def test_token_endpoint_down_or_failing_gives_sys_temp(
        tmp_path, idp, oauth_dovecot, make_server):
    site = Site(tmp_path, idp, oauth_dovecot)
    s = make_server(site.args(), backend_port=oauth_dovecot.port)
    idp.fail = 1
    st = session(s.port)
    assert st.startswith(b"-ERR [SYS/TEMP]"), st
    assert s.wait_log(r"device scanner: no token now: token endpoint unavailable: .*HTTP 500", 5)
    # Nothing listens on the token URL: the same, quickly.
    with open(site.conf) as f:
        conf = f.read()
    with open(site.conf, "w") as f:
        f.write(conf.replace(idp.url("/token"),
                             "https://127.0.0.1:%d/token" % testbed.free_port()))
    s2 = make_server(site.args(), backend_port=oauth_dovecot.port)
    t0 = time.monotonic()
    st = session(s2.port)
    assert st.startswith(b"-ERR [SYS/TEMP]") and time.monotonic() - t0 < 20, st
    assert s2.wait_log(r"no token now: token endpoint unavailable", 5)
    assert_no_secrets(s.log() + s2.log(), idp)


def test_cached_token_session_cost_is_recorded(tmp_path, idp, oauth_dovecot, make_server):
    """What a device login costs over a client that brings its own token, on
    the same OAuth2-only Dovecot (so the backend's token check is in both):
    the local password check and the token store. A metric, not a limit."""
    import base64
    import statistics
    from helpers import record_metric
    site = Site(tmp_path, idp, oauth_dovecot)
    s = make_server(site.args(), backend_port=oauth_dovecot.port)
    assert ok(session(s.port))  # the token is cached from here on
    with idp.lock:
        token = idp._tokens(None, with_refresh=False)["access_token"]
    sasl = base64.b64encode(b"user=%s\x01auth=Bearer %s\x01\x01"
                            % (MAILBOX.encode(), token.encode())).decode()
    device, passthrough = [], []
    for _ in range(7):
        t0 = time.monotonic()
        assert ok(session(s.port))
        device.append(time.monotonic() - t0)
        t0 = time.monotonic()
        with Pop3(s.port, timeout=60) as p:
            assert p.cmd("AUTH XOAUTH2 " + sasl).startswith(b"+OK")
            assert p.quit().startswith(b"+OK")
        passthrough.append(time.monotonic() - t0)
    d, t = statistics.median(device), statistics.median(passthrough)
    record_metric("device login with a cached token: %.1f ms per session, client's own "
                  "token: %.1f ms (median of 7, same Dovecot): %.1f ms more"
                  % (d * 1000, t * 1000, (d - t) * 1000))


def test_check_runs_the_whole_device_chain(tmp_path, idp, oauth_dovecot):
    site = Site(tmp_path, idp, oauth_dovecot)
    pw = tmp_path / "pw"
    base = [server_bin(), "--config", site.conf, "--backend-host", "127.0.0.1",
            "--backend-port", str(oauth_dovecot.port), "--backend-tls", "none",
            "--log", "stderr", "--check", "--user", "scanner", "--password-file", str(pw)]
    pw.write_text(DEVICE_PW + "\n")
    r = subprocess.run(base, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    for line in ("devices: 2 in ", "device scanner: password ok, mailbox scans@example.org, "
                 "token source [oauth.src]", "token: ok, valid for ", "login: ok as scanner",
                 "folder INBOX: 3 messages", "OK"):
        assert line in r.stdout, (line, r.stdout)
    pw.write_text("wrong\n")
    r = subprocess.run(base, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "device scanner: no such device, or not its password" \
        in r.stderr, r.stdout + r.stderr
    pw.write_text(DEVICE_PW + "\n")
    idp.fail = 1
    r = subprocess.run(base, capture_output=True, text=True, timeout=60)
    idp.fail = 0
    # The token is cached by the first run: the endpoint is not asked again.
    assert r.returncode == 0, r.stdout + r.stderr
    os.remove(site.store)
    idp.fail = 1
    r = subprocess.run(base, capture_output=True, text=True, timeout=60)
    idp.fail = 0
    assert r.returncode == 1 and "no token: token endpoint unavailable" in r.stderr, r.stderr
    assert_no_secrets(r.stdout + r.stderr, idp)


def test_oauthbearer_works_as_well(tmp_path, idp, oauth_dovecot, make_server):
    site = Site(tmp_path, idp, oauth_dovecot, mechanism="oauthbearer")
    s = make_server(site.args(), backend_port=oauth_dovecot.port)
    with Pop3(s.port, timeout=60) as p:
        assert ok(p.login("scanner", DEVICE_PW)), s.log()[-2000:]
        st, got = p.retr(2)
        assert ok(st) and got == pop3_expected(MESSAGES[1])
        assert p.quit().startswith(b"+OK")


def test_consent_that_nobody_completes_in_time_says_so(tmp_path, idp, oauth_dovecot):
    site = Site(tmp_path, idp, oauth_dovecot, grant="refresh_token", mailbox=DELEGATED)
    idp.device_expired = True
    try:
        r = site.consent()
    finally:
        idp.device_expired = False
    assert r.returncode != 0, r.stdout
    assert "the code expired before anyone signed in: run pop3server --oauth-consent src again" \
        in r.stderr, r.stderr
    assert not os.path.exists(site.store)
