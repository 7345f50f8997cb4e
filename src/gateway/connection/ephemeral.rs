//! Presence watches, typing, and receipt queries of one connection.
//!
//! Presence and typing are ephemeral (DESIGN section 3): never stored, never replayed,
//! pushed as traffic that is shed first when the recipient's outbox is filling up.
//! `typing` is rate-limited per connection (a token bucket: `rate_limits.typing_per_sec`
//! sustained, `rate_limits.typing_burst` at once); past it the sender gets
//! `rate_limited` with the time to wait.

use switchboard_proto::client::{PresenceSubFrame, ReceiptsFrame, TypingFrame};
use switchboard_proto::close::CloseCode;
use switchboard_proto::error::ErrorCode;
use switchboard_proto::ids::ConvKind;
use switchboard_proto::server::{MemberReceipts, Receipts, TypingEvent};

use super::{Connection, frame};
use crate::limits::RateLimit;

impl Connection {
    /// `presence_sub`: the current presence of each user, then their changes.
    /// `Err`: the connection is abusing its limits and must be closed.
    pub(super) async fn on_presence_sub(&self, watch: PresenceSubFrame) -> Result<(), CloseCode> {
        let PresenceSubFrame { r#ref, users } = watch;
        let limits = &self.node.config.rate_limits;
        let limit = self
            .presence_limit
            .get_or_init(|| Box::new(RateLimit::new(limits.presence_subs_per_sec, limits.presence_subs_burst)));
        if !self.limited(r#ref.as_deref(), "presence_sub", limit.check())? {
            return Ok(());
        }
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
            return Ok(());
        }
        for user in &users {
            // Watch first, then read: a change in between is sent twice, never missed.
            self.node.presence.watch(user, self.conn_id, &self.outbox);
            match crate::presence::current(&self.node, user).await {
                Ok(presence) => self.push(frame(&presence)),
                Err(error) => {
                    self.store_error(r#ref.as_deref(), &error);
                    return Ok(());
                }
            }
        }
        Ok(())
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
    /// `Err`: the connection is abusing its limits and must be closed.
    pub(super) async fn on_typing(&self, typing: TypingFrame) -> Result<(), CloseCode> {
        let limits = &self.node.config.rate_limits;
        let limit =
            self.typing_limit.get_or_init(|| Box::new(RateLimit::new(limits.typing_per_sec, limits.typing_burst)));
        if !self.limited(None, "typing", limit.check())? {
            return Ok(());
        }
        // Ephemeral traffic is the first shed under memory pressure.
        if self.node.admission.under_memory_pressure() {
            metrics::counter!("switchboard_ephemeral_shed_total", "kind" => "typing").increment(1);
            return Ok(());
        }
        let TypingFrame { conv, state } = typing;
        let user = &self.identity.user;
        let members = match conv.kind() {
            ConvKind::Dm => conv.dm_peer(user).into_iter().collect(),
            ConvKind::Group => match self.node.groups.get(self.node.store.as_ref(), &conv).await {
                Ok(Some(group)) => group.members.to_vec(),
                _ => return Ok(()),
            },
            ConvKind::Feed => return Ok(()),
        };
        let event = frame(&TypingEvent { conv, user: user.clone(), state });
        let others: Vec<_> = members.into_iter().filter(|member| member != user).collect();
        self.node.deliver(&others, crate::cluster::Kind::Ephemeral, &event, None).await;
        metrics::counter!("switchboard_typing_relayed_total").increment(1);
        Ok(())
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
