"""What the statistics tests share: the aggregator (``pop3server --stats``)
on a socket in a temp dir, its page over HTTP, synthetic datagrams, and
Debian's real Prometheus on loopback. Every bind is on 127.0.0.1, every
wait bounded."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from typing import Dict, List, Optional, Tuple

import pytest

from helpers import BUILD_HINT, need, server_bin, wait_for
from testbed import free_port


def binary() -> str:
    b = server_bin()
    if not os.access(b, os.X_OK):
        pytest.fail("server binary %s missing: %s (or set POP3SERVER_BIN)" % (b, BUILD_HINT))
    return b


class Aggregator:
    """``pop3server --stats`` on a socket in ``directory`` and a loopback
    port, its output in a log file; stop() ends it (SIGTERM, then
    SIGKILL) and returns its exit status."""

    def __init__(self, directory: str, port: Optional[int] = None,
                 env: Optional[dict] = None, wait: bool = True):
        self.socket_path = os.path.join(directory, "stats.sock")
        self.port = port or free_port()
        self.log_path = os.path.join(directory, "aggregator-%d.log" % self.port)
        self.logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [binary(), "--stats", "--stats-socket", self.socket_path,
             "--metrics-listen", "127.0.0.1:%d" % self.port, "--config", "/dev/null",
             "--log", "stderr"],
            stdin=subprocess.DEVNULL, stdout=self.logf, stderr=self.logf,
            start_new_session=True, env=env)
        if wait:
            assert wait_for(self.answers, 10), "the aggregator did not come up:\n" + self.log()

    def log(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def answers(self) -> bool:
        assert self.proc.poll() is None, "the aggregator exited:\n" + self.log()
        try:
            status, _, _ = get(self.port, "/metrics")
            return status == 200
        except OSError:
            return False

    def page(self) -> str:
        status, _, body = get(self.port, "/metrics")
        assert status == 200, status
        return body

    def samples(self) -> Dict[str, float]:
        return parse(self.page())

    def wait_value(self, sample: str, value: float, timeout: float = 10) -> Dict[str, float]:
        """The samples once ``sample`` has ``value`` (datagrams are read in a
        thread of their own: a scrape right after a send may be early)."""
        seen = {}

        def there():
            seen.update(self.samples())
            return seen.get(sample) == value
        assert wait_for(there, timeout), "%s is %s, not %s" % (sample, seen.get(sample), value)
        return seen

    def kill(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.kill(sig)
        try:
            rc = self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.kill(signal.SIGKILL)
            rc = self.proc.wait(10)
        self.logf.close()
        return rc


def get(port: int, path: str, method: str = "GET") -> Tuple[int, Dict[str, str], str]:
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path), method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


def send(path: str, *datagrams: bytes) -> None:
    # A blocking socket: when the aggregator's queue is full, the send
    # waits for it instead of losing the datagram.
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.settimeout(10)
        for d in datagrams:
            s.sendto(d, path)


def parse(page: str) -> Dict[str, float]:
    """Sample name with its labels -> value."""
    out = {}
    for ln in page.splitlines():
        if ln and not ln.startswith("#"):
            name, value = ln.rsplit(" ", 1)
            out[name] = float(value)
    return out


def event(name: str, **fields: str) -> bytes:
    text = "pop3server-stats 1 " + name
    for k, v in fields.items():
        text += " %s=%s" % (k, urllib.parse.quote(str(v), safe="._-:/+"))
    return text.encode()


class Prometheus:
    """Debian's real Prometheus on 127.0.0.1, storage in ``directory``,
    scraping ``targets`` (host:port) every second, with ``rule_files``;
    stop() ends it."""

    def __init__(self, directory: str, targets: List[str], rule_files: List[str] = ()):
        self.binary = need("prometheus", "prometheus")
        self.port = free_port()
        os.makedirs(directory, exist_ok=True)
        config = os.path.join(directory, "prometheus.yml")
        with open(config, "w") as f:
            f.write("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n")
            if rule_files:
                f.write("rule_files:\n" + "".join("  - %s\n" % r for r in rule_files))
            f.write("scrape_configs:\n  - job_name: pop3server\n    static_configs:\n"
                    "      - targets: [%s]\n" % ", ".join("'%s'" % t for t in targets))
        self.log_path = os.path.join(directory, "prometheus.log")
        with open(self.log_path, "wb") as logf:
            self.proc = subprocess.Popen(
                [self.binary, "--config.file=%s" % config,
                 "--storage.tsdb.path=%s" % os.path.join(directory, "data"),
                 "--web.listen-address=127.0.0.1:%d" % self.port],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, start_new_session=True)

    def log(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def api(self, path: str):
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d%s" % (self.port, path),
                                        timeout=5) as r:
                return json.load(r)
        except (OSError, ValueError):
            return None

    def query(self, q: str) -> List[dict]:
        assert self.proc.poll() is None, "prometheus exited:\n" + self.log()[-3000:]
        answer = self.api("/api/v1/query?" + urllib.parse.urlencode({"query": q}))
        return (answer or {}).get("data", {}).get("result", [])

    def value(self, q: str) -> Optional[float]:
        result = self.query(q)
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
