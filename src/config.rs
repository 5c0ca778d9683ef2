//! Configuration: built-in defaults, then `/etc/pop3server/pop3server.toml`
//! (or `--config PATH`), then command-line flags, validated into one
//! `Config`. Every error names the file or flag, the key and the reason.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use ipnet::IpNet;
use serde::Deserialize;

use crate::backend::settings::Settings as BackendSettings;
use crate::clusterlock;
use crate::fingerprint::Fingerprint;
use crate::limits;
use crate::logging::LogTarget;
use crate::oauth::settings::FileOAuthSource;
use crate::pop3::session::SessionConfig;
use crate::preload::Wanted;
use crate::privilege::Account;
use crate::route::{self, BackendTls, FileBackend, FileRoutes, FileRule, Routes};
use crate::tls::TlsFiles;
use crate::uidl::UidlFormat;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/pop3server/pop3server.toml";
pub const DEFAULT_LOCK_DIR: &str = "/run/pop3server";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/pop3server";
pub const DEFAULT_CACHE_DIR: &str = "/var/cache/pop3server";
/// The account a session started as root switches to; the packages create it.
pub const DEFAULT_USER: &str = "pop3server";

/// Everything the program was told, assembled from the modules' own
/// settings. Only the top of the house (main, the driver, `--check`, the
/// admin commands) sees it whole; every other module takes its part.
#[derive(Debug, Clone)]
pub struct Config {
    /// The configuration file read, if one was.
    pub config_file: Option<PathBuf>,
    /// Where the routing table was read from, if not the main file.
    pub routes_file: Option<PathBuf>,
    pub backend: BackendSettings,
    /// The session's settings; `stls_available` is the driver's to set.
    pub session: SessionConfig,
    /// Connect to the backend as the client connects (before our
    /// greeting), while the client is still on its way to the login.
    pub backend_connect_early: bool,
    pub idle_timeout: Duration,
    pub listen: Vec<SocketAddr>,
    /// The load balancers whose connections start with a PROXY protocol
    /// header (see `transport::proxy`); empty: none.
    pub proxy_protocol_from: Vec<IpNet>,
    pub max_children: usize,
    pub log: LogTarget,
    pub debug: bool,
    /// Certificate chain and key (PEM) for STLS and implicit TLS.
    pub tls: Option<TlsFiles>,
    pub implicit_tls: bool,
    /// Forced per-connection mode on stdin/stdout (`--inetd`).
    pub inetd: bool,
    /// `--check`: test the backend and exit.
    pub check: Option<CheckRequest>,
    /// Local device accounts (see `devices`): USER/PASS is checked here and
    /// the backend login uses the device's OAuth2 token source.
    pub devices_file: Option<PathBuf>,
    /// File holding the password of the cluster lock's Redis (first line).
    pub cluster_lock_password_file: Option<PathBuf>,
    /// The account a session started as root switches to before it reads
    /// from the client (see `privilege`).
    pub user: String,
    /// Its group; the user's primary group when unset.
    pub group: Option<String>,
    /// What to do instead of serving a session, if anything.
    pub task: Option<Task>,
}

/// A one-off task of the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Task {
    /// Print an argon2id hash of a password read from the terminal or stdin.
    HashPassword,
    /// Run the device authorization grant (RFC 8628) for this token source.
    OAuthConsent(String),
}

/// What `--check` should try beyond connecting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckRequest {
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
    /// `--route USER`: show the route of USER and connect to its backend.
    pub route: Option<String>,
}

#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, or "command line".
    pub source: String,
    pub key: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.source, self.reason)
        } else {
            write!(f, "{}: {}: {}", self.source, self.key, self.reason)
        }
    }
}

impl std::error::Error for ConfigError {}

/// The configuration file: every key optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    backend_host: Option<String>,
    backend_port: Option<u16>,
    backend_tls: Option<String>,
    backend_ca_file: Option<PathBuf>,
    backend_tls_fingerprint: Option<String>,
    backend_tls_verify: Option<bool>,
    backend_send_id: Option<bool>,
    backend_connect_early: Option<bool>,
    backend_prefetch: Option<bool>,
    folders: Option<Vec<String>>,
    uidl_format: Option<String>,
    mark_seen: Option<bool>,
    read_only: Option<bool>,
    lock_dir: Option<PathBuf>,
    idle_timeout: Option<u64>,
    backend_connect_timeout: Option<u64>,
    backend_timeout: Option<u64>,
    login_failure_delay: Option<u64>,
    max_login_failures: Option<u32>,
    max_bad_commands: Option<u32>,
    listen: Option<OneOrMany>,
    proxy_protocol_from: Option<Vec<String>>,
    max_children: Option<usize>,
    log: Option<String>,
    debug: Option<bool>,
    implementation: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    implicit_tls: Option<bool>,
    allow_plaintext_auth: Option<bool>,
    devices_file: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    snapshot_cache: Option<bool>,
    cache_dir: Option<PathBuf>,
    oauth: Option<BTreeMap<String, FileOAuthSource>>,
    user: Option<String>,
    group: Option<String>,
    cluster_lock_redis: Option<String>,
    cluster_lock_user: Option<String>,
    cluster_lock_password_file: Option<PathBuf>,
    cluster_lock_ttl: Option<u64>,
    cluster_lock_fallback: Option<String>,
    routes_file: Option<PathBuf>,
    default_backend: Option<String>,
    backend: Option<BTreeMap<String, FileBackend>>,
    route: Option<Vec<FileRule>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// Command-line flags; each overrides the file key of the same name.
#[derive(Debug, Parser)]
#[command(
    name = "pop3server",
    version,
    about = "POP3 server that serves each session live from an IMAP backend",
    long_about = "POP3 server that serves each session live from an IMAP backend.\n\n\
        One process serves one connection: started by inetd (the connection is \
        stdin/stdout), by a systemd Accept=yes socket (fd 3), or by its own \
        listener (--listen). Settings come from the configuration file; every \
        flag below overrides the key of the same name (dashes for underscores). \
        A boolean flag alone switches its setting on (--read-only); \
        --read-only false switches it off. The short options -b, -l, -p and -d \
        and --backend_address, --backend_port are those of the original \
        python-pop3server, so its command lines keep working.",
    args_override_self = true
)]
pub struct Flags {
    /// Configuration file [default: /etc/pop3server/pop3server.toml; a missing default file is not an error]
    #[arg(help_heading = "Service and logging", long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// IMAP server host name or address [default: 127.0.0.1]
    #[arg(
        help_heading = "Backend (IMAP)",
        long,
        visible_alias = "backend_address",
        alias = "backend_host",
        value_name = "HOST"
    )]
    pub backend_host: Option<String>,
    /// IMAP server port [default: 143, 993 with implicit TLS]
    #[arg(
        help_heading = "Backend (IMAP)",
        long,
        alias = "backend_port",
        value_name = "PORT"
    )]
    pub backend_port: Option<u16>,
    /// TLS to the backend: none, starttls, implicit [default: starttls]
    #[arg(help_heading = "Backend (IMAP)", long, value_name = "MODE")]
    pub backend_tls: Option<String>,
    /// PEM file of CA certificates to verify the backend with, instead of the system store
    #[arg(help_heading = "Backend (IMAP)", long, value_name = "PATH")]
    pub backend_ca_file: Option<PathBuf>,
    /// Accept exactly the backend certificate with this SHA-256 fingerprint (AB:CD:... as openssl x509 -fingerprint -sha256 prints it; --check shows it), whoever signed it; its validity period is still checked
    #[arg(help_heading = "Backend (IMAP)", long, value_name = "SHA256")]
    pub backend_tls_fingerprint: Option<String>,
    /// Verify the backend's certificate and host name; false is insecure and logged every session [default: true]
    #[arg(help_heading = "Backend (IMAP)", long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub backend_tls_verify: Option<bool>,
    /// Send IMAP ID with x-originating-ip/-port of the POP3 client (the backend must trust us) [default: false]
    #[arg(help_heading = "Backend (IMAP)", long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub backend_send_id: Option<bool>,
    /// Connect to the backend (TCP, TLS, greeting) as the client connects, before our greeting, while the client authenticates; costs a backend connection for clients that never log in [default: true]
    #[arg(help_heading = "Backend (IMAP)", long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub backend_connect_early: Option<bool>,
    /// After each RETR, ask the backend for the next messages (up to 16, 256 KiB together) in one fetch while the client reads this one, so that a client downloading in order waits less [default: true]
    #[arg(help_heading = "Backend (IMAP)", long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub backend_prefetch: Option<bool>,
    /// Backend protocol, as in python-pop3server: IMAP (= --backend-tls none) or IMAPS (= implicit)
    #[arg(
        help_heading = "Options of the original python-pop3server",
        short = 'b',
        value_name = "IMAP|IMAPS"
    )]
    pub backend_protocol: Option<String>,
    /// IMAP folders that form the maildrop, comma-separated, numbered in this order [default: INBOX]
    #[arg(
        help_heading = "Maildrop",
        long,
        value_name = "FOLDER",
        value_delimiter = ','
    )]
    pub folders: Option<Vec<String>>,
    /// UIDL format: dovecot (%08Xu%08Xv), cyrus (%v.%u), courier (%v-%u), uw (%08Xv%08Xu), gmail (GmailId + hex X-GM-MSGID), header-digest, or a template of %u, %v, %Xu, %08Xv... [default: dovecot]
    #[arg(help_heading = "Maildrop", long, value_name = "FORMAT")]
    pub uidl_format: Option<String>,
    /// RETR sets \Seen on the backend [default: true]
    #[arg(help_heading = "Maildrop", long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub mark_seen: Option<bool>,
    /// EXAMINE instead of SELECT; DELE is refused [default: false]
    #[arg(help_heading = "Maildrop", long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub read_only: Option<bool>,
    /// Directory of the per-user lock files [default: /run/pop3server]
    #[arg(help_heading = "Maildrop", long, value_name = "DIR")]
    pub lock_dir: Option<PathBuf>,
    /// Also lock each maildrop in this Redis or Valkey server (HOST:PORT), so that one user has one session across all front-ends [default: none, the local lock only]
    #[arg(help_heading = "Several front-ends", long, value_name = "HOST:PORT")]
    pub cluster_lock_redis: Option<String>,
    /// ACL user for the cluster lock's Redis (AUTH user password) [default: none]
    #[arg(help_heading = "Several front-ends", long, value_name = "USER")]
    pub cluster_lock_user: Option<String>,
    /// File holding the cluster lock's Redis password (first line) [default: none, no AUTH]
    #[arg(help_heading = "Several front-ends", long, value_name = "PATH")]
    pub cluster_lock_password_file: Option<PathBuf>,
    /// Seconds a cluster lock lease lasts unless renewed; renewed every third of it; a killed session's user waits this long [default: 60]
    #[arg(help_heading = "Several front-ends", long, value_name = "SECS")]
    pub cluster_lock_ttl: Option<u64>,
    /// When the cluster lock's Redis cannot be reached: refuse (-ERR [SYS/TEMP]) or local (serve with the local lock only, and log a warning) [default: refuse]
    #[arg(help_heading = "Several front-ends", long, value_name = "refuse|local")]
    pub cluster_lock_fallback: Option<String>,
    /// Routing table file ([backend.NAME] and [[route]] tables, default_backend), read by every connection, so changes count without a restart [default: none; the tables may be in the main file]
    #[arg(help_heading = "Several front-ends", long, value_name = "PATH")]
    pub routes_file: Option<PathBuf>,
    /// Backend of users no [[route]] matches: default (the backend_* keys), a [backend.NAME], or none to refuse them [default: default]
    #[arg(help_heading = "Several front-ends", long, value_name = "NAME")]
    pub default_backend: Option<String>,
    /// Seconds before an idle client is disconnected [default: 600]
    #[arg(help_heading = "Limits", long, value_name = "SECS")]
    pub idle_timeout: Option<u64>,
    /// Seconds to wait for the backend connection [default: 10]
    #[arg(help_heading = "Backend (IMAP)", long, value_name = "SECS")]
    pub backend_connect_timeout: Option<u64>,
    /// Seconds one backend command may take [default: 60]
    #[arg(help_heading = "Backend (IMAP)", long, value_name = "SECS")]
    pub backend_timeout: Option<u64>,
    /// Seconds to wait before answering a failed login [default: 2]
    #[arg(help_heading = "Limits", long, value_name = "SECS")]
    pub login_failure_delay: Option<u64>,
    /// Failed logins after which the connection is closed [default: 3]
    #[arg(help_heading = "Limits", long, value_name = "N")]
    pub max_login_failures: Option<u32>,
    /// Bad commands in a row after which the connection is closed [default: 20]
    #[arg(help_heading = "Limits", long, value_name = "N")]
    pub max_bad_commands: Option<u32>,
    /// Run the standalone listener on ADDR:PORT (repeatable)
    #[arg(help_heading = "Service and logging", long, value_name = "ADDR:PORT")]
    pub listen: Vec<String>,
    /// Listen address, as in python-pop3server (with -p)
    #[arg(
        help_heading = "Options of the original python-pop3server",
        short = 'l',
        value_name = "ADDR"
    )]
    pub listen_address: Option<String>,
    /// Listen port, as in python-pop3server (with -l; address defaults to 0.0.0.0)
    #[arg(
        help_heading = "Options of the original python-pop3server",
        short = 'p',
        value_name = "PORT"
    )]
    pub listen_port: Option<u16>,
    /// Load balancers that send a PROXY protocol header (v1 or v2) naming the client, as addresses or networks, comma-separated (127.0.0.1,10.0.0.0/8); from these it is required, from others refused [default: none]
    #[arg(
        help_heading = "Service and logging",
        long,
        value_name = "NETWORK",
        value_delimiter = ','
    )]
    pub proxy_protocol_from: Option<Vec<String>>,
    /// Concurrent sessions of the standalone listener [default: 256]
    #[arg(help_heading = "Limits", long, value_name = "N")]
    pub max_children: Option<usize>,
    /// Where logs go: auto, syslog, journald, stderr [default: auto]
    #[arg(help_heading = "Service and logging", long, value_name = "TARGET")]
    pub log: Option<String>,
    /// Text for the IMPLEMENTATION capability [default: none sent]
    #[arg(help_heading = "Service and logging", long, value_name = "TEXT")]
    pub implementation: Option<String>,
    /// PEM certificate chain for STLS and implicit TLS [default: none, no STLS]
    #[arg(help_heading = "TLS and logins of clients", long, value_name = "PATH")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert
    #[arg(help_heading = "TLS and logins of clients", long, value_name = "PATH")]
    pub tls_key: Option<PathBuf>,
    /// Start TLS before the greeting (POP3S, port 995) [default: false]
    #[arg(help_heading = "TLS and logins of clients", long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub implicit_tls: Option<bool>,
    /// Allow USER/PASS and AUTH without TLS from non-loopback clients [default: false]
    #[arg(help_heading = "TLS and logins of clients", long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub allow_plaintext_auth: Option<bool>,
    /// Serve one connection on stdin/stdout (what inetd does)
    #[arg(help_heading = "Service and logging", long)]
    pub inetd: bool,
    /// Test the backend (connect, TLS, capabilities; with --user also login and folder) and exit: 0 if all worked
    #[arg(help_heading = "Checking the backend", long)]
    pub check: bool,
    /// With --check: which routing rule and backend USER gets, and whether that backend answers (with --user, that user is routed)
    #[arg(
        help_heading = "Checking the backend",
        long,
        value_name = "USER",
        requires = "check"
    )]
    pub route: Option<String>,
    /// User for --check
    #[arg(
        help_heading = "Checking the backend",
        long,
        value_name = "USER",
        requires = "check"
    )]
    pub user: Option<String>,
    /// File holding the password for --check --user (first line)
    #[arg(
        help_heading = "Checking the backend",
        long,
        value_name = "PATH",
        requires = "user"
    )]
    pub password_file: Option<PathBuf>,
    /// Local device accounts: USER/PASS is checked against this file and the backend login uses the device's OAuth2 token source [default: none]
    #[arg(help_heading = "Devices and OAuth2", long, value_name = "PATH")]
    pub devices_file: Option<PathBuf>,
    /// Directory for state shared by the session processes (OAuth2 tokens) [default: /var/lib/pop3server]
    #[arg(help_heading = "Devices and OAuth2", long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Keep message sizes (and header-digest UIDLs) by UID between sessions, so a session asks the backend only for the UID list and new messages' sizes and headers [default: true]
    #[arg(help_heading = "Maildrop", long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub snapshot_cache: Option<bool>,
    /// Directory of the snapshot cache [default: /var/cache/pop3server]
    #[arg(help_heading = "Maildrop", long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Print an argon2id hash of a password read from the terminal (or stdin) for the devices file, and exit
    #[arg(help_heading = "Devices and OAuth2", long, conflicts_with_all = ["check", "oauth_consent"])]
    pub hash_password: bool,
    /// Authorise the refresh-token source NAME once (OAuth2 device authorization grant, RFC 8628): prints a URL and a code, waits, stores the tokens, and exits
    #[arg(
        help_heading = "Devices and OAuth2",
        long,
        value_name = "NAME",
        conflicts_with = "check"
    )]
    pub oauth_consent: Option<String>,
    /// Debug logging: the POP3 and IMAP exchanges line by line, passwords, SASL responses and tokens shown only as their lengths, message bodies not at all
    #[arg(help_heading = "Service and logging", short = 'd', long)]
    pub debug: bool,
}

impl Config {
    /// Who a session becomes when it leaves root, and what it writes to.
    pub fn account(&self) -> Account {
        let backend = &self.backend;
        Account {
            user: self.user.clone(),
            group: self.group.clone(),
            lock_dir: backend.lock_dir.clone(),
            cache_dir: backend.snapshot_cache.then(|| backend.cache_dir.clone()),
            state_dir: (self.devices_file.is_some() || !backend.oauth.is_empty())
                .then(|| backend.state_dir.clone()),
        }
    }

    /// The files a session reads before its first client byte.
    pub fn wanted_files(&self) -> Wanted<'_> {
        Wanted {
            tls: self.tls.as_ref(),
            devices_file: self.devices_file.as_deref(),
            cluster_lock_password_file: self.cluster_lock_password_file.as_deref(),
            oauth: &self.backend.oauth,
        }
    }

    /// Parses flags, reads the file they name (or the default one), merges.
    pub fn from_args<I, T>(args: I) -> Result<Config, ConfigSetupError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let flags = Flags::try_parse_from(args).map_err(ConfigSetupError::Usage)?;
        let path = flags
            .config
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
        let source = path.display().to_string();
        let (file, found) = read_file(&path, flags.config.is_some())?;
        let mut config = Config::merge(file, &source, flags).map_err(ConfigSetupError::Invalid)?;
        config.config_file = found.then_some(path);
        Ok(config)
    }

    pub fn merge(mut file: FileConfig, source: &str, flags: Flags) -> Result<Config, ConfigError> {
        let file_err = |key: &str, reason: String| ConfigError {
            source: source.into(),
            key: key.into(),
            reason,
        };
        let flag_err = |key: &str, reason: String| ConfigError {
            source: "command line".into(),
            key: key.into(),
            reason,
        };

        // Before any field of `flags` or `file` is moved out.
        let cluster_lock = cluster_lock(&flags, &file).map_err(|(from_flag, key, reason)| {
            if from_flag {
                flag_err(&format!("--{}", key.replace('_', "-")), reason)
            } else {
                file_err(key, reason)
            }
        })?;
        let cluster_lock_password_file = flags
            .cluster_lock_password_file
            .clone()
            .or(file.cluster_lock_password_file.clone());
        let backend_tls = match (
            &flags.backend_tls,
            &flags.backend_protocol,
            &file.backend_tls,
        ) {
            (Some(v), _, _) => BackendTls::parse(v).map_err(|r| flag_err("--backend-tls", r))?,
            (None, Some(b), _) => match b.to_ascii_uppercase().as_str() {
                "IMAP" => BackendTls::None,
                "IMAPS" => BackendTls::Implicit,
                _ => return Err(flag_err("-b", format!("{b:?} is not IMAP or IMAPS"))),
            },
            (None, None, Some(v)) => {
                BackendTls::parse(v).map_err(|r| file_err("backend_tls", r))?
            }
            (None, None, None) => BackendTls::StartTls,
        };
        let default_port = backend_tls.default_port();

        // A bad value is reported where it came from: the flag or the file.
        let value_err = |from_flag: bool, key: &str, reason: String| {
            if from_flag {
                flag_err(&format!("--{}", key.replace('_', "-")), reason)
            } else {
                file_err(key, reason)
            }
        };
        let folders_flag = flags.folders.is_some();
        let folders = flags
            .folders
            .or(file.folders)
            .unwrap_or_else(|| vec!["INBOX".into()]);
        let folders_problem = if folders.is_empty() {
            Some("needs at least one folder, e.g. [\"INBOX\"]")
        } else if folders
            .iter()
            .any(|f| f.is_empty() || f.bytes().any(|b| b.is_ascii_control()))
        {
            Some("folder names must not be empty or contain control characters")
        } else if folders
            .iter()
            .enumerate()
            .any(|(i, f)| folders[..i].contains(f))
        {
            Some("a folder is listed twice")
        } else {
            None
        };
        if let Some(reason) = folders_problem {
            return Err(value_err(folders_flag, "folders", reason.into()));
        }

        let uidl_format = match (&flags.uidl_format, &file.uidl_format) {
            (Some(f), _) => UidlFormat::parse(f).map_err(|r| flag_err("--uidl-format", r))?,
            (None, Some(f)) => UidlFormat::parse(f).map_err(|r| file_err("uidl_format", r))?,
            (None, None) => UidlFormat::dovecot(),
        };

        if uidl_format.longest(folders.len()) > limits::MAX_UIDL_LEN {
            let from_flag = flags.uidl_format.is_some();
            let reason = format!(
                "with {} folders (a UIDL gets -N after the first) a UIDL may exceed {} characters",
                folders.len(),
                limits::MAX_UIDL_LEN
            );
            return Err(value_err(from_flag, "uidl_format", reason));
        }

        let log = match (&flags.log, &file.log) {
            (Some(l), _) => LogTarget::parse(l).map_err(|r| flag_err("--log", r))?,
            (None, Some(l)) => LogTarget::parse(l).map_err(|r| file_err("log", r))?,
            (None, None) => LogTarget::Auto,
        };

        let mut listen_specs: Vec<(String, bool)> =
            flags.listen.iter().map(|l| (l.clone(), true)).collect();
        if let Some(port) = flags.listen_port {
            let addr = flags
                .listen_address
                .clone()
                .unwrap_or_else(|| "0.0.0.0".into());
            let spec = if addr.contains(':') {
                format!("[{addr}]:{port}")
            } else {
                format!("{addr}:{port}")
            };
            listen_specs.push((spec, true));
        } else if flags.listen_address.is_some() {
            return Err(flag_err("-l", "needs -p PORT as well".into()));
        }
        if listen_specs.is_empty() {
            match file.listen {
                Some(OneOrMany::One(l)) => listen_specs.push((l, false)),
                Some(OneOrMany::Many(ls)) => {
                    listen_specs.extend(ls.into_iter().map(|l| (l, false)))
                }
                None => {}
            }
        }
        let mut listen = Vec::new();
        for (spec, from_flag) in listen_specs {
            let addr = spec.parse::<SocketAddr>().map_err(|e| {
                let reason = format!("{spec:?} is not ADDRESS:PORT ({e})");
                if from_flag {
                    flag_err("--listen", reason)
                } else {
                    file_err("listen", reason)
                }
            })?;
            listen.push(addr);
        }

        let proxy_flag = flags.proxy_protocol_from.is_some();
        let mut proxy_protocol_from = Vec::new();
        // Empty items are skipped: `--proxy-protocol-from ''` clears the
        // file's list.
        for spec in flags
            .proxy_protocol_from
            .or(file.proxy_protocol_from)
            .into_iter()
            .flatten()
            .filter(|s| !s.trim().is_empty())
        {
            let net = crate::transport::proxy::parse_network(&spec)
                .map_err(|r| value_err(proxy_flag, "proxy_protocol_from", r))?;
            if !proxy_protocol_from.contains(&net) {
                proxy_protocol_from.push(net);
            }
        }

        let secs =
            |flag: Option<u64>, file_v: Option<u64>, key: &str, default: Duration, min: u64| {
                let (value, from_flag) = match (flag, file_v) {
                    (Some(v), _) => (v, true),
                    (None, Some(v)) => (v, false),
                    (None, None) => return Ok(default),
                };
                let max = limits::MAX_TIMEOUT_SECS;
                if !(min..=max).contains(&value) {
                    return Err(value_err(
                        from_flag,
                        key,
                        format!("must be between {min} and {max} seconds"),
                    ));
                }
                Ok(Duration::from_secs(value))
            };
        let idle_timeout = secs(
            flags.idle_timeout,
            file.idle_timeout,
            "idle_timeout",
            limits::DEFAULT_IDLE_TIMEOUT,
            1,
        )?;
        let backend_connect_timeout = secs(
            flags.backend_connect_timeout,
            file.backend_connect_timeout,
            "backend_connect_timeout",
            limits::DEFAULT_BACKEND_CONNECT_TIMEOUT,
            1,
        )?;
        let backend_timeout = secs(
            flags.backend_timeout,
            file.backend_timeout,
            "backend_timeout",
            limits::DEFAULT_BACKEND_TIMEOUT,
            1,
        )?;
        let login_failure_delay = secs(
            flags.login_failure_delay,
            file.login_failure_delay,
            "login_failure_delay",
            limits::DEFAULT_LOGIN_FAILURE_DELAY,
            0,
        )?;

        let (failures_flag, children_flag, host_flag, implementation_flag) = (
            flags.max_login_failures.is_some(),
            flags.max_children.is_some(),
            flags.backend_host.is_some(),
            flags.implementation.is_some(),
        );
        let max_login_failures = flags
            .max_login_failures
            .or(file.max_login_failures)
            .unwrap_or(limits::DEFAULT_MAX_LOGIN_FAILURES);
        if max_login_failures == 0 {
            return Err(value_err(
                failures_flag,
                "max_login_failures",
                "must be at least 1".into(),
            ));
        }
        let bad_flag = flags.max_bad_commands.is_some();
        let max_bad_commands = flags
            .max_bad_commands
            .or(file.max_bad_commands)
            .unwrap_or(limits::DEFAULT_MAX_BAD_COMMANDS);
        if max_bad_commands == 0 {
            return Err(value_err(
                bad_flag,
                "max_bad_commands",
                "must be at least 1".into(),
            ));
        }
        let max_children = flags
            .max_children
            .or(file.max_children)
            .unwrap_or(limits::DEFAULT_MAX_CHILDREN);
        if max_children == 0 {
            return Err(value_err(
                children_flag,
                "max_children",
                "must be at least 1".into(),
            ));
        }
        let backend_host = flags
            .backend_host
            .clone()
            .or(file.backend_host.clone())
            .unwrap_or_else(|| "127.0.0.1".into());
        if backend_host.is_empty() {
            return Err(value_err(
                host_flag,
                "backend_host",
                "must not be empty".into(),
            ));
        }
        let pin_flag = flags.backend_tls_fingerprint.is_some();
        let backend_tls_fingerprint = flags
            .backend_tls_fingerprint
            .or(file.backend_tls_fingerprint)
            .map(|text| Fingerprint::parse(&text))
            .transpose()
            .map_err(|why| value_err(pin_flag, "backend_tls_fingerprint", why))?;
        let verify = flags.backend_tls_verify.or(file.backend_tls_verify);
        if backend_tls_fingerprint.is_some() && verify == Some(false) {
            return Err(value_err(
                pin_flag,
                "backend_tls_fingerprint",
                "a pinned certificate is a check: it contradicts backend_tls_verify = false; \
                 drop one of the two"
                    .into(),
            ));
        }
        let default_backend = route::Backend {
            name: route::DEFAULT_BACKEND.to_string(),
            hosts: vec![route::Host {
                host: backend_host.clone(),
                port: flags
                    .backend_port
                    .or(file.backend_port)
                    .unwrap_or(default_port),
            }],
            tls: backend_tls,
            ca_file: flags
                .backend_ca_file
                .clone()
                .or(file.backend_ca_file.clone()),
            fingerprint: backend_tls_fingerprint,
            verify: verify.unwrap_or(true),
        };
        let routes_file = flags.routes_file.clone().or(file.routes_file.clone());
        let inline = FileRoutes {
            backend: file.backend.take(),
            route: file.route.take(),
            default_backend: file.default_backend.take(),
        };
        let (tables, tables_source) = match &routes_file {
            Some(path) => {
                if inline.backend.is_some()
                    || inline.route.is_some()
                    || inline.default_backend.is_some()
                {
                    return Err(file_err(
                        "routes_file",
                        "is set, and this file has [backend.NAME], [[route]] or default_backend too: \
                         keep the routing table in one place"
                            .into(),
                    ));
                }
                let source = path.display().to_string();
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
                    source: source.clone(),
                    key: String::new(),
                    reason: format!("cannot read the routing table (routes_file): {e}"),
                })?;
                let tables: FileRoutes =
                    toml::from_str(&text).map_err(|e| explain_toml(&text, &source, &e))?;
                (tables, source)
            }
            None => (inline, source.to_string()),
        };
        let mut tables = tables;
        let default_flag = flags.default_backend.is_some();
        if let Some(name) = flags.default_backend.clone() {
            tables.default_backend = Some(name);
        }
        let routes = Routes::from_file(default_backend, tables).map_err(|(key, reason)| {
            if default_flag && key == "default_backend" {
                flag_err("--default-backend", reason)
            } else {
                ConfigError {
                    source: tables_source.clone(),
                    key,
                    reason,
                }
            }
        })?;
        let implementation = flags.implementation.or(file.implementation);
        if implementation
            .as_deref()
            .is_some_and(|i| i.bytes().any(|b| b.is_ascii_control()))
        {
            return Err(value_err(
                implementation_flag,
                "implementation",
                "must not contain control characters".into(),
            ));
        }

        let (cert_flag, key_flag) = (flags.tls_cert.is_some(), flags.tls_key.is_some());
        let tls = match (
            flags.tls_cert.or(file.tls_cert),
            flags.tls_key.or(file.tls_key),
        ) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            // Named where it was set: the flag, or the file's key.
            (Some(_), None) => {
                return Err(value_err(
                    cert_flag,
                    "tls_cert",
                    "is set, so the key must be too: set tls_key (or --tls-key)".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(value_err(
                    key_flag,
                    "tls_key",
                    "is set, so the certificate must be too: set tls_cert (or --tls-cert)".into(),
                ));
            }
        };
        let implicit_tls = flags.implicit_tls.or(file.implicit_tls).unwrap_or(false);
        if implicit_tls && tls.is_none() {
            return Err(file_err(
                "implicit_tls",
                "needs tls_cert and tls_key".into(),
            ));
        }

        let mut oauth = BTreeMap::new();
        for (name, src) in file.oauth.into_iter().flatten() {
            let source = src
                .validate(&name)
                .map_err(|r| file_err(&format!("oauth.{name}"), r))?;
            oauth.insert(name, source);
        }
        let devices_file = flags.devices_file.or(file.devices_file);
        if devices_file.is_some() && oauth.is_empty() {
            return Err(file_err(
                "devices_file",
                "device logins need at least one [oauth.NAME] token source".into(),
            ));
        }
        let task = if flags.hash_password {
            Some(Task::HashPassword)
        } else if let Some(name) = flags.oauth_consent {
            match oauth.get(&name) {
                Some(s) if s.has_device_consent() => {}
                Some(_) => {
                    return Err(flag_err(
                        "--oauth-consent",
                        format!(
                            "[oauth.{name}] needs grant = \"refresh_token\" and device_authorization_url"
                        ),
                    ));
                }
                None => {
                    return Err(flag_err(
                        "--oauth-consent",
                        format!("no [oauth.{name}] in {source}"),
                    ));
                }
            }
            Some(Task::OAuthConsent(name))
        } else {
            None
        };

        let folders_for_session = folders.clone();
        let read_only = flags.read_only.or(file.read_only).unwrap_or(false);
        Ok(Config {
            config_file: None,
            routes_file,
            backend: BackendSettings {
                routes,
                folders,
                read_only,
                connect_timeout: backend_connect_timeout,
                timeout: backend_timeout,
                send_id: flags
                    .backend_send_id
                    .or(file.backend_send_id)
                    .unwrap_or(false),
                lock_dir: flags
                    .lock_dir
                    .or(file.lock_dir)
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_LOCK_DIR)),
                cluster_lock,
                snapshot_cache: flags.snapshot_cache.or(file.snapshot_cache).unwrap_or(true),
                cache_dir: flags
                    .cache_dir
                    .or(file.cache_dir)
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_CACHE_DIR)),
                state_dir: flags
                    .state_dir
                    .or(file.state_dir)
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
                device_logins: devices_file.is_some(),
                oauth,
            },
            session: SessionConfig {
                uidl_format,
                login_failure_delay,
                max_login_failures,
                max_bad_commands,
                read_only,
                mark_seen: flags.mark_seen.or(file.mark_seen).unwrap_or(true),
                implementation,
                allow_plaintext_auth: flags
                    .allow_plaintext_auth
                    .or(file.allow_plaintext_auth)
                    .unwrap_or(false),
                stls_available: false,
                folders: folders_for_session,
                prefetch: flags
                    .backend_prefetch
                    .or(file.backend_prefetch)
                    .unwrap_or(true),
            },
            backend_connect_early: flags
                .backend_connect_early
                .or(file.backend_connect_early)
                .unwrap_or(true),
            cluster_lock_password_file,
            devices_file,
            // File keys only: `--user` is the user of `--check`.
            user: file.user.unwrap_or_else(|| DEFAULT_USER.to_string()),
            group: file.group,
            task,
            tls,
            implicit_tls,
            idle_timeout,
            listen,
            proxy_protocol_from,
            max_children,
            log,
            debug: flags.debug || file.debug.unwrap_or(false),
            inetd: flags.inetd,
            check: flags.check.then_some(CheckRequest {
                user: flags.user,
                password_file: flags.password_file,
                route: flags.route,
            }),
        })
    }
}

/// Why the configuration could not be set up.
#[derive(Debug)]
pub enum ConfigSetupError {
    /// Bad flags, or `--help`/`--version` (clap formats both).
    Usage(clap::Error),
    Invalid(ConfigError),
}

/// The file's settings, and whether it was there (a missing default file
/// means defaults and flags only).
fn read_file(path: &PathBuf, explicit: bool) -> Result<(FileConfig, bool), ConfigSetupError> {
    let source = path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
            return Ok((FileConfig::default(), false));
        }
        Err(e) => {
            return Err(ConfigSetupError::Invalid(ConfigError {
                source,
                key: String::new(),
                reason: format!("cannot read: {e}"),
            }));
        }
    };
    let parsed = parse_file(&text, &source).map_err(ConfigSetupError::Invalid)?;
    Ok((parsed, true))
}

pub fn parse_file(text: &str, source: &str) -> Result<FileConfig, ConfigError> {
    toml::from_str(text).map_err(|e| explain_toml(text, source, &e))
}

/// One line for a TOML or type error: file and line, the setting, what is
/// wrong in plain words and what would be right (toml's own message is a
/// caret picture over several lines, in serde's type names).
fn explain_toml(text: &str, source: &str, e: &toml::de::Error) -> ConfigError {
    let start = e.span().map_or(0, |s| s.start).min(text.len());
    // Bytes: a span is not promised to fall on a character boundary.
    let line_no = text.as_bytes()[..start]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1;
    let line = text.lines().nth(line_no - 1).unwrap_or("");
    // The table the line is in ([oauth.NAME]), for the key's full name.
    let table = text
        .lines()
        .take(line_no - 1)
        .filter_map(|l| l.trim().strip_prefix('[')?.strip_suffix(']'))
        // [[route]]: an array of tables.
        .map(|t| t.trim_start_matches('[').trim_end_matches(']'))
        .last()
        .map(|t| format!("{}.", t.trim()));
    let (name, value) = match line.split_once('=') {
        Some((k, v)) => (k.trim(), v.trim()),
        None => ("", ""),
    };
    let message = e.message();
    let mut key = match (&table, name.is_empty()) {
        (_, true) => String::new(),
        (Some(t), false) => format!("{t}{name}"),
        (None, false) => name.to_string(),
    };
    let reason = if let Some(rest) = message.strip_prefix("unknown field `") {
        let (unknown, known) = rest.split_once('`').unwrap_or((rest, ""));
        key = match &table {
            Some(t) => format!("{t}{unknown}"),
            None => unknown.to_string(),
        };
        let candidates: Vec<&str> = known.split('`').skip(1).step_by(2).collect();
        match closest(unknown, &candidates) {
            Some(near) => format!("unknown setting; did you mean {near}?"),
            None => "unknown setting (pop3server(8) and the commented \
                     /etc/pop3server/pop3server.toml list them all)"
                .to_string(),
        }
    } else if let Some(rest) = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "))
    {
        let (found, wanted) = rest.split_once(", expected ").unwrap_or((rest, ""));
        format!(
            "expected {}, not {}",
            plain_type(name, wanted),
            found.replace('`', "")
        )
    } else if message == "duplicate key" {
        "set twice: keep one of the two lines".to_string()
    } else if !value.is_empty() && !value.starts_with(['"', '\'', '[', '{']) {
        // An unquoted string (a host, a path) is not TOML.
        format!(
            "{value} is not a TOML value: a string must be in quotes, e.g. {name} = \"{value}\""
        )
    } else {
        message.replace('\n', " ")
    };
    ConfigError {
        source: format!("{source}:{line_no}"),
        key,
        reason,
    }
}

/// serde's name of the expected type, in an admin's words.
fn plain_type(key: &str, wanted: &str) -> String {
    match wanted {
        "u16" if key.ends_with("port") => "a port number 1-65535".into(),
        "u8" | "u16" | "u32" | "u64" | "usize"
            if key.ends_with("timeout") || key.ends_with("delay") =>
        {
            "a number of seconds (a whole number, 0 or more)".into()
        }
        "u8" | "u16" | "u32" | "u64" | "usize" => "a whole number (0 or more)".into(),
        "a boolean" => "true or false (without quotes)".into(),
        "a sequence" if key == "folders" => "a list such as [\"INBOX\"]".into(),
        "a sequence" => "a list in brackets, such as [\"a\", \"b\"]".into(),
        "a string" => "a string in quotes".into(),
        other => other.into(),
    }
}

/// The known name nearest to a misspelt one, if it is near enough to be
/// what was meant.
fn closest<'a>(typed: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (strsim::levenshtein(typed, k), *k))
        .filter(|&(d, k)| d <= 2.max(k.len() / 4))
        .min()
        .map(|(_, k)| k)
}

/// The cluster lock's settings, if `cluster_lock_redis` is set; an error
/// is (set by a flag, key, reason).
fn cluster_lock(
    flags: &Flags,
    file: &FileConfig,
) -> Result<Option<clusterlock::Settings>, (bool, &'static str, String)> {
    let address = match (&flags.cluster_lock_redis, &file.cluster_lock_redis) {
        (Some(a), _) => (a.clone(), true),
        (None, Some(a)) => (a.clone(), false),
        (None, None) => {
            let stray = [
                (
                    "cluster_lock_user",
                    flags.cluster_lock_user.is_some(),
                    file.cluster_lock_user.is_some(),
                ),
                (
                    "cluster_lock_password_file",
                    flags.cluster_lock_password_file.is_some(),
                    file.cluster_lock_password_file.is_some(),
                ),
                (
                    "cluster_lock_ttl",
                    flags.cluster_lock_ttl.is_some(),
                    file.cluster_lock_ttl.is_some(),
                ),
                (
                    "cluster_lock_fallback",
                    flags.cluster_lock_fallback.is_some(),
                    file.cluster_lock_fallback.is_some(),
                ),
            ];
            if let Some((key, from_flag, _)) = stray.iter().find(|(_, f, v)| *f || *v) {
                return Err((
                    *from_flag,
                    key,
                    "has no effect without cluster_lock_redis = \"HOST:PORT\"".into(),
                ));
            }
            return Ok(None);
        }
    };
    let (address, from_flag) = address;
    let valid = address
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if !valid {
        return Err((
            from_flag,
            "cluster_lock_redis",
            format!("{address:?} is not HOST:PORT, e.g. \"127.0.0.1:6379\" or \"[::1]:6379\""),
        ));
    }
    let ttl = match (flags.cluster_lock_ttl, file.cluster_lock_ttl) {
        (Some(t), _) => (t, true),
        (None, Some(t)) => (t, false),
        (None, None) => (limits::DEFAULT_CLUSTER_LOCK_TTL.as_secs(), false),
    };
    if !(limits::MIN_CLUSTER_LOCK_TTL_SECS..=limits::MAX_TIMEOUT_SECS).contains(&ttl.0) {
        return Err((
            ttl.1,
            "cluster_lock_ttl",
            format!(
                "must be between {} and {} seconds",
                limits::MIN_CLUSTER_LOCK_TTL_SECS,
                limits::MAX_TIMEOUT_SECS
            ),
        ));
    }
    let fallback = match (&flags.cluster_lock_fallback, &file.cluster_lock_fallback) {
        (Some(f), _) => (f.as_str(), true),
        (None, Some(f)) => (f.as_str(), false),
        (None, None) => ("refuse", false),
    };
    let fallback = match fallback.0 {
        "refuse" => clusterlock::Fallback::Refuse,
        "local" => clusterlock::Fallback::Local,
        other => {
            return Err((
                fallback.1,
                "cluster_lock_fallback",
                format!("{other:?} is not refuse or local"),
            ));
        }
    };
    Ok(Some(clusterlock::Settings {
        address,
        user: flags
            .cluster_lock_user
            .clone()
            .or(file.cluster_lock_user.clone()),
        ttl: Duration::from_secs(ttl.0),
        fallback,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(file: &str, args: &[&str]) -> Result<Config, ConfigError> {
        let flags =
            Flags::try_parse_from(std::iter::once("pop3server").chain(args.iter().copied()))
                .map_err(|e| ConfigError {
                    source: "clap".into(),
                    key: String::new(),
                    reason: e.to_string(),
                })?;
        Config::merge(parse_file(file, "test.toml")?, "test.toml", flags)
    }

    fn default_backend(c: &Config) -> &route::Backend {
        &c.backend.routes.backends[0]
    }

    #[test]
    fn file_mistakes_are_one_line_with_line_key_and_what_would_be_right() {
        let cases = [
            (
                "backend_hots = \"x\"\n",
                "test.toml:1: backend_hots: unknown setting; did you mean backend_host?",
            ),
            (
                "\nbackend_port = \"abc\"\n",
                "test.toml:2: backend_port: expected a port number 1-65535, not string \"abc\"",
            ),
            (
                "backend_port = 70000\n",
                "test.toml:1: backend_port: expected a port number 1-65535, not integer 70000",
            ),
            (
                "backend_host = 127.0.0.1\n",
                "test.toml:1: backend_host: 127.0.0.1 is not a TOML value: a string must be in \
                 quotes, e.g. backend_host = \"127.0.0.1\"",
            ),
            (
                "folders = \"INBOX\"\n",
                "test.toml:1: folders: expected a list such as [\"INBOX\"], not string \"INBOX\"",
            ),
            (
                "mark_seen = \"yes\"\n",
                "test.toml:1: mark_seen: expected true or false (without quotes), not string \"yes\"",
            ),
            (
                "backend_timeout = -3\n",
                "test.toml:1: backend_timeout: expected a number of seconds (a whole number, 0 or \
                 more), not integer -3",
            ),
            (
                "[oauth.m365]\ntoken_ur = \"x\"\n",
                "test.toml:2: oauth.m365.token_ur: unknown setting; did you mean token_url?",
            ),
            (
                "backend_host = \"a\"\nbackend_host = \"b\"\n",
                "test.toml:2: backend_host: set twice: keep one of the two lines",
            ),
        ];
        for (file, expected) in cases {
            let e = parse_file(file, "test.toml").expect_err(file);
            assert_eq!(e.to_string(), expected, "{file}");
            assert!(!e.to_string().contains('\n'));
        }
        let e = parse_file("zzzzzz = 1\n", "test.toml").expect_err("unknown");
        assert!(
            e.to_string().contains("unknown setting (pop3server(8)"),
            "{e}"
        );
    }

    #[test]
    fn a_bare_boolean_flag_switches_it_on_and_a_value_still_works() {
        let c = config("", &["--read-only", "--mark-seen", "false"]).expect("flags");
        assert!(c.session.read_only && !c.session.mark_seen);
        let c = config("", &["--backend-prefetch=false", "--snapshot-cache"]).expect("flags");
        assert!(!c.session.prefetch && c.backend.snapshot_cache);
        assert!(config("", &["--read-only", "maybe"]).is_err());
    }

    #[test]
    fn proxy_protocol_sources_from_the_file_or_the_flag() {
        assert!(
            config("", &[])
                .expect("default")
                .proxy_protocol_from
                .is_empty()
        );
        let c = config(
            "proxy_protocol_from = [\"127.0.0.1/32\", \"10.0.0.0/8\", \"::1\"]\n",
            &[],
        )
        .expect("file");
        let shown: Vec<String> = c
            .proxy_protocol_from
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(shown, ["127.0.0.1/32", "10.0.0.0/8", "::1/128"]);
        let c = config(
            "proxy_protocol_from = [\"10.0.0.0/8\"]\n",
            &["--proxy-protocol-from", "127.0.0.2,192.0.2.0/24"],
        )
        .expect("flag");
        assert_eq!(c.proxy_protocol_from.len(), 2);
        let c = config(
            "proxy_protocol_from = [\"10.0.0.0/8\"]\n",
            &["--proxy-protocol-from", ""],
        )
        .expect("cleared");
        assert!(c.proxy_protocol_from.is_empty());
        let e = config("proxy_protocol_from = [\"10.0.0.0/33\"]\n", &[]).expect_err("/33");
        assert_eq!(
            e.to_string(),
            "test.toml: proxy_protocol_from: \"10.0.0.0/33\" is not an address or network \
             (\"33\" is not a prefix length 0-32)"
        );
        let e = config("", &["--proxy-protocol-from", "lb.example"]).expect_err("name");
        assert_eq!(e.key, "--proxy-protocol-from");
        assert!(!e.to_string().contains('\n'));
    }

    #[test]
    fn a_missing_tls_half_is_named_where_the_other_was_set() {
        let e = config("", &["--tls-cert", "/x.pem"]).expect_err("no key");
        assert_eq!(
            e.to_string(),
            "command line: --tls-cert: is set, so the key must be too: set tls_key (or --tls-key)"
        );
        let e = config("tls_key = \"/k.pem\"\n", &[]).expect_err("no cert");
        assert!(
            e.to_string().starts_with("test.toml: tls_key: is set"),
            "{e}"
        );
    }

    #[test]
    fn defaults() {
        let c = config("", &[]).expect("defaults are valid");
        assert_eq!(default_backend(&c).hosts[0].to_string(), "127.0.0.1:143");
        assert_eq!(c.backend.folders, ["INBOX"]);
        assert_eq!(c.idle_timeout, Duration::from_secs(600));
        assert_eq!(c.backend.lock_dir, PathBuf::from("/run/pop3server"));
        assert!(c.session.mark_seen && c.listen.is_empty() && !c.inetd);
        assert_eq!(default_backend(&c).tls, BackendTls::StartTls);
        assert!(
            default_backend(&c).verify
                && !c.session.allow_plaintext_auth
                && !c.implicit_tls
                && c.tls.is_none()
        );
        let c = config("", &["-b", "IMAPS"]).expect("IMAPS");
        let b = default_backend(&c);
        assert_eq!((b.tls, b.hosts[0].port), (BackendTls::Implicit, 993));
    }

    #[test]
    fn the_seed_command_line_works_verbatim() {
        let c = config(
            "",
            &[
                "-b",
                "IMAP",
                "--backend_address=127.0.0.1",
                "--backend_port=143",
                "-p",
                "10110",
            ],
        )
        .expect("seed flags");
        assert_eq!(default_backend(&c).tls, BackendTls::None);
        assert_eq!(c.listen, vec!["0.0.0.0:10110".parse().expect("addr")]);
        let c = config("", &["-l", "127.0.0.1", "-p", "10110", "-d"]).expect("seed flags");
        assert_eq!(c.listen, vec!["127.0.0.1:10110".parse().expect("addr")]);
        assert!(c.debug);
    }

    #[test]
    fn flags_override_the_file() {
        let c = config(
            "backend_host = \"imap.example\"\nidle_timeout = 30\n",
            &["--idle-timeout", "60"],
        )
        .expect("ok");
        assert_eq!(default_backend(&c).hosts[0].host, "imap.example");
        assert_eq!(c.idle_timeout, Duration::from_secs(60));
    }

    #[test]
    fn unknown_keys_and_bad_values_name_file_key_and_reason() {
        let e = config("bogus = 1\n", &[]).expect_err("unknown key");
        assert!(
            e.to_string()
                .starts_with("test.toml:1: bogus: unknown setting"),
            "{e}"
        );
        let e = config("uidl_format = \"%q\"\n", &[]).expect_err("bad template");
        assert_eq!(
            (e.source.as_str(), e.key.as_str()),
            ("test.toml", "uidl_format")
        );
        let e = config("idle_timeout = \"x\"\n", &[]).expect_err("bad type");
        assert!(e.to_string().contains("idle_timeout"), "{e}");
        let e = config("", &["--listen", "nonsense"]).expect_err("bad listen");
        assert_eq!(e.key, "--listen");
        let e = config("log = \"loud\"\n", &[]).expect_err("bad log");
        assert_eq!(e.key, "log");
        assert_eq!(
            config("folders = []\n", &[]).expect_err("none").key,
            "folders"
        );
        assert_eq!(
            config("", &["--folders", "A,A"]).expect_err("twice").key,
            "--folders"
        );
        let two = config("", &["--folders", "INBOX,Junk"]).expect("two folders");
        assert_eq!(two.backend.folders, ["INBOX", "Junk"]);
        let long = format!(
            "uidl_format = \"{}%u\"\nfolders = [\"A\", \"B\"]\n",
            "x".repeat(59)
        );
        assert_eq!(
            config(&long, &[]).expect_err("too long with suffix").key,
            "uidl_format"
        );
        for name in ["cyrus", "courier", "uw", "gmail", "header-digest"] {
            let c = config(&format!("uidl_format = \"{name}\"\n"), &[]).expect(name);
            assert_eq!(c.session.uidl_format, UidlFormat::parse(name).expect(name));
        }
        let many = config(
            "",
            &["--uidl-format", "header-digest", "--folders", "A,B,C"],
        );
        assert!(
            many.expect("three folders")
                .session
                .uidl_format
                .needs()
                .is_some()
        );
        assert_eq!(
            config("", &["--max-children", "0"])
                .expect_err("zero")
                .source,
            "command line"
        );
        assert_eq!(
            config("tls_cert = \"/c.pem\"\n", &[])
                .expect_err("no key")
                .key,
            "tls_cert"
        );
        assert_eq!(
            config("implicit_tls = true\n", &[])
                .expect_err("no cert")
                .key,
            "implicit_tls"
        );
    }
}
