//! Upgrades are refused before any actor exists: bad tokens 401, bad origins 403.

use serde_json::json;

use crate::support::client::{Refused, TestClient};
use crate::support::http;
use crate::support::server::{Options, TestServer};
use crate::support::token::{SECRET, now, sign_with, token};

fn assert_status(result: Result<TestClient, Refused>, expected: u16, what: &str) {
    match result {
        Err(Refused::Status(status)) => assert_eq!(status, expected, "{what}"),
        Err(Refused::Other(error)) => panic!("{what}: expected HTTP {expected}, got {error}"),
        Ok(_) => panic!("{what}: expected HTTP {expected}, the upgrade succeeded"),
    }
}

#[tokio::test]
async fn bad_tokens_are_refused_before_the_upgrade() {
    let server =
        TestServer::start_with(Options { config: "[auth]\naudience = \"chat\"\n".to_owned(), ..Options::default() });
    let addr = server.addr;
    let good = |claims: serde_json::Value| sign_with(claims, SECRET);
    let alg_none = format!(
        "{}.{}.",
        "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0", "eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OSwiYXVkIjoiY2hhdCJ9"
    );
    let cases = [
        ("expired", good(json!({"sub": "alice", "aud": "chat", "exp": now() - 3600}))),
        ("not yet valid", good(json!({"sub": "alice", "aud": "chat", "exp": now() + 7200, "nbf": now() + 3600}))),
        ("no exp", good(json!({"sub": "alice", "aud": "chat"}))),
        ("wrong key", sign_with(json!({"sub": "alice", "aud": "chat", "exp": now() + 60}), "not-the-secret")),
        ("wrong audience", good(json!({"sub": "alice", "aud": "other", "exp": now() + 60}))),
        ("bad subject", good(json!({"sub": "al ice", "aud": "chat", "exp": now() + 60}))),
        ("alg none", alg_none),
        ("garbage", "not.a.token".to_owned()),
    ];
    for (what, bad) in cases {
        let result = TestClient::connect_with(addr, "/ws", &[("Authorization", format!("Bearer {bad}"))]).await;
        assert_status(result, 401, what);
    }
    assert_status(TestClient::connect_with(addr, "/ws", &[]).await, 401, "no token");
    // Dev identities are refused when dev mode is off.
    assert_status(TestClient::connect_with(addr, "/ws?user=alice&device=d", &[]).await, 401, "dev identity");
    // A token in the query string works like the header.
    let query_token = good(json!({"sub": "alice", "aud": "chat", "exp": now() + 60}));
    let client = TestClient::connect_with(addr, &format!("/ws?token={query_token}"), &[]).await.expect("query token");
    assert_eq!(client.hello["user"], "alice");
    client.close().await;
    // No actor was created for any refused attempt: one user actor exists, alice's.
    assert!(http::metric(addr, "switchboard_user_actors").await <= 1.0);
    assert_eq!(http::metric(addr, "switchboard_upgrades_refused_total").await, 10.0);
}

#[tokio::test]
async fn origins_outside_the_allow_list_are_refused() {
    let server = TestServer::start_with(Options {
        config: "[gateway]\nallowed_origins = [\"https://chat.example.com\"]\n".to_owned(),
        ..Options::default()
    });
    let auth = ("Authorization", format!("Bearer {}", token("alice", "web")));
    let evil = TestClient::connect_with(
        server.addr,
        "/ws",
        &[auth.clone(), ("Origin", "https://evil.example.com".to_owned())],
    )
    .await;
    assert_status(evil, 403, "foreign origin");
    let good = TestClient::connect_with(
        server.addr,
        "/ws",
        &[auth.clone(), ("Origin", "https://chat.example.com".to_owned())],
    )
    .await;
    assert!(good.is_ok(), "allowed origin must connect");
    // Non-browser clients send no Origin and are allowed.
    assert!(TestClient::connect_with(server.addr, "/ws", &[auth]).await.is_ok());
}

#[tokio::test]
async fn dev_mode_accepts_query_identities_and_probes_answer() {
    let server = TestServer::start_dev();
    let mut client = TestClient::connect_dev(server.addr, "alice", "laptop").await;
    assert_eq!(client.hello["user"], "alice");
    assert_eq!(client.hello["device"], "laptop");
    assert!(client.hello["limits"]["max_frame_bytes"].as_u64().unwrap() >= 1024);
    client.until_synced().await;
    assert_eq!(http::get(server.addr, "/healthz").await.0, 200);
    let (status, body) = http::get(server.addr, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = http::get(server.addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("switchboard_connections"), "{body}");
    // The resume after hello read the device's cursors (store reads are counted by method).
    assert!(body.contains(r#"switchboard_store_reads_total{op="device_cursors"}"#), "{body}");
    assert!(server.log().contains("DEVELOPMENT MODE"), "dev mode must warn loudly");
}

#[tokio::test]
async fn the_example_config_in_deploy_starts_a_node() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/switchboard.example.toml");
    let server = TestServer::start_with(Options { base_config: Some(example.into()), ..Options::default() });
    let mut client = TestClient::connect(server.addr, "alice", "phone").await;
    assert_eq!(client.hello["limits"]["max_frame_bytes"], 65536);
    client.until_synced().await;
}

#[tokio::test]
async fn an_open_connection_is_closed_when_its_token_expires() {
    let server = TestServer::start();
    let claims = |exp: u64| sign_with(json!({"sub": "alice", "dev": "phone", "iat": now(), "exp": exp}), SECRET);
    let mut expiring = TestClient::connect_token(server.addr, &claims(now() + 2)).await;
    // Works until then...
    assert_eq!(expiring.call(json!({"type": "ping"})).await["type"], "pong");
    // ...and is closed with 1008 (policy) at its expiry, without any traffic.
    let started = std::time::Instant::now();
    assert_eq!(expiring.expect_close().await, Some(1008));
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "closed {:?} after the ping", started.elapsed());
    // An expiry too far off to schedule is no expiry: the connection lives.
    let mut lasting = TestClient::connect_token(server.addr, &claims(u64::MAX)).await;
    assert_eq!(lasting.hello["user"], "alice");
    assert_eq!(lasting.call(json!({"type": "ping"})).await["type"], "pong");
    lasting.expect_silence(std::time::Duration::from_millis(300)).await;
    lasting.close().await;
}
