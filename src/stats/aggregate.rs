//! What the aggregator knows: counters, gauges and histograms fed by the
//! sessions' events ([`Aggregate::record`]) and by the datagrams that are
//! none ([`Aggregate::dropped`]), and their page in the Prometheus text
//! exposition format 0.0.4 ([`Aggregate::render`]). No I/O and no clock:
//! `serve` reads the socket and answers the scrapes.
//!
//! Memory is bounded whoever writes to the socket: a label value that is
//! empty, longer than `MAX_STATS_LABEL_VALUE` or not printable ASCII
//! becomes `other`, and a metric keeps at most `MAX_STATS_LABEL_SETS`
//! label sets, the last of them for `other`.
//!
//! The page is the same for the same events: metrics sorted by name, label
//! sets by their values, histogram buckets in ascending order.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::event::{Event, ParseError, TokenResult};
use crate::limits::{MAX_STATS_LABEL_SETS, MAX_STATS_LABEL_VALUE};

/// Upper bounds of `pop3server_session_duration_seconds`. A device's poll
/// (login, STAT, QUIT) takes well under a second, a download seconds to
/// minutes, an idle client is cut at `idle_timeout` (600 s by default);
/// an hour and beyond is a huge download or a very patient client.
pub const SESSION_DURATION_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// Upper bounds of `pop3server_backend_login_duration_seconds`. A Dovecot
/// on the same host answers in about 10 ms, one on the LAN in tens of
/// milliseconds, a cloud provider in 0.1 to 1 s; seconds mean a provider
/// in trouble, and 30 s is past any client's patience (the backend timeout
/// is 60 s by default).
pub const BACKEND_LOGIN_BUCKETS: &[f64] =
    &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// The label value that stands for values not kept (too long, not
/// printable, or past the metric's label sets).
pub const OTHER: &str = "other";

/// Why a datagram was not recorded: `pop3server_stats_events_dropped_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Dropped {
    /// Not this format, or another version of it.
    Foreign,
    /// This format, but broken (or longer than a datagram may be).
    Malformed,
    /// An event this aggregator does not know (a newer session's).
    Unknown,
}

impl Dropped {
    const ALL: [Dropped; 3] = [Dropped::Foreign, Dropped::Malformed, Dropped::Unknown];

    pub fn name(self) -> &'static str {
        match self {
            Dropped::Foreign => "foreign",
            Dropped::Unknown => "unknown",
            Dropped::Malformed => "malformed",
        }
    }
}

impl From<&ParseError> for Dropped {
    fn from(error: &ParseError) -> Dropped {
        match error {
            ParseError::Foreign => Dropped::Foreign,
            ParseError::UnknownEvent => Dropped::Unknown,
            ParseError::Malformed(_) => Dropped::Malformed,
        }
    }
}

/// Counts of observations per bucket (not cumulative: `render` adds them
/// up), their count and their sum.
#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    /// One per bound, and one for the values above the last (`+Inf`).
    buckets: Vec<u64>,
    count: u64,
    sum: f64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: vec![0; bounds.len() + 1],
            count: 0,
            sum: 0.0,
        }
    }

    fn observe(&mut self, value: f64) {
        // The parser lets only finite, non-negative seconds through; an
        // event made otherwise must not poison the sum.
        let value = if value.is_finite() && value >= 0.0 {
            value
        } else {
            0.0
        };
        let i = self
            .bounds
            .iter()
            .position(|&bound| value <= bound)
            .unwrap_or(self.bounds.len());
        self.buckets[i] = self.buckets[i].saturating_add(1);
        self.count = self.count.saturating_add(1);
        self.sum += value;
    }
}

/// One metric's values by label set: the label values in the order of the
/// metric's label names.
#[derive(Debug, Clone)]
struct Family<const N: usize, V> {
    sets: BTreeMap<[String; N], V>,
}

impl<const N: usize, V> Family<N, V> {
    fn new() -> Self {
        Family {
            sets: BTreeMap::new(),
        }
    }

    /// The value of the label set `values` (each bounded), made with `new`
    /// when it is not there yet; past `MAX_STATS_LABEL_SETS` the `other`
    /// set's.
    fn get(&mut self, values: [&str; N], new: impl FnOnce() -> V) -> &mut V {
        let mut key = values.map(|v| label_value(v).to_string());
        let other = [OTHER; N].map(String::from);
        // The last free place is kept for `other`.
        if !self.sets.contains_key(&key)
            && key != other
            && self.sets.len() + 1 >= MAX_STATS_LABEL_SETS
        {
            key = other;
        }
        self.sets.entry(key).or_insert_with(new)
    }
}

/// A label value as it is kept: itself, or `other`.
fn label_value(value: &str) -> &str {
    let printable = value.bytes().all(|b| (b' '..=b'~').contains(&b));
    if value.is_empty() || value.len() > MAX_STATS_LABEL_VALUE || !printable {
        OTHER
    } else {
        value
    }
}

/// Everything the aggregator counted since it started.
#[derive(Debug, Clone)]
pub struct Aggregate {
    /// When the aggregator started, Unix seconds: `process_start_time_seconds`.
    started: f64,
    sessions_started: u64,
    sessions: Family<1, u64>,
    logins: Family<2, u64>,
    session_duration: Histogram,
    backend_login_duration: Family<1, Histogram>,
    retrieved_messages: u64,
    retrieved_bytes: u64,
    deleted_messages: u64,
    tls_sessions: Family<1, u64>,
    token_requests: Family<3, u64>,
    token_expiry: Family<1, u64>,
    backend_throttled: Family<1, u64>,
    lock_conflicts: Family<1, u64>,
    dropped: BTreeMap<Dropped, u64>,
}

impl Aggregate {
    /// Nothing counted yet; `started` is the aggregator's own start, in
    /// Unix seconds.
    pub fn new(started: f64) -> Aggregate {
        Aggregate {
            started,
            sessions_started: 0,
            sessions: Family::new(),
            logins: Family::new(),
            session_duration: Histogram::new(SESSION_DURATION_BUCKETS),
            backend_login_duration: Family::new(),
            retrieved_messages: 0,
            retrieved_bytes: 0,
            deleted_messages: 0,
            tls_sessions: Family::new(),
            token_requests: Family::new(),
            token_expiry: Family::new(),
            backend_throttled: Family::new(),
            lock_conflicts: Family::new(),
            // Known from the start: they appear at 0.
            dropped: Dropped::ALL.into_iter().map(|d| (d, 0)).collect(),
        }
    }

    /// A datagram as it came from the socket: its event, or why not.
    pub fn record_datagram(&mut self, datagram: &[u8]) {
        match Event::parse(datagram) {
            Ok(event) => self.record(&event),
            Err(e) => self.dropped(Dropped::from(&e)),
        }
    }

    pub fn record(&mut self, event: &Event) {
        match event {
            Event::SessionStart => add(&mut self.sessions_started, 1),
            Event::Login { method, result } => {
                add(self.logins.get([method, result.name()], || 0), 1);
            }
            Event::BackendLogin { backend, seconds } => self
                .backend_login_duration
                .get([backend], || Histogram::new(BACKEND_LOGIN_BUCKETS))
                .observe(*seconds),
            Event::SessionEnd {
                end,
                tls,
                retrieved,
                retrieved_bytes,
                deleted,
                seconds,
            } => {
                add(self.sessions.get([end], || 0), 1);
                if let Some(version) = tls {
                    add(self.tls_sessions.get([version], || 0), 1);
                }
                add(&mut self.retrieved_messages, *retrieved);
                add(&mut self.retrieved_bytes, *retrieved_bytes);
                add(&mut self.deleted_messages, *deleted);
                self.session_duration.observe(*seconds);
            }
            Event::Token {
                source,
                grant,
                result,
                seconds: _,
                expires,
            } => {
                add(
                    self.token_requests
                        .get([source, grant, result.name()], || 0),
                    1,
                );
                if let (TokenResult::Ok, Some(expires)) = (result, expires) {
                    // The latest expiry: datagrams of concurrent sessions
                    // may arrive out of order.
                    let latest = self.token_expiry.get([source], || 0);
                    *latest = (*latest).max(*expires);
                }
            }
            Event::Throttled { backend } => add(self.backend_throttled.get([backend], || 0), 1),
            Event::LockConflict { kind } => add(self.lock_conflicts.get([kind], || 0), 1),
        }
    }

    /// A datagram that was no event.
    pub fn dropped(&mut self, reason: Dropped) {
        add(self.dropped.entry(reason).or_insert(0), 1);
    }

    /// The page Prometheus scrapes: text format 0.0.4, every metric with
    /// its HELP and TYPE (also those without samples yet).
    pub fn render(&self) -> String {
        let mut metrics: Vec<Metric> = vec![
            Metric::counter(
                "pop3server_sessions_started_total",
                "Sessions that started (the greeting was sent).",
            )
            .sample(&[], self.sessions_started),
            Metric::counter(
                "pop3server_sessions_total",
                "Sessions that ended, by how they ended (end= of the session end log line).",
            )
            .family(&["end"], &self.sessions),
            Metric::counter(
                "pop3server_logins_total",
                "Login attempts by method and result (ok, failed, temporary, refused).",
            )
            .family(&["method", "result"], &self.logins),
            Metric::histogram(
                "pop3server_session_duration_seconds",
                "How long sessions lasted, from the greeting to the end.",
            )
            .buckets(&[], &self.session_duration),
            Metric::histogram(
                "pop3server_backend_login_duration_seconds",
                "How long the backend took to answer a login, by backend.",
            )
            .bucket_family(&["backend"], &self.backend_login_duration),
            Metric::counter(
                "pop3server_retrieved_messages_total",
                "Messages clients retrieved (RETR), counted when their session ended.",
            )
            .sample(&[], self.retrieved_messages),
            Metric::counter(
                "pop3server_retrieved_bytes_total",
                "Bytes of the messages clients retrieved, counted when their session ended.",
            )
            .sample(&[], self.retrieved_bytes),
            Metric::counter(
                "pop3server_deleted_messages_total",
                "Messages deleted on the backend at QUIT.",
            )
            .sample(&[], self.deleted_messages),
            Metric::counter(
                "pop3server_tls_sessions_total",
                "Sessions that used TLS, by protocol version.",
            )
            .family(&["version"], &self.tls_sessions),
            Metric::counter(
                "pop3server_token_requests_total",
                "Requests to an OAuth2 token endpoint, by token source, grant and result.",
            )
            .family(&["source", "grant", "result"], &self.token_requests),
            Metric::gauge(
                "pop3server_token_expiry_timestamp_seconds",
                "When the latest access token a token source got expires (Unix seconds).",
            )
            .family(&["source"], &self.token_expiry),
            Metric::counter(
                "pop3server_backend_throttled_total",
                "Times a provider throttled a mailbox (a rest began), by backend.",
            )
            .family(&["backend"], &self.backend_throttled),
            Metric::counter(
                "pop3server_lock_conflicts_total",
                "Logins that found their maildrop locked, by lock (local, cluster).",
            )
            .family(&["kind"], &self.lock_conflicts),
            Metric::counter(
                "pop3server_stats_events_dropped_total",
                "Datagrams the aggregator could not use: foreign (another format or version), \
                 unknown (an event it does not know), malformed.",
            )
            .samples(
                self.dropped
                    .iter()
                    .map(|(reason, n)| (vec![("reason", reason.name())], n.to_string())),
            ),
            Metric::gauge(
                "pop3server_build_info",
                "The aggregator's version, in its label; always 1.",
            )
            .sample(&[("version", env!("CARGO_PKG_VERSION"))], 1),
            Metric::gauge(
                "process_start_time_seconds",
                "When the aggregator started (Unix seconds): its counts start from zero then.",
            )
            .sample(&[], float(self.started)),
        ];
        metrics.sort_by(|a, b| a.name.cmp(b.name));
        metrics.into_iter().map(|m| m.text).collect()
    }
}

fn add(counter: &mut u64, n: u64) {
    // A counter stuck at its top is wrong, but one that wraps looks like
    // a restart.
    *counter = counter.saturating_add(n);
}

/// One metric's text: HELP, TYPE and its samples.
struct Metric {
    name: &'static str,
    text: String,
}

impl Metric {
    fn new(name: &'static str, help: &str, kind: &str) -> Metric {
        let mut text = String::new();
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(text, "# HELP {name} {help}");
        // In format 0.0.4 a counter's TYPE names it as its samples do,
        // `_total` included (promtool reads `x` and `x_total` as two
        // metrics).
        let _ = writeln!(text, "# TYPE {name} {kind}");
        Metric { name, text }
    }

    fn counter(name: &'static str, help: &str) -> Metric {
        Metric::new(name, help, "counter")
    }

    fn gauge(name: &'static str, help: &str) -> Metric {
        Metric::new(name, help, "gauge")
    }

    fn histogram(name: &'static str, help: &str) -> Metric {
        Metric::new(name, help, "histogram")
    }

    fn line(&mut self, suffix: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.text.push_str(self.name);
        self.text.push_str(suffix);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (name, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                self.text.push_str(name);
                self.text.push_str("=\"");
                escape_label_value(&mut self.text, value);
                self.text.push('"');
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }

    fn sample(mut self, labels: &[(&str, &str)], value: impl std::fmt::Display) -> Metric {
        self.line("", labels, value);
        self
    }

    fn samples<'a>(
        mut self,
        samples: impl Iterator<Item = (Vec<(&'a str, &'a str)>, String)>,
    ) -> Metric {
        for (labels, value) in samples {
            self.line("", &labels, value);
        }
        self
    }

    fn family<const N: usize>(mut self, names: &[&str; N], family: &Family<N, u64>) -> Metric {
        for (values, n) in &family.sets {
            self.line("", &labels(names, values), n);
        }
        self
    }

    fn buckets(mut self, labels: &[(&str, &str)], h: &Histogram) -> Metric {
        let mut cumulative = 0u64;
        let mut with_le: Vec<(&str, &str)> = labels.to_vec();
        with_le.push(("le", ""));
        let bounds: Vec<String> = h.bounds.iter().map(|&b| float(b)).collect();
        for (i, count) in h.buckets.iter().enumerate() {
            cumulative = cumulative.saturating_add(*count);
            let le = bounds.get(i).map_or("+Inf", String::as_str);
            if let Some(last) = with_le.last_mut() {
                last.1 = le;
            }
            self.line("_bucket", &with_le, cumulative);
        }
        self.line("_sum", labels, float(h.sum));
        self.line("_count", labels, h.count);
        self
    }

    fn bucket_family<const N: usize>(
        mut self,
        names: &[&str; N],
        family: &Family<N, Histogram>,
    ) -> Metric {
        for (values, h) in &family.sets {
            self = self.buckets(&labels(names, values), h);
        }
        self
    }
}

fn labels<'a, const N: usize>(
    names: &[&'a str; N],
    values: &'a [String; N],
) -> Vec<(&'a str, &'a str)> {
    names
        .iter()
        .zip(values.iter())
        .map(|(n, v)| (*n, v.as_str()))
        .collect()
}

/// The escapes of the text format: backslash, double quote, line feed.
fn escape_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// A float as the text format writes it (Go's ParseFloat reads it back):
/// `+Inf`, `-Inf`, `NaN`, else decimal without an exponent.
fn float(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_string()
    } else if value == f64::INFINITY {
        "+Inf".to_string()
    } else if value == f64::NEG_INFINITY {
        "-Inf".to_string()
    } else {
        format!("{value}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::MAX_STATS_DATAGRAM;
    use crate::stats::event::LoginResult;

    const START: f64 = 1_700_000_000.25;

    fn end(end: &str, tls: Option<&str>, seconds: f64) -> Event {
        Event::SessionEnd {
            end: end.into(),
            tls: tls.map(String::from),
            retrieved: 2,
            retrieved_bytes: 300,
            deleted: 1,
            seconds,
        }
    }

    fn token(source: &str, result: TokenResult, expires: Option<u64>) -> Event {
        Event::Token {
            source: source.into(),
            grant: "client_credentials".into(),
            result,
            seconds: 0.1,
            expires,
        }
    }

    fn throttled(backend: &str) -> Event {
        Event::Throttled {
            backend: backend.into(),
        }
    }

    /// The lines of `page` that are samples of `name` (with its suffixes).
    fn samples<'a>(page: &'a str, name: &str) -> Vec<&'a str> {
        page.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with([' ', '{', '_']))
            })
            .collect()
    }

    #[test]
    fn one_of_each_event_renders_to_this_page() {
        let mut a = Aggregate::new(START);
        a.record(&Event::SessionStart);
        a.record(&Event::Login {
            method: "USER".into(),
            result: LoginResult::Ok,
        });
        a.record(&Event::BackendLogin {
            backend: "default".into(),
            seconds: 0.02,
        });
        a.record(&end("quit", Some("TLSv1.3"), 0.7));
        a.record(&token("m365", TokenResult::Ok, Some(1_800_000_000)));
        a.record(&throttled("default"));
        a.record(&Event::LockConflict {
            kind: "local".into(),
        });
        a.record_datagram(b"junk");
        let expected = "\
# HELP pop3server_backend_login_duration_seconds How long the backend took to answer a login, by backend.\n\
# TYPE pop3server_backend_login_duration_seconds histogram\n\
pop3server_backend_login_duration_seconds_bucket{backend=\"default\",le=\"0.01\"} 0\n\
pop3server_backend_login_duration_seconds_bucket{backend=\"default\",le=\"0.025\"} 1\n\
pop3server_backend_login_duration_seconds_bucket{backend=\"default\",le=\"0.05\"} 1\n\
pop3server_backend_login_duration_seconds_bucket{backend=\"default\",le=\"0.1\"} 1\n\
pop3server_backend_login_duration_seconds_bucket{backend=\"default\",le=\"0.25\"} 1\n\
pop3server_backend_login_duration_seconds_bucket{backend=\"default\",le=\"0.5\"} 1\n\
pop3server_backend_login_duration_seconds_bucket{backend=\"default\",le=\"1\"} 1\n\
pop3server_backend_login_duration_seconds_bucket{backend=\"default\",le=\"2.5\"} 1\n\
pop3server_backend_login_duration_seconds_bucket{backend=\"default\",le=\"5\"} 1\n\
pop3server_backend_login_duration_seconds_bucket{backend=\"default\",le=\"10\"} 1\n\
pop3server_backend_login_duration_seconds_bucket{backend=\"default\",le=\"30\"} 1\n\
pop3server_backend_login_duration_seconds_bucket{backend=\"default\",le=\"+Inf\"} 1\n\
pop3server_backend_login_duration_seconds_sum{backend=\"default\"} 0.02\n\
pop3server_backend_login_duration_seconds_count{backend=\"default\"} 1\n\
# HELP pop3server_backend_throttled_total Times a provider throttled a mailbox (a rest began), by backend.\n\
# TYPE pop3server_backend_throttled_total counter\n\
pop3server_backend_throttled_total{backend=\"default\"} 1\n\
# HELP pop3server_build_info The aggregator's version, in its label; always 1.\n\
# TYPE pop3server_build_info gauge\n\
pop3server_build_info{version=\"VERSION\"} 1\n\
# HELP pop3server_deleted_messages_total Messages deleted on the backend at QUIT.\n\
# TYPE pop3server_deleted_messages_total counter\n\
pop3server_deleted_messages_total 1\n\
# HELP pop3server_lock_conflicts_total Logins that found their maildrop locked, by lock (local, cluster).\n\
# TYPE pop3server_lock_conflicts_total counter\n\
pop3server_lock_conflicts_total{kind=\"local\"} 1\n\
# HELP pop3server_logins_total Login attempts by method and result (ok, failed, temporary, refused).\n\
# TYPE pop3server_logins_total counter\n\
pop3server_logins_total{method=\"USER\",result=\"ok\"} 1\n\
# HELP pop3server_retrieved_bytes_total Bytes of the messages clients retrieved, counted when their session ended.\n\
# TYPE pop3server_retrieved_bytes_total counter\n\
pop3server_retrieved_bytes_total 300\n\
# HELP pop3server_retrieved_messages_total Messages clients retrieved (RETR), counted when their session ended.\n\
# TYPE pop3server_retrieved_messages_total counter\n\
pop3server_retrieved_messages_total 2\n\
# HELP pop3server_session_duration_seconds How long sessions lasted, from the greeting to the end.\n\
# TYPE pop3server_session_duration_seconds histogram\n\
pop3server_session_duration_seconds_bucket{le=\"0.1\"} 0\n\
pop3server_session_duration_seconds_bucket{le=\"0.25\"} 0\n\
pop3server_session_duration_seconds_bucket{le=\"0.5\"} 0\n\
pop3server_session_duration_seconds_bucket{le=\"1\"} 1\n\
pop3server_session_duration_seconds_bucket{le=\"2.5\"} 1\n\
pop3server_session_duration_seconds_bucket{le=\"5\"} 1\n\
pop3server_session_duration_seconds_bucket{le=\"10\"} 1\n\
pop3server_session_duration_seconds_bucket{le=\"30\"} 1\n\
pop3server_session_duration_seconds_bucket{le=\"60\"} 1\n\
pop3server_session_duration_seconds_bucket{le=\"300\"} 1\n\
pop3server_session_duration_seconds_bucket{le=\"600\"} 1\n\
pop3server_session_duration_seconds_bucket{le=\"1800\"} 1\n\
pop3server_session_duration_seconds_bucket{le=\"3600\"} 1\n\
pop3server_session_duration_seconds_bucket{le=\"+Inf\"} 1\n\
pop3server_session_duration_seconds_sum 0.7\n\
pop3server_session_duration_seconds_count 1\n\
# HELP pop3server_sessions_started_total Sessions that started (the greeting was sent).\n\
# TYPE pop3server_sessions_started_total counter\n\
pop3server_sessions_started_total 1\n\
# HELP pop3server_sessions_total Sessions that ended, by how they ended (end= of the session end log line).\n\
# TYPE pop3server_sessions_total counter\n\
pop3server_sessions_total{end=\"quit\"} 1\n\
# HELP pop3server_stats_events_dropped_total Datagrams the aggregator could not use: foreign (another format or version), unknown (an event it does not know), malformed.\n\
# TYPE pop3server_stats_events_dropped_total counter\n\
pop3server_stats_events_dropped_total{reason=\"foreign\"} 1\n\
pop3server_stats_events_dropped_total{reason=\"malformed\"} 0\n\
pop3server_stats_events_dropped_total{reason=\"unknown\"} 0\n\
# HELP pop3server_tls_sessions_total Sessions that used TLS, by protocol version.\n\
# TYPE pop3server_tls_sessions_total counter\n\
pop3server_tls_sessions_total{version=\"TLSv1.3\"} 1\n\
# HELP pop3server_token_expiry_timestamp_seconds When the latest access token a token source got expires (Unix seconds).\n\
# TYPE pop3server_token_expiry_timestamp_seconds gauge\n\
pop3server_token_expiry_timestamp_seconds{source=\"m365\"} 1800000000\n\
# HELP pop3server_token_requests_total Requests to an OAuth2 token endpoint, by token source, grant and result.\n\
# TYPE pop3server_token_requests_total counter\n\
pop3server_token_requests_total{source=\"m365\",grant=\"client_credentials\",result=\"ok\"} 1\n\
# HELP process_start_time_seconds When the aggregator started (Unix seconds): its counts start from zero then.\n\
# TYPE process_start_time_seconds gauge\n\
process_start_time_seconds 1700000000.25\n\
";
        assert_eq!(
            a.render(),
            expected.replace("VERSION", env!("CARGO_PKG_VERSION"))
        );
    }

    #[test]
    fn before_any_event_the_unlabelled_metrics_are_zero() {
        let page = Aggregate::new(START).render();
        for name in [
            "pop3server_sessions_started_total",
            "pop3server_retrieved_messages_total",
            "pop3server_retrieved_bytes_total",
            "pop3server_deleted_messages_total",
            "pop3server_session_duration_seconds_count",
        ] {
            assert_eq!(samples(&page, name), [format!("{name} 0")], "{name}");
        }
        assert_eq!(
            samples(&page, "pop3server_stats_events_dropped_total"),
            [
                "pop3server_stats_events_dropped_total{reason=\"foreign\"} 0",
                "pop3server_stats_events_dropped_total{reason=\"malformed\"} 0",
                "pop3server_stats_events_dropped_total{reason=\"unknown\"} 0",
            ]
        );
        // Metrics without samples yet are announced all the same.
        assert!(page.contains("# TYPE pop3server_logins_total counter\n"));
        assert!(page.contains("# TYPE pop3server_token_expiry_timestamp_seconds gauge\n"));
        assert_eq!(
            samples(&page, "pop3server_build_info"),
            [format!(
                "pop3server_build_info{{version=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION")
            )]
        );
    }

    #[test]
    fn every_metric_has_help_and_type_and_the_page_is_sorted() {
        let page = Aggregate::new(START).render();
        let helps: Vec<&str> = page
            .lines()
            .filter_map(|l| l.strip_prefix("# HELP "))
            .map(|l| l.split(' ').next().unwrap_or(""))
            .collect();
        let types: Vec<&str> = page
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| l.split(' ').next().unwrap_or(""))
            .collect();
        assert_eq!(helps, types);
        assert_eq!(helps.len(), 16);
        let mut sorted = helps.clone();
        sorted.sort_unstable();
        assert_eq!(helps, sorted);
        for name in helps {
            let kind = page
                .lines()
                .find_map(|l| l.strip_prefix(&format!("# TYPE {name} ")))
                .unwrap_or("");
            assert_eq!(
                name.ends_with("_total"),
                kind == "counter",
                "{name} is a {kind}"
            );
        }
    }

    #[test]
    fn label_sets_are_sorted_and_counted() {
        let mut a = Aggregate::new(START);
        for e in ["timeout", "quit", "quit", "backend-error"] {
            a.record(&end(e, None, 1.0));
        }
        a.record(&end("quit", Some("TLSv1.2"), 1.0));
        let page = a.render();
        assert_eq!(
            samples(&page, "pop3server_sessions_total"),
            [
                "pop3server_sessions_total{end=\"backend-error\"} 1",
                "pop3server_sessions_total{end=\"quit\"} 3",
                "pop3server_sessions_total{end=\"timeout\"} 1",
            ]
        );
        assert_eq!(
            samples(&page, "pop3server_tls_sessions_total"),
            ["pop3server_tls_sessions_total{version=\"TLSv1.2\"} 1"]
        );
        assert_eq!(
            samples(&page, "pop3server_retrieved_messages_total"),
            ["pop3server_retrieved_messages_total 10"]
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative_with_inf_sum_and_count() {
        let mut a = Aggregate::new(START);
        // On a bound (le: "less or equal"), between two, beyond the last.
        for seconds in [0.1, 0.3, 0.3, 4000.0] {
            a.record(&end("quit", None, seconds));
        }
        let page = a.render();
        let lines = samples(&page, "pop3server_session_duration_seconds");
        let name = "pop3server_session_duration_seconds";
        assert_eq!(lines.len(), SESSION_DURATION_BUCKETS.len() + 3);
        assert_eq!(lines[0], format!("{name}_bucket{{le=\"0.1\"}} 1"));
        assert_eq!(lines[1], format!("{name}_bucket{{le=\"0.25\"}} 1"));
        assert_eq!(lines[2], format!("{name}_bucket{{le=\"0.5\"}} 3"));
        assert_eq!(lines[12], format!("{name}_bucket{{le=\"3600\"}} 3"));
        assert_eq!(lines[13], format!("{name}_bucket{{le=\"+Inf\"}} 4"));
        assert_eq!(lines[14], format!("{name}_sum 4000.7"));
        assert_eq!(lines[15], format!("{name}_count 4"));
        let counts: Vec<u64> = lines[..14]
            .iter()
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect();
        assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
    }

    #[test]
    fn backend_login_durations_by_backend() {
        let mut a = Aggregate::new(START);
        for (backend, seconds) in [("m365", 0.4), ("local", 0.004), ("m365", 45.0)] {
            a.record(&Event::BackendLogin {
                backend: backend.into(),
                seconds,
            });
        }
        let page = a.render();
        let name = "pop3server_backend_login_duration_seconds";
        let lines = samples(&page, name);
        assert_eq!(lines.len(), 2 * (BACKEND_LOGIN_BUCKETS.len() + 3));
        assert!(lines.contains(&&*format!(
            "{name}_bucket{{backend=\"local\",le=\"0.01\"}} 1"
        )));
        assert!(lines.contains(&&*format!("{name}_bucket{{backend=\"m365\",le=\"0.5\"}} 1")));
        assert!(lines.contains(&&*format!("{name}_bucket{{backend=\"m365\",le=\"30\"}} 1")));
        assert!(lines.contains(&&*format!(
            "{name}_bucket{{backend=\"m365\",le=\"+Inf\"}} 2"
        )));
        assert!(lines.contains(&&*format!("{name}_count{{backend=\"m365\"}} 2")));
        assert!(lines.contains(&&*format!("{name}_sum{{backend=\"local\"}} 0.004")));
    }

    #[test]
    fn token_expiry_is_the_latest_of_the_good_answers() {
        let mut a = Aggregate::new(START);
        a.record(&token("m365", TokenResult::Ok, Some(2000)));
        a.record(&token("m365", TokenResult::Ok, Some(1000)));
        a.record(&token("m365", TokenResult::Failed, Some(9000)));
        a.record(&token("gmail", TokenResult::Failed, None));
        let page = a.render();
        assert_eq!(
            samples(&page, "pop3server_token_expiry_timestamp_seconds"),
            ["pop3server_token_expiry_timestamp_seconds{source=\"m365\"} 2000"]
        );
        assert_eq!(
            samples(&page, "pop3server_token_requests_total"),
            [
                "pop3server_token_requests_total{source=\"gmail\",grant=\"client_credentials\",result=\"failed\"} 1",
                "pop3server_token_requests_total{source=\"m365\",grant=\"client_credentials\",result=\"failed\"} 1",
                "pop3server_token_requests_total{source=\"m365\",grant=\"client_credentials\",result=\"ok\"} 2",
            ]
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let mut a = Aggregate::new(START);
        a.record(&throttled(r#"back\slash "quoted""#));
        let page = a.render();
        assert_eq!(
            samples(&page, "pop3server_backend_throttled_total"),
            [r#"pop3server_backend_throttled_total{backend="back\\slash \"quoted\""} 1"#]
        );
        let mut out = String::new();
        escape_label_value(&mut out, "a\nb\\c\"d");
        assert_eq!(out, r#"a\nb\\c\"d"#);
    }

    #[test]
    fn long_empty_or_unprintable_values_become_other() {
        let mut a = Aggregate::new(START);
        let longest = "x".repeat(MAX_STATS_LABEL_VALUE);
        for backend in [
            longest.as_str(),
            &"x".repeat(MAX_STATS_LABEL_VALUE + 1),
            "",
            "line\nbreak",
            "tab\there",
            "caf\u{e9}",
            "nul\0",
        ] {
            a.record(&throttled(backend));
        }
        let page = a.render();
        assert_eq!(
            samples(&page, "pop3server_backend_throttled_total"),
            [
                "pop3server_backend_throttled_total{backend=\"other\"} 6".to_string(),
                format!("pop3server_backend_throttled_total{{backend=\"{longest}\"}} 1"),
            ]
        );
    }

    #[test]
    fn label_sets_are_bounded_and_the_rest_is_other() {
        let mut a = Aggregate::new(START);
        let n = MAX_STATS_LABEL_SETS + 500;
        for i in 0..n {
            a.record(&Event::Login {
                method: format!("M{i}"),
                result: LoginResult::Failed,
            });
            a.record(&throttled(&format!("b{i}")));
        }
        // Sets already known still count as themselves.
        a.record(&throttled("b0"));
        let page = a.render();
        let logins = samples(&page, "pop3server_logins_total");
        assert_eq!(logins.len(), MAX_STATS_LABEL_SETS);
        let other = "pop3server_logins_total{method=\"other\",result=\"other\"} ";
        let overflow: u64 = logins
            .iter()
            .find_map(|l| l.strip_prefix(other))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        assert_eq!(overflow, (n - (MAX_STATS_LABEL_SETS - 1)) as u64);
        let throttled = samples(&page, "pop3server_backend_throttled_total");
        assert_eq!(throttled.len(), MAX_STATS_LABEL_SETS);
        assert!(throttled.contains(&"pop3server_backend_throttled_total{backend=\"b0\"} 2"));
    }

    #[test]
    fn datagrams_that_are_no_event_are_counted_by_reason() {
        let mut a = Aggregate::new(START);
        for datagram in [
            &b"GET / HTTP/1.0"[..],
            b"pop3server-stats 2 session-start",
            b"pop3server-stats 1 reboot",
            b"pop3server-stats 1 login method=USER",
            &[b'x'; MAX_STATS_DATAGRAM + 1],
            b"pop3server-stats 1 session-start",
        ] {
            a.record_datagram(datagram);
        }
        let page = a.render();
        assert_eq!(
            samples(&page, "pop3server_stats_events_dropped_total"),
            [
                "pop3server_stats_events_dropped_total{reason=\"foreign\"} 2",
                "pop3server_stats_events_dropped_total{reason=\"malformed\"} 2",
                "pop3server_stats_events_dropped_total{reason=\"unknown\"} 1",
            ]
        );
        assert_eq!(
            samples(&page, "pop3server_sessions_started_total"),
            ["pop3server_sessions_started_total 1"]
        );
    }

    #[test]
    fn counters_stop_at_their_top_and_odd_floats_are_written_as_prometheus_reads_them() {
        let mut a = Aggregate::new(START);
        for _ in 0..2 {
            a.record(&Event::SessionEnd {
                end: "quit".into(),
                tls: None,
                retrieved: u64::MAX,
                retrieved_bytes: u64::MAX,
                deleted: 0,
                seconds: f64::MAX,
            });
        }
        let page = a.render();
        assert_eq!(
            samples(&page, "pop3server_retrieved_bytes_total"),
            [format!("pop3server_retrieved_bytes_total {}", u64::MAX)]
        );
        assert!(
            page.contains("pop3server_session_duration_seconds_sum +Inf\n"),
            "{page}"
        );
        assert_eq!(float(f64::NEG_INFINITY), "-Inf");
        assert_eq!(float(f64::NAN), "NaN");
        assert_eq!(float(1e-7), "0.0000001");
        assert_eq!(float(3600.0), "3600");
    }
}
