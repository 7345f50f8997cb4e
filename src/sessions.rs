//! The session registry: which devices of which users are connected to this node.
//!
//! This is the fanout table. A conversation's writer delivers a durable message by
//! looking up each member here and pushing the already-encoded frame into each device's
//! outbox; no actor sits between a message and a socket, so fanout cost is the cost of
//! the socket writes. Pushing never waits (outboxes are bounded and close slow
//! consumers), so it is safe under the map's per-user lock, which is never held across an
//! `.await`.
//!
//! It is also where per-user presence is counted: a user is online while any of their
//! devices is connected. [`Sessions::attach`] and [`Sessions::detach`] decide, under the
//! user's lock, whether the call took the user from no device to one (online) or from one
//! to none (offline), so each transition is reported exactly once, to exactly one caller,
//! even when attaches and detaches race. They normally do not: the user actor (see
//! [`crate::actors::user`]) serializes them, decides replacement (4002) and debounces the
//! presence events. But a connection whose user actor is unreachable detaches directly,
//! and the registry stays right then too. `loom_model.rs` checks this under loom.

#[cfg(all(test, switchboard_loom))]
mod loom_model;

use std::sync::Arc;

use switchboard_proto::close::CloseCode;
use switchboard_proto::ids::{ConvId, DeviceId, UserId};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::gateway::outbox::{Outbox, Push};
use crate::sync::map::ShardedMap;
use crate::sync::{AtomicUsize, Ordering};

/// One connected device.
#[derive(Debug, Clone)]
pub struct DeviceSession {
    pub device: DeviceId,
    /// Unique per connection on this node, so a stale detach cannot remove a newer
    /// connection of the same device.
    pub conn_id: u64,
    pub outbox: Arc<Outbox>,
    /// `iat` of the connection's token (seconds), for revocation.
    pub issued_at: Option<u64>,
}

/// The connected devices of every user on this node.
#[derive(Debug, Default)]
pub struct Sessions {
    users: ShardedMap<UserId, Devices>,
    /// Connections registered (devices, summed over users).
    connections: AtomicUsize,
}

/// The outcome of [`Sessions::attach`].
#[derive(Debug)]
pub struct Attached {
    /// The earlier connection of the same device, now unregistered: the caller closes it
    /// with 4002.
    pub replaced: Option<DeviceSession>,
    /// The user had no device connected before: this attach made them online.
    pub came_online: bool,
}

/// The outcome of [`Sessions::detach`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Detached {
    /// The connection was registered and is now removed.
    pub removed: bool,
    /// It was the user's last device: this detach made them offline.
    pub went_offline: bool,
}

/// One user's connected devices: at most one connection per device.
#[derive(Debug, Default)]
struct Devices {
    sessions: Vec<DeviceSession>,
}

impl Devices {
    /// Registers `session`, replacing the connection of the same device if there is one.
    fn attach(&mut self, session: DeviceSession) -> Attached {
        let came_online = self.sessions.is_empty();
        let replaced = self
            .sessions
            .iter()
            .position(|existing| existing.device == session.device)
            .map(|index| self.sessions.swap_remove(index));
        self.sessions.push(session);
        Attached { replaced, came_online }
    }

    /// Removes connection `conn_id` of `device` if it is still the registered one: the
    /// detach of a replaced connection is stale and changes nothing.
    fn detach(&mut self, device: &DeviceId, conn_id: u64) -> Detached {
        let removed = self
            .sessions
            .iter()
            .position(|session| &session.device == device && session.conn_id == conn_id)
            .map(|index| self.sessions.swap_remove(index))
            .is_some();
        Detached { removed, went_offline: removed && self.sessions.is_empty() }
    }

    fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    fn iter(&self) -> std::slice::Iter<'_, DeviceSession> {
        self.sessions.iter()
    }
}

impl Sessions {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a device connection. An earlier connection of the same device is
    /// removed and returned: the caller closes it with 4002.
    pub fn attach(&self, user: &UserId, session: DeviceSession) -> Attached {
        self.users.update(user, |devices| {
            let attached = devices.attach(session);
            if attached.replaced.is_none() {
                // Counted while the user is locked: a detach of this connection comes
                // after, so the count cannot dip below zero.
                self.connections.fetch_add(1, Ordering::Relaxed);
            }
            attached
        })
    }

    /// Removes a connection if it is still the registered one for its device.
    pub fn detach(&self, user: &UserId, device: &DeviceId, conn_id: u64) -> Detached {
        let detached = self
            .users
            .update_existing(user, |devices| devices.detach(device, conn_id))
            .unwrap_or(Detached { removed: false, went_offline: false });
        if detached.removed {
            self.connections.fetch_sub(1, Ordering::Relaxed);
        }
        if detached.went_offline {
            // Unless a device attached in between: decided under the user's lock.
            self.users.remove_if(user, Devices::is_empty);
        }
        detached
    }

    /// Delivers a durable `msg` frame to every connected device of `user`, except the
    /// connection `except` (the sender's own, which gets the ack instead). Returns the
    /// number of devices it was queued for.
    pub fn deliver_message(
        &self,
        user: &UserId,
        conv: &ConvId,
        seq: u64,
        frame: &Utf8Bytes,
        except: Option<u64>,
    ) -> usize {
        self.users
            .read(user, |devices| {
                devices
                    .iter()
                    .filter(|session| Some(session.conn_id) != except)
                    .filter(|session| session.outbox.push_message(conv, seq, frame.clone()) == Push::Queued)
                    .count()
            })
            .unwrap_or(0)
    }

    /// Queues a reliable non-message frame (e.g. a receipt) for every device of `user`
    /// except connection `except`.
    pub fn deliver(&self, user: &UserId, frame: &Utf8Bytes, except: Option<u64>) -> usize {
        self.push_each(user, except, |outbox| outbox.push(frame.clone()))
    }

    /// Queues an ephemeral frame (typing) for every device of `user` except connection
    /// `except`; shed by outboxes that are filling up.
    pub fn deliver_ephemeral(&self, user: &UserId, frame: &Utf8Bytes, except: Option<u64>) -> usize {
        self.push_each(user, except, |outbox| outbox.push_ephemeral(frame.clone()))
    }

    fn push_each(&self, user: &UserId, except: Option<u64>, push: impl Fn(&Outbox) -> Push) -> usize {
        self.users
            .read(user, |devices| {
                devices
                    .iter()
                    .filter(|session| Some(session.conn_id) != except)
                    .filter(|session| push(&session.outbox) == Push::Queued)
                    .count()
            })
            .unwrap_or(0)
    }

    /// The connected devices of a user (a snapshot).
    pub fn devices(&self, user: &UserId) -> Vec<DeviceSession> {
        self.users.read(user, |devices| devices.sessions.clone()).unwrap_or_default()
    }

    pub fn is_online(&self, user: &UserId) -> bool {
        self.users.read(user, |devices| !devices.is_empty()).unwrap_or(false)
    }

    /// Closes every connection of a user with `code`; returns how many.
    pub fn close_user(&self, user: &UserId, code: CloseCode) -> usize {
        let devices = self.devices(user);
        for session in &devices {
            session.outbox.close(code);
        }
        devices.len()
    }

    /// Closes with 1008 every connection of `user` whose token was issued before
    /// `before_ms` (or has no `iat`); returns how many.
    pub fn close_revoked(&self, user: &UserId, before_ms: u64) -> usize {
        let revoked: Vec<DeviceSession> = self
            .devices(user)
            .into_iter()
            .filter(|session| crate::auth::issued_before(session.issued_at, before_ms))
            .collect();
        for session in &revoked {
            session.outbox.close(CloseCode::Policy);
        }
        revoked.len()
    }

    /// The users with a device on this node (a snapshot).
    pub fn online_users(&self) -> Vec<UserId> {
        let mut users = Vec::new();
        self.users.for_each(|user, _| users.push(user.clone()));
        users
    }

    /// Every outbox on this node (a snapshot), for the shutdown drain.
    pub fn all_outboxes(&self) -> Vec<Arc<Outbox>> {
        let mut outboxes = Vec::new();
        self.users.for_each(|_, devices| outboxes.extend(devices.iter().map(|session| session.outbox.clone())));
        outboxes
    }

    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    pub fn user_count(&self) -> usize {
        self.users.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(device: &str, conn_id: u64) -> DeviceSession {
        DeviceSession {
            device: DeviceId::new(device).unwrap(),
            conn_id,
            outbox: Arc::new(Outbox::new(8, 1024)),
            issued_at: Some(conn_id),
        }
    }

    #[test]
    fn same_device_replaces_and_stale_detach_is_ignored() {
        let sessions = Sessions::new();
        let alice = UserId::new("alice").unwrap();
        let first = sessions.attach(&alice, session("phone", 1));
        assert!(first.replaced.is_none() && first.came_online);
        let second = sessions.attach(&alice, session("laptop", 2));
        assert!(second.replaced.is_none() && !second.came_online);
        let third = sessions.attach(&alice, session("phone", 3));
        assert_eq!(third.replaced.map(|replaced| replaced.conn_id), Some(1));
        assert!(!third.came_online);
        assert_eq!(sessions.connection_count(), 2);
        let phone = DeviceId::new("phone").unwrap();
        assert_eq!(sessions.detach(&alice, &phone, 1), Detached { removed: false, went_offline: false });
        assert_eq!(sessions.detach(&alice, &phone, 3), Detached { removed: true, went_offline: false });
        let laptop = DeviceId::new("laptop").unwrap();
        assert_eq!(sessions.detach(&alice, &laptop, 2), Detached { removed: true, went_offline: true });
        assert!(!sessions.is_online(&alice));
        assert_eq!(sessions.connection_count(), 0);
        assert_eq!(sessions.user_count(), 0);
        // Detaching again, or a user never seen: nothing to remove, no transition.
        assert_eq!(sessions.detach(&alice, &laptop, 2), Detached { removed: false, went_offline: false });
        assert!(sessions.attach(&alice, session("laptop", 4)).came_online);
    }

    #[test]
    fn delivery_skips_the_sending_connection() {
        let sessions = Sessions::new();
        let alice = UserId::new("alice").unwrap();
        let conv = ConvId::new("dm:alice:bob").unwrap();
        sessions.attach(&alice, session("phone", 1));
        sessions.attach(&alice, session("laptop", 2));
        assert_eq!(sessions.deliver_message(&alice, &conv, 1, &Utf8Bytes::from_static("m"), Some(1)), 1);
        assert_eq!(sessions.deliver_message(&alice, &conv, 2, &Utf8Bytes::from_static("m"), None), 2);
        assert_eq!(
            sessions.deliver_message(&UserId::new("bob").unwrap(), &conv, 1, &Utf8Bytes::from_static(""), None),
            0
        );
    }
}
