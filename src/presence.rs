//! Presence: who is online, who watches whom, and `last_seen`.
//!
//! Presence is per user, not per connection: a user is online while any of their devices
//! is connected. The user actor ([`crate::actors::user`]) sees every attach and detach of
//! its user, so it decides the transitions: online when the first device attaches,
//! offline when the last one has been gone for `presence.offline_debounce_ms` (a device
//! that reconnects within that time causes no event at all, so a flapping connection does
//! not storm the watchers). `last_seen` is stored when the last device leaves.
//!
//! Watchers are connections that sent `presence_sub`; this hub maps each watched user to
//! the outboxes of its watchers on this node. An event is encoded once and pushed as
//! ephemeral traffic: the first to be shed when an outbox is filling up (DESIGN section
//! 4). A connection removes its watches when it closes.

use std::sync::Arc;

use dashmap::DashMap;
use switchboard_proto::ids::UserId;
use switchboard_proto::server::{Presence, PresenceStatus};

use crate::gateway::outbox::{Outbox, Push};
use crate::node::{Node, now_ms};
use crate::store::StoreResult;

/// One watching connection.
#[derive(Debug, Clone)]
struct Watcher {
    conn_id: u64,
    outbox: Arc<Outbox>,
}

/// The presence watchers of this node.
#[derive(Debug, Default)]
pub struct PresenceHub {
    watchers: DashMap<UserId, Vec<Watcher>>,
}

impl PresenceHub {
    pub fn new() -> Self {
        Self::default()
    }

    /// Connection `conn_id` watches `user` (idempotent).
    pub fn watch(&self, user: &UserId, conn_id: u64, outbox: &Arc<Outbox>) {
        let mut watchers = self.watchers.entry(user.clone()).or_default();
        if !watchers.iter().any(|watcher| watcher.conn_id == conn_id) {
            watchers.push(Watcher { conn_id, outbox: outbox.clone() });
        }
    }

    /// Connection `conn_id` stops watching `user`.
    pub fn unwatch(&self, user: &UserId, conn_id: u64) {
        if let Some(mut watchers) = self.watchers.get_mut(user) {
            watchers.retain(|watcher| watcher.conn_id != conn_id);
        }
        self.watchers.remove_if(user, |_, watchers| watchers.is_empty());
    }

    /// Pushes a presence change to the user's watchers on this node; returns how many
    /// got it.
    pub fn publish(&self, event: &Presence) -> usize {
        let Some(watchers) = self.watchers.get(&event.user) else { return 0 };
        let frame = crate::gateway::connection::frame(event);
        let delivered =
            watchers.iter().filter(|watcher| watcher.outbox.push_ephemeral(frame.clone()) == Push::Queued).count();
        metrics::counter!("switchboard_presence_events_total").increment(delivered as u64);
        delivered
    }

    /// Users watched by at least one connection on this node.
    pub fn watched_users(&self) -> usize {
        self.watchers.len()
    }
}

/// A user's presence now: online (`last_seen` = now) if a device is connected to this
/// node or another, else offline with the stored `last_seen` (0 if never seen).
pub async fn current(node: &Node, user: &UserId) -> StoreResult<Presence> {
    if node.is_online(user) {
        return Ok(Presence { user: user.clone(), status: PresenceStatus::Online, last_seen: now_ms() });
    }
    let last_seen = node.store.last_seen(user).await?.unwrap_or(0);
    Ok(Presence { user: user.clone(), status: PresenceStatus::Offline, last_seen })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchers_get_events_until_they_unwatch() {
        let hub = PresenceHub::new();
        let alice = UserId::new("alice").unwrap();
        let (first, second) = (Arc::new(Outbox::new(8, 4096)), Arc::new(Outbox::new(8, 4096)));
        hub.watch(&alice, 1, &first);
        hub.watch(&alice, 1, &first);
        hub.watch(&alice, 2, &second);
        let event = Presence { user: alice.clone(), status: PresenceStatus::Online, last_seen: 1 };
        assert_eq!(hub.publish(&event), 2);
        hub.unwatch(&alice, 1);
        assert_eq!(hub.publish(&event), 1);
        hub.unwatch(&alice, 2);
        assert_eq!(hub.watched_users(), 0);
        assert_eq!(hub.publish(&event), 0);
    }
}
