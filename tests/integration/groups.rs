//! Groups over real sockets: create/add/remove with system messages, authorization,
//! fanout to online members and replay to offline ones, aggregated receipts.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::client::TestClient;
use crate::support::server::{Options, TestServer};

fn members(frame: &Value) -> Vec<&str> {
    frame["members"].as_array().unwrap().iter().map(|member| member.as_str().unwrap()).collect()
}

/// Creates a group as `client` with `others`; returns its conv id.
async fn create(client: &mut TestClient, name: &str, others: &[&str]) -> String {
    let reply = client.call(json!({"type": "group_create", "name": name, "members": others})).await;
    assert_eq!(reply["type"], "group", "{reply}");
    reply["conv"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn create_add_remove_are_sequenced_system_messages_and_authorize_members() {
    let server = TestServer::start();
    let (mut alice, _) = TestClient::connect_synced(server.addr, "alice", "phone").await;
    let (mut bob, _) = TestClient::connect_synced(server.addr, "bob", "phone").await;
    let (mut carol, _) = TestClient::connect_synced(server.addr, "carol", "phone").await;
    let (mut mallory, _) = TestClient::connect_synced(server.addr, "mallory", "phone").await;

    let reply = alice.call(json!({"type": "group_create", "name": "Trip", "members": ["bob", "bob"]})).await;
    assert_eq!(reply["type"], "group", "{reply}");
    let conv = reply["conv"].as_str().unwrap().to_owned();
    assert!(conv.starts_with("group:"), "{conv}");
    assert_eq!(reply["name"], "Trip");
    assert_eq!(members(&reply), ["alice", "bob"]);

    // The creation is seq 1 of the log, a system message every member receives (alice's
    // came before the `group` reply, which `call` skipped to).
    let created = bob.recv_type("msg").await;
    assert_eq!((created["conv"].as_str(), created["seq"].as_u64()), (Some(conv.as_str()), Some(1)));
    assert_eq!(created["system"], true);
    assert_eq!(created["from"], "alice");
    assert_eq!(created["body"]["event"], "created");
    assert_eq!(created["body"]["name"], "Trip");

    // Outsiders can neither write, read, nor change the group.
    let refused = mallory.send_msg(&conv, "m1", json!("let me in")).await;
    assert_eq!((refused["type"].as_str(), refused["code"].as_str()), (Some("error"), Some("forbidden")), "{refused}");
    let refused = mallory.call(json!({"type": "history", "conv": conv})).await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    let refused = mallory.call(json!({"type": "group_add", "conv": conv, "members": ["mallory"]})).await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    let missing = alice.call(json!({"type": "group_add", "conv": "group:nope", "members": ["bob"]})).await;
    assert_eq!(missing["code"], "not_found", "{missing}");
    let missing = alice.send_msg("group:nope", "x1", json!(1)).await;
    assert_eq!(missing["code"], "not_found", "{missing}");

    // Any member may add; the new member sees their addition and then the traffic.
    let reply = bob.call(json!({"type": "group_add", "conv": conv, "members": ["carol", "alice"]})).await;
    assert_eq!(members(&reply), ["alice", "bob", "carol"], "{reply}");
    let added = carol.recv_type("msg").await;
    assert_eq!((added["seq"].as_u64(), added["system"].as_bool()), (Some(2), Some(true)));
    assert_eq!(added["body"], json!({"event": "added", "by": "bob", "members": ["carol"]}));
    assert_eq!(alice.recv_type("msg").await["seq"], 2);
    // Adding someone already in changes nothing and logs nothing.
    let same = bob.call(json!({"type": "group_add", "conv": conv, "members": ["carol"]})).await;
    assert_eq!(members(&same), ["alice", "bob", "carol"]);

    let ack = carol.send_msg(&conv, "c1", json!({"text": "hi all"})).await;
    assert_eq!(ack["seq"], 3, "{ack}");
    for client in [&mut alice, &mut bob] {
        let msg = client.recv_type("msg").await;
        assert_eq!((msg["seq"].as_u64(), msg["from"].as_str()), (Some(3), Some("carol")));
        assert!(msg.get("system").is_none() || msg["system"] == false);
    }

    // Removal: the removed member hears of it, then is out.
    let reply = alice.call(json!({"type": "group_remove", "conv": conv, "members": ["bob"]})).await;
    assert_eq!(members(&reply), ["alice", "carol"], "{reply}");
    let removed = bob.recv_type("msg").await;
    assert_eq!((removed["seq"].as_u64(), removed["body"]["event"].as_str()), (Some(4), Some("removed")));
    let refused = bob.send_msg(&conv, "b9", json!("still here?")).await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    let refused = bob.call(json!({"type": "history", "conv": conv})).await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    assert_eq!(carol.send_msg(&conv, "c2", json!("bye bob")).await["seq"], 5);
    assert_eq!(alice.recv_type("msg").await["seq"], 5);
    bob.expect_silence(Duration::from_millis(300)).await;

    // Members read the whole log, membership changes included.
    let history = alice.call(json!({"type": "history", "conv": conv})).await;
    let seqs: Vec<u64> = history["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [5, 4, 3, 2, 1]);

    // A member may leave by removing themselves.
    let reply = carol.call(json!({"type": "group_remove", "conv": conv, "members": ["carol"]})).await;
    assert_eq!(members(&reply), ["alice"]);
}

#[tokio::test]
async fn offline_members_get_the_group_traffic_on_resume_and_removed_ones_do_not() {
    let server = TestServer::start();
    let (mut alice, _) = TestClient::connect_synced(server.addr, "alice", "phone").await;
    let conv = create(&mut alice, "Ops", &["bob", "carol"]).await;
    for index in 0..30 {
        let ack = alice.send_msg(&conv, &format!("a{index}"), json!({"n": index})).await;
        assert_eq!(ack["seq"], index + 2, "{ack}");
    }
    alice.call(json!({"type": "group_remove", "conv": conv, "members": ["carol"]})).await;
    alice.send_msg(&conv, "after", json!("carol is gone")).await;

    // Bob was never online: everything replays in order, creation first.
    let (_bob, replayed) = TestClient::connect_synced(server.addr, "bob", "laptop").await;
    let seqs: Vec<u64> = replayed
        .iter()
        .filter(|frame| frame["type"] == "msg" && frame["conv"] == conv)
        .map(|frame| frame["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=33).collect::<Vec<_>>());
    let synced = replayed.last().unwrap();
    assert_eq!(synced["convs"][&conv], 33, "{synced}");

    // Carol was removed while offline: the group is no longer hers to resume.
    let (_carol, replayed) = TestClient::connect_synced(server.addr, "carol", "phone").await;
    assert!(replayed.iter().all(|frame| frame["conv"] != conv), "{replayed:?}");
    assert!(replayed.last().unwrap()["convs"].get(&conv).is_none());
}

#[tokio::test]
async fn group_receipts_are_relayed_in_small_groups_and_aggregated_when_everyone_read() {
    let server = TestServer::start();
    let (mut alice, _) = TestClient::connect_synced(server.addr, "alice", "phone").await;
    let (mut bob, _) = TestClient::connect_synced(server.addr, "bob", "phone").await;
    let (mut carol, _) = TestClient::connect_synced(server.addr, "carol", "phone").await;
    let conv = create(&mut alice, "Book club", &["bob", "carol"]).await;
    let ack = alice.send_msg(&conv, "a1", json!("chapter 1")).await;
    assert_eq!(ack["seq"], 2);
    // Creation (seq 1) was pushed to alice's phone too; read all the way.
    alice.receipt(&conv, 2, "read").await;
    bob.receipt(&conv, 2, "read").await;
    let relayed = alice.recv_type("receipt").await;
    assert_eq!((relayed["user"].as_str(), relayed["seq"].as_u64()), (Some("bob"), Some(2)), "{relayed}");
    assert!(relayed.get("all").is_none(), "{relayed}");

    // Carol is the last: everybody gets one aggregated receipt per kind.
    carol.receipt(&conv, 2, "read").await;
    for client in [&mut alice, &mut bob, &mut carol] {
        let mut kinds = Vec::new();
        while kinds.len() < 2 {
            let receipt = client.recv_type("receipt").await;
            if receipt["all"] == true {
                assert_eq!((receipt["conv"].as_str(), receipt["seq"].as_u64()), (Some(conv.as_str()), Some(2)));
                kinds.push(receipt["kind"].as_str().unwrap().to_owned());
            }
        }
        kinds.sort();
        assert_eq!(kinds, ["delivered", "read"]);
    }

    // Who has read what, per member, on request.
    let marks = alice.call(json!({"type": "receipts", "conv": conv})).await;
    assert_eq!(marks["type"], "receipts", "{marks}");
    let rows: Vec<(String, u64, u64)> = marks["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            (
                row["user"].as_str().unwrap().to_owned(),
                row["delivered"].as_u64().unwrap(),
                row["read"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(rows, [("alice".into(), 2, 2), ("bob".into(), 2, 2), ("carol".into(), 2, 2)]);
}

#[tokio::test]
async fn large_groups_fan_out_to_every_member_device_and_relay_only_aggregates() {
    // 60 members with receipt relay capped at 8: fanout reaches all, per-member receipts
    // stay quiet.
    let server = TestServer::start_with(Options {
        config: "[groups]\nreceipt_relay_max_members = 8\n".to_owned(),
        ..Options::default()
    });
    let (mut owner, _) = TestClient::connect_synced(server.addr, "owner", "phone").await;
    let names: Vec<String> = (0..59).map(|index| format!("m{index:02}")).collect();
    let others: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut clients = Vec::new();
    for name in &names {
        clients.push(TestClient::connect_synced(server.addr, name, "phone").await.0);
    }
    let conv = create(&mut owner, "Everyone", &others).await;
    let ack = owner.send_msg(&conv, "o1", json!({"text": "all hands"})).await;
    assert_eq!(ack["seq"], 2, "{ack}");
    for client in &mut clients {
        assert_eq!(client.recv_type("msg").await["seq"], 1);
        let msg = client.recv_type("msg").await;
        assert_eq!((msg["seq"].as_u64(), msg["from"].as_str()), (Some(2), Some("owner")));
    }
    clients[0].receipt(&conv, 2, "read").await;
    owner.expect_silence(Duration::from_millis(300)).await;
}
