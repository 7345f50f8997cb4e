//! switchboard: an actor-based real-time messaging server.
//!
//! # Layout
//!
//! - [`config`]: the configuration tree (file, env, flags) and its validation.
//! - [`server`]: start-up, the accept loop and the ordered, bounded shutdown.
//! - [`http`]: the one listener's routes: `/ws`, `/healthz`, `/readyz`, `/metrics`.
//! - [`web`]: the web chat page at `/`, embedded in the binary (no build step).
//! - [`gateway`]: the WebSocket upgrade (auth and origin checks before any actor exists),
//!   the per-socket connection task and its bounded, coalescing [`gateway::outbox`].
//! - [`auth`]: JWT verification and development identities.
//! - [`limits`]: rate limits (token buckets, 4003 strikes) and admission control.
//! - [`admin`]: the admin HTTP API under `/api/v1/` (bearer `SWITCHBOARD_ADMIN_TOKEN`).
//! - [`actors`]: the supervised actor tree: per-user actors, per-conversation
//!   sequencers, the supervisor with its restart policy, and the directory that finds them.
//! - [`sessions`]: the registry of connected devices, the fanout table.
//! - [`groups`]: the node's cache of group names and members (the sequencer decides).
//! - [`feeds`]: the online subscribers of each feed on this node (live feed fanout).
//! - [`presence`]: presence watchers, current status and `last_seen`.
//! - [`store`]: the `MessageStore` trait, the embedded (fjall) store with group commit,
//!   and the CQL store (ScyllaDB, Cassandra).
//! - [`node`]: what one process shares between its tasks and actors.
//! - [`cluster`]: this node among its peers: membership, conversation ownership and
//!   forwarding, cross-node delivery, presence across nodes, bus outages.
//! - [`metrics`]: the Prometheus recorder.
//! - `sync`: the locks and atomics of our own concurrent primitives (the outbox's queue,
//!   the session registry), from std normally and from loom under
//!   `--cfg switchboard_loom`, so the loom models check the production code.
//!
//! The wire types live in the `switchboard-proto` crate and the bus between nodes in
//! `switchboard-cluster`.

pub mod actors;
pub mod admin;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod feeds;
pub mod gateway;
pub mod groups;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod node;
pub mod presence;
pub mod server;
pub mod sessions;
pub mod store;
pub(crate) mod sync;
pub mod web;
