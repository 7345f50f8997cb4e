//! The conversation actor: the single writer that sequences one conversation.
//!
//! Only this actor assigns a conversation's seqs (1, 2, 3, ... no gaps). A send is
//! authorized (group members only), deduplicated by `(from, cmid)`, given the next seq and
//! a `mid`, encoded once as a `msg` frame, and queued. One batch per conversation is
//! written at a time; sends arriving meanwhile form the next batch (group commit per
//! conversation, on top of the store's group commit across conversations).
//!
//! Group membership changes (`group_create`, `group_add`, `group_remove`) go through the
//! same queue as system messages: each is written in a batch of its own together with the
//! new member list, so the log says exactly which messages were sent before and after a
//! change, and a change is applied to authorization the moment it is sequenced.
//!
//! The write runs in its own task ([`write`]), which, once the batch is durable, acks each
//! sender and pushes the frames to every recipient device: the ack and the fanout never
//! depend on this actor surviving. The task then reports back ([`ConvMsg::Written`]) so
//! the actor can start the next batch.
//!
//! A failed write fails its batch and everything queued behind it with `unavailable`
//! (clients retry with the same `cmid`), and the actor reloads its state from the store
//! before sequencing again. The store refuses a batch that does not continue its stored
//! `last_seq`, which fences a stale sequencer (an earlier incarnation still writing).
//!
//! Groups also aggregate receipts here ([`ConvMsg::Mark`]): when every member has
//! delivered (or read) up to a seq, the members get one `receipt` with `"all": true`.

mod group;
mod write;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde_json::value::RawValue;
use switchboard_proto::codec;
use switchboard_proto::ids::{ConvId, ConvKind, DeviceId, UserId};
use switchboard_proto::server::Msg;
use tokio::sync::oneshot;

pub use self::group::{GroupChange, GroupReply, GroupRequest};
use self::group::{GroupMarks, MembershipChange};
use self::write::WriteTask;
use crate::groups::GroupInfo;
use crate::node::{Node, now_ms};
use crate::store::{MarkKind, NewMessage};

/// What a sender learns about an accepted send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub seq: u64,
    pub mid: String,
    pub ts: u64,
    pub dup: bool,
}

/// Why a send or a membership change was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SendError {
    #[error("the message store is unavailable; retry with the same cmid")]
    Unavailable,
    #[error("the conversation has too many requests queued; retry later")]
    Overloaded,
    #[error("you are not a member of this conversation")]
    Forbidden,
    #[error("no such conversation")]
    NotFound,
    #[error("{0}")]
    Invalid(String),
}

pub type SendReply = oneshot::Sender<Result<Accepted, SendError>>;

/// A message to sequence.
#[derive(Debug)]
pub struct SendRequest {
    pub from: UserId,
    pub dev: DeviceId,
    /// The sending connection, which gets the ack instead of the `msg`.
    pub conn_id: Option<u64>,
    pub cmid: Option<String>,
    pub body: Box<RawValue>,
    pub system: bool,
    /// Published through the admin API: not subject to group membership.
    pub admin: bool,
    pub reply: SendReply,
}

#[derive(Debug)]
pub enum ConvMsg {
    Send(SendRequest),
    /// Create a group, or add or remove members.
    Group(GroupRequest),
    /// A member's receipt mark moved (groups: aggregated receipts).
    Mark {
        user: UserId,
        kind: MarkKind,
        seq: u64,
    },
    /// From the write task: a batch ended.
    Written(write::WriteOutcome),
    /// Periodic: hibernate when idle.
    Tick,
    /// Fault injection: the actor panics, as a bug would make it. Sent by tests and by
    /// the admin API's `POST /api/v1/fault/crash`, which exists only when the node runs
    /// with `SWITCHBOARD_FAULT_INJECTION=1`.
    Crash,
}

type DedupKey = (UserId, String);

/// Who gets a conversation's messages live.
#[derive(Debug, Clone)]
enum Recipients {
    /// Every device of these users (dm members, group members at the time of the send).
    Users(Arc<[UserId]>),
    /// The feed's subscribers online on this node.
    Feed,
}

/// A message about to be sequenced.
struct Draft {
    from: UserId,
    dev: DeviceId,
    conn_id: Option<u64>,
    cmid: Option<String>,
    body: Box<RawValue>,
    system: bool,
}

/// A sequenced message waiting for its write.
struct Pending {
    message: NewMessage,
    conn_id: Option<u64>,
    recipients: Recipients,
    reply: PendingReply,
}

enum PendingReply {
    Send(SendReply),
    /// A membership change: written in a batch of its own with the new member list.
    Group(MembershipChange),
}

/// The sequencer of one conversation.
#[derive(Debug)]
pub struct ConvActor;

pub struct ConvState {
    node: Arc<Node>,
    conv: ConvId,
    /// Highest seq assigned (durable or in flight or queued).
    assigned_seq: u64,
    /// Highest seq known durable.
    durable_seq: u64,
    epoch: u64,
    /// The cluster view this sequencer last checked its ownership against.
    view: u64,
    /// The members of a dm (fixed by its id).
    dm_members: Arc<[UserId]>,
    /// What the directory counts as queued for this actor.
    mailbox: super::Mailbox,
    /// A group's name and members as sequenced so far (`None`: no such group).
    group: Option<Arc<GroupInfo>>,
    /// A group's receipt marks, loaded on the first receipt.
    marks: Option<GroupMarks>,
    /// Queued requests not yet handed to a write.
    pending: Vec<Pending>,
    writing: bool,
    /// `(from, cmid)` of sends in `pending` or being written, and later duplicates
    /// waiting for their result.
    unresolved: HashMap<DedupKey, Vec<SendReply>>,
    /// Recently acknowledged `(from, cmid)`s, oldest first, bounded.
    recent: HashMap<DedupKey, Accepted>,
    recent_order: VecDeque<DedupKey>,
    /// The store failed: reload before sequencing again.
    reload: bool,
    last_work: Instant,
    /// Dropped with the state, which stops the clock.
    _ticker: super::Ticker,
    _live: super::LiveActor,
}

impl std::fmt::Debug for ConvState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConvState")
            .field("conv", &self.conv)
            .field("assigned_seq", &self.assigned_seq)
            .field("durable_seq", &self.durable_seq)
            .field("pending", &self.pending.len())
            .field("writing", &self.writing)
            .finish_non_exhaustive()
    }
}

impl Actor for ConvActor {
    type Msg = ConvMsg;
    type State = ConvState;
    type Arguments = (Arc<Node>, ConvId, super::Mailbox);

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        (node, conv, mailbox): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        mailbox.reset();
        let idle = Duration::from_millis(node.config.actors.conv_idle_ms);
        let ticker = super::hibernation_ticker(&myself, idle, || ConvMsg::Tick);
        let live = super::LiveActor::new(node.clone(), super::ActorKind::Conv);
        let dm_members = match conv.dm_members() {
            Some((a, b)) if a == b => vec![a],
            Some((a, b)) => vec![a, b],
            None => Vec::new(),
        };
        let mut state = ConvState {
            node,
            conv,
            assigned_seq: 0,
            durable_seq: 0,
            epoch: 0,
            view: 0,
            dm_members: dm_members.into(),
            mailbox,
            group: None,
            marks: None,
            pending: Vec::new(),
            writing: false,
            unresolved: HashMap::new(),
            recent: HashMap::new(),
            recent_order: VecDeque::new(),
            reload: true,
            last_work: Instant::now(),
            _ticker: ticker,
            _live: live,
        };
        state.reload().await?;
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: ConvMsg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if matches!(message, ConvMsg::Send(_) | ConvMsg::Group(_) | ConvMsg::Mark { .. } | ConvMsg::Crash) {
            state.mailbox.handled();
        }
        let message = match state.still_owner(&myself, message) {
            Some(message) => message,
            None => return Ok(()),
        };
        match message {
            ConvMsg::Send(request) => state.on_send(&myself, request).await,
            ConvMsg::Group(request) => state.on_group(&myself, request).await,
            ConvMsg::Mark { user, kind, seq } => state.on_mark(user, kind, seq).await,
            ConvMsg::Written(outcome) => state.on_written(&myself, outcome),
            ConvMsg::Tick => state.on_tick(&myself),
            ConvMsg::Crash => panic!("fault injection: conversation actor crash"),
        }
        Ok(())
    }

    async fn post_stop(&self, myself: ActorRef<Self::Msg>, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        if let Some(name) = myself.get_name() {
            state.node.directory.forget_mailbox(&name);
        }
        Ok(())
    }
}

impl ConvState {
    /// Loads the conversation's head and, for a group, its members from the store. In
    /// a cluster it first claims the conversation (a new epoch fences the former owner),
    /// and waits out the former owner's writes in flight if that was another node.
    async fn reload(&mut self) -> Result<(), crate::store::StoreError> {
        let mut claimed = None;
        if let Some(cluster) = &self.node.cluster {
            self.view = cluster.view_version();
            let claim = self.node.store.claim(&self.conv, cluster.owner_tag()).await?;
            if claim.previous.as_deref().is_some_and(|previous| previous != cluster.owner_tag()) {
                tracing::info!(
                    conv = %self.conv,
                    epoch = claim.epoch,
                    previous = claim.previous.as_deref().unwrap_or(""),
                    "conversation taken over"
                );
                metrics::counter!("switchboard_cluster_takeovers_total").increment(1);
                tokio::time::sleep(Duration::from_millis(cluster.config().handover_wait_ms)).await;
            }
            claimed = Some(claim.epoch);
        }
        let meta = self.node.store.load_conv(&self.conv).await?;
        let (last_seq, stored_epoch) = meta.as_ref().map_or((0, 0), |meta| (meta.last_seq, meta.epoch));
        self.assigned_seq = last_seq;
        self.durable_seq = last_seq;
        self.epoch = claimed.unwrap_or(stored_epoch);
        if self.conv.kind() == ConvKind::Group {
            self.group = meta.and_then(|meta| Some(GroupInfo::new(meta.name?, meta.members))).map(Arc::new);
            self.marks = None;
        }
        self.reload = false;
        Ok(())
    }

    /// In a cluster, after the live set changed: if the conversation moved to another
    /// node, refuses the request (`unavailable`: the client retries and reaches the new
    /// owner) and stops. If it is still ours, nothing to do: had another node owned it
    /// meanwhile, its claim fences our next append, which fails and reloads (claims).
    fn still_owner(&mut self, myself: &ActorRef<ConvMsg>, message: ConvMsg) -> Option<ConvMsg> {
        let Some(cluster) = self.node.cluster.clone() else {
            return Some(message);
        };
        let view = cluster.view_version();
        if view == self.view || !matches!(message, ConvMsg::Send(_) | ConvMsg::Group(_) | ConvMsg::Mark { .. }) {
            return Some(message);
        }
        if cluster.remote_owner(&self.conv).is_none() {
            self.view = view;
            return Some(message);
        }
        tracing::info!(conv = %self.conv, "conversation moved to another node; this sequencer stops");
        match message {
            ConvMsg::Send(request) => drop(request.reply.send(Err(SendError::Unavailable))),
            ConvMsg::Group(request) => drop(request.reply.send(Err(SendError::Unavailable))),
            _ => {}
        }
        // Writes in flight finish on their own (their task holds what it needs).
        myself.stop(Some("ownership moved".to_owned()));
        None
    }

    /// Reloads after a failed write; `false` (and a log line) if the store is still down.
    async fn ensure_loaded(&mut self) -> bool {
        if !self.reload {
            return true;
        }
        match self.reload().await {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(conv = %self.conv, %error, "cannot reload conversation");
                false
            }
        }
    }

    /// Who gets a message sequenced now.
    fn recipients(&self) -> Recipients {
        match self.conv.kind() {
            ConvKind::Dm => Recipients::Users(self.dm_members.clone()),
            ConvKind::Group => {
                Recipients::Users(self.group.as_ref().map_or_else(|| Arc::from([]), |group| group.members.clone()))
            }
            ConvKind::Feed => Recipients::Feed,
        }
    }

    /// Whether the queue has room for one more request.
    fn has_room(&self) -> bool {
        if self.pending.len() < self.node.config.actors.conv_max_pending {
            return true;
        }
        metrics::counter!("switchboard_sends_refused_total", "reason" => "overloaded").increment(1);
        false
    }

    async fn on_send(&mut self, myself: &ActorRef<ConvMsg>, request: SendRequest) {
        self.last_work = Instant::now();
        let key = request.cmid.as_ref().map(|cmid| (request.from.clone(), cmid.clone()));
        if let Some(key) = &key {
            if let Some(accepted) = self.recent.get(key) {
                let _ = request.reply.send(Ok(Accepted { dup: true, ..accepted.clone() }));
                return;
            }
            if let Some(waiting) = self.unresolved.get_mut(key) {
                waiting.push(request.reply);
                return;
            }
        }
        if !self.has_room() {
            let _ = request.reply.send(Err(SendError::Overloaded));
            return;
        }
        if !self.ensure_loaded().await {
            let _ = request.reply.send(Err(SendError::Unavailable));
            return;
        }
        if self.conv.kind() == ConvKind::Group {
            let refusal = match &self.group {
                None => Some(SendError::NotFound),
                Some(group) if !request.admin && !group.is_member(&request.from) => Some(SendError::Forbidden),
                Some(_) => None,
            };
            if let Some(refusal) = refusal {
                let _ = request.reply.send(Err(refusal));
                return;
            }
        }
        if let (Some(key), Some(cmid)) = (&key, &request.cmid) {
            match self.node.store.find_dedup(&self.conv, &request.from, cmid).await {
                Ok(Some(hit)) => {
                    let accepted = Accepted { seq: hit.seq, mid: hit.mid, ts: hit.ts, dup: false };
                    self.remember(key.clone(), accepted.clone());
                    let _ = request.reply.send(Ok(Accepted { dup: true, ..accepted }));
                    return;
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(conv = %self.conv, %error, "dedup lookup failed");
                    let _ = request.reply.send(Err(SendError::Unavailable));
                    return;
                }
            }
        }
        if let Some(key) = key {
            self.unresolved.insert(key, Vec::new());
        }
        let recipients = self.recipients();
        let SendRequest { from, dev, conn_id, cmid, body, system, reply, .. } = request;
        let draft = Draft { from, dev, conn_id, cmid, body, system };
        self.enqueue(myself, draft, recipients, PendingReply::Send(reply));
    }

    /// Gives a message the next seq, encodes its `msg` frame once, and queues it.
    fn enqueue(&mut self, myself: &ActorRef<ConvMsg>, draft: Draft, recipients: Recipients, reply: PendingReply) {
        let Draft { from, dev, conn_id, cmid, body, system } = draft;
        let seq = self.assigned_seq + 1;
        self.assigned_seq = seq;
        let mid = ulid::Ulid::new().to_string();
        let ts = now_ms();
        let frame = codec::encode_msg(&Msg {
            conv: self.conv.clone(),
            seq,
            mid: mid.clone(),
            from: from.clone(),
            dev,
            ts,
            body,
            system,
        });
        self.pending.push(Pending {
            message: NewMessage { seq, mid, from, ts, cmid, frame },
            conn_id,
            recipients,
            reply,
        });
        metrics::gauge!("switchboard_conv_pending").increment(1.0);
        if !self.writing {
            self.start_write(myself);
        }
    }

    fn remember(&mut self, key: DedupKey, accepted: Accepted) {
        if self.recent.insert(key.clone(), accepted).is_none() {
            self.recent_order.push_back(key);
        }
        while self.recent_order.len() > self.node.config.actors.conv_dedup_cache {
            if let Some(oldest) = self.recent_order.pop_front() {
                self.recent.remove(&oldest);
            }
        }
    }

    /// Hands the next batch of pending requests to a write task. A membership change is
    /// a batch of its own, so its member list is stored with exactly its message.
    fn start_write(&mut self, myself: &ActorRef<ConvMsg>) {
        let is_change = |pending: &Pending| matches!(pending.reply, PendingReply::Group(_));
        let take = match self.pending.first() {
            None => return,
            Some(first) if is_change(first) => 1,
            Some(_) => self
                .pending
                .iter()
                .take(self.node.config.actors.conv_max_batch)
                .take_while(|pending| !is_change(pending))
                .count(),
        };
        let batch: Vec<Pending> = self.pending.drain(..take).collect();
        metrics::gauge!("switchboard_conv_pending").decrement(take as f64);
        self.writing = true;
        // The first message of a dm puts the conversation in both users' inboxes.
        let index_users = if self.durable_seq == 0 && self.conv.kind() == ConvKind::Dm {
            self.dm_members.to_vec()
        } else {
            Vec::new()
        };
        let task = WriteTask {
            node: self.node.clone(),
            conv: self.conv.clone(),
            epoch: self.epoch,
            index_users,
            batch,
            myself: myself.clone(),
        };
        self.node.tasks.spawn(task.run());
    }

    fn on_written(&mut self, myself: &ActorRef<ConvMsg>, outcome: write::WriteOutcome) {
        self.writing = false;
        self.last_work = Instant::now();
        match outcome.durable_seq {
            Some(durable_seq) => {
                self.durable_seq = self.durable_seq.max(durable_seq);
                for (key, accepted) in outcome.acks {
                    for waiting in self.unresolved.remove(&key).unwrap_or_default() {
                        let _ = waiting.send(Ok(Accepted { dup: true, ..accepted.clone() }));
                    }
                    self.remember(key, accepted);
                }
                self.start_write(myself);
            }
            None => {
                // The batch is not stored, and everything queued behind it was numbered
                // after it: fail all of it and reload from the store.
                for key in outcome.keys {
                    for waiting in self.unresolved.remove(&key).unwrap_or_default() {
                        let _ = waiting.send(Err(SendError::Unavailable));
                    }
                }
                metrics::gauge!("switchboard_conv_pending").decrement(self.pending.len() as f64);
                for pending in self.pending.drain(..) {
                    if let Some(cmid) = &pending.message.cmid {
                        let key = (pending.message.from.clone(), cmid.clone());
                        for waiting in self.unresolved.remove(&key).unwrap_or_default() {
                            let _ = waiting.send(Err(SendError::Unavailable));
                        }
                    }
                    pending.reply.fail(SendError::Unavailable);
                }
                self.assigned_seq = self.durable_seq;
                self.reload = true;
            }
        }
    }

    fn on_tick(&mut self, myself: &ActorRef<ConvMsg>) {
        let idle = Duration::from_millis(self.node.config.actors.conv_idle_ms);
        if self.writing || !self.pending.is_empty() || self.last_work.elapsed() < idle {
            return;
        }
        // Hibernate: take no new messages, finish the queued ones, stop. The directory
        // starts a fresh actor (state from the store) on the next send.
        tracing::debug!(conv = %self.conv, "conversation hibernates");
        if let Err(error) = myself.drain() {
            tracing::debug!(conv = %self.conv, %error, "drain failed");
        }
    }
}

impl PendingReply {
    fn fail(self, error: SendError) {
        match self {
            PendingReply::Send(reply) => {
                let _ = reply.send(Err(error));
            }
            PendingReply::Group(change) => {
                let _ = change.reply.send(Err(error));
            }
        }
    }
}
