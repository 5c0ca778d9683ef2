"""backend_tls_fingerprint and what a refused backend certificate says.
Against real Dovecots: the session's (a certificate signed by the test CA),
and one of this module's own whose certificate is self-signed the way
`openssl req -x509` makes it by default (CA:TRUE), which small sites run and
which certificate checking refuses as a server certificate.  Fingerprints
are openssl's own output, as an admin would copy them."""

import os
import re
import subprocess

import pytest

import testbed
from helpers import Pop3, ok, server_bin


def openssl_fingerprint(pem: str) -> str:
    out = subprocess.run([testbed.find_openssl(), "x509", "-noout", "-fingerprint", "-sha256",
                          "-in", pem], capture_output=True, timeout=30, check=True).stdout
    # "sha256 Fingerprint=AB:CD:..." (the prefix varies with the version)
    return out.decode().strip().split("=", 1)[1]


@pytest.fixture(scope="module")
def self_signed(workdir):
    """A second Dovecot whose certificate is self-signed with CA:TRUE."""
    dc = testbed.Dovecot(os.path.join(workdir, "dovecot-self-signed"))
    run = lambda *a: subprocess.run([testbed.find_openssl()] + list(a),  # noqa: E731
                                    capture_output=True, timeout=60, check=True)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-subj", "/CN=localhost",
        "-addext", "subjectAltName = IP:127.0.0.1, DNS:localhost",
        "-keyout", dc.tls["key"], "-out", dc.tls["cert"])
    text = run("x509", "-noout", "-text", "-in", dc.tls["cert"]).stdout
    assert b"CA:TRUE" in text, text
    dc.add_user("alice", "secret", testbed.alice_messages())
    dc.start()
    try:
        yield dc
    finally:
        dc.stop()


def check(args):
    r = subprocess.run([server_bin(), "--config", "/dev/null", "--check"] + args,
                       capture_output=True, timeout=60)
    return r.returncode, (r.stdout + r.stderr).decode(errors="replace")


def login_refused(s):
    with Pop3(s.port) as p:
        assert ok(p.cmd("USER alice"))
        st = p.cmd("PASS secret")
        assert st.startswith(b"-ERR [SYS/TEMP]"), st


@pytest.mark.parametrize("mode", ["implicit", "starttls"])
def test_a_pinned_certificate_is_accepted_whatever_signed_it_and_whatever_it_names(
        self_signed, make_server, mode):
    fp = openssl_fingerprint(self_signed.tls["cert"])
    port = self_signed.imaps_port if mode == "implicit" else self_signed.port
    # 127.0.0.2 is not a name the certificate carries; a pin does not care.
    for pin in (fp, fp.lower(), fp.replace(":", "")):
        s = make_server(["--backend-tls", mode, "--backend-host", "127.0.0.2",
                         "--backend-tls-fingerprint", pin], backend_port=port)
        with Pop3(s.port) as p:
            assert ok(p.login("alice", "secret")), s.log()[-2000:]
            assert p.stat()[0] == 5
            st, _ = p.retr(1)
            assert ok(st)
            assert ok(p.quit())
        assert "NOT checked" not in s.log()


def test_a_certificate_other_than_the_pinned_one_is_refused_and_the_log_shows_both(
        dovecot, self_signed, make_server):
    pinned = openssl_fingerprint(self_signed.tls["cert"])
    seen = openssl_fingerprint(dovecot.tls["cert"])
    s = make_server(["--backend-tls", "implicit", "--backend-tls-fingerprint", pinned],
                    backend_port=dovecot.imaps_port)
    login_refused(s)
    assert s.wait_log(r"certificate \(SHA-256 %s\) is not the one backend_tls_fingerprint pins "
                      r"\(%s\)" % (seen, pinned), 5), s.log()[-2000:]


def test_check_shows_the_fingerprint_and_offers_the_pin_for_an_untrusted_certificate(
        dovecot, self_signed):
    # The session Dovecot's certificate is signed by the test CA, which the
    # system store does not know: the one line says what to set.
    seen = openssl_fingerprint(dovecot.tls["cert"])
    code, out = check(["--backend-port", str(dovecot.port), "--backend-tls", "starttls"])
    assert code == 1, out
    assert re.search(r"not signed by a CA we trust \(UnknownIssuer\): set backend_ca_file .*"
                     r'pin the certificate with backend_tls_fingerprint = "%s"' % seen, out), out
    fp = openssl_fingerprint(self_signed.tls["cert"])
    # Pinned: --check connects and prints the fingerprint it saw.
    code, out = check(["--backend-port", str(self_signed.port), "--backend-tls", "starttls",
                       "--backend-tls-fingerprint", fp])
    assert code == 0, out
    assert "certificate pinned" in out and ("certificate SHA-256: %s" % fp) in out, out
    assert "configuration: /dev/null" in out, out


def test_a_ca_true_certificate_in_backend_ca_file_is_explained(self_signed, make_server):
    fp = openssl_fingerprint(self_signed.tls["cert"])
    code, out = check(["--backend-port", str(self_signed.imaps_port), "--backend-tls",
                       "implicit", "--backend-ca-file", self_signed.tls["cert"]])
    assert code == 1, out
    assert re.search(r'CA certificate \(CA:TRUE.*pin it with backend_tls_fingerprint = "%s"'
                     % fp, out), out
    assert "CaUsedAsEndEntity" not in out, out


def test_implicit_tls_on_a_plaintext_port_says_so(dovecot):
    code, out = check(["--backend-port", str(dovecot.port), "--backend-tls", "implicit",
                       "--backend-ca-file", dovecot.tls["ca"]])
    assert code == 1, out
    assert "does not speak TLS on this port" in out and "starttls" in out, out


def test_a_malformed_or_contradicted_pin_is_a_configuration_error(tmp_path):
    for args, expected in (
        (["--backend-tls-fingerprint", "AB:CD"], r"--backend-tls-fingerprint: .*expected 64 hex"),
        (["--backend-tls-fingerprint", "AB" * 32, "--backend-tls-verify", "false"],
         r"contradicts backend_tls_verify = false"),
    ):
        code, out = check(args)
        assert code != 0 and re.search(expected, out), (args, out)
    conf = tmp_path / "p.toml"
    conf.write_text('backend_tls_fingerprint = "not a fingerprint"\n')
    r = subprocess.run([server_bin(), "--config", str(conf), "--check"], capture_output=True,
                       timeout=30)
    out = (r.stdout + r.stderr).decode(errors="replace")
    assert r.returncode != 0 and "%s:1: backend_tls_fingerprint: " % conf in out, out


def test_a_refused_connection_names_the_address_once(tmp_path):
    port = testbed.free_port()  # nothing listens there
    code, out = check(["--backend-port", str(port), "--backend-tls", "none"])
    assert code == 1, out
    assert re.search(r"check failed: cannot connect to 127\.0\.0\.1:%d: Connection refused"
                     % port, out), out
    assert out.count("127.0.0.1:%d" % port) == 2, out  # the "backend:" line and this one
    code, out = check(["--backend-host", "localhost", "--backend-port", str(port),
                       "--backend-tls", "none"])
    assert re.search(r"cannot connect to localhost \((127\.0\.0\.1|\[::1\]):%d: Connection "
                     r"refused" % port, out), out
