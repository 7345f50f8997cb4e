//! Frames a client sends to the server (DESIGN section 5, "Client to server").
//!
//! The server never builds these from raw serde: [`crate::codec::decode_client`] parses
//! them and enforces the limits. They implement `Serialize` (through [`ClientFrame`],
//! which adds the `type` tag) for tests and the load generator, via
//! [`crate::codec::encode_client`].
//!
//! A struct shared by two frame types (`group_add`/`group_remove`,
//! `presence_sub`/`presence_unsub`) carries no tag of its own; the [`ClientFrame`]
//! variant decides the `type`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::ids::{ConvId, UserId};
use crate::limits::DEFAULT_HISTORY_LIMIT;

/// One client-to-server frame. The wire `type` is the snake_case variant name.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    Send(SendFrame),
    Receipt(ReceiptFrame),
    Sync(SyncFrame),
    History(HistoryFrame),
    GroupCreate(GroupCreateFrame),
    GroupAdd(GroupChangeFrame),
    GroupRemove(GroupChangeFrame),
    Subscribe(SubscribeFrame),
    Unsubscribe(UnsubscribeFrame),
    PresenceSub(PresenceSubFrame),
    PresenceUnsub(PresenceSubFrame),
    Typing(TypingFrame),
    Ping(PingFrame),
    /// Extension of v1: per-member receipt marks of a conversation.
    Receipts(ReceiptsFrame),
}

impl ClientFrame {
    /// Every wire `type` a client may send, for error messages and docs.
    pub const TYPE_NAMES: [&'static str; 14] = [
        "send",
        "receipt",
        "sync",
        "history",
        "group_create",
        "group_add",
        "group_remove",
        "subscribe",
        "unsubscribe",
        "presence_sub",
        "presence_unsub",
        "typing",
        "ping",
        "receipts",
    ];

    /// The wire `type` of this frame.
    pub fn type_name(&self) -> &'static str {
        match self {
            ClientFrame::Send(_) => "send",
            ClientFrame::Receipt(_) => "receipt",
            ClientFrame::Sync(_) => "sync",
            ClientFrame::History(_) => "history",
            ClientFrame::GroupCreate(_) => "group_create",
            ClientFrame::GroupAdd(_) => "group_add",
            ClientFrame::GroupRemove(_) => "group_remove",
            ClientFrame::Subscribe(_) => "subscribe",
            ClientFrame::Unsubscribe(_) => "unsubscribe",
            ClientFrame::PresenceSub(_) => "presence_sub",
            ClientFrame::PresenceUnsub(_) => "presence_unsub",
            ClientFrame::Typing(_) => "typing",
            ClientFrame::Ping(_) => "ping",
            ClientFrame::Receipts(_) => "receipts",
        }
    }

    /// The client's `ref`, which the reply (or an `error`) must echo. `receipt` and
    /// `typing` get no reply and carry none.
    pub fn request_ref(&self) -> Option<&str> {
        let reference = match self {
            ClientFrame::Send(frame) => &frame.r#ref,
            ClientFrame::Sync(frame) => &frame.r#ref,
            ClientFrame::History(frame) => &frame.r#ref,
            ClientFrame::GroupCreate(frame) => &frame.r#ref,
            ClientFrame::GroupAdd(frame) | ClientFrame::GroupRemove(frame) => &frame.r#ref,
            ClientFrame::Subscribe(frame) => &frame.r#ref,
            ClientFrame::Unsubscribe(frame) => &frame.r#ref,
            ClientFrame::PresenceSub(frame) | ClientFrame::PresenceUnsub(frame) => &frame.r#ref,
            ClientFrame::Ping(frame) => &frame.r#ref,
            ClientFrame::Receipts(frame) => &frame.r#ref,
            ClientFrame::Receipt(_) | ClientFrame::Typing(_) => return None,
        };
        reference.as_deref()
    }

    /// The conversation the frame is about, if it names exactly one.
    pub fn conv(&self) -> Option<&ConvId> {
        match self {
            ClientFrame::Send(frame) => Some(&frame.conv),
            ClientFrame::Receipt(frame) => Some(&frame.conv),
            ClientFrame::History(frame) => Some(&frame.conv),
            ClientFrame::GroupAdd(frame) | ClientFrame::GroupRemove(frame) => Some(&frame.conv),
            ClientFrame::Subscribe(frame) => Some(&frame.conv),
            ClientFrame::Unsubscribe(frame) => Some(&frame.conv),
            ClientFrame::Typing(frame) => Some(&frame.conv),
            ClientFrame::Receipts(frame) => Some(&frame.conv),
            ClientFrame::Sync(_)
            | ClientFrame::GroupCreate(_)
            | ClientFrame::PresenceSub(_)
            | ClientFrame::PresenceUnsub(_)
            | ClientFrame::Ping(_) => None,
        }
    }

    /// Whether the frame is ephemeral traffic (typing, presence), the first to be shed
    /// under load (DESIGN section 4).
    pub fn is_ephemeral(&self) -> bool {
        matches!(self, ClientFrame::Typing(_) | ClientFrame::PresenceSub(_) | ClientFrame::PresenceUnsub(_))
    }
}

/// `send`: post a message. Answered by `ack` once the message is durable.
#[derive(Debug, Clone, Serialize)]
pub struct SendFrame {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
    pub conv: ConvId,
    /// Client message id, unique per sender: a retry with the same `cmid` gets the
    /// original `seq`/`mid` back instead of a second copy.
    pub cmid: String,
    /// Any JSON value, kept as its exact text: the server never parses it, it splices it
    /// into the `msg` frame as is.
    pub body: Box<RawValue>,
}

/// Bodies compare by their JSON text (`RawValue` has no equality of its own).
impl PartialEq for SendFrame {
    fn eq(&self, other: &Self) -> bool {
        self.r#ref == other.r#ref
            && self.conv == other.conv
            && self.cmid == other.cmid
            && self.body.get() == other.body.get()
    }
}

/// `receipt`: the device has `delivered` (or `read`) everything up to `seq` in `conv`.
/// Cumulative and idempotent; no reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReceiptFrame {
    pub conv: ConvId,
    /// At least 1.
    pub seq: u64,
    pub kind: ReceiptKind,
}

/// Which high-water mark a receipt moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiptKind {
    /// Received by the device; advances that device's delivery cursor.
    Delivered,
    /// Seen by the user; implies delivered.
    Read,
}

impl ReceiptKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ReceiptKind::Delivered => "delivered",
            ReceiptKind::Read => "read",
        }
    }
}

/// `sync`: replay what this device missed, then `synced`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SyncFrame {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
    /// The client's own view of its cursors, overriding the stored ones for the listed
    /// conversations. Absent: use the stored cursors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursors: Option<BTreeMap<ConvId, u64>>,
}

/// `history`: a page of stored messages, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HistoryFrame {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
    pub conv: ConvId,
    /// Only messages with a smaller `seq`. Absent: from the newest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<u64>,
    /// Page size, 1..=200. Absent: [`DEFAULT_HISTORY_LIMIT`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

impl HistoryFrame {
    /// The page size to serve: `limit`, or the default when absent.
    pub fn limit_or_default(&self) -> u32 {
        self.limit.unwrap_or(DEFAULT_HISTORY_LIMIT)
    }
}

/// `group_create`: a new group with the sender and `members`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupCreateFrame {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
    pub name: String,
    pub members: Vec<UserId>,
}

/// `group_add` / `group_remove`: change a group's membership.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupChangeFrame {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
    pub conv: ConvId,
    pub members: Vec<UserId>,
}

/// `subscribe`: follow a feed, replaying from `since`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubscribeFrame {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
    /// Always a `feed:` conversation (the decoder checks).
    pub conv: ConvId,
    /// Replay messages with a larger `seq`. Absent: live messages only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
}

/// `unsubscribe`: stop following a feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnsubscribeFrame {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
    /// Always a `feed:` conversation (the decoder checks).
    pub conv: ConvId,
}

/// `presence_sub` / `presence_unsub`: watch (or stop watching) users' presence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PresenceSubFrame {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
    pub users: Vec<UserId>,
}

/// `typing`: the user started or stopped typing in `conv`. Ephemeral; no reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TypingFrame {
    pub conv: ConvId,
    pub state: TypingState,
}

/// Whether a user is typing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TypingState {
    Start,
    Stop,
}

/// `ping`: answered by `pong`, for clients that cannot send WebSocket pings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PingFrame {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
}

/// `receipts` (extension of v1): every member's delivered and read marks in `conv`,
/// answered by a `receipts` frame. Groups relay only aggregated receipts live; this is
/// how a client learns who has delivered or read up to which seq.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReceiptsFrame {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
    pub conv: ConvId,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(text: &str) -> ConvId {
        ConvId::new(text).unwrap()
    }

    #[test]
    fn serializes_with_the_type_tag_and_omits_absent_ref() {
        let frame = ClientFrame::Receipt(ReceiptFrame { conv: conv("group:g"), seq: 3, kind: ReceiptKind::Read });
        assert_eq!(
            serde_json::to_string(&frame).unwrap(),
            r#"{"type":"receipt","conv":"group:g","seq":3,"kind":"read"}"#
        );
        let ping = ClientFrame::Ping(PingFrame::default());
        assert_eq!(serde_json::to_string(&ping).unwrap(), r#"{"type":"ping"}"#);
    }

    #[test]
    fn raw_body_serializes_verbatim() {
        let frame = ClientFrame::Send(SendFrame {
            r#ref: Some("r1".into()),
            conv: conv("dm:a:b"),
            cmid: "c1".into(),
            body: RawValue::from_string(r#"{"text": "hi"}"#.into()).unwrap(),
        });
        assert_eq!(
            serde_json::to_string(&frame).unwrap(),
            r#"{"type":"send","ref":"r1","conv":"dm:a:b","cmid":"c1","body":{"text": "hi"}}"#
        );
    }

    #[test]
    fn type_names_match_the_serde_tags() {
        let members = vec![UserId::new("u").unwrap()];
        let frames = [
            ClientFrame::GroupCreate(GroupCreateFrame { r#ref: None, name: "n".into(), members: members.clone() }),
            ClientFrame::GroupAdd(GroupChangeFrame { r#ref: None, conv: conv("group:g"), members: members.clone() }),
            ClientFrame::GroupRemove(GroupChangeFrame { r#ref: None, conv: conv("group:g"), members }),
            ClientFrame::PresenceSub(PresenceSubFrame { r#ref: None, users: vec![] }),
            ClientFrame::PresenceUnsub(PresenceSubFrame { r#ref: None, users: vec![] }),
            ClientFrame::Typing(TypingFrame { conv: conv("group:g"), state: TypingState::Start }),
            ClientFrame::Receipts(ReceiptsFrame { r#ref: None, conv: conv("group:g") }),
        ];
        for frame in frames {
            let value: serde_json::Value = serde_json::to_value(&frame).unwrap();
            assert_eq!(value["type"], frame.type_name());
            assert!(ClientFrame::TYPE_NAMES.contains(&frame.type_name()));
        }
    }

    #[test]
    fn request_ref_and_conv() {
        let frame = ClientFrame::History(HistoryFrame {
            r#ref: Some("h".into()),
            conv: conv("feed:f"),
            before: None,
            limit: None,
        });
        assert_eq!(frame.request_ref(), Some("h"));
        assert_eq!(frame.conv(), Some(&conv("feed:f")));
        let ClientFrame::History(history) = &frame else { unreachable!() };
        assert_eq!(history.limit_or_default(), DEFAULT_HISTORY_LIMIT);
        let typing = ClientFrame::Typing(TypingFrame { conv: conv("group:g"), state: TypingState::Stop });
        assert_eq!(typing.request_ref(), None);
        assert!(typing.is_ephemeral());
    }
}
