//! `pop3server --check`: a health probe of the configured backend for admins
//! and monitoring (Nagios-style: exit 0 only if everything worked). Says on
//! stdout what it verified; a failure is one line naming the cause.

use std::io::Write;
use std::path::Path;

use crate::backend::imap::{connect_hosts, describe};
use crate::config::{CheckRequest, Config};
use crate::devices::Devices;
use crate::imap::{Client, ImapError, Login};
use crate::oauth;
use crate::oauth::store::Store;
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
    // The user --route names, or the one --user logs in as where a table
    // could send it elsewhere.
    let routed = request
        .route
        .as_ref()
        .or(request.user.as_ref().filter(|_| !routes.rules.is_empty()));
    let (index, login) = match routed {
        Some(user) => {
            let route = routes.route(user.as_bytes()).ok_or_else(|| {
                format!(
                    "route of {user}: no [[route]] rule matches and default_backend is none: \
                     this user cannot log in"
                )
            })?;
            let login = String::from_utf8_lossy(&route.login).into_owned();
            say(
                out,
                &format!(
                    "route: {user} -> backend {} by {}, IMAP login {login}",
                    routes.backends[route.backend].name,
                    routes.describe(&route)
                ),
            );
            (route.backend, Some(login))
        }
        None => (routes.before_login().unwrap_or(0), None),
    };
    let backend = &routes.backends[index];
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
    let password = match (&request.user, &request.password_file) {
        (Some(_), Some(path)) => Some(read_password(path)?),
        (Some(_), None) => return Err("--user needs --password-file".into()),
        _ => None,
    };
    // As sessions do: each host given up for the next is a line.
    let skipped = |host: &Host, e: &ImapError| {
        say(
            out,
            &format!("host {host}: {}; trying the next host", diagnose(host, e)),
        )
    };
    let connected = connect_hosts(&config.backend, backend, skipped);
    let (mut client, host) = connected.map_err(|(e, host)| match host {
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
    if let (Some(user), Some(password)) = (&request.user, password) {
        let imap_user = match (&request.route, &login) {
            (None, Some(rewritten)) => rewritten.as_str(),
            _ => user.as_str(),
        };
        let login = match &config.devices_file {
            Some(path) => device_login(config, path, user, &password, &mut client, out)?,
            None => client.login(imap_user.as_bytes(), None, &password),
        };
        match login {
            Ok(Login::Ok) => say(out, &format!("login: ok as {imap_user}")),
            Ok(Login::Rejected(why)) => {
                return Err(format!("authentication failed for user {user}: {why}"));
            }
            Ok(Login::TemporaryFailure(text)) => {
                return Err(format!("backend cannot log in {user} now: {text}"));
            }
            Err(e) => return Err(diagnose(host, &e)),
        }
        for folder in &config.backend.folders {
            let selected = client.select(folder, true).map_err(|e| match e {
                ImapError::Refused { info, .. } => {
                    format!("folder {folder} cannot be opened: {}", info.text)
                }
                e => diagnose(host, &e),
            })?;
            say(
                out,
                &format!("folder {folder}: {} messages", selected.exists),
            );
        }
    }
    client.logout();
    say(out, "OK");
    Ok(())
}

/// The device chain, step by step: the local account, its token, the
/// backend login with the token. Each step says what it checked; the first
/// that fails is the diagnosis.
fn device_login(
    config: &Config,
    path: &Path,
    user: &str,
    password: &Secret,
    client: &mut Client,
    out: &mut dyn Write,
) -> Result<Result<Login, ImapError>, String> {
    let devices = Devices::load(path)?;
    say(
        out,
        &format!("devices: {} in {}", devices.iter().count(), path.display()),
    );
    let device = devices
        .authenticate(user.as_bytes(), password)
        .ok_or_else(|| format!("device {user}: no such device, or not its password"))?;
    let source = config.backend.oauth.get(&device.oauth).ok_or_else(|| {
        format!(
            "device {user}: oauth = {:?} names no [oauth.NAME] of the configuration",
            device.oauth
        )
    })?;
    say(
        out,
        &format!(
            "device {user}: password ok, mailbox {}, token source [oauth.{}]",
            device.mailbox, source.name
        ),
    );
    let token = Store::new(&config.backend.state_dir, source)
        .access_token(None)
        .map_err(|e| format!("device {user}: no token: {e}"))?;
    let left = token.expires_at.saturating_sub(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    );
    say(
        out,
        &format!("token: ok, valid for {} more minutes", left / 60),
    );
    let response = oauth::sasl_response(source.mechanism, &device.mailbox, &token.access_token);
    let login = client.login_token(source.mechanism.name(), &response);
    if let Ok(Login::Rejected(_)) = login {
        return Err(format!(
            "the backend refused the token for mailbox {}: check that the app may access it",
            device.mailbox
        ));
    }
    Ok(login)
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
