//! The servers' own counters, read from `GET /metrics` (Prometheus text format) before
//! and after a measured phase and subtracted: store reads by operation
//! (`switchboard_store_reads_total{op}`), resumes (`switchboard_resumes_total`) and
//! refused upgrades (`switchboard_upgrades_refused_total{reason}`), summed over every
//! server of the run.
//!
//! Only counters are read, and only these: the text is scanned line by line, comments
//! skipped, labels other than the one keyed on ignored.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::Serialize;

use crate::admin_api::{self, AdminError};

/// Store reads, by `op` label.
const STORE_READS: &str = "switchboard_store_reads_total";
/// Resumes completed (a `synced` sent after a replay).
const RESUMES: &str = "switchboard_resumes_total";
/// Upgrades refused, by `reason` label (capacity, accept rate, ...).
const UPGRADES_REFUSED: &str = "switchboard_upgrades_refused_total";

/// Counters of one or several servers at one moment, or the difference of two readings.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct ServerCounters {
    /// `switchboard_store_reads_total` by `op`.
    pub(crate) store_reads: BTreeMap<String, u64>,
    /// `switchboard_resumes_total`.
    pub(crate) resumes: u64,
    /// `switchboard_upgrades_refused_total` by `reason`.
    pub(crate) upgrades_refused: BTreeMap<String, u64>,
}

impl ServerCounters {
    /// The counters in one `/metrics` text.
    pub(crate) fn parse(text: &str) -> Self {
        let mut counters = ServerCounters::default();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((series, value)) = line.rsplit_once(' ') else { continue };
            // Counters are rendered as integers or floats ("12", "12.0", "1.2e3").
            let Ok(value) = value.parse::<f64>() else { continue };
            let value = value.max(0.0).round() as u64;
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, labels.trim_end_matches('}')),
                None => (series, ""),
            };
            match name {
                STORE_READS => *counters.store_reads.entry(label(labels, "op").to_owned()).or_insert(0) += value,
                RESUMES => counters.resumes += value,
                UPGRADES_REFUSED => {
                    *counters.upgrades_refused.entry(label(labels, "reason").to_owned()).or_insert(0) += value;
                }
                _ => {}
            }
        }
        counters
    }

    /// Adds another server's counters.
    pub(crate) fn add(&mut self, other: &ServerCounters) {
        for (op, count) in &other.store_reads {
            *self.store_reads.entry(op.clone()).or_insert(0) += count;
        }
        self.resumes += other.resumes;
        for (reason, count) in &other.upgrades_refused {
            *self.upgrades_refused.entry(reason.clone()).or_insert(0) += count;
        }
    }

    /// What happened between `earlier` and this reading (a counter that went down, a
    /// restarted server, counts from zero).
    pub(crate) fn since(&self, earlier: &ServerCounters) -> ServerCounters {
        let delta = |now: u64, before: Option<&u64>| now.saturating_sub(before.copied().unwrap_or(0));
        ServerCounters {
            store_reads: self
                .store_reads
                .iter()
                .map(|(op, &count)| (op.clone(), delta(count, earlier.store_reads.get(op))))
                .filter(|&(_, count)| count > 0)
                .collect(),
            resumes: self.resumes.saturating_sub(earlier.resumes),
            upgrades_refused: self
                .upgrades_refused
                .iter()
                .map(|(reason, &count)| (reason.clone(), delta(count, earlier.upgrades_refused.get(reason))))
                .filter(|&(_, count)| count > 0)
                .collect(),
        }
    }

    /// Store reads of every operation.
    pub(crate) fn store_reads_total(&self) -> u64 {
        self.store_reads.values().sum()
    }
}

/// The value of label `key` in `labels` (`a="x",b="y"`); empty when absent.
fn label<'a>(labels: &'a str, key: &str) -> &'a str {
    labels
        .split(',')
        .filter_map(|pair| pair.split_once('='))
        .find(|(name, _)| name.trim() == key)
        .map_or("", |(_, value)| value.trim().trim_matches('"'))
}

/// Reads and adds up the counters of every server in `addrs`.
pub(crate) async fn scrape(addrs: &[SocketAddr]) -> Result<ServerCounters, AdminError> {
    let mut total = ServerCounters::default();
    for &addr in addrs {
        let text = admin_api::get(addr, "/metrics").await?;
        total.add(&ServerCounters::parse(&String::from_utf8_lossy(&text)));
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# TYPE switchboard_store_reads_total counter
switchboard_store_reads_total{op="load_conv"} 40
switchboard_store_reads_total{op="read_after"} 20
switchboard_store_reads_total{op="device_cursors"} 10
# TYPE switchboard_resumes_total counter
switchboard_resumes_total 10
switchboard_upgrades_refused_total{reason="accept_rate"} 3
switchboard_connections 10
switchboard_store_commit_seconds_bucket{le="0.001"} 7
"#;

    #[test]
    fn counters_are_read_by_label() {
        let counters = ServerCounters::parse(TEXT);
        assert_eq!(counters.store_reads.get("load_conv"), Some(&40));
        assert_eq!(counters.store_reads_total(), 70);
        assert_eq!(counters.resumes, 10);
        assert_eq!(counters.upgrades_refused.get("accept_rate"), Some(&3));
        assert_eq!(label(r#"op="x",kind="y""#, "kind"), "y");
        assert_eq!(label("", "op"), "");
    }

    #[test]
    fn servers_add_up_and_readings_subtract() {
        let before = ServerCounters::parse(TEXT);
        let mut after = before.clone();
        after.add(&ServerCounters::parse(
            "switchboard_store_reads_total{op=\"load_conv\"} 4\nswitchboard_store_reads_total{op=\"user_convs\"} 2\n\
             switchboard_resumes_total 2.0\n",
        ));
        let delta = after.since(&before);
        assert_eq!(delta.store_reads, BTreeMap::from([("load_conv".to_owned(), 4), ("user_convs".to_owned(), 2)]));
        assert_eq!(delta.resumes, 2);
        assert!(delta.upgrades_refused.is_empty());
        // A restarted server's counters start over: nothing negative.
        assert_eq!(before.since(&after).resumes, 0);
    }
}
