"""Helpers for pop3server integration tests: a raw-socket POP3 client, IMAP
reference access, the server-under-test process wrappers and fake backends.

Every socket has a timeout and every loop is bounded in count and time.
"""

from __future__ import annotations

import imaplib
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_TIMEOUT = 15.0


METRICS_FILE = os.environ.get("POP3_TEST_METRICS",
                              os.path.join(REPO, "target", "integration-metrics.txt"))

def record_metric(line: str) -> None:
    """Print a measured number and append it to the metrics file."""
    print("METRIC " + line)
    try:
        os.makedirs(os.path.dirname(METRICS_FILE), exist_ok=True)
        with open(METRICS_FILE, "a") as f:
            f.write(time.strftime("%Y-%m-%d %H:%M:%S ") + line + "\n")
    except OSError:
        pass

# What scripts/lib.sh's build_release makes and the packages ship: the
# static (musl) build.
RELEASE_BIN = "target/%s-unknown-linux-musl/release/pop3server" % platform.machine()
BUILD_HINT = "cargo build --release --target %s-unknown-linux-musl" % platform.machine()


def server_bin() -> str:
    b = os.environ.get("POP3SERVER_BIN", RELEASE_BIN)
    if not os.path.isabs(b):
        b = os.path.join(REPO, b)
    return b


# --------------------------------------------------------------------------
# POP3 client over a raw socket
# --------------------------------------------------------------------------

class ProtocolError(AssertionError):
    pass


class Pop3:
    """Minimal POP3 client that shows the exact bytes.

    ``readline`` returns a line without its CRLF; ``read_multi`` returns the
    un-stuffed body of a multi-line answer (each line followed by CRLF) and
    checks that the server stuffed every line that starts with '.'.
    """

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = DEFAULT_TIMEOUT,
                 read_greeting: bool = True, tls_context=None,
                 server_hostname: Optional[str] = None, source: Optional[str] = None):
        """``tls_context``: implicit TLS (POP3S) with this ssl.SSLContext;
        ``source``: bind the client socket to this local address first."""
        self.sock = socket.create_connection(
            (host, port), timeout=timeout,
            source_address=(source, 0) if source else None)
        self.sock.settimeout(timeout)
        if tls_context is not None:
            self.sock = tls_context.wrap_socket(self.sock, server_hostname=server_hostname or host)
        self.buf = bytearray()
        self.greeting = self.readline() if read_greeting else None

    def starttls(self, context, server_hostname: str = "localhost") -> None:
        """The TLS handshake after a +OK to STLS. Bytes already buffered
        (sent by the server before the handshake) are an error."""
        assert not self.buf, "server sent data after +OK to STLS: %r" % bytes(self.buf)
        self.sock = context.wrap_socket(self.sock, server_hostname=server_hostname)

    def capa(self) -> List[bytes]:
        """The CAPA lines (without the status line)."""
        st, lines = self.multi_lines("CAPA")
        assert st.startswith(b"+OK"), st
        return lines

    # -- low level --
    def local_port(self) -> int:
        return self.sock.getsockname()[1]

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise EOFError("connection closed by server; pending=%r" % bytes(self.buf[:200]))
        self.buf += chunk

    def readline(self) -> bytes:
        for _ in range(1_000_000):
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[:i + 2]
                return line
            if len(self.buf) > 1 << 16:
                raise ProtocolError("status line longer than 64 KiB: %r" % bytes(self.buf[:100]))
            self._fill()
        raise ProtocolError("readline: too many reads")

    def read_multi_raw(self) -> bytes:
        """Bytes of a multi-line answer after the status line, up to and
        including the terminating '.CRLF' line."""
        start = 0
        for _ in range(10_000_000):
            if self.buf.startswith(b".\r\n"):
                raw = bytes(self.buf[:3])
                del self.buf[:3]
                return raw
            i = self.buf.find(b"\r\n.\r\n", start)
            if i >= 0:
                raw = bytes(self.buf[:i + 5])
                del self.buf[:i + 5]
                return raw
            start = max(0, len(self.buf) - 4)
            self._fill()
        raise ProtocolError("read_multi: too many reads")

    @staticmethod
    def unstuff(raw: bytes) -> bytes:
        """raw ends with '.CRLF'; returns the body (lines + CRLF each)."""
        assert raw.endswith(b".\r\n")
        body = raw[:-3]
        if not body:
            return b""
        assert body.endswith(b"\r\n"), "multi-line body must end in CRLF"
        lines = body[:-2].split(b"\r\n")
        out = []
        for ln in lines:
            if ln.startswith(b"."):
                if not ln.startswith(b".."):
                    raise ProtocolError("line starting with '.' not dot-stuffed: %r" % ln[:80])
                ln = ln[1:]
            out.append(ln)
        return b"\r\n".join(out) + b"\r\n"

    def read_multi(self) -> bytes:
        return self.unstuff(self.read_multi_raw())

    # -- commands --
    def cmd(self, line) -> bytes:
        if isinstance(line, str):
            line = line.encode()
        self.send(line + b"\r\n")
        return self.readline()

    def multi(self, line) -> Tuple[bytes, Optional[bytes]]:
        st = self.cmd(line)
        if st.startswith(b"+OK"):
            return st, self.read_multi()
        return st, None

    def multi_lines(self, line) -> Tuple[bytes, List[bytes]]:
        st, body = self.multi(line)
        if body is None:
            return st, []
        return st, body.split(b"\r\n")[:-1] if body else []

    def login(self, user, password) -> bytes:
        if isinstance(user, str):
            user = user.encode()
        if isinstance(password, str):
            password = password.encode()
        st = self.cmd(b"USER " + user)
        if not st.startswith(b"+OK"):
            return st
        return self.cmd(b"PASS " + password)

    def stat(self) -> Tuple[int, int]:
        st = self.cmd("STAT")
        m = re.match(rb"\+OK (\d+) (\d+)", st)
        assert m, st
        return int(m.group(1)), int(m.group(2))

    def list(self) -> Dict[int, int]:
        st, lines = self.multi_lines("LIST")
        assert st.startswith(b"+OK"), st
        out = {}
        for ln in lines:
            n, s = ln.split(b" ")
            out[int(n)] = int(s)
        return out

    def uidl(self) -> Dict[int, bytes]:
        st, lines = self.multi_lines("UIDL")
        assert st.startswith(b"+OK"), st
        out = {}
        for ln in lines:
            n, u = ln.split(b" ")
            out[int(n)] = u
        return out

    def retr(self, n: int) -> Tuple[bytes, Optional[bytes]]:
        return self.multi("RETR %d" % n)

    def quit(self) -> bytes:
        st = self.cmd("QUIT")
        self.wait_closed(5)
        return st

    def wait_closed(self, timeout: float) -> bytes:
        """Read until the server closes the connection (bounded); returns extra bytes."""
        extra = bytearray(self.buf)
        self.buf.clear()
        deadline = time.monotonic() + timeout
        self.sock.settimeout(0.2)
        try:
            while time.monotonic() < deadline:
                try:
                    chunk = self.sock.recv(65536)
                except socket.timeout:
                    continue
                except ConnectionResetError:
                    return bytes(extra)
                if not chunk:
                    return bytes(extra)
                extra += chunk
            raise ProtocolError("server did not close the connection within %.1fs" % timeout)
        finally:
            self.sock.settimeout(DEFAULT_TIMEOUT)

    def pending(self, wait: float = 0.3) -> bytes:
        """Whatever arrives within ``wait`` seconds (nothing expected, usually)."""
        data = bytearray(self.buf)
        self.buf.clear()
        self.sock.settimeout(wait)
        try:
            for _ in range(100):
                try:
                    chunk = self.sock.recv(65536)
                except socket.timeout:
                    break
                if not chunk:
                    break
                data += chunk
        finally:
            self.sock.settimeout(DEFAULT_TIMEOUT)
        return bytes(data)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


def ok(st: bytes) -> bool:
    return st.startswith(b"+OK")


def err(st: bytes) -> bool:
    return st.startswith(b"-ERR")


# --------------------------------------------------------------------------
# expected POP3 renderings of an IMAP BODY[]
# --------------------------------------------------------------------------

_BARE_LF = re.compile(rb"(?<!\r)\n")


def pop3_expected(body: bytes) -> bytes:
    """What RETR must deliver (after un-stuffing) for this BODY[]: bare LF
    becomes CRLF, and a message not ending in CRLF gets one appended."""
    e = _BARE_LF.sub(b"\r\n", body)
    if not e.endswith(b"\r\n"):
        e += b"\r\n"
    return e


def top_expected(body: bytes, k: int) -> bytes:
    e = pop3_expected(body)
    i = e.find(b"\r\n\r\n")
    if i < 0:
        return e
    head, rest = e[:i + 4], e[i + 4:]
    lines = rest.split(b"\r\n")[:-1] if rest else []
    return head + b"".join(ln + b"\r\n" for ln in lines[:k])


def dovecot_uidl(uid: int, uidvalidity: int) -> bytes:
    return b"%08x%08x" % (uid, uidvalidity)


# --------------------------------------------------------------------------
# IMAP reference access
# --------------------------------------------------------------------------

def imap_login(dc, user: str, password) -> imaplib.IMAP4:
    m = imaplib.IMAP4(dc.host, dc.port, timeout=30)
    if isinstance(password, str) and password.isascii():
        m.login(user, password)
    else:
        pb = password.encode("utf-8") if isinstance(password, str) else password
        m.authenticate("PLAIN", lambda _: b"\0" + user.encode() + b"\0" + pb)
    return m


class ImapView:
    """Snapshot of a mailbox as IMAP sees it."""

    def __init__(self, dc, user: str, password="secret"):
        self.dc, self.user, self.password = dc, user, password

    def __enter__(self):
        self.m = imap_login(self.dc, self.user, self.password)
        typ, _ = self.m.select("INBOX")
        assert typ == "OK"
        return self

    def __exit__(self, *a):
        try:
            self.m.logout()
        except Exception:
            pass

    def uidvalidity(self) -> int:
        typ, data = self.m.status("INBOX", "(UIDVALIDITY)")
        return int(re.search(rb"UIDVALIDITY (\d+)", data[0]).group(1))

    def uid_sizes(self) -> List[Tuple[int, int]]:
        """[(uid, RFC822.SIZE)] in UID (= POP3 message number) order."""
        self.m.noop()
        typ, data = self.m.uid("FETCH", "1:*", "(UID RFC822.SIZE)")
        out = []
        for item in data:
            if item is None:
                continue
            if isinstance(item, tuple):
                item = item[0]
            m = re.search(rb"UID (\d+) RFC822\.SIZE (\d+)|RFC822\.SIZE (\d+) UID (\d+)", item)
            if not m:
                continue
            if m.group(1):
                out.append((int(m.group(1)), int(m.group(2))))
            else:
                out.append((int(m.group(4)), int(m.group(3))))
        return sorted(out)

    def uids(self) -> List[int]:
        return [u for u, _ in self.uid_sizes()]

    def body(self, uid: int) -> bytes:
        typ, data = self.m.uid("FETCH", str(uid), "(BODY.PEEK[])")
        assert typ == "OK", data
        for item in data:
            if isinstance(item, tuple):
                return item[1]
        raise AssertionError("no BODY[] for uid %d: %r" % (uid, data))

    def flags(self, uid: int) -> List[bytes]:
        typ, data = self.m.uid("FETCH", str(uid), "(FLAGS)")
        assert typ == "OK", data
        m = re.search(rb"FLAGS \(([^)]*)\)", data[0])
        return m.group(1).split() if m else []

    def append(self, msg: bytes) -> None:
        typ, data = self.m.append("INBOX", None, None, msg)
        assert typ == "OK", data

    def expunge_uid(self, uid: int) -> None:
        self.m.uid("STORE", str(uid), "+FLAGS.SILENT", "(\\Deleted)")
        typ, data = self.m.expunge()
        assert typ == "OK", data


# --------------------------------------------------------------------------
# the server under test
# --------------------------------------------------------------------------

def base_args(backend_port: int, lock_dir: str, extra: List[str]) -> List[str]:
    """Plain IMAP to 127.0.0.1:backend_port unless ``extra`` names another
    --backend-host / --backend-tls (those then replace the defaults)."""
    args = ["--config", "/dev/null"]
    if "--backend-host" not in extra:
        args += ["--backend-host", "127.0.0.1"]
    args += ["--backend-port", str(backend_port)]
    if "--backend-tls" not in extra:
        args += ["--backend-tls", "none"]
    args += ["--lock-dir", lock_dir, "--log", "stderr"]
    if "--cache-dir" not in extra:
        # Never the host's /var/cache/pop3server: each server its own.
        args += ["--cache-dir", lock_dir + "-cache"]
    if "--login-failure-delay" not in extra:
        args += ["--login-failure-delay", "0"]
    return args + list(extra)


def run(cmd: List[str], timeout: float = 120, check: bool = True,
        **kw) -> subprocess.CompletedProcess:
    """A command with its output captured; with ``check`` a failure is an
    AssertionError that shows the output's end."""
    kw.setdefault("stdin", subprocess.DEVNULL)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise AssertionError("%s failed (%d):\n%s\n%s" % (" ".join(cmd), r.returncode,
                                                         r.stdout[-5000:], r.stderr[-5000:]))
    return r


def need(tool: str, package: str) -> str:
    """The path of ``tool``; the test fails (not skips) without it."""
    import pytest
    path = shutil.which(tool)
    if not path:
        pytest.fail("%s not found: apt-get install %s" % (tool, package))
    return path


def wait_for(pred: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


class ServerBase:
    log_path: str

    def log(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def wait_log(self, pattern: str, timeout: float = 5.0) -> bool:
        rx = re.compile(pattern)
        return wait_for(lambda: rx.search(self.log()) is not None, timeout)


class StandaloneServer(ServerBase):
    """``pop3server --listen 127.0.0.1:PORT ...`` in its own process group."""

    def __init__(self, workdir: str, backend_port: int, extra: List[str] = (),
                 name: str = "standalone", listen_host: str = "127.0.0.1"):
        from testbed import free_port  # scripts/ is on sys.path (conftest)
        self.port = free_port()
        self.host = listen_host
        self.lock_dir = os.path.join(workdir, name + "-locks")
        os.makedirs(self.lock_dir, exist_ok=True)
        self.log_path = os.path.join(workdir, name + ".log")
        self.cmd = [server_bin()] + base_args(backend_port, self.lock_dir, list(extra)) + \
            ["--listen", "%s:%d" % (listen_host, self.port)]
        self.logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=self.logf,
                                     stderr=self.logf, start_new_session=True)
        up = False
        for _ in range(100):
            if self.proc.poll() is not None:
                break
            try:
                with socket.create_connection((self.host, self.port), timeout=1):
                    up = True
                    break
            except OSError:
                time.sleep(0.05)
        if not up:
            self.stop()
            raise RuntimeError("pop3server did not listen on %d (rc=%s); log:\n%s"
                               % (self.port, self.proc.returncode, self.log()[-3000:]))

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        # children (per-connection processes) are in the same process group
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        self.logf.close()


class LoopbackAcceptor:
    """A listening socket on 127.0.0.1 with a thread that accepts at most
    ``max_conns`` connections (polling every 0.2 s, so stop() is prompt)
    and hands each to ``_on_connection``."""

    def __init__(self, max_conns: int, backlog: int = 16):
        self.max_conns = max_conns
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(backlog)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._accept_loop, daemon=True)
        self.thread.start()

    def _accept_loop(self) -> None:
        count = 0
        while not self.stopping.is_set() and count < self.max_conns:
            try:
                conn, peer = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            count += 1
            self._on_connection(conn, peer)

    def _on_connection(self, conn: socket.socket, peer) -> None:
        raise NotImplementedError

    def _stop_accepting(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        try:
            self.listener.close()
        except OSError:
            pass


class InetdServer(LoopbackAcceptor):
    """What inetd does: accept on 127.0.0.1:PORT, and for each connection run
    ``pop3server --inetd ...`` with the socket as stdin and stdout."""

    MAX_CONNECTIONS = 2000

    def __init__(self, workdir: str, backend_port: int, extra: List[str] = (),
                 name: str = "inetd"):
        self.lock_dir = os.path.join(workdir, name + "-locks")
        os.makedirs(self.lock_dir, exist_ok=True)
        self.log_path = os.path.join(workdir, name + ".log")
        self.cmd = [server_bin(), "--inetd"] + base_args(backend_port, self.lock_dir, list(extra))
        self.logf = open(self.log_path, "ab")
        self.children: Dict[int, subprocess.Popen] = {}  # client port -> process
        self.lock = threading.Lock()
        super().__init__(self.MAX_CONNECTIONS, backlog=64)

    def _on_connection(self, conn: socket.socket, peer) -> None:
        conn.setblocking(True)  # the child gets a blocking socket, as from inetd
        try:
            p = subprocess.Popen(self.cmd, stdin=conn.fileno(), stdout=conn.fileno(),
                                 stderr=self.logf, close_fds=True)
            with self.lock:
                self.children[peer[1]] = p
        finally:
            conn.close()
        with self.lock:
            if len(self.children) > 200:
                for k in [k for k, c in self.children.items() if c.poll() is not None]:
                    del self.children[k]

    def child_for(self, client: Pop3, timeout: float = 5.0) -> subprocess.Popen:
        port = client.local_port()
        ok_ = wait_for(lambda: port in self.children, timeout)
        assert ok_, "no child for client port %d" % port
        with self.lock:
            return self.children[port]

    def stop(self) -> None:
        self._stop_accepting()
        with self.lock:
            kids = list(self.children.values())
        for p in kids:
            if p.poll() is None:
                p.terminate()
        for p in kids:
            try:
                p.wait(3)
            except subprocess.TimeoutExpired:
                p.kill()
                try:
                    p.wait(3)
                except subprocess.TimeoutExpired:
                    pass
        self.logf.close()


# --------------------------------------------------------------------------
# fake IMAP backends
# --------------------------------------------------------------------------

class FakeBackend(LoopbackAcceptor):
    """A tiny threaded TCP server on 127.0.0.1; ``handler(sock)`` serves one
    connection.  Bounded: at most ``max_conns`` connections."""

    def __init__(self, handler: Callable[[socket.socket], None], max_conns: int = 50):
        self.handler = handler
        self.conns: List[socket.socket] = []
        self.received: List[bytes] = []
        super().__init__(max_conns)

    def _on_connection(self, c: socket.socket, peer) -> None:
        c.settimeout(30)
        self.conns.append(c)
        threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c: socket.socket) -> None:
        try:
            self.handler(c, self)
        except Exception:
            pass

    def stop(self) -> None:
        self._stop_accepting()
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass


def silent_handler(c: socket.socket, fb: FakeBackend) -> None:
    """Accept and never answer (hold until stopped or 60 s)."""
    deadline = time.monotonic() + 60
    c.settimeout(0.2)
    while not fb.stopping.is_set() and time.monotonic() < deadline:
        try:
            d = c.recv(4096)
            if not d:
                return
            fb.received.append(d)
        except socket.timeout:
            continue


def garbage_handler(c: socket.socket, fb: FakeBackend) -> None:
    """Answer garbage to everything."""
    c.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n\x00\xff\xfe garbage\r\n")
    deadline = time.monotonic() + 30
    c.settimeout(0.2)
    while not fb.stopping.is_set() and time.monotonic() < deadline:
        try:
            d = c.recv(4096)
        except socket.timeout:
            continue
        if not d:
            return
        fb.received.append(d)
        c.sendall(b")))( * * BAD {999999999999}\r\n\x01\x02\x03 garbage\r\n")


class ScriptedImap:
    """A fake IMAP server with one INBOX message of ``size`` octets.  It answers
    per tag and, for a fetch of the body, cuts the connection once
    ``cut_at`` octets of the message have been sent (mid-literal)."""

    def __init__(self, size: int = 1_000_000, cut_at: int = 600_000, uidvalidity: int = 4242):
        lines = []
        total = 0
        i = 0
        while total < size:
            ln = b"line %07d of the scripted message ........................\r\n" % i
            lines.append(ln)
            total += len(ln)
            i += 1
        head = b"From: fake@example.org\r\nSubject: scripted\r\n\r\n"
        self.msg = (head + b"".join(lines))[:size - 2] + b"\r\n"
        self.size = len(self.msg)
        self.cut_at = cut_at
        self.uidvalidity = uidvalidity
        self.sent_body = 0
        self.log: List[bytes] = []

    def __call__(self, c: socket.socket, fb: FakeBackend) -> None:
        f = c.makefile("rb")
        c.sendall(b"* OK [CAPABILITY IMAP4rev1 LITERAL+ UIDPLUS UNSELECT ID] fake ready\r\n")
        for _ in range(1000):
            line = f.readline(65536)
            if not line:
                return
            # gather literals: {n} or {n+}
            full = line
            for _ in range(10):
                m = re.search(rb"\{(\d+)(\+?)\}\r?\n$", full)
                if not m:
                    break
                if not m.group(2):
                    c.sendall(b"+ ok\r\n")
                full += f.read(int(m.group(1)))
                full += f.readline(65536)
            self.log.append(full)
            fb.received.append(full)
            parts = full.split(b" ", 2)
            tag = parts[0]
            cmd = parts[1].strip().upper() if len(parts) > 1 else b""
            rest = parts[2] if len(parts) > 2 else b""
            if cmd == b"CAPABILITY":
                c.sendall(b"* CAPABILITY IMAP4rev1 LITERAL+ UIDPLUS UNSELECT ID\r\n"
                          + tag + b" OK done\r\n")
            elif cmd in (b"LOGIN", b"AUTHENTICATE"):
                c.sendall(tag + b" OK [CAPABILITY IMAP4rev1 LITERAL+ UIDPLUS UNSELECT ID] "
                                b"logged in\r\n")
            elif cmd in (b"SELECT", b"EXAMINE"):
                c.sendall(b"* FLAGS (\\Seen \\Deleted)\r\n* 1 EXISTS\r\n* 0 RECENT\r\n"
                          b"* OK [UIDVALIDITY %d] ok\r\n* OK [UIDNEXT 2] ok\r\n" % self.uidvalidity
                          + tag + b" OK [READ-WRITE] selected\r\n")
            elif cmd == b"UID" and rest.upper().startswith(b"FETCH"):
                r = rest.upper()
                if b"BODY" in r:
                    m = re.search(rb"BODY\.PEEK\[\]<(\d+)\.(\d+)>", rest, re.I)
                    if m:
                        off, ln = int(m.group(1)), int(m.group(2))
                        piece = self.msg[off:off + ln]
                        hdr = b"* 1 FETCH (UID 1 BODY[]<%d> {%d}\r\n" % (off, len(piece))
                    else:
                        off, piece = 0, self.msg
                        hdr = b"* 1 FETCH (UID 1 BODY[] {%d}\r\n" % len(piece)
                    if off + len(piece) > self.cut_at:
                        keep = max(0, self.cut_at - off)
                        c.sendall(hdr + piece[:keep])
                        self.sent_body = self.cut_at
                        time.sleep(0.2)
                        c.shutdown(socket.SHUT_RDWR)
                        c.close()
                        return
                    c.sendall(hdr + piece + b")\r\n" + tag + b" OK fetched\r\n")
                    self.sent_body = off + len(piece)
                else:
                    c.sendall(b"* 1 FETCH (UID 1 RFC822.SIZE %d)\r\n" % self.size
                              + tag + b" OK fetched\r\n")
            elif cmd == b"LOGOUT":
                c.sendall(b"* BYE bye\r\n" + tag + b" OK bye\r\n")
                return
            else:
                c.sendall(tag + b" OK " + cmd + b" done\r\n")


class OAuthImap:
    """A scripted IMAP peer for SASL XOAUTH2 / OAUTHBEARER pass-through (Dovecot
    2.3's oauth2 passdb needs a token service; this checks the exact SASL bytes
    instead).  It advertises ``caps`` (SASL-IR unless ``sasl_ir`` is false),
    accepts ``user`` with ``token`` and serves a two-message INBOX.  A wrong
    token gets ``+ <base64 JSON error>``; the client's answer to that (an empty
    line or ``AQ==``) is recorded, then ``NO [AUTHENTICATIONFAILED]``.

    ``auths`` records one dict per AUTHENTICATE: mech, ir (the base64 on the
    command line or None), cont (the base64 line after ``+ `` or None),
    decoded, ok, ack (the line after the error challenge).  ``starttls``
    adds STARTTLS to the capabilities (and answers it with BAD)."""

    ERROR_JSON = b'{"status":"invalid_token","schemes":"Bearer","scope":"mail"}'

    def __init__(self, user: str = "alice", token: str = "tok", sasl_ir: bool = True,
                 mechs=("XOAUTH2", "OAUTHBEARER"), starttls: bool = False,
                 uidvalidity: int = 777):
        self.user = user
        self.token = token
        caps = [b"IMAP4rev1"]
        if starttls:
            caps.append(b"STARTTLS")
        if sasl_ir:
            caps.append(b"SASL-IR")
        caps += [b"LITERAL+", b"UIDPLUS", b"UNSELECT", b"ID", b"AUTH=PLAIN"]
        caps += [b"AUTH=" + m.encode() for m in mechs]
        self.caps = b" ".join(caps)
        self.post_caps = b"IMAP4rev1 LITERAL+ UIDPLUS UNSELECT ID"
        self.uidvalidity = uidvalidity
        self.msgs = [b"From: oauth@example.org\r\nSubject: oauth %d\r\n\r\nbody %d\r\n" % (i, i)
                     for i in (1, 2)]
        self.auths: List[dict] = []
        self.lines: List[bytes] = []  # every command line received (tags included)

    def expected(self, mech: str, user: Optional[str] = None,
                 token: Optional[str] = None) -> bytes:
        """The SASL message a client sends for ``mech`` (raw, not base64)."""
        user = self.user if user is None else user
        token = self.token if token is None else token
        if mech == "XOAUTH2":
            return b"user=%s\x01auth=Bearer %s\x01\x01" % (user.encode(), token.encode())
        return b"n,a=%s,\x01auth=Bearer %s\x01\x01" % (user.encode(), token.encode())

    def _check(self, mech: bytes, raw: bytes) -> bool:
        if mech == b"XOAUTH2":
            m = re.fullmatch(rb"user=([^\x01]*)\x01auth=Bearer ([^\x01]*)\x01\x01", raw)
        else:
            m = re.fullmatch(rb"n,a=([^,]*),(?:\x01[a-z]+=[^\x01]*)*?\x01auth=Bearer "
                             rb"([^\x01]*)(?:\x01[a-z]+=[^\x01]*)*\x01\x01", raw)
        return bool(m) and m.group(1) == self.user.encode() and m.group(2) == self.token.encode()

    def __call__(self, c: socket.socket, fb: FakeBackend) -> None:
        import base64
        import binascii
        f = c.makefile("rb")
        c.sendall(b"* OK [CAPABILITY " + self.caps + b"] fake oauth ready\r\n")
        authed = False
        for _ in range(1000):
            line = f.readline(1 << 17)
            if not line:
                return
            self.lines.append(line)
            fb.received.append(line)
            parts = line.rstrip(b"\r\n").split(b" ")
            tag = parts[0]
            cmd = parts[1].upper() if len(parts) > 1 else b""
            args = parts[2:]
            if cmd == b"CAPABILITY":
                c.sendall(b"* CAPABILITY " + (self.post_caps if authed else self.caps) + b"\r\n"
                          + tag + b" OK done\r\n")
            elif cmd == b"STARTTLS":
                c.sendall(tag + b" BAD not today\r\n")
            elif cmd == b"ID":
                c.sendall(b'* ID ("name" "fake")\r\n' + tag + b" OK ID done\r\n")
            elif cmd == b"LOGIN":
                c.sendall(tag + b" NO [AUTHENTICATIONFAILED] LOGIN not accepted here\r\n")
            elif cmd == b"AUTHENTICATE" and args:
                mech = args[0].upper()
                rec = {"mech": mech.decode(), "ir": None, "cont": None, "decoded": None,
                       "ok": False, "ack": None}
                self.auths.append(rec)
                if len(args) > 1:
                    b64 = args[1]
                    rec["ir"] = b64
                else:
                    c.sendall(b"+ \r\n")
                    b64 = f.readline(1 << 17).rstrip(b"\r\n")
                    rec["cont"] = b64
                try:
                    raw = base64.b64decode(b64, validate=True)
                except (binascii.Error, ValueError):
                    c.sendall(tag + b" BAD bad base64\r\n")
                    continue
                rec["decoded"] = raw
                if mech in (b"XOAUTH2", b"OAUTHBEARER") and self._check(mech, raw):
                    rec["ok"] = True
                    authed = True
                    c.sendall(tag + b" OK [CAPABILITY " + self.post_caps + b"] Logged in\r\n")
                else:
                    c.sendall(b"+ " + base64.b64encode(self.ERROR_JSON) + b"\r\n")
                    rec["ack"] = f.readline(1 << 17).rstrip(b"\r\n")
                    c.sendall(tag + b" NO [AUTHENTICATIONFAILED] Authentication failed\r\n")
            elif cmd in (b"SELECT", b"EXAMINE"):
                c.sendall(b"* FLAGS (\\Seen \\Deleted)\r\n* %d EXISTS\r\n* 0 RECENT\r\n"
                          b"* OK [UIDVALIDITY %d] ok\r\n* OK [UIDNEXT %d] ok\r\n"
                          % (len(self.msgs), self.uidvalidity, len(self.msgs) + 1)
                          + tag + b" OK [READ-WRITE] selected\r\n")
            elif cmd == b"UID" and args and args[0].upper() == b"FETCH":
                rest = b" ".join(args[1:])
                if b"BODY" in rest.upper():
                    uid = int(args[1])
                    msg = self.msgs[uid - 1]
                    m = re.search(rb"BODY\.PEEK\[\]<(\d+)\.(\d+)>", rest, re.I)
                    off, ln = (int(m.group(1)), int(m.group(2))) if m else (0, len(msg))
                    piece = msg[off:off + ln]
                    origin = b"<%d>" % off if m else b""
                    c.sendall(b"* %d FETCH (UID %d BODY[]%s {%d}\r\n" % (uid, uid, origin, len(piece))
                              + piece + b")\r\n" + tag + b" OK fetched\r\n")
                else:
                    out = b"".join(b"* %d FETCH (UID %d RFC822.SIZE %d)\r\n" % (i, i, len(m_))
                                   for i, m_ in enumerate(self.msgs, start=1))
                    c.sendall(out + tag + b" OK fetched\r\n")
            elif cmd == b"LOGOUT":
                c.sendall(b"* BYE bye\r\n" + tag + b" OK bye\r\n")
                return
            else:
                c.sendall(tag + b" OK " + cmd + b" done\r\n")


# --------------------------------------------------------------------------
# a network namespace: a client address that is not loopback
# --------------------------------------------------------------------------

class NetNs:
    """A network namespace joined to this one by a veth pair: here
    ``server_addr``/24, inside ``client_addr``/24.  A server listening on
    ``server_addr`` sees connections from the namespace as coming from
    ``client_addr`` (not loopback).  ``run_client(actions)`` runs
    tests/integration/netns_client.py inside the namespace."""

    def __init__(self, name: str, subnet: int):
        self.name = name
        self.veth = "p3v%da" % (os.getpid() % 100000)
        self.peer = "p3v%db" % (os.getpid() % 100000)
        self.server_addr = "10.200.%d.1" % subnet
        self.client_addr = "10.200.%d.2" % subnet
        self.created = False

    def _ip(self, *args: str, ns: bool = False) -> None:
        cmd = (["ip", "netns", "exec", self.name, "ip"] if ns else ["ip"]) + list(args)
        r = subprocess.run(cmd, capture_output=True, timeout=20, stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            raise RuntimeError("%s: %s" % (" ".join(cmd), r.stderr.decode(errors="replace")))

    def create(self) -> None:
        self._ip("netns", "add", self.name)
        self.created = True
        self._ip("link", "add", self.veth, "type", "veth", "peer", "name", self.peer)
        self._ip("link", "set", self.peer, "netns", self.name)
        self._ip("addr", "add", self.server_addr + "/24", "dev", self.veth)
        self._ip("link", "set", self.veth, "up")
        self._ip("addr", "add", self.client_addr + "/24", "dev", self.peer, ns=True)
        self._ip("link", "set", self.peer, "up", ns=True)
        self._ip("link", "set", "lo", "up", ns=True)

    def destroy(self) -> None:
        for cmd in (["ip", "link", "del", self.veth], ["ip", "netns", "del", self.name]):
            subprocess.run(cmd, capture_output=True, timeout=20, stdin=subprocess.DEVNULL)
        self.created = False

    def run_client(self, port: int, actions: list, cafile: Optional[str] = None,
                   timeout: float = 60, implicit_tls: bool = False,
                   tls_version: Optional[str] = None) -> list:
        """Run the POP3 dialogue ``actions`` (see netns_client.py) against
        server_addr:port from inside the namespace; returns the transcript.
        ``tls_version`` (e.g. "TLSv1"): the client speaks that TLS version
        only, as an old device does."""
        import json
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "netns_client.py")
        req = {"host": self.server_addr, "port": port, "cafile": cafile, "actions": actions,
               "implicit_tls": implicit_tls, "tls_version": tls_version}
        r = subprocess.run(["ip", "netns", "exec", self.name, "python3", script],
                           input=json.dumps(req).encode(), capture_output=True, timeout=timeout)
        if r.returncode != 0:
            raise AssertionError("netns client failed (rc=%d): %s %s"
                                 % (r.returncode, r.stdout.decode(errors="replace"),
                                    r.stderr.decode(errors="replace")))
        return json.loads(r.stdout)


class FakeImap:
    """A scripted IMAP peer that records every command and can be told to
    stall on, or answer differently to, chosen commands.

    * ``messages``: the INBOX (UIDs 1..n, or ``uids`` if given);
      ``folders`` the names SELECT/EXAMINE accept (others get NO).
    * ``caps``: the capabilities (in the greeting's ``[CAPABILITY ...]``
      unless ``greeting_caps`` is false, and in answer to CAPABILITY);
      ``post_caps``: those after a login (default: ``caps`` without
      LOGINDISABLED, STARTTLS and AUTH=...).
    * ``stall(cmd)``: called with each complete command (tag included,
      literals inlined, CRLF kept); if true, the command is never answered
      (the connection is held, bounded by ``stall_seconds``).
    * ``override(cmd)``: may return the bytes to answer instead (``{tag}``
      is replaced by the command's tag; a final ``{close}`` closes the
      connection after them, a final ``{stall}`` holds it as ``stall`` does).
    * ``log``: every command exactly as received (literal octets included);
      ``sasl``: every line sent after an AUTHENTICATE continuation.
    * UID STORE / UID EXPUNGE / UID SEARCH DELETED / EXPUNGE act on the
      flags of the messages, so ``flags`` and ``uids`` show the outcome.
    """

    def __init__(self, messages=None, caps: bytes = b"IMAP4rev1 LITERAL+ UIDPLUS UNSELECT ID",
                 post_caps: Optional[bytes] = None, greeting_caps: bool = True,
                 uidvalidity: int = 4242, folders=("INBOX",), uids=None,
                 stall: Optional[Callable[[bytes], bool]] = None,
                 override: Optional[Callable[[bytes], Optional[bytes]]] = None,
                 stall_seconds: float = 60.0, login_ok: bool = True,
                 drop: Optional[Callable[[bytes], bool]] = None):
        if messages is None:
            messages = [b"From: fake@example.org\r\nSubject: fake %d\r\n\r\nbody %d\r\n" % (i, i)
                        for i in (1, 2, 3)]
        self.msgs: Dict[int, bytes] = dict(zip(uids or range(1, len(messages) + 1), messages))
        self.flags: Dict[int, set] = {u: set() for u in self.msgs}
        self.caps = caps
        if post_caps is None:
            post_caps = b" ".join(c for c in caps.split()
                                  if c.upper() not in (b"LOGINDISABLED", b"STARTTLS")
                                  and not c.upper().startswith(b"AUTH="))
        self.post_caps = post_caps
        self.greeting_caps = greeting_caps
        self.uidvalidity = uidvalidity
        self.folders = [f.upper() for f in folders]
        self.stall = stall or (lambda cmd: False)
        self.override = override or (lambda cmd: None)
        self.stall_seconds = stall_seconds
        self.login_ok = login_ok
        # drop(cmd): close the connection instead of answering (a connection
        # the server dropped while the client was idle, noticed now).
        self.drop = drop or (lambda cmd: False)
        self.dropped: List[bytes] = []
        self.log: List[bytes] = []
        self.sasl: List[bytes] = []
        self.stalled: List[bytes] = []
        self.selected_with: Optional[bytes] = None

    # -- helpers for tests --
    def wait_command(self, name: bytes, timeout: float = 5.0) -> bool:
        """Whether the command ``name`` (as in ``commands()``) has arrived,
        waiting at most ``timeout`` seconds: a session's LOGOUT comes after
        the client saw the connection close."""
        return wait_for(lambda: name in self.commands(), timeout)

    def commands(self) -> List[bytes]:
        """The commands without tags and CRLF (literals inlined)."""
        return [c.split(b" ", 1)[1].rstrip(b"\r\n") if b" " in c else c.rstrip(b"\r\n")
                for c in self.log]

    def uids(self) -> List[int]:
        return sorted(self.msgs)

    def _hold(self, c: socket.socket, fb: "FakeBackend") -> None:
        deadline = time.monotonic() + self.stall_seconds
        c.settimeout(0.2)
        while not fb.stopping.is_set() and time.monotonic() < deadline:
            try:
                d = c.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            if not d:
                return
            fb.received.append(d)

    def _read_command(self, f, c: socket.socket) -> Optional[bytes]:
        line = f.readline(1 << 17)
        if not line:
            return None
        full = line
        for _ in range(10):  # at most 10 literals per command
            m = re.search(rb"\{(\d+)(\+?)\}\r\n$", full)
            if not m or int(m.group(1)) > 1 << 20:
                break
            if not m.group(2):
                c.sendall(b"+ go ahead\r\n")
            full += f.read(int(m.group(1)))
            full += f.readline(1 << 17)
        return full

    def _set(self, spec: bytes) -> List[int]:
        out = []
        for part in spec.split(b","):
            if b":" in part:
                a, b = part.split(b":")
                lo = int(a)
                hi = max(self.msgs or [0]) if b == b"*" else int(b)
                out += [u for u in self.msgs if lo <= u <= hi]
            elif part.isdigit():
                out.append(int(part))
        return [u for u in out if u in self.msgs]

    def __call__(self, c: socket.socket, fb: "FakeBackend") -> None:
        f = c.makefile("rb")
        if self.greeting_caps:
            c.sendall(b"* OK [CAPABILITY " + self.caps + b"] fake ready\r\n")
        else:
            c.sendall(b"* OK fake ready\r\n")
        authed = False
        for _ in range(10_000):
            full = self._read_command(f, c)
            if full is None:
                return
            self.log.append(full)
            fb.received.append(full)
            if self.drop(full):
                self.dropped.append(full)
                c.close()
                return
            if self.stall(full):
                self.stalled.append(full)
                self._hold(c, fb)
                return
            words = full.rstrip(b"\r\n").split(b" ")
            tag = words[0]
            cmd = words[1].upper() if len(words) > 1 else b""
            args = words[2:]
            answer = self.override(full)
            if answer is not None:
                # An answer ending in {close} is the backend's last word.
                last = answer.endswith(b"{close}")
                hold = answer.endswith(b"{stall}")
                c.sendall(answer.replace(b"{close}", b"").replace(b"{stall}", b"")
                          .replace(b"{tag}", tag))
                if last:
                    c.close()
                    return
                if hold:
                    self.stalled.append(full)
                    self._hold(c, fb)
                    return
                continue
            done = lambda text=b"done": c.sendall(tag + b" OK " + text + b"\r\n")  # noqa: E731
            if cmd == b"CAPABILITY":
                c.sendall(b"* CAPABILITY " + (self.post_caps if authed else self.caps) + b"\r\n")
                done()
            elif cmd == b"NOOP":
                done()
            elif cmd == b"LOGIN":
                if self.login_ok:
                    authed = True
                    done(b"[CAPABILITY " + self.post_caps + b"] logged in")
                else:
                    c.sendall(tag + b" NO [AUTHENTICATIONFAILED] no\r\n")
            elif cmd == b"AUTHENTICATE":
                if len(args) < 2:
                    c.sendall(b"+ \r\n")
                    resp = f.readline(1 << 17)
                    self.sasl.append(resp)
                    fb.received.append(resp)
                if self.login_ok:
                    authed = True
                    done(b"[CAPABILITY " + self.post_caps + b"] logged in")
                else:
                    c.sendall(tag + b" NO [AUTHENTICATIONFAILED] no\r\n")
            elif cmd in (b"SELECT", b"EXAMINE"):
                folder = args[0].strip(b'"').upper() if args else b""
                if folder.decode("latin-1") not in self.folders:
                    c.sendall(tag + b" NO [NONEXISTENT] Mailbox doesn't exist\r\n")
                    continue
                self.selected_with = cmd
                nxt = max(self.msgs or [0]) + 1
                c.sendall(b"* FLAGS (\\Seen \\Deleted)\r\n* %d EXISTS\r\n* 0 RECENT\r\n"
                          b"* OK [UIDVALIDITY %d] ok\r\n* OK [UIDNEXT %d] ok\r\n"
                          % (len(self.msgs), self.uidvalidity, nxt))
                done(b"[READ-ONLY] examined" if cmd == b"EXAMINE" else b"[READ-WRITE] selected")
            elif cmd == b"UID" and args:
                sub = args[0].upper()
                seqs = {u: i for i, u in enumerate(sorted(self.msgs), start=1)}
                if sub == b"FETCH":
                    rest = b" ".join(args[2:])
                    m = re.search(rb"BODY\.PEEK\[\]<(\d+)\.(\d+)>", rest, re.I)
                    whole = re.search(rb"BODY(\.PEEK)?\[\]\)", rest, re.I)
                    out = b""
                    for u in self._set(args[1]):
                        if m:
                            off, ln = int(m.group(1)), int(m.group(2))
                            piece = self.msgs[u][off:off + ln]
                            out += (b"* %d FETCH (UID %d BODY[]<%d> {%d}\r\n"
                                    % (seqs[u], u, off, len(piece)) + piece + b")\r\n")
                        elif whole:
                            if not whole.group(1):
                                self.flags[u].add(b"\\Seen")  # BODY[] sets it
                            out += (b"* %d FETCH (UID %d BODY[] {%d}\r\n"
                                    % (seqs[u], u, len(self.msgs[u])) + self.msgs[u] + b")\r\n")
                        else:
                            out += b"* %d FETCH (UID %d RFC822.SIZE %d)\r\n" % (
                                seqs[u], u, len(self.msgs[u]))
                    c.sendall(out)
                    done(b"fetched")
                elif sub == b"STORE" and len(args) >= 4:
                    flag = b" ".join(args[3:]).strip(b"()")
                    for u in self._set(args[1]):
                        if args[2].startswith(b"+"):
                            self.flags[u].add(flag)
                        elif args[2].startswith(b"-"):
                            self.flags[u].discard(flag)
                    done(b"stored")
                elif sub == b"EXPUNGE" and len(args) >= 2:
                    gone = [u for u in self._set(args[1]) if b"\\Deleted" in self.flags[u]]
                    for u in sorted(gone, reverse=True):
                        c.sendall(b"* %d EXPUNGE\r\n" % seqs[u])
                    for u in gone:
                        del self.msgs[u]
                        del self.flags[u]
                    done(b"expunged")
                elif sub == b"SEARCH":
                    found = [u for u in sorted(self.msgs) if b"\\Deleted" in self.flags[u]]
                    c.sendall(b"* SEARCH" + b"".join(b" %d" % u for u in found) + b"\r\n")
                    done(b"searched")
                else:
                    c.sendall(tag + b" BAD unknown UID command\r\n")
            elif cmd == b"EXPUNGE":
                seqs = {u: i for i, u in enumerate(sorted(self.msgs), start=1)}
                gone = [u for u in sorted(self.msgs) if b"\\Deleted" in self.flags[u]]
                for u in sorted(gone, reverse=True):
                    c.sendall(b"* %d EXPUNGE\r\n" % seqs[u])
                for u in gone:
                    del self.msgs[u]
                    del self.flags[u]
                done(b"expunged")
            elif cmd == b"LOGOUT":
                c.sendall(b"* BYE bye\r\n")
                done(b"bye")
                return
            elif cmd in (b"UNSELECT", b"ID", b"ENABLE"):
                done()
            else:
                c.sendall(tag + b" BAD unknown command\r\n")


class _Relay(LoopbackAcceptor):
    """What the relays share: an upstream connection per client connection
    on 127.0.0.1, 30 s idle each, and closing both sides on stop()."""

    def __init__(self, upstream_port: int, max_conns: int):
        self.upstream_port = upstream_port
        self.socks: List[socket.socket] = []
        super().__init__(max_conns)

    def _upstream(self, c: socket.socket) -> socket.socket:
        up = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=30)
        c.settimeout(30)
        self.socks += [c, up]
        return up

    def stop(self) -> None:
        self._stop_accepting()
        for s in self.socks:
            try:
                s.close()
            except OSError:
                pass


class RefusingRelay(_Relay):
    """A fault-injecting relay in front of a real IMAP server (the testbed's
    Dovecot): commands pass through unchanged, except those for which
    ``refuse(command)`` returns a text: those are not forwarded but answered
    ``<tag> NO <text>`` by the relay, as a backend that refuses that one
    command would (Dovecot cannot be made to: its ACL plugin drops the flags
    silently and a failed FETCH disconnects). ``refused`` records them.

    Client lines are relayed whole, literals (``{n}``/``{n+}``) included; the
    server's bytes are relayed as they come. pop3server does not pipeline
    IMAP commands, so an answer the relay makes never lands inside one of
    the server's. Bounded: ``max_conns`` connections, 30 s idle each. A
    text that starts with ``BAD `` is answered as it is (``<tag> BAD
    ...``), as Microsoft 365 answers some commands."""

    def __init__(self, upstream_port: int, refuse: Callable[[bytes], Optional[bytes]],
                 max_conns: int = 20):
        self.refuse = refuse
        self.refused: List[bytes] = []
        self.forwarded: List[bytes] = []
        self.lock = threading.Lock()
        super().__init__(upstream_port, max_conns)

    WHOLE_FETCH = re.compile(rb"^UID FETCH ([\d,]+) \(UID BODY(\.PEEK)?\[\]\)$", re.I)

    def whole_fetches(self) -> List[Tuple[int, bool]]:
        """[(uid, peek)] of the whole-message fetches passed on, in order
        (a fetch of several UIDs, like 4,5,6, is one entry for each)."""
        return [(int(uid), bool(m.group(2)))
                for m in map(self.WHOLE_FETCH.match, self.forwarded) if m
                for uid in m.group(1).split(b",")]

    def _on_connection(self, c: socket.socket, peer) -> None:
        up = self._upstream(c)
        threading.Thread(target=self._down, args=(up, c), daemon=True).start()
        threading.Thread(target=self._up, args=(c, up), daemon=True).start()

    def _down(self, up: socket.socket, c: socket.socket) -> None:
        try:
            while True:
                d = up.recv(65536)
                if not d:
                    break
                with self.lock:
                    c.sendall(d)
        except OSError:
            pass
        finally:
            self._close_both(c, up)

    @staticmethod
    def _close_both(c: socket.socket, up: socket.socket) -> None:
        for s in (c, up):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _up(self, c: socket.socket, up: socket.socket) -> None:
        f = c.makefile("rb")
        try:
            for _ in range(100000):
                full = pending = f.readline(1 << 20)
                if not full:
                    break
                streamed = False
                for _ in range(10):  # at most 10 literals per command
                    m = re.search(rb"\{(\d+)(\+?)\}\r\n$", pending)
                    if not m or int(m.group(1)) > 1 << 20:
                        break
                    if not m.group(2):
                        # A synchronizing literal: the client waits for the
                        # server's "+", so what came so far must go on now
                        # (such a command is never refused).
                        up.sendall(pending)
                        streamed = True
                        pending = b""
                    more = f.read(int(m.group(1))) + f.readline(1 << 20)
                    full += more
                    pending += more
                tag, _, rest = full.partition(b" ")
                command = rest.rstrip(b"\r\n")
                text = None if streamed else self.refuse(command)
                if text is not None:
                    self.refused.append(command)
                    answer = text if text.startswith(b"BAD ") else b"NO " + text
                    with self.lock:
                        c.sendall(tag + b" " + answer + b"\r\n")
                    continue
                self.forwarded.append(command)
                up.sendall(pending if streamed else self._rewrite(up, pending))
        except OSError:
            pass
        finally:
            try:
                up.shutdown(socket.SHUT_WR)
            except OSError:
                pass


    def _rewrite(self, up: socket.socket, command: bytes) -> bytes:
        """What is sent upstream for a (whole, unrefused) command line."""
        return command


class EditingRelay(RefusingRelay):
    """A RefusingRelay that passes the server's lines through ``_edit``
    (which returns the line to pass on, or None to cut the connection
    there), literals whole after their line."""

    def _edit(self, up: socket.socket, line: bytes) -> Optional[bytes]:
        return line

    def _down(self, up: socket.socket, c: socket.socket) -> None:
        f = up.makefile("rb")
        try:
            for _ in range(10_000_000):
                line = f.readline(1 << 20)
                if not line:
                    break
                out = self._edit(up, line)
                if out is None:
                    break
                m = re.search(rb"\{(\d+)\}\r\n$", line)
                if m:
                    out += f.read(int(m.group(1)))
                with self.lock:
                    c.sendall(out)
        except OSError:
            pass
        finally:
            self._close_both(c, up)


class GmailRelay(EditingRelay):
    """A RefusingRelay that makes the testbed's Dovecot look like Gmail as
    far as X-GM-MSGID goes (Gmail itself cannot run here): it adds
    ``X-GM-EXT-1`` to every capability list, takes ``X-GM-MSGID`` out of
    the fetch items it passes on (Dovecot would refuse it), and adds
    ``X-GM-MSGID <msgid(uid)>`` to each FETCH answer of such a command.
    The ids are ``BASE + uid``, so a test knows the UIDLs to expect.

    Server lines are read one by one, and each literal's bytes are passed
    through untouched, so message content is never edited. Bounded like
    the RefusingRelay."""

    BASE = 0x1000000000000000

    @classmethod
    def msgid(cls, uid: int) -> int:
        return cls.BASE + uid

    def __init__(self, upstream_port: int, max_conns: int = 20):
        self.asking: Dict[int, bytes] = {}  # upstream socket fd -> tag of an X-GM-MSGID fetch
        super().__init__(upstream_port, lambda command: None, max_conns)

    def _rewrite(self, up: socket.socket, command: bytes) -> bytes:
        if b"X-GM-MSGID" not in command.upper():
            return command
        tag = command.split(b" ", 1)[0]
        with self.lock:
            self.asking[up.fileno()] = tag
        return re.sub(rb"\s*X-GM-MSGID", b"", command, flags=re.I)

    def _edit(self, up: socket.socket, line: bytes) -> bytes:
        if b"CAPABILITY " in line:
            return line.replace(b"IMAP4rev1", b"IMAP4rev1 X-GM-EXT-1", 1)
        with self.lock:
            tag = self.asking.get(up.fileno())
        if tag is None:
            return line
        if line.startswith(tag + b" "):
            with self.lock:
                self.asking.pop(up.fileno(), None)
            return line
        m = re.match(rb"^(\* \d+ FETCH \()(.*\bUID (\d+).*)$", line, re.S)
        if m:
            return m.group(1) + b"X-GM-MSGID %d " % self.msgid(int(m.group(3))) + m.group(2)
        return line


class EstimatingRelay(EditingRelay):
    """A RefusingRelay that makes the testbed's Dovecot report sizes as
    Exchange does when it does not know a message's RFC 5322 size: every
    ``RFC822.SIZE n`` in a FETCH answer becomes ``factor * n``, while the
    bodies (literals) pass unchanged. Server lines are read one by one and
    each literal's bytes are passed on as they are, so a body that happens
    to contain the words is never edited."""

    def __init__(self, upstream_port: int, factor: int = 3, max_conns: int = 20):
        self.factor = factor
        super().__init__(upstream_port, lambda command: None, max_conns)

    def _edit(self, up: socket.socket, line: bytes) -> bytes:
        if not re.match(rb"^\* \d+ FETCH \(", line):
            return line
        return re.sub(rb"RFC822\.SIZE (\d+)",
                      lambda m: b"RFC822.SIZE %d" % (int(m.group(1)) * self.factor), line)


class TricklingRelay(_Relay):
    """A TCP relay in front of a real server that passes bytes through as
    they come until ``trickle`` is set; from then on the server's bytes go
    to the client one per ``interval`` seconds (at most ``max_trickled`` of
    them per connection, then the relay stops sending).  In front of an
    implicit-TLS port the client sees a TLS record that never completes in
    time, one byte arriving well within any per-read timeout.  Bounded:
    ``max_conns`` connections, 30 s idle each."""

    def __init__(self, upstream_port: int, interval: float = 1.0, max_trickled: int = 120,
                 max_conns: int = 10):
        self.interval = interval
        self.max_trickled = max_trickled
        self.trickle = threading.Event()
        self.trickled = 0
        super().__init__(upstream_port, max_conns)

    def _on_connection(self, c: socket.socket, peer) -> None:
        up = self._upstream(c)
        threading.Thread(target=self._pipe, args=(up, c, True), daemon=True).start()
        threading.Thread(target=self._pipe, args=(c, up, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, downstream: bool) -> None:
        try:
            while not self.stopping.is_set():
                d = src.recv(65536)
                if not d:
                    break
                if not (downstream and self.trickle.is_set()):
                    dst.sendall(d)
                    continue
                for i in range(len(d)):
                    if self.stopping.is_set() or self.trickled >= self.max_trickled:
                        return
                    dst.sendall(d[i:i + 1])
                    self.trickled += 1
                    time.sleep(self.interval)
        except OSError:
            pass


class RedisServer:
    """redis-server on 127.0.0.1 in a temp dir, no persistence."""

    def __init__(self, workdir: str, password: str = None):
        self.binary = need("redis-server", "redis-server")
        self.cli_binary = need("redis-cli", "redis-tools")
        from testbed import free_port  # scripts/ is on sys.path (conftest)
        self.port = free_port()
        self.password = password
        self.dir = os.path.join(workdir, "redis-%d" % self.port)
        os.makedirs(self.dir, exist_ok=True)
        cmd = [self.binary, "--bind", "127.0.0.1", "--port", str(self.port),
               "--save", "", "--appendonly", "no", "--dir", self.dir,
               "--daemonize", "no", "--protected-mode", "yes"]
        if password:
            cmd += ["--requirepass", password]
        self.log = open(os.path.join(self.dir, "redis.log"), "ab")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=self.log,
                                     stdin=subprocess.DEVNULL)
        assert wait_for(lambda: self._pong(), 10), "redis-server did not start"

    def _pong(self) -> bool:
        try:
            return self.cli("PING") == "PONG"
        except (subprocess.SubprocessError, OSError):
            return False

    def cli(self, *args: str) -> str:
        cmd = [self.cli_binary, "-h", "127.0.0.1", "-p", str(self.port)]
        if self.password:
            cmd += ["--no-auth-warning", "-a", self.password]
        r = subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=10)
        return r.stdout.strip()

    def lock_keys(self):
        out = self.cli("--scan", "--pattern", "pop3server:lock:*")
        return [k for k in out.splitlines() if k]

    @property
    def address(self) -> str:
        return "127.0.0.1:%d" % self.port

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()
