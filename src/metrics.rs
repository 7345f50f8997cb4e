//! Prometheus metrics: the recorder and its upkeep.
//!
//! Code records through the `metrics` facade (`metrics::counter!` and friends) wherever
//! the event happens; this module installs the Prometheus recorder once per process and
//! renders `/metrics`. Names are `switchboard_*`; durations are histograms in seconds.
//!
//! Main series: `switchboard_connections` (gauge), `switchboard_frames_in_total`,
//! `switchboard_frames_out_total`, `switchboard_acks_total`, `switchboard_conv_pending`
//! and `switchboard_write_batch_frames` (queue depths), `switchboard_outbox_overflow_total`,
//! `switchboard_actor_restarts_total`, `switchboard_store_append_seconds` and
//! `switchboard_store_commit_seconds` (store latency), `switchboard_store_reads_total{op}`
//! (reads asked of the store, by method), `switchboard_closes_total{code}`.

use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Latency buckets, seconds: 100 µs to 10 s.
const SECONDS_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Count buckets (batch sizes).
const COUNT_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];

/// Installs the process-wide Prometheus recorder. Returns `None` if one is installed
/// already (several nodes in one test process share the first).
pub fn install() -> Option<PrometheusHandle> {
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), SECONDS_BUCKETS)
        .and_then(|builder| builder.set_buckets_for_metric(Matcher::Suffix("_size".to_owned()), COUNT_BUCKETS))
        .and_then(|builder| builder.set_buckets_for_metric(Matcher::Suffix("_frames".to_owned()), COUNT_BUCKETS))
        .ok()?;
    let handle = builder.install_recorder().ok()?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(Duration::from_secs(5));
        loop {
            interval.tick().await;
            upkeep.run_upkeep();
        }
    });
    Some(handle)
}
