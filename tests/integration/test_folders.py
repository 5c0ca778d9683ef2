"""Several folders form one maildrop (`folders = ["INBOX", "Archive"]`):
numbers run through the folders in order, UIDLs stay unique (INBOX keeps
Dovecot's own), RETR switches folders byte-exactly, and QUIT expunges
exactly the marked messages in each folder."""

import re

from helpers import ImapView, Pop3, err, imap_login, ok, pop3_expected
import testbed


def _make_archive(dovecot, user, messages):
    """CREATE Archive for ``user``, APPEND ``messages``; its UIDVALIDITY."""
    m = imap_login(dovecot.dc, user, "secret")
    try:
        typ, data = m.create("Archive")
        assert typ == "OK", data
        for msg in messages:
            typ, data = m.append("Archive", None, None, msg)
            assert typ == "OK", data
        typ, data = m.status("Archive", "(UIDVALIDITY)")
        assert typ == "OK", data
        return int(re.search(rb"UIDVALIDITY (\d+)", data[0]).group(1))
    finally:
        m.logout()


def _archive_uids(dovecot, user):
    m = imap_login(dovecot.dc, user, "secret")
    try:
        typ, data = m.select("Archive", readonly=True)
        assert typ == "OK", data
        typ, data = m.uid("SEARCH", "ALL")
        return [int(u) for u in data[0].split()]
    finally:
        m.logout()


def test_two_folders_form_one_maildrop(dovecot, make_server, fresh_user):
    user = fresh_user(3)
    archived = [testbed.simple_message(user, 200 + k, body_lines=k, extra=" archived") for k in (1, 2)]
    archive_uv = _make_archive(dovecot, user, archived)
    with ImapView(dovecot.dc, user) as v:
        inbox_uv = v.uidvalidity()
        inbox = [(uid, size, v.body(uid)) for uid, size in v.uid_sizes()]
    assert len(inbox) == 3

    server = make_server(["--folders", "INBOX,Archive"])
    with Pop3(server.port) as p:
        assert ok(p.login(user, "secret"))
        assert p.stat() == (5, sum(size for _, size, _ in inbox) + sum(len(a) for a in archived))
        uidl = p.uidl()
        assert uidl == {
            1: b"%08x%08x" % (inbox[0][0], inbox_uv),
            2: b"%08x%08x" % (inbox[1][0], inbox_uv),
            3: b"%08x%08x" % (inbox[2][0], inbox_uv),
            4: b"%08x%08x-1" % (1, archive_uv),
            5: b"%08x%08x-1" % (2, archive_uv),
        }
        # Back and forth between the folders: every RETR byte-exact.
        for n, expected in ((4, archived[0]), (1, inbox[0][2]), (5, archived[1]), (2, inbox[1][2])):
            st, got = p.retr(n)
            assert ok(st) and got == pop3_expected(expected), n
        assert ok(p.cmd("DELE 2"))
        assert ok(p.cmd("DELE 4"))
        assert ok(p.quit())

    with ImapView(dovecot.dc, user) as v:
        assert v.uids() == [inbox[0][0], inbox[2][0]]
    assert _archive_uids(dovecot, user) == [2]


def test_a_missing_second_folder_is_sys_perm(make_server, fresh_user):
    user = fresh_user(1)
    server = make_server(["--folders", "INBOX,NoSuchFolder"])
    with Pop3(server.port) as p:
        st = p.login(user, "secret")
        assert err(st) and st.startswith(b"-ERR [SYS/PERM]"), st


def test_a_folder_with_a_non_ascii_name_is_opened_by_its_modified_utf7_name(
        dovecot, make_server, fresh_user):
    user = fresh_user(1)
    msg = testbed.simple_message(user, 7, extra=" im Entwurf")
    m = imap_login(dovecot.dc, user, "secret")
    try:
        # imaplib sends the name as given: the modified UTF-7 of "Entwürfe".
        typ, data = m.create("Entw&APw-rfe")
        assert typ == "OK", data
        typ, data = m.append("Entw&APw-rfe", None, None, msg)
        assert typ == "OK", data
    finally:
        m.logout()
    s = make_server(["--folders", "Entwürfe"])
    with Pop3(s.port, timeout=20) as p:
        assert ok(p.login(user, "secret")), s.log()[-2000:]
        assert p.cmd("STAT").startswith(b"+OK 1 ")
        st, got = p.retr(1)
        assert ok(st) and got == pop3_expected(msg)
        assert ok(p.quit())
