//! A WebSocket test client speaking wire contract v1, with timeouts on every wait.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::token::token;

/// How long any single wait for a frame may take.
pub(crate) const WAIT: Duration = Duration::from_secs(10);

pub(crate) struct TestClient {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_ref: u64,
    /// The `hello` frame of this connection.
    pub(crate) hello: Value,
}

/// How a connection attempt ended, for tests of refused upgrades.
#[derive(Debug)]
pub(crate) enum Refused {
    Status(u16),
    Other(String),
}

impl TestClient {
    /// Connects as `user` on `device` with a valid token, reads `hello`.
    pub(crate) async fn connect(addr: SocketAddr, user: &str, device: &str) -> Self {
        Self::connect_token(addr, &token(user, device)).await
    }

    pub(crate) async fn connect_token(addr: SocketAddr, token: &str) -> Self {
        Self::connect_with(addr, "/ws", &[("Authorization", format!("Bearer {token}"))]).await.expect("connect")
    }

    /// Connects in dev mode with `?user=&device=`.
    pub(crate) async fn connect_dev(addr: SocketAddr, user: &str, device: &str) -> Self {
        Self::connect_with(addr, &format!("/ws?user={user}&device={device}"), &[]).await.expect("connect")
    }

    /// Connects with a path and extra headers; `Err` carries the HTTP status of a refusal.
    pub(crate) async fn connect_with(
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, String)],
    ) -> Result<Self, Refused> {
        let mut request = format!("ws://{addr}{path}").into_client_request().expect("request");
        for (name, value) in headers {
            request.headers_mut().insert(
                tungstenite::http::HeaderName::from_bytes(name.as_bytes()).expect("header name"),
                HeaderValue::from_str(value).expect("header value"),
            );
        }
        let connect = tokio_tungstenite::connect_async(request);
        let socket = match tokio::time::timeout(WAIT, connect).await {
            Err(_) => return Err(Refused::Other("connect timed out".to_owned())),
            Ok(Err(tungstenite::Error::Http(response))) => return Err(Refused::Status(response.status().as_u16())),
            Ok(Err(error)) => return Err(Refused::Other(error.to_string())),
            Ok(Ok((socket, _))) => socket,
        };
        let mut client = TestClient { socket, next_ref: 0, hello: Value::Null };
        let hello = client.recv().await;
        assert_eq!(hello["type"], "hello", "first frame must be hello: {hello}");
        client.hello = hello;
        Ok(client)
    }

    /// Connects and waits for the initial `synced`; returns the client and the frames
    /// replayed before it.
    pub(crate) async fn connect_synced(addr: SocketAddr, user: &str, device: &str) -> (Self, Vec<Value>) {
        let mut client = Self::connect(addr, user, device).await;
        let replayed = client.until_synced().await;
        (client, replayed)
    }

    /// Frames up to the next `synced` (which is returned last).
    pub(crate) async fn until_synced(&mut self) -> Vec<Value> {
        let mut frames = Vec::new();
        loop {
            let frame = self.recv().await;
            let done = frame["type"] == "synced";
            frames.push(frame);
            if done {
                return frames;
            }
        }
    }

    pub(crate) fn new_ref(&mut self) -> String {
        self.next_ref += 1;
        format!("r{}", self.next_ref)
    }

    pub(crate) async fn send_json(&mut self, value: Value) {
        self.send_text(value.to_string()).await;
    }

    pub(crate) async fn send_text(&mut self, text: String) {
        tokio::time::timeout(WAIT, self.socket.send(Message::text(text))).await.expect("send timeout").expect("send");
    }

    pub(crate) async fn send_raw(&mut self, message: Message) -> Result<(), tungstenite::Error> {
        tokio::time::timeout(WAIT, self.socket.send(message)).await.expect("send timeout")
    }

    /// The next JSON frame (pings and pongs are skipped). Panics on close or timeout.
    pub(crate) async fn recv(&mut self) -> Value {
        match self.recv_message().await {
            Ok(value) => value,
            Err(close) => panic!("connection closed while waiting for a frame: {close:?}"),
        }
    }

    /// The next JSON frame, or the close frame that ended the connection.
    pub(crate) async fn recv_message(&mut self) -> Result<Value, Option<CloseFrame>> {
        loop {
            let next = tokio::time::timeout(WAIT, self.socket.next()).await.expect("timed out waiting for a frame");
            match next {
                Some(Ok(Message::Text(text))) => return Ok(serde_json::from_str(&text).expect("frame is JSON")),
                Some(Ok(Message::Close(close))) => return Err(close),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Err(None),
            }
        }
    }

    /// Waits for the connection to be closed; returns the close code.
    pub(crate) async fn expect_close(&mut self) -> Option<u16> {
        loop {
            match self.recv_message().await {
                Ok(_) => continue,
                Err(close) => return close.map(|frame| u16::from(frame.code)),
            }
        }
    }

    /// The next frame of type `kind`, skipping others (e.g. receipts, typing).
    pub(crate) async fn recv_type(&mut self, kind: &str) -> Value {
        loop {
            let frame = self.recv().await;
            if frame["type"] == kind {
                return frame;
            }
        }
    }

    /// Sends a message and returns its `ack` (or the `error` that answered it).
    pub(crate) async fn send_msg(&mut self, conv: &str, cmid: &str, body: Value) -> Value {
        let r#ref = self.new_ref();
        self.send_json(json!({"type": "send", "ref": r#ref, "conv": conv, "cmid": cmid, "body": body})).await;
        self.reply_to(&r#ref).await
    }

    /// Sends a request (a `ref` is added) and returns its reply, skipping other frames.
    pub(crate) async fn call(&mut self, mut frame: Value) -> Value {
        let r#ref = self.new_ref();
        frame["ref"] = Value::String(r#ref.clone());
        self.send_json(frame).await;
        self.reply_to(&r#ref).await
    }

    /// The reply (any type) carrying `ref`, skipping unrelated frames.
    pub(crate) async fn reply_to(&mut self, r#ref: &str) -> Value {
        loop {
            let frame = self.recv().await;
            if frame["ref"] == r#ref {
                return frame;
            }
        }
    }

    pub(crate) async fn receipt(&mut self, conv: &str, seq: u64, kind: &str) {
        self.send_json(json!({"type": "receipt", "conv": conv, "seq": seq, "kind": kind})).await;
    }

    /// Asserts nothing but pings arrives for `quiet`.
    /// Asserts no frame but control frames (pings, answered automatically) arrives for
    /// `quiet`, reading all along.
    pub(crate) async fn expect_silence(&mut self, quiet: Duration) {
        let deadline = tokio::time::Instant::now() + quiet;
        while let Ok(next) = tokio::time::timeout_at(deadline, self.socket.next()).await {
            match next {
                Some(Ok(Message::Text(text))) => panic!("expected silence, got {text}"),
                Some(Ok(Message::Close(close))) => panic!("expected silence, the connection closed: {close:?}"),
                Some(Ok(_)) => continue,
                Some(Err(error)) => panic!("expected silence, got an error: {error}"),
                None => panic!("expected silence, the connection ended"),
            }
        }
    }

    pub(crate) async fn close(mut self) {
        let _ = self.socket.close(None).await;
    }
}
