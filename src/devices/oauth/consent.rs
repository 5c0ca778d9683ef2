//! `pop3server --oauth-consent NAME`: the OAuth2 device authorization grant
//! (RFC 8628) for a refresh-token source, run once by an admin. It asks the
//! provider for a code, prints where to enter it, polls the token endpoint
//! at the interval the provider asks for (slower after `slow_down`) until
//! someone signed in and consented, the code expired, or consent was
//! denied, and stores the tokens. Sessions that start afterwards use them;
//! nothing needs a restart.

use std::io::Write;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::TokenError;
use super::http::{self, Answer, TokenAnswer};
use super::store::Store;
use crate::devices::oauth::settings::OAuthSource;
use crate::limits::MAX_CONSENT_WAIT;
use crate::secret::Secret;

/// RFC 8628 section 3.2 (Google says `verification_url`).
#[derive(Debug, Deserialize)]
struct DeviceCode {
    device_code: Secret,
    user_code: String,
    #[serde(alias = "verification_url")]
    verification_uri: String,
    verification_uri_complete: Option<String>,
    expires_in: u64,
    interval: Option<u64>,
}

const DEVICE_CODE_GRANT: &[u8] = b"urn:ietf:params:oauth:grant-type:device_code";

/// Runs the grant; `sleep` waits between polls (a parameter, so tests need
/// not wait).
pub fn run(
    source: &OAuthSource,
    store: &Store,
    out: &mut dyn Write,
    sleep: &dyn Fn(Duration),
) -> Result<(), TokenError> {
    let name = &source.name;
    let (Some(url), Some(token_url)) = (&source.device_authorization_url, &source.token_url) else {
        return Err(TokenError::Setup(format!(
            "[oauth.{name}] has no device_authorization_url or token_url"
        )));
    };
    let secret = http::client_secret(source)?;
    let mut form: Vec<(&str, &[u8])> = vec![
        ("client_id", source.client_id.as_bytes()),
        ("scope", source.scope.as_bytes()),
    ];
    if let Some(s) = &secret {
        form.push(("client_secret", s.expose()));
    }
    let code: DeviceCode = match http::post(source, url, &form)? {
        Answer::Ok(code) => code,
        Answer::Error(e) => {
            return Err(TokenError::Setup(format!(
                "[oauth.{name}]: the device authorization endpoint refused: {}",
                e.describe()
            )));
        }
    };
    let _ = writeln!(
        out,
        "To authorise [oauth.{name}], open {} and enter the code {}{}",
        code.verification_uri,
        code.user_code,
        code.verification_uri_complete
            .as_ref()
            .map(|u| format!(" (or open {u})"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        out,
        "Waiting for the sign-in (the code is valid for {} minutes)...",
        code.expires_in.div_ceil(60)
    );
    let _ = out.flush();

    let wait = Duration::from_secs(code.expires_in).min(MAX_CONSENT_WAIT);
    let deadline = Instant::now() + wait;
    let mut interval = Duration::from_secs(code.interval.unwrap_or(5).max(1));
    let poll: Vec<(&str, &[u8])> = {
        let mut f: Vec<(&str, &[u8])> = vec![
            ("grant_type", DEVICE_CODE_GRANT),
            ("device_code", code.device_code.expose()),
            ("client_id", source.client_id.as_bytes()),
        ];
        if let Some(s) = &secret {
            f.push(("client_secret", s.expose()));
        }
        f
    };
    // Bounded by the deadline, and by a count in case the clock stands still.
    for _ in 0..10_000 {
        if Instant::now() >= deadline {
            break;
        }
        sleep(interval);
        match http::post::<TokenAnswer>(source, token_url, &poll) {
            Ok(Answer::Ok(tokens)) => {
                store.store_consent(tokens)?;
                let _ = writeln!(
                    out,
                    "Authorised: tokens stored in {}",
                    store.path().display()
                );
                return Ok(());
            }
            Ok(Answer::Error(e)) => match e.error.as_str() {
                "authorization_pending" => {}
                "slow_down" => interval += Duration::from_secs(5),
                "expired_token" => break,
                "access_denied" => {
                    return Err(TokenError::Setup(format!(
                        "[oauth.{name}]: consent was denied at the sign-in"
                    )));
                }
                _ => {
                    return Err(TokenError::Setup(format!(
                        "[oauth.{name}]: the token endpoint refused: {}",
                        e.describe()
                    )));
                }
            },
            // A hiccup of the endpoint is not the end of the wait.
            Err(TokenError::Unavailable(why)) => {
                let _ = writeln!(out, "({why}; trying again)");
            }
            Err(e) => return Err(e),
        }
    }
    Err(TokenError::Setup(format!(
        "[oauth.{name}]: the code expired before anyone signed in: run pop3server --oauth-consent {name} again"
    )))
}
