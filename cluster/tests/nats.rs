//! The bus against real `nats-server` processes, and the same behavioural checks on the
//! in-process bus, so both implementations keep one set of semantics.
//!
//! Each check runs twice (see [`on_both_buses!`]): on two [`NatsBus`] clients of one
//! server of its own (a publisher and a subscriber, as two nodes would be), and on one
//! [`InProcessBus`] shared by both roles. The tests that take the server away (killed,
//! frozen, restarted) only apply to NATS. The server binary comes from
//! `SWITCHBOARD_NATS_SERVER` (`tests/nats/setup.sh` installs it); without it these tests
//! fail and say so.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

// The harness lives beside this file (a test's crate root looks for modules in tests/).
#[path = "nats/server.rs"]
mod server;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use switchboard_cluster::{Bus, BusError, InProcessBus, InProcessOptions, NatsBus, NatsOptions, Subscription};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::server::NatsServer;

/// Every subscription's queue in these tests: small, so a slow subscriber overflows fast.
const CAPACITY: usize = 4;
/// The bound on every wait for something that should happen.
const PATIENCE: Duration = Duration::from_secs(10);
/// "At once": for failures that must not wait on the network.
const PROMPTLY: Duration = Duration::from_millis(100);

/// A publishing and a subscribing side (two nodes), and what keeps them running.
struct Buses {
    publisher: Arc<dyn Bus>,
    subscriber: Arc<dyn Bus>,
    _server: Option<NatsServer>,
}

impl Buses {
    fn in_process() -> Self {
        let bus =
            InProcessBus::with_options(InProcessOptions { subscription_capacity: CAPACITY, ..Default::default() });
        Self { publisher: Arc::new(bus.clone()), subscriber: Arc::new(bus), _server: None }
    }

    async fn nats() -> Self {
        let server = NatsServer::start().await;
        Self {
            publisher: Arc::new(connect(&server, "publisher").await),
            subscriber: Arc::new(connect(&server, "subscriber").await),
            _server: Some(server),
        }
    }
}

/// Shows the bus's logs in failing tests' output (and with `--nocapture`); the level
/// comes from `RUST_LOG`, by default `info`.
fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
}

fn options(server: &NatsServer, name: &str) -> NatsOptions {
    NatsOptions {
        urls: vec![server.url()],
        name: name.to_owned(),
        subscription_capacity: CAPACITY,
        // Quick to come back in the outage tests.
        max_reconnect_delay: Duration::from_millis(100),
        ..Default::default()
    }
}

async fn connect(server: &NatsServer, name: &str) -> NatsBus {
    init_logs();
    NatsBus::connect(options(server, name)).await.unwrap()
}

fn bytes(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

/// The next message, within [`PATIENCE`].
async fn next(subscription: &mut Subscription) -> (String, Bytes) {
    let message = tokio::time::timeout(PATIENCE, subscription.next())
        .await
        .unwrap_or_else(|_| panic!("nothing arrived on {} within {PATIENCE:?}", subscription.subject()))
        .expect("the bus shut down");
    (message.subject, message.payload)
}

/// Waits until the watch shows `connected`, within [`PATIENCE`].
async fn wait_connected(watch: &mut watch::Receiver<bool>, connected: bool) {
    tokio::time::timeout(PATIENCE, watch.wait_for(|now| *now == connected))
        .await
        .unwrap_or_else(|_| panic!("the bus did not become connected={connected} within {PATIENCE:?}"))
        .unwrap();
}

/// Runs each check, an `async fn(Buses)`, as a test on each implementation.
macro_rules! on_both_buses {
    ($($check:ident),* $(,)?) => {
        mod in_process {
            $(
                #[tokio::test]
                async fn $check() {
                    super::$check(super::Buses::in_process()).await;
                }
            )*
        }
        mod nats {
            $(
                #[tokio::test]
                async fn $check() {
                    super::$check(super::Buses::nats().await).await;
                }
            )*
        }
    };
}

on_both_buses!(
    wildcards,
    request_and_reply,
    concurrent_requests_get_their_own_replies,
    no_responders_at_once,
    timeout_when_nobody_answers,
    slow_subscriber_drops_and_counts,
    dropping_a_subscription_unsubscribes,
    payload_limit,
    connected_and_flushed,
);

async fn wildcards(buses: Buses) {
    let Buses { publisher, subscriber, .. } = buses;
    let mut exact = subscriber.subscribe("w.a").await.unwrap();
    let mut one = subscriber.subscribe("w.*").await.unwrap();
    let mut rest = subscriber.subscribe("w.>").await.unwrap();
    let mut first = subscriber.subscribe("*.a").await.unwrap();
    // Once the subscriber's flush returns, the server has its subscriptions.
    subscriber.flush().await.unwrap();
    for (subject, payload) in [("w.a", "1"), ("w.a.b", "2"), ("x.a", "3"), ("w", "4"), ("w.a", "end")] {
        publisher.publish(subject, bytes(payload)).await.unwrap();
    }
    // One publisher's messages arrive in order, so once "end" is in, nothing else that
    // matched can still be on its way.
    let expected: [(&mut Subscription, &[(&str, &str)]); 4] = [
        (&mut exact, &[("w.a", "1"), ("w.a", "end")]),
        (&mut one, &[("w.a", "1"), ("w.a", "end")]),
        (&mut rest, &[("w.a", "1"), ("w.a.b", "2"), ("w.a", "end")]),
        (&mut first, &[("w.a", "1"), ("x.a", "3"), ("w.a", "end")]),
    ];
    for (subscription, messages) in expected {
        for &(subject, payload) in messages {
            assert_eq!(next(subscription).await, (subject.to_owned(), bytes(payload)), "on {}", subscription.subject());
        }
        assert!(subscription.try_next().is_none(), "more arrived on {}", subscription.subject());
        assert_eq!(subscription.dropped(), 0);
    }
}

async fn request_and_reply(buses: Buses) {
    let Buses { publisher, subscriber, .. } = buses;
    let mut service = subscriber.subscribe("svc.upper").await.unwrap();
    subscriber.flush().await.unwrap();
    let responder = tokio::spawn(async move {
        let request = tokio::time::timeout(PATIENCE, service.next()).await.unwrap().unwrap();
        assert_eq!(request.subject, "svc.upper");
        let reply = request.reply.expect("a request carries its reply subject");
        assert!(reply.starts_with("_INBOX."), "{reply}");
        let answer = String::from_utf8(request.payload.to_vec()).unwrap().to_uppercase();
        subscriber.publish(&reply, bytes(&answer)).await.unwrap();
        // Only the first answer counts; a second one is discarded.
        subscriber.publish(&reply, bytes("again")).await.unwrap();
    });
    let answer = publisher.request("svc.upper", bytes("hello"), PATIENCE).await.unwrap();
    assert_eq!(answer, bytes("HELLO"));
    tokio::time::timeout(PATIENCE, responder).await.unwrap().unwrap();

    // A plain publish carries no reply subject.
    let mut plain = publisher.subscribe("plain").await.unwrap();
    publisher.flush().await.unwrap();
    publisher.publish("plain", bytes("x")).await.unwrap();
    let message = tokio::time::timeout(PATIENCE, plain.next()).await.unwrap().unwrap();
    assert_eq!(message.reply, None);
}

async fn concurrent_requests_get_their_own_replies(buses: Buses) {
    const REQUESTS: usize = 20;
    let Buses { publisher, subscriber, .. } = buses;
    let mut service = subscriber.subscribe("svc.echo").await.unwrap();
    subscriber.flush().await.unwrap();
    // Answers in reverse order of arrival, so replies cross.
    let responder = tokio::spawn(async move {
        let mut requests = Vec::new();
        while requests.len() < REQUESTS {
            // The queue holds only CAPACITY: take each request as it comes.
            requests.push(tokio::time::timeout(PATIENCE, service.next()).await.unwrap().unwrap());
        }
        for request in requests.into_iter().rev() {
            subscriber.publish(&request.reply.unwrap(), request.payload).await.unwrap();
        }
    });
    let mut requests = tokio::task::JoinSet::new();
    for index in 0..REQUESTS {
        let publisher = Arc::clone(&publisher);
        requests.spawn(async move {
            // Paced, so the small queue of the service never overflows.
            tokio::time::sleep(Duration::from_millis(10) * index as u32).await;
            let answer = publisher.request("svc.echo", bytes(&index.to_string()), PATIENCE).await.unwrap();
            assert_eq!(answer, bytes(&index.to_string()));
        });
    }
    while let Some(result) = requests.join_next().await {
        result.unwrap();
    }
    tokio::time::timeout(PATIENCE, responder).await.unwrap().unwrap();
}

async fn no_responders_at_once(buses: Buses) {
    let started = Instant::now();
    let outcome = buses.publisher.request("nobody.home", bytes("?"), PATIENCE).await;
    assert_eq!(outcome, Err(BusError::NoResponders));
    assert!(started.elapsed() < Duration::from_secs(1), "no responders took {:?}", started.elapsed());
}

async fn timeout_when_nobody_answers(buses: Buses) {
    let Buses { publisher, subscriber, .. } = buses;
    let mut silent = subscriber.subscribe("svc.silent").await.unwrap();
    subscriber.flush().await.unwrap();
    let timeout = Duration::from_millis(300);
    let started = Instant::now();
    assert_eq!(publisher.request("svc.silent", bytes("?"), timeout).await, Err(BusError::Timeout));
    let elapsed = started.elapsed();
    assert!(elapsed >= timeout && elapsed < timeout + Duration::from_secs(2), "timed out after {elapsed:?}");

    // The request did arrive; answering it now reaches nobody and harms nothing.
    let request = tokio::time::timeout(PATIENCE, silent.next()).await.unwrap().unwrap();
    subscriber.publish(&request.reply.unwrap(), bytes("too late")).await.unwrap();
    subscriber.flush().await.unwrap();
    assert_eq!(publisher.request("nobody.home", bytes("?"), PATIENCE).await, Err(BusError::NoResponders));
}

async fn slow_subscriber_drops_and_counts(buses: Buses) {
    const SENT: usize = 20;
    let Buses { publisher, subscriber, .. } = buses;
    let mut slow = subscriber.subscribe("feed.slow").await.unwrap();
    subscriber.flush().await.unwrap();
    let started = Instant::now();
    for index in 0..SENT {
        publisher.publish("feed.slow", bytes(&index.to_string())).await.unwrap();
    }
    assert!(started.elapsed() < Duration::from_secs(2), "the publisher waited for the slow subscriber");
    publisher.flush().await.unwrap();
    // The server hands the messages over asynchronously; the count settles when the last
    // one has been seen.
    let expected_drops = (SENT - CAPACITY) as u64;
    let deadline = Instant::now() + PATIENCE;
    while slow.dropped() < expected_drops {
        assert!(Instant::now() < deadline, "only {} drops counted within {PATIENCE:?}", slow.dropped());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The queue kept the oldest messages; the rest were dropped, not delayed.
    for index in 0..CAPACITY {
        assert_eq!(slow.try_next().map(|message| message.payload), Some(bytes(&index.to_string())));
    }
    assert!(slow.try_next().is_none());
    assert_eq!(slow.dropped(), expected_drops);

    // Once drained it receives again.
    publisher.publish("feed.slow", bytes("fresh")).await.unwrap();
    assert_eq!(next(&mut slow).await.1, bytes("fresh"));
}

async fn dropping_a_subscription_unsubscribes(buses: Buses) {
    let Buses { publisher, subscriber, .. } = buses;
    let service = subscriber.subscribe("svc.gone").await.unwrap();
    subscriber.flush().await.unwrap();
    drop(service);
    // For NATS the unsubscribe reaches the server shortly after the drop; once it has,
    // requests learn that nobody listens.
    let deadline = Instant::now() + PATIENCE;
    loop {
        subscriber.flush().await.unwrap();
        match publisher.request("svc.gone", bytes("?"), Duration::from_millis(200)).await {
            Err(BusError::NoResponders) => break,
            Err(BusError::Timeout) => assert!(Instant::now() < deadline, "still subscribed after {PATIENCE:?}"),
            other => panic!("unexpected {other:?}"),
        }
    }
}

async fn payload_limit(buses: Buses) {
    // 1 MiB is the NATS server's default, and the in-process bus's.
    const MAX: usize = 1024 * 1024;
    let Buses { publisher, subscriber, .. } = buses;
    let mut big = subscriber.subscribe("big").await.unwrap();
    subscriber.flush().await.unwrap();
    publisher.publish("big", Bytes::from(vec![7; MAX])).await.unwrap();
    assert_eq!(next(&mut big).await.1.len(), MAX);
    let too_large = Bytes::from(vec![7; MAX + 1]);
    let refused = Err(BusError::PayloadTooLarge { size: MAX + 1, max: MAX });
    assert_eq!(publisher.publish("big", too_large.clone()).await, refused);
    assert_eq!(publisher.request("big", too_large, PATIENCE).await.map(|_| ()), refused);
    assert!(matches!(publisher.publish("big.*", bytes("x")).await, Err(BusError::InvalidSubject { .. })));
    assert!(matches!(publisher.subscribe("big..x").await, Err(BusError::InvalidSubject { .. })));
}

async fn connected_and_flushed(buses: Buses) {
    for bus in [&buses.publisher, &buses.subscriber] {
        assert!(bus.is_connected());
        assert!(*bus.connected_watch().borrow());
        let started = Instant::now();
        bus.flush().await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}

/// NATS killed: the bus says so, fails fast, and comes back by itself when the server
/// does, subscriptions included (also one made during the outage).
#[tokio::test]
async fn nats_outage_and_recovery() {
    let mut server = NatsServer::start().await;
    let node_a = connect(&server, "node-a").await;
    let node_b = connect(&server, "node-b").await;
    let mut inbox = node_a.subscribe("sb.node.a").await.unwrap();
    node_a.flush().await.unwrap();
    node_b.publish("sb.node.a", bytes("before")).await.unwrap();
    assert_eq!(next(&mut inbox).await.1, bytes("before"));
    let mut a_connected = node_a.connected_watch();
    let mut b_connected = node_b.connected_watch();
    assert!(*a_connected.borrow() && *b_connected.borrow());

    server.kill();
    wait_connected(&mut a_connected, false).await;
    wait_connected(&mut b_connected, false).await;
    assert!(!node_a.is_connected());
    for bus in [&node_a, &node_b] {
        let started = Instant::now();
        assert_eq!(bus.publish("sb.node.a", bytes("during")).await, Err(BusError::Disconnected));
        assert_eq!(bus.request("sb.node.a", bytes("during"), PATIENCE).await, Err(BusError::Disconnected));
        assert_eq!(bus.flush().await, Err(BusError::Disconnected));
        assert!(started.elapsed() < PROMPTLY, "failing while disconnected took {:?}", started.elapsed());
    }
    // Subscribing is allowed during the outage; it reaches the server on reconnect.
    let mut late = node_a.subscribe("sb.node.late").await.unwrap();

    server.restart().await;
    wait_connected(&mut a_connected, true).await;
    wait_connected(&mut b_connected, true).await;
    assert!(node_a.is_connected() && node_b.is_connected());
    node_a.flush().await.unwrap();
    node_b.publish("sb.node.a", bytes("after")).await.unwrap();
    node_b.publish("sb.node.late", bytes("late")).await.unwrap();
    assert_eq!(next(&mut inbox).await.1, bytes("after"), "the old subscription receives again");
    assert_eq!(next(&mut late).await.1, bytes("late"), "the outage's subscription works");
    // Nothing published during the outage was held back and delivered late.
    assert!(inbox.try_next().is_none());
}

/// A server that stops answering without closing its sockets (as across a network
/// partition) is noticed by the client's pings.
#[tokio::test]
async fn frozen_nats_is_noticed_by_pings() {
    let server = NatsServer::start().await;
    let options = NatsOptions {
        ping_interval: Duration::from_millis(200),
        connect_timeout: Duration::from_millis(500),
        ..options(&server, "node-a")
    };
    init_logs();
    let node = NatsBus::connect(options).await.unwrap();
    let mut inbox = node.subscribe("sb.node.a").await.unwrap();
    node.flush().await.unwrap();
    let mut connected = node.connected_watch();

    server.freeze(true);
    // Two unanswered pings, then the connection is given up.
    wait_connected(&mut connected, false).await;
    let started = Instant::now();
    assert_eq!(node.publish("sb.node.a", bytes("during")).await, Err(BusError::Disconnected));
    assert!(started.elapsed() < PROMPTLY);

    server.freeze(false);
    wait_connected(&mut connected, true).await;
    node.flush().await.unwrap();
    node.publish("sb.node.a", bytes("after")).await.unwrap();
    assert_eq!(next(&mut inbox).await.1, bytes("after"));
}

/// The connection is named after the node, for NATS monitoring, and the bus reports the
/// server's limits.
#[tokio::test]
async fn nats_bus_reports_its_server() {
    let server = NatsServer::start().await;
    let node = connect(&server, "node-7").await;
    assert_eq!(node.name(), "nats");
    assert_eq!(node.max_payload(), 1024 * 1024);
    assert_eq!(node.request_timeout(), NatsOptions::default().request_timeout);
    let shown = format!("{node:?}");
    assert!(shown.contains("node-7") && shown.contains("_INBOX."), "{shown}");
}
