//! Authentication at the WebSocket upgrade.
//!
//! A client proves who it is before any actor exists for it: a JWT in
//! `Authorization: Bearer <t>` or `?token=<t>`, verified with HS256 (secret from
//! `SWITCHBOARD_JWT_SECRET`) or RS256/EdDSA (a PEM public key file). `exp` is required,
//! `nbf` is honoured, `alg` must be the configured one (so `alg: none` and algorithm
//! confusion are refused), and `aud`/`iss` are checked when configured.
//!
//! A token may grant publishing to feeds with a `pub` claim: a list of feed ids
//! (`"feed:news"`) or prefixes ending in `*` (`"feed:*"` for every feed).
//!
//! Development mode (`--dev`) also accepts `?user=<u>&device=<d>` without a token. It is
//! off by default and refused on non-loopback addresses unless forced.

use std::path::Path;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use switchboard_proto::ids::{ConvId, DeviceId, UserId};

use crate::config::{AuthConfig, JwtAlgorithm};

/// Who a connection belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: UserId,
    pub device: DeviceId,
    /// `iat` of the token (seconds), if it had one; dev identities have none.
    pub issued_at: Option<u64>,
    /// `exp` of the token (seconds); the connection is closed with 1008 then.
    pub expires_at: Option<u64>,
    /// Feeds this identity may publish to (the `pub` claim): ids or `*`-ended prefixes.
    pub publish: Vec<String>,
}

impl Identity {
    /// Whether the token grants publishing to `feed`.
    pub fn may_publish(&self, feed: &ConvId) -> bool {
        self.publish.iter().any(|grant| match grant.strip_suffix('*') {
            Some(prefix) => feed.as_str().starts_with(prefix),
            None => grant == feed.as_str(),
        })
    }

    /// Whether a revocation of tokens issued before `before_ms` covers this identity.
    pub fn is_revoked_by(&self, before_ms: u64) -> bool {
        issued_before(self.issued_at, before_ms)
    }
}

/// Whether a token with `iat` = `issued_at` (seconds) was issued before `before_ms`. A
/// token without `iat` cannot prove it is newer, so it counts as earlier.
pub fn issued_before(issued_at: Option<u64>, before_ms: u64) -> bool {
    issued_at.is_none_or(|issued_at| issued_at.saturating_mul(1000) < before_ms)
}

/// Why an upgrade is refused with 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    #[error("missing credentials: send a JWT as `Authorization: Bearer <token>` or `?token=`")]
    Missing,
    #[error("invalid token: {0}")]
    InvalidToken(String),
    #[error("token has an invalid subject or device id: {0}")]
    InvalidIdentity(String),
}

/// Why the authenticator cannot be built (bad key file, missing secret).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthSetupError {
    #[error("SWITCHBOARD_JWT_SECRET is not set; set it (HS256) or configure auth.public_key_file, or run with --dev")]
    MissingSecret,
    #[error("cannot read public key file {path}: {source}")]
    ReadKey { path: String, source: std::io::Error },
    #[error("public key file {path} is not a valid PEM key: {source}")]
    BadKey { path: String, source: jsonwebtoken::errors::Error },
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    dev: Option<String>,
    exp: u64,
    #[serde(default)]
    iat: Option<u64>,
    #[serde(default, rename = "pub")]
    publish: Vec<String>,
}

/// Verifies tokens (and dev identities) for the gateway.
pub struct Authenticator {
    key: Option<(DecodingKey, Validation)>,
    dev: bool,
}

impl std::fmt::Debug for Authenticator {
    // The key is a secret: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("jwt", &self.key.as_ref().map(|(_, validation)| validation.algorithms.clone()))
            .field("dev", &self.dev)
            .finish()
    }
}

impl Authenticator {
    /// Builds the verifier from the configuration and the secret in the environment.
    /// With `dev` and no key material, only dev identities are accepted.
    pub fn new(config: &AuthConfig, hs256_secret: Option<&[u8]>, dev: bool) -> Result<Self, AuthSetupError> {
        let key = match config.algorithm {
            JwtAlgorithm::Hs256 => match hs256_secret {
                Some(secret) if !secret.is_empty() => Some((DecodingKey::from_secret(secret), Algorithm::HS256)),
                _ if dev => None,
                _ => return Err(AuthSetupError::MissingSecret),
            },
            JwtAlgorithm::Rs256 | JwtAlgorithm::EdDsa => {
                let path = config.public_key_file.as_deref().unwrap_or(Path::new(""));
                let display = path.display().to_string();
                let pem =
                    std::fs::read(path).map_err(|source| AuthSetupError::ReadKey { path: display.clone(), source })?;
                let (key, algorithm) = if config.algorithm == JwtAlgorithm::Rs256 {
                    (DecodingKey::from_rsa_pem(&pem), Algorithm::RS256)
                } else {
                    (DecodingKey::from_ed_pem(&pem), Algorithm::EdDSA)
                };
                let key = key.map_err(|source| AuthSetupError::BadKey { path: display, source })?;
                Some((key, algorithm))
            }
        };
        let key = key.map(|(key, algorithm)| {
            let mut validation = Validation::new(algorithm);
            validation.leeway = config.leeway_secs;
            validation.validate_nbf = true;
            validation.set_required_spec_claims(&["exp", "sub"]);
            match &config.audience {
                Some(audience) => validation.set_audience(&[audience]),
                None => validation.validate_aud = false,
            }
            if let Some(issuer) = &config.issuer {
                validation.set_issuer(&[issuer]);
            }
            (key, validation)
        });
        Ok(Self { key, dev })
    }

    pub fn dev_mode(&self) -> bool {
        self.dev
    }

    /// Authenticates an upgrade request from its bearer token (header or query) or, in
    /// dev mode, from `user`/`device` query parameters.
    pub fn authenticate(
        &self,
        bearer: Option<&str>,
        query_token: Option<&str>,
        dev_user: Option<&str>,
        dev_device: Option<&str>,
    ) -> Result<Identity, AuthError> {
        if let Some(token) = bearer.or(query_token) {
            return self.verify(token);
        }
        if self.dev
            && let Some(user) = dev_user
        {
            let user = UserId::new(user).map_err(|error| AuthError::InvalidIdentity(error.to_string()))?;
            let device = match dev_device {
                Some(device) => DeviceId::new(device).map_err(|error| AuthError::InvalidIdentity(error.to_string()))?,
                None => DeviceId::default_device(),
            };
            // A dev identity is "issued" by this very request (a revocation covers only
            // earlier logins); in dev mode every user may publish to every feed.
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |now| now.as_secs());
            return Ok(Identity {
                user,
                device,
                issued_at: Some(now),
                expires_at: None,
                publish: vec!["feed:*".to_owned()],
            });
        }
        Err(AuthError::Missing)
    }

    fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let Some((key, validation)) = &self.key else {
            return Err(AuthError::InvalidToken("this node has no token key configured (dev mode)".to_owned()));
        };
        let data = jsonwebtoken::decode::<Claims>(token, key, validation)
            .map_err(|error| AuthError::InvalidToken(error.to_string()))?;
        let claims = data.claims;
        let user = UserId::new(&claims.sub).map_err(|error| AuthError::InvalidIdentity(format!("sub: {error}")))?;
        let device = match claims.dev {
            Some(device) => {
                DeviceId::new(&device).map_err(|error| AuthError::InvalidIdentity(format!("dev: {error}")))?
            }
            None => DeviceId::default_device(),
        };
        Ok(Identity { user, device, issued_at: claims.iat, expires_at: Some(claims.exp), publish: claims.publish })
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    use super::*;

    const SECRET: &[u8] = b"test-secret";

    fn now() -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
    }

    fn token(claims: serde_json::Value) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET)).unwrap()
    }

    fn authenticator() -> Authenticator {
        Authenticator::new(&AuthConfig::default(), Some(SECRET), false).unwrap()
    }

    #[test]
    fn valid_token_gives_user_and_device() {
        let identity = authenticator()
            .authenticate(Some(&token(json!({"sub": "alice", "dev": "phone", "exp": now() + 60}))), None, None, None)
            .unwrap();
        assert_eq!(identity.user.as_str(), "alice");
        assert_eq!(identity.device.as_str(), "phone");
        let identity = authenticator()
            .authenticate(None, Some(&token(json!({"sub": "bob", "exp": now() + 60}))), None, None)
            .unwrap();
        assert_eq!(identity.device.as_str(), "default");
    }

    #[test]
    fn bad_tokens_are_refused() {
        let auth = authenticator();
        let expired = token(json!({"sub": "alice", "exp": now() - 3600}));
        let no_exp = token(json!({"sub": "alice"}));
        let not_yet = token(json!({"sub": "alice", "exp": now() + 7200, "nbf": now() + 3600}));
        let bad_sub = token(json!({"sub": "a b", "exp": now() + 60}));
        let wrong_key = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &json!({"sub": "alice", "exp": now() + 60}),
            &EncodingKey::from_secret(b"other"),
        )
        .unwrap();
        for bad in [expired, no_exp, not_yet, bad_sub, wrong_key, "garbage".to_owned()] {
            assert!(auth.authenticate(Some(&bad), None, None, None).is_err(), "{bad}");
        }
        // alg: none, hand made.
        let header = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0";
        let body = "eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0";
        assert!(auth.authenticate(Some(&format!("{header}.{body}.")), None, None, None).is_err());
        assert_eq!(auth.authenticate(None, None, Some("alice"), None), Err(AuthError::Missing));
    }

    #[test]
    fn dev_mode_accepts_query_identity() {
        let auth = Authenticator::new(&AuthConfig::default(), None, true).unwrap();
        let identity = auth.authenticate(None, None, Some("alice"), Some("web")).unwrap();
        assert_eq!((identity.user.as_str(), identity.device.as_str()), ("alice", "web"));
        assert!(auth.authenticate(None, None, Some("bad user"), None).is_err());
    }

    #[test]
    fn missing_secret_is_a_setup_error_outside_dev() {
        assert!(matches!(Authenticator::new(&AuthConfig::default(), None, false), Err(AuthSetupError::MissingSecret)));
    }

    #[test]
    fn audience_is_checked_when_configured() {
        let config = AuthConfig { audience: Some("chat".to_owned()), ..AuthConfig::default() };
        let auth = Authenticator::new(&config, Some(SECRET), false).unwrap();
        let wrong = token(json!({"sub": "alice", "exp": now() + 60, "aud": "other"}));
        let right = token(json!({"sub": "alice", "exp": now() + 60, "aud": "chat"}));
        assert!(auth.authenticate(Some(&wrong), None, None, None).is_err());
        assert!(auth.authenticate(Some(&right), None, None, None).is_ok());
    }
}
