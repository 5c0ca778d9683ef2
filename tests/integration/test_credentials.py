"""Credentials reach IMAP as data, never as syntax; bad ones get -ERR [AUTH];
repeated failures close the connection."""

import time

import pytest

from helpers import FakeBackend, FakeImap, ImapView, Pop3, StandaloneServer, err, ok


@pytest.fixture(scope="module")
def lenient(dovecot, workdir):
    """A server that allows many failed logins per connection."""
    s = StandaloneServer(workdir, dovecot.port, ["--max-login-failures", "100"],
                         name="lenient")
    yield s
    s.stop()


def test_password_with_quote_backslash_space_braces_logs_in(server):
    with Pop3(server.port) as p:
        st = p.login("dave", 'p"a\\ss {5} w')
        assert ok(st), st
        assert p.stat()[0] == 2
        assert ok(p.quit())


def test_utf8_password_logs_in(server):
    with Pop3(server.port) as p:
        st = p.login("utf8user", "pässwörd".encode("utf-8"))
        assert ok(st), st
        assert p.stat()[0] == 2
        assert ok(p.quit())


def test_wrong_password_gets_auth_code(server):
    with Pop3(server.port) as p:
        st = p.login("alice", "wrong")
        assert st.startswith(b"-ERR [AUTH]"), st
        # retry on the same connection works
        assert ok(p.login("alice", "secret"))
        p.quit()


def test_unknown_user_gets_auth_code(server):
    with Pop3(server.port) as p:
        st = p.login("nosuchuser", "secret")
        assert st.startswith(b"-ERR [AUTH]"), st


def test_connection_closed_after_three_failed_logins(server):
    with Pop3(server.port) as p:
        for i in range(2):
            assert p.login("alice", "bad%d" % i).startswith(b"-ERR [AUTH]")
            p.cmd("NOOP")  # +OK or -ERR; just one line
        st = p.login("alice", "bad3")
        assert st.startswith(b"-ERR"), st
        p.wait_closed(5)


def test_max_login_failures_is_configurable(make_server):
    s = make_server(["--max-login-failures", "1"])
    with Pop3(s.port) as p:
        assert err(p.login("alice", "bad"))
        p.wait_closed(5)


def test_login_failure_delay_applies(make_server):
    s = make_server(["--login-failure-delay", "1"])
    with Pop3(s.port) as p:
        t0 = time.monotonic()
        assert err(p.login("alice", "bad"))
        assert time.monotonic() - t0 >= 0.9
        t0 = time.monotonic()
        assert ok(p.login("alice", "secret"))
        assert time.monotonic() - t0 < 0.9  # no delay on success
        p.quit()


# Each attempt would, if sent to IMAP unescaped, either log in with the real
# password and run more commands (Dovecot accepts bare LF as a line end), or
# break the LOGIN syntax.
TARGET_PW = "secret"
INJECTIONS = [
    ("user", b'a" b'),
    ("user", b"x\\y"),
    ("user", b"{5}"),
    ("user", b"{5+}"),
    ("user", b"u LOGOUT"),
    ("user", b'TARGET" "secret"\nA1 UID STORE 1:* +FLAGS.SILENT (\\Deleted)\nA2 EXPUNGE\nA3 NOOP "'),
    ("user", b'TARGET" "secret"\rA1 UID STORE 1:* +FLAGS.SILENT (\\Deleted)\rA2 EXPUNGE\rA3 NOOP "'),
    ("pass", b'a" b'),
    ("pass", b"x\\y"),
    ("pass", b"{5}"),
    ("pass", b"secret LOGOUT"),
    ("pass", b'secret"\nA1 UID STORE 1:* +FLAGS.SILENT (\\Deleted)\nA2 EXPUNGE\nA3 NOOP "x'),
    ("pass", b'secret"\rA1 UID STORE 1:* +FLAGS.SILENT (\\Deleted)\rA2 EXPUNGE\rA3 NOOP "x'),
    ("pass", b'secret\nA1 UID STORE 1:* +FLAGS.SILENT (\\Deleted)\nA2 EXPUNGE'),
    ("pass", b'secret" LOGOUT\r\nA1 LOGOUT'),  # CRLF ends the POP3 line: 2 commands
    ("pass", b"secret\x00"),
    ("pass", b"secret\r"),
]


@pytest.mark.parametrize("where,payload", INJECTIONS,
                         ids=["%s-%d" % (w, i) for i, (w, _) in enumerate(INJECTIONS)])
def test_injection_attempts_are_refused_and_change_nothing(dovecot, lenient, fresh_user,
                                                           where, payload):
    s = lenient
    user = fresh_user(3)
    payload = payload.replace(b"TARGET", user.encode())
    with ImapView(dovecot.dc, user) as v:
        before = {u: v.flags(u) for u in v.uids()}
    with Pop3(s.port) as p:
        if where == "user":
            p.send(b"USER " + payload + b"\r\n")
            st = p.readline()
            if ok(st):
                st = p.cmd(b"PASS " + TARGET_PW.encode())
            # refused at USER (a NUL) or at PASS: always as a credential
            assert st.startswith(b"-ERR [AUTH]"), st
        else:
            assert ok(p.cmd(b"USER " + user.encode()))
            p.send(b"PASS " + payload + b"\r\n")
            st = p.readline()
            assert st.startswith(b"-ERR [AUTH]"), st
            if b"\r\n" in payload:
                # the tail after CRLF is a second (bogus) POP3 command
                assert err(p.readline())
        # one POP3 line (ending in CRLF; a lone CR or LF is inside it) gets one reply
        extra = p.pending(0.3)
        assert extra == b"", "one command line got several replies: %r" % extra
        # the session continues: a correct login on the same connection works
        st = p.login(user, TARGET_PW)
        assert ok(st), st
        assert p.stat()[0] == 3
        assert ok(p.quit())
    with ImapView(dovecot.dc, user) as v:
        after = {u: v.flags(u) for u in v.uids()}
    assert list(after) == list(before), "messages were expunged"
    for u in after:
        assert b"\\Deleted" not in after[u]


def test_credentials_with_lone_cr_or_lf_get_auth_code(lenient, fresh_user):
    s = lenient
    user = fresh_user(1)
    with Pop3(s.port) as p:
        for pw in (b"sec\rret", b"secret\r", b"sec\nret", b"secret\n", b"sec\x00ret"):
            assert ok(p.cmd(b"USER " + user.encode()))
            p.send(b"PASS " + pw + b"\r\n")
            st = p.readline()
            assert st.startswith(b"-ERR [AUTH]"), (pw, st)
            extra = p.pending(0.3)
            assert extra == b"", (pw, "several replies to one line", extra)
        assert ok(p.login(user, "secret"))
        p.quit()


def test_server_survives_injection_attempts(server):
    """After everything above the session server still serves."""
    with Pop3(server.port) as p:
        assert ok(p.login("alice", "secret"))
        p.quit()


def test_auth_plain_with_initial_response(server):
    import base64
    with Pop3(server.port) as p:
        tok = base64.b64encode(b"\0alice\0secret").decode()
        st = p.cmd("AUTH PLAIN " + tok)
        assert ok(st), st
        assert p.stat()[0] == 5
        p.quit()


def test_auth_plain_two_step_and_cancel(server):
    import base64
    with Pop3(server.port) as p:
        st = p.cmd("AUTH PLAIN")
        assert st == b"+ ", st
        assert err(p.cmd("*"))
        st = p.cmd("AUTH PLAIN")
        assert st == b"+ ", st
        st = p.cmd(base64.b64encode(b'\0dave\0p"a\\ss {5} w').decode())
        assert ok(st), st
        p.quit()


def quoted(b: bytes) -> bytes:
    return b'"' + b.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


@pytest.mark.parametrize("where,payload", INJECTIONS,
                         ids=["%s-%d" % (w, i) for i, (w, _) in enumerate(INJECTIONS)])
def test_injection_reaches_backend_as_one_quoted_string(make_server, where, payload):
    """The same payloads against a recording backend: printable ones arrive
    as one LOGIN whose arguments are quoted strings with '"' and '\\'
    escaped; with CR, LF or NUL no LOGIN is sent at all."""
    fake = FakeImap(login_ok=False)
    fb = FakeBackend(fake)
    try:
        s = make_server(["--max-login-failures", "100"], backend_port=fb.port)
        payload = payload.replace(b"TARGET", b"victim")
        user, pw = (payload, b"secret") if where == "user" else (b"victim", payload)
        with Pop3(s.port) as p:
            p.send(b"USER " + user + b"\r\n")
            st = p.readline()
            if ok(st):
                p.send(b"PASS " + pw + b"\r\n")
                st = p.readline()
            assert st.startswith(b"-ERR [AUTH]"), st
            p.pending(0.2)  # the reply to a tail after CRLF, if any
            assert ok(p.cmd("QUIT"))
        logins = [c for c in fake.log if c.split(b" ")[1:2] == [b"LOGIN"]]
        if b"\r\n" in pw:
            pw = pw.split(b"\r\n")[0]  # CRLF ends the POP3 line
        if any(c in user + pw for c in b"\r\n\x00"):
            assert logins == [], fake.log
        else:
            assert logins == [b"A0001 LOGIN " + quoted(user) + b" " + quoted(pw) + b"\r\n"], \
                fake.log
        assert len([c for c in fake.log if c.startswith(b"A0001 ")]) <= 1, fake.log
        assert not [c for c in fake.commands() if b"STORE" in c or b"EXPUNGE" in c], fake.log
    finally:
        fb.stop()
