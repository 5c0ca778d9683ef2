"""The .deb and the .rpm: build them with scripts/package.sh, check their
contents, run lintian, install the .deb on this machine, use the installed
binary (--check, a full session as the user pop3server with the default lock
directory), then purge it.

Slow the first time (cargo install of cargo-deb and cargo-generate-rpm, about
4 minutes) and it changes the machine (dpkg -i / --purge, a system user
pop3server): runs only with POP3SERVER_PACKAGE_TESTS=1, as root.
POP3SERVER_PACKAGE_REUSE=1 uses packages already in target/packages/
instead of running scripts/package.sh.

Needs (Debian): dpkg, lintian, rpm, man-db, util-linux (setpriv), systemd
(systemd-socket-activate, systemd-analyze, systemd-sysusers); a missing
tool fails the test that needs it. Select with ``-m packages``.
"""

from __future__ import annotations

import glob
import grp
import os
import pwd
import re
import signal
import socket
import stat
import subprocess
import time
from typing import Dict, List

import pytest

from helpers import RELEASE_BIN, REPO, ImapView, Pop3, need, ok, run, wait_for
from testbed import free_port

pytestmark = [
    pytest.mark.packages,
    pytest.mark.skipif(os.environ.get("POP3SERVER_PACKAGE_TESTS") != "1",
                       reason="package tests change the machine and take minutes: "
                              "set POP3SERVER_PACKAGE_TESTS=1 to run them"),
]

OUT = os.path.join(REPO, "target", "packages")
PKG = "pop3server"

# Installed paths, the same in both packages.
COMMON_FILES = {
    "/usr/sbin/pop3server",
    "/usr/lib/systemd/system/pop3server.socket",
    "/usr/lib/systemd/system/pop3server@.service",
    "/usr/lib/systemd/system/pop3s.socket",
    "/usr/lib/systemd/system/pop3s@.service",
    "/usr/lib/systemd/system/pop3server-listener.socket",
    "/usr/lib/systemd/system/pop3server-listener.service",
    "/usr/lib/systemd/system/pop3server-stats.service",
    "/usr/lib/sysusers.d/pop3server.conf",
    "/usr/lib/tmpfiles.d/pop3server.conf",
    "/etc/pop3server/pop3server.toml",
    "/etc/fail2ban/filter.d/pop3server.conf",
    "/usr/share/man/man8/pop3server.8.gz",
    "/usr/share/doc/pop3server/README.md",
    "/usr/share/doc/pop3server/docs/install.md",
    "/usr/share/doc/pop3server/docs/devices-and-oauth2.md",
    "/usr/share/doc/pop3server/docs/front-ends.md",
    "/usr/share/doc/pop3server/docs/old-tls-devices.md",
    "/usr/share/doc/pop3server/docs/uidl-migration.md",
    "/usr/share/doc/pop3server/docs/behaviour.md",
    "/usr/share/doc/pop3server/docs/providers.md",
    "/usr/share/doc/pop3server/docs/troubleshooting.md",
    "/usr/share/doc/pop3server/docs/monitoring.md",
    "/usr/share/doc/pop3server/examples/pop3server-rules.yml",
    "/usr/share/doc/pop3server/inetd.conf.example",
    "/usr/share/doc/pop3server/xinetd.example",
}
# Debian policy wants these too.
DEB_ONLY = {
    "/usr/share/doc/pop3server/README.Debian",
    "/usr/share/doc/pop3server/copyright",
    "/usr/share/doc/pop3server/changelog.Debian.gz",
    "/usr/share/lintian/overrides/pop3server",
}
UNITS = ["pop3server.socket", "pop3server@.service", "pop3s.socket", "pop3s@.service",
         "pop3server-listener.socket", "pop3server-listener.service", "pop3server-stats.service"]


def dpkg(args: List[str], timeout: float = 300) -> subprocess.CompletedProcess:
    """dpkg, waiting (bounded) while another dpkg/apt holds the lock."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    r = None
    for _ in range(60):
        r = subprocess.run(["dpkg"] + args, capture_output=True, text=True, timeout=timeout,
                           env=env)
        if r.returncode != 0 and "lock" in r.stderr and "held by" in r.stderr:
            time.sleep(2)
            continue
        break
    return r


def installed() -> bool:
    r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", PKG], capture_output=True, text=True)
    return r.returncode == 0 and "installed" in r.stdout and "not-installed" not in r.stdout


@pytest.fixture(scope="module")
def packages() -> Dict[str, str]:
    if os.geteuid() != 0:
        pytest.skip("package tests need root (dpkg -i)")
    reuse = os.environ.get("POP3SERVER_PACKAGE_REUSE") == "1"
    have = glob.glob(os.path.join(OUT, "*.deb")) and glob.glob(os.path.join(OUT, "*.rpm"))
    if not (reuse and have):
        t0 = time.monotonic()
        r = subprocess.run([os.path.join(REPO, "scripts", "package.sh")], cwd=REPO,
                           capture_output=True, text=True, timeout=1800)
        print(r.stdout[-3000:])
        assert r.returncode == 0, "scripts/package.sh failed:\n%s\n%s" % (r.stdout[-5000:],
                                                                         r.stderr[-5000:])
        print("scripts/package.sh took %.0f s" % (time.monotonic() - t0))
    debs = sorted(glob.glob(os.path.join(OUT, "pop3server_*.deb")), key=os.path.getmtime)
    rpms = sorted(glob.glob(os.path.join(OUT, "pop3server-*.rpm")), key=os.path.getmtime)
    assert debs and rpms, os.listdir(OUT)
    return {"deb": debs[-1], "rpm": rpms[-1]}


def deb_files(deb: str) -> Dict[str, str]:
    """Installed path -> ls-style mode string, regular files and links."""
    out = {}
    for ln in run(["dpkg-deb", "-c", deb]).stdout.splitlines():
        parts = ln.split()
        mode, path = parts[0], parts[5]
        path = "/" + path.lstrip("./")
        if not mode.startswith("d"):
            out[path] = mode
    return out


def rpm_files(rpm: str) -> List[str]:
    """Files (not directories) of the rpm."""
    out = []
    for ln in run(["rpm", "-qlvp", rpm]).stdout.splitlines():
        if ln.strip() and not ln.startswith("d"):
            out.append(ln.split()[-1])
    return out



# --------------------------------------------------------------------------
# contents
# --------------------------------------------------------------------------

def test_deb_contents_and_control(packages):
    deb = packages["deb"]
    files = deb_files(deb)
    for path, mode in sorted(files.items()):
        print(mode, path)
    print("size: %d bytes" % os.path.getsize(deb))
    assert set(files) == COMMON_FILES | DEB_ONLY
    assert files["/usr/sbin/pop3server"] == "-rwxr-xr-x"
    assert all(m == "-rw-r--r--" for p, m in files.items() if p != "/usr/sbin/pop3server")
    info = run(["dpkg-deb", "-I", deb]).stdout
    print(info)
    assert re.search(r"^ Depends:.*\bca-certificates\b", info, re.M)
    assert re.search(r"^ Section: mail", info, re.M)
    assert "enables and starts nothing" in re.sub(r"\s+", " ", info)
    assert run(["dpkg-deb", "-f", deb, "Package"]).stdout.strip() == PKG
    ctrl = subprocess.run(["dpkg-deb", "--ctrl-tarfile", deb], capture_output=True, timeout=60)
    listing = subprocess.run(["tar", "-xO", "./conffiles"], input=ctrl.stdout,
                             capture_output=True, timeout=60).stdout.decode()
    assert sorted(listing.split()) == ["/etc/fail2ban/filter.d/pop3server.conf",
                                       "/etc/pop3server/pop3server.toml"]


def test_lintian_has_no_errors(packages):
    lintian = need("lintian", "lintian")
    r = run([lintian, "--info", "--display-info", "--pedantic", packages["deb"]],
            check=False, timeout=600)
    print(r.stdout + r.stderr)
    errors = [ln for ln in r.stdout.splitlines() if ln.startswith("E:")]
    assert not errors, "\n".join(errors)


def test_rpm_contents_scripts_requires(packages):
    rpm_tool = need("rpm", "rpm")
    rpm = packages["rpm"]
    files = rpm_files(rpm)
    print("\n".join(files))
    print("size: %d bytes" % os.path.getsize(rpm))
    assert set(files) == COMMON_FILES
    deb_common = set(deb_files(packages["deb"])) - DEB_ONLY
    assert set(files) == deb_common, "deb and rpm install different files"
    info = run([rpm_tool, "-qip", rpm]).stdout
    print(info)
    assert re.search(r"^Name\s*:\s*pop3server$", info, re.M)
    assert re.search(r"^License\s*:\s*MIT$", info, re.M)
    configs = run([rpm_tool, "-qcp", rpm]).stdout.split()
    assert sorted(configs) == ["/etc/fail2ban/filter.d/pop3server.conf",
                               "/etc/pop3server/pop3server.toml"]
    docs = set(run([rpm_tool, "-qdp", rpm]).stdout.split())
    assert "/usr/share/man/man8/pop3server.8.gz" in docs
    requires = run([rpm_tool, "-qp", "--requires", rpm]).stdout
    print(requires)
    assert re.search(r"^ca-certificates\b", requires, re.M)
    scripts = run([rpm_tool, "-qp", "--scripts", rpm]).stdout
    print(scripts)
    assert "postinstall scriptlet" in scripts and "systemd-sysusers" in scripts
    assert "preuninstall scriptlet" in scripts
    assert not re.search(r"systemctl[^\n]*\s(enable|start|preset)\b", scripts), \
        "the rpm must not enable or start units"
    verbose = run([rpm_tool, "-qlvp", rpm]).stdout
    assert re.search(r"^-rwxr-xr-x\s.*\s/usr/sbin/pop3server$", verbose, re.M), verbose


def test_rpm_payload_unpacks_and_runs(packages, tmp_path):
    """Install the rpm into an empty root (no scripts, no deps) and run the
    binary from there: the payload is complete and not corrupted."""
    rpm_tool = need("rpm", "rpm")
    root = str(tmp_path / "rpmroot")
    os.makedirs(root)
    run([rpm_tool, "--root", root, "--initdb"])
    run([rpm_tool, "--root", root, "-i", "--nodeps", "--noscripts", "--nosignature",
         "--ignorearch", packages["rpm"]], timeout=300)
    for path in COMMON_FILES:
        assert os.path.isfile(root + path), path
    r = run([root + "/usr/sbin/pop3server", "--version"])
    assert r.stdout.startswith("pop3server ")
    r = run(["cmp", root + "/usr/sbin/pop3server", os.path.join(REPO, RELEASE_BIN)],
            check=False)
    assert r.returncode == 0, "rpm holds another binary than " + RELEASE_BIN


# --------------------------------------------------------------------------
# install the .deb, use it, purge it
# --------------------------------------------------------------------------

def ssa_session(cmd: List[str], port: int, dc, user: str, log_path: str) -> None:
    """systemd-socket-activate --inetd -a CMD on 127.0.0.1:PORT, one
    session with DELE 1, QUIT, then the backend must have lost message 1."""
    with ImapView(dc, user) as v:
        uids = v.uids()
    logf = open(log_path, "ab")
    p = subprocess.Popen(["systemd-socket-activate", "--inetd", "-l", "127.0.0.1:%d" % port,
                          "-a"] + cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                         start_new_session=True)
    try:
        def up():
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return True
            except OSError:
                return False
        assert wait_for(up, 10, 0.05), open(log_path).read()
        with Pop3(port, timeout=20) as c:
            assert ok(c.greeting), c.greeting
            st = c.login(user, "secret")
            assert ok(st), (st, open(log_path).read())
            assert c.stat()[0] == len(uids)
            st, body = c.retr(1)
            assert ok(st) and body
            assert ok(c.cmd("DELE 1"))
            assert ok(c.quit())
        with ImapView(dc, user) as v:
            assert v.uids() == uids[1:]
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass
            try:
                p.wait(5)
                break
            except subprocess.TimeoutExpired:
                pass
        logf.close()


def enabled_links() -> List[str]:
    return [p for u in UNITS for p in glob.glob("/etc/systemd/system/*.wants/" + u)]


def test_deb_install_use_purge(packages, dovecot, fresh_user, workdir):
    need("systemd-socket-activate", "systemd")
    deb = packages["deb"]
    if installed():
        print("pop3server was installed before the test: purging it first")
        assert dpkg(["--purge", PKG]).returncode == 0
    links_before = enabled_links()

    # ---- install
    t0 = time.monotonic()
    r = dpkg(["-i", deb])
    print(r.stdout, r.stderr)
    assert r.returncode == 0, r.stdout + r.stderr
    print("dpkg -i took %.1f s" % (time.monotonic() - t0))
    try:
        assert "not enabled" in r.stdout, "postinst must say that nothing is enabled"
        for path in COMMON_FILES | DEB_ONLY:
            assert os.path.isfile(path), path
        assert os.stat("/usr/sbin/pop3server").st_mode & 0o777 == 0o755
        conffiles = run(["dpkg-query", "-W", "-f=${Conffiles}", PKG]).stdout
        assert "/etc/pop3server/pop3server.toml" in conffiles
        # the user and the lock directory
        pw = pwd.getpwnam("pop3server")
        assert pw.pw_uid < 1000 and pw.pw_shell.endswith("nologin"), pw
        assert grp.getgrnam("pop3server").gr_gid == pw.pw_gid
        st = os.stat("/run/pop3server")
        assert stat.S_ISDIR(st.st_mode) and st.st_mode & 0o777 == 0o750
        assert (st.st_uid, st.st_gid) == (pw.pw_uid, pw.pw_gid)
        # nothing enabled or started
        assert enabled_links() == links_before, enabled_links()
        # the man page
        man = need("man", "man-db")
        r = run([man, "-w", "pop3server"], check=False)
        assert r.stdout.strip() == "/usr/share/man/man8/pop3server.8.gz", r.stdout + r.stderr
        # the installed units, with the installed binary and man page
        sa = need("systemd-analyze", "systemd")
        r = run([sa, "verify"] + UNITS, check=False, timeout=120)
        assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr
        r = run([sa, "security", "--offline=yes",
                 "/usr/lib/systemd/system/pop3server@.service"], timeout=120)
        m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout)
        assert m and float(m.group(1)) <= 2.0, r.stdout
        print("installed pop3server@.service exposure: " + m.group(1))

        # ---- --check with a configuration for the testbed
        cfgdir = os.path.join(workdir, "pkgtest")
        os.makedirs(cfgdir, exist_ok=True)
        os.chmod(cfgdir, 0o755)
        conf = os.path.join(cfgdir, "pop3server.toml")
        with open(conf, "w") as f:
            f.write('backend_host = "127.0.0.1"\nbackend_port = %d\nbackend_tls = "none"\n'
                    'login_failure_delay = 0\n' % dovecot.port)
        os.chmod(conf, 0o644)
        pwfile = os.path.join(cfgdir, "password")
        with open(pwfile, "w") as f:
            f.write("secret\n")
        os.chmod(pwfile, 0o600)
        user = fresh_user(3)
        r = run(["/usr/sbin/pop3server", "--check", "--config", conf, "--user", user,
                 "--password-file", pwfile], check=False, timeout=60)
        print(r.stdout, r.stderr)
        assert r.returncode == 0, r.stdout + r.stderr
        assert re.search(r"\b3 messages\b", r.stdout), r.stdout
        bad = os.path.join(cfgdir, "badpassword")
        with open(bad, "w") as f:
            f.write("wrong\n")
        r = run(["/usr/sbin/pop3server", "--check", "--config", conf, "--user", user,
                 "--password-file", bad], check=False, timeout=60)
        assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr

        # ---- a session through the installed binary, inetd-style, as the
        # package's user with the package's lock directory (the default)
        setpriv = need("setpriv", "util-linux")
        cmd = [setpriv, "--reuid=pop3server", "--regid=pop3server", "--clear-groups",
               "/usr/sbin/pop3server", "--config", conf]
        ssa_session(cmd, free_port(), dovecot.dc, user, os.path.join(cfgdir, "ssa.log"))

        # ---- remove: conffile stays; purge: everything goes
        r = dpkg(["-r", PKG])
        assert r.returncode == 0, r.stdout + r.stderr
        assert not os.path.exists("/usr/sbin/pop3server")
        assert os.path.exists("/etc/pop3server/pop3server.toml")
    finally:
        r = dpkg(["--purge", PKG])
        print(r.stdout, r.stderr)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not installed()
    for path in COMMON_FILES | DEB_ONLY:
        assert not os.path.exists(path), path
    assert not os.path.exists("/etc/pop3server")
    assert not os.path.exists("/run/pop3server")
    assert enabled_links() == links_before
