//! What a listing needs of the messages, without their bodies: UIDs and
//! sizes (`UID FETCH ... (UID RFC822.SIZE)`), the headers for digests, and
//! Gmail's message ids. It owns the checks that keep a broken backend's
//! answers from landing on the wrong message or filling memory (a fact
//! without its UID, one message with two UIDs, a flood); it never fetches a
//! body (`body.rs`) and never sets a flag (`store.rs`).

use super::encode::Arg;
use super::response::{FetchData, Response};
use super::select::{Selected, expected, too_many};
use super::store::uid_sets;
use super::{Client, ImapError};
use crate::limits::{MAX_DIGESTED_HEADER, MAX_MESSAGES, MAX_UID_SET, SNAPSHOT_SLACK};
use crate::maildrop::BackendMessage;

/// The capability of Gmail's IMAP extensions, `X-GM-MSGID` among them.
pub const GMAIL_CAPABILITY: &str = "X-GM-EXT-1";

impl Client {
    /// UIDs and sizes of all messages, in one command, without bodies.
    pub fn snapshot(&mut self, selected: &Selected) -> Result<Vec<BackendMessage>, ImapError> {
        if selected.exists > MAX_MESSAGES {
            return Err(too_many(selected.exists));
        }
        if selected.exists == 0 {
            return Ok(Vec::new());
        }
        self.fetch_sizes(b"1:*", expected(selected.exists))
    }

    /// The sizes of these messages (UIDs); a UID expunged meanwhile is
    /// simply absent from the answer.
    pub fn sizes(&mut self, uids: &[u32]) -> Result<Vec<BackendMessage>, ImapError> {
        let mut out = Vec::with_capacity(uids.len());
        for set in uid_sets(uids, MAX_UID_SET) {
            out.extend(self.fetch_sizes(set.as_bytes(), uids.len() + SNAPSHOT_SLACK)?);
        }
        Ok(out)
    }

    /// The backend offers `X-GM-MSGID` (a fetch item of Gmail's extension
    /// `X-GM-EXT-1`): without it, `gmail_msgids` would only be refused.
    pub fn has_gmail_ext(&self) -> bool {
        self.has(GMAIL_CAPABILITY)
    }

    /// Gmail's message id of each of these messages (UIDs), by
    /// `UID FETCH <set> (UID X-GM-MSGID)`: one command for a whole folder
    /// (split only where the set would be too long a line). A UID expunged
    /// meanwhile is simply absent.
    pub fn gmail_msgids(&mut self, uids: &[u32]) -> Result<Vec<(u32, u64)>, ImapError> {
        let mut out = Vec::with_capacity(uids.len());
        let limit = uids.len() + SNAPSHOT_SLACK;
        for set in uid_sets(uids, MAX_UID_SET) {
            self.run(
                "UID FETCH",
                &[
                    Arg::Text(b"UID FETCH "),
                    Arg::Text(set.as_bytes()),
                    Arg::Text(b" (UID X-GM-MSGID)"),
                ],
                |r| {
                    if let Response::Fetch(FetchData {
                        uid,
                        gm_msgid: Some(id),
                        seq,
                        ..
                    }) = r
                    {
                        let uid = uid.ok_or_else(|| no_uid("X-GM-MSGID", seq))?;
                        if out.len() >= limit {
                            return Err(flood(limit));
                        }
                        out.push((uid, id));
                    }
                    Ok(())
                },
            )?
            .ok("UID FETCH")?;
        }
        Ok(out)
    }

    /// The header block of each of these messages (UIDs), at most its first
    /// `MAX_DIGESTED_HEADER` bytes, by
    /// `UID FETCH <set> (UID BODY.PEEK[HEADER]<0.max>)` (no `\Seen`): one command
    /// for a whole folder, each header handed to `each` as its response
    /// arrives and then dropped, so memory holds one header at a time. A
    /// UID expunged meanwhile (no header, or NIL) is simply not handed on.
    pub fn fetch_headers(
        &mut self,
        uids: &[u32],
        mut each: impl FnMut(u32, &[u8]),
    ) -> Result<(), ImapError> {
        let limit = uids.len() + SNAPSHOT_SLACK;
        let header_item = format!(" (UID BODY.PEEK[HEADER]<0.{MAX_DIGESTED_HEADER}>)");
        let mut count = 0usize;
        for set in uid_sets(uids, MAX_UID_SET) {
            self.run(
                "UID FETCH",
                &[
                    Arg::Text(b"UID FETCH "),
                    Arg::Text(set.as_bytes()),
                    Arg::Text(header_item.as_bytes()),
                ],
                |r| {
                    if let Response::Fetch(FetchData {
                        uid,
                        header: Some(header),
                        seq,
                        ..
                    }) = r
                    {
                        let uid = uid.ok_or_else(|| no_uid("BODY[HEADER]", seq))?;
                        count += 1;
                        if count > limit {
                            return Err(flood(limit));
                        }
                        if let Some(header) = header {
                            each(uid, &header);
                        }
                    }
                    Ok(())
                },
            )?
            .ok("UID FETCH")?;
        }
        Ok(())
    }

    /// `UID FETCH <set> (UID RFC822.SIZE)`; at most `limit` messages.
    fn fetch_sizes(&mut self, set: &[u8], limit: usize) -> Result<Vec<BackendMessage>, ImapError> {
        // By sequence number: a server may send one message's UID and
        // RFC822.SIZE in two FETCH responses, and a message must not drop
        // out of the snapshot because of that. Servers answer in order, one
        // response a message: a list merged at the end, not a map, costs
        // one allocation for 10,000 messages.
        let mut seen = SeqFacts::default();
        self.run(
            "UID FETCH",
            &[
                Arg::Text(b"UID FETCH "),
                Arg::Text(set),
                Arg::Text(b" (UID RFC822.SIZE)"),
            ],
            |r| {
                if let Response::Fetch(FetchData { seq, uid, size, .. }) = r {
                    if uid.is_none() && size.is_none() {
                        return Ok(()); // only flags: not for us
                    }
                    // Memory is bounded by what SELECT announced (with room
                    // for mail that arrived meanwhile), not by the backend.
                    seen.add(seq, uid, size, limit)?;
                }
                Ok(())
            },
        )?
        .ok("UID FETCH")?;
        let mut messages = Vec::with_capacity(seen.0.len());
        for (seq, uid, size) in seen.merged(limit)? {
            match (uid, size) {
                (Some(uid), Some(size)) => messages.push(BackendMessage { uid, size }),
                (Some(uid), None) => {
                    return Err(ImapError::Protocol(format!(
                        "the backend gave no RFC822.SIZE for UID {uid}: the maildrop cannot be listed"
                    )));
                }
                (None, _) => {
                    return Err(ImapError::Protocol(format!(
                        "the backend gave a size but no UID for message {seq}"
                    )));
                }
            }
        }
        Ok(messages)
    }
}

/// The UID and size of each message by sequence number, as FETCH
/// responses give them: in order, each message once, as a rule, but a
/// message may come in several responses, anywhere.
#[derive(Default)]
struct SeqFacts(Vec<SeqFact>);

/// (sequence number, UID, RFC822.SIZE).
type SeqFact = (u32, Option<u32>, Option<u64>);

impl SeqFacts {
    /// Past `limit` + 1 messages, an error.
    fn add(
        &mut self,
        seq: u32,
        uid: Option<u32>,
        size: Option<u64>,
        limit: usize,
    ) -> Result<(), ImapError> {
        match self.0.last_mut() {
            Some(last) if last.0 == seq => merge_facts(last, uid, size)?,
            _ => self.0.push((seq, uid, size)),
        }
        // Repeats out of order count once: merged, then counted, when the
        // list has grown to twice the bound (so merging stays linear
        // overall whatever the backend sends).
        if self.0.len() > 2 * (limit + 1) {
            self.0 = std::mem::take(self).merged(limit)?;
        }
        Ok(())
    }

    /// One entry per message, by sequence number; more than `limit` + 1:
    /// an error.
    fn merged(mut self, limit: usize) -> Result<Vec<SeqFact>, ImapError> {
        // Stable, and linear on what is sorted already.
        self.0.sort_by_key(|e| e.0);
        let mut out: Vec<SeqFact> = Vec::with_capacity(self.0.len());
        for (seq, uid, size) in self.0 {
            match out.last_mut() {
                Some(last) if last.0 == seq => merge_facts(last, uid, size)?,
                _ => out.push((seq, uid, size)),
            }
        }
        if out.len() > limit + 1 {
            return Err(ImapError::Protocol(format!(
                "more FETCH responses than the {limit} messages expected"
            )));
        }
        Ok(out)
    }
}

fn merge_facts(entry: &mut SeqFact, uid: Option<u32>, size: Option<u64>) -> Result<(), ImapError> {
    if let (Some(old), Some(new)) = (entry.1, uid)
        && old != new
    {
        return Err(ImapError::Protocol(format!(
            "message {} has UID {old} and UID {new}",
            entry.0
        )));
    }
    entry.1 = entry.1.or(uid);
    entry.2 = entry.2.or(size);
    Ok(())
}

/// A fact (`item`) for message `seq` without its UID: whose it is cannot be
/// known, and a fact given to the wrong message would be a wrong UIDL.
fn no_uid(item: &str, seq: u32) -> ImapError {
    ImapError::Protocol(format!(
        "the backend gave {item} but no UID for message {seq}"
    ))
}

/// More FETCH responses than messages asked for (with slack for mail that
/// arrived meanwhile): a broken backend, whose flood must not fill memory.
fn flood(limit: usize) -> ImapError {
    ImapError::Protocol(format!(
        "more FETCH responses than the {limit} messages expected"
    ))
}

#[cfg(test)]
mod tests {
    use super::super::tests::{GREETING, scripted, sent};
    use super::*;

    #[test]
    fn headers_and_gmail_ids_come_from_one_fetch_each() {
        let (mut c, out) = scripted(&format!(
            "{GREETING}* 1 FETCH (UID 4 BODY[HEADER] {{12}}\r\nSubject: a\r\n)\r\n\
             * 2 FETCH (UID 9 BODY[HEADER]<0> NIL)\r\n* 3 FETCH (FLAGS (\\Seen))\r\n\
             * 4 FETCH (UID 12 BODY[HEADER] {{0}}\r\n)\r\nA0001 OK done\r\n\
             * 1 FETCH (UID 4 X-GM-MSGID 1152921504606846980)\r\nA0002 OK done\r\n\
             * 1 FETCH (BODY[HEADER] {{1}}\r\nx)\r\nA0003 OK done\r\n"
        ));
        assert!(!c.has_gmail_ext());
        let mut got = Vec::new();
        c.fetch_headers(&[4, 9, 12], |uid, h| got.push((uid, h.to_vec())))
            .expect("headers");
        assert_eq!(got, vec![(4, b"Subject: a\r\n".to_vec()), (12, Vec::new())]);
        assert_eq!(
            c.gmail_msgids(&[4]).expect("ids"),
            vec![(4, 0x1000_0000_0000_0004)]
        );
        // A header without its UID could be anyone's.
        assert!(matches!(
            c.fetch_headers(&[4], |_, _| {}),
            Err(ImapError::Protocol(e)) if e.contains("no UID")
        ));
        let text = sent(&out);
        assert!(
            text.contains(
                "A0001 UID FETCH 4,9,12 (UID BODY.PEEK[HEADER]<0.196608>)\r\nA0002 UID FETCH 4 (UID X-GM-MSGID)\r\n"
            ),
            "{text}"
        );
        let (c, _) = scripted("* OK [CAPABILITY IMAP4rev1 X-GM-EXT-1] gimap ready\r\n");
        assert!(c.has_gmail_ext());
    }

    #[test]
    fn a_backend_flooding_the_snapshot_is_stopped() {
        let flood: String = (1..=1100)
            .map(|n| format!("* {n} FETCH (UID {n} RFC822.SIZE 1)\r\n"))
            .collect();
        let (mut c, _) = scripted(&format!("{GREETING}{flood}A0001 OK done\r\n"));
        let sel = Selected {
            exists: 1,
            uid_validity: 1,
        };
        assert!(matches!(c.snapshot(&sel), Err(ImapError::Protocol(_))));
    }

    #[test]
    fn a_message_whose_uid_and_size_come_in_two_responses_stays_in_the_snapshot() {
        let (mut c, _) = scripted(&format!(
            "{GREETING}* 1 FETCH (UID 7)\r\n* 2 FETCH (UID 9 RFC822.SIZE 20)\r\n\
             * 1 FETCH (RFC822.SIZE 10)\r\n* 2 FETCH (FLAGS (\\Seen))\r\nA0001 OK done\r\n\
             * 1 FETCH (UID 7)\r\nA0002 OK done\r\n"
        ));
        let sel = Selected {
            exists: 2,
            uid_validity: 1,
        };
        assert_eq!(
            c.snapshot(&sel).expect("snapshot"),
            vec![
                BackendMessage { uid: 7, size: 10 },
                BackendMessage { uid: 9, size: 20 }
            ]
        );
        // A UID that never gets a size is refused clearly, not dropped.
        let sel = Selected {
            exists: 1,
            uid_validity: 1,
        };
        assert!(
            matches!(c.snapshot(&sel), Err(ImapError::Protocol(e)) if e.contains("no RFC822.SIZE for UID 7"))
        );
    }

    #[test]
    fn facts_by_sequence_number_are_merged_counted_and_checked() {
        let mut seen = SeqFacts::default();
        // Out of order and split: merged into one entry per message.
        for (seq, uid, size) in [
            (2, Some(9), None),
            (1, Some(7), Some(10)),
            (2, None, Some(20)),
            (2, Some(9), None),
        ] {
            seen.add(seq, uid, size, 1).expect("within the bound");
        }
        assert_eq!(
            seen.merged(1).expect("merged"),
            vec![(1, Some(7), Some(10)), (2, Some(9), Some(20))]
        );
        // Repeats of the same messages, however many, never count twice,
        // and the list stays within twice the bound.
        let mut seen = SeqFacts::default();
        for n in 0..1000 {
            seen.add(1 + n % 3, Some(1 + n % 3), Some(5), 2)
                .expect("three messages, bound 2 + 1");
            assert!(seen.0.len() <= 6);
        }
        assert_eq!(seen.merged(2).expect("merged").len(), 3);
        // A fourth message is one too many for the bound 2.
        let mut seen = SeqFacts::default();
        let r = (1..=4).try_for_each(|n| seen.add(n, Some(n), Some(1), 2));
        let r = r.and_then(|()| seen.merged(2).map(|_| ()));
        assert!(matches!(r, Err(ImapError::Protocol(e)) if e.contains("more FETCH responses")));
        // Two UIDs for one message: which is true cannot be known.
        let mut seen = SeqFacts::default();
        let r = seen
            .add(1, Some(7), None, 5)
            .and_then(|()| seen.add(2, Some(8), None, 5))
            .and_then(|()| seen.add(1, Some(9), Some(1), 5))
            .and_then(|()| seen.merged(5).map(|_| ()));
        assert!(matches!(r, Err(ImapError::Protocol(e)) if e.contains("UID 7 and UID 9")));
    }
}
