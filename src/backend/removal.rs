//! QUIT's removal of the messages marked by DELE, one folder at a time:
//! the expunge (`delete_action = expunge`), or the move to the Trash folder
//! (`delete_action = trash`; Gmail's expunge only takes the INBOX label
//! away, and the message stays in All Mail). The Trash is `trash_folder`
//! or else the mailbox the backend lists with the `\Trash` attribute (RFC
//! 6154); the move is `UID MOVE` (RFC 6851) where the backend offers MOVE,
//! else `UID COPY` and then the expunge. It decides what each outcome
//! means for the session and logs what only an admin can fix; the
//! connection, its classification and the re-login after a lost one are
//! the caller's (`imap.rs`).

use log::{error, warn};

use super::ExpungeAnswer;
use crate::imap::{Client, Expunged, ImapError, MailboxName, Moved, TRASH};
use crate::logging::uid_list;
use crate::maildrop::FolderDeletions;
use crate::route::{DeleteAction, Routes};

/// How the messages of the backend a session is routed to are removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal<'s> {
    Expunge,
    /// Moved to this folder (`trash_folder`), or to the one listed with
    /// `\Trash`.
    Trash(Option<&'s str>),
}

impl<'s> Removal<'s> {
    /// The removal backend `routed` asks for (the default backend before
    /// any routing).
    pub fn of(routes: &'s Routes, routed: Option<usize>) -> Removal<'s> {
        match routes.backends.get(routed.unwrap_or(0)) {
            Some(b) if b.delete_action == DeleteAction::Trash => {
                Removal::Trash(b.trash_folder.as_deref())
            }
            _ => Removal::Expunge,
        }
    }
}

/// An IMAP error in the middle of a removal: what was being done, and
/// whether some of it may have happened (`unconfirmed`: the client must
/// not be told that nothing was deleted).
#[derive(Debug)]
pub struct Unfinished {
    pub what: String,
    pub error: ImapError,
    pub unconfirmed: bool,
}

impl Unfinished {
    /// Boxed: an error that big would make every `Result` of the removal
    /// as big.
    fn new(what: String, error: ImapError, unconfirmed: bool) -> Box<Unfinished> {
        Box::new(Unfinished {
            what,
            error,
            unconfirmed,
        })
    }
}

/// Removes the messages of `deletions` from `folder`, the folder selected
/// on `client`. `again`: a second attempt after a lost connection, when
/// part of the first may have happened.
pub fn remove(
    client: &mut Client,
    folder: &str,
    removal: Removal<'_>,
    deletions: &FolderDeletions,
    again: bool,
) -> Result<ExpungeAnswer, Box<Unfinished>> {
    let Removal::Trash(configured) = removal else {
        return expunge(client, folder, deletions);
    };
    let trash = match find_trash(client, configured) {
        Ok(Some(trash)) => trash,
        Ok(None) => {
            error!(
                "delete_action = trash, but the backend lists no mailbox with the \\Trash attribute: nothing deleted in {folder:?}; set trash_folder to the name of the Trash folder, or give a mailbox the \\Trash special-use attribute on the backend, or set delete_action = expunge"
            );
            return Ok(ExpungeAnswer::NoTrash);
        }
        Err(error) => {
            return Err(Unfinished::new(
                format!("finding the Trash folder for {folder:?}"),
                error,
                false,
            ));
        }
    };
    // Deleted in the Trash itself: there is nowhere further to move them.
    if trash.is(&MailboxName::of_folder(folder)) {
        return expunge(client, folder, deletions);
    }
    if client.has_move() {
        move_to(client, folder, &trash, deletions)
    } else {
        copy_then_expunge(client, folder, &trash, deletions, again)
    }
}

/// The Trash folder: `trash_folder` where it is set (not checked: a wrong
/// name fails the move, which says so), else the mailbox the backend
/// lists with `\Trash`, if any.
pub fn find_trash(
    client: &mut Client,
    configured: Option<&str>,
) -> Result<Option<MailboxName>, ImapError> {
    match configured {
        Some(name) => Ok(Some(MailboxName::of_folder(name))),
        None => client.special_use(TRASH),
    }
}

/// `UID MOVE`: one command does it all; a repeat after a lost connection
/// finds the messages already moved gone, and the server skips them.
fn move_to(
    client: &mut Client,
    folder: &str,
    trash: &MailboxName,
    deletions: &FolderDeletions,
) -> Result<ExpungeAnswer, Box<Unfinished>> {
    let what = format!("moving messages from {folder:?} to {trash}");
    let error = match client.move_to(&deletions.uids, trash) {
        Ok(Moved::Done) => return Ok(ExpungeAnswer::Expunged),
        Err(error @ ImapError::Refused { .. }) => {
            return Err(Unfinished::new(what, error, false));
        }
        Ok(Moved::Partly(error)) | Err(error) => error,
    };
    warn!(
        "moving messages from {folder:?} to {trash}: the move of UIDs {} (UIDVALIDITY {}) was not confirmed: some may be in the Trash, the others still in {folder:?}",
        uid_list(&deletions.uids),
        deletions.uid_validity
    );
    Err(Unfinished::new(what, error, true))
}

/// Without MOVE: `UID COPY` to the Trash, then the expunge of exactly
/// these messages, with its rules (no other client's `\Deleted` message
/// expunged without UIDPLUS). Until the expunge starts nothing is deleted,
/// so a failed copy leaves the folder as it was (the sets copied before it
/// stay copied in the Trash).
fn copy_then_expunge(
    client: &mut Client,
    folder: &str,
    trash: &MailboxName,
    deletions: &FolderDeletions,
    again: bool,
) -> Result<ExpungeAnswer, Box<Unfinished>> {
    let what = format!("copying messages from {folder:?} to {trash}");
    let mut copy = deletions.uids.clone();
    if again {
        // The first attempt flags `\Deleted` only after every copy went
        // through: a message that carries the flag now is in the Trash
        // already, and a second copy would be a duplicate.
        let flagged = client.flagged_deleted(&copy);
        let mut flagged = flagged.map_err(|error| {
            Unfinished::new(
                format!("looking for the messages of {folder:?} copied before"),
                error,
                false,
            )
        })?;
        flagged.sort_unstable();
        copy.retain(|uid| flagged.binary_search(uid).is_err());
    }
    if !copy.is_empty() {
        client
            .copy_to(&copy, trash)
            .map_err(|error| Unfinished::new(what, error, false))?;
    }
    expunge(client, folder, deletions)
}

/// `\Deleted` and the expunge of exactly these messages (`Client::expunge`).
fn expunge(
    client: &mut Client,
    folder: &str,
    deletions: &FolderDeletions,
) -> Result<ExpungeAnswer, Box<Unfinished>> {
    let what = format!("deleting messages in {folder:?}");
    match client.expunge(&deletions.uids) {
        Ok(Expunged::Done) => Ok(ExpungeAnswer::Expunged),
        Ok(Expunged::LeftFlagged) => {
            warn!(
                "backend has no UIDPLUS and other messages in {folder:?} are flagged \\Deleted: left {} messages flagged, not expunged",
                deletions.uids.len()
            );
            Ok(ExpungeAnswer::LeftFlagged)
        }
        Err(ImapError::Unconfirmed(e)) => {
            warn!(
                "deleting messages in {folder:?}: \\Deleted was set on UIDs {} (UIDVALIDITY {}) but the expunge was not confirmed: they may still be there, flagged, until any client's next expunge",
                uid_list(&deletions.uids),
                deletions.uid_validity
            );
            Err(Unfinished::new(what, *e, true))
        }
        Err(error) => Err(Unfinished::new(what, error, false)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imap::{scripted, sent};
    use crate::route::{Backend, test_backend};

    const WITH_MOVE: &str =
        "* OK [CAPABILITY IMAP4rev1 UIDPLUS MOVE SPECIAL-USE LIST-EXTENDED] ready\r\n";
    const COPY_ONLY: &str = "* OK [CAPABILITY IMAP4rev1 UIDPLUS] ready\r\n";
    const BARE: &str = "* OK [CAPABILITY IMAP4rev1] ready\r\n";
    const TRASH_LISTED: &str = "* LIST (\\HasNoChildren) \".\" INBOX\r\n\
                                * LIST (\\HasNoChildren \\Trash) \".\" \"Gel&APY-scht\"\r\n";

    fn deletions(uids: &[u32]) -> FolderDeletions {
        FolderDeletions {
            folder: 0,
            uid_validity: 7,
            uids: uids.to_vec(),
        }
    }

    fn run(
        script: &str,
        folder: &str,
        removal: Removal<'_>,
        again: bool,
    ) -> (Result<ExpungeAnswer, Box<Unfinished>>, String) {
        let (mut client, out) = scripted(script);
        let answer = remove(&mut client, folder, removal, &deletions(&[3, 4, 9]), again);
        (answer, sent(&out))
    }

    #[test]
    fn with_move_the_listed_trash_gets_exactly_our_uids() {
        let (answer, sent) = run(
            &format!("{WITH_MOVE}{TRASH_LISTED}A0001 OK listed\r\nA0002 OK moved\r\n"),
            "INBOX",
            Removal::Trash(None),
            false,
        );
        assert!(matches!(answer, Ok(ExpungeAnswer::Expunged)), "{answer:?}");
        assert_eq!(
            sent,
            "A0001 LIST \"\" \"*\" RETURN (SPECIAL-USE)\r\n\
             A0002 UID MOVE 3:4,9 \"Gel&APY-scht\"\r\n"
        );
    }

    #[test]
    fn without_move_a_copy_then_the_expunge_of_exactly_ours() {
        let (answer, sent) = run(
            &format!(
                "{COPY_ONLY}{TRASH_LISTED}A0001 OK listed\r\nA0002 OK copied\r\n\
                 A0003 OK stored\r\nA0004 OK expunged\r\n"
            ),
            "INBOX",
            Removal::Trash(None),
            false,
        );
        assert!(matches!(answer, Ok(ExpungeAnswer::Expunged)), "{answer:?}");
        assert_eq!(
            sent,
            "A0001 LIST \"\" \"*\"\r\nA0002 UID COPY 3:4,9 \"Gel&APY-scht\"\r\n\
             A0003 UID STORE 3:4,9 +FLAGS.SILENT (\\Deleted)\r\nA0004 UID EXPUNGE 3:4,9\r\n"
        );
    }

    #[test]
    fn without_move_nor_uidplus_others_flagged_leave_ours_flagged_but_copied() {
        let (answer, sent) = run(
            &format!(
                "{BARE}A0001 OK copied\r\nA0002 OK stored\r\n* SEARCH 3 4 9 12\r\nA0003 OK\r\n"
            ),
            "INBOX",
            Removal::Trash(Some("Trash")),
            false,
        );
        assert!(
            matches!(answer, Ok(ExpungeAnswer::LeftFlagged)),
            "{answer:?}"
        );
        assert!(
            sent.starts_with("A0001 UID COPY 3:4,9 \"Trash\"\r\n"),
            "{sent}"
        );
        assert!(!sent.contains("EXPUNGE"), "{sent}");
    }

    #[test]
    fn a_second_attempt_does_not_copy_again_what_carries_deleted() {
        let (answer, sent) = run(
            &format!(
                "{COPY_ONLY}* SEARCH 3 4\r\nA0001 OK\r\nA0002 OK copied\r\n\
                 A0003 OK stored\r\nA0004 OK expunged\r\n"
            ),
            "INBOX",
            Removal::Trash(Some("Trash")),
            true,
        );
        assert!(matches!(answer, Ok(ExpungeAnswer::Expunged)), "{answer:?}");
        assert!(
            sent.starts_with(
                "A0001 UID SEARCH UID 3:4,9 DELETED\r\nA0002 UID COPY 9 \"Trash\"\r\n"
            ),
            "{sent}"
        );
        // All of them copied before: straight to the expunge.
        let (answer, sent) = run(
            &format!("{COPY_ONLY}* SEARCH 3 4 9\r\nA0001 OK\r\nA0002 OK\r\nA0003 OK\r\n"),
            "INBOX",
            Removal::Trash(Some("Trash")),
            true,
        );
        assert!(matches!(answer, Ok(ExpungeAnswer::Expunged)), "{answer:?}");
        assert!(!sent.contains("COPY"), "{sent}");
    }

    #[test]
    fn no_trash_deletes_nothing() {
        let (answer, sent) = run(
            &format!("{WITH_MOVE}* LIST () \".\" INBOX\r\nA0001 OK listed\r\n"),
            "INBOX",
            Removal::Trash(None),
            false,
        );
        assert!(matches!(answer, Ok(ExpungeAnswer::NoTrash)), "{answer:?}");
        assert_eq!(sent, "A0001 LIST \"\" \"*\" RETURN (SPECIAL-USE)\r\n");
    }

    #[test]
    fn deleted_in_the_trash_itself_they_are_expunged() {
        let (answer, sent) = run(
            &format!("{WITH_MOVE}{TRASH_LISTED}A0001 OK listed\r\nA0002 OK\r\nA0003 OK\r\n"),
            "Gelöscht",
            Removal::Trash(None),
            false,
        );
        assert!(matches!(answer, Ok(ExpungeAnswer::Expunged)), "{answer:?}");
        assert!(sent.ends_with("A0003 UID EXPUNGE 3:4,9\r\n"), "{sent}");
        assert!(!sent.contains("MOVE"), "{sent}");
    }

    #[test]
    fn a_move_without_answer_is_unconfirmed_and_a_refused_one_not() {
        let (answer, _) = run(WITH_MOVE, "INBOX", Removal::Trash(Some("Trash")), false);
        assert!(
            matches!(&answer, Err(u) if u.unconfirmed && matches!(u.error, ImapError::Closed)),
            "{answer:?}"
        );
        let (answer, _) = run(
            &format!("{WITH_MOVE}A0001 NO [TRYCREATE] no such mailbox\r\n"),
            "INBOX",
            Removal::Trash(Some("Trash")),
            false,
        );
        assert!(
            matches!(&answer, Err(u) if !u.unconfirmed && u.what.contains("to \"Trash\"")),
            "{answer:?}"
        );
    }

    #[test]
    fn each_backend_removes_as_its_settings_say() {
        let backend = |name: &str, action, trash: Option<&str>| Backend {
            delete_action: action,
            trash_folder: trash.map(str::to_string),
            ..test_backend(name, 143)
        };
        let routes = Routes {
            backends: vec![
                backend("default", DeleteAction::Expunge, Some("Trash")),
                backend("gmail", DeleteAction::Trash, None),
                backend("m365", DeleteAction::Trash, Some("Deleted Items")),
            ],
            rules: Vec::new(),
            default: Some(0),
        };
        assert_eq!(Removal::of(&routes, None), Removal::Expunge);
        assert_eq!(Removal::of(&routes, Some(1)), Removal::Trash(None));
        assert_eq!(
            Removal::of(&routes, Some(2)),
            Removal::Trash(Some("Deleted Items"))
        );
    }
}
