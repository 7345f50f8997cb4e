//! An acknowledged message survives `kill -9`.

use std::collections::HashMap;

use serde_json::json;

use crate::support::client::TestClient;
use crate::support::server::TestServer;

#[tokio::test]
async fn every_acknowledged_message_survives_kill_9() {
    let mut server = TestServer::start();
    let convs = ["dm:alice:bob", "dm:alice:carol", "dm:bob:carol"];
    let mut senders = Vec::new();
    for (conv, user) in convs.iter().zip(["alice", "carol", "bob"]) {
        let addr = server.addr;
        let conv = conv.to_string();
        senders.push(tokio::spawn(async move {
            let (mut client, _) = TestClient::connect_synced(addr, user, "phone").await;
            let mut acked = Vec::new();
            // Pipelined sends; stop at the first frame that is not an ack (the kill).
            for i in 0..200 {
                let text = json!({"type": "send", "ref": format!("r{i}"), "conv": conv, "cmid": format!("{user}-{i}"), "body": i});
                if client.send_raw(tokio_tungstenite::tungstenite::Message::text(text.to_string())).await.is_err() {
                    break;
                }
            }
            while let Ok(frame) = client.recv_message().await {
                if frame["type"] == "ack" {
                    acked.push((frame["seq"].as_u64().unwrap(), frame["mid"].as_str().unwrap().to_owned()));
                }
                if acked.len() == 200 {
                    break;
                }
            }
            (conv, acked)
        }));
    }
    // Kill while the sends are in flight.
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    server.kill9();
    let mut acked: HashMap<String, Vec<(u64, String)>> = HashMap::new();
    for sender in senders {
        let (conv, acks) = sender.await.unwrap();
        acked.insert(conv, acks);
    }
    let total: usize = acked.values().map(Vec::len).sum();
    assert!(total > 0, "no send was acknowledged before the kill; the test proves nothing");

    server.restart();
    let (mut reader, _) = TestClient::connect_synced(server.addr, "alice", "audit").await;
    let (mut bob, _) = TestClient::connect_synced(server.addr, "bob", "audit").await;
    for (conv, acks) in &acked {
        let client = if conv.contains("alice") { &mut reader } else { &mut bob };
        let r#ref = client.new_ref();
        client.send_json(json!({"type": "history", "ref": r#ref, "conv": conv, "limit": 200})).await;
        let page = client.reply_to(&r#ref).await;
        let stored: HashMap<u64, String> = page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|msg| (msg["seq"].as_u64().unwrap(), msg["mid"].as_str().unwrap().to_owned()))
            .collect();
        for (seq, mid) in acks {
            assert_eq!(stored.get(seq), Some(mid), "{conv} seq {seq} was acked but is missing after kill -9");
        }
        // No gaps: seqs are 1..=n.
        let mut seqs: Vec<u64> = stored.keys().copied().collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "{conv}");
    }
    // The log continues after the restart without reusing a seq.
    let (mut alice, _) = TestClient::connect_synced(server.addr, "alice", "phone").await;
    let next = alice.send_msg("dm:alice:bob", "after-restart", json!("x")).await;
    let before = acked["dm:alice:bob"].iter().map(|(seq, _)| *seq).max().unwrap_or(0);
    assert!(next["seq"].as_u64().unwrap() > before);
}
