//! The WebSocket gateway: the upgrade at `GET /ws` and the connection tasks behind it.
//!
//! Everything that can refuse a client happens before the upgrade, so a refused client
//! costs no actor and no WebSocket state: not a WebSocket request (400), a disallowed
//! `Origin` (403), a bad, missing or revoked token (401), a node at its connection cap,
//! past its accept-rate budget or memory high-water mark, too many connections from one
//! address, or shutting down (503 with `Retry-After`). Then the server answers 101 itself
//! and runs the socket with tokio-tungstenite, configured for very many mostly idle
//! connections: small read buffer, no write buffer beyond one coalesced batch, bounded
//! message and frame sizes.
//!
//! Connection tasks are not actors: one lean task per socket (see [`connection`]).

pub mod connection;
pub mod outbox;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use axum::response::IntoResponse;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use switchboard_proto::SUBPROTOCOL;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use crate::node::Node;

/// The peer address of an HTTP connection, put in each request's extensions by the
/// accept loop.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// Query parameters the upgrade understands.
#[derive(Debug, Default, Deserialize)]
pub struct UpgradeQuery {
    token: Option<String>,
    user: Option<String>,
    device: Option<String>,
}

fn refuse(status: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": message }).to_string();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|part| part.trim().eq_ignore_ascii_case(token))
}

/// The tungstenite configuration of every server socket.
pub fn websocket_config(node: &Node) -> WebSocketConfig {
    let gateway = &node.config.gateway;
    let mut config = WebSocketConfig::default();
    config.read_buffer_size = gateway.read_buffer_bytes;
    // Frames are written in coalesced batches and flushed at once: no write buffer is
    // kept between batches.
    config.write_buffer_size = 0;
    config.max_write_buffer_size = gateway.outbox_max_bytes.saturating_mul(2).max(gateway.max_frame_bytes * 2);
    config.max_message_size = Some(gateway.max_frame_bytes);
    config.max_frame_size = Some(gateway.max_frame_bytes);
    config
}

/// `GET /ws`: validates, authenticates and upgrades; the connection then runs in a task
/// of its own.
pub async fn upgrade(
    State(node): State<Arc<Node>>,
    Query(query): Query<UpgradeQuery>,
    mut request: Request<Body>,
) -> Response<Body> {
    let headers = request.headers();
    let is_websocket = header_has_token(headers, header::CONNECTION, "upgrade")
        && header_has_token(headers, header::UPGRADE, "websocket")
        && headers.get(header::SEC_WEBSOCKET_VERSION).is_some_and(|version| version == "13");
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY).filter(|_| is_websocket) else {
        return refuse(StatusCode::BAD_REQUEST, "expected a WebSocket upgrade (version 13)");
    };
    let accept = derive_accept_key(key.as_bytes());

    let allowed = &node.config.gateway.allowed_origins;
    if let Some(origin) = headers.get(header::ORIGIN)
        && !allowed.is_empty()
        && !allowed.iter().any(|allowed| origin.as_bytes() == allowed.as_bytes())
    {
        metrics::counter!("switchboard_upgrades_refused_total", "reason" => "origin").increment(1);
        return refuse(StatusCode::FORBIDDEN, "origin not allowed");
    }

    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")));
    let identity =
        match node.auth.authenticate(bearer, query.token.as_deref(), query.user.as_deref(), query.device.as_deref()) {
            Ok(identity) => identity,
            Err(error) => {
                metrics::counter!("switchboard_upgrades_refused_total", "reason" => "auth").increment(1);
                return refuse(StatusCode::UNAUTHORIZED, &error.to_string());
            }
        };
    match node.revoked_before(&identity.user).await {
        Ok(Some(before)) if identity.is_revoked_by(before) => {
            metrics::counter!("switchboard_upgrades_refused_total", "reason" => "revoked").increment(1);
            return refuse(StatusCode::UNAUTHORIZED, "token revoked: log in again");
        }
        Ok(_) => {}
        Err(error) => {
            tracing::warn!(%error, "revocation check failed");
            return overloaded("storage unavailable");
        }
    }

    let subprotocol = match headers.get(header::SEC_WEBSOCKET_PROTOCOL) {
        None => None,
        Some(_) if header_has_token(headers, header::SEC_WEBSOCKET_PROTOCOL, SUBPROTOCOL) => {
            Some(HeaderValue::from_static(SUBPROTOCOL))
        }
        Some(_) => {
            return refuse(StatusCode::BAD_REQUEST, "unsupported subprotocol: this server speaks switchboard.v1.json");
        }
    };

    if node.shutdown.is_cancelled() {
        return overloaded("server is shutting down");
    }
    if node.sessions.connection_count() >= node.config.gateway.max_connections {
        metrics::counter!("switchboard_upgrades_refused_total", "reason" => "capacity").increment(1);
        return overloaded("connection limit reached");
    }
    let peer = request.extensions().get::<PeerAddr>().map(|peer| peer.0);
    let ip_slot = match node.admission.admit(peer.map(|peer| peer.ip())) {
        Ok(slot) => slot,
        Err(refusal) => {
            metrics::counter!("switchboard_upgrades_refused_total", "reason" => refusal.reason()).increment(1);
            return overloaded(refusal.message());
        }
    };

    let on_upgrade = hyper::upgrade::on(&mut request);
    let config = websocket_config(&node);
    let task_node = node.clone();
    node.tasks.spawn(async move {
        let upgraded = match tokio::time::timeout(task_node.config.gateway.handshake_timeout(), on_upgrade).await {
            Ok(Ok(upgraded)) => upgraded,
            Ok(Err(error)) => {
                tracing::debug!(%error, "upgrade failed");
                return;
            }
            Err(_) => return,
        };
        let socket = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
        // The connection gets a task of its own, sized to its state alone: this task's
        // upgrade state would otherwise stay allocated for the connection's whole life.
        let tasks = task_node.tasks.clone();
        tasks.spawn(connection::run(task_node, socket, identity, peer, ip_slot));
    });

    let mut response = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept);
    if let Some(subprotocol) = subprotocol {
        response = response.header(header::SEC_WEBSOCKET_PROTOCOL, subprotocol);
    }
    response.body(Body::empty()).unwrap_or_else(|_| refuse(StatusCode::INTERNAL_SERVER_ERROR, "bad response"))
}

fn overloaded(message: &str) -> Response<Body> {
    let mut response = refuse(StatusCode::SERVICE_UNAVAILABLE, message);
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}
