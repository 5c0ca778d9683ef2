//! The PROXY protocol (HAProxy's proxy-protocol.txt, versions 1 and 2): a
//! load balancer in front of us sends one header before the first client
//! byte, naming the client it relays. A header is accepted only from the
//! sources in `proxy_protocol_from`, and required from them (the spec: a
//! receiver must not guess whether a header is there); from anyone else it
//! is refused, so a client cannot choose its own address. The decisions
//! (is this source trusted, what do these bytes say, do these first bytes
//! start a header) are pure functions; `accept` and `Duplex`'s check of the
//! first bytes do the reading. The header format itself is the `ppp`
//! crate's to parse; the TLVs of a v2 header are `tlv`'s.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use ppp::{PartialResult, v1, v2};

use super::tlv::{self, TlvError};
use super::{ClientConn, ClientStream, canonical_peer};
use crate::limits::{MAX_PROXY_HEADER, PROXY_HEADER_TIMEOUT};
use crate::logging::printable;
use crate::timeout::is_timeout;

/// How every v1 header starts.
const V1_PREFIX: &[u8] = b"PROXY ";
/// The longest v1 header, CRLF included (the spec's 107 bytes).
const V1_MAX: usize = 107;
/// How every v2 header starts (12 bytes, chosen never to start a text
/// protocol's line).
const V2_SIGNATURE: &[u8] = v2::PROTOCOL_PREFIX;
/// A v2 header's fixed part: the signature, version and command, family
/// and protocol, and the length of the rest.
const V2_FIXED: usize = 16;

/// Whether connections from `peer` must start with a header. An
/// IPv4-mapped peer counts as its IPv4 address (see `canonical_peer`); the
/// networks come canonical from the configuration.
pub fn is_trusted(peer: SocketAddr, trusted: &[IpNet]) -> bool {
    let ip = peer.ip().to_canonical();
    trusted.iter().any(|net| net.contains(&ip))
}

/// An address or network as written in `proxy_protocol_from`: a bare
/// address is that one host; an IPv4-mapped IPv6 address or network is
/// the IPv4 one, as peers are matched by their IPv4 address.
pub fn parse_network(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    let net = match text.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => match text.parse::<IpAddr>() {
            Ok(ip) => IpNet::from(ip),
            Err(_) => return Err(why_not_a_network(text)),
        },
    };
    Ok(canonical_network(net).trunc())
}

fn canonical_network(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).map_or(net, IpNet::V4),
            None => net,
        },
        _ => net,
    }
}

/// ipnet says only "invalid IP address syntax": say what would be right.
fn why_not_a_network(text: &str) -> String {
    let hint = match text.split_once('/') {
        Some((addr, len)) if addr.parse::<IpAddr>().is_ok() => {
            let max = if addr.contains(':') { 128 } else { 32 };
            format!("{len:?} is not a prefix length 0-{max}")
        }
        _ => "an address such as 10.0.0.5 or a network such as 10.0.0.0/8 or fd00::/8".into(),
    };
    format!("{text:?} is not an address or network ({hint})")
}

/// Whom a connection is for, by its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The client the balancer relays (v1 TCP4/TCP6, v2 PROXY over IPv4
    /// or IPv6), canonical as a peer is.
    Client(SocketAddr),
    /// Relayed, but the header does not say from where (v1 `UNKNOWN`, v2
    /// PROXY with AF_UNSPEC or AF_UNIX): the spec says to go on with the
    /// real connection's addresses.
    Unknown,
    /// v2 `LOCAL`: the balancer's own connection, a health check.
    Local,
}

/// The client's TLS, ended by the balancer that relays it (a v2 header's
/// PP2_TYPE_SSL with PP2_CLIENT_SSL set, as HAProxy's `send-proxy-v2-ssl`
/// sends it): a fact for the session, which decides what it allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BalancerTls {
    /// As the balancer names it (`TLSv1`, `TLSv1.2`): printable US-ASCII,
    /// one word, short (see `tlv`). Absent if the balancer did not say.
    pub version: Option<String>,
}

/// What a PROXY protocol header said, once one was accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proxied {
    /// The real peer: the balancer that sent the header.
    pub balancer: SocketAddr,
    /// 1 or 2.
    pub version: u8,
    pub source: Source,
    pub tls: Option<BalancerTls>,
}

impl fmt::Display for Proxied {
    /// The debug line at the start of a connection.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (b, v) = (self.balancer, self.version);
        let tls = match &self.tls {
            Some(BalancerTls {
                version: Some(name),
            }) => format!(", {name} ended by the balancer"),
            Some(BalancerTls { version: None }) => {
                ", TLS ended by the balancer, version not given".to_string()
            }
            None => String::new(),
        };
        match self.source {
            Source::Client(c) => {
                write!(f, "connection from {c} via balancer {b} (PROXY v{v}{tls})")
            }
            Source::Unknown => write!(
                f,
                "connection via balancer {b} (PROXY v{v}{tls}, client address not given: the \
                 balancer's is used, and not as a loopback client)"
            ),
            Source::Local => write!(f, "health check from balancer {b} (PROXY v{v} LOCAL)"),
        }
    }
}

/// A complete header at the start of the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub version: u8,
    pub source: Source,
    pub tls: Option<BalancerTls>,
    /// Its length: the bytes after it are the client's.
    pub len: usize,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Could still become a header with more bytes.
    Incomplete,
    Header(Header),
    /// What is wrong, for the log line.
    Malformed(String),
}

/// What the first bytes of a connection from a trusted source say.
pub fn parse(bytes: &[u8]) -> Parsed {
    match start(bytes) {
        Start::Undecided => Parsed::Incomplete,
        Start::Other => Parsed::Malformed(format!(
            "the connection starts with \"{}\", not with a header",
            printable(&bytes[..bytes.len().min(32)])
        )),
        Start::Header if bytes.starts_with(V2_SIGNATURE) => parse_v2(bytes),
        Start::Header => parse_v1(bytes),
    }
}

/// A v1 header is one line: it is parsed once the line is there. (ppp's
/// guess at whether a shorter piece may still become a header is not
/// exact: a piece that ends right after the source port's space looks
/// malformed to it.)
fn parse_v1(bytes: &[u8]) -> Parsed {
    if !bytes.contains(&b'\n') && bytes.len() < V1_MAX {
        return Parsed::Incomplete;
    }
    match v1::Header::try_from(bytes) {
        Ok(h) => {
            let source = match h.addresses {
                v1::Addresses::Tcp4(a) => {
                    Source::Client(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                v1::Addresses::Tcp6(a) => {
                    Source::Client(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                v1::Addresses::Unknown => Source::Unknown,
            };
            header(1, source, None, h.header.len())
        }
        // The whole line is there: what ppp calls incomplete is broken.
        Err(e) => Parsed::Malformed(format!("bad PROXY v1 header ({})", sentence(&e))),
    }
}

fn parse_v2(bytes: &[u8]) -> Parsed {
    match v2::Header::try_from(bytes) {
        Ok(h) => {
            let source = match (h.command, h.addresses) {
                (v2::Command::Local, _) => Source::Local,
                // A POP3 session relayed over UDP is a balancer set up wrong.
                (v2::Command::Proxy, _) if h.protocol == v2::Protocol::Datagram => {
                    return Parsed::Malformed(
                        "bad PROXY v2 header (it relays a datagram (UDP) connection, not TCP)"
                            .into(),
                    );
                }
                (v2::Command::Proxy, v2::Addresses::IPv4(a)) => {
                    Source::Client(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                (v2::Command::Proxy, v2::Addresses::IPv6(a)) => {
                    Source::Client(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                (v2::Command::Proxy, v2::Addresses::Unspecified | v2::Addresses::Unix(_)) => {
                    Source::Unknown
                }
            };
            // LOCAL: the specification says to discard the whole block,
            // TLVs included.
            let tls = match h.command {
                v2::Command::Local => None,
                v2::Command::Proxy => match balancer_tls(&h) {
                    Ok(tls) => tls,
                    Err(e) => return Parsed::Malformed(format!("bad PROXY v2 header ({e})")),
                },
            };
            header(2, source, tls, h.len())
        }
        // Refused before waiting for bytes we would not take anyway.
        Err(v2::ParseError::Partial(_, announced)) if V2_FIXED + announced > MAX_PROXY_HEADER => {
            Parsed::Malformed(format!(
                "PROXY v2 header of {} bytes, more than the {MAX_PROXY_HEADER} accepted",
                V2_FIXED + announced
            ))
        }
        Err(e) if e.is_incomplete() => Parsed::Incomplete,
        Err(e) => Parsed::Malformed(format!("bad PROXY v2 header ({})", sentence(&e))),
    }
}

/// The client's TLS as the header's PP2_TYPE_SSL tells it, if the client
/// spoke TLS to the balancer; a TLV with PP2_CLIENT_SSL unset (HAProxy's
/// `send-proxy-v2-ssl` for a plaintext client) or none at all says nothing.
fn balancer_tls(h: &v2::Header) -> Result<Option<BalancerTls>, TlvError> {
    // ppp counts everything behind an AF_UNSPEC header as its addresses;
    // the specification gives AF_UNSPEC none, so the TLVs start at once.
    let addresses = h.address_family().byte_length().unwrap_or(0);
    let tlvs = h.as_bytes().get(V2_FIXED + addresses..).unwrap_or_default();
    let ssl = tlv::parse(tlvs)?.ssl.filter(|ssl| ssl.client_ssl());
    Ok(ssl.map(|ssl| BalancerTls {
        version: ssl.version,
    }))
}

fn header(version: u8, source: Source, tls: Option<BalancerTls>, len: usize) -> Parsed {
    let source = match source {
        Source::Client(addr) => Source::Client(canonical_peer(addr)),
        other => other,
    };
    Parsed::Header(Header {
        version,
        source,
        tls,
        len,
    })
}

/// ppp's messages are sentences; ours go inside a line.
fn sentence(e: &dyn std::error::Error) -> String {
    let text = e.to_string();
    let text = text.trim_end_matches('.');
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Whether the first bytes of a connection (or the first after an
/// accepted header) start a PROXY header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    Header,
    /// Not a header: the client's own bytes (a command, a ClientHello).
    Other,
    /// A beginning of one of the two signatures: more bytes decide.
    Undecided,
}

pub fn start(first: &[u8]) -> Start {
    let matches = |signature: &[u8]| {
        let n = first.len().min(signature.len());
        first[..n] == signature[..n]
    };
    if first.starts_with(V1_PREFIX) || first.starts_with(V2_SIGNATURE) {
        Start::Header
    } else if matches(V1_PREFIX) || matches(V2_SIGNATURE) {
        Start::Undecided
    } else {
        Start::Other
    }
}

/// A PROXY header where none may be: from a source that
/// `proxy_protocol_from` does not list, or a second one behind an accepted
/// header (which the balancer relayed from its client). What the client
/// stream's read (or TLS handshake) that found it fails with, as
/// `ClientError::UnexpectedHeader`.
#[derive(Debug)]
pub struct UnexpectedHeader {
    /// The real peer; the relayed client after an accepted header.
    pub peer: Option<SocketAddr>,
    /// The balancer, after an accepted header.
    pub via: Option<SocketAddr>,
}

impl fmt::Display for UnexpectedHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.peer, self.via) {
            (Some(p), None) => write!(
                f,
                "PROXY protocol header from {p}, which proxy_protocol_from does not list: \
                 connection closed"
            ),
            (Some(p), Some(b)) => write!(
                f,
                "a second PROXY protocol header, from {p} via balancer {b} (the client's own?): \
                 connection closed"
            ),
            (None, _) => write!(
                f,
                "PROXY protocol header from a peer whose address is unknown (not a socket, \
                 or gone already), which proxy_protocol_from cannot list: connection closed"
            ),
        }
    }
}

impl std::error::Error for UnexpectedHeader {}

/// Why a connection from a trusted source ended at its header.
#[derive(Debug)]
pub struct HeaderError {
    /// The real peer (the balancer, or whoever connected from its network).
    pub peer: SocketAddr,
    pub problem: Problem,
}

#[derive(Debug)]
pub enum Problem {
    /// Nothing that completes a header within this time.
    Missing(Duration),
    /// The peer closed after this many bytes.
    Closed(usize),
    Malformed(String),
    Read(io::Error),
}

impl HeaderError {
    /// A connect-and-close without a byte is how a TCP health check looks:
    /// no reason to warn at every one.
    pub fn level(&self) -> log::Level {
        match self.problem {
            Problem::Closed(0) => log::Level::Debug,
            _ => log::Level::Warn,
        }
    }
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let peer = self.peer;
        match &self.problem {
            Problem::Missing(wait) => write!(
                f,
                "no PROXY protocol header from {peer} (listed in proxy_protocol_from) within {} s: \
                 connection closed",
                wait.as_secs_f64()
            ),
            Problem::Closed(0) => write!(
                f,
                "{peer} (listed in proxy_protocol_from) closed the connection without a byte \
                 (a TCP health check?)"
            ),
            Problem::Closed(n) => write!(
                f,
                "{peer} (listed in proxy_protocol_from) closed the connection after {n} bytes of \
                 an incomplete PROXY protocol header"
            ),
            Problem::Malformed(why) => write!(
                f,
                "PROXY protocol from {peer} (listed in proxy_protocol_from): {why}: \
                 connection closed"
            ),
            Problem::Read(e) => write!(
                f,
                "reading the PROXY protocol header from {peer} failed: {e}"
            ),
        }
    }
}

impl std::error::Error for HeaderError {}

/// Reads the header a trusted source must send before anything else, and
/// makes the client it names the connection's peer. Bytes read past the
/// header (a client's ClientHello in the same segment) stay for the
/// session. Other sources are left as they are. Must run before the
/// first byte is read for the session, and not as root.
pub fn accept(conn: &mut ClientConn, trusted: &[IpNet], idle: Duration) -> Result<(), HeaderError> {
    let Some(peer) = conn.peer else {
        return Ok(());
    };
    if !is_trusted(peer, trusted) {
        return Ok(());
    }
    let ClientStream::Plain(duplex) = &mut conn.stream else {
        // Only a fresh connection is ever handed here.
        return Ok(());
    };
    let wait = PROXY_HEADER_TIMEOUT.min(idle);
    let deadline = Instant::now() + wait;
    let fail = |problem| HeaderError { peer, problem };
    let mut buf = vec![0u8; MAX_PROXY_HEADER];
    let mut filled = 0;
    let header = loop {
        match parse(&buf[..filled]) {
            Parsed::Header(h) => break h,
            Parsed::Malformed(why) => return Err(fail(Problem::Malformed(why))),
            // A v1 header is refused by ppp past 107 bytes, and a v2 header
            // that announces more than fits is refused by `parse`.
            Parsed::Incomplete if filled == buf.len() => {
                return Err(fail(Problem::Malformed(format!(
                    "PROXY protocol header longer than {MAX_PROXY_HEADER} bytes"
                ))));
            }
            Parsed::Incomplete => {}
        }
        duplex.deadline = Some(deadline);
        match duplex.read_unchecked(&mut buf[filled..]) {
            Ok(0) => return Err(fail(Problem::Closed(filled))),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => return Err(fail(Problem::Missing(wait))),
            Err(e) => return Err(fail(Problem::Read(e))),
        }
    };
    // The session sets its own deadline before each read.
    duplex.deadline = None;
    duplex.unread(&buf[header.len..filled]);
    if let Source::Client(client) = header.source {
        conn.peer = Some(client);
    }
    // What follows the header is checked like the start of any
    // connection: a second header is the client's, not the balancer's.
    duplex.first_bytes = Some(super::FirstBytes::new(conn.peer, Some(peer)));
    conn.proxied = Some(Proxied {
        balancer: peer,
        version: header.version,
        source: header.source,
        tls: header.tls,
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::ClientError;
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter()
            .map(|n| parse_network(n).expect("network"))
            .collect()
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("socket address")
    }

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&u16::try_from(body.len()).expect("short").to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    fn v2_tcp4(src: [u8; 4], port: u16) -> Vec<u8> {
        let mut body = src.to_vec();
        body.extend_from_slice(&[127, 0, 0, 1]);
        body.extend_from_slice(&port.to_be_bytes());
        body.extend_from_slice(&110u16.to_be_bytes());
        v2(1, 0x11, &body)
    }

    #[test]
    fn only_listed_sources_are_trusted_and_mapped_peers_count_as_ipv4() {
        let trusted = nets(&["127.0.0.2/32", "10.0.0.0/8", "::1", "::ffff:192.0.2.0/120"]);
        assert!(is_trusted(addr("127.0.0.2:4000"), &trusted));
        assert!(is_trusted(addr("[::ffff:127.0.0.2]:4000"), &trusted));
        assert!(is_trusted(addr("10.200.0.1:1"), &trusted));
        assert!(is_trusted(addr("[::1]:1"), &trusted));
        // The mapped network in the list is the IPv4 one.
        assert!(is_trusted(addr("192.0.2.9:1"), &trusted));
        assert!(!is_trusted(addr("127.0.0.1:4000"), &trusted));
        assert!(!is_trusted(addr("[::2]:1"), &trusted));
        assert!(!is_trusted(addr("127.0.0.2:1"), &[]));
    }

    #[test]
    fn networks_are_addresses_or_cidrs_and_bad_ones_say_why() {
        assert_eq!(
            parse_network("10.1.2.3").expect("host").to_string(),
            "10.1.2.3/32"
        );
        assert_eq!(parse_network("::1").expect("host").to_string(), "::1/128");
        assert_eq!(
            parse_network("10.1.2.3/8").expect("net").to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            parse_network("::ffff:127.0.0.1")
                .expect("mapped")
                .to_string(),
            "127.0.0.1/32"
        );
        assert_eq!(
            parse_network("10.0.0.0/33").expect_err("prefix"),
            "\"10.0.0.0/33\" is not an address or network (\"33\" is not a prefix length 0-32)"
        );
        assert!(
            parse_network("balancer.example")
                .expect_err("name")
                .contains("such as 10.0.0.5")
        );
    }

    #[test]
    fn v1_tcp4_tcp6_and_unknown() {
        let h = b"PROXY TCP4 192.0.2.7 127.0.0.1 51234 110\r\nUSER x\r\n";
        assert_eq!(
            parse(h),
            Parsed::Header(Header {
                version: 1,
                source: Source::Client(addr("192.0.2.7:51234")),
                tls: None,
                len: 42,
            })
        );
        let h = b"PROXY TCP6 2001:db8::7 ::1 4711 995\r\n";
        assert_eq!(
            parse(h),
            Parsed::Header(Header {
                version: 1,
                source: Source::Client(addr("[2001:db8::7]:4711")),
                tls: None,
                len: h.len(),
            })
        );
        // An IPv4-mapped client counts as its IPv4 address, as a peer does.
        let h = b"PROXY TCP6 ::ffff:192.0.2.7 ::1 4711 995\r\n";
        let Parsed::Header(Header { source, .. }) = parse(h) else {
            panic!("mapped")
        };
        assert_eq!(source, Source::Client(addr("192.0.2.7:4711")));
        for h in [
            &b"PROXY UNKNOWN\r\n"[..],
            b"PROXY UNKNOWN ff::1 ::1 1 2\r\n",
        ] {
            assert_eq!(
                parse(h),
                Parsed::Header(Header {
                    version: 1,
                    source: Source::Unknown,
                    tls: None,
                    len: h.len(),
                })
            );
        }
    }

    #[test]
    fn v2_proxy_over_ipv4_ipv6_and_local() {
        let mut h = v2_tcp4([192, 0, 2, 7], 51234);
        let len = h.len();
        h.extend_from_slice(b"\x16\x03\x01"); // a ClientHello behind it
        assert_eq!(
            parse(&h),
            Parsed::Header(Header {
                version: 2,
                source: Source::Client(addr("192.0.2.7:51234")),
                tls: None,
                len,
            })
        );
        let mut body = "::ffff:192.0.2.8"
            .parse::<std::net::Ipv6Addr>()
            .expect("v6")
            .octets()
            .to_vec();
        body.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
        body.extend_from_slice(&[0x12, 0x34, 0, 110]);
        let h = v2(1, 0x21, &body);
        assert_eq!(
            parse(&h),
            Parsed::Header(Header {
                version: 2,
                source: Source::Client(addr("192.0.2.8:4660")),
                tls: None,
                len: h.len(),
            })
        );
        // LOCAL, with or without addresses, and with a TLV (ppp's NOOP).
        for h in [
            v2(0, 0x00, &[]),
            v2(0, 0x11, &[0; 12]),
            v2(0, 0x00, &[4, 0, 1, 0]),
        ] {
            let len = h.len();
            assert_eq!(
                parse(&h),
                Parsed::Header(Header {
                    version: 2,
                    source: Source::Local,
                    tls: None,
                    len,
                })
            );
        }
        // PROXY without an address we can use.
        let h = v2(1, 0x00, &[]);
        assert_eq!(
            parse(&h),
            Parsed::Header(Header {
                version: 2,
                source: Source::Unknown,
                tls: None,
                len: 16
            })
        );
    }

    #[test]
    fn incomplete_headers_wait_for_more() {
        let v1 = b"PROXY TCP4 192.0.2.7 127.0.0.1 51234 110\r\n";
        let v2 = v2_tcp4([192, 0, 2, 7], 1);
        for whole in [&v1[..], &v2[..]] {
            for n in 0..whole.len() {
                assert_eq!(parse(&whole[..n]), Parsed::Incomplete, "{n} bytes");
            }
        }
    }

    #[test]
    fn malformed_headers_say_what_is_wrong() {
        let cases: [(&[u8], &str); 6] = [
            (
                b"USER alice\r\n",
                "starts with \"USER alice\\r\\n\", not with a header",
            ),
            (b"\x16\x03\x01\x02\x00", "starts with \"\\u{16}"),
            (
                b"PROXY TCP5 a b 1 2\r\n",
                "bad PROXY v1 header (header has an invalid protocol)",
            ),
            (
                b"PROXY TCP4 300.0.0.1 127.0.0.1 1 2\r\n",
                "bad PROXY v1 header (header contains invalid IP address",
            ),
            (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2\n", "bad PROXY v1 header"),
            (
                b"\r\n\r\n\x00\r\nQUIT\n\x31\x11\x00\x00",
                "bad PROXY v2 header (expected version",
            ),
        ];
        for (bytes, expected) in cases {
            match parse(bytes) {
                Parsed::Malformed(why) => assert!(why.contains(expected), "{why}"),
                other => panic!("{bytes:?}: {other:?}"),
            }
        }
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat();
        assert!(matches!(parse(&long), Parsed::Malformed(_)));
        // A v2 header announcing more than we take is refused at once.
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        match parse(&huge) {
            Parsed::Malformed(why) => assert!(why.contains("65551 bytes"), "{why}"),
            other => panic!("{other:?}"),
        }
        // UDP relayed to a POP3 server is a balancer set up wrong.
        let mut udp = v2_tcp4([192, 0, 2, 7], 1);
        udp[13] = 0x12;
        assert!(matches!(parse(&udp), Parsed::Malformed(w) if w.contains("datagram")));
    }

    /// The TLV part of HAProxy's `send-proxy-v2-ssl` header: PP2_TYPE_SSL
    /// with these `client` bits and, if given, the version.
    fn ssl_tlv(client: u8, version: Option<&[u8]>) -> Vec<u8> {
        let mut value = vec![client, 0, 0, 0, 0];
        if let Some(name) = version {
            value.push(0x21);
            value.extend_from_slice(&u16::try_from(name.len()).expect("short").to_be_bytes());
            value.extend_from_slice(name);
        }
        let mut tlv = vec![0x20];
        tlv.extend_from_slice(&u16::try_from(value.len()).expect("short").to_be_bytes());
        tlv.extend_from_slice(&value);
        tlv
    }

    fn v2_tcp4_with(src: [u8; 4], port: u16, tlvs: &[u8]) -> Vec<u8> {
        let mut body = v2_tcp4(src, port)[16..].to_vec();
        body.extend_from_slice(tlvs);
        v2(1, 0x11, &body)
    }

    fn tls(version: &str) -> Option<BalancerTls> {
        Some(BalancerTls {
            version: Some(version.into()),
        })
    }

    #[test]
    fn the_ssl_tlv_with_the_ssl_bit_is_the_balancers_tls() {
        // What HAProxy 2.6 sent for a TLS 1.0 client (its port aside).
        let wire = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x1c\x7f\0\0\x01\x7f\0\0\x01\xdd\x5a\
                     \xbb\x7b\x20\x00\x0d\x01\0\0\0\0\x21\x00\x05TLSv1USER";
        assert_eq!(
            parse(wire),
            Parsed::Header(Header {
                version: 2,
                source: Source::Client(addr("127.0.0.1:56666")),
                tls: tls("TLSv1"),
                len: wire.len() - 4,
            })
        );
        let tlvs = [
            &[4, 0, 2, 0, 0][..],
            &ssl_tlv(1, Some(b"TLSv1.2")),
            b"\xe0\x00\x01x",
        ]
        .concat();
        let h = v2_tcp4_with([192, 0, 2, 7], 1, &tlvs);
        let Parsed::Header(header) = parse(&h) else {
            panic!("{:?}", parse(&h))
        };
        assert_eq!((header.tls, header.len), (tls("TLSv1.2"), h.len()));
        // The TLV without a version still tells TLS.
        let h = v2_tcp4_with([192, 0, 2, 7], 1, &ssl_tlv(1, None));
        assert!(matches!(
            parse(&h),
            Parsed::Header(Header {
                tls: Some(BalancerTls { version: None }),
                ..
            })
        ));
        // A plaintext client of send-proxy-v2-ssl (the bit unset), TLVs
        // of other kinds, or none: nothing about TLS.
        for tlvs in [
            ssl_tlv(0, None),
            ssl_tlv(4, Some(b"TLSv1")),
            vec![4, 0, 1, 0],
            vec![],
        ] {
            let h = v2_tcp4_with([192, 0, 2, 7], 1, &tlvs);
            assert!(
                matches!(parse(&h), Parsed::Header(Header { tls: None, .. })),
                "{tlvs:?}"
            );
        }
        // AF_UNSPEC has no addresses: its TLVs start at once.
        let h = v2(1, 0x00, &ssl_tlv(1, Some(b"TLSv1.1")));
        assert_eq!(
            parse(&h),
            Parsed::Header(Header {
                version: 2,
                source: Source::Unknown,
                tls: tls("TLSv1.1"),
                len: h.len(),
            })
        );
        // LOCAL: the block is discarded, TLVs and all.
        let h = v2(0, 0x11, &[[0; 12].as_slice(), b"\x20\xff\xff"].concat());
        assert!(matches!(
            parse(&h),
            Parsed::Header(Header {
                source: Source::Local,
                tls: None,
                ..
            })
        ));
        // A header with TLVs waits for all of them.
        let h = v2_tcp4_with([192, 0, 2, 7], 1, &ssl_tlv(1, Some(b"TLSv1")));
        for n in 0..h.len() {
            assert_eq!(parse(&h[..n]), Parsed::Incomplete, "{n} bytes");
        }
    }

    #[test]
    fn malformed_tlvs_refuse_the_header() {
        let cases: [(Vec<u8>, &str); 4] = [
            (
                ssl_tlv(1, Some(b"TLSv1"))[..10].to_vec(),
                "bad PROXY v2 header (TLV PP2_TYPE_SSL of 13 bytes, but only 7 are left in the \
                 header)",
            ),
            (
                vec![0x20, 0, 3, 1, 0, 0],
                "less than the 5 of its client and verify fields",
            ),
            (
                [ssl_tlv(1, None), ssl_tlv(1, None)].concat(),
                "bad PROXY v2 header (TLV PP2_TYPE_SSL twice)",
            ),
            (
                ssl_tlv(1, Some(b"TLSv1\x1b[2J")),
                "bad PROXY v2 header (TLS version \"TLSv1\\u{1b}[2J\" in \
                 PP2_SUBTYPE_SSL_VERSION is not",
            ),
        ];
        for (tlvs, expected) in cases {
            match parse(&v2_tcp4_with([192, 0, 2, 7], 1, &tlvs)) {
                Parsed::Malformed(why) => assert!(why.contains(expected), "{why}"),
                other => panic!("{tlvs:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_debug_line_tells_the_balancers_tls() {
        let p = Proxied {
            balancer: addr("127.0.0.2:40000"),
            version: 2,
            source: Source::Client(addr("192.0.2.7:4711")),
            tls: tls("TLSv1"),
        };
        assert_eq!(
            p.to_string(),
            "connection from 192.0.2.7:4711 via balancer 127.0.0.2:40000 (PROXY v2, TLSv1 \
             ended by the balancer)"
        );
        let p = Proxied {
            tls: Some(BalancerTls { version: None }),
            ..p
        };
        assert!(
            p.to_string()
                .ends_with("(PROXY v2, TLS ended by the balancer, version not given)")
        );
    }

    #[test]
    fn first_bytes_tell_a_header_from_a_client() {
        assert_eq!(start(b"PROXY TCP4 1.2.3.4"), Start::Header);
        assert_eq!(start(b"PROXY "), Start::Header);
        assert_eq!(start(&v2_tcp4([1, 2, 3, 4], 5)), Start::Header);
        assert_eq!(start(V2_SIGNATURE), Start::Header);
        for undecided in [
            &b""[..],
            b"P",
            b"PROXY",
            b"\r",
            b"\r\n",
            b"\r\n\r\n\0\r\nQUI",
        ] {
            assert_eq!(start(undecided), Start::Undecided, "{undecided:?}");
        }
        for other in [
            &b"USER x\r\n"[..],
            b"\x16\x03\x01",
            b"PROXYX",
            b"\r\nUSER",
            b"CAPA\r\n",
        ] {
            assert_eq!(start(other), Start::Other, "{other:?}");
        }
    }

    #[test]
    fn log_lines_name_the_real_peer() {
        let e = HeaderError {
            peer: addr("127.0.0.2:4000"),
            problem: Problem::Missing(Duration::from_secs(5)),
        };
        assert_eq!(
            e.to_string(),
            "no PROXY protocol header from 127.0.0.2:4000 (listed in proxy_protocol_from) \
             within 5 s: connection closed"
        );
        assert_eq!(e.level(), log::Level::Warn);
        let e = HeaderError {
            peer: addr("127.0.0.2:4000"),
            problem: Problem::Closed(0),
        };
        assert_eq!(e.level(), log::Level::Debug);
        let e = UnexpectedHeader {
            peer: Some(addr("127.0.0.1:4000")),
            via: None,
        };
        assert_eq!(
            e.to_string(),
            "PROXY protocol header from 127.0.0.1:4000, which proxy_protocol_from does not \
             list: connection closed"
        );
    }

    /// A client socket that delivers these pieces, one per read, and then
    /// times out (a peer that waits) or ends.
    struct Pieces {
        pieces: std::collections::VecDeque<Vec<u8>>,
        then_eof: bool,
    }

    impl io::Read for Pieces {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let Some(mut piece) = self.pieces.pop_front() else {
                return if self.then_eof {
                    Ok(0)
                } else {
                    Err(io::ErrorKind::WouldBlock.into())
                };
            };
            let n = piece.len().min(buf.len());
            buf[..n].copy_from_slice(&piece[..n]);
            if n < piece.len() {
                self.pieces.push_front(piece.split_off(n));
            }
            Ok(n)
        }
    }

    impl super::super::ClientRead for Pieces {
        fn set_read_timeout(&self, _: Duration) -> io::Result<()> {
            Ok(())
        }
    }

    fn conn(peer: &str, pieces: &[&[u8]], then_eof: bool) -> ClientConn {
        let reader = Pieces {
            pieces: pieces.iter().map(|p| p.to_vec()).collect(),
            then_eof,
        };
        ClientConn::new(Box::new(reader), Box::new(io::sink()), Some(addr(peer)))
    }

    /// Everything the session would read, up to the end or an error.
    fn session_reads(conn: &mut ClientConn) -> Result<Vec<u8>, ClientError> {
        let mut all = Vec::new();
        let mut buf = [0u8; 7];
        loop {
            match conn.stream.read(&mut buf) {
                Ok(0) => return Ok(all),
                Ok(n) => all.extend_from_slice(&buf[..n]),
                Err(ClientError::Io(e)) if is_timeout(&e) => return Ok(all),
                Err(e) => return Err(e),
            }
        }
    }

    /// The header a read was refused for.
    fn unexpected_header(e: &ClientError) -> Option<&UnexpectedHeader> {
        match e {
            ClientError::UnexpectedHeader(h) => Some(h),
            ClientError::Io(_) => None,
        }
    }

    const IDLE: Duration = Duration::from_secs(600);

    #[test]
    fn a_header_names_the_client_and_the_bytes_behind_it_stay() {
        let trusted = nets(&["127.0.0.2"]);
        let mut header = v2_tcp4([192, 0, 2, 7], 51234);
        header.extend_from_slice(b"\x16\x03\x01 a ClientHello");
        let mut c = conn("127.0.0.2:40000", &[&header], true);
        accept(&mut c, &trusted, IDLE).expect("header");
        assert_eq!(c.peer, Some(addr("192.0.2.7:51234")));
        assert_eq!(
            c.proxied,
            Some(Proxied {
                balancer: addr("127.0.0.2:40000"),
                version: 2,
                source: Source::Client(addr("192.0.2.7:51234")),
                tls: None,
            })
        );
        assert!(c.peer_is_client() && !c.is_health_check());
        assert_eq!(
            session_reads(&mut c).expect("reads"),
            b"\x16\x03\x01 a ClientHello"
        );
    }

    #[test]
    fn a_v1_header_in_pieces_of_any_size_is_read_whole() {
        let trusted = nets(&["127.0.0.0/8"]);
        let whole = b"PROXY TCP4 192.0.2.7 127.0.0.1 51234 110\r\nCAPA\r\n";
        for cut in 1..whole.len() {
            let (a, b) = whole.split_at(cut);
            let mut c = conn("[::ffff:127.0.0.2]:40000", &[a, b], true);
            accept(&mut c, &trusted, IDLE).expect("header");
            assert_eq!(c.peer, Some(addr("192.0.2.7:51234")), "cut at {cut}");
            assert_eq!(
                c.proxied.as_ref().map(|p| p.balancer),
                Some(addr("127.0.0.2:40000"))
            );
            assert_eq!(
                session_reads(&mut c).expect("reads"),
                b"CAPA\r\n",
                "cut at {cut}"
            );
        }
        let bytes: Vec<&[u8]> = whole.chunks(1).collect();
        let mut c = conn("127.0.0.2:40000", &bytes, true);
        accept(&mut c, &trusted, IDLE).expect("byte by byte");
        assert_eq!(session_reads(&mut c).expect("reads"), b"CAPA\r\n");
    }

    #[test]
    fn a_header_with_the_ssl_tlv_tells_the_connection_of_the_balancers_tls() {
        let trusted = nets(&["127.0.0.2"]);
        let header = v2_tcp4_with([192, 0, 2, 7], 51234, &ssl_tlv(1, Some(b"TLSv1")));
        let mut c = conn("127.0.0.2:40000", &[&header, b"CAPA\r\n"], true);
        accept(&mut c, &trusted, IDLE).expect("header");
        assert_eq!(c.balancer_tls(), tls("TLSv1").as_ref());
        assert_eq!(c.peer, Some(addr("192.0.2.7:51234")));
        assert_eq!(session_reads(&mut c).expect("reads"), b"CAPA\r\n");
        let header = v2_tcp4_with([192, 0, 2, 7], 51234, &ssl_tlv(0, None));
        let mut c = conn("127.0.0.2:40000", &[&header], true);
        accept(&mut c, &trusted, IDLE).expect("header");
        assert_eq!(c.balancer_tls(), None);
        // From a source not listed, the same header is refused, TLV and all.
        let header = v2_tcp4_with([192, 0, 2, 7], 51234, &ssl_tlv(1, Some(b"TLSv1")));
        let mut c = conn("127.0.0.1:40000", &[&header], true);
        accept(&mut c, &trusted, IDLE).expect("not read");
        assert!(session_reads(&mut c).is_err());
        assert_eq!(c.balancer_tls(), None);
        // A malformed TLV ends the connection as any malformed header does.
        let header = v2_tcp4_with([192, 0, 2, 7], 51234, b"\x20\x00\x01\x01");
        let mut c = conn("127.0.0.2:40000", &[&header], true);
        let e = accept(&mut c, &trusted, IDLE).expect_err("malformed");
        assert!(
            matches!(&e.problem, Problem::Malformed(w) if w.contains("PP2_TYPE_SSL")),
            "{e}"
        );
        assert_eq!(e.level(), log::Level::Warn);
    }

    #[test]
    fn unknown_keeps_the_real_peer_but_not_as_loopback_and_local_is_a_health_check() {
        let trusted = nets(&["127.0.0.2"]);
        let mut c = conn("127.0.0.2:40000", &[b"PROXY UNKNOWN\r\n"], true);
        accept(&mut c, &trusted, IDLE).expect("unknown");
        assert_eq!(c.peer, Some(addr("127.0.0.2:40000")));
        assert!(!c.peer_is_client() && !c.is_health_check());
        let mut c = conn("127.0.0.2:40000", &[&v2(0, 0, &[])], true);
        accept(&mut c, &trusted, IDLE).expect("local");
        assert_eq!(c.peer, Some(addr("127.0.0.2:40000")));
        assert!(c.is_health_check());
    }

    #[test]
    fn a_trusted_source_without_a_valid_header_is_refused() {
        let trusted = nets(&["127.0.0.2"]);
        // Silent: nothing within the (idle, if shorter) header timeout.
        let mut c = conn("127.0.0.2:40000", &[], false);
        let e = accept(&mut c, &trusted, Duration::from_secs(2)).expect_err("silent");
        assert!(matches!(e.problem, Problem::Missing(d) if d == Duration::from_secs(2)));
        assert!(e.to_string().contains("127.0.0.2:40000"), "{e}");
        // Half a header and gone.
        let mut c = conn("127.0.0.2:40000", &[b"PROXY TCP4 1.2"], true);
        let e = accept(&mut c, &trusted, IDLE).expect_err("cut");
        assert!(matches!(e.problem, Problem::Closed(14)), "{e}");
        // Connect and close: a TCP health check, logged quietly.
        let mut c = conn("127.0.0.2:40000", &[], true);
        let e = accept(&mut c, &trusted, IDLE).expect_err("closed");
        assert_eq!(e.level(), log::Level::Debug);
        let mut c = conn(
            "127.0.0.2:40000",
            &[b"PROXY TCP4 192.0.2.7 ::1 1 2\r\n"],
            true,
        );
        let e = accept(&mut c, &trusted, IDLE).expect_err("malformed");
        assert!(
            matches!(&e.problem, Problem::Malformed(w) if w.contains("v1")),
            "{e}"
        );
        assert_eq!(e.level(), log::Level::Warn);
    }

    #[test]
    fn a_header_from_an_unlisted_source_is_refused_at_the_first_read() {
        let header = b"PROXY TCP4 192.0.2.7 127.0.0.1 51234 110\r\n";
        for trusted in [nets(&[]), nets(&["127.0.0.2"])] {
            // accept leaves it alone; the session's first read refuses it,
            // in whatever pieces it comes.
            let mut c = conn("127.0.0.1:40000", &[b"PRO", b"XY", &header[5..]], true);
            accept(&mut c, &trusted, IDLE).expect("not trusted: not read");
            assert_eq!(c.peer, Some(addr("127.0.0.1:40000")));
            let e = session_reads(&mut c).expect_err("refused");
            let h = unexpected_header(&e).expect("typed");
            assert_eq!((h.peer, h.via), (Some(addr("127.0.0.1:40000")), None));
            let mut c = conn("127.0.0.1:40000", &[&v2_tcp4([1, 2, 3, 4], 5)], true);
            let e = session_reads(&mut c).expect_err("v2 refused");
            assert!(unexpected_header(&e).is_some());
        }
    }

    #[test]
    fn a_second_header_behind_an_accepted_one_is_refused() {
        let trusted = nets(&["127.0.0.2"]);
        let two =
            b"PROXY TCP4 192.0.2.7 127.0.0.1 1 110\r\nPROXY TCP4 10.0.0.1 127.0.0.1 1 110\r\n";
        let mut c = conn("127.0.0.2:40000", &[two], true);
        accept(&mut c, &trusted, IDLE).expect("first");
        let e = session_reads(&mut c).expect_err("second");
        let h = unexpected_header(&e).expect("typed");
        assert_eq!(
            (h.peer, h.via),
            (Some(addr("192.0.2.7:1")), Some(addr("127.0.0.2:40000")))
        );
    }

    #[test]
    fn client_bytes_that_only_begin_like_a_header_pass_whole() {
        let cases: [&[&[u8]]; 4] = [
            &[b"\r", b"\n", b"USER x\r\n"],
            &[b"PROX", b"Y\r\n"],
            &[b"\x16\x03\x01\x02\x00"],
            // What was held back is released at the end of the stream.
            &[b"\r\n\r\n"],
        ];
        for pieces in cases {
            let mut c = conn("127.0.0.1:40000", pieces, true);
            accept(&mut c, &[], IDLE).expect("untrusted");
            assert_eq!(session_reads(&mut c).expect("passes"), pieces.concat());
        }
    }
}
