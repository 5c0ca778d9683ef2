//! Where log lines go: syslog (facility mail) under inetd, where stderr is
//! the client's socket; stderr with sd-daemon `<N>` priority prefixes under
//! systemd (journald reads the levels); plain stderr in the foreground.
//! Client-supplied text is made printable before it is logged, and long
//! UID lists are cut to a screenful.

use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::sync::Mutex;

use log::{Level, LevelFilter, Log, Metadata, Record};

/// Where log lines go (the `log` setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    Auto,
    Syslog,
    Journald,
    Stderr,
}

impl LogTarget {
    pub fn parse(v: &str) -> Result<LogTarget, String> {
        match v {
            "auto" => Ok(LogTarget::Auto),
            "syslog" => Ok(LogTarget::Syslog),
            "journald" => Ok(LogTarget::Journald),
            "stderr" => Ok(LogTarget::Stderr),
            _ => Err(format!(
                "{v:?} is not one of auto, syslog, journald, stderr"
            )),
        }
    }
}

/// `auto` made concrete: journald when stderr is systemd's journal stream,
/// syslog for a per-connection process, stderr otherwise.
pub fn resolve(target: LogTarget, per_connection: bool) -> LogTarget {
    match target {
        LogTarget::Auto if stderr_is_journal() => LogTarget::Journald,
        LogTarget::Auto if per_connection => LogTarget::Syslog,
        LogTarget::Auto => LogTarget::Stderr,
        other => other,
    }
}

/// Whether stderr is the journal stream systemd set up for us. An inherited
/// `JOURNAL_STREAM` (inetd started by systemd passes it on while our stderr
/// is the client's socket) does not count: the device and inode named in it
/// must be those of fd 2 (sd-daemon(3), systemd.exec(5)).
pub fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    std::fs::File::from(fd)
        .metadata()
        .is_ok_and(|m| m.dev() == dev && m.ino() == ino)
}

pub fn name(target: LogTarget) -> &'static str {
    match target {
        LogTarget::Auto => "auto",
        LogTarget::Syslog => "syslog",
        LogTarget::Journald => "journald",
        LogTarget::Stderr => "stderr",
    }
}

enum Sink {
    Stderr {
        priority_prefix: bool,
    },
    Syslog(Mutex<syslog::Logger<syslog::LoggerBackend, syslog::Formatter3164>>),
    /// No syslog socket under inetd: logging nowhere beats writing to the client.
    Discard,
}

struct Logger {
    sink: Sink,
    level: LevelFilter,
}

/// Installs the logger; `target` must be resolved (not `Auto`).
pub fn init(target: LogTarget, debug: bool) {
    let sink = match target {
        LogTarget::Stderr | LogTarget::Auto => Sink::Stderr {
            priority_prefix: false,
        },
        LogTarget::Journald => Sink::Stderr {
            priority_prefix: true,
        },
        LogTarget::Syslog => {
            let formatter = syslog::Formatter3164 {
                facility: syslog::Facility::LOG_MAIL,
                hostname: None,
                process: "pop3server".into(),
                pid: std::process::id(),
            };
            match syslog::unix(formatter) {
                Ok(logger) => Sink::Syslog(Mutex::new(logger)),
                Err(_) => Sink::Discard,
            }
        }
    };
    let level = if debug {
        LevelFilter::Debug
    } else {
        LevelFilter::Info
    };
    if log::set_boxed_logger(Box::new(Logger { sink, level })).is_ok() {
        log::set_max_level(level);
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        level_of(metadata) <= self.level
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = level_of(record.metadata());
        let text = printable(record.args().to_string().as_bytes());
        match &self.sink {
            Sink::Stderr { priority_prefix } => {
                let line = if *priority_prefix {
                    format!("<{}>{text}\n", priority(level))
                } else {
                    format!("pop3server[{}]: {}: {text}\n", std::process::id(), level)
                };
                let _ = std::io::stderr().lock().write_all(line.as_bytes());
            }
            Sink::Syslog(logger) => {
                if let Ok(mut l) = logger.lock() {
                    let _ = match level {
                        Level::Error => l.err(text),
                        Level::Warn => l.warning(text),
                        Level::Info => l.info(text),
                        Level::Debug | Level::Trace => l.debug(text),
                    };
                }
            }
            Sink::Discard => {}
        }
    }

    fn flush(&self) {}
}

/// Our own lines at their level; rustls's warnings about what a client
/// sent (an IP address as SNI, which mpop does) are not the admin's to act
/// on: debug only.
fn level_of(metadata: &Metadata) -> Level {
    match metadata.level() {
        Level::Warn if metadata.target().starts_with("rustls") => Level::Debug,
        level => level,
    }
}

/// sd-daemon(3) priorities.
fn priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// Bytes from a client or backend as one printable line: control bytes and
/// invalid UTF-8 escaped, so no one can forge log lines.
pub fn printable(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() {
                out.extend(c.escape_default());
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// A Unix time as `YYYY-MM-DD HH:MM:SS UTC`, for log lines and reports
/// that name a moment (the end of a rest, a token's expiry).
pub fn utc(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rest = secs % 86_400;
    // Civil from days (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// UIDs for a log line, at most a screenful.
pub fn uid_list(uids: &[u32]) -> String {
    const SHOWN: usize = 50;
    let mut text: Vec<String> = uids.iter().take(SHOWN).map(u32::to_string).collect();
    if uids.len() > SHOWN {
        text.push(format!("... ({} in all)", uids.len()));
    }
    text.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_shown_in_utc_to_the_second() {
        const DAY: u64 = 86_400;
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(
            utc(20_793 * DAY + 3600 + 120 + 7),
            "2026-12-06 01:02:07 UTC"
        );
        assert_eq!(utc(11_016 * DAY + 59), "2000-02-29 00:00:59 UTC");
    }

    #[test]
    fn uid_lists_stop_at_a_screenful() {
        assert_eq!(uid_list(&[3, 1]), "3,1");
        let many: Vec<u32> = (1..=60).collect();
        assert!(uid_list(&many).ends_with(",50,... (60 in all)"));
    }

    #[test]
    fn printable_escapes_line_breaks_and_bad_bytes() {
        assert_eq!(printable(b"al\r\nice"), "al\\r\\nice");
        assert_eq!(printable(b"p\xc3\xa4ss\xff"), "p\u{e4}ss\\xff");
    }

    #[test]
    fn auto_picks_syslog_for_per_connection_processes() {
        if !stderr_is_journal() {
            assert_eq!(resolve(LogTarget::Auto, true), LogTarget::Syslog);
            assert_eq!(resolve(LogTarget::Auto, false), LogTarget::Stderr);
        }
        assert_eq!(resolve(LogTarget::Stderr, true), LogTarget::Stderr);
    }
}
