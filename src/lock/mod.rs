//! The maildrop lock: a non-blocking `flock` on
//! `<lock_dir>/<md5 of backend name and user>`, held until the guard
//! (normally the process) ends, so a killed session never leaves a stale
//! lock. The user's name never becomes part of a path. The same name keys
//! the cluster-wide lease ([`cluster`], over the small Redis client
//! [`redis`]), the rest of a throttled mailbox ([`cooldown`]) and the
//! snapshot cache.

pub mod cluster;
pub mod cooldown;
pub mod redis;

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io;
use std::path::{Path, PathBuf};

use md5::{Digest, Md5};

/// Holds the lock until dropped (or the process ends).
#[derive(Debug)]
pub struct LockGuard {
    _file: File,
}

#[derive(Debug)]
pub enum LockError {
    /// Another process holds the lock.
    InUse,
    /// The lock file could not be created or locked.
    Io { path: PathBuf, error: io::Error },
}

/// The lock name of a mailbox as the backend knows it: the backend's name
/// (`default`, or a `[backend.NAME]` of the routing table) and the IMAP
/// identity the session logged in as, after rewrites and device mapping.
/// Never a host and port: failover to another host of the same backend must
/// find the same lock. A digest, so no user string reaches the file system.
/// User names are case-folded (ASCII), as most backends treat `Alice` and
/// `alice` as one mailbox.
pub fn lock_name(backend: &str, user: &[u8]) -> String {
    let mut h = Md5::new();
    h.update(backend.as_bytes());
    h.update([0]);
    h.update(user.to_ascii_lowercase());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

pub fn try_lock(lock_dir: &Path, name: &str) -> Result<LockGuard, LockError> {
    let path = lock_dir.join(name);
    let io_err = |error| LockError::Io {
        path: path.clone(),
        error,
    };
    if !lock_dir.exists() {
        fs::create_dir_all(lock_dir).map_err(io_err)?;
    }
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err)?;
    match file.try_lock() {
        Ok(()) => Ok(LockGuard { _file: file }),
        Err(TryLockError::WouldBlock) => Err(LockError::InUse),
        Err(TryLockError::Error(error)) => Err(LockError::Io { path, error }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "pop3server-lock-test-{name}-{}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn second_lock_is_in_use_until_the_first_is_dropped() {
        let dir = temp_dir("inuse");
        let name = lock_name("default", b"alice");
        let first = try_lock(&dir, &name).expect("first lock");
        assert!(matches!(try_lock(&dir, &name), Err(LockError::InUse)));
        drop(first);
        assert!(try_lock(&dir, &name).is_ok());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn names_are_digests_that_ignore_case_of_user_but_not_backend() {
        let a = lock_name("default", b"Alice");
        assert_eq!(a, lock_name("default", b"alice"));
        assert_ne!(a, lock_name("east", b"alice"));
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(!lock_name("default", b"../../etc/passwd").contains('/'));
    }
}
