//! pop3server: a POP3 server (RFC 1939, RFC 2449) that holds no mail. Each
//! POP3 session is translated, live, into one IMAP session on a backend.
//!
//! Map of the crate, top of the house first; each module uses only those
//! after it (`scripts/check-layers.py` holds the code to that, and
//! ARCHITECTURE.md says why the layout is what it is):
//!
//! - [`config`]: the file and the flags, layered with their origins and
//!   assembled into each module's own settings; only the top of the house
//!   (the binary, [`driver`], [`check`], [`admin`]) sees the whole.
//! - [`admin`]: `--hash-password` and `--oauth-consent`; [`check`]: the
//!   `--check` health probe.
//! - [`driver`]: the thin I/O loop that runs one session.
//! - [`transport`]: how the client connection reaches the process (inetd,
//!   systemd, the standalone listener, a balancer's PROXY header).
//! - [`pop3`]: POP3 command parsing, replies, body encoding and the session
//!   state machine, all without I/O.
//! - [`backend`]: the boundary between session and mail store (requests,
//!   typed answers and failures, the `Backend` trait) and its IMAP
//!   implementation in rooms: connection, login, lock, snapshot.
//! - [`imap`]: the backend client, the only code that speaks IMAP.
//! - [`preload`], [`privilege`]: what a session reads while it may still be
//!   root, and how it then leaves root for good.
//! - [`devices`]: device accounts, the login penalty, and the OAuth2 token
//!   sources that log devices in.
//! - [`route`]: which backend (and hosts) serves a user.
//! - [`lock`]: the per-user `flock`, and the optional lease in Redis that
//!   spans front-ends.
//! - [`maildrop`]: the session's snapshot (message numbers, UIDs, sizes,
//!   deletion marks), its UIDL strings and the snapshot cache on disk.
//! - [`tls`]: rustls set-up for both sides, what a failed backend handshake
//!   means, and certificate pins.
//! - [`logging`]: syslog, journald or stderr, and printable client text.
//! - [`sasl`]: the token mechanisms (XOAUTH2, OAUTHBEARER).
//! - [`buffers`]: spare transfer buffers, so a download does not make the
//!   allocator go to the kernel for every piece.
//! - [`limits`]: every limit and default timeout, with reasons.
//! - [`decimal`], [`timeout`], [`secret`]: the one decimal parser, what a
//!   socket timeout looks like, secrets that never print.
//!
//! Public are the modules the binary and the fuzz targets use; the rest is
//! the crate's own.

pub mod admin;
pub mod backend;
mod buffers;
pub mod check;
pub mod config;
mod decimal;
mod devices;
pub mod driver;
pub mod imap;
mod limits;
mod lock;
pub mod logging;
pub mod maildrop;
pub mod pop3;
pub mod preload;
pub mod privilege;
mod route;
mod sasl;
mod secret;
pub mod stats;
#[cfg(test)]
mod test_support;
mod timeout;
pub mod tls;
pub mod transport;
