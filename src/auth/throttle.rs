//! Login throttling. Two limits, both over a sliding window:
//! - failures for one username from one client address (guessing one account's password), refused for that pair
//!   only, so an attacker elsewhere cannot lock the real user out;
//! - failures from one client address across usernames (spraying one password over many accounts).
//!
//! Successful logins are never counted, so a busy address (a NAT, a test rig) logging in correctly is never slowed
//! down. Both tables are bounded: each key keeps at most its limit of timestamps, and at most `max_tracked` keys
//! are kept (past that a new key is not recorded, and a warning says so: memory stays bounded, the per-address
//! limit still holds for addresses already tracked).

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;

use crate::clock::EpochMs;

/// A refused attempt, with when the client may try again and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    pub retry_after: Duration,
    /// The whole address is throttled, not one account from it.
    pub per_address: bool,
}

/// The limits (`[throttle]` in the config).
#[derive(Clone, Copy, Debug)]
pub struct ThrottleLimits {
    pub max_failures: u32,
    pub max_failures_per_address: u32,
    pub window: Duration,
    pub max_tracked: usize,
}

pub struct Throttle {
    limits: ThrottleLimits,
    per_account: DashMap<(String, IpAddr), VecDeque<EpochMs>>,
    per_address: DashMap<IpAddr, VecDeque<EpochMs>>,
    last_full_warning: AtomicU64,
}

/// Failures still in the window; `Some(retry_after)` once `limit` of them are.
fn over(failures: &mut VecDeque<EpochMs>, limit: usize, window_ms: u64, now: EpochMs) -> Option<Duration> {
    while failures.front().is_some_and(|t| now >= t + window_ms) {
        failures.pop_front();
    }
    (failures.len() >= limit).then(|| {
        let oldest = failures.front().copied().unwrap_or(now);
        Duration::from_millis((oldest + window_ms).saturating_sub(now))
    })
}

impl Throttle {
    pub fn new(limits: ThrottleLimits) -> Self {
        Self { limits, per_account: DashMap::new(), per_address: DashMap::new(), last_full_warning: AtomicU64::new(0) }
    }

    fn key(username: &str, ip: IpAddr) -> (String, IpAddr) {
        (username.trim().to_lowercase(), ip)
    }

    fn window_ms(&self) -> u64 {
        self.limits.window.as_millis() as u64
    }

    /// Whether an attempt may go ahead now.
    pub fn check(&self, username: &str, ip: IpAddr, now: EpochMs) -> Result<(), Throttled> {
        let window = self.window_ms();
        if let Some(mut failures) = self.per_address.get_mut(&ip)
            && let Some(retry_after) = over(&mut failures, self.limits.max_failures_per_address as usize, window, now)
        {
            return Err(Throttled { retry_after, per_address: true });
        }
        if let Some(mut failures) = self.per_account.get_mut(&Self::key(username, ip))
            && let Some(retry_after) = over(&mut failures, self.limits.max_failures as usize, window, now)
        {
            return Err(Throttled { retry_after, per_address: false });
        }
        Ok(())
    }

    pub fn record_failure(&self, username: &str, ip: IpAddr, now: EpochMs) {
        let key = Self::key(username, ip);
        self.push(&self.per_account, key, self.limits.max_failures as usize, now);
        self.push(&self.per_address, ip, self.limits.max_failures_per_address as usize, now);
    }

    fn push<K: std::hash::Hash + Eq>(&self, table: &DashMap<K, VecDeque<EpochMs>>, key: K, keep: usize, now: EpochMs) {
        if !table.contains_key(&key) && table.len() >= self.limits.max_tracked {
            let last = self.last_full_warning.swap(now, Ordering::Relaxed);
            if now.saturating_sub(last) > 60_000 {
                tracing::warn!(max_tracked = self.limits.max_tracked, "throttle table full: new keys not recorded");
            }
            return;
        }
        let mut failures = table.entry(key).or_default();
        failures.push_back(now);
        while failures.len() > keep.max(1) {
            failures.pop_front();
        }
    }

    /// A success clears the account's failures from that address (not the address's: a sprayer who guesses one
    /// password right stays throttled for the rest).
    pub fn record_success(&self, username: &str, ip: IpAddr) {
        self.per_account.remove(&Self::key(username, ip));
    }

    /// Forgets windows that have passed; called by the sweeper so the tables do not keep stale keys.
    pub fn sweep(&self, now: EpochMs) {
        let window = self.window_ms();
        self.per_account.retain(|_, v| v.back().is_some_and(|t| now < t + window));
        self.per_address.retain(|_, v| v.back().is_some_and(|t| now < t + window));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    const OTHER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

    fn throttle(max_failures: u32, per_address: u32, max_tracked: usize) -> Throttle {
        Throttle::new(ThrottleLimits {
            max_failures,
            max_failures_per_address: per_address,
            window: Duration::from_secs(60),
            max_tracked,
        })
    }

    #[test]
    fn locks_after_max_failures_and_reopens_after_the_window() {
        let t = throttle(3, 100, 1000);
        for i in 0..3 {
            assert!(t.check("alice", IP, i).is_ok());
            t.record_failure("Alice", IP, i);
        }
        let locked = Throttled { retry_after: Duration::from_millis(59_990), per_address: false };
        assert_eq!(t.check("alice", IP, 10), Err(locked));
        assert!(t.check("alice", OTHER, 10).is_ok(), "another address is not locked out");
        assert!(t.check("bob", IP, 10).is_ok(), "another user is not locked out");
        assert!(t.check("alice", IP, 60_000).is_ok(), "the first failure has left the window");
    }

    #[test]
    fn success_clears_the_count() {
        let t = throttle(2, 100, 1000);
        t.record_failure("alice", IP, 0);
        t.record_success("alice", IP);
        t.record_failure("alice", IP, 1);
        assert!(t.check("alice", IP, 2).is_ok());
        t.sweep(120_000);
        assert!(t.per_account.is_empty() && t.per_address.is_empty());
    }

    /// One address spraying one password over many usernames is stopped for every username, and only that address.
    #[test]
    fn an_address_spraying_usernames_is_throttled_as_a_whole() {
        let t = throttle(10, 20, 1000);
        for i in 0..20 {
            assert!(t.check(&format!("user{i}"), IP, i).is_ok());
            t.record_failure(&format!("user{i}"), IP, i);
        }
        assert!(t.check("someone-else", IP, 30).is_err_and(|e| e.per_address));
        assert!(t.check("someone-else", OTHER, 30).is_ok());
    }

    /// Memory stays bounded: at most `max_tracked` keys, at most the limit of timestamps per key.
    #[test]
    fn the_tables_are_bounded() {
        let t = throttle(3, 1_000_000, 50);
        for i in 0..500 {
            t.record_failure(&format!("user{i}"), IP, i);
        }
        for i in 0..100 {
            t.record_failure("alice", OTHER, i);
        }
        assert!(t.per_account.len() <= 50, "{}", t.per_account.len());
        assert!(t.per_account.iter().all(|e| e.value().len() <= 3));
    }
}
