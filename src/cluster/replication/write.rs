//! Synchronous writes (apply here, send to every live peer, wait for the acknowledgements) and one-time tickets:
//! who owns one, and forwarding its consume to that owner. Implements [`Replicas`] for the registry's maps.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_trait::async_trait;

use super::Replicator;
use super::replica::{Entry, MapId, Owner, ReplicaError, Replicas};
use super::wire::{Reply, Request};
use crate::cluster::membership::{MemberInfo, MemberStatus};

/// Live members that take writes: every alive member but this node, joining ones included (they must not miss
/// writes made during their state transfer), leaving ones too (they still serve until they stop).
fn takes_writes(m: &MemberInfo) -> bool {
    !m.is_self
        && m.replication_addr.is_some()
        && matches!(m.status, MemberStatus::Ready | MemberStatus::Joining | MemberStatus::Leaving)
}

#[async_trait]
impl Replicas for Arc<Replicator> {
    async fn replicate(&self, map: MapId, entry: Entry) -> usize {
        Replicator::replicate(self, map, entry).await
    }

    fn owner(&self, node: &str, generation: u64) -> Owner {
        Replicator::owner(self, node, generation)
    }

    async fn forward_consume(&self, owner: &Owner, map: MapId, id: &str) -> Result<Option<Vec<u8>>, ReplicaError> {
        Replicator::forward_consume(self, owner, map, id).await
    }
}

impl Replicator {
    /// Live peers that take writes.
    pub fn peers(&self) -> Vec<MemberInfo> {
        self.status.borrow().live().values().filter(|m| takes_writes(m)).cloned().collect()
    }

    /// Who decides about a ticket issued by `node` in boot `generation` (invariant 1): only that boot of that node.
    pub fn owner(&self, node: &str, generation: u64) -> Owner {
        if node == self.me {
            return if generation == self.generation { Owner::Me } else { Owner::Gone };
        }
        match self.status.borrow().live().get(node) {
            Some(m) if m.generation == generation && m.replication_addr.is_some() => {
                Owner::Peer { node: m.node.clone(), generation }
            }
            _ => Owner::Gone,
        }
    }

    /// Whether this node sends single logout for an expired TGT issued by `node` in boot `generation`: its owner,
    /// or, when the owner is gone, the live ready node with the lowest name (a successor every node computes alike),
    /// so that the logout goes out once cluster-wide.
    pub fn sends_expiry_logout(&self, issuer: Option<(&str, u64)>) -> bool {
        match issuer.map(|(node, generation)| self.owner(node, generation)) {
            Some(Owner::Me) => true,
            Some(Owner::Peer { .. }) => false,
            _ => {
                let view = self.status.borrow().view();
                let successor =
                    view.values().filter(|m| m.status == MemberStatus::Ready || m.is_self).map(|m| &m.node).min();
                successor.is_none_or(|s| *s == self.me)
            }
        }
    }

    /// Sends `entry` to every peer and waits for their acknowledgements, at most the ack timeout. Returns the number
    /// of copies that now exist, this node's included. A peer that misses it is remembered for repair.
    pub async fn replicate(self: &Arc<Self>, map: MapId, entry: Entry) -> usize {
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
        let live = self.status.borrow().live();
        let peers: Vec<&MemberInfo> = live.values().filter(|m| takes_writes(m)).collect();
        let sends = peers
            .iter()
            .map(|peer| self.request(peer, Request::Apply { map, entry: entry.clone() }, self.timeouts.ack));
        let started = std::time::Instant::now();
        let results = futures_util::future::join_all(sends).await;
        self.counters.ack_wait_micros.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        let mut copies = 1;
        let mut acked = Vec::with_capacity(peers.len());
        for (peer, result) in peers.iter().zip(results) {
            match result {
                Ok(Reply::Applied) => {
                    copies += 1;
                    acked.push(peer.node.as_str());
                    self.counters.acks.fetch_add(1, Ordering::Relaxed);
                }
                other => {
                    self.counters.ack_failures.fetch_add(1, Ordering::Relaxed);
                    self.mark_behind(&peer.node);
                    tracing::warn!(peer = %peer.node, outcome = ?other.err(), "replica did not acknowledge a write");
                }
            }
        }
        self.mark_absent_peers_behind(&acked);
        copies
    }

    /// Every peer this node knows of, alive or not, that did not take a write has missed it: a peer that is not in
    /// the live view (cut off, or not yet seen again after a heal) must be asked to pull once it is back, or a
    /// write made meanwhile (a logout just after a heal) would reach it only at the next periodic anti-entropy.
    fn mark_absent_peers_behind(&self, acked: &[&str]) {
        let absent: Vec<String> = {
            let status = self.status.borrow();
            let mut names: Vec<&str> = status
                .members
                .iter()
                .filter(|m| m.node != self.me && !acked.contains(&m.node.as_str()))
                .map(|m| m.node.as_str())
                .collect();
            names.sort_unstable();
            names.dedup();
            names.into_iter().map(str::to_owned).collect()
        };
        for node in absent {
            self.mark_behind(&node);
        }
    }

    /// Asks the owner to consume a one-time ticket. Fails (closed) when the owner cannot be asked, or is no longer
    /// the boot that issued the ticket.
    pub async fn forward_consume(
        self: &Arc<Self>,
        owner: &Owner,
        map: MapId,
        id: &str,
    ) -> Result<Option<Vec<u8>>, ReplicaError> {
        let Owner::Peer { node, generation } = owner else {
            return Err(ReplicaError::Refused { node: format!("{owner:?}"), answer: "not a peer".into() });
        };
        let member = self.status.borrow().live().get(node).filter(|m| m.generation == *generation).cloned();
        let member = member.ok_or_else(|| ReplicaError::LinkDown { node: node.clone() })?;
        self.counters.forwarded_consumes.fetch_add(1, Ordering::Relaxed);
        match self.request(&member, Request::Consume { map, id: id.to_owned() }, self.timeouts.forward).await? {
            Reply::Consumed(value) => Ok(value),
            other => Err(ReplicaError::Refused { node: node.clone(), answer: format!("{other:?}") }),
        }
    }
}
