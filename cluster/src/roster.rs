//! Which users are online on which node: presence replication between nodes.
//!
//! Each node owns its own roster (the users its user actors have announced online) and
//! publishes every change as a [`RosterDiff`] on [`crate::subjects::presence_events`],
//! numbered by a per-incarnation `version` that grows by one per diff. Peers keep a
//! [`Roster`] of everybody else's users. The bus is best-effort, so a peer checks the
//! numbering: a diff that does not follow the last one it applied (or a heartbeat that
//! announces a newer version than it has) means it missed something, and it fetches
//! the node's whole roster as [`RosterPage`]s by request instead of guessing.
//!
//! The roster answers two questions: where to send a user's messages (one publish per
//! node that has the user) and whether the user is online anywhere else (presence is
//! per user across the cluster). When a node goes down its users are dropped at once:
//! nobody stays online through a dead node (no ghosts).

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use switchboard_proto::ids::UserId;

/// A change of one node's roster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RosterDiff {
    pub node: String,
    pub incarnation: u64,
    /// The roster version after this diff; the previous diff had `version - 1`.
    pub version: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub online: Vec<UserId>,
    /// Users gone offline on that node, with the time they left (ms since the epoch).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub offline: Vec<(UserId, u64)>,
}

/// A request for a page of a node's roster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RosterPageRequest {
    /// Users after this one (in the page's order); `None` for the first page.
    pub after: Option<UserId>,
    pub limit: usize,
}

/// A page of a node's whole roster, in user id order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RosterPage {
    pub node: String,
    pub incarnation: u64,
    /// The roster version the page was read at.
    pub version: u64,
    pub users: Vec<UserId>,
    /// More pages follow.
    pub more: bool,
}

/// A user's presence through the other nodes changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub user: UserId,
    /// Online on at least one other node now.
    pub online: bool,
    /// When it went offline (ms), for offline transitions.
    pub last_seen: u64,
}

/// What a diff did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Applied; these users' presence through other nodes changed.
    Changed(Vec<Transition>),
    /// Already seen (a duplicate or an older diff); nothing to do.
    Stale,
    /// A diff was missed: fetch the node's roster with [`RosterPageRequest`]s.
    NeedsSnapshot,
}

#[derive(Debug, Default)]
struct NodeRoster {
    incarnation: u64,
    version: u64,
    users: HashSet<UserId>,
}

/// This node's view of the other nodes' rosters.
#[derive(Debug, Default)]
pub struct Roster {
    nodes: HashMap<String, NodeRoster>,
    /// On how many other nodes each user is online.
    counts: HashMap<UserId, u32>,
}

impl Roster {
    pub fn new() -> Self {
        Self::default()
    }

    /// The other nodes where `user` is online.
    pub fn nodes_of<'a>(&'a self, user: &'a UserId) -> impl Iterator<Item = &'a str> + 'a {
        let online = self.counts.contains_key(user);
        self.nodes
            .iter()
            .filter(move |(_, roster)| online && roster.users.contains(user))
            .map(|(node, _)| node.as_str())
    }

    /// Online on at least one other node.
    pub fn is_online(&self, user: &UserId) -> bool {
        self.counts.contains_key(user)
    }

    /// Users online on other nodes (each once).
    pub fn user_count(&self) -> usize {
        self.counts.len()
    }

    /// The version applied for `node`, if it is known.
    pub fn version_of(&self, node: &str, incarnation: u64) -> Option<u64> {
        self.nodes.get(node).filter(|roster| roster.incarnation == incarnation).map(|roster| roster.version)
    }

    /// Applies a diff from another node.
    pub fn apply_diff(&mut self, diff: &RosterDiff) -> Applied {
        let Some(roster) = self.nodes.get_mut(&diff.node) else {
            return Applied::NeedsSnapshot;
        };
        if diff.incarnation < roster.incarnation
            || (diff.incarnation == roster.incarnation && diff.version <= roster.version)
        {
            return Applied::Stale;
        }
        if diff.incarnation != roster.incarnation || diff.version != roster.version + 1 {
            return Applied::NeedsSnapshot;
        }
        roster.version = diff.version;
        let mut transitions = Vec::new();
        for user in &diff.online {
            if roster.users.insert(user.clone()) {
                increment(&mut self.counts, user, &mut transitions);
            }
        }
        for (user, at) in &diff.offline {
            if roster.users.remove(user) {
                decrement(&mut self.counts, user, *at, &mut transitions);
            }
        }
        Applied::Changed(transitions)
    }

    /// Replaces a node's roster by a full copy, assembled from its pages (see
    /// [`RosterPage`]); `left_at` is the time to report for users no longer there.
    pub fn replace(
        &mut self,
        node: &str,
        incarnation: u64,
        version: u64,
        users: HashSet<UserId>,
        left_at: u64,
    ) -> Vec<Transition> {
        let mut transitions = Vec::new();
        let old = self.nodes.insert(node.to_owned(), NodeRoster { incarnation, version, users: HashSet::new() });
        let old_users = old.map(|roster| roster.users).unwrap_or_default();
        for user in old_users.difference(&users) {
            decrement(&mut self.counts, user, left_at, &mut transitions);
        }
        for user in users.difference(&old_users) {
            increment(&mut self.counts, user, &mut transitions);
        }
        if let Some(roster) = self.nodes.get_mut(node) {
            roster.users = users;
        }
        transitions
    }

    /// A node is down or gone: its users are no longer online through it.
    pub fn drop_node(&mut self, node: &str, left_at: u64) -> Vec<Transition> {
        let mut transitions = Vec::new();
        if let Some(roster) = self.nodes.remove(node) {
            for user in &roster.users {
                decrement(&mut self.counts, user, left_at, &mut transitions);
            }
        }
        transitions
    }
}

fn increment(counts: &mut HashMap<UserId, u32>, user: &UserId, transitions: &mut Vec<Transition>) {
    let count = counts.entry(user.clone()).or_default();
    *count += 1;
    if *count == 1 {
        transitions.push(Transition { user: user.clone(), online: true, last_seen: 0 });
    }
}

fn decrement(counts: &mut HashMap<UserId, u32>, user: &UserId, at: u64, transitions: &mut Vec<Transition>) {
    if let Some(count) = counts.get_mut(user) {
        *count -= 1;
        if *count == 0 {
            counts.remove(user);
            transitions.push(Transition { user: user.clone(), online: false, last_seen: at });
        }
    }
}

/// This node's own roster: what it publishes and serves as pages.
#[derive(Debug)]
pub struct LocalRoster {
    node: String,
    incarnation: u64,
    version: u64,
    users: BTreeMap<UserId, ()>,
}

impl LocalRoster {
    pub fn new(node: impl Into<String>, incarnation: u64) -> Self {
        Self { node: node.into(), incarnation, version: 0, users: BTreeMap::new() }
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    pub fn contains(&self, user: &UserId) -> bool {
        self.users.contains_key(user)
    }

    /// Records a user online here; the diff to publish, if it changed anything.
    pub fn online(&mut self, user: &UserId) -> Option<RosterDiff> {
        if self.users.insert(user.clone(), ()).is_some() {
            return None;
        }
        self.version += 1;
        Some(self.diff(vec![user.clone()], Vec::new()))
    }

    /// Records a user offline here (left at `at`); the diff to publish, if any.
    pub fn offline(&mut self, user: &UserId, at: u64) -> Option<RosterDiff> {
        self.users.remove(user)?;
        self.version += 1;
        Some(self.diff(Vec::new(), vec![(user.clone(), at)]))
    }

    /// A page of the roster for a peer catching up.
    pub fn page(&self, request: &RosterPageRequest) -> RosterPage {
        let limit = request.limit.clamp(1, 50_000);
        let mut users: Vec<UserId> = match &request.after {
            None => self.users.keys().take(limit + 1).cloned().collect(),
            Some(after) => self
                .users
                .range::<UserId, _>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
                .take(limit + 1)
                .map(|(user, ())| user.clone())
                .collect(),
        };
        let more = users.len() > limit;
        users.truncate(limit);
        RosterPage { node: self.node.clone(), incarnation: self.incarnation, version: self.version, users, more }
    }

    fn diff(&self, online: Vec<UserId>, offline: Vec<(UserId, u64)>) -> RosterDiff {
        RosterDiff { node: self.node.clone(), incarnation: self.incarnation, version: self.version, online, offline }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> UserId {
        UserId::new(name).unwrap()
    }

    fn snapshot(local: &LocalRoster) -> (u64, HashSet<UserId>) {
        let mut users = HashSet::new();
        let mut request = RosterPageRequest { after: None, limit: 2 };
        loop {
            let page = local.page(&request);
            users.extend(page.users.iter().cloned());
            if !page.more {
                return (page.version, users);
            }
            request.after = page.users.last().cloned();
        }
    }

    #[test]
    fn diffs_in_order_apply_and_a_gap_asks_for_a_snapshot() {
        let mut b = LocalRoster::new("b", 1);
        let mut roster = Roster::new();
        let first = b.online(&user("alice")).unwrap();
        assert_eq!(roster.apply_diff(&first), Applied::NeedsSnapshot, "unknown node");
        let (version, users) = snapshot(&b);
        let transitions = roster.replace("b", 1, version, users, 0);
        assert_eq!(transitions, vec![Transition { user: user("alice"), online: true, last_seen: 0 }]);
        assert_eq!(roster.apply_diff(&first), Applied::Stale);

        let second = b.online(&user("bob")).unwrap();
        assert!(b.online(&user("bob")).is_none(), "no change, no diff");
        let third = b.offline(&user("alice"), 42).unwrap();
        // The second diff is lost: the third cannot be applied.
        assert_eq!(roster.apply_diff(&third), Applied::NeedsSnapshot);
        assert_eq!(
            roster.apply_diff(&second),
            Applied::Changed(vec![Transition { user: user("bob"), online: true, last_seen: 0 }])
        );
        assert_eq!(
            roster.apply_diff(&third),
            Applied::Changed(vec![Transition { user: user("alice"), online: false, last_seen: 42 }])
        );
        assert_eq!(roster.nodes_of(&user("bob")).collect::<Vec<_>>(), ["b"]);
        assert!(!roster.is_online(&user("alice")));
    }

    #[test]
    fn a_user_on_two_nodes_stays_online_until_both_drop() {
        let mut roster = Roster::new();
        let both: HashSet<UserId> = [user("alice")].into();
        roster.replace("b", 1, 1, both.clone(), 0);
        assert!(roster.replace("c", 1, 1, both, 0).is_empty(), "already online through b");
        let alice = user("alice");
        let mut nodes: Vec<_> = roster.nodes_of(&alice).collect();
        nodes.sort_unstable();
        assert_eq!(nodes, ["b", "c"]);
        assert!(roster.drop_node("b", 10).is_empty());
        assert_eq!(roster.drop_node("c", 20), vec![Transition { user: user("alice"), online: false, last_seen: 20 }]);
        assert_eq!(roster.user_count(), 0);
    }

    #[test]
    fn a_restarted_node_needs_a_snapshot_and_replacing_reports_the_difference() {
        let mut roster = Roster::new();
        roster.replace("b", 1, 5, [user("alice"), user("bob")].into(), 0);
        let diff = RosterDiff {
            node: "b".into(),
            incarnation: 2,
            version: 1,
            online: vec![user("carol")],
            offline: Vec::new(),
        };
        assert_eq!(roster.apply_diff(&diff), Applied::NeedsSnapshot);
        let mut transitions = roster.replace("b", 2, 1, [user("bob"), user("carol")].into(), 7);
        transitions.sort_by(|x, y| x.user.as_str().cmp(y.user.as_str()));
        assert_eq!(
            transitions,
            vec![
                Transition { user: user("alice"), online: false, last_seen: 7 },
                Transition { user: user("carol"), online: true, last_seen: 0 },
            ]
        );
        assert_eq!(roster.version_of("b", 2), Some(1));
        assert_eq!(roster.version_of("b", 1), None);
    }

    #[test]
    fn pages_cover_the_roster_once() {
        let mut local = LocalRoster::new("a", 3);
        for name in ["u1", "u2", "u3", "u4", "u5"] {
            local.online(&user(name));
        }
        local.offline(&user("u3"), 1);
        let (version, users) = snapshot(&local);
        assert_eq!(version, 6);
        assert_eq!(users, ["u1", "u2", "u4", "u5"].map(user).into());
    }
}
