"""The ways pop3server is run in production, for real: a full POP3 session
through openbsd-inetd, through systemd-socket-activate in its three modes
(--inetd, Accept=yes on fd 3, Accept=no listening socket on fd 3), the
listener's sd_notify READY=1, and the shipped systemd units (verify,
security exposure), configuration file and man page.

Needs (Debian): systemd (systemd-analyze, systemd-socket-activate),
openbsd-inetd, openssl, groff; tests whose tool is missing are skipped with
the reason (POP3SERVER_REQUIRE_ALL=1 turns such skips into a failed run).  Select with ``-m service``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from typing import List, Optional

import pytest

from helpers import (BUILD_HINT, REPO, ImapView, Pop3, dovecot_uidl, ok, pop3_expected,
                     server_bin, wait_for)
from testbed import free_port

pytestmark = pytest.mark.service

SYSTEMD_DIR = os.path.join(REPO, "systemd")
PACKAGING_DIR = os.path.join(REPO, "packaging")
STATS_UNIT = "pop3server-stats.service"
SERVICE_UNITS = ["pop3server@.service", "pop3s@.service", "pop3server-listener.service",
                 STATS_UNIT]
SOCKET_UNITS = ["pop3server.socket", "pop3s.socket", "pop3server-listener.socket"]
MAX_EXPOSURE = 2.0

# Long options of pop3server that are not configuration file keys.
NOT_KEYS = {"config", "inetd", "check", "user", "password-file", "help", "version",
            "backend_address", "hash-password", "oauth-consent", "oauth-status", "route",
            "stats"}


def need(tool: str) -> str:
    path = shutil.which(tool) or (os.path.join("/usr/sbin", tool)
                                  if os.access(os.path.join("/usr/sbin", tool), os.X_OK) else None)
    if not path:
        pytest.skip("%s not installed (apt-get install %s)"
                    % (tool, {"inetd": "openbsd-inetd", "openssl": "openssl", "groff": "groff"}.get(tool, "systemd")))
    return path


def require_binary() -> str:
    b = server_bin()
    if not os.access(b, os.X_OK):
        pytest.fail("server binary %s missing: %s (or set POP3SERVER_BIN)" % (b, BUILD_HINT))
    return b


# --------------------------------------------------------------------------
# a full session, compared with what IMAP says
# --------------------------------------------------------------------------

def full_session(port: int, dc, user: str, password: str = "secret",
                 timeout: float = 20.0) -> None:
    """USER/PASS, STAT, LIST, UIDL, RETR of every message, DELE 1, QUIT, all
    checked against the mailbox as IMAP shows it; then message 1 must be
    gone on the backend and the others untouched."""
    with ImapView(dc, user) as v:
        uid_sizes = v.uid_sizes()
        uidvalidity = v.uidvalidity()
        bodies = {uid: v.body(uid) for uid, _ in uid_sizes}
    assert uid_sizes, "test user %s has no mail" % user
    with Pop3(port, timeout=timeout) as p:
        assert ok(p.greeting), p.greeting
        st = p.login(user, password)
        assert ok(st), st
        count, total = p.stat()
        assert count == len(uid_sizes)
        assert total == sum(s for _, s in uid_sizes)
        assert p.list() == {n: s for n, (_, s) in enumerate(uid_sizes, 1)}
        assert p.uidl() == {n: dovecot_uidl(uid, uidvalidity)
                            for n, (uid, _) in enumerate(uid_sizes, 1)}
        for n, (uid, _) in enumerate(uid_sizes, 1):
            st, body = p.retr(n)
            assert ok(st), st
            assert body == pop3_expected(bodies[uid]), "RETR %d differs from IMAP BODY[]" % n
        assert ok(p.cmd("DELE 1"))
        assert ok(p.quit())
    with ImapView(dc, user) as v:
        assert v.uids() == [uid for uid, _ in uid_sizes[1:]]


def wait_port(port: int, proc: Optional[subprocess.Popen] = None, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            time.sleep(0.05)
    return False


class Daemon:
    """A foreground process in its own process group, output to a file;
    stop() ends the whole group (children included)."""

    def __init__(self, cmd: List[str], log_path: str, env: Optional[dict] = None):
        self.cmd = cmd
        self.log_path = log_path
        self.logf = open(log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.logf,
                                     stderr=self.logf, start_new_session=True, env=env)

    def log(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def wait_log(self, pattern: str, timeout: float = 5.0) -> bool:
        rx = re.compile(pattern, re.M)
        return wait_for(lambda: rx.search(self.log()) is not None, timeout)

    def stop(self) -> None:
        for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                self.proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        # per-connection children may outlive the group leader briefly
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.logf.close()


@pytest.fixture
def rundir(workdir):
    d = tempfile.mkdtemp(prefix="svc-", dir=workdir)
    os.chmod(d, 0o755)
    locks = os.path.join(d, "locks")
    os.makedirs(locks)
    return d


def write_config(path: str, backend_port: int, lock_dir: str, extra: str = "") -> str:
    with open(path, "w") as f:
        f.write('backend_host = "127.0.0.1"\nbackend_port = %d\nbackend_tls = "none"\n'
                'lock_dir = "%s"\ncache_dir = "%s-cache"\nlogin_failure_delay = 0\n%s'
                % (backend_port, lock_dir, lock_dir, extra))
    os.chmod(path, 0o644)
    return path


def server_args(dovecot, rundir: str, log: str) -> List[str]:
    conf = write_config(os.path.join(rundir, "pop3server.toml"), dovecot.port,
                        os.path.join(rundir, "locks"))
    return ["--config", conf, "--log", log]


# What systemd-socket-activate itself writes to the shared stderr.
SSA_LINE = re.compile(r"^(Listening on |Communication attempt |Execing |Accepted connection |"
                      r"Connection from |Spawned |Child \d+ died )")


def journald_lines(text: str) -> List[str]:
    return [ln for ln in text.splitlines() if re.match(r"^<[0-7]>", ln)]


# --------------------------------------------------------------------------
# (a) a real openbsd-inetd
# --------------------------------------------------------------------------

def test_openbsd_inetd_full_session(dovecot, fresh_user, rundir):
    inetd = need("inetd")
    binary = require_binary()
    port = free_port()
    conf = write_config(os.path.join(rundir, "pop3server.toml"), dovecot.port,
                        os.path.join(rundir, "locks"))
    inetd_conf = os.path.join(rundir, "inetd.conf")
    # stderr is the client's socket under inetd: --log syslog (which
    # discards when /dev/log is missing) -- never stderr.
    with open(inetd_conf, "w") as f:
        f.write("127.0.0.1:%d stream tcp nowait root %s pop3server --config %s --log syslog\n"
                % (port, binary, conf))
    d = Daemon([inetd, "-d", "-i", inetd_conf], os.path.join(rundir, "inetd.log"))
    try:
        assert wait_port(port, d.proc), "inetd did not listen:\n" + d.log()
        full_session(port, dovecot.dc, fresh_user(3))
        # and a second connection: one process per connection
        full_session(port, dovecot.dc, fresh_user(2))
        assert d.log().count("execv %s" % binary) >= 2, d.log()
    finally:
        d.stop()


# --------------------------------------------------------------------------
# (b) (c) (d) systemd-socket-activate
# --------------------------------------------------------------------------

def test_socket_activate_inetd_style(dovecot, fresh_user, rundir):
    ssa = need("systemd-socket-activate")
    binary = require_binary()
    port = free_port()
    d = Daemon([ssa, "--inetd", "-l", "127.0.0.1:%d" % port, "-a", binary]
               + server_args(dovecot, rundir, "stderr"), os.path.join(rundir, "ssa.log"))
    try:
        assert wait_port(port, d.proc), d.log()
        user = fresh_user(3)
        full_session(port, dovecot.dc, user)
        assert d.wait_log(r"session end: user=%s .*end=quit" % user), d.log()
    finally:
        d.stop()


def test_socket_activate_accept_yes_fd3_journald(dovecot, fresh_user, rundir):
    """What pop3server@.service gets: the connection as fd 3 with LISTEN_FDS=1
    and LISTEN_PID, stdin /dev/null, and (under systemd) JOURNAL_STREAM naming
    the device and inode of stderr: --log auto must then write journald <N>
    priority prefixes to stderr."""
    ssa = need("systemd-socket-activate")
    binary = require_binary()
    port = free_port()
    log_path = os.path.join(rundir, "ssa-journal.log")
    open(log_path, "ab").close()
    st = os.stat(log_path)
    stream = "JOURNAL_STREAM=%d:%d" % (st.st_dev, st.st_ino)
    d = Daemon([ssa, "-l", "127.0.0.1:%d" % port, "-a", "-E", stream, binary]
               + server_args(dovecot, rundir, "auto"), log_path)
    try:
        assert wait_port(port, d.proc), d.log()
        user = fresh_user(4)
        full_session(port, dovecot.dc, user)
        assert d.wait_log(r"^<6>.*session end: user=%s .*end=quit" % user), d.log()
        assert journald_lines(d.log()), d.log()
    finally:
        d.stop()


def test_inherited_journal_stream_that_is_not_stderr_is_ignored(dovecot, fresh_user, rundir):
    """inetd run by systemd passes JOURNAL_STREAM on to its children, whose
    stderr is the client's socket: --log auto must not believe it (and so
    must not write log lines where the client would read them)."""
    ssa = need("systemd-socket-activate")
    binary = require_binary()
    port = free_port()
    d = Daemon([ssa, "-l", "127.0.0.1:%d" % port, "-a", "--inetd", "-E", "JOURNAL_STREAM=0:0", binary]
               + server_args(dovecot, rundir, "auto"), os.path.join(rundir, "ssa-inherited.log"))
    try:
        assert wait_port(port, d.proc), d.log()
        user = fresh_user(2)
        # full_session reads every reply strictly: a stray log line on the
        # socket (stderr) would break it.
        full_session(port, dovecot.dc, user)
        assert not re.search(r"^<\d>", d.log(), re.M), d.log()
    finally:
        d.stop()


def test_socket_activate_accept_yes_explicit_journald(dovecot, fresh_user, rundir):
    ssa = need("systemd-socket-activate")
    binary = require_binary()
    port = free_port()
    d = Daemon([ssa, "-l", "127.0.0.1:%d" % port, "-a", binary]
               + server_args(dovecot, rundir, "journald"), os.path.join(rundir, "ssa.log"))
    try:
        assert wait_port(port, d.proc), d.log()
        user = fresh_user(2)
        full_session(port, dovecot.dc, user)
        assert d.wait_log(r"^<6>.*session end: user=%s " % user), d.log()
        # every line our binary wrote carries a priority prefix
        ours = [ln for ln in d.log().splitlines() if ln and not SSA_LINE.match(ln)]
        bad = [ln for ln in ours if not re.match(r"^<[0-7]>", ln)]
        assert not bad, "lines without <N> prefix: %r" % bad[:5]
    finally:
        d.stop()


def test_socket_activate_accept_no_listener(dovecot, fresh_user, rundir):
    """What pop3server-listener.service gets: the listening socket as fd 3
    (Accept=no): pop3server runs its listener on it, one child per
    connection, and tells NOTIFY_SOCKET READY=1."""
    ssa = need("systemd-socket-activate")
    binary = require_binary()
    port = free_port()
    notify_path = os.path.join(rundir, "notify.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(10)
    d = Daemon([ssa, "-l", "127.0.0.1:%d" % port, "-E", "NOTIFY_SOCKET=" + notify_path, binary]
               + server_args(dovecot, rundir, "stderr"), os.path.join(rundir, "ssa.log"))
    try:
        # systemd-socket-activate execs pop3server on the first connection;
        # that connection waits in the backlog and is served by the listener.
        assert wait_port(port, d.proc), d.log()
        u1, u2, u3 = fresh_user(3), fresh_user(2), fresh_user(1)
        full_session(port, dovecot.dc, u1)
        msg = notify.recv(4096)
        assert b"READY=1" in msg.split(b"\n"), msg
        # concurrent sessions, each in its own child
        with Pop3(port) as a, Pop3(port) as b:
            assert ok(a.login(u2, "secret"))
            assert ok(b.login(u3, "secret"))
            assert a.stat()[0] == 2 and b.stat()[0] == 1
            assert ok(a.quit()) and ok(b.quit())
        full_session(port, dovecot.dc, u2)
        assert d.proc.poll() is None, "listener exited:\n" + d.log()
        assert d.wait_log(r"session end: user=%s " % u2), d.log()
    finally:
        d.stop()
        notify.close()


def test_socket_activate_accept_yes_implicit_tls(dovecot, fresh_user, rundir):
    """The pop3s@.service command line (--implicit-tls true) on fd 3."""
    ssa = need("systemd-socket-activate")
    openssl = need("openssl")
    binary = require_binary()
    cert, key = os.path.join(rundir, "cert.pem"), os.path.join(rundir, "key.pem")
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", key, "-out", cert], check=True, capture_output=True, timeout=60)
    port = free_port()
    d = Daemon([ssa, "-l", "127.0.0.1:%d" % port, "-a", binary]
               + server_args(dovecot, rundir, "stderr")
               + ["--tls-cert", cert, "--tls-key", key] + implicit_tls_args(),
               os.path.join(rundir, "ssa.log"))
    try:
        assert wait_port(port, d.proc), d.log()
        user = fresh_user(2)
        ctx = ssl.create_default_context(cafile=cert)
        with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                f = s.makefile("rwb")
                assert f.readline().startswith(b"+OK")
                for line, expect in ((b"USER " + user.encode(), b"+OK"),
                                     (b"PASS secret", b"+OK"), (b"STAT", b"+OK 2 "),
                                     (b"QUIT", b"+OK")):
                    f.write(line + b"\r\n")
                    f.flush()
                    got = f.readline()
                    assert got.startswith(expect), (line, got)
    finally:
        d.stop()


def implicit_tls_args() -> List[str]:
    """The arguments of ExecStart= in pop3s@.service, after the binary."""
    cmd = unit_value(os.path.join(SYSTEMD_DIR, "pop3s@.service"), "ExecStart")
    parts = cmd.split()
    assert parts[0] == "/usr/sbin/pop3server"
    assert "--implicit-tls" in parts
    return parts[1:]


# --------------------------------------------------------------------------
# the unit files
# --------------------------------------------------------------------------

def unit_values(path: str, key: str) -> List[str]:
    out = []
    with open(path) as f:
        for ln in f:
            ln = ln.strip()
            if ln.startswith(key + "="):
                out.append(ln[len(key) + 1:])
    return out


def unit_value(path: str, key: str) -> str:
    vals = unit_values(path, key)
    assert vals, "%s: no %s=" % (path, key)
    return vals[-1]


def test_unit_contract():
    u = lambda name: os.path.join(SYSTEMD_DIR, name)  # noqa: E731
    assert unit_value(u("pop3server.socket"), "ListenStream") == "110"
    assert unit_value(u("pop3server.socket"), "Accept") == "yes"
    assert unit_value(u("pop3s.socket"), "ListenStream") == "995"
    assert unit_value(u("pop3s.socket"), "Accept") == "yes"
    assert unit_value(u("pop3server-listener.socket"), "Accept") == "no"
    assert unit_value(u("pop3server@.service"), "ExecStart") == "/usr/sbin/pop3server"
    assert unit_value(u("pop3server-listener.service"), "Type") == "notify"
    for name in SERVICE_UNITS:
        p = u(name)
        assert unit_value(p, "User") == "pop3server"
        assert unit_value(p, "RuntimeDirectory") == "pop3server"
        assert unit_value(p, "ProtectSystem") == "strict"
        assert unit_value(p, "CapabilityBoundingSet") == ""
        assert unit_value(p, "NoNewPrivileges") == "yes"
        assert unit_value(p, "MemoryDenyWriteExecute") == "yes"
        assert set(unit_value(p, "RestrictAddressFamilies").split()) == \
            {"AF_INET", "AF_INET6", "AF_UNIX"}
        assert "@system-service" in unit_values(p, "SystemCallFilter")
        assert not unit_values(p, "IPAddressDeny"), "the backend must stay reachable"
        assert not unit_values(p, "PrivateNetwork")
        # Stopping one unit must not take the lock files of live sessions.
        assert unit_value(p, "RuntimeDirectoryPreserve") == "yes"


def test_stats_unit_contract():
    """The aggregator's unit: readiness once both sockets are bound, a
    restart when it fails, sockets of its own kinds only; the packages
    enable it nowhere (test_packages.py, test_systemd_package.py)."""
    p = os.path.join(SYSTEMD_DIR, STATS_UNIT)
    assert unit_value(p, "Type") == "notify"
    assert unit_value(p, "ExecStart") == "/usr/sbin/pop3server --stats"
    assert unit_value(p, "Restart") == "on-failure"
    assert unit_value(p, "User") == "pop3server"
    assert unit_value(p, "WantedBy") == "multi-user.target"
    # It binds metrics_listen, a port the configuration chooses.
    assert not unit_values(p, "SocketBindDeny")


def systemd_root(tmp: str, with_binary: bool = True) -> str:
    """A file system root for `systemd-analyze verify --root`: the system's
    own units (sysinit.target ...), ours, and the binary at /usr/sbin."""
    root = os.path.join(tmp, "root")
    unitdir = os.path.join(root, "usr/lib/systemd/system")
    shutil.copytree("/usr/lib/systemd/system", unitdir, symlinks=True)
    for name in os.listdir(SYSTEMD_DIR):
        shutil.copy(os.path.join(SYSTEMD_DIR, name), unitdir)
    if with_binary:
        os.makedirs(os.path.join(root, "usr/sbin"))
        shutil.copy(require_binary(), os.path.join(root, "usr/sbin/pop3server"))
    return root


def test_systemd_analyze_verify_all_units(tmp_path):
    sa = need("systemd-analyze")
    if not os.path.isdir("/usr/lib/systemd/system"):
        pytest.skip("no /usr/lib/systemd/system")
    units = sorted(os.listdir(SYSTEMD_DIR))
    assert set(units) == set(SERVICE_UNITS) | set(SOCKET_UNITS)
    root = systemd_root(str(tmp_path))
    r = subprocess.run([sa, "verify", "--man=no", "--root=" + root] + units,
                       capture_output=True, text=True, timeout=120)
    print(r.stdout + r.stderr)
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr
    # control: verify does look at ExecStart=
    shutil.rmtree(root)
    root = systemd_root(str(tmp_path), with_binary=False)
    r = subprocess.run([sa, "verify", "--man=no", "--root=" + root, "pop3server@.service"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "/usr/sbin/pop3server" in r.stderr, r.stderr


@pytest.mark.parametrize("unit", SERVICE_UNITS)
def test_systemd_analyze_security_exposure(unit):
    sa = need("systemd-analyze")
    r = subprocess.run([sa, "security", "--offline=yes", "--no-pager",
                        os.path.join(SYSTEMD_DIR, unit)],
                       capture_output=True, text=True, timeout=120)
    m = re.search(r"Overall exposure level for (\S+): (\d+\.\d+)", r.stdout)
    assert m, r.stdout + r.stderr
    score = float(m.group(2))
    print("systemd-analyze security %s: %.1f" % (m.group(1), score))
    bad = [ln for ln in r.stdout.splitlines() if ln.startswith("✗")]
    print("\n".join(bad))
    assert score <= MAX_EXPOSURE, r.stdout


# --------------------------------------------------------------------------
# configuration file, man page, inetd example
# --------------------------------------------------------------------------

# Keys without an option of the same name (`--user` is the user of --check).
FILE_ONLY_KEYS = {"user", "group"}


def help_keys() -> set:
    out = subprocess.run([require_binary(), "--help"], capture_output=True, text=True,
                         timeout=30).stdout
    longs = set(re.findall(r"^\s+(?:-\w, )?--([a-z][a-z0-9_-]*)", out, re.M))
    return {k.replace("-", "_") for k in longs - NOT_KEYS}


def conffile_keys() -> List[str]:
    with open(os.path.join(PACKAGING_DIR, "pop3server.toml")) as f:
        return re.findall(r"^#([a-z_]+) = ", f.read(), re.M)


def test_conffile_lists_every_key_once():
    keys = conffile_keys()
    assert len(keys) == len(set(keys)), keys
    assert set(keys) == help_keys() | FILE_ONLY_KEYS


def test_conffile_commented_out_is_all_defaults_and_valid(dovecot, rundir, tmp_path):
    """Uncommented, the shipped file must be accepted by the binary; with the
    backend pointed at the testbed, --check passes."""
    binary = require_binary()
    with open(os.path.join(PACKAGING_DIR, "pop3server.toml")) as f:
        text = f.read()
    # every setting line is commented out: the package's file changes nothing
    assert not [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    override = {"backend_host": '"127.0.0.1"', "backend_port": str(dovecot.port),
                "backend_tls": '"none"', "lock_dir": '"%s"' % os.path.join(rundir, "locks"),
                "cache_dir": '"%s"' % os.path.join(rundir, "cache"),
                "listen": '["127.0.0.1:%d"]' % free_port()}
    # example paths that do not exist
    skip = {"backend_ca_file", "tls_cert", "tls_key", "devices_file", "routes_file"}
    lines = []
    for ln in text.splitlines():
        m = re.match(r"^#([a-z_]+) = (.*)$", ln)
        if m and m.group(1) not in skip:
            lines.append("%s = %s" % (m.group(1), override.get(m.group(1), m.group(2))))
        else:
            lines.append(ln)
    conf = tmp_path / "full.toml"
    conf.write_text("\n".join(lines) + "\n")
    r = subprocess.run([binary, "--config", str(conf), "--check"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_man_page_documents_every_key_and_renders():
    path = os.path.join(PACKAGING_DIR, "pop3server.8")
    with open(path) as f:
        text = f.read()
    plain = text.replace("\\-", "-").replace("\\fB", "").replace("\\fR", "").replace("\\fI", "")
    for key in help_keys():
        assert key in plain, "man page does not mention key %s" % key
        assert "--" + key.replace("_", "-") in plain, "man page lacks --%s" % key
    for key in FILE_ONLY_KEYS:
        assert re.search(r"\b%s\b" % key, plain), "man page does not mention key %s" % key
    for section in ("SYNOPSIS", "MODES", "OPTIONS", "INETD", "SYSTEMD", "FILES",
                    "EXIT STATUS", "EXAMPLES", "--check"):
        assert section in plain
    assert "xinetd" in plain and "nowait" in plain


def test_man_page_renders_without_warnings():
    groff = need("groff")
    path = os.path.join(PACKAGING_DIR, "pop3server.8")
    r = subprocess.run([groff, "-man", "-Tutf8", "-ww", "-z", path], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr


def test_inetd_example_line_is_valid():
    with open(os.path.join(PACKAGING_DIR, "inetd.conf.example")) as f:
        lines = [ln.split() for ln in f if ln.strip() and not ln.startswith("#")]
    assert lines == [["pop3", "stream", "tcp", "nowait", "pop3server", "/usr/sbin/pop3server",
                      "pop3server"]]
