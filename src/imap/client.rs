//! The client core: one connection to the backend, from the connect and
//! the greeting (TLS, STARTTLS) to LOGOUT, its capabilities, and the
//! command engine every job sends through: tags, arguments with their
//! literals, the wait for the tagged answer, and the commands sent without
//! waiting for it (`unanswered`). What a command asks and what its answer
//! means belong to the job's own file (`login.rs`, `select.rs`,
//! `fetch.rs`, `body.rs`, `store.rs`); this one must not grow commands
//! beyond the connection's own (CAPABILITY, STARTTLS, LOGOUT).

use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, warn};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;

use super::ImapError;
use super::body::Ahead;
use super::conn::{Conn, DeadlineSocket, Transport, trace_text};
use super::encode::{Arg, push_quoted};
use super::response::{self, Code, Response, Status, StatusInfo, read_response};
use super::tls::TlsStream;
use crate::secret::WipeOnDrop;
use crate::tls::Fingerprint;

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
    pub(super) conn: Conn,
    pub(super) tag: u32,
    pub(super) capabilities: Vec<String>,
    /// A `UID FETCH set (UID BODY.PEEK[])` sent ahead (`prefetch_bodies`)
    /// whose answer is not read to its end yet.
    pub(super) prefetched: Option<Ahead>,
    /// The tag and name of a command sent without waiting for its answer
    /// (`ID`; a `UID SEARCH` sent along with a SELECT that failed), which
    /// the next command's wait reads on the way to its own.
    pub(super) unanswered: Option<(String, &'static str)>,
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
                code,
                text,
            }) => return Err(ImapError::bye(code, text)),
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

    pub(super) fn has(&self, cap: &str) -> bool {
        self.capabilities.iter().any(|c| c == cap)
    }

    pub(super) fn refresh_capabilities(&mut self) -> Result<(), ImapError> {
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
    pub(super) fn settle_unanswered(&mut self) -> Result<(), ImapError> {
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
                    code,
                    text,
                }) => return Err(ImapError::bye(code, text)),
                _ => {}
            }
        }
    }

    /// Ends the IMAP session; never CLOSE, which would expunge every
    /// `\Deleted` message and not only ours. Errors do not matter here.
    pub fn logout(mut self) {
        let _ = self.run("LOGOUT", &[Arg::Text(b"LOGOUT")], |_| Ok(()));
    }

    pub(super) fn current_tag(&self) -> String {
        format!("A{:04}", self.tag)
    }

    /// Sends a command (waiting for `+` before each literal) and reads up to
    /// its tagged response, handing every untagged response to `on_data`.
    pub(super) fn run(
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
    pub(super) fn finish_command_for(
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
    pub(super) fn next_event(
        &mut self,
        command: &'static str,
        on_data: &mut dyn FnMut(Response) -> Result<(), ImapError>,
    ) -> Result<Event, ImapError> {
        let tag = self.current_tag();
        self.next_event_for(&tag, command, on_data)
    }

    /// `next_event` for the command tagged `tag`, which may be an earlier
    /// one than the last sent (pipelined commands are answered in order).
    pub(super) fn next_event_for(
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
                    code,
                    text,
                }) if command != "LOGOUT" => {
                    return Err(ImapError::bye(code, text));
                }
                other => on_data(other)?,
            }
        }
    }
}

/// What ends a wait for the backend: the command's tagged answer, or its
/// request for more (`+`).
pub(super) enum Event {
    Tagged(StatusInfo),
    Continuation,
}

pub(super) fn capability_code(code: &Option<Code>) -> Option<Vec<String>> {
    code.as_ref()
        .filter(|c| c.name == "CAPABILITY")
        .map(|c| response::capability_list(&c.args))
}

pub(super) fn unexpected_continuation(command: &str) -> ImapError {
    ImapError::Protocol(format!("unexpected continuation during {command}"))
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

#[cfg(test)]
mod tests {
    use super::super::response::tests::Script;
    use super::*;
    use std::io::Cursor;

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
}
