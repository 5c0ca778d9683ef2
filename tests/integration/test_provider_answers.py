"""What providers say behind IMAP that Dovecot does not, through a relay in
front of the real Dovecot that answers one command as the provider would
(helpers.RefusingRelay).

Microsoft 365 lets an app log in to a mailbox it has no permission on, then
answers SELECT with ``BAD User is authenticated but not connected.``: the
device must be told to try later (-ERR [SYS/TEMP], not a wrong password nor
a missing folder), and the log and ``--check`` must say which permission is
missing and how to grant it.

Exchange also reports estimated sizes; the true ones, learned from the
bodies delivered, are exact in the sessions that follow."""

import re
import subprocess

from helpers import EstimatingRelay, ImapView, Pop3, ok, pop3_expected, server_bin

NOT_CONNECTED = b"BAD User is authenticated but not connected."


def not_connected(command: bytes):
    if re.match(rb"^(SELECT|EXAMINE) ", command, re.I):
        return NOT_CONNECTED
    return None


def test_a_mailbox_without_permission_is_sys_temp_and_the_log_says_what_to_grant(
        fresh_user, make_server, refusing_relay):
    user = fresh_user(n=2)
    r = refusing_relay(not_connected)
    s = make_server([], backend_port=r.port)
    with Pop3(s.port, timeout=30) as p:
        st = p.login(user, "secret")
    assert st.startswith(b"-ERR [SYS/TEMP]"), st
    assert b"not open to this login" in st, st
    assert [c for c in r.refused if c.upper().startswith(b"SELECT")], r.refused
    assert s.wait_log(r"User is authenticated but not connected.*Add-MailboxPermission", 5), \
        s.log()[-2000:]
    # Not a wrong password: no penalty, no [AUTH].
    assert "login failed" not in s.log(), s.log()[-2000:]


def test_check_names_the_missing_mailbox_permission(fresh_user, refusing_relay, tmp_path):
    user = fresh_user(n=1)
    r = refusing_relay(not_connected)
    pw = tmp_path / "pw"
    pw.write_text("secret\n")
    out = subprocess.run([server_bin(), "--config", "/dev/null", "--backend-port", str(r.port),
                          "--backend-tls", "none", "--check", "--user", user,
                          "--password-file", str(pw)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "login: ok" in out.stdout, out.stdout
    assert re.search(r"folder INBOX cannot be opened: User is authenticated but not connected"
                     r".*Add-MailboxPermission", out.stderr), out.stderr


def test_estimated_sizes_are_exact_from_the_session_after_the_first_download(
        dovecot, fresh_user, make_server):
    """Exchange reports RFC822.SIZE as the stored size when it does not know
    the RFC 5322 size. The first session can only say what it was told; the
    bodies it delivers show the true sizes, which the snapshot cache keeps,
    so the next session's STAT, LIST and RETR say the truth."""
    user = fresh_user(n=3)
    with ImapView(dovecot.dc, user) as v:
        bodies = [v.body(u) for u in v.uids()]
    true_sizes = {n: len(b) for n, b in enumerate(bodies, 1)}
    relay = EstimatingRelay(dovecot.port, factor=3)
    try:
        s = make_server([], backend_port=relay.port)
        with Pop3(s.port, timeout=30) as p:
            assert ok(p.login(user, "secret"))
            assert p.list() == {n: 3 * size for n, size in true_sizes.items()}
            for n, body in enumerate(bodies, 1):
                st, got = p.retr(n)
                assert st == b"+OK %d octets" % (3 * true_sizes[n]), st
                assert got == pop3_expected(body), n
            assert p.quit().startswith(b"+OK")
        with Pop3(s.port, timeout=30) as p:
            assert ok(p.login(user, "secret"))
            assert p.list() == true_sizes, s.log()[-2000:]
            assert p.stat() == (3, sum(true_sizes.values()))
            st, got = p.retr(2)
            assert st == b"+OK %d octets" % true_sizes[2], st
            assert got == pop3_expected(bodies[1])
            assert p.quit().startswith(b"+OK")
    finally:
        relay.stop()
