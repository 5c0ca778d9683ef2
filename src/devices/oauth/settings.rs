//! The `[oauth.NAME]` token sources: the table as the file writes it and
//! the validated source. Only the file has them (no flags): a source is a
//! table of several keys, which a command line would garble.

use std::path::PathBuf;

use serde::Deserialize;

use crate::sasl::TokenMechanism;

/// How a token source gets its tokens (RFC 6749).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OAuthGrant {
    /// App-only access (Microsoft 365: scope
    /// `https://outlook.office365.com/.default`): no human involved.
    ClientCredentials,
    /// Delegated access: a refresh token from a one-time consent
    /// (`--oauth-consent NAME`), rotated as the provider sends new ones.
    RefreshToken,
}

/// One `[oauth.NAME]` table, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthSource {
    pub name: String,
    pub grant: OAuthGrant,
    pub token_url: String,
    /// For `--oauth-consent` (refresh-token sources).
    pub device_authorization_url: Option<String>,
    pub client_id: String,
    /// File holding the client secret (first line); none for public clients.
    pub client_secret_file: Option<PathBuf>,
    pub scope: String,
    /// The SASL mechanism that carries the token to IMAP.
    pub mechanism: TokenMechanism,
    /// CA certificates for the token endpoint instead of the system store.
    pub ca_file: Option<PathBuf>,
    /// HTTP(S) proxy for the token endpoint, e.g. `http://proxy:3128`.
    pub proxy: Option<String>,
}

impl OAuthSource {
    /// Whether `--oauth-consent NAME` can run for this source.
    pub fn has_device_consent(&self) -> bool {
        self.grant == OAuthGrant::RefreshToken && self.device_authorization_url.is_some()
    }
}

/// One `[oauth.NAME]` table as the file writes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileOAuthSource {
    grant: String,
    token_url: String,
    device_authorization_url: Option<String>,
    client_id: String,
    client_secret_file: Option<PathBuf>,
    scope: String,
    mechanism: Option<String>,
    ca_file: Option<PathBuf>,
    proxy: Option<String>,
}

impl FileOAuthSource {
    /// Checks the table; the error says what is wrong with it.
    pub fn validate(self, name: &str) -> Result<OAuthSource, String> {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("token source names are letters, digits, - and _ (they name files)".into());
        }
        let grant = match self.grant.as_str() {
            "client_credentials" => OAuthGrant::ClientCredentials,
            "refresh_token" => OAuthGrant::RefreshToken,
            other => {
                return Err(format!(
                    "grant {other:?} is not client_credentials or refresh_token"
                ));
            }
        };
        let mechanism = match self.mechanism.as_deref().unwrap_or("xoauth2") {
            "xoauth2" => TokenMechanism::XOAuth2,
            "oauthbearer" => TokenMechanism::OAuthBearer,
            other => return Err(format!("mechanism {other:?} is not xoauth2 or oauthbearer")),
        };
        for url in std::iter::once(&self.token_url).chain(&self.device_authorization_url) {
            if !url.starts_with("https://") {
                return Err(format!(
                    "{url:?}: token endpoints are reached over https:// only (the client secret travels there)"
                ));
            }
        }
        if grant == OAuthGrant::ClientCredentials && self.client_secret_file.is_none() {
            return Err("grant client_credentials needs client_secret_file".into());
        }
        if self.client_id.is_empty() || self.scope.is_empty() {
            return Err("client_id and scope must not be empty".into());
        }
        Ok(OAuthSource {
            name: name.to_string(),
            grant,
            token_url: self.token_url,
            device_authorization_url: self.device_authorization_url,
            client_id: self.client_id,
            client_secret_file: self.client_secret_file,
            scope: self.scope,
            mechanism,
            ca_file: self.ca_file,
            proxy: self.proxy,
        })
    }
}
