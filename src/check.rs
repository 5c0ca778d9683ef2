//! `pop3server --check`: a health probe of the configured backend for admins
//! and monitoring (Nagios-style: exit 0 only if everything worked). Says on
//! stdout what it verified; a failure is one line naming the cause. With
//! `--user` it logs in as a session would, by the session's own login
//! (`backend::login::log_in`: the routing, a device's token and its
//! refresh when the backend refuses it), over a connection of its own that
//! reports each step.

use std::io::Write;

use crate::backend::connection::{Timeouts, connect_hosts, describe};
use crate::backend::login::{self, Link, Passed, Relogin, Stop, Verdict};
use crate::backend::removal::{self, Removal};
use crate::backend::{Credentials, provider};
use crate::config::{CheckRequest, Config};
use crate::imap::{Client, ImapError};
use crate::logging::{printable, utc};
use crate::preload::{Preloaded, Wanted};
use crate::route::{BackendTls, Host};
use crate::secret::Secret;

/// Runs the check; the error is the one-line diagnosis.
pub fn run(config: &Config, request: &CheckRequest, out: &mut dyn Write) -> Result<(), String> {
    say(
        out,
        &format!(
            "configuration: {}",
            match &config.config_file {
                Some(path) => path.display().to_string(),
                None => "none read (defaults and command line)".to_string(),
            }
        ),
    );
    if let Some(path) = &config.routes_file {
        say(out, &format!("routing table: {}", path.display()));
    }
    let routes = &config.backend.routes;
    // --route USER: the route is shown, and without --user it is where the
    // check connects.
    let routed = match &request.route {
        Some(user) => {
            let route = routes
                .route(user.as_bytes())
                .ok_or_else(|| unrouted(user))?;
            let login = String::from_utf8_lossy(&route.login).into_owned();
            say(
                out,
                &format!(
                    "route: {user} -> backend {} by {}, IMAP login {login}",
                    routes.backends[route.backend].name,
                    routes.describe(&route)
                ),
            );
            Some(route.backend)
        }
        None => None,
    };
    let password = match (&request.user, &request.password_file) {
        (Some(_), Some(path)) => Some(read_password(path)?),
        (Some(_), None) => return Err("--user needs --password-file".into()),
        _ => None,
    };
    let mut probe = Probe {
        config,
        out,
        connected: None,
        backend: None,
    };
    match (&request.user, password) {
        (Some(user), Some(password)) => {
            log_in(config, user, password, &mut probe)?;
            let Some((client, host)) = &mut probe.connected else {
                return Err("no backend connection after the login".into());
            };
            for folder in &config.backend.folders {
                let selected = client.select(folder, true).map_err(|e| match e {
                    ImapError::Refused { info, .. }
                        if provider::mailbox_not_connected(&info.text) =>
                    {
                        format!(
                            "folder {folder} cannot be opened: {}: {}",
                            info.text,
                            provider::NOT_CONNECTED_FIX
                        )
                    }
                    ImapError::Refused { info, .. } => {
                        format!("folder {folder} cannot be opened: {}", info.text)
                    }
                    e => diagnose(host, &e),
                })?;
                say(
                    probe.out,
                    &format!("folder {folder}: {} messages", selected.exists),
                );
            }
            let removal = Removal::of(&config.backend.routes, probe.backend);
            if let Some(line) = trash(client, host, removal)? {
                say(probe.out, &line);
            }
        }
        _ => {
            probe.client(routed.unwrap_or(routes.before_login().unwrap_or(0)))?;
        }
    }
    if let Some((client, _)) = probe.connected.take() {
        client.logout();
    }
    say(probe.out, "OK");
    Ok(())
}

/// The session's login, step by step on stdout; the first step that fails
/// is the diagnosis.
fn log_in(
    config: &Config,
    user: &str,
    password: Secret,
    probe: &mut Probe<'_>,
) -> Result<(), String> {
    // What a session that keeps its identity reads: the devices file,
    // each token source its client secret, when a login needs them, and
    // the cluster lock's password (a throttled mailbox's rest is in Redis).
    let files = Preloaded::read(
        Wanted {
            tls: None,
            devices_file: config.devices_file.as_deref(),
            cluster_lock_password_file: config.cluster_lock_password_file.as_deref(),
            oauth: &config.backend.oauth,
        },
        false,
    );
    if let Some(path) = &config.devices_file {
        let devices = files.devices()?;
        say(
            probe.out,
            &format!("devices: {} in {}", devices.iter().count(), path.display()),
        );
    }
    let context = login::Context {
        settings: &config.backend,
        files: &files,
        // No client address: a failure is not counted against anyone.
        peer: None,
    };
    let credentials = Credentials::Password {
        login: user.as_bytes().to_vec(),
        authzid: None,
        password,
    };
    let verdict = match login::log_in(&context, credentials, probe).result {
        Ok(verdict) => verdict,
        Err(Stop::Link(diagnosis) | Stop::Devices(diagnosis)) => return Err(diagnosis),
        Err(Stop::Imap(e)) => {
            return Err(match &probe.connected {
                Some((_, host)) => diagnose(host, &e),
                None => e.to_string(),
            });
        }
    };
    let logged_in_as = match verdict {
        Verdict::LoggedIn(Relogin::Password { login, .. }) => {
            String::from_utf8_lossy(&login).into_owned()
        }
        Verdict::LoggedIn(Relogin::Token { .. }) | Verdict::DeviceLoggedIn { .. } => user.into(),
        Verdict::Rejected(why) => {
            return Err(format!("authentication failed for user {user}: {why}"));
        }
        Verdict::Unavailable(text) => {
            return Err(format!("backend cannot log in {user} now: {text}"));
        }
        Verdict::Resting(rest) => {
            return Err(format!(
                "mailbox of {user} rests until {}: its provider throttled it ({}); no login is \
                 tried until then (throttle_cooldown, or the provider's suggested time)",
                utc(rest.until),
                rest.words
            ));
        }
        Verdict::Throttled { words, wait } => {
            return Err(format!(
                "the provider throttles the mailbox of {user} ({words}): it now rests for {} s, \
                 no login is tried until then",
                wait.as_secs()
            ));
        }
        Verdict::Unrouted { user } => return Err(unrouted(&printable(&user))),
        Verdict::NoDevice { .. } => {
            return Err(format!(
                "device {user}: no such device, or not its password"
            ));
        }
        Verdict::NoSource { device, oauth } => {
            return Err(format!(
                "device {device}: oauth = {oauth:?} names no [oauth.NAME] of the configuration"
            ));
        }
        Verdict::NoToken { device, error } => {
            return Err(format!("device {device}: no token: {error}"));
        }
        Verdict::TokenRefused { mailbox, .. } => {
            return Err(format!(
                "the backend refused the token for mailbox {mailbox}, and a fresh one too: \
                 check that the app may access it"
            ));
        }
    };
    say(probe.out, &format!("login: ok as {logged_in_as}"));
    Ok(())
}

fn unrouted(user: &str) -> String {
    format!(
        "route of {user}: no [[route]] rule matches and default_backend is none: \
         this user cannot log in"
    )
}

/// Where QUIT would put the messages marked by DELE, with `delete_action
/// = trash`: the Trash folder a session would use (`trash_folder` opened
/// read-only, to see that it exists), or the error a session's QUIT would
/// meet. `None` with `delete_action = expunge`.
fn trash(client: &mut Client, host: &Host, removal: Removal) -> Result<Option<String>, String> {
    let Removal::Trash(configured) = removal else {
        return Ok(None);
    };
    if let Some(name) = configured {
        let opened = client.select(name, true).map_err(|e| match e {
            ImapError::Refused { info, .. } => format!(
                "trash_folder {name:?} cannot be opened: {}: create it, or correct trash_folder",
                info.text
            ),
            e => diagnose(host, &e),
        })?;
        return Ok(Some(format!(
            "delete_action: trash, to trash_folder {name:?} ({} messages)",
            opened.exists
        )));
    }
    match removal::find_trash(client, None).map_err(|e| diagnose(host, &e))? {
        Some(trash) => Ok(Some(format!(
            "delete_action: trash, to {trash} (listed with \\Trash)"
        ))),
        None => Err(concat!(
            "delete_action = trash, but the backend lists no mailbox with the \\Trash ",
            "attribute: set trash_folder, give a mailbox that attribute, or set ",
            "delete_action = expunge"
        )
        .into()),
    }
}

/// The check's connection, which says what it verified as it goes.
struct Probe<'c> {
    config: &'c Config,
    out: &'c mut dyn Write,
    /// The connection, once made, and the host it went to.
    connected: Option<(Client, &'c Host)>,
    /// The backend the login went to.
    backend: Option<usize>,
}

impl Link for Probe<'_> {
    type Error = String;

    /// One connection per check: the login asks for its backend once.
    fn client(&mut self, backend: usize) -> Result<&mut Client, String> {
        self.backend = Some(backend);
        if self.connected.is_none() {
            self.connected = Some(connect(self.config, backend, self.out)?);
        }
        match &mut self.connected {
            Some((client, _)) => Ok(client),
            None => Err("no backend connection".into()),
        }
    }

    fn passed(&mut self, step: Passed<'_>) {
        let line = match step {
            Passed::Routed { user, route } => {
                let routes = &self.config.backend.routes;
                // Without a table everyone goes to the one backend.
                if routes.rules.is_empty() {
                    return;
                }
                // A device logs in as its mailbox, which no rule rewrites.
                let login = if self.config.backend.device_logins {
                    user
                } else {
                    &route.login
                };
                format!(
                    "route: {} -> backend {} by {}, IMAP login {}",
                    printable(user),
                    routes.backends[route.backend].name,
                    routes.describe(route),
                    printable(login)
                )
            }
            Passed::Device { device, source } => format!(
                "device {}: password ok, mailbox {}, token source [oauth.{}]",
                device.name, device.mailbox, source.name
            ),
            Passed::Token { token, again } => {
                let left = token.expires_at.saturating_sub(
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs()),
                );
                let which = if again {
                    "the backend refused it; a fresh one: ok"
                } else {
                    "ok"
                };
                format!("token: {which}, valid for {} more minutes", left / 60)
            }
        };
        say(self.out, &line);
    }
}

/// Connects to backend `index` as sessions do (each host given up for the
/// next is a line), and says what it found there.
fn connect<'c>(
    config: &'c Config,
    index: usize,
    out: &mut dyn Write,
) -> Result<(Client, &'c Host), String> {
    let backend = &config.backend.routes.backends[index];
    let tls = match backend.tls {
        BackendTls::None => "none (plaintext)",
        BackendTls::StartTls => "STARTTLS",
        BackendTls::Implicit => "implicit TLS",
    };
    let verify = match (backend.tls, backend.fingerprint) {
        (BackendTls::None, _) => String::new(),
        (_, Some(pin)) => format!(", certificate pinned (backend_tls_fingerprint {pin})"),
        _ if !backend.verify => {
            ", certificate NOT verified (backend_tls_verify = false)".to_string()
        }
        _ => match &backend.ca_file {
            Some(ca) => format!(", certificate checked against {}", ca.display()),
            None => ", certificate checked against the system trust store".to_string(),
        },
    };
    say(
        out,
        &format!("backend: {} TLS: {tls}{verify}", describe(backend)),
    );
    let skipped = |host: &Host, e: &ImapError| {
        say(
            out,
            &format!("host {host}: {}; trying the next host", diagnose(host, e)),
        )
    };
    let connected = connect_hosts(Timeouts::of(&config.backend), backend, skipped);
    let (client, host) = connected.map_err(|(e, host)| match host {
        Some(host) => diagnose(host, &e),
        None => e.to_string(),
    })?;
    let verified = match (backend.tls, backend.fingerprint, backend.verify) {
        (BackendTls::None, _, _) => format!("connected to {host} (no TLS)"),
        (_, Some(_), _) => format!("connected to {host}, TLS certificate is the pinned one"),
        (_, None, true) => format!(
            "connected to {host}, TLS certificate verified for {}",
            host.host
        ),
        (_, None, false) => format!("connected to {host}, TLS without certificate verification"),
    };
    say(out, &verified);
    if let Some(fp) = client.backend_fingerprint() {
        // What to copy into backend_tls_fingerprint to pin this one.
        say(out, &format!("certificate SHA-256: {fp}"));
    }
    say(
        out,
        &format!("capabilities: {}", client.capabilities().join(" ")),
    );
    Ok((client, host))
}

fn say(out: &mut dyn Write, line: &str) {
    let _ = writeln!(out, "{line}");
}

fn read_password(path: &std::path::Path) -> Result<Secret, String> {
    Secret::first_line_of(path)
        .map_err(|e| format!("cannot read password file {}: {e}", path.display()))
}

fn diagnose(host: &Host, e: &ImapError) -> String {
    match e {
        ImapError::Resolve(why) => format!("DNS: {why}"),
        // `why` names the address tried: "127.0.0.1:143: Connection refused".
        ImapError::Connect(why) if host.host.parse::<std::net::IpAddr>().is_ok() => {
            format!("cannot connect to {why}")
        }
        ImapError::Connect(why) => format!("cannot connect to {} ({why})", host.host),
        ImapError::Tls(why) | ImapError::Certificate(why) => {
            format!("TLS with {host} failed: {why}")
        }
        ImapError::Timeout => {
            format!("{host} did not answer in time (backend_connect_timeout/backend_timeout)")
        }
        other => format!("{host}: {other}"),
    }
}
