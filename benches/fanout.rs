//! Fanout benchmark: one group or feed, many connected members, time to the last
//! delivery.
//!
//! Against a running server in development mode (`switchboard serve --dev`), it opens
//! `--members` connections (spread over 127.0.0.x source addresses, small buffers), puts
//! them all in one group (`group_create` + `group_add` in chunks of 1,000) or subscribes
//! them all to one feed, then sends `--messages` messages, one every `--interval-ms`: into
//! the group from an extra member connection, or to the feed through the admin API
//! (`SWITCHBOARD_ADMIN_TOKEN`). Every message carries its send time; for each one it
//! records when the last member received it, and reports, per message, the time to the
//! last delivery (p50 / max), the deliveries per second over the run, and deliveries
//! missing at the deadline.
//!
//! ```sh
//! SWITCHBOARD_ADMIN_TOKEN=bench ./target/release/switchboard serve --dev --listen 127.0.0.1:18400 --data-dir /tmp/fanout &
//! SWITCHBOARD_ADMIN_TOKEN=bench cargo bench --bench fanout -- --url 127.0.0.1:18400 --kind feed --members 18000
//! ```
//!
//! One process holds at most ~19,000 sockets on these machines (the open-files limit),
//! like the server: a single run measures what one server process can hold.

use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

struct Args {
    url: SocketAddr,
    kind: String,
    members: usize,
    messages: usize,
    interval: Duration,
    deadline: Duration,
}

fn args() -> Args {
    let mut args = Args {
        url: "127.0.0.1:8080".parse().unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8080))),
        kind: "group".to_owned(),
        members: 1000,
        messages: 20,
        interval: Duration::from_millis(500),
        deadline: Duration::from_secs(120),
    };
    let mut given = std::env::args().skip(1);
    while let Some(flag) = given.next() {
        let mut value = || given.next().unwrap_or_default();
        match flag.as_str() {
            "--url" => args.url = value().parse().expect("--url HOST:PORT"),
            "--kind" => args.kind = value(),
            "--members" => args.members = value().parse().expect("--members N"),
            "--messages" => args.messages = value().parse().expect("--messages N"),
            "--interval-ms" => args.interval = Duration::from_millis(value().parse().expect("--interval-ms MS")),
            "--deadline-s" => args.deadline = Duration::from_secs(value().parse().expect("--deadline-s S")),
            // cargo bench passes --bench; ignore what we do not know.
            _ => {}
        }
    }
    assert!(args.kind == "group" || args.kind == "feed", "--kind group|feed");
    args
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |now| now.as_micros() as u64)
}

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

/// Opens connection `index` as `user`, from 127.0.0.(2 + index / 15000).
async fn connect(addr: SocketAddr, index: usize, user: &str) -> Ws {
    let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (index / 15_000) as u8));
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::new(source, 0)).expect("bind source address");
    let stream = socket.connect(addr).await.expect("connect");
    let mut config = WebSocketConfig::default();
    config.read_buffer_size = 4096;
    config.write_buffer_size = 0;
    let url = format!("ws://{addr}/ws?user={user}&device=bench");
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config)).await.expect("upgrade");
    ws
}

async fn until(ws: &mut Ws, mut done: impl FnMut(&Value) -> bool) -> Value {
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await.expect("frame timeout") {
            Some(Ok(Message::Text(text))) => {
                let frame: Value = serde_json::from_str(&text).expect("json");
                if done(&frame) {
                    return frame;
                }
            }
            Some(Ok(_)) => {}
            other => panic!("connection ended: {other:?}"),
        }
    }
}

async fn request(ws: &mut Ws, frame: Value) -> Value {
    let r#ref = frame["ref"].clone();
    ws.send(Message::text(frame.to_string())).await.expect("send");
    let reply = until(ws, |reply| reply["ref"] == r#ref).await;
    assert_ne!(reply["type"], "error", "{reply}");
    reply
}

async fn admin_publish(addr: SocketAddr, token: &str, conv: &str, body: &Value) {
    let payload = json!({"conv": conv, "body": body}).to_string();
    let mut stream = TcpStream::connect(addr).await.expect("admin connect");
    let head = format!(
        "POST /api/v1/publish HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{payload}",
        payload.len()
    );
    stream.write_all(head.as_bytes()).await.expect("admin write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("admin read");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
}

/// Per message: the latest delivery time (µs since the epoch) and how many arrived.
struct Tally {
    last: Vec<u64>,
    count: Vec<usize>,
}

fn main() {
    // `cargo test --all-targets` runs bench targets too, without `--bench`: nothing to
    // check here without a server, so only `cargo bench` runs it.
    if !std::env::args().any(|arg| arg == "--bench") {
        println!("fanout: a benchmark against a running server; run it with `cargo bench --bench fanout -- ...`");
        return;
    }
    let args = args();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    tokio::task::LocalSet::new().block_on(&runtime, run(args));
}

async fn run(args: Args) {
    let run_id = format!("{:x}", now_us() % 0xffff_ffff);
    let tally = Rc::new(RefCell::new(Tally { last: vec![0; args.messages], count: vec![0; args.messages] }));
    println!("fanout: {} to {} members on {}, {} messages", args.kind, args.members, args.url, args.messages);

    // Connect every member and wait for its initial `synced`.
    let started = Instant::now();
    let mut members = Vec::with_capacity(args.members);
    for index in 0..args.members {
        let mut ws = connect(args.url, index, &format!("m{run_id}x{index}")).await;
        until(&mut ws, |frame| frame["type"] == "synced").await;
        members.push(ws);
    }
    println!("connected {} in {:.1} s", members.len(), started.elapsed().as_secs_f64());

    let mut owner = connect(args.url, 0, &format!("owner{run_id}")).await;
    until(&mut owner, |frame| frame["type"] == "synced").await;
    let conv = if args.kind == "group" {
        let names: Vec<String> = (0..args.members).map(|index| format!("m{run_id}x{index}")).collect();
        let mut chunks = names.chunks(1000);
        let first = chunks.next().unwrap_or_default();
        let created =
            request(&mut owner, json!({"type": "group_create", "ref": "c", "name": "bench", "members": first})).await;
        let conv = created["conv"].as_str().expect("conv").to_owned();
        for (index, chunk) in chunks.enumerate() {
            request(
                &mut owner,
                json!({"type": "group_add", "ref": format!("a{index}"), "conv": conv, "members": chunk}),
            )
            .await;
        }
        conv
    } else {
        let conv = format!("feed:bench{run_id}");
        for (index, ws) in members.iter_mut().enumerate() {
            request(ws, json!({"type": "subscribe", "ref": format!("s{index}"), "conv": conv})).await;
        }
        conv
    };
    println!("{conv} ready after {:.1} s", started.elapsed().as_secs_f64());

    // Every member reads on: record each bench message by its index.
    let mut readers = Vec::new();
    for mut ws in members {
        let tally = Rc::clone(&tally);
        let conv = conv.clone();
        readers.push(tokio::task::spawn_local(async move {
            while let Some(Ok(message)) = ws.next().await {
                let Message::Text(text) = message else { continue };
                let Ok(frame) = serde_json::from_str::<Value>(&text) else { continue };
                if frame["type"] != "msg" || frame["conv"] != conv.as_str() {
                    continue;
                }
                let Some(index) = frame["body"]["i"].as_u64() else { continue };
                let mut tally = tally.borrow_mut();
                let slot = index as usize;
                tally.last[slot] = tally.last[slot].max(now_us());
                tally.count[slot] += 1;
            }
        }));
    }

    let token = std::env::var("SWITCHBOARD_ADMIN_TOKEN").unwrap_or_default();
    let mut sent_at = Vec::with_capacity(args.messages);
    let first_send = Instant::now();
    for index in 0..args.messages {
        let body = json!({"i": index, "t": now_us()});
        sent_at.push(now_us());
        if args.kind == "group" {
            let frame = json!({"type": "send", "ref": format!("p{index}"), "conv": conv, "cmid": format!("p{index}"), "body": body});
            request(&mut owner, frame).await;
        } else {
            admin_publish(args.url, &token, &conv, &body).await;
        }
        tokio::time::sleep(args.interval).await;
    }
    // Wait for every delivery or the deadline.
    let expected = args.members * args.messages;
    let deadline = Instant::now() + args.deadline;
    while tally.borrow().count.iter().sum::<usize>() < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let tally = tally.borrow();
    let delivered: usize = tally.count.iter().sum();
    let mut to_last: Vec<f64> = (0..args.messages)
        .filter(|&index| tally.count[index] > 0)
        .map(|index| tally.last[index].saturating_sub(sent_at[index]) as f64 / 1000.0)
        .collect();
    to_last.sort_by(f64::total_cmp);
    let span_s = (tally.last.iter().max().copied().unwrap_or(0).saturating_sub(sent_at[0])) as f64 / 1e6;
    let busy_s = to_last.iter().sum::<f64>() / 1000.0;
    println!(
        "delivered {delivered} of {expected} ({} missing) in {:.1} s",
        expected - delivered,
        first_send.elapsed().as_secs_f64()
    );
    if let (Some(first), Some(last)) = (to_last.first(), to_last.last()) {
        println!(
            "time to last delivery per message: min {first:.1} ms, p50 {:.1} ms, max {last:.1} ms",
            to_last[to_last.len() / 2]
        );
        println!(
            "deliveries/s while fanning out: {:.0} ({} deliveries per message / mean time to last delivery); over the whole run {:.0}",
            delivered as f64 / busy_s.max(1e-9),
            args.members,
            delivered as f64 / span_s.max(1e-9)
        );
    }
    for reader in readers {
        reader.abort();
    }
}
