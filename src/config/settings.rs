//! Every top-level setting, declared once: its key, what kind of value it
//! takes, and its help. The flags (`--key-with-dashes`), the check for
//! unknown keys with its "did you mean", and the test that holds the man
//! page and the commented example file to the same list are all made from
//! this table. What a value means is decided where it is assembled
//! (`assemble`), and by the module that owns the setting.

/// What a setting's value is: how a flag's text becomes a value (and what
/// clap checks before it does), and what a reader is told to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `true` or `false`; the bare flag means `true`.
    Bool,
    /// Present or not: `--debug`, `-d`.
    Switch,
    /// Whole seconds.
    Secs,
    /// A count of 1 or more (checked where it is assembled).
    Count,
    Port,
    Text,
    Path,
    /// A list; on the command line comma-separated.
    List,
    /// `listen`: one or several ADDRESS:PORT; the flag is repeated.
    Addresses,
}

/// One top-level key of the configuration file.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    pub key: &'static str,
    pub kind: Kind,
    /// The placeholder of `--help` (`SECS`, `PATH`, ...).
    pub value_name: &'static str,
    pub heading: &'static str,
    pub help: &'static str,
    /// Whether `--key-with-dashes` exists: not for `user` and `group`,
    /// whose flags would be taken for `--check`'s user.
    pub flag: bool,
    pub short: Option<char>,
    /// An older spelling shown in `--help`, and others that are not: they
    /// keep old command lines working.
    pub visible_alias: Option<&'static str>,
    pub aliases: &'static [&'static str],
}

impl Setting {
    /// `--key-with-dashes`, if the setting has a flag.
    pub fn flag_name(&self) -> Option<String> {
        self.flag
            .then(|| format!("--{}", self.key.replace('_', "-")))
    }
}

/// The tables of the file (`[oauth.NAME]`, `[backend.NAME]`, `[[route]]`):
/// keys of their own, file-only, parsed by the modules that own them.
pub const TABLES: &[&str] = &["oauth", "backend", "route"];

const BACKEND: &str = "Backend (IMAP)";
const MAILDROP: &str = "Maildrop";
const FRONT_ENDS: &str = "Several front-ends";
const LIMITS: &str = "Limits";
const SERVICE: &str = "Service and logging";
const CLIENTS: &str = "TLS and logins of clients";
const DEVICES: &str = "Devices and OAuth2";
const STATS: &str = "Statistics for Prometheus";
/// For `user` and `group`, which have no flag.
const ACCOUNT: &str = "Session account";

const fn setting(
    key: &'static str,
    kind: Kind,
    value_name: &'static str,
    heading: &'static str,
    help: &'static str,
) -> Setting {
    Setting {
        key,
        kind,
        value_name,
        heading,
        help,
        flag: true,
        short: None,
        visible_alias: None,
        aliases: &[],
    }
}

pub const SETTINGS: &[Setting] = &[
    Setting {
        visible_alias: Some("backend_address"),
        aliases: &["backend_host"],
        ..setting(
            "backend_host",
            Kind::Text,
            "HOST",
            BACKEND,
            "IMAP server host name or address [default: 127.0.0.1]",
        )
    },
    Setting {
        aliases: &["backend_port"],
        ..setting(
            "backend_port",
            Kind::Port,
            "PORT",
            BACKEND,
            "IMAP server port [default: 143, 993 with implicit TLS]",
        )
    },
    setting(
        "backend_tls",
        Kind::Text,
        "MODE",
        BACKEND,
        "TLS to the backend: none, starttls, implicit [default: starttls]",
    ),
    setting(
        "backend_ca_file",
        Kind::Path,
        "PATH",
        BACKEND,
        "PEM file of CA certificates to verify the backend with, instead of the system store",
    ),
    setting(
        "backend_tls_fingerprint",
        Kind::Text,
        "SHA256",
        BACKEND,
        "Accept exactly the backend certificate with this SHA-256 fingerprint (AB:CD:... as \
         openssl x509 -fingerprint -sha256 prints it; --check shows it), whoever signed it; its \
         validity period is still checked",
    ),
    setting(
        "backend_tls_verify",
        Kind::Bool,
        "BOOL",
        BACKEND,
        "Verify the backend's certificate and host name; false is insecure and logged every \
         session [default: true]",
    ),
    setting(
        "backend_send_id",
        Kind::Bool,
        "BOOL",
        BACKEND,
        "Send IMAP ID with x-originating-ip/-port of the POP3 client (the backend must trust us) \
         [default: false]",
    ),
    setting(
        "backend_connect_early",
        Kind::Bool,
        "BOOL",
        BACKEND,
        "Connect to the backend (TCP, TLS, greeting) as the client connects, before our \
         greeting, while the client authenticates; costs a backend connection for clients that \
         never log in [default: true]",
    ),
    setting(
        "backend_prefetch",
        Kind::Bool,
        "BOOL",
        BACKEND,
        "After each RETR, ask the backend for the next messages (up to 16, 256 KiB together) in \
         one fetch while the client reads this one, so that a client downloading in order waits \
         less [default: true]",
    ),
    setting(
        "backend_connect_timeout",
        Kind::Secs,
        "SECS",
        BACKEND,
        "Seconds to wait for the backend connection [default: 10]",
    ),
    setting(
        "backend_timeout",
        Kind::Secs,
        "SECS",
        BACKEND,
        "Seconds one backend command may take [default: 60]",
    ),
    setting(
        "throttle_cooldown",
        Kind::Secs,
        "SECS",
        BACKEND,
        "Seconds a mailbox rests, with no login to its provider, after the provider throttled \
         it without saying for how long (its suggestion wins; at most 3600) [default: 300]",
    ),
    setting(
        "folders",
        Kind::List,
        "FOLDER",
        MAILDROP,
        "IMAP folders that form the maildrop, comma-separated, numbered in this order \
         [default: INBOX]",
    ),
    setting(
        "uidl_format",
        Kind::Text,
        "FORMAT",
        MAILDROP,
        "UIDL format: dovecot (%08Xu%08Xv), cyrus (%v.%u), courier (%v-%u), uw (%08Xv%08Xu), \
         gmail (GmailId + hex X-GM-MSGID), header-digest, or a template of %u, %v, %Xu, \
         %08Xv... [default: dovecot]",
    ),
    setting(
        "mark_seen",
        Kind::Bool,
        "BOOL",
        MAILDROP,
        "RETR sets \\Seen on the backend [default: true]",
    ),
    setting(
        "read_only",
        Kind::Bool,
        "BOOL",
        MAILDROP,
        "EXAMINE instead of SELECT; DELE is refused [default: false]",
    ),
    setting(
        "delete_action",
        Kind::Text,
        "expunge|trash",
        MAILDROP,
        "What QUIT does with the messages marked by DELE: expunge them, or move them to the \
         Trash folder (trash: for Gmail, whose expunge keeps them in All Mail); a \
         [backend.NAME] may set its own [default: expunge]",
    ),
    setting(
        "trash_folder",
        Kind::Text,
        "FOLDER",
        MAILDROP,
        "The Trash folder of delete_action = trash, by name; a [backend.NAME] may set its own \
         [default: none, the folder the backend lists with the \\Trash attribute]",
    ),
    setting(
        "lock_dir",
        Kind::Path,
        "DIR",
        MAILDROP,
        "Directory of the per-user lock files [default: /run/pop3server]",
    ),
    setting(
        "snapshot_cache",
        Kind::Bool,
        "BOOL",
        MAILDROP,
        "Keep message sizes (and header-digest UIDLs) by UID between sessions, so a session asks \
         the backend only for the UID list and new messages' sizes and headers [default: true]",
    ),
    setting(
        "cache_dir",
        Kind::Path,
        "DIR",
        MAILDROP,
        "Directory of the snapshot cache [default: /var/cache/pop3server]",
    ),
    setting(
        "cluster_lock_redis",
        Kind::Text,
        "HOST:PORT",
        FRONT_ENDS,
        "Also lock each maildrop in this Redis or Valkey server (HOST:PORT), so that one user has \
         one session across all front-ends [default: none, the local lock only]",
    ),
    setting(
        "cluster_lock_user",
        Kind::Text,
        "USER",
        FRONT_ENDS,
        "ACL user for the cluster lock's Redis (AUTH user password) [default: none]",
    ),
    setting(
        "cluster_lock_password_file",
        Kind::Path,
        "PATH",
        FRONT_ENDS,
        "File holding the cluster lock's Redis password (first line) [default: none, no AUTH]",
    ),
    setting(
        "cluster_lock_ttl",
        Kind::Secs,
        "SECS",
        FRONT_ENDS,
        "Seconds a cluster lock lease lasts unless renewed; renewed every third of it; a killed \
         session's user waits this long [default: 60]",
    ),
    setting(
        "cluster_lock_fallback",
        Kind::Text,
        "refuse|local",
        FRONT_ENDS,
        "When the cluster lock's Redis cannot be reached: refuse (-ERR [SYS/TEMP]) or local \
         (serve with the local lock only, and log a warning) [default: refuse]",
    ),
    setting(
        "routes_file",
        Kind::Path,
        "PATH",
        FRONT_ENDS,
        "Routing table file ([backend.NAME] and [[route]] tables, default_backend), read by every \
         connection, so changes count without a restart [default: none; the tables may be in the \
         main file]",
    ),
    setting(
        "default_backend",
        Kind::Text,
        "NAME",
        FRONT_ENDS,
        "Backend of users no [[route]] matches: default (the backend_* keys), a [backend.NAME], \
         or none to refuse them [default: default]",
    ),
    setting(
        "idle_timeout",
        Kind::Secs,
        "SECS",
        LIMITS,
        "Seconds before an idle client is disconnected [default: 600]",
    ),
    setting(
        "login_failure_delay",
        Kind::Secs,
        "SECS",
        LIMITS,
        "Seconds to wait before answering a failed login [default: 2]",
    ),
    setting(
        "max_login_failures",
        Kind::Count,
        "N",
        LIMITS,
        "Failed logins after which the connection is closed [default: 3]",
    ),
    setting(
        "max_bad_commands",
        Kind::Count,
        "N",
        LIMITS,
        "Bad commands in a row after which the connection is closed [default: 20]",
    ),
    setting(
        "max_children",
        Kind::Count,
        "N",
        LIMITS,
        "Concurrent sessions of the standalone listener [default: 256]",
    ),
    setting(
        "listen",
        Kind::Addresses,
        "ADDR:PORT",
        SERVICE,
        "Run the standalone listener on ADDR:PORT (repeatable)",
    ),
    setting(
        "proxy_protocol_from",
        Kind::List,
        "NETWORK",
        SERVICE,
        "Load balancers that send a PROXY protocol header (v1 or v2) naming the client, as \
         addresses or networks, comma-separated (127.0.0.1,10.0.0.0/8); from these it is \
         required, from others refused [default: none]",
    ),
    setting(
        "log",
        Kind::Text,
        "TARGET",
        SERVICE,
        "Where logs go: auto, syslog, journald, stderr [default: auto]",
    ),
    Setting {
        short: Some('d'),
        ..setting(
            "debug",
            Kind::Switch,
            "",
            SERVICE,
            "Debug logging: the POP3 and IMAP exchanges line by line, passwords, SASL responses \
             and tokens shown only as their lengths, message bodies not at all",
        )
    },
    setting(
        "implementation",
        Kind::Text,
        "TEXT",
        SERVICE,
        "Text for the IMPLEMENTATION capability [default: none sent]",
    ),
    setting(
        "tls_cert",
        Kind::Path,
        "PATH",
        CLIENTS,
        "PEM certificate chain for STLS and implicit TLS [default: none, no STLS]",
    ),
    setting(
        "tls_key",
        Kind::Path,
        "PATH",
        CLIENTS,
        "PEM private key for --tls-cert",
    ),
    setting(
        "implicit_tls",
        Kind::Bool,
        "BOOL",
        CLIENTS,
        "Start TLS before the greeting (POP3S, port 995) [default: false]",
    ),
    setting(
        "plaintext_auth_from",
        Kind::List,
        "NETWORK",
        CLIENTS,
        "Networks whose clients may use USER/PASS and AUTH without TLS (LAN devices that have \
         none), as addresses or networks, comma-separated (192.168.10.0/24) [default: none]",
    ),
    setting(
        "allow_plaintext_auth",
        Kind::Bool,
        "BOOL",
        CLIENTS,
        "Allow USER/PASS and AUTH without TLS from non-loopback clients [default: false]",
    ),
    setting(
        "devices_file",
        Kind::Path,
        "PATH",
        DEVICES,
        "Local device accounts: USER/PASS is checked against this file and the backend login \
         uses the device's OAuth2 token source [default: none]",
    ),
    setting(
        "state_dir",
        Kind::Path,
        "DIR",
        DEVICES,
        "Directory for state shared by the session processes (OAuth2 tokens) \
         [default: /var/lib/pop3server]",
    ),
    setting(
        "consent_timeout",
        Kind::Secs,
        "SECS",
        DEVICES,
        "Seconds --oauth-consent waits for the browser sign-in of a grant authorization_code \
         source [default: 600]",
    ),
    setting(
        "stats_socket",
        Kind::Path,
        "PATH",
        STATS,
        "UNIX datagram socket of the statistics aggregator (pop3server --stats); sessions send \
         their events there when it exists [default: /run/pop3server/stats.sock]",
    ),
    setting(
        "metrics_listen",
        Kind::Text,
        "ADDR:PORT",
        STATS,
        "Where pop3server --stats serves GET /metrics to Prometheus [default: 127.0.0.1:11110]",
    ),
    Setting {
        flag: false,
        ..setting(
            "user",
            Kind::Text,
            "USER",
            ACCOUNT,
            "The account a session started as root switches to [default: pop3server]",
        )
    },
    Setting {
        flag: false,
        ..setting(
            "group",
            Kind::Text,
            "GROUP",
            ACCOUNT,
            "Its group [default: the user's primary group]",
        )
    },
];

/// The declaration of `key`, if it is a top-level setting.
pub fn find(key: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.key == key)
}

/// The settings' documentation: the man page (the reference) and the
/// commented example file name every key and flag, and nothing else.
#[cfg(test)]
mod documentation {
    use std::collections::BTreeSet;

    use super::*;

    const MAN: &str = include_str!("../../packaging/pop3server.8");
    const EXAMPLE: &str = include_str!("../../packaging/pop3server.toml");

    /// The lines of the man page section `name`.
    fn section(name: &str) -> Vec<&'static str> {
        MAN.lines()
            .skip_while(|l| *l != format!(".SH {name}"))
            .skip(1)
            .take_while(|l| !l.starts_with(".SH "))
            .collect()
    }

    fn keys() -> BTreeSet<String> {
        SETTINGS.iter().map(|s| s.key.to_string()).collect()
    }

    /// Bold words that look like keys: `\fBbackend_host\fR`.
    fn bold_words(lines: &[&str]) -> BTreeSet<String> {
        let mut words = BTreeSet::new();
        for line in lines {
            for piece in line.split("\\fB").skip(1) {
                let word = piece.split("\\fR").next().unwrap_or("");
                if !word.is_empty() && word.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
                    words.insert(word.to_string());
                }
            }
        }
        words
    }

    /// The long options the OPTIONS section documents: those named on the
    /// line after each `.TP`.
    fn documented_flags() -> BTreeSet<String> {
        let lines = section("OPTIONS");
        let mut flags = BTreeSet::new();
        for pair in lines.windows(2).filter(|w| w[0] == ".TP") {
            let line = pair[1].replace("\\-", "-");
            for piece in line.split("--").skip(1) {
                let name: String = piece
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '-')
                    .collect();
                flags.insert(format!("--{name}"));
            }
        }
        flags
    }

    #[test]
    fn the_man_page_documents_every_flag_and_no_other() {
        let mut actual: BTreeSet<String> = crate::config::command()
            .get_arguments()
            .filter_map(|a| a.get_long())
            .map(|l| format!("--{l}"))
            .collect();
        actual.extend(["--help".to_string(), "--version".to_string()]);
        let documented = documented_flags();
        let missing: Vec<_> = actual.difference(&documented).collect();
        let unknown: Vec<_> = documented.difference(&actual).collect();
        assert!(
            missing.is_empty(),
            "flags missing from pop3server(8): {missing:?}"
        );
        assert!(
            unknown.is_empty(),
            "pop3server(8) documents flags that do not exist: {unknown:?}"
        );
    }

    #[test]
    fn the_man_page_lists_every_key_and_no_other() {
        let listed = bold_words(&section("CONFIGURATION FILE"));
        let keys = keys();
        let missing: Vec<_> = keys.difference(&listed).collect();
        let unknown: Vec<_> = listed.difference(&keys).collect();
        assert!(
            missing.is_empty(),
            "keys missing from pop3server(8) CONFIGURATION FILE: {missing:?}"
        );
        assert!(
            unknown.is_empty(),
            "pop3server(8) lists keys that do not exist: {unknown:?}"
        );
    }

    /// Where an option's text names its key ("Key: \fBdebug\fR."), the
    /// key is the option's own.
    #[test]
    fn each_option_names_its_own_key() {
        let lines = section("OPTIONS");
        let mut flag: Option<String> = None;
        for (i, line) in lines.iter().enumerate() {
            if i > 0 && lines[i - 1] == ".TP" {
                let text = line.replace("\\-", "-");
                flag = text.split("--").nth(1).map(|p| {
                    p.split(|c: char| !(c.is_ascii_lowercase() || c == '-'))
                        .next()
                        .unwrap_or("")
                        .to_string()
                });
            }
            if let Some(rest) = line.split("Key: \\fB").nth(1) {
                let key = rest.split("\\fR").next().unwrap_or("");
                let named = flag.clone().unwrap_or_default().replace('-', "_");
                assert_eq!(
                    key,
                    named,
                    "pop3server(8): --{} says its key is {key}",
                    named.replace('_', "-")
                );
            }
        }
    }

    #[test]
    fn the_example_file_shows_every_key_and_no_other() {
        let shown: BTreeSet<String> = EXAMPLE
            .lines()
            .filter_map(|l| l.strip_prefix('#'))
            .filter_map(|l| l.split_once(" = "))
            .map(|(k, _)| k.to_string())
            .filter(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
            .collect();
        let keys = keys();
        let missing: Vec<_> = keys.difference(&shown).collect();
        let unknown: Vec<_> = shown.difference(&keys).collect();
        assert!(
            missing.is_empty(),
            "keys missing from packaging/pop3server.toml: {missing:?}"
        );
        assert!(
            unknown.is_empty(),
            "packaging/pop3server.toml shows keys that do not exist: {unknown:?}"
        );
        for table in TABLES {
            assert!(
                EXAMPLE.contains(&format!("#[{table}")) || EXAMPLE.contains(&format!("#[[{table}")),
                "packaging/pop3server.toml shows no [{table}...] table"
            );
        }
    }

    #[test]
    fn flags_are_the_keys_with_dashes() {
        for s in SETTINGS {
            let flag = s.flag_name();
            assert_eq!(
                flag.is_none(),
                ["user", "group"].contains(&s.key),
                "{}",
                s.key
            );
            if let Some(flag) = flag {
                assert_eq!(flag.trim_start_matches("--").replace('-', "_"), s.key);
            }
        }
    }
}
