"""The test bed itself (no server needed): every user logs in over IMAP with
its password and has the expected messages."""

import imaplib

import pytest

from conftest import PASSWORDS
from helpers import ImapView, imap_login


@pytest.mark.parametrize("user,count", [("alice", 5), ("carol", 11), ("bob", 10000),
                                        ("dave", 2), ("utf8user", 2)])
def test_testbed_user_logs_in_with_expected_count(dovecot, user, count):
    with ImapView(dovecot.dc, user, PASSWORDS[user]) as v:
        assert len(v.uids()) == count


def test_testbed_uid_order_is_file_order(dovecot):
    with ImapView(dovecot.dc, "bob") as v:
        assert b"Subject: bob 1\r\n" in v.body(1)
        assert b"Subject: bob 5000\r\n" in v.body(5000)
        assert b"Subject: bob 10000\r\n" in v.body(10000)
    with ImapView(dovecot.dc, "carol") as v:
        assert b"Subject: dots" in v.body(dovecot.carol_number("dots"))
        assert len(v.body(dovecot.carol_number("big20"))) > 20 * 1024 * 1024


def test_testbed_rejects_wrong_password(dovecot):
    with pytest.raises(imaplib.IMAP4.error):
        imap_login(dovecot.dc, "alice", "wrong")


def test_testbed_fresh_user_is_picked_up(dovecot):
    user = dovecot.fresh_user(3)
    with ImapView(dovecot.dc, user) as v:
        assert v.uids() == [1, 2, 3]


def test_testbed_hides_uidplus_on_its_third_address(dovecot):
    """Dovecot on 127.0.0.3 announces no UIDPLUS (before and after login);
    on 127.0.0.1 it does (after login)."""
    caps = {}
    for host in ("127.0.0.1", dovecot.dc.NO_UIDPLUS_HOST):
        m = imaplib.IMAP4(host, dovecot.port, timeout=30)
        try:
            pre = set(m.capabilities)
            m.login("alice", PASSWORDS["alice"])
            typ, data = m.capability()
            assert typ == "OK"
            caps[host] = (pre, set(data[0].decode().upper().split()))
        finally:
            m.logout()
    assert "UIDPLUS" in caps["127.0.0.1"][1], caps
    pre, post = caps[dovecot.dc.NO_UIDPLUS_HOST]
    assert "UIDPLUS" not in pre and "UIDPLUS" not in post, caps
    assert "IMAP4REV1" in post, caps
