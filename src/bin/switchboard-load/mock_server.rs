//! A tiny stand-in for the switchboard server, for tests only: enough of wire contract
//! v1 (hello, resume of dms after the device's cursor then synced, send -> ack + msg to
//! the other dm member, subscribe -> subscribed, receipts move cursors) to exercise the
//! load generator end to end without the real server. Tests publish to a feed's
//! subscribers with [`MockServer::publish`].
//!
//! It can drop a seq now and then (`skip_every`) so tests can check gap detection,
//! refuse upgrades with 503 ([`MockServer::refuse_upgrades`]) so they can check retries,
//! and it checks tokens with the shared secret when one is configured.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt as _, StreamExt as _};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;

use crate::auth::Claims;

/// How the mock behaves.
#[derive(Debug, Clone, Default)]
pub(crate) struct MockOptions {
    /// Check `Authorization: Bearer` tokens with this secret (else dev mode only).
    pub(crate) secret: Option<String>,
    /// Skip one seq after every this many messages of a conversation.
    pub(crate) skip_every: Option<u64>,
}

/// What the mock counted.
#[derive(Debug, Default)]
pub(crate) struct MockCounts {
    pub(crate) connections: AtomicU64,
    pub(crate) receipts: AtomicU64,
    pub(crate) sends: AtomicU64,
    /// Upgrades refused with 503.
    pub(crate) refused: AtomicU64,
    /// Upgrades still to refuse.
    refusals_left: AtomicU64,
}

/// A running mock server.
#[derive(Debug)]
pub(crate) struct MockServer {
    pub(crate) addr: SocketAddr,
    pub(crate) counts: Arc<MockCounts>,
    state: Arc<Mutex<State>>,
}

impl MockServer {
    /// The WebSocket URL of the mock.
    pub(crate) fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Refuses the next `count` upgrades with 503 and `Retry-After: 0`.
    pub(crate) fn refuse_upgrades(&self, count: u64) {
        self.counts.refusals_left.store(count, Ordering::Relaxed);
    }

    /// Sequences `body` (JSON text) in the feed `conv` and sends it to its subscribers.
    pub(crate) fn publish(&self, conv: &str, body: &str) {
        let Ok(mut state) = self.state.lock() else { return };
        let seq = state.seqs.entry(conv.to_owned()).or_insert(0);
        *seq += 1;
        let frame = format!(
            r#"{{"type":"msg","conv":"{conv}","seq":{seq},"mid":"m","from":"admin","dev":"admin","ts":0,"body":{body}}}"#
        );
        for user in state.subscribers.get(conv).into_iter().flatten() {
            if let Some(online) = state.online.get(user) {
                let _ = online.send(frame.clone());
            }
        }
    }
}

#[derive(Debug, Default)]
struct State {
    online: HashMap<String, mpsc::UnboundedSender<String>>,
    seqs: HashMap<String, u64>,
    /// Users following each feed.
    subscribers: HashMap<String, Vec<String>>,
    /// The `msg` frames of each dm with their sender and device, in seq order.
    logs: HashMap<String, Vec<Stored>>,
    /// Delivered cursors by (user, device), then conversation.
    cursors: HashMap<(String, String), HashMap<String, u64>>,
}

#[derive(Debug)]
struct Stored {
    seq: u64,
    from: String,
    device: String,
    frame: String,
}

/// The members of a dm, from its id.
fn dm_members(conv: &str) -> Option<(&str, &str)> {
    conv.strip_prefix("dm:")?.split_once(':')
}

/// Starts a mock server on `127.0.0.1:port` (0 for any free port).
pub(crate) async fn spawn(options: MockOptions, port: u16) -> std::io::Result<MockServer> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    let counts = Arc::new(MockCounts::default());
    let state = Arc::new(Mutex::new(State::default()));
    let options = Arc::new(options);
    let task_counts = Arc::clone(&counts);
    let task_state = Arc::clone(&state);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream, Arc::clone(&options), Arc::clone(&task_state), Arc::clone(&task_counts)));
        }
    });
    Ok(MockServer { addr, counts, state })
}

/// The user and device of an upgrade request.
fn identify(request: &Request, options: &MockOptions) -> Option<(String, String)> {
    if let Some(secret) = &options.secret {
        let header = request.headers().get("authorization")?.to_str().ok()?;
        let token = header.strip_prefix("Bearer ")?;
        let key = DecodingKey::from_secret(secret.as_bytes());
        let data = jsonwebtoken::decode::<Claims>(token, &key, &Validation::new(Algorithm::HS256)).ok()?;
        return Some((data.claims.sub, data.claims.dev));
    }
    let query = request.uri().query()?;
    let param = |name: &str| query.split('&').find_map(|pair| pair.strip_prefix(name)).map(str::to_owned);
    Some((param("user=")?, param("device=").unwrap_or_else(|| "default".to_owned())))
}

#[expect(clippy::result_large_err, reason = "the handshake callback's signature is tungstenite's")]
async fn serve(stream: TcpStream, options: Arc<MockOptions>, state: Arc<Mutex<State>>, counts: Arc<MockCounts>) {
    let _ = stream.set_nodelay(true);
    let mut identity = None;
    let callback = |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
        if counts.refusals_left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| left.checked_sub(1)).is_ok() {
            counts.refused.fetch_add(1, Ordering::Relaxed);
            let mut refused = ErrorResponse::new(None);
            *refused.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            refused.headers_mut().insert("retry-after", "0".parse().expect("header value"));
            return Err(refused);
        }
        identity = identify(request, &options);
        if identity.is_none() {
            let mut refused = ErrorResponse::new(None);
            *refused.status_mut() = StatusCode::UNAUTHORIZED;
            return Err(refused);
        }
        Ok(response)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
        return;
    };
    let Some((user, device)) = identity else { return };
    counts.connections.fetch_add(1, Ordering::Relaxed);
    let (mut sink, mut stream) = ws.split();
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<String>();
    let writer = tokio::spawn(async move {
        while let Some(frame) = out_rx.recv().await {
            if sink.send(Message::text(frame)).await.is_err() {
                break;
            }
        }
    });
    let hello = json!({"type":"hello","user":user,"device":device,"node":"mock","server":"mock","limits":{}});
    let _ = out_tx.send(hello.to_string());
    if let Ok(mut state) = state.lock() {
        // Resume under the lock, so no live message slips between replay and online.
        let cursors = state.cursors.get(&(user.clone(), device.clone())).cloned().unwrap_or_default();
        let mut heads = serde_json::Map::new();
        for (conv, log) in &state.logs {
            if !dm_members(conv).is_some_and(|(a, b)| a == user || b == user) {
                continue;
            }
            let cursor = cursors.get(conv).copied().unwrap_or(0);
            for stored in log.iter().filter(|stored| stored.seq > cursor) {
                if !(stored.from == user && stored.device == device) {
                    let _ = out_tx.send(stored.frame.clone());
                }
            }
            heads.insert(conv.clone(), json!(state.seqs.get(conv).copied().unwrap_or(0)));
        }
        let _ = out_tx.send(json!({"type":"synced","convs":heads}).to_string());
        state.online.insert(user.clone(), out_tx.clone());
    }

    while let Some(Ok(message)) = stream.next().await {
        let Message::Text(text) = message else {
            continue;
        };
        let Ok(frame) = serde_json::from_str::<Value>(text.as_str()) else {
            continue;
        };
        match frame["type"].as_str() {
            Some("send") => {
                counts.sends.fetch_add(1, Ordering::Relaxed);
                let conv = frame["conv"].as_str().unwrap_or_default().to_owned();
                let Ok(mut state) = state.lock() else { break };
                let seq = state.seqs.entry(conv.clone()).or_insert(0);
                *seq += 1;
                if options.skip_every.is_some_and(|k| *seq % (k + 1) == 0) {
                    *seq += 1;
                }
                let seq = *seq;
                let ack = json!({"type":"ack","ref":frame["ref"],"conv":conv,"seq":seq,"mid":"m","ts":0,"dup":false});
                let _ = out_tx.send(ack.to_string());
                let msg = json!({"type":"msg","conv":conv,"seq":seq,"mid":"m","from":user,"dev":device,
                                 "ts":0,"body":frame["body"]})
                .to_string();
                let other = dm_members(&conv).map(|(a, b)| if a == user { b } else { a });
                if let Some(recipient) = other.and_then(|other| state.online.get(other)) {
                    let _ = recipient.send(msg.clone());
                }
                let stored = Stored { seq, from: user.clone(), device: device.clone(), frame: msg };
                state.logs.entry(conv).or_default().push(stored);
            }
            Some("subscribe") => {
                let conv = frame["conv"].as_str().unwrap_or_default().to_owned();
                let Ok(mut state) = state.lock() else { break };
                state.subscribers.entry(conv.clone()).or_default().push(user.clone());
                let head = state.seqs.get(&conv).copied().unwrap_or(0);
                let _ = out_tx.send(json!({"type":"subscribed","ref":frame["ref"],"conv":conv,"seq":head}).to_string());
            }
            Some("receipt") => {
                counts.receipts.fetch_add(1, Ordering::Relaxed);
                let (Some(conv), Some(seq)) = (frame["conv"].as_str(), frame["seq"].as_u64()) else { continue };
                let Ok(mut state) = state.lock() else { break };
                let cursors = state.cursors.entry((user.clone(), device.clone())).or_default();
                let cursor = cursors.entry(conv.to_owned()).or_insert(0);
                *cursor = (*cursor).max(seq);
            }
            _ => {}
        }
    }
    if let Ok(mut state) = state.lock() {
        state.online.remove(&user);
    }
    writer.abort();
}
