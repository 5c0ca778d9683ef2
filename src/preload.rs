//! What a session reads before its first byte from the client. The TLS
//! files always: STLS and implicit TLS need them, and reading them per
//! connection lets a renewed certificate count without a restart. The files
//! that may be readable by root only (device password hashes, OAuth2 client
//! secrets) only in a process that is about to leave root
//! (`privilege::switch_to`), so they may stay root's (mode 0600); any other
//! process reads them when a login needs them, as before.

use std::cell::OnceCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use log::error;
use rustls::ServerConfig;

use crate::devices::Devices;
use crate::devices::oauth::http::{self, KeyFiles};
use crate::devices::oauth::settings::OAuthSource;
use crate::secret::Secret;
use crate::tls::{self, TlsFiles};

/// The files a session may need, as configured.
#[derive(Debug, Clone, Copy)]
pub struct Wanted<'a> {
    pub tls: Option<&'a TlsFiles>,
    pub devices_file: Option<&'a Path>,
    pub cluster_lock_password_file: Option<&'a Path>,
    /// The token sources, whose client secrets may be root's.
    pub oauth: &'a BTreeMap<String, OAuthSource>,
}

#[derive(Default)]
pub struct Preloaded {
    /// For STLS and implicit TLS; `None` when not configured or unreadable
    /// (already logged: the session then runs without TLS).
    pub tls: Option<Arc<ServerConfig>>,
    devices_file: Option<PathBuf>,
    /// Read now (before leaving root) or at the first device login.
    devices: OnceCell<Result<Devices, String>>,
    /// Only before leaving root; otherwise each source reads its own file.
    client_keys: BTreeMap<String, Result<KeyFiles, String>>,
    /// The cluster lock's Redis password, read with the other files (it
    /// may be root's, mode 0600).
    cluster_lock_password: Option<Result<Secret, String>>,
}

impl Preloaded {
    /// `leaving_root`: this process switches to the session user before the
    /// client's first byte, so the root-only files must be read now.
    pub fn read(config: Wanted<'_>, leaving_root: bool) -> Preloaded {
        let tls = match config.tls.map(tls::server_config) {
            Some(Ok(c)) => Some(c),
            Some(Err(e)) => {
                error!("TLS disabled for this connection: {e}");
                None
            }
            None => None,
        };
        let cluster_lock_password = config.cluster_lock_password_file.map(|path| {
            Secret::first_line_of(path)
                .map_err(|e| format!("cluster_lock_password_file {}: {e}", path.display()))
        });
        let files = Preloaded {
            tls,
            devices_file: config.devices_file.map(Path::to_path_buf),
            devices: OnceCell::new(),
            client_keys: BTreeMap::new(),
            cluster_lock_password,
        };
        if !leaving_root {
            return files;
        }
        let _ = files.devices();
        let client_keys = config
            .oauth
            .iter()
            .map(|(name, source)| {
                let key = http::read_key_files(source).map_err(|e| e.to_string());
                (name.clone(), key)
            })
            .collect();
        Preloaded {
            client_keys,
            ..files
        }
    }

    /// The password for the cluster lock's Redis, if one is configured.
    pub fn cluster_lock_password(&self) -> Result<Option<&Secret>, String> {
        self.cluster_lock_password
            .as_ref()
            .map(|read| read.as_ref().map_err(Clone::clone))
            .transpose()
    }

    /// The devices file, read once per connection.
    pub fn devices(&self) -> Result<&Devices, String> {
        let Some(path) = &self.devices_file else {
            return Err("no devices_file is configured".into());
        };
        self.devices
            .get_or_init(|| Devices::load(path))
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The client secret, certificate key or service account key of the
    /// `[oauth.NAME]` source, if it was read ahead (`None`: the source
    /// reads its files itself).
    pub fn client_key(&self, name: &str) -> Option<&Result<KeyFiles, String>> {
        self.client_keys.get(name)
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn root_only_files_are_read_ahead_only_when_leaving_root() {
        let dir = std::env::temp_dir().join(format!("preload-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("dir");
        let hash = crate::devices::hash_password(&Secret::new(b"pw".to_vec())).expect("hash");
        let devices = dir.join("devices.toml");
        fs::write(
            &devices,
            format!("[device.d]\npassword = \"{hash}\"\nmailbox = \"m\"\noauth = \"src\"\n"),
        )
        .expect("devices");
        fs::set_permissions(&devices, fs::Permissions::from_mode(0o600)).expect("mode");
        let secret = dir.join("secret");
        fs::write(&secret, "s3cret\n").expect("secret");
        let source = dir.join("sources.toml");
        fs::write(
            &source,
            format!(
                "grant = \"client_credentials\"\ntoken_url = \"https://idp.example/token\"\n\
                 client_id = \"c\"\nclient_secret_file = {secret:?}\nscope = \"s\"\n"
            ),
        )
        .expect("source");
        let table: crate::devices::oauth::settings::FileOAuthSource =
            toml::from_str(&fs::read_to_string(&source).expect("read")).expect("table");
        let oauth = BTreeMap::from([("src".to_string(), table.validate("src").expect("valid"))]);
        let wanted = Wanted {
            tls: None,
            devices_file: Some(&devices),
            cluster_lock_password_file: None,
            oauth: &oauth,
        };

        let ahead = Preloaded::read(wanted, true);
        let lazy = Preloaded::read(wanted, false);
        assert!(
            matches!(ahead.client_key("src"), Some(Ok(KeyFiles::Secret(Some(s)))) if s.expose() == b"s3cret")
        );
        assert!(
            lazy.client_key("src").is_none(),
            "the source reads its own file"
        );
        // What was read ahead no longer needs the file; the lazy one does.
        fs::remove_file(&devices).expect("remove");
        assert!(ahead.devices().is_ok());
        assert!(lazy.devices().is_err());
        let _ = fs::remove_dir_all(dir);
    }
}
