//! Logging in: LOGIN, AUTHENTICATE (PLAIN, and the OAuth mechanisms passed
//! through), what the backend's verdict means ([`Login`]), and ID, which
//! tells the backend who the real client is just before. It owns how
//! credentials travel: only as quoted strings, literals or base64, never as
//! IMAP syntax, never in the debug trace, from buffers wiped after use;
//! nothing here may log or keep a credential.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use log::debug;

use super::client::{Event, capability_code};
use super::encode::{Arg, astring};
use super::response::{Code, Status, StatusInfo};
use super::{Client, ImapError};
use crate::secret::{Secret, WipeOnDrop};

/// Outcome of a login attempt that reached the backend's verdict.
#[derive(Debug, PartialEq, Eq)]
pub enum Login {
    Ok,
    /// Wrong credentials (or credentials we refused to send): why, for the
    /// log (the backend's response code and text).
    Rejected(String),
    /// The backend refused for a reason that may pass (`[UNAVAILABLE]`...).
    TemporaryFailure(String),
}

impl Client {
    /// Logs in with a password: `LOGIN`, or `AUTHENTICATE PLAIN` when the
    /// backend says LOGINDISABLED or an authorization identity is given (a
    /// master-user login). Credentials only ever travel as quoted strings,
    /// literals or base64: no byte of them can become IMAP syntax.
    pub fn login(
        &mut self,
        user: &[u8],
        authzid: Option<&[u8]>,
        password: &Secret,
    ) -> Result<Login, ImapError> {
        let forbidden = |b: &[u8]| b.iter().any(|&c| matches!(c, b'\r' | b'\n' | 0));
        if user.is_empty()
            || forbidden(user)
            || forbidden(password.expose())
            || authzid.is_some_and(forbidden)
        {
            return Ok(Login::Rejected(
                "not sent to the backend: empty user, or CR, LF or NUL in the credentials".into(),
            ));
        }
        if self.has("LOGINDISABLED") && self.has("STARTTLS") {
            // The backend wants TLS before any password: never send one in
            // the clear, not even as AUTHENTICATE PLAIN.
            return Err(ImapError::Tls(
                "backend refuses plaintext logins (LOGINDISABLED) and offers STARTTLS: set backend_tls = starttls"
                    .into(),
            ));
        }
        let done = if authzid.is_some() || self.has("LOGINDISABLED") {
            if !self.has("AUTH=PLAIN") {
                return Err(ImapError::Protocol(
                    "backend offers no AUTH=PLAIN (needed for LOGINDISABLED or an authorization identity)"
                        .into(),
                ));
            }
            let mut raw = Vec::with_capacity(user.len() + password.expose().len() + 2);
            raw.extend_from_slice(authzid.unwrap_or_default());
            raw.push(0);
            raw.extend_from_slice(user);
            raw.push(0);
            raw.extend_from_slice(password.expose());
            self.authenticate("PLAIN", &Secret::new(raw), b"*")?
        } else {
            let (u, p) = (astring(user), astring(password.expose()));
            self.run(
                "LOGIN",
                &[Arg::Text(b"LOGIN "), u, Arg::Text(b" "), Arg::Hidden(&p)],
                |_| Ok(()),
            )?
        };
        self.login_outcome(done, "LOGIN")
    }

    /// Passes a client's OAuth SASL response (XOAUTH2, OAUTHBEARER) through.
    pub fn login_token(&mut self, mechanism: &str, response: &Secret) -> Result<Login, ImapError> {
        if !self.has(&format!("AUTH={mechanism}")) {
            return Err(ImapError::Protocol(format!(
                "backend does not offer AUTH={mechanism}"
            )));
        }
        // On failure the server sends an error as a continuation and waits
        // for the client's acknowledgement: empty for XOAUTH2, 0x01 for
        // OAUTHBEARER (RFC 7628 section 3.2.3).
        let ack: &[u8] = if mechanism == "OAUTHBEARER" {
            b"AQ=="
        } else {
            b""
        };
        let done = self.authenticate(mechanism, response, ack)?;
        self.login_outcome(done, "AUTHENTICATE")
    }

    fn login_outcome(
        &mut self,
        done: StatusInfo,
        command: &'static str,
    ) -> Result<Login, ImapError> {
        match done.status {
            Status::Ok => {
                if let Some(c) = capability_code(&done.code) {
                    self.capabilities = c;
                } else {
                    self.refresh_capabilities()?;
                }
                Ok(Login::Ok)
            }
            Status::No if is_temporary(&done.code) => Ok(Login::TemporaryFailure(done.text)),
            Status::No => Ok(Login::Rejected(match &done.code {
                Some(code) => format!("the backend said: [{}] {}", code.name, done.text),
                None => format!("the backend said: {}", done.text),
            })),
            _ => Err(ImapError::Refused {
                command,
                info: done,
            }),
        }
    }

    /// `AUTHENTICATE mechanism` with the response as initial response
    /// (SASL-IR) or after the first `+`; a second `+` (the server's error
    /// report) is answered with `error_ack`.
    fn authenticate(
        &mut self,
        mechanism: &str,
        response: &Secret,
        error_ack: &[u8],
    ) -> Result<StatusInfo, ImapError> {
        let mut encoded = BASE64.encode(response.expose()).into_bytes();
        if encoded.is_empty() {
            encoded.push(b'=');
        }
        let encoded = Secret::new(encoded);
        self.tag += 1;
        self.conn.start_deadline();
        // Sized up front, so no reallocation leaves a copy of the response.
        let mut line = WipeOnDrop(Vec::with_capacity(64 + encoded.expose().len()));
        line.extend_from_slice(
            format!("{} AUTHENTICATE {mechanism}", self.current_tag()).as_bytes(),
        );
        let mut sent = self.has("SASL-IR");
        if sent {
            line.push(b' ');
            line.extend_from_slice(encoded.expose());
        }
        line.extend_from_slice(b"\r\n");
        debug!(
            "IMAP C: {} AUTHENTICATE {mechanism}{}",
            self.current_tag(),
            if sent {
                format!(" <hidden, {} bytes>", encoded.expose().len())
            } else {
                String::new()
            }
        );
        self.conn.write_all(&line)?;
        // At most two continuations: the request for the response, and the
        // server's error report.
        for _ in 0..2 {
            match self.next_event("AUTHENTICATE", &mut |_| Ok(()))? {
                Event::Tagged(info) => return Ok(info),
                Event::Continuation => {
                    let answer = if sent { error_ack } else { encoded.expose() };
                    debug!("IMAP C: <hidden, {} bytes>", answer.len());
                    sent = true;
                    self.conn.write_all(answer)?;
                    self.conn.write_all(b"\r\n")?;
                }
            }
        }
        match self.next_event("AUTHENTICATE", &mut |_| Ok(()))? {
            Event::Tagged(info) => Ok(info),
            Event::Continuation => Err(ImapError::Protocol(
                "too many AUTHENTICATE continuations".into(),
            )),
        }
    }

    /// RFC 2971 ID with the POP3 client's address, so the backend logs and
    /// rate-limits the real client. Skipped when the backend has no ID.
    /// Sent without waiting: its answer comes in with the next command's
    /// (the login), which saves a round trip before it; a refusal is only
    /// logged then, as it changes nothing for the session.
    pub fn send_client_id(&mut self, peer: std::net::SocketAddr) -> Result<(), ImapError> {
        if !self.has("ID") {
            return Ok(());
        }
        self.settle_prefetch()?;
        self.settle_unanswered()?;
        self.tag += 1;
        let command = format!(
            "{} ID (\"name\" \"pop3server\" \"x-originating-ip\" \"{}\" \"x-originating-port\" \"{}\")\r\n",
            self.current_tag(),
            peer.ip(),
            peer.port()
        );
        debug!("IMAP C: {}", command.trim_end());
        self.conn.start_deadline();
        self.conn.write_all(command.as_bytes())?;
        self.unanswered = Some((self.current_tag(), "ID"));
        Ok(())
    }
}

/// RFC 5530 codes that say "not you, try later".
fn is_temporary(code: &Option<Code>) -> bool {
    code.as_ref().is_some_and(|c| {
        matches!(
            c.name.as_str(),
            "UNAVAILABLE" | "SERVERBUG" | "INUSE" | "LIMIT"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::{GREETING, ID_GREETING, scripted, sent};
    use super::*;

    #[test]
    fn login_quotes_specials_and_sends_8bit_as_literal() {
        let (mut c, out) = scripted(&format!(
            "{GREETING}+ go\r\nA0001 OK [CAPABILITY IMAP4rev1 UIDPLUS] in\r\n"
        ));
        let login = c.login(
            b"da\"ve\\",
            None,
            &Secret::new("p\u{e4}ss {5}".as_bytes().to_vec()),
        );
        assert_eq!(login.expect("login"), Login::Ok);
        assert_eq!(
            sent(&out),
            "A0001 LOGIN \"da\\\"ve\\\\\" {9}\r\np\u{e4}ss {5}\r\n"
        );
        assert!(c.has("UIDPLUS"));
    }

    #[test]
    fn id_goes_without_waiting_and_its_answer_comes_in_with_the_login() {
        // The ID's answer (a refusal, even) arrives only after the login was
        // sent, and before the continuation of the login's literal.
        let (mut c, out) = scripted(&format!(
            "{ID_GREETING}* ID NIL\r\nA0001 NO not for you\r\n+ go\r\nA0002 OK [CAPABILITY IMAP4rev1 ESEARCH] in\r\n"
        ));
        c.send_client_id("192.0.2.7:4711".parse().expect("addr"))
            .expect("id");
        assert_eq!(
            sent(&out),
            "A0001 ID (\"name\" \"pop3server\" \"x-originating-ip\" \"192.0.2.7\" \"x-originating-port\" \"4711\")\r\n"
        );
        let login = c.login(b"u", None, &Secret::new("p\u{e4}ss".as_bytes().to_vec()));
        assert_eq!(login.expect("login"), Login::Ok);
        assert!(sent(&out).ends_with("A0002 LOGIN \"u\" {5}\r\np\u{e4}ss\r\n"));
        assert!(c.unanswered.is_none());
    }

    #[test]
    fn credentials_with_line_breaks_never_reach_the_backend() {
        let (mut c, out) = scripted(GREETING);
        for (user, pass) in [
            (&b"u\r\nA1 LOGOUT"[..], &b"p"[..]),
            (b"u", b"p\nA2 DELETE INBOX"),
            (b"u", b"p\0"),
        ] {
            assert!(matches!(
                c.login(user, None, &Secret::new(pass.to_vec()))
                    .expect("no I/O"),
                Login::Rejected(_)
            ));
        }
        assert_eq!(sent(&out), "");
    }

    #[test]
    fn logindisabled_uses_authenticate_plain_and_authzid_is_passed_on() {
        let greeting = "* OK [CAPABILITY IMAP4rev1 LOGINDISABLED AUTH=PLAIN] ready\r\n";
        let (mut c, out) = scripted(&format!(
            "{greeting}+ \r\nA0001 OK [CAPABILITY IMAP4rev1] in\r\n"
        ));
        let login = c.login(b"master", Some(b"alice"), &Secret::new(b"pw".to_vec()));
        assert_eq!(login.expect("login"), Login::Ok);
        // base64 of "alice\0master\0pw", after the server's "+".
        assert_eq!(
            sent(&out),
            "A0001 AUTHENTICATE PLAIN\r\nYWxpY2UAbWFzdGVyAHB3\r\n"
        );
    }

    #[test]
    fn no_password_in_the_clear_to_a_backend_that_wants_starttls_first() {
        let greeting = "* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED AUTH=PLAIN] ready\r\n";
        let (mut c, out) = scripted(greeting);
        assert!(matches!(
            c.login(b"u", None, &Secret::new(b"p".to_vec())),
            Err(ImapError::Tls(_))
        ));
        assert_eq!(sent(&out), "");
    }

    #[test]
    fn rejected_and_temporary_login_failures_are_told_apart() {
        let (mut c, _) = scripted(&format!(
            "{GREETING}A0001 NO [AUTHENTICATIONFAILED] no\r\nA0002 NO [UNAVAILABLE] later\r\nA0003 BAD what\r\n"
        ));
        let pw = Secret::new(b"p".to_vec());
        assert_eq!(
            c.login(b"u", None, &pw).expect("answer"),
            Login::Rejected("the backend said: [AUTHENTICATIONFAILED] no".into())
        );
        assert_eq!(
            c.login(b"u", None, &pw).expect("answer"),
            Login::TemporaryFailure("later".into())
        );
        assert!(matches!(
            c.login(b"u", None, &pw),
            Err(ImapError::Refused { .. })
        ));
    }

    #[test]
    fn xoauth2_failure_continuation_is_acknowledged() {
        let greeting = "* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2] ready\r\n";
        let (mut c, out) = scripted(&format!(
            "{greeting}+ eyJzdGF0dXMiOiI0MDEifQ==\r\nA0001 NO [AUTHENTICATIONFAILED] bad token\r\n"
        ));
        let token = Secret::new(b"user=a\x01auth=Bearer t\x01\x01".to_vec());
        assert_eq!(
            c.login_token("XOAUTH2", &token).expect("answer"),
            Login::Rejected("the backend said: [AUTHENTICATIONFAILED] bad token".into())
        );
        assert_eq!(
            sent(&out),
            "A0001 AUTHENTICATE XOAUTH2 dXNlcj1hAWF1dGg9QmVhcmVyIHQBAQ==\r\n\r\n"
        );
    }
}
