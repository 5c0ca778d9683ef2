//! Message bodies: the body stream (a whole message from one FETCH, read
//! piece by piece as the POP3 client takes it), the fetch ahead (several
//! bodies asked for in one command while the client is busy), and a piece
//! of a message at an offset. It owns the rules that bytes are never taken
//! for another message or offset, and that what is left of a fetch ahead
//! is read before any other command (`settle_prefetch`); memory holds one
//! piece of a body at a time, never a whole message.

use std::collections::VecDeque;

use log::debug;

use super::client::unexpected_continuation;
use super::encode::Arg;
use super::response::{FetchData, Head, Response, Status, StatusInfo, read_body_tail, read_head};
use super::{Client, ImapError};
use crate::buffers;
use crate::limits::FETCH_CHUNK;

/// A message body being read from one FETCH (see `Client::start_body`).
#[derive(Debug)]
pub struct BodyStream {
    pub uid: u32,
    /// The tag of its fetch, which may have asked for several bodies.
    tag: String,
    /// The fetch's tagged answer follows this body.
    last: bool,
    /// The server named the UID before the literal.
    uid_confirmed: bool,
    /// The literal's length: the message's true size.
    pub len: u64,
    left: u64,
    /// The response after the literal was read too.
    finished: bool,
}

impl BodyStream {
    /// Bytes handed out so far.
    pub fn position(&self) -> u64 {
        self.len - self.left
    }

    pub fn is_done(&self) -> bool {
        self.finished
    }
}

/// The answer to a fetch of several bodies sent ahead: read a body at a
/// time, as the client asks for them in order.
pub(super) struct Ahead {
    tag: String,
    /// The UIDs asked for whose bodies are still to come, ascending, which
    /// is the order of the answer.
    uids: VecDeque<u32>,
}

/// Where the answer to a body fetch stands.
enum FetchHead {
    /// A body's literal begins (with the UID, if named before it).
    Body { uid: Option<u32>, len: u64 },
    /// The tagged answer: no more bodies.
    Done(StatusInfo),
}

/// A body about to be read, `len` bytes, refused over `limit`.
fn body_stream(
    uid: u32,
    uid_confirmed: bool,
    len: u64,
    limit: u64,
    tag: String,
    last: bool,
) -> Result<BodyStream, ImapError> {
    if len > limit {
        return Err(ImapError::Protocol(format!(
            "literal of {len} bytes is over the limit of {limit} for UID {uid}"
        )));
    }
    Ok(BodyStream {
        uid,
        tag,
        last,
        uid_confirmed,
        len,
        left: len,
        finished: false,
    })
}

impl Client {
    /// Bytes `offset..offset+len` of the message (fewer at its end), without
    /// setting `\Seen`; `None` if the message no longer exists.
    pub fn fetch_piece(
        &mut self,
        uid: u32,
        offset: u64,
        len: u32,
    ) -> Result<Option<Vec<u8>>, ImapError> {
        let command = format!("UID FETCH {uid} (UID BODY.PEEK[]<{offset}.{len}>)");
        // Outer None: no BODY[] for this UID yet; inner None: NIL (expunged).
        let mut body: Option<Option<Vec<u8>>> = None;
        let done = self.run("UID FETCH", &[Arg::Text(command.as_bytes())], |r| {
            if let Response::Fetch(FetchData {
                uid: got,
                body: Some(b),
                body_origin,
                ..
            }) = r
                && got.is_none_or(|g| g == uid)
            {
                // Bytes from elsewhere in the message must never be taken
                // for the piece asked for.
                if b.is_some() && body_origin != offset {
                    return Err(ImapError::Protocol(format!(
                        "got BODY[]<{body_origin}> while waiting for <{offset}>"
                    )));
                }
                if let Some(bytes) = &b
                    && bytes.len() > len as usize
                {
                    return Err(ImapError::Protocol(format!(
                        "asked for {len} bytes, got {}",
                        bytes.len()
                    )));
                }
                body = Some(b);
            }
            Ok(())
        })?;
        // Dovecot answers NIL and `OK [EXPUNGEISSUED]` (or NO) for a message
        // another session expunged: gone, never an empty message.
        let expunged = done
            .code
            .as_ref()
            .is_some_and(|c| c.name == "EXPUNGEISSUED");
        match (done.status, body) {
            (Status::Ok | Status::No, _) if expunged => Ok(None),
            (Status::Ok, Some(Some(bytes))) => Ok(Some(bytes)),
            (Status::Ok, Some(None) | None) => Ok(None),
            _ => Err(ImapError::Refused {
                command: "UID FETCH",
                info: done,
            }),
        }
    }

    /// Starts reading a whole message with one `UID FETCH uid (UID BODY[])`
    /// (`BODY.PEEK[]` with `peek`; without it the server sets `\Seen`):
    /// returns when the body's literal begins, its bytes unread, or `None`
    /// if the message is gone. The bytes are then read with `read_body`,
    /// piece by piece as the client takes them, so memory stays bounded by
    /// the piece whatever the message size.
    /// A body over `limit` bytes is refused before it is read (the
    /// connection is then unusable: its literal is still coming).
    pub fn start_body(
        &mut self,
        uid: u32,
        peek: bool,
        limit: u64,
    ) -> Result<Option<BodyStream>, ImapError> {
        if peek
            && self.next_prefetched() == Some(uid)
            && let Some(body) = self.next_body_ahead(uid, limit)?
        {
            return Ok(Some(body));
        }
        self.settle_prefetch()?;
        let tag = self.send_body_fetch(uid, peek)?;
        match self.read_fetch_head(&tag)? {
            FetchHead::Body { uid: got, len } => {
                if got.is_some_and(|g| g != uid) {
                    return Err(ImapError::Protocol(format!(
                        "asked for the body of UID {uid}, got UID {}",
                        got.unwrap_or_default()
                    )));
                }
                body_stream(uid, got.is_some(), len, limit, tag, true).map(Some)
            }
            // No body: NIL, or nothing, for a message another session
            // expunged (Dovecot adds `[EXPUNGEISSUED]`).
            FetchHead::Done(info) => {
                let expunged = info
                    .code
                    .as_ref()
                    .is_some_and(|c| c.name == "EXPUNGEISSUED");
                match info.status {
                    Status::Ok => Ok(None),
                    Status::No if expunged => Ok(None),
                    _ => Err(ImapError::Refused {
                        command: "UID FETCH",
                        info,
                    }),
                }
            }
        }
    }

    /// The body of `uid` from the fetch sent ahead, whose next body it
    /// should be. `None` where the answer does not go on with it (the
    /// message is gone, the fetch was refused): the answer is then read to
    /// its end, and the caller fetches the message by itself, which tells
    /// "gone" from "refused".
    fn next_body_ahead(&mut self, uid: u32, limit: u64) -> Result<Option<BodyStream>, ImapError> {
        let Some(ahead) = self.prefetched.as_mut() else {
            return Ok(None);
        };
        ahead.uids.pop_front();
        let last = ahead.uids.is_empty();
        let tag = ahead.tag.clone();
        // Sent earlier: the deadline runs from now, when it is awaited.
        self.conn.start_deadline();
        match self.read_fetch_head(&tag)? {
            FetchHead::Body { uid: got, len } if got.is_none_or(|g| g == uid) => {
                if last {
                    // Its tagged answer is read with this body's end.
                    self.prefetched = None;
                }
                body_stream(uid, got.is_some(), len, limit, tag, last).map(Some)
            }
            FetchHead::Body { len, .. } => {
                // A later one: this one was skipped. That body is dropped
                // with the rest.
                let mut skipped = body_stream(0, true, len, u64::MAX, tag, false)?;
                self.drain_body(&mut skipped)?;
                self.settle_prefetch()?;
                Ok(None)
            }
            FetchHead::Done(_) => {
                self.prefetched = None;
                Ok(None)
            }
        }
    }

    /// Sends `UID FETCH set (UID BODY.PEEK[])` for these messages (ascending
    /// UIDs) and returns without reading the answer: the server works on it
    /// while the client is busy, and `start_body` for them in this order
    /// (with `peek`) reads their bodies one by one. Any other command first
    /// reads and drops what is left of it. One such fetch at a time: a
    /// second command would let the server answer both at once, mixed.
    pub fn prefetch_bodies(&mut self, uids: &[u32]) -> Result<(), ImapError> {
        self.settle_prefetch()?;
        if uids.is_empty() {
            return Ok(());
        }
        let mut ordered = uids.to_vec();
        ordered.sort_unstable();
        ordered.dedup();
        let set: Vec<String> = ordered.iter().map(u32::to_string).collect();
        let tag = self.send_fetch(&set.join(","), true)?;
        self.prefetched = Some(Ahead {
            tag,
            uids: ordered.into(),
        });
        Ok(())
    }

    /// The UID whose body, asked for ahead, comes next.
    pub fn next_prefetched(&self) -> Option<u32> {
        self.prefetched
            .as_ref()
            .and_then(|a| a.uids.front().copied())
    }

    /// Reads and drops what is left of the answer to a fetch sent ahead,
    /// so that the connection can carry the next command. A message gone
    /// meanwhile, or a refusal, does not matter here: nobody wants it.
    pub(super) fn settle_prefetch(&mut self) -> Result<(), ImapError> {
        let Some(ahead) = self.prefetched.take() else {
            return Ok(());
        };
        self.conn.start_deadline();
        // Bounded: each round reads one of the bodies asked for, or the end.
        for _ in 0..=ahead.uids.len() {
            match self.read_fetch_head(&ahead.tag)? {
                FetchHead::Body { len, .. } => {
                    let mut body = body_stream(0, true, len, u64::MAX, ahead.tag.clone(), false)?;
                    self.drain_body(&mut body)?;
                }
                FetchHead::Done(_) => return Ok(()),
            }
        }
        Err(ImapError::Protocol(
            "more bodies than asked for in a fetch ahead".into(),
        ))
    }

    /// Sends a fetch of one message's body; its tag.
    fn send_body_fetch(&mut self, uid: u32, peek: bool) -> Result<String, ImapError> {
        self.send_fetch(&uid.to_string(), peek)
    }

    fn send_fetch(&mut self, set: &str, peek: bool) -> Result<String, ImapError> {
        self.settle_unanswered()?;
        self.tag += 1;
        let tag = self.current_tag();
        let item = if peek { "BODY.PEEK[]" } else { "BODY[]" };
        let command = format!("{tag} UID FETCH {set} (UID {item})\r\n");
        debug!("IMAP C: {}", command.trim_end());
        self.conn.start_deadline();
        self.conn.write_all(command.as_bytes())?;
        Ok(tag)
    }

    /// Reads the answer to the body fetch tagged `tag` up to the next
    /// body's literal, or to its tagged end.
    fn read_fetch_head(&mut self, tag: &str) -> Result<FetchHead, ImapError> {
        loop {
            match read_head(&mut self.conn)? {
                Head::Body { uid, len } => return Ok(FetchHead::Body { uid, len }),
                Head::Whole(Response::Tagged(t, info)) if t == tag => {
                    return Ok(FetchHead::Done(info));
                }
                Head::Whole(Response::Tagged(t, _)) => {
                    return Err(ImapError::Protocol(format!(
                        "unexpected tag {t} for UID FETCH"
                    )));
                }
                Head::Whole(Response::Status(StatusInfo {
                    status: Status::Bye,
                    code,
                    text,
                })) => return Err(ImapError::bye(code, text)),
                Head::Whole(Response::Continuation) => {
                    return Err(unexpected_continuation("UID FETCH"));
                }
                Head::Whole(Response::Fetch(FetchData {
                    body: Some(Some(_)),
                    ..
                })) => {
                    return Err(ImapError::Protocol(
                        "BODY[] not at the end of the FETCH line".into(),
                    ));
                }
                // NIL for an expunged message, flag updates of others...
                Head::Whole(_) => {}
            }
        }
    }

    /// Up to `max` more bytes of the body, each call with a deadline of its
    /// own (a big message to a slow client is timed by progress); empty once
    /// it is all read. The end of the response is read with the last bytes.
    pub fn read_body(&mut self, body: &mut BodyStream, max: usize) -> Result<Vec<u8>, ImapError> {
        if body.finished {
            return Ok(Vec::new());
        }
        self.conn.start_deadline();
        let n = usize::try_from(body.left).unwrap_or(usize::MAX).min(max);
        // Only body pieces come from the spare buffers: they go back once
        // sent, while other literals may be kept.
        let mut bytes = buffers::take(n);
        self.conn.read_exact_into(n, &mut bytes)?;
        body.left -= n as u64;
        // Also for an empty body: its `)` and the tagged answer are read
        // before the stream counts as done.
        if body.left == 0 {
            body.finished = true;
            let tail_uid = read_body_tail(&mut self.conn)?;
            // UID 0 (never a message's): a body dropped, whoever's it is.
            if body.uid != 0
                && (tail_uid.is_some_and(|u| u != body.uid)
                    || (!body.uid_confirmed && tail_uid.is_none()))
            {
                return Err(ImapError::Protocol(format!(
                    "the body read for UID {} came without that UID",
                    body.uid
                )));
            }
            if body.last {
                let tag = std::mem::take(&mut body.tag);
                self.finish_command_for(&tag, "UID FETCH", &mut |_| Ok(()))?
                    .ok("UID FETCH")?;
            }
        }
        Ok(bytes)
    }

    /// Reads and drops what is left of a body nobody wants any more, so that
    /// the connection can carry the next command.
    pub fn drain_body(&mut self, body: &mut BodyStream) -> Result<(), ImapError> {
        // Bounded: every round reads FETCH_CHUNK bytes or ends the body.
        while !body.finished {
            buffers::give(self.read_body(body, FETCH_CHUNK as usize)?);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{GREETING, ID_GREETING, scripted, sent};
    use super::*;

    #[test]
    fn an_unanswered_id_is_read_before_a_body_fetch() {
        let (mut c, out) = scripted(&format!(
            "{ID_GREETING}A0001 OK id\r\n* 1 FETCH (UID 7 BODY[] {{2}}\r\nhi)\r\nA0002 OK done\r\n"
        ));
        c.send_client_id("192.0.2.7:4711".parse().expect("addr"))
            .expect("id");
        c.prefetch_bodies(&[7]).expect("prefetch");
        assert!(c.unanswered.is_none());
        assert!(sent(&out).ends_with("A0002 UID FETCH 7 (UID BODY.PEEK[])\r\n"));
    }

    #[test]
    fn bodies_asked_ahead_in_one_fetch_are_read_one_by_one_in_order() {
        let (mut c, out) = scripted(&format!(
            "{GREETING}* 1 FETCH (UID 5 BODY[] {{2}}\r\nab)\r\n* 2 FETCH (UID 6 BODY[] {{2}}\r\ncd)\r\n\
             * 3 FETCH (UID 8 BODY[] {{2}}\r\nef)\r\nA0001 OK\r\n\
             A0002 NO [EXPUNGEISSUED] gone\r\n"
        ));
        c.prefetch_bodies(&[6, 5, 7, 8]).expect("ahead");
        assert_eq!(sent(&out), "A0001 UID FETCH 5,6,7,8 (UID BODY.PEEK[])\r\n");
        for (uid, want) in [(5, b"ab"), (6, b"cd")] {
            let mut body = c.start_body(uid, true, 100).expect("body").expect("there");
            assert_eq!(c.read_body(&mut body, 10).expect("read"), want);
            assert!(body.is_done());
        }
        // 7 was expunged meanwhile: the answer goes on with 8, which is
        // dropped with the rest, and 7 is asked for by itself.
        assert_eq!(c.next_prefetched(), Some(7));
        let body = c.start_body(7, true, 100).expect("7");
        assert!(body.is_none(), "{body:?}");
        assert!(sent(&out).ends_with("A0002 UID FETCH 7 (UID BODY.PEEK[])\r\n"));
        assert_eq!(c.next_prefetched(), None);
    }

    #[test]
    fn a_body_asked_ahead_and_not_wanted_is_dropped_before_the_next_command() {
        let (mut c, out) = scripted(&format!(
            "{GREETING}* 1 FETCH (UID 5 BODY[] {{2}}\r\nab)\r\n* 2 FETCH (UID 6 BODY[] {{2}}\r\ncd)\r\n\
             A0001 OK\r\n* 3 FETCH (UID 9 BODY[] {{2}}\r\ngh)\r\nA0002 OK\r\n"
        ));
        c.prefetch_bodies(&[5, 6]).expect("ahead");
        let mut body = c.start_body(5, true, 100).expect("5").expect("there");
        assert_eq!(c.read_body(&mut body, 10).expect("read"), b"ab");
        // 9 instead of 6: 6 is read and dropped first.
        let mut body = c.start_body(9, false, 100).expect("9").expect("there");
        assert_eq!(c.read_body(&mut body, 10).expect("read"), b"gh");
        assert!(body.is_done());
        assert_eq!(c.next_prefetched(), None);
        assert!(sent(&out).ends_with("A0002 UID FETCH 9 (UID BODY[])\r\n"));
    }

    #[test]
    fn a_whole_body_is_read_from_one_fetch_in_pieces() {
        let (mut c, out) = scripted(&format!(
            "{GREETING}* 3 FETCH (UID 9 FLAGS (\\Seen) BODY[] {{10}}\r\n0123456789)\r\nA0001 OK done\r\n\
             * 4 FETCH (BODY[] {{4}}\r\nabcd UID 12 FLAGS (\\Seen))\r\n* 2 EXPUNGE\r\nA0002 OK done\r\n\
             * 4 FETCH (UID 13 BODY[] NIL)\r\nA0003 NO [EXPUNGEISSUED] gone\r\n\
             A0004 OK nothing\r\n\
             * 5 FETCH (UID 15 BODY[] {{0}}\r\n)\r\nA0005 OK empty\r\nA0006 OK next\r\n"
        ));
        let mut body = c.start_body(9, false, 10).expect("start").expect("a body");
        assert_eq!(body.len, 10);
        assert_eq!(c.read_body(&mut body, 4).expect("piece"), b"0123");
        assert_eq!(body.position(), 4);
        assert_eq!(c.read_body(&mut body, 4).expect("piece"), b"4567");
        assert_eq!(c.read_body(&mut body, 4).expect("piece"), b"89");
        assert!(body.is_done());
        assert_eq!(c.read_body(&mut body, 4).expect("end"), b"");
        // The UID after the literal; a piece that ends the body exactly.
        let mut body = c.start_body(12, true, 100).expect("start").expect("a body");
        assert_eq!(c.read_body(&mut body, 4).expect("piece"), b"abcd");
        assert!(body.is_done());
        assert!(c.start_body(13, true, 100).expect("start").is_none());
        assert!(c.start_body(14, true, 100).expect("start").is_none());
        // An empty body: its end is read with the (empty) first piece.
        let mut body = c.start_body(15, true, 100).expect("start").expect("a body");
        assert_eq!(c.read_body(&mut body, 4).expect("piece"), b"");
        assert!(body.is_done());
        assert!(c.start_body(16, true, 100).expect("next command").is_none());
        let text = sent(&out);
        assert!(
            text.contains(
                "A0001 UID FETCH 9 (UID BODY[])\r\nA0002 UID FETCH 12 (UID BODY.PEEK[])\r\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_body_of_another_uid_or_with_a_bad_end_is_a_protocol_error() {
        for script in [
            "* 3 FETCH (UID 8 BODY[] {2}\r\nab)\r\nA0001 OK\r\n",
            "* 3 FETCH (BODY[] {2}\r\nab UID 8)\r\nA0001 OK\r\n",
            "* 3 FETCH (BODY[] {2}\r\nab)\r\nA0001 OK\r\n",
            "* 3 FETCH (UID 9 BODY[] {2}\r\nab BODY[] {1}\r\nc)\r\nA0001 OK\r\n",
            "* 3 FETCH (UID 9 BODY[] {2}\r\nab\r\nA0001 OK\r\n",
            "* 3 FETCH (UID 9 BODY[] {2}\r\nab)\r\nA0001 NO [SERVERBUG] oops\r\n",
            "* 3 FETCH (UID 9 BODY[] {101}\r\n",
        ] {
            let (mut c, _) = scripted(&format!("{GREETING}{script}"));
            let result = c.start_body(9, true, 100).and_then(|b| {
                let mut b = b.expect("a body");
                c.read_body(&mut b, 100)
            });
            assert!(result.is_err(), "{script:?} was taken: {result:?}");
        }
    }

    #[test]
    fn bytes_from_another_offset_are_never_taken_for_the_piece() {
        let (mut c, _) = scripted(&format!(
            "{GREETING}* 1 FETCH (UID 9 BODY[]<3> {{1}}\r\nd)\r\nA0001 OK\r\n"
        ));
        assert!(matches!(
            c.fetch_piece(9, 0, 3),
            Err(ImapError::Protocol(_))
        ));
    }
}
