//! How the client connection reaches this process: stdin/stdout from inetd
//! (or from our own listener), fd 3 from a systemd `Accept=yes` socket, or
//! accepted by the standalone listener in `listener`; behind a load
//! balancer, with the PROXY protocol header read in `proxy`. Produces a
//! `ClientConn`; knows nothing of POP3.

pub mod listener;
pub mod proxy;
mod tlv;

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::{ServerConfig, ServerConnection, StreamOwned};

pub use proxy::{BalancerTls, Proxied};

pub struct ClientConn {
    pub stream: ClientStream,
    /// The client's address: after a PROXY protocol header the one it
    /// names, else the socket's peer. Unknown when the "socket" is a pipe
    /// or socketpair.
    pub peer: Option<SocketAddr>,
    /// The balancer and what its header said, if one was accepted.
    pub proxied: Option<Proxied>,
}

impl ClientConn {
    pub(crate) fn new(
        reader: Box<dyn ClientRead>,
        writer: Box<dyn Write + Send>,
        peer: Option<SocketAddr>,
    ) -> Self {
        let peer = peer.map(canonical_peer);
        ClientConn {
            stream: ClientStream::Plain(Duplex {
                reader,
                writer,
                deadline: None,
                pending: Vec::new(),
                first_bytes: Some(FirstBytes::new(peer, None)),
            }),
            peer,
            proxied: None,
        }
    }

    /// A balancer's health check (PROXY v2 `LOCAL`): no session for it.
    pub fn is_health_check(&self) -> bool {
        self.proxied
            .as_ref()
            .is_some_and(|p| p.source == proxy::Source::Local)
    }

    /// Whether `peer` is the client's own address, and not that of a
    /// balancer which relays a client it does not name (v1 `UNKNOWN`):
    /// only then may it count as a loopback client.
    pub fn peer_is_client(&self) -> bool {
        self.proxied
            .as_ref()
            .is_none_or(|p| matches!(p.source, proxy::Source::Client(_)))
    }

    /// The client's TLS, if a trusted balancer says it ended it (PROXY v2
    /// with PP2_TYPE_SSL and PP2_CLIENT_SSL): the connection to the client
    /// is encrypted although ours to the balancer is not.
    pub fn balancer_tls(&self) -> Option<&BalancerTls> {
        self.proxied.as_ref().and_then(|p| p.tls.as_ref())
    }
}

/// The reading side of the client connection: a socket, or a pipe in tests
/// (which has no timeouts).
pub trait ClientRead: Read + Send {
    fn set_read_timeout(&self, timeout: Duration) -> io::Result<()>;

    /// Sends the end of the stream (FIN) now, although the process (and,
    /// under inetd, its stdin and stdout) lives on a little: the client
    /// sees the session end at once, not after the backend's LOGOUT. A
    /// pipe (tests) has nothing to shut down: it ends with the process.
    fn shutdown_write(&self) -> io::Result<()> {
        Ok(())
    }
}

impl ClientRead for TcpStream {
    fn set_read_timeout(&self, timeout: Duration) -> io::Result<()> {
        TcpStream::set_read_timeout(self, Some(timeout))
    }

    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }
}

impl ClientRead for File {
    fn set_read_timeout(&self, _: Duration) -> io::Result<()> {
        Ok(())
    }
}

/// One end of a socketpair: the driver's tests talk to a session through
/// the other.
#[cfg(test)]
impl ClientRead for std::os::unix::net::UnixStream {
    fn set_read_timeout(&self, timeout: Duration) -> io::Result<()> {
        std::os::unix::net::UnixStream::set_read_timeout(self, Some(timeout))
    }

    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }
}

/// Why reading from the client, or its TLS handshake, failed.
#[derive(Debug)]
pub enum ClientError {
    /// A PROXY protocol header where none may be (see `FirstBytes`): the
    /// connection is refused, whatever came with it.
    UnexpectedHeader(proxy::UnexpectedHeader),
    /// The socket's own error: a timeout, a reset, a failed handshake.
    Io(io::Error),
}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        ClientError::Io(e)
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::UnexpectedHeader(header) => header.fmt(f),
            ClientError::Io(e) => e.fmt(f),
        }
    }
}

/// A dual-stack socket (systemd's `ListenStream=110`, `[::]` in the
/// listener) reports IPv4 clients as `::ffff:a.b.c.d`. Everything that looks
/// at the client address (logs, the loopback rule for plaintext logins, the
/// IMAP `ID` forwarding) must see the IPv4 address the client really has.
pub fn canonical_peer(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// The two directions of the client connection (one socket, or stdin and
/// stdout), as one stream that TLS can wrap.
pub struct Duplex {
    reader: Box<dyn ClientRead>,
    writer: Box<dyn Write + Send>,
    /// When the client's current line (or TLS handshake) must be complete.
    deadline: Option<Instant>,
    /// Bytes read but not yet consumed (those behind a PROXY header, or
    /// held back by the check of the first bytes), served before the
    /// socket's.
    pending: Vec<u8>,
    /// Until the first bytes show whether they start a PROXY header.
    first_bytes: Option<FirstBytes>,
}

/// The check of the first bytes: a PROXY header where none was expected
/// ends the connection. Done on every connection, whatever
/// `proxy_protocol_from` says: it costs nothing, and a POP3 server speaks
/// first, so this is the only place such a header shows (after our
/// greeting, or instead of a ClientHello).
struct FirstBytes {
    /// What arrived so far, all of it a beginning of a header signature.
    held: Vec<u8>,
    /// For the error: who sent it.
    peer: Option<SocketAddr>,
    via: Option<SocketAddr>,
}

impl FirstBytes {
    fn new(peer: Option<SocketAddr>, via: Option<SocketAddr>) -> Self {
        FirstBytes {
            held: Vec::new(),
            peer,
            via,
        }
    }
}

impl Duplex {
    /// With a deadline, each read waits only for the time left, so a client
    /// that sends a byte now and then cannot stretch one line for ever.
    fn read_socket(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(deadline) = self.deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            self.reader.set_read_timeout(left)?;
        }
        self.reader.read(buf)
    }

    /// Pending bytes first, then the socket; no check of the first bytes.
    fn read_unchecked(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pending.is_empty() {
            return self.read_socket(buf);
        }
        let n = self.pending.len().min(buf.len());
        buf[..n].copy_from_slice(&self.pending[..n]);
        self.pending.drain(..n);
        Ok(n)
    }

    /// Puts bytes back in front of what is still to be read.
    fn unread(&mut self, bytes: &[u8]) {
        self.pending.splice(0..0, bytes.iter().copied());
    }

    /// While the first bytes could still start a PROXY header they are
    /// held back (a client that sends a lone CR LF waits for its next
    /// bytes to be answered); once they cannot, they are read as usual.
    fn read_checking(&mut self, buf: &mut [u8]) -> Result<usize, ClientError> {
        loop {
            let Some(check) = &self.first_bytes else {
                return Ok(self.read_unchecked(buf)?);
            };
            match proxy::start(&check.held) {
                proxy::Start::Header => {
                    return Err(ClientError::UnexpectedHeader(proxy::UnexpectedHeader {
                        peer: check.peer,
                        via: check.via,
                    }));
                }
                proxy::Start::Other => {
                    self.release_held();
                    continue;
                }
                proxy::Start::Undecided => {}
            }
            let n = self.read_unchecked(buf)?;
            if n == 0 {
                // The end of the stream: what was held is all there is.
                self.release_held();
                return Ok(self.read_unchecked(buf)?);
            }
            if let Some(check) = &mut self.first_bytes {
                check.held.extend_from_slice(&buf[..n]);
            }
        }
    }

    /// Decides the check of the first bytes before a TLS handshake reads
    /// them: a header there is told as what it is, not as a handshake
    /// that failed. What was read stays to be read again.
    fn settle_first_bytes(&mut self) -> Result<(), ClientError> {
        if self.first_bytes.is_none() {
            return Ok(());
        }
        // A ClientHello is decided by its first byte; a header signature
        // by its first 12 at most.
        let mut first = [0u8; 64];
        let n = self.read_checking(&mut first)?;
        self.unread(&first[..n]);
        Ok(())
    }

    /// A read for the session, the check of the first bytes included.
    fn read_client(&mut self, buf: &mut [u8]) -> Result<usize, ClientError> {
        // Nothing to read into: not the end of the stream for the check.
        if buf.is_empty() {
            return Ok(0);
        }
        if self.first_bytes.is_some() {
            self.read_checking(buf)
        } else {
            Ok(self.read_unchecked(buf)?)
        }
    }

    fn release_held(&mut self) {
        if let Some(check) = self.first_bytes.take() {
            self.unread(&check.held);
        }
    }
}

/// What TLS reads through. The check of the first bytes is settled before
/// a handshake starts (see `ClientStream::start_tls`), so a header never
/// reaches TLS; were it to, it would be one more failed read.
impl Read for Duplex {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_client(buf).map_err(|e| match e {
            ClientError::Io(e) => e,
            header @ ClientError::UnexpectedHeader(_) => {
                io::Error::new(io::ErrorKind::InvalidData, header.to_string())
            }
        })
    }
}

impl Write for Duplex {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }
}

/// The client connection, in plaintext or inside TLS (implicit or STLS).
pub enum ClientStream {
    Plain(Duplex),
    Tls(Box<StreamOwned<ServerConnection, Duplex>>),
    /// After a failed handshake: nothing more can be said.
    Broken,
}

impl ClientStream {
    pub fn is_tls(&self) -> bool {
        matches!(self, ClientStream::Tls(_))
    }

    /// The TLS version negotiated with the client (`TLSv1.3`), if any.
    pub fn tls_version(&self) -> Option<&'static str> {
        let ClientStream::Tls(t) = self else {
            return None;
        };
        Some(match t.conn.protocol_version()? {
            rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
            rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2",
            // rustls speaks no other: a name for the impossible.
            _ => "other",
        })
    }

    /// Reads what the client sent; `Ok(0)` at the end of the stream.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, ClientError> {
        match self {
            ClientStream::Plain(d) => d.read_client(buf),
            ClientStream::Tls(t) => Ok(t.read(buf)?),
            ClientStream::Broken => Ok(0),
        }
    }

    /// From now on reads must be over by `deadline` (the idle timeout for
    /// one whole command line, counted from when it was awaited).
    pub fn set_read_deadline(&mut self, deadline: Instant) {
        match self {
            ClientStream::Plain(d) => d.deadline = Some(deadline),
            ClientStream::Tls(t) => t.sock.deadline = Some(deadline),
            ClientStream::Broken => {}
        }
    }

    /// Runs the server side of a TLS handshake to its end on the plain
    /// stream. Reads and writes keep the socket's idle timeout. A PROXY
    /// header instead of a ClientHello is `ClientError::UnexpectedHeader`.
    pub fn start_tls(&mut self, config: Arc<ServerConfig>) -> Result<(), ClientError> {
        let ClientStream::Plain(mut duplex) = std::mem::replace(self, ClientStream::Broken) else {
            return Err(io::Error::other("TLS is already active").into());
        };
        duplex.settle_first_bytes()?;
        let mut conn = ServerConnection::new(config).map_err(io::Error::other)?;
        while conn.is_handshaking() {
            conn.complete_io(&mut duplex)?;
        }
        *self = ClientStream::Tls(Box::new(StreamOwned::new(conn, duplex)));
        Ok(())
    }

    /// Ends TLS with close_notify, so the client can tell our close from a
    /// cut, then the connection (see `ClientRead::shutdown_write`).
    pub fn close(&mut self) {
        let duplex = match self {
            ClientStream::Tls(tls) => {
                tls.conn.send_close_notify();
                let _ = tls.conn.complete_io(&mut tls.sock);
                &tls.sock
            }
            ClientStream::Plain(duplex) => &*duplex,
            ClientStream::Broken => return,
        };
        if let Err(e) = duplex.reader.shutdown_write() {
            log::debug!("cannot shut down the client connection: {e}");
        }
    }
}

impl Write for ClientStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            ClientStream::Plain(d) => d.write(buf),
            ClientStream::Tls(t) => t.write(buf),
            ClientStream::Broken => Err(io::ErrorKind::BrokenPipe.into()),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            ClientStream::Plain(d) => d.flush(),
            ClientStream::Tls(t) => t.flush(),
            ClientStream::Broken => Ok(()),
        }
    }
}

/// Wraps a connected socket; reads and writes time out after `idle`.
pub fn from_socket(stream: TcpStream, idle: Duration) -> io::Result<ClientConn> {
    stream.set_read_timeout(Some(idle))?;
    stream.set_write_timeout(Some(idle))?;
    no_delay(&stream);
    let peer = stream.peer_addr().ok();
    let writer = stream.try_clone()?;
    Ok(ClientConn::new(Box::new(stream), Box::new(writer), peer))
}

/// The connection inetd gave us on stdin/stdout. For tests over pipes this
/// also works, without the idle timeout, which needs a socket.
pub fn from_stdio(idle: Duration) -> io::Result<ClientConn> {
    let input = io::stdin().as_fd().try_clone_to_owned()?;
    let output = io::stdout().as_fd().try_clone_to_owned()?;
    let input = TcpStream::from(input);
    if input.set_read_timeout(Some(idle)).is_err() {
        // Not a socket: a pipe from a test harness.
        return Ok(ClientConn::new(
            Box::new(File::from(OwnedFd::from(input))),
            Box::new(File::from(output)),
            None,
        ));
    }
    let output = TcpStream::from(output);
    // A failure here means stdout is not the same kind of socket; the idle
    // timeout on reads still applies.
    let _ = output.set_write_timeout(Some(idle));
    no_delay(&output);
    let peer = input.peer_addr().ok().or_else(remote_addr_from_env);
    Ok(ClientConn::new(Box::new(input), Box::new(output), peer))
}

/// Replies go out whole (the driver buffers them and writes each batch
/// once), so Nagle's algorithm only delays: with pipelined commands it held
/// the second reply until the client's delayed ACK, 40 ms on Linux (seen:
/// USER and PASS in one segment, 46 ms a session instead of 12).
fn no_delay(stream: &TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        log::debug!("cannot set TCP_NODELAY on the client socket: {e}");
    }
}

/// Whether stdin is a socket (inetd) rather than a terminal or a file.
pub fn stdin_is_socket() -> bool {
    io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map(|fd| TcpStream::from(fd).set_read_timeout(None).is_ok())
        .unwrap_or(false)
}

/// What systemd passed us, if anything: a connection (`Accept=yes`) or a
/// listening socket (`Accept=no`).
pub enum Systemd {
    Connection(TcpStream),
    Listener(TcpListener),
}

/// Takes fd 3 if `LISTEN_PID` is this process and `LISTEN_FDS` >= 1
/// (sd_listen_fds(3), which also sets CLOEXEC so our children do not
/// inherit it), and clears the variables so that no child takes it either.
/// Must run before any thread is started.
pub fn from_systemd() -> io::Result<Option<Systemd>> {
    // SAFETY: called from main before any thread exists (see above).
    let mut fds = unsafe { sd_notify::listen_fds_and_unset_env()? };
    // SAFETY: as above.
    unsafe { std::env::remove_var("LISTEN_FDNAMES") };
    let Some(fd) = fds.next() else {
        return Ok(None);
    };
    // SAFETY: systemd hands this process the descriptor open and owned by
    // nobody else; it is taken exactly once, here.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let stream = TcpStream::from(fd);
    Ok(Some(match stream.peer_addr() {
        Err(e) if e.kind() == io::ErrorKind::NotConnected => {
            Systemd::Listener(TcpListener::from(OwnedFd::from(stream)))
        }
        _ => Systemd::Connection(stream),
    }))
}

/// systemd sets REMOTE_ADDR and REMOTE_PORT for `Accept=yes` services.
fn remote_addr_from_env() -> Option<SocketAddr> {
    let ip = std::env::var("REMOTE_ADDR").ok()?;
    let port = std::env::var("REMOTE_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    Some(SocketAddr::new(ip.parse().ok()?, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_mapped_peer_is_the_ipv4_address() {
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:4711".parse().unwrap();
        let peer = canonical_peer(mapped);
        assert_eq!(peer.to_string(), "127.0.0.1:4711");
        assert!(peer.ip().is_loopback());
        let v6: SocketAddr = "[::1]:110".parse().unwrap();
        assert_eq!(canonical_peer(v6), v6);
        let v4: SocketAddr = "192.0.2.7:995".parse().unwrap();
        assert_eq!(canonical_peer(v4), v4);
    }
}
