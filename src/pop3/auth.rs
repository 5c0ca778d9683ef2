//! The AUTHORIZATION state: USER/PASS (RFC 1939), STLS (RFC 2595) and SASL
//! AUTH (RFC 5034: PLAIN, LOGIN, and the backend's XOAUTH2/OAUTHBEARER,
//! passed through), with the rule that plaintext credentials travel only over
//! TLS or loopback unless configured otherwise. It ends in the credentials
//! to log in with; what the backend says of them is the session's business.

use std::net::IpAddr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use super::command::Command;
use super::reply::{Reply, RespCode};
use crate::backend::{Credentials, TokenMechanism};
use crate::secret::Secret;

/// What is known of the connection when the session starts.
#[derive(Debug, Clone, Copy)]
pub struct Connection {
    /// The client's connection is encrypted before its first command: a
    /// trusted balancer says it ended the client's TLS (PROXY v2,
    /// PP2_TYPE_SSL with PP2_CLIENT_SSL), so plaintext credentials are as
    /// safe as under our own TLS and STLS has no place. Our own TLS
    /// (implicit or STLS) comes later, with `on_tls_started`.
    pub tls: bool,
    pub loopback: bool,
    /// The client's address, for the log lines an admin (and fail2ban)
    /// acts on; `None` where the transport has none (a pipe).
    pub client: Option<IpAddr>,
    /// `client` is the client's own address, not that of a balancer that
    /// named no client: only then may its network allow a plaintext login.
    pub client_known: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Login,
    Token(TokenMechanism),
}

impl Mechanism {
    const ALL: [Mechanism; 4] = [
        Mechanism::Plain,
        Mechanism::Login,
        Mechanism::Token(TokenMechanism::XOAuth2),
        Mechanism::Token(TokenMechanism::OAuthBearer),
    ];

    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
            Mechanism::Token(t) => t.name(),
        }
    }

    fn from_name(name: &str) -> Option<Mechanism> {
        Mechanism::ALL.into_iter().find(|m| m.name() == name)
    }
}

/// Where a SASL exchange stands while waiting for the client's next line.
enum Sasl {
    Plain,
    LoginUser,
    LoginPassword(Vec<u8>),
    Token(TokenMechanism),
}

/// What an AUTHORIZATION command leads to.
#[derive(Debug)]
pub enum AuthStep {
    Reply(Reply),
    /// Send the reply, then the TLS handshake.
    StartTls(Reply),
    /// Log in to the backend; `user` names the maildrop (lock, logs);
    /// `method` is how the client authenticated (USER, PLAIN, ...), for logs.
    Login {
        user: Vec<u8>,
        method: &'static str,
        credentials: Credentials,
    },
    Quit,
}

pub struct Auth {
    connection: Connection,
    allow_plaintext_auth: bool,
    stls_available: bool,
    user: Option<Vec<u8>>,
    sasl: Option<Sasl>,
    /// The backend's pass-through SASL mechanisms, once asked.
    backend_mechanisms: Option<Vec<TokenMechanism>>,
    /// Logins refused by the plaintext rule, by method (`USER`, `AUTH`),
    /// not yet taken by `take_refusals` (for the statistics).
    refusals: Vec<&'static str>,
}

const LOGIN_USER_PROMPT: &str = "VXNlcm5hbWU6"; // base64 "Username:"
const LOGIN_PASSWORD_PROMPT: &str = "UGFzc3dvcmQ6"; // base64 "Password:"

impl Auth {
    pub fn new(connection: Connection, allow_plaintext_auth: bool, stls_available: bool) -> Self {
        Auth {
            connection,
            allow_plaintext_auth,
            stls_available,
            user: None,
            sasl: None,
            backend_mechanisms: None,
            refusals: Vec::new(),
        }
    }

    /// The logins refused by the plaintext rule since the last call.
    pub fn take_refusals(&mut self) -> Vec<&'static str> {
        std::mem::take(&mut self.refusals)
    }

    /// The next line is a SASL response (credentials), not a command.
    pub fn awaits_sasl_response(&self) -> bool {
        self.sasl.is_some()
    }

    pub fn on_tls_started(&mut self) {
        self.connection.tls = true;
        // USER given before STLS is forgotten (RFC 2595 section 4).
        self.user = None;
    }

    /// Plaintext credentials are acceptable on this connection.
    fn plaintext_ok(&self) -> bool {
        self.connection.tls || self.connection.loopback || self.allow_plaintext_auth
    }

    /// Whether `cmd` needs the backend's mechanisms first (CAPA and AUTH list
    /// them; an OAuth AUTH needs to know the backend has it).
    pub fn needs_backend_mechanisms(&self, cmd: &Command) -> bool {
        if self.backend_mechanisms.is_some() || !self.plaintext_ok() {
            return false;
        }
        match cmd {
            Command::Capa | Command::Auth(None) => true,
            Command::Auth(Some((name, _))) => {
                matches!(Mechanism::from_name(name), Some(Mechanism::Token(_)))
            }
            _ => false,
        }
    }

    /// The backend's capabilities (empty if it could not be asked: the
    /// login will report that).
    pub fn set_backend_capabilities(&mut self, capabilities: &[String]) {
        let list = [TokenMechanism::XOAuth2, TokenMechanism::OAuthBearer]
            .into_iter()
            .filter(|m| {
                capabilities
                    .iter()
                    .any(|c| c.strip_prefix("AUTH=") == Some(m.name()))
            })
            .collect();
        self.backend_mechanisms = Some(list);
    }

    /// The CAPA lines of this state.
    pub fn capa(&self, lines: &mut Vec<Vec<u8>>) {
        if self.plaintext_ok() {
            lines.push(b"USER".to_vec());
            let names: Vec<&str> = self.mechanisms().iter().map(|m| m.name()).collect();
            lines.push(format!("SASL {}", names.join(" ")).into_bytes());
        }
        if self.stls_available && !self.connection.tls {
            lines.push(b"STLS".to_vec());
        }
    }

    /// A line too long to be read: cancels a SASL exchange in progress.
    pub fn too_long(&mut self) -> Reply {
        if self.sasl.take().is_some() {
            Reply::err("SASL response too long, AUTH cancelled")
        } else {
            Reply::err("Line too long")
        }
    }

    /// The client's line while a SASL exchange waits for it.
    pub fn sasl_line(&mut self, line: &[u8]) -> Option<AuthStep> {
        let sasl = self.sasl.take()?;
        Some(self.sasl_response(sasl, line))
    }

    pub fn command(&mut self, cmd: Command) -> AuthStep {
        match cmd {
            Command::User(_) | Command::Pass(_) | Command::Auth(Some(_))
                if !self.plaintext_ok() =>
            {
                // One login attempt each: USER (its PASS is not another),
                // or AUTH by its mechanism (ours only: an unknown name is
                // the client's word, and becomes `AUTH`).
                match &cmd {
                    Command::User(_) => self.refusals.push("USER"),
                    Command::Auth(Some((name, _))) => self.refusals.push(
                        Mechanism::from_name(&name.to_ascii_uppercase())
                            .map_or("AUTH", Mechanism::name),
                    ),
                    _ => {}
                }
                AuthStep::Reply(self.plaintext_refused())
            }
            Command::User(name) => {
                self.user = Some(name);
                reply(Reply::ok("Send PASS"))
            }
            Command::Pass(password) => match self.user.take() {
                Some(user) => AuthStep::Login {
                    user: user.clone(),
                    method: "USER",
                    credentials: Credentials::Password {
                        login: user,
                        authzid: None,
                        password,
                    },
                },
                None => reply(Reply::err("Send USER first")),
            },
            Command::Stls if self.connection.tls => reply(Reply::err("TLS is already active")),
            Command::Stls if !self.stls_available => {
                reply(Reply::err("STLS is not available on this server"))
            }
            Command::Stls => AuthStep::StartTls(Reply::ok("Begin TLS negotiation")),
            Command::Auth(None) => {
                let names = self.mechanisms().iter().map(|m| m.name()).collect();
                reply(Reply::MultiLine("Mechanisms follow".into(), names))
            }
            Command::Auth(Some((name, initial))) => {
                let Some(mechanism) =
                    Mechanism::from_name(&name).filter(|m| self.mechanisms().contains(m))
                else {
                    return reply(Reply::err(format!(
                        "Unsupported authentication mechanism {name}"
                    )));
                };
                let sasl = match mechanism {
                    Mechanism::Plain => Sasl::Plain,
                    Mechanism::Login => Sasl::LoginUser,
                    Mechanism::Token(t) => Sasl::Token(t),
                };
                match initial {
                    Some(initial) => self.sasl_response(sasl, initial.expose()),
                    None => {
                        let prompt = if matches!(sasl, Sasl::LoginUser) {
                            LOGIN_USER_PROMPT
                        } else {
                            ""
                        };
                        self.sasl = Some(sasl);
                        reply(Reply::Continuation(prompt.into()))
                    }
                }
            }
            Command::Quit => AuthStep::Quit,
            _ => reply(Reply::err("Not logged in: authenticate first")),
        }
    }

    fn plaintext_refused(&self) -> Reply {
        if self.stls_available && !self.connection.tls {
            Reply::err(
                "Plaintext authentication is disabled on unencrypted connections: use STLS first",
            )
        } else {
            Reply::err(
                "Plaintext authentication is disabled on unencrypted connections: connect with TLS",
            )
        }
    }

    /// Mechanisms offered now: PLAIN and LOGIN, and the backend's OAuth ones.
    fn mechanisms(&self) -> Vec<Mechanism> {
        if !self.plaintext_ok() {
            return Vec::new();
        }
        let mut list = vec![Mechanism::Plain, Mechanism::Login];
        list.extend(
            self.backend_mechanisms
                .iter()
                .flatten()
                .map(|&t| Mechanism::Token(t)),
        );
        list
    }

    fn sasl_response(&mut self, sasl: Sasl, line: &[u8]) -> AuthStep {
        if line == b"*" {
            return reply(Reply::err("AUTH cancelled"));
        }
        let decoded = if line == b"=" {
            Ok(Vec::new())
        } else {
            BASE64.decode(line)
        };
        let Ok(decoded) = decoded else {
            return reply(Reply::err(
                "Invalid base64 in SASL response, AUTH cancelled",
            ));
        };
        let decoded = Secret::new(decoded);
        match sasl {
            Sasl::Plain => {
                let parts: Vec<&[u8]> = decoded.expose().split(|&b| b == 0).collect();
                let [authzid, login, password] = parts.as_slice() else {
                    return reply(Reply::err("Malformed PLAIN response, AUTH cancelled"));
                };
                if login.is_empty() {
                    return reply(Reply::err_code(RespCode::Auth, "Empty user name"));
                }
                let authzid = (!authzid.is_empty() && authzid != login).then(|| authzid.to_vec());
                AuthStep::Login {
                    user: authzid.clone().unwrap_or_else(|| login.to_vec()),
                    method: "PLAIN",
                    credentials: Credentials::Password {
                        login: login.to_vec(),
                        authzid,
                        password: Secret::new(password.to_vec()),
                    },
                }
            }
            Sasl::LoginUser => {
                self.sasl = Some(Sasl::LoginPassword(decoded.expose().to_vec()));
                reply(Reply::Continuation(LOGIN_PASSWORD_PROMPT.into()))
            }
            Sasl::LoginPassword(user) => AuthStep::Login {
                user: user.clone(),
                method: "LOGIN",
                credentials: Credentials::Password {
                    login: user,
                    authzid: None,
                    password: decoded,
                },
            },
            Sasl::Token(mechanism) => match mechanism.user_of(decoded.expose()) {
                Some(user) => AuthStep::Login {
                    user,
                    method: mechanism.name(),
                    credentials: Credentials::Token {
                        mechanism,
                        response: decoded,
                    },
                },
                None => reply(Reply::err_code(
                    RespCode::Auth,
                    "The token names no user, AUTH cancelled",
                )),
            },
        }
    }
}

fn reply(reply: Reply) -> AuthStep {
    AuthStep::Reply(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oauthbearer_user_comes_from_the_gs2_header() {
        assert_eq!(
            TokenMechanism::OAuthBearer
                .user_of(b"n,a=bob=2Cjr@example.org,\x01auth=Bearer x\x01\x01")
                .as_deref(),
            Some(&b"bob,jr@example.org"[..])
        );
        assert_eq!(
            TokenMechanism::OAuthBearer.user_of(b"n,,\x01auth=Bearer x\x01\x01"),
            None
        );
    }
}
