//! The admin HTTP API under `/api/v1/` (DESIGN section 5), for operators and back ends.
//!
//! Every call needs `Authorization: Bearer <SWITCHBOARD_ADMIN_TOKEN>`; without the
//! variable set the API is disabled (every call 401 with a message saying so). The token
//! is compared in constant time and never logged.
//!
//! Implemented: `GET /api/v1/stats`, `POST /api/v1/disconnect`. `publish`, `revoke` and
//! `presence` answer 501 until feeds, revocation and presence land.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use switchboard_proto::close::CloseCode;
use switchboard_proto::ids::UserId;

use crate::node::Node;

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
        .route("/publish", post(not_yet))
        .route("/revoke", post(not_yet))
        .route("/presence/{user}", get(not_yet))
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
        "store": node.store.name(),
        "bus": node.bus.name(),
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
    let request: DisconnectRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(parse_error) => {
            return error(StatusCode::BAD_REQUEST, &format!("expected {{\"user\": ...}}: {parse_error}"));
        }
    };
    let user = match UserId::new(&request.user) {
        Ok(user) => user,
        Err(id_error) => return error(StatusCode::BAD_REQUEST, &format!("user: {id_error}")),
    };
    let closed = node.sessions.close_user(&user, CloseCode::Normal);
    tracing::info!(user.id = %user, closed, "admin disconnect");
    Json(json!({ "closed": closed })).into_response()
}

async fn not_yet(State(node): State<Arc<Node>>, headers: HeaderMap) -> Response {
    if let Some(refused) = refusal(&node, &headers) {
        return refused;
    }
    error(StatusCode::NOT_IMPLEMENTED, "not implemented in this server version")
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
