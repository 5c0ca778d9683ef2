"""Clients that misbehave on purpose: one that trickles a command line a
byte at a time (the whole line must arrive within the idle timeout), in the
clear and as the bytes of one TLS record, and one that sends bad commands
without end (closed after max_bad_commands)."""

import select
import socket
import ssl
import subprocess
import time

from helpers import Pop3, ok


def test_a_line_trickled_byte_by_byte_is_cut_off_after_the_idle_timeout(make_server):
    s = make_server(["--idle-timeout", "3"])
    with Pop3(s.port, timeout=20) as p:
        assert ok(p.login("alice", "secret"))
        t0 = time.monotonic()
        answer = b""
        # Bounded: at most 8 bytes, one a second; each read gets a byte well
        # within the idle timeout, but the line as a whole does not.
        for b in b"STAT    ":
            try:
                p.send(bytes([b]))
            except OSError:
                break
            r, _, _ = select.select([p.sock], [], [], 1.0)
            if r:
                answer = p.sock.recv(4096)
                break
        elapsed = time.monotonic() - t0
    assert answer.startswith(b"-ERR Disconnected for inactivity"), answer
    # Cut off at the idle timeout (3 s), not after the 8 s of trickling.
    assert 2.5 < elapsed < 6, elapsed
    assert s.wait_log(r"end=timeout", 5), s.log()[-2000:]


def _tls_handshake(raw: socket.socket, ctx: ssl.SSLContext):
    """A TLS client over raw socket bytes (ssl.MemoryBIO), so that the test
    decides when each byte of a record leaves."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    for _ in range(50):  # bounded: a handshake is a few round trips
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            raw.sendall(outgoing.read())
            data = raw.recv(65536)
            assert data, "server closed during the handshake"
            incoming.write(data)
    raw.sendall(outgoing.read())
    return tls, incoming, outgoing


def _tls_readline(raw, tls, incoming) -> bytes:
    for _ in range(50):
        try:
            line = tls.read(4096)
            if line:
                return line
        except ssl.SSLWantReadError:
            pass
        data = raw.recv(65536)
        if not data:
            return b""
        incoming.write(data)
    return b""


def test_a_tls_record_trickled_byte_by_byte_is_cut_off_after_the_idle_timeout(
        make_server, dovecot):
    """Under TLS one command line is one record; rustls reads it in many
    socket reads. Each gets a byte within a second, but the idle timeout is
    a deadline for the whole line, measured before every socket read."""
    s = make_server(["--tls-cert", dovecot.tls["cert"], "--tls-key", dovecot.tls["key"],
                     "--implicit-tls", "true", "--idle-timeout", "3"])
    ctx = ssl.create_default_context(cafile=dovecot.tls["ca"])
    with socket.create_connection(("127.0.0.1", s.port), timeout=20) as raw:
        tls, incoming, outgoing = _tls_handshake(raw, ctx)
        assert _tls_readline(raw, tls, incoming).startswith(b"+OK")
        tls.write(b"NOOP\r\n")
        record = outgoing.read()
        assert 20 < len(record) < 100, len(record)
        t0 = time.monotonic()
        closed = False
        sent = 0
        # Bounded: one byte a second, at most one record (under 100 bytes).
        for b in record:
            try:
                raw.send(bytes([b]))
                sent += 1
            except OSError:
                closed = True
                break
            r, _, _ = select.select([raw], [], [], 1.0)
            if r:
                # Whatever comes now (a TLS alert or the end) ends the session.
                try:
                    while raw.recv(65536):
                        pass
                except OSError:
                    pass
                closed = True
                break
        elapsed = time.monotonic() - t0
    assert closed and sent < len(record), (sent, len(record))
    assert 2.5 < elapsed < 7, elapsed
    assert s.wait_log(r"end=timeout", 5), s.log()[-2000:]


def test_a_client_that_sends_only_bad_commands_is_closed(make_server):
    s = make_server()
    with Pop3(s.port, timeout=20) as p:
        for i in range(19):
            assert p.cmd("XYZZY %d" % i).startswith(b"-ERR")
        assert p.cmd("NOOP").startswith(b"-ERR")  # not logged in: still a valid command
        for i in range(19):
            assert p.cmd("XYZZY %d" % i).startswith(b"-ERR")
        assert p.cmd("XYZZY") == b"-ERR Too many bad commands, closing"
        assert p.wait_closed(5) == b""


def test_a_client_that_never_reads_is_dropped_after_the_idle_timeout(dovecot, make_server):
    """RETR of a 20 MiB message to a client that reads nothing: once the
    socket buffers are full, no write makes progress for the idle timeout,
    and the session process ends."""
    s = make_server(["--idle-timeout", "3"], mode="inetd")
    carol = dovecot.carol_names
    big = [i for i, name in enumerate(carol, 1) if "big" in name]
    assert big, carol
    with Pop3(s.port, timeout=30) as p:
        assert ok(p.login("carol", "secret"))
        child = s.child_for(p)
        p.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        p.send(b"RETR %d\r\n" % big[0])
        t0 = time.monotonic()
        try:
            child.wait(30)
        except subprocess.TimeoutExpired:
            raise AssertionError("the session still runs 30 s after its client stopped reading")
        elapsed = time.monotonic() - t0
    assert elapsed < 20, elapsed
