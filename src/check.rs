//! `pop3server --check`: a health probe of the configured backend for admins
//! and monitoring (Nagios-style: exit 0 only if everything worked). Says on
//! stdout what it verified; a failure is one line naming the cause.

use std::io::Write;
use std::path::Path;

use crate::backend::imap::endpoint as backend_endpoint;
use crate::config::{BackendTls, CheckRequest, Config};
use crate::devices::Devices;
use crate::imap::{Client, ImapError, Login};
use crate::oauth;
use crate::oauth::store::Store;
use crate::secret::Secret;

/// Runs the check; the error is the one-line diagnosis.
pub fn run(config: &Config, request: &CheckRequest, out: &mut dyn Write) -> Result<(), String> {
    let tls = match config.backend_tls {
        BackendTls::None => "none (plaintext)",
        BackendTls::StartTls => "STARTTLS",
        BackendTls::Implicit => "implicit TLS",
    };
    let verify = match (config.backend_tls, config.backend_tls_fingerprint) {
        (BackendTls::None, _) => String::new(),
        (_, Some(pin)) => format!(", certificate pinned (backend_tls_fingerprint {pin})"),
        _ if !config.backend_tls_verify => {
            ", certificate NOT verified (backend_tls_verify = false)".to_string()
        }
        _ => match &config.backend_ca_file {
            Some(ca) => format!(", certificate checked against {}", ca.display()),
            None => ", certificate checked against the system trust store".to_string(),
        },
    };
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
    say(
        out,
        &format!(
            "backend: {}:{} TLS: {tls}{verify}",
            config.backend_host, config.backend_port
        ),
    );
    let password = match (&request.user, &request.password_file) {
        (Some(_), Some(path)) => Some(read_password(path)?),
        (Some(_), None) => return Err("--user needs --password-file".into()),
        _ => None,
    };
    let endpoint = backend_endpoint(config).map_err(|e| diagnose(config, &e))?;
    let mut client = Client::connect(&endpoint).map_err(|e| diagnose(config, &e))?;
    let verified = match (
        config.backend_tls,
        config.backend_tls_fingerprint,
        config.backend_tls_verify,
    ) {
        (BackendTls::None, _, _) => "connected (no TLS)".to_string(),
        (_, Some(_), _) => "connected, TLS certificate is the pinned one".to_string(),
        (_, None, true) => format!(
            "connected, TLS certificate verified for {}",
            config.backend_host
        ),
        (_, None, false) => "connected, TLS without certificate verification".to_string(),
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
        let login = match &config.devices_file {
            Some(path) => device_login(config, path, user, &password, &mut client, out)?,
            None => client.login(user.as_bytes(), None, &password),
        };
        match login {
            Ok(Login::Ok) => say(out, &format!("login: ok as {user}")),
            Ok(Login::Rejected(why)) => {
                return Err(format!("authentication failed for user {user}: {why}"));
            }
            Ok(Login::TemporaryFailure(text)) => {
                return Err(format!("backend cannot log in {user} now: {text}"));
            }
            Err(e) => return Err(diagnose(config, &e)),
        }
        for folder in &config.folders {
            let selected = client.select(folder, true).map_err(|e| match e {
                ImapError::Refused { info, .. } => {
                    format!("folder {folder} cannot be opened: {}", info.text)
                }
                e => diagnose(config, &e),
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
    let source = config.oauth.get(&device.oauth).ok_or_else(|| {
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
    let token = Store::new(&config.state_dir, source)
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

fn diagnose(config: &Config, e: &ImapError) -> String {
    let at = format!("{}:{}", config.backend_host, config.backend_port);
    match e {
        ImapError::Resolve(why) => format!("DNS: {why}"),
        // `why` names the address tried: "127.0.0.1:143: Connection refused".
        ImapError::Connect(why) if config.backend_host.parse::<std::net::IpAddr>().is_ok() => {
            format!("cannot connect to {why}")
        }
        ImapError::Connect(why) => {
            format!("cannot connect to {} ({why})", config.backend_host)
        }
        ImapError::Tls(why) => format!("TLS with {at} failed: {why}"),
        ImapError::Timeout => {
            format!("{at} did not answer in time (backend_connect_timeout/backend_timeout)")
        }
        other => format!("{at}: {other}"),
    }
}
