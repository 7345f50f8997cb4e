//! State a worker's connections share: the run phase, the clock, the counters and
//! histograms, and the settings every session reads.
//!
//! A worker runs on one thread (a current-thread runtime with a `LocalSet`), so the
//! shared measurements are `RefCell`s borrowed for a few instructions at a time, never
//! across an `.await`. One set of histograms per worker, not per connection: an HDR
//! histogram is ~150 KB and a worker holds up to 19,000 connections.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use crate::auth::Auth;
use crate::cli::ScenarioKind;
use crate::connect::Target;
use crate::fanout::{DeliveryLog, MessageDeliveries};
use crate::stats::{Counters, ErrorCounts, Histograms, Metric, StatsError};
use crate::storm::StormSettings;

/// Phase of the run, broadcast to every session through a `watch` channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Phase {
    /// Connections are being opened.
    Ramp,
    /// Storm: every client closes and waits, while it is sent what it will be owed.
    Away,
    /// Every worker is up: hold idle, or send.
    Steady,
    /// Senders stop; outstanding acks and deliveries are awaited.
    Drain,
    /// Close everything.
    Stop,
}

/// Waits until `phase_rx` says [`Phase::Stop`] (or its sender is gone).
pub(crate) async fn stopped(phase_rx: &mut watch::Receiver<Phase>) {
    // `wait_for` checks the current value first; an error means the sender is gone,
    // which is a stop too.
    let _ = phase_rx.wait_for(|phase| *phase == Phase::Stop).await;
}

/// Monotonic and wall-clock time in microseconds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    base: Instant,
}

impl Clock {
    pub(crate) fn new() -> Self {
        Clock { base: Instant::now() }
    }

    /// Microseconds since this clock was created (monotonic).
    pub(crate) fn mono_micros(&self) -> u64 {
        duration_micros(self.base.elapsed())
    }

    /// Microseconds since the Unix epoch (wall clock; shared by every process here).
    pub(crate) fn unix_micros(&self) -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map(duration_micros).unwrap_or(0)
    }
}

/// A duration in whole microseconds, saturating.
pub(crate) fn duration_micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// Measurements of one worker.
#[derive(Debug)]
pub(crate) struct Meters {
    counters: RefCell<Counters>,
    errors: RefCell<ErrorCounts>,
    histograms: RefCell<Histograms>,
    /// Fanout: deliveries by message number.
    deliveries: RefCell<DeliveryLog>,
    /// Session tasks still running (not reported; used to wait for them at the end).
    live_sessions: Cell<u64>,
}

impl Meters {
    pub(crate) fn new() -> Result<Self, StatsError> {
        Ok(Meters {
            counters: RefCell::new(Counters::default()),
            errors: RefCell::new(ErrorCounts::default()),
            histograms: RefCell::new(Histograms::new()?),
            deliveries: RefCell::new(DeliveryLog::default()),
            live_sessions: Cell::new(0),
        })
    }

    /// Updates counters.
    pub(crate) fn count(&self, update: impl FnOnce(&mut Counters)) {
        update(&mut self.counters.borrow_mut());
    }

    /// Counts one error of `kind`.
    pub(crate) fn error(&self, kind: impl Into<Cow<'static, str>>) {
        self.errors.borrow_mut().record(kind);
    }

    /// Records one latency in microseconds.
    pub(crate) fn record(&self, metric: Metric, micros: u64) {
        self.histograms.borrow_mut().record(metric, micros);
    }

    /// Counts one delivery of fanout message `n`, sent at `sent_us`, here at `arrived_us`
    /// (µs since the Unix epoch).
    pub(crate) fn record_delivery(&self, n: u64, sent_us: u64, arrived_us: u64) {
        self.deliveries.borrow_mut().record(n, sent_us, arrived_us);
    }

    /// Fanout: what this worker received of each message.
    pub(crate) fn message_deliveries(&self) -> Vec<MessageDeliveries> {
        self.deliveries.borrow().delivered()
    }

    /// A copy of the counters.
    pub(crate) fn counters(&self) -> Counters {
        self.counters.borrow().clone()
    }

    /// A copy of the error counts.
    pub(crate) fn errors(&self) -> ErrorCounts {
        self.errors.borrow().clone()
    }

    /// Errors so far.
    pub(crate) fn error_total(&self) -> u64 {
        self.errors.borrow().total()
    }

    /// The histograms, encoded for the report.
    pub(crate) fn encoded_histograms(&self) -> Result<std::collections::BTreeMap<String, String>, StatsError> {
        self.histograms.borrow().encode()
    }

    /// Session tasks still running.
    pub(crate) fn live_sessions(&self) -> u64 {
        self.live_sessions.get()
    }

    /// Marks a session task as running until the returned guard drops.
    pub(crate) fn session_guard(self: &std::rc::Rc<Self>) -> SessionGuard {
        self.live_sessions.set(self.live_sessions.get() + 1);
        SessionGuard { meters: std::rc::Rc::clone(self) }
    }
}

/// Counts a session task as live while it exists.
#[derive(Debug)]
pub(crate) struct SessionGuard {
    meters: std::rc::Rc<Meters>,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let live = &self.meters.live_sessions;
        live.set(live.get().saturating_sub(1));
    }
}

/// Settings of the chat scenario a session needs.
#[derive(Debug, Clone)]
pub(crate) struct ChatSettings {
    /// Interval between two send ticks of one sender.
    pub(crate) send_period: Duration,
    /// Messages per send tick.
    pub(crate) batch: u32,
    /// Body padding (makes bodies `--body-bytes` long).
    pub(crate) padding: String,
    /// Most unacknowledged sends per sender.
    pub(crate) max_inflight: u32,
    /// Whether receivers send receipts at all.
    pub(crate) receipts: bool,
}

/// Settings of the fanout scenario a session needs.
#[derive(Debug, Clone)]
pub(crate) struct FanoutSettings {
    /// The group or feed every connection receives from.
    pub(crate) conv: String,
    /// Subscribe to `conv` once synced (a feed); a group member is in it already.
    pub(crate) subscribe: bool,
}

/// Everything a session reads; one per worker, shared by reference count.
#[derive(Debug)]
pub(crate) struct SessionEnv {
    pub(crate) scenario: ScenarioKind,
    /// The servers (a cluster's nodes); connection `i` goes to `targets[i % len]`, so
    /// the two ends of a chat pair land on different nodes when there are several.
    pub(crate) targets: Vec<Target>,
    pub(crate) auth: Auth,
    pub(crate) user_prefix: String,
    pub(crate) device: String,
    pub(crate) run_id: String,
    pub(crate) connect_timeout: Duration,
    pub(crate) sync_timeout: Duration,
    pub(crate) chat: Option<ChatSettings>,
    pub(crate) fanout: Option<FanoutSettings>,
    pub(crate) storm: Option<StormSettings>,
    /// Churn: how long each connection stays up between two cycles.
    pub(crate) churn_period: Option<Duration>,
    /// How long a receiver batches its `delivered` receipts.
    pub(crate) receipt_interval: Duration,
    pub(crate) clock: Clock,
    pub(crate) meters: std::rc::Rc<Meters>,
    pub(crate) phase_rx: watch::Receiver<Phase>,
}

impl SessionEnv {
    /// The server of connection `index`.
    pub(crate) fn target(&self, index: u64) -> &Target {
        &self.targets[(index % self.targets.len() as u64) as usize]
    }
}

/// The environment of a test's sessions against `url`: user prefix `t-u`, device `d`,
/// 5 s timeouts, receipts after 20 ms.
#[cfg(test)]
pub(crate) async fn test_env(
    url: &str,
    auth: Auth,
    scenario: ScenarioKind,
    chat: Option<ChatSettings>,
    fanout: Option<FanoutSettings>,
    storm: Option<StormSettings>,
) -> (std::rc::Rc<SessionEnv>, watch::Sender<Phase>) {
    let (phase_tx, phase_rx) = watch::channel(Phase::Ramp);
    let env = std::rc::Rc::new(SessionEnv {
        scenario,
        targets: vec![Target::resolve(url).await.expect("target")],
        auth,
        user_prefix: "t-u".to_owned(),
        device: "d".to_owned(),
        run_id: "rtest".to_owned(),
        connect_timeout: Duration::from_secs(5),
        sync_timeout: Duration::from_secs(5),
        chat,
        fanout,
        storm,
        churn_period: None,
        receipt_interval: Duration::from_millis(20),
        clock: Clock::new(),
        meters: std::rc::Rc::new(Meters::new().expect("meters")),
        phase_rx,
    });
    (env, phase_tx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_guard_counts_live_sessions() {
        let meters = std::rc::Rc::new(Meters::new().expect("meters"));
        let first = meters.session_guard();
        let second = meters.session_guard();
        assert_eq!(meters.live_sessions(), 2);
        drop(first);
        assert_eq!(meters.live_sessions(), 1);
        drop(second);
        assert_eq!(meters.live_sessions(), 0);
    }

    #[tokio::test]
    async fn stopped_returns_on_stop_or_when_the_sender_goes() {
        let (phase_tx, mut phase_rx) = watch::channel(Phase::Ramp);
        phase_tx.send_replace(Phase::Steady);
        phase_tx.send_replace(Phase::Stop);
        stopped(&mut phase_rx).await;

        let (phase_tx, mut phase_rx) = watch::channel(Phase::Ramp);
        drop(phase_tx);
        stopped(&mut phase_rx).await;
    }

    #[test]
    fn clocks_advance() {
        let clock = Clock::new();
        assert!(clock.unix_micros() > 1_600_000_000_000_000);
        let before = clock.mono_micros();
        std::thread::sleep(Duration::from_millis(2));
        assert!(clock.mono_micros() >= before + 2_000);
    }
}
