//! Where a mailbox's rest after its provider throttled it is kept, so that
//! every session process (and with Redis, every front-end) honours it: a
//! small file `cooldown-<lock name>` in the lock directory, and the key
//! `pop3server:cooldown:<lock name>` in the cluster lock's Redis, which
//! expires with the rest. Both hold the end (Unix seconds) and the
//! provider's words. Keyed by the lock's digest name: no user string
//! reaches the file system or Redis. How long a rest is and what it means
//! is the caller's business (`backend::cooldown`).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::cluster;
use super::redis::{Redis, RedisError, Value};
use crate::decimal::parse_u64;
use crate::limits::{CLUSTER_LOCK_TIMEOUT, MAX_COOLDOWN_RECORD};
use crate::secret::Secret;

/// A rest: until when, and what the provider said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cooldown {
    /// Unix seconds.
    pub until: u64,
    pub words: String,
}

impl Cooldown {
    /// `until words`, one line: what the file and the Redis key hold. The
    /// words are cut to a bounded length on a character boundary and have
    /// no line breaks (the caller made them printable).
    pub fn encode(&self) -> String {
        let mut words: String = self
            .words
            .chars()
            .filter(|c| !c.is_control())
            .take(MAX_COOLDOWN_RECORD)
            .collect();
        words.truncate(words.trim_end().len());
        format!("{} {words}\n", self.until)
    }

    /// The record as `encode` writes it; anything else is `None`.
    pub fn decode(bytes: &[u8]) -> Option<Cooldown> {
        let text = std::str::from_utf8(bytes).ok()?;
        let line = text.strip_suffix('\n').unwrap_or(text);
        let (until, words) = line.split_once(' ').unwrap_or((line, ""));
        Some(Cooldown {
            until: parse_u64(until.as_bytes())?,
            words: words.to_string(),
        })
    }
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn path(lock_dir: &Path, name: &str) -> PathBuf {
    lock_dir.join(format!("cooldown-{name}"))
}

/// The rest recorded in the lock directory, if one is still running at
/// `now`; an ended one's file is removed. A file that cannot be parsed
/// counts as none (it is rewritten by the next rest).
pub fn read(lock_dir: &Path, name: &str, now: u64) -> io::Result<Option<Cooldown>> {
    let path = path(lock_dir, name);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    match Cooldown::decode(&bytes) {
        Some(c) if c.until > now => Ok(Some(c)),
        _ => {
            // Ended: nobody needs it any more. Racing a writer that just
            // renamed a new one in is harmless: that one is then lost, and
            // the next throttling answer records it again.
            let _ = fs::remove_file(&path);
            Ok(None)
        }
    }
}

/// Records a rest in the lock directory: written beside and renamed over
/// the old record, so that a reader sees the old or the new one, never a
/// part.
pub fn write(lock_dir: &Path, name: &str, cooldown: &Cooldown) -> io::Result<()> {
    if !lock_dir.exists() {
        fs::create_dir_all(lock_dir)?;
    }
    let target = path(lock_dir, name);
    let temporary = lock_dir.join(format!(".cooldown-{name}.{}", std::process::id()));
    let written = fs::File::create(&temporary)
        .and_then(|mut f| f.write_all(cooldown.encode().as_bytes()))
        .and_then(|()| fs::rename(&temporary, &target));
    if written.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    written
}

/// The Redis key of a mailbox's rest.
pub fn key(name: &str) -> String {
    format!("pop3server:cooldown:{name}")
}

fn connect(settings: &cluster::Settings, password: Option<&Secret>) -> Result<Redis, RedisError> {
    let auth = password.map(|p| (&settings.user, p));
    Redis::connect(&settings.address, CLUSTER_LOCK_TIMEOUT, auth)
}

/// The rest recorded in Redis, if any (Redis expires it at its end).
pub fn read_shared(
    settings: &cluster::Settings,
    password: Option<&Secret>,
    name: &str,
) -> Result<Option<Cooldown>, RedisError> {
    let mut redis = connect(settings, password)?;
    match redis.command(&[b"GET", key(name).as_bytes()])? {
        Value::Bulk(None) => Ok(None),
        Value::Bulk(Some(bytes)) => Ok(Cooldown::decode(&bytes)),
        other => Err(RedisError::Protocol(format!("GET answered {other:?}"))),
    }
}

/// Records a rest in Redis, to expire at its end.
pub fn write_shared(
    settings: &cluster::Settings,
    password: Option<&Secret>,
    name: &str,
    cooldown: &Cooldown,
    now: u64,
) -> Result<(), RedisError> {
    let left = Duration::from_secs(cooldown.until.saturating_sub(now).max(1));
    let mut redis = connect(settings, password)?;
    let reply = redis.command(&[
        b"SET",
        key(name).as_bytes(),
        cooldown.encode().as_bytes(),
        b"PX",
        left.as_millis().to_string().as_bytes(),
    ])?;
    match reply {
        Value::Simple(ok) if ok == "OK" => Ok(()),
        other => Err(RedisError::Protocol(format!("SET answered {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "pop3server-cooldown-test-{name}-{}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn records_round_trip_without_line_breaks_and_bounded() {
        let c = Cooldown {
            until: 1_800_000_000,
            words: "Request is throttled.\r\n* BYE x".into(),
        };
        let line = c.encode();
        assert_eq!(line, "1800000000 Request is throttled.* BYE x\n");
        assert_eq!(
            Cooldown::decode(line.as_bytes()),
            Some(Cooldown {
                until: 1_800_000_000,
                words: "Request is throttled.* BYE x".into()
            })
        );
        let long = Cooldown {
            until: 1,
            words: "\u{e4}".repeat(5 * MAX_COOLDOWN_RECORD),
        };
        assert_eq!(
            Cooldown::decode(long.encode().as_bytes()).map(|c| c.words.chars().count()),
            Some(MAX_COOLDOWN_RECORD)
        );
        assert_eq!(Cooldown::decode(b"soon no"), None);
        assert_eq!(Cooldown::decode(b"\xff1 x"), None);
        assert_eq!(
            Cooldown::decode(b"7"),
            Some(Cooldown {
                until: 7,
                words: String::new()
            })
        );
    }

    #[test]
    fn a_rest_is_read_until_its_end_and_then_removed() {
        let dir = temp_dir("rest");
        let name = super::super::lock_name("default", b"alice");
        assert_eq!(read(&dir, &name, 100).expect("none yet"), None);
        let c = Cooldown {
            until: 200,
            words: "slow down".into(),
        };
        write(&dir, &name, &c).expect("write");
        assert_eq!(read(&dir, &name, 199).expect("read"), Some(c));
        let other = super::super::lock_name("default", b"bob");
        assert_eq!(read(&dir, &other, 199).expect("other"), None);
        assert_eq!(read(&dir, &name, 200).expect("ended"), None);
        assert!(!path(&dir, &name).exists());
        let leftovers = fs::read_dir(&dir).expect("dir").count();
        assert_eq!(leftovers, 0);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn keys_hold_no_user_string() {
        let name = super::super::lock_name("default", b"alice");
        assert_eq!(key(&name), format!("pop3server:cooldown:{name}"));
    }
}
