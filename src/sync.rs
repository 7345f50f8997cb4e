//! The synchronization primitives our own concurrent code is built on, taken from std
//! (and dashmap) in a normal build and from the `loom` crate under
//! `--cfg switchboard_loom`.
//!
//! Loom checks a concurrent algorithm by running it under every interleaving of its
//! threads' synchronizing operations (up to a bound on preemptions). It can only see the
//! operations of its own types, so the primitives it models (the outbox's queue, the
//! session registry) take their locks, atomics and maps from here: the loom models run
//! the production code, not a copy of it. Everything else keeps using std, tokio and
//! dashmap directly.
//!
//! The cfg is ours, not the customary `loom`: it is set for every crate of the build, and
//! tokio under `cfg(loom)` leaves out `tokio::net`, which axum and the gateway need.
//!
//! Run the models as `tests/run-all.sh` does (a target directory of their own, since the
//! cfg changes every crate's build; the `loom` profile keeps debug assertions on):
//!
//! ```text
//! RUSTFLAGS="--cfg switchboard_loom" CARGO_TARGET_DIR=target/loom LOOM_MAX_PREEMPTIONS=3 \
//!     cargo test --profile loom --lib loom_
//! ```

pub(crate) mod map;

#[cfg(switchboard_loom)]
pub(crate) use loom::sync::atomic::{AtomicUsize, Ordering};
#[cfg(switchboard_loom)]
pub(crate) use loom::sync::{Mutex, MutexGuard};
#[cfg(not(switchboard_loom))]
pub(crate) use std::sync::atomic::{AtomicUsize, Ordering};
#[cfg(not(switchboard_loom))]
pub(crate) use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, recovering the data from a poisoned lock.
///
/// For locks whose every critical section is a few field updates that cannot leave the
/// data inconsistent, so a panic elsewhere while holding one does not make it unusable.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The preemption bound of a loom model when `LOOM_MAX_PREEMPTIONS` does not set one.
/// Unbounded exploration of our models would take hours; almost every concurrency bug
/// shows within two or three preemptions.
#[cfg(all(test, switchboard_loom))]
const DEFAULT_PREEMPTIONS: usize = 3;

/// Checks a loom model: runs `f` under every interleaving of its threads' synchronizing
/// operations, within the preemption bound (`LOOM_MAX_PREEMPTIONS`, or 3).
#[cfg(all(test, switchboard_loom))]
pub(crate) fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound.get_or_insert(DEFAULT_PREEMPTIONS);
    builder.check(f);
}
