//! The TLVs of a PROXY v2 header (HAProxy's proxy-protocol.txt, section
//! 2.2): what a balancer adds behind the addresses. One of them is read:
//! PP2_TYPE_SSL, which says whether the client reached the balancer over
//! TLS (a balancer that ends old TLS on a LAN, see docs/old-tls-devices.md)
//! and with which version. Every TLV's framing is checked, nested ones
//! included, so a header that does not add up is refused whole; types we
//! have no use for are skipped, as the specification asks. Pure: bytes in,
//! facts out.
//!
//! PP2_TYPE_CRC32C is skipped unverified: the header comes over TCP from a
//! balancer we trust, so the checksum would catch only what TCP's already
//! does, and no CRC32C crate is in the tree.

use std::fmt;

use crate::limits::MAX_BALANCER_TLS_VERSION;
use crate::logging::printable;

/// The client's connection to the balancer, with the fields below.
const PP2_TYPE_SSL: u8 = 0x20;
/// Inside PP2_TYPE_SSL: the TLS version, US-ASCII (`TLSv1`, `TLSv1.2`).
const PP2_SUBTYPE_SSL_VERSION: u8 = 0x21;

/// The bit of PP2_TYPE_SSL's `client` field that says the client spoke TLS
/// to the balancer. (The others, PP2_CLIENT_CERT_CONN 0x02 and
/// PP2_CLIENT_CERT_SESS 0x04, tell of a client certificate, which no
/// decision here rests on.)
const PP2_CLIENT_SSL: u8 = 0x01;

/// One byte of type, two of length (big-endian).
const TLV_HEAD: usize = 3;
/// PP2_TYPE_SSL's fixed part: `client` (1 byte) and `verify` (4 bytes).
const SSL_FIXED: usize = 5;

/// What a header's TLVs say that we use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tlvs {
    pub ssl: Option<Ssl>,
}

/// PP2_TYPE_SSL: the client's connection to the balancer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ssl {
    /// The bits PP2_CLIENT_SSL, PP2_CLIENT_CERT_CONN, PP2_CLIENT_CERT_SESS.
    pub client: u8,
    /// 0 when the client's certificate was verified (or none was asked).
    pub verify: u32,
    /// PP2_SUBTYPE_SSL_VERSION, checked to be a name we may log.
    pub version: Option<String>,
}

impl Ssl {
    /// The client connected to the balancer over TLS. HAProxy sends the
    /// TLV with `send-proxy-v2-ssl` for every connection, with this bit
    /// unset for a plaintext one.
    pub fn client_ssl(&self) -> bool {
        self.client & PP2_CLIENT_SSL != 0
    }
}

/// What makes the TLVs of a header unacceptable, for the log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlvError {
    /// Fewer than the 3 bytes of a TLV's type and length are left (inside
    /// PP2_TYPE_SSL if `nested`).
    Cut { nested: bool, left: usize },
    /// A TLV announces more bytes than are left around it.
    TooLong { kind: Kind, len: usize, left: usize },
    /// PP2_TYPE_SSL without its `client` and `verify` fields.
    SslTooShort(usize),
    /// The same TLV twice: which one counts is anybody's guess.
    Twice(Kind),
    /// The version is not a short US-ASCII name (escaped for the log).
    BadVersion(String),
}

/// A TLV's type, and whether it sits inside PP2_TYPE_SSL (where the
/// numbers mean other things).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    pub code: u8,
    pub nested: bool,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match (self.nested, self.code) {
            (false, 0x01) => "PP2_TYPE_ALPN",
            (false, 0x02) => "PP2_TYPE_AUTHORITY",
            (false, 0x03) => "PP2_TYPE_CRC32C",
            (false, 0x04) => "PP2_TYPE_NOOP",
            (false, 0x05) => "PP2_TYPE_UNIQUE_ID",
            (false, PP2_TYPE_SSL) => "PP2_TYPE_SSL",
            (false, 0x30) => "PP2_TYPE_NETNS",
            (true, PP2_SUBTYPE_SSL_VERSION) => "PP2_SUBTYPE_SSL_VERSION",
            (true, 0x22) => "PP2_SUBTYPE_SSL_CN",
            (true, 0x23) => "PP2_SUBTYPE_SSL_CIPHER",
            (true, 0x24) => "PP2_SUBTYPE_SSL_SIG_ALG",
            (true, 0x25) => "PP2_SUBTYPE_SSL_KEY_ALG",
            (false, _) => return write!(f, "TLV 0x{:02x}", self.code),
            (true, _) => return write!(f, "TLV 0x{:02x} inside PP2_TYPE_SSL", self.code),
        };
        write!(f, "TLV {name}")
    }
}

impl fmt::Display for TlvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlvError::Cut { nested, left } => write!(
                f,
                "{left} bytes after the last TLV{}, less than a TLV's type and length",
                if *nested { " inside PP2_TYPE_SSL" } else { "" }
            ),
            TlvError::TooLong { kind, len, left } => write!(
                f,
                "{kind} of {len} bytes, but only {left} are left{}",
                if kind.nested {
                    " in PP2_TYPE_SSL"
                } else {
                    " in the header"
                }
            ),
            TlvError::SslTooShort(len) => write!(
                f,
                "TLV PP2_TYPE_SSL of {len} bytes, less than the {SSL_FIXED} of its client and \
                 verify fields"
            ),
            TlvError::Twice(kind) => write!(f, "{kind} twice"),
            TlvError::BadVersion(text) => write!(
                f,
                "TLS version \"{text}\" in PP2_SUBTYPE_SSL_VERSION is not a name of 1 to \
                 {MAX_BALANCER_TLS_VERSION} printable US-ASCII characters"
            ),
        }
    }
}

impl std::error::Error for TlvError {}

/// Reads the TLV part of a v2 header (what follows the addresses).
pub fn parse(bytes: &[u8]) -> Result<Tlvs, TlvError> {
    let mut tlvs = Tlvs::default();
    for tlv in Framed::new(bytes, false) {
        let (kind, value) = tlv?;
        if kind.code == PP2_TYPE_SSL {
            if tlvs.ssl.is_some() {
                return Err(TlvError::Twice(kind));
            }
            tlvs.ssl = Some(ssl(value)?);
        }
    }
    Ok(tlvs)
}

fn ssl(value: &[u8]) -> Result<Ssl, TlvError> {
    let (Some(&[client]), Some(verify), Some(nested)) = (
        value.get(..1),
        value.get(1..SSL_FIXED),
        value.get(SSL_FIXED..),
    ) else {
        return Err(TlvError::SslTooShort(value.len()));
    };
    let mut verify_bytes = [0u8; 4];
    verify_bytes.copy_from_slice(verify);
    let mut ssl = Ssl {
        client,
        verify: u32::from_be_bytes(verify_bytes),
        version: None,
    };
    for tlv in Framed::new(nested, true) {
        let (kind, value) = tlv?;
        if kind.code == PP2_SUBTYPE_SSL_VERSION {
            if ssl.version.is_some() {
                return Err(TlvError::Twice(kind));
            }
            ssl.version = Some(version_name(value)?);
        }
    }
    Ok(ssl)
}

/// The version goes into every session's log line as it was sent: it must
/// be a word of printable US-ASCII (as the specification says it is), not
/// bytes that could forge or break the line.
fn version_name(value: &[u8]) -> Result<String, TlvError> {
    let fits = (1..=MAX_BALANCER_TLS_VERSION).contains(&value.len())
        && value.iter().all(u8::is_ascii_graphic);
    match std::str::from_utf8(value) {
        Ok(name) if fits => Ok(name.to_string()),
        _ => Err(TlvError::BadVersion(printable(
            &value[..value.len().min(MAX_BALANCER_TLS_VERSION)],
        ))),
    }
}

/// The TLVs one after another in `bytes`, each bounded by what is left;
/// after the first error, nothing more.
struct Framed<'a> {
    bytes: &'a [u8],
    nested: bool,
}

impl<'a> Framed<'a> {
    fn new(bytes: &'a [u8], nested: bool) -> Self {
        Framed { bytes, nested }
    }
}

impl<'a> Iterator for Framed<'a> {
    type Item = Result<(Kind, &'a [u8]), TlvError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.bytes.is_empty() {
            return None;
        }
        let bytes = std::mem::take(&mut self.bytes);
        let Some(&[code, hi, lo]) = bytes.get(..TLV_HEAD) else {
            let (nested, left) = (self.nested, bytes.len());
            return Some(Err(TlvError::Cut { nested, left }));
        };
        let kind = Kind {
            code,
            nested: self.nested,
        };
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        let rest = &bytes[TLV_HEAD..];
        let (Some(value), Some(after)) = (rest.get(..len), rest.get(len..)) else {
            let left = rest.len();
            return Some(Err(TlvError::TooLong { kind, len, left }));
        };
        self.bytes = after;
        Some(Ok((kind, value)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PP2_CLIENT_CERT_CONN: u8 = 0x02;

    fn tlv(code: u8, value: &[u8]) -> Vec<u8> {
        let mut t = vec![code];
        t.extend_from_slice(&u16::try_from(value.len()).expect("short").to_be_bytes());
        t.extend_from_slice(value);
        t
    }

    /// PP2_TYPE_SSL with these `client` bits, `verify` and sub-TLVs.
    fn ssl_tlv(client: u8, verify: u32, nested: &[u8]) -> Vec<u8> {
        let mut value = vec![client];
        value.extend_from_slice(&verify.to_be_bytes());
        value.extend_from_slice(nested);
        tlv(PP2_TYPE_SSL, &value)
    }

    fn version(name: &[u8]) -> Vec<u8> {
        tlv(PP2_SUBTYPE_SSL_VERSION, name)
    }

    fn ssl_of(bytes: &[u8]) -> Ssl {
        parse(bytes).expect("valid").ssl.expect("an SSL TLV")
    }

    #[test]
    fn haproxy_send_proxy_v2_ssl_as_seen_on_the_wire() {
        // HAProxy 2.6, a TLS 1.0 client: the bytes behind the addresses.
        let bytes = b"\x20\x00\x0d\x01\x00\x00\x00\x00\x21\x00\x05TLSv1";
        let ssl = ssl_of(bytes);
        assert!(ssl.client_ssl());
        assert_eq!(ssl.client, PP2_CLIENT_SSL);
        assert_eq!((ssl.verify, ssl.version.as_deref()), (0, Some("TLSv1")));
        // The same for a plaintext client: the TLV, the bit unset.
        let ssl = ssl_of(&ssl_tlv(0, 0, &[]));
        assert!(!ssl.client_ssl());
        assert_eq!(ssl.version, None);
    }

    #[test]
    fn nested_fields_and_unknown_types_are_skipped_around_the_version() {
        let nested = [
            tlv(0x22, "Büro-Scanner".as_bytes()), // CN: UTF-8, not ours to check
            tlv(0x23, b"ECDHE-ECDSA-AES256-SHA"),
            version(b"TLSv1.2"),
            tlv(0x24, b"SHA256"),
            tlv(0x25, b"EC256"),
            tlv(0x7f, &[0xff; 3]),
            tlv(0x21 + 0x40, b""),
        ]
        .concat();
        let bytes = [
            tlv(0x04, &[0; 7]), // NOOP
            tlv(0x03, &[1, 2, 3, 4]),
            tlv(0x21, b"\xff top level, not a version"),
            ssl_tlv(PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN, 21, &nested),
            tlv(0xe0, b"custom"),
            tlv(0x05, b""),
        ]
        .concat();
        let ssl = ssl_of(&bytes);
        assert!(ssl.client_ssl());
        assert_eq!(ssl.client, PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN);
        assert_eq!((ssl.verify, ssl.version.as_deref()), (21, Some("TLSv1.2")));
        assert_eq!(parse(&[]), Ok(Tlvs::default()));
        assert_eq!(parse(&tlv(0x04, &[])), Ok(Tlvs::default()));
    }

    #[test]
    fn truncated_and_oversized_tlvs_are_refused() {
        let top = |code| Kind {
            code,
            nested: false,
        };
        let inner = |code| Kind { code, nested: true };
        // Not even a type and length.
        for cut in 1..TLV_HEAD {
            assert_eq!(
                parse(&ssl_tlv(1, 0, &[])[..cut]),
                Err(TlvError::Cut {
                    nested: false,
                    left: cut
                })
            );
        }
        // A length beyond the header, by one byte or by the most there is.
        let whole = ssl_tlv(1, 0, &version(b"TLSv1"));
        assert_eq!(
            parse(&whole[..whole.len() - 1]),
            Err(TlvError::TooLong {
                kind: top(0x20),
                len: 13,
                left: 12
            })
        );
        assert_eq!(
            parse(b"\x04\xff\xff\x00"),
            Err(TlvError::TooLong {
                kind: top(0x04),
                len: 65535,
                left: 1
            })
        );
        // A nested TLV that overruns PP2_TYPE_SSL, though not the header:
        // it must not read the TLV behind.
        let mut nested = version(b"TLSv1");
        nested[2] += 3;
        let bytes = [ssl_tlv(1, 0, &nested), tlv(0x04, b"")].concat();
        assert_eq!(
            parse(&bytes),
            Err(TlvError::TooLong {
                kind: inner(0x21),
                len: 8,
                left: 5
            })
        );
        // A nested TLV cut short.
        assert_eq!(
            parse(&ssl_tlv(1, 0, b"\x21\x00")),
            Err(TlvError::Cut {
                nested: true,
                left: 2
            })
        );
        // PP2_TYPE_SSL without room for client and verify.
        for short in 0..SSL_FIXED {
            assert_eq!(
                parse(&tlv(PP2_TYPE_SSL, &[1; 5][..short])),
                Err(TlvError::SslTooShort(short))
            );
        }
    }

    #[test]
    fn twice_is_refused_and_a_version_must_be_a_name() {
        let two = [ssl_tlv(1, 0, &[]), ssl_tlv(0, 0, &[])].concat();
        assert!(matches!(parse(&two), Err(TlvError::Twice(k)) if k.code == 0x20));
        let two = ssl_tlv(1, 0, &[version(b"TLSv1"), version(b"TLSv1.3")].concat());
        assert!(matches!(parse(&two), Err(TlvError::Twice(k)) if k.nested));
        for bad in [
            &b""[..],
            b"TLS v1",
            b"TLSv1\r\nsession end: user=root",
            "TLSv1½".as_bytes(),
            b"\xff\xfe",
            &[b'T'; MAX_BALANCER_TLS_VERSION + 1],
        ] {
            let e = parse(&ssl_tlv(1, 0, &version(bad))).expect_err("refused");
            let text = e.to_string();
            assert!(matches!(e, TlvError::BadVersion(_)), "{bad:?}: {text}");
            assert!(
                !text.contains('\n') && !text.contains('\r') && !text.contains('\u{fffd}'),
                "{text}"
            );
        }
        let e = parse(&ssl_tlv(1, 0, &version(b"TLSv1\r\nx"))).expect_err("refused");
        assert_eq!(
            e.to_string(),
            format!(
                "TLS version \"TLSv1\\r\\nx\" in PP2_SUBTYPE_SSL_VERSION is not a name of 1 \
                 to {MAX_BALANCER_TLS_VERSION} printable US-ASCII characters"
            )
        );
        let e = parse(&ssl_tlv(1, 0, &version(b"\xff"))).expect_err("refused");
        assert!(e.to_string().contains("\"\\xff\""), "{e}");
    }

    #[test]
    fn the_messages_name_the_tlv() {
        let e = parse(b"\x20\x00\x02\x01\x00").expect_err("short");
        assert_eq!(
            e.to_string(),
            "TLV PP2_TYPE_SSL of 2 bytes, less than the 5 of its client and verify fields"
        );
        let e = parse(b"\x42\x00\x09\x00").expect_err("long");
        assert_eq!(
            e.to_string(),
            "TLV 0x42 of 9 bytes, but only 1 are left in the header"
        );
        let e = parse(&ssl_tlv(1, 0, b"\x23\x01\x00")).expect_err("long");
        assert_eq!(
            e.to_string(),
            "TLV PP2_SUBTYPE_SSL_CIPHER of 256 bytes, but only 0 are left in PP2_TYPE_SSL"
        );
        let e = parse(b"\x04\x00").expect_err("cut");
        assert_eq!(
            e.to_string(),
            "2 bytes after the last TLV, less than a TLV's type and length"
        );
    }
}
