//! The POP3 session state machine (RFC 1939 AUTHORIZATION -> TRANSACTION ->
//! UPDATE, RFC 2449 CAPA, RFC 2595 STLS, RFC 5034 SASL AUTH), without I/O.
//! It takes command lines and the outcomes of work it asked for, and returns
//! replies and requests for work. The driver does the reading, writing,
//! sleeping, TLS and IMAP.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use super::command::{Command, ParseError, parse};
use super::lines::Line;
use super::reply::{Reply, RespCode};
use crate::limits::MAX_COMMAND_LINE;
#[cfg(test)]
use crate::maildrop::FolderSnapshot;
use crate::maildrop::{FolderDeletions, Maildrop, UidlFormat};
use crate::secret::Secret;

/// What the session needs to know of the configuration.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub uidl_format: UidlFormat,
    pub login_failure_delay: Duration,
    pub max_login_failures: u32,
    pub read_only: bool,
    pub mark_seen: bool,
    /// Sent in CAPA as IMPLEMENTATION when set.
    pub implementation: Option<String>,
    /// Plaintext logins off loopback without TLS are allowed.
    pub allow_plaintext_auth: bool,
    /// A certificate is configured and loaded: STLS can be offered.
    pub stls_available: bool,
}

/// What is known of the connection when the session starts.
#[derive(Debug, Clone, Copy)]
pub struct Connection {
    pub tls: bool,
    pub loopback: bool,
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
    Backend(Request),
}

/// Backend work the driver must do and report back.
#[derive(Debug)]
pub enum Request {
    /// Connect to the backend to learn its SASL mechanisms; report with
    /// `on_probe`.
    Probe,
    /// Log in, take the maildrop lock, select the folder, take the snapshot;
    /// report with `on_open`. `user` names the maildrop (lock, logs).
    OpenMaildrop {
        user: Vec<u8>,
        credentials: Credentials,
    },
    /// Stream a message; report with `on_fetch`.
    Fetch(FetchRequest),
    /// Expunge these UIDs, by folder (QUIT in TRANSACTION); report with
    /// `on_commit`.
    Commit { deletions: Vec<FolderDeletions> },
}

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
        mechanism: Mechanism,
        response: Secret,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Login,
    XOAuth2,
    OAuthBearer,
}

impl Mechanism {
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
            Mechanism::XOAuth2 => "XOAUTH2",
            Mechanism::OAuthBearer => "OAUTHBEARER",
        }
    }

    fn from_name(name: &str) -> Option<Mechanism> {
        [
            Mechanism::Plain,
            Mechanism::Login,
            Mechanism::XOAuth2,
            Mechanism::OAuthBearer,
        ]
        .into_iter()
        .find(|m| m.name() == name)
    }

    /// Mechanisms passed through to the backend, offered only if it has them.
    fn needs_backend(self) -> bool {
        matches!(self, Mechanism::XOAuth2 | Mechanism::OAuthBearer)
    }
}

/// RETR or TOP of one message: send `+OK status`, then the body through
/// the encoder for `kind`. `folder` indexes the configured folders; its
/// UIDVALIDITY at login tells whether the UID still means the same message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchRequest {
    pub folder: usize,
    pub uid_validity: u32,
    pub uid: u32,
    /// The size from the snapshot (RFC822.SIZE).
    pub size: u64,
    pub status: String,
    pub kind: FetchKind,
    pub mark_seen: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchKind {
    Retr,
    Top(u64),
}

#[derive(Debug)]
pub enum OpenOutcome {
    Opened(Maildrop),
    /// The backend refused the credentials.
    BadCredentials,
    /// Another session holds the maildrop lock.
    InUse,
    /// The backend could not be reached or failed; worth trying later.
    Unavailable(String),
    /// A fault that will not go away by itself (e.g. the folder is missing).
    Permanent(String),
}

/// What became of the messages marked at QUIT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    Expunged,
    /// Flagged `\Deleted` but not expunged (a backend without UIDPLUS where
    /// other messages were flagged too).
    LeftFlagged,
}

#[derive(Debug)]
pub enum FetchOutcome {
    /// The whole reply went out.
    Sent,
    /// The message no longer exists on the backend; nothing was sent.
    Gone,
    /// The backend failed; `started` says whether part of the reply went out.
    Failed { started: bool },
}

enum State {
    Authorization { user: Option<Vec<u8>> },
    Transaction(Maildrop),
    Closed,
}

/// Where a SASL exchange stands while waiting for the client's next line.
enum Sasl {
    Plain,
    LoginUser,
    LoginPassword(Vec<u8>),
    Token(Mechanism),
}

/// Counts for the session summary log line.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub user: Option<String>,
    pub retrieved: u64,
    pub retrieved_bytes: u64,
    pub deleted: u64,
    pub deleted_bytes: u64,
}

pub struct Session {
    config: SessionConfig,
    connection: Connection,
    state: State,
    sasl: Option<Sasl>,
    /// The backend's pass-through SASL mechanisms, once probed.
    backend_mechanisms: Option<Vec<Mechanism>>,
    /// A command waiting for the probe.
    waiting_for_probe: Option<Command>,
    failed_logins: u32,
    stats: Stats,
    /// Size of the message being fetched, for the statistics.
    pending_fetch: Option<(FetchKind, u64)>,
}

const LOGIN_USER_PROMPT: &str = "VXNlcm5hbWU6"; // base64 "Username:"
const LOGIN_PASSWORD_PROMPT: &str = "UGFzc3dvcmQ6"; // base64 "Password:"

impl Session {
    pub fn new(config: SessionConfig, connection: Connection) -> Self {
        Session {
            config,
            connection,
            state: State::Authorization { user: None },
            sasl: None,
            backend_mechanisms: None,
            waiting_for_probe: None,
            failed_logins: 0,
            stats: Stats::default(),
            pending_fetch: None,
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
        self.sasl.is_some()
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// Plaintext credentials are acceptable on this connection.
    fn plaintext_ok(&self) -> bool {
        self.connection.tls || self.connection.loopback || self.config.allow_plaintext_auth
    }

    fn plaintext_refused(&self) -> Reply {
        if self.config.stls_available && !self.connection.tls {
            Reply::err(
                "Plaintext authentication is disabled on unencrypted connections: use STLS first",
            )
        } else {
            Reply::err(
                "Plaintext authentication is disabled on unencrypted connections: connect with TLS",
            )
        }
    }

    pub fn handle_line(&mut self, line: Line) -> Step {
        let line = match line {
            Line::Complete(line) => line,
            Line::TooLong => {
                let text = if self.sasl.take().is_some() {
                    "SASL response too long, AUTH cancelled"
                } else {
                    "Line too long"
                };
                return respond(Reply::err(text));
            }
        };
        if let Some(sasl) = self.sasl.take() {
            return self.sasl_response(sasl, &line);
        }
        // Only AUTH lines may exceed the RFC 2449 limit: they carry tokens.
        if line.len() + 2 > MAX_COMMAND_LINE
            && !line
                .get(..5)
                .is_some_and(|p| p.eq_ignore_ascii_case(b"AUTH "))
        {
            return respond(Reply::err("Line too long"));
        }
        match parse(&line) {
            Ok(cmd) => self.handle(cmd),
            // SPEC: NUL in a credential is an authentication error.
            Err(e @ ParseError::Nul) if is_credential_line(&line) => {
                respond(Reply::err_code(RespCode::Auth, e.message()))
            }
            Err(e) => respond(Reply::err(e.message())),
        }
    }

    pub fn handle(&mut self, cmd: Command) -> Step {
        let authorization = matches!(self.state, State::Authorization { .. });
        // CAPA and AUTH list the backend's OAuth mechanisms: learn them first.
        let needs_probe = match &cmd {
            Command::Capa => authorization && self.plaintext_ok(),
            Command::Auth(None) => authorization && self.plaintext_ok(),
            Command::Auth(Some((name, _))) => {
                authorization
                    && self.plaintext_ok()
                    && Mechanism::from_name(name).is_some_and(Mechanism::needs_backend)
            }
            _ => false,
        };
        if needs_probe && self.backend_mechanisms.is_none() {
            self.waiting_for_probe = Some(cmd);
            return Step::Backend(Request::Probe);
        }
        if let Command::Capa = cmd {
            return respond(self.capa());
        }
        match &mut self.state {
            State::Authorization { .. } => self.authorization(cmd),
            State::Transaction(drop) => {
                transaction(&self.config, drop, cmd, &mut self.pending_fetch)
            }
            State::Closed => Step::Respond(Response::last(Reply::err("Session is closed"))),
        }
    }

    fn authorization(&mut self, cmd: Command) -> Step {
        match cmd {
            Command::User(_) | Command::Pass(_) | Command::Auth(Some(_))
                if !self.plaintext_ok() =>
            {
                respond(self.plaintext_refused())
            }
            Command::User(name) => {
                self.state = State::Authorization { user: Some(name) };
                respond(Reply::ok("Send PASS"))
            }
            Command::Pass(password) => {
                let State::Authorization { user } = &mut self.state else {
                    return respond(Reply::err("Not in AUTHORIZATION state"));
                };
                match user.take() {
                    Some(user) => Step::Backend(Request::OpenMaildrop {
                        user: user.clone(),
                        credentials: Credentials::Password {
                            login: user,
                            authzid: None,
                            password,
                        },
                    }),
                    None => respond(Reply::err("Send USER first")),
                }
            }
            Command::Stls if self.connection.tls => respond(Reply::err("TLS is already active")),
            Command::Stls if !self.config.stls_available => {
                respond(Reply::err("STLS is not available on this server"))
            }
            Command::Stls => {
                self.state = State::Authorization { user: None };
                Step::StartTls(Reply::ok("Begin TLS negotiation"))
            }
            Command::Auth(None) => {
                let names = self
                    .mechanisms()
                    .iter()
                    .map(|m| m.name().as_bytes().to_vec())
                    .collect();
                respond(Reply::MultiLine("Mechanisms follow".into(), names))
            }
            Command::Auth(Some((name, initial))) => {
                let Some(mechanism) =
                    Mechanism::from_name(&name).filter(|m| self.mechanisms().contains(m))
                else {
                    return respond(Reply::err(format!(
                        "Unsupported authentication mechanism {name}"
                    )));
                };
                let sasl = match mechanism {
                    Mechanism::Plain => Sasl::Plain,
                    Mechanism::Login => Sasl::LoginUser,
                    m => Sasl::Token(m),
                };
                match initial {
                    Some(initial) => self.sasl_response(sasl, &initial),
                    None => {
                        let prompt = if matches!(sasl, Sasl::LoginUser) {
                            LOGIN_USER_PROMPT
                        } else {
                            ""
                        };
                        self.sasl = Some(sasl);
                        respond(Reply::Continuation(prompt.into()))
                    }
                }
            }
            Command::Quit => {
                self.state = State::Closed;
                Step::Respond(Response::last(Reply::ok("Logging out")))
            }
            _ => respond(Reply::err("Not logged in: authenticate first")),
        }
    }

    /// Mechanisms offered now: PLAIN and LOGIN, and the backend's OAuth ones.
    fn mechanisms(&self) -> Vec<Mechanism> {
        if !self.plaintext_ok() {
            return Vec::new();
        }
        let mut list = vec![Mechanism::Plain, Mechanism::Login];
        list.extend(self.backend_mechanisms.iter().flatten().copied());
        list
    }

    fn sasl_response(&mut self, sasl: Sasl, line: &[u8]) -> Step {
        if line == b"*" {
            return respond(Reply::err("AUTH cancelled"));
        }
        let decoded = if line == b"=" {
            Ok(Vec::new())
        } else {
            BASE64.decode(line)
        };
        let Ok(decoded) = decoded else {
            return respond(Reply::err(
                "Invalid base64 in SASL response, AUTH cancelled",
            ));
        };
        let decoded = Secret::new(decoded);
        match sasl {
            Sasl::Plain => {
                let parts: Vec<&[u8]> = decoded.expose().split(|&b| b == 0).collect();
                let [authzid, login, password] = parts.as_slice() else {
                    return respond(Reply::err("Malformed PLAIN response, AUTH cancelled"));
                };
                if login.is_empty() {
                    return respond(Reply::err_code(RespCode::Auth, "Empty user name"));
                }
                let authzid = (!authzid.is_empty() && authzid != login).then(|| authzid.to_vec());
                Step::Backend(Request::OpenMaildrop {
                    user: authzid.clone().unwrap_or_else(|| login.to_vec()),
                    credentials: Credentials::Password {
                        login: login.to_vec(),
                        authzid,
                        password: Secret::new(password.to_vec()),
                    },
                })
            }
            Sasl::LoginUser => {
                self.sasl = Some(Sasl::LoginPassword(decoded.expose().to_vec()));
                respond(Reply::Continuation(LOGIN_PASSWORD_PROMPT.into()))
            }
            Sasl::LoginPassword(user) => Step::Backend(Request::OpenMaildrop {
                user: user.clone(),
                credentials: Credentials::Password {
                    login: user,
                    authzid: None,
                    password: decoded,
                },
            }),
            Sasl::Token(mechanism) => match token_user(mechanism, decoded.expose()) {
                Some(user) => Step::Backend(Request::OpenMaildrop {
                    user,
                    credentials: Credentials::Token {
                        mechanism,
                        response: decoded,
                    },
                }),
                None => respond(Reply::err_code(
                    RespCode::Auth,
                    "The token names no user, AUTH cancelled",
                )),
            },
        }
    }

    /// Reports the backend's SASL capabilities (empty if it could not be
    /// reached: the login will report that) and runs the waiting command.
    pub fn on_probe(&mut self, backend_capabilities: &[String]) -> Step {
        let list = [Mechanism::XOAuth2, Mechanism::OAuthBearer]
            .into_iter()
            .filter(|m| {
                backend_capabilities
                    .iter()
                    .any(|c| c.strip_prefix("AUTH=") == Some(m.name()))
            })
            .collect();
        self.backend_mechanisms = Some(list);
        match self.waiting_for_probe.take() {
            Some(cmd) => self.handle(cmd),
            None => respond(Reply::err("Nothing to do")),
        }
    }

    /// The TLS handshake after STLS succeeded.
    pub fn on_tls_started(&mut self) {
        self.connection.tls = true;
    }

    pub fn on_open(&mut self, user: &[u8], outcome: OpenOutcome) -> Response {
        match outcome {
            OpenOutcome::Opened(drop) => {
                let (n, size) = drop.stat();
                self.stats.user = Some(String::from_utf8_lossy(user).into_owned());
                self.state = State::Transaction(drop);
                Response::send(Reply::ok(format!(
                    "Logged in, {n} messages ({size} octets)"
                )))
            }
            OpenOutcome::BadCredentials => {
                self.failed_logins += 1;
                let close = self.failed_logins >= self.config.max_login_failures;
                if close {
                    self.state = State::Closed;
                }
                let text = if close {
                    "Authentication failed; too many failures, closing"
                } else {
                    "Authentication failed"
                };
                Response {
                    reply: Reply::err_code(RespCode::Auth, text),
                    delay: self.config.login_failure_delay,
                    close,
                }
            }
            OpenOutcome::InUse => {
                self.state = State::Closed;
                Response::last(Reply::err_code(
                    RespCode::InUse,
                    "Mailbox is locked by another POP3 session, try again later",
                ))
            }
            OpenOutcome::Unavailable(why) => {
                self.state = State::Closed;
                Response::last(Reply::err_code(
                    RespCode::SysTemp,
                    format!("{why}, try again later"),
                ))
            }
            OpenOutcome::Permanent(why) => {
                self.state = State::Closed;
                Response::last(Reply::err_code(RespCode::SysPerm, why))
            }
        }
    }

    /// Reports a fetch. `None` when the reply is already complete on the wire.
    pub fn on_fetch(&mut self, outcome: FetchOutcome) -> Option<Response> {
        let pending = self.pending_fetch.take();
        match outcome {
            FetchOutcome::Sent => {
                if let Some((FetchKind::Retr, size)) = pending {
                    self.stats.retrieved += 1;
                    self.stats.retrieved_bytes = self.stats.retrieved_bytes.saturating_add(size);
                }
                None
            }
            FetchOutcome::Gone => Some(Response::send(Reply::err(
                "Message was removed by another client meanwhile",
            ))),
            FetchOutcome::Failed { started } => {
                self.state = State::Closed;
                if started {
                    // The reply was cut off: closing without the final `.`
                    // is the only way to tell the client it is incomplete.
                    None
                } else {
                    Some(Response::last(Reply::err_code(
                        RespCode::SysTemp,
                        "Backend failed, try again later",
                    )))
                }
            }
        }
    }

    /// Reports the expunge run for QUIT.
    pub fn on_commit(&mut self, result: Result<CommitOutcome, String>) -> Response {
        let State::Transaction(drop) = &self.state else {
            return Response::last(Reply::err("Session is closed"));
        };
        let (deleted, deleted_bytes) = drop.deleted_stat();
        self.state = State::Closed;
        match result {
            Ok(CommitOutcome::Expunged) => {
                self.stats.deleted = deleted as u64;
                self.stats.deleted_bytes = deleted_bytes;
                Response::last(Reply::ok(format!(
                    "Logging out, {deleted} messages deleted"
                )))
            }
            Ok(CommitOutcome::LeftFlagged) => Response::last(Reply::ok(format!(
                "Logging out, {deleted} messages flagged \\Deleted: the mail server removes them at its next expunge"
            ))),
            Err(why) => Response::last(Reply::err_code(
                RespCode::SysTemp,
                format!("{why}; no message was deleted, try again later"),
            )),
        }
    }

    fn capa(&self) -> Reply {
        let mut lines: Vec<Vec<u8>> = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
        if matches!(self.state, State::Authorization { .. }) {
            if self.plaintext_ok() {
                lines.push(b"USER".to_vec());
                let names: Vec<&str> = self.mechanisms().iter().map(|m| m.name()).collect();
                lines.push(format!("SASL {}", names.join(" ")).into_bytes());
            }
            if self.config.stls_available && !self.connection.tls {
                lines.push(b"STLS".to_vec());
            }
        }
        if let Some(imp) = &self.config.implementation {
            lines.push(format!("IMPLEMENTATION {imp}").into_bytes());
        }
        Reply::MultiLine("Capability list follows".into(), lines)
    }
}

/// The user an OAuth SASL response is for: `user=` of XOAUTH2, `a=` of the
/// OAUTHBEARER GS2 header (RFC 7628 section 3.1, `=2C` and `=3D` decoded).
fn token_user(mechanism: Mechanism, response: &[u8]) -> Option<Vec<u8>> {
    let user = match mechanism {
        Mechanism::XOAuth2 => response
            .split(|&b| b == 1)
            .find_map(|kv| kv.strip_prefix(b"user="))?
            .to_vec(),
        Mechanism::OAuthBearer => {
            let header = response.split(|&b| b == 1).next()?;
            let authzid = header
                .split(|&b| b == b',')
                .find_map(|f| f.strip_prefix(b"a="))?;
            let text = String::from_utf8(authzid.to_vec()).ok()?;
            text.replace("=2C", ",").replace("=3D", "=").into_bytes()
        }
        Mechanism::Plain | Mechanism::Login => return None,
    };
    (!user.is_empty()).then_some(user)
}

fn is_credential_line(line: &[u8]) -> bool {
    line.get(..5)
        .is_some_and(|p| p.eq_ignore_ascii_case(b"USER ") || p.eq_ignore_ascii_case(b"PASS "))
}

fn respond(reply: Reply) -> Step {
    Step::Respond(Response::send(reply))
}

fn transaction(
    config: &SessionConfig,
    drop: &mut Maildrop,
    cmd: Command,
    pending_fetch: &mut Option<(FetchKind, u64)>,
) -> Step {
    let reply = match cmd {
        Command::Stat => {
            let (n, size) = drop.stat();
            Reply::ok(format!("{n} {size}"))
        }
        Command::List(None) => {
            let (n, size) = drop.stat();
            let lines = drop
                .live()
                .map(|(num, m)| format!("{num} {}", m.size).into_bytes())
                .collect();
            Reply::MultiLine(format!("{n} messages ({size} octets)"), lines)
        }
        Command::List(Some(n)) => match drop.get(n) {
            Ok(m) => Reply::ok(format!("{n} {}", m.size)),
            Err(e) => Reply::err(e.message()),
        },
        Command::Uidl(None) => {
            let lines = drop
                .live()
                .map(|(num, m)| {
                    format!("{num} {}", drop.uidl(&m, &config.uidl_format).0).into_bytes()
                })
                .collect();
            Reply::MultiLine(String::new(), lines)
        }
        Command::Uidl(Some(n)) => match drop.get(n) {
            Ok(m) => Reply::ok(format!("{n} {}", drop.uidl(&m, &config.uidl_format).0)),
            Err(e) => Reply::err(e.message()),
        },
        Command::Retr(n) => match drop.get(n) {
            Ok(m) => {
                *pending_fetch = Some((FetchKind::Retr, m.size));
                return Step::Backend(Request::Fetch(FetchRequest {
                    folder: m.folder,
                    uid_validity: drop.uid_validity(m.folder),
                    uid: m.uid,
                    size: m.size,
                    status: format!("{} octets", m.size),
                    kind: FetchKind::Retr,
                    mark_seen: config.mark_seen && !config.read_only,
                }));
            }
            Err(e) => Reply::err(e.message()),
        },
        Command::Top(n, lines) => match drop.get(n) {
            Ok(m) => {
                *pending_fetch = Some((FetchKind::Top(lines), m.size));
                return Step::Backend(Request::Fetch(FetchRequest {
                    folder: m.folder,
                    uid_validity: drop.uid_validity(m.folder),
                    uid: m.uid,
                    size: m.size,
                    status: "Top of message follows".into(),
                    kind: FetchKind::Top(lines),
                    mark_seen: false,
                }));
            }
            Err(e) => Reply::err(e.message()),
        },
        Command::Dele(_) if config.read_only => Reply::err_code(
            RespCode::SysPerm,
            "This server is configured read-only: DELE is not possible",
        ),
        Command::Dele(n) => match drop.mark_deleted(n) {
            Ok(_) => Reply::ok(format!("Message {n} deleted")),
            Err(e) => Reply::err(e.message()),
        },
        Command::Noop => Reply::ok(""),
        Command::Rset => {
            drop.reset();
            let (n, size) = drop.stat();
            Reply::ok(format!("{n} messages ({size} octets)"))
        }
        Command::Quit => {
            return Step::Backend(Request::Commit {
                deletions: drop.deleted_by_folder(),
            });
        }
        Command::User(_) | Command::Pass(_) | Command::Auth(_) => Reply::err("Already logged in"),
        Command::Stls => Reply::err("STLS is only allowed before login"),
        Command::Capa => Reply::err("CAPA is handled before the state"),
    };
    respond(reply)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maildrop::BackendMessage;

    fn config() -> SessionConfig {
        SessionConfig {
            uidl_format: UidlFormat::dovecot(),
            login_failure_delay: Duration::from_secs(2),
            max_login_failures: 3,
            read_only: false,
            mark_seen: true,
            implementation: None,
            allow_plaintext_auth: false,
            stls_available: true,
        }
    }

    const LOCAL: Connection = Connection {
        tls: false,
        loopback: true,
    };
    const REMOTE: Connection = Connection {
        tls: false,
        loopback: false,
    };

    fn wire(reply: &Reply) -> String {
        let mut v = Vec::new();
        reply.encode(&mut v);
        String::from_utf8_lossy(&v).into_owned()
    }

    /// Feeds one command line; expects a reply (not backend work).
    fn say(s: &mut Session, line: &str) -> String {
        match s.handle_line(Line::Complete(line.as_bytes().to_vec())) {
            Step::Respond(r) => wire(&r.reply),
            Step::Backend(Request::Probe) => match s.on_probe(&[]) {
                Step::Respond(r) => wire(&r.reply),
                other => panic!("unexpected step after probe {other:?}"),
            },
            other => panic!("unexpected step {other:?}"),
        }
    }

    fn logged_in() -> Session {
        let mut s = Session::new(config(), LOCAL);
        assert_eq!(say(&mut s, "USER alice"), "+OK Send PASS\r\n");
        let Step::Backend(Request::OpenMaildrop {
            user,
            credentials:
                Credentials::Password {
                    password,
                    authzid: None,
                    ..
                },
        }) = s.handle_line(Line::Complete(b"PASS secret".to_vec()))
        else {
            panic!("PASS should open the maildrop");
        };
        assert_eq!(password.expose(), b"secret");
        let drop = Maildrop::new(vec![FolderSnapshot {
            uid_validity: 0x5f3c2a10,
            messages: vec![
                BackendMessage { uid: 1, size: 120 },
                BackendMessage { uid: 5, size: 300 },
            ],
        }]);
        let r = s.on_open(&user, OpenOutcome::Opened(drop));
        assert_eq!(wire(&r.reply), "+OK Logged in, 2 messages (420 octets)\r\n");
        s
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
    fn quit_commits_exactly_the_marked_uids() {
        let mut s = logged_in();
        say(&mut s, "DELE 2");
        let Step::Backend(Request::Commit { deletions }) =
            s.handle_line(Line::Complete(b"QUIT".to_vec()))
        else {
            panic!("QUIT should commit");
        };
        assert_eq!(
            deletions,
            vec![FolderDeletions {
                folder: 0,
                uid_validity: 0x5f3c2a10,
                uids: vec![5]
            }]
        );
        let r = s.on_commit(Ok(CommitOutcome::Expunged));
        assert!(r.close);
        assert_eq!(wire(&r.reply), "+OK Logging out, 1 messages deleted\r\n");
        assert_eq!(s.stats().deleted, 1);
        assert_eq!(s.stats().deleted_bytes, 300);
    }

    #[test]
    fn failed_commit_is_sys_temp() {
        let mut s = logged_in();
        say(&mut s, "DELE 2");
        let _ = s.handle_line(Line::Complete(b"QUIT".to_vec()));
        let r = s.on_commit(Err("Backend failed".into()));
        assert!(r.close);
        assert!(wire(&r.reply).starts_with("-ERR [SYS/TEMP] Backend failed"));
        assert_eq!(s.stats().deleted, 0);
    }

    #[test]
    fn retr_asks_for_a_fetch_with_the_snapshot_size() {
        let mut s = logged_in();
        match s.handle_line(Line::Complete(b"RETR 2".to_vec())) {
            Step::Backend(Request::Fetch(FetchRequest {
                uid,
                status,
                kind,
                mark_seen,
                ..
            })) => {
                assert_eq!(
                    (uid, status.as_str(), kind, mark_seen),
                    (5, "300 octets", FetchKind::Retr, true)
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(s.on_fetch(FetchOutcome::Sent).is_none());
        assert_eq!(s.stats().retrieved, 1);
        match s.handle_line(Line::Complete(b"TOP 1 0".to_vec())) {
            Step::Backend(Request::Fetch(FetchRequest {
                uid,
                kind,
                mark_seen,
                ..
            })) => {
                assert_eq!((uid, kind, mark_seen), (1, FetchKind::Top(0), false));
            }
            other => panic!("{other:?}"),
        }
        let r = s.on_fetch(FetchOutcome::Gone).expect("a reply");
        assert!(wire(&r.reply).starts_with("-ERR"));
        assert!(!r.close);
    }

    #[test]
    fn failed_fetch_after_start_closes_without_reply() {
        let mut s = logged_in();
        let _ = s.handle_line(Line::Complete(b"RETR 1".to_vec()));
        assert!(s.on_fetch(FetchOutcome::Failed { started: true }).is_none());
        assert!(s.is_closed());
    }

    #[test]
    fn failed_logins_are_delayed_and_capped() {
        let mut s = Session::new(config(), LOCAL);
        for round in 1..=3 {
            say(&mut s, "USER alice");
            let Step::Backend(Request::OpenMaildrop { user, .. }) =
                s.handle_line(Line::Complete(b"PASS bad".to_vec()))
            else {
                panic!("PASS should go to the backend");
            };
            let r = s.on_open(&user, OpenOutcome::BadCredentials);
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
        say(&mut s, "USER a");
        let Step::Backend(Request::OpenMaildrop { user, .. }) =
            s.handle_line(Line::Complete(b"PASS x".to_vec()))
        else {
            panic!();
        };
        let _ = s.on_open(&user, OpenOutcome::BadCredentials);
        assert_eq!(say(&mut s, "PASS x"), "-ERR Send USER first\r\n");
    }

    #[test]
    fn in_use_and_backend_failures_close_with_codes() {
        let mut s = Session::new(config(), LOCAL);
        let r = s.on_open(b"a", OpenOutcome::InUse);
        assert!(r.close && wire(&r.reply).starts_with("-ERR [IN-USE] "));
        let mut s = Session::new(config(), LOCAL);
        let r = s.on_open(b"a", OpenOutcome::Unavailable("Backend unreachable".into()));
        assert!(r.close && wire(&r.reply).starts_with("-ERR [SYS/TEMP] Backend unreachable"));
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
    fn read_only_refuses_dele() {
        let mut s = Session::new(
            SessionConfig {
                read_only: true,
                ..config()
            },
            LOCAL,
        );
        say(&mut s, "USER a");
        let _ = s.handle_line(Line::Complete(b"PASS b".to_vec()));
        let _ = s.on_open(
            b"a",
            OpenOutcome::Opened(Maildrop::new(vec![FolderSnapshot {
                uid_validity: 1,
                messages: vec![BackendMessage { uid: 1, size: 1 }],
            }])),
        );
        assert!(say(&mut s, "DELE 1").starts_with("-ERR [SYS/PERM]"));
    }

    #[test]
    fn too_long_and_nul_lines_are_errors_that_keep_the_session() {
        let mut s = logged_in();
        match s.handle_line(Line::TooLong) {
            Step::Respond(r) => assert!(wire(&r.reply).starts_with("-ERR") && !r.close),
            other => panic!("{other:?}"),
        }
        assert!(say(&mut s, "ST\0AT").starts_with("-ERR"));
        assert!(say(&mut s, "PASS a\0b").starts_with("-ERR [AUTH]"));
        assert_eq!(say(&mut s, "STAT"), "+OK 2 420\r\n");
    }

    /// Feeds a line and returns the backend request it leads to.
    fn request(s: &mut Session, line: &str) -> Request {
        match s.handle_line(Line::Complete(line.as_bytes().to_vec())) {
            Step::Backend(Request::Probe) => match s.on_probe(&["AUTH=XOAUTH2".to_string()]) {
                Step::Backend(r) => r,
                other => panic!("expected a backend request after the probe, got {other:?}"),
            },
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
        assert!(say(&mut s, "AUTH PLAIN AGEAYg==").starts_with("-ERR Plaintext"));
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
        match s.handle_line(Line::Complete(b"STLS".to_vec())) {
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
    fn auth_plain_with_initial_response_and_authzid() {
        let mut s = Session::new(config(), LOCAL);
        // "user\0master\0pw": authorize as user, authenticate as master.
        match request(&mut s, "AUTH PLAIN dXNlcgBtYXN0ZXIAcHc=") {
            Request::OpenMaildrop {
                user,
                credentials:
                    Credentials::Password {
                        login,
                        authzid,
                        password,
                    },
            } => {
                assert_eq!(user, b"user");
                assert_eq!(login, b"master");
                assert_eq!(authzid.as_deref(), Some(&b"user"[..]));
                assert_eq!(password.expose(), b"pw");
            }
            other => panic!("{other:?}"),
        }
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
            Request::OpenMaildrop {
                user,
                credentials: Credentials::Password { authzid: None, .. },
            } => {
                assert_eq!(user, b"alice")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn auth_login_asks_for_user_then_password() {
        let mut s = Session::new(config(), LOCAL);
        assert_eq!(say(&mut s, "AUTH LOGIN"), "+ VXNlcm5hbWU6\r\n");
        assert_eq!(say(&mut s, "YWxpY2U="), "+ UGFzc3dvcmQ6\r\n");
        match request(&mut s, "c2VjcmV0") {
            Request::OpenMaildrop {
                user,
                credentials:
                    Credentials::Password {
                        login, password, ..
                    },
            } => {
                assert_eq!(
                    (user.as_slice(), login.as_slice(), password.expose()),
                    (&b"alice"[..], &b"alice"[..], &b"secret"[..])
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn oauth_mechanisms_only_when_the_backend_has_them() {
        let mut s = Session::new(config(), LOCAL);
        match s.handle_line(Line::Complete(b"CAPA".to_vec())) {
            Step::Backend(Request::Probe) => {}
            other => panic!("CAPA should probe the backend first: {other:?}"),
        }
        let Step::Respond(r) = s.on_probe(&["IMAP4REV1".into(), "AUTH=OAUTHBEARER".into()]) else {
            panic!("CAPA reply expected");
        };
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
    fn xoauth2_one_line_and_two_step_forms_name_the_user() {
        // user=alice@example.org^Aauth=Bearer tok^A^A
        let token = BASE64.encode(b"user=alice@example.org\x01auth=Bearer tok\x01\x01");
        let mut s = Session::new(config(), LOCAL);
        match request(&mut s, &format!("AUTH XOAUTH2 {token}")) {
            Request::OpenMaildrop {
                user,
                credentials:
                    Credentials::Token {
                        mechanism,
                        response,
                    },
            } => {
                assert_eq!(
                    (user.as_slice(), mechanism),
                    (&b"alice@example.org"[..], Mechanism::XOAuth2)
                );
                assert!(response.expose().starts_with(b"user=alice"));
            }
            other => panic!("{other:?}"),
        }
        let mut s = Session::new(config(), LOCAL);
        let _ = s.handle_line(Line::Complete(b"AUTH".to_vec()));
        let _ = s.on_probe(&["AUTH=XOAUTH2".to_string()]);
        assert_eq!(say(&mut s, "AUTH XOAUTH2"), "+ \r\n");
        let long = format!("{token}{}", "");
        assert!(matches!(
            request(&mut s, &long),
            Request::OpenMaildrop { .. }
        ));
    }

    #[test]
    fn oauthbearer_user_comes_from_the_gs2_header() {
        assert_eq!(
            token_user(
                Mechanism::OAuthBearer,
                b"n,a=bob=2Cjr@example.org,\x01auth=Bearer x\x01\x01"
            )
            .as_deref(),
            Some(&b"bob,jr@example.org"[..])
        );
        assert_eq!(
            token_user(Mechanism::OAuthBearer, b"n,,\x01auth=Bearer x\x01\x01"),
            None
        );
    }

    #[test]
    fn long_auth_lines_are_allowed_but_other_long_lines_are_not() {
        let mut s = Session::new(config(), LOCAL);
        let _ = s.handle_line(Line::Complete(b"AUTH".to_vec()));
        let _ = s.on_probe(&["AUTH=XOAUTH2".to_string()]);
        let payload = format!("user=a\x01auth=Bearer {}\x01\x01", "t".repeat(12_000));
        let line = format!("AUTH XOAUTH2 {}", BASE64.encode(payload));
        assert!(matches!(
            request(&mut s, &line),
            Request::OpenMaildrop { .. }
        ));
        assert_eq!(
            say(&mut s, &format!("NOOP {}", "x".repeat(300))),
            "-ERR Line too long\r\n"
        );
    }

    #[test]
    fn random_command_lines_in_every_state_never_panic() {
        use crate::imap::tests_support::Rng;
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
                match s.handle_line(Line::Complete(words.join(" ").into_bytes())) {
                    Step::Backend(Request::Probe) => {
                        let _ = s.on_probe(&["AUTH=XOAUTH2".to_string()]);
                    }
                    Step::Backend(Request::OpenMaildrop { user, .. }) => {
                        let _ = s.on_open(&user, OpenOutcome::BadCredentials);
                    }
                    Step::Backend(Request::Fetch(_)) => {
                        let _ = s.on_fetch(FetchOutcome::Sent);
                    }
                    Step::Backend(Request::Commit { .. }) => {
                        let _ = s.on_commit(Ok(CommitOutcome::Expunged));
                    }
                    Step::StartTls(_) => s.on_tls_started(),
                    Step::Respond(_) => {}
                }
            }
        }
    }
}
