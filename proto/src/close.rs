//! The one table of WebSocket close codes the server uses (DESIGN section 5).
//!
//! Every close the server initiates goes through [`CloseCode`], so the numeric code, the
//! short reason sent in the close frame and the advice to the client live in one place.
//! Codes 1000-1013 are the standard ones (RFC 6455 section 7.4.1, IANA registry);
//! 4000-4999 are reserved for applications.

use std::fmt;

/// Why the server closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum CloseCode {
    /// 1000: the session ended normally (for example after an admin disconnect).
    Normal = 1000,
    /// 1001: the node is shutting down; reconnect, preferably to another node.
    GoingAway = 1001,
    /// 1008: policy violation; the token expired or was revoked. Get a new token first.
    Policy = 1008,
    /// 1009: a frame exceeded the transport's maximum message size.
    TooLarge = 1009,
    /// 1011: an internal error on the server; reconnect with backoff.
    Internal = 1011,
    /// 1013: the server is overloaded; reconnect later, with backoff.
    Overloaded = 1013,
    /// 4001: the client did not read fast enough and its outbox filled. Nothing was lost:
    /// reconnect and the server resumes from the device's cursor.
    SlowConsumer = 4001,
    /// 4002: a newer connection of the same (user, device) replaced this one. Do not
    /// reconnect automatically, or two clients will keep replacing each other.
    Replaced = 4002,
    /// 4003: the connection kept breaking rate limits after `rate_limited` errors.
    RateLimitAbuse = 4003,
}

impl CloseCode {
    /// Every code, in numeric order.
    pub const ALL: [CloseCode; 9] = [
        CloseCode::Normal,
        CloseCode::GoingAway,
        CloseCode::Policy,
        CloseCode::TooLarge,
        CloseCode::Internal,
        CloseCode::Overloaded,
        CloseCode::SlowConsumer,
        CloseCode::Replaced,
        CloseCode::RateLimitAbuse,
    ];

    /// The numeric code put in the close frame.
    pub fn code(self) -> u16 {
        self as u16
    }

    /// The short reason text sent in the close frame. WebSocket limits the reason to 123
    /// bytes; these are kept far below that and are plain ASCII.
    pub fn reason(self) -> &'static str {
        match self {
            CloseCode::Normal => "normal closure",
            CloseCode::GoingAway => "server going away: reconnect elsewhere",
            CloseCode::Policy => "policy: token expired or revoked",
            CloseCode::TooLarge => "frame too large",
            CloseCode::Internal => "internal error: reconnect with backoff",
            CloseCode::Overloaded => "overloaded: try again later",
            CloseCode::SlowConsumer => "slow consumer: reconnect and resume",
            CloseCode::Replaced => "replaced by a newer connection of this device",
            CloseCode::RateLimitAbuse => "rate limit abuse",
        }
    }

    /// The close code with this number, if it is one of ours.
    pub fn from_code(code: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|candidate| candidate.code() == code)
    }

    /// Whether a well-behaved client should reconnect on its own after this close.
    /// `Policy` needs a new token first and `Replaced` means another connection of the
    /// same device is live; every other close is followed by a reconnect (with backoff)
    /// and a resume.
    pub fn should_reconnect(self) -> bool {
        !matches!(self, CloseCode::Policy | CloseCode::Replaced)
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.code(), self.reason())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_the_contract() {
        let codes: Vec<u16> = CloseCode::ALL.iter().map(|close| close.code()).collect();
        assert_eq!(codes, [1000, 1001, 1008, 1009, 1011, 1013, 4001, 4002, 4003]);
    }

    #[test]
    fn from_code_inverts_code() {
        for close in CloseCode::ALL {
            assert_eq!(CloseCode::from_code(close.code()), Some(close));
        }
        assert_eq!(CloseCode::from_code(1002), None);
        assert_eq!(CloseCode::from_code(4000), None);
    }

    #[test]
    fn reasons_fit_in_a_close_frame() {
        for close in CloseCode::ALL {
            let reason = close.reason();
            assert!(!reason.is_empty());
            assert!(reason.len() <= 123, "{close:?} reason is too long");
            assert!(reason.is_ascii());
        }
        assert_eq!(CloseCode::SlowConsumer.reason(), "slow consumer: reconnect and resume");
    }

    #[test]
    fn reconnect_advice() {
        assert!(CloseCode::SlowConsumer.should_reconnect());
        assert!(CloseCode::GoingAway.should_reconnect());
        assert!(!CloseCode::Replaced.should_reconnect());
        assert!(!CloseCode::Policy.should_reconnect());
    }
}
