//! The statistics datagram and the aggregator, on any bytes: the input is
//! cut at NUL bytes into datagrams (a NUL is never part of a good one).
//! Each parses to an event or an error, never a panic; an event encodes to
//! a datagram that parses back to the same event (its durations as the
//! format writes them, to the microsecond); the aggregator records every
//! datagram and renders a page of ASCII lines without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pop3server::stats::aggregate::Aggregate;
use pop3server::stats::event::Event;

/// `limits::MAX_STATS_DATAGRAM`: `encode` cuts a datagram there.
const MAX_STATS_DATAGRAM: usize = 1024;

/// Seconds as `encode` writes them (`{:.6}`) and `parse` reads them back.
fn as_written(seconds: f64) -> f64 {
    let seconds = if seconds.is_finite() && seconds > 0.0 {
        seconds
    } else {
        0.0
    };
    format!("{seconds:.6}")
        .parse()
        .expect("a formatted float parses")
}

/// The event as its datagram says it.
fn written(event: &Event) -> Event {
    let mut event = event.clone();
    match &mut event {
        Event::BackendLogin { seconds, .. }
        | Event::SessionEnd { seconds, .. }
        | Event::Token { seconds, .. } => *seconds = as_written(*seconds),
        _ => {}
    }
    event
}

fuzz_target!(|data: &[u8]| {
    let mut aggregate = Aggregate::new(1_700_000_000.5);
    for datagram in data.split(|&b| b == 0).take(64) {
        if let Ok(event) = Event::parse(datagram) {
            let encoded = event.encode();
            // A datagram that needed all its room may come back longer (a
            // duration "1" is written "1.000000") and be cut: only whole
            // ones must round-trip.
            if encoded.len() < MAX_STATS_DATAGRAM {
                assert_eq!(
                    Event::parse(&encoded),
                    Ok(written(&event)),
                    "{}",
                    String::from_utf8_lossy(&encoded)
                );
            }
        }
        aggregate.record_datagram(datagram);
    }
    let page = aggregate.render();
    assert!(page.is_ascii() && page.ends_with('\n'));
    for line in page.lines() {
        assert!(
            line.starts_with("# HELP ") || line.starts_with("# TYPE ") || line.contains("} ")
                || line.split(' ').count() == 2,
            "{line}"
        );
    }
});
