//! Group membership as the rest of the node sees it: a cache in front of `conv_meta`.
//!
//! The conversation actor is the authority on a group's members: it checks every send
//! against them and sequences every change as a system message. Everything else that
//! needs the member list without waking the sequencer (authorizing `history`, relaying
//! `typing` and receipts) reads it here. The actor writes the cache once a change is
//! durable, and the cache loads a group it does not hold from the store. A removed
//! member may therefore see a group's history until the removal is durable, never after.
//!
//! Unknown groups are cached too (as `None`), so a client naming groups that do not
//! exist costs one store read per id, not one per frame. Creating a group replaces its
//! `None`. The cache is bounded (`groups.cache_entries`, least recently used out).

use std::sync::Arc;

use switchboard_proto::ids::{ConvId, UserId};

use crate::store::{MessageStore, StoreResult};

/// A group's name and members (sorted, unique).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    pub name: String,
    pub members: Arc<[UserId]>,
}

impl GroupInfo {
    /// Builds the info from any member list: sorted and deduplicated here.
    pub fn new(name: String, members: impl IntoIterator<Item = UserId>) -> Self {
        let mut members: Vec<UserId> = members.into_iter().collect();
        members.sort_unstable();
        members.dedup();
        Self { name, members: members.into() }
    }

    pub fn is_member(&self, user: &UserId) -> bool {
        self.members.binary_search(user).is_ok()
    }
}

/// Name and members of recently used groups.
pub struct GroupCache {
    cache: quick_cache::sync::Cache<ConvId, Option<Arc<GroupInfo>>>,
}

impl std::fmt::Debug for GroupCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCache").field("entries", &self.cache.len()).finish()
    }
}

impl GroupCache {
    pub fn new(capacity: usize) -> Self {
        Self { cache: quick_cache::sync::Cache::new(capacity.max(1)) }
    }

    /// The group, from the cache or the store; `None` if it does not exist.
    pub async fn get(&self, store: &dyn MessageStore, conv: &ConvId) -> StoreResult<Option<Arc<GroupInfo>>> {
        if let Some(cached) = self.cache.get(conv) {
            return Ok(cached);
        }
        let info = store.load_conv(conv).await?.and_then(|meta| {
            let name = meta.name?;
            Some(Arc::new(GroupInfo::new(name, meta.members)))
        });
        // A change that became durable while we read wins over what we read.
        if self.cache.get(conv).is_none() {
            self.cache.insert(conv.clone(), info.clone());
        }
        Ok(info)
    }

    /// Records a durable change (from the group's sequencer).
    pub fn put(&self, conv: ConvId, info: Arc<GroupInfo>) {
        self.cache.insert(conv, Some(info));
    }

    /// Forgets every entry (changes may have been missed: they are loaded again).
    pub fn clear(&self) {
        self.cache.clear();
    }

    /// Forgets one group: the next `get` reads the store.
    pub fn forget(&self, conv: &ConvId) {
        self.cache.remove(conv);
    }

    /// Groups (and known-missing ids) cached now.
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str) -> UserId {
        UserId::new(id).unwrap()
    }

    #[test]
    fn members_are_sorted_and_unique() {
        let info = GroupInfo::new("g".into(), [user("carol"), user("alice"), user("carol"), user("bob")]);
        assert_eq!(&*info.members, &[user("alice"), user("bob"), user("carol")]);
        assert!(info.is_member(&user("bob")));
        assert!(!info.is_member(&user("dave")));
    }
}
