//! The token store: `<state_dir>/oauth/<source>.json` (mode 0600, in a 0700
//! directory), shared by every session process. An access token is reused
//! until `TOKEN_EXPIRY_MARGIN` before it expires. A refresh is done by one
//! process at a time, under an exclusive `flock` on `<source>.lock`: the
//! others wait, then find the fresh token in the file, so twenty sessions
//! that start at once make one request. A response that rotates the
//! refresh token is written to disk (temporary file, fsync, rename, fsync
//! of the directory) before the new access token is used: the one moment a
//! crash can lose a rotated refresh token is between the provider's answer
//! and that write.

use std::fs::{self, DirBuilder, File, OpenOptions, TryLockError};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::TokenError;
use super::http::{self, Answer, TokenAnswer};
use crate::devices::oauth::settings::{OAuthGrant, OAuthSource};
use crate::limits::{TOKEN_EXPIRY_MARGIN, TOKEN_LOCK_WAIT};
use crate::secret::Secret;

/// What the file holds.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    access_token: Option<Secret>,
    /// Unix seconds.
    #[serde(default)]
    expires_at: u64,
    refresh_token: Option<Secret>,
}

pub struct Store<'a> {
    source: &'a OAuthSource,
    dir: PathBuf,
    /// The client secret as read before root was left; read from its file
    /// when `None`.
    client_secret: Option<&'a Result<Option<Secret>, String>>,
}

/// A token and when it expires (Unix seconds).
pub struct Token {
    pub access_token: Secret,
    pub expires_at: u64,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl<'a> Store<'a> {
    pub fn new(state_dir: &std::path::Path, source: &'a OAuthSource) -> Self {
        Store {
            source,
            dir: state_dir.join("oauth"),
            client_secret: None,
        }
    }

    /// Uses a client secret read earlier (see `preload`) instead of its file.
    pub fn with_client_secret(
        mut self,
        secret: Option<&'a Result<Option<Secret>, String>>,
    ) -> Self {
        self.client_secret = secret;
        self
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(format!("{}.json", self.source.name))
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
        let saved = self.read()?;
        if let Some(token) = usable(&saved, refused) {
            return Ok(token);
        }
        let answer = self.request(&saved)?;
        self.save(answer, saved.refresh_token)
    }

    /// Stores the first tokens of a consent (`--oauth-consent`), replacing
    /// what was there: the next session uses them, no restart needed.
    pub fn store_consent(&self, answer: TokenAnswer) -> Result<(), TokenError> {
        let _lock = self.lock()?;
        if answer.refresh_token.is_none() {
            return Err(TokenError::Setup(format!(
                "[oauth.{}]: the provider sent no refresh token: add offline_access (Microsoft) \
                 or the provider's equivalent to scope",
                self.source.name
            )));
        }
        self.save(answer, None).map(|_| ())
    }

    fn request(&self, saved: &Saved) -> Result<TokenAnswer, TokenError> {
        let name = &self.source.name;
        let read;
        let secret = match self.client_secret {
            Some(Ok(secret)) => secret.as_ref(),
            Some(Err(why)) => return Err(TokenError::Setup(why.clone())),
            None => {
                read = http::client_secret(self.source)?;
                read.as_ref()
            }
        };
        let mut form: Vec<(&str, &[u8])> = vec![
            ("client_id", self.source.client_id.as_bytes()),
            ("scope", self.source.scope.as_bytes()),
        ];
        if let Some(secret) = &secret {
            form.push(("client_secret", secret.expose()));
        }
        match (self.source.grant, &saved.refresh_token) {
            (OAuthGrant::ClientCredentials, _) => form.push(("grant_type", b"client_credentials")),
            (OAuthGrant::RefreshToken, Some(refresh)) => {
                form.push(("grant_type", b"refresh_token"));
                form.push(("refresh_token", refresh.expose()));
            }
            (OAuthGrant::RefreshToken, None) => {
                return Err(TokenError::Setup(format!(
                    "[oauth.{name}] has no refresh token yet: run pop3server --oauth-consent {name}"
                )));
            }
        }
        self.answer(http::post(self.source, &self.source.token_url, &form)?)
    }

    fn answer(&self, answer: Answer<TokenAnswer>) -> Result<TokenAnswer, TokenError> {
        let name = &self.source.name;
        match answer {
            Answer::Ok(token) => Ok(token),
            Answer::Error(e) if e.error == "invalid_grant" => {
                Err(TokenError::InvalidGrant(format!(
                    "[oauth.{name}]: {}; run pop3server --oauth-consent {name} to authorise again",
                    e.describe()
                )))
            }
            Answer::Error(e) if e.error == "temporarily_unavailable" => Err(
                TokenError::Unavailable(format!("[oauth.{name}]: {}", e.describe())),
            ),
            Answer::Error(e) => Err(TokenError::Setup(format!(
                "[oauth.{name}]: the token endpoint refused: {} (check client_id, the secret and scope)",
                e.describe()
            ))),
        }
    }

    /// Writes the answer (keeping the old refresh token if none came) and
    /// returns its access token.
    fn save(&self, answer: TokenAnswer, old_refresh: Option<Secret>) -> Result<Token, TokenError> {
        let expires_at = now().saturating_add(answer.expires_in.unwrap_or(0));
        let saved = Saved {
            access_token: Some(answer.access_token),
            expires_at,
            refresh_token: answer.refresh_token.or(old_refresh),
        };
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
            Err(_) if self.source.grant == OAuthGrant::ClientCredentials => Ok(Saved::default()),
            Err(e) => Err(self.setup(format!(
                "{} is damaged ({e}): run pop3server --oauth-consent {}",
                path.display(),
                self.source.name
            ))),
        }
    }

    fn write(&self, saved: &Saved) -> Result<(), TokenError> {
        let path = self.path();
        let tmp = self.dir.join(format!(".{}.json.tmp", self.source.name));
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
        let path = self.dir.join(format!("{}.lock", self.source.name));
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
