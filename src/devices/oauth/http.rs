//! Requests to a token endpoint: a form POST over HTTPS (ureq on rustls,
//! the ring provider and the same trust store as the IMAP side), a bounded
//! answer, and the answer sorted into a token or a typed error. Neither the
//! client secret nor a token ever reaches a log line or an error text.

use std::fs;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;
use ureq::tls::{Certificate, RootCerts, TlsConfig};
use ureq::{Agent, Proxy};

use super::TokenError;
use super::jwt;
use crate::devices::oauth::settings::{ClientProof, OAuthGrant, OAuthSource};
use crate::limits::{MAX_TOKEN_RESPONSE, TOKEN_HTTP_TIMEOUT};
use crate::secret::Secret;

/// A successful token response (RFC 6749 section 5.1).
#[derive(Debug, Deserialize)]
pub struct TokenAnswer {
    pub access_token: Secret,
    /// Seconds; absent means the provider did not say (treated as short).
    pub expires_in: Option<u64>,
    /// A new refresh token (rotation) or, for the first grant, the first.
    pub refresh_token: Option<Secret>,
}

/// An error response (RFC 6749 section 5.2, RFC 8628 section 3.5).
#[derive(Debug, Deserialize)]
pub struct ErrorAnswer {
    pub error: String,
    pub error_description: Option<String>,
}

impl ErrorAnswer {
    pub fn describe(&self) -> String {
        match &self.error_description {
            Some(d) => format!("{}: {}", self.error, printable(d)),
            None => self.error.clone(),
        }
    }
}

/// What an endpoint answered.
pub enum Answer<T> {
    Ok(T),
    Error(ErrorAnswer),
}

/// What proves the client (or the service account) at the token endpoint,
/// read from its files.
pub enum ClientKey {
    /// A public client: its id alone.
    None,
    Secret(Secret),
    /// A certificate credential: the key signs a client assertion naming
    /// the certificate.
    Certificate {
        key: jwt::RsaKey,
        cert: jwt::Certificate,
    },
    ServiceAccount(jwt::ServiceAccount),
}

/// The files that prove the client, read but not parsed: what a session
/// that leaves root reads ahead (see `preload`). Parsing an RSA key is left
/// to the token request that needs it, not done on every connection.
pub enum KeyFiles {
    /// A client secret, or none (a public client): nothing to parse.
    Secret(Option<Secret>),
    Certificate {
        key: Secret,
        key_path: PathBuf,
        cert: Vec<u8>,
        cert_path: PathBuf,
    },
    ServiceAccount {
        json: Secret,
        path: PathBuf,
    },
}

/// Reads the files `source` authenticates with. These files may be root's
/// only, and none of their content reaches an error text.
pub fn read_key_files(source: &OAuthSource) -> Result<KeyFiles, TokenError> {
    let setup = |why: String| TokenError::Setup(format!("[oauth.{}] {why}", source.name));
    // The texts of `jwt`'s `from_file`, as `client_key` reports them.
    let read = |what: &str, path: &PathBuf, noun: &str| {
        fs::read(path).map_err(|e| {
            setup(format!(
                "{what} {}: cannot read {noun}: {e}",
                path.display()
            ))
        })
    };
    match &source.grant {
        OAuthGrant::ClientCredentials(ClientProof::Certificate { cert, key }) => {
            Ok(KeyFiles::Certificate {
                key: Secret::new(read("client_key_file", key, "the key file")?),
                key_path: key.clone(),
                cert: read("client_certificate_file", cert, "the certificate")?,
                cert_path: cert.clone(),
            })
        }
        OAuthGrant::JwtBearer {
            service_account_file,
        } => Ok(KeyFiles::ServiceAccount {
            json: Secret::new(read(
                "service_account_file",
                service_account_file,
                "the key file",
            )?),
            path: service_account_file.clone(),
        }),
        _ => client_secret(source).map(KeyFiles::Secret),
    }
}

impl KeyFiles {
    /// The credentials in the files, parsed now.
    pub fn parse(&self, source: &OAuthSource) -> Result<ClientKey, TokenError> {
        let setup = |what: &str, path: &PathBuf, why: String| {
            TokenError::Setup(format!(
                "[oauth.{}] {what} {}: {why}",
                source.name,
                path.display()
            ))
        };
        Ok(match self {
            KeyFiles::Secret(None) => ClientKey::None,
            KeyFiles::Secret(Some(secret)) => {
                ClientKey::Secret(Secret::new(secret.expose().to_vec()))
            }
            KeyFiles::Certificate {
                key,
                key_path,
                cert,
                cert_path,
            } => ClientKey::Certificate {
                key: jwt::RsaKey::from_pem(key.expose())
                    .map_err(|why| setup("client_key_file", key_path, why))?,
                cert: jwt::Certificate::from_pem(cert)
                    .map_err(|why| setup("client_certificate_file", cert_path, why))?,
            },
            KeyFiles::ServiceAccount { json, path } => ClientKey::ServiceAccount(
                jwt::ServiceAccount::from_json(json.expose())
                    .map_err(|why| setup("service_account_file", path, why))?,
            ),
        })
    }
}

/// Reads and parses what `source` authenticates with. These files may be
/// root's only (see `preload`), and none of their content reaches an error
/// text.
pub fn client_key(source: &OAuthSource) -> Result<ClientKey, TokenError> {
    let setup = |why: String| TokenError::Setup(format!("[oauth.{}] {why}", source.name));
    match &source.grant {
        OAuthGrant::ClientCredentials(ClientProof::Certificate { cert, key }) => {
            Ok(ClientKey::Certificate {
                key: jwt::RsaKey::from_file(key)
                    .map_err(|e| setup(format!("client_key_file {e}")))?,
                cert: jwt::Certificate::from_file(cert)
                    .map_err(|e| setup(format!("client_certificate_file {e}")))?,
            })
        }
        OAuthGrant::JwtBearer {
            service_account_file,
        } => jwt::ServiceAccount::from_file(service_account_file)
            .map(ClientKey::ServiceAccount)
            .map_err(|e| setup(format!("service_account_file {e}"))),
        _ => Ok(match client_secret(source)? {
            Some(secret) => ClientKey::Secret(secret),
            None => ClientKey::None,
        }),
    }
}

/// The client secret of `source`, from its file (first line), if it has
/// one.
pub fn client_secret(source: &OAuthSource) -> Result<Option<Secret>, TokenError> {
    let path = match &source.grant {
        OAuthGrant::ClientCredentials(ClientProof::Secret(path)) => Some(path),
        _ => source.client_secret_file.as_ref(),
    };
    let Some(path) = path else {
        return Ok(None);
    };
    let secret = Secret::first_line_of(path).map_err(|e| {
        TokenError::Setup(format!(
            "[oauth.{}] client_secret_file {}: {e}",
            source.name,
            path.display()
        ))
    })?;
    Ok(Some(secret))
}

fn agent(source: &OAuthSource) -> Result<Agent, TokenError> {
    let setup = |why: String| TokenError::Setup(format!("[oauth.{}] {why}", source.name));
    let roots: Vec<Certificate<'static>> = match &source.ca_file {
        Some(path) => {
            let pem =
                fs::read(path).map_err(|e| setup(format!("ca_file {}: {e}", path.display())))?;
            ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect()
        }
        None => rustls_native_certs::load_native_certs()
            .certs
            .iter()
            .map(|der| Certificate::from_der(der).to_owned())
            .collect(),
    };
    if roots.is_empty() {
        return Err(setup(
            "no CA certificates to check the token endpoint with".into(),
        ));
    }
    let tls = TlsConfig::builder()
        .root_certs(RootCerts::Specific(Arc::new(roots)))
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .build();
    // Only the configured proxy: a service must not pick one up from
    // whatever environment it was started in.
    let proxy = match &source.proxy {
        Some(p) => Some(Proxy::new(p).map_err(|e| setup(format!("proxy {p:?}: {e}")))?),
        None => None,
    };
    Ok(Agent::config_builder()
        .timeout_global(Some(TOKEN_HTTP_TIMEOUT))
        .http_status_as_error(false)
        .tls_config(tls)
        .proxy(proxy)
        .build()
        .into())
}

/// POSTs the form to `url` and sorts the answer. Transport failures, 5xx
/// and unparseable answers are `Unavailable`.
pub fn post<T: for<'de> Deserialize<'de>>(
    source: &OAuthSource,
    url: &str,
    form: &[(&str, &[u8])],
) -> Result<Answer<T>, TokenError> {
    let agent = agent(source)?;
    // Form values are text. Secrets and tokens are ASCII, so they are
    // borrowed, not copied into buffers nobody wipes; anything else is sent
    // as lossily as any HTTP client would.
    let pairs: Vec<(&str, std::borrow::Cow<str>)> = form
        .iter()
        .map(|(k, v)| (*k, String::from_utf8_lossy(v)))
        .collect();
    let unavailable = |why: String| TokenError::Unavailable(format!("{url}: {why}"));
    let response = agent
        .post(url)
        .header("Accept", "application/json")
        .send_form(pairs.iter().map(|(k, v)| (*k, v.as_ref())))
        .map_err(|e| unavailable(e.to_string()))?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .with_config()
        .limit(MAX_TOKEN_RESPONSE)
        .read_to_string()
        .map_err(|e| unavailable(format!("reading the answer: {e}")))?;
    let body = Secret::new(body.into_bytes());
    if status >= 500 {
        return Err(unavailable(format!("HTTP {status}")));
    }
    if (200..300).contains(&status) {
        return serde_json::from_slice(body.expose())
            .map(Answer::Ok)
            .map_err(|e| unavailable(format!("HTTP {status} without a token in JSON ({e})")));
    }
    match serde_json::from_slice::<ErrorAnswer>(body.expose()) {
        Ok(error) => Ok(Answer::Error(error)),
        Err(_) => Err(unavailable(format!(
            "HTTP {status} without an OAuth2 error"
        ))),
    }
}

/// Keeps a provider's text fit for one log line.
fn printable(text: &str) -> String {
    text.chars()
        .take(200)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}
