"""A session never runs as root.  Started as root (the inetd helper, the
standalone listener), every session process reads the configuration and the
TLS key first, then becomes ``user`` (default pop3server): its uid and gid
are that account's, it has no supplementary groups, every capability set in
/proc/<pid>/status is empty, and no_new_privs is set, while it is serving
the client.  An account that does not exist, or root itself, is refused with
one clear line.  These tests need root (CI runs as root)."""

import os
import pwd
import shutil
import ssl
import subprocess

import pytest

from helpers import Pop3, StandaloneServer, err, ok, server_bin, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (CI runs as root)")

SESSION_USER = "pop3server"
CAP_SETS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")


def account():
    try:
        return pwd.getpwnam(SESSION_USER)
    except KeyError:
        pytest.fail("user %s does not exist: scripts/test.sh creates it when run as root"
                    % SESSION_USER)


def status(pid: int) -> dict:
    fields = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def assert_unprivileged(pid: int) -> None:
    acct = account()
    st = status(pid)
    assert st["Uid"].split() == [str(acct.pw_uid)] * 4, st["Uid"]
    assert st["Gid"].split() == [str(acct.pw_gid)] * 4, st["Gid"]
    assert st["Groups"] == "", st["Groups"]
    for cap in CAP_SETS:
        assert int(st[cap], 16) == 0, "%s = %s" % (cap, st[cap])
    assert st["NoNewPrivs"] == "1"


def children(pid: int) -> list:
    """Children of every thread (the listener spawns from its accept threads)."""
    kids = []
    for tid in os.listdir("/proc/%d/task" % pid):
        with open("/proc/%d/task/%s/children" % (pid, tid)) as f:
            kids += [int(p) for p in f.read().split()]
    return kids


def log_of(server) -> str:
    with open(server.log_path, errors="replace") as f:
        return f.read()


def write_config(tmp_path, text: str) -> str:
    path = tmp_path / "privileges.toml"
    path.write_text(text)
    return str(path)


def test_inetd_session_as_root_serves_as_pop3server_without_capabilities(make_server):
    s = make_server(mode="inetd")
    with Pop3(s.port) as p:
        assert ok(p.login("alice", "secret"))
        child = s.child_for(p)
        assert_unprivileged(child.pid)
        assert ok(p.cmd("STAT"))
        assert ok(p.cmd("QUIT"))
    st = os.stat(s.lock_dir)
    assert (st.st_uid, st.st_gid) == (account().pw_uid, account().pw_gid)


def test_listener_children_are_unprivileged_and_the_listener_names_their_user(make_server):
    s = make_server()
    assert s.wait_log(r"sessions run as user %s group \S+" % SESSION_USER)
    with Pop3(s.port) as p:
        assert ok(p.login("alice", "secret"))
        # Ours, and perhaps the start-up probe's session, still ending.
        kids = children(s.proc.pid)
        assert kids
        for kid in kids:
            try:
                assert_unprivileged(kid)
            except FileNotFoundError:
                pass  # the probe's session has ended meanwhile
        assert ok(p.cmd("QUIT"))
    st = status(s.proc.pid)
    assert st["Uid"].split()[1] == "0", "the listener stays as started"


def test_tls_works_with_a_key_only_root_can_read(make_server, dovecot, tmp_path):
    key = tmp_path / "root-only.key"
    shutil.copy(dovecot.tls["key"], key)
    os.chmod(key, 0o600)
    assert os.stat(key).st_uid == 0
    s = make_server(["--tls-cert", dovecot.tls["cert"], "--tls-key", str(key)], mode="inetd")
    with Pop3(s.port) as p:
        assert ok(p.cmd("STLS"))
        p.starttls(ssl.create_default_context(cafile=dovecot.tls["ca"]))
        assert ok(p.login("alice", "secret"))
        assert_unprivileged(s.child_for(p).pid)
        assert ok(p.cmd("QUIT"))
    # ...and the session user really cannot read it: the key was read as root.
    r = subprocess.run(["setpriv", "--reuid", SESSION_USER, "--regid", SESSION_USER,
                        "--clear-groups", "cat", str(key)], capture_output=True, timeout=10)
    assert r.returncode != 0 and b"Permission denied" in r.stderr, r


def test_unknown_user_refuses_the_session_and_says_what_to_do(make_server, tmp_path):
    conf = write_config(tmp_path, 'user = "p3-no-such-user"\n')
    s = make_server(["--config", conf], mode="inetd")
    with Pop3(s.port) as p:
        line = p.greeting
        assert err(line) and b"[SYS/TEMP]" in line, line
    assert wait_for(lambda: 'user = "p3-no-such-user": no such user' in log_of(s), 5)
    assert "useradd" in log_of(s)
    assert "session end" not in log_of(s)


def test_listener_with_unknown_user_does_not_start(tmp_path, dovecot):
    conf = write_config(tmp_path, 'user = "p3-no-such-user"\n')
    r = subprocess.run([server_bin(), "--config", conf, "--backend-host", "127.0.0.1",
                        "--backend-port", str(dovecot.port), "--listen", "127.0.0.1:0",
                        "--lock-dir", str(tmp_path / "locks"), "--log", "stderr"],
                       capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert r.returncode == 2, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "no such user" in lines[0], r.stderr


def test_root_as_session_user_is_refused(tmp_path, dovecot):
    conf = write_config(tmp_path, 'user = "root"\n')
    r = subprocess.run([server_bin(), "--config", conf, "--backend-host", "127.0.0.1",
                        "--backend-port", str(dovecot.port), "--listen", "127.0.0.1:0",
                        "--lock-dir", str(tmp_path / "locks"), "--log", "stderr"],
                       capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert r.returncode == 2 and "never run as root" in r.stderr, r


def test_a_lock_directory_left_by_root_is_taken_over(make_server, fresh_user):
    s = make_server(mode="inetd")
    # What a version that ran sessions as root left behind.
    os.chown(s.lock_dir, 0, 0)
    os.chmod(s.lock_dir, 0o755)
    leftover = os.path.join(s.lock_dir, "leftover")
    with open(leftover, "w"):
        pass
    os.chmod(leftover, 0o600)
    user = fresh_user(2)
    with Pop3(s.port) as p:
        assert ok(p.login(user, "secret"))
        assert ok(p.cmd("DELE 1"))
        assert ok(p.cmd("QUIT"))
    acct = account()
    for path in (s.lock_dir, leftover):
        st = os.stat(path)
        assert (st.st_uid, st.st_gid) == (acct.pw_uid, acct.pw_gid), path
    assert wait_for(lambda: "end=quit" in log_of(s), 5)
    assert "deleted=1/" in log_of(s)


def test_check_keeps_the_callers_identity(tmp_path, dovecot):
    """--check as root reads a root-only password file: it never switched."""
    pw = tmp_path / "pw"
    pw.write_text("secret\n")
    os.chmod(pw, 0o600)
    r = subprocess.run([server_bin(), "--config", "/dev/null", "--backend-host", "127.0.0.1",
                        "--backend-port", str(dovecot.port), "--backend-tls", "none",
                        "--check", "--user", "alice", "--password-file", str(pw)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
