//! Local device accounts: POP3 devices (scanners, ERP systems, old clients)
//! that log in with a password of their own, checked here, and are then
//! served from the IMAP mailbox they are mapped to with an OAuth2 token that
//! pop3server holds (see `oauth`). The file is TOML:
//!
//! ```toml
//! [device.scanner1]
//! password = "$argon2id$v=19$m=4096,t=8,p=1$..."   # pop3server --hash-password
//! mailbox = "scans@contoso.com"
//! oauth = "m365"                                     # an [oauth.NAME] of the config
//! ```
//!
//! Hashes: argon2id/argon2i/argon2d (PHC strings), and the crypt formats
//! admins already have in /etc/shadow: `$y$` (yescrypt, Debian's default),
//! `$6$` and `$5$` (SHA-crypt).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};
use serde::Deserialize;

use crate::limits::{ARGON2_MEMORY_KIB, ARGON2_PASSES};
use crate::secret::Secret;

/// One device account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub name: String,
    hash: String,
    /// The IMAP identity the device is served from (several devices may
    /// share one: they share its lock too).
    pub mailbox: String,
    /// Which `[oauth.NAME]` token source logs in to that mailbox.
    pub oauth: String,
}

#[derive(Debug, Clone, Default)]
pub struct Devices {
    devices: BTreeMap<String, Device>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    device: BTreeMap<String, Entry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    password: String,
    mailbox: String,
    oauth: String,
}

/// A verification against this stands in for the one an unknown user would
/// have had, so that "no such device" and "wrong password" take the same
/// path and the same time. Made with the parameters of `hash_password`.
const DUMMY_HASH: &str = "$argon2id$v=19$m=4096,t=8,p=1$VTe324beAFc/5Ak7SraNJQ$V6l7U+4qGnJ9/Czp/GrT+ba1bIc6/KTmG6UmlWX1gBM";

impl Devices {
    /// Reads the devices file; refuses one that others may write or read.
    pub fn load(path: &Path) -> Result<Devices, String> {
        let shown = path.display();
        let meta = fs::metadata(path).map_err(|e| format!("{shown}: {e}"))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o037 != 0 {
            return Err(format!(
                "{shown}: mode {mode:04o} lets others read or change device passwords: \
                 chmod 0640 (or stricter) and chown root:pop3server"
            ));
        }
        let text = fs::read_to_string(path).map_err(|e| format!("{shown}: {e}"))?;
        Devices::parse(&text).map_err(|e| format!("{shown}: {e}"))
    }

    pub fn parse(text: &str) -> Result<Devices, String> {
        let file: File = toml::from_str(text).map_err(|e| e.message().to_string())?;
        let mut devices = BTreeMap::new();
        for (name, entry) in file.device {
            if name.is_empty() || name.bytes().any(|b| b.is_ascii_control() || b == b' ') {
                return Err(format!(
                    "device {name:?}: names are non-empty, without spaces"
                ));
            }
            if !known_format(&entry.password) {
                return Err(format!(
                    "device {name}: password is not a hash pop3server knows \
                     ($argon2id$, $y$, $6$, $5$): make one with pop3server --hash-password"
                ));
            }
            if entry.mailbox.is_empty() || entry.mailbox.bytes().any(|b| b.is_ascii_control()) {
                return Err(format!("device {name}: mailbox must be an IMAP user name"));
            }
            devices.insert(
                name.clone(),
                Device {
                    name,
                    hash: entry.password,
                    mailbox: entry.mailbox,
                    oauth: entry.oauth,
                },
            );
        }
        Ok(Devices { devices })
    }

    pub fn iter(&self) -> impl Iterator<Item = &Device> {
        self.devices.values()
    }

    /// The device, if the password is its own. An unknown name is checked
    /// against a stand-in hash, so it costs what a wrong password costs.
    pub fn authenticate(&self, name: &[u8], password: &Secret) -> Option<&Device> {
        self.authenticate_with(name, password, verify)
    }

    fn authenticate_with(
        &self,
        name: &[u8],
        password: &Secret,
        verify: impl Fn(&str, &[u8]) -> bool,
    ) -> Option<&Device> {
        let device = std::str::from_utf8(name)
            .ok()
            .and_then(|n| self.devices.get(n));
        let hash = device.map_or(DUMMY_HASH, |d| d.hash.as_str());
        let good = verify(hash, password.expose());
        device.filter(|_| good)
    }
}

fn known_format(hash: &str) -> bool {
    ["$argon2id$", "$argon2i$", "$argon2d$", "$y$", "$6$", "$5$"]
        .iter()
        .any(|p| hash.starts_with(p))
}

/// Whether `password` matches `hash`, in any of the known formats.
pub fn verify(hash: &str, password: &[u8]) -> bool {
    if hash.starts_with("$argon2") {
        Argon2::default().verify_password(password, hash).is_ok()
    } else if hash.starts_with("$y$") {
        yescrypt::Yescrypt::default()
            .verify_password(password, hash)
            .is_ok()
    } else if hash.starts_with("$6$") || hash.starts_with("$5$") {
        sha_crypt::ShaCrypt::default()
            .verify_password(password, hash)
            .is_ok()
    } else {
        false
    }
}

/// A new argon2id hash for `password`, with a random salt.
pub fn hash_password(password: &Secret) -> Result<String, String> {
    let params = Params::new(ARGON2_MEMORY_KIB, ARGON2_PASSES, 1, None)
        .map_err(|e| format!("argon2 parameters: {e}"))?;
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(password.expose())
        .map(|h| h.to_string())
        .map_err(|e| format!("cannot hash the password: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    fn secret(s: &str) -> Secret {
        Secret::new(s.as_bytes().to_vec())
    }

    #[test]
    fn the_stand_in_hash_is_made_with_the_current_parameters() {
        let params = format!("$argon2id$v=19$m={ARGON2_MEMORY_KIB},t={ARGON2_PASSES},p=1$");
        assert!(DUMMY_HASH.starts_with(&params), "{DUMMY_HASH}");
        // A real hash (of a password no device has), so checking it costs a
        // whole verification: a malformed one would fail fast.
        assert!(verify(DUMMY_HASH, b"not a device password"));
        let fresh = hash_password(&secret("x")).expect("hash");
        assert!(fresh.starts_with(&params), "{fresh}");
    }

    #[test]
    fn hashes_of_every_known_format_verify() {
        let argon = hash_password(&secret("pässwort")).expect("hash");
        assert!(verify(&argon, "pässwort".as_bytes()));
        assert!(!verify(&argon, b"passwort"));
        // Made by Debian 12's libxcrypt (crypt(3)) for the password "secret".
        let sha512 = "$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1";
        assert!(verify(sha512, b"secret") && !verify(sha512, b"Secret"));
        let sha256 = "$5$saltsalt$0IyaXrmV7.sGNS6tirgqHLqX/G.FBvgkYA.lpPdS5sA";
        assert!(verify(sha256, b"secret") && !verify(sha256, b"secret "));
        let yes = "$y$j9T$aC6QgD6nBmUIkK.dmqZhP0$tmSIJf8WJxNEqwxI4sMiCWfl1.eyx.KpfPR7IY.RKXD";
        assert!(verify(yes, b"secret") && !verify(yes, b"secreT"));
        assert!(!verify("plain", b"plain"));
    }

    #[test]
    fn an_unknown_device_is_checked_against_the_stand_in_like_a_wrong_password() {
        let devices = Devices::parse(&format!(
            "[device.scanner]\npassword = \"{DUMMY_HASH}\"\nmailbox = \"scans@example.org\"\noauth = \"m365\"\n"
        ))
        .expect("parse");
        let seen = RefCell::new(Vec::new());
        let record = |hash: &str, _: &[u8]| {
            seen.borrow_mut().push(hash.to_string());
            false
        };
        assert!(
            devices
                .authenticate_with(b"nobody", &secret("x"), record)
                .is_none()
        );
        assert!(
            devices
                .authenticate_with(b"scanner", &secret("x"), record)
                .is_none()
        );
        assert!(
            devices
                .authenticate_with(b"\xff", &secret("x"), record)
                .is_none()
        );
        // Each attempt made exactly one verification, of the same kind.
        assert_eq!(*seen.borrow(), vec![DUMMY_HASH; 3]);
    }

    #[test]
    fn the_right_password_gives_the_device_and_its_mailbox() {
        let hash = hash_password(&secret("scan-pw")).expect("hash");
        let devices = Devices::parse(&format!(
            "[device.scanner]\npassword = \"{hash}\"\nmailbox = \"scans@example.org\"\noauth = \"m365\"\n\
             [device.copier]\npassword = \"{hash}\"\nmailbox = \"scans@example.org\"\noauth = \"m365\"\n"
        ))
        .expect("parse");
        let d = devices
            .authenticate(b"scanner", &secret("scan-pw"))
            .expect("device");
        assert_eq!(
            (d.mailbox.as_str(), d.oauth.as_str()),
            ("scans@example.org", "m365")
        );
        assert!(devices.authenticate(b"scanner", &secret("wrong")).is_none());
        assert_eq!(devices.iter().count(), 2);
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        for (text, why) in [
            (
                "[device.a]\npassword = \"secret\"\nmailbox = \"m\"\noauth = \"o\"\n",
                "--hash-password",
            ),
            (
                "[device.a]\npassword = \"$6$x$y\"\noauth = \"o\"\n",
                "mailbox",
            ),
            (
                "[device.\"a b\"]\npassword = \"$6$x$y\"\nmailbox = \"m\"\noauth = \"o\"\n",
                "spaces",
            ),
            ("[devices.a]\n", "unknown field"),
        ] {
            let e = Devices::parse(text).expect_err(text);
            assert!(e.contains(why), "{text}: {e}");
        }
    }

    #[test]
    fn a_file_others_may_read_or_write_is_refused() {
        let dir = std::env::temp_dir().join(format!("p3dev-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("devices.toml");
        fs::write(&path, "").expect("write");
        for (mode, ok) in [(0o640, true), (0o600, true), (0o644, false), (0o660, false)] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
            assert_eq!(Devices::load(&path).is_ok(), ok, "{mode:o}");
        }
        let _ = fs::remove_dir_all(&dir);
    }
}
