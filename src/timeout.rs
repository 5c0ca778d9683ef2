//! How a socket timeout shows in `std::io`: a read or write past
//! `SO_RCVTIMEO`/`SO_SNDTIMEO` fails with `WouldBlock` on Unix and
//! `TimedOut` elsewhere. Shared by the client side and the backend side;
//! and connecting to the first address that answers, within one deadline
//! (the IMAP backend, the cluster lock's Redis).

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

pub fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Tries `addrs` in order until one accepts, all within `timeout`; the
/// error names the last address tried and why it failed.
pub fn connect_within(addrs: &[SocketAddr], timeout: Duration) -> Result<TcpStream, String> {
    let deadline = Instant::now() + timeout;
    let mut last = "no addresses".to_string();
    for addr in addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            last = format!("{addr}: timed out");
            break;
        }
        match TcpStream::connect_timeout(addr, left) {
            Ok(s) => return Ok(s),
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    Err(last)
}
