"""A backend NO to one command is an answer, not a dead session: through a
relay in front of the real Dovecot that refuses exactly one kind of command
(helpers.RefusingRelay), a refused \\Seen store still lets the client fetch
every message and QUIT with its deletions, and a refused FETCH of one message
is an -ERR for that message while the others are served."""

import re

import pytest

from helpers import ImapView, Pop3, RefusingRelay, ok, pop3_expected


@pytest.fixture
def relay(dovecot):
    """relay(refuse) -> a RefusingRelay in front of the testbed's Dovecot."""
    relays = []

    def make(refuse):
        r = RefusingRelay(dovecot.port, refuse)
        relays.append(r)
        return r
    yield make
    for r in relays:
        r.stop()


SEEN_STORE = re.compile(rb"^UID STORE \d+ \+FLAGS\.SILENT \(\\Seen\)$", re.I)


def refuse_seen(command: bytes):
    if SEEN_STORE.match(command):
        return b"[NOPERM] You may not set \\Seen in this mailbox"
    return None


def test_refused_seen_still_serves_every_message_and_quit_deletes(
        dovecot, fresh_user, make_server, relay):
    user = fresh_user(n=3)
    with ImapView(dovecot.dc, user) as v:
        uids = v.uids()
        bodies = [v.body(u) for u in uids]
    r = relay(refuse_seen)
    s = make_server(backend_port=r.port)
    with Pop3(s.port, timeout=30) as p:
        assert ok(p.login(user, "secret"))
        for n, body in enumerate(bodies, 1):
            st, got = p.retr(n)
            assert ok(st), (n, st, s.log()[-2000:])
            assert got == pop3_expected(body), n
        assert ok(p.cmd("DELE 1"))
        st = p.quit()
        assert st == b"+OK Logging out, 1 messages deleted", st
    assert len(r.refused) == 3 and all(SEEN_STORE.match(c) for c in r.refused), r.refused
    with ImapView(dovecot.dc, user) as v:
        assert v.uids() == uids[1:]
        for u in uids[1:]:
            assert b"\\Seen" not in v.flags(u)
    assert s.wait_log(r"Seen on UID \d+: backend refused UID STORE", 5), s.log()[-2000:]
    assert s.wait_log(r"session end: user=%s .* retrieved=3/.* deleted=1/.* end=quit" % user,
                      5), s.log()[-2000:]


def test_refused_fetch_of_one_message_is_an_err_and_the_others_are_served(
        dovecot, fresh_user, make_server, relay):
    user = fresh_user(n=3)
    with ImapView(dovecot.dc, user) as v:
        uids = v.uids()
        bodies = [v.body(u) for u in uids]
    bad = uids[1]

    def refuse_fetch(command: bytes):
        if re.match(rb"^UID FETCH %d \(UID BODY\.PEEK\[\]<0\.\d+>\)$" % bad, command):
            return b"[SERVERBUG] Error reading message"
        return None
    r = relay(refuse_fetch)
    s = make_server(backend_port=r.port)
    with Pop3(s.port, timeout=30) as p:
        assert ok(p.login(user, "secret"))
        st = p.cmd("RETR 2")
        assert st == (b"-ERR Message 2 cannot be read now, the mail server said: "
                      b"[SERVERBUG] Error reading message"), st
        for n in (1, 3):
            st, got = p.retr(n)
            assert ok(st) and got == pop3_expected(bodies[n - 1]), (n, st)
        # TOP of the unreadable one is refused the same way; the session stays.
        assert p.cmd("TOP 2 0").startswith(b"-ERR Message 2 cannot be read now")
        assert p.cmd("STAT").startswith(b"+OK 3 ")
        assert ok(p.cmd("DELE 3"))
        assert p.quit() == b"+OK Logging out, 1 messages deleted"
    assert len(r.refused) == 2, r.refused
    with ImapView(dovecot.dc, user) as v:
        assert v.uids() == uids[:2]
        assert b"\\Seen" in v.flags(uids[0]) and b"\\Seen" not in v.flags(bad)
    assert s.wait_log(r"end=quit", 5), s.log()[-2000:]
