//! The admin HTTP API under `/api/v1/` (DESIGN section 5), for operators and back ends.
//!
//! Every call needs `Authorization: Bearer <SWITCHBOARD_ADMIN_TOKEN>`; without the
//! variable set the API is disabled (every call 401 with a message saying so). The token
//! is compared in constant time and never logged.
//!
//! | call                          | body                                  | answer                     |
//! |-------------------------------|---------------------------------------|----------------------------|
//! | `POST /api/v1/publish`        | `{"conv", "body", "from"?}`           | `{"conv","seq","mid","ts"}`|
//! | `POST /api/v1/disconnect`     | `{"user"}`                            | `{"closed"}`               |
//! | `POST /api/v1/revoke`         | `{"user", "before"}` (ms)             | `{"closed"}`               |
//! | `GET /api/v1/presence/{user}` |                                       | `{"user","status","last_seen"}` |
//! | `GET /api/v1/stats`           |                                       | node figures               |
//!
//! `publish` sequences a message in any conversation (a feed, usually) through its
//! sequencer, from `from` (default `admin`, device `admin`); it is answered once the
//! message is durable and delivered like any other. `revoke` refuses the user's tokens
//! issued before `before` from then on (durably) and closes their live connections that
//! use such tokens with 1008.
//!
//! With `SWITCHBOARD_FAULT_INJECTION=1` (drills and tests only), `POST /api/v1/fault/crash`
//! `{"conv"}` makes that conversation's actor panic.
//!
//! Errors are JSON `{"error": "..."}` with 400 (bad body), 401 (token), 403 (not
//! allowed), 404 (no such group), 503 with `Retry-After` (store or sequencer unavailable).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use switchboard_proto::close::CloseCode;
use switchboard_proto::ids::{ConvId, DeviceId, UserId};
use tokio::sync::oneshot;

use crate::actors::conversation::{ConvMsg, SendError, SendRequest};
use crate::node::Node;

/// The sender (user and device) of an admin publish without `from`.
const ADMIN_SENDER: &str = "admin";

/// The admin bearer token. `Debug` hides it.
#[derive(Clone)]
pub struct AdminToken(String);

impl AdminToken {
    pub fn new(token: String) -> Self {
        Self(token)
    }

    /// Constant-time comparison: the time taken says nothing about how much matched.
    fn matches(&self, offered: &str) -> bool {
        let (expected, offered) = (self.0.as_bytes(), offered.as_bytes());
        let mut difference = expected.len() ^ offered.len();
        for (index, byte) in expected.iter().enumerate() {
            difference |= usize::from(byte ^ offered.get(index).copied().unwrap_or(0));
        }
        difference == 0
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(***)")
    }
}

/// The `/api/v1` routes (nest them under that prefix).
pub fn router() -> Router<Arc<Node>> {
    Router::new()
        .route("/stats", get(stats))
        .route("/disconnect", post(disconnect))
        .route("/publish", post(publish))
        .route("/revoke", post(revoke))
        .route("/presence/{user}", get(presence))
        .route("/fault/crash", post(fault_crash))
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// Checks the bearer token: `Some` is the refusal to send.
fn refusal(node: &Node, headers: &HeaderMap) -> Option<Response> {
    let Some(token) = &node.admin_token else {
        return Some(error(StatusCode::UNAUTHORIZED, "the admin API is disabled: set SWITCHBOARD_ADMIN_TOKEN"));
    };
    let offered = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    match offered {
        Some(offered) if token.matches(offered) => None,
        _ => Some(error(StatusCode::UNAUTHORIZED, "missing or wrong admin bearer token")),
    }
}

async fn stats(State(node): State<Arc<Node>>, headers: HeaderMap) -> Response {
    if let Some(refused) = refusal(&node, &headers) {
        return refused;
    }
    Json(json!({
        "node": node.node_id,
        "uptime_ms": node.started.elapsed().as_millis() as u64,
        "connections": node.sessions.connection_count(),
        "users": node.sessions.user_count(),
        "user_actors": node.live_user_actors.load(Ordering::Relaxed),
        "conversations": node.live_conv_actors.load(Ordering::Relaxed),
        "tasks": node.tasks.len(),
        "groups_cached": node.groups.len(),
        "presence_watched_users": node.presence.watched_users(),
        "store": node.store.name(),
        "bus": node.bus.name(),
        "cluster": node.cluster.as_ref().map(|cluster| json!({
            "live_nodes": &*cluster.live_nodes(),
            "bus_connected": cluster.is_connected(),
            "remote_users": cluster.remote_user_count(),
        })),
        "shutting_down": node.shutdown.is_cancelled(),
    }))
    .into_response()
}

#[derive(Debug, Deserialize)]
struct DisconnectRequest {
    user: String,
}

async fn disconnect(State(node): State<Arc<Node>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    if let Some(refused) = refusal(&node, &headers) {
        return refused;
    }
    let request: DisconnectRequest = match parse(&body, r#"{"user": ...}"#) {
        Ok(request) => request,
        Err(refused) => return refused.into_response(),
    };
    let user = match user_id(&request.user, "user") {
        Ok(user) => user,
        Err(refused) => return refused.into_response(),
    };
    let mut closed = node.sessions.close_user(&user, CloseCode::Normal);
    if let Some(cluster) = &node.cluster {
        closed += cluster.disconnect_elsewhere(&user).await;
    }
    tracing::info!(user.id = %user, closed, "admin disconnect");
    Json(json!({ "closed": closed })).into_response()
}

fn unavailable(message: &str) -> Response {
    let mut response = error(StatusCode::SERVICE_UNAVAILABLE, message);
    response.headers_mut().insert(header::RETRY_AFTER, axum::http::HeaderValue::from_static("1"));
    response
}

/// A 400 to answer, with its message.
struct BadRequest(String);

impl IntoResponse for BadRequest {
    fn into_response(self) -> Response {
        error(StatusCode::BAD_REQUEST, &self.0)
    }
}

/// Parses a JSON body of the given shape.
fn parse<T: serde::de::DeserializeOwned>(body: &[u8], shape: &str) -> Result<T, BadRequest> {
    serde_json::from_slice(body).map_err(|parse_error| BadRequest(format!("expected {shape}: {parse_error}")))
}

fn user_id(text: &str, field: &str) -> Result<UserId, BadRequest> {
    UserId::new(text).map_err(|id_error| BadRequest(format!("{field}: {id_error}")))
}

#[derive(Debug, Deserialize)]
struct PublishRequest {
    conv: String,
    body: Box<RawValue>,
    #[serde(default)]
    from: Option<String>,
}

async fn publish(State(node): State<Arc<Node>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    if let Some(refused) = refusal(&node, &headers) {
        return refused;
    }
    let request: PublishRequest = match parse(&body, r#"{"conv": ..., "body": ..., "from": optional user}"#) {
        Ok(request) => request,
        Err(refused) => return refused.into_response(),
    };
    let conv = match ConvId::new(&request.conv) {
        Ok(conv) => conv,
        Err(id_error) => return error(StatusCode::BAD_REQUEST, &format!("conv: {id_error}")),
    };
    let from = match user_id(request.from.as_deref().unwrap_or(ADMIN_SENDER), "from") {
        Ok(from) => from,
        Err(refused) => return refused.into_response(),
    };
    if request.body.get().len() > node.config.gateway.max_body_bytes {
        let message = format!("body is larger than max_body_bytes {}", node.config.gateway.max_body_bytes);
        return error(StatusCode::PAYLOAD_TOO_LARGE, &message);
    }
    let (reply_tx, reply_rx) = oneshot::channel();
    let send = SendRequest {
        from,
        dev: DeviceId::new(ADMIN_SENDER).unwrap_or_else(|_| DeviceId::default_device()),
        conn_id: None,
        cmid: None,
        body: request.body,
        system: false,
        admin: true,
        reply: reply_tx,
    };
    if let Err(directory_error) = node.to_conv(&conv, ConvMsg::Send(send)).await {
        tracing::warn!(%conv, error = %directory_error, "admin publish not delivered to its conversation");
        return unavailable("conversation unavailable; retry");
    }
    let result = match tokio::time::timeout(node.config.gateway.request_timeout(), reply_rx).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) | Err(_) => Err(SendError::Unavailable),
    };
    match result {
        Ok(accepted) => {
            metrics::counter!("switchboard_admin_publishes_total").increment(1);
            Json(json!({"conv": conv, "seq": accepted.seq, "mid": accepted.mid, "ts": accepted.ts})).into_response()
        }
        Err(SendError::NotFound) => error(StatusCode::NOT_FOUND, "no such group"),
        Err(SendError::Forbidden) => error(StatusCode::FORBIDDEN, "not allowed"),
        Err(SendError::Invalid(message)) => error(StatusCode::BAD_REQUEST, &message),
        Err(refusal @ (SendError::Unavailable | SendError::Overloaded)) => unavailable(&refusal.to_string()),
    }
}

#[derive(Debug, Deserialize)]
struct RevokeRequest {
    user: String,
    before: u64,
}

async fn revoke(State(node): State<Arc<Node>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    if let Some(refused) = refusal(&node, &headers) {
        return refused;
    }
    let request: RevokeRequest = match parse(&body, r#"{"user": ..., "before": ms}"#) {
        Ok(request) => request,
        Err(refused) => return refused.into_response(),
    };
    let user = match user_id(&request.user, "user") {
        Ok(user) => user,
        Err(refused) => return refused.into_response(),
    };
    if let Err(store_error) = node.revoke(&user, request.before).await {
        tracing::warn!(user.id = %user, error = %store_error, "revocation not stored");
        return unavailable("storage unavailable; retry");
    }
    let closed = node.sessions.close_revoked(&user, request.before);
    tracing::info!(user.id = %user, before = request.before, closed, "admin revoke");
    Json(json!({ "closed": closed })).into_response()
}

async fn presence(State(node): State<Arc<Node>>, headers: HeaderMap, Path(user): Path<String>) -> Response {
    if let Some(refused) = refusal(&node, &headers) {
        return refused;
    }
    let user = match user_id(&user, "user") {
        Ok(user) => user,
        Err(refused) => return refused.into_response(),
    };
    match crate::presence::current(&node, &user).await {
        Ok(presence) => {
            Json(json!({"user": presence.user, "status": presence.status, "last_seen": presence.last_seen}))
                .into_response()
        }
        Err(store_error) => {
            tracing::warn!(user.id = %user, error = %store_error, "presence unavailable");
            unavailable("storage unavailable; retry")
        }
    }
}

#[derive(Debug, Deserialize)]
struct CrashRequest {
    conv: String,
}

/// Fault injection (only with `SWITCHBOARD_FAULT_INJECTION=1`, 404 otherwise): the
/// conversation's actor panics, as a bug would make it, for drills and tests of the
/// supervision tree.
async fn fault_crash(State(node): State<Arc<Node>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    if let Some(refused) = refusal(&node, &headers) {
        return refused;
    }
    if !node.fault_injection {
        return error(StatusCode::NOT_FOUND, "fault injection is disabled (SWITCHBOARD_FAULT_INJECTION=1)");
    }
    let request: CrashRequest = match parse(&body, r#"{"conv": ...}"#) {
        Ok(request) => request,
        Err(refused) => return refused.into_response(),
    };
    let conv = match ConvId::new(&request.conv) {
        Ok(conv) => conv,
        Err(id_error) => return error(StatusCode::BAD_REQUEST, &format!("conv: {id_error}")),
    };
    tracing::warn!(%conv, "fault injection: crashing the conversation actor");
    match node.directory.conv(&node, &conv, ConvMsg::Crash).await {
        Ok(()) => Json(json!({ "crashed": conv })).into_response(),
        Err(directory_error) => unavailable(&directory_error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        let token = AdminToken::new("s3cret".to_owned());
        assert!(token.matches("s3cret"));
        assert!(!token.matches("s3cre"));
        assert!(!token.matches("s3cret!"));
        assert!(!token.matches(""));
        assert_eq!(format!("{token:?}"), "AdminToken(***)");
    }
}
