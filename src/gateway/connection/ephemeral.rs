//! Presence watches, typing, and receipt queries of one connection.
//!
//! Presence and typing are ephemeral (DESIGN section 3): never stored, never replayed,
//! pushed as traffic that is shed first when the recipient's outbox is filling up.
//! `typing` is rate-limited per connection (a token bucket: `rate_limits.typing_per_sec`
//! sustained, `rate_limits.typing_burst` at once); past it the sender gets
//! `rate_limited` with the time to wait.

use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use switchboard_proto::client::{PresenceSubFrame, ReceiptsFrame, TypingFrame};
use switchboard_proto::error::ErrorCode;
use switchboard_proto::ids::ConvKind;
use switchboard_proto::server::{MemberReceipts, Receipts, TypingEvent};

use super::{Connection, frame};
use crate::config::RateLimitsConfig;

/// A per-connection token bucket.
pub(super) struct RateLimit(DefaultDirectRateLimiter);

impl std::fmt::Debug for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RateLimit")
    }
}

impl RateLimit {
    fn typing(config: &RateLimitsConfig) -> Self {
        let burst = NonZeroU32::new(config.typing_burst).unwrap_or(NonZeroU32::MIN);
        // Validated above zero and finite; the fallback only guards the arithmetic.
        let period = std::time::Duration::try_from_secs_f64(1.0 / config.typing_per_sec)
            .unwrap_or(std::time::Duration::from_secs(1));
        let quota = Quota::with_period(period).unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN));
        Self(RateLimiter::direct(quota.allow_burst(burst)))
    }

    /// `Ok` if a token was taken, else how long until one is available (ms).
    fn check(&self) -> Result<(), u64> {
        self.0.check().map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            (wait.as_millis() as u64).max(1)
        })
    }
}

impl Connection {
    /// `presence_sub`: the current presence of each user, then their changes.
    pub(super) async fn on_presence_sub(&self, watch: PresenceSubFrame) {
        let PresenceSubFrame { r#ref, users } = watch;
        let max_watched = self.node.config.presence.max_watched;
        let accepted = {
            let mut watched = self.watched.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let new = users.iter().filter(|user| !watched.contains(user)).count();
            if watched.len() + new > max_watched {
                false
            } else {
                for user in &users {
                    if !watched.contains(user) {
                        watched.push(user.clone());
                    }
                }
                true
            }
        };
        if !accepted {
            let message = format!("a connection may watch at most {max_watched} users");
            self.reply_error(r#ref.as_deref(), ErrorCode::TooLarge, &message, None);
            return;
        }
        for user in &users {
            // Watch first, then read: a change in between is sent twice, never missed.
            self.node.presence.watch(user, self.conn_id, &self.outbox);
            match crate::presence::current(&self.node, user).await {
                Ok(presence) => self.push(frame(&presence)),
                Err(error) => {
                    self.store_error(r#ref.as_deref(), &error);
                    return;
                }
            }
        }
    }

    /// `presence_unsub`: stop watching; no reply.
    pub(super) fn on_presence_unsub(&self, unwatch: PresenceSubFrame) {
        let mut watched = self.watched.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for user in &unwatch.users {
            self.node.presence.unwatch(user, self.conn_id);
            watched.retain(|watched| watched != user);
        }
    }

    /// Drops every presence watch of this connection (it is closing).
    pub(super) fn unwatch_all(&self) {
        let watched = std::mem::take(&mut *self.watched.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        for user in &watched {
            self.node.presence.unwatch(user, self.conn_id);
        }
    }

    /// `typing`: relayed to the conversation's other members online on this node.
    pub(super) async fn on_typing(&self, typing: TypingFrame) {
        let limit = self.typing_limit.get_or_init(|| RateLimit::typing(&self.node.config.rate_limits));
        if let Err(wait_ms) = limit.check() {
            metrics::counter!("switchboard_rate_limited_total", "kind" => "typing").increment(1);
            self.reply_error(None, ErrorCode::RateLimited, "too many typing frames", Some(wait_ms));
            return;
        }
        let TypingFrame { conv, state } = typing;
        let user = &self.identity.user;
        let members = match conv.kind() {
            ConvKind::Dm => conv.dm_peer(user).into_iter().collect(),
            ConvKind::Group => match self.node.groups.get(self.node.store.as_ref(), &conv).await {
                Ok(Some(group)) => group.members.to_vec(),
                _ => return,
            },
            ConvKind::Feed => return,
        };
        let event = frame(&TypingEvent { conv, user: user.clone(), state });
        for member in members.iter().filter(|member| *member != user) {
            for session in self.node.sessions.devices(member) {
                let _ = session.outbox.push_ephemeral(event.clone());
            }
        }
        metrics::counter!("switchboard_typing_relayed_total").increment(1);
    }

    /// `receipts`: every member's delivered and read marks.
    pub(super) async fn on_receipts(&self, query: ReceiptsFrame) {
        let ReceiptsFrame { r#ref, conv } = query;
        match self.node.store.marks(&conv).await {
            Ok(marks) => {
                let mut members: Vec<MemberReceipts> = marks
                    .into_iter()
                    .map(|marks| MemberReceipts { user: marks.user, delivered: marks.delivered, read: marks.read })
                    .collect();
                members.sort_by(|a, b| a.user.cmp(&b.user));
                self.push(frame(&Receipts { r#ref, conv, members }));
            }
            Err(error) => self.store_error(r#ref.as_deref(), &error),
        }
    }
}
