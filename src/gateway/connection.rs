//! One connection: a lean task per socket, not an actor.
//!
//! The task runs two halves concurrently (in one task, so one allocation): the reader
//! decodes client frames and dispatches them, the writer drains the [`Outbox`] into the
//! socket, coalescing whatever is queued into one flush, and keeps the connection alive
//! (pings when quiet, closes when idle past the timeout or when the token expires).
//!
//! On connect the device is attached to its user actor and resumed: everything after its
//! stored cursors is replayed, then `synced`; live messages that arrive meanwhile are
//! held by the outbox and follow the replay, so each conversation stays in seq order.
//!
//! A connection has at most `gateway.max_inflight_requests` sends waiting for their
//! acks; past that it stops reading until one completes (backpressure to the client
//! through TCP instead of an unbounded queue).
//!
//! Every request naming a conversation is authorized first ([`Connection::authorize`]):
//! dm members by the id, group members from the node's group cache, feeds readable by
//! anyone and writable with a publish grant. Groups and feeds are handled in
//! [`membership`], presence, typing and receipt queries in [`ephemeral`].

mod ephemeral;
mod membership;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, SplitSink, SplitStream};
use futures_util::{Future, SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use switchboard_proto::client::{ClientFrame, HistoryFrame, ReceiptFrame, SendFrame, SyncFrame};
use switchboard_proto::close::CloseCode;
use switchboard_proto::codec;
use switchboard_proto::error::ErrorCode;
use switchboard_proto::ids::{ConvId, ConvKind, UserId};
use switchboard_proto::server::{Ack, ErrorFrame, Hello, Pong, Synced};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};
use tracing::Instrument;

use super::outbox::{Next, Outbox, Push};
use crate::actors::DirectoryError;
use crate::actors::conversation::{Accepted, ConvMsg, SendError, SendRequest};
use crate::actors::user::UserMsg;
use crate::auth::Identity;
use crate::limits::{IpSlot, RateLimit, Strikes};
use crate::node::Node;
use crate::sessions::DeviceSession;
use crate::store::{StoreError, StoreResult};

type Socket = WebSocketStream<TokioIo<Upgraded>>;
type SendResult = (Option<String>, ConvId, Result<Accepted, SendError>);
type InflightSend = Pin<Box<dyn Future<Output = SendResult> + Send>>;
/// Sends waiting for their acks; allocated on the first send (most connections of a
/// large node are idle: they should not carry an empty set's allocations).
type Inflight = Option<FuturesUnordered<InflightSend>>;

/// Frames written per flush at most.
const MAX_BATCH: usize = 64;

/// How long a closing connection waits for the rest of the closing handshake.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Serializes a server frame for the outbox.
pub fn frame(value: &impl Serialize) -> Utf8Bytes {
    // Our own JSON encoding is always UTF-8; the fallback is unreachable in practice.
    Utf8Bytes::try_from(codec::encode(value)).unwrap_or_else(|_| Utf8Bytes::from_static("{}"))
}

/// Why the initial attach failed.
#[derive(Debug)]
struct AttachFailed;

struct Connection {
    node: Arc<Node>,
    identity: Identity,
    conn_id: u64,
    outbox: Arc<Outbox>,
    opened: Instant,
    /// Milliseconds after `opened` of the last frame received (any kind).
    last_rx_ms: AtomicU64,
    /// Users this connection watches (`presence_sub`), unwatched when it closes.
    watched: std::sync::Mutex<Vec<UserId>>,
    /// Rate limits: sends, and (created on first use) typing and presence_sub.
    send_limit: RateLimit,
    /// (Boxed: 8 bytes each until used, instead of a rate limit's size inline.)
    typing_limit: std::sync::OnceLock<Box<RateLimit>>,
    presence_limit: std::sync::OnceLock<Box<RateLimit>>,
    /// Refusals, for closing an abusive connection with 4003.
    strikes: Strikes,
    /// This connection's place in the per-IP count, released when it ends.
    _ip_slot: IpSlot,
}

/// The connection's future: runs it to its end, when the socket is closed.
///
/// Not an `async fn`: the future returned is the connection's state and nothing else
/// (an `async fn` would also keep its arguments), since an idle connection is that
/// future, sitting in its task's allocation.
pub fn run(
    node: Arc<Node>,
    socket: Socket,
    identity: Identity,
    peer: Option<SocketAddr>,
    ip_slot: IpSlot,
) -> impl Future<Output = ()> + Send {
    let conn_id = node.next_conn_id();
    // Debug level: an enabled span costs ~600 bytes of subscriber state per connection
    // for its whole life. Events at info and above name the user and connection instead.
    let span = tracing::debug_span!(
        "conn",
        peer.addr = %peer.map(|peer| peer.to_string()).unwrap_or_default(),
        user.id = %identity.user,
        device.id = %identity.device,
        conn.id = conn_id,
    );
    let gateway = &node.config.gateway;
    let outbox = Arc::new(Outbox::new(gateway.outbox_max_frames, gateway.outbox_max_bytes));
    let connection = Connection {
        node: node.clone(),
        identity,
        conn_id,
        outbox,
        opened: Instant::now(),
        last_rx_ms: AtomicU64::new(0),
        watched: std::sync::Mutex::new(Vec::new()),
        send_limit: RateLimit::new(node.config.rate_limits.sends_per_sec, node.config.rate_limits.sends_burst),
        typing_limit: std::sync::OnceLock::new(),
        presence_limit: std::sync::OnceLock::new(),
        strikes: Strikes::default(),
        _ip_slot: ip_slot,
    };
    // Boxed, and the socket split here: an `async fn`'s arguments stay in its state
    // for its whole life, so they should be small.
    let (sink, stream) = socket.split();
    Box::new(connection).serve(sink, stream).instrument(span)
}

impl Connection {
    async fn serve(self: Box<Self>, mut sink: SplitSink<Socket, Message>, stream: SplitStream<Socket>) {
        metrics::gauge!("switchboard_connections").increment(1.0);
        metrics::counter!("switchboard_connections_opened_total").increment(1);
        self.outbox.push(frame(&self.hello()));
        // Live messages wait until the resume below has replayed what was missed.
        self.outbox.hold();
        // Boxed, as is the detach below: both are short-lived, and inline they would
        // sit in every idle connection's state for its whole life.
        let attached = Box::pin(self.attach()).await;
        if attached.is_err() {
            self.outbox.close(CloseCode::Overloaded);
        }
        let mut writer = std::pin::pin!(self.write_loop(&mut sink));
        let reader = async {
            if attached.is_err() {
                return std::future::pending().await;
            }
            self.read_loop(stream).await
        };
        let mut reader = std::pin::pin!(reader);
        tokio::select! {
            () = &mut writer => {
                // Our close frame is out: give the peer a moment to answer it (the closing
                // handshake), so the TCP connection ends with a FIN rather than a reset
                // that could discard the close frame before the client reads it.
                let _ = tokio::time::timeout(CLOSE_GRACE, &mut reader).await;
            }
            close = &mut reader => {
                if let Some(code) = close {
                    self.outbox.close(code);
                } else {
                    self.outbox.close(CloseCode::Normal);
                }
                // Let the writer send what is queued and the close frame, briefly.
                let _ = tokio::time::timeout(CLOSE_GRACE, writer).await;
            }
        }
        self.unwatch_all();
        if attached.is_ok() {
            Box::pin(self.detach()).await;
        }
        metrics::gauge!("switchboard_connections").decrement(1.0);
        tracing::debug!("connection closed");
    }

    fn hello(&self) -> Hello {
        Hello {
            user: self.identity.user.clone(),
            device: self.identity.device.clone(),
            node: self.node.node_id.clone(),
            server: format!("switchboard/{}", env!("CARGO_PKG_VERSION")),
            limits: self.node.limits(),
        }
    }

    fn session(&self) -> DeviceSession {
        DeviceSession {
            device: self.identity.device.clone(),
            conn_id: self.conn_id,
            outbox: self.outbox.clone(),
            issued_at: self.identity.issued_at,
        }
    }

    async fn attach(&self) -> Result<(), AttachFailed> {
        let (reply_tx, reply_rx) = oneshot::channel();
        let message = UserMsg::Attach { session: self.session(), reply: reply_tx };
        if let Err(error) = self.node.directory.user(&self.node, &self.identity.user, message).await {
            tracing::warn!(user.id = %self.identity.user, conn.id = self.conn_id, %error, "attach failed");
            return Err(AttachFailed);
        }
        match tokio::time::timeout(self.node.config.gateway.request_timeout(), reply_rx).await {
            Ok(Ok(())) => Ok(()),
            _ => {
                tracing::warn!(user.id = %self.identity.user, conn.id = self.conn_id, "attach not confirmed in time");
                // It may still have happened: never leave a registered dead session.
                self.node.sessions.detach(&self.identity.user, &self.identity.device, self.conn_id);
                Err(AttachFailed)
            }
        }
    }

    async fn detach(&self) {
        let message = UserMsg::Detach { device: self.identity.device.clone(), conn_id: self.conn_id };
        if self.node.directory.user(&self.node, &self.identity.user, message).await.is_err() {
            // The user actor is unreachable; the registry must not keep a dead session.
            let detached = self.node.sessions.detach(&self.identity.user, &self.identity.device, self.conn_id);
            if detached.went_offline {
                crate::actors::user::went_offline_without_actor(&self.node, &self.identity.user).await;
            }
        }
    }

    fn touch(&self) {
        self.last_rx_ms.store(self.opened.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn quiet_for(&self) -> Duration {
        self.opened.elapsed().saturating_sub(Duration::from_millis(self.last_rx_ms.load(Ordering::Relaxed)))
    }

    /// Drains the outbox into the socket, and keeps the connection alive: pings when
    /// quiet, closes when idle past the timeout or when the token expires.
    ///
    /// One timer serves the keepalive, the token's expiry and the write timeout (a
    /// write is raced against it, then it is set back): this future is most of an idle
    /// connection's state, and each timer is ~100 bytes of it.
    async fn write_loop(&self, sink: &mut SplitSink<Socket, Message>) {
        let gateway = &self.node.config.gateway;
        let mut batch = Vec::new();
        let mut next_ping = Instant::now() + gateway.ping_interval();
        // An expiry too far off to represent is no expiry.
        let mut expires_at = self.identity.expires_at.and_then(|exp| {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            Instant::now().checked_add(Duration::from_secs(exp).saturating_sub(now))
        });
        let wake_at =
            |next_ping: Instant, expires_at: Option<Instant>| expires_at.map_or(next_ping, |at| at.min(next_ping));
        let timer = tokio::time::sleep_until(wake_at(next_ping, expires_at));
        tokio::pin!(timer);
        loop {
            tokio::select! {
                next = self.outbox.next(&mut batch, MAX_BATCH) => match next {
                    Next::Frames => {
                        let count = batch.len() as u64;
                        let write = async {
                            for frame in batch.drain(..) {
                                sink.feed(Message::Text(frame)).await?;
                            }
                            sink.flush().await
                        };
                        // A peer that stopped reading stalls the write: past the timeout
                        // it is gone (its outbox has overflowed by then: it resumes).
                        match before(timer.as_mut(), gateway.write_timeout(), write).await {
                            Some(Ok(())) => {}
                            Some(Err(_)) => return,
                            None => return write_stalled(),
                        }
                        timer.as_mut().reset(wake_at(next_ping, expires_at));
                        metrics::counter!("switchboard_frames_out_total").increment(count);
                        metrics::histogram!("switchboard_write_batch_frames").record(count as f64);
                        // An idle connection should not keep a large batch buffer.
                        if batch.capacity() > MAX_BATCH {
                            batch = Vec::new();
                        }
                    }
                    Next::Close(code) => {
                        metrics::counter!("switchboard_closes_total", "code" => code.code().to_string()).increment(1);
                        let close = CloseFrame { code: code.code().into(), reason: Utf8Bytes::from_static(code.reason()) };
                        let _ = before(timer.as_mut(), Duration::from_secs(1), sink.send(Message::Close(Some(close)))).await;
                        return;
                    }
                },
                () = &mut timer => {
                    let now = Instant::now();
                    if expires_at.is_some_and(|at| at <= now) {
                        expires_at = None;
                        tracing::info!(user.id = %self.identity.user, conn.id = self.conn_id, "token expired, closing");
                        self.outbox.close(CloseCode::Policy);
                    }
                    if next_ping <= now {
                        next_ping = now + gateway.ping_interval();
                        let quiet = self.quiet_for();
                        if quiet >= gateway.idle_timeout() {
                            tracing::debug!(quiet_ms = quiet.as_millis() as u64, "idle timeout");
                            self.outbox.close(CloseCode::Normal);
                        } else if quiet >= gateway.ping_interval() {
                            let ping = sink.send(Message::Ping(Default::default()));
                            match before(timer.as_mut(), gateway.write_timeout(), ping).await {
                                Some(Ok(())) => {}
                                Some(Err(_)) => return,
                                None => return write_stalled(),
                            }
                        }
                    }
                    timer.as_mut().reset(wake_at(next_ping, expires_at));
                }
            }
        }
    }

    /// Reads until the peer goes away; returns the close code to send, if any.
    async fn read_loop(&self, mut stream: SplitStream<Socket>) -> Option<CloseCode> {
        let code = self.read_requests(&mut stream).await;
        if let Some(code) = code {
            // Our close frame goes out after what is queued. Keep reading (and dropping)
            // the peer's input until it answers: closing a socket with unread input sends
            // a reset, which can destroy the close frame and the replies before it.
            self.outbox.close(code);
            let drain = async {
                while let Some(Ok(message)) = stream.next().await {
                    if message.is_close() {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(CLOSE_GRACE, drain).await;
        }
        code
    }

    /// Reads and handles requests until the peer goes away or the connection must close.
    async fn read_requests(&self, stream: &mut SplitStream<Socket>) -> Option<CloseCode> {
        // Boxed: a resume's state is large and short-lived; inline it would sit in every
        // idle connection's task for the connection's whole life.
        if let Err(code) = Box::pin(self.resume(None, None)).await {
            return Some(code);
        }
        let max_inflight = self.node.config.gateway.max_inflight_requests;
        let mut inflight: Inflight = None;
        // In a cluster: after a bus outage this device resyncs (what other nodes sent
        // meanwhile never reached it), at a random moment within the spread.
        let mut resync = self.node.cluster.as_ref().map(|cluster| cluster.resync_watch());
        // Boxed when set (rare): an inline timer would be in every connection's state.
        let mut resync_at: Option<Pin<Box<tokio::time::Sleep>>> = None;
        loop {
            // Replies first: no new request while our queued replies fill half the
            // outbox (a pipelining client is paced by TCP, not closed as a slow consumer;
            // one that does not read at all overflows once the wait runs out).
            if !self.outbox.at_most_half_full() {
                // Boxed: rare, and its state would otherwise be part of every idle
                // connection's.
                Box::pin(self.outbox.wait_half_empty(self.node.config.gateway.request_timeout())).await;
            }
            tokio::select! {
                Some(done) = next_done(&mut inflight), if inflight_count(&inflight) > 0 => self.finish_send(done),
                () = resync_requested(&mut resync) => {
                    let spread = self.node.cluster.as_ref().map_or(0, |cluster| cluster.config().resync_spread_ms);
                    let jitter = rand::random_range(0..=spread);
                    resync_at = Some(Box::pin(tokio::time::sleep(Duration::from_millis(jitter))));
                }
                () = sleep_until_some(&mut resync_at), if resync_at.is_some() => {
                    resync_at = None;
                    metrics::counter!("switchboard_cluster_resyncs_total").increment(1);
                    if let Err(code) = Box::pin(self.resume(None, None)).await {
                        return Some(code);
                    }
                }
                incoming = stream.next(), if inflight_count(&inflight) < max_inflight => {
                    let message = match incoming {
                        None => return None,
                        Some(Ok(message)) => message,
                        Some(Err(error)) => return close_for(&error),
                    };
                    self.touch();
                    match message {
                        Message::Text(text) => {
                            metrics::counter!("switchboard_frames_in_total").increment(1);
                            // Boxed for the same reason: the request futures are large.
                            if let Some(code) = Box::pin(self.on_text(&text, &mut inflight)).await {
                                return Some(code);
                            }
                        }
                        Message::Binary(_) => self.reply_error(
                            None,
                            ErrorCode::BadRequest,
                            "binary frames are not part of switchboard.v1.json; send JSON text frames",
                            None,
                        ),
                        Message::Close(_) => return None,
                        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                    }
                }
            }
            if self.outbox.is_closing() {
                return None;
            }
        }
    }

    fn push(&self, frame: Utf8Bytes) {
        // A reply that does not fit closes the connection as a slow consumer; the
        // writer acts on that, nothing else to do here.
        let _ = self.outbox.push(frame);
    }

    fn reply_error(&self, r#ref: Option<&str>, code: ErrorCode, message: &str, retry_after_ms: Option<u64>) {
        metrics::counter!("switchboard_errors_sent_total", "code" => code.as_str()).increment(1);
        let mut error = ErrorFrame::new(code, message).with_ref(r#ref);
        if let Some(retry_after_ms) = retry_after_ms {
            error = error.with_retry_after_ms(retry_after_ms);
        }
        self.push(frame(&error));
    }

    /// Whether this user may make `request` about `conv`: `Err` is the error to answer.
    async fn authorize(&self, request: &ClientFrame, conv: &ConvId) -> Result<(), (ErrorCode, &'static str)> {
        if matches!(request, ClientFrame::GroupAdd(_) | ClientFrame::GroupRemove(_)) {
            // The group's sequencer decides who may change it (it also knows changes not
            // durable yet); only a group that does not exist is refused here, so unknown
            // ids start no actor.
            return match self.group_of(conv).await {
                Ok(None) => Err((ErrorCode::NotFound, "no such group")),
                _ => Ok(()),
            };
        }
        self.may_read(conv).await?;
        match (conv.kind(), request) {
            (ConvKind::Feed, ClientFrame::Send(_)) if !self.identity.may_publish(conv) => {
                Err((ErrorCode::Forbidden, "your token does not grant publishing to this feed"))
            }
            (ConvKind::Feed, ClientFrame::Typing(_)) => Err((ErrorCode::BadRequest, "typing is not relayed in feeds")),
            _ => Ok(()),
        }
    }

    /// The group for authorizing this user. In a cluster a change made on another node
    /// reaches this node's cache by a bus event, which may trail the `msg` that told the
    /// user about it: a refusal is checked against the store once before it stands.
    async fn group_of(&self, conv: &ConvId) -> StoreResult<Option<Arc<crate::groups::GroupInfo>>> {
        let groups = &self.node.groups;
        let store = self.node.store.as_ref();
        let group = groups.get(store, conv).await?;
        let admitted = group.as_ref().is_some_and(|group| group.is_member(&self.identity.user));
        if admitted || self.node.cluster.is_none() {
            return Ok(group);
        }
        groups.forget(conv);
        groups.get(store, conv).await
    }

    /// Whether this user may read `conv`: dm and group members, anyone for a feed.
    async fn may_read(&self, conv: &ConvId) -> Result<(), (ErrorCode, &'static str)> {
        let user = &self.identity.user;
        match conv.kind() {
            ConvKind::Dm if conv.dm_peer(user).is_some() => Ok(()),
            ConvKind::Dm => Err((ErrorCode::Forbidden, "you are not a member of this conversation")),
            ConvKind::Group => match self.group_of(conv).await {
                Ok(Some(group)) if group.is_member(user) => Ok(()),
                Ok(Some(_)) => Err((ErrorCode::Forbidden, "you are not a member of this group")),
                Ok(None) => Err((ErrorCode::NotFound, "no such group")),
                Err(error) => {
                    tracing::warn!(user.id = %self.identity.user, conn.id = self.conn_id, %conv, %error, "group members unavailable");
                    Err((ErrorCode::Unavailable, "storage unavailable; retry later"))
                }
            },
            ConvKind::Feed => Ok(()),
        }
    }

    async fn on_text(&self, text: &str, inflight: &mut Inflight) -> Option<CloseCode> {
        let request = match codec::decode_client(text, &self.node.decode_limits) {
            Ok(request) => request,
            Err(error) => {
                self.reply_error(error.r#ref.as_deref(), error.code, &error.message, None);
                return None;
            }
        };
        if let Some(conv) = request.conv()
            && let Err((code, message)) = self.authorize(&request, conv).await
        {
            let retry_after_ms = (code == ErrorCode::Unavailable).then_some(500);
            self.reply_error(request.request_ref(), code, message, retry_after_ms);
            return None;
        }
        match request {
            ClientFrame::Send(send) => return self.on_send(send, inflight).await.err(),
            ClientFrame::Receipt(receipt) => self.on_receipt(receipt).await,
            ClientFrame::Sync(SyncFrame { r#ref, cursors }) => return self.resume(r#ref, cursors).await.err(),
            ClientFrame::History(history) => self.on_history(history).await,
            ClientFrame::GroupCreate(create) => self.on_group_create(create).await,
            ClientFrame::GroupAdd(change) => self.on_group_change(change, true).await,
            ClientFrame::GroupRemove(change) => self.on_group_change(change, false).await,
            ClientFrame::Subscribe(subscribe) => return self.on_subscribe(subscribe).await.err(),
            ClientFrame::Unsubscribe(unsubscribe) => self.on_unsubscribe(unsubscribe).await,
            ClientFrame::PresenceSub(watch) => return self.on_presence_sub(watch).await.err(),
            ClientFrame::PresenceUnsub(unwatch) => self.on_presence_unsub(unwatch),
            ClientFrame::Typing(typing) => return self.on_typing(typing).await.err(),
            ClientFrame::Receipts(query) => self.on_receipts(query).await,
            ClientFrame::Ping(ping) => self.push(frame(&Pong { r#ref: ping.r#ref })),
        }
        None
    }

    /// Applies a rate limit's verdict: `Ok(true)` go ahead; `Ok(false)` refused (the
    /// client got `rate_limited`); `Err` the connection keeps hitting its limits and is
    /// closed with 4003.
    fn limited(&self, r#ref: Option<&str>, kind: &'static str, verdict: Result<(), u64>) -> Result<bool, CloseCode> {
        let Err(wait_ms) = verdict else { return Ok(true) };
        metrics::counter!("switchboard_rate_limited_total", "kind" => kind).increment(1);
        self.reply_error(r#ref, ErrorCode::RateLimited, &format!("too many {kind} requests"), Some(wait_ms));
        let limits = &self.node.config.rate_limits;
        let now_ms = self.opened.elapsed().as_millis() as u64;
        if self.strikes.strike(now_ms, limits.abuse_strikes, limits.abuse_window_ms) {
            tracing::info!(user.id = %self.identity.user, conn.id = self.conn_id, kind, "rate limits hit persistently, closing (4003)");
            return Err(CloseCode::RateLimitAbuse);
        }
        Ok(false)
    }

    async fn on_send(&self, send: SendFrame, inflight: &mut Inflight) -> Result<(), CloseCode> {
        let verdict = self.send_limit.check().and_then(|()| self.node.user_sends.check(&self.identity.user));
        if !self.limited(send.r#ref.as_deref(), "send", verdict)? {
            return Ok(());
        }
        let SendFrame { r#ref, conv, cmid, body } = send;
        let (reply_tx, reply_rx) = oneshot::channel();
        let request = SendRequest {
            from: self.identity.user.clone(),
            dev: self.identity.device.clone(),
            conn_id: Some(self.conn_id),
            cmid: Some(cmid),
            body,
            system: false,
            admin: false,
            reply: reply_tx,
        };
        if let Err(error) = self.node.to_conv(&conv, ConvMsg::Send(request)).await {
            self.directory_error(r#ref.as_deref(), &conv, &error);
            return Ok(());
        }
        let timeout = self.node.config.gateway.request_timeout();
        inflight.get_or_insert_with(FuturesUnordered::new).push(Box::pin(async move {
            let result = match tokio::time::timeout(timeout, reply_rx).await {
                Ok(Ok(result)) => result,
                // The actor stopped before answering, or the store is too slow: the send
                // may or may not be stored; the client retries with the same cmid.
                Ok(Err(_)) | Err(_) => Err(SendError::Unavailable),
            };
            (r#ref, conv, result)
        }));
        Ok(())
    }

    fn finish_send(&self, (r#ref, conv, result): SendResult) {
        match result {
            Ok(Accepted { seq, mid, ts, dup }) => self.push(frame(&Ack { r#ref, conv, seq, mid, ts, dup })),
            Err(error) => self.conv_error(r#ref.as_deref(), &error),
        }
    }

    /// Answers a request its conversation's actor could not take.
    fn directory_error(&self, r#ref: Option<&str>, conv: &ConvId, error: &DirectoryError) {
        let refusal = match error {
            DirectoryError::Overloaded(_) => SendError::Overloaded,
            _ => {
                tracing::warn!(user.id = %self.identity.user, conn.id = self.conn_id, %conv, %error, "request not delivered to its conversation");
                SendError::Unavailable
            }
        };
        self.conv_error(r#ref, &refusal);
    }

    /// Answers a refused send or membership change.
    fn conv_error(&self, r#ref: Option<&str>, error: &SendError) {
        let (code, retry_after_ms) = match error {
            SendError::Unavailable => (ErrorCode::Unavailable, Some(200)),
            SendError::Overloaded => (ErrorCode::Overloaded, Some(1000)),
            SendError::Forbidden => (ErrorCode::Forbidden, None),
            SendError::NotFound => (ErrorCode::NotFound, None),
            SendError::Invalid(_) => (ErrorCode::BadRequest, None),
        };
        self.reply_error(r#ref, code, &error.to_string(), retry_after_ms);
    }

    async fn on_receipt(&self, receipt: ReceiptFrame) {
        let ReceiptFrame { conv, seq, kind } = receipt;
        let message = UserMsg::Receipt { device: self.identity.device.clone(), conn_id: self.conn_id, conv, seq, kind };
        if let Err(error) = self.node.directory.user(&self.node, &self.identity.user, message).await {
            tracing::warn!(user.id = %self.identity.user, conn.id = self.conn_id, %error, "receipt not delivered to the user actor");
        }
    }

    async fn on_history(&self, history: HistoryFrame) {
        let limit = history.limit_or_default() as usize;
        let HistoryFrame { r#ref, conv, before, .. } = history;
        match self.node.store.read_before(&conv, before, limit).await {
            Ok(messages) => {
                let frames: Vec<_> = messages.into_iter().map(|message| message.frame).collect();
                let encoded = codec::encode_history(r#ref.as_deref(), &conv, &frames);
                match Utf8Bytes::try_from(encoded) {
                    Ok(page) => {
                        let _ = self.outbox.push_wait(page, self.node.config.gateway.request_timeout()).await;
                    }
                    Err(_) => self.reply_error(r#ref.as_deref(), ErrorCode::Internal, "history encoding failed", None),
                }
            }
            Err(error) => self.store_error(r#ref.as_deref(), &error),
        }
    }

    fn store_error(&self, r#ref: Option<&str>, error: &StoreError) {
        tracing::warn!(user.id = %self.identity.user, conn.id = self.conn_id, %error, "store request failed");
        self.reply_error(r#ref, ErrorCode::Unavailable, "storage unavailable; retry later", Some(500));
    }

    /// Replays everything after the device's cursors (or the given ones), then `synced`.
    /// Live messages are held meanwhile and follow without duplicates.
    async fn resume(&self, r#ref: Option<String>, cursors: Option<BTreeMap<ConvId, u64>>) -> Result<(), CloseCode> {
        self.outbox.hold();
        let mut replayed = HashMap::new();
        let mut reads = 0;
        let outcome = self.replay(cursors, &mut replayed, &mut reads).await;
        self.outbox.release(replayed);
        // Store reads per resume is a figure of the reconnect-storm benchmark.
        metrics::counter!("switchboard_resume_store_reads_total").increment(reads);
        match outcome {
            Ok(heads) => {
                self.push(frame(&Synced { r#ref, convs: heads }));
                metrics::counter!("switchboard_resumes_total").increment(1);
                Ok(())
            }
            Err(Replay::Store(error)) => {
                self.store_error(r#ref.as_deref(), &error);
                Ok(())
            }
            Err(Replay::Closing) => Err(CloseCode::SlowConsumer),
        }
    }

    async fn replay(
        &self,
        cursors: Option<BTreeMap<ConvId, u64>>,
        replayed: &mut HashMap<ConvId, u64>,
        reads: &mut u64,
    ) -> Result<BTreeMap<ConvId, u64>, Replay> {
        let store = &self.node.store;
        let user = &self.identity.user;
        let device = &self.identity.device;
        *reads += 2;
        let mut positions = store.device_cursors(user, device).await?;
        let mut convs: BTreeSet<ConvId> = store.user_convs(user).await?.into_iter().collect();
        for (conv, seq) in cursors.unwrap_or_default() {
            if self.may_read(&conv).await.is_ok() {
                positions.insert(conv.clone(), seq);
                convs.insert(conv);
            }
        }
        let mut heads = BTreeMap::new();
        for conv in convs {
            *reads += 1;
            let last_seq = store.load_conv(&conv).await?.map_or(0, |meta| meta.last_seq);
            let position = match positions.get(&conv) {
                Some(&position) => position,
                // A device new to a feed starts at its head, not at its whole history
                // (`subscribe` with `since` or `history` reach back further).
                None if conv.kind() == ConvKind::Feed => {
                    if last_seq > 0 {
                        store.advance_cursor(user, device, &conv, last_seq).await?;
                    }
                    last_seq
                }
                None => 0,
            };
            if conv.kind() == ConvKind::Feed {
                self.node.feeds.add(&conv, user);
            }
            let position = self.replay_conv(&conv, position, last_seq, reads).await?;
            replayed.insert(conv.clone(), position);
            heads.insert(conv, last_seq);
        }
        Ok(heads)
    }

    /// Pushes the stored messages of `conv` after `position` up to `last_seq` (except
    /// this device's own); returns the last seq replayed past.
    async fn replay_conv(
        &self,
        conv: &ConvId,
        mut position: u64,
        last_seq: u64,
        reads: &mut u64,
    ) -> Result<u64, Replay> {
        let page = self.node.config.store_options.resume_page;
        let wait = self.node.config.gateway.request_timeout();
        while position < last_seq {
            *reads += 1;
            let messages = self.node.store.read_after(conv, position, page).await?;
            if messages.is_empty() {
                break;
            }
            for message in messages {
                position = message.seq;
                if sent_by(&message.frame, &self.identity) {
                    continue;
                }
                let Ok(frame) = Utf8Bytes::try_from(message.frame) else {
                    tracing::error!(user.id = %self.identity.user, conn.id = self.conn_id, %conv, seq = message.seq, "stored frame is not UTF-8; skipped");
                    continue;
                };
                if self.outbox.push_wait(frame, wait).await != Push::Queued {
                    return Err(Replay::Closing);
                }
                metrics::counter!("switchboard_replayed_total").increment(1);
            }
        }
        Ok(position)
    }
}

enum Replay {
    Store(StoreError),
    Closing,
}

impl From<StoreError> for Replay {
    fn from(error: StoreError) -> Self {
        Replay::Store(error)
    }
}

/// Whether a stored `msg` frame was sent by this very device. Resume does not send a
/// device its own messages: it has them (it sent them, and got the ack or gets it by
/// retrying the `cmid`), and it never receives them live either, so without this its
/// own sends would come back on every reconnect until another device's receipt moved
/// its cursor past them.
fn sent_by(frame: &[u8], identity: &Identity) -> bool {
    #[derive(serde::Deserialize)]
    struct Origin<'a> {
        #[serde(borrow)]
        from: std::borrow::Cow<'a, str>,
        #[serde(borrow)]
        dev: std::borrow::Cow<'a, str>,
    }
    serde_json::from_slice::<Origin<'_>>(frame)
        .is_ok_and(|origin| origin.from == identity.user.as_str() && origin.dev == identity.device.as_str())
}

/// The close code for a read error, if one should be sent.
fn close_for(error: &tungstenite::Error) -> Option<CloseCode> {
    match error {
        tungstenite::Error::Capacity(_) => Some(CloseCode::TooLarge),
        tungstenite::Error::Utf8(_) => Some(CloseCode::Policy),
        tungstenite::Error::Protocol(_) => Some(CloseCode::Policy),
        _ => None,
    }
}

/// Completes when the cluster asks connected devices to resync; never without a cluster.
async fn resync_requested(resync: &mut Option<tokio::sync::watch::Receiver<u64>>) {
    let Some(receiver) = resync else {
        return std::future::pending().await;
    };
    if receiver.changed().await.is_err() {
        // The cluster is gone (shutdown): nothing more to wait for.
        *resync = None;
        std::future::pending::<()>().await;
    }
}

/// Runs `work` until it completes or `timeout` passes, timed by the writer's one timer
/// (reset here); `None` if the time ran out first.
async fn before<T>(
    mut timer: Pin<&mut tokio::time::Sleep>,
    timeout: Duration,
    work: impl Future<Output = T>,
) -> Option<T> {
    timer.as_mut().reset(Instant::now() + timeout);
    tokio::select! {
        done = work => Some(done),
        () = timer => None,
    }
}

fn write_stalled() {
    tracing::debug!("write stalled, dropping the connection");
    metrics::counter!("switchboard_write_stalls_total").increment(1);
}

fn inflight_count(inflight: &Inflight) -> usize {
    inflight.as_ref().map_or(0, FuturesUnordered::len)
}

/// The next send to complete (pending while there is none).
async fn next_done(inflight: &mut Inflight) -> Option<SendResult> {
    match inflight {
        Some(inflight) => inflight.next().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_some(sleep: &mut Option<Pin<Box<tokio::time::Sleep>>>) {
    match sleep {
        Some(sleep) => sleep.await,
        None => std::future::pending().await,
    }
}
