//! The thin I/O loop of one session: reads client bytes, feeds lines to the
//! `Session`, writes its replies, runs TLS handshakes and the session's
//! backend requests through the IMAP client and the lock, and logs one
//! summary line at the end.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use log::{debug, error, info, warn};
use rustls::ServerConfig;

use crate::config::{BackendTls, Config};
use crate::imap::{Client, Endpoint, Expunged, ImapError, Login, Security, Selected};
use crate::limits::{CLIENT_READ_CHUNK, CLIENT_WRITE_BUFFER, FETCH_CHUNK, MAX_SASL_LINE};
use crate::lock::{self, LockError, LockGuard};
use crate::logging::printable;
use crate::maildrop::{FolderDeletions, FolderSnapshot, Maildrop};
use crate::pop3::body::BodyEncoder;
use crate::pop3::command::known_verb;
use crate::pop3::lines::{Line, LineReader};
use crate::pop3::reply::Reply;
use crate::pop3::session::{
    CommitOutcome, Connection, Credentials, FetchKind, FetchOutcome, FetchRequest, OpenOutcome,
    Request, Response, Session, SessionConfig, Step,
};
use crate::tls;
use crate::transport::{ClientConn, ClientStream};

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
        }
    }
}

/// The client went away (or stopped reading) while we wrote.
struct ClientGone(io::Error);

pub fn session_config(config: &Config, stls_available: bool) -> SessionConfig {
    SessionConfig {
        uidl_format: config.uidl_format.clone(),
        login_failure_delay: config.login_failure_delay,
        max_login_failures: config.max_login_failures,
        read_only: config.read_only,
        mark_seen: config.mark_seen,
        implementation: config.implementation.clone(),
        allow_plaintext_auth: config.allow_plaintext_auth,
        stls_available,
    }
}

struct Driver<'a> {
    config: &'a Config,
    session: Session,
    client: ClientStream,
    peer: Option<SocketAddr>,
    lines: LineReader,
    out: Vec<u8>,
    sent: u64,
    tls_config: Option<Arc<ServerConfig>>,
    backend: Option<Client>,
    /// Held for the rest of the process once the maildrop is opened.
    lock: Option<LockGuard>,
    /// Which configured folder the backend has selected.
    selected: Option<usize>,
    backend_failed: bool,
}

/// Runs one session to its end and logs its summary.
pub fn serve(config: &Config, conn: ClientConn) -> End {
    let started = Instant::now();
    let peer_text = conn
        .peer
        .map(|p| p.to_string())
        .unwrap_or_else(|| "unknown".into());
    // Read per connection, so a renewed certificate is used without restart.
    let tls_config = match config.tls.as_ref().map(tls::server_config) {
        Some(Ok(c)) => Some(c),
        Some(Err(e)) => {
            error!("TLS disabled for this connection: {e}");
            None
        }
        None => None,
    };
    let loopback = conn.peer.is_some_and(|p| p.ip().is_loopback());
    let mut driver = Driver {
        config,
        session: Session::new(
            session_config(config, tls_config.is_some()),
            Connection {
                tls: false,
                loopback,
            },
        ),
        client: conn.stream,
        peer: conn.peer,
        lines: LineReader::new(MAX_SASL_LINE),
        out: Vec::with_capacity(CLIENT_WRITE_BUFFER),
        sent: 0,
        tls_config,
        backend: None,
        lock: None,
        selected: None,
        backend_failed: false,
    };
    debug!("connection from {peer_text}");
    let end = driver.run();
    let _ = driver.flush();
    driver.client.close();
    if let Some(backend) = driver.backend.take() {
        backend.logout();
    }
    let stats = driver.session.stats();
    info!(
        "session end: user={} client={} tls={} retrieved={}/{} deleted={}/{} sent={} duration={:.3}s end={}",
        stats
            .user
            .as_deref()
            .map(|u| printable(u.as_bytes()))
            .unwrap_or_else(|| "-".into()),
        peer_text,
        if driver.client.is_tls() { "yes" } else { "no" },
        stats.retrieved,
        stats.retrieved_bytes,
        stats.deleted,
        stats.deleted_bytes,
        driver.sent,
        started.elapsed().as_secs_f64(),
        end.name(),
    );
    drop(driver.lock.take());
    end
}

impl Driver<'_> {
    fn run(&mut self) -> End {
        if self.config.implicit_tls
            && let Err(end) = self.start_tls()
        {
            return end;
        }
        let greeting = self.session.greeting();
        if self.send(&greeting).and_then(|_| self.flush()).is_err() {
            return End::Disconnect;
        }
        let mut buf = vec![0u8; CLIENT_READ_CHUNK];
        loop {
            while let Some(line) = self.lines.next_line() {
                if let Line::Complete(l) = &line
                    && !self.session.awaits_sasl_response()
                {
                    debug!("command: {}", known_verb(l).unwrap_or("(not a command)"));
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
            match self.client.read(&mut buf) {
                Ok(0) => return End::Disconnect,
                Ok(n) => self.lines.push(&buf[..n]),
                Err(e) if is_timeout(&e) => {
                    let _ = self.send(&Reply::err("Disconnected for inactivity"));
                    let _ = self.flush();
                    return End::Timeout;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!("client read failed: {e}");
                    return End::Disconnect;
                }
            }
        }
    }

    /// Handles one line; `Some(end)` when the session is over.
    fn step(&mut self, line: Line) -> Result<Option<End>, ClientGone> {
        let mut step = self.session.handle_line(line);
        loop {
            let response = match step {
                Step::Respond(r) => r,
                Step::StartTls(reply) => {
                    self.send(&reply)?;
                    self.flush()?;
                    // Anything pipelined behind STLS arrived in plaintext: drop it.
                    self.lines.clear();
                    if let Err(end) = self.start_tls() {
                        return Ok(Some(end));
                    }
                    return Ok(None);
                }
                Step::Backend(Request::Probe) => {
                    let capabilities = match self.backend() {
                        Ok(client) => client.capabilities().to_vec(),
                        Err(_) => Vec::new(),
                    };
                    step = self.session.on_probe(&capabilities);
                    continue;
                }
                Step::Backend(Request::OpenMaildrop { user, credentials }) => {
                    let outcome = self.open(&user, credentials);
                    self.session.on_open(&user, outcome)
                }
                Step::Backend(Request::Fetch(request)) => {
                    let outcome = self.fetch(request)?;
                    match self.session.on_fetch(outcome) {
                        Some(r) => r,
                        None if self.session.is_closed() => return Ok(Some(End::BackendError)),
                        None => return Ok(None),
                    }
                }
                Step::Backend(Request::Commit { deletions }) => {
                    let result = self.commit(&deletions);
                    self.session.on_commit(result)
                }
            };
            return self.respond(response);
        }
    }

    /// The TLS handshake (implicit TLS or after STLS); the session learns
    /// that the connection is now encrypted.
    fn start_tls(&mut self) -> Result<(), End> {
        let Some(config) = self.tls_config.clone() else {
            error!("TLS requested but no usable certificate: check tls_cert and tls_key");
            return Err(End::TlsFailed);
        };
        match self.client.start_tls(config) {
            Ok(()) => {
                self.session.on_tls_started();
                Ok(())
            }
            Err(e) if is_timeout(&e) => Err(End::Timeout),
            Err(e) => {
                info!("TLS handshake with client failed: {e}");
                Err(End::TlsFailed)
            }
        }
    }

    fn respond(&mut self, response: Response) -> Result<Option<End>, ClientGone> {
        if !response.delay.is_zero() {
            self.flush()?;
            std::thread::sleep(response.delay);
        }
        self.send(&response.reply)?;
        if !response.close {
            return Ok(None);
        }
        self.flush()?;
        Ok(Some(if response.reply.is_ok() {
            End::Quit
        } else if self.backend_failed {
            End::BackendError
        } else {
            End::Refused
        }))
    }

    fn send(&mut self, reply: &Reply) -> Result<(), ClientGone> {
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

    fn backend_error(&mut self, what: &str, e: &ImapError) {
        warn!(
            "backend {}:{}: {what}: {e}",
            self.config.backend_host, self.config.backend_port
        );
        self.backend_failed = true;
        self.backend = None;
        self.selected = None;
    }

    /// The backend connection, opened on first use.
    fn backend(&mut self) -> Result<&mut Client, ()> {
        if self.backend.is_none() {
            let connected = backend_endpoint(self.config).and_then(|e| Client::connect(&e));
            match connected {
                Ok(mut client) => {
                    if self.config.backend_send_id
                        && let Some(peer) = self.peer
                        && let Err(e) = client.send_client_id(peer)
                    {
                        warn!("backend refused ID with the client address: {e}");
                    }
                    self.backend = Some(client);
                    self.backend_failed = false;
                }
                Err(e) => {
                    self.backend_error("connect", &e);
                    return Err(());
                }
            }
        }
        self.backend.as_mut().ok_or(())
    }

    /// Log in, lock, select, snapshot: everything between PASS and its reply.
    fn open(&mut self, user: &[u8], credentials: Credentials) -> OpenOutcome {
        let shown_user = printable(user);
        let Ok(client) = self.backend() else {
            return OpenOutcome::Unavailable("Backend server unreachable".into());
        };
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
        drop(credentials);
        match login {
            Ok(Login::Ok) => {}
            Ok(Login::Rejected) => {
                info!("login failed: user={shown_user}");
                return OpenOutcome::BadCredentials;
            }
            Ok(Login::TemporaryFailure(text)) => {
                warn!(
                    "login of user={shown_user} failed temporarily: {}",
                    printable(text.as_bytes())
                );
                return OpenOutcome::Unavailable("Backend cannot log you in now".into());
            }
            Err(e) => {
                self.backend_error("login", &e);
                return OpenOutcome::Unavailable("Backend server failed".into());
            }
        }
        let name = lock::lock_name(&self.config.backend_host, self.config.backend_port, user);
        match lock::try_lock(&self.config.lock_dir, &name) {
            Ok(guard) => self.lock = Some(guard),
            Err(LockError::InUse) => {
                info!("maildrop in use: user={shown_user}");
                return OpenOutcome::InUse;
            }
            Err(LockError::Io { path, error: e }) => {
                error!(
                    "cannot lock {}: {e}; check that lock_dir exists and is writable",
                    path.display()
                );
                return OpenOutcome::Unavailable("Cannot lock the maildrop".into());
            }
        }
        let mut folders = Vec::with_capacity(self.config.folders.len());
        for index in 0..self.config.folders.len() {
            let name = &self.config.folders[index];
            let selected = match self.select_folder(index) {
                Ok(s) => s,
                Err(ImapError::Refused { info, .. }) => {
                    error!(
                        "cannot open folder {name:?} of user={shown_user}: {}",
                        printable(info.text.as_bytes())
                    );
                    return OpenOutcome::Permanent(format!("Cannot open folder {name}"));
                }
                Err(e) => {
                    self.backend_error("select", &e);
                    return OpenOutcome::Unavailable("Backend server failed".into());
                }
            };
            let Some(client) = self.backend.as_mut() else {
                return OpenOutcome::Unavailable("Backend server failed".into());
            };
            match client.snapshot(&selected) {
                Ok(messages) => folders.push(FolderSnapshot {
                    uid_validity: selected.uid_validity,
                    messages,
                }),
                Err(e) => {
                    self.backend_error("listing messages", &e);
                    return OpenOutcome::Unavailable("Backend server failed".into());
                }
            }
        }
        let maildrop = Maildrop::new(folders);
        info!("login: user={shown_user} messages={}", maildrop.stat().0);
        OpenOutcome::Opened(maildrop)
    }

    /// SELECT (or EXAMINE) one of the configured folders.
    fn select_folder(&mut self, index: usize) -> Result<Selected, ImapError> {
        let client = self.backend.as_mut().ok_or(ImapError::Closed)?;
        let selected = client.select(&self.config.folders[index], self.config.read_only)?;
        self.selected = Some(index);
        Ok(selected)
    }

    /// Makes `folder` the selected one, if it is not already; `Ok(false)`
    /// if its UIDVALIDITY changed since login (our UIDs mean nothing there).
    fn enter_folder(&mut self, folder: usize, uid_validity: u32) -> Result<bool, ImapError> {
        if self.selected == Some(folder) {
            return Ok(true);
        }
        self.selected = None;
        Ok(self.select_folder(folder)?.uid_validity == uid_validity)
    }

    /// Streams RETR/TOP in pieces; a backend failure after the first byte
    /// ends the reply without its final `.`.
    fn fetch(&mut self, request: FetchRequest) -> Result<FetchOutcome, ClientGone> {
        let FetchRequest {
            folder,
            uid_validity,
            uid,
            size,
            status,
            kind,
            mark_seen,
        } = request;
        let mut encoder = match kind {
            FetchKind::Retr => BodyEncoder::retr(),
            FetchKind::Top(n) => BodyEncoder::top(n),
        };
        match self.enter_folder(folder, uid_validity) {
            Ok(true) => {}
            Ok(false) => return Ok(FetchOutcome::Gone),
            Err(e) => {
                self.backend_error("select", &e);
                return Ok(FetchOutcome::Failed { started: false });
            }
        }
        let mut offset = 0u64;
        let mut started = false;
        loop {
            let Some(client) = self.backend.as_mut() else {
                return Ok(FetchOutcome::Failed { started });
            };
            let piece = match client.fetch_piece(uid, offset, FETCH_CHUNK) {
                Ok(Some(piece)) => piece,
                Ok(None) if !started => return Ok(FetchOutcome::Gone),
                Ok(None) => {
                    let e =
                        ImapError::Protocol(format!("message UID {uid} vanished while being sent"));
                    self.backend_error("fetch", &e);
                    return Ok(FetchOutcome::Failed { started });
                }
                Err(e) => {
                    self.backend_error("fetch", &e);
                    return Ok(FetchOutcome::Failed { started });
                }
            };
            if !started {
                self.send(&Reply::ok(status.as_str()))?;
                started = true;
            }
            encoder.push(&piece, &mut self.out);
            if self.out.len() >= CLIENT_WRITE_BUFFER {
                self.flush()?;
            }
            offset += piece.len() as u64;
            if piece.len() < FETCH_CHUNK as usize || encoder.is_done() {
                break;
            }
            // RFC822.SIZE is the size of BODY[]: a backend that sends far
            // more would otherwise keep this loop going for ever.
            if offset
                > size
                    .saturating_mul(2)
                    .saturating_add(u64::from(FETCH_CHUNK))
            {
                let e = ImapError::Protocol(format!(
                    "message UID {uid} is over twice its announced size {size}"
                ));
                self.backend_error("fetch", &e);
                return Ok(FetchOutcome::Failed { started });
            }
        }
        encoder.finish(&mut self.out);
        self.flush()?;
        if mark_seen
            && let Some(client) = self.backend.as_mut()
            && let Err(e) = client.mark_seen(uid)
        {
            self.backend_error("setting \\Seen", &e);
        }
        Ok(FetchOutcome::Sent)
    }

    /// Expunges folder by folder. A failure in one folder leaves the
    /// later ones untouched; the reply says whether earlier ones were done.
    fn commit(&mut self, deletions: &[FolderDeletions]) -> Result<CommitOutcome, String> {
        let mut outcome = CommitOutcome::Expunged;
        for (done, d) in deletions.iter().enumerate() {
            let failed = |done: usize| {
                if done == 0 {
                    "Backend failed to delete the messages".to_string()
                } else {
                    "Backend failed to delete the messages of one folder (those of earlier folders were deleted)"
                        .to_string()
                }
            };
            let name = &self.config.folders[d.folder];
            match self.enter_folder(d.folder, d.uid_validity) {
                Ok(true) => {}
                Ok(false) => {
                    warn!(
                        "folder {name:?} changed UIDVALIDITY during the session: nothing deleted there"
                    );
                    return Err(failed(done));
                }
                Err(e) => {
                    self.backend_error("select", &e);
                    return Err(failed(done));
                }
            }
            let Some(client) = self.backend.as_mut() else {
                return Err(failed(done));
            };
            match client.expunge(&d.uids) {
                Ok(Expunged::Done) => {}
                Ok(Expunged::LeftFlagged) => {
                    warn!(
                        "backend has no UIDPLUS and other messages in {name:?} are flagged \\Deleted: left {} messages flagged, not expunged",
                        d.uids.len()
                    );
                    outcome = CommitOutcome::LeftFlagged;
                }
                Err(e) => {
                    self.backend_error("expunge", &e);
                    return Err(failed(done));
                }
            }
        }
        Ok(outcome)
    }
}

/// Where and how to reach the backend, TLS settings included.
pub fn backend_endpoint(config: &Config) -> Result<Endpoint, ImapError> {
    let verify = if !config.backend_tls_verify {
        tls::Verify::Nothing
    } else if let Some(ca) = &config.backend_ca_file {
        tls::Verify::CaFile(ca)
    } else {
        tls::Verify::SystemRoots
    };
    let tls_settings = || -> Result<_, ImapError> {
        let setup = |e: tls::TlsSetupError| ImapError::Tls(e.to_string());
        if !config.backend_tls_verify {
            warn!(
                "backend_tls_verify is false: the backend's certificate is NOT checked, the connection can be intercepted"
            );
        }
        Ok((
            tls::client_config(verify).map_err(setup)?,
            tls::server_name(&config.backend_host).map_err(setup)?,
        ))
    };
    let security = match config.backend_tls {
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
        host: config.backend_host.clone(),
        port: config.backend_port,
        connect_timeout: config.backend_connect_timeout,
        timeout: config.backend_timeout,
        security,
    })
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}
