//! [`ImapError`]: every way a backend command can fail, and how each reads
//! in the log. It owns the error and its text, and turns a refused command's
//! tagged answer into one (`StatusInfo::ok`); what a failure means for the
//! POP3 session is decided by the caller (`crate::backend`), not here, and
//! nothing here sends or reads a byte.

use std::fmt;

use super::response::{Code, Status, StatusInfo};

#[derive(Debug)]
pub enum ImapError {
    /// The host name did not resolve.
    Resolve(String),
    /// No address of the backend accepted a connection.
    Connect(String),
    Timeout,
    Closed,
    Io(std::io::Error),
    /// The backend said something we cannot parse or did not expect.
    Protocol(String),
    /// TLS set-up or handshake failed, for another reason than the
    /// certificate.
    Tls(String),
    /// The backend's certificate was refused: another host of the same
    /// backend is not tried (the problem is the configuration, or an attack).
    Certificate(String),
    /// The backend ended the connection (`* BYE`).
    Bye(String),
    /// A command was answered NO or BAD.
    Refused {
        command: &'static str,
        info: StatusInfo,
    },
    /// Our messages were flagged `\Deleted`, then the expunge failed
    /// without an answer (the connection broke or timed out): whether they
    /// are gone is not known, and they may still carry the flag.
    Unconfirmed(Box<ImapError>),
}

impl fmt::Display for ImapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImapError::Resolve(why) => write!(f, "cannot resolve backend host: {why}"),
            ImapError::Connect(why) => write!(f, "cannot connect to backend: {why}"),
            ImapError::Timeout => f.write_str("backend timed out"),
            ImapError::Closed => f.write_str("backend closed the connection"),
            ImapError::Io(e) => write!(f, "backend I/O error: {e}"),
            ImapError::Protocol(why) => write!(f, "backend protocol error: {why}"),
            ImapError::Tls(why) | ImapError::Certificate(why) => {
                write!(f, "backend TLS failed: {why}")
            }
            ImapError::Bye(text) => write!(f, "backend said BYE: {text}"),
            ImapError::Unconfirmed(inner) => {
                write!(f, "\\Deleted was set, then the expunge failed: {inner}")
            }
            ImapError::Refused { command, info } => {
                let code = info
                    .code
                    .as_ref()
                    .map(|c| format!("[{}] ", c.name))
                    .unwrap_or_default();
                write!(
                    f,
                    "backend refused {command}: {:?} {code}{}",
                    info.status, info.text
                )
            }
        }
    }
}

impl std::error::Error for ImapError {}

impl ImapError {
    /// A `BYE` with its response code kept in the text (`[CODE] text`):
    /// the code can be what says why (a provider's `[THROTTLED]`).
    pub(super) fn bye(code: Option<Code>, text: String) -> ImapError {
        match code {
            Some(code) => ImapError::Bye(format!("[{}] {text}", code.name)),
            None => ImapError::Bye(text),
        }
    }
}

impl StatusInfo {
    pub(super) fn ok(self, command: &'static str) -> Result<StatusInfo, ImapError> {
        if self.status == Status::Ok {
            Ok(self)
        } else {
            Err(ImapError::Refused {
                command,
                info: self,
            })
        }
    }
}
