//! POP3 replies and their wire encoding: status lines with RFC 2449/3206
//! response codes, and dot-stuffed multi-line bodies.

use std::time::Duration;

/// RFC 2449 / RFC 3206 extended response codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RespCode {
    InUse,
    Auth,
    SysTemp,
    SysPerm,
}

impl RespCode {
    fn as_str(self) -> &'static str {
        match self {
            RespCode::InUse => "IN-USE",
            RespCode::Auth => "AUTH",
            RespCode::SysTemp => "SYS/TEMP",
            RespCode::SysPerm => "SYS/PERM",
        }
    }
}

/// What a client is told while the provider throttles its mailbox: not
/// `[AUTH]` (its password may well be right), and when to come back.
pub fn throttled_text(wait: Option<Duration>) -> String {
    match wait {
        Some(wait) => format!(
            "The mail server is throttling this mailbox, try again in {} seconds",
            wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
        ),
        None => "The mail server is throttling this mailbox, try again later".into(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Ok(String),
    Err(Option<RespCode>, String),
    /// `+OK text`, then each line dot-stuffed, then `.`.
    MultiLine(String, Lines),
    /// `+ text`: a SASL challenge (RFC 5034), base64 or empty.
    Continuation(String),
}

impl Reply {
    pub fn ok(text: impl Into<String>) -> Reply {
        Reply::Ok(text.into())
    }

    pub fn err(text: impl Into<String>) -> Reply {
        Reply::Err(None, text.into())
    }

    pub fn err_code(code: RespCode, text: impl Into<String>) -> Reply {
        Reply::Err(Some(code), text.into())
    }

    /// The status line, for the debug trace; the lines of a multi-line
    /// reply only counted.
    pub fn for_log(&self) -> String {
        let mut line = Vec::new();
        match self {
            Reply::MultiLine(text, lines) => {
                status_line(&mut line, "+OK", None, text);
                let shown = String::from_utf8_lossy(&line).trim_end().to_string();
                return format!("{shown} (+ {} lines)", lines.len());
            }
            other => other.encode(&mut line),
        }
        String::from_utf8_lossy(&line).trim_end().to_string()
    }

    pub fn is_ok(&self) -> bool {
        !matches!(self, Reply::Err(..))
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Reply::Ok(text) => status_line(out, "+OK", None, text),
            Reply::Err(code, text) => status_line(out, "-ERR", *code, text),
            Reply::Continuation(text) => {
                out.extend_from_slice(b"+ ");
                out.extend_from_slice(text.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            Reply::MultiLine(text, lines) => {
                status_line(out, "+OK", None, text);
                out.reserve(lines.wire.len() + 3);
                out.extend_from_slice(&lines.wire);
                out.extend_from_slice(b".\r\n");
            }
        }
    }
}

/// The lines of a multi-line reply, kept as they go on the wire (each
/// dot-stuffed and ended by CRLF) in one buffer: a UIDL or LIST of 10,000
/// messages is one allocation, not 10,000.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lines {
    wire: Vec<u8>,
    count: usize,
}

impl Lines {
    pub fn with_capacity(bytes: usize) -> Lines {
        Lines {
            wire: Vec::with_capacity(bytes),
            count: 0,
        }
    }

    pub fn push(&mut self, line: &[u8]) {
        self.push_with(|out| out.extend_from_slice(line));
    }

    /// Adds the line that `write` appends to the buffer it is given.
    /// A line is text without CR or LF (a number, a UIDL, a capability);
    /// one that has them anyway is cut there, so it cannot end the reply
    /// early or inject a line.
    pub fn push_with(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        let start = self.wire.len();
        write(&mut self.wire);
        // Lines are short (a number and a UIDL): a plain scan is cheaper
        // than memchr's set-up, 10,000 times over.
        if let Some(cut) = self.wire[start..]
            .iter()
            .position(|&b| b == b'\r' || b == b'\n')
        {
            self.wire.truncate(start + cut);
        }
        if self.wire.get(start) == Some(&b'.') {
            self.wire.insert(start, b'.');
        }
        self.wire.extend_from_slice(b"\r\n");
        self.count += 1;
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

impl<T: AsRef<[u8]>> FromIterator<T> for Lines {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Lines {
        let mut lines = Lines::default();
        for line in iter {
            lines.push(line.as_ref());
        }
        lines
    }
}

fn status_line(out: &mut Vec<u8>, status: &str, code: Option<RespCode>, text: &str) {
    out.extend_from_slice(status.as_bytes());
    if let Some(code) = code {
        out.extend_from_slice(b" [");
        out.extend_from_slice(code.as_str().as_bytes());
        out.push(b']');
    }
    if !text.is_empty() {
        out.push(b' ');
        // Reply texts may quote backend messages: never let them break the line.
        out.extend(
            text.bytes()
                .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
        );
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(r: Reply) -> String {
        let mut v = Vec::new();
        r.encode(&mut v);
        String::from_utf8(v).unwrap_or_default()
    }

    #[test]
    fn response_codes_are_bracketed() {
        assert_eq!(
            wire(Reply::err_code(RespCode::InUse, "locked")),
            "-ERR [IN-USE] locked\r\n"
        );
        assert_eq!(
            wire(Reply::err_code(RespCode::SysTemp, "x")),
            "-ERR [SYS/TEMP] x\r\n"
        );
        assert_eq!(wire(Reply::ok("")), "+OK\r\n");
    }

    #[test]
    fn multi_line_bodies_are_dot_stuffed() {
        let r = Reply::MultiLine("2 lines".into(), [".hidden", "x"].into_iter().collect());
        assert_eq!(wire(r), "+OK 2 lines\r\n..hidden\r\nx\r\n.\r\n");
    }

    #[test]
    fn a_line_written_in_place_is_stuffed_and_cannot_break_the_reply() {
        let mut lines = Lines::with_capacity(64);
        lines.push_with(|out| out.extend_from_slice(b"1 abc"));
        lines.push_with(|out| out.extend_from_slice(b".x"));
        lines.push_with(|out| out.extend_from_slice(b"2 ok\r\n.\r\n+OK injected"));
        lines.push(b"");
        assert_eq!(lines.len(), 4);
        let r = Reply::MultiLine(String::new(), lines);
        assert_eq!(wire(r), "+OK\r\n1 abc\r\n..x\r\n2 ok\r\n\r\n.\r\n");
    }

    #[test]
    fn reply_text_cannot_inject_lines() {
        assert_eq!(wire(Reply::err("a\r\n+OK b")), "-ERR a  +OK b\r\n");
    }
}
