//! The user actor: one per active user, owning that user's device connections, delivery
//! cursors and presence.
//!
//! It serializes what must not race for one user: attaching a device (a newer
//! connection of the same device replaces the older one, which is closed with 4002),
//! detaching it, presence transitions, and receipts (a device's cursor and the user's
//! delivered/read marks only move forward, and a mark that moved is relayed to the user's
//! other devices and to the other members: the dm peer, the members of a small group;
//! larger groups get aggregated receipts from the group's sequencer).
//!
//! Presence (see [`crate::presence`]): the first device to attach makes the user online;
//! when the last one detaches, `last_seen` is stored and the user is reported offline
//! only if no device came back within `presence.offline_debounce_ms`.
//!
//! It hibernates: with no work for `actors.user_idle_ms` (and no offline report pending)
//! it stops, and an idle online user costs only its registry entry and its connections.
//! Its state is the session registry and the store, so a restarted or re-woken actor
//! needs nothing handed over.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use switchboard_proto::client::ReceiptKind;
use switchboard_proto::close::CloseCode;
use switchboard_proto::ids::{ConvId, ConvKind, DeviceId, UserId};
use switchboard_proto::server::{PresenceStatus, ReceiptEvent};
use tokio::sync::oneshot;

use super::conversation::ConvMsg;
use crate::cluster::Kind;
use crate::node::{Node, now_ms};
use crate::sessions::DeviceSession;
use crate::store::MarkKind;

#[derive(Debug)]
pub enum UserMsg {
    /// A device connected; replies once it is registered.
    Attach { session: DeviceSession, reply: oneshot::Sender<()> },
    /// A device connection ended.
    Detach { device: DeviceId, conn_id: u64 },
    /// A cumulative receipt from one device.
    Receipt { device: DeviceId, conn_id: u64, conv: ConvId, seq: u64, kind: ReceiptKind },
    /// The offline debounce of departure number `.0` has passed.
    OfflineCheck(u64),
    /// Periodic: hibernate when idle.
    Tick,
}

#[derive(Debug)]
pub struct UserActor;

/// The last device left at `at` (ms); the offline report waits for the debounce.
#[derive(Debug, Clone, Copy)]
struct Departure {
    number: u64,
    at: u64,
}

#[derive(Debug)]
pub struct UserState {
    node: Arc<Node>,
    user: UserId,
    /// What the directory counts as queued for this actor.
    mailbox: super::Mailbox,
    last_work: Instant,
    departures: u64,
    pending_offline: Option<Departure>,
    /// Dropped with the state, which stops the clock.
    _ticker: super::Ticker,
    _live: super::LiveActor,
}

impl Actor for UserActor {
    type Msg = UserMsg;
    type State = UserState;
    type Arguments = (Arc<Node>, UserId, super::Mailbox);

    async fn pre_start(
        &self,
        myself: ActorRef<UserMsg>,
        (node, user, mailbox): Self::Arguments,
    ) -> Result<UserState, ActorProcessingErr> {
        mailbox.reset();
        let idle = Duration::from_millis(node.config.actors.user_idle_ms);
        let ticker = super::hibernation_ticker(&myself, idle, || UserMsg::Tick);
        let live = super::LiveActor::new(node.clone(), super::ActorKind::User);
        Ok(UserState {
            node,
            user,
            mailbox,
            last_work: Instant::now(),
            departures: 0,
            pending_offline: None,
            _ticker: ticker,
            _live: live,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<UserMsg>,
        message: UserMsg,
        state: &mut UserState,
    ) -> Result<(), ActorProcessingErr> {
        if matches!(message, UserMsg::Attach { .. } | UserMsg::Detach { .. } | UserMsg::Receipt { .. }) {
            state.mailbox.handled();
        }
        match message {
            UserMsg::Attach { session, reply } => state.on_attach(session, reply).await,
            UserMsg::Detach { device, conn_id } => state.on_detach(&myself, &device, conn_id).await,
            UserMsg::Receipt { device, conn_id, conv, seq, kind } => {
                // Boxed: a receipt's state (store writes) is the largest of these, and
                // ractor keeps this future inline in every live actor's allocation.
                Box::pin(state.on_receipt(&device, conn_id, &conv, seq, kind)).await;
            }
            UserMsg::OfflineCheck(number) => state.on_offline_check(number).await,
            UserMsg::Tick => state.on_tick(&myself),
        }
        Ok(())
    }

    async fn post_stop(&self, myself: ActorRef<UserMsg>, state: &mut UserState) -> Result<(), ActorProcessingErr> {
        if let Some(name) = myself.get_name() {
            state.node.directory.forget_mailbox(&name);
        }
        Ok(())
    }
}

impl UserState {
    async fn on_attach(&mut self, session: DeviceSession, reply: oneshot::Sender<()>) {
        self.last_work = Instant::now();
        let attached = self.node.sessions.attach(&self.user, session);
        if let Some(replaced) = attached.replaced {
            tracing::info!(user.id = %self.user, device.id = %replaced.device, "device reconnected, closing the older connection");
            replaced.outbox.close(CloseCode::Replaced);
        }
        let _ = reply.send(());
        // Back within the debounce: the watchers never heard of the departure.
        if attached.came_online && self.pending_offline.take().is_none() {
            self.announce(PresenceStatus::Online, now_ms()).await;
        }
    }

    async fn on_detach(&mut self, myself: &ActorRef<UserMsg>, device: &DeviceId, conn_id: u64) {
        self.last_work = Instant::now();
        let detached = self.node.sessions.detach(&self.user, device, conn_id);
        if !detached.went_offline {
            return;
        }
        let at = last_device_left(&self.node, &self.user).await;
        self.departures += 1;
        let departure = Departure { number: self.departures, at };
        // A departure already pending keeps its report; this one replaces it.
        self.pending_offline = Some(departure);
        let debounce = Duration::from_millis(self.node.config.presence.offline_debounce_ms);
        let number = departure.number;
        myself.send_after(debounce, move || UserMsg::OfflineCheck(number));
    }

    async fn on_offline_check(&mut self, number: u64) {
        let Some(departure) = self.pending_offline.filter(|departure| departure.number == number) else {
            return;
        };
        self.pending_offline = None;
        self.last_work = Instant::now();
        if !self.node.sessions.is_online(&self.user) {
            self.announce(PresenceStatus::Offline, departure.at).await;
        }
    }

    async fn announce(&self, status: PresenceStatus, last_seen: u64) {
        announce(&self.node, &self.user, status, last_seen).await;
    }

    async fn on_receipt(&mut self, device: &DeviceId, conn_id: u64, conv: &ConvId, seq: u64, kind: ReceiptKind) {
        self.last_work = Instant::now();
        let store = &self.node.store;
        // A receipt cannot acknowledge what does not exist yet: clamp to the last seq.
        // One this node delivered needs no read (the usual case: a device receipts what
        // it was just sent; reading a group's record per receipt costs O(members)).
        let last_seq = match self.node.known_head(conv) {
            Some(head) if head >= seq => head,
            _ => match store.load_conv(conv).await {
                Ok(meta) => {
                    let head = meta.map_or(0, |meta| meta.last_seq);
                    self.node.note_head(conv, head);
                    head
                }
                Err(error) => {
                    tracing::warn!(user.id = %self.user, %conv, %error, "receipt dropped: store unavailable");
                    return;
                }
            },
        };
        let seq = seq.min(last_seq);
        if seq == 0 {
            return;
        }
        let mark = match kind {
            ReceiptKind::Delivered => MarkKind::Delivered,
            ReceiptKind::Read => MarkKind::Read,
        };
        // A feed's readers are its subscribers: only their cursors matter.
        let marked = (conv.kind() != ConvKind::Feed).then_some(mark);
        match store.advance_receipt(&self.user, device, conv, seq, marked).await {
            Ok((_, true)) => self.relay(conv, conn_id, seq, kind, mark).await,
            Ok((_, false)) => {}
            Err(error) => tracing::warn!(user.id = %self.user, %conv, %error, "receipt not recorded"),
        }
    }

    /// Tells this user's other devices, and the other members, that a mark moved.
    async fn relay(&self, conv: &ConvId, conn_id: u64, seq: u64, kind: ReceiptKind, mark: MarkKind) {
        let event = ReceiptEvent { conv: conv.clone(), user: self.user.clone(), kind, seq, ts: now_ms(), all: false };
        let frame = crate::gateway::connection::frame(&event);
        let node = &self.node;
        node.deliver(std::slice::from_ref(&self.user), Kind::Frame, &frame, Some(conn_id)).await;
        match conv.kind() {
            ConvKind::Dm => {
                if let Some(peer) = conv.dm_peer(&self.user)
                    && peer != self.user
                {
                    node.deliver(&[peer], Kind::Frame, &frame, None).await;
                }
            }
            ConvKind::Group => {
                let group = match self.node.groups.get(self.node.store.as_ref(), conv).await {
                    Ok(Some(group)) => group,
                    Ok(None) => return,
                    Err(error) => {
                        tracing::debug!(%conv, %error, "group members unavailable; receipt not relayed");
                        return;
                    }
                };
                if group.members.len() <= self.node.config.groups.receipt_relay_max_members {
                    let others: Vec<UserId> =
                        group.members.iter().filter(|member| **member != self.user).cloned().collect();
                    node.deliver(&others, Kind::Frame, &frame, None).await;
                }
                let message = ConvMsg::Mark { user: self.user.clone(), kind: mark, seq };
                if let Err(error) = self.node.to_conv(conv, message).await {
                    tracing::debug!(%conv, %error, "group receipt not aggregated");
                }
            }
            ConvKind::Feed => {}
        }
        metrics::counter!("switchboard_receipts_relayed_total").increment(1);
    }

    fn on_tick(&mut self, myself: &ActorRef<UserMsg>) {
        let idle = Duration::from_millis(self.node.config.actors.user_idle_ms);
        if self.pending_offline.is_some() || self.last_work.elapsed() < idle {
            return;
        }
        tracing::debug!(user.id = %self.user, "user actor hibernates");
        let _ = myself.drain();
    }
}

async fn announce(node: &Node, user: &UserId, status: PresenceStatus, last_seen: u64) {
    if !node.presence_changed(user, status, last_seen).await {
        return;
    }
    metrics::counter!("switchboard_presence_changes_total", "status" => match status {
        PresenceStatus::Online => "online",
        PresenceStatus::Offline => "offline",
    })
    .increment(1);
}

/// A connection whose user actor could not be reached detached its session itself and
/// was the user's last device: what [`UserState`]'s detach would have done, without the
/// debounce (there is no actor to hold it), so the user is neither a ghost in presence
/// nor left in the feed index.
pub(crate) async fn went_offline_without_actor(node: &Node, user: &UserId) {
    let at = last_device_left(node, user).await;
    announce(node, user, PresenceStatus::Offline, at).await;
}

/// The user's last device on this node left: out of the feed index, `last_seen` stored
/// (a bounded wait). Returns the time it left.
async fn last_device_left(node: &Node, user: &UserId) -> u64 {
    node.feeds.remove_user(user);
    let at = now_ms();
    match tokio::time::timeout(node.config.gateway.request_timeout(), node.store.set_last_seen(user, at)).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(user.id = %user, %error, "last_seen not stored"),
        Err(_) => tracing::warn!(user.id = %user, "last_seen not stored in time"),
    }
    at
}
