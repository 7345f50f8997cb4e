//! A storm's figures, from the workers' counters and the servers' own: how many clients
//! resumed and how fast, what failed and was retried, whether every replay was whole,
//! and what the resumes cost the store in reads.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::server_metrics::ServerCounters;
use crate::stats::{Counters, ErrorCounts};

/// Prefix of the error kinds of failed storm attempts.
const ATTEMPT_ERROR_PREFIX: &str = "storm.";

/// What one worker adds to a storm's figures besides counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct StormWorkerFigures {
    /// When the worker got `go`, µs since the Unix epoch.
    pub(crate) go_unix_us: u64,
    /// When its last client got `synced` (0: none did).
    pub(crate) last_resumed_unix_us: u64,
    /// Senders it ran, and how long the seeding took.
    pub(crate) senders: u64,
    pub(crate) seed_secs: f64,
}

impl StormWorkerFigures {
    /// Adds another worker's: the earliest `go`, the latest resume, the longest seeding.
    pub(crate) fn absorb(&mut self, other: &StormWorkerFigures) {
        if self.go_unix_us == 0 || (other.go_unix_us > 0 && other.go_unix_us < self.go_unix_us) {
            self.go_unix_us = other.go_unix_us;
        }
        self.last_resumed_unix_us = self.last_resumed_unix_us.max(other.last_resumed_unix_us);
        self.senders += other.senders;
        self.seed_secs = self.seed_secs.max(other.seed_secs);
    }
}

/// The storm's plan as the command line gave it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StormPlan {
    pub(crate) owed_per_client: u64,
    pub(crate) convs_per_client: u64,
}

/// The seeding: messages sent to the clients while they were away.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct SeedFigures {
    pub(crate) senders: u64,
    pub(crate) sent: u64,
    pub(crate) acked: u64,
    /// Sends refused for good, or never answered.
    pub(crate) refused: u64,
    /// The slowest worker's seeding.
    pub(crate) secs: f64,
}

/// What the servers counted during the storm (from `go` until every client resumed).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ServerFigures {
    #[serde(flatten)]
    pub(crate) counters: ServerCounters,
    pub(crate) store_reads_total: u64,
    /// Store reads per resume the servers completed, in all and by operation.
    pub(crate) store_reads_per_resume: Option<f64>,
    pub(crate) store_reads_per_resume_by_op: BTreeMap<String, f64>,
}

/// The figures of a storm run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct StormOutcome {
    /// Clients that went away (connected, synced and closed) and so took part.
    pub(crate) clients: u64,
    pub(crate) resumed: u64,
    /// Clients that gave up (or were stopped) before resuming.
    pub(crate) failed: u64,
    /// Attempts retried after a failure.
    pub(crate) retries: u64,
    /// Failed attempts, by kind (`http.503`, `connect.timeout`, `sync_timeout`, ...).
    pub(crate) failed_attempts: BTreeMap<String, u64>,
    /// From `go` (the first worker's) to the last client's `synced`.
    pub(crate) all_resumed_secs: Option<f64>,
    pub(crate) owed_per_client: u64,
    pub(crate) convs_per_client: u64,
    /// Messages the clients that took part were owed in all.
    pub(crate) owed: u64,
    /// Messages replayed to the resumed clients (each once).
    pub(crate) replayed: u64,
    pub(crate) duplicates: u64,
    pub(crate) missing: u64,
    pub(crate) convs_with_gaps: u64,
    /// Conversations whose head was not baseline + owed.
    pub(crate) owed_mismatch: u64,
    /// Conversations in `synced` besides the owed ones (earlier runs').
    pub(crate) extra_convs: u64,
    pub(crate) seed: SeedFigures,
    /// `None` when `/metrics` could not be read.
    pub(crate) server: Option<ServerFigures>,
}

impl StormOutcome {
    pub(crate) fn new(
        plan: StormPlan,
        counters: &Counters,
        errors: &ErrorCounts,
        figures: &StormWorkerFigures,
        server: Option<ServerCounters>,
    ) -> Self {
        let failed_attempts = errors
            .iter()
            .filter_map(|(kind, count)| Some((kind.strip_prefix(ATTEMPT_ERROR_PREFIX)?.to_owned(), count)))
            .filter(|(kind, _)| !matches!(kind.as_str(), "gave_up" | "unfinished"))
            .collect();
        let all_resumed_secs = (figures.go_unix_us > 0 && figures.last_resumed_unix_us >= figures.go_unix_us)
            .then(|| (figures.last_resumed_unix_us - figures.go_unix_us) as f64 / 1e6);
        let server = server.map(|counters| {
            let resumes = counters.resumes;
            let per_resume = |reads: u64| (resumes > 0).then(|| reads as f64 / resumes as f64);
            ServerFigures {
                store_reads_total: counters.store_reads_total(),
                store_reads_per_resume: per_resume(counters.store_reads_total()),
                store_reads_per_resume_by_op: counters
                    .store_reads
                    .iter()
                    .filter_map(|(op, &reads)| Some((op.clone(), per_resume(reads)?)))
                    .collect(),
                counters,
            }
        });
        StormOutcome {
            clients: counters.went_away,
            resumed: counters.resumed,
            failed: counters.resume_failed,
            retries: counters.resume_retries,
            failed_attempts,
            all_resumed_secs,
            owed_per_client: plan.owed_per_client,
            convs_per_client: plan.convs_per_client,
            owed: counters.went_away * plan.owed_per_client,
            replayed: counters.resume_replayed,
            duplicates: counters.resume_duplicates,
            missing: counters.resume_missing,
            convs_with_gaps: counters.resume_gap_convs,
            owed_mismatch: counters.owed_mismatch,
            extra_convs: counters.resume_extra_convs,
            seed: SeedFigures {
                senders: figures.senders,
                sent: counters.seed_sent,
                acked: counters.seed_acked,
                refused: counters.seed_refused,
                secs: figures.seed_secs,
            },
            server,
        }
    }

    /// Why the run failed, if it did.
    pub(crate) fn failures(&self) -> Vec<String> {
        let mut failures = Vec::new();
        if self.clients > 0 && self.resumed == 0 {
            failures.push("no client resumed".to_owned());
        }
        if self.resumed + self.failed < self.clients || self.failed > 0 {
            failures.push(format!("{} of {} clients did not resume", self.clients - self.resumed, self.clients));
        }
        if self.missing > 0 {
            failures.push(format!(
                "{} owed messages missing from replays ({} conversations with gaps)",
                self.missing, self.convs_with_gaps
            ));
        }
        if self.owed_mismatch > 0 {
            failures.push(format!("{} conversations did not hold what was sent to them", self.owed_mismatch));
        }
        if self.seed.refused > 0 {
            failures.push(format!("{} of the seeding's sends were refused or unanswered", self.seed.refused));
        }
        failures
    }

    /// Lesser trouble.
    pub(crate) fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.duplicates > 0 {
            warnings.push(format!("{} duplicate messages in replays (at-least-once overlap)", self.duplicates));
        }
        if self.extra_convs > 0 {
            warnings.push(format!(
                "clients resumed {} conversations besides their owed ones (an earlier run's?): store reads per \
                 resume include them; use a fresh --user-prefix or data directory",
                self.extra_convs
            ));
        }
        if self.server.is_none() {
            warnings.push("the servers' /metrics could not be read: no store reads".to_owned());
        }
        warnings
    }

    /// The storm's lines of the human table.
    pub(crate) fn render(&self, out: &mut String) {
        // Writing to a String cannot fail; `let _` keeps the formatting readable.
        let all = self.all_resumed_secs.map_or("-".to_owned(), |secs| format!("{secs:.3} s"));
        let _ = writeln!(
            out,
            "storm        {} clients away; resumed {}  failed {}  retries {}; every client synced {all} after go",
            self.clients, self.resumed, self.failed, self.retries
        );
        if !self.failed_attempts.is_empty() {
            let list: Vec<String> = self.failed_attempts.iter().map(|(kind, n)| format!("{kind}={n}")).collect();
            let _ = writeln!(out, "             failed attempts: {}", list.join("  "));
        }
        let _ = writeln!(
            out,
            "replay       owed {} ({} per client in {} conversations)  replayed {}  missing {} ({} convs with gaps)  \
             duplicates {}  owed mismatch {}",
            self.owed,
            self.owed_per_client,
            self.convs_per_client,
            self.replayed,
            self.missing,
            self.convs_with_gaps,
            self.duplicates,
            self.owed_mismatch
        );
        let seed = &self.seed;
        let _ = writeln!(
            out,
            "seeding      {} messages acked of {} sent by {} senders in {:.1} s; refused {}",
            seed.acked, seed.sent, seed.senders, seed.secs, seed.refused
        );
        let Some(server) = &self.server else { return };
        let per_resume = server.store_reads_per_resume.map_or("-".to_owned(), |reads| format!("{reads:.2}"));
        let by_op: Vec<String> =
            server.store_reads_per_resume_by_op.iter().map(|(op, reads)| format!("{op} {reads:.2}")).collect();
        let _ = writeln!(
            out,
            "store reads  {per_resume} per resume ({} reads, {} resumes on the servers): {}",
            server.store_reads_total,
            server.counters.resumes,
            by_op.join("  ")
        );
        if !server.counters.upgrades_refused.is_empty() {
            let list: Vec<String> =
                server.counters.upgrades_refused.iter().map(|(reason, n)| format!("{reason}={n}")).collect();
            let _ = writeln!(out, "             upgrades refused by the servers: {}", list.join("  "));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(counters: Counters, errors: &[(&'static str, u64)], server: Option<ServerCounters>) -> StormOutcome {
        let mut error_counts = ErrorCounts::default();
        for &(kind, count) in errors {
            for _ in 0..count {
                error_counts.record(kind);
            }
        }
        let figures =
            StormWorkerFigures { go_unix_us: 1_000_000, last_resumed_unix_us: 3_500_000, senders: 4, seed_secs: 1.5 };
        let plan = StormPlan { owed_per_client: 10, convs_per_client: 2 };
        StormOutcome::new(plan, &counters, &error_counts, &figures, server)
    }

    #[test]
    fn a_clean_storm_reports_reads_per_resume() {
        let counters = Counters {
            went_away: 100,
            resumed: 100,
            resume_retries: 3,
            resume_replayed: 1000,
            seed_sent: 1000,
            seed_acked: 1000,
            ..Counters::default()
        };
        let server = ServerCounters {
            store_reads: BTreeMap::from([("load_conv".to_owned(), 200), ("device_cursors".to_owned(), 100)]),
            resumes: 100,
            upgrades_refused: BTreeMap::from([("accept_rate".to_owned(), 3)]),
        };
        let storm = outcome(counters, &[("storm.http.503", 3), ("seed.server.rate_limited", 1)], Some(server));
        assert!(storm.failures().is_empty(), "{:?}", storm.failures());
        assert!(storm.warnings().is_empty(), "{:?}", storm.warnings());
        assert_eq!(storm.all_resumed_secs, Some(2.5));
        assert_eq!(storm.owed, 1000);
        assert_eq!(storm.failed_attempts, BTreeMap::from([("http.503".to_owned(), 3)]));
        let server = storm.server.as_ref().expect("server");
        assert_eq!(server.store_reads_per_resume, Some(3.0));
        assert_eq!(server.store_reads_per_resume_by_op.get("load_conv"), Some(&2.0));
        let mut table = String::new();
        storm.render(&mut table);
        assert!(table.contains("every client synced 2.500 s after go"), "{table}");
        assert!(table.contains("store reads  3.00 per resume"), "{table}");
        assert!(table.contains("accept_rate=3"), "{table}");
    }

    #[test]
    fn gaps_mismatches_and_give_ups_fail_the_storm() {
        let counters = Counters {
            went_away: 10,
            resumed: 8,
            resume_failed: 2,
            resume_missing: 3,
            resume_gap_convs: 1,
            owed_mismatch: 1,
            resume_duplicates: 2,
            seed_refused: 1,
            ..Counters::default()
        };
        let storm = outcome(counters, &[("storm.gave_up", 2), ("storm.connect.timeout", 5)], None);
        assert_eq!(storm.failed_attempts, BTreeMap::from([("connect.timeout".to_owned(), 5)]));
        let failures = storm.failures();
        assert_eq!(failures.len(), 4, "{failures:?}");
        assert!(failures[0].contains("2 of 10 clients did not resume"), "{failures:?}");
        let warnings = storm.warnings();
        assert!(warnings.iter().any(|w| w.contains("2 duplicate")), "{warnings:?}");
        assert!(warnings.iter().any(|w| w.contains("/metrics")), "{warnings:?}");
    }
}
