//! Which backend serves a user, as perdition's popmap decides it: the
//! routing table's `[[route]]` rules in order (an exact user, `@domain`, or
//! a regular expression), first match wins, then `default_backend`. A rule
//! may rewrite the IMAP login (strip the domain, or a template of the
//! expression's groups). Each backend (`[backend.NAME]`, or `default` from
//! the top-level `backend_*` keys) has hosts that are tried in order.
//! Pure data and matching; connecting is the backend module's.

use std::collections::BTreeMap;
use std::path::PathBuf;

use regex_lite::Regex;
use serde::Deserialize;

use crate::tls::fingerprint::Fingerprint;

/// The name of the backend the top-level `backend_*` keys describe.
pub const DEFAULT_BACKEND: &str = "default";

/// `default_backend = "none"`: users no rule matches are refused.
pub const NO_BACKEND: &str = "none";

/// How the connection to a backend is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendTls {
    None,
    StartTls,
    Implicit,
}

impl BackendTls {
    /// The setting's words (`backend_tls`, `[backend.NAME] tls`).
    pub fn parse(v: &str) -> Result<BackendTls, String> {
        match v {
            "none" => Ok(BackendTls::None),
            "starttls" => Ok(BackendTls::StartTls),
            "implicit" => Ok(BackendTls::Implicit),
            _ => Err(format!("{v:?} is not one of none, starttls, implicit")),
        }
    }

    /// IMAP's port for this kind of connection (RFC 8314: 993 for
    /// implicit TLS).
    pub fn default_port(self) -> u16 {
        if self == BackendTls::Implicit {
            993
        } else {
            143
        }
    }
}

/// What QUIT does with the messages marked by DELE (`delete_action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeleteAction {
    /// Flag `\Deleted` and expunge them: gone from the folder. Gmail keeps
    /// them in All Mail.
    #[default]
    Expunge,
    /// Move them to the Trash folder (`trash_folder`, or the one with the
    /// `\Trash` attribute), where the provider empties them.
    Trash,
}

impl DeleteAction {
    /// The setting's words (`delete_action`, `[backend.NAME] delete_action`).
    pub fn parse(v: &str) -> Result<DeleteAction, String> {
        match v {
            "expunge" => Ok(DeleteAction::Expunge),
            "trash" => Ok(DeleteAction::Trash),
            _ => Err(format!("{v:?} is not one of expunge, trash")),
        }
    }
}

/// A `trash_folder` as the admin wrote it: `None` if unset, and also if
/// empty, which asks for the folder to be found by its `\Trash` attribute
/// (a `[backend.NAME]` that undoes a top-level name).
pub fn trash_folder(v: &str) -> Result<Option<String>, String> {
    if v.bytes().any(|b| b.is_ascii_control()) {
        return Err("a folder name must not contain control characters".into());
    }
    Ok((!v.is_empty()).then(|| v.to_string()))
}

/// One backend: where and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// `default`, or NAME of `[backend.NAME]`: what the maildrop lock holds.
    pub name: String,
    /// Tried in order until one connects (failover).
    pub hosts: Vec<Host>,
    pub tls: BackendTls,
    pub ca_file: Option<PathBuf>,
    pub fingerprint: Option<Fingerprint>,
    pub verify: bool,
    /// Its own, or else the top-level `delete_action`.
    pub delete_action: DeleteAction,
    /// Its own, or else the top-level `trash_folder`; `None`: the folder
    /// with the `\Trash` attribute.
    pub trash_folder: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

#[derive(Debug, Clone)]
enum Match {
    /// ASCII case-folded, as lock names are.
    User(String),
    /// The part after the last `@`, ASCII case-folded.
    Domain(String),
    /// Anchored at both ends.
    Regex(Regex),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Rewrite {
    Keep,
    StripDomain,
    /// `$1`, `${name}` of the rule's regular expression.
    Template(String),
}

#[derive(Debug, Clone)]
pub struct Rule {
    matcher: Match,
    /// Index into `Routes::backends`.
    backend: usize,
    rewrite: Rewrite,
    /// How the admin wrote it, for `--check --route` and logs:
    /// `route 2 (domain = "example.org")`.
    pub describe: String,
}

/// The routing table, validated. Without `[[route]]` rules every user goes
/// to the default backend, as before routing existed.
#[derive(Debug, Clone)]
pub struct Routes {
    /// `backends[0]` is `default`.
    pub backends: Vec<Backend>,
    pub rules: Vec<Rule>,
    /// Where users go that no rule matches; `None`: refused.
    pub default: Option<usize>,
}

/// Where one user goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Index into `Routes::backends`.
    pub backend: usize,
    /// The rule that matched; `None` for the default backend.
    pub rule: Option<usize>,
    /// The IMAP login after the rule's rewrite.
    pub login: Vec<u8>,
}

/// The routing tables as the file writes them (main file or `routes_file`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRoutes {
    pub backend: Option<BTreeMap<String, FileBackend>>,
    pub route: Option<Vec<FileRule>>,
    pub default_backend: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileBackend {
    hosts: Vec<String>,
    port: Option<u16>,
    tls: Option<String>,
    ca_file: Option<PathBuf>,
    tls_fingerprint: Option<String>,
    tls_verify: Option<bool>,
    delete_action: Option<String>,
    trash_folder: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRule {
    user: Option<String>,
    domain: Option<String>,
    regex: Option<String>,
    backend: String,
    strip_domain: Option<bool>,
    login: Option<String>,
}

impl Routes {
    /// Everyone to `default`.
    pub fn single(default: Backend) -> Routes {
        Routes {
            backends: vec![default],
            rules: Vec::new(),
            default: Some(0),
        }
    }

    /// Validates the file's tables on top of the default backend, whose
    /// `delete_action` and `trash_folder` (the top-level ones) are those of
    /// every backend that does not set its own; an error is (key, reason),
    /// the key as the admin wrote it (`route[2].backend`).
    pub fn from_file(default: Backend, file: FileRoutes) -> Result<Routes, (String, String)> {
        let mut backends = vec![default];
        for (name, b) in file.backend.into_iter().flatten() {
            let key = format!("backend.{name}");
            let bad = |reason: String| (key.clone(), reason);
            if name == DEFAULT_BACKEND || name == NO_BACKEND {
                return Err(bad(format!(
                    "the name {name} is reserved (the top-level backend_* keys are the backend \
                     named default)"
                )));
            }
            let tls = match &b.tls {
                Some(t) => BackendTls::parse(t).map_err(|r| (format!("{key}.tls"), r))?,
                None => BackendTls::StartTls,
            };
            let port = b.port.unwrap_or(tls.default_port());
            if b.hosts.is_empty() {
                return Err(bad("hosts must list at least one host".into()));
            }
            let hosts = b
                .hosts
                .iter()
                .map(|h| parse_host(h, port))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|r| (format!("{key}.hosts"), r))?;
            let fingerprint = b
                .tls_fingerprint
                .as_deref()
                .map(Fingerprint::parse)
                .transpose()
                .map_err(|r| (format!("{key}.tls_fingerprint"), r))?;
            if fingerprint.is_some() && b.tls_verify == Some(false) {
                return Err((
                    format!("{key}.tls_fingerprint"),
                    "a pinned certificate is a check: it contradicts tls_verify = false".into(),
                ));
            }
            let delete_action = match &b.delete_action {
                Some(a) => {
                    DeleteAction::parse(a).map_err(|r| (format!("{key}.delete_action"), r))?
                }
                None => backends[0].delete_action,
            };
            let trash_folder = match &b.trash_folder {
                Some(t) => trash_folder(t).map_err(|r| (format!("{key}.trash_folder"), r))?,
                None => backends[0].trash_folder.clone(),
            };
            backends.push(Backend {
                name,
                hosts,
                tls,
                ca_file: b.ca_file,
                fingerprint,
                verify: b.tls_verify.unwrap_or(true),
                delete_action,
                trash_folder,
            });
        }
        let index = |name: &str| backends.iter().position(|b| b.name == name);
        let known = || {
            backends
                .iter()
                .map(|b| b.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut rules = Vec::new();
        for (n, r) in file.route.into_iter().flatten().enumerate() {
            let key = format!("route[{}]", n + 1);
            let describe_as =
                |what: &str, value: &str| format!("route {} ({what} = {value:?})", n + 1);
            let (matcher, describe) = match (&r.user, &r.domain, &r.regex) {
                (Some(u), None, None) => {
                    (Match::User(u.to_ascii_lowercase()), describe_as("user", u))
                }
                (None, Some(d), None) => {
                    let d = d.strip_prefix('@').unwrap_or(d);
                    if d.is_empty() || d.contains('@') {
                        return Err((format!("{key}.domain"), format!("{d:?} is not a domain")));
                    }
                    (
                        Match::Domain(d.to_ascii_lowercase()),
                        describe_as("domain", d),
                    )
                }
                (None, None, Some(x)) => {
                    let anchored = Regex::new(&format!("^(?:{x})$")).map_err(|e| {
                        (
                            format!("{key}.regex"),
                            format!("not a regular expression: {e}"),
                        )
                    })?;
                    (Match::Regex(anchored), describe_as("regex", x))
                }
                _ => {
                    return Err((key, "needs exactly one of user, domain or regex".into()));
                }
            };
            let backend = index(&r.backend).ok_or_else(|| {
                (
                    format!("{key}.backend"),
                    format!("{:?} is not a backend (there are: {})", r.backend, known()),
                )
            })?;
            let rewrite = match (r.strip_domain.unwrap_or(false), &r.login) {
                (false, None) => Rewrite::Keep,
                (true, None) => Rewrite::StripDomain,
                (false, Some(t)) if matches!(matcher, Match::Regex(_)) => {
                    Rewrite::Template(t.clone())
                }
                (false, Some(_)) => {
                    return Err((
                        format!("{key}.login"),
                        "a login template needs a regex rule (its groups: $1, ${name})".into(),
                    ));
                }
                (true, Some(_)) => {
                    return Err((key, "strip_domain and login: keep one of the two".into()));
                }
            };
            rules.push(Rule {
                matcher,
                backend,
                rewrite,
                describe,
            });
        }
        let default = match file.default_backend.as_deref() {
            None => Some(0),
            Some(NO_BACKEND) => None,
            Some(name) => Some(index(name).ok_or_else(|| {
                (
                    "default_backend".to_string(),
                    format!(
                        "{name:?} is not a backend (there are: {}; or \"none\")",
                        known()
                    ),
                )
            })?),
        };
        Ok(Routes {
            backends,
            rules,
            default,
        })
    }

    /// The route of `user` (the POP3 login name), or `None` if no rule
    /// matches and there is no default backend.
    pub fn route(&self, user: &[u8]) -> Option<Route> {
        let text = std::str::from_utf8(user).ok();
        for (n, rule) in self.rules.iter().enumerate() {
            let login = match &rule.matcher {
                Match::User(u) => user
                    .eq_ignore_ascii_case(u.as_bytes())
                    .then(|| user.to_vec()),
                Match::Domain(d) => domain_of(user)
                    .is_some_and(|ud| ud.eq_ignore_ascii_case(d.as_bytes()))
                    .then(|| user.to_vec()),
                Match::Regex(x) => text.and_then(|t| {
                    let caps = x.captures(t)?;
                    Some(match &rule.rewrite {
                        Rewrite::Template(template) => {
                            let mut out = String::new();
                            caps.expand(template, &mut out);
                            out.into_bytes()
                        }
                        _ => user.to_vec(),
                    })
                }),
            };
            if let Some(login) = login {
                let login = match rule.rewrite {
                    Rewrite::StripDomain => strip_domain(&login).to_vec(),
                    _ => login,
                };
                return Some(Route {
                    backend: rule.backend,
                    rule: Some(n),
                    login,
                });
            }
        }
        self.default.map(|backend| Route {
            backend,
            rule: None,
            login: user.to_vec(),
        })
    }

    /// Where a session connects before it knows its user (the early
    /// connection, the SASL mechanisms): the default backend, if any.
    pub fn before_login(&self) -> Option<usize> {
        self.default
    }

    /// How the route was chosen, for `--check --route` and logs.
    pub fn describe(&self, route: &Route) -> String {
        match route.rule {
            Some(n) => self.rules[n].describe.clone(),
            None => "no rule matched: default_backend".to_string(),
        }
    }
}

fn domain_of(user: &[u8]) -> Option<&[u8]> {
    let at = user.iter().rposition(|&b| b == b'@')?;
    Some(&user[at + 1..])
}

fn strip_domain(user: &[u8]) -> &[u8] {
    match user.iter().rposition(|&b| b == b'@') {
        Some(at) => &user[..at],
        None => user,
    }
}

/// `host`, `host:port`, `[v6]:port` or a bare IPv6 address.
fn parse_host(text: &str, default_port: u16) -> Result<Host, String> {
    let bad = || format!("{text:?} is not HOST or HOST:PORT");
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or_else(bad)?;
        match after.strip_prefix(':') {
            Some(p) => (h, p.parse().map_err(|_| bad())?),
            None if after.is_empty() => (h, default_port),
            None => return Err(bad()),
        }
    } else if text.matches(':').count() == 1 {
        let (h, p) = text.split_once(':').ok_or_else(bad)?;
        (h, p.parse().map_err(|_| bad())?)
    } else {
        (text, default_port)
    };
    if host.is_empty() || port == 0 || host.bytes().any(|b| b.is_ascii_whitespace()) {
        return Err(bad());
    }
    Ok(Host {
        host: host.to_string(),
        port,
    })
}

/// A plaintext backend of one host on 127.0.0.1, for the unit tests.
#[cfg(test)]
pub fn test_backend(name: &str, port: u16) -> Backend {
    Backend {
        name: name.into(),
        hosts: vec![Host {
            host: "127.0.0.1".into(),
            port,
        }],
        tls: BackendTls::None,
        ca_file: None,
        fingerprint: None,
        verify: true,
        delete_action: DeleteAction::Expunge,
        trash_folder: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(name: &str) -> Backend {
        test_backend(name, 143)
    }

    fn table(text: &str) -> Result<Routes, (String, String)> {
        let file: FileRoutes = toml::from_str(text).expect("toml");
        Routes::from_file(backend("default"), file)
    }

    const TABLE: &str = r#"
        [backend.east]
        hosts = ["imap1.example", "imap2.example:1143", "[::1]:2143", "::1"]
        tls = "implicit"
        [backend.west]
        hosts = ["10.0.0.2"]
        tls = "none"

        [[route]]
        user = "Boss@Example.org"
        backend = "west"
        [[route]]
        domain = "@example.org"
        backend = "east"
        strip_domain = true
        [[route]]
        regex = '(\w+)\.(\w+)@legacy\.example'
        backend = "west"
        login = "${2}_$1"
    "#;

    #[test]
    fn first_match_wins_with_rewrites() {
        let routes = table(TABLE).expect("valid");
        let east = &routes.backends[1];
        assert_eq!(east.name, "east");
        assert_eq!(
            east.hosts.iter().map(Host::to_string).collect::<Vec<_>>(),
            [
                "imap1.example:993",
                "imap2.example:1143",
                "[::1]:2143",
                "[::1]:993"
            ]
        );
        let boss = routes.route(b"boss@example.ORG").expect("routed");
        assert_eq!((boss.backend, boss.rule), (2, Some(0)));
        assert_eq!(boss.login, b"boss@example.ORG");
        let alice = routes.route(b"alice@EXAMPLE.org").expect("routed");
        assert_eq!((alice.backend, alice.rule), (1, Some(1)));
        assert_eq!(alice.login, b"alice");
        let legacy = routes.route(b"jane.doe@legacy.example").expect("routed");
        assert_eq!(
            (legacy.backend, legacy.login.as_slice()),
            (2, &b"doe_jane"[..])
        );
        assert_eq!(
            routes.describe(&legacy),
            "route 3 (regex = \"(\\\\w+)\\\\.(\\\\w+)@legacy\\\\.example\")"
        );
        // Anchored: a user that only contains the pattern does not match.
        let other = routes.route(b"x.y@legacy.example.net").expect("default");
        assert_eq!((other.backend, other.rule), (0, None));
        assert_eq!(routes.describe(&other), "no rule matched: default_backend");
        // Bytes that are not UTF-8 match no expression, but still a domain.
        let odd = routes.route(b"\xff@example.org").expect("routed");
        assert_eq!((odd.backend, odd.login.as_slice()), (1, &b"\xff"[..]));
    }

    #[test]
    fn a_backend_deletes_as_it_says_or_as_the_top_level_does() {
        let mut top = backend("default");
        top.delete_action = DeleteAction::Trash;
        top.trash_folder = Some("Papierkorb".into());
        let file: FileRoutes = toml::from_str(
            r#"
            [backend.same]
            hosts = ["a"]
            [backend.gmail]
            hosts = ["b"]
            trash_folder = ""
            [backend.plain]
            hosts = ["c"]
            delete_action = "expunge"
            trash_folder = "Deleted Items"
            "#,
        )
        .expect("toml");
        let routes = Routes::from_file(top, file).expect("valid");
        let of = |name: &str| {
            let b = routes.backends.iter().find(|b| b.name == name).expect(name);
            (b.delete_action, b.trash_folder.as_deref())
        };
        assert_eq!(of("same"), (DeleteAction::Trash, Some("Papierkorb")));
        // An empty name: found by its \Trash attribute after all.
        assert_eq!(of("gmail"), (DeleteAction::Trash, None));
        assert_eq!(of("plain"), (DeleteAction::Expunge, Some("Deleted Items")));
        assert_eq!(trash_folder(""), Ok(None));
    }

    #[test]
    fn no_default_refuses_the_unmatched() {
        let routes = table(&format!("default_backend = \"none\"\n{TABLE}")).expect("valid");
        assert!(routes.route(b"nobody@elsewhere").is_none());
        assert_eq!(routes.before_login(), None);
        let routes = table(&format!("default_backend = \"west\"\n{TABLE}")).expect("valid");
        assert_eq!(routes.route(b"nobody").map(|r| r.backend), Some(2));
        let single = Routes::single(backend("default"));
        assert_eq!(single.route(b"anyone").map(|r| r.backend), Some(0));
    }

    #[test]
    fn mistakes_name_the_rule_and_what_is_wrong() {
        let cases = [
            (
                "[[route]]\nuser = \"a\"\nbackend = \"eest\"\n",
                "route[1].backend",
                "\"eest\" is not a backend (there are: default)",
            ),
            (
                "[[route]]\nbackend = \"default\"\n",
                "route[1]",
                "exactly one of user, domain or regex",
            ),
            (
                "[[route]]\nuser = \"a\"\ndomain = \"b\"\nbackend = \"default\"\n",
                "route[1]",
                "exactly one",
            ),
            (
                "[[route]]\nregex = \"(\"\nbackend = \"default\"\n",
                "route[1].regex",
                "not a regular expression",
            ),
            (
                "[[route]]\nuser = \"a\"\nlogin = \"$1\"\nbackend = \"default\"\n",
                "route[1].login",
                "needs a regex rule",
            ),
            (
                "[backend.default]\nhosts = [\"h\"]\n",
                "backend.default",
                "reserved",
            ),
            (
                "[backend.b]\nhosts = []\n",
                "backend.b",
                "at least one host",
            ),
            (
                "[backend.b]\nhosts = [\"h:x\"]\n",
                "backend.b.hosts",
                "not HOST or HOST:PORT",
            ),
            (
                "[backend.b]\nhosts = [\"h\"]\ntls = \"tls\"\n",
                "backend.b.tls",
                "is not one of none, starttls, implicit",
            ),
            (
                "[backend.b]\nhosts = [\"h\"]\ndelete_action = \"move\"\n",
                "backend.b.delete_action",
                "is not one of expunge, trash",
            ),
            (
                "[backend.b]\nhosts = [\"h\"]\ntrash_folder = \"a\\nb\"\n",
                "backend.b.trash_folder",
                "control characters",
            ),
            (
                "default_backend = \"nowhere\"\n",
                "default_backend",
                "or \"none\"",
            ),
        ];
        for (text, key, reason) in cases {
            let (k, r) = table(text).expect_err(text);
            assert_eq!(k, key, "{text}");
            assert!(r.contains(reason), "{text}: {r}");
        }
    }
}
