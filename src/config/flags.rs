//! The command line: one flag per setting, made from the declarations
//! (`settings::SETTINGS`), and the flags that are not settings (`--config`,
//! `--check` and its user, the one-off tasks, the options of the original
//! python-pop3server). A flag's text becomes the same kind of value as the
//! file's, so both are read and checked by one path (`layers`).

use std::ffi::OsString;
use std::path::PathBuf;

use clap::builder::ValueParser;
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command, value_parser};

use super::settings::{Kind, SETTINGS, Setting};

const LONG_ABOUT: &str = "POP3 server that serves each session live from an IMAP backend.\n\n\
    One process serves one connection: started by inetd (the connection is stdin/stdout), by a \
    systemd Accept=yes socket (fd 3), or by its own listener (--listen). Settings come from the \
    configuration file; every flag below overrides the key of the same name (dashes for \
    underscores). A boolean flag alone switches its setting on (--read-only); --read-only false \
    switches it off. The keys user and group are file-only (--user is the user of --check), and \
    so are the tables [oauth.NAME], [backend.NAME] and [[route]]. The short options -b, -l, -p \
    and -d and --backend_address, --backend_port are those of the original python-pop3server, \
    so its command lines keep working.";

const PYTHON: &str = "Options of the original python-pop3server";
const CHECKING: &str = "Checking the backend";
const DEVICES: &str = "Devices and OAuth2";
const SERVICE: &str = "Service and logging";
const STATS: &str = "Statistics for Prometheus";

/// The parsed command line.
#[derive(Debug)]
pub struct Flags {
    matches: ArgMatches,
}

impl Flags {
    pub fn parse<I, T>(args: I) -> Result<Flags, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let matches = command().try_get_matches_from(args)?;
        Ok(Flags { matches })
    }

    /// The value the command line gives `setting`, as the file would
    /// write it; `None` when the flag was not given.
    pub fn value(&self, setting: &Setting) -> Option<toml::Value> {
        if !setting.flag || self.matches.value_source(setting.key) != Some(ValueSource::CommandLine)
        {
            return None;
        }
        if setting.kind == Kind::Switch {
            return Some(toml::Value::Boolean(self.matches.get_flag(setting.key)));
        }
        let raw: Vec<String> = self
            .matches
            .get_raw(setting.key)?
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        let one = raw.last().cloned().unwrap_or_default();
        Some(match setting.kind {
            Kind::Bool => toml::Value::Boolean(one == "true"),
            // clap took it as a whole number of its type; beyond what
            // TOML holds it is out of every range, and is refused as such.
            Kind::Secs | Kind::Count | Kind::Port => {
                toml::Value::Integer(one.parse::<i64>().unwrap_or(i64::MAX))
            }
            Kind::List | Kind::Addresses => {
                toml::Value::Array(raw.into_iter().map(toml::Value::String).collect())
            }
            Kind::Text | Kind::Path | Kind::Switch => toml::Value::String(one),
        })
    }

    /// Whether the flag `id` was on the command line.
    pub fn given(&self, id: &str) -> bool {
        self.matches.value_source(id) == Some(ValueSource::CommandLine)
    }

    pub fn string(&self, id: &str) -> Option<String> {
        self.matches.get_one::<String>(id).cloned()
    }

    /// A path flag as given (not through text: a path need not be UTF-8).
    pub fn path(&self, id: &str) -> Option<PathBuf> {
        self.matches.get_one::<PathBuf>(id).cloned()
    }

    pub fn port(&self, id: &str) -> Option<u16> {
        self.matches.get_one::<u16>(id).copied()
    }

    pub fn set(&self, id: &str) -> bool {
        self.matches.get_flag(id)
    }
}

/// The whole command line: the settings' flags and the others.
pub fn command() -> Command {
    let mut command = Command::new("pop3server")
        .version(env!("CARGO_PKG_VERSION"))
        .about("POP3 server that serves each session live from an IMAP backend")
        .long_about(LONG_ABOUT)
        .args_override_self(true)
        .arg(
            Arg::new("config")
                .long("config")
                .value_name("PATH")
                .value_parser(value_parser!(PathBuf))
                .help_heading(SERVICE)
                .help(
                    "Configuration file [default: /etc/pop3server/pop3server.toml; a missing \
                     default file is not an error]",
                ),
        );
    for setting in SETTINGS.iter().filter(|s| s.flag) {
        command = command.arg(setting_arg(setting));
    }
    command.args(other_args())
}

fn setting_arg(setting: &Setting) -> Arg {
    let mut arg = Arg::new(setting.key)
        .long(setting.key.replace('_', "-"))
        .help_heading(setting.heading)
        .help(setting.help);
    if let Some(short) = setting.short {
        arg = arg.short(short);
    }
    if let Some(visible) = setting.visible_alias {
        arg = arg.visible_alias(visible);
    }
    arg = arg.aliases(setting.aliases.iter().copied());
    if setting.kind == Kind::Switch {
        return arg.action(ArgAction::SetTrue);
    }
    arg = arg.value_name(setting.value_name);
    let parser: ValueParser = match setting.kind {
        Kind::Bool => {
            arg = arg.num_args(0..=1).default_missing_value("true");
            value_parser!(bool)
        }
        Kind::Secs => value_parser!(u64).into(),
        Kind::Count => value_parser!(u32).into(),
        Kind::Port => value_parser!(u16).into(),
        Kind::Path => value_parser!(PathBuf),
        // Repeated, the flag adds to its list, as it always did.
        Kind::List => {
            arg = arg.value_delimiter(',').action(ArgAction::Append);
            value_parser!(String)
        }
        Kind::Addresses => {
            arg = arg.action(ArgAction::Append);
            value_parser!(String)
        }
        Kind::Text | Kind::Switch => value_parser!(String),
    };
    arg.value_parser(parser)
}

/// The flags that are no setting of the file.
fn other_args() -> Vec<Arg> {
    vec![
        Arg::new("backend_protocol")
            .short('b')
            .value_name("IMAP|IMAPS")
            .help_heading(PYTHON)
            .help("Backend protocol, as in python-pop3server: IMAP (= --backend-tls none) or IMAPS (= implicit)"),
        Arg::new("listen_address")
            .short('l')
            .value_name("ADDR")
            .help_heading(PYTHON)
            .help("Listen address, as in python-pop3server (with -p)"),
        Arg::new("listen_port")
            .short('p')
            .value_name("PORT")
            .value_parser(value_parser!(u16))
            .help_heading(PYTHON)
            .help("Listen port, as in python-pop3server (with -l; address defaults to 0.0.0.0)"),
        Arg::new("inetd")
            .long("inetd")
            .action(ArgAction::SetTrue)
            .help_heading(SERVICE)
            .help("Serve one connection on stdin/stdout (what inetd does)"),
        Arg::new("check")
            .long("check")
            .action(ArgAction::SetTrue)
            .help_heading(CHECKING)
            .help("Test the backend (connect, TLS, capabilities; with --user also login and folder) and exit: 0 if all worked"),
        Arg::new("route")
            .long("route")
            .value_name("USER")
            .requires("check")
            .help_heading(CHECKING)
            .help("With --check: which routing rule and backend USER gets, and whether that backend answers (with --user, that user is routed)"),
        Arg::new("user")
            .long("user")
            .value_name("USER")
            .requires("check")
            .help_heading(CHECKING)
            .help("User for --check (the key user, the session account, is file-only)"),
        Arg::new("password_file")
            .long("password-file")
            .value_name("PATH")
            .value_parser(value_parser!(PathBuf))
            .requires("user")
            .help_heading(CHECKING)
            .help("File holding the password for --check --user (first line)"),
        Arg::new("hash_password")
            .long("hash-password")
            .action(ArgAction::SetTrue)
            .conflicts_with_all(["check", "oauth_consent"])
            .help_heading(DEVICES)
            .help("Print an argon2id hash of a password read from the terminal (or stdin) for the devices file, and exit"),
        Arg::new("oauth_consent")
            .long("oauth-consent")
            .value_name("NAME")
            .conflicts_with("check")
            .help_heading(DEVICES)
            .help("Authorise the token source NAME once: for grant refresh_token the device authorization grant (RFC 8628: a URL and a code), for grant authorization_code a browser sign-in (a URL; the browser's redirect to this host or the address it ended on, pasted here); stores the tokens and exits"),
        Arg::new("oauth_status")
            .long("oauth-status")
            .action(ArgAction::SetTrue)
            .conflicts_with_all(["check", "oauth_consent", "hash_password"])
            .help_heading(DEVICES)
            .help("Print the health of every token source (token expiry, last request, refresh token age, certificate and secret expiry) and exit: 0 all well, 1 something expires within 14 days, 2 something is broken"),
        Arg::new("stats")
            .long("stats")
            .action(ArgAction::SetTrue)
            .conflicts_with_all(["check", "oauth_consent", "oauth_status", "hash_password", "inetd"])
            .help_heading(STATS)
            .help("Run the statistics aggregator: receive the sessions' events on stats_socket and serve them to Prometheus on metrics_listen (GET /metrics) until SIGTERM"),
    ]
}
