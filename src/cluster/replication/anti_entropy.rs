//! Pulls: a node compares a peer's per-bucket digests with its own and fetches only the buckets that differ. The
//! same pull is a joiner's state transfer (everything differs), the repair of a peer that missed writes, and the
//! periodic anti-entropy that converges the sides of a healed partition.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::watch;

use super::Replicator;
use super::digest::plan_pulls;
use super::replica::{MapId, ReplicaError};
use super::wire::{Reply, Request};
use crate::cluster::ClusterStatus;
use crate::cluster::membership::{MemberInfo, MemberStatus};

/// Entries asked for in one request when pulling: large pages keep a transfer to few round trips (each costs the
/// peer one pass over its map), and a page stays far under `MAX_FRAME_BYTES` (a TGT is a few hundred bytes).
const PULL_PAGE: u32 = 10_000;
/// How long one pull request (a digest, or a page of entries) may take.
const PULL_TIMEOUT: Duration = Duration::from_secs(10);
/// How often peers that missed this node's writes are asked to pull: soon enough that a cut shorter than failure
/// detection is repaired within a second or two.
const REPAIR_EVERY: Duration = Duration::from_secs(1);

/// The state transfer a node made before it reported ready.
#[derive(Clone, Debug)]
pub struct StateTransfer {
    pub from: String,
    pub entries: u64,
    /// The pull alone, without the wait to find a ready peer.
    pub took: Duration,
}

/// When a node pulls.
#[derive(Clone, Copy, Debug)]
pub struct AntiEntropy {
    /// A node that can find peers (seeds or multicast) waits this long at start for a ready one to copy from.
    pub join_timeout: Duration,
    /// Whether this node has any way to find peers at start.
    pub finds_peers: bool,
    /// One peer is pulled every interval, besides every peer that (re)appears.
    pub interval: Duration,
}

fn ready_peers(status: &ClusterStatus) -> Vec<MemberInfo> {
    status.view().into_values().filter(|m| !m.is_self && m.status == MemberStatus::Ready).collect()
}

impl Replicator {
    /// Pulls from `peer` what differs and merges it in. Returns the number of entries merged.
    pub async fn pull_all(self: &Arc<Self>, peer: &MemberInfo) -> Result<u64, ReplicaError> {
        let refused = |reply: Reply| ReplicaError::Refused { node: peer.node.clone(), answer: format!("{reply:?}") };
        let mut pulled = 0;
        for map in MapId::ALL {
            let Some(target) = self.map(map) else { continue };
            let theirs = match self.request(peer, Request::Digest { map }, PULL_TIMEOUT).await? {
                Reply::Digest(theirs) => theirs,
                other => return Err(refused(other)),
            };
            // Two pages in flight: the peer gathers the next page while this node merges the last one.
            let mut pages = futures_util::stream::iter(plan_pulls(&target.digest(), &theirs, PULL_PAGE))
                .map(|buckets| self.request(peer, Request::Buckets { map, buckets }, PULL_TIMEOUT))
                .buffered(2);
            while let Some(reply) = pages.next().await {
                let entries = match reply? {
                    Reply::Entries(entries) => entries,
                    other => return Err(refused(other)),
                };
                pulled += entries.len() as u64;
                for entry in &entries {
                    target.apply(entry);
                }
            }
        }
        self.counters.entries_pulled.fetch_add(pulled, Ordering::Relaxed);
        Ok(pulled)
    }

    /// Asks every reachable peer that missed one of this node's writes to pull this node's maps. Peers that cannot
    /// be asked stay on the list for the next call.
    pub async fn repair_peers(self: &Arc<Self>) {
        let behind: Vec<String> = self.behind.lock().map(|b| b.iter().cloned().collect()).unwrap_or_default();
        if behind.is_empty() {
            return;
        }
        for peer in self.peers().into_iter().filter(|m| behind.contains(&m.node) && m.status == MemberStatus::Ready) {
            if let Ok(Reply::Applied) = self.request(&peer, Request::Repair, self.timeouts.ack).await {
                tracing::info!(peer = %peer.node, "peer missed writes; asked it to pull");
                if let Ok(mut b) = self.behind.lock() {
                    b.remove(&peer.node);
                }
            }
        }
    }

    /// Waits (at most `join_timeout`) for a ready peer and copies every map from it. A node that sees no ready peer
    /// is the first of its cluster and starts empty.
    pub(crate) async fn transfer_state(self: &Arc<Self>, when: &AntiEntropy) -> Option<StateTransfer> {
        // With no seeds and no multicast this node cannot find anyone: it is the first, others will find it.
        if !when.finds_peers {
            return None;
        }
        let deadline = tokio::time::Instant::now() + when.join_timeout;
        let mut status = self.status.clone();
        loop {
            let ready = ready_peers(&status.borrow());
            for peer in &ready {
                let started = Instant::now();
                match self.pull_all(peer).await {
                    Ok(entries) => {
                        let took = started.elapsed();
                        tracing::info!(from = %peer.node, entries, took_ms = took.as_millis() as u64, "state transfer done");
                        return Some(StateTransfer { from: peer.node.clone(), entries, took });
                    }
                    Err(e) => {
                        tracing::warn!(from = %peer.node, error = %e, "state transfer failed; trying another peer")
                    }
                }
            }
            if tokio::time::timeout_at(deadline, status.changed()).await.is_err() {
                tracing::info!("no ready peer seen: starting as the first node of the cluster");
                return None;
            }
        }
    }

    /// Repairs what synchronous writes missed (a peer that was cut off or slow) until the node stops: asks the peers
    /// that missed this node's writes to pull from it every `REPAIR_EVERY`; pulls the maps of every peer that
    /// (re)appears in the view, and of one peer every `interval`. Joins make repeated pulls harmless.
    pub(crate) async fn anti_entropy(self: Arc<Self>, interval: Duration) {
        let mut status: watch::Receiver<ClusterStatus> = self.status.clone();
        let mut known: BTreeMap<String, u64> =
            ready_peers(&status.borrow()).into_iter().map(|m| (m.node, m.generation)).collect();
        let mut tick = tokio::time::interval(interval);
        tick.tick().await;
        let mut repair = tokio::time::interval(REPAIR_EVERY);
        let mut round = 0usize;
        loop {
            let periodic = tokio::select! {
                _ = self.stop.cancelled() => return,
                changed = status.changed() => { if changed.is_err() { return; } false }
                _ = tick.tick() => true,
                _ = repair.tick() => {
                    self.repair_peers().await;
                    continue;
                }
            };
            let peers = ready_peers(&status.borrow());
            let mut to_pull: Vec<MemberInfo> =
                peers.iter().filter(|m| known.get(&m.node) != Some(&m.generation)).cloned().collect();
            known = peers.iter().map(|m| (m.node.clone(), m.generation)).collect();
            if periodic && !peers.is_empty() {
                round += 1;
                to_pull.push(peers[round % peers.len()].clone());
            }
            for peer in to_pull {
                match self.pull_all(&peer).await {
                    Ok(n) => tracing::debug!(from = %peer.node, entries = n, "anti-entropy pull"),
                    Err(e) => tracing::info!(from = %peer.node, error = %e, "anti-entropy pull failed"),
                }
            }
        }
    }
}
