//! A grant's health, from what the token store remembers and the
//! configuration says: when the access token expires, how the last request
//! went, how old the refresh token is against the provider's limits, when
//! the certificate or the client secret expires. `--oauth-status` prints
//! it; the store warns of it in the log. Pure: the caller reads the files.

use super::settings::{OAuthSource, parse_date};
use super::store::Saved;
use crate::limits::TOKEN_EXPIRY_WARNING;

/// How a grant is, worst last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    /// Something it needs runs out within `TOKEN_EXPIRY_WARNING`.
    Expiring,
    /// Devices cannot get a token (or soon will not) until an admin acts.
    Broken,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Expiring => "expiring",
            Level::Broken => "broken",
        }
    }
}

/// One line of the report; `warning`: it is why the level is not `Ok`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub text: String,
    pub warning: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub level: Level,
    pub lines: Vec<Line>,
}

impl Report {
    fn note(&mut self, text: String) {
        self.lines.push(Line {
            text,
            warning: false,
        });
    }

    fn flag(&mut self, level: Level, text: String) {
        self.level = self.level.max(level);
        self.lines.push(Line {
            text,
            warning: true,
        });
    }

    /// A deadline: `Broken` once passed, `Expiring` within the warning time.
    fn deadline(&mut self, what: &str, at: u64, now: u64) {
        if at <= now {
            self.flag(Level::Broken, format!("{what} expired on {}", utc(at)));
        } else if at - now <= TOKEN_EXPIRY_WARNING.as_secs() {
            let days = (at - now) / 86_400;
            self.flag(
                Level::Expiring,
                format!("{what} expires on {} (in {days} days)", utc(at)),
            );
        } else {
            self.note(format!("{what} expires on {}", utc(at)));
        }
    }
}

/// The health of `source` as the file `saved` tells it; `certificate` is
/// the certificate's `notAfter` (or why it could not be read), for a
/// certificate credential.
pub fn report(
    source: &OAuthSource,
    saved: &Saved,
    certificate: Option<Result<u64, String>>,
    now: u64,
) -> Report {
    let mut report = Report {
        level: Level::Ok,
        lines: Vec::new(),
    };
    if let Some(mailbox) = &saved.mailbox {
        report.note(format!("mailbox {mailbox}"));
    }
    match &saved.access_token {
        Some(_) if saved.expires_at > now => {
            report.note(format!(
                "access token valid until {}",
                utc(saved.expires_at)
            ));
        }
        Some(_) => report.note(format!("access token expired at {}", utc(saved.expires_at))),
        None => report.note("no access token cached".into()),
    }
    last_request(&mut report, saved);
    if let Some(since) = saved.dead_since {
        report.flag(
            Level::Broken,
            format!(
                "the provider refused the grant on {}: {}",
                utc(since),
                saved.dead_reason.as_deref().unwrap_or("no reason given")
            ),
        );
    }
    if source.is_delegated() {
        refresh_token(&mut report, source, saved, now);
    }
    match certificate {
        Some(Ok(not_after)) => report.deadline("the certificate", not_after, now),
        Some(Err(why)) => report.flag(Level::Broken, format!("the certificate: {why}")),
        None => {}
    }
    if let Some(date) = source.client_secret_expires.as_deref()
        && let Some(days) = parse_date(date)
    {
        let at = u64::try_from(days).unwrap_or(0).saturating_mul(86_400);
        report.deadline("the client secret", at, now);
    }
    report
}

fn last_request(report: &mut Report, saved: &Saved) {
    match (saved.last_success_at, saved.last_failure_at) {
        (Some(success), failure) if failure.is_none_or(|f| f <= success) => {
            report.note(format!("last token request ok on {}", utc(success)));
        }
        (_, Some(failure)) => report.note(format!(
            "last token request failed on {}: {}",
            utc(failure),
            saved.last_failure.as_deref().unwrap_or("no reason kept")
        )),
        _ => report.note("no token request yet".into()),
    }
}

/// The refresh token against the provider's limits (unused for too long,
/// or too old), where the admin told them.
fn refresh_token(report: &mut Report, source: &OAuthSource, saved: &Saved, now: u64) {
    let name = &source.name;
    if saved.refresh_token.is_none() {
        report.flag(
            Level::Broken,
            format!("no refresh token: run pop3server --oauth-consent {name}"),
        );
        return;
    }
    let age = |at: Option<u64>| at.map(|at| now.saturating_sub(at) / 86_400);
    report.note(format!(
        "refresh token: consented {} days ago, last used {} days ago",
        age(saved.consented_at).map_or("?".into(), |d| d.to_string()),
        age(saved.refresh_used_at).map_or("?".into(), |d| d.to_string()),
    ));
    let limits = [
        (
            source.refresh_token_max_idle_days,
            saved.refresh_used_at,
            "unused",
        ),
        (source.refresh_token_max_age_days, saved.consented_at, "old"),
    ];
    for (days, since, why) in limits {
        if let (Some(days), Some(since)) = (days, since) {
            let at = since.saturating_add(days.saturating_mul(86_400));
            let what = format!(
                "the refresh token ({why} for {days} days by then; renew with pop3server \
                 --oauth-consent {name})"
            );
            report.deadline(&what, at, now);
        }
    }
}

/// `YYYY-MM-DD HH:MM UTC`.
pub fn utc(secs: u64) -> String {
    // "YYYY-MM-DD HH:MM": token times need no seconds.
    let full = crate::logging::utc(secs);
    format!("{} UTC", &full[..full.len().saturating_sub(7)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::oauth::settings::FileOAuthSource;
    use crate::secret::Secret;

    fn source(extra: &str) -> OAuthSource {
        let text = format!(
            "grant = \"refresh_token\"\ntoken_url = \"https://idp/t\"\nclient_id = \"c\"\n\
             scope = \"s\"\n{extra}"
        );
        let file: FileOAuthSource = toml::from_str(&text).expect("table");
        file.validate("src").expect("valid")
    }

    const DAY: u64 = 86_400;
    const NOW: u64 = 20_000 * DAY;

    #[test]
    fn times_are_shown_in_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc(20_793 * DAY + 3600 + 120), "2026-12-06 01:02 UTC");
        assert_eq!(utc(11_016 * DAY), "2000-02-29 00:00 UTC");
    }

    #[test]
    fn a_fresh_consent_is_ok_and_one_near_its_limit_is_expiring() {
        let mut saved = Saved {
            refresh_token: Some(Secret::new(b"rt".to_vec())),
            consented_at: Some(NOW - 80 * DAY),
            refresh_used_at: Some(NOW - DAY),
            last_success_at: Some(NOW - DAY),
            ..Saved::default()
        };
        let idle = source("refresh_token_max_idle_days = 90\n");
        assert_eq!(report(&idle, &saved, None, NOW).level, Level::Ok);
        let aged = source("refresh_token_max_age_days = 90\n");
        let r = report(&aged, &saved, None, NOW);
        assert_eq!(r.level, Level::Expiring, "{r:?}");
        assert!(
            r.lines
                .iter()
                .any(|l| l.warning && l.text.contains("in 10 days")),
            "{r:?}"
        );
        saved.refresh_used_at = Some(NOW - 91 * DAY);
        assert_eq!(report(&idle, &saved, None, NOW).level, Level::Broken);
    }

    #[test]
    fn no_consent_a_dead_grant_or_an_expired_certificate_is_broken() {
        let r = report(&source(""), &Saved::default(), None, NOW);
        assert_eq!(r.level, Level::Broken);
        assert!(
            r.lines
                .iter()
                .any(|l| l.text.contains("--oauth-consent src"))
        );
        let dead = Saved {
            refresh_token: Some(Secret::new(b"rt".to_vec())),
            dead_since: Some(NOW - 60),
            dead_reason: Some("invalid_grant: AADSTS70043".into()),
            last_failure_at: Some(NOW - 60),
            last_failure: Some("invalid_grant".into()),
            ..Saved::default()
        };
        let r = report(&source(""), &dead, None, NOW);
        assert_eq!(r.level, Level::Broken);
        assert!(r.lines.iter().any(|l| l.text.contains("AADSTS70043")));
        let r = report(&source(""), &dead, Some(Ok(NOW - 1)), NOW);
        assert!(
            r.lines
                .iter()
                .any(|l| l.text.starts_with("the certificate expired"))
        );
    }

    #[test]
    fn a_client_secret_is_held_to_the_date_the_admin_gave() {
        let saved = Saved {
            refresh_token: Some(Secret::new(b"rt".to_vec())),
            ..Saved::default()
        };
        let soon = source("client_secret_expires = \"2024-10-10\"\n");
        let now = 20_000 * DAY; // 2024-10-04
        let r = report(&soon, &saved, None, now);
        assert_eq!(r.level, Level::Expiring, "{r:?}");
        let past = report(&soon, &saved, None, now + 30 * DAY);
        assert_eq!(past.level, Level::Broken);
    }
}
