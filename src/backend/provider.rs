//! What a provider's IMAP answers mean beyond their status: words that say
//! the login worked but the mailbox is not open to it, for now or until an
//! admin acts. Pure text recognition, one function per meaning; what the
//! session then does is decided by the kind of failure it is handed.

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

#[cfg(test)]
mod tests {
    use super::*;

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
