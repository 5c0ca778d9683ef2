//! The boundary between the POP3 session and the mail store: what the session
//! asks for (log in, lock, open a folder, read a piece of a message, ask
//! for one ahead, expunge), the typed answers it gets back, and the
//! [`Backend`] trait the driver carries them through. The session decides
//! what each answer means for the client; [`imap::ImapBackend`] carries the
//! requests out over an IMAP connection and the lock directory. Nothing
//! here speaks IMAP or POP3.
//!
//! A failure says what kind it is, because that is what the POP3 reply
//! depends on: a command the backend refused (`NO`/`BAD`) leaves the
//! connection usable and the session goes on; a lost, timed-out or
//! garbage-speaking backend ends it.
//!
//! The IMAP implementation lives in rooms: `connection` (the one IMAP
//! connection: early, failover, re-login, error classification), `login`
//! (routing, device tokens, penalties; shared with `--check`), `lock` (the
//! local and the cluster lock), `snapshot` (the snapshot cache's merges),
//! `removal` (QUIT's expunge, or move to the Trash), and `imap`, which
//! composes them and streams the messages.

pub mod connection;
pub mod cooldown;
pub mod imap;
pub mod lock;
pub mod login;
pub mod provider;
pub mod removal;
pub mod settings;
pub mod snapshot;

use std::fmt;
use std::time::{Duration, Instant};

use crate::maildrop::uidl::{Fact, FactKind};
use crate::maildrop::{FolderDeletions, FolderSnapshot};
use crate::secret::Secret;

pub use crate::sasl::TokenMechanism;

/// What the backend is asked to log in with.
#[derive(Debug)]
pub enum Credentials {
    /// USER/PASS, SASL PLAIN or LOGIN. `authzid` is PLAIN's authorization
    /// identity (a master-user login), passed on to the backend.
    Password {
        login: Vec<u8>,
        authzid: Option<Vec<u8>>,
        password: Secret,
    },
    /// An OAuth SASL response, passed through as it came.
    Token {
        mechanism: TokenMechanism,
        response: Secret,
    },
}

impl Credentials {
    /// Whose maildrop these credentials open: PLAIN's authorization
    /// identity if there is one (a master-user login), else the login; a
    /// token's user. What the routing table matches.
    pub fn maildrop_user(&self) -> Option<Vec<u8>> {
        match self {
            Credentials::Password { login, authzid, .. } => {
                Some(authzid.clone().unwrap_or_else(|| login.clone()))
            }
            Credentials::Token {
                mechanism,
                response,
            } => mechanism.user_of(response.expose()),
        }
    }
}

/// One message piece: bytes `offset..offset + len` of message `uid` in the
/// configured folder `folder`, whose UIDVALIDITY at login was `uid_validity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PieceRequest {
    pub folder: usize,
    pub uid_validity: u32,
    pub uid: u32,
    pub offset: u64,
    pub len: u32,
    /// How the message is read: in pieces asked for one by one, or whole.
    pub read: Read,
}

/// Messages to ask for ahead, after a RETR (`backend_prefetch`): the client
/// that reads in order asks for them next, and then they are already on
/// their way. Fetched without `\Seen`; a later RETR of one that should set
/// `\Seen` gets it by a `UID STORE` before the session ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefetchRequest {
    pub folder: usize,
    /// In the order the client will likely ask for them (ascending UIDs).
    pub uids: Vec<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// Only this piece (`BODY.PEEK[]<offset.len>`): TOP, which needs the
    /// head of a message and must not fetch all of it.
    Piece,
    /// The message from start to end, the pieces in order: one fetch
    /// whose body is handed out piece by piece. `set_seen`: the fetch
    /// itself sets `\Seen` (`BODY[]`), instead of a `UID STORE` after it.
    /// A body longer than `limit` is refused before any of it is read.
    Whole {
        set_seen: bool,
        limit: u64,
        /// The size the client was told (`RFC822.SIZE`, or one learned
        /// before): a body of another length teaches the true one.
        size: u64,
    },
}

/// Work the driver must hand to the backend and report back to the session
/// with the matching `Session::on_*` call.
#[derive(Debug)]
pub enum Request {
    /// The backend's capabilities, to learn its SASL mechanisms:
    /// `on_capabilities`.
    Capabilities,
    /// `on_login`.
    Login(Credentials),
    /// Take the maildrop lock of `user` for the rest of the process:
    /// `on_lock`.
    Lock { user: Vec<u8> },
    /// Select configured folder `folder` and take its snapshot: `on_folder`.
    OpenFolder { folder: usize },
    /// `on_piece`.
    Piece(PieceRequest),
    /// Send the fetch of a message the client will likely ask for next and
    /// do not wait for it: `on_prefetch`.
    Prefetch(PrefetchRequest),
    /// `on_expunge`.
    Expunge(FolderDeletions),
    /// The per-message facts a UIDL format needs (`uidl_format = gmail`,
    /// `header-digest`), asked at the first UIDL of a session:
    /// `on_uidl_facts`.
    UidlFacts(FactsRequest),
}

/// The facts `kind` of messages `uids` of configured folder `folder`,
/// whose UIDVALIDITY at login was `uid_validity`: all in one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FactsRequest {
    pub folder: usize,
    pub uid_validity: u32,
    pub uids: Vec<u32>,
    pub kind: FactKind,
}

#[derive(Debug, PartialEq, Eq)]
pub enum FactsAnswer {
    /// (UID, fact) of each message the backend answered for; a message
    /// expunged meanwhile is missing.
    Facts(Vec<(u32, Fact)>),
    /// The backend does not offer the IMAP extension (named) that gives
    /// this fact: a configuration error, not a passing one.
    Unsupported { capability: &'static str },
    /// The folder's UIDVALIDITY changed: our UIDs mean nothing there.
    FolderChanged,
}

/// The backend's verdict on credentials it received.
#[derive(Debug, PartialEq, Eq)]
pub enum LoginAnswer {
    LoggedIn,
    /// A device's own password was right and the backend took its token:
    /// the maildrop (lock, snapshot) is this mailbox's, which other devices
    /// may share.
    LoggedInAs(Vec<u8>),
    /// Wrong credentials (or credentials that could not be sent safely);
    /// `penalty` is added to the answer's delay (failures from the client's
    /// address, see `penalty`).
    Rejected {
        penalty: Duration,
        /// Why, for the log: the backend's words, or ours.
        reason: String,
    },
    /// Refused for a reason that may pass (`[UNAVAILABLE]`, ...).
    Unavailable(String),
    /// The provider throttles the mailbox, now or in a rest that began
    /// earlier: no login was tried, or the provider refused it for that.
    /// The client may try again after `wait`.
    Throttled {
        wait: Duration,
    },
    /// No routing rule matches the user and there is no default backend.
    Unrouted,
}

#[derive(Debug, PartialEq, Eq)]
pub enum LockAnswer {
    Locked,
    /// Another session holds the maildrop.
    InUse,
}

#[derive(Debug, PartialEq, Eq)]
pub enum PieceAnswer {
    Bytes(Vec<u8>),
    /// The message no longer exists (expunged by another client).
    NoMessage,
    /// The folder's UIDVALIDITY changed: our UIDs mean nothing there.
    FolderChanged,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ExpungeAnswer {
    Expunged,
    /// Flagged `\Deleted` but not expunged: a backend without UIDPLUS where
    /// other messages were flagged too.
    LeftFlagged,
    FolderChanged,
    /// The flags were set (or the move sent), then the connection failed
    /// before the removal was confirmed: the messages may be gone or still
    /// there.
    Unconfirmed,
    /// `delete_action = trash` and there is no Trash folder to move them to:
    /// nothing was deleted, and an admin must act.
    NoTrash,
}

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The backend answered `NO` or `BAD` to this one command; the
    /// connection is still usable.
    Refused,
    /// The connection could not be made (resolve, connect, TLS).
    Unreachable,
    /// The connection was lost, timed out or ended with `BYE`.
    Lost,
    /// The backend said something that is not IMAP, or not what was asked.
    Protocol,
    /// A local resource failed (the lock directory).
    Local,
    /// The backend logged the user in but refuses the mailbox for a reason
    /// an admin must fix (Microsoft 365's "User is authenticated but not
    /// connected": a missing mailbox permission); the connection is still
    /// usable. The client is told to try later, the log what to do.
    Denied,
    /// The provider throttles the mailbox (its words are the text): the
    /// mailbox rests, no command reaches the provider for it until then.
    /// The time is the provider's suggestion as it comes from the
    /// connection, the rest's length once the backend began it.
    Throttled(Option<Duration>),
}

/// A failed request. `text` is for logs and, for `Refused`, the backend's own
/// words, which may be shown to the client (they are the server's answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    pub text: String,
}

impl FailureKind {
    /// Whether the connection may still be used after a failure of this
    /// kind: only a refused (or denied) command leaves it as it was.
    pub fn leaves_connection_usable(self) -> bool {
        matches!(self, FailureKind::Refused | FailureKind::Denied)
    }
}

impl Failure {
    pub fn new(kind: FailureKind, text: impl Into<String>) -> Self {
        Failure {
            kind,
            text: text.into(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

pub type Outcome<T> = Result<T, Failure>;

/// The cluster lock's lease is gone, or Redis cannot confirm it and it may
/// have expired: the session must end without UPDATE. The text says why,
/// for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseLost(pub String);

/// What the driver asks of the mail store: one method per [`Request`],
/// whose answer goes to the matching `Session::on_*`, and the upkeep around
/// them (the lease, the end of the session). [`imap::ImapBackend`] is the
/// implementation in service; the driver's tests have a fake.
pub trait Backend {
    /// Starts connecting while the client is still on its way to the login
    /// (`backend_connect_early`); a failure is only noted.
    fn connect_early(&mut self);
    fn capabilities(&mut self) -> Outcome<Vec<String>>;
    fn login(&mut self, credentials: Credentials) -> Outcome<LoginAnswer>;
    /// Takes the maildrop lock of `user` for the rest of the process.
    fn lock(&mut self, user: &[u8]) -> Outcome<LockAnswer>;
    fn open_folder(&mut self, folder: usize) -> Outcome<FolderSnapshot>;
    fn piece(&mut self, piece: PieceRequest) -> Outcome<PieceAnswer>;
    /// Asks for messages ahead without waiting for them.
    fn prefetch(&mut self, next: PrefetchRequest) -> Outcome<()>;
    fn expunge(&mut self, deletions: &FolderDeletions) -> Outcome<ExpungeAnswer>;
    fn uidl_facts(&mut self, request: &FactsRequest) -> Outcome<FactsAnswer>;
    /// When the cluster lock's lease must next be renewed, if one is held.
    fn lease_due(&self) -> Option<Instant>;
    /// Renews the lease; `Err` ends the session without UPDATE.
    fn keep_lease(&mut self) -> Result<(), LeaseLost>;
    /// Gives up the maildrop; the mailbox is not changed after this.
    fn release_lock(&mut self);
    /// A backend connection failed during the session (for the summary).
    fn failed(&self) -> bool;
    /// Ends the backend session and releases the lock.
    fn finish(&mut self);
}
