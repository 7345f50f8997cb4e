//! A one-for-one supervisor with a restart policy (ractor has none of its own).
//!
//! Children fall in two groups. *Static* children (the `users` and `convs` supervisors
//! under root) are started by the supervisor and restarted by it when they fail.
//! *Dynamic* children (user and conversation actors) are started on demand by the
//! [`Directory`](super::Directory) and restarted lazily by the next message for them; the
//! supervisor only counts their failures.
//!
//! Every failure is counted in a sliding window. Past `max_restarts` failures within
//! `window`, the supervisor escalates: it stops its children and fails itself, so its own
//! supervisor sees the failure (and restarts it as a static child), or, at the root,
//! cancels the escalation token, which stops the node: a process that keeps crashing is
//! better restarted by its orchestrator than left limping.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio_util::sync::CancellationToken;

/// At most `max_restarts` child failures within `window`, then escalate.
#[derive(Debug, Clone)]
pub struct RestartPolicy {
    pub max_restarts: u32,
    pub window: Duration,
}

/// What a supervisor is started with.
#[derive(Debug, Clone)]
pub struct SupervisorArgs {
    /// Registered name, also the `supervisor` label of its metrics.
    pub name: String,
    pub policy: RestartPolicy,
    /// Static children: supervisors started (and restarted) by this one.
    pub children: Vec<SupervisorArgs>,
    /// Set on the root only: cancelled when the root escalates.
    pub escalation: Option<CancellationToken>,
}

/// The supervisor actor. It takes no messages of its own.
#[derive(Debug)]
pub struct Supervisor;

#[derive(Debug)]
pub struct SupervisorState {
    args: SupervisorArgs,
    failures: VecDeque<Instant>,
}

impl SupervisorState {
    /// Records a failure; true if the policy is now exceeded.
    fn record_failure(&mut self, now: Instant) -> bool {
        self.failures.push_back(now);
        while self.failures.front().is_some_and(|&at| now.duration_since(at) > self.args.policy.window) {
            self.failures.pop_front();
        }
        self.failures.len() > self.args.policy.max_restarts as usize
    }
}

async fn start_child(myself: &ActorRef<SupervisorMsg>, child: &SupervisorArgs) -> Result<(), ActorProcessingErr> {
    Actor::spawn_linked(Some(child.name.clone()), Supervisor, child.clone(), myself.get_cell()).await?;
    Ok(())
}

/// Supervisors take no messages.
#[derive(Debug)]
pub enum SupervisorMsg {}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SupervisorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        for child in &args.children {
            start_child(&myself, child).await?;
        }
        Ok(SupervisorState { args, failures: VecDeque::new() })
    }

    async fn post_stop(&self, myself: ActorRef<Self::Msg>, _state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        // One-for-one within, all-for-one on the way out: a stopping supervisor takes its
        // subtree with it (their state is rebuilt from the store when they return).
        myself.stop_children(Some("supervisor stopped".to_owned()));
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let SupervisionEvent::ActorFailed(child, error) = event else {
            // Started, or stopped normally (hibernation, shutdown): nothing to do.
            return Ok(());
        };
        let child_name = child.get_name().unwrap_or_else(|| child.get_id().to_string());
        let supervisor = state.args.name.clone();
        metrics::counter!("switchboard_actor_restarts_total", "supervisor" => supervisor.clone()).increment(1);
        tracing::warn!(supervisor = %supervisor, child = %child_name, error = %error, "actor failed");
        if state.record_failure(Instant::now()) {
            let policy = &state.args.policy;
            tracing::error!(
                supervisor = %supervisor,
                max_restarts = policy.max_restarts,
                window_secs = policy.window.as_secs(),
                "restart limit exceeded, escalating"
            );
            metrics::counter!("switchboard_actor_escalations_total", "supervisor" => supervisor.clone()).increment(1);
            if let Some(escalation) = &state.args.escalation {
                escalation.cancel();
                return Ok(());
            }
            return Err(format!("{supervisor}: restart limit exceeded").into());
        }
        if let Some(spec) = state.args.children.iter().find(|spec| spec.name == child_name) {
            let spec = spec.clone();
            // The failed child's name is freed when it stops; wait for that briefly.
            for _ in 0..100 {
                if ractor::registry::where_is(spec.name.clone()).is_none() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            start_child(&myself, &spec).await?;
            tracing::info!(supervisor = %supervisor, child = %spec.name, "restarted");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_forgets_old_failures() {
        let mut state = SupervisorState {
            args: SupervisorArgs {
                name: "t".to_owned(),
                policy: RestartPolicy { max_restarts: 2, window: Duration::from_secs(10) },
                children: Vec::new(),
                escalation: None,
            },
            failures: VecDeque::new(),
        };
        let start = Instant::now();
        assert!(!state.record_failure(start));
        assert!(!state.record_failure(start + Duration::from_secs(1)));
        assert!(state.record_failure(start + Duration::from_secs(2)));
        let later = start + Duration::from_secs(30);
        assert!(!state.record_failure(later));
    }
}
