//! The error codes of `error` frames (DESIGN section 5).
//!
//! A code tells the client *what to do* (fix the request, retry later, give up); the
//! accompanying human-readable `message` is for logs and is not part of the contract.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The `code` of an `error` frame. The wire form is the snake_case name
/// (`bad_request`, `rate_limited`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is malformed or breaks a rule of the contract. Retrying the same frame
    /// gives the same answer.
    BadRequest,
    /// The connection's credentials do not allow this (for example an expired token).
    Unauthorized,
    /// The user may not act on this resource (for example not a member of the group).
    Forbidden,
    /// The conversation (or other resource) does not exist.
    NotFound,
    /// The frame, its body or one of its lists exceeds a limit announced in `hello`.
    TooLarge,
    /// A rate limit was hit; retry after `retry_after_ms`.
    RateLimited,
    /// A dependency (the store) is unavailable; retry the same request later (a `send`
    /// with the same `cmid` is safe to retry).
    Unavailable,
    /// The server is shedding load; retry later.
    Overloaded,
    /// A bug or an unexpected failure on the server.
    Internal,
}

impl ErrorCode {
    /// Every code, in declaration order (for tables, docs and exhaustive tests).
    pub const ALL: [ErrorCode; 9] = [
        ErrorCode::BadRequest,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::TooLarge,
        ErrorCode::RateLimited,
        ErrorCode::Unavailable,
        ErrorCode::Overloaded,
        ErrorCode::Internal,
    ];

    /// The wire name, identical to the serde form.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Internal => "internal",
        }
    }

    /// Whether the same request may succeed if the client retries it later, unchanged.
    /// Clients use this to choose between backing off and surfacing the error.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorCode::RateLimited | ErrorCode::Unavailable | ErrorCode::Overloaded | ErrorCode::Internal)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn as_str_matches_the_serde_form() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            let back: ErrorCode = serde_json::from_str(&json).unwrap();
            assert_eq!(back, code);
        }
    }

    #[test]
    fn wire_names_are_the_contract() {
        let names: Vec<_> = ErrorCode::ALL.iter().map(|code| code.as_str()).collect();
        assert_eq!(
            names,
            [
                "bad_request",
                "unauthorized",
                "forbidden",
                "not_found",
                "too_large",
                "rate_limited",
                "unavailable",
                "overloaded",
                "internal"
            ]
        );
    }

    #[test]
    fn only_transient_codes_are_retryable() {
        assert!(!ErrorCode::BadRequest.is_retryable());
        assert!(!ErrorCode::TooLarge.is_retryable());
        assert!(ErrorCode::Unavailable.is_retryable());
        assert!(ErrorCode::RateLimited.is_retryable());
    }
}
