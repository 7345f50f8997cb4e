//! Every subject name the cluster uses, built in one place.
//!
//! Nothing else formats a subject: a subscriber and a publisher that both call these
//! functions cannot disagree about a name, and this file is the list of what travels on
//! the bus. All subjects start with [`PREFIX`] so a NATS cluster can be shared with other
//! applications (and permissions granted on `sb.>`).
//!
//! Ids become single tokens. User ids may contain `.` (the token separator) and a node id
//! is whatever the operator chose, so every byte outside `[A-Za-z0-9_@:-]` is
//! percent-encoded (`.` becomes `%2E`). `%` is itself encoded, so the mapping is
//! injective: two different ids never share a subject.

use std::borrow::Cow;
use std::fmt::Write as _;

use switchboard_proto::ids::{ConvId, ConvKind, UserId};

/// The first token of every switchboard subject.
pub const PREFIX: &str = "sb";

/// A node's inbox: requests and deliveries addressed to one node (for example sends
/// forwarded to a conversation's owner, or messages for users connected there).
pub fn node_inbox(node_id: &str) -> String {
    format!("{PREFIX}.node.{}", token(node_id))
}

/// Requests to one node, answered by it: sends and membership changes forwarded to a
/// conversation's owner, admin actions gathered from every node.
pub fn node_rpc(node_id: &str) -> String {
    format!("{PREFIX}.rpc.{}", token(node_id))
}

/// Requests for pages of one node's roster (the users online there), answered by it.
pub fn node_roster(node_id: &str) -> String {
    format!("{PREFIX}.roster.{}", token(node_id))
}

/// Events every node applies: group member lists changed, tokens revoked.
pub fn cluster_events() -> &'static str {
    "sb.cluster.events"
}

/// Every node inbox; for tools and tests that watch the whole cluster.
pub fn all_node_inboxes() -> &'static str {
    "sb.node.*"
}

/// A user's events: published by a conversation owner for a member; subscribed by every
/// node where that user has a connected device.
pub fn user_inbox(user: &UserId) -> String {
    format!("{PREFIX}.user.{}", token(user.as_str()))
}

/// New messages of a feed, published once by the feed's owner and subscribed by every
/// node with at least one subscriber of that feed.
///
/// Only `feed:` conversations fan out this way (dms and groups go through
/// [`user_inbox`]); calling it with another kind is a bug.
pub fn feed_fanout(conv: &ConvId) -> String {
    debug_assert_eq!(conv.kind(), ConvKind::Feed, "feed_fanout of a non-feed conversation");
    format!("{PREFIX}.feed.{}", token(conv.local_part()))
}

/// Presence changes, as `(joins, leaves)` diffs from every node.
pub fn presence_events() -> &'static str {
    "sb.presence"
}

/// Node heartbeats: each live node publishes here periodically, so peers can tell up,
/// down and gone (and keep the rendezvous hash over live nodes current).
pub fn cluster_heartbeat() -> &'static str {
    "sb.cluster.heartbeat"
}

/// A node announcing an orderly shutdown, so peers drop it without waiting for its
/// heartbeats to time out.
pub fn cluster_leave() -> &'static str {
    "sb.cluster.leave"
}

/// Encodes an id as one subject token (see the module documentation).
pub fn token(id: &str) -> Cow<'_, str> {
    let is_plain = |byte: u8| byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'@' | b':' | b'-');
    if !id.is_empty() && id.bytes().all(is_plain) {
        return Cow::Borrowed(id);
    }
    if id.is_empty() {
        // An empty token is not allowed; `%` alone cannot come from a non-empty id.
        return Cow::Borrowed("%");
    }
    let mut encoded = String::with_capacity(id.len() + 8);
    for byte in id.bytes() {
        if is_plain(byte) {
            encoded.push(char::from(byte));
        } else {
            // Writing into a String cannot fail.
            let _ = write!(encoded, "%{byte:02X}");
        }
    }
    Cow::Owned(encoded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subject::{matches, validate_pattern, validate_subject};

    #[test]
    fn names() {
        let alice = UserId::new("alice").unwrap();
        let news = ConvId::feed("news").unwrap();
        assert_eq!(node_inbox("node-1"), "sb.node.node-1");
        assert_eq!(user_inbox(&alice), "sb.user.alice");
        assert_eq!(feed_fanout(&news), "sb.feed.news");
        assert_eq!(presence_events(), "sb.presence");
        assert_eq!(cluster_heartbeat(), "sb.cluster.heartbeat");
        assert_eq!(cluster_leave(), "sb.cluster.leave");
        assert_eq!(node_rpc("node-1"), "sb.rpc.node-1");
        assert_eq!(node_roster("node-1"), "sb.roster.node-1");
        assert_eq!(cluster_events(), "sb.cluster.events");
    }

    #[test]
    fn ids_become_one_token() {
        let dotted = UserId::new("alice.b@x").unwrap();
        assert_eq!(user_inbox(&dotted), "sb.user.alice%2Eb@x");
        assert_eq!(node_inbox("10.0.0.1:8080"), "sb.node.10%2E0%2E0%2E1:8080");
        assert_eq!(node_inbox("a b*>%"), "sb.node.a%20b%2A%3E%25");
        assert_eq!(token(""), "%");
        // Injective: a literal "%2E" in an id is encoded differently from ".".
        assert_ne!(token("a%2Eb"), token("a.b"));
    }

    #[test]
    fn every_subject_is_valid_and_matched_by_its_family() {
        let subjects = [
            node_inbox("host.example:80"),
            user_inbox(&UserId::new("u.1").unwrap()),
            feed_fanout(&ConvId::feed("f.x").unwrap()),
            presence_events().to_owned(),
            cluster_heartbeat().to_owned(),
            cluster_leave().to_owned(),
            node_rpc("a.b"),
            node_roster("a.b"),
            cluster_events().to_owned(),
        ];
        for subject in &subjects {
            assert_eq!(validate_subject(subject), Ok(()), "{subject}");
            assert!(matches("sb.>", subject));
        }
        assert_eq!(validate_pattern(all_node_inboxes()), Ok(()));
        assert!(matches(all_node_inboxes(), &subjects[0]));
        assert!(!matches(all_node_inboxes(), &subjects[1]));
    }
}
