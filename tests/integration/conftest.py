"""Fixtures: a private Dovecot with the test users, and the server under test
in standalone and inetd mode.  See scripts/testbed.py for the Dovecot side."""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import sys
import tempfile
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "scripts"))

import testbed  # noqa: E402
from helpers import (BUILD_HINT, InetdServer, ImapView, NetNs, RedisServer,  # noqa: E402
                     RefusingRelay, StandaloneServer, imap_login, server_bin, wait_for)
from stats_support import Aggregator  # noqa: E402

PASSWORDS = {
    "alice": "secret",
    "carol": "secret",
    "bob": "secret",
    "dave": 'p"a\\ss {5} w',
    "utf8user": "pässwörd",
}

class Testbed:
    """The session's Dovecot plus bookkeeping for the fixed users."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.dc = testbed.Dovecot(os.path.join(workdir, "dovecot"))
        self.host, self.port = self.dc.host, self.dc.port
        # TLS: a CA, a server certificate for IP:127.0.0.1 and DNS:localhost
        # (Dovecot's IMAPS/STARTTLS and pop3server's STLS/POP3S) and an
        # unrelated CA; see testbed.make_tls_files.
        self.tls = self.dc.tls
        self.imaps_port = self.dc.imaps_port
        self.master_user = self.dc.MASTER_USER
        self.master_password = self.dc.MASTER_PASSWORD
        self.carol_names = []
        self._seq = itertools.count(1)

    def setup(self) -> None:
        dc = self.dc
        dc.add_user("alice", PASSWORDS["alice"], testbed.alice_messages())
        carol = testbed.carol_messages(big=True)
        self.carol_names = list(carol)
        dc.add_user("carol", PASSWORDS["carol"], carol.values())
        dc.add_user("bob", PASSWORDS["bob"], (testbed.bob_message(n) for n in range(1, 10001)))
        dc.add_user("dave", PASSWORDS["dave"], [testbed.simple_message("dave", n) for n in (1, 2)])
        dc.add_user("utf8user", PASSWORDS["utf8user"],
                    [testbed.simple_message("utf8user", n) for n in (1, 2)])
        for i in range(1, self.POOL + 1):
            dc.add_user("tmp%04d" % i, "secret")  # maildir written on first use
        dc.start()
        # Warm up and verify: every user logs in and has the right count.
        expect = {"alice": 5, "carol": len(carol), "bob": 10000, "dave": 2, "utf8user": 2}
        for user, count in expect.items():
            with ImapView(dc, user, PASSWORDS[user]) as v:
                n = len(v.uids())
                assert n == count, "%s has %d messages, expected %d" % (user, n, count)
        self._check_tls_and_master_user()

    def _check_tls_and_master_user(self) -> None:
        """IMAPS and STARTTLS verify against the test CA, and the master user
        logs in as alice with SASL PLAIN authzid (what AUTH PLAIN with an
        authzid through pop3server relies on)."""
        import imaplib
        import ssl
        ctx = ssl.create_default_context(cafile=self.tls["ca"])
        m = imaplib.IMAP4_SSL("127.0.0.1", self.imaps_port, ssl_context=ctx, timeout=30)
        try:
            m.login("alice", PASSWORDS["alice"])
        finally:
            m.logout()
        m = imaplib.IMAP4("127.0.0.1", self.port, timeout=30)
        try:
            assert "STARTTLS" in m.capabilities, m.capabilities
            m.starttls(ssl_context=ssl.create_default_context(cafile=self.tls["ca"]))
            m.login("alice", PASSWORDS["alice"])
        finally:
            m.logout()
        m = imaplib.IMAP4("127.0.0.1", self.port, timeout=30)
        try:
            creds = b"alice\0" + self.master_user.encode() + b"\0" + self.master_password.encode()
            typ, _ = m.authenticate("PLAIN", lambda _challenge: creds)
            assert typ == "OK"
            typ, data = m.select("INBOX", readonly=True)
            assert typ == "OK" and data[0] == b"5", data
        finally:
            m.logout()

    def carol_number(self, name: str) -> int:
        """POP3 message number (= UID) of one of carol's special messages."""
        return self.carol_names.index(name) + 1

    POOL = 200

    def fresh_user(self, n: int = 5, password: str = "secret", messages=None) -> str:
        """A new user whose mailbox Dovecot has never opened, with ``n`` simple
        messages.  Users with the password 'secret' come from a pool that is in
        the passwd-file from the start (Dovecot re-reads the passwd-file at most
        once a second); others are added and waited for."""
        i = next(self._seq)
        if password == "secret" and i <= self.POOL:
            name = "tmp%04d" % i
            new = False
        else:
            name = "new%04d" % i
            new = True
        if messages is None:
            messages = [testbed.simple_message(name, k, body_lines=k) for k in range(1, n + 1)]
        if new:
            self.dc.add_user(name, password, messages)
            PASSWORDS[name] = password

            def can_login():
                try:
                    imap_login(self.dc, name, password).logout()
                    return True
                except Exception:
                    return False
            assert wait_for(can_login, 10, 0.2), "dovecot did not pick up user " + name
        else:
            self.dc.write_maildir(name, messages)
        return name

    def stop(self) -> None:
        self.dc.stop()


def pytest_configure(config):
    config.addinivalue_line("markers", "packages: .deb/.rpm package tests (slow, change the machine)")
    config.addinivalue_line("markers", "service: inetd/systemd service-mode tests")


# ----- POP3SERVER_REQUIRE_ALL=1: a skipped test fails the run ----------------

_SKIPPED = []  # (test id, reason)


def _require_all() -> bool:
    return os.environ.get("POP3SERVER_REQUIRE_ALL") == "1"


def pytest_runtest_logreport(report):
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr
        if isinstance(reason, tuple) and len(reason) == 3:
            reason = reason[2]
        _SKIPPED.append((report.nodeid, str(reason)))


def pytest_collectreport(report):
    if report.skipped:  # a whole module skipped at import
        reason = report.longrepr
        if isinstance(reason, tuple) and len(reason) == 3:
            reason = reason[2]
        _SKIPPED.append((report.nodeid, str(reason)))


def pytest_sessionfinish(session, exitstatus):
    if _require_all() and _SKIPPED and session.exitstatus == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _SKIPPED:
        return
    tr = terminalreporter
    if _require_all():
        tr.section("POP3SERVER_REQUIRE_ALL=1: skipped tests fail the run", red=True, bold=True)
    else:
        tr.section("skipped tests (POP3SERVER_REQUIRE_ALL=1 makes these fail the run)")
    for nodeid, reason in _SKIPPED:
        tr.write_line("SKIPPED %s: %s" % (nodeid, reason))


@pytest.fixture(autouse=True)
def _session_user_can_reach_tmp_path(request):
    """Run as root, every session switches to the unprivileged user
    (``user``, default pop3server), as it must on a real host.  pytest makes
    its temporary directories 0700 root; the state and lock directories the
    tests put there must be reachable for that user, as /run and /var/lib
    are on a real host.  Adds search permission only (no listing)."""
    if os.geteuid() != 0 or "tmp_path" not in request.fixturenames:
        yield
        return
    path = request.getfixturevalue("tmp_path")
    for d in [path] + list(path.parents):
        if str(d) in ("/", tempfile.gettempdir()):
            break
        os.chmod(d, os.stat(d).st_mode | 0o111)
    yield


@pytest.fixture(scope="session")
def workdir():
    d = tempfile.mkdtemp(prefix="p3it-")
    os.chmod(d, 0o755)
    yield d
    if os.environ.get("KEEP_TESTBED"):
        print("testbed kept in", d)
    else:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def dovecot(workdir):
    tb = Testbed(workdir)
    try:
        tb.setup()
    except Exception:
        tb.stop()
        raise
    yield tb
    tb.stop()


def _require_binary() -> None:
    b = server_bin()
    if not os.access(b, os.X_OK):
        pytest.fail("server binary %s missing: run %s (or set POP3SERVER_BIN)"
                    % (b, BUILD_HINT))


@pytest.fixture(scope="session")
def server(dovecot, workdir):
    """The standalone server with default options against the testbed."""
    _require_binary()
    s = StandaloneServer(workdir, dovecot.port)
    yield s
    s.stop()


@pytest.fixture(scope="session")
def inetd(dovecot, workdir):
    """The server in inetd mode (one process per connection, pid known)."""
    _require_binary()
    s = InetdServer(workdir, dovecot.port)
    yield s
    s.stop()


@pytest.fixture
def make_server(workdir, dovecot):
    """Factory: make_server(extra_args, backend_port=None, mode='standalone',
    listen_host='127.0.0.1')."""
    _require_binary()
    started = []
    seq = itertools.count(1)

    def make(extra=(), backend_port=None, mode="standalone", listen_host="127.0.0.1"):
        port = dovecot.port if backend_port is None else backend_port
        name = "%s-%d-%d" % (mode, os.getpid(), next(seq))
        name += "-" + str(int(time.monotonic() * 1000))
        if mode == "standalone":
            s = StandaloneServer(workdir, port, list(extra), name=name, listen_host=listen_host)
        else:
            assert listen_host == "127.0.0.1", "the inetd helper listens on 127.0.0.1 only"
            s = InetdServer(workdir, port, list(extra), name=name)
        started.append(s)
        return s

    yield make
    for s in started:
        s.stop()


@pytest.fixture
def refusing_relay(dovecot):
    """Factory: refusing_relay(refuse=None) -> a RefusingRelay in front of
    the testbed's Dovecot that records every command and answers NO to those
    ``refuse`` returns a text for (none without it); stopped afterwards."""
    relays = []

    def make(refuse=None):
        r = RefusingRelay(dovecot.port, refuse or (lambda command: None))
        relays.append(r)
        return r
    yield make
    for r in relays:
        r.stop()


@pytest.fixture
def fresh_user(dovecot):
    """Factory: fresh_user(n=5) -> user name (password 'secret')."""
    return dovecot.fresh_user


@pytest.fixture(scope="session")
def netns():
    """A network namespace with a veth pair, so a client has a non-loopback
    address (10.200.N.2) and the server listens on 10.200.N.1 (never on a
    public interface).  Needs root and iproute2; removed at the end."""
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("network namespace tests need root and iproute2 (apt-get install iproute2)")
    ns = NetNs("p3it-%d" % os.getpid(), 20 + os.getpid() % 200)
    try:
        ns.create()
    except Exception as e:  # e.g. no CAP_SYS_ADMIN in a container
        ns.destroy()
        pytest.skip("cannot create a network namespace: %s" % e)
    try:
        yield ns
    finally:
        ns.destroy()


@pytest.fixture
def redis(workdir):
    """Factory: redis(password=None) -> a RedisServer on 127.0.0.1 (Debian's
    redis-server), stopped afterwards."""
    servers = []

    def make(password=None):
        r = RedisServer(workdir, password)
        servers.append(r)
        return r
    yield make
    for r in servers:
        r.stop()


@pytest.fixture
def aggregators(tmp_path):
    """Factory: aggregators(port=None, env=None) -> a running Aggregator on
    tmp_path/stats.sock; all are stopped afterwards."""
    started = []

    def make(port=None, env=None):
        a = Aggregator(str(tmp_path), port, env)
        started.append(a)
        return a
    yield make
    for a in started:
        if a.proc.poll() is None:
            a.stop(signal.SIGKILL)
