//! Flags and removal: `\Seen` for bodies read with a peek, `\Deleted` and
//! EXPUNGE for exactly the messages the POP3 client deleted, or their move
//! (`UID MOVE`, RFC 6851) or copy (`UID COPY`) to another mailbox, and the
//! UID sets these commands name, split so that no command line grows too
//! long. It owns the promises that another client's `\Deleted` messages are
//! never expunged and that our flags are taken back when an expunge is
//! refused; nothing may expunge by another path (never CLOSE).

use super::encode::{Arg, astring};
use super::mailboxes::MailboxName;
use super::response::Response;
use super::{Client, ImapError};
use crate::limits::MAX_UID_SET;

#[derive(Debug, PartialEq, Eq)]
pub enum Expunged {
    Done,
    /// Without UIDPLUS another client's `\Deleted` messages were present:
    /// ours stay flagged rather than expunging theirs.
    LeftFlagged,
}

/// How far a move of several UID sets got.
#[derive(Debug)]
pub enum Moved {
    Done,
    /// The first sets were moved, then this error stopped the rest: some
    /// messages are in the other mailbox, the others perhaps not.
    Partly(ImapError),
}

impl Client {
    /// Sets `\Seen` on messages whose bodies were read with `BODY.PEEK[]`
    /// (fetched ahead) for a RETR that should have set it; split like the
    /// expunge's sets.
    pub fn mark_seen(&mut self, uids: &[u32]) -> Result<(), ImapError> {
        for set in uid_sets(uids, MAX_UID_SET) {
            let store = format!("UID STORE {set} +FLAGS.SILENT (\\Seen)");
            self.run("UID STORE", &[Arg::Text(store.as_bytes())], |_| Ok(()))?
                .ok("UID STORE")?;
        }
        Ok(())
    }

    /// Removes exactly these messages: `\Deleted` then `UID EXPUNGE`; without
    /// UIDPLUS a plain EXPUNGE only if no other message is `\Deleted`. UID
    /// sets are split so that no command line exceeds `MAX_UID_SET` (servers
    /// refuse long lines, and then no QUIT could ever succeed).
    pub fn expunge(&mut self, uids: &[u32]) -> Result<Expunged, ImapError> {
        if uids.is_empty() {
            return Ok(Expunged::Done);
        }
        let sets = uid_sets(uids, MAX_UID_SET);
        for (i, set) in sets.iter().enumerate() {
            let store = format!("UID STORE {set} +FLAGS.SILENT (\\Deleted)");
            match self
                .run("UID STORE", &[Arg::Text(store.as_bytes())], |_| Ok(()))
                .and_then(|done| done.ok("UID STORE"))
            {
                Ok(_) => {}
                Err(e @ ImapError::Refused { .. }) => {
                    self.unflag(&sets[..i]);
                    return Err(e);
                }
                // Without an answer the flags of this set may be on.
                Err(e) => return Err(ImapError::Unconfirmed(Box::new(e))),
            }
        }
        match self.expunge_flagged(uids, &sets) {
            Err(e @ ImapError::Refused { .. }) => {
                // The backend still answers: take our flags back, or another
                // client's next expunge would remove messages the POP3 client
                // was told are kept. Nothing more can be done if this fails.
                self.unflag(&sets);
                Err(e)
            }
            Err(e) => Err(ImapError::Unconfirmed(Box::new(e))),
            done => done,
        }
    }

    /// Moves exactly these messages to `to` (`UID MOVE`, RFC 6851), split
    /// like the expunge's sets. A UID that is no longer in the folder is
    /// skipped by the server without an error (RFC 3501 6.4.8), so a repeat
    /// after a lost connection moves what is left and nothing twice. `Err`
    /// on the first set: a refusal moved nothing; without an answer (the
    /// connection broke) the set may have been moved or not.
    pub fn move_to(&mut self, uids: &[u32], to: &MailboxName) -> Result<Moved, ImapError> {
        for (i, set) in uid_sets(uids, MAX_UID_SET).iter().enumerate() {
            let command = format!("UID MOVE {set} ");
            let args = [Arg::Text(command.as_bytes()), astring(to.as_bytes())];
            match self
                .run("UID MOVE", &args, |_| Ok(()))
                .and_then(|done| done.ok("UID MOVE"))
            {
                Ok(_) => {}
                Err(e) if i == 0 => return Err(e),
                Err(e) => return Ok(Moved::Partly(e)),
            }
        }
        Ok(Moved::Done)
    }

    /// Copies exactly these messages to `to` (`UID COPY`), set by set, and
    /// changes nothing in the folder; UIDs no longer there are skipped.
    /// After an error the sets copied before it stay copied in `to`.
    pub fn copy_to(&mut self, uids: &[u32], to: &MailboxName) -> Result<(), ImapError> {
        for set in uid_sets(uids, MAX_UID_SET) {
            let command = format!("UID COPY {set} ");
            let args = [Arg::Text(command.as_bytes()), astring(to.as_bytes())];
            self.run("UID COPY", &args, |_| Ok(()))?.ok("UID COPY")?;
        }
        Ok(())
    }

    /// Which of `uids` carry `\Deleted` now (`UID SEARCH UID set DELETED`).
    pub fn flagged_deleted(&mut self, uids: &[u32]) -> Result<Vec<u32>, ImapError> {
        let mut flagged = Vec::new();
        for set in uid_sets(uids, MAX_UID_SET) {
            let search = format!("UID SEARCH UID {set} DELETED");
            self.run("UID SEARCH", &[Arg::Text(search.as_bytes())], |r| {
                if let Response::Search(found) = r {
                    flagged.extend(found);
                }
                Ok(())
            })?
            .ok("UID SEARCH")?;
        }
        Ok(flagged)
    }

    fn unflag(&mut self, sets: &[String]) {
        for set in sets {
            let unstore = format!("UID STORE {set} -FLAGS.SILENT (\\Deleted)");
            let _ = self.run("UID STORE", &[Arg::Text(unstore.as_bytes())], |_| Ok(()));
        }
    }

    /// The expunge proper, once our messages carry `\Deleted`. With UIDPLUS
    /// set by set: a refusal after some sets went through is reported as
    /// unconfirmed (some are gone, some not).
    fn expunge_flagged(&mut self, uids: &[u32], sets: &[String]) -> Result<Expunged, ImapError> {
        if self.has("UIDPLUS") {
            for (i, set) in sets.iter().enumerate() {
                let expunge = format!("UID EXPUNGE {set}");
                match self
                    .run("UID EXPUNGE", &[Arg::Text(expunge.as_bytes())], |_| Ok(()))
                    .and_then(|done| done.ok("UID EXPUNGE"))
                {
                    Ok(_) => {}
                    Err(e @ ImapError::Refused { .. }) if i > 0 => {
                        self.unflag(&sets[i..]);
                        return Err(ImapError::Unconfirmed(Box::new(e)));
                    }
                    Err(e) => return Err(e),
                }
            }
            return Ok(Expunged::Done);
        }
        let mut flagged = Vec::new();
        self.run("UID SEARCH", &[Arg::Text(b"UID SEARCH DELETED")], |r| {
            if let Response::Search(found) = r {
                flagged.extend(found);
            }
            Ok(())
        })?
        .ok("UID SEARCH")?;
        let mut ours = uids.to_vec();
        ours.sort_unstable();
        if flagged.iter().any(|u| ours.binary_search(u).is_err()) {
            return Ok(Expunged::LeftFlagged);
        }
        self.run("EXPUNGE", &[Arg::Text(b"EXPUNGE")], |_| Ok(()))?
            .ok("EXPUNGE")?;
        Ok(Expunged::Done)
    }
}

/// UID sets like `1:3,7,9:10` from sorted or unsorted UIDs, each at most
/// `max` bytes long (a set is never split inside a range).
pub(super) fn uid_sets(uids: &[u32], max: usize) -> Vec<String> {
    let mut sorted = uids.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut sets = Vec::new();
    let mut out = String::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        let range = if start == end {
            start.to_string()
        } else {
            format!("{start}:{end}")
        };
        if !out.is_empty() && out.len() + 1 + range.len() > max {
            sets.push(std::mem::take(&mut out));
        }
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(&range);
        i += 1;
    }
    if !out.is_empty() {
        sets.push(out);
    }
    sets
}

#[cfg(test)]
mod tests {
    use super::super::tests::{GREETING, scripted, sent};
    use super::*;
    use crate::secret::Secret;

    #[test]
    fn expunge_with_uidplus_names_exactly_our_uids() {
        let greeting = "* OK [CAPABILITY IMAP4rev1 UIDPLUS] ready\r\n";
        let (mut c, out) = scripted(&format!(
            "{greeting}A0001 OK stored\r\nA0002 OK expunged\r\n"
        ));
        assert_eq!(
            c.expunge(&[7, 3, 4, 5, 9]).expect("expunge"),
            Expunged::Done
        );
        assert_eq!(
            sent(&out),
            "A0001 UID STORE 3:5,7,9 +FLAGS.SILENT (\\Deleted)\r\nA0002 UID EXPUNGE 3:5,7,9\r\n"
        );
    }

    #[test]
    fn a_refused_expunge_takes_our_deleted_flags_back() {
        let greeting = "* OK [CAPABILITY IMAP4rev1 UIDPLUS] ready\r\n";
        let (mut c, out) = scripted(&format!(
            "{greeting}A0001 OK stored\r\nA0002 NO no\r\nA0003 OK unstored\r\n"
        ));
        assert!(matches!(c.expunge(&[3, 4]), Err(ImapError::Refused { .. })));
        assert!(sent(&out).ends_with(
            "A0002 UID EXPUNGE 3:4\r\nA0003 UID STORE 3:4 -FLAGS.SILENT (\\Deleted)\r\n"
        ));
    }

    #[test]
    fn without_uidplus_expunge_only_if_no_other_message_is_deleted() {
        let (mut c, out) = scripted(&format!(
            "{GREETING}A0001 OK\r\n* SEARCH 3 4\r\nA0002 OK\r\nA0003 OK\r\n"
        ));
        assert_eq!(c.expunge(&[3, 4]).expect("expunge"), Expunged::Done);
        assert!(sent(&out).ends_with("A0002 UID SEARCH DELETED\r\nA0003 EXPUNGE\r\n"));
        let (mut c, out) = scripted(&format!(
            "{GREETING}A0001 OK\r\n* SEARCH 3 4 8\r\nA0002 OK\r\n"
        ));
        assert_eq!(c.expunge(&[3, 4]).expect("expunge"), Expunged::LeftFlagged);
        assert!(!sent(&out).contains("EXPUNGE"));
    }

    #[test]
    fn a_move_names_exactly_our_uids_and_the_mailbox_as_listed() {
        let (mut c, out) = scripted(&format!(
            "{GREETING}* OK [COPYUID 9 3:4 1:2] moved\r\n* 1 EXPUNGE\r\n* 1 EXPUNGE\r\n\
             A0001 OK done\r\nA0002 OK No messages found\r\n"
        ));
        let trash = MailboxName::of_folder("Gelöschte Elemente");
        assert!(matches!(c.move_to(&[4, 3], &trash), Ok(Moved::Done)));
        // Again, after a lost answer: the server skips the UIDs now gone.
        assert!(matches!(c.move_to(&[4, 3], &trash), Ok(Moved::Done)));
        assert_eq!(
            sent(&out),
            "A0001 UID MOVE 3:4 \"Gel&APY-schte Elemente\"\r\n\
             A0002 UID MOVE 3:4 \"Gel&APY-schte Elemente\"\r\n"
        );
    }

    #[test]
    fn a_move_refused_first_is_an_error_and_later_a_partial_move() {
        let (mut c, _) = scripted(&format!("{GREETING}A0001 NO [TRYCREATE] no such\r\n"));
        let trash = MailboxName::of_folder("Trash");
        assert!(matches!(
            c.move_to(&[1], &trash),
            Err(ImapError::Refused { .. })
        ));
        let uids: Vec<u32> = (1..4000).step_by(2).collect();
        assert!(uid_sets(&uids, MAX_UID_SET).len() >= 2);
        let (mut c, _) = scripted(&format!(
            "{GREETING}A0001 OK moved\r\nA0002 NO over quota\r\n"
        ));
        assert!(matches!(
            c.move_to(&uids, &trash),
            Ok(Moved::Partly(ImapError::Refused { .. }))
        ));
        // No answer at all: an error, the caller cannot know.
        let (mut c, _) = scripted(GREETING);
        assert!(matches!(c.move_to(&[1], &trash), Err(ImapError::Closed)));
    }

    #[test]
    fn a_copy_then_the_search_of_what_is_flagged_name_our_uids() {
        let (mut c, out) = scripted(&format!(
            "{GREETING}A0001 OK copied\r\n* SEARCH 5\r\nA0002 OK done\r\n"
        ));
        c.copy_to(&[5, 6, 7], &MailboxName::of_folder("Trash"))
            .expect("copy");
        assert_eq!(c.flagged_deleted(&[5, 7]).expect("search"), vec![5]);
        assert_eq!(
            sent(&out),
            "A0001 UID COPY 5:7 \"Trash\"\r\nA0002 UID SEARCH UID 5,7 DELETED\r\n"
        );
    }

    #[test]
    fn a_listed_name_no_quoted_string_may_carry_goes_back_as_a_literal() {
        // 8-bit bytes (a server that sends UTF-8 names): never inside quotes.
        let (mut c, out) = scripted(&format!(
            "{GREETING}* LIST (\\Trash) \"/\" {{5}}\r\nMüll\r\nA0001 OK listed\r\n\
             + go ahead\r\nA0002 OK moved\r\n"
        ));
        let trash = c
            .special_use(super::super::mailboxes::TRASH)
            .expect("list")
            .expect("a trash");
        assert!(matches!(c.move_to(&[1], &trash), Ok(Moved::Done)));
        assert!(sent(&out).ends_with("A0002 UID MOVE 1 {5}\r\nMüll\r\n"));
    }

    #[test]
    fn uid_sets_are_compressed() {
        assert_eq!(uid_sets(&[1], MAX_UID_SET), vec!["1"]);
        assert_eq!(
            uid_sets(&[5, 1, 2, 3, 9, 10], MAX_UID_SET),
            vec!["1:3,5,9:10"]
        );
    }

    #[test]
    fn long_uid_sets_are_split_without_splitting_a_range() {
        assert_eq!(uid_sets(&[3, 1, 2, 7, 9, 10], 100), vec!["1:3,7,9:10"]);
        let every_other: Vec<u32> = (1..20_000).step_by(2).collect();
        let sets = uid_sets(&every_other, MAX_UID_SET);
        assert!(sets.len() > 1);
        assert!(
            sets.iter().all(|s| s.len() <= MAX_UID_SET),
            "a set is too long"
        );
        let back: Vec<u32> = sets
            .iter()
            .flat_map(|s| s.split(','))
            .map(|u| u.parse().expect("single uids"))
            .collect();
        assert_eq!(back, every_other);
    }

    #[test]
    fn a_long_deletion_is_flagged_and_expunged_set_by_set() {
        let uids: Vec<u32> = (1..4000).step_by(2).collect();
        let n = uid_sets(&uids, MAX_UID_SET).len();
        assert!(n >= 2, "{n}");
        let mut script = format!("{GREETING}A0001 OK [CAPABILITY IMAP4rev1 UIDPLUS] in\r\n");
        for i in 0..2 * n {
            script.push_str(&format!("A{:04} OK done\r\n", i + 2));
        }
        let (mut c, out) = scripted(&script);
        c.login(b"u", None, &Secret::new(b"p".to_vec()))
            .expect("login");
        assert_eq!(c.expunge(&uids).expect("expunge"), Expunged::Done);
        let sent = sent(&out);
        let lines: Vec<&str> = sent.lines().skip(1).collect();
        assert_eq!(lines.len(), 2 * n);
        assert!(
            lines.iter().all(|l| l.len() < 8192),
            "a command line over 8 KiB"
        );
        assert!(
            lines[..n]
                .iter()
                .all(|l| l.contains("UID STORE ") && l.contains("+FLAGS"))
        );
        assert!(lines[n..].iter().all(|l| l.contains("UID EXPUNGE ")));
    }
}
