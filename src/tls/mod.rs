//! TLS set-up with rustls (ring, TLS 1.2 and 1.3): the server side for STLS
//! and implicit TLS from PEM files read per connection (so a renewed
//! certificate needs no restart), and the client side for the backend with
//! the system trust store or a configured CA file. Opening connections is
//! the transports' and the IMAP client's business, not this module's.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, Error as TlsError, OtherError,
    RootCertStore, ServerConfig, SignatureScheme,
};
use x509_cert::der::Decode;

pub mod fingerprint;

pub use fingerprint::Fingerprint;

#[derive(Debug)]
pub struct TlsSetupError(pub String);

impl fmt::Display for TlsSetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsSetupError {}

/// Loads the certificate chain and key; a missing, unreadable or empty file,
/// or a key that does not match the certificate, is an error naming the file.
/// Certificate chain and key (PEM) for STLS and implicit TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let certs = read_certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        TlsSetupError(format!(
            "{}: cannot read a private key: {e}",
            files.key.display()
        ))
    })?;
    let config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            TlsSetupError(format!(
                "{} and {}: unusable certificate and key: {e}",
                files.cert.display(),
                files.key.display()
            ))
        })?;
    Ok(Arc::new(config))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsSetupError(format!("{}: cannot read certificates: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(TlsSetupError(format!(
            "{}: no PEM certificate found",
            path.display()
        )));
    }
    Ok(certs)
}

/// How to check the backend's certificate.
pub enum Verify<'a> {
    /// The system trust store (what `ca-certificates` installs).
    SystemRoots,
    /// Only the CAs in this PEM file.
    CaFile(&'a Path),
    /// Exactly the certificate with this fingerprint, whoever signed it and
    /// whatever names it carries; its validity period is still checked
    /// (`backend_tls_fingerprint`).
    Pinned(Fingerprint),
    /// No check at all (`backend_tls_verify = false`).
    Nothing,
}

pub fn client_config(verify: Verify) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let builder = ClientConfig::builder();
    let verifier: Arc<dyn ServerCertVerifier> = match verify {
        Verify::Nothing => Arc::new(AcceptAnything),
        Verify::Pinned(pin) => Arc::new(Pinned {
            pin,
            algorithms: algorithms(),
        }),
        Verify::SystemRoots => {
            let mut roots = RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(TlsSetupError(
                    "no CA certificates in the system trust store: install ca-certificates or set backend_ca_file"
                        .into(),
                ));
            }
            Arc::new(Explained(web_pki(roots)?))
        }
        Verify::CaFile(path) => {
            let mut roots = RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(read_certs(path)?);
            if added == 0 {
                return Err(TlsSetupError(format!(
                    "{}: no usable CA certificate",
                    path.display()
                )));
            }
            Arc::new(Explained(web_pki(roots)?))
        }
    };
    Ok(Arc::new(
        builder
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth(),
    ))
}

fn web_pki(roots: RootCertStore) -> Result<Arc<WebPkiServerVerifier>, TlsSetupError> {
    WebPkiServerVerifier::builder(Arc::new(roots))
        .build()
        .map_err(|e| TlsSetupError(format!("cannot set up certificate checking: {e}")))
}

fn algorithms() -> WebPkiSupportedAlgorithms {
    rustls::crypto::ring::default_provider().signature_verification_algorithms
}

/// One line for an admin about a failed TLS handshake with the backend:
/// what the error means and what to set. `implicit`: TLS from the first
/// byte (`backend_tls = implicit`), where a plaintext answer means a port
/// that does not speak TLS.
pub fn explain(e: &TlsError, host: &str, implicit: bool) -> String {
    let pin = |seen: &Fingerprint| format!("backend_tls_fingerprint = \"{seen}\"");
    if let TlsError::InvalidCertificate(CertificateError::Other(OtherError(inner))) = e {
        if let Some(m) = inner.downcast_ref::<PinMismatch>() {
            return format!(
                "the backend's certificate (SHA-256 {}) is not the one backend_tls_fingerprint \
                 pins ({}): if the server got a new certificate, check that it is the server's \
                 and set {}",
                m.seen,
                m.pin,
                pin(&m.seen)
            );
        }
        if let Some(r) = inner.downcast_ref::<Refused>() {
            return explain_refused(&r.why, host, &pin(&r.seen));
        }
    }
    match e {
        // The pinned certificate itself, out of its validity period.
        TlsError::InvalidCertificate(_) => explain_refused(e, host, ""),
        TlsError::InvalidMessage(_) if implicit => format!(
            "the backend does not speak TLS on this port ({e}): wrong backend_port, or should \
             backend_tls be starttls (or none)?"
        ),
        TlsError::AlertReceived(alert) => format!(
            "the backend ended the handshake with the alert {alert:?}: it may not accept our \
             TLS versions or ciphers (TLS 1.2 and 1.3), see the backend's log"
        ),
        other => other.to_string(),
    }
}

fn explain_refused(why: &TlsError, host: &str, pin: &str) -> String {
    let TlsError::InvalidCertificate(why) = why else {
        return why.to_string();
    };
    match why {
        CertificateError::NotValidForNameContext { presented, .. } => format!(
            "the backend's certificate is not valid for backend_host {host}: it names {}; set \
             backend_host to one of those names, or pin the certificate with {pin}",
            if presented.is_empty() {
                "no host at all".to_string()
            } else {
                presented
                    .iter()
                    .map(|n| plain_name(n))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ),
        CertificateError::NotValidForName => format!(
            "the backend's certificate is not valid for backend_host {host}: set backend_host to \
             a name it carries, or pin the certificate with {pin}"
        ),
        CertificateError::ExpiredContext { not_after, .. } => format!(
            "the backend's certificate expired {} ago: renew it on the backend (a pinned \
             one too, then pin the new one)",
            age(*not_after)
        ),
        CertificateError::Expired => {
            "the backend's certificate has expired: renew it on the backend".to_string()
        }
        CertificateError::BadEncoding => {
            "the backend's certificate cannot be read (bad encoding): check the certificate the \
             backend is configured with"
                .to_string()
        }
        CertificateError::NotValidYetContext { .. } | CertificateError::NotValidYet => {
            "the backend's certificate is not valid yet: check the clocks of both hosts".to_string()
        }
        CertificateError::Other(OtherError(inner))
            if matches!(
                inner.downcast_ref::<webpki::Error>(),
                Some(webpki::Error::CaUsedAsEndEntity)
            ) =>
        {
            format!(
                "the backend's certificate is a CA certificate (CA:TRUE, what `openssl req -x509` \
                 makes unless told otherwise) used as the server's own, which certificate \
                 checking refuses even with backend_ca_file: pin it with {pin}, or give the \
                 server a certificate signed by that CA"
            )
        }
        other => format!(
            "the backend's certificate is not signed by a CA we trust ({other:?}): set \
             backend_ca_file to the CA that signed it, or pin the certificate with {pin}"
        ),
    }
}

/// rustls presents the names as `DnsName("mail.example.org")` and
/// `IpAddress(192.0.2.1)`: the admin wants the names.
fn plain_name(presented: &str) -> &str {
    presented
        .strip_prefix("DnsName(\"")
        .and_then(|n| n.strip_suffix("\")"))
        .or_else(|| {
            presented
                .strip_prefix("IpAddress(")
                .and_then(|n| n.strip_suffix(')'))
        })
        .unwrap_or(presented)
}

/// How long ago, for a log line: days, or hours.
fn age(then: UnixTime) -> String {
    let now = UnixTime::now().as_secs();
    let secs = now.saturating_sub(then.as_secs());
    match secs / 86_400 {
        0 => format!("{} hours", secs / 3600),
        1 => "1 day".to_string(),
        days => format!("{days} days"),
    }
}

/// A certificate the backend showed and the usual checks refused, with its
/// fingerprint, so that the message can offer the pin.
#[derive(Debug)]
struct Refused {
    why: TlsError,
    seen: Fingerprint,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (certificate SHA-256 {})", self.why, self.seen)
    }
}

impl std::error::Error for Refused {}

#[derive(Debug)]
struct PinMismatch {
    seen: Fingerprint,
    pin: Fingerprint,
}

impl fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "certificate SHA-256 {} is not the pinned {}",
            self.seen, self.pin
        )
    }
}

impl std::error::Error for PinMismatch {}

/// The usual checks (chain to the roots, name, validity), whose refusals
/// carry the certificate's fingerprint (see `explain`).
#[derive(Debug)]
struct Explained(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for Explained {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        self.0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .map_err(|why| match why {
                TlsError::InvalidCertificate(_) => TlsError::InvalidCertificate(
                    CertificateError::Other(OtherError(Arc::new(Refused {
                        why,
                        seen: Fingerprint::of(end_entity),
                    }))),
                ),
                other => other,
            })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `backend_tls_fingerprint`: this one certificate, within its validity
/// period; the handshake signatures are checked against its key as always,
/// so only the holder of its private key gets through.
#[derive(Debug)]
struct Pinned {
    pin: Fingerprint,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        let seen = Fingerprint::of(end_entity);
        if seen != self.pin {
            return Err(TlsError::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(PinMismatch {
                    seen,
                    pin: self.pin,
                })),
            )));
        }
        check_validity(end_entity, now)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// notBefore <= now <= notAfter, as the usual checks do.
fn check_validity(der: &[u8], now: UnixTime) -> Result<(), TlsError> {
    let cert = x509_cert::Certificate::from_der(der)
        .map_err(|_| TlsError::InvalidCertificate(CertificateError::BadEncoding))?;
    let validity = cert.tbs_certificate().validity();
    let not_before = validity.not_before.to_unix_duration();
    let not_after = validity.not_after.to_unix_duration();
    let at = Duration::from_secs(now.as_secs());
    if at < not_before {
        return Err(TlsError::InvalidCertificate(
            CertificateError::NotValidYetContext {
                time: now,
                not_before: UnixTime::since_unix_epoch(not_before),
            },
        ));
    }
    if at > not_after {
        return Err(TlsError::InvalidCertificate(
            CertificateError::ExpiredContext {
                time: now,
                not_after: UnixTime::since_unix_epoch(not_after),
            },
        ));
    }
    Ok(())
}

/// The name the backend certificate must carry: a DNS name or an IP address.
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsSetupError> {
    ServerName::try_from(host.to_string()).map_err(|e| {
        TlsSetupError(format!(
            "backend_host {host:?} cannot be checked against a certificate: {e}"
        ))
    })
}

/// For `backend_tls_verify = false` only.
#[derive(Debug)]
struct AcceptAnything;

impl ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms().supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::InvalidMessage;

    fn refused(why: CertificateError) -> TlsError {
        TlsError::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(Refused {
            why: TlsError::InvalidCertificate(why),
            seen: Fingerprint::of(b"cert"),
        }))))
    }

    #[test]
    fn each_refusal_is_one_line_that_says_what_to_set() {
        let pin = format!("backend_tls_fingerprint = \"{}\"", Fingerprint::of(b"cert"));
        let unknown = explain(&refused(CertificateError::UnknownIssuer), "mail", false);
        assert!(
            unknown.contains("set backend_ca_file") && unknown.contains(&pin),
            "{unknown}"
        );
        let names = explain(
            &refused(CertificateError::NotValidForNameContext {
                expected: ServerName::try_from("mail").expect("name"),
                presented: vec![
                    "DnsName(\"imap.example\")".into(),
                    "IpAddress(192.0.2.1)".into(),
                ],
            }),
            "mail",
            false,
        );
        assert!(
            names.contains("not valid for backend_host mail: it names imap.example, 192.0.2.1"),
            "{names}"
        );
        let plaintext = explain(
            &TlsError::InvalidMessage(InvalidMessage::InvalidContentType),
            "mail",
            true,
        );
        assert!(
            plaintext.contains("does not speak TLS on this port"),
            "{plaintext}"
        );
        let mismatch = TlsError::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
            PinMismatch {
                seen: Fingerprint::of(b"new"),
                pin: Fingerprint::of(b"old"),
            },
        ))));
        let text = explain(&mismatch, "mail", false);
        assert!(
            text.contains(&format!(
                "set backend_tls_fingerprint = \"{}\"",
                Fingerprint::of(b"new")
            )),
            "{text}"
        );
        for line in [unknown, names, plaintext, text] {
            assert!(!line.contains('\n'));
        }
    }
}
