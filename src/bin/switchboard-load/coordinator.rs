//! The coordinating process: spawns the workers, moves them through the run's phases
//! together, samples the server, prints progress, and merges the results.
//!
//! Phases, each bounded (and all of them by `--deadline`):
//! 1. Fanout only: set the group or feed up ([`crate::publisher`]); its id goes to the
//!    workers as `--conv`.
//! 2. Spawn `--processes` copies of this executable with `--worker-index i` and wait
//!    until every live worker says `ready` (its connections have settled). Sample the
//!    server's RSS.
//! 3. Send `go`; hold for `--duration` (a fanout: until its sender has sent everything
//!    and every delivery has arrived, or `--drain` after that; a storm: until every
//!    client has resumed or given up), sampling the server's CPU time at both ends, and
//!    for a storm the servers' counters (`/metrics`).
//! 4. Send `stop`; collect each worker's `result` (bounded by the drain time plus a
//!    grace period).
//! 5. Close the workers' stdin (they exit), reap them, kill any that linger.
//!
//! Workers run in their own process group, so Ctrl-C reaches only the coordinator: the
//! first one ends the current phase early and still collects results, a second one
//! gives up at once.

use std::ffi::OsString;
use std::future::Future;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, ChildStdin, Command as ProcessCommand};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, MissedTickBehavior, interval_at, sleep_until};

use crate::cli::ScenarioCommand;
use crate::connect::Target;
use crate::control::{Command, WorkerEvent};
use crate::fanout::FanoutOutcome;
use crate::procfs::Proc;
use crate::publisher::{PublishLog, Publisher};
use crate::report::{self, RunOutcome, ServerSamples};
use crate::server_metrics::{self, ServerCounters};
use crate::source_addr::ephemeral_ports;
use crate::stats::{Counters, Metric, StatsError, Totals, WorkerReport};
use crate::storm::outcome::{StormOutcome, StormPlan};

/// Time the workers get to report after `stop`, on top of the chat drain time.
const COLLECT_GRACE: Duration = Duration::from_secs(10);

/// Time the workers get to exit once their stdin is closed.
const EXIT_GRACE: Duration = Duration::from_secs(3);

/// Margin added to the computed default deadline.
const DEADLINE_SLACK: Duration = Duration::from_secs(30);

/// Time allowed for a fanout's membership changes, on top of the owner's connect and sync.
const SETUP_ALLOWANCE: Duration = Duration::from_secs(30);

/// Storm messages the seeding is assumed to manage per second at least, for the default
/// deadline (on top of [`SETUP_ALLOWANCE`]).
const SEED_RATE_FLOOR: f64 = 2000.0;

/// Flags whose values are secrets: workers get them through their environment, or not
/// at all, never on another visible command line.
const SECRET_FLAGS: [&str; 2] = ["--secret", "--admin-token"];

/// Runs the whole load run; `args` is this process's command line (without the
/// program name), which the workers are started with.
pub(crate) fn run(scenario: &ScenarioCommand, args: Vec<OsString>) -> anyhow::Result<ExitCode> {
    let worker_args = without_secrets(args);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot build the coordinator runtime")?;
    runtime.block_on(coordinate(scenario, worker_args))
}

/// One spawned worker as the coordinator sees it.
#[derive(Debug)]
struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
    latest: Counters,
    errors: u64,
    ready: bool,
    output_closed: bool,
    result: Option<WorkerReport>,
}

impl Worker {
    /// Still expected to say something.
    fn alive(&self) -> bool {
        !self.output_closed && self.result.is_none()
    }
}

/// Where the coordinator is in the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Ramp,
    Steady,
    Collect,
}

impl Stage {
    fn label(self) -> &'static str {
        match self {
            Stage::Ramp => "ramp",
            Stage::Steady => "steady",
            Stage::Collect => "drain",
        }
    }
}

/// The command line without the [`SECRET_FLAGS`] and their values.
fn without_secrets(args: Vec<OsString>) -> Vec<OsString> {
    let mut kept = Vec::with_capacity(args.len());
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        if SECRET_FLAGS.iter().any(|flag| arg == *flag) {
            args.next();
            continue;
        }
        if arg.to_str().is_some_and(|a| SECRET_FLAGS.iter().any(|flag| a.starts_with(&format!("{flag}=")))) {
            continue;
        }
        kept.push(arg);
    }
    kept
}

/// Polls the fanout's sender, if there is one still running; pending otherwise.
async fn sender_done<F: Future + Unpin>(sender: &mut Option<F>) -> F::Output {
    match sender {
        Some(sender) => sender.await,
        None => std::future::pending().await,
    }
}

async fn coordinate(scenario: &ScenarioCommand, worker_args: Vec<OsString>) -> anyhow::Result<ExitCode> {
    let common = scenario.common();
    let processes = common.process_count();
    let started = Instant::now();
    let deadline_after = common.deadline.unwrap_or_else(|| default_deadline(scenario));
    let deadline = started + deadline_after;
    let now_ms = unix_ms();
    let deadline_unix_ms = now_ms + u64::try_from(deadline_after.as_millis()).unwrap_or(u64::MAX / 2);
    let run_id = format!("r{now_ms:x}{:x}", std::process::id());
    warn_about_port_capacity(scenario);

    let server = common.server_pid.map(Proc::Pid);
    if let Some(proc) = server {
        proc.rss_kib().with_context(|| format!("cannot read /proc of --server-pid {proc:?}"))?;
    }
    let mut samples = ServerSamples { pid: common.server_pid, ..ServerSamples::default() };
    samples.rss_before_kib = server.and_then(|p| p.rss_kib().ok());

    let mut worker_args = worker_args;
    let publisher = match scenario.fanout() {
        Some(fanout) => {
            let token_ttl = deadline_after + Duration::from_secs(3600);
            let prepared = tokio::time::timeout_at(deadline, Publisher::prepare(fanout, &run_id, token_ttl))
                .await
                .context("the deadline passed while setting the fanout up")?
                .context("cannot set the fanout up")?;
            worker_args.extend([OsString::from("--conv"), OsString::from(prepared.conv())]);
            Some(prepared)
        }
        None => None,
    };
    let publish_log = publisher.as_ref().map(Publisher::log);
    let (go_tx, go_rx) = oneshot::channel();
    let mut go_tx = Some(go_tx);
    let mut sender = publisher.map(|publisher| Box::pin(publisher.run(go_rx)));
    let mut sender_finished = false;
    // A storm reads the servers' counters when it starts and when it ends.
    let mut server_addrs = Vec::new();
    if scenario.storm().is_some() {
        for url in common.url.split(',') {
            server_addrs.push(Target::resolve(url.trim()).await?.addr);
        }
    }
    let mut counters_at_go: Option<ServerCounters> = None;
    let mut counters_at_end: Option<ServerCounters> = None;

    tracing::info!(
        scenario = scenario.kind().as_str(),
        connections = common.connections,
        processes,
        run_id = %run_id,
        deadline_secs = deadline_after.as_secs_f64(),
        "starting workers"
    );
    let (events_tx, mut events_rx) = mpsc::channel::<(usize, Option<WorkerEvent>)>(256);
    let mut workers = Vec::new();
    for index in 0..processes {
        let worker =
            spawn_worker(index, &worker_args, common.secret.as_deref(), &run_id, deadline_unix_ms, events_tx.clone())
                .with_context(|| format!("cannot start worker {index}"))?;
        workers.push(worker);
    }
    drop(events_tx);

    let mut stage = Stage::Ramp;
    let mut stage_timer = Box::pin(sleep_until(deadline));
    let deadline_timer = sleep_until(deadline);
    tokio::pin!(deadline_timer);
    let mut ctrl_c = Box::pin(tokio::signal::ctrl_c());
    let mut progress_tick = interval_at(Instant::now() + Duration::from_secs(1), Duration::from_secs(1));
    progress_tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut previous = (Instant::now(), Counters::default());
    let mut outcome = RunOutcome::default();

    loop {
        tokio::select! {
            () = &mut deadline_timer => {
                tracing::warn!("deadline reached; stopping everything");
                outcome.deadline_hit = true;
                break;
            }
            interrupted = &mut ctrl_c => {
                if interrupted.is_err() || outcome.interrupted {
                    tracing::warn!("interrupted twice; giving up on results");
                    break;
                }
                tracing::warn!("interrupted; stopping and collecting results (Ctrl-C again to give up)");
                outcome.interrupted = true;
                ctrl_c = Box::pin(tokio::signal::ctrl_c());
                if stage != Stage::Collect {
                    if stage == Stage::Steady {
                        samples.sample_end(server);
                    }
                    // A fanout sends no more (what it sent is in its log).
                    sender = None;
                    stage = Stage::Collect;
                    stage_timer.as_mut().reset(collect_until(scenario, deadline));
                    broadcast(&mut workers, Command::Stop).await;
                }
            }
            event = events_rx.recv() => match event {
                Some((index, Some(event))) => on_event(&mut workers[index], event),
                Some((index, None)) => {
                    let worker = &mut workers[index];
                    worker.output_closed = true;
                    if worker.result.is_none() {
                        tracing::error!(worker = index, "worker ended without a result");
                    }
                }
                None => break,
            },
            ended = sender_done(&mut sender) => {
                sender = None;
                sender_finished = true;
                if let Err(kind) = ended {
                    tracing::error!(%kind, "the fanout sender stopped early");
                    outcome.sender_error = Some(kind.into_owned());
                }
                match stage {
                    // Nothing will be sent: stop.
                    Stage::Ramp => {
                        stage = Stage::Collect;
                        stage_timer.as_mut().reset(collect_until(scenario, deadline));
                        broadcast(&mut workers, Command::Stop).await;
                    }
                    // Sent: wait for the deliveries still on their way, at most --drain.
                    Stage::Steady => stage_timer.as_mut().reset((Instant::now() + scenario.drain()).min(deadline)),
                    Stage::Collect => {}
                }
            }
            () = &mut stage_timer => {
                match stage {
                    Stage::Ramp => {}
                    Stage::Steady => {
                        samples.sample_end(server);
                        if scenario.storm().is_some() {
                            counters_at_end = read_counters(&server_addrs).await;
                        }
                        stage = Stage::Collect;
                        stage_timer.as_mut().reset(collect_until(scenario, deadline));
                        broadcast(&mut workers, Command::Stop).await;
                    }
                    Stage::Collect => {
                        tracing::warn!("workers did not all report in time");
                        break;
                    }
                }
            }
            _ = progress_tick.tick() => {
                let mut now = publish_log.as_ref().map(|log| log.meters.counters()).unwrap_or_default();
                for worker in &workers {
                    now.add(&worker.latest);
                }
                outcome.timeline.push(started.elapsed().as_secs_f64(), &now);
                if !common.quiet {
                    let sender_counters = publish_log.as_ref().map(|log| log.meters.counters());
                    previous = print_progress(
                        scenario,
                        stage,
                        started,
                        &workers,
                        sender_counters,
                        previous,
                    );
                }
            }
        }

        if workers.iter().all(|w| !w.alive()) {
            break;
        }
        if stage == Stage::Ramp && workers.iter().filter(|w| w.alive()).all(|w| w.ready) {
            samples.rss_after_ramp_kib = server.and_then(|p| p.rss_kib().ok());
            samples.cpu_at_go = server.and_then(|p| p.cpu_secs().ok());
            tracing::info!(elapsed_secs = started.elapsed().as_secs_f64(), "all workers ready; steady phase");
            stage = Stage::Steady;
            // A fanout's steady phase lasts as long as its sender (then its drain), a
            // storm's until every client has resumed or given up.
            let steady_until = match scenario.storm() {
                _ if sender.is_some() => deadline,
                Some(storm) => {
                    counters_at_go = read_counters(&server_addrs).await;
                    Instant::now() + storm.storm_bound()
                }
                None => Instant::now() + common.duration,
            };
            stage_timer.as_mut().reset(steady_until.min(deadline));
            broadcast(&mut workers, Command::Go).await;
            if let Some(go_tx) = go_tx.take() {
                let _ = go_tx.send(());
            }
        }
        if stage == Stage::Steady
            && sender_finished
            && let Some(log) = &publish_log
            && every_delivery_arrived(&workers, log)
        {
            tracing::info!(elapsed_secs = started.elapsed().as_secs_f64(), "every delivery arrived");
            samples.sample_end(server);
            stage = Stage::Collect;
            stage_timer.as_mut().reset(collect_until(scenario, deadline));
            broadcast(&mut workers, Command::Stop).await;
        }
        if stage == Stage::Steady && scenario.storm().is_some() && every_client_came_back(&workers) {
            tracing::info!(elapsed_secs = started.elapsed().as_secs_f64(), "every client resumed or gave up");
            samples.sample_end(server);
            counters_at_end = read_counters(&server_addrs).await;
            stage = Stage::Collect;
            stage_timer.as_mut().reset(collect_until(scenario, deadline));
            broadcast(&mut workers, Command::Stop).await;
        }
    }

    shut_down(&mut workers).await;
    let expected = workers.len() as u64;
    let mut totals = Totals::new()?;
    for worker in &workers {
        if let Some(result) = &worker.result {
            totals
                .absorb(result)
                .with_context(|| format!("cannot merge the result of worker {}", result.worker_index))?;
        }
    }
    outcome.workers_expected = expected;
    if let Some(log) = &publish_log {
        outcome.fanout = Some(absorb_sender(&mut totals, log)?);
    }
    if let Some(storm) = scenario.storm() {
        let plan = StormPlan { owed_per_client: storm.owed, convs_per_client: storm.convs };
        let server_delta = counters_at_go.zip(counters_at_end).map(|(at_go, at_end)| at_end.since(&at_go));
        outcome.storm = Some(StormOutcome::new(plan, &totals.counters, &totals.errors, &totals.storm, server_delta));
    }
    let report = report::build(scenario, &run_id, &totals, &samples, &outcome)?;
    print!("{}", report::render_table(&report));
    if let Some(path) = &common.json {
        report::write_json(&report, path)?;
    }
    if let Some(path) = &common.plot {
        let title = format!("switchboard-load {} {}: {} connections", report.scenario, run_id, common.connections);
        crate::plot::write_svg(path, &title, &outcome.timeline, &totals.histograms)?;
    }
    Ok(if report.ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Whether the workers have seen every published message at every joined connection
/// (by their latest progress).
fn every_delivery_arrived(workers: &[Worker], log: &PublishLog) -> bool {
    let joined: u64 = workers.iter().map(|worker| worker.latest.joined).sum();
    let delivered: u64 = workers.iter().map(|worker| worker.latest.delivered).sum();
    delivered >= log.published_count() * joined
}

/// Whether every storm client has resumed or given up (by the workers' latest progress).
fn every_client_came_back(workers: &[Worker]) -> bool {
    let (mut away, mut done) = (0, 0);
    for worker in workers {
        away += worker.latest.went_away;
        done += worker.latest.resumed + worker.latest.resume_failed;
    }
    done >= away
}

/// The servers' counters now; `None` (and a warning) when one cannot be read.
async fn read_counters(addrs: &[std::net::SocketAddr]) -> Option<ServerCounters> {
    match server_metrics::scrape(addrs).await {
        Ok(counters) => Some(counters),
        Err(error) => {
            tracing::warn!(%error, "cannot read the servers' /metrics");
            None
        }
    }
}

/// Adds the fanout sender's measurements to the totals, and the time to the last
/// delivery of each message to the histograms; returns the fanout's figures.
fn absorb_sender(totals: &mut Totals, log: &PublishLog) -> Result<FanoutOutcome, StatsError> {
    totals.add_measurements(&log.meters.counters(), &log.meters.errors(), &log.meters.encoded_histograms()?)?;
    let fanout = FanoutOutcome::new(&log.published(), totals.counters.joined, &totals.messages);
    for &micros in &fanout.last_delivery_us {
        totals.histograms.record(Metric::LastDelivery, micros);
    }
    Ok(fanout)
}

fn on_event(worker: &mut Worker, event: WorkerEvent) {
    match event {
        WorkerEvent::Progress { counters, errors } => {
            worker.latest = counters;
            worker.errors = errors;
        }
        WorkerEvent::Ready { counters, errors, .. } => {
            worker.latest = counters;
            worker.errors = errors;
            worker.ready = true;
        }
        WorkerEvent::Result(report) => {
            worker.latest = report.counters.clone();
            worker.errors = report.errors.total();
            worker.result = Some(*report);
        }
    }
}

fn spawn_worker(
    index: u64,
    worker_args: &[OsString],
    secret: Option<&str>,
    run_id: &str,
    deadline_unix_ms: u64,
    events_tx: mpsc::Sender<(usize, Option<WorkerEvent>)>,
) -> anyhow::Result<Worker> {
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let mut command = ProcessCommand::new(exe);
    if let Some(secret) = secret {
        command.env("SWITCHBOARD_JWT_SECRET", secret);
    }
    let mut child = command
        .args(worker_args)
        .arg("--worker-index")
        .arg(index.to_string())
        .arg("--run-id")
        .arg(run_id)
        .arg("--deadline-unix-ms")
        .arg(deadline_unix_ms.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        // Ctrl-C in a terminal goes to the foreground group; the coordinator decides.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()?;
    let stdin = child.stdin.take();
    let stdout = child.stdout.take().context("worker stdout is not piped")?;
    let slot = usize::try_from(index)?;
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            match WorkerEvent::from_line(&line) {
                Some(event) => {
                    if events_tx.send((slot, Some(event))).await.is_err() {
                        return;
                    }
                }
                None => eprintln!("[worker {index}] {line}"),
            }
        }
        let _ = events_tx.send((slot, None)).await;
    });
    Ok(Worker {
        child,
        stdin,
        latest: Counters::default(),
        errors: 0,
        ready: false,
        output_closed: false,
        result: None,
    })
}

/// Sends `command` to every worker that still listens.
async fn broadcast(workers: &mut [Worker], command: Command) {
    for (index, worker) in workers.iter_mut().enumerate() {
        let Some(stdin) = worker.stdin.as_mut() else {
            continue;
        };
        let written = async {
            stdin.write_all(command.line()).await?;
            stdin.flush().await
        };
        match tokio::time::timeout(Duration::from_secs(1), written).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::debug!(worker = index, %error, "worker stdin closed");
                worker.stdin = None;
            }
            Err(_) => {
                tracing::warn!(worker = index, "worker does not read its stdin");
                worker.stdin = None;
            }
        }
    }
}

/// Closes every worker's stdin (they exit), waits a little, kills the rest.
async fn shut_down(workers: &mut [Worker]) {
    for worker in workers.iter_mut() {
        worker.stdin = None;
    }
    let until = Instant::now() + EXIT_GRACE;
    for (index, worker) in workers.iter_mut().enumerate() {
        match tokio::time::timeout_at(until, worker.child.wait()).await {
            Ok(Ok(status)) if status.success() => {}
            Ok(Ok(status)) => tracing::debug!(worker = index, %status, "worker exited"),
            Ok(Err(error)) => tracing::warn!(worker = index, %error, "cannot reap worker"),
            Err(_) => {
                tracing::warn!(worker = index, "worker did not exit; killing it");
                let _ = worker.child.kill().await;
            }
        }
    }
}

fn print_progress(
    scenario: &ScenarioCommand,
    stage: Stage,
    started: Instant,
    workers: &[Worker],
    sender: Option<Counters>,
    previous: (Instant, Counters),
) -> (Instant, Counters) {
    let now = Instant::now();
    let mut total = sender.unwrap_or_default();
    let mut errors = 0;
    for worker in workers {
        total.add(&worker.latest);
        errors += worker.errors;
    }
    let secs = now.duration_since(previous.0).as_secs_f64().max(1e-3);
    let rate = |current: u64, before: u64| current.saturating_sub(before) as f64 / secs;
    let traffic = match scenario.storm() {
        // Seeding, then the storm.
        Some(_) => format!(
            "away {} seeded {}/{} | resumed {} failed {} retries {}",
            total.went_away,
            total.seed_acked,
            total.seed_sent,
            total.resumed,
            total.resume_failed,
            total.resume_retries
        ),
        None => format!(
            "sent/s {:.0} acked/s {:.0} deliv/s {:.0}",
            rate(total.sent, previous.1.sent),
            rate(total.acked, previous.1.acked),
            rate(total.delivered, previous.1.delivered)
        ),
    };
    eprintln!(
        "[{:>6.1}s] {:<6} conns {}/{} open {} failed {} | {traffic} | errors {errors}",
        started.elapsed().as_secs_f64(),
        stage.label(),
        total.synced,
        scenario.common().connections,
        total.open(),
        total.failed,
    );
    (now, total)
}

/// When collecting results gives up: the chat drain plus a grace period.
fn collect_until(scenario: &ScenarioCommand, deadline: Instant) -> Instant {
    // A fanout's workers do not drain (the coordinator did before `stop`).
    let drain = scenario.chat().map_or(Duration::ZERO, |chat| chat.drain);
    (Instant::now() + drain + COLLECT_GRACE).min(deadline)
}

/// Twice the planned ramp plus the timeouts, the duration and the drain, plus slack. A
/// fanout has its setup instead of a duration, then its sends, the wait for their
/// answers, and the drain.
fn default_deadline(scenario: &ScenarioCommand) -> Duration {
    let common = scenario.common();
    let steady = match (scenario.fanout(), scenario.storm()) {
        (Some(fanout), _) => {
            common.connect_timeout + common.sync_timeout + SETUP_ALLOWANCE + fanout.send_span() + fanout.drain
        }
        // Going away, the seeding, then the storm.
        (None, Some(storm)) => {
            let messages = (common.connections * storm.owed) as f64;
            SETUP_ALLOWANCE + Duration::from_secs_f64(messages / SEED_RATE_FLOOR) + storm.storm_bound()
        }
        (None, None) => common.duration,
    };
    common.ramp_estimate() * 2
        + common.connect_timeout
        + common.sync_timeout
        + steady
        + scenario.drain()
        + COLLECT_GRACE
        + DEADLINE_SLACK
}

fn warn_about_port_capacity(scenario: &ScenarioCommand) {
    let common = scenario.common();
    let Some(ports) = ephemeral_ports() else {
        return;
    };
    let sources = common.source_ips.len().max(1) as u64;
    if common.connections > ports * sources {
        tracing::warn!(
            connections = common.connections,
            ports_per_source = ports,
            sources,
            "more connections than ephemeral ports; widen --source-ips"
        );
    }
    if !common.source_ips.is_empty() && !common.source_ips.all_loopback() {
        tracing::warn!("--source-ips has non-loopback addresses; binding may fail");
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 2))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use clap::Parser;

    #[test]
    fn workers_do_not_get_the_secret_on_their_command_line() {
        let args: Vec<OsString> = ["chat", "--secret", "s1", "-n", "4", "--secret=s2", "--admin-token", "a1", "--dev"]
            .iter()
            .map(OsString::from)
            .collect();
        let kept = without_secrets(args);
        assert_eq!(kept, ["chat", "-n", "4", "--dev"]);
        let kept = without_secrets(vec![OsString::from("--admin-token=a2"), OsString::from("--secretive")]);
        assert_eq!(kept, ["--secretive"]);
    }

    #[test]
    fn default_deadline_covers_ramp_duration_and_drain() {
        let cli = Cli::try_parse_from([
            "switchboard-load",
            "chat",
            "--dev",
            "-n",
            "2000",
            "--rate",
            "1000",
            "--duration",
            "10s",
        ])
        .expect("parses");
        // 2 s ramp x2 + 10 s connect + 10 s sync + 10 s + 5 s drain + 10 s + 30 s.
        assert_eq!(default_deadline(&cli.scenario), Duration::from_secs(79));
    }

    #[test]
    fn fanout_deadline_covers_setup_sends_and_drains() {
        let cli = Cli::try_parse_from([
            "switchboard-load",
            "fanout",
            "--dev",
            "-n",
            "1000",
            "--rate",
            "1000",
            "--messages",
            "101",
            "--msg-rate",
            "10",
        ])
        .expect("parses");
        // 1 s ramp x2 + 10 s connect + 10 s sync + (10 s + 10 s + 30 s setup + 10 s of
        // sends + 10 s drain) + 10 s drain + 10 s + 30 s.
        assert_eq!(default_deadline(&cli.scenario), Duration::from_secs(142));
    }
}
