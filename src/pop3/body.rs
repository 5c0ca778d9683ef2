//! Turning message bytes, as they arrive from the backend in pieces, into the
//! body of a POP3 multi-line reply: bare LF becomes CRLF, a line starting with
//! `.` gets a second `.`, and for TOP the output stops after the header, the
//! blank line and the requested number of body lines. Other bytes (8-bit,
//! UTF-8, bare CR) pass untouched. Works on any split of the input.

pub struct BodyEncoder {
    at_line_start: bool,
    prev_cr: bool,
    /// `None` for RETR; for TOP, how many body lines are still wanted.
    top: Option<TopState>,
    done: bool,
}

struct TopState {
    in_header: bool,
    /// Whether the current header line is empty so far (the blank line).
    line_empty: bool,
    lines_left: u64,
}

impl BodyEncoder {
    pub fn retr() -> Self {
        BodyEncoder {
            at_line_start: true,
            prev_cr: false,
            top: None,
            done: false,
        }
    }

    pub fn top(lines: u64) -> Self {
        BodyEncoder {
            top: Some(TopState {
                in_header: true,
                line_empty: true,
                lines_left: lines,
            }),
            ..BodyEncoder::retr()
        }
    }

    /// True once TOP has all it needs: the caller may stop fetching.
    pub fn is_done(&self) -> bool {
        self.done
    }

    pub fn push(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        out.reserve(input.len() + input.len() / 64);
        if self.top.is_none() {
            return self.push_whole(input, out);
        }
        // Line by line: runs of bytes are copied whole, which keeps a large
        // RETR cheap; only line starts and ends need a look.
        while !input.is_empty() && !self.done {
            if self.at_line_start && input[0] == b'.' {
                out.push(b'.');
            }
            let (segment, ends_line) = match input.iter().position(|&b| b == b'\n') {
                Some(lf) => (&input[..lf], true),
                None => (input, false),
            };
            out.extend_from_slice(segment);
            if let Some(top) = &mut self.top {
                top.line_empty &= segment.iter().all(|&b| b == b'\r');
            }
            if ends_line {
                let cr_before = segment.last().map_or(self.prev_cr, |&b| b == b'\r');
                if !cr_before {
                    out.push(b'\r');
                }
                out.push(b'\n');
                self.at_line_start = true;
                self.prev_cr = false;
                self.end_of_line();
                input = &input[segment.len() + 1..];
            } else {
                if let Some(&last) = segment.last() {
                    self.prev_cr = last == b'\r';
                    self.at_line_start = false;
                }
                input = &[];
            }
        }
    }

    /// RETR: nothing to count, so only the line ends matter, found with a
    /// vectorised search; the runs between the few that need a change (a
    /// bare LF, a line starting with `.`) are copied whole. Most messages
    /// are copied in one piece.
    fn push_whole(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let Some(&last) = input.last() else { return };
        if self.at_line_start && input[0] == b'.' {
            out.push(b'.');
        }
        let mut run = 0;
        for lf in memchr::memchr_iter(b'\n', input) {
            let cr_before = match lf.checked_sub(1) {
                Some(before) => input[before] == b'\r',
                None => self.prev_cr,
            };
            if !cr_before {
                out.extend_from_slice(&input[run..lf]);
                out.extend_from_slice(b"\r\n");
                run = lf + 1;
            }
            if input.get(lf + 1) == Some(&b'.') {
                out.extend_from_slice(&input[run..lf + 1]);
                out.push(b'.');
                run = lf + 1;
            }
        }
        out.extend_from_slice(&input[run..]);
        self.at_line_start = last == b'\n';
        self.prev_cr = last == b'\r';
    }

    fn end_of_line(&mut self) {
        let Some(top) = &mut self.top else { return };
        if top.in_header {
            if top.line_empty {
                top.in_header = false;
                self.done = top.lines_left == 0;
            }
            top.line_empty = true;
        } else {
            top.lines_left = top.lines_left.saturating_sub(1);
            self.done = top.lines_left == 0;
        }
    }

    /// Ends the body: a last line without line end gets CRLF, then the
    /// terminating `.` line.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.at_line_start {
            if !self.prev_cr {
                out.push(b'\r');
            }
            out.push(b'\n');
        }
        out.extend_from_slice(b".\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(mut enc: BodyEncoder, pieces: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in pieces {
            enc.push(p, &mut out);
        }
        enc.finish(&mut out);
        out
    }

    #[test]
    fn dots_are_stuffed_and_bare_lf_becomes_crlf() {
        let out = encode(BodyEncoder::retr(), &[b"a\n.\n..x\r\n.y"]);
        assert_eq!(out, b"a\r\n..\r\n...x\r\n..y\r\n.\r\n");
    }

    #[test]
    fn eight_bit_and_bare_cr_pass_untouched() {
        let out = encode(BodyEncoder::retr(), &[b"S\xe4tze \xc3\xa4\rx\r\n"]);
        assert_eq!(out, b"S\xe4tze \xc3\xa4\rx\r\n.\r\n");
    }

    #[test]
    fn any_split_gives_the_same_output() {
        let msg: &[u8] = b"H: v\r\n\r\n.a\nb\r\n..\r\nlast";
        let whole = encode(BodyEncoder::retr(), &[msg]);
        for i in 0..msg.len() {
            for j in i..msg.len() {
                let out = encode(BodyEncoder::retr(), &[&msg[..i], &msg[i..j], &msg[j..]]);
                assert_eq!(out, whole, "split at {i},{j}");
            }
        }
    }

    #[test]
    fn top_stops_after_header_blank_line_and_n_lines() {
        let msg: &[u8] = b"A: 1\r\nB: 2\r\n\r\nl1\r\n.l2\r\nl3\r\n";
        assert_eq!(
            encode(BodyEncoder::top(0), &[msg]),
            b"A: 1\r\nB: 2\r\n\r\n.\r\n"
        );
        assert_eq!(
            encode(BodyEncoder::top(2), &[msg]),
            b"A: 1\r\nB: 2\r\n\r\nl1\r\n..l2\r\n.\r\n"
        );
        assert_eq!(
            encode(BodyEncoder::top(99), &[msg]),
            encode(BodyEncoder::retr(), &[msg])
        );
        let mut enc = BodyEncoder::top(1);
        let mut out = Vec::new();
        enc.push(msg, &mut out);
        assert!(enc.is_done());
    }

    #[test]
    fn top_of_message_without_body_sends_everything() {
        let msg: &[u8] = b"A: 1\r\nB: 2";
        assert_eq!(
            encode(BodyEncoder::top(0), &[msg]),
            b"A: 1\r\nB: 2\r\n.\r\n"
        );
    }

    #[test]
    fn top_with_lf_only_message() {
        let msg: &[u8] = b"A: 1\n\nx\ny\n";
        assert_eq!(
            encode(BodyEncoder::top(1), &[msg]),
            b"A: 1\r\n\r\nx\r\n.\r\n"
        );
    }

    /// The rules one byte at a time: the obvious version, to check the
    /// line-at-a-time one against.
    fn reference(input: &[u8], top: Option<u64>) -> Vec<u8> {
        let mut out = Vec::new();
        let (mut at_start, mut prev_cr) = (true, false);
        let (mut in_header, mut line_empty, mut left) = (true, true, top.unwrap_or(0));
        for &b in input {
            if at_start && b == b'.' {
                out.push(b'.');
            }
            if b == b'\n' {
                if !prev_cr {
                    out.push(b'\r');
                }
                out.push(b'\n');
                at_start = true;
                prev_cr = false;
                if top.is_some() {
                    if in_header {
                        if line_empty {
                            in_header = false;
                            if left == 0 {
                                break;
                            }
                        }
                        line_empty = true;
                    } else {
                        left -= 1;
                        if left == 0 {
                            break;
                        }
                    }
                }
                continue;
            }
            out.push(b);
            at_start = false;
            prev_cr = b == b'\r';
            if b != b'\r' {
                line_empty = false;
            }
        }
        if !at_start {
            if !prev_cr {
                out.push(b'\r');
            }
            out.push(b'\n');
        }
        out.extend_from_slice(b".\r\n");
        out
    }

    #[test]
    fn line_at_a_time_matches_byte_at_a_time_on_random_input() {
        use crate::test_support::Rng;
        let mut rng = Rng(0x1234_5678_9abc_def1);
        for _ in 0..5000 {
            let len = rng.below(40);
            let input: Vec<u8> = (0..len).map(|_| b".\r\nab"[rng.below(5)]).collect();
            let top = match rng.below(3) {
                0 => None,
                _ => Some(rng.below(4) as u64),
            };
            let cut1 = rng.below(len + 1);
            let cut2 = cut1 + rng.below(len - cut1 + 1);
            let enc = match top {
                None => BodyEncoder::retr(),
                Some(n) => BodyEncoder::top(n),
            };
            let got = encode(enc, &[&input[..cut1], &input[cut1..cut2], &input[cut2..]]);
            assert_eq!(
                got,
                reference(&input, top),
                "input {input:?} top {top:?} cuts {cut1},{cut2}"
            );
        }
    }
}
