//! Feeds over real sockets: publish (admin API and token grant), subscribe with and
//! without `since`, resume, unsubscribe, history.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::client::TestClient;
use crate::support::http;
use crate::support::server::TestServer;
use crate::support::token::{ADMIN_TOKEN, SECRET, now, sign_with};

const FEED: &str = "feed:news";

async fn publish(server: &TestServer, body: Value) -> Value {
    let request = json!({"conv": FEED, "body": body}).to_string();
    let (status, reply) = http::request(server.addr, "POST", "/api/v1/publish", Some(ADMIN_TOKEN), &request).await;
    assert_eq!(status, 200, "{reply}");
    serde_json::from_str(&reply).unwrap()
}

fn feed_seqs(frames: &[Value]) -> Vec<u64> {
    frames
        .iter()
        .filter(|frame| frame["type"] == "msg" && frame["conv"] == FEED)
        .map(|f| f["seq"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn subscribers_get_publishes_live_and_resume_them_after_a_disconnect() {
    let server = TestServer::start();
    for index in 1..=3 {
        let published = publish(&server, json!({"headline": index})).await;
        assert_eq!((published["conv"].as_str(), published["seq"].as_u64()), (Some(FEED), Some(index)));
        assert!(published["mid"].is_string() && published["ts"].is_u64(), "{published}");
    }

    // `since` replays what the subscriber missed, after `subscribed`.
    let (mut alice, _) = TestClient::connect_synced(server.addr, "alice", "phone").await;
    let subscribed = alice.call(json!({"type": "subscribe", "conv": FEED, "since": 1})).await;
    assert_eq!(
        (subscribed["type"].as_str(), subscribed["seq"].as_u64()),
        (Some("subscribed"), Some(3)),
        "{subscribed}"
    );
    let replayed = [alice.recv_type("msg").await, alice.recv_type("msg").await];
    assert_eq!(feed_seqs(&replayed), [2, 3]);
    assert_eq!(replayed[0]["from"], "admin");
    assert_eq!(replayed[0]["body"], json!({"headline": 2}));

    // Without `since`: live only.
    let (mut bob, _) = TestClient::connect_synced(server.addr, "bob", "phone").await;
    let subscribed = bob.call(json!({"type": "subscribe", "conv": FEED})).await;
    assert_eq!(subscribed["seq"], 3);
    bob.expect_silence(Duration::from_millis(200)).await;

    publish(&server, json!({"headline": 4})).await;
    for client in [&mut alice, &mut bob] {
        let msg = client.recv_type("msg").await;
        assert_eq!((msg["conv"].as_str(), msg["seq"].as_u64()), (Some(FEED), Some(4)));
    }
    alice.receipt(FEED, 4, "delivered").await;
    bob.receipt(FEED, 4, "delivered").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(bob);

    // Offline: bob misses 5 and 6, then resumes them, in order, with the rest of his inbox.
    publish(&server, json!({"headline": 5})).await;
    publish(&server, json!({"headline": 6})).await;
    assert_eq!(alice.recv_type("msg").await["seq"], 5);
    assert_eq!(alice.recv_type("msg").await["seq"], 6);
    let (mut bob, replayed) = TestClient::connect_synced(server.addr, "bob", "phone").await;
    assert_eq!(feed_seqs(&replayed), [5, 6]);
    assert_eq!(replayed.last().unwrap()["convs"][FEED], 6);
    // A second device of a subscriber starts at the head, and then follows live.
    let (mut tablet, replayed) = TestClient::connect_synced(server.addr, "bob", "tablet").await;
    assert!(feed_seqs(&replayed).is_empty(), "{replayed:?}");
    publish(&server, json!({"headline": 7})).await;
    assert_eq!(bob.recv_type("msg").await["seq"], 7);
    assert_eq!(tablet.recv_type("msg").await["seq"], 7);

    // Unsubscribed: nothing more, live or on resume; history stays readable.
    let reply = bob.call(json!({"type": "unsubscribe", "conv": FEED})).await;
    assert_eq!((reply["type"].as_str(), reply["conv"].as_str()), (Some("unsubscribed"), Some(FEED)));
    publish(&server, json!({"headline": 8})).await;
    assert_eq!(alice.recv_type("msg").await["seq"], 7);
    assert_eq!(alice.recv_type("msg").await["seq"], 8);
    bob.expect_silence(Duration::from_millis(300)).await;
    drop(bob);
    let (mut bob, replayed) = TestClient::connect_synced(server.addr, "bob", "phone").await;
    assert!(feed_seqs(&replayed).is_empty(), "{replayed:?}");
    let history = bob.call(json!({"type": "history", "conv": FEED, "limit": 3})).await;
    let seqs: Vec<u64> = history["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [8, 7, 6]);
}

#[tokio::test]
async fn only_granted_tokens_and_the_admin_api_publish() {
    let server = TestServer::start();
    let (mut reader, _) = TestClient::connect_synced(server.addr, "reader", "phone").await;
    reader.call(json!({"type": "subscribe", "conv": FEED})).await;
    let refused = reader.send_msg(FEED, "r1", json!("spam")).await;
    assert_eq!(refused["code"], "forbidden", "{refused}");

    let claims = json!({"sub": "editor", "iat": now(), "exp": now() + 600, "pub": ["feed:news"]});
    let mut editor = TestClient::connect_token(server.addr, &sign_with(claims, SECRET)).await;
    editor.until_synced().await;
    let ack = editor.send_msg(FEED, "e1", json!({"headline": "granted"})).await;
    assert_eq!((ack["type"].as_str(), ack["seq"].as_u64()), (Some("ack"), Some(1)), "{ack}");
    let msg = reader.recv_type("msg").await;
    assert_eq!((msg["from"].as_str(), msg["seq"].as_u64()), (Some("editor"), Some(1)));
    let refused = editor.send_msg("feed:sport", "e2", json!("not granted")).await;
    assert_eq!(refused["code"], "forbidden", "{refused}");

    let prefix = json!({"sub": "desk", "iat": now(), "exp": now() + 600, "pub": ["feed:*"]});
    let mut desk = TestClient::connect_token(server.addr, &sign_with(prefix, SECRET)).await;
    desk.until_synced().await;
    assert_eq!(desk.send_msg("feed:sport", "d1", json!(1)).await["seq"], 1);

    // The admin API needs its token and a valid body.
    let body = json!({"conv": FEED, "body": 1}).to_string();
    assert_eq!(http::request(server.addr, "POST", "/api/v1/publish", None, &body).await.0, 401);
    let bad = http::request(server.addr, "POST", "/api/v1/publish", Some(ADMIN_TOKEN), r#"{"conv":"nope"}"#).await;
    assert_eq!(bad.0, 400, "{}", bad.1);
    let no_group = json!({"conv": "group:nope", "body": 1}).to_string();
    let missing = http::request(server.addr, "POST", "/api/v1/publish", Some(ADMIN_TOKEN), &no_group).await;
    assert_eq!(missing.0, 404, "{}", missing.1);
    let with_from = json!({"conv": FEED, "body": "signed", "from": "newsroom"}).to_string();
    let (status, reply) = http::request(server.addr, "POST", "/api/v1/publish", Some(ADMIN_TOKEN), &with_from).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reader.recv_type("msg").await["from"], "newsroom");
}
