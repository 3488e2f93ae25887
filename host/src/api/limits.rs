//! Rate limits at the edge: one budget per client address (checked before the token, so
//! a flood of guessed tokens is cut off too) and one per principal (after it). GCRA
//! buckets from `governor`; a request over budget is a 429 problem with `Retry-After`.
//! The first refusal of a key in each minute is audited as `api.rate_limited`; the rest
//! are only counted, so a flood cannot turn into a flood of audit writes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota};

/// How many requests per second each client may make, sustained; bursts of twice that
/// are absorbed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    /// Per client IP address, authenticated or not.
    pub per_ip: NonZeroU32,
    /// Per principal (token subject), across addresses.
    pub per_principal: NonZeroU32,
}

impl Default for RateLimits {
    /// 1,000/s per address and 200/s per principal: far above what a person or a
    /// well-behaved integration sends, low enough that one client cannot starve others.
    fn default() -> Self {
        Self {
            per_ip: NonZeroU32::new(1_000).unwrap_or(NonZeroU32::MIN),
            per_principal: NonZeroU32::new(200).unwrap_or(NonZeroU32::MIN),
        }
    }
}

/// How often an over-budget key is audited at most.
const AUDIT_EVERY: Duration = Duration::from_secs(60);
/// Forget idle keys (and audit marks) every this many checks.
const SWEEP_EVERY: u64 = 10_000;

/// The limiters of one API.
pub(super) struct Limiter {
    ip: DefaultKeyedRateLimiter<IpAddr>,
    principal: DefaultKeyedRateLimiter<String>,
    checks: AtomicU64,
    audited: Mutex<HashMap<String, Instant>>,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter").finish_non_exhaustive()
    }
}

/// A refusal: how long to wait, and whether this one should be audited.
pub(super) struct Limited {
    pub retry_after: Duration,
    pub audit: bool,
}

fn quota(per_second: NonZeroU32) -> Quota {
    let burst = per_second.saturating_mul(NonZeroU32::new(2).unwrap_or(NonZeroU32::MIN));
    Quota::per_second(per_second).allow_burst(burst)
}

impl Limiter {
    pub(super) fn new(limits: RateLimits) -> Self {
        Self {
            ip: DefaultKeyedRateLimiter::keyed(quota(limits.per_ip)),
            principal: DefaultKeyedRateLimiter::keyed(quota(limits.per_principal)),
            checks: AtomicU64::new(0),
            audited: Mutex::new(HashMap::new()),
        }
    }

    /// May one more request come from `ip`?
    pub(super) fn check_ip(&self, ip: IpAddr) -> Result<(), Limited> {
        self.sweep();
        match self.ip.check_key(&ip) {
            Ok(()) => Ok(()),
            Err(not_until) => Err(self.limited(
                format!("ip:{ip}"),
                not_until.wait_time_from(self.ip.clock().now()),
            )),
        }
    }

    /// May `subject` make one more request?
    pub(super) fn check_principal(&self, subject: &str) -> Result<(), Limited> {
        match self.principal.check_key(&subject.to_owned()) {
            Ok(()) => Ok(()),
            Err(not_until) => Err(self.limited(
                format!("user:{subject}"),
                not_until.wait_time_from(self.principal.clock().now()),
            )),
        }
    }

    fn limited(&self, key: String, wait: Duration) -> Limited {
        let now = Instant::now();
        let mut audited = self
            .audited
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let audit = audited
            .get(&key)
            .is_none_or(|last| now.duration_since(*last) >= AUDIT_EVERY);
        if audit {
            audited.insert(key, now);
        }
        Limited {
            retry_after: wait,
            audit,
        }
    }

    fn sweep(&self) {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY != SWEEP_EVERY - 1 {
            return;
        }
        self.ip.retain_recent();
        self.principal.retain_recent();
        let now = Instant::now();
        self.audited
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|_, last| now.duration_since(*last) < AUDIT_EVERY);
    }
}

/// Whole seconds to wait, at least one (`Retry-After` has no fractions).
pub(super) fn retry_after_secs(wait: Duration) -> u64 {
    u64::try_from(wait.as_nanos().div_ceil(1_000_000_000))
        .unwrap_or(u64::MAX)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_ip: u32, per_principal: u32) -> RateLimits {
        RateLimits {
            per_ip: NonZeroU32::new(per_ip).unwrap(),
            per_principal: NonZeroU32::new(per_principal).unwrap(),
        }
    }

    #[test]
    fn a_client_gets_its_burst_then_is_told_how_long_to_wait_and_others_are_unaffected() {
        let limiter = Limiter::new(limits(5, 2));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..10 {
            assert!(limiter.check_ip(a).is_ok(), "a burst of twice the rate");
        }
        let refused = limiter.check_ip(a).unwrap_err();
        assert!(
            refused.retry_after > Duration::ZERO && refused.retry_after <= Duration::from_secs(1)
        );
        assert!(refused.audit, "the first refusal is audited");
        assert!(
            !limiter.check_ip(a).unwrap_err().audit,
            "the next ones are not"
        );
        assert!(
            limiter.check_ip(b).is_ok(),
            "another address has its own budget"
        );

        for _ in 0..4 {
            assert!(limiter.check_principal("user_1").is_ok());
        }
        assert!(limiter.check_principal("user_1").is_err());
        assert!(limiter.check_principal("user_2").is_ok());
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1_500)), 2);
    }
}
