//! Credentials for each load connection: an HS256 token minted per (user, device), or the
//! server's development mode (`?user=&device=`, no token).
//!
//! Tokens carry the claims the server expects (DESIGN §5): `sub` (user), `dev` (device),
//! `exp` (required) and `iat`. They are minted at connect time, so a run of N connections
//! signs N tokens; HS256 signing costs a few microseconds.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{EncodingKey, Header};
use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::http::header::AUTHORIZATION;

use crate::cli::CommonArgs;

/// Claims of a minted token (the server's contract, DESIGN §5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Claims {
    /// User id.
    pub(crate) sub: String,
    /// Device id.
    pub(crate) dev: String,
    /// Expiry, seconds since the Unix epoch.
    pub(crate) exp: u64,
    /// Issue time, seconds since the Unix epoch.
    pub(crate) iat: u64,
}

/// Why a connection request could not be built.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AuthError {
    #[error("cannot sign token: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
    #[error("invalid websocket url or request: {0}")]
    Request(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("token is not a valid header value")]
    Header(#[from] tokio_tungstenite::tungstenite::http::header::InvalidHeaderValue),
}

/// How connections authenticate.
pub(crate) struct Auth {
    mode: AuthMode,
    /// Lifetime of minted tokens; longer than the run's deadline.
    token_ttl: Duration,
}

enum AuthMode {
    Dev,
    Token { key: EncodingKey, in_query: bool },
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match &self.mode {
            AuthMode::Dev => "dev",
            AuthMode::Token { in_query: false, .. } => "token (header)",
            AuthMode::Token { in_query: true, .. } => "token (query)",
        };
        f.debug_struct("Auth").field("mode", &mode).field("token_ttl", &self.token_ttl).finish()
    }
}

impl Auth {
    /// Development mode: `?user=&device=`, no token.
    pub(crate) fn dev() -> Self {
        Auth { mode: AuthMode::Dev, token_ttl: Duration::ZERO }
    }

    /// HS256 tokens signed with `secret`, valid for `token_ttl`.
    pub(crate) fn hs256(secret: &str, in_query: bool, token_ttl: Duration) -> Self {
        Auth { mode: AuthMode::Token { key: EncodingKey::from_secret(secret.as_bytes()), in_query }, token_ttl }
    }

    /// The auth the command line asks for (dev mode, or tokens valid for `token_ttl`);
    /// `None` when it asks for neither.
    pub(crate) fn from_args(common: &CommonArgs, token_ttl: Duration) -> Option<Self> {
        match (&common.secret, common.dev) {
            (_, true) => Some(Auth::dev()),
            (Some(secret), false) => Some(Auth::hs256(secret, common.token_in_query, token_ttl)),
            (None, false) => None,
        }
    }

    /// Signs a token for `user` on `device`.
    pub(crate) fn mint(&self, user: &str, device: &str) -> Result<Option<String>, AuthError> {
        let AuthMode::Token { key, .. } = &self.mode else {
            return Ok(None);
        };
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let claims = Claims {
            sub: user.to_owned(),
            dev: device.to_owned(),
            exp: now + self.token_ttl.as_secs().max(60),
            iat: now,
        };
        Ok(Some(jsonwebtoken::encode(&Header::default(), &claims, key)?))
    }

    /// The upgrade request for `user` on `device` against `url` (a `ws://` URL that may
    /// already carry a query string). Ids are restricted to `[A-Za-z0-9_.@-]` by the
    /// command line check, and tokens are base64url, so nothing needs escaping.
    pub(crate) fn request(&self, url: &str, user: &str, device: &str) -> Result<Request, AuthError> {
        let separator = if url.contains('?') { '&' } else { '?' };
        match &self.mode {
            AuthMode::Dev => Ok(format!("{url}{separator}user={user}&device={device}").into_client_request()?),
            AuthMode::Token { in_query, .. } => {
                let token = self.mint(user, device)?.unwrap_or_default();
                if *in_query {
                    return Ok(format!("{url}{separator}token={token}").into_client_request()?);
                }
                let mut request = url.into_client_request()?;
                request.headers_mut().insert(AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {token}"))?);
                Ok(request)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};

    const SECRET: &str = "test-secret-of-a-reasonable-length";

    fn validate(token: &str, secret: &str) -> jsonwebtoken::errors::Result<Claims> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_secret(secret.as_bytes()), &validation)
            .map(|data| data.claims)
    }

    #[test]
    fn minted_token_validates_with_the_same_secret() {
        let auth = Auth::hs256(SECRET, false, Duration::from_secs(600));
        let token = auth.mint("load-u7", "load").expect("sign").expect("token");
        let claims = validate(&token, SECRET).expect("valid token");
        assert_eq!(claims.sub, "load-u7");
        assert_eq!(claims.dev, "load");
        assert!(claims.exp >= claims.iat + 600);
        assert!(validate(&token, "another-secret").is_err());
    }

    #[test]
    fn token_goes_into_the_authorization_header() {
        let auth = Auth::hs256(SECRET, false, Duration::from_secs(600));
        let request = auth.request("ws://127.0.0.1:8080/ws", "load-u1", "d1").expect("request");
        assert_eq!(request.uri().to_string(), "ws://127.0.0.1:8080/ws");
        let header = request.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok()).expect("authorization header");
        let token = header.strip_prefix("Bearer ").expect("bearer");
        assert_eq!(validate(token, SECRET).expect("valid").sub, "load-u1");
    }

    #[test]
    fn token_can_go_into_the_query() {
        let auth = Auth::hs256(SECRET, true, Duration::from_secs(600));
        let request = auth.request("ws://127.0.0.1:8080/ws?x=1", "load-u1", "d1").expect("request");
        let query = request.uri().query().expect("query");
        let token = query.strip_prefix("x=1&token=").expect("token param");
        assert_eq!(validate(token, SECRET).expect("valid").dev, "d1");
        assert!(request.headers().get(AUTHORIZATION).is_none());
    }

    #[test]
    fn dev_mode_uses_query_ids() {
        let request = Auth::dev().request("ws://127.0.0.1:9/ws", "load-u3", "load").expect("request");
        assert_eq!(request.uri().query(), Some("user=load-u3&device=load"));
        assert!(Auth::dev().mint("u", "d").expect("no-op").is_none());
    }

    #[test]
    fn debug_does_not_show_the_key() {
        let debug = format!("{:?}", Auth::hs256(SECRET, false, Duration::from_secs(1)));
        assert!(!debug.contains(SECRET), "{debug}");
    }
}
