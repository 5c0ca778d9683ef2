//! What the backend adapter needs to know of the configuration: where the
//! backends are (the routing table), how long to wait for them, which
//! folders form the maildrop, and where the lock, cache and token files
//! live. Assembled by the configuration code; nothing here reads a file.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::devices::oauth::settings::OAuthSource;
use crate::lock::cluster;
use crate::route::Routes;

#[derive(Debug, Clone)]
pub struct Settings {
    /// Which backend serves which user; `backends[0]` is the one of the
    /// top-level `backend_*` keys.
    pub routes: Routes,
    /// The IMAP folders that form the maildrop, in message-number order.
    pub folders: Vec<String>,
    /// EXAMINE instead of SELECT.
    pub read_only: bool,
    pub connect_timeout: Duration,
    /// How long one backend command may take.
    pub timeout: Duration,
    /// How long a mailbox rests after its provider throttled it without
    /// saying for how long.
    pub throttle_cooldown: Duration,
    /// Send IMAP ID with the client's address (RFC 2971).
    pub send_id: bool,
    /// The per-user lock files, and the login penalties by address.
    pub lock_dir: PathBuf,
    /// The lock that spans front-ends (Redis or Valkey), if configured.
    pub cluster_lock: Option<cluster::Settings>,
    /// The snapshot cache (message sizes by UID, see `sizecache`), if on.
    pub snapshot_cache: bool,
    pub cache_dir: PathBuf,
    /// Where the OAuth2 tokens of the token sources are kept.
    pub state_dir: PathBuf,
    /// USER/PASS is a device's (see `devices`), logged in to the backend
    /// with its token source's token.
    pub device_logins: bool,
    /// The `[oauth.NAME]` token sources.
    pub oauth: BTreeMap<String, OAuthSource>,
}

#[cfg(test)]
impl Settings {
    /// One backend (`default`, 127.0.0.1:1, never reached), INBOX, short
    /// timeouts, the lock, cache and state directories in `dir`.
    pub fn for_tests(dir: &std::path::Path) -> Settings {
        let backend = crate::route::test_backend("default", 1);
        Settings {
            routes: Routes {
                backends: vec![backend],
                rules: Vec::new(),
                default: Some(0),
            },
            folders: vec!["INBOX".into()],
            read_only: false,
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(5),
            throttle_cooldown: crate::limits::DEFAULT_THROTTLE_COOLDOWN,
            send_id: false,
            lock_dir: dir.join("lock"),
            cluster_lock: None,
            snapshot_cache: false,
            cache_dir: dir.join("cache"),
            state_dir: dir.to_path_buf(),
            device_logins: false,
            oauth: BTreeMap::new(),
        }
    }
}
