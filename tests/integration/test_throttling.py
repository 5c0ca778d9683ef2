"""Throttling by the providers, through a relay in front of the real Dovecot
that answers as Exchange Online or Gmail do when a mailbox is used too much
(helpers.RefusingRelay; Dovecot cannot be made to).

A throttling answer is neither a wrong password nor a missing folder: the
device gets -ERR [SYS/TEMP] with the time to wait, never [AUTH], and the
mailbox rests: until the provider's suggested time (or throttle_cooldown),
no login for it reaches the provider, from any session process (each
connection is a process of its own here) and, with cluster_lock_redis, from
any front-end. Other mailboxes are not affected. Times are seconds here, not
the providers' minutes."""

import re
import socket
import subprocess
import threading
import time

from helpers import FakeBackend, Pop3, RefusingRelay, err, ok, server_bin, wait_for

LOGIN = re.compile(rb'^LOGIN "?([^" ]+)"? ', re.I)
SELECT = re.compile(rb"^(SELECT|EXAMINE) ", re.I)


def exchange_throttled(millis: int) -> bytes:
    # Exchange Online's words, and the BYE it sends after them.
    return (b"BAD Request is throttled. Suggested Backoff Time: %d milliseconds\r\n"
            b"* BYE Connection closed. 14" % millis)


GMAIL_BANDWIDTH = b"[ALERT] Account exceeded command or bandwidth limits. (Failure)"


class Provider:
    """What the relay answers: while ``throttling``, the logins of the users
    in ``users`` (``at='login'``), or every SELECT (``at='select'``), get
    ``answer``; every LOGIN that reached the relay is counted by user."""

    def __init__(self, answer: bytes, users=(), at: str = "login"):
        self.answer = answer
        self.users = {u.encode() for u in users}
        self.at = at
        self.throttling = True
        self.logins = {}
        self.lock = threading.Lock()

    def __call__(self, command: bytes):
        m = LOGIN.match(command)
        if m:
            with self.lock:
                self.logins[m.group(1)] = self.logins.get(m.group(1), 0) + 1
            if self.throttling and self.at == "login" and m.group(1) in self.users:
                return self.answer
        if self.throttling and self.at == "select" and SELECT.match(command):
            return self.answer
        return None

    def logins_of(self, user: str) -> int:
        with self.lock:
            return self.logins.get(user.encode(), 0)


def login_until_served(port: int, user: str, timeout: float) -> bool:
    """Logs in every half second (bounded by ``timeout``) until the login
    works: the rest is over."""
    def served() -> bool:
        with Pop3(port, timeout=30) as p:
            st = p.login(user, "secret")
            if ok(st):
                assert ok(p.quit())
                return True
            assert st.startswith(b"-ERR [SYS/TEMP] The mail server is throttling"), st
            return False
    return wait_for(served, timeout, interval=0.5)


def throttle_lines(log: str):
    return re.findall(r".*is throttled by the provider.*", log)


def test_exchange_throttling_a_login_makes_the_mailbox_rest_for_the_suggested_time(
        fresh_user, make_server, refusing_relay):
    alice, bob = fresh_user(n=2), fresh_user(n=1)
    provider = Provider(exchange_throttled(4000), users=[alice])
    r = refusing_relay(provider)
    s = make_server([], backend_port=r.port)
    with Pop3(s.port, timeout=30) as p:
        st = p.login(alice, "secret")
    # Not [AUTH]: the password is right; and when to come back.
    assert st == b"-ERR [SYS/TEMP] The mail server is throttling this mailbox, " \
        b"try again in 4 seconds", st
    assert provider.logins_of(alice) == 1
    # The next poll, in another process: answered without a login.
    with Pop3(s.port, timeout=30) as p:
        st = p.login(alice, "secret")
    assert st.startswith(b"-ERR [SYS/TEMP] The mail server is throttling this mailbox, "
                         b"try again in "), st
    assert provider.logins_of(alice) == 1
    # Another mailbox is served meanwhile.
    with Pop3(s.port, timeout=30) as p:
        assert ok(p.login(bob, "secret"))
        assert p.stat()[0] == 1
        assert ok(p.quit())
    # The provider is done throttling; the rest ends, then one login works.
    provider.throttling = False
    assert login_until_served(s.port, alice, 15), s.log()[-2000:]
    assert provider.logins_of(alice) == 2, provider.logins
    log = s.log()
    lines = throttle_lines(log)
    assert len(lines) == 1, lines
    assert alice in lines[0] and "Request is throttled" in lines[0], lines
    assert re.search(r"until \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", lines[0]), lines
    # Never counted as a failed login.
    assert "login failed" not in log, log[-2000:]


def test_gmail_throttling_at_select_without_a_time_rests_for_throttle_cooldown(
        fresh_user, make_server, refusing_relay):
    alice, bob = fresh_user(n=1), fresh_user(n=1)
    provider = Provider(GMAIL_BANDWIDTH, at="select")
    r = refusing_relay(provider)
    s = make_server(["--throttle-cooldown", "3"], backend_port=r.port)
    with Pop3(s.port, timeout=30) as p:
        st = p.login(alice, "secret")
    assert st == b"-ERR [SYS/TEMP] The mail server is throttling this mailbox, " \
        b"try again in 3 seconds", st
    assert provider.logins_of(alice) == 1
    provider.throttling = False
    with Pop3(s.port, timeout=30) as p:
        st = p.login(alice, "secret")
    assert st.startswith(b"-ERR [SYS/TEMP] The mail server is throttling"), st
    assert provider.logins_of(alice) == 1
    with Pop3(s.port, timeout=30) as p:
        assert ok(p.login(bob, "secret"))
        assert ok(p.quit())
    assert login_until_served(s.port, alice, 12), s.log()[-2000:]
    assert provider.logins_of(alice) == 2, provider.logins
    lines = throttle_lines(s.log())
    assert len(lines) == 1 and "Account exceeded" in lines[0], lines


def test_an_alert_that_is_not_throttling_stays_a_login_failure(
        fresh_user, make_server, refusing_relay):
    """Gmail's [ALERT] also says "Application-specific password required":
    that is the device's password problem, and no rest."""
    alice = fresh_user(n=1)
    provider = Provider(b"[ALERT] Application-specific password required", users=[alice])
    r = refusing_relay(provider)
    s = make_server([], backend_port=r.port)
    for _ in range(2):
        with Pop3(s.port, timeout=30) as p:
            st = p.login(alice, "secret")
        assert st.startswith(b"-ERR [AUTH]"), st
    assert provider.logins_of(alice) == 2
    assert throttle_lines(s.log()) == []


def test_check_shows_a_running_rest_without_logging_in(
        fresh_user, make_server, refusing_relay, tmp_path):
    alice = fresh_user(n=1)
    provider = Provider(exchange_throttled(60000), users=[alice])
    r = refusing_relay(provider)
    s = make_server([], backend_port=r.port)
    with Pop3(s.port, timeout=30) as p:
        assert err(p.login(alice, "secret"))
    assert provider.logins_of(alice) == 1
    pw = tmp_path / "pw"
    pw.write_text("secret\n")
    out = subprocess.run([server_bin(), "--config", "/dev/null", "--backend-port", str(r.port),
                          "--backend-tls", "none", "--lock-dir", s.lock_dir, "--check",
                          "--user", alice, "--password-file", str(pw)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stdout + out.stderr
    assert re.search(r"mailbox of \S+ rests until \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC: its "
                     r"provider throttled it \(.*Request is throttled", out.stderr), out.stderr
    assert provider.logins_of(alice) == 1


def test_a_rest_holds_on_every_front_end_through_redis(
        dovecot, fresh_user, make_server, redis):
    """Two front-ends with lock directories of their own (as on two hosts)
    and one Redis: a mailbox throttled through one rests on both."""
    alice, bob = fresh_user(n=1), fresh_user(n=1)
    r = redis()
    east_provider = Provider(exchange_throttled(5000), users=[alice])
    west_provider = Provider(exchange_throttled(5000), users=[])
    east_relay = RefusingRelay(dovecot.port, east_provider)
    west_relay = RefusingRelay(dovecot.port, west_provider)
    try:
        args = ["--cluster-lock-redis", r.address]
        east = make_server(args, backend_port=east_relay.port)
        west = make_server(args, backend_port=west_relay.port)
        assert east.lock_dir != west.lock_dir
        with Pop3(east.port, timeout=30) as p:
            st = p.login(alice, "secret")
        assert st.startswith(b"-ERR [SYS/TEMP] The mail server is throttling"), st
        keys = [k for k in r.cli("--scan", "--pattern", "pop3server:cooldown:*").splitlines()
                if k]
        assert len(keys) == 1 and alice not in keys[0], keys
        assert 0 < int(r.cli("PTTL", keys[0])) <= 5000
        with Pop3(west.port, timeout=30) as p:
            st = p.login(alice, "secret")
        assert st.startswith(b"-ERR [SYS/TEMP] The mail server is throttling"), st
        assert west_provider.logins_of(alice) == 0, west_provider.logins
        with Pop3(west.port, timeout=30) as p:
            assert ok(p.login(bob, "secret"))
            assert ok(p.quit())
        # Redis expires the rest; both front-ends serve the mailbox again.
        east_provider.throttling = False
        assert login_until_served(west.port, alice, 15), west.log()[-2000:]
        assert west_provider.logins_of(alice) == 1
        assert throttle_lines(west.log()) == []
    finally:
        east_relay.stop()
        west_relay.stop()


def test_a_greeting_that_says_too_many_connections_makes_the_mailbox_rest(
        fresh_user, make_server):
    """Gmail ends a connection over its per-account limit with a BYE; one
    that comes as the greeting still earns the login's mailbox a rest."""
    greetings = []

    def too_many(c: socket.socket, fb) -> None:
        greetings.append(time.monotonic())
        c.sendall(b"* BYE [ALERT] Too many simultaneous connections. (Failure)\r\n")
        c.close()

    fb = FakeBackend(too_many, max_conns=10)
    try:
        s = make_server(["--backend-connect-early", "false", "--throttle-cooldown", "60"],
                        backend_port=fb.port)
        with Pop3(s.port, timeout=30) as p:
            st = p.login("alice", "secret")
        assert st == b"-ERR [SYS/TEMP] The mail server is throttling this mailbox, " \
            b"try again in 60 seconds", st
        assert len(greetings) == 1
        with Pop3(s.port, timeout=30) as p:
            st = p.login("alice", "secret")
        assert st.startswith(b"-ERR [SYS/TEMP] The mail server is throttling"), st
        # No connection was made for the mailbox that rests.
        assert len(greetings) == 1
        lines = throttle_lines(s.log())
        assert len(lines) == 1 and "Too many simultaneous connections" in lines[0], lines
    finally:
        fb.stop()
