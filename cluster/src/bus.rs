//! The bus between nodes: a publish/subscribe interface shaped like NATS core.
//!
//! Subjects are dot-separated tokens; subscriptions may use `*` (one token) and `>` (the
//! rest); see [`crate::subject`]. Delivery is best-effort and at-most-once, as in NATS
//! core: a message published while a peer is disconnected or too slow is lost. That is
//! by design. Durability comes from the store, and every client resumes from its cursor
//! on reconnect (DESIGN sections 3 and 4.6), so the bus only has to be fast.
//!
//! Requests are NATS core requests: [`Bus::request`] publishes with a fresh reply subject
//! (an inbox, `_INBOX.…`) and waits for the first message published to it. A responder
//! receives the request as a [`BusMessage`] whose `reply` names that inbox, and answers
//! with a plain [`Bus::publish`] to it. When nothing subscribes to the request's subject
//! the requester learns it at once ([`BusError::NoResponders`]) instead of waiting out
//! its timeout.
//!
//! The connection state is a watch ([`Bus::connected_watch`]), so the server can react
//! when the bus comes back after an outage (resubscribe, resynchronise presence).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use crate::subject::{SubjectError, validate_pattern, validate_subject};

/// A publish/subscribe bus. Implementations are cheap cloneable handles; share one per
/// process.
#[async_trait]
pub trait Bus: Send + Sync + fmt::Debug + 'static {
    /// A short name for logs and metrics (`"in-process"`, `"nats"`).
    fn name(&self) -> &'static str;

    /// Publishes `payload` on `subject` to every matching subscription. Never waits for
    /// subscribers: a subscriber that cannot keep up loses the message. `subject` may be
    /// the `reply` of a received request: that is how a responder answers.
    async fn publish(&self, subject: &str, payload: Bytes) -> Result<(), BusError>;

    /// Subscribes to a subject or wildcard pattern. The subscription ends when the
    /// returned [`Subscription`] is dropped.
    async fn subscribe(&self, subject: &str) -> Result<Subscription, BusError>;

    /// Sends one request and returns the first reply. Fails with
    /// [`BusError::NoResponders`] at once when no subscription matches `subject`, and
    /// with [`BusError::Timeout`] when nothing answers within `timeout` (a reply that
    /// arrives later is discarded).
    async fn request(&self, subject: &str, payload: Bytes, timeout: Duration) -> Result<Bytes, BusError>;

    /// Waits until everything this handle published before the call has reached the bus
    /// (for NATS: been processed by the server, so subscribers there will get it). For
    /// tests, and for shutdown, where a leave message must go out before the process
    /// exits.
    async fn flush(&self) -> Result<(), BusError>;

    /// Whether the bus can currently reach its peers. While it cannot, publishes fail
    /// with [`BusError::Disconnected`] and local delivery carries on without it.
    fn is_connected(&self) -> bool;

    /// The connection state, `true` while connected, as a watch: `changed()` wakes on
    /// every disconnect and reconnect, so the server can resynchronise when the bus comes
    /// back after an outage. Subscriptions survive an outage by themselves.
    fn connected_watch(&self) -> watch::Receiver<bool>;
}

/// Why a bus operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// The bus cannot reach its server (for NATS also: the client's bounded queue to the
    /// server stayed full for the publish timeout). Local delivery continues; remote
    /// recipients catch up by resume once the bus is back.
    #[error("bus is disconnected; remote peers will catch up by resume when it is back")]
    Disconnected,
    /// The subject (or pattern) breaks the subject rules.
    #[error("invalid subject {subject:?}: {reason}")]
    InvalidSubject { subject: String, reason: SubjectError },
    /// The payload is larger than the bus accepts (NATS' `max_payload`, 1 MiB by
    /// default); the caller should split it or send a reference instead.
    #[error("payload of {size} bytes exceeds the bus maximum of {max} bytes")]
    PayloadTooLarge { size: usize, max: usize },
    /// A request got no reply in time: the responder is slow, stuck or lost the request
    /// (the bus is best-effort). The caller may retry, or treat the peer as unavailable.
    #[error("bus request got no reply in time; retry, or treat the responder as unavailable")]
    Timeout,
    /// Nothing subscribes to the request's subject, so no reply can come: the peer is
    /// gone (or not yet there). The caller should re-resolve the peer instead of retrying.
    #[error("no subscriber for the bus request; the peer is gone, re-resolve it instead of retrying")]
    NoResponders,
}

/// One message received on a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusMessage {
    /// The subject it was published to (not the subscription's pattern).
    pub subject: String,
    /// Where to send the answer when the message is a request ([`Bus::request`]): publish
    /// the reply to this subject. `None` for a plain publish.
    pub reply: Option<String>,
    pub payload: Bytes,
}

/// A live subscription: a bounded stream of [`BusMessage`]s. Dropping it unsubscribes.
pub struct Subscription {
    subject: String,
    receiver: mpsc::Receiver<BusMessage>,
    dropped: Arc<AtomicU64>,
    unsubscribe: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl Subscription {
    /// For bus implementations: wraps the receiving half of the subscription's bounded
    /// channel. `dropped` is the count of messages the implementation discarded because
    /// the channel was full; `unsubscribe` runs once, when the subscription is dropped,
    /// and must not block (send a command to a background task if there is IO to do).
    pub fn new(
        subject: impl Into<String>,
        receiver: mpsc::Receiver<BusMessage>,
        dropped: Arc<AtomicU64>,
        unsubscribe: impl FnOnce() + Send + Sync + 'static,
    ) -> Self {
        Self { subject: subject.into(), receiver, dropped, unsubscribe: Some(Box::new(unsubscribe)) }
    }

    /// The next message, or `None` once the bus has shut down.
    pub async fn next(&mut self) -> Option<BusMessage> {
        self.receiver.recv().await
    }

    /// The next message if one is already queued, without waiting.
    pub fn try_next(&mut self) -> Option<BusMessage> {
        self.receiver.try_recv().ok()
    }

    /// The subject or pattern this subscription was made with.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// How many messages were discarded because this subscription's queue was full. A
    /// consumer that sees it grow has missed messages and should resynchronise from the
    /// store.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// For bus implementations: the checks of a publish (or request) before it goes out, the
/// same on every bus.
pub(crate) fn check_publish(subject: &str, payload: &Bytes, max_payload: usize) -> Result<(), BusError> {
    validate_subject(subject).map_err(|reason| BusError::InvalidSubject { subject: subject.to_owned(), reason })?;
    if payload.len() > max_payload {
        return Err(BusError::PayloadTooLarge { size: payload.len(), max: max_payload });
    }
    Ok(())
}

/// For bus implementations: the check of a subscription's pattern.
pub(crate) fn check_pattern(pattern: &str) -> Result<(), BusError> {
    validate_pattern(pattern).map_err(|reason| BusError::InvalidSubject { subject: pattern.to_owned(), reason })
}

/// What became of a message offered to a subscription's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Offered {
    Queued,
    /// The queue was full: the message is lost, and counted in `dropped`.
    Dropped,
    /// The subscription is being dropped.
    Closed,
}

/// For bus implementations: hands `message` to a subscription's queue without waiting.
/// A full queue loses the message; the loss is counted in `dropped` (the subscription's
/// counter), and the transition into dropping is logged, not every drop: a stuck
/// subscriber would otherwise flood the log.
pub(crate) fn offer(
    sender: &mpsc::Sender<BusMessage>,
    message: BusMessage,
    dropped: &AtomicU64,
    pattern: &str,
) -> Offered {
    match sender.try_send(message) {
        Ok(()) => Offered::Queued,
        Err(mpsc::error::TrySendError::Full(_)) => {
            if dropped.fetch_add(1, Ordering::Relaxed) == 0 {
                tracing::warn!(
                    bus.pattern = %pattern,
                    bus.capacity = sender.max_capacity(),
                    "bus subscriber is full, dropping messages"
                );
            }
            Offered::Dropped
        }
        Err(mpsc::error::TrySendError::Closed(_)) => Offered::Closed,
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(unsubscribe) = self.unsubscribe.take() {
            unsubscribe();
        }
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("subject", &self.subject)
            .field("queued", &self.receiver.len())
            .field("dropped", &self.dropped())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;

    #[tokio::test]
    async fn drop_runs_unsubscribe_once() {
        let unsubscribed = Arc::new(AtomicBool::new(false));
        let (sender, receiver) = mpsc::channel(1);
        let flag = Arc::clone(&unsubscribed);
        let mut subscription = Subscription::new("a.b", receiver, Arc::default(), move || {
            assert!(!flag.swap(true, Ordering::SeqCst), "unsubscribed twice");
        });
        let message = BusMessage { subject: "a.b".into(), reply: None, payload: Bytes::from_static(b"x") };
        sender.try_send(message).unwrap();
        assert_eq!(subscription.next().await.unwrap().payload, Bytes::from_static(b"x"));
        assert!(subscription.try_next().is_none());
        assert_eq!(subscription.subject(), "a.b");
        assert!(format!("{subscription:?}").contains("a.b"));
        drop(subscription);
        assert!(unsubscribed.load(Ordering::SeqCst));
    }

    #[test]
    fn errors_say_what_to_do() {
        let error = BusError::InvalidSubject { subject: "a..b".into(), reason: SubjectError::EmptyToken };
        assert!(error.to_string().contains("a..b"));
        assert!(BusError::Disconnected.to_string().contains("resume"));
        assert!(BusError::Timeout.to_string().contains("retry"));
        assert!(BusError::NoResponders.to_string().contains("re-resolve"));
    }
}
