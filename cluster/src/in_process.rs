//! [`InProcessBus`]: the bus of a single node, and of tests.
//!
//! It has the same semantics as NATS core, so the server cannot come to depend on
//! guarantees the real bus does not give: subjects and wildcards follow the NATS rules,
//! payloads are capped, and delivery is best-effort. Each subscription has a bounded
//! queue; a publish never waits, and a subscriber whose queue is full loses the message
//! (counted per subscription and in total). Durability comes from the store and resume,
//! never from the bus.
//!
//! Requests work as in NATS: the requester subscribes to a fresh inbox subject
//! (`_INBOX.<n>`, the NATS prefix, so a responder treats both buses alike), publishes with
//! that inbox as `reply`, and waits for the first message on it. A request that matches no
//! subscription fails at once with [`BusError::NoResponders`], as NATS 2.2+ reports it;
//! one whose responder's queue is full is lost and times out, as in NATS.
//!
//! The bus is always connected: [`Bus::connected_watch`] stays `true`, and
//! [`Bus::flush`] has nothing to wait for (a publish is done when it returns).
//!
//! Routing: subscriptions to plain subjects sit in a map keyed by subject (a publish
//! to a node inbox or user inbox is one lookup); the few wildcard subscriptions are
//! scanned on every publish. No lock or map guard is ever held across an `.await`: all
//! the work of a publish is synchronous.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use dashmap::DashMap;
use tokio::sync::{mpsc, watch};

use crate::bus::{Bus, BusError, BusMessage, Offered, Subscription, check_pattern, check_publish, offer};
use crate::subject::{is_wildcard, matches};

/// The first token of reply subjects, the same as NATS' default.
const INBOX_PREFIX: &str = "_INBOX";

/// Tuning of an [`InProcessBus`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InProcessOptions {
    /// Messages queued per subscription before new ones are dropped. Default 1024;
    /// values below 1 are raised to 1.
    pub subscription_capacity: usize,
    /// Largest payload accepted, in bytes. Default 1 MiB, the NATS server default, so a
    /// payload that works in a single node also works in a cluster.
    pub max_payload_bytes: usize,
}

impl Default for InProcessOptions {
    fn default() -> Self {
        Self { subscription_capacity: 1024, max_payload_bytes: 1024 * 1024 }
    }
}

/// An in-memory bus. Cheap to clone: clones share the same subscriptions.
#[derive(Debug, Clone)]
pub struct InProcessBus {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    options: InProcessOptions,
    /// Subscriptions to plain subjects, by subject.
    exact: DashMap<String, Vec<Entry>>,
    /// Subscriptions with a `*` or `>`; matched one by one.
    wildcards: RwLock<Vec<Entry>>,
    next_id: AtomicU64,
    delivered: AtomicU64,
    dropped: AtomicU64,
    /// Always `true`; kept so that every watch handed out stays open.
    connected: watch::Sender<bool>,
}

/// The publishing side of one subscription.
#[derive(Debug)]
struct Entry {
    id: u64,
    pattern: String,
    sender: mpsc::Sender<BusMessage>,
    dropped: Arc<AtomicU64>,
}

impl Default for InProcessBus {
    fn default() -> Self {
        Self::new()
    }
}

impl InProcessBus {
    /// A bus with the default options.
    pub fn new() -> Self {
        Self::with_options(InProcessOptions::default())
    }

    pub fn with_options(mut options: InProcessOptions) -> Self {
        // tokio's bounded channel panics on a capacity of 0.
        options.subscription_capacity = options.subscription_capacity.max(1);
        let shared = Shared {
            options,
            exact: DashMap::new(),
            wildcards: RwLock::new(Vec::new()),
            next_id: AtomicU64::new(1),
            delivered: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            connected: watch::Sender::new(true),
        };
        Self { shared: Arc::new(shared) }
    }

    /// Messages handed to subscriptions so far.
    pub fn delivered(&self) -> u64 {
        self.shared.delivered.load(Ordering::Relaxed)
    }

    /// Messages dropped so far because a subscription's queue was full.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Live subscriptions.
    pub fn subscription_count(&self) -> usize {
        let exact: usize = self.shared.exact.iter().map(|entries| entries.len()).sum();
        exact + self.shared.read_wildcards().len()
    }

    /// Subscribes to a pattern already validated.
    fn subscribe_unchecked(&self, subject: &str, capacity: usize) -> Subscription {
        let (sender, receiver) = mpsc::channel(capacity);
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let dropped = Arc::new(AtomicU64::new(0));
        let entry = Entry { id, pattern: subject.to_owned(), sender, dropped: Arc::clone(&dropped) };
        if is_wildcard(subject) {
            self.shared.write_wildcards().push(entry);
        } else {
            self.shared.exact.entry(subject.to_owned()).or_default().push(entry);
        }
        // The closure holds the shared state, not the handle: a subscription keeps the
        // bus alive, which is what its owner expects.
        let shared = Arc::clone(&self.shared);
        let pattern = subject.to_owned();
        Subscription::new(subject, receiver, dropped, move || shared.unsubscribe(id, &pattern))
    }
}

impl Shared {
    // A panic while holding this lock cannot leave the Vec half-updated (push and
    // retain either happen or do not), so a poisoned lock is safe to keep using.
    fn read_wildcards(&self) -> std::sync::RwLockReadGuard<'_, Vec<Entry>> {
        self.wildcards.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_wildcards(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Entry>> {
        self.wildcards.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands a message to every matching subscription without waiting, and returns how
    /// many matched (counting those whose queue was full).
    fn route(&self, subject: &str, reply: Option<&str>, payload: &Bytes) -> usize {
        let mut matched = 0;
        if let Some(entries) = self.exact.get(subject) {
            for entry in entries.iter() {
                self.offer(entry, subject, reply, payload);
                matched += 1;
            }
        }
        for entry in self.read_wildcards().iter().filter(|entry| matches(&entry.pattern, subject)) {
            self.offer(entry, subject, reply, payload);
            matched += 1;
        }
        matched
    }

    /// Hands one message to one subscription without waiting.
    fn offer(&self, entry: &Entry, subject: &str, reply: Option<&str>, payload: &Bytes) {
        let message =
            BusMessage { subject: subject.to_owned(), reply: reply.map(str::to_owned), payload: payload.clone() };
        let counter = match offer(&entry.sender, message, &entry.dropped, &entry.pattern) {
            Offered::Queued => &self.delivered,
            Offered::Dropped => &self.dropped,
            // The subscription is being dropped right now; its entry is about to go.
            Offered::Closed => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn unsubscribe(&self, id: u64, pattern: &str) {
        if is_wildcard(pattern) {
            self.write_wildcards().retain(|entry| entry.id != id);
            return;
        }
        // Remove the subject's key with its last subscription so the map does not grow
        // with every subject ever used.
        self.exact.remove_if_mut(pattern, |_, entries| {
            entries.retain(|entry| entry.id != id);
            entries.is_empty()
        });
    }
}

#[async_trait]
impl Bus for InProcessBus {
    fn name(&self) -> &'static str {
        "in-process"
    }

    async fn publish(&self, subject: &str, payload: Bytes) -> Result<(), BusError> {
        check_publish(subject, &payload, self.shared.options.max_payload_bytes)?;
        self.shared.route(subject, None, &payload);
        Ok(())
    }

    async fn subscribe(&self, subject: &str) -> Result<Subscription, BusError> {
        check_pattern(subject)?;
        Ok(self.subscribe_unchecked(subject, self.shared.options.subscription_capacity))
    }

    async fn request(&self, subject: &str, payload: Bytes, timeout: Duration) -> Result<Bytes, BusError> {
        check_publish(subject, &payload, self.shared.options.max_payload_bytes)?;
        let inbox = format!("{INBOX_PREFIX}.{}", self.shared.next_id.fetch_add(1, Ordering::Relaxed));
        // Only the first reply counts, so one slot is enough; dropping the subscription on
        // return discards any later one.
        let mut replies = self.subscribe_unchecked(&inbox, 1);
        if self.shared.route(subject, Some(&inbox), &payload) == 0 {
            return Err(BusError::NoResponders);
        }
        match tokio::time::timeout(timeout, replies.next()).await {
            Ok(Some(reply)) => Ok(reply.payload),
            // `replies` holds the bus, so its channel cannot close before it is dropped.
            Ok(None) | Err(_) => Err(BusError::Timeout),
        }
    }

    async fn flush(&self) -> Result<(), BusError> {
        Ok(())
    }

    fn is_connected(&self) -> bool {
        true
    }

    fn connected_watch(&self) -> watch::Receiver<bool> {
        self.shared.connected.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn payload(text: &'static str) -> Bytes {
        Bytes::from_static(text.as_bytes())
    }

    #[tokio::test]
    async fn exact_delivery() {
        let bus = InProcessBus::new();
        let mut inbox = bus.subscribe("sb.node.n1").await.unwrap();
        let mut other = bus.subscribe("sb.node.n2").await.unwrap();
        bus.publish("sb.node.n1", payload("hi")).await.unwrap();
        let message = inbox.next().await.unwrap();
        assert_eq!(message, BusMessage { subject: "sb.node.n1".into(), reply: None, payload: payload("hi") });
        assert!(other.try_next().is_none());
        assert_eq!(bus.delivered(), 1);
    }

    #[tokio::test]
    async fn every_subscriber_of_a_subject_gets_a_copy() {
        let bus = InProcessBus::new();
        let mut first = bus.subscribe("sb.presence").await.unwrap();
        let mut second = bus.subscribe("sb.presence").await.unwrap();
        bus.publish("sb.presence", payload("p")).await.unwrap();
        assert_eq!(first.next().await.unwrap().payload, payload("p"));
        assert_eq!(second.next().await.unwrap().payload, payload("p"));
    }

    #[tokio::test]
    async fn wildcard_delivery() {
        let bus = InProcessBus::new();
        let mut one_token = bus.subscribe("sb.node.*").await.unwrap();
        let mut the_rest = bus.subscribe("sb.>").await.unwrap();
        bus.publish("sb.node.n1", payload("1")).await.unwrap();
        bus.publish("sb.node.n1.extra", payload("2")).await.unwrap();
        bus.publish("other.node.n1", payload("3")).await.unwrap();

        let message = one_token.next().await.unwrap();
        assert_eq!((message.subject.as_str(), message.payload), ("sb.node.n1", payload("1")));
        assert!(one_token.try_next().is_none());
        assert_eq!(the_rest.next().await.unwrap().payload, payload("1"));
        assert_eq!(the_rest.next().await.unwrap().payload, payload("2"));
        assert!(the_rest.try_next().is_none());
    }

    #[tokio::test]
    async fn unsubscribes_on_drop() {
        let bus = InProcessBus::new();
        let exact = bus.subscribe("a.b").await.unwrap();
        let wildcard = bus.subscribe("a.*").await.unwrap();
        let mut survivor = bus.subscribe("a.b").await.unwrap();
        assert_eq!(bus.subscription_count(), 3);
        drop(exact);
        drop(wildcard);
        assert_eq!(bus.subscription_count(), 1);
        bus.publish("a.b", payload("x")).await.unwrap();
        assert_eq!(survivor.next().await.unwrap().payload, payload("x"));
        assert_eq!(bus.delivered(), 1);
        drop(survivor);
        assert_eq!(bus.subscription_count(), 0);
        assert!(bus.shared.exact.is_empty(), "empty subjects are removed from the map");
    }

    #[tokio::test]
    async fn a_full_subscriber_drops_without_blocking_the_publisher() {
        let bus = InProcessBus::with_options(InProcessOptions { subscription_capacity: 2, ..Default::default() });
        let mut slow = bus.subscribe("feed").await.unwrap();
        let mut fast = bus.subscribe("feed").await.unwrap();
        let publish_all = async {
            for _ in 0..10 {
                bus.publish("feed", payload("m")).await.unwrap();
                // The fast subscriber keeps up; the slow one never reads.
                fast.next().await.unwrap();
            }
        };
        tokio::time::timeout(Duration::from_secs(5), publish_all).await.expect("publisher was blocked");
        assert_eq!(slow.dropped(), 8);
        assert_eq!(fast.dropped(), 0);
        assert_eq!(bus.dropped(), 8);
        assert_eq!(bus.delivered(), 12);
        assert!(slow.try_next().is_some());
        assert!(slow.try_next().is_some());
        assert!(slow.try_next().is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_concurrent_publishers() {
        const PUBLISHERS: u64 = 8;
        const MESSAGES: u64 = 500;
        let bus = InProcessBus::with_options(InProcessOptions {
            subscription_capacity: (PUBLISHERS * MESSAGES) as usize,
            ..Default::default()
        });
        let mut exact = bus.subscribe("load.test").await.unwrap();
        let mut wildcard = bus.subscribe("load.*").await.unwrap();
        let mut tasks = Vec::new();
        for publisher in 0..PUBLISHERS {
            let bus = bus.clone();
            tasks.push(tokio::spawn(async move {
                for index in 0..MESSAGES {
                    let payload = Bytes::from(format!("{publisher}:{index}"));
                    bus.publish("load.test", payload).await.unwrap();
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        for subscription in [&mut exact, &mut wildcard] {
            // Each publisher's messages arrive in the order it sent them.
            let mut next_index = vec![0u64; PUBLISHERS as usize];
            for _ in 0..PUBLISHERS * MESSAGES {
                let message = subscription.next().await.unwrap();
                let text = std::str::from_utf8(&message.payload).unwrap();
                let (publisher, index) = text.split_once(':').unwrap();
                let publisher: usize = publisher.parse().unwrap();
                assert_eq!(index.parse::<u64>().unwrap(), next_index[publisher]);
                next_index[publisher] += 1;
            }
            assert!(subscription.try_next().is_none());
        }
        assert_eq!(bus.dropped(), 0);
    }

    #[tokio::test]
    async fn invalid_subjects_and_oversized_payloads_are_refused() {
        let bus = InProcessBus::with_options(InProcessOptions { max_payload_bytes: 4, ..Default::default() });
        assert!(matches!(bus.publish("a.*", payload("x")).await, Err(BusError::InvalidSubject { .. })));
        assert!(matches!(bus.publish("", payload("x")).await, Err(BusError::InvalidSubject { .. })));
        assert!(matches!(bus.subscribe("a.>.b").await, Err(BusError::InvalidSubject { .. })));
        assert_eq!(bus.publish("a", payload("12345")).await, Err(BusError::PayloadTooLarge { size: 5, max: 4 }));
    }

    #[tokio::test]
    async fn request_and_reply() {
        let bus = InProcessBus::new();
        let mut service = bus.subscribe("svc.echo").await.unwrap();
        let responder = tokio::spawn({
            let bus = bus.clone();
            async move {
                let request = service.next().await.unwrap();
                let reply = request.reply.unwrap();
                assert!(reply.starts_with("_INBOX."), "{reply}");
                bus.publish(&reply, request.payload).await.unwrap();
                // Only the first answer counts; a second one goes nowhere.
                bus.publish(&reply, payload("late")).await.unwrap();
            }
        });
        let answer = bus.request("svc.echo", payload("ping"), Duration::from_secs(5)).await.unwrap();
        assert_eq!(answer, payload("ping"));
        responder.await.unwrap();
        assert_eq!(bus.subscription_count(), 0, "the reply inbox is unsubscribed");
    }

    #[tokio::test(start_paused = true)]
    async fn request_without_subscriber_or_answer() {
        let bus = InProcessBus::new();
        let started = tokio::time::Instant::now();
        assert_eq!(bus.request("nobody", payload("x"), Duration::from_secs(5)).await, Err(BusError::NoResponders));
        assert_eq!(started.elapsed(), Duration::ZERO, "no responders is reported at once");

        let _silent = bus.subscribe("silent.*").await.unwrap();
        assert_eq!(bus.request("silent.one", payload("x"), Duration::from_secs(5)).await, Err(BusError::Timeout));
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert_eq!(bus.subscription_count(), 1, "the reply inbox is unsubscribed");
        assert!(matches!(
            bus.request("a.*", payload("x"), Duration::from_secs(1)).await,
            Err(BusError::InvalidSubject { .. })
        ));
    }

    #[tokio::test]
    async fn always_connected() {
        let bus = InProcessBus::new();
        let watch = bus.connected_watch();
        assert!(*watch.borrow());
        assert_eq!(bus.flush().await, Ok(()));
        drop(bus);
        assert!(*watch.borrow());
    }

    #[tokio::test]
    async fn works_as_a_trait_object() {
        let bus: Arc<dyn Bus> = Arc::new(InProcessBus::new());
        assert_eq!(bus.name(), "in-process");
        assert!(bus.is_connected());
        let mut subscription = bus.subscribe("x").await.unwrap();
        bus.publish("x", payload("y")).await.unwrap();
        assert_eq!(subscription.next().await.unwrap().payload, payload("y"));
    }
}
