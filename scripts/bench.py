#!/usr/bin/env python3
"""Benchmark pop3server against its peers on one machine, in one run.

Every system serves the same maildirs of one private Dovecot:

  A  pop3server, one process per connection (systemd-socket-activate
     --inetd), proxying to Dovecot's IMAP port; snapshot cache on
  B  Dovecot's native POP3 server (dovecot-pop3d) on the same instance
  C  perdition, a POP3 proxy, in front of B
  D  a direct IMAP client in Python doing the same work over IMAP (LOGIN,
     SELECT, UID FETCH 1:* (UID RFC822.SIZE), UID FETCH n BODY.PEEK[]):
     the floor for any design that serves POP3 from IMAP
  E  a second Dovecot whose POP3 reads the first one over IMAP (imapc):
     Dovecot's own POP3-to-IMAP translator
  S  A with `stats_socket` set and the aggregator (`pop3server --stats`)
     running: A/S is what the statistics cost a session (within the noise,
     it should be 1.00)

Workloads (the same client code for every POP3 system):

  greeting    connect() to the greeting line (per connection)
  index-cold  login, STAT, UIDL, LIST, QUIT on 10,000 messages; A's snapshot
              cache and E's imapc index removed before each session (B, C,
              D keep no cache of their own: their cold is their warm)
  index-warm  the same after one session, nothing new
  download    login, RETR 1..1000 (1-50 KiB each), QUIT
  big         login, RETR 1 of one 100 MiB message, QUIT
  churn       short sessions in a row (login, STAT, QUIT), per session
  churn-rtt   the same through a relay adding 10 ms each way (20 ms RTT)
  parallel    20 clients at once on 20 users (login, STAT, UIDL, LIST,
              RETR 1..20, QUIT each), until all are done

The mail is written once per run; then each system reads every mailbox once
(untimed), and the systems take turns round by round (A B C D E A B C D E
...). The table shows each system's median per workload (greeting: over all
its connections) and the ratios of A to each peer (lower is better for A).
A peer that cannot be started, or fails a workload, is reported in one line
and shown as "-". A system whose next round would take it past a time budget
per workload (75 s, --quick 15 s) keeps the rounds it had, marked "*".
Also printed: pop3server's binary size, and the peak RSS (sampled VmHWM) and
CPU time of its session process in extra, untimed sessions (big RETR, cold
10,000-message index, download), where sampling cannot disturb the timing.

And the statistics aggregator (`pop3server --stats`, no Dovecot needed):
its resident memory at start and after 100,000 sessions' worth of
synthetic events (start, login, backend login, end: 400,000 datagrams, and
a token request every 100 sessions) sent from here to its socket, and
how fast it took them in. `--only aggregator` measures that alone, in
seconds.

Usage: scripts/bench.py [--quick] [--rounds N] [--only W[,W..]] [--binary PATH]
                        [--keep]   (as root; scripts/bench.sh installs and builds)
"""

import argparse
import os
import pwd
import queue
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import testbed  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IO_TIMEOUT = 60.0
PASSWORD = "secret"
SOCKET_ACTIVATE = "/usr/bin/systemd-socket-activate"
PERDITION = "/usr/sbin/perdition"
DOVECOT_POP3 = "/usr/lib/dovecot/pop3"
# Not in Python's socket module before 3.12: lets bind() to 127.0.0.1 leave
# the port to connect(), which can then share ports across destinations
# (thousands of churn connections would otherwise run out of ports).
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)

WORKLOADS = ["greeting", "index-cold", "index-warm", "download", "big",
             "churn", "churn-rtt", "parallel"]
# Measured beside the table, not in it.
AGGREGATOR = "aggregator"
AGGREGATOR_SESSIONS = 100_000
# The events of one session: as many backends, ends and TLS versions as a
# site with a few routes has.
AGGREGATOR_BACKENDS = ["default", "east", "m365"]
AGGREGATOR_ENDS = ["quit", "quit", "quit", "timeout", "disconnect", "refused"]
AGGREGATOR_TIME_LIMIT = 120.0
# Per-run sizes; the full run takes about 8 minutes on 2 cores, --quick
# under 2 (see the report printed at the end for this machine's numbers).
FULL = dict(rounds=7, greetings=10, churn=300, churn_rtt=40, cell_budget=75.0)
QUICK = dict(rounds=3, greetings=10, churn=50, churn_rtt=5, cell_budget=15.0)
INDEX_MESSAGES = 10000
DOWNLOAD_MESSAGES = 1000
BIG_SIZE = 100 * 1024 * 1024
PARALLEL_USERS = 20
PARALLEL_MESSAGES = 30
PARALLEL_RETR = 20
RTT_DELAY = 0.010  # one way; 20 ms round trip

# B: Dovecot's own POP3 on the testbed's instance. Its login processes are
# kept ready as the testbed keeps imap-login's (process_min_avail = 1), so
# B and D start sessions alike.
POP3_CONFIG = """
protocols = imap pop3
pop3_uidl_format = %08Xu%08Xv
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
  process_min_avail = 1
}}
service pop3 {{
  process_limit = 1024
}}
protocol pop3 {{
  mail_max_userip_connections = 1000
}}
"""

# E: a second instance (own base_dir, instance_name, ports) serving POP3
# from the first one's IMAP port. The POP3 login is checked by an IMAP login
# to the backend (passdb imap), and the same credentials are handed on to
# the imapc storage; ~/imapc holds only imapc's local index cache.
IMAPC_CONFIG = """\
# Dovecot's POP3-to-IMAP translator for scripts/bench.py
instance_name = pop3bench-imapc
protocols = pop3
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
info_log_path = {d}/dovecot.log
ssl = no
disable_plaintext_auth = no
login_trusted_networks = 127.0.0.0/8
auth_mechanisms = plain login
auth_failure_delay = 0
mail_max_userip_connections = 1000
first_valid_uid = {uid}
last_valid_uid = 0
first_valid_gid = {gid}
mail_location = imapc:~/imapc
mail_privileged_group =
default_login_user = dovenull
default_internal_user = dovecot
imapc_host = 127.0.0.1
imapc_port = {imap_port}
imapc_features = rfc822.size fetch-headers
pop3_uidl_format = %08Xu%08Xv
passdb {{
  driver = imap
  args = host=127.0.0.1 port={imap_port}
  default_fields = userdb_imapc_user=%u userdb_imapc_password=%w
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={d}/home/%u
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
  process_min_avail = 1
}}
service pop3 {{
  process_limit = 1024
  # imapc holds a whole FETCH literal in memory: the 100 MiB message needs
  # more than the default 256 MB of address space.
  vsz_limit = 1G
}}
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
protocol pop3 {{
  mail_max_userip_connections = 1000
}}
"""


def log(text):
    print(text, file=sys.stderr, flush=True)


# ----- clients ----------------------------------------------------------------

def connect(port):
    """A client socket from 127.0.0.1 to 127.0.0.1:port, with a read timeout."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(IO_TIMEOUT)
        sock.connect(("127.0.0.1", port))
    except OSError:
        sock.close()
        raise
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class Pop3:
    """Just enough of a POP3 client to time sessions; reads multi-line
    replies to their end without keeping them."""

    def __init__(self, port):
        self.sock = connect(port)
        self.buf = b""
        greeting = self.line()
        if not greeting.startswith(b"+OK"):
            raise RuntimeError("greeting: %r" % greeting)

    def line(self):
        while b"\r\n" not in self.buf:
            data = self.sock.recv(1 << 16)
            if not data:
                raise RuntimeError("connection closed")
            self.buf += data
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def cmd(self, text, multi=False):
        self.sock.sendall(text.encode() + b"\r\n")
        status = self.line()
        if not status.startswith(b"+OK"):
            raise RuntimeError("%s: %r" % (text.split()[0], status))
        if not multi:
            return
        # The status line's CRLF precedes the body: an empty body is "\r\n.\r\n" too.
        data = b"\r\n" + self.buf
        while True:
            end = data.find(b"\r\n.\r\n")
            if end >= 0:
                self.buf = data[end + 5:]
                return
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise RuntimeError("connection closed in multi-line reply")
            data = data[-4:] + chunk

    def close(self):
        self.sock.close()


class Imap:
    """Just enough of an IMAP client for D: tagged commands whose responses
    are scanned, not parsed; literals are skipped by their count, so a
    message body is never searched for the tag."""

    def __init__(self, port):
        self.sock = connect(port)
        self.buf = b""
        self.tag = 0
        while b"\r\n" not in self.buf:
            self.buf += self._recv()
        greeting, self.buf = self.buf.split(b"\r\n", 1)
        if not greeting.startswith(b"* OK"):
            raise RuntimeError("greeting: %r" % greeting)

    def _recv(self):
        data = self.sock.recv(1 << 20)
        if not data:
            raise RuntimeError("connection closed")
        return data

    def cmd(self, text):
        self.tag += 1
        tag = b"a%d" % self.tag
        self.sock.sendall(tag + b" " + text.encode() + b"\r\n")
        # Either a literal's announcement or the tagged status line; the
        # latter begins a line, and a buffer always starts at a line start
        # or just after a literal (where the tag cannot be).
        marks = re.compile(rb"\{(\d+)\}\r\n|(?:^|\r\n)" + tag + rb" ([^\r\n]*)\r\n")
        buf = self.buf
        while True:
            m = marks.search(buf)
            if m is None:
                # Keep only the unfinished last line, so scanning stays linear.
                cut = buf.rfind(b"\r\n")
                if cut > 0:
                    buf = buf[cut:]
                buf += self._recv()
                continue
            if m.group(1) is None:
                self.buf = buf[m.end():]
                if not m.group(2).startswith(b"OK"):
                    raise RuntimeError("%s: %r" % (text.split()[0], m.group(2)))
                return
            need = int(m.group(1))
            rest = buf[m.end():]
            if len(rest) >= need:
                buf = rest[need:]
                continue
            need -= len(rest)
            while True:
                data = self._recv()
                if len(data) >= need:
                    buf = data[need:]
                    break
                need -= len(data)

    def close(self):
        self.sock.close()


def read_greeting(port):
    """Seconds from connect() to the end of the greeting line."""
    t = time.perf_counter()
    sock = connect(port)
    try:
        buf = b""
        while b"\r\n" not in buf:
            data = sock.recv(4096)
            if not data:
                raise RuntimeError("closed before the greeting")
            buf += data
        return time.perf_counter() - t
    finally:
        sock.close()


def session(system, user, port=None, stat=True, listing=False, retr=()):
    """One client session of the workload's shape, over POP3 or (D) IMAP."""
    port = port or system.port
    if system.proto == "pop3":
        p = Pop3(port)
        p.cmd("USER " + user)
        p.cmd("PASS " + PASSWORD)
        if stat:
            p.cmd("STAT")
        if listing:
            p.cmd("UIDL", multi=True)
            p.cmd("LIST", multi=True)
        for n in retr:
            p.cmd("RETR %d" % n, multi=True)
        p.cmd("QUIT")
        p.close()
        return
    # What any POP3-from-IMAP design must at least ask: the UID list and
    # sizes give STAT, UIDL and LIST at once. UIDs equal message numbers
    # here (fresh maildirs, nothing expunged), so RETR n is UID FETCH n.
    c = Imap(port)
    c.cmd("LOGIN %s %s" % (user, PASSWORD))
    c.cmd("SELECT INBOX")
    c.cmd("UID FETCH 1:* (UID RFC822.SIZE)")
    for n in retr:
        c.cmd("UID FETCH %d BODY.PEEK[]" % n)
    c.cmd("LOGOUT")
    c.close()


# ----- a relay that adds latency ------------------------------------------------

class DelayRelay:
    """Forwards 127.0.0.1:self.port to 127.0.0.1:target and delivers each
    chunk `delay` seconds after it arrived, in both directions. Each chunk
    carries its own due time in a queue per direction, so delays overlap
    instead of adding up. The TCP handshake itself is not delayed (the same
    for every system)."""

    def __init__(self, target, delay=RTT_DELAY):
        self.target, self.delay = target, delay
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(64)
        self.lsock.settimeout(0.2)
        self.port = self.lsock.getsockname()[1]
        self.stopping = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self.stopping:
            try:
                client, _ = self.lsock.accept()
            except OSError:
                continue
            client.settimeout(IO_TIMEOUT)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                upstream = connect(self.target)
            except OSError:
                client.close()
                continue
            pair = {"open": 2, "lock": threading.Lock(), "socks": (client, upstream)}
            for src, dst in ((client, upstream), (upstream, client)):
                q = queue.Queue()
                threading.Thread(target=self._read, args=(src, q), daemon=True).start()
                threading.Thread(target=self._write, args=(dst, q, pair), daemon=True).start()

    def _read(self, src, q):
        try:
            while True:
                data = src.recv(1 << 16)
                q.put((time.monotonic() + self.delay, data))
                if not data:
                    return
        except OSError:
            q.put((time.monotonic() + self.delay, b""))

    def _write(self, dst, q, pair):
        try:
            while True:
                due, data = q.get(timeout=IO_TIMEOUT)
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    break
                dst.sendall(data)
        except (OSError, queue.Empty):
            # One side is gone: wake the readers of both sides.
            for s in pair["socks"]:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        with pair["lock"]:
            pair["open"] -= 1
            last = pair["open"] == 0
        if last:
            for s in pair["socks"]:
                s.close()

    def stop(self):
        self.stopping = True
        self.thread.join(timeout=5)
        self.lsock.close()


# ----- the systems ---------------------------------------------------------------

class System:
    """One column of the table: a port speaking POP3 (or IMAP, for D), and
    what makes it cold for a user."""

    def __init__(self, key, name, proto):
        self.key, self.name, self.proto = key, name, proto
        self.port = None
        self.why = None  # why it is not available
        self.cold = lambda user: None
        self.stop = lambda: None


def wait_listening(port, proc=None, seconds=10.0):
    return testbed.wait_for_port(port, tries=int(seconds / 0.05), delay=0.05, proc=proc)


def start_pop3server(system, work, binary, imap_port, stats=False):
    if not os.access(binary, os.X_OK):
        system.why = "no binary at %s (cargo build --release)" % binary
        return
    if not os.access(SOCKET_ACTIVATE, os.X_OK):
        system.why = "no %s (apt-get install systemd)" % SOCKET_ACTIVATE
        return
    name = "pop3server-" + system.key
    cache = os.path.join(work, name + "-cache")
    locks = os.path.join(work, name + "-locks")
    # As deployed: the units start sessions as the user pop3server, so the
    # sessions never have root to drop (that path has tests of its own).
    as_user = []
    if os.geteuid() == 0:
        try:
            account = pwd.getpwnam("pop3server")
        except KeyError:
            system.why = "no user pop3server (scripts/bench.sh creates it)"
            return
        for d in (cache, locks):
            os.makedirs(d, exist_ok=True)
            os.chown(d, account.pw_uid, account.pw_gid)
        as_user = ["setpriv", "--reuid", "pop3server", "--regid", "pop3server",
                   "--clear-groups", "--"]
    port = testbed.free_port()
    # Where the sessions send their events: a socket that exists (S, the
    # aggregator's) or one that does not (A: no aggregator runs).
    stats_socket = os.path.join(work, name + "-stats", "stats.sock")
    aggregator = None
    if stats:
        os.makedirs(os.path.dirname(stats_socket), exist_ok=True)
        if as_user:
            os.chown(os.path.dirname(stats_socket), account.pw_uid, account.pw_gid)
        alog = open(os.path.join(work, name + "-aggregator.log"), "ab")
        system.metrics_port = testbed.free_port()
        aggregator = subprocess.Popen(
            as_user + [binary, "--stats", "--config", "/dev/null", "--log", "stderr",
                       "--stats-socket", stats_socket,
                       "--metrics-listen", "127.0.0.1:%d" % system.metrics_port],
            stdin=subprocess.DEVNULL, stdout=alog, stderr=alog)
        alog.close()
        for _ in range(200):  # 10 s
            if os.path.exists(stats_socket) or aggregator.poll() is not None:
                break
            time.sleep(0.05)
        if not os.path.exists(stats_socket):
            system.why = "the aggregator did not start (see %s-aggregator.log)" % name
            stop_process(aggregator)
            return
    logf = open(os.path.join(work, name + ".log"), "ab")
    proc = subprocess.Popen(
        as_user + [SOCKET_ACTIVATE, "--accept", "--inetd", "-l", "127.0.0.1:%d" % port, binary,
         "--config", "/dev/null", "--backend-host", "127.0.0.1",
         "--backend-port", str(imap_port), "--backend-tls", "none",
         "--lock-dir", locks, "--cache-dir", cache, "--stats-socket", stats_socket,
         "--log", "stderr"],
        stdin=subprocess.DEVNULL, stdout=logf, stderr=logf)
    logf.close()

    def stop():
        stop_process(proc)
        if aggregator:
            stop_process(aggregator)
    system.stop = stop
    # The probe connection starts (and ends) one session: harmless.
    if not wait_listening(port, proc):
        system.why = "systemd-socket-activate did not listen (see %s.log)" % name
        system.stop()
        return
    system.port, system.proc = port, proc

    def cold(user):
        # The cache dir belongs to the session user; only its files go.
        if os.path.isdir(cache):
            for name in os.listdir(cache):
                path = os.path.join(cache, name)
                if os.path.isdir(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    os.unlink(path)
    system.cold = cold


def start_perdition(system, work, pop3_port):
    if not os.access(PERDITION, os.X_OK):
        system.why = "perdition is not installed (apt-get install perdition)"
        return
    if pop3_port is None:
        system.why = "needs B (Dovecot's POP3), which is not available"
        return
    port = testbed.free_port()
    logf = open(os.path.join(work, "perdition.log"), "ab")
    # No map library: every user goes to the one outgoing server. Two
    # spaces separate capabilities in --pop_capability.
    proc = subprocess.Popen(
        [PERDITION, "--no_daemon", "-M", "", "--protocol", "POP3", "--no_lookup",
         "--bind_address", "127.0.0.1", "--listen_port", str(port),
         "--outgoing_server", "127.0.0.1", "--outgoing_port", str(pop3_port),
         "--ssl_mode", "none", "--pid_file", "",
         "--pop_capability", "TOP  UIDL  USER  RESP-CODES  PIPELINING"],
        stdin=subprocess.DEVNULL, stdout=logf, stderr=logf)
    logf.close()
    system.stop = lambda: stop_process(proc)
    if not wait_listening(port, proc):
        system.why = "perdition did not listen (exit %s, see perdition.log)" % proc.poll()
        system.stop()
        return
    system.port = port


def start_imapc(system, work, main):
    if not os.path.exists(DOVECOT_POP3):
        system.why = "dovecot-pop3d is not installed"
        return
    d = os.path.join(work, "imapc")
    home = os.path.join(d, "home")
    for sub in ("run", "state", "home"):
        os.makedirs(os.path.join(d, sub), exist_ok=True)
    os.chmod(d, 0o755)
    os.chown(home, main.uid, main.gid)
    port = testbed.free_port()
    with open(os.path.join(d, "dovecot.conf"), "w") as f:
        f.write(IMAPC_CONFIG.format(d=d, uid=main.uid, gid=main.gid,
                                    imap_port=main.port, port=port))
    system.stop = lambda: testbed.stop_dovecot(d)
    # Dovecot daemonizes: its children must not inherit a pipe of ours.
    errfile = os.path.join(d, "dovecot.start.err")
    with open(errfile, "wb") as err:
        r = subprocess.run([testbed.find_dovecot(), "-c", os.path.join(d, "dovecot.conf")],
                           stdin=subprocess.DEVNULL, stdout=err, stderr=err, timeout=30)
    if r.returncode != 0 or not wait_listening(port):
        with open(errfile, errors="replace") as f:
            system.why = "the imapc Dovecot did not start: %s" % (
                f.read().strip() or "no listener (see imapc/dovecot.log)")
        system.stop()
        return
    system.port = port
    system.cold = lambda user: shutil.rmtree(os.path.join(home, user), ignore_errors=True)


def stop_process(proc):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# ----- mail ------------------------------------------------------------------------

def download_messages():
    """1,000 messages of 1-50 KiB; the sizes come from a fixed seed."""
    rnd = random.Random(1000)
    for n in range(1, DOWNLOAD_MESSAGES + 1):
        size = rnd.randint(1024, 50 * 1024)
        head = ("From: a@example.org\r\nTo: dl@example.org\r\nSubject: download %d\r\n"
                "Message-ID: <dl-%d@testbed>\r\n\r\n" % (n, n)).encode()
        line = b"%05d " % n + b"0123456789abcdef" * 4 + b"\r\n"
        body = line * ((size - len(head)) // len(line) + 1)
        yield head + body[:size - len(head) - 2] + b"\r\n"


def add_user(dc, name, messages):
    """A user whose maildir file names look like those Dovecot itself
    writes: <secs>.M<usecs>P<pid>.<host>,S=<size>,W=<virtual size>.

    Two reasons. Sizes in the name cost no file reads, as on a real server.
    And the testbed's names (<secs>.M<n>P1.testbed) are so alike that they
    collide in Dovecot's file-name hash: reading dovecot-uidlist of 10,000
    of them takes about 0.6 s of CPU (the first SELECT about 1 s), which
    would swamp every IMAP-backed number here; varied M and P parts bring
    that to about 20 ms. The seconds part still grows with n, so name order
    (= UID order) is unchanged.

    Every message is \\Seen already, so that RETR's \\Seen (A, B, C, E set
    it; D peeks) changes nothing: every round and system sees the same
    maildir."""
    dc.add_user(name, PASSWORD, messages)
    cur = os.path.join(dc.maildir(name), "cur")
    rnd = random.Random(name)
    for fn in sorted(os.listdir(cur)):
        secs = fn.split(".", 1)[0]
        path = os.path.join(cur, fn)
        with open(path, "rb") as f:
            data = f.read()
        vsize = len(data) + data.count(b"\n") - data.count(b"\r\n")
        new = "%s.M%dP%d.mail.example.org,S=%d,W=%d:2,S" % (
            secs, rnd.randrange(1000000), rnd.randrange(2, 4000000), len(data), vsize)
        os.rename(path, os.path.join(cur, new))


# ----- peak RSS of A's session -------------------------------------------------------

def children(pid):
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.add(int(entry))
    return found


def cpu_ns(pid):
    """CPU time so far of all threads of pid (schedstat: nanoseconds)."""
    total = 0
    for task in os.listdir("/proc/%d/task" % pid):
        with open("/proc/%d/task/%s/schedstat" % (pid, task)) as f:
            total += int(f.read().split()[0])
    return total


def probe_session(parent, run):
    """Runs run() while sampling the new child of `parent` (A's session
    process, forked by systemd-socket-activate): returns its peak RSS
    (VmHWM, KiB) and CPU time (ms), the last values seen before the
    process ended (VmHWM only grows; the CPU time misses the last few
    milliseconds at most)."""
    before = children(parent)
    done = threading.Event()
    seen = {"hwm": 0, "cpu": 0}

    def sample():
        pid = None
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if pid is None:
                new = children(parent) - before
                if not new:
                    if done.is_set():
                        return
                    time.sleep(0.002)
                    continue
                pid = min(new)
            try:
                with open("/proc/%d/status" % pid) as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            seen["hwm"] = max(seen["hwm"], int(line.split()[1]))
                seen["cpu"] = max(seen["cpu"], cpu_ns(pid))
            except (OSError, ValueError, IndexError):
                return  # the session process has ended
            time.sleep(0.005)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        run()
    finally:
        done.set()
        t.join(timeout=15)
    return seen["hwm"], seen["cpu"] / 1e6


# ----- workloads ---------------------------------------------------------------------

class Workload:
    """prepare(system) once before the rounds (untimed), then per round and
    system measure(system) -> list of samples in seconds."""

    def __init__(self, name, measure, prepare=None, unit="ms"):
        self.name, self.measure, self.prepare, self.unit = name, measure, prepare, unit


def timed(fn, *args, **kw):
    t = time.perf_counter()
    fn(*args, **kw)
    return time.perf_counter() - t


def make_workloads(sizes, deadline):
    def check_time():
        if time.monotonic() > deadline:
            raise RuntimeError("run time limit reached")

    def greeting(s):
        # A pause before each connection: every server meets it at rest
        # (Dovecot's next login process is forked once one is taken).
        times = []
        for _ in range(sizes["greetings"]):
            time.sleep(0.02)
            times.append(read_greeting(s.port))
        return times

    def index_cold(s):
        s.cold("bob")
        return [timed(session, s, "bob", listing=True)]

    def index_warm(s):
        return [timed(session, s, "bob", listing=True)]

    def download(s):
        return [timed(session, s, "dl", stat=False, retr=range(1, DOWNLOAD_MESSAGES + 1))]

    def big(s):
        return [timed(session, s, "big", stat=False, retr=[1])]

    def churn_n(s, n, port=None):
        t = time.perf_counter()
        for _ in range(n):
            check_time()
            session(s, "churn", port=port)
        return [(time.perf_counter() - t) / n]

    relays = {}

    def churn_rtt(s):
        if s.key not in relays:
            relays[s.key] = DelayRelay(s.port)
        return churn_n(s, sizes["churn_rtt"], port=relays[s.key].port)

    def parallel(s):
        errors = []
        start = threading.Barrier(PARALLEL_USERS + 1, timeout=IO_TIMEOUT)

        def client(user):
            try:
                start.wait()
                session(s, user, listing=True, retr=range(1, PARALLEL_RETR + 1))
            except Exception as e:  # reported below, after all have ended
                errors.append(e)

        threads = [threading.Thread(target=client, args=("p%02d" % i,), daemon=True)
                   for i in range(1, PARALLEL_USERS + 1)]
        for t in threads:
            t.start()
        start.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join(timeout=IO_TIMEOUT * 2)
        elapsed = time.perf_counter() - t0
        if errors or any(t.is_alive() for t in threads):
            raise RuntimeError("%d of %d clients failed: %s" % (
                len(errors), PARALLEL_USERS, errors[0] if errors else "timeout"))
        return [elapsed]

    workloads = [
        Workload("greeting", greeting),
        Workload("index-cold", index_cold),
        Workload("index-warm", index_warm, prepare=lambda s: session(s, "bob", listing=True)),
        Workload("download", download),
        Workload("big", big),
        Workload("churn", lambda s: churn_n(s, sizes["churn"]), unit="ms/session"),
        Workload("churn-rtt", churn_rtt, unit="ms/session"),
        Workload("parallel", parallel),
    ]
    return workloads, relays


# ----- the statistics aggregator -------------------------------------------------------

def rss_kib(pid, field="VmRSS"):
    with open("/proc/%d/status" % pid) as f:
        for ln in f:
            if ln.startswith(field + ":"):
                return int(ln.split()[1])
    raise RuntimeError("no %s for pid %d" % (field, pid))


def aggregator_events(i):
    """The datagrams of synthetic session i."""
    backend = AGGREGATOR_BACKENDS[i % len(AGGREGATOR_BACKENDS)]
    end = AGGREGATOR_ENDS[i % len(AGGREGATOR_ENDS)]
    login = "failed" if i % 20 == 0 else "ok"
    tls = " tls=TLSv1.3" if i % 2 else ""
    out = [b"pop3server-stats 1 session-start",
           b"pop3server-stats 1 login method=USER result=" + login.encode(),
           b"pop3server-stats 1 backend-login backend=%s seconds=0.%06d"
           % (backend.encode(), (i * 7919) % 1000000),
           b"pop3server-stats 1 session-end end=%s%s retrieved=%d retrieved_bytes=%d deleted=%d "
           b"seconds=%d.250000" % (end.encode(), tls.encode(), i % 5, (i % 5) * 20000, i % 3,
                                   i % 700)]
    if i % 100 == 0:
        out.append(b"pop3server-stats 1 token source=m365 grant=client_credentials result=ok "
                   b"seconds=0.150000 expires=%d" % (1800000000 + i))
    return out


def scrape(port):
    sock = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)
    try:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        data = b""
        while True:
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            data += chunk
    finally:
        sock.close()
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200 "):
        raise RuntimeError("scrape: %r" % head[:80])
    return body.decode()


def sessions_counted(port):
    m = re.search(r"^pop3server_sessions_started_total (\d+)$", scrape(port), re.M)
    return int(m.group(1)) if m else -1


def measure_aggregator(binary, work):
    """The aggregator's RSS at start and after AGGREGATOR_SESSIONS
    sessions' events; returns the lines to print."""
    sock_path = os.path.join(work, "stats.sock")
    port = testbed.free_port()
    logf = open(os.path.join(work, "aggregator.log"), "ab")
    proc = subprocess.Popen([binary, "--stats", "--stats-socket", sock_path,
                             "--metrics-listen", "127.0.0.1:%d" % port, "--config", "/dev/null",
                             "--log", "stderr"],
                            stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + AGGREGATOR_TIME_LIMIT
        while True:
            try:
                if sessions_counted(port) == 0:
                    break
            except (OSError, RuntimeError):
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the aggregator did not come up (see %s)" % logf.name)
            time.sleep(0.05)
        rss_start = rss_kib(proc.pid)
        sent = 0
        t = time.perf_counter()
        # Blocking sends: a full queue makes this wait for the aggregator
        # instead of losing datagrams.
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.settimeout(IO_TIMEOUT)
            s.connect(sock_path)
            for i in range(AGGREGATOR_SESSIONS):
                for d in aggregator_events(i):
                    s.send(d)
                    sent += 1
                if i % 1000 == 0 and time.monotonic() > deadline:
                    raise RuntimeError("sending took over %.0f s" % AGGREGATOR_TIME_LIMIT)
        while sessions_counted(port) != AGGREGATOR_SESSIONS:
            if time.monotonic() > deadline:
                raise RuntimeError("the aggregator counted %d of %d sessions"
                                   % (sessions_counted(port), AGGREGATOR_SESSIONS))
            time.sleep(0.05)
        elapsed = time.perf_counter() - t
        t = time.perf_counter()
        page = scrape(port)
        scrape_ms = (time.perf_counter() - t) * 1000
        rss_end, hwm = rss_kib(proc.pid), rss_kib(proc.pid, "VmHWM")
        return ["aggregator (pop3server --stats): RSS %.2f MiB at start, %.2f MiB after "
                "%d sessions (%d datagrams), %.2f times; peak %.2f MiB"
                % (rss_start / 1024.0, rss_end / 1024.0, AGGREGATOR_SESSIONS, sent,
                   rss_end / float(rss_start), hwm / 1024.0),
                "aggregator: took %d datagrams in %.1f s (%.0f/s, the sender in Python the "
                "slower side); a scrape %.1f ms, %d bytes"
                % (sent, elapsed, sent / elapsed, scrape_ms, len(page))]
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        logf.close()


# ----- the run -----------------------------------------------------------------------

def fmt_ms(seconds):
    if seconds is None:
        return "-"
    ms = seconds * 1000.0
    return "%.0f" % ms if ms >= 100 else "%.1f" % ms if ms >= 10 else "%.2f" % ms


def print_table(workloads, systems, medians, rounds, short):
    peers = [s for s in systems if s.key != "A"]
    head = ["workload"] + [s.key for s in systems] + ["A/%s" % s.key for s in peers]
    rows = []
    for w in workloads:
        row = [w.name + (" (%s)" % w.unit if w.unit != "ms" else "")]
        a = medians.get((w.name, "A"))
        for s in systems:
            row.append(fmt_ms(medians.get((w.name, s.key)))
                       + ("*" if (w.name, s.key) in short else ""))
        for s in peers:
            m = medians.get((w.name, s.key))
            if a is None or not m:
                row.append("-")
            else:
                row.append("%.3f" % (a / m) if a / m < 0.1 else "%.2f" % (a / m))
        rows.append(row)
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    print("\nmedian of %d rounds, milliseconds (ratios: lower is better for A)" % rounds)
    for r in [head] + rows:
        print(r[0].ljust(widths[0]) + "".join("  " + c.rjust(widths[i + 1])
                                             for i, c in enumerate(r[1:])))
    for (w, key), n in sorted(short.items()):
        print("* %s on %s: %d of %d rounds (over its time budget)" % (w, key, n, rounds))


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 rounds, fewer churn sessions")
    ap.add_argument("--rounds", type=int, help="rounds per workload (default 7, --quick 3)")
    ap.add_argument("--only", help="comma-separated workloads: " + ",".join(WORKLOADS + [AGGREGATOR]))
    ap.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "pop3server"),
                    help="the pop3server to measure (scripts/bench.sh passes its static release build)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (logs, mail)")
    args = ap.parse_args()
    sizes = dict(QUICK if args.quick else FULL)
    rounds = max(1, min(args.rounds or sizes["rounds"], 50))
    selected = WORKLOADS
    if args.only:
        selected = [w.strip() for w in args.only.split(",") if w.strip()]
        unknown = [w for w in selected if w not in WORKLOADS + [AGGREGATOR]]
        if unknown:
            ap.error("unknown workload(s): %s" % ", ".join(unknown))
    aggregator = AGGREGATOR in selected or not args.only
    selected = [w for w in selected if w != AGGREGATOR]
    binary = os.path.abspath(args.binary)
    if os.geteuid() != 0:
        print("bench.py must run as root (Dovecot drops privileges; see bench.sh)", file=sys.stderr)
        return 2

    # A run stopped by SIGTERM or SIGHUP (kill, a closed terminal) still
    # stops the Dovecots and servers it started: the finally below runs.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: sys.exit(128 + signum))

    t_start = time.monotonic()
    if not selected:
        work = tempfile.mkdtemp(prefix="pop3bench.")
        try:
            for line in measure_aggregator(binary, work):
                print(line)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return 0
    # A hard stop far beyond the expected run time, so a hung peer cannot
    # keep the run going forever (each socket read also times out).
    deadline = t_start + (10 if args.quick else 30) * 60 * max(1.0, rounds / sizes["rounds"])
    work = tempfile.mkdtemp(prefix="pop3bench.")
    os.chmod(work, 0o755)
    # S takes its turn right after A, so that both meet the same machine
    # (a peer's leftovers, E's imapc logouts say, would fall on S alone).
    systems = [System("A", "pop3server (per connection, systemd-socket-activate)", "pop3"),
               System("S", "A with stats_socket set, the aggregator running", "pop3"),
               System("B", "Dovecot POP3 (native)", "pop3"),
               System("C", "perdition -> B", "pop3"),
               System("D", "direct IMAP client (Python) -> Dovecot IMAP", "imap"),
               System("E", "Dovecot POP3 imapc -> Dovecot IMAP", "pop3")]
    A, S, B, C, D, E = systems
    dc = testbed.Dovecot(os.path.join(work, "dovecot"), tls=False)
    ok = False
    relays = {}
    try:
        pop3_port = testbed.free_port()
        if os.path.exists(DOVECOT_POP3):
            with open(dc.conf, "a") as f:
                f.write(POP3_CONFIG.format(port=pop3_port))
        else:
            B.why = "dovecot-pop3d is not installed"
        # The mail is written once per run, only for the workloads chosen.
        t = time.monotonic()
        log("generating mailboxes ...")
        if {"index-cold", "index-warm"} & set(selected):
            add_user(dc, "bob", (testbed.bob_message(n) for n in range(1, INDEX_MESSAGES + 1)))
        if "download" in selected:
            add_user(dc, "dl", download_messages())
        if "big" in selected:
            add_user(dc, "big", [testbed.big_message(size=BIG_SIZE)])
        add_user(dc, "churn", [testbed.simple_message("churn", n) for n in range(1, 31)])
        if "parallel" in selected:
            for i in range(1, PARALLEL_USERS + 1):
                user = "p%02d" % i
                add_user(dc, user, [testbed.simple_message(user, n, body_lines=60)
                                    for n in range(1, PARALLEL_MESSAGES + 1)])
        log("  %.1f s" % (time.monotonic() - t))
        dc.start()
        D.port = dc.port
        if B.why is None:
            if wait_listening(pop3_port):
                B.port = pop3_port
            else:
                B.why = "Dovecot's POP3 listener did not come up"
        for s, start in ((A, lambda: start_pop3server(A, work, binary, dc.port)),
                         (S, lambda: start_pop3server(S, work, binary, dc.port, stats=True)),
                         (C, lambda: start_perdition(C, work, B.port)),
                         (E, lambda: start_imapc(E, work, dc))):
            try:
                start()
            except Exception as e:
                s.why = "could not be started: %s" % e
        for s in systems:
            if s.why:
                print("%s (%s) is not available: %s" % (s.key, s.name, s.why), flush=True)
        live = [s for s in systems if s.port]

        # Untimed: each system reads every mailbox once, so Dovecot's own
        # index and cache exist before any round (else the first system to
        # touch a mailbox would pay for building them).
        users = ["bob", "dl", "big", "churn"] + ["p%02d" % i for i in range(1, PARALLEL_USERS + 1)]
        for user in users:
            if os.path.isdir(dc.maildir(user)):
                for s in live:
                    try:
                        session(s, user, listing=True)
                    except Exception as e:
                        log("warm-up of %s on %s failed: %s" % (user, s.key, e))

        workloads, relays = make_workloads(sizes, deadline)
        workloads = [w for w in workloads if w.name in selected]
        samples = {}
        failed = set()
        spent = {}  # seconds per (workload, system)
        last = {}  # seconds of its last round
        short = {}  # (workload, system) -> rounds measured, when cut short
        for w in workloads:
            t = time.monotonic()
            log("%s: %d rounds ..." % (w.name, rounds))
            if w.prepare:
                for s in live:
                    try:
                        w.prepare(s)
                    except Exception as e:
                        failed.add((w.name, s.key))
                        print("%s on %s failed: %s" % (w.name, s.key, e), flush=True)
            for r in range(rounds):
                if time.monotonic() > deadline:
                    print("run time limit reached: %s stopped after %d rounds" % (w.name, r))
                    break
                for s in live:
                    cell = (w.name, s.key)
                    if cell in failed:
                        continue
                    # A system far slower than the rest on one workload
                    # would eat the run's time: when one more round like
                    # its last would take it past the budget, it keeps the
                    # rounds it had.
                    if spent.get(cell, 0.0) + last.get(cell, 0.0) > sizes["cell_budget"]:
                        short.setdefault(cell, r)
                        continue
                    t_cell = time.monotonic()
                    try:
                        samples.setdefault(cell, []).extend(w.measure(s))
                        last[cell] = time.monotonic() - t_cell
                        spent[cell] = spent.get(cell, 0.0) + last[cell]
                    except Exception as e:
                        # One line, and this system's cell stays empty.
                        failed.add((w.name, s.key))
                        samples.pop((w.name, s.key), None)
                        print("%s on %s failed: %s" % (w.name, s.key, e), flush=True)
            log("  %.1f s" % (time.monotonic() - t))
        medians = {k: statistics.median(v) for k, v in samples.items() if v}

        # Peak RSS and CPU of A's session process, in extra untimed
        # sessions (the sampling would disturb the timed ones).
        probed = []
        if A.port:
            probes = []
            if "big" in selected:
                probes.append(("RETR of the 100 MiB message",
                               lambda: session(A, "big", stat=False, retr=[1])))
            if {"index-cold", "index-warm"} & set(selected):
                probes.append(("cold index of 10,000 messages",
                               lambda: (A.cold("bob"), session(A, "bob", listing=True))))
            if "download" in selected:
                probes.append(("RETR of 1,000 messages",
                               lambda: session(A, "dl", stat=False,
                                               retr=range(1, DOWNLOAD_MESSAGES + 1))))
            for label, run in probes:
                try:
                    probed.append((label,) + probe_session(A.proc.pid, run))
                except Exception as e:
                    print("probe of A (%s) failed: %s" % (label, e))

        print("\nsystems:")
        for s in systems:
            print("  %s  %s%s" % (s.key, s.name, "" if s.port else "  [not available]"))
        print_table(workloads, systems, medians, rounds, short)
        print()
        if os.path.exists(binary):
            print("pop3server binary: %s, %.2f MiB" % (binary, os.path.getsize(binary) / 1048576.0))
        a_greet = samples.get(("greeting", "A"))
        if a_greet:
            print("A start to greeting: median %.2f ms over %d connections"
                  % (statistics.median(a_greet) * 1000, len(a_greet)))
        for label, kib, cpu in probed:
            print("A session, %s: peak RSS (VmHWM) %.1f MiB, CPU %.0f ms"
                  % (label, kib / 1024.0, cpu))
        if S.port:
            # The proof that S's sessions did send: the aggregator's count.
            try:
                url = "http://127.0.0.1:%d/metrics" % S.metrics_port
                with urllib.request.urlopen(url, timeout=10) as r:
                    page = r.read().decode()
                counted = re.search(r"^pop3server_sessions_started_total (\S+)$", page, re.M)
                print("S: the aggregator counted %s sessions"
                      % (counted.group(1) if counted else "no"))
            except OSError as e:
                print("S: the aggregator's page could not be read: %s" % e)
        if aggregator:
            try:
                for line in measure_aggregator(binary, work):
                    print(line)
            except Exception as e:
                print("aggregator measurement failed: %s" % e)
        print("sizes: churn %d, churn-rtt %d sessions per round; total run %.0f s"
              % (sizes["churn"], sizes["churn_rtt"], time.monotonic() - t_start))
        ok = True
    finally:
        for relay in relays.values():
            relay.stop()
        for s in systems:
            s.stop()
        dc.stop()
        if args.keep or not ok:
            print("work dir kept: %s" % work)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
