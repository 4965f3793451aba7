//! The seam between the replicated ticket maps (`registry::replicated`) and replication: which map is which, what
//! one entry of a map looks like to a peer, and the two traits each side implements for the other. The registry
//! sees only this module; framing, envelopes and replies stay in `wire`.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use super::digest::BucketDigest;

/// Which replicated map: one per stored ticket kind (PGTIOUs are never stored). The one identity used by the map
/// policies, by registration with the replicator and on the wire, where postcard writes a unit variant as its
/// index: the order of the variants is part of the wire format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum MapId {
    Tgt,
    St,
    Pt,
    Pgt,
    Lt,
}

impl MapId {
    pub const ALL: [MapId; 5] = [MapId::Tgt, MapId::St, MapId::Pt, MapId::Pgt, MapId::Lt];

    /// Its position in [`MapId::ALL`], for tables indexed by map.
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            MapId::Tgt => "TGT",
            MapId::St => "ST",
            MapId::Pt => "PT",
            MapId::Pgt => "PGT",
            MapId::Lt => "LT",
        }
    }
}

/// One entry of a map as peers exchange it: a live value (postcard bytes), or a tombstone. Both are joins in a
/// lattice (absent < live < removed), so a replica may take them in any order, more than once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Entry {
    /// A live value, merged into any existing copy.
    Live {
        id: String,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// The entry is gone for good; kept until `gc_after` so that a late copy cannot resurrect it.
    Removed { id: String, gc_after: u64 },
}

impl Entry {
    pub fn id(&self) -> &str {
        match self {
            Entry::Live { id, .. } | Entry::Removed { id, .. } => id,
        }
    }
}

/// A consume asked of a node that did not issue the ticket in its current boot.
#[derive(Debug, PartialEq, Eq)]
pub struct NotOwner;

/// What replication needs from one map on this node.
#[async_trait]
pub trait MapReplica: Send + Sync {
    /// Merges an entry from a peer: a join, so any order and any repetition give the same result.
    fn apply(&self, entry: &Entry);
    /// Consumes a one-time ticket this node owns: the value (postcard bytes) for the one caller that gets it, `None`
    /// when it is unknown or used. The peers' copies are removed after the answer (they never decide a consume).
    async fn consume_as_owner(&self, id: &str) -> Result<Option<Vec<u8>>, NotOwner>;
    /// The running digest, one per bucket of ids.
    fn digest(&self) -> Vec<BucketDigest>;
    /// The entries in the given buckets, tombstones included, in id order, starting after id `after`, until about
    /// `max_bytes` (at least one entry); `true` with them when more remain.
    fn entries_in(&self, buckets: &[u16], after: Option<&str>, max_bytes: usize) -> (Vec<Entry>, bool);
    /// Whether pulls (state transfer, repair, anti-entropy) fetch this map. Only a map whose copies a peer reads
    /// needs them: a one-time ticket is decided by its issuer alone, so pulling the tickets a peer issued while cut
    /// off would only spend, at the heal, the CPU the cluster needs to serve.
    fn pulled(&self) -> bool;
}

/// Who decides about a one-time ticket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owner {
    Me,
    /// A live peer, in the boot that issued the ticket.
    Peer {
        node: String,
        generation: u64,
    },
    /// The issuing node is not in the view in the generation that issued the ticket (dead, restarted, cut off).
    Gone,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReplicaError {
    #[error("no link to {node}")]
    LinkDown { node: String },
    #[error("{node} did not answer in time")]
    Timeout { node: String },
    #[error("{node} refused: {answer}")]
    Refused { node: String, answer: String },
}

/// What a replicated map needs from the cluster: implemented by the replicator over real links, and by the
/// simulation tests over an in-memory world they control.
#[async_trait]
pub trait Replicas: Send + Sync {
    /// Merges `entry` into `map` on every reachable peer; returns the number of copies, this node's included.
    async fn replicate(&self, map: MapId, entry: Entry) -> usize;
    /// Who decides about a ticket issued by `node` in boot `generation`.
    fn owner(&self, node: &str, generation: u64) -> Owner;
    /// Asks the owner (an [`Owner::Peer`]) to consume a one-time ticket.
    async fn forward_consume(&self, owner: &Owner, map: MapId, id: &str) -> Result<Option<Vec<u8>>, ReplicaError>;
}
