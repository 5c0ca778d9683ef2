//! Sends events to the aggregator: one datagram each on the UNIX datagram
//! socket `stats_socket`, non-blocking, fire and forget. A socket that is
//! missing, full, or nobody's costs the session one failed `sendto` and
//! nothing else: no error, no delay, no log line. The sink is set once per
//! process (like the logger), before the session starts, so the shell's
//! modules can tell it what happened without carrying a handle.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::event::Event;

struct Sink {
    socket: UnixDatagram,
    path: PathBuf,
}

static SINK: OnceLock<Sink> = OnceLock::new();

/// Sends this process's events to `path` from now on, if the aggregator's
/// socket is there now (when it is not, the process sends nothing: the
/// aggregator is not running). A second call changes nothing.
pub fn to(path: &Path) {
    if SINK.get().is_some() || !path.exists() {
        return;
    }
    // Unbound and unconnected: each event goes to the path as it is then,
    // so an aggregator restarted meanwhile gets the rest.
    let Ok(socket) = UnixDatagram::unbound() else {
        return;
    };
    if socket.set_nonblocking(true).is_err() {
        return;
    }
    let _ = SINK.set(Sink {
        socket,
        path: path.to_path_buf(),
    });
}

/// Sends `event`, if there is a sink; whatever happens, nothing is said.
pub fn send(event: &Event) {
    if let Some(sink) = SINK.get() {
        let _ = sink.socket.send_to(&event.encode(), &sink.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_arrive_as_datagrams_and_a_gone_aggregator_costs_nothing() {
        let dir = std::env::temp_dir().join(format!("p3stats-emit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("stats.sock");
        let aggregator = UnixDatagram::bind(&path).expect("bind");
        to(&path);
        send(&Event::SessionStart);
        let mut buf = [0u8; 2048];
        let n = aggregator.recv(&mut buf).expect("datagram");
        assert_eq!(Event::parse(&buf[..n]), Ok(Event::SessionStart));
        // The aggregator goes away: sending still returns at once.
        drop(aggregator);
        let _ = std::fs::remove_file(&path);
        send(&Event::SessionStart);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
