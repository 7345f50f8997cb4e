//! A circuit breaker: fail fast while the database is down instead of letting every
//! caller wait for its timeout.
//!
//! # States
//!
//! ```text
//!            N consecutive failures                 cool-down elapsed, one call
//!  Closed ─────────────────────────────▶ Open ─────────────────────────────▶ HalfOpen
//!    ▲                                    ▲                                     │
//!    │          probe succeeded           │         probe failed                │
//!    └────────────────────────────────────┼─────────────────────────────────────┤
//!                                         └─────────────────────────────────────┘
//! ```
//!
//! - **Closed**: every call runs. A success resets the failure count; a failure (a
//!   timeout, a lost connection, the database saying it cannot serve) counts, and
//!   [`BreakerOptions::failure_threshold`] failures in a row open the breaker.
//! - **Open**: calls are refused at once (the store answers `unavailable`) until
//!   [`BreakerOptions::cool_down`] has passed since it opened.
//! - **HalfOpen**: exactly one call (the probe) runs; the others are still refused. The
//!   probe's success closes the breaker, its failure opens it for another cool-down. A
//!   probe that is cancelled before it reports frees the slot for the next caller.
//!
//! Answers that prove the database is up (a sequence conflict, a bad row) are not
//! failures: the caller decides which outcome counts via [`Permit::success`] and
//! [`Permit::failure`].
//!
//! The state sits behind a `std::sync::Mutex` held for a few instructions, never across
//! an `.await`. Time comes from a [`Clock`] so the state machine is tested without
//! sleeping.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Where the breaker reads the time (a trait so tests can move time by hand).
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    fn now(&self) -> Instant;
}

/// The monotonic system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// Thresholds of a [`CircuitBreaker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerOptions {
    /// Consecutive failed calls that open the breaker. Default: 5.
    pub failure_threshold: u32,
    /// How long an open breaker refuses calls before it lets one probe through.
    /// Default: 5 s.
    pub cool_down: Duration,
}

impl Default for BreakerOptions {
    fn default() -> Self {
        Self { failure_threshold: 5, cool_down: Duration::from_secs(5) }
    }
}

/// The externally visible state (the value of `switchboard_store_breaker_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

impl BreakerState {
    /// A lowercase name for logs.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Inner {
    Closed { consecutive_failures: u32 },
    Open { since: Instant },
    HalfOpen { probe_in_flight: bool },
}

/// Why a call was refused: the breaker is open (or half-open with its probe running).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected {
    /// Time left until the next probe may run (zero while a probe is in flight).
    pub retry_in: Duration,
}

/// The breaker. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct CircuitBreaker {
    name: &'static str,
    options: BreakerOptions,
    clock: Arc<dyn Clock>,
    inner: Mutex<Inner>,
}

impl CircuitBreaker {
    /// A closed breaker; `name` labels its metrics (`store`).
    #[must_use]
    pub fn new(name: &'static str, options: BreakerOptions, clock: Arc<dyn Clock>) -> Self {
        let breaker = Self { name, options, clock, inner: Mutex::new(Inner::Closed { consecutive_failures: 0 }) };
        breaker.publish(BreakerState::Closed);
        breaker
    }

    /// The current state (an open breaker whose cool-down has passed still says open
    /// until a call probes).
    #[must_use]
    pub fn state(&self) -> BreakerState {
        match *self.lock() {
            Inner::Closed { .. } => BreakerState::Closed,
            Inner::Open { .. } => BreakerState::Open,
            Inner::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Asks to run one call: a [`Permit`] to report its outcome on, or [`Rejected`].
    ///
    /// # Errors
    ///
    /// [`Rejected`] while open, or half-open with the probe in flight.
    pub fn try_acquire(&self) -> Result<Permit<'_>, Rejected> {
        let mut inner = self.lock();
        match *inner {
            Inner::Closed { .. } => Ok(Permit { breaker: self, probe: false, reported: false }),
            Inner::Open { since } => {
                let elapsed = self.clock.now().saturating_duration_since(since);
                if elapsed < self.options.cool_down {
                    return Err(Rejected { retry_in: self.options.cool_down - elapsed });
                }
                *inner = Inner::HalfOpen { probe_in_flight: true };
                drop(inner);
                self.transition(BreakerState::HalfOpen);
                Ok(Permit { breaker: self, probe: true, reported: false })
            }
            Inner::HalfOpen { probe_in_flight: true } => Err(Rejected { retry_in: Duration::ZERO }),
            Inner::HalfOpen { probe_in_flight: false } => {
                *inner = Inner::HalfOpen { probe_in_flight: true };
                Ok(Permit { breaker: self, probe: true, reported: false })
            }
        }
    }

    fn on_success(&self) {
        let mut inner = self.lock();
        let was = *inner;
        *inner = Inner::Closed { consecutive_failures: 0 };
        drop(inner);
        if !matches!(was, Inner::Closed { .. }) {
            self.transition(BreakerState::Closed);
        }
    }

    fn on_failure(&self, probe: bool) {
        let mut inner = self.lock();
        let opened = match *inner {
            Inner::Closed { consecutive_failures } => {
                let consecutive_failures = consecutive_failures.saturating_add(1);
                if consecutive_failures >= self.options.failure_threshold {
                    *inner = Inner::Open { since: self.clock.now() };
                    true
                } else {
                    *inner = Inner::Closed { consecutive_failures };
                    false
                }
            }
            // Only the probe's failure reopens; a straggler that started while closed
            // and fails now says nothing about the database after the cool-down.
            Inner::HalfOpen { .. } if probe => {
                *inner = Inner::Open { since: self.clock.now() };
                true
            }
            Inner::HalfOpen { .. } | Inner::Open { .. } => false,
        };
        drop(inner);
        if opened {
            self.transition(BreakerState::Open);
        }
    }

    fn on_abandoned_probe(&self) {
        let mut inner = self.lock();
        if let Inner::HalfOpen { probe_in_flight: true } = *inner {
            *inner = Inner::HalfOpen { probe_in_flight: false };
        }
    }

    fn transition(&self, state: BreakerState) {
        match state {
            BreakerState::Open => tracing::warn!(
                store = self.name,
                cool_down_ms = self.options.cool_down.as_millis() as u64,
                "store circuit breaker opened: calls fail fast until a probe succeeds"
            ),
            BreakerState::HalfOpen => tracing::info!(store = self.name, "store circuit breaker half-open: probing"),
            BreakerState::Closed => {
                tracing::info!(store = self.name, "store circuit breaker closed: store answers again")
            }
        }
        ::metrics::counter!("switchboard_store_breaker_transitions_total", "store" => self.name, "to" => state.as_str())
            .increment(1);
        self.publish(state);
    }

    fn publish(&self, state: BreakerState) {
        ::metrics::gauge!("switchboard_store_breaker_state", "store" => self.name).set(f64::from(state as u8));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The state is a plain value, valid even if a holder panicked.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The right to run one call. Report its outcome with [`Permit::success`] or
/// [`Permit::failure`]; dropping it unreported (a cancelled call) counts as neither.
#[derive(Debug)]
#[must_use = "report the outcome of the call on the permit"]
pub struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    probe: bool,
    reported: bool,
}

impl Permit<'_> {
    /// The call reached the database and it answered.
    pub fn success(mut self) {
        self.reported = true;
        self.breaker.on_success();
    }

    /// The call failed in a way that says the database is down or too slow.
    pub fn failure(mut self) {
        self.reported = true;
        self.breaker.on_failure(self.probe);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.probe && !self.reported {
            self.breaker.on_abandoned_probe();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct ManualClock {
        start: Instant,
        offset: Mutex<Duration>,
    }

    impl ManualClock {
        fn new() -> Arc<Self> {
            Arc::new(Self { start: Instant::now(), offset: Mutex::new(Duration::ZERO) })
        }

        fn advance(&self, by: Duration) {
            *self.offset.lock().expect("clock") += by;
        }
    }

    impl Clock for ManualClock {
        fn now(&self) -> Instant {
            self.start + *self.offset.lock().expect("clock")
        }
    }

    fn breaker(clock: &Arc<ManualClock>) -> CircuitBreaker {
        let options = BreakerOptions { failure_threshold: 3, cool_down: Duration::from_secs(10) };
        CircuitBreaker::new("test", options, Arc::clone(clock) as Arc<dyn Clock>)
    }

    fn fail(breaker: &CircuitBreaker, times: u32) {
        for _ in 0..times {
            breaker.try_acquire().expect("permit").failure();
        }
    }

    #[test]
    fn opens_after_consecutive_failures_only() {
        let clock = ManualClock::new();
        let breaker = breaker(&clock);
        fail(&breaker, 2);
        breaker.try_acquire().expect("permit").success();
        fail(&breaker, 2);
        assert_eq!(breaker.state(), BreakerState::Closed, "a success resets the count");
        fail(&breaker, 1);
        assert_eq!(breaker.state(), BreakerState::Open);
        let rejected = breaker.try_acquire().expect_err("open");
        assert_eq!(rejected.retry_in, Duration::from_secs(10));
    }

    #[test]
    fn half_opens_after_cool_down_with_a_single_probe() {
        let clock = ManualClock::new();
        let breaker = breaker(&clock);
        fail(&breaker, 3);
        clock.advance(Duration::from_secs(9));
        assert_eq!(breaker.try_acquire().expect_err("still open").retry_in, Duration::from_secs(1));
        clock.advance(Duration::from_secs(1));
        let probe = breaker.try_acquire().expect("probe");
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        assert!(breaker.try_acquire().is_err(), "only one probe at a time");
        probe.success();
        assert_eq!(breaker.state(), BreakerState::Closed);
        breaker.try_acquire().expect("closed again").success();
    }

    #[test]
    fn failed_probe_reopens_for_a_full_cool_down() {
        let clock = ManualClock::new();
        let breaker = breaker(&clock);
        fail(&breaker, 3);
        clock.advance(Duration::from_secs(10));
        breaker.try_acquire().expect("probe").failure();
        assert_eq!(breaker.state(), BreakerState::Open);
        clock.advance(Duration::from_secs(5));
        assert!(breaker.try_acquire().is_err());
        clock.advance(Duration::from_secs(5));
        breaker.try_acquire().expect("next probe").success();
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[test]
    fn abandoned_probe_frees_the_slot() {
        let clock = ManualClock::new();
        let breaker = breaker(&clock);
        fail(&breaker, 3);
        clock.advance(Duration::from_secs(10));
        drop(breaker.try_acquire().expect("probe"));
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        breaker.try_acquire().expect("another probe").success();
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[test]
    fn stragglers_do_not_reopen_a_half_open_breaker() {
        let clock = ManualClock::new();
        let breaker = breaker(&clock);
        let straggler = breaker.try_acquire().expect("permit while closed");
        fail(&breaker, 3);
        clock.advance(Duration::from_secs(10));
        let probe = breaker.try_acquire().expect("probe");
        straggler.failure();
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        probe.success();
        assert_eq!(breaker.state(), BreakerState::Closed);
    }
}
