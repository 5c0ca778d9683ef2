"""RETR delivers exactly what IMAP BODY[] holds (dot-stuffed, bare LF as CRLF,
a final CRLF added when missing), and TOP n k gives headers + k body lines."""

import re

import pytest

from helpers import ImapView, Pop3, err, ok, pop3_expected, top_expected
import testbed

CAROL_SMALL = [n for n in testbed.carol_messages(big=False)]


def test_retr_of_every_alice_message_equals_imap_body(dovecot, server):
    with ImapView(dovecot.dc, "alice") as v:
        uids = v.uids()
        bodies = {u: v.body(u) for u in uids}
    with Pop3(server.port) as p:
        assert ok(p.login("alice", "secret"))
        for n, uid in enumerate(uids, start=1):
            st, body = p.retr(n)
            assert ok(st), st
            assert body == pop3_expected(bodies[uid])
        assert ok(p.quit())


@pytest.mark.parametrize("name", CAROL_SMALL)
def test_retr_special_message_is_byte_exact(dovecot, server, name):
    n = dovecot.carol_number(name)
    with ImapView(dovecot.dc, "carol") as v:
        body = v.body(n)
        size = dict(v.uid_sizes())[n]
    with Pop3(server.port) as p:
        assert ok(p.login("carol", "secret"))
        st = p.cmd("RETR %d" % n)
        assert ok(st), st
        m = re.match(rb"\+OK (\d+) octets", st)
        assert m, "RETR status must be '+OK <size> octets': %r" % st
        assert int(m.group(1)) == size
        raw = p.read_multi_raw()
        got = Pop3.unstuff(raw)
        assert got == pop3_expected(body)
        # final CRLF rule: the body always ends in CRLF before '.CRLF'
        assert raw.endswith(b"\r\n.\r\n")
        if not body.endswith(b"\r\n") and not body.endswith(b"\n"):
            assert got == body + b"\r\n", "server must append CRLF to an unterminated message"
        assert ok(p.quit())


def test_unterminated_message_gets_crlf_before_terminator(dovecot, server):
    for name in ("no_trailing_newline", "ends_with_dot_no_newline"):
        n = dovecot.carol_number(name)
        with ImapView(dovecot.dc, "carol") as v:
            body = v.body(n)
        assert not body.endswith(b"\r\n")
        with Pop3(server.port) as p:
            assert ok(p.login("carol", "secret"))
            st = p.cmd("RETR %d" % n)
            assert ok(st)
            raw = p.read_multi_raw()
            stuffed = body.replace(b"\r\n.", b"\r\n..")
            if stuffed.startswith(b"."):
                stuffed = b"." + stuffed
            # BODY[] + CRLF + ".CRLF" (a last line "." is stuffed to "..")
            assert raw == stuffed + b"\r\n.\r\n"
            p.quit()


def test_dot_lines_are_stuffed_on_the_wire(dovecot, server):
    n = dovecot.carol_number("dots")
    with Pop3(server.port) as p:
        assert ok(p.login("carol", "secret"))
        assert ok(p.cmd("RETR %d" % n))
        raw = p.read_multi_raw()
        assert b"\r\n..starts with a dot\r\n" in raw
        assert b"\r\n...two dots\r\n" in raw
        assert b"\r\n..\r\n" in raw
        assert b"\r\n....\r\n" in raw
        assert b"\r\n .space dot\r\n" in raw
        p.quit()


def test_bare_lf_message_is_served_with_crlf(dovecot, server):
    n = dovecot.carol_number("bare_lf")
    with Pop3(server.port) as p:
        assert ok(p.login("carol", "secret"))
        st, body = p.retr(n)
        assert ok(st)
        assert re.search(rb"(?<!\r)\n", body) is None
        assert b"\r\nline one\r\n.dot line\r\nline three\r\n\r\nafter empty\r\n" in body
        p.quit()


def test_retr_20mib_message_is_byte_exact(dovecot, server):
    n = dovecot.carol_number("big20")
    with ImapView(dovecot.dc, "carol") as v:
        body = v.body(n)
        size = dict(v.uid_sizes())[n]
    assert size > 20 * 1024 * 1024
    with Pop3(server.port, timeout=120) as p:
        assert ok(p.login("carol", "secret"))
        assert p.list()[n] == size
        st, got = p.retr(n)
        assert ok(st)
        assert st.startswith(b"+OK %d octets" % size)
        assert len(got) == len(pop3_expected(body))
        assert got == pop3_expected(body)
        # the session continues normally after a big RETR
        assert ok(p.cmd("NOOP"))
        assert ok(p.quit())


@pytest.mark.parametrize("k", [0, 1, 2, 100000])
def test_top_gives_headers_blank_line_and_k_body_lines(dovecot, server, k):
    with ImapView(dovecot.dc, "carol") as v:
        bodies = {dovecot.carol_number(nm): v.body(dovecot.carol_number(nm)) for nm in CAROL_SMALL}
    with ImapView(dovecot.dc, "alice") as v:
        alice = {u: v.body(u) for u in v.uids()}
    with Pop3(server.port) as p:
        assert ok(p.login("carol", "secret"))
        for n, body in sorted(bodies.items()):
            st, got = p.multi("TOP %d %d" % (n, k))
            assert ok(st), (n, st)
            assert got == top_expected(body, k), "TOP %d %d (%s)" % (n, k, CAROL_SMALL[n - 1])
        p.quit()
    with Pop3(server.port) as p:
        assert ok(p.login("alice", "secret"))
        for n, body in sorted(alice.items()):
            st, got = p.multi("TOP %d %d" % (n, k))
            assert ok(st)
            assert got == top_expected(body, k)
        p.quit()


def test_top_does_not_set_seen_but_retr_does(dovecot, server, fresh_user):
    user = fresh_user(3)
    with ImapView(dovecot.dc, user) as v:
        for u in v.uids():
            assert b"\\Seen" not in v.flags(u)
    with Pop3(server.port) as p:
        assert ok(p.login(user, "secret"))
        st, _ = p.multi("TOP 1 5")
        assert ok(st)
        st, _ = p.multi("TOP 2 0")
        assert ok(st)
        st, _ = p.retr(2)
        assert ok(st)
        assert ok(p.quit())
    with ImapView(dovecot.dc, user) as v:
        assert b"\\Seen" not in v.flags(1), "TOP must not set \\Seen"
        assert b"\\Seen" in v.flags(2), "RETR must set \\Seen"
        assert b"\\Seen" not in v.flags(3)


def test_retr_does_not_set_seen_with_mark_seen_false(dovecot, make_server, fresh_user):
    s = make_server(["--mark-seen", "false"])
    user = fresh_user(2)
    with Pop3(s.port) as p:
        assert ok(p.login(user, "secret"))
        st, _ = p.retr(1)
        assert ok(st)
        assert ok(p.quit())
    with ImapView(dovecot.dc, user) as v:
        assert b"\\Seen" not in v.flags(1)


def test_top_with_bad_arguments_is_refused(server):
    with Pop3(server.port) as p:
        assert ok(p.login("alice", "secret"))
        for c in ("TOP", "TOP 1", "TOP 1 -1", "TOP 1 x", "TOP 0 1", "TOP 99 1", "TOP x 1"):
            assert err(p.cmd(c)), c
        assert ok(p.cmd("NOOP"))
        p.quit()


@pytest.mark.parametrize("size", [256 * 1024, 512 * 1024])
def test_a_body_of_whole_pieces_is_exact_and_the_session_goes_on(
        dovecot, fresh_user, make_server, size):
    """One FETCH streams the body in 256 KiB pieces: a body of exactly one or
    two pieces ends with an empty one, and the next command is unharmed."""
    user = fresh_user(1)
    head = b"From: x@example.org\r\nSubject: exact\r\n\r\n"
    lines = b"".join(b"%077d\r\n" % i for i in range(size // 79 + 1))
    msg = head + lines[:size - len(head) - 2] + b"\r\n"
    assert len(msg) == size
    with ImapView(dovecot.dc, user) as v:
        v.append(msg)
        uids = v.uids()
        stored = v.body(uids[-1])
        assert dict(v.uid_sizes())[uids[-1]] == size
    s = make_server()
    with Pop3(s.port, timeout=30) as p:
        assert ok(p.login(user, "secret"))
        st, got = p.retr(2)
        assert ok(st) and got == pop3_expected(stored), (len(got), len(stored))
        st, got = p.retr(1)
        assert ok(st)
        assert p.cmd("STAT").startswith(b"+OK 2 ")
        assert ok(p.quit())
