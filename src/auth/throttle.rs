//! Login throttling: after too many failures for one username from one client address, further attempts are refused
//! until the window has passed. Successful logins are never counted, so a busy address (a NAT, a test rig) logging in
//! correctly is never slowed down.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::time::Duration;

use dashmap::DashMap;

use crate::clock::EpochMs;

/// A refused attempt, with when the client may try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    pub retry_after: Duration,
}

pub struct Throttle {
    max_failures: usize,
    window_ms: u64,
    failures: DashMap<(String, IpAddr), VecDeque<EpochMs>>,
}

impl Throttle {
    pub fn new(max_failures: u32, window: Duration) -> Self {
        Self { max_failures: max_failures as usize, window_ms: window.as_millis() as u64, failures: DashMap::new() }
    }

    fn key(username: &str, ip: IpAddr) -> (String, IpAddr) {
        (username.trim().to_lowercase(), ip)
    }

    /// Whether an attempt may go ahead now.
    pub fn check(&self, username: &str, ip: IpAddr, now: EpochMs) -> Result<(), Throttled> {
        let Some(mut entry) = self.failures.get_mut(&Self::key(username, ip)) else { return Ok(()) };
        let window = self.window_ms;
        entry.retain(|t| now < t + window);
        if entry.len() < self.max_failures {
            return Ok(());
        }
        let oldest = entry.front().copied().unwrap_or(now);
        Err(Throttled { retry_after: Duration::from_millis((oldest + window).saturating_sub(now)) })
    }

    pub fn record_failure(&self, username: &str, ip: IpAddr, now: EpochMs) {
        self.failures.entry(Self::key(username, ip)).or_default().push_back(now);
    }

    pub fn record_success(&self, username: &str, ip: IpAddr) {
        self.failures.remove(&Self::key(username, ip));
    }

    /// Forgets windows that have passed; called by the sweeper so the table cannot grow without bound.
    pub fn sweep(&self, now: EpochMs) {
        let window = self.window_ms;
        self.failures.retain(|_, v| v.back().is_some_and(|t| now < t + window));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    const OTHER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

    #[test]
    fn locks_after_max_failures_and_reopens_after_the_window() {
        let t = Throttle::new(3, Duration::from_secs(60));
        for i in 0..3 {
            assert!(t.check("alice", IP, i).is_ok());
            t.record_failure("Alice", IP, i);
        }
        assert_eq!(t.check("alice", IP, 10), Err(Throttled { retry_after: Duration::from_millis(59_990) }));
        assert!(t.check("alice", OTHER, 10).is_ok(), "another address is not locked out");
        assert!(t.check("bob", IP, 10).is_ok(), "another user is not locked out");
        assert!(t.check("alice", IP, 60_000).is_ok(), "the first failure has left the window");
    }

    #[test]
    fn success_clears_the_count() {
        let t = Throttle::new(2, Duration::from_secs(60));
        t.record_failure("alice", IP, 0);
        t.record_success("alice", IP);
        t.record_failure("alice", IP, 1);
        assert!(t.check("alice", IP, 2).is_ok());
        t.sweep(120_000);
        assert!(t.failures.is_empty());
    }
}
