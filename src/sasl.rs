//! The SASL mechanisms that carry an OAuth2 bearer token (XOAUTH2, RFC 7628
//! OAUTHBEARER): their names and whose mailbox a response is for. Shared by
//! the client side (a token passed through), the token sources and the
//! backend login, so it sits below all three.

/// The SASL mechanisms whose responses are passed through to the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenMechanism {
    XOAuth2,
    OAuthBearer,
}

impl TokenMechanism {
    pub fn name(self) -> &'static str {
        match self {
            TokenMechanism::XOAuth2 => "XOAUTH2",
            TokenMechanism::OAuthBearer => "OAUTHBEARER",
        }
    }

    /// The user a SASL response of this mechanism is for: `user=` of
    /// XOAUTH2, `a=` of the OAUTHBEARER GS2 header (RFC 7628 section 3.1,
    /// `=2C` and `=3D` decoded).
    pub fn user_of(self, response: &[u8]) -> Option<Vec<u8>> {
        let user = match self {
            TokenMechanism::XOAuth2 => response
                .split(|&b| b == 1)
                .find_map(|kv| kv.strip_prefix(b"user="))?
                .to_vec(),
            TokenMechanism::OAuthBearer => {
                let header = response.split(|&b| b == 1).next()?;
                let authzid = header
                    .split(|&b| b == b',')
                    .find_map(|f| f.strip_prefix(b"a="))?;
                let text = String::from_utf8(authzid.to_vec()).ok()?;
                text.replace("=2C", ",").replace("=3D", "=").into_bytes()
            }
        };
        (!user.is_empty()).then_some(user)
    }
}
