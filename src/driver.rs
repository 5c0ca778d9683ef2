//! The thin I/O loop of one session: reads client bytes, hands lines to the
//! `Session`, writes what it says, runs TLS handshakes, carries its backend
//! requests to the `ImapBackend` and the answers back, and logs one summary
//! line at the end. It makes no protocol decisions.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::Instant;

use log::{debug, error, info, warn};
use rustls::ServerConfig;

use crate::backend::Request;
use crate::backend::imap::ImapBackend;
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
use crate::timeout::is_timeout;
use crate::transport::{ClientConn, ClientStream, proxy};

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

fn session_config(config: &Config, stls_available: bool) -> SessionConfig {
    SessionConfig {
        stls_available,
        ..config.session.clone()
    }
}

struct Driver<'a> {
    config: &'a Config,
    session: Session,
    client: ClientStream,
    lines: LineReader,
    out: Vec<u8>,
    sent: u64,
    tls_config: Option<Arc<ServerConfig>>,
    backend: ImapBackend<'a>,
    /// Set when `carry` found the cluster lock lost: the session is over.
    lock_lost: Option<End>,
    /// A balancer's health check (PROXY v2 LOCAL): greeting only.
    health_check: bool,
}

/// Runs one session to its end and logs its summary. `files` were read
/// for this connection (see `preload`).
pub fn serve(config: &Config, files: &Preloaded, conn: ClientConn) -> End {
    let started = Instant::now();
    let peer_text = conn
        .peer
        .map(|p| p.to_string())
        .unwrap_or_else(|| "unknown".into());
    let tls_config = files.tls.clone();
    // A balancer on this host relaying a client it does not name is no
    // loopback client (see `ClientConn::peer_is_client`).
    let loopback = conn.peer_is_client() && conn.peer.is_some_and(|p| p.ip().is_loopback());
    let (proxied, health_check) = (conn.proxied, conn.is_health_check());
    let mut driver = Driver {
        config,
        session: Session::new(
            session_config(config, tls_config.is_some()),
            Connection {
                tls: false,
                loopback,
                client: conn.peer.map(|p| p.ip()),
            },
        ),
        client: conn.stream,
        lines: LineReader::new(MAX_SASL_LINE),
        out: Vec::with_capacity(CLIENT_WRITE_BUFFER),
        sent: 0,
        tls_config,
        backend: ImapBackend::new(&config.backend, files, conn.peer),
        lock_lost: None,
        health_check,
    };
    match proxied {
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
    let end = driver.run();
    let _ = driver.flush();
    driver.client.close();
    driver.backend.finish();
    let stats = driver.session.stats();
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
        if driver.client.is_tls() { "yes" } else { "no" },
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

impl Driver<'_> {
    /// The TLS handshake of implicit TLS, then the greeting.
    fn greet(&mut self) -> Result<(), End> {
        if self.config.implicit_tls {
            self.start_tls()?;
        }
        let greeting = self.session.greeting();
        self.send(&greeting)
            .and_then(|_| self.flush())
            .map_err(|_| End::Disconnect)
    }

    fn run(&mut self) -> End {
        // The backend connection is made while the client is on its way to
        // the login (see `ImapBackend::connect_early`); begun before our
        // greeting, it also overlaps with the TLS handshake of POP3S and
        // with the write of the greeting.
        if self.config.backend_connect_early {
            self.backend.connect_early();
        }
        if let Err(end) = self.greet() {
            return end;
        }
        let mut buf = vec![0u8; CLIENT_READ_CHUNK];
        // A whole command line must arrive within the idle timeout, counted
        // from when it is awaited: a client that sends a byte now and then
        // does not hold the process and its backend connection for ever.
        let mut line_deadline = Instant::now() + self.config.idle_timeout;
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
                let stepped = self.step(line);
                if let Some(end) = self.lock_lost {
                    return end;
                }
                match stepped {
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
                line_deadline = Instant::now() + self.config.idle_timeout;
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
                Err(e) if is_timeout(&e) && renewal.is_some() => {
                    if let Err(end) = self.keep_lease(false) {
                        return end;
                    }
                }
                Err(e) if is_timeout(&e) => {
                    let _ = self.send(&Reply::err("Disconnected for inactivity"));
                    let _ = self.flush();
                    return End::Timeout;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if let Some(header) = proxy::unexpected_header(&e) {
                        warn!("{header}");
                        return End::Refused;
                    }
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
                    self.carry(request)
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
                            let step = self.carry(request);
                            self.flush()?;
                            step
                        }
                        Some(request) => {
                            self.flush()?;
                            self.carry(request)
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
        let Err(why) = self.backend.keep_lease() else {
            return Ok(());
        };
        let step = self.session.on_lock_lost(&why);
        if let Step::Respond(response) = step {
            let _ = self.send(&response.reply);
        }
        let _ = self.flush();
        Err(End::LockLost)
    }

    /// Hands a request to the backend and its answer to the session.
    fn carry(&mut self, request: Request) -> Step {
        // Between the pieces of a message too: a long download to a slow
        // client must not outlive the lease.
        let before_update = matches!(request, Request::Expunge(_));
        if let Err(end) = self.keep_lease(before_update) {
            self.lock_lost = Some(end);
            return Step::Done;
        }
        let (backend, session) = (&mut self.backend, &mut self.session);
        match request {
            Request::Capabilities => session.on_capabilities(backend.capabilities()),
            Request::Login(credentials) => session.on_login(backend.login(credentials)),
            Request::Lock { user } => session.on_lock(backend.lock(&user)),
            Request::OpenFolder { folder } => session.on_folder(backend.open_folder(folder)),
            Request::Piece(piece) => session.on_piece(backend.piece(piece)),
            Request::Prefetch(next) => session.on_prefetch(backend.prefetch(next)),
            Request::Expunge(deletions) => session.on_expunge(backend.expunge(&deletions)),
            Request::UidlFacts(facts) => session.on_uidl_facts(backend.uidl_facts(&facts)),
        }
    }

    /// The TLS handshake (implicit TLS or after STLS); the session learns
    /// that the connection is now encrypted.
    fn start_tls(&mut self) -> Result<(), End> {
        let Some(config) = self.tls_config.clone() else {
            error!("TLS requested but no usable certificate: check tls_cert and tls_key");
            return Err(End::TlsFailed);
        };
        self.client
            .set_read_deadline(Instant::now() + self.config.idle_timeout);
        match self.client.start_tls(config) {
            Ok(()) => {
                self.session.on_tls_started();
                Ok(())
            }
            Err(e) if is_timeout(&e) => Err(End::Timeout),
            Err(e) => {
                // Instead of the ClientHello of implicit TLS.
                if let Some(header) = proxy::unexpected_header(&e) {
                    warn!("{header}");
                    return Err(End::Refused);
                }
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
