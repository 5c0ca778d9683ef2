//! The thin I/O loop of one session: reads client bytes, feeds lines to the
//! `Session`, writes its replies, carries out its backend requests through
//! the IMAP client and the lock, and logs one summary line at the end.

use std::io::{self, BufWriter, Write};
use std::time::Instant;

use log::{debug, info, warn};

use crate::config::Config;
use crate::imap::{Client, Endpoint, Expunged, ImapError, Login};
use crate::limits::{CLIENT_READ_CHUNK, FETCH_CHUNK, MAX_COMMAND_LINE};
use crate::lock::{self, LockError, LockGuard};
use crate::logging::printable;
use crate::maildrop::Maildrop;
use crate::pop3::body::BodyEncoder;
use crate::pop3::lines::{Line, LineReader};
use crate::pop3::reply::Reply;
use crate::pop3::session::{
    FetchKind, FetchOutcome, OpenOutcome, Request, Response, Session, SessionConfig, Step,
};
use crate::secret::Secret;
use crate::transport::ClientConn;

/// How a session ended, for the summary line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Quit,
    Timeout,
    Disconnect,
    /// Closed by us after a final `-ERR` (lock held, too many failures...).
    Refused,
    BackendError,
}

impl End {
    pub fn name(self) -> &'static str {
        match self {
            End::Quit => "quit",
            End::Timeout => "timeout",
            End::Disconnect => "disconnect",
            End::Refused => "refused",
            End::BackendError => "backend-error",
        }
    }
}

/// The client went away (or stopped reading) while we wrote.
struct ClientGone(io::Error);

/// Counts bytes written to the client for the summary line.
struct CountingWriter {
    inner: Box<dyn Write + Send>,
    count: u64,
}

impl Write for CountingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

pub fn session_config(config: &Config) -> SessionConfig {
    SessionConfig {
        uidl_format: config.uidl_format.clone(),
        login_failure_delay: config.login_failure_delay,
        max_login_failures: config.max_login_failures,
        read_only: config.read_only,
        mark_seen: config.mark_seen,
        implementation: config.implementation.clone(),
    }
}

struct Driver<'a> {
    config: &'a Config,
    session: Session,
    out: BufWriter<CountingWriter>,
    backend: Option<Client>,
    /// Held for the rest of the process once the maildrop is opened.
    lock: Option<LockGuard>,
    backend_failed: bool,
}

/// Runs one session to its end and logs its summary.
pub fn serve(config: &Config, client: ClientConn) -> End {
    let started = Instant::now();
    let peer = client
        .peer
        .map(|p| p.to_string())
        .unwrap_or_else(|| "unknown".into());
    let mut driver = Driver {
        config,
        session: Session::new(session_config(config)),
        out: BufWriter::with_capacity(
            64 * 1024,
            CountingWriter {
                inner: client.writer,
                count: 0,
            },
        ),
        backend: None,
        lock: None,
        backend_failed: false,
    };
    debug!("connection from {peer}");
    let end = driver.run(client.reader);
    let _ = driver.out.flush();
    if let Some(backend) = driver.backend.take() {
        backend.logout();
    }
    let stats = driver.session.stats();
    info!(
        "session end: user={} client={} retrieved={}/{} deleted={}/{} sent={} duration={:.3}s end={}",
        stats
            .user
            .as_deref()
            .map(|u| printable(u.as_bytes()))
            .unwrap_or_else(|| "-".into()),
        peer,
        stats.retrieved,
        stats.retrieved_bytes,
        stats.deleted,
        stats.deleted_bytes,
        driver.out.get_ref().count,
        started.elapsed().as_secs_f64(),
        end.name(),
    );
    drop(driver.lock.take());
    end
}

impl Driver<'_> {
    fn run(&mut self, mut reader: Box<dyn io::Read + Send>) -> End {
        let greeting = self.session.greeting();
        if self.send(&greeting).and_then(|_| self.flush()).is_err() {
            return End::Disconnect;
        }
        let mut lines = LineReader::new(MAX_COMMAND_LINE);
        let mut buf = vec![0u8; CLIENT_READ_CHUNK];
        loop {
            while let Some(line) = lines.next_line() {
                if let Line::Complete(l) = &line {
                    debug!("command: {}", printable(command_name(l)));
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
            match reader.read(&mut buf) {
                Ok(0) => return End::Disconnect,
                Ok(n) => lines.push(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
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
        let response = match self.session.handle_line(line) {
            Step::Respond(r) => r,
            Step::Backend(Request::OpenMaildrop { user, password }) => {
                let outcome = self.open(&user, password);
                self.session.on_open(&user, outcome)
            }
            Step::Backend(Request::Fetch {
                uid,
                status,
                kind,
                mark_seen,
                ..
            }) => {
                let outcome = self.fetch(uid, &status, kind, mark_seen)?;
                match self.session.on_fetch(outcome) {
                    Some(r) => r,
                    None if self.session.is_closed() => return Ok(Some(End::BackendError)),
                    None => return Ok(None),
                }
            }
            Step::Backend(Request::Commit { uids }) => {
                let result = self.commit(&uids);
                self.session.on_commit(result)
            }
        };
        self.respond(response)
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
        Ok(Some(if self.backend_failed {
            End::BackendError
        } else if response.reply.is_ok() {
            End::Quit
        } else {
            End::Refused
        }))
    }

    fn send(&mut self, reply: &Reply) -> Result<(), ClientGone> {
        let mut bytes = Vec::new();
        reply.encode(&mut bytes);
        self.out.write_all(&bytes).map_err(ClientGone)
    }

    fn flush(&mut self) -> Result<(), ClientGone> {
        self.out.flush().map_err(ClientGone)
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint {
            host: self.config.backend_host.clone(),
            port: self.config.backend_port,
            connect_timeout: self.config.backend_connect_timeout,
            timeout: self.config.backend_timeout,
        }
    }

    fn backend_error(&mut self, what: &str, e: &ImapError) {
        warn!(
            "backend {}:{}: {what}: {e}",
            self.config.backend_host, self.config.backend_port
        );
        self.backend_failed = true;
        self.backend = None;
    }

    /// Log in, lock, select, snapshot: everything between PASS and its reply.
    fn open(&mut self, user: &[u8], password: Secret) -> OpenOutcome {
        let shown_user = printable(user);
        if self.backend.is_none() {
            match Client::connect(&self.endpoint()) {
                Ok(c) => self.backend = Some(c),
                Err(e) => {
                    self.backend_error("connect", &e);
                    return OpenOutcome::Unavailable("Backend server unreachable".into());
                }
            }
        }
        let Some(client) = self.backend.as_mut() else {
            return OpenOutcome::Unavailable("Backend server unreachable".into());
        };
        match client.login(user, &password) {
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
        drop(password);
        let name = lock::lock_name(&self.config.backend_host, self.config.backend_port, user);
        match lock::try_lock(&self.config.lock_dir, &name) {
            Ok(guard) => self.lock = Some(guard),
            Err(LockError::InUse) => {
                info!("maildrop in use: user={shown_user}");
                return OpenOutcome::InUse;
            }
            Err(LockError::Io { path, error }) => {
                log::error!(
                    "cannot lock {}: {error}; check that lock_dir exists and is writable",
                    path.display()
                );
                return OpenOutcome::Unavailable("Cannot lock the maildrop".into());
            }
        }
        let folder = self.config.folder.clone();
        let selected = match client.select(&folder, self.config.read_only) {
            Ok(s) => s,
            Err(ImapError::Refused { info, .. }) => {
                log::error!(
                    "cannot open folder {folder:?} of user={shown_user}: {}",
                    printable(info.text.as_bytes())
                );
                return OpenOutcome::Permanent(format!("Cannot open folder {folder}"));
            }
            Err(e) => {
                self.backend_error("select", &e);
                return OpenOutcome::Unavailable("Backend server failed".into());
            }
        };
        match client.snapshot(&selected) {
            Ok(messages) => {
                info!("login: user={shown_user} messages={}", messages.len());
                OpenOutcome::Opened(Maildrop::new(selected.uid_validity, messages))
            }
            Err(e) => {
                self.backend_error("listing messages", &e);
                OpenOutcome::Unavailable("Backend server failed".into())
            }
        }
    }

    /// Streams RETR/TOP in pieces; a backend failure after the first byte
    /// ends the reply without its final `.`.
    fn fetch(
        &mut self,
        uid: u32,
        status: &str,
        kind: FetchKind,
        mark_seen: bool,
    ) -> Result<FetchOutcome, ClientGone> {
        let mut encoder = match kind {
            FetchKind::Retr => BodyEncoder::retr(),
            FetchKind::Top(n) => BodyEncoder::top(n),
        };
        let mut offset = 0u64;
        let mut started = false;
        let mut out = Vec::with_capacity(FETCH_CHUNK as usize * 2);
        loop {
            let Some(client) = self.backend.as_mut() else {
                return Ok(FetchOutcome::Failed { started });
            };
            let piece = match client.fetch_piece(uid, offset, FETCH_CHUNK) {
                Ok(Some(piece)) => piece,
                Ok(None) if !started => return Ok(FetchOutcome::Gone),
                Ok(None) => {
                    self.backend_error(
                        "fetch",
                        &ImapError::Protocol(format!(
                            "message UID {uid} vanished while being sent"
                        )),
                    );
                    return Ok(FetchOutcome::Failed { started });
                }
                Err(e) => {
                    self.backend_error("fetch", &e);
                    return Ok(FetchOutcome::Failed { started });
                }
            };
            if !started {
                self.send(&Reply::ok(status))?;
                started = true;
            }
            encoder.push(&piece, &mut out);
            self.out.write_all(&out).map_err(ClientGone)?;
            out.clear();
            offset += piece.len() as u64;
            if piece.len() < FETCH_CHUNK as usize || encoder.is_done() {
                break;
            }
        }
        encoder.finish(&mut out);
        self.out.write_all(&out).map_err(ClientGone)?;
        self.flush()?;
        if mark_seen
            && let Some(client) = self.backend.as_mut()
            && let Err(e) = client.mark_seen(uid)
        {
            self.backend_error("setting \\Seen", &e);
        }
        Ok(FetchOutcome::Sent)
    }

    fn commit(&mut self, uids: &[u32]) -> Result<(), String> {
        if uids.is_empty() {
            return Ok(());
        }
        let Some(client) = self.backend.as_mut() else {
            return Err("Backend connection lost".into());
        };
        match client.expunge(uids) {
            Ok(Expunged::Done) => Ok(()),
            Ok(Expunged::LeftFlagged) => {
                warn!(
                    "backend has no UIDPLUS and other messages are flagged \\Deleted: left {} messages flagged, not expunged",
                    uids.len()
                );
                Ok(())
            }
            Err(e) => {
                self.backend_error("expunge", &e);
                Err("Backend failed to delete the messages".into())
            }
        }
    }
}

/// The command word of a line, for debug logs: never its arguments, which
/// may be a password.
fn command_name(line: &[u8]) -> &[u8] {
    let end = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
    &line[..end.min(8)]
}
