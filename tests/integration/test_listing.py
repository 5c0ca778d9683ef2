"""STAT, LIST and UIDL: sizes equal IMAP RFC822.SIZE, UIDL is Dovecot's
%08x%08x of (UID, UIDVALIDITY), stable, and the maildrop is a snapshot."""

import re

from helpers import FakeBackend, FakeImap, ImapView, Pop3, dovecot_uidl, err, ok
import testbed


def test_stat_and_list_equal_backend_rfc822_size(dovecot, server):
    for user in ("alice", "carol"):
        with ImapView(dovecot.dc, user) as v:
            sizes = v.uid_sizes()
        with Pop3(server.port) as p:
            assert ok(p.login(user, "secret"))
            count, total = p.stat()
            assert count == len(sizes)
            assert total == sum(s for _, s in sizes)
            lst = p.list()
            assert lst == {n: s for n, (_, s) in enumerate(sizes, start=1)}
            for n, (_, s) in enumerate(sizes, start=1):
                st = p.cmd("LIST %d" % n)
                assert st == b"+OK %d %d" % (n, s), st
            assert ok(p.quit())


def test_uidl_is_dovecot_format_uid_then_uidvalidity(dovecot, server):
    with ImapView(dovecot.dc, "alice") as v:
        uv = v.uidvalidity()
        uids = v.uids()
    with Pop3(server.port) as p:
        assert ok(p.login("alice", "secret"))
        u = p.uidl()
        assert u == {n: dovecot_uidl(uid, uv) for n, uid in enumerate(uids, start=1)}
        for n, uid in enumerate(uids, start=1):
            assert p.cmd("UIDL %d" % n) == b"+OK %d %s" % (n, dovecot_uidl(uid, uv))
        for val in u.values():
            assert re.fullmatch(rb"[0-9a-f]{16}", val)
        p.quit()


def test_uidl_stable_across_sessions_and_after_append(dovecot, server, fresh_user):
    user = fresh_user(4)
    with Pop3(server.port) as p:
        assert ok(p.login(user, "secret"))
        first = p.uidl()
        assert ok(p.quit())
    with Pop3(server.port) as p:
        assert ok(p.login(user, "secret"))
        assert p.uidl() == first
        assert ok(p.quit())
    with ImapView(dovecot.dc, user) as v:
        v.append(testbed.simple_message(user, 99))
    with Pop3(server.port) as p:
        assert ok(p.login(user, "secret"))
        after = p.uidl()
        assert ok(p.quit())
    assert len(after) == 5
    assert {k: after[k] for k in first} == first
    assert after[5] not in first.values()
    assert len(set(after.values())) == 5


def test_new_mail_during_session_is_not_shown(dovecot, server, fresh_user):
    user = fresh_user(3)
    with Pop3(server.port) as p:
        assert ok(p.login(user, "secret"))
        stat1, list1, uidl1 = p.stat(), p.list(), p.uidl()
        with ImapView(dovecot.dc, user) as v:
            v.append(testbed.simple_message(user, 50, body_lines=40))
            assert len(v.uids()) == 4
        assert ok(p.cmd("NOOP"))
        assert p.stat() == stat1
        assert p.list() == list1
        assert p.uidl() == uidl1
        assert err(p.cmd("LIST 4"))
        assert err(p.cmd("RETR 4"))
        assert err(p.cmd("UIDL 4"))
        assert ok(p.quit())
    with Pop3(server.port) as p:
        assert ok(p.login(user, "secret"))
        assert p.stat()[0] == 4
        p.quit()


def test_empty_maildrop(dovecot, server, fresh_user):
    user = fresh_user(0)
    with Pop3(server.port) as p:
        assert ok(p.login(user, "secret"))
        assert p.stat() == (0, 0)
        assert p.list() == {}
        assert p.uidl() == {}
        assert err(p.cmd("RETR 1"))
        assert err(p.cmd("LIST 1"))
        assert ok(p.quit())


def test_stat_list_uidl_do_not_download_bodies(make_server):
    """A scripted backend records every command: STAT, LIST, UIDL (with and
    without an argument) use the one snapshot UID FETCH 1:* (UID RFC822.SIZE)
    and never ask for a body."""
    msgs = [b"From: a@example.org\r\nSubject: %d\r\n\r\n" % i + b"x" * (100 * i) + b"\r\n"
            for i in (1, 2, 3)]
    fake = FakeImap(messages=msgs, uids=[3, 7, 12], uidvalidity=0x5f3c2a10)
    fb = FakeBackend(fake)
    try:
        s = make_server(["--backend-timeout", "5"], backend_port=fb.port)
        with Pop3(s.port) as p:
            assert ok(p.login("alice", "secret"))
            assert p.stat() == (3, sum(len(m) for m in msgs))
            assert p.list() == {n: len(m) for n, m in enumerate(msgs, start=1)}
            assert p.cmd("LIST 2") == b"+OK 2 %d" % len(msgs[1])
            assert p.uidl() == {1: b"000000035f3c2a10", 2: b"000000075f3c2a10",
                                3: b"0000000c5f3c2a10"}
            assert p.cmd("UIDL 3") == b"+OK 3 0000000c5f3c2a10"
            assert ok(p.quit())
        assert fake.wait_command(b"LOGOUT"), fake.commands()
    finally:
        fb.stop()
    cmds = fake.commands()
    print(cmds)
    for c in cmds:
        u = c.upper()
        assert b"BODY" not in u and b"RFC822]" not in u and b"RFC822 " not in u \
            and not u.endswith(b"RFC822") and b"RFC822.TEXT" not in u \
            and b"RFC822.HEADER" not in u, c
    fetches = [c for c in cmds if b"FETCH" in c.upper()]
    assert fetches == [b"UID FETCH 1:* (UID RFC822.SIZE)"], cmds
    assert cmds == [b'LOGIN "alice" "secret"', b'SELECT "INBOX"',
                    b"UID FETCH 1:* (UID RFC822.SIZE)", b"LOGOUT"], cmds


def test_uidl_format_template_end_to_end(dovecot, make_server):
    """--uidl-format "%v.%u": UIDVALIDITY and UID in decimal."""
    with ImapView(dovecot.dc, "alice") as v:
        uv = v.uidvalidity()
        uids = v.uids()
    s = make_server(["--uidl-format", "%v.%u"])
    with Pop3(s.port) as p:
        assert ok(p.login("alice", "secret"))
        u = p.uidl()
        assert u == {n: b"%d.%d" % (uv, uid) for n, uid in enumerate(uids, start=1)}, u
        assert p.cmd("UIDL 2") == b"+OK 2 %d.%d" % (uv, uids[1])
        assert ok(p.quit())
