//! The admin HTTP API: bearer auth, stats, disconnect.

use serde_json::Value;

use crate::support::client::TestClient;
use crate::support::http;
use crate::support::server::TestServer;
use crate::support::token::ADMIN_TOKEN;

#[tokio::test]
async fn admin_calls_need_the_token_and_disconnect_closes_every_device() {
    let server = TestServer::start();
    let (mut phone, _) = TestClient::connect_synced(server.addr, "alice", "phone").await;
    let (mut laptop, _) = TestClient::connect_synced(server.addr, "alice", "laptop").await;
    let (_bob, _) = TestClient::connect_synced(server.addr, "bob", "phone").await;

    assert_eq!(http::request(server.addr, "GET", "/api/v1/stats", None, "").await.0, 401);
    assert_eq!(http::request(server.addr, "GET", "/api/v1/stats", Some("wrong"), "").await.0, 401);
    let (status, body) = http::request(server.addr, "GET", "/api/v1/stats", Some(ADMIN_TOKEN), "").await;
    assert_eq!(status, 200, "{body}");
    let stats: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((stats["connections"].clone(), stats["users"].clone()), (3.into(), 2.into()));
    let store = if crate::support::cql::servers_on_cql() { "cql" } else { "embedded" };
    assert_eq!(stats["store"], store);

    let refused = http::request(server.addr, "POST", "/api/v1/disconnect", None, r#"{"user":"alice"}"#).await;
    assert_eq!(refused.0, 401);
    let bad = http::request(server.addr, "POST", "/api/v1/disconnect", Some(ADMIN_TOKEN), r#"{"user":"a b"}"#).await;
    assert_eq!(bad.0, 400, "{}", bad.1);
    let (status, body) =
        http::request(server.addr, "POST", "/api/v1/disconnect", Some(ADMIN_TOKEN), r#"{"user":"alice"}"#).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["closed"], 2);
    assert_eq!(phone.expect_close().await, Some(1000));
    assert_eq!(laptop.expect_close().await, Some(1000));
    crate::assert_eventually!(
        http::get(server.addr, "/metrics").await.1.contains("switchboard_sessions 1"),
        std::time::Duration::from_secs(5),
        "alice's sessions were not removed"
    );
}
