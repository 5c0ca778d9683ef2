"""Per-user routing with failover, against two real Dovecots: the session's
("default", from the backend_* keys) and this module's own ("east"), on
different loopback ports. Exact-user, @domain and regular-expression rules,
login rewrites, hosts tried in order, no failover after a refused
certificate or a wrong password, an unmatched user without a default, the
routing table in its own file re-read per connection, --check --route, and
the lock of a mailbox reached by two routes."""

import os
import socket
import subprocess

import pytest

import testbed
from helpers import ImapView, Pop3, ok, server_bin
from testbed import free_port


@pytest.fixture(scope="module")
def east(workdir):
    dc = testbed.Dovecot(os.path.join(workdir, "dovecot-east"))
    dc.add_user("ann", "secret", [testbed.simple_message("ann", n) for n in (1, 2, 3)])
    dc.add_user("carl", "secret", [testbed.simple_message("carl", n) for n in (1, 2)])
    dc.add_user("dora", "secret", [testbed.simple_message("dora", 1)])
    dc.start()
    try:
        yield dc
    finally:
        dc.stop()


def closed_port() -> int:
    """A loopback port nothing listens on."""
    return free_port()


def write_config(path, dovecot, tables: str, extra: str = "") -> str:
    with open(path, "w") as f:
        f.write('backend_host = "127.0.0.1"\nbackend_port = %d\nbackend_tls = "none"\n%s\n%s\n'
                % (dovecot.port, extra, tables))
    return str(path)


def table(east_hosts, tls="none", extra_backend=""):
    hosts = ", ".join('"%s"' % h for h in east_hosts)
    return """
[backend.east]
hosts = [%s]
tls = "%s"
%s

[[route]]
user = "ann"
backend = "east"

[[route]]
domain = "east.example"
backend = "east"
strip_domain = true

[[route]]
regex = 'legacy-(\\w+)'
backend = "east"
login = "$1"
""" % (hosts, tls, extra_backend)


def stat_of(server, user, password="secret"):
    with Pop3(server.port) as p:
        st = p.login(user, password)
        if not ok(st):
            return st
        n = p.stat()[0]
        assert ok(p.quit())
        return n


def test_users_go_where_their_rule_sends_them(east, dovecot, make_server, fresh_user, tmp_path):
    conf = write_config(tmp_path / "p.toml", dovecot, table(["127.0.0.1:%d" % east.port]))
    s = make_server(["--config", conf])
    assert stat_of(s, "ann") == 3                      # exact user
    assert stat_of(s, "Carl@EAST.example") == 2        # @domain, domain stripped
    assert stat_of(s, "legacy-dora") == 1              # regex, login from its group
    local = fresh_user(4)
    assert stat_of(s, local) == 4                      # no rule: default backend
    # The default Dovecot has no ann: routing, not luck.
    with ImapView(dovecot.dc, "alice") as v:
        assert len(v.uids()) == 5
    assert s.wait_log(r"session end: user=legacy-dora .*end=quit")


def test_failover_to_the_next_host_but_not_after_a_wrong_password(
        east, dovecot, make_server, tmp_path):
    dead = closed_port()
    conf = write_config(tmp_path / "p.toml", dovecot,
                        table(["127.0.0.1:%d" % dead, "127.0.0.1:%d" % east.port]))
    s = make_server(["--config", conf])
    assert stat_of(s, "ann") == 3
    assert s.wait_log(r"backend east: 127\.0\.0\.1:%d: .*trying the next host" % dead)
    # First host up, second down: a wrong password is the answer, no failover.
    conf2 = write_config(tmp_path / "q.toml", dovecot,
                         table(["127.0.0.1:%d" % east.port, "127.0.0.1:%d" % dead]))
    s2 = make_server(["--config", conf2])
    st = stat_of(s2, "ann", "wrong")
    assert st.startswith(b"-ERR [AUTH]"), st
    assert "trying the next host" not in s2.log()


def test_a_refused_certificate_is_not_failed_over(east, dovecot, make_server, tmp_path):
    # The first host's certificate is signed by another CA than ca_file
    # names: a verification error, which another host of the same backend
    # must not paper over.
    conf = write_config(
        tmp_path / "p.toml", dovecot,
        table(["127.0.0.2:%d" % dovecot.imaps_port, "127.0.0.1:%d" % east.imaps_port],
              tls="implicit", extra_backend='ca_file = "%s"' % east.tls["ca"]))
    s = make_server(["--config", conf])
    with Pop3(s.port) as p:
        assert ok(p.cmd("USER ann"))
        st = p.cmd("PASS secret")
        assert st.startswith(b"-ERR [SYS/TEMP]"), st
    assert s.wait_log(r"backend east \(127\.0\.0\.2:%d, .*not signed by a CA we trust"
                      % dovecot.imaps_port)
    assert "trying the next host" not in s.log()
    # With TLS that works on the second host only because the first is down,
    # failover does happen.
    conf2 = write_config(
        tmp_path / "q.toml", dovecot,
        table(["127.0.0.1:%d" % closed_port(), "127.0.0.1:%d" % east.imaps_port],
              tls="implicit", extra_backend='ca_file = "%s"' % east.tls["ca"]))
    s2 = make_server(["--config", conf2])
    assert stat_of(s2, "ann") == 3


def test_a_user_routed_elsewhere_does_not_wait_for_the_early_connection(
        east, make_server, tmp_path):
    """The early connection goes to the default backend before the user is
    known; if that one hangs, a user of another backend must not wait."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts (in the kernel) and never greets
    try:
        port = silent.getsockname()[1]
        conf = tmp_path / "p.toml"
        conf.write_text('backend_host = "127.0.0.1"\nbackend_port = %d\nbackend_tls = "none"\n%s'
                        % (port, table(["127.0.0.1:%d" % east.port])))
        # 60 s for the greeting: far past the client's 15 s socket timeout.
        s = make_server(["--config", str(conf), "--backend-port", str(port),
                         "--backend-connect-timeout", "60"])
        assert stat_of(s, "ann") == 3
    finally:
        silent.close()


def test_unmatched_user_without_default_is_refused_clearly(
        east, dovecot, make_server, fresh_user, tmp_path):
    conf = write_config(tmp_path / "p.toml", dovecot, table(["127.0.0.1:%d" % east.port]),
                        extra='default_backend = "none"')
    s = make_server(["--config", conf])
    assert stat_of(s, "ann") == 3
    user = fresh_user(1)
    with Pop3(s.port) as p:
        st = p.login(user, "secret")
        assert st.startswith(b"-ERR [SYS/PERM]") and b"No mail server" in st, st
    assert s.wait_log(r"no backend for user=%s: no \[\[route\]\] rule matches and "
                      r"default_backend is none" % user)


def test_one_mailbox_by_two_routes_has_one_lock(east, dovecot, make_server, tmp_path):
    conf = write_config(tmp_path / "p.toml", dovecot, table(["127.0.0.1:%d" % east.port]))
    s = make_server(["--config", conf])
    with Pop3(s.port) as a:
        assert ok(a.login("carl@east.example", "secret"))
        with Pop3(s.port) as b:
            st = b.login("legacy-carl", "secret")
            assert st.startswith(b"-ERR [IN-USE]"), st
        assert ok(a.quit())


def test_routes_file_is_read_by_every_connection(east, dovecot, make_server, tmp_path):
    routes = tmp_path / "routes.toml"
    routes.write_text(table(["127.0.0.1:%d" % east.port]))
    conf = write_config(tmp_path / "p.toml", dovecot, "", extra='routes_file = "%s"' % routes)
    s = make_server(["--config", conf])
    assert stat_of(s, "ann") == 3
    # ann moves to the default backend, which does not know her: no restart.
    routes.write_text(table(["127.0.0.1:%d" % east.port]).replace('user = "ann"',
                                                                    'user = "nobody"'))
    st = stat_of(s, "ann")
    assert isinstance(st, bytes) and st.startswith(b"-ERR [AUTH]"), st


def test_table_in_both_places_or_broken_is_a_configuration_error(dovecot, tmp_path):
    routes = tmp_path / "routes.toml"
    routes.write_text('[[route]]\nuser = "a"\nbackend = "eest"\n')
    conf = write_config(tmp_path / "p.toml", dovecot, "", extra='routes_file = "%s"' % routes)
    r = subprocess.run([server_bin(), "--config", conf, "--check"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2
    assert '%s:3: route[1].backend: "eest" is not a backend (there are: default)' % routes \
        in r.stderr, r.stderr
    conf = write_config(tmp_path / "q.toml", dovecot, table(["h"]),
                        extra='routes_file = "%s"' % routes)
    r = subprocess.run([server_bin(), "--config", conf, "--check"], capture_output=True,
                       text=True, timeout=60)
    assert "keep the routing table in one place" in r.stderr, r.stderr
    conf = write_config(tmp_path / "r.toml", dovecot, '[[route]]\nuser = "a"\nbackend = "default"\nbackedn = "x"\n')
    r = subprocess.run([server_bin(), "--config", conf, "--check"], capture_output=True,
                       text=True, timeout=60)
    assert "route.backedn: unknown setting; did you mean backend?" in r.stderr, r.stderr


def test_check_route_shows_rule_backend_and_connection(east, dovecot, tmp_path):
    dead = closed_port()
    conf = write_config(tmp_path / "p.toml", dovecot,
                        table(["127.0.0.1:%d" % dead, "127.0.0.1:%d" % east.port]))
    r = subprocess.run([server_bin(), "--config", conf, "--check", "--route",
                        "carl@east.example"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert ('route: carl@east.example -> backend east by route 2 (domain = "east.example"), '
            'IMAP login carl') in out, out
    assert "host 127.0.0.1:%d: cannot connect to" % dead in out, out
    assert "connected to 127.0.0.1:%d (no TLS)" % east.port in out, out
    # With --user the routed login is tried.
    pw = tmp_path / "pw"
    pw.write_text("secret\n")
    r = subprocess.run([server_bin(), "--config", conf, "--check", "--user", "legacy-dora",
                        "--password-file", str(pw)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "login: ok as dora" in r.stdout and "folder INBOX: 1 messages" in r.stdout, r.stdout
    # Unmatched, no default: exit 1 and why.
    conf = write_config(tmp_path / "q.toml", dovecot, table(["127.0.0.1:%d" % east.port]),
                        extra='default_backend = "none"')
    r = subprocess.run([server_bin(), "--config", conf, "--check", "--route", "zed"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "route of zed: no [[route]] rule matches and default_backend is none" in r.stderr
