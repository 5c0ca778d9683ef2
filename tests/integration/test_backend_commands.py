"""What the server sends to IMAP, recorded by a scripted peer
(helpers.FakeImap): stalls and refusals at each step give -ERR [SYS/TEMP]
within the backend timeout, a RETR cut after its first piece never ends
with '.', LOGINDISABLED is honoured, read-only uses EXAMINE, and without
UIDPLUS only our own messages are ever expunged."""

import base64
import time

import pytest

from helpers import FakeBackend, FakeImap, Pop3, ok, pop3_expected

TIMEOUT_ARGS = ["--backend-timeout", "2", "--backend-connect-timeout", "2"]


@pytest.fixture
def fake_server(make_server):
    """fake_server(fake, extra=()) -> server in front of that FakeImap."""
    backends = []

    def make(fake, extra=()):
        fb = FakeBackend(fake)
        backends.append(fb)
        return make_server(list(TIMEOUT_ARGS) + list(extra), backend_port=fb.port)
    yield make
    for fb in backends:
        fb.stop()


def big_message(size: int) -> bytes:
    """``size`` octets of numbered CRLF lines, none starting with '.'."""
    head = b"From: fake@example.org\r\nSubject: big\r\n\r\n"
    lines = b"".join(b"line %07d of a big scripted message ...........................\r\n" % i
                     for i in range(size // 60 + 1))
    return (head + lines)[:size - 2] + b"\r\n"


# --------------------------------------------------------------------------
# RETR against a stalling backend
# --------------------------------------------------------------------------

def test_retr_stall_on_first_piece_gives_sys_temp_and_closes(fake_server):
    fake = FakeImap(stall=lambda cmd: b"(UID BODY[])" in cmd)
    s = fake_server(fake)
    with Pop3(s.port, timeout=20) as p:
        assert ok(p.login("alice", "secret"))
        t0 = time.monotonic()
        st = p.cmd("RETR 1")
        elapsed = time.monotonic() - t0
        assert st.startswith(b"-ERR [SYS/TEMP]"), st
        assert 1.5 <= elapsed < 8, elapsed
        assert p.wait_closed(5) == b""
    assert fake.stalled and b"UID FETCH 1 (UID BODY[])" in fake.stalled[0], fake.stalled
    assert not [c for c in fake.commands() if b"STORE" in c.upper()], fake.log
    assert s.wait_log(r"end=backend-error", 5), s.log()[-2000:]


def test_retr_stall_on_later_piece_cuts_without_final_dot(fake_server):
    """The body comes in one FETCH; the backend stops sending after 300,000
    of its 600,000 bytes: the first 256 KiB piece is passed on, then the
    connection is cut, never with a final dot."""
    msg = big_message(600_000)

    def stall_mid_body(cmd: bytes):
        if b"(UID BODY[])" in cmd:
            return b"* 1 FETCH (UID 1 BODY[] {%d}\r\n" % len(msg) + msg[:300_000] + b"{stall}"
        return None
    fake = FakeImap(messages=[msg], override=stall_mid_body)
    s = fake_server(fake)
    with Pop3(s.port, timeout=20) as p:
        assert ok(p.login("alice", "secret"))
        assert p.cmd("LIST 1") == b"+OK 1 %d" % len(msg)
        t0 = time.monotonic()
        st = p.cmd("RETR 1")
        assert ok(st), st
        data = p.wait_closed(10)
        elapsed = time.monotonic() - t0
    print("RETR cut after the first piece: %d octets in %.1fs" % (len(data), elapsed))
    assert 1.5 <= elapsed < 10, elapsed
    expected = pop3_expected(msg)
    assert 0 < len(data) < len(expected)
    assert expected.startswith(data), "what arrived is not a prefix of the message"
    assert len(data) >= 256 * 1024 - 200, "the first piece was not passed on: %d" % len(data)
    assert not data.endswith(b".\r\n"), data[-100:]
    assert b"\r\n.\r\n" not in data
    assert not [c for c in fake.commands() if b"STORE" in c.upper()], fake.log


# --------------------------------------------------------------------------
# QUIT against a stalling or refusing UID EXPUNGE
# --------------------------------------------------------------------------

def test_quit_with_stalled_uid_expunge_gives_sys_temp(fake_server):
    fake = FakeImap(stall=lambda cmd: b" UID EXPUNGE " in cmd.upper())
    s = fake_server(fake)
    with Pop3(s.port, timeout=20) as p:
        assert ok(p.login("alice", "secret"))
        assert ok(p.cmd("DELE 2"))
        t0 = time.monotonic()
        st = p.cmd("QUIT")
        elapsed = time.monotonic() - t0
        assert st.startswith(b"-ERR [SYS/TEMP]"), st
        # One backend timeout, one more after logging in again (once).
        assert 3 <= elapsed < 12, elapsed
        p.wait_closed(5)
    cmds = fake.commands()
    assert b"UID STORE 2 +FLAGS.SILENT (\\Deleted)" in cmds, cmds
    assert len(fake.stalled) == 2 and all(c.endswith(b" UID EXPUNGE 2\r\n")
                                          for c in fake.stalled), fake.stalled
    assert len([c for c in cmds if c.startswith(b"LOGIN ")]) == 2, cmds
    # The flags are set and the outcome is unknown: the reply must not say
    # that nothing was deleted, and the log names what may still be flagged.
    assert b"no message was deleted" not in st and b"did not confirm" in st, st
    assert s.wait_log(r"\\Deleted was set on UIDs 2 \(UIDVALIDITY \d+\) but the expunge was not "
                      r"confirmed", 5), s.log()[-2000:]


def expunge_refused(cmd: bytes):
    if b" UID EXPUNGE " in cmd.upper():
        return b"{tag} NO [SERVERBUG] expunge failed\r\n"
    return None


def test_quit_with_refused_uid_expunge_gives_sys_temp(fake_server):
    fake = FakeImap(override=expunge_refused)
    s = fake_server(fake)
    with Pop3(s.port, timeout=20) as p:
        assert ok(p.login("alice", "secret"))
        assert ok(p.cmd("DELE 2"))
        assert ok(p.cmd("DELE 3"))
        st = p.cmd("QUIT")
        assert st.startswith(b"-ERR [SYS/TEMP]"), st
        p.wait_closed(5)
    cmds = fake.commands()
    assert b"UID STORE 2:3 +FLAGS.SILENT (\\Deleted)" in cmds, cmds
    assert b"UID EXPUNGE 2:3" in cmds, cmds
    assert fake.uids() == [1, 2, 3]
    assert not [c for c in cmds if c.upper().startswith((b"CLOSE", b"EXPUNGE"))], cmds


def test_refused_uid_expunge_takes_the_deleted_flags_back(fake_server):
    """After a NO to UID EXPUNGE the server removes the \\Deleted flags it set,
    so no other client's EXPUNGE removes the messages later."""
    fake = FakeImap(override=expunge_refused)
    s = fake_server(fake)
    with Pop3(s.port, timeout=20) as p:
        assert ok(p.login("alice", "secret"))
        assert ok(p.cmd("DELE 2"))
        assert ok(p.cmd("DELE 3"))
        assert p.cmd("QUIT").startswith(b"-ERR [SYS/TEMP]")
        p.wait_closed(5)
    cmds = fake.commands()
    print(cmds)
    i = cmds.index(b"UID EXPUNGE 2:3")
    assert b"UID STORE 2:3 -FLAGS.SILENT (\\Deleted)" in cmds[i + 1:], cmds
    assert all(b"\\Deleted" not in fl for fl in fake.flags.values()), fake.flags


# --------------------------------------------------------------------------
# LOGINDISABLED
# --------------------------------------------------------------------------

@pytest.mark.parametrize("sasl_ir", [False, True])
def test_logindisabled_uses_authenticate_plain(fake_server, sasl_ir):
    caps = b"IMAP4rev1 LOGINDISABLED AUTH=PLAIN" + (b" SASL-IR" if sasl_ir else b"")
    fake = FakeImap(caps=caps, post_caps=b"IMAP4rev1 LITERAL+ UIDPLUS")
    s = fake_server(fake)
    with Pop3(s.port) as p:
        assert ok(p.login("alice", 'p"a\\ss {5} w'))
        assert p.stat()[0] == 3
        assert ok(p.quit())
    expected = base64.b64encode(b'\0alice\0p"a\\ss {5} w')
    print(fake.log, fake.sasl)
    if sasl_ir:
        assert fake.log[0] == b"A0001 AUTHENTICATE PLAIN " + expected + b"\r\n", fake.log
        assert fake.sasl == []
    else:
        assert fake.log[0] == b"A0001 AUTHENTICATE PLAIN\r\n", fake.log
        assert fake.sasl == [expected + b"\r\n"], fake.sasl
    assert not [c for c in fake.commands() if c.upper().startswith(b"LOGIN")], fake.log


def test_logindisabled_with_starttls_sends_no_credentials(fake_server):
    """--backend-tls none against a backend that wants STARTTLS first:
    -ERR [SYS/TEMP], and neither LOGIN nor AUTHENTICATE nor the password
    goes out."""
    fake = FakeImap(caps=b"IMAP4rev1 LOGINDISABLED STARTTLS AUTH=PLAIN")
    s = fake_server(fake, ["--backend-tls", "none"])
    with Pop3(s.port) as p:
        assert ok(p.cmd("USER alice"))
        st = p.cmd("PASS Sup3r-secret")
        assert st.startswith(b"-ERR [SYS/TEMP]"), st
    cmds = fake.commands()
    assert not [c for c in cmds if c.upper().startswith((b"LOGIN", b"AUTHENTICATE"))], cmds
    sent = b"".join(fake.log) + b"".join(fake.sasl)
    assert b"Sup3r-secret" not in sent
    assert base64.b64encode(b"\0alice\0Sup3r-secret")[:8] not in sent
    assert s.wait_log(r"(?i)LOGINDISABLED", 5), s.log()[-2000:]


# --------------------------------------------------------------------------
# read-only and the listing
# --------------------------------------------------------------------------

def test_read_only_uses_examine_and_never_stores(fake_server):
    fake = FakeImap()
    s = fake_server(fake, ["--read-only", "true"])
    with Pop3(s.port) as p:
        assert ok(p.login("alice", "secret"))
        st, body = p.retr(1)
        assert ok(st) and body == fake.msgs[1]
        st = p.cmd("DELE 2")
        assert st.startswith(b"-ERR [SYS/PERM]"), st
        assert ok(p.quit())
    cmds = fake.commands()
    assert cmds[1] == b'EXAMINE "INBOX"', cmds
    assert not [c for c in cmds if b"STORE" in c.upper() or b"EXPUNGE" in c.upper()
                or c.upper().startswith(b"SELECT")], cmds


# --------------------------------------------------------------------------
# without UIDPLUS: UID SEARCH DELETED, then EXPUNGE only if all are ours
# --------------------------------------------------------------------------

NO_UIDPLUS = b"IMAP4rev1 LITERAL+ UNSELECT ID"


def test_no_uidplus_expunges_when_only_ours_are_deleted(fake_server):
    fake = FakeImap(caps=NO_UIDPLUS)
    s = fake_server(fake)
    with Pop3(s.port) as p:
        assert ok(p.login("alice", "secret"))
        assert ok(p.cmd("DELE 1"))
        assert ok(p.cmd("DELE 3"))
        assert ok(p.quit())
    cmds = fake.commands()
    i = cmds.index(b"UID STORE 1,3 +FLAGS.SILENT (\\Deleted)")
    assert cmds[i + 1:i + 3] == [b"UID SEARCH DELETED", b"EXPUNGE"], cmds
    assert not [c for c in cmds if b"UID EXPUNGE" in c.upper() or c.upper() == b"CLOSE"], cmds
    assert fake.uids() == [2]


def test_no_uidplus_leaves_ours_flagged_when_others_are_deleted(fake_server):
    fake = FakeImap(caps=NO_UIDPLUS)
    fake.flags[2].add(b"\\Deleted")  # another client's, not expunged
    s = fake_server(fake)
    with Pop3(s.port) as p:
        assert ok(p.login("alice", "secret"))
        assert ok(p.cmd("DELE 1"))
        st = p.cmd("QUIT")
        assert ok(st), st
        p.wait_closed(5)
    cmds = fake.commands()
    i = cmds.index(b"UID STORE 1 +FLAGS.SILENT (\\Deleted)")
    assert cmds[i + 1] == b"UID SEARCH DELETED", cmds
    assert not [c for c in cmds if c.upper() in (b"EXPUNGE", b"CLOSE")
                or b"UID EXPUNGE" in c.upper()], cmds
    assert fake.uids() == [1, 2, 3]
    assert b"\\Deleted" in fake.flags[1] and b"\\Deleted" in fake.flags[2]
    assert s.wait_log(r"(?i)WARN.*UIDPLUS.*flagged", 5), s.log()[-2000:]


def test_no_dele_sends_no_store_or_expunge(fake_server):
    fake = FakeImap()
    s = fake_server(fake)
    with Pop3(s.port) as p:
        assert ok(p.login("alice", "secret"))
        assert ok(p.cmd("DELE 1"))
        assert ok(p.cmd("RSET"))
        assert ok(p.quit())
    assert fake.wait_command(b"LOGOUT"), fake.commands()
    cmds = fake.commands()
    assert cmds[1:] == [b'SELECT "INBOX"', b"UID FETCH 1:* (UID RFC822.SIZE)", b"LOGOUT"], cmds
    assert fake.uids() == [1, 2, 3]


def test_quit_logs_in_again_when_the_backend_dropped_the_idle_connection(fake_server):
    """Servers close idle IMAP connections; the client must not download and
    delete everything again because of it: QUIT logs in once more, checks
    UIDVALIDITY, and expunges by UID."""
    dropped = []

    def drop_first_store(cmd: bytes) -> bool:
        if b" UID STORE " in cmd.upper() and not dropped:
            dropped.append(cmd)
            return True
        return False
    fake = FakeImap(drop=drop_first_store)
    s = fake_server(fake)
    with Pop3(s.port, timeout=20) as p:
        assert ok(p.login("alice", "secret"))
        assert ok(p.cmd("DELE 2"))
        st = p.quit()
        assert st == b"+OK Logging out, 1 message deleted", (st, s.log()[-2000:])
    assert fake.uids() == [1, 3]
    cmds = fake.commands()
    assert len([c for c in cmds if c.startswith(b"LOGIN ")]) == 2, cmds
    assert s.wait_log(r"logged in again to delete the messages", 5)


# --------------------------------------------------------------------------
# hostile backends
# --------------------------------------------------------------------------

def test_bye_inside_a_retr_literal_gives_sys_temp_not_a_partial_message(fake_server):
    def bye_mid_literal(cmd: bytes):
        if b"(UID BODY[])" in cmd:
            return (b"* 1 FETCH (UID 1 BODY[] {100}\r\nFrom: x\r\n\r\nthe first 30 b"
                    b"\r\n* BYE server shutting down\r\n{close}")
        return None
    fake = FakeImap(override=bye_mid_literal)
    s = fake_server(fake)
    with Pop3(s.port, timeout=20) as p:
        assert ok(p.login("alice", "secret"))
        st = p.cmd("RETR 1")
        assert st.startswith(b"-ERR [SYS/TEMP]"), st
        assert p.wait_closed(5) == b""
    assert s.wait_log(r"end=backend-error", 5), s.log()[-2000:]


def test_a_brace_number_in_a_response_text_is_text_not_a_literal(fake_server):
    """`{5}` at the end of a status text is not a literal (resp-text has
    none): taken for one, it would swallow the next response and the stream
    would desync."""
    def alert_on_select(cmd: bytes):
        if b" SELECT " in cmd:
            return (b"* OK [ALERT] quota {5}\r\n* 3 EXISTS\r\n* OK [UIDVALIDITY 4242] ok\r\n"
                    b"{tag} OK [READ-WRITE] selected {2}\r\n")
        return None
    fake = FakeImap(override=alert_on_select)
    s = fake_server(fake)
    with Pop3(s.port, timeout=20) as p:
        assert ok(p.login("alice", "secret"))
        assert p.stat()[0] == 3
        st, body = p.retr(2)
        assert ok(st) and body == fake.msgs[2]
        assert ok(p.quit())


def test_a_literal_over_the_limit_is_refused_before_it_is_read(fake_server):
    def huge_literal(cmd: bytes):
        if b"(UID BODY[])" in cmd:
            return b"* 1 FETCH (UID 1 BODY[] {999999999}\r\n"
        return None
    fake = FakeImap(override=huge_literal)
    s = fake_server(fake)
    with Pop3(s.port, timeout=20) as p:
        assert ok(p.login("alice", "secret"))
        t0 = time.monotonic()
        st = p.cmd("RETR 1")
        assert st.startswith(b"-ERR [SYS/TEMP]"), st
        assert time.monotonic() - t0 < 2, "it waited for the literal"
    assert s.wait_log(r"literal of 999999999 bytes is over the limit", 5), s.log()[-2000:]


def test_uid_and_size_in_two_fetch_responses_keep_the_message(fake_server):
    def split_snapshot(cmd: bytes):
        if b"UID FETCH 1:* (UID RFC822.SIZE)" in cmd:
            return (b"* 1 FETCH (UID 1)\r\n* 2 FETCH (UID 2 RFC822.SIZE 50)\r\n"
                    b"* 3 FETCH (UID 3 RFC822.SIZE 51)\r\n* 1 FETCH (RFC822.SIZE 49)\r\n"
                    b"{tag} OK done\r\n")
        return None
    fake = FakeImap(override=split_snapshot)
    s = fake_server(fake)
    with Pop3(s.port, timeout=20) as p:
        assert ok(p.login("alice", "secret"))
        st, lines = p.multi_lines("LIST")
        assert ok(st) and lines == [b"1 49", b"2 50", b"3 51"], (st, lines)
