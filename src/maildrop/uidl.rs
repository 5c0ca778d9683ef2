//! UIDL strings (RFC 1939 section 7): how they are made from a message's
//! UID and its folder's UIDVALIDITY, by a template like Dovecot's
//! `pop3_uidl_format`, or from what a migration must keep: Gmail's message
//! id, or a digest of the message's header.
//!
//! The formats a migration needs (see docs/uidl-migration.md):
//! named templates for the servers whose POP3 UIDLs are made of UID and
//! UIDVALIDITY (`dovecot`, `cyrus`, `courier`, `uw`); `gmail`, Gmail's own
//! POP3 UIDL (`GmailId` and the hex of `X-GM-MSGID`); and `header-digest`,
//! which survives a move from one IMAP server to another (new UIDs, new
//! UIDVALIDITY) because it depends on the message only. The last two need
//! a fact per message that the snapshot does not have ([`FactKind`]): it is
//! fetched at the first UIDL of a session, never for STAT, LIST, RETR, TOP.

use sha2::{Digest, Sha256};

use crate::limits::{HEADER_DIGEST_BYTES, MAX_UIDL_LEN};

/// How UIDL strings are made.
///
/// A template of literal text and the variables `%u` (UID) and `%v`
/// (UIDVALIDITY), each optionally with a zero-padded width and `X` for
/// lower-case hex, as Dovecot's `pop3_uidl_format` (`%08Xu%08Xv`). `%%` is a
/// percent sign. Or one of the formats made from a fetched fact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UidlFormat(Kind);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Template(Vec<Part>),
    /// `GmailId<hex of X-GM-MSGID>`.
    Gmail,
    /// 32 hex digits of SHA-256 over the normalised header (`header_digest`).
    HeaderDigest,
}

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

/// The named templates: (name, template, server whose POP3 UIDLs they are).
/// Dovecot's documentation of `pop3_uidl_format` lists the same ones for
/// migrations from these servers.
pub const NAMED_TEMPLATES: &[(&str, &str, &str)] = &[
    ("dovecot", DOVECOT_UIDL_FORMAT, "Dovecot POP3 (its default)"),
    ("cyrus", "%v.%u", "Cyrus POP3 2.1.4 and later"),
    ("courier", "%v-%u", "Courier POP3 (UIDL version 2)"),
    ("uw", "%08Xv%08Xu", "UW ipop3d"),
];

/// Gmail's POP3 UIDLs, and what Dovecot gives for a Gmail migration.
pub const GMAIL_PREFIX: &str = "GmailId";

/// What a format needs per message beyond the snapshot (UID, size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FactKind {
    /// Gmail's `X-GM-MSGID` (IMAP extension `X-GM-EXT-1`).
    GmailMsgId,
    /// The digest of `BODY.PEEK[HEADER]`.
    HeaderDigest,
}

/// One message's fact, as fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fact {
    GmailMsgId(u64),
    HeaderDigest(HeaderDigest),
}

/// The first `HEADER_DIGEST_BYTES` bytes of SHA-256 over the normalised
/// header block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HeaderDigest(pub [u8; HEADER_DIGEST_BYTES]);

/// Header fields a server adds, rewrites or drops when it stores or hands
/// out a message, so they must not count: the list of Dovecot's
/// pop3_migration plugin (`hdr_hash_skip_headers`), compared without case.
pub const SKIPPED_HEADERS: &[&str] = &[
    "Content-Length",
    "Return-Path",
    "Status",
    "X-IMAP",
    "X-IMAPbase",
    "X-Keywords",
    "X-Message-Flag",
    "X-Status",
    "X-UID",
    "X-UIDL",
    "X-Yahoo-Newman-Property",
];

/// The digest of a message's header block (`BODY[HEADER]`, its blank line
/// included or not). Normalised so that what servers are known to change
/// in transit does not change it (the same rules as Dovecot's header hash
/// for pop3_migration, version 4):
/// - fields named in `SKIPPED_HEADERS` are left out (with their folded
///   continuation lines);
/// - field names count without case;
/// - every space, tab, CR and LF is left out: refolding, trailing
///   whitespace, a space after the colon, CRLF against LF do not matter;
/// - every other byte below 0x20 or above 0x7e, and `?`, counts as `?`,
///   and a run of them as one: servers replace NULs and 8-bit bytes they
///   cannot parse with `?` or 0x80.
///
/// Each kept field goes in as `name:value` and a NUL, in order.
pub fn header_digest(header: &[u8]) -> HeaderDigest {
    let mut hash = Sha256::new();
    let mut skipping = false;
    let mut normalised = Vec::with_capacity(256);
    for line in header.split(|&b| b == b'\n') {
        let continuation = matches!(line.first(), Some(b' ' | b'\t'));
        if !continuation {
            if !normalised.is_empty() {
                normalised.push(0);
                hash.update(&normalised);
                normalised.clear();
            }
            let name = match line.iter().position(|&b| b == b':') {
                Some(colon) => trim(&line[..colon]),
                None => trim(line),
            };
            skipping = SKIPPED_HEADERS
                .iter()
                .any(|s| s.as_bytes().eq_ignore_ascii_case(name));
            if skipping {
                continue;
            }
            let (name, value) = match line.iter().position(|&b| b == b':') {
                Some(colon) => (&line[..colon], &line[colon..]),
                None => (&line[..0], line),
            };
            push_normalised(&mut normalised, &name.to_ascii_lowercase());
            push_normalised(&mut normalised, value);
        } else if !skipping {
            push_normalised(&mut normalised, line);
        }
    }
    if !normalised.is_empty() {
        normalised.push(0);
        hash.update(&normalised);
    }
    let full = hash.finalize();
    let mut out = [0u8; HEADER_DIGEST_BYTES];
    out.copy_from_slice(&full[..HEADER_DIGEST_BYTES]);
    HeaderDigest(out)
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &bytes[start..end.max(start)]
}

/// Appends `bytes` without whitespace, with `?` for each run of bytes that
/// servers mangle (see `header_digest`).
fn push_normalised(out: &mut Vec<u8>, bytes: &[u8]) {
    for &b in bytes {
        match b {
            b' ' | b'\t' | b'\r' | b'\n' => {}
            b'?' | 0..=0x1f | 0x7f..=0xff => {
                if out.last() != Some(&b'?') {
                    out.push(b'?');
                }
            }
            _ => out.push(b),
        }
    }
}

impl HeaderDigest {
    fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// One message as `UidlFormat::uidls` needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UidlInput {
    pub folder: usize,
    pub uid: u32,
    pub uid_validity: u32,
    /// The fetched fact; `None` for a message the backend gave none for
    /// (expunged by another client meanwhile).
    pub fact: Option<Fact>,
}

impl UidlFormat {
    pub fn dovecot() -> Self {
        Self::parse(DOVECOT_UIDL_FORMAT).unwrap_or(UidlFormat(Kind::Template(Vec::new())))
    }

    /// Accepts a name (`dovecot`, `cyrus`, `courier`, `uw`, `gmail`,
    /// `header-digest`) or a template; the error says what is wrong.
    pub fn parse(spec: &str) -> Result<Self, String> {
        if let Some((_, template, _)) = NAMED_TEMPLATES.iter().find(|(name, ..)| *name == spec) {
            return Self::parse_template(template);
        }
        match spec {
            "gmail" => Ok(UidlFormat(Kind::Gmail)),
            "header-digest" => Ok(UidlFormat(Kind::HeaderDigest)),
            _ => Self::parse_template(spec),
        }
    }

    fn parse_template(spec: &str) -> Result<Self, String> {
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
        let format = UidlFormat(Kind::Template(parts));
        if format.longest(1) > MAX_UIDL_LEN {
            return Err(format!("a UIDL may be at most {MAX_UIDL_LEN} characters"));
        }
        Ok(format)
    }

    /// What must be fetched before this format can answer UIDL; `None` for
    /// a template, which needs only UID and UIDVALIDITY.
    pub fn needs(&self) -> Option<FactKind> {
        match self.0 {
            Kind::Template(_) => None,
            Kind::Gmail => Some(FactKind::GmailMsgId),
            Kind::HeaderDigest => Some(FactKind::HeaderDigest),
        }
    }

    /// The UIDL of message `uid` in configured folder `folder`: the format
    /// applied to (UID, UIDVALIDITY); for every folder after the first,
    /// `-<index>` makes it unique even where two folders share a
    /// UIDVALIDITY. The first folder's UIDLs stay those of Dovecot's POP3
    /// server. A format made from facts gives Dovecot's form here (see
    /// `uidls` for when that is used).
    pub fn for_folder(&self, folder: usize, uid: u32, uid_validity: u32) -> Uidl {
        let mut out = Vec::with_capacity(24);
        self.write_for_folder(&mut out, folder, uid, uid_validity);
        // Templates are UTF-8 text and the variables digits.
        Uidl(String::from_utf8_lossy(&out).into_owned())
    }

    /// `for_folder`, appended to `out` (a UIDL listing writes 10,000 of
    /// these in place).
    pub fn write_for_folder(&self, out: &mut Vec<u8>, folder: usize, uid: u32, uid_validity: u32) {
        self.write(out, uid, uid_validity);
        push_folder(out, folder);
    }

    /// The UIDLs of a whole maildrop, in its order.
    ///
    /// For the formats made from facts: messages whose fact is the same as
    /// another's anywhere in the maildrop (twins: identical header blocks,
    /// or a Gmail message in two configured folders) all get `-<UID>`
    /// appended, before the folder's `-<index>`: stable across sessions
    /// while the twins are there, unlike a suffix by position, which would
    /// hand a deleted twin's UIDL to the other. Strings of the form
    /// `base[-uid][-index]` then cannot collide: a base alone is unique,
    /// and a shared base always has its UID. A message without a fact
    /// (expunged before it was fetched) gets Dovecot's form, 16 hex digits,
    /// which no other form of these has.
    pub fn uidls(&self, messages: &[UidlInput]) -> Vec<Uidl> {
        let base = |m: &UidlInput| -> Option<String> {
            match (&self.0, m.fact) {
                (Kind::Gmail, Some(Fact::GmailMsgId(id))) => Some(format!("{GMAIL_PREFIX}{id:x}")),
                (Kind::HeaderDigest, Some(Fact::HeaderDigest(d))) => Some(d.hex()),
                _ => None,
            }
        };
        let bases: Vec<Option<String>> = messages.iter().map(base).collect();
        let mut counts: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        for b in bases.iter().flatten() {
            *counts.entry(b.as_str()).or_default() += 1;
        }
        messages
            .iter()
            .zip(&bases)
            .map(|(m, b)| match b {
                Some(b) => {
                    let mut s = b.clone().into_bytes();
                    if counts.get(b.as_str()).copied().unwrap_or(0) > 1 {
                        s.push(b'-');
                        s.extend_from_slice(itoa::Buffer::new().format(m.uid).as_bytes());
                    }
                    push_folder(&mut s, m.folder);
                    Uidl(String::from_utf8_lossy(&s).into_owned())
                }
                // A format made from facts gives Dovecot's form here.
                None => self.for_folder(m.folder, m.uid, m.uid_validity),
            })
            .collect()
    }

    /// The longest UIDL this format can give with this many folders.
    pub fn longest(&self, folders: usize) -> usize {
        let suffix = if folders > 1 {
            1 + (folders - 1).to_string().len()
        } else {
            0
        };
        // A twin's `-<UID>`.
        let twin = 1 + u32::MAX.to_string().len();
        let base = match &self.0 {
            Kind::Template(_) => self.format(u32::MAX, u32::MAX).0.len(),
            Kind::Gmail => GMAIL_PREFIX.len() + format!("{:x}", u64::MAX).len() + twin,
            Kind::HeaderDigest => 2 * HEADER_DIGEST_BYTES + twin,
        };
        base + suffix
    }

    /// The template applied to (UID, UIDVALIDITY); Dovecot's form for the
    /// formats made from facts.
    pub fn format(&self, uid: u32, uid_validity: u32) -> Uidl {
        let mut out = Vec::with_capacity(24);
        self.write(&mut out, uid, uid_validity);
        Uidl(String::from_utf8_lossy(&out).into_owned())
    }

    fn write(&self, out: &mut Vec<u8>, uid: u32, uid_validity: u32) {
        let Kind::Template(parts) = &self.0 else {
            return write_dovecot_form(out, uid, uid_validity);
        };
        for part in parts {
            match part {
                Part::Text(t) => out.extend_from_slice(t.as_bytes()),
                Part::Var { var, width, hex } => {
                    let value = match var {
                        Var::Uid => uid,
                        Var::UidValidity => uid_validity,
                    };
                    if *hex {
                        push_hex(out, value, *width);
                    } else {
                        let mut digits = itoa::Buffer::new();
                        let digits = digits.format(value).as_bytes();
                        out.resize(out.len() + width.saturating_sub(digits.len()), b'0');
                        out.extend_from_slice(digits);
                    }
                }
            }
        }
    }
}

fn write_dovecot_form(out: &mut Vec<u8>, uid: u32, uid_validity: u32) {
    push_hex(out, uid, 8);
    push_hex(out, uid_validity, 8);
}

/// Lower-case hex of `value`, zero-padded to `width` digits (what
/// `{value:0width$x}` gives, without the formatting machinery: it runs
/// twice per message of a UIDL listing).
fn push_hex(out: &mut Vec<u8>, value: u32, width: usize) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    // Widths go up to 16 (`parse_template`), a u32 has at most 8 digits.
    let mut buf = [b'0'; 16];
    let mut at = buf.len();
    let mut v = value;
    loop {
        at -= 1;
        buf[at] = DIGITS[(v & 0xf) as usize];
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    let from = at.min(buf.len().saturating_sub(width));
    out.extend_from_slice(&buf[from..]);
}

/// `-<index>` for every configured folder after the first.
fn push_folder(out: &mut Vec<u8>, folder: usize) {
    if folder > 0 {
        out.push(b'-');
        out.extend_from_slice(itoa::Buffer::new().format(folder).as_bytes());
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uidl(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_written_in_place_are_what_format_gives() {
        for value in [0u32, 1, 9, 10, 0xf, 0x10, 0xabcdef12, 1_000_000, u32::MAX] {
            for width in [0usize, 1, 2, 8, 9, 16] {
                let hex = UidlFormat::parse(&format!("%{width}Xu")).expect("hex");
                let dec = UidlFormat::parse(&format!("%{width}u")).expect("decimal");
                assert_eq!(hex.format(value, 0).0, format!("{value:0width$x}"));
                assert_eq!(dec.format(value, 0).0, format!("{value:0width$}"));
            }
        }
        let f = UidlFormat::parse("a%ub%Xv").expect("template");
        let mut out = b"1 ".to_vec();
        f.write_for_folder(&mut out, 3, 12, 255);
        assert_eq!(out, b"1 a12bff-3");
    }

    #[test]
    fn dovecot_uidl_is_eight_lower_hex_digits_each() {
        let f = UidlFormat::dovecot();
        assert_eq!(f.format(1, 0x5f3c2a10), Uidl("000000015f3c2a10".into()));
        assert_eq!(f.format(0xabcdef12, 1), Uidl("abcdef1200000001".into()));
        // The formats made from facts fall back to the same form.
        let digest = UidlFormat::parse("header-digest").expect("named format");
        assert_eq!(digest.format(0xabcdef12, 1), f.format(0xabcdef12, 1));
    }

    #[test]
    fn other_templates() {
        let f = UidlFormat::parse("%v.%u").expect("valid");
        assert_eq!(f.format(42, 7), Uidl("7.42".into()));
        let f = UidlFormat::parse("x%%%Xu").expect("valid");
        assert_eq!(f.format(255, 7), Uidl("x%ff".into()));
    }

    #[test]
    fn named_templates_are_those_of_their_servers() {
        let uidl = |name: &str| {
            let f = UidlFormat::parse(name).expect("a known name");
            assert_eq!(f.needs(), None);
            f.for_folder(0, 0x2a, 1_700_000_001).0
        };
        assert_eq!(uidl("dovecot"), "0000002a6553f101");
        assert_eq!(uidl("cyrus"), "1700000001.42");
        assert_eq!(uidl("courier"), "1700000001-42");
        assert_eq!(uidl("uw"), "6553f1010000002a");
        for (name, template, _) in NAMED_TEMPLATES {
            assert_eq!(
                UidlFormat::parse(name),
                UidlFormat::parse(template),
                "{name}"
            );
        }
    }

    #[test]
    fn bad_templates_are_refused() {
        assert!(UidlFormat::parse("%v").is_err());
        assert!(UidlFormat::parse("%q").is_err());
        assert!(UidlFormat::parse("a b%u").is_err());
        assert!(UidlFormat::parse(&format!("{}%u", "a".repeat(70))).is_err());
        assert!(UidlFormat::parse("Gmail").is_err());
    }

    fn input(folder: usize, uid: u32, fact: Option<Fact>) -> UidlInput {
        UidlInput {
            folder,
            uid,
            uid_validity: 7,
            fact,
        }
    }

    #[test]
    fn gmail_uidls_are_gmailid_and_the_lower_hex_msgid() {
        let f = UidlFormat::parse("gmail").expect("gmail");
        assert_eq!(f.needs(), Some(FactKind::GmailMsgId));
        let id = |n: u64| Some(Fact::GmailMsgId(n));
        let got = f.uidls(&[
            input(0, 1, id(0x1000_0000_0000_0001)),
            input(0, 2, id(0x16c9_ab3f_00d2_7e01)),
            input(0, 3, None),
            input(1, 1, id(0xff)),
        ]);
        let got: Vec<&str> = got.iter().map(|u| u.0.as_str()).collect();
        assert_eq!(
            got,
            [
                "GmailId1000000000000001",
                "GmailId16c9ab3f00d27e01",
                "0000000300000007",
                "GmailIdff-1"
            ]
        );
        assert!(f.longest(1) <= MAX_UIDL_LEN && f.longest(1000) <= MAX_UIDL_LEN);
    }

    fn digest(text: &str) -> Option<Fact> {
        Some(Fact::HeaderDigest(header_digest(text.as_bytes())))
    }

    #[test]
    fn header_digest_uidls_are_32_hex_digits_and_twins_get_their_uid() {
        let f = UidlFormat::parse("header-digest").expect("header-digest");
        assert_eq!(f.needs(), Some(FactKind::HeaderDigest));
        let a = "Subject: a\r\n\r\n";
        let b = "Subject: b\r\n\r\n";
        let got = f.uidls(&[
            input(0, 3, digest(a)),
            input(0, 4, digest(b)),
            input(0, 9, digest(a)),
            input(1, 4, digest(a)),
            input(1, 5, None),
        ]);
        let hex_a = header_digest(a.as_bytes()).hex();
        let hex_b = header_digest(b.as_bytes()).hex();
        assert_eq!(hex_a.len(), 32);
        assert!(
            hex_a
                .bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        let got: Vec<String> = got.into_iter().map(|u| u.0).collect();
        assert_eq!(
            got,
            [
                format!("{hex_a}-3"),
                hex_b.clone(),
                format!("{hex_a}-9"),
                format!("{hex_a}-4-1"),
                "0000000500000007-1".to_string(),
            ]
        );
        // Without the twins, the lone one has the plain digest.
        let lone = f.uidls(&[input(0, 9, digest(a))]);
        assert_eq!(lone[0].0, hex_a);
        assert!(f.longest(1) <= MAX_UIDL_LEN && f.longest(1000) <= MAX_UIDL_LEN);
    }

    #[test]
    fn uidls_of_fact_formats_never_collide() {
        // A twin's -UID against another folder's -index: "D-1" in folder
        // 0 and the same D alone in folder 1 would both be "D-1" if twins
        // were counted per folder; they are counted over the maildrop.
        let f = UidlFormat::parse("header-digest").expect("header-digest");
        let a = "Subject: a\r\n";
        let got = f.uidls(&[
            input(0, 1, digest(a)),
            input(0, 2, digest(a)),
            input(1, 1, digest(a)),
            input(1, 7, digest("Subject: c\r\n")),
            input(2, 1, None),
            input(2, 2, digest("Subject: d\r\n")),
        ]);
        let mut seen: Vec<&str> = got.iter().map(|u| u.0.as_str()).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), got.len(), "{got:?}");
    }

    #[test]
    fn the_header_digest_ignores_what_servers_change() {
        let base = header_digest(
            b"From: A <a@example.org>\r\nTo: b@example.org\r\nSubject: Hello\r\n world\r\n\r\n",
        );
        for same in [
            // LF only, no blank line, trailing spaces, refolded.
            &b"From: A <a@example.org>\nTo: b@example.org\nSubject: Hello\n world\n"[..],
            b"From: A <a@example.org>\r\nTo: b@example.org\r\nSubject: Hello world  \r\n",
            b"From:A <a@example.org>\r\nTo:   b@example.org\r\nSubject: Hello\r\n\tworld\r\n\r\n",
            // Names without case; the fields servers add or rewrite.
            b"Return-Path: <bounce@example.org>\r\nfrom: A <a@example.org>\r\nX-UID: 17\r\n\
              TO: b@example.org\r\nStatus: RO\r\nX-Keywords: $Junk\r\n  $Label1\r\n\
              Subject: Hello world\r\nX-IMAPbase: 1 2\r\ncontent-length: 99\r\n\r\n",
        ] {
            assert_eq!(
                header_digest(same),
                base,
                "{:?}",
                String::from_utf8_lossy(same)
            );
        }
        for other in [
            &b"From: A <a@example.org>\r\nTo: b@example.org\r\nSubject: Hello world!\r\n"[..],
            b"To: b@example.org\r\nFrom: A <a@example.org>\r\nSubject: Hello world\r\n",
            b"From: A <a@example.org>\r\nTo: b@example.org\r\n",
            b"From: A <a@example.org>\r\nTo: b@example.org\r\nSubject: Hello world\r\nCc: c@x\r\n",
        ] {
            assert_ne!(
                header_digest(other),
                base,
                "{:?}",
                String::from_utf8_lossy(other)
            );
        }
        // 8-bit and NUL bytes count as one '?', as servers replace them.
        assert_eq!(
            header_digest(b"Subject: gr\xc3\xbc\xc3\x9fe\r\n"),
            header_digest(b"Subject: gr?e\r\n")
        );
        assert_eq!(
            header_digest(b"Subject: a\0b\r\n"),
            header_digest(b"Subject: a\x80b\r\n")
        );
        assert_ne!(
            header_digest(b"Subject: ab\r\n"),
            header_digest(b"Subject: a?b\r\n")
        );
    }
}
