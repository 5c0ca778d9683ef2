//! A minimal Redis (or Valkey) client for the cluster lock: one TCP
//! connection, optional `AUTH`, and one command at a time in RESP2, the
//! protocol every Redis and Valkey speaks. Four commands are all the lock
//! needs (`AUTH`, `SET ... NX PX`, `EVAL`, `PING`), and their replies are
//! one value each; the `redis` crate (1.8, default features off) would bring
//! some 40 crates (url, idna, ICU data) into a binary that every connection
//! starts.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::limits::{REDIS_MAX_ARRAY, REDIS_MAX_BULK, REDIS_MAX_LINE};
use crate::secret::Secret;
use crate::timeout::{connect_within, is_timeout};

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `+OK`
    Simple(String),
    /// `:1`
    Integer(i64),
    /// `$n` ... ; `None` is the null bulk string (`$-1`).
    Bulk(Option<Vec<u8>>),
    /// `*n` ... ; `None` is the null array (`*-1`).
    Array(Option<Vec<Value>>),
}

#[derive(Debug)]
pub enum RedisError {
    /// No address of the server accepted a connection in time.
    Connect(String),
    Timeout,
    Closed,
    Io(io::Error),
    /// The server answered with an error reply (`-ERR ...`, `-NOAUTH ...`).
    Server(String),
    /// Something that is not RESP, or over our limits.
    Protocol(String),
}

impl fmt::Display for RedisError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RedisError::Connect(why) => write!(f, "cannot connect: {why}"),
            RedisError::Timeout => f.write_str("no answer in time"),
            RedisError::Closed => f.write_str("the server closed the connection"),
            RedisError::Io(e) => write!(f, "I/O error: {e}"),
            RedisError::Server(text) => write!(f, "the server said: {text}"),
            RedisError::Protocol(why) => write!(f, "not a Redis reply: {why}"),
        }
    }
}

impl std::error::Error for RedisError {}

impl From<io::Error> for RedisError {
    fn from(e: io::Error) -> Self {
        if is_timeout(&e) {
            RedisError::Timeout
        } else if e.kind() == io::ErrorKind::UnexpectedEof {
            RedisError::Closed
        } else {
            RedisError::Io(e)
        }
    }
}

pub struct Redis {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Redis {
    /// Connects to `address` (`host:port`) within `timeout`; every later
    /// command must be answered within `timeout` too. With a password,
    /// authenticates at once (`AUTH password`, Redis 6 ACLs: `AUTH user
    /// password` when `user` is given).
    pub fn connect(
        address: &str,
        timeout: Duration,
        auth: Option<(&Option<String>, &Secret)>,
    ) -> Result<Redis, RedisError> {
        let addrs: Vec<_> = address
            .to_socket_addrs()
            .map_err(|e| RedisError::Connect(format!("{address}: {e}")))?
            .collect();
        let stream = connect_within(&addrs, timeout).map_err(RedisError::Connect)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        // One small command and its reply at a time: no Nagle delay.
        stream.set_nodelay(true)?;
        let writer = stream.try_clone()?;
        let mut redis = Redis {
            reader: BufReader::new(stream),
            writer,
        };
        if let Some((user, password)) = auth {
            let mut args: Vec<&[u8]> = vec![b"AUTH"];
            if let Some(user) = user {
                args.push(user.as_bytes());
            }
            args.push(password.expose());
            redis.command(&args)?;
        }
        Ok(redis)
    }

    /// Sends one command and reads its reply; an error reply is `Err`.
    pub fn command(&mut self, args: &[&[u8]]) -> Result<Value, RedisError> {
        self.writer.write_all(&encode(args))?;
        read_value(&mut self.reader, 0)
    }
}

/// A command as a RESP array of bulk strings, which may hold any bytes.
pub fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + args.iter().map(|a| a.len() + 16).sum::<usize>());
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Reads one reply. Arrays nest at most one level: no reply the lock asks
/// for is deeper.
pub fn read_value(reader: &mut impl BufRead, depth: usize) -> Result<Value, RedisError> {
    let line = read_line(reader)?;
    let (kind, rest) = line
        .split_first()
        .ok_or_else(|| RedisError::Protocol("empty line".into()))?;
    let text = || String::from_utf8_lossy(rest).into_owned();
    let number = || -> Result<i64, RedisError> {
        std::str::from_utf8(rest)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| RedisError::Protocol(format!("bad number {:?}", text())))
    };
    match kind {
        b'+' => Ok(Value::Simple(text())),
        b'-' => Err(RedisError::Server(text())),
        b':' => Ok(Value::Integer(number()?)),
        b'$' => {
            let len = number()?;
            if len < 0 {
                return Ok(Value::Bulk(None));
            }
            if len > REDIS_MAX_BULK as i64 {
                return Err(RedisError::Protocol(format!("bulk string of {len} bytes")));
            }
            let mut data = vec![0u8; len as usize + 2];
            reader.read_exact(&mut data)?;
            if !data.ends_with(b"\r\n") {
                return Err(RedisError::Protocol("bulk string without CRLF".into()));
            }
            data.truncate(len as usize);
            Ok(Value::Bulk(Some(data)))
        }
        b'*' => {
            let len = number()?;
            if len < 0 {
                return Ok(Value::Array(None));
            }
            if len > REDIS_MAX_ARRAY as i64 || depth > 0 {
                return Err(RedisError::Protocol(format!(
                    "array of {len} at depth {depth}"
                )));
            }
            (0..len)
                .map(|_| read_value(reader, depth + 1))
                .collect::<Result<Vec<_>, _>>()
                .map(|v| Value::Array(Some(v)))
        }
        other => Err(RedisError::Protocol(format!(
            "unknown reply type {:?}",
            char::from(*other)
        ))),
    }
}

/// One CRLF-terminated line, without the CRLF, at most `REDIS_MAX_LINE`.
fn read_line(reader: &mut impl BufRead) -> Result<Vec<u8>, RedisError> {
    let mut line = Vec::new();
    let read = reader
        .take(REDIS_MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut line)?;
    if read == 0 {
        return Err(RedisError::Closed);
    }
    if !line.ends_with(b"\r\n") {
        return Err(if line.len() > REDIS_MAX_LINE {
            RedisError::Protocol("line too long".into())
        } else {
            RedisError::Closed
        });
    }
    line.truncate(line.len() - 2);
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> Result<Value, RedisError> {
        read_value(&mut &bytes[..], 0)
    }

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        assert_eq!(
            encode(&[b"SET", b"k", b"a b\r\n", b"NX"]),
            b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\na b\r\n\r\n$2\r\nNX\r\n".to_vec()
        );
        assert_eq!(encode(&[b"PING"]), b"*1\r\n$4\r\nPING\r\n".to_vec());
    }

    #[test]
    fn replies_of_each_kind() {
        assert_eq!(parse(b"+OK\r\n").unwrap(), Value::Simple("OK".into()));
        assert_eq!(parse(b":1\r\n").unwrap(), Value::Integer(1));
        assert_eq!(parse(b":-2\r\n").unwrap(), Value::Integer(-2));
        assert_eq!(parse(b"$-1\r\n").unwrap(), Value::Bulk(None));
        assert_eq!(parse(b"$0\r\n\r\n").unwrap(), Value::Bulk(Some(Vec::new())));
        assert_eq!(
            parse(b"$4\r\na\r\nb\r\n").unwrap(),
            Value::Bulk(Some(b"a\r\nb".to_vec()))
        );
        assert_eq!(parse(b"*-1\r\n").unwrap(), Value::Array(None));
        assert_eq!(
            parse(b"*2\r\n:1\r\n$1\r\nx\r\n").unwrap(),
            Value::Array(Some(vec![
                Value::Integer(1),
                Value::Bulk(Some(b"x".to_vec()))
            ]))
        );
        match parse(b"-NOAUTH Authentication required.\r\n") {
            Err(RedisError::Server(t)) => assert_eq!(t, "NOAUTH Authentication required."),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn broken_or_oversized_replies_are_errors_not_panics() {
        for bad in [
            &b""[..],
            b"+OK",
            b"+OK\n",
            b"?x\r\n",
            b":x\r\n",
            b"$3\r\nab",
            b"$2\r\nabcd",
            b"$99999999999\r\n",
            b"*2\r\n*1\r\n:1\r\n:1\r\n",
            b"*99999999\r\n",
            b"\r\n",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        let long = [b"+".as_slice(), &vec![b'a'; REDIS_MAX_LINE + 10], b"\r\n"].concat();
        assert!(matches!(parse(&long), Err(RedisError::Protocol(_))));
    }
}
