//! Expiration policies as pure functions of timestamps, so every read can check expiry (invariant 4: an expired
//! ticket is never accepted, whether or not the sweeper has run).

use std::time::Duration;

use crate::clock::EpochMs;

/// Lifetimes of each ticket kind (defaults follow Apereo CAS: ST/PT 10 s, TGT 8 h hard and 2 h idle).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpiryPolicy {
    pub st_ttl: Duration,
    pub pt_ttl: Duration,
    pub tgt_max_lifetime: Duration,
    pub tgt_idle_timeout: Duration,
    pub lt_ttl: Duration,
}

impl Default for ExpiryPolicy {
    fn default() -> Self {
        Self {
            st_ttl: Duration::from_secs(10),
            pt_ttl: Duration::from_secs(10),
            tgt_max_lifetime: Duration::from_secs(8 * 3600),
            tgt_idle_timeout: Duration::from_secs(2 * 3600),
            lt_ttl: Duration::from_secs(600),
        }
    }
}

impl ExpiryPolicy {
    /// True once `ttl` has fully passed since `since`. A ticket is valid up to, not including, its deadline.
    pub fn older_than(since: EpochMs, ttl: Duration, now: EpochMs) -> bool {
        now >= since.saturating_add(ttl.as_millis() as u64)
    }

    pub fn tgt_expired(&self, created: EpochMs, last_used: EpochMs, now: EpochMs) -> bool {
        Self::older_than(created, self.tgt_max_lifetime, now) || Self::older_than(last_used, self.tgt_idle_timeout, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_is_exclusive() {
        let ttl = Duration::from_secs(10);
        assert!(!ExpiryPolicy::older_than(1_000, ttl, 10_999));
        assert!(ExpiryPolicy::older_than(1_000, ttl, 11_000));
    }

    #[test]
    fn tgt_dies_by_idle_or_by_hard_limit() {
        let p = ExpiryPolicy::default();
        let h = 3_600_000;
        assert!(!p.tgt_expired(0, h, 2 * h), "used an hour ago");
        assert!(p.tgt_expired(0, 0, 2 * h), "idle two hours");
        assert!(p.tgt_expired(0, 8 * h - 1, 8 * h), "eight hours old though just used");
    }
}
