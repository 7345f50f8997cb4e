//! Group and feed membership requests of one connection.
//!
//! `group_create`, `group_add` and `group_remove` go to the group's sequencer, which
//! authorizes them, logs them as system messages and answers once they are durable; this
//! connection waits for that answer (bounded by `gateway.request_timeout_ms`) before
//! reading its next frame: membership changes are rare, and their order matters.
//!
//! `subscribe` makes the user follow a feed: durably (the feed joins the user's
//! `user_convs`, so every device of the user resumes it) and live on this node. Without
//! `since` the subscription starts at the feed's head; with it, the missed messages
//! follow `subscribed` in order, with live ones held back meanwhile exactly as on resume.

use std::collections::HashMap;
use std::sync::Arc;

use switchboard_proto::client::{GroupChangeFrame, GroupCreateFrame, SubscribeFrame, UnsubscribeFrame};
use switchboard_proto::close::CloseCode;
use switchboard_proto::error::ErrorCode;
use switchboard_proto::ids::ConvId;
use switchboard_proto::server::{Group, Subscribed, Unsubscribed};
use tokio::sync::oneshot;

use super::{Connection, Replay, frame};
use crate::actors::conversation::{ConvMsg, GroupChange, GroupRequest, SendError};
use crate::groups::GroupInfo;

impl Connection {
    pub(super) async fn on_group_create(&self, create: GroupCreateFrame) {
        let GroupCreateFrame { r#ref, name, members } = create;
        let conv = match ConvId::group(&ulid::Ulid::new().to_string().to_lowercase()) {
            Ok(conv) => conv,
            Err(error) => {
                tracing::error!(user.id = %self.identity.user, conn.id = self.conn_id, %error, "generated group id is invalid");
                self.reply_error(r#ref.as_deref(), ErrorCode::Internal, "cannot create a group id", None);
                return;
            }
        };
        self.group_request(r#ref, conv, GroupChange::Create { name, members }).await;
    }

    pub(super) async fn on_group_change(&self, change: GroupChangeFrame, add: bool) {
        let GroupChangeFrame { r#ref, conv, members } = change;
        let change = if add { GroupChange::Add(members) } else { GroupChange::Remove(members) };
        self.group_request(r#ref, conv, change).await;
    }

    async fn group_request(&self, r#ref: Option<String>, conv: ConvId, change: GroupChange) {
        let (reply_tx, reply_rx) = oneshot::channel();
        let request =
            GroupRequest { by: self.identity.user.clone(), dev: self.identity.device.clone(), change, reply: reply_tx };
        if let Err(error) = self.node.to_conv(&conv, ConvMsg::Group(request)).await {
            self.directory_error(r#ref.as_deref(), &conv, &error);
            return;
        }
        let result = match tokio::time::timeout(self.node.config.gateway.request_timeout(), reply_rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) | Err(_) => Err(SendError::Unavailable),
        };
        match result {
            Ok(info) => self.push(frame(&group_frame(r#ref, conv, &info))),
            Err(error) => self.conv_error(r#ref.as_deref(), &error),
        }
    }

    /// `subscribe`: follow a feed (durably, for every device of the user), answer with
    /// its head, then replay after `since` if given.
    pub(super) async fn on_subscribe(&self, subscribe: SubscribeFrame) -> Result<(), CloseCode> {
        let SubscribeFrame { r#ref, conv, since } = subscribe;
        let store = &self.node.store;
        let (user, device) = (&self.identity.user, &self.identity.device);
        if let Err(error) = store.index_user_conv(std::slice::from_ref(user), &conv).await {
            self.store_error(r#ref.as_deref(), &error);
            return Ok(());
        }
        // Live messages from here on are held until the replay below is out.
        self.outbox.hold();
        self.node.feeds.add(&conv, user);
        let outcome = async {
            let head = store.load_conv(&conv).await?.map_or(0, |meta| meta.last_seq);
            self.push(frame(&Subscribed { r#ref: r#ref.clone(), conv: conv.clone(), seq: head }));
            let position = match since {
                Some(since) => self.replay_conv(&conv, since, head, &mut 0).await?,
                None => {
                    if head > 0 {
                        store.advance_cursor(user, device, &conv, head).await?;
                    }
                    head
                }
            };
            Ok::<_, Replay>(position)
        }
        .await;
        let replayed = match &outcome {
            Ok(position) => HashMap::from([(conv.clone(), *position)]),
            Err(_) => HashMap::new(),
        };
        self.outbox.release(replayed);
        metrics::counter!("switchboard_feed_subscriptions_total").increment(1);
        match outcome {
            Ok(_) => Ok(()),
            Err(Replay::Store(error)) => {
                self.store_error(r#ref.as_deref(), &error);
                Ok(())
            }
            Err(Replay::Closing) => Err(CloseCode::SlowConsumer),
        }
    }

    /// `unsubscribe`: stop following a feed, for every device of the user.
    pub(super) async fn on_unsubscribe(&self, unsubscribe: UnsubscribeFrame) {
        let UnsubscribeFrame { r#ref, conv } = unsubscribe;
        let user = &self.identity.user;
        if let Err(error) = self.node.store.unindex_user_conv(user, &conv).await {
            self.store_error(r#ref.as_deref(), &error);
            return;
        }
        self.node.feeds.remove(&conv, user);
        self.push(frame(&Unsubscribed { r#ref, conv }));
    }
}

fn group_frame(r#ref: Option<String>, conv: ConvId, info: &Arc<GroupInfo>) -> Group {
    Group { r#ref, conv, name: info.name.clone(), members: info.members.to_vec() }
}
