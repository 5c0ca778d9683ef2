"""TLS on both sides, the plaintext-login policy and SASL AUTH.

Client side: STLS (RFC 2595) and POP3S (RFC 8314) with Python ssl/poplib and
curl; CAPA before/after STLS; plaintext logins refused off-loopback (a client
in a network namespace) unless allowed.  Backend side: IMAPS and STARTTLS
against the testbed Dovecot verified with the test CA, verification failures
(wrong CA, wrong host name), verification off, STARTTLS demanded from a
backend that does not offer it, IMAP ID.  SASL: PLAIN (initial response,
continuation, authzid = Dovecot master user), LOGIN, cancel, bad base64;
XOAUTH2 / OAUTHBEARER passed through to a scripted IMAP peer (helpers.OAuthImap).

The CAPA answers are printed and appended to target/integration-metrics.txt
(lines starting with ``CAPA``).
"""

import base64
import poplib
import re
import shutil
import socket
import ssl
import subprocess
import time

import pytest

from helpers import (FakeBackend, ImapView, OAuthImap, Pop3, StandaloneServer, err, ok,
                     pop3_expected, record_metric, server_bin, wait_for)

b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731


def tls_args(dovecot):
    return ["--tls-cert", dovecot.tls["cert"], "--tls-key", dovecot.tls["key"]]


def ca_context(dovecot) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=dovecot.tls["ca"])


def record_capa(where: str, lines) -> None:
    text = " | ".join(ln.decode("latin-1") if isinstance(ln, bytes) else ln for ln in lines)
    record_metric("CAPA %s: %s" % (where, text))


def sasl_line(capa):
    """The mechanisms of the CAPA SASL line, or None if there is none."""
    for ln in capa:
        if isinstance(ln, str):
            ln = ln.encode("latin-1")
        if ln.upper().startswith(b"SASL"):
            return ln.split()[1:]
    return None


def names(capa):
    return [(ln.encode("latin-1") if isinstance(ln, str) else ln).split(b" ")[0].upper()
            for ln in capa]


@pytest.fixture(scope="module")
def stls_server(dovecot, workdir):
    """STLS offered (certificate for 127.0.0.1/localhost), plain IMAP backend."""
    s = StandaloneServer(workdir, dovecot.port, tls_args(dovecot) + ["-d"], name="stls")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def pop3s_server(dovecot, workdir):
    s = StandaloneServer(workdir, dovecot.port, tls_args(dovecot) + ["--implicit-tls", "true"],
                         name="pop3s")
    s.ca = dovecot.tls["ca"]
    yield s
    s.stop()


# --------------------------------------------------------------------------
# the test bed's TLS material (sanity: the failures below mean something)
# --------------------------------------------------------------------------

def test_testbed_certificates(dovecot):
    """Dovecot's certificate verifies with the test CA for 127.0.0.1 and
    localhost, not for 127.0.0.2 (where Dovecot also listens), and not with
    the other CA."""
    def handshake(cafile, host, name):
        ctx = ssl.create_default_context(cafile=cafile)
        with socket.create_connection((host, dovecot.imaps_port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname=name) as s:
                s.settimeout(10)
                return s.recv(100)
    assert handshake(dovecot.tls["ca"], "127.0.0.1", "127.0.0.1").startswith(b"* OK")
    assert handshake(dovecot.tls["ca"], "127.0.0.1", "localhost").startswith(b"* OK")
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(dovecot.tls["ca"], "127.0.0.2", "127.0.0.2")
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(dovecot.tls["other_ca"], "127.0.0.1", "127.0.0.1")


# --------------------------------------------------------------------------
# client side: STLS and POP3S
# --------------------------------------------------------------------------

def test_capa_before_and_after_stls_on_loopback(dovecot, stls_server):
    with Pop3(stls_server.port) as p:
        before = p.capa()
        record_capa("loopback, STLS configured, allow_plaintext_auth=false, before STLS", before)
        assert b"STLS" in before, before
        assert b"USER" in before, before  # loopback counts as safe
        assert sasl_line(before) and b"PLAIN" in sasl_line(before), before
        st = p.cmd("STLS")
        assert st.startswith(b"+OK"), st
        p.starttls(ca_context(dovecot), server_hostname="localhost")
        after = p.capa()
        record_capa("loopback, STLS configured, allow_plaintext_auth=false, after STLS", after)
        assert b"STLS" not in names(after), after
        assert b"USER" in after and sasl_line(after), after
        st = p.cmd("STLS")
        assert err(st), st  # TLS already active
        assert ok(p.login("alice", "secret"))
        assert p.stat()[0] == 5
        assert ok(p.quit())
    assert stls_server.wait_log(r"session end: user=alice .*tls=yes .*end=quit", 5), \
        stls_server.log()[-2000:]


def test_capa_without_certificate_has_no_stls(server):
    with Pop3(server.port) as p:
        capa = p.capa()
        record_capa("loopback, no tls_cert, before login", capa)
        assert b"STLS" not in names(capa), capa
        assert err(p.cmd("STLS"))
        assert ok(p.login("alice", "secret"))
        capa = p.capa()
        record_capa("loopback, no tls_cert, after login", capa)
        assert b"USER" not in names(capa) and b"STLS" not in names(capa), capa
        assert ok(p.quit())
    assert server.wait_log(r"session end: user=alice .*tls=no ", 5)


def test_poplib_stls_session(dovecot, stls_server, fresh_user):
    user = fresh_user(3)
    with ImapView(dovecot.dc, user) as v:
        body2 = v.body(2)
    c = poplib.POP3("127.0.0.1", stls_server.port, timeout=15)
    try:
        assert "STLS" in c.capa()
        c.stls(context=ca_context(dovecot))
        assert "STLS" not in c.capa()
        c.user(user)
        c.pass_("secret")
        assert c.stat()[0] == 3
        _, lines, _ = c.retr(2)
        assert b"\r\n".join(lines) + b"\r\n" == pop3_expected(body2)
        c.dele(1)
        c.quit()
    finally:
        c.close()
    with ImapView(dovecot.dc, user) as v:
        assert v.uids() == [2, 3]
    assert stls_server.wait_log(r"session end: user=%s .*tls=yes .*deleted=1/" % user, 5)


def test_poplib_pop3s_session(dovecot, pop3s_server, fresh_user):
    user = fresh_user(2)
    with ImapView(dovecot.dc, user) as v:
        body1 = v.body(1)
    c = poplib.POP3_SSL("127.0.0.1", pop3s_server.port, context=ca_context(dovecot), timeout=15)
    try:
        assert c.getwelcome().startswith(b"+OK")
        capa = c.capa()
        record_capa("loopback, POP3S (implicit TLS)", [" ".join([k] + v) for k, v in capa.items()])
        assert "STLS" not in capa and "USER" in capa
        c.user(user)
        c.pass_("secret")
        _, lines, _ = c.retr(1)
        assert b"\r\n".join(lines) + b"\r\n" == pop3_expected(body1)
        c.quit()
    finally:
        c.close()
    assert pop3s_server.wait_log(r"session end: user=%s .*tls=yes .*end=quit" % user, 5)


def test_pop3s_refuses_stls_and_stays_usable(pop3s_server):
    """On an implicit-TLS connection STLS is not advertised and is refused
    with -ERR; the session goes on."""
    ctx = ssl.create_default_context(cafile=pop3s_server.ca)
    with Pop3(pop3s_server.port, tls_context=ctx, server_hostname="localhost") as p:
        capa = p.capa()
        assert b"STLS" not in names(capa), capa
        st = p.cmd("STLS")
        assert err(st), st
        assert ok(p.login("alice", "secret"))
        assert ok(p.quit())


def test_pop3s_sends_nothing_in_cleartext(pop3s_server):
    """With implicit TLS the greeting comes only after a handshake: a plain
    client gets no '+OK' in the clear."""
    with socket.create_connection(("127.0.0.1", pop3s_server.port), timeout=5) as s:
        s.settimeout(1.0)
        try:
            data = s.recv(100)
        except socket.timeout:
            data = b""
        assert not data.startswith(b"+OK"), data
        s.sendall(b"CAPA\r\n")
        got = b""
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            try:
                d = s.recv(4096)
            except (socket.timeout, ConnectionResetError):
                break
            if not d:
                break
            got += d
        assert b"+OK" not in got and b"USER" not in got, got


def curl(*args, timeout=60):
    if not shutil.which("curl"):
        pytest.skip("curl not installed")
    return subprocess.run(["curl", "-s", "-S", "--max-time", "30"] + list(args),
                          capture_output=True, timeout=timeout)


def test_curl_stls_retr(dovecot, stls_server):
    with ImapView(dovecot.dc, "alice") as v:
        body = v.body(3)
    port = stls_server.port
    r = curl("--ssl-reqd", "--cacert", dovecot.tls["ca"],
             "--resolve", "localhost:%d:127.0.0.1" % port,
             "pop3://alice:secret@localhost:%d/3" % port)
    assert r.returncode == 0, r.stderr
    assert r.stdout == pop3_expected(body)
    assert stls_server.wait_log(r"session end: user=alice .*tls=yes .*retrieved=1/", 5)


def test_curl_ssl_reqd_fails_without_stls(server):
    r = curl("--ssl-reqd", "pop3://alice:secret@127.0.0.1:%d/1" % server.port)
    assert r.returncode != 0, r.stdout[:200]


def test_curl_pop3s_retr_and_list(dovecot, pop3s_server):
    with ImapView(dovecot.dc, "alice") as v:
        body = v.body(2)
    port = pop3s_server.port
    r = curl("--cacert", dovecot.tls["ca"], "--resolve", "localhost:%d:127.0.0.1" % port,
             "pop3s://alice:secret@localhost:%d/2" % port)
    assert r.returncode == 0, r.stderr
    assert r.stdout == pop3_expected(body)
    r = curl("--cacert", dovecot.tls["ca"], "pop3s://alice:secret@127.0.0.1:%d/" % port)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.strip().split(b"\r\n")) == 5
    # the wrong CA: curl refuses the server
    r = curl("--cacert", dovecot.tls["other_ca"], "pop3s://alice:secret@127.0.0.1:%d/" % port)
    assert r.returncode != 0


def test_stls_pipelined_commands_are_discarded(dovecot, make_server):
    """STLS\\r\\nUSER alice\\r\\nPASS secret\\r\\n in one packet: what follows
    STLS before the handshake must not be processed (RFC 2595 / CVE-2011-0411
    class), neither as plaintext nor inside TLS."""
    s = make_server(tls_args(dovecot) + ["-d"])
    with Pop3(s.port) as p:
        p.send(b"STLS\r\nUSER alice\r\nPASS secret\r\n")
        st = p.readline()
        assert st.startswith(b"+OK"), st
        assert not p.buf, "answers to the injected commands before the handshake: %r" % p.buf
        p.starttls(ca_context(dovecot))
        extra = p.pending(0.5)
        assert extra == b"", "answers to the injected commands inside TLS: %r" % extra
        st = p.cmd("PASS x")
        assert st.startswith(b"-ERR"), st  # no USER was taken
        st = p.cmd("STAT")
        assert err(st), st  # not logged in
        assert ok(p.quit())
    assert s.wait_log(r"session end: user=- .*login=none tls=yes .*end=quit", 5), s.log()[-2000:]
    log = s.log()
    assert "login: user=alice" not in log, log[-2000:]
    assert "secret" not in log


def test_stls_refused_after_login_and_unknown_when_not_configured(dovecot, stls_server,
                                                                  server):
    with Pop3(stls_server.port) as p:
        assert b"STLS" in names(p.capa())
        assert ok(p.login("alice", "secret"))
        assert b"STLS" not in names(p.capa())
        st = p.cmd("STLS")
        assert err(st), st
        assert ok(p.cmd("NOOP"))  # the session goes on, in plaintext
        assert p.stat()[0] == 5
        assert ok(p.quit())
    # no tls_cert: STLS is not offered and is refused, before and after login
    with Pop3(server.port) as p:
        assert b"STLS" not in names(p.capa())
        st = p.cmd("STLS")
        assert err(st), st
        assert ok(p.login("alice", "secret"))
        st = p.cmd("STLS")
        assert err(st), st
        assert p.stat()[0] == 5
        assert ok(p.quit())


# --------------------------------------------------------------------------
# plaintext policy: loopback vs. a non-loopback client (network namespace)
# --------------------------------------------------------------------------

def capa_of(transcript, index):
    st_and_lines = transcript[index][1]
    assert st_and_lines[0].startswith("+OK"), transcript
    return st_and_lines[1:]


def test_plaintext_refused_off_loopback_until_stls(dovecot, workdir, netns):
    s = StandaloneServer(workdir, dovecot.port, tls_args(dovecot), name="ns-stls",
                         listen_host=netns.server_addr)
    try:
        t = netns.run_client(s.port, [
            ["peer"],
            ["multi", "CAPA"],
            ["cmd", "USER alice"],
            ["cmd", "PASS secret"],
            ["cmd", "AUTH PLAIN " + b64(b"\0alice\0secret")],
            ["cmd", "AUTH LOGIN"],
            ["stls"],
            ["multi", "CAPA"],
            ["cmd", "USER alice"],
            ["cmd", "PASS secret"],
            ["cmd", "STAT"],
            ["cmd", "QUIT"],
        ], cafile=dovecot.tls["ca"])
        print(t)
        assert t[1][1].startswith(netns.client_addr + ":"), t
        before, after = capa_of(t, 2), capa_of(t, 8)
        record_capa("netns %s, STLS configured, allow_plaintext_auth=false, before STLS"
                    % netns.client_addr, before)
        record_capa("netns %s, STLS configured, allow_plaintext_auth=false, after STLS"
                    % netns.client_addr, after)
        assert "STLS" in before, before
        assert "USER" not in names(before) and b"USER" not in names(before), before
        assert sasl_line(before) is None, before
        for i in (3, 4, 5, 6):
            assert t[i][1].startswith("-ERR"), t[i]
        assert re.match(r"-ERR .*[Pp]laintext authentication is disabled.*STLS", t[3][1]), t[3]
        assert "STLS" in t[5][1], t[5]  # AUTH PLAIN is refused the same way
        assert t[7][1].startswith("+OK"), t[7]
        assert b"STLS" not in names(after) and b"USER" in names(after), after
        assert sasl_line(after) and b"PLAIN" in sasl_line(after), after
        assert t[9][1].startswith("+OK") and t[10][1].startswith("+OK"), t
        assert t[11][1].startswith("+OK 5 "), t
        assert s.wait_log(r"session end: user=alice client=%s:\d+ login=ok tls=yes " % re.escape(
            netns.client_addr), 5), s.log()[-2000:]
    finally:
        s.stop()


def test_pop3s_login_off_loopback(dovecot, workdir, netns):
    """POP3S is encrypted: a non-loopback client logs in with USER/PASS and
    AUTH PLAIN without allow_plaintext_auth; CAPA offers USER and SASL and no STLS."""
    s = StandaloneServer(workdir, dovecot.port, tls_args(dovecot) + ["--implicit-tls", "true"],
                         name="ns-pop3s", listen_host=netns.server_addr)
    try:
        t = netns.run_client(s.port, [
            ["multi", "CAPA"],
            ["cmd", "USER alice"],
            ["cmd", "PASS secret"],
            ["cmd", "STAT"],
            ["cmd", "QUIT"],
        ], cafile=dovecot.tls["ca"], implicit_tls=True)
        print(t)
        capa = capa_of(t, 1)
        record_capa("netns %s, POP3S (implicit TLS), allow_plaintext_auth=false"
                    % netns.client_addr, capa)
        assert t[2][1].startswith("+OK"), t
        assert t[3][1].startswith("+OK"), t
        assert t[4][1].startswith("+OK 5 "), t
        assert "STLS" not in capa and "USER" in capa and sasl_line(capa), capa
        t = netns.run_client(s.port, [["cmd", "AUTH PLAIN " + b64(b"\0alice\0secret")],
                                      ["cmd", "QUIT"]],
                             cafile=dovecot.tls["ca"], implicit_tls=True)
        assert t[1][1].startswith("+OK"), t
    finally:
        s.stop()


def test_plaintext_allowed_off_loopback_when_configured(dovecot, workdir, netns):
    s = StandaloneServer(workdir, dovecot.port,
                         tls_args(dovecot) + ["--allow-plaintext-auth", "true"],
                         name="ns-allow", listen_host=netns.server_addr)
    try:
        t = netns.run_client(s.port, [
            ["multi", "CAPA"],
            ["cmd", "USER alice"],
            ["cmd", "PASS secret"],
            ["cmd", "STAT"],
            ["cmd", "QUIT"],
        ])
        capa = capa_of(t, 1)
        record_capa("netns %s, STLS configured, allow_plaintext_auth=true, no TLS"
                    % netns.client_addr, capa)
        assert "STLS" in capa and "USER" in capa and sasl_line(capa), capa
        assert t[2][1].startswith("+OK") and t[3][1].startswith("+OK"), t
        assert t[4][1].startswith("+OK 5 "), t
        # AUTH PLAIN too
        t = netns.run_client(s.port, [["cmd", "AUTH PLAIN " + b64(b"\0alice\0secret")],
                                      ["cmd", "QUIT"]])
        assert t[1][1].startswith("+OK"), t
        assert s.wait_log(r"session end: user=alice client=%s:\d+ login=ok tls=no .*end=quit"
                          % re.escape(netns.client_addr), 5), s.log()[-2000:]
    finally:
        s.stop()


def test_plaintext_off_loopback_without_certificate(dovecot, workdir, netns):
    """No tls_cert: from off-loopback there is no safe way to log in; CAPA
    offers neither USER, SASL nor STLS."""
    s = StandaloneServer(workdir, dovecot.port, [], name="ns-notls",
                         listen_host=netns.server_addr)
    try:
        t = netns.run_client(s.port, [["multi", "CAPA"], ["cmd", "USER alice"],
                                      ["cmd", "STLS"], ["cmd", "QUIT"]])
        capa = capa_of(t, 1)
        record_capa("netns %s, no tls_cert, allow_plaintext_auth=false" % netns.client_addr, capa)
        assert "STLS" not in capa and "USER" not in capa and sasl_line(capa) is None, capa
        assert t[2][1].startswith("-ERR"), t
        assert t[3][1].startswith("-ERR"), t
    finally:
        s.stop()


def test_loopback_capa_with_allow_plaintext(dovecot, make_server):
    s = make_server(tls_args(dovecot) + ["--allow-plaintext-auth", "true"])
    with Pop3(s.port) as p:
        capa = p.capa()
        record_capa("loopback, STLS configured, allow_plaintext_auth=true, before STLS", capa)
        assert b"STLS" in capa and b"USER" in capa and sasl_line(capa), capa
        assert ok(p.login("alice", "secret"))
        assert ok(p.quit())


def test_backend_id_forwards_client_address_from_netns(dovecot, workdir, netns, fresh_user):
    user = fresh_user(1)
    s = StandaloneServer(workdir, dovecot.port, ["--allow-plaintext-auth", "true",
                                                 "--backend-send-id", "true"],
                         name="ns-id", listen_host=netns.server_addr)
    try:
        t = netns.run_client(s.port, [["cmd", "USER " + user], ["cmd", "PASS secret"],
                                      ["cmd", "QUIT"]])
        assert t[2][1].startswith("+OK"), t
        rx = re.compile(r"Login: user=<%s>.*rip=%s," % (user, re.escape(netns.client_addr)))
        assert wait_for(lambda: rx.search(dovecot.dc.log_text()) is not None, 5), \
            [ln for ln in dovecot.dc.log_text().splitlines() if user in ln]
    finally:
        s.stop()


def test_backend_id_forwards_client_address_loopback(dovecot, make_server, fresh_user):
    """A client bound to 127.0.0.77: Dovecot (login_trusted_networks =
    127.0.0.0/8) logs rip=127.0.0.77, although pop3server connects from
    127.0.0.1; without --backend-send-id it logs 127.0.0.1."""
    user, other = fresh_user(1), fresh_user(1)
    s = make_server(["--backend-send-id", "true"])
    with Pop3(s.port, source="127.0.0.77") as p:
        assert ok(p.login(user, "secret"))
        assert ok(p.quit())
    rx = re.compile(r"Login: user=<%s>.*rip=127\.0\.0\.77," % user)
    assert wait_for(lambda: rx.search(dovecot.dc.log_text()) is not None, 5), \
        [ln for ln in dovecot.dc.log_text().splitlines() if user in ln]
    s2 = make_server([])
    with Pop3(s2.port, source="127.0.0.77") as p:
        assert ok(p.login(other, "secret"))
        assert ok(p.quit())
    rx = re.compile(r"Login: user=<%s>.*rip=127\.0\.0\.1," % other)
    assert wait_for(lambda: rx.search(dovecot.dc.log_text()) is not None, 5), \
        [ln for ln in dovecot.dc.log_text().splitlines() if other in ln]


# --------------------------------------------------------------------------
# backend TLS
# --------------------------------------------------------------------------

def backend_implicit(dovecot, ca=None, host="127.0.0.1"):
    return ["--backend-tls", "implicit", "--backend-host", host,
            "--backend-ca-file", ca or dovecot.tls["ca"]]


def backend_starttls(dovecot, ca=None, host="127.0.0.1"):
    return ["--backend-tls", "starttls", "--backend-host", host,
            "--backend-ca-file", ca or dovecot.tls["ca"]]


def full_session(dovecot, port, user):
    """A POP3 session with RETR of each message and DELE 1; returns the
    lines Dovecot logged meanwhile for ``user``'s logins."""
    with ImapView(dovecot.dc, user) as v:
        bodies = {u: v.body(u) for u in v.uids()}
    rx = re.compile(r"imap-login: Info: Login: user=<%s>.*" % re.escape(user))
    start = len(dovecot.dc.log_text())
    with Pop3(port) as p:
        st = p.login(user, "secret")
        assert ok(st), st
        assert p.stat()[0] == len(bodies)
        for n, body in bodies.items():
            st, got = p.retr(n)
            assert ok(st) and got == pop3_expected(body), (n, st)
        assert ok(p.cmd("DELE 1"))
        assert ok(p.quit())
    found = []

    def pred():
        found[:] = rx.findall(dovecot.dc.log_text()[start:])
        return bool(found)
    wait_for(pred, 5)
    with ImapView(dovecot.dc, user) as v:
        assert v.uids() == sorted(bodies)[1:]
    return found


def test_backend_implicit_tls_full_session(dovecot, make_server, fresh_user):
    user = fresh_user(3)
    s = make_server(backend_implicit(dovecot), backend_port=dovecot.imaps_port)
    lines = full_session(dovecot, s.port, user)
    assert len(lines) == 1 and ", TLS" in lines[0], lines


def test_backend_implicit_tls_by_dns_name(dovecot, make_server, fresh_user):
    user = fresh_user(2)
    s = make_server(backend_implicit(dovecot, host="localhost"), backend_port=dovecot.imaps_port)
    full_session(dovecot, s.port, user)


def test_backend_starttls_full_session(dovecot, make_server, fresh_user):
    user = fresh_user(3)
    s = make_server(backend_starttls(dovecot), backend_port=dovecot.port)
    lines = full_session(dovecot, s.port, user)
    assert len(lines) == 1 and ", TLS" in lines[0], lines


def test_backend_tls_both_sides(dovecot, make_server, fresh_user):
    """POP3S in front, IMAPS behind."""
    user = fresh_user(2)
    s = make_server(backend_implicit(dovecot) + tls_args(dovecot) + ["--implicit-tls", "true"],
                    backend_port=dovecot.imaps_port)
    with Pop3(s.port, tls_context=ca_context(dovecot), server_hostname="localhost") as p:
        assert ok(p.login(user, "secret"))
        assert p.stat()[0] == 2
        assert ok(p.quit())
    assert s.wait_log(r"session end: user=%s .*tls=yes .*end=quit" % user, 5)


@pytest.mark.parametrize("mode", ["implicit", "starttls"])
def test_backend_wrong_ca_is_refused(dovecot, make_server, mode):
    if mode == "implicit":
        s = make_server(backend_implicit(dovecot, ca=dovecot.tls["other_ca"]),
                        backend_port=dovecot.imaps_port)
    else:
        s = make_server(backend_starttls(dovecot, ca=dovecot.tls["other_ca"]),
                        backend_port=dovecot.port)
    with Pop3(s.port) as p:
        assert ok(p.cmd("USER alice"))
        st = p.cmd("PASS secret")
        assert st.startswith(b"-ERR [SYS/TEMP]"), st
    assert s.wait_log(r"(?i)certificate.*(UnknownIssuer|unknown issuer)", 5), s.log()[-2000:]
    assert "secret" not in s.log()


@pytest.mark.parametrize("mode", ["implicit", "starttls"])
def test_backend_wrong_host_name_is_refused(dovecot, make_server, mode):
    """Dovecot also listens on 127.0.0.2; its certificate is for 127.0.0.1 and
    localhost only."""
    if mode == "implicit":
        s = make_server(backend_implicit(dovecot, host="127.0.0.2"),
                        backend_port=dovecot.imaps_port)
    else:
        s = make_server(backend_starttls(dovecot, host="127.0.0.2"), backend_port=dovecot.port)
    with Pop3(s.port) as p:
        assert ok(p.cmd("USER alice"))
        st = p.cmd("PASS secret")
        assert st.startswith(b"-ERR [SYS/TEMP]"), st
    assert s.wait_log(r"not valid for backend_host 127\.0\.0\.2: it names 127\.0\.0\.1, "
                      r"localhost; set backend_host", 5), s.log()[-2000:]


def test_backend_verify_false_works_and_warns_every_session(dovecot, make_server, fresh_user):
    user = fresh_user(2)
    s = make_server(["--backend-tls", "implicit", "--backend-host", "127.0.0.2",
                     "--backend-ca-file", dovecot.tls["other_ca"],
                     "--backend-tls-verify", "false"], backend_port=dovecot.imaps_port)
    for _ in range(2):
        with Pop3(s.port) as p:
            assert ok(p.login(user, "secret"))
            assert p.stat()[0] == 2
            assert ok(p.quit())
    assert s.wait_log(r"(?s)(session end: user=%s .*){2}" % user, 5)
    warnings = [ln for ln in s.log().splitlines()
                if "WARN" in ln and "verif" in ln.lower() or "NOT checked" in ln]
    assert len(warnings) >= 2, s.log()[-2000:]


@pytest.mark.parametrize("offer", [False, True])
def test_backend_starttls_not_available_is_refused(make_server, offer):
    """STARTTLS configured but the backend does not offer it (or answers it
    with BAD): -ERR [SYS/TEMP], and no credential goes out in plaintext."""
    fake = OAuthImap(starttls=offer, mechs=())
    fb = FakeBackend(fake)
    try:
        s = make_server(["--backend-tls", "starttls"], backend_port=fb.port)
        with Pop3(s.port) as p:
            assert ok(p.cmd("USER alice"))
            st = p.cmd("PASS secret")
            assert st.startswith(b"-ERR [SYS/TEMP]"), st
        assert s.wait_log(r"(?i)starttls", 5), s.log()[-2000:]
        sent = b"".join(fake.lines)
        assert b"secret" not in sent and b"LOGIN" not in sent.upper().replace(b"LOGOUT", b""), sent
        assert not fake.auths, fake.auths
    finally:
        fb.stop()


def test_check_backend_starttls(dovecot, tmp_path):
    pwfile = tmp_path / "pw"
    pwfile.write_text("secret\n")
    base = [server_bin(), "--config", "/dev/null", "--backend-port", str(dovecot.port), "--check"]
    r = subprocess.run(base + backend_starttls(dovecot), capture_output=True, timeout=60)
    out = (r.stdout + r.stderr).decode(errors="replace")
    print(out)
    assert r.returncode == 0, out
    assert "STARTTLS" in out and "verified" in out, out
    r = subprocess.run(base + backend_starttls(dovecot) + ["--user", "alice", "--password-file",
                                                           str(pwfile)],
                       capture_output=True, timeout=60)
    out = (r.stdout + r.stderr).decode(errors="replace")
    print(out)
    assert r.returncode == 0, out
    assert "5 messages" in out, out
    r = subprocess.run(base + backend_starttls(dovecot, ca=dovecot.tls["other_ca"]),
                       capture_output=True, timeout=60)
    out = (r.stdout + r.stderr).decode(errors="replace")
    print(out)
    assert r.returncode == 1, out
    assert re.search(r"(?i)TLS.*(UnknownIssuer|unknown issuer)", out), out


def test_check_backend_implicit_wrong_name(dovecot):
    r = subprocess.run([server_bin(), "--config", "/dev/null", "--backend-port",
                        str(dovecot.imaps_port), "--check"]
                       + backend_implicit(dovecot, host="127.0.0.2"),
                       capture_output=True, timeout=60)
    out = (r.stdout + r.stderr).decode(errors="replace")
    print(out)
    assert r.returncode == 1, out
    assert re.search(r"TLS.*not valid for backend_host 127\.0\.0\.2: it names 127\.0\.0\.1", out), out


# --------------------------------------------------------------------------
# SASL AUTH against Dovecot: PLAIN, LOGIN, authzid, cancel, bad base64
# --------------------------------------------------------------------------

def test_auth_lists_mechanisms(server):
    with Pop3(server.port) as p:
        st, lines = p.multi_lines("AUTH")
        assert ok(st), st
        assert b"PLAIN" in lines and b"LOGIN" in lines, lines
        assert b"XOAUTH2" not in lines and b"OAUTHBEARER" not in lines, lines
        capa = p.capa()
        assert sasl_line(capa) == lines, (capa, lines)


def test_auth_plain_continuation_with_empty_challenge(server):
    with Pop3(server.port) as p:
        st = p.cmd("AUTH PLAIN")
        assert st in (b"+ ", b"+"), st
        st = p.cmd(b64(b"\0alice\0secret"))
        assert ok(st), st
        assert p.stat()[0] == 5
        assert ok(p.quit())


def test_auth_plain_with_authzid_master_user(dovecot, make_server):
    """authzid alice, authcid master: Dovecot's master user reads alice's
    mail; the POP3 user (lock, log) is alice."""
    s = make_server([])
    creds = b"alice\0" + dovecot.master_user.encode() + b"\0" + dovecot.master_password.encode()
    with Pop3(s.port) as p:
        st = p.cmd("AUTH PLAIN " + b64(creds))
        assert ok(st), st
        assert p.stat()[0] == 5
        with ImapView(dovecot.dc, "alice") as v:
            body = v.body(1)
        st, got = p.retr(1)
        assert ok(st) and got == pop3_expected(body)
        # the maildrop lock is alice's
        with Pop3(s.port) as q:
            st = q.login("alice", "secret")
            assert st.startswith(b"-ERR [IN-USE]"), st
        assert ok(p.quit())
    assert s.wait_log(r"session end: user=alice .*retrieved=1/.*end=quit", 5), s.log()[-2000:]
    assert dovecot.master_password not in s.log()
    # two-step form, wrong master password
    with Pop3(s.port) as p:
        assert p.cmd("AUTH PLAIN").startswith(b"+")
        st = p.cmd(b64(b"alice\0" + dovecot.master_user.encode() + b"\0wrong"))
        assert st.startswith(b"-ERR [AUTH]"), st


def test_auth_login(server):
    with Pop3(server.port) as p:
        st = p.cmd("AUTH LOGIN")
        assert st == b"+ VXNlcm5hbWU6", st
        st = p.cmd(b64(b"alice"))
        assert st == b"+ UGFzc3dvcmQ6", st
        st = p.cmd(b64(b"secret"))
        assert ok(st), st
        assert p.stat()[0] == 5
        assert ok(p.quit())
    with Pop3(server.port) as p:
        assert p.cmd("AUTH LOGIN") == b"+ VXNlcm5hbWU6"
        assert p.cmd(b64(b"alice")) == b"+ UGFzc3dvcmQ6"
        st = p.cmd(b64(b"wrong"))
        assert st.startswith(b"-ERR [AUTH]"), st


def test_auth_cancel_and_bad_base64_keep_session_usable(server):
    with Pop3(server.port) as p:
        for start, steps in (("AUTH PLAIN", []), ("AUTH LOGIN", []),
                             ("AUTH LOGIN", [b64(b"alice")])):
            assert p.cmd(start).startswith(b"+"), start
            for line in steps:
                assert p.cmd(line).startswith(b"+")
            st = p.cmd("*")
            assert err(st), (start, steps, st)
        st = p.cmd("AUTH PLAIN !!!not-base64!!!")
        assert err(st), st
        assert p.cmd("AUTH PLAIN").startswith(b"+")
        st = p.cmd("%%%%")
        assert err(st), st
        assert p.cmd("AUTH LOGIN").startswith(b"+")
        st = p.cmd("@@@")
        assert err(st), st
        st = p.cmd("AUTH NOSUCHMECH")
        assert err(st), st
        # still in sync and usable
        assert ok(p.login("alice", "secret"))
        assert p.stat()[0] == 5
        assert ok(p.quit())


def test_auth_xoauth2_not_offered_by_dovecot(server):
    tok = b64(b"user=alice\x01auth=Bearer abc\x01\x01")
    with Pop3(server.port) as p:
        capa = p.capa()
        mechs = sasl_line(capa)
        assert mechs is not None, capa  # loopback: SASL is offered
        assert b"PLAIN" in mechs, capa
        assert b"XOAUTH2" not in mechs and b"OAUTHBEARER" not in mechs, capa
        st = p.cmd("AUTH XOAUTH2 " + tok)
        assert err(st), st
        st = p.cmd("AUTH OAUTHBEARER " + b64(b"n,a=alice,\x01auth=Bearer abc\x01\x01"))
        assert err(st), st
        assert ok(p.login("alice", "secret"))
        assert ok(p.quit())


# --------------------------------------------------------------------------
# XOAUTH2 / OAUTHBEARER through a scripted IMAP peer
# --------------------------------------------------------------------------

TOKEN = "ya29.a0AfH6SMBx-tok3n_Only-For_Tests"


@pytest.fixture
def oauth(make_server):
    """(fake, fake backend, server with -d) for a backend with SASL-IR."""
    made = []

    def make(sasl_ir=True, token=TOKEN, user="alice"):
        fake = OAuthImap(user=user, token=token, sasl_ir=sasl_ir)
        fb = FakeBackend(fake)
        made.append(fb)
        s = make_server(["-d"], backend_port=fb.port)
        return fake, s
    yield make
    for fb in made:
        fb.stop()


def oauth_session(p, fake):
    assert p.stat() == (2, sum(len(m) for m in fake.msgs))
    st, body = p.retr(1)
    assert ok(st) and body == fake.msgs[0], (st, body)
    assert ok(p.quit())


@pytest.mark.parametrize("mech", ["XOAUTH2", "OAUTHBEARER"])
def test_oauth_one_line(oauth, mech):
    fake, s = oauth()
    with Pop3(s.port) as p:
        capa = p.capa()
        record_capa("loopback, backend offers XOAUTH2 OAUTHBEARER, no tls_cert", capa)
        assert mech.encode() in sasl_line(capa), capa
        st, mechs = p.multi_lines("AUTH")
        assert ok(st) and mech.encode() in mechs, mechs
        st = p.cmd("AUTH %s %s" % (mech, b64(fake.expected(mech))))
        assert ok(st), st
        oauth_session(p, fake)
    rec = [a for a in fake.auths if a["mech"] == mech]
    assert len(rec) == 1, fake.auths
    assert rec[0]["decoded"] == fake.expected(mech)
    assert rec[0]["ir"] == b64(fake.expected(mech)).encode(), rec  # SASL-IR, same base64
    assert rec[0]["ok"]
    assert s.wait_log(r"session end: user=alice .*end=quit", 5), s.log()[-2000:]
    assert TOKEN not in s.log()


@pytest.mark.parametrize("mech", ["XOAUTH2", "OAUTHBEARER"])
def test_oauth_two_step(oauth, mech):
    fake, s = oauth()
    with Pop3(s.port) as p:
        st = p.cmd("AUTH " + mech)
        assert st in (b"+ ", b"+"), st
        st = p.cmd(b64(fake.expected(mech)))
        assert ok(st), st
        oauth_session(p, fake)
    assert [a["decoded"] for a in fake.auths] == [fake.expected(mech)], fake.auths
    assert s.wait_log(r"session end: user=alice .*end=quit", 5)
    assert TOKEN not in s.log()


@pytest.mark.parametrize("form", ["one-line", "two-step"])
@pytest.mark.parametrize("mech", ["XOAUTH2", "OAUTHBEARER"])
def test_oauth_10kib_token(oauth, mech, form):
    token = "T" + "".join("abcdefghijklmnopqrstuvwxyz0123456789-._~+/"[i % 42]
                          for i in range(10 * 1024 - 1))
    fake, s = oauth(token=token)
    resp = b64(fake.expected(mech))
    assert len(resp) > 13_000
    with Pop3(s.port) as p:
        if form == "one-line":
            st = p.cmd("AUTH %s %s" % (mech, resp))
        else:
            assert p.cmd("AUTH " + mech).startswith(b"+")
            st = p.cmd(resp)
        assert ok(st), st[:200]
        oauth_session(p, fake)
    assert fake.auths and fake.auths[0]["decoded"] == fake.expected(mech)
    log = s.log()
    assert token not in log and token[:64] not in log and resp[:64] not in log


def test_oauth_without_sasl_ir_uses_continuation(oauth):
    fake, s = oauth(sasl_ir=False)
    with Pop3(s.port) as p:
        st = p.cmd("AUTH XOAUTH2 " + b64(fake.expected("XOAUTH2")))
        assert ok(st), st
        oauth_session(p, fake)
    assert len(fake.auths) == 1
    assert fake.auths[0]["ir"] is None, fake.auths
    assert fake.auths[0]["cont"] == b64(fake.expected("XOAUTH2")).encode()
    auth_lines = [ln for ln in fake.lines if b"AUTHENTICATE" in ln.upper()]
    assert auth_lines and all(ln.rstrip(b"\r\n").upper().endswith(b"AUTHENTICATE XOAUTH2")
                              for ln in auth_lines), auth_lines


@pytest.mark.parametrize("mech", ["XOAUTH2", "OAUTHBEARER"])
def test_oauth_wrong_token(oauth, mech):
    fake, s = oauth()
    wrong = "wrong-" + TOKEN[::-1]
    with Pop3(s.port) as p:
        st = p.cmd("AUTH %s %s" % (mech, b64(fake.expected(mech, token=wrong))))
        assert st.startswith(b"-ERR [AUTH]"), st
        # the error challenge (base64 JSON) is not passed to the POP3 client
        assert p.pending(0.3) == b""
        # still usable: the right token now works
        st = p.cmd("AUTH %s %s" % (mech, b64(fake.expected(mech))))
        assert ok(st), st
        assert ok(p.quit())
    assert len(fake.auths) == 2, fake.auths
    assert not fake.auths[0]["ok"] and fake.auths[1]["ok"]
    print("%s: answer to the error challenge: %r" % (mech, fake.auths[0]["ack"]))
    assert fake.auths[0]["ack"] in (b"", b"AQ=="), fake.auths[0]
    log = s.log()
    assert wrong not in log and TOKEN not in log


def test_oauth_user_is_locked(oauth):
    """The POP3 user comes from user= (XOAUTH2) and a= (OAUTHBEARER): a
    second session of the same user is IN-USE, whichever mechanism."""
    fake, s = oauth()
    with Pop3(s.port) as p, Pop3(s.port) as q:
        assert ok(p.cmd("AUTH XOAUTH2 " + b64(fake.expected("XOAUTH2"))))
        st = q.cmd("AUTH OAUTHBEARER " + b64(fake.expected("OAUTHBEARER")))
        assert st.startswith(b"-ERR [IN-USE]"), st
        assert ok(p.quit())
    assert s.wait_log(r"session end: user=alice .*end=quit", 5)


def test_oauth_line_limit(oauth):
    """Lines up to 32 KiB are accepted (a ~24 KiB token works); a longer
    line gets -ERR and the session stays in sync."""
    token = "Z" * (18 * 1024)
    fake, s = oauth(token=token)
    with Pop3(s.port) as p:
        resp = b64(fake.expected("XOAUTH2"))
        assert 24_000 < len(resp) < 32 * 1024 - 100
        st = p.cmd("AUTH XOAUTH2 " + resp)
        assert ok(st), st[:200]
        assert ok(p.quit())
    with Pop3(s.port) as p:
        st = p.cmd("AUTH XOAUTH2 " + "QUFB" * (10 * 1024))  # 40 KiB line
        print("40 KiB AUTH line:", st[:200])
        assert err(st), st[:200]
        capa = p.capa()
        assert b"USER" in capa, capa
        assert ok(p.quit())


@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN"])
def test_sasl_continuation_over_32kib_is_refused_and_session_stays_in_sync(server, mech):
    """A SASL response line longer than 32 KiB after ``+ ``: -ERR, the rest
    of the line is skipped, and the next commands are answered in order."""
    with Pop3(server.port) as p:
        st = p.cmd("AUTH " + mech)
        assert st.startswith(b"+ "), st
        p.send(b"QUFB" * (9 * 1024) + b"\r\nNOOP\r\n")  # 36 KiB of base64
        st = p.readline()
        assert err(st), st[:200]
        st = p.readline()  # NOOP before login: one -ERR line, not a SASL answer
        assert err(st) and b"logged in" in st.lower(), st
        assert p.pending(0.3) == b""
        capa = p.capa()
        assert b"TOP" in capa and sasl_line(capa), capa
        assert ok(p.login("alice", "secret"))
        assert p.stat()[0] == 5
        assert ok(p.quit())
