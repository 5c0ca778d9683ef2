//! The maildrop as one POP3 session sees it: a snapshot taken at login of the
//! backend's UIDs and sizes, message numbers 1..=n fixed for the session,
//! deletion marks kept in memory until QUIT, and UIDL strings.

use crate::limits::MAX_UIDL_LEN;
use crate::pop3::command::MsgNum;

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
}

impl Maildrop {
    /// The folders in configured order; messages in any order.
    pub fn new(folders: Vec<FolderSnapshot>) -> Self {
        let uid_validities = folders.iter().map(|f| f.uid_validity).collect();
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
        Maildrop {
            uid_validities,
            messages,
            deleted,
        }
    }

    /// The UIDVALIDITY of a folder at login.
    pub fn uid_validity(&self, folder: usize) -> u32 {
        self.uid_validities.get(folder).copied().unwrap_or(0)
    }

    /// The message's UIDL: the format applied to (UID, UIDVALIDITY); for
    /// every folder after the first, `-<index>` makes it unique even where
    /// two folders share a UIDVALIDITY. The first folder's UIDLs stay those
    /// of Dovecot's POP3 server.
    pub fn uidl(&self, m: &Message, format: &UidlFormat) -> Uidl {
        let Uidl(mut s) = format.format(m.uid, self.uid_validity(m.folder));
        if m.folder > 0 {
            s.push_str(&format!("-{}", m.folder));
        }
        Uidl(s)
    }

    /// The longest UIDL this format can give with this many folders.
    pub fn longest_uidl(format: &UidlFormat, folders: usize) -> usize {
        let suffix = if folders > 1 {
            1 + (folders - 1).to_string().len()
        } else {
            0
        };
        format.format(u32::MAX, u32::MAX).0.len() + suffix
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

/// How UIDL strings are made from (UID, UIDVALIDITY).
///
/// A template of literal text and the variables `%u` (UID) and `%v`
/// (UIDVALIDITY), each optionally with a zero-padded width and `X` for
/// lower-case hex, as Dovecot's `pop3_uidl_format` (`%08Xu%08Xv`). `%%` is a
/// percent sign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UidlFormat(Vec<Part>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Var { var: Var, width: usize, hex: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Var {
    Uid,
    UidValidity,
}

pub const DOVECOT_UIDL_FORMAT: &str = "%08Xu%08Xv";

impl UidlFormat {
    pub fn dovecot() -> Self {
        Self::parse(DOVECOT_UIDL_FORMAT).unwrap_or(UidlFormat(Vec::new()))
    }

    /// Accepts `dovecot` or a template; the error says what is wrong with it.
    pub fn parse(spec: &str) -> Result<Self, String> {
        if spec == "dovecot" {
            return Self::parse(DOVECOT_UIDL_FORMAT);
        }
        let mut parts = Vec::new();
        let mut chars = spec.chars().peekable();
        let mut text = String::new();
        while let Some(c) = chars.next() {
            if c != '%' {
                if !c.is_ascii_graphic() {
                    return Err(format!(
                        "character {c:?} is not allowed in a UIDL (RFC 1939: 0x21-0x7E)"
                    ));
                }
                text.push(c);
                continue;
            }
            if chars.peek() == Some(&'%') {
                chars.next();
                text.push('%');
                continue;
            }
            let mut width = 0usize;
            while let Some(d) = chars.peek().and_then(|c| c.to_digit(10)) {
                chars.next();
                width = width * 10 + d as usize;
                if width > 16 {
                    return Err("field width over 16".into());
                }
            }
            let hex = chars.peek() == Some(&'X');
            if hex {
                chars.next();
            }
            let var = match chars.next() {
                Some('u') => Var::Uid,
                Some('v') => Var::UidValidity,
                other => {
                    return Err(format!(
                        "unknown variable %{} (use %u or %v)",
                        other.map(String::from).unwrap_or_default()
                    ));
                }
            };
            if !text.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut text)));
            }
            parts.push(Part::Var { var, width, hex });
        }
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        if !parts
            .iter()
            .any(|p| matches!(p, Part::Var { var: Var::Uid, .. }))
        {
            return Err("the template must contain %u, or UIDLs would not be unique".into());
        }
        let format = UidlFormat(parts);
        if format.format(u32::MAX, u32::MAX).0.len() > MAX_UIDL_LEN {
            return Err(format!("a UIDL may be at most {MAX_UIDL_LEN} characters"));
        }
        Ok(format)
    }

    pub fn format(&self, uid: u32, uid_validity: u32) -> Uidl {
        let mut s = String::new();
        for part in &self.0 {
            match part {
                Part::Text(t) => s.push_str(t),
                Part::Var { var, width, hex } => {
                    let value = match var {
                        Var::Uid => uid,
                        Var::UidValidity => uid_validity,
                    };
                    if *hex {
                        s.push_str(&format!("{value:0width$x}"));
                    } else {
                        s.push_str(&format!("{value:0width$}"));
                    }
                }
            }
        }
        Uidl(s)
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct Uidl(pub String);

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
        let uidls: Vec<String> = d.live().map(|(_, m)| d.uidl(&m, &f).0).collect();
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
    fn dovecot_uidl_is_eight_lower_hex_digits_each() {
        let f = UidlFormat::dovecot();
        assert_eq!(f.format(1, 0x5f3c2a10), Uidl("000000015f3c2a10".into()));
        assert_eq!(f.format(0xabcdef12, 1), Uidl("abcdef1200000001".into()));
    }

    #[test]
    fn other_templates() {
        let f = UidlFormat::parse("%v.%u").expect("valid");
        assert_eq!(f.format(42, 7), Uidl("7.42".into()));
        let f = UidlFormat::parse("x%%%Xu").expect("valid");
        assert_eq!(f.format(255, 7), Uidl("x%ff".into()));
    }

    #[test]
    fn bad_templates_are_refused() {
        assert!(UidlFormat::parse("%v").is_err());
        assert!(UidlFormat::parse("%q").is_err());
        assert!(UidlFormat::parse("a b%u").is_err());
        assert!(UidlFormat::parse(&format!("{}%u", "a".repeat(70))).is_err());
    }
}
