//! The HTTP side of the one listener: `/ws` (the gateway), `/healthz`, `/readyz`,
//! `/metrics`, the admin API under `/api/v1/` and the web chat page at `/` ([`crate::web`]).
//!
//! `/healthz` says the process is alive. `/readyz` says it should get traffic: not
//! shutting down, the bus connected (always, for a single node), and the store answers
//! within a second. `/metrics` is the Prometheus text format.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;

use crate::gateway;
use crate::node::Node;

/// Every route of the listener.
pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/ws", get(gateway::upgrade))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .nest("/api/v1", crate::admin::router())
        .merge(crate::web::router())
        .with_state(node)
}

async fn healthz() -> impl IntoResponse {
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], json!({"status": "ok"}).to_string())
}

async fn readyz(State(node): State<Arc<Node>>) -> impl IntoResponse {
    let (status, body) = if node.shutdown.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, json!({"status": "shutting_down"}))
    } else if !node.bus.is_connected() {
        // Connected clients keep their local traffic; new ones are better served by a
        // node that reaches the cluster.
        (StatusCode::SERVICE_UNAVAILABLE, json!({"status": "bus_unavailable", "bus": node.bus.name()}))
    } else {
        match tokio::time::timeout(Duration::from_secs(1), node.store.health()).await {
            Ok(Ok(())) => {
                (StatusCode::OK, json!({"status": "ready", "store": node.store.name(), "bus": node.bus.name()}))
            }
            Ok(Err(error)) => {
                (StatusCode::SERVICE_UNAVAILABLE, json!({"status": "store_unavailable", "error": error.to_string()}))
            }
            Err(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"status": "store_unavailable", "error": "store health check timed out"}),
            ),
        }
    };
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string())
}

async fn metrics(State(node): State<Arc<Node>>) -> impl IntoResponse {
    let Some(handle) = &node.metrics else {
        return (StatusCode::NOT_FOUND, "metrics recorder not installed in this process".to_owned());
    };
    metrics::gauge!("switchboard_users_online").set(node.sessions.user_count() as f64);
    metrics::gauge!("switchboard_sessions").set(node.sessions.connection_count() as f64);
    (StatusCode::OK, handle.render())
}
