//! The session registry: which devices of which users are connected to this node.
//!
//! This is the fanout table. A conversation's writer delivers a durable message by
//! looking up each member here and pushing the already-encoded frame into each device's
//! outbox; no actor sits between a message and a socket, so fanout cost is the cost of
//! the socket writes. Pushing never waits (outboxes are bounded and close slow
//! consumers), so it is safe under the map's shard lock, which is never held across an
//! `.await`.
//!
//! Attach and detach are serialized per user by the user actor (see
//! [`crate::actors::user`]), which decides replacement (4002) and presence.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;
use switchboard_proto::close::CloseCode;
use switchboard_proto::ids::{ConvId, DeviceId, UserId};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::gateway::outbox::{Outbox, Push};

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
    users: DashMap<UserId, Vec<DeviceSession>>,
    connections: AtomicUsize,
}

/// The outcome of [`Sessions::detach`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Detached {
    /// The connection was registered and is now removed.
    pub removed: bool,
    /// The user has no device left on this node.
    pub user_gone: bool,
}

impl Sessions {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a device connection. An earlier connection of the same device is
    /// removed and returned: the caller closes it with 4002.
    pub fn attach(&self, user: &UserId, session: DeviceSession) -> Option<DeviceSession> {
        let mut devices = self.users.entry(user.clone()).or_default();
        let replaced = devices
            .iter()
            .position(|existing| existing.device == session.device)
            .map(|index| devices.swap_remove(index));
        devices.push(session);
        if replaced.is_none() {
            self.connections.fetch_add(1, Ordering::Relaxed);
        }
        replaced
    }

    /// Removes a connection if it is still the registered one for its device.
    pub fn detach(&self, user: &UserId, device: &DeviceId, conn_id: u64) -> Detached {
        let mut removed = false;
        let user_gone = match self.users.get_mut(user) {
            Some(mut devices) => {
                if let Some(index) =
                    devices.iter().position(|session| &session.device == device && session.conn_id == conn_id)
                {
                    devices.swap_remove(index);
                    removed = true;
                }
                devices.is_empty()
            }
            None => true,
        };
        if removed {
            self.connections.fetch_sub(1, Ordering::Relaxed);
        }
        if user_gone {
            self.users.remove_if(user, |_, devices| devices.is_empty());
        }
        Detached { removed, user_gone }
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
        let Some(devices) = self.users.get(user) else {
            return 0;
        };
        let mut queued = 0;
        for session in devices.iter().filter(|session| Some(session.conn_id) != except) {
            if session.outbox.push_message(conv, seq, frame.clone()) == Push::Queued {
                queued += 1;
            }
        }
        queued
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
        let Some(devices) = self.users.get(user) else {
            return 0;
        };
        devices
            .iter()
            .filter(|session| Some(session.conn_id) != except)
            .filter(|session| push(&session.outbox) == Push::Queued)
            .count()
    }

    /// The connected devices of a user (a snapshot).
    pub fn devices(&self, user: &UserId) -> Vec<DeviceSession> {
        self.users.get(user).map(|devices| devices.clone()).unwrap_or_default()
    }

    pub fn is_online(&self, user: &UserId) -> bool {
        self.users.get(user).is_some_and(|devices| !devices.is_empty())
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
        self.users.iter().map(|entry| entry.key().clone()).collect()
    }

    /// Every outbox on this node (a snapshot), for the shutdown drain.
    pub fn all_outboxes(&self) -> Vec<Arc<Outbox>> {
        self.users
            .iter()
            .flat_map(|entry| entry.value().iter().map(|session| session.outbox.clone()).collect::<Vec<_>>())
            .collect()
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
        assert!(sessions.attach(&alice, session("phone", 1)).is_none());
        assert!(sessions.attach(&alice, session("laptop", 2)).is_none());
        let replaced = sessions.attach(&alice, session("phone", 3)).unwrap();
        assert_eq!(replaced.conn_id, 1);
        assert_eq!(sessions.connection_count(), 2);
        let phone = DeviceId::new("phone").unwrap();
        assert_eq!(sessions.detach(&alice, &phone, 1), Detached { removed: false, user_gone: false });
        assert_eq!(sessions.detach(&alice, &phone, 3), Detached { removed: true, user_gone: false });
        let laptop = DeviceId::new("laptop").unwrap();
        assert_eq!(sessions.detach(&alice, &laptop, 2), Detached { removed: true, user_gone: true });
        assert_eq!(sessions.connection_count(), 0);
        assert_eq!(sessions.user_count(), 0);
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
