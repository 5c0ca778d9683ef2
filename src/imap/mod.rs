//! The IMAP backend: the only code that speaks IMAP (RFC 3501, UIDPLUS
//! RFC 4315, SASL-IR RFC 4959). It knows nothing of POP3; it offers the
//! operations a POP3 session needs, each one IMAP command or a short
//! sequence, with a deadline per command.

mod conn;
mod response;

pub use conn::Transport;

use std::fmt;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::maildrop::BackendMessage;
use crate::secret::Secret;
use conn::Conn;
use response::{Code, FetchData, Response, Status, StatusInfo, read_response};

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
    /// The backend ended the connection (`* BYE`).
    Bye(String),
    /// A command was answered NO or BAD.
    Refused {
        command: &'static str,
        info: StatusInfo,
    },
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
            ImapError::Bye(text) => write!(f, "backend said BYE: {text}"),
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

/// Outcome of a login attempt that reached the backend's verdict.
#[derive(Debug, PartialEq, Eq)]
pub enum Login {
    Ok,
    /// Wrong credentials (or credentials we refused to send).
    Rejected,
    /// The backend refused for a reason that may pass (`[UNAVAILABLE]`...).
    TemporaryFailure(String),
}

#[derive(Debug, PartialEq, Eq)]
pub struct Selected {
    pub exists: u32,
    pub uid_validity: u32,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Expunged {
    Done,
    /// Without UIDPLUS another client's `\Deleted` messages were present:
    /// ours stay flagged rather than expunging theirs.
    LeftFlagged,
}

/// Where the backend is and how long to wait for it.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub connect_timeout: Duration,
    pub timeout: Duration,
}

pub struct Client {
    conn: Conn,
    tag: u32,
    capabilities: Vec<String>,
}

/// Part of a command: text sent as is, or bytes sent as a literal.
enum Arg<'a> {
    Text(&'a [u8]),
    Literal(&'a [u8]),
    /// Sent as its own line after the backend's `+` (a SASL response).
    Continuation(&'a [u8]),
}

impl Client {
    /// Opens a TCP connection and reads the greeting.
    pub fn connect(endpoint: &Endpoint) -> Result<Client, ImapError> {
        let stream = tcp_connect(endpoint)?;
        stream.set_nodelay(true).map_err(ImapError::Io)?;
        Client::start(Box::new(stream), endpoint.timeout)
    }

    /// Reads the greeting on an established stream (TCP, TLS, a test peer).
    pub fn start(io: Box<dyn Transport>, timeout: Duration) -> Result<Client, ImapError> {
        let mut client = Client {
            conn: Conn::new(io, timeout),
            tag: 0,
            capabilities: Vec::new(),
        };
        client.conn.start_deadline();
        match read_response(&mut client.conn)? {
            Response::Status(StatusInfo {
                status: Status::Ok,
                code,
                ..
            }) => {
                if let Some(caps) = capability_code(&code) {
                    client.capabilities = caps;
                }
            }
            Response::Status(StatusInfo {
                status: Status::Bye,
                text,
                ..
            }) => return Err(ImapError::Bye(text)),
            Response::Status(StatusInfo {
                status: Status::Preauth,
                ..
            }) => {
                return Err(ImapError::Protocol(
                    "backend greeted with PREAUTH: it must ask for the user's login".into(),
                ));
            }
            other => {
                return Err(ImapError::Protocol(format!(
                    "unexpected greeting {other:?}"
                )));
            }
        }
        if client.capabilities.is_empty() {
            client.refresh_capabilities()?;
        }
        if !client.has("IMAP4REV1") && !client.has("IMAP4REV2") {
            return Err(ImapError::Protocol(
                "backend does not announce IMAP4rev1".into(),
            ));
        }
        Ok(client)
    }

    pub fn capabilities(&self) -> &[String] {
        &self.capabilities
    }

    fn has(&self, cap: &str) -> bool {
        self.capabilities.iter().any(|c| c == cap)
    }

    fn refresh_capabilities(&mut self) -> Result<(), ImapError> {
        let mut caps = None;
        self.run("CAPABILITY", &[Arg::Text(b"CAPABILITY")], |r| {
            if let Response::Capability(c) = r {
                caps = Some(c);
            }
            Ok(())
        })?
        .ok("CAPABILITY")?;
        self.capabilities =
            caps.ok_or_else(|| ImapError::Protocol("no CAPABILITY response".into()))?;
        Ok(())
    }

    /// Logs in with `LOGIN`, or `AUTHENTICATE PLAIN` when the backend says
    /// LOGINDISABLED. Credentials only ever travel as quoted strings,
    /// literals or base64: no byte of them can become IMAP syntax.
    pub fn login(&mut self, user: &[u8], password: &Secret) -> Result<Login, ImapError> {
        let forbidden = |b: &[u8]| b.iter().any(|&c| matches!(c, b'\r' | b'\n' | 0));
        if user.is_empty() || forbidden(user) || forbidden(password.expose()) {
            return Ok(Login::Rejected);
        }
        let done = if self.has("LOGINDISABLED") {
            if !self.has("AUTH=PLAIN") {
                return Err(ImapError::Protocol(
                    "backend has LOGINDISABLED and no AUTH=PLAIN".into(),
                ));
            }
            self.authenticate_plain(user, password)?
        } else {
            let (u, p) = (astring(user), astring(password.expose()));
            self.run(
                "LOGIN",
                &[Arg::Text(b"LOGIN "), u, Arg::Text(b" "), p],
                |_| Ok(()),
            )?
        };
        match done.status {
            Status::Ok => {
                if let Some(c) = capability_code(&done.code) {
                    self.capabilities = c;
                } else {
                    self.refresh_capabilities()?;
                }
                Ok(Login::Ok)
            }
            Status::No if is_temporary(&done.code) => Ok(Login::TemporaryFailure(done.text)),
            Status::No => Ok(Login::Rejected),
            _ => Err(ImapError::Refused {
                command: "LOGIN",
                info: done,
            }),
        }
    }

    fn authenticate_plain(
        &mut self,
        user: &[u8],
        password: &Secret,
    ) -> Result<StatusInfo, ImapError> {
        let mut raw = Vec::with_capacity(user.len() + password.expose().len() + 2);
        raw.push(0);
        raw.extend_from_slice(user);
        raw.push(0);
        raw.extend_from_slice(password.expose());
        let encoded = Secret::new(BASE64.encode(&raw).into_bytes());
        drop(Secret::new(raw));
        let initial: &[Arg] = if self.has("SASL-IR") {
            &[
                Arg::Text(b"AUTHENTICATE PLAIN "),
                Arg::Text(encoded.expose()),
            ]
        } else {
            &[
                Arg::Text(b"AUTHENTICATE PLAIN"),
                Arg::Continuation(encoded.expose()),
            ]
        };
        self.run("AUTHENTICATE", initial, |_| Ok(()))
    }

    /// SELECT (or EXAMINE when read-only) the folder.
    pub fn select(&mut self, folder: &str, read_only: bool) -> Result<Selected, ImapError> {
        let (command, verb): (&'static str, &[u8]) = if read_only {
            ("EXAMINE", b"EXAMINE ")
        } else {
            ("SELECT", b"SELECT ")
        };
        let mut exists = None;
        let mut uid_validity = None;
        let done = self.run(
            command,
            &[Arg::Text(verb), astring(folder.as_bytes())],
            |r| {
                match r {
                    Response::Exists(n) => exists = Some(n),
                    Response::Status(StatusInfo {
                        code: Some(Code { name, args }),
                        ..
                    }) if name == "UIDVALIDITY" => {
                        uid_validity = Some(args.trim().parse::<u32>().map_err(|_| {
                            ImapError::Protocol(format!("bad UIDVALIDITY {args:?}"))
                        })?);
                    }
                    _ => {}
                }
                Ok(())
            },
        )?;
        done.ok(command)?;
        Ok(Selected {
            exists: exists
                .ok_or_else(|| ImapError::Protocol(format!("{command} gave no EXISTS")))?,
            uid_validity: uid_validity
                .ok_or_else(|| ImapError::Protocol(format!("{command} gave no UIDVALIDITY")))?,
        })
    }

    /// UIDs and sizes of all messages, in one command, without bodies.
    pub fn snapshot(&mut self, selected: &Selected) -> Result<Vec<BackendMessage>, ImapError> {
        let mut messages = Vec::with_capacity(selected.exists as usize);
        if selected.exists == 0 {
            return Ok(messages);
        }
        self.run(
            "UID FETCH",
            &[Arg::Text(b"UID FETCH 1:* (UID RFC822.SIZE)")],
            |r| {
                if let Response::Fetch(FetchData {
                    uid: Some(uid),
                    size: Some(size),
                    ..
                }) = r
                {
                    messages.push(BackendMessage { uid, size });
                }
                Ok(())
            },
        )?
        .ok("UID FETCH")?;
        Ok(messages)
    }

    /// Bytes `offset..offset+len` of the message (fewer at its end), without
    /// setting `\Seen`; `None` if the message no longer exists.
    pub fn fetch_piece(
        &mut self,
        uid: u32,
        offset: u64,
        len: u32,
    ) -> Result<Option<Vec<u8>>, ImapError> {
        let command = format!("UID FETCH {uid} (UID BODY.PEEK[]<{offset}.{len}>)");
        let mut body = None;
        let done = self.run("UID FETCH", &[Arg::Text(command.as_bytes())], |r| {
            if let Response::Fetch(FetchData {
                uid: got,
                body: Some(b),
                ..
            }) = r
                && got.is_none_or(|g| g == uid)
            {
                if b.len() > len as usize {
                    return Err(ImapError::Protocol(format!(
                        "asked for {len} bytes, got {}",
                        b.len()
                    )));
                }
                body = Some(b);
            }
            Ok(())
        })?;
        match done.status {
            Status::Ok => Ok(body),
            Status::No
                if done
                    .code
                    .as_ref()
                    .is_some_and(|c| c.name == "EXPUNGEISSUED") =>
            {
                Ok(None)
            }
            _ => Err(ImapError::Refused {
                command: "UID FETCH",
                info: done,
            }),
        }
    }

    pub fn mark_seen(&mut self, uid: u32) -> Result<(), ImapError> {
        let command = format!("UID STORE {uid} +FLAGS.SILENT (\\Seen)");
        self.run("UID STORE", &[Arg::Text(command.as_bytes())], |_| Ok(()))?
            .ok("UID STORE")?;
        Ok(())
    }

    /// Removes exactly these messages: `\Deleted` then `UID EXPUNGE`; without
    /// UIDPLUS a plain EXPUNGE only if no other message is `\Deleted`.
    pub fn expunge(&mut self, uids: &[u32]) -> Result<Expunged, ImapError> {
        if uids.is_empty() {
            return Ok(Expunged::Done);
        }
        let set = uid_set(uids);
        let store = format!("UID STORE {set} +FLAGS.SILENT (\\Deleted)");
        self.run("UID STORE", &[Arg::Text(store.as_bytes())], |_| Ok(()))?
            .ok("UID STORE")?;
        if self.has("UIDPLUS") {
            let expunge = format!("UID EXPUNGE {set}");
            self.run("UID EXPUNGE", &[Arg::Text(expunge.as_bytes())], |_| Ok(()))?
                .ok("UID EXPUNGE")?;
            return Ok(Expunged::Done);
        }
        let mut flagged = Vec::new();
        self.run("UID SEARCH", &[Arg::Text(b"UID SEARCH DELETED")], |r| {
            if let Response::Search(found) = r {
                flagged.extend(found);
            }
            Ok(())
        })?
        .ok("UID SEARCH")?;
        if flagged.iter().any(|u| !uids.contains(u)) {
            return Ok(Expunged::LeftFlagged);
        }
        self.run("EXPUNGE", &[Arg::Text(b"EXPUNGE")], |_| Ok(()))?
            .ok("EXPUNGE")?;
        Ok(Expunged::Done)
    }

    /// Ends the IMAP session; never CLOSE, which would expunge every
    /// `\Deleted` message and not only ours. Errors do not matter here.
    pub fn logout(mut self) {
        let _ = self.run("LOGOUT", &[Arg::Text(b"LOGOUT")], |_| Ok(()));
    }

    fn current_tag(&self) -> String {
        format!("A{:04}", self.tag)
    }

    /// Sends a command (waiting for `+` before each literal or continuation) and reads up to
    /// its tagged response, handing every untagged response to `on_data`.
    fn run(
        &mut self,
        command: &'static str,
        args: &[Arg],
        mut on_data: impl FnMut(Response) -> Result<(), ImapError>,
    ) -> Result<StatusInfo, ImapError> {
        self.tag += 1;
        self.conn.start_deadline();
        let mut pending = self.current_tag().into_bytes();
        pending.push(b' ');
        for arg in args {
            match arg {
                Arg::Text(t) => pending.extend_from_slice(t),
                Arg::Literal(bytes) | Arg::Continuation(bytes) => {
                    if let Arg::Literal(_) = arg {
                        pending.extend_from_slice(format!("{{{}}}", bytes.len()).as_bytes());
                    }
                    pending.extend_from_slice(b"\r\n");
                    self.conn.write_all(&pending)?;
                    pending.clear();
                    if let Some(done) = self.until_continuation_or_done(command)? {
                        return Ok(done);
                    }
                    pending.extend_from_slice(bytes);
                }
            }
        }
        pending.extend_from_slice(b"\r\n");
        self.conn.write_all(&pending)?;
        self.finish_command(command, &mut on_data)
    }

    /// Waits for a `+` continuation; a tagged answer instead ends the command.
    fn until_continuation_or_done(
        &mut self,
        command: &'static str,
    ) -> Result<Option<StatusInfo>, ImapError> {
        let tag = self.current_tag();
        loop {
            match read_response(&mut self.conn)? {
                Response::Continuation => return Ok(None),
                Response::Tagged(t, info) if t == tag => return Ok(Some(info)),
                Response::Tagged(t, _) => {
                    return Err(ImapError::Protocol(format!(
                        "unexpected tag {t} for {command}"
                    )));
                }
                Response::Status(StatusInfo {
                    status: Status::Bye,
                    text,
                    ..
                }) => return Err(ImapError::Bye(text)),
                _ => {}
            }
        }
    }

    fn finish_command(
        &mut self,
        command: &'static str,
        on_data: &mut dyn FnMut(Response) -> Result<(), ImapError>,
    ) -> Result<StatusInfo, ImapError> {
        let tag = self.current_tag();
        loop {
            match read_response(&mut self.conn)? {
                Response::Tagged(t, info) if t == tag => return Ok(info),
                Response::Tagged(t, _) => {
                    return Err(ImapError::Protocol(format!(
                        "unexpected tag {t} for {command}"
                    )));
                }
                Response::Status(StatusInfo {
                    status: Status::Bye,
                    text,
                    ..
                }) if command != "LOGOUT" => {
                    return Err(ImapError::Bye(text));
                }
                Response::Continuation => {
                    return Err(ImapError::Protocol(format!(
                        "unexpected continuation during {command}"
                    )));
                }
                other => on_data(other)?,
            }
        }
    }
}

impl StatusInfo {
    fn ok(self, command: &'static str) -> Result<StatusInfo, ImapError> {
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

fn capability_code(code: &Option<Code>) -> Option<Vec<String>> {
    code.as_ref()
        .filter(|c| c.name == "CAPABILITY")
        .map(|c| response::capability_list(&c.args))
}

/// RFC 5530 codes that say "not you, try later".
fn is_temporary(code: &Option<Code>) -> bool {
    code.as_ref().is_some_and(|c| {
        matches!(
            c.name.as_str(),
            "UNAVAILABLE" | "SERVERBUG" | "INUSE" | "LIMIT"
        )
    })
}

/// A quoted string when every byte is printable ASCII (with `"` and `\`
/// escaped), otherwise a literal: 8-bit bytes never go inside quotes.
fn astring(bytes: &[u8]) -> Arg<'_> {
    if bytes.iter().all(|&b| (0x20..0x7f).contains(&b)) {
        Arg::Text(bytes)
    } else {
        Arg::Literal(bytes)
    }
}

/// `1:3,7,9:10` from sorted or unsorted UIDs.
fn uid_set(uids: &[u32]) -> String {
    let mut sorted = uids.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out = String::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}:{end}"));
        }
        i += 1;
    }
    out
}

fn tcp_connect(endpoint: &Endpoint) -> Result<TcpStream, ImapError> {
    let addrs: Vec<_> = (endpoint.host.as_str(), endpoint.port)
        .to_socket_addrs()
        .map_err(|e| ImapError::Resolve(format!("{}: {e}", endpoint.host)))?
        .collect();
    if addrs.is_empty() {
        return Err(ImapError::Resolve(format!(
            "{}: no addresses",
            endpoint.host
        )));
    }
    let deadline = Instant::now() + endpoint.connect_timeout;
    let mut last = String::new();
    for addr in addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            last = format!("{addr}: timed out");
            break;
        }
        match TcpStream::connect_timeout(&addr, left) {
            Ok(s) => return Ok(s),
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    Err(ImapError::Connect(last))
}
