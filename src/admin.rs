//! The admin's one-off commands: `--hash-password` (a hash for the devices
//! file), `--oauth-consent NAME` (the one-time sign-in of a token source
//! with a consent step) and `--oauth-status` (every source's health). Each
//! says in one line what failed.

use std::io::{BufRead, IsTerminal, Write};
use std::os::unix::fs::MetadataExt;

use crate::config::Config;
use crate::devices;
use crate::devices::oauth::settings::{ClientProof, OAuthGrant, OAuthSource};
use crate::devices::oauth::status::{self, Level};
use crate::devices::oauth::store::{self, Saved, Store};
use crate::devices::oauth::{authcode, consent, http, jwt};
use crate::privilege;
use crate::secret::Secret;

/// Reads a password (asked twice without echo on a terminal, else the first
/// line of stdin) and prints its argon2id hash.
pub fn hash_password(out: &mut dyn Write) -> Result<(), String> {
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Device password: ")
            .map_err(|e| format!("cannot read the password: {e}"))?;
        let first = Secret::new(first.into_bytes());
        let again = rpassword::prompt_password("Again: ")
            .map_err(|e| format!("cannot read the password: {e}"))?;
        if again.as_bytes() != first.expose() {
            return Err("the two passwords differ".into());
        }
        first
    } else {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| format!("cannot read the password from stdin: {e}"))?;
        let line = Secret::new(line.into_bytes());
        let bytes = line.expose();
        let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
        let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        Secret::new(bytes.to_vec())
    };
    if password.expose().is_empty() {
        return Err("an empty password is not a password".into());
    }
    let hash = devices::hash_password(&password)?;
    writeln!(out, "{hash}").map_err(|e| e.to_string())
}

/// Runs the one-time consent of `name` (the device authorization grant,
/// or the browser sign-in) and stores its tokens.
pub fn oauth_consent(config: &Config, name: &str, out: &mut dyn Write) -> Result<(), String> {
    let source = config
        .backend
        .oauth
        .get(name)
        .ok_or_else(|| format!("no [oauth.{name}] in the configuration"))?;
    // Root writes the tokens and then hands them to the account sessions
    // run as (see `privilege`); anyone else must be that account, or the
    // sessions could not read what it wrote.
    let session_user = if privilege::is_root() {
        Some(privilege::resolve(&config.user, config.group.as_deref()).map_err(|e| e.to_string())?)
    } else {
        if let (Ok(dir), Ok(me)) = (
            std::fs::metadata(&config.backend.state_dir),
            std::fs::metadata("/proc/self"),
        ) && dir.uid() != me.uid()
        {
            return Err(format!(
                "{} belongs to uid {}, this is uid {}: run it as root or as the service's user, \
                 e.g. sudo -u pop3server pop3server --oauth-consent {name}",
                config.backend.state_dir.display(),
                dir.uid(),
                me.uid()
            ));
        }
        None
    };
    let store = Store::new(&config.backend.state_dir, source);
    let result = match source.grant {
        OAuthGrant::AuthorizationCode { .. } => {
            let input = Box::new(std::io::BufReader::new(std::io::stdin()));
            authcode::run(source, &store, out, input, config.consent_timeout)
        }
        _ => consent::run(source, &store, out, &std::thread::sleep),
    };
    let result = result.map_err(|e| e.to_string());
    if let Some(id) = &session_user
        && config.backend.state_dir.exists()
    {
        let handed = privilege::hand_over(id, &config.backend.state_dir).map_err(|e| e.to_string());
        return result.and(handed);
    }
    result
}

/// Prints the health of every token source; the exit status is the worst
/// level: 0 all well, 1 something expires soon, 2 something is broken.
pub fn oauth_status(config: &Config, out: &mut dyn Write) -> Result<u8, String> {
    let sources = &config.backend.oauth;
    if sources.is_empty() {
        writeln!(out, "no [oauth.NAME] token source is configured").map_err(|e| e.to_string())?;
        return Ok(0);
    }
    let now = store::now();
    let mut worst = Level::Ok;
    for source in sources.values() {
        let (level, lines) = source_status(config, source, now);
        worst = worst.max(level);
        let mut text = format!(
            "[oauth.{}] grant {}: {}\n",
            source.name,
            source.grant_name(),
            level.name()
        );
        for line in lines {
            text.push_str(&format!("  {line}\n"));
        }
        out.write_all(text.as_bytes()).map_err(|e| e.to_string())?;
    }
    Ok(match worst {
        Level::Ok => 0,
        Level::Expiring => 1,
        Level::Broken => 2,
    })
}

/// One source's level and lines: its key files, then what each of its
/// token files (one per mailbox for a service account) tells.
fn source_status(config: &Config, source: &OAuthSource, now: u64) -> (Level, Vec<String>) {
    let mut level = Level::Ok;
    let mut lines = Vec::new();
    if let Err(e) = http::client_key(source) {
        level = Level::Broken;
        lines.push(format!("{e} (run this as root or as the service's user)"));
    }
    let certificate = match &source.grant {
        OAuthGrant::ClientCredentials(ClientProof::Certificate { cert, .. }) => {
            Some(jwt::Certificate::from_file(cert).map(|c| c.not_after))
        }
        _ => None,
    };
    let saved = match saved_files(config, source) {
        Ok(saved) => saved,
        Err(e) => return (Level::Broken, vec![e]),
    };
    if saved.is_empty() {
        lines.push("no mailbox has had a token yet".into());
        let report = status::report(source, &Saved::default(), certificate, now);
        // A service account without tokens is not broken for that.
        let report_level = report.level;
        lines.extend(report.lines.into_iter().map(|l| l.text));
        return (level.max(report_level), lines);
    }
    for saved in saved {
        let report = status::report(source, &saved, certificate.clone(), now);
        level = level.max(report.level);
        lines.extend(report.lines.into_iter().map(|l| l.text));
    }
    (level, lines)
}

/// What the store keeps for `source`: its file, or for a service account
/// the file of each mailbox (none yet: an empty list).
fn saved_files(config: &Config, source: &OAuthSource) -> Result<Vec<Saved>, String> {
    let store = Store::new(&config.backend.state_dir, source);
    if !matches!(source.grant, OAuthGrant::JwtBearer { .. }) {
        return store.saved().map(|s| vec![s]).map_err(|e| e.to_string());
    }
    let dir = config.backend.state_dir.join("oauth");
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot read {}: {e}", dir.display())),
    };
    let prefix = format!("{}.", source.name);
    let mut saved = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(name.starts_with(&prefix) && name.ends_with(".json")) {
            continue;
        }
        let bytes = Secret::new(
            std::fs::read(entry.path()).map_err(|e| format!("cannot read {name}: {e}"))?,
        );
        let file: Saved = serde_json::from_slice(bytes.expose())
            .map_err(|e| format!("{} is damaged: {e}", entry.path().display()))?;
        saved.push(file);
    }
    Ok(saved)
}
