//! One batch on its way to the store, then to the senders and the recipients.
//!
//! The task outlives nothing it needs from the actor: once the batch is durable it acks
//! each sender, pushes each frame (encoded once) to every recipient device on this node,
//! answers membership changes, and only then reports back to the actor, which may have
//! stopped meanwhile (its successor reloads from the store).

use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::ActorRef;
use switchboard_proto::ids::{ConvId, UserId};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::{Accepted, ConvMsg, DedupKey, Pending, PendingReply, Recipients, SendError};
use crate::cluster::Kind;
use crate::node::Node;
use crate::store::{AppendBatch, GroupMeta};

/// How long a store append may take before its batch fails with `unavailable`.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// What a write task reports back.
#[derive(Debug)]
pub struct WriteOutcome {
    /// The last seq of the batch when it is durable; `None` when it failed.
    pub(super) durable_seq: Option<u64>,
    /// The acks of the sends that carried a `cmid`.
    pub(super) acks: Vec<(DedupKey, Accepted)>,
    pub(super) keys: Vec<DedupKey>,
}

pub(super) struct WriteTask {
    pub(super) node: Arc<Node>,
    pub(super) conv: ConvId,
    pub(super) epoch: u64,
    pub(super) index_users: Vec<UserId>,
    pub(super) batch: Vec<Pending>,
    pub(super) myself: ActorRef<ConvMsg>,
}

impl WriteTask {
    pub(super) async fn run(self) {
        let WriteTask { node, conv, epoch, mut index_users, batch, myself } = self;
        let keys: Vec<DedupKey> = batch
            .iter()
            .filter_map(|pending| {
                pending.message.cmid.as_ref().map(|cmid| (pending.message.from.clone(), cmid.clone()))
            })
            .collect();
        let mut unindex_users = Vec::new();
        let mut group = None;
        // A membership change travels alone in its batch (see `start_write`).
        if let Some(PendingReply::Group(change)) = batch.first().map(|pending| &pending.reply) {
            index_users.extend(change.added.iter().cloned());
            unindex_users.extend(change.removed.iter().cloned());
            group = Some(GroupMeta { name: change.info.name.clone(), members: change.info.members.to_vec() });
        }
        let append = AppendBatch {
            conv: conv.clone(),
            messages: batch.iter().map(|pending| pending.message.clone()).collect(),
            epoch,
            index_users,
            unindex_users,
            group,
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
                pending.reply.fail(SendError::Unavailable);
            }
            let _ = myself.cast(ConvMsg::Written(WriteOutcome { durable_seq: None, acks: Vec::new(), keys }));
            return;
        }
        let durable_seq = batch.last().map(|pending| pending.message.seq);
        let mut acks = Vec::with_capacity(keys.len());
        for Pending { message, conn_id, recipients, reply } in batch {
            let accepted = Accepted { seq: message.seq, mid: message.mid.clone(), ts: message.ts, dup: false };
            // A new member list is visible to readers before anyone hears of the change.
            if let PendingReply::Group(change) = &reply {
                node.groups.put(conv.clone(), change.info.clone());
                if let Some(cluster) = &node.cluster {
                    cluster.group_changed(&conv, &change.info).await;
                }
            }
            match Utf8Bytes::try_from(message.frame) {
                Ok(frame) => fan_out(&node, &conv, message.seq, &frame, conn_id, &recipients).await,
                Err(error) => tracing::error!(conv = %conv, %error, "encoded frame is not UTF-8"),
            }
            match reply {
                PendingReply::Send(reply) => {
                    let _ = reply.send(Ok(accepted.clone()));
                    metrics::counter!("switchboard_acks_total").increment(1);
                }
                PendingReply::Group(change) => {
                    let _ = change.reply.send(Ok(change.info));
                }
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

/// Pushes one durable `msg` frame to every recipient device, on this node and through
/// the cluster on the others, except the sending connection (which gets the ack).
async fn fan_out(
    node: &Node,
    conv: &ConvId,
    seq: u64,
    frame: &Utf8Bytes,
    except: Option<u64>,
    recipients: &Recipients,
) {
    let queued = match recipients {
        Recipients::Users(users) => node.deliver(users, Kind::Msg { conv, seq }, frame, except).await,
        Recipients::Feed => {
            node.note_head(conv, seq);
            let sessions = &node.sessions;
            let mut queued = 0;
            node.feeds.for_each_subscriber(conv, |user| {
                queued += sessions.deliver_message(user, conv, seq, frame, except);
            });
            if let Some(cluster) = &node.cluster {
                cluster.deliver_feed(conv, seq, frame, except).await;
            }
            queued
        }
    };
    metrics::counter!("switchboard_deliveries_total").increment(queued as u64);
}
