"""backend_prefetch: after a RETR the messages that follow are asked for
ahead with BODY.PEEK[], in one fetch, so a client reading in order finds
them on their way.  Against the
real Dovecot, through a relay that records (and can refuse) the commands:
what is fetched ahead and what is not, that \\Seen ends up exactly on the
messages the client retrieved (also when it hangs up without QUIT), that a
fetch ahead nobody wanted is read and dropped before the next command, and
that a refused fetch ahead is an -ERR for that message only."""

import re
import socket

import testbed
from helpers import ImapView, Pop3, ok, pop3_expected, wait_for

SEEN_STORE = re.compile(rb"^UID STORE (\S+) \+FLAGS\.SILENT \(\\Seen\)$", re.I)


def seen_stores(r):
    return [m.group(1) for m in map(SEEN_STORE.match, r.forwarded) if m]


def contents(dovecot, user):
    """The user's UIDs and their bodies, as Dovecot has them."""
    with ImapView(dovecot.dc, user) as v:
        uids = v.uids()
        return uids, [v.body(u) for u in uids]


def seen(view, uid):
    return b"\\Seen" in view.flags(uid)


def test_the_next_message_is_fetched_ahead_and_seen_set_only_on_retrieved_ones(
        dovecot, fresh_user, make_server, refusing_relay):
    user = fresh_user(n=4)
    uids, bodies = contents(dovecot, user)
    r = refusing_relay()
    s = make_server(backend_port=r.port)
    with Pop3(s.port, timeout=30) as p:
        assert ok(p.login(user, "secret"))
        for n in (1, 2, 3):
            st, got = p.retr(n)
            assert ok(st), (n, st, s.log()[-2000:])
            assert got == pop3_expected(bodies[n - 1]), n
        assert p.quit() == b"+OK Logging out, 0 messages deleted"
    # The first with \Seen, then each next one ahead (4 too: asked ahead,
    # never retrieved); each message fetched once.
    assert r.whole_fetches() == [(uids[0], False), (uids[1], True), (uids[2], True),
                                (uids[3], True)], r.forwarded
    # The \Seen owed by messages 2 and 3, in one command.
    assert seen_stores(r) == [b"%d:%d" % (uids[1], uids[2])], r.forwarded
    with ImapView(dovecot.dc, user) as v:
        assert [seen(v, u) for u in uids] == [True, True, True, False]
    assert s.wait_log(r"session end: user=%s .* retrieved=3/.* end=quit" % user, 5)


def test_a_client_that_hangs_up_without_quit_still_gets_seen_set(
        dovecot, fresh_user, make_server, refusing_relay):
    user = fresh_user(n=3)
    uids, _ = contents(dovecot, user)
    r = refusing_relay()
    s = make_server(backend_port=r.port)
    with Pop3(s.port, timeout=30) as p:
        assert ok(p.login(user, "secret"))
        for n in (1, 2):
            st, _ = p.retr(n)
            assert ok(st)
        p.sock.shutdown(socket.SHUT_RDWR)
    assert s.wait_log(r"session end: user=%s .* end=disconnect" % user, 10), s.log()[-2000:]
    with ImapView(dovecot.dc, user) as v:
        assert [seen(v, u) for u in uids] == [True, True, False]


def test_with_mark_seen_false_or_read_only_nothing_is_stored(
        dovecot, fresh_user, make_server, refusing_relay):
    for flags in (["--mark-seen", "false"], ["--read-only", "true"]):
        user = fresh_user(n=3)
        uids, _ = contents(dovecot, user)
        r = refusing_relay()
        s = make_server(flags, backend_port=r.port)
        with Pop3(s.port, timeout=30) as p:
            assert ok(p.login(user, "secret"))
            for n in (1, 2, 3):
                assert ok(p.retr(n)[0])
            assert ok(p.quit())
        assert r.whole_fetches() == [(u, True) for u in uids], (flags, r.forwarded)
        assert not [c for c in r.forwarded if b"STORE" in c.upper()], (flags, r.forwarded)
        with ImapView(dovecot.dc, user) as v:
            assert not any(seen(v, u) for u in uids), flags


def test_a_fetch_ahead_nobody_wanted_is_dropped_before_the_next_command(
        dovecot, fresh_user, make_server, refusing_relay):
    """RETR 1 asks for 2, 3 and 4 ahead, in one fetch; TOP 3 needs the
    connection, so that answer is read and dropped first; RETR 2 then
    fetches 2 again and asks for 3 and 4 ahead.  Commands that need no
    backend (LIST, UIDL, DELE, NOOP) leave the fetch ahead waiting; 4, never
    asked for, is dropped at QUIT."""
    user = fresh_user(n=4)
    uids, bodies = contents(dovecot, user)
    r = refusing_relay()
    s = make_server(backend_port=r.port)
    with Pop3(s.port, timeout=30) as p:
        assert ok(p.login(user, "secret"))
        assert p.retr(1)[1] == pop3_expected(bodies[0])
        st, _ = p.multi("TOP 3 0")
        assert ok(st)
        st, got = p.retr(2)
        assert ok(st) and got == pop3_expected(bodies[1])
        # 3 and 4 are now on their way; these do not disturb them.
        assert ok(p.multi("LIST")[0])
        assert ok(p.multi("UIDL")[0])
        assert ok(p.cmd("DELE 1"))
        assert ok(p.cmd("NOOP"))
        st, got = p.retr(3)
        assert ok(st) and got == pop3_expected(bodies[2])
        assert p.quit() == b"+OK Logging out, 1 message deleted"
    assert r.whole_fetches() == [(uids[0], False), (uids[1], True), (uids[2], True),
                                (uids[3], True), (uids[1], False), (uids[2], True),
                                (uids[3], True)], r.forwarded
    with ImapView(dovecot.dc, user) as v:
        assert v.uids() == uids[1:]
        assert [seen(v, u) for u in uids[1:]] == [True, True, False]


def test_deleted_and_big_messages_are_not_fetched_ahead(
        dovecot, fresh_user, make_server, refusing_relay):
    big = testbed.big_message(300 * 1024, seed=7)
    small = [testbed.simple_message("pf", k) for k in range(1, 4)]
    user = fresh_user(messages=[small[0], small[1], big, small[2]])
    uids, _ = contents(dovecot, user)
    r = refusing_relay()
    s = make_server(backend_port=r.port)
    with Pop3(s.port, timeout=30) as p:
        assert ok(p.login(user, "secret"))
        assert ok(p.cmd("DELE 2"))
        # Next after 1 is 3 (2 is marked deleted), which is over 256 KiB.
        assert ok(p.retr(1)[0])
        st, got = p.retr(3)
        assert ok(st) and got == pop3_expected(big)
        assert ok(p.cmd("RSET"))
        assert ok(p.quit())
    # 3 was fetched for its RETR only; after it, 4 ahead.
    assert r.whole_fetches() == [(uids[0], False), (uids[2], False), (uids[3], True)], \
        r.forwarded


def test_backend_prefetch_false_fetches_nothing_ahead(
        dovecot, fresh_user, make_server, refusing_relay):
    user = fresh_user(n=3)
    uids, _ = contents(dovecot, user)
    r = refusing_relay()
    s = make_server(["--backend-prefetch", "false"], backend_port=r.port)
    with Pop3(s.port, timeout=30) as p:
        assert ok(p.login(user, "secret"))
        assert ok(p.retr(2)[0])
        assert ok(p.quit())
    assert r.whole_fetches() == [(uids[1], False)], r.forwarded


def test_a_refused_fetch_ahead_is_an_err_for_that_message_only(
        dovecot, fresh_user, make_server, refusing_relay):
    user = fresh_user(n=3)
    uids, bodies = contents(dovecot, user)
    # Whether asked for ahead with 3 or again by itself.
    ahead = re.compile(rb"^UID FETCH (%d|%d,%d) \(UID BODY\.PEEK\[\]\)$"
                       % (uids[1], uids[1], uids[2]))
    r = refusing_relay(lambda c: b"[SERVERBUG] Error reading message" if ahead.match(c) else None)
    s = make_server(backend_port=r.port)
    with Pop3(s.port, timeout=30) as p:
        assert ok(p.login(user, "secret"))
        assert ok(p.retr(1)[0])
        assert p.cmd("RETR 2") == (b"-ERR Message 2 cannot be read now, the mail server said: "
                                   b"[SERVERBUG] Error reading message")
        st, got = p.retr(3)
        assert ok(st) and got == pop3_expected(bodies[2])
        assert ok(p.quit())
    assert r.refused, r.forwarded
    assert wait_for(lambda: "session end: user=%s" % user in s.log(), 5, 0.1)
