//! Bad input gets the right error frame or close code, and the server stays healthy.

use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::support::client::TestClient;
use crate::support::http;
use crate::support::server::TestServer;

async fn assert_error(client: &mut TestClient, code: &str, r#ref: Option<&str>) {
    let frame = client.recv_type("error").await;
    assert_eq!(frame["code"], code, "{frame}");
    assert!(frame["message"].as_str().is_some_and(|message| !message.is_empty()));
    match r#ref {
        Some(r#ref) => assert_eq!(frame["ref"], r#ref, "{frame}"),
        None => assert!(frame.get("ref").is_none_or(|value| value.is_null()), "{frame}"),
    }
}

#[tokio::test]
async fn bad_frames_get_error_frames_and_the_connection_survives() {
    let server = TestServer::start();
    let (mut alice, _) = TestClient::connect_synced(server.addr, "alice", "phone").await;

    alice.send_text("{not json".to_owned()).await;
    assert_error(&mut alice, "bad_request", None).await;
    alice.send_text("[1,2,3]".to_owned()).await;
    assert_error(&mut alice, "bad_request", None).await;
    alice.send_json(json!({"ref": "r0"})).await;
    assert_error(&mut alice, "bad_request", Some("r0")).await;
    alice.send_json(json!({"type": "teleport", "ref": "r1"})).await;
    assert_error(&mut alice, "bad_request", Some("r1")).await;
    alice.send_json(json!({"type": "send", "ref": "r2", "conv": "dm:bob:alice", "cmid": "x", "body": 1})).await;
    assert_error(&mut alice, "bad_request", Some("r2")).await;
    alice.send_json(json!({"type": "send", "ref": "r3", "conv": "nonsense", "cmid": "x", "body": 1})).await;
    assert_error(&mut alice, "bad_request", Some("r3")).await;
    alice.send_json(json!({"type": "send", "ref": "r4", "conv": "dm:alice:bob", "body": 1})).await;
    assert_error(&mut alice, "bad_request", Some("r4")).await;
    alice.send_json(json!({"type": "send", "ref": "r5", "conv": "dm:bob:carol", "cmid": "x", "body": 1})).await;
    assert_error(&mut alice, "forbidden", Some("r5")).await;
    alice.send_json(json!({"type": "history", "ref": "r6", "conv": "dm:bob:carol"})).await;
    assert_error(&mut alice, "forbidden", Some("r6")).await;
    alice.send_json(json!({"type": "history", "ref": "r7", "conv": "dm:alice:bob", "limit": 500})).await;
    assert_error(&mut alice, "bad_request", Some("r7")).await;
    let big_body = "x".repeat(20_000);
    alice
        .send_json(json!({"type": "send", "ref": "r8", "conv": "dm:alice:bob", "cmid": "big", "body": big_body}))
        .await;
    assert_error(&mut alice, "too_large", Some("r8")).await;
    alice.send_raw(Message::binary(vec![1, 2, 3])).await.unwrap();
    assert_error(&mut alice, "bad_request", None).await;
    // Unknown fields are ignored.
    let ack = {
        alice
            .send_json(
                json!({"type": "send", "ref": "ok", "conv": "dm:alice:bob", "cmid": "c1", "body": 1, "extra": true}),
            )
            .await;
        alice.reply_to("ok").await
    };
    assert_eq!(ack["type"], "ack", "{ack}");
    alice.send_json(json!({"type": "ping", "ref": "p"})).await;
    assert_eq!(alice.reply_to("p").await["type"], "pong");
    assert_eq!(http::get(server.addr, "/healthz").await.0, 200);
}

#[tokio::test]
async fn an_oversized_frame_closes_with_1009_and_others_are_unharmed() {
    let server = TestServer::start();
    let (mut alice, _) = TestClient::connect_synced(server.addr, "alice", "phone").await;
    let (mut bob, _) = TestClient::connect_synced(server.addr, "bob", "phone").await;
    let huge = format!("{{\"type\":\"ping\",\"pad\":\"{}\"}}", "x".repeat(200_000));
    let _ = alice.send_raw(Message::text(huge)).await;
    assert_eq!(alice.expect_close().await, Some(1009));
    let ack = bob.send_msg("dm:alice:bob", "c1", json!("fine")).await;
    assert_eq!(ack["type"], "ack");
    assert_eq!(http::get(server.addr, "/healthz").await.0, 200);
    let (_again, _) = TestClient::connect_synced(server.addr, "alice", "phone").await;
}

#[tokio::test]
async fn dev_mode_refuses_a_public_listen_address() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["serve", "--dev", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(tempfile::tempdir().unwrap().path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("dev mode refuses"), "{stderr}");
}

#[tokio::test]
async fn a_silent_connection_is_closed_at_the_idle_timeout_and_a_live_one_is_kept() {
    let server = crate::support::server::TestServer::start_with(crate::support::server::Options {
        config: "[gateway]\nidle_timeout_ms = 800\nping_interval_ms = 200\n".to_owned(),
        ..Default::default()
    });
    let (mut silent, _) = TestClient::connect_synced(server.addr, "alice", "phone").await;
    let (mut live, _) = TestClient::connect_synced(server.addr, "bob", "phone").await;
    // The live client keeps reading, so it answers the server's pings with pongs.
    live.expect_silence(std::time::Duration::from_millis(2000)).await;
    // The silent one read nothing, answered no ping, and was closed meanwhile (1000).
    // It reads the close frame only if the kernel has not discarded it: the pong it owes
    // for the pings it reads first hits a socket the server has already closed.
    assert_eq!(http::metric(server.addr, "switchboard_closes_total").await, 1.0);
    assert!(matches!(silent.expect_close().await, Some(1000) | None));
    let ack = live.send_msg("dm:alice:bob", "c1", json!("still connected")).await;
    assert_eq!(ack["type"], "ack");
}
