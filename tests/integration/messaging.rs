//! 1:1 messaging per the wire contract: send, ack, deliver, receipts, resume, dedup,
//! multi-device, history.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::client::TestClient;
use crate::support::server::TestServer;

const DM: &str = "dm:alice:bob";

fn seqs(frames: &[Value], conv: &str) -> Vec<u64> {
    frames
        .iter()
        .filter(|frame| frame["type"] == "msg" && frame["conv"] == conv)
        .map(|frame| frame["seq"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn send_is_acked_then_delivered_to_the_recipient_and_the_senders_other_devices() {
    let server = TestServer::start();
    let (mut alice_phone, _) = TestClient::connect_synced(server.addr, "alice", "phone").await;
    let (mut alice_laptop, _) = TestClient::connect_synced(server.addr, "alice", "laptop").await;
    let (mut bob, _) = TestClient::connect_synced(server.addr, "bob", "phone").await;

    let ack = alice_phone.send_msg(DM, "c1", json!({"text": "hi bob"})).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["conv"], DM);
    assert_eq!(ack["seq"], 1);
    assert_eq!(ack["dup"], false);
    let mid = ack["mid"].as_str().unwrap().to_owned();
    assert!(ack["ts"].as_u64().unwrap() > 1_600_000_000_000);

    for client in [&mut bob, &mut alice_laptop] {
        let msg = client.recv_type("msg").await;
        assert_eq!(msg["conv"], DM);
        assert_eq!(msg["seq"], 1);
        assert_eq!(msg["mid"], mid.as_str());
        assert_eq!(msg["from"], "alice");
        assert_eq!(msg["dev"], "phone");
        assert_eq!(msg["body"], json!({"text": "hi bob"}));
        assert_eq!(msg["ts"], ack["ts"]);
    }
    // The sending connection gets the ack, not a copy of its own message.
    alice_phone.expect_silence(Duration::from_millis(300)).await;

    let reply = bob.send_msg(DM, "b1", json!("hello alice")).await;
    assert_eq!(reply["seq"], 2);
    assert_eq!(alice_phone.recv_type("msg").await["body"], "hello alice");
}

#[tokio::test]
async fn receipts_are_relayed_both_ways() {
    let server = TestServer::start();
    let (mut alice, _) = TestClient::connect_synced(server.addr, "alice", "phone").await;
    let (mut bob, _) = TestClient::connect_synced(server.addr, "bob", "phone").await;
    alice.send_msg(DM, "c1", json!(1)).await;
    alice.send_msg(DM, "c2", json!(2)).await;
    assert_eq!(bob.recv_type("msg").await["seq"], 1);
    assert_eq!(bob.recv_type("msg").await["seq"], 2);

    bob.receipt(DM, 2, "delivered").await;
    let receipt = alice.recv_type("receipt").await;
    assert_eq!(
        (receipt["conv"].clone(), receipt["user"].clone(), receipt["kind"].clone(), receipt["seq"].clone()),
        (json!(DM), json!("bob"), json!("delivered"), json!(2))
    );
    bob.receipt(DM, 1, "read").await;
    let receipt = alice.recv_type("receipt").await;
    assert_eq!((receipt["kind"].clone(), receipt["seq"].clone()), (json!("read"), json!(1)));
    // Cumulative: an older mark does not move anything and is not relayed.
    bob.receipt(DM, 1, "delivered").await;
    alice.expect_silence(Duration::from_millis(300)).await;

    let ack = bob.send_msg(DM, "b1", json!("back")).await;
    alice.recv_type("msg").await;
    alice.receipt(DM, ack["seq"].as_u64().unwrap(), "read").await;
    let receipt = bob.recv_type("receipt").await;
    assert_eq!(
        (receipt["user"].clone(), receipt["kind"].clone(), receipt["seq"].clone()),
        (json!("alice"), json!("read"), json!(3))
    );
    assert!(receipt["ts"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn an_offline_recipient_gets_everything_in_order_on_reconnect() {
    let server = TestServer::start();
    let (mut alice, _) = TestClient::connect_synced(server.addr, "alice", "phone").await;
    for i in 1..=120u64 {
        let ack = alice.send_msg(DM, &format!("c{i}"), json!({"n": i})).await;
        assert_eq!(ack["seq"], i);
    }
    let (mut bob, replayed) = TestClient::connect_synced(server.addr, "bob", "phone").await;
    assert_eq!(seqs(&replayed, DM), (1..=120).collect::<Vec<_>>(), "replay must be complete and ordered");
    // The sending device is not sent its own messages back; the sender's other devices are.
    alice.close().await;
    let (mut alice, replayed) = TestClient::connect_synced(server.addr, "alice", "phone").await;
    assert_eq!(seqs(&replayed, DM), Vec::<u64>::new());
    let (_alice_tablet, replayed) = TestClient::connect_synced(server.addr, "alice", "tablet").await;
    assert_eq!(seqs(&replayed, DM), (1..=120).collect::<Vec<_>>());
    let synced = replayed.last().unwrap();
    assert_eq!(synced["convs"][DM], 120);
    assert!(synced.get("ref").is_none() || synced["ref"].is_null());

    // Acknowledge up to 100; the next connection of this device replays only 101..=120.
    bob.receipt(DM, 100, "delivered").await;
    // The receipt reaches alice, which proves the server processed it.
    assert_eq!(alice.recv_type("receipt").await["seq"], 100);
    bob.close().await;
    let (_bob, replayed) = TestClient::connect_synced(server.addr, "bob", "phone").await;
    assert_eq!(seqs(&replayed, DM), (101..=120).collect::<Vec<_>>());
}

#[tokio::test]
async fn live_messages_during_a_resume_keep_seq_order_without_gaps() {
    let server = TestServer::start();
    let (mut alice, _) = TestClient::connect_synced(server.addr, "alice", "phone").await;
    for i in 1..=300u64 {
        alice.send_msg(DM, &format!("a{i}"), json!(i)).await;
    }
    // Bob connects while alice keeps sending.
    let sender = tokio::spawn(async move {
        for i in 301..=400u64 {
            alice.send_msg(DM, &format!("a{i}"), json!(i)).await;
        }
        alice
    });
    let mut bob = TestClient::connect(server.addr, "bob", "phone").await;
    let mut seen = Vec::new();
    while seen.last() != Some(&400) {
        let frame = bob.recv().await;
        if frame["type"] == "msg" {
            seen.push(frame["seq"].as_u64().unwrap());
        }
    }
    sender.await.unwrap();
    assert_eq!(seen, (1..=400).collect::<Vec<_>>(), "every seq exactly once, in order");
}

#[tokio::test]
async fn a_retried_cmid_returns_the_original_and_stores_no_duplicate() {
    let server = TestServer::start();
    let (mut alice, _) = TestClient::connect_synced(server.addr, "alice", "phone").await;
    let first = alice.send_msg(DM, "same", json!("once")).await;
    let again = alice.send_msg(DM, "same", json!("once")).await;
    assert_eq!(again["type"], "ack");
    assert_eq!(again["dup"], true);
    assert_eq!(
        (again["seq"].clone(), again["mid"].clone(), again["ts"].clone()),
        (first["seq"].clone(), first["mid"].clone(), first["ts"].clone())
    );
    // Another sender may use the same cmid: it is per sender.
    let (mut bob, replayed) = TestClient::connect_synced(server.addr, "bob", "phone").await;
    assert_eq!(seqs(&replayed, DM), vec![1]);
    let bobs = bob.send_msg(DM, "same", json!("mine")).await;
    assert_eq!((bobs["seq"].clone(), bobs["dup"].clone()), (json!(2), json!(false)));
    // A retry after a reconnect (the connection dropped before the ack) is still a dup.
    alice.close().await;
    let (mut alice, _) = TestClient::connect_synced(server.addr, "alice", "phone").await;
    let retried = alice.send_msg(DM, "same", json!("once")).await;
    assert_eq!((retried["seq"].clone(), retried["dup"].clone()), (json!(1), json!(true)));
    // Concurrent duplicates in flight resolve to one message.
    for _ in 0..5 {
        alice.send_json(json!({"type": "send", "ref": "burst", "conv": DM, "cmid": "burst", "body": 0})).await;
    }
    let mut acks = Vec::new();
    while acks.len() < 5 {
        let frame = alice.recv().await;
        if frame["type"] == "ack" {
            acks.push(frame);
        }
    }
    assert!(acks.iter().all(|ack| ack["seq"] == 3), "{acks:?}");
    assert_eq!(acks.iter().filter(|ack| ack["dup"] == false).count(), 1);
    let page = history(&mut alice, None, 50).await;
    assert_eq!(page.len(), 3);
}

#[tokio::test]
async fn devices_of_one_user_have_separate_cursors() {
    let server = TestServer::start();
    let (mut alice, _) = TestClient::connect_synced(server.addr, "alice", "phone").await;
    let (mut phone, _) = TestClient::connect_synced(server.addr, "bob", "phone").await;
    let (mut tablet, _) = TestClient::connect_synced(server.addr, "bob", "tablet").await;
    for i in 1..=3 {
        alice.send_msg(DM, &format!("c{i}"), json!(i)).await;
    }
    for device in [&mut phone, &mut tablet] {
        for seq in 1..=3 {
            assert_eq!(device.recv_type("msg").await["seq"], seq);
        }
    }
    phone.receipt(DM, 3, "delivered").await;
    tablet.receipt(DM, 1, "delivered").await;
    // Both marks reach alice (the device-level cursors are stored by then).
    alice.recv_type("receipt").await;
    phone.close().await;
    tablet.close().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_phone, replayed) = TestClient::connect_synced(server.addr, "bob", "phone").await;
    assert_eq!(seqs(&replayed, DM), Vec::<u64>::new());
    let (_tablet, replayed) = TestClient::connect_synced(server.addr, "bob", "tablet").await;
    assert_eq!(seqs(&replayed, DM), vec![2, 3]);
}

#[tokio::test]
async fn a_new_connection_of_the_same_device_replaces_the_old_one() {
    let server = TestServer::start();
    let (mut first, _) = TestClient::connect_synced(server.addr, "alice", "phone").await;
    let (mut second, _) = TestClient::connect_synced(server.addr, "alice", "phone").await;
    assert_eq!(first.expect_close().await, Some(4002));
    let ack = second.send_msg(DM, "c1", json!("still here")).await;
    assert_eq!(ack["type"], "ack");
}

#[tokio::test]
async fn explicit_sync_replays_after_the_given_cursors() {
    let server = TestServer::start();
    let (mut alice, _) = TestClient::connect_synced(server.addr, "alice", "phone").await;
    let (mut bob, _) = TestClient::connect_synced(server.addr, "bob", "phone").await;
    for i in 1..=5 {
        alice.send_msg(DM, &format!("c{i}"), json!(i)).await;
    }
    for seq in 1..=5 {
        assert_eq!(bob.recv_type("msg").await["seq"], seq);
    }
    bob.send_json(json!({"type": "sync", "ref": "s1", "cursors": {DM: 2}})).await;
    let frames = bob.until_synced().await;
    assert_eq!(seqs(&frames, DM), vec![3, 4, 5]);
    let synced = frames.last().unwrap();
    assert_eq!(synced["ref"], "s1");
    assert_eq!(synced["convs"][DM], 5);
    // Without cursors the stored ones apply: nothing acknowledged yet, so all of it.
    bob.send_json(json!({"type": "sync", "ref": "s2"})).await;
    assert_eq!(seqs(&bob.until_synced().await, DM), vec![1, 2, 3, 4, 5]);
    // The sender's own device gets nothing back.
    alice.send_json(json!({"type": "sync", "ref": "s3"})).await;
    assert_eq!(seqs(&alice.until_synced().await, DM), Vec::<u64>::new());
}

async fn history(client: &mut TestClient, before: Option<u64>, limit: u64) -> Vec<Value> {
    let r#ref = client.new_ref();
    let mut request = json!({"type": "history", "ref": r#ref, "conv": DM, "limit": limit});
    if let Some(before) = before {
        request["before"] = json!(before);
    }
    client.send_json(request).await;
    let page = client.reply_to(&r#ref).await;
    assert_eq!(page["type"], "history", "{page}");
    assert_eq!(page["conv"], DM);
    page["messages"].as_array().unwrap().clone()
}

#[tokio::test]
async fn history_pages_newest_first() {
    let server = TestServer::start();
    let (mut alice, _) = TestClient::connect_synced(server.addr, "alice", "phone").await;
    for i in 1..=25u64 {
        alice.send_msg(DM, &format!("c{i}"), json!({"n": i})).await;
    }
    let mut all = Vec::new();
    let mut before = None;
    loop {
        let page = history(&mut alice, before, 10).await;
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 10);
        before = page.last().map(|msg| msg["seq"].as_u64().unwrap());
        all.extend(page.iter().map(|msg| msg["seq"].as_u64().unwrap()));
        assert!(page.iter().all(|msg| msg["body"]["n"] == msg["seq"]));
    }
    assert_eq!(all, (1..=25).rev().collect::<Vec<_>>());
}
