//! The admin's one-off commands: `--hash-password` (a hash for the devices
//! file) and `--oauth-consent NAME` (the one-time sign-in of a
//! refresh-token source). Each says in one line what failed.

use std::io::{BufRead, IsTerminal, Write};
use std::os::unix::fs::MetadataExt;

use crate::config::Config;
use crate::devices;
use crate::devices::oauth::consent;
use crate::devices::oauth::store::Store;
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

/// Runs the device authorization grant for `name` and stores its tokens.
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
    let result = consent::run(source, &store, out, &std::thread::sleep).map_err(|e| e.to_string());
    if let Some(id) = &session_user
        && config.backend.state_dir.exists()
    {
        let handed = privilege::hand_over(id, &config.backend.state_dir).map_err(|e| e.to_string());
        return result.and(handed);
    }
    result
}
