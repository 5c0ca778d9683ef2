//! The thin I/O loop of one session: reads client bytes, hands lines to the
//! `Session`, writes what it says, runs TLS handshakes, carries its backend
//! requests to a [`Backend`] (the IMAP one in service, a fake in the tests
//! below) and the answers back, and logs one summary line at the end. It
//! makes no protocol decisions, and what ends a session comes back to it
//! as a value: an `End`, never a flag set on the side.

use std::io::{self, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use rustls::ServerConfig;

use crate::backend::imap::ImapBackend;
use crate::backend::{Backend, LoginAnswer, Outcome, Request};
use crate::buffers;
use crate::config::Config;
use crate::limits::{CLIENT_READ_CHUNK, CLIENT_WRITE_BUFFER, MAX_SASL_LINE};
use crate::logging::printable;
use crate::pop3::auth::Connection;
use crate::pop3::command::for_log;
use crate::pop3::lines::{Line, LineReader};
use crate::pop3::reply::Reply;
use crate::pop3::session::{Response, Session, SessionConfig, Step};
use crate::preload::Preloaded;
use crate::stats::{
    self,
    event::{Event, LoginResult},
};
use crate::timeout::is_timeout;
use crate::transport::{BalancerTls, ClientConn, ClientError, ClientStream};

/// How a session ended, for the summary line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Quit,
    Timeout,
    Disconnect,
    /// Closed by us after a final `-ERR` (lock held, too many failures...).
    Refused,
    BackendError,
    TlsFailed,
    /// The cluster-wide lock was lost mid-session.
    LockLost,
}

impl End {
    pub fn name(self) -> &'static str {
        match self {
            End::Quit => "quit",
            End::Timeout => "timeout",
            End::Disconnect => "disconnect",
            End::Refused => "refused",
            End::BackendError => "backend-error",
            End::TlsFailed => "tls-failed",
            End::LockLost => "lock-lost",
        }
    }
}

/// The client went away (or stopped reading) while we wrote.
struct ClientGone(io::Error);

/// What the loop needs of the configuration.
struct Settings {
    /// The session's; `stls_available` is set here, by whether a
    /// certificate was loaded.
    session: SessionConfig,
    implicit_tls: bool,
    /// How long a whole command line (or a TLS handshake) may take.
    idle_timeout: Duration,
    /// `backend_connect_early`.
    connect_early: bool,
}

impl Settings {
    fn of(config: &Config) -> Self {
        Settings {
            session: config.session.clone(),
            implicit_tls: config.implicit_tls,
            idle_timeout: config.idle_timeout,
            connect_early: config.backend_connect_early,
        }
    }
}

struct Driver<'s, B> {
    settings: &'s Settings,
    session: Session,
    client: ClientStream,
    lines: LineReader,
    out: Vec<u8>,
    sent: u64,
    tls_config: Option<Arc<ServerConfig>>,
    backend: B,
    /// A balancer's health check (PROXY v2 LOCAL): greeting only.
    health_check: bool,
}

/// Runs one session to its end and logs its summary. `files` were read
/// for this connection (see `preload`).
pub fn serve(config: &Config, files: &Preloaded, conn: ClientConn) -> End {
    let backend = ImapBackend::new(&config.backend, files, conn.peer);
    serve_with(&Settings::of(config), files.tls.clone(), backend, conn)
}

/// `serve` with any backend.
fn serve_with<B: Backend>(
    settings: &Settings,
    tls_config: Option<Arc<ServerConfig>>,
    backend: B,
    conn: ClientConn,
) -> End {
    let started = Instant::now();
    let peer_text = conn
        .peer
        .map(|p| p.to_string())
        .unwrap_or_else(|| "unknown".into());
    // A balancer on this host relaying a client it does not name is no
    // loopback client (see `ClientConn::peer_is_client`).
    let client_known = conn.peer_is_client();
    let loopback = client_known && conn.peer.is_some_and(|p| p.ip().is_loopback());
    let health_check = conn.is_health_check();
    let balancer_tls = conn.balancer_tls().cloned();
    let proxied = conn.proxied;
    let mut driver = Driver {
        settings,
        session: Session::new(
            SessionConfig {
                stls_available: tls_config.is_some(),
                ..settings.session.clone()
            },
            Connection {
                // The balancer's TLS counts as our own: the credentials
                // crossed the untrusted network encrypted.
                tls: balancer_tls.is_some(),
                loopback,
                client: conn.peer.map(|p| p.ip()),
                client_known,
            },
        ),
        client: conn.stream,
        lines: LineReader::new(MAX_SASL_LINE),
        out: Vec::with_capacity(CLIENT_WRITE_BUFFER),
        sent: 0,
        tls_config,
        backend,
        health_check,
    };
    match &proxied {
        Some(p) => debug!("{p}"),
        None => debug!("connection from {peer_text}"),
    }
    if health_check {
        // The greeting shows the balancer that we are up; there is no
        // session (nor backend connection) behind it, so no session line.
        let end = match driver.greet() {
            Ok(()) => {
                debug!("health check from {peer_text}: greeting sent, no session");
                End::Quit
            }
            Err(end) => {
                debug!(
                    "health check from {peer_text}: no greeting (end={}), no session",
                    end.name()
                );
                end
            }
        };
        let _ = driver.flush();
        driver.client.close();
        return end;
    }
    stats::emit::send(&Event::SessionStart);
    let end = driver.run();
    let _ = driver.flush();
    let tls_version = match (driver.client.tls_version(), &balancer_tls) {
        (Some(own), _) => Some(own.to_string()),
        (None, Some(balancer)) => {
            Some(balancer.version.clone().unwrap_or_else(|| "unknown".into()))
        }
        (None, None) => None,
    };
    driver.client.close();
    driver.backend.finish();
    let stats = driver.session.stats();
    stats::emit::send(&Event::SessionEnd {
        end: end.name().into(),
        tls: tls_version,
        retrieved: stats.retrieved,
        retrieved_bytes: stats.retrieved_bytes,
        deleted: stats.deleted,
        seconds: started.elapsed().as_secs_f64(),
    });
    info!(
        "session end: user={} client={} login={} tls={} retrieved={}/{} deleted={}/{} sent={} duration={:.3}s end={}",
        stats
            .user
            .as_deref()
            .map(|u| printable(u.as_bytes()))
            .unwrap_or_else(|| "-".into()),
        peer_text,
        match (stats.logged_in, stats.login_failures) {
            (true, 0) => "ok".to_string(),
            (true, n) => format!("ok-after-{n}-failed"),
            (false, 0) if stats.user.is_some() => "incomplete".to_string(),
            (false, 0) => "none".to_string(),
            (false, n) => format!("failed-{n}"),
        },
        tls_for_log(driver.client.is_tls(), balancer_tls.as_ref()),
        stats.retrieved,
        stats.retrieved_bytes,
        stats.deleted,
        stats.deleted_bytes,
        driver.sent,
        started.elapsed().as_secs_f64(),
        end.name(),
    );
    end
}

/// A login's verdict as the statistics count it.
fn login_result(answer: &Outcome<LoginAnswer>) -> LoginResult {
    match answer {
        Ok(LoginAnswer::LoggedIn | LoginAnswer::LoggedInAs(_)) => LoginResult::Ok,
        Ok(LoginAnswer::Rejected { .. }) => LoginResult::Failed,
        // No backend for the user: the configuration says no.
        Ok(LoginAnswer::Unrouted) => LoginResult::Refused,
        Ok(LoginAnswer::Unavailable(_) | LoginAnswer::Throttled { .. }) | Err(_) => {
            LoginResult::Temporary
        }
    }
}

/// The session line's `tls=`: `yes` for our own TLS, `VERSION via
/// balancer` for a balancer's (its name is checked to be one printable
/// word, see `transport::tlv`), else `no`.
fn tls_for_log(own: bool, balancer: Option<&BalancerTls>) -> String {
    match (own, balancer) {
        (true, _) => "yes".into(),
        (false, Some(tls)) => format!("{} via balancer", tls.version.as_deref().unwrap_or("yes")),
        (false, None) => "no".into(),
    }
}

impl<B: Backend> Driver<'_, B> {
    /// The TLS handshake of implicit TLS, then the greeting.
    fn greet(&mut self) -> Result<(), End> {
        if self.settings.implicit_tls {
            self.start_tls()?;
        }
        let greeting = self.session.greeting();
        self.send(&greeting)
            .and_then(|_| self.flush())
            .map_err(|_| End::Disconnect)
    }

    fn run(&mut self) -> End {
        // The backend connection is made while the client is on its way to
        // the login (see `Backend::connect_early`); begun before our
        // greeting, it also overlaps with the TLS handshake of POP3S and
        // with the write of the greeting.
        if self.settings.connect_early {
            self.backend.connect_early();
        }
        if let Err(end) = self.greet() {
            return end;
        }
        let mut buf = vec![0u8; CLIENT_READ_CHUNK];
        // A whole command line must arrive within the idle timeout, counted
        // from when it is awaited: a client that sends a byte now and then
        // does not hold the process and its backend connection for ever.
        let mut line_deadline = Instant::now() + self.settings.idle_timeout;
        // Whether the last read brought bytes: only then can a line have
        // ended, and the next one be awaited afresh. A read that only woke
        // up to renew the lease must not restart the idle timeout.
        let mut got_bytes = true;
        loop {
            loop {
                self.lines.set_limit(self.session.line_limit());
                let Some(line) = self.lines.next_line() else {
                    break;
                };
                if log::log_enabled!(log::Level::Debug) {
                    match &line {
                        Line::Complete(l) if self.session.awaits_sasl_response() => {
                            debug!("POP3 C: <SASL response, hidden, {} bytes>", l.len());
                        }
                        Line::Complete(l) => debug!("POP3 C: {}", for_log(l)),
                        _ => debug!("POP3 C: <line over the length limit>"),
                    }
                }
                match self.step(line) {
                    Ok(None) => {}
                    Ok(Some(end)) => return end,
                    Err(ClientGone(e)) => {
                        debug!("client write failed: {e}");
                        return End::Disconnect;
                    }
                }
            }
            if self.flush().is_err() {
                return End::Disconnect;
            }
            if got_bytes && !self.lines.has_partial() {
                line_deadline = Instant::now() + self.settings.idle_timeout;
            }
            got_bytes = false;
            // A cluster lock lease is renewed while the client thinks.
            let renewal = self.backend.lease_due().filter(|&due| due < line_deadline);
            self.client
                .set_read_deadline(renewal.unwrap_or(line_deadline));
            match self.client.read(&mut buf) {
                Ok(0) => return End::Disconnect,
                Ok(n) => {
                    self.lines.push(&buf[..n]);
                    got_bytes = true;
                }
                Err(ClientError::Io(e)) if is_timeout(&e) && renewal.is_some() => {
                    if let Err(end) = self.keep_lease(false) {
                        return end;
                    }
                }
                Err(ClientError::Io(e)) if is_timeout(&e) => {
                    let _ = self.send(&Reply::err("Disconnected for inactivity"));
                    let _ = self.flush();
                    return End::Timeout;
                }
                Err(ClientError::Io(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(ClientError::UnexpectedHeader(header)) => {
                    warn!("{header}");
                    return End::Refused;
                }
                Err(ClientError::Io(e)) => {
                    debug!("client read failed: {e}");
                    return End::Disconnect;
                }
            }
        }
    }

    /// Handles one line; `Some(end)` when the session is over.
    fn step(&mut self, line: Line) -> Result<Option<End>, ClientGone> {
        let mut step = self.session.handle_line(line);
        for method in self.session.take_refused_logins() {
            stats::emit::send(&Event::Login {
                method: method.into(),
                result: LoginResult::Refused,
            });
        }
        loop {
            step = match step {
                Step::Respond(response) => return self.respond(response),
                Step::StartTls(reply) => {
                    self.send(&reply)?;
                    self.flush()?;
                    // Anything pipelined behind STLS arrived in plaintext: drop it.
                    self.lines.clear();
                    return Ok(self.start_tls().err());
                }
                Step::Backend(request) => {
                    // The client sees what is ready while the backend works.
                    self.flush()?;
                    match self.carry(request) {
                        Ok(step) => step,
                        Err(end) => return Ok(Some(end)),
                    }
                }
                Step::Write { bytes, next } => {
                    debug!("POP3 S: <message data, {} bytes>", bytes.len());
                    if self.out.is_empty() {
                        buffers::give(std::mem::replace(&mut self.out, bytes));
                    } else {
                        self.out.extend_from_slice(&bytes);
                        buffers::give(bytes);
                    }
                    match next {
                        // Asked first, so that the backend works on the next
                        // message while this one goes to the client: the
                        // request only writes a command, it waits for nothing.
                        Some(request @ Request::Prefetch(_)) => {
                            let step = match self.carry(request) {
                                Ok(step) => step,
                                Err(end) => return Ok(Some(end)),
                            };
                            self.flush()?;
                            step
                        }
                        Some(request) => {
                            self.flush()?;
                            match self.carry(request) {
                                Ok(step) => step,
                                Err(end) => return Ok(Some(end)),
                            }
                        }
                        None => {
                            if self.out.len() >= CLIENT_WRITE_BUFFER {
                                self.flush()?;
                            }
                            return Ok(None);
                        }
                    }
                }
                Step::Done => return Ok(None),
                Step::Cut => {
                    self.flush()?;
                    return Ok(Some(End::BackendError));
                }
            };
        }
    }

    /// Renews the cluster lock's lease if it is due (or `now`, before
    /// UPDATE); if it is lost, the session ends without UPDATE.
    fn keep_lease(&mut self, now: bool) -> Result<(), End> {
        let due = self
            .backend
            .lease_due()
            .is_some_and(|due| now || Instant::now() >= due);
        if !due {
            return Ok(());
        }
        let Err(lost) = self.backend.keep_lease() else {
            return Ok(());
        };
        let step = self.session.on_lock_lost(&lost.0);
        if let Step::Respond(response) = step {
            let _ = self.send(&response.reply);
        }
        let _ = self.flush();
        Err(End::LockLost)
    }

    /// Hands a request to the backend and its answer to the session: the
    /// session's next step, or, if the cluster lock was found lost first,
    /// the end of the session (its last reply is sent).
    fn carry(&mut self, request: Request) -> Result<Step, End> {
        // Between the pieces of a message too: a long download to a slow
        // client must not outlive the lease.
        let before_update = matches!(request, Request::Expunge(_));
        self.keep_lease(before_update)?;
        let (backend, session) = (&mut self.backend, &mut self.session);
        Ok(match request {
            Request::Capabilities => session.on_capabilities(backend.capabilities()),
            Request::Login(credentials) => {
                let answer = backend.login(credentials);
                if let Some(method) = session.login_method() {
                    stats::emit::send(&Event::Login {
                        method: method.into(),
                        result: login_result(&answer),
                    });
                }
                session.on_login(answer)
            }
            Request::Lock { user } => session.on_lock(backend.lock(&user)),
            Request::OpenFolder { folder } => session.on_folder(backend.open_folder(folder)),
            Request::Piece(piece) => session.on_piece(backend.piece(piece)),
            Request::Prefetch(next) => session.on_prefetch(backend.prefetch(next)),
            Request::Expunge(deletions) => session.on_expunge(backend.expunge(&deletions)),
            Request::UidlFacts(facts) => session.on_uidl_facts(backend.uidl_facts(&facts)),
        })
    }

    /// The TLS handshake (implicit TLS or after STLS); the session learns
    /// that the connection is now encrypted.
    fn start_tls(&mut self) -> Result<(), End> {
        let Some(config) = self.tls_config.clone() else {
            error!("TLS requested but no usable certificate: check tls_cert and tls_key");
            return Err(End::TlsFailed);
        };
        self.client
            .set_read_deadline(Instant::now() + self.settings.idle_timeout);
        match self.client.start_tls(config) {
            Ok(()) => {
                self.session.on_tls_started();
                Ok(())
            }
            Err(ClientError::Io(e)) if is_timeout(&e) => Err(End::Timeout),
            // Instead of the ClientHello of implicit TLS.
            Err(ClientError::UnexpectedHeader(header)) => {
                warn!("{header}");
                Err(End::Refused)
            }
            Err(ClientError::Io(e)) => {
                // A TCP check closes right after its LOCAL header, every
                // few seconds: no line at info for each.
                if self.health_check {
                    debug!("TLS handshake with the health check failed: {e}");
                } else {
                    info!("TLS handshake with client failed: {e}");
                }
                Err(End::TlsFailed)
            }
        }
    }

    fn respond(&mut self, response: Response) -> Result<Option<End>, ClientGone> {
        if !response.delay.is_zero() {
            self.flush()?;
            std::thread::sleep(response.delay);
        }
        if response.close {
            // Before the last reply: a client that reconnects the moment it
            // reads QUIT's +OK must find its maildrop free, here and on
            // every other front-end.
            self.backend.release_lock();
        }
        self.send(&response.reply)?;
        if !response.close {
            return Ok(None);
        }
        self.flush()?;
        Ok(Some(if response.reply.is_ok() {
            End::Quit
        } else if self.backend.failed() {
            End::BackendError
        } else {
            End::Refused
        }))
    }

    fn send(&mut self, reply: &Reply) -> Result<(), ClientGone> {
        debug!("POP3 S: {}", reply.for_log());
        reply.encode(&mut self.out);
        if self.out.len() >= CLIENT_WRITE_BUFFER {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), ClientGone> {
        if !self.out.is_empty() {
            self.client.write_all(&self.out).map_err(ClientGone)?;
            self.sent += self.out.len() as u64;
            self.out.clear();
        }
        self.client.flush().map_err(ClientGone)
    }
}

/// Transcripts of whole sessions over a socketpair, against a fake
/// backend that says what it was asked: client lines in, exact server
/// lines out.
#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read};
    use std::net::SocketAddr;
    use std::os::unix::net::UnixStream;
    use std::sync::Mutex;
    use std::thread::JoinHandle;

    use super::*;
    use crate::backend::{
        Credentials, ExpungeAnswer, FactsAnswer, FactsRequest, Failure, FailureKind, LeaseLost,
        LockAnswer, LoginAnswer, Outcome, PieceAnswer, PieceRequest, PrefetchRequest,
    };
    use crate::maildrop::{BackendMessage, FolderDeletions, FolderSnapshot, UidlFormat};
    use crate::transport::Proxied;
    use crate::transport::proxy::Source;

    /// No test waits longer than this for a line.
    const PATIENCE: Duration = Duration::from_secs(10);

    /// What happened, in order: bytes that reached the client's socket and
    /// calls the backend got.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Event {
        Wrote(Vec<u8>),
        Asked(String),
    }

    type Log = Arc<Mutex<Vec<Event>>>;

    fn note(log: &Log, event: Event) {
        log.lock().expect("log").push(event);
    }

    const MESSAGES: [&[u8]; 2] = [
        b"Subject: one\r\n\r\nHello\r\n",
        b"Subject: two\r\n\r\n.dot\r\n",
    ];

    /// INBOX with `MESSAGES` (UIDs 1 and 2), and what to do differently.
    #[derive(Default)]
    struct Fake {
        log: Log,
        /// OPEN of the folder is refused.
        refuse_folder: bool,
        /// After the folder is open, the lease is due in this long and
        /// cannot be renewed.
        lease_lost_after: Option<Duration>,
        lease_due: Option<Instant>,
        /// The client hangs up while the first piece is fetched.
        hangs_up_mid_retr: bool,
        /// The client's end of the connection, for that.
        hang_up: Option<UnixStream>,
    }

    impl Fake {
        fn asked(&self, call: String) {
            note(&self.log, Event::Asked(call));
        }
    }

    impl Backend for Fake {
        fn connect_early(&mut self) {
            self.asked("connect_early".into());
        }

        fn capabilities(&mut self) -> Outcome<Vec<String>> {
            self.asked("capabilities".into());
            Ok(vec!["IMAP4rev1".into()])
        }

        fn login(&mut self, credentials: Credentials) -> Outcome<LoginAnswer> {
            let user = credentials.maildrop_user().unwrap_or_default();
            self.asked(format!("login {}", String::from_utf8_lossy(&user)));
            Ok(LoginAnswer::LoggedIn)
        }

        fn lock(&mut self, user: &[u8]) -> Outcome<LockAnswer> {
            self.asked(format!("lock {}", String::from_utf8_lossy(user)));
            Ok(LockAnswer::Locked)
        }

        fn open_folder(&mut self, folder: usize) -> Outcome<FolderSnapshot> {
            self.asked(format!("open_folder {folder}"));
            if self.refuse_folder {
                return Err(Failure::new(
                    FailureKind::Refused,
                    "[NONEXISTENT] Unknown Mailbox: INBOX",
                ));
            }
            self.lease_due = self.lease_lost_after.map(|after| Instant::now() + after);
            let messages = (1..)
                .zip(MESSAGES)
                .map(|(uid, m)| BackendMessage {
                    uid,
                    size: m.len() as u64,
                })
                .collect();
            Ok(FolderSnapshot {
                uid_validity: 7,
                messages,
            })
        }

        fn piece(&mut self, piece: PieceRequest) -> Outcome<PieceAnswer> {
            self.asked(format!("piece {}@{}", piece.uid, piece.offset));
            if let Some(client) = self.hang_up.take() {
                let _ = client.shutdown(std::net::Shutdown::Both);
            }
            let message = MESSAGES[piece.uid as usize - 1];
            let start = (piece.offset as usize).min(message.len());
            let end = (start + piece.len as usize).min(message.len());
            Ok(PieceAnswer::Bytes(message[start..end].to_vec()))
        }

        fn prefetch(&mut self, next: PrefetchRequest) -> Outcome<()> {
            self.asked(format!("prefetch {:?}", next.uids));
            Ok(())
        }

        fn expunge(&mut self, deletions: &FolderDeletions) -> Outcome<ExpungeAnswer> {
            self.asked(format!("expunge {:?}", deletions.uids));
            Ok(ExpungeAnswer::Expunged)
        }

        fn uidl_facts(&mut self, _: &FactsRequest) -> Outcome<FactsAnswer> {
            self.asked("uidl_facts".into());
            Ok(FactsAnswer::Facts(Vec::new()))
        }

        fn lease_due(&self) -> Option<Instant> {
            self.lease_due
        }

        fn keep_lease(&mut self) -> Result<(), LeaseLost> {
            self.asked("keep_lease".into());
            Err(LeaseLost(
                "(cluster lock in Redis 127.0.0.1:6379: the lease expired)".into(),
            ))
        }

        fn release_lock(&mut self) {
            self.asked("release_lock".into());
        }

        fn failed(&self) -> bool {
            false
        }

        fn finish(&mut self) {
            self.asked("finish".into());
        }
    }

    /// The session's side of the socketpair: what it writes is noted too.
    struct Noted {
        socket: UnixStream,
        log: Log,
    }

    impl Write for Noted {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = self.socket.write(buf)?;
            note(&self.log, Event::Wrote(buf[..n].to_vec()));
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            self.socket.flush()
        }
    }

    fn settings() -> Settings {
        Settings {
            session: SessionConfig {
                uidl_format: UidlFormat::dovecot(),
                login_failure_delay: Duration::ZERO,
                max_login_failures: 3,
                max_bad_commands: 20,
                read_only: false,
                mark_seen: true,
                implementation: None,
                allow_plaintext_auth: false,
                plaintext_auth_from: Vec::new(),
                stls_available: false,
                folders: vec!["INBOX".into()],
                prefetch: false,
            },
            implicit_tls: false,
            idle_timeout: PATIENCE,
            connect_early: false,
        }
    }

    /// The client of a session that runs in a thread of its own.
    struct Client {
        socket: UnixStream,
        lines: BufReader<UnixStream>,
        session: JoinHandle<End>,
        log: Log,
    }

    impl Client {
        fn connect(fake: Fake, settings: Settings, tls: Option<Arc<ServerConfig>>) -> Client {
            // A loopback client: plaintext logins are allowed.
            let peer = "127.0.0.1:4711".parse().ok();
            Client::connect_from(fake, settings, tls, peer, None)
        }

        /// A client at `peer`, relayed by the balancer of `proxied` if
        /// given (whose header `transport::proxy` would have read).
        fn connect_from(
            mut fake: Fake,
            settings: Settings,
            tls: Option<Arc<ServerConfig>>,
            peer: Option<SocketAddr>,
            proxied: Option<Proxied>,
        ) -> Client {
            let (socket, server) = UnixStream::pair().expect("socketpair");
            socket.set_read_timeout(Some(PATIENCE)).expect("timeout");
            if fake.hangs_up_mid_retr {
                fake.hang_up = Some(socket.try_clone().expect("clone"));
            }
            let log = Arc::clone(&fake.log);
            let writer = Noted {
                socket: server.try_clone().expect("clone"),
                log: Arc::clone(&log),
            };
            let mut conn = ClientConn::new(Box::new(server), Box::new(writer), peer);
            conn.proxied = proxied;
            let session = std::thread::spawn(move || serve_with(&settings, tls, fake, conn));
            let lines = BufReader::new(socket.try_clone().expect("clone"));
            Client {
                socket,
                lines,
                session,
                log,
            }
        }

        fn says(&mut self, line: &str) {
            self.socket
                .write_all(format!("{line}\r\n").as_bytes())
                .expect("client write");
        }

        fn hears(&mut self, expected: &str) {
            let mut line = String::new();
            self.lines.read_line(&mut line).expect("a line in time");
            assert_eq!(line, format!("{expected}\r\n"));
        }

        /// Everything up to the end of the stream, which must come.
        fn hears_the_end(&mut self) -> String {
            let mut rest = String::new();
            self.lines
                .read_to_string(&mut rest)
                .expect("the end in time");
            rest
        }

        fn logs_in(&mut self) {
            self.hears("+OK POP3 server ready");
            self.says("USER alice");
            self.hears("+OK Send PASS");
            self.says("PASS secret");
            let size: usize = MESSAGES.iter().map(|m| m.len()).sum();
            self.hears(&format!("+OK Logged in, 2 messages ({size} octets)"));
        }

        /// How the session ended, and what the backend was asked.
        fn ended(self) -> (End, Vec<String>) {
            let end = self.session.join().expect("session thread");
            let asked = self
                .log
                .lock()
                .expect("log")
                .iter()
                .filter_map(|e| match e {
                    Event::Asked(call) => Some(call.clone()),
                    Event::Wrote(_) => None,
                })
                .collect();
            (end, asked)
        }
    }

    #[test]
    fn login_verdicts_are_counted_by_what_they_mean_for_the_client() {
        use std::time::Duration;
        let cases = [
            (Ok(LoginAnswer::LoggedIn), LoginResult::Ok),
            (Ok(LoginAnswer::LoggedInAs(b"m".to_vec())), LoginResult::Ok),
            (
                Ok(LoginAnswer::Rejected {
                    penalty: Duration::ZERO,
                    reason: "no".into(),
                }),
                LoginResult::Failed,
            ),
            (Ok(LoginAnswer::Unrouted), LoginResult::Refused),
            (
                Ok(LoginAnswer::Unavailable("x".into())),
                LoginResult::Temporary,
            ),
            (
                Ok(LoginAnswer::Throttled {
                    wait: Duration::from_secs(5),
                }),
                LoginResult::Temporary,
            ),
            (
                Err(crate::backend::Failure::new(
                    crate::backend::FailureKind::Unreachable,
                    "x",
                )),
                LoginResult::Temporary,
            ),
        ];
        for (answer, result) in cases {
            assert_eq!(login_result(&answer), result, "{answer:?}");
        }
    }

    #[test]
    fn a_folder_the_backend_refuses_ends_the_login_with_sys_perm() {
        let fake = Fake {
            refuse_folder: true,
            ..Fake::default()
        };
        let mut c = Client::connect(fake, settings(), None);
        c.hears("+OK POP3 server ready");
        c.says("USER alice");
        c.hears("+OK Send PASS");
        c.says("PASS secret");
        c.hears("-ERR [SYS/PERM] Cannot open folder INBOX");
        assert_eq!(c.hears_the_end(), "");
        let (end, asked) = c.ended();
        assert_eq!(end, End::Refused);
        assert_eq!(
            asked,
            [
                "login alice",
                "lock alice",
                "open_folder 0",
                "release_lock",
                "finish"
            ]
        );
    }

    #[test]
    fn a_lease_lost_at_quit_deletes_nothing_and_says_so() {
        let fake = Fake {
            lease_lost_after: Some(Duration::from_secs(3600)),
            ..Fake::default()
        };
        let mut c = Client::connect(fake, settings(), None);
        c.logs_in();
        c.says("DELE 1");
        c.hears("+OK Message 1 deleted");
        c.says("QUIT");
        c.hears(
            "-ERR [SYS/TEMP] Lost the maildrop lock, so the session ends here and no message \
             was deleted; try again",
        );
        assert_eq!(c.hears_the_end(), "");
        let (end, asked) = c.ended();
        assert_eq!(end, End::LockLost);
        assert!(asked.contains(&"keep_lease".to_string()), "{asked:?}");
        assert!(!asked.iter().any(|a| a.starts_with("expunge")), "{asked:?}");
    }

    #[test]
    fn a_lease_lost_while_the_client_thinks_ends_the_session() {
        let fake = Fake {
            lease_lost_after: Some(Duration::from_millis(200)),
            ..Fake::default()
        };
        let mut c = Client::connect(fake, settings(), None);
        c.logs_in();
        // Nothing more from the client: the renewal falls due meanwhile.
        c.hears(
            "-ERR [SYS/TEMP] Lost the maildrop lock, so the session ends here and no message \
             was deleted; try again",
        );
        assert_eq!(c.hears_the_end(), "");
        let (end, asked) = c.ended();
        assert_eq!(end, End::LockLost);
        assert_eq!(asked.last().map(String::as_str), Some("finish"));
    }

    #[test]
    fn a_proxy_header_instead_of_a_command_is_refused() {
        let mut c = Client::connect(Fake::default(), settings(), None);
        c.hears("+OK POP3 server ready");
        c.says("PROXY TCP4 192.0.2.7 127.0.0.1 51234 110");
        assert_eq!(c.hears_the_end(), "");
        let (end, asked) = c.ended();
        assert_eq!(end, End::Refused);
        assert_eq!(asked, ["finish"]);
    }

    /// A remote client relayed by a balancer that ended its TLS, or not.
    fn relayed(tls: Option<BalancerTls>) -> (Option<SocketAddr>, Option<Proxied>) {
        let client: SocketAddr = "192.0.2.7:4711".parse().expect("address");
        let proxied = Proxied {
            balancer: "127.0.0.2:40000".parse().expect("address"),
            version: 2,
            source: Source::Client(client),
            tls,
        };
        (Some(client), Some(proxied))
    }

    #[test]
    fn a_balancers_tls_counts_as_our_own_for_the_login_and_stls() {
        let old_tls = BalancerTls {
            version: Some("TLSv1".into()),
        };
        let (peer, proxied) = relayed(Some(old_tls));
        let stls = Some(Arc::new(no_certificate()));
        let mut c = Client::connect_from(Fake::default(), settings(), stls, peer, proxied);
        c.hears("+OK POP3 server ready");
        c.says("CAPA");
        c.hears("+OK Capability list follows");
        let mut capa = Vec::new();
        for _ in 0..20 {
            let mut line = String::new();
            c.lines.read_line(&mut line).expect("a line in time");
            if line == ".\r\n" {
                break;
            }
            capa.push(line);
        }
        assert!(capa.contains(&"USER\r\n".to_string()), "{capa:?}");
        assert!(!capa.iter().any(|l| l.starts_with("STLS")), "{capa:?}");
        c.says("STLS");
        c.hears("-ERR TLS is already active");
        c.says("USER alice");
        c.hears("+OK Send PASS");
        c.says("PASS secret");
        let size: usize = MESSAGES.iter().map(|m| m.len()).sum();
        c.hears(&format!("+OK Logged in, 2 messages ({size} octets)"));
        c.says("QUIT");
        c.hears("+OK Logging out, 0 messages deleted");
        assert_eq!(c.hears_the_end(), "");
        assert_eq!(c.ended().0, End::Quit);
    }

    #[test]
    fn a_balancer_without_tls_changes_nothing() {
        let (peer, proxied) = relayed(None);
        let stls = Some(Arc::new(no_certificate()));
        let mut c = Client::connect_from(Fake::default(), settings(), stls, peer, proxied);
        c.hears("+OK POP3 server ready");
        c.says("USER alice");
        c.hears(
            "-ERR Plaintext authentication is disabled on unencrypted connections: use STLS first",
        );
        c.says("QUIT");
        c.hears("+OK Logging out");
        assert_eq!(c.hears_the_end(), "");
        let (end, asked) = c.ended();
        assert_eq!(end, End::Quit);
        assert!(!asked.iter().any(|a| a.starts_with("login")), "{asked:?}");
    }

    #[test]
    fn the_session_line_tells_whose_tls() {
        let tls = |version: Option<&str>| BalancerTls {
            version: version.map(String::from),
        };
        assert_eq!(tls_for_log(false, None), "no");
        assert_eq!(tls_for_log(true, None), "yes");
        assert_eq!(
            tls_for_log(false, Some(&tls(Some("TLSv1")))),
            "TLSv1 via balancer"
        );
        assert_eq!(tls_for_log(false, Some(&tls(None))), "yes via balancer");
        // Ours inside the balancer's (it re-encrypts): ours is what we know.
        assert_eq!(tls_for_log(true, Some(&tls(Some("TLSv1")))), "yes");
    }

    /// A certificate nobody gets: the handshake must never get that far.
    #[derive(Debug)]
    struct NoCertificate;

    impl rustls::server::ResolvesServerCert for NoCertificate {
        fn resolve(
            &self,
            _: rustls::server::ClientHello<'_>,
        ) -> Option<Arc<rustls::sign::CertifiedKey>> {
            None
        }
    }

    /// A TLS set-up whose handshakes all fail: enough to offer STLS.
    fn no_certificate() -> ServerConfig {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(NoCertificate))
    }

    #[test]
    fn a_proxy_header_instead_of_a_client_hello_is_refused() {
        let tls = no_certificate();
        let settings = Settings {
            implicit_tls: true,
            ..settings()
        };
        let mut c = Client::connect(Fake::default(), settings, Some(Arc::new(tls)));
        c.says("PROXY TCP4 192.0.2.7 127.0.0.1 51234 995");
        // No greeting: the handshake that should have come first did not.
        assert_eq!(c.hears_the_end(), "");
        let (end, asked) = c.ended();
        assert_eq!(end, End::Refused);
        assert_eq!(asked, ["finish"]);
    }

    #[test]
    fn a_client_that_hangs_up_mid_retr_leaves_its_deletions_undone() {
        let fake = Fake {
            hangs_up_mid_retr: true,
            ..Fake::default()
        };
        let mut c = Client::connect(fake, settings(), None);
        c.logs_in();
        c.says("DELE 2");
        c.hears("+OK Message 2 deleted");
        c.says("RETR 1");
        assert_eq!(c.hears_the_end(), "");
        let (end, asked) = c.ended();
        assert_eq!(end, End::Disconnect);
        assert!(asked.contains(&"piece 1@0".to_string()), "{asked:?}");
        assert!(!asked.iter().any(|a| a.starts_with("expunge")), "{asked:?}");
    }

    #[test]
    fn the_fetch_ahead_is_asked_for_before_the_message_goes_out() {
        let settings = Settings {
            session: SessionConfig {
                prefetch: true,
                ..settings().session
            },
            ..settings()
        };
        let mut c = Client::connect(Fake::default(), settings, None);
        c.logs_in();
        c.says("RETR 1");
        c.hears(&format!("+OK {} octets", MESSAGES[0].len()));
        c.hears("Subject: one");
        c.hears("");
        c.hears("Hello");
        c.hears(".");
        c.says("QUIT");
        c.hears("+OK Logging out, 0 messages deleted");
        assert_eq!(c.hears_the_end(), "");
        let log = c.log.lock().expect("log").clone();
        let prefetch = log
            .iter()
            .position(|e| *e == Event::Asked("prefetch [2]".into()))
            .expect("asked for message 2 ahead");
        let sent = log
            .iter()
            .position(|e| matches!(e, Event::Wrote(b) if b.windows(5).any(|w| w == b"Hello")))
            .expect("message 1 sent");
        assert!(prefetch < sent, "{log:?}");
        let (end, _) = c.ended();
        assert_eq!(end, End::Quit);
    }
}
