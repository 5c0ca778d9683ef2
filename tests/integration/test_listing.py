"""STAT, LIST and UIDL: sizes equal IMAP RFC822.SIZE, UIDL is Dovecot's
%08x%08x of (UID, UIDVALIDITY), stable, and the maildrop is a snapshot."""

import re

from helpers import ImapView, Pop3, dovecot_uidl, err, ok
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


def test_stat_list_uidl_do_not_download_bodies(dovecot, server):
    # Pins a speed property indirectly: STAT/LIST/UIDL on carol (20 MiB inside)
    # answer quickly even on a slow path.
    import time
    with Pop3(server.port) as p:
        assert ok(p.login("carol", "secret"))
        t0 = time.monotonic()
        p.stat()
        p.list()
        p.uidl()
        assert time.monotonic() - t0 < 5
        p.quit()
