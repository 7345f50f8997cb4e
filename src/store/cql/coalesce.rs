//! Request coalescing (single flight) for reads, as Discord's data services do: callers
//! asking the same question while it is being answered share one database query.
//!
//! The first caller of a key (the leader) starts the query as a [`Shared`] future and
//! parks it in a map; callers arriving while it runs clone it and await the same
//! result. The entry leaves the map when the query finishes or when the leader is
//! dropped (a guard removes it), so a finished answer is never served again: a caller
//! that arrives after it sees a fresh query. The followers keep polling their clone, so
//! a cancelled leader does not cancel them.
//!
//! Writes call [`SingleFlight::forget`] for the keys they change before they return, so
//! a caller that starts a read after a write's acknowledgment never joins a query that
//! began before the write: coalescing never hides an acknowledged write.

use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;

use dashmap::DashMap;
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};

use crate::store::{StoreError, StoreResult};

type SharedRead<V> = Shared<BoxFuture<'static, Result<V, Arc<StoreError>>>>;

/// One in-flight query per key.
pub(super) struct SingleFlight<K, V> {
    op: &'static str,
    in_flight: DashMap<K, (u64, SharedRead<V>)>,
    next_id: std::sync::atomic::AtomicU64,
}

impl<K: Eq + Hash, V> std::fmt::Debug for SingleFlight<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SingleFlight").field("op", &self.op).field("in_flight", &self.in_flight.len()).finish()
    }
}

impl<K, V> SingleFlight<K, V>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    pub(super) fn new(op: &'static str) -> Self {
        Self { op, in_flight: DashMap::new(), next_id: std::sync::atomic::AtomicU64::new(0) }
    }

    /// Answers `key` with the in-flight query for it, or starts `query` and shares it.
    pub(super) async fn run<F>(&self, key: K, query: impl FnOnce() -> F) -> StoreResult<V>
    where
        F: Future<Output = StoreResult<V>> + Send + 'static,
    {
        // The entry guard is dropped at the end of this statement, before any await.
        let (shared, leader_id) = match self.in_flight.entry(key.clone()) {
            dashmap::Entry::Occupied(entry) => (entry.get().1.clone(), None),
            dashmap::Entry::Vacant(entry) => {
                let id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let shared = query().map(|result| result.map_err(Arc::new)).boxed().shared();
                entry.insert((id, shared.clone()));
                (shared, Some(id))
            }
        };
        let leader_guard = leader_id.map(|id| LeaderGuard { map: &self.in_flight, key, id });
        if leader_guard.is_none() {
            ::metrics::counter!("switchboard_store_coalesced_reads_total", "op" => self.op).increment(1);
        }
        shared.await.map_err(|error| clone_error(&error))
    }

    /// Makes the next caller of `key` start a fresh query (after a write to it).
    pub(super) fn forget(&self, key: &K) {
        self.in_flight.remove(key);
    }

    /// [`SingleFlight::forget`] for every key `changed` says a write touched.
    pub(super) fn forget_where(&self, changed: impl Fn(&K) -> bool) {
        self.in_flight.retain(|key, _| !changed(key));
    }

    #[cfg(test)]
    pub(super) fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
}

/// Removes the leader's entry when its call ends (done, failed or cancelled), unless a
/// write already replaced it with a newer query.
struct LeaderGuard<'a, K: Eq + Hash, V> {
    map: &'a DashMap<K, (u64, SharedRead<V>)>,
    key: K,
    id: u64,
}

impl<K: Eq + Hash, V> Drop for LeaderGuard<'_, K, V> {
    fn drop(&mut self) {
        self.map.remove_if(&self.key, |_, (id, _)| *id == self.id);
    }
}

/// A copy of a shared error for each caller (`StoreError` is not `Clone`: it is meant to
/// be handed on, and only the single-flight map needs to hand one out twice).
pub(super) fn clone_error(error: &StoreError) -> StoreError {
    match error {
        StoreError::Unavailable(message) => StoreError::Unavailable(message.clone()),
        StoreError::Corrupt(message) => StoreError::Corrupt(message.clone()),
        StoreError::Conflict(message) => StoreError::Conflict(message.clone()),
        StoreError::Closed => StoreError::Closed,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn concurrent_callers_share_one_query_and_later_ones_start_fresh() {
        let flight = Arc::new(SingleFlight::<&'static str, u32>::new("test"));
        let queries = Arc::new(AtomicU32::new(0));
        let (release_tx, release_rx) = tokio::sync::watch::channel(false);
        let mut callers = tokio::task::JoinSet::new();
        for _ in 0..10 {
            let (flight, queries, mut release_rx) = (Arc::clone(&flight), Arc::clone(&queries), release_rx.clone());
            callers.spawn(async move {
                flight
                    .run("key", move || async move {
                        queries.fetch_add(1, Ordering::SeqCst);
                        let _ = release_rx.wait_for(|released| *released).await;
                        Ok(7)
                    })
                    .await
            });
        }
        while flight.in_flight() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        release_tx.send(true).expect("release");
        while let Some(joined) = callers.join_next().await {
            assert_eq!(joined.expect("caller").expect("answer"), 7);
        }
        assert_eq!(queries.load(Ordering::SeqCst), 1);
        assert_eq!(flight.in_flight(), 0, "a finished query leaves the map");
        let again = flight.run("key", || async { Ok(8) }).await.expect("fresh");
        assert_eq!(again, 8);
    }

    #[tokio::test]
    async fn errors_reach_every_caller_and_forget_detaches_the_key() {
        let flight = SingleFlight::<u8, u8>::new("test");
        let error = flight.run(1, || async { Err(StoreError::Unavailable("down".to_owned())) }).await;
        assert!(matches!(error, Err(StoreError::Unavailable(message)) if message == "down"));
        flight.forget(&1);
        flight.forget_where(|key| *key == 1);
        assert_eq!(flight.in_flight(), 0);
    }
}
