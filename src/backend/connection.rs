//! The one IMAP connection of a session: where it goes (the session's
//! backend once the login has routed it, the default one before), how it
//! is made (the backend's hosts in order, the next one when a host cannot
//! be reached), made early in a thread of its own, made once more for the
//! re-login at QUIT, and what an IMAP error means ([`classify`],
//! [`failure`]: pure). It owns the `Client` and knows which folder is
//! selected on it; it knows nothing of credentials, locks, caches or POP3.
//! A failed command does not drop the connection by itself: the caller
//! does, with `drop_lost`, where it can be seen.

use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{debug, error, warn};

use super::provider::{self, NOT_CONNECTED_FIX};
use super::settings::Settings;
use super::{Failure, FailureKind, Outcome};
use crate::imap::{Client, Endpoint, ImapError, Security};
use crate::limits::EARLY_CONNECTION_MAX_AGE;
use crate::logging::printable;
use crate::route::{self, BackendTls, Host, Routes};
use crate::tls;

/// How long connecting, and then each command, may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    pub command: Duration,
}

impl Timeouts {
    pub fn of(settings: &Settings) -> Self {
        Timeouts {
            connect: settings.connect_timeout,
            command: settings.timeout,
        }
    }
}

pub struct Connection<'a> {
    routes: &'a Routes,
    timeouts: Timeouts,
    /// The POP3 client's address, if it goes into IMAP `ID`
    /// (`backend_send_id`).
    id_peer: Option<SocketAddr>,
    /// The backend of this session (index into `routes.backends`): the
    /// login's route once known.
    backend: Option<usize>,
    client: Option<Client>,
    /// Which backend `client` is connected to.
    connected_to: Option<usize>,
    /// Which configured folder is selected on `client`.
    selected: Option<usize>,
    /// The connection `connect_early` is making.
    early: Option<Early>,
    /// The connection failed and is gone: nothing more is tried on it.
    broken: bool,
}

/// A connection being made in a thread of its own.
struct Early {
    started: Instant,
    /// To which backend.
    backend: usize,
    handle: JoinHandle<Result<Client, ImapError>>,
}

impl<'a> Connection<'a> {
    pub fn new(settings: &'a Settings, peer: Option<SocketAddr>) -> Self {
        Connection {
            routes: &settings.routes,
            timeouts: Timeouts::of(settings),
            id_peer: peer.filter(|_| settings.send_id),
            backend: None,
            client: None,
            connected_to: None,
            selected: None,
            early: None,
            broken: false,
        }
    }

    /// From now on the connection goes to backend `index` (the login's
    /// route); one made elsewhere is closed at the next use.
    pub fn route_to(&mut self, index: usize) {
        self.backend = Some(index);
    }

    /// The session's backend: the login's route, else the one before the
    /// login.
    pub fn backend(&self) -> Option<usize> {
        self.backend.or(self.routes.before_login())
    }

    /// The login's route, if it has one yet.
    pub fn routed(&self) -> Option<usize> {
        self.backend
    }

    /// A connection failed during the session.
    pub fn failed(&self) -> bool {
        self.broken
    }

    pub fn selected(&self) -> Option<usize> {
        self.selected
    }

    pub fn set_selected(&mut self, folder: Option<usize>) {
        self.selected = folder;
    }

    pub fn is_open(&self) -> bool {
        self.client.is_some()
    }

    /// The connection if there is one, without making it: for work that
    /// is only worth doing on a connection already there.
    pub fn open_client(&mut self) -> Option<&mut Client> {
        self.client.as_mut()
    }

    /// The connection, made on first use (or taken from `connect_early`);
    /// never made again once lost (the login and the selected folder went
    /// with it), but by `reconnect`. A connect that fails leaves the
    /// session without one for good.
    pub fn client(&mut self) -> Outcome<&mut Client> {
        let Some(want) = self.backend() else {
            return Err(Failure::new(
                FailureKind::Local,
                "no backend before the login (default_backend = none)",
            ));
        };
        self.take_early(want);
        // Made before the login's route was known (for the SASL
        // mechanisms), to a backend the user does not live on.
        if self.connected_to != Some(want)
            && let Some(client) = self.client.take()
        {
            client.logout();
            self.selected = None;
        }
        if self.client.is_none() {
            if self.broken {
                return Err(Failure::new(
                    FailureKind::Lost,
                    "the backend connection was lost earlier",
                ));
            }
            match connect(&self.routes.backends[want], self.timeouts) {
                Ok(mut client) => {
                    send_id(self.id_peer, &mut client);
                    self.client = Some(client);
                    self.connected_to = Some(want);
                }
                Err(e) => {
                    let failure = self.failure("connect", e);
                    self.drop_lost();
                    return Err(failure);
                }
            }
        }
        self.client
            .as_mut()
            .ok_or_else(|| Failure::new(FailureKind::Lost, "no backend connection"))
    }

    /// The early connection, if it went to `want` and is still fresh.
    fn take_early(&mut self, want: usize) {
        let Some(early) = self.early.take() else {
            return;
        };
        // The user is routed elsewhere: not waited for (that backend may
        // be the one that is down), left to end with the process.
        let joined = (early.backend == want).then(|| early.handle.join());
        match joined {
            None => debug!("early backend connection not used: the user is routed elsewhere"),
            // Likely closed by the server meanwhile: start afresh.
            Some(Ok(Ok(_))) if early.started.elapsed() > EARLY_CONNECTION_MAX_AGE => {}
            Some(Ok(Ok(client))) => {
                self.client = Some(client);
                self.connected_to = Some(early.backend);
            }
            Some(Ok(Err(e))) => debug!("early backend connection failed, connecting again: {e}"),
            Some(Err(_)) => debug!("early backend connection failed, connecting again"),
        }
    }

    /// Starts connecting now, in a thread of its own, so that the TCP
    /// connection, TLS and the backend's greeting overlap with the client's
    /// way to the login (on loopback too, where its round trips are too
    /// short to hide anything). Only a connection: nothing the client sends
    /// goes to the backend before a command needs it. A failure is only
    /// noted: the login connects again and reports it.
    pub fn connect_early(&mut self) {
        if self.client.is_some() || self.broken || self.early.is_some() {
            return;
        }
        // Only where every user, or the unmatched ones, go anyway.
        let Some(index) = self.routes.before_login() else {
            return;
        };
        // The thread owns what connecting needs and nothing else: the
        // backend's hosts and TLS, the timeouts, the address for `ID`.
        let backend = self.routes.backends[index].clone();
        let (timeouts, id_peer) = (self.timeouts, self.id_peer);
        let spawned = std::thread::Builder::new()
            .name("backend-connect".into())
            .spawn(move || {
                let mut client = connect(&backend, timeouts)?;
                send_id(id_peer, &mut client);
                Ok(client)
            });
        match spawned {
            Ok(handle) => {
                self.early = Some(Early {
                    started: Instant::now(),
                    backend: index,
                    handle,
                });
            }
            Err(e) => debug!("cannot start the early backend connection: {e}"),
        }
    }

    /// An IMAP error as the session sees it, logged with the backend it
    /// came from. The connection is left as it is: see `drop_lost`.
    pub fn failure(&self, what: &str, e: ImapError) -> Failure {
        let at = self
            .routes
            .backends
            .get(self.backend().unwrap_or(0))
            .map_or_else(|| "?".to_string(), describe);
        let failure = failure(what, &e);
        match failure.kind {
            FailureKind::Denied => error!("backend {at}: {what}: {e}: {NOT_CONNECTED_FIX}"),
            // The rest it starts is logged once, with its end.
            FailureKind::Throttled(_) => debug!("backend {at}: {what}: {e}"),
            _ => warn!("backend {at}: {what}: {e}"),
        }
        failure
    }

    /// Forgets a connection that failed: nothing more is tried on it
    /// (`client` says so) until `reconnect`.
    pub fn drop_lost(&mut self) {
        self.client = None;
        self.connected_to = None;
        self.selected = None;
        self.broken = true;
    }

    /// A fresh connection for the re-login at QUIT: what is left of the
    /// old one is dropped, and the failure that broke it forgiven once.
    pub fn reconnect(&mut self) -> Outcome<&mut Client> {
        self.client = None;
        self.selected = None;
        self.broken = false;
        self.client()
    }

    /// Drops a connection nobody used (a client that never logged in): it
    /// ends with the process, no LOGOUT round trip for it.
    pub fn abandon_early(&mut self) {
        self.early = None;
    }

    /// LOGOUT, never CLOSE.
    pub fn logout(&mut self) {
        if let Some(client) = self.client.take() {
            client.logout();
        }
    }
}

/// What an IMAP error says about the connection: a refused command leaves
/// it usable; anything else (it could not be made, it broke, it spoke no
/// IMAP) does not.
pub fn classify(e: &ImapError) -> FailureKind {
    match e {
        ImapError::Refused { .. } => FailureKind::Refused,
        ImapError::Resolve(_)
        | ImapError::Connect(_)
        | ImapError::Tls(_)
        | ImapError::Certificate(_) => FailureKind::Unreachable,
        ImapError::Timeout
        | ImapError::Closed
        | ImapError::Io(_)
        | ImapError::Bye(_)
        | ImapError::Unconfirmed(_) => FailureKind::Lost,
        ImapError::Protocol(_) => FailureKind::Protocol,
    }
}

/// The failure of `what` for the session. A refusal carries the backend's
/// own words, its response code first: what a client (and the admin
/// reading the client's error) can act on. Anything else names what failed.
pub fn failure(what: &str, e: &ImapError) -> Failure {
    let kind = classify(e);
    if let Some((words, throttle)) = throttled(e) {
        return Failure::new(FailureKind::Throttled(throttle.suggested), words);
    }
    match e {
        ImapError::Refused { info, .. } if provider::mailbox_not_connected(&info.text) => {
            Failure::new(FailureKind::Denied, printable(info.text.as_bytes()))
        }
        ImapError::Refused { info, .. } => {
            let text = match &info.code {
                Some(code) => format!("[{}] {}", code.name, info.text),
                None => info.text.clone(),
            };
            Failure::new(kind, printable(text.as_bytes()))
        }
        e => Failure::new(kind, format!("{what}: {e}")),
    }
}

/// The provider's words, when an error is its throttling answer: a refused
/// command (`NO`, `BAD`) or a `BYE` (the greeting's too), which say so.
pub fn throttled(e: &ImapError) -> Option<(String, provider::Throttle)> {
    let words = match e {
        ImapError::Refused { info, .. } => match &info.code {
            Some(code) => format!("[{}] {}", code.name, info.text),
            None => info.text.clone(),
        },
        ImapError::Bye(text) => text.clone(),
        _ => return None,
    };
    let throttle = provider::throttling(&words)?;
    Some((printable(words.as_bytes()), throttle))
}

/// A backend for log lines: its address as before routing existed when it
/// is the one default host, else its name and hosts.
pub fn describe(backend: &route::Backend) -> String {
    match backend.hosts.as_slice() {
        [host] if backend.name == route::DEFAULT_BACKEND => host.to_string(),
        hosts => format!(
            "{} ({})",
            backend.name,
            hosts
                .iter()
                .map(Host::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Connects to `backend`, its hosts in order: the next is tried when one
/// cannot be reached or its TLS fails, never after a refused certificate
/// (the configuration, or an attack) and never later in the session (an
/// authentication failure is the user's answer).
pub fn connect(backend: &route::Backend, timeouts: Timeouts) -> Result<Client, ImapError> {
    let skipped = |host: &Host, e: &ImapError| {
        warn!(
            "backend {}: {host}: {e}; trying the next host",
            backend.name
        )
    };
    connect_hosts(timeouts, backend, skipped)
        .map(|(client, _)| client)
        .map_err(|(e, _)| e)
}

/// `connect`'s failover, for sessions and `--check` alike: `skipped` hears
/// of each host given up for the next. The host connected to, or the one
/// whose error is returned (none if the backend has no hosts).
pub fn connect_hosts(
    timeouts: Timeouts,
    backend: &route::Backend,
    mut skipped: impl FnMut(&Host, &ImapError),
) -> Result<(Client, &Host), (ImapError, Option<&Host>)> {
    let mut hosts = backend.hosts.iter().peekable();
    while let Some(host) = hosts.next() {
        let connected = endpoint(timeouts, backend, host).and_then(|e| Client::connect(&e));
        match connected {
            Ok(client) => return Ok((client, host)),
            Err(e @ (ImapError::Certificate(_) | ImapError::Refused { .. })) => {
                return Err((e, Some(host)));
            }
            Err(e) if hosts.peek().is_some() => skipped(host, &e),
            Err(e) => return Err((e, Some(host))),
        }
    }
    let none = format!("backend {} has no hosts", backend.name);
    Err((ImapError::Connect(none), None))
}

/// Where and how to reach one host of a backend, TLS settings included.
pub fn endpoint(
    timeouts: Timeouts,
    backend: &route::Backend,
    host: &Host,
) -> Result<Endpoint, ImapError> {
    let verify = if let Some(pin) = backend.fingerprint {
        tls::Verify::Pinned(pin)
    } else if !backend.verify {
        tls::Verify::Nothing
    } else if let Some(ca) = &backend.ca_file {
        tls::Verify::CaFile(ca)
    } else {
        tls::Verify::SystemRoots
    };
    let tls_settings = || -> Result<_, ImapError> {
        let setup = |e: tls::TlsSetupError| ImapError::Tls(e.to_string());
        if !backend.verify && backend.fingerprint.is_none() {
            warn!(
                "TLS verification is off for backend {} (backend_tls_verify or tls_verify = false): \
                 its certificate is NOT checked, the connection can be intercepted",
                backend.name
            );
        }
        Ok((
            tls::client_config(verify).map_err(setup)?,
            tls::server_name(&host.host).map_err(setup)?,
        ))
    };
    let security = match backend.tls {
        BackendTls::None => Security::Plain,
        BackendTls::StartTls => {
            let (c, name) = tls_settings()?;
            Security::StartTls(c, name)
        }
        BackendTls::Implicit => {
            let (c, name) = tls_settings()?;
            Security::Implicit(c, name)
        }
    };
    Ok(Endpoint {
        host: host.host.clone(),
        port: host.port,
        connect_timeout: timeouts.connect,
        timeout: timeouts.command,
        security,
    })
}

/// IMAP `ID` with the client's address, if it is to be sent.
fn send_id(peer: Option<SocketAddr>, client: &mut Client) {
    if let Some(peer) = peer
        && let Err(e) = client.send_client_id(peer)
    {
        warn!("cannot send ID with the client address to the backend: {e}");
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;
    use crate::imap::{Code, Status, StatusInfo};

    fn refused(code: Option<&str>, text: &str) -> ImapError {
        ImapError::Refused {
            command: "SELECT",
            info: StatusInfo {
                status: Status::No,
                code: code.map(|name| Code {
                    name: name.into(),
                    args: String::new(),
                }),
                text: text.into(),
            },
        }
    }

    fn backend(name: &str, hosts: &[(&str, u16)]) -> route::Backend {
        route::Backend {
            name: name.into(),
            hosts: hosts
                .iter()
                .map(|&(host, port)| Host {
                    host: host.into(),
                    port,
                })
                .collect(),
            tls: BackendTls::None,
            ca_file: None,
            fingerprint: None,
            verify: true,
            delete_action: route::DeleteAction::Expunge,
            trash_folder: None,
        }
    }

    /// A port on loopback where nobody listens (it was free a moment ago).
    fn closed_port() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address").port()
    }

    const TIMEOUTS: Timeouts = Timeouts {
        connect: Duration::from_secs(5),
        command: Duration::from_secs(5),
    };

    #[test]
    fn only_a_refused_command_leaves_the_connection_usable() {
        let io = || ImapError::Io(std::io::ErrorKind::ConnectionReset.into());
        let cases = [
            (refused(None, "no"), FailureKind::Refused),
            (ImapError::Resolve("x".into()), FailureKind::Unreachable),
            (ImapError::Connect("x".into()), FailureKind::Unreachable),
            (ImapError::Tls("x".into()), FailureKind::Unreachable),
            (ImapError::Certificate("x".into()), FailureKind::Unreachable),
            (ImapError::Timeout, FailureKind::Lost),
            (ImapError::Closed, FailureKind::Lost),
            (io(), FailureKind::Lost),
            (ImapError::Bye("bye".into()), FailureKind::Lost),
            (ImapError::Unconfirmed(Box::new(io())), FailureKind::Lost),
            (ImapError::Protocol("x".into()), FailureKind::Protocol),
        ];
        for (e, kind) in cases {
            assert_eq!(classify(&e), kind, "{e}");
            assert_eq!(
                kind.leaves_connection_usable(),
                kind == FailureKind::Refused,
                "{e}"
            );
        }
    }

    #[test]
    fn a_refusal_carries_the_backends_words_with_its_code_first() {
        let e = refused(Some("NONEXISTENT"), "No such mailbox");
        assert_eq!(
            failure("opening folder \"Spam\"", &e),
            Failure::new(FailureKind::Refused, "[NONEXISTENT] No such mailbox")
        );
        let e = refused(None, "Mailbox is locked\u{1b}[31m");
        assert_eq!(
            failure("login", &e).text,
            printable("Mailbox is locked\u{1b}[31m".as_bytes())
        );
    }

    #[test]
    fn throttling_words_in_a_no_a_bad_or_a_bye_are_throttling_with_the_suggested_time() {
        let exchange = "Request is throttled. Suggested Backoff Time: 300000 milliseconds";
        let bad = ImapError::Refused {
            command: "SELECT",
            info: StatusInfo {
                status: Status::Bad,
                code: None,
                text: exchange.into(),
            },
        };
        let five_minutes = FailureKind::Throttled(Some(Duration::from_secs(300)));
        assert_eq!(
            failure("opening folder \"INBOX\"", &bad),
            Failure::new(five_minutes, exchange)
        );
        assert_eq!(
            failure("login", &refused(Some("THROTTLED"), "slow down")),
            Failure::new(FailureKind::Throttled(None), "[THROTTLED] slow down")
        );
        let bye = ImapError::Bye("[ALERT] Too many simultaneous connections.".into());
        assert_eq!(failure("greeting", &bye).kind, FailureKind::Throttled(None));
        assert!(!FailureKind::Throttled(None).leaves_connection_usable());
        // An [ALERT] of another kind is not throttling.
        let alert = refused(Some("ALERT"), "Application-specific password required");
        assert_eq!(failure("login", &alert).kind, FailureKind::Refused);
        assert!(throttled(&ImapError::Timeout).is_none());
    }

    #[test]
    fn any_other_failure_names_what_failed() {
        assert_eq!(
            failure("listing messages", &ImapError::Timeout),
            Failure::new(FailureKind::Lost, "listing messages: backend timed out")
        );
    }

    #[test]
    fn the_one_default_host_is_shown_as_its_address_any_other_backend_by_name() {
        let one = backend(route::DEFAULT_BACKEND, &[("imap.example.org", 143)]);
        assert_eq!(describe(&one), "imap.example.org:143");
        let two = backend("east", &[("imap1.east", 143), ("::1", 1143)]);
        assert_eq!(describe(&two), "east (imap1.east:143, [::1]:1143)");
    }

    #[test]
    fn a_host_that_cannot_be_reached_is_skipped_for_the_next() {
        let (first, second) = (closed_port(), closed_port());
        let both = backend("east", &[("127.0.0.1", first), ("127.0.0.1", second)]);
        let mut skipped = Vec::new();
        let connected = connect_hosts(TIMEOUTS, &both, |host, e| {
            skipped.push((host.port, classify(e)))
        });
        let Err((e, Some(last))) = connected else {
            panic!("connected to a closed port");
        };
        assert_eq!(skipped, [(first, FailureKind::Unreachable)]);
        assert_eq!(
            (last.port, classify(&e)),
            (second, FailureKind::Unreachable)
        );
    }

    #[test]
    fn a_backend_without_hosts_names_none() {
        let none = backend("empty", &[]);
        let Err((e, None)) = connect_hosts(TIMEOUTS, &none, |_, _| panic!("no host to skip"))
        else {
            panic!("connected without a host");
        };
        assert_eq!(
            e.to_string(),
            "cannot connect to backend: backend empty has no hosts"
        );
    }

    #[test]
    fn an_endpoint_takes_the_host_and_the_timeouts() {
        let one = backend("default", &[("127.0.0.1", 1143)]);
        let endpoint = endpoint(TIMEOUTS, &one, &one.hosts[0]).expect("plain endpoint");
        assert_eq!((endpoint.host.as_str(), endpoint.port), ("127.0.0.1", 1143));
        assert_eq!(
            (endpoint.connect_timeout, endpoint.timeout),
            (TIMEOUTS.connect, TIMEOUTS.command)
        );
        assert!(matches!(endpoint.security, Security::Plain));
    }
}
