//! Mints JWTs the way an auth service would, for the test secret.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

/// The HS256 secret every test server runs with.
pub(crate) const SECRET: &str = "integration-test-secret";

/// The admin API bearer token every test server runs with.
pub(crate) const ADMIN_TOKEN: &str = "integration-admin-token";

pub(crate) fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// A token with arbitrary claims, signed with `secret`.
pub(crate) fn sign_with(claims: Value, secret: &str) -> String {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
}

/// A valid token for `user` on `device`, an hour long.
pub(crate) fn token(user: &str, device: &str) -> String {
    sign_with(json!({"sub": user, "dev": device, "iat": now(), "exp": now() + 3600}), SECRET)
}
