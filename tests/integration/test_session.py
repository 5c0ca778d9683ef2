"""Locking (IN-USE), pipelining, hostile input, idle timeout, CAPA."""

import os
import signal
import time

import pytest

from helpers import ImapView, Pop3, err, ok


# ---------------------------------------------------------------- locking

def test_second_concurrent_session_gets_in_use(server, fresh_user):
    user = fresh_user(2)
    with Pop3(server.port) as a:
        assert ok(a.login(user, "secret"))
        with Pop3(server.port) as b:
            st = b.login(user, "secret")
            assert st.startswith(b"-ERR [IN-USE]"), st
        # the first session is unaffected
        assert a.stat()[0] == 2
        assert ok(a.quit())
    with Pop3(server.port) as c:
        assert ok(c.login(user, "secret"))
        c.quit()


def test_relogin_right_after_quit_is_not_in_use(server, fresh_user):
    """A client that reconnects as soon as QUIT is answered and the
    connection closed must not see a leftover lock."""
    user = fresh_user(1)
    for i in range(5):
        with Pop3(server.port) as p:
            st = p.login(user, "secret")
            assert ok(st), "round %d: %r" % (i, st)
            assert ok(p.quit())


def test_sigkilled_session_leaves_no_stale_lock(dovecot, inetd, fresh_user):
    user = fresh_user(3)
    a = Pop3(inetd.port)
    assert ok(a.login(user, "secret"))
    assert ok(a.cmd("DELE 1"))
    proc = inetd.child_for(a)
    with Pop3(inetd.port) as b:
        assert b.login(user, "secret").startswith(b"-ERR [IN-USE]")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(5)
    with pytest.raises((EOFError, ConnectionResetError)):
        a.readline()
    a.close()
    with Pop3(inetd.port) as c:
        assert ok(c.login(user, "secret"))
        assert c.stat()[0] == 3  # the killed session deleted nothing
        assert ok(c.quit())
    with ImapView(dovecot.dc, user) as v:
        assert v.uids() == [1, 2, 3]


def test_different_users_do_not_block_each_other(server, fresh_user):
    u1, u2 = fresh_user(1), fresh_user(1)
    with Pop3(server.port) as a, Pop3(server.port) as b:
        assert ok(a.login(u1, "secret"))
        assert ok(b.login(u2, "secret"))
        a.quit()
        b.quit()


# ---------------------------------------------------------------- pipelining

def test_pipelined_commands_answered_in_order(dovecot, server):
    with Pop3(server.port) as p:
        p.send(b"USER alice\r\nPASS secret\r\nSTAT\r\nLIST\r\nUIDL\r\nNOOP\r\nLIST 1\r\n"
               b"RETR 1\r\nTOP 2 0\r\nUIDL 2\r\nXYZZY\r\nLIST 99999\r\nNOOP\r\nQUIT\r\n")
        assert ok(p.readline())                      # USER
        assert ok(p.readline())                      # PASS
        st = p.readline()                            # STAT
        assert st.startswith(b"+OK 5 ")
        assert ok(p.readline()); lst = p.read_multi()   # LIST
        assert len(lst.split(b"\r\n")) - 1 == 5
        assert ok(p.readline()); uidl = p.read_multi()  # UIDL
        assert len(uidl.split(b"\r\n")) - 1 == 5
        assert ok(p.readline())                      # NOOP
        assert p.readline().startswith(b"+OK 1 ")    # LIST 1
        assert ok(p.readline()); retr = p.read_multi()  # RETR 1
        assert b"alice message 1" in retr
        assert ok(p.readline()); top = p.read_multi()   # TOP 2 0
        assert top.endswith(b"\r\n\r\n") and b"alice message 2" in top
        assert p.readline().startswith(b"+OK 2 ")    # UIDL 2
        assert err(p.readline())                     # XYZZY
        assert err(p.readline())                     # LIST 99999
        assert ok(p.readline())                      # NOOP
        assert ok(p.readline())                      # QUIT
        assert p.wait_closed(5) == b""


def test_many_pipelined_noops(server):
    with Pop3(server.port) as p:
        assert ok(p.login("alice", "secret"))
        p.send(b"NOOP\r\n" * 500 + b"STAT\r\n")
        for i in range(500):
            assert ok(p.readline()), i
        assert p.readline().startswith(b"+OK 5 ")
        assert p.pending(0.3) == b""
        p.quit()


def test_commands_split_across_packets(server):
    with Pop3(server.port) as p:
        for piece in (b"US", b"ER al", b"ice\r", b"\nPA", b"SS secret\r\nST", b"AT\r\n"):
            p.send(piece)
            time.sleep(0.05)
        assert ok(p.readline())
        assert ok(p.readline())
        assert p.readline().startswith(b"+OK 5 ")
        p.quit()


# ---------------------------------------------------------------- hostile input

def test_overlong_line_gets_err_and_session_stays_in_sync(server):
    with Pop3(server.port) as p:
        # before login
        p.send(b"USER " + b"a" * 400 + b"\r\nNOOP\r\n")
        assert err(p.readline())
        p.readline()  # NOOP before login: +OK or -ERR, but exactly one line
        assert ok(p.login("alice", "secret"))
        for n in (300, 1000, 100_000):
            p.send(b"LIST " + b"1" * n + b"\r\nNOOP\r\nSTAT\r\n")
            assert err(p.readline()), n
            assert ok(p.readline()), n
            assert p.readline().startswith(b"+OK 5 "), n
            assert p.pending(0.2) == b"", n
        p.quit()


@pytest.mark.parametrize("arg", ["0", "-1", "abc", "4294967297", "4294967296",
                                 "18446744073709551617", "99999", "6", "1x", "+1"])
def test_list_with_bad_number_is_refused(server, arg):
    with Pop3(server.port) as p:
        assert ok(p.login("alice", "secret"))
        assert err(p.cmd("LIST " + arg)), arg
        assert err(p.cmd("RETR " + arg)), arg
        assert err(p.cmd("DELE " + arg)), arg
        assert err(p.cmd("UIDL " + arg)), arg
        assert p.stat()[0] == 5
        assert ok(p.quit())


def test_commands_in_wrong_state_are_refused(server):
    with Pop3(server.port) as p:
        for c in ("STAT", "LIST", "RETR 1", "DELE 1", "UIDL", "TOP 1 1", "RSET", "PASS secret"):
            assert err(p.cmd(c)), c
        assert ok(p.login("alice", "secret"))
        assert err(p.cmd("USER alice"))
        assert err(p.cmd("PASS secret"))
        assert p.stat()[0] == 5
        p.quit()


def test_nul_and_8bit_in_commands_are_refused(server):
    with Pop3(server.port) as p:
        assert err(p.cmd(b"NO\x00OP"))
        assert ok(p.login("alice", "secret"))
        for c in (b"NO\x00OP", b"STAT\x00", b"LIST \x001", b"ST\xc4T", b"\xffNOOP",
                  b"LIST \xb9", b"RETR 1\x00"):
            assert err(p.cmd(c)), c
        assert p.stat()[0] == 5
        p.quit()


def test_unknown_and_empty_commands_are_refused(server):
    with Pop3(server.port) as p:
        assert err(p.cmd("XYZZY"))
        assert err(p.cmd("APOP alice 0123456789abcdef0123456789abcdef"))
        assert ok(p.login("alice", "secret"))
        assert err(p.cmd("XYZZY"))
        assert err(p.cmd(""))
        assert err(p.cmd("LAST"))
        assert ok(p.cmd("NOOP"))
        p.quit()


def test_command_keywords_are_case_insensitive(server):
    with Pop3(server.port) as p:
        assert ok(p.cmd("user alice"))
        assert ok(p.cmd("Pass secret"))
        assert p.cmd("stat").startswith(b"+OK 5 ")
        assert ok(p.cmd("noop"))
        assert ok(p.cmd("quit"))


def test_capa_lists_the_offered_extensions(server):
    with Pop3(server.port) as p:
        st, body = p.multi("CAPA")
        assert ok(st)
        caps = [ln.split(b" ")[0].upper() for ln in body.split(b"\r\n") if ln]
        for c in (b"TOP", b"UIDL", b"USER", b"RESP-CODES", b"PIPELINING", b"AUTH-RESP-CODE"):
            assert c in caps, (c, body)
        assert b"STLS" not in caps  # no certificate configured
        assert b"IMPLEMENTATION" not in caps  # not configured
        assert ok(p.login("alice", "secret"))
        st, body = p.multi("CAPA")
        assert ok(st)
        caps = [ln.split(b" ")[0].upper() for ln in body.split(b"\r\n") if ln]
        # TRANSACTION state: no login mechanisms any more (RFC 2449)
        for c in (b"USER", b"SASL", b"STLS"):
            assert c not in caps, (c, body)
        for c in (b"TOP", b"UIDL", b"RESP-CODES", b"PIPELINING"):
            assert c in caps, (c, body)
        assert ok(p.quit())


def test_capa_after_login_with_stls_configured(dovecot, make_server):
    s = make_server(["--tls-cert", dovecot.tls["cert"], "--tls-key", dovecot.tls["key"]])
    with Pop3(s.port) as p:
        before = [ln.split(b" ")[0].upper() for ln in p.capa()]
        assert b"STLS" in before and b"USER" in before and b"SASL" in before, before
        assert ok(p.login("alice", "secret"))
        after = [ln.split(b" ")[0].upper() for ln in p.capa()]
        for c in (b"USER", b"SASL", b"STLS"):
            assert c not in after, (c, after)
        for c in (b"TOP", b"UIDL", b"RESP-CODES", b"PIPELINING"):
            assert c in after, (c, after)
        assert ok(p.quit())


def test_capa_implementation_when_configured(make_server):
    s = make_server(["--implementation", "pop3server test"])
    with Pop3(s.port) as p:
        capa = p.capa()
        assert b"IMPLEMENTATION pop3server test" in capa, capa
        assert len([ln for ln in capa if ln.upper().startswith(b"IMPLEMENTATION")]) == 1, capa
        assert ok(p.login("alice", "secret"))
        assert b"IMPLEMENTATION pop3server test" in p.capa()
        assert ok(p.quit())


def test_greeting_has_no_apop_timestamp(server):
    with Pop3(server.port) as p:
        assert ok(p.greeting)
        assert b"<" not in p.greeting


def test_quit_in_authorization_state(server):
    with Pop3(server.port) as p:
        assert ok(p.quit())


# ---------------------------------------------------------------- idle timeout

def test_idle_client_is_disconnected_without_update(dovecot, make_server, fresh_user):
    s = make_server(["--idle-timeout", "2"])
    user = fresh_user(3)
    with Pop3(s.port) as p:
        assert ok(p.login(user, "secret"))
        assert ok(p.cmd("DELE 1"))
        t0 = time.monotonic()
        p.wait_closed(8)
        waited = time.monotonic() - t0
        assert 1.5 <= waited <= 8, waited
    assert s.wait_log(r"user=%s\b.*end=timeout" % user, 5), s.log()[-2000:]
    with ImapView(dovecot.dc, user) as v:
        assert v.uids() == [1, 2, 3]


def test_idle_timeout_also_applies_before_login(make_server):
    s = make_server(["--idle-timeout", "2"])
    with Pop3(s.port) as p:
        t0 = time.monotonic()
        p.wait_closed(8)
        assert time.monotonic() - t0 >= 1.5
