//! Statistics for an operator: the events each short-lived session process
//! tells a long-lived aggregator ([`event`]: the format), sent as
//! datagrams that cost the session nothing when nobody listens. The
//! aggregator (`pop3server --stats`) counts them ([`aggregate`], pure) and
//! serves the counts to Prometheus ([`serve`]: the sockets, [`http`]: the
//! one request it answers).

pub mod aggregate;
pub mod emit;
pub mod event;
pub mod http;
pub mod serve;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;

/// `stats_socket`: beside the lock files, in the directory the packages
/// make for the service's user.
pub const DEFAULT_SOCKET: &str = "/run/pop3server/stats.sock";

/// `metrics_listen`: loopback, so nothing is exposed until an admin says
/// so. Port 11110 ("110" as in POP3): the exporters' range 9100-9999 is
/// all taken in Prometheus' list of default ports, and it is below Linux's
/// ephemeral ports (32768-60999), so no outgoing connection holds it.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 11110));

/// Where the aggregator listens (`stats_socket`, `metrics_listen`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The UNIX datagram socket the sessions send their events to.
    pub socket: PathBuf,
    /// The TCP address of the metrics page (`GET /metrics`).
    pub listen: SocketAddr,
}
