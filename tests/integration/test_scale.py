"""10,000 messages and a 20 MiB RETR: correctness asserted, numbers printed
(and appended to target/integration-metrics.txt)."""

import os
import re
import threading
import time

import testbed
from helpers import ImapView, record_metric, Pop3, dovecot_uidl, ok, pop3_expected


def test_ten_thousand_message_maildrop(dovecot, server):
    with ImapView(dovecot.dc, "bob") as v:
        sizes = v.uid_sizes()
        uv = v.uidvalidity()
    assert len(sizes) == 10000
    t0 = time.monotonic()
    with Pop3(server.port, timeout=120) as p:
        assert ok(p.login("bob", "secret"))
        t_login = time.monotonic() - t0
        count, total = p.stat()
        t_stat = time.monotonic() - t0
        uidl = p.uidl()
        t_uidl = time.monotonic() - t0
        lst = p.list()
        t_list = time.monotonic() - t0
        assert count == 10000
        assert total == sum(s for _, s in sizes)
        assert len(uidl) == 10000 and len(lst) == 10000
        for n, (uid, size) in enumerate(sizes, start=1):
            assert lst[n] == size
            assert uidl[n] == dovecot_uidl(uid, uv)
        st, body = p.retr(10000)
        assert ok(st) and b"Subject: bob 10000\r\n" in body
        assert ok(p.quit())
    record_metric("bob 10000 msgs: login %.3fs, +STAT %.3fs, +UIDL %.3fs, +LIST %.3fs (cumulative)"
                  % (t_login, t_stat, t_uidl, t_list))


def _vm(pid, key):
    try:
        with open("/proc/%d/status" % pid) as f:
            m = re.search(r"^%s:\s+(\d+) kB" % key, f.read(), re.M)
            return int(m.group(1)) if m else None
    except OSError:
        return None


def test_retr_20mib_memory_stays_bounded(dovecot, inetd):
    n = dovecot.carol_number("big20")
    with ImapView(dovecot.dc, "carol") as v:
        body = v.body(n)
    expected = pop3_expected(body)
    with Pop3(inetd.port, timeout=120) as p:
        proc = inetd.child_for(p)
        assert ok(p.login("carol", "secret"))
        hwm_before = _vm(proc.pid, "VmHWM")
        peak_rss = [0]
        stop = threading.Event()

        def sample():
            for _ in range(20000):  # bounded: at most ~200 s
                if stop.is_set():
                    return
                r = _vm(proc.pid, "VmRSS")
                if r:
                    peak_rss[0] = max(peak_rss[0], r)
                time.sleep(0.01)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        t0 = time.monotonic()
        st, got = p.retr(n)
        elapsed = time.monotonic() - t0
        stop.set()
        th.join(5)
        hwm = _vm(proc.pid, "VmHWM")
        assert ok(st)
        assert got == expected
        assert ok(p.quit())
    record_metric("RETR 20 MiB (%d octets): %.2fs; server VmHWM %s kB (after login %s kB), "
                  "sampled peak VmRSS %d kB" % (len(body), elapsed, hwm, hwm_before, peak_rss[0]))
    assert hwm is not None and hwm_before is not None, "no VmHWM in /proc/%d/status" % proc.pid
    # Memory must not grow with message size: the 20 MiB pass through in
    # 256 KiB pieces (about 0.5 MiB of growth today).
    assert hwm - hwm_before < 16 * 1024, \
        "VmHWM grew by %d kB during a 20 MiB RETR (%d -> %d kB)" % (hwm - hwm_before,
                                                                   hwm_before, hwm)
    assert hwm < 24 * 1024, "VmHWM %d kB after a 20 MiB RETR" % hwm
    # The kernel updates VmHWM lazily (RSS counters are synced in batches),
    # so a sample may see a little more than it: bound the samples too.
    assert peak_rss[0] < 24 * 1024, "sampled VmRSS %d kB during a 20 MiB RETR" % peak_rss[0]


def test_ten_clients_retrieving_50mib_at_once_stay_small(dovecot, fresh_user, inetd):
    """10 sessions (10 users: one maildrop admits one session) RETR a 50 MiB
    message at the same time: each session process stays under 32 MiB of
    peak RSS, because messages pass through in pieces."""
    body = testbed.big_message(50 * 1024 * 1024, seed=5050)
    users = [fresh_user(messages=[body]) for _ in range(10)]
    expected = pop3_expected(body)
    peaks, errors = [], []
    lock = threading.Lock()

    def one(user):
        try:
            with Pop3(inetd.port, timeout=120) as p:
                assert ok(p.login(user, "secret"))
                child = inetd.child_for(p)
                st, got = p.retr(1)
                hwm = _vm(child.pid, "VmHWM")
                assert ok(st) and got == expected, user
                with lock:
                    peaks.append(hwm)
                p.quit()
        except Exception as e:  # noqa: BLE001 - reported below
            with lock:
                errors.append(repr(e))
    threads = [threading.Thread(target=one, args=(u,)) for u in users]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    elapsed = time.monotonic() - t0
    record_metric("10 x RETR 50 MiB at once: %.1fs, peak VmHWM per session process %s kB"
                  % (elapsed, max(p for p in peaks if p) if any(peaks) else "-"))
    assert not errors and len(peaks) == 10, errors
    assert all(p is not None and p < 32 * 1024 for p in peaks), peaks


def test_listener_file_descriptors_do_not_grow_over_1000_sessions(server):
    """1,000 sequential sessions through the standalone listener: its open
    descriptors stay where they were (children reaped, sockets closed)."""
    def fds():
        return len(os.listdir("/proc/%d/fd" % server.proc.pid))
    with Pop3(server.port) as p:  # one session first: lazily opened things
        assert ok(p.login("alice", "secret"))
        p.quit()
    time.sleep(1.0)  # the reaper runs every 0.5 s
    before = fds()
    t0 = time.monotonic()
    for _ in range(1000):
        with Pop3(server.port, timeout=20) as p:
            assert ok(p.greeting)
            assert p.cmd("QUIT").startswith(b"+OK")
    elapsed = time.monotonic() - t0
    time.sleep(1.0)
    after = fds()
    record_metric("1,000 sequential sessions through the listener: %.1fs, listener fds %d -> %d"
                  % (elapsed, before, after))
    assert after <= before + 2, (before, after)
