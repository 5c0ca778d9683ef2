//! The byte stream to the backend with a deadline per command: every read and
//! write gets the time left until the deadline as its socket timeout, so a
//! backend that stalls, or trickles bytes, cannot hold a session longer
//! than the per-command timeout.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::ImapError;
use crate::limits::BACKEND_READ_CHUNK;
use crate::timeout::is_timeout;

/// A stream to the backend: plain TCP now, TLS later, a scripted peer in
/// tests. Timeouts apply to the underlying socket.
pub trait Transport: Read + Write + Send {
    fn set_timeouts(&mut self, timeout: Duration) -> io::Result<()>;
}

impl Transport for TcpStream {
    fn set_timeouts(&mut self, timeout: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(timeout))?;
        self.set_write_timeout(Some(timeout))
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
            buf: vec![0; BACKEND_READ_CHUNK],
            start: 0,
            end: 0,
            timeout,
            deadline: Instant::now() + timeout,
        }
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
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ImapError::Timeout);
        }
        self.io.set_timeouts(left).map_err(ImapError::Io)
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
            if let Some(lf) = avail.iter().position(|&b| b == b'\n') {
                line.extend_from_slice(&avail[..lf]);
                self.start += lf + 1;
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
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
        while out.len() < n {
            if self.start == self.end {
                self.fill()?;
                continue;
            }
            let take = (n - out.len()).min(self.end - self.start);
            out.extend_from_slice(&self.buf[self.start..self.start + take]);
            self.start += take;
        }
        Ok(out)
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
