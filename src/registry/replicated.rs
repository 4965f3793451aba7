//! A ticket map replicated to every node of the cluster (issue: synchronous replicated ticket maps).
//!
//! Each entry is in a lattice: absent < live (copies joined with `Ticket::merge`) < removed (a tombstone kept until
//! every copy would have expired anyway). Replicas exchange whole values and tombstones, and every exchange is a
//! join, so the maps converge whatever the order, duplication or delay of messages: after a partition heals, a
//! pull of each other's snapshot is all it takes, and a removed ticket never comes back (invariant 3).
//!
//! One-time tickets (ST, PT, LT) are consumed only by the node that issued them, in the generation that issued them
//! (invariant 1): another node forwards the consume, and when the owner cannot be asked the consume fails rather
//! than risk a second success.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry as MapEntry;

use super::map::{MapError, TicketMap};
use crate::cluster::replication::wire::{Entry, Op, Reply};
use crate::cluster::replication::{MapReplica, Owner, Replicas};
use crate::ticket::{EpochMs, ExpiryPolicy, Ticket, TicketId, now_ms};

enum Slot<V> {
    Live(Arc<V>),
    Removed { gc_after: EpochMs },
}

/// How one map behaves in the cluster.
#[derive(Clone, Copy, Debug)]
pub struct MapPolicy {
    /// Its number on the wire.
    pub index: u8,
    /// Consumption decided by the issuing node only (one-time tickets).
    pub owner_consumes: bool,
    /// Copies (this node's included) a new ticket must reach, or its creation fails.
    pub min_copies: usize,
    /// How long a tombstone outlives the removal: the kind's longest lifetime plus a margin.
    pub tombstone_ttl: Duration,
}

pub struct ReplicatedMap<V> {
    policy: MapPolicy,
    slots: DashMap<TicketId, Slot<V>>,
    replicator: Arc<dyn Replicas>,
}

impl<V: Ticket> ReplicatedMap<V> {
    pub fn new(policy: MapPolicy, replicator: Arc<dyn Replicas>) -> Self {
        Self { policy, slots: DashMap::new(), replicator }
    }

    fn put_op(&self, id: &TicketId, value: &V) -> Op {
        let value = postcard::to_allocvec(value).expect("tickets always serialise");
        Op::Put { map: self.policy.index, id: id.to_string(), value }
    }

    fn remove_op(&self, id: &TicketId) -> (Op, EpochMs) {
        let gc_after = now_ms() + self.policy.tombstone_ttl.as_millis() as u64;
        (Op::Remove { map: self.policy.index, id: id.to_string(), gc_after }, gc_after)
    }

    /// Turns a live entry into a tombstone, atomically (at most one caller gets the value), and replicates the
    /// tombstone. An id this node does not hold leaves no trace: a client must not be able to fill the map with
    /// tombstones of made-up ids.
    async fn remove_and_replicate(&self, id: &TicketId) -> Option<Arc<V>> {
        let (op, gc_after) = self.remove_op(id);
        let previous = match self.slots.get_mut(id) {
            Some(mut slot) if matches!(*slot, Slot::Live(_)) => {
                match std::mem::replace(&mut *slot, Slot::Removed { gc_after }) {
                    Slot::Live(v) => Some(v),
                    Slot::Removed { .. } => None,
                }
            }
            _ => None,
        };
        if previous.is_some() {
            self.replicator.replicate(op).await;
        }
        previous
    }

    fn decode(bytes: &[u8]) -> Option<V> {
        postcard::from_bytes(bytes).ok()
    }
}

#[async_trait]
impl<V: Ticket> TicketMap<V> for ReplicatedMap<V> {
    async fn insert(&self, id: &TicketId, value: V) -> Result<(), MapError> {
        let op = self.put_op(id, &value);
        self.slots.insert(id.clone(), Slot::Live(Arc::new(value)));
        let copies = self.replicator.replicate(op).await;
        if copies < self.policy.min_copies {
            // Too fragile to hand out: withdraw it everywhere it reached.
            self.remove_and_replicate(id).await;
            return Err(MapError::Unavailable { copies, needed: self.policy.min_copies });
        }
        Ok(())
    }

    async fn get(&self, id: &TicketId) -> Option<Arc<V>> {
        match self.slots.get(id).as_deref() {
            Some(Slot::Live(v)) => Some(v.clone()),
            _ => None,
        }
    }

    async fn take(&self, id: &TicketId) -> Result<Option<Arc<V>>, MapError> {
        if !self.policy.owner_consumes {
            return Ok(self.remove_and_replicate(id).await);
        }
        let Some(origin) = id.origin() else { return Ok(None) };
        match self.replicator.owner(&origin) {
            Owner::Me => Ok(self.remove_and_replicate(id).await),
            Owner::Peer(owner) => {
                let value =
                    self.replicator.forward_consume(&owner, self.policy.index, id.as_str()).await.map_err(|e| {
                        tracing::info!(ticket = %id.redacted(), error = %e, "owner could not consume; refusing");
                        MapError::OwnerUnreachable
                    })?;
                Ok(value.and_then(|bytes| Self::decode(&bytes)).map(Arc::new))
            }
            // Issued by an earlier boot of this node, or by a node that is gone: nobody may decide, so nobody does.
            Owner::Gone => Err(MapError::OwnerUnreachable),
        }
    }

    async fn change(&self, id: &TicketId, change: V::Change) -> Result<bool, MapError> {
        let op = match self.slots.get_mut(id) {
            Some(mut slot) => match &mut *slot {
                Slot::Live(v) => {
                    let v = Arc::make_mut(v);
                    v.apply(&change);
                    self.put_op(id, v)
                }
                Slot::Removed { .. } => return Ok(false),
            },
            None => return Ok(false),
        };
        self.replicator.replicate(op).await;
        Ok(true)
    }

    async fn sweep(&self, policy: &ExpiryPolicy, now: EpochMs) -> Vec<(TicketId, Arc<V>)> {
        let mut expired = Vec::new();
        self.slots.retain(|id, slot| match slot {
            Slot::Live(v) if v.is_expired(policy, now) => {
                expired.push((id.clone(), v.clone()));
                false
            }
            Slot::Removed { gc_after } => *gc_after > now,
            Slot::Live(_) => true,
        });
        expired
    }

    async fn remove_where(&self, doomed: &(dyn for<'v> Fn(&'v V) -> bool + Sync)) -> usize {
        let ids: Vec<TicketId> = self
            .slots
            .iter()
            .filter(|e| matches!(e.value(), Slot::Live(v) if doomed(v)))
            .map(|e| e.key().clone())
            .collect();
        let mut removed = 0;
        for id in ids {
            removed += usize::from(self.remove_and_replicate(&id).await.is_some());
        }
        removed
    }

    fn len(&self) -> usize {
        self.slots.iter().filter(|e| matches!(e.value(), Slot::Live(_))).count()
    }
}

#[async_trait]
impl<V: Ticket> MapReplica for ReplicatedMap<V> {
    fn apply(&self, op: &Op) {
        match op {
            Op::Put { id, value, .. } => {
                let (Ok(id), Some(value)) = (TicketId::parse(id), Self::decode(value)) else { return };
                match self.slots.entry(id) {
                    MapEntry::Occupied(mut e) => {
                        if let Slot::Live(existing) = e.get_mut() {
                            Arc::make_mut(existing).merge(&value);
                        }
                    }
                    MapEntry::Vacant(e) => {
                        e.insert(Slot::Live(Arc::new(value)));
                    }
                }
            }
            Op::Remove { id, gc_after, .. } => {
                let Ok(id) = TicketId::parse(id) else { return };
                let mut slot = self.slots.entry(id).or_insert(Slot::Removed { gc_after: *gc_after });
                match &mut *slot {
                    Slot::Removed { gc_after: g } => *g = (*g).max(*gc_after),
                    live => *live = Slot::Removed { gc_after: *gc_after },
                }
            }
        }
    }

    async fn consume_as_owner(&self, id: &str) -> Reply {
        let Ok(id) = TicketId::parse(id) else { return Reply::Consumed(None) };
        if !id.origin().is_some_and(|o| self.replicator.owner(&o) == Owner::Me) {
            return Reply::NotOwner;
        }
        let value = self.remove_and_replicate(&id).await;
        Reply::Consumed(value.map(|v| postcard::to_allocvec(&*v).expect("tickets always serialise")))
    }

    fn snapshot(&self, after: Option<&str>, limit: usize) -> (Vec<Entry>, bool) {
        let mut ids: Vec<String> =
            self.slots.iter().map(|e| e.key().to_string()).filter(|id| after.is_none_or(|a| id.as_str() > a)).collect();
        ids.sort_unstable();
        let done = ids.len() <= limit;
        ids.truncate(limit);
        let entries = ids
            .into_iter()
            .filter_map(|raw| {
                let id = TicketId::parse(&raw).ok()?;
                let slot = self.slots.get(&id)?;
                Some(match &*slot {
                    Slot::Live(v) => Entry::Live { id: raw, value: postcard::to_allocvec(&**v).ok()? },
                    Slot::Removed { gc_after } => Entry::Removed { id: raw, gc_after: *gc_after },
                })
            })
            .collect();
        (entries, done)
    }
}
