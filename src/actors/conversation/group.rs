//! Group membership changes and aggregated group receipts, in the group's sequencer.
//!
//! A change is authorized against the members as sequenced so far (any member may add or
//! remove members, and leave by removing themselves), becomes a system message in the
//! log, and is applied to the actor's member list at once, so the next send is judged by
//! it. The message goes to the members before and after the change: removed members see
//! their removal, added ones see their addition. It is written in a batch of its own
//! with the new member list (and `user_convs` entries for the added and removed
//! members), and the requester gets the `group` reply once it is durable.
//!
//! System message bodies: `{"event": "created", "by", "name", "members"}`,
//! `{"event": "added", "by", "members"}`, `{"event": "removed", "by", "members"}`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use ractor::ActorRef;
use serde_json::json;
use serde_json::value::RawValue;
use switchboard_proto::client::ReceiptKind;
use switchboard_proto::ids::{ConvKind, DeviceId, UserId};
use switchboard_proto::server::ReceiptEvent;
use tokio::sync::oneshot;

use super::{ConvMsg, ConvState, Draft, PendingReply, Recipients, SendError};
use crate::groups::GroupInfo;
use crate::node::now_ms;
use crate::store::MarkKind;

pub type GroupReply = oneshot::Sender<Result<Arc<GroupInfo>, SendError>>;

/// What a membership request asks for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupChange {
    /// A new group with these members (the creator is added).
    Create {
        name: String,
        members: Vec<UserId>,
    },
    Add(Vec<UserId>),
    Remove(Vec<UserId>),
}

/// A membership request from a member (or the creator).
#[derive(Debug)]
pub struct GroupRequest {
    pub by: UserId,
    pub dev: DeviceId,
    pub change: GroupChange,
    pub reply: GroupReply,
}

/// A change checked against the members, ready to be sequenced.
struct Planned {
    /// The group after the change.
    info: GroupInfo,
    added: Vec<UserId>,
    removed: Vec<UserId>,
    /// The system message's body.
    body: serde_json::Value,
}

/// A sequenced membership change on its way to the store.
pub(super) struct MembershipChange {
    /// The group after the change.
    pub(super) info: Arc<GroupInfo>,
    pub(super) added: Vec<UserId>,
    pub(super) removed: Vec<UserId>,
    pub(super) reply: GroupReply,
}

impl ConvState {
    pub(super) async fn on_group(&mut self, myself: &ActorRef<ConvMsg>, request: GroupRequest) {
        self.last_work = std::time::Instant::now();
        let GroupRequest { by, dev, change, reply } = request;
        if self.conv.kind() != ConvKind::Group {
            let _ = reply.send(Err(SendError::Invalid("not a group conversation".to_owned())));
            return;
        }
        if !self.has_room() {
            let _ = reply.send(Err(SendError::Overloaded));
            return;
        }
        if !self.ensure_loaded().await {
            let _ = reply.send(Err(SendError::Unavailable));
            return;
        }
        let planned = match self.plan(&by, change) {
            Ok(planned) => planned,
            Err(error) => {
                let _ = reply.send(Err(error));
                return;
            }
        };
        let Some(Planned { info, added, removed, body }) = planned else {
            // Nothing changes (members already in, or already out): no message.
            let current = self.group.clone().unwrap_or_else(|| Arc::new(GroupInfo::new(String::new(), [])));
            let _ = reply.send(Ok(current));
            return;
        };
        let body = match RawValue::from_string(body.to_string()) {
            Ok(body) => body,
            Err(error) => {
                let _ = reply.send(Err(SendError::Invalid(error.to_string())));
                return;
            }
        };
        // Before and after: removed members hear of their removal, added ones of theirs.
        let before = self.group.as_ref().map(|group| group.members.to_vec()).unwrap_or_default();
        let audience = GroupInfo::new(String::new(), before.into_iter().chain(info.members.iter().cloned()));
        let info = Arc::new(info);
        self.group = Some(info.clone());
        if let Some(marks) = &mut self.marks {
            marks.members_changed(&info);
        }
        let change = MembershipChange { info, added, removed, reply };
        let recipients = Recipients::Users(audience.members);
        let draft = Draft { from: by, dev, conn_id: None, cmid: None, body, system: true };
        self.enqueue(myself, draft, recipients, PendingReply::Group(change));
    }

    /// Checks a change against the current members. `Ok(None)`: nothing to change.
    fn plan(&self, by: &UserId, change: GroupChange) -> Result<Option<Planned>, SendError> {
        let max_members = self.node.config.groups.max_members;
        let too_many = |count: usize| {
            SendError::Invalid(format!("a group has at most {max_members} members; this change would make {count}"))
        };
        let current = match (&change, &self.group) {
            (GroupChange::Create { .. }, Some(_)) => {
                return Err(SendError::Invalid("the group already exists".to_owned()));
            }
            (GroupChange::Create { .. }, None) if self.assigned_seq > 0 => {
                return Err(SendError::Invalid("the conversation already exists".to_owned()));
            }
            (GroupChange::Create { .. }, None) => None,
            (_, None) => return Err(SendError::NotFound),
            (_, Some(group)) if !group.is_member(by) => return Err(SendError::Forbidden),
            (_, Some(group)) => Some(group.clone()),
        };
        match change {
            GroupChange::Create { name, members } => {
                let info = GroupInfo::new(name.clone(), members.into_iter().chain([by.clone()]));
                if info.members.len() > max_members {
                    return Err(too_many(info.members.len()));
                }
                let added = info.members.to_vec();
                let body = json!({"event": "created", "by": by, "name": name, "members": added});
                Ok(Some(Planned { info, added, removed: Vec::new(), body }))
            }
            GroupChange::Add(members) => {
                let current = current.ok_or(SendError::NotFound)?;
                let added: Vec<UserId> = GroupInfo::new(String::new(), members)
                    .members
                    .iter()
                    .filter(|user| !current.is_member(user))
                    .cloned()
                    .collect();
                if added.is_empty() {
                    return Ok(None);
                }
                let info = GroupInfo::new(current.name.clone(), current.members.iter().chain(&added).cloned());
                if info.members.len() > max_members {
                    return Err(too_many(info.members.len()));
                }
                let body = json!({"event": "added", "by": by, "members": added});
                Ok(Some(Planned { info, added, removed: Vec::new(), body }))
            }
            GroupChange::Remove(members) => {
                let current = current.ok_or(SendError::NotFound)?;
                let removing = GroupInfo::new(String::new(), members);
                let removed: Vec<UserId> =
                    current.members.iter().filter(|user| removing.is_member(user)).cloned().collect();
                if removed.is_empty() {
                    return Ok(None);
                }
                let info = GroupInfo::new(
                    current.name.clone(),
                    current.members.iter().filter(|user| !removing.is_member(user)).cloned(),
                );
                let body = json!({"event": "removed", "by": by, "members": removed});
                Ok(Some(Planned { info, added: Vec::new(), removed, body }))
            }
        }
    }

    /// A member's mark moved: when every member has reached a seq, tell the members.
    pub(super) async fn on_mark(&mut self, user: UserId, kind: MarkKind, seq: u64) {
        let Some(group) = self.group.clone() else { return };
        let mut moved = Vec::new();
        if self.marks.is_none() {
            match self.node.store.marks(&self.conv).await {
                Ok(stored) => {
                    let marks = stored.into_iter().map(|marks| (marks.user, [marks.delivered, marks.read])).collect();
                    let mut marks = GroupMarks::new(marks);
                    // What was announced before this actor started is unknown: announce
                    // the stored aggregate again (receipts are cumulative, a repeat is
                    // harmless; a miss would not be).
                    moved = marks.catch_up(&group);
                    self.marks = Some(marks);
                }
                Err(error) => {
                    tracing::debug!(conv = %self.conv, %error, "group marks not loaded; aggregate skipped");
                    return;
                }
            }
        }
        let Some(marks) = &mut self.marks else { return };
        moved.extend(marks.raise(&group, &user, kind, seq));
        for (kind, seq) in moved {
            let event = ReceiptEvent {
                conv: self.conv.clone(),
                user: user.clone(),
                kind: match kind {
                    MarkKind::Delivered => ReceiptKind::Delivered,
                    MarkKind::Read => ReceiptKind::Read,
                },
                seq,
                ts: now_ms(),
                all: true,
            };
            let frame = crate::gateway::connection::frame(&event);
            self.node.deliver(&group.members, crate::cluster::Kind::Frame, &frame, None).await;
            metrics::counter!("switchboard_receipts_aggregated_total").increment(1);
        }
    }
}

/// A group's delivered/read marks per member and the aggregate: the lowest mark over
/// the current members, which is also what was last announced.
///
/// Every message of a group gets a receipt from nearly every member, and nearly every
/// member is at the aggregate when it does, so the lowest mark must not be found by a
/// scan (that made a message cost O(members²)). The members' marks are also counted by
/// value, per kind: the lowest is the first key, and a receipt moves one count, so it
/// costs O(log members).
#[derive(Debug)]
pub(super) struct GroupMarks {
    marks: HashMap<UserId, [u64; 2]>,
    all: [u64; 2],
    /// Per kind, how many current members hold each mark (a member without one holds 0).
    counts: [BTreeMap<u64, u32>; 2],
    /// Members the counts were taken over; a group of another size means they are stale.
    counted: usize,
}

impl GroupMarks {
    /// Marks as loaded; nothing announced yet (see [`GroupMarks::catch_up`]).
    fn new(marks: HashMap<UserId, [u64; 2]>) -> Self {
        Self { marks, all: [0, 0], counts: [BTreeMap::new(), BTreeMap::new()], counted: 0 }
    }

    /// Brings the aggregate up to the marks; returns what moved, to announce.
    fn catch_up(&mut self, group: &GroupInfo) -> Vec<(MarkKind, u64)> {
        self.recount(group);
        let mut moved = Vec::new();
        for (index, kind) in [(0, MarkKind::Delivered), (1, MarkKind::Read)] {
            let lowest = self.lowest(index);
            if lowest > self.all[index] {
                self.all[index] = lowest;
                moved.push((kind, lowest));
            }
        }
        moved
    }

    /// Counts the current members' marks afresh.
    fn recount(&mut self, group: &GroupInfo) {
        self.counts = [BTreeMap::new(), BTreeMap::new()];
        for member in group.members.iter() {
            let marks = self.marks.get(member).copied().unwrap_or([0, 0]);
            for (index, counts) in self.counts.iter_mut().enumerate() {
                *counts.entry(marks[index]).or_insert(0) += 1;
            }
        }
        self.counted = group.members.len();
    }

    fn lowest(&self, index: usize) -> u64 {
        self.counts[index].keys().next().copied().unwrap_or(0)
    }

    /// Membership changed: the aggregate is recomputed without announcing (a new member
    /// holds it back; a removed laggard no longer does, and the next rise is announced).
    fn members_changed(&mut self, group: &GroupInfo) {
        self.recount(group);
        self.all = [self.lowest(0), self.lowest(1)];
    }

    /// Raises `user`'s mark (a read raises delivered too); returns the aggregates that
    /// moved, to announce.
    fn raise(&mut self, group: &GroupInfo, user: &UserId, kind: MarkKind, seq: u64) -> Vec<(MarkKind, u64)> {
        if self.counted != group.members.len() {
            self.recount(group);
        }
        let entry = self.marks.entry(user.clone()).or_insert([0, 0]);
        let before = *entry;
        entry[0] = entry[0].max(seq);
        if kind == MarkKind::Read {
            entry[1] = entry[1].max(seq);
        }
        let after = *entry;
        if !group.is_member(user) {
            return Vec::new();
        }
        let mut moved = Vec::new();
        for (index, kind) in [(0, MarkKind::Delivered), (1, MarkKind::Read)] {
            if after[index] == before[index] {
                continue;
            }
            let counts = &mut self.counts[index];
            if let Some(count) = counts.get_mut(&before[index]) {
                *count -= 1;
                if *count == 0 {
                    counts.remove(&before[index]);
                }
            }
            *counts.entry(after[index]).or_insert(0) += 1;
            let lowest = self.lowest(index);
            if lowest > self.all[index] {
                self.all[index] = lowest;
                moved.push((kind, lowest));
            }
        }
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str) -> UserId {
        UserId::new(id).unwrap()
    }

    #[test]
    fn aggregate_moves_when_the_last_member_catches_up() {
        let group = GroupInfo::new("g".into(), [user("a"), user("b"), user("c")]);
        let mut marks = GroupMarks::new(HashMap::new());
        assert!(marks.catch_up(&group).is_empty());
        assert!(marks.raise(&group, &user("a"), MarkKind::Read, 5).is_empty());
        assert!(marks.raise(&group, &user("b"), MarkKind::Delivered, 3).is_empty());
        assert_eq!(marks.raise(&group, &user("c"), MarkKind::Delivered, 4), vec![(MarkKind::Delivered, 3)]);
        assert_eq!(marks.raise(&group, &user("b"), MarkKind::Read, 5), vec![(MarkKind::Delivered, 4)]);
        assert_eq!(
            marks.raise(&group, &user("c"), MarkKind::Read, 7),
            vec![(MarkKind::Delivered, 5), (MarkKind::Read, 5)]
        );
        // A non-member's receipt moves nothing.
        assert!(marks.raise(&group, &user("z"), MarkKind::Read, 9).is_empty());
    }

    #[test]
    fn loaded_marks_are_announced_once() {
        let group = GroupInfo::new("g".into(), [user("a"), user("b")]);
        let mut marks = GroupMarks::new(HashMap::from([(user("a"), [4, 3]), (user("b"), [5, 2])]));
        assert_eq!(marks.catch_up(&group), vec![(MarkKind::Delivered, 4), (MarkKind::Read, 2)]);
        assert!(marks.catch_up(&group).is_empty());
        assert_eq!(marks.raise(&group, &user("b"), MarkKind::Read, 5), vec![(MarkKind::Read, 3)]);
    }

    /// The counted aggregate is the lowest mark over the members after every receipt,
    /// whatever the order (checked against a scan).
    #[test]
    fn counted_aggregate_matches_a_scan() {
        use rand::{Rng as _, SeedableRng as _};
        let members: Vec<UserId> = (0..40).map(|k| user(&format!("m{k:02}"))).collect();
        let group = GroupInfo::new("g".into(), members.clone());
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut marks = GroupMarks::new(HashMap::new());
        marks.catch_up(&group);
        let mut announced = [0u64; 2];
        for _ in 0..5_000 {
            let who = if rng.random_bool(0.05) { user("outsider") } else { members[rng.random_range(0..40)].clone() };
            let kind = if rng.random_bool(0.3) { MarkKind::Read } else { MarkKind::Delivered };
            for (kind, seq) in marks.raise(&group, &who, kind, rng.random_range(0..200)) {
                let index = usize::from(kind == MarkKind::Read);
                assert!(seq > announced[index], "announcements only rise");
                announced[index] = seq;
            }
            for index in 0..2 {
                let scan = members.iter().map(|m| marks.marks.get(m).map_or(0, |v| v[index])).min().unwrap_or(0);
                assert_eq!(marks.all[index], scan);
                assert_eq!(announced[index], scan);
            }
        }
    }

    #[test]
    fn a_removed_laggard_stops_holding_the_aggregate_back() {
        let group = GroupInfo::new("g".into(), [user("a"), user("b")]);
        let mut marks = GroupMarks::new(HashMap::from([(user("a"), [6, 6])]));
        assert!(marks.catch_up(&group).is_empty());
        let smaller = GroupInfo::new("g".into(), [user("a")]);
        marks.members_changed(&smaller);
        assert_eq!(marks.all, [6, 6]);
        assert_eq!(
            marks.raise(&smaller, &user("a"), MarkKind::Read, 7),
            vec![(MarkKind::Delivered, 7), (MarkKind::Read, 7)]
        );
    }
}
