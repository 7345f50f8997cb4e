//! The cluster's control task: heartbeats, membership, rosters, and what peers send.
//!
//! One task per node owns the subscriptions. Everything it does per message is short
//! and synchronous (a map update, pushes into outboxes), except forwarded requests,
//! which run in their own tasks, at most `cluster.max_inflight_forwards` at once, and
//! roster fetches, one task per peer at a time.

use std::collections::HashSet;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use switchboard_cluster::membership::{Change, Heartbeat, Leave, PeerState, rendezvous_owner};
use switchboard_cluster::roster::{Applied, RosterDiff, RosterPage, RosterPageRequest, Transition};
use switchboard_cluster::{BusMessage, Subscription, subjects};
use switchboard_proto::close::CloseCode;
use switchboard_proto::ids::{ConvId, UserId};
use switchboard_proto::server::{Presence, PresenceStatus};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::Cluster;
use super::wire::{Closed, ClusterEvent, Deliver, Delivery, GroupAnswer, Rpc, SendAnswer};
use crate::actors::DirectoryError;
use crate::actors::conversation::{ConvMsg, GroupRequest, SendError, SendRequest};
use crate::groups::GroupInfo;
use crate::node::{Node, now_ms};

/// Users per roster page (a page must stay well under the bus' 1 MiB payload limit).
const ROSTER_PAGE: usize = 20_000;
/// How long one roster page request may take.
const ROSTER_PAGE_TIMEOUT: Duration = Duration::from_secs(5);

struct Subscriptions {
    heartbeats: Subscription,
    leaves: Subscription,
    diffs: Subscription,
    inbox: Subscription,
    rpc: Subscription,
    roster: Subscription,
    events: Subscription,
}

/// Subscribes to everything this node listens to, then runs the control loop in a task
/// until the node shuts down.
pub async fn run(node: Arc<Node>, cluster: Arc<Cluster>) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let bus = &cluster.bus;
    let me = cluster.me.clone();
    let subscriptions = Subscriptions {
        heartbeats: bus.subscribe(subjects::cluster_heartbeat()).await?,
        leaves: bus.subscribe(subjects::cluster_leave()).await?,
        diffs: bus.subscribe(subjects::presence_events()).await?,
        inbox: bus.subscribe(&subjects::node_inbox(&me)).await?,
        rpc: bus.subscribe(&subjects::node_rpc(&me)).await?,
        roster: bus.subscribe(&subjects::node_roster(&me)).await?,
        events: bus.subscribe(subjects::cluster_events()).await?,
    };
    tracing::info!(node.id = %me, bus = bus.name(), "cluster member started");
    Ok(tokio::spawn(control_loop(node, cluster, subscriptions)))
}

async fn control_loop(node: Arc<Node>, cluster: Arc<Cluster>, mut subs: Subscriptions) {
    let interval = cluster.config.membership().heartbeat_interval;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut connected = cluster.bus.connected_watch();
    loop {
        tokio::select! {
            () = node.shutdown.cancelled() => break,
            _ = ticker.tick() => {
                heartbeat(&cluster).await;
                cluster.ask_missed_to_resync().await;
                let changes = cluster
                    .membership
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .sweep(Instant::now(), cluster.is_connected());
                apply_changes(&node, &cluster, changes);
            }
            Some(message) = subs.heartbeats.next() => on_heartbeat(&node, &cluster, &message),
            Some(message) = subs.leaves.next() => {
                if let Some(leave) = decode::<Leave>(&message) {
                    let change = cluster.membership.lock().unwrap_or_else(PoisonError::into_inner).on_leave(&leave);
                    apply_changes(&node, &cluster, change.into_iter().collect());
                }
            }
            Some(message) = subs.diffs.next() => on_diff(&node, &cluster, &message),
            Some(message) = subs.inbox.next() => on_delivery(&node, &message),
            Some(message) = subs.rpc.next() => on_rpc(&node, &cluster, message),
            Some(message) = subs.roster.next() => on_roster_request(&cluster, message).await,
            Some(message) = subs.events.next() => on_event(&node, &cluster, &message),
            Ok(()) = connected.changed() => {
                let up = *connected.borrow_and_update();
                on_connection(&node, &cluster, up);
                cluster.ask_missed_to_resync().await;
            }
        }
    }
    tracing::debug!("cluster control loop stopped");
}

async fn heartbeat(cluster: &Cluster) {
    let roster_version = cluster.local.lock().await.version();
    let beat = Heartbeat { node: cluster.me.clone(), incarnation: cluster.incarnation, roster_version };
    cluster.publish(subjects::cluster_heartbeat(), &beat).await;
}

fn decode<T: serde::de::DeserializeOwned>(message: &BusMessage) -> Option<T> {
    match serde_json::from_slice(&message.payload) {
        Ok(value) => Some(value),
        Err(error) => {
            metrics::counter!("switchboard_cluster_undecodable_total").increment(1);
            tracing::warn!(subject = %message.subject, %error, "undecodable cluster message ignored");
            None
        }
    }
}

fn on_heartbeat(node: &Arc<Node>, cluster: &Arc<Cluster>, message: &BusMessage) {
    let Some(beat) = decode::<Heartbeat>(message) else { return };
    if beat.node == cluster.me {
        return;
    }
    let change = cluster.membership.lock().unwrap_or_else(PoisonError::into_inner).on_heartbeat(&beat, Instant::now());
    let changed = change.is_some();
    apply_changes(node, cluster, change.into_iter().collect());
    if changed {
        return;
    }
    // A roster change we missed shows in the version the node announces.
    let known = cluster.roster.read().unwrap_or_else(PoisonError::into_inner).version_of(&beat.node, beat.incarnation);
    if known.is_none_or(|known| known < beat.roster_version) {
        fetch_roster(node, cluster, &beat.node);
    }
}

fn apply_changes(node: &Arc<Node>, cluster: &Arc<Cluster>, changes: Vec<Change>) {
    if changes.is_empty() {
        return;
    }
    for change in changes {
        match change {
            Change::Up { node: peer, incarnation } => {
                tracing::info!(peer = %peer, incarnation, "cluster node up");
                fetch_roster(node, cluster, &peer);
            }
            Change::Restarted { node: peer, incarnation } => {
                tracing::info!(peer = %peer, incarnation, "cluster node restarted");
                let transitions =
                    cluster.roster.write().unwrap_or_else(PoisonError::into_inner).drop_node(&peer, now_ms());
                tell_watchers(node, cluster, &transitions);
                fetch_roster(node, cluster, &peer);
            }
            Change::Down { node: peer, left } => {
                tracing::warn!(peer = %peer, left, "cluster node down: its conversations move, its users go offline");
                metrics::counter!("switchboard_cluster_nodes_down_total").increment(1);
                // It was last heard about `down_after` ago (or just now, if it left).
                let at = if left { now_ms() } else { now_ms().saturating_sub(cluster.config.down_after_ms) };
                let transitions = cluster.roster.write().unwrap_or_else(PoisonError::into_inner).drop_node(&peer, at);
                update_view(cluster);
                store_last_seen(node, cluster, &transitions);
                tell_watchers(node, cluster, &transitions);
            }
            Change::Gone { node: peer } => tracing::info!(peer = %peer, "cluster node forgotten"),
        }
    }
    update_view(cluster);
}

fn update_view(cluster: &Cluster) {
    let (version, live) = {
        let membership = cluster.membership.lock().unwrap_or_else(PoisonError::into_inner);
        (membership.version(), membership.live().clone())
    };
    let mut view = cluster.view.write().unwrap_or_else(PoisonError::into_inner);
    if view.version != version {
        tracing::info!(live = ?live, "cluster view changed");
        metrics::gauge!("switchboard_cluster_live_nodes").set(live.len() as f64);
        view.version = version;
        view.live = live;
    }
}

/// Tells this node's watchers about users whose presence changed elsewhere, unless the
/// user is online here anyway.
fn tell_watchers(node: &Node, cluster: &Cluster, transitions: &[Transition]) {
    for transition in transitions {
        if cluster.online_here(&transition.user) {
            continue;
        }
        let (status, last_seen) = if transition.online {
            (PresenceStatus::Online, now_ms())
        } else {
            (PresenceStatus::Offline, transition.last_seen)
        };
        node.presence.publish(&Presence { user: transition.user.clone(), status, last_seen });
    }
}

/// A down node could not store its users' `last_seen`: the live node that owns each
/// user's key does.
fn store_last_seen(node: &Arc<Node>, cluster: &Cluster, transitions: &[Transition]) {
    let live = cluster.live_nodes();
    let mine: Vec<(UserId, u64)> = transitions
        .iter()
        .filter(|transition| !transition.online)
        .filter(|transition| rendezvous_owner(&live, &format!("user:{}", transition.user)) == Some(cluster.me.as_str()))
        .map(|transition| (transition.user.clone(), transition.last_seen))
        .collect();
    if mine.is_empty() {
        return;
    }
    let node = node.clone();
    tokio::spawn(async move {
        for (user, at) in mine {
            if let Err(error) = node.store.set_last_seen(&user, at).await {
                tracing::warn!(user.id = %user, %error, "last_seen of a down node's user not stored");
            }
        }
    });
}

fn on_diff(node: &Arc<Node>, cluster: &Arc<Cluster>, message: &BusMessage) {
    let Some(diff) = decode::<RosterDiff>(message) else { return };
    if diff.node == cluster.me {
        return;
    }
    let up = matches!(
        cluster.membership.lock().unwrap_or_else(PoisonError::into_inner).peer(&diff.node),
        Some((PeerState::Up, _))
    );
    if !up {
        // Its heartbeat will bring it up, and the roster with it.
        return;
    }
    let applied = cluster.roster.write().unwrap_or_else(PoisonError::into_inner).apply_diff(&diff);
    match applied {
        Applied::Changed(transitions) => tell_watchers(node, cluster, &transitions),
        Applied::Stale => {}
        Applied::NeedsSnapshot => fetch_roster(node, cluster, &diff.node),
    }
}

/// Fetches a peer's whole roster (unless a fetch is under way) and replaces ours.
fn fetch_roster(node: &Arc<Node>, cluster: &Arc<Cluster>, peer: &str) {
    if !cluster.fetching.lock().unwrap_or_else(PoisonError::into_inner).insert(peer.to_owned()) {
        return;
    }
    let (node, cluster, peer) = (node.clone(), cluster.clone(), peer.to_owned());
    tokio::spawn(async move {
        match fetch_pages(&cluster, &peer).await {
            Ok((incarnation, version, users)) => {
                let current = cluster.membership.lock().unwrap_or_else(PoisonError::into_inner).peer(&peer);
                // Down (or restarted) meanwhile: what we fetched is stale.
                if current == Some((PeerState::Up, incarnation)) {
                    let transitions = cluster.roster.write().unwrap_or_else(PoisonError::into_inner).replace(
                        &peer,
                        incarnation,
                        version,
                        users,
                        now_ms(),
                    );
                    tell_watchers(&node, &cluster, &transitions);
                }
            }
            Err(error) => tracing::debug!(peer = %peer, %error, "roster not fetched; the next heartbeat retries"),
        }
        cluster.fetching.lock().unwrap_or_else(PoisonError::into_inner).remove(&peer);
    });
}

async fn fetch_pages(cluster: &Cluster, peer: &str) -> anyhow::Result<(u64, u64, HashSet<UserId>)> {
    let subject = subjects::node_roster(peer);
    let mut users = HashSet::new();
    let mut request = RosterPageRequest { after: None, limit: ROSTER_PAGE };
    loop {
        let payload = Bytes::from(serde_json::to_vec(&request)?);
        let answer = cluster.bus.request(&subject, payload, ROSTER_PAGE_TIMEOUT).await?;
        let page: RosterPage = serde_json::from_slice(&answer)?;
        users.extend(page.users.iter().cloned());
        if !page.more {
            return Ok((page.incarnation, page.version, users));
        }
        request.after = page.users.last().cloned();
    }
}

async fn on_roster_request(cluster: &Cluster, message: BusMessage) {
    let Some(request) = decode::<RosterPageRequest>(&message) else { return };
    let page = cluster.local.lock().await.page(&request);
    reply(cluster, &message, &page).await;
}

async fn reply(cluster: &Cluster, message: &BusMessage, answer: &impl serde::Serialize) {
    if let Some(to) = &message.reply {
        cluster.publish(to, answer).await;
    }
}

fn on_delivery(node: &Node, message: &BusMessage) {
    let Some(delivery) = decode::<Delivery>(message) else { return };
    let Delivery { what, except, frame } = delivery;
    let frame = Utf8Bytes::from(String::from(frame.get()));
    let sessions = &node.sessions;
    let queued = match what {
        Deliver::Msg { conv, seq, users } => {
            node.note_head(&conv, seq);
            users.iter().map(|user| sessions.deliver_message(user, &conv, seq, &frame, except)).sum::<usize>()
        }
        Deliver::Feed { conv, seq } => {
            node.note_head(&conv, seq);
            let mut queued = 0;
            node.feeds.for_each_subscriber(&conv, |user| {
                queued += sessions.deliver_message(user, &conv, seq, &frame, except);
            });
            queued
        }
        Deliver::Frame { users } => users.iter().map(|user| sessions.deliver(user, &frame, except)).sum(),
        Deliver::Ephemeral { users } => users.iter().map(|user| sessions.deliver_ephemeral(user, &frame, except)).sum(),
    };
    metrics::counter!("switchboard_deliveries_total").increment(queued as u64);
}

/// A request from another node: answered in its own task. Past
/// `cluster.max_inflight_forwards` requests at once, sends and group changes are refused
/// `overloaded` (a disconnect touches no actor and is always served).
fn on_rpc(node: &Arc<Node>, cluster: &Arc<Cluster>, message: BusMessage) {
    let Some(rpc) = decode::<Rpc>(&message) else { return };
    let permit = cluster.forwards.clone().try_acquire_owned().ok();
    let (node, cluster) = (node.clone(), cluster.clone());
    tokio::spawn(async move {
        if permit.is_none() && !matches!(rpc, Rpc::Disconnect { .. }) {
            metrics::counter!("switchboard_cluster_forwards_refused_total").increment(1);
            match rpc {
                Rpc::Send { .. } => reply(&cluster, &message, &SendAnswer::Refused(SendError::Overloaded)).await,
                Rpc::Group { .. } => reply(&cluster, &message, &GroupAnswer::Refused(SendError::Overloaded)).await,
                Rpc::Mark { .. } | Rpc::Disconnect { .. } => {}
            }
            return;
        }
        serve_rpc(&node, &cluster, rpc, &message).await;
        drop(permit);
    });
}

async fn serve_rpc(node: &Arc<Node>, cluster: &Cluster, rpc: Rpc, message: &BusMessage) {
    match rpc {
        Rpc::Send { conv, from, dev, conn_id, cmid, body, system, admin } => {
            let (reply_tx, reply_rx) = oneshot::channel();
            let request = SendRequest { from, dev, conn_id, cmid, body, system, admin, reply: reply_tx };
            let answer = match ask_sequencer(node, cluster, &conv, ConvMsg::Send(request), reply_rx).await {
                Ok(accepted) => {
                    SendAnswer::Accepted { seq: accepted.seq, mid: accepted.mid, ts: accepted.ts, dup: accepted.dup }
                }
                Err(error) => SendAnswer::Refused(error),
            };
            reply(cluster, message, &answer).await;
        }
        Rpc::Group { conv, by, dev, change } => {
            let (reply_tx, reply_rx) = oneshot::channel();
            let request = GroupRequest { by, dev, change, reply: reply_tx };
            let answer = match ask_sequencer(node, cluster, &conv, ConvMsg::Group(request), reply_rx).await {
                Ok(info) => GroupAnswer::Changed { name: info.name.clone(), members: info.members.to_vec() },
                Err(error) => GroupAnswer::Refused(error),
            };
            reply(cluster, message, &answer).await;
        }
        Rpc::Mark { conv, user, kind, seq } => {
            if cluster.remote_owner(&conv).is_none()
                && let Err(error) = node.directory.conv(node, &conv, ConvMsg::Mark { user, kind, seq }).await
            {
                tracing::debug!(%conv, %error, "forwarded receipt mark not aggregated");
            }
        }
        Rpc::Disconnect { user } => {
            let closed = node.sessions.close_user(&user, CloseCode::Normal);
            reply(cluster, message, &Closed { closed }).await;
        }
    }
}

/// Hands a forwarded request to this node's sequencer of `conv` and waits for its answer
/// (at most `cluster.forward_timeout_ms`). A conversation this node does not own (views
/// disagree for a moment) is `unavailable`: the client retries.
async fn ask_sequencer<T>(
    node: &Arc<Node>,
    cluster: &Cluster,
    conv: &ConvId,
    message: ConvMsg,
    answer: oneshot::Receiver<Result<T, SendError>>,
) -> Result<T, SendError> {
    if cluster.remote_owner(conv).is_some() {
        return Err(SendError::Unavailable);
    }
    node.directory.conv(node, conv, message).await.map_err(|error| refusal(&error))?;
    match tokio::time::timeout(cluster.config.forward_timeout(), answer).await {
        Ok(Ok(result)) => result,
        _ => Err(SendError::Unavailable),
    }
}

fn refusal(error: &DirectoryError) -> SendError {
    match error {
        DirectoryError::Overloaded(_) => SendError::Overloaded,
        _ => SendError::Unavailable,
    }
}

fn on_event(node: &Node, cluster: &Cluster, message: &BusMessage) {
    let Some(event) = decode::<ClusterEvent>(message) else { return };
    match event {
        ClusterEvent::Group { conv, name, members } => node.groups.put(conv, Arc::new(GroupInfo::new(name, members))),
        ClusterEvent::Resync { nodes } => {
            if nodes.contains(&cluster.me) {
                tracing::info!("a node that could not reach this one meanwhile is back on the bus: devices resync");
                cluster.request_resync();
            }
        }
        ClusterEvent::Revoked { user, before } => {
            node.note_revocation(&user, before);
            let closed = node.sessions.close_revoked(&user, before);
            if closed > 0 {
                tracing::info!(user.id = %user, closed, "revoked tokens closed (revoked on another node)");
            }
        }
    }
}

fn on_connection(node: &Arc<Node>, cluster: &Arc<Cluster>, up: bool) {
    let was = cluster.connected.swap(up, std::sync::atomic::Ordering::Relaxed);
    if was == up {
        return;
    }
    metrics::gauge!("switchboard_cluster_bus_connected").set(if up { 1.0 } else { 0.0 });
    if !up {
        tracing::warn!("cluster bus disconnected: local delivery continues, forwards fail until it is back");
        return;
    }
    tracing::info!("cluster bus reconnected: refreshing rosters and caches, devices resync");
    cluster.membership.lock().unwrap_or_else(PoisonError::into_inner).bus_reconnected(Instant::now());
    for peer in cluster.live_nodes().iter().filter(|peer| **peer != cluster.me) {
        fetch_roster(node, cluster, peer);
    }
    // Events may have been missed: what they keep current is read again.
    node.groups.clear();
    node.forget_revocations();
    cluster.request_resync();
}
