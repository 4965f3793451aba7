//! Digests for anti-entropy: each map keeps, per bucket of ids, the XOR of a hash of every entry's state and the
//! number of entries, updated as entries change. Two nodes holding the same entries in a bucket hold the same
//! digest for it, so a puller compares 1,024 small digests and then fetches only the buckets that differ, instead of
//! the whole map (replication-notes §5). Sans-I/O: the maps update it, `plan_pulls` decides what to fetch.
//!
//! Hashes are xxh3 over the id and the postcard bytes of the value, which are deterministic for equal tickets, so a
//! digest means the same on every node of one release. A tombstone's hash leaves out its `gc_after`: replicas that
//! removed a ticket at slightly different times agree on it, and it is gone from both soon after anyway.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// Buckets per map. At a million tickets a differing bucket costs about a thousand entries to fetch, and the digest
/// of a map is about 12 KiB on the wire.
pub const BUCKETS: usize = 1024;

const REMOVED_SEED: u64 = 0x7a6f_6d62_6965_7321;

/// One bucket's digest as it travels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketDigest {
    pub hash: u64,
    pub entries: u32,
}

/// Every bucket: what a full copy fetches.
pub fn all_buckets() -> Vec<u16> {
    (0..BUCKETS as u16).collect()
}

/// Which bucket an id falls in: the same on every node.
pub fn bucket_of(id: &str) -> usize {
    (xxh3_64(id.as_bytes()) % BUCKETS as u64) as usize
}

/// The hash of a live entry whose value serialises to `value`.
pub fn live_hash(id: &str, value: &[u8]) -> u64 {
    xxh3_64_with_seed(value, xxh3_64(id.as_bytes()))
}

/// The hash of a tombstone.
pub fn removed_hash(id: &str) -> u64 {
    xxh3_64_with_seed(id.as_bytes(), REMOVED_SEED)
}

/// A map's running digest. Each change of an entry is reported once, as the hashes before and after, while the
/// entry is locked; XOR makes the order of changes to different entries irrelevant.
pub struct Digest {
    hashes: Box<[AtomicU64]>,
    entries: Box<[AtomicU32]>,
}

impl Default for Digest {
    fn default() -> Self {
        Self {
            hashes: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            entries: (0..BUCKETS).map(|_| AtomicU32::new(0)).collect(),
        }
    }
}

impl Digest {
    /// Entry `id` went from the state hashed `before` (none: absent) to `after` (none: gone).
    pub fn change(&self, id: &str, before: Option<u64>, after: Option<u64>) {
        if before == after {
            return;
        }
        let b = bucket_of(id);
        self.hashes[b].fetch_xor(before.unwrap_or(0) ^ after.unwrap_or(0), Ordering::Relaxed);
        match (before, after) {
            (None, Some(_)) => {
                self.entries[b].fetch_add(1, Ordering::Relaxed);
            }
            (Some(_), None) => {
                self.entries[b].fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    pub fn buckets(&self) -> Vec<BucketDigest> {
        self.hashes
            .iter()
            .zip(self.entries.iter())
            .map(|(h, n)| BucketDigest { hash: h.load(Ordering::Relaxed), entries: n.load(Ordering::Relaxed) })
            .collect()
    }
}

/// The buckets to fetch from a peer whose digest is `theirs`, grouped into requests of about `page` entries each
/// (a bucket larger than a page goes alone). A bucket the peer holds nothing in is never fetched: what this node
/// has there and the peer lacks travels when the peer pulls.
pub fn plan_pulls(mine: &[BucketDigest], theirs: &[BucketDigest], page: u32) -> Vec<Vec<u16>> {
    let mut groups = Vec::new();
    let (mut group, mut size) = (Vec::new(), 0u64);
    for (b, t) in theirs.iter().enumerate().take(BUCKETS) {
        if t.entries == 0 || mine.get(b) == Some(t) {
            continue;
        }
        if !group.is_empty() && size + u64::from(t.entries) > u64::from(page) {
            groups.push(std::mem::take(&mut group));
            size = 0;
        }
        group.push(b as u16);
        size += u64::from(t.entries);
    }
    if !group.is_empty() {
        groups.push(group);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_contents_give_equal_digests_whatever_the_history() {
        let (a, b) = (Digest::default(), Digest::default());
        let ids: Vec<String> = (0..500).map(|i| format!("TGT-{i}-n1abcdefgh")).collect();
        // a: every ticket live, then half of them removed.
        for id in &ids {
            a.change(id, None, Some(live_hash(id, b"v1")));
        }
        for id in ids.iter().step_by(2) {
            a.change(id, Some(live_hash(id, b"v1")), Some(removed_hash(id)));
        }
        // b: the same end state reached in reverse order, with an intermediate value.
        for id in ids.iter().rev() {
            if ids.iter().position(|x| x == id).is_some_and(|i| i % 2 == 0) {
                b.change(id, None, Some(removed_hash(id)));
            } else {
                b.change(id, None, Some(live_hash(id, b"v0")));
                b.change(id, Some(live_hash(id, b"v0")), Some(live_hash(id, b"v1")));
            }
        }
        assert_eq!(a.buckets(), b.buckets());
        assert!(plan_pulls(&a.buckets(), &b.buckets(), 100).is_empty());
        assert_eq!(a.buckets().iter().map(|d| d.entries).sum::<u32>(), 500);
    }

    #[test]
    fn only_differing_buckets_are_fetched_in_pages() {
        let (a, b) = (Digest::default(), Digest::default());
        for i in 0..5000 {
            let id = format!("ST-{i}-n1abcdefgh");
            a.change(&id, None, Some(live_hash(&id, b"x")));
            b.change(&id, None, Some(live_hash(&id, b"x")));
        }
        let extra = "ST-extra-n2abcdefgh";
        b.change(extra, None, Some(live_hash(extra, b"y")));
        let plan = plan_pulls(&a.buckets(), &b.buckets(), 100);
        assert_eq!(plan, vec![vec![bucket_of(extra) as u16]], "one bucket differs");
        let empty = Digest::default();
        let everything = plan_pulls(&empty.buckets(), &b.buckets(), 100);
        let buckets: usize = everything.iter().map(Vec::len).sum();
        assert_eq!(buckets, b.buckets().iter().filter(|d| d.entries > 0).count());
        let theirs = b.buckets();
        for group in &everything {
            let size: u32 = group.iter().map(|&g| theirs[g as usize].entries).sum();
            assert!(group.len() == 1 || size <= 100, "a page holds about `page` entries");
        }
    }
}
