//! The optional lock that spans front-ends: a lease in Redis or Valkey.
//! `SET key token NX PX ttl` takes it with a random token; the session
//! renews it (a compare-and-`PEXPIRE`) at about a third of the TTL from its
//! own loop; only its owner deletes it (compare-and-`DEL`). A killed process
//! never releases its lease: it disappears after the TTL, and never
//! earlier, because nothing but the token's holder touches it.

use std::fmt;
use std::time::{Duration, Instant};

use ring::rand::{SecureRandom, SystemRandom};

use crate::limits::CLUSTER_LOCK_TIMEOUT;
use crate::lock::redis::{Redis, RedisError, Value};
use crate::secret::Secret;

/// Where the leases live and for how long they are taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `host:port` of the Redis or Valkey server.
    pub address: String,
    /// Redis 6 ACL user for `AUTH`, if any.
    pub user: Option<String>,
    pub ttl: Duration,
    /// What a session does when Redis cannot be reached.
    pub fallback: Fallback,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// `-ERR [SYS/TEMP]`: no session without the cluster-wide lock.
    Refuse,
    /// Serve with the local `flock` only, and log a warning.
    Local,
}

/// Renewal only if the lease still holds our token: another session's
/// lease (taken after ours expired) is never extended.
const RENEW: &[u8] = b"if redis.call('GET', KEYS[1]) == ARGV[1] then \
    return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end";

/// Release only if the lease still holds our token.
const RELEASE: &[u8] = b"if redis.call('GET', KEYS[1]) == ARGV[1] then \
    return redis.call('DEL', KEYS[1]) else return 0 end";

/// The Redis key of a maildrop: our prefix and the lock file's digest name,
/// so no user string reaches Redis either.
pub fn key(lock_name: &str) -> String {
    format!("pop3server:lock:{lock_name}")
}

pub enum Acquired {
    Held(Lease),
    /// Another session, on this host or another, holds the lease.
    InUse,
}

#[derive(Debug)]
pub enum LeaseError {
    /// Redis could not be asked (down, timed out, refused our AUTH).
    Unreachable(RedisError),
    /// The lease is gone or another session's: it expired meanwhile.
    Lost,
}

impl fmt::Display for LeaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LeaseError::Unreachable(e) => e.fmt(f),
            LeaseError::Lost => f.write_str(
                "the lease expired and is gone or another session's (the process was stalled \
                 for longer than cluster_lock_ttl)",
            ),
        }
    }
}

pub struct Lease {
    redis: Redis,
    key: String,
    token: String,
    ttl: Duration,
    /// When the last successful `SET` or renewal was sent: the lease holds
    /// at least until `renewed + ttl`.
    renewed: Instant,
    /// When a renewal was last tried, so that a failed one is retried after
    /// a pause, not at once in a loop.
    tried: Instant,
}

/// Takes the lease of `lock_name`, or finds it held.
pub fn acquire(
    settings: &Settings,
    password: Option<&Secret>,
    lock_name: &str,
) -> Result<Acquired, LeaseError> {
    let auth = password.map(|p| (&settings.user, p));
    let mut redis = Redis::connect(&settings.address, CLUSTER_LOCK_TIMEOUT, auth)
        .map_err(LeaseError::Unreachable)?;
    let key = key(lock_name);
    let token = random_token().map_err(LeaseError::Unreachable)?;
    let ttl_ms = settings.ttl.as_millis().to_string();
    let sent = Instant::now();
    let reply = redis
        .command(&[
            b"SET",
            key.as_bytes(),
            token.as_bytes(),
            b"NX",
            b"PX",
            ttl_ms.as_bytes(),
        ])
        .map_err(LeaseError::Unreachable)?;
    match reply {
        Value::Simple(ok) if ok == "OK" => Ok(Acquired::Held(Lease {
            redis,
            key,
            token,
            ttl: settings.ttl,
            renewed: sent,
            tried: sent,
        })),
        Value::Bulk(None) => Ok(Acquired::InUse),
        other => Err(LeaseError::Unreachable(RedisError::Protocol(format!(
            "SET NX answered {other:?}"
        )))),
    }
}

impl Lease {
    /// When the next renewal is due: a third of the TTL after the last, so
    /// that a failed attempt leaves time for more (a tenth of the TTL apart).
    pub fn due(&self) -> Instant {
        (self.renewed + self.ttl / 3).max(self.tried + self.ttl / 10)
    }

    /// Extends the lease to a full TTL from now, if it is still ours.
    pub fn renew(&mut self) -> Result<(), LeaseError> {
        let ttl_ms = self.ttl.as_millis().to_string();
        let sent = Instant::now();
        self.tried = sent;
        match self.script(RENEW, &[ttl_ms.as_bytes()])? {
            Value::Integer(1) => {
                self.renewed = sent;
                Ok(())
            }
            Value::Integer(0) => Err(LeaseError::Lost),
            other => Err(LeaseError::Unreachable(RedisError::Protocol(format!(
                "renewal answered {other:?}"
            )))),
        }
    }

    /// Whether the lease is certainly still ours now, without asking Redis:
    /// nobody else can have it before `renewed + ttl`.
    pub fn surely_held(&self) -> bool {
        self.renewed.elapsed() < self.ttl
    }

    /// Deletes the lease if it is still ours (the session's end).
    pub fn release(mut self) -> Result<(), LeaseError> {
        self.script(RELEASE, &[]).map(|_| ())
    }

    fn script(&mut self, script: &[u8], extra: &[&[u8]]) -> Result<Value, LeaseError> {
        let mut args: Vec<&[u8]> = vec![
            b"EVAL",
            script,
            b"1",
            self.key.as_bytes(),
            self.token.as_bytes(),
        ];
        args.extend_from_slice(extra);
        self.redis.command(&args).map_err(LeaseError::Unreachable)
    }
}

/// 128 random bits, hex: no other process can guess or repeat it.
fn random_token() -> Result<String, RedisError> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| RedisError::Protocol("no random numbers from the system".into()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_keys_hold_no_user_string() {
        let a = random_token().unwrap();
        let b = random_token().unwrap();
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        let name = crate::lock::lock_name("default", b"alice");
        assert_eq!(key(&name), format!("pop3server:lock:{name}"));
        assert!(!key(&name).contains("alice"));
    }
}
