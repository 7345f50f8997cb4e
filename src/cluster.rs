//! This node among its peers: routing, ownership and presence over the bus.
//!
//! A single node has no [`Cluster`] (`Node::cluster` is `None`) and everything is local.
//! With `--nats`, every node runs the same [`Cluster`] over the NATS bus:
//!
//! - **Membership** ([`switchboard_cluster::membership`]): heartbeats every
//!   `cluster.heartbeat_interval_ms`; a peer silent for `down_after_ms` is down, a
//!   leaving node says so. The live set changes only while our own bus is connected.
//! - **Ownership**: a conversation is sequenced by the live node with the highest
//!   rendezvous score for its id. Other nodes forward `send`, group changes and group
//!   receipt marks to the owner by request/reply ([`wire::Rpc`]); a request that finds
//!   no owner (the bus is away, the owner just died, views disagree for a moment) is
//!   answered `unavailable` and the client retries with the same `cmid`. The owner's
//!   sequencer claims the conversation in the store before writing
//!   ([`crate::store::MessageStore::claim`]): an epoch above the former owner's, which
//!   refuses the former owner's appends from then on; a claim taken from another node
//!   waits `handover_wait_ms` first, so the former owner's writes in flight are done.
//! - **Routing**: once a message is durable the owner pushes it to the devices
//!   connected to it, and publishes it once to every other node where a recipient is
//!   online ([`wire::Delivery`]), with the frame encoded once. Feed messages go once to
//!   every other live node, which pushes them to its own subscribers. Receipts and
//!   typing take the same path.
//! - **Presence** ([`switchboard_cluster::roster`]): each node publishes which users
//!   came online or went offline on it; a user is online while online on any node. A
//!   node that goes down takes its users with it (no ghosts), and the live node that
//!   owns a user's key stores their `last_seen`.
//! - **Bus outage**: local delivery continues, forwards fail fast with `unavailable`,
//!   nobody is declared down. When the bus is back, rosters are fetched again, caches
//!   fed by cluster events are dropped, and every connected device resyncs (replays
//!   from its cursors what it missed from other nodes), spread over
//!   `resync_spread_ms`. Nodes come back at different moments (each client's reconnect
//!   backoff has its own jitter): a node that could not publish deliveries meanwhile
//!   asks their nodes to resync once it is back, since their devices may have resynced
//!   before it was.
//!
//! The bus is best-effort. A delivery it loses reaches the device on its next resume; a
//! forward it loses times out and is retried by the client; nothing acknowledged
//! depends on it.

mod control;
pub mod wire;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use serde_json::value::RawValue;
use switchboard_cluster::membership::Membership;
use switchboard_cluster::roster::{LocalRoster, Roster};
use switchboard_cluster::{Bus, BusError, subjects};
use switchboard_proto::ids::{ConvId, UserId};
use switchboard_proto::server::PresenceStatus;
use tokio::sync::{Semaphore, watch};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use self::wire::{ClusterEvent, Deliver, Delivery, GroupAnswer, Rpc, SendAnswer};
use crate::actors::DirectoryError;
use crate::actors::conversation::{Accepted, ConvMsg, SendError};
use crate::config::ClusterConfig;
use crate::groups::GroupInfo;

pub use self::control::run;

/// How a frame is delivered on the node that receives it.
#[derive(Debug, Clone, Copy)]
pub enum Kind<'a> {
    /// A `msg` of `conv` (held and deduplicated around resumes by the outbox).
    Msg { conv: &'a ConvId, seq: u64 },
    /// A reliable non-message frame (a receipt).
    Frame,
    /// An ephemeral frame (typing), shed first.
    Ephemeral,
}

/// The live set at one moment.
#[derive(Debug)]
struct View {
    version: u64,
    live: Arc<[String]>,
}

/// This node's part of the cluster. Shared as `Arc<Cluster>` by the node and its
/// control task ([`run`]).
#[derive(Debug)]
pub struct Cluster {
    me: String,
    /// `me#incarnation`: who claims conversations in the store.
    owner_tag: String,
    incarnation: u64,
    bus: Arc<dyn Bus>,
    config: ClusterConfig,
    membership: Mutex<Membership>,
    view: RwLock<View>,
    roster: RwLock<Roster>,
    /// Serializes this node's roster changes with their publication, so peers receive
    /// the diffs in version order.
    local: tokio::sync::Mutex<LocalRoster>,
    /// A lock-free copy of who is in `local`, for presence queries.
    local_users: RwLock<HashSet<UserId>>,
    /// Nodes whose roster is being fetched.
    fetching: Mutex<HashSet<String>>,
    forwards: Arc<Semaphore>,
    /// Bumped when connected devices must resync (the bus came back).
    resync: watch::Sender<u64>,
    /// Nodes a delivery could not be published to; asked to resync once the bus works
    /// again ([`wire::ClusterEvent::Resync`]).
    missed: Mutex<BTreeSet<String>>,
    connected: AtomicBool,
}

impl Cluster {
    pub fn new(me: String, incarnation: u64, bus: Arc<dyn Bus>, config: ClusterConfig) -> Arc<Self> {
        let membership = Membership::new(me.clone(), config.membership());
        let view = View { version: membership.version(), live: membership.live().clone() };
        Arc::new(Self {
            owner_tag: format!("{me}#{incarnation}"),
            local: tokio::sync::Mutex::new(LocalRoster::new(me.clone(), incarnation)),
            me,
            incarnation,
            connected: AtomicBool::new(bus.is_connected()),
            bus,
            forwards: Arc::new(Semaphore::new(config.max_inflight_forwards)),
            config,
            membership: Mutex::new(membership),
            view: RwLock::new(view),
            roster: RwLock::new(Roster::new()),
            local_users: RwLock::new(HashSet::new()),
            fetching: Mutex::new(HashSet::new()),
            resync: watch::Sender::new(0),
            missed: Mutex::new(BTreeSet::new()),
        })
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    /// Who claims conversations in the store: this node id and its incarnation.
    pub fn owner_tag(&self) -> &str {
        &self.owner_tag
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// The owner of `conv` if it is another node; `None` if this node owns it.
    pub fn remote_owner(&self, conv: &ConvId) -> Option<String> {
        let view = self.view.read().unwrap_or_else(PoisonError::into_inner);
        let owner = switchboard_cluster::membership::rendezvous_owner(&view.live, conv.as_str())?;
        (owner != self.me).then(|| owner.to_owned())
    }

    /// Changes whenever the live set does (sequencers recheck their ownership).
    pub fn view_version(&self) -> u64 {
        self.view.read().unwrap_or_else(PoisonError::into_inner).version
    }

    /// The live nodes, this one included.
    pub fn live_nodes(&self) -> Arc<[String]> {
        self.view.read().unwrap_or_else(PoisonError::into_inner).live.clone()
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Online on another node.
    pub fn online_elsewhere(&self, user: &UserId) -> bool {
        self.roster.read().unwrap_or_else(PoisonError::into_inner).is_online(user)
    }

    /// Users online on other nodes.
    pub fn remote_user_count(&self) -> usize {
        self.roster.read().unwrap_or_else(PoisonError::into_inner).user_count()
    }

    /// Announced online on this node (and not yet offline).
    pub fn online_here(&self, user: &UserId) -> bool {
        self.local_users.read().unwrap_or_else(PoisonError::into_inner).contains(user)
    }

    /// Changes when connected devices must resync.
    pub fn resync_watch(&self) -> watch::Receiver<u64> {
        self.resync.subscribe()
    }

    /// Every connected device of this node resyncs (each at a random moment within
    /// `resync_spread_ms`; requests meanwhile are coalesced).
    fn request_resync(&self) {
        self.resync.send_modify(|generation| *generation += 1);
    }

    /// Asks the nodes that deliveries could not reach to resync their devices, once the
    /// bus works (called when it comes back and on every heartbeat). Nodes not asked
    /// because the request failed are asked again next time.
    async fn ask_missed_to_resync(&self) {
        if !self.is_connected() {
            return;
        }
        let nodes: Vec<String> =
            std::mem::take(&mut *self.missed.lock().unwrap_or_else(PoisonError::into_inner)).into_iter().collect();
        if nodes.is_empty() {
            return;
        }
        let event = ClusterEvent::Resync { nodes: nodes.clone() };
        if self.publish(subjects::cluster_events(), &event).await {
            tracing::info!(?nodes, "asked the nodes that missed deliveries to resync");
        } else {
            self.missed.lock().unwrap_or_else(PoisonError::into_inner).extend(nodes);
        }
    }

    /// Pushes `frame` to the devices of `users` connected to other nodes: one publish
    /// per node that has any of them.
    pub async fn deliver(&self, users: &[UserId], kind: Kind<'_>, frame: &Utf8Bytes, except: Option<u64>) {
        let by_node = {
            let roster = self.roster.read().unwrap_or_else(PoisonError::into_inner);
            let mut by_node: HashMap<String, Vec<UserId>> = HashMap::new();
            for user in users {
                for node in roster.nodes_of(user) {
                    by_node.entry(node.to_owned()).or_default().push(user.clone());
                }
            }
            by_node
        };
        if by_node.is_empty() {
            return;
        }
        let Some(frame) = raw(frame) else { return };
        for (node, users) in by_node {
            let what = match kind {
                Kind::Msg { conv, seq } => Deliver::Msg { conv: conv.clone(), seq, users },
                Kind::Frame => Deliver::Frame { users },
                Kind::Ephemeral => Deliver::Ephemeral { users },
            };
            self.push_to(&node, what, frame, except).await;
        }
    }

    /// Pushes a feed message to every other live node, for its own subscribers.
    pub async fn deliver_feed(&self, conv: &ConvId, seq: u64, frame: &Utf8Bytes, except: Option<u64>) {
        let live = self.live_nodes();
        // The live set always holds this node.
        if live.len() < 2 {
            return;
        }
        let Some(frame) = raw(frame) else { return };
        for node in live.iter() {
            if *node != self.me {
                self.push_to(node, Deliver::Feed { conv: conv.clone(), seq }, frame, except).await;
            }
        }
    }

    async fn push_to(&self, node: &str, what: Deliver, frame: &RawValue, except: Option<u64>) {
        let delivery = Delivery { what, except, frame };
        let outcome = match serde_json::to_vec(&delivery) {
            Ok(payload) => self.bus.publish(&subjects::node_inbox(node), Bytes::from(payload)).await,
            Err(error) => {
                tracing::error!(%error, "delivery not encoded");
                return;
            }
        };
        match outcome {
            Ok(()) => metrics::counter!("switchboard_cluster_deliveries_total", "outcome" => "published").increment(1),
            Err(error) => {
                // The devices there catch up by a resync, asked for once the bus is
                // back, or on their next resume.
                metrics::counter!("switchboard_cluster_deliveries_total", "outcome" => "failed").increment(1);
                tracing::debug!(%node, %error, "delivery to a node not published");
                self.missed.lock().unwrap_or_else(PoisonError::into_inner).insert(node.to_owned());
            }
        }
    }

    /// Hands `message` to `conv`'s owner, `owner`. The caller's reply channel inside
    /// the message is answered when the owner answers (or with `unavailable`).
    pub fn forward(self: &Arc<Self>, owner: &str, conv: &ConvId, message: ConvMsg) -> Result<(), DirectoryError> {
        if !self.is_connected() {
            return Err(DirectoryError::Unreachable("the cluster bus is disconnected".to_owned()));
        }
        let subject = subjects::node_rpc(owner);
        let timeout = self.config.forward_timeout() + Duration::from_millis(500);
        let cluster = self.clone();
        match message {
            ConvMsg::Send(request) => {
                let rpc = Rpc::Send {
                    conv: conv.clone(),
                    from: request.from,
                    dev: request.dev,
                    conn_id: request.conn_id,
                    cmid: request.cmid,
                    body: request.body,
                    system: request.system,
                    admin: request.admin,
                };
                let reply = request.reply;
                tokio::spawn(async move {
                    let answer = match cluster.request(&subject, &rpc, timeout).await {
                        Ok(SendAnswer::Accepted { seq, mid, ts, dup }) => Ok(Accepted { seq, mid, ts, dup }),
                        Ok(SendAnswer::Refused(error)) => Err(error),
                        Err(()) => Err(SendError::Unavailable),
                    };
                    let _ = reply.send(answer);
                });
            }
            ConvMsg::Group(request) => {
                let rpc = Rpc::Group { conv: conv.clone(), by: request.by, dev: request.dev, change: request.change };
                let reply = request.reply;
                tokio::spawn(async move {
                    let answer = match cluster.request(&subject, &rpc, timeout).await {
                        Ok(GroupAnswer::Changed { name, members }) => Ok(Arc::new(GroupInfo::new(name, members))),
                        Ok(GroupAnswer::Refused(error)) => Err(error),
                        Err(()) => Err(SendError::Unavailable),
                    };
                    let _ = reply.send(answer);
                });
            }
            ConvMsg::Mark { user, kind, seq } => {
                let rpc = Rpc::Mark { conv: conv.clone(), user, kind, seq };
                tokio::spawn(async move {
                    cluster.publish(&subject, &rpc).await;
                });
            }
            ConvMsg::Written(_) | ConvMsg::Tick | ConvMsg::Crash => {
                return Err(DirectoryError::Unreachable("not a message for another node".to_owned()));
            }
        }
        Ok(())
    }

    /// A request and its decoded answer; `Err` (logged) when there is none.
    async fn request<A: serde::de::DeserializeOwned>(
        &self,
        subject: &str,
        rpc: &Rpc,
        timeout: Duration,
    ) -> Result<A, ()> {
        let payload = serde_json::to_vec(rpc).map_err(|error| tracing::error!(%error, "request not encoded"))?;
        let answer = self.bus.request(subject, Bytes::from(payload), timeout).await.map_err(|error| {
            metrics::counter!("switchboard_cluster_forwards_failed_total", "reason" => bus_error_reason(&error))
                .increment(1);
            tracing::debug!(subject, %error, "forwarded request failed");
        })?;
        serde_json::from_slice(&answer).map_err(|error| tracing::warn!(subject, %error, "forwarded answer not decoded"))
    }

    /// Publishes `message` on `subject`; returns whether it went out (failures are
    /// logged: most callers have nothing else to do about them).
    async fn publish(&self, subject: &str, message: &impl serde::Serialize) -> bool {
        match serde_json::to_vec(message) {
            Ok(payload) => match self.bus.publish(subject, Bytes::from(payload)).await {
                Ok(()) => true,
                Err(error) => {
                    tracing::debug!(subject, %error, "not published");
                    false
                }
            },
            Err(error) => {
                tracing::error!(subject, %error, "not encoded");
                false
            }
        }
    }

    /// The user's presence on this node changed (decided by the user actor, offline
    /// after its debounce). Returns whether this is a change for the whole cluster,
    /// which this node's watchers should hear of.
    pub async fn presence_changed(&self, user: &UserId, status: PresenceStatus, at: u64) -> bool {
        let mut local = self.local.lock().await;
        let diff = match status {
            PresenceStatus::Online => local.online(user),
            PresenceStatus::Offline => local.offline(user, at),
        };
        {
            let mut users = self.local_users.write().unwrap_or_else(PoisonError::into_inner);
            match status {
                PresenceStatus::Online => users.insert(user.clone()),
                PresenceStatus::Offline => users.remove(user),
            };
        }
        if let Some(diff) = &diff {
            self.publish(subjects::presence_events(), diff).await;
        }
        drop(local);
        diff.is_some() && !self.online_elsewhere(user)
    }

    /// A group's members changed (on its owner, once durable): every node's cache.
    pub async fn group_changed(&self, conv: &ConvId, info: &GroupInfo) {
        let event = ClusterEvent::Group { conv: conv.clone(), name: info.name.clone(), members: info.members.to_vec() };
        self.publish(subjects::cluster_events(), &event).await;
    }

    /// A user's tokens were revoked (durable): every node closes and refuses them.
    pub async fn revoked(&self, user: &UserId, before: u64) {
        self.publish(subjects::cluster_events(), &ClusterEvent::Revoked { user: user.clone(), before }).await;
    }

    /// Asks every other live node to close `user`'s connections; how many they closed.
    pub async fn disconnect_elsewhere(&self, user: &UserId) -> usize {
        let nodes = self.live_nodes();
        let requests = nodes.iter().filter(|node| **node != self.me).map(|node| {
            let subject = subjects::node_rpc(node);
            async move {
                let rpc = Rpc::Disconnect { user: user.clone() };
                self.request::<wire::Closed>(&subject, &rpc, self.config.forward_timeout())
                    .await
                    .map_or(0, |c| c.closed)
            }
        });
        futures_util::future::join_all(requests).await.into_iter().sum()
    }

    /// Says goodbye, so peers move this node's conversations and users at once.
    pub async fn leave(&self) {
        let leave = switchboard_cluster::membership::Leave { node: self.me.clone(), incarnation: self.incarnation };
        self.publish(subjects::cluster_leave(), &leave).await;
        if let Err(error) = self.bus.flush().await {
            tracing::debug!(%error, "leave not flushed");
        }
    }
}

/// An encoded frame as raw JSON, checked once for all the nodes it goes to.
fn raw(frame: &Utf8Bytes) -> Option<&RawValue> {
    match serde_json::from_str::<&RawValue>(frame.as_str()) {
        Ok(raw) => Some(raw),
        Err(error) => {
            tracing::error!(%error, "an encoded frame is not JSON");
            None
        }
    }
}

fn bus_error_reason(error: &BusError) -> &'static str {
    match error {
        BusError::Timeout => "timeout",
        BusError::NoResponders => "no_responders",
        BusError::Disconnected => "disconnected",
        _ => "other",
    }
}
