//! The bus between switchboard nodes.
//!
//! Nodes of a cluster talk over a publish/subscribe bus shaped like NATS core; a single
//! node uses the in-process implementation with the same semantics. The bus is
//! best-effort: it makes delivery fast, while the store and client resume make it
//! reliable (DESIGN sections 1 and 4).
//!
//! # Layout
//!
//! - [`bus`]: the [`Bus`] trait, [`Subscription`] (unsubscribes on drop),
//!   [`BusMessage`] and [`BusError`].
//! - [`subject`]: subject validation and `*` / `>` wildcard matching (NATS rules).
//! - [`subjects`]: every subject name the cluster uses; nothing else formats one.
//! - [`in_process`]: [`InProcessBus`], the single-node and test implementation.
//! - [`nats`]: [`NatsBus`], the cluster implementation over NATS core: one connection
//!   per process that reconnects by itself, fails fast while disconnected, and reports
//!   its state through [`Bus::connected_watch`].
//! - [`membership`]: heartbeats, up / down / gone, leave, rendezvous ownership.
//! - [`roster`]: which users are online on which node (presence replication).

// Tests may unwrap: a panic there is a test failure with a backtrace.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod bus;
pub mod in_process;
pub mod membership;
pub mod nats;
pub mod roster;
pub mod subject;
pub mod subjects;

pub use bus::{Bus, BusError, BusMessage, Subscription};
pub use in_process::{InProcessBus, InProcessOptions};
pub use nats::{NatsBus, NatsConnectError, NatsOptions};
pub use subject::SubjectError;
