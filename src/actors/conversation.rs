//! The conversation actor: the single writer that sequences one conversation.
//!
//! Only this actor assigns a conversation's seqs (1, 2, 3, ... no gaps). A send is
//! deduplicated by `(from, cmid)`, given the next seq and a `mid`, encoded once as a `msg`
//! frame, and queued. One batch per conversation is written at a time; sends arriving
//! meanwhile form the next batch (group commit per conversation, on top of the store's
//! group commit across conversations).
//!
//! The write runs in its own task, which, once the batch is durable, acks each sender and
//! pushes the frames to every recipient device: the ack and the fanout never depend on
//! this actor surviving. The task then reports back ([`ConvMsg::Written`]) so the actor
//! can start the next batch.
//!
//! A failed write fails its batch and everything queued behind it with `unavailable`
//! (clients retry with the same `cmid`), and the actor reloads `last_seq` from the store
//! before sequencing again. The store refuses a batch that does not continue its stored
//! `last_seq`, which fences a stale sequencer (an earlier incarnation still writing).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde_json::value::RawValue;
use switchboard_proto::codec;
use switchboard_proto::ids::{ConvId, DeviceId, UserId};
use switchboard_proto::server::Msg;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::node::{Node, now_ms};
use crate::store::{AppendBatch, NewMessage};

/// How long a store append may take before its batch fails with `unavailable`.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// What a sender learns about an accepted send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub seq: u64,
    pub mid: String,
    pub ts: u64,
    pub dup: bool,
}

/// Why a send was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("the message store is unavailable; retry with the same cmid")]
    Unavailable,
    #[error("the conversation has too many sends queued; retry later")]
    Overloaded,
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
    pub reply: SendReply,
}

#[derive(Debug)]
pub enum ConvMsg {
    Send(SendRequest),
    /// From the write task: a batch ended.
    Written(WriteOutcome),
    /// Periodic: hibernate when idle.
    Tick,
    /// Test hook: the actor panics, as a bug would make it.
    #[cfg(test)]
    Crash,
}

/// What a write task reports back.
#[derive(Debug)]
pub struct WriteOutcome {
    /// The last seq of the batch when it is durable; `None` when it failed.
    durable_seq: Option<u64>,
    /// The acks of the sends that carried a `cmid`.
    acks: Vec<(DedupKey, Accepted)>,
    keys: Vec<DedupKey>,
}

type DedupKey = (UserId, String);

struct Pending {
    message: NewMessage,
    conn_id: Option<u64>,
    reply: SendReply,
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
    /// Queued sends not yet handed to a write.
    pending: Vec<Pending>,
    writing: bool,
    /// `(from, cmid)` of sends in `pending` or being written, and later duplicates
    /// waiting for their result.
    unresolved: HashMap<DedupKey, Vec<SendReply>>,
    /// Recently acknowledged `(from, cmid)`s, oldest first, bounded.
    recent: HashMap<DedupKey, Accepted>,
    recent_order: VecDeque<DedupKey>,
    /// The store failed: reload `last_seq` before sequencing again.
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
    type Arguments = (Arc<Node>, ConvId);

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        (node, conv): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let meta = node.store.load_conv(&conv).await?;
        let (last_seq, epoch) = meta.map_or((0, 0), |meta| (meta.last_seq, meta.epoch));
        let idle = Duration::from_millis(node.config.actors.conv_idle_ms);
        let ticker = super::hibernation_ticker(&myself, idle, || ConvMsg::Tick);
        let live = super::LiveActor::new(node.clone(), super::ActorKind::Conv);
        Ok(ConvState {
            node,
            conv,
            assigned_seq: last_seq,
            durable_seq: last_seq,
            epoch,
            pending: Vec::new(),
            writing: false,
            unresolved: HashMap::new(),
            recent: HashMap::new(),
            recent_order: VecDeque::new(),
            reload: false,
            last_work: Instant::now(),
            _ticker: ticker,
            _live: live,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: ConvMsg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ConvMsg::Send(request) => state.on_send(&myself, request).await,
            ConvMsg::Written(outcome) => state.on_written(&myself, outcome),
            ConvMsg::Tick => state.on_tick(&myself),
            #[cfg(test)]
            ConvMsg::Crash => panic!("test hook: conversation actor crash"),
        }
        Ok(())
    }
}

impl ConvState {
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
        if self.pending.len() >= self.node.config.actors.conv_max_pending {
            metrics::counter!("switchboard_sends_refused_total", "reason" => "overloaded").increment(1);
            let _ = request.reply.send(Err(SendError::Overloaded));
            return;
        }
        if self.reload && !self.reload_last_seq().await {
            let _ = request.reply.send(Err(SendError::Unavailable));
            return;
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
        let seq = self.assigned_seq + 1;
        self.assigned_seq = seq;
        let mid = ulid::Ulid::new().to_string();
        let ts = now_ms();
        let frame = codec::encode_msg(&Msg {
            conv: self.conv.clone(),
            seq,
            mid: mid.clone(),
            from: request.from.clone(),
            dev: request.dev,
            ts,
            body: request.body,
            system: request.system,
        });
        if let Some(key) = key {
            self.unresolved.insert(key, Vec::new());
        }
        self.pending.push(Pending {
            message: NewMessage { seq, mid, from: request.from, ts, cmid: request.cmid, frame },
            conn_id: request.conn_id,
            reply: request.reply,
        });
        metrics::gauge!("switchboard_conv_pending").increment(1.0);
        if !self.writing {
            self.start_write(myself);
        }
    }

    async fn reload_last_seq(&mut self) -> bool {
        match self.node.store.load_conv(&self.conv).await {
            Ok(meta) => {
                let last_seq = meta.map_or(0, |meta| meta.last_seq);
                self.assigned_seq = last_seq;
                self.durable_seq = last_seq;
                self.reload = false;
                true
            }
            Err(error) => {
                tracing::warn!(conv = %self.conv, %error, "cannot reload conversation");
                false
            }
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

    /// Hands the next batch of pending sends to a write task.
    fn start_write(&mut self, myself: &ActorRef<ConvMsg>) {
        let take = self.pending.len().min(self.node.config.actors.conv_max_batch);
        if take == 0 {
            return;
        }
        let batch: Vec<Pending> = self.pending.drain(..take).collect();
        metrics::gauge!("switchboard_conv_pending").decrement(take as f64);
        self.writing = true;
        // The first message of a dm puts the conversation in both users' inboxes.
        let index_users = if self.durable_seq == 0 { recipients(&self.conv) } else { Vec::new() };
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

    fn on_written(&mut self, myself: &ActorRef<ConvMsg>, outcome: WriteOutcome) {
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
                // after it: fail all of it and renumber from the store.
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
                    let _ = pending.reply.send(Err(SendError::Unavailable));
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

/// One batch on its way to the store, then to the senders and recipients.
struct WriteTask {
    node: Arc<Node>,
    conv: ConvId,
    epoch: u64,
    index_users: Vec<UserId>,
    batch: Vec<Pending>,
    myself: ActorRef<ConvMsg>,
}

impl WriteTask {
    async fn run(self) {
        let WriteTask { node, conv, epoch, index_users, batch, myself } = self;
        let keys: Vec<DedupKey> = batch
            .iter()
            .filter_map(|pending| {
                pending.message.cmid.as_ref().map(|cmid| (pending.message.from.clone(), cmid.clone()))
            })
            .collect();
        let append = AppendBatch {
            conv: conv.clone(),
            messages: batch.iter().map(|pending| pending.message.clone()).collect(),
            epoch,
            index_users,
        };
        let started = Instant::now();
        let result = match tokio::time::timeout(WRITE_TIMEOUT, node.store.append(append)).await {
            Ok(result) => result.map_err(|error| error.to_string()),
            Err(_) => Err(format!("append timed out after {WRITE_TIMEOUT:?}")),
        };
        metrics::histogram!("switchboard_store_append_seconds").record(started.elapsed().as_secs_f64());
        if let Err(error) = result {
            tracing::warn!(conv = %conv, %error, messages = batch.len(), "append failed");
            metrics::counter!("switchboard_sends_refused_total", "reason" => "unavailable")
                .increment(batch.len() as u64);
            for pending in batch {
                let _ = pending.reply.send(Err(SendError::Unavailable));
            }
            let _ = myself.cast(ConvMsg::Written(WriteOutcome { durable_seq: None, acks: Vec::new(), keys }));
            return;
        }
        let durable_seq = batch.last().map(|pending| pending.message.seq);
        let members = recipients(&conv);
        let mut acks = Vec::with_capacity(keys.len());
        for Pending { message, conn_id, reply } in batch {
            let accepted = Accepted { seq: message.seq, mid: message.mid.clone(), ts: message.ts, dup: false };
            let _ = reply.send(Ok(accepted.clone()));
            metrics::counter!("switchboard_acks_total").increment(1);
            match Utf8Bytes::try_from(message.frame) {
                Ok(frame) => {
                    for member in &members {
                        node.sessions.deliver_message(member, &conv, message.seq, &frame, conn_id);
                    }
                }
                Err(error) => tracing::error!(conv = %conv, %error, "encoded frame is not UTF-8"),
            }
            if let Some(cmid) = message.cmid {
                acks.push(((message.from, cmid), accepted));
            }
        }
        // If the actor is gone (hibernating, crashed) its successor reloads from the
        // store; the acks and fanout above have happened either way.
        let _ = myself.cast(ConvMsg::Written(WriteOutcome { durable_seq, acks, keys }));
    }
}

/// The users a conversation's messages go to.
fn recipients(conv: &ConvId) -> Vec<UserId> {
    match conv.dm_members() {
        Some((a, b)) if a == b => vec![a],
        Some((a, b)) => vec![a, b],
        None => Vec::new(),
    }
}
