//! The server: start-up, the accept loop, and the ordered shutdown.
//!
//! [`Server::start`] opens the store, starts the actor tree and binds the listener;
//! [`Server::run`] accepts connections until the shutdown signal (or an escalation from
//! the actor tree), then drains in bounded phases:
//!
//! 1. stop accepting; `/readyz` turns 503 and new upgrades get 503;
//! 2. tell every client to reconnect elsewhere (close 1001), in jittered batches spread
//!    over part of the grace so they do not all reconnect at once;
//! 3. wait for connection tasks and in-flight writes (every ack is sent or failed);
//! 4. stop the actor tree, flush the store.
//!
//! The whole drain is bounded by `shutdown.grace_ms`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use rand::Rng as _;
use switchboard_cluster::in_process::InProcessBus;
use switchboard_cluster::nats::{NatsBus, NatsOptions};

use crate::cluster::Cluster;
use switchboard_proto::close::CloseCode;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tower::ServiceExt as _;

use crate::actors::supervisor::RestartPolicy;
use crate::actors::{Directory, MailboxLimits};
use crate::auth::Authenticator;
use crate::config::Config;
use crate::gateway::PeerAddr;
use crate::node::Node;
use crate::store::MessageStore;
use crate::store::cql::{CqlOptions, CqlStore, parse_consistency};
use crate::store::embedded::{EmbeddedOptions, EmbeddedStore};

/// Accept queue the listener asks for. The kernel grants at most `net.core.somaxconn`
/// (4096 by default; deploy/sysctl raises it): after a node's loss its clients reconnect
/// to the others at once, and tokio's default of 128 would drop their SYNs, leaving each
/// client waiting a second or more for a TCP retransmission.
const LISTEN_BACKLOG: u32 = 65_535;

/// Largest HTTP request head accepted (a header bomb gets 431).
const MAX_HEAD_BYTES: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;

/// A started node, listening.
#[derive(Debug)]
pub struct Server {
    node: Arc<Node>,
    listener: TcpListener,
    local_addr: SocketAddr,
}

impl Server {
    /// Opens the store, starts the actor tree and binds the listener.
    pub async fn start(
        config: Config,
        metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    ) -> anyhow::Result<Self> {
        config.validate()?;
        let secret = std::env::var("SWITCHBOARD_JWT_SECRET").ok();
        let auth = Authenticator::new(&config.auth, secret.as_deref().map(str::as_bytes), config.dev)?;
        if config.dev {
            tracing::warn!(
                listen = %config.listen,
                "DEVELOPMENT MODE: ?user=&device= is accepted without a token; anyone can connect as anyone"
            );
        }
        let store = open_store(&config).await?;
        let (bus, cluster) = match &config.nats {
            None => (Arc::new(InProcessBus::new()) as Arc<dyn switchboard_cluster::Bus>, None),
            Some(urls) => {
                let node_id = config.node_id();
                let options = NatsOptions {
                    urls: NatsOptions::split_urls(urls),
                    name: node_id.clone(),
                    ..NatsOptions::default()
                };
                let bus = NatsBus::connect(options).await.context("cannot join the cluster bus")?;
                let bus = Arc::new(bus) as Arc<dyn switchboard_cluster::Bus>;
                // The incarnation tells this process from earlier ones with the same id.
                let incarnation = crate::node::now_ms();
                let cluster = Cluster::new(node_id, incarnation, bus.clone(), config.cluster.clone());
                (bus, Some(cluster))
            }
        };
        let escalation = tokio_util::sync::CancellationToken::new();
        let policy = RestartPolicy {
            max_restarts: config.actors.max_restarts,
            window: Duration::from_secs(config.actors.restart_window_secs),
        };
        let mailboxes = MailboxLimits { user: config.actors.user_mailbox_max, conv: config.actors.conv_mailbox_max };
        let directory =
            Directory::start(policy, escalation.clone(), mailboxes).await.context("cannot start the actor tree")?;
        let listener = bind(config.listen).with_context(|| format!("cannot listen on {}", config.listen))?;
        let local_addr = listener.local_addr()?;
        let node = Arc::new(Node::new(config, store, bus, cluster, auth, directory, metrics));
        // Root escalating means the tree cannot keep itself alive: stop the node.
        let escalated = node.clone();
        tokio::spawn(async move {
            escalation.cancelled().await;
            tracing::error!("actor tree escalated past its restart limit; shutting down");
            escalated.escalated.store(true, std::sync::atomic::Ordering::SeqCst);
            escalated.shutdown.cancel();
        });
        tokio::spawn(housekeeping(node.clone()));
        if let Some(cluster) = node.cluster.clone() {
            crate::cluster::run(node.clone(), cluster).await.context("cannot subscribe to the cluster bus")?;
        }
        Ok(Self { node, listener, local_addr })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Serves until `signal` completes (or the node stops itself), then drains.
    pub async fn run(self, signal: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
        let Server { node, listener, local_addr } = self;
        tracing::info!(listen = %local_addr, node.id = %node.node_id, store = node.store.name(), "serving");
        let router = crate::http::router(node.clone());
        let http_tasks = tokio_util::task::TaskTracker::new();
        let mut signal = std::pin::pin!(signal);
        let mut backoff = Duration::from_millis(5);
        loop {
            tokio::select! {
                () = &mut signal => break,
                () = node.shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        backoff = Duration::from_millis(5);
                        http_tasks.spawn(serve_http(node.clone(), router.clone(), stream, peer));
                    }
                    Err(error) => {
                        // Out of file descriptors or similar: keep serving who is
                        // connected, retry accepting shortly.
                        tracing::warn!(%error, backoff_ms = backoff.as_millis() as u64, "accept failed");
                        metrics::counter!("switchboard_accept_errors_total").increment(1);
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                    }
                },
            }
        }
        drop(listener);
        drain(&node).await;
        http_tasks.close();
        if node.escalated.load(std::sync::atomic::Ordering::SeqCst) {
            anyhow::bail!("the actor tree failed past its restart limits; see the log above");
        }
        Ok(())
    }
}

/// Binds the listener as `TcpListener::bind` does (`SO_REUSEADDR`, so a restarted node
/// gets its port back despite TIME_WAIT), with a deeper accept queue.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Opens the configured store: embedded (fjall) or CQL.
pub async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn MessageStore>> {
    if config.store.starts_with("cql://") {
        let options = cql_options(config)?;
        if config.cql.migrate_on_start {
            CqlStore::migrate(&options).await.context("cannot apply the CQL schema")?;
        }
        let store = CqlStore::connect(options).await.context("cannot connect to the CQL store")?;
        return Ok(Arc::new(store));
    }
    let options = EmbeddedOptions {
        dedup_ttl: Duration::from_secs(config.store_options.dedup_ttl_secs),
        ..EmbeddedOptions::default()
    };
    let dir = config.data_dir.clone();
    let store = tokio::task::spawn_blocking(move || EmbeddedStore::open(&dir, options))
        .await?
        .with_context(|| format!("cannot open the embedded store in {}", config.data_dir.display()))?;
    Ok(Arc::new(store))
}

/// The CQL store options of a configuration whose `store` is a `cql://` URL.
pub fn cql_options(config: &Config) -> anyhow::Result<CqlOptions> {
    let mut options = CqlOptions::from_url(&config.store)?;
    options.replication.clone_from(&config.cql.replication);
    options.datacenter.clone_from(&config.cql.datacenter);
    options.consistency = parse_consistency(&config.cql.consistency).map_err(anyhow::Error::msg)?;
    options.request_timeout = Duration::from_millis(config.cql.request_timeout_ms);
    options.bucket_size = config.cql.bucket_size;
    options.dedup_ttl = Duration::from_secs(config.store_options.dedup_ttl_secs);
    options.validate().map_err(|problems| anyhow::anyhow!("invalid CQL store options: {problems}"))?;
    Ok(options)
}

async fn serve_http(node: Arc<Node>, router: axum::Router, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let mut request = request.map(Body::new);
        request.extensions_mut().insert(PeerAddr(peer));
        router.clone().oneshot(request)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(node.config.gateway.handshake_timeout())
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS);
    let connection = builder.serve_connection(TokioIo::new(stream), service).with_upgrades();
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%error, peer = %peer, "http connection ended with an error");
            }
        }
        () = node.shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(1), connection).await;
        }
    }
}

/// Periodic upkeep until shutdown: the memory high-water check (every second) and
/// forgetting idle users' rate-limit buckets (every 30 s).
async fn housekeeping(node: Arc<Node>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks: u64 = 0;
    loop {
        tokio::select! {
            () = node.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        node.admission.sample_memory();
        ticks += 1;
        if ticks.is_multiple_of(30) {
            node.user_sends.forget_idle();
        }
    }
}

/// The bounded shutdown drain (see the module docs).
async fn drain(node: &Arc<Node>) {
    let grace = node.config.shutdown.grace();
    let deadline = tokio::time::Instant::now() + grace;
    node.shutdown.cancel();
    // Peers take over this node's conversations and users now, not after its heartbeats
    // time out.
    if let Some(cluster) = &node.cluster {
        cluster.leave().await;
    }
    let outboxes = node.sessions.all_outboxes();
    tracing::info!(connections = outboxes.len(), grace_ms = grace.as_millis() as u64, "shutting down");
    // Spread the 1001s over a third of the grace, in batches with jitter.
    let spread = grace / 3;
    const BATCH: usize = 500;
    let batches = outboxes.len().div_ceil(BATCH).max(1);
    let pause = spread / batches as u32;
    for (index, chunk) in outboxes.chunks(BATCH).enumerate() {
        for outbox in chunk {
            outbox.close(CloseCode::GoingAway);
        }
        if index + 1 < batches && !pause.is_zero() {
            let jitter = rand::rng().random_range(0..=pause.as_millis() as u64 / 2);
            tokio::time::sleep(pause / 2 + Duration::from_millis(jitter)).await;
        }
    }
    node.tasks.close();
    if tokio::time::timeout_at(deadline, node.tasks.wait()).await.is_err() {
        tracing::warn!(left = node.tasks.len(), "grace ran out before every connection closed");
    }
    let remaining = deadline.saturating_duration_since(tokio::time::Instant::now()).max(Duration::from_millis(200));
    node.directory.stop(remaining / 2).await;
    match tokio::time::timeout(remaining / 2, node.store.flush()).await {
        Ok(Ok(())) => tracing::info!("store flushed"),
        Ok(Err(error)) => tracing::error!(%error, "store flush failed"),
        Err(_) => tracing::error!("store flush timed out"),
    }
}
