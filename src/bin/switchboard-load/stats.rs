//! What a worker measures and how workers' measurements add up.
//!
//! Counters are plain sums. Latencies go into HDR histograms (microseconds, 3
//! significant digits) that cross the process boundary in hdrhistogram's V2 format,
//! hex-encoded inside the worker's JSON result, and are added up by the coordinator.
//! Errors are counted per kind, a short dotted key such as `tcp.refused` or `http.503`.

use std::borrow::Cow;
use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use serde::{Deserialize, Serialize};

use crate::fanout::{MessageDeliveries, MessageTotals};
use crate::storm::outcome::StormWorkerFigures;

/// Largest latency a histogram holds exactly: 10 minutes in microseconds. Larger values
/// are clamped to it.
const HIST_MAX_MICROS: u64 = 600_000_000;

/// Significant decimal digits of every histogram.
const HIST_SIGFIG: u8 = 3;

/// Declares [`Counters`] from one list, so adding a counter cannot forget the merge.
macro_rules! counters {
    ($($(#[doc = $doc:literal])* $name:ident,)*) => {
        /// Event counts of one worker, or of a whole run once merged.
        #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(default)]
        pub(crate) struct Counters {
            $($(#[doc = $doc])* pub(crate) $name: u64,)*
        }

        impl Counters {
            /// Adds every counter of `other` to this one.
            pub(crate) fn add(&mut self, other: &Counters) {
                $(self.$name += other.$name;)*
            }
        }
    };
}

counters! {
    /// Connection attempts started.
    attempted,
    /// WebSocket upgrades that succeeded.
    connected,
    /// `hello` frames received.
    hellos,
    /// Connections that received `synced`.
    synced,
    /// Fanout: connections ready to receive (synced group members, or subscribed to the
    /// feed).
    joined,
    /// Connections that failed before being synced (connect error, rejected upgrade,
    /// closed early).
    failed,
    /// Connections that were not synced within `--sync-timeout`.
    sync_timeouts,
    /// Connections whose outcome is known (synced, failed or timed out), each once.
    settled,
    /// Connections that ended after connecting, for any reason.
    closed,
    /// Connections the server closed or broke before the tool stopped them.
    dropped,
    /// `send` frames written.
    sent,
    /// `ack` frames received for our sends.
    acked,
    /// Acks that said `dup: true`.
    dup_acks,
    /// `error` frames answering a send.
    send_errors,
    /// Sends skipped because the sender had `--max-inflight` unacknowledged sends.
    throttled,
    /// Messages not sent because the generator fell behind its schedule (whole send
    /// ticks are skipped, not caught up).
    send_lag,
    /// Live `msg` frames from another user, in order or ahead (after `synced`).
    delivered,
    /// `msg` frames before `synced` (resume replay).
    replayed,
    /// Replayed `msg` frames this very user had sent (a device's own sends that it
    /// never acknowledged).
    replayed_own,
    /// Live `msg` frames whose sender was this very user.
    own_echo,
    /// Live `msg` frames whose seq was not above the last seen in that conversation.
    out_of_order,
    /// Live `msg` frames that skipped seqs in their conversation.
    gap_events,
    /// Seqs skipped in total by gap events.
    missing_seqs,
    /// Conversation views (per connection) that saw at least one gap.
    convs_with_gaps,
    /// `receipt` frames written.
    receipts_sent,
    /// `error` frames received (any).
    server_errors,
    /// Frames received.
    frames_in,
    /// Frames written.
    frames_out,
    /// Storm: clients that went away (closed after syncing) to come back in the storm.
    went_away,
    /// Storm: clients that got `synced` again in the storm.
    resumed,
    /// Storm: clients that gave up (or were stopped) before resuming.
    resume_failed,
    /// Storm: failed attempts that were retried.
    resume_retries,
    /// Storm: messages the resumes replayed (each once).
    resume_replayed,
    /// Storm: replayed messages at or below a seq already replayed in their conversation.
    resume_duplicates,
    /// Storm: owed seqs missing from the replays.
    resume_missing,
    /// Storm: conversations whose replay had a gap.
    resume_gap_convs,
    /// Storm: conversations whose head after the storm was not the client's baseline
    /// plus what it was sent.
    owed_mismatch,
    /// Storm: conversations in a resume's `synced` besides the client's owed ones.
    resume_extra_convs,
    /// Storm: the senders' `send` frames written (retries included).
    seed_sent,
    /// Storm: the senders' sends acknowledged.
    seed_acked,
    /// Storm: the senders' sends refused for good, or never answered.
    seed_refused,
    /// Churn: connections closed for their cycle (each then reconnects).
    churned,
    /// Churn: reconnects that got `synced`.
    rejoined,
    /// Churn: reconnect attempts that failed (retried a second later).
    rejoin_failed,
}

impl Counters {
    /// Connections open right now.
    pub(crate) fn open(&self) -> u64 {
        self.connected.saturating_sub(self.closed)
    }
}

/// The latencies a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Metric {
    /// TCP connect start to WebSocket upgrade done.
    Connect,
    /// TCP connect start to `hello` received.
    Hello,
    /// TCP connect start to `synced` received.
    Synced,
    /// `send` written to `ack` received.
    Ack,
    /// Send timestamp in the body to `msg` received at the other member.
    Deliver,
    /// Fanout, per message: send timestamp to its last delivery over all receivers
    /// (recorded by the coordinator from the workers' per-message reports).
    LastDelivery,
    /// Storm: a client's first reconnect attempt to its `synced`, retries included.
    Resume,
    /// Churn: TCP connect start to `synced` of a reconnect.
    Rejoin,
}

impl Metric {
    /// Every metric, in report order.
    pub(crate) const ALL: [Metric; 8] = [
        Metric::Connect,
        Metric::Hello,
        Metric::Synced,
        Metric::Ack,
        Metric::Deliver,
        Metric::LastDelivery,
        Metric::Resume,
        Metric::Rejoin,
    ];

    /// Name used in the JSON result.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Metric::Connect => "connect",
            Metric::Hello => "hello",
            Metric::Synced => "synced",
            Metric::Ack => "ack",
            Metric::Deliver => "deliver",
            Metric::LastDelivery => "last_delivery",
            Metric::Resume => "resume",
            Metric::Rejoin => "rejoin",
        }
    }

    /// Label used in the human table.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Metric::Connect => "connect (upgrade)",
            Metric::Hello => "connect -> hello",
            Metric::Synced => "connect -> synced",
            Metric::Ack => "send -> ack",
            Metric::Deliver => "send -> deliver",
            Metric::LastDelivery => "send -> last member",
            Metric::Resume => "storm: resume",
            Metric::Rejoin => "churn: reconnect",
        }
    }

    fn index(self) -> usize {
        match self {
            Metric::Connect => 0,
            Metric::Hello => 1,
            Metric::Synced => 2,
            Metric::Ack => 3,
            Metric::Deliver => 4,
            Metric::LastDelivery => 5,
            Metric::Resume => 6,
            Metric::Rejoin => 7,
        }
    }
}

/// Why histograms could not be built, encoded or merged.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StatsError {
    #[error("cannot create histogram: {0:?}")]
    Create(hdrhistogram::CreationError),
    #[error("cannot serialize histogram {name}: {source:?}")]
    Serialize { name: &'static str, source: hdrhistogram::serialization::V2SerializeError },
    #[error("cannot deserialize histogram {name}: {detail}")]
    Deserialize { name: String, detail: String },
    #[error("cannot add histogram {name}: {source:?}")]
    Add { name: &'static str, source: hdrhistogram::AdditionError },
    #[error("histogram {name} is not valid hex: {source}")]
    Hex { name: String, source: HexError },
}

/// One latency histogram per [`Metric`], in microseconds.
#[derive(Debug, Clone)]
pub(crate) struct Histograms {
    hists: [Histogram<u64>; Metric::ALL.len()],
}

impl Histograms {
    /// Empty histograms.
    pub(crate) fn new() -> Result<Self, StatsError> {
        let make = || -> Result<Histogram<u64>, StatsError> {
            let mut hist = Histogram::new_with_bounds(1, HIST_MAX_MICROS, HIST_SIGFIG).map_err(StatsError::Create)?;
            // Merged inputs share these bounds, but never fail an addition over it.
            hist.auto(true);
            Ok(hist)
        };
        Ok(Histograms { hists: [make()?, make()?, make()?, make()?, make()?, make()?, make()?, make()?] })
    }

    /// Records one latency, clamped to the histogram's range.
    pub(crate) fn record(&mut self, metric: Metric, micros: u64) {
        self.hists[metric.index()].saturating_record(micros.min(HIST_MAX_MICROS));
    }

    /// The histogram of `metric`.
    pub(crate) fn get(&self, metric: Metric) -> &Histogram<u64> {
        &self.hists[metric.index()]
    }

    /// Every histogram in V2 format, hex-encoded, keyed by metric name.
    pub(crate) fn encode(&self) -> Result<BTreeMap<String, String>, StatsError> {
        let mut serializer = V2Serializer::new();
        let mut encoded = BTreeMap::new();
        for metric in Metric::ALL {
            let mut bytes = Vec::new();
            serializer
                .serialize(self.get(metric), &mut bytes)
                .map_err(|source| StatsError::Serialize { name: metric.name(), source })?;
            encoded.insert(metric.name().to_owned(), to_hex(&bytes));
        }
        Ok(encoded)
    }

    /// Adds histograms produced by [`Histograms::encode`]. Unknown names are ignored
    /// (a newer worker may measure more).
    pub(crate) fn add_encoded(&mut self, encoded: &BTreeMap<String, String>) -> Result<(), StatsError> {
        let mut deserializer = Deserializer::new();
        for metric in Metric::ALL {
            let Some(hex) = encoded.get(metric.name()) else {
                continue;
            };
            let bytes = from_hex(hex).map_err(|source| StatsError::Hex { name: metric.name().to_owned(), source })?;
            let hist: Histogram<u64> = deserializer
                .deserialize(&mut bytes.as_slice())
                .map_err(|e| StatsError::Deserialize { name: metric.name().to_owned(), detail: format!("{e:?}") })?;
            self.hists[metric.index()].add(&hist).map_err(|source| StatsError::Add { name: metric.name(), source })?;
        }
        Ok(())
    }
}

/// Percentiles of one histogram, in microseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct LatencySummary {
    pub(crate) count: u64,
    pub(crate) min: u64,
    pub(crate) mean: f64,
    pub(crate) p50: u64,
    pub(crate) p90: u64,
    pub(crate) p99: u64,
    pub(crate) p999: u64,
    pub(crate) max: u64,
}

impl LatencySummary {
    /// Summarizes `hist`; an empty histogram gives all zeros.
    pub(crate) fn of(hist: &Histogram<u64>) -> Self {
        if hist.is_empty() {
            return LatencySummary { count: 0, min: 0, mean: 0.0, p50: 0, p90: 0, p99: 0, p999: 0, max: 0 };
        }
        LatencySummary {
            count: hist.len(),
            min: hist.min(),
            mean: hist.mean(),
            p50: hist.value_at_quantile(0.50),
            p90: hist.value_at_quantile(0.90),
            p99: hist.value_at_quantile(0.99),
            p999: hist.value_at_quantile(0.999),
            max: hist.max(),
        }
    }
}

/// Error counts by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub(crate) struct ErrorCounts(BTreeMap<String, u64>);

impl ErrorCounts {
    /// Counts one error of `kind`.
    pub(crate) fn record(&mut self, kind: impl Into<Cow<'static, str>>) {
        *self.0.entry(kind.into().into_owned()).or_insert(0) += 1;
    }

    /// Adds every count of `other`.
    pub(crate) fn add(&mut self, other: &ErrorCounts) {
        for (kind, count) in &other.0 {
            *self.0.entry(kind.clone()).or_insert(0) += count;
        }
    }

    /// All errors.
    pub(crate) fn total(&self) -> u64 {
        self.0.values().sum()
    }

    /// Kinds and counts, by kind.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.0.iter().map(|(kind, count)| (kind.as_str(), *count))
    }
}

/// Counts of the steady phase only (from `go` to `stop`), for throughput.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct SteadyWindow {
    /// Length of the steady phase in seconds.
    pub(crate) secs: f64,
    pub(crate) sent: u64,
    pub(crate) acked: u64,
    pub(crate) delivered: u64,
}

/// The final result a worker prints as its last line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WorkerReport {
    pub(crate) worker_index: u64,
    pub(crate) counters: Counters,
    pub(crate) errors: ErrorCounts,
    /// V2-serialized, hex-encoded histograms keyed by metric name.
    pub(crate) histograms: BTreeMap<String, String>,
    /// From the first connection attempt until every connection had settled.
    pub(crate) ramp_secs: f64,
    pub(crate) steady: SteadyWindow,
    /// CPU time (user + system) of the worker process.
    pub(crate) cpu_secs: Option<f64>,
    /// Resident memory of the worker process when the steady phase ended.
    pub(crate) rss_kib: Option<u64>,
    /// Resident memory of the worker process before its first connection.
    #[serde(default)]
    pub(crate) rss_start_kib: Option<u64>,
    /// Whether the worker stopped because the run's deadline passed.
    pub(crate) deadline_hit: bool,
    /// Fanout: what the worker's connections received of each message.
    #[serde(default)]
    pub(crate) messages: Vec<MessageDeliveries>,
    /// Storm: when it started and ended at this worker, and its seeding.
    #[serde(default)]
    pub(crate) storm: Option<StormWorkerFigures>,
}

/// Everything the workers reported, added up.
#[derive(Debug, Clone)]
pub(crate) struct Totals {
    pub(crate) workers_reported: u64,
    pub(crate) counters: Counters,
    pub(crate) errors: ErrorCounts,
    pub(crate) histograms: Histograms,
    /// The slowest worker's ramp.
    pub(crate) ramp_secs: f64,
    /// Steady-phase counts summed; `secs` is the longest worker's window.
    pub(crate) steady: SteadyWindow,
    pub(crate) cpu_secs: f64,
    pub(crate) rss_kib: u64,
    pub(crate) rss_start_kib: u64,
    pub(crate) deadline_hit: bool,
    /// Fanout: deliveries by message.
    pub(crate) messages: MessageTotals,
    /// Storm: the earliest `go`, the latest resume, the senders and the longest seeding.
    pub(crate) storm: StormWorkerFigures,
}

impl Totals {
    /// Nothing reported yet.
    pub(crate) fn new() -> Result<Self, StatsError> {
        Ok(Totals {
            workers_reported: 0,
            counters: Counters::default(),
            errors: ErrorCounts::default(),
            histograms: Histograms::new()?,
            ramp_secs: 0.0,
            steady: SteadyWindow::default(),
            cpu_secs: 0.0,
            rss_kib: 0,
            rss_start_kib: 0,
            deadline_hit: false,
            messages: MessageTotals::default(),
            storm: StormWorkerFigures::default(),
        })
    }

    /// Adds one worker's report.
    pub(crate) fn absorb(&mut self, report: &WorkerReport) -> Result<(), StatsError> {
        self.add_measurements(&report.counters, &report.errors, &report.histograms)?;
        self.workers_reported += 1;
        self.messages.absorb(&report.messages);
        self.ramp_secs = self.ramp_secs.max(report.ramp_secs);
        self.steady.secs = self.steady.secs.max(report.steady.secs);
        self.steady.sent += report.steady.sent;
        self.steady.acked += report.steady.acked;
        self.steady.delivered += report.steady.delivered;
        self.cpu_secs += report.cpu_secs.unwrap_or(0.0);
        self.rss_kib += report.rss_kib.unwrap_or(0);
        self.rss_start_kib += report.rss_start_kib.unwrap_or(0);
        self.deadline_hit |= report.deadline_hit;
        if let Some(storm) = &report.storm {
            self.storm.absorb(storm);
        }
        Ok(())
    }

    /// Adds counts, errors and histograms measured outside the workers (the fanout's
    /// sender, in the coordinator).
    pub(crate) fn add_measurements(
        &mut self,
        counters: &Counters,
        errors: &ErrorCounts,
        histograms: &BTreeMap<String, String>,
    ) -> Result<(), StatsError> {
        self.histograms.add_encoded(histograms)?;
        self.counters.add(counters);
        self.errors.add(errors);
        Ok(())
    }
}

/// A hex string that is not an even number of hex digits.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid hex at offset {offset}")]
pub(crate) struct HexError {
    offset: usize,
}

/// Lowercase hex of `bytes`.
pub(crate) fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    out
}

/// Bytes of a hex string (either case).
pub(crate) fn from_hex(text: &str) -> Result<Vec<u8>, HexError> {
    fn digit(c: u8, offset: usize) -> Result<u8, HexError> {
        match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            b'A'..=b'F' => Ok(c - b'A' + 10),
            _ => Err(HexError { offset }),
        }
    }
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return Err(HexError { offset: bytes.len() });
    }
    bytes
        .chunks_exact(2)
        .enumerate()
        .map(|(i, pair)| Ok(digit(pair[0], 2 * i)? << 4 | digit(pair[1], 2 * i + 1)?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(index: u64, hists: &Histograms, counters: Counters, errors: ErrorCounts) -> WorkerReport {
        WorkerReport {
            worker_index: index,
            counters,
            errors,
            histograms: hists.encode().expect("encode"),
            ramp_secs: 1.0 + index as f64,
            steady: SteadyWindow { secs: 10.0, sent: 100, acked: 99, delivered: 98 },
            cpu_secs: Some(0.5),
            rss_kib: Some(1000),
            rss_start_kib: Some(400),
            deadline_hit: false,
            messages: vec![MessageDeliveries { n: 1, sent_us: 10, count: 3, last_us: 20 + index }],
            storm: None,
        }
    }

    #[test]
    fn hex_round_trips_and_rejects_garbage() {
        let bytes: Vec<u8> = (0..=255).collect();
        let hex = to_hex(&bytes);
        assert_eq!(hex.len(), 512);
        assert_eq!(&hex[..6], "000102");
        assert_eq!(from_hex(&hex), Ok(bytes));
        assert_eq!(from_hex("0A0b"), Ok(vec![10, 11]));
        assert_eq!(from_hex("abc"), Err(HexError { offset: 3 }));
        assert_eq!(from_hex("zz"), Err(HexError { offset: 0 }));
    }

    #[test]
    fn histograms_survive_serialization() {
        let mut hists = Histograms::new().expect("new");
        for micros in 1..=10_000 {
            hists.record(Metric::Ack, micros);
        }
        hists.record(Metric::Deliver, u64::MAX);
        let encoded = hists.encode().expect("encode");
        assert_eq!(encoded.len(), Metric::ALL.len());

        let mut decoded = Histograms::new().expect("new");
        decoded.add_encoded(&encoded).expect("decode");
        for metric in Metric::ALL {
            assert_eq!(LatencySummary::of(decoded.get(metric)), LatencySummary::of(hists.get(metric)), "{metric:?}");
        }
        let ack = LatencySummary::of(decoded.get(Metric::Ack));
        assert_eq!(ack.count, 10_000);
        assert!((4_990..=5_010).contains(&ack.p50), "{ack:?}");
        assert!((9_890..=9_910).contains(&ack.p99), "{ack:?}");
        assert!(decoded.get(Metric::Deliver).max() >= HIST_MAX_MICROS);
    }

    #[test]
    fn totals_add_counters_errors_and_histograms() {
        let mut a = Histograms::new().expect("new");
        let mut b = Histograms::new().expect("new");
        for _ in 0..90 {
            a.record(Metric::Deliver, 1_000);
        }
        for _ in 0..10 {
            b.record(Metric::Deliver, 50_000);
        }
        let mut errors_a = ErrorCounts::default();
        errors_a.record("tcp.refused");
        errors_a.record("http.503");
        let mut errors_b = ErrorCounts::default();
        errors_b.record(String::from("http.503"));
        let counters_a = Counters { connected: 10, delivered: 90, ..Counters::default() };
        let counters_b = Counters { connected: 5, closed: 2, delivered: 10, ..Counters::default() };

        let mut totals = Totals::new().expect("new");
        totals.absorb(&report(0, &a, counters_a, errors_a)).expect("absorb");
        totals.absorb(&report(1, &b, counters_b, errors_b)).expect("absorb");

        assert_eq!(totals.workers_reported, 2);
        assert_eq!(totals.counters.connected, 15);
        assert_eq!(totals.counters.open(), 13);
        assert_eq!(totals.counters.delivered, 100);
        assert_eq!(totals.errors.total(), 3);
        assert_eq!(totals.errors.iter().collect::<Vec<_>>(), [("http.503", 2), ("tcp.refused", 1)]);
        assert_eq!(totals.ramp_secs, 2.0);
        assert_eq!(totals.steady.delivered, 196);
        assert_eq!(totals.rss_kib, 2000);
        assert_eq!(totals.rss_start_kib, 800);
        assert_eq!(totals.messages.get(1), Some(&MessageDeliveries { n: 1, sent_us: 10, count: 6, last_us: 21 }));
        let deliver = LatencySummary::of(totals.histograms.get(Metric::Deliver));
        assert_eq!(deliver.count, 100);
        assert!((999..=1_001).contains(&deliver.p50), "{deliver:?}");
        assert!((49_950..=50_050).contains(&deliver.p99), "{deliver:?}");
    }

    #[test]
    fn worker_report_round_trips_through_json() {
        let hists = Histograms::new().expect("new");
        let original = report(3, &hists, Counters::default(), ErrorCounts::default());
        let line = serde_json::to_string(&original).expect("serialize");
        let parsed: WorkerReport = serde_json::from_str(&line).expect("parse");
        assert_eq!(parsed.worker_index, 3);
        assert_eq!(parsed.histograms, original.histograms);
    }

    #[test]
    fn corrupt_histograms_are_an_error_not_a_panic() {
        let mut hists = Histograms::new().expect("new");
        let mut bad = BTreeMap::new();
        bad.insert("ack".to_owned(), "00ff".to_owned());
        assert!(hists.add_encoded(&bad).is_err());
        bad.insert("ack".to_owned(), "xyz".to_owned());
        assert!(matches!(hists.add_encoded(&bad), Err(StatsError::Hex { .. })));
    }
}
