//! Which users online on this node follow which feeds: the live side of feed fanout.
//!
//! A feed is fan-out on read: a publish is one message in the feed's log, whatever the
//! number of subscribers. A subscription is durable as an entry in the subscriber's
//! `user_convs` index, so resume replays a feed like any other conversation. For live
//! delivery, each node keeps this index of its online subscribers: a user's feeds are
//! registered when a device of theirs resumes (or subscribes) and dropped when their last
//! device on this node disconnects. Delivering a publish walks the feed's subscribers
//! here and pushes the one encoded frame to each of their devices.

use std::collections::HashSet;

use dashmap::DashMap;
use switchboard_proto::ids::{ConvId, UserId};

/// Online subscribers of each feed on this node.
#[derive(Debug, Default)]
pub struct FeedIndex {
    by_feed: DashMap<ConvId, HashSet<UserId>>,
    by_user: DashMap<UserId, HashSet<ConvId>>,
}

impl FeedIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// `user` (online here) follows `feed`.
    pub fn add(&self, feed: &ConvId, user: &UserId) {
        self.by_user.entry(user.clone()).or_default().insert(feed.clone());
        self.by_feed.entry(feed.clone()).or_default().insert(user.clone());
    }

    /// `user` no longer follows `feed`.
    pub fn remove(&self, feed: &ConvId, user: &UserId) {
        if let Some(mut feeds) = self.by_user.get_mut(user) {
            feeds.remove(feed);
        }
        self.by_user.remove_if(user, |_, feeds| feeds.is_empty());
        self.remove_subscriber(feed, user);
    }

    /// `user` has no device left on this node: drop all their feeds.
    pub fn remove_user(&self, user: &UserId) {
        let Some((_, feeds)) = self.by_user.remove(user) else { return };
        for feed in &feeds {
            self.remove_subscriber(feed, user);
        }
    }

    fn remove_subscriber(&self, feed: &ConvId, user: &UserId) {
        if let Some(mut users) = self.by_feed.get_mut(feed) {
            users.remove(user);
        }
        self.by_feed.remove_if(feed, |_, users| users.is_empty());
    }

    /// Calls `visit` for every online subscriber of `feed`; returns how many there were.
    /// `visit` runs under the feed's shard lock: it must not block or touch this index.
    pub fn for_each_subscriber(&self, feed: &ConvId, mut visit: impl FnMut(&UserId)) -> usize {
        let Some(users) = self.by_feed.get(feed) else { return 0 };
        users.iter().for_each(&mut visit);
        users.len()
    }

    /// Online subscribers of `feed` on this node.
    pub fn subscriber_count(&self, feed: &ConvId) -> usize {
        self.by_feed.get(feed).map_or(0, |users| users.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_remove_and_user_departure() {
        let index = FeedIndex::new();
        let (news, sport) = (ConvId::new("feed:news").unwrap(), ConvId::new("feed:sport").unwrap());
        let (alice, bob) = (UserId::new("alice").unwrap(), UserId::new("bob").unwrap());
        index.add(&news, &alice);
        index.add(&news, &bob);
        index.add(&sport, &alice);
        index.add(&news, &alice);
        let mut seen = Vec::new();
        assert_eq!(index.for_each_subscriber(&news, |user| seen.push(user.clone())), 2);
        seen.sort();
        assert_eq!(seen, [alice.clone(), bob.clone()]);
        index.remove(&news, &bob);
        assert_eq!(index.subscriber_count(&news), 1);
        index.remove_user(&alice);
        assert_eq!(index.subscriber_count(&news), 0);
        assert_eq!(index.subscriber_count(&sport), 0);
        assert!(index.by_user.is_empty() && index.by_feed.is_empty());
    }
}
