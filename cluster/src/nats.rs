//! [`NatsBus`]: the bus of a cluster, over NATS core (the `async-nats` client).
//!
//! One connection per process: [`NatsBus`] is a cheap cloneable handle to it. The
//! semantics are those of [`Bus`], shared with the in-process bus; what this file adds is
//! how the client is held to them.
//!
//! - **Reconnects forever.** After the first connection, a lost connection is retried
//!   without end, with an exponential backoff (from 50 ms up to
//!   [`NatsOptions::max_reconnect_delay`], with jitter so a restarted NATS is not met by
//!   every node at the same instant). Disconnects are logged at `warn`, reconnects at
//!   `info` with the outage's length, and both are reflected in [`Bus::connected_watch`].
//!   Subscriptions survive: the client subscribes them again on reconnect.
//! - **Fails fast while disconnected.** The client queues commands in a bounded channel
//!   that nobody drains while it reconnects, so a publish during an outage would first be
//!   held for later (delivered stale after the outage) and, once the channel is full,
//!   would wait until the server is back. Instead [`Bus::publish`], [`Bus::request`] and
//!   [`Bus::flush`] check the connection state first and fail with
//!   [`BusError::Disconnected`], and every wait for room in that channel is bounded by
//!   [`NatsOptions::publish_timeout`] (the window between a connection dying and the
//!   client noticing). Messages the client had written but not sent when the connection
//!   died are lost, as NATS core allows. Subscribing during an outage is allowed: the
//!   subscription is queued and reaches the server on reconnect.
//! - **Bounded subscriptions.** A task per subscription forwards from the client's
//!   subscriber into the [`Subscription`]'s bounded queue, dropping (and counting) what
//!   does not fit, and ends when the [`Subscription`] is dropped, which unsubscribes
//!   (the unsubscribe reaches the server shortly after the drop, not during it). The
//!   client's own bounded queue sits in front of each forwarder; it only overflows when
//!   the forwarder is starved of CPU, and those drops are counted for the bus as a whole
//!   ([`NatsBus::dropped`]), as the client does not say which subscription lost them.
//! - **Requests** go through one wildcard subscription on this connection's own inbox
//!   (`_INBOX.<id>.*`): each request gets a numbered reply subject under it, and a task
//!   routes replies to the waiting requester. A request that times out leaves nothing
//!   behind. (The client's own `request` keeps a timed-out request's entry for good.)
//!   The server answers a request nobody subscribes to with a "no responders" status,
//!   which becomes [`BusError::NoResponders`].
//! - **Flush is a round trip**: [`Bus::flush`] publishes a marker to this connection's
//!   own inbox and waits for it to come back, so when it returns the server has processed
//!   everything published before (and subscribed before) on this connection. The client's
//!   `flush` only waits for the socket write.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::connection::State;
use async_nats::{Event, ServerAddr, StatusCode};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt as _;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;

use crate::bus::{Bus, BusError, BusMessage, Offered, Subscription, check_pattern, check_publish, offer};

/// The first pause between reconnect attempts after the immediate retry.
const FIRST_RECONNECT_DELAY: Duration = Duration::from_millis(50);
/// How often the connection state is read back from the client, in case one of its
/// events was lost (its event queue is bounded and drops when full).
const STATE_RECHECK_PERIOD: Duration = Duration::from_millis(250);
/// While disconnected, how often to say so again.
const STILL_DISCONNECTED_LOG_PERIOD: Duration = Duration::from_secs(30);
/// Client events queued for the monitor task before new ones are dropped.
const EVENT_QUEUE: usize = 64;
/// The least room in the client's own queue per subscription, in front of each
/// forwarder. The client fills it without yielding for as long as the socket has data,
/// so it must absorb a whole burst: what overflows it is lost before the forwarder could
/// count it for its subscription.
const MIN_CLIENT_SUBSCRIPTION_QUEUE: usize = 4096;

/// How to reach NATS, and the bus's bounds.
#[derive(Clone, PartialEq, Eq)]
pub struct NatsOptions {
    /// Server URLs: `nats://host:port`, `tls://host:port` or `host:port` (port 4222 when
    /// absent), credentials allowed as `nats://user:password@host:port`. The client
    /// connects to one and fails over to the others and to the servers the NATS cluster
    /// announces. [`NatsOptions::split_urls`] splits a comma-separated `--nats` value.
    /// No default: at least one is required.
    pub urls: Vec<String>,
    /// The connection's name in NATS monitoring (`/connz`): this node's id. Default
    /// `switchboard`.
    pub name: String,
    /// Bound on one connection attempt (TCP connect and handshake). Default 5 s.
    pub connect_timeout: Duration,
    /// Bound on [`Bus::flush`], and the timeout for requests whose caller has no better
    /// one ([`NatsBus::request_timeout`]). Default 5 s.
    pub request_timeout: Duration,
    /// Messages queued per subscription before new ones are dropped (and counted).
    /// Default 8192; values below 1 are raised to 1.
    pub subscription_capacity: usize,
    /// The longest pause between two reconnect attempts. Default 2 s.
    pub max_reconnect_delay: Duration,
    /// How often the client pings the server when the connection is otherwise quiet.
    /// After about three intervals without an answer the connection is given up and
    /// reconnected: that is how a server that vanished without closing the socket (a
    /// partition, a frozen host) is noticed. Default 10 s.
    pub ping_interval: Duration,
    /// The longest a publish, request or subscribe waits for room in the client's bounded
    /// command queue before failing with [`BusError::Disconnected`]. The queue only stays
    /// full when the connection is dead and the client has not noticed yet, or is stalled.
    /// Default 500 ms.
    pub publish_timeout: Duration,
}

impl Default for NatsOptions {
    fn default() -> Self {
        Self {
            urls: Vec::new(),
            name: "switchboard".to_owned(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            subscription_capacity: 8192,
            max_reconnect_delay: Duration::from_secs(2),
            ping_interval: Duration::from_secs(10),
            publish_timeout: Duration::from_millis(500),
        }
    }
}

impl NatsOptions {
    /// Splits a comma-separated list of URLs (the `--nats` flag's form), trimming spaces
    /// and skipping empty entries.
    pub fn split_urls(list: &str) -> Vec<String> {
        list.split(',').map(str::trim).filter(|url| !url.is_empty()).map(str::to_owned).collect()
    }
}

// Hand-written so credentials in URLs never reach a log.
impl fmt::Debug for NatsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let urls: Vec<String> = self.urls.iter().map(|url| redact(url)).collect();
        f.debug_struct("NatsOptions")
            .field("urls", &urls)
            .field("name", &self.name)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("subscription_capacity", &self.subscription_capacity)
            .field("max_reconnect_delay", &self.max_reconnect_delay)
            .field("ping_interval", &self.ping_interval)
            .field("publish_timeout", &self.publish_timeout)
            .finish()
    }
}

/// Why [`NatsBus::connect`] failed. URLs in messages have their credentials hidden.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NatsConnectError {
    #[error("no nats url given; pass one or more, e.g. --nats nats://127.0.0.1:4222")]
    NoUrls,
    #[error("invalid nats url {url:?}: {reason}; expected nats://host:port or tls://host:port")]
    InvalidUrl { url: String, reason: String },
    #[error("nats at {urls} refused the credentials ({reason}); check the user and password in the url")]
    Refused { urls: String, reason: String },
    #[error("cannot reach nats at {urls} ({reason}); check that nats-server runs there and the address is right")]
    Unreachable { urls: String, reason: String },
}

/// The bus over NATS. Cheap to clone: clones share the one connection. Dropping the last
/// handle (and every [`Subscription`]) closes the connection.
#[derive(Clone)]
pub struct NatsBus {
    inner: Arc<Inner>,
}

struct Inner {
    client: async_nats::Client,
    options: NatsOptions,
    connected: Arc<watch::Sender<bool>>,
    replies: Arc<Replies>,
    counters: Arc<Counters>,
    /// The monitor and the reply router; they stop when the last handle goes.
    _tasks: [AbortOnDropHandle<()>; 2],
}

/// Totals over every subscription of the bus.
#[derive(Debug, Default)]
struct Counters {
    delivered: AtomicU64,
    dropped: AtomicU64,
    /// Messages the client itself dropped before our forwarders saw them (its own queue
    /// per subscription was full); reported by its slow-consumer events.
    client_dropped: AtomicU64,
}

/// Requests waiting for their reply, by the number ending their reply subject.
#[derive(Debug)]
struct Replies {
    /// This connection's inbox, `_INBOX.<id>`; reply subjects are `<prefix>.<n>`.
    prefix: String,
    next_token: AtomicU64,
    waiting: Mutex<HashMap<u64, oneshot::Sender<Result<Bytes, BusError>>>>,
}

impl NatsBus {
    /// Connects to one of `options.urls` and starts the tasks that keep the bus
    /// connected. The first connection must succeed (each URL is tried once, bounded by
    /// `connect_timeout`), so a wrong address fails at startup; after that the bus
    /// reconnects by itself, forever.
    pub async fn connect(mut options: NatsOptions) -> Result<Self, NatsConnectError> {
        options.subscription_capacity = options.subscription_capacity.max(1);
        let addresses = parse_urls(&options.urls)?;
        let shown_urls = options.urls.iter().map(|url| redact(url)).collect::<Vec<_>>().join(",");
        let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
        let max_reconnect_delay = options.max_reconnect_delay;
        let client = async_nats::ConnectOptions::new()
            .name(&options.name)
            .connection_timeout(options.connect_timeout)
            .ping_interval(options.ping_interval)
            .subscription_capacity(options.subscription_capacity.max(MIN_CLIENT_SUBSCRIPTION_QUEUE))
            .max_reconnects(None)
            .reconnect_delay_callback(move |attempt| reconnect_delay(attempt, max_reconnect_delay))
            .event_callback(move |event| {
                // The monitor task does the work; a full queue only loses an event the
                // monitor's periodic state check makes up for.
                let _ = events_tx.try_send(event);
                std::future::ready(())
            })
            .connect(addresses)
            .await
            .map_err(|error| connect_error(&error, &shown_urls))?;
        let server = client.server_info();
        tracing::info!(
            bus.urls = %shown_urls,
            nats.server = %server.server_name,
            nats.version = %server.version,
            nats.max_payload = server.max_payload,
            "bus connected to nats"
        );

        let replies = Arc::new(Replies {
            prefix: client.new_inbox(),
            next_token: AtomicU64::new(1),
            waiting: Mutex::new(HashMap::new()),
        });
        let reply_subscriber = client
            .subscribe(format!("{}.*", replies.prefix))
            .await
            .map_err(|error| NatsConnectError::Unreachable { urls: shown_urls.clone(), reason: error.to_string() })?;
        let connected = Arc::new(watch::Sender::new(true));
        let counters = Arc::new(Counters::default());
        let monitor = Monitor {
            client: client.clone(),
            connected: Arc::clone(&connected),
            counters: Arc::clone(&counters),
            disconnected_at: None,
            last_reported: Instant::now(),
            previous_state: State::Connected,
        };
        let tasks = [
            AbortOnDropHandle::new(tokio::spawn(monitor.run(events_rx))),
            AbortOnDropHandle::new(tokio::spawn(route_replies(reply_subscriber, Arc::clone(&replies)))),
        ];
        let inner = Inner { client, options, connected, replies, counters, _tasks: tasks };
        Ok(Self { inner: Arc::new(inner) })
    }

    /// The timeout for requests whose caller has no better one
    /// ([`NatsOptions::request_timeout`]).
    pub fn request_timeout(&self) -> Duration {
        self.inner.options.request_timeout
    }

    /// The largest payload the server accepts (its `max_payload`).
    pub fn max_payload(&self) -> usize {
        self.inner.client.max_payload()
    }

    /// Messages handed to subscriptions so far.
    pub fn delivered(&self) -> u64 {
        self.inner.counters.delivered.load(Ordering::Relaxed)
    }

    /// Messages dropped so far because a subscription's queue was full (counted per
    /// subscription in [`Subscription::dropped`]), plus those the client itself reported
    /// dropping.
    pub fn dropped(&self) -> u64 {
        self.inner.counters.dropped.load(Ordering::Relaxed) + self.inner.counters.client_dropped.load(Ordering::Relaxed)
    }

    fn check_connected(&self) -> Result<(), BusError> {
        match self.inner.client.connection_state() {
            State::Connected => Ok(()),
            State::Disconnected | State::Pending => Err(BusError::Disconnected),
        }
    }

    fn check_outgoing(&self, subject: &str, payload: &Bytes) -> Result<(), BusError> {
        check_publish(subject, payload, self.inner.client.max_payload())?;
        self.check_connected()
    }

    /// Publishes with an optional reply subject, waiting at most `publish_timeout` for
    /// room in the client's queue.
    async fn send(&self, subject: &str, reply: Option<String>, payload: Bytes) -> Result<(), BusError> {
        let size = payload.len();
        let client = &self.inner.client;
        let sent = match reply {
            None => {
                tokio::time::timeout(self.inner.options.publish_timeout, client.publish(subject.to_owned(), payload))
                    .await
                    .map_err(|_| BusError::Disconnected)?
            }
            Some(reply) => tokio::time::timeout(
                self.inner.options.publish_timeout,
                client.publish_with_reply(subject.to_owned(), reply, payload),
            )
            .await
            .map_err(|_| BusError::Disconnected)?,
        };
        sent.map_err(|error| match error.kind() {
            async_nats::client::PublishErrorKind::MaxPayloadExceeded => {
                BusError::PayloadTooLarge { size, max: client.max_payload() }
            }
            // Subjects were validated with stricter rules; what is left is a closed client.
            async_nats::client::PublishErrorKind::InvalidSubject | async_nats::client::PublishErrorKind::Send => {
                BusError::Disconnected
            }
        })
    }

    /// Sends a message that comes back through the reply router: a request (to
    /// `subject`, replying to the inbox), or with no subject a marker to the inbox itself.
    async fn round_trip(&self, subject: Option<&str>, payload: Bytes, timeout: Duration) -> Result<Bytes, BusError> {
        let mut pending = self.inner.replies.wait();
        let inbox = self.inner.replies.subject(pending.token);
        match subject {
            Some(subject) => self.send(subject, Some(inbox), payload).await?,
            None => self.send(&inbox, None, payload).await?,
        }
        match tokio::time::timeout(timeout, &mut pending.receiver).await {
            Ok(Ok(outcome)) => outcome,
            // The router stopped: the client has closed.
            Ok(Err(_)) => Err(BusError::Disconnected),
            Err(_) => Err(BusError::Timeout),
        }
    }
}

#[async_trait]
impl Bus for NatsBus {
    fn name(&self) -> &'static str {
        "nats"
    }

    async fn publish(&self, subject: &str, payload: Bytes) -> Result<(), BusError> {
        self.check_outgoing(subject, &payload)?;
        self.send(subject, None, payload).await
    }

    async fn subscribe(&self, subject: &str) -> Result<Subscription, BusError> {
        check_pattern(subject)?;
        // Allowed while disconnected: the client sends the subscription on reconnect.
        let subscriber =
            tokio::time::timeout(self.inner.options.publish_timeout, self.inner.client.subscribe(subject.to_owned()))
                .await
                .map_err(|_| BusError::Disconnected)?
                .map_err(|_| BusError::Disconnected)?;
        let (sender, receiver) = mpsc::channel(self.inner.options.subscription_capacity);
        let dropped = Arc::new(AtomicU64::new(0));
        let forwarder = Forwarder {
            pattern: subject.to_owned(),
            sender,
            dropped: Arc::clone(&dropped),
            counters: Arc::clone(&self.inner.counters),
        };
        // Aborting the forwarder drops the client's subscriber, which unsubscribes.
        let task = tokio::spawn(forwarder.run(subscriber)).abort_handle();
        Ok(Subscription::new(subject, receiver, dropped, move || task.abort()))
    }

    async fn request(&self, subject: &str, payload: Bytes, timeout: Duration) -> Result<Bytes, BusError> {
        self.check_outgoing(subject, &payload)?;
        self.round_trip(Some(subject), payload, timeout).await
    }

    async fn flush(&self) -> Result<(), BusError> {
        self.check_connected()?;
        self.round_trip(None, Bytes::new(), self.inner.options.request_timeout).await.map(|_| ())
    }

    fn is_connected(&self) -> bool {
        self.check_connected().is_ok()
    }

    fn connected_watch(&self) -> watch::Receiver<bool> {
        self.inner.connected.subscribe()
    }
}

impl fmt::Debug for NatsBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsBus")
            .field("options", &self.inner.options)
            .field("state", &self.inner.client.connection_state())
            .field("inbox", &self.inner.replies.prefix)
            .finish_non_exhaustive()
    }
}

/// A request's claim on its reply; dropping it (on timeout or cancellation) forgets the
/// request, so a late reply finds nobody and nothing is left behind.
struct PendingReply<'a> {
    replies: &'a Replies,
    token: u64,
    receiver: oneshot::Receiver<Result<Bytes, BusError>>,
}

impl Drop for PendingReply<'_> {
    fn drop(&mut self) {
        self.replies.take(self.token);
    }
}

impl Replies {
    fn wait(&self) -> PendingReply<'_> {
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = oneshot::channel();
        self.lock().insert(token, sender);
        PendingReply { replies: self, token, receiver }
    }

    fn subject(&self, token: u64) -> String {
        format!("{}.{token}", self.prefix)
    }

    fn take(&self, token: u64) -> Option<oneshot::Sender<Result<Bytes, BusError>>> {
        self.lock().remove(&token)
    }

    // Insert and remove cannot leave the map half-updated, so a poisoned lock is safe
    // to keep using.
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Result<Bytes, BusError>>>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Hands each message on this connection's inbox to the request waiting for it.
async fn route_replies(mut subscriber: async_nats::Subscriber, replies: Arc<Replies>) {
    while let Some(message) = subscriber.next().await {
        let token = message.subject.rsplit('.').next().and_then(|token| token.parse::<u64>().ok());
        // A reply to a request that gave up already, or a duplicate: nobody waits.
        let Some(waiter) = token.and_then(|token| replies.take(token)) else { continue };
        let outcome = if message.status == Some(StatusCode::NO_RESPONDERS) {
            Err(BusError::NoResponders)
        } else {
            Ok(message.payload)
        };
        let _ = waiter.send(outcome);
    }
}

/// Moves messages from the client's subscriber into a [`Subscription`]'s queue.
struct Forwarder {
    pattern: String,
    sender: mpsc::Sender<BusMessage>,
    dropped: Arc<AtomicU64>,
    counters: Arc<Counters>,
}

impl Forwarder {
    async fn run(self, mut subscriber: async_nats::Subscriber) {
        while let Some(message) = subscriber.next().await {
            let message = BusMessage {
                subject: message.subject.to_string(),
                reply: message.reply.map(|reply| reply.to_string()),
                payload: message.payload,
            };
            let counter = match offer(&self.sender, message, &self.dropped, &self.pattern) {
                Offered::Queued => &self.counters.delivered,
                Offered::Dropped => &self.counters.dropped,
                Offered::Closed => return,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Follows the client's events and state: keeps the connection watch current and logs
/// every transition.
struct Monitor {
    client: async_nats::Client,
    connected: Arc<watch::Sender<bool>>,
    counters: Arc<Counters>,
    disconnected_at: Option<Instant>,
    last_reported: Instant,
    /// The state seen at the previous periodic check.
    previous_state: State,
}

impl Monitor {
    async fn run(mut self, mut events_rx: mpsc::Receiver<Event>) {
        let mut recheck = tokio::time::interval(STATE_RECHECK_PERIOD);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                event = events_rx.recv() => match event {
                    Some(event) => self.on_event(event),
                    None => return,
                },
                _ = recheck.tick() => self.recheck(),
            }
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Connected => self.set_connected(true),
            Event::Disconnected => self.set_connected(false),
            Event::ClientError(error) => {
                tracing::debug!(error = %error, "nats client error (reconnect attempt failed?)")
            }
            Event::ServerError(error) => tracing::warn!(error = %error, "nats server reported an error"),
            Event::LameDuckMode => {
                tracing::warn!("nats server is shutting down (lame duck mode); the bus will move to another server");
            }
            Event::SlowConsumer(sid) => {
                self.counters.client_dropped.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(nats.sid = sid, "nats client queue full, message dropped");
            }
            Event::Draining | Event::Closed => tracing::debug!(event = %event, "nats client closing"),
        }
    }

    /// Reads the state back from the client, and acts on it once it has held for a whole
    /// period: an event can be lost, and between an event and the state it announces the
    /// two briefly disagree.
    fn recheck(&mut self) {
        let state = self.client.connection_state();
        if state == self.previous_state {
            self.set_connected(state == State::Connected);
        }
        if let Some(since) = self.disconnected_at
            && self.last_reported.elapsed() >= STILL_DISCONNECTED_LOG_PERIOD
        {
            self.last_reported = Instant::now();
            tracing::warn!(outage_secs = since.elapsed().as_secs(), "bus still disconnected from nats, reconnecting");
        }
        self.previous_state = state;
    }

    fn set_connected(&mut self, connected: bool) {
        let changed = self.connected.send_if_modified(|current| std::mem::replace(current, connected) != connected);
        if !changed {
            return;
        }
        if connected {
            let outage = self.disconnected_at.take().map(|since| since.elapsed()).unwrap_or_default();
            let server = self.client.server_info();
            tracing::info!(
                outage_ms = outage.as_millis() as u64,
                nats.server = %server.server_name,
                "bus reconnected to nats"
            );
        } else {
            self.disconnected_at = Some(Instant::now());
            self.last_reported = Instant::now();
            tracing::warn!(
                "bus lost its nats connection; publishes fail until it is back, remote peers catch up by resume"
            );
        }
    }
}

/// The pause before reconnect attempt `attempt` (1-based; the count restarts after
/// every successful connection): none for the first, then doubling from
/// [`FIRST_RECONNECT_DELAY`] up to `max`, each a random point in the upper half of its
/// range.
fn reconnect_delay(attempt: usize, max: Duration) -> Duration {
    if attempt <= 1 {
        return Duration::ZERO;
    }
    let doublings = u32::try_from(attempt - 2).unwrap_or(u32::MAX).min(20);
    let ceiling = FIRST_RECONNECT_DELAY.saturating_mul(1 << doublings).min(max);
    let half = ceiling / 2;
    half + half.mul_f64(rand::random::<f64>())
}

/// Parses every URL, refusing the schemes this build cannot use.
fn parse_urls(urls: &[String]) -> Result<Vec<ServerAddr>, NatsConnectError> {
    if urls.is_empty() {
        return Err(NatsConnectError::NoUrls);
    }
    urls.iter()
        .map(|url| {
            let invalid = |reason: String| NatsConnectError::InvalidUrl { url: redact(url), reason };
            let address: ServerAddr = url.parse().map_err(|error: std::io::Error| invalid(error.to_string()))?;
            if address.is_websocket() {
                return Err(invalid("websocket urls are not supported; use nats:// or tls://".to_owned()));
            }
            Ok(address)
        })
        .collect()
}

fn connect_error(error: &async_nats::ConnectError, urls: &str) -> NatsConnectError {
    use async_nats::ConnectErrorKind as Kind;
    let reason = error.to_string();
    match error.kind() {
        Kind::ServerParse => NatsConnectError::InvalidUrl { url: urls.to_owned(), reason },
        Kind::Authentication | Kind::AuthorizationViolation => {
            NatsConnectError::Refused { urls: urls.to_owned(), reason }
        }
        Kind::Dns | Kind::TimedOut | Kind::Tls | Kind::Io | Kind::MaxReconnects => {
            NatsConnectError::Unreachable { urls: urls.to_owned(), reason }
        }
    }
}

/// The URL with any credentials replaced by `***`, for logs and errors.
fn redact(url: &str) -> String {
    let authority_start = url.find("://").map_or(0, |index| index + 3);
    let authority_end = url[authority_start..].find('/').map_or(url.len(), |index| authority_start + index);
    match url[authority_start..authority_end].rfind('@') {
        Some(at) => format!("{}***{}", &url[..authority_start], &url[authority_start + at..]),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_backoff_doubles_with_jitter_up_to_the_maximum() {
        let max = Duration::from_secs(2);
        assert_eq!(reconnect_delay(0, max), Duration::ZERO);
        assert_eq!(reconnect_delay(1, max), Duration::ZERO);
        for _ in 0..100 {
            let second = reconnect_delay(2, max);
            assert!((Duration::from_millis(25)..=Duration::from_millis(50)).contains(&second), "{second:?}");
            let third = reconnect_delay(3, max);
            assert!((Duration::from_millis(50)..=Duration::from_millis(100)).contains(&third), "{third:?}");
            let late = reconnect_delay(1_000_000, max);
            assert!((Duration::from_secs(1)..=max).contains(&late), "{late:?}");
        }
    }

    #[test]
    fn urls_are_split_and_checked() {
        assert_eq!(NatsOptions::split_urls(" nats://a:1, b:2 ,,"), vec!["nats://a:1".to_owned(), "b:2".to_owned()]);
        assert_eq!(parse_urls(&[]), Err(NatsConnectError::NoUrls));
        let parsed = parse_urls(&["127.0.0.1:4333".to_owned(), "tls://nats.example:4222".to_owned()]).unwrap();
        assert_eq!((parsed[0].host(), parsed[0].port()), ("127.0.0.1", 4333));
        assert!(parsed[1].tls_required());
        for bad in ["http://x:1", "ws://x:1", "nats://us er:pw@x:1 2"] {
            let error = parse_urls(&[bad.to_owned()]).unwrap_err();
            assert!(matches!(error, NatsConnectError::InvalidUrl { .. }), "{bad}: {error}");
            assert!(error.to_string().contains("expected nats://"), "{error}");
        }
    }

    #[test]
    fn credentials_never_show() {
        assert_eq!(redact("nats://user:secret@host:4222"), "nats://***@host:4222");
        assert_eq!(redact("user:secret@host:4222/x@y"), "***@host:4222/x@y");
        assert_eq!(redact("nats://host:4222"), "nats://host:4222");
        let options = NatsOptions { urls: vec!["nats://u:hunter2@h:1".to_owned()], ..Default::default() };
        let shown = format!("{options:?}");
        assert!(!shown.contains("hunter2") && shown.contains("***@h:1"), "{shown}");
        let error = parse_urls(&["nats://u:hunter2@h:1:2".to_owned()]).unwrap_err();
        assert!(!error.to_string().contains("hunter2"), "{error}");
    }

    #[tokio::test]
    async fn unreachable_server_fails_fast_with_advice() {
        // Nothing listens on a port we have just bound and released.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let options = NatsOptions {
            urls: vec![format!("nats://127.0.0.1:{port}")],
            connect_timeout: Duration::from_secs(2),
            ..Default::default()
        };
        let error =
            tokio::time::timeout(Duration::from_secs(10), NatsBus::connect(options)).await.unwrap().unwrap_err();
        assert!(matches!(error, NatsConnectError::Unreachable { .. }), "{error}");
        assert!(error.to_string().contains("check that nats-server runs"), "{error}");
    }
}
