"""DELE marks in memory only; QUIT in TRANSACTION expunges exactly the marked
messages; a dropped connection or RSET changes nothing."""

from helpers import ImapView, Pop3, err, ok, wait_for


def uids_of(dovecot, user):
    with ImapView(dovecot.dc, user) as v:
        return v.uids()


def flags_of(dovecot, user):
    with ImapView(dovecot.dc, user) as v:
        return {u: v.flags(u) for u in v.uids()}


def test_dele_and_quit_removes_exactly_those_messages(dovecot, server, fresh_user):
    user = fresh_user(6)
    before = uids_of(dovecot, user)
    with Pop3(server.port) as p:
        assert ok(p.login(user, "secret"))
        assert ok(p.cmd("DELE 2"))
        assert ok(p.cmd("DELE 5"))
        assert ok(p.quit())
    assert uids_of(dovecot, user) == [u for u in before if u not in (2, 5)]
    # nothing else got flagged \Deleted
    for u, fl in flags_of(dovecot, user).items():
        assert b"\\Deleted" not in fl


def test_dele_then_drop_connection_removes_nothing(dovecot, server, fresh_user):
    user = fresh_user(5)
    before = uids_of(dovecot, user)
    p = Pop3(server.port)
    assert ok(p.login(user, "secret"))
    assert ok(p.cmd("DELE 1"))
    assert ok(p.cmd("DELE 3"))
    p.close()

    # the old session must end (its lock goes away); a new login then works
    def relogin():
        with Pop3(server.port) as q:
            st = q.login(user, "secret")
            q.quit()
            return ok(st)
    assert wait_for(relogin, 5, 0.2)
    assert uids_of(dovecot, user) == before
    for fl in flags_of(dovecot, user).values():
        assert b"\\Deleted" not in fl


def test_dele_rset_quit_removes_nothing(dovecot, server, fresh_user):
    user = fresh_user(5)
    before = uids_of(dovecot, user)
    with Pop3(server.port) as p:
        assert ok(p.login(user, "secret"))
        assert ok(p.cmd("DELE 1"))
        assert ok(p.cmd("DELE 4"))
        assert p.stat()[0] == 3
        assert ok(p.cmd("RSET"))
        assert p.stat()[0] == 5
        assert len(p.list()) == 5
        assert ok(p.quit())
    assert uids_of(dovecot, user) == before


def test_deleted_message_cannot_be_accessed_or_deleted_again(dovecot, server, fresh_user):
    user = fresh_user(4)
    with ImapView(dovecot.dc, user) as v:
        sizes = dict(v.uid_sizes())
    with Pop3(server.port) as p:
        assert ok(p.login(user, "secret"))
        assert ok(p.cmd("DELE 2"))
        assert err(p.cmd("DELE 2"))
        assert err(p.cmd("RETR 2"))
        assert err(p.cmd("TOP 2 0"))
        assert err(p.cmd("LIST 2"))
        assert err(p.cmd("UIDL 2"))
        # STAT and LIST leave out the deleted message
        assert p.stat() == (3, sum(sizes.values()) - sizes[2])
        assert sorted(p.list()) == [1, 3, 4]
        assert sorted(p.uidl()) == [1, 3, 4]
        st, _ = p.retr(3)
        assert ok(st)
        assert ok(p.cmd("RSET"))
        assert ok(p.cmd("LIST 2"))
        assert ok(p.quit())
    assert uids_of(dovecot, user) == [1, 2, 3, 4]


def test_quit_without_dele_changes_nothing(dovecot, server, fresh_user):
    user = fresh_user(3)
    with Pop3(server.port) as p:
        assert ok(p.login(user, "secret"))
        assert ok(p.quit())
    assert uids_of(dovecot, user) == [1, 2, 3]


def test_dele_all_then_quit_empties_maildrop(dovecot, server, fresh_user):
    user = fresh_user(3)
    with Pop3(server.port) as p:
        assert ok(p.login(user, "secret"))
        for n in (1, 2, 3):
            assert ok(p.cmd("DELE %d" % n))
        assert p.stat() == (0, 0)
        assert ok(p.quit())
    assert uids_of(dovecot, user) == []


def test_dele_quit_spares_messages_another_client_flagged_deleted(dovecot, server, fresh_user):
    """Never a bare EXPUNGE / CLOSE: a message \\Deleted by another IMAP client
    but not DELEted over POP3 survives our QUIT."""
    user = fresh_user(4)
    with ImapView(dovecot.dc, user) as v:
        v.m.uid("STORE", "3", "+FLAGS.SILENT", "(\\Deleted)")
    with Pop3(server.port) as p:
        assert ok(p.login(user, "secret"))
        assert ok(p.cmd("DELE 1"))
        assert ok(p.quit())
    assert uids_of(dovecot, user) == [2, 3, 4]


def test_message_expunged_by_other_client_mid_session(dovecot, server, fresh_user):
    user = fresh_user(5)
    with ImapView(dovecot.dc, user) as v:
        body3 = v.body(3)
    with Pop3(server.port) as p:
        assert ok(p.login(user, "secret"))
        assert p.stat()[0] == 5
        with ImapView(dovecot.dc, user) as v:
            v.expunge_uid(2)
            assert v.uids() == [1, 3, 4, 5]
        assert err(p.cmd("RETR 2")), "RETR of an expunged message must be -ERR"
        # TOP of it also fails cleanly, the session goes on
        st = p.cmd("TOP 2 0")
        assert err(st)
        assert ok(p.cmd("NOOP"))
        st, got = p.retr(3)
        assert ok(st)
        from helpers import pop3_expected
        assert got == pop3_expected(body3)
        assert p.stat()[0] == 5  # the snapshot is unchanged
        assert ok(p.cmd("DELE 4"))
        assert ok(p.quit())
    assert uids_of(dovecot, user) == [1, 3, 5]


def test_dele_of_message_expunged_by_other_client_then_quit(dovecot, server, fresh_user):
    user = fresh_user(3)
    with Pop3(server.port) as p:
        assert ok(p.login(user, "secret"))
        with ImapView(dovecot.dc, user) as v:
            v.expunge_uid(1)
        p.cmd("DELE 1")  # +OK or -ERR are both acceptable
        assert ok(p.cmd("DELE 2"))
        st = p.quit()
        assert ok(st), st
    assert uids_of(dovecot, user) == [3]


# --------------------------------------------------------------------------
# a backend without UIDPLUS: Dovecot on 127.0.0.3 (imap_capability without
# UIDPLUS, see scripts/testbed.py); the command sequence itself is checked
# against a recording peer in test_backend_commands.py
# --------------------------------------------------------------------------

def no_uidplus_server(dovecot, make_server):
    return make_server(["--backend-host", dovecot.dc.NO_UIDPLUS_HOST, "--backend-tls", "none"])


def test_no_uidplus_dele_quit_expunges_when_no_other_is_deleted(dovecot, make_server,
                                                                 fresh_user):
    user = fresh_user(4)
    s = no_uidplus_server(dovecot, make_server)
    with Pop3(s.port) as p:
        assert ok(p.login(user, "secret"))
        assert ok(p.cmd("DELE 1"))
        assert ok(p.cmd("DELE 3"))
        assert ok(p.quit())
    assert uids_of(dovecot, user) == [2, 4]
    for fl in flags_of(dovecot, user).values():
        assert b"\\Deleted" not in fl
    assert "UIDPLUS" not in s.log()  # no warning: everything flagged was ours


def test_no_uidplus_spares_another_clients_deleted_message(dovecot, make_server, fresh_user):
    """Another IMAP client flags message 4 \\Deleted (without expunging)
    during our session: QUIT answers +OK, but nothing is expunged: ours stay
    flagged, theirs is not expunged by us, and a warning is logged."""
    user = fresh_user(4)
    s = no_uidplus_server(dovecot, make_server)
    with Pop3(s.port) as p:
        assert ok(p.login(user, "secret"))
        assert ok(p.cmd("DELE 1"))
        assert ok(p.cmd("DELE 2"))
        with ImapView(dovecot.dc, user) as v:
            typ, data = v.m.uid("STORE", "4", "+FLAGS.SILENT", "(\\Deleted)")
            assert typ == "OK", data
        st = p.quit()
        assert ok(st), st
    assert uids_of(dovecot, user) == [1, 2, 3, 4]
    flags = flags_of(dovecot, user)
    assert b"\\Deleted" in flags[1] and b"\\Deleted" in flags[2], flags
    assert b"\\Deleted" not in flags[3] and b"\\Deleted" in flags[4], flags
    assert s.wait_log(r"(?i)WARN.*no UIDPLUS.*left 2 messages flagged", 5), s.log()[-2000:]


def test_deleting_thousands_of_scattered_messages_fits_in_bounded_commands(
        dovecot, make_server, fresh_user):
    """Every other of 3,000 messages: one UID set would be about 15 KB. It is
    sent in commands of bounded length and removes exactly those messages."""
    user = fresh_user(n=3000)
    s = make_server(["--debug"])
    with ImapView(dovecot.dc, user) as v:
        uids = v.uids()
    assert len(uids) == 3000
    with Pop3(s.port, timeout=60) as p:
        assert ok(p.login(user, "secret"))
        # Pipelined (PIPELINING is advertised), in batches, bounded.
        for start in range(1, 3001, 500):
            batch = range(start, min(start + 500, 3001), 2)
            p.send(b"".join(b"DELE %d\r\n" % n for n in batch))
            for _ in batch:
                assert ok(p.readline())
        st = p.quit()
        assert st == b"+OK Logging out, 1500 messages deleted", st
    with ImapView(dovecot.dc, user) as v:
        assert v.uids() == uids[1::2]
