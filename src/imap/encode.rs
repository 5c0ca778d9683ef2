//! How a command's arguments are written: text as is, quoted strings,
//! literals, and mailbox names in modified UTF-7. It owns the rule that no
//! byte of an argument can become IMAP syntax (8-bit bytes never inside
//! quotes, `"` and `\` escaped, line breaks only inside literals); it
//! sends nothing: the core's `run` writes the arguments and waits for each
//! literal's `+`.

use base64::Engine as _;

/// Part of a command: text sent as is, or bytes sent as a literal.
pub(super) enum Arg<'a> {
    Text(&'a [u8]),
    /// Sent as a quoted string, `"` and `\` escaped (printable ASCII only).
    Quoted(&'a [u8]),
    Literal(&'a [u8]),
    /// Sent as the inner argument, shown in the debug trace only as its
    /// length (a password).
    Hidden(&'a Arg<'a>),
}

/// A quoted string when every byte is printable ASCII (with `"` and `\`
/// escaped), otherwise a literal: 8-bit bytes never go inside quotes.
pub(super) fn astring(bytes: &[u8]) -> Arg<'_> {
    if bytes.iter().all(|&b| (0x20..0x7f).contains(&b)) {
        Arg::Quoted(bytes)
    } else {
        Arg::Literal(bytes)
    }
}

/// `q` as an IMAP quoted string, `"` and `\\` escaped.
pub(super) fn push_quoted(out: &mut Vec<u8>, q: &[u8]) {
    out.push(b'"');
    for &b in q {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
}

/// A mailbox name as IMAP wants it (RFC 3501 5.1.3, modified UTF-7):
/// printable ASCII as it is, `&` as `&-`, everything else as UTF-16 in
/// base64 with `,` for `/`, between `&` and `-`.
pub(super) fn mailbox_name(name: &str) -> String {
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::IMAP_MUTF7,
        base64::engine::general_purpose::NO_PAD,
    );
    let mut out = String::with_capacity(name.len());
    let mut wide: Vec<u8> = Vec::new();
    let flush = |wide: &mut Vec<u8>, out: &mut String| {
        if !wide.is_empty() {
            out.push('&');
            out.push_str(&engine.encode(&*wide));
            out.push('-');
            wide.clear();
        }
    };
    for c in name.chars() {
        if (' '..='~').contains(&c) {
            flush(&mut wide, &mut out);
            if c == '&' {
                out.push_str("&-");
            } else {
                out.push(c);
            }
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                wide.extend_from_slice(&u.to_be_bytes());
            }
        }
    }
    flush(&mut wide, &mut out);
    out
}

/// A mailbox name as IMAP spells it, back in UTF-8 for a log line or a
/// person; `None` where it is not valid modified UTF-7 (a server's own
/// spelling, which is then shown as its bytes).
pub(super) fn decode_mailbox_name(name: &[u8]) -> Option<String> {
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::IMAP_MUTF7,
        base64::engine::general_purpose::NO_PAD,
    );
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some((&b, after)) = rest.split_first() {
        if b != b'&' {
            if !(0x20..0x7f).contains(&b) {
                return None;
            }
            out.push(char::from(b));
            rest = after;
            continue;
        }
        let end = after.iter().position(|&c| c == b'-')?;
        if end == 0 {
            out.push('&');
        } else {
            let wide = engine.decode(&after[..end]).ok()?;
            if wide.len() % 2 != 0 {
                return None;
            }
            let units = wide
                .chunks_exact(2)
                .map(|u| u16::from_be_bytes([u[0], u[1]]));
            for c in char::decode_utf16(units) {
                out.push(c.ok()?);
            }
        }
        rest = &after[end + 1..];
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_names_are_sent_in_modified_utf7() {
        assert_eq!(mailbox_name("INBOX"), "INBOX");
        assert_eq!(mailbox_name("Entwürfe"), "Entw&APw-rfe");
        assert_eq!(mailbox_name("Tom & Jerry"), "Tom &- Jerry");
        // RFC 3501 5.1.3's example.
        assert_eq!(
            mailbox_name("~peter/mail/台北/日本語"),
            "~peter/mail/&U,BTFw-/&ZeVnLIqe-"
        );
        assert_eq!(mailbox_name("a😀"), "a&2D3eAA-");
    }

    #[test]
    fn folder_names_come_back_from_modified_utf7() {
        for name in [
            "INBOX",
            "Entwürfe",
            "Tom & Jerry",
            "~peter/mail/台北/日本語",
            "a😀",
            "",
        ] {
            let wire = mailbox_name(name);
            assert_eq!(decode_mailbox_name(wire.as_bytes()).as_deref(), Some(name));
        }
        // Not modified UTF-7: no end, bad base64, a lone surrogate, 8 bits.
        for bad in [&b"a&APw"[..], b"&!!-", b"&2D0-", b"\xc3\xbc"] {
            assert_eq!(decode_mailbox_name(bad), None, "{bad:?}");
        }
    }
}
