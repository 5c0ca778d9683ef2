"""One summary line per session; passwords never in the log."""

from helpers import Pop3, ok


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


def test_password_never_in_log(dovecot, make_server, fresh_user):
    pw = "Xq9-Sup3rS3cret-pw"
    wrong = "Wr0ngPw-Zz8-unique"
    user = fresh_user(2, password=pw)
    s = make_server(["--max-login-failures", "5"])
    with Pop3(s.port) as p:
        assert p.login(user, wrong).startswith(b"-ERR [AUTH]")
        assert p.login("alice", wrong).startswith(b"-ERR [AUTH]")
        assert ok(p.login(user, pw))
        p.retr(1)
        assert ok(p.quit())
    assert s.wait_log(r"end=quit", 5)
    log = s.log()
    assert user in log
    for secret in (pw, wrong):
        assert secret not in log
    # also not in Dovecot's log via some debug path of ours (sanity)


def test_special_passwords_never_in_log(server):
    with Pop3(server.port) as p:
        assert ok(p.login("dave", 'p"a\\ss {5} w'))
        assert ok(p.quit())
    with Pop3(server.port) as p:
        assert ok(p.login("utf8user", "pässwörd".encode("utf-8")))
        assert ok(p.quit())
    assert server.wait_log(r"user=utf8user\b.*end=quit", 5)
    raw = open(server.log_path, "rb").read()
    for pw in ('p"a\\ss {5} w'.encode(), "pässwörd".encode("utf-8"), b"ss {5} w"):
        assert pw not in raw
