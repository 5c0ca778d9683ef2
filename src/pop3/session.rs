//! The POP3 session state machine (RFC 1939 AUTHORIZATION -> TRANSACTION ->
//! UPDATE), without I/O. It takes command lines and the outcomes of backend
//! work, and returns replies and requests for backend work. The driver does
//! the reading, writing, sleeping and IMAP.

use std::time::Duration;

use super::command::{Command, MsgNum, parse};
use super::lines::Line;
use super::reply::{Reply, RespCode};
use crate::maildrop::{Maildrop, UidlFormat};
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
    Backend(Request),
}

/// Backend work the driver must do and report back.
#[derive(Debug)]
pub enum Request {
    /// Log in, take the maildrop lock, select the folder, take the snapshot;
    /// report with `on_open`.
    OpenMaildrop { user: Vec<u8>, password: Secret },
    /// Stream a message: send `status`, then the body through the encoder
    /// for `kind`; report with `on_fetch`.
    Fetch {
        number: MsgNum,
        uid: u32,
        status: String,
        kind: FetchKind,
        mark_seen: bool,
    },
    /// Expunge these UIDs (QUIT in TRANSACTION); report with `on_commit`.
    Commit { uids: Vec<u32> },
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
    state: State,
    failed_logins: u32,
    stats: Stats,
    /// Size of the message being fetched, for the statistics.
    pending_fetch: Option<(FetchKind, u64)>,
}

impl Session {
    pub fn new(config: SessionConfig) -> Self {
        Session {
            config,
            state: State::Authorization { user: None },
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

    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    pub fn handle_line(&mut self, line: Line) -> Step {
        let line = match line {
            Line::Complete(line) => line,
            Line::TooLong => return respond(Reply::err("Line too long")),
        };
        match parse(&line) {
            Ok(cmd) => self.handle(cmd),
            Err(e) => respond(Reply::err(e.message())),
        }
    }

    pub fn handle(&mut self, cmd: Command) -> Step {
        if let Command::Capa = cmd {
            return respond(self.capa());
        }
        match &mut self.state {
            State::Authorization { user } => match cmd {
                Command::User(name) => {
                    *user = Some(name);
                    respond(Reply::ok("Send PASS"))
                }
                Command::Pass(password) => match user.take() {
                    Some(user) => Step::Backend(Request::OpenMaildrop { user, password }),
                    None => respond(Reply::err("Send USER first")),
                },
                Command::Quit => {
                    self.state = State::Closed;
                    Step::Respond(Response::last(Reply::ok("Logging out")))
                }
                _ => respond(Reply::err("Not logged in: send USER and PASS first")),
            },
            State::Transaction(drop) => {
                transaction(&self.config, drop, cmd, &mut self.pending_fetch)
            }
            State::Closed => Step::Respond(Response::last(Reply::err("Session is closed"))),
        }
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
                    self.stats.retrieved_bytes += size;
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
    pub fn on_commit(&mut self, result: Result<(), String>) -> Response {
        let State::Transaction(drop) = &self.state else {
            return Response::last(Reply::err("Session is closed"));
        };
        let (deleted, deleted_bytes) = drop.deleted_stat();
        self.state = State::Closed;
        match result {
            Ok(()) => {
                self.stats.deleted = deleted as u64;
                self.stats.deleted_bytes = deleted_bytes;
                Response::last(Reply::ok(format!(
                    "Logging out, {deleted} messages deleted"
                )))
            }
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
            lines.push(b"USER".to_vec());
        }
        if let Some(imp) = &self.config.implementation {
            lines.push(format!("IMPLEMENTATION {imp}").into_bytes());
        }
        Reply::MultiLine("Capability list follows".into(), lines)
    }
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
                    format!(
                        "{num} {}",
                        config.uidl_format.format(m.uid, drop.uid_validity()).0
                    )
                    .into_bytes()
                })
                .collect();
            Reply::MultiLine(String::new(), lines)
        }
        Command::Uidl(Some(n)) => match drop.get(n) {
            Ok(m) => Reply::ok(format!(
                "{n} {}",
                config.uidl_format.format(m.uid, drop.uid_validity()).0
            )),
            Err(e) => Reply::err(e.message()),
        },
        Command::Retr(n) => match drop.get(n) {
            Ok(m) => {
                *pending_fetch = Some((FetchKind::Retr, m.size));
                return Step::Backend(Request::Fetch {
                    number: n,
                    uid: m.uid,
                    status: format!("{} octets", m.size),
                    kind: FetchKind::Retr,
                    mark_seen: config.mark_seen && !config.read_only,
                });
            }
            Err(e) => Reply::err(e.message()),
        },
        Command::Top(n, lines) => match drop.get(n) {
            Ok(m) => {
                *pending_fetch = Some((FetchKind::Top(lines), m.size));
                return Step::Backend(Request::Fetch {
                    number: n,
                    uid: m.uid,
                    status: "Top of message follows".into(),
                    kind: FetchKind::Top(lines),
                    mark_seen: false,
                });
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
                uids: drop.deleted_uids(),
            });
        }
        Command::User(_) | Command::Pass(_) => Reply::err("Already logged in"),
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
        }
    }

    fn wire(reply: &Reply) -> String {
        let mut v = Vec::new();
        reply.encode(&mut v);
        String::from_utf8_lossy(&v).into_owned()
    }

    /// Feeds one command line; expects a reply (not backend work).
    fn say(s: &mut Session, line: &str) -> String {
        match s.handle_line(Line::Complete(line.as_bytes().to_vec())) {
            Step::Respond(r) => wire(&r.reply),
            Step::Backend(req) => panic!("unexpected backend request {req:?}"),
        }
    }

    fn logged_in() -> Session {
        let mut s = Session::new(config());
        assert_eq!(say(&mut s, "USER alice"), "+OK Send PASS\r\n");
        let Step::Backend(Request::OpenMaildrop { user, password }) =
            s.handle_line(Line::Complete(b"PASS secret".to_vec()))
        else {
            panic!("PASS should open the maildrop");
        };
        assert_eq!(password.expose(), b"secret");
        let drop = Maildrop::new(
            0x5f3c2a10,
            vec![
                BackendMessage { uid: 1, size: 120 },
                BackendMessage { uid: 5, size: 300 },
            ],
        );
        let r = s.on_open(&user, OpenOutcome::Opened(drop));
        assert_eq!(wire(&r.reply), "+OK Logged in, 2 messages (420 octets)\r\n");
        s
    }

    #[test]
    fn transaction_commands_before_login_are_refused() {
        let mut s = Session::new(config());
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
        let Step::Backend(Request::Commit { uids }) =
            s.handle_line(Line::Complete(b"QUIT".to_vec()))
        else {
            panic!("QUIT should commit");
        };
        assert_eq!(uids, vec![5]);
        let r = s.on_commit(Ok(()));
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
            Step::Backend(Request::Fetch {
                uid,
                status,
                kind,
                mark_seen,
                ..
            }) => {
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
            Step::Backend(Request::Fetch {
                uid,
                kind,
                mark_seen,
                ..
            }) => {
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
        let mut s = Session::new(config());
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
        let mut s = Session::new(config());
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
        let mut s = Session::new(config());
        let r = s.on_open(b"a", OpenOutcome::InUse);
        assert!(r.close && wire(&r.reply).starts_with("-ERR [IN-USE] "));
        let mut s = Session::new(config());
        let r = s.on_open(b"a", OpenOutcome::Unavailable("Backend unreachable".into()));
        assert!(r.close && wire(&r.reply).starts_with("-ERR [SYS/TEMP] Backend unreachable"));
    }

    #[test]
    fn capa_is_true_to_the_state() {
        let mut s = Session::new(config());
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
        let mut s = Session::new(SessionConfig {
            read_only: true,
            ..config()
        });
        say(&mut s, "USER a");
        let _ = s.handle_line(Line::Complete(b"PASS b".to_vec()));
        let _ = s.on_open(
            b"a",
            OpenOutcome::Opened(Maildrop::new(1, vec![BackendMessage { uid: 1, size: 1 }])),
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
        assert_eq!(say(&mut s, "STAT"), "+OK 2 420\r\n");
    }
}
