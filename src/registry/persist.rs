//! The seam between the replicated maps and local storage (issue 14): what a map tells the disk, and how a caller
//! waits until it is there.

use tokio::sync::oneshot;

use super::map::MapError;
use crate::cluster::replication::replica::{Entry, MapId};

pub trait Persist: Send + Sync {
    /// Records a change of `map`, as the entry a peer would be sent (a join, so replaying the records in order
    /// rebuilds the map). Under durability `sync` the returned [`Pending`] resolves once the change is on disk.
    fn record(&self, map: MapId, entry: &Entry) -> Pending;

    /// Records a change nobody waits for (a peer's write joined here, an expiry): on disk soon, without a sync of
    /// its own, so that a write replicated to N nodes costs one waited-for sync, on the node that answers for it.
    fn record_lazily(&self, map: MapId, entry: &Entry) {
        let _ = self.record(map, entry);
    }
}

/// A recorded change, not yet known to be on disk.
#[must_use = "under durability `sync` the caller must wait before it answers"]
pub struct Pending(Option<oneshot::Receiver<Result<(), String>>>);

impl Pending {
    /// Nothing to wait for (durability `interval`: the flush comes later).
    pub fn done() -> Self {
        Self(None)
    }

    pub fn waiting(receiver: oneshot::Receiver<Result<(), String>>) -> Self {
        Self(Some(receiver))
    }

    /// Whether there is anything to wait for.
    pub fn is_waiting(&self) -> bool {
        self.0.is_some()
    }

    pub async fn durable(self) -> Result<(), MapError> {
        match self.0 {
            None => Ok(()),
            Some(receiver) => match receiver.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(MapError::NotStored(e)),
                Err(_) => Err(MapError::NotStored("the journal writer has stopped".into())),
            },
        }
    }
}
