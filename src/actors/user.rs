//! The user actor: one per active user, owning that user's device connections and
//! delivery cursors.
//!
//! It serializes what must not race for one user: attaching a device (a newer
//! connection of the same device replaces the older one, which is closed with 4002),
//! detaching it, and receipts (a device's cursor and the user's delivered/read marks only
//! move forward, and a mark that moved is relayed to the other members and to the user's
//! other devices).
//!
//! It hibernates: with no work for `actors.user_idle_ms` it stops, and an idle online user
//! costs only its registry entry and its connections. Its state is the session registry
//! and the store, so a restarted or re-woken actor needs nothing handed over.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use switchboard_proto::client::ReceiptKind;
use switchboard_proto::close::CloseCode;
use switchboard_proto::ids::{ConvId, DeviceId, UserId};
use switchboard_proto::server::ReceiptEvent;
use tokio::sync::oneshot;

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
    /// Periodic: hibernate when idle.
    Tick,
}

#[derive(Debug)]
pub struct UserActor;

#[derive(Debug)]
pub struct UserState {
    node: Arc<Node>,
    user: UserId,
    last_work: Instant,
    /// Dropped with the state, which stops the clock.
    _ticker: super::Ticker,
    _live: super::LiveActor,
}

impl Actor for UserActor {
    type Msg = UserMsg;
    type State = UserState;
    type Arguments = (Arc<Node>, UserId);

    async fn pre_start(
        &self,
        myself: ActorRef<UserMsg>,
        (node, user): Self::Arguments,
    ) -> Result<UserState, ActorProcessingErr> {
        let idle = Duration::from_millis(node.config.actors.user_idle_ms);
        let ticker = super::hibernation_ticker(&myself, idle, || UserMsg::Tick);
        let live = super::LiveActor::new(node.clone(), super::ActorKind::User);
        Ok(UserState { node, user, last_work: Instant::now(), _ticker: ticker, _live: live })
    }

    async fn handle(
        &self,
        myself: ActorRef<UserMsg>,
        message: UserMsg,
        state: &mut UserState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            UserMsg::Attach { session, reply } => state.on_attach(session, reply),
            UserMsg::Detach { device, conn_id } => state.on_detach(&device, conn_id),
            UserMsg::Receipt { device, conn_id, conv, seq, kind } => {
                state.on_receipt(&device, conn_id, &conv, seq, kind).await;
            }
            UserMsg::Tick => state.on_tick(&myself),
        }
        Ok(())
    }
}

impl UserState {
    fn on_attach(&mut self, session: DeviceSession, reply: oneshot::Sender<()>) {
        self.last_work = Instant::now();
        if let Some(replaced) = self.node.sessions.attach(&self.user, session) {
            tracing::info!(user.id = %self.user, device.id = %replaced.device, "device reconnected, closing the older connection");
            replaced.outbox.close(CloseCode::Replaced);
        }
        let _ = reply.send(());
    }

    fn on_detach(&mut self, device: &DeviceId, conn_id: u64) {
        self.last_work = Instant::now();
        self.node.sessions.detach(&self.user, device, conn_id);
    }

    async fn on_receipt(&mut self, device: &DeviceId, conn_id: u64, conv: &ConvId, seq: u64, kind: ReceiptKind) {
        self.last_work = Instant::now();
        let store = &self.node.store;
        // A receipt cannot acknowledge what does not exist yet: clamp to the last seq.
        let last_seq = match store.load_conv(conv).await {
            Ok(meta) => meta.map_or(0, |meta| meta.last_seq),
            Err(error) => {
                tracing::warn!(user.id = %self.user, %conv, %error, "receipt dropped: store unavailable");
                return;
            }
        };
        let seq = seq.min(last_seq);
        if seq == 0 {
            return;
        }
        if let Err(error) = store.advance_cursor(&self.user, device, conv, seq).await {
            tracing::warn!(user.id = %self.user, %conv, %error, "cursor not advanced");
            return;
        }
        let mark = match kind {
            ReceiptKind::Delivered => MarkKind::Delivered,
            ReceiptKind::Read => MarkKind::Read,
        };
        match store.advance_mark(conv, &self.user, mark, seq).await {
            Ok(true) => self.relay(conv, conn_id, seq, kind),
            Ok(false) => {}
            Err(error) => tracing::warn!(user.id = %self.user, %conv, %error, "receipt mark not advanced"),
        }
    }

    /// Tells the other members, and this user's other devices, that a mark moved.
    fn relay(&self, conv: &ConvId, conn_id: u64, seq: u64, kind: ReceiptKind) {
        let event = ReceiptEvent { conv: conv.clone(), user: self.user.clone(), kind, seq, ts: now_ms() };
        let frame = crate::gateway::connection::frame(&event);
        let sessions = &self.node.sessions;
        sessions.deliver(&self.user, &frame, Some(conn_id));
        if let Some(peer) = conv.dm_peer(&self.user)
            && peer != self.user
        {
            sessions.deliver(&peer, &frame, None);
        }
        metrics::counter!("switchboard_receipts_relayed_total").increment(1);
    }

    fn on_tick(&mut self, myself: &ActorRef<UserMsg>) {
        let idle = Duration::from_millis(self.node.config.actors.user_idle_ms);
        if self.last_work.elapsed() < idle {
            return;
        }
        tracing::debug!(user.id = %self.user, "user actor hibernates");
        let _ = myself.drain();
    }
}
