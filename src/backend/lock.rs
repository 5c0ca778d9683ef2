//! The maildrop lock of a session: the local `flock` (see `crate::lock`),
//! then, if configured, the lease in Redis that spans front-ends (see
//! `lock::cluster`), renewed while the session lasts and given up before its
//! last reply. It decides what an unreachable Redis means
//! (`cluster_lock_fallback`) and logs it; it knows nothing of IMAP, of
//! the session's mailbox changes or of what the client is told.

use std::path::Path;
use std::time::Instant;

use log::{error, warn};

use super::{Failure, FailureKind, LeaseLost, LockAnswer, Outcome};
use crate::lock::cluster::{self, Acquired, Fallback, Lease, LeaseError};
use crate::lock::{self, LockError, LockGuard};
use crate::secret::Secret;
use crate::stats::{self, event::Event};

pub struct MaildropLock<'a> {
    lock_dir: &'a Path,
    cluster: Option<&'a cluster::Settings>,
    /// Held for the rest of the process once taken.
    guard: Option<LockGuard>,
    /// The cluster-wide lease, renewed through `keep_lease`.
    lease: Option<Lease>,
    /// The lock's name (backend and IMAP identity): the snapshot cache is
    /// per maildrop as the lock is.
    name: Option<String>,
}

impl<'a> MaildropLock<'a> {
    pub fn new(lock_dir: &'a Path, cluster: Option<&'a cluster::Settings>) -> Self {
        MaildropLock {
            lock_dir,
            cluster,
            guard: None,
            lease: None,
            name: None,
        }
    }

    /// The name of the lock taken, once it is.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    pub fn is_held(&self) -> bool {
        self.guard.is_some()
    }

    /// The local lock, then (if configured) the cluster-wide lease: the
    /// local one first, as it is free and catches a second session on this
    /// host without a round trip. `password` is the cluster lock's Redis
    /// password, as read for this process.
    pub fn take(
        &mut self,
        name: String,
        password: Result<Option<&Secret>, String>,
    ) -> Outcome<LockAnswer> {
        let guard = match lock::try_lock(self.lock_dir, &name) {
            Ok(guard) => guard,
            Err(LockError::InUse) => return Ok(in_use("local")),
            Err(LockError::Io { path, error: e }) => {
                error!(
                    "cannot lock {}: {e}; check that lock_dir exists and is writable by the service user",
                    path.display()
                );
                return Err(Failure::new(
                    FailureKind::Local,
                    format!("cannot lock {}: {e}", path.display()),
                ));
            }
        };
        if let Some(settings) = self.cluster {
            let password = password.map_err(|why| {
                error!("cluster lock: {why}");
                Failure::new(FailureKind::Local, why)
            })?;
            match cluster::acquire(settings, password, &name) {
                Ok(Acquired::Held(lease)) => self.lease = Some(lease),
                Ok(Acquired::InUse) => return Ok(in_use("cluster")),
                Err(e) if settings.fallback == Fallback::Local => warn!(
                    "cluster lock: Redis {}: {e}; this session has the local lock only \
                     (cluster_lock_fallback = local)",
                    settings.address
                ),
                Err(e) => {
                    error!(
                        "cluster lock: Redis {}: {e}; logins are refused until it answers \
                         (cluster_lock_fallback = local would serve them with the local lock only)",
                        settings.address
                    );
                    return Err(Failure::new(
                        FailureKind::Local,
                        format!("cluster lock: {e}"),
                    ));
                }
            }
        }
        self.guard = Some(guard);
        self.name = Some(name);
        Ok(LockAnswer::Locked)
    }

    /// When the lease must next be renewed, if one is held.
    pub fn lease_due(&self) -> Option<Instant> {
        self.lease.as_ref().map(Lease::due)
    }

    /// Renews the lease. `Err` says why the session must end without
    /// UPDATE: the lease is gone, or Redis cannot confirm it and it may
    /// have expired. With `cluster_lock_fallback = local` an unreachable
    /// Redis leaves the session on its local lock instead.
    pub fn keep_lease(&mut self) -> Result<(), LeaseLost> {
        let (Some(lease), Some(settings)) = (self.lease.as_mut(), self.cluster) else {
            return Ok(());
        };
        match lease.renew() {
            Ok(()) => Ok(()),
            Err(LeaseError::Unreachable(e)) if settings.fallback == Fallback::Local => {
                warn!(
                    "cluster lock: cannot renew the lease in Redis {}: {e}; the session goes on \
                     with the local lock only (cluster_lock_fallback = local)",
                    settings.address
                );
                self.lease = None;
                Ok(())
            }
            Err(LeaseError::Unreachable(e)) if lease.surely_held() => {
                warn!(
                    "cluster lock: cannot renew the lease in Redis {}: {e}; trying again",
                    settings.address
                );
                Ok(())
            }
            Err(LeaseError::Unreachable(e)) => {
                self.lease = None;
                Err(LeaseLost(format!(
                    "(cluster lock: Redis {} cannot confirm the lease, which may have expired: {e})",
                    settings.address
                )))
            }
            Err(e @ LeaseError::Lost) => {
                self.lease = None;
                Err(LeaseLost(format!(
                    "(cluster lock in Redis {}: {e})",
                    settings.address
                )))
            }
        }
    }

    /// Gives up the maildrop: the cluster lock's lease, then the local lock.
    pub fn release(&mut self) {
        if let Some(lease) = self.lease.take()
            && let Err(e) = lease.release()
        {
            // It expires by itself after cluster_lock_ttl.
            warn!("cannot release the cluster lock: {e}");
        }
        self.guard = None;
    }
}

/// Another session holds the maildrop (`kind`: whose lock said so).
fn in_use(kind: &str) -> LockAnswer {
    stats::emit::send(&Event::LockConflict { kind: kind.into() });
    LockAnswer::InUse
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_session_finds_the_maildrop_in_use_until_the_first_releases_it() {
        let dir = std::env::temp_dir().join(format!("p3block-{}", std::process::id()));
        let name = lock::lock_name("default", b"alice");
        let mut first = MaildropLock::new(&dir, None);
        let mut second = MaildropLock::new(&dir, None);
        assert_eq!(first.take(name.clone(), Ok(None)), Ok(LockAnswer::Locked));
        assert!(first.is_held() && first.name() == Some(name.as_str()));
        assert_eq!(second.take(name.clone(), Ok(None)), Ok(LockAnswer::InUse));
        assert!(!second.is_held() && second.name().is_none());
        // Without a cluster lock there is no lease to keep or lose.
        assert_eq!(first.lease_due(), None);
        assert_eq!(first.keep_lease(), Ok(()));
        first.release();
        assert!(!first.is_held());
        assert_eq!(second.take(name, Ok(None)), Ok(LockAnswer::Locked));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
