//! The rest of a throttled mailbox. When a provider answers with its
//! throttling words (see `provider::throttling`), logging in again at each
//! poll of each device keeps the mailbox throttled; so the mailbox (as the
//! lock names it: backend and IMAP identity) rests until the provider's
//! suggested time, or `throttle_cooldown`, both bounded. While it rests no
//! login for it reaches the provider, from any session process, and with
//! `cluster_lock_redis` from any front-end. It decides how long a rest is
//! and logs its start once; where rests are kept is `lock::cooldown`'s.

use std::time::Duration;

use log::{debug, warn};

use super::provider::Throttle;
use super::settings::Settings;
use crate::limits::{MAX_THROTTLE_COOLDOWN, MIN_THROTTLE_COOLDOWN};
use crate::lock::cooldown::{self, Cooldown};
use crate::logging::{printable, utc};
use crate::preload::Preloaded;
use crate::stats::{self, event::Event};

/// Whose rest: the lock's name, and the mailbox and backend for the log.
pub struct Mailbox {
    pub lock_name: String,
    /// The IMAP identity, printable.
    pub user: String,
    pub backend: String,
}

impl Mailbox {
    /// The mailbox `user` of backend `backend` (an index into the routing
    /// table's backends): the lock's mailbox.
    pub fn new(settings: &Settings, backend: usize, user: &[u8]) -> Mailbox {
        let backend = settings
            .routes
            .backends
            .get(backend)
            .map_or("?", |b| b.name.as_str());
        Mailbox {
            lock_name: crate::lock::lock_name(backend, user),
            user: printable(user),
            backend: backend.to_string(),
        }
    }
}

/// The rest of the mailbox running now, if any: the lock directory's
/// record first (no round trip), then Redis's when `cluster_lock_redis` is
/// set. One that cannot be read counts as none: a rest is a courtesy to
/// the provider, not a lock. Its end is bounded, whatever the record says.
pub fn running(settings: &Settings, files: &Preloaded, lock_name: &str) -> Option<Cooldown> {
    let now = cooldown::now();
    let local = cooldown::read(&settings.lock_dir, lock_name, now).unwrap_or_else(|e| {
        debug!("cannot read the rest of a throttled mailbox: {e}");
        None
    });
    let found = local.or_else(|| {
        let cluster = settings.cluster_lock.as_ref()?;
        let password = files.cluster_lock_password().ok()?;
        cooldown::read_shared(cluster, password, lock_name)
            .unwrap_or_else(|e| {
                debug!("cluster lock: Redis {}: no rest read: {e}", cluster.address);
                None
            })
            .filter(|c| c.until > now)
    });
    found.map(|mut c| {
        c.until = c.until.min(now + MAX_THROTTLE_COOLDOWN.as_secs());
        c
    })
}

/// What is left of a rest, at least a second.
pub fn left(rest: &Cooldown) -> Duration {
    Duration::from_secs(rest.until.saturating_sub(cooldown::now()).max(1))
}

/// How long a throttling answer makes the mailbox rest.
pub fn length(settings: &Settings, throttle: &Throttle) -> Duration {
    let wanted = throttle.suggested.unwrap_or(settings.throttle_cooldown);
    // Whole seconds, rounded up: the provider's 299961 ms is five minutes.
    let secs = wanted.as_secs() + u64::from(wanted.subsec_nanos() > 0);
    Duration::from_secs(secs).clamp(MIN_THROTTLE_COOLDOWN, MAX_THROTTLE_COOLDOWN)
}

/// Starts the rest a throttling answer earns, where every session process
/// (and front-end) sees it, and says so in the log once: a rest already
/// running that ends later is left as it is, without a word. Returns how
/// long the client must wait.
pub fn begin(
    settings: &Settings,
    files: &Preloaded,
    mailbox: &Mailbox,
    words: &str,
    throttle: &Throttle,
) -> Duration {
    stats::emit::send(&Event::Throttled {
        backend: mailbox.backend.clone(),
    });
    let now = cooldown::now();
    let until = now + length(settings, throttle).as_secs();
    let known = running(settings, files, &mailbox.lock_name);
    if let Some(known) = known.as_ref().filter(|k| k.until >= until) {
        return left(known);
    }
    let rest = Cooldown {
        until,
        words: printable(words.as_bytes()),
    };
    if let Err(e) = cooldown::write(&settings.lock_dir, &mailbox.lock_name, &rest) {
        warn!(
            "cannot record the rest of a throttled mailbox in {}: {e}; other sessions will \
             log in to it; check that lock_dir is writable by the service user",
            settings.lock_dir.display()
        );
    }
    if let Some(cluster) = &settings.cluster_lock {
        let shared = files
            .cluster_lock_password()
            .map_err(|e| e.to_string())
            .and_then(|password| {
                cooldown::write_shared(cluster, password, &mailbox.lock_name, &rest, now)
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = shared {
            warn!(
                "cluster lock: Redis {}: {e}; the rest of a throttled mailbox holds on this \
                 front-end only",
                cluster.address
            );
        }
    }
    if known.is_none() {
        warn!(
            "backend {}: mailbox {} is throttled by the provider ({}): no logins to it until {}",
            mailbox.backend,
            mailbox.user,
            rest.words,
            utc(until)
        );
    }
    Duration::from_secs(until - now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rest_is_the_suggestion_or_the_default_in_whole_seconds_and_bounded() {
        let mut settings = Settings::for_tests(std::path::Path::new("/nonexistent"));
        settings.throttle_cooldown = Duration::from_secs(300);
        let rest = |suggested| length(&settings, &Throttle { suggested });
        assert_eq!(rest(None), Duration::from_secs(300));
        assert_eq!(
            rest(Some(Duration::from_millis(299_961))),
            Duration::from_secs(300)
        );
        assert_eq!(rest(Some(Duration::ZERO)), MIN_THROTTLE_COOLDOWN);
        assert_eq!(
            rest(Some(Duration::from_secs(86_400))),
            MAX_THROTTLE_COOLDOWN
        );
    }

    #[test]
    fn a_rest_begins_once_holds_for_its_mailbox_only_and_a_later_end_wins() {
        let dir = std::env::temp_dir().join(format!("pop3server-rest-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut settings = Settings::for_tests(&dir);
        settings.throttle_cooldown = Duration::from_secs(60);
        let files = Preloaded::default();
        let mailbox = Mailbox::new(&settings, 0, b"Alice");
        let alice = crate::lock::lock_name("default", b"alice");
        assert_eq!(mailbox.lock_name, alice);
        let short = Throttle {
            suggested: Some(Duration::from_secs(5)),
        };
        assert_eq!(running(&settings, &files, &alice), None);
        let wait = begin(&settings, &files, &mailbox, "slow down", &short);
        assert_eq!(wait, Duration::from_secs(5));
        let rest = running(&settings, &files, &alice).expect("running");
        assert_eq!(rest.words, "slow down");
        let bob = crate::lock::lock_name("default", b"bob");
        assert_eq!(running(&settings, &files, &bob), None);
        // A second answer with a shorter time keeps the longer rest.
        let shorter = Throttle {
            suggested: Some(Duration::from_secs(2)),
        };
        let wait = begin(&settings, &files, &mailbox, "again", &shorter);
        assert!(wait > Duration::from_secs(2), "{wait:?}");
        assert_eq!(
            running(&settings, &files, &alice).map(|c| c.words),
            Some("slow down".into())
        );
        // One without a time gets throttle_cooldown, which ends later.
        let wait = begin(
            &settings,
            &files,
            &mailbox,
            "more",
            &Throttle { suggested: None },
        );
        assert_eq!(wait, Duration::from_secs(60));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
