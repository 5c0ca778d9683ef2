"""A backend NO to one command is an answer, not a dead session: through a
relay in front of the real Dovecot that refuses exactly one kind of command
(helpers.RefusingRelay), a refused FETCH of one message is an -ERR for that
message while the others are served.  The same relay, refusing nothing,
shows that a RETR is one FETCH which sets \\Seen itself (no UID STORE)."""

import re

import pytest

from helpers import ImapView, Pop3, ok, pop3_expected

@pytest.mark.parametrize("mark_seen", [True, False])
def test_retr_is_one_fetch_per_message_that_sets_seen_itself(
        dovecot, fresh_user, make_server, refusing_relay, mark_seen):
    """One round trip per RETR: `UID FETCH n (UID BODY[])` sets \\Seen on the
    server as it sends the message (no UID STORE after it); with
    mark_seen = false it is BODY.PEEK[] and nothing is set.  Without
    backend_prefetch (test_prefetch.py has it on)."""
    user = fresh_user(n=3)
    with ImapView(dovecot.dc, user) as v:
        uids = v.uids()
        bodies = [v.body(u) for u in uids]
    r = refusing_relay()
    s = make_server(["--mark-seen", "true" if mark_seen else "false",
                     "--backend-prefetch", "false"], backend_port=r.port)
    with Pop3(s.port, timeout=30) as p:
        assert ok(p.login(user, "secret"))
        for n, body in enumerate(bodies, 1):
            st, got = p.retr(n)
            assert ok(st), (n, st, s.log()[-2000:])
            assert got == pop3_expected(body), n
        assert ok(p.cmd("DELE 1"))
        assert p.quit() == b"+OK Logging out, 1 message deleted"
    fetches = r.whole_fetches()
    assert [uid for uid, _ in fetches] == uids, r.forwarded
    assert all(peek != mark_seen for _, peek in fetches), r.forwarded
    assert not [c for c in r.forwarded if b"Seen" in c], r.forwarded
    with ImapView(dovecot.dc, user) as v:
        assert v.uids() == uids[1:]
        for u in uids[1:]:
            assert (b"\\Seen" in v.flags(u)) == mark_seen
    assert s.wait_log(r"session end: user=%s .* retrieved=3/.* deleted=1/.* end=quit" % user,
                      5), s.log()[-2000:]


def test_refused_fetch_of_one_message_is_an_err_and_the_others_are_served(
        dovecot, fresh_user, make_server, refusing_relay):
    user = fresh_user(n=3)
    with ImapView(dovecot.dc, user) as v:
        uids = v.uids()
        bodies = [v.body(u) for u in uids]
    bad = uids[1]

    def refuse_fetch(command: bytes):
        # Any fetch of its body: alone, or in the batch asked for ahead.
        m = re.match(rb"^UID FETCH ([\d,]+) \(UID BODY(\.PEEK)?\[\](<0\.\d+>)?\)$", command)
        if m and b"%d" % bad in m.group(1).split(b","):
            return b"[SERVERBUG] Error reading message"
        return None
    r = refusing_relay(refuse_fetch)
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
        assert p.quit() == b"+OK Logging out, 1 message deleted"
    # RETR 2, the fetch ahead of 2 and 3 after RETR 1 (dropped: RETR 3
    # fetches 3 by itself), TOP 2.
    assert r.refused == [b"UID FETCH %d (UID BODY[])" % bad,
                         b"UID FETCH %d,%d (UID BODY.PEEK[])" % (bad, uids[2]),
                         b"UID FETCH %d (UID BODY.PEEK[]<0.262144>)" % bad], r.refused
    with ImapView(dovecot.dc, user) as v:
        assert v.uids() == uids[:2]
        assert b"\\Seen" in v.flags(uids[0]) and b"\\Seen" not in v.flags(bad)
    assert s.wait_log(r"end=quit", 5), s.log()[-2000:]
