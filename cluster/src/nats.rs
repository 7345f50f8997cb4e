//! [`NatsBus`]: the bus of a cluster, over NATS core (async-nats).
//!
//! One connection per process. The client reconnects forever (backoff up to
//! [`NatsOptions::max_reconnect_delay`], across every configured server), and each
//! disconnect and reconnect is logged and shown by [`Bus::connected_watch`].
//!
//! While the connection is down, async-nats would queue publishes in its client channel
//! and then make the publisher wait for room; a messaging server must not stall a
//! sequencer's fanout on the bus. So [`NatsBus::publish`] fails at once with
//! [`BusError::Disconnected`] while the client is not connected (and gives up on a
//! publish that cannot be queued within [`NatsOptions::publish_timeout`]): local
//! delivery carries on, remote devices catch up by resume.
//!
//! Each subscription is forwarded by a small task into the bounded [`Subscription`]
//! queue; when the consumer falls behind, messages are dropped and counted rather than
//! buffered without limit (NATS itself would eventually call it a slow consumer).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::client::{PublishErrorKind, RequestErrorKind};
use async_nats::connection::State;
use async_nats::{Client, ConnectOptions, Event, ServerAddr};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};

use crate::bus::{Bus, BusError, BusMessage, Subscription};
use crate::subject::{validate_pattern, validate_subject};

/// How to reach NATS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsOptions {
    /// Server URLs (`nats://host:port`); the client moves between them.
    pub urls: Vec<String>,
    /// The connection name shown in NATS monitoring: the node id.
    pub name: String,
    /// How long the first connection may take before start-up fails.
    pub connect_timeout: Duration,
    /// Messages queued per subscription before new ones are dropped.
    pub subscription_capacity: usize,
    /// The longest wait between reconnect attempts.
    pub max_reconnect_delay: Duration,
    /// How long a publish may wait for room in the client's queue.
    pub publish_timeout: Duration,
}

impl NatsOptions {
    /// Options for `urls` (comma-separated) with the defaults.
    pub fn new(urls: &str, name: impl Into<String>) -> Self {
        Self {
            urls: urls.split(',').map(str::trim).filter(|url| !url.is_empty()).map(str::to_owned).collect(),
            name: name.into(),
            connect_timeout: Duration::from_secs(5),
            subscription_capacity: 8_192,
            max_reconnect_delay: Duration::from_secs(2),
            publish_timeout: Duration::from_millis(500),
        }
    }
}

/// Why the bus could not start.
#[derive(Debug, thiserror::Error)]
pub enum NatsConnectError {
    #[error("invalid NATS url {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("cannot connect to NATS at {urls}: {source}; check that nats-server runs and is reachable")]
    Connect { urls: String, source: async_nats::ConnectError },
}

/// The NATS bus. Cheap to clone.
#[derive(Debug, Clone)]
pub struct NatsBus {
    client: Client,
    connected: watch::Receiver<bool>,
    options: Arc<NatsOptions>,
}

impl NatsBus {
    /// Connects (waiting up to `connect_timeout` for the first server).
    pub async fn connect(options: NatsOptions) -> Result<Self, NatsConnectError> {
        let addrs = options
            .urls
            .iter()
            .map(|url| {
                url.parse::<ServerAddr>()
                    .map_err(|error| NatsConnectError::InvalidUrl { url: url.clone(), reason: error.to_string() })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (state_tx, state_rx) = watch::channel(false);
        let state_tx = Arc::new(state_tx);
        let events = Arc::clone(&state_tx);
        let max_delay = options.max_reconnect_delay;
        let client = ConnectOptions::new()
            .name(&options.name)
            .connection_timeout(options.connect_timeout)
            .subscription_capacity(options.subscription_capacity)
            .max_reconnects(None)
            .reconnect_delay_callback(move |attempts| {
                // 0, 50 ms, 100 ms, 200 ms, ... up to the maximum.
                let exponent = u32::try_from(attempts.min(16)).unwrap_or(16);
                Duration::from_millis(25u64 << exponent).min(max_delay)
            })
            .event_callback(move |event| {
                let events = Arc::clone(&events);
                async move { on_event(&events, &event) }
            })
            .connect(addrs)
            .await
            .map_err(|source| NatsConnectError::Connect { urls: options.urls.join(","), source })?;
        // The Connected event may have fired before the callback was in place.
        if client.connection_state() == State::Connected {
            state_tx.send_replace(true);
        }
        tracing::info!(urls = %options.urls.join(","), name = %options.name, "connected to NATS");
        Ok(Self { client, connected: state_rx, options: Arc::new(options) })
    }

    fn check_connected(&self) -> Result<(), BusError> {
        if self.client.connection_state() == State::Connected { Ok(()) } else { Err(BusError::Disconnected) }
    }
}

fn on_event(state: &watch::Sender<bool>, event: &Event) {
    match event {
        Event::Connected => {
            tracing::info!("NATS connection up");
            state.send_replace(true);
        }
        Event::Disconnected => {
            tracing::warn!("NATS connection lost; reconnecting");
            state.send_replace(false);
        }
        Event::Closed => {
            tracing::warn!("NATS connection closed");
            state.send_replace(false);
        }
        Event::SlowConsumer(sid) => tracing::warn!(sid, "NATS: a subscription is a slow consumer, messages dropped"),
        Event::LameDuckMode => tracing::warn!("NATS server entering lame duck mode; the client will move"),
        Event::ServerError(error) => tracing::warn!(%error, "NATS server error"),
        Event::ClientError(error) => tracing::warn!(%error, "NATS client error"),
        Event::Draining => tracing::info!("NATS connection draining"),
    }
}

fn payload_too_large(client: &Client, size: usize) -> BusError {
    BusError::PayloadTooLarge { size, max: client.server_info().max_payload }
}

#[async_trait]
impl Bus for NatsBus {
    fn name(&self) -> &'static str {
        "nats"
    }

    async fn publish(&self, subject: &str, payload: Bytes) -> Result<(), BusError> {
        validate_subject(subject).map_err(|reason| BusError::InvalidSubject { subject: subject.to_owned(), reason })?;
        self.check_connected()?;
        let size = payload.len();
        match tokio::time::timeout(self.options.publish_timeout, self.client.publish(subject.to_owned(), payload)).await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) if error.kind() == PublishErrorKind::MaxPayloadExceeded => {
                Err(payload_too_large(&self.client, size))
            }
            Ok(Err(_)) | Err(_) => Err(BusError::Disconnected),
        }
    }

    async fn subscribe(&self, subject: &str) -> Result<Subscription, BusError> {
        validate_pattern(subject).map_err(|reason| BusError::InvalidSubject { subject: subject.to_owned(), reason })?;
        let mut subscriber = self.client.subscribe(subject.to_owned()).await.map_err(|_| BusError::Disconnected)?;
        let (sender, receiver) = mpsc::channel(self.options.subscription_capacity.max(1));
        let dropped = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&dropped);
        let pattern = subject.to_owned();
        let forward = tokio::spawn(async move {
            while let Some(message) = subscriber.next().await {
                let message = BusMessage {
                    subject: message.subject.to_string(),
                    payload: message.payload,
                    reply: message.reply.map(|reply| reply.to_string()),
                };
                match sender.try_send(message) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        if counter.fetch_add(1, Ordering::Relaxed) == 0 {
                            tracing::warn!(bus.pattern = %pattern, "bus subscriber is full, dropping messages");
                        }
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => break,
                }
            }
            // Dropping the subscriber unsubscribes it at the server.
        });
        let abort = forward.abort_handle();
        Ok(Subscription::new(subject, receiver, dropped, move || abort.abort()))
    }

    fn is_connected(&self) -> bool {
        self.client.connection_state() == State::Connected
    }

    fn connected_watch(&self) -> watch::Receiver<bool> {
        self.connected.clone()
    }

    async fn request(&self, subject: &str, payload: Bytes, timeout: Duration) -> Result<Bytes, BusError> {
        validate_subject(subject).map_err(|reason| BusError::InvalidSubject { subject: subject.to_owned(), reason })?;
        self.check_connected()?;
        let size = payload.len();
        let request = async_nats::Request::new().payload(payload).timeout(Some(timeout));
        // The client's own timeout covers the answer; this one covers a stalled queue.
        match tokio::time::timeout(
            timeout + self.options.publish_timeout,
            self.client.send_request(subject.to_owned(), request),
        )
        .await
        {
            Ok(Ok(message)) => Ok(message.payload),
            Ok(Err(error)) => Err(match error.kind() {
                RequestErrorKind::NoResponders => BusError::NoResponders,
                RequestErrorKind::TimedOut => BusError::Timeout,
                RequestErrorKind::MaxPayloadExceeded => payload_too_large(&self.client, size),
                _ => BusError::Disconnected,
            }),
            Err(_) => Err(BusError::Timeout),
        }
    }

    async fn flush(&self) -> Result<(), BusError> {
        self.check_connected()?;
        match tokio::time::timeout(self.options.connect_timeout, self.client.flush()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) | Err(_) => Err(BusError::Disconnected),
        }
    }
}
