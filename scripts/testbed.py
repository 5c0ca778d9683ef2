#!/usr/bin/env python3
"""A private Dovecot IMAP server for pop3server's integration tests and demo.

Used two ways:

* imported by tests/integration/conftest.py (``from testbed import Dovecot``);
* as a command line tool by scripts/demo.sh::

      python3 scripts/testbed.py start-demo --dir DIR --port 10143 --imaps-port 10993
      python3 scripts/testbed.py stop --dir DIR

Everything lives under one directory (config, passwd-file, maildirs, logs,
runtime sockets); /etc/dovecot is never read or written.  Must run as root
(Dovecot's master drops privileges to the mail user and to its own users).
"""

from __future__ import annotations

import argparse
import os
import pwd
import random
import shutil
import socket
import subprocess
import sys
import time
from typing import Dict, Iterable, List, Optional

MAIL_USER = "pop3test"


def free_port(also: Iterable[str] = ()) -> int:
    """A TCP port on 127.0.0.1 that is free right now (and, if given, also
    free on each loopback address in ``also``, e.g. 127.0.0.2)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        free = True
        for addr in also:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind((addr, port))
                except OSError:
                    free = False
        if free:
            return port
    raise RuntimeError("no free port on 127.0.0.1 and %s" % list(also))


def wait_for_port(port: int, host: str = "127.0.0.1", tries: int = 100,
                  delay: float = 0.05, proc: Optional[subprocess.Popen] = None) -> bool:
    """Bounded wait until host:port accepts a TCP connection."""
    for _ in range(tries):
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.create_connection((host, port), timeout=1):
                return True
        except OSError:
            time.sleep(delay)
    return False


def ensure_mail_user(name: str = MAIL_USER) -> pwd.struct_passwd:
    """The unprivileged system user that owns the maildirs (created if missing)."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "-r", "-M", "-d", "/nonexistent",
                        "-s", "/usr/sbin/nologin", name], check=True)
        return pwd.getpwnam(name)


def find_dovecot() -> str:
    for cand in (shutil.which("dovecot"), "/usr/sbin/dovecot"):
        if cand and os.path.exists(cand):
            return cand
    raise RuntimeError("dovecot not found: apt-get install dovecot-imapd")


def find_doveadm() -> str:
    for cand in (shutil.which("doveadm"), "/usr/bin/doveadm"):
        if cand and os.path.exists(cand):
            return cand
    raise RuntimeError("doveadm not found: apt-get install dovecot-core")


# ----- TLS material (openssl CLI) -----------------------------------------------

def find_openssl() -> str:
    for cand in (shutil.which("openssl"), "/usr/bin/openssl"):
        if cand and os.path.exists(cand):
            return cand
    raise RuntimeError("openssl not found: apt-get install openssl")


def make_tls_files(directory: str) -> Dict[str, str]:
    """A test CA, a server certificate it signed for
    ``subjectAltName = IP:127.0.0.1,DNS:localhost`` (used by Dovecot and by
    pop3server's STLS/POP3S), and a second, unrelated CA (for wrong-CA tests).
    Returns the paths: ca, ca_key, cert, key, other_ca, other_ca_key."""
    openssl = find_openssl()
    os.makedirs(directory, exist_ok=True)
    os.chmod(directory, 0o755)
    p = lambda name: os.path.join(directory, name)  # noqa: E731

    def run(*args: str) -> None:
        r = subprocess.run([openssl] + list(args), stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError("openssl %s failed: %s" % (args[0], r.stderr.decode(errors="replace")))

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for name, cn in (("ca", "pop3server test CA"), ("other-ca", "unrelated test CA")):
        with open(p(name + ".ext"), "w") as f:
            f.write("basicConstraints = critical, CA:TRUE\n"
                    "keyUsage = critical, keyCertSign, cRLSign\n"
                    "subjectKeyIdentifier = hash\n")
        run("req", "-x509", *ec, "-days", "30", "-subj", "/CN=" + cn,
            "-keyout", p(name + ".key"), "-out", p(name + ".pem"),
            "-extensions", "v3_ca_test", "-config", _req_config(p(name + ".cnf"), p(name + ".ext")))
    with open(p("server.ext"), "w") as f:
        f.write("subjectAltName = IP:127.0.0.1, DNS:localhost\n"
                "basicConstraints = critical, CA:FALSE\n"
                "keyUsage = critical, digitalSignature, keyEncipherment\n"
                "extendedKeyUsage = serverAuth\n"
                "subjectKeyIdentifier = hash\n"
                "authorityKeyIdentifier = keyid:always\n")
    run("req", "-new", *ec, "-subj", "/CN=localhost", "-keyout", p("server.key"),
        "-out", p("server.csr"))
    run("x509", "-req", "-in", p("server.csr"), "-CA", p("ca.pem"), "-CAkey", p("ca.key"),
        "-set_serial", "4242", "-days", "30", "-extfile", p("server.ext"), "-out", p("server.pem"))
    for name in ("ca.pem", "other-ca.pem", "server.pem"):
        os.chmod(p(name), 0o644)
    for name in ("ca.key", "other-ca.key", "server.key"):
        os.chmod(p(name), 0o600)
    return {"ca": p("ca.pem"), "ca_key": p("ca.key"), "cert": p("server.pem"),
            "key": p("server.key"), "other_ca": p("other-ca.pem"),
            "other_ca_key": p("other-ca.key")}


def _req_config(path: str, ext_file: str) -> str:
    """A minimal openssl req config whose [v3_ca_test] section is ``ext_file``."""
    with open(ext_file) as f:
        ext = f.read()
    with open(path, "w") as f:
        f.write("[req]\ndistinguished_name = dn\nprompt = no\n[dn]\n"
                "[v3_ca_test]\n" + ext)
    return path


CONFIG_TEMPLATE = """\
# Private Dovecot for pop3server tests; generated by scripts/testbed.py
protocols = imap
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
info_log_path = {d}/dovecot.log
{ssl}
disable_plaintext_auth = no
login_trusted_networks = 127.0.0.0/8
auth_mechanisms = plain login
auth_failure_delay = 0
auth_cache_size = 0
mail_max_userip_connections = 1000
first_valid_uid = {uid}
last_valid_uid = 0
first_valid_gid = {gid}
mail_location = maildir:{d}/mail/%u
mail_privileged_group =
default_login_user = dovenull
default_internal_user = dovecot
login_greeting = testbed ready.
# Master users log in as anyone with SASL PLAIN's authorization identity
# (authzid = the user, authcid = the master user); the user must exist.
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {d}/master-users
  master = yes
  result_success = continue
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {d}/users
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={d}/mail/%u
}}
service imap-login {{
  inet_listener imap {{
    address = {addresses}
    port = {port}
  }}
  inet_listener imaps {{
    address = {addresses}
    port = {imaps_port}
    ssl = yes
  }}
  process_min_avail = 1
}}
service imap {{
  process_limit = 1024
}}
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
protocol imap {{
  mail_max_userip_connections = 1000
}}
# Connections to {no_uidplus} see a backend without UIDPLUS (before and
# after login), for pop3server's UID SEARCH DELETED + EXPUNGE path.
local {no_uidplus} {{
  protocol imap {{
    imap_capability = {no_uidplus_caps}
  }}
}}
{namespace}"""

# With ``Dovecot(trash=NAME)``: the INBOX namespace has a mailbox NAME with
# the special-use attribute \Trash (RFC 6154), created and subscribed for
# every user at login, as a distribution's 15-mailboxes.conf would have it.
TRASH_NAMESPACE = """\
namespace inbox {{
  inbox = yes
  mailbox "{trash}" {{
    special_use = \\Trash
    auto = subscribe
  }}
}}
"""


def stop_dovecot(directory: str, timeout: float = 10.0) -> None:
    """Stops the private Dovecot rooted at ``directory`` (doveadm stop, then
    SIGKILL to the master if it is still there after ``timeout``)."""
    conf = os.path.join(directory, "dovecot.conf")
    if not os.path.exists(conf):
        return
    pid = None
    try:
        with open(os.path.join(directory, "run", "master.pid")) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        pass
    try:
        subprocess.run([find_doveadm(), "-c", conf, "stop"], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=15)
    except Exception:
        pass
    if not pid:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        pass


class Dovecot:
    """One private Dovecot instance rooted at ``directory``."""

    #: addresses of both listeners; 127.0.0.2 lets tests reach Dovecot by a
    #: name its certificate does not carry (the host-name check); on
    #: 127.0.0.3 Dovecot announces NO_UIDPLUS_CAPS (no UIDPLUS)
    ADDRESSES = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
    NO_UIDPLUS_HOST = "127.0.0.3"
    NO_UIDPLUS_CAPS = "IMAP4rev1 SASL-IR LITERAL+ ID ENABLE IDLE"
    MASTER_USER = "master"
    MASTER_PASSWORD = "masterpw"

    def __init__(self, directory: str, port: Optional[int] = None,
                 mail_user: str = MAIL_USER, tls: bool = True,
                 imaps_port: Optional[int] = None, trash: Optional[str] = None):
        self.dir = os.path.abspath(directory)
        #: the name of the \Trash mailbox every user has (None: no such mailbox)
        self.trash = trash
        self.port = port or free_port(self.ADDRESSES[1:])
        self.host = "127.0.0.1"
        self.pw = ensure_mail_user(mail_user)
        self.uid = self.pw.pw_uid
        self.gid = self.pw.pw_gid
        self.conf = os.path.join(self.dir, "dovecot.conf")
        self.users_file = os.path.join(self.dir, "users")
        self.master_users_file = os.path.join(self.dir, "master-users")
        self.passwords: Dict[str, bytes] = {}
        self.started = False
        os.makedirs(self.dir, exist_ok=True)
        os.chmod(self.dir, 0o755)
        # Dovecot's auth (user dovecot) and mail processes (the mail user)
        # must be able to traverse every parent directory.
        parent = self.dir
        while parent != "/":
            parent = os.path.dirname(parent)
            if os.stat(parent).st_mode & 0o001 == 0:
                raise RuntimeError("%s is not world-traversable (chmod o+x): Dovecot "
                                   "could not reach %s" % (parent, self.dir))
        for sub in ("run", "state", "mail"):
            os.makedirs(os.path.join(self.dir, sub), exist_ok=True)
        os.chmod(os.path.join(self.dir, "mail"), 0o755)
        # TLS: ssl = yes serves IMAPS on imaps_port and STARTTLS on the plain
        # port (plaintext LOGIN stays allowed there: disable_plaintext_auth = no).
        self.tls: Dict[str, str] = {}
        self.imaps_port = 0
        if tls:
            self.tls = make_tls_files(os.path.join(self.dir, "tls"))
            self.imaps_port = imaps_port or free_port(self.ADDRESSES[1:])
            while self.imaps_port == self.port:
                self.imaps_port = free_port(self.ADDRESSES[1:])
            ssl = "ssl = yes\nssl_cert = <%s\nssl_key = <%s" % (self.tls["cert"], self.tls["key"])
        else:
            ssl = "ssl = no"
        with open(self.conf, "w") as f:
            f.write(CONFIG_TEMPLATE.format(d=self.dir, port=self.port, uid=self.uid,
                                           gid=self.gid, ssl=ssl, imaps_port=self.imaps_port,
                                           addresses=", ".join(self.ADDRESSES),
                                           no_uidplus=self.NO_UIDPLUS_HOST,
                                           no_uidplus_caps=self.NO_UIDPLUS_CAPS,
                                           namespace=TRASH_NAMESPACE.format(trash=trash)
                                           if trash else ""))
        with open(self.master_users_file, "w") as f:
            f.write("%s:{PLAIN}%s::::::\n" % (self.MASTER_USER, self.MASTER_PASSWORD))
        os.chmod(self.master_users_file, 0o644)
        if not os.path.exists(self.users_file):
            self._write_users()

    # ----- users and mail -------------------------------------------------

    def _write_users(self) -> None:
        tmp = self.users_file + ".tmp"
        with open(tmp, "wb") as f:
            for name, pw in self.passwords.items():
                f.write(name.encode() + b":{PLAIN}" + pw + b"::::::\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.users_file)

    def add_user(self, name: str, password, messages: Iterable[bytes] = ()) -> None:
        """Add a user (passwd-file is re-read by Dovecot on change) and write
        ``messages`` straight into its maildir cur/ (only valid while Dovecot
        has not yet opened that mailbox)."""
        if isinstance(password, str):
            password = password.encode("utf-8")
        if b":" in password or b"\n" in password or b":" in name.encode():
            raise ValueError("passwd-file cannot hold ':' or newline")
        self.passwords[name] = password
        self._write_users()
        self.write_maildir(name, messages)

    def maildir(self, user: str) -> str:
        return os.path.join(self.dir, "mail", user)

    def write_maildir(self, user: str, messages: Iterable[bytes],
                      base_time: int = 1700000000) -> int:
        """(Re)create the user's maildir with ``messages`` in cur/, UID order =
        list order.  Removes any Dovecot index files.  Returns the count."""
        md = self.maildir(user)
        if os.path.exists(md):
            shutil.rmtree(md)
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(md, sub))
        n = 0
        host = "testbed"
        cur = os.path.join(md, "cur")
        for n, msg in enumerate(messages, start=1):
            # <time+n>.M<n>P1.host:2,  -- same digit count, so name order = n order
            fn = "%d.M%dP1.%s:2," % (base_time + n, n, host)
            path = os.path.join(cur, fn)
            with open(path, "wb") as f:
                f.write(msg)
            os.chown(path, self.uid, self.gid)
        for root, dirs, files in os.walk(md):
            os.chown(root, self.uid, self.gid)
        os.chown(md, self.uid, self.gid)
        return n

    # ----- process control --------------------------------------------------

    def start(self, timeout: float = 15.0) -> None:
        log = os.path.join(self.dir, "dovecot.log")
        # Dovecot daemonizes; its children must not inherit our pipes.
        errfile = os.path.join(self.dir, "dovecot.start.err")
        with open(errfile, "wb") as err:
            r = subprocess.run([find_dovecot(), "-c", self.conf], stdin=subprocess.DEVNULL,
                               stdout=err, stderr=err, timeout=30)
        if r.returncode != 0:
            with open(errfile, errors="replace") as f:
                raise RuntimeError("dovecot failed to start: %s" % f.read())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((self.host, self.port), timeout=1) as s:
                    s.settimeout(2)
                    if s.recv(100).startswith(b"* OK"):
                        self.started = True
                        return
            except OSError:
                pass
            time.sleep(0.05)
        tail = ""
        if os.path.exists(log):
            with open(log, errors="replace") as f:
                tail = f.read()[-3000:]
        raise RuntimeError("dovecot did not come up on port %d\n%s" % (self.port, tail))

    def master_pid(self) -> Optional[int]:
        try:
            with open(os.path.join(self.dir, "run", "master.pid")) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def stop(self, timeout: float = 10.0) -> None:
        stop_dovecot(self.dir, timeout)
        self.started = False

    def log_text(self) -> str:
        try:
            with open(os.path.join(self.dir, "dovecot.log"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""


# ----- message generators ----------------------------------------------------

def simple_message(user: str, n: int, body_lines: int = 3, extra: str = "") -> bytes:
    lines = [
        "From: Sender %d <sender%d@example.org>" % (n, n),
        "To: %s@example.org" % user,
        "Subject: %s message %d%s" % (user, n, extra),
        "Message-ID: <%s-%d@testbed>" % (user, n),
        "Date: Mon, 1 Jan 2024 00:%02d:00 +0000" % (n % 60),
        "",
    ]
    lines += ["Body line %d of message %d for %s." % (i, n, user)
              for i in range(1, body_lines + 1)]
    return ("\r\n".join(lines) + "\r\n").encode()


def alice_messages() -> List[bytes]:
    return [simple_message("alice", n, body_lines=2 + 3 * n) for n in range(1, 6)]


def big_message(size: int = 20 * 1024 * 1024, seed: int = 20240101) -> bytes:
    """About ``size`` bytes of random printable lines (CRLF), some starting with '.'."""
    rnd = random.Random(seed)
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:-_+=!?"
    head = (b"From: big@example.org\r\nTo: carol@example.org\r\n"
            b"Subject: twenty MiB\r\nMessage-ID: <carol-big@testbed>\r\n\r\n")
    chunks = [head]
    total = len(head)
    # build a pool of lines and sample from it (fast)
    pool = []
    for i in range(4096):
        ln = rnd.randint(0, 120)
        s = "".join(rnd.choice(alphabet) for _ in range(ln))
        if i % 97 == 0:
            s = "." + s
        pool.append(s.encode() + b"\r\n")
    i = 0
    while total < size:
        line = pool[rnd.randrange(len(pool))]
        if i % 1000 == 0:
            line = b"%d " % i + line
        chunks.append(line)
        total += len(line)
        i += 1
    return b"".join(chunks)


def carol_messages(big: bool = True) -> Dict[str, bytes]:
    """Special messages, in UID order (dict preserves insertion order)."""
    m: Dict[str, bytes] = {}
    h = lambda subj: ("From: x@example.org\r\nTo: carol@example.org\r\n"
                      "Subject: %s\r\n" % subj).encode()
    m["dots"] = h("dots") + (
        b"\r\n"
        b".starts with a dot\r\n"
        b"..two dots\r\n"
        b".\r\n"
        b"middle . dot\r\n"
        b" .space dot\r\n"
        b"...\r\n"
        b".\r\n"
        b"last line\r\n")
    m["latin1"] = h("latin1") + (
        b"Content-Type: text/plain; charset=iso-8859-1\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\n"
        b"Gr\xfc\xdfe aus K\xf6ln, \xe9t\xe9, \xa9 \xff\xfe\x80\x81\r\n"
        b"\xe4\xf6\xfc\xc4\xd6\xdc\r\n")
    m["utf8"] = h("=?UTF-8?B?w6TDtsO8?=") + (
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\n"
        + "Grüße aus Köln — ☃ 日本語 😀\r\n".encode("utf-8")
        + "Ünïcödé line two\r\n".encode("utf-8"))
    m["bare_lf"] = (b"From: x@example.org\nTo: carol@example.org\nSubject: bare lf\n\n"
                    b"line one\n.dot line\nline three\n\nafter empty\n")
    m["no_trailing_newline"] = h("no trailing newline") + b"\r\nbody without final newline"
    m["headers_blank_only"] = h("headers blank only") + b"\r\n"
    m["headers_no_blank"] = h("headers no blank")
    m["long_line"] = h("long line") + b"\r\n" + (b"x" * 12000) + b"\r\n" + \
        b"." + (b"y" * 10500) + b"\r\nend\r\n"
    m["ends_with_dot_no_newline"] = h("ends with dot") + b"\r\nsome text\r\n."
    m["mixed_endings"] = h("mixed endings") + b"\r\nCRLF line\r\nLF line\n.LF dot\nCRLF again\r\n"
    if big:
        m["big20"] = big_message()
    return m


def bob_message(n: int) -> bytes:
    return ("From: a@example.org\r\nTo: bob@example.org\r\nSubject: bob %d\r\n"
            "Message-ID: <bob-%d@testbed>\r\n\r\nhello %d\r\n" % (n, n, n)).encode()


def demo_messages() -> List[bytes]:
    return [
        b"From: Postmaster <postmaster@example.org>\r\nTo: demo@example.org\r\n"
        b"Subject: Welcome to pop3server\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\n"
        b"Message-ID: <demo-1@testbed>\r\n\r\n"
        b"This message lives in IMAP (Dovecot) and was fetched over POP3.\r\n",
        b"From: Alice <alice@example.org>\r\nTo: demo@example.org\r\n"
        b"Subject: Lines with dots\r\nDate: Mon, 1 Jan 2024 11:00:00 +0000\r\n"
        b"Message-ID: <demo-2@testbed>\r\n\r\n"
        b"The next line is a single dot, stuffed on the wire:\r\n.\r\n"
        b".and this one starts with a dot.\r\n",
        "From: Bob <bob@example.org>\r\nTo: demo@example.org\r\n"
        "Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?=\r\nDate: Mon, 1 Jan 2024 12:00:00 +0000\r\n"
        "Message-ID: <demo-3@testbed>\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\n"
        "Grüße — 8-bit UTF-8 text passes through byte for byte.\r\n".encode("utf-8"),
    ]


# ----- CLI (used by scripts/demo.sh) ---------------------------------------------

def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("start-demo", help="start Dovecot with user demo/demo")
    a.add_argument("--dir", required=True)
    a.add_argument("--port", type=int, default=10143)
    a.add_argument("--imaps-port", type=int, default=10993)
    s = sub.add_parser("stop", help="stop the Dovecot rooted at --dir")
    s.add_argument("--dir", required=True)
    args = ap.parse_args(argv)
    if args.cmd == "start-demo":
        dc = Dovecot(args.dir, port=args.port, imaps_port=args.imaps_port)
        dc.add_user("demo", "demo", demo_messages())
        dc.start()
        print("dovecot: 127.0.0.1:%d (STARTTLS), IMAPS 127.0.0.1:%d (config %s, master pid %s)"
              % (dc.port, dc.imaps_port, dc.conf, dc.master_pid()))
        print("demo CA: %s; certificate for 127.0.0.1 and localhost: %s, key %s"
              % (dc.tls["ca"], dc.tls["cert"], dc.tls["key"]))
        return 0
    if args.cmd == "stop":
        stop_dovecot(os.path.abspath(args.dir))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
