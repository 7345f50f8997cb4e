//! Rate limits and admission control (DESIGN section 4, steps 3 and 4).
//!
//! - [`RateLimit`]: a token bucket (governor's GCRA) for one connection's sends, typing
//!   or presence subscriptions, and [`UserRateLimits`], the same keyed by user so a user
//!   cannot multiply their budget by opening devices.
//! - [`Strikes`]: a connection that keeps hitting its limits is abusive: after
//!   `rate_limits.abuse_strikes` refusals within `rate_limits.abuse_window_ms` it is
//!   closed with 4003.
//! - [`Admission`]: what an upgrade must pass before any actor or socket state exists:
//!   the accept-rate budget, the per-IP connection limit and the memory high-water mark
//!   (the connection cap and draining are checked next to it in the gateway). Refusals
//!   are HTTP 503 with `Retry-After`.
//!
//! Every refusal is counted in `/metrics` (`switchboard_rate_limited_total{kind}`,
//! `switchboard_upgrades_refused_total{reason}`).

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use switchboard_proto::ids::UserId;

use crate::config::GatewayConfig;

fn quota(per_sec: f64, burst: u32) -> Quota {
    // The configuration is validated (positive, finite); the fallbacks only guard the
    // arithmetic.
    let period = Duration::try_from_secs_f64(1.0 / per_sec).unwrap_or(Duration::from_secs(1));
    let quota = Quota::with_period(period).unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN));
    quota.allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN))
}

/// Milliseconds until a refused request may succeed (at least 1).
fn wait_ms(not_until: &governor::NotUntil<<DefaultClock as Clock>::Instant>) -> u64 {
    (not_until.wait_time_from(DefaultClock::default().now()).as_millis() as u64).max(1)
}

/// A token bucket for one connection.
pub struct RateLimit(DefaultDirectRateLimiter);

impl std::fmt::Debug for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RateLimit")
    }
}

impl RateLimit {
    /// `per_sec` sustained, `burst` at once.
    pub fn new(per_sec: f64, burst: u32) -> Self {
        Self(RateLimiter::direct(quota(per_sec, burst)))
    }

    /// `Ok` if a token was taken, else the wait in ms until one is available.
    pub fn check(&self) -> Result<(), u64> {
        self.0.check().map_err(|not_until| wait_ms(&not_until))
    }
}

/// Token buckets keyed by user, shared by all of a user's connections on this node.
pub struct UserRateLimits(DefaultKeyedRateLimiter<UserId>);

impl std::fmt::Debug for UserRateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRateLimits").field("users", &self.0.len()).finish()
    }
}

impl UserRateLimits {
    pub fn new(per_sec: f64, burst: u32) -> Self {
        Self(RateLimiter::keyed(quota(per_sec, burst)))
    }

    /// `Ok` if `user` had a token, else the wait in ms.
    pub fn check(&self, user: &UserId) -> Result<(), u64> {
        self.0.check_key(user).map_err(|not_until| wait_ms(&not_until))
    }

    /// Forgets users whose buckets are full again (they would behave as new ones), so
    /// the map holds only recently active users. Called periodically.
    pub fn forget_idle(&self) {
        self.0.retain_recent();
        self.0.shrink_to_fit();
    }
}

/// Refusals of one connection within a sliding window, for 4003.
#[derive(Debug, Default)]
pub struct Strikes {
    count: AtomicU32,
    /// Start of the current window, ms on the caller's clock.
    window_start_ms: AtomicU64,
}

impl Strikes {
    /// Records a refusal at `now_ms`; `true` when the connection has now reached `max`
    /// refusals within `window_ms` and must be closed.
    pub fn strike(&self, now_ms: u64, max: u32, window_ms: u64) -> bool {
        let start = self.window_start_ms.load(Ordering::Relaxed);
        if now_ms.saturating_sub(start) > window_ms {
            self.window_start_ms.store(now_ms, Ordering::Relaxed);
            self.count.store(0, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed) + 1 >= max
    }
}

/// Why an upgrade is refused before it happens (all 503 with `Retry-After`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    AcceptRate,
    PerIp,
    Memory,
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::AcceptRate => "accept_rate",
            Refusal::PerIp => "per_ip",
            Refusal::Memory => "memory",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Refusal::AcceptRate => "too many new connections right now; retry shortly",
            Refusal::PerIp => "too many connections from this address",
            Refusal::Memory => "server is shedding load (memory); retry shortly",
        }
    }
}

/// The admission checks of the upgrade.
#[derive(Debug)]
pub struct Admission {
    accepts: RateLimit,
    max_per_ip: usize,
    per_ip: DashMap<IpAddr, usize>,
    memory_high_water: u64,
    under_pressure: AtomicBool,
}

impl Admission {
    pub fn new(config: &GatewayConfig) -> Self {
        Self {
            accepts: RateLimit::new(config.accepts_per_sec, config.accepts_burst),
            max_per_ip: config.max_connections_per_ip,
            per_ip: DashMap::new(),
            memory_high_water: config.memory_high_water_bytes,
            under_pressure: AtomicBool::new(false),
        }
    }

    /// Admits one upgrade from `ip`: on success the returned guard counts the
    /// connection against its address until it is dropped.
    pub fn admit(self: &Arc<Self>, ip: Option<IpAddr>) -> Result<IpSlot, Refusal> {
        if self.under_memory_pressure() {
            return Err(Refusal::Memory);
        }
        if self.accepts.check().is_err() {
            return Err(Refusal::AcceptRate);
        }
        let Some(ip) = ip.filter(|_| self.max_per_ip > 0) else {
            return Ok(IpSlot { admission: None, ip: None });
        };
        let mut count = self.per_ip.entry(ip).or_insert(0);
        if *count >= self.max_per_ip {
            return Err(Refusal::PerIp);
        }
        *count += 1;
        Ok(IpSlot { admission: Some(self.clone()), ip: Some(ip) })
    }

    pub fn under_memory_pressure(&self) -> bool {
        self.under_pressure.load(Ordering::Relaxed)
    }

    /// Samples resident memory and updates the pressure flag (called periodically).
    pub fn sample_memory(&self) {
        let Some(rss) = resident_bytes() else { return };
        metrics::gauge!("switchboard_memory_resident_bytes").set(rss as f64);
        if self.memory_high_water == 0 {
            return;
        }
        let pressure = rss >= self.memory_high_water;
        if self.under_pressure.swap(pressure, Ordering::Relaxed) != pressure {
            tracing::warn!(rss, high_water = self.memory_high_water, pressure, "memory pressure changed");
        }
        metrics::gauge!("switchboard_memory_pressure").set(if pressure { 1.0 } else { 0.0 });
    }
}

/// One admitted connection's place in its address's count; released on drop.
#[derive(Debug)]
pub struct IpSlot {
    admission: Option<Arc<Admission>>,
    ip: Option<IpAddr>,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let (Some(admission), Some(ip)) = (&self.admission, self.ip) else { return };
        if let Some(mut count) = admission.per_ip.get_mut(&ip) {
            *count = count.saturating_sub(1);
        }
        admission.per_ip.remove_if(&ip, |_, count| *count == 0);
    }
}

/// This process's resident set size, from `/proc/self/statm` (Linux).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_the_burst_then_refuses_with_a_wait() {
        let limit = RateLimit::new(1.0, 3);
        for _ in 0..3 {
            assert!(limit.check().is_ok());
        }
        let wait = limit.check().unwrap_err();
        assert!((1..=1000).contains(&wait), "{wait}");
    }

    #[test]
    fn user_buckets_are_separate() {
        let limits = UserRateLimits::new(1.0, 1);
        let (alice, bob) = (UserId::new("alice").unwrap(), UserId::new("bob").unwrap());
        assert!(limits.check(&alice).is_ok());
        assert!(limits.check(&alice).is_err());
        assert!(limits.check(&bob).is_ok());
    }

    #[test]
    fn strikes_close_within_the_window_and_reset_after_it() {
        let strikes = Strikes::default();
        assert!(!strikes.strike(1_000, 3, 100));
        assert!(!strikes.strike(1_050, 3, 100));
        assert!(strikes.strike(1_090, 3, 100));
        assert!(!strikes.strike(5_000, 3, 100));
    }

    #[test]
    fn per_ip_slots_are_counted_and_released() {
        let config = GatewayConfig { max_connections_per_ip: 2, ..GatewayConfig::default() };
        let admission = Arc::new(Admission::new(&config));
        let ip = Some(IpAddr::from([127, 0, 0, 2]));
        let first = admission.admit(ip).unwrap();
        let _second = admission.admit(ip).unwrap();
        assert_eq!(admission.admit(ip).unwrap_err(), Refusal::PerIp);
        assert!(admission.admit(Some(IpAddr::from([127, 0, 0, 3]))).is_ok());
        drop(first);
        assert!(admission.admit(ip).is_ok());
    }

    #[test]
    fn accept_rate_budget_refuses_past_the_burst() {
        let config = GatewayConfig { accepts_per_sec: 1.0, accepts_burst: 2, ..GatewayConfig::default() };
        let admission = Arc::new(Admission::new(&config));
        assert!(admission.admit(None).is_ok());
        assert!(admission.admit(None).is_ok());
        assert_eq!(admission.admit(None).unwrap_err(), Refusal::AcceptRate);
    }
}
