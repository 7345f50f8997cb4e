//! A concurrent map with closure-shaped access: dashmap in a normal build, one loom
//! `Mutex` around a `HashMap` under `--cfg switchboard_loom`.
//!
//! Loom cannot see inside dashmap's own shard locks (a thread blocked on one would hang
//! the model), so a registry that loom models keeps its map behind this type. What the
//! callers rely on is the same in both: every operation on one key is atomic, and a
//! closure runs while that key is locked. The closure shape also makes it impossible to
//! keep a guard alive across an `.await` by accident.

use std::hash::Hash;

#[cfg(not(switchboard_loom))]
use dashmap::DashMap;

/// A map from `K` to `V`, each call atomic for its key.
#[derive(Debug)]
pub(crate) struct ShardedMap<K: Eq + Hash, V> {
    #[cfg(not(switchboard_loom))]
    inner: DashMap<K, V>,
    #[cfg(switchboard_loom)]
    inner: super::Mutex<std::collections::HashMap<K, V>>,
}

impl<K: Eq + Hash, V> Default for ShardedMap<K, V> {
    fn default() -> Self {
        Self { inner: Default::default() }
    }
}

#[cfg(not(switchboard_loom))]
impl<K: Eq + Hash + Clone, V> ShardedMap<K, V> {
    /// Runs `f` on the value of `key`, inserting `V::default()` first if there is none.
    pub(crate) fn update<R>(&self, key: &K, f: impl FnOnce(&mut V) -> R) -> R
    where
        V: Default,
    {
        f(&mut self.inner.entry(key.clone()).or_default())
    }

    /// Runs `f` on the value of `key`, if there is one.
    pub(crate) fn update_existing<R>(&self, key: &K, f: impl FnOnce(&mut V) -> R) -> Option<R> {
        self.inner.get_mut(key).map(|mut value| f(&mut value))
    }

    /// Runs `f` on the value of `key` (shared access), if there is one.
    pub(crate) fn read<R>(&self, key: &K, f: impl FnOnce(&V) -> R) -> Option<R> {
        self.inner.get(key).map(|value| f(&value))
    }

    /// Removes `key` if its value satisfies `remove`, deciding under the key's lock.
    pub(crate) fn remove_if(&self, key: &K, remove: impl FnOnce(&V) -> bool) {
        self.inner.remove_if(key, |_, value| remove(value));
    }

    /// Calls `f` on every entry (no snapshot: entries may change meanwhile).
    pub(crate) fn for_each(&self, mut f: impl FnMut(&K, &V)) {
        self.inner.iter().for_each(|entry| f(entry.key(), entry.value()));
    }

    pub(crate) fn len(&self) -> usize {
        self.inner.len()
    }
}

#[cfg(switchboard_loom)]
impl<K: Eq + Hash + Clone, V> ShardedMap<K, V> {
    pub(crate) fn update<R>(&self, key: &K, f: impl FnOnce(&mut V) -> R) -> R
    where
        V: Default,
    {
        f(super::lock(&self.inner).entry(key.clone()).or_default())
    }

    pub(crate) fn update_existing<R>(&self, key: &K, f: impl FnOnce(&mut V) -> R) -> Option<R> {
        super::lock(&self.inner).get_mut(key).map(f)
    }

    pub(crate) fn read<R>(&self, key: &K, f: impl FnOnce(&V) -> R) -> Option<R> {
        super::lock(&self.inner).get(key).map(f)
    }

    pub(crate) fn remove_if(&self, key: &K, remove: impl FnOnce(&V) -> bool) {
        let mut map = super::lock(&self.inner);
        if map.get(key).is_some_and(remove) {
            map.remove(key);
        }
    }

    pub(crate) fn for_each(&self, mut f: impl FnMut(&K, &V)) {
        super::lock(&self.inner).iter().for_each(|(key, value)| f(key, value));
    }

    pub(crate) fn len(&self) -> usize {
        super::lock(&self.inner).len()
    }
}
