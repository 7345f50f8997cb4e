//! The coordinating process: spawns the workers, moves them through the run's phases
//! together, samples the server, prints progress, and merges the results.
//!
//! Phases, each bounded (and all of them by `--deadline`):
//! 1. Spawn `--processes` copies of this executable with `--worker-index i` and wait
//!    until every live worker says `ready` (its connections have settled). Sample the
//!    server's RSS.
//! 2. Send `go`; hold for `--duration`, sampling the server's CPU time at both ends.
//! 3. Send `stop`; collect each worker's `result` (bounded by the drain time plus a
//!    grace period).
//! 4. Close the workers' stdin (they exit), reap them, kill any that linger.
//!
//! Workers run in their own process group, so Ctrl-C reaches only the coordinator: the
//! first one ends the current phase early and still collects results, a second one
//! gives up at once.

use std::ffi::OsString;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, ChildStdin, Command as ProcessCommand};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior, interval_at, sleep_until};

use crate::cli::ScenarioCommand;
use crate::control::{Command, WorkerEvent};
use crate::procfs::Proc;
use crate::report::{self, RunOutcome, ServerSamples};
use crate::source_addr::ephemeral_ports;
use crate::stats::{Counters, Totals, WorkerReport};

/// Time the workers get to report after `stop`, on top of the chat drain time.
const COLLECT_GRACE: Duration = Duration::from_secs(10);

/// Time the workers get to exit once their stdin is closed.
const EXIT_GRACE: Duration = Duration::from_secs(3);

/// Margin added to the computed default deadline.
const DEADLINE_SLACK: Duration = Duration::from_secs(30);

/// Runs the whole load run; `args` is this process's command line (without the
/// program name), which the workers are started with.
pub(crate) fn run(scenario: &ScenarioCommand, args: Vec<OsString>) -> anyhow::Result<ExitCode> {
    let worker_args = without_secret(args);
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

/// The command line without `--secret` and its value: workers get the secret through
/// their environment, not through another visible command line.
fn without_secret(args: Vec<OsString>) -> Vec<OsString> {
    let mut kept = Vec::with_capacity(args.len());
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        if arg == "--secret" {
            args.next();
            continue;
        }
        if arg.to_str().is_some_and(|a| a.starts_with("--secret=")) {
            continue;
        }
        kept.push(arg);
    }
    kept
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
            () = &mut stage_timer => {
                match stage {
                    Stage::Ramp => {}
                    Stage::Steady => {
                        samples.sample_end(server);
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
                if !common.quiet {
                    previous = print_progress(stage, started, common.connections, &workers, previous);
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
            stage_timer.as_mut().reset((Instant::now() + common.duration).min(deadline));
            broadcast(&mut workers, Command::Go).await;
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
    let report = report::build(scenario, &run_id, &totals, &samples, &outcome)?;
    print!("{}", report::render_table(&report));
    if let Some(path) = &common.json {
        report::write_json(&report, path)?;
    }
    Ok(if report.ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
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
    stage: Stage,
    started: Instant,
    target_connections: u64,
    workers: &[Worker],
    previous: (Instant, Counters),
) -> (Instant, Counters) {
    let now = Instant::now();
    let mut total = Counters::default();
    let mut errors = 0;
    for worker in workers {
        total.add(&worker.latest);
        errors += worker.errors;
    }
    let secs = now.duration_since(previous.0).as_secs_f64().max(1e-3);
    let rate = |current: u64, before: u64| current.saturating_sub(before) as f64 / secs;
    eprintln!(
        "[{:>6.1}s] {:<6} conns {}/{} open {} failed {} | sent/s {:.0} acked/s {:.0} deliv/s {:.0} | errors {}",
        started.elapsed().as_secs_f64(),
        stage.label(),
        total.synced,
        target_connections,
        total.open(),
        total.failed,
        rate(total.sent, previous.1.sent),
        rate(total.acked, previous.1.acked),
        rate(total.delivered, previous.1.delivered),
        errors,
    );
    (now, total)
}

/// When collecting results gives up: the chat drain plus a grace period.
fn collect_until(scenario: &ScenarioCommand, deadline: Instant) -> Instant {
    let drain = scenario.chat().map_or(Duration::ZERO, |chat| chat.drain);
    (Instant::now() + drain + COLLECT_GRACE).min(deadline)
}

/// Twice the planned ramp plus the timeouts, the duration and the drain, plus slack.
fn default_deadline(scenario: &ScenarioCommand) -> Duration {
    let common = scenario.common();
    let drain = scenario.chat().map_or(Duration::ZERO, |chat| chat.drain);
    common.ramp_estimate() * 2
        + common.connect_timeout
        + common.sync_timeout
        + common.duration
        + drain
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
        let args: Vec<OsString> =
            ["chat", "--secret", "s1", "-n", "4", "--secret=s2", "--dev"].iter().map(OsString::from).collect();
        let kept = without_secret(args);
        assert_eq!(kept, ["chat", "-n", "4", "--dev"]);
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
}
