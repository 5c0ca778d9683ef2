//! The login: which backend serves the user and as whom (routing and the
//! rule's rewrite), a device's own password and its token source's token
//! (refreshed once and tried again when the backend refuses it), and the
//! penalty a failed device login earns the client's address, and the rest
//! of a mailbox its provider throttles (no login while it lasts; a
//! throttling answer begins one, see `cooldown`). One function,
//! [`log_in`], for the session and for `--check`, so that the check does
//! what a session does; what each makes of the [`Verdict`] (the session's
//! answer, the check's report) is theirs. It sends the login command and
//! nothing else, on the connection the caller's [`Link`] provides: no
//! lock, no folder, no classification of IMAP errors.

use std::net::SocketAddr;
use std::time::Duration;

use log::{debug, error, warn};

use super::connection::throttled;
use super::cooldown::{self, Mailbox};
use super::provider::{self, Throttle};
use super::settings::Settings;
use super::{Credentials, LoginAnswer};
use crate::devices::Device;
use crate::devices::oauth::settings::OAuthSource;
use crate::devices::oauth::store::{Store, Token};
use crate::devices::oauth::{self, TokenError};
use crate::devices::penalty;
use crate::imap::{Client, ImapError, Login};
use crate::lock::cooldown::Cooldown;
use crate::logging::printable;
use crate::preload::Preloaded;
use crate::route::{Route, Routes};
use crate::secret::Secret;
use crate::stats::{self, event::Event};

/// What a login needs besides the credentials.
#[derive(Clone, Copy)]
pub struct Context<'a> {
    pub settings: &'a Settings,
    /// The devices file and the client secrets, as read for this process.
    pub files: &'a Preloaded,
    /// The POP3 client's address: what a failed device login is counted
    /// against. `None` (`--check`): nothing is counted.
    pub peer: Option<SocketAddr>,
}

/// Where a login is sent: the session's connection, or `--check`'s.
pub trait Link {
    /// Why no connection could be had.
    type Error;
    /// The connection to backend `backend` (an index into the routing
    /// table's backends), made now if need be. Asked for only once the
    /// route is known and only when a command is to be sent.
    fn client(&mut self, backend: usize) -> Result<&mut Client, Self::Error>;
    /// A step of the login passed: what `--check` reports as it goes.
    fn passed(&mut self, _step: Passed<'_>) {}
}

/// The steps a login passes, in this order.
pub enum Passed<'a> {
    /// `user` (a POP3 user, or a device's mailbox) goes to `route`.
    Routed { user: &'a [u8], route: &'a Route },
    /// A device's own password was right; its token comes from `source`.
    Device {
        device: &'a Device,
        source: &'a OAuthSource,
    },
    /// A token to log in with; `again`: the backend refused the one before.
    Token { token: &'a Token, again: bool },
}

/// Where a login went, whatever its verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    /// Index into the routing table's backends.
    pub backend: usize,
    /// The IMAP identity logged in as, after the rule's rewrite or a
    /// device's mapping: the maildrop the lock is taken for.
    pub mailbox: Option<Vec<u8>>,
}

/// A login's outcome: its route, if it got that far, and the verdict.
pub struct Attempt<E> {
    pub routed: Option<Routed>,
    pub result: Result<Verdict, Stop<E>>,
}

/// What came of the credentials.
pub enum Verdict {
    /// Logged in; `Relogin` logs in once more the same way.
    LoggedIn(Relogin),
    /// A device logged in as `mailbox` with its token source's token.
    DeviceLoggedIn { mailbox: String, relogin: Relogin },
    /// The backend refused the credentials: its words.
    Rejected(String),
    /// The backend cannot log the user in now: its words.
    Unavailable(String),
    /// The mailbox rests after its provider throttled it: nothing was
    /// sent.
    Resting(Cooldown),
    /// The provider throttled the login (its words): the mailbox now rests
    /// for `wait`.
    Throttled { words: String, wait: Duration },
    /// No route for `user` (the POP3 user, or a device's mailbox).
    Unrouted { user: Vec<u8> },
    /// No such device, or not its password; `penalty` is the client
    /// address's extra delay.
    NoDevice { penalty: Duration },
    /// The device names a token source that is not configured.
    NoSource { device: String, oauth: String },
    /// The device's token source gave no token.
    NoToken { device: String, error: TokenError },
    /// The backend refused the device's token, and a fresh one too.
    TokenRefused {
        device: String,
        source: String,
        mailbox: String,
    },
}

/// Why a login came to no verdict.
#[derive(Debug)]
pub enum Stop<E> {
    /// No connection (the `Link`'s error).
    Link(E),
    /// The connection failed during the login command.
    Imap(ImapError),
    /// The devices file cannot be read.
    Devices(String),
}

/// How the session logged in, kept (in `Secret`s) so that QUIT can log in
/// once more if the connection was lost meanwhile.
pub enum Relogin {
    Password {
        login: Vec<u8>,
        authzid: Option<Vec<u8>>,
        password: Secret,
    },
    /// A SASL token response: the client's own, or a device's.
    Token {
        mechanism: &'static str,
        response: Secret,
    },
}

impl Relogin {
    fn of(credentials: Credentials) -> Self {
        match credentials {
            Credentials::Password {
                login,
                authzid,
                password,
            } => Relogin::Password {
                login,
                authzid,
                password,
            },
            Credentials::Token {
                mechanism,
                response,
            } => Relogin::Token {
                mechanism: mechanism.name(),
                response,
            },
        }
    }

    /// The login command.
    pub fn send(&self, client: &mut Client) -> Result<Login, ImapError> {
        match self {
            Relogin::Password {
                login,
                authzid,
                password,
            } => client.login(login, authzid.as_deref(), password),
            Relogin::Token {
                mechanism,
                response,
            } => client.login_token(mechanism, response),
        }
    }
}

/// Logs `credentials` in, as a session does: a device by its own password
/// and its token (`device_logins`), anyone else with the credentials as
/// the route rewrites them.
pub fn log_in<L: Link>(
    context: &Context<'_>,
    credentials: Credentials,
    link: &mut L,
) -> Attempt<L::Error> {
    match credentials {
        Credentials::Password {
            login,
            authzid,
            password,
        } if context.settings.device_logins => {
            device_login(context, login, authzid, password, link)
        }
        credentials => direct_login(context, credentials, link),
    }
}

/// Credentials passed on to the backend after the route's rewrite.
fn direct_login<L: Link>(
    context: &Context<'_>,
    credentials: Credentials,
    link: &mut L,
) -> Attempt<L::Error> {
    let user = credentials.maildrop_user().unwrap_or_default();
    let Some(route) = route(&context.settings.routes, &user, link) else {
        return Attempt {
            routed: None,
            result: Ok(Verdict::Unrouted { user }),
        };
    };
    let credentials = rewrite(credentials, &route.login);
    let routed = Routed {
        backend: route.backend,
        mailbox: credentials.maildrop_user(),
    };
    let mailbox = routed
        .mailbox
        .as_deref()
        .map(|m| Mailbox::new(context.settings, route.backend, m));
    if let Some(rest) = mailbox.as_ref().and_then(|m| resting(context, m)) {
        return Attempt {
            routed: Some(routed),
            result: Ok(Verdict::Resting(rest)),
        };
    }
    let relogin = Relogin::of(credentials);
    let result = match link.client(route.backend) {
        Err(e) => Err(Stop::Link(e)),
        Ok(client) => {
            let sent = timed(context, route.backend, || relogin.send(client));
            match (throttling_in(&sent), sent) {
                (Some((words, throttle)), _) => {
                    Ok(throttled_login(context, mailbox.as_ref(), words, &throttle))
                }
                (None, Ok(Login::Ok)) => Ok(Verdict::LoggedIn(relogin)),
                (None, Ok(Login::Rejected(reason))) => Ok(Verdict::Rejected(reason)),
                (None, Ok(Login::TemporaryFailure(text))) => Ok(Verdict::Unavailable(text)),
                (None, Err(e)) => Err(Stop::Imap(e)),
            }
        }
    };
    Attempt {
        routed: Some(routed),
        result,
    }
}

/// A login command, and how long the backend took to answer it (for the
/// statistics).
fn timed<T>(context: &Context<'_>, backend: usize, login: impl FnOnce() -> T) -> T {
    let sent = std::time::Instant::now();
    let answer = login();
    let name = context.settings.routes.backends.get(backend);
    stats::emit::send(&Event::BackendLogin {
        backend: name.map_or_else(|| "?".into(), |b| b.name.clone()),
        seconds: sent.elapsed().as_secs_f64(),
    });
    answer
}

/// The rest `mailbox` is in, if any.
fn resting(context: &Context<'_>, mailbox: &Mailbox) -> Option<Cooldown> {
    cooldown::running(context.settings, context.files, &mailbox.lock_name)
}

/// The provider's throttling words in a login's answer (a `NO`, a `BAD`, a
/// `BYE`), if that is what they are: neither wrong credentials nor a
/// refused token, and not to be retried.
fn throttling_in(answer: &Result<Login, ImapError>) -> Option<(String, Throttle)> {
    match answer {
        Ok(Login::Rejected(words) | Login::TemporaryFailure(words)) => {
            let throttle = provider::throttling(words)?;
            Some((printable(words.as_bytes()), throttle))
        }
        Ok(Login::Ok) => None,
        Err(e) => throttled(e),
    }
}

/// A login the provider throttled: the mailbox's rest begins (when the
/// mailbox is known: a client's token that names no user has none).
fn throttled_login(
    context: &Context<'_>,
    mailbox: Option<&Mailbox>,
    words: String,
    throttle: &Throttle,
) -> Verdict {
    let wait = match mailbox {
        Some(mailbox) => {
            cooldown::begin(context.settings, context.files, mailbox, &words, throttle)
        }
        None => cooldown::length(context.settings, throttle),
    };
    Verdict::Throttled { words, wait }
}

/// The credentials the backend gets on a route whose login is `login`: a
/// password login's name becomes it, a master-user login keeps its own
/// name and opens the rewritten mailbox, and a token (which names its user
/// inside, signed) goes as it came.
pub fn rewrite(credentials: Credentials, login: &[u8]) -> Credentials {
    match credentials {
        Credentials::Password {
            login: own,
            authzid: Some(_),
            password,
        } => Credentials::Password {
            login: own,
            authzid: Some(login.to_vec()),
            password,
        },
        Credentials::Password {
            authzid: None,
            password,
            ..
        } => Credentials::Password {
            login: login.to_vec(),
            authzid: None,
            password,
        },
        token @ Credentials::Token { .. } => token,
    }
}

/// A device: its own password is checked here (an unknown device the same
/// way as a wrong password), then the backend is logged in to as its
/// mailbox with a token of its source.
fn device_login<L: Link>(
    context: &Context<'_>,
    login: Vec<u8>,
    authzid: Option<Vec<u8>>,
    password: Secret,
    link: &mut L,
) -> Attempt<L::Error> {
    let unrouted = |result| Attempt {
        routed: None,
        result,
    };
    let devices = match context.files.devices() {
        Ok(devices) => devices,
        Err(why) => return unrouted(Err(Stop::Devices(why))),
    };
    let device = devices.authenticate(&login, &password);
    drop(password);
    // A device logs in as itself only: no master-user authzid.
    let device = device.filter(|_| authzid.is_none_or(|a| a == login));
    let Some(device) = device else {
        let penalty = record_failure(context);
        return unrouted(Ok(Verdict::NoDevice { penalty }));
    };
    if let Some(ip) = context.peer.map(|p| p.ip()) {
        penalty::clear(&context.settings.lock_dir, ip);
    }
    let mailbox = device.mailbox.as_bytes();
    let Some(route) = route(&context.settings.routes, mailbox, link) else {
        let user = mailbox.to_vec();
        return unrouted(Ok(Verdict::Unrouted { user }));
    };
    // The token is for this mailbox: no rewrite.
    let routed = Routed {
        backend: route.backend,
        mailbox: Some(mailbox.to_vec()),
    };
    let mailbox = Mailbox::new(context.settings, route.backend, mailbox);
    // Before any token is asked for: a rest spares the token endpoint too.
    let result = match resting(context, &mailbox) {
        Some(rest) => Ok(Verdict::Resting(rest)),
        None => token_login(context, device, route.backend, &mailbox, link),
    };
    Attempt {
        routed: Some(routed),
        result,
    }
}

/// The device's token, and the login with it. A token the store thought
/// valid may still be refused (revoked, clock skew): it is refreshed once
/// and tried once more.
fn token_login<L: Link>(
    context: &Context<'_>,
    device: &Device,
    backend: usize,
    mailbox: &Mailbox,
    link: &mut L,
) -> Result<Verdict, Stop<L::Error>> {
    let Some(source) = context.settings.oauth.get(&device.oauth) else {
        return Ok(Verdict::NoSource {
            device: device.name.clone(),
            oauth: device.oauth.clone(),
        });
    };
    link.passed(Passed::Device { device, source });
    let store = Store::new(&context.settings.state_dir, source)
        .with_client_key(context.files.client_key(&source.name))
        .for_mailbox(&device.mailbox);
    let mut refused: Option<Secret> = None;
    for again in [false, true] {
        let token = match store.access_token(refused.as_ref()) {
            Ok(token) => token,
            Err(error) => {
                let device = device.name.clone();
                return Ok(Verdict::NoToken { device, error });
            }
        };
        link.passed(Passed::Token {
            token: &token,
            again,
        });
        let response = oauth::sasl_response(source.mechanism, &device.mailbox, &token.access_token);
        let mechanism = source.mechanism.name();
        let client = link.client(backend).map_err(Stop::Link)?;
        let sent = timed(context, backend, || {
            client.login_token(mechanism, &response)
        });
        // Not a refused token: no fresh one, no second try.
        if let Some((words, throttle)) = throttling_in(&sent) {
            return Ok(throttled_login(context, Some(mailbox), words, &throttle));
        }
        match sent {
            Ok(Login::Ok) => {
                return Ok(Verdict::DeviceLoggedIn {
                    mailbox: device.mailbox.clone(),
                    relogin: Relogin::Token {
                        mechanism,
                        response,
                    },
                });
            }
            Ok(Login::Rejected(_)) if !again => refused = Some(token.access_token),
            Ok(Login::Rejected(_)) => break,
            Ok(Login::TemporaryFailure(text)) => return Ok(Verdict::Unavailable(text)),
            Err(e) => return Err(Stop::Imap(e)),
        }
    }
    Ok(Verdict::TokenRefused {
        device: device.name.clone(),
        source: source.name.clone(),
        mailbox: device.mailbox.clone(),
    })
}

/// The route of `user`, told to the link.
fn route<L: Link>(routes: &Routes, user: &[u8], link: &mut L) -> Option<Route> {
    let route = routes.route(user)?;
    if route.rule.is_some() {
        debug!(
            "user {} goes to backend {} as {} ({})",
            printable(user),
            routes.backends[route.backend].name,
            printable(&route.login),
            routes.describe(&route)
        );
    }
    link.passed(Passed::Routed {
        user,
        route: &route,
    });
    Some(route)
}

/// Counts a failed device login against the client's address: the extra
/// delay its answer gets.
fn record_failure(context: &Context<'_>) -> Duration {
    let Some(ip) = context.peer.map(|p| p.ip()) else {
        return Duration::ZERO;
    };
    let lock_dir = &context.settings.lock_dir;
    penalty::record_failure(lock_dir, ip).unwrap_or_else(|e| {
        warn!(
            "cannot record a failed login in {}: {e}",
            lock_dir.display()
        );
        Duration::ZERO
    })
}

/// What the session is told of a verdict, with the log line an admin can
/// act on; and the login to repeat at QUIT, if there is one.
pub fn session_answer(verdict: Verdict) -> (LoginAnswer, Option<Relogin>) {
    let answer = match verdict {
        Verdict::LoggedIn(relogin) => return (LoginAnswer::LoggedIn, Some(relogin)),
        Verdict::DeviceLoggedIn { mailbox, relogin } => {
            return (LoginAnswer::LoggedInAs(mailbox.into_bytes()), Some(relogin));
        }
        Verdict::Rejected(reason) => LoginAnswer::Rejected {
            penalty: Duration::ZERO,
            reason,
        },
        Verdict::Unavailable(text) => LoginAnswer::Unavailable(text),
        // The rest's start was logged, once.
        Verdict::Resting(rest) => LoginAnswer::Throttled {
            wait: cooldown::left(&rest),
        },
        Verdict::Throttled { wait, .. } => LoginAnswer::Throttled { wait },
        Verdict::Unrouted { .. } => LoginAnswer::Unrouted,
        Verdict::NoDevice { penalty } => LoginAnswer::Rejected {
            penalty,
            reason: "no such device, or not its password (devices_file)".into(),
        },
        Verdict::NoSource { device, oauth } => {
            error!("device {device}: oauth = {oauth:?} names no [oauth.NAME] of the configuration");
            LoginAnswer::Unavailable("device misconfigured".into())
        }
        Verdict::NoToken { device, error } => {
            match error {
                TokenError::Unavailable(_) => warn!("device {device}: no token now: {error}"),
                // Said at error level when the grant was refused.
                TokenError::Resting(_) => debug!("device {device}: {error}"),
                TokenError::InvalidGrant(_) | TokenError::Setup(_) => {
                    error!("device {device}: no token: {error}")
                }
            }
            LoginAnswer::Unavailable(error.to_string())
        }
        Verdict::TokenRefused {
            device,
            source,
            mailbox,
        } => {
            error!(
                "device {device}: the backend refused a fresh token of [oauth.{source}] for \
                 mailbox {mailbox}: check that the app may access that mailbox"
            );
            LoginAnswer::Unavailable("token refused".into())
        }
    };
    (answer, None)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::io::{self, Read, Write};
    use std::path::{Path, PathBuf};
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as BASE64;

    use super::*;
    use crate::devices::oauth::settings::{ClientProof, OAuthGrant};
    use crate::imap::Transport;
    use crate::preload::Wanted;
    use crate::sasl::TokenMechanism;

    /// An IMAP server that says its lines whatever it is sent; what it was
    /// sent is kept.
    struct Peer {
        says: io::Cursor<Vec<u8>>,
        heard: Arc<Mutex<Vec<u8>>>,
    }

    impl Read for Peer {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.says.read(buf)
        }
    }

    impl Write for Peer {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.heard.lock().expect("heard").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Transport for Peer {
        fn set_deadline(&mut self, _: Instant) {}
    }

    /// The link of these tests: one scripted connection, and what the
    /// login reported on the way.
    struct Scripted {
        client: Option<Client>,
        asked: Vec<usize>,
        passed: Vec<String>,
        /// Runs when the first token is handed out.
        at_first_token: Option<Box<dyn FnOnce()>>,
    }

    impl Scripted {
        fn new(says: &str) -> (Self, Arc<Mutex<Vec<u8>>>) {
            let heard = Arc::new(Mutex::new(Vec::new()));
            let peer = Peer {
                says: io::Cursor::new(says.as_bytes().to_vec()),
                heard: Arc::clone(&heard),
            };
            let client = Client::start(Box::new(peer), Duration::from_secs(5)).expect("greeting");
            let link = Scripted {
                client: Some(client),
                asked: Vec::new(),
                passed: Vec::new(),
                at_first_token: None,
            };
            (link, heard)
        }
    }

    impl Link for Scripted {
        type Error = String;

        fn client(&mut self, backend: usize) -> Result<&mut Client, String> {
            self.asked.push(backend);
            self.client.as_mut().ok_or_else(|| "no connection".into())
        }

        fn passed(&mut self, step: Passed<'_>) {
            self.passed.push(match step {
                Passed::Routed { user, route } => {
                    format!("routed {} to {}", printable(user), route.backend)
                }
                Passed::Device { device, source } => {
                    format!("device {} {}", device.name, source.name)
                }
                Passed::Token { token, again } => {
                    if let Some(then) = self.at_first_token.take() {
                        then();
                    }
                    let token = String::from_utf8_lossy(token.access_token.expose()).into_owned();
                    format!("token {token} again={again}")
                }
            });
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("p3login-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("oauth")).expect("state dir");
        dir
    }

    fn settings(dir: &Path, default: Option<usize>, device_logins: bool) -> Settings {
        let source = OAuthSource {
            name: "src".into(),
            grant: OAuthGrant::ClientCredentials(ClientProof::Secret("/nonexistent".into())),
            // Never asked: the tokens are in the store.
            token_url: Some("http://127.0.0.1:1/token".into()),
            device_authorization_url: None,
            client_id: "id".into(),
            client_secret_file: None,
            scope: "imap".into(),
            mechanism: TokenMechanism::XOAuth2,
            ca_file: None,
            proxy: None,
            refresh_token_max_idle_days: None,
            refresh_token_max_age_days: None,
            client_secret_expires: None,
        };
        let mut settings = Settings::for_tests(dir);
        settings.routes.default = default;
        settings.device_logins = device_logins;
        settings.oauth = BTreeMap::from([("src".to_string(), source)]);
        settings
    }

    /// A devices file with the device `scanner` (password `scan-pw`) of
    /// mailbox `scans@example.org`, and the files a session reads.
    fn device_files(dir: &Path, settings: &Settings) -> Preloaded {
        let hash = crate::devices::hash_password(&Secret::new(b"scan-pw".to_vec())).expect("hash");
        let path = dir.join("devices.toml");
        std::fs::write(
            &path,
            format!(
                "[device.scanner]\npassword = \"{hash}\"\nmailbox = \"scans@example.org\"\n\
                 oauth = \"src\"\n"
            ),
        )
        .expect("devices file");
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod");
        let wanted = Wanted {
            tls: None,
            devices_file: Some(&path),
            cluster_lock_password_file: None,
            oauth: &settings.oauth,
        };
        Preloaded::read(wanted, false)
    }

    fn store_token(dir: &Path, token: &str) {
        let far = 4_000_000_000u64;
        std::fs::write(
            dir.join("oauth").join("src.json"),
            format!("{{\"access_token\":\"{token}\",\"expires_at\":{far}}}"),
        )
        .expect("token file");
    }

    fn authenticated_with(token: &str) -> String {
        let response = oauth::sasl_response(
            TokenMechanism::XOAuth2,
            "scans@example.org",
            &Secret::new(token.as_bytes().to_vec()),
        );
        BASE64.encode(response.expose())
    }

    const GREETING: &str = "* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2] ready\r\n";

    #[test]
    fn a_refused_device_token_is_refreshed_and_tried_once_more() {
        let dir = temp_dir("refresh");
        let settings = settings(&dir, Some(0), true);
        let files = device_files(&dir, &settings);
        store_token(&dir, "first");
        let (mut link, heard) = Scripted::new(&format!(
            "{GREETING}+ eyJzdGF0dXMiOiI0MDEifQ==\r\nA0001 NO [AUTHENTICATIONFAILED] Invalid token\r\n\
             A0002 OK [CAPABILITY IMAP4rev1] Logged in\r\n"
        ));
        // Another session refreshes meanwhile: the store finds its token.
        let store_dir = dir.clone();
        link.at_first_token = Some(Box::new(move || store_token(&store_dir, "second")));
        let context = Context {
            settings: &settings,
            files: &files,
            peer: None,
        };
        let scanner = Credentials::Password {
            login: b"scanner".to_vec(),
            authzid: None,
            password: Secret::new(b"scan-pw".to_vec()),
        };
        let attempt = log_in(&context, scanner, &mut link);
        assert_eq!(
            attempt.routed,
            Some(Routed {
                backend: 0,
                mailbox: Some(b"scans@example.org".to_vec())
            })
        );
        let Ok(Verdict::DeviceLoggedIn { mailbox, .. }) = attempt.result else {
            panic!("not logged in");
        };
        assert_eq!(mailbox, "scans@example.org");
        assert_eq!(
            link.passed,
            [
                "routed scans@example.org to 0",
                "device scanner src",
                "token first again=false",
                "token second again=true"
            ]
        );
        assert_eq!(link.asked, [0, 0]);
        let heard = String::from_utf8(heard.lock().expect("heard").clone()).expect("ASCII");
        assert_eq!(
            heard,
            format!(
                "A0001 AUTHENTICATE XOAUTH2 {}\r\n\r\nA0002 AUTHENTICATE XOAUTH2 {}\r\n",
                authenticated_with("first"),
                authenticated_with("second")
            )
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_wrong_device_password_never_reaches_the_backend() {
        let dir = temp_dir("wrong");
        let settings = settings(&dir, Some(0), true);
        let files = device_files(&dir, &settings);
        let (mut link, heard) = Scripted::new(GREETING);
        let context = Context {
            settings: &settings,
            files: &files,
            peer: None,
        };
        let attempt = log_in(&context, password("scanner", None), &mut link);
        assert_eq!(attempt.routed, None);
        // No client address, nothing counted: no penalty.
        assert!(matches!(
            attempt.result,
            Ok(Verdict::NoDevice { penalty }) if penalty.is_zero()
        ));
        // A device logs in as itself only.
        let sneaky = Credentials::Password {
            login: b"scanner".to_vec(),
            authzid: Some(b"boss".to_vec()),
            password: Secret::new(b"scan-pw".to_vec()),
        };
        let attempt = log_in(&context, sneaky, &mut link);
        assert!(matches!(attempt.result, Ok(Verdict::NoDevice { .. })));
        assert!(link.asked.is_empty() && link.passed.is_empty());
        assert!(heard.lock().expect("heard").is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_user_without_a_route_is_unrouted_before_any_connection() {
        let dir = temp_dir("unrouted");
        let settings = settings(&dir, None, false);
        let files = Preloaded::default();
        let (mut link, _) = Scripted::new(GREETING);
        let context = Context {
            settings: &settings,
            files: &files,
            peer: None,
        };
        let attempt = log_in(&context, password("zed", None), &mut link);
        assert_eq!(attempt.routed, None);
        assert!(matches!(
            attempt.result,
            Ok(Verdict::Unrouted { user }) if user == b"zed"
        ));
        assert!(link.asked.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_password_login_goes_to_its_route_and_a_refusal_keeps_the_backends_words() {
        let dir = temp_dir("password");
        let settings = settings(&dir, Some(0), false);
        let files = Preloaded::default();
        let (mut link, heard) = Scripted::new(&format!(
            "{GREETING}A0001 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"
        ));
        let context = Context {
            settings: &settings,
            files: &files,
            peer: None,
        };
        let attempt = log_in(&context, password("alice", None), &mut link);
        assert_eq!(
            attempt.routed,
            Some(Routed {
                backend: 0,
                mailbox: Some(b"alice".to_vec())
            })
        );
        assert!(matches!(
            attempt.result,
            Ok(Verdict::Rejected(why))
                if why == "the backend said: [AUTHENTICATIONFAILED] Authentication failed."
        ));
        assert_eq!(link.asked, [0]);
        let heard = String::from_utf8(heard.lock().expect("heard").clone()).expect("ASCII");
        assert_eq!(heard, "A0001 LOGIN \"alice\" \"secret\"\r\n");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_throttled_device_token_is_not_refreshed_and_its_mailbox_then_rests() {
        let dir = temp_dir("throttled-device");
        let settings = settings(&dir, Some(0), true);
        let files = device_files(&dir, &settings);
        store_token(&dir, "first");
        let (mut link, heard) = Scripted::new(&format!(
            "{GREETING}A0001 BAD Request is throttled. Suggested Backoff Time: 4500 milliseconds\r\n\
             * BYE Connection closed. 14\r\n"
        ));
        let context = Context {
            settings: &settings,
            files: &files,
            peer: None,
        };
        let scanner = || Credentials::Password {
            login: b"scanner".to_vec(),
            authzid: None,
            password: Secret::new(b"scan-pw".to_vec()),
        };
        let attempt = log_in(&context, scanner(), &mut link);
        let Ok(Verdict::Throttled { words, wait }) = attempt.result else {
            panic!("not throttled");
        };
        assert_eq!(
            words,
            "Request is throttled. Suggested Backoff Time: 4500 milliseconds"
        );
        assert_eq!(wait, Duration::from_secs(5));
        // One AUTHENTICATE, no fresh token.
        assert_eq!(
            link.passed,
            [
                "routed scans@example.org to 0",
                "device scanner src",
                "token first again=false"
            ]
        );
        let sent = heard.lock().expect("heard").len();
        // The next login of the mailbox sends nothing and asks for no token.
        link.passed.clear();
        let attempt = log_in(&context, scanner(), &mut link);
        let Ok(Verdict::Resting(rest)) = attempt.result else {
            panic!("not resting");
        };
        assert_eq!(rest.words, words);
        assert_eq!(link.passed, ["routed scans@example.org to 0"]);
        assert_eq!(heard.lock().expect("heard").len(), sent);
        let (answer, relogin) = session_answer(Verdict::Resting(rest));
        assert!(relogin.is_none());
        assert!(
            matches!(answer, LoginAnswer::Throttled { wait } if wait <= Duration::from_secs(5))
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn gmails_throttling_no_is_neither_a_wrong_password_nor_another_mailboxs_rest() {
        let dir = temp_dir("throttled-password");
        let settings = settings(&dir, Some(0), false);
        let files = Preloaded::default();
        let (mut link, heard) = Scripted::new(&format!(
            "{GREETING}A0001 NO [ALERT] Too many simultaneous connections. (Failure)\r\n\
             A0002 NO [AUTHENTICATIONFAILED] Invalid credentials (Failure)\r\n"
        ));
        let context = Context {
            settings: &settings,
            files: &files,
            peer: None,
        };
        let attempt = log_in(&context, password("alice", None), &mut link);
        assert!(matches!(
            attempt.result,
            Ok(Verdict::Throttled { wait, .. }) if wait == settings.throttle_cooldown
        ));
        // Alice rests (in any case of her name); Bob is asked as usual.
        let attempt = log_in(&context, password("ALICE", None), &mut link);
        assert!(matches!(attempt.result, Ok(Verdict::Resting(_))));
        let attempt = log_in(&context, password("bob", None), &mut link);
        assert!(matches!(attempt.result, Ok(Verdict::Rejected(_))));
        let heard = String::from_utf8(heard.lock().expect("heard").clone()).expect("ASCII");
        assert_eq!(
            heard,
            "A0001 LOGIN \"alice\" \"secret\"\r\nA0002 LOGIN \"bob\" \"secret\"\r\n"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn password(login: &str, authzid: Option<&str>) -> Credentials {
        Credentials::Password {
            login: login.into(),
            authzid: authzid.map(Into::into),
            password: Secret::new(b"secret".to_vec()),
        }
    }

    fn names(credentials: &Credentials) -> (Vec<u8>, Option<Vec<u8>>) {
        match credentials {
            Credentials::Password { login, authzid, .. } => (login.clone(), authzid.clone()),
            Credentials::Token { .. } => panic!("not a password login"),
        }
    }

    #[test]
    fn a_password_login_takes_the_routes_login() {
        let rewritten = rewrite(password("doe_jane@east", None), b"doe_jane");
        assert_eq!(names(&rewritten), (b"doe_jane".to_vec(), None));
        assert_eq!(rewritten.maildrop_user(), Some(b"doe_jane".to_vec()));
    }

    #[test]
    fn a_master_user_login_keeps_its_name_and_opens_the_rewritten_mailbox() {
        let rewritten = rewrite(password("master", Some("jane@east")), b"jane");
        assert_eq!(
            names(&rewritten),
            (b"master".to_vec(), Some(b"jane".to_vec()))
        );
        assert_eq!(rewritten.maildrop_user(), Some(b"jane".to_vec()));
    }

    #[test]
    fn a_token_goes_as_it_came() {
        let response = b"user=jane@east\x01auth=Bearer t\x01\x01".to_vec();
        let token = Credentials::Token {
            mechanism: TokenMechanism::XOAuth2,
            response: Secret::new(response.clone()),
        };
        match rewrite(token, b"other") {
            Credentials::Token {
                mechanism,
                response: kept,
            } => {
                assert_eq!(mechanism, TokenMechanism::XOAuth2);
                assert_eq!(kept.expose(), &response[..]);
            }
            Credentials::Password { .. } => panic!("a token became a password"),
        }
    }

    #[test]
    fn the_session_hears_a_failed_device_login_as_rejected_with_its_penalty() {
        let penalty = Duration::from_secs(4);
        let (answer, relogin) = session_answer(Verdict::NoDevice { penalty });
        assert_eq!(
            answer,
            LoginAnswer::Rejected {
                penalty,
                reason: "no such device, or not its password (devices_file)".into()
            }
        );
        assert!(relogin.is_none());
    }

    #[test]
    fn the_session_hears_token_trouble_as_unavailable() {
        let cases = [
            (
                Verdict::NoToken {
                    device: "scanner".into(),
                    error: TokenError::Unavailable("down".into()),
                },
                "token endpoint unavailable: down",
            ),
            (
                Verdict::TokenRefused {
                    device: "scanner".into(),
                    source: "m365".into(),
                    mailbox: "scans@example.org".into(),
                },
                "token refused",
            ),
            (
                Verdict::NoSource {
                    device: "scanner".into(),
                    oauth: "m356".into(),
                },
                "device misconfigured",
            ),
        ];
        for (verdict, text) in cases {
            assert_eq!(
                session_answer(verdict).0,
                LoginAnswer::Unavailable(text.into())
            );
        }
    }

    #[test]
    fn the_session_keeps_the_login_of_a_device_to_repeat_it() {
        let relogin = Relogin::Token {
            mechanism: "XOAUTH2",
            response: Secret::new(b"r".to_vec()),
        };
        let (answer, relogin) = session_answer(Verdict::DeviceLoggedIn {
            mailbox: "scans@example.org".into(),
            relogin,
        });
        assert_eq!(
            answer,
            LoginAnswer::LoggedInAs(b"scans@example.org".to_vec())
        );
        assert!(matches!(
            relogin,
            Some(Relogin::Token {
                mechanism: "XOAUTH2",
                ..
            })
        ));
    }
}
