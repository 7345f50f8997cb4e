//! Presence, typing and token revocation over real sockets.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::client::{Refused, TestClient};
use crate::support::http;
use crate::support::server::{Options, TestServer};
use crate::support::token::{ADMIN_TOKEN, SECRET, now, sign_with};

const DEBOUNCE_MS: u64 = 300;

fn server() -> TestServer {
    TestServer::start_with(Options {
        config: format!("[presence]\noffline_debounce_ms = {DEBOUNCE_MS}\n"),
        ..Options::default()
    })
}

async fn presence_of(client: &mut TestClient, user: &str) -> Value {
    loop {
        let frame = client.recv_type("presence").await;
        if frame["user"] == user {
            return frame;
        }
    }
}

async fn admin_presence(server: &TestServer, user: &str) -> Value {
    let (status, body) =
        http::request(server.addr, "GET", &format!("/api/v1/presence/{user}"), Some(ADMIN_TOKEN), "").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test]
async fn presence_is_per_user_debounced_and_keeps_last_seen() {
    let server = server();
    let (mut watcher, _) = TestClient::connect_synced(server.addr, "watcher", "phone").await;
    assert_eq!(admin_presence(&server, "alice").await, json!({"user": "alice", "status": "offline", "last_seen": 0}));

    let watch = json!({"type": "presence_sub", "users": ["alice"]});
    watcher.send_json(watch.clone()).await;
    let current = presence_of(&mut watcher, "alice").await;
    assert_eq!((current["status"].as_str(), current["last_seen"].as_u64()), (Some("offline"), Some(0)));

    let (phone, _) = TestClient::connect_synced(server.addr, "alice", "phone").await;
    assert_eq!(presence_of(&mut watcher, "alice").await["status"], "online");
    let (laptop, _) = TestClient::connect_synced(server.addr, "alice", "laptop").await;
    assert_eq!(admin_presence(&server, "alice").await["status"], "online");

    // Two devices: the user stays online until the last one leaves.
    phone.close().await;
    watcher.expect_silence(Duration::from_millis(DEBOUNCE_MS * 3)).await;
    assert_eq!(admin_presence(&server, "alice").await["status"], "online");

    let left = crate::support::token::now() * 1000;
    laptop.close().await;
    let offline = presence_of(&mut watcher, "alice").await;
    assert_eq!(offline["status"], "offline");
    let last_seen = offline["last_seen"].as_u64().unwrap();
    assert!(last_seen + 1000 >= left && last_seen <= left + 5000, "last_seen {last_seen}, left at {left}");
    let queried = admin_presence(&server, "alice").await;
    assert_eq!((queried["status"].as_str(), queried["last_seen"].as_u64()), (Some("offline"), Some(last_seen)));

    // A flapping connection (back within the debounce each time) causes no event: one
    // online when it starts, one offline once it stops for good.
    let (flap, _) = TestClient::connect_synced(server.addr, "alice", "phone").await;
    assert_eq!(presence_of(&mut watcher, "alice").await["status"], "online");
    flap.close().await;
    let started = Instant::now();
    let mut flaps = 0;
    while started.elapsed() < Duration::from_millis(DEBOUNCE_MS * 4) {
        let (again, _) = TestClient::connect_synced(server.addr, "alice", "phone").await;
        again.close().await;
        flaps += 1;
    }
    assert!(flaps >= 3, "only {flaps} reconnects");
    let offline = presence_of(&mut watcher, "alice").await;
    assert_eq!(offline["status"], "offline", "an event while flapping: {offline}");
    watcher.expect_silence(Duration::from_millis(DEBOUNCE_MS * 2)).await;

    // last_seen survives a restart of the server.
    drop(watcher);
    let mut server = server;
    server.terminate(Duration::from_secs(10));
    server.restart();
    let after = admin_presence(&server, "alice").await;
    assert_eq!(after["status"], "offline");
    assert!(after["last_seen"].as_u64().unwrap() >= last_seen, "{after}");

    // Unwatched users send nothing.
    let (mut watcher, _) = TestClient::connect_synced(server.addr, "watcher", "phone").await;
    watcher.send_json(watch).await;
    presence_of(&mut watcher, "alice").await;
    watcher.send_json(json!({"type": "presence_unsub", "users": ["alice"]})).await;
    // `presence_unsub` has no reply: a later request on the same connection, answered in
    // order, shows it has been applied before alice comes online.
    watcher.send_json(json!({"type": "presence_sub", "users": ["nobody"]})).await;
    presence_of(&mut watcher, "nobody").await;
    let (_alice, _) = TestClient::connect_synced(server.addr, "alice", "phone").await;
    watcher.expect_silence(Duration::from_millis(DEBOUNCE_MS)).await;
}

#[tokio::test]
async fn typing_is_relayed_live_rate_limited_and_never_replayed() {
    let server = server();
    let (mut alice, _) = TestClient::connect_synced(server.addr, "alice", "phone").await;
    let (mut bob, _) = TestClient::connect_synced(server.addr, "bob", "phone").await;
    let dm = "dm:alice:bob";
    alice.send_json(json!({"type": "typing", "conv": dm, "state": "start"})).await;
    let typing = bob.recv_type("typing").await;
    assert_eq!(typing, json!({"type": "typing", "conv": dm, "user": "alice", "state": "start"}));
    alice.expect_silence(Duration::from_millis(100)).await;

    // In a group, every other member online gets it.
    let group = alice.call(json!({"type": "group_create", "name": "g", "members": ["bob", "carol"]})).await;
    let group = group["conv"].as_str().unwrap().to_owned();
    let (mut carol, _) = TestClient::connect_synced(server.addr, "carol", "phone").await;
    bob.send_json(json!({"type": "typing", "conv": group, "state": "stop"})).await;
    for client in [&mut alice, &mut carol] {
        let typing = client.recv_type("typing").await;
        assert_eq!((typing["user"].as_str(), typing["state"].as_str()), (Some("bob"), Some("stop")));
    }

    // Past the burst: `rate_limited` with a wait, the excess is not relayed.
    for _ in 0..20 {
        carol.send_json(json!({"type": "typing", "conv": group, "state": "start"})).await;
    }
    let limited = carol.recv_type("error").await;
    assert_eq!(limited["code"], "rate_limited", "{limited}");
    assert!(limited["retry_after_ms"].as_u64().unwrap() >= 1, "{limited}");

    // Never stored: a device that reconnects gets messages back, typing never.
    drop(bob);
    alice.send_json(json!({"type": "typing", "conv": dm, "state": "start"})).await;
    alice.send_msg(dm, "a1", json!("after typing")).await;
    let (_bob, replayed) = TestClient::connect_synced(server.addr, "bob", "phone").await;
    assert!(replayed.iter().all(|frame| frame["type"] != "typing"), "{replayed:?}");
    assert!(replayed.iter().any(|frame| frame["type"] == "msg" && frame["body"] == "after typing"));
}

#[tokio::test]
async fn revoked_tokens_are_closed_with_1008_and_refused_while_newer_ones_work() {
    let server = TestServer::start();
    let issued = |iat: u64| sign_with(json!({"sub": "alice", "dev": "phone", "iat": iat, "exp": now() + 3600}), SECRET);
    let old = issued(now() - 60);
    let mut live = TestClient::connect_token(server.addr, &old).await;
    live.until_synced().await;
    let (mut bob, _) = TestClient::connect_synced(server.addr, "bob", "phone").await;

    let before = now() * 1000;
    let body = json!({"user": "alice", "before": before}).to_string();
    assert_eq!(http::request(server.addr, "POST", "/api/v1/revoke", None, &body).await.0, 401);
    let (status, reply) = http::request(server.addr, "POST", "/api/v1/revoke", Some(ADMIN_TOKEN), &body).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(serde_json::from_str::<Value>(&reply).unwrap()["closed"], 1);
    assert_eq!(live.expect_close().await, Some(1008));

    let refused = TestClient::connect_with(server.addr, &format!("/ws?token={old}"), &[]).await;
    assert!(matches!(refused, Err(Refused::Status(401))), "{:?}", refused.err());
    let no_iat = sign_with(json!({"sub": "alice", "exp": now() + 3600}), SECRET);
    let refused = TestClient::connect_with(server.addr, &format!("/ws?token={no_iat}"), &[]).await;
    assert!(matches!(refused, Err(Refused::Status(401))), "{:?}", refused.err());
    // Other users are untouched; a token issued after the revocation works.
    bob.call(json!({"type": "ping"})).await;
    let mut fresh = TestClient::connect_token(server.addr, &issued(now() + 1)).await;
    fresh.until_synced().await;

    // The revocation is durable.
    let mut server = server;
    server.terminate(Duration::from_secs(10));
    server.restart();
    let refused = TestClient::connect_with(server.addr, &format!("/ws?token={old}"), &[]).await;
    assert!(matches!(refused, Err(Refused::Status(401))), "{:?}", refused.err());
}
