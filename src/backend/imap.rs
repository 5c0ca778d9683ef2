//! The [`Backend`] in service: carries the session's requests out over one
//! IMAP connection and the lock directory, composed of the rooms beside it
//! (`connection`, `login`, `lock`, `snapshot`, `removal`), and streams the
//! messages: a RETR's one fetch read piece by piece, the fetch ahead and
//! the `\Seen` it owes, QUIT's removal with its one re-login. It makes no
//! POP3 decisions: which folder is selected and when a failed connection
//! is dropped are its business; what the client is told is the session's.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::{debug, error, warn};

use super::connection::Connection;
use super::cooldown::{self, Mailbox};
use super::lock::MaildropLock;
use super::login::{self, Link, Relogin, Stop};
use super::provider::Throttle;
use super::removal::{self, Removal};
use super::settings::Settings;
use super::snapshot;
use super::{
    Backend, Credentials, ExpungeAnswer, FactsAnswer, FactsRequest, Failure, FailureKind,
    LeaseLost, LockAnswer, LoginAnswer, Outcome, PieceAnswer, PieceRequest, PrefetchRequest, Read,
};
use crate::imap::{BodyStream, Client, GMAIL_CAPABILITY, ImapError, Login, Selected};
use crate::lock;
use crate::logging::uid_list;
use crate::maildrop::sizecache::{DigestCache, SizeCache};
use crate::maildrop::uidl::{Fact, FactKind};
use crate::maildrop::{FolderDeletions, FolderSnapshot};
use crate::preload::Preloaded;

pub struct ImapBackend<'a> {
    settings: &'a Settings,
    /// Files read before root was left (devices, client secrets).
    files: &'a Preloaded,
    /// The POP3 client's address: what a failed device login counts
    /// against.
    peer: Option<SocketAddr>,
    conn: Connection<'a>,
    lock: MaildropLock<'a>,
    /// The IMAP identity logged in as, after the route's rewrite or a
    /// device's mapping: the maildrop the lock is taken for, and the one
    /// that rests when the provider throttles it.
    mailbox: Option<Vec<u8>>,
    /// A message being read whole by one fetch, between its pieces.
    body: Option<BodyStream>,
    /// Messages of the selected folder that a RETR with `\Seen` read from
    /// a fetch sent ahead (`BODY.PEEK[]`): `\Seen` is still to be set.
    owed_seen: Vec<u32>,
    /// True sizes that a whole body showed to differ from what the client
    /// was told (estimated `RFC822.SIZE`s): (folder, UIDVALIDITY, UID,
    /// size), kept in the snapshot cache for the next sessions.
    learned: Vec<(usize, u32, u32, u64)>,
    /// How the session logged in, so that QUIT can log in once more if the
    /// connection was lost meanwhile.
    relogin: Option<Relogin>,
    /// The one reconnection of the session was used.
    reconnected: bool,
}

/// The session's login goes over the session's connection, to the
/// backend it routes to.
impl Link for Connection<'_> {
    type Error = Failure;

    fn client(&mut self, backend: usize) -> Outcome<&mut Client> {
        self.route_to(backend);
        Connection::client(self)
    }
}

impl<'a> ImapBackend<'a> {
    pub fn new(settings: &'a Settings, files: &'a Preloaded, peer: Option<SocketAddr>) -> Self {
        ImapBackend {
            settings,
            files,
            peer,
            conn: Connection::new(settings, peer),
            lock: MaildropLock::new(&settings.lock_dir, settings.cluster_lock.as_ref()),
            mailbox: None,
            body: None,
            owed_seen: Vec::new(),
            learned: Vec::new(),
            relogin: None,
            reconnected: false,
        }
    }

    /// The consequence of a failure for the connection: unless the command
    /// was only refused, the connection is unusable and is dropped, with
    /// the `\Seen` owed on it. A throttling answer also begins the
    /// mailbox's rest. The failure is handed on.
    fn drop_unusable(&mut self, mut failure: Failure) -> Failure {
        if !failure.kind.leaves_connection_usable() {
            self.drop_connection();
        }
        if let FailureKind::Throttled(suggested) = failure.kind {
            let wait = self.begin_rest(&failure.text, suggested);
            failure.kind = FailureKind::Throttled(wait);
        }
        failure
    }

    /// The rest of the session's mailbox (the lock's), after the provider
    /// throttled it; how long it is, if the mailbox is known.
    fn begin_rest(&self, words: &str, suggested: Option<Duration>) -> Option<Duration> {
        let user = self.mailbox.as_deref()?;
        let backend = self.conn.routed()?;
        let mailbox = Mailbox::new(self.settings, backend, user);
        let throttle = Throttle { suggested };
        Some(cooldown::begin(
            self.settings,
            self.files,
            &mailbox,
            words,
            &throttle,
        ))
    }

    fn drop_connection(&mut self) {
        self.conn.drop_lost();
        self.owed_seen.clear();
    }

    fn select(&mut self, folder: usize) -> Outcome<Selected> {
        Ok(self.select_asking(folder, false)?.0)
    }

    /// `select`, with the UID list asked along (`with_uids`) where the
    /// backend allows (see `Client::select_with_uids`).
    fn select_asking(
        &mut self,
        folder: usize,
        with_uids: bool,
    ) -> Outcome<(Selected, Option<Vec<u32>>)> {
        let settings = self.settings;
        let name = &settings.folders[folder];
        // Owed in the folder selected now, which this select leaves.
        self.pay_seen()?;
        self.conn.set_selected(None);
        let client = self.conn.client()?;
        let answer = if with_uids {
            client.select_with_uids(name, settings.read_only)
        } else {
            client.select(name, settings.read_only).map(|s| (s, None))
        };
        let answer = answer.map_err(|e| {
            self.drop_unusable(self.conn.failure(&format!("opening folder {name:?}"), e))
        })?;
        self.conn.set_selected(Some(folder));
        Ok(answer)
    }

    /// Makes `folder` the selected one, if it is not already; `false` if its
    /// UIDVALIDITY changed since login.
    fn enter(&mut self, folder: usize, uid_validity: u32) -> Outcome<bool> {
        if self.conn.selected() == Some(folder) {
            return Ok(true);
        }
        Ok(self.select(folder)?.uid_validity == uid_validity)
    }

    /// The snapshot cache of `folder`, if it is on and the lock is taken.
    /// Puts the sizes learned from whole bodies into the snapshot cache, so
    /// that the next sessions' STAT, LIST and RETR say the true size.
    fn keep_learned_sizes(&mut self) {
        let learned = std::mem::take(&mut self.learned);
        snapshot::keep_learned(&learned, |folder| self.size_cache(folder));
    }

    fn size_cache(&self, folder: usize) -> Option<SizeCache> {
        let settings = self.settings;
        let lock = self.lock.name().filter(|_| settings.snapshot_cache)?;
        Some(SizeCache::new(
            &settings.cache_dir,
            lock,
            &settings.folders[folder],
        ))
    }

    /// The header digests of one folder (already selected): from the
    /// digest cache where it has them (with `snapshot_cache`), from the
    /// backend for the rest, in one `UID FETCH`; the cache is then
    /// rewritten with exactly this folder's digests if they changed.
    fn header_digests(&mut self, request: &FactsRequest) -> Outcome<FactsAnswer> {
        let settings = self.settings;
        let name = &settings.folders[request.folder];
        let cache = self
            .lock
            .name()
            .filter(|_| settings.snapshot_cache)
            .map(|lock| DigestCache::new(&settings.cache_dir, lock, name));
        let cached = snapshot::load_digests(cache.as_ref(), request.uid_validity);
        let (mut known, missing) = snapshot::cached_digests(&request.uids, &cached);
        if !missing.is_empty() {
            let fetched = snapshot::fetch_digests(self.conn.client()?, &missing);
            let fetched = fetched.map_err(|e| {
                let what = format!("fetching the headers in {name:?}");
                self.drop_unusable(self.conn.failure(&what, e))
            })?;
            known = snapshot::merge_digests(known, fetched);
        }
        if let Some(cache) = &cache {
            snapshot::store_digests(cache, request.uid_validity, &cached, &known);
        }
        Ok(FactsAnswer::Facts(
            known
                .into_iter()
                .map(|(uid, d)| (uid, Fact::HeaderDigest(d)))
                .collect(),
        ))
    }

    /// The next piece of a message read whole by one fetch: the fetch is
    /// started at offset 0 and read on as the session asks for more.
    fn whole_piece(
        &mut self,
        piece: PieceRequest,
        set_seen: bool,
        limit: u64,
        size: u64,
    ) -> Outcome<PieceAnswer> {
        let uid = piece.uid;
        if piece.offset == 0 {
            self.end_body()?;
            if !self.enter(piece.folder, piece.uid_validity)? {
                return Ok(PieceAnswer::FolderChanged);
            }
            let client = self.conn.client()?;
            // A fetch sent ahead has no `\Seen` in it: owed, see `pay_seen`.
            let ahead = client.next_prefetched() == Some(uid);
            let started = client.start_body(uid, !set_seen || ahead, limit);
            match started {
                Ok(Some(body)) => {
                    if ahead && set_seen {
                        self.owed_seen.push(uid);
                    }
                    if body.len != size {
                        debug!(
                            "message UID {uid}: the backend announced {size} octets, the body \
                             has {}: kept for the next sessions",
                            body.len
                        );
                        self.learned
                            .push((piece.folder, piece.uid_validity, uid, body.len));
                    }
                    self.body = Some(body);
                }
                Ok(None) => return Ok(PieceAnswer::NoMessage),
                Err(e) => {
                    let what = format!("fetching message UID {uid}");
                    return Err(self.drop_unusable(self.conn.failure(&what, e)));
                }
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
        let read = self.conn.client()?.read_body(&mut body, piece.len as usize);
        match read {
            Ok(bytes) => {
                // Kept when done too: a body of whole pieces ends with one
                // more, empty, piece asked for.
                self.body = Some(body);
                Ok(PieceAnswer::Bytes(bytes))
            }
            Err(e) => {
                let what = format!("fetching message UID {uid}");
                Err(self.drop_unusable(self.conn.failure(&what, e)))
            }
        }
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
        let marked = self.conn.client()?.mark_seen(&uids);
        match marked {
            Ok(()) => Ok(()),
            Err(e @ ImapError::Refused { .. }) => {
                warn!(
                    "backend refused \\Seen for UIDs {} read ahead: {e}",
                    uid_list(&uids)
                );
                Ok(())
            }
            Err(e) => Err(self.drop_unusable(self.conn.failure("setting \\Seen", e))),
        }
    }

    /// Reads what is left of a body fetch nobody asks for any more, so the
    /// connection is ready for the next command.
    fn end_body(&mut self) -> Outcome<()> {
        let Some(mut body) = self.body.take().filter(|b| !b.is_done()) else {
            return Ok(());
        };
        let drained = self.conn.client()?.drain_body(&mut body);
        drained.map_err(|e| {
            let what = format!("finishing the fetch of UID {}", body.uid);
            self.drop_unusable(self.conn.failure(&what, e))
        })
    }

    /// A fresh connection with the session's login.
    fn log_in_again(&mut self) -> Outcome<()> {
        self.owed_seen.clear();
        let client = self.conn.reconnect()?;
        let Some(relogin) = &self.relogin else {
            return Err(Failure::new(FailureKind::Local, "no login to repeat"));
        };
        match relogin.send(client) {
            Ok(Login::Ok) => Ok(()),
            Ok(Login::Rejected(_) | Login::TemporaryFailure(_)) => {
                self.drop_connection();
                Err(Failure::new(
                    FailureKind::Lost,
                    "the backend refused the login this time",
                ))
            }
            Err(e) => Err(self.drop_unusable(self.conn.failure("login again", e))),
        }
    }

    /// QUIT's removal in one folder (`removal`): `again` after a lost
    /// connection, when part of the first attempt may have happened.
    fn expunge_once(&mut self, expunge: &FolderDeletions, again: bool) -> Outcome<ExpungeAnswer> {
        let settings = self.settings;
        let name = &settings.folders[expunge.folder];
        if !self.enter(expunge.folder, expunge.uid_validity)? {
            warn!("folder {name:?} changed UIDVALIDITY during the session: nothing deleted there");
            return Ok(ExpungeAnswer::FolderChanged);
        }
        let how = Removal::of(&settings.routes, self.conn.routed());
        let removed = removal::remove(self.conn.client()?, name, how, expunge, again);
        let unfinished = match removed {
            Ok(answer) => return Ok(answer),
            Err(unfinished) => unfinished,
        };
        let failure = self.drop_unusable(self.conn.failure(&unfinished.what, unfinished.error));
        if unfinished.unconfirmed {
            Ok(ExpungeAnswer::Unconfirmed)
        } else {
            Err(failure)
        }
    }
}

impl Backend for ImapBackend<'_> {
    fn connect_early(&mut self) {
        self.conn.connect_early();
    }

    fn capabilities(&mut self) -> Outcome<Vec<String>> {
        Ok(self.conn.client()?.capabilities().to_vec())
    }

    /// The login `login::log_in` makes; what the session hears of it.
    fn login(&mut self, credentials: Credentials) -> Outcome<LoginAnswer> {
        let context = login::Context {
            settings: self.settings,
            files: self.files,
            peer: self.peer,
        };
        let attempt = login::log_in(&context, credentials, &mut self.conn);
        if let Some(routed) = attempt.routed {
            self.conn.route_to(routed.backend);
            self.mailbox = routed.mailbox;
        }
        match attempt.result {
            Ok(verdict) => {
                let (answer, relogin) = login::session_answer(verdict);
                if relogin.is_some() {
                    self.relogin = relogin;
                }
                Ok(answer)
            }
            // A greeting that said so: the login's mailbox rests.
            Err(Stop::Link(failure)) if matches!(failure.kind, FailureKind::Throttled(_)) => {
                let failure = self.drop_unusable(failure);
                match failure.kind {
                    FailureKind::Throttled(Some(wait)) => Ok(LoginAnswer::Throttled { wait }),
                    _ => Err(failure),
                }
            }
            // Classified, and the connection dropped, where it failed.
            Err(Stop::Link(failure)) => Err(failure),
            Err(Stop::Imap(e)) => Err(self.drop_unusable(self.conn.failure("login", e))),
            Err(Stop::Devices(why)) => {
                error!("device logins are off: {why}");
                Err(Failure::new(FailureKind::Local, why))
            }
        }
    }

    /// The lock of the maildrop as the backend knows it: the backend's
    /// name and the IMAP identity logged in as.
    fn lock(&mut self, user: &[u8]) -> Outcome<LockAnswer> {
        let routes = &self.settings.routes;
        let backend = &routes.backends[self.conn.routed().unwrap_or(0)].name;
        // A token that named no user: the POP3 user's maildrop.
        let mailbox = self.mailbox.get_or_insert_with(|| user.to_vec());
        let name = lock::lock_name(backend, mailbox);
        self.lock.take(name, self.files.cluster_lock_password())
    }

    /// SELECT (EXAMINE when read-only) and the snapshot of one folder:
    /// from the snapshot cache and the UID list where the cache has sizes,
    /// else one size per message from the backend.
    fn open_folder(&mut self, folder: usize) -> Outcome<FolderSnapshot> {
        let cache = self.size_cache(folder);
        // With sizes cached, the UID list is all the backend is asked, and
        // it is asked along with the SELECT.
        let (selected, uids) = if cache.as_ref().is_some_and(|c| c.path().exists()) {
            self.select_asking(folder, true)?
        } else {
            (self.select(folder)?, None)
        };
        let cached = snapshot::load_sizes(cache.as_ref(), selected.uid_validity);
        let client = self.conn.client()?;
        let listed = match &cached {
            Some(sizes) => snapshot::listed_with(client, &selected, uids, sizes),
            None => client.snapshot(&selected),
        };
        let messages =
            listed.map_err(|e| self.drop_unusable(self.conn.failure("listing messages", e)))?;
        if let Some(cache) = &cache {
            snapshot::store_sizes(cache, selected.uid_validity, cached.as_deref(), &messages);
        }
        Ok(FolderSnapshot {
            uid_validity: selected.uid_validity,
            messages,
        })
    }

    fn piece(&mut self, piece: PieceRequest) -> Outcome<PieceAnswer> {
        if let Read::Whole {
            set_seen,
            limit,
            size,
        } = piece.read
        {
            return self.whole_piece(piece, set_seen, limit, size);
        }
        self.end_body()?;
        if !self.enter(piece.folder, piece.uid_validity)? {
            return Ok(PieceAnswer::FolderChanged);
        }
        let fetched = self
            .conn
            .client()?
            .fetch_piece(piece.uid, piece.offset, piece.len);
        match fetched {
            Ok(Some(bytes)) => Ok(PieceAnswer::Bytes(bytes)),
            Ok(None) => Ok(PieceAnswer::NoMessage),
            Err(e) => {
                let what = format!("fetching message UID {}", piece.uid);
                Err(self.drop_unusable(self.conn.failure(&what, e)))
            }
        }
    }

    /// Sends the fetch of the message the client will likely ask for next,
    /// without waiting for its answer (`backend_prefetch`). Only in the
    /// folder already selected and on a connection that is idle: a fetch
    /// ahead never costs a command of its own.
    fn prefetch(&mut self, next: PrefetchRequest) -> Outcome<()> {
        if self.conn.selected() != Some(next.folder)
            || self.body.as_ref().is_some_and(|b| !b.is_done())
        {
            return Ok(());
        }
        let Some(client) = self.conn.open_client() else {
            return Ok(());
        };
        // The batch asked for earlier is still being served.
        if client.next_prefetched().is_some() {
            return Ok(());
        }
        let sent = client.prefetch_bodies(&next.uids);
        sent.map_err(|e| {
            let what = format!("asking for UIDs {} ahead", uid_list(&next.uids));
            self.drop_unusable(self.conn.failure(&what, e))
        })
    }

    /// The removal of QUIT (the expunge, or the move to the Trash). If the
    /// connection is found lost (servers close idle IMAP connections while
    /// a client reads its mail), or breaks before the removal is confirmed,
    /// it logs in once more, checks that UIDVALIDITY is unchanged, and
    /// removes by UID again: without this the client would download and
    /// delete everything again next time. A move that was done is no
    /// trouble then: the moved UIDs are gone, and the server skips them.
    fn expunge(&mut self, expunge: &FolderDeletions) -> Outcome<ExpungeAnswer> {
        self.end_body()?;
        // Before the expunge, whose reconnection would lose them.
        if let Err(e) = self.pay_seen() {
            debug!("\\Seen not set before the expunge: {e}");
        }
        let first = self.expunge_once(expunge, false);
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
        self.expunge_once(expunge, true)
    }

    /// The facts a UIDL format needs for one folder, by one `UID FETCH`
    /// (see `Client::gmail_msgids`, `Client::fetch_headers`); a header is
    /// reduced to its digest as it arrives.
    fn uidl_facts(&mut self, request: &FactsRequest) -> Outcome<FactsAnswer> {
        self.end_body()?;
        if !self.enter(request.folder, request.uid_validity)? {
            return Ok(FactsAnswer::FolderChanged);
        }
        let settings = self.settings;
        let name = &settings.folders[request.folder];
        let client = self.conn.client()?;
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
            Err(e) => {
                let what = format!("fetching the UIDL facts in {name:?}");
                Err(self.drop_unusable(self.conn.failure(&what, e)))
            }
        }
    }

    fn lease_due(&self) -> Option<Instant> {
        self.lock.lease_due()
    }

    fn keep_lease(&mut self) -> Result<(), LeaseLost> {
        self.lock.keep_lease()
    }

    /// The cluster lock's lease, then the local lock.
    fn release_lock(&mut self) {
        // While the maildrop is still ours: the cache is the maildrop's.
        if self.lock.is_held() {
            self.keep_learned_sizes();
        }
        // \Seen owed by messages read ahead is the session's last change.
        if self.lock.is_held()
            && self.conn.is_open()
            && let Err(e) = self.pay_seen()
        {
            debug!("\\Seen not set at the end: {e}");
        }
        self.lock.release();
    }

    fn failed(&self) -> bool {
        self.conn.failed()
    }

    /// LOGOUT (never CLOSE) after the lock is given up.
    fn finish(&mut self) {
        self.conn.abandon_early();
        // Pays the \Seen still owed first.
        self.release_lock();
        self.conn.logout();
    }
}
