//! What nodes say to each other on the bus, as JSON (small, debuggable with `nats sub`).
//!
//! Message frames travel as they will reach the client: the owner encodes a `msg` once,
//! and the frame is embedded as raw JSON (no re-escaping), pushed as is by every node.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use switchboard_proto::ids::{ConvId, DeviceId, UserId};

use crate::actors::conversation::{GroupChange, SendError};
use crate::store::MarkKind;

/// Pushed to a node's inbox ([`switchboard_cluster::subjects::node_inbox`]): frames for
/// devices connected there. Sent with a borrowed frame (`Delivery<&RawValue>`, the one
/// checked copy shared by every destination node), received owned.
#[derive(Debug, Serialize, Deserialize)]
pub struct Delivery<F = Box<RawValue>> {
    pub what: Deliver,
    /// The sending connection, which got an ack instead (connection ids are unique in
    /// the cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub except: Option<u64>,
    pub frame: F,
}

/// Who gets a [`Delivery`].
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "to", rename_all = "snake_case")]
pub enum Deliver {
    /// A message of `conv` to every device of these users.
    Msg { conv: ConvId, seq: u64, users: Vec<UserId> },
    /// A feed message to the feed's subscribers connected there.
    Feed { conv: ConvId, seq: u64 },
    /// A reliable non-message frame (a receipt) to these users' devices.
    Frame { users: Vec<UserId> },
    /// An ephemeral frame (typing): shed first by full outboxes.
    Ephemeral { users: Vec<UserId> },
}

/// A request to one node ([`switchboard_cluster::subjects::node_rpc`]). Externally
/// tagged (`{"send": {...}}`): an internally tagged enum would buffer its fields, which
/// a raw JSON `body` cannot go through.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rpc {
    /// A send for a conversation the receiver owns.
    Send {
        conv: ConvId,
        from: UserId,
        dev: DeviceId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        conn_id: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cmid: Option<String>,
        body: Box<RawValue>,
        #[serde(default)]
        system: bool,
        #[serde(default)]
        admin: bool,
    },
    /// A group membership change for a group the receiver owns.
    Group { conv: ConvId, by: UserId, dev: DeviceId, change: GroupChange },
    /// A member's receipt mark moved (group aggregates); no answer.
    Mark { conv: ConvId, user: UserId, kind: MarkKind, seq: u64 },
    /// Close a user's connections there; answers how many.
    Disconnect { user: UserId },
}

/// The answer to [`Rpc::Send`].
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SendAnswer {
    Accepted { seq: u64, mid: String, ts: u64, dup: bool },
    Refused(SendError),
}

/// The answer to [`Rpc::Group`].
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupAnswer {
    Changed { name: String, members: Vec<UserId> },
    Refused(SendError),
}

/// The answer to [`Rpc::Disconnect`].
#[derive(Debug, Serialize, Deserialize)]
pub struct Closed {
    pub closed: usize,
}

/// Applied by every node ([`switchboard_cluster::subjects::cluster_events`]).
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ClusterEvent {
    /// A group's member list changed (the owner sends it once the change is durable).
    Group { conv: ConvId, name: String, members: Vec<UserId> },
    /// A user's tokens issued before `before` are revoked: close them, refuse them.
    Revoked { user: UserId, before: u64 },
    /// Sent by a node back on the bus to the nodes it could not deliver to meanwhile:
    /// their devices resync (they may have resynced before the sender was back, and
    /// then nothing else would bring them what it sent in between).
    Resync { nodes: Vec<String> },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_deliveries_round_trip_with_raw_bodies() {
        let send = Rpc::Send {
            conv: ConvId::new("dm:a:b").unwrap(),
            from: UserId::new("a").unwrap(),
            dev: DeviceId::new("phone").unwrap(),
            conn_id: Some(7),
            cmid: Some("c1".to_owned()),
            body: RawValue::from_string(r#"{"text":"hi","n":[1,2]}"#.to_owned()).unwrap(),
            system: false,
            admin: false,
        };
        let encoded = serde_json::to_string(&send).unwrap();
        let Rpc::Send { body, conn_id, .. } = serde_json::from_str(&encoded).unwrap() else {
            panic!("not a send: {encoded}");
        };
        assert_eq!((body.get(), conn_id), (r#"{"text":"hi","n":[1,2]}"#, Some(7)));

        let delivery = Delivery {
            what: Deliver::Msg { conv: ConvId::new("dm:a:b").unwrap(), seq: 3, users: vec![UserId::new("b").unwrap()] },
            except: None,
            frame: RawValue::from_string(r#"{"type":"msg","seq":3}"#.to_owned()).unwrap(),
        };
        let decoded: Delivery = serde_json::from_slice(&serde_json::to_vec(&delivery).unwrap()).unwrap();
        assert_eq!(decoded.frame.get(), r#"{"type":"msg","seq":3}"#);
        assert!(matches!(decoded.what, Deliver::Msg { seq: 3, .. }));
    }
}
