//! Certificate fingerprints (SHA-256 of the DER form), for pinning the
//! backend's certificate: parsed from what an admin copies out of openssl
//! or `--check`, shown in openssl's form.

use std::fmt;

use sha2::{Digest, Sha256};

/// The SHA-256 fingerprint of a certificate (of its DER form), as
/// `openssl x509 -noout -fingerprint -sha256` prints it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    pub fn of(der: &[u8]) -> Self {
        Fingerprint(Sha256::digest(der).into())
    }

    /// `AB:CD:...`, also in lower case or without colons, also with
    /// openssl's `sha256 Fingerprint=` in front.
    pub fn parse(text: &str) -> Result<Self, String> {
        let digits: Vec<u8> = text
            .rsplit('=')
            .next()
            .unwrap_or(text)
            .trim()
            .bytes()
            .filter(|&b| b != b':')
            .collect();
        let wrong = || {
            format!(
                "{text:?} is not a SHA-256 fingerprint: expected 64 hex digits, with or without \
                 colons, as `openssl x509 -noout -fingerprint -sha256 -in CERT` prints them \
                 (or `pop3server --check` shows)"
            )
        };
        if digits.len() != 64 {
            return Err(wrong());
        }
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(digits.chunks(2)) {
            let pair = std::str::from_utf8(pair).map_err(|_| wrong())?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| wrong())?;
        }
        Ok(Fingerprint(out))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_forms_openssl_and_admins_write_all_parse_to_one_fingerprint() {
        let upper = "AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89";
        let fp = Fingerprint::parse(upper).unwrap();
        for text in [
            upper.to_lowercase(),
            upper.replace(':', ""),
            format!("sha256 Fingerprint={upper}"),
            format!("  {upper}\n"),
        ] {
            assert_eq!(Fingerprint::parse(&text), Ok(fp), "{text}");
        }
        assert_eq!(fp.to_string(), upper);
    }

    #[test]
    fn anything_else_is_refused_with_what_is_expected() {
        for text in [
            "",
            "AB:CD",
            &"A".repeat(65),
            &"G".repeat(64),
            &"é".repeat(32),
        ] {
            let e = Fingerprint::parse(text).unwrap_err();
            assert!(e.contains("expected 64 hex digits"), "{text}: {e}");
        }
    }

    #[test]
    fn the_fingerprint_is_the_sha256_of_the_bytes() {
        // sha256("") from FIPS 180-2.
        assert_eq!(
            Fingerprint::of(b"")
                .to_string()
                .replace(':', "")
                .to_lowercase(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
