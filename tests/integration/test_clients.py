"""Real POP3 clients: Python poplib, curl, fetchmail."""

import os
import poplib
import shutil
import subprocess

import pytest

from helpers import ImapView, Pop3, ok, pop3_expected


def test_poplib_session(dovecot, server, fresh_user):
    user = fresh_user(4)
    with ImapView(dovecot.dc, user) as v:
        bodies = {u: v.body(u) for u in v.uids()}
        sizes = dict(v.uid_sizes())
        uv = v.uidvalidity()
    c = poplib.POP3("127.0.0.1", server.port, timeout=15)
    try:
        assert c.getwelcome().startswith(b"+OK")
        c.user(user)
        c.pass_("secret")
        assert c.stat() == (4, sum(sizes.values()))
        resp, lines, _ = c.list()
        assert [ln.split() for ln in lines] == [[b"%d" % u, b"%d" % sizes[u]] for u in (1, 2, 3, 4)]
        resp, lines, _ = c.uidl()
        assert lines[0] == b"1 %08x%08x" % (1, uv)
        resp, lines, octets = c.retr(2)
        assert b"\r\n".join(lines) + b"\r\n" == pop3_expected(bodies[2])
        resp, lines, _ = c.top(3, 1)
        assert lines[-1].startswith(b"Body line 1")
        c.dele(1)
        c.quit()
    finally:
        c.close()
    with ImapView(dovecot.dc, user) as v:
        assert v.uids() == [2, 3, 4]


def test_poplib_handles_long_lines_and_8bit(dovecot, server, monkeypatch):
    monkeypatch.setattr(poplib, "_MAXLINE", 100_000)
    n = dovecot.carol_number("long_line")
    m = dovecot.carol_number("latin1")
    with ImapView(dovecot.dc, "carol") as v:
        b1, b2 = v.body(n), v.body(m)
    c = poplib.POP3("127.0.0.1", server.port, timeout=15)
    try:
        c.user("carol")
        c.pass_("secret")
        _, lines, _ = c.retr(n)
        assert b"\r\n".join(lines) + b"\r\n" == pop3_expected(b1)
        _, lines, _ = c.retr(m)
        assert b"\r\n".join(lines) + b"\r\n" == pop3_expected(b2)
        c.quit()
    finally:
        c.close()


def curl(*args, timeout=60):
    if not shutil.which("curl"):
        pytest.skip("curl not installed")
    return subprocess.run(["curl", "-s", "-S", "--max-time", "30"] + list(args),
                          capture_output=True, timeout=timeout)


def test_curl_retr_is_byte_exact(dovecot, server):
    with ImapView(dovecot.dc, "alice") as v:
        body = v.body(1)
    r = curl("pop3://alice:secret@127.0.0.1:%d/1" % server.port)
    assert r.returncode == 0, r.stderr
    assert r.stdout == pop3_expected(body)


def test_curl_retr_special_messages(dovecot, server):
    for name in ("dots", "latin1", "utf8", "bare_lf", "long_line"):
        n = dovecot.carol_number(name)
        with ImapView(dovecot.dc, "carol") as v:
            body = v.body(n)
        r = curl("pop3://carol:secret@127.0.0.1:%d/%d" % (server.port, n))
        assert r.returncode == 0, (name, r.stderr)
        assert r.stdout == pop3_expected(body), name


def test_curl_list_and_wrong_password(dovecot, server):
    r = curl("pop3://alice:secret@127.0.0.1:%d/" % server.port)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.strip().split(b"\r\n")) == 5
    r = curl("pop3://alice:wrong@127.0.0.1:%d/1" % server.port)
    assert r.returncode != 0


def test_fetchmail_downloads_all_messages(dovecot, server, fresh_user, tmp_path):
    if not shutil.which("fetchmail"):
        pytest.skip("fetchmail not installed")
    user = fresh_user(3)
    with ImapView(dovecot.dc, user) as v:
        bodies = [v.body(u) for u in v.uids()]
    out = tmp_path / "out"
    out.mkdir()
    rc = tmp_path / "fetchmailrc"
    rc.write_text(
        "set no syslog\n"
        "poll 127.0.0.1 with proto POP3 port %d timeout 20:\n"
        '  user "%s" there with password "secret" is root here\n'
        "  keep fetchall no sslcertck\n"
        "  sslproto ''\n" % (server.port, user))
    os.chmod(rc, 0o600)
    mda = "sh -c 'i=$(ls %s | wc -l); cat > %s/msg$i'" % (out, out)
    env = dict(os.environ, FETCHMAILHOME=str(tmp_path), HOME=str(tmp_path))
    r = subprocess.run(["fetchmail", "-f", str(rc), "--mda", mda, "--nodetach",
                        "-v", "--pidfile", str(tmp_path / "pid")],
                       capture_output=True, timeout=90, env=env, stdin=subprocess.DEVNULL)
    log = r.stdout.decode(errors="replace") + r.stderr.decode(errors="replace")
    assert r.returncode == 0, log[-3000:]
    got = sorted(os.listdir(out))
    assert len(got) == 3, log[-3000:]
    for i, body in enumerate(bodies):
        data = (out / ("msg%d" % i)).read_bytes()
        subject = [ln for ln in body.split(b"\r\n") if ln.startswith(b"Subject:")][0]
        assert subject in data.replace(b"\r\n", b"\n").split(b"\n"), data[:500]
        last = [ln for ln in body.split(b"\r\n") if ln][-1]
        assert last in data
    # keep: nothing deleted
    with ImapView(dovecot.dc, user) as v:
        assert v.uids() == [1, 2, 3]


def test_raw_client_rejects_nothing_valid(server):
    # sanity for the helper: a plain session via the raw client
    with Pop3(server.port) as p:
        assert ok(p.login("alice", "secret"))
        assert ok(p.quit())
