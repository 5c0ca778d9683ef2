//! POP3 replies and their wire encoding: status lines with RFC 2449/3206
//! response codes, and dot-stuffed multi-line bodies.

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

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Ok(String),
    Err(Option<RespCode>, String),
    /// `+OK text`, then each line dot-stuffed, then `.`.
    MultiLine(String, Vec<Vec<u8>>),
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
                // At most a stuffed dot and CRLF more per line, and the end.
                out.reserve(lines.iter().map(|l| l.len() + 3).sum::<usize>() + 3);
                for line in lines {
                    if line.first() == Some(&b'.') {
                        out.push(b'.');
                    }
                    out.extend_from_slice(line);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b".\r\n");
            }
        }
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
        let r = Reply::MultiLine("2 lines".into(), vec![b".hidden".to_vec(), b"x".to_vec()]);
        assert_eq!(wire(r), "+OK 2 lines\r\n..hidden\r\nx\r\n.\r\n");
    }

    #[test]
    fn reply_text_cannot_inject_lines() {
        assert_eq!(wire(Reply::err("a\r\n+OK b")), "-ERR a  +OK b\r\n");
    }
}
