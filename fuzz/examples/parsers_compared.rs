//! Throughput of our IMAP response parser and of imap-codec 1.0 on the two
//! responses that matter for speed: the snapshot of a 10,000-message
//! mailbox (`* n FETCH (UID n RFC822.SIZE s)`) and one 256 KiB body piece.
//! Also which real server responses each takes. Evidence for ARCHITECTURE.md's
//! decision on imap-codec; run in fuzz/ with
//! `RUSTFLAGS="--cfg fuzzing" cargo run --release --example parsers_compared`.

use std::time::Instant;

use imap_codec::ResponseCodec;
use imap_codec::decode::Decoder;
use pop3server::imap::fuzzing::summarize;

fn snapshot(n: u32) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 1..=n {
        out.extend_from_slice(
            format!("* {i} FETCH (UID {} RFC822.SIZE {})\r\n", i + 100, 1000 + i).as_bytes(),
        );
    }
    out.extend_from_slice(b"a1 OK Fetch completed.\r\n");
    out
}

fn piece(size: usize) -> Vec<u8> {
    let mut out = format!("* 1 FETCH (UID 7 BODY[]<0> {{{size}}}\r\n").into_bytes();
    out.extend((0..size).map(|i| if i % 78 == 77 { b'\n' } else { b'x' }));
    out.extend_from_slice(b")\r\na2 OK Fetch completed.\r\n");
    out
}

fn ours(input: &[u8]) -> usize {
    let all = summarize(input);
    assert!(all.iter().all(Result::is_ok));
    all.len()
}

fn codec(input: &[u8]) -> usize {
    let codec = ResponseCodec::default();
    let mut rest = input;
    let mut count = 0;
    while !rest.is_empty() {
        let (remaining, _) = codec.decode(rest).expect("imap-codec decodes it");
        rest = remaining;
        count += 1;
    }
    count
}

fn time(name: &str, input: &[u8], rounds: u32, f: fn(&[u8]) -> usize) -> f64 {
    let mut best = f64::MAX;
    let mut count = 0;
    for _ in 0..rounds {
        let t = Instant::now();
        count = f(input);
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!(
        "{name:>10}: {count} responses, best of {rounds}: {:.2} ms ({:.0} MB/s)",
        best * 1e3,
        input.len() as f64 / best / 1e6
    );
    best
}

/// Responses real servers send to this client's commands (Dovecot 2.3,
/// Cyrus, Exchange/Microsoft 365, Gmail), and whether each parser takes
/// them. A response a parser refuses ends the session.
const SEEN: &[(&str, &[u8])] = &[
    ("Dovecot CAPABILITY", b"* CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT SORT=DISPLAY THREAD=REFERENCES MULTIAPPEND URL-PARTIAL CATENATE UNSELECT CHILDREN NAMESPACE UIDPLUS LIST-EXTENDED I18NLEVEL=1 CONDSTORE QRESYNC ESEARCH ESORT SEARCHRES WITHIN CONTEXT=SEARCH LIST-STATUS BINARY MOVE SNIPPET=FUZZY PREVIEW=FUZZY PREVIEW STATUS=SIZE SAVEDATE LITERAL+ NOTIFY SPECIAL-USE\r\n"),
    ("Dovecot login OK", b"a1 OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT LITERAL+ UIDPLUS ESEARCH] Logged in\r\n"),
    ("Dovecot SELECT", b"* OK [HIGHESTMODSEQ 17] Highest\r\n"),
    ("Dovecot SELECT", b"* OK [UIDVALIDITY 1764600000] UIDs valid\r\n"),
    ("Dovecot SELECT", b"a2 OK [READ-WRITE] Select completed (0.001 + 0.000 secs).\r\n"),
    ("ESEARCH", b"* ESEARCH (TAG \"a3\") UID ALL 1:3,7\r\n"),
    ("ESEARCH, empty", b"* ESEARCH (TAG \"a3\") UID\r\n"),
    ("FETCH with MODSEQ", b"* 1 FETCH (UID 5 MODSEQ (12) RFC822.SIZE 100)\r\n"),
    ("FETCH BODY[] NIL (expunged)", b"* 1 FETCH (UID 5 BODY[] NIL)\r\n"),
    ("ID answer", b"* ID (\"name\" \"Dovecot\")\r\n"),
    ("ENABLED", b"* ENABLED UTF8=ACCEPT\r\n"),
    ("Exchange greeting-like OK", b"* OK The Microsoft Exchange IMAP4 service is ready. [TQBOADIAUABSADEAMgBDAEEAMAAwADMANwAuAG4AYQBtAHAAcgBkADEAMgAuAHAAcgBvAGQALgBvAHUAdABsAG8AbwBrAC4AYwBvAG0A]\r\n"),
    ("Exchange tagged OK", b"a1 OK AUTHENTICATE completed.\r\n"),
    ("Gmail OK with text only", b"a1 OK alice@example.org authenticated (Success)\r\n"),
    ("Gmail NO [ALERT]", b"a1 NO [ALERT] Application-specific password required: https://support.google.com/accounts/answer/185833 (Failure)\r\n"),
    ("8-bit status text", b"a1 NO Anmeldung f\xc3\xbcr Benutzer fehlgeschlagen\r\n"),
    ("empty status text", b"a1 OK\r\n"),
    ("Cyrus NO with [UNAVAILABLE]", b"a1 NO [UNAVAILABLE] Mailbox is locked by POP server\r\n"),
    ("BYE idle", b"* BYE Disconnected for inactivity.\r\n"),
    ("literal in resp-text", b"* OK [ALERT] quota {5}\r\n"),
];

fn acceptance() {
    let codec = ResponseCodec::default();
    println!("responses real servers send (ours / imap-codec):");
    for (what, bytes) in SEEN {
        let ours_ok = summarize(bytes).first().is_some_and(Result::is_ok);
        let codec_ok = codec.decode(bytes).is_ok_and(|(rest, _)| rest.is_empty());
        println!(
            "  {:<4} {:<4} {what}",
            if ours_ok { "ok" } else { "FAIL" },
            if codec_ok { "ok" } else { "FAIL" }
        );
    }
}

fn main() {
    acceptance();
    for (what, input) in [
        ("snapshot of 10,000 messages", snapshot(10_000)),
        ("one 256 KiB body piece", piece(256 * 1024)),
    ] {
        println!("{what} ({} bytes):", input.len());
        let a = time("ours", &input, 20, ours);
        let b = time("imap-codec", &input, 20, codec);
        println!("{:>10}: imap-codec / ours = {:.2}", "ratio", b / a);
    }
}
