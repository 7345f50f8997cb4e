//! Size limits of the protocol: their defaults and the `limits` object of `hello`.
//!
//! The decoder enforces these ([`crate::codec::DecodeLimits`]); the server announces
//! them to every client in `hello` ([`Limits`]) so a client can check a frame before
//! sending it instead of learning from a `too_large` error.

use serde::{Deserialize, Serialize};

/// Default cap on one text frame, in bytes. The WebSocket layer should be configured
/// with the same maximum message size so oversized frames are refused before they are
/// buffered whole.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 * 1024;
/// Default cap on the JSON text of a `send` body, in bytes.
pub const DEFAULT_MAX_BODY_BYTES: usize = 32 * 1024;
/// Default cap on a `cmid`, in bytes.
pub const DEFAULT_MAX_CMID_BYTES: usize = 128;
/// Default cap on a `ref`, in bytes.
pub const DEFAULT_MAX_REF_BYTES: usize = 128;
/// Default cap on the `members` and `users` lists.
pub const DEFAULT_MAX_LIST_LEN: usize = 1000;
/// Default cap on the number of entries in a `sync`'s `cursors`. With the default frame
/// size the frame limit usually binds first (a cursor entry is 20-90 bytes).
pub const DEFAULT_MAX_CURSORS: usize = 10_000;
/// Default cap on a group `name`, in bytes.
pub const DEFAULT_MAX_NAME_BYTES: usize = 256;
/// The `history` page size when the request has no `limit`.
pub const DEFAULT_HISTORY_LIMIT: u32 = 50;
/// The largest `limit` a `history` request may ask for (fixed by the contract).
pub const MAX_HISTORY_LIMIT: u32 = 200;

/// The `limits` object of `hello`: what this server accepts.
///
/// New fields may be added (the contract is extended compatibly); a client decoding an
/// older server's `hello` gets the defaults for fields it does not find.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// Largest text frame the server accepts, in bytes.
    pub max_frame_bytes: usize,
    /// Largest `send` body (its JSON text), in bytes.
    pub max_body_bytes: usize,
    /// Largest `limit` of a `history` request.
    pub max_history_limit: u32,
    /// Longest `cmid`, in bytes.
    pub max_cmid_bytes: usize,
    /// Longest `ref`, in bytes.
    pub max_ref_bytes: usize,
    /// Longest `members` or `users` list.
    pub max_list_len: usize,
    /// Most entries in a `sync`'s `cursors`.
    pub max_cursors: usize,
    /// Longest group `name`, in bytes.
    pub max_name_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_history_limit: MAX_HISTORY_LIMIT,
            max_cmid_bytes: DEFAULT_MAX_CMID_BYTES,
            max_ref_bytes: DEFAULT_MAX_REF_BYTES,
            max_list_len: DEFAULT_MAX_LIST_LEN,
            max_cursors: DEFAULT_MAX_CURSORS,
            max_name_bytes: DEFAULT_MAX_NAME_BYTES,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_fields_take_defaults() {
        let limits: Limits = serde_json::from_str(r#"{"max_frame_bytes":1000,"future":1}"#).unwrap();
        assert_eq!(limits.max_frame_bytes, 1000);
        assert_eq!(limits.max_history_limit, MAX_HISTORY_LIMIT);
    }

    #[test]
    fn body_fits_in_a_frame() {
        let limits = Limits::default();
        assert!(limits.max_body_bytes < limits.max_frame_bytes);
    }
}
