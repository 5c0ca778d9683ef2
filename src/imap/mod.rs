//! The IMAP backend: the only code that speaks IMAP (RFC 3501, UIDPLUS
//! RFC 4315, SASL-IR RFC 4959). It knows nothing of POP3; it offers the
//! operations a POP3 session needs, each one IMAP command or a short
//! sequence, with a deadline per command.

mod conn;
mod response;

use conn::DeadlineSocket;
pub use conn::Transport;

/// For the fuzz targets (`fuzz/`): the response reader and parser on bytes
/// delivered in reads of at most `piece` bytes.
#[cfg(fuzzing)]
pub mod fuzzing {
    use std::io::{self, Read, Write};
    use std::time::{Duration, Instant};

    use super::conn::{Conn, Transport};
    use super::{ImapError, response};

    struct Pieces {
        data: Vec<u8>,
        pos: usize,
        piece: usize,
    }

    impl Read for Pieces {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.piece).min(self.data.len() - self.pos);
            buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    impl Write for Pieces {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Transport for Pieces {
        fn set_deadline(&mut self, _: Instant) {}
    }

    /// Every response (as its Debug text, or the error) until the input ends.
    pub fn parse_responses(input: &[u8], piece: usize) -> Vec<Result<String, String>> {
        read_all(input, piece, |r| format!("{r:?}"))
    }

    /// What the client takes from one response, for comparing this parser
    /// with another implementation of the grammar.
    #[derive(Debug, PartialEq, Eq)]
    pub enum Summary {
        Tagged {
            tag: String,
            status: &'static str,
        },
        Untagged {
            status: &'static str,
        },
        Continuation,
        Capability(Vec<String>),
        Exists(u32),
        Fetch {
            seq: u32,
            uid: Option<u32>,
            size: Option<u64>,
            body: Option<Option<Vec<u8>>>,
            origin: u64,
        },
        Search(Vec<u32>),
        Other,
    }

    /// Every response, summarised, until the input ends or the first error.
    pub fn summarize(input: &[u8]) -> Vec<Result<Summary, String>> {
        read_all(input, usize::MAX, summary)
    }

    fn status_name(s: response::Status) -> &'static str {
        match s {
            response::Status::Ok => "OK",
            response::Status::No => "NO",
            response::Status::Bad => "BAD",
            response::Status::Bye => "BYE",
            response::Status::Preauth => "PREAUTH",
        }
    }

    fn summary(r: response::Response) -> Summary {
        use response::Response as R;
        match r {
            R::Continuation => Summary::Continuation,
            R::Tagged(tag, info) => Summary::Tagged {
                tag,
                status: status_name(info.status),
            },
            R::Status(info) => Summary::Untagged {
                status: status_name(info.status),
            },
            R::Capability(c) => Summary::Capability(c),
            R::Exists(n) => Summary::Exists(n),
            R::Fetch(f) => Summary::Fetch {
                seq: f.seq,
                uid: f.uid,
                size: f.size,
                body: f.body,
                origin: f.body_origin,
            },
            R::Search(uids) => Summary::Search(uids),
            R::Other => Summary::Other,
        }
    }

    fn read_all<T>(
        input: &[u8],
        piece: usize,
        each: impl Fn(response::Response) -> T,
    ) -> Vec<Result<T, String>> {
        let io = Pieces {
            data: input.to_vec(),
            pos: 0,
            piece: piece.max(1),
        };
        let mut conn = Conn::new(Box::new(io), Duration::from_secs(3600));
        conn.start_deadline();
        let mut out = Vec::new();
        // Bounded by the input anyway (a response is at least 2 bytes).
        for _ in 0..=input.len() / 2 {
            match response::read_response(&mut conn) {
                Err(ImapError::Closed) => break,
                Ok(r) => out.push(Ok(each(r))),
                // After a protocol error the stream is not trusted further.
                Err(e) => {
                    out.push(Err(e.to_string()));
                    break;
                }
            }
        }
        out
    }
}

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use log::{debug, warn};

use crate::buffers;
use crate::limits::{
    FETCH_CHUNK, MAX_DIGESTED_HEADER, MAX_MESSAGES, MAX_SEARCH_ALL_MESSAGES, MAX_UID_SET,
    SNAPSHOT_SLACK,
};
use crate::logging::printable;
use crate::maildrop::BackendMessage;
use crate::secret::{Secret, WipeOnDrop};
use crate::tls::Fingerprint;
use conn::Conn;
use response::{
    Code, FetchData, Head, Response, Status, StatusInfo, read_body_tail, read_head, read_response,
};

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

/// Outcome of a login attempt that reached the backend's verdict.
#[derive(Debug, PartialEq, Eq)]
pub enum Login {
    Ok,
    /// Wrong credentials (or credentials we refused to send): why, for the
    /// log (the backend's response code and text).
    Rejected(String),
    /// The backend refused for a reason that may pass (`[UNAVAILABLE]`...).
    TemporaryFailure(String),
}

/// A message body being read from one FETCH (see `Client::start_body`).
#[derive(Debug)]
pub struct BodyStream {
    pub uid: u32,
    /// The tag of its fetch, which may have asked for several bodies.
    tag: String,
    /// The fetch's tagged answer follows this body.
    last: bool,
    /// The server named the UID before the literal.
    uid_confirmed: bool,
    /// The literal's length: the message's true size.
    pub len: u64,
    left: u64,
    /// The response after the literal was read too.
    finished: bool,
}

impl BodyStream {
    /// Bytes handed out so far.
    pub fn position(&self) -> u64 {
        self.len - self.left
    }

    pub fn is_done(&self) -> bool {
        self.finished
    }
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
    pub security: Security,
}

/// TLS to the backend.
#[derive(Debug, Clone)]
pub enum Security {
    Plain,
    /// STARTTLS on the plain port; a backend without it is an error, never
    /// a silent fallback to plaintext.
    StartTls(Arc<ClientConfig>, ServerName<'static>),
    /// TLS from the first byte (IMAPS).
    Implicit(Arc<ClientConfig>, ServerName<'static>),
}

pub struct Client {
    conn: Conn,
    tag: u32,
    capabilities: Vec<String>,
    /// A `UID FETCH set (UID BODY.PEEK[])` sent ahead (`prefetch_bodies`)
    /// whose answer is not read to its end yet.
    prefetched: Option<Ahead>,
    /// The tag and name of a command sent without waiting for its answer
    /// (`ID`; a `UID SEARCH` sent along with a SELECT that failed), which
    /// the next command's wait reads on the way to its own.
    unanswered: Option<(String, &'static str)>,
}

/// The answer to a fetch of several bodies sent ahead: read a body at a
/// time, as the client asks for them in order.
struct Ahead {
    tag: String,
    /// The UIDs asked for whose bodies are still to come, ascending, which
    /// is the order of the answer.
    uids: VecDeque<u32>,
}

/// Where the answer to a body fetch stands.
enum FetchHead {
    /// A body's literal begins (with the UID, if named before it).
    Body { uid: Option<u32>, len: u64 },
    /// The tagged answer: no more bodies.
    Done(StatusInfo),
}

/// A body about to be read, `len` bytes, refused over `limit`.
fn body_stream(
    uid: u32,
    uid_confirmed: bool,
    len: u64,
    limit: u64,
    tag: String,
    last: bool,
) -> Result<BodyStream, ImapError> {
    if len > limit {
        return Err(ImapError::Protocol(format!(
            "literal of {len} bytes is over the limit of {limit} for UID {uid}"
        )));
    }
    Ok(BodyStream {
        uid,
        tag,
        last,
        uid_confirmed,
        len,
        left: len,
        finished: false,
    })
}

/// Part of a command: text sent as is, or bytes sent as a literal.
enum Arg<'a> {
    Text(&'a [u8]),
    /// Sent as a quoted string, `"` and `\` escaped (printable ASCII only).
    Quoted(&'a [u8]),
    Literal(&'a [u8]),
    /// Sent as the inner argument, shown in the debug trace only as its
    /// length (a password).
    Hidden(&'a Arg<'a>),
}

/// A line of the backend exchange for the debug trace (`-d`): printable,
/// and cut short, since a line may be a megabyte of UIDs.
fn trace_text(bytes: &[u8]) -> String {
    const SHOWN: usize = 300;
    if bytes.len() <= SHOWN {
        return printable(bytes);
    }
    format!("{}... ({} bytes)", printable(&bytes[..SHOWN]), bytes.len())
}

impl Client {
    /// Connects, with TLS as configured, and reads the greeting.
    pub fn connect(endpoint: &Endpoint) -> Result<Client, ImapError> {
        let stream = tcp_connect(endpoint)?;
        stream.set_nodelay(true).map_err(ImapError::Io)?;
        let stream = DeadlineSocket::new(stream, Instant::now() + endpoint.connect_timeout);
        match &endpoint.security {
            Security::Plain => Client::start(Box::new(stream), endpoint.timeout),
            Security::Implicit(config, name) => {
                let tls =
                    TlsStream::handshake(stream, config, name, endpoint.connect_timeout, true)?;
                Client::start(Box::new(tls), endpoint.timeout)
            }
            Security::StartTls(config, name) => {
                let clone = stream.try_clone().map_err(ImapError::Io)?;
                let mut client = Client::start(Box::new(clone), endpoint.timeout)?;
                if !client.has("STARTTLS") {
                    return Err(ImapError::Tls(
                        "backend does not offer STARTTLS (backend_tls = starttls): refusing to continue in plaintext"
                            .into(),
                    ));
                }
                client
                    .run("STARTTLS", &[Arg::Text(b"STARTTLS")], |_| Ok(()))?
                    .ok("STARTTLS")?;
                if client.conn.has_buffered() {
                    // Bytes after the OK would be plaintext injected into the TLS session.
                    return Err(ImapError::Protocol(
                        "backend sent data after STARTTLS OK".into(),
                    ));
                }
                let tls =
                    TlsStream::handshake(stream, config, name, endpoint.connect_timeout, false)?;
                client.conn = Conn::new(Box::new(tls), endpoint.timeout);
                // Capabilities from before TLS may have been tampered with.
                client.refresh_capabilities()?;
                Ok(client)
            }
        }
    }

    /// Reads the greeting on an established stream (TCP, TLS, a test peer).
    pub fn start(io: Box<dyn Transport>, timeout: Duration) -> Result<Client, ImapError> {
        let mut client = Client {
            conn: Conn::new(io, timeout),
            tag: 0,
            capabilities: Vec::new(),
            prefetched: None,
            unanswered: None,
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

    /// The fingerprint of the backend's certificate, over TLS (`--check`
    /// shows it, for `backend_tls_fingerprint`).
    pub fn backend_fingerprint(&self) -> Option<Fingerprint> {
        self.conn.peer_fingerprint()
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

    /// Logs in with a password: `LOGIN`, or `AUTHENTICATE PLAIN` when the
    /// backend says LOGINDISABLED or an authorization identity is given (a
    /// master-user login). Credentials only ever travel as quoted strings,
    /// literals or base64: no byte of them can become IMAP syntax.
    pub fn login(
        &mut self,
        user: &[u8],
        authzid: Option<&[u8]>,
        password: &Secret,
    ) -> Result<Login, ImapError> {
        let forbidden = |b: &[u8]| b.iter().any(|&c| matches!(c, b'\r' | b'\n' | 0));
        if user.is_empty()
            || forbidden(user)
            || forbidden(password.expose())
            || authzid.is_some_and(forbidden)
        {
            return Ok(Login::Rejected(
                "not sent to the backend: empty user, or CR, LF or NUL in the credentials".into(),
            ));
        }
        if self.has("LOGINDISABLED") && self.has("STARTTLS") {
            // The backend wants TLS before any password: never send one in
            // the clear, not even as AUTHENTICATE PLAIN.
            return Err(ImapError::Tls(
                "backend refuses plaintext logins (LOGINDISABLED) and offers STARTTLS: set backend_tls = starttls"
                    .into(),
            ));
        }
        let done = if authzid.is_some() || self.has("LOGINDISABLED") {
            if !self.has("AUTH=PLAIN") {
                return Err(ImapError::Protocol(
                    "backend offers no AUTH=PLAIN (needed for LOGINDISABLED or an authorization identity)"
                        .into(),
                ));
            }
            let mut raw = Vec::with_capacity(user.len() + password.expose().len() + 2);
            raw.extend_from_slice(authzid.unwrap_or_default());
            raw.push(0);
            raw.extend_from_slice(user);
            raw.push(0);
            raw.extend_from_slice(password.expose());
            self.authenticate("PLAIN", &Secret::new(raw), b"*")?
        } else {
            let (u, p) = (astring(user), astring(password.expose()));
            self.run(
                "LOGIN",
                &[Arg::Text(b"LOGIN "), u, Arg::Text(b" "), Arg::Hidden(&p)],
                |_| Ok(()),
            )?
        };
        self.login_outcome(done, "LOGIN")
    }

    /// Passes a client's OAuth SASL response (XOAUTH2, OAUTHBEARER) through.
    pub fn login_token(&mut self, mechanism: &str, response: &Secret) -> Result<Login, ImapError> {
        if !self.has(&format!("AUTH={mechanism}")) {
            return Err(ImapError::Protocol(format!(
                "backend does not offer AUTH={mechanism}"
            )));
        }
        // On failure the server sends an error as a continuation and waits
        // for the client's acknowledgement: empty for XOAUTH2, 0x01 for
        // OAUTHBEARER (RFC 7628 section 3.2.3).
        let ack: &[u8] = if mechanism == "OAUTHBEARER" {
            b"AQ=="
        } else {
            b""
        };
        let done = self.authenticate(mechanism, response, ack)?;
        self.login_outcome(done, "AUTHENTICATE")
    }

    fn login_outcome(
        &mut self,
        done: StatusInfo,
        command: &'static str,
    ) -> Result<Login, ImapError> {
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
            Status::No => Ok(Login::Rejected(match &done.code {
                Some(code) => format!("the backend said: [{}] {}", code.name, done.text),
                None => format!("the backend said: {}", done.text),
            })),
            _ => Err(ImapError::Refused {
                command,
                info: done,
            }),
        }
    }

    /// `AUTHENTICATE mechanism` with the response as initial response
    /// (SASL-IR) or after the first `+`; a second `+` (the server's error
    /// report) is answered with `error_ack`.
    fn authenticate(
        &mut self,
        mechanism: &str,
        response: &Secret,
        error_ack: &[u8],
    ) -> Result<StatusInfo, ImapError> {
        let mut encoded = BASE64.encode(response.expose()).into_bytes();
        if encoded.is_empty() {
            encoded.push(b'=');
        }
        let encoded = Secret::new(encoded);
        self.tag += 1;
        self.conn.start_deadline();
        // Sized up front, so no reallocation leaves a copy of the response.
        let mut line = WipeOnDrop(Vec::with_capacity(64 + encoded.expose().len()));
        line.extend_from_slice(
            format!("{} AUTHENTICATE {mechanism}", self.current_tag()).as_bytes(),
        );
        let mut sent = self.has("SASL-IR");
        if sent {
            line.push(b' ');
            line.extend_from_slice(encoded.expose());
        }
        line.extend_from_slice(b"\r\n");
        debug!(
            "IMAP C: {} AUTHENTICATE {mechanism}{}",
            self.current_tag(),
            if sent {
                format!(" <hidden, {} bytes>", encoded.expose().len())
            } else {
                String::new()
            }
        );
        self.conn.write_all(&line)?;
        // At most two continuations: the request for the response, and the
        // server's error report.
        for _ in 0..2 {
            match self.next_event("AUTHENTICATE", &mut |_| Ok(()))? {
                Event::Tagged(info) => return Ok(info),
                Event::Continuation => {
                    let answer = if sent { error_ack } else { encoded.expose() };
                    debug!("IMAP C: <hidden, {} bytes>", answer.len());
                    sent = true;
                    self.conn.write_all(answer)?;
                    self.conn.write_all(b"\r\n")?;
                }
            }
        }
        match self.next_event("AUTHENTICATE", &mut |_| Ok(()))? {
            Event::Tagged(info) => Ok(info),
            Event::Continuation => Err(ImapError::Protocol(
                "too many AUTHENTICATE continuations".into(),
            )),
        }
    }

    /// RFC 2971 ID with the POP3 client's address, so the backend logs and
    /// rate-limits the real client. Skipped when the backend has no ID.
    /// Sent without waiting: its answer comes in with the next command's
    /// (the login), which saves a round trip before it; a refusal is only
    /// logged then, as it changes nothing for the session.
    pub fn send_client_id(&mut self, peer: std::net::SocketAddr) -> Result<(), ImapError> {
        if !self.has("ID") {
            return Ok(());
        }
        self.settle_prefetch()?;
        self.settle_unanswered()?;
        self.tag += 1;
        let command = format!(
            "{} ID (\"name\" \"pop3server\" \"x-originating-ip\" \"{}\" \"x-originating-port\" \"{}\")\r\n",
            self.current_tag(),
            peer.ip(),
            peer.port()
        );
        debug!("IMAP C: {}", command.trim_end());
        self.conn.start_deadline();
        self.conn.write_all(command.as_bytes())?;
        self.unanswered = Some((self.current_tag(), "ID"));
        Ok(())
    }

    /// The answer to the command sent without waiting (`unanswered`), if
    /// this tagged response is it: noted, and the wait goes on.
    fn answers_unanswered(&mut self, tag: &str, info: &StatusInfo) -> bool {
        let Some((_, command)) = self.unanswered.take_if(|(t, _)| t == tag) else {
            return false;
        };
        match (command, info.status) {
            (_, Status::Ok) => {}
            ("ID", status) => warn!(
                "backend refused ID with the client address: {status:?} {}",
                info.text
            ),
            (command, status) => debug!("{command} not needed any more: {status:?} {}", info.text),
        }
        true
    }

    /// Reads up to the answer of the command sent without waiting, for
    /// the readers that expect only their own command's answer.
    fn settle_unanswered(&mut self) -> Result<(), ImapError> {
        let Some((tag, command)) = self.unanswered.clone() else {
            return Ok(());
        };
        self.conn.start_deadline();
        loop {
            match read_response(&mut self.conn)? {
                Response::Tagged(t, info) if t == tag => {
                    self.answers_unanswered(&t, &info);
                    return Ok(());
                }
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

    /// SELECT (or EXAMINE when read-only) the folder.
    pub fn select(&mut self, folder: &str, read_only: bool) -> Result<Selected, ImapError> {
        let (command, verb) = select_verb(read_only);
        let mut facts = SelectFacts::default();
        let name = mailbox_name(folder);
        let done = self.run(command, &[Arg::Text(verb), astring(name.as_bytes())], |r| {
            facts.note(r)
        })?;
        facts.selected(command, done)
    }

    /// SELECT (or EXAMINE) and, in the same write, `UID SEARCH RETURN
    /// (ALL) ALL`: the UID list comes one round trip sooner than after the
    /// SELECT's answer. Only with ESEARCH, whose answer is compact however
    /// big the folder, and a name that needs no literal; otherwise only
    /// the SELECT, and `None` for the UIDs (`uids` gets them).
    pub fn select_with_uids(
        &mut self,
        folder: &str,
        read_only: bool,
    ) -> Result<(Selected, Option<Vec<u32>>), ImapError> {
        let name = mailbox_name(folder);
        let Arg::Quoted(quoted) = astring(name.as_bytes()) else {
            return Ok((self.select(folder, read_only)?, None));
        };
        if !self.has("ESEARCH") {
            return Ok((self.select(folder, read_only)?, None));
        }
        self.settle_prefetch()?;
        self.settle_unanswered()?;
        let (command, verb) = select_verb(read_only);
        self.tag += 1;
        let select_tag = self.current_tag();
        let mut both = Vec::with_capacity(quoted.len() * 2 + 64);
        both.extend_from_slice(select_tag.as_bytes());
        both.push(b' ');
        both.extend_from_slice(verb);
        push_quoted(&mut both, quoted);
        both.extend_from_slice(b"\r\n");
        self.tag += 1;
        let search_tag = self.current_tag();
        both.extend_from_slice(search_tag.as_bytes());
        both.extend_from_slice(b" UID SEARCH RETURN (ALL) ALL\r\n");
        if log::log_enabled!(log::Level::Debug) {
            for line in both.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                debug!("IMAP C: {}", trace_text(line.trim_ascii_end()));
            }
        }
        self.conn.start_deadline();
        self.conn.write_all(&both)?;
        let mut facts = SelectFacts::default();
        // The search starts after the SELECT is done, so its answer comes
        // after the SELECT's; one that came early anyway is kept for it.
        let mut early = Vec::new();
        let on_select = &mut |r| match r {
            Response::Search(found) => {
                early.push(found);
                Ok(())
            }
            other => facts.note(other),
        };
        // A read error ends it here; a continuation, a refusal or a bad
        // answer leave the search's answer to the next command.
        let selected = match self.next_event_for(&select_tag, command, on_select)? {
            Event::Tagged(done) => facts.selected(command, done),
            Event::Continuation => Err(unexpected_continuation(command)),
        };
        let selected = match selected {
            Ok(s) if s.exists <= MAX_MESSAGES => s,
            // The search's answer (a refusal, without a folder) is read by
            // whatever command comes next.
            Ok(s) => {
                self.unanswered = Some((search_tag, "UID SEARCH"));
                return Err(too_many(s.exists));
            }
            Err(e) => {
                self.unanswered = Some((search_tag, "UID SEARCH"));
                return Err(e);
            }
        };
        let uids = self.read_uids(&selected, early)?;
        Ok((selected, Some(uids)))
    }

    /// UIDs and sizes of all messages, in one command, without bodies.
    pub fn snapshot(&mut self, selected: &Selected) -> Result<Vec<BackendMessage>, ImapError> {
        if selected.exists > MAX_MESSAGES {
            return Err(too_many(selected.exists));
        }
        if selected.exists == 0 {
            return Ok(Vec::new());
        }
        self.fetch_sizes(b"1:*", expected(selected.exists))
    }

    /// The UIDs of all messages, ascending, which is message-number order:
    /// compact with ESEARCH (RFC 4731) where offered. `None` where the list
    /// could be longer than a response line may be (no ESEARCH, a huge
    /// folder): then only the full snapshot will do.
    pub fn uids(&mut self, selected: &Selected) -> Result<Option<Vec<u32>>, ImapError> {
        if selected.exists > MAX_MESSAGES {
            return Err(too_many(selected.exists));
        }
        if selected.exists == 0 {
            return Ok(Some(Vec::new()));
        }
        let esearch = self.has("ESEARCH");
        if !esearch && selected.exists > MAX_SEARCH_ALL_MESSAGES {
            return Ok(None);
        }
        let command: &[u8] = if esearch {
            b"UID SEARCH RETURN (ALL) ALL"
        } else {
            b"UID SEARCH ALL"
        };
        let limit = expected(selected.exists);
        let mut uids = Vec::new();
        self.run("UID SEARCH", &[Arg::Text(command)], |r| {
            collect_uids(&mut uids, r, limit, selected)
        })?
        .ok("UID SEARCH")?;
        uids.sort_unstable();
        uids.dedup();
        Ok(Some(uids))
    }

    /// The answer to the `UID SEARCH` that `select_with_uids` sent (the
    /// current tag), after the UIDs of any part of it that came `early`.
    fn read_uids(
        &mut self,
        selected: &Selected,
        early: Vec<Vec<u32>>,
    ) -> Result<Vec<u32>, ImapError> {
        let limit = expected(selected.exists);
        let mut uids = Vec::new();
        for found in early {
            collect_uids(&mut uids, Response::Search(found), limit, selected)?;
        }
        let tag = self.current_tag();
        let on_data = &mut |r| collect_uids(&mut uids, r, limit, selected);
        self.finish_command_for(&tag, "UID SEARCH", on_data)?
            .ok("UID SEARCH")?;
        uids.sort_unstable();
        uids.dedup();
        Ok(uids)
    }

    /// The sizes of these messages (UIDs); a UID expunged meanwhile is
    /// simply absent from the answer.
    pub fn sizes(&mut self, uids: &[u32]) -> Result<Vec<BackendMessage>, ImapError> {
        let mut out = Vec::with_capacity(uids.len());
        for set in uid_sets(uids, MAX_UID_SET) {
            out.extend(self.fetch_sizes(set.as_bytes(), uids.len() + SNAPSHOT_SLACK)?);
        }
        Ok(out)
    }

    /// The backend offers `X-GM-MSGID` (a fetch item of Gmail's extension
    /// `X-GM-EXT-1`): without it, `gmail_msgids` would only be refused.
    pub fn has_gmail_ext(&self) -> bool {
        self.has(GMAIL_CAPABILITY)
    }

    /// Gmail's message id of each of these messages (UIDs), by
    /// `UID FETCH <set> (UID X-GM-MSGID)`: one command for a whole folder
    /// (split only where the set would be too long a line). A UID expunged
    /// meanwhile is simply absent.
    pub fn gmail_msgids(&mut self, uids: &[u32]) -> Result<Vec<(u32, u64)>, ImapError> {
        let mut out = Vec::with_capacity(uids.len());
        let limit = uids.len() + SNAPSHOT_SLACK;
        for set in uid_sets(uids, MAX_UID_SET) {
            self.run(
                "UID FETCH",
                &[
                    Arg::Text(b"UID FETCH "),
                    Arg::Text(set.as_bytes()),
                    Arg::Text(b" (UID X-GM-MSGID)"),
                ],
                |r| {
                    if let Response::Fetch(FetchData {
                        uid,
                        gm_msgid: Some(id),
                        seq,
                        ..
                    }) = r
                    {
                        let uid = uid.ok_or_else(|| no_uid("X-GM-MSGID", seq))?;
                        if out.len() >= limit {
                            return Err(flood(limit));
                        }
                        out.push((uid, id));
                    }
                    Ok(())
                },
            )?
            .ok("UID FETCH")?;
        }
        Ok(out)
    }

    /// The header block of each of these messages (UIDs), at most its first
    /// `MAX_DIGESTED_HEADER` bytes, by
    /// `UID FETCH <set> (UID BODY.PEEK[HEADER]<0.max>)` (no `\Seen`): one command
    /// for a whole folder, each header handed to `each` as its response
    /// arrives and then dropped, so memory holds one header at a time. A
    /// UID expunged meanwhile (no header, or NIL) is simply not handed on.
    pub fn fetch_headers(
        &mut self,
        uids: &[u32],
        mut each: impl FnMut(u32, &[u8]),
    ) -> Result<(), ImapError> {
        let limit = uids.len() + SNAPSHOT_SLACK;
        let header_item = format!(" (UID BODY.PEEK[HEADER]<0.{MAX_DIGESTED_HEADER}>)");
        let mut count = 0usize;
        for set in uid_sets(uids, MAX_UID_SET) {
            self.run(
                "UID FETCH",
                &[
                    Arg::Text(b"UID FETCH "),
                    Arg::Text(set.as_bytes()),
                    Arg::Text(header_item.as_bytes()),
                ],
                |r| {
                    if let Response::Fetch(FetchData {
                        uid,
                        header: Some(header),
                        seq,
                        ..
                    }) = r
                    {
                        let uid = uid.ok_or_else(|| no_uid("BODY[HEADER]", seq))?;
                        count += 1;
                        if count > limit {
                            return Err(flood(limit));
                        }
                        if let Some(header) = header {
                            each(uid, &header);
                        }
                    }
                    Ok(())
                },
            )?
            .ok("UID FETCH")?;
        }
        Ok(())
    }

    /// `UID FETCH <set> (UID RFC822.SIZE)`; at most `limit` messages.
    fn fetch_sizes(&mut self, set: &[u8], limit: usize) -> Result<Vec<BackendMessage>, ImapError> {
        // By sequence number: a server may send one message's UID and
        // RFC822.SIZE in two FETCH responses, and a message must not drop
        // out of the snapshot because of that. Servers answer in order, one
        // response a message: a list merged at the end, not a map, costs
        // one allocation for 10,000 messages.
        let mut seen = SeqFacts::default();
        self.run(
            "UID FETCH",
            &[
                Arg::Text(b"UID FETCH "),
                Arg::Text(set),
                Arg::Text(b" (UID RFC822.SIZE)"),
            ],
            |r| {
                if let Response::Fetch(FetchData { seq, uid, size, .. }) = r {
                    if uid.is_none() && size.is_none() {
                        return Ok(()); // only flags: not for us
                    }
                    // Memory is bounded by what SELECT announced (with room
                    // for mail that arrived meanwhile), not by the backend.
                    seen.add(seq, uid, size, limit)?;
                }
                Ok(())
            },
        )?
        .ok("UID FETCH")?;
        let mut messages = Vec::with_capacity(seen.0.len());
        for (seq, uid, size) in seen.merged(limit)? {
            match (uid, size) {
                (Some(uid), Some(size)) => messages.push(BackendMessage { uid, size }),
                (Some(uid), None) => {
                    return Err(ImapError::Protocol(format!(
                        "the backend gave no RFC822.SIZE for UID {uid}: the maildrop cannot be listed"
                    )));
                }
                (None, _) => {
                    return Err(ImapError::Protocol(format!(
                        "the backend gave a size but no UID for message {seq}"
                    )));
                }
            }
        }
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
        // Outer None: no BODY[] for this UID yet; inner None: NIL (expunged).
        let mut body: Option<Option<Vec<u8>>> = None;
        let done = self.run("UID FETCH", &[Arg::Text(command.as_bytes())], |r| {
            if let Response::Fetch(FetchData {
                uid: got,
                body: Some(b),
                body_origin,
                ..
            }) = r
                && got.is_none_or(|g| g == uid)
            {
                // Bytes from elsewhere in the message must never be taken
                // for the piece asked for.
                if b.is_some() && body_origin != offset {
                    return Err(ImapError::Protocol(format!(
                        "got BODY[]<{body_origin}> while waiting for <{offset}>"
                    )));
                }
                if let Some(bytes) = &b
                    && bytes.len() > len as usize
                {
                    return Err(ImapError::Protocol(format!(
                        "asked for {len} bytes, got {}",
                        bytes.len()
                    )));
                }
                body = Some(b);
            }
            Ok(())
        })?;
        // Dovecot answers NIL and `OK [EXPUNGEISSUED]` (or NO) for a message
        // another session expunged: gone, never an empty message.
        let expunged = done
            .code
            .as_ref()
            .is_some_and(|c| c.name == "EXPUNGEISSUED");
        match (done.status, body) {
            (Status::Ok | Status::No, _) if expunged => Ok(None),
            (Status::Ok, Some(Some(bytes))) => Ok(Some(bytes)),
            (Status::Ok, Some(None) | None) => Ok(None),
            _ => Err(ImapError::Refused {
                command: "UID FETCH",
                info: done,
            }),
        }
    }

    /// Starts reading a whole message with one `UID FETCH uid (UID BODY[])`
    /// (`BODY.PEEK[]` with `peek`; without it the server sets `\Seen`):
    /// returns when the body's literal begins, its bytes unread, or `None`
    /// if the message is gone. The bytes are then read with `read_body`,
    /// piece by piece as the client takes them, so memory stays bounded by
    /// the piece whatever the message size.
    /// A body over `limit` bytes is refused before it is read (the
    /// connection is then unusable: its literal is still coming).
    pub fn start_body(
        &mut self,
        uid: u32,
        peek: bool,
        limit: u64,
    ) -> Result<Option<BodyStream>, ImapError> {
        if peek
            && self.next_prefetched() == Some(uid)
            && let Some(body) = self.next_body_ahead(uid, limit)?
        {
            return Ok(Some(body));
        }
        self.settle_prefetch()?;
        let tag = self.send_body_fetch(uid, peek)?;
        match self.read_fetch_head(&tag)? {
            FetchHead::Body { uid: got, len } => {
                if got.is_some_and(|g| g != uid) {
                    return Err(ImapError::Protocol(format!(
                        "asked for the body of UID {uid}, got UID {}",
                        got.unwrap_or_default()
                    )));
                }
                body_stream(uid, got.is_some(), len, limit, tag, true).map(Some)
            }
            // No body: NIL, or nothing, for a message another session
            // expunged (Dovecot adds `[EXPUNGEISSUED]`).
            FetchHead::Done(info) => {
                let expunged = info
                    .code
                    .as_ref()
                    .is_some_and(|c| c.name == "EXPUNGEISSUED");
                match info.status {
                    Status::Ok => Ok(None),
                    Status::No if expunged => Ok(None),
                    _ => Err(ImapError::Refused {
                        command: "UID FETCH",
                        info,
                    }),
                }
            }
        }
    }

    /// The body of `uid` from the fetch sent ahead, whose next body it
    /// should be. `None` where the answer does not go on with it (the
    /// message is gone, the fetch was refused): the answer is then read to
    /// its end, and the caller fetches the message by itself, which tells
    /// "gone" from "refused".
    fn next_body_ahead(&mut self, uid: u32, limit: u64) -> Result<Option<BodyStream>, ImapError> {
        let Some(ahead) = self.prefetched.as_mut() else {
            return Ok(None);
        };
        ahead.uids.pop_front();
        let last = ahead.uids.is_empty();
        let tag = ahead.tag.clone();
        // Sent earlier: the deadline runs from now, when it is awaited.
        self.conn.start_deadline();
        match self.read_fetch_head(&tag)? {
            FetchHead::Body { uid: got, len } if got.is_none_or(|g| g == uid) => {
                if last {
                    // Its tagged answer is read with this body's end.
                    self.prefetched = None;
                }
                body_stream(uid, got.is_some(), len, limit, tag, last).map(Some)
            }
            FetchHead::Body { len, .. } => {
                // A later one: this one was skipped. That body is dropped
                // with the rest.
                let mut skipped = body_stream(0, true, len, u64::MAX, tag, false)?;
                self.drain_body(&mut skipped)?;
                self.settle_prefetch()?;
                Ok(None)
            }
            FetchHead::Done(_) => {
                self.prefetched = None;
                Ok(None)
            }
        }
    }

    /// Sends `UID FETCH set (UID BODY.PEEK[])` for these messages (ascending
    /// UIDs) and returns without reading the answer: the server works on it
    /// while the client is busy, and `start_body` for them in this order
    /// (with `peek`) reads their bodies one by one. Any other command first
    /// reads and drops what is left of it. One such fetch at a time: a
    /// second command would let the server answer both at once, mixed.
    pub fn prefetch_bodies(&mut self, uids: &[u32]) -> Result<(), ImapError> {
        self.settle_prefetch()?;
        if uids.is_empty() {
            return Ok(());
        }
        let mut ordered = uids.to_vec();
        ordered.sort_unstable();
        ordered.dedup();
        let set: Vec<String> = ordered.iter().map(u32::to_string).collect();
        let tag = self.send_fetch(&set.join(","), true)?;
        self.prefetched = Some(Ahead {
            tag,
            uids: ordered.into(),
        });
        Ok(())
    }

    /// The UID whose body, asked for ahead, comes next.
    pub fn next_prefetched(&self) -> Option<u32> {
        self.prefetched
            .as_ref()
            .and_then(|a| a.uids.front().copied())
    }

    /// Reads and drops what is left of the answer to a fetch sent ahead,
    /// so that the connection can carry the next command. A message gone
    /// meanwhile, or a refusal, does not matter here: nobody wants it.
    fn settle_prefetch(&mut self) -> Result<(), ImapError> {
        let Some(ahead) = self.prefetched.take() else {
            return Ok(());
        };
        self.conn.start_deadline();
        // Bounded: each round reads one of the bodies asked for, or the end.
        for _ in 0..=ahead.uids.len() {
            match self.read_fetch_head(&ahead.tag)? {
                FetchHead::Body { len, .. } => {
                    let mut body = body_stream(0, true, len, u64::MAX, ahead.tag.clone(), false)?;
                    self.drain_body(&mut body)?;
                }
                FetchHead::Done(_) => return Ok(()),
            }
        }
        Err(ImapError::Protocol(
            "more bodies than asked for in a fetch ahead".into(),
        ))
    }

    /// Sends a fetch of one message's body; its tag.
    fn send_body_fetch(&mut self, uid: u32, peek: bool) -> Result<String, ImapError> {
        self.send_fetch(&uid.to_string(), peek)
    }

    fn send_fetch(&mut self, set: &str, peek: bool) -> Result<String, ImapError> {
        self.settle_unanswered()?;
        self.tag += 1;
        let tag = self.current_tag();
        let item = if peek { "BODY.PEEK[]" } else { "BODY[]" };
        let command = format!("{tag} UID FETCH {set} (UID {item})\r\n");
        debug!("IMAP C: {}", command.trim_end());
        self.conn.start_deadline();
        self.conn.write_all(command.as_bytes())?;
        Ok(tag)
    }

    /// Reads the answer to the body fetch tagged `tag` up to the next
    /// body's literal, or to its tagged end.
    fn read_fetch_head(&mut self, tag: &str) -> Result<FetchHead, ImapError> {
        loop {
            match read_head(&mut self.conn)? {
                Head::Body { uid, len } => return Ok(FetchHead::Body { uid, len }),
                Head::Whole(Response::Tagged(t, info)) if t == tag => {
                    return Ok(FetchHead::Done(info));
                }
                Head::Whole(Response::Tagged(t, _)) => {
                    return Err(ImapError::Protocol(format!(
                        "unexpected tag {t} for UID FETCH"
                    )));
                }
                Head::Whole(Response::Status(StatusInfo {
                    status: Status::Bye,
                    text,
                    ..
                })) => return Err(ImapError::Bye(text)),
                Head::Whole(Response::Continuation) => {
                    return Err(unexpected_continuation("UID FETCH"));
                }
                Head::Whole(Response::Fetch(FetchData {
                    body: Some(Some(_)),
                    ..
                })) => {
                    return Err(ImapError::Protocol(
                        "BODY[] not at the end of the FETCH line".into(),
                    ));
                }
                // NIL for an expunged message, flag updates of others...
                Head::Whole(_) => {}
            }
        }
    }

    /// Up to `max` more bytes of the body, each call with a deadline of its
    /// own (a big message to a slow client is timed by progress); empty once
    /// it is all read. The end of the response is read with the last bytes.
    pub fn read_body(&mut self, body: &mut BodyStream, max: usize) -> Result<Vec<u8>, ImapError> {
        if body.finished {
            return Ok(Vec::new());
        }
        self.conn.start_deadline();
        let n = usize::try_from(body.left).unwrap_or(usize::MAX).min(max);
        // Only body pieces come from the spare buffers: they go back once
        // sent, while other literals may be kept.
        let mut bytes = buffers::take(n);
        self.conn.read_exact_into(n, &mut bytes)?;
        body.left -= n as u64;
        // Also for an empty body: its `)` and the tagged answer are read
        // before the stream counts as done.
        if body.left == 0 {
            body.finished = true;
            let tail_uid = read_body_tail(&mut self.conn)?;
            // UID 0 (never a message's): a body dropped, whoever's it is.
            if body.uid != 0
                && (tail_uid.is_some_and(|u| u != body.uid)
                    || (!body.uid_confirmed && tail_uid.is_none()))
            {
                return Err(ImapError::Protocol(format!(
                    "the body read for UID {} came without that UID",
                    body.uid
                )));
            }
            if body.last {
                let tag = std::mem::take(&mut body.tag);
                self.finish_command_for(&tag, "UID FETCH", &mut |_| Ok(()))?
                    .ok("UID FETCH")?;
            }
        }
        Ok(bytes)
    }

    /// Reads and drops what is left of a body nobody wants any more, so that
    /// the connection can carry the next command.
    pub fn drain_body(&mut self, body: &mut BodyStream) -> Result<(), ImapError> {
        // Bounded: every round reads FETCH_CHUNK bytes or ends the body.
        while !body.finished {
            buffers::give(self.read_body(body, FETCH_CHUNK as usize)?);
        }
        Ok(())
    }

    /// Sets `\Seen` on messages whose bodies were read with `BODY.PEEK[]`
    /// (fetched ahead) for a RETR that should have set it; split like the
    /// expunge's sets.
    pub fn mark_seen(&mut self, uids: &[u32]) -> Result<(), ImapError> {
        for set in uid_sets(uids, MAX_UID_SET) {
            let store = format!("UID STORE {set} +FLAGS.SILENT (\\Seen)");
            self.run("UID STORE", &[Arg::Text(store.as_bytes())], |_| Ok(()))?
                .ok("UID STORE")?;
        }
        Ok(())
    }

    /// Removes exactly these messages: `\Deleted` then `UID EXPUNGE`; without
    /// UIDPLUS a plain EXPUNGE only if no other message is `\Deleted`. UID
    /// sets are split so that no command line exceeds `MAX_UID_SET` (servers
    /// refuse long lines, and then no QUIT could ever succeed).
    pub fn expunge(&mut self, uids: &[u32]) -> Result<Expunged, ImapError> {
        if uids.is_empty() {
            return Ok(Expunged::Done);
        }
        let sets = uid_sets(uids, MAX_UID_SET);
        for (i, set) in sets.iter().enumerate() {
            let store = format!("UID STORE {set} +FLAGS.SILENT (\\Deleted)");
            match self
                .run("UID STORE", &[Arg::Text(store.as_bytes())], |_| Ok(()))
                .and_then(|done| done.ok("UID STORE"))
            {
                Ok(_) => {}
                Err(e @ ImapError::Refused { .. }) => {
                    self.unflag(&sets[..i]);
                    return Err(e);
                }
                // Without an answer the flags of this set may be on.
                Err(e) => return Err(ImapError::Unconfirmed(Box::new(e))),
            }
        }
        match self.expunge_flagged(uids, &sets) {
            Err(e @ ImapError::Refused { .. }) => {
                // The backend still answers: take our flags back, or another
                // client's next expunge would remove messages the POP3 client
                // was told are kept. Nothing more can be done if this fails.
                self.unflag(&sets);
                Err(e)
            }
            Err(e) => Err(ImapError::Unconfirmed(Box::new(e))),
            done => done,
        }
    }

    fn unflag(&mut self, sets: &[String]) {
        for set in sets {
            let unstore = format!("UID STORE {set} -FLAGS.SILENT (\\Deleted)");
            let _ = self.run("UID STORE", &[Arg::Text(unstore.as_bytes())], |_| Ok(()));
        }
    }

    /// The expunge proper, once our messages carry `\Deleted`. With UIDPLUS
    /// set by set: a refusal after some sets went through is reported as
    /// unconfirmed (some are gone, some not).
    fn expunge_flagged(&mut self, uids: &[u32], sets: &[String]) -> Result<Expunged, ImapError> {
        if self.has("UIDPLUS") {
            for (i, set) in sets.iter().enumerate() {
                let expunge = format!("UID EXPUNGE {set}");
                match self
                    .run("UID EXPUNGE", &[Arg::Text(expunge.as_bytes())], |_| Ok(()))
                    .and_then(|done| done.ok("UID EXPUNGE"))
                {
                    Ok(_) => {}
                    Err(e @ ImapError::Refused { .. }) if i > 0 => {
                        self.unflag(&sets[i..]);
                        return Err(ImapError::Unconfirmed(Box::new(e)));
                    }
                    Err(e) => return Err(e),
                }
            }
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
        let mut ours = uids.to_vec();
        ours.sort_unstable();
        if flagged.iter().any(|u| ours.binary_search(u).is_err()) {
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

    /// Sends a command (waiting for `+` before each literal) and reads up to
    /// its tagged response, handing every untagged response to `on_data`.
    fn run(
        &mut self,
        command: &'static str,
        args: &[Arg],
        mut on_data: impl FnMut(Response) -> Result<(), ImapError>,
    ) -> Result<StatusInfo, ImapError> {
        self.settle_prefetch()?;
        self.tag += 1;
        self.conn.start_deadline();
        // The command may carry a password (LOGIN): a buffer sized for all
        // of it up front (no reallocation leaves a copy behind), wiped after.
        fn size_of(a: &Arg) -> usize {
            match a {
                Arg::Text(t) => t.len(),
                Arg::Quoted(q) => 2 * q.len() + 2,
                Arg::Literal(l) => l.len() + 24,
                Arg::Hidden(inner) => size_of(inner),
            }
        }
        let size: usize = args.iter().map(size_of).sum();
        if log::log_enabled!(log::Level::Debug) {
            let shown: String = args
                .iter()
                .map(|a| match a {
                    Arg::Text(t) => trace_text(t),
                    Arg::Quoted(q) => format!("\"{}\"", trace_text(q)),
                    Arg::Literal(l) => format!("{{{}}} {}", l.len(), trace_text(l)),
                    Arg::Hidden(Arg::Text(b) | Arg::Quoted(b) | Arg::Literal(b)) => {
                        format!("<hidden, {} bytes>", b.len())
                    }
                    Arg::Hidden(_) => "<hidden>".to_string(),
                })
                .collect();
            debug!("IMAP C: {} {shown}", self.current_tag());
        }
        let mut pending = WipeOnDrop(Vec::with_capacity(size + 16));
        pending.extend_from_slice(self.current_tag().as_bytes());
        pending.push(b' ');
        for arg in args {
            let arg = match arg {
                Arg::Hidden(inner) => inner,
                visible => visible,
            };
            match arg {
                Arg::Text(t) => pending.extend_from_slice(t),
                Arg::Quoted(q) => push_quoted(&mut pending, q),
                Arg::Literal(bytes) => {
                    pending.extend_from_slice(format!("{{{}}}\r\n", bytes.len()).as_bytes());
                    self.conn.write_all(&pending)?;
                    pending.clear();
                    if let Some(done) = self.until_continuation_or_done(command)? {
                        return Ok(done);
                    }
                    pending.extend_from_slice(bytes);
                }
                Arg::Hidden(_) => {
                    return Err(ImapError::Protocol(
                        "internal: a hidden argument inside a hidden one".into(),
                    ));
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
        match self.next_event(command, &mut |_| Ok(()))? {
            Event::Continuation => Ok(None),
            Event::Tagged(info) => Ok(Some(info)),
        }
    }

    fn finish_command(
        &mut self,
        command: &'static str,
        on_data: &mut dyn FnMut(Response) -> Result<(), ImapError>,
    ) -> Result<StatusInfo, ImapError> {
        let tag = self.current_tag();
        self.finish_command_for(&tag, command, on_data)
    }

    /// `finish_command` for the command tagged `tag` (one sent ahead of
    /// the last).
    fn finish_command_for(
        &mut self,
        tag: &str,
        command: &'static str,
        on_data: &mut dyn FnMut(Response) -> Result<(), ImapError>,
    ) -> Result<StatusInfo, ImapError> {
        match self.next_event_for(tag, command, on_data)? {
            Event::Tagged(info) => Ok(info),
            Event::Continuation => Err(unexpected_continuation(command)),
        }
    }

    /// Reads responses up to the tagged answer of the current command or a
    /// `+` continuation, handing untagged data to `on_data`. A `* BYE`
    /// (except in reply to LOGOUT) or another command's tag is an error.
    fn next_event(
        &mut self,
        command: &'static str,
        on_data: &mut dyn FnMut(Response) -> Result<(), ImapError>,
    ) -> Result<Event, ImapError> {
        let tag = self.current_tag();
        self.next_event_for(&tag, command, on_data)
    }

    /// `next_event` for the command tagged `tag`, which may be an earlier
    /// one than the last sent (pipelined commands are answered in order).
    fn next_event_for(
        &mut self,
        tag: &str,
        command: &'static str,
        on_data: &mut dyn FnMut(Response) -> Result<(), ImapError>,
    ) -> Result<Event, ImapError> {
        loop {
            match read_response(&mut self.conn)? {
                Response::Tagged(t, info) if t == tag => return Ok(Event::Tagged(info)),
                Response::Tagged(t, info) if self.answers_unanswered(&t, &info) => {}
                Response::Tagged(t, _) => {
                    return Err(ImapError::Protocol(format!(
                        "unexpected tag {t} for {command}"
                    )));
                }
                Response::Continuation => return Ok(Event::Continuation),
                Response::Status(StatusInfo {
                    status: Status::Bye,
                    text,
                    ..
                }) if command != "LOGOUT" => {
                    return Err(ImapError::Bye(text));
                }
                other => on_data(other)?,
            }
        }
    }
}

/// What ends a wait for the backend: the command's tagged answer, or its
/// request for more (`+`).
enum Event {
    Tagged(StatusInfo),
    Continuation,
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
fn unexpected_continuation(command: &str) -> ImapError {
    ImapError::Protocol(format!("unexpected continuation during {command}"))
}

/// `q` as an IMAP quoted string, `"` and `\\` escaped.
fn push_quoted(out: &mut Vec<u8>, q: &[u8]) {
    out.push(b'"');
    for &b in q {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
}

/// The command and its verb for opening a folder.
fn select_verb(read_only: bool) -> (&'static str, &'static [u8]) {
    if read_only {
        ("EXAMINE", b"EXAMINE ")
    } else {
        ("SELECT", b"SELECT ")
    }
}

/// What a SELECT's untagged answers say, as they come.
#[derive(Default)]
struct SelectFacts {
    exists: Option<u32>,
    uid_validity: Option<u32>,
}

impl SelectFacts {
    fn note(&mut self, r: Response) -> Result<(), ImapError> {
        match r {
            Response::Exists(n) => self.exists = Some(n),
            Response::Status(StatusInfo {
                code: Some(Code { name, args }),
                ..
            }) if name == "UIDVALIDITY" => {
                self.uid_validity = Some(
                    args.trim()
                        .parse::<u32>()
                        .map_err(|_| ImapError::Protocol(format!("bad UIDVALIDITY {args:?}")))?,
                );
            }
            _ => {}
        }
        Ok(())
    }

    fn selected(self, command: &'static str, done: StatusInfo) -> Result<Selected, ImapError> {
        done.ok(command)?;
        Ok(Selected {
            exists: self
                .exists
                .ok_or_else(|| ImapError::Protocol(format!("{command} gave no EXISTS")))?,
            uid_validity: self
                .uid_validity
                .ok_or_else(|| ImapError::Protocol(format!("{command} gave no UIDVALIDITY")))?,
        })
    }
}

/// One untagged answer to a `UID SEARCH`: its UIDs are added, up to
/// `limit` (a flood is an error).
fn collect_uids(
    uids: &mut Vec<u32>,
    r: Response,
    limit: usize,
    selected: &Selected,
) -> Result<(), ImapError> {
    if let Response::Search(found) = r {
        if uids.len() + found.len() > limit {
            return Err(ImapError::Protocol(format!(
                "more UIDs than the {} messages announced",
                selected.exists
            )));
        }
        uids.extend(found);
    }
    Ok(())
}

fn astring(bytes: &[u8]) -> Arg<'_> {
    if bytes.iter().all(|&b| (0x20..0x7f).contains(&b)) {
        Arg::Quoted(bytes)
    } else {
        Arg::Literal(bytes)
    }
}

/// The UID and size of each message by sequence number, as FETCH
/// responses give them: in order, each message once, as a rule, but a
/// message may come in several responses, anywhere.
#[derive(Default)]
struct SeqFacts(Vec<SeqFact>);

/// (sequence number, UID, RFC822.SIZE).
type SeqFact = (u32, Option<u32>, Option<u64>);

impl SeqFacts {
    /// Past `limit` + 1 messages, an error.
    fn add(
        &mut self,
        seq: u32,
        uid: Option<u32>,
        size: Option<u64>,
        limit: usize,
    ) -> Result<(), ImapError> {
        match self.0.last_mut() {
            Some(last) if last.0 == seq => merge_facts(last, uid, size)?,
            _ => self.0.push((seq, uid, size)),
        }
        // Repeats out of order count once: merged, then counted, when the
        // list has grown to twice the bound (so merging stays linear
        // overall whatever the backend sends).
        if self.0.len() > 2 * (limit + 1) {
            self.0 = std::mem::take(self).merged(limit)?;
        }
        Ok(())
    }

    /// One entry per message, by sequence number; more than `limit` + 1:
    /// an error.
    fn merged(mut self, limit: usize) -> Result<Vec<SeqFact>, ImapError> {
        // Stable, and linear on what is sorted already.
        self.0.sort_by_key(|e| e.0);
        let mut out: Vec<SeqFact> = Vec::with_capacity(self.0.len());
        for (seq, uid, size) in self.0 {
            match out.last_mut() {
                Some(last) if last.0 == seq => merge_facts(last, uid, size)?,
                _ => out.push((seq, uid, size)),
            }
        }
        if out.len() > limit + 1 {
            return Err(ImapError::Protocol(format!(
                "more FETCH responses than the {limit} messages expected"
            )));
        }
        Ok(out)
    }
}

fn merge_facts(entry: &mut SeqFact, uid: Option<u32>, size: Option<u64>) -> Result<(), ImapError> {
    if let (Some(old), Some(new)) = (entry.1, uid)
        && old != new
    {
        return Err(ImapError::Protocol(format!(
            "message {} has UID {old} and UID {new}",
            entry.0
        )));
    }
    entry.1 = entry.1.or(uid);
    entry.2 = entry.2.or(size);
    Ok(())
}

/// How many messages a folder announced with `exists` may yield, with room
/// for mail that arrives meanwhile.
fn expected(exists: u32) -> usize {
    (exists as usize)
        .saturating_mul(2)
        .saturating_add(SNAPSHOT_SLACK)
        .min(MAX_MESSAGES as usize)
}

/// The capability of Gmail's IMAP extensions, `X-GM-MSGID` among them.
pub const GMAIL_CAPABILITY: &str = "X-GM-EXT-1";

/// A fact (`item`) for message `seq` without its UID: whose it is cannot be
/// known, and a fact given to the wrong message would be a wrong UIDL.
fn no_uid(item: &str, seq: u32) -> ImapError {
    ImapError::Protocol(format!(
        "the backend gave {item} but no UID for message {seq}"
    ))
}

/// More FETCH responses than messages asked for (with slack for mail that
/// arrived meanwhile): a broken backend, whose flood must not fill memory.
fn flood(limit: usize) -> ImapError {
    ImapError::Protocol(format!(
        "more FETCH responses than the {limit} messages expected"
    ))
}

fn too_many(exists: u32) -> ImapError {
    ImapError::Protocol(format!(
        "the folder has {exists} messages, more than the {MAX_MESSAGES} a POP3 session can serve"
    ))
}

/// UID sets like `1:3,7,9:10` from sorted or unsorted UIDs, each at most
/// `max` bytes long (a set is never split inside a range).
fn uid_sets(uids: &[u32], max: usize) -> Vec<String> {
    let mut sorted = uids.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut sets = Vec::new();
    let mut out = String::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        let range = if start == end {
            start.to_string()
        } else {
            format!("{start}:{end}")
        };
        if !out.is_empty() && out.len() + 1 + range.len() > max {
            sets.push(std::mem::take(&mut out));
        }
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(&range);
        i += 1;
    }
    if !out.is_empty() {
        sets.push(out);
    }
    sets
}

/// A mailbox name as IMAP wants it (RFC 3501 5.1.3, modified UTF-7):
/// printable ASCII as it is, `&` as `&-`, everything else as UTF-16 in
/// base64 with `,` for `/`, between `&` and `-`.
fn mailbox_name(name: &str) -> String {
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::IMAP_MUTF7,
        base64::engine::general_purpose::NO_PAD,
    );
    let mut out = String::with_capacity(name.len());
    let mut wide: Vec<u8> = Vec::new();
    let flush = |wide: &mut Vec<u8>, out: &mut String| {
        if !wide.is_empty() {
            out.push('&');
            out.push_str(&engine.encode(&*wide));
            out.push('-');
            wide.clear();
        }
    };
    for c in name.chars() {
        if (' '..='~').contains(&c) {
            flush(&mut wide, &mut out);
            if c == '&' {
                out.push_str("&-");
            } else {
                out.push(c);
            }
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                wide.extend_from_slice(&u.to_be_bytes());
            }
        }
    }
    flush(&mut wide, &mut out);
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
    crate::timeout::connect_within(&addrs, endpoint.connect_timeout).map_err(ImapError::Connect)
}

/// The backend connection inside TLS.
struct TlsStream(StreamOwned<ClientConnection, DeadlineSocket>);

impl TlsStream {
    /// Runs the whole handshake now, within `timeout`, so that a failed
    /// verification is reported as such and not as a later read error.
    fn handshake(
        mut sock: DeadlineSocket,
        config: &Arc<ClientConfig>,
        name: &ServerName<'static>,
        timeout: Duration,
        implicit: bool,
    ) -> Result<TlsStream, ImapError> {
        let mut conn = ClientConnection::new(Arc::clone(config), name.clone())
            .map_err(|e| ImapError::Tls(e.to_string()))?;
        sock.set_deadline(Instant::now() + timeout);
        while conn.is_handshaking() {
            if let Err(e) = conn.complete_io(&mut sock) {
                return Err(match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ImapError::Timeout,
                    io::ErrorKind::UnexpectedEof => {
                        ImapError::Tls("backend closed the connection during the handshake".into())
                    }
                    _ => {
                        let rustls_error =
                            e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
                        match rustls_error {
                            Some(why @ rustls::Error::InvalidCertificate(_)) => {
                                ImapError::Certificate(crate::tls::explain(
                                    why,
                                    &name.to_str(),
                                    implicit,
                                ))
                            }
                            Some(why) => {
                                ImapError::Tls(crate::tls::explain(why, &name.to_str(), implicit))
                            }
                            None => ImapError::Tls(e.to_string()),
                        }
                    }
                });
            }
        }
        Ok(TlsStream(StreamOwned::new(conn, sock)))
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl Transport for TlsStream {
    fn set_deadline(&mut self, deadline: Instant) {
        self.0.sock.set_deadline(deadline);
    }

    fn peer_fingerprint(&self) -> Option<Fingerprint> {
        let certs = self.0.conn.peer_certificates()?;
        certs.first().map(|c| Fingerprint::of(c))
    }
}

#[cfg(test)]
mod tests {
    use super::response::tests::Script;
    use super::*;
    use std::io::Cursor;
    use std::sync::{Arc, Mutex};

    /// A client whose backend answers with `script`; returns what it sent.
    fn scripted(script: &str) -> (Client, Arc<Mutex<Vec<u8>>>) {
        let output = Arc::new(Mutex::new(Vec::new()));
        let peer = Script {
            input: Cursor::new(script.as_bytes().to_vec()),
            output: Arc::clone(&output),
        };
        let client = Client::start(Box::new(peer), Duration::from_secs(5)).expect("greeting");
        (client, output)
    }

    fn sent(output: &Arc<Mutex<Vec<u8>>>) -> String {
        String::from_utf8_lossy(&output.lock().expect("lock")).into_owned()
    }

    const GREETING: &str = "* OK [CAPABILITY IMAP4rev1 LITERAL+ AUTH=PLAIN] ready\r\n";
    const ID_GREETING: &str = "* OK [CAPABILITY IMAP4rev1 ID AUTH=PLAIN] ready\r\n";

    #[test]
    fn login_quotes_specials_and_sends_8bit_as_literal() {
        let (mut c, out) = scripted(&format!(
            "{GREETING}+ go\r\nA0001 OK [CAPABILITY IMAP4rev1 UIDPLUS] in\r\n"
        ));
        let login = c.login(
            b"da\"ve\\",
            None,
            &Secret::new("p\u{e4}ss {5}".as_bytes().to_vec()),
        );
        assert_eq!(login.expect("login"), Login::Ok);
        assert_eq!(
            sent(&out),
            "A0001 LOGIN \"da\\\"ve\\\\\" {9}\r\np\u{e4}ss {5}\r\n"
        );
        assert!(c.has("UIDPLUS"));
    }

    #[test]
    fn id_goes_without_waiting_and_its_answer_comes_in_with_the_login() {
        // The ID's answer (a refusal, even) arrives only after the login was
        // sent, and before the continuation of the login's literal.
        let (mut c, out) = scripted(&format!(
            "{ID_GREETING}* ID NIL\r\nA0001 NO not for you\r\n+ go\r\nA0002 OK [CAPABILITY IMAP4rev1 ESEARCH] in\r\n"
        ));
        c.send_client_id("192.0.2.7:4711".parse().expect("addr"))
            .expect("id");
        assert_eq!(
            sent(&out),
            "A0001 ID (\"name\" \"pop3server\" \"x-originating-ip\" \"192.0.2.7\" \"x-originating-port\" \"4711\")\r\n"
        );
        let login = c.login(b"u", None, &Secret::new("p\u{e4}ss".as_bytes().to_vec()));
        assert_eq!(login.expect("login"), Login::Ok);
        assert!(sent(&out).ends_with("A0002 LOGIN \"u\" {5}\r\np\u{e4}ss\r\n"));
        assert!(c.unanswered.is_none());
    }

    #[test]
    fn an_unanswered_id_is_read_before_a_body_fetch() {
        let (mut c, out) = scripted(&format!(
            "{ID_GREETING}A0001 OK id\r\n* 1 FETCH (UID 7 BODY[] {{2}}\r\nhi)\r\nA0002 OK done\r\n"
        ));
        c.send_client_id("192.0.2.7:4711".parse().expect("addr"))
            .expect("id");
        c.prefetch_bodies(&[7]).expect("prefetch");
        assert!(c.unanswered.is_none());
        assert!(sent(&out).ends_with("A0002 UID FETCH 7 (UID BODY.PEEK[])\r\n"));
    }

    #[test]
    fn credentials_with_line_breaks_never_reach_the_backend() {
        let (mut c, out) = scripted(GREETING);
        for (user, pass) in [
            (&b"u\r\nA1 LOGOUT"[..], &b"p"[..]),
            (b"u", b"p\nA2 DELETE INBOX"),
            (b"u", b"p\0"),
        ] {
            assert!(matches!(
                c.login(user, None, &Secret::new(pass.to_vec()))
                    .expect("no I/O"),
                Login::Rejected(_)
            ));
        }
        assert_eq!(sent(&out), "");
    }

    #[test]
    fn logindisabled_uses_authenticate_plain_and_authzid_is_passed_on() {
        let greeting = "* OK [CAPABILITY IMAP4rev1 LOGINDISABLED AUTH=PLAIN] ready\r\n";
        let (mut c, out) = scripted(&format!(
            "{greeting}+ \r\nA0001 OK [CAPABILITY IMAP4rev1] in\r\n"
        ));
        let login = c.login(b"master", Some(b"alice"), &Secret::new(b"pw".to_vec()));
        assert_eq!(login.expect("login"), Login::Ok);
        // base64 of "alice\0master\0pw", after the server's "+".
        assert_eq!(
            sent(&out),
            "A0001 AUTHENTICATE PLAIN\r\nYWxpY2UAbWFzdGVyAHB3\r\n"
        );
    }

    #[test]
    fn no_password_in_the_clear_to_a_backend_that_wants_starttls_first() {
        let greeting = "* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED AUTH=PLAIN] ready\r\n";
        let (mut c, out) = scripted(greeting);
        assert!(matches!(
            c.login(b"u", None, &Secret::new(b"p".to_vec())),
            Err(ImapError::Tls(_))
        ));
        assert_eq!(sent(&out), "");
    }

    #[test]
    fn rejected_and_temporary_login_failures_are_told_apart() {
        let (mut c, _) = scripted(&format!(
            "{GREETING}A0001 NO [AUTHENTICATIONFAILED] no\r\nA0002 NO [UNAVAILABLE] later\r\nA0003 BAD what\r\n"
        ));
        let pw = Secret::new(b"p".to_vec());
        assert_eq!(
            c.login(b"u", None, &pw).expect("answer"),
            Login::Rejected("the backend said: [AUTHENTICATIONFAILED] no".into())
        );
        assert_eq!(
            c.login(b"u", None, &pw).expect("answer"),
            Login::TemporaryFailure("later".into())
        );
        assert!(matches!(
            c.login(b"u", None, &pw),
            Err(ImapError::Refused { .. })
        ));
    }

    #[test]
    fn xoauth2_failure_continuation_is_acknowledged() {
        let greeting = "* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2] ready\r\n";
        let (mut c, out) = scripted(&format!(
            "{greeting}+ eyJzdGF0dXMiOiI0MDEifQ==\r\nA0001 NO [AUTHENTICATIONFAILED] bad token\r\n"
        ));
        let token = Secret::new(b"user=a\x01auth=Bearer t\x01\x01".to_vec());
        assert_eq!(
            c.login_token("XOAUTH2", &token).expect("answer"),
            Login::Rejected("the backend said: [AUTHENTICATIONFAILED] bad token".into())
        );
        assert_eq!(
            sent(&out),
            "A0001 AUTHENTICATE XOAUTH2 dXNlcj1hAWF1dGg9QmVhcmVyIHQBAQ==\r\n\r\n"
        );
    }

    #[test]
    fn select_snapshot_and_pieces() {
        let (mut c, out) = scripted(&format!(
            "{GREETING}* 2 EXISTS\r\n* OK [UIDVALIDITY 77] v\r\nA0001 OK [READ-WRITE] done\r\n\
             * 1 FETCH (UID 4 RFC822.SIZE 10)\r\n* 2 FETCH (RFC822.SIZE 20 UID 9)\r\nA0002 OK done\r\n\
             * 2 FETCH (UID 9 BODY[]<0> {{5}}\r\nabcde)\r\nA0003 OK done\r\n\
             A0004 OK nothing\r\nA0005 NO [EXPUNGEISSUED] gone\r\n\
             * 2 FETCH (UID 9 BODY[]<0> NIL)\r\nA0006 OK [EXPUNGEISSUED] gone\r\n\
             * 2 FETCH (UID 9 BODY[]<0> NIL)\r\nA0007 OK done\r\n"
        ));
        let sel = c.select("INBOX", false).expect("select");
        assert_eq!(
            sel,
            Selected {
                exists: 2,
                uid_validity: 77
            }
        );
        let snap = c.snapshot(&sel).expect("snapshot");
        assert_eq!(
            snap,
            vec![
                BackendMessage { uid: 4, size: 10 },
                BackendMessage { uid: 9, size: 20 }
            ]
        );
        assert_eq!(
            c.fetch_piece(9, 0, 5).expect("piece"),
            Some(b"abcde".to_vec())
        );
        for _ in 0..4 {
            assert_eq!(c.fetch_piece(9, 5, 5).expect("piece"), None);
        }
        let sent = sent(&out);
        assert!(sent.contains("A0001 SELECT \"INBOX\"\r\nA0002 UID FETCH 1:* (UID RFC822.SIZE)\r\nA0003 UID FETCH 9 (UID BODY.PEEK[]<0.5>)\r\n"), "{sent}");
    }

    #[test]
    fn uid_list_uses_esearch_where_offered_and_sizes_only_what_is_asked() {
        let plain = Selected {
            exists: 3,
            uid_validity: 7,
        };
        let (mut c, out) = scripted(&format!(
            "{GREETING}* SEARCH 9 4 12\r\nA0001 OK done\r\n\
             * 2 FETCH (UID 9 RFC822.SIZE 90)\r\n* 3 FETCH (RFC822.SIZE 120 UID 12)\r\nA0002 OK done\r\n"
        ));
        assert_eq!(c.uids(&plain).expect("uids"), Some(vec![4, 9, 12]));
        assert_eq!(
            c.sizes(&[9, 12]).expect("sizes"),
            vec![
                BackendMessage { uid: 9, size: 90 },
                BackendMessage { uid: 12, size: 120 }
            ]
        );
        let text = sent(&out);
        assert!(
            text.contains("A0001 UID SEARCH ALL\r\nA0002 UID FETCH 9,12 (UID RFC822.SIZE)\r\n"),
            "{text}"
        );

        let (mut c, out) = scripted(
            "* OK [CAPABILITY IMAP4rev1 ESEARCH] ready\r\n\
             * ESEARCH (TAG \"A0001\") UID ALL 4,9,12\r\nA0001 OK done\r\n",
        );
        assert_eq!(c.uids(&plain).expect("uids"), Some(vec![4, 9, 12]));
        assert!(sent(&out).contains("A0001 UID SEARCH RETURN (ALL) ALL\r\n"));

        // Without ESEARCH a huge folder's list would not fit one line.
        let (mut c, _) = scripted(GREETING);
        let huge = Selected {
            exists: MAX_SEARCH_ALL_MESSAGES + 1,
            uid_validity: 7,
        };
        assert_eq!(c.uids(&huge).expect("uids"), None);
        // A backend must not list more UIDs than it announced (and slack).
        let (mut c, _) = scripted(&format!(
            "{GREETING}* SEARCH {}\r\nA0001 OK\r\n",
            (1..=1100)
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        ));
        let small = Selected {
            exists: 1,
            uid_validity: 7,
        };
        assert!(matches!(c.uids(&small), Err(ImapError::Protocol(e)) if e.contains("more UIDs")));
    }

    #[test]
    fn bodies_asked_ahead_in_one_fetch_are_read_one_by_one_in_order() {
        let (mut c, out) = scripted(&format!(
            "{GREETING}* 1 FETCH (UID 5 BODY[] {{2}}\r\nab)\r\n* 2 FETCH (UID 6 BODY[] {{2}}\r\ncd)\r\n\
             * 3 FETCH (UID 8 BODY[] {{2}}\r\nef)\r\nA0001 OK\r\n\
             A0002 NO [EXPUNGEISSUED] gone\r\n"
        ));
        c.prefetch_bodies(&[6, 5, 7, 8]).expect("ahead");
        assert_eq!(sent(&out), "A0001 UID FETCH 5,6,7,8 (UID BODY.PEEK[])\r\n");
        for (uid, want) in [(5, b"ab"), (6, b"cd")] {
            let mut body = c.start_body(uid, true, 100).expect("body").expect("there");
            assert_eq!(c.read_body(&mut body, 10).expect("read"), want);
            assert!(body.is_done());
        }
        // 7 was expunged meanwhile: the answer goes on with 8, which is
        // dropped with the rest, and 7 is asked for by itself.
        assert_eq!(c.next_prefetched(), Some(7));
        let body = c.start_body(7, true, 100).expect("7");
        assert!(body.is_none(), "{body:?}");
        assert!(sent(&out).ends_with("A0002 UID FETCH 7 (UID BODY.PEEK[])\r\n"));
        assert_eq!(c.next_prefetched(), None);
    }

    #[test]
    fn a_body_asked_ahead_and_not_wanted_is_dropped_before_the_next_command() {
        let (mut c, out) = scripted(&format!(
            "{GREETING}* 1 FETCH (UID 5 BODY[] {{2}}\r\nab)\r\n* 2 FETCH (UID 6 BODY[] {{2}}\r\ncd)\r\n\
             A0001 OK\r\n* 3 FETCH (UID 9 BODY[] {{2}}\r\ngh)\r\nA0002 OK\r\n"
        ));
        c.prefetch_bodies(&[5, 6]).expect("ahead");
        let mut body = c.start_body(5, true, 100).expect("5").expect("there");
        assert_eq!(c.read_body(&mut body, 10).expect("read"), b"ab");
        // 9 instead of 6: 6 is read and dropped first.
        let mut body = c.start_body(9, false, 100).expect("9").expect("there");
        assert_eq!(c.read_body(&mut body, 10).expect("read"), b"gh");
        assert!(body.is_done());
        assert_eq!(c.next_prefetched(), None);
        assert!(sent(&out).ends_with("A0002 UID FETCH 9 (UID BODY[])\r\n"));
    }

    #[test]
    fn select_and_uid_search_go_in_one_write_with_esearch() {
        const ESEARCH: &str = "* OK [CAPABILITY IMAP4rev1 ESEARCH] ready\r\n";
        let (mut c, out) = scripted(&format!(
            "{ESEARCH}* 3 EXISTS\r\n* OK [UIDVALIDITY 7] ok\r\nA0001 OK [READ-WRITE] done\r\n\
             * ESEARCH (TAG \"A0002\") UID ALL 4,9:10\r\nA0002 OK done\r\n"
        ));
        let (selected, uids) = c.select_with_uids("INBOX", false).expect("select");
        assert_eq!((selected.exists, selected.uid_validity), (3, 7));
        assert_eq!(uids, Some(vec![4, 9, 10]));
        assert_eq!(
            sent(&out),
            "A0001 SELECT \"INBOX\"\r\nA0002 UID SEARCH RETURN (ALL) ALL\r\n"
        );

        // A server that answers the search before the SELECT is done.
        let (mut c, _) = scripted(&format!(
            "{ESEARCH}* 2 EXISTS\r\n* OK [UIDVALIDITY 7] ok\r\n\
             * ESEARCH (TAG \"A0002\") UID ALL 4,9\r\nA0001 OK done\r\nA0002 OK done\r\n"
        ));
        let (_, uids) = c.select_with_uids("INBOX", false).expect("select");
        assert_eq!(uids, Some(vec![4, 9]));

        // A refused SELECT: the search's refusal is read by the next command.
        let (mut c, out) = scripted(&format!(
            "{ESEARCH}A0001 NO [NONEXISTENT] no such folder\r\nA0002 BAD no folder selected\r\n\
             * 0 EXISTS\r\n* OK [UIDVALIDITY 8] ok\r\nA0003 OK done\r\n"
        ));
        assert!(matches!(
            c.select_with_uids("Gone", true),
            Err(ImapError::Refused {
                command: "EXAMINE",
                ..
            })
        ));
        let selected = c.select("INBOX", true).expect("the next command");
        assert_eq!((selected.exists, selected.uid_validity), (0, 8));
        assert!(sent(&out).ends_with("A0003 EXAMINE \"INBOX\"\r\n"));

        // Without ESEARCH, or for a name sent as a literal: the SELECT alone.
        let (mut c, out) = scripted(&format!(
            "{GREETING}* 1 EXISTS\r\n* OK [UIDVALIDITY 7] ok\r\nA0001 OK done\r\n"
        ));
        let (_, uids) = c.select_with_uids("INBOX", false).expect("select");
        assert_eq!(
            (uids, sent(&out)),
            (None, "A0001 SELECT \"INBOX\"\r\n".to_string())
        );
    }

    #[test]
    fn headers_and_gmail_ids_come_from_one_fetch_each() {
        let (mut c, out) = scripted(&format!(
            "{GREETING}* 1 FETCH (UID 4 BODY[HEADER] {{12}}\r\nSubject: a\r\n)\r\n\
             * 2 FETCH (UID 9 BODY[HEADER]<0> NIL)\r\n* 3 FETCH (FLAGS (\\Seen))\r\n\
             * 4 FETCH (UID 12 BODY[HEADER] {{0}}\r\n)\r\nA0001 OK done\r\n\
             * 1 FETCH (UID 4 X-GM-MSGID 1152921504606846980)\r\nA0002 OK done\r\n\
             * 1 FETCH (BODY[HEADER] {{1}}\r\nx)\r\nA0003 OK done\r\n"
        ));
        assert!(!c.has_gmail_ext());
        let mut got = Vec::new();
        c.fetch_headers(&[4, 9, 12], |uid, h| got.push((uid, h.to_vec())))
            .expect("headers");
        assert_eq!(got, vec![(4, b"Subject: a\r\n".to_vec()), (12, Vec::new())]);
        assert_eq!(
            c.gmail_msgids(&[4]).expect("ids"),
            vec![(4, 0x1000_0000_0000_0004)]
        );
        // A header without its UID could be anyone's.
        assert!(matches!(
            c.fetch_headers(&[4], |_, _| {}),
            Err(ImapError::Protocol(e)) if e.contains("no UID")
        ));
        let text = sent(&out);
        assert!(
            text.contains(
                "A0001 UID FETCH 4,9,12 (UID BODY.PEEK[HEADER]<0.196608>)\r\nA0002 UID FETCH 4 (UID X-GM-MSGID)\r\n"
            ),
            "{text}"
        );
        let (c, _) = scripted("* OK [CAPABILITY IMAP4rev1 X-GM-EXT-1] gimap ready\r\n");
        assert!(c.has_gmail_ext());
    }

    #[test]
    fn a_whole_body_is_read_from_one_fetch_in_pieces() {
        let (mut c, out) = scripted(&format!(
            "{GREETING}* 3 FETCH (UID 9 FLAGS (\\Seen) BODY[] {{10}}\r\n0123456789)\r\nA0001 OK done\r\n\
             * 4 FETCH (BODY[] {{4}}\r\nabcd UID 12 FLAGS (\\Seen))\r\n* 2 EXPUNGE\r\nA0002 OK done\r\n\
             * 4 FETCH (UID 13 BODY[] NIL)\r\nA0003 NO [EXPUNGEISSUED] gone\r\n\
             A0004 OK nothing\r\n\
             * 5 FETCH (UID 15 BODY[] {{0}}\r\n)\r\nA0005 OK empty\r\nA0006 OK next\r\n"
        ));
        let mut body = c.start_body(9, false, 10).expect("start").expect("a body");
        assert_eq!(body.len, 10);
        assert_eq!(c.read_body(&mut body, 4).expect("piece"), b"0123");
        assert_eq!(body.position(), 4);
        assert_eq!(c.read_body(&mut body, 4).expect("piece"), b"4567");
        assert_eq!(c.read_body(&mut body, 4).expect("piece"), b"89");
        assert!(body.is_done());
        assert_eq!(c.read_body(&mut body, 4).expect("end"), b"");
        // The UID after the literal; a piece that ends the body exactly.
        let mut body = c.start_body(12, true, 100).expect("start").expect("a body");
        assert_eq!(c.read_body(&mut body, 4).expect("piece"), b"abcd");
        assert!(body.is_done());
        assert!(c.start_body(13, true, 100).expect("start").is_none());
        assert!(c.start_body(14, true, 100).expect("start").is_none());
        // An empty body: its end is read with the (empty) first piece.
        let mut body = c.start_body(15, true, 100).expect("start").expect("a body");
        assert_eq!(c.read_body(&mut body, 4).expect("piece"), b"");
        assert!(body.is_done());
        assert!(c.start_body(16, true, 100).expect("next command").is_none());
        let text = sent(&out);
        assert!(
            text.contains(
                "A0001 UID FETCH 9 (UID BODY[])\r\nA0002 UID FETCH 12 (UID BODY.PEEK[])\r\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_body_of_another_uid_or_with_a_bad_end_is_a_protocol_error() {
        for script in [
            "* 3 FETCH (UID 8 BODY[] {2}\r\nab)\r\nA0001 OK\r\n",
            "* 3 FETCH (BODY[] {2}\r\nab UID 8)\r\nA0001 OK\r\n",
            "* 3 FETCH (BODY[] {2}\r\nab)\r\nA0001 OK\r\n",
            "* 3 FETCH (UID 9 BODY[] {2}\r\nab BODY[] {1}\r\nc)\r\nA0001 OK\r\n",
            "* 3 FETCH (UID 9 BODY[] {2}\r\nab\r\nA0001 OK\r\n",
            "* 3 FETCH (UID 9 BODY[] {2}\r\nab)\r\nA0001 NO [SERVERBUG] oops\r\n",
            "* 3 FETCH (UID 9 BODY[] {101}\r\n",
        ] {
            let (mut c, _) = scripted(&format!("{GREETING}{script}"));
            let result = c.start_body(9, true, 100).and_then(|b| {
                let mut b = b.expect("a body");
                c.read_body(&mut b, 100)
            });
            assert!(result.is_err(), "{script:?} was taken: {result:?}");
        }
    }

    #[test]
    fn bytes_from_another_offset_are_never_taken_for_the_piece() {
        let (mut c, _) = scripted(&format!(
            "{GREETING}* 1 FETCH (UID 9 BODY[]<3> {{1}}\r\nd)\r\nA0001 OK\r\n"
        ));
        assert!(matches!(
            c.fetch_piece(9, 0, 3),
            Err(ImapError::Protocol(_))
        ));
    }

    #[test]
    fn expunge_with_uidplus_names_exactly_our_uids() {
        let greeting = "* OK [CAPABILITY IMAP4rev1 UIDPLUS] ready\r\n";
        let (mut c, out) = scripted(&format!(
            "{greeting}A0001 OK stored\r\nA0002 OK expunged\r\n"
        ));
        assert_eq!(
            c.expunge(&[7, 3, 4, 5, 9]).expect("expunge"),
            Expunged::Done
        );
        assert_eq!(
            sent(&out),
            "A0001 UID STORE 3:5,7,9 +FLAGS.SILENT (\\Deleted)\r\nA0002 UID EXPUNGE 3:5,7,9\r\n"
        );
    }

    #[test]
    fn a_refused_expunge_takes_our_deleted_flags_back() {
        let greeting = "* OK [CAPABILITY IMAP4rev1 UIDPLUS] ready\r\n";
        let (mut c, out) = scripted(&format!(
            "{greeting}A0001 OK stored\r\nA0002 NO no\r\nA0003 OK unstored\r\n"
        ));
        assert!(matches!(c.expunge(&[3, 4]), Err(ImapError::Refused { .. })));
        assert!(sent(&out).ends_with(
            "A0002 UID EXPUNGE 3:4\r\nA0003 UID STORE 3:4 -FLAGS.SILENT (\\Deleted)\r\n"
        ));
    }

    #[test]
    fn without_uidplus_expunge_only_if_no_other_message_is_deleted() {
        let (mut c, out) = scripted(&format!(
            "{GREETING}A0001 OK\r\n* SEARCH 3 4\r\nA0002 OK\r\nA0003 OK\r\n"
        ));
        assert_eq!(c.expunge(&[3, 4]).expect("expunge"), Expunged::Done);
        assert!(sent(&out).ends_with("A0002 UID SEARCH DELETED\r\nA0003 EXPUNGE\r\n"));
        let (mut c, out) = scripted(&format!(
            "{GREETING}A0001 OK\r\n* SEARCH 3 4 8\r\nA0002 OK\r\n"
        ));
        assert_eq!(c.expunge(&[3, 4]).expect("expunge"), Expunged::LeftFlagged);
        assert!(!sent(&out).contains("EXPUNGE"));
    }

    #[test]
    fn garbage_greeting_and_preauth_are_errors() {
        for greeting in [
            "HTTP/1.1 400 Bad Request\r\n",
            "* PREAUTH [CAPABILITY IMAP4rev1] hi\r\n",
            "* BYE busy\r\n",
            "",
        ] {
            let peer = Script {
                input: Cursor::new(greeting.as_bytes().to_vec()),
                output: Default::default(),
            };
            assert!(
                Client::start(Box::new(peer), Duration::from_secs(1)).is_err(),
                "{greeting:?}"
            );
        }
    }

    #[test]
    fn a_backend_flooding_the_snapshot_is_stopped() {
        let flood: String = (1..=1100)
            .map(|n| format!("* {n} FETCH (UID {n} RFC822.SIZE 1)\r\n"))
            .collect();
        let (mut c, _) = scripted(&format!("{GREETING}{flood}A0001 OK done\r\n"));
        let sel = Selected {
            exists: 1,
            uid_validity: 1,
        };
        assert!(matches!(c.snapshot(&sel), Err(ImapError::Protocol(_))));
    }

    #[test]
    fn uid_sets_are_compressed() {
        assert_eq!(uid_sets(&[1], MAX_UID_SET), vec!["1"]);
        assert_eq!(
            uid_sets(&[5, 1, 2, 3, 9, 10], MAX_UID_SET),
            vec!["1:3,5,9:10"]
        );
    }

    #[test]
    fn folder_names_are_sent_in_modified_utf7() {
        assert_eq!(mailbox_name("INBOX"), "INBOX");
        assert_eq!(mailbox_name("Entwürfe"), "Entw&APw-rfe");
        assert_eq!(mailbox_name("Tom & Jerry"), "Tom &- Jerry");
        // RFC 3501 5.1.3's example.
        assert_eq!(
            mailbox_name("~peter/mail/台北/日本語"),
            "~peter/mail/&U,BTFw-/&ZeVnLIqe-"
        );
        assert_eq!(mailbox_name("a😀"), "a&2D3eAA-");
    }

    #[test]
    fn long_uid_sets_are_split_without_splitting_a_range() {
        assert_eq!(uid_sets(&[3, 1, 2, 7, 9, 10], 100), vec!["1:3,7,9:10"]);
        let every_other: Vec<u32> = (1..20_000).step_by(2).collect();
        let sets = uid_sets(&every_other, MAX_UID_SET);
        assert!(sets.len() > 1);
        assert!(
            sets.iter().all(|s| s.len() <= MAX_UID_SET),
            "a set is too long"
        );
        let back: Vec<u32> = sets
            .iter()
            .flat_map(|s| s.split(','))
            .map(|u| u.parse().expect("single uids"))
            .collect();
        assert_eq!(back, every_other);
    }

    #[test]
    fn a_long_deletion_is_flagged_and_expunged_set_by_set() {
        let uids: Vec<u32> = (1..4000).step_by(2).collect();
        let n = uid_sets(&uids, MAX_UID_SET).len();
        assert!(n >= 2, "{n}");
        let mut script = format!("{GREETING}A0001 OK [CAPABILITY IMAP4rev1 UIDPLUS] in\r\n");
        for i in 0..2 * n {
            script.push_str(&format!("A{:04} OK done\r\n", i + 2));
        }
        let (mut c, out) = scripted(&script);
        c.login(b"u", None, &Secret::new(b"p".to_vec()))
            .expect("login");
        assert_eq!(c.expunge(&uids).expect("expunge"), Expunged::Done);
        let sent = sent(&out);
        let lines: Vec<&str> = sent.lines().skip(1).collect();
        assert_eq!(lines.len(), 2 * n);
        assert!(
            lines.iter().all(|l| l.len() < 8192),
            "a command line over 8 KiB"
        );
        assert!(
            lines[..n]
                .iter()
                .all(|l| l.contains("UID STORE ") && l.contains("+FLAGS"))
        );
        assert!(lines[n..].iter().all(|l| l.contains("UID EXPUNGE ")));
    }

    #[test]
    fn a_message_whose_uid_and_size_come_in_two_responses_stays_in_the_snapshot() {
        let (mut c, _) = scripted(&format!(
            "{GREETING}* 1 FETCH (UID 7)\r\n* 2 FETCH (UID 9 RFC822.SIZE 20)\r\n\
             * 1 FETCH (RFC822.SIZE 10)\r\n* 2 FETCH (FLAGS (\\Seen))\r\nA0001 OK done\r\n\
             * 1 FETCH (UID 7)\r\nA0002 OK done\r\n"
        ));
        let sel = Selected {
            exists: 2,
            uid_validity: 1,
        };
        assert_eq!(
            c.snapshot(&sel).expect("snapshot"),
            vec![
                BackendMessage { uid: 7, size: 10 },
                BackendMessage { uid: 9, size: 20 }
            ]
        );
        // A UID that never gets a size is refused clearly, not dropped.
        let sel = Selected {
            exists: 1,
            uid_validity: 1,
        };
        assert!(
            matches!(c.snapshot(&sel), Err(ImapError::Protocol(e)) if e.contains("no RFC822.SIZE for UID 7"))
        );
    }

    #[test]
    fn facts_by_sequence_number_are_merged_counted_and_checked() {
        let mut seen = SeqFacts::default();
        // Out of order and split: merged into one entry per message.
        for (seq, uid, size) in [
            (2, Some(9), None),
            (1, Some(7), Some(10)),
            (2, None, Some(20)),
            (2, Some(9), None),
        ] {
            seen.add(seq, uid, size, 1).expect("within the bound");
        }
        assert_eq!(
            seen.merged(1).expect("merged"),
            vec![(1, Some(7), Some(10)), (2, Some(9), Some(20))]
        );
        // Repeats of the same messages, however many, never count twice,
        // and the list stays within twice the bound.
        let mut seen = SeqFacts::default();
        for n in 0..1000 {
            seen.add(1 + n % 3, Some(1 + n % 3), Some(5), 2)
                .expect("three messages, bound 2 + 1");
            assert!(seen.0.len() <= 6);
        }
        assert_eq!(seen.merged(2).expect("merged").len(), 3);
        // A fourth message is one too many for the bound 2.
        let mut seen = SeqFacts::default();
        let r = (1..=4).try_for_each(|n| seen.add(n, Some(n), Some(1), 2));
        let r = r.and_then(|()| seen.merged(2).map(|_| ()));
        assert!(matches!(r, Err(ImapError::Protocol(e)) if e.contains("more FETCH responses")));
        // Two UIDs for one message: which is true cannot be known.
        let mut seen = SeqFacts::default();
        let r = seen
            .add(1, Some(7), None, 5)
            .and_then(|()| seen.add(2, Some(8), None, 5))
            .and_then(|()| seen.add(1, Some(9), Some(1), 5))
            .and_then(|()| seen.merged(5).map(|_| ()));
        assert!(matches!(r, Err(ImapError::Protocol(e)) if e.contains("UID 7 and UID 9")));
    }
}
