//! The events a session process tells the statistics aggregator, and
//! their wire form: one datagram per event, one line of ASCII,
//!
//! ```text
//! pop3server-stats 1 EVENT key=value key=value ...
//! ```
//!
//! `1` is the format's version: an aggregator ignores (and counts) a
//! datagram of another version, an unknown event, or a malformed one, and
//! ignores keys it does not know, so that a newer session can talk to an
//! older aggregator. Values are percent-encoded: every byte outside
//! `A-Z a-z 0-9 . _ - : / +` is `%XX`, so a value never holds a space,
//! an `=` or a line break; the line ends with `\n`. Numbers are decimal; durations are seconds with
//! a fraction (`0.0123`). The events and their keys are documented in
//! `docs/monitoring.md`. Nothing here sends or receives a byte.

use std::fmt::{self, Write as _};

use crate::decimal::parse_u64;
use crate::limits::MAX_STATS_DATAGRAM;

/// The first word of every datagram.
pub const MAGIC: &str = "pop3server-stats";
/// The version of the format this program writes and reads.
pub const VERSION: u64 = 1;

/// How a login ended, for `pop3server_logins_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LoginResult {
    Ok,
    /// The credentials were refused.
    Failed,
    /// The backend cannot log the user in now (unavailable, unreachable,
    /// throttled, resting).
    Temporary,
    /// Our own policy said no before the backend was asked (plaintext
    /// without TLS, too many failures).
    Refused,
}

/// How a token request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TokenResult {
    Ok,
    Failed,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A connection became a session (the greeting was sent).
    SessionStart,
    /// A login attempt's verdict; `method` as in the log (`USER`, `APOP`,
    /// `AUTH PLAIN`...).
    Login { method: String, result: LoginResult },
    /// How long the backend took to answer a login.
    BackendLogin { backend: String, seconds: f64 },
    /// A session ended: `end` as in the session-end log line, `tls` the
    /// protocol version if the client used TLS.
    SessionEnd {
        end: String,
        tls: Option<String>,
        retrieved: u64,
        retrieved_bytes: u64,
        deleted: u64,
        seconds: f64,
    },
    /// A token request to a source's token endpoint; `expires` (Unix
    /// seconds) when it gave a token.
    Token {
        source: String,
        grant: String,
        result: TokenResult,
        seconds: f64,
        expires: Option<u64>,
    },
    /// A provider throttled a mailbox of `backend` (a rest began).
    Throttled { backend: String },
    /// A login found its maildrop locked: `kind` is `local` or `cluster`.
    LockConflict { kind: String },
}

/// Why a datagram is not an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// Not our magic word, or another version of the format.
    Foreign,
    /// An event this aggregator does not know.
    UnknownEvent,
    /// Our format, but broken: what is wrong.
    Malformed(&'static str),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Foreign => f.write_str("not a pop3server-stats 1 datagram"),
            ParseError::UnknownEvent => f.write_str("unknown event"),
            ParseError::Malformed(why) => f.write_str(why),
        }
    }
}

impl LoginResult {
    pub fn name(self) -> &'static str {
        match self {
            LoginResult::Ok => "ok",
            LoginResult::Failed => "failed",
            LoginResult::Temporary => "temporary",
            LoginResult::Refused => "refused",
        }
    }

    fn parse(word: &str) -> Option<Self> {
        [
            LoginResult::Ok,
            LoginResult::Failed,
            LoginResult::Temporary,
            LoginResult::Refused,
        ]
        .into_iter()
        .find(|r| r.name() == word)
    }
}

impl TokenResult {
    pub fn name(self) -> &'static str {
        match self {
            TokenResult::Ok => "ok",
            TokenResult::Failed => "failed",
        }
    }

    fn parse(word: &str) -> Option<Self> {
        [TokenResult::Ok, TokenResult::Failed]
            .into_iter()
            .find(|r| r.name() == word)
    }
}

impl Event {
    fn name(&self) -> &'static str {
        match self {
            Event::SessionStart => "session-start",
            Event::Login { .. } => "login",
            Event::BackendLogin { .. } => "backend-login",
            Event::SessionEnd { .. } => "session-end",
            Event::Token { .. } => "token",
            Event::Throttled { .. } => "throttled",
            Event::LockConflict { .. } => "lock-conflict",
        }
    }

    /// The datagram. Values too long for `MAX_STATS_DATAGRAM` are cut
    /// (they are configuration names; the aggregator bounds them anyway).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = format!("{MAGIC} {VERSION} {}", self.name());
        let mut pair = |key: &str, value: &str| {
            let _ = write!(out, " {key}=");
            encode_value(&mut out, value);
        };
        match self {
            Event::SessionStart => {}
            Event::Login { method, result } => {
                pair("method", method);
                pair("result", result.name());
            }
            Event::BackendLogin { backend, seconds } => {
                pair("backend", backend);
                pair("seconds", &seconds_text(*seconds));
            }
            Event::SessionEnd {
                end,
                tls,
                retrieved,
                retrieved_bytes,
                deleted,
                seconds,
            } => {
                pair("end", end);
                if let Some(tls) = tls {
                    pair("tls", tls);
                }
                pair("retrieved", &retrieved.to_string());
                pair("retrieved_bytes", &retrieved_bytes.to_string());
                pair("deleted", &deleted.to_string());
                pair("seconds", &seconds_text(*seconds));
            }
            Event::Token {
                source,
                grant,
                result,
                seconds,
                expires,
            } => {
                pair("source", source);
                pair("grant", grant);
                pair("result", result.name());
                pair("seconds", &seconds_text(*seconds));
                if let Some(expires) = expires {
                    pair("expires", &expires.to_string());
                }
            }
            Event::Throttled { backend } => pair("backend", backend),
            Event::LockConflict { kind } => pair("kind", kind),
        }
        // A line, for whoever watches with socat; cut, it still ends one,
        // and never inside an escape (`%XX` whole or not at all).
        let mut bytes = out.into_bytes();
        if bytes.len() > MAX_STATS_DATAGRAM - 1 {
            let mut cut = MAX_STATS_DATAGRAM - 1;
            if let Some(at) = bytes[cut.saturating_sub(2)..cut]
                .iter()
                .position(|&b| b == b'%')
            {
                cut = cut - 2 + at;
            }
            bytes.truncate(cut);
        }
        bytes.push(b'\n');
        bytes
    }

    /// An event from a datagram.
    pub fn parse(datagram: &[u8]) -> Result<Event, ParseError> {
        if datagram.len() > MAX_STATS_DATAGRAM {
            return Err(ParseError::Malformed("datagram too long"));
        }
        let text = std::str::from_utf8(datagram)
            .map_err(|_| ParseError::Malformed("not ASCII"))?
            .trim_end_matches(['\r', '\n']);
        let mut words = text.split(' ');
        if words.next() != Some(MAGIC) || words.next() != Some("1") {
            return Err(ParseError::Foreign);
        }
        let name = words.next().ok_or(ParseError::Malformed("no event"))?;
        let fields = Fields::parse(words)?;
        match name {
            "session-start" => Ok(Event::SessionStart),
            "login" => Ok(Event::Login {
                method: fields.text("method")?,
                result: LoginResult::parse(&fields.text("result")?)
                    .ok_or(ParseError::Malformed("unknown login result"))?,
            }),
            "backend-login" => Ok(Event::BackendLogin {
                backend: fields.text("backend")?,
                seconds: fields.seconds("seconds")?,
            }),
            "session-end" => Ok(Event::SessionEnd {
                end: fields.text("end")?,
                tls: fields.optional("tls")?,
                retrieved: fields.number("retrieved")?,
                retrieved_bytes: fields.number("retrieved_bytes")?,
                deleted: fields.number("deleted")?,
                seconds: fields.seconds("seconds")?,
            }),
            "token" => Ok(Event::Token {
                source: fields.text("source")?,
                grant: fields.text("grant")?,
                result: TokenResult::parse(&fields.text("result")?)
                    .ok_or(ParseError::Malformed("unknown token result"))?,
                seconds: fields.seconds("seconds")?,
                expires: match fields.optional("expires")? {
                    Some(text) => Some(
                        parse_u64(text.as_bytes())
                            .ok_or(ParseError::Malformed("expires is not a number"))?,
                    ),
                    None => None,
                },
            }),
            "throttled" => Ok(Event::Throttled {
                backend: fields.text("backend")?,
            }),
            "lock-conflict" => Ok(Event::LockConflict {
                kind: fields.text("kind")?,
            }),
            _ => Err(ParseError::UnknownEvent),
        }
    }
}

/// A duration as the format writes it: seconds, microseconds precision.
fn seconds_text(seconds: f64) -> String {
    let seconds = if seconds.is_finite() && seconds > 0.0 {
        seconds
    } else {
        0.0
    };
    format!("{seconds:.6}")
}

fn is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':' | b'/' | b'+')
}

fn encode_value(out: &mut String, value: &str) {
    for &b in value.as_bytes() {
        if is_plain(b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

fn decode_value(text: &str) -> Result<String, ParseError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or(ParseError::Malformed("bad %-escape"))?;
                out.push(hex);
                i += 3;
            }
            b if is_plain(b) => {
                out.push(b);
                i += 1;
            }
            _ => return Err(ParseError::Malformed("a value holds a byte to escape")),
        }
    }
    String::from_utf8(out).map_err(|_| ParseError::Malformed("a value is not UTF-8"))
}

/// The `key=value` pairs of a datagram; each key at most once.
struct Fields<'a>(Vec<(&'a str, &'a str)>);

impl<'a> Fields<'a> {
    fn parse(words: impl Iterator<Item = &'a str>) -> Result<Self, ParseError> {
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        for word in words {
            let (key, value) = word
                .split_once('=')
                .ok_or(ParseError::Malformed("a field without ="))?;
            if key.is_empty() || !key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
                return Err(ParseError::Malformed("a bad key"));
            }
            if pairs.iter().any(|(k, _)| *k == key) {
                return Err(ParseError::Malformed("a key given twice"));
            }
            pairs.push((key, value));
        }
        Ok(Fields(pairs))
    }

    fn optional(&self, key: &str) -> Result<Option<String>, ParseError> {
        self.0
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| decode_value(v))
            .transpose()
    }

    fn text(&self, key: &str) -> Result<String, ParseError> {
        self.optional(key)?
            .ok_or(ParseError::Malformed("a required field is missing"))
    }

    fn number(&self, key: &str) -> Result<u64, ParseError> {
        parse_u64(self.text(key)?.as_bytes()).ok_or(ParseError::Malformed("not a number"))
    }

    fn seconds(&self, key: &str) -> Result<f64, ParseError> {
        let text = self.text(key)?;
        let plain = !text.is_empty()
            && text.bytes().all(|b| b.is_ascii_digit() || b == b'.')
            && text.bytes().filter(|&b| b == b'.').count() <= 1;
        text.parse::<f64>()
            .ok()
            .filter(|s| plain && s.is_finite())
            .ok_or(ParseError::Malformed("not a duration in seconds"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Event> {
        vec![
            Event::SessionStart,
            Event::Login {
                method: "AUTH PLAIN".into(),
                result: LoginResult::Temporary,
            },
            Event::BackendLogin {
                backend: "east side".into(),
                seconds: 0.25,
            },
            Event::SessionEnd {
                end: "quit".into(),
                tls: Some("TLSv1.3".into()),
                retrieved: 3,
                retrieved_bytes: 4096,
                deleted: 2,
                seconds: 1.5,
            },
            Event::SessionEnd {
                end: "timeout".into(),
                tls: None,
                retrieved: 0,
                retrieved_bytes: 0,
                deleted: 0,
                seconds: 600.0,
            },
            Event::Token {
                source: "m365".into(),
                grant: "client_credentials".into(),
                result: TokenResult::Ok,
                seconds: 0.125,
                expires: Some(1_800_000_000),
            },
            Event::Token {
                source: "g=x%".into(),
                grant: "jwt_bearer".into(),
                result: TokenResult::Failed,
                seconds: 3.0,
                expires: None,
            },
            Event::Throttled {
                backend: "default".into(),
            },
            Event::LockConflict {
                kind: "cluster".into(),
            },
        ]
    }

    #[test]
    fn every_event_round_trips_through_its_datagram() {
        for event in all() {
            let datagram = event.encode();
            let line = datagram.strip_suffix(b"\n").expect("one line");
            assert!(line.is_ascii() && !line.contains(&b'\n'), "{event:?}");
            assert_eq!(Event::parse(&datagram), Ok(event.clone()), "{event:?}");
        }
    }

    #[test]
    fn the_wire_form_is_the_documented_one() {
        let end = Event::SessionEnd {
            end: "quit".into(),
            tls: Some("TLSv1 via balancer".into()),
            retrieved: 3,
            retrieved_bytes: 4096,
            deleted: 2,
            seconds: 1.5,
        };
        assert_eq!(
            String::from_utf8(end.encode()).expect("ASCII"),
            "pop3server-stats 1 session-end end=quit tls=TLSv1%20via%20balancer retrieved=3 \
             retrieved_bytes=4096 deleted=2 seconds=1.500000\n"
        );
        assert_eq!(
            Event::parse(b"pop3server-stats 1 session-start\n"),
            Ok(Event::SessionStart)
        );
    }

    #[test]
    fn other_versions_unknown_events_and_unknown_keys() {
        assert_eq!(
            Event::parse(b"pop3server-stats 2 session-start"),
            Err(ParseError::Foreign)
        );
        assert_eq!(Event::parse(b"GET / HTTP/1.0"), Err(ParseError::Foreign));
        assert_eq!(
            Event::parse(b"pop3server-stats 1 reboot"),
            Err(ParseError::UnknownEvent)
        );
        // A newer session's extra key is ignored.
        assert_eq!(
            Event::parse(b"pop3server-stats 1 throttled backend=default words=slow"),
            Ok(Event::Throttled {
                backend: "default".into()
            })
        );
    }

    #[test]
    fn broken_datagrams_are_errors_not_panics() {
        for broken in [
            &b"pop3server-stats 1"[..],
            b"pop3server-stats 1 login method=USER",
            b"pop3server-stats 1 login method=USER result=maybe",
            b"pop3server-stats 1 login method=USER result=ok result=ok",
            b"pop3server-stats 1 login method=%4 result=ok",
            b"pop3server-stats 1 login method=%ZZ result=ok",
            b"pop3server-stats 1 login method=%FF result=ok",
            b"pop3server-stats 1 login method=a=b result=ok",
            b"pop3server-stats 1 login Method=USER result=ok",
            b"pop3server-stats 1 login noequals",
            b"pop3server-stats 1 backend-login backend=x seconds=-1",
            b"pop3server-stats 1 backend-login backend=x seconds=inf",
            b"pop3server-stats 1 backend-login backend=x seconds=1e9",
            b"pop3server-stats 1 backend-login backend=x seconds=1.2.3",
            b"pop3server-stats 1 session-end end=quit retrieved=1 retrieved_bytes=x deleted=0 seconds=1",
            b"pop3server-stats 1 session-end end=quit retrieved=99999999999999999999 retrieved_bytes=0 deleted=0 seconds=1",
            b"pop3server-stats 1 token source=a grant=b result=ok seconds=1 expires=soon",
            b"pop3server-stats 1 \xff",
        ] {
            assert!(
                matches!(Event::parse(broken), Err(ParseError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(broken)
            );
        }
        let long = [b'a'; MAX_STATS_DATAGRAM + 1];
        assert!(Event::parse(&long).is_err());
    }

    #[test]
    fn a_value_too_long_is_cut_to_a_datagram_between_escapes() {
        for pad in 0..3 {
            let event = Event::Throttled {
                backend: "b".repeat(pad) + &"\u{e4}".repeat(MAX_STATS_DATAGRAM),
            };
            let datagram = event.encode();
            assert!(datagram.len() <= MAX_STATS_DATAGRAM, "{pad}");
            assert!(datagram.len() >= MAX_STATS_DATAGRAM - 3, "{pad}");
            // Cut between escapes: the value is its plain bytes, then
            // whole `%XX` escapes.
            let line = datagram.strip_suffix(b"\n").expect("a line");
            let value = line.rsplit(|&b| b == b'=').next().expect("value");
            let escaped = &value[pad..];
            assert!(escaped.len() % 3 == 0, "{pad}");
            assert!(escaped.chunks(3).all(|c| c[0] == b'%'), "{pad}");
        }
    }
}
