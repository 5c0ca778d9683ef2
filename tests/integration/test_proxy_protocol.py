"""PROXY protocol (v1 and v2) in front of pop3server: a real HAProxy in TCP
mode on loopback relays to the standalone listener and to
systemd-socket-activate --inetd, and raw headers show what happens to the
ones a balancer should not send.

Addresses: all of 127.0.0.0/8 is loopback on Linux. The test client binds
127.0.0.3, HAProxy connects to the server from 127.0.0.2 (its server line's
``source``), and only 127.0.0.2/32 is trusted; so the session-end line must
say client=127.0.0.3:<the client's port>, which only the header can tell.
Raw headers come from 127.0.0.2 (trusted) or 127.0.0.1 (not listed).

Needs (Debian): haproxy; systemd (systemd-socket-activate) for the
socket-activated server.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import tempfile
import time
from typing import List, Optional

import pytest

from helpers import ImapView, Pop3, ServerBase, base_args, err, ok, server_bin, wait_for
from testbed import free_port

BALANCER = "127.0.0.2"
CLIENT = "127.0.0.3"
UNLISTED = "127.0.0.1"
TRUST = ["--proxy-protocol-from", BALANCER + "/32"]
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def need(tool: str, package: str) -> str:
    path = shutil.which(tool) or next(
        (p for p in ("/usr/sbin/" + tool, "/usr/bin/" + tool) if os.access(p, os.X_OK)), None)
    if not path:
        pytest.skip("%s not installed (apt-get install %s)" % (tool, package))
    return path


def listening(port: int) -> bool:
    """Whether something listens on 127.0.0.1:port, seen without connecting
    (a probe connection through HAProxy would be a session of its own)."""
    want = ":%04X" % port
    try:
        with open("/proc/net/tcp") as f:
            rows = f.read().splitlines()[1:]
    except OSError:
        return False
    return any(r.split()[1].endswith(want) and r.split()[3] == "0A" for r in rows)


def v2_header(command: int, src: Optional[tuple] = None, dst=("127.0.0.1", 110)) -> bytes:
    """A PROXY v2 header: command 0 LOCAL, 1 PROXY (TCP over IPv4)."""
    if src is None:
        return V2_SIGNATURE + bytes([0x20 | command, 0x00]) + struct.pack("!H", 0)
    body = (socket.inet_aton(src[0]) + socket.inet_aton(dst[0])
            + struct.pack("!HH", src[1], dst[1]))
    return V2_SIGNATURE + bytes([0x20 | command, 0x11]) + struct.pack("!H", len(body)) + body


def raw(port: int, source: str, timeout: float = 15.0) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                 source_address=(source, 0))
    s.settimeout(timeout)
    return s


def read_until_closed(s: socket.socket, limit: int = 65536) -> bytes:
    """All the server sends until it closes (bounded by the socket timeout
    and ``limit`` bytes)."""
    got = b""
    while len(got) < limit:
        try:
            d = s.recv(4096)
        except ConnectionResetError:
            break
        if not d:
            break
        got += d
    return got


def plaintext_login_refused(c: socket.socket, f) -> None:
    """USER/PASS over this plaintext connection is refused as for a remote
    client (at USER or at PASS); then QUIT."""
    c.sendall(b"USER alice\r\n")
    first = f.readline()
    if first.startswith(b"+OK"):
        c.sendall(b"PASS secret\r\n")
        first = f.readline()
    assert first.startswith(b"-ERR") and b"Plaintext authentication is disabled" in first, \
        first
    c.sendall(b"QUIT\r\n")
    assert f.readline().startswith(b"+OK")


class Process(ServerBase):
    """A foreground process in its own process group, output to a file."""

    def __init__(self, cmd: List[str], log_path: str):
        self.log_path = log_path
        self.logf = open(log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.logf,
                                     stderr=self.logf, start_new_session=True)

    def stop(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                self.proc.wait(5)
                break
            except subprocess.TimeoutExpired:
                continue
        try:  # per-connection children may outlive the leader briefly
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.logf.close()


class HAProxy(Process):
    """haproxy -db (foreground, no daemon) in TCP mode: listens on
    127.0.0.1:port, connects to the server from 127.0.0.2 with
    ``send`` (send-proxy or send-proxy-v2)."""

    def __init__(self, directory: str, server_port: int, send: str, check: str = ""):
        binary = need("haproxy", "haproxy")
        self.port = free_port()
        cfg = os.path.join(directory, "haproxy.cfg")
        with open(cfg, "w") as f:
            f.write("""global
    maxconn 64

defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s

frontend pop3
    bind 127.0.0.1:%d
    default_backend pop3server

backend pop3server
%s    server s1 127.0.0.1:%d %s source %s
""" % (self.port, check, server_port, send, BALANCER))
        r = subprocess.run([binary, "-c", "-f", cfg], capture_output=True, text=True,
                           timeout=30)
        assert r.returncode == 0, r.stdout + r.stderr
        super().__init__([binary, "-db", "-f", cfg], os.path.join(directory, "haproxy.log"))
        if not wait_for(lambda: listening(self.port) or self.proc.poll() is not None, 10) \
                or self.proc.poll() is not None:
            self.stop()
            raise AssertionError("haproxy did not listen:\n" + self.log())


class SocketActivated(Process):
    """systemd-socket-activate --inetd: one pop3server per connection, the
    socket as its stdin/stdout, stderr (the log) into a file."""

    def __init__(self, directory: str, backend_port: int, extra: List[str]):
        ssa = need("systemd-socket-activate", "systemd")
        self.port = free_port()
        locks = os.path.join(directory, "locks")
        os.makedirs(locks, exist_ok=True)
        super().__init__([ssa, "--inetd", "-l", "127.0.0.1:%d" % self.port, "-a", server_bin()]
                         + base_args(backend_port, locks, extra),
                         os.path.join(directory, "ssa.log"))
        if not wait_for(lambda: listening(self.port) or self.proc.poll() is not None, 10) \
                or self.proc.poll() is not None:
            self.stop()
            raise AssertionError("systemd-socket-activate did not listen:\n" + self.log())


@pytest.fixture
def tmpdir_(workdir):
    d = tempfile.mkdtemp(prefix="proxy-", dir=workdir)
    os.chmod(d, 0o755)
    return d


@pytest.fixture
def started():
    """Processes to stop at the end of the test, last started first."""
    procs: List[Process] = []
    yield procs
    for p in reversed(procs):
        p.stop()


def serve(mode, make_server, dovecot, tmpdir_, started, extra):
    if mode == "standalone":
        return make_server(extra)
    s = SocketActivated(tmpdir_, dovecot.port, extra)
    started.append(s)
    return s


def session_through(port: int, user: str, tls_context=None) -> int:
    """A login, STAT, RETR 1 and QUIT from 127.0.0.3; returns the client's port."""
    with Pop3(port, source=CLIENT, tls_context=tls_context) as p:
        assert ok(p.greeting), p.greeting
        assert ok(p.login(user, "secret"))
        count, _ = p.stat()
        assert count >= 1
        st, _ = p.retr(1)
        assert ok(st), st
        client_port = p.local_port()
        assert ok(p.quit())
    return client_port


# --------------------------------------------------------------------------
# a real HAProxy in front of the listener and of socket activation
# --------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["standalone", "socket-activate"])
@pytest.mark.parametrize("send,version", [("send-proxy-v2", 2), ("send-proxy", 1)],
                         ids=["v2", "v1"])
def test_haproxy_relays_the_client_address(dovecot, make_server, fresh_user, tmpdir_, started,
                                           mode, send, version):
    s = serve(mode, make_server, dovecot, tmpdir_, started, TRUST + ["-d"])
    h = HAProxy(tmpdir_, s.port, send)
    started.append(h)
    user = fresh_user(2)
    client_port = session_through(h.port, user)
    line = r"session end: user=%s client=%s:%d login=ok .*end=quit" % (
        user, re.escape(CLIENT), client_port)
    assert s.wait_log(line, 10), s.log()[-3000:]
    assert re.search(r"connection from %s:%d via balancer %s:\d+ \(PROXY v%d\)"
                     % (re.escape(CLIENT), client_port, re.escape(BALANCER), version),
                     s.log()), s.log()[-3000:]


def test_haproxy_health_checks_are_local_and_get_the_greeting(dovecot, make_server, tmpdir_,
                                                             started):
    """HAProxy's own checks on a send-proxy-v2 server carry a v2 LOCAL
    header; a tcp-check that expects +OK passes on our greeting."""
    s = make_server(TRUST + ["-d"])
    h = HAProxy(tmpdir_, s.port, "send-proxy-v2 check inter 300ms rise 1",
                check="    option tcp-check\n    tcp-check expect string +OK\n")
    started.append(h)
    assert s.wait_log(r"health check from balancer %s:\d+ \(PROXY v2 LOCAL\)"
                      % re.escape(BALANCER), 10), s.log()[-3000:]
    assert s.wait_log(r"greeting sent, no session", 5), s.log()[-3000:]
    assert "client=%s" % BALANCER not in s.log()


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "implicit-tls"])
def test_haproxy_tcp_checks_are_quiet(dovecot, make_server, tmpdir_, started, tls):
    """A plain TCP check on a send-proxy-v2 server connects, sends LOCAL and
    resets the connection at once, every interval: neither a warning nor an
    info line for it (the listener passes the peer's address on, so the
    child knows it even after the reset)."""
    tls_args = ["--tls-cert", dovecot.tls["cert"], "--tls-key", dovecot.tls["key"],
                "--implicit-tls", "true"] if tls else []
    s = make_server(TRUST + ["-d"] + tls_args)
    h = HAProxy(tmpdir_, s.port, "send-proxy-v2 check inter 200ms")
    started.append(h)
    rx = re.compile(r"pop3server\[(\d+)\]: DEBUG: health check from balancer %s:\d+ "
                    r"\(PROXY v2 LOCAL\)" % re.escape(BALANCER))
    assert wait_for(lambda: len(rx.findall(s.log())) >= 3, 10), s.log()[-3000:]
    checks = set(rx.findall(s.log()))
    noisy = [ln for ln in s.log().splitlines()
             if ": WARN: " in ln or (": INFO: " in ln and ln[11:].split("]")[0] in checks)]
    assert not noisy, noisy
    if tls:
        assert "TLS handshake with the health check failed" in s.log(), s.log()[-3000:]


def test_implicit_tls_behind_haproxy(dovecot, make_server, fresh_user, tmpdir_, started):
    """The header comes before the ClientHello; HAProxy passes TLS through."""
    s = make_server(TRUST + ["--tls-cert", dovecot.tls["cert"], "--tls-key", dovecot.tls["key"],
                             "--implicit-tls", "true"])
    h = HAProxy(tmpdir_, s.port, "send-proxy-v2")
    started.append(h)
    user = fresh_user(1)
    ctx = ssl.create_default_context(cafile=dovecot.tls["ca"])
    client_port = session_through(h.port, user, tls_context=ctx)
    assert s.wait_log(r"session end: user=%s client=%s:%d login=ok tls=yes .*end=quit"
                      % (user, re.escape(CLIENT), client_port), 10), s.log()[-3000:]


# --------------------------------------------------------------------------
# headers a balancer should not send, or that should not be there
# --------------------------------------------------------------------------

@pytest.mark.parametrize("trusted", [True, False], ids=["others-listed", "none-listed"])
def test_header_from_an_unlisted_source_is_refused(make_server, trusted):
    """The check runs whether proxy_protocol_from is set or not."""
    s = make_server(TRUST if trusted else [])
    with raw(s.port, UNLISTED) as c:
        greeting = c.recv(4096)
        assert greeting.startswith(b"+OK"), greeting
        port = c.getsockname()[1]
        c.sendall(b"PROXY TCP4 192.0.2.7 127.0.0.1 4711 110\r\nUSER alice\r\n")
        assert read_until_closed(c) == b""
    assert s.wait_log(r"PROXY protocol header from %s:%d, which proxy_protocol_from does not "
                      r"list: connection closed" % (re.escape(UNLISTED), port), 5), s.log()[-3000:]
    assert s.wait_log(r"session end: user=- client=%s:%d .*end=refused"
                      % (re.escape(UNLISTED), port), 5), s.log()[-3000:]


def test_header_instead_of_a_client_hello_is_refused(dovecot, make_server):
    s = make_server(["--tls-cert", dovecot.tls["cert"], "--tls-key", dovecot.tls["key"],
                     "--implicit-tls", "true"])
    with raw(s.port, UNLISTED) as c:
        port = c.getsockname()[1]
        c.sendall(v2_header(1, ("192.0.2.7", 4711)))
        assert read_until_closed(c) == b""
    assert s.wait_log(r"PROXY protocol header from %s:%d, which proxy_protocol_from does not list"
                      % (re.escape(UNLISTED), port), 5), s.log()[-3000:]


def test_a_trusted_source_without_a_header_is_closed(make_server):
    """Closed after the header timeout (here the shorter idle timeout, 2 s)
    without a greeting."""
    s = make_server(TRUST + ["--idle-timeout", "2"])
    with raw(s.port, BALANCER) as c:
        port = c.getsockname()[1]
        assert read_until_closed(c) == b""
    assert s.wait_log(r"no PROXY protocol header from %s:%d \(listed in proxy_protocol_from\) "
                      r"within 2 s: connection closed" % (re.escape(BALANCER), port), 5), \
        s.log()[-3000:]
    # (the listener's start-up probe from 127.0.0.1 has a session line)
    assert "client=%s:%d" % (BALANCER, port) not in s.log()


@pytest.mark.parametrize("header,why", [
    (b"PROXY TCP4 300.0.0.1 127.0.0.1 4711 110\r\n", r"bad PROXY v1 header \(header contains "
                                                     r"invalid IP address for the source\)"),
    (V2_SIGNATURE + b"\x31\x11\x00\x0c" + bytes(12), r"bad PROXY v2 header \(expected version"),
    (b"CAPA\r\n", r'the connection starts with "CAPA\\r\\n", not with a header'),
], ids=["v1-address", "v2-version", "no-header"])
def test_a_malformed_header_closes_the_connection(make_server, header, why):
    s = make_server(TRUST)
    with raw(s.port, BALANCER) as c:
        port = c.getsockname()[1]
        c.sendall(header)
        assert read_until_closed(c) == b""
    assert s.wait_log(r"WARN: PROXY protocol from %s:%d \(listed in proxy_protocol_from\): %s.*: "
                      r"connection closed" % (re.escape(BALANCER), port, why), 5), s.log()[-3000:]


@pytest.mark.parametrize("mode", ["standalone", "socket-activate"])
def test_v2_local_health_check_gets_the_greeting_and_no_session(
        dovecot, make_server, tmpdir_, started, mode):
    s = serve(mode, make_server, dovecot, tmpdir_, started, TRUST + ["-d"])
    with raw(s.port, BALANCER) as c:
        c.sendall(v2_header(0))
        got = read_until_closed(c)
    assert got.startswith(b"+OK") and got.count(b"\r\n") == 1, got
    assert s.wait_log(r"health check from balancer %s:\d+ \(PROXY v2 LOCAL\)"
                      % re.escape(BALANCER), 5), s.log()[-3000:]
    assert s.wait_log(r"greeting sent, no session", 5), s.log()[-3000:]
    # That process's lines: no session line, nor a backend connection
    # (which backend_connect_early makes right after the greeting).
    pid = re.search(r"pop3server\[(\d+)\]: DEBUG: health check from", s.log()).group(1)
    mine = [ln for ln in s.log().splitlines() if ln.startswith("pop3server[%s]" % pid)]
    assert not [ln for ln in mine if "session end" in ln or "IMAP" in ln], mine


def test_a_claimed_remote_client_is_not_loopback(dovecot, make_server, fresh_user):
    """A header from the trusted 127.0.0.2 naming 192.0.2.7: USER/PASS over
    plaintext is refused as for any remote client; allowed, the address is
    the one in the login-failure line and in Dovecot's rip (IMAP ID)."""
    s = make_server(TRUST)
    with raw(s.port, BALANCER) as c:
        c.sendall(b"PROXY TCP4 192.0.2.7 127.0.0.1 4711 110\r\n")
        f = c.makefile("rb")
        assert f.readline().startswith(b"+OK")
        plaintext_login_refused(c, f)
    assert s.wait_log(r"session end: user=.* client=192\.0\.2\.7:4711 login=none", 5), \
        s.log()[-3000:]

    user = fresh_user(1)
    s2 = make_server(TRUST + ["--allow-plaintext-auth", "true", "--backend-send-id", "true"])
    with raw(s2.port, BALANCER) as c:
        c.sendall(b"PROXY TCP4 192.0.2.7 127.0.0.1 4712 110\r\n")
        f = c.makefile("rb")
        assert f.readline().startswith(b"+OK")
        c.sendall(b"USER %s\r\nPASS wrong\r\n" % user.encode())
        assert f.readline().startswith(b"+OK")
        assert f.readline().startswith(b"-ERR")
        c.sendall(b"USER %s\r\nPASS secret\r\n" % user.encode())
        assert f.readline().startswith(b"+OK")
        assert f.readline().startswith(b"+OK")
        c.sendall(b"QUIT\r\n")
        assert f.readline().startswith(b"+OK")
    assert s2.wait_log(r"login failed: rip=192\.0\.2\.7 method=USER user=<%s>" % user, 5), \
        s2.log()[-3000:]
    rx = re.compile(r"Login: user=<%s>.*rip=192\.0\.2\.7," % user)
    assert wait_for(lambda: rx.search(dovecot.dc.log_text()) is not None, 5), \
        [ln for ln in dovecot.dc.log_text().splitlines() if user in ln]


def test_v1_unknown_keeps_the_balancer_address_but_not_as_loopback(make_server):
    """The spec: UNKNOWN means use the real connection's addresses. The real
    client is somewhere else, though: a balancer on loopback must not make
    it a loopback client for the plaintext rule."""
    s = make_server(TRUST)
    with raw(s.port, BALANCER) as c:
        port = c.getsockname()[1]
        c.sendall(b"PROXY UNKNOWN\r\n")
        f = c.makefile("rb")
        assert f.readline().startswith(b"+OK")
        plaintext_login_refused(c, f)
    assert s.wait_log(r"session end: user=.* client=%s:%d " % (re.escape(BALANCER), port), 5), \
        s.log()[-3000:]
