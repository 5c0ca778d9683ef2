//! For the fuzz targets (`fuzz/`): the response reader and parser on bytes
//! delivered in reads of at most `piece` bytes, and a summary of each
//! response for comparing this parser with another implementation of the
//! grammar. Compiled only with `--cfg fuzzing` (cargo fuzz); it drives the
//! parser and must not reach the network or change what the client does.

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use super::conn::{Conn, Transport};
use super::{ImapError, response};

struct Pieces {
    data: Vec<u8>,
    pos: usize,
    piece: usize,
}

impl Read for Pieces {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.piece).min(self.data.len() - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Write for Pieces {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Transport for Pieces {
    fn set_deadline(&mut self, _: Instant) {}
}

/// Every response (as its Debug text, or the error) until the input ends.
pub fn parse_responses(input: &[u8], piece: usize) -> Vec<Result<String, String>> {
    read_all(input, piece, |r| format!("{r:?}"))
}

/// What the client takes from one response, for comparing this parser
/// with another implementation of the grammar.
#[derive(Debug, PartialEq, Eq)]
pub enum Summary {
    Tagged {
        tag: String,
        status: &'static str,
    },
    Untagged {
        status: &'static str,
    },
    Continuation,
    Capability(Vec<String>),
    Exists(u32),
    Fetch {
        seq: u32,
        uid: Option<u32>,
        size: Option<u64>,
        body: Option<Option<Vec<u8>>>,
        origin: u64,
    },
    Search(Vec<u32>),
    List {
        attributes: Vec<String>,
        name: Vec<u8>,
    },
    Other,
}

/// Every response, summarised, until the input ends or the first error.
pub fn summarize(input: &[u8]) -> Vec<Result<Summary, String>> {
    read_all(input, usize::MAX, summary)
}

fn status_name(s: response::Status) -> &'static str {
    match s {
        response::Status::Ok => "OK",
        response::Status::No => "NO",
        response::Status::Bad => "BAD",
        response::Status::Bye => "BYE",
        response::Status::Preauth => "PREAUTH",
    }
}

fn summary(r: response::Response) -> Summary {
    use response::Response as R;
    match r {
        R::Continuation => Summary::Continuation,
        R::Tagged(tag, info) => Summary::Tagged {
            tag,
            status: status_name(info.status),
        },
        R::Status(info) => Summary::Untagged {
            status: status_name(info.status),
        },
        R::Capability(c) => Summary::Capability(c),
        R::Exists(n) => Summary::Exists(n),
        R::Fetch(f) => Summary::Fetch {
            seq: f.seq,
            uid: f.uid,
            size: f.size,
            body: f.body,
            origin: f.body_origin,
        },
        R::Search(uids) => Summary::Search(uids),
        R::List(l) => Summary::List {
            attributes: l.attributes,
            name: l.name,
        },
        R::Other => Summary::Other,
    }
}

fn read_all<T>(
    input: &[u8],
    piece: usize,
    each: impl Fn(response::Response) -> T,
) -> Vec<Result<T, String>> {
    let io = Pieces {
        data: input.to_vec(),
        pos: 0,
        piece: piece.max(1),
    };
    let mut conn = Conn::new(Box::new(io), Duration::from_secs(3600));
    conn.start_deadline();
    let mut out = Vec::new();
    // Bounded by the input anyway (a response is at least 2 bytes).
    for _ in 0..=input.len() / 2 {
        match response::read_response(&mut conn) {
            Err(ImapError::Closed) => break,
            Ok(r) => out.push(Ok(each(r))),
            // After a protocol error the stream is not trusted further.
            Err(e) => {
                out.push(Err(e.to_string()));
                break;
            }
        }
    }
    out
}
