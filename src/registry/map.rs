//! One ticket map: the storage seam under the registry.
//!
//! A single node uses [`LocalMap`]; the cluster plugs in replicated maps that implement the same trait, so the
//! protocol layer never changes. Every operation is atomic per key: `take` in particular is a compare-and-delete, the
//! only way a one-time ticket may be consumed.

use std::sync::Arc;

use async_trait::async_trait;
use dashmap::DashMap;

use super::persist::Pending;
use crate::clock::EpochMs;
use crate::ticket::{ExpiryPolicy, Ticket, TicketId};

/// Why a map could not carry out an operation. A ticket that is simply absent is `Ok(None)`, not an error.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MapError {
    /// The write reached fewer copies than the configuration requires (cluster only).
    #[error("write reached {copies} of {needed} required copies")]
    Unavailable { copies: usize, needed: usize },
    /// The node that must decide this ticket could not be asked (cluster only).
    #[error("the owner of the ticket is unreachable")]
    OwnerUnreachable,
    /// Durability `sync`: the change could not be written to the local journal (a full or failing disk).
    #[error("the change could not be stored on disk: {0}")]
    NotStored(String),
}

#[async_trait]
pub trait TicketMap<V: Ticket>: Send + Sync {
    /// Stores a new ticket. Ids are random, so an existing entry is never overwritten in practice.
    async fn insert(&self, id: &TicketId, value: V) -> Result<(), MapError>;
    /// Reads a ticket without changing it. Expiry is the caller's to check.
    async fn get(&self, id: &TicketId) -> Option<Arc<V>>;
    /// Removes and returns the ticket in one atomic step: at most one caller ever gets `Some` for an id.
    async fn take(&self, id: &TicketId) -> Result<Option<Arc<V>>, MapError>;
    /// Ends a ticket every node must learn of (a logout): takes it as `take` does, and says how many nodes hold
    /// the removal now, this one included. A single node's map is the only copy there is.
    async fn end(&self, id: &TicketId) -> Result<Ended<V>, MapError> {
        Ok(Ended { value: self.take(id).await?, copies: 1 })
    }
    /// Applies a change to a stored ticket; `false` when the ticket is absent.
    async fn change(&self, id: &TicketId, change: V::Change) -> Result<bool, MapError>;
    /// As [`TicketMap::change`], replicated before it returns, but the local disk write (durability `sync`) is
    /// the caller's to wait for, through the returned [`Pending`], before anything relies on the change.
    async fn change_deferred(&self, id: &TicketId, change: V::Change) -> Result<(bool, Pending), MapError> {
        Ok((self.change(id, change).await?, Pending::done()))
    }
    /// Makes the consume of ticket `id` (by `take`, here or for a peer) wait for `pending` before it hands the
    /// ticket out. A map without a disk has nothing to wait for.
    fn hold(&self, _id: &TicketId, _pending: Pending) {}
    /// Every live ticket (for rebuilding what the node derives from them after a restart).
    fn live_entries(&self) -> Vec<(TicketId, Arc<V>)>;
    /// Removes every ticket expired at `now` and returns them (for single logout of expired TGTs).
    async fn sweep(&self, policy: &ExpiryPolicy, now: EpochMs) -> Vec<(TicketId, Arc<V>)>;
    /// Removes every ticket for which `doomed` holds (e.g. the PGTs of a destroyed TGT).
    async fn remove_where(&self, doomed: &(dyn for<'v> Fn(&'v V) -> bool + Sync)) -> usize;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What [`TicketMap::end`] ended: the ticket, when this node held it, and the nodes that hold its removal.
pub struct Ended<V> {
    pub value: Option<Arc<V>>,
    pub copies: usize,
}

/// An in-memory map for a single node. DashMap's shard locks make each operation atomic per key, and no lock is held
/// across an `.await`. Values sit behind an `Arc` so a read costs a reference count, not a deep copy of the ticket
/// (a TGT carries the principal's attributes and its service list); a change copies only when a reader still holds
/// the old value.
pub struct LocalMap<V> {
    entries: DashMap<TicketId, Arc<V>>,
}

impl<V> Default for LocalMap<V> {
    fn default() -> Self {
        Self { entries: DashMap::new() }
    }
}

#[async_trait]
impl<V: Ticket> TicketMap<V> for LocalMap<V> {
    async fn insert(&self, id: &TicketId, value: V) -> Result<(), MapError> {
        self.entries.insert(id.clone(), Arc::new(value));
        Ok(())
    }

    async fn get(&self, id: &TicketId) -> Option<Arc<V>> {
        self.entries.get(id).map(|e| e.value().clone())
    }

    async fn take(&self, id: &TicketId) -> Result<Option<Arc<V>>, MapError> {
        Ok(self.entries.remove(id).map(|(_, v)| v))
    }

    async fn change(&self, id: &TicketId, change: V::Change) -> Result<bool, MapError> {
        Ok(self.entries.get_mut(id).map(|mut e| Arc::make_mut(e.value_mut()).apply(&change)).is_some())
    }

    fn live_entries(&self) -> Vec<(TicketId, Arc<V>)> {
        self.entries.iter().map(|e| (e.key().clone(), e.value().clone())).collect()
    }

    async fn sweep(&self, policy: &ExpiryPolicy, now: EpochMs) -> Vec<(TicketId, Arc<V>)> {
        let expired: Vec<TicketId> =
            self.entries.iter().filter(|e| e.value().is_expired(policy, now)).map(|e| e.key().clone()).collect();
        // Re-check under the shard lock: the ticket may have been touched since the scan.
        expired.into_iter().filter_map(|id| self.entries.remove_if(&id, |_, v| v.is_expired(policy, now))).collect()
    }

    async fn remove_where(&self, doomed: &(dyn for<'v> Fn(&'v V) -> bool + Sync)) -> usize {
        let before = self.entries.len();
        self.entries.retain(|_, v| !doomed(v));
        before.saturating_sub(self.entries.len())
    }

    fn len(&self) -> usize {
        self.entries.len()
    }
}
