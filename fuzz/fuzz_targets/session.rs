//! The POP3 session on an arbitrary client byte stream, with every backend
//! request answered as the input says (well or badly): never a panic, every
//! reply line CRLF-terminated, every multi-line reply dot-terminated, and a
//! backend request only for a complete, valid command line.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use pop3server::backend::{
    ExpungeAnswer, FactsAnswer, Failure, FailureKind, LockAnswer, LoginAnswer, PieceAnswer, Request,
};
use pop3server::maildrop::uidl::{Fact, FactKind, UidlFormat, header_digest};
use pop3server::maildrop::{BackendMessage, FolderSnapshot};
use pop3server::pop3::auth::Connection;
use pop3server::pop3::lines::{Line, LineReader};
use pop3server::pop3::session::{Session, SessionConfig, Step};

fn config(uidl_format: &str) -> SessionConfig {
    SessionConfig {
        uidl_format: UidlFormat::parse(uidl_format).unwrap_or_else(|_| UidlFormat::dovecot()),
        login_failure_delay: Duration::ZERO,
        max_login_failures: 3,
        max_bad_commands: 20,
        read_only: false,
        mark_seen: true,
        implementation: None,
        allow_plaintext_auth: false,
        plaintext_auth_from: Vec::new(),
        stls_available: true,
        folders: vec!["INBOX".into(), "Archive".into()],
        prefetch: true,
    }
}

/// Whether `out` is a sequence of whole reply lines, with multi-line
/// replies (those that had to be sent piece by piece included) ended.
fn check_framing(out: &[u8]) {
    assert!(
        out.is_empty() || out.ends_with(b"\r\n"),
        "a reply not ended by CRLF"
    );
    for line in out.split_inclusive(|&b| b == b'\n') {
        assert!(line.ends_with(b"\r\n"), "a bare LF in a reply: {line:?}");
    }
}

struct Answers<'a>(&'a [u8]);

impl Answers<'_> {
    fn next(&mut self) -> u8 {
        let Some((&b, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        b
    }
    fn failure(&mut self) -> Failure {
        let kind = match self.next() % 8 {
            0 => FailureKind::Refused,
            1 => FailureKind::Unreachable,
            2 => FailureKind::Lost,
            3 => FailureKind::Protocol,
            4 => FailureKind::Denied,
            5 => FailureKind::Throttled(None),
            6 => FailureKind::Throttled(Some(Duration::from_millis(1500))),
            _ => FailureKind::Local,
        };
        Failure::new(kind, "x")
    }
}

fuzz_target!(|data: &[u8]| {
    // First half: the client's bytes; second half: how the backend answers.
    let (client, backend) = data.split_at(data.len() / 2);
    let mut answers = Answers(backend);
    let connection = Connection {
        tls: answers.next() & 1 == 1,
        loopback: answers.next() & 1 == 1,
        client: None,
        client_known: true,
    };
    // The formats made from facts ask the backend at UIDL.
    let format = ["dovecot", "gmail", "header-digest"][usize::from(answers.next() % 3)];
    let mut s = Session::new(config(format), connection);
    let mut reader = LineReader::new(s.line_limit());
    reader.push(client);
    let mut out = Vec::new();
    let mut cut = false;
    for _ in 0..1000 {
        reader.set_limit(s.line_limit());
        let Some(line) = reader.next_line() else {
            break;
        };
        let complete = matches!(line, Line::Complete(_));
        let mut step = s.handle_line(line);
        for _ in 0..100 {
            let request = match step {
                Step::Respond(r) => {
                    r.reply.encode(&mut out);
                    break;
                }
                Step::StartTls(r) => {
                    r.encode(&mut out);
                    s.on_tls_started();
                    break;
                }
                Step::Done => break,
                Step::Cut => {
                    cut = true;
                    break;
                }
                Step::Write { bytes, next } => {
                    out.extend_from_slice(&bytes);
                    match next {
                        Some(r) => r,
                        None => {
                            assert!(
                                out.ends_with(b"\r\n.\r\n"),
                                "a message reply without its end"
                            );
                            break;
                        }
                    }
                }
                Step::Backend(r) => {
                    assert!(complete, "backend work for an incomplete line");
                    r
                }
            };
            let fail = answers.next() % 4 == 0;
            step = match request {
                Request::Capabilities if fail => s.on_capabilities(Err(answers.failure())),
                Request::Capabilities => s.on_capabilities(Ok(vec!["AUTH=XOAUTH2".into()])),
                Request::Login(_) if fail => s.on_login(Err(answers.failure())),
                Request::Login(_) => s.on_login(Ok(match answers.next() % 4 {
                    0 => LoginAnswer::LoggedIn,
                    1 => LoginAnswer::Rejected {
                        penalty: Duration::ZERO,
                        reason: "no".into(),
                    },
                    2 => LoginAnswer::Throttled {
                        wait: Duration::from_secs(300),
                    },
                    _ => LoginAnswer::Unavailable("later".into()),
                })),
                Request::Lock { .. } if fail => s.on_lock(Err(answers.failure())),
                Request::Lock { .. } => s.on_lock(Ok(LockAnswer::Locked)),
                Request::OpenFolder { .. } if fail => s.on_folder(Err(answers.failure())),
                Request::OpenFolder { .. } => {
                    let n = u32::from(answers.next() % 5);
                    s.on_folder(Ok(FolderSnapshot {
                        uid_validity: 7,
                        messages: (1..=n)
                            .map(|uid| BackendMessage { uid, size: 40 })
                            .collect(),
                    }))
                }
                Request::Piece(_) if fail => s.on_piece(Err(answers.failure())),
                Request::Piece(_) => match answers.next() % 4 {
                    0 => s.on_piece(Ok(PieceAnswer::NoMessage)),
                    1 => s.on_piece(Ok(PieceAnswer::Bytes(b"S: x\r\n\r\n.body\nend".to_vec()))),
                    _ => s.on_piece(Ok(PieceAnswer::Bytes(vec![
                        b'.';
                        usize::from(answers.next())
                    ]))),
                },
                Request::Prefetch(_) => {
                    // Asked for ahead only once a message went out whole.
                    assert!(out.ends_with(b"\r\n.\r\n"), "a fetch ahead mid-reply");
                    if fail {
                        s.on_prefetch(Err(answers.failure()))
                    } else {
                        s.on_prefetch(Ok(()))
                    }
                }
                Request::Expunge(_) if fail => s.on_expunge(Err(answers.failure())),
                Request::Expunge(_) => s.on_expunge(Ok(match answers.next() % 5 {
                    0 => ExpungeAnswer::Expunged,
                    1 => ExpungeAnswer::LeftFlagged,
                    2 => ExpungeAnswer::FolderChanged,
                    3 => ExpungeAnswer::Unconfirmed,
                    _ => ExpungeAnswer::NoTrash,
                })),
                Request::UidlFacts(_) if fail => s.on_uidl_facts(Err(answers.failure())),
                Request::UidlFacts(r) => s.on_uidl_facts(Ok(match answers.next() % 4 {
                    0 => FactsAnswer::Unsupported {
                        capability: "X-GM-EXT-1",
                    },
                    1 => FactsAnswer::FolderChanged,
                    // Twins (u / 2), and a UID not asked for.
                    _ => FactsAnswer::Facts(
                        r.uids
                            .iter()
                            .map(|&u| (u, u / 2))
                            .chain([(u32::MAX, 0)])
                            .map(|(u, value)| {
                                let fact = match r.kind {
                                    FactKind::GmailMsgId => Fact::GmailMsgId(value.into()),
                                    FactKind::HeaderDigest => {
                                        Fact::HeaderDigest(header_digest(&value.to_be_bytes()))
                                    }
                                };
                                (u, fact)
                            })
                            .collect(),
                    ),
                })),
            };
        }
        if s.is_closed() {
            break;
        }
    }
    // A reply cut short on purpose ends anywhere: the connection closes.
    if !cut {
        check_framing(&out);
    }
});
