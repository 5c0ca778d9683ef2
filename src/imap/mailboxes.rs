//! Mailboxes by what they are for: LIST, with RFC 6154's `RETURN
//! (SPECIAL-USE)` where the server offers SPECIAL-USE, and the mailbox that
//! carries a special-use attribute (`\Trash`); and [`MailboxName`], a name
//! as IMAP spells it, which a command sends back byte for byte. It owns the
//! rule that a name the server listed is never re-encoded: what it listed
//! is what names the mailbox. It changes nothing on the server.

use std::fmt;

use super::encode::{Arg, decode_mailbox_name, mailbox_name};
use super::response::{ListData, Response};
use super::{Client, ImapError};

/// The special-use attribute (RFC 6154) of the mailbox deleted messages go
/// to, as the parser gives attributes: upper-cased.
pub const TRASH: &str = "\\TRASH";

/// Attributes of a name that cannot be selected or written to, so cannot
/// be a destination whatever else it says it is.
const NOT_A_MAILBOX: [&str; 2] = ["\\NOSELECT", "\\NONEXISTENT"];

/// A mailbox name as IMAP spells it (modified UTF-7, RFC 3501 5.1.3): one
/// the server listed, as it listed it, or a configured name encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxName(Vec<u8>);

impl MailboxName {
    /// A configured folder name (UTF-8) as IMAP spells it.
    pub fn of_folder(name: &str) -> MailboxName {
        MailboxName(mailbox_name(name).into_bytes())
    }

    /// Whether both name the same mailbox: the same bytes, or INBOX in any
    /// case (RFC 3501 5.1: INBOX is case-insensitive).
    pub fn is(&self, other: &MailboxName) -> bool {
        let inbox = |n: &[u8]| n.eq_ignore_ascii_case(b"INBOX");
        self.0 == other.0 || (inbox(&self.0) && inbox(&other.0))
    }

    pub(super) fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// For log lines, quoted like a folder name: decoded to UTF-8 (what
/// `trash_folder` takes), or the bytes as they came where they are not
/// modified UTF-7.
impl fmt::Display for MailboxName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = decode_mailbox_name(&self.0)
            .unwrap_or_else(|| String::from_utf8_lossy(&self.0).into_owned());
        write!(f, "{text:?}")
    }
}

impl Client {
    /// The first mailbox the server lists with the special-use `attribute`
    /// (upper-cased, [`TRASH`]) that can hold messages; `None` if it lists
    /// none. With SPECIAL-USE, `LIST "" "*" RETURN (SPECIAL-USE)`; a server
    /// without it, or that refuses the return option, is asked a plain
    /// `LIST "" "*"`, in which many servers show the attributes anyway
    /// (Dovecot, Microsoft 365).
    pub fn special_use(&mut self, attribute: &str) -> Result<Option<MailboxName>, ImapError> {
        if self.has("SPECIAL-USE") {
            match self.list_with(b"LIST \"\" \"*\" RETURN (SPECIAL-USE)", attribute) {
                Err(ImapError::Refused { .. }) => {}
                found => return found,
            }
        }
        self.list_with(b"LIST \"\" \"*\"", attribute)
    }

    /// Whether the server moves messages itself (RFC 6851 MOVE).
    pub fn has_move(&self) -> bool {
        self.has("MOVE")
    }

    /// Runs one LIST and keeps the first usable name with `attribute`:
    /// every other line is read and dropped, so a server with thousands of
    /// mailboxes costs time, not memory.
    fn list_with(
        &mut self,
        command: &[u8],
        attribute: &str,
    ) -> Result<Option<MailboxName>, ImapError> {
        let mut found = None;
        self.run("LIST", &[Arg::Text(command)], |r| {
            if let Response::List(ListData { attributes, name }) = r
                && found.is_none()
                && attributes.iter().any(|a| a == attribute)
                && !attributes
                    .iter()
                    .any(|a| NOT_A_MAILBOX.contains(&a.as_str()))
            {
                found = Some(MailboxName(name));
            }
            Ok(())
        })?
        .ok("LIST")?;
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{GREETING, scripted, sent};
    use super::*;

    const SPECIAL_USE: &str = "* OK [CAPABILITY IMAP4rev1 SPECIAL-USE MOVE] ready\r\n";

    #[test]
    fn the_trash_is_found_by_its_attribute_and_kept_as_listed() {
        let (mut c, out) = scripted(&format!(
            "{SPECIAL_USE}* LIST (\\HasNoChildren) \"/\" INBOX\r\n\
             * LIST (\\HasNoChildren \\Sent) \"/\" \"[Gmail]/Gesendet\"\r\n\
             * LIST (\\HasNoChildren \\Trash) \"/\" \"[Gmail]/Gel&APY-scht\"\r\n\
             * LIST (\\Trash) \"/\" \"Second\"\r\n\
             A0001 OK done\r\n"
        ));
        let trash = c.special_use(TRASH).expect("list").expect("a trash");
        assert_eq!(trash.as_bytes(), b"[Gmail]/Gel&APY-scht");
        assert_eq!(trash.to_string(), "\"[Gmail]/Gelöscht\"");
        assert_eq!(sent(&out), "A0001 LIST \"\" \"*\" RETURN (SPECIAL-USE)\r\n");
    }

    #[test]
    fn without_special_use_a_plain_list_is_asked_and_a_literal_name_kept() {
        let (mut c, out) = scripted(&format!(
            "{GREETING}* LIST (\\Noselect \\Trash) \"/\" Gone\r\n\
             * LIST (\\HasNoChildren \\Trash) \"/\" {{13}}\r\nDeleted Items\r\n\
             A0001 OK done\r\n"
        ));
        let trash = c.special_use(TRASH).expect("list").expect("a trash");
        assert_eq!(trash.as_bytes(), b"Deleted Items");
        assert_eq!(sent(&out), "A0001 LIST \"\" \"*\"\r\n");
    }

    #[test]
    fn a_refused_return_option_falls_back_to_a_plain_list() {
        let (mut c, out) = scripted(&format!(
            "{SPECIAL_USE}A0001 BAD unknown return option\r\n\
             * LIST () \".\" INBOX\r\nA0002 OK done\r\n"
        ));
        assert_eq!(c.special_use(TRASH).expect("list"), None);
        assert!(sent(&out).ends_with("A0002 LIST \"\" \"*\"\r\n"));
    }

    #[test]
    fn a_refused_list_is_an_error_not_an_absent_trash() {
        let (mut c, _) = scripted(&format!("{GREETING}A0001 NO not now\r\n"));
        assert!(matches!(
            c.special_use(TRASH),
            Err(ImapError::Refused { .. })
        ));
    }

    #[test]
    fn names_are_the_same_mailbox_byte_for_byte_but_inbox_in_any_case() {
        let inbox = MailboxName::of_folder("INBOX");
        assert!(inbox.is(&MailboxName(b"inbox".to_vec())));
        assert!(MailboxName::of_folder("Gelöscht").is(&MailboxName(b"Gel&APY-scht".to_vec())));
        assert!(!MailboxName::of_folder("Trash").is(&MailboxName(b"trash".to_vec())));
        // Not modified UTF-7: shown as it came.
        assert_eq!(MailboxName(b"a&b".to_vec()).to_string(), "\"a&b\"");
    }
}
