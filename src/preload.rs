//! What a session reads before its first byte from the client: the files
//! that may be readable by root only (TLS key, device password hashes,
//! OAuth2 client secrets). They are read per connection, so a renewed
//! certificate or a changed devices file counts without a restart, and before
//! `privilege::switch_to`, so they may stay root's (mode 0600).

use std::collections::BTreeMap;
use std::sync::Arc;

use log::error;
use rustls::ServerConfig;

use crate::config::Config;
use crate::devices::Devices;
use crate::oauth::http;
use crate::secret::Secret;
use crate::tls;

#[derive(Default)]
pub struct Preloaded {
    /// For STLS and implicit TLS; `None` when not configured or unreadable
    /// (already logged: the session then runs without TLS).
    pub tls: Option<Arc<ServerConfig>>,
    devices: Option<Result<Devices, String>>,
    client_secrets: BTreeMap<String, Result<Option<Secret>, String>>,
}

impl Preloaded {
    pub fn read(config: &Config) -> Preloaded {
        let tls = match config.tls.as_ref().map(tls::server_config) {
            Some(Ok(c)) => Some(c),
            Some(Err(e)) => {
                error!("TLS disabled for this connection: {e}");
                None
            }
            None => None,
        };
        let devices = config.devices_file.as_deref().map(Devices::load);
        let client_secrets = config
            .oauth
            .iter()
            .map(|(name, source)| {
                let secret = http::client_secret(source).map_err(|e| e.to_string());
                (name.clone(), secret)
            })
            .collect();
        Preloaded {
            tls,
            devices,
            client_secrets,
        }
    }

    /// The devices file as read at the start of the connection.
    pub fn devices(&self) -> Result<&Devices, String> {
        match &self.devices {
            Some(Ok(d)) => Ok(d),
            Some(Err(why)) => Err(why.clone()),
            None => Err("no devices_file is configured".into()),
        }
    }

    /// The client secret of the `[oauth.NAME]` source, if it was read.
    pub fn client_secret(&self, name: &str) -> Option<&Result<Option<Secret>, String>> {
        self.client_secrets.get(name)
    }
}
