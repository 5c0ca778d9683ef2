//! The configuration file: read, parsed as TOML, its top-level keys checked
//! against the declarations, and every mistake explained in one line with
//! the file, the line and the key (toml's own message is a caret picture
//! over several lines, in serde's type names). The tables (`[oauth.NAME]`,
//! `[backend.NAME]`, `[[route]]`) are parsed into the types of the modules
//! that own them.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::ConfigError;
use super::settings::{self, Kind, SETTINGS, TABLES};
use crate::devices::oauth::settings::FileOAuthSource;
use crate::route::{FileBackend, FileRule};

/// One file's settings, with its text kept to name the line of a mistake.
#[derive(Debug, Default)]
pub struct FileLayer {
    /// The path as the admin gave it.
    pub source: String,
    text: String,
    values: toml::Table,
    pub tables: FileTables,
}

/// The tables of the main file, for their owners to check.
#[derive(Debug, Default, Deserialize)]
pub struct FileTables {
    pub oauth: Option<BTreeMap<String, FileOAuthSource>>,
    pub backend: Option<BTreeMap<String, FileBackend>>,
    pub route: Option<Vec<FileRule>>,
}

impl FileLayer {
    /// Reads `path`; a missing file that was not asked for by name is an
    /// empty one (defaults and flags only). `None` then.
    pub fn read(path: &Path, explicit: bool) -> Result<Option<FileLayer>, ConfigError> {
        let source = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => FileLayer::parse(text, &source).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => Ok(None),
            Err(e) => Err(ConfigError::new(source, "", format!("cannot read: {e}"))),
        }
    }

    /// A file kept only to name lines in it (the routing table's).
    pub fn of_text(text: String, source: &str) -> FileLayer {
        FileLayer {
            source: source.to_string(),
            text,
            ..FileLayer::default()
        }
    }

    pub fn parse(text: String, source: &str) -> Result<FileLayer, ConfigError> {
        let values: toml::Table =
            toml::from_str(&text).map_err(|e| explain_toml(&text, source, &e))?;
        let file = FileLayer {
            source: source.to_string(),
            tables: parse_in(&text, source)?,
            values,
            text,
        };
        file.refuse_unknown_keys()?;
        file.check_types()?;
        Ok(file)
    }

    /// Each value of the type its declaration says, the first mistake in
    /// the file's order: the file is wrong before any value is used.
    fn check_types(&self) -> Result<(), ConfigError> {
        let mut keyed: Vec<(&str, Kind)> = SETTINGS
            .iter()
            .filter(|s| self.values.contains_key(s.key))
            .map(|s| (s.key, s.kind))
            .collect();
        keyed.sort_by_key(|(key, _)| self.line_of(key).unwrap_or(usize::MAX));
        for (key, kind) in keyed {
            match kind {
                Kind::Bool | Kind::Switch => self.get::<bool>(key).map(drop),
                Kind::Secs => self.get::<u64>(key).map(drop),
                Kind::Count => self.get::<u32>(key).map(drop),
                Kind::Port => self.get::<u16>(key).map(drop),
                Kind::Text | Kind::Path => self.text(key),
                Kind::List => self.get::<Vec<String>>(key).map(drop),
                Kind::Addresses => self.get::<OneOrMany>(key).map(drop),
            }?;
        }
        Ok(())
    }

    /// The first unknown key in the file's order, with the nearest known
    /// one if it looks like a misspelling.
    fn refuse_unknown_keys(&self) -> Result<(), ConfigError> {
        let unknown = self
            .values
            .keys()
            .filter(|k| settings::find(k).is_none() && !TABLES.contains(&k.as_str()))
            .min_by_key(|k| self.line_of(k).unwrap_or(usize::MAX));
        let Some(key) = unknown else {
            return Ok(());
        };
        let known: Vec<&str> = SETTINGS
            .iter()
            .map(|s| s.key)
            .chain(TABLES.iter().copied())
            .collect();
        Err(ConfigError::new(
            self.at(key),
            key,
            unknown_setting(key, &known),
        ))
    }

    /// The value of a top-level setting, as the type its owner wants.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, ConfigError> {
        let Some(value) = self.values.get(key) else {
            return Ok(None);
        };
        T::deserialize(value.clone()).map(Some).map_err(|e| {
            ConfigError::new(self.at(key), key, explain_value(key, e.message(), value))
        })
    }

    /// A string, and not a date or time, which TOML writes without quotes
    /// and serde would take for one.
    fn text(&self, key: &str) -> Result<(), ConfigError> {
        if let Some(toml::Value::Datetime(d)) = self.values.get(key) {
            return Err(ConfigError::new(
                self.at(key),
                key,
                format!("expected a string in quotes, not the date or time {d}"),
            ));
        }
        self.get::<String>(key).map(drop)
    }

    pub fn has(&self, key: &str) -> bool {
        self.values.contains_key(key)
    }

    /// Where an error about `key` (a dotted path such as `oauth.m365` or
    /// `route[2].backend`) points: `FILE:LINE`, or `FILE` where the line
    /// cannot be told (a dotted key, an inline table).
    pub fn at(&self, key: &str) -> String {
        match self.line_of(key) {
            Some(line) => format!("{}:{line}", self.source),
            None => self.source.clone(),
        }
    }

    fn line_of(&self, key: &str) -> Option<usize> {
        locate(&self.text, key)
    }
}

/// `listen`: one address, or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(one) => vec![one],
            OneOrMany::Many(many) => many,
        }
    }
}

/// A file that holds only tables (the main file's, or `routes_file`):
/// parsed with every mistake on its line.
pub fn parse_in<T: DeserializeOwned>(text: &str, source: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| explain_toml(text, source, &e))
}

/// The line (1-based) of `key` in `text`: `name` at the top, `a.b` as key
/// `b` under `[a]`, `a.b` as the header `[a.b]`, `route[2].x` as key `x`
/// under the second `[[route]]`; a top-level name also as the first part
/// of a header or dotted key (`[oauth2.m365]`, `bogus.x = 1`). A plain
/// scan: TOML written as the example file writes it; anything fancier
/// (a key inside a multi-line value) gets no line or the first match.
pub fn locate(text: &str, key: &str) -> Option<usize> {
    let mut table = String::new();
    let mut arrays: BTreeMap<String, usize> = BTreeMap::new();
    let first_part = |name: &str| {
        name.split(['.', '['])
            .next()
            .unwrap_or("")
            .trim()
            .to_string()
    };
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        if line.starts_with('[') {
            // A comment may follow the header.
            let header = line.split('#').next().unwrap_or("").trim();
            if let Some(name) = header.strip_prefix("[[").and_then(|l| l.strip_suffix("]]")) {
                let name = unquote(name);
                let count = arrays.entry(name.clone()).or_insert(0);
                *count += 1;
                table = format!("{name}[{count}]");
            } else if let Some(name) = header.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                table = unquote(name);
            } else {
                continue;
            }
            if table == key || (!key.contains(['.', '[']) && first_part(&table) == key) {
                return Some(n + 1);
            }
        } else if let Some((name, _)) = line.split_once('=') {
            let name = unquote(name);
            let full = if table.is_empty() {
                name.clone()
            } else {
                format!("{table}.{name}")
            };
            let top_level_part =
                table.is_empty() && !key.contains(['.', '[']) && first_part(&name) == key;
            if full == key || top_level_part {
                return Some(n + 1);
            }
        }
    }
    None
}

/// A key or table name as written, its quotes taken off.
fn unquote(name: &str) -> String {
    name.trim().trim_matches(['"', '\'']).to_string()
}

/// One line for a TOML or type error: file and line, the setting, what is
/// wrong in plain words and what would be right.
pub fn explain_toml(text: &str, source: &str, e: &toml::de::Error) -> ConfigError {
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
        unknown_setting(unknown, &candidates)
    } else if message.starts_with("invalid type: ") || message.starts_with("invalid value: ") {
        explain_type(name, message)
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
    ConfigError::new(format!("{source}:{line_no}"), key, reason)
}

fn unknown_setting(unknown: &str, known: &[&str]) -> String {
    match closest(unknown, known) {
        Some(near) => format!("unknown setting; did you mean {near}?"),
        None => "unknown setting (pop3server(8) and the commented \
                 /etc/pop3server/pop3server.toml list them all)"
            .to_string(),
    }
}

/// Why `value` is not what `key` takes.
fn explain_value(key: &str, message: &str, value: &toml::Value) -> String {
    if message.starts_with("invalid type: ") || message.starts_with("invalid value: ") {
        return explain_type(key, message);
    }
    match value {
        // One of several forms (`listen`: a string or a list): a bare
        // word or number is most likely a string without its quotes.
        toml::Value::Integer(_)
        | toml::Value::Float(_)
        | toml::Value::Boolean(_)
        | toml::Value::Datetime(_) => format!(
            "{value} is not a TOML value: a string must be in quotes, e.g. {key} = \"{value}\""
        ),
        _ => message.replace('\n', " "),
    }
}

/// serde's "invalid type: string "abc", expected u16" in an admin's words.
fn explain_type(key: &str, message: &str) -> String {
    let rest = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "))
        .unwrap_or(message);
    let (found, wanted) = rest.split_once(", expected ").unwrap_or((rest, ""));
    format!(
        "expected {}, not {}",
        plain_type(key, wanted),
        found.replace('`', "")
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_found_on_its_line_in_its_table() {
        let text = "a = 1\n# b = 0\nb = 2\n[oauth.m]\nscope = \"s\"\n[[route]]\nuser = \"x\"\n\
                    [[route]]\nuser = \"y\"\nbackend = \"z\"\n";
        assert_eq!(locate(text, "a"), Some(1));
        assert_eq!(locate(text, "b"), Some(3));
        assert_eq!(locate(text, "oauth.m"), Some(4));
        assert_eq!(locate(text, "oauth.m.scope"), Some(5));
        assert_eq!(locate(text, "route[2].backend"), Some(10));
        assert_eq!(locate(text, "route[1].backend"), None);
        assert_eq!(locate(text, "scope"), None);
        let text = "[backend.b]\nhosts = [\"h\"]\n[[route]]  # sales\nuser = \"a\"\nbackend = \"c\"\n\
                    [[route]]\nuser = \"z\"\nbackend = \"b\"\n";
        assert_eq!(locate(text, "route[1].backend"), Some(5));
        assert_eq!(locate(text, "route[2].backend"), Some(8));
        let text = "'idle_timeout' = \"x\"\nbogus.x = 1\n[oauth2.m365]\n[[routes]]\n";
        assert_eq!(locate(text, "idle_timeout"), Some(1));
        assert_eq!(locate(text, "bogus"), Some(2));
        assert_eq!(locate(text, "oauth2"), Some(3));
        assert_eq!(locate(text, "routes"), Some(4));
    }

    #[test]
    fn a_value_of_the_wrong_form_is_explained() {
        let e = FileLayer::parse("\nlisten = 110\n".into(), "t.toml").expect_err("listen");
        assert_eq!(
            e.to_string(),
            "t.toml:2: listen: 110 is not a TOML value: a string must be in quotes, e.g. \
             listen = \"110\""
        );
        let e =
            FileLayer::parse("implementation = 2024-06-01\n".into(), "t.toml").expect_err("date");
        assert_eq!(
            e.to_string(),
            "t.toml:1: implementation: expected a string in quotes, not the date or time 2024-06-01"
        );
    }
}
