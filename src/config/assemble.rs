//! The settings of each module, assembled from the layered values and
//! checked together where one setting depends on another. One function
//! per module's settings; each error is blamed where its value came from.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use super::file::{FileLayer, OneOrMany, parse_in};
use super::layers::{Layers, Origin, Sourced};
use super::{
    CheckRequest, Config, ConfigError, DEFAULT_CACHE_DIR, DEFAULT_LOCK_DIR, DEFAULT_STATE_DIR,
    DEFAULT_USER, Task,
};
use crate::backend::settings::Settings as BackendSettings;
use crate::devices::oauth::settings::OAuthSource;
use crate::limits;
use crate::lock::cluster;
use crate::logging::LogTarget;
use crate::maildrop::uidl::UidlFormat;
use crate::pop3::session::SessionConfig;
use crate::route::{self, BackendTls, DeleteAction, FileRoutes, Routes};
use crate::stats;
use crate::tls::TlsFiles;
use crate::tls::fingerprint::Fingerprint;
use crate::transport::proxy::parse_network;

/// Every module's settings from `layers`.
pub fn config(layers: &Layers) -> Result<Config, ConfigError> {
    let flags = &layers.flags;
    let routes = routes(layers, default_backend(layers)?)?;
    let oauth = oauth(layers)?;
    let devices_file = layers.path("devices_file")?;
    if let Some(devices) = &devices_file
        && oauth.is_empty()
    {
        return Err(devices.fail(
            "devices_file",
            "device logins need at least one [oauth.NAME] token source",
        ));
    }
    let devices_file = devices_file.map(|d| d.value);
    let (tls, implicit_tls) = client_tls(layers)?;
    Ok(Config {
        config_file: None,
        routes_file: routes.1,
        task: task(layers, &oauth)?,
        consent_timeout: secs(
            layers,
            "consent_timeout",
            limits::DEFAULT_CONSENT_TIMEOUT,
            1,
        )?,
        backend: backend(layers, routes.0, oauth, devices_file.is_some())?,
        session: session(layers)?,
        backend_connect_early: layers.value_or("backend_connect_early", true)?,
        idle_timeout: secs(layers, "idle_timeout", limits::DEFAULT_IDLE_TIMEOUT, 1)?,
        listen: listen(layers)?,
        proxy_protocol_from: networks(layers, "proxy_protocol_from")?,
        max_children: count(layers, "max_children", limits::DEFAULT_MAX_CHILDREN as u32)? as usize,
        log: parsed(layers, "log", LogTarget::Auto, LogTarget::parse)?,
        debug: layers.value_or("debug", false)?,
        tls,
        implicit_tls,
        inetd: flags.set("inetd"),
        check: flags.set("check").then(|| CheckRequest {
            user: flags.string("user"),
            password_file: flags.path("password_file"),
            route: flags.string("route"),
        }),
        devices_file,
        cluster_lock_password_file: layers.path("cluster_lock_password_file")?.map(|p| p.value),
        // File keys only: `--user` is the user of `--check`.
        user: layers.value_or("user", DEFAULT_USER.to_string())?,
        group: layers.value_or("group", None)?,
        stats: stats_settings(layers)?,
    })
}

/// The statistics aggregator's socket and metrics address.
fn stats_settings(layers: &Layers) -> Result<stats::Settings, ConfigError> {
    let socket = layers
        .path("stats_socket")?
        .map_or_else(|| PathBuf::from(stats::DEFAULT_SOCKET), |p| p.value);
    let listen = match layers.get::<String>("metrics_listen")? {
        Some(text) => text.value.parse::<SocketAddr>().map_err(|e| {
            text.fail(
                "metrics_listen",
                format!(
                    "{:?} is not ADDRESS:PORT ({e}), e.g. \"127.0.0.1:11110\" or \"[::1]:11110\"",
                    text.value
                ),
            )
        })?,
        None => stats::DEFAULT_LISTEN,
    };
    Ok(stats::Settings { socket, listen })
}

/// What the backend adapter needs.
fn backend(
    layers: &Layers,
    routes: Routes,
    oauth: BTreeMap<String, OAuthSource>,
    device_logins: bool,
) -> Result<BackendSettings, ConfigError> {
    let dir = |key: &str, default: &str| -> Result<PathBuf, ConfigError> {
        Ok(layers
            .path(key)?
            .map_or_else(|| PathBuf::from(default), |p| p.value))
    };
    Ok(BackendSettings {
        routes,
        folders: folders(layers)?,
        read_only: layers.value_or("read_only", false)?,
        connect_timeout: secs(
            layers,
            "backend_connect_timeout",
            limits::DEFAULT_BACKEND_CONNECT_TIMEOUT,
            1,
        )?,
        timeout: secs(
            layers,
            "backend_timeout",
            limits::DEFAULT_BACKEND_TIMEOUT,
            1,
        )?,
        throttle_cooldown: throttle_cooldown(layers)?,
        send_id: layers.value_or("backend_send_id", false)?,
        lock_dir: dir("lock_dir", DEFAULT_LOCK_DIR)?,
        cluster_lock: cluster_lock(layers)?,
        snapshot_cache: layers.value_or("snapshot_cache", true)?,
        cache_dir: dir("cache_dir", DEFAULT_CACHE_DIR)?,
        state_dir: dir("state_dir", DEFAULT_STATE_DIR)?,
        device_logins,
        oauth,
    })
}

/// What the POP3 session needs; `stls_available` is the driver's to set.
fn session(layers: &Layers) -> Result<SessionConfig, ConfigError> {
    let folders = folders(layers)?;
    let implementation = layers.get::<String>("implementation")?;
    if let Some(text) = &implementation
        && text.value.bytes().any(|b| b.is_ascii_control())
    {
        return Err(text.fail("implementation", "must not contain control characters"));
    }
    Ok(SessionConfig {
        uidl_format: uidl_format(layers, folders.len())?,
        login_failure_delay: secs(
            layers,
            "login_failure_delay",
            limits::DEFAULT_LOGIN_FAILURE_DELAY,
            0,
        )?,
        max_login_failures: count(
            layers,
            "max_login_failures",
            limits::DEFAULT_MAX_LOGIN_FAILURES,
        )?,
        max_bad_commands: count(layers, "max_bad_commands", limits::DEFAULT_MAX_BAD_COMMANDS)?,
        read_only: layers.value_or("read_only", false)?,
        mark_seen: layers.value_or("mark_seen", true)?,
        implementation: implementation.map(|i| i.value),
        allow_plaintext_auth: layers.value_or("allow_plaintext_auth", false)?,
        plaintext_auth_from: networks(layers, "plaintext_auth_from")?,
        stls_available: false,
        folders,
        prefetch: layers.value_or("backend_prefetch", true)?,
    })
}

/// The backend of the top-level `backend_*` keys (and `-b`): `default`.
fn default_backend(layers: &Layers) -> Result<route::Backend, ConfigError> {
    let tls = match (
        layers.get::<String>("backend_tls")?,
        layers.flags.string("backend_protocol"),
    ) {
        (Some(t), _) if t.origin.is_flag() => parsed_value(&t, "backend_tls", BackendTls::parse)?,
        (_, Some(b)) => match b.to_ascii_uppercase().as_str() {
            "IMAP" => BackendTls::None,
            "IMAPS" => BackendTls::Implicit,
            _ => {
                return Err(layers
                    .flag("-b")
                    .error("-b", format!("{b:?} is not IMAP or IMAPS")));
            }
        },
        (Some(t), None) => parsed_value(&t, "backend_tls", BackendTls::parse)?,
        (None, None) => BackendTls::StartTls,
    };
    let host = layers.get_or("backend_host", "127.0.0.1".to_string())?;
    if host.value.is_empty() {
        return Err(host.fail("backend_host", "must not be empty"));
    }
    let fingerprint = match layers.get::<String>("backend_tls_fingerprint")? {
        Some(pin) => Some(
            Fingerprint::parse(&pin.value)
                .map_err(|why| pin.fail("backend_tls_fingerprint", why))?,
        ),
        None => None,
    };
    let verify = layers.get::<bool>("backend_tls_verify")?;
    if let (Some(_), Some(Sourced { value: false, .. })) = (fingerprint, &verify) {
        let pin = layers.get::<String>("backend_tls_fingerprint")?;
        let origin = pin.map_or(Origin::Default, |p| p.origin);
        return Err(origin.error(
            "backend_tls_fingerprint",
            "a pinned certificate is a check: it contradicts backend_tls_verify = false; \
             drop one of the two",
        ));
    }
    Ok(route::Backend {
        name: route::DEFAULT_BACKEND.to_string(),
        hosts: vec![route::Host {
            host: host.value,
            port: layers.value_or("backend_port", tls.default_port())?,
        }],
        tls,
        ca_file: layers.path("backend_ca_file")?.map(|p| p.value),
        fingerprint,
        verify: verify.is_none_or(|v| v.value),
        // Also every [backend.NAME]'s, unless it sets its own.
        delete_action: parsed(
            layers,
            "delete_action",
            DeleteAction::Expunge,
            DeleteAction::parse,
        )?,
        trash_folder: parsed(layers, "trash_folder", None, route::trash_folder)?,
    })
}

/// The routing table, from `routes_file` or the main file, on top of the
/// default backend; with the file it was read from, if not the main one.
fn routes(
    layers: &Layers,
    default: route::Backend,
) -> Result<(Routes, Option<PathBuf>), ConfigError> {
    let main = &layers.file;
    let routes_file = layers.path("routes_file")?;
    let mut tables = FileRoutes {
        backend: main.tables.backend.clone(),
        route: main.tables.route.clone(),
        default_backend: main.get("default_backend")?,
    };
    // The tables' text, to name the line of a mistake in them.
    let mut table_file: Option<FileLayer> = None;
    if let Some(path) = &routes_file {
        if tables.backend.is_some() || tables.route.is_some() || tables.default_backend.is_some() {
            let holder = if path.origin.is_flag() {
                main.source.as_str()
            } else {
                "this file"
            };
            return Err(path.fail(
                "routes_file",
                format!(
                    "is set, and {holder} has [backend.NAME], [[route]] or default_backend too: \
                     keep the routing table in one place"
                ),
            ));
        }
        let source = path.value.display().to_string();
        let text = std::fs::read_to_string(&path.value).map_err(|e| {
            ConfigError::new(
                source.clone(),
                "",
                format!("cannot read the routing table (routes_file): {e}"),
            )
        })?;
        tables = parse_in(&text, &source)?;
        table_file = Some(FileLayer::of_text(text, &source));
    }
    let default_flag = layers
        .flags
        .value(super::settings::find("default_backend").ok_or_else(|| {
            ConfigError::new("pop3server", "default_backend", "no such setting (a bug)")
        })?);
    if let Some(toml::Value::String(name)) = &default_flag {
        tables.default_backend = Some(name.clone());
    }
    let routes = Routes::from_file(default, tables).map_err(|(key, reason)| {
        if default_flag.is_some() && key == "default_backend" {
            return ConfigError::new("command line", "--default-backend", reason);
        }
        let file = table_file.as_ref().unwrap_or(main);
        ConfigError::new(file.at(&key), key, reason)
    })?;
    Ok((routes, routes_file.map(|p| p.value)))
}

fn folders(layers: &Layers) -> Result<Vec<String>, ConfigError> {
    let folders = layers.get_or("folders", vec!["INBOX".to_string()])?;
    let list = &folders.value;
    let problem = if list.is_empty() {
        Some("needs at least one folder, e.g. [\"INBOX\"]")
    } else if list
        .iter()
        .any(|f| f.is_empty() || f.bytes().any(|b| b.is_ascii_control()))
    {
        Some("folder names must not be empty or contain control characters")
    } else if list.iter().enumerate().any(|(i, f)| list[..i].contains(f)) {
        Some("a folder is listed twice")
    } else {
        None
    };
    match problem {
        Some(reason) => Err(folders.fail("folders", reason)),
        None => Ok(folders.value),
    }
}

fn uidl_format(layers: &Layers, folders: usize) -> Result<UidlFormat, ConfigError> {
    let Some(text) = layers.get::<String>("uidl_format")? else {
        return Ok(UidlFormat::dovecot());
    };
    let format = parsed_value(&text, "uidl_format", UidlFormat::parse)?;
    if format.longest(folders) > limits::MAX_UIDL_LEN {
        return Err(text.fail(
            "uidl_format",
            format!(
                "with {folders} folders (a UIDL gets -N after the first) a UIDL may exceed {} \
                 characters",
                limits::MAX_UIDL_LEN
            ),
        ));
    }
    Ok(format)
}

/// A timeout or delay in whole seconds, `min` or more.
fn secs(layers: &Layers, key: &str, default: Duration, min: u64) -> Result<Duration, ConfigError> {
    let Some(value) = layers.get::<u64>(key)? else {
        return Ok(default);
    };
    let max = limits::MAX_TIMEOUT_SECS;
    if !(min..=max).contains(&value.value) {
        return Err(value.fail(key, format!("must be between {min} and {max} seconds")));
    }
    Ok(Duration::from_secs(value.value))
}

/// `throttle_cooldown`: up to the longest rest any throttling earns.
fn throttle_cooldown(layers: &Layers) -> Result<Duration, ConfigError> {
    let key = "throttle_cooldown";
    let Some(value) = layers.get::<u64>(key)? else {
        return Ok(limits::DEFAULT_THROTTLE_COOLDOWN);
    };
    let (min, max) = (
        limits::MIN_THROTTLE_COOLDOWN.as_secs(),
        limits::MAX_THROTTLE_COOLDOWN.as_secs(),
    );
    if !(min..=max).contains(&value.value) {
        return Err(value.fail(key, format!("must be between {min} and {max} seconds")));
    }
    Ok(Duration::from_secs(value.value))
}

/// A count of 1 or more.
fn count(layers: &Layers, key: &str, default: u32) -> Result<u32, ConfigError> {
    let value = layers.get_or(key, default)?;
    if value.value == 0 {
        return Err(value.fail(key, "must be at least 1"));
    }
    Ok(value.value)
}

/// A word the owning module parses (`log`, ...).
fn parsed<T>(
    layers: &Layers,
    key: &str,
    default: T,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<T, ConfigError> {
    match layers.get::<String>(key)? {
        Some(text) => parsed_value(&text, key, parse),
        None => Ok(default),
    }
}

fn parsed_value<T>(
    text: &Sourced<String>,
    key: &str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<T, ConfigError> {
    parse(&text.value).map_err(|why| text.fail(key, why))
}

/// `listen` (one address or a list), or `-l`/`-p`: the flags replace the
/// file's list.
fn listen(layers: &Layers) -> Result<Vec<SocketAddr>, ConfigError> {
    let flags = &layers.flags;
    let mut specs: Vec<(String, Origin)> = Vec::new();
    let listen = match layers.get::<OneOrMany>("listen")? {
        Some(l) if l.origin.is_flag() => {
            specs.extend(
                l.value
                    .into_vec()
                    .into_iter()
                    .map(|s| (s, l.origin.clone())),
            );
            None
        }
        other => other,
    };
    if let Some(port) = flags.port("listen_port") {
        let addr = flags
            .string("listen_address")
            .unwrap_or_else(|| "0.0.0.0".into());
        let spec = if addr.contains(':') {
            format!("[{addr}]:{port}")
        } else {
            format!("{addr}:{port}")
        };
        specs.push((spec, layers.flag("-p")));
    } else if flags.string("listen_address").is_some() {
        return Err(layers.flag("-l").error("-l", "needs -p PORT as well"));
    }
    if specs.is_empty()
        && let Some(l) = listen
    {
        specs.extend(
            l.value
                .into_vec()
                .into_iter()
                .map(|s| (s, l.origin.clone())),
        );
    }
    let mut addresses = Vec::new();
    for (spec, origin) in specs {
        let addr = spec.parse::<SocketAddr>().map_err(|e| {
            let flag = if origin.is_flag() {
                layers.flag("--listen")
            } else {
                origin
            };
            flag.error("listen", format!("{spec:?} is not ADDRESS:PORT ({e})"))
        })?;
        addresses.push(addr);
    }
    Ok(addresses)
}

/// A list of addresses and networks (`proxy_protocol_from`,
/// `plaintext_auth_from`). Empty items are skipped: `--proxy-protocol-from
/// ''` clears the file's list.
fn networks(layers: &Layers, key: &str) -> Result<Vec<IpNet>, ConfigError> {
    let Some(specs) = layers.get::<Vec<String>>(key)? else {
        return Ok(Vec::new());
    };
    let mut networks = Vec::new();
    for spec in specs.value.iter().filter(|s| !s.trim().is_empty()) {
        let net = parse_network(spec).map_err(|why| specs.fail(key, why))?;
        if !networks.contains(&net) {
            networks.push(net);
        }
    }
    Ok(networks)
}

/// The certificate and key for STLS and implicit TLS: both or neither.
fn client_tls(layers: &Layers) -> Result<(Option<TlsFiles>, bool), ConfigError> {
    let cert = layers.path("tls_cert")?;
    let key = layers.path("tls_key")?;
    let tls = match (cert, key) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert: cert.value,
            key: key.value,
        }),
        (None, None) => None,
        // Named where it was set: the flag, or the file's key.
        (Some(cert), None) => {
            return Err(cert.fail(
                "tls_cert",
                "is set, so the key must be too: set tls_key (or --tls-key)",
            ));
        }
        (None, Some(key)) => {
            return Err(key.fail(
                "tls_key",
                "is set, so the certificate must be too: set tls_cert (or --tls-cert)",
            ));
        }
    };
    let implicit = layers.get_or("implicit_tls", false)?;
    if implicit.value && tls.is_none() {
        return Err(implicit.fail("implicit_tls", "needs tls_cert and tls_key"));
    }
    Ok((tls, implicit.value))
}

/// The cluster lock's settings, if `cluster_lock_redis` is set.
fn cluster_lock(layers: &Layers) -> Result<Option<cluster::Settings>, ConfigError> {
    let Some(address) = layers.get::<String>("cluster_lock_redis")? else {
        for key in [
            "cluster_lock_user",
            "cluster_lock_password_file",
            "cluster_lock_ttl",
            "cluster_lock_fallback",
        ] {
            if let Some(stray) = layers.set_by(key) {
                return Err(stray.error(
                    key,
                    "has no effect without cluster_lock_redis = \"HOST:PORT\"",
                ));
            }
        }
        return Ok(None);
    };
    let valid = address
        .value
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if !valid {
        return Err(address.fail(
            "cluster_lock_redis",
            format!(
                "{:?} is not HOST:PORT, e.g. \"127.0.0.1:6379\" or \"[::1]:6379\"",
                address.value
            ),
        ));
    }
    let ttl = layers.get_or(
        "cluster_lock_ttl",
        limits::DEFAULT_CLUSTER_LOCK_TTL.as_secs(),
    )?;
    if !(limits::MIN_CLUSTER_LOCK_TTL_SECS..=limits::MAX_TIMEOUT_SECS).contains(&ttl.value) {
        return Err(ttl.fail(
            "cluster_lock_ttl",
            format!(
                "must be between {} and {} seconds",
                limits::MIN_CLUSTER_LOCK_TTL_SECS,
                limits::MAX_TIMEOUT_SECS
            ),
        ));
    }
    let fallback = parsed(
        layers,
        "cluster_lock_fallback",
        cluster::Fallback::Refuse,
        |word| match word {
            "refuse" => Ok(cluster::Fallback::Refuse),
            "local" => Ok(cluster::Fallback::Local),
            other => Err(format!("{other:?} is not refuse or local")),
        },
    )?;
    Ok(Some(cluster::Settings {
        address: address.value,
        user: layers.value_or("cluster_lock_user", None)?,
        ttl: Duration::from_secs(ttl.value),
        fallback,
    }))
}

/// The `[oauth.NAME]` tables, checked by their owner.
fn oauth(layers: &Layers) -> Result<BTreeMap<String, OAuthSource>, ConfigError> {
    let mut sources = BTreeMap::new();
    for (name, table) in layers.file.tables.oauth.iter().flatten() {
        let key = format!("oauth.{name}");
        let source = table
            .clone()
            .validate(name)
            .map_err(|why| layers.file_origin(&key).error(&key, why))?;
        sources.insert(name.clone(), source);
    }
    Ok(sources)
}

/// The one-off task of the command line, if any.
fn task(
    layers: &Layers,
    oauth: &BTreeMap<String, OAuthSource>,
) -> Result<Option<Task>, ConfigError> {
    let flags = &layers.flags;
    if flags.set("hash_password") {
        return Ok(Some(Task::HashPassword));
    }
    if flags.set("oauth_status") {
        return Ok(Some(Task::OAuthStatus));
    }
    if flags.set("stats") {
        return Ok(Some(Task::Stats));
    }
    let Some(name) = flags.string("oauth_consent") else {
        return Ok(None);
    };
    let flag = layers.flag("--oauth-consent");
    match oauth.get(&name) {
        Some(s) if s.has_consent() => Ok(Some(Task::OAuthConsent(name))),
        Some(s) => Err(flag.error(
            "oauth_consent",
            format!(
                "[oauth.{name}] (grant {}) has no consent step: that is grant = \"authorization_code\", \
                 or grant = \"refresh_token\" with device_authorization_url",
                s.grant_name()
            ),
        )),
        None => Err(flag.error(
            "oauth_consent",
            format!("no [oauth.{name}] in {}", layers.file.source),
        )),
    }
}
