//! JSON codec of the `switchboard.v1.json` subprotocol: text frames <-> frames.
//!
//! Decoding client frames is the server's trust boundary: [`decode_client`] checks the
//! frame against [`DecodeLimits`] and turns every problem into a [`DecodeError`] that
//! maps one-to-one onto an `error` frame, echoing the request's `ref` whenever it could
//! be read. Encoding server frames produces `bytes::Bytes` so one encoding can be shared by
//! every recipient without copying.
//!
//! - `decode`: [`decode_client`] (with limits) and [`decode_server`].
//! - `encode`: [`encode`] for any server frame, the hot-path
//!   [`encode_msg`] and [`encode_history`] (which splices stored `msg` frames), and
//!   [`encode_client`] for tests and load tools.

mod decode;
mod encode;
#[cfg(test)]
mod strategies;

pub use self::decode::{decode_client, decode_server};
pub use self::encode::{encode, encode_client, encode_history, encode_msg};

use crate::error::ErrorCode;
use crate::limits::{
    DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_CMID_BYTES, DEFAULT_MAX_CURSORS, DEFAULT_MAX_FRAME_BYTES, DEFAULT_MAX_LIST_LEN,
    DEFAULT_MAX_NAME_BYTES, DEFAULT_MAX_REF_BYTES, Limits, MAX_HISTORY_LIMIT,
};
use crate::server::ErrorFrame;

/// What [`decode_client`] accepts. Every limit is in bytes of the frame's text, except
/// the list and map sizes, which count entries.
///
/// Exceeding any of these is `too_large` (a list over `max_list_len` included: the
/// request is well formed, only bigger than this server allows). A value that breaks a
/// rule of the contract itself (an empty `cmid`, a `history` `limit` outside 1..=200) is
/// `bad_request`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest text frame. Checked first, before any parsing.
    pub max_frame_bytes: usize,
    /// Largest `send` body, measured as its JSON text.
    pub max_body_bytes: usize,
    /// Longest `cmid`.
    pub max_cmid_bytes: usize,
    /// Longest `ref`.
    pub max_ref_bytes: usize,
    /// Longest `members` or `users` list.
    pub max_list_len: usize,
    /// Most entries in a `sync`'s `cursors`.
    pub max_cursors: usize,
    /// Longest group `name`.
    pub max_name_bytes: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_cmid_bytes: DEFAULT_MAX_CMID_BYTES,
            max_ref_bytes: DEFAULT_MAX_REF_BYTES,
            max_list_len: DEFAULT_MAX_LIST_LEN,
            max_cursors: DEFAULT_MAX_CURSORS,
            max_name_bytes: DEFAULT_MAX_NAME_BYTES,
        }
    }
}

impl DecodeLimits {
    /// The `limits` object to announce in `hello`, so clients learn exactly what this
    /// decoder enforces.
    pub fn to_wire(&self) -> Limits {
        Limits {
            max_frame_bytes: self.max_frame_bytes,
            max_body_bytes: self.max_body_bytes,
            max_history_limit: MAX_HISTORY_LIMIT,
            max_cmid_bytes: self.max_cmid_bytes,
            max_ref_bytes: self.max_ref_bytes,
            max_list_len: self.max_list_len,
            max_cursors: self.max_cursors,
            max_name_bytes: self.max_name_bytes,
        }
    }
}

/// Why a frame could not be decoded; becomes an `error` frame via [`ErrorFrame::from`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct DecodeError {
    /// `bad_request` or `too_large`.
    pub code: ErrorCode,
    /// Names the offending field and the reason, for the client author's logs.
    pub message: String,
    /// The frame's `ref`, when it was a valid string within limits.
    pub r#ref: Option<String>,
}

impl DecodeError {
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self { code: ErrorCode::BadRequest, message: message.into(), r#ref: None }
    }

    pub(crate) fn too_large(message: impl Into<String>) -> Self {
        Self { code: ErrorCode::TooLarge, message: message.into(), r#ref: None }
    }
}

impl From<DecodeError> for ErrorFrame {
    fn from(error: DecodeError) -> Self {
        ErrorFrame { r#ref: error.r#ref, code: error.code, message: error.message, retry_after_ms: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_limits_mirror_the_decoder() {
        let limits = DecodeLimits { max_frame_bytes: 1234, ..DecodeLimits::default() };
        let wire = limits.to_wire();
        assert_eq!(wire.max_frame_bytes, 1234);
        assert_eq!(wire.max_history_limit, MAX_HISTORY_LIMIT);
        assert_eq!(DecodeLimits::default().to_wire(), Limits::default());
    }

    #[test]
    fn decode_error_becomes_an_error_frame() {
        let error = DecodeError { r#ref: Some("r".into()), ..DecodeError::bad_request("nope") };
        let frame = ErrorFrame::from(error);
        assert_eq!(frame.code, ErrorCode::BadRequest);
        assert_eq!(frame.r#ref.as_deref(), Some("r"));
        assert_eq!(frame.message, "nope");
    }
}
