//! Per-device rate limiting: a token bucket per vehicle (GCRA, from `governor`).

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use fleetpipe_model::VehicleId;
use governor::clock::Clock as _;
use governor::{DefaultKeyedRateLimiter, Quota};
use serde::Deserialize;

/// `ingest.rate_limit`: how many pings per second one vehicle may send.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Turn rate limiting on.
    pub enabled: bool,
    /// Sustained pings per second per vehicle.
    pub pings_per_second: u32,
    /// Bucket size: pings a vehicle may send at once (e.g. a phone's
    /// offline backlog); keep it at least `ingest.limits.max_batch`.
    pub burst: u32,
}

impl RateLimitConfig {
    const fn defaults() -> Self {
        Self {
            enabled: true,
            pings_per_second: 50,
            burst: 2000,
        }
    }
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self::defaults()
    }
}

/// Shared per-vehicle limiter; cheap to clone.
#[derive(Clone, Debug)]
pub struct RateLimiter {
    inner: Option<Arc<DefaultKeyedRateLimiter<VehicleId>>>,
}

impl RateLimiter {
    /// A limiter for `config` (a no-op when disabled).
    pub fn new(config: &RateLimitConfig) -> Self {
        let inner = match (
            config.enabled,
            NonZeroU32::new(config.pings_per_second),
            NonZeroU32::new(config.burst),
        ) {
            (true, Some(rate), Some(burst)) => Some(Arc::new(governor::RateLimiter::dashmap(
                Quota::per_second(rate).allow_burst(burst),
            ))),
            _ => None,
        };
        Self { inner }
    }

    /// Takes one token for `vehicle`; `false` means over the limit.
    pub fn check(&self, vehicle: &VehicleId) -> bool {
        self.take(vehicle).is_ok()
    }

    /// Takes one token for `vehicle`; over the limit, says how long until
    /// the next one.
    pub fn take(&self, vehicle: &VehicleId) -> Result<(), Duration> {
        let Some(limiter) = &self.inner else {
            return Ok(());
        };
        limiter
            .check_key(vehicle)
            .map_err(|not_until| not_until.wait_time_from(limiter.clock().now()))
    }

    /// Forgets vehicles whose bucket is full again, so memory follows the
    /// active fleet rather than every vehicle ever seen. Call periodically.
    pub fn forget_idle(&self) {
        if let Some(limiter) = &self.inner {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refuse_per_vehicle() {
        let limiter = RateLimiter::new(&RateLimitConfig {
            enabled: true,
            pings_per_second: 1,
            burst: 3,
        });
        let a = VehicleId::parse("a").unwrap_or_else(|e| panic!("{e}"));
        let b = VehicleId::parse("b").unwrap_or_else(|e| panic!("{e}"));
        assert!((0..3).all(|_| limiter.check(&a)));
        assert!(!limiter.check(&a));
        assert!(limiter.check(&b), "another vehicle has its own bucket");
        limiter.forget_idle();
    }

    #[test]
    fn disabled_never_refuses() {
        let limiter = RateLimiter::new(&RateLimitConfig {
            enabled: false,
            ..RateLimitConfig::default()
        });
        let a = VehicleId::parse("a").unwrap_or_else(|e| panic!("{e}"));
        assert!((0..10_000).all(|_| limiter.check(&a)));
    }
}
