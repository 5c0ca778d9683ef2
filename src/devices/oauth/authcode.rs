//! `pop3server --oauth-consent NAME` for a `grant = "authorization_code"`
//! source: the one-time browser consent (RFC 6749 section 4.1), the way
//! Google allows for the mail scope. It owns the sign-in's secrets (a PKCE
//! verifier, RFC 7636 S256, and a random `state`), the authorization
//! address it prints, the wait for the answer (the browser's redirect to a
//! loopback port, RFC 8252, or the address the browser ended on, pasted on
//! standard input when the browser runs elsewhere), the answer's checks,
//! and the exchange of the code for the first tokens. Storing them, and
//! every refresh afterwards, is the store's.

use std::io::{BufRead, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::sync::mpsc::{self, Sender};
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom, SystemRandom};

use super::TokenError;
use super::http::{self, Answer, TokenAnswer};
use super::store::Store;
use crate::devices::oauth::settings::{OAuthGrant, OAuthSource};
use crate::limits::{
    MAX_REDIRECT_CONNECTIONS, MAX_REDIRECT_HEAD, MAX_REDIRECT_LINE, REDIRECT_REQUEST_TIMEOUT,
    REDIRECT_WAIT_POLL,
};
use crate::secret::{Secret, WipeOnDrop};

/// RFC 7636 section 7.1: 32 random octets make a 43-character verifier.
const VERIFIER_BYTES: usize = 32;

/// 128 bits: not guessable by whoever else can reach the port.
const STATE_BYTES: usize = 16;

/// `pop3server --oauth-consent NAME` for an authorization_code source.
pub fn run(
    source: &OAuthSource,
    store: &Store,
    out: &mut dyn Write,
    input: Box<dyn BufRead + Send>,
    timeout: Duration,
) -> Result<(), TokenError> {
    let name = &source.name;
    let OAuthGrant::AuthorizationCode {
        authorization_url,
        redirect_port,
    } = &source.grant
    else {
        return Err(TokenError::Setup(format!(
            "[oauth.{name}] is grant {}, not authorization_code",
            source.grant_name()
        )));
    };
    let Some(token_url) = &source.token_url else {
        return Err(TokenError::Setup(format!(
            "[oauth.{name}] has no token_url"
        )));
    };
    // Before the sign-in: an unreadable secret file must not waste it.
    let secret = http::client_secret(source)?;
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, redirect_port.unwrap_or(0))).map_err(|e| {
            TokenError::Setup(format!(
                "[oauth.{name}]: cannot listen on 127.0.0.1:{} for the sign-in's redirect: {e}",
                redirect_port.unwrap_or(0)
            ))
        })?;
    let port = listener
        .local_addr()
        .map_err(|e| TokenError::Setup(format!("[oauth.{name}]: the redirect port: {e}")))?
        .port();
    let sign_in = SignIn::new(name, port)?;

    let _ = writeln!(
        out,
        "To authorise [oauth.{name}], open this address in a browser and sign in:\n\n{}\n",
        sign_in.address(authorization_url, &source.client_id, &source.scope)
    );
    let _ = writeln!(
        out,
        "The browser is then sent to {uri}, where this command answers it.\n\
         If the browser runs on another machine, either\n\
         \x20 - forward the port before you sign in: ssh -L {port}:127.0.0.1:{port} to this host, or\n\
         \x20 - copy the address the browser ends on (its page will not load) and paste it here.",
        uri = sign_in.redirect_uri
    );
    let _ = writeln!(out, "Waiting up to {}...", seconds(timeout));
    let _ = out.flush();

    let code = wait_for_code(name, &listener, input, &sign_in.state, timeout)?;
    drop(listener);
    let answer = exchange(source, token_url, &code, &sign_in, secret.as_ref())?;
    store.store_consent(answer)?;
    let _ = writeln!(
        out,
        "Authorised: tokens stored in {}",
        store.path().display()
    );
    Ok(())
}

/// What one sign-in must carry back (`state`), what proves that the code
/// is ours (`verifier`), and where the browser is sent.
struct SignIn {
    state: String,
    verifier: Secret,
    redirect_uri: String,
}

impl SignIn {
    fn new(name: &str, port: u16) -> Result<Self, TokenError> {
        let rng = SystemRandom::new();
        let random = |len: usize| {
            let mut bytes = WipeOnDrop(vec![0; len]);
            rng.fill(&mut bytes).map_err(|_| {
                TokenError::Setup(format!("[oauth.{name}]: the system gave no random numbers"))
            })?;
            Ok::<_, TokenError>(URL_SAFE_NO_PAD.encode(&*bytes))
        };
        Ok(SignIn {
            state: random(STATE_BYTES)?,
            verifier: Secret::new(random(VERIFIER_BYTES)?.into_bytes()),
            redirect_uri: format!("http://127.0.0.1:{port}/"),
        })
    }

    /// The authorization request (RFC 6749 section 4.1.1). `access_type`
    /// and `prompt` make Google send a refresh token every time; Microsoft
    /// ignores the first and accepts the second.
    fn address(&self, authorization_url: &str, client_id: &str, scope: &str) -> String {
        let challenge = challenge(&self.verifier);
        let params = [
            ("response_type", "code"),
            ("client_id", client_id),
            ("redirect_uri", &self.redirect_uri),
            ("scope", scope),
            ("state", &self.state),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
            ("access_type", "offline"),
            ("prompt", "consent"),
        ];
        let mut address = authorization_url.to_string();
        if !address.ends_with(['?', '&']) {
            address.push(if address.contains('?') { '&' } else { '?' });
        }
        for (i, (key, value)) in params.iter().enumerate() {
            if i > 0 {
                address.push('&');
            }
            address.push_str(key);
            address.push('=');
            address.push_str(&percent_encode(value.as_bytes()));
        }
        address
    }
}

/// The S256 code challenge of a verifier (RFC 7636 section 4.2).
fn challenge(verifier: &Secret) -> String {
    URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA256,
        verifier.expose(),
    ))
}

/// What reached the wait.
enum Event {
    /// A line pasted on standard input, not empty.
    Pasted(Secret),
    /// A pasted line longer than `MAX_REDIRECT_LINE`.
    PastedTooLong,
    /// A request for `/` with a query on the redirect port, and the
    /// connection to answer it on.
    Redirect { query: Secret, stream: TcpStream },
}

/// Waits up to `timeout` for the sign-in's answer, by redirect or pasted,
/// and returns its code once the answer passed its checks.
fn wait_for_code(
    name: &str,
    listener: &TcpListener,
    input: Box<dyn BufRead + Send>,
    state: &str,
    timeout: Duration,
) -> Result<Secret, TokenError> {
    let setup = |why: String| TokenError::Setup(format!("[oauth.{name}]: {why}"));
    listener
        .set_nonblocking(true)
        .map_err(|e| setup(format!("the redirect port: {e}")))?;
    let (events, arrived) = mpsc::channel();
    // Blocked in a read of standard input until a line comes: it outlives
    // the wait when none does, which is fine for a command that exits.
    let pasted = events.clone();
    thread::Builder::new()
        .name("oauth-paste".into())
        .spawn(move || read_pasted(input, &pasted))
        .map_err(|e| setup(format!("cannot read standard input: {e}")))?;

    let deadline = Instant::now() + timeout;
    let mut connections = 0;
    // Each round waits up to REDIRECT_WAIT_POLL; the count bounds the loop should
    // the clock stand still.
    let rounds = timeout.as_millis() / REDIRECT_WAIT_POLL.as_millis() + 2;
    for _ in 0..rounds {
        while let Ok((stream, _)) = listener.accept() {
            if connections == MAX_REDIRECT_CONNECTIONS {
                break;
            }
            connections += 1;
            let events = events.clone();
            // A thread that cannot start drops its connection: the browser
            // shows an error, and pasting its address still works.
            let _ = thread::Builder::new()
                .name("oauth-redirect".into())
                .spawn(move || serve_connection(stream, &events));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        // Only a timeout can fail: our own sender keeps the channel open.
        if let Ok(event) = arrived.recv_timeout(left.min(REDIRECT_WAIT_POLL)) {
            return settle(name, event, state);
        }
    }
    Err(setup(format!(
        "no sign-in within {}; nothing stored; run pop3server --oauth-consent {name} again",
        seconds(timeout)
    )))
}

/// Sends each non-empty line of `input` to the wait, until its end.
fn read_pasted(mut input: Box<dyn BufRead + Send>, events: &Sender<Event>) {
    loop {
        let mut line = WipeOnDrop::default();
        match (&mut input)
            .take(MAX_REDIRECT_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let event = if line.len() > MAX_REDIRECT_LINE {
            Event::PastedTooLong
        } else {
            let text = line.trim_ascii();
            if text.is_empty() {
                continue;
            }
            Event::Pasted(Secret::new(text.to_vec()))
        };
        if events.send(event).is_err() {
            return;
        }
    }
}

/// Reads one request on the redirect port. The answer's request goes to
/// the wait, which answers it; anything else is answered here, and the
/// wait goes on.
fn serve_connection(mut stream: TcpStream, events: &Sender<Event>) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(REDIRECT_REQUEST_TIMEOUT));
    let _ = stream.set_write_timeout(Some(REDIRECT_REQUEST_TIMEOUT));
    let Some(head) = read_head(&mut stream) else {
        return;
    };
    let Some(head) = head else {
        respond(
            &mut stream,
            "431 Request Header Fields Too Large",
            "The request is too long.",
        );
        return;
    };
    let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let line = head[..line_end].trim_ascii();
    if line.len() > MAX_REDIRECT_LINE {
        respond(&mut stream, "414 URI Too Long", "The address is too long.");
        return;
    }
    let mut parts = line.split(|&b| b == b' ').filter(|p| !p.is_empty());
    let (method, target) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    if method != b"GET" {
        respond(
            &mut stream,
            "405 Method Not Allowed",
            "Only GET is served here.",
        );
        return;
    }
    let (path, query) = match target.iter().position(|&b| b == b'?') {
        Some(at) => (&target[..at], &target[at + 1..]),
        None => (target, &b""[..]),
    };
    if path != b"/" {
        respond(&mut stream, "404 Not Found", "Not found.");
        return;
    }
    // No query at all is no answer (someone opened the address by hand):
    // nothing to end the wait for.
    if query.is_empty() {
        respond(
            &mut stream,
            "400 Bad Request",
            "This address waits for the sign-in's redirect: open the authorization address \
             that pop3server --oauth-consent printed.",
        );
        return;
    }
    let query = Secret::new(query.to_vec());
    let _ = events.send(Event::Redirect { query, stream });
}

/// The request head, up to its empty line: `None` if the connection ended
/// or stalled first, `Some(None)` if it is longer than `MAX_REDIRECT_HEAD`.
fn read_head(stream: &mut TcpStream) -> Option<Option<WipeOnDrop>> {
    let mut head = WipeOnDrop(Vec::with_capacity(2048));
    let mut chunk = WipeOnDrop(vec![0; 2048]);
    // Each read adds at least a byte, or ends the loop.
    for _ in 0..=MAX_REDIRECT_HEAD {
        let n = match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => n,
        };
        head.extend_from_slice(&chunk[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            return Some(Some(head));
        }
        if head.len() > MAX_REDIRECT_HEAD {
            return Some(None);
        }
    }
    None
}

/// Answers a request on the redirect port with a short page and closes.
fn respond(stream: &mut TcpStream, status: &str, text: &str) {
    let body = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>pop3server</title></head>\
         <body><p>{}</p></body></html>\n",
        html_escape(text)
    );
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\n\
         Content-Length: {}\r\nCache-Control: no-store\r\nReferrer-Policy: no-referrer\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body.as_bytes());
    let _ = stream.flush();
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

/// Checks what arrived; a redirect is answered with what came of it.
fn settle(name: &str, event: Event, state: &str) -> Result<Secret, TokenError> {
    match event {
        Event::Pasted(line) => {
            pasted_query(name, line.expose()).and_then(|query| parse_answer(name, query, state))
        }
        Event::PastedTooLong => Err(TokenError::Setup(format!(
            "[oauth.{name}]: the pasted line is longer than {MAX_REDIRECT_LINE} bytes: not the \
             address the browser ended on; nothing stored; run pop3server --oauth-consent \
             {name} again"
        ))),
        Event::Redirect { query, mut stream } => {
            let result = parse_answer(name, query.expose(), state);
            match &result {
                // The exchange is still to come: the terminal tells how it
                // ended.
                Ok(_) => respond(
                    &mut stream,
                    "200 OK",
                    "Signed in. pop3server is fetching the tokens now; its terminal says when \
                     they are stored. You can close this window.",
                ),
                Err(e) => respond(&mut stream, "400 Bad Request", &e.to_string()),
            }
            result
        }
    }
}

/// The query of a pasted line: the whole address the browser ended on,
/// or its query with or without the `?`.
fn pasted_query<'a>(name: &str, line: &'a [u8]) -> Result<&'a [u8], TokenError> {
    let line = line.trim_ascii();
    let line = match line.iter().position(|&b| b == b'#') {
        Some(at) => &line[..at],
        None => line,
    };
    match line.iter().position(|&b| b == b'?') {
        Some(at) => Ok(&line[at + 1..]),
        None if line.contains(&b'=') => Ok(line),
        // A bare code cannot be told from any other: without its state it
        // is not known to answer this sign-in.
        None => Err(TokenError::Setup(format!(
            "[oauth.{name}]: the pasted line is not the address the browser ended on (with \
             ?code=...&state=...); nothing stored; run pop3server --oauth-consent {name} again"
        ))),
    }
}

/// Checks the sign-in's answer (RFC 6749 section 4.1.2) and returns its
/// code.
fn parse_answer(name: &str, query: &[u8], state: &str) -> Result<Secret, TokenError> {
    let fail = |why: String| {
        TokenError::Setup(format!(
            "[oauth.{name}]: {why}; nothing stored; run pop3server --oauth-consent {name} again"
        ))
    };
    let (mut code, mut got_state, mut error, mut description) = (None, None, None, None);
    for pair in query.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
        let (key, value) = match pair.iter().position(|&b| b == b'=') {
            Some(at) => (&pair[..at], &pair[at + 1..]),
            None => (pair, &b""[..]),
        };
        let key = percent_decode(key);
        let slot = match key.as_slice() {
            b"code" => &mut code,
            b"state" => &mut got_state,
            b"error" => &mut error,
            b"error_description" => &mut description,
            _ => continue,
        };
        // RFC 6749 section 3.1: no parameter more than once.
        if slot.is_some() {
            return Err(fail(format!(
                "the answer repeats {}",
                String::from_utf8_lossy(&key)
            )));
        }
        *slot = Some(Secret::new(percent_decode(value)));
    }
    let state_matches = got_state
        .as_ref()
        .is_some_and(|got| same(got.expose(), state.as_bytes()));
    // A refusal is reported even without a state: nothing is stored
    // either way, and the provider's words help.
    if got_state.is_some() && !state_matches {
        return Err(fail(
            "the answer's state does not match: not the answer to this sign-in".into(),
        ));
    }
    if let Some(error) = error {
        let mut why = one_line(&String::from_utf8_lossy(error.expose()));
        if let Some(d) = description {
            why = format!("{why}: {}", one_line(&String::from_utf8_lossy(d.expose())));
        }
        return Err(fail(format!("the sign-in was refused: {why}")));
    }
    if !state_matches {
        return Err(fail(
            "the answer carries no state: not known to answer this sign-in".into(),
        ));
    }
    match code {
        Some(code) if !code.expose().is_empty() => Ok(code),
        _ => Err(fail("the answer holds no code".into())),
    }
}

/// Exchanges the code for the first tokens (RFC 6749 section 4.1.3, with
/// the verifier of RFC 7636 section 4.5).
fn exchange(
    source: &OAuthSource,
    token_url: &str,
    code: &Secret,
    sign_in: &SignIn,
    secret: Option<&Secret>,
) -> Result<TokenAnswer, TokenError> {
    let name = &source.name;
    let mut form: Vec<(&str, &[u8])> = vec![
        ("grant_type", b"authorization_code"),
        ("code", code.expose()),
        // Exactly the string of the authorization request (section 4.1.3).
        ("redirect_uri", sign_in.redirect_uri.as_bytes()),
        ("client_id", source.client_id.as_bytes()),
        ("code_verifier", sign_in.verifier.expose()),
    ];
    if let Some(s) = secret {
        form.push(("client_secret", s.expose()));
    }
    match http::post::<TokenAnswer>(source, token_url, &form) {
        Ok(Answer::Ok(tokens)) => Ok(tokens),
        Ok(Answer::Error(e)) if e.error == "invalid_grant" => Err(TokenError::Setup(format!(
            "[oauth.{name}]: the token endpoint refused the sign-in's code (expired or already \
             used): {}; nothing stored; run pop3server --oauth-consent {name} again",
            e.describe()
        ))),
        Ok(Answer::Error(e)) => Err(TokenError::Setup(format!(
            "[oauth.{name}]: the token endpoint refused: {}; nothing stored; check [oauth.{name}] \
             (client_id, client_secret_file, token_url)",
            e.describe()
        ))),
        Err(TokenError::Unavailable(why)) => Err(TokenError::Unavailable(format!(
            "{why} (exchanging the sign-in's code of [oauth.{name}]; nothing stored; run \
             pop3server --oauth-consent {name} again)"
        ))),
        Err(e) => Err(e),
    }
}

/// RFC 3986 section 2.3: what a query value may carry as it is.
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Percent-encodes all but the unreserved characters (RFC 3986 section
/// 2.1), so a value cannot end its parameter or the query.
fn percent_encode(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(bytes.len() * 3);
    for &b in bytes {
        if unreserved(b) {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 15)] as char);
        }
    }
    out
}

/// Decodes a query value as browsers encode forms: `%XX` is a byte, `+` a
/// space. A `%` without two hex digits stays as it is.
fn percent_decode(bytes: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                bytes.get(i + 1).and_then(|&b| hex(b)),
                bytes.get(i + 2).and_then(|&b| hex(b)),
            ) {
                (Some(high), Some(low)) => {
                    out.push((high << 4) | low);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// Compares without stopping at the first difference, so the time taken
/// tells a local prober nothing about the state.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// Keeps a provider's text fit for one line.
fn one_line(text: &str) -> String {
    text.chars()
        .take(200)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A timeout as the messages say it.
fn seconds(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} seconds", d.as_secs())
    } else {
        format!("{:.1} seconds", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::io::{self, Cursor};

    const STATE: &str = "st4te-of-this-sign-in";

    fn listener() -> TcpListener {
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind")
    }

    fn no_input() -> Box<dyn BufRead + Send> {
        Box::new(io::empty())
    }

    fn answer(query: &str) -> Result<Vec<u8>, String> {
        parse_answer("gmail", query.as_bytes(), STATE)
            .map(|code| code.expose().to_vec())
            .map_err(|e| e.to_string())
    }

    /// Sends `request` to `port` and returns the whole reply.
    fn get(port: u16, request: &str) -> String {
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        stream.write_all(request.as_bytes()).expect("send");
        let mut reply = String::new();
        stream.read_to_string(&mut reply).expect("reply");
        reply
    }

    #[test]
    fn s256_challenge_is_rfc7636_appendix_b() {
        let verifier = Secret::new(b"dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk".to_vec());
        assert_eq!(
            challenge(&verifier),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn each_sign_in_has_a_fresh_verifier_and_state() {
        let a = SignIn::new("gmail", 8765).expect("sign-in");
        let b = SignIn::new("gmail", 8765).expect("sign-in");
        assert_eq!(a.verifier.expose().len(), 43);
        assert!(a.verifier.expose().iter().all(|&b| unreserved(b)));
        assert!(a.state.len() >= 22);
        assert!(a.verifier != b.verifier && a.state != b.state);
        assert_eq!(a.redirect_uri, "http://127.0.0.1:8765/");
    }

    #[test]
    fn authorization_address_carries_every_parameter_encoded() {
        let sign_in = SignIn {
            state: "s+t/a=te".into(),
            verifier: Secret::new(b"dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk".to_vec()),
            redirect_uri: "http://127.0.0.1:8765/".into(),
        };
        let address = sign_in.address(
            "https://accounts.google.com/o/oauth2/v2/auth",
            "123-abc.apps.googleusercontent.com",
            "https://mail.google.com/ openid",
        );
        assert_eq!(
            address,
            "https://accounts.google.com/o/oauth2/v2/auth?response_type=code\
             &client_id=123-abc.apps.googleusercontent.com\
             &redirect_uri=http%3A%2F%2F127.0.0.1%3A8765%2F\
             &scope=https%3A%2F%2Fmail.google.com%2F%20openid\
             &state=s%2Bt%2Fa%3Dte\
             &code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM\
             &code_challenge_method=S256&access_type=offline&prompt=consent"
        );
        let with_query = sign_in.address("https://idp/authorize?tenant=x", "c", "s");
        assert!(
            with_query.starts_with("https://idp/authorize?tenant=x&response_type=code&"),
            "{with_query}"
        );
    }

    #[test]
    fn percent_coding_keeps_unreserved_and_decodes_plus_and_hex() {
        assert_eq!(percent_encode(b"aZ09-._~"), "aZ09-._~");
        assert_eq!(
            percent_encode(b" +/?&=%\xc3\xa9"),
            "%20%2B%2F%3F%26%3D%25%C3%A9"
        );
        assert_eq!(percent_decode(b"a+b%2Fc%3d%C3%A9"), "a b/c=é".as_bytes());
        assert_eq!(percent_decode(b"100%+%zz%4"), b"100% %zz%4");
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(percent_decode(percent_encode(&all).as_bytes()), all);
    }

    #[test]
    fn pasted_full_address_yields_the_code() {
        let line = format!(
            "  http://127.0.0.1:8765/?state={STATE}&code=4%2F0Ab-x_y&scope=https%3A%2F%2Fmail.google.com%2F\r\n"
        );
        let query = pasted_query("gmail", line.as_bytes()).expect("query");
        assert_eq!(
            parse_answer("gmail", query, STATE).expect("code").expose(),
            b"4/0Ab-x_y"
        );
    }

    #[test]
    fn pasted_bare_query_with_or_without_question_mark_yields_the_code() {
        for line in [
            format!("?code=abc&state={STATE}"),
            format!("code=abc&state={STATE}#frag"),
        ] {
            let query = pasted_query("gmail", line.as_bytes()).expect("query");
            assert_eq!(
                parse_answer("gmail", query, STATE).expect("code").expose(),
                b"abc"
            );
        }
    }

    #[test]
    fn pasted_bare_code_is_refused() {
        let e = pasted_query("gmail", b"4/0AbCdEf").expect_err("bare code");
        assert!(
            e.to_string()
                .contains("not the address the browser ended on"),
            "{e}"
        );
    }

    #[test]
    fn error_redirect_is_refused_with_the_providers_words() {
        let e = answer(&format!(
            "error=access_denied&error_description=The+user%0Adenied&state={STATE}"
        ))
        .expect_err("refused");
        assert_eq!(
            e,
            "[oauth.gmail]: the sign-in was refused: access_denied: The user denied; nothing \
             stored; run pop3server --oauth-consent gmail again"
        );
    }

    #[test]
    fn wrong_or_missing_state_is_not_this_sign_in() {
        let e = answer("code=abc&state=someone-elses").expect_err("wrong state");
        assert!(
            e.contains("state does not match: not the answer to this sign-in"),
            "{e}"
        );
        assert!(!e.contains("someone-elses") && !e.contains("abc"), "{e}");
        let e = answer("code=abc").expect_err("no state");
        assert!(e.contains("carries no state"), "{e}");
        let e = answer(&format!("error=access_denied&state=x{STATE}")).expect_err("foreign error");
        assert!(e.contains("does not match"), "{e}");
    }

    #[test]
    fn answer_without_code_or_with_a_repeated_one_is_refused() {
        let e = answer(&format!("state={STATE}")).expect_err("no code");
        assert!(
            e.contains("the answer holds no code; nothing stored"),
            "{e}"
        );
        let e = answer(&format!("code=a&code=b&state={STATE}")).expect_err("twice");
        assert!(e.contains("repeats code"), "{e}");
    }

    #[test]
    fn redirect_is_answered_200_and_yields_the_code_after_a_favicon_404() {
        let listener = listener();
        let port = listener.local_addr().expect("addr").port();
        let browser = thread::spawn(move || {
            let favicon = get(port, "GET /favicon.ico HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
            let redirect = get(
                port,
                &format!("GET /?code=c0de%2B1&state={STATE} HTTP/1.1\r\nHost: x\r\n\r\n"),
            );
            (favicon, redirect)
        });
        let code = wait_for_code(
            "gmail",
            &listener,
            no_input(),
            STATE,
            Duration::from_secs(10),
        )
        .expect("code");
        assert_eq!(code.expose(), b"c0de+1");
        let (favicon, redirect) = browser.join().expect("browser");
        assert!(favicon.starts_with("HTTP/1.1 404 "), "{favicon}");
        assert!(redirect.starts_with("HTTP/1.1 200 OK\r\n"), "{redirect}");
        assert!(
            redirect.contains("You can close this window."),
            "{redirect}"
        );
        assert!(!redirect.contains("c0de"), "{redirect}");
    }

    #[test]
    fn redirect_with_a_wrong_state_is_answered_400_and_ends_the_wait() {
        let listener = listener();
        let port = listener.local_addr().expect("addr").port();
        let browser =
            thread::spawn(move || get(port, "GET /?code=x&state=<b>old</b> HTTP/1.1\r\n\r\n"));
        let e = wait_for_code(
            "gmail",
            &listener,
            no_input(),
            STATE,
            Duration::from_secs(10),
        )
        .expect_err("wrong state");
        assert!(e.to_string().contains("does not match"), "{e}");
        let page = browser.join().expect("browser");
        assert!(page.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{page}");
        assert!(
            page.contains("state does not match") && !page.contains("<b>"),
            "{page}"
        );
    }

    #[test]
    fn pasted_line_ends_the_wait_and_empty_lines_are_ignored() {
        let listener = listener();
        let input = format!("\n   \nhttp://127.0.0.1:1/?code=pasted&state={STATE}\n");
        let code = wait_for_code(
            "gmail",
            &listener,
            Box::new(Cursor::new(input.into_bytes())),
            STATE,
            Duration::from_secs(10),
        )
        .expect("code");
        assert_eq!(code.expose(), b"pasted");
    }

    #[test]
    fn nothing_arriving_ends_with_the_timeout() {
        let listener = listener();
        let started = Instant::now();
        let e = wait_for_code(
            "gmail",
            &listener,
            no_input(),
            STATE,
            Duration::from_millis(300),
        )
        .expect_err("timeout");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(
            e.to_string(),
            "[oauth.gmail]: no sign-in within 0.3 seconds; nothing stored; run pop3server \
             --oauth-consent gmail again"
        );
    }
}
