"""Statistics from real sessions: pop3server sessions against the real
Dovecot (and a device against the OAuth2 Dovecot with the stand-in identity
provider) send their events to the aggregator (``pop3server --stats``),
which Debian's real Prometheus scrapes; after a known set of sessions (good
logins, a failed login, RETRs, a DELE, a device login with a token
request) Prometheus' HTTP API has the expected values, and ``promtool check
metrics`` accepts the page. An aggregator killed and restarted mid-run
loses nothing but its counts, and sessions while it is down succeed.

No timed assertions: every wait is bounded and polls."""

from __future__ import annotations

import signal
import subprocess
import time

from helpers import ImapView, Pop3, need, ok, wait_for
from stats_support import Aggregator, Prometheus
from test_oauth_devices import DEVICE_PW, Site, idp, oauth_dovecot  # noqa: F401 (fixtures)


def good_session(port: int, user: str, retr, dele=()) -> None:
    with Pop3(port, timeout=30) as p:
        assert ok(p.login(user, "secret"))
        for n in retr:
            st, _ = p.retr(n)
            assert ok(st), st
        for n in dele:
            assert ok(p.cmd("DELE %d" % n))
        assert ok(p.quit())


def failed_session(port: int, user: str) -> None:
    with Pop3(port, timeout=30) as p:
        st = p.login(user, "not-the-password")
        assert st.startswith(b"-ERR [AUTH]"), st
        assert ok(p.quit())


def test_sessions_reach_prometheus_with_the_expected_values(
        tmp_path, dovecot, fresh_user, make_server, aggregators, idp, oauth_dovecot):
    a = aggregators()
    user = fresh_user(n=3)
    with ImapView(dovecot.dc, user) as v:
        sizes = [len(v.body(u)) for u in v.uids()]
    s = make_server(["--stats-socket", a.socket_path])
    good_session(s.port, user, retr=[1, 2], dele=[1])
    good_session(s.port, user, retr=[1])
    failed_session(s.port, user)
    (tmp_path / "site").mkdir()
    site = Site(tmp_path / "site", idp, oauth_dovecot)
    d = make_server(site.args("--stats-socket", a.socket_path), backend_port=oauth_dovecot.port)
    with Pop3(d.port, timeout=60) as p:
        assert ok(p.login("scanner", DEVICE_PW)), d.log()[-3000:]
        assert ok(p.quit())

    # The first session's POP3 sizes are the messages as sent (CRLF, no
    # dot-stuffing); the second session's message 1 was the first's 2.
    retrieved_bytes = sizes[0] + sizes[1] + sizes[1]
    expected = {
        # Each server's start-up probe (helpers.StandaloneServer) is a
        # connection that hangs up after the greeting: two more sessions.
        "pop3server_sessions_started_total": 6,
        'pop3server_sessions_total{end="quit"}': 4,
        'pop3server_sessions_total{end="disconnect"}': 2,
        'pop3server_logins_total{method="USER",result="ok"}': 3,
        'pop3server_logins_total{method="USER",result="failed"}': 1,
        "pop3server_retrieved_messages_total": 3,
        "pop3server_retrieved_bytes_total": retrieved_bytes,
        "pop3server_deleted_messages_total": 1,
        'pop3server_backend_login_duration_seconds_count{backend="default"}': 4,
        'pop3server_token_requests_total{source="src",grant="client_credentials",result="ok"}': 1,
    }
    got = {}

    def arrived() -> bool:
        got.update(a.samples())
        return all(got.get(k) == v for k, v in expected.items())
    assert wait_for(arrived, 20), {k: (got.get(k), v) for k, v in expected.items()
                                   if got.get(k) != v}
    expiry = got['pop3server_token_expiry_timestamp_seconds{source="src"}']
    assert expiry > time.time(), expiry
    # No TLS here, and nothing names a user.
    assert not any(k.startswith("pop3server_tls_sessions_total{") for k in got), got
    page = a.page()
    assert user not in page and "scanner" not in page and "127.0.0.1" not in page

    promtool = need("promtool", "prometheus")
    r = subprocess.run([promtool, "check", "metrics"], input=page, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr

    prom = Prometheus(str(tmp_path / "prometheus"), ["127.0.0.1:%d" % a.port])
    try:
        def scraped() -> bool:
            return prom.value("pop3server_sessions_started_total") == 6
        assert wait_for(scraped, 60, 0.5), prom.log()[-3000:]
        for query, value in expected.items():
            assert prom.value(query) == value, (query, prom.value(query), value)
        assert prom.value(
            'pop3server_token_expiry_timestamp_seconds{source="src"} - time() > 0') is not None
    finally:
        prom.stop()


def test_sessions_do_not_need_the_aggregator_and_a_restart_loses_only_its_counts(
        tmp_path, fresh_user, make_server, aggregators):
    first = aggregators()
    user = fresh_user(n=2)
    s = make_server(["--stats-socket", first.socket_path])
    good_session(s.port, user, retr=[1])
    first.wait_value('pop3server_sessions_total{end="quit"}', 1)
    # Killed: its socket file stays, nobody reads it; sessions go on.
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL
    good_session(s.port, user, retr=[1, 2])
    failed_session(s.port, user)
    # Restarted on the same path: it counts what comes from now on.
    second = Aggregator(str(tmp_path))
    try:
        assert second.samples()["pop3server_sessions_started_total"] == 0
        good_session(s.port, user, retr=[2])
        got = second.wait_value('pop3server_sessions_total{end="quit"}', 1)
        assert got["pop3server_sessions_started_total"] == 1
        assert got["pop3server_retrieved_messages_total"] == 1
        assert 'pop3server_logins_total{method="USER",result="failed"}' not in got
        # Stopped for good (its socket removed): sessions go on.
        assert second.stop() == 0
    finally:
        if second.proc.poll() is None:
            second.stop(signal.SIGKILL)
    good_session(s.port, user, retr=[1])
    log = s.log()
    assert log.count("session end: ") == 5, log[-3000:]
    assert "stats" not in log.lower(), log[-3000:]
