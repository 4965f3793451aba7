//! Counters of dropped cluster traffic, by reason, with at most one warning per reason per interval.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use super::seal::SealError;
use crate::clock::now_ms;

const WARN_EVERY_MS: u64 = 10_000;

#[derive(Default)]
pub struct DropCounters {
    pub bad_tag: AtomicU64,
    pub replayed: AtomicU64,
    pub stale: AtomicU64,
    pub malformed: AtomicU64,
    pub oversize: AtomicU64,
    /// Gossip not sent: its address was no seed, discovered node or member (a replayed datagram's sender).
    pub unknown_destination: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    last_warn_ms: AtomicU64,
}

/// A snapshot, for the status page and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DropCounts {
    pub bad_tag: u64,
    pub replayed: u64,
    pub stale: u64,
    pub malformed: u64,
    pub oversize: u64,
    pub unknown_destination: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

impl DropCounters {
    pub fn record(&self, e: &SealError, from: SocketAddr) {
        let counter = match e {
            SealError::BadTag => &self.bad_tag,
            SealError::Replayed { .. } => &self.replayed,
            SealError::Stale { .. } => &self.stale,
            SealError::Malformed | SealError::WrongPurpose => &self.malformed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let now = now_ms();
        let last = self.last_warn_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= WARN_EVERY_MS
            && self.last_warn_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            tracing::warn!(peer = %from, reason = %e, "dropped cluster frame (further drops are counted, not logged, for 10 s)");
        }
    }

    pub fn count_sent(&self, n: usize) {
        self.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn count_received(&self, n: usize) {
        self.bytes_received.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> DropCounts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DropCounts {
            bad_tag: get(&self.bad_tag),
            replayed: get(&self.replayed),
            stale: get(&self.stale),
            malformed: get(&self.malformed),
            oversize: get(&self.oversize),
            unknown_destination: get(&self.unknown_destination),
            bytes_sent: get(&self.bytes_sent),
            bytes_received: get(&self.bytes_received),
        }
    }
}
