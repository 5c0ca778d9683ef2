//! `pop3server --stats`, the aggregator's I/O: binds the UNIX datagram
//! socket the sessions send their events to and records each datagram in
//! a thread of its own; serves the counts on `metrics_listen`
//! (`GET /metrics`, a few connections at a time); tells systemd it is
//! ready once both sockets are bound; on SIGTERM (or SIGINT) removes its
//! socket, and only its own, and returns.
//!
//! A socket file left behind by a killed aggregator is removed at start
//! when nothing is bound to it any more (connecting to it is refused);
//! a file that is no socket, or a socket something still receives on, is
//! left alone and the start fails.

use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{SigSet, Signal};

use super::Settings;
use super::aggregate::Aggregate;
use super::http::{self, Response};
use crate::limits::{
    ACCEPT_RETRY_DELAY, MAX_METRICS_CONNECTIONS, MAX_METRICS_REQUEST_HEAD, MAX_STATS_DATAGRAM,
    METRICS_REQUEST_TIMEOUT, STATS_RETRY_DELAY,
};

/// The socket's mode: the sessions run as the service's user, or in its
/// group.
const SOCKET_MODE: u32 = 0o660;

/// Why the aggregator could not start.
#[derive(Debug)]
pub enum ServeError {
    /// Something that is not a socket is where the socket should be.
    NotASocket(PathBuf),
    /// Another process receives on the socket.
    InUse(PathBuf),
    /// What was there could not be examined, or a stale socket removed.
    Stale(PathBuf, io::Error),
    Bind(PathBuf, io::Error),
    Listen(SocketAddr, io::Error),
    Signals(nix::Error),
}

impl fmt::Display for ServeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServeError::NotASocket(path) => write!(
                f,
                "{} exists and is not a socket: it is left alone; remove it yourself, or set \
                 stats_socket to another path",
                path.display()
            ),
            ServeError::InUse(path) => write!(
                f,
                "another aggregator receives on {} already: stop it first (systemctl stop \
                 pop3server-stats), or give this one another stats_socket",
                path.display()
            ),
            ServeError::Stale(path, e) => write!(
                f,
                "cannot tell whether {} is a stale socket, or remove it: {e}; remove it \
                 yourself, or set stats_socket to another path",
                path.display()
            ),
            ServeError::Bind(path, e) => write!(
                f,
                "cannot make the statistics socket {}: {e}; its directory must exist and be \
                 writable by this user (stats_socket)",
                path.display()
            ),
            ServeError::Listen(addr, e) => write!(
                f,
                "cannot listen on {addr} for the metrics: {e}; choose a free address and port \
                 (metrics_listen)"
            ),
            ServeError::Signals(e) => write!(f, "cannot set up the signals to stop by: {e}"),
        }
    }
}

impl std::error::Error for ServeError {}

/// The socket file this process made: removed at the end if it is still
/// that file (an aggregator started after this one may have replaced it).
#[derive(Debug)]
struct OwnSocket {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl OwnSocket {
    fn remove(&self) {
        let ours = fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.file_type().is_socket() && m.dev() == self.dev && m.ino() == self.ino);
        if ours && let Err(e) = fs::remove_file(&self.path) {
            log::warn!(
                "cannot remove the statistics socket {}: {e}",
                self.path.display()
            );
        }
    }
}

/// Runs the aggregator until SIGTERM or SIGINT.
/// `owner` (uid, gid): whose the socket is made, for an aggregator started
/// as root, so that sessions running as the service's user may send.
pub fn run(settings: &Settings, owner: Option<(u32, u32)>) -> Result<(), ServeError> {
    // Blocked before any thread starts, so that every thread inherits the
    // mask and the signals wait for `wait` below.
    let mut stop = SigSet::empty();
    stop.add(Signal::SIGTERM);
    stop.add(Signal::SIGINT);
    stop.thread_block().map_err(ServeError::Signals)?;

    let (events, own) = bind_events(&settings.socket, owner)?;
    let own = Arc::new(own);
    let metrics = match TcpListener::bind(settings.listen) {
        Ok(l) => l,
        Err(e) => {
            own.remove();
            return Err(ServeError::Listen(settings.listen, e));
        }
    };
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let aggregate = Arc::new(Mutex::new(Aggregate::new(started)));

    {
        let aggregate = Arc::clone(&aggregate);
        let own = Arc::clone(&own);
        thread::spawn(move || receive(&events, &aggregate, &own));
    }
    {
        let aggregate = Arc::clone(&aggregate);
        let own = Arc::clone(&own);
        thread::spawn(move || accept(&metrics, &aggregate, &own));
    }
    log::info!(
        "statistics: events on {}, metrics on http://{}/metrics",
        settings.socket.display(),
        settings.listen
    );
    // READY=1 for a Type=notify unit; without NOTIFY_SOCKET this does nothing.
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        log::warn!("cannot notify systemd of readiness: {e}");
    }
    let signal = loop {
        match stop.wait() {
            Ok(signal) => break signal,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                own.remove();
                return Err(ServeError::Signals(e));
            }
        }
    };
    log::info!("statistics: stopping on {signal}");
    own.remove();
    Ok(())
}

/// The datagram socket at `path`, after a stale one left there is removed.
fn bind_events(
    path: &Path,
    owner: Option<(u32, u32)>,
) -> Result<(UnixDatagram, OwnSocket), ServeError> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            // Connecting sends nothing: it is refused when nothing is bound.
            match UnixDatagram::unbound().and_then(|probe| probe.connect(path)) {
                Ok(()) => return Err(ServeError::InUse(path.to_path_buf())),
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    fs::remove_file(path).map_err(|e| ServeError::Stale(path.to_path_buf(), e))?;
                    log::info!("statistics: removed the stale socket {}", path.display());
                }
                Err(e) => return Err(ServeError::Stale(path.to_path_buf(), e)),
            }
        }
        Ok(_) => return Err(ServeError::NotASocket(path.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(ServeError::Stale(path.to_path_buf(), e)),
    }
    let bind = |e| ServeError::Bind(path.to_path_buf(), e);
    let socket = UnixDatagram::bind(path).map_err(bind)?;
    let own = fs::symlink_metadata(path)
        .map_err(bind)
        .map(|m| OwnSocket {
            path: path.to_path_buf(),
            dev: m.dev(),
            ino: m.ino(),
        })?;
    // The units' UMask=0077 would leave it to the owner alone.
    if let Err(e) = fs::set_permissions(path, fs::Permissions::from_mode(SOCKET_MODE)) {
        own.remove();
        return Err(bind(e));
    }
    if let Some((uid, gid)) = owner
        && let Err(e) = std::os::unix::fs::lchown(path, Some(uid), Some(gid))
    {
        own.remove();
        return Err(bind(e));
    }
    Ok((socket, own))
}

/// Records every datagram; a datagram longer than `MAX_STATS_DATAGRAM`
/// arrives cut to one byte more, and is malformed.
fn receive(events: &UnixDatagram, aggregate: &Mutex<Aggregate>, own: &OwnSocket) {
    let mut buf = vec![0u8; MAX_STATS_DATAGRAM + 1];
    loop {
        match events.recv(&mut buf) {
            Ok(n) => lock(aggregate).record_datagram(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_resource_shortage(&e) => {
                log::warn!("cannot read a statistics datagram: {e}; retrying");
                thread::sleep(STATS_RETRY_DELAY);
            }
            Err(e) => {
                log::error!(
                    "cannot read statistics datagrams from {}: {e}; stopping",
                    own.path.display()
                );
                own.remove();
                std::process::exit(1);
            }
        }
    }
}

/// Serves the metrics, each connection in a thread, at most
/// `MAX_METRICS_CONNECTIONS` at once.
fn accept(listener: &TcpListener, aggregate: &Arc<Mutex<Aggregate>>, own: &OwnSocket) {
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e)
                if e.kind() == io::ErrorKind::Interrupted
                    || e.kind() == io::ErrorKind::ConnectionAborted =>
            {
                continue;
            }
            Err(e) if is_resource_shortage(&e) => {
                log::error!("cannot accept a metrics connection: {e}; retrying");
                thread::sleep(ACCEPT_RETRY_DELAY);
                continue;
            }
            Err(e) => {
                log::error!("cannot accept metrics connections: {e}; stopping");
                own.remove();
                std::process::exit(1);
            }
        };
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_METRICS_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            // A few bytes into an empty socket buffer: this does not wait.
            let _ = stream.set_write_timeout(Some(METRICS_REQUEST_TIMEOUT));
            let _ = (&stream).write_all(&Response::busy().to_bytes());
            continue;
        }
        let aggregate = Arc::clone(aggregate);
        let done = Arc::clone(&active);
        let spawned = thread::Builder::new().spawn(move || {
            serve_connection(stream, &aggregate);
            done.fetch_sub(1, Ordering::SeqCst);
        });
        if spawned.is_err() {
            // Out of threads: this connection is dropped, the next may fare better.
            active.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// One request, one answer, within `METRICS_REQUEST_TIMEOUT`. A
/// connection that sends no whole head in time is closed without one.
fn serve_connection(mut stream: TcpStream, aggregate: &Mutex<Aggregate>) {
    let deadline = Instant::now() + METRICS_REQUEST_TIMEOUT;
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let response = loop {
        if let Some(end) = http::head_end(&head) {
            // Rendered under the lock, written after it.
            break http::answer(&head[..end], || lock(aggregate).render());
        }
        if head.len() >= MAX_METRICS_REQUEST_HEAD {
            break Response::too_large();
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        let room = chunk.len().min(MAX_METRICS_REQUEST_HEAD - head.len());
        match stream.read(&mut chunk[..room]) {
            Ok(0) => return,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // A timeout or a reset: nobody to answer.
            Err(_) => return,
        }
    };
    let _ = stream.set_write_timeout(Some(METRICS_REQUEST_TIMEOUT));
    let _ = stream
        .write_all(&response.to_bytes())
        .and_then(|()| stream.flush());
}

fn lock(aggregate: &Mutex<Aggregate>) -> std::sync::MutexGuard<'_, Aggregate> {
    // Recording and rendering do not panic; if one did, the counts it left
    // are still the best there are.
    aggregate.lock().unwrap_or_else(PoisonError::into_inner)
}

/// EMFILE, ENFILE, ENOBUFS, ENOMEM: errors that may pass.
fn is_resource_shortage(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(23 | 24 | 105 | 12))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("pop3server-stats-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    #[test]
    fn a_stale_socket_is_replaced_and_a_live_one_is_not() {
        let dir = temp_dir("stale");
        let path = dir.join("stats.sock");
        // What a killed aggregator leaves: the file, nobody bound to it.
        drop(UnixDatagram::bind(&path).expect("bind"));
        let (socket, own) = bind_events(&path, None).expect("stale socket replaced");
        let mode = fs::metadata(&path).expect("socket").permissions().mode();
        assert_eq!(mode & 0o777, SOCKET_MODE);
        match bind_events(&path, None) {
            Err(ServeError::InUse(p)) => assert_eq!(p, path),
            other => panic!("a live socket was not refused: {other:?}"),
        }
        UnixDatagram::unbound()
            .and_then(|s| s.send_to(b"pop3server-stats 1 session-start", &path))
            .expect("send");
        let mut buf = [0u8; 64];
        assert_eq!(socket.recv(&mut buf).expect("recv"), 32);
        own.remove();
        assert!(!path.exists());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_file_that_is_no_socket_is_left_alone() {
        let dir = temp_dir("file");
        let path = dir.join("stats.sock");
        fs::write(&path, "precious").expect("write");
        let e = bind_events(&path, None).expect_err("not a socket");
        assert!(matches!(e, ServeError::NotASocket(_)), "{e:?}");
        assert!(e.to_string().contains("is left alone"), "{e}");
        assert_eq!(fs::read_to_string(&path).expect("still there"), "precious");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn only_its_own_socket_is_removed() {
        let dir = temp_dir("own");
        let path = dir.join("stats.sock");
        let (_socket, own) = bind_events(&path, None).expect("bind");
        // Another aggregator's socket now at the same path.
        fs::remove_file(&path).expect("remove");
        let _other = UnixDatagram::bind(&path).expect("bind other");
        own.remove();
        assert!(path.exists(), "another process's socket was removed");
        let _ = fs::remove_dir_all(&dir);
    }
}
