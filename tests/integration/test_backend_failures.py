"""A dead, silent, garbage-speaking or dying backend gives -ERR [SYS/TEMP]
(never a hang), and a RETR cut short is never terminated with '.'."""

import time

from helpers import (FakeBackend, Pop3, ScriptedImap, garbage_handler, ok,
                     silent_handler)
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
    """Records what the server sends: the LOGIN (or AUTHENTICATE) for a
    password with quote/backslash/braces is one well-formed command."""
    script = ScriptedImap(size=1000, cut_at=10_000)
    fb = FakeBackend(script)
    try:
        s = make_server(["--backend-timeout", "5"], backend_port=fb.port)
        with Pop3(s.port) as p:
            assert ok(p.login("dave", 'p"a\\ss {5} w'))
            p.quit()
        login = [c for c in script.log if b" LOGIN " in c.upper() or b" AUTHENTICATE " in c.upper()]
        assert login, script.log
        cmd = login[0]
        if b" LOGIN " in cmd.upper():
            assert (b'"p\\"a\\\\ss {5} w"' in cmd) or (b"{12" in cmd), cmd
        words = [c.split(b" ")[1].strip().upper() for c in script.log if b" " in c]
        assert b"CLOSE" not in words and b"EXPUNGE" not in words, words
    finally:
        fb.stop()
