//! The integration suite: one test binary, real server processes, real sockets.
//!
//! Every test starts its own `switchboard` process on a loopback port with its own data
//! directory (see `support::server`) and talks to it over WebSocket and HTTP.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

mod admin;
mod auth;
mod cluster;
mod cql_fault;
mod durability;
mod errors;
mod feeds;
mod groups;
mod hostile;
mod limits;
mod messaging;
mod presence;
mod shutdown;
mod store;
