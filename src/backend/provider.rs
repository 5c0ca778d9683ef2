//! What a provider's IMAP answers mean beyond their status: words that say
//! the login worked but the mailbox is not open to it, for now or until an
//! admin acts, and words that say the provider is throttling the mailbox.
//! Pure text recognition, one function per meaning; what the session then
//! does is decided by the kind of failure it is handed.

use std::time::Duration;

use crate::decimal::parse_u64;

/// Microsoft 365's `BAD User is authenticated but not connected.` after a
/// login that worked: the app (or the user) has no permission on the
/// mailbox. Its own words, in any case; NO or BAD.
pub fn mailbox_not_connected(text: &str) -> bool {
    text.to_ascii_lowercase()
        .contains("user is authenticated but not connected")
}

/// What an admin does about `mailbox_not_connected`, for the log and
/// `--check`.
pub const NOT_CONNECTED_FIX: &str = "the login worked but has no permission on this mailbox: \
    grant it in Exchange Online PowerShell with Add-MailboxPermission -Identity MAILBOX \
    -User SERVICE-PRINCIPAL-ID -AccessRights FullAccess (app-only access), or give the \
    signed-in user access to the mailbox (delegated access)";

/// A provider's "not now, you are using this mailbox too much".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Throttle {
    /// How long the provider asks us to wait, when it says.
    pub suggested: Option<Duration>,
}

/// The providers' throttling answers, recognised by their words (in a `NO`,
/// a `BAD`, a `BYE` or a greeting; `text` with its response code, as
/// `[CODE] text`). Exchange Online: "Request is throttled. Suggested
/// Backoff Time: N milliseconds"; Gmail: "Too many simultaneous
/// connections", "Account exceeded command or bandwidth limits", and
/// `[THROTTLED]` (as a code, or in the text). `[ALERT]` alone proves
/// nothing (Gmail also alerts "Application-specific password required"),
/// and neither does `[UNAVAILABLE]`, which Dovecot also says when its
/// user database is down: those stay temporary failures without a rest.
pub fn throttling(text: &str) -> Option<Throttle> {
    let lower = text.to_ascii_lowercase();
    const WORDS: [&str; 4] = [
        "request is throttled",
        "too many simultaneous connections",
        "account exceeded command or bandwidth limits",
        "[throttled]",
    ];
    let suggested = suggested_backoff(&lower);
    if suggested.is_none() && !WORDS.iter().any(|w| lower.contains(w)) {
        return None;
    }
    Some(Throttle { suggested })
}

/// Exchange's "Suggested Backoff Time: N milliseconds" (`lower`: the text
/// in lower case).
fn suggested_backoff(lower: &str) -> Option<Duration> {
    const SAYS: &str = "suggested backoff time:";
    let after = &lower[lower.find(SAYS)? + SAYS.len()..];
    let after = after.trim_start();
    let digits = after.bytes().take_while(u8::is_ascii_digit).count();
    let millis = parse_u64(&after.as_bytes()[..digits])?;
    let unit = after[digits..].trim_start();
    if unit.starts_with("ms") || unit.starts_with("millisecond") {
        Some(Duration::from_millis(millis))
    } else if unit.starts_with("s") {
        Some(Duration::from_secs(millis))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_providers_throttling_words_are_recognised_with_their_time() {
        let exchange =
            throttling("Request is throttled. Suggested Backoff Time: 299961 milliseconds");
        assert_eq!(
            exchange,
            Some(Throttle {
                suggested: Some(Duration::from_millis(299_961))
            })
        );
        // A BAD with the time alone still says it.
        assert_eq!(
            throttling("SUGGESTED BACKOFF TIME: 5 seconds").and_then(|t| t.suggested),
            Some(Duration::from_secs(5))
        );
        for gmail in [
            "[ALERT] Too many simultaneous connections. (Failure)",
            "[ALERT] Account exceeded command or bandwidth limits. (Failure)",
            "[THROTTLED] slow down",
            "Success [THROTTLED]",
        ] {
            assert_eq!(
                throttling(gmail),
                Some(Throttle { suggested: None }),
                "{gmail}"
            );
        }
    }

    #[test]
    fn alerts_unavailable_and_garbled_times_are_not_throttling() {
        for other in [
            "[ALERT] Application-specific password required",
            "[UNAVAILABLE] Temporary authentication failure",
            "[AUTHENTICATIONFAILED] Invalid credentials (Failure)",
            "Server Unavailable. 15",
            "Suggested Backoff Time: soon",
            "Suggested Backoff Time: 99999999999999999999999 milliseconds",
        ] {
            assert_eq!(throttling(other), None, "{other}");
        }
    }

    #[test]
    fn microsofts_words_are_recognised_in_any_case_and_nothing_else() {
        assert!(mailbox_not_connected(
            "User is authenticated but not connected."
        ));
        assert!(mailbox_not_connected(
            "[CLIENTBUG] USER IS AUTHENTICATED BUT NOT CONNECTED"
        ));
        assert!(!mailbox_not_connected("Mailbox doesn't exist: INBOX"));
        assert!(!mailbox_not_connected("User is authenticated"));
    }
}
