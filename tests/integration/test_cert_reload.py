"""The STLS certificate is read for every connection: replacing the PEM
files takes effect for the next client without restarting anything."""

import os
import shutil
import ssl
import subprocess

from helpers import Pop3, ok


def _self_signed(directory):
    """A new key and self-signed certificate for 127.0.0.1."""
    cert, key = os.path.join(directory, "new-cert.pem"), os.path.join(directory, "new-key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "2", "-subj", "/CN=reloaded", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", key, "-out", cert],
        check=True, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    return cert, key


def _stls_verifies(port, cafile):
    """Whether an STLS handshake verifies against ``cafile``."""
    context = ssl.create_default_context(cafile=cafile)
    with Pop3(port) as p:
        assert ok(p.cmd("STLS"))
        try:
            p.starttls(context, server_hostname="127.0.0.1")
        except ssl.SSLCertVerificationError:
            return False
        assert b"STLS" not in b"".join(p.capa())
        return True


def test_replaced_certificate_is_used_by_the_next_connection(dovecot, make_server, tmp_path):
    tls = dovecot.tls
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    shutil.copy(tls["cert"], cert)
    shutil.copy(tls["key"], key)
    server = make_server(["--tls-cert", cert, "--tls-key", key])
    assert _stls_verifies(server.port, tls["ca"])

    new_cert, new_key = _self_signed(str(tmp_path))
    # Replace the pair the way certbot-style tools do: rename over the old files.
    os.replace(new_key, key)
    os.replace(new_cert, cert)

    assert not _stls_verifies(server.port, tls["ca"])
    assert _stls_verifies(server.port, cert)
