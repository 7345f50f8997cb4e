//! The supervised actor tree and the directory that finds its actors.
//!
//! ```text
//! root (supervisor: one-for-one, N restarts in T seconds, then the node stops)
//! ├── users (supervisor)          ── user:<id> actors, one per active user
//! └── convs (supervisor)          ── conv:<id> actors, one per active conversation
//! ```
//!
//! User and conversation actors are started on first use and hibernate (stop) when idle;
//! the [`Directory`] is the only way to reach one: it looks the actor up by name in
//! ractor's registry and starts it if absent, so a restarted actor (which has a new
//! `ActorRef`) is found the same way. Names are unique per node, which also makes each
//! conversation's sequencer unique: a second actor for the same conversation cannot be
//! spawned while the first is alive.
//!
//! A crashed child is restarted lazily, by the next message for it; the supervisor counts
//! failures and escalates when a child crashes too often (the subtree is stopped and
//! restarted by root; root escalating stops the node so the orchestrator restarts it).
//! Nothing acknowledged lives only in an actor: acks follow durable writes, and every
//! actor rebuilds its state from the store.
//!
//! ractor mailboxes are unbounded, so bounds are ours. The directory counts the messages
//! it has handed to each actor and not yet handled ([`Mailbox`]): past
//! `actors.user_mailbox_max` / `actors.conv_mailbox_max` it refuses droppable work (sends,
//! membership changes, receipts) with [`DirectoryError::Overloaded`], which clients see
//! as `overloaded`; attach and detach are never refused. A conversation also refuses
//! sends past `actors.conv_max_pending`, and a connection has at most
//! `gateway.max_inflight_requests` requests in flight.

pub mod conversation;
pub mod supervisor;
#[cfg(test)]
mod tests;
pub mod user;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ractor::{Actor, ActorCell, ActorRef, MessagingErr, SpawnErr};
use switchboard_proto::ids::{ConvId, UserId};

use crate::node::Node;

use self::conversation::{ConvActor, ConvMsg};
use self::supervisor::{RestartPolicy, Supervisor, SupervisorArgs};
use self::user::{UserActor, UserMsg};

/// How long a message may take to reach an actor (spawning it, waiting out one that is
/// hibernating) before the caller gives up with `unavailable`.
const DELIVERY_DEADLINE: Duration = Duration::from_secs(2);

/// Why a message could not be handed to an actor.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum DirectoryError {
    /// The actor could not be started (its state could not be loaded: store down).
    #[error("actor could not start: {0}")]
    Start(String),
    /// The actor could not be reached in time (supervisor restarting, node stopping).
    #[error("actor unreachable: {0}")]
    Unreachable(String),
    /// The actor has too much work queued; the request is refused, not buffered.
    #[error("actor overloaded: {0} messages queued")]
    Overloaded(usize),
}

/// The number of messages handed to one actor and not yet handled: ractor's mailboxes
/// are unbounded, this is how the directory bounds them. Shared by the directory and
/// every incarnation of the actor (a crash loses its queued messages: the next
/// incarnation starts the count over).
#[derive(Debug, Default, Clone)]
pub struct Mailbox(Arc<std::sync::atomic::AtomicUsize>);

impl Mailbox {
    /// The actor handled one message the directory counted.
    pub fn handled(&self) {
        let _ = self.0.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |depth| Some(depth.saturating_sub(1)));
    }

    /// A new incarnation starts: nothing of the old one's queue is left.
    pub fn reset(&self) {
        self.0.store(0, Ordering::Relaxed);
    }

    fn depth(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// Whether a message may be refused when its actor's mailbox is full.
pub trait Droppable {
    fn droppable(&self) -> bool;
}

impl Droppable for ConvMsg {
    fn droppable(&self) -> bool {
        matches!(self, ConvMsg::Send(_) | ConvMsg::Group(_) | ConvMsg::Mark { .. })
    }
}

impl Droppable for UserMsg {
    fn droppable(&self) -> bool {
        matches!(self, UserMsg::Receipt { .. })
    }
}

/// Finds (and starts) user and conversation actors by name.
#[derive(Debug)]
pub struct Directory {
    prefix: String,
    root: ActorRef<supervisor::SupervisorMsg>,
    /// Message counts of live actors, by name (removed when an actor stops).
    mailboxes: dashmap::DashMap<String, Mailbox>,
    user_mailbox_max: usize,
    conv_mailbox_max: usize,
}

static INSTANCE: AtomicU64 = AtomicU64::new(0);

/// Mailbox bounds of the actors (see [`Mailbox`]).
#[derive(Debug, Clone, Copy)]
pub struct MailboxLimits {
    pub user: usize,
    pub conv: usize,
}

/// The hibernation clock of a user or conversation actor: sends `tick()` to the actor
/// twice per idle period, so an idle actor stops within 1.5 idle periods. Dropping the
/// returned [`Ticker`] (the actor's state, when it stops) stops the clock.
pub(crate) fn hibernation_ticker<M: ractor::Message>(myself: &ActorRef<M>, idle: Duration, tick: fn() -> M) -> Ticker {
    Ticker(myself.send_interval(idle.max(Duration::from_millis(100)) / 2, tick))
}

/// Which kind of actor a [`LiveActor`] counts.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ActorKind {
    User,
    Conv,
}

/// Counts one live actor (the `switchboard_{user,conv}_actors` gauge and the node's
/// counter) from its start until its state is dropped, which happens on a crash too.
#[derive(Debug)]
pub(crate) struct LiveActor {
    node: Arc<Node>,
    kind: ActorKind,
}

impl LiveActor {
    pub(crate) fn new(node: Arc<Node>, kind: ActorKind) -> Self {
        Self::counter(&node, kind).fetch_add(1, Ordering::Relaxed);
        metrics::gauge!(Self::gauge(kind)).increment(1.0);
        Self { node, kind }
    }

    fn counter(node: &Node, kind: ActorKind) -> &std::sync::atomic::AtomicUsize {
        match kind {
            ActorKind::User => &node.live_user_actors,
            ActorKind::Conv => &node.live_conv_actors,
        }
    }

    fn gauge(kind: ActorKind) -> &'static str {
        match kind {
            ActorKind::User => "switchboard_user_actors",
            ActorKind::Conv => "switchboard_conv_actors",
        }
    }
}

impl Drop for LiveActor {
    fn drop(&mut self) {
        Self::counter(&self.node, self.kind).fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!(Self::gauge(self.kind)).decrement(1.0);
    }
}

/// A running hibernation clock; aborted on drop.
#[derive(Debug)]
pub(crate) struct Ticker(tokio::task::JoinHandle<()>);

impl Drop for Ticker {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Directory {
    /// Starts the supervision tree. `escalation` is cancelled if root itself gives up.
    pub async fn start(
        policy: RestartPolicy,
        escalation: tokio_util::sync::CancellationToken,
        mailbox_max: MailboxLimits,
    ) -> Result<Self, SpawnErr> {
        // Names live in a process-wide registry: a per-node prefix keeps nodes apart.
        let prefix = format!("sb{}", INSTANCE.fetch_add(1, Ordering::Relaxed));
        let children = ["users", "convs"].map(|child| SupervisorArgs {
            name: format!("{prefix}/{child}"),
            policy: policy.clone(),
            children: Vec::new(),
            escalation: None,
        });
        let (root, _) = Actor::spawn(
            Some(format!("{prefix}/root")),
            Supervisor,
            SupervisorArgs {
                name: format!("{prefix}/root"),
                policy,
                children: children.into(),
                escalation: Some(escalation),
            },
        )
        .await?;
        Ok(Self {
            prefix,
            root,
            mailboxes: dashmap::DashMap::new(),
            user_mailbox_max: mailbox_max.user,
            conv_mailbox_max: mailbox_max.conv,
        })
    }

    fn mailbox(&self, name: &str) -> Mailbox {
        if let Some(mailbox) = self.mailboxes.get(name) {
            return mailbox.clone();
        }
        self.mailboxes.entry(name.to_owned()).or_default().clone()
    }

    /// An actor stopped: forget its count unless work for a successor is already queued.
    pub fn forget_mailbox(&self, name: &str) {
        self.mailboxes.remove_if(name, |_, mailbox| mailbox.depth() == 0);
    }

    /// The registry name of a conversation's actor.
    pub fn conv_name(&self, conv: &ConvId) -> String {
        format!("{}/conv/{conv}", self.prefix)
    }

    /// The registry name of a user's actor.
    pub fn user_name(&self, user: &UserId) -> String {
        format!("{}/user/{user}", self.prefix)
    }

    /// Stops the whole tree (shutdown), waiting up to `timeout`.
    pub async fn stop(&self, timeout: Duration) {
        for child in ["users", "convs"] {
            if let Some(supervisor) = ractor::registry::where_is(format!("{}/{child}", self.prefix)) {
                supervisor.stop_children_and_wait(None, Some(timeout)).await;
            }
        }
        let _ = self.root.stop_and_wait(None, Some(timeout)).await;
    }

    fn supervisor(&self, child: &str) -> Option<ActorCell> {
        ractor::registry::where_is(format!("{}/{child}", self.prefix))
    }

    /// Hands `message` to the conversation's sequencer, starting it if needed.
    pub async fn conv(&self, node: &Arc<Node>, conv: &ConvId, message: ConvMsg) -> Result<(), DirectoryError> {
        let name = self.conv_name(conv);
        let mailbox = self.mailbox(&name);
        self.deliver(&name, "convs", message, &mailbox, self.conv_mailbox_max, |supervisor| {
            let arguments = (node.clone(), conv.clone(), mailbox.clone());
            Actor::spawn_linked(Some(name.clone()), ConvActor, arguments, supervisor)
        })
        .await
    }

    /// Hands `message` to the user's actor, starting it if needed.
    pub async fn user(&self, node: &Arc<Node>, user: &UserId, message: UserMsg) -> Result<(), DirectoryError> {
        let name = self.user_name(user);
        let mailbox = self.mailbox(&name);
        self.deliver(&name, "users", message, &mailbox, self.user_mailbox_max, |supervisor| {
            let arguments = (node.clone(), user.clone(), mailbox.clone());
            Actor::spawn_linked(Some(name.clone()), UserActor, arguments, supervisor)
        })
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn deliver<M, F, Fut>(
        &self,
        name: &str,
        supervisor: &str,
        mut message: M,
        mailbox: &Mailbox,
        mailbox_max: usize,
        spawn: F,
    ) -> Result<(), DirectoryError>
    where
        M: ractor::Message + Droppable,
        F: Fn(ActorCell) -> Fut,
        Fut: Future<Output = Result<(ActorRef<M>, tokio::task::JoinHandle<()>), SpawnErr>>,
    {
        let depth = mailbox.depth();
        if depth >= mailbox_max && message.droppable() {
            metrics::counter!("switchboard_mailbox_refused_total", "actors" => supervisor.to_owned()).increment(1);
            return Err(DirectoryError::Overloaded(depth));
        }
        let deadline = tokio::time::Instant::now() + DELIVERY_DEADLINE;
        loop {
            let actor = match ractor::registry::where_is(name) {
                Some(cell) => ActorRef::<M>::from(cell),
                None => {
                    let Some(supervisor) = self.supervisor(supervisor) else {
                        // The supervisor is being restarted by root.
                        if tokio::time::Instant::now() >= deadline {
                            return Err(DirectoryError::Unreachable(format!("supervisor {supervisor} is down")));
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    };
                    match spawn(supervisor).await {
                        Ok((actor, _)) => actor,
                        // Someone else started it first, or the previous incarnation is
                        // still stopping: look it up again.
                        Err(SpawnErr::ActorAlreadyRegistered(_)) => {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                            continue;
                        }
                        Err(error) => return Err(DirectoryError::Start(error.to_string())),
                    }
                }
            };
            mailbox.0.fetch_add(1, Ordering::Relaxed);
            match actor.cast(message) {
                Ok(()) => return Ok(()),
                // The actor is hibernating or stopping: it takes no new messages. Wait for
                // its name to be free and start a new one.
                Err(MessagingErr::SendErr(returned)) => {
                    mailbox.handled();
                    message = returned;
                }
                Err(error) => {
                    mailbox.handled();
                    return Err(DirectoryError::Unreachable(error.to_string()));
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(DirectoryError::Unreachable(format!("{name} did not take the message in time")));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}
