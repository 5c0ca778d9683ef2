//! Reading and parsing the IMAP responses this client provokes (RFC 3501
//! section 7): status responses with codes, CAPABILITY, EXISTS, FETCH with
//! UID, RFC822.SIZE, BODY[] pieces, BODY[HEADER] and Gmail's X-GM-MSGID,
//! SEARCH, LIST with its attributes. Anything else untagged is
//! parsed far enough to be skipped. Sizes are bounded by `crate::limits`.

use std::borrow::Cow;

use super::ImapError;
use super::conn::Conn;
use crate::decimal::parse_u64;
use crate::limits::{
    FETCH_CHUNK, MAX_IMAP_LINE, MAX_IMAP_LITERAL, MAX_IMAP_NESTING, MAX_IMAP_RESPONSE, MAX_MESSAGES,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    No,
    Bad,
    Bye,
    Preauth,
}

/// A response code (`[UIDVALIDITY 1]`): its name upper-cased, and its
/// arguments as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Code {
    pub name: String,
    pub args: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusInfo {
    pub status: Status,
    pub code: Option<Code>,
    pub text: String,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct FetchData {
    /// The message sequence number the data is for.
    pub seq: u32,
    pub uid: Option<u32>,
    pub size: Option<u64>,
    /// `BODY[]` (or a piece of it): `None` if absent, `Some(None)` for NIL,
    /// which Dovecot sends for a message another session expunged.
    pub body: Option<Option<Vec<u8>>>,
    /// The `<origin>` of a partial `BODY[]<origin>`, 0 for a whole one.
    pub body_origin: u64,
    /// `BODY[HEADER]`: `None` if absent, `Some(None)` for NIL.
    pub header: Option<Option<Vec<u8>>>,
    /// Gmail's `X-GM-MSGID` (extension `X-GM-EXT-1`), a 64-bit number.
    pub gm_msgid: Option<u64>,
}

/// One `* LIST` line (RFC 3501 7.2.2, with RFC 6154's special-use
/// attributes): what a search for a mailbox by its use needs.
#[derive(Debug, PartialEq, Eq)]
pub struct ListData {
    /// The name attributes, upper-cased: `\NOSELECT`, `\TRASH`, ...
    pub attributes: Vec<String>,
    /// The name as the server wrote it, without the quotes or the
    /// literal's framing (modified UTF-7, RFC 3501 5.1.3): sent back as it
    /// is, it names this mailbox.
    pub name: Vec<u8>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Response {
    Continuation,
    Tagged(String, StatusInfo),
    Status(StatusInfo),
    Capability(Vec<String>),
    Exists(u32),
    Fetch(FetchData),
    Search(Vec<u32>),
    List(ListData),
    /// Untagged data we do not use (FLAGS, RECENT, EXPUNGE, LSUB, ...).
    Other,
}

/// One response as read off the wire: its text with each literal's `{n}`
/// marker left in place, and the literals' bytes in order.
struct Raw {
    text: Vec<u8>,
    literals: Vec<Vec<u8>>,
}

fn read_raw(conn: &mut Conn) -> Result<Raw, ImapError> {
    let first = conn.read_line(MAX_IMAP_LINE)?;
    read_raw_from(conn, first)
}

/// The rest of a response whose first line was read already.
fn read_raw_from(conn: &mut Conn, first: Vec<u8>) -> Result<Raw, ImapError> {
    let mut grammar = LiteralGrammar::of_first_line(&first);
    let Some(mut literal) = literal_after(&mut grammar, &first) else {
        // Most responses are one line (10,000 of them for a big
        // snapshot): that line is the text, without a copy.
        return Ok(Raw {
            text: first,
            literals: Vec::new(),
        });
    };
    let mut total = first.len();
    let mut text = first;
    let mut literals = Vec::new();
    loop {
        let limit = MAX_IMAP_LITERAL.max(FETCH_CHUNK as usize);
        if literal > limit || total + literal > MAX_IMAP_RESPONSE {
            return Err(ImapError::Protocol(format!(
                "literal of {literal} bytes is over the limit"
            )));
        }
        total += literal;
        literals.push(conn.read_exact(literal)?);
        let line = conn.read_line(MAX_IMAP_LINE)?;
        total += line.len();
        text.extend_from_slice(&line);
        if total > MAX_IMAP_RESPONSE {
            return Err(ImapError::Protocol("response too large".into()));
        }
        match literal_after(&mut grammar, &line) {
            Some(n) => literal = n,
            None => return Ok(Raw { text, literals }),
        }
    }
}

/// The size of the literal that `line`, the next line of a response,
/// announces, if the grammar allows one there.
fn literal_after(grammar: &mut LiteralGrammar, line: &[u8]) -> Option<usize> {
    if grammar.allows_literal_after(line) {
        literal_size(line)
    } else {
        None
    }
}

/// Where a `{n}` at the end of a line is a literal. The IMAP grammar has
/// literals only inside strings (`string`, `astring`, `nstring`); a
/// response text (`resp-text` of a status response or a continuation)
/// never holds one, so `* OK [ALERT] quota {5}` is text, and taking it for
/// a literal would swallow the next response. A status response's code
/// (`[BADCHARSET (...)]`) may hold astrings, so there a literal counts while
/// the `[` is open.
enum LiteralGrammar {
    /// Untagged data (`* 1 FETCH ...`, `* LIST ...`): strings anywhere.
    Data,
    /// `tag|* OK|NO|BAD|BYE|PREAUTH ...`; whether the code's `[` is open.
    Status { code_open: bool, first: bool },
    /// `+ ...`: text only.
    Continuation,
}

impl LiteralGrammar {
    fn of_first_line(line: &[u8]) -> Self {
        let mut words = line.splitn(3, |&b| b == b' ');
        let first = words.next().unwrap_or_default();
        if first == b"+" {
            return LiteralGrammar::Continuation;
        }
        let second = words.next().unwrap_or_default();
        let status = [&b"OK"[..], b"NO", b"BAD", b"BYE", b"PREAUTH"]
            .iter()
            .any(|w| second.eq_ignore_ascii_case(w));
        if status || first != b"*" {
            LiteralGrammar::Status {
                code_open: false,
                first: true,
            }
        } else {
            LiteralGrammar::Data
        }
    }

    /// Whether a `{n}` ending `line` (the next line of this response) is
    /// a literal.
    fn allows_literal_after(&mut self, line: &[u8]) -> bool {
        match self {
            LiteralGrammar::Data => true,
            LiteralGrammar::Continuation => false,
            LiteralGrammar::Status { code_open, first } => {
                let rest = if *first {
                    *first = false;
                    // After "tag STATUS ": the text, maybe a "[code]" first.
                    let mut words = line.splitn(3, |&b| b == b' ');
                    words.next();
                    words.next();
                    let rest = words.next().unwrap_or_default();
                    if rest.first() == Some(&b'[') {
                        *code_open = true;
                    }
                    rest
                } else {
                    line
                };
                if *code_open && rest.contains(&b']') {
                    *code_open = false;
                }
                *code_open
            }
        }
    }
}

/// `{123}` or `{123+}` at the end of a line announces a literal.
fn literal_size(line: &[u8]) -> Option<usize> {
    let body = line.strip_suffix(b"}")?;
    let open = body.iter().rposition(|&b| b == b'{')?;
    let digits = body[open + 1..]
        .strip_suffix(b"+")
        .unwrap_or(&body[open + 1..]);
    usize::try_from(parse_u64(digits)?).ok()
}

pub fn read_response(conn: &mut Conn) -> Result<Response, ImapError> {
    let raw = read_raw(conn)?;
    parse_raw(raw)
}

/// The start of a response, for a caller that streams a message body: a
/// whole response, or the head of a FETCH whose `BODY[]` literal comes next,
/// its bytes still unread (they are the caller's to read, `len` of them,
/// then `read_body_tail`).
#[derive(Debug, PartialEq, Eq)]
pub enum Head {
    Whole(Response),
    Body { uid: Option<u32>, len: u64 },
}

pub fn read_head(conn: &mut Conn) -> Result<Head, ImapError> {
    let first = conn.read_line(MAX_IMAP_LINE)?;
    if let Some(head) = body_head(&first) {
        return head.map_err(|why| ImapError::Protocol(format!("{why} in a FETCH of BODY[]")));
    }
    parse_raw(read_raw_from(conn, first)?).map(Head::Whole)
}

/// What follows a streamed `BODY[]` literal up to the FETCH's `)`: more
/// items, perhaps the UID (returned if there).
pub fn read_body_tail(conn: &mut Conn) -> Result<Option<u32>, ImapError> {
    let line = conn.read_line(MAX_IMAP_LINE)?;
    let fail = |why: &str| ImapError::Protocol(format!("{why} after a BODY[] literal"));
    if literal_size(&line).is_some() {
        return Err(fail("another literal"));
    }
    let mut p = Parser {
        text: &line,
        pos: 0,
        literals: Vec::new().into_iter(),
    };
    let mut uid = None;
    loop {
        match p.peek() {
            Some(b')') if p.pos + 1 == line.len() => return Ok(uid),
            Some(b' ') => p.pos += 1,
            None | Some(b')') => return Err(fail("no end of the FETCH")),
            _ => {
                let key = upper(p.atom().map_err(fail)?);
                p.sp().map_err(fail)?;
                if *key == b"UID"[..] {
                    uid = Some(p.number32().map_err(fail)?);
                } else if key.starts_with(b"BODY[") {
                    return Err(fail("a second body"));
                } else {
                    p.skip_value().map_err(fail)?;
                }
            }
        }
    }
}

/// `* <seq> FETCH (... BODY[] {n}` (or `BODY[]<0> {n}`) as a first line:
/// the head of a body to stream; `None` for any other line.
fn body_head(line: &[u8]) -> Option<PResult<Head>> {
    if !matches!(LiteralGrammar::of_first_line(line), LiteralGrammar::Data) {
        return None;
    }
    let len = literal_size(line)?;
    let open = line.iter().rposition(|&b| b == b'{')?;
    let before = line[..open].strip_suffix(b" ")?;
    let before_upper = before.to_ascii_uppercase();
    if !(before_upper.ends_with(b" BODY[]")
        || before_upper.ends_with(b"(BODY[]")
        || before_upper.ends_with(b"BODY[]<0>"))
    {
        return None;
    }
    let mut p = Parser {
        text: before,
        pos: 0,
        literals: Vec::new().into_iter(),
    };
    let head = (|| {
        if p.atom()? != b"*" {
            return Err("expected *");
        }
        p.sp()?;
        p.number32()?;
        p.sp()?;
        if !p.atom()?.eq_ignore_ascii_case(b"FETCH") {
            return Err("expected FETCH");
        }
        p.sp()?;
        if p.peek() != Some(b'(') {
            return Err("expected ( after FETCH");
        }
        p.pos += 1;
        let mut uid = None;
        loop {
            if p.peek() == Some(b' ') {
                p.pos += 1;
                continue;
            }
            let key = upper(p.atom()?);
            if key.starts_with(b"BODY[]") {
                if !p.at_end() {
                    return Err("items after BODY[]");
                }
                return Ok(Head::Body {
                    uid,
                    len: len as u64,
                });
            }
            p.sp()?;
            if *key == b"UID"[..] {
                uid = Some(p.number32()?);
            } else {
                p.skip_value()?;
            }
        }
    })();
    Some(head)
}

fn parse_raw(raw: Raw) -> Result<Response, ImapError> {
    let mut p = Parser {
        text: &raw.text,
        pos: 0,
        literals: raw.literals.into_iter(),
    };
    p.response().map_err(|why| {
        ImapError::Protocol(format!(
            "{why} in {:?}",
            String::from_utf8_lossy(&raw.text[..raw.text.len().min(200)])
        ))
    })
}

struct Parser<'a> {
    text: &'a [u8],
    pos: usize,
    literals: std::vec::IntoIter<Vec<u8>>,
}

type PResult<T> = Result<T, &'static str>;

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.get(self.pos).copied()
    }

    fn at_end(&self) -> bool {
        self.pos >= self.text.len()
    }

    fn sp(&mut self) -> PResult<()> {
        if self.peek() == Some(b' ') {
            self.pos += 1;
            Ok(())
        } else {
            Err("expected a space")
        }
    }

    /// An atom; `[...]` sections (as in `BODY[HEADER.FIELDS (A B)]`) are
    /// part of it, spaces and all.
    fn atom(&mut self) -> PResult<&'a [u8]> {
        let start = self.pos;
        let mut depth = 0usize;
        while let Some(b) = self.peek() {
            match b {
                b'[' => depth += 1,
                b']' if depth > 0 => depth -= 1,
                b' ' | b'(' | b')' | b'{' | b'"' if depth == 0 => break,
                _ => {}
            }
            self.pos += 1;
        }
        if self.pos == start {
            return Err("expected an atom");
        }
        Ok(&self.text[start..self.pos])
    }

    /// A tag: ASTRING-CHARs but `+` (RFC 3501 `tag`), up to the space. Not
    /// an `atom()`: a `[` in a tag opens no section.
    fn tag(&mut self) -> PResult<&'a [u8]> {
        let start = self.pos;
        while let Some(b) = self.peek() {
            if b <= b' ' || b == 0x7f || b"(){%*\"\\+".contains(&b) {
                break;
            }
            self.pos += 1;
        }
        if self.pos == start {
            return Err("expected a tag");
        }
        Ok(&self.text[start..self.pos])
    }

    fn number(&mut self) -> PResult<u64> {
        let start = self.pos;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.pos += 1;
        }
        let digits = &self.text[start..self.pos];
        if digits.is_empty() {
            return Err("expected a number");
        }
        parse_u64(digits).ok_or("number overflows")
    }

    fn number32(&mut self) -> PResult<u32> {
        u32::try_from(self.number()?).map_err(|_| "number over 32 bits")
    }

    /// A quoted string or a literal; `None` for NIL.
    fn nstring(&mut self) -> PResult<Option<Vec<u8>>> {
        match self.peek() {
            Some(b'"') => {
                self.pos += 1;
                let mut out = Vec::new();
                loop {
                    match self.peek() {
                        None => return Err("unterminated quoted string"),
                        Some(b'"') => {
                            self.pos += 1;
                            return Ok(Some(out));
                        }
                        Some(b'\\') => {
                            self.pos += 1;
                            out.push(self.peek().ok_or("unterminated quoted string")?);
                            self.pos += 1;
                        }
                        Some(b) => {
                            out.push(b);
                            self.pos += 1;
                        }
                    }
                }
            }
            Some(b'{') => {
                while self.peek().is_some_and(|b| b != b'}') {
                    self.pos += 1;
                }
                self.pos += 1;
                self.literals
                    .next()
                    .map(Some)
                    .ok_or("literal marker without literal")
            }
            _ => {
                let atom = self.atom()?;
                if atom.eq_ignore_ascii_case(b"NIL") {
                    Ok(None)
                } else {
                    Err("expected a string")
                }
            }
        }
    }

    /// Skips one value of any kind.
    /// Skips one value of any kind. Nested lists are walked with a depth
    /// counter, not recursion: a backend cannot exhaust our stack.
    fn skip_value(&mut self) -> PResult<()> {
        let mut depth = 0usize;
        loop {
            match self.peek() {
                None if depth > 0 => return Err("unterminated list"),
                Some(b'(') => {
                    depth += 1;
                    if depth > MAX_IMAP_NESTING {
                        return Err("lists nested too deeply");
                    }
                    self.pos += 1;
                    continue;
                }
                Some(b')') if depth > 0 => {
                    depth -= 1;
                    self.pos += 1;
                }
                Some(b' ') if depth > 0 => {
                    self.pos += 1;
                    continue;
                }
                Some(b'"') | Some(b'{') => {
                    self.nstring()?;
                }
                _ => {
                    self.atom()?;
                }
            }
            if depth == 0 {
                return Ok(());
            }
        }
    }

    fn rest(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.text[self.pos..]).into_owned();
        self.pos = self.text.len();
        s
    }

    /// `[CODE args] text`, both parts optional.
    fn resp_text(&mut self, status: Status) -> PResult<StatusInfo> {
        if self.peek() == Some(b' ') {
            self.pos += 1;
        }
        let mut code = None;
        if self.peek() == Some(b'[') {
            let close = self.text[self.pos..]
                .iter()
                .position(|&b| b == b']')
                .ok_or("unterminated response code")?;
            let inner =
                String::from_utf8_lossy(&self.text[self.pos + 1..self.pos + close]).into_owned();
            self.pos += close + 1;
            let (name, args) = inner.split_once(' ').unwrap_or((&inner, ""));
            code = Some(Code {
                name: name.to_ascii_uppercase(),
                args: args.to_string(),
            });
            if self.peek() == Some(b' ') {
                self.pos += 1;
            }
        }
        Ok(StatusInfo {
            status,
            code,
            text: self.rest(),
        })
    }

    fn response(&mut self) -> PResult<Response> {
        match self.peek() {
            Some(b'+') => Ok(Response::Continuation),
            Some(b'*') => {
                self.pos += 1;
                self.sp()?;
                self.untagged()
            }
            _ => {
                let tag = String::from_utf8_lossy(self.tag()?).into_owned();
                self.sp()?;
                let status = status_of(self.atom()?).ok_or("unknown status in tagged response")?;
                Ok(Response::Tagged(tag, self.resp_text(status)?))
            }
        }
    }

    fn untagged(&mut self) -> PResult<Response> {
        if self.peek().is_some_and(|b| b.is_ascii_digit()) {
            let n = self.number32()?;
            self.sp()?;
            let what = upper(self.atom()?);
            return match &*what {
                b"EXISTS" => Ok(Response::Exists(n)),
                b"FETCH" => {
                    self.sp()?;
                    let mut data = self.fetch()?;
                    data.seq = n;
                    Ok(Response::Fetch(data))
                }
                _ => Ok(Response::Other),
            };
        }
        let name = upper(self.atom()?);
        if let Some(status) = status_of(&name) {
            return Ok(Response::Status(self.resp_text(status)?));
        }
        match &*name {
            b"CAPABILITY" => Ok(Response::Capability(capability_list(&self.rest()))),
            b"SEARCH" => {
                let mut uids = Vec::new();
                while self.peek() == Some(b' ') {
                    self.pos += 1;
                    if self.at_end() {
                        break;
                    }
                    uids.push(self.number32()?);
                }
                Ok(Response::Search(uids))
            }
            b"ESEARCH" => self.esearch().map(Response::Search),
            b"LIST" => {
                self.sp()?;
                self.list().map(Response::List)
            }
            _ => Ok(Response::Other),
        }
    }

    /// `(attributes) delimiter name`, then perhaps RFC 5258's extended
    /// data (`CHILDINFO`, `OLDNAME`), which nothing here needs.
    fn list(&mut self) -> PResult<ListData> {
        if self.peek() != Some(b'(') {
            return Err("expected ( after LIST");
        }
        self.pos += 1;
        let mut attributes = Vec::new();
        loop {
            match self.peek() {
                Some(b')') => {
                    self.pos += 1;
                    break;
                }
                Some(b' ') => self.pos += 1,
                None => return Err("unterminated LIST attributes"),
                _ => {
                    let attribute = upper(self.bare()?);
                    attributes.push(String::from_utf8_lossy(&attribute).into_owned());
                }
            }
        }
        self.sp()?;
        // The hierarchy delimiter: one quoted character, or NIL.
        self.nstring()?;
        self.sp()?;
        let name = self.astring()?;
        if !self.at_end() {
            self.sp()?;
            self.skip_value()?;
        }
        Ok(ListData { attributes, name })
    }

    /// An `astring` (a mailbox name): a quoted string, a literal, or an
    /// atom. An atom is taken up to a space, a parenthesis or the end,
    /// brackets and all (`[Gmail]/Trash`): ASTRING-CHAR allows `]`, and a
    /// server's name is what we must send back, not judge.
    fn astring(&mut self) -> PResult<Vec<u8>> {
        if matches!(self.peek(), Some(b'"' | b'{')) {
            return self.nstring()?.ok_or("expected a string");
        }
        Ok(self.bare()?.to_vec())
    }

    /// A word up to a space, a parenthesis, a quote, a brace or a control
    /// character: a name attribute (`\Trash`) or an atom mailbox name.
    /// Unlike `atom()`, brackets open no section.
    fn bare(&mut self) -> PResult<&'a [u8]> {
        let start = self.pos;
        while let Some(b) = self.peek() {
            if b <= b' ' || b == 0x7f || b"(){\"".contains(&b) {
                break;
            }
            self.pos += 1;
        }
        if self.pos == start {
            return Err("expected an atom");
        }
        Ok(&self.text[start..self.pos])
    }

    /// RFC 4731: `* ESEARCH [(TAG "x")] [UID] *(SP name SP value)`; the UIDs
    /// of `ALL` (a sequence set, no `*`) are expanded, within the bound of
    /// a maildrop's size.
    fn esearch(&mut self) -> PResult<Vec<u32>> {
        let mut uids = Vec::new();
        while self.peek() == Some(b' ') {
            self.pos += 1;
            if self.peek() == Some(b'(') {
                self.skip_value()?;
                continue;
            }
            if self.at_end() {
                break;
            }
            let name = upper(self.atom()?);
            if *name == b"UID"[..] {
                continue;
            }
            self.sp()?;
            if *name != b"ALL"[..] {
                self.skip_value()?;
                continue;
            }
            let set = self.atom()?.to_vec();
            for range in set.split(|&b| b == b',') {
                let (from, to) = match range.iter().position(|&b| b == b':') {
                    Some(i) => (&range[..i], &range[i + 1..]),
                    None => (range, range),
                };
                let number = |digits: &[u8]| {
                    parse_u64(digits)
                        .and_then(|n| u32::try_from(n).ok())
                        .filter(|&n| n > 0)
                        .ok_or("bad UID in ESEARCH ALL")
                };
                let (from, to) = (number(from)?, number(to)?);
                let (low, high) = (from.min(to), from.max(to));
                if uids.len() as u64 + u64::from(high - low) >= u64::from(MAX_MESSAGES) {
                    return Err("ESEARCH ALL lists more UIDs than a maildrop can hold");
                }
                uids.extend(low..=high);
            }
        }
        Ok(uids)
    }

    fn fetch(&mut self) -> PResult<FetchData> {
        if self.peek() != Some(b'(') {
            return Err("expected ( after FETCH");
        }
        self.pos += 1;
        let mut data = FetchData::default();
        loop {
            match self.peek() {
                Some(b')') => {
                    self.pos += 1;
                    return Ok(data);
                }
                Some(b' ') => self.pos += 1,
                None => return Err("unterminated FETCH"),
                _ => {
                    let key = upper(self.atom()?);
                    self.sp()?;
                    // An item given twice with two values leaves no way
                    // to tell which is true: a wrong size or body is worse
                    // than a clear error.
                    match &*key {
                        b"UID" => set_once(
                            &mut data.uid,
                            self.number32()?,
                            "FETCH gives UID twice, with different values",
                        )?,
                        b"RFC822.SIZE" => set_once(
                            &mut data.size,
                            self.number()?,
                            "FETCH gives RFC822.SIZE twice, with different values",
                        )?,
                        b"X-GM-MSGID" => set_once(
                            &mut data.gm_msgid,
                            self.number()?,
                            "FETCH gives X-GM-MSGID twice, with different values",
                        )?,
                        // Whole, or the start of a longer one (`<0>`).
                        b"BODY[HEADER]" | b"BODY[HEADER]<0>" => {
                            let header = self.nstring()?;
                            set_once(
                                &mut data.header,
                                header,
                                "FETCH gives BODY[HEADER] twice, with different values",
                            )?;
                        }
                        k if k.starts_with(b"BODY[]") => {
                            let origin = partial_origin(&k[6..])?;
                            let body = self.nstring()?;
                            if data.body.is_some()
                                && (data.body_origin != origin || data.body.as_ref() != Some(&body))
                            {
                                return Err("FETCH gives BODY[] twice, with different values");
                            }
                            data.body_origin = origin;
                            data.body = Some(body);
                        }
                        _ => self.skip_value()?,
                    }
                }
            }
        }
    }
}

fn set_once<T: PartialEq>(slot: &mut Option<T>, value: T, conflict: &'static str) -> PResult<()> {
    match slot {
        Some(old) if *old != value => Err(conflict),
        _ => {
            *slot = Some(value);
            Ok(())
        }
    }
}

/// `<123>` after `BODY[]`: the offset the piece starts at; nothing: 0.
fn partial_origin(suffix: &[u8]) -> PResult<u64> {
    if suffix.is_empty() {
        return Ok(0);
    }
    suffix
        .strip_prefix(b"<")
        .and_then(|s| s.strip_suffix(b">"))
        .and_then(parse_u64)
        .ok_or("bad partial origin after BODY[]")
}

fn status_of(word: &[u8]) -> Option<Status> {
    match &*upper(word) {
        b"OK" => Some(Status::Ok),
        b"NO" => Some(Status::No),
        b"BAD" => Some(Status::Bad),
        b"BYE" => Some(Status::Bye),
        b"PREAUTH" => Some(Status::Preauth),
        _ => None,
    }
}

/// A keyword in upper case, for matching; borrowed when it already is,
/// as servers send them: no allocation per response line.
fn upper(word: &[u8]) -> Cow<'_, [u8]> {
    if word.iter().any(u8::is_ascii_lowercase) {
        Cow::Owned(word.to_ascii_uppercase())
    } else {
        Cow::Borrowed(word)
    }
}

pub fn capability_list(text: &str) -> Vec<String> {
    text.split_ascii_whitespace()
        .map(str::to_ascii_uppercase)
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::imap::conn::Transport;
    use crate::test_support::Rng;
    use std::io::{self, Cursor, Read, Write};
    use std::time::Duration;

    /// A scripted peer: reads come from `input`, writes are recorded.
    pub struct Script {
        pub input: Cursor<Vec<u8>>,
        pub output: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    }

    impl Read for Script {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.input.read(buf)
        }
    }
    impl Write for Script {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.output
                .lock()
                .map_err(|_| io::Error::other("poisoned"))?
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    impl Transport for Script {
        fn set_deadline(&mut self, _: std::time::Instant) {}
    }

    fn parse_all(input: &[u8]) -> Vec<Result<Response, String>> {
        let script = Script {
            input: Cursor::new(input.to_vec()),
            output: Default::default(),
        };
        let mut conn = Conn::new(Box::new(script), Duration::from_secs(5));
        let mut out = Vec::new();
        for _ in 0..100 {
            match read_response(&mut conn) {
                Err(ImapError::Closed) => break,
                r => out.push(r.map_err(|e| e.to_string())),
            }
        }
        out
    }

    #[test]
    fn status_responses_with_codes() {
        let r = parse_all(b"* OK [UIDVALIDITY 3857529045] UIDs valid\r\nA1 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n* BYE\r\n");
        assert_eq!(
            r[0],
            Ok(Response::Status(StatusInfo {
                status: Status::Ok,
                code: Some(Code {
                    name: "UIDVALIDITY".into(),
                    args: "3857529045".into()
                }),
                text: "UIDs valid".into()
            }))
        );
        match &r[1] {
            Ok(Response::Tagged(tag, info)) => {
                assert_eq!(tag, "A1");
                assert_eq!(info.status, Status::No);
                assert_eq!(
                    info.code.as_ref().map(|c| c.name.as_str()),
                    Some("AUTHENTICATIONFAILED")
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            &r[2],
            Ok(Response::Status(StatusInfo {
                status: Status::Bye,
                ..
            }))
        ));
    }

    #[test]
    fn fetch_of_headers_and_gmail_message_ids() {
        let r = parse_all(
            b"* 1 FETCH (UID 4 BODY[HEADER] {12}\r\nSubject: x\r\n)\r\n\
              * 2 FETCH (X-GM-MSGID 1152921504606846977 UID 5)\r\n\
              * 3 FETCH (UID 6 BODY[HEADER]<0> NIL)\r\n\
              * 4 FETCH (UID 7 X-GM-MSGID 1 X-GM-MSGID 2)\r\n\
              * 5 FETCH (UID 8 X-GM-MSGID 18446744073709551616)\r\n",
        );
        let Ok(Response::Fetch(f)) = &r[0] else {
            panic!("{r:?}");
        };
        assert_eq!(
            (f.uid, f.header.clone()),
            (Some(4), Some(Some(b"Subject: x\r\n".to_vec())))
        );
        let Ok(Response::Fetch(f)) = &r[1] else {
            panic!("{r:?}");
        };
        assert_eq!((f.uid, f.gm_msgid), (Some(5), Some(0x1000_0000_0000_0001)));
        let Ok(Response::Fetch(f)) = &r[2] else {
            panic!("{r:?}");
        };
        assert_eq!(f.header, Some(None));
        // Two values for one item, and a number over 64 bits, are refused.
        assert!(r[3].is_err() && r[4].is_err(), "{r:?}");
    }

    #[test]
    fn a_tag_is_read_up_to_the_space_even_with_a_bracket_in_it() {
        // Found by the imap_codec_agrees fuzz target: `[` in a tag was taken
        // for a section and the tag ran on to the next `]`.
        let r = parse_all(b"[RFC82.a8 NO &TRYCREATE] no such mailbox\r\n");
        let Ok(Response::Tagged(tag, info)) = &r[0] else {
            panic!("{r:?}");
        };
        assert_eq!((tag.as_str(), info.status), ("[RFC82.a8", Status::No));
        assert!(parse_all(b" NO x\r\n")[0].is_err());
    }

    #[test]
    fn esearch_all_is_expanded_and_bounded() {
        let r = parse_all(
            b"* ESEARCH (TAG \"A0003\") UID ALL 1:3,7,10:9\r\n* ESEARCH (TAG \"A0004\") UID\r\n\
              * ESEARCH (TAG \"A5\") UID COUNT 2 ALL 4\r\n",
        );
        assert_eq!(r[0], Ok(Response::Search(vec![1, 2, 3, 7, 9, 10])));
        assert_eq!(r[1], Ok(Response::Search(vec![])));
        assert_eq!(r[2], Ok(Response::Search(vec![4])));
        let r = parse_all(b"* ESEARCH UID ALL 1:4294967295\r\n* ESEARCH UID ALL 1:*\r\n");
        assert!(
            matches!(&r[0], Err(why) if why.contains("more UIDs")),
            "{r:?}"
        );
        let r = parse_all(b"* ESEARCH UID ALL 0:3\r\n");
        assert!(
            matches!(&r[0], Err(why) if why.contains("bad UID")),
            "{r:?}"
        );
    }

    #[test]
    fn a_fetch_item_given_twice_with_two_values_is_a_protocol_error() {
        // Found by the imap_codec_agrees fuzz target: which body is true?
        let r = parse_all(b"* 2 FETCH (UID 2 BODY[] {0}\r\n BODY[] {5}\r\nabcde)\r\n");
        assert!(matches!(&r[0], Err(why) if why.contains("BODY[] twice")));
        let r = parse_all(b"* 2 FETCH (UID 2 RFC822.SIZE 10 UID 3)\r\n");
        assert!(matches!(&r[0], Err(why) if why.contains("UID twice")));
        let r = parse_all(b"* 2 FETCH (RFC822.SIZE 10 UID 2 RFC822.SIZE 11)\r\n");
        assert!(matches!(&r[0], Err(why) if why.contains("SIZE twice")));
        // The same value twice is only redundant.
        let r = parse_all(b"* 2 FETCH (UID 2 RFC822.SIZE 10 UID 2)\r\n");
        assert!(matches!(&r[0], Ok(Response::Fetch(f)) if f.uid == Some(2) && f.size == Some(10)));
    }

    #[test]
    fn fetch_with_literal_body_and_extra_items() {
        let r = parse_all(
            b"* 3 FETCH (UID 17 FLAGS (\\Seen $X) BODY[]<0> {7}\r\na\r\n\"{1})\r\n* 4 FETCH (RFC822.SIZE 1234 UID 18)\r\n",
        );
        assert_eq!(
            r[0],
            Ok(Response::Fetch(FetchData {
                seq: 3,
                uid: Some(17),
                size: None,
                body: Some(Some(b"a\r\n\"{1}".to_vec())),
                body_origin: 0,
                ..Default::default()
            }))
        );
        assert_eq!(
            r[1],
            Ok(Response::Fetch(FetchData {
                seq: 4,
                uid: Some(18),
                size: Some(1234),
                body: None,
                body_origin: 0,
                ..Default::default()
            }))
        );
    }

    #[test]
    fn fetch_with_quoted_and_nil_body() {
        let r =
            parse_all(b"* 1 FETCH (UID 1 BODY[]<300> \"\")\r\n* 1 FETCH (UID 1 BODY[]<0> NIL)\r\n");
        assert_eq!(
            r[0],
            Ok(Response::Fetch(FetchData {
                seq: 1,
                uid: Some(1),
                size: None,
                body: Some(Some(Vec::new())),
                body_origin: 300,
                ..Default::default()
            }))
        );
        assert_eq!(
            r[1],
            Ok(Response::Fetch(FetchData {
                seq: 1,
                uid: Some(1),
                size: None,
                body: Some(None),
                body_origin: 0,
                ..Default::default()
            }))
        );
    }

    #[test]
    fn capability_exists_search_and_others() {
        let r = parse_all(b"* CAPABILITY IMAP4rev1 UIDPLUS AUTH=PLAIN\r\n* 5 EXISTS\r\n* SEARCH 2 9\r\n* SEARCH\r\n* FLAGS (\\Seen)\r\n+ go ahead\r\n");
        assert_eq!(
            r[0],
            Ok(Response::Capability(vec![
                "IMAP4REV1".into(),
                "UIDPLUS".into(),
                "AUTH=PLAIN".into()
            ]))
        );
        assert_eq!(r[1], Ok(Response::Exists(5)));
        assert_eq!(r[2], Ok(Response::Search(vec![2, 9])));
        assert_eq!(r[3], Ok(Response::Search(vec![])));
        assert_eq!(r[4], Ok(Response::Other));
        assert_eq!(r[5], Ok(Response::Continuation));
    }

    #[test]
    fn list_lines_give_the_attributes_and_the_name_as_sent() {
        let name = "Gel&APY-schte Elemente";
        let input = format!(
            "* LIST (\\HasNoChildren \\Trash) \".\" Trash\r\n\
             * LIST () \"/\" \"[Gmail]/Papierkorb\"\r\n\
             * LIST (\\Noselect) NIL \"a \\\"quote\\\" and \\\\\"\r\n\
             * list (\\trash) \"/\" {{{}}}\r\n{name}\r\n\
             * LIST (\\Sent) \"/\" [Gmail]/Sent]x\r\n\
             * LIST (\\HasChildren) \"/\" \"INBOX\" (\"CHILDINFO\" (\"SUBSCRIBED\"))\r\n",
            name.len()
        );
        let r = parse_all(input.as_bytes());
        let list = |attributes: &[&str], name: &[u8]| {
            Ok(Response::List(ListData {
                attributes: attributes.iter().map(|a| a.to_string()).collect(),
                name: name.to_vec(),
            }))
        };
        assert_eq!(r[0], list(&["\\HASNOCHILDREN", "\\TRASH"], b"Trash"));
        assert_eq!(r[1], list(&[], b"[Gmail]/Papierkorb"));
        assert_eq!(r[2], list(&["\\NOSELECT"], b"a \"quote\" and \\"));
        assert_eq!(r[3], list(&["\\TRASH"], name.as_bytes()));
        assert_eq!(r[4], list(&["\\SENT"], b"[Gmail]/Sent]x"));
        assert_eq!(r[5], list(&["\\HASCHILDREN"], b"INBOX"));
    }

    #[test]
    fn a_broken_list_line_is_a_protocol_error() {
        for junk in [
            &b"* LIST \\Trash \"/\" x\r\n"[..],
            b"* LIST (\\Trash \"/\" x\r\n",
            b"* LIST (\\Trash) \"/\"\r\n",
            b"* LIST (\\Trash) \"/\" \r\n",
            b"* LIST (\\Trash) \"/\" (x)\r\n",
            b"* LIST (\\Trash) \"/\" \"open\r\n",
        ] {
            assert!(parse_all(junk)[0].is_err(), "{junk:?}");
        }
    }

    #[test]
    fn garbage_is_a_protocol_error_not_a_panic() {
        for junk in [
            &b"\x00\xff garbage\r\n"[..],
            b"* 1 FETCH UID 1\r\n",
            b"* 1 FETCH (UID x)\r\n",
            b"* 1 FETCH (UID 1 BODY[] \"unterminated)\r\n",
            b"* 99999999999 EXISTS\r\n",
            b"A1 MAYBE\r\n",
            b"* OK [UIDVALIDITY 1\r\n",
            b"* 1 FETCH (UID 1 BODY[]<x> NIL)\r\n",
            b"* 1 FETCH (UID 1 BODY[]<99999999999999999999> NIL)\r\n",
        ] {
            let r = parse_all(junk);
            assert!(
                r.iter().any(Result::is_err),
                "{:?} gave {:?}",
                String::from_utf8_lossy(junk),
                r
            );
        }
    }

    #[test]
    fn deeply_nested_lists_are_an_error_not_a_stack_overflow() {
        let mut line = b"* 1 FETCH (UID 1 X ".to_vec();
        line.extend(std::iter::repeat_n(b'(', 500_000));
        line.extend_from_slice(b"\r\n");
        assert!(matches!(&parse_all(&line)[0], Err(e) if e.contains("nested")));
        let r = parse_all(b"* 1 FETCH (X ((a) (b (c))) Y \"q\" UID 7)\r\n");
        assert_eq!(
            r[0],
            Ok(Response::Fetch(FetchData {
                seq: 1,
                uid: Some(7),
                size: None,
                body: None,
                body_origin: 0,
                ..Default::default()
            }))
        );
    }

    #[test]
    fn oversized_literal_is_refused_before_reading_it() {
        let r = parse_all(b"* 1 FETCH (BODY[] {999999999}\r\n");
        assert!(matches!(&r[0], Err(e) if e.contains("over the limit")));
    }

    #[test]
    fn random_responses_never_panic() {
        // Pieces of real responses glued at random, with random bytes between.
        const PIECES: &[&[u8]] = &[
            b"* ",
            b"A0001 ",
            b"OK ",
            b"NO ",
            b"BAD ",
            b"BYE ",
            b"[",
            b"]",
            b"(",
            b")",
            b"\"",
            b"\\",
            b"{5}\r\n",
            b"{0}\r\n",
            b"{99999999999}\r\n",
            b"{3+}\r\n",
            b"NIL",
            b"FETCH ",
            b"UID ",
            b"RFC822.SIZE ",
            b"BODY[]<0> ",
            b"EXISTS",
            b"SEARCH ",
            b"CAPABILITY ",
            b"UIDVALIDITY ",
            b"12",
            b"4294967296",
            b" ",
            b"\r\n",
            b"\n",
            b"\r",
            b"+ ",
            b"\x00",
            b"\xff",
        ];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..3000 {
            let mut input = Vec::new();
            for _ in 0..rng.below(40) {
                if rng.below(4) == 0 {
                    input.push(rng.next() as u8);
                } else {
                    input.extend_from_slice(PIECES[rng.below(PIECES.len())]);
                }
            }
            input.extend_from_slice(b"\r\n");
            let _ = parse_all(&input);
        }
    }

    #[test]
    fn a_brace_number_in_a_response_text_is_text_not_a_literal() {
        let input = b"* OK [ALERT] quota {5}\r\nA0001 NO [OVERQUOTA] over {3}\r\n+ go on {2}\r\n\
            * BYE bye {4}\r\n* 1 FETCH (UID 7 BODY[] {5}\r\nhello)\r\n";
        let r = parse_all(input);
        assert_eq!(r.len(), 5, "{r:?}");
        assert!(
            matches!(&r[0], Ok(Response::Status(i)) if i.text == "quota {5}"),
            "{:?}",
            r[0]
        );
        assert!(
            matches!(&r[1], Ok(Response::Tagged(t, i)) if t == "A0001" && i.text == "over {3}"),
            "{:?}",
            r[1]
        );
        assert_eq!(r[2], Ok(Response::Continuation));
        assert!(matches!(&r[4], Ok(Response::Fetch(f)) if f.body == Some(Some(b"hello".to_vec()))));
    }
}
