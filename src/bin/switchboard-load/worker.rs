//! A worker process: opens its slice of the connections at its share of the rate, then
//! follows the coordinator's `go` / `stop` and reports on stdout (see [`crate::control`]).
//!
//! The worker is one thread: a current-thread tokio runtime with a `LocalSet`, one
//! small task per connection, shared counters in `RefCell`s. Its phases:
//!
//! 1. Ramp: connect at the planned rate, at most `--max-connecting` in progress. When
//!    every connection has settled (synced, failed, or past the sync timeout) it says
//!    `ready`. A storm worker first sends its clients away (they close), then runs its
//!    senders ([`crate::storm::seed`]), and says `ready` once they are done.
//! 2. Steady, on `go`: hold (idle), send (chat), receive what the coordinator's
//!    fanout sender sends, or (storm) reconnect and resume.
//! 3. Drain, on `stop` (chat only): senders stop; wait for outstanding acks and
//!    deliveries, at most `--drain`. (A fanout's coordinator drains before `stop`.)
//! 4. Stop: every session sends its last receipts and closes (bounded), then the
//!    worker writes its `result` and exits.
//!
//! It never outlives the coordinator: end of stdin exits at once. Its own copy of the
//! run's deadline (slightly earlier than the coordinator's) ends any phase.

use std::io::{BufRead as _, Write as _};
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior, interval, interval_at, sleep_until};

use crate::auth::Auth;
use crate::cli::{FanoutKind, ScenarioCommand};
use crate::connect::Target;
use crate::control::{Command, WorkerEvent};
use crate::frames;
use crate::plan::WorkerPlan;
use crate::procfs::Proc;
use crate::session;
use crate::shared::{ChatSettings, Clock, FanoutSettings, Meters, Phase, SessionEnv, stopped};
use crate::source_addr::SourceCursor;
use crate::stats::{SteadyWindow, WorkerReport};
use crate::storm::StormSettings;
use crate::storm::outcome::StormWorkerFigures;

/// The worker stops this long before the run's deadline, so its result reaches the
/// coordinator before the coordinator gives up on it.
const DEADLINE_MARGIN: Duration = Duration::from_millis(1500);

/// Longest wait for sessions to close at the end.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// How long an idle connection batches receipts for what it is sent anyway.
const IDLE_RECEIPT_INTERVAL: Duration = Duration::from_millis(50);

/// Storm senders one worker runs at once.
const STORM_SENDERS_AT_ONCE: usize = 32;

/// Exit code when the coordinator went away (stdin closed).
const EXIT_ORPHANED: u8 = 3;

/// Runs worker `index` of the run described by `scenario`.
pub(crate) fn run(scenario: &ScenarioCommand, index: u64) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot build the worker runtime")?;
    let local = tokio::task::LocalSet::new();
    let outcome = local.block_on(&runtime, run_local(scenario, index));
    // Sessions still around are dropped with the LocalSet; nothing blocks shutdown.
    drop(local);
    runtime.shutdown_timeout(Duration::from_millis(200));
    outcome
}

/// Where the worker is in its phases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Ramping,
    /// Storm: the clients are closing.
    Away,
    /// Storm: the senders are sending.
    Seeding,
    Ready,
    Steady,
    Draining,
}

async fn run_local(scenario: &ScenarioCommand, index: u64) -> anyhow::Result<ExitCode> {
    let rss_start_kib = Proc::Current.rss_kib().ok();
    let common = scenario.common();
    let plan = WorkerPlan::new(scenario, index);
    let deadline = worker_deadline(common.deadline_unix_ms)?;
    let run_id = common.run_id.clone().unwrap_or_else(|| "r0".to_owned());
    let mut targets = Vec::new();
    for url in common.url.split(',') {
        targets.push(Target::resolve(url.trim()).await?);
    }
    // Tokens outlive the run: its deadline plus an hour.
    let token_ttl = deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(3600);
    let Some(auth) = Auth::from_args(common, token_ttl) else { bail!("no auth configured") };
    let clock = Clock::new();
    let chat = scenario.chat().map(|chat| ChatSettings {
        send_period: chat.send_period(),
        batch: chat.batch,
        padding: frames::body_padding(chat.traffic.body_bytes, clock.unix_micros(), None),
        max_inflight: chat.max_inflight,
        receipts: !chat.no_receipts,
    });
    let fanout = match scenario.fanout() {
        Some(fanout) => Some(FanoutSettings {
            conv: fanout.conv.clone().context("a fanout worker needs the --conv its coordinator set up")?,
            subscribe: fanout.kind == FanoutKind::Feed,
        }),
        None => None,
    };
    let storm = scenario.storm().map(|storm| StormSettings {
        owed_per_conv: storm.owed_per_conv(),
        // This worker's share of the reconnect rate.
        reconnect_period: storm.reconnect_rate.map(|rate| Duration::from_secs_f64(1.0 / (rate * plan.share))),
        first_index: plan.connections.start,
        retry_base: storm.retry_base,
        retry_max: storm.retry_max,
        timeout: storm.storm_timeout,
        receipts_during: storm.storm_receipts,
        padding: frames::body_padding(storm.traffic.body_bytes, clock.unix_micros(), None),
        last_resumed_us: std::cell::Cell::new(0),
    });
    // Chat workers drain themselves; a fanout is drained by its coordinator, which knows
    // what was sent.
    let drain_limit = scenario.chat().map_or(Duration::ZERO, |chat| chat.drain);

    let meters = Rc::new(Meters::new()?);
    let (phase_tx, phase_rx) = watch::channel(Phase::Ramp);
    let env = Rc::new(SessionEnv {
        scenario: scenario.kind(),
        targets,
        auth,
        user_prefix: common.user_prefix.clone(),
        device: common.device.clone(),
        run_id,
        connect_timeout: common.connect_timeout,
        sync_timeout: common.sync_timeout,
        chat,
        fanout,
        storm,
        churn_period: scenario.churn().map(crate::cli::ChurnArgs::period),
        receipt_interval: scenario.traffic().map_or(IDLE_RECEIPT_INTERVAL, |traffic| traffic.receipt_interval),
        clock,
        meters: Rc::clone(&meters),
        phase_rx,
    });
    tracing::debug!(
        worker = index,
        connections = plan.len(),
        first = plan.connections.start,
        rate = plan.rate,
        "worker starting"
    );

    let mut commands_rx = spawn_stdin_reader();
    let ramp_started = Instant::now();
    let ramp_done = Rc::new(std::cell::Cell::new(false));
    tokio::task::spawn_local(ramp(
        Rc::clone(&env),
        plan.clone(),
        common.source_ips.cursor(index),
        common.max_connecting,
        Rc::clone(&ramp_done),
    ));

    let mut progress_tick = interval_at(Instant::now() + Duration::from_secs(1), Duration::from_secs(1));
    progress_tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut check_tick = interval(Duration::from_millis(20));
    check_tick.set_missed_tick_behavior(MissedTickBehavior::Skip);

    let mut stage = Stage::Ramping;
    let mut ramp_secs = None;
    let mut deadline_hit = false;
    let mut steady_started = None;
    let mut steady_at_go = meters.counters();
    let mut steady = SteadyWindow::default();
    let mut rss_kib = None;
    let mut drain_until = None;
    let mut storm_figures = scenario.storm().map(|_| StormWorkerFigures::default());
    let mut seeding_started = ramp_started;
    let seeding_done = Rc::new(std::cell::Cell::new(false));
    let deadline_timer = sleep_until(deadline);
    tokio::pin!(deadline_timer);

    loop {
        tokio::select! {
            () = &mut deadline_timer => {
                tracing::warn!(worker = index, "deadline reached; stopping");
                deadline_hit = true;
                break;
            }
            command = commands_rx.recv() => match command {
                Some(Command::Go) if matches!(stage, Stage::Ramping | Stage::Ready) => {
                    if let Some(figures) = storm_figures.as_mut() {
                        figures.go_unix_us = env.clock.unix_micros();
                    }
                    steady_at_go = meters.counters();
                    steady_started = Some(Instant::now());
                    phase_tx.send_replace(Phase::Steady);
                    stage = Stage::Steady;
                }
                Some(Command::Go) => {}
                Some(Command::Stop) => {
                    rss_kib = Proc::Current.rss_kib().ok();
                    if let Some(started) = steady_started.take() {
                        let now = meters.counters();
                        steady = SteadyWindow {
                            secs: started.elapsed().as_secs_f64(),
                            sent: now.sent - steady_at_go.sent,
                            acked: now.acked - steady_at_go.acked,
                            delivered: now.delivered - steady_at_go.delivered,
                        };
                    }
                    if stage == Stage::Steady && !drain_limit.is_zero() {
                        phase_tx.send_replace(Phase::Drain);
                        drain_until = Some(Instant::now() + drain_limit);
                        stage = Stage::Draining;
                    } else {
                        break;
                    }
                }
                None => {
                    // The coordinator is gone: nobody will read a result.
                    tracing::debug!(worker = index, "stdin closed; exiting");
                    return Ok(ExitCode::from(EXIT_ORPHANED));
                }
            },
            _ = progress_tick.tick() => {
                let event = WorkerEvent::Progress { counters: meters.counters(), errors: meters.error_total() };
                if emit(&event).is_err() {
                    return Ok(ExitCode::from(EXIT_ORPHANED));
                }
            }
            _ = check_tick.tick() => {
                let counters = meters.counters();
                let ready = match stage {
                    Stage::Ramping if ramp_done.get() && counters.settled >= counters.attempted => {
                        ramp_secs = Some(ramp_started.elapsed().as_secs_f64());
                        if env.storm.is_some() {
                            phase_tx.send_replace(Phase::Away);
                            stage = Stage::Away;
                        }
                        env.storm.is_none()
                    }
                    // Every live session is a client waiting to come back.
                    Stage::Away if counters.went_away >= meters.live_sessions() => {
                        let senders = match scenario.storm() {
                            Some(storm) => crate::plan::storm_senders(
                                &common.user_prefix,
                                plan.connections.clone(),
                                &storm.owed_per_conv(),
                                env.targets.len() as u64,
                            ),
                            None => Vec::new(),
                        };
                        if let Some(figures) = storm_figures.as_mut() {
                            figures.senders = senders.len() as u64;
                        }
                        seeding_started = Instant::now();
                        tokio::task::spawn_local(seed_then_flag(
                            Rc::clone(&env),
                            senders,
                            format!("seed{index}"),
                            deadline,
                            Rc::clone(&seeding_done),
                        ));
                        stage = Stage::Seeding;
                        false
                    }
                    Stage::Seeding if seeding_done.get() => {
                        if let Some(figures) = storm_figures.as_mut() {
                            figures.seed_secs = seeding_started.elapsed().as_secs_f64();
                        }
                        true
                    }
                    _ => false,
                };
                if ready {
                    stage = Stage::Ready;
                    let secs = ramp_secs.unwrap_or_default();
                    let event = WorkerEvent::Ready { counters, errors: meters.error_total(), ramp_secs: secs };
                    if emit(&event).is_err() {
                        return Ok(ExitCode::from(EXIT_ORPHANED));
                    }
                } else if stage == Stage::Draining {
                    let settled = counters.acked + counters.send_errors >= counters.sent
                        && counters.delivered + counters.out_of_order >= counters.acked.saturating_sub(counters.dup_acks);
                    if settled || drain_until.is_some_and(|until| Instant::now() >= until) {
                        break;
                    }
                }
            }
        }
    }

    // Stop: every session closes; wait for them, bounded.
    phase_tx.send_replace(Phase::Stop);
    let close_deadline = (Instant::now() + CLOSE_WAIT).min(deadline + DEADLINE_MARGIN / 2);
    while meters.live_sessions() > 0 && Instant::now() < close_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if rss_kib.is_none() {
        rss_kib = Proc::Current.rss_kib().ok();
    }

    let report = WorkerReport {
        worker_index: index,
        counters: meters.counters(),
        errors: meters.errors(),
        histograms: meters.encoded_histograms()?,
        ramp_secs: ramp_secs.unwrap_or_else(|| ramp_started.elapsed().as_secs_f64()),
        steady,
        cpu_secs: Proc::Current.cpu_secs().ok(),
        rss_kib,
        rss_start_kib,
        deadline_hit,
        messages: meters.message_deliveries(),
        storm: storm_figures.map(|figures| StormWorkerFigures {
            last_resumed_unix_us: env.storm.as_ref().map_or(0, |storm| storm.last_resumed_us.get()),
            ..figures
        }),
    };
    emit(&WorkerEvent::Result(Box::new(report))).context("cannot write the result")?;
    Ok(ExitCode::SUCCESS)
}

/// Runs the storm's senders, then raises `done`.
async fn seed_then_flag(
    env: Rc<SessionEnv>,
    senders: Vec<crate::plan::StormSender>,
    device: String,
    deadline: Instant,
    done: Rc<std::cell::Cell<bool>>,
) {
    crate::storm::seed::run_all(env, senders, device, STORM_SENDERS_AT_ONCE, deadline).await;
    done.set(true);
}

/// Opens the worker's connections at its rate until all are started or the run stops.
async fn ramp(
    env: Rc<SessionEnv>,
    plan: WorkerPlan,
    mut sources: SourceCursor,
    max_connecting: usize,
    done: Rc<std::cell::Cell<bool>>,
) {
    let mut phase_rx = env.phase_rx.clone();
    let connecting = Arc::new(Semaphore::new(max_connecting));
    let started = Instant::now();
    for (k, index) in plan.connections.clone().enumerate() {
        let due = started + Duration::from_secs_f64(k as f64 / plan.rate);
        let permit = tokio::select! {
            permit = async {
                sleep_until(due).await;
                Arc::clone(&connecting).acquire_owned().await
            } => permit,
            () = stopped(&mut phase_rx) => break,
        };
        // The semaphore is never closed, so acquiring cannot fail.
        let Ok(permit) = permit else { break };
        env.meters.count(|c| c.attempted += 1);
        tokio::task::spawn_local(session::run(Rc::clone(&env), index, sources.next_ip(), permit));
    }
    done.set(true);
}

/// Reads commands from stdin on a plain thread (a blocking read on tokio's pool would
/// hold up runtime shutdown). The channel closes at end of input.
fn spawn_stdin_reader() -> mpsc::Receiver<Command> {
    let (commands_tx, commands_rx) = mpsc::channel(8);
    let spawned = std::thread::Builder::new().name("stdin-commands".to_owned()).spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if let Some(command) = Command::from_line(&line)
                && commands_tx.blocking_send(command).is_err()
            {
                break;
            }
        }
    });
    if let Err(error) = spawned {
        // Without the reader the channel is closed at once, which reads as orphaned.
        tracing::error!(%error, "cannot start the stdin reader");
    }
    commands_rx
}

/// Writes one event line to stdout.
fn emit(event: &WorkerEvent) -> anyhow::Result<()> {
    let line = event.to_line()?;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(line.as_bytes())?;
    stdout.write_all(b"\n")?;
    stdout.flush()?;
    Ok(())
}

/// The worker's deadline: the run's, less a margin; a worker started by hand (no
/// deadline given) gets one hour.
fn worker_deadline(deadline_unix_ms: Option<u64>) -> anyhow::Result<Instant> {
    let now = Instant::now();
    let Some(deadline_ms) = deadline_unix_ms else {
        return Ok(now + Duration::from_secs(3600));
    };
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).context("clock before 1970")?.as_millis();
    let remaining = Duration::from_millis(u64::try_from(u128::from(deadline_ms).saturating_sub(now_ms)).unwrap_or(0));
    Ok(now + remaining.saturating_sub(DEADLINE_MARGIN))
}
