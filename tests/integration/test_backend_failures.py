"""A dead, silent, garbage-speaking or dying backend gives -ERR [SYS/TEMP]
(never a hang), and a RETR cut short is never terminated with '.'."""

import time

from helpers import (FakeBackend, FakeImap, Pop3, ScriptedImap, TricklingRelay,
                     garbage_handler, ok, silent_handler)
import testbed


def test_unreachable_backend_gives_sys_temp(make_server):
    closed = testbed.free_port()
    s = make_server(["--backend-connect-timeout", "2", "--backend-timeout", "2"],
                    backend_port=closed)
    with Pop3(s.port) as p:
        assert ok(p.greeting)
        assert ok(p.cmd("USER alice"))
        t0 = time.monotonic()
        st = p.cmd("PASS secret")
        assert st.startswith(b"-ERR [SYS/TEMP]"), st
        assert time.monotonic() - t0 < 10


def test_silent_backend_gives_sys_temp_within_timeout(make_server):
    fb = FakeBackend(silent_handler)
    try:
        s = make_server(["--backend-timeout", "2", "--backend-connect-timeout", "2"],
                        backend_port=fb.port)
        with Pop3(s.port, timeout=20) as p:
            assert ok(p.greeting)
            assert ok(p.cmd("USER alice"))
            t0 = time.monotonic()
            st = p.cmd("PASS secret")
            elapsed = time.monotonic() - t0
            assert st.startswith(b"-ERR [SYS/TEMP]"), st
            assert elapsed < 12, elapsed
    finally:
        fb.stop()


def test_garbage_backend_gives_sys_temp(make_server):
    fb = FakeBackend(garbage_handler)
    try:
        s = make_server(["--backend-timeout", "2", "--backend-connect-timeout", "2"],
                        backend_port=fb.port)
        with Pop3(s.port, timeout=20) as p:
            assert ok(p.cmd("USER alice"))
            st = p.cmd("PASS secret")
            assert st.startswith(b"-ERR [SYS/TEMP]"), st
    finally:
        fb.stop()


def test_backend_dying_mid_retr_gives_no_terminating_dot(make_server):
    script = ScriptedImap(size=1_000_000, cut_at=600_000)
    fb = FakeBackend(script)
    try:
        s = make_server(["--backend-timeout", "5", "--backend-connect-timeout", "2"],
                        backend_port=fb.port)
        with Pop3(s.port, timeout=20) as p:
            assert ok(p.login("alice", "secret")), fb.received
            assert p.stat() == (1, script.size)
            assert p.cmd("LIST 1") == b"+OK 1 %d" % script.size
            st = p.cmd("RETR 1")
            assert ok(st), st
            data = p.wait_closed(15)
        assert len(data) > 0, "expected partial message data"
        assert len(data) < script.size
        assert not data.endswith(b"\r\n.\r\n"), "a cut RETR must not end with .CRLF"
        assert b"\r\n.\r\n" not in data
        # what arrived is a prefix of the message (it has no '.' lines to stuff)
        assert script.msg.startswith(data)
        assert s.wait_log(r"end=", 5)
    finally:
        fb.stop()


def test_login_command_sent_to_backend_escapes_credentials(make_server):
    """The exact LOGIN the server sends for a password with quote, backslash,
    braces and spaces: both arguments quoted strings, '"' and '\\' escaped
    (the greeting carries the capabilities, so LOGIN is the first command,
    A0001).  DELE + QUIT then sends exactly UID STORE +FLAGS.SILENT
    (\\Deleted) and UID EXPUNGE of that UID, and never CLOSE."""
    fake = FakeImap()
    fb = FakeBackend(fake)
    try:
        s = make_server(["--backend-timeout", "5"], backend_port=fb.port)
        with Pop3(s.port) as p:
            assert ok(p.login("dave", 'p"a\\ss {5} w'))
            assert p.stat()[0] == 3
            assert ok(p.cmd("DELE 2"))
            assert ok(p.quit())
        assert fake.wait_command(b"LOGOUT"), fake.commands()
        print(fake.log)
        assert fake.log[0] == b'A0001 LOGIN "dave" "p\\"a\\\\ss {5} w"\r\n', fake.log
        cmds = fake.commands()
        assert cmds[1] == b'SELECT "INBOX"', cmds
        assert cmds[2] == b"UID FETCH 1:* (UID RFC822.SIZE)", cmds
        assert cmds[3:5] == [b"UID STORE 2 +FLAGS.SILENT (\\Deleted)", b"UID EXPUNGE 2"], cmds
        assert not [c for c in cmds if c.upper().startswith((b"CLOSE", b"EXPUNGE"))], cmds
        assert cmds[-1] == b"LOGOUT", cmds
        assert fake.uids() == [1, 3]
    finally:
        fb.stop()


def test_login_with_8bit_password_uses_a_literal(make_server):
    """An 8-bit password never goes inside a quoted string: it is a
    synchronizing literal {N} followed by exactly those octets."""
    pw = "pässwörd".encode("utf-8")
    fake = FakeImap()
    fb = FakeBackend(fake)
    try:
        s = make_server(["--backend-timeout", "5"], backend_port=fb.port)
        with Pop3(s.port) as p:
            assert ok(p.login(b"utf8user", pw))
            assert ok(p.quit())
        print(fake.log)
        assert fake.log[0] == b'A0001 LOGIN "utf8user" {%d}\r\n' % len(pw) + pw + b"\r\n", \
            fake.log
        assert len(pw) == 10
        # latin-1 too (one byte per letter)
        fake2 = FakeImap()
        fb2 = FakeBackend(fake2)
        try:
            s2 = make_server(["--backend-timeout", "5"], backend_port=fb2.port)
            pw1 = "pässwörd".encode("latin-1")
            with Pop3(s2.port) as p:
                assert ok(p.login(b"utf8user", pw1))
                assert ok(p.quit())
            assert fake2.log[0] == b'A0001 LOGIN "utf8user" {8}\r\n' + pw1 + b"\r\n", fake2.log
        finally:
            fb2.stop()
    finally:
        fb.stop()


def test_capability_asked_when_greeting_has_none(make_server):
    """A greeting without [CAPABILITY]: the server asks (A0001 CAPABILITY)
    and LOGIN becomes A0002."""
    fake = FakeImap(greeting_caps=False)
    fb = FakeBackend(fake)
    try:
        s = make_server(["--backend-timeout", "5"], backend_port=fb.port)
        with Pop3(s.port) as p:
            assert ok(p.login("dave", 'p"a\\ss {5} w'))
            assert ok(p.quit())
        assert fake.log[:2] == [b"A0001 CAPABILITY\r\n",
                                b'A0002 LOGIN "dave" "p\\"a\\\\ss {5} w"\r\n'], fake.log
    finally:
        fb.stop()


def test_backend_trickling_one_byte_a_second_through_tls_hits_the_command_deadline(
        make_server, dovecot, fresh_user):
    """Each byte of the backend's TLS record arrives within a second, far
    inside --backend-timeout; the record as a whole never does.  The
    command's deadline is one deadline for all the socket reads rustls makes,
    so RETR fails after about --backend-timeout, not after the hundreds of
    seconds the record would take."""
    relay = TricklingRelay(dovecot.imaps_port, interval=1.0, max_trickled=120)
    try:
        user = fresh_user(2)
        s = make_server(["--backend-tls", "implicit", "--backend-host", "127.0.0.1",
                         "--backend-ca-file", dovecot.tls["ca"], "--backend-timeout", "3"],
                        backend_port=relay.port)
        with Pop3(s.port, timeout=60) as p:
            assert ok(p.login(user, "secret"))
            assert ok(p.cmd("STAT"))
            relay.trickle.set()
            t0 = time.monotonic()
            st = p.cmd("RETR 1")
            elapsed = time.monotonic() - t0
        assert st.startswith(b"-ERR [SYS/TEMP]"), st
        assert 2.5 < elapsed < 8, elapsed
        assert relay.trickled <= 10, relay.trickled
        assert s.wait_log(r"tim(e|ed) ?out", 5), s.log()[-2000:]
    finally:
        relay.stop()


def test_client_sees_the_end_after_quit_without_waiting_for_the_backend_logout(make_server):
    """After QUIT's +OK the client's connection ends at once: the backend's
    LOGOUT (here never answered, until the 8 s command timeout) happens
    after the client is gone, not while it waits for the close."""
    fake = FakeImap(stall=lambda cmd: cmd.upper().endswith(b" LOGOUT\r\n"), stall_seconds=15)
    fb = FakeBackend(fake)
    try:
        s = make_server(["--backend-timeout", "8"], backend_port=fb.port)
        with Pop3(s.port, timeout=20) as p:
            assert ok(p.login("dave", "secret"))
            assert ok(p.cmd("QUIT"))
            t0 = time.monotonic()
            assert p.wait_closed(4) == b""
            assert time.monotonic() - t0 < 4
        # The LOGOUT did go out, after the close.
        assert fake.wait_command(b"LOGOUT"), fake.commands()
        assert fake.stalled, fake.log
    finally:
        fb.stop()
