//! The `[oauth.NAME]` token sources: the table as the file writes it and
//! the validated source. Only the file has them (no flags): a source is a
//! table of several keys, which a command line would garble.

use std::path::PathBuf;

use serde::Deserialize;

use crate::sasl::TokenMechanism;

/// How a token source gets its tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OAuthGrant {
    /// App-only access (RFC 6749 section 4.4; Microsoft 365: scope
    /// `https://outlook.office365.com/.default`): no human involved. The
    /// client proves itself with a secret or a certificate.
    ClientCredentials(ClientProof),
    /// Delegated access: a refresh token from a one-time device-code
    /// consent (`--oauth-consent NAME`, RFC 8628), rotated as the provider
    /// sends new ones.
    RefreshToken,
    /// Delegated access whose one-time consent is a browser sign-in
    /// (RFC 6749 section 4.1 with PKCE, RFC 7636, and a loopback redirect,
    /// RFC 8252): what Google allows for the mail scope.
    AuthorizationCode {
        authorization_url: String,
        /// `None`: a free port chosen at run time.
        redirect_port: Option<u16>,
    },
    /// A service account with domain-wide delegation (RFC 7523 section
    /// 2.1; Google's JSON key): one token per mailbox, no consent.
    JwtBearer { service_account_file: PathBuf },
}

/// How a `client_credentials` client authenticates at the token endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientProof {
    /// `client_secret_file` (first line).
    Secret(PathBuf),
    /// A client assertion signed with the key (RFC 7523 section 2.2),
    /// naming the certificate registered with the provider.
    Certificate { cert: PathBuf, key: PathBuf },
}

/// One `[oauth.NAME]` table, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthSource {
    pub name: String,
    pub grant: OAuthGrant,
    /// For a service account, from its key file unless set.
    pub token_url: Option<String>,
    /// For `--oauth-consent` of a `refresh_token` source.
    pub device_authorization_url: Option<String>,
    /// Not needed for a service account (its key file names it).
    pub client_id: String,
    /// File holding the client secret (first line); none for public
    /// clients. For `client_credentials` it is in the `ClientProof`.
    pub client_secret_file: Option<PathBuf>,
    pub scope: String,
    /// The SASL mechanism that carries the token to IMAP.
    pub mechanism: TokenMechanism,
    /// CA certificates for the token endpoint instead of the system store.
    pub ca_file: Option<PathBuf>,
    /// HTTP(S) proxy for the token endpoint, e.g. `http://proxy:3128`.
    pub proxy: Option<String>,
    /// What `--oauth-status` holds the refresh token to: days unused, and
    /// days since the consent, after which the provider drops it.
    pub refresh_token_max_idle_days: Option<u64>,
    pub refresh_token_max_age_days: Option<u64>,
    /// When the client secret expires (`YYYY-MM-DD`, as the provider's
    /// portal shows it), for `--oauth-status`.
    pub client_secret_expires: Option<String>,
}

impl OAuthSource {
    /// Whether `--oauth-consent NAME` can run for this source.
    pub fn has_consent(&self) -> bool {
        match &self.grant {
            OAuthGrant::RefreshToken => self.device_authorization_url.is_some(),
            OAuthGrant::AuthorizationCode { .. } => true,
            OAuthGrant::ClientCredentials(_) | OAuthGrant::JwtBearer { .. } => false,
        }
    }

    /// Whether tokens come from a refresh token a consent stored.
    pub fn is_delegated(&self) -> bool {
        matches!(
            self.grant,
            OAuthGrant::RefreshToken | OAuthGrant::AuthorizationCode { .. }
        )
    }

    /// The grant's name as the file writes it.
    pub fn grant_name(&self) -> &'static str {
        match self.grant {
            OAuthGrant::ClientCredentials(_) => "client_credentials",
            OAuthGrant::RefreshToken => "refresh_token",
            OAuthGrant::AuthorizationCode { .. } => "authorization_code",
            OAuthGrant::JwtBearer { .. } => "jwt_bearer",
        }
    }
}

/// One `[oauth.NAME]` table as the file writes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileOAuthSource {
    grant: String,
    token_url: Option<String>,
    device_authorization_url: Option<String>,
    authorization_url: Option<String>,
    redirect_port: Option<u16>,
    client_id: Option<String>,
    client_secret_file: Option<PathBuf>,
    client_certificate_file: Option<PathBuf>,
    client_key_file: Option<PathBuf>,
    service_account_file: Option<PathBuf>,
    scope: String,
    mechanism: Option<String>,
    ca_file: Option<PathBuf>,
    proxy: Option<String>,
    refresh_token_max_idle_days: Option<u64>,
    refresh_token_max_age_days: Option<u64>,
    client_secret_expires: Option<String>,
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
        let grant = self.grant()?;
        let mechanism = match self.mechanism.as_deref().unwrap_or("xoauth2") {
            "xoauth2" => TokenMechanism::XOAuth2,
            "oauthbearer" => TokenMechanism::OAuthBearer,
            other => return Err(format!("mechanism {other:?} is not xoauth2 or oauthbearer")),
        };
        let urls = [
            &self.token_url,
            &self.device_authorization_url,
            &self.authorization_url,
        ];
        for url in urls.into_iter().flatten() {
            if !url.starts_with("https://") {
                return Err(format!(
                    "{url:?}: token endpoints are reached over https:// only (the client secret travels there)"
                ));
            }
        }
        let service_account = matches!(grant, OAuthGrant::JwtBearer { .. });
        if self.token_url.is_none() && !service_account {
            return Err(format!("grant {} needs token_url", self.grant));
        }
        let client_id = self.client_id.clone().unwrap_or_default();
        if (client_id.is_empty() && !service_account) || self.scope.is_empty() {
            return Err("client_id and scope must not be empty".into());
        }
        if let Some(date) = &self.client_secret_expires {
            parse_date(date).ok_or_else(|| {
                format!("client_secret_expires {date:?} is not a date YYYY-MM-DD")
            })?;
        }
        Ok(OAuthSource {
            name: name.to_string(),
            client_secret_file: match &grant {
                OAuthGrant::ClientCredentials(_) => None,
                _ => self.client_secret_file,
            },
            grant,
            token_url: self.token_url,
            device_authorization_url: self.device_authorization_url,
            client_id,
            scope: self.scope,
            mechanism,
            ca_file: self.ca_file,
            proxy: self.proxy,
            refresh_token_max_idle_days: self.refresh_token_max_idle_days,
            refresh_token_max_age_days: self.refresh_token_max_age_days,
            client_secret_expires: self.client_secret_expires,
        })
    }

    /// The grant and the keys it needs, refusing keys of another grant.
    fn grant(&self) -> Result<OAuthGrant, String> {
        let only = |set: bool, key: &str, grants: &str| {
            if set {
                Err(format!(
                    "{key} belongs to grant {grants}, not {}",
                    self.grant
                ))
            } else {
                Ok(())
            }
        };
        let certificate = self.client_certificate_file.is_some() || self.client_key_file.is_some();
        if self.grant != "client_credentials" {
            only(
                certificate,
                "client_certificate_file/client_key_file",
                "client_credentials",
            )?;
        }
        if self.grant != "authorization_code" {
            only(
                self.authorization_url.is_some(),
                "authorization_url",
                "authorization_code",
            )?;
            only(
                self.redirect_port.is_some(),
                "redirect_port",
                "authorization_code",
            )?;
        }
        if self.grant != "jwt_bearer" {
            only(
                self.service_account_file.is_some(),
                "service_account_file",
                "jwt_bearer",
            )?;
        }
        // device_authorization_url was always accepted (and unused) beside
        // the other grants: refusing it now would break working files.
        match self.grant.as_str() {
            "client_credentials" => self.client_proof().map(OAuthGrant::ClientCredentials),
            "refresh_token" => Ok(OAuthGrant::RefreshToken),
            "authorization_code" => Ok(OAuthGrant::AuthorizationCode {
                authorization_url: self.authorization_url.clone().ok_or(
                    "grant authorization_code needs authorization_url (Google: \
                     https://accounts.google.com/o/oauth2/v2/auth)",
                )?,
                redirect_port: self.redirect_port,
            }),
            "jwt_bearer" => {
                only(
                    self.client_secret_file.is_some(),
                    "client_secret_file",
                    "client_credentials, refresh_token or authorization_code",
                )?;
                // The key file names the account; Google's form has no client_id.
                only(
                    self.client_id.is_some(),
                    "client_id",
                    "client_credentials, refresh_token or authorization_code",
                )?;
                Ok(OAuthGrant::JwtBearer {
                    service_account_file: self.service_account_file.clone().ok_or(
                        "grant jwt_bearer needs service_account_file (the service account's JSON key)",
                    )?,
                })
            }
            other => Err(format!(
                "grant {other:?} is not client_credentials, refresh_token, authorization_code \
                 or jwt_bearer"
            )),
        }
    }

    /// A secret or a certificate with its key, not both.
    fn client_proof(&self) -> Result<ClientProof, String> {
        match (
            &self.client_secret_file,
            &self.client_certificate_file,
            &self.client_key_file,
        ) {
            (Some(secret), None, None) => Ok(ClientProof::Secret(secret.clone())),
            (None, Some(cert), Some(key)) => Ok(ClientProof::Certificate {
                cert: cert.clone(),
                key: key.clone(),
            }),
            (None, None, None) => Err(
                "grant client_credentials needs client_secret_file, or client_certificate_file \
                 and client_key_file"
                    .into(),
            ),
            (None, _, _) => Err("client_certificate_file and client_key_file go together".into()),
            (Some(_), _, _) => Err(
                "client_secret_file or a certificate (client_certificate_file, client_key_file): \
                 one of the two"
                    .into(),
            ),
        }
    }
}

/// `YYYY-MM-DD` as days since 1970-01-01 (the civil calendar, proleptic
/// Gregorian), if it is a date.
pub fn parse_date(text: &str) -> Option<i64> {
    let mut parts = text.split('-');
    let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return None;
    }
    let (y, m, d): (i64, i64, i64) = (y.parse().ok()?, m.parse().ok()?, d.parse().ok()?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days_in = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&m) || d < 1 || d > days_in[(m - 1) as usize] {
        return None;
    }
    // Days from civil (H. Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> Result<OAuthSource, String> {
        let file: FileOAuthSource = toml::from_str(text).map_err(|e| e.to_string())?;
        file.validate("src")
    }

    #[test]
    fn each_grant_takes_its_own_keys_and_refuses_anothers() {
        let base = "token_url = \"https://idp/t\"\nclient_id = \"c\"\nscope = \"s\"\n";
        let s = table(&format!(
            "grant = \"client_credentials\"\n{base}client_secret_file = \"/s\"\n"
        ))
        .expect("secret");
        assert_eq!(
            s.grant,
            OAuthGrant::ClientCredentials(ClientProof::Secret("/s".into()))
        );
        let s = table(&format!(
            "grant = \"client_credentials\"\n{base}client_certificate_file = \"/c.pem\"\n\
             client_key_file = \"/k.pem\"\n"
        ))
        .expect("certificate");
        assert!(matches!(
            s.grant,
            OAuthGrant::ClientCredentials(ClientProof::Certificate { .. })
        ));
        let e = table(&format!(
            "grant = \"client_credentials\"\n{base}client_secret_file = \"/s\"\n\
             client_certificate_file = \"/c.pem\"\nclient_key_file = \"/k.pem\"\n"
        ))
        .expect_err("both");
        assert!(e.contains("one of the two"), "{e}");
        let s = table(&format!(
            "grant = \"authorization_code\"\n{base}authorization_url = \"https://idp/a\"\n\
             redirect_port = 8765\nclient_secret_file = \"/s\"\n"
        ))
        .expect("authorization code");
        assert!(s.has_consent() && s.is_delegated());
        assert_eq!(s.client_secret_file, Some("/s".into()));
        let e = table(&format!("grant = \"authorization_code\"\n{base}")).expect_err("no url");
        assert!(e.contains("needs authorization_url"), "{e}");
        let s = table(
            "grant = \"jwt_bearer\"\nservice_account_file = \"/sa.json\"\nscope = \"https://mail.google.com/\"\n",
        )
        .expect("service account");
        assert!(!s.has_consent() && s.token_url.is_none() && s.client_id.is_empty());
        let e = table(&format!(
            "grant = \"refresh_token\"\n{base}redirect_port = 1\n"
        ))
        .expect_err("foreign key");
        assert_eq!(
            e,
            "redirect_port belongs to grant authorization_code, not refresh_token"
        );
        let e = table(&format!("grant = \"implicit\"\n{base}")).expect_err("grant");
        assert!(e.starts_with("grant \"implicit\" is not"), "{e}");
        let e = table(&format!(
            "grant = \"client_credentials\"\n{base}client_secret_file = \"/s\"\n\
             client_secret_expires = \"2027-02-30\"\n"
        ))
        .expect_err("date");
        assert!(e.contains("is not a date"), "{e}");
    }

    #[test]
    fn dates_count_days_since_1970() {
        assert_eq!(parse_date("1970-01-01"), Some(0));
        assert_eq!(parse_date("2000-03-01"), Some(11_017));
        assert_eq!(parse_date("2026-12-06"), Some(20_793));
        assert_eq!(parse_date("2024-02-29"), Some(19_782));
        for bad in ["2023-02-29", "2026-13-01", "26-12-06", "2026-1-6", "x"] {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
    }
}
