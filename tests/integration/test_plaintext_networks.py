"""plaintext_auth_from: LAN devices that have no TLS at all may log in with
USER/PASS from the networks listed, while every other client off loopback
still has to use STLS (allow_plaintext_auth stays off). The client is a
real one in a network namespace, so the server sees a non-loopback
address."""

from helpers import StandaloneServer


def tls_args(dovecot):
    return ["--tls-cert", dovecot.tls["cert"], "--tls-key", dovecot.tls["key"]]


def serve(dovecot, workdir, netns, networks: str, name: str) -> StandaloneServer:
    return StandaloneServer(workdir, dovecot.port,
                            tls_args(dovecot) + ["--plaintext-auth-from", networks],
                            name=name, listen_host=netns.server_addr)


def test_a_listed_network_logs_in_without_tls(dovecot, workdir, netns):
    s = serve(dovecot, workdir, netns, "192.0.2.0/24,%s/32" % netns.client_addr, "ns-lan")
    try:
        t = netns.run_client(s.port, [
            ["cmd", "USER alice"],
            ["cmd", "PASS secret"],
            ["cmd", "STAT"],
            ["cmd", "QUIT"],
        ])
        assert t[1][1].startswith("+OK") and t[2][1].startswith("+OK"), t
        assert t[3][1].startswith("+OK 5 "), t
        assert s.wait_log(r"session end: user=alice client=%s:\d+ login=ok tls=no .*end=quit"
                          % netns.client_addr.replace(".", r"\."), 5), s.log()[-2000:]
    finally:
        s.stop()


def test_another_network_still_needs_tls(dovecot, workdir, netns):
    s = serve(dovecot, workdir, netns, "192.0.2.0/24", "ns-other")
    try:
        t = netns.run_client(s.port, [
            ["cmd", "USER alice"],
            ["cmd", "PASS secret"],
            ["cmd", "QUIT"],
        ])
        assert t[1][1].startswith("-ERR"), t
        assert t[2][1].startswith("-ERR"), t
        assert "login=ok" not in s.log(), s.log()[-2000:]
    finally:
        s.stop()
