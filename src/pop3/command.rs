//! Parsing one POP3 command line (CRLF already removed) into a typed
//! `Command`. Knows nothing of state: whether a command is allowed now is the
//! session's business.

use crate::secret::Secret;

use crate::decimal::parse_u64;
use crate::logging::printable;
/// A message number as the client gave it (1-based, never 0).
pub use crate::maildrop::MsgNum;

#[derive(Debug)]
pub enum Command {
    User(Vec<u8>),
    Pass(Secret),
    Stat,
    List(Option<MsgNum>),
    Retr(MsgNum),
    Dele(MsgNum),
    Noop,
    Rset,
    Top(MsgNum, u64),
    Uidl(Option<MsgNum>),
    Quit,
    Capa,
    Stls,
    /// `AUTH` alone lists mechanisms; otherwise the mechanism name
    /// (upper-cased) and the initial response, still base64.
    Auth(Option<(String, Option<Secret>)>),
}

#[derive(Debug, PartialEq, Eq)]
pub enum ParseError {
    /// A NUL byte anywhere in the line.
    Nul,
    /// The command name is empty, not ASCII letters, or unknown.
    UnknownCommand,
    /// Arguments missing, superfluous, or not well-formed.
    Syntax(&'static str),
}

impl ParseError {
    pub fn message(&self) -> &'static str {
        match self {
            ParseError::Nul => "NUL byte in command line",
            ParseError::UnknownCommand => "Unknown command",
            ParseError::Syntax(why) => why,
        }
    }
}

const VERBS: &[&str] = &[
    "USER", "PASS", "STAT", "LIST", "RETR", "DELE", "NOOP", "RSET", "TOP", "UIDL", "QUIT", "CAPA",
    "STLS", "AUTH",
];

/// The command word of a line if it is one we know, for logs: arguments
/// (passwords, tokens) and unknown words (perhaps a SASL response the
/// client pipelined) never reach a log line.
pub fn known_verb(line: &[u8]) -> Option<&'static str> {
    let word = line.split(|&b| b == b' ').next()?;
    VERBS
        .iter()
        .copied()
        .find(|v| v.as_bytes().eq_ignore_ascii_case(word))
}

/// A command line as the debug trace may show it: known commands with their
/// arguments, except PASS's password and AUTH's initial response, which
/// are shown as their lengths; anything else (it may be a SASL response
/// sent too early) only as its length.
pub fn for_log(line: &[u8]) -> String {
    let Some(verb) = known_verb(line) else {
        return format!("<not a command, {} bytes>", line.len());
    };
    let rest = line.get(verb.len() + 1..).unwrap_or_default();
    match verb {
        "PASS" => format!("PASS <hidden, {} bytes>", rest.len()),
        "AUTH" => match rest.iter().position(|&b| b == b' ') {
            Some(i) => format!(
                "AUTH {} <hidden, {} bytes>",
                printable(&rest[..i]),
                rest.len() - i - 1
            ),
            None => format!("AUTH {}", printable(rest)),
        },
        _ if rest.is_empty() => verb.to_string(),
        _ => format!("{verb} {}", printable(rest)),
    }
}

pub fn parse(line: &[u8]) -> Result<Command, ParseError> {
    if line.contains(&0) {
        return Err(ParseError::Nul);
    }
    let (name, rest) = match line.iter().position(|&b| b == b' ') {
        Some(i) => (&line[..i], Some(&line[i + 1..])),
        None => (line, None),
    };
    if name.is_empty() || name.len() > 4 || !name.iter().all(u8::is_ascii_alphabetic) {
        return Err(ParseError::UnknownCommand);
    }
    let name = name.to_ascii_uppercase();
    match name.as_slice() {
        // USER and PASS take the rest of the line verbatim: passwords may
        // contain spaces and 8-bit bytes (RFC 1939 section 7, PASS).
        b"USER" => match rest {
            Some(user) if !user.is_empty() => Ok(Command::User(user.to_vec())),
            _ => Err(ParseError::Syntax("USER needs a user name")),
        },
        b"PASS" => match rest {
            Some(pass) if !pass.is_empty() => Ok(Command::Pass(Secret::new(pass.to_vec()))),
            _ => Err(ParseError::Syntax("PASS needs a password")),
        },
        _ => {
            let args = split_args(rest)?;
            parse_simple(&name, &args)
        }
    }
}

fn parse_simple(name: &[u8], args: &[&[u8]]) -> Result<Command, ParseError> {
    let none = |cmd: Command| {
        if args.is_empty() {
            Ok(cmd)
        } else {
            Err(ParseError::Syntax("This command takes no arguments"))
        }
    };
    match name {
        b"STAT" => none(Command::Stat),
        b"NOOP" => none(Command::Noop),
        b"RSET" => none(Command::Rset),
        b"QUIT" => none(Command::Quit),
        b"CAPA" => none(Command::Capa),
        b"STLS" => none(Command::Stls),
        b"AUTH" => match args {
            [] => Ok(Command::Auth(None)),
            [mech] => Ok(Command::Auth(Some((mechanism(mech)?, None)))),
            [mech, initial] => Ok(Command::Auth(Some((
                mechanism(mech)?,
                Some(Secret::new(initial.to_vec())),
            )))),
            _ => Err(ParseError::Syntax(
                "AUTH takes a mechanism and an optional initial response",
            )),
        },
        b"LIST" => optional_number(args).map(Command::List),
        b"UIDL" => optional_number(args).map(Command::Uidl),
        b"RETR" => one_number(args).map(Command::Retr),
        b"DELE" => one_number(args).map(Command::Dele),
        b"TOP" => match args {
            [n, lines] => Ok(Command::Top(msg_num(n)?, line_count(lines)?)),
            _ => Err(ParseError::Syntax(
                "TOP needs a message number and a line count",
            )),
        },
        _ => Err(ParseError::UnknownCommand),
    }
}

/// Arguments are separated by single spaces (RFC 1939 section 3); an empty
/// argument (two spaces, trailing space) is a syntax error, not ignored.
fn split_args(rest: Option<&[u8]>) -> Result<Vec<&[u8]>, ParseError> {
    let Some(rest) = rest else {
        return Ok(Vec::new());
    };
    let args: Vec<&[u8]> = rest.split(|&b| b == b' ').collect();
    if args.iter().any(|a| a.is_empty()) {
        return Err(ParseError::Syntax("Empty argument (extra space)"));
    }
    Ok(args)
}

/// RFC 4422 section 3.1: 1 to 20 upper-case letters, digits, `-` and `_`.
fn mechanism(arg: &[u8]) -> Result<String, ParseError> {
    let ok = arg.len() <= 20
        && arg
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_');
    if !ok {
        return Err(ParseError::Syntax("Invalid SASL mechanism name"));
    }
    Ok(String::from_utf8_lossy(arg).to_ascii_uppercase())
}

fn optional_number(args: &[&[u8]]) -> Result<Option<MsgNum>, ParseError> {
    match args {
        [] => Ok(None),
        [n] => Ok(Some(msg_num(n)?)),
        _ => Err(ParseError::Syntax("Too many arguments")),
    }
}

fn one_number(args: &[&[u8]]) -> Result<MsgNum, ParseError> {
    match args {
        [n] => msg_num(n),
        _ => Err(ParseError::Syntax(
            "This command needs exactly one message number",
        )),
    }
}

/// Digits only: no sign, no junk, no overflow (`4294967297` is not `1`), not 0.
fn msg_num(arg: &[u8]) -> Result<MsgNum, ParseError> {
    match parse_u64(arg) {
        Some(0) | None => Err(ParseError::Syntax("Invalid message number")),
        Some(n) => MsgNum::try_from(n).map_err(|_| ParseError::Syntax("Invalid message number")),
    }
}

fn line_count(arg: &[u8]) -> Result<u64, ParseError> {
    parse_u64(arg).ok_or(ParseError::Syntax("Invalid line count"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(line: &[u8]) -> ParseError {
        parse(line).expect_err("should not parse")
    }

    #[test]
    fn commands_are_case_insensitive() {
        assert!(matches!(parse(b"stat"), Ok(Command::Stat)));
        assert!(matches!(parse(b"LiSt 3"), Ok(Command::List(Some(3)))));
        assert!(matches!(parse(b"top 1 0"), Ok(Command::Top(1, 0))));
    }

    #[test]
    fn bad_message_numbers_are_refused() {
        for bad in [
            &b"LIST 0"[..],
            b"LIST -1",
            b"LIST +1",
            b"LIST abc",
            b"LIST 1x",
            b"LIST 4294967297",
            b"LIST 99999999999999999999999",
            b"RETR",
            b"RETR 1 2",
            b"LIST  1",
            b"LIST 1 ",
            b"TOP 1",
            b"TOP 1 -1",
        ] {
            assert!(matches!(err(bad), ParseError::Syntax(_)), "{:?}", bad);
        }
    }

    #[test]
    fn nul_and_eight_bit_in_command_names_are_refused() {
        assert_eq!(err(b"ST\0AT"), ParseError::Nul);
        assert_eq!(err(b"PASS a\0b"), ParseError::Nul);
        assert_eq!(err(b"ST\xc3\xa4T"), ParseError::UnknownCommand);
        assert_eq!(
            err(b"LIST \xb9"),
            ParseError::Syntax("Invalid message number")
        );
        assert_eq!(err(b""), ParseError::UnknownCommand);
        assert_eq!(err(b"XYZZY"), ParseError::UnknownCommand);
        assert_eq!(err(b"APOP a b"), ParseError::UnknownCommand);
    }

    #[test]
    fn credentials_keep_spaces_and_eight_bit_bytes() {
        match parse(b"PASS p\xc3\xa4ss w\"{5}\\") {
            Ok(Command::Pass(s)) => assert_eq!(s.expose(), b"p\xc3\xa4ss w\"{5}\\"),
            other => panic!("{other:?}"),
        }
        match parse(b"USER u LOGOUT") {
            Ok(Command::User(u)) => assert_eq!(u, b"u LOGOUT"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(err(b"USER"), ParseError::Syntax(_)));
        assert!(matches!(err(b"PASS "), ParseError::Syntax(_)));
    }

    #[test]
    fn auth_takes_a_mechanism_and_an_optional_initial_response() {
        assert!(matches!(parse(b"AUTH"), Ok(Command::Auth(None))));
        match parse(b"auth plain AGEAYg==") {
            Ok(Command::Auth(Some((m, Some(ir))))) => {
                assert_eq!((m.as_str(), ir.expose()), ("PLAIN", &b"AGEAYg=="[..]))
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(parse(b"AUTH XOAUTH2"), Ok(Command::Auth(Some((m, None)))) if m == "XOAUTH2")
        );
        assert!(matches!(
            parse(b"AUTH PL\xc3\xa4IN"),
            Err(ParseError::Syntax(_))
        ));
        assert!(matches!(
            parse(b"AUTH PLAIN a b"),
            Err(ParseError::Syntax(_))
        ));
        assert!(matches!(parse(b"STLS"), Ok(Command::Stls)));
    }

    #[test]
    fn the_trace_shows_commands_but_no_credentials() {
        assert_eq!(for_log(b"USER alice"), "USER alice");
        assert_eq!(for_log(b"pass hunter2 x"), "PASS <hidden, 9 bytes>");
        assert_eq!(
            for_log(b"AUTH PLAIN AGFsaWNlAHNlY3JldA=="),
            "AUTH PLAIN <hidden, 20 bytes>"
        );
        assert_eq!(for_log(b"AUTH LOGIN"), "AUTH LOGIN");
        assert_eq!(
            for_log(b"AGFsaWNlAHNlY3JldA=="),
            "<not a command, 20 bytes>"
        );
        assert_eq!(for_log(b"RETR 3"), "RETR 3");
        assert_eq!(for_log(b"STAT"), "STAT");
    }

    #[test]
    fn only_known_verbs_are_named_for_logs() {
        assert_eq!(known_verb(b"pass hunter2"), Some("PASS"));
        assert_eq!(known_verb(b"AGFsaWNlAHNlY3JldA=="), None);
        assert_eq!(known_verb(b""), None);
    }

    #[test]
    fn no_argument_commands_refuse_arguments() {
        assert!(matches!(err(b"STAT 1"), ParseError::Syntax(_)));
        assert!(matches!(err(b"QUIT now"), ParseError::Syntax(_)));
    }
}
