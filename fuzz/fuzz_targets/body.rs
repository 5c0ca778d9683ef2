//! RETR's body encoding, on any message split at any points, must come back
//! byte-exact through a reference un-stuffer: every line that starts with
//! `.` doubled, every LF after a CR, one terminating `.` line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pop3server::pop3::body::BodyEncoder;

/// The message as a POP3 client must see it after un-stuffing: bare LF as
/// CRLF, a last line without line end ended.
fn normalized(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 2);
    let mut prev = 0u8;
    for &b in message {
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        prev = b;
    }
    if let Some(&last) = message.last()
        && last != b'\n'
    {
        if last != b'\r' {
            out.push(b'\r');
        }
        out.push(b'\n');
    }
    out
}

fn unstuffed(reply: &[u8]) -> Vec<u8> {
    let body = reply
        .strip_suffix(b".\r\n")
        .expect("the reply ends with .CRLF");
    assert!(
        body.is_empty() || body.ends_with(b"\r\n"),
        "the last line is not ended"
    );
    let mut out = Vec::with_capacity(body.len());
    for line in body.split_inclusive(|&b| b == b'\n') {
        assert!(
            line.ends_with(b"\r\n"),
            "a line ends in a bare LF: {line:?}"
        );
        match line.strip_prefix(b".") {
            Some(rest) => {
                assert!(
                    rest.starts_with(b"."),
                    "a line starting with . was not doubled"
                );
                out.extend_from_slice(rest);
            }
            None => out.extend_from_slice(line),
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    // The first byte chooses the split: pieces of 1 to 256 bytes.
    let Some((&k, message)) = data.split_first() else {
        return;
    };
    let piece = usize::from(k) + 1;
    let mut encoder = BodyEncoder::retr();
    let mut reply = Vec::new();
    for chunk in message.chunks(piece) {
        encoder.push(chunk, &mut reply);
    }
    encoder.finish(&mut reply);
    assert_eq!(unstuffed(&reply), normalized(message));
});
