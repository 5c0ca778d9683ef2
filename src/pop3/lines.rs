//! Splitting the client's byte stream into command lines, without I/O.
//!
//! A line longer than the limit is reported once as `TooLong` and the rest of
//! it, up to the next line end, is dropped: an over-long line never becomes a
//! second command, and the session stays in step with the client.

#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    Complete(Vec<u8>),
    TooLong,
}

pub struct LineReader {
    buf: Vec<u8>,
    /// Maximum line length including the CRLF.
    max: usize,
    discarding: bool,
}

impl LineReader {
    pub fn new(max: usize) -> Self {
        LineReader {
            buf: Vec::new(),
            max,
            discarding: false,
        }
    }

    /// The limit for the lines from now on (the session's `line_limit`).
    pub fn set_limit(&mut self, max: usize) {
        self.max = max;
    }

    /// Part of a line has arrived (or an over-long one is being skipped).
    pub fn has_partial(&self) -> bool {
        !self.buf.is_empty() || self.discarding
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Drops everything received but not yet returned (after STLS, bytes sent
    /// before the handshake must not be read as commands).
    pub fn clear(&mut self) {
        self.buf.clear();
        self.discarding = false;
    }

    /// The next line, without its CRLF, or `None` if more input is needed.
    /// Only CRLF ends a line (RFC 1939 section 3): a lone CR or LF is part
    /// of the line, so it can never split one command into two.
    pub fn next_line(&mut self) -> Option<Line> {
        loop {
            match find_crlf(&self.buf) {
                Some(cr) => {
                    let mut line: Vec<u8> = self.buf.drain(..cr + 2).collect();
                    // Moving the rest down leaves a copy of its end behind,
                    // and the line may be a password.
                    crate::secret::wipe_spare(&mut self.buf);
                    if self.discarding {
                        self.discarding = false;
                        continue;
                    }
                    line.truncate(cr);
                    if line.len() + 2 > self.max {
                        return Some(Line::TooLong);
                    }
                    return Some(Line::Complete(line));
                }
                None => {
                    // A trailing CR may be the start of the CRLF: keep it.
                    let keep = usize::from(self.buf.last() == Some(&b'\r'));
                    if self.discarding {
                        self.buf.drain(..self.buf.len() - keep);
                        return None;
                    }
                    if self.buf.len() - keep + 2 > self.max {
                        self.buf.drain(..self.buf.len() - keep);
                        self.discarding = true;
                        return Some(Line::TooLong);
                    }
                    return None;
                }
            }
        }
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(s: &[u8]) -> Option<Line> {
        Some(Line::Complete(s.to_vec()))
    }

    #[test]
    fn pipelined_commands_come_out_in_order() {
        let mut r = LineReader::new(255);
        r.push(b"STAT\r\nLIST 1\r\nNOOP\r\nQU");
        assert_eq!(r.next_line(), complete(b"STAT"));
        assert_eq!(r.next_line(), complete(b"LIST 1"));
        assert_eq!(r.next_line(), complete(b"NOOP"));
        assert_eq!(r.next_line(), None);
        r.push(b"IT\r\n");
        assert_eq!(r.next_line(), complete(b"QUIT"));
    }

    #[test]
    fn over_long_line_is_reported_once_and_skipped_up_to_its_end() {
        let mut r = LineReader::new(255);
        r.push(&[b'A'; 300]);
        assert_eq!(r.next_line(), Some(Line::TooLong));
        r.push(&[b'B'; 300]);
        assert_eq!(r.next_line(), None);
        r.push(b"BB\r\nNOOP\r\n");
        assert_eq!(r.next_line(), complete(b"NOOP"));
    }

    #[test]
    fn over_long_line_in_one_piece_is_skipped() {
        let mut r = LineReader::new(255);
        let mut data = vec![b'x'; 400];
        data.extend_from_slice(b"\r\nSTAT\r\n");
        r.push(&data);
        assert_eq!(r.next_line(), Some(Line::TooLong));
        assert_eq!(r.next_line(), complete(b"STAT"));
    }

    #[test]
    fn limit_counts_the_crlf() {
        let mut r = LineReader::new(255);
        let mut ok = vec![b'a'; 253];
        ok.extend_from_slice(b"\r\n");
        r.push(&ok);
        assert!(matches!(r.next_line(), Some(Line::Complete(l)) if l.len() == 253));
        let mut long = vec![b'a'; 254];
        long.extend_from_slice(b"\r\n");
        r.push(&long);
        assert_eq!(r.next_line(), Some(Line::TooLong));
    }

    #[test]
    fn lone_lf_or_cr_does_not_end_a_line() {
        let mut r = LineReader::new(255);
        r.push(b"PASS secret\nA1 LOGOUT\rx\r\nSTAT\r");
        assert_eq!(r.next_line(), complete(b"PASS secret\nA1 LOGOUT\rx"));
        assert_eq!(r.next_line(), None);
        r.push(b"\n");
        assert_eq!(r.next_line(), complete(b"STAT"));
    }

    #[test]
    fn crlf_split_across_reads_while_discarding() {
        let mut r = LineReader::new(10);
        r.push(b"0123456789ABC\r");
        assert_eq!(r.next_line(), Some(Line::TooLong));
        r.push(b"\nNOOP\r\n");
        assert_eq!(r.next_line(), complete(b"NOOP"));
    }
}
