"""The .deb under a real systemd, as an admin meets it: a fresh Debian 12 root
(scripts/debian-root.sh) booted with ``systemd-nspawn -b`` on a private
network (loopback only), a Dovecot inside it, then:

- the previous release's .deb (packaging/previous-release, built from that
  commit and cached) is installed with apt, the admin edits the conffile and
  leaves state under /var/lib and /var/cache, and this release's .deb is
  installed over it: the edits and the state survive, nothing gets enabled;
- pop3server.socket, pop3s.socket and the listener socket are enabled in
  turn; each serves a full POP3 session from a client on 127.0.0.1 that must
  log in (the loopback rule) and be logged as 127.0.0.1 in the journal;
- pop3server-stats.service starts (Type=notify), counts a datagram and
  serves it on /metrics, and stops without taking /run/pop3server or the
  lock files in it;
- ``apt-get remove`` keeps the conffile and the state, ``apt-get purge``
  removes them and every unit link.

Runs with POP3SERVER_SYSTEMD_TESTS=1 (scripts/test.sh sets it with the other
package tests, outside a chroot or container: containers do not nest here).
Needs root, systemd-container, debootstrap, cargo-deb (scripts/package.sh).
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from typing import List, Optional

import pytest

from helpers import REPO, need, run

pytestmark = [
    pytest.mark.packages,
    pytest.mark.skipif(os.environ.get("POP3SERVER_SYSTEMD_TESTS") != "1",
                       reason="boots a container and installs packages in it: "
                              "set POP3SERVER_SYSTEMD_TESTS=1 to run it"),
]

OUT = os.path.join(REPO, "target", "packages")
CACHE = os.environ.get("POP3SERVER_ROOT_CACHE", "/var/cache/pop3server-tests")
# What the container has besides minbase: systemd to boot, Dovecot as the
# backend, python3 for the POP3 client (poplib), openssl for the testbed's
# certificates, ss to see the sockets, and the .deb's dependencies (apt cannot fetch any: the
# container has no network but loopback).
ROOT_PACKAGES = ["systemd", "dovecot-imapd", "python3", "openssl", "ca-certificates",
                 "adduser", "iproute2"]
IMAP_PORT = 10143
BOOT_TIMEOUT = 120
# How long systemd-nspawn may take to clean up once the container is killed.
HALT_TIMEOUT = 20
UNITS = ["pop3server.socket", "pop3s.socket", "pop3server-listener.socket",
         "pop3server-listener.service", "pop3server-stats.service"]

CLIENT = r'''
import poplib, ssl, sys
mode, port = sys.argv[1], int(sys.argv[2])
if mode == "pop3s":
    ctx = ssl.create_default_context(cafile="/srv/dovecot/tls/ca.pem")
    c = poplib.POP3_SSL("127.0.0.1", port, context=ctx, timeout=20)
else:
    c = poplib.POP3("127.0.0.1", port, timeout=20)
print("greeting", c.getwelcome().decode())
print(c.user("demo").decode())
print(c.pass_("demo").decode())
count, size = c.stat()
print("stat", count, size)
uidl = c.uidl()[1]
assert len(uidl) == count, uidl
resp, lines, octets = c.retr(1)
assert resp.startswith(b"+OK") and any(l.startswith(b"Subject:") for l in lines), lines
print("retr 1:", octets, "octets")
print(c.quit().decode())
print("SESSION-OK", count)
'''


def previous_release() -> dict:
    out = {}
    with open(os.path.join(REPO, "packaging", "previous-release")) as f:
        for ln in f:
            if "=" in ln and not ln.lstrip().startswith("#"):
                k, v = ln.split("=", 1)
                out[k.strip()] = v.strip()
    assert re.fullmatch(r"[0-9a-f]{40}", out.get("commit", "")), out
    return out


def build_previous_deb(tmp: str) -> str:
    """The previous release's .deb, built from its commit (git archive, a
    release build of its own, cargo deb) once and kept under CACHE."""
    prev = previous_release()
    commit, version = prev["commit"], prev["version"]
    cached = os.path.join(CACHE, "previous-release", commit[:12], "pop3server_%s.deb" % version)
    if os.path.isfile(cached):
        return cached
    r = run(["git", "-C", REPO, "cat-file", "-e", commit + "^{commit}"], check=False)
    assert r.returncode == 0, ("the previous release %s is not in this clone (shallow?): "
                               "git fetch --unshallow" % commit)
    src = os.path.join(tmp, "previous-src")
    os.makedirs(src)
    archive = subprocess.run(["git", "-C", REPO, "archive", commit], capture_output=True,
                             timeout=120, check=True).stdout
    subprocess.run(["tar", "-x", "-C", src], input=archive, check=True, timeout=120)
    t0 = time.monotonic()
    run(["cargo", "build", "--release", "--locked"], cwd=src, timeout=1800)
    out = os.path.join(src, "out")
    run(["cargo", "deb", "--no-build", "--fast", "--output", out + "/",
         "--deb-version", version], cwd=src, timeout=600)
    debs = glob.glob(os.path.join(out, "*.deb"))
    assert len(debs) == 1, debs
    os.makedirs(os.path.dirname(cached), exist_ok=True)
    shutil.copy(debs[0], cached + ".tmp")
    os.replace(cached + ".tmp", cached)
    print("built the previous release %s in %.0f s" % (commit[:12], time.monotonic() - t0))
    return cached


def _start_time(pid: int) -> Optional[str]:
    """Field 22 of /proc/PID/stat: when the process started (with the PID,
    what identifies it)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


class Container:
    """A booted fresh Debian root; commands run in it with nsenter."""

    def __init__(self, workdir: str):
        self.dir = workdir
        self.root = os.path.join(workdir, "root")
        self.log_path = os.path.join(workdir, "nspawn.log")
        self.proc: Optional[subprocess.Popen] = None
        self.leader = 0
        self.leader_started: Optional[str] = None

    def make_root(self) -> None:
        t0 = time.monotonic()
        run([os.path.join(REPO, "scripts", "debian-root.sh"), self.root] + ROOT_PACKAGES,
            timeout=1200)
        print("root ready in %.0f s" % (time.monotonic() - t0))

    def boot(self) -> None:
        need("systemd-nspawn", "systemd-container")
        env = dict(os.environ, SYSTEMD_NSPAWN_UNIFIED_HIERARCHY="0")
        self.logf = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            ["systemd-nspawn", "--quiet", "-b", "-D", self.root, "--register=no",
             "--keep-unit", "--private-network", "--console=pipe",
             "-M", "p3test%d" % os.getpid()],
            stdin=subprocess.DEVNULL, stdout=self.logf, stderr=subprocess.STDOUT, env=env,
            start_new_session=True)
        deadline = time.monotonic() + BOOT_TIMEOUT
        while time.monotonic() < deadline and not self.leader:
            assert self.proc.poll() is None, "systemd-nspawn exited:\n" + self.log()
            self.leader = self._find_leader()
            time.sleep(0.2)
        assert self.leader, "no systemd inside the container:\n" + self.log()
        self.leader_started = _start_time(self.leader)
        state = ""
        while time.monotonic() < deadline:
            r = self.sh("systemctl is-system-running", check=False, timeout=30)
            state = r.stdout.strip()
            if state in ("running", "degraded"):
                break
            time.sleep(0.5)
        if state == "degraded":
            print(self.sh("systemctl --failed --no-pager", check=False).stdout)
        assert state in ("running", "degraded"), "boot did not finish (%s):\n%s" % (
            state, self.log())
        print("container booted, systemd is %s" % state)

    def _find_leader(self) -> int:
        """The container's PID 1: systemd, a child of systemd-nspawn."""
        for stat_path in glob.glob("/proc/[0-9]*/stat"):
            try:
                with open(stat_path) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                with open(stat_path[:-4] + "comm") as f:
                    comm = f.read().strip()
            except OSError:
                continue
            if int(fields[1]) == self.proc.pid and comm == "systemd":
                return int(stat_path.split("/")[2])
        return 0

    def sh(self, script: str, check: bool = True, timeout: float = 120,
           input: Optional[str] = None) -> subprocess.CompletedProcess:
        cmd = ["nsenter", "-t", str(self.leader), "-a", "-r", "-w",
               "/usr/bin/env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
               "DEBIAN_FRONTEND=noninteractive", "LANG=C.UTF-8", "HOME=/root",
               "/bin/sh", "-ec", script]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input)
        if check and r.returncode != 0:
            raise AssertionError("in the container: %s\nexit %d\n%s\n%s" % (
                script, r.returncode, r.stdout[-5000:], r.stderr[-5000:]))
        return r

    def put(self, path: str, data: str, mode: int = 0o644) -> None:
        full = self.root + path
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "w") as f:
            f.write(data)
        os.chmod(full, mode)

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-5000:]
        except OSError:
            return ""

    def stop(self) -> None:
        """Ends the container at once: SIGKILL to its PID 1 ends every process
        in its PID namespace, and systemd-nspawn then cleans up and exits.
        (Killing systemd-nspawn alone would leave the container running,
        reparented to this machine's init; a clean halt is not needed for a
        root that is thrown away.)"""
        self._kill_leader()
        if self.proc and self.proc.poll() is None:
            try:
                self.proc.wait(HALT_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        if getattr(self, "logf", None):
            self.logf.close()

    def _kill_leader(self) -> None:
        """SIGKILL the container's PID 1, if that PID is still the process
        seen at boot (same start time: a PID can be reused)."""
        if self.leader and _start_time(self.leader) == self.leader_started:
            try:
                os.kill(self.leader, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture(scope="module")
def debs(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.fail("the package test under systemd needs root")
    need("cargo", "rustup")
    new = sorted(glob.glob(os.path.join(OUT, "pop3server_*.deb")), key=os.path.getmtime)
    assert new, "no .deb in %s: run scripts/package.sh" % OUT
    prev = build_previous_deb(str(tmp_path_factory.mktemp("prev")))
    return {"new": new[-1], "previous": prev}


@pytest.fixture(scope="module")
def box(debs):
    work = tempfile.mkdtemp(prefix="p3nspawn-", dir="/var/tmp")
    c = Container(work)
    try:
        c.make_root()
        for name, path in debs.items():
            shutil.copy(path, os.path.join(c.root, "root", "%s.deb" % name))
        shutil.copy(os.path.join(REPO, "scripts", "testbed.py"), c.root + "/root/testbed.py")
        c.put("/root/pop3client.py", CLIENT)
        c.boot()
        # The backend: the demo Dovecot (user demo/demo, 3 messages) inside.
        print(c.sh("python3 /root/testbed.py start-demo --dir /srv/dovecot --port %d"
                   % IMAP_PORT, timeout=120).stdout)
        yield c
    finally:
        print(c.log())
        c.stop()
        shutil.rmtree(work, ignore_errors=True)


def deb_version(deb: str) -> str:
    return run(["dpkg-deb", "-f", deb, "Version"]).stdout.strip()


def installed_version(c: Container) -> str:
    return c.sh("dpkg-query -W -f='${Version}' pop3server", check=False).stdout.strip()


def enabled_state(c: Container) -> dict:
    r = c.sh("systemctl is-enabled %s || true" % " ".join(UNITS), check=False)
    return dict(zip(UNITS, r.stdout.split()))


def nothing_enabled(c: Container) -> bool:
    """'indirect' is the listener service: started by its socket only."""
    return set(enabled_state(c).values()) <= {"disabled", "indirect"}


def unit_links(c: Container) -> List[str]:
    return sorted(p[len(c.root):] for u in UNITS
                  for p in glob.glob(c.root + "/etc/systemd/system/*/" + u))


CONFIG = """# written by the admin
backend_host = "127.0.0.1"
backend_port = %d
backend_tls = "none"
tls_cert = "/etc/pop3server/cert.pem"
tls_key = "/etc/pop3server/key.pem"
""" % IMAP_PORT


def session(c: Container, mode: str, port: int) -> str:
    r = c.sh("python3 /root/pop3client.py %s %d" % (mode, port), check=False, timeout=60)
    assert "SESSION-OK 3" in r.stdout, "%s session on %d failed:\n%s\n%s" % (
        mode, port, r.stdout, r.stderr)
    return r.stdout


def journal(c: Container, unit: str, since: str) -> str:
    # The session line is written as the process ends; journald may take a
    # moment to have it.
    out = ""
    for _ in range(50):
        # -t pop3server: the identifier the README and man page tell admins
        # to read the logs by.
        out = c.sh("journalctl --no-pager -o cat -t pop3server -u '%s' --since '%s'"
                   % (unit, since),
                   check=False).stdout
        if SESSION_LINE.search(out):
            break
        time.sleep(0.2)
    return out


# The session summary of a login as demo from 127.0.0.1 (not ::ffff:127.0.0.1).
SESSION_LINE = re.compile(r"session end: user=demo client=127\.0\.0\.1:\d+ ")


def now(c: Container) -> str:
    return c.sh("date '+%Y-%m-%d %H:%M:%S'").stdout.strip()


def test_upgrade_from_previous_release(box, debs):
    c = box
    prev_version, new_version = deb_version(debs["previous"]), deb_version(debs["new"])
    assert prev_version != new_version, "bump the version (Cargo.toml, packaging/changelog)"
    print(c.sh("apt-get install -y /root/previous.deb", timeout=300).stdout[-2000:])
    assert installed_version(c) == prev_version
    assert nothing_enabled(c), enabled_state(c)
    # What an admin leaves: an edited conffile, and state the program keeps.
    c.put("/etc/pop3server/pop3server.toml", CONFIG)
    c.sh("mkdir -p /var/lib/pop3server /var/cache/pop3server; "
         "echo state > /var/lib/pop3server/probe; echo cache > /var/cache/pop3server/probe")

    r = c.sh("apt-get install -y -o Dpkg::Options::=--force-confdef "
             "-o Dpkg::Options::=--force-confold /root/new.deb", timeout=300)
    print(r.stdout[-3000:], r.stderr[-2000:])
    assert installed_version(c) == new_version
    with open(c.root + "/etc/pop3server/pop3server.toml") as f:
        assert f.read() == CONFIG, "the upgrade changed the admin's configuration"
    assert os.path.isfile(c.root + "/var/lib/pop3server/probe")
    assert os.path.isfile(c.root + "/var/cache/pop3server/probe")
    assert nothing_enabled(c), enabled_state(c)
    assert unit_links(c) == [], unit_links(c)
    active = c.sh("systemctl list-units --no-legend --plain 'pop3*'", check=False).stdout
    assert active.strip() == "", active
    assert c.sh("/usr/sbin/pop3server --version").stdout.split()[1] == new_version.split("-")[0]


def test_pop3server_socket_serves_and_logs_ipv4(box):
    c = box
    # The key is the testbed's: readable by the service user only.
    c.sh("install -m 0644 /srv/dovecot/tls/server.pem /etc/pop3server/cert.pem; "
         "install -m 0640 -g pop3server /srv/dovecot/tls/server.key /etc/pop3server/key.pem")
    check = c.sh("pop3server --check", check=False, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    since = now(c)
    c.sh("systemctl enable --now pop3server.socket")
    out = session(c, "plain", 110)
    print(out)
    log = journal(c, "pop3server@*", since)
    print(log)
    assert SESSION_LINE.search(log), log
    assert "::ffff:" not in log, "an IPv4 client was logged as an IPv4-mapped address"
    assert "Plaintext authentication is disabled" not in out


def test_pop3s_socket_serves_with_tls(box):
    c = box
    since = now(c)
    c.sh("systemctl enable --now pop3s.socket")
    out = session(c, "pop3s", 995)
    print(out)
    log = journal(c, "pop3s@*", since)
    print(log)
    assert SESSION_LINE.search(log), log
    assert "::ffff:" not in log


def test_listener_socket_serves(box):
    c = box
    c.sh("systemctl disable --now pop3server.socket pop3s.socket")
    since = now(c)
    c.sh("systemctl enable --now pop3server-listener.socket")
    out = session(c, "plain", 110)
    print(out)
    state = c.sh("systemctl is-active pop3server-listener.service", check=False).stdout.strip()
    assert state == "active", state
    log = journal(c, "pop3server-listener.service", since)
    print(log)
    assert SESSION_LINE.search(log), log
    assert "::ffff:" not in log


# With "send", sends one event to the aggregator's socket; prints its page.
# Run as the user the sessions run as.
STATS_CLIENT = r'''
import socket, sys, urllib.request
if sys.argv[1:] == ["send"]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(b"pop3server-stats 1 session-start", "/run/pop3server/stats.sock")
print(urllib.request.urlopen("http://127.0.0.1:11110/metrics", timeout=10).read().decode())
'''
AS_SESSION_USER = "setpriv --reuid=pop3server --regid=pop3server --clear-groups "


def test_stats_service_serves_and_leaves_the_lock_dir(box):
    c = box
    # Not in /root: the session user could not read it there.
    c.put("/srv/statsclient.py", STATS_CLIENT)
    assert c.sh("systemctl is-enabled pop3server-stats.service", check=False).stdout.strip() \
        == "disabled"
    # A stand-in for a live session's lock file.
    c.sh("install -d -o pop3server -g pop3server -m 0750 /run/pop3server; "
         "install -o pop3server -g pop3server -m 0600 /dev/null /run/pop3server/probe.lock")
    c.sh("systemctl start pop3server-stats.service", timeout=60)
    assert c.sh("systemctl is-active pop3server-stats.service", check=False).stdout.strip() \
        == "active"
    assert c.sh("stat -c '%a %U' /run/pop3server/stats.sock").stdout.split() == \
        ["660", "pop3server"]
    page = c.sh(AS_SESSION_USER + "python3 /srv/statsclient.py send", timeout=30).stdout
    for _ in range(50):
        if "pop3server_sessions_started_total 1" in page:
            break
        time.sleep(0.2)
        page = c.sh(AS_SESSION_USER + "python3 /srv/statsclient.py", timeout=30).stdout
    print(page[:2000])
    assert "pop3server_sessions_started_total 1" in page, page
    c.sh("systemctl stop pop3server-stats.service", timeout=60)
    assert c.sh("systemctl is-active pop3server-stats.service", check=False).stdout.strip() \
        == "inactive"
    left = c.sh("ls -A /run/pop3server").stdout.split()
    assert "probe.lock" in left and "stats.sock" not in left, left
    c.sh("rm -f /run/pop3server/probe.lock")


def test_remove_keeps_state_purge_removes_it(box):
    c = box
    r = c.sh("apt-get remove -y pop3server", timeout=300)
    print(r.stdout[-2000:])
    assert not os.path.exists(c.root + "/usr/sbin/pop3server")
    assert os.path.isfile(c.root + "/etc/pop3server/pop3server.toml")
    assert os.path.isfile(c.root + "/var/lib/pop3server/probe")
    assert os.path.isfile(c.root + "/var/cache/pop3server/probe")
    listening = c.sh("ss -Hltn 'sport = :110 or sport = :995' 2>/dev/null || true",
                     check=False).stdout
    assert listening.strip() == "", listening
    r = c.sh("apt-get purge -y pop3server", timeout=300)
    print(r.stdout[-2000:])
    assert not os.path.exists(c.root + "/etc/pop3server/pop3server.toml")
    # The admin's own files (here the TLS key and certificate) are theirs to
    # remove, as dpkg says.
    assert sorted(os.listdir(c.root + "/etc/pop3server")) == ["cert.pem", "key.pem"]
    for path in ("/var/lib/pop3server", "/var/cache/pop3server"):
        assert not os.path.exists(c.root + path), path
    # /run is the container's own tmpfs, not in the root directory.
    assert c.sh("test -e /run/pop3server && echo left || echo gone").stdout.strip() == "gone"
    assert unit_links(c) == [], unit_links(c)
    assert installed_version(c) == ""
