"""Configuration options end to end against Dovecot: folders (a missing one,
a non-INBOX one), read_only, uidl_format."""

import imaplib
import re
import subprocess

from helpers import ImapView, Pop3, imap_login, ok, pop3_expected, server_bin
import testbed


def flags(view, uid):
    """The message's flags without \\Recent (which depends on the session)."""
    return sorted(f for f in view.flags(uid) if f != b"\\Recent")


def test_missing_folder_gives_sys_perm(make_server, fresh_user):
    user = fresh_user(2)
    s = make_server(["--folders", "Nope"])
    with Pop3(s.port) as p:
        assert ok(p.cmd("USER " + user))
        st = p.cmd("PASS secret")
        assert st.startswith(b"-ERR [SYS/PERM]"), st
    assert s.wait_log(r'(?i)cannot open folder "Nope"', 5), s.log()[-2000:]


def test_read_only_examines_and_changes_nothing(dovecot, make_server, fresh_user):
    user = fresh_user(3)
    with ImapView(dovecot.dc, user) as v:
        body2 = v.body(2)
        before = {u: flags(v, u) for u in v.uids()}
    assert all(b"\\Seen" not in fl for fl in before.values()), before
    s = make_server(["--read-only", "true"])
    with Pop3(s.port) as p:
        assert ok(p.login(user, "secret"))
        st, got = p.retr(2)
        assert ok(st) and got == pop3_expected(body2)
        st = p.cmd("DELE 1")
        assert st.startswith(b"-ERR [SYS/PERM]"), st
        assert p.stat()[0] == 3  # nothing marked
        assert ok(p.quit())
    with ImapView(dovecot.dc, user) as v:
        after = {u: flags(v, u) for u in v.uids()}
    assert after == before, (before, after)  # RETR did not set \Seen, QUIT removed nothing
    # the control: without read_only the same RETR sets \Seen
    s2 = make_server([])
    with Pop3(s2.port) as p:
        assert ok(p.login(user, "secret"))
        assert ok(p.retr(2)[0])
        assert ok(p.quit())
    with ImapView(dovecot.dc, user) as v:
        assert b"\\Seen" in v.flags(2)


def test_non_inbox_folder(dovecot, make_server, fresh_user):
    """--folders Archive: the maildrop is that folder; INBOX is untouched."""
    user = fresh_user(2)
    archived = [testbed.simple_message(user, 100 + k, body_lines=k, extra=" archived")
                for k in (1, 2, 3)]
    m = imap_login(dovecot.dc, user, "secret")
    try:
        typ, data = m.create("Archive")
        assert typ == "OK", data
        for msg in archived:
            typ, data = m.append("Archive", None, None, msg)
            assert typ == "OK", data
        typ, data = m.status("Archive", "(UIDVALIDITY MESSAGES)")
        assert typ == "OK", data
        uv = int(re.search(rb"UIDVALIDITY (\d+)", data[0]).group(1))
    finally:
        m.logout()
    s = make_server(["--folders", "Archive"])
    with Pop3(s.port) as p:
        assert ok(p.login(user, "secret"))
        assert p.stat() == (3, sum(len(a) for a in archived))
        assert p.uidl() == {n: b"%08x%08x" % (n, uv) for n in (1, 2, 3)}
        for n, msg in enumerate(archived, start=1):
            st, got = p.retr(n)
            assert ok(st) and got == pop3_expected(msg), n
        assert ok(p.cmd("DELE 2"))
        assert ok(p.quit())
    m = imap_login(dovecot.dc, user, "secret")
    try:
        typ, data = m.select("Archive", readonly=True)
        assert typ == "OK" and data[0] == b"2", data
        typ, data = m.uid("SEARCH", "ALL")
        assert data[0].split() == [b"1", b"3"], data
        typ, data = m.select("INBOX", readonly=True)
        assert typ == "OK" and data[0] == b"2", data  # INBOX untouched
    finally:
        try:
            m.logout()
        except imaplib.IMAP4.error:
            pass


def test_configuration_mistakes_are_one_line_naming_file_line_and_fix(dovecot, tmp_path):
    """What an admin sees for the usual mistakes in the file: one line each,
    with the file and line, the setting, and what would be right."""
    cases = [
        ('backend_hots = "127.0.0.1"\n', ":1: backend_hots: unknown setting; did you mean "
                                          "backend_host?"),
        ('# port\nbackend_port = "abc"\n', ":2: backend_port: expected a port number 1-65535, "
                                            'not string "abc"'),
        ("backend_host = 127.0.0.1\n", ':1: backend_host: 127.0.0.1 is not a TOML value: a '
                                       'string must be in quotes, e.g. backend_host = "127.0.0.1"'),
        ('folders = "INBOX"\n', ':1: folders: expected a list such as ["INBOX"], not string '
                                '"INBOX"'),
    ]
    for text, expected in cases:
        conf = tmp_path / "pop3server.toml"
        conf.write_text(text)
        r = subprocess.run([server_bin(), "--config", str(conf), "--check"], capture_output=True,
                           timeout=30)
        err_text = r.stderr.decode(errors="replace")
        assert r.returncode != 0, err_text
        assert err_text.strip().splitlines() == ["pop3server: %s%s" % (conf, expected)], err_text
    # A flag is named as the flag, not as the file.
    r = subprocess.run([server_bin(), "--config", "/dev/null", "--tls-cert", "/x.pem", "--check"],
                       capture_output=True, timeout=30)
    assert r.stderr.decode().strip() == ("pop3server: command line: --tls-cert: is set, so the "
                                         "key must be too: set tls_key (or --tls-key)"), r.stderr


def test_a_bare_boolean_flag_switches_the_setting_on(dovecot):
    base = [server_bin(), "--config", "/dev/null", "--backend-port", str(dovecot.port),
            "--backend-tls", "none", "--check"]
    for flags in (["--read-only"], ["--read-only", "true"], ["--backend-prefetch=false"]):
        r = subprocess.run(base + flags, capture_output=True, timeout=60)
        assert r.returncode == 0, (flags, r.stdout + r.stderr)
