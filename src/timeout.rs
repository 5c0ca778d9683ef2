//! How a socket timeout shows in `std::io`: a read or write past
//! `SO_RCVTIMEO`/`SO_SNDTIMEO` fails with `WouldBlock` on Unix and
//! `TimedOut` elsewhere. Shared by the client side and the backend side.

use std::io;

pub fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}
