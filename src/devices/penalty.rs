//! Failed device logins per client address, shared by the per-connection
//! processes (each one sees a single connection, so a guesser that
//! reconnects would otherwise start afresh every time): a small `flock`ed
//! file per address under the lock directory, as Dovecot's auth penalty
//! does in memory. Each failure beyond the first makes the next answers
//! slower, doubling up to a cap; a success or an hour of quiet forgets it.
//! The address never becomes part of a path: its digest does.

use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use md5::{Digest, Md5};

use crate::decimal::parse_u64;
use crate::limits::{LOGIN_PENALTY_FORGET, LOGIN_PENALTY_MAX};

fn path(lock_dir: &Path, ip: IpAddr) -> PathBuf {
    let digest: String = Md5::digest(ip.to_string().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    lock_dir.join(format!("penalty-{digest}"))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The delay after `failures` failures in a row: none for the first, then
/// 2, 4, 8 ... seconds up to the cap.
pub fn delay_after(failures: u64) -> Duration {
    if failures < 2 {
        return Duration::ZERO;
    }
    let secs = 1u64 << (failures - 1).min(16);
    Duration::from_secs(secs).min(LOGIN_PENALTY_MAX)
}

/// Records a failed login from `ip`; returns the extra delay it earns. A
/// file that cannot be used costs no delay and is logged by the caller.
pub fn record_failure(lock_dir: &Path, ip: IpAddr) -> std::io::Result<Duration> {
    update(lock_dir, ip, |failures| failures + 1).map(delay_after)
}

/// A successful login from `ip`: its failures are forgotten.
pub fn clear(lock_dir: &Path, ip: IpAddr) {
    let _ = fs::remove_file(path(lock_dir, ip));
}

/// Read, change and write the count under an exclusive `flock`.
fn update(lock_dir: &Path, ip: IpAddr, change: impl Fn(u64) -> u64) -> std::io::Result<u64> {
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path(lock_dir, ip))?;
    file.lock()?;
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    let mut fields = text.split_whitespace().map(|f| parse_u64(f.as_bytes()));
    let (failures, last) = match (fields.next(), fields.next()) {
        (Some(Some(n)), Some(Some(t))) => (n, t),
        _ => (0, 0),
    };
    let now = now();
    let failures = if now.saturating_sub(last) > LOGIN_PENALTY_FORGET.as_secs() {
        0
    } else {
        failures
    };
    let failures = change(failures);
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))?;
    writeln!(file, "{failures} {now}")?;
    Ok(failures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_from_the_second_failure_up_to_the_cap() {
        let secs: Vec<u64> = (0..8).map(|n| delay_after(n).as_secs()).collect();
        assert_eq!(secs, vec![0, 0, 2, 4, 8, 15, 15, 15]);
        assert_eq!(delay_after(u64::MAX), LOGIN_PENALTY_MAX);
    }

    #[test]
    fn failures_add_up_across_calls_and_a_success_forgets_them() {
        let dir = std::env::temp_dir().join(format!("p3pen-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("dir");
        let ip: IpAddr = "192.0.2.7".parse().expect("ip");
        let other: IpAddr = "192.0.2.8".parse().expect("ip");
        let delays: Vec<u64> = (0..4)
            .map(|_| record_failure(&dir, ip).expect("record").as_secs())
            .collect();
        assert_eq!(delays, vec![0, 2, 4, 8]);
        assert_eq!(record_failure(&dir, other).expect("record"), Duration::ZERO);
        clear(&dir, ip);
        assert_eq!(record_failure(&dir, ip).expect("record"), Duration::ZERO);
        // No address in a file name.
        for entry in fs::read_dir(&dir).expect("list") {
            let name = entry
                .expect("entry")
                .file_name()
                .into_string()
                .expect("utf8");
            assert!(
                name.starts_with("penalty-") && !name.contains("192"),
                "{name}"
            );
        }
        let _ = fs::remove_dir_all(&dir);
    }
}
