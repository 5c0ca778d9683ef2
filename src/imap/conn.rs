//! The byte stream to the backend with a deadline per command: every read and
//! write gets the time left until the deadline as its socket timeout, so a
//! backend that stalls, or trickles bytes, cannot hold a session longer
//! than the per-command timeout.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::ImapError;
use crate::limits::{BACKEND_READ_CHUNK, BACKEND_READ_START};
use crate::logging::printable;
use crate::timeout::is_timeout;
use crate::tls::Fingerprint;

/// A stream to the backend: plain TCP, TLS over it, a scripted peer in
/// tests. Every read and write must be over by the deadline.
pub trait Transport: Read + Write + Send {
    fn set_deadline(&mut self, deadline: Instant);

    /// The fingerprint of the certificate the backend showed, over TLS.
    fn peer_fingerprint(&self) -> Option<Fingerprint> {
        None
    }
}

/// The TCP socket to the backend with a deadline: before every system call
/// the socket timeout is set to the time left, so no sequence of reads (one
/// rustls read may make several, a backend may trickle bytes) outlasts it.
pub struct DeadlineSocket {
    sock: TcpStream,
    deadline: Instant,
}

impl DeadlineSocket {
    pub fn new(sock: TcpStream, deadline: Instant) -> Self {
        DeadlineSocket { sock, deadline }
    }

    pub fn try_clone(&self) -> io::Result<DeadlineSocket> {
        Ok(DeadlineSocket {
            sock: self.sock.try_clone()?,
            deadline: self.deadline,
        })
    }

    fn left(&self) -> io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        Ok(left)
    }
}

impl Read for DeadlineSocket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.sock.set_read_timeout(Some(self.left()?))?;
        self.sock.read(buf)
    }
}

impl Write for DeadlineSocket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.sock.set_write_timeout(Some(self.left()?))?;
        self.sock.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.sock.flush()
    }
}

impl Transport for DeadlineSocket {
    fn set_deadline(&mut self, deadline: Instant) {
        self.deadline = deadline;
    }
}

pub struct Conn {
    io: Box<dyn Transport>,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    timeout: Duration,
    deadline: Instant,
}

impl Conn {
    pub fn new(io: Box<dyn Transport>, timeout: Duration) -> Self {
        Conn {
            io,
            buf: vec![0; BACKEND_READ_START],
            start: 0,
            end: 0,
            timeout,
            deadline: Instant::now() + timeout,
        }
    }

    pub fn peer_fingerprint(&self) -> Option<Fingerprint> {
        self.io.peer_fingerprint()
    }

    /// Whether bytes were received that no response has consumed yet.
    pub fn has_buffered(&self) -> bool {
        self.start < self.end
    }

    /// Starts the clock for one command (or for the greeting).
    pub fn start_deadline(&mut self) {
        self.deadline = Instant::now() + self.timeout;
    }

    fn arm(&mut self) -> Result<(), ImapError> {
        if Instant::now() >= self.deadline {
            return Err(ImapError::Timeout);
        }
        self.io.set_deadline(self.deadline);
        Ok(())
    }

    fn fill(&mut self) -> Result<(), ImapError> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        self.arm()?;
        match self.io.read(&mut self.buf[self.end..]) {
            Ok(0) => Err(ImapError::Closed),
            Ok(n) => {
                self.end += n;
                // A read that fills the buffer means a body is coming: from
                // then on, reads of the full chunk.
                if self.end == self.buf.len() && self.buf.len() < BACKEND_READ_CHUNK {
                    self.buf.resize(BACKEND_READ_CHUNK, 0);
                }
                Ok(())
            }
            Err(e) if is_timeout(&e) => Err(ImapError::Timeout),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
            Err(e) => Err(ImapError::Io(e)),
        }
    }

    /// Reads one line, returned without its CRLF. Longer than `max`: error.
    pub fn read_line(&mut self, max: usize) -> Result<Vec<u8>, ImapError> {
        let mut line = Vec::new();
        loop {
            let avail = &self.buf[self.start..self.end];
            if let Some(lf) = memchr::memchr(b'\n', avail) {
                line.extend_from_slice(&avail[..lf]);
                self.start += lf + 1;
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                // Lines only: literals (message bodies) are read apart and
                // never shown; the line before one ends in its length.
                log::debug!("IMAP S: {}", trace_text(&line));
                return Ok(line);
            }
            line.extend_from_slice(avail);
            self.start = self.end;
            if line.len() > max {
                return Err(ImapError::Protocol(format!(
                    "response line longer than {max} bytes"
                )));
            }
            self.fill()?;
        }
    }

    /// Reads exactly `n` bytes (a literal).
    pub fn read_exact(&mut self, n: usize) -> Result<Vec<u8>, ImapError> {
        let mut out = Vec::with_capacity(n);
        self.read_exact_into(n, &mut out)?;
        Ok(out)
    }

    /// Appends exactly `n` bytes to `out` (a piece of a body, into a
    /// recycled buffer).
    pub fn read_exact_into(&mut self, n: usize, out: &mut Vec<u8>) -> Result<(), ImapError> {
        let n = out.len() + n;
        while out.len() < n {
            if self.start == self.end {
                self.fill()?;
                continue;
            }
            let take = (n - out.len()).min(self.end - self.start);
            out.extend_from_slice(&self.buf[self.start..self.start + take]);
            self.start += take;
        }
        Ok(())
    }

    pub fn write_all(&mut self, bytes: &[u8]) -> Result<(), ImapError> {
        self.arm()?;
        self.io
            .write_all(bytes)
            .and_then(|_| self.io.flush())
            .map_err(|e| {
                if is_timeout(&e) {
                    ImapError::Timeout
                } else {
                    ImapError::Io(e)
                }
            })
    }
}

/// A line of the backend exchange for the debug trace (`-d`): printable,
/// and cut short, since a line may be a megabyte of UIDs.
pub(super) fn trace_text(bytes: &[u8]) -> String {
    const SHOWN: usize = 300;
    if bytes.len() <= SHOWN {
        return printable(bytes);
    }
    format!("{}... ({} bytes)", printable(&bytes[..SHOWN]), bytes.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::thread;

    #[test]
    fn a_backend_that_trickles_bytes_cannot_outlast_the_deadline() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let peer = thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            // One byte every 50 ms, 40 bytes, no line end: each read gets
            // something, so only a deadline over all of them can stop it.
            for _ in 0..40 {
                if s.write_all(b"x").is_err() {
                    break;
                }
                thread::sleep(Duration::from_millis(50));
            }
        });
        let sock = TcpStream::connect(addr).expect("connect");
        // Several reads inside one call, as one rustls read of a TLS record
        // makes: the deadline holds over all of them.
        let mut sock = DeadlineSocket::new(sock, Instant::now() + Duration::from_millis(300));
        let t0 = Instant::now();
        let r = sock.read_exact(&mut [0u8; 40]);
        let took = t0.elapsed();
        assert!(r.as_ref().is_err_and(is_timeout), "{r:?}");
        assert!(took < Duration::from_millis(1000), "{took:?}");
        let conn = sock;
        drop(conn);
        let _ = peer.join();
    }
}
