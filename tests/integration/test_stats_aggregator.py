"""The statistics aggregator, ``pop3server --stats``, as Prometheus meets it:
synthetic datagrams from Python on its UNIX socket, its /metrics page read
over HTTP and checked value by value, by ``promtool check metrics`` (no
warning allowed) and by Debian's real Prometheus scraping it on loopback;
a SIGKILL and a restart on the same socket; garbage and a flood of labels;
the example alert rules through ``promtool check rules`` and ``promtool
test rules``. No Dovecot needed.

Needs (Debian): prometheus (prometheus and promtool); a missing tool fails
the test that needs it. Every bind is on 127.0.0.1, every wait bounded.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from typing import List

import pytest

from helpers import REPO, need, wait_for
from stats_support import Aggregator, Prometheus, binary, event, get, send

RULES_DIR = os.path.join(REPO, "packaging", "prometheus")
# From src/limits.rs.
MAX_STATS_DATAGRAM = 1024
MAX_STATS_LABEL_SETS = 1000
MAX_METRICS_CONNECTIONS = 4


def a_day_of_events() -> List[bytes]:
    """Sessions of a small site: three sessions (two over TLS), logins of
    two kinds, a token, a throttled backend, a lock conflict."""
    return [
        event("session-start"), event("session-start"), event("session-start"),
        event("login", method="USER", result="ok"),
        event("login", method="USER", result="ok"),
        event("login", method="AUTH PLAIN", result="failed"),
        event("backend-login", backend="default", seconds="0.012"),
        event("backend-login", backend="m365", seconds="0.400000"),
        event("session-end", end="quit", tls="TLSv1.3", retrieved=3, retrieved_bytes=4096,
              deleted=2, seconds="1.5"),
        event("session-end", end="quit", tls="TLSv1.2", retrieved=1, retrieved_bytes=100,
              deleted=0, seconds="0.2"),
        event("session-end", end="timeout", retrieved=0, retrieved_bytes=0, deleted=0,
              seconds="600"),
        event("token", source="m365", grant="client_credentials", result="ok",
              seconds="0.2", expires=1800000000),
        event("throttled", backend="m365"),
        event("lock-conflict", kind="local"),
    ]


# --------------------------------------------------------------------------
# the page
# --------------------------------------------------------------------------

def test_events_are_counted_and_served(aggregators):
    a = aggregators()
    fresh = a.samples()
    for name in ("pop3server_sessions_started_total", "pop3server_retrieved_messages_total",
                 "pop3server_session_duration_seconds_count"):
        assert fresh[name] == 0, name
    send(a.socket_path, *a_day_of_events())
    s = a.wait_value("pop3server_lock_conflicts_total{kind=\"local\"}", 1)
    expected = {
        "pop3server_sessions_started_total": 3,
        'pop3server_logins_total{method="USER",result="ok"}': 2,
        'pop3server_logins_total{method="AUTH PLAIN",result="failed"}': 1,
        'pop3server_sessions_total{end="quit"}': 2,
        'pop3server_sessions_total{end="timeout"}': 1,
        'pop3server_tls_sessions_total{version="TLSv1.2"}': 1,
        'pop3server_tls_sessions_total{version="TLSv1.3"}': 1,
        "pop3server_retrieved_messages_total": 4,
        "pop3server_retrieved_bytes_total": 4196,
        "pop3server_deleted_messages_total": 2,
        "pop3server_session_duration_seconds_count": 3,
        "pop3server_session_duration_seconds_sum": 601.7,
        'pop3server_session_duration_seconds_bucket{le="0.25"}': 1,
        'pop3server_session_duration_seconds_bucket{le="2.5"}': 2,
        'pop3server_session_duration_seconds_bucket{le="600"}': 3,
        'pop3server_session_duration_seconds_bucket{le="+Inf"}': 3,
        'pop3server_backend_login_duration_seconds_bucket{backend="default",le="0.025"}': 1,
        'pop3server_backend_login_duration_seconds_bucket{backend="m365",le="0.25"}': 0,
        'pop3server_backend_login_duration_seconds_bucket{backend="m365",le="0.5"}': 1,
        'pop3server_token_requests_total{source="m365",grant="client_credentials",result="ok"}': 1,
        'pop3server_token_expiry_timestamp_seconds{source="m365"}': 1800000000,
        'pop3server_backend_throttled_total{backend="m365"}': 1,
        'pop3server_stats_events_dropped_total{reason="foreign"}': 0,
    }
    for name, value in expected.items():
        assert s.get(name) == pytest.approx(value), name
    assert s["pop3server_build_info{version=\"%s\"}" % version()] == 1
    assert abs(s["process_start_time_seconds"] - time.time()) < 3600


def version() -> str:
    out = subprocess.run([binary(), "--version"], capture_output=True, text=True,
                         timeout=30).stdout
    return out.split()[1]


def test_http_answers(aggregators):
    a = aggregators()
    status, headers, body = get(a.port, "/metrics")
    assert status == 200
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert headers["Connection"] == "close"
    assert int(headers["Content-Length"]) == len(body.encode())
    assert get(a.port, "/")[0] == 404
    assert get(a.port, "/metrics", method="POST")[0] == 405
    status, headers, body = get(a.port, "/metrics", method="HEAD")
    assert status == 200 and body == "" and int(headers["Content-Length"]) > 1000
    # A request head past the bound is refused, not read on for ever.
    with socket.create_connection(("127.0.0.1", a.port), timeout=10) as c:
        c.sendall(b"GET /metrics HTTP/1.1\r\nX-Filler: " + b"x" * 20000 + b"\r\n\r\n")
        answer = c.recv(4096)
    assert answer.startswith(b"HTTP/1.1 431 "), answer


def test_silent_connections_cannot_starve_the_scraper(aggregators):
    """At most MAX_METRICS_CONNECTIONS at once: one more is answered 503
    at once; once they are gone, scrapes are served again."""
    a = aggregators()
    silent = [socket.create_connection(("127.0.0.1", a.port), timeout=10)
              for _ in range(MAX_METRICS_CONNECTIONS)]
    try:
        # Each has its thread once the aggregator accepted it: until then
        # a scrape may still get through, so ask until one is refused.
        def refused():
            return get(a.port, "/metrics")[0] == 503
        assert wait_for(refused, 10), "the connections were not bounded"
    finally:
        for c in silent:
            c.close()
    assert wait_for(lambda: get(a.port, "/metrics")[0] == 200, 10)


def test_promtool_accepts_the_page_without_warnings(aggregators):
    promtool = need("promtool", "prometheus")
    a = aggregators()
    send(a.socket_path, *a_day_of_events())
    # Values the text format must escape, and ones that become "other".
    send(a.socket_path,
         event("throttled", backend='back\\slash "quoted"'),
         event("throttled", backend="x" * 100),
         event("login", method="X\tY", result="refused"),
         b"garbage")
    a.wait_value('pop3server_stats_events_dropped_total{reason="foreign"}', 1)
    page = a.page()
    assert 'backend="back\\\\slash \\"quoted\\""' in page, page
    assert 'backend="other"' in page and 'method="other"' in page
    r = subprocess.run([promtool, "check", "metrics"], input=page, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr


def test_prometheus_scrapes_it(aggregators, tmp_path):
    """Debian's Prometheus scrapes the aggregator every second and has the
    values; it also loads the example rules."""
    a = aggregators()
    send(a.socket_path, *a_day_of_events())
    a.wait_value("pop3server_sessions_started_total", 3)
    prom = Prometheus(str(tmp_path / "prometheus"), ["127.0.0.1:%d" % a.port],
                      [os.path.join(RULES_DIR, "pop3server-rules.yml")])
    try:
        value = prom.value
        assert wait_for(lambda: value("pop3server_sessions_started_total") == 3, 60, 0.5), \
            prom.log()[-3000:]
        assert value('up{job="pop3server"}') == 1
        assert value('pop3server_logins_total{method="USER",result="ok"}') == 2
        assert value("pop3server_retrieved_bytes_total") == 4196
        assert value('histogram_quantile(1, pop3server_session_duration_seconds_bucket)') == 600
        # New events arrive at the next scrape.
        send(a.socket_path, event("session-start"))
        assert wait_for(lambda: value("pop3server_sessions_started_total") == 4, 30, 0.5)

        def rules_loaded() -> bool:
            groups = ((prom.api("/api/v1/rules") or {}).get("data") or {}).get("groups") or []
            return sum(len(g.get("rules", [])) for g in groups) == 7
        assert wait_for(rules_loaded, 30, 0.5)
    finally:
        prom.stop()


# --------------------------------------------------------------------------
# start, stop, restart
# --------------------------------------------------------------------------

def test_readiness_is_told_once_both_sockets_are_bound(aggregators, tmp_path):
    notify_path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(notify_path)
        notify.settimeout(10)
        a = aggregators(env=dict(os.environ, NOTIFY_SOCKET=notify_path))
        msg = notify.recv(4096)
    assert b"READY=1" in msg.split(b"\n"), msg
    assert os.path.exists(a.socket_path)


def test_sigterm_removes_its_socket_and_nothing_else(aggregators, tmp_path):
    lock = tmp_path / "a-session.lock"
    lock.write_text("")
    a = aggregators()
    mode = os.stat(a.socket_path).st_mode
    assert mode & 0o777 == 0o660, oct(mode)
    assert a.stop(signal.SIGTERM) == 0, a.log()
    assert not os.path.exists(a.socket_path)
    assert lock.exists() and tmp_path.is_dir()
    assert "stopping on SIGTERM" in a.log(), a.log()


def test_killed_and_restarted_on_the_same_socket(aggregators, tmp_path):
    """SIGKILL leaves the socket file behind: the next aggregator finds
    nothing bound to it, replaces it, and counts from zero."""
    first = aggregators()
    send(first.socket_path, *a_day_of_events())
    first.wait_value("pop3server_sessions_started_total", 3)
    started = first.samples()["process_start_time_seconds"]
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL
    assert os.path.exists(first.socket_path), "SIGKILL cannot remove the socket"
    with pytest.raises(ConnectionRefusedError):
        send(first.socket_path, event("session-start"))

    second = aggregators()
    s = second.samples()
    assert s["pop3server_sessions_started_total"] == 0
    assert s["process_start_time_seconds"] > started
    send(second.socket_path, event("session-start"), event("login", method="USER",
                                                            result="ok"))
    s = second.wait_value("pop3server_sessions_started_total", 1)
    assert s['pop3server_logins_total{method="USER",result="ok"}'] == 1
    assert "removed the stale socket" in second.log(), second.log()


def test_a_second_aggregator_and_a_file_that_is_no_socket_are_refused(aggregators, tmp_path):
    first = aggregators()
    second = Aggregator(str(tmp_path), wait=False)
    assert second.proc.wait(20) == 2
    log = second.log()
    assert "another aggregator receives on %s already" % first.socket_path in log, log
    assert first.answers(), "the first aggregator was disturbed"
    assert first.stop() == 0

    other = tmp_path / "other"
    other.mkdir()
    precious = other / "stats.sock"
    precious.write_text("not a socket")
    third = Aggregator(str(other), wait=False)
    assert third.proc.wait(20) == 2
    log = third.log()
    assert re.search(r"stats\.sock exists and is not a socket: it is left alone", log), log
    assert len(log.strip().splitlines()) == 1, log
    assert precious.read_text() == "not a socket"


# --------------------------------------------------------------------------
# hostile senders
# --------------------------------------------------------------------------

def test_garbage_is_counted_as_dropped(aggregators):
    a = aggregators()
    send(a.socket_path,
         b"",
         b"GET / HTTP/1.0\r\n\r\n",
         b"pop3server-stats 2 session-start",
         b"pop3server-stats 1 reboot now=1",
         b"pop3server-stats 1 login method=USER",
         b"pop3server-stats 1 login method=USER result=ok result=ok",
         b"pop3server-stats 1 \xff\xfe",
         event("throttled", backend="x" * (MAX_STATS_DATAGRAM + 100)),
         b"\x00" * 5000,
         event("session-start"))
    s = a.wait_value("pop3server_sessions_started_total", 1)
    # Foreign: the empty one, HTTP, version 2. Malformed: a missing and a
    # doubled field, not UTF-8, the two too long for a datagram.
    assert s['pop3server_stats_events_dropped_total{reason="foreign"}'] == 3
    assert s['pop3server_stats_events_dropped_total{reason="unknown"}'] == 1
    assert s['pop3server_stats_events_dropped_total{reason="malformed"}'] == 5


def test_a_flood_of_labels_stays_bounded(aggregators):
    """Thousands of distinct backends and methods: every event is counted,
    but each metric keeps at most MAX_STATS_LABEL_SETS label sets, and the
    aggregator's memory and page stay small."""
    a = aggregators()
    rss_before = rss_kib(a.proc.pid)
    n = 3 * MAX_STATS_LABEL_SETS
    batch = []
    for i in range(n):
        batch.append(event("throttled", backend="b%05d" % i))
        batch.append(event("login", method="M%05d" % i, result="failed"))
    send(a.socket_path, *batch)
    send(a.socket_path, event("session-start"))
    s = a.wait_value("pop3server_sessions_started_total", 1, timeout=30)
    throttled = {k: v for k, v in s.items() if k.startswith("pop3server_backend_throttled_total")}
    logins = {k: v for k, v in s.items() if k.startswith("pop3server_logins_total")}
    assert len(throttled) == MAX_STATS_LABEL_SETS
    assert len(logins) == MAX_STATS_LABEL_SETS
    assert sum(throttled.values()) == n and sum(logins.values()) == n
    assert throttled['pop3server_backend_throttled_total{backend="other"}'] == \
        n - (MAX_STATS_LABEL_SETS - 1)
    page = a.page()
    assert len(page) < 512 * 1024, len(page)
    grown = rss_kib(a.proc.pid) - rss_before
    print("RSS grew by %d KiB for %d label sets offered" % (grown, 2 * n))
    assert grown < 16 * 1024, grown


def rss_kib(pid: int) -> int:
    with open("/proc/%d/status" % pid) as f:
        for ln in f:
            if ln.startswith("VmRSS:"):
                return int(ln.split()[1])
    raise AssertionError("no VmRSS for %d" % pid)


# --------------------------------------------------------------------------
# the example alert rules
# --------------------------------------------------------------------------

def test_the_example_rules_are_valid_and_pass_their_unit_tests():
    promtool = need("promtool", "prometheus")
    rules = os.path.join(RULES_DIR, "pop3server-rules.yml")
    r = subprocess.run([promtool, "check", "rules", rules], capture_output=True, text=True,
                       timeout=60)
    print(r.stdout + r.stderr)
    assert r.returncode == 0 and "SUCCESS: 7 rules found" in r.stdout, r.stdout + r.stderr
    r = subprocess.run([promtool, "test", "rules", "pop3server-rules.test.yml"],
                       cwd=RULES_DIR, capture_output=True, text=True, timeout=120)
    print(r.stdout + r.stderr)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr
