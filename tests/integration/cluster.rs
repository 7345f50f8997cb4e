//! A cluster of real switchboard processes over a real nats-server and the test
//! Cassandra: cross-node delivery, presence across nodes, a node killed mid-traffic,
//! NATS killed and restarted mid-traffic.
//!
//! Each test starts its own nats-server and three nodes sharing one fresh keyspace,
//! with short membership timings (heartbeats every 200 ms, down after 1.5 s).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchboard_cluster::membership::rendezvous_owner;

use crate::assert_eventually;
use crate::support::client::TestClient;
use crate::support::http;
use crate::support::nats::NatsServer;
use crate::support::server::{Options, TestServer};
use crate::support::token::ADMIN_TOKEN;

const NODES: usize = 3;
const CONFIG: &str = r#"
[cluster]
heartbeat_interval_ms = 200
down_after_ms = 1500
gone_after_ms = 20000
handover_wait_ms = 300
forward_timeout_ms = 3000
resync_spread_ms = 300

[presence]
offline_debounce_ms = 300

[cql]
migrate_on_start = true
request_timeout_ms = 5000
bucket_size = 64
"#;

struct TestCluster {
    nats: NatsServer,
    nodes: Vec<TestServer>,
}

impl TestCluster {
    /// NATS and three nodes on one keyspace, formed (every node sees every other).
    async fn start() -> Self {
        let nats = NatsServer::start();
        let keyspace = crate::support::cql::fresh_keyspace("cluster");
        let store = format!("{}/{keyspace}", crate::support::cql::base_url());
        // One after the other: the first creates the schema.
        let nodes = (1..=NODES)
            .map(|index| {
                TestServer::start_with(Options {
                    args: ["--nats", &nats.url(), "--node-id", &format!("n{index}"), "--store", &store]
                        .map(String::from)
                        .to_vec(),
                    config: CONFIG.to_owned(),
                    ..Options::default()
                })
            })
            .collect();
        let cluster = TestCluster { nats, nodes };
        cluster.wait_live(NODES).await;
        cluster
    }

    fn addr(&self, index: usize) -> SocketAddr {
        self.nodes[index].addr
    }

    /// Waits until every running node sees `count` live nodes.
    async fn wait_live(&self, count: usize) {
        for (index, node) in self.nodes.iter().enumerate().filter(|(_, node)| node.is_running()) {
            assert_eventually!(
                live_nodes(node.addr).await.len() == count,
                Duration::from_secs(15),
                "node n{} never saw {count} live nodes: {:?}",
                index + 1,
                live_nodes(node.addr).await
            );
        }
    }
}

async fn stats(addr: SocketAddr) -> Value {
    match http::try_request(addr, "GET", "/api/v1/stats", Some(ADMIN_TOKEN), "").await {
        Ok((200, body)) => serde_json::from_str(&body).unwrap(),
        _ => Value::Null,
    }
}

async fn live_nodes(addr: SocketAddr) -> Vec<String> {
    stats(addr).await["cluster"]["live_nodes"]
        .as_array()
        .map(|nodes| nodes.iter().filter_map(|node| node.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

async fn presence_status(addr: SocketAddr, user: &str) -> String {
    let (status, body) = http::request(addr, "GET", &format!("/api/v1/presence/{user}"), Some(ADMIN_TOKEN), "").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str::<Value>(&body).unwrap()["status"].as_str().unwrap().to_owned()
}

/// The next frame of `kind` in `conv`.
async fn recv_in(client: &mut TestClient, kind: &str, conv: &str) -> Value {
    loop {
        let frame = client.recv_type(kind).await;
        if frame["conv"] == conv {
            return frame;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_receipts_groups_feeds_and_typing_cross_nodes() {
    let cluster = TestCluster::start().await;
    let (n1, n2, n3) = (cluster.addr(0), cluster.addr(1), cluster.addr(2));
    let (mut alice, _) = TestClient::connect_synced(n1, "alice", "phone").await;
    let (mut bob, _) = TestClient::connect_synced(n2, "bob", "phone").await;
    let (mut bob_laptop, _) = TestClient::connect_synced(n3, "bob", "laptop").await;
    let (mut carol, _) = TestClient::connect_synced(n3, "carol", "phone").await;
    for user in ["alice", "bob", "carol"] {
        for node in [n1, n2, n3] {
            assert_eventually!(
                presence_status(node, user).await == "online",
                Duration::from_secs(5),
                "{user} not online as seen from {node}"
            );
        }
    }

    // A dm: alice on n1, bob's devices on n2 and n3, whoever owns it.
    let dm = "dm:alice:bob";
    let ack = alice.send_msg(dm, "c1", json!("hi bob")).await;
    assert_eq!((ack["type"].as_str(), ack["seq"].as_u64()), (Some("ack"), Some(1)), "{ack}");
    for device in [&mut bob, &mut bob_laptop] {
        let msg = recv_in(device, "msg", dm).await;
        assert_eq!(
            (msg["seq"].as_u64(), msg["from"].as_str(), &msg["body"]),
            (Some(1), Some("alice"), &json!("hi bob"))
        );
    }
    let reply = bob.send_msg(dm, "b1", json!("hi alice")).await;
    assert_eq!(reply["seq"], 2, "{reply}");
    assert_eq!(recv_in(&mut alice, "msg", dm).await["seq"], 2);
    // bob's other device sees his own message too, the sending one only its ack.
    assert_eq!(recv_in(&mut bob_laptop, "msg", dm).await["seq"], 2);

    // A read receipt crosses back.
    bob.receipt(dm, 1, "read").await;
    let receipt = recv_in(&mut alice, "receipt", dm).await;
    assert_eq!(
        (receipt["user"].as_str(), receipt["kind"].as_str(), receipt["seq"].as_u64()),
        (Some("bob"), Some("read"), Some(1))
    );

    // Typing is relayed across nodes.
    alice.send_json(json!({"type": "typing", "conv": dm, "state": "start"})).await;
    let typing = recv_in(&mut bob, "typing", dm).await;
    assert_eq!(typing["user"], "alice");

    // A group spanning the three nodes: membership and messages reach every member.
    let group = alice.call(json!({"type": "group_create", "name": "trio", "members": ["bob", "carol"]})).await;
    assert_eq!(group["type"], "group", "{group}");
    let conv = group["conv"].as_str().unwrap().to_owned();
    for member in [&mut bob, &mut carol] {
        let created = recv_in(member, "msg", &conv).await;
        assert_eq!((created["seq"].as_u64(), created["system"].as_bool()), (Some(1), Some(true)), "{created}");
    }
    let ack = carol.send_msg(&conv, "g1", json!("hello group")).await;
    assert_eq!(ack["seq"], 2, "{ack}");
    for member in [&mut alice, &mut bob, &mut bob_laptop] {
        // The creation may still be on its way to a device that did not read it yet
        // (across nodes the `group` reply and the `msg` take different paths).
        let mut msg = recv_in(member, "msg", &conv).await;
        while msg["system"] == true {
            msg = recv_in(member, "msg", &conv).await;
        }
        assert_eq!((msg["seq"].as_u64(), &msg["body"]), (Some(2), &json!("hello group")));
    }
    // Every node knows the members (authorization there comes from the cluster event
    // or the store): an outsider is refused wherever it connects.
    let (mut dave, _) = TestClient::connect_synced(n2, "dave", "phone").await;
    let refused = dave.send_msg(&conv, "d1", json!("let me in")).await;
    assert_eq!(refused["code"], "forbidden", "{refused}");

    // A feed: subscribers on two nodes, published on the third.
    let feed = "feed:news";
    for subscriber in [&mut bob, &mut carol] {
        let subscribed = subscriber.call(json!({"type": "subscribe", "conv": feed})).await;
        assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
    }
    let (status, body) = http::request(
        n1,
        "POST",
        "/api/v1/publish",
        Some(ADMIN_TOKEN),
        &json!({"conv": feed, "body": "extra"}).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    for subscriber in [&mut bob, &mut carol] {
        let msg = recv_in(subscriber, "msg", feed).await;
        assert_eq!((msg["seq"].as_u64(), &msg["body"]), (Some(1), &json!("extra")));
    }
    // The cluster spreads ownership: these conversations are not all on one node.
    let live: Vec<String> = (1..=NODES).map(|index| format!("n{index}")).collect();
    let owners: BTreeSet<_> =
        [dm, conv.as_str(), feed].iter().map(|conv| rendezvous_owner(&live, conv).unwrap()).collect();
    eprintln!("owners of the three conversations: {owners:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_per_user_across_nodes() {
    let cluster = TestCluster::start().await;
    let (n1, n2, n3) = (cluster.addr(0), cluster.addr(1), cluster.addr(2));
    let (mut watcher, _) = TestClient::connect_synced(n1, "watcher", "phone").await;
    watcher.send_json(json!({"type": "presence_sub", "users": ["alice"]})).await;
    assert_eq!(watcher.recv_type("presence").await["status"], "offline");

    let (phone, _) = TestClient::connect_synced(n2, "alice", "phone").await;
    assert_eq!(watcher.recv_type("presence").await["status"], "online");
    let (laptop, _) = TestClient::connect_synced(n3, "alice", "laptop").await;
    // Online on two nodes: the phone leaving changes nothing.
    phone.close().await;
    watcher.expect_silence(Duration::from_millis(1_500)).await;
    assert_eq!(presence_status(n1, "alice").await, "online");
    let left = crate::support::token::now() * 1000;
    laptop.close().await;
    let offline = watcher.recv_type("presence").await;
    assert_eq!(offline["status"], "offline", "{offline}");
    let last_seen = offline["last_seen"].as_u64().unwrap();
    assert!(last_seen + 1_000 >= left && last_seen <= left + 5_000, "last_seen {last_seen}, left at {left}");
    for node in [n1, n2, n3] {
        assert_eq!(presence_status(node, "alice").await, "offline");
    }
}

/// Sends `count` messages to `conv` through whichever node answers, retrying each cmid
/// until it is acknowledged, reconnecting to the next node when a connection dies.
/// Returns the acks as (seq, cmid).
async fn send_through(
    nodes: Vec<SocketAddr>,
    user: String,
    conv: String,
    count: usize,
    pace: Duration,
) -> Vec<(u64, String)> {
    let mut acks = Vec::new();
    let mut node = 0;
    let mut client = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    for index in 0..count {
        let cmid = format!("{user}-{index}");
        loop {
            assert!(Instant::now() < deadline, "{user}: {cmid} never acknowledged");
            if client.is_none() {
                client = connect_resumed(nodes[node], &user).await;
                if client.is_none() {
                    node = (node + 1) % nodes.len();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
            let connected = client.as_mut().unwrap();
            let r#ref = connected.new_ref();
            connected
                .send_json(json!({"type": "send", "ref": r#ref, "conv": conv, "cmid": cmid, "body": {"k": cmid}}))
                .await;
            match reply_or_close(connected, &r#ref).await {
                Some(reply) if reply["type"] == "ack" => {
                    acks.push((reply["seq"].as_u64().unwrap(), cmid.clone()));
                    break;
                }
                Some(reply) => {
                    assert!(
                        matches!(reply["code"].as_str(), Some("unavailable" | "overloaded")),
                        "{user}: unexpected answer {reply}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                None => {
                    client = None;
                    node = (node + 1) % nodes.len();
                }
            }
        }
        tokio::time::sleep(pace).await;
    }
    acks
}

/// A connection of `user`'s phone to `addr` that has resumed (`synced`), or `None` if
/// the node refused, closed or went silent meanwhile (it may be the one being killed).
async fn connect_resumed(addr: SocketAddr, user: &str) -> Option<TestClient> {
    let token = crate::support::token::token(user, "phone");
    let mut client =
        TestClient::connect_with(addr, "/ws", &[("Authorization", format!("Bearer {token}"))]).await.ok()?;
    loop {
        match tokio::time::timeout(Duration::from_secs(8), client.recv_message()).await {
            Ok(Ok(frame)) if frame["type"] == "synced" => return Some(client),
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(_) => return None,
        }
    }
}

/// The reply to `ref`, or `None` if the connection closed (or went silent) first.
async fn reply_or_close(client: &mut TestClient, r#ref: &str) -> Option<Value> {
    loop {
        match tokio::time::timeout(Duration::from_secs(8), client.recv_message()).await {
            Ok(Ok(frame)) if frame["ref"] == r#ref => return Some(frame),
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(_) => return None,
        }
    }
}

/// Everything stored in `conv`, as seq -> body key, read through `addr`.
async fn stored(addr: SocketAddr, user: &str, conv: &str) -> BTreeMap<u64, String> {
    let (mut reader, _) = TestClient::connect_synced(addr, user, "auditor").await;
    let mut seqs = BTreeMap::new();
    let mut before: Option<u64> = None;
    loop {
        let mut request = json!({"type": "history", "conv": conv, "limit": 200});
        if let Some(before) = before {
            request["before"] = json!(before);
        }
        let page = reader.call(request).await;
        let messages = page["messages"].as_array().unwrap_or_else(|| panic!("history of {conv}: {page}"));
        if messages.is_empty() {
            return seqs;
        }
        for message in messages {
            let seq = message["seq"].as_u64().unwrap();
            let key = message["body"]["k"].as_str().unwrap_or_default().to_owned();
            assert!(seqs.insert(seq, key).is_none(), "{conv}: seq {seq} twice in history");
        }
        before = messages.last().and_then(|message| message["seq"].as_u64());
    }
}

/// Checks that every acknowledged message is stored once at its seq and that the log
/// has no gap: 1..=last, each cmid once.
async fn assert_log_intact(addr: SocketAddr, reader: &str, conv: &str, acks: &[(u64, String)]) {
    let log = stored(addr, reader, conv).await;
    let last = log.keys().next_back().copied().unwrap_or(0);
    assert_eq!(log.keys().copied().collect::<Vec<_>>(), (1..=last).collect::<Vec<_>>(), "{conv}: a gap in the log");
    let mut seen = HashMap::new();
    for (seq, key) in &log {
        if let Some(earlier) = seen.insert(key.clone(), *seq) {
            panic!("{conv}: {key} stored twice, at {earlier} and {seq}");
        }
    }
    for (seq, cmid) in acks {
        assert_eq!(log.get(seq), Some(cmid), "{conv}: acknowledged {cmid} at seq {seq} is not in the log");
    }
}

/// Reconnects `user`'s device to `addr` and collects the seqs of `conv` replayed
/// to it, plus those it already had.
async fn resumed_seqs(addr: SocketAddr, user: &str, conv: &str, mut had: BTreeSet<u64>) -> BTreeSet<u64> {
    let (_client, replayed) = TestClient::connect_synced(addr, user, "phone").await;
    had.extend(
        replayed
            .iter()
            .filter(|frame| frame["type"] == "msg" && frame["conv"] == conv)
            .filter_map(|frame| frame["seq"].as_u64()),
    );
    had
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_traffic_loses_no_acknowledged_message() {
    let mut cluster = TestCluster::start().await;
    let live: Vec<String> = (1..=NODES).map(|index| format!("n{index}")).collect();
    // Pairs whose dm is owned by each node, so the victim (n2) owns some.
    let users = ["u01", "u02", "u03", "u04", "u05", "u06", "u07", "u08", "u09", "u10", "u11", "u12"];
    let pairs: Vec<(&'static str, &'static str, String)> =
        users.chunks(2).map(|pair| (pair[0], pair[1], format!("dm:{}:{}", pair[0], pair[1]))).collect();
    let owners: Vec<&str> = pairs.iter().map(|(_, _, conv)| rendezvous_owner(&live, conv).unwrap()).collect();
    assert!(owners.contains(&"n2"), "pick users so that n2 owns a dm: {owners:?}");
    let addrs: Vec<SocketAddr> = (0..NODES).map(|index| cluster.addr(index)).collect();
    // A user connected only to the victim: offline for the others once it is gone.
    let (_ghost, _) = TestClient::connect_synced(addrs[1], "ghost", "phone").await;
    assert_eventually!(
        presence_status(addrs[0], "ghost").await == "online",
        Duration::from_secs(5),
        "ghost not online"
    );

    // Each sender starts on a different node; n2 dies a second in.
    let senders: Vec<_> = pairs
        .iter()
        .enumerate()
        .map(|(index, (from, _, conv))| {
            let mut nodes = addrs.clone();
            nodes.rotate_left(index % NODES);
            tokio::spawn(send_through(nodes, (*from).to_owned(), conv.clone(), 40, Duration::from_millis(50)))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let killed_at = Instant::now();
    cluster.nodes[1].kill9();
    let survivor = addrs[0];
    let ghost_gone = tokio::spawn(async move {
        while presence_status(survivor, "ghost").await != "offline" {
            assert!(killed_at.elapsed() < Duration::from_secs(15), "ghost still online 15 s after n2 died");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        killed_at.elapsed()
    });
    let mut results = Vec::new();
    for sender in senders {
        results.push(sender.await.unwrap());
    }
    eprintln!("all senders done {:?} after the kill", killed_at.elapsed());

    // The survivors agree that n2 is gone.
    cluster.wait_live(NODES - 1).await;
    for ((from, to, conv), acks) in pairs.iter().zip(&results) {
        assert_eq!(acks.len(), 40, "{from}: not every message acknowledged");
        let seqs: Vec<u64> = acks.iter().map(|(seq, _)| *seq).collect();
        assert!(seqs.windows(2).all(|pair| pair[0] < pair[1]), "{conv}: acks out of order: {seqs:?}");
        assert_log_intact(addrs[0], from, conv, acks).await;
        // The recipient, resuming on a surviving node, gets everything.
        let got = resumed_seqs(addrs[2], to, conv, BTreeSet::new()).await;
        let last = acks.last().unwrap().0;
        assert_eq!(got, (1..=last).collect(), "{to}: resume of {conv} has gaps");
    }
    // No ghosts: a user of the dead node is offline for the survivors once it is
    // declared down (down_after_ms = 1.5 s, plus a heartbeat and a loaded box's slack).
    let took = ghost_gone.await.unwrap();
    eprintln!("ghost offline {took:?} after the kill");
    assert!(took < Duration::from_secs(5), "ghost offline only {took:?} after n2 died");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_killed_and_restarted_mid_traffic_loses_nothing() {
    let mut cluster = TestCluster::start().await;
    let (n1, n2, n3) = (cluster.addr(0), cluster.addr(1), cluster.addr(2));
    // A dm owned by n1, where the sender is: it keeps sequencing through the outage
    // (local traffic continues). The recipient stays connected to n3 all along; what
    // the bus could not bring meanwhile it gets by a resync once the bus is back.
    let live: Vec<String> = (1..=NODES).map(|index| format!("n{index}")).collect();
    let (receiver_id, sender_id) = (1..)
        .map(|index| (format!("rx{index}"), format!("tx{index}")))
        .find(|(rx, tx)| rendezvous_owner(&live, &format!("dm:{rx}:{tx}")) == Some("n1"))
        .unwrap();
    let conv = format!("dm:{receiver_id}:{sender_id}");
    let (mut receiver, _) = TestClient::connect_synced(n3, &receiver_id, "phone").await;
    let sender =
        tokio::spawn(send_through(vec![n1, n2], sender_id.clone(), conv.clone(), 60, Duration::from_millis(50)));
    tokio::time::sleep(Duration::from_millis(800)).await;
    cluster.nats.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.nats.restart();
    let acks = sender.await.unwrap();
    assert_eq!(acks.len(), 60);
    // Every node reconnects by itself.
    for node in [n1, n2, n3] {
        assert_eventually!(
            stats(node).await["cluster"]["bus_connected"] == true,
            Duration::from_secs(15),
            "{node} did not reconnect to NATS"
        );
    }
    cluster.wait_live(NODES).await;
    assert_log_intact(n1, &sender_id, &conv, &acks).await;
    let last = acks.last().unwrap().0;
    let mut got = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.len() < last as usize && Instant::now() < deadline {
        if let Ok(Ok(frame)) = tokio::time::timeout(Duration::from_millis(500), receiver.recv_message()).await
            && frame["type"] == "msg"
            && frame["conv"] == conv
        {
            got.insert(frame["seq"].as_u64().unwrap());
        }
    }
    assert_eq!(got, (1..=last).collect(), "the connected recipient missed messages");
    // The devices connected through the outage resynced when the bus came back.
    assert!(http::metric(n3, "switchboard_cluster_resyncs_total").await >= 1.0, "no resync on n3");
}
