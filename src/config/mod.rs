//! Configuration, the top of the house: built-in defaults, then
//! `/etc/pop3server/pop3server.toml` (or `--config PATH`), then the
//! command line, each value remembered with where it came from, assembled
//! into the settings types of the modules that own them. Every error names
//! its true source: `command line: --x: ...` or `FILE:LINE: key: ...`.
//!
//! - `settings`: every top-level key, declared once (flags, docs and the
//!   unknown-key check are made from it);
//! - `flags`: the command line; `file`: the file, and its mistakes in one
//!   line each; `layers`: the two over each other, with origins;
//! - `assemble`: each module's settings, checked together.
//!
//! Nothing below the top imports this module: main, the driver, `--check`
//! and the admin commands take the assembled `Config`, every other module
//! its own settings type.

mod assemble;
mod file;
mod flags;
mod layers;
pub mod settings;

use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use crate::backend::settings::Settings as BackendSettings;
use crate::logging::LogTarget;
use crate::pop3::session::SessionConfig;
use crate::preload::Wanted;
use crate::privilege::Account;
use crate::stats::Settings as StatsSettings;
use crate::tls::TlsFiles;

pub use file::locate;
pub use flags::command;

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
    /// How long `--oauth-consent` waits for a browser sign-in.
    pub consent_timeout: Duration,
    /// The statistics aggregator's sockets (`--stats`; the sessions send
    /// to `stats.socket`).
    pub stats: StatsSettings,
}

/// A one-off task of the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Task {
    /// Print an argon2id hash of a password read from the terminal or stdin.
    HashPassword,
    /// Run the one-time consent of this token source: the device
    /// authorization grant (RFC 8628) or the browser sign-in.
    OAuthConsent(String),
    /// Print the health of every token source and exit 0, 1 or 2.
    OAuthStatus,
    /// Run the statistics aggregator until SIGTERM.
    Stats,
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
    /// `FILE:LINE`, `FILE`, or "command line".
    pub source: String,
    /// The key, or the flag as typed (`--idle-timeout`).
    pub key: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(
        source: impl Into<String>,
        key: impl Into<String>,
        reason: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            source: source.into(),
            key: key.into(),
            reason: reason.into(),
        }
    }
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

/// Why the configuration could not be set up.
#[derive(Debug)]
pub enum ConfigSetupError {
    /// Bad flags, or `--help`/`--version` (clap formats both).
    Usage(clap::Error),
    Invalid(ConfigError),
}

impl Config {
    /// Parses flags, reads the file they name (or the default one),
    /// assembles.
    pub fn from_args<I, T>(args: I) -> Result<Config, ConfigSetupError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let flags = flags::Flags::parse(args).map_err(ConfigSetupError::Usage)?;
        let named = flags.path("config");
        let path = named
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
        let file =
            file::FileLayer::read(&path, named.is_some()).map_err(ConfigSetupError::Invalid)?;
        let found = file.is_some();
        let file = file.unwrap_or_else(|| {
            file::FileLayer::of_text(String::new(), &path.display().to_string())
        });
        let mut config =
            assemble::config(&layers::Layers { flags, file }).map_err(ConfigSetupError::Invalid)?;
        config.config_file = found.then_some(path);
        Ok(config)
    }

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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maildrop::uidl::UidlFormat;
    use crate::route::{self, BackendTls};

    fn config(file: &str, args: &[&str]) -> Result<Config, ConfigError> {
        let flags = flags::Flags::parse(std::iter::once("pop3server").chain(args.iter().copied()))
            .map_err(|e| ConfigError::new("clap", "", e.to_string()))?;
        let file = parse_file(file, "test.toml")?;
        assemble::config(&layers::Layers { flags, file })
    }

    fn parse_file(text: &str, source: &str) -> Result<file::FileLayer, ConfigError> {
        file::FileLayer::parse(text.to_string(), source)
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

    /// A value found wrong after parsing is blamed where it was written:
    /// the flag, or the file's line; never the file for a flag's value.
    #[test]
    fn every_error_names_its_true_source() {
        let cases: [(&str, &[&str], &str); 8] = [
            (
                "",
                &["--implicit-tls"],
                "command line: --implicit-tls: needs tls_cert and tls_key",
            ),
            (
                "# TLS\nimplicit_tls = true\n",
                &[],
                "test.toml:2: implicit_tls: needs tls_cert and tls_key",
            ),
            (
                "",
                &["--devices-file", "/d.toml"],
                "command line: --devices-file: device logins need at least one [oauth.NAME] \
                 token source",
            ),
            (
                "\n\nidle_timeout = 0\n",
                &[],
                "test.toml:3: idle_timeout: must be between 1 and 86400 seconds",
            ),
            ("idle_timeout = 0\n", &["--idle-timeout", "5"], ""),
            (
                "log = \"stderr\"\n[oauth.m]\ngrant = \"implicit\"\ntoken_url = \"https://i/t\"\n\
                 client_id = \"c\"\nscope = \"s\"\n",
                &[],
                "test.toml:2: oauth.m: grant \"implicit\" is not client_credentials, \
                 refresh_token, authorization_code or jwt_bearer",
            ),
            (
                "[backend.b]\nhosts = [\"h\"]\n[[route]]\nuser = \"a\"\nbackend = \"c\"\n",
                &[],
                "test.toml:5: route[1].backend: \"c\" is not a backend (there are: default, b)",
            ),
            (
                "[[route]]\nuser = \"a\"\nbackend = \"default\"\n",
                &["--routes-file", "/r.toml"],
                "command line: --routes-file: is set, and test.toml has [backend.NAME], [[route]] \
                 or default_backend too: keep the routing table in one place",
            ),
        ];
        for (file, args, expected) in cases {
            match config(file, args) {
                Ok(_) => assert_eq!(expected, "", "{file} {args:?}"),
                Err(e) => assert_eq!(e.to_string(), expected, "{file} {args:?}"),
            }
        }
        let e = config("", &["-l", "127.0.0.1"]).expect_err("-l alone");
        assert_eq!(e.to_string(), "command line: -l: needs -p PORT as well");
        let e = config("", &["-b", "POP"]).expect_err("-b");
        assert_eq!(
            e.to_string(),
            "command line: -b: \"POP\" is not IMAP or IMAPS"
        );
    }

    /// As with the flags of the derive this code replaced: a list flag given
    /// twice adds to its list; a number beyond any range is out of range.
    #[test]
    fn repeated_list_flags_add_up_and_huge_numbers_are_out_of_range() {
        let c = config("", &["--folders", "INBOX", "--folders", "Archive,Sent"]).expect("lists");
        assert_eq!(c.backend.folders, ["INBOX", "Archive", "Sent"]);
        let c = config(
            "",
            &[
                "--proxy-protocol-from",
                "10.0.0.1",
                "--proxy-protocol-from",
                "10.0.0.2",
            ],
        )
        .expect("two balancers");
        assert_eq!(c.proxy_protocol_from.len(), 2);
        let e = config("", &["--idle-timeout", "9223372036854775808"]).expect_err("huge");
        assert_eq!(
            e.to_string(),
            "command line: --idle-timeout: must be between 1 and 86400 seconds"
        );
        let c = config("", &["--backend_port", "1143", "--backend_address", "h"]).expect("old");
        assert_eq!(default_backend(&c).hosts[0].to_string(), "h:1143");
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
    fn the_statistics_sockets_default_and_their_mistakes() {
        let c = config("", &[]).expect("defaults");
        assert_eq!(c.stats.socket, PathBuf::from("/run/pop3server/stats.sock"));
        assert_eq!(c.stats.listen.to_string(), "127.0.0.1:11110");
        assert_eq!(c.task, None);
        let c = config(
            "metrics_listen = \"[::1]:9110\"\nstats_socket = \"/x/file.sock\"\n",
            &["--stats", "--stats-socket", "/tmp/s.sock"],
        )
        .expect("set");
        assert_eq!(c.task, Some(Task::Stats));
        assert_eq!(c.stats.socket, PathBuf::from("/tmp/s.sock"));
        assert_eq!(c.stats.listen.to_string(), "[::1]:9110");
        let e = config("\nmetrics_listen = \"localhost\"\n", &[]).expect_err("no port");
        assert_eq!(
            e.to_string(),
            "test.toml:2: metrics_listen: \"localhost\" is not ADDRESS:PORT (invalid socket \
             address syntax), e.g. \"127.0.0.1:11110\" or \"[::1]:11110\""
        );
        let e = config("", &["--metrics-listen", "1.2.3.4"]).expect_err("flag");
        assert!(
            e.to_string()
                .starts_with("command line: --metrics-listen: \"1.2.3.4\" is not ADDRESS:PORT"),
            "{e}"
        );
        assert!(config("", &["--stats", "--check"]).is_err());
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
            "test.toml:1: proxy_protocol_from: \"10.0.0.0/33\" is not an address or network \
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
            e.to_string().starts_with("test.toml:1: tls_key: is set"),
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
            ("test.toml:1", "uidl_format")
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
