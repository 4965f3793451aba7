//! Replication between nodes, one file per role:
//! - [`replica`]: the seam the registry's maps see (map ids, entries, the two traits);
//! - [`wire`]: requests, replies and their framing;
//! - `link` (one outgoing connection) and `links` (one per peer, dialled on demand, sealed requests);
//! - `path`: noticing a dead path, so that a link is redialled at a heal instead of waiting on retransmissions;
//! - `write`: synchronous writes, forwarded consumes, who owns a ticket;
//! - `server`: answering the peers' requests;
//! - [`anti_entropy`]: digest-driven pulls for state transfer, repair and periodic anti-entropy;
//! - [`digest`]: the running per-bucket digests.
//!
//! Each node dials every peer for its own requests and answers the peers' requests on the connections they dial,
//! so each direction is one ordered stream. Requests are pipelined: many in flight per link, matched by id.

pub mod anti_entropy;
pub mod digest;
mod link;
mod links;
mod path;
pub mod replica;
mod server;
pub mod wire;
mod write;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use self::anti_entropy::{Readiness, StateTransfer};
use self::links::LinkSlot;
use self::replica::{MapId, MapReplica};
use super::ClusterStatus;
use super::drops::DropCounters;
use super::keyring::Keyring;
use super::seal::{Opener, Purpose, Sealer};

/// Counts since start.
#[derive(Default)]
struct ReplicationCounters {
    writes: AtomicU64,
    /// Time writes spent waiting for their acknowledgements: with `writes`, the mean replication lag.
    ack_wait_micros: AtomicU64,
    acks: AtomicU64,
    ack_failures: AtomicU64,
    forwarded_consumes: AtomicU64,
    entries_pulled: AtomicU64,
}

#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct ReplicationCounts {
    pub writes: u64,
    pub ack_wait_micros: u64,
    pub acks: u64,
    pub ack_failures: u64,
    pub forwarded_consumes: u64,
    pub entries_pulled: u64,
}

/// How long replication waits for peers.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// A write waits this long for each peer's acknowledgement.
    pub ack: Duration,
    /// A forwarded consume waits this long for the ticket's owner, then fails closed.
    pub forward: Duration,
}

/// This node's side of replication: its links to the peers, the maps it serves them, and what it remembers of
/// peers that missed its writes.
pub struct Replicator {
    me: String,
    generation: u64,
    sealer: Arc<Sealer>,
    status: watch::Receiver<ClusterStatus>,
    /// Set once each, when the node's maps are registered, before the server answers anyone.
    maps: [OnceLock<Arc<dyn MapReplica>>; 5],
    links: Mutex<HashMap<String, Arc<LinkSlot>>>,
    /// Shared by every connection, so a frame replayed on a new connection is still caught.
    request_opener: Opener,
    reply_opener: Arc<Opener>,
    drops: Arc<DropCounters>,
    next_id: AtomicU64,
    timeouts: Timeouts,
    /// Cancelled when the node stops: every link and connection task ends, as after a crash.
    stop: CancellationToken,
    /// The connection and repair tasks, so that a stop can wait for them.
    tasks: TaskTracker,
    /// Peers that missed an acknowledgement since they last pulled from this node.
    behind: Mutex<BTreeSet<String>>,
    counters: ReplicationCounters,
}

impl Replicator {
    pub(super) fn new(
        keyring: &Keyring,
        timeouts: Timeouts,
        status: watch::Receiver<ClusterStatus>,
        drops: Arc<DropCounters>,
        stop: CancellationToken,
        tasks: TaskTracker,
    ) -> Arc<Self> {
        Arc::new(Self {
            me: keyring.node().to_owned(),
            generation: keyring.generation(),
            sealer: keyring.sealer(),
            request_opener: keyring.opener_to_me(Purpose::Replication),
            reply_opener: Arc::new(keyring.opener_to_me(Purpose::ReplicationReply)),
            status,
            maps: Default::default(),
            links: Mutex::new(HashMap::new()),
            drops,
            next_id: AtomicU64::new(1),
            timeouts,
            stop,
            tasks,
            behind: Mutex::new(BTreeSet::new()),
            counters: ReplicationCounters::default(),
        })
    }

    /// Registers the replica of `map` on this node. Done once per map, before serving.
    pub(super) fn register(&self, map: MapId, replica: Arc<dyn MapReplica>) {
        if self.maps[map.index()].set(replica).is_err() {
            tracing::error!(map = map.name(), "map registered twice; keeping the first");
        }
    }

    fn map(&self, map: MapId) -> Option<&Arc<dyn MapReplica>> {
        self.maps[map.index()].get()
    }

    pub fn counts(&self) -> ReplicationCounts {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ReplicationCounts {
            writes: get(&c.writes),
            ack_wait_micros: get(&c.ack_wait_micros),
            acks: get(&c.acks),
            ack_failures: get(&c.ack_failures),
            forwarded_consumes: get(&c.forwarded_consumes),
            entries_pulled: get(&c.entries_pulled),
        }
    }

    /// Remembers that `peer` missed a write, so that it is asked to pull once it is reachable.
    fn mark_behind(&self, peer: &str) {
        if let Ok(mut behind) = self.behind.lock() {
            behind.insert(peer.to_owned());
        }
    }
}
