//! The maildrop as one POP3 session sees it: a snapshot taken at login of the
//! backend's UIDs and sizes, message numbers 1..=n fixed for the session,
//! deletion marks kept in memory until QUIT, and UIDL strings (with the
//! per-message facts some formats need, fetched at the first UIDL).

//!
//! Beside it, what makes the maildrop's strings and what keeps it between
//! sessions: [`uidl`] (the UIDL formats) and [`sizecache`] (sizes and
//! header digests by UID, kept on disk).

pub mod sizecache;
pub mod uidl;

use uidl::UidlInput;
pub use uidl::{Fact, FactKind, Uidl, UidlFormat};

/// A POP3 message number: 1..=n for the session, fixed at login.
pub type MsgNum = u32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendMessage {
    pub uid: u32,
    pub size: u64,
}

/// One folder's part of the snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FolderSnapshot {
    pub uid_validity: u32,
    pub messages: Vec<BackendMessage>,
}

/// A message of the maildrop: which folder (index into the configured
/// list), its UID there, its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message {
    pub folder: usize,
    pub uid: u32,
    pub size: u64,
}

/// What QUIT must expunge in one folder. The UIDs mean these messages only
/// while the folder's UIDVALIDITY is still `uid_validity`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FolderDeletions {
    pub folder: usize,
    pub uid_validity: u32,
    pub uids: Vec<u32>,
}

/// What a format made from facts still needs: the facts of these messages
/// of one folder (`FactKind` from the format).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FactsWanted {
    pub folder: usize,
    pub uid_validity: u32,
    pub uids: Vec<u32>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum MessageError {
    NoSuchMessage,
    Deleted,
}

impl MessageError {
    pub fn message(&self) -> &'static str {
        match self {
            MessageError::NoSuchMessage => "No such message",
            MessageError::Deleted => "Message is deleted",
        }
    }
}

#[derive(Debug)]
pub struct Maildrop {
    uid_validities: Vec<u32>,
    /// In folder order, then UID order: message number i+1 is `messages[i]`.
    messages: Vec<Message>,
    deleted: Vec<bool>,
    /// Per message, as `messages`: the fact a format made from facts needs
    /// (`set_facts`); empty until the first is set.
    facts: Vec<Option<Fact>>,
    /// Per folder: its facts were fetched (with or without an answer for
    /// every message).
    fetched: Vec<bool>,
    /// The UIDLs of every message once all facts are in: with twins they
    /// depend on the whole maildrop, so they are made once, not per line.
    uidls: Option<Vec<Uidl>>,
}

impl Maildrop {
    /// The folders in configured order; messages in any order.
    pub fn new(folders: Vec<FolderSnapshot>) -> Self {
        let uid_validities: Vec<u32> = folders.iter().map(|f| f.uid_validity).collect();
        let mut messages = Vec::new();
        for (folder, snapshot) in folders.into_iter().enumerate() {
            let mut part = snapshot.messages;
            part.sort_by_key(|m| m.uid);
            part.dedup_by_key(|m| m.uid);
            messages.extend(part.into_iter().map(|m| Message {
                folder,
                uid: m.uid,
                size: m.size,
            }));
        }
        let deleted = vec![false; messages.len()];
        let fetched = vec![false; uid_validities.len()];
        Maildrop {
            uid_validities,
            messages,
            deleted,
            facts: Vec::new(),
            fetched,
            uidls: None,
        }
    }

    /// The UIDVALIDITY of a folder at login.
    pub fn uid_validity(&self, folder: usize) -> u32 {
        self.uid_validities.get(folder).copied().unwrap_or(0)
    }

    /// The UIDL of message `n` (which is `m`): from the template (see
    /// `UidlFormat::for_folder`), or, for a format made from facts, as
    /// made by `set_facts` once all are in (`missing_facts` says when).
    pub fn uidl(&self, n: MsgNum, m: &Message, format: &UidlFormat) -> Uidl {
        let mut out = Vec::with_capacity(24);
        self.push_uidl(&mut out, n, m, format);
        // UIDLs are printable ASCII (templates are checked, facts hex).
        Uidl(String::from_utf8_lossy(&out).into_owned())
    }

    /// `uidl`, appended to `out` without a string of its own (a listing
    /// writes 10,000 of these in place).
    pub fn push_uidl(&self, out: &mut Vec<u8>, n: MsgNum, m: &Message, format: &UidlFormat) {
        if format.needs().is_some()
            && let Some(uidl) = index(n).and_then(|i| self.uidls.as_ref()?.get(i))
        {
            return out.extend_from_slice(uidl.0.as_bytes());
        }
        format.write_for_folder(out, m.folder, m.uid, self.uid_validity(m.folder));
    }

    /// The first folder whose facts `format` needs and the session has not
    /// fetched yet, with its UIDs; `None` when UIDL can be answered.
    /// Folders without messages need nothing.
    pub fn missing_facts(&self, format: &UidlFormat) -> Option<FactsWanted> {
        format.needs()?;
        (0..self.fetched.len())
            .filter(|&f| !self.fetched[f])
            .map(|folder| FactsWanted {
                folder,
                uid_validity: self.uid_validity(folder),
                uids: self
                    .messages
                    .iter()
                    .filter(|m| m.folder == folder)
                    .map(|m| m.uid)
                    .collect(),
            })
            .find(|wanted| !wanted.uids.is_empty())
    }

    /// The facts the backend gave for `folder` (UIDs it was not asked for
    /// are ignored, the first of two answers for one UID counts); once every
    /// folder has its facts, the UIDLs are made.
    pub fn set_facts(&mut self, folder: usize, facts: &[(u32, Fact)], format: &UidlFormat) {
        if self.facts.is_empty() {
            self.facts = vec![None; self.messages.len()];
        }
        for &(uid, fact) in facts {
            // In folder order, then UID order: a binary search.
            let found = self
                .messages
                .binary_search_by(|m| (m.folder, m.uid).cmp(&(folder, uid)));
            if let Ok(i) = found
                && self.facts[i].is_none()
            {
                self.facts[i] = Some(fact);
            }
        }
        if let Some(done) = self.fetched.get_mut(folder) {
            *done = true;
        }
        if self.missing_facts(format).is_none() {
            let inputs: Vec<UidlInput> = self
                .messages
                .iter()
                .zip(&self.facts)
                .map(|(m, fact)| UidlInput {
                    folder: m.folder,
                    uid: m.uid,
                    uid_validity: self.uid_validity(m.folder),
                    fact: *fact,
                })
                .collect();
            self.uidls = Some(format.uidls(&inputs));
        }
    }

    /// The message with that number, unless it is out of range or deleted.
    pub fn get(&self, n: MsgNum) -> Result<Message, MessageError> {
        let i = index(n)
            .filter(|&i| i < self.messages.len())
            .ok_or(MessageError::NoSuchMessage)?;
        if self.deleted[i] {
            return Err(MessageError::Deleted);
        }
        Ok(self.messages[i])
    }

    /// Count and total size of the messages not marked deleted.
    pub fn stat(&self) -> (usize, u64) {
        self.live()
            .fold((0, 0), |(n, s), (_, m)| (n + 1, s.saturating_add(m.size)))
    }

    /// Message numbers and messages not marked deleted, in order.
    pub fn live(&self) -> impl Iterator<Item = (MsgNum, Message)> + '_ {
        self.messages
            .iter()
            .zip(&self.deleted)
            .enumerate()
            .filter(|(_, (_, d))| !**d)
            .map(|(i, (m, _))| (number(i), *m))
    }

    /// The messages after `n` not marked deleted, in order.
    pub fn live_after(&self, n: MsgNum) -> impl Iterator<Item = Message> + '_ {
        let from = usize::try_from(n).unwrap_or(usize::MAX);
        let (messages, deleted) = (
            self.messages.get(from..).unwrap_or_default(),
            self.deleted.get(from..).unwrap_or_default(),
        );
        messages
            .iter()
            .zip(deleted)
            .filter(|(_, d)| !**d)
            .map(|(m, _)| *m)
    }

    pub fn mark_deleted(&mut self, n: MsgNum) -> Result<Message, MessageError> {
        let m = self.get(n)?;
        if let Some(i) = index(n) {
            self.deleted[i] = true;
        }
        Ok(m)
    }

    pub fn reset(&mut self) {
        self.deleted.fill(false);
    }

    /// The UIDs marked deleted, by folder (only folders that have some).
    pub fn deleted_by_folder(&self) -> Vec<FolderDeletions> {
        let mut out: Vec<FolderDeletions> = Vec::new();
        for (m, _) in self.messages.iter().zip(&self.deleted).filter(|(_, d)| **d) {
            match out.last_mut() {
                Some(last) if last.folder == m.folder => last.uids.push(m.uid),
                _ => out.push(FolderDeletions {
                    folder: m.folder,
                    uid_validity: self.uid_validity(m.folder),
                    uids: vec![m.uid],
                }),
            }
        }
        out
    }

    pub fn deleted_stat(&self) -> (usize, u64) {
        self.messages
            .iter()
            .zip(&self.deleted)
            .filter(|(_, d)| **d)
            .fold((0, 0), |(n, s), (m, _)| (n + 1, s.saturating_add(m.size)))
    }
}

fn index(n: MsgNum) -> Option<usize> {
    usize::try_from(n).ok()?.checked_sub(1)
}

fn number(i: usize) -> MsgNum {
    // Bounded by limits::MAX_MESSAGES per folder; u32 holds the sum.
    MsgNum::try_from(i + 1).unwrap_or(MsgNum::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(uid: u32, size: u64) -> BackendMessage {
        BackendMessage { uid, size }
    }

    fn drop3() -> Maildrop {
        Maildrop::new(vec![FolderSnapshot {
            uid_validity: 7,
            messages: vec![msg(10, 100), msg(3, 30), msg(20, 200)],
        }])
    }

    #[test]
    fn numbers_follow_uid_order_from_one() {
        let d = drop3();
        assert_eq!(
            d.get(1),
            Ok(Message {
                folder: 0,
                uid: 3,
                size: 30
            })
        );
        assert_eq!(
            d.get(3),
            Ok(Message {
                folder: 0,
                uid: 20,
                size: 200
            })
        );
        assert_eq!(d.get(0), Err(MessageError::NoSuchMessage));
        assert_eq!(d.get(4), Err(MessageError::NoSuchMessage));
        assert_eq!(d.stat(), (3, 330));
    }

    #[test]
    fn deletion_marks_hide_messages_until_reset() {
        let mut d = drop3();
        assert!(d.mark_deleted(2).is_ok());
        assert_eq!(d.mark_deleted(2), Err(MessageError::Deleted));
        assert_eq!(d.get(2), Err(MessageError::Deleted));
        assert_eq!(d.stat(), (2, 230));
        assert_eq!(
            d.deleted_by_folder(),
            vec![FolderDeletions {
                folder: 0,
                uid_validity: 7,
                uids: vec![10]
            }]
        );
        assert_eq!(d.live().map(|(n, _)| n).collect::<Vec<_>>(), vec![1, 3]);
        d.reset();
        assert_eq!(d.stat(), (3, 330));
        assert!(d.deleted_by_folder().is_empty());
    }

    #[test]
    fn folders_follow_each_other_and_keep_their_uidls_apart() {
        let mut d = Maildrop::new(vec![
            FolderSnapshot {
                uid_validity: 5,
                messages: vec![msg(2, 20), msg(1, 10)],
            },
            FolderSnapshot {
                uid_validity: 5,
                messages: vec![],
            },
            FolderSnapshot {
                uid_validity: 5,
                messages: vec![msg(1, 11)],
            },
        ]);
        assert_eq!(
            d.get(3),
            Ok(Message {
                folder: 2,
                uid: 1,
                size: 11
            })
        );
        let f = UidlFormat::dovecot();
        let uidls: Vec<String> = d.live().map(|(n, m)| d.uidl(n, &m, &f).0).collect();
        assert_eq!(
            uidls,
            ["0000000100000005", "0000000200000005", "0000000100000005-2"]
        );
        assert!(d.mark_deleted(1).is_ok());
        assert!(d.mark_deleted(3).is_ok());
        let folders: Vec<(usize, Vec<u32>)> = d
            .deleted_by_folder()
            .into_iter()
            .map(|f| (f.folder, f.uids))
            .collect();
        assert_eq!(folders, vec![(0, vec![1]), (2, vec![1])]);
    }

    #[test]
    fn facts_are_asked_folder_by_folder_and_make_the_uidls() {
        let f = UidlFormat::parse("gmail").expect("gmail");
        let mut d = Maildrop::new(vec![
            FolderSnapshot {
                uid_validity: 5,
                messages: vec![msg(2, 20), msg(1, 10)],
            },
            FolderSnapshot {
                uid_validity: 6,
                messages: vec![],
            },
            FolderSnapshot {
                uid_validity: 7,
                messages: vec![msg(4, 11)],
            },
        ]);
        assert_eq!(d.missing_facts(&UidlFormat::dovecot()), None);
        assert_eq!(
            d.missing_facts(&f),
            Some(FactsWanted {
                folder: 0,
                uid_validity: 5,
                uids: vec![1, 2]
            })
        );
        // UID 9 was not asked for; UID 2 has no answer (expunged).
        d.set_facts(
            0,
            &[(1, Fact::GmailMsgId(0xa)), (9, Fact::GmailMsgId(0xb))],
            &f,
        );
        let wanted = d.missing_facts(&f).expect("the third folder");
        assert_eq!((wanted.folder, wanted.uids), (2, vec![4]));
        d.set_facts(2, &[(4, Fact::GmailMsgId(0xc))], &f);
        assert_eq!(d.missing_facts(&f), None);
        let uidls: Vec<String> = d.live().map(|(n, m)| d.uidl(n, &m, &f).0).collect();
        assert_eq!(uidls, ["GmailIda", "0000000200000005", "GmailIdc-2"]);
    }
}
