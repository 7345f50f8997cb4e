//! Rate limits and admission control over real sockets: a flooding sender is
//! rate-limited then closed with 4003 while a bystander keeps its latency; per-IP and
//! accept-rate refusals are 503 with `Retry-After` before any upgrade.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::client::{Refused, TestClient};
use crate::support::server::{Options, TestServer};

/// Round trips (send -> ack) of `count` sends, sorted, in ms.
async fn ack_latencies(client: &mut TestClient, conv: &str, prefix: &str, count: usize) -> Vec<f64> {
    let mut latencies = Vec::with_capacity(count);
    for index in 0..count {
        let started = Instant::now();
        let ack = client.send_msg(conv, &format!("{prefix}{index}"), json!({"n": index})).await;
        assert_eq!(ack["type"], "ack", "{ack}");
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
        // Well under the test's 20 sends/s: the bystander itself is never limited.
        tokio::time::sleep(Duration::from_millis(80)).await;
    }
    latencies.sort_by(f64::total_cmp);
    latencies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_sender_is_rate_limited_then_closed_and_others_keep_their_latency() {
    let server = TestServer::start_with(Options {
        config:
            "[rate_limits]\nsends_per_sec = 20.0\nsends_burst = 20\nabuse_strikes = 1500\nabuse_window_ms = 10000\n"
                .to_owned(),
        ..Options::default()
    });
    let (mut bystander, _) = TestClient::connect_synced(server.addr, "carol", "phone").await;
    let baseline = ack_latencies(&mut bystander, "dm:carol:dave", "base", 20).await;

    let flood = tokio::spawn(flood(server.addr, 2_000));
    let during = ack_latencies(&mut bystander, "dm:carol:dave", "during", 20).await;
    let (acked, limited, waits, code) = tokio::time::timeout(Duration::from_secs(30), flood).await.unwrap().unwrap();

    // The burst passes (stored; acks still in flight at the cut-off are not sent), the
    // rest is refused with a wait, and the abuser is cut off.
    assert!(acked <= 100, "acked {acked} limited {limited} code {code:?}");
    let (_victim, replayed) = TestClient::connect_synced(server.addr, "victim", "phone").await;
    let stored = replayed.iter().filter(|frame| frame["type"] == "msg").count();
    assert!((20..=100).contains(&stored), "{stored} of the flood stored");
    assert!(limited >= 1400, "rate_limited {limited}, close {code:?}");
    assert!(waits.iter().all(|wait| (1..=1000).contains(wait)), "{waits:?}");
    assert_eq!(code, Some(4003));
    // The bystander's median round trip stays within 5x its baseline (+20 ms: the suite
    // runs tests in parallel on a small machine), and none of its sends was refused.
    let median = |latencies: &[f64]| latencies[latencies.len() / 2];
    assert!(median(&during) <= median(&baseline) * 5.0 + 20.0, "baseline {baseline:?}, during {during:?}");
}

#[tokio::test]
async fn per_ip_and_accept_rate_limits_refuse_with_503_before_the_upgrade() {
    let server = TestServer::start_with(Options {
        config: "[gateway]\nmax_connections_per_ip = 3\n".to_owned(),
        ..Options::default()
    });
    let mut held = Vec::new();
    for index in 0..3 {
        held.push(TestClient::connect_synced(server.addr, &format!("u{index}"), "phone").await.0);
    }
    let refused = TestClient::connect_with(server.addr, "/ws", &[("Authorization", bearer("u9"))]).await;
    assert!(matches!(refused, Err(Refused::Status(503))), "{:?}", refused.err());
    // A slot is freed when a connection ends.
    held.pop().unwrap().close().await;
    let mut connected = None;
    for _ in 0..50 {
        if let Ok(client) = TestClient::connect_with(server.addr, "/ws", &[("Authorization", bearer("u9"))]).await {
            connected = Some(client);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(connected.is_some(), "the freed slot was not reusable");

    let server = TestServer::start_with(Options {
        config: "[gateway]\naccepts_per_sec = 0.5\naccepts_burst = 3\n".to_owned(),
        ..Options::default()
    });
    let mut outcomes = Vec::new();
    for index in 0..5 {
        let headers = [("Authorization", bearer(&format!("a{index}")))];
        outcomes.push(match TestClient::connect_with(server.addr, "/ws", &headers).await {
            Ok(_) => 101,
            Err(Refused::Status(status)) => status,
            Err(Refused::Other(other)) => panic!("{other}"),
        });
    }
    assert_eq!(outcomes, [101, 101, 101, 503, 503]);
    let (status, _) = crate::support::http::get(server.addr, "/healthz").await;
    assert_eq!(status, 200, "plain HTTP is not subject to the upgrade budget");
    assert!(crate::support::http::metric(server.addr, "switchboard_upgrades_refused_total").await >= 2.0);
}

/// Pipelines `count` sends as mallory as fast as the socket takes them, reading all the
/// while; returns (acks, `rate_limited` errors, their waits, the close code).
async fn flood(addr: std::net::SocketAddr, count: usize) -> (usize, usize, Vec<u64>, Option<u16>) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

    let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
    request.headers_mut().insert("Authorization", bearer("mallory").parse().unwrap());
    let (socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let (mut sink, mut stream) = socket.split();
    let writer = tokio::spawn(async move {
        for index in 0..count {
            let frame = json!({"type": "send", "ref": format!("f{index}"), "conv": "dm:mallory:victim",
                               "cmid": format!("f{index}"), "body": "spam"});
            if sink.send(Message::text(frame.to_string())).await.is_err() {
                break;
            }
        }
    });
    let (mut acked, mut limited, mut waits) = (0, 0, Vec::new());
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.next()).await.expect("flood reader timed out") {
            Some(Ok(Message::Text(text))) => {
                let frame: serde_json::Value = serde_json::from_str(&text).unwrap();
                if frame["type"] == "ack" {
                    acked += 1;
                } else if frame["code"] == "rate_limited" {
                    limited += 1;
                    waits.push(frame["retry_after_ms"].as_u64().unwrap());
                }
            }
            Some(Ok(Message::Close(close))) => break close.map(|close| u16::from(close.code)),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => break None,
        }
    };
    writer.abort();
    (acked, limited, waits, code)
}

fn bearer(user: &str) -> String {
    format!("Bearer {}", crate::support::token::token(user, "phone"))
}
