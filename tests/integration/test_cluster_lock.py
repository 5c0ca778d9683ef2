"""The cluster-wide lock (cluster_lock_redis) against Debian's real
redis-server on loopback: two front-ends (servers with lock dirs of their
own, as if on two hosts) share one lease per maildrop; a killed holder's
lease goes after the TTL and never earlier; renewal keeps an idle session's
lease; a lost lease ends the session without UPDATE; Redis down follows
cluster_lock_fallback."""

import os
import signal
import subprocess
import time


from helpers import ImapView, Pop3, ok, wait_for

# The shortest TTL the server accepts: renewals every ~3.3 s.
TTL = 10


def lock_args(r, *extra):
    return ["--cluster-lock-redis", r.address, "--cluster-lock-ttl", str(TTL)] + list(extra)


def test_two_front_ends_share_one_lock(make_server, redis, fresh_user):
    r = redis()
    east = make_server(lock_args(r))
    west = make_server(lock_args(r))
    assert east.lock_dir != west.lock_dir
    user = fresh_user(2)
    with Pop3(east.port) as a:
        assert ok(a.login(user, "secret"))
        keys = r.lock_keys()
        assert len(keys) == 1, keys
        # The key holds a digest, never the user's name.
        assert user not in keys[0]
        ttl_ms = int(r.cli("PTTL", keys[0]))
        assert 0 < ttl_ms <= TTL * 1000
        with Pop3(west.port) as b:
            st = b.login(user, "secret")
            assert st.startswith(b"-ERR [IN-USE]"), st
        assert a.stat()[0] == 2
        assert ok(a.quit())
    # Released by its owner at the end, not left to expire.
    assert wait_for(lambda: r.lock_keys() == [], 5), r.lock_keys()
    with Pop3(west.port) as c:
        assert ok(c.login(user, "secret"))
        assert ok(c.quit())
    # Another user is not affected by the first one's lease.
    other = fresh_user(1)
    with Pop3(east.port) as a, Pop3(west.port) as b:
        assert ok(a.login(user, "secret"))
        assert ok(b.login(other, "secret"))


def test_killed_holder_frees_the_lock_after_the_ttl_not_before(
        dovecot, make_server, redis, fresh_user):
    r = redis()
    east = make_server(lock_args(r), mode="inetd")
    west = make_server(lock_args(r))
    user = fresh_user(3)
    a = Pop3(east.port)
    assert ok(a.login(user, "secret"))
    assert ok(a.cmd("DELE 1"))
    proc = east.child_for(a)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(5)
    killed = time.monotonic()
    a.close()
    # Its lease outlives it: the other front-end still finds it held.
    (key,) = r.lock_keys()
    assert int(r.cli("PTTL", key)) > 0
    with Pop3(west.port) as b:
        assert b.login(user, "secret").startswith(b"-ERR [IN-USE]")
    # ... until the TTL has passed (bounded wait).
    def free():
        with Pop3(west.port) as c:
            st = c.login(user, "secret")
            if not ok(st):
                assert st.startswith(b"-ERR [IN-USE]"), st
                return False
            assert c.stat()[0] == 3  # the killed session deleted nothing
            assert ok(c.quit())
            return True
    assert wait_for(free, TTL + 10, interval=0.5)
    assert time.monotonic() - killed > TTL - 2.5
    with ImapView(dovecot.dc, user) as v:
        assert v.uids() == [1, 2, 3]


def test_idle_session_renews_its_lease(make_server, redis, fresh_user):
    r = redis()
    east = make_server(lock_args(r))
    user = fresh_user(2)
    with Pop3(east.port) as a:
        assert ok(a.login(user, "secret"))
        (key,) = r.lock_keys()
        # Longer than the TTL, without a command from the client.
        time.sleep(TTL + 3)
        assert r.lock_keys() == [key]
        assert int(r.cli("PTTL", key)) > TTL * 1000 * 0.4
        assert a.stat()[0] == 2
        assert ok(a.cmd("DELE 1"))
        assert ok(a.quit())
    with Pop3(east.port) as b:
        assert ok(b.login(user, "secret"))
        assert b.stat()[0] == 1


def test_renewals_do_not_keep_an_idle_client_alive(make_server, redis, fresh_user):
    """The read wakes up to renew the lease; the idle timeout still counts
    from when the client's next command was awaited."""
    r = redis()
    east = make_server(lock_args(r, "--idle-timeout", "12"))
    user = fresh_user(1)
    with Pop3(east.port) as a:
        assert ok(a.login(user, "secret"))
        started = time.monotonic()
        line = a.readline()  # the socket timeout (15 s) bounds the wait
        assert line.startswith(b"-ERR") and b"inactivity" in line, line
        waited = time.monotonic() - started
        assert waited > 10, waited  # renewed at least twice first
    assert east.wait_log(r"end=timeout")
    assert wait_for(lambda: r.lock_keys() == [], 5), r.lock_keys()


def test_lost_lease_ends_the_session_without_update(dovecot, make_server, redis, fresh_user):
    r = redis()
    east = make_server(lock_args(r))
    user = fresh_user(3)
    with Pop3(east.port) as a:
        assert ok(a.login(user, "secret"))
        assert ok(a.cmd("DELE 1"))
        (key,) = r.lock_keys()
        # As if the lease had expired and another front-end had taken it.
        assert r.cli("SET", key, "another-sessions-token", "PX", "60000") == "OK"
        line = a.readline()  # at the next renewal, within a third of the TTL
        assert line.startswith(b"-ERR [SYS/TEMP]") and b"lock" in line, line
        a.wait_closed(5)
    assert east.wait_log(r"maildrop lock lost: user=%s .*nothing deleted" % user)
    assert east.wait_log(r"end=lock-lost")
    # The other session's lease is left alone.
    assert r.cli("GET", key) == "another-sessions-token"
    with ImapView(dovecot.dc, user) as v:
        assert v.uids() == [1, 2, 3]


def test_lease_lost_before_quit_deletes_nothing(dovecot, make_server, redis, fresh_user):
    """QUIT confirms the lease before UPDATE, even if a renewal is not due."""
    r = redis()
    east = make_server(lock_args(r, "--cluster-lock-ttl", "60"))
    user = fresh_user(2)
    with Pop3(east.port) as a:
        assert ok(a.login(user, "secret"))
        assert ok(a.cmd("DELE 1"))
        (key,) = r.lock_keys()
        r.cli("DEL", key)
        st = a.cmd("QUIT")
        assert st.startswith(b"-ERR [SYS/TEMP]"), st
    with ImapView(dovecot.dc, user) as v:
        assert v.uids() == [1, 2]


def test_redis_down_refuses_by_default(make_server, redis, fresh_user):
    r = redis()
    r.stop()
    east = make_server(lock_args(r))
    user = fresh_user(1)
    with Pop3(east.port) as a:
        st = a.login(user, "secret")
        assert st.startswith(b"-ERR [SYS/TEMP]"), st
    assert east.wait_log(r"cluster lock: Redis 127\.0\.0\.1:%d: cannot connect.*"
                         r"cluster_lock_fallback = local" % r.port)


def test_redis_down_with_local_fallback_serves_with_the_local_lock(
        make_server, redis, fresh_user):
    r = redis()
    r.stop()
    east = make_server(lock_args(r, "--cluster-lock-fallback", "local"))
    user = fresh_user(2)
    with Pop3(east.port) as a:
        assert ok(a.login(user, "secret"))
        # The local lock still holds on this host.
        with Pop3(east.port) as b:
            assert b.login(user, "secret").startswith(b"-ERR [IN-USE]")
        assert a.stat()[0] == 2
        assert ok(a.quit())
    assert east.wait_log(r"local lock only \(cluster_lock_fallback = local\)")


def test_redis_password(make_server, redis, fresh_user, tmp_path):
    r = redis(password="s3cret-redis")
    good = tmp_path / "redis-pass"
    good.write_text("s3cret-redis\n")
    bad = tmp_path / "redis-wrong"
    bad.write_text("wrong\n")
    user = fresh_user(1)
    east = make_server(lock_args(r, "--cluster-lock-password-file", str(good)))
    with Pop3(east.port) as a:
        assert ok(a.login(user, "secret"))
        assert len(r.lock_keys()) == 1
        assert ok(a.quit())
    west = make_server(lock_args(r, "--cluster-lock-password-file", str(bad)))
    with Pop3(west.port) as b:
        assert b.login(user, "secret").startswith(b"-ERR [SYS/TEMP]")
    assert west.wait_log(r"cluster lock: Redis .*the server said: WRONGPASS")
    assert "wrong" not in west.log().replace("WRONGPASS", "")


def test_stray_cluster_lock_settings_are_configuration_errors(tmp_path):
    from helpers import run, server_bin
    r = run([server_bin(), "--config", "/dev/null", "--cluster-lock-ttl", "30", "--check"],
            check=False)
    assert r.returncode == 2
    assert "--cluster-lock-ttl: has no effect without cluster_lock_redis" in r.stderr
    conf = tmp_path / "p.toml"
    conf.write_text('cluster_lock_redis = "localhost"\n')
    r = run([server_bin(), "--config", str(conf), "--check"], check=False)
    assert r.returncode == 2
    assert "cluster_lock_redis: \"localhost\" is not HOST:PORT" in r.stderr
    conf.write_text('cluster_lock_redis = "127.0.0.1:6379"\ncluster_lock_fallback = "maybe"\n')
    r = run([server_bin(), "--config", str(conf), "--check"], check=False)
    assert "cluster_lock_fallback: \"maybe\" is not refuse or local" in r.stderr
    conf.write_text('cluster_lock_redis = "127.0.0.1:6379"\ncluster_lock_ttl = 3\n')
    r = run([server_bin(), "--config", str(conf), "--check"], check=False)
    assert "cluster_lock_ttl: must be between 10 and" in r.stderr
