"""One summary line per session; passwords and SASL responses never in the
log, not even with -d (debug)."""

import base64
import os
import re
import shutil
import subprocess

import pytest

from helpers import Pop3, StandaloneServer, err, ok

b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
HERE = os.path.dirname(os.path.abspath(__file__))


def test_session_summary_line(server):
    with Pop3(server.port) as p:
        assert ok(p.login("alice", "secret"))
        st, _ = p.retr(1)
        assert ok(p.quit())
    assert server.wait_log(r"user=alice\b.*end=quit|end=quit.*user=alice\b", 5), server.log()[-2000:]
    lines = [ln for ln in server.log().splitlines() if "user=alice" in ln and "end=quit" in ln]
    assert any("client=" in ln for ln in lines), lines


def test_summary_line_for_disconnect(server, fresh_user):
    user = fresh_user(1)
    p = Pop3(server.port)
    assert ok(p.login(user, "secret"))
    p.close()
    assert server.wait_log(r"user=%s\b.*end=(disconnect|eof|closed)" % user, 5), \
        server.log()[-2000:]


@pytest.mark.parametrize("debug", [False, True], ids=["info", "debug"])
def test_password_never_in_log(dovecot, make_server, fresh_user, debug):
    pw = "Xq9-Sup3rS3cret-pw"
    wrong = "Wr0ngPw-Zz8-unique"
    user = fresh_user(2, password=pw)
    s = make_server(["--max-login-failures", "5"] + (["-d"] if debug else []))
    with Pop3(s.port) as p:
        assert p.login(user, wrong).startswith(b"-ERR [AUTH]")
        assert p.login("alice", wrong).startswith(b"-ERR [AUTH]")
        # SASL too: PLAIN with the wrong and the right password, LOGIN
        st = p.cmd("AUTH PLAIN " + b64(b"\0" + user.encode() + b"\0" + wrong.encode()))
        assert st.startswith(b"-ERR [AUTH]"), st
        assert p.cmd("AUTH LOGIN").startswith(b"+ ")
        assert p.cmd(b64(user.encode())).startswith(b"+ ")
        assert p.cmd(b64(wrong.encode())).startswith(b"-ERR [AUTH]")
        assert ok(p.login(user, pw))
        p.retr(1)
        assert ok(p.quit())
    assert s.wait_log(r"end=quit", 5)
    log = s.log()
    assert user in log
    if debug:
        assert "DEBUG" in log or "debug" in log.lower(), log[-2000:]
    for secret in (pw, wrong, b64(wrong.encode()),
                   b64(b"\0" + user.encode() + b"\0" + wrong.encode())):
        assert secret not in log, secret
    assert_no_piece_of(b64(b"\0" + user.encode() + b"\0" + wrong.encode()), log, user)


@pytest.mark.parametrize("debug", [False, True], ids=["info", "debug"])
def test_special_passwords_never_in_log(make_server, debug):
    s = make_server(["-d"] if debug else [])
    with Pop3(s.port) as p:
        assert ok(p.login("dave", 'p"a\\ss {5} w'))
        assert ok(p.quit())
    with Pop3(s.port) as p:
        assert ok(p.login("utf8user", "pässwörd".encode("utf-8")))
        assert ok(p.quit())
    assert s.wait_log(r"user=utf8user\b.*end=quit", 5)
    raw = open(s.log_path, "rb").read()
    for pw in ('p"a\\ss {5} w'.encode(), "pässwörd".encode("utf-8"), b"ss {5} w",
               "pässwörd".encode("latin-1"), "sswörd".encode("utf-8"),
               b"p\\\"a", b"p\\x22a"):
        assert pw not in raw, pw


def assert_no_piece_of(token: str, log: str, user: str = "") -> None:
    """No 6-character piece of ``token`` (base64 of credentials) is in the
    log, except pieces that are in the user name's own base64 (the log names
    the user)."""
    allowed = b64(b"\0" + user.encode() + b"\0")[:-4] if user else ""
    for i in range(len(token) - 5):
        piece = token[i:i + 6]
        if piece in allowed:
            continue
        assert piece not in log, "piece %r of the SASL response %r is in the log" % (piece, token)


SASL_PW = "Kq7-pipelined-Pw"


def pipelined_sasl(user: str = "alice", pw: str = SASL_PW) -> str:
    return b64(b"\0" + user.encode() + b"\0" + pw.encode())


def test_pipelined_sasl_response_after_refused_auth_not_in_debug_log(make_server):
    """``AUTH FOO`` (no such mechanism) with the SASL response pipelined
    behind it: the response line is then read as a command; with -d neither
    it, nor any 6-character piece of it, nor the password is logged."""
    s = make_server(["-d"])
    token = pipelined_sasl()
    for mech in ("FOO", "X" * 40, "PLAIN-X"):
        with Pop3(s.port) as p:
            p.send(b"AUTH %s\r\n%s\r\nSTAT\r\n" % (mech.encode(), token.encode()))
            assert err(p.readline())          # AUTH FOO
            assert err(p.readline())          # the base64 line as a command
            st = p.readline()                 # STAT: not logged in
            assert st.startswith(b"-ERR") and b"logged in" in st, st
            assert p.pending(0.2) == b""
            assert b"TOP" in p.capa()         # in sync
            assert ok(p.quit())
    assert s.wait_log(r"(?s)(session end: .*){3}", 5), s.log()[-2000:]
    log = s.log()
    assert "DEBUG" in log or "command" in log, log[-2000:]
    assert SASL_PW not in log and token not in log
    assert_no_piece_of(token, log)


def test_pipelined_sasl_response_refused_off_loopback_not_in_debug_log(dovecot, workdir,
                                                                       netns):
    """From a non-loopback client without TLS AUTH is refused; the SASL
    response (and a PASS) pipelined behind it must not reach the -d log."""
    token = pipelined_sasl()
    s = StandaloneServer(workdir, dovecot.port, ["-d"], name="ns-sasl-log",
                         listen_host=netns.server_addr)
    try:
        t = netns.run_client(s.port, [
            ["send", "AUTH PLAIN\r\n%s\r\nAUTH PLAIN %s\r\nUSER alice\r\nPASS %s\r\n"
                     "NOOP\r\n" % (token, token, SASL_PW)],
            ["read"], ["read"], ["read"], ["read"], ["read"], ["read"],
            ["cmd", "QUIT"],
        ])
        print(t)
        answers = [a for _, a in t[2:8]]
        assert all(a.startswith("-ERR") for a in answers), t
        assert "logged in" in answers[5], t  # NOOP before login: still in sync
        assert t[8][1].startswith("+OK"), t
        assert s.wait_log(r"session end: .*client=%s" % re.escape(netns.client_addr), 5), \
            s.log()[-2000:]
    finally:
        s.stop()
    log = s.log()
    assert "DEBUG" in log or "command" in log, log[-2000:]
    assert SASL_PW not in log and token not in log
    assert_no_piece_of(token, log)


def test_debug_shows_both_exchanges_line_by_line_without_credentials_or_bodies(
        dovecot, make_server, fresh_user):
    """-d: each POP3 command and reply, each IMAP command and response line,
    with passwords and SASL responses shown as lengths and message bodies
    not at all, so an admin can see what the backend refused and why."""
    pw = "Tr4ce-Pw-Unique-77"
    user = fresh_user(2, password=pw)
    s = make_server(["-d", "--max-login-failures", "5"])
    with Pop3(s.port) as p:
        assert p.login(user, "wrong-pw-123").startswith(b"-ERR [AUTH]")
        st = p.cmd("AUTH PLAIN " + b64(b"\0" + user.encode() + b"\0" + pw.encode()))
        assert ok(st), st
        st, body = p.retr(1)
        assert ok(st)
        assert ok(p.quit())
    assert s.wait_log(r"end=quit", 5)
    log = s.log()
    lines = [ln.split(": DEBUG: ", 1)[1] for ln in log.splitlines() if ": DEBUG: " in ln]
    for expected in (
        r"POP3 C: USER %s" % user,
        r"POP3 C: PASS <hidden, 12 bytes>",
        r"IMAP S: \* OK \[CAPABILITY IMAP4rev1 .*\] testbed ready\.",
        r'IMAP C: A\d+ LOGIN "%s" <hidden, 12 bytes>' % user,
        r"IMAP S: A\d+ NO \[AUTHENTICATIONFAILED\] Authentication failed\.",
        r"POP3 S: -ERR \[AUTH\] Authentication failed",
        r"POP3 C: AUTH PLAIN <hidden, \d+ bytes>",
        r'IMAP C: A\d+ SELECT "INBOX"',
        r"IMAP S: \* 2 EXISTS",
        r"POP3 S: \+OK Logged in, 2 messages",
        r"POP3 C: RETR 1",
        r"IMAP C: A\d+ UID FETCH 1 \(UID BODY\[\]\)",
        r"IMAP S: \* 1 FETCH \(UID 1 .*BODY\[\] \{\d+\}",
        r"POP3 S: <message data, \d+ bytes>",
        r"POP3 C: QUIT",
        r"IMAP C: A\d+ LOGOUT",
    ):
        assert any(re.match(expected, ln) for ln in lines), (expected, lines)
    assert pw not in log and "wrong-pw-123" not in log
    assert b64(b"\0" + user.encode() + b"\0" + pw.encode()) not in log
    # No line of the message body.
    for line in body.decode(errors="replace").splitlines():
        if line.startswith("Body line"):
            assert line not in log, line


# --------------------------------------------------------------------------
# failed logins, for operations and for fail2ban
# --------------------------------------------------------------------------

FAIL2BAN_FILTER = os.path.join(os.path.dirname(os.path.dirname(HERE)), "packaging", "fail2ban",
                               "pop3server.conf")


def fail2ban_ips(tmp_path, lines):
    """The addresses Debian's fail2ban-regex takes from ``lines`` with the
    shipped filter (beside Debian's common.conf, as in filter.d/)."""
    filters = tmp_path / "filter.d"
    filters.mkdir(exist_ok=True)
    shutil.copy("/etc/fail2ban/filter.d/common.conf", filters / "common.conf")
    shutil.copy(FAIL2BAN_FILTER, filters / "pop3server.conf")
    log = tmp_path / "mail.log"
    log.write_text("".join(line + "\n" for line in lines))
    r = subprocess.run(["fail2ban-regex", "-o", "ip", str(log), str(filters / "pop3server.conf")],
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout.decode().split()


def as_syslog(line):
    """A line of ours (``pop3server[pid]: LEVEL: message``, --log stderr) as
    rsyslog writes it to mail.log and `journalctl -o short` shows it: date,
    host, then ``pop3server[pid]: message``."""
    m = re.match(r"(pop3server\[\d+\]): [A-Z]+: (.*)$", line)
    assert m, line
    return "Dec  1 21:30:00 mailhost %s: %s" % m.groups()


def test_failed_logins_are_logged_for_fail2ban_and_its_regex_takes_the_real_address(
        dovecot, workdir, netns, tmp_path):
    """From a client at a non-loopback address: a wrong password (USER),
    a wrong AUTH PLAIN, and a user name made to look like another address.
    Each failure is one line with rip= first; the shipped filter, run by
    Debian's fail2ban-regex over the lines as syslog and the journal show
    them, yields the client's address for each failure and nothing else
    (no address from the fake user name, nothing for the good login)."""
    if not shutil.which("fail2ban-regex"):
        raise AssertionError("fail2ban-regex missing: scripts/test.sh installs fail2ban")
    s = StandaloneServer(workdir, dovecot.port, ["--allow-plaintext-auth", "true",
                                                  "--max-login-failures", "5",
                                                  "--login-failure-delay", "0"],
                         name="ns-f2b", listen_host=netns.server_addr)
    try:
        fake = "x> rip=6.6.6.6 method=USER user=<x"
        t = netns.run_client(s.port, [
            ["cmd", "USER alice"],
            ["cmd", "PASS wrong"],
            ["cmd", "AUTH PLAIN " + b64(b"\0alice\0wrong")],
            ["cmd", "USER " + fake],
            ["cmd", "PASS wrong"],
            ["cmd", "USER alice"],
            ["cmd", "PASS secret"],
            ["cmd", "QUIT"],
        ])
        assert [a[1][:4] for a in t[1:]] == ["+OK ", "-ERR", "-ERR", "+OK ", "-ERR", "+OK ",
                                             "+OK ", "+OK "], t
        assert s.wait_log(r"session end: user=alice client=%s:\d+ login=ok-after-3-failed "
                          % re.escape(netns.client_addr), 5), s.log()[-2000:]
        lines = [ln for ln in s.log().splitlines() if ln.startswith("pop3server[")]
        failed = [ln for ln in lines if "login failed:" in ln]
        rip = re.escape(netns.client_addr)
        assert len(failed) == 3, s.log()[-3000:]
        assert re.search(r"login failed: rip=%s method=USER user=<alice> reason=the backend said: "
                         r"\[AUTHENTICATIONFAILED\] " % rip, failed[0]), failed
        assert re.search(r"login failed: rip=%s method=PLAIN user=<alice> " % rip, failed[1])
        assert ("login failed: rip=%s method=USER user=<%s> " % (netns.client_addr, fake)
                in failed[2]), failed
        assert "wrong" not in s.log() and "secret" not in s.log()
        expected = [netns.client_addr] * 3
        assert fail2ban_ips(tmp_path, [as_syslog(ln) for ln in lines]) == expected
        # --log stderr lines as they are, too.
        assert fail2ban_ips(tmp_path, lines) == expected
    finally:
        s.stop()


def test_a_failed_session_names_its_user_and_how_the_login_went(server):
    with Pop3(server.port) as p:
        assert ok(p.cmd("USER alice"))
        assert err(p.cmd("PASS wrong"))
        assert ok(p.quit())
    assert server.wait_log(r"session end: user=alice client=127\.0\.0\.1:\d+ login=failed-1 "
                           r".*end=quit", 5), server.log()[-2000:]
    with Pop3(server.port) as p:
        assert ok(p.quit())
    assert server.wait_log(r"session end: user=- client=127\.0\.0\.1:\d+ login=none ", 5)
