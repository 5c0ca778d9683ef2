//! `Secret` holds a password or token: its `Debug` never shows the bytes, so
//! a credential cannot reach a log line by accident, and its own copy is
//! overwritten when dropped. (Transient copies in the line buffer and the
//! IMAP command being written are not: this limits exposure, it is not a
//! guarantee against a memory dump.)

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Self {
        Secret(bytes)
    }

    /// The first line of a file (a password or client secret file), without
    /// its line end; the whole file passes through a `Secret` too.
    pub fn first_line_of(path: &std::path::Path) -> std::io::Result<Secret> {
        let whole = Secret(std::fs::read(path)?);
        let line = whole.0.split(|&b| b == b'\n').next().unwrap_or_default();
        Ok(Secret(line.strip_suffix(b"\r").unwrap_or(line).to_vec()))
    }

    /// The raw bytes, for the one place that must send them (the backend).
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Tokens arrive in JSON (a token endpoint's answer, the token store) and
/// go straight into a `Secret`, never through a type that prints them.
impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Secret(String::deserialize(d)?.into_bytes()))
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&String::from_utf8_lossy(&self.0))
    }
}

impl PartialEq for Secret {
    /// Whether two tokens are the same one (to tell a refreshed token from
    /// the one a backend refused); not for comparing passwords.
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        wipe(&mut self.0);
    }
}

/// Overwrites the bytes of `buf`, and its spare capacity, with zeros.
pub fn wipe(buf: &mut Vec<u8>) {
    for b in buf.iter_mut() {
        // SAFETY: a valid, exclusive reference. Volatile so that the wipe
        // is not optimised away as a dead store.
        unsafe { std::ptr::write_volatile(b, 0) };
    }
    wipe_spare(buf);
}

/// Overwrites the spare capacity of `buf` (what `drain` or `truncate` left
/// behind) with zeros; the contents stay.
pub fn wipe_spare(buf: &mut Vec<u8>) {
    for b in buf.spare_capacity_mut() {
        // SAFETY: as above; writing a value into MaybeUninit is always valid.
        unsafe { std::ptr::write_volatile(b, std::mem::MaybeUninit::new(0)) };
    }
}

/// A buffer that may hold credentials on their way somewhere (a client
/// line, an IMAP command being assembled): wiped when dropped.
#[derive(Default)]
pub struct WipeOnDrop(pub Vec<u8>);

impl std::ops::Deref for WipeOnDrop {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl std::ops::DerefMut for WipeOnDrop {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

impl Drop for WipeOnDrop {
    fn drop(&mut self) {
        wipe(&mut self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_does_not_show_the_secret() {
        let s = Secret::new(b"hunter2".to_vec());
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
        assert_eq!(s.expose(), b"hunter2");
    }
}
