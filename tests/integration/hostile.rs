//! Hostile input and faults over real sockets, each with the numbers that must hold:
//! endless fragments, slowloris handshakes, header bombs, a client that never reads,
//! connection churn, SIGTERM under load.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

use crate::support::client::TestClient;
use crate::support::http;
use crate::support::server::{Options, TestServer};
use crate::support::token::{ADMIN_TOKEN, token};

const MIB: u64 = 1024 * 1024;

async fn stats(server: &TestServer) -> Value {
    let (status, body) = http::request(server.addr, "GET", "/api/v1/stats", Some(ADMIN_TOKEN), "").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Whether the server closes a raw TCP connection (EOF or reset) within `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buffer = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn endless_fragments_close_with_1009_and_memory_stays_bounded() {
    let server = TestServer::start();
    let baseline = server.rss_bytes();
    let mut attackers = Vec::new();
    for index in 0..20 {
        let mut request = format!("ws://{}/ws", server.addr).into_client_request().unwrap();
        request
            .headers_mut()
            .insert("Authorization", format!("Bearer {}", token(&format!("f{index}"), "d")).parse().unwrap());
        let (socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        attackers.push(tokio::spawn(async move {
            let (mut sink, mut stream) = socket.split();
            // A text message that never ends: 16 KiB fragments without FIN.
            let chunk = vec![b'a'; 16 * 1024];
            let first = Frame::message(chunk.clone(), OpCode::Data(Data::Text), false);
            let _ = sink.send(Message::Frame(first)).await;
            let writer = tokio::spawn(async move {
                for _ in 0..10_000 {
                    let next = Frame::message(chunk.clone(), OpCode::Data(Data::Continue), false);
                    if sink.send(Message::Frame(next)).await.is_err() {
                        return;
                    }
                }
            });
            let started = Instant::now();
            let code = loop {
                match tokio::time::timeout(Duration::from_secs(10), stream.next()).await.expect("never closed") {
                    Some(Ok(Message::Close(close))) => break close.map(|close| u16::from(close.code)),
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break None,
                }
            };
            writer.abort();
            (code, started.elapsed())
        }));
    }
    for attacker in attackers {
        let (code, took) = attacker.await.unwrap();
        assert_eq!(code, Some(1009));
        assert!(took < Duration::from_secs(5), "closed after {took:?}");
    }
    // 20 attackers could each have sent 160 MiB; the server buffered at most a frame's
    // worth per connection (max_frame_bytes, 64 KiB).
    let grown = server.rss_bytes().saturating_sub(baseline);
    assert!(grown < 64 * MIB, "RSS grew {} MiB", grown / MIB);
    let (mut client, _) = TestClient::connect_synced(server.addr, "legit", "phone").await;
    assert_eq!(client.call(json!({"type": "ping"})).await["type"], "pong");
}

#[tokio::test]
async fn slowloris_handshakes_are_closed_at_the_timeout_and_header_bombs_are_rejected() {
    let server = TestServer::start_with(Options {
        config: "[gateway]\nhandshake_timeout_ms = 1000\n".to_owned(),
        ..Options::default()
    });
    // 100 connections trickling a request head, one byte every 100 ms.
    let mut slow = Vec::new();
    for _ in 0..100 {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        slow.push(stream);
    }
    let trickle = tokio::spawn(async move {
        let started = Instant::now();
        let mut open = slow;
        let mut closed_at = Vec::new();
        while !open.is_empty() && started.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mut still_open = Vec::new();
            for mut stream in open {
                let wrote = stream.write_all(b"X").await.is_ok();
                if wrote && !closed_within(&mut stream, Duration::from_millis(1)).await {
                    still_open.push(stream);
                } else {
                    closed_at.push(started.elapsed());
                }
            }
            open = still_open;
        }
        (open.len(), closed_at)
    });
    // Legitimate clients connect meanwhile.
    let (mut client, _) = TestClient::connect_synced(server.addr, "legit", "phone").await;
    assert_eq!(client.call(json!({"type": "ping"})).await["type"], "pong");
    let (left_open, closed_at) = trickle.await.unwrap();
    assert_eq!(left_open, 0, "slowloris connections survived 10 s");
    let last = closed_at.iter().max().unwrap();
    assert!(*last < Duration::from_secs(4), "the last slow handshake was closed after {last:?}");

    // Header bombs: too many headers, too large a head.
    for head in [
        (0..200).map(|index| format!("X-Bomb-{index}: x\r\n")).collect::<String>(),
        format!("X-Bomb: {}\r\n", "x".repeat(64 * 1024)),
    ] {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        let request = format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{head}\r\n");
        let _ = stream.write_all(request.as_bytes()).await;
        let mut response = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response)).await;
        let response = String::from_utf8_lossy(&response);
        assert!(response.is_empty() || response.starts_with("HTTP/1.1 431"), "{response}");
    }
    let (status, _) = http::get(server.addr, "/healthz").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_client_that_never_reads_is_closed_with_4001_and_resumes_without_gaps() {
    let server = TestServer::start_with(Options {
        config: "[gateway]\noutbox_max_frames = 64\noutbox_max_bytes = 262144\n".to_owned(),
        ..Options::default()
    });
    let baseline = server.rss_bytes();
    // Bob connects and stops reading.
    let (mut bob, _) = TestClient::connect_synced(server.addr, "bob", "phone").await;
    let (mut alice, _) = TestClient::connect_synced(server.addr, "alice", "phone").await;
    let body = "x".repeat(8 * 1024);
    let started = Instant::now();
    let mut sent = 0;
    // 8 KiB messages until the kernel buffers and bob's outbox are full (a few MiB).
    while sent < 2_000 {
        sent += 1;
        let ack = alice.send_msg("dm:alice:bob", &format!("c{sent}"), json!({"n": sent, "pad": body})).await;
        assert_eq!(ack["seq"], sent, "{ack}");
        if sent % 100 == 0 && http::metric(server.addr, "switchboard_outbox_overflow_total").await >= 1.0 {
            break;
        }
    }
    assert!(http::metric(server.addr, "switchboard_outbox_overflow_total").await >= 1.0, "never overflowed");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(30), "4001 only after {took:?}");
    let grown = server.rss_bytes().saturating_sub(baseline);
    assert!(grown < 64 * MIB, "RSS grew {} MiB while bob did not read", grown / MIB);

    // Bob reads what made it to his socket, then the 4001.
    let mut seen = std::collections::BTreeSet::new();
    let close = loop {
        match bob.recv_message().await {
            Ok(frame) if frame["type"] == "msg" => {
                seen.insert(frame["seq"].as_u64().unwrap());
            }
            Ok(_) => {}
            Err(close) => break close.map(|close| u16::from(close.code)),
        }
    };
    assert_eq!(close, Some(4001));
    // Resume: everything after the cursor arrives; with what he had read: no gaps.
    let (_bob, replayed) = TestClient::connect_synced(server.addr, "bob", "phone").await;
    seen.extend(replayed.iter().filter(|frame| frame["type"] == "msg").map(|frame| frame["seq"].as_u64().unwrap()));
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), (1..=sent).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_of_thousands_of_connections_returns_to_baseline() {
    let server =
        TestServer::start_with(Options { config: "[actors]\nuser_idle_ms = 200\n".to_owned(), ..Options::default() });
    // A first round warms what is meant to stay: allocator pools, the store's memtable
    // and caches (same user names both rounds). The second round must not add to it.
    churn(server.addr, 5_000).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (fds, rss) = (server.open_fds(), server.rss_bytes());
    let started = Instant::now();
    churn(server.addr, 5_000).await;
    let rate = 5_000.0 / started.elapsed().as_secs_f64();
    // Everything closes: connections, tasks, descriptors.
    let mut settled = false;
    for _ in 0..100 {
        let now = stats(&server).await;
        let idle = now["connections"] == 0 && now["tasks"] == 0 && now["user_actors"] == 0;
        if idle && server.open_fds() <= fds + 2 {
            settled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(settled, "not back to baseline: {} (fds {} vs {fds})", stats(&server).await, server.open_fds());
    let grown = server.rss_bytes().saturating_sub(rss);
    assert!(grown < 24 * MIB, "RSS grew {} MiB over 5,000 connections ({rate:.0}/s)", grown / MIB);
}

/// Opens and closes `count` authenticated connections, 50 at a time, each synced.
async fn churn(addr: SocketAddr, count: usize) {
    let mut tasks = Vec::new();
    for worker in 0..50 {
        tasks.push(tokio::spawn(async move {
            for index in (worker..count).step_by(50) {
                let (client, _) = TestClient::connect_synced(addr, &format!("churn{index}"), "d").await;
                client.close().await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_closes_with_1001_and_loses_nothing_acknowledged() {
    let mut server = TestServer::start();
    let mut senders = Vec::new();
    for index in 0..10 {
        let (client, _) = TestClient::connect_synced(server.addr, &format!("s{index}"), "phone").await;
        senders.push(tokio::spawn(async move {
            let mut client = client;
            let conv = format!("dm:r{index}:s{index}");
            let mut acked = Vec::new();
            for n in 0..100_000 {
                let frame =
                    json!({"type": "send", "ref": format!("{n}"), "conv": conv, "cmid": format!("{n}"), "body": n});
                if client.send_raw(Message::text(frame.to_string())).await.is_err() {
                    // The server is closing: its close frame may still be readable.
                    loop {
                        if let Err(close) = client.recv_message().await {
                            return (conv, acked, close.map(|close| u16::from(close.code)));
                        }
                    }
                }
                match client.recv_message().await {
                    Ok(ack) if ack["type"] == "ack" => acked.push(ack["seq"].as_u64().unwrap()),
                    Ok(_) => {}
                    Err(close) => return (conv, acked, close.map(|close| u16::from(close.code))),
                }
            }
            (conv, acked, None)
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (status, took) = tokio::task::block_in_place(|| server.terminate(Duration::from_secs(10)));
    assert!(status.expect("no exit within 10 s").success());
    assert!(took < Duration::from_secs(5), "exit took {took:?} (grace 3 s)");
    server.restart();
    let mut total = 0;
    for sender in senders {
        let (conv, acked, code) = sender.await.unwrap();
        assert_eq!(code, Some(1001), "{conv}");
        assert!(!acked.is_empty(), "{conv}: nothing acknowledged before the shutdown");
        total += acked.len();
        let peer = conv.split(':').nth(1).unwrap().to_owned();
        let (_reader, replayed) = TestClient::connect_synced(server.addr, &peer, "phone").await;
        let stored: Vec<u64> = replayed
            .iter()
            .filter(|frame| frame["type"] == "msg")
            .map(|frame| frame["seq"].as_u64().unwrap())
            .collect();
        // Every acknowledged seq is stored, and the log has no gap.
        assert_eq!(stored, (1..=stored.len() as u64).collect::<Vec<_>>(), "{conv}");
        assert!(acked.iter().all(|seq| stored.contains(seq)), "{conv}: acked {acked:?} stored {stored:?}");
    }
    assert!(total >= 10, "only {total} sends were acknowledged");
}

fn fault_server(max_restarts: u32) -> TestServer {
    TestServer::start_with(Options {
        config: format!("[actors]\nmax_restarts = {max_restarts}\nrestart_window_secs = 60\n"),
        env: vec![("SWITCHBOARD_FAULT_INJECTION".to_owned(), "1".to_owned())],
        ..Options::default()
    })
}

/// Crashes `conv`'s actor; the HTTP status, 0 if the server is gone.
async fn crash(server: &TestServer, conv: &str) -> u16 {
    let body = json!({"conv": conv}).to_string();
    let response = http::try_request(server.addr, "POST", "/api/v1/fault/crash", Some(ADMIN_TOKEN), &body).await;
    response.map_or(0, |(status, _)| status)
}

#[tokio::test]
async fn a_crashed_conversation_actor_restarts_and_loses_nothing_acknowledged() {
    let server = fault_server(20);
    let (mut alice, _) = TestClient::connect_synced(server.addr, "alice", "phone").await;
    let (mut bob, _) = TestClient::connect_synced(server.addr, "bob", "phone").await;
    let (crashing, bystander) = ("dm:alice:bob", "dm:alice:carol");
    let mut acked = Vec::new();
    for round in 0..5 {
        for n in 0..10 {
            let cmid = format!("r{round}n{n}");
            // A send racing the crash may be refused: the client retries with its cmid.
            let mut ack = alice.send_msg(crashing, &cmid, json!(n)).await;
            for _ in 0..50 {
                if ack["type"] == "ack" {
                    break;
                }
                assert_eq!(ack["code"], "unavailable", "{ack}");
                tokio::time::sleep(Duration::from_millis(20)).await;
                ack = alice.send_msg(crashing, &cmid, json!(n)).await;
            }
            acked.push(ack["seq"].as_u64().expect("acked"));
        }
        assert_eq!(crash(&server, crashing).await, 200);
        // The bystander conversation is untouched.
        assert_eq!(alice.send_msg(bystander, &format!("b{round}"), json!(round)).await["seq"], round + 1);
    }
    assert_eq!(acked, (1..=50).collect::<Vec<_>>());
    let mut delivered: Vec<u64> = Vec::new();
    while delivered.len() < 50 {
        let msg = bob.recv_type("msg").await;
        delivered.push(msg["seq"].as_u64().unwrap());
    }
    assert_eq!(delivered, (1..=50).collect::<Vec<_>>());
    assert!(server.log().contains("fault injection: conversation actor crash"));
    // Without the variable the hook does not exist.
    let plain = TestServer::start();
    assert_eq!(crash(&plain, crashing).await, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loop_past_the_restart_limits_stops_the_node() {
    let mut server = fault_server(2);
    let (mut client, _) = TestClient::connect_synced(server.addr, "alice", "phone").await;
    for index in 0..20 {
        if crash(&server, &format!("dm:alice:u{index}")).await != 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The node gives up: clients are told to go elsewhere, the process exits with an
    // error for its supervisor (systemd, Kubernetes) to restart it.
    assert_eq!(client.expect_close().await, Some(1001));
    let status = tokio::task::block_in_place(|| server.wait_exit(Duration::from_secs(15))).expect("still running");
    assert!(!status.success(), "{status:?}");
    assert!(server.log().contains("escalated past its restart limit"), "{}", server.log());
}
