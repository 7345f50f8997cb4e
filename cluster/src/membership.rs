//! Who is in the cluster: heartbeats, up / down / gone, leave, and rendezvous ownership.
//!
//! Every node publishes a [`Heartbeat`] every `heartbeat_interval` on
//! [`crate::subjects::cluster_heartbeat`] and listens to everyone's. A peer is:
//!
//! - **up** while it has been heard within `down_after`;
//! - **down** once it has not (or right away when it sends a [`Leave`]): it leaves the
//!   live set, so the conversations it owned move (rendezvous hashing over live nodes)
//!   and its users are no longer online through it;
//! - **gone** after `gone_after` without a word: forgotten altogether.
//!
//! A heartbeat from a down peer brings it back up. A heartbeat with a new `incarnation`
//! (the process restarted under the same node id) is reported as a restart: whatever was
//! known about the old process (its roster of users) is stale.
//!
//! While this node's own bus connection is down, silence proves nothing about the peers:
//! [`Membership::sweep`] marks nobody down, and when the bus is back
//! [`Membership::bus_reconnected`] gives every peer a fresh `down_after` to be heard
//! again. Ownership therefore stays where it was during a bus outage (owners keep
//! sequencing their conversations, local delivery continues) instead of every node
//! deciding it is alone and taking everything over. A node really cut off from a
//! working bus is declared down by the others and its conversations move; the ownership
//! epoch in the store fences what the cut-off node still tries to write.
//!
//! This module is a pure state machine (time is passed in), driven by the server's
//! cluster task; [`rendezvous_owner`] is the ownership function every node computes
//! the same way from the same live set.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Membership timing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipOptions {
    /// How often each node publishes its heartbeat.
    pub heartbeat_interval: Duration,
    /// A peer not heard for this long is down.
    pub down_after: Duration,
    /// A peer not heard for this long is forgotten.
    pub gone_after: Duration,
}

impl Default for MembershipOptions {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(1),
            down_after: Duration::from_secs(5),
            gone_after: Duration::from_secs(60),
        }
    }
}

/// A node's periodic "I am alive", published on
/// [`crate::subjects::cluster_heartbeat`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub node: String,
    /// Distinguishes restarts of a node id (its start time in ms, for instance).
    pub incarnation: u64,
    /// The version of the node's roster of online users (see [`crate::roster`]), so a
    /// peer that missed a roster change notices it within a heartbeat.
    pub roster_version: u64,
}

/// An orderly shutdown, published on [`crate::subjects::cluster_leave`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leave {
    pub node: String,
    pub incarnation: u64,
}

/// The state of a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    Up,
    Down,
}

/// What changed in the membership, for the caller to act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A node joined the live set (new, or back after being down).
    Up { node: String, incarnation: u64 },
    /// A node that was up heartbeats with a new incarnation: it restarted (without this
    /// node noticing it was down). Anything learned from the old process is stale.
    Restarted { node: String, incarnation: u64 },
    /// A node left the live set (silent for `down_after`, or it said it was leaving).
    Down { node: String, left: bool },
    /// A down node was silent for `gone_after` and is forgotten.
    Gone { node: String },
}

#[derive(Debug, Clone)]
struct Peer {
    incarnation: u64,
    state: PeerState,
    last_heard: Instant,
}

/// The membership as this node sees it.
#[derive(Debug)]
pub struct Membership {
    me: String,
    options: MembershipOptions,
    peers: BTreeMap<String, Peer>,
    /// Sorted ids of the live nodes, this one included; rebuilt when the set changes.
    live: Arc<[String]>,
    /// Bumped every time `live` changes.
    version: u64,
}

impl Membership {
    pub fn new(me: impl Into<String>, options: MembershipOptions) -> Self {
        let me = me.into();
        let live: Arc<[String]> = Arc::from(vec![me.clone()]);
        Self { me, options, peers: BTreeMap::new(), live, version: 1 }
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    pub fn options(&self) -> &MembershipOptions {
        &self.options
    }

    /// The live nodes (this one included), sorted.
    pub fn live(&self) -> &Arc<[String]> {
        &self.live
    }

    /// Changes every time the live set does.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The state of a peer this node knows about.
    pub fn peer(&self, node: &str) -> Option<(PeerState, u64)> {
        self.peers.get(node).map(|peer| (peer.state, peer.incarnation))
    }

    /// A heartbeat arrived (our own is ignored).
    pub fn on_heartbeat(&mut self, beat: &Heartbeat, now: Instant) -> Option<Change> {
        if beat.node == self.me {
            return None;
        }
        let change = match self.peers.get_mut(&beat.node) {
            None => {
                self.peers.insert(
                    beat.node.clone(),
                    Peer { incarnation: beat.incarnation, state: PeerState::Up, last_heard: now },
                );
                Some(Change::Up { node: beat.node.clone(), incarnation: beat.incarnation })
            }
            Some(peer) => {
                // An older incarnation's heartbeat still in flight is ignored.
                if beat.incarnation < peer.incarnation {
                    return None;
                }
                let restarted = beat.incarnation > peer.incarnation;
                peer.incarnation = beat.incarnation;
                peer.last_heard = now;
                match (peer.state, restarted) {
                    (PeerState::Down, _) => {
                        peer.state = PeerState::Up;
                        Some(Change::Up { node: beat.node.clone(), incarnation: beat.incarnation })
                    }
                    (PeerState::Up, true) => {
                        Some(Change::Restarted { node: beat.node.clone(), incarnation: beat.incarnation })
                    }
                    (PeerState::Up, false) => None,
                }
            }
        };
        if matches!(change, Some(Change::Up { .. })) {
            self.rebuild_live();
        }
        change
    }

    /// A peer announced it is leaving: it is down at once.
    pub fn on_leave(&mut self, leave: &Leave) -> Option<Change> {
        let peer = self.peers.get_mut(&leave.node)?;
        if peer.incarnation != leave.incarnation || peer.state == PeerState::Down {
            return None;
        }
        peer.state = PeerState::Down;
        self.rebuild_live();
        Some(Change::Down { node: leave.node.clone(), left: true })
    }

    /// Marks down the peers silent for `down_after` and forgets the ones silent for
    /// `gone_after`. With the bus disconnected nobody is marked down (silence is then
    /// our own), but long-gone peers are still forgotten.
    pub fn sweep(&mut self, now: Instant, bus_connected: bool) -> Vec<Change> {
        let mut changes = Vec::new();
        let (down_after, gone_after) = (self.options.down_after, self.options.gone_after);
        for (node, peer) in &mut self.peers {
            let silent = now.saturating_duration_since(peer.last_heard);
            if bus_connected && peer.state == PeerState::Up && silent >= down_after {
                peer.state = PeerState::Down;
                changes.push(Change::Down { node: node.clone(), left: false });
            }
        }
        self.peers.retain(|node, peer| {
            let gone = peer.state == PeerState::Down && now.saturating_duration_since(peer.last_heard) >= gone_after;
            if gone {
                changes.push(Change::Gone { node: node.clone() });
            }
            !gone
        });
        if changes.iter().any(|change| matches!(change, Change::Down { .. })) {
            self.rebuild_live();
        }
        changes
    }

    /// The bus is back after an outage: every live peer gets a fresh `down_after` to be
    /// heard again before it is declared down.
    pub fn bus_reconnected(&mut self, now: Instant) {
        for peer in self.peers.values_mut().filter(|peer| peer.state == PeerState::Up) {
            peer.last_heard = now;
        }
    }

    /// The live node that owns `key`.
    pub fn owner(&self, key: &str) -> &str {
        rendezvous_owner(&self.live, key).unwrap_or(&self.me)
    }

    fn rebuild_live(&mut self) {
        let mut live: Vec<String> = std::iter::once(self.me.clone())
            .chain(self.peers.iter().filter(|(_, peer)| peer.state == PeerState::Up).map(|(node, _)| node.clone()))
            .collect();
        live.sort_unstable();
        self.live = Arc::from(live);
        self.version += 1;
    }
}

/// Rendezvous (highest random weight) hashing: the node with the highest score for
/// `key` owns it. When a node leaves, only its keys move (each to the node with the
/// next-highest score); when one joins, it takes about `1/n` of the keys. The hash is
/// fixed (FNV-1a, then a 64-bit finalizer), so every node and every build agree.
pub fn rendezvous_owner<'a>(nodes: &'a [String], key: &str) -> Option<&'a str> {
    nodes.iter().max_by_key(|node| (score(node, key), node.as_str())).map(String::as_str)
}

fn score(node: &str, key: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    // The 0xff separator cannot occur in UTF-8, so ("ab", "c") and ("a", "bc") differ.
    for byte in node.bytes().chain(std::iter::once(0xff)).chain(key.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(PRIME);
    }
    // splitmix64's finalizer: FNV alone clusters on similar inputs.
    hash ^= hash >> 30;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^= hash >> 27;
    hash = hash.wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> MembershipOptions {
        MembershipOptions {
            heartbeat_interval: Duration::from_millis(100),
            down_after: Duration::from_millis(500),
            gone_after: Duration::from_secs(5),
        }
    }

    fn beat(node: &str, incarnation: u64) -> Heartbeat {
        Heartbeat { node: node.into(), incarnation, roster_version: 0 }
    }

    #[test]
    fn peers_come_up_go_down_and_are_forgotten() {
        let start = Instant::now();
        let mut members = Membership::new("a", options());
        assert_eq!(&*members.live().clone(), ["a".to_owned()]);
        assert_eq!(members.on_heartbeat(&beat("a", 1), start), None, "our own heartbeat");
        assert_eq!(members.on_heartbeat(&beat("b", 7), start), Some(Change::Up { node: "b".into(), incarnation: 7 }));
        assert_eq!(members.on_heartbeat(&beat("c", 1), start), Some(Change::Up { node: "c".into(), incarnation: 1 }));
        assert_eq!(members.live().len(), 3);
        let version = members.version();

        // b keeps beating, c falls silent.
        let later = start + Duration::from_millis(400);
        assert_eq!(members.on_heartbeat(&beat("b", 7), later), None);
        assert!(members.sweep(later, true).is_empty());
        let changes = members.sweep(start + Duration::from_millis(600), true);
        assert_eq!(changes, vec![Change::Down { node: "c".into(), left: false }]);
        assert_eq!(&*members.live().clone(), ["a".to_owned(), "b".to_owned()]);
        assert!(members.version() > version);

        // c comes back before it is forgotten; b leaves.
        let back = start + Duration::from_millis(700);
        assert_eq!(members.on_heartbeat(&beat("c", 1), back), Some(Change::Up { node: "c".into(), incarnation: 1 }));
        assert_eq!(members.on_leave(&Leave { node: "b".into(), incarnation: 6 }), None, "an old incarnation");
        assert_eq!(
            members.on_leave(&Leave { node: "b".into(), incarnation: 7 }),
            Some(Change::Down { node: "b".into(), left: true })
        );
        assert_eq!(&*members.live().clone(), ["a".to_owned(), "c".to_owned()]);
        let changes = members.sweep(start + Duration::from_secs(6), true);
        assert!(changes.contains(&Change::Gone { node: "b".into() }), "{changes:?}");
        assert_eq!(members.peer("b"), None);
    }

    #[test]
    fn a_restart_is_reported_and_stale_incarnations_are_ignored() {
        let now = Instant::now();
        let mut members = Membership::new("a", options());
        members.on_heartbeat(&beat("b", 5), now);
        assert_eq!(
            members.on_heartbeat(&beat("b", 9), now),
            Some(Change::Restarted { node: "b".into(), incarnation: 9 })
        );
        assert_eq!(members.on_heartbeat(&beat("b", 5), now), None);
        assert_eq!(members.peer("b"), Some((PeerState::Up, 9)));
    }

    #[test]
    fn nobody_is_declared_down_while_our_own_bus_is_away() {
        let start = Instant::now();
        let mut members = Membership::new("a", options());
        members.on_heartbeat(&beat("b", 1), start);
        assert!(members.sweep(start + Duration::from_secs(2), false).is_empty());
        assert_eq!(members.live().len(), 2);
        // Back: b gets a fresh window.
        members.bus_reconnected(start + Duration::from_secs(2));
        assert!(members.sweep(start + Duration::from_millis(2_400), true).is_empty());
        assert_eq!(members.sweep(start + Duration::from_millis(2_600), true).len(), 1);
    }

    #[test]
    fn rendezvous_is_stable_and_moves_only_the_departed_nodes_keys() {
        let three: Vec<String> = ["n1", "n2", "n3"].map(String::from).to_vec();
        let two: Vec<String> = ["n1", "n3"].map(String::from).to_vec();
        let keys: Vec<String> = (0..3_000).map(|i| format!("dm:u{i}:v{i}")).collect();
        let mut per_node = BTreeMap::<&str, usize>::new();
        for key in &keys {
            let owner = rendezvous_owner(&three, key).unwrap();
            *per_node.entry(owner).or_default() += 1;
            let after = rendezvous_owner(&two, key).unwrap();
            if owner != "n2" {
                assert_eq!(owner, after, "{key} moved though its owner stayed");
            }
        }
        // Spread: each node owns roughly a third.
        for count in per_node.values() {
            assert!((800..1_200).contains(count), "{per_node:?}");
        }
        // The hash is part of the cluster protocol: nodes of different builds must agree.
        assert_eq!(score("n1", "group:g1"), 4_920_221_983_303_961_816);
        assert_eq!(score("", ""), 5_705_415_379_283_624_141);
        assert_eq!(rendezvous_owner(&[], "x"), None);
    }
}
