//! SIGTERM: clients are told to go elsewhere (1001) and the process exits in its grace.

use std::time::Duration;

use serde_json::json;

use crate::support::client::TestClient;
use crate::support::server::TestServer;

#[tokio::test]
async fn sigterm_closes_every_client_with_1001_and_exits_within_the_grace() {
    let mut server = TestServer::start();
    let mut clients = Vec::new();
    for i in 0..20 {
        let (client, _) = TestClient::connect_synced(server.addr, &format!("user{i}"), "phone").await;
        clients.push(client);
    }
    let ack = clients[0].send_msg("dm:user0:user1", "c1", json!("before shutdown")).await;
    assert_eq!(ack["type"], "ack");
    let closes = clients
        .into_iter()
        .map(|mut client| tokio::spawn(async move { client.expect_close().await }))
        .collect::<Vec<_>>();
    let stopper = tokio::task::spawn_blocking(move || {
        let outcome = server.terminate(Duration::from_secs(10));
        (outcome, server)
    });
    for close in closes {
        assert_eq!(close.await.unwrap(), Some(1001));
    }
    let ((status, took), mut server) = stopper.await.unwrap();
    let status = status.expect("the server did not exit within 10 s");
    assert!(status.success(), "exit status {status:?}");
    // Grace is 3 s in the test config.
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    server.restart();
    let (_client, replayed) = TestClient::connect_synced(server.addr, "user1", "phone").await;
    assert!(replayed.iter().any(|frame| frame["body"] == "before shutdown"));
}
