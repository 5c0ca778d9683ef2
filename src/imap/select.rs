//! Opening the folder and listing its UIDs: SELECT or EXAMINE, `UID
//! SEARCH` (compact with ESEARCH), and both in one write. It owns what a
//! SELECT's answer must say (EXISTS, UIDVALIDITY) and how many messages a
//! folder may yield (`expected`, `too_many`), which bound every listing;
//! it fetches nothing about the messages (`fetch.rs`, `body.rs`).

use log::debug;

use super::client::{Event, unexpected_continuation};
use super::conn::trace_text;
use super::encode::{Arg, astring, mailbox_name, push_quoted};
use super::response::{Code, Response, StatusInfo};
use super::{Client, ImapError};
use crate::limits::{MAX_MESSAGES, MAX_SEARCH_ALL_MESSAGES, SNAPSHOT_SLACK};

#[derive(Debug, PartialEq, Eq)]
pub struct Selected {
    pub exists: u32,
    pub uid_validity: u32,
}

impl Client {
    /// SELECT (or EXAMINE when read-only) the folder.
    pub fn select(&mut self, folder: &str, read_only: bool) -> Result<Selected, ImapError> {
        let (command, verb) = select_verb(read_only);
        let mut facts = SelectFacts::default();
        let name = mailbox_name(folder);
        let done = self.run(command, &[Arg::Text(verb), astring(name.as_bytes())], |r| {
            facts.note(r)
        })?;
        facts.selected(command, done)
    }

    /// SELECT (or EXAMINE) and, in the same write, `UID SEARCH RETURN
    /// (ALL) ALL`: the UID list comes one round trip sooner than after the
    /// SELECT's answer. Only with ESEARCH, whose answer is compact however
    /// big the folder, and a name that needs no literal; otherwise only
    /// the SELECT, and `None` for the UIDs (`uids` gets them).
    pub fn select_with_uids(
        &mut self,
        folder: &str,
        read_only: bool,
    ) -> Result<(Selected, Option<Vec<u32>>), ImapError> {
        let name = mailbox_name(folder);
        let Arg::Quoted(quoted) = astring(name.as_bytes()) else {
            return Ok((self.select(folder, read_only)?, None));
        };
        if !self.has("ESEARCH") {
            return Ok((self.select(folder, read_only)?, None));
        }
        self.settle_prefetch()?;
        self.settle_unanswered()?;
        let (command, verb) = select_verb(read_only);
        self.tag += 1;
        let select_tag = self.current_tag();
        let mut both = Vec::with_capacity(quoted.len() * 2 + 64);
        both.extend_from_slice(select_tag.as_bytes());
        both.push(b' ');
        both.extend_from_slice(verb);
        push_quoted(&mut both, quoted);
        both.extend_from_slice(b"\r\n");
        self.tag += 1;
        let search_tag = self.current_tag();
        both.extend_from_slice(search_tag.as_bytes());
        both.extend_from_slice(b" UID SEARCH RETURN (ALL) ALL\r\n");
        if log::log_enabled!(log::Level::Debug) {
            for line in both.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                debug!("IMAP C: {}", trace_text(line.trim_ascii_end()));
            }
        }
        self.conn.start_deadline();
        self.conn.write_all(&both)?;
        let mut facts = SelectFacts::default();
        // The search starts after the SELECT is done, so its answer comes
        // after the SELECT's; one that came early anyway is kept for it.
        let mut early = Vec::new();
        let on_select = &mut |r| match r {
            Response::Search(found) => {
                early.push(found);
                Ok(())
            }
            other => facts.note(other),
        };
        // A read error ends it here; a continuation, a refusal or a bad
        // answer leave the search's answer to the next command.
        let selected = match self.next_event_for(&select_tag, command, on_select)? {
            Event::Tagged(done) => facts.selected(command, done),
            Event::Continuation => Err(unexpected_continuation(command)),
        };
        let selected = match selected {
            Ok(s) if s.exists <= MAX_MESSAGES => s,
            // The search's answer (a refusal, without a folder) is read by
            // whatever command comes next.
            Ok(s) => {
                self.unanswered = Some((search_tag, "UID SEARCH"));
                return Err(too_many(s.exists));
            }
            Err(e) => {
                self.unanswered = Some((search_tag, "UID SEARCH"));
                return Err(e);
            }
        };
        let uids = self.read_uids(&selected, early)?;
        Ok((selected, Some(uids)))
    }

    /// The UIDs of all messages, ascending, which is message-number order:
    /// compact with ESEARCH (RFC 4731) where offered. `None` where the list
    /// could be longer than a response line may be (no ESEARCH, a huge
    /// folder): then only the full snapshot will do.
    pub fn uids(&mut self, selected: &Selected) -> Result<Option<Vec<u32>>, ImapError> {
        if selected.exists > MAX_MESSAGES {
            return Err(too_many(selected.exists));
        }
        if selected.exists == 0 {
            return Ok(Some(Vec::new()));
        }
        let esearch = self.has("ESEARCH");
        if !esearch && selected.exists > MAX_SEARCH_ALL_MESSAGES {
            return Ok(None);
        }
        let command: &[u8] = if esearch {
            b"UID SEARCH RETURN (ALL) ALL"
        } else {
            b"UID SEARCH ALL"
        };
        let limit = expected(selected.exists);
        let mut uids = Vec::new();
        self.run("UID SEARCH", &[Arg::Text(command)], |r| {
            collect_uids(&mut uids, r, limit, selected)
        })?
        .ok("UID SEARCH")?;
        uids.sort_unstable();
        uids.dedup();
        Ok(Some(uids))
    }

    /// The answer to the `UID SEARCH` that `select_with_uids` sent (the
    /// current tag), after the UIDs of any part of it that came `early`.
    fn read_uids(
        &mut self,
        selected: &Selected,
        early: Vec<Vec<u32>>,
    ) -> Result<Vec<u32>, ImapError> {
        let limit = expected(selected.exists);
        let mut uids = Vec::new();
        for found in early {
            collect_uids(&mut uids, Response::Search(found), limit, selected)?;
        }
        let tag = self.current_tag();
        let on_data = &mut |r| collect_uids(&mut uids, r, limit, selected);
        self.finish_command_for(&tag, "UID SEARCH", on_data)?
            .ok("UID SEARCH")?;
        uids.sort_unstable();
        uids.dedup();
        Ok(uids)
    }
}

/// The command and its verb for opening a folder.
fn select_verb(read_only: bool) -> (&'static str, &'static [u8]) {
    if read_only {
        ("EXAMINE", b"EXAMINE ")
    } else {
        ("SELECT", b"SELECT ")
    }
}

/// What a SELECT's untagged answers say, as they come.
#[derive(Default)]
struct SelectFacts {
    exists: Option<u32>,
    uid_validity: Option<u32>,
}

impl SelectFacts {
    fn note(&mut self, r: Response) -> Result<(), ImapError> {
        match r {
            Response::Exists(n) => self.exists = Some(n),
            Response::Status(StatusInfo {
                code: Some(Code { name, args }),
                ..
            }) if name == "UIDVALIDITY" => {
                self.uid_validity = Some(
                    args.trim()
                        .parse::<u32>()
                        .map_err(|_| ImapError::Protocol(format!("bad UIDVALIDITY {args:?}")))?,
                );
            }
            _ => {}
        }
        Ok(())
    }

    fn selected(self, command: &'static str, done: StatusInfo) -> Result<Selected, ImapError> {
        done.ok(command)?;
        Ok(Selected {
            exists: self
                .exists
                .ok_or_else(|| ImapError::Protocol(format!("{command} gave no EXISTS")))?,
            uid_validity: self
                .uid_validity
                .ok_or_else(|| ImapError::Protocol(format!("{command} gave no UIDVALIDITY")))?,
        })
    }
}

/// One untagged answer to a `UID SEARCH`: its UIDs are added, up to
/// `limit` (a flood is an error).
fn collect_uids(
    uids: &mut Vec<u32>,
    r: Response,
    limit: usize,
    selected: &Selected,
) -> Result<(), ImapError> {
    if let Response::Search(found) = r {
        if uids.len() + found.len() > limit {
            return Err(ImapError::Protocol(format!(
                "more UIDs than the {} messages announced",
                selected.exists
            )));
        }
        uids.extend(found);
    }
    Ok(())
}

/// How many messages a folder announced with `exists` may yield, with room
/// for mail that arrives meanwhile.
pub(super) fn expected(exists: u32) -> usize {
    (exists as usize)
        .saturating_mul(2)
        .saturating_add(SNAPSHOT_SLACK)
        .min(MAX_MESSAGES as usize)
}

pub(super) fn too_many(exists: u32) -> ImapError {
    ImapError::Protocol(format!(
        "the folder has {exists} messages, more than the {MAX_MESSAGES} a POP3 session can serve"
    ))
}

#[cfg(test)]
mod tests {
    use super::super::tests::{GREETING, scripted, sent};
    use super::*;
    use crate::maildrop::BackendMessage;

    #[test]
    fn uid_list_uses_esearch_where_offered_and_sizes_only_what_is_asked() {
        let plain = Selected {
            exists: 3,
            uid_validity: 7,
        };
        let (mut c, out) = scripted(&format!(
            "{GREETING}* SEARCH 9 4 12\r\nA0001 OK done\r\n\
             * 2 FETCH (UID 9 RFC822.SIZE 90)\r\n* 3 FETCH (RFC822.SIZE 120 UID 12)\r\nA0002 OK done\r\n"
        ));
        assert_eq!(c.uids(&plain).expect("uids"), Some(vec![4, 9, 12]));
        assert_eq!(
            c.sizes(&[9, 12]).expect("sizes"),
            vec![
                BackendMessage { uid: 9, size: 90 },
                BackendMessage { uid: 12, size: 120 }
            ]
        );
        let text = sent(&out);
        assert!(
            text.contains("A0001 UID SEARCH ALL\r\nA0002 UID FETCH 9,12 (UID RFC822.SIZE)\r\n"),
            "{text}"
        );

        let (mut c, out) = scripted(
            "* OK [CAPABILITY IMAP4rev1 ESEARCH] ready\r\n\
             * ESEARCH (TAG \"A0001\") UID ALL 4,9,12\r\nA0001 OK done\r\n",
        );
        assert_eq!(c.uids(&plain).expect("uids"), Some(vec![4, 9, 12]));
        assert!(sent(&out).contains("A0001 UID SEARCH RETURN (ALL) ALL\r\n"));

        // Without ESEARCH a huge folder's list would not fit one line.
        let (mut c, _) = scripted(GREETING);
        let huge = Selected {
            exists: MAX_SEARCH_ALL_MESSAGES + 1,
            uid_validity: 7,
        };
        assert_eq!(c.uids(&huge).expect("uids"), None);
        // A backend must not list more UIDs than it announced (and slack).
        let (mut c, _) = scripted(&format!(
            "{GREETING}* SEARCH {}\r\nA0001 OK\r\n",
            (1..=1100)
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        ));
        let small = Selected {
            exists: 1,
            uid_validity: 7,
        };
        assert!(matches!(c.uids(&small), Err(ImapError::Protocol(e)) if e.contains("more UIDs")));
    }

    #[test]
    fn select_and_uid_search_go_in_one_write_with_esearch() {
        const ESEARCH: &str = "* OK [CAPABILITY IMAP4rev1 ESEARCH] ready\r\n";
        let (mut c, out) = scripted(&format!(
            "{ESEARCH}* 3 EXISTS\r\n* OK [UIDVALIDITY 7] ok\r\nA0001 OK [READ-WRITE] done\r\n\
             * ESEARCH (TAG \"A0002\") UID ALL 4,9:10\r\nA0002 OK done\r\n"
        ));
        let (selected, uids) = c.select_with_uids("INBOX", false).expect("select");
        assert_eq!((selected.exists, selected.uid_validity), (3, 7));
        assert_eq!(uids, Some(vec![4, 9, 10]));
        assert_eq!(
            sent(&out),
            "A0001 SELECT \"INBOX\"\r\nA0002 UID SEARCH RETURN (ALL) ALL\r\n"
        );

        // A server that answers the search before the SELECT is done.
        let (mut c, _) = scripted(&format!(
            "{ESEARCH}* 2 EXISTS\r\n* OK [UIDVALIDITY 7] ok\r\n\
             * ESEARCH (TAG \"A0002\") UID ALL 4,9\r\nA0001 OK done\r\nA0002 OK done\r\n"
        ));
        let (_, uids) = c.select_with_uids("INBOX", false).expect("select");
        assert_eq!(uids, Some(vec![4, 9]));

        // A refused SELECT: the search's refusal is read by the next command.
        let (mut c, out) = scripted(&format!(
            "{ESEARCH}A0001 NO [NONEXISTENT] no such folder\r\nA0002 BAD no folder selected\r\n\
             * 0 EXISTS\r\n* OK [UIDVALIDITY 8] ok\r\nA0003 OK done\r\n"
        ));
        assert!(matches!(
            c.select_with_uids("Gone", true),
            Err(ImapError::Refused {
                command: "EXAMINE",
                ..
            })
        ));
        let selected = c.select("INBOX", true).expect("the next command");
        assert_eq!((selected.exists, selected.uid_validity), (0, 8));
        assert!(sent(&out).ends_with("A0003 EXAMINE \"INBOX\"\r\n"));

        // Without ESEARCH, or for a name sent as a literal: the SELECT alone.
        let (mut c, out) = scripted(&format!(
            "{GREETING}* 1 EXISTS\r\n* OK [UIDVALIDITY 7] ok\r\nA0001 OK done\r\n"
        ));
        let (_, uids) = c.select_with_uids("INBOX", false).expect("select");
        assert_eq!(
            (uids, sent(&out)),
            (None, "A0001 SELECT \"INBOX\"\r\n".to_string())
        );
    }
}
