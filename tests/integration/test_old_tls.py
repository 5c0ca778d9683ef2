"""Devices that speak only TLS 1.0, through a TLS terminator
(docs/old-tls-devices.md): a real HAProxy (Debian's package, built with
OpenSSL) ends TLS 1.0 and relays to pop3server with ``send-proxy-v2-ssl``,
whose PP2_TYPE_SSL TLV tells pop3server the client spoke TLS. pop3server
itself stays TLS 1.2+.

Addresses: the client runs in the ``netns`` fixture's network namespace,
so it has a non-loopback address (10.200.N.2) and reaches HAProxy on this
side of the veth pair (10.200.N.1), never on a public interface. HAProxy
connects to pop3server on 127.0.0.1 from 127.0.0.2, the only source
``proxy_protocol_from`` trusts. ``allow_plaintext_auth`` is off and a
certificate is loaded, so STLS is offered where TLS is missing.

HAProxy's three frontends:
- ``old_tls``: TLS 1.0 ended here, ``send-proxy-v2-ssl`` (the set-up of
  the documentation);
- ``plain``: plain TCP, ``send-proxy-v2`` (no TLV);
- ``plain_ssl_tlv``: plain TCP, ``send-proxy-v2-ssl`` (the TLV with
  PP2_CLIENT_SSL unset).

Needs (Debian): haproxy, iproute2, root (for the namespace).
"""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import tempfile

import pytest

from helpers import ImapView, ServerBase, StandaloneServer, need, pop3_expected, wait_for
from testbed import free_port

BALANCER = "127.0.0.2"
FRONTENDS = ("old_tls", "plain", "plain_ssl_tlv")
REFUSED = "-ERR Plaintext authentication is disabled on unencrypted connections: use STLS first"

HAPROXY_CFG = """global
    maxconn 64

defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s

frontend old_tls
    bind {lan}:{old_tls} ssl crt {pem} ssl-min-ver TLSv1.0 ciphers DEFAULT:@SECLEVEL=0
    default_backend pop3server_ssl

frontend plain
    bind {lan}:{plain}
    default_backend pop3server

frontend plain_ssl_tlv
    bind {lan}:{plain_ssl_tlv}
    default_backend pop3server_ssl

backend pop3server_ssl
    server s 127.0.0.1:{pop3} send-proxy-v2-ssl source {balancer}

backend pop3server
    server s 127.0.0.1:{pop3} send-proxy-v2 source {balancer}
"""


def listening(port: int) -> bool:
    """Whether something listens on this TCP port (any IPv4 address), seen
    without connecting: a probe through HAProxy would be a session."""
    want = ":%04X" % port
    try:
        with open("/proc/net/tcp") as f:
            rows = [r.split() for r in f.read().splitlines()[1:]]
    except OSError:
        return False
    return any(r[1].endswith(want) and r[3] == "0A" for r in rows)


class HAProxy(ServerBase):
    """haproxy -db (foreground) with HAPROXY_CFG; ``ports[frontend]``."""

    def __init__(self, directory: str, lan: str, pop3_port: int, tls: dict):
        binary = need("haproxy", "haproxy")
        # HAProxy takes the certificate and its key from one file.
        pem = os.path.join(directory, "haproxy.pem")
        with open(pem, "wb") as out:
            for part in (tls["cert"], tls["key"]):
                with open(part, "rb") as f:
                    out.write(f.read())
        os.chmod(pem, 0o600)
        self.ports = {name: free_port(also=[lan]) for name in FRONTENDS}
        cfg = os.path.join(directory, "haproxy.cfg")
        with open(cfg, "w") as f:
            f.write(HAPROXY_CFG.format(lan=lan, pem=pem, pop3=pop3_port, balancer=BALANCER,
                                       **self.ports))
        r = subprocess.run([binary, "-c", "-f", cfg], capture_output=True, text=True,
                           timeout=30, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, r.stdout + r.stderr
        self.log_path = os.path.join(directory, "haproxy.log")
        self.logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen([binary, "-db", "-f", cfg], stdin=subprocess.DEVNULL,
                                     stdout=self.logf, stderr=self.logf, start_new_session=True)
        up = wait_for(lambda: self.proc.poll() is not None
                      or all(listening(p) for p in self.ports.values()), 10)
        if not up or self.proc.poll() is not None:
            self.stop()
            raise AssertionError("haproxy did not listen:\n" + self.log())

    def stop(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                break
            try:
                self.proc.wait(5)
                break
            except subprocess.TimeoutExpired:
                continue
        self.logf.close()


class Gateway:
    def __init__(self, server: StandaloneServer, haproxy: HAProxy, netns, ca: str):
        self.server, self.haproxy, self.netns, self.ca = server, haproxy, netns, ca

    def run(self, frontend: str, actions: list, tls_version=None) -> list:
        """The dialogue from the namespace through ``frontend``; implicit
        TLS (speaking only ``tls_version``, if given) on ``old_tls``."""
        return self.netns.run_client(self.haproxy.ports[frontend], actions, cafile=self.ca,
                                     implicit_tls=frontend == "old_tls",
                                     tls_version=tls_version)

    def session_line(self, user: str, peer: str, rest: str) -> bool:
        """Whether the session line of ``user`` from ``peer`` (ADDR:PORT)
        came, with ``rest`` (a pattern) after ``login=``."""
        return self.server.wait_log(r"session end: user=%s client=%s login=%s"
                                    % (re.escape(user), re.escape(peer), rest), 10)


@pytest.fixture(scope="module")
def gateway(dovecot, workdir, netns):
    d = tempfile.mkdtemp(prefix="old-tls-", dir=workdir)
    os.chmod(d, 0o755)
    server = StandaloneServer(d, dovecot.port, [
        "-d",
        "--allow-plaintext-auth", "false",
        "--proxy-protocol-from", BALANCER + "/32",
        "--tls-cert", dovecot.tls["cert"], "--tls-key", dovecot.tls["key"],
    ], name="old-tls")
    try:
        haproxy = HAProxy(d, netns.server_addr, server.port, dovecot.tls)
    except BaseException:
        server.stop()
        raise
    yield Gateway(server, haproxy, netns, dovecot.tls["ca"])
    haproxy.stop()
    server.stop()


def capa(transcript_entry) -> list:
    status, *lines = transcript_entry[1]
    assert status.startswith("+OK"), transcript_entry
    return lines


def test_tls10_through_haproxy_counts_as_tls_for_plaintext_logins(gateway, dovecot,
                                                                   fresh_user):
    user = fresh_user(2)
    with ImapView(dovecot, user) as v:
        first = v.body(v.uids()[0])
    t = gateway.run("old_tls", [
        ["tls"],
        ["peer"],
        ["multi", "CAPA"],
        ["cmd", "STLS"],
        ["cmd", "USER " + user],
        ["cmd", "PASS secret"],
        ["cmd", "STAT"],
        ["multi", "RETR 1"],
        ["cmd", "QUIT"],
    ], tls_version="TLSv1")
    assert t[0][1].startswith("+OK"), t
    # The device really spoke TLS 1.0 (to HAProxy; pop3server has no TLS 1.0).
    assert t[1][1] == "TLSv1", t
    peer = t[2][1]
    assert peer.startswith(gateway.netns.client_addr + ":"), t
    lines = capa(t[3])
    assert "USER" in lines and any(ln.startswith("SASL PLAIN") for ln in lines), lines
    assert not any(ln.startswith("STLS") for ln in lines), lines
    assert t[4][1] == "-ERR TLS is already active", t
    assert t[5][1].startswith("+OK"), t
    assert t[6][1].startswith("+OK Logged in"), t
    assert t[7][1].startswith("+OK 2 "), t
    status, *body = t[8][1]
    assert status.startswith("+OK"), t
    assert "".join(ln + "\r\n" for ln in body).encode("latin-1") == pop3_expected(first)
    assert t[9][1].startswith("+OK"), t
    assert gateway.session_line(user, peer, r"ok tls=TLSv1 via balancer .*end=quit"), \
        gateway.server.log()[-3000:]
    assert re.search(r"connection from %s via balancer %s:\d+ \(PROXY v2, TLSv1 ended by the "
                     r"balancer\)" % (re.escape(peer), re.escape(BALANCER)),
                     gateway.server.log()), gateway.server.log()[-3000:]


def test_auth_plain_through_tls10_is_allowed_too(gateway, fresh_user):
    user = fresh_user(1)
    plain = base64.b64encode(b"\0" + user.encode() + b"\0secret").decode()
    t = gateway.run("old_tls", [
        ["peer"],
        ["cmd", "AUTH PLAIN " + plain],
        ["cmd", "QUIT"],
    ], tls_version="TLSv1")
    assert t[2][1].startswith("+OK Logged in"), t
    assert gateway.session_line(user, t[1][1], r"ok tls=TLSv1 via balancer .*end=quit"), \
        gateway.server.log()[-3000:]


@pytest.mark.parametrize("frontend", ["plain", "plain_ssl_tlv"],
                         ids=["send-proxy-v2", "send-proxy-v2-ssl-plaintext-client"])
def test_plain_tcp_through_haproxy_still_needs_stls(gateway, fresh_user, frontend):
    """No TLV (send-proxy-v2), or the TLV with PP2_CLIENT_SSL unset
    (send-proxy-v2-ssl for a client that connected in plain TCP): a remote
    client without TLS, refused as ever, and STLS (pop3server's own TLS,
    through HAProxy in TCP mode) works."""
    user = fresh_user(1)
    t = gateway.run(frontend, [
        ["peer"],
        ["multi", "CAPA"],
        ["cmd", "USER " + user],
        ["cmd", "AUTH PLAIN " + base64.b64encode(b"\0x\0y").decode()],
        ["stls"],
        ["cmd", "USER " + user],
        ["cmd", "PASS secret"],
        ["cmd", "QUIT"],
    ])
    peer = t[1][1]
    assert peer.startswith(gateway.netns.client_addr + ":"), t
    lines = capa(t[2])
    assert "STLS" in lines and "USER" not in lines, lines
    assert t[3][1] == REFUSED, t
    assert t[4][1] == REFUSED, t
    assert t[5][1].startswith("+OK"), t
    assert t[7][1].startswith("+OK Logged in"), t
    assert gateway.session_line(user, peer, r"ok tls=yes .*end=quit"), \
        gateway.server.log()[-3000:]
    assert re.search(r"connection from %s via balancer %s:\d+ \(PROXY v2\)"
                     % (re.escape(peer), re.escape(BALANCER)), gateway.server.log()), \
        gateway.server.log()[-3000:]


def test_pop3server_itself_refuses_tls10(gateway):
    """Without the terminator the device gets nowhere: pop3server's own TLS
    (STLS here, through HAProxy in TCP mode) is TLS 1.2+."""
    t = gateway.run("plain", [["peer"], ["stls_try"]], tls_version="TLSv1")
    assert t[2][1].startswith("+OK Begin TLS negotiation | handshake failed:"), t
    assert gateway.session_line("-", t[1][1], r"none tls=no .*end=tls-failed"), \
        gateway.server.log()[-3000:]
