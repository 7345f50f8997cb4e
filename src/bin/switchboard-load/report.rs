//! The final result of a run: one serde tree written by `--json`, and a table for
//! people. Also decides whether the run failed (the exit code).
//!
//! A run fails when no connection succeeded, a worker did not report, the hard
//! deadline cut it short, it was interrupted, or (chat, fanout) nothing was delivered or
//! a conversation showed a gap or an out-of-order seq, or (fanout) nothing was published,
//! the sender stopped early or a delivery is missing, or (storm) a client did not
//! resume, a replay missed an owed message or the seeding did not land. Lesser trouble
//! (failed connections, sync timeouts, a generator that fell behind, duplicates in
//! replays) is listed as warnings.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;
use serde::Serialize;

use crate::cli::{FanoutArgs, FanoutKind, ScenarioCommand, ScenarioKind};
use crate::fanout::FanoutOutcome;
use crate::plot::Timeline;
use crate::procfs::Proc;
use crate::stats::{Counters, ErrorCounts, LatencySummary, Metric, StatsError, Totals};
use crate::storm::outcome::StormOutcome;

/// What the coordinator read from the server's procfs.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct ServerSamples {
    pub(crate) pid: Option<u32>,
    /// Before the first connection.
    pub(crate) rss_before_kib: Option<u64>,
    /// When every worker was ready.
    pub(crate) rss_after_ramp_kib: Option<u64>,
    /// At the end of the steady phase, connections still open.
    pub(crate) rss_end_kib: Option<u64>,
    /// CPU seconds at the start of the steady phase.
    pub(crate) cpu_at_go: Option<f64>,
    /// CPU seconds at the end of the steady phase.
    pub(crate) cpu_at_stop: Option<f64>,
}

impl ServerSamples {
    /// Samples the end of the steady phase.
    pub(crate) fn sample_end(&mut self, server: Option<Proc>) {
        let Some(server) = server else {
            return;
        };
        self.cpu_at_stop = server.cpu_secs().ok();
        self.rss_end_kib = server.rss_kib().ok();
    }
}

/// How the run went, as seen by the coordinator.
#[derive(Debug, Clone, Default)]
pub(crate) struct RunOutcome {
    pub(crate) workers_expected: u64,
    pub(crate) deadline_hit: bool,
    pub(crate) interrupted: bool,
    /// Fanout: the figures of its messages.
    pub(crate) fanout: Option<FanoutOutcome>,
    /// Fanout: why its sender stopped before sending everything.
    pub(crate) sender_error: Option<String>,
    /// Storm: its figures.
    pub(crate) storm: Option<StormOutcome>,
    /// The counters, once a second.
    pub(crate) timeline: Timeline,
}

/// The machine-readable result (`--json`).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RunReport {
    pub(crate) scenario: &'static str,
    pub(crate) run_id: String,
    pub(crate) ok: bool,
    pub(crate) failures: Vec<String>,
    pub(crate) warnings: Vec<String>,
    pub(crate) config: ReportConfig,
    pub(crate) workers: WorkersReport,
    pub(crate) connections: ConnectionsReport,
    pub(crate) ramp: RampReport,
    pub(crate) steady: SteadyReport,
    /// Fanout: messages, deliveries, missing ones, deliveries/s.
    pub(crate) fanout: Option<FanoutOutcome>,
    /// Storm: resumes, failures and retries, the replays' checks, store reads per resume.
    pub(crate) storm: Option<StormOutcome>,
    /// Churn: disconnects and reconnects, per second of the steady phase.
    pub(crate) churn: Option<ChurnReport>,
    pub(crate) order: OrderReport,
    pub(crate) errors: ErrorCounts,
    /// Latency percentiles in microseconds, by metric.
    pub(crate) latency_us: BTreeMap<&'static str, LatencySummary>,
    pub(crate) server: Option<ServerReport>,
    pub(crate) load_generator: LoadReport,
    /// Every raw counter, summed over workers.
    pub(crate) counters: Counters,
    /// Merged histograms, hdrhistogram V2 format, hex-encoded, by metric.
    pub(crate) histograms_v2_hex: BTreeMap<String, String>,
    /// The summed counters once a second (what `--plot` draws).
    pub(crate) timeline: Timeline,
    pub(crate) deadline_hit: bool,
    pub(crate) interrupted: bool,
}

/// The settings that shape the numbers.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ReportConfig {
    pub(crate) url: String,
    pub(crate) connections: u64,
    pub(crate) processes: u64,
    pub(crate) connect_rate: f64,
    pub(crate) duration_secs: f64,
    pub(crate) auth: &'static str,
    pub(crate) source_ips: usize,
    /// Chat: pairs, messages per second per pair, and body size (fanout too).
    pub(crate) pairs: Option<u64>,
    pub(crate) msg_rate_per_pair: Option<f64>,
    pub(crate) body_bytes: Option<usize>,
    /// Fanout: group or feed, group members besides the owner, messages, and the time
    /// between two sends.
    pub(crate) fanout_kind: Option<&'static str>,
    pub(crate) members: Option<u64>,
    pub(crate) messages: Option<u64>,
    pub(crate) send_period_ms: Option<f64>,
    /// Storm: messages owed per client, conversations per client, reconnects per second
    /// (`None`: all at once).
    pub(crate) owed: Option<u64>,
    pub(crate) convs: Option<u64>,
    pub(crate) reconnect_rate: Option<f64>,
}

/// What the churn scenario's cycles came to.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ChurnReport {
    /// How long each connection stayed up between two cycles.
    pub(crate) period_secs: f64,
    /// Connections closed for their cycle.
    pub(crate) disconnects: u64,
    /// Reconnects that got `synced`.
    pub(crate) reconnects: u64,
    /// Reconnect attempts that failed.
    pub(crate) failed: u64,
    pub(crate) disconnects_per_sec: f64,
    pub(crate) reconnects_per_sec: f64,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct WorkersReport {
    pub(crate) expected: u64,
    pub(crate) reported: u64,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct ConnectionsReport {
    pub(crate) target: u64,
    pub(crate) attempted: u64,
    pub(crate) connected: u64,
    pub(crate) synced: u64,
    pub(crate) failed: u64,
    pub(crate) sync_timeouts: u64,
    /// Closed or broken by the server before the end of the run.
    pub(crate) dropped: u64,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct RampReport {
    pub(crate) secs: f64,
    /// Successful connections per second of ramp.
    pub(crate) connects_per_sec: f64,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct SteadyReport {
    pub(crate) secs: f64,
    pub(crate) sent: u64,
    pub(crate) acked: u64,
    pub(crate) delivered: u64,
    pub(crate) sends_per_sec: f64,
    pub(crate) acks_per_sec: f64,
    pub(crate) deliveries_per_sec: f64,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct OrderReport {
    pub(crate) gap_events: u64,
    pub(crate) missing_seqs: u64,
    pub(crate) out_of_order: u64,
    pub(crate) convs_with_gaps: u64,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct ServerReport {
    #[serde(flatten)]
    pub(crate) samples: ServerSamples,
    /// Connections open when `rss_end_kib` was taken.
    pub(crate) open_connections: u64,
    /// (RSS at the end of the steady phase - RSS before) / open connections.
    pub(crate) rss_per_connection_bytes: Option<f64>,
    pub(crate) cpu_secs_steady: Option<f64>,
    /// Of one core.
    pub(crate) cpu_percent_steady: Option<f64>,
    /// Chat: server CPU per delivered message.
    pub(crate) cpu_micros_per_delivery: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct LoadReport {
    pub(crate) processes: u64,
    pub(crate) cpu_secs: f64,
    /// Summed over workers, at the end of the steady phase.
    pub(crate) rss_kib: u64,
    /// Summed over workers, before their first connection.
    pub(crate) rss_start_kib: u64,
    /// (rss - rss at start) / open connections.
    pub(crate) rss_per_connection_bytes: Option<f64>,
}

/// Builds the report of a run.
pub(crate) fn build(
    scenario: &ScenarioCommand,
    run_id: &str,
    totals: &Totals,
    samples: &ServerSamples,
    outcome: &RunOutcome,
) -> Result<RunReport, StatsError> {
    let common = scenario.common();
    let c = &totals.counters;
    let per_sec = |count: u64, secs: f64| if secs > 0.0 { count as f64 / secs } else { 0.0 };
    // A storm's clients connect twice; those open at the end are the resumed ones.
    // A churn connection counts once per cycle.
    let open = match scenario.storm() {
        Some(_) => c.resumed.saturating_sub(c.dropped),
        None => c.connected.saturating_sub(c.dropped + c.churned),
    };

    let mut failures = Vec::new();
    let mut warnings = Vec::new();
    if totals.workers_reported < outcome.workers_expected {
        failures.push(format!(
            "{} of {} workers did not report",
            outcome.workers_expected - totals.workers_reported,
            outcome.workers_expected
        ));
    }
    if c.connected == 0 {
        failures.push("no connection succeeded".to_owned());
    }
    if outcome.deadline_hit || totals.deadline_hit {
        failures.push("the hard deadline cut the run short".to_owned());
    }
    if outcome.interrupted {
        failures.push("interrupted".to_owned());
    }
    if let Some(fanout) = &outcome.fanout {
        if fanout.published == 0 {
            failures.push("no message was published".to_owned());
        }
        if fanout.missing > 0 {
            failures.push(format!(
                "{} of {} deliveries missing ({} of {} messages did not reach every recipient)",
                fanout.missing, fanout.expected, fanout.incomplete_messages, fanout.published
            ));
        }
    }
    if let Some(storm) = &outcome.storm {
        failures.extend(storm.failures());
        warnings.extend(storm.warnings());
    }
    if let Some(kind) = &outcome.sender_error {
        failures.push(format!("the fanout sender stopped early: {kind}"));
    }
    if matches!(scenario.kind(), ScenarioKind::Chat | ScenarioKind::Fanout) {
        if c.delivered == 0 {
            failures.push("no message was delivered".to_owned());
        }
        if c.gap_events > 0 {
            failures.push(format!(
                "{} seq gaps ({} seqs missing) in {} conversations",
                c.gap_events, c.missing_seqs, c.convs_with_gaps
            ));
        }
        if c.out_of_order > 0 {
            failures.push(format!("{} out-of-order deliveries", c.out_of_order));
        }
        if c.throttled > 0 {
            warnings.push(format!("{} sends skipped: senders had --max-inflight unacknowledged sends", c.throttled));
        }
        if c.send_lag > 0 {
            warnings.push(format!("{} sends skipped: the load generator fell behind its schedule", c.send_lag));
        }
        if c.dup_acks > 0 {
            warnings.push(format!("{} acks said dup", c.dup_acks));
        }
        if c.acked + c.send_errors < c.sent {
            warnings.push(format!("{} sends never answered", c.sent - c.acked - c.send_errors));
        }
    }
    if c.failed > 0 {
        warnings.push(format!("{} of {} connections failed", c.failed, c.attempted));
    }
    if c.attempted < common.connections && !outcome.interrupted {
        warnings.push(format!("only {} of {} connections attempted", c.attempted, common.connections));
    }
    if c.sync_timeouts > 0 {
        warnings.push(format!("{} connections not synced within --sync-timeout", c.sync_timeouts));
    }
    if c.dropped > 0 {
        warnings.push(format!("{} connections dropped by the server", c.dropped));
    }
    let churn = scenario.churn().map(|churn| ChurnReport {
        period_secs: churn.period().as_secs_f64(),
        disconnects: c.churned,
        reconnects: c.rejoined,
        failed: c.rejoin_failed,
        disconnects_per_sec: per_sec(c.churned, totals.steady.secs),
        reconnects_per_sec: per_sec(c.rejoined, totals.steady.secs),
    });
    if let Some(churn) = &churn {
        if churn.disconnects == 0 {
            failures.push("no connection cycled: the steady phase was shorter than a connection's turn".to_owned());
        }
        if churn.failed > 0 {
            failures.push(format!("{} reconnects failed", churn.failed));
        }
    }

    let server = samples.pid.map(|_| {
        let rss_after = samples.rss_end_kib.or(samples.rss_after_ramp_kib);
        let rss_per_connection_bytes = match (samples.rss_before_kib, rss_after) {
            (Some(before), Some(after)) if open > 0 => Some((after as f64 - before as f64) * 1024.0 / open as f64),
            _ => None,
        };
        let cpu_secs_steady = match (samples.cpu_at_go, samples.cpu_at_stop) {
            (Some(go), Some(stop)) => Some(stop - go),
            _ => None,
        };
        ServerReport {
            samples: samples.clone(),
            open_connections: open,
            rss_per_connection_bytes,
            cpu_secs_steady,
            cpu_percent_steady: cpu_secs_steady
                .filter(|_| totals.steady.secs > 0.0)
                .map(|cpu| 100.0 * cpu / totals.steady.secs),
            cpu_micros_per_delivery: cpu_secs_steady
                .filter(|_| totals.steady.delivered > 0)
                .map(|cpu| cpu * 1e6 / totals.steady.delivered as f64),
        }
    });

    let chat = scenario.chat();
    let fanout = scenario.fanout();
    let storm = scenario.storm();
    Ok(RunReport {
        scenario: scenario.kind().as_str(),
        run_id: run_id.to_owned(),
        ok: failures.is_empty(),
        failures,
        warnings,
        config: ReportConfig {
            url: common.url.clone(),
            connections: common.connections,
            processes: common.process_count(),
            connect_rate: common.rate,
            duration_secs: common.duration.as_secs_f64(),
            auth: if common.dev { "dev" } else { "token" },
            source_ips: common.source_ips.len(),
            pairs: chat.map(|chat| chat.pairs()),
            msg_rate_per_pair: chat.map(|chat| chat.per_pair_rate()),
            body_bytes: scenario.traffic().map(|traffic| traffic.body_bytes),
            fanout_kind: fanout.map(|fanout| fanout.kind.as_str()),
            members: fanout.filter(|fanout| fanout.kind == FanoutKind::Group).map(FanoutArgs::member_count),
            messages: fanout.map(|fanout| fanout.messages),
            send_period_ms: fanout.map(|fanout| fanout.send_period().as_secs_f64() * 1e3),
            owed: storm.map(|storm| storm.owed),
            convs: storm.map(|storm| storm.convs),
            reconnect_rate: storm.and_then(|storm| storm.reconnect_rate),
        },
        workers: WorkersReport { expected: outcome.workers_expected, reported: totals.workers_reported },
        connections: ConnectionsReport {
            target: common.connections,
            attempted: c.attempted,
            connected: c.connected,
            synced: c.synced,
            failed: c.failed,
            sync_timeouts: c.sync_timeouts,
            dropped: c.dropped,
        },
        // The ramp's own connections: a storm's or a churn's reconnects come later.
        ramp: RampReport {
            secs: totals.ramp_secs,
            connects_per_sec: per_sec(c.attempted.saturating_sub(c.failed), totals.ramp_secs),
        },
        steady: SteadyReport {
            secs: totals.steady.secs,
            sent: totals.steady.sent,
            acked: totals.steady.acked,
            delivered: totals.steady.delivered,
            sends_per_sec: per_sec(totals.steady.sent, totals.steady.secs),
            acks_per_sec: per_sec(totals.steady.acked, totals.steady.secs),
            deliveries_per_sec: per_sec(totals.steady.delivered, totals.steady.secs),
        },
        fanout: outcome.fanout.clone(),
        storm: outcome.storm.clone(),
        churn,
        order: OrderReport {
            gap_events: c.gap_events,
            missing_seqs: c.missing_seqs,
            out_of_order: c.out_of_order,
            convs_with_gaps: c.convs_with_gaps,
        },
        errors: totals.errors.clone(),
        latency_us: Metric::ALL
            .iter()
            .map(|&metric| (metric.name(), LatencySummary::of(totals.histograms.get(metric))))
            .collect(),
        server,
        load_generator: LoadReport {
            processes: totals.workers_reported,
            cpu_secs: totals.cpu_secs,
            rss_kib: totals.rss_kib,
            rss_start_kib: totals.rss_start_kib,
            rss_per_connection_bytes: (open > 0)
                .then(|| (totals.rss_kib as f64 - totals.rss_start_kib as f64) * 1024.0 / open as f64),
        },
        counters: c.clone(),
        histograms_v2_hex: totals.histograms.encode()?,
        timeline: outcome.timeline.clone(),
        deadline_hit: outcome.deadline_hit || totals.deadline_hit,
        interrupted: outcome.interrupted,
    })
}

/// The human table.
pub(crate) fn render_table(report: &RunReport) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail; `let _` keeps the formatting readable.
    let cfg = &report.config;
    let _ = writeln!(
        out,
        "\nswitchboard-load {} ({}): {} connections over {} processes, {} auth, {:.1} s steady",
        report.scenario, report.run_id, cfg.connections, cfg.processes, cfg.auth, report.steady.secs
    );
    if let (Some(pairs), Some(rate), Some(bytes)) = (cfg.pairs, cfg.msg_rate_per_pair, cfg.body_bytes) {
        let _ = writeln!(
            out,
            "  chat: {pairs} pairs x {rate:.2} msg/s = {:.0} msg/s offered, {bytes}-byte bodies",
            pairs as f64 * rate
        );
    }
    if let (Some(kind), Some(messages), Some(period_ms)) = (cfg.fanout_kind, cfg.messages, cfg.send_period_ms) {
        let audience = match cfg.members {
            Some(members) => format!("a group of {members} members + its owner"),
            None => "a feed".to_owned(),
        };
        let _ = writeln!(
            out,
            "  fanout ({kind}): {audience}, {} connected; {messages} messages {period_ms:.1} ms apart, {}-byte bodies",
            cfg.connections,
            cfg.body_bytes.unwrap_or(0)
        );
    }
    if let (Some(owed), Some(convs)) = (cfg.owed, cfg.convs) {
        let pace = cfg.reconnect_rate.map_or("all at once".to_owned(), |rate| format!("at {rate:.0}/s"));
        let _ = writeln!(
            out,
            "  storm: each client owed {owed} messages in {convs} conversations, {}-byte bodies; reconnects {pace}",
            cfg.body_bytes.unwrap_or(0)
        );
    }
    let conns = &report.connections;
    let _ = writeln!(
        out,
        "connections  attempted {}  connected {}  synced {}  failed {}  sync timeouts {}  dropped {}",
        conns.attempted, conns.connected, conns.synced, conns.failed, conns.sync_timeouts, conns.dropped
    );
    let _ = writeln!(out, "ramp         {:.2} s, {:.0} connections/s", report.ramp.secs, report.ramp.connects_per_sec);
    if let Some(fanout) = &report.fanout {
        let _ = writeln!(
            out,
            "fanout       published {}  recipients {}  deliveries {} of {}  missing {} ({} messages incomplete)",
            fanout.published,
            fanout.recipients,
            fanout.delivered,
            fanout.expected,
            fanout.missing,
            fanout.incomplete_messages
        );
        let _ = writeln!(
            out,
            "             {:.0} deliveries/s (first send to last delivery: {:.3} s)",
            fanout.deliveries_per_sec, fanout.span_secs
        );
    }
    if let Some(storm) = &report.storm {
        storm.render(&mut out);
    }
    if let Some(churn) = &report.churn {
        let _ = writeln!(
            out,
            "churn        {} disconnects ({:.0}/s)  {} reconnects synced ({:.0}/s)  {} failed; each connection up {:.2} s per cycle",
            churn.disconnects,
            churn.disconnects_per_sec,
            churn.reconnects,
            churn.reconnects_per_sec,
            churn.failed,
            churn.period_secs
        );
    }
    if report.scenario == ScenarioKind::Chat.as_str() {
        let steady = &report.steady;
        let _ = writeln!(
            out,
            "throughput   sent {:.0}/s  acked {:.0}/s  delivered {:.0}/s  (steady window: {} sent, {} delivered)",
            steady.sends_per_sec, steady.acks_per_sec, steady.deliveries_per_sec, steady.sent, steady.delivered
        );
    }
    if report.scenario == ScenarioKind::Chat.as_str() || report.fanout.is_some() {
        let order = &report.order;
        let _ = writeln!(
            out,
            "order        gaps {} (missing seqs {})  out-of-order {}  convs with gaps {}",
            order.gap_events, order.missing_seqs, order.out_of_order, order.convs_with_gaps
        );
    }

    let _ = writeln!(
        out,
        "latency (ms)          {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "count", "p50", "p90", "p99", "p99.9", "max", "mean"
    );
    for metric in Metric::ALL {
        let Some(summary) = report.latency_us.get(metric.name()) else {
            continue;
        };
        if summary.count == 0 {
            continue;
        }
        let ms = |micros: u64| micros as f64 / 1000.0;
        let _ = writeln!(
            out,
            "  {:<19} {:>9} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
            metric.label(),
            summary.count,
            ms(summary.p50),
            ms(summary.p90),
            ms(summary.p99),
            ms(summary.p999),
            ms(summary.max),
            summary.mean / 1000.0
        );
    }

    if report.errors.total() == 0 {
        let _ = writeln!(out, "errors       none");
    } else {
        let list: Vec<String> = report.errors.iter().map(|(kind, n)| format!("{kind}={n}")).collect();
        let _ = writeln!(out, "errors       {}", list.join("  "));
    }

    if let Some(server) = &report.server {
        let mib = |kib: Option<u64>| kib.map_or("?".to_owned(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
        let s = &server.samples;
        let _ = writeln!(
            out,
            "server       pid {}  rss before {}  after ramp {}  end {}",
            s.pid.unwrap_or(0),
            mib(s.rss_before_kib),
            mib(s.rss_after_ramp_kib),
            mib(s.rss_end_kib)
        );
        if let Some(per_conn) = server.rss_per_connection_bytes {
            let _ = writeln!(
                out,
                "             rss per connection {:.0} bytes ({:.2} KiB) over {} open connections",
                per_conn,
                per_conn / 1024.0,
                server.open_connections
            );
        }
        if let Some(cpu) = server.cpu_secs_steady {
            let mut line = format!(
                "             cpu in steady phase {:.2} s ({:.1}% of a core)",
                cpu,
                server.cpu_percent_steady.unwrap_or(0.0)
            );
            if let Some(per_delivery) = server.cpu_micros_per_delivery {
                let _ = write!(line, ", {per_delivery:.1} µs per delivery");
            }
            let _ = writeln!(out, "{line}");
        }
    }
    let load = &report.load_generator;
    let _ = writeln!(
        out,
        "load gen     {} processes  cpu {:.2} s  rss {:.1} MiB{}",
        load.processes,
        load.cpu_secs,
        load.rss_kib as f64 / 1024.0,
        load.rss_per_connection_bytes.map_or(String::new(), |b| format!(" ({:.1} KiB per connection)", b / 1024.0))
    );
    for warning in &report.warnings {
        let _ = writeln!(out, "warning      {warning}");
    }
    if report.ok {
        let _ = writeln!(out, "result       OK");
    } else {
        let _ = writeln!(out, "result       FAILED: {}", report.failures.join("; "));
    }
    out
}

/// Writes the report as pretty JSON.
pub(crate) fn write_json(report: &RunReport, path: &Path) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(report)?;
    std::fs::write(path, json + "\n").with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use crate::stats::{Histograms, SteadyWindow, WorkerReport};
    use clap::Parser;

    fn chat_cli() -> Cli {
        Cli::try_parse_from(["switchboard-load", "chat", "--dev", "-n", "4", "--msg-rate", "10"]).expect("parses")
    }

    fn totals(counters: Counters, delivered_latency_us: &[u64]) -> Totals {
        let mut hists = Histograms::new().expect("new");
        for &micros in delivered_latency_us {
            hists.record(Metric::Deliver, micros);
        }
        let report = WorkerReport {
            worker_index: 0,
            steady: SteadyWindow {
                secs: 10.0,
                sent: counters.sent,
                acked: counters.acked,
                delivered: counters.delivered,
            },
            counters,
            errors: ErrorCounts::default(),
            histograms: hists.encode().expect("encode"),
            ramp_secs: 0.5,
            cpu_secs: Some(1.0),
            rss_kib: Some(4096),
            rss_start_kib: Some(2048),
            deadline_hit: false,
            messages: Vec::new(),
            storm: None,
        };
        let mut totals = Totals::new().expect("new");
        totals.absorb(&report).expect("absorb");
        totals
    }

    #[test]
    fn clean_chat_run_is_ok_and_renders() {
        let cli = chat_cli();
        let counters = Counters {
            attempted: 4,
            connected: 4,
            synced: 4,
            settled: 4,
            sent: 200,
            acked: 200,
            delivered: 200,
            ..Counters::default()
        };
        let totals = totals(counters, &[1_000; 200]);
        let samples = ServerSamples {
            pid: Some(1),
            rss_before_kib: Some(10_000),
            rss_after_ramp_kib: Some(10_004),
            rss_end_kib: Some(10_008),
            cpu_at_go: Some(1.0),
            cpu_at_stop: Some(1.5),
        };
        let outcome = RunOutcome { workers_expected: 1, ..RunOutcome::default() };
        let report = build(&cli.scenario, "r1", &totals, &samples, &outcome).expect("report");
        assert!(report.ok, "{:?}", report.failures);
        assert_eq!(report.steady.deliveries_per_sec, 20.0);
        let server = report.server.as_ref().expect("server");
        assert_eq!(server.rss_per_connection_bytes, Some(2048.0));
        assert_eq!(server.cpu_micros_per_delivery, Some(2500.0));
        let table = render_table(&report);
        assert!(table.contains("send -> deliver"), "{table}");
        assert!(table.contains("result       OK"), "{table}");
        let json = serde_json::to_value(&report).expect("json");
        assert_eq!(json["latency_us"]["deliver"]["count"], 200);
        assert_eq!(json["server"]["rss_before_kib"], 10_000);
    }

    #[test]
    fn gaps_and_missing_workers_fail_the_run() {
        let cli = chat_cli();
        let counters = Counters {
            attempted: 4,
            connected: 4,
            delivered: 10,
            gap_events: 1,
            missing_seqs: 3,
            convs_with_gaps: 1,
            ..Counters::default()
        };
        let totals = totals(counters, &[]);
        let outcome = RunOutcome { workers_expected: 2, ..RunOutcome::default() };
        let report = build(&cli.scenario, "r1", &totals, &ServerSamples::default(), &outcome).expect("report");
        assert!(!report.ok);
        assert_eq!(report.failures.len(), 2, "{:?}", report.failures);
        assert!(render_table(&report).contains("FAILED"));
    }

    #[test]
    fn fanout_reports_missing_deliveries_as_a_failure() {
        use crate::fanout::{MessageDeliveries, MessageTotals, Published};
        let cli =
            Cli::try_parse_from(["switchboard-load", "fanout", "--dev", "-n", "3", "--messages", "2"]).expect("parses");
        let counters = Counters {
            attempted: 3,
            connected: 3,
            synced: 3,
            joined: 3,
            sent: 2,
            acked: 2,
            delivered: 5,
            ..Counters::default()
        };
        let totals = totals(counters, &[1_000; 5]);
        let mut messages = MessageTotals::default();
        messages.absorb(&[
            MessageDeliveries { n: 1, sent_us: 1_000_000, count: 3, last_us: 1_004_000 },
            MessageDeliveries { n: 2, sent_us: 1_100_000, count: 2, last_us: 1_102_000 },
        ]);
        let published = [Published { n: 1, sent_us: 1_000_000 }, Published { n: 2, sent_us: 1_100_000 }];
        let fanout = FanoutOutcome::new(&published, 3, &messages);
        let outcome = RunOutcome { workers_expected: 1, fanout: Some(fanout), ..RunOutcome::default() };
        let report = build(&cli.scenario, "r1", &totals, &ServerSamples::default(), &outcome).expect("report");
        assert_eq!(report.failures, ["1 of 6 deliveries missing (1 of 2 messages did not reach every recipient)"]);
        assert_eq!(report.config.members, Some(3));
        assert_eq!(report.config.fanout_kind, Some("group"));
        let table = render_table(&report);
        assert!(table.contains("fanout (group): a group of 3 members + its owner"), "{table}");
        assert!(table.contains("deliveries 5 of 6  missing 1"), "{table}");
        assert!(table.contains("order        gaps 0"), "{table}");
        let json = serde_json::to_value(&report).expect("json");
        assert_eq!(json["fanout"]["missing"], 1);
        assert_eq!(json["fanout"]["recipients"], 3);
    }

    #[test]
    fn no_connection_fails_the_run() {
        let cli = Cli::try_parse_from(["switchboard-load", "idle", "--dev", "-n", "3"]).expect("parses");
        let counters = Counters { attempted: 3, failed: 3, ..Counters::default() };
        let outcome = RunOutcome { workers_expected: 1, ..RunOutcome::default() };
        let report =
            build(&cli.scenario, "r1", &totals(counters, &[]), &ServerSamples::default(), &outcome).expect("report");
        assert_eq!(report.failures, ["no connection succeeded"]);
    }
}
