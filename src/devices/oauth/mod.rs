//! OAuth2 access tokens that pop3server obtains and keeps fresh itself, for
//! devices that only know a password (see `devices`) in front of IMAP
//! servers that only take tokens (Microsoft 365, Google Workspace).
//!
//! - `http`: requests to a token endpoint (RFC 6749 section 4.4 client
//!   credentials, section 6 refresh, RFC 8628 device code), over rustls.
//! - `store`: the tokens, one file per source under the state directory,
//!   shared by the session processes: reused until shortly before expiry,
//!   refreshed by one process at a time under `flock`, a rotated refresh
//!   token written to disk (fsync, rename) before it is used.
//! - `consent`: the one-time device authorization grant of
//!   `--oauth-consent NAME`; `authcode`: the one-time browser sign-in
//!   (authorization code with PKCE and a loopback redirect).
//! - `jwt`: signed assertions, for service accounts (RFC 7523 section 2.1)
//!   and certificate credentials (section 2.2), and their key files.
//! - `status`: a grant's health, for `--oauth-status` and the log.
//! - `settings`: the `[oauth.NAME]` tables, as written and validated.

pub mod authcode;
pub mod consent;
pub mod http;
pub mod jwt;
pub mod settings;
pub mod status;
pub mod store;

use std::fmt;

use crate::sasl::TokenMechanism;
use crate::secret::Secret;

/// Why no token could be had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// The endpoint could not be reached, timed out, failed (5xx) or said
    /// something that is not a token: worth trying again later.
    Unavailable(String),
    /// The grant is dead (consent revoked, refresh token expired or
    /// already used): only an admin can fix it, with `--oauth-consent`.
    InvalidGrant(String),
    /// The provider refused the grant a moment ago and it rests (see
    /// `limits::DEAD_GRANT_REST`): no request was made. Said once, when
    /// it was refused; this is the reminder.
    Resting(String),
    /// The configuration or the state on disk is wrong (no consent yet, an
    /// unreadable secret file, the client refused): the text says what.
    Setup(String),
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::Unavailable(why) => write!(f, "token endpoint unavailable: {why}"),
            TokenError::InvalidGrant(why) => write!(f, "the grant is no longer valid: {why}"),
            TokenError::Resting(why) => write!(f, "no token now: {why}"),
            TokenError::Setup(why) => f.write_str(why),
        }
    }
}

/// The SASL response that logs `user` in with `token` (RFC 7628 for
/// OAUTHBEARER; Google's and Microsoft's XOAUTH2 format).
pub fn sasl_response(mechanism: TokenMechanism, user: &str, token: &Secret) -> Secret {
    let mut out = Vec::with_capacity(user.len() + token.expose().len() + 32);
    match mechanism {
        TokenMechanism::XOAuth2 => {
            out.extend_from_slice(b"user=");
            out.extend_from_slice(user.as_bytes());
        }
        TokenMechanism::OAuthBearer => {
            // The GS2 header's authzid escapes ',' and '=' (RFC 7628 3.1).
            out.extend_from_slice(b"n,a=");
            out.extend_from_slice(user.replace('=', "=3D").replace(',', "=2C").as_bytes());
            out.push(b',');
        }
    }
    out.extend_from_slice(b"\x01auth=Bearer ");
    out.extend_from_slice(token.expose());
    out.extend_from_slice(b"\x01\x01");
    Secret::new(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sasl_responses_name_the_mailbox_and_carry_the_token() {
        let token = Secret::new(b"tok".to_vec());
        let x = sasl_response(TokenMechanism::XOAuth2, "scans@example.org", &token);
        assert_eq!(
            x.expose(),
            b"user=scans@example.org\x01auth=Bearer tok\x01\x01"
        );
        let o = sasl_response(TokenMechanism::OAuthBearer, "a,b=c@example.org", &token);
        assert_eq!(
            o.expose(),
            b"n,a=a=2Cb=3Dc@example.org,\x01auth=Bearer tok\x01\x01"
        );
    }
}
