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
    /// Whether a login may ask to be remembered (`tickets.remember_me`), and how long such a session lives.
    pub remember_me: bool,
    pub remember_me_max_lifetime: Duration,
    pub remember_me_idle_timeout: Duration,
}

impl Default for ExpiryPolicy {
    fn default() -> Self {
        Self {
            st_ttl: Duration::from_secs(10),
            pt_ttl: Duration::from_secs(10),
            tgt_max_lifetime: Duration::from_secs(8 * 3600),
            tgt_idle_timeout: Duration::from_secs(2 * 3600),
            lt_ttl: Duration::from_secs(600),
            remember_me: false,
            remember_me_max_lifetime: Duration::from_secs(14 * 24 * 3600),
            remember_me_idle_timeout: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

impl ExpiryPolicy {
    /// True once `ttl` has fully passed since `since`. A ticket is valid up to, not including, its deadline.
    pub fn older_than(since: EpochMs, ttl: Duration, now: EpochMs) -> bool {
        now >= since.saturating_add(ttl.as_millis() as u64)
    }

    /// A remembered session (`long_term`) has limits of its own, when the configuration allows them.
    pub fn tgt_expired(&self, created: EpochMs, last_used: EpochMs, long_term: bool, now: EpochMs) -> bool {
        let (max, idle) = if long_term && self.remember_me {
            (self.remember_me_max_lifetime, self.remember_me_idle_timeout)
        } else {
            (self.tgt_max_lifetime, self.tgt_idle_timeout)
        };
        Self::older_than(created, max, now) || Self::older_than(last_used, idle, now)
    }

    /// The longest a TGT may live: what its tombstone must outlast.
    pub fn longest_tgt_lifetime(&self) -> Duration {
        if self.remember_me { self.tgt_max_lifetime.max(self.remember_me_max_lifetime) } else { self.tgt_max_lifetime }
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
        assert!(!p.tgt_expired(0, h, false, 2 * h), "used an hour ago");
        assert!(p.tgt_expired(0, 0, false, 2 * h), "idle two hours");
        assert!(p.tgt_expired(0, 8 * h - 1, false, 8 * h), "eight hours old though just used");
        assert!(p.tgt_expired(0, 0, true, 2 * h), "remember-me not allowed: the usual limits");
        let p = ExpiryPolicy { remember_me: true, ..p };
        assert!(!p.tgt_expired(0, 8 * h - 1, true, 8 * h), "remembered: past the usual eight hours");
        assert!(p.tgt_expired(0, 0, true, 7 * 24 * h), "remembered, idle a week");
        assert!(p.tgt_expired(0, 14 * 24 * h - 1, true, 14 * 24 * h), "remembered, two weeks old");
        assert_eq!(p.longest_tgt_lifetime(), std::time::Duration::from_secs(14 * 24 * 3600));
    }
}
