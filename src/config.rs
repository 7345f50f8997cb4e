//! Configuration: one serde tree, loaded from a TOML file, then environment variables,
//! then command-line flags (flags win over env, env over file).
//!
//! Every field has a documented default, so an empty file (or none) is a valid
//! configuration for a single node with the embedded store. [`Config::validate`] reports
//! every problem at once instead of stopping at the first.
//!
//! Secrets never come from flags or the file: the HS256 secret is read from
//! `SWITCHBOARD_JWT_SECRET`, the admin token from `SWITCHBOARD_ADMIN_TOKEN`; public keys
//! for RS256/EdDSA come from a file named here.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The whole configuration of one node.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// HTTP + WebSocket listen address. Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Directory of the embedded store. Default `./data`.
    pub data_dir: PathBuf,
    /// Development auth (`?user=&device=` without a token). Default off.
    pub dev: bool,
    /// Allow `dev` on a non-loopback listen address. Default off: dev mode on a public
    /// address lets anyone be anyone.
    pub dev_allow_remote: bool,
    /// `embedded` or `cql://host:port[,host:port]/keyspace`. Default `embedded`.
    pub store: String,
    /// NATS server URL(s); absent means a single node with the in-process bus.
    pub nats: Option<String>,
    /// This node's id in a cluster. Default: derived from host name and port.
    pub node_id: Option<String>,
    /// Log output: `text` or `json`. Default `text`.
    pub log_format: LogFormat,
    pub auth: AuthConfig,
    pub gateway: GatewayConfig,
    pub actors: ActorsConfig,
    pub groups: GroupsConfig,
    pub presence: PresenceConfig,
    pub cluster: ClusterConfig,
    pub rate_limits: RateLimitsConfig,
    pub store_options: StoreOptions,
    pub cql: CqlConfig,
    pub shutdown: ShutdownConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./data"),
            dev: false,
            dev_allow_remote: false,
            store: "embedded".to_owned(),
            nats: None,
            node_id: None,
            log_format: LogFormat::Text,
            auth: AuthConfig::default(),
            gateway: GatewayConfig::default(),
            actors: ActorsConfig::default(),
            groups: GroupsConfig::default(),
            presence: PresenceConfig::default(),
            cluster: ClusterConfig::default(),
            rate_limits: RateLimitsConfig::default(),
            store_options: StoreOptions::default(),
            cql: CqlConfig::default(),
            shutdown: ShutdownConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// JWT verification at the upgrade.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// `HS256` (secret from `SWITCHBOARD_JWT_SECRET`), `RS256` or `EdDSA` (public key
    /// from `public_key_file`, PEM). Default `HS256`.
    pub algorithm: JwtAlgorithm,
    /// PEM public key for RS256/EdDSA. Default none.
    pub public_key_file: Option<PathBuf>,
    /// Required `aud` claim, if set. Default none (not checked).
    pub audience: Option<String>,
    /// Required `iss` claim, if set. Default none (not checked).
    pub issuer: Option<String>,
    /// Clock skew allowed on `exp`/`nbf`, seconds. Default 30.
    pub leeway_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self { algorithm: JwtAlgorithm::Hs256, public_key_file: None, audience: None, issuer: None, leeway_secs: 30 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum JwtAlgorithm {
    #[serde(rename = "HS256")]
    Hs256,
    #[serde(rename = "RS256")]
    Rs256,
    #[serde(rename = "EdDSA")]
    EdDsa,
}

/// The WebSocket gateway: limits and buffers of every connection.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// Allowed `Origin` values (exact, e.g. `https://chat.example.com`). Empty: any
    /// origin. A request without `Origin` (not a browser) is always allowed.
    pub allowed_origins: Vec<String>,
    /// Largest WebSocket message or frame, bytes; larger closes with 1009. Default 65536.
    pub max_frame_bytes: usize,
    /// Largest `body` of a `send`, bytes; larger gets a `too_large` error. Default 16384.
    pub max_body_bytes: usize,
    /// Time to complete the HTTP upgrade, ms. Default 5000.
    pub handshake_timeout_ms: u64,
    /// A connection that sends nothing (not even a pong) for this long is closed, ms.
    /// Default 60000.
    pub idle_timeout_ms: u64,
    /// Ping interval on a quiet connection, ms. Default 25000.
    pub ping_interval_ms: u64,
    /// Per-connection read buffer, bytes (tungstenite's default is 128 KiB; most idle
    /// connections need almost none; it grows to fit a larger message). Default 512:
    /// a few typical requests per read, and memory per connection is the scarce
    /// resource of a large node.
    pub read_buffer_bytes: usize,
    /// Frames queued for one connection before it is a slow consumer (4001).
    /// Default 1024.
    pub outbox_max_frames: usize,
    /// Bytes queued for one connection before it is a slow consumer (4001).
    /// Default 1 MiB.
    pub outbox_max_bytes: usize,
    /// Requests of one connection in flight at once; past it the connection stops
    /// reading until one completes. Default 64.
    pub max_inflight_requests: usize,
    /// Timeout of one request (a send waiting for its ack), ms. Default 5000.
    pub request_timeout_ms: u64,
    /// A batch of frames the socket does not take within this long ends the connection
    /// (the peer stopped reading), ms. Default 10000.
    pub write_timeout_ms: u64,
    /// Open connections this node accepts; past it upgrades get 503. Default 1000000.
    pub max_connections: usize,
    /// Open connections from one IP address; past it upgrades get 503. 0: no limit
    /// (the default: load balancers and NATs put many users behind one address; set it
    /// when clients connect directly).
    pub max_connections_per_ip: usize,
    /// Upgrades per second this node accepts, sustained (the accept-rate budget); past
    /// it upgrades get 503 with `Retry-After`. Default 20000.
    pub accepts_per_sec: f64,
    /// Upgrades this node accepts in a burst. Default 20000.
    pub accepts_burst: u32,
    /// Resident memory (bytes) above which the node sheds new work: upgrades get 503 and
    /// typing is not relayed, until it is back below. 0: off. Default 0.
    pub memory_high_water_bytes: u64,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            allowed_origins: Vec::new(),
            max_frame_bytes: 64 * 1024,
            max_body_bytes: 16 * 1024,
            handshake_timeout_ms: 5_000,
            idle_timeout_ms: 60_000,
            ping_interval_ms: 25_000,
            read_buffer_bytes: 512,
            outbox_max_frames: 1024,
            outbox_max_bytes: 1024 * 1024,
            max_inflight_requests: 64,
            request_timeout_ms: 5_000,
            write_timeout_ms: 10_000,
            max_connections: 1_000_000,
            max_connections_per_ip: 0,
            accepts_per_sec: 20_000.0,
            accepts_burst: 20_000,
            memory_high_water_bytes: 0,
        }
    }
}

impl GatewayConfig {
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
    pub fn ping_interval(&self) -> Duration {
        Duration::from_millis(self.ping_interval_ms)
    }
    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms)
    }
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

/// The actor tree: restart policy and hibernation.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ActorsConfig {
    /// Restarts a supervisor allows within `restart_window_secs` before it escalates.
    /// Default 20.
    pub max_restarts: u32,
    /// The restart-counting window, seconds. Default 10.
    pub restart_window_secs: u64,
    /// A user actor with no work for this long hibernates (stops; its connections stay),
    /// ms. Default 30000.
    pub user_idle_ms: u64,
    /// A conversation actor with no work for this long hibernates, ms. Default 60000.
    pub conv_idle_ms: u64,
    /// Most messages of one conversation written in one batch. Default 256.
    pub conv_max_batch: usize,
    /// Sends queued in one conversation actor before new ones get `overloaded`.
    /// Default 4096.
    pub conv_max_pending: usize,
    /// Recent `cmid`s a conversation actor remembers without asking the store.
    /// Default 1024.
    pub conv_dedup_cache: usize,
    /// Messages queued for one user actor before its receipts are refused. Default 1024.
    pub user_mailbox_max: usize,
    /// Messages queued for one conversation actor before sends, membership changes and
    /// receipts for it are refused with `overloaded`. Default 8192.
    pub conv_mailbox_max: usize,
}

impl Default for ActorsConfig {
    fn default() -> Self {
        Self {
            max_restarts: 20,
            restart_window_secs: 10,
            user_idle_ms: 30_000,
            conv_idle_ms: 60_000,
            conv_max_batch: 256,
            conv_max_pending: 4096,
            conv_dedup_cache: 1024,
            user_mailbox_max: 1024,
            conv_mailbox_max: 8192,
        }
    }
}

/// Groups.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GroupsConfig {
    /// Most members of one group. Default 10000.
    pub max_members: usize,
    /// Groups with at most this many members relay each member's receipts to the other
    /// members, like a dm; larger groups relay only aggregated receipts (`"all": true`,
    /// every member has reached the seq). Default 32.
    pub receipt_relay_max_members: usize,
    /// Groups whose name and members are cached on this node. Default 100000.
    pub cache_entries: usize,
}

impl Default for GroupsConfig {
    fn default() -> Self {
        Self { max_members: 10_000, receipt_relay_max_members: 32, cache_entries: 100_000 }
    }
}

/// Presence.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PresenceConfig {
    /// A user whose last device disconnected is reported offline only after this long
    /// without a reconnect, so a flapping connection does not storm watchers, ms.
    /// Default 3000.
    pub offline_debounce_ms: u64,
    /// Most users one connection may watch with `presence_sub`. Default 1000.
    pub max_watched: usize,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self { offline_debounce_ms: 3_000, max_watched: 1_000 }
    }
}

/// Cluster membership and routing (used with `nats`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// How often this node says it is alive, ms. Default 1000.
    pub heartbeat_interval_ms: u64,
    /// A peer not heard for this long is down: its conversations move to other nodes and
    /// its users are no longer online through it, ms. Default 5000.
    pub down_after_ms: u64,
    /// A down peer not heard for this long is forgotten, ms. Default 60000.
    pub gone_after_ms: u64,
    /// How long a send forwarded to its conversation's owner may take, ms. Default 3000.
    pub forward_timeout_ms: u64,
    /// A node that takes over a conversation from another node waits this long after
    /// claiming it before sequencing, so the old owner's writes still in flight have
    /// finished (they are fenced by the ownership epoch from then on), ms. Default 2000.
    pub handover_wait_ms: u64,
    /// Forwarded requests this node handles at once; more are refused `overloaded`.
    /// Default 4096.
    pub max_inflight_forwards: usize,
    /// After a bus outage, connected devices resync (replay what they missed from other
    /// nodes) spread over this long, so they do not all hit the store at once, ms.
    /// Default 5000.
    pub resync_spread_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: 1_000,
            down_after_ms: 5_000,
            gone_after_ms: 60_000,
            forward_timeout_ms: 3_000,
            handover_wait_ms: 2_000,
            max_inflight_forwards: 4_096,
            resync_spread_ms: 5_000,
        }
    }
}

impl ClusterConfig {
    pub fn membership(&self) -> switchboard_cluster::membership::MembershipOptions {
        switchboard_cluster::membership::MembershipOptions {
            heartbeat_interval: Duration::from_millis(self.heartbeat_interval_ms),
            down_after: Duration::from_millis(self.down_after_ms),
            gone_after: Duration::from_millis(self.gone_after_ms),
        }
    }

    pub fn forward_timeout(&self) -> Duration {
        Duration::from_millis(self.forward_timeout_ms)
    }
}

/// Token-bucket rate limits. A request past its limit gets `rate_limited` with
/// `retry_after_ms`; a connection that keeps hitting limits is closed with 4003.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitsConfig {
    /// `send`s per second one connection may make, sustained. Default 200.
    pub sends_per_sec: f64,
    /// `send`s one connection may make in a burst (a client flushing its offline queue
    /// sends many at once). Default 1000.
    pub sends_burst: u32,
    /// `send`s per second one user may make over all their devices on a node. Default 400.
    pub user_sends_per_sec: f64,
    /// `send`s one user may make in a burst. Default 2000.
    pub user_sends_burst: u32,
    /// `typing` frames per second a connection may send, sustained. Default 2.
    pub typing_per_sec: f64,
    /// `typing` frames a connection may send in a burst. Default 5.
    pub typing_burst: u32,
    /// `presence_sub` requests per second a connection may make, sustained. Default 2.
    pub presence_subs_per_sec: f64,
    /// `presence_sub` requests a connection may make in a burst. Default 10.
    pub presence_subs_burst: u32,
    /// Refusals (`rate_limited`) within `abuse_window_ms` after which the connection is
    /// closed with 4003. Default 50.
    pub abuse_strikes: u32,
    /// The window of `abuse_strikes`, ms. Default 10000.
    pub abuse_window_ms: u64,
}

impl Default for RateLimitsConfig {
    fn default() -> Self {
        Self {
            sends_per_sec: 200.0,
            sends_burst: 1000,
            user_sends_per_sec: 400.0,
            user_sends_burst: 2000,
            typing_per_sec: 2.0,
            typing_burst: 5,
            presence_subs_per_sec: 2.0,
            presence_subs_burst: 10,
            abuse_strikes: 50,
            abuse_window_ms: 10_000,
        }
    }
}

/// Options of the store.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreOptions {
    /// How long a `cmid` is remembered for deduplication, seconds. Default 7 days.
    pub dedup_ttl_secs: u64,
    /// Messages read per page on resume. Default 200.
    pub resume_page: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self { dedup_ttl_secs: 7 * 24 * 3600, resume_page: 200 }
    }
}

/// The CQL store (`store = "cql://..."`): ScyllaDB in production, Cassandra in tests.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CqlConfig {
    /// Keyspace replication, a CQL map. Default SimpleStrategy, RF 1 (tests and single
    /// nodes); production uses `{'class': 'NetworkTopologyStrategy', 'dc1': 3}`.
    pub replication: String,
    /// Local datacenter for token-aware, DC-aware routing. Default none.
    pub datacenter: Option<String>,
    /// Consistency of every request. Default `LOCAL_QUORUM`.
    pub consistency: String,
    /// Timeout of one store call, ms (the driver's default is 30 s). Default 2000.
    pub request_timeout_ms: u64,
    /// Messages per partition (bucket) of a conversation's log. Default 4096.
    pub bucket_size: u64,
    /// Apply `deploy/cql/schema.cql` at start (as `switchboard migrate` does). Default
    /// off: production migrates once, explicitly.
    pub migrate_on_start: bool,
}

impl Default for CqlConfig {
    fn default() -> Self {
        Self {
            replication: "{'class': 'SimpleStrategy', 'replication_factor': 1}".to_owned(),
            datacenter: None,
            consistency: "LOCAL_QUORUM".to_owned(),
            request_timeout_ms: 2_000,
            bucket_size: 4_096,
            migrate_on_start: false,
        }
    }
}

/// Shutdown phases.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// Time for the whole drain (close clients, flush writers), ms. Default 10000.
    pub grace_ms: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self { grace_ms: 10_000 }
    }
}

impl ShutdownConfig {
    pub fn grace(&self) -> Duration {
        Duration::from_millis(self.grace_ms)
    }
}

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid: {source}")]
    Parse { path: PathBuf, source: Box<toml::de::Error> },
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

/// Values given on the command line or by `SWITCHBOARD_<NAME>` environment variables
/// (clap merges those two); each one present overrides the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub dev: Option<bool>,
    pub dev_allow_remote: Option<bool>,
    pub store: Option<String>,
    pub nats: Option<String>,
    pub node_id: Option<String>,
}

impl Config {
    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.to_owned(), source: Box::new(source) })
    }

    /// Applies command-line and environment overrides.
    pub fn apply(&mut self, overrides: Overrides) {
        let Overrides { listen, data_dir, dev, dev_allow_remote, store, nats, node_id } = overrides;
        if let Some(listen) = listen {
            self.listen = listen;
        }
        if let Some(data_dir) = data_dir {
            self.data_dir = data_dir;
        }
        if let Some(dev) = dev {
            self.dev = dev;
        }
        if let Some(dev_allow_remote) = dev_allow_remote {
            self.dev_allow_remote = dev_allow_remote;
        }
        if let Some(store) = store {
            self.store = store;
        }
        if nats.is_some() {
            self.nats = nats;
        }
        if node_id.is_some() {
            self.node_id = node_id;
        }
    }

    /// Checks the whole configuration and reports every problem at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if self.dev && !self.listen.ip().is_loopback() && !self.dev_allow_remote {
            problems.push(format!(
                "dev mode refuses the non-loopback listen address {}: anyone could log in as \
                 anyone; set dev_allow_remote (--dev-allow-remote) if you really mean it",
                self.listen
            ));
        }
        if self.store != "embedded" && !self.store.starts_with("cql://") {
            problems.push(format!(
                "store must be `embedded` or `cql://host:port[,host:port]/keyspace`, not `{}`",
                self.store
            ));
        }
        if let Some(node_id) = &self.node_id
            && switchboard_proto::ids::UserId::new(node_id).is_err()
        {
            problems.push(format!("node_id `{node_id}` must be 1-64 characters of [A-Za-z0-9_.@-]"));
        }
        if self.nats.is_some() && self.store == "embedded" {
            problems.push(
                "a cluster (nats) needs a shared store: set store to `cql://host:port/keyspace`; \
                 the embedded store belongs to one process"
                    .to_owned(),
            );
        }
        let cluster = &self.cluster;
        if cluster.heartbeat_interval_ms == 0 || cluster.down_after_ms < 2 * cluster.heartbeat_interval_ms {
            problems.push(
                "cluster.down_after_ms must be at least twice cluster.heartbeat_interval_ms (above 0)".to_owned(),
            );
        }
        if cluster.gone_after_ms < cluster.down_after_ms {
            problems.push("cluster.gone_after_ms must be at least cluster.down_after_ms".to_owned());
        }
        if cluster.forward_timeout_ms == 0 || cluster.max_inflight_forwards == 0 {
            problems.push("cluster.forward_timeout_ms and cluster.max_inflight_forwards must be above 0".to_owned());
        }
        if matches!(self.auth.algorithm, JwtAlgorithm::Rs256 | JwtAlgorithm::EdDsa)
            && self.auth.public_key_file.is_none()
        {
            problems.push("auth.public_key_file is required for RS256 and EdDSA".to_owned());
        }
        let gateway = &self.gateway;
        if gateway.max_frame_bytes < 1024 {
            problems.push("gateway.max_frame_bytes must be at least 1024".to_owned());
        }
        if gateway.max_body_bytes == 0 || gateway.max_body_bytes > gateway.max_frame_bytes {
            problems.push("gateway.max_body_bytes must be between 1 and max_frame_bytes".to_owned());
        }
        if gateway.ping_interval_ms == 0 || gateway.ping_interval_ms >= gateway.idle_timeout_ms {
            problems.push("gateway.ping_interval_ms must be above 0 and below idle_timeout_ms".to_owned());
        }
        for (name, value) in [
            ("gateway.handshake_timeout_ms", gateway.handshake_timeout_ms),
            ("gateway.request_timeout_ms", gateway.request_timeout_ms),
            ("gateway.write_timeout_ms", gateway.write_timeout_ms),
            ("shutdown.grace_ms", self.shutdown.grace_ms),
        ] {
            if value == 0 {
                problems.push(format!("{name} must be above 0"));
            }
        }
        for (name, value) in [
            ("gateway.read_buffer_bytes", gateway.read_buffer_bytes),
            ("gateway.outbox_max_frames", gateway.outbox_max_frames),
            ("gateway.outbox_max_bytes", gateway.outbox_max_bytes),
            ("gateway.max_inflight_requests", gateway.max_inflight_requests),
            ("gateway.max_connections", gateway.max_connections),
            ("actors.conv_max_batch", self.actors.conv_max_batch),
            ("actors.conv_max_pending", self.actors.conv_max_pending),
            ("actors.user_mailbox_max", self.actors.user_mailbox_max),
            ("actors.conv_mailbox_max", self.actors.conv_mailbox_max),
            ("store_options.resume_page", self.store_options.resume_page),
            ("groups.max_members", self.groups.max_members),
            ("groups.cache_entries", self.groups.cache_entries),
            ("presence.max_watched", self.presence.max_watched),
        ] {
            if value == 0 {
                problems.push(format!("{name} must be above 0"));
            }
        }
        let limits = &self.rate_limits;
        for (name, per_sec, burst) in [
            ("sends", limits.sends_per_sec, limits.sends_burst),
            ("user_sends", limits.user_sends_per_sec, limits.user_sends_burst),
            ("typing", limits.typing_per_sec, limits.typing_burst),
            ("presence_subs", limits.presence_subs_per_sec, limits.presence_subs_burst),
            ("gateway.accept", gateway.accepts_per_sec, gateway.accepts_burst),
        ] {
            if !(per_sec > 0.0 && per_sec.is_finite()) || burst == 0 {
                problems.push(format!("{name}_per_sec and {name}_burst must be above 0 (rate_limits / gateway)"));
            }
        }
        if limits.abuse_strikes == 0 || limits.abuse_window_ms == 0 {
            problems.push("rate_limits.abuse_strikes and rate_limits.abuse_window_ms must be above 0".to_owned());
        }
        if self.actors.max_restarts == 0 || self.actors.restart_window_secs == 0 {
            problems.push("actors.max_restarts and actors.restart_window_secs must be above 0".to_owned());
        }
        if problems.is_empty() { Ok(()) } else { Err(ConfigError::Invalid(problems)) }
    }

    /// This node's id: configured, or `<host>-<port>`.
    pub fn node_id(&self) -> String {
        if let Some(node_id) = &self.node_id {
            return node_id.clone();
        }
        let host = std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|name| name.trim().to_owned())
            .filter(|name| !name.is_empty() && switchboard_proto::ids::UserId::new(name).is_ok())
            .unwrap_or_else(|| "node".to_owned());
        format!("{host}-{}", self.listen.port())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn validate_reports_every_problem() {
        let mut config = Config {
            dev: true,
            listen: "0.0.0.0:8080".parse().unwrap(),
            store: "postgres://x".to_owned(),
            ..Config::default()
        };
        config.gateway.max_frame_bytes = 10;
        let Err(ConfigError::Invalid(problems)) = config.validate() else {
            panic!("expected invalid");
        };
        assert!(problems.len() >= 3, "{problems:?}");
    }

    #[test]
    fn overrides_win() {
        let mut config: Config = toml::from_str("listen = \"127.0.0.1:9000\"\ndev = false").unwrap();
        config.apply(Overrides { dev: Some(true), ..Overrides::default() });
        assert!(config.dev);
        assert_eq!(config.listen.port(), 9000);
    }

    #[test]
    fn unknown_fields_are_rejected() {
        assert!(toml::from_str::<Config>("lisen = \"x\"").is_err());
    }

    #[test]
    fn a_cluster_needs_a_shared_store_and_sane_timings() {
        let mut config = Config { nats: Some("nats://127.0.0.1:4222".to_owned()), ..Config::default() };
        let Err(ConfigError::Invalid(problems)) = config.validate() else {
            panic!("a cluster on the embedded store must be refused");
        };
        assert!(problems.iter().any(|problem| problem.contains("shared store")), "{problems:?}");
        config.store = "cql://127.0.0.1:9042/switchboard".to_owned();
        assert!(config.validate().is_ok());
        config.cluster.down_after_ms = config.cluster.heartbeat_interval_ms;
        assert!(config.validate().is_err(), "down_after below two heartbeats");
    }

    /// The config in the Kubernetes manifest is a valid configuration of this version.
    #[test]
    fn the_kubernetes_config_map_is_valid() {
        let manifest = include_str!("../deploy/k8s/switchboard.yaml");
        let start = manifest.find("switchboard.toml: |").expect("the ConfigMap's file");
        let text: Vec<&str> = manifest[start..]
            .lines()
            .skip(1)
            .take_while(|line| line.is_empty() || line.starts_with("    "))
            .map(|line| line.strip_prefix("    ").unwrap_or(line))
            .collect();
        let config: Config = toml::from_str(&text.join("\n")).expect("TOML of the ConfigMap");
        config.validate().expect("a valid configuration");
        assert!(config.nats.is_some() && config.store.starts_with("cql://"));
        // The drain must end before Kubernetes kills the pod.
        let grace_secs = manifest
            .lines()
            .find_map(|line| line.trim().strip_prefix("terminationGracePeriodSeconds:"))
            .and_then(|value| value.trim().parse::<u64>().ok())
            .expect("terminationGracePeriodSeconds");
        assert!(grace_secs * 1000 > config.shutdown.grace_ms + 5_000, "termination grace shorter than the drain");
    }
}
