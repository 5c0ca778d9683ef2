//! TLS to the backend over the deadline socket (`conn.rs`): the handshake,
//! run to its end within the connect timeout so that a refused certificate
//! is reported as such and not as a later read error, and the fingerprint of
//! the certificate shown. It only carries bytes: whether and when TLS starts
//! (implicit, STARTTLS) is decided in `client.rs`, and which certificates
//! are trusted by the configuration `crate::tls` builds.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

use super::ImapError;
use super::conn::{DeadlineSocket, Transport};
use crate::tls::Fingerprint;

/// The backend connection inside TLS.
pub(super) struct TlsStream(StreamOwned<ClientConnection, DeadlineSocket>);

impl TlsStream {
    /// Runs the whole handshake now, within `timeout`, so that a failed
    /// verification is reported as such and not as a later read error.
    pub(super) fn handshake(
        mut sock: DeadlineSocket,
        config: &Arc<ClientConfig>,
        name: &ServerName<'static>,
        timeout: Duration,
        implicit: bool,
    ) -> Result<TlsStream, ImapError> {
        let mut conn = ClientConnection::new(Arc::clone(config), name.clone())
            .map_err(|e| ImapError::Tls(e.to_string()))?;
        sock.set_deadline(Instant::now() + timeout);
        while conn.is_handshaking() {
            if let Err(e) = conn.complete_io(&mut sock) {
                return Err(match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ImapError::Timeout,
                    io::ErrorKind::UnexpectedEof => {
                        ImapError::Tls("backend closed the connection during the handshake".into())
                    }
                    _ => {
                        let rustls_error =
                            e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
                        match rustls_error {
                            Some(why @ rustls::Error::InvalidCertificate(_)) => {
                                ImapError::Certificate(crate::tls::explain(
                                    why,
                                    &name.to_str(),
                                    implicit,
                                ))
                            }
                            Some(why) => {
                                ImapError::Tls(crate::tls::explain(why, &name.to_str(), implicit))
                            }
                            None => ImapError::Tls(e.to_string()),
                        }
                    }
                });
            }
        }
        Ok(TlsStream(StreamOwned::new(conn, sock)))
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl Transport for TlsStream {
    fn set_deadline(&mut self, deadline: Instant) {
        self.0.sock.set_deadline(deadline);
    }

    fn peer_fingerprint(&self) -> Option<Fingerprint> {
        let certs = self.0.conn.peer_certificates()?;
        certs.first().map(|c| Fingerprint::of(c))
    }
}
