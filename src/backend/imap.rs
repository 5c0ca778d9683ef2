//! Carries the session's backend requests out over one IMAP connection and
//! the lock directory, and turns every error into a typed [`Failure`]. It
//! makes no POP3 decisions: which folder is selected, when to reconnect
//! (never, after the connection is lost) and how an IMAP error is classified
//! are its business; what the client is told is the session's.

use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{debug, error, warn};

use super::settings::Settings;
use super::{
    Credentials, ExpungeAnswer, FactsAnswer, FactsRequest, Failure, FailureKind, LockAnswer,
    LoginAnswer, Outcome, PieceAnswer, PieceRequest, PrefetchRequest, Read,
};
use crate::clusterlock::{self, Acquired, Fallback, Lease, LeaseError};
use crate::imap::{
    BodyStream, Client, Endpoint, Expunged, GMAIL_CAPABILITY, ImapError, Login, Security, Selected,
};
use crate::limits::EARLY_CONNECTION_MAX_AGE;
use crate::lock::{self, LockError, LockGuard};
use crate::logging::printable;
use crate::maildrop::{BackendMessage, FolderDeletions, FolderSnapshot};
use crate::oauth::store::Store;
use crate::oauth::{self, TokenError};
use crate::penalty;
use crate::preload::Preloaded;
use crate::route::{self, Backend, BackendTls, Host};
use crate::secret::Secret;
use crate::sizecache::{DigestCache, SizeCache};
use crate::tls;
use crate::uidl::{self, Fact, FactKind, HeaderDigest};

pub struct ImapBackend<'a> {
    settings: &'a Settings,
    /// Files read before root was left (devices, client secrets).
    files: &'a Preloaded,
    /// The POP3 client's address, for IMAP `ID` (backend_send_id).
    peer: Option<SocketAddr>,
    client: Option<Client>,
    /// Which configured folder is selected on `client`.
    selected: Option<usize>,
    /// Held for the rest of the process once taken.
    lock: Option<LockGuard>,
    /// The cluster-wide lease, renewed by the driver through `keep_lease`.
    lease: Option<Lease>,
    /// A message being read whole by one fetch, between its pieces.
    body: Option<BodyStream>,
    /// Messages of the selected folder that a RETR with `\Seen` read from
    /// a fetch sent ahead (`BODY.PEEK[]`): `\Seen` is still to be set.
    owed_seen: Vec<u32>,
    /// The connection `connect_early` is making, since when, and to which
    /// backend.
    early: Option<Early>,
    /// The backend of this session (index into `config.routes.backends`):
    /// the login's route once known.
    backend: Option<usize>,
    /// Which backend `client` is connected to.
    connected_to: Option<usize>,
    /// The IMAP identity logged in as, after the route's rewrite or a
    /// device's mapping: the maildrop the lock is taken for.
    mailbox: Option<Vec<u8>>,
    /// The lock's name (backend and IMAP identity): the snapshot cache is
    /// per maildrop as the lock is.
    lock_name: Option<String>,
    /// The connection failed and is gone: nothing more is tried on it.
    broken: bool,
    /// How the session logged in, kept (in `Secret`s) so that QUIT can log
    /// in once more if the connection was lost meanwhile.
    relogin: Option<Relogin>,
    /// The one reconnection of the session was used.
    reconnected: bool,
}

/// A connection being made in a thread of its own: since when, to which
/// backend.
type Early = (Instant, usize, JoinHandle<Result<Client, ImapError>>);

/// What logs in again.
enum Relogin {
    Password {
        login: Vec<u8>,
        authzid: Option<Vec<u8>>,
        password: Secret,
    },
    /// A SASL token response: the client's own, or a device's.
    Token {
        mechanism: &'static str,
        response: Secret,
    },
}

impl<'a> ImapBackend<'a> {
    pub fn new(settings: &'a Settings, files: &'a Preloaded, peer: Option<SocketAddr>) -> Self {
        ImapBackend {
            settings,
            files,
            peer,
            client: None,
            selected: None,
            lock: None,
            lease: None,
            lock_name: None,
            broken: false,
            relogin: None,
            reconnected: false,
            body: None,
            owed_seen: Vec::new(),
            early: None,
            backend: None,
            connected_to: None,
            mailbox: None,
        }
    }

    /// A connection failed during the session (for the summary line).
    pub fn failed(&self) -> bool {
        self.broken
    }

    /// Ends the IMAP session (LOGOUT, never CLOSE) and releases the lock.
    pub fn finish(&mut self) {
        // An early connection nobody used (a client that never logged in)
        // is just closed with the process: no LOGOUT round trip for it.
        self.early = None;
        // Pays the \Seen still owed first.
        self.release_lock();
        if let Some(client) = self.client.take() {
            client.logout();
        }
    }

    /// Gives up the maildrop: the cluster lock's lease, then the local lock.
    /// The session must not change the mailbox after this.
    pub fn release_lock(&mut self) {
        // \Seen owed by messages read ahead is the session's last change.
        if self.lock.is_some()
            && self.client.is_some()
            && let Err(e) = self.pay_seen()
        {
            debug!("\\Seen not set at the end: {e}");
        }
        if let Some(lease) = self.lease.take()
            && let Err(e) = lease.release()
        {
            // It expires by itself after cluster_lock_ttl.
            warn!("cannot release the cluster lock: {e}");
        }
        self.lock = None;
    }

    pub fn capabilities(&mut self) -> Outcome<Vec<String>> {
        Ok(self.client()?.capabilities().to_vec())
    }

    pub fn login(&mut self, credentials: Credentials) -> Outcome<LoginAnswer> {
        if let (true, Credentials::Password { .. }) = (self.settings.device_logins, &credentials) {
            return self.device_login(credentials);
        }
        let user = credentials.maildrop_user().unwrap_or_default();
        let Some(route) = self.route(&user) else {
            return Ok(LoginAnswer::Unrouted);
        };
        let credentials = match credentials {
            // A master-user login keeps its login and opens the rewritten
            // mailbox.
            Credentials::Password {
                login,
                authzid: Some(_),
                password,
            } => Credentials::Password {
                login,
                authzid: Some(route.login.clone()),
                password,
            },
            Credentials::Password {
                authzid: None,
                password,
                ..
            } => Credentials::Password {
                login: route.login.clone(),
                authzid: None,
                password,
            },
            // A token names its user inside, signed: passed as it came.
            token @ Credentials::Token { .. } => token,
        };
        self.mailbox = credentials.maildrop_user();
        let client = self.client()?;
        let login = match &credentials {
            Credentials::Password {
                login,
                authzid,
                password,
            } => client.login(login, authzid.as_deref(), password),
            Credentials::Token {
                mechanism,
                response,
            } => client.login_token(mechanism.name(), response),
        };
        match login {
            Ok(Login::Ok) => {
                self.relogin = Some(match credentials {
                    Credentials::Password {
                        login,
                        authzid,
                        password,
                    } => Relogin::Password {
                        login,
                        authzid,
                        password,
                    },
                    Credentials::Token {
                        mechanism,
                        response,
                    } => Relogin::Token {
                        mechanism: mechanism.name(),
                        response,
                    },
                });
                Ok(LoginAnswer::LoggedIn)
            }
            Ok(Login::Rejected(reason)) => Ok(LoginAnswer::Rejected {
                penalty: Duration::ZERO,
                reason,
            }),
            Ok(Login::TemporaryFailure(text)) => Ok(LoginAnswer::Unavailable(text)),
            Err(e) => Err(self.failure("login", e)),
        }
    }

    /// A device: its own password is checked here (an unknown device the
    /// same way as a wrong password), then the backend is logged in to as
    /// its mailbox with a token of its source.
    fn device_login(&mut self, credentials: Credentials) -> Outcome<LoginAnswer> {
        let Credentials::Password {
            login,
            authzid,
            password,
        } = credentials
        else {
            return Err(Failure::new(FailureKind::Local, "not a password login"));
        };
        let files = self.files;
        let devices = files.devices().map_err(|why| {
            error!("device logins are off: {why}");
            Failure::new(FailureKind::Local, why)
        })?;
        let device = devices.authenticate(&login, &password);
        drop(password);
        // A device logs in as itself only: no master-user authzid.
        let device = device.filter(|_| authzid.is_none_or(|a| a == login));
        let Some(device) = device else {
            return Ok(LoginAnswer::Rejected {
                penalty: self.record_failure(),
                reason: "no such device, or not its password (devices_file)".into(),
            });
        };
        if let Some(ip) = self.peer.map(|p| p.ip()) {
            penalty::clear(&self.settings.lock_dir, ip);
        }
        if self.route(device.mailbox.as_bytes()).is_none() {
            return Ok(LoginAnswer::Unrouted);
        }
        // The token is for this mailbox: no rewrite.
        self.mailbox = Some(device.mailbox.clone().into_bytes());
        let config = self.settings;
        let Some(source) = config.oauth.get(&device.oauth) else {
            error!(
                "device {}: oauth = {:?} names no [oauth.NAME] of the configuration",
                device.name, device.oauth
            );
            return Ok(LoginAnswer::Unavailable("device misconfigured".into()));
        };
        let store = Store::new(&config.state_dir, source)
            .with_client_secret(files.client_secret(&source.name));
        let mut refused: Option<Secret> = None;
        // A token the store thought valid may still be refused (revoked,
        // clock skew): refresh once and try once more.
        for attempt in 0..2 {
            let token = match store.access_token(refused.as_ref()) {
                Ok(t) => t.access_token,
                Err(e) => {
                    token_error(&device.name, &e);
                    return Ok(LoginAnswer::Unavailable(e.to_string()));
                }
            };
            let response = oauth::sasl_response(source.mechanism, &device.mailbox, &token);
            let mechanism = source.mechanism.name();
            let login = self.client()?.login_token(mechanism, &response);
            match login {
                Ok(Login::Ok) => {
                    self.relogin = Some(Relogin::Token {
                        mechanism,
                        response,
                    });
                    return Ok(LoginAnswer::LoggedInAs(device.mailbox.clone().into_bytes()));
                }
                Ok(Login::Rejected(_)) if attempt == 0 => refused = Some(token),
                Ok(Login::Rejected(_)) => {
                    error!(
                        "device {}: the backend refused a fresh token of [oauth.{}] for mailbox {}: \
                         check that the app may access that mailbox",
                        device.name, source.name, device.mailbox
                    );
                    return Ok(LoginAnswer::Unavailable("token refused".into()));
                }
                Ok(Login::TemporaryFailure(text)) => return Ok(LoginAnswer::Unavailable(text)),
                Err(e) => return Err(self.failure("login", e)),
            }
        }
        Ok(LoginAnswer::Unavailable("token refused".into()))
    }

    /// Counts a failed device login against the client's address.
    fn record_failure(&self) -> Duration {
        let Some(ip) = self.peer.map(|p| p.ip()) else {
            return Duration::ZERO;
        };
        penalty::record_failure(&self.settings.lock_dir, ip).unwrap_or_else(|e| {
            warn!(
                "cannot record a failed login in {}: {e}",
                self.settings.lock_dir.display()
            );
            Duration::ZERO
        })
    }

    /// The local lock, then (if configured) the cluster-wide lease: the
    /// local one first, as it is free and catches a second session on this
    /// host without a round trip.
    pub fn lock(&mut self, user: &[u8]) -> Outcome<LockAnswer> {
        let backend = &self.settings.routes.backends[self.backend.unwrap_or(0)].name;
        let name = lock::lock_name(backend, self.mailbox.as_deref().unwrap_or(user));
        match lock::try_lock(&self.settings.lock_dir, &name) {
            Ok(guard) => {
                if let Some(settings) = &self.settings.cluster_lock {
                    let password = self.files.cluster_lock_password().map_err(|why| {
                        error!("cluster lock: {why}");
                        Failure::new(FailureKind::Local, why)
                    })?;
                    match clusterlock::acquire(settings, password, &name) {
                        Ok(Acquired::Held(lease)) => self.lease = Some(lease),
                        Ok(Acquired::InUse) => return Ok(LockAnswer::InUse),
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
                self.lock = Some(guard);
                self.lock_name = Some(name);
                Ok(LockAnswer::Locked)
            }
            Err(LockError::InUse) => Ok(LockAnswer::InUse),
            Err(LockError::Io { path, error: e }) => {
                error!(
                    "cannot lock {}: {e}; check that lock_dir exists and is writable by the service user",
                    path.display()
                );
                Err(Failure::new(
                    FailureKind::Local,
                    format!("cannot lock {}: {e}", path.display()),
                ))
            }
        }
    }

    /// When the cluster lock's lease must next be renewed, if one is held.
    pub fn lease_due(&self) -> Option<Instant> {
        self.lease.as_ref().map(Lease::due)
    }

    /// Renews the lease. `Err` says why the session must end without
    /// UPDATE: the lease is gone, or Redis cannot confirm it and it may
    /// have expired. With `cluster_lock_fallback = local` an unreachable
    /// Redis leaves the session on its local lock instead.
    pub fn keep_lease(&mut self) -> Result<(), String> {
        let Some(lease) = self.lease.as_mut() else {
            return Ok(());
        };
        let Some(settings) = &self.settings.cluster_lock else {
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
                Err(format!(
                    "(cluster lock: Redis {} cannot confirm the lease, which may have expired: {e})",
                    settings.address
                ))
            }
            Err(e @ LeaseError::Lost) => {
                self.lease = None;
                Err(format!("(cluster lock in Redis {}: {e})", settings.address))
            }
        }
    }

    /// SELECT (EXAMINE when read-only) and the snapshot of one folder:
    /// from the snapshot cache and the UID list where the cache has sizes,
    /// else one size per message from the backend.
    pub fn open_folder(&mut self, folder: usize) -> Outcome<FolderSnapshot> {
        let cache = match (&self.lock_name, self.settings.snapshot_cache) {
            (Some(lock), true) => Some(SizeCache::new(
                &self.settings.cache_dir,
                lock,
                &self.settings.folders[folder],
            )),
            _ => None,
        };
        // With sizes cached, the UID list is all the backend is asked, and
        // it is asked along with the SELECT.
        let (selected, uids) = if cache.as_ref().is_some_and(|c| c.path().exists()) {
            self.select_asking(folder, true)?
        } else {
            (self.select(folder)?, None)
        };
        let cached = cache.as_ref().and_then(|c| {
            c.load(selected.uid_validity)
                .inspect_err(|why| debug!("snapshot cache not used: {why}"))
                .ok()
        });
        let client = self.client()?;
        let listed = match &cached {
            Some(sizes) => listed_with(client, &selected, uids, sizes),
            None => client.snapshot(&selected),
        };
        let messages = listed.map_err(|e| self.failure("listing messages", e))?;
        if let Some(cache) = &cache {
            let unchanged = cached.as_ref().is_some_and(|sizes| {
                sizes.len() == messages.len()
                    && sizes
                        .iter()
                        .zip(&messages)
                        .all(|(&(uid, size), m)| uid == m.uid && size == m.size)
            });
            if !unchanged {
                let sizes: Vec<(u32, u64)> = messages.iter().map(|m| (m.uid, m.size)).collect();
                if let Err(e) = cache.store(selected.uid_validity, &sizes) {
                    warn!(
                        "cannot write the snapshot cache {}: {e}; check that cache_dir exists and is \
                         writable by the service user, or set snapshot_cache = false",
                        cache.path().display()
                    );
                }
            }
        }
        Ok(FolderSnapshot {
            uid_validity: selected.uid_validity,
            messages,
        })
    }

    /// The facts a UIDL format needs for one folder, by one `UID FETCH`
    /// (see `Client::gmail_msgids`, `Client::fetch_headers`); a header is
    /// reduced to its digest as it arrives.
    pub fn uidl_facts(&mut self, request: &FactsRequest) -> Outcome<FactsAnswer> {
        self.end_body()?;
        if !self.enter(request.folder, request.uid_validity)? {
            return Ok(FactsAnswer::FolderChanged);
        }
        let config = self.settings;
        let name = &config.folders[request.folder];
        let client = self.client()?;
        let fetched = match request.kind {
            FactKind::GmailMsgId if !client.has_gmail_ext() => {
                return Ok(FactsAnswer::Unsupported {
                    capability: GMAIL_CAPABILITY,
                });
            }
            FactKind::GmailMsgId => client.gmail_msgids(&request.uids).map(|ids| {
                ids.into_iter()
                    .map(|(uid, id)| (uid, Fact::GmailMsgId(id)))
                    .collect()
            }),
            FactKind::HeaderDigest => {
                return self.header_digests(request);
            }
        };
        match fetched {
            Ok(facts) => Ok(FactsAnswer::Facts(facts)),
            Err(e) => Err(self.failure(&format!("fetching the UIDL facts in {name:?}"), e)),
        }
    }

    /// The header digests of one folder (already selected): from the
    /// digest cache where it has them (with `snapshot_cache`), from the
    /// backend for the rest, in one `UID FETCH`; the cache is then
    /// rewritten with exactly this folder's digests if they changed.
    fn header_digests(&mut self, request: &FactsRequest) -> Outcome<FactsAnswer> {
        let config = self.settings;
        let name = &config.folders[request.folder];
        let cache = match (&self.lock_name, config.snapshot_cache) {
            (Some(lock), true) => Some(DigestCache::new(&config.cache_dir, lock, name)),
            _ => None,
        };
        let cached = cache
            .as_ref()
            .and_then(|c| {
                c.load(request.uid_validity)
                    .inspect_err(|why| debug!("header digest cache not used: {why}"))
                    .ok()
            })
            .unwrap_or_default();
        // Both sorted by UID: a merge. UIDs the folder no longer has drop out.
        let mut wanted = request.uids.clone();
        wanted.sort_unstable();
        wanted.dedup();
        let mut known: Vec<(u32, HeaderDigest)> = Vec::with_capacity(wanted.len());
        let mut missing = Vec::new();
        let mut from_cache = cached.iter().peekable();
        for &uid in &wanted {
            while from_cache.next_if(|&&(u, _)| u < uid).is_some() {}
            match from_cache.next_if(|&&(u, _)| u == uid) {
                Some(&entry) => known.push(entry),
                None => missing.push(uid),
            }
        }
        if !missing.is_empty() {
            let client = self.client()?;
            let mut fetched = Vec::with_capacity(missing.len());
            let done = client.fetch_headers(&missing, |uid, header| {
                // Only what was asked for goes into the answer and the file.
                if missing.binary_search(&uid).is_ok() {
                    fetched.push((uid, uidl::header_digest(header)));
                }
            });
            if let Err(e) = done {
                return Err(self.failure(&format!("fetching the headers in {name:?}"), e));
            }
            known.extend(fetched);
            // Stable: of two answers for one UID the first stays, as in `set_facts`.
            known.sort_by_key(|&(uid, _)| uid);
            known.dedup_by_key(|&mut (uid, _)| uid);
        }
        if let Some(cache) = &cache
            && known != cached
            && let Err(e) = cache.store(request.uid_validity, &known)
        {
            warn!(
                "cannot write the header digest cache {}: {e}; check that cache_dir exists and is \
                 writable by the service user, or set snapshot_cache = false",
                cache.path().display()
            );
        }
        Ok(FactsAnswer::Facts(
            known
                .into_iter()
                .map(|(uid, d)| (uid, Fact::HeaderDigest(d)))
                .collect(),
        ))
    }

    pub fn piece(&mut self, piece: PieceRequest) -> Outcome<PieceAnswer> {
        if let Read::Whole { set_seen, limit } = piece.read {
            return self.whole_piece(piece, set_seen, limit);
        }
        self.end_body()?;
        if !self.enter(piece.folder, piece.uid_validity)? {
            return Ok(PieceAnswer::FolderChanged);
        }
        let fetched = self
            .client()?
            .fetch_piece(piece.uid, piece.offset, piece.len);
        match fetched {
            Ok(Some(bytes)) => Ok(PieceAnswer::Bytes(bytes)),
            Ok(None) => Ok(PieceAnswer::NoMessage),
            Err(e) => Err(self.failure(&format!("fetching message UID {}", piece.uid), e)),
        }
    }

    /// The next piece of a message read whole by one fetch: the fetch is
    /// started at offset 0 and read on as the session asks for more.
    fn whole_piece(
        &mut self,
        piece: PieceRequest,
        set_seen: bool,
        limit: u64,
    ) -> Outcome<PieceAnswer> {
        let uid = piece.uid;
        if piece.offset == 0 {
            self.end_body()?;
            if !self.enter(piece.folder, piece.uid_validity)? {
                return Ok(PieceAnswer::FolderChanged);
            }
            let client = self.client()?;
            // A fetch sent ahead has no `\Seen` in it: owed, see `pay_seen`.
            let ahead = client.next_prefetched() == Some(uid);
            let started = client.start_body(uid, !set_seen || ahead, limit);
            match started {
                Ok(Some(body)) => {
                    if ahead && set_seen {
                        self.owed_seen.push(uid);
                    }
                    self.body = Some(body);
                }
                Ok(None) => return Ok(PieceAnswer::NoMessage),
                Err(e) => return Err(self.failure(&format!("fetching message UID {uid}"), e)),
            }
        }
        let Some(mut body) = self.body.take() else {
            return Err(Failure::new(
                FailureKind::Local,
                format!(
                    "piece {} of UID {uid} asked for without its fetch",
                    piece.offset
                ),
            ));
        };
        if body.uid != uid || body.position() != piece.offset {
            return Err(Failure::new(
                FailureKind::Local,
                format!(
                    "piece {} of UID {uid} asked for while at {} of UID {}",
                    piece.offset,
                    body.position(),
                    body.uid
                ),
            ));
        }
        let read = self.client()?.read_body(&mut body, piece.len as usize);
        match read {
            Ok(bytes) => {
                // Kept when done too: a body of whole pieces ends with one
                // more, empty, piece asked for.
                self.body = Some(body);
                Ok(PieceAnswer::Bytes(bytes))
            }
            Err(e) => Err(self.failure(&format!("fetching message UID {uid}"), e)),
        }
    }

    /// Sends the fetch of the message the client will likely ask for next,
    /// without waiting for its answer (`backend_prefetch`). Only in the
    /// folder already selected and on a connection that is idle: a fetch
    /// ahead never costs a command of its own.
    pub fn prefetch(&mut self, next: PrefetchRequest) -> Outcome<()> {
        if self.selected != Some(next.folder) || self.body.as_ref().is_some_and(|b| !b.is_done()) {
            return Ok(());
        }
        let Some(client) = self.client.as_mut() else {
            return Ok(());
        };
        // The batch asked for earlier is still being served.
        if client.next_prefetched().is_some() {
            return Ok(());
        }
        let sent = client.prefetch_bodies(&next.uids);
        sent.map_err(|e| {
            self.failure(
                &format!("asking for UIDs {} ahead", uid_list(&next.uids)),
                e,
            )
        })
    }

    /// Sets the `\Seen` that messages served from a fetch ahead still owe,
    /// in the selected folder: before another folder is selected, before
    /// QUIT's expunge, at the end. A refusal is only logged: the messages
    /// were delivered, and a missing `\Seen` loses nothing.
    fn pay_seen(&mut self) -> Outcome<()> {
        if self.owed_seen.is_empty() {
            return Ok(());
        }
        let uids = std::mem::take(&mut self.owed_seen);
        let marked = self.client()?.mark_seen(&uids);
        match marked {
            Ok(()) => Ok(()),
            Err(e @ ImapError::Refused { .. }) => {
                warn!(
                    "backend refused \\Seen for UIDs {} read ahead: {e}",
                    uid_list(&uids)
                );
                Ok(())
            }
            Err(e) => Err(self.failure("setting \\Seen", e)),
        }
    }

    /// Reads what is left of a body fetch nobody asks for any more, so the
    /// connection is ready for the next command.
    fn end_body(&mut self) -> Outcome<()> {
        let Some(mut body) = self.body.take().filter(|b| !b.is_done()) else {
            return Ok(());
        };
        let drained = self.client()?.drain_body(&mut body);
        drained.map_err(|e| self.failure(&format!("finishing the fetch of UID {}", body.uid), e))
    }

    /// The expunge of QUIT. If the connection is found lost (servers close
    /// idle IMAP connections while a client reads its mail), or breaks
    /// before the expunge is confirmed, it logs in once more, checks that
    /// UIDVALIDITY is unchanged, and expunges by UID again: without this
    /// the client would download and delete everything again next time.
    pub fn expunge(&mut self, expunge: &FolderDeletions) -> Outcome<ExpungeAnswer> {
        self.end_body()?;
        // Before the expunge, whose reconnection would lose them.
        if let Err(e) = self.pay_seen() {
            debug!("\\Seen not set before the expunge: {e}");
        }
        let first = self.expunge_once(expunge);
        let lost = match &first {
            Err(f) => f.kind == FailureKind::Lost,
            Ok(ExpungeAnswer::Unconfirmed) => true,
            Ok(_) => false,
        };
        if !lost || self.reconnected || self.relogin.is_none() {
            return first;
        }
        self.reconnected = true;
        if let Err(e) = self.log_in_again() {
            warn!("cannot log in again to finish QUIT: {e}");
            return first;
        }
        let name = &self.settings.folders[expunge.folder];
        warn!(
            "the backend connection was lost: logged in again to delete the messages in {name:?}"
        );
        self.expunge_once(expunge)
    }

    /// A fresh connection with the session's login.
    fn log_in_again(&mut self) -> Outcome<()> {
        self.client = None;
        self.selected = None;
        self.owed_seen.clear();
        self.broken = false;
        let relogin = self.relogin.take();
        if let Err(e) = self.client() {
            self.relogin = relogin;
            return Err(e);
        }
        let result = match &relogin {
            Some(Relogin::Password {
                login,
                authzid,
                password,
            }) => {
                let r = self.client()?.login(login, authzid.as_deref(), password);
                r.map_err(|e| self.failure("login again", e))
            }
            Some(Relogin::Token {
                mechanism,
                response,
            }) => {
                let r = self.client()?.login_token(mechanism, response);
                r.map_err(|e| self.failure("login again", e))
            }
            None => Err(Failure::new(FailureKind::Local, "no login to repeat")),
        };
        self.relogin = relogin;
        match result? {
            Login::Ok => Ok(()),
            Login::Rejected(_) | Login::TemporaryFailure(_) => {
                self.client = None;
                self.broken = true;
                Err(Failure::new(
                    FailureKind::Lost,
                    "the backend refused the login this time",
                ))
            }
        }
    }

    fn expunge_once(&mut self, expunge: &FolderDeletions) -> Outcome<ExpungeAnswer> {
        let config = self.settings;
        let name = &config.folders[expunge.folder];
        if !self.enter(expunge.folder, expunge.uid_validity)? {
            warn!("folder {name:?} changed UIDVALIDITY during the session: nothing deleted there");
            return Ok(ExpungeAnswer::FolderChanged);
        }
        let expunged = self.client()?.expunge(&expunge.uids);
        match expunged {
            Ok(Expunged::Done) => Ok(ExpungeAnswer::Expunged),
            Ok(Expunged::LeftFlagged) => {
                warn!(
                    "backend has no UIDPLUS and other messages in {name:?} are flagged \\Deleted: left {} messages flagged, not expunged",
                    expunge.uids.len()
                );
                Ok(ExpungeAnswer::LeftFlagged)
            }
            Err(ImapError::Unconfirmed(e)) => {
                warn!(
                    "deleting messages in {name:?}: \\Deleted was set on UIDs {} (UIDVALIDITY {}) but the expunge was not confirmed: they may still be there, flagged, until any client's next expunge",
                    uid_list(&expunge.uids),
                    expunge.uid_validity
                );
                let _ = self.failure(&format!("deleting messages in {name:?}"), *e);
                Ok(ExpungeAnswer::Unconfirmed)
            }
            Err(e) => Err(self.failure(&format!("deleting messages in {name:?}"), e)),
        }
    }

    /// Starts connecting now, in a thread of its own, so that the TCP
    /// connection, TLS and the backend's greeting overlap with the client's
    /// way to the login (on loopback too, where its round trips are too
    /// short to hide anything). Only a connection: nothing the client sends
    /// goes to the backend before a command needs it. A failure is only
    /// noted: the login connects again and reports it.
    pub fn connect_early(&mut self) {
        if self.client.is_some() || self.broken || self.early.is_some() {
            return;
        }
        // Only where every user, or the unmatched ones, go anyway.
        let Some(index) = self.settings.routes.before_login() else {
            return;
        };
        let config = self.settings.clone();
        let peer = self.peer;
        let spawned = std::thread::Builder::new()
            .name("backend-connect".into())
            .spawn(move || {
                let mut client = connect(&config, index)?;
                send_id(&config, peer, &mut client);
                Ok(client)
            });
        match spawned {
            Ok(handle) => self.early = Some((Instant::now(), index, handle)),
            Err(e) => debug!("cannot start the early backend connection: {e}"),
        }
    }

    /// The connection, opened on first use (or taken from `connect_early`);
    /// never reopened once lost (the login and the selected folder went
    /// with it).
    fn client(&mut self) -> Outcome<&mut Client> {
        let Some(want) = self.backend.or(self.settings.routes.before_login()) else {
            return Err(Failure::new(
                FailureKind::Local,
                "no backend before the login (default_backend = none)",
            ));
        };
        if let Some((started, index, handle)) = self.early.take() {
            // The user is routed elsewhere: not waited for (that backend may
            // be the one that is down), left to end with the process.
            let joined = (index == want).then(|| handle.join());
            match joined {
                None => debug!("early backend connection not used: the user is routed elsewhere"),
                // Likely closed by the server meanwhile: start afresh.
                Some(Ok(Ok(_))) if started.elapsed() > EARLY_CONNECTION_MAX_AGE => {}
                Some(Ok(Ok(client))) => {
                    self.client = Some(client);
                    self.connected_to = Some(index);
                }
                Some(Ok(Err(e))) => {
                    debug!("early backend connection failed, connecting again: {e}")
                }
                Some(Err(_)) => debug!("early backend connection failed, connecting again"),
            }
        }
        // Made before the login's route was known (for the SASL
        // mechanisms), to a backend the user does not live on.
        if self.connected_to != Some(want)
            && let Some(client) = self.client.take()
        {
            client.logout();
            self.selected = None;
        }
        if self.client.is_none() {
            if self.broken {
                return Err(Failure::new(
                    FailureKind::Lost,
                    "the backend connection was lost earlier",
                ));
            }
            let connected = connect(self.settings, want);
            let mut client = connected.map_err(|e| self.failure("connect", e))?;
            send_id(self.settings, self.peer, &mut client);
            self.client = Some(client);
            self.connected_to = Some(want);
        }
        self.client
            .as_mut()
            .ok_or_else(|| Failure::new(FailureKind::Lost, "no backend connection"))
    }

    fn select(&mut self, folder: usize) -> Outcome<crate::imap::Selected> {
        Ok(self.select_asking(folder, false)?.0)
    }

    /// `select`, with the UID list asked along (`with_uids`) where the
    /// backend allows (see `Client::select_with_uids`).
    fn select_asking(
        &mut self,
        folder: usize,
        with_uids: bool,
    ) -> Outcome<(crate::imap::Selected, Option<Vec<u32>>)> {
        let config = self.settings;
        let name = &config.folders[folder];
        // Owed in the folder selected now, which this select leaves.
        self.pay_seen()?;
        self.selected = None;
        let read_only = self.settings.read_only;
        let client = self.client()?;
        let answer = if with_uids {
            client.select_with_uids(name, read_only)
        } else {
            client.select(name, read_only).map(|s| (s, None))
        };
        let answer = answer.map_err(|e| self.failure(&format!("opening folder {name:?}"), e))?;
        self.selected = Some(folder);
        Ok(answer)
    }

    /// Makes `folder` the selected one, if it is not already; `false` if its
    /// UIDVALIDITY changed since login.
    fn enter(&mut self, folder: usize, uid_validity: u32) -> Outcome<bool> {
        if self.selected == Some(folder) {
            return Ok(true);
        }
        Ok(self.select(folder)?.uid_validity == uid_validity)
    }

    /// Classifies and logs an IMAP error. After anything but a refused
    /// command the connection is dropped.
    fn failure(&mut self, what: &str, e: ImapError) -> Failure {
        let routes = &self.settings.routes;
        let index = self.backend.or(routes.before_login()).unwrap_or(0);
        let at = describe(&routes.backends[index]);
        let kind = match &e {
            ImapError::Refused { .. } => FailureKind::Refused,
            ImapError::Resolve(_)
            | ImapError::Connect(_)
            | ImapError::Tls(_)
            | ImapError::Certificate(_) => FailureKind::Unreachable,
            ImapError::Timeout | ImapError::Closed | ImapError::Io(_) | ImapError::Bye(_) => {
                FailureKind::Lost
            }
            ImapError::Protocol(_) => FailureKind::Protocol,
            ImapError::Unconfirmed(_) => FailureKind::Lost,
        };
        if let ImapError::Refused { info, .. } = &e {
            warn!("backend {at}: {what}: {e}");
            // The backend's own words, its response code first: what a
            // client (and the admin reading the client's error) can act on.
            let text = match &info.code {
                Some(code) => format!("[{}] {}", code.name, info.text),
                None => info.text.clone(),
            };
            return Failure::new(kind, printable(text.as_bytes()));
        }
        warn!("backend {at}: {what}: {e}");
        self.client = None;
        self.connected_to = None;
        self.selected = None;
        self.owed_seen.clear();
        self.broken = true;
        Failure::new(kind, format!("{what}: {e}"))
    }

    /// The route of `user`, which becomes this session's backend.
    fn route(&mut self, user: &[u8]) -> Option<route::Route> {
        let routes = &self.settings.routes;
        let route = routes.route(user)?;
        if route.rule.is_some() {
            debug!(
                "user {} goes to backend {} as {} ({})",
                printable(user),
                routes.backends[route.backend].name,
                printable(&route.login),
                routes.describe(&route)
            );
        }
        self.backend = Some(route.backend);
        Some(route)
    }
}

/// A backend for log lines: its address as before routing existed when it
/// is the one default host, else its name and hosts.
pub fn describe(backend: &Backend) -> String {
    match backend.hosts.as_slice() {
        [host] if backend.name == route::DEFAULT_BACKEND => host.to_string(),
        hosts => format!(
            "{} ({})",
            backend.name,
            hosts
                .iter()
                .map(Host::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Connects to backend `index`, its hosts in order: the next is tried when
/// one cannot be reached or its TLS fails, never after a refused
/// certificate (the configuration, or an attack) and never later in the
/// session (an authentication failure is the user's answer).
pub fn connect(config: &Settings, index: usize) -> Result<Client, ImapError> {
    let backend = &config.routes.backends[index];
    let skipped = |host: &Host, e: &ImapError| {
        warn!(
            "backend {}: {host}: {e}; trying the next host",
            backend.name
        )
    };
    connect_hosts(config, backend, skipped)
        .map(|(client, _)| client)
        .map_err(|(e, _)| e)
}

/// `connect`'s failover, for sessions and `--check` alike: `skipped` hears
/// of each host given up for the next. The host connected to, or the one
/// whose error is returned (none if the backend has no hosts).
pub fn connect_hosts<'c>(
    config: &Settings,
    backend: &'c Backend,
    mut skipped: impl FnMut(&Host, &ImapError),
) -> Result<(Client, &'c Host), (ImapError, Option<&'c Host>)> {
    let mut hosts = backend.hosts.iter().peekable();
    while let Some(host) = hosts.next() {
        let connected = endpoint(config, backend, host).and_then(|e| Client::connect(&e));
        match connected {
            Ok(client) => return Ok((client, host)),
            Err(e @ (ImapError::Certificate(_) | ImapError::Refused { .. })) => {
                return Err((e, Some(host)));
            }
            Err(e) if hosts.peek().is_some() => skipped(host, &e),
            Err(e) => return Err((e, Some(host))),
        }
    }
    let none = format!("backend {} has no hosts", backend.name);
    Err((ImapError::Connect(none), None))
}

/// UIDs for a log line, at most a screenful.
fn uid_list(uids: &[u32]) -> String {
    const SHOWN: usize = 50;
    let mut text: Vec<String> = uids.iter().take(SHOWN).map(u32::to_string).collect();
    if uids.len() > SHOWN {
        text.push(format!("... ({} in all)", uids.len()));
    }
    text.join(",")
}

/// One log line an admin can act on; no token in it.
fn token_error(device: &str, e: &TokenError) {
    match e {
        TokenError::Unavailable(_) => warn!("device {device}: no token now: {e}"),
        TokenError::InvalidGrant(_) | TokenError::Setup(_) => {
            error!("device {device}: no token: {e}")
        }
    }
}

/// Where and how to reach one host of a backend, TLS settings included.
pub fn endpoint(config: &Settings, backend: &Backend, host: &Host) -> Result<Endpoint, ImapError> {
    let verify = if let Some(pin) = backend.fingerprint {
        tls::Verify::Pinned(pin)
    } else if !backend.verify {
        tls::Verify::Nothing
    } else if let Some(ca) = &backend.ca_file {
        tls::Verify::CaFile(ca)
    } else {
        tls::Verify::SystemRoots
    };
    let tls_settings = || -> Result<_, ImapError> {
        let setup = |e: tls::TlsSetupError| ImapError::Tls(e.to_string());
        if !backend.verify && backend.fingerprint.is_none() {
            warn!(
                "TLS verification is off for backend {} (backend_tls_verify or tls_verify = false): \
                 its certificate is NOT checked, the connection can be intercepted",
                backend.name
            );
        }
        Ok((
            tls::client_config(verify).map_err(setup)?,
            tls::server_name(&host.host).map_err(setup)?,
        ))
    };
    let security = match backend.tls {
        BackendTls::None => Security::Plain,
        BackendTls::StartTls => {
            let (c, name) = tls_settings()?;
            Security::StartTls(c, name)
        }
        BackendTls::Implicit => {
            let (c, name) = tls_settings()?;
            Security::Implicit(c, name)
        }
    };
    Ok(Endpoint {
        host: host.host.clone(),
        port: host.port,
        connect_timeout: config.connect_timeout,
        timeout: config.timeout,
        security,
    })
}

fn send_id(config: &Settings, peer: Option<SocketAddr>, client: &mut Client) {
    if config.send_id
        && let Some(peer) = peer
        && let Err(e) = client.send_client_id(peer)
    {
        warn!("cannot send ID with the client address to the backend: {e}");
    }
}

/// The UID list (`uids`, or asked now), sizes from `cached` where it has them
/// and from the backend for the rest, in message-number order. Both lists
/// are sorted by UID, so each lookup is a step of a merge, not a search.
fn listed_with(
    client: &mut Client,
    selected: &Selected,
    uids: Option<Vec<u32>>,
    cached: &[(u32, u64)],
) -> Result<Vec<BackendMessage>, ImapError> {
    let uids = match uids {
        Some(uids) => uids,
        None => match client.uids(selected)? {
            Some(uids) => uids,
            None => return client.snapshot(selected),
        },
    };
    let mut known: Vec<Option<u64>> = Vec::with_capacity(uids.len());
    let mut from_cache = cached.iter().peekable();
    for &uid in &uids {
        while from_cache.next_if(|&&(u, _)| u < uid).is_some() {}
        known.push(
            from_cache
                .next_if(|&&(u, _)| u == uid)
                .map(|&(_, size)| size),
        );
    }
    let missing: Vec<u32> = uids
        .iter()
        .zip(&known)
        .filter(|(_, size)| size.is_none())
        .map(|(&uid, _)| uid)
        .collect();
    let mut fetched = if missing.is_empty() {
        Vec::new()
    } else {
        client.sizes(&missing)?
    };
    fetched.sort_unstable_by_key(|m| m.uid);
    let mut from_backend = fetched.iter().peekable();
    // A UID without a size was expunged between the two commands.
    Ok(uids
        .into_iter()
        .zip(known)
        .filter_map(|(uid, size)| {
            while from_backend.next_if(|m| m.uid < uid).is_some() {}
            let size = size.or_else(|| from_backend.next_if(|m| m.uid == uid).map(|m| m.size))?;
            Some(BackendMessage { uid, size })
        })
        .collect())
}
