//! Signed JWTs that stand in for a password at a token endpoint: the
//! assertion of Google's service-account grant (RFC 7523 section 2.1) and
//! the client assertion of Microsoft's certificate credentials (RFC 7523
//! section 2.2). This module owns the key material: it parses the PEM key
//! and certificate and Google's JSON key file, and signs with RS256 through
//! `ring`. It speaks no HTTP and touches no file beyond reading the key files
//! it is named; the caller sends the assertion and caches what comes back.
//!
//! Private keys and finished assertions (a bearer credential until their
//! `exp`) travel in `Secret`s. As there, this limits exposure and is no
//! guarantee: the PEM decoder's and `ring`'s working copies are not wiped.

use std::fmt;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use rustls::pki_types::pem::{self, PemObject, SectionKind};
use serde::{Deserialize, Serialize};
use x509_cert::der::Decode;

use crate::limits::{CLIENT_ASSERTION_LIFETIME, SERVICE_ACCOUNT_ASSERTION_LIFETIME};
use crate::secret::{Secret, WipeOnDrop};

/// An RSA private key for RS256 (PEM: PKCS#8 "PRIVATE KEY" or PKCS#1 "RSA
/// PRIVATE KEY").
pub struct RsaKey {
    pair: RsaKeyPair,
}

impl RsaKey {
    /// The first private key in `pem`; the error says what is wrong with it
    /// and never quotes it.
    pub fn from_pem(pem: &[u8]) -> Result<RsaKey, String> {
        // Neither is a `SectionKind`, so the parser would skip the first and
        // choke on the other's headers: say what they are instead.
        if contains(pem, b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
            || contains(pem, b"Proc-Type: 4,ENCRYPTED")
        {
            return Err("the private key is encrypted: pop3server cannot ask for a \
                        passphrase; store it decrypted (openssl pkey -in KEY -out \
                        PLAIN), readable only by pop3server"
                .into());
        }
        let mut saw_certificate = false;
        for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(pem) {
            let (kind, der) = section.map_err(pem_error)?;
            // Into a `Secret` at once, whatever the section, so that no
            // key's bytes are dropped unwiped.
            let der = Secret::new(der);
            match kind {
                SectionKind::PrivateKey => {
                    return RsaKeyPair::from_pkcs8(der.expose())
                        .map(|pair| RsaKey { pair })
                        .map_err(|e| key_rejected(e, "PKCS#8"));
                }
                SectionKind::RsaPrivateKey => {
                    return RsaKeyPair::from_der(der.expose())
                        .map(|pair| RsaKey { pair })
                        .map_err(|e| key_rejected(e, "PKCS#1"));
                }
                SectionKind::EcPrivateKey => {
                    return Err("not an RSA key (an EC key): RS256 needs an RSA key".into());
                }
                SectionKind::Certificate => saw_certificate = true,
                _ => {}
            }
        }
        if saw_certificate {
            Err(
                "no private key in PEM, only a certificate: are the certificate \
                 and key files swapped?"
                    .into(),
            )
        } else {
            Err(
                "no private key in PEM (no \"BEGIN PRIVATE KEY\" or \"BEGIN RSA \
                 PRIVATE KEY\" block)"
                    .into(),
            )
        }
    }

    /// The key in the PEM file at `path`; the error names the path.
    pub fn from_file(path: &Path) -> Result<RsaKey, String> {
        let pem = read_secret_file(path)?;
        RsaKey::from_pem(pem.expose()).map_err(|why| format!("{}: {why}", path.display()))
    }

    fn bits(&self) -> usize {
        self.pair.public().modulus_len() * 8
    }

    /// RS256 (RSASSA-PKCS1-v1_5 with SHA-256) over `message`.
    fn sign(&self, message: &[u8]) -> Result<WipeOnDrop, String> {
        let mut signature = WipeOnDrop(vec![0; self.pair.public().modulus_len()]);
        self.pair
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                message,
                &mut signature,
            )
            .map_err(|_| "RSA signing failed".to_string())?;
        Ok(signature)
    }
}

impl fmt::Debug for RsaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RsaKey({} bits, <redacted>)", self.bits())
    }
}

/// The certificate registered with the provider: its thumbprints and expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    /// base64url of the SHA-1 of the DER (JWS `x5t`).
    pub x5t: String,
    /// base64url of the SHA-256 of the DER (JWS `x5t#S256`).
    pub x5t_s256: String,
    /// notAfter, in Unix seconds.
    pub not_after: u64,
}

impl Certificate {
    /// The first CERTIFICATE block in `pem`.
    pub fn from_pem(pem: &[u8]) -> Result<Certificate, String> {
        let der = match rustls::pki_types::CertificateDer::from_pem_slice(pem) {
            Ok(der) => der,
            Err(pem::Error::NoItemsFound) if contains(pem, b"PRIVATE KEY-----") => {
                return Err("no certificate in PEM, only a private key: are the \
                            certificate and key files swapped?"
                    .into());
            }
            Err(pem::Error::NoItemsFound) => {
                return Err("no certificate in PEM (no \"BEGIN CERTIFICATE\" block)".into());
            }
            Err(e) => return Err(pem_error(e)),
        };
        let parsed = x509_cert::Certificate::from_der(&der)
            .map_err(|e| format!("not an X.509 certificate: {e}"))?;
        let not_after = parsed
            .tbs_certificate()
            .validity()
            .not_after
            .to_unix_duration()
            .as_secs();
        Ok(Certificate {
            // SHA-1 because the JWS `x5t` header is defined with it (RFC 7515
            // 4.1.7); it names the certificate, it does not protect it.
            x5t: URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, &der)),
            x5t_s256: URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, &der)),
            not_after,
        })
    }

    /// The certificate in the PEM file at `path`; the error names the path.
    pub fn from_file(path: &Path) -> Result<Certificate, String> {
        let pem = std::fs::read(path)
            .map_err(|e| format!("{}: cannot read the certificate: {e}", path.display()))?;
        Certificate::from_pem(&pem).map_err(|why| format!("{}: {why}", path.display()))
    }
}

/// Google's service account JSON key: client_email, private_key (PEM text),
/// private_key_id, token_uri.
pub struct ServiceAccount {
    pub client_email: String,
    pub private_key_id: Option<String>,
    pub token_uri: Option<String>,
    key: RsaKey,
}

/// The fields of Google's key file that matter here; the others
/// (project_id, client_id, auth_uri, ...) are ignored.
#[derive(Deserialize)]
struct KeyFile {
    #[serde(rename = "type")]
    kind: Option<String>,
    client_email: Option<String>,
    private_key: Option<Secret>,
    private_key_id: Option<String>,
    token_uri: Option<String>,
}

impl ServiceAccount {
    /// The key file's JSON; errors never quote it (it holds the key).
    pub fn from_json(bytes: &[u8]) -> Result<ServiceAccount, String> {
        let file: KeyFile = serde_json::from_slice(bytes).map_err(json_error)?;
        // An "authorized_user" file (gcloud's user credentials) or an
        // "external_account" one would sign nothing or the wrong thing.
        if let Some(kind) = file.kind.as_deref()
            && kind != "service_account"
        {
            return Err(format!(
                "\"type\" is {kind:?}, not \"service_account\": this is not a \
                 service account key"
            ));
        }
        let Some(pem) = file.private_key else {
            return Err("no \"private_key\": not a service account key file \
                        (create a JSON key for the service account in the Google \
                        Cloud console)"
                .into());
        };
        let client_email = match file.client_email {
            Some(email) if !email.is_empty() => email,
            _ => return Err("no \"client_email\" in the service account key".into()),
        };
        let key =
            RsaKey::from_pem(pem.expose()).map_err(|why| format!("\"private_key\": {why}"))?;
        Ok(ServiceAccount {
            client_email,
            private_key_id: file.private_key_id.filter(|id| !id.is_empty()),
            token_uri: file.token_uri.filter(|uri| !uri.is_empty()),
            key,
        })
    }

    /// The JSON key file at `path`; the error names the path.
    pub fn from_file(path: &Path) -> Result<ServiceAccount, String> {
        let json = read_secret_file(path)?;
        ServiceAccount::from_json(json.expose()).map_err(|why| format!("{}: {why}", path.display()))
    }
}

impl fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("client_email", &self.client_email)
            .field("private_key_id", &self.private_key_id)
            .field("token_uri", &self.token_uri)
            .field("key", &self.key)
            .finish()
    }
}

#[derive(Serialize)]
struct Header<'a> {
    alg: &'static str,
    typ: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    kid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    x5t: Option<&'a str>,
    #[serde(rename = "x5t#S256", skip_serializing_if = "Option::is_none")]
    x5t_s256: Option<&'a str>,
}

#[derive(Serialize)]
struct ServiceAccountClaims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    sub: &'a str,
    iat: u64,
    exp: u64,
}

#[derive(Serialize)]
struct ClientClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    jti: &'a str,
    nbf: u64,
    iat: u64,
    exp: u64,
}

/// RFC 7523 section 2.1 assertion for Google's JWT bearer grant: header
/// {"alg":"RS256","typ":"JWT","kid":private_key_id if any}; claims iss =
/// client_email, scope, aud = `audience` (the token URL), sub = `subject`
/// (the mailbox), iat = now, exp = now + 3600 (Google's maximum).
pub fn service_account_assertion(
    account: &ServiceAccount,
    scope: &str,
    subject: &str,
    audience: &str,
    now: u64,
) -> Result<Secret, String> {
    let header = Header {
        alg: "RS256",
        typ: "JWT",
        // Lets Google pick the right public key at once when the account
        // has several.
        kid: account.private_key_id.as_deref(),
        x5t: None,
        x5t_s256: None,
    };
    let claims = ServiceAccountClaims {
        iss: &account.client_email,
        scope,
        aud: audience,
        sub: subject,
        iat: now,
        exp: now.saturating_add(SERVICE_ACCOUNT_ASSERTION_LIFETIME.as_secs()),
    };
    signed(&header, &claims, &account.key)
}

/// RFC 7523 section 2.2 client assertion (Microsoft certificate
/// credentials): header {"alg":"RS256","typ":"JWT","x5t":..,"x5t#S256":..};
/// claims iss = sub = client_id, aud = `audience` (the token URL), a random
/// jti, nbf = iat = now, exp = now + `CLIENT_ASSERTION_LIFETIME`.
pub fn client_assertion(
    client_id: &str,
    audience: &str,
    key: &RsaKey,
    cert: &Certificate,
    now: u64,
) -> Result<Secret, String> {
    let jti = random_jti()?;
    let header = Header {
        alg: "RS256",
        typ: "JWT",
        kid: None,
        // Both: Microsoft names the certificate by `x5t#S256` now and by
        // `x5t` in older documentation and deployments.
        x5t: Some(&cert.x5t),
        x5t_s256: Some(&cert.x5t_s256),
    };
    let claims = ClientClaims {
        iss: client_id,
        sub: client_id,
        aud: audience,
        jti: &jti,
        nbf: now,
        iat: now,
        exp: now.saturating_add(CLIENT_ASSERTION_LIFETIME.as_secs()),
    };
    signed(&header, &claims, key)
}

/// A JWT's unique id, from 16 random bytes: formatted as a version 4 UUID,
/// because Microsoft documents `jti` as "a GUID".
fn random_jti() -> Result<String, String> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "no randomness available for the assertion's jti".to_string())?;
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    ))
}

/// The JWS compact form: base64url(header) "." base64url(claims) "."
/// base64url(RS256 signature over the first two parts), all without padding.
fn signed<H: Serialize, C: Serialize>(
    header: &H,
    claims: &C,
    key: &RsaKey,
) -> Result<Secret, String> {
    let header = serde_json::to_vec(header).map_err(|e| format!("JWT header: {e}"))?;
    let claims = serde_json::to_vec(claims).map_err(|e| format!("JWT claims: {e}"))?;
    let len = |n: usize| base64::encoded_len(n, false).unwrap_or(0);
    // Sized in advance, so that growing the buffer leaves no copy of the
    // finished assertion behind.
    let total = len(header.len()) + 1 + len(claims.len()) + 1 + len(key.bits() / 8);
    let mut jwt = String::with_capacity(total);
    URL_SAFE_NO_PAD.encode_string(&header, &mut jwt);
    jwt.push('.');
    URL_SAFE_NO_PAD.encode_string(&claims, &mut jwt);
    let signature = key.sign(jwt.as_bytes())?;
    jwt.push('.');
    URL_SAFE_NO_PAD.encode_string(&*signature, &mut jwt);
    Ok(Secret::new(jwt.into_bytes()))
}

/// A key file's whole content, in a `Secret` from the start.
fn read_secret_file(path: &Path) -> Result<Secret, String> {
    std::fs::read(path)
        .map(Secret::new)
        .map_err(|e| format!("{}: cannot read the key file: {e}", path.display()))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The PEM parser's error in words that quote nothing of the input (its
/// own `Display` may show a line, or a byte of a key's base64).
fn pem_error(e: pem::Error) -> String {
    match e {
        pem::Error::MissingSectionEnd { .. } => "PEM block without its END line".into(),
        pem::Error::IllegalSectionStart { .. } => "malformed PEM BEGIN line".into(),
        pem::Error::Base64Decode(_) => "PEM block is not valid base64".into(),
        pem::Error::SectionTooLarge => "PEM block too large".into(),
        _ => "not readable as PEM".into(),
    }
}

/// `ring`'s reason (a fixed word such as "TooSmall") for an operator.
fn key_rejected(e: ring::error::KeyRejected, format: &str) -> String {
    match e.to_string().as_str() {
        "WrongAlgorithm" => "not an RSA key: RS256 needs an RSA key".into(),
        "TooSmall" => "key too small: RS256 needs an RSA key of at least 2048 bits".into(),
        "TooLarge" => "key too large: at most 4096 bits are supported".into(),
        "InvalidEncoding" => format!("not a valid {format} RSA private key"),
        "VersionNotSupported" => {
            format!("unsupported {format} key version (multi-prime RSA keys are not supported)")
        }
        other => format!("RSA key rejected: {other}"),
    }
}

/// serde_json's error without its message, which may quote a value of a
/// file that holds a private key.
fn json_error(e: serde_json::Error) -> String {
    use serde_json::error::Category;
    let at = format!("line {} column {}", e.line(), e.column());
    match e.classify() {
        Category::Eof => "the JSON ends too early: the file is cut short".into(),
        Category::Syntax => format!("not valid JSON ({at})"),
        Category::Data => {
            format!("a field has the wrong type, or the JSON is not an object ({at})")
        }
        Category::Io => "cannot read the JSON".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};
    use serde_json::{Value, json};

    // Made once with openssl; the commands are in testdata/README.
    const KEY_PKCS8: &[u8] = include_bytes!("testdata/test-key.pem");
    const KEY_PKCS1: &[u8] = include_bytes!("testdata/test-key-pkcs1.pem");
    const CERT: &[u8] = include_bytes!("testdata/test-cert.pem");
    const KEY_1024: &[u8] = include_bytes!("testdata/test-key-1024.pem");
    const EC_KEY_PKCS8: &[u8] = include_bytes!("testdata/test-ec-key.pem");
    const EC_KEY_SEC1: &[u8] = include_bytes!("testdata/test-ec-key-sec1.pem");
    const SERVICE_ACCOUNT: &[u8] = include_bytes!("testdata/test-service-account.json");

    // openssl x509 -in test-cert.pem -outform DER | openssl dgst -sha1 -binary
    //   | base64 | tr '+/' '-_' | tr -d '='   (and -sha256)
    const CERT_X5T: &str = "NEJhHxq3-b7r_-dfCeQ22roKwD4";
    const CERT_X5T_S256: &str = "S1kIa-U8JswbTADAFVE_bwe9827s8olAV4gt-zoFGoc";
    // openssl x509 -in test-cert.pem -noout -enddate: Dec  3 20:15:44 2036 GMT
    // date -u -d "Dec  3 20:15:44 2036 GMT" +%s
    const CERT_NOT_AFTER: u64 = 2111948144;

    const NOW: u64 = 1_800_000_000;
    const GOOGLE_TOKEN_URL: &str = "https://oauth2.googleapis.com/token";
    const MS_TOKEN_URL: &str = "https://login.microsoftonline.com/tenant/oauth2/v2.0/token";

    /// The three parts of a compact JWT: header and claims as JSON, the
    /// signing input, and the signature.
    fn split(jwt: &Secret) -> (Value, Value, Vec<u8>, Vec<u8>) {
        let text = std::str::from_utf8(jwt.expose()).expect("ASCII");
        let parts: Vec<&str> = text.split('.').collect();
        assert_eq!(parts.len(), 3, "three parts");
        let decode = |p: &str| {
            URL_SAFE_NO_PAD
                .decode(p)
                .expect("base64url without padding")
        };
        let json = |p: &str| serde_json::from_slice::<Value>(&decode(p)).expect("JSON");
        let input = format!("{}.{}", parts[0], parts[1]).into_bytes();
        (json(parts[0]), json(parts[1]), input, decode(parts[2]))
    }

    /// The public key of the test certificate, as openssl wrote it: checks
    /// the signature against the key openssl derived, not ring's own idea.
    fn verify_with_certificate_key(input: &[u8], signature: &[u8]) {
        let der = rustls::pki_types::CertificateDer::from_pem_slice(CERT).expect("PEM");
        let cert = x509_cert::Certificate::from_der(&der).expect("X.509");
        let spki = &cert
            .tbs_certificate()
            .subject_public_key_info()
            .subject_public_key;
        UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, spki.raw_bytes())
            .verify(input, signature)
            .expect("signature verifies with the certificate's public key");
    }

    #[test]
    fn service_account_assertion_is_signed_by_the_key_and_carries_exactly_the_grant_claims() {
        let account = ServiceAccount::from_json(SERVICE_ACCOUNT).expect("key file");
        let jwt = service_account_assertion(
            &account,
            "https://mail.google.com/",
            "scans@example.org",
            GOOGLE_TOKEN_URL,
            NOW,
        )
        .expect("signed");
        let (header, claims, input, signature) = split(&jwt);
        assert_eq!(
            header,
            json!({"alg": "RS256", "typ": "JWT",
                   "kid": "0123456789abcdef0123456789abcdef01234567"})
        );
        assert_eq!(
            claims,
            json!({
                "iss": "pop3server-test@pop3server-test.iam.gserviceaccount.com",
                "scope": "https://mail.google.com/",
                "aud": GOOGLE_TOKEN_URL,
                "sub": "scans@example.org",
                "iat": NOW,
                "exp": NOW + 3600,
            })
        );
        assert_eq!(signature.len(), 256, "2048-bit signature");
        verify_with_certificate_key(&input, &signature);
        let public = account.key.pair.public().as_ref().to_vec();
        UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, public)
            .verify(&input, &signature)
            .expect("verifies with the key pair's public key");
    }

    #[test]
    fn service_account_file_yields_email_key_id_and_token_uri() {
        let account = ServiceAccount::from_json(SERVICE_ACCOUNT).expect("key file");
        assert_eq!(
            account.client_email,
            "pop3server-test@pop3server-test.iam.gserviceaccount.com"
        );
        assert_eq!(
            account.private_key_id.as_deref(),
            Some("0123456789abcdef0123456789abcdef01234567")
        );
        assert_eq!(account.token_uri.as_deref(), Some(GOOGLE_TOKEN_URL));
    }

    #[test]
    fn service_account_without_key_id_sends_no_kid() {
        let mut account = ServiceAccount::from_json(SERVICE_ACCOUNT).expect("key file");
        account.private_key_id = None;
        let jwt = service_account_assertion(&account, "s", "m@example.org", GOOGLE_TOKEN_URL, NOW)
            .expect("signed");
        assert_eq!(split(&jwt).0, json!({"alg": "RS256", "typ": "JWT"}));
    }

    #[test]
    fn client_assertion_names_the_certificate_and_is_signed_by_its_key() {
        let key = RsaKey::from_pem(KEY_PKCS8).expect("key");
        let cert = Certificate::from_pem(CERT).expect("certificate");
        let jwt = client_assertion(
            "00000000-1111-2222-3333-444444444444",
            MS_TOKEN_URL,
            &key,
            &cert,
            NOW,
        )
        .expect("signed");
        let (header, claims, input, signature) = split(&jwt);
        assert_eq!(
            header,
            json!({"alg": "RS256", "typ": "JWT", "x5t": CERT_X5T, "x5t#S256": CERT_X5T_S256})
        );
        let jti = claims["jti"].as_str().expect("jti is a string").to_string();
        assert_eq!(
            claims,
            json!({
                "iss": "00000000-1111-2222-3333-444444444444",
                "sub": "00000000-1111-2222-3333-444444444444",
                "aud": MS_TOKEN_URL,
                "jti": jti,
                "nbf": NOW,
                "iat": NOW,
                "exp": NOW + 300,
            })
        );
        verify_with_certificate_key(&input, &signature);
    }

    #[test]
    fn client_assertion_jti_is_a_random_guid() {
        let key = RsaKey::from_pem(KEY_PKCS8).expect("key");
        let cert = Certificate::from_pem(CERT).expect("certificate");
        let jti = || {
            let jwt = client_assertion("client", MS_TOKEN_URL, &key, &cert, NOW).expect("signed");
            split(&jwt).1["jti"].as_str().expect("jti").to_string()
        };
        let (a, b) = (jti(), jti());
        assert_ne!(a, b, "two assertions, two jti");
        for id in [&a, &b] {
            let groups: Vec<usize> = id.split('-').map(str::len).collect();
            assert_eq!(groups, [8, 4, 4, 4, 12], "{id}");
            assert!(
                id.bytes().all(|c| c == b'-' || c.is_ascii_hexdigit()),
                "{id}"
            );
            assert_eq!(&id[14..15], "4", "version 4: {id}");
        }
    }

    #[test]
    fn certificate_thumbprints_and_expiry_match_openssl() {
        let cert = Certificate::from_pem(CERT).expect("certificate");
        assert_eq!(
            cert,
            Certificate {
                x5t: CERT_X5T.into(),
                x5t_s256: CERT_X5T_S256.into(),
                not_after: CERT_NOT_AFTER,
            }
        );
    }

    #[test]
    fn pkcs1_and_pkcs8_forms_of_one_key_load_and_sign_alike() {
        let pkcs8 = RsaKey::from_pem(KEY_PKCS8).expect("PKCS#8");
        let pkcs1 = RsaKey::from_pem(KEY_PKCS1).expect("PKCS#1");
        // RSASSA-PKCS1-v1_5 is deterministic: the same key gives the same bytes.
        assert_eq!(
            &*pkcs8.sign(b"message").expect("signed"),
            &*pkcs1.sign(b"message").expect("signed")
        );
    }

    #[test]
    fn garbage_is_refused_as_no_private_key() {
        let e = RsaKey::from_pem(b"hunter2\nnot a key at all\n").expect_err("garbage");
        assert!(e.starts_with("no private key in PEM"), "{e}");
        let e = RsaKey::from_pem(b"").expect_err("empty");
        assert!(e.starts_with("no private key in PEM"), "{e}");
    }

    #[test]
    fn broken_base64_is_refused_without_quoting_it() {
        let pem = b"-----BEGIN PRIVATE KEY-----\nMIIEv*SECRETBYTES\n-----END PRIVATE KEY-----\n";
        let e = RsaKey::from_pem(pem).expect_err("bad base64");
        assert_eq!(e, "PEM block is not valid base64");
        let pem = b"-----BEGIN PRIVATE KEY-----\nMIIEvSECRETBYTES\n";
        let e = RsaKey::from_pem(pem).expect_err("cut short");
        assert_eq!(e, "PEM block without its END line");
        let pem = b"-----BEGIN PRIVATE KEY-----\nMIIEvSECRETBYTESAA\n-----END PRIVATE KEY-----\n";
        let e = RsaKey::from_pem(pem).expect_err("not DER");
        assert_eq!(e, "not a valid PKCS#8 RSA private key");
    }

    #[test]
    fn ec_keys_are_refused_as_not_rsa() {
        let e = RsaKey::from_pem(EC_KEY_PKCS8).expect_err("EC in PKCS#8");
        assert!(e.starts_with("not an RSA key"), "{e}");
        let e = RsaKey::from_pem(EC_KEY_SEC1).expect_err("EC in SEC1");
        assert!(e.starts_with("not an RSA key"), "{e}");
    }

    #[test]
    fn rsa_key_under_2048_bits_is_refused_as_too_small() {
        let e = RsaKey::from_pem(KEY_1024).expect_err("1024 bits");
        assert!(e.starts_with("key too small"), "{e}");
    }

    #[test]
    fn encrypted_key_is_refused_with_what_to_do() {
        let pem =
            b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIF\n-----END ENCRYPTED PRIVATE KEY-----\n";
        let e = RsaKey::from_pem(pem).expect_err("encrypted");
        assert!(e.starts_with("the private key is encrypted"), "{e}");
        assert!(e.contains("openssl pkey"), "{e}");
        let legacy = b"-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n\
                       DEK-Info: AES-256-CBC,00\n\nMIIE\n-----END RSA PRIVATE KEY-----\n";
        let e = RsaKey::from_pem(legacy).expect_err("encrypted, traditional form");
        assert!(e.starts_with("the private key is encrypted"), "{e}");
    }

    #[test]
    fn swapped_certificate_and_key_files_are_named_as_such() {
        let e = RsaKey::from_pem(CERT).expect_err("a certificate is no key");
        assert!(e.contains("swapped"), "{e}");
        let e = Certificate::from_pem(KEY_PKCS8).expect_err("a key is no certificate");
        assert!(e.contains("swapped"), "{e}");
        assert!(!e.contains("MII"), "never quotes the key: {e}");
        let e = Certificate::from_pem(b"junk").expect_err("junk");
        assert!(e.starts_with("no certificate in PEM"), "{e}");
    }

    #[test]
    fn service_account_json_without_private_key_is_refused() {
        let e = ServiceAccount::from_json(br#"{"type": "service_account", "client_email": "a@b"}"#)
            .expect_err("no key");
        assert!(e.starts_with("no \"private_key\""), "{e}");
    }

    #[test]
    fn key_file_of_another_type_is_refused() {
        let json = br#"{"type": "authorized_user", "client_id": "x", "refresh_token": "r"}"#;
        let e = ServiceAccount::from_json(json).expect_err("user credentials");
        assert!(
            e.contains("\"authorized_user\", not \"service_account\""),
            "{e}"
        );
    }

    #[test]
    fn key_file_without_client_email_is_refused() {
        let pem = std::str::from_utf8(KEY_PKCS8).expect("ASCII");
        let json = serde_json::to_vec(&json!({"private_key": pem})).expect("JSON");
        let e = ServiceAccount::from_json(&json).expect_err("no email");
        assert!(e.contains("client_email"), "{e}");
    }

    #[test]
    fn key_file_errors_never_quote_the_key() {
        // A syntax error just after the key, and a key that is not one.
        let pem = std::str::from_utf8(KEY_PKCS8).expect("ASCII");
        let mut json = serde_json::to_vec(&json!({"private_key": pem})).expect("JSON");
        json.insert(json.len() - 1, b'!');
        let e = ServiceAccount::from_json(&json).expect_err("syntax");
        assert!(e.starts_with("not valid JSON (line 1 column"), "{e}");
        let json = br#"{"client_email": "a@b", "private_key": "-----BEGIN PRIVATE KEY-----\nMIIE*\n-----END PRIVATE KEY-----\n"}"#;
        let e = ServiceAccount::from_json(json).expect_err("bad key");
        assert_eq!(e, "\"private_key\": PEM block is not valid base64");
        let e = ServiceAccount::from_json(br#"{"private_key": 5}"#).expect_err("type");
        assert!(e.starts_with("a field has the wrong type"), "{e}");
        let e = ServiceAccount::from_json(b"{\"private_key\": \"-----BEGIN").expect_err("eof");
        assert!(e.contains("cut short"), "{e}");
    }

    #[test]
    fn file_errors_name_the_path() {
        let missing = Path::new("/nonexistent/pop3server-test-key.pem");
        let e = RsaKey::from_file(missing).expect_err("missing");
        assert!(
            e.starts_with("/nonexistent/pop3server-test-key.pem: cannot read"),
            "{e}"
        );
        let e = Certificate::from_file(missing).expect_err("missing");
        assert!(
            e.starts_with("/nonexistent/pop3server-test-key.pem: cannot read"),
            "{e}"
        );
        let e = ServiceAccount::from_file(missing).expect_err("missing");
        assert!(
            e.starts_with("/nonexistent/pop3server-test-key.pem: cannot read"),
            "{e}"
        );
        let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/devices/oauth/testdata");
        let e = RsaKey::from_file(&here.join("test-cert.pem")).expect_err("a certificate");
        assert!(
            e.starts_with(&format!(
                "{}: no private key",
                here.join("test-cert.pem").display()
            )),
            "{e}"
        );
    }

    #[test]
    fn files_load_as_their_contents_do() {
        let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/devices/oauth/testdata");
        RsaKey::from_file(&here.join("test-key.pem")).expect("key file");
        let cert = Certificate::from_file(&here.join("test-cert.pem")).expect("certificate file");
        assert_eq!(cert.not_after, CERT_NOT_AFTER);
        let account =
            ServiceAccount::from_file(&here.join("test-service-account.json")).expect("key file");
        assert_eq!(account.token_uri.as_deref(), Some(GOOGLE_TOKEN_URL));
    }

    #[test]
    fn debug_shows_no_key_material() {
        let account = ServiceAccount::from_json(SERVICE_ACCOUNT).expect("key file");
        let shown = format!("{account:?}");
        assert!(shown.contains("RsaKey(2048 bits, <redacted>)"), "{shown}");
        assert!(!shown.contains("MII"), "{shown}");
    }
}
