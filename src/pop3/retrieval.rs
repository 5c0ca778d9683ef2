//! One RETR or TOP, as a small state machine beside the session: it asks
//! for the message piece by piece (RETR: pieces of one whole-message fetch;
//! TOP: `BODY.PEEK[]<offset.length>` pieces), turns each
//! piece into dot-stuffed reply bytes, and decides what a failure means for
//! the reply: before the first byte went out it can still be an `-ERR`;
//! after that the only honest thing is to cut the connection, so that no
//! client takes a partial message for a whole one (no final `.`).

use log::warn;

use super::body::BodyEncoder;
use super::reply::{Reply, RespCode, throttled_text};
use crate::backend::{
    Failure, FailureKind, Outcome, PieceAnswer, PieceRequest, PrefetchRequest, Read,
};
use crate::buffers;
use crate::limits::{FETCH_CHUNK, MAX_BACKEND_TEXT};
use crate::maildrop::{Message, MsgNum};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Retr,
    /// TOP with this many body lines.
    Top(u64),
}

pub struct Retrieval {
    number: MsgNum,
    message: Message,
    uid_validity: u32,
    kind: Kind,
    encoder: BodyEncoder,
    /// Bytes of the message received so far.
    offset: u64,
    /// The `+OK` line went out.
    started: bool,
    /// RETR's fetch sets `\Seen` itself (see `backend::Read`).
    set_seen: bool,
    /// Asked for ahead once this RETR is done.
    prefetch: Option<PrefetchRequest>,
}

/// What the session does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Write these bytes, then ask for `piece`.
    More { bytes: Vec<u8>, piece: PieceRequest },
    /// Write these bytes: the reply is complete, terminator included.
    Done(Vec<u8>),
    /// Nothing was sent: answer with this, the session goes on.
    Refuse(Reply),
    /// Nothing was sent, and the backend is gone: answer with this, close.
    Fail(Reply),
    /// Part of the reply went out: close the connection without another byte.
    Cut,
}

impl Retrieval {
    pub fn new(number: MsgNum, message: Message, uid_validity: u32, kind: Kind) -> Self {
        let encoder = match kind {
            Kind::Retr => BodyEncoder::retr(),
            Kind::Top(lines) => BodyEncoder::top(lines),
        };
        Retrieval {
            number,
            message,
            uid_validity,
            kind,
            encoder,
            offset: 0,
            started: false,
            set_seen: false,
            prefetch: None,
        }
    }

    /// The message to ask for ahead once this one is sent (RETR only).
    pub fn then_prefetch(mut self, next: Option<PrefetchRequest>) -> Self {
        self.prefetch = next.filter(|_| self.kind == Kind::Retr);
        self
    }

    pub fn prefetch(&self) -> Option<PrefetchRequest> {
        self.prefetch.clone()
    }

    /// A RETR whose fetch marks the message `\Seen` (`mark_seen`, not
    /// read-only): no separate store afterwards.
    pub fn setting_seen(mut self, set_seen: bool) -> Self {
        self.set_seen = set_seen && self.kind == Kind::Retr;
        self
    }

    pub fn sets_seen(&self) -> bool {
        self.set_seen
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn message(&self) -> Message {
        self.message
    }

    /// The piece to ask for next.
    pub fn piece(&self) -> PieceRequest {
        PieceRequest {
            folder: self.message.folder,
            uid_validity: self.uid_validity,
            uid: self.message.uid,
            offset: self.offset,
            len: FETCH_CHUNK,
            read: match self.kind {
                Kind::Retr => Read::Whole {
                    set_seen: self.set_seen,
                    limit: self.bound(),
                    size: self.message.size,
                },
                Kind::Top(_) => Read::Piece,
            },
        }
    }

    /// RFC822.SIZE is the size of BODY[]: a backend that sends far more
    /// would otherwise keep a RETR going for ever.
    fn bound(&self) -> u64 {
        self.message
            .size
            .saturating_mul(2)
            .saturating_add(u64::from(FETCH_CHUNK))
    }

    pub fn on_piece(&mut self, outcome: Outcome<PieceAnswer>) -> Next {
        let bytes = match outcome {
            Ok(PieceAnswer::Bytes(bytes)) => bytes,
            Ok(PieceAnswer::NoMessage | PieceAnswer::FolderChanged) if !self.started => {
                return Next::Refuse(Reply::err(
                    "Message was removed by another client meanwhile",
                ));
            }
            Ok(PieceAnswer::NoMessage | PieceAnswer::FolderChanged) => {
                warn!(
                    "message UID {} vanished while being sent: reply cut short",
                    self.message.uid
                );
                return Next::Cut;
            }
            Err(failure) => return self.failed(failure),
        };
        let mut out = buffers::take(bytes.len() + bytes.len() / 32 + 64);
        if !self.started {
            let status = match self.kind {
                Kind::Retr => format!("{} octets", self.message.size),
                Kind::Top(_) => "Top of message follows".to_string(),
            };
            Reply::ok(status).encode(&mut out);
            self.started = true;
        }
        self.encoder.push(&bytes, &mut out);
        self.offset += bytes.len() as u64;
        let whole = bytes.len() < FETCH_CHUNK as usize;
        buffers::give(bytes);
        if whole || self.encoder.is_done() {
            self.encoder.finish(&mut out);
            return Next::Done(out);
        }
        if self.offset > self.bound() {
            warn!(
                "message UID {} is over twice its announced size {}: reply cut short",
                self.message.uid, self.message.size
            );
            return Next::Cut;
        }
        Next::More {
            bytes: out,
            piece: self.piece(),
        }
    }

    fn failed(&self, failure: Failure) -> Next {
        if self.started {
            return Next::Cut;
        }
        match failure.kind {
            // One unreadable message must not block the others.
            FailureKind::Refused => Next::Refuse(Reply::err(format!(
                "Message {} cannot be read now, the mail server said: {}",
                self.number,
                shorten(&failure.text)
            ))),
            FailureKind::Throttled(wait) => {
                Next::Fail(Reply::err_code(RespCode::SysTemp, throttled_text(wait)))
            }
            _ => Next::Fail(Reply::err_code(
                RespCode::SysTemp,
                "Backend failed, try again later",
            )),
        }
    }
}

/// The backend's words, cut to fit in one reply line.
fn shorten(text: &str) -> &str {
    if text.len() <= MAX_BACKEND_TEXT {
        return text;
    }
    let mut end = MAX_BACKEND_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(size: u64) -> Message {
        Message {
            folder: 0,
            uid: 7,
            size,
        }
    }

    fn text(bytes: &[u8]) -> String {
        String::from_utf8_lossy(bytes).into_owned()
    }

    #[test]
    fn a_short_message_is_one_piece_and_a_whole_reply() {
        let mut r = Retrieval::new(1, message(9), 42, Kind::Retr);
        assert_eq!(
            r.piece(),
            PieceRequest {
                folder: 0,
                uid_validity: 42,
                uid: 7,
                offset: 0,
                len: FETCH_CHUNK,
                read: Read::Whole {
                    set_seen: false,
                    limit: 9 * 2 + u64::from(FETCH_CHUNK),
                    size: 9,
                },
            }
        );
        let Next::Done(out) = r.on_piece(Ok(PieceAnswer::Bytes(b"A: b\r\n\r\n.x".to_vec()))) else {
            panic!("one piece is the whole message");
        };
        assert_eq!(text(&out), "+OK 9 octets\r\nA: b\r\n\r\n..x\r\n.\r\n");
    }

    #[test]
    fn a_long_message_is_asked_for_piece_after_piece() {
        let size = u64::from(FETCH_CHUNK) + 10;
        let mut r = Retrieval::new(1, message(size), 42, Kind::Retr);
        let first = vec![b'a'; FETCH_CHUNK as usize];
        let Next::More { bytes, piece } = r.on_piece(Ok(PieceAnswer::Bytes(first))) else {
            panic!("a full piece asks for more");
        };
        assert!(text(&bytes).starts_with(&format!("+OK {size} octets\r\naaa")));
        assert_eq!(piece.offset, u64::from(FETCH_CHUNK));
        let Next::Done(last) = r.on_piece(Ok(PieceAnswer::Bytes(b"bbbbbbbbbb".to_vec()))) else {
            panic!("a short piece ends it");
        };
        assert_eq!(text(&last), "bbbbbbbbbb\r\n.\r\n");
    }

    #[test]
    fn a_refused_fetch_before_the_first_byte_is_an_err_for_that_message() {
        let mut r = Retrieval::new(3, message(9), 42, Kind::Retr);
        let next = r.on_piece(Err(Failure::new(
            FailureKind::Refused,
            "[SERVERBUG] broken",
        )));
        assert_eq!(
            next,
            Next::Refuse(Reply::err(
                "Message 3 cannot be read now, the mail server said: [SERVERBUG] broken"
            ))
        );
    }

    #[test]
    fn a_lost_backend_before_the_first_byte_ends_the_session() {
        let mut r = Retrieval::new(3, message(9), 42, Kind::Top(0));
        let next = r.on_piece(Err(Failure::new(FailureKind::Lost, "timed out")));
        assert!(matches!(
            next,
            Next::Fail(Reply::Err(Some(RespCode::SysTemp), _))
        ));
    }

    #[test]
    fn any_failure_after_the_first_byte_cuts_the_reply() {
        for failure in [
            Err(Failure::new(FailureKind::Refused, "no")),
            Err(Failure::new(FailureKind::Lost, "gone")),
            Ok(PieceAnswer::NoMessage),
        ] {
            let mut r = Retrieval::new(1, message(u64::from(FETCH_CHUNK) * 2), 1, Kind::Retr);
            let first = vec![b'a'; FETCH_CHUNK as usize];
            assert!(matches!(
                r.on_piece(Ok(PieceAnswer::Bytes(first))),
                Next::More { .. }
            ));
            assert_eq!(r.on_piece(failure), Next::Cut);
        }
    }

    #[test]
    fn a_message_gone_before_the_first_byte_is_an_err() {
        let mut r = Retrieval::new(1, message(9), 1, Kind::Retr);
        assert!(matches!(
            r.on_piece(Ok(PieceAnswer::NoMessage)),
            Next::Refuse(Reply::Err(None, _))
        ));
    }

    #[test]
    fn a_backend_sending_far_more_than_the_size_is_cut_off() {
        let mut r = Retrieval::new(1, message(10), 1, Kind::Retr);
        let piece = || Ok(PieceAnswer::Bytes(vec![b'a'; FETCH_CHUNK as usize]));
        assert!(matches!(r.on_piece(piece()), Next::More { .. }));
        assert_eq!(r.on_piece(piece()), Next::Cut);
    }

    #[test]
    fn top_stops_asking_once_its_lines_are_out() {
        let mut r = Retrieval::new(1, message(u64::from(FETCH_CHUNK) * 4), 1, Kind::Top(1));
        let mut body = b"H: v\r\n\r\nline 1\r\nline 2\r\n".to_vec();
        body.resize(FETCH_CHUNK as usize, b'x');
        let Next::Done(out) = r.on_piece(Ok(PieceAnswer::Bytes(body))) else {
            panic!("TOP is complete after its lines");
        };
        assert_eq!(
            text(&out),
            "+OK Top of message follows\r\nH: v\r\n\r\nline 1\r\n.\r\n"
        );
    }
}
