//! pop3server: a POP3 server (RFC 1939, RFC 2449) that holds no mail. Each
//! POP3 session is translated, live, into one IMAP session on a backend.
//!
//! Map of the crate:
//! - [`pop3`]: POP3 command parsing, replies, body encoding and the session
//!   state machine, all without I/O.
//! - [`maildrop`]: the session's snapshot: message numbers, UIDs, sizes,
//!   deletion marks; [`uidl`]: UIDL strings (templates, and the migration
//!   formats made from Gmail's id or a header digest).
//! - [`backend`]: the boundary between session and mail store: requests,
//!   typed answers and failures, and their IMAP implementation.
//! - [`imap`]: the backend client, the only code that speaks IMAP.
//! - [`lock`]: the per-user `flock`; [`clusterlock`]: the optional lease in
//!   Redis that spans front-ends, over [`redis`]; [`sizecache`]: message
//!   sizes (and header digests) by UID kept between sessions.
//! - [`route`]: which backend (and hosts) serves a user.
//! - [`check`]: the `--check` health probe.
//! - [`config`]: the configuration file and flags, validated.
//! - [`logging`]: syslog, journald or stderr.
//! - [`transport`]: how the client connection reaches the process (inetd,
//!   systemd, the standalone listener).
//! - [`driver`]: the thin I/O loop that runs one session.
//! - [`preload`], [`privilege`]: what a session reads while it may still be
//!   root, and how it then leaves root for good.
//! - [`tls`]: rustls set-up for both sides, and what a failed backend
//!   handshake means; [`fingerprint`]: certificate pins.
//! - [`limits`]: every limit and default timeout, with reasons.
//! - [`buffers`]: spare transfer buffers, so a download does not make the
//!   allocator go to the kernel for every piece.
//! - [`decimal`], [`timeout`], [`secret`]: the one decimal parser, what a
//!   socket timeout looks like, secrets that never print.

pub mod admin;
pub mod backend;
pub mod buffers;
pub mod check;
pub mod clusterlock;
pub mod config;
pub mod decimal;
pub mod devices;
pub mod driver;
pub mod fingerprint;
pub mod imap;
pub mod limits;
pub mod lock;
pub mod logging;
pub mod maildrop;
pub mod oauth;
pub mod penalty;
pub mod pop3;
pub mod preload;
pub mod privilege;
pub mod redis;
pub mod route;
pub mod sasl;
pub mod secret;
pub mod sizecache;
#[cfg(test)]
mod test_support;
pub mod timeout;
pub mod tls;
pub mod transport;
pub mod uidl;
