//! Loom model of per-user presence counting in [`Sessions`]: the registry itself, with its
//! map and connection counter taken from `crate::sync`, under concurrent attaches and
//! detaches of one user's devices.
//!
//! The user actor normally serializes these calls, but a connection whose actor is
//! unreachable detaches directly, so the registry must be right on its own. Three
//! connections race: a phone, the same phone reconnecting (one of the two replaces the
//! other, whose detach is then stale), and a laptop. Under every interleaving explored:
//! - the online/offline transitions alternate: each is reported once, to one caller, so
//!   there are as many "came online" as "went offline", plus one if the user ends online;
//! - a detach removes its connection unless that connection was replaced, and only the
//!   removal of the last device reports "went offline";
//! - the final registry holds exactly the connections attached and neither replaced nor
//!   detached, and the node's connection count matches it;
//! - no observer ever sees the connection count below zero (it is unsigned: it would wrap
//!   to a huge value) or above the number of connections.

use loom::sync::Arc;
use loom::thread;
use switchboard_proto::ids::{DeviceId, UserId};

use super::{DeviceSession, Sessions};
use crate::gateway::outbox::Outbox;
use crate::sync::model;

/// What one call returned.
#[derive(Debug, Clone, Copy)]
enum Event {
    Attached { replaced: Option<u64>, came_online: bool },
    Detached { conn_id: u64, removed: bool, went_offline: bool },
}

fn session(device: &str, conn_id: u64) -> DeviceSession {
    DeviceSession {
        device: DeviceId::new(device).expect("a valid device id"),
        conn_id,
        outbox: std::sync::Arc::new(Outbox::new(4, 1024)),
        issued_at: None,
    }
}

/// One connection's life: attach, then (if `leaves`) detach; checking the counts a
/// concurrent observer would see after each step.
fn connection(sessions: &Sessions, user: &UserId, device: &str, conn_id: u64, leaves: bool) -> Vec<Event> {
    let mut events = Vec::new();
    let attached = sessions.attach(user, session(device, conn_id));
    assert!(attached.replaced.as_ref().is_none_or(|replaced| replaced.conn_id != conn_id));
    events.push(Event::Attached {
        replaced: attached.replaced.map(|replaced| replaced.conn_id),
        came_online: attached.came_online,
    });
    assert!(sessions.connection_count() <= 3, "connection count {}", sessions.connection_count());
    if leaves {
        let device = DeviceId::new(device).expect("a valid device id");
        let detached = sessions.detach(user, &device, conn_id);
        events.push(Event::Detached { conn_id, removed: detached.removed, went_offline: detached.went_offline });
        assert!(sessions.connection_count() <= 3, "connection count {}", sessions.connection_count());
    }
    events
}

#[test]
fn loom_presence_transitions_alternate_and_counts_match_the_devices() {
    model(|| {
        let sessions = Arc::new(Sessions::new());
        let user = UserId::new("alice").expect("a valid user id");
        let threads: Vec<_> = [("phone", 1, true), ("phone", 2, false), ("laptop", 3, true)]
            .into_iter()
            .map(|(device, conn_id, leaves)| {
                let (sessions, user) = (sessions.clone(), user.clone());
                thread::spawn(move || connection(&sessions, &user, device, conn_id, leaves))
            })
            .collect();
        let events: Vec<Event> = threads.into_iter().flat_map(|thread| thread.join().expect("connection")).collect();

        let replaced: Vec<u64> = events
            .iter()
            .filter_map(|event| match event {
                Event::Attached { replaced, .. } => *replaced,
                Event::Detached { .. } => None,
            })
            .collect();
        assert!(replaced.len() <= 1, "one phone connection replaces the other at most: {events:?}");
        let mut registered = vec![1, 2, 3];
        let (mut came_online, mut went_offline) = (0, 0);
        for event in &events {
            match *event {
                Event::Attached { came_online: online, .. } => came_online += usize::from(online),
                Event::Detached { conn_id, removed, went_offline: offline } => {
                    // The detach of a replaced connection is stale; any other removes it.
                    assert_eq!(removed, !replaced.contains(&conn_id), "{events:?}");
                    assert!(removed || !offline, "offline without a removal: {events:?}");
                    went_offline += usize::from(offline);
                    if removed {
                        registered.retain(|registered| *registered != conn_id);
                    }
                }
            }
        }
        registered.retain(|conn_id| !replaced.contains(conn_id));

        let mut connected: Vec<u64> = sessions.devices(&user).iter().map(|session| session.conn_id).collect();
        connected.sort_unstable();
        assert_eq!(connected, registered, "{events:?}");
        assert_eq!(sessions.connection_count(), registered.len());
        let online = !registered.is_empty();
        assert_eq!(sessions.is_online(&user), online);
        assert_eq!(sessions.user_count(), usize::from(online));
        assert_eq!(came_online, went_offline + usize::from(online), "transitions do not alternate: {events:?}");
    });
}
