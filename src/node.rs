//! The node: everything one switchboard process shares between its tasks and actors.
//!
//! A [`Node`] is built once at start and handed around as `Arc<Node>`. It owns the
//! store, the session registry, the actor tree's directory, the authenticator and the
//! shutdown token. Nothing in it is a global: tests may run several nodes in a process.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use switchboard_cluster::Bus;
use switchboard_proto::codec::DecodeLimits;
use switchboard_proto::ids::{ConvId, UserId};
use switchboard_proto::limits::Limits;
use switchboard_proto::server::{Presence, PresenceStatus};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::actors::conversation::ConvMsg;
use crate::actors::{Directory, DirectoryError};
use crate::auth::Authenticator;
use crate::cluster::{Cluster, Kind};
use crate::config::Config;
use crate::feeds::FeedIndex;
use crate::groups::GroupCache;
use crate::limits::{Admission, UserRateLimits};
use crate::presence::PresenceHub;
use crate::sessions::Sessions;
use crate::store::{MessageStore, StoreResult};

/// Users whose token revocation time this node remembers.
const REVOCATION_CACHE_ENTRIES: usize = 100_000;

/// Conversations whose latest delivered seq this node remembers.
const HEAD_CACHE_ENTRIES: usize = 100_000;

/// Shared state of one server process.
#[derive(Debug)]
pub struct Node {
    pub config: Config,
    pub node_id: String,
    pub store: Arc<dyn MessageStore>,
    pub bus: Arc<dyn Bus>,
    /// This node among its peers; `None` for a single node.
    pub cluster: Option<Arc<Cluster>>,
    pub sessions: Sessions,
    pub groups: GroupCache,
    pub feeds: FeedIndex,
    pub presence: PresenceHub,
    /// Admission checks of the upgrade (accept rate, per-IP, memory).
    pub admission: Arc<Admission>,
    /// Send budgets per user over all their connections on this node.
    pub user_sends: UserRateLimits,
    /// `revoked_before` of recently seen users (`None`: never revoked), in front of the
    /// store: the upgrade checks it for every connection.
    revocations: quick_cache::sync::Cache<UserId, Option<u64>>,
    /// The highest seq of each recently active conversation this node delivered: a
    /// lower bound of its head (messages are delivered once durable, and seqs only
    /// rise), so a receipt at or below it needs no store read to be known valid.
    heads: quick_cache::sync::Cache<ConvId, u64>,
    pub auth: Authenticator,
    pub directory: Directory,
    pub decode_limits: DecodeLimits,
    /// Renders `/metrics`; `None` if another node in this process installed the recorder.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Cancelled when the node starts shutting down.
    pub shutdown: CancellationToken,
    /// Tasks that must finish before the store is closed (connections, writes).
    pub tasks: TaskTracker,
    next_conn_id: AtomicU64,
    /// Live actors, for `/api/v1/stats`.
    pub live_user_actors: std::sync::atomic::AtomicUsize,
    pub live_conv_actors: std::sync::atomic::AtomicUsize,
    pub started: std::time::Instant,
    /// `SWITCHBOARD_FAULT_INJECTION=1`: the admin API's fault hooks exist (drills, tests).
    pub fault_injection: bool,
    /// Set when the actor tree escalated past root's restart limit (the node stops and
    /// exits with an error).
    pub escalated: std::sync::atomic::AtomicBool,
    /// Bearer token of the admin API (`SWITCHBOARD_ADMIN_TOKEN`); `None` disables it.
    pub admin_token: Option<crate::admin::AdminToken>,
}

impl Node {
    pub fn new(
        config: Config,
        store: Arc<dyn MessageStore>,
        bus: Arc<dyn Bus>,
        cluster: Option<Arc<Cluster>>,
        auth: Authenticator,
        directory: Directory,
        metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    ) -> Self {
        let decode_limits = DecodeLimits {
            max_frame_bytes: config.gateway.max_frame_bytes,
            max_body_bytes: config.gateway.max_body_bytes,
            ..DecodeLimits::default()
        };
        Self {
            node_id: config.node_id(),
            store,
            bus,
            cluster,
            sessions: Sessions::new(),
            groups: GroupCache::new(config.groups.cache_entries),
            feeds: FeedIndex::new(),
            presence: PresenceHub::new(),
            admission: Arc::new(Admission::new(&config.gateway)),
            user_sends: UserRateLimits::new(config.rate_limits.user_sends_per_sec, config.rate_limits.user_sends_burst),
            revocations: quick_cache::sync::Cache::new(REVOCATION_CACHE_ENTRIES),
            heads: quick_cache::sync::Cache::new(HEAD_CACHE_ENTRIES),
            auth,
            directory,
            decode_limits,
            metrics,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            // Random high bits: connection ids are unique across the cluster, so a
            // delivery can name the sending connection on any node.
            next_conn_id: AtomicU64::new((u64::from(rand::random::<u32>()) << 32) | 1),
            live_user_actors: std::sync::atomic::AtomicUsize::new(0),
            live_conv_actors: std::sync::atomic::AtomicUsize::new(0),
            started: std::time::Instant::now(),
            fault_injection: std::env::var("SWITCHBOARD_FAULT_INJECTION").is_ok_and(|value| value == "1"),
            escalated: std::sync::atomic::AtomicBool::new(false),
            admin_token: std::env::var("SWITCHBOARD_ADMIN_TOKEN")
                .ok()
                .filter(|token| !token.is_empty())
                .map(crate::admin::AdminToken::new),
            config,
        }
    }

    /// A connection id, unique across the cluster (random high half per process).
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The time (ms) before which `user`'s tokens are refused, if their tokens were
    /// revoked.
    pub async fn revoked_before(&self, user: &UserId) -> StoreResult<Option<u64>> {
        if let Some(cached) = self.revocations.get(user) {
            return Ok(cached);
        }
        let before = self.store.revoked_before(user).await?;
        self.revocations.insert(user.clone(), before);
        Ok(before)
    }

    /// Refuses `user`'s tokens issued before `before_ms` (durable on return), on every
    /// node of the cluster.
    pub async fn revoke(&self, user: &UserId, before_ms: u64) -> StoreResult<()> {
        self.store.revoke_before(user, before_ms).await?;
        self.note_revocation(user, before_ms);
        if let Some(cluster) = &self.cluster {
            cluster.revoked(user, before_ms).await;
        }
        Ok(())
    }

    /// A revocation is durable (here or on another node): the cache keeps the maximum,
    /// like the store.
    pub fn note_revocation(&self, user: &UserId, before_ms: u64) {
        let before = self.revocations.get(user).flatten().map_or(before_ms, |cached| cached.max(before_ms));
        self.revocations.insert(user.clone(), Some(before));
    }

    /// Drops the cached revocations (revocation events from other nodes may have been
    /// missed while the bus was away); they are read from the store again.
    pub fn forget_revocations(&self) {
        self.revocations.clear();
    }

    /// Hands `message` to `conv`'s sequencer: here, or forwarded to the node that owns
    /// the conversation.
    pub async fn to_conv(self: &Arc<Self>, conv: &ConvId, message: ConvMsg) -> Result<(), DirectoryError> {
        if let Some(cluster) = &self.cluster
            && let Some(owner) = cluster.remote_owner(conv)
        {
            return cluster.forward(&owner, conv, message);
        }
        self.directory.conv(self, conv, message).await
    }

    /// Pushes `frame` to every device of `users`, on this node and on the others;
    /// returns how many devices of this node got it.
    pub async fn deliver(&self, users: &[UserId], kind: Kind<'_>, frame: &Utf8Bytes, except: Option<u64>) -> usize {
        if let Kind::Msg { conv, seq } = kind {
            self.note_head(conv, seq);
        }
        let sessions = &self.sessions;
        let queued = users
            .iter()
            .map(|user| match kind {
                Kind::Msg { conv, seq } => sessions.deliver_message(user, conv, seq, frame, except),
                Kind::Frame => sessions.deliver(user, frame, except),
                Kind::Ephemeral => sessions.deliver_ephemeral(user, frame, except),
            })
            .sum();
        if let Some(cluster) = &self.cluster {
            cluster.deliver(users, kind, frame, except).await;
        }
        queued
    }

    /// `seq` of `conv` is durable (it is being delivered, or the store said so).
    pub fn note_head(&self, conv: &ConvId, seq: u64) {
        // Two racing notes may leave the lower one: still a lower bound, only a read
        // more for a receipt above it.
        if seq > 0 && self.heads.get(conv).is_none_or(|known| known < seq) {
            self.heads.insert(conv.clone(), seq);
        }
    }

    /// The highest seq of `conv` known durable here without asking the store, if any.
    pub fn known_head(&self, conv: &ConvId) -> Option<u64> {
        self.heads.get(conv)
    }

    /// A user came online or went offline on this node (decided by the user actor);
    /// watchers hear of it if it changes the user's presence in the whole cluster.
    pub async fn presence_changed(&self, user: &UserId, status: PresenceStatus, at: u64) -> bool {
        let news = match &self.cluster {
            Some(cluster) => cluster.presence_changed(user, status, at).await,
            None => true,
        };
        if news {
            self.presence.publish(&Presence { user: user.clone(), status, last_seen: at });
        }
        news
    }

    /// Online on this node or another.
    pub fn is_online(&self, user: &UserId) -> bool {
        self.sessions.is_online(user) || self.cluster.as_ref().is_some_and(|cluster| cluster.online_elsewhere(user))
    }

    /// The limits announced in `hello`.
    pub fn limits(&self) -> Limits {
        self.decode_limits.to_wire()
    }
}

/// Milliseconds since the Unix epoch (message and receipt timestamps).
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_millis() as u64)
}
