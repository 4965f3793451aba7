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
use super::replica::{MapId, MapReplica, ReplicaError};
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

/// How soon a joiner tries again after a failed state transfer.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// Whether a node may serve: it has its copy of the maps, or says what it still waits for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    Joining { reason: Option<String> },
    Ready,
}

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

fn refused(peer: &MemberInfo, reply: Reply) -> ReplicaError {
    ReplicaError::Refused { node: peer.node.clone(), answer: format!("{reply:?}") }
}

fn ready_peers(status: &ClusterStatus) -> Vec<MemberInfo> {
    status.view().into_values().filter(|m| !m.is_self && m.status == MemberStatus::Ready).collect()
}

impl Replicator {
    /// Pulls from `peer` what differs and merges it in. Returns the number of entries merged.
    pub async fn pull_all(self: &Arc<Self>, peer: &MemberInfo) -> Result<u64, ReplicaError> {
        let mut pulled = 0;
        for map in MapId::ALL {
            let Some(target) = self.map(map).filter(|m| m.pulled()) else { continue };
            let theirs = match self.request(peer, Request::Digest { map }, PULL_TIMEOUT).await? {
                Reply::Digest(theirs) => theirs,
                other => return Err(refused(peer, other)),
            };
            // Two groups in flight: the peer gathers the next page while this node merges the last one.
            let groups = plan_pulls(&target.digest(), &theirs, PULL_PAGE);
            let mut pages = futures_util::stream::iter(groups)
                .map(|buckets| self.pull_buckets(peer, map, target, buckets))
                .buffered(2);
            while let Some(merged) = pages.next().await {
                pulled += merged?;
            }
        }
        self.counters.entries_pulled.fetch_add(pulled, Ordering::Relaxed);
        Ok(pulled)
    }

    /// Fetches and merges every entry of `buckets`, a page of about `PAGE_BYTES` at a time.
    async fn pull_buckets(
        self: &Arc<Self>,
        peer: &MemberInfo,
        map: MapId,
        target: &Arc<dyn MapReplica>,
        buckets: Vec<u16>,
    ) -> Result<u64, ReplicaError> {
        let (mut merged, mut after) = (0, None);
        loop {
            let request = Request::Buckets { map, buckets: buckets.clone(), after: after.take() };
            let (entries, truncated) = match self.request(peer, request, PULL_TIMEOUT).await? {
                Reply::Entries { entries, truncated } => (entries, truncated),
                other => return Err(refused(peer, other)),
            };
            merged += entries.len() as u64;
            for entry in &entries {
                target.apply(entry);
            }
            match entries.last() {
                Some(last) if truncated => after = Some(last.id().to_owned()),
                _ => return Ok(merged),
            }
        }
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

    /// Copies every map from a ready peer. A node that sees no ready peer within `join_timeout` is the first of its
    /// cluster and starts empty; one that has seen a ready peer never gives up on it (it would serve sessions that
    /// exist elsewhere as unknown): it retries every `RETRY_EVERY`, saying why in `readiness` (invariant 5).
    pub(crate) async fn transfer_state(
        self: &Arc<Self>,
        when: &AntiEntropy,
        readiness: &watch::Sender<Readiness>,
    ) -> Option<StateTransfer> {
        // With no seeds and no multicast this node cannot find anyone: it is the first, others will find it.
        if !when.finds_peers {
            return None;
        }
        let mut deadline = tokio::time::Instant::now() + when.join_timeout;
        let mut refused = self.unauthenticated();
        let mut status = self.status.clone();
        let mut seen_ready = false;
        loop {
            let ready = ready_peers(&status.borrow());
            seen_ready |= !ready.is_empty();
            for peer in &ready {
                let started = Instant::now();
                match self.pull_all(peer).await {
                    Ok(entries) => {
                        let took = started.elapsed();
                        tracing::info!(from = %peer.node, entries, took_ms = took.as_millis() as u64, "state transfer done");
                        return Some(StateTransfer { from: peer.node.clone(), entries, took });
                    }
                    Err(e) => {
                        let reason = format!("state transfer from {} failed: {e}", peer.node);
                        tracing::warn!(%reason, "not ready: retrying");
                        readiness.send_replace(Readiness::Joining { reason: Some(reason) });
                    }
                }
            }
            if seen_ready {
                tokio::time::sleep(RETRY_EVERY).await;
                continue;
            }
            if tokio::time::timeout_at(deadline, status.changed()).await.is_err() {
                // Frames that did not authenticate mean a cluster is there that this node cannot talk to (a wrong
                // key, a clock too far off): starting alone would serve as unknown every session it holds. Wait,
                // and say why, until such frames stop for a whole join timeout.
                let now_refused = self.unauthenticated();
                if now_refused > refused {
                    let reason = format!(
                        "{} cluster frames in the last {:?} failed authentication (a wrong cluster key, or a clock \
                         more than {} s off): not starting as a cluster of one",
                        now_refused - refused,
                        when.join_timeout,
                        crate::cluster::seal::MAX_CLOCK_SKEW_MS / 1000,
                    );
                    tracing::warn!(%reason, "not ready");
                    readiness.send_replace(Readiness::Joining { reason: Some(reason) });
                    refused = now_refused;
                    deadline = tokio::time::Instant::now() + when.join_timeout;
                    continue;
                }
                tracing::info!("no ready peer seen: starting as the first node of the cluster");
                return None;
            }
        }
    }

    /// Cluster frames dropped so far because they did not authenticate: a bad tag, or sent too far from this
    /// node's clock.
    fn unauthenticated(&self) -> u64 {
        let d = self.drops.snapshot();
        d.bad_tag + d.stale
    }

    /// Repairs what synchronous writes missed (a peer that was cut off or slow) until the node stops: asks the peers
    /// that missed this node's writes to pull from it every `REPAIR_EVERY`; pulls the maps of every peer that
    /// (re)appears in the view, and of one peer every `interval`. Joins make repeated pulls harmless.
    pub(crate) async fn anti_entropy(self: Arc<Self>, interval: Duration) {
        let mut status: watch::Receiver<ClusterStatus> = self.status.clone();
        let mut known: BTreeMap<String, u64> =
            ready_peers(&status.borrow()).into_iter().map(|m| (m.node, m.generation)).collect();
        // The join copied one peer; another may hold writes that one missed (a logout that reached two nodes while
        // the third was cut off, and the node that copies from the third). Pull each once, so that one more crash
        // cannot undo them.
        let first: Vec<MemberInfo> = ready_peers(&status.borrow());
        for peer in first {
            if let Err(e) = self.pull_all(&peer).await {
                tracing::info!(from = %peer.node, error = %e, "pull after joining failed");
            }
        }
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
            // A peer that left (died, cut off) may have made writes that reached some of the others but not this
            // node (a one-way cut between it and us): pull every remaining peer once, before another crash takes
            // the last copy (a session, or a logout's tombstone, held only by the departed node and one other).
            let departed = known.iter().any(|(node, _)| !peers.iter().any(|m| &m.node == node));
            let mut to_pull: Vec<MemberInfo> =
                peers.iter().filter(|m| departed || known.get(&m.node) != Some(&m.generation)).cloned().collect();
            known = peers.iter().map(|m| (m.node.clone(), m.generation)).collect();
            if periodic && !peers.is_empty() && !departed {
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
