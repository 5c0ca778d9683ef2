#!/usr/bin/env python3
"""Benchmark pop3server against Dovecot's own POP3 server, in one run.

Both serve the same maildirs from one private Dovecot: pop3server proxies to
its IMAP port, dovecot-pop3d is the reference. Each case runs a bounded
number of times; the median of each side and their ratio
(pop3server / reference, lower is better) are printed, plus the peak RSS of
the pop3server session process during RETR of a 20 MiB message.

Cases:
  10k-stat-uidl   login, STAT, UIDL, LIST, QUIT on a 10,000-message maildrop
  retr-20mib      login, RETR of a 20 MiB message, QUIT
  retr-small      login, RETR of 50 messages of ~4 KiB each, QUIT

Usage: scripts/bench.py [--runs N] [--binary PATH]   (as root; see bench.sh)
"""

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import testbed  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IO_TIMEOUT = 60.0

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
}}
protocol pop3 {{
  mail_max_userip_connections = 1000
}}
"""


class Pop3:
    """Just enough of a POP3 client to time sessions; reads multi-line
    replies to their end without keeping them."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)
        self.buf = b""
        self.line()

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
            raise RuntimeError("%s: %r" % (text, status))
        if not multi:
            return status, 0
        # The status line's CRLF precedes the body: an empty body is "\r\n.\r\n" too.
        data = b"\r\n" + self.buf
        total = 0
        while True:
            end = data.find(b"\r\n.\r\n")
            if end >= 0:
                self.buf = data[end + 5:]
                return status, total
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise RuntimeError("connection closed in multi-line reply")
            total += len(chunk)
            data = data[-4:] + chunk

    def close(self):
        self.sock.close()


def session_10k(port, user):
    p = Pop3(port)
    p.cmd("USER " + user)
    p.cmd("PASS secret")
    p.cmd("STAT")
    p.cmd("UIDL", multi=True)
    p.cmd("LIST", multi=True)
    p.cmd("QUIT")
    p.close()


def session_retr(port, user, numbers):
    p = Pop3(port)
    p.cmd("USER " + user)
    p.cmd("PASS secret")
    for n in numbers:
        p.cmd("RETR %d" % n, multi=True)
    p.cmd("QUIT")
    p.close()


class InetdServer:
    """pop3server run the way inetd runs it: one process per connection,
    socket on stdin/stdout. Records the peak RSS (VmHWM) of each session."""

    def __init__(self, binary, imap_port, lockdir):
        self.binary, self.imap_port, self.lockdir = binary, imap_port, lockdir
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.port = self.lsock.getsockname()[1]
        self.peaks = []
        self.stopping = False
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self):
        self.lsock.settimeout(0.2)
        while not self.stopping:
            try:
                conn, _ = self.lsock.accept()
            except OSError:
                continue
            proc = subprocess.Popen(
                [self.binary, "--config", "/dev/null", "--inetd", "--backend-host", "127.0.0.1",
                 "--backend-port", str(self.imap_port), "--backend-tls", "none",
                 "--lock-dir", self.lockdir, "--cache-dir", self.lockdir + "-cache",
                 "--log", "stderr"],
                stdin=conn, stdout=conn, stderr=subprocess.DEVNULL)
            conn.close()
            threading.Thread(target=self.watch, args=(proc,), daemon=True).start()

    def watch(self, proc):
        peak = 0
        deadline = time.monotonic() + 600
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                with open("/proc/%d/status" % proc.pid) as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            peak = max(peak, int(line.split()[1]))
            except OSError:
                break
            time.sleep(0.005)
        proc.wait(timeout=30)
        self.peaks.append(peak)

    def stop(self):
        self.stopping = True
        self.thread.join(timeout=5)
        self.lsock.close()


def timed(runs, fn, *args):
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "pop3server"))
    args = ap.parse_args()
    runs = max(1, min(args.runs, 50))

    work = tempfile.mkdtemp(prefix="pop3bench.")
    os.chmod(work, 0o755)
    dc = testbed.Dovecot(os.path.join(work, "dovecot"))
    pop3_port = testbed.free_port()
    with open(dc.conf, "a") as f:
        f.write(POP3_CONFIG.format(port=pop3_port))
    print("generating mailboxes ...", flush=True)
    dc.add_user("bob", "secret", (testbed.bob_message(n) for n in range(1, 10001)))
    dc.add_user("big", "secret", [testbed.big_message()])
    small = [testbed.simple_message("small", n, body_lines=60) for n in range(1, 51)]
    dc.add_user("small", "secret", small)
    dc.start()
    server = InetdServer(args.binary, dc.port, os.path.join(work, "locks"))
    try:
        if not testbed.wait_for_port(pop3_port):
            raise RuntimeError("Dovecot's POP3 did not start: apt-get install dovecot-pop3d")
        # one warm-up each, so both sides have built their indexes
        session_10k(server.port, "bob")
        session_10k(pop3_port, "bob")
        cases = [
            ("10k-stat-uidl", session_10k, ("bob",)),
            ("retr-20mib", session_retr, ("big", [1])),
            ("retr-small", session_retr, ("small", range(1, 51))),
        ]
        print("\n%-14s %12s %12s %8s   (median of %d runs, seconds)" % ("case", "pop3server", "dovecot", "ratio", runs))
        for name, fn, fargs in cases:
            server.peaks.clear()
            ours = timed(runs, fn, server.port, *fargs)
            ref = timed(runs, fn, pop3_port, *fargs)
            print("%-14s %12.3f %12.3f %8.2f" % (name, ours, ref, ours / ref if ref else float("nan")), flush=True)
            if name == "retr-20mib":
                deadline = time.monotonic() + 10
                while len(server.peaks) < runs and time.monotonic() < deadline:
                    time.sleep(0.05)
                retr_peak = max(server.peaks) if server.peaks else 0
        print("\npeak RSS (VmHWM) of a pop3server session during RETR of the 20 MiB message: %.1f MiB"
              % (retr_peak / 1024.0))
    finally:
        server.stop()
        dc.stop()
        subprocess.run(["rm", "-rf", work])
    return 0


if __name__ == "__main__":
    sys.exit(main())
