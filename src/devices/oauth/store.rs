//! The token store: `<state_dir>/oauth/<source>.json` (mode 0600, in a 0700
//! directory), shared by every session process; for a service account one
//! file per mailbox, `<source>.<digest of the mailbox>.json`. An access
//! token is reused until `TOKEN_EXPIRY_MARGIN` before it expires. A refresh
//! is done by one process at a time, under an exclusive `flock` on the
//! file's `.lock`: the others wait, then find the fresh token in the file,
//! so twenty sessions that start at once make one request. A response that
//! rotates the refresh token is written to disk (temporary file, fsync,
//! rename, fsync of the directory) before the new access token is used:
//! the one moment a crash can lose a rotated refresh token is between the
//! provider's answer and that write.
//!
//! The file also remembers the grant's health, for `--oauth-status` and
//! the log: when the consent was, when the refresh token was last used,
//! how the last request went; and a grant the provider declared dead rests
//! (no request with it) until a new consent, a changed configuration, or
//! the end of a bounded back-off.

use std::fs::{self, DirBuilder, File, OpenOptions, TryLockError};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::warn;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::TokenError;
use super::http::{self, Answer, ClientKey, KeyFiles, TokenAnswer};
use super::jwt;
use super::status;
use crate::devices::oauth::settings::{ClientProof, OAuthGrant, OAuthSource};
use crate::limits::{
    DEAD_GRANT_REST, DEAD_GRANT_REST_MAX, TOKEN_EXPIRY_MARGIN, TOKEN_LOCK_WAIT,
    TOKEN_WARNING_INTERVAL,
};
use crate::secret::Secret;
use crate::stats::{
    self,
    event::{Event, TokenResult},
};

const JWT_BEARER_GRANT: &[u8] = b"urn:ietf:params:oauth:grant-type:jwt-bearer";
const JWT_CLIENT_ASSERTION: &[u8] = b"urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// What the file holds. Times are Unix seconds.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Saved {
    pub access_token: Option<Secret>,
    #[serde(default)]
    pub expires_at: u64,
    pub refresh_token: Option<Secret>,
    /// The mailbox a service account's token is for.
    #[serde(default)]
    pub mailbox: Option<String>,
    /// When `--oauth-consent` stored the refresh token.
    #[serde(default)]
    pub consented_at: Option<u64>,
    /// When the refresh token was last used (providers drop unused ones).
    #[serde(default)]
    pub refresh_used_at: Option<u64>,
    #[serde(default)]
    pub last_success_at: Option<u64>,
    #[serde(default)]
    pub last_failure_at: Option<u64>,
    /// The provider's words, or ours, for the last failure.
    #[serde(default)]
    pub last_failure: Option<String>,
    /// Since when the provider calls the grant dead; `None`: it is not.
    #[serde(default)]
    pub dead_since: Option<u64>,
    #[serde(default)]
    pub dead_reason: Option<String>,
    /// Refusals in a row: each doubles the rest.
    #[serde(default)]
    pub dead_refusals: u32,
    /// The configuration the grant was declared dead under: a changed
    /// `[oauth.NAME]` is worth one more try at once.
    #[serde(default)]
    pub dead_settings: Option<String>,
    /// When the log last warned of this grant's health.
    #[serde(default)]
    pub warned_at: Option<u64>,
}

pub struct Store<'a> {
    source: &'a OAuthSource,
    dir: PathBuf,
    /// The client's credentials as read before root was left; read from
    /// their files when `None`.
    key: Option<&'a Result<KeyFiles, String>>,
    /// For a service account: whose token (its `sub`).
    mailbox: Option<String>,
}

/// A token and when it expires (Unix seconds).
pub struct Token {
    pub access_token: Secret,
    pub expires_at: u64,
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl<'a> Store<'a> {
    pub fn new(state_dir: &std::path::Path, source: &'a OAuthSource) -> Self {
        Store {
            source,
            dir: state_dir.join("oauth"),
            key: None,
            mailbox: None,
        }
    }

    /// Uses credentials read earlier (see `preload`) instead of their files.
    pub fn with_client_key(mut self, key: Option<&'a Result<KeyFiles, String>>) -> Self {
        self.key = key;
        self
    }

    /// The token of `mailbox`, for a service account, whose tokens are per
    /// mailbox; other grants have one token for every mailbox.
    pub fn for_mailbox(mut self, mailbox: &str) -> Self {
        if matches!(self.source.grant, OAuthGrant::JwtBearer { .. }) {
            self.mailbox = Some(mailbox.to_string());
        }
        self
    }

    /// The file's name without `.json`: the source's, and for a service
    /// account's mailbox a digest of it (a mailbox name is no file name).
    fn stem(&self) -> String {
        match &self.mailbox {
            Some(mailbox) => {
                let digest = Sha256::digest(mailbox.to_ascii_lowercase().as_bytes());
                let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
                format!("{}.{hex}", self.source.name)
            }
            None => self.source.name.clone(),
        }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(format!("{}.json", self.stem()))
    }

    /// A valid access token: the stored one, or a new one. `refused` is a
    /// token the backend just turned down although it looked valid: a
    /// different one is needed.
    pub fn access_token(&self, refused: Option<&Secret>) -> Result<Token, TokenError> {
        if let Some(token) = usable(&self.read()?, refused) {
            return Ok(token);
        }
        let _lock = self.lock()?;
        // Another process may have refreshed while we waited for the lock.
        let mut saved = self.read()?;
        if let Some(token) = usable(&saved, refused) {
            return Ok(token);
        }
        self.check_rest(&saved)?;
        let now = now();
        let asked = Instant::now();
        let answered = self.request(&saved);
        stats::emit::send(&Event::Token {
            source: self.source.name.clone(),
            grant: self.source.grant_name().into(),
            result: match answered {
                Ok(_) => TokenResult::Ok,
                Err(_) => TokenResult::Failed,
            },
            seconds: asked.elapsed().as_secs_f64(),
            expires: answered
                .as_ref()
                .ok()
                .and_then(|a| a.expires_in)
                .map(|secs| now.saturating_add(secs)),
        });
        match answered {
            Ok(answer) => {
                if saved.refresh_token.is_some() {
                    saved.refresh_used_at = Some(now);
                }
                saved.last_success_at = Some(now);
                saved.dead_since = None;
                saved.dead_reason = None;
                saved.dead_refusals = 0;
                saved.dead_settings = None;
                self.warn_of_health(&mut saved, now);
                self.save(saved, answer)
            }
            Err(error) => {
                saved.mailbox = self.mailbox.clone();
                saved.last_failure_at = Some(now);
                saved.last_failure = Some(error.to_string());
                if let TokenError::InvalidGrant(why) = &error {
                    saved.dead_since = Some(now);
                    saved.dead_reason = Some(why.clone());
                    saved.dead_refusals = saved.dead_refusals.saturating_add(1);
                    saved.dead_settings = Some(self.settings_digest());
                }
                // Losing this note costs only the status it feeds.
                let _ = self.write(&saved);
                Err(error)
            }
        }
    }

    /// Refuses to ask while a dead grant rests.
    fn check_rest(&self, saved: &Saved) -> Result<(), TokenError> {
        let Some(since) = saved.dead_since else {
            return Ok(());
        };
        if saved.dead_settings.as_deref() != Some(self.settings_digest().as_str()) {
            return Ok(());
        }
        let until = since.saturating_add(rest(saved.dead_refusals).as_secs());
        if now() >= until {
            return Ok(());
        }
        Err(TokenError::Resting(format!(
            "[oauth.{}]: the provider refused the grant ({}); not asking again before {} \
             unless the configuration changes{}",
            self.source.name,
            saved.dead_reason.as_deref().unwrap_or("no reason given"),
            status::utc(until),
            if self.source.has_consent() {
                format!(
                    " or pop3server --oauth-consent {} authorises again",
                    self.source.name
                )
            } else {
                String::new()
            }
        )))
    }

    /// What `--oauth-status` reads: the file as it is (no request).
    pub fn saved(&self) -> Result<Saved, TokenError> {
        self.read()
    }

    /// Stores the first tokens of a consent (`--oauth-consent`), replacing
    /// what was there (a resting dead grant too): the next session uses
    /// them, no restart needed.
    pub fn store_consent(&self, answer: TokenAnswer) -> Result<(), TokenError> {
        let _lock = self.lock()?;
        if answer.refresh_token.is_none() {
            return Err(TokenError::Setup(format!(
                "[oauth.{}]: the provider sent no refresh token: add offline_access (Microsoft) \
                 or the provider's equivalent to scope",
                self.source.name
            )));
        }
        let now = now();
        let saved = Saved {
            consented_at: Some(now),
            refresh_used_at: Some(now),
            last_success_at: Some(now),
            ..Saved::default()
        };
        self.save(saved, answer).map(|_| ())
    }

    fn request(&self, saved: &Saved) -> Result<TokenAnswer, TokenError> {
        let name = &self.source.name;
        let key = match self.key {
            Some(Ok(files)) => files.parse(self.source)?,
            Some(Err(why)) => return Err(TokenError::Setup(why.clone())),
            None => http::client_key(self.source)?,
        };
        let key = &key;
        let url = self.token_url(key)?;
        let mut form: Vec<(&str, Vec<u8>)> = Vec::new();
        // A service account names its scope inside the assertion; its form
        // is the grant and the assertion alone, as Google documents it.
        if !matches!(self.source.grant, OAuthGrant::JwtBearer { .. }) {
            form.push(("scope", self.source.scope.clone().into_bytes()));
        }
        if !self.source.client_id.is_empty() {
            form.push(("client_id", self.source.client_id.clone().into_bytes()));
        }
        let secret_form = match (&self.source.grant, key) {
            (OAuthGrant::JwtBearer { .. }, ClientKey::ServiceAccount(account)) => {
                let mailbox = self.mailbox.as_deref().ok_or_else(|| {
                    TokenError::Setup(format!(
                        "[oauth.{name}]: a service account's token is for a mailbox: none given"
                    ))
                })?;
                let assertion = jwt::service_account_assertion(
                    account,
                    &self.source.scope,
                    mailbox,
                    &url,
                    now(),
                )
                .map_err(|e| TokenError::Setup(format!("[oauth.{name}] {e}")))?;
                form.push(("grant_type", JWT_BEARER_GRANT.to_vec()));
                Some(("assertion", assertion))
            }
            (OAuthGrant::ClientCredentials(_), ClientKey::Certificate { key, cert }) => {
                let assertion =
                    jwt::client_assertion(&self.source.client_id, &url, key, cert, now())
                        .map_err(|e| TokenError::Setup(format!("[oauth.{name}] {e}")))?;
                form.push(("grant_type", b"client_credentials".to_vec()));
                form.push(("client_assertion_type", JWT_CLIENT_ASSERTION.to_vec()));
                Some(("client_assertion", assertion))
            }
            (OAuthGrant::ClientCredentials(_), _) => {
                form.push(("grant_type", b"client_credentials".to_vec()));
                None
            }
            (OAuthGrant::RefreshToken | OAuthGrant::AuthorizationCode { .. }, _) => {
                let Some(refresh) = &saved.refresh_token else {
                    return Err(TokenError::Setup(format!(
                        "[oauth.{name}] has no refresh token yet: run pop3server --oauth-consent {name}"
                    )));
                };
                form.push(("grant_type", b"refresh_token".to_vec()));
                Some(("refresh_token", Secret::new(refresh.expose().to_vec())))
            }
            (OAuthGrant::JwtBearer { .. }, _) => {
                return Err(TokenError::Setup(format!(
                    "[oauth.{name}]: no service account key was read"
                )));
            }
        };
        let mut fields: Vec<(&str, &[u8])> = form.iter().map(|(k, v)| (*k, v.as_slice())).collect();
        if let ClientKey::Secret(secret) = key {
            fields.push(("client_secret", secret.expose()));
        }
        if let Some((field, value)) = &secret_form {
            fields.push((field, value.expose()));
        }
        self.answer(http::post(self.source, &url, &fields)?)
    }

    /// Where tokens are asked for: the configured URL, or the one the
    /// service account's key names.
    fn token_url(&self, key: &ClientKey) -> Result<String, TokenError> {
        if let Some(url) = &self.source.token_url {
            return Ok(url.clone());
        }
        if let ClientKey::ServiceAccount(account) = key
            && let Some(url) = &account.token_uri
            && url.starts_with("https://")
        {
            return Ok(url.clone());
        }
        Err(TokenError::Setup(format!(
            "[oauth.{}] has no token_url (and the key file names no https:// token_uri)",
            self.source.name
        )))
    }

    fn answer(&self, answer: Answer<TokenAnswer>) -> Result<TokenAnswer, TokenError> {
        let name = &self.source.name;
        let fix = match &self.source.grant {
            _ if self.source.has_consent() => {
                format!("run pop3server --oauth-consent {name} to authorise again")
            }
            OAuthGrant::JwtBearer { .. } => format!(
                "check that the service account may act for {} (domain-wide delegation, the \
                 scope) and that its key is valid",
                self.mailbox.as_deref().unwrap_or("the mailbox")
            ),
            _ => "check client_id, the secret or certificate, and scope".to_string(),
        };
        match answer {
            Answer::Ok(token) => Ok(token),
            // The grant or the client is refused for good: asking again
            // changes nothing until an admin acts.
            Answer::Error(e)
                if matches!(
                    e.error.as_str(),
                    "invalid_grant" | "invalid_client" | "unauthorized_client"
                ) =>
            {
                Err(TokenError::InvalidGrant(format!(
                    "[oauth.{name}]: {}; {fix}",
                    e.describe()
                )))
            }
            Answer::Error(e) if e.error == "temporarily_unavailable" => Err(
                TokenError::Unavailable(format!("[oauth.{name}]: {}", e.describe())),
            ),
            Answer::Error(e) => Err(TokenError::Setup(format!(
                "[oauth.{name}]: the token endpoint refused: {} ({fix})",
                e.describe()
            ))),
        }
    }

    /// A digest of the source's settings: a changed configuration ends a
    /// dead grant's rest.
    fn settings_digest(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update(format!("{:?}", self.source).as_bytes());
        // A new secret, key or certificate written over the old file is a
        // new configuration too.
        for path in key_files(self.source) {
            if let Ok(meta) = fs::metadata(path) {
                let stamp = format!("{path:?} {:?} {}", meta.modified().ok(), meta.len());
                hasher.update(stamp.as_bytes());
            }
        }
        let digest = hasher.finalize();
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Warns in the log, at most once a day, of what `--oauth-status` would
    /// call expiring or broken.
    fn warn_of_health(&self, saved: &mut Saved, now: u64) {
        if saved
            .warned_at
            .is_some_and(|at| now < at.saturating_add(TOKEN_WARNING_INTERVAL.as_secs()))
        {
            return;
        }
        let certificate = match &self.source.grant {
            OAuthGrant::ClientCredentials(ClientProof::Certificate { cert, .. }) => {
                Some(jwt::Certificate::from_file(cert).map(|c| c.not_after))
            }
            _ => None,
        };
        let report = status::report(self.source, saved, certificate, now);
        if report.level == status::Level::Ok {
            return;
        }
        for line in report.lines.iter().filter(|l| l.warning) {
            warn!("[oauth.{}]: {}", self.source.name, line.text);
        }
        saved.warned_at = Some(now);
    }

    /// Writes the answer (keeping the old refresh token if none came) and
    /// returns its access token.
    fn save(&self, mut saved: Saved, answer: TokenAnswer) -> Result<Token, TokenError> {
        let expires_at = now().saturating_add(answer.expires_in.unwrap_or(0));
        saved.access_token = Some(answer.access_token);
        saved.expires_at = expires_at;
        if let Some(refresh) = answer.refresh_token {
            saved.refresh_token = Some(refresh);
        }
        saved.mailbox = self.mailbox.clone();
        self.write(&saved)?;
        Ok(Token {
            access_token: saved
                .access_token
                .ok_or_else(|| TokenError::Setup("no access token".into()))?,
            expires_at,
        })
    }

    fn read(&self) -> Result<Saved, TokenError> {
        let path = self.path();
        let bytes = match fs::read(&path) {
            Ok(b) => Secret::new(b),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Saved::default()),
            Err(e) => return Err(self.setup(format!("cannot read {}: {e}", path.display()))),
        };
        match serde_json::from_slice(bytes.expose()) {
            Ok(saved) => Ok(saved),
            // Without a refresh token in it the file is only a cache.
            Err(_) if !self.source.is_delegated() => Ok(Saved::default()),
            Err(e) => Err(self.setup(format!(
                "{} is damaged ({e}): run pop3server --oauth-consent {}",
                path.display(),
                self.source.name
            ))),
        }
    }

    fn write(&self, saved: &Saved) -> Result<(), TokenError> {
        let path = self.path();
        let tmp = self.dir.join(format!(".{}.json.tmp", self.stem()));
        let fail =
            |what: &str, e: std::io::Error| self.setup(format!("{what} {}: {e}", tmp.display()));
        let json = Secret::new(serde_json::to_vec(saved).map_err(|e| self.setup(e.to_string()))?);
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| fail("cannot create", e))?;
        file.write_all(json.expose())
            .map_err(|e| fail("cannot write", e))?;
        file.sync_all().map_err(|e| fail("cannot sync", e))?;
        fs::rename(&tmp, &path).map_err(|e| fail("cannot rename", e))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| fail("cannot sync the directory of", e))
    }

    /// The exclusive lock for refreshing, waited for at most
    /// `TOKEN_LOCK_WAIT` (a refresh in another process is bounded by the
    /// HTTP timeout).
    fn lock(&self) -> Result<File, TokenError> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| self.setup(format!("cannot create {}: {e}", self.dir.display())))?;
        let path = self.dir.join(format!("{}.lock", self.stem()));
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| self.setup(format!("cannot open {}: {e}", path.display())))?;
        let deadline = Instant::now() + TOKEN_LOCK_WAIT;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(file),
                Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(20));
                }
                Err(TryLockError::WouldBlock) => {
                    return Err(TokenError::Unavailable(format!(
                        "another process has been refreshing [oauth.{}] for over {} s",
                        self.source.name,
                        TOKEN_LOCK_WAIT.as_secs()
                    )));
                }
                Err(TryLockError::Error(e)) => {
                    return Err(self.setup(format!("cannot lock {}: {e}", path.display())));
                }
            }
        }
    }

    fn setup(&self, why: String) -> TokenError {
        TokenError::Setup(format!("[oauth.{}] token store: {why}", self.source.name))
    }
}

/// The files that prove the client: their change ends a rest.
fn key_files(source: &OAuthSource) -> Vec<&std::path::Path> {
    let mut files: Vec<&std::path::Path> = source
        .client_secret_file
        .iter()
        .map(|p| p.as_path())
        .collect();
    match &source.grant {
        OAuthGrant::ClientCredentials(ClientProof::Secret(path)) => files.push(path),
        OAuthGrant::ClientCredentials(ClientProof::Certificate { cert, key }) => {
            files.push(cert);
            files.push(key);
        }
        OAuthGrant::JwtBearer {
            service_account_file,
        } => files.push(service_account_file),
        _ => {}
    }
    files
}

/// How long a dead grant rests after `refusals` refusals in a row.
fn rest(refusals: u32) -> Duration {
    let doublings = refusals.saturating_sub(1).min(16);
    DEAD_GRANT_REST
        .saturating_mul(1 << doublings)
        .min(DEAD_GRANT_REST_MAX)
}

/// The stored access token, if it is good for a while yet and is not the
/// one the backend refused.
fn usable(saved: &Saved, refused: Option<&Secret>) -> Option<Token> {
    let token = saved.access_token.as_ref()?;
    let fresh = saved.expires_at > now().saturating_add(TOKEN_EXPIRY_MARGIN.as_secs());
    if !fresh || refused.is_some_and(|r| r == token) {
        return None;
    }
    Some(Token {
        access_token: Secret::new(token.expose().to_vec()),
        expires_at: saved.expires_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_grant_rests_longer_with_each_refusal_up_to_the_bound() {
        assert_eq!(rest(0), DEAD_GRANT_REST);
        assert_eq!(rest(1), DEAD_GRANT_REST);
        assert_eq!(rest(2), DEAD_GRANT_REST * 2);
        assert_eq!(rest(4), DEAD_GRANT_REST * 8);
        assert_eq!(rest(40), DEAD_GRANT_REST_MAX);
    }
}
