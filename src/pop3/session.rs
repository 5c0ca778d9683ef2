//! The POP3 session state machine (RFC 1939 AUTHORIZATION -> TRANSACTION ->
//! UPDATE, RFC 2449 CAPA), without I/O. It takes command lines and the
//! backend's answers to what it asked for, and returns replies, bytes of a
//! message being sent, and backend requests. The states themselves live in
//! `auth` (AUTHORIZATION, STLS, SASL), `transaction` and `retrieval`
//! (RETR/TOP); this module strings them together: the login sequence
//! (log in, lock, open each folder), the commit at QUIT, and what each backend
//! answer means for the client. The driver does the reading, writing,
//! sleeping, TLS and the backend calls.

use std::mem;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use log::{debug, error, info, warn};

use super::auth::{Auth, AuthStep, Connection};
use super::command::{Command, ParseError, parse};
use super::lines::Line;
use super::reply::{Reply, RespCode, throttled_text};
use super::retrieval::{Kind, Next, Retrieval};
use super::transaction::{self, Rules, TxStep};
use crate::backend::{
    ExpungeAnswer, FactsAnswer, FactsRequest, Failure, FailureKind, LockAnswer, LoginAnswer,
    Outcome, PieceAnswer, Request,
};
use crate::limits::{MAX_BACKEND_TEXT, MAX_COMMAND_LINE, MAX_SASL_LINE};
use crate::logging::printable;
use crate::maildrop::{FolderDeletions, FolderSnapshot, Maildrop, UidlFormat};
use crate::secret::WipeOnDrop;

/// What the session needs to know of the configuration.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub uidl_format: UidlFormat,
    pub login_failure_delay: Duration,
    pub max_login_failures: u32,
    /// Bad commands in a row that close the connection.
    pub max_bad_commands: u32,
    pub read_only: bool,
    pub mark_seen: bool,
    /// Sent in CAPA as IMPLEMENTATION when set.
    pub implementation: Option<String>,
    /// Plaintext logins off loopback without TLS are allowed.
    pub allow_plaintext_auth: bool,
    /// Networks whose clients may log in without TLS.
    pub plaintext_auth_from: Vec<IpNet>,
    /// A certificate is configured and loaded: STLS can be offered.
    pub stls_available: bool,
    /// The IMAP folders that form the maildrop, in order (for messages).
    pub folders: Vec<String>,
    /// After a RETR, ask for the next message ahead (`backend_prefetch`).
    pub prefetch: bool,
}

/// A reply to send, possibly after a delay, possibly as the last one.
#[derive(Debug, PartialEq, Eq)]
pub struct Response {
    pub reply: Reply,
    pub delay: Duration,
    pub close: bool,
}

impl Response {
    fn send(reply: Reply) -> Self {
        Response {
            reply,
            delay: Duration::ZERO,
            close: false,
        }
    }

    fn last(reply: Reply) -> Self {
        Response {
            reply,
            delay: Duration::ZERO,
            close: true,
        }
    }
}

#[derive(Debug)]
pub enum Step {
    Respond(Response),
    /// Send this reply, then run the TLS handshake (STLS); report with
    /// `on_tls_started`. Bytes the client sent after STLS are dropped.
    StartTls(Reply),
    /// Hand this to the backend and report the answer with the matching
    /// `on_*` call (see `Request`).
    Backend(Request),
    /// Bytes of a reply in progress (a message): write them, then hand
    /// `next` to the backend, if any. Without `next` the reply is complete.
    Write {
        bytes: Vec<u8>,
        next: Option<Request>,
    },
    /// The command is done and nothing more is to be sent for it.
    Done,
    /// A reply was cut short (by the backend, or by the lost maildrop
    /// lock): close the connection now,
    /// without another byte, so the client cannot take a partial message for
    /// a whole one.
    Cut,
}

/// Counts for the session summary log line.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// The user of the last login attempt (see `logged_in`).
    pub user: Option<String>,
    pub logged_in: bool,
    pub login_failures: u32,
    pub retrieved: u64,
    pub retrieved_bytes: u64,
    pub deleted: u64,
    pub deleted_bytes: u64,
}

enum State {
    Authorization,
    Transaction(Maildrop),
    Closed,
}

/// The backend work in flight, and what it is for.
enum Pending {
    Nothing,
    /// The backend's mechanisms, for this command.
    Capabilities(Command),
    Login {
        user: Vec<u8>,
        method: &'static str,
    },
    Lock {
        user: Vec<u8>,
    },
    /// Opening folder `folders.len()`.
    Folders {
        user: Vec<u8>,
        folders: Vec<FolderSnapshot>,
    },
    Retrieval(Retrieval),
    /// The UIDL facts of folder `folder`, for this UIDL command.
    UidlFacts {
        cmd: Command,
        folder: usize,
    },
    /// Expunging `deletions[done]`.
    Commit {
        deletions: Vec<FolderDeletions>,
        done: usize,
        left_flagged: bool,
    },
}

pub struct Session {
    config: SessionConfig,
    auth: Auth,
    state: State,
    pending: Pending,
    /// Bad commands since the last good one.
    bad_commands: u32,
    stats: Stats,
    /// For the log line of a failed login.
    client: Option<IpAddr>,
}

impl Session {
    pub fn new(config: SessionConfig, connection: Connection) -> Self {
        // Devices on a LAN that have no TLS at all, without opening
        // plaintext logins to everyone.
        let from_lan = connection.client_known
            && connection
                .client
                .is_some_and(|ip| config.plaintext_auth_from.iter().any(|n| n.contains(&ip)));
        let auth = Auth::new(
            connection,
            config.allow_plaintext_auth || from_lan,
            config.stls_available,
        );
        Session {
            config,
            auth,
            state: State::Authorization,
            pending: Pending::Nothing,
            bad_commands: 0,
            stats: Stats::default(),
            client: connection.client,
        }
    }

    /// The greeting; no APOP timestamp, as APOP is not offered.
    pub fn greeting(&self) -> Reply {
        Reply::ok("POP3 server ready")
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The next line is a SASL response (credentials), not a command.
    pub fn awaits_sasl_response(&self) -> bool {
        self.auth.awaits_sasl_response()
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// The longest line (CRLF included) the reader should hand over now:
    /// RFC 2449's 255 octets for commands, more while an AUTH line or a
    /// SASL response may come, as they carry tokens of several KiB.
    pub fn line_limit(&self) -> usize {
        match self.state {
            State::Authorization => MAX_SASL_LINE,
            State::Transaction(_) | State::Closed => MAX_COMMAND_LINE,
        }
    }

    pub fn handle_line(&mut self, line: Line) -> Step {
        // The line may hold a password (PASS, AUTH, a SASL response).
        let line = match line {
            Line::Complete(line) => WipeOnDrop(line),
            Line::TooLong => {
                let reply = self.auth.too_long();
                return self.bad_command(reply);
            }
        };
        if let Some(step) = self.auth.sasl_line(&line) {
            return self.authorized(step);
        }
        let parsed = parse(&line);
        // Only AUTH lines may exceed the RFC 2449 limit: they carry tokens.
        if line.len() + 2 > MAX_COMMAND_LINE && !matches!(parsed, Ok(Command::Auth(_))) {
            return self.bad_command(Reply::err("Line too long"));
        }
        match parsed {
            Ok(cmd) => {
                self.bad_commands = 0;
                self.handle(cmd)
            }
            // SPEC: NUL in a credential is an authentication error.
            Err(e @ ParseError::Nul) if is_credential_line(&line) => {
                self.bad_command(Reply::err_code(RespCode::Auth, e.message()))
            }
            Err(e) => self.bad_command(Reply::err(e.message())),
        }
    }

    /// The reply to a line that is not a command; too many in a row close
    /// the connection.
    fn bad_command(&mut self, reply: Reply) -> Step {
        self.bad_commands += 1;
        if self.bad_commands >= self.config.max_bad_commands {
            self.state = State::Closed;
            return Step::Respond(Response::last(Reply::err("Too many bad commands, closing")));
        }
        respond(reply)
    }

    pub fn handle(&mut self, cmd: Command) -> Step {
        match &mut self.state {
            State::Authorization => {
                if self.auth.needs_backend_mechanisms(&cmd) {
                    self.pending = Pending::Capabilities(cmd);
                    return Step::Backend(Request::Capabilities);
                }
                if let Command::Capa = cmd {
                    return respond(self.capa());
                }
                let step = self.auth.command(cmd);
                self.authorized(step)
            }
            State::Transaction(_) if matches!(cmd, Command::Capa) => respond(self.capa()),
            State::Transaction(drop) => {
                // A format made from facts fetches them at the first UIDL
                // (not for a UIDL of a message that is not there), folder
                // by folder; STAT, LIST, RETR and TOP never do.
                let format = &self.config.uidl_format;
                if let Command::Uidl(n) = &cmd
                    && n.is_none_or(|n| drop.get(n).is_ok())
                    && let Some(wanted) = drop.missing_facts(format)
                    && let Some(kind) = format.needs()
                {
                    let folder = wanted.folder;
                    self.pending = Pending::UidlFacts { cmd, folder };
                    return Step::Backend(Request::UidlFacts(FactsRequest {
                        folder,
                        uid_validity: wanted.uid_validity,
                        uids: wanted.uids,
                        kind,
                    }));
                }
                let rules = Rules {
                    uidl_format: &self.config.uidl_format,
                    read_only: self.config.read_only,
                    prefetch: self.config.prefetch,
                };
                match transaction::command(&rules, drop, cmd) {
                    TxStep::Reply(reply) => respond(reply),
                    TxStep::Retrieve(retrieval) => {
                        let retrieval =
                            retrieval.setting_seen(self.config.mark_seen && !self.config.read_only);
                        let piece = retrieval.piece();
                        self.pending = Pending::Retrieval(retrieval);
                        Step::Backend(Request::Piece(piece))
                    }
                    TxStep::Quit(deletions) => self.commit(deletions, 0, false),
                }
            }
            State::Closed => Step::Respond(Response::last(Reply::err("Session is closed"))),
        }
    }

    fn authorized(&mut self, step: AuthStep) -> Step {
        match step {
            AuthStep::Reply(reply) => respond(reply),
            AuthStep::StartTls(reply) => Step::StartTls(reply),
            AuthStep::Login {
                user,
                method,
                credentials,
            } => {
                self.pending = Pending::Login { user, method };
                Step::Backend(Request::Login(credentials))
            }
            AuthStep::Quit => {
                self.state = State::Closed;
                Step::Respond(Response::last(Reply::ok("Logging out")))
            }
        }
    }

    /// The TLS handshake after STLS succeeded (or implicit TLS).
    pub fn on_tls_started(&mut self) {
        self.auth.on_tls_started();
    }

    /// The backend's capabilities, asked for a command that lists or needs
    /// its SASL mechanisms. A backend that cannot be reached offers none:
    /// the login will say it is unreachable.
    pub fn on_capabilities(&mut self, outcome: Outcome<Vec<String>>) -> Step {
        let Pending::Capabilities(cmd) = self.take_pending() else {
            return self.out_of_order("capabilities");
        };
        self.auth
            .set_backend_capabilities(&outcome.unwrap_or_default());
        self.handle(cmd)
    }

    /// Logins our own rules refused (plaintext without TLS) since the last
    /// call, by method: the backend never saw them.
    pub fn take_refused_logins(&mut self) -> Vec<&'static str> {
        self.auth.take_refusals()
    }

    /// How the login the backend is asked for came (`USER`, `AUTH PLAIN`...),
    /// while it is.
    pub fn login_method(&self) -> Option<&'static str> {
        match &self.pending {
            Pending::Login { method, .. } => Some(method),
            _ => None,
        }
    }

    pub fn on_login(&mut self, outcome: Outcome<LoginAnswer>) -> Step {
        let Pending::Login { user, method } = self.take_pending() else {
            return self.out_of_order("login");
        };
        let shown = printable(&user);
        // Who tried, also when it fails: the session-end line names them.
        self.stats.user = Some(String::from_utf8_lossy(&user).into_owned());
        match outcome {
            Ok(LoginAnswer::LoggedIn) => {
                let maildrop = user.clone();
                self.pending = Pending::Lock { user };
                Step::Backend(Request::Lock { user: maildrop })
            }
            Ok(LoginAnswer::LoggedInAs(mailbox)) => {
                info!("device login: user={shown} mailbox={}", printable(&mailbox));
                self.pending = Pending::Lock { user };
                Step::Backend(Request::Lock { user: mailbox })
            }
            Ok(LoginAnswer::Rejected { penalty, reason }) => {
                // The client's address first, before anything the client
                // chose: a user name cannot then fake another address for
                // fail2ban (packaging/fail2ban/pop3server.conf).
                let rip = self
                    .client
                    .map_or_else(|| "unknown".to_string(), |ip| ip.to_string());
                info!(
                    "login failed: rip={rip} method={method} user=<{shown}> reason={}",
                    printable(reason.as_bytes())
                );
                self.bad_credentials(penalty)
            }
            Ok(LoginAnswer::Unrouted) => {
                error!(
                    "no backend for user={shown}: no [[route]] rule matches and default_backend \
                     is none; add a rule for this user or a default_backend"
                );
                self.close(
                    RespCode::SysPerm,
                    "No mail server is configured for this user, ask your mail administrator",
                )
            }
            Ok(LoginAnswer::Unavailable(text)) => {
                warn!(
                    "login of user={shown} failed temporarily: {}",
                    printable(text.as_bytes())
                );
                self.close(
                    RespCode::SysTemp,
                    "Backend cannot log you in now, try again later",
                )
            }
            Ok(LoginAnswer::Throttled { wait }) => {
                info!(
                    "login of user={shown} deferred: the mail server throttles the mailbox, \
                     {} s to wait",
                    wait.as_secs()
                );
                self.close(RespCode::SysTemp, throttled_text(Some(wait)))
            }
            Err(Failure {
                kind: FailureKind::Unreachable,
                ..
            }) => self.close(
                RespCode::SysTemp,
                "Backend server unreachable, try again later",
            ),
            Err(Failure {
                kind: FailureKind::Throttled(wait),
                ..
            }) => self.close(RespCode::SysTemp, throttled_text(wait)),
            Err(_) => self.close(RespCode::SysTemp, "Backend server failed, try again later"),
        }
    }

    pub fn on_lock(&mut self, outcome: Outcome<LockAnswer>) -> Step {
        let Pending::Lock { user } = self.take_pending() else {
            return self.out_of_order("lock");
        };
        match outcome {
            Ok(LockAnswer::Locked) => self.open_folder(user, Vec::new()),
            Ok(LockAnswer::InUse) => {
                info!("maildrop in use: user={}", printable(&user));
                self.close(
                    RespCode::InUse,
                    "Mailbox is locked by another POP3 session, try again later",
                )
            }
            Err(_) => self.close(
                RespCode::SysTemp,
                "Cannot lock the maildrop, try again later",
            ),
        }
    }

    pub fn on_folder(&mut self, outcome: Outcome<FolderSnapshot>) -> Step {
        let Pending::Folders { user, mut folders } = self.take_pending() else {
            return self.out_of_order("folder");
        };
        let index = folders.len();
        let name = self.config.folders.get(index).cloned().unwrap_or_default();
        match outcome {
            Ok(snapshot) => {
                folders.push(snapshot);
                self.open_folder(user, folders)
            }
            Err(Failure {
                kind: FailureKind::Refused,
                text,
            }) => {
                error!(
                    "cannot open folder {name:?} of user={}: {text}",
                    printable(&user)
                );
                self.close(RespCode::SysPerm, format!("Cannot open folder {name}"))
            }
            // The backend logged what the admin must do.
            Err(Failure {
                kind: FailureKind::Denied,
                ..
            }) => self.close(
                RespCode::SysTemp,
                format!("Folder {name} is not open to this login yet, try again later"),
            ),
            Err(Failure {
                kind: FailureKind::Throttled(wait),
                ..
            }) => self.close(RespCode::SysTemp, throttled_text(wait)),
            Err(_) => self.close(RespCode::SysTemp, "Backend server failed, try again later"),
        }
    }

    /// Opens the next configured folder, or enters TRANSACTION once all are.
    fn open_folder(&mut self, user: Vec<u8>, folders: Vec<FolderSnapshot>) -> Step {
        if folders.len() < self.config.folders.len() {
            let folder = folders.len();
            self.pending = Pending::Folders { user, folders };
            return Step::Backend(Request::OpenFolder { folder });
        }
        let drop = Maildrop::new(folders);
        let (n, size) = drop.stat();
        let shown = printable(&user);
        info!("login: user={shown} messages={n}");
        self.stats.user = Some(String::from_utf8_lossy(&user).into_owned());
        self.stats.logged_in = true;
        self.state = State::Transaction(drop);
        respond(Reply::ok(format!(
            "Logged in, {n} messages ({size} octets)"
        )))
    }

    /// A fetch sent ahead: nothing for the client. A failure (the backend
    /// logged it) shows at the next command that needs the backend.
    pub fn on_prefetch(&mut self, outcome: Outcome<()>) -> Step {
        if let Err(e) = outcome {
            debug!("asking for the next message ahead failed: {e}");
        }
        Step::Done
    }

    pub fn on_piece(&mut self, outcome: Outcome<PieceAnswer>) -> Step {
        let Pending::Retrieval(mut retrieval) = self.take_pending() else {
            return self.out_of_order("piece");
        };
        match retrieval.on_piece(outcome) {
            Next::More { bytes, piece } => {
                self.pending = Pending::Retrieval(retrieval);
                Step::Write {
                    bytes,
                    next: Some(Request::Piece(piece)),
                }
            }
            Next::Done(bytes) => {
                let message = retrieval.message();
                if retrieval.kind() != Kind::Retr {
                    return Step::Write { bytes, next: None };
                }
                self.stats.retrieved += 1;
                self.stats.retrieved_bytes =
                    self.stats.retrieved_bytes.saturating_add(message.size);
                // `\Seen` (with mark_seen) came with the fetch itself, or
                // is owed by the backend for a message fetched ahead.
                Step::Write {
                    bytes,
                    next: retrieval.prefetch().map(Request::Prefetch),
                }
            }
            Next::Refuse(reply) => respond(reply),
            Next::Fail(reply) => {
                self.state = State::Closed;
                Step::Respond(Response::last(reply))
            }
            Next::Cut => {
                self.state = State::Closed;
                Step::Cut
            }
        }
    }

    /// The facts of one folder for a UIDL: the next folder's are asked
    /// for, or the UIDL is answered. Whatever keeps the backend from giving
    /// them (a refusal, a backend without the extension, a folder changed
    /// under us) is told in the UIDL's reply and the session goes on; only
    /// a lost or broken connection ends it.
    pub fn on_uidl_facts(&mut self, outcome: Outcome<FactsAnswer>) -> Step {
        let Pending::UidlFacts { cmd, folder } = self.take_pending() else {
            return self.out_of_order("UIDL facts");
        };
        let State::Transaction(drop) = &mut self.state else {
            return self.out_of_order("UIDL facts");
        };
        let name = self.config.folders.get(folder).cloned().unwrap_or_default();
        match outcome {
            Ok(FactsAnswer::Facts(facts)) => {
                drop.set_facts(folder, &facts, &self.config.uidl_format);
                self.handle(cmd)
            }
            Ok(FactsAnswer::Unsupported { capability }) => {
                error!(
                    "uidl_format needs the backend's IMAP extension {capability}, which it does not \
                     offer (uidl_format = gmail is for Gmail only): set uidl_format to the format \
                     of the server the mail came from (dovecot, cyrus, courier, uw, header-digest \
                     or a template)"
                );
                respond(Reply::err_code(
                    RespCode::SysPerm,
                    format!(
                        "The mail server lacks {capability}, which uidl_format = gmail needs: \
                         the administrator must set another uidl_format (dovecot, header-digest, ...)"
                    ),
                ))
            }
            Ok(FactsAnswer::FolderChanged) => {
                warn!("folder {name:?} changed UIDVALIDITY during the session: no UIDLs");
                respond(Reply::err_code(
                    RespCode::SysTemp,
                    format!("Folder {name} changed on the mail server, log in again"),
                ))
            }
            Err(Failure {
                kind: FailureKind::Refused,
                text,
            }) => {
                let text: String = text.chars().take(MAX_BACKEND_TEXT).collect();
                respond(Reply::err_code(
                    RespCode::SysTemp,
                    format!("The mail server refused the UIDLs of folder {name}: {text}"),
                ))
            }
            Err(Failure {
                kind: FailureKind::Throttled(wait),
                ..
            }) => self.close(RespCode::SysTemp, throttled_text(wait)),
            Err(_) => self.close(RespCode::SysTemp, "Backend server failed, try again later"),
        }
    }

    pub fn on_expunge(&mut self, outcome: Outcome<ExpungeAnswer>) -> Step {
        let Pending::Commit {
            deletions,
            done,
            left_flagged,
        } = self.take_pending()
        else {
            return self.out_of_order("expunge");
        };
        match outcome {
            Ok(ExpungeAnswer::Expunged) => self.commit(deletions, done + 1, left_flagged),
            Ok(ExpungeAnswer::LeftFlagged) => self.commit(deletions, done + 1, true),
            Ok(ExpungeAnswer::Unconfirmed) => {
                let earlier = if done == 0 {
                    ""
                } else {
                    " (those of earlier folders were deleted)"
                };
                self.close(
                    RespCode::SysTemp,
                    format!(
                        "The mail server did not confirm the deletion{earlier}: the messages marked with DELE may be deleted or not, check before deleting them again"
                    ),
                )
            }
            Ok(ExpungeAnswer::NoTrash) => {
                let earlier = if done == 0 {
                    ""
                } else {
                    " (those of earlier folders were deleted)"
                };
                self.close(
                    RespCode::SysPerm,
                    format!(
                        "The messages marked with DELE were not deleted{earlier}: the mail server has no Trash folder to move them to; tell the mail administrator"
                    ),
                )
            }
            Ok(ExpungeAnswer::FolderChanged) | Err(_) => {
                let text = if done == 0 {
                    "Backend failed to delete the messages"
                } else {
                    "Backend failed to delete the messages of one folder (those of earlier folders were deleted)"
                };
                self.close(
                    RespCode::SysTemp,
                    format!("{text}; no message was deleted, try again later"),
                )
            }
        }
    }

    /// UPDATE: expunges folder by folder from `done` on. A failure in one
    /// folder leaves the later ones untouched.
    fn commit(&mut self, deletions: Vec<FolderDeletions>, done: usize, left_flagged: bool) -> Step {
        if let Some(next) = deletions.get(done) {
            let request = Request::Expunge(next.clone());
            self.pending = Pending::Commit {
                deletions,
                done,
                left_flagged,
            };
            return Step::Backend(request);
        }
        let State::Transaction(drop) = mem::replace(&mut self.state, State::Closed) else {
            return self.out_of_order("commit");
        };
        let (deleted, deleted_bytes) = drop.deleted_stat();
        let messages = if deleted == 1 { "message" } else { "messages" };
        let text = if left_flagged {
            let them = if deleted == 1 { "it" } else { "them" };
            format!(
                "Logging out, {deleted} {messages} flagged \\Deleted: the mail server removes {them} at its next expunge"
            )
        } else {
            self.stats.deleted = deleted as u64;
            self.stats.deleted_bytes = deleted_bytes;
            format!("Logging out, {deleted} {messages} deleted")
        };
        Step::Respond(Response::last(Reply::ok(text)))
    }

    /// The cluster-wide lock was lost (see `lock::cluster`): another front-end
    /// may now serve this maildrop, so this session ends at once, without
    /// UPDATE. In the middle of a message the connection is cut: a last
    /// line there would read as part of the message.
    pub fn on_lock_lost(&mut self, why: &str) -> Step {
        let pending = self.take_pending();
        // Between two folders' expunges, the earlier folders' are done.
        let (logged, told) = match &pending {
            Pending::Commit { done, .. } if *done > 0 => (
                "the earlier folders' deletions were done, the rest not",
                "Lost the maildrop lock, so the session ends here: the messages of the \
                 first folders were deleted, the others not; try again",
            ),
            _ => (
                "nothing deleted",
                "Lost the maildrop lock, so the session ends here and no message was deleted; \
                 try again",
            ),
        };
        let user = self.stats.user.as_deref().unwrap_or("-");
        error!(
            "maildrop lock lost: user={} {why}: session ended, {logged}",
            printable(user.as_bytes())
        );
        self.state = State::Closed;
        if let Pending::Retrieval(_) = pending {
            return Step::Cut;
        }
        Step::Respond(Response::last(Reply::err_code(RespCode::SysTemp, told)))
    }

    fn bad_credentials(&mut self, penalty: Duration) -> Step {
        self.stats.login_failures += 1;
        let close = self.stats.login_failures >= self.config.max_login_failures;
        if close {
            self.state = State::Closed;
        }
        let text = if close {
            "Authentication failed; too many failures, closing"
        } else {
            "Authentication failed"
        };
        Step::Respond(Response {
            reply: Reply::err_code(RespCode::Auth, text),
            delay: self.config.login_failure_delay.saturating_add(penalty),
            close,
        })
    }

    fn close(&mut self, code: RespCode, text: impl Into<String>) -> Step {
        self.state = State::Closed;
        Step::Respond(Response::last(Reply::err_code(code, text)))
    }

    fn take_pending(&mut self) -> Pending {
        mem::replace(&mut self.pending, Pending::Nothing)
    }

    /// An answer to a request that was not asked: a bug in the caller.
    fn out_of_order(&mut self, what: &str) -> Step {
        error!("internal error: backend answer ({what}) without a request");
        self.close(RespCode::SysTemp, "Internal error, try again later")
    }

    fn capa(&self) -> Reply {
        let mut lines: Vec<Vec<u8>> = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
        if let State::Authorization = self.state {
            self.auth.capa(&mut lines);
        }
        if let Some(imp) = &self.config.implementation {
            lines.push(format!("IMPLEMENTATION {imp}").into_bytes());
        }
        Reply::MultiLine(
            "Capability list follows".into(),
            lines.into_iter().collect(),
        )
    }
}

fn is_credential_line(line: &[u8]) -> bool {
    line.get(..5)
        .is_some_and(|p| p.eq_ignore_ascii_case(b"USER ") || p.eq_ignore_ascii_case(b"PASS "))
}

fn respond(reply: Reply) -> Step {
    Step::Respond(Response::send(reply))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Credentials, PieceRequest, PrefetchRequest, Read, TokenMechanism};
    use crate::limits::{FETCH_CHUNK, PREFETCH_BATCH_MESSAGES, PREFETCH_MAX_MESSAGE};
    use crate::maildrop::BackendMessage;
    use crate::maildrop::uidl::{Fact, FactKind, HeaderDigest, header_digest};
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as BASE64;

    fn config() -> SessionConfig {
        SessionConfig {
            uidl_format: UidlFormat::dovecot(),
            login_failure_delay: Duration::from_secs(2),
            max_login_failures: 3,
            max_bad_commands: 20,
            read_only: false,
            mark_seen: true,
            implementation: None,
            allow_plaintext_auth: false,
            plaintext_auth_from: Vec::new(),
            stls_available: true,
            folders: vec!["INBOX".into()],
            prefetch: true,
        }
    }

    const LOCAL: Connection = Connection {
        tls: false,
        loopback: true,
        client: Some(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)),
        client_known: true,
    };
    const REMOTE: Connection = Connection {
        tls: false,
        loopback: false,
        client: Some(IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7))),
        client_known: true,
    };

    #[test]
    fn a_listed_network_may_log_in_without_tls_and_others_may_not() {
        let lan: IpNet = "192.0.2.0/24".parse().expect("net");
        let config = SessionConfig {
            plaintext_auth_from: vec![lan],
            ..config()
        };
        let mut s = Session::new(config.clone(), REMOTE);
        assert!(matches!(line(&mut s, "USER alice"), Step::Respond(r) if r.reply.is_ok()));
        let elsewhere = Connection {
            client: Some(IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 7))),
            ..REMOTE
        };
        let mut s = Session::new(config.clone(), elsewhere);
        assert!(matches!(line(&mut s, "USER alice"), Step::Respond(r) if !r.reply.is_ok()));
        // A balancer that named no client is not the client's network.
        let unnamed = Connection {
            client_known: false,
            ..REMOTE
        };
        let mut s = Session::new(config, unnamed);
        assert!(matches!(line(&mut s, "USER alice"), Step::Respond(r) if !r.reply.is_ok()));
    }

    fn wire(reply: &Reply) -> String {
        let mut v = Vec::new();
        reply.encode(&mut v);
        String::from_utf8_lossy(&v).into_owned()
    }

    fn line(s: &mut Session, text: &str) -> Step {
        s.handle_line(Line::Complete(text.as_bytes().to_vec()))
    }

    /// Feeds one command line; expects a reply (not backend work).
    fn say(s: &mut Session, text: &str) -> String {
        match line(s, text) {
            Step::Respond(r) => wire(&r.reply),
            Step::Backend(Request::Capabilities) => match s.on_capabilities(Ok(Vec::new())) {
                Step::Respond(r) => wire(&r.reply),
                other => panic!("unexpected step after the capabilities {other:?}"),
            },
            other => panic!("unexpected step {other:?}"),
        }
    }

    fn reply_of(step: Step) -> Response {
        match step {
            Step::Respond(r) => r,
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    fn inbox() -> FolderSnapshot {
        FolderSnapshot {
            uid_validity: 0x5f3c2a10,
            messages: vec![
                BackendMessage { uid: 1, size: 120 },
                BackendMessage { uid: 5, size: 300 },
            ],
        }
    }

    /// PASS as far as the backend's verdict on the credentials.
    fn pass(s: &mut Session, user: &str) {
        assert_eq!(say(s, &format!("USER {user}")), "+OK Send PASS\r\n");
        let Step::Backend(Request::Login(Credentials::Password {
            login,
            password,
            authzid: None,
        })) = line(s, "PASS secret")
        else {
            panic!("PASS should log in at the backend");
        };
        assert_eq!(
            (login.as_slice(), password.expose()),
            (user.as_bytes(), &b"secret"[..])
        );
    }

    /// The whole login: credentials, lock, snapshot of each folder.
    fn open(s: &mut Session, folders: Vec<FolderSnapshot>) -> Response {
        let Step::Backend(Request::Lock { user }) = s.on_login(Ok(LoginAnswer::LoggedIn)) else {
            panic!("a login takes the lock next");
        };
        assert_eq!(user, b"alice");
        let mut step = s.on_lock(Ok(LockAnswer::Locked));
        for (i, folder) in folders.into_iter().enumerate() {
            let Step::Backend(Request::OpenFolder { folder: asked }) = step else {
                panic!("folder {i} should be opened, got {step:?}");
            };
            assert_eq!(asked, i);
            step = s.on_folder(Ok(folder));
        }
        reply_of(step)
    }

    fn logged_in_with(config: SessionConfig) -> Session {
        let mut s = Session::new(config, LOCAL);
        pass(&mut s, "alice");
        let r = open(&mut s, vec![inbox()]);
        assert_eq!(wire(&r.reply), "+OK Logged in, 2 messages (420 octets)\r\n");
        s
    }

    fn logged_in() -> Session {
        logged_in_with(config())
    }

    fn piece_of(step: Step) -> PieceRequest {
        match step {
            Step::Backend(Request::Piece(p)) => p,
            other => panic!("expected a piece request, got {other:?}"),
        }
    }

    fn text(bytes: &[u8]) -> String {
        String::from_utf8_lossy(bytes).into_owned()
    }

    #[test]
    fn a_lost_maildrop_lock_ends_the_session_without_update() {
        // Before QUIT's expunge: an -ERR that says nothing was deleted.
        let mut s = logged_in();
        assert!(say(&mut s, "DELE 1").starts_with("+OK"));
        assert!(matches!(
            line(&mut s, "QUIT"),
            Step::Backend(Request::Expunge(_))
        ));
        let r = reply_of(s.on_lock_lost("(gone)"));
        assert!(r.close);
        assert!(
            wire(&r.reply).starts_with("-ERR [SYS/TEMP] Lost the maildrop lock")
                && wire(&r.reply).contains("no message was deleted"),
            "{}",
            wire(&r.reply)
        );
        assert!(s.is_closed());
        // Between two folders' expunges: the first folder's are done.
        let two = SessionConfig {
            folders: vec!["INBOX".into(), "Archive".into()],
            ..config()
        };
        let mut s = logged_in_to(two, vec![inbox(), inbox()]);
        assert!(say(&mut s, "DELE 1").starts_with("+OK"));
        assert!(say(&mut s, "DELE 3").starts_with("+OK"));
        assert!(matches!(
            line(&mut s, "QUIT"),
            Step::Backend(Request::Expunge(_))
        ));
        assert!(matches!(
            s.on_expunge(Ok(ExpungeAnswer::Expunged)),
            Step::Backend(Request::Expunge(_))
        ));
        let r = reply_of(s.on_lock_lost("(gone)"));
        assert!(wire(&r.reply).contains("first folders were deleted"));
        // In the middle of a message: cut, so no line reads as its end.
        let mut s = logged_in();
        let _ = piece_of(line(&mut s, "RETR 2"));
        assert!(matches!(s.on_lock_lost("(gone)"), Step::Cut));
        assert!(s.is_closed());
    }

    #[test]
    fn transaction_commands_before_login_are_refused() {
        let mut s = Session::new(config(), LOCAL);
        for cmd in [
            "STAT", "LIST", "RETR 1", "DELE 1", "UIDL", "TOP 1 1", "RSET", "NOOP", "PASS x",
        ] {
            assert!(say(&mut s, cmd).starts_with("-ERR "), "{cmd}");
        }
    }

    #[test]
    fn stat_list_uidl_describe_the_snapshot() {
        let mut s = logged_in();
        assert_eq!(say(&mut s, "STAT"), "+OK 2 420\r\n");
        assert_eq!(
            say(&mut s, "LIST"),
            "+OK 2 messages (420 octets)\r\n1 120\r\n2 300\r\n.\r\n"
        );
        assert_eq!(say(&mut s, "LIST 2"), "+OK 2 300\r\n");
        assert_eq!(say(&mut s, "LIST 3"), "-ERR No such message\r\n");
        assert_eq!(
            say(&mut s, "UIDL"),
            "+OK\r\n1 000000015f3c2a10\r\n2 000000055f3c2a10\r\n.\r\n"
        );
        assert_eq!(say(&mut s, "UIDL 1"), "+OK 1 000000015f3c2a10\r\n");
        assert!(say(&mut s, "USER bob").starts_with("-ERR"));
    }

    fn facts_request(step: Step) -> FactsRequest {
        match step {
            Step::Backend(Request::UidlFacts(r)) => r,
            other => panic!("expected a request for UIDL facts, got {other:?}"),
        }
    }

    fn with_format(name: &str) -> SessionConfig {
        SessionConfig {
            uidl_format: UidlFormat::parse(name).expect("a format"),
            ..config()
        }
    }

    #[test]
    fn header_digest_uidls_are_fetched_once_at_the_first_uidl_only() {
        let mut s = logged_in_with(with_format("header-digest"));
        // Nothing but UIDL fetches headers.
        assert_eq!(say(&mut s, "STAT"), "+OK 2 420\r\n");
        assert!(say(&mut s, "LIST").starts_with("+OK 2 messages"));
        assert_eq!(say(&mut s, "UIDL 3"), "-ERR No such message\r\n");
        let request = facts_request(line(&mut s, "UIDL 2"));
        assert_eq!(
            request,
            FactsRequest {
                folder: 0,
                uid_validity: 0x5f3c2a10,
                uids: vec![1, 5],
                kind: FactKind::HeaderDigest
            }
        );
        let a = header_digest(b"Subject: a\r\n\r\n");
        let b = header_digest(b"Subject: b\r\n\r\n");
        let hex = |d: HeaderDigest| d.0.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let r = reply_of(s.on_uidl_facts(Ok(FactsAnswer::Facts(vec![
            (5, Fact::HeaderDigest(b)),
            (1, Fact::HeaderDigest(a)),
        ]))));
        assert_eq!(wire(&r.reply), format!("+OK 2 {}\r\n", hex(b)));
        // From now on without the backend.
        assert_eq!(
            say(&mut s, "UIDL"),
            format!("+OK\r\n1 {}\r\n2 {}\r\n.\r\n", hex(a), hex(b))
        );
        say(&mut s, "DELE 1");
        assert_eq!(say(&mut s, "UIDL"), format!("+OK\r\n2 {}\r\n.\r\n", hex(b)));
    }

    #[test]
    fn twins_get_their_uid_and_each_folder_is_asked_in_turn() {
        let config = SessionConfig {
            folders: vec!["INBOX".into(), "Empty".into(), "Archive".into()],
            ..with_format("header-digest")
        };
        let mut s = Session::new(config, LOCAL);
        pass(&mut s, "alice");
        let empty = FolderSnapshot {
            uid_validity: 3,
            messages: vec![],
        };
        let archive = FolderSnapshot {
            uid_validity: 9,
            messages: vec![BackendMessage { uid: 1, size: 7 }],
        };
        assert!(wire(&open(&mut s, vec![inbox(), empty, archive]).reply).starts_with("+OK"));
        let same = Fact::HeaderDigest(header_digest(b"Subject: twin\r\n"));
        let first = facts_request(line(&mut s, "UIDL"));
        assert_eq!((first.folder, first.uids.as_slice()), (0, &[1, 5][..]));
        let second =
            facts_request(s.on_uidl_facts(Ok(FactsAnswer::Facts(vec![(1, same), (5, same)]))));
        // The empty folder is skipped.
        assert_eq!((second.folder, second.uids.as_slice()), (2, &[1][..]));
        let r = reply_of(s.on_uidl_facts(Ok(FactsAnswer::Facts(vec![(1, same)]))));
        let text = wire(&r.reply);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert!(
            lines[1].starts_with("1 ") && lines[1].ends_with("-1"),
            "{text}"
        );
        assert!(
            lines[2].starts_with("2 ") && lines[2].ends_with("-5"),
            "{text}"
        );
        assert!(
            lines[3].starts_with("3 ") && lines[3].ends_with("-1-2"),
            "{text}"
        );
    }

    #[test]
    fn a_backend_without_gmail_ext_or_refusing_the_fetch_is_an_error_of_uidl_only() {
        let mut s = logged_in_with(with_format("gmail"));
        let request = facts_request(line(&mut s, "UIDL"));
        assert_eq!(request.kind, FactKind::GmailMsgId);
        let r = reply_of(s.on_uidl_facts(Ok(FactsAnswer::Unsupported {
            capability: "X-GM-EXT-1",
        })));
        let text = wire(&r.reply);
        assert!(
            !r.close
                && text.starts_with("-ERR [SYS/PERM] ")
                && text.contains("X-GM-EXT-1")
                && text.contains("uidl_format"),
            "{text}"
        );
        assert_eq!(say(&mut s, "STAT"), "+OK 2 420\r\n");
        // Asked again at the next UIDL; a refusal shows the backend's words.
        let _ = facts_request(line(&mut s, "UIDL 1"));
        let r = reply_of(s.on_uidl_facts(Err(Failure::new(FailureKind::Refused, "[LIMIT] busy"))));
        assert!(!r.close);
        assert_eq!(
            wire(&r.reply),
            "-ERR [SYS/TEMP] The mail server refused the UIDLs of folder INBOX: [LIMIT] busy\r\n"
        );
        let _ = facts_request(line(&mut s, "UIDL"));
        let r = reply_of(s.on_uidl_facts(Ok(FactsAnswer::FolderChanged)));
        assert!(!r.close && wire(&r.reply).starts_with("-ERR [SYS/TEMP] Folder INBOX changed"));
        // A message the backend gave no id for (expunged) keeps Dovecot's form.
        let _ = facts_request(line(&mut s, "UIDL"));
        let r = reply_of(s.on_uidl_facts(Ok(FactsAnswer::Facts(vec![(
            5,
            Fact::GmailMsgId(0x1000_0000_0000_0005),
        )]))));
        assert_eq!(
            wire(&r.reply),
            "+OK\r\n1 000000015f3c2a10\r\n2 GmailId1000000000000005\r\n.\r\n"
        );
        // A lost connection ends the session.
        let mut s = logged_in_with(with_format("gmail"));
        let _ = facts_request(line(&mut s, "UIDL"));
        let r = reply_of(s.on_uidl_facts(Err(Failure::new(FailureKind::Lost, "gone"))));
        assert!(r.close && s.is_closed());
    }

    #[test]
    fn dele_marks_and_rset_forgets() {
        let mut s = logged_in();
        assert_eq!(say(&mut s, "DELE 1"), "+OK Message 1 deleted\r\n");
        assert_eq!(say(&mut s, "DELE 1"), "-ERR Message is deleted\r\n");
        assert_eq!(say(&mut s, "RETR 1"), "-ERR Message is deleted\r\n");
        assert_eq!(say(&mut s, "STAT"), "+OK 1 300\r\n");
        assert_eq!(
            say(&mut s, "LIST"),
            "+OK 1 messages (300 octets)\r\n2 300\r\n.\r\n"
        );
        assert_eq!(say(&mut s, "RSET"), "+OK 2 messages (420 octets)\r\n");
        assert_eq!(say(&mut s, "STAT"), "+OK 2 420\r\n");
    }

    #[test]
    fn quit_expunges_exactly_the_marked_uids() {
        let mut s = logged_in();
        say(&mut s, "DELE 2");
        let Step::Backend(Request::Expunge(deletions)) = line(&mut s, "QUIT") else {
            panic!("QUIT should expunge");
        };
        assert_eq!(
            deletions,
            FolderDeletions {
                folder: 0,
                uid_validity: 0x5f3c2a10,
                uids: vec![5]
            }
        );
        let r = reply_of(s.on_expunge(Ok(ExpungeAnswer::Expunged)));
        assert!(r.close);
        assert_eq!(wire(&r.reply), "+OK Logging out, 1 message deleted\r\n");
        assert_eq!(s.stats().deleted, 1);
        assert_eq!(s.stats().deleted_bytes, 300);
    }

    #[test]
    fn quit_without_deletions_asks_the_backend_nothing() {
        let mut s = logged_in();
        let r = reply_of(line(&mut s, "QUIT"));
        assert!(r.close);
        assert_eq!(wire(&r.reply), "+OK Logging out, 0 messages deleted\r\n");
    }

    #[test]
    fn a_failed_expunge_is_sys_temp_and_says_what_was_deleted() {
        let mut s = logged_in();
        say(&mut s, "DELE 2");
        let _ = line(&mut s, "QUIT");
        let r = reply_of(s.on_expunge(Err(Failure::new(FailureKind::Lost, "timeout"))));
        assert!(r.close);
        assert!(
            wire(&r.reply).starts_with("-ERR [SYS/TEMP] Backend failed to delete the messages;")
        );
        assert_eq!(s.stats().deleted, 0);

        // Two folders: the first one's deletions went through.
        let mut s = Session::new(
            SessionConfig {
                folders: vec!["INBOX".into(), "Spam".into()],
                ..config()
            },
            LOCAL,
        );
        pass(&mut s, "alice");
        let spam = FolderSnapshot {
            uid_validity: 9,
            messages: vec![BackendMessage { uid: 3, size: 10 }],
        };
        let r = open(&mut s, vec![inbox(), spam]);
        assert_eq!(wire(&r.reply), "+OK Logged in, 3 messages (430 octets)\r\n");
        say(&mut s, "DELE 1");
        say(&mut s, "DELE 3");
        let Step::Backend(Request::Expunge(first)) = line(&mut s, "QUIT") else {
            panic!("QUIT should expunge");
        };
        assert_eq!((first.folder, first.uids), (0, vec![1]));
        let Step::Backend(Request::Expunge(second)) = s.on_expunge(Ok(ExpungeAnswer::Expunged))
        else {
            panic!("then the second folder");
        };
        assert_eq!(
            (second.folder, second.uid_validity, second.uids),
            (1, 9, vec![3])
        );
        let r = reply_of(s.on_expunge(Ok(ExpungeAnswer::FolderChanged)));
        assert!(wire(&r.reply).contains("(those of earlier folders were deleted)"));
    }

    #[test]
    fn no_trash_folder_is_sys_perm_and_says_nothing_was_deleted() {
        let mut s = logged_in();
        say(&mut s, "DELE 2");
        let _ = line(&mut s, "QUIT");
        let r = reply_of(s.on_expunge(Ok(ExpungeAnswer::NoTrash)));
        let text = wire(&r.reply);
        assert!(
            r.close
                && text.starts_with(
                    "-ERR [SYS/PERM] The messages marked with DELE were not deleted: "
                ),
            "{text}"
        );
        assert!(text.contains("no Trash folder"), "{text}");
        assert_eq!(s.stats().deleted, 0);
    }

    #[test]
    fn an_unconfirmed_expunge_does_not_claim_that_nothing_was_deleted() {
        let mut s = logged_in();
        say(&mut s, "DELE 2");
        let _ = line(&mut s, "QUIT");
        let r = reply_of(s.on_expunge(Ok(ExpungeAnswer::Unconfirmed)));
        let text = wire(&r.reply);
        assert!(r.close && text.starts_with("-ERR [SYS/TEMP] The mail server did not confirm"));
        assert!(!text.contains("no message was deleted"), "{text}");
    }

    #[test]
    fn retr_is_one_whole_fetch_that_sets_seen_and_top_reads_pieces_only() {
        let mut s = logged_in();
        let p = piece_of(line(&mut s, "RETR 2"));
        assert_eq!(
            (p.folder, p.uid_validity, p.uid, p.offset, p.read),
            (
                0,
                0x5f3c2a10,
                5,
                0,
                Read::Whole {
                    set_seen: true,
                    limit: 600 + u64::from(FETCH_CHUNK),
                    size: 300,
                }
            )
        );
        let Step::Write { bytes, next } =
            s.on_piece(Ok(PieceAnswer::Bytes(b"S: x\r\n\r\nhi".to_vec())))
        else {
            panic!("the message goes out");
        };
        assert_eq!(text(&bytes), "+OK 300 octets\r\nS: x\r\n\r\nhi\r\n.\r\n");
        // \Seen came with the fetch: nothing more for the backend.
        assert!(next.is_none(), "{next:?}");
        assert_eq!((s.stats().retrieved, s.stats().retrieved_bytes), (1, 300));
        let p = piece_of(line(&mut s, "TOP 2 0"));
        assert_eq!(p.read, Read::Piece);
    }

    #[test]
    fn without_mark_seen_or_read_only_the_whole_fetch_peeks() {
        for (mark_seen, read_only) in [(false, false), (true, true), (false, true)] {
            let mut c = config();
            c.mark_seen = mark_seen;
            c.read_only = read_only;
            let mut s = logged_in_with(c);
            let p = piece_of(line(&mut s, "RETR 1"));
            assert!(matches!(
                p.read,
                Read::Whole {
                    set_seen: false,
                    ..
                }
            ));
        }
    }

    #[test]
    fn a_long_message_asks_for_the_next_piece_after_each_full_one() {
        let mut s = logged_in();
        let _ = piece_of(line(&mut s, "RETR 1"));
        let Step::Write {
            next: Some(Request::Piece(p)),
            ..
        } = s.on_piece(Ok(PieceAnswer::Bytes(vec![b'a'; FETCH_CHUNK as usize])))
        else {
            panic!("a full piece asks for more");
        };
        assert_eq!(p.offset, u64::from(FETCH_CHUNK));
    }

    #[test]
    fn a_refused_fetch_is_an_err_for_that_message_and_the_next_one_is_sent() {
        let mut s = logged_in();
        let _ = piece_of(line(&mut s, "RETR 1"));
        let r = reply_of(s.on_piece(Err(Failure::new(FailureKind::Refused, "Internal error"))));
        assert!(!r.close);
        assert_eq!(
            wire(&r.reply),
            "-ERR Message 1 cannot be read now, the mail server said: Internal error\r\n"
        );
        assert!(!s.is_closed());
        let p = piece_of(line(&mut s, "RETR 2"));
        assert_eq!(p.uid, 5);
        assert!(matches!(
            s.on_piece(Ok(PieceAnswer::Bytes(b"x".to_vec()))),
            Step::Write { .. }
        ));
        assert_eq!(s.stats().retrieved, 1);
    }

    #[test]
    fn a_lost_backend_ends_the_session_before_or_after_the_first_byte() {
        let mut s = logged_in();
        let _ = piece_of(line(&mut s, "RETR 1"));
        let r = reply_of(s.on_piece(Err(Failure::new(FailureKind::Lost, "timeout"))));
        assert!(r.close && wire(&r.reply).starts_with("-ERR [SYS/TEMP] "));

        let mut s = logged_in();
        let _ = piece_of(line(&mut s, "RETR 1"));
        let _ = s.on_piece(Ok(PieceAnswer::Bytes(vec![b'a'; FETCH_CHUNK as usize])));
        assert!(matches!(
            s.on_piece(Err(Failure::new(FailureKind::Lost, "timeout"))),
            Step::Cut
        ));
        assert!(s.is_closed());
        assert_eq!(s.stats().retrieved, 0);
    }

    #[test]
    fn top_and_read_only_never_set_seen() {
        let mut s = logged_in();
        let _ = piece_of(line(&mut s, "TOP 1 0"));
        let Step::Write { bytes, next: None } =
            s.on_piece(Ok(PieceAnswer::Bytes(b"H: v\r\n\r\nbody\r\n".to_vec())))
        else {
            panic!("TOP is complete without \\Seen");
        };
        assert_eq!(
            text(&bytes),
            "+OK Top of message follows\r\nH: v\r\n\r\n.\r\n"
        );
        assert_eq!(s.stats().retrieved, 0);
        let mut s = logged_in_with(SessionConfig {
            read_only: true,
            ..config()
        });
        let p = piece_of(line(&mut s, "RETR 1"));
        assert!(matches!(
            p.read,
            Read::Whole {
                set_seen: false,
                ..
            }
        ));
        // The next one is asked for ahead, which never sets \Seen either.
        assert!(matches!(
            s.on_piece(Ok(PieceAnswer::Bytes(b"x".to_vec()))),
            Step::Write {
                next: Some(Request::Prefetch(PrefetchRequest { ref uids, .. })),
                ..
            } if uids.first() == Some(&5)
        ));
        assert!(say(&mut s, "DELE 1").starts_with("-ERR [SYS/PERM]"));
    }

    /// The session after a login to these folders.
    fn logged_in_to(config: SessionConfig, folders: Vec<FolderSnapshot>) -> Session {
        let mut s = Session::new(config, LOCAL);
        pass(&mut s, "alice");
        let r = open(&mut s, folders);
        assert!(wire(&r.reply).starts_with("+OK Logged in"));
        s
    }

    /// What a RETR asks for ahead once its message went out.
    fn ahead_of(s: &mut Session, command: &str) -> Option<PrefetchRequest> {
        let _ = piece_of(line(s, command));
        match s.on_piece(Ok(PieceAnswer::Bytes(b"S: x\r\n\r\nhi".to_vec()))) {
            Step::Write { next: None, .. } => None,
            Step::Write {
                next: Some(Request::Prefetch(p)),
                bytes,
            } => {
                assert!(bytes.ends_with(b"\r\n.\r\n"), "the reply is complete first");
                Some(p)
            }
            other => panic!("expected the message, got {other:?}"),
        }
    }

    fn folder(uid_validity: u32, sizes: &[(u32, u64)]) -> FolderSnapshot {
        FolderSnapshot {
            uid_validity,
            messages: sizes
                .iter()
                .map(|&(uid, size)| BackendMessage { uid, size })
                .collect(),
        }
    }

    #[test]
    fn the_messages_asked_ahead_are_bounded_in_bytes_and_count() {
        let kib = 1024;
        let sizes: Vec<(u32, u64)> = (1..=4).map(|uid| (uid, 100 * kib)).collect();
        let mut s = logged_in_to(config(), vec![folder(7, &sizes)]);
        // 100 + 100 KiB fit PREFETCH_BATCH_BYTES, a third would not.
        assert_eq!(ahead_of(&mut s, "RETR 1").map(|p| p.uids), Some(vec![2, 3]));
        let sizes: Vec<(u32, u64)> = (1..=40).map(|uid| (uid, 10)).collect();
        let mut s = logged_in_to(config(), vec![folder(7, &sizes)]);
        let uids = ahead_of(&mut s, "RETR 1")
            .map(|p| p.uids)
            .unwrap_or_default();
        assert_eq!(
            uids,
            (2..2 + PREFETCH_BATCH_MESSAGES as u32).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_retr_asks_for_the_next_live_message_ahead_and_nothing_else_does() {
        let big = PREFETCH_MAX_MESSAGE + 1;
        let folders = || {
            vec![
                folder(7, &[(10, 100), (11, 200), (12, 300), (13, big), (14, 50)]),
                folder(8, &[(3, 10), (4, 10)]),
            ]
        };
        let two = || SessionConfig {
            folders: vec!["INBOX".into(), "Archive".into()],
            ..config()
        };
        let mut s = logged_in_to(two(), folders());
        assert_eq!(
            ahead_of(&mut s, "RETR 1"),
            Some(PrefetchRequest {
                folder: 0,
                uids: vec![11, 12]
            })
        );
        // A message marked deleted is skipped: the client will not ask for it.
        say(&mut s, "DELE 2");
        assert_eq!(ahead_of(&mut s, "RETR 1").map(|p| p.uids), Some(vec![12]));
        // Too big to be worth it (message 4), in another folder (6), after
        // the last: nothing.
        assert_eq!(ahead_of(&mut s, "RETR 3"), None);
        assert_eq!(ahead_of(&mut s, "RETR 5"), None);
        assert_eq!(
            ahead_of(&mut s, "RETR 6"),
            Some(PrefetchRequest {
                folder: 1,
                uids: vec![4]
            })
        );
        assert_eq!(ahead_of(&mut s, "RETR 7"), None);
        // TOP reads only a head: nothing ahead.
        let _ = piece_of(line(&mut s, "TOP 1 0"));
        assert!(matches!(
            s.on_piece(Ok(PieceAnswer::Bytes(b"S: x\r\n\r\n".to_vec()))),
            Step::Write { next: None, .. }
        ));
        // backend_prefetch = false: nothing.
        let mut s = logged_in_to(
            SessionConfig {
                prefetch: false,
                ..two()
            },
            folders(),
        );
        assert_eq!(ahead_of(&mut s, "RETR 1"), None);
        // The answer to a fetch ahead, good or bad, is nothing to the client.
        let mut s = logged_in_to(two(), folders());
        assert!(ahead_of(&mut s, "RETR 1").is_some());
        assert!(matches!(s.on_prefetch(Ok(())), Step::Done));
        assert!(matches!(
            s.on_prefetch(Err(Failure::new(FailureKind::Lost, "gone"))),
            Step::Done
        ));
        assert!(!s.is_closed());
        assert_eq!(say(&mut s, "STAT"), format!("+OK 7 {}\r\n", 670 + big));
    }

    #[test]
    fn a_message_expunged_elsewhere_is_an_err_and_the_session_goes_on() {
        let mut s = logged_in();
        let _ = piece_of(line(&mut s, "RETR 2"));
        let r = reply_of(s.on_piece(Ok(PieceAnswer::NoMessage)));
        assert!(wire(&r.reply).starts_with("-ERR Message was removed") && !r.close);
        assert_eq!(say(&mut s, "STAT"), "+OK 2 420\r\n");
    }

    #[test]
    fn failed_logins_are_delayed_and_capped() {
        let mut s = Session::new(config(), LOCAL);
        for round in 1..=3 {
            pass(&mut s, "alice");
            let r = reply_of(s.on_login(Ok(LoginAnswer::Rejected {
                penalty: Duration::ZERO,
                reason: "the backend said: [AUTHENTICATIONFAILED] no".into(),
            })));
            assert!(wire(&r.reply).starts_with("-ERR [AUTH] "));
            assert_eq!(r.delay, Duration::from_secs(2));
            assert_eq!(r.close, round == 3);
        }
        assert!(s.is_closed());
    }

    #[test]
    fn pass_needs_user_first_and_user_is_forgotten_after_a_failure() {
        let mut s = Session::new(config(), LOCAL);
        assert_eq!(say(&mut s, "PASS x"), "-ERR Send USER first\r\n");
        pass(&mut s, "a");
        let _ = s.on_login(Ok(LoginAnswer::Rejected {
            penalty: Duration::ZERO,
            reason: "the backend said: [AUTHENTICATIONFAILED] no".into(),
        }));
        assert_eq!(say(&mut s, "PASS x"), "-ERR Send USER first\r\n");
    }

    #[test]
    fn login_failures_close_with_the_code_that_fits() {
        type Answer = fn(&mut Session) -> Step;
        let cases: Vec<(Answer, &str)> = vec![
            (
                |s| s.on_login(Err(Failure::new(FailureKind::Unreachable, "refused"))),
                "-ERR [SYS/TEMP] Backend server unreachable, try again later\r\n",
            ),
            (
                |s| s.on_login(Ok(LoginAnswer::Unavailable("later".into()))),
                "-ERR [SYS/TEMP] Backend cannot log you in now, try again later\r\n",
            ),
            (
                |s| {
                    let _ = s.on_login(Ok(LoginAnswer::LoggedIn));
                    s.on_lock(Ok(LockAnswer::InUse))
                },
                "-ERR [IN-USE] Mailbox is locked by another POP3 session, try again later\r\n",
            ),
            (
                |s| {
                    let _ = s.on_login(Ok(LoginAnswer::LoggedIn));
                    s.on_lock(Err(Failure::new(FailureKind::Local, "EACCES")))
                },
                "-ERR [SYS/TEMP] Cannot lock the maildrop, try again later\r\n",
            ),
            (
                |s| {
                    let _ = s.on_login(Ok(LoginAnswer::LoggedIn));
                    let _ = s.on_lock(Ok(LockAnswer::Locked));
                    s.on_folder(Err(Failure::new(FailureKind::Refused, "no such mailbox")))
                },
                "-ERR [SYS/PERM] Cannot open folder INBOX\r\n",
            ),
            (
                |s| {
                    let _ = s.on_login(Ok(LoginAnswer::LoggedIn));
                    let _ = s.on_lock(Ok(LockAnswer::Locked));
                    s.on_folder(Err(Failure::new(
                        FailureKind::Denied,
                        "User is authenticated but not connected.",
                    )))
                },
                "-ERR [SYS/TEMP] Folder INBOX is not open to this login yet, try again later\r\n",
            ),
            (
                |s| {
                    let _ = s.on_login(Ok(LoginAnswer::LoggedIn));
                    let _ = s.on_lock(Ok(LockAnswer::Locked));
                    s.on_folder(Err(Failure::new(FailureKind::Protocol, "garbage")))
                },
                "-ERR [SYS/TEMP] Backend server failed, try again later\r\n",
            ),
            // Throttled: never [AUTH], and when to come back.
            (
                |s| {
                    s.on_login(Ok(LoginAnswer::Throttled {
                        wait: Duration::from_secs(300),
                    }))
                },
                "-ERR [SYS/TEMP] The mail server is throttling this mailbox, try again in 300 \
                 seconds\r\n",
            ),
            (
                |s| {
                    s.on_login(Err(Failure::new(
                        FailureKind::Throttled(None),
                        "[THROTTLED]",
                    )))
                },
                "-ERR [SYS/TEMP] The mail server is throttling this mailbox, try again later\r\n",
            ),
            (
                |s| {
                    let _ = s.on_login(Ok(LoginAnswer::LoggedIn));
                    let _ = s.on_lock(Ok(LockAnswer::Locked));
                    let wait = Some(Duration::from_millis(4500));
                    s.on_folder(Err(Failure::new(FailureKind::Throttled(wait), "throttled")))
                },
                "-ERR [SYS/TEMP] The mail server is throttling this mailbox, try again in 5 \
                 seconds\r\n",
            ),
        ];
        for (answer, expected) in cases {
            let mut s = Session::new(config(), LOCAL);
            pass(&mut s, "alice");
            let r = reply_of(answer(&mut s));
            assert!(r.close, "{expected}");
            assert_eq!(wire(&r.reply), expected);
            assert!(s.is_closed());
        }
    }

    #[test]
    fn an_answer_nobody_asked_for_closes_instead_of_panicking() {
        let mut s = logged_in();
        let r = reply_of(s.on_piece(Ok(PieceAnswer::NoMessage)));
        assert!(r.close && wire(&r.reply).starts_with("-ERR [SYS/TEMP] Internal error"));
    }

    #[test]
    fn capa_is_true_to_the_state() {
        let mut s = Session::new(config(), LOCAL);
        let before = say(&mut s, "CAPA");
        assert!(before.contains("\r\nUSER\r\n") && before.contains("\r\nPIPELINING\r\n"));
        assert!(!before.contains("IMPLEMENTATION"));
        let mut s = logged_in();
        let after = say(&mut s, "CAPA");
        assert!(
            !after.contains("USER")
                && after.contains("\r\nTOP\r\n")
                && after.contains("RESP-CODES")
        );
    }

    #[test]
    fn too_long_and_nul_lines_are_errors_that_keep_the_session() {
        let mut s = logged_in();
        let r = reply_of(s.handle_line(Line::TooLong));
        assert!(wire(&r.reply).starts_with("-ERR") && !r.close);
        assert!(say(&mut s, "ST\0AT").starts_with("-ERR"));
        assert!(say(&mut s, "PASS a\0b").starts_with("-ERR [AUTH]"));
        assert_eq!(say(&mut s, "STAT"), "+OK 2 420\r\n");
    }

    #[test]
    fn twenty_bad_commands_in_a_row_close_and_a_good_one_resets_the_count() {
        let mut s = logged_in();
        for _ in 0..19 {
            assert!(say(&mut s, "FROB").starts_with("-ERR"));
        }
        assert_eq!(say(&mut s, "STAT"), "+OK 2 420\r\n");
        for _ in 0..19 {
            assert!(!reply_of(line(&mut s, "LIST x")).close);
        }
        let r = reply_of(line(&mut s, "FROB"));
        assert!(r.close && wire(&r.reply) == "-ERR Too many bad commands, closing\r\n");
        assert!(s.is_closed());
    }

    #[test]
    fn debug_of_commands_and_requests_never_shows_a_credential() {
        let pw = "S3cr3t-pw";
        let plain = BASE64.encode(format!("\0alice\0{pw}"));
        let token = BASE64.encode(format!("user=alice\x01auth=Bearer {pw}\x01\x01"));
        let shown = |text: String| {
            assert!(
                !text.contains(pw) && !text.contains(&plain) && !text.contains(&token),
                "a credential in {text}"
            );
        };
        for line in [
            format!("PASS {pw}"),
            format!("AUTH PLAIN {plain}"),
            format!("AUTH XOAUTH2 {token}"),
        ] {
            shown(format!("{:?}", parse(line.as_bytes())));
        }
        let mut s = Session::new(config(), LOCAL);
        say(&mut s, "USER alice");
        shown(format!("{:?}", line(&mut s, &format!("PASS {pw}"))));
        let mut s = Session::new(config(), LOCAL);
        shown(format!(
            "{:?}",
            request(&mut s, &format!("AUTH PLAIN {plain}"))
        ));
        let mut s = Session::new(config(), LOCAL);
        shown(format!(
            "{:?}",
            request(&mut s, &format!("AUTH XOAUTH2 {token}"))
        ));
        let mut s = Session::new(config(), LOCAL);
        say(&mut s, "AUTH LOGIN");
        say(&mut s, "YWxpY2U=");
        shown(format!("{:?}", line(&mut s, &BASE64.encode(pw))));
    }

    #[test]
    fn the_line_limit_is_long_only_while_auth_lines_may_come() {
        let s = Session::new(config(), LOCAL);
        assert_eq!(s.line_limit(), MAX_SASL_LINE);
        let s = logged_in();
        assert_eq!(s.line_limit(), MAX_COMMAND_LINE);
    }

    /// Feeds a line and returns the backend request it leads to, answering
    /// a capabilities request with a backend that offers XOAUTH2.
    fn request(s: &mut Session, text: &str) -> Request {
        match line(s, text) {
            Step::Backend(Request::Capabilities) => {
                match s.on_capabilities(Ok(vec!["AUTH=XOAUTH2".to_string()])) {
                    Step::Backend(r) => r,
                    other => panic!("expected a backend request after the probe, got {other:?}"),
                }
            }
            Step::Backend(r) => r,
            other => panic!("expected a backend request, got {other:?}"),
        }
    }

    #[test]
    fn plaintext_login_off_loopback_without_tls_is_refused_and_not_advertised() {
        let mut s = Session::new(config(), REMOTE);
        let capa = say(&mut s, "CAPA");
        assert!(
            !capa.contains("USER") && !capa.contains("SASL") && capa.contains("\r\nSTLS\r\n"),
            "{capa}"
        );
        assert!(say(&mut s, "USER alice").starts_with("-ERR Plaintext authentication is disabled"));
        assert!(say(&mut s, "PASS secret").starts_with("-ERR Plaintext"));
        assert!(say(&mut s, "AUTH PLAIN AGEAYg==").starts_with("-ERR Plaintext"));
        assert!(say(&mut s, "AUTH plain").starts_with("-ERR Plaintext"));
        assert!(say(&mut s, "AUTH X-WHATEVER").starts_with("-ERR Plaintext"));
        // Counted once per attempt, by our names only.
        assert_eq!(s.take_refused_logins(), ["USER", "PLAIN", "PLAIN", "AUTH"]);
        assert!(s.take_refused_logins().is_empty());
        let mut s = Session::new(
            SessionConfig {
                allow_plaintext_auth: true,
                ..config()
            },
            REMOTE,
        );
        assert_eq!(say(&mut s, "USER alice"), "+OK Send PASS\r\n");
    }

    #[test]
    fn stls_upgrades_then_disappears_from_capa() {
        let mut s = Session::new(config(), REMOTE);
        say(&mut s, "USER alice");
        match line(&mut s, "STLS") {
            Step::StartTls(r) => assert_eq!(wire(&r), "+OK Begin TLS negotiation\r\n"),
            other => panic!("{other:?}"),
        }
        s.on_tls_started();
        let capa = say(&mut s, "CAPA");
        assert!(
            !capa.contains("STLS")
                && capa.contains("\r\nUSER\r\n")
                && capa.contains("SASL PLAIN LOGIN"),
            "{capa}"
        );
        // USER given before STLS is forgotten.
        assert_eq!(say(&mut s, "PASS x"), "-ERR Send USER first\r\n");
        assert!(say(&mut s, "STLS").starts_with("-ERR TLS is already active"));
        let mut s = Session::new(
            SessionConfig {
                stls_available: false,
                ..config()
            },
            REMOTE,
        );
        assert!(say(&mut s, "STLS").starts_with("-ERR"));
        assert!(!say(&mut s, "CAPA").contains("STLS"));
    }

    #[test]
    fn a_connection_encrypted_from_the_start_takes_plaintext_logins_without_stls() {
        // A remote client whose TLS a trusted balancer ended.
        let behind_tls = Connection {
            tls: true,
            ..REMOTE
        };
        let mut s = Session::new(config(), behind_tls);
        let capa = say(&mut s, "CAPA");
        assert!(
            !capa.contains("STLS") && capa.contains("\r\nUSER\r\n"),
            "{capa}"
        );
        assert!(say(&mut s, "STLS").starts_with("-ERR TLS is already active"));
        assert!(say(&mut s, "AUTH").contains("\r\nPLAIN\r\n"));
        pass(&mut s, "alice");
    }

    #[test]
    fn auth_plain_with_initial_response_and_authzid() {
        let mut s = Session::new(config(), LOCAL);
        // "user\0master\0pw": authorize as user, authenticate as master.
        match request(&mut s, "AUTH PLAIN dXNlcgBtYXN0ZXIAcHc=") {
            Request::Login(Credentials::Password {
                login,
                authzid,
                password,
            }) => {
                assert_eq!(login, b"master");
                assert_eq!(authzid.as_deref(), Some(&b"user"[..]));
                assert_eq!(password.expose(), b"pw");
            }
            other => panic!("{other:?}"),
        }
        // The maildrop (lock, logs) is the authorization identity's.
        let Step::Backend(Request::Lock { user }) = s.on_login(Ok(LoginAnswer::LoggedIn)) else {
            panic!("the lock comes next");
        };
        assert_eq!(user, b"user");
    }

    #[test]
    fn auth_plain_with_continuation_cancel_and_bad_base64() {
        let mut s = Session::new(config(), LOCAL);
        assert_eq!(say(&mut s, "AUTH PLAIN"), "+ \r\n");
        assert!(s.awaits_sasl_response());
        assert_eq!(say(&mut s, "*"), "-ERR AUTH cancelled\r\n");
        assert_eq!(say(&mut s, "AUTH PLAIN"), "+ \r\n");
        assert!(say(&mut s, "not base64!").starts_with("-ERR Invalid base64"));
        assert!(say(&mut s, "AUTH PLAIN bm9udWxz").starts_with("-ERR Malformed PLAIN"));
        assert_eq!(say(&mut s, "AUTH PLAIN"), "+ \r\n");
        match request(&mut s, "AGFsaWNlAHNlY3JldA==") {
            Request::Login(Credentials::Password {
                login,
                authzid: None,
                ..
            }) => assert_eq!(login, b"alice"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn auth_login_asks_for_user_then_password() {
        let mut s = Session::new(config(), LOCAL);
        assert_eq!(say(&mut s, "AUTH LOGIN"), "+ VXNlcm5hbWU6\r\n");
        assert_eq!(say(&mut s, "YWxpY2U="), "+ UGFzc3dvcmQ6\r\n");
        match request(&mut s, "c2VjcmV0") {
            Request::Login(Credentials::Password {
                login, password, ..
            }) => {
                assert_eq!(
                    (login.as_slice(), password.expose()),
                    (&b"alice"[..], &b"secret"[..])
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn oauth_mechanisms_only_when_the_backend_has_them() {
        let mut s = Session::new(config(), LOCAL);
        match line(&mut s, "CAPA") {
            Step::Backend(Request::Capabilities) => {}
            other => panic!("CAPA should ask the backend first: {other:?}"),
        }
        let r =
            reply_of(s.on_capabilities(Ok(vec!["IMAP4REV1".into(), "AUTH=OAUTHBEARER".into()])));
        assert!(wire(&r.reply).contains("SASL PLAIN LOGIN OAUTHBEARER\r\n"));
        assert!(
            say(&mut s, "AUTH XOAUTH2 dXNlcj1hAWF1dGg9QmVhcmVyIHQBAQ==")
                .starts_with("-ERR Unsupported")
        );
        assert_eq!(
            say(&mut s, "AUTH"),
            "+OK Mechanisms follow\r\nPLAIN\r\nLOGIN\r\nOAUTHBEARER\r\n.\r\n"
        );
    }

    #[test]
    fn an_unreachable_backend_offers_no_oauth_mechanisms() {
        let mut s = Session::new(config(), LOCAL);
        let _ = line(&mut s, "CAPA");
        let r = reply_of(s.on_capabilities(Err(Failure::new(FailureKind::Unreachable, "x"))));
        assert!(wire(&r.reply).contains("SASL PLAIN LOGIN\r\n"));
    }

    #[test]
    fn xoauth2_one_line_and_two_step_forms_name_the_user() {
        // user=alice@example.org^Aauth=Bearer tok^A^A
        let token = BASE64.encode(b"user=alice@example.org\x01auth=Bearer tok\x01\x01");
        let mut s = Session::new(config(), LOCAL);
        match request(&mut s, &format!("AUTH XOAUTH2 {token}")) {
            Request::Login(Credentials::Token {
                mechanism,
                response,
            }) => {
                assert_eq!(mechanism, TokenMechanism::XOAuth2);
                assert!(response.expose().starts_with(b"user=alice"));
            }
            other => panic!("{other:?}"),
        }
        let Step::Backend(Request::Lock { user }) = s.on_login(Ok(LoginAnswer::LoggedIn)) else {
            panic!("the lock comes next");
        };
        assert_eq!(user, b"alice@example.org");
        let mut s = Session::new(config(), LOCAL);
        let _ = line(&mut s, "AUTH");
        let _ = s.on_capabilities(Ok(vec!["AUTH=XOAUTH2".to_string()]));
        assert_eq!(say(&mut s, "AUTH XOAUTH2"), "+ \r\n");
        assert!(matches!(
            request(&mut s, &token),
            Request::Login(Credentials::Token { .. })
        ));
    }

    #[test]
    fn long_auth_lines_are_allowed_but_other_long_lines_are_not() {
        let mut s = Session::new(config(), LOCAL);
        let _ = line(&mut s, "AUTH");
        let _ = s.on_capabilities(Ok(vec!["AUTH=XOAUTH2".to_string()]));
        let payload = format!("user=a\x01auth=Bearer {}\x01\x01", "t".repeat(12_000));
        let auth = format!("AUTH XOAUTH2 {}", BASE64.encode(payload));
        assert!(matches!(request(&mut s, &auth), Request::Login(_)));
        let _ = s.on_login(Ok(LoginAnswer::Rejected {
            penalty: Duration::ZERO,
            reason: "the backend said: [AUTHENTICATIONFAILED] no".into(),
        }));
        assert_eq!(
            say(&mut s, &format!("NOOP {}", "x".repeat(300))),
            "-ERR Line too long\r\n"
        );
        assert_eq!(
            say(&mut s, &format!("USER {}", "x".repeat(300))),
            "-ERR Line too long\r\n"
        );
    }

    #[test]
    fn random_command_lines_and_answers_in_every_state_never_panic() {
        use crate::test_support::Rng;
        const WORDS: &[&str] = &[
            "USER",
            "PASS",
            "STAT",
            "LIST",
            "RETR",
            "DELE",
            "NOOP",
            "RSET",
            "TOP",
            "UIDL",
            "QUIT",
            "CAPA",
            "STLS",
            "AUTH",
            "PLAIN",
            "LOGIN",
            "XOAUTH2",
            "OAUTHBEARER",
            "*",
            "=",
            "0",
            "1",
            "2",
            "-1",
            "4294967297",
            "99999999999999999999",
            "AGFsaWNlAHNlY3JldA==",
            "",
            " ",
            "\0",
            "\r",
            "\n",
            "\u{e4}",
        ];
        let kinds = [
            FailureKind::Refused,
            FailureKind::Lost,
            FailureKind::Protocol,
            FailureKind::Unreachable,
            FailureKind::Local,
        ];
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        for round in 0..300 {
            let mut s = if round % 2 == 0 {
                logged_in()
            } else {
                Session::new(config(), REMOTE)
            };
            for _ in 0..30 {
                let words: Vec<&str> = (0..rng.below(4))
                    .map(|_| WORDS[rng.below(WORDS.len())])
                    .collect();
                let mut step = s.handle_line(Line::Complete(words.join(" ").into_bytes()));
                // Answer every request, at random well or badly, boundedly.
                for _ in 0..20 {
                    let fail = rng.below(4) == 0;
                    let failure = || Failure::new(kinds[round % kinds.len()], "x");
                    let request = match step {
                        Step::Backend(r) | Step::Write { next: Some(r), .. } => r,
                        Step::StartTls(_) => {
                            s.on_tls_started();
                            break;
                        }
                        _ => break,
                    };
                    step = match request {
                        Request::Capabilities => s.on_capabilities(Ok(vec!["AUTH=XOAUTH2".into()])),
                        Request::Login(_) if fail => s.on_login(Err(failure())),
                        Request::Login(_) => s.on_login(Ok(LoginAnswer::LoggedIn)),
                        Request::Lock { .. } => s.on_lock(Ok(LockAnswer::Locked)),
                        Request::OpenFolder { .. } => s.on_folder(Ok(inbox())),
                        Request::Piece(_) if fail => s.on_piece(Err(failure())),
                        Request::Piece(_) => {
                            let size = [0, 1, FETCH_CHUNK as usize][rng.below(3)];
                            s.on_piece(Ok(PieceAnswer::Bytes(vec![b'.'; size])))
                        }
                        Request::Prefetch(_) if fail => s.on_prefetch(Err(failure())),
                        Request::Prefetch(_) => s.on_prefetch(Ok(())),
                        Request::Expunge(_) if fail => s.on_expunge(Err(failure())),
                        Request::Expunge(_) => s.on_expunge(Ok(ExpungeAnswer::Expunged)),
                        Request::UidlFacts(_) if fail => s.on_uidl_facts(Err(failure())),
                        Request::UidlFacts(r) => {
                            let facts = r.uids.iter().map(|&u| (u, Fact::GmailMsgId(u.into())));
                            s.on_uidl_facts(Ok(FactsAnswer::Facts(facts.collect())))
                        }
                    };
                }
            }
        }
    }
}
