//! UIDL strings (RFC 1939 section 7): how they are made from a message's
//! UID and its folder's UIDVALIDITY, by a template like Dovecot's
//! `pop3_uidl_format`.

use crate::limits::MAX_UIDL_LEN;

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

    /// The UIDL of message `uid` in configured folder `folder`: the format
    /// applied to (UID, UIDVALIDITY); for every folder after the first,
    /// `-<index>` makes it unique even where two folders share a
    /// UIDVALIDITY. The first folder's UIDLs stay those of Dovecot's POP3
    /// server.
    pub fn for_folder(&self, folder: usize, uid: u32, uid_validity: u32) -> Uidl {
        let Uidl(mut s) = self.format(uid, uid_validity);
        if folder > 0 {
            s.push_str(&format!("-{folder}"));
        }
        Uidl(s)
    }

    /// The longest UIDL this format can give with this many folders.
    pub fn longest(&self, folders: usize) -> usize {
        let suffix = if folders > 1 {
            1 + (folders - 1).to_string().len()
        } else {
            0
        };
        self.format(u32::MAX, u32::MAX).0.len() + suffix
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
