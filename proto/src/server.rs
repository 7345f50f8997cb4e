//! Frames the server sends to a client (DESIGN section 5, "Server to client").
//!
//! Every struct here carries its own `type` tag (`#[serde(tag = "type")]` on the struct),
//! so any one of them encodes to a complete frame on its own: the server encodes an
//! [`Ack`] without wrapping it in [`ServerFrame`]. Decoding ignores the tag (it is an
//! unknown field to the struct); [`crate::codec::decode_server`] reads it first to pick
//! the struct.
//!
//! All structs are `Deserialize` too, for tests, the load generator and Rust clients.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

use crate::client::{ReceiptKind, TypingState};
use crate::error::ErrorCode;
use crate::ids::{ConvId, DeviceId, UserId};
use crate::limits::Limits;

/// `hello`: the first frame on every connection. The server then resumes the device (as
/// a `sync` with the stored cursors), which ends with a `synced` without `ref`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "hello")]
pub struct Hello {
    pub user: UserId,
    pub device: DeviceId,
    /// The id of the node serving this connection.
    pub node: String,
    /// Server software and version, e.g. `switchboard/0.1.0`.
    pub server: String,
    pub limits: Limits,
}

/// `ack`: the reply to `send`, sent once the message is durable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "ack")]
pub struct Ack {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
    pub conv: ConvId,
    pub seq: u64,
    pub mid: String,
    /// Server time of the message, ms since the Unix epoch.
    pub ts: u64,
    /// True when the `cmid` had been seen: `seq`/`mid`/`ts` are the original message's.
    #[serde(default)]
    pub dup: bool,
}

/// `msg`: one message of a conversation's log.
///
/// Encoded once by [`crate::codec::encode_msg`], stored as those bytes and fanned out to
/// every recipient unchanged.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename = "msg")]
pub struct Msg {
    pub conv: ConvId,
    pub seq: u64,
    pub mid: String,
    pub from: UserId,
    pub dev: DeviceId,
    /// Server time, ms since the Unix epoch.
    pub ts: u64,
    /// The sender's body, verbatim.
    pub body: Box<RawValue>,
    /// A message written by the server (membership changes); omitted when false.
    #[serde(default, skip_serializing_if = "is_false")]
    pub system: bool,
}

/// Bodies compare by their JSON text (`RawValue` has no equality of its own).
impl PartialEq for Msg {
    fn eq(&self, other: &Self) -> bool {
        self.conv == other.conv
            && self.seq == other.seq
            && self.mid == other.mid
            && self.from == other.from
            && self.dev == other.dev
            && self.ts == other.ts
            && self.body.get() == other.body.get()
            && self.system == other.system
    }
}

// serde's `skip_serializing_if` takes a path to a function of `&T`.
#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_false(value: &bool) -> bool {
    !*value
}

/// `receipt`: `user` has delivered or read `conv` up to `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "receipt")]
pub struct ReceiptEvent {
    pub conv: ConvId,
    pub user: UserId,
    pub kind: ReceiptKind,
    pub seq: u64,
    pub ts: u64,
    /// Extension of v1, groups only: every member has reached `seq` (`user` is the member
    /// whose receipt completed it). Large groups relay only these aggregated receipts;
    /// per-member marks are read with a `receipts` request.
    #[serde(default, skip_serializing_if = "is_false")]
    pub all: bool,
}

/// `receipts` (extension of v1): the reply to a `receipts` request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "receipts")]
pub struct Receipts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
    pub conv: ConvId,
    /// Members with any mark, by user id.
    pub members: Vec<MemberReceipts>,
}

/// One member's receipt high-water marks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberReceipts {
    pub user: UserId,
    pub delivered: u64,
    pub read: u64,
}

/// `synced`: the end of a resume or `sync` replay, with each conversation's latest seq.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "synced")]
pub struct Synced {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
    pub convs: BTreeMap<ConvId, u64>,
}

/// `history`: a page of stored messages, newest first. The server builds it with
/// [`crate::codec::encode_history`] from stored `msg` bytes; this struct is for decoding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "history")]
pub struct History {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
    pub conv: ConvId,
    pub messages: Vec<Msg>,
}

/// `group`: the reply to `group_create`, `group_add` and `group_remove`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "group")]
pub struct Group {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
    pub conv: ConvId,
    pub name: String,
    /// The members after the change.
    pub members: Vec<UserId>,
}

/// `subscribed`: the reply to `subscribe`, with the feed's latest seq; the missed `msg`
/// frames follow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "subscribed")]
pub struct Subscribed {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
    pub conv: ConvId,
    pub seq: u64,
}

/// `unsubscribed`: the reply to `unsubscribe`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "unsubscribed")]
pub struct Unsubscribed {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
    pub conv: ConvId,
}

/// `presence`: a watched user's presence, sent on `presence_sub` and on every change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "presence")]
pub struct Presence {
    pub user: UserId,
    pub status: PresenceStatus,
    /// When the user was last online, ms since the Unix epoch (0 if never).
    pub last_seen: u64,
}

/// Online while any device of the user is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceStatus {
    Online,
    Offline,
}

/// `typing`: `user` started or stopped typing in `conv`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "typing")]
pub struct TypingEvent {
    pub conv: ConvId,
    pub user: UserId,
    pub state: TypingState,
}

/// `error`: a request failed (echoing its `ref` when it had one), or the server reports
/// a problem with no request behind it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "error")]
pub struct ErrorFrame {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
    pub code: ErrorCode,
    /// Human-readable detail for logs; not part of the contract.
    pub message: String,
    /// For `rate_limited`, `overloaded` and `unavailable`: wait at least this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl ErrorFrame {
    /// An error without `ref` or `retry_after_ms`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { r#ref: None, code, message: message.into(), retry_after_ms: None }
    }

    /// Echo the request's `ref`.
    pub fn with_ref(mut self, reference: Option<&str>) -> Self {
        self.r#ref = reference.map(str::to_owned);
        self
    }

    /// Tell the client when to retry.
    pub fn with_retry_after_ms(mut self, retry_after_ms: u64) -> Self {
        self.retry_after_ms = Some(retry_after_ms);
        self
    }
}

/// `pong`: the reply to `ping`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "pong")]
pub struct Pong {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
}

/// Any server-to-client frame.
///
/// Serializes as the inner struct (which carries the `type`). Deserializes through
/// [`crate::codec::decode_server`], because serde's internally tagged enums cannot hold
/// `RawValue` bodies; that only works with `serde_json` deserializers.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ServerFrame {
    Hello(Hello),
    Ack(Ack),
    Msg(Msg),
    Receipt(ReceiptEvent),
    Synced(Synced),
    History(History),
    Group(Group),
    Subscribed(Subscribed),
    Unsubscribed(Unsubscribed),
    Presence(Presence),
    Typing(TypingEvent),
    Error(ErrorFrame),
    Pong(Pong),
    Receipts(Receipts),
}

impl ServerFrame {
    /// The wire `type` of this frame.
    pub fn type_name(&self) -> &'static str {
        match self {
            ServerFrame::Hello(_) => "hello",
            ServerFrame::Ack(_) => "ack",
            ServerFrame::Msg(_) => "msg",
            ServerFrame::Receipt(_) => "receipt",
            ServerFrame::Synced(_) => "synced",
            ServerFrame::History(_) => "history",
            ServerFrame::Group(_) => "group",
            ServerFrame::Subscribed(_) => "subscribed",
            ServerFrame::Unsubscribed(_) => "unsubscribed",
            ServerFrame::Presence(_) => "presence",
            ServerFrame::Typing(_) => "typing",
            ServerFrame::Error(_) => "error",
            ServerFrame::Pong(_) => "pong",
            ServerFrame::Receipts(_) => "receipts",
        }
    }

    /// The `ref` of the request this frame answers, if any.
    pub fn request_ref(&self) -> Option<&str> {
        let reference = match self {
            ServerFrame::Ack(frame) => &frame.r#ref,
            ServerFrame::Synced(frame) => &frame.r#ref,
            ServerFrame::History(frame) => &frame.r#ref,
            ServerFrame::Group(frame) => &frame.r#ref,
            ServerFrame::Subscribed(frame) => &frame.r#ref,
            ServerFrame::Unsubscribed(frame) => &frame.r#ref,
            ServerFrame::Error(frame) => &frame.r#ref,
            ServerFrame::Pong(frame) => &frame.r#ref,
            ServerFrame::Receipts(frame) => &frame.r#ref,
            ServerFrame::Hello(_)
            | ServerFrame::Msg(_)
            | ServerFrame::Receipt(_)
            | ServerFrame::Presence(_)
            | ServerFrame::Typing(_) => return None,
        };
        reference.as_deref()
    }
}

impl<'de> Deserialize<'de> for ServerFrame {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        crate::codec::decode_server(raw.get()).map_err(serde::de::Error::custom)
    }
}

macro_rules! into_server_frame {
    ($($variant:ident($frame:ident)),* $(,)?) => {
        $(
            impl From<$frame> for ServerFrame {
                fn from(frame: $frame) -> Self {
                    ServerFrame::$variant(frame)
                }
            }
        )*
    };
}

into_server_frame!(
    Hello(Hello),
    Ack(Ack),
    Msg(Msg),
    Receipt(ReceiptEvent),
    Synced(Synced),
    History(History),
    Group(Group),
    Subscribed(Subscribed),
    Unsubscribed(Unsubscribed),
    Presence(Presence),
    Typing(TypingEvent),
    Error(ErrorFrame),
    Pong(Pong),
    Receipts(Receipts),
);

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(text: &str) -> ConvId {
        ConvId::new(text).unwrap()
    }

    #[test]
    fn structs_carry_their_own_type_tag() {
        let ack = Ack { r#ref: None, conv: conv("dm:a:b"), seq: 7, mid: "m".into(), ts: 9, dup: false };
        assert_eq!(
            serde_json::to_string(&ack).unwrap(),
            r#"{"type":"ack","conv":"dm:a:b","seq":7,"mid":"m","ts":9,"dup":false}"#
        );
        // Wrapping in ServerFrame does not add a second tag.
        assert_eq!(
            serde_json::to_string(&ServerFrame::from(ack.clone())).unwrap(),
            serde_json::to_string(&ack).unwrap()
        );
    }

    #[test]
    fn wire_field_names() {
        let error = ErrorFrame::new(ErrorCode::RateLimited, "slow down").with_ref(Some("r")).with_retry_after_ms(250);
        assert_eq!(
            serde_json::to_string(&error).unwrap(),
            r#"{"type":"error","ref":"r","code":"rate_limited","message":"slow down","retry_after_ms":250}"#
        );
        let presence = Presence { user: UserId::new("u").unwrap(), status: PresenceStatus::Offline, last_seen: 5 };
        assert_eq!(
            serde_json::to_string(&presence).unwrap(),
            r#"{"type":"presence","user":"u","status":"offline","last_seen":5}"#
        );
    }

    #[test]
    fn msg_omits_system_when_false_and_decodes_with_raw_body() {
        let text = r#"{"type":"msg","conv":"feed:f","seq":1,"mid":"m","from":"a","dev":"d","ts":2,"body":[1, 2]}"#;
        let msg: Msg = serde_json::from_str(text).unwrap();
        assert_eq!(msg.body.get(), "[1, 2]");
        assert!(!msg.system);
        assert_eq!(serde_json::to_string(&msg).unwrap(), text);
    }

    #[test]
    fn request_ref_and_type_name() {
        let pong = ServerFrame::from(Pong { r#ref: Some("p".into()) });
        assert_eq!(pong.request_ref(), Some("p"));
        assert_eq!(pong.type_name(), "pong");
        let typing = ServerFrame::from(TypingEvent {
            conv: conv("group:g"),
            user: UserId::new("u").unwrap(),
            state: TypingState::Start,
        });
        assert_eq!(typing.request_ref(), None);
        assert_eq!(serde_json::to_value(&typing).unwrap()["type"], typing.type_name());
    }
}
