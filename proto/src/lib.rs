//! switchboard wire contract v1: the frames clients and servers exchange, their JSON
//! codec, and the error and close codes. No IO and no async runtime: the server, the
//! load generator and Rust clients all build on this crate.
//!
//! The protocol as a client author sees it is written down in `proto/README.md`; DESIGN
//! section 5 is the fixed contract this crate implements.
//!
//! # Layout
//!
//! - [`ids`]: user, device and conversation ids, validated once when made.
//! - [`client`]: client-to-server frames ([`ClientFrame`] and one struct per shape).
//! - [`server`]: server-to-client frames ([`ServerFrame`] and one struct per type).
//! - [`codec`]: [`decode_client`] (the server's trust boundary, with [`DecodeLimits`]),
//!   [`decode_server`], [`encode`] and the hot-path [`encode_msg`] / [`encode_history`].
//! - [`limits`]: default limits and the `limits` object announced in `hello`.
//! - [`error`]: [`ErrorCode`], the `code` of `error` frames.
//! - [`close`]: [`CloseCode`], the one table of WebSocket close codes.

// Tests may unwrap: a panic there is a test failure with a backtrace.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod client;
pub mod close;
pub mod codec;
pub mod error;
pub mod ids;
pub mod limits;
pub mod server;

pub use client::{
    ClientFrame, GroupChangeFrame, GroupCreateFrame, HistoryFrame, PingFrame, PresenceSubFrame, ReceiptFrame,
    ReceiptKind, SendFrame, SubscribeFrame, SyncFrame, TypingFrame, TypingState, UnsubscribeFrame,
};
pub use close::CloseCode;
pub use codec::{
    DecodeError, DecodeLimits, decode_client, decode_server, encode, encode_client, encode_history, encode_msg,
};
pub use error::ErrorCode;
pub use ids::{ConvId, ConvKind, DeviceId, IdError, UserId};
pub use limits::Limits;
pub use server::{
    Ack, ErrorFrame, Group, Hello, History, Msg, Pong, Presence, PresenceStatus, ReceiptEvent, ServerFrame, Subscribed,
    Synced, TypingEvent, Unsubscribed,
};

/// The WebSocket subprotocol of the JSON encoding (the default).
pub const SUBPROTOCOL: &str = "switchboard.v1.json";

/// The version of this crate, which is the server's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The `server` string of `hello`: `switchboard/<version>`.
pub fn server_name() -> String {
    format!("switchboard/{VERSION}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn server_name_carries_the_version() {
        assert_eq!(super::server_name(), format!("switchboard/{}", env!("CARGO_PKG_VERSION")));
        assert_eq!(super::SUBPROTOCOL, "switchboard.v1.json");
    }
}
