//! Opening one lean client WebSocket: a TCP socket bound to a chosen source address,
//! then the upgrade with small buffers, and a short error kind for whatever fails.
//!
//! Buffers are what a connection costs here: tungstenite's defaults (128 KiB read and
//! 128 KiB write) would make 19,000 connections cost ~5 GB, so reads use a 4 KiB buffer
//! and writes go straight to the socket (`write_buffer_size = 0`).

use std::borrow::Cow;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::http::header::RETRY_AFTER;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// A client WebSocket over plain TCP.
pub(crate) type Ws = WebSocketStream<TcpStream>;

/// Bytes of the eagerly allocated read buffer per connection.
const READ_BUFFER_BYTES: usize = 4 * 1024;

/// Bound on queued outgoing bytes per connection (only reached if the socket stalls).
const MAX_WRITE_BUFFER_BYTES: usize = 256 * 1024;

/// Largest incoming message accepted.
const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Where connections go: the URL for the upgrade request and its resolved address.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) url: String,
    pub(crate) addr: SocketAddr,
}

impl Target {
    /// Resolves the host of a `ws://host[:port]/path` URL once, up front.
    pub(crate) async fn resolve(url: &str) -> anyhow::Result<Target> {
        let authority = authority(url).with_context(|| format!("invalid websocket url {url:?}"))?;
        let host_port = if has_port(authority) { authority.to_owned() } else { format!("{authority}:80") };
        let addr = tokio::net::lookup_host(&host_port)
            .await
            .with_context(|| format!("cannot resolve {host_port}"))?
            .next()
            .with_context(|| format!("{host_port} resolves to no address"))?;
        Ok(Target { url: url.to_owned(), addr })
    }
}

/// The `host[:port]` part of a `ws://` URL.
fn authority(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("ws://")?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    // Drop any userinfo; the server does not use it.
    let authority = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    (!authority.is_empty()).then_some(authority)
}

fn has_port(authority: &str) -> bool {
    match authority.rsplit_once(':') {
        // `[::1]` has colons but no port; `[::1]:80` and `host:80` have one.
        Some((host, port)) => {
            port.bytes().all(|b| b.is_ascii_digit()) && (!host.starts_with('[') || host.ends_with(']'))
        }
        None => false,
    }
}

/// The WebSocket settings of every load connection.
pub(crate) fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(0)
        .max_write_buffer_size(MAX_WRITE_BUFFER_BYTES)
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES))
}

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("cannot bind source address: {0}")]
    Bind(io::Error),
    #[error("tcp connect failed: {0}")]
    Tcp(io::Error),
    #[error("connect and upgrade took longer than the connect timeout")]
    Timeout,
    #[error("websocket upgrade failed: {0}")]
    Upgrade(#[from] tungstenite::Error),
}

impl ConnectError {
    /// Short error kind for the report, e.g. `tcp.refused`, `http.503`, `bind.addr_in_use`.
    pub(crate) fn kind(&self) -> Cow<'static, str> {
        match self {
            ConnectError::Bind(e) => io_kind("bind", e),
            ConnectError::Tcp(e) => io_kind("tcp", e),
            ConnectError::Timeout => Cow::Borrowed("connect.timeout"),
            ConnectError::Upgrade(e) => ws_error_kind("upgrade", e),
        }
    }

    /// The `Retry-After` (in seconds) of a refused upgrade, if it had one.
    pub(crate) fn retry_after(&self) -> Option<Duration> {
        let ConnectError::Upgrade(tungstenite::Error::Http(response)) = self else {
            return None;
        };
        let seconds: f64 = response.headers().get(RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()?;
        Duration::try_from_secs_f64(seconds).ok()
    }
}

/// Opens a socket from `source` (or the kernel's choice) to `target` and upgrades it.
/// The whole of it is bounded by `timeout`.
pub(crate) async fn open(
    target: &Target,
    source: Option<IpAddr>,
    request: Request,
    timeout: Duration,
) -> Result<Ws, ConnectError> {
    tokio::time::timeout(timeout, open_unbounded(target, source, request)).await.unwrap_or(Err(ConnectError::Timeout))
}

async fn open_unbounded(target: &Target, source: Option<IpAddr>, request: Request) -> Result<Ws, ConnectError> {
    let socket = match target.addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(ConnectError::Bind)?;
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0)).map_err(ConnectError::Bind)?;
    }
    let stream = socket.connect(target.addr).await.map_err(ConnectError::Tcp)?;
    // Latency is what is measured; never let Nagle hold a small frame back.
    stream.set_nodelay(true).map_err(ConnectError::Tcp)?;
    let (ws, _response) = tokio_tungstenite::client_async_with_config(request, stream, Some(ws_config())).await?;
    Ok(ws)
}

/// The text of a frame read from a connection: `None` for frames other than text, an
/// error kind under `prefix` when the connection ended (`<prefix>.closed.<code>`,
/// `<prefix>.read.<kind>`, `<prefix>.read.eof`).
pub(crate) fn text_of(
    prefix: &str,
    frame: Option<Result<Message, tungstenite::Error>>,
) -> Result<Option<String>, Cow<'static, str>> {
    match frame {
        Some(Ok(Message::Text(text))) => Ok(Some(text.as_str().to_owned())),
        Some(Ok(Message::Close(close))) => Err(Cow::Owned(match close {
            Some(close) => format!("{prefix}.closed.{}", u16::from(close.code)),
            None => format!("{prefix}.closed.no_code"),
        })),
        Some(Ok(_)) => Ok(None),
        Some(Err(error)) => Err(ws_error_kind(&format!("{prefix}.read"), &error)),
        None => Err(Cow::Owned(format!("{prefix}.read.eof"))),
    }
}

/// Short kind of an I/O error, prefixed with where it happened.
pub(crate) fn io_kind(prefix: &str, error: &io::Error) -> Cow<'static, str> {
    // Raw errno values of Linux for the cases a load run meets.
    let name = match error.raw_os_error() {
        Some(24) => "emfile",
        Some(23) => "enfile",
        Some(98) => "addr_in_use",
        Some(99) => "addr_not_available",
        Some(111) => "refused",
        Some(104) => "reset",
        Some(110) => "timeout",
        Some(32) => "broken_pipe",
        _ => match error.kind() {
            io::ErrorKind::ConnectionRefused => "refused",
            io::ErrorKind::ConnectionReset => "reset",
            io::ErrorKind::ConnectionAborted => "aborted",
            io::ErrorKind::TimedOut => "timeout",
            io::ErrorKind::BrokenPipe => "broken_pipe",
            io::ErrorKind::UnexpectedEof => "eof",
            io::ErrorKind::AddrInUse => "addr_in_use",
            io::ErrorKind::AddrNotAvailable => "addr_not_available",
            _ => "other",
        },
    };
    Cow::Owned(format!("{prefix}.{name}"))
}

/// Short kind of a WebSocket error, prefixed with where it happened; a rejected
/// upgrade is `http.<status>`.
pub(crate) fn ws_error_kind(prefix: &str, error: &tungstenite::Error) -> Cow<'static, str> {
    use tungstenite::Error;
    match error {
        Error::Http(response) => Cow::Owned(format!("http.{}", response.status().as_u16())),
        Error::Io(e) => io_kind(prefix, e),
        Error::ConnectionClosed | Error::AlreadyClosed => Cow::Owned(format!("{prefix}.closed")),
        Error::Protocol(tungstenite::error::ProtocolError::ResetWithoutClosingHandshake) => {
            Cow::Owned(format!("{prefix}.reset_without_close"))
        }
        Error::Protocol(_) => Cow::Owned(format!("{prefix}.protocol")),
        Error::Capacity(_) => Cow::Owned(format!("{prefix}.too_large")),
        Error::WriteBufferFull(_) => Cow::Owned(format!("{prefix}.write_buffer_full")),
        Error::Utf8(_) => Cow::Owned(format!("{prefix}.utf8")),
        _ => Cow::Owned(format!("{prefix}.other")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Auth;

    #[test]
    fn authority_is_taken_from_the_url() {
        assert_eq!(authority("ws://127.0.0.1:8080/ws"), Some("127.0.0.1:8080"));
        assert_eq!(authority("ws://localhost/ws?x=1"), Some("localhost"));
        assert_eq!(authority("ws://u@[::1]:9/ws"), Some("[::1]:9"));
        assert_eq!(authority("wss://x/ws"), None);
        assert_eq!(authority("ws:///ws"), None);
        assert!(has_port("127.0.0.1:8080"));
        assert!(has_port("[::1]:9"));
        assert!(!has_port("[::1]"));
        assert!(!has_port("localhost"));
    }

    #[tokio::test]
    async fn resolves_loopback_urls() {
        let target = Target::resolve("ws://127.0.0.1:8080/ws").await.expect("resolves");
        assert_eq!(target.addr, "127.0.0.1:8080".parse().expect("addr"));
        let target = Target::resolve("ws://127.0.0.2/ws").await.expect("resolves");
        assert_eq!(target.addr.port(), 80);
    }

    #[tokio::test]
    async fn refused_connection_is_classified() {
        // Bind then drop a listener to find a port nobody listens on.
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("addr").port()
        };
        let url = format!("ws://127.0.0.1:{port}/ws");
        let target = Target::resolve(&url).await.expect("resolves");
        let request = Auth::dev().request(&url, "u", "d").expect("request");
        let source = Some("127.0.0.7".parse().expect("ip"));
        let error = open(&target, source, request, Duration::from_secs(5)).await.expect_err("nobody listens");
        assert_eq!(error.kind(), "tcp.refused");
    }

    #[tokio::test]
    async fn rejected_upgrade_is_an_http_kind() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (mut stream, peer) = listener.accept().await.expect("accept");
            let mut buf = [0u8; 2048];
            let _ = stream.read(&mut buf).await;
            let _ = stream
                .write_all(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n")
                .await;
            peer
        });
        let url = format!("ws://{addr}/ws");
        let target = Target::resolve(&url).await.expect("resolves");
        let request = Auth::dev().request(&url, "u", "d").expect("request");
        let source = Some("127.0.0.9".parse().expect("ip"));
        let error = open(&target, source, request, Duration::from_secs(5)).await.expect_err("rejected");
        assert_eq!(error.kind(), "http.503");
        let peer = server.await.expect("server task");
        assert_eq!(peer.ip().to_string(), "127.0.0.9", "bound to the chosen source");
    }
}
