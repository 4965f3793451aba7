//! A ticket map replicated to every node of the cluster (issue: synchronous replicated ticket maps).
//!
//! Each entry is in a lattice: absent < live (copies joined with `Ticket::merge`) < removed (a tombstone kept until
//! every copy would have expired anyway). Replicas exchange whole values and tombstones, and every exchange is a
//! join, so the maps converge whatever the order, duplication or delay of messages: after a partition heals, a
//! pull of each other's snapshot is all it takes, and a removed ticket never comes back (invariant 3).
//!
//! One-time tickets (ST, PT, LT) are held and consumed only by the node that issued them, in the generation that
//! issued them (invariant 1): another node forwards the consume, and when the owner cannot be asked the consume
//! fails rather than risk a second success. Peers hold no copy of them, so no write or pull carries them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry as MapEntry;

use super::map::{Ended, MapError, TicketMap};
use super::persist::{Pending, Persist};
use crate::clock::{EpochMs, now_ms};
use crate::cluster::replication::digest::{self, BucketDigest, Digest, live_hash, removed_hash};
use crate::cluster::replication::replica::{Entry, MapId, MapReplica, NotOwner, Owner, Replicas};
use crate::ticket::{ExpiryPolicy, Ticket, TicketId};

/// Above this many entries, a removal of an unknown id leaves no tombstone.
const MAX_SLOTS_FOR_BLIND_REMOVAL: usize = 1_000_000;

enum Slot<V> {
    /// A value and its digest hash.
    Live(Arc<V>, u64),
    Removed {
        gc_after: EpochMs,
    },
}

/// A slot's id and state, gathered out of the table: the value, or the tombstone's collection time.
type Gathered<V> = (TicketId, Result<Arc<V>, EpochMs>);

/// A slot with its digest bucket, kept beside it so that serving a page of buckets scans the table alone: hashing
/// every id again meant a cache miss per entry, which was most of a state transfer's time.
struct Held<V> {
    bucket: u16,
    slot: Slot<V>,
}

impl<V> Held<V> {
    fn new(id: &str, slot: Slot<V>) -> Self {
        Self { bucket: digest::bucket_of(id) as u16, slot }
    }
}

impl<V> Slot<V> {
    fn hash(&self, id: &TicketId) -> u64 {
        match self {
            Slot::Live(_, hash) => *hash,
            Slot::Removed { .. } => removed_hash(id.as_str()),
        }
    }
}

/// Who may take (consume or remove) a ticket of a map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consumption {
    /// Any node: the removal is replicated before the caller goes on (logout of a TGT, PGTs of an ended session).
    AnyNode,
    /// Only the boot of the node that issued it (one-time tickets, invariant 1); other nodes forward the consume.
    IssuingNode,
}

/// Which nodes hold a map's entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Copies {
    /// Every node: any node may read the entry (sessions, PGTs), and single logout needs them all.
    Everywhere,
    /// Only the issuer, the one node that ever reads the entry: nothing is sent to peers, in writes or in pulls.
    /// Login tickets are minted by anyone who loads the login page, so replicating them made every anonymous
    /// `GET /login` a synchronous write on every node (issue 12). Service and proxy tickets followed (issue 17): a
    /// peer never read its copy, since every consume goes to the owner and a dead owner means a refused ticket, yet
    /// the copy cost a synchronous write per issue and a removal per validation on every peer.
    IssuerOnly,
}

/// The "cluster" of a single node that keeps a journal: its maps are replicated maps (the journal records their
/// entries), every write has one copy, and every ticket is this boot's to decide.
pub struct SingleNode;

#[async_trait]
impl Replicas for SingleNode {
    async fn replicate(&self, _map: MapId, _entry: Entry) -> usize {
        1
    }

    fn owner(&self, _node: &str, _generation: u64) -> Owner {
        Owner::Me
    }

    async fn forward_consume(
        &self,
        _owner: &Owner,
        _map: MapId,
        _id: &str,
    ) -> Result<Option<Vec<u8>>, crate::cluster::replication::replica::ReplicaError> {
        Ok(None)
    }
}

/// How one map behaves in the cluster.
#[derive(Clone, Copy, Debug)]
pub struct MapPolicy {
    pub map: MapId,
    pub consumption: Consumption,
    pub copies: Copies,
    /// Copies (this node's included) a new ticket must reach, or its creation fails.
    pub min_copies: usize,
    /// How long a tombstone outlives the removal: the kind's longest lifetime plus a margin.
    pub tombstone_ttl: Duration,
}

impl MapPolicy {
    /// The policy of each map, decided here and nowhere else. `session_min_copies` applies to new SSO sessions
    /// (`cluster.min_copies`); a one-time ticket needs no copy but its issuer's, which alone decides it.
    pub fn of(map: MapId, expiry: &ExpiryPolicy, session_min_copies: usize) -> Self {
        use {Consumption::*, Copies::*};
        // The deliberately broken chaos-checker build copies one-time tickets everywhere and lets any node consume
        // its copy: the bug the owner rule exists to prevent, which the checker must catch.
        let one_time = if cfg!(feature = "unsafe-local-consume") { Everywhere } else { IssuerOnly };
        let (consumption, copies, lifetime, min_copies) = match map {
            MapId::Tgt => (AnyNode, Everywhere, expiry.longest_tgt_lifetime(), session_min_copies),
            MapId::Pgt => (AnyNode, Everywhere, expiry.longest_tgt_lifetime(), 1),
            MapId::St => (IssuingNode, one_time, expiry.st_ttl, 1),
            MapId::Pt => (IssuingNode, one_time, expiry.pt_ttl, 1),
            MapId::Lt => (IssuingNode, IssuerOnly, expiry.lt_ttl, 1),
        };
        // A tombstone must outlive every copy of the ticket it removes, clocks a little apart included.
        let margin = Duration::from_secs(60);
        Self { map, consumption, copies, min_copies, tombstone_ttl: lifetime + margin }
    }
}

pub struct ReplicatedMap<V> {
    policy: MapPolicy,
    slots: DashMap<TicketId, Held<V>>,
    /// Kept in step with `slots`: every change of a slot is reported while the slot is locked.
    digest: Digest,
    /// Live slots, kept in step with `slots` the same way, so that `len` (read at every metrics scrape) costs
    /// nothing however large the map.
    live: AtomicUsize,
    replicator: Arc<dyn Replicas>,
    /// The local journal (issue 14), set once the map has been restored from it. Every change of a slot is recorded
    /// as the entry a peer would get, so replaying the journal is a series of joins that rebuilds the map.
    persist: OnceLock<Arc<dyn Persist>>,
    /// Tickets whose consume must first see a write on disk (a service ticket's grant in its TGT, under durability
    /// `sync`): held until consumed, or until the ticket expires (`sweep`).
    holds: DashMap<TicketId, Pending>,
}

impl<V: Ticket> ReplicatedMap<V> {
    pub fn new(policy: MapPolicy, replicator: Arc<dyn Replicas>) -> Self {
        Self {
            policy,
            slots: DashMap::new(),
            digest: Digest::default(),
            live: AtomicUsize::new(0),
            replicator,
            persist: OnceLock::new(),
            holds: DashMap::new(),
        }
    }

    /// From now on, every change is recorded in `persist`. Called once, after the map was restored from it (the
    /// restore applies entries with nothing to record them to).
    pub fn persist_to(&self, persist: Arc<dyn Persist>) {
        if self.persist.set(persist).is_err() {
            tracing::error!(map = self.policy.map.name(), "a map's journal was set twice; the second is ignored");
        }
    }

    /// Slots held, tombstones included.
    pub fn held(&self) -> usize {
        self.slots.len()
    }

    /// Records a change nobody waits for in the journal, if this map has one.
    fn record_lazily(&self, entry: &Entry) {
        if let Some(p) = self.persist.get() {
            p.record_lazily(self.policy.map, entry);
        }
    }

    /// Records a change in the journal, if this map has one.
    fn record(&self, entry: &Entry) -> Pending {
        match self.persist.get() {
            Some(p) => p.record(self.policy.map, entry),
            None => Pending::done(),
        }
    }

    /// Every entry, tombstones included, for a compaction of the journal.
    pub fn for_each_entry(&self, f: &mut dyn FnMut(Entry)) {
        for (id, state) in self.gather(|_, _| true) {
            f(Self::entry_of(&id, state));
        }
    }

    /// The slots `wanted` picks, as references gathered first, so that no shard lock is held while entries are
    /// serialised.
    fn gather(&self, wanted: impl Fn(&TicketId, &Held<V>) -> bool) -> Vec<Gathered<V>> {
        self.slots
            .iter()
            .filter(|e| wanted(e.key(), e.value()))
            .map(|e| {
                let state = match &e.value().slot {
                    Slot::Live(v, _) => Ok(v.clone()),
                    Slot::Removed { gc_after } => Err(*gc_after),
                };
                (e.key().clone(), state)
            })
            .collect()
    }

    fn entry_of(id: &TicketId, state: Result<Arc<V>, EpochMs>) -> Entry {
        match state {
            Ok(v) => {
                Entry::Live { id: id.to_string(), value: postcard::to_allocvec(&*v).expect("tickets always serialise") }
            }
            Err(gc_after) => Entry::Removed { id: id.to_string(), gc_after },
        }
    }

    /// The entry that replicates `value`, and the value's digest hash.
    fn live_entry(id: &TicketId, value: &V) -> (Entry, u64) {
        let value = postcard::to_allocvec(value).expect("tickets always serialise");
        let hash = live_hash(id.as_str(), &value);
        (Entry::Live { id: id.to_string(), value }, hash)
    }

    fn tombstone_entry(&self, id: &TicketId) -> (Entry, EpochMs) {
        let gc_after = now_ms() + self.policy.tombstone_ttl.as_millis() as u64;
        (Entry::Removed { id: id.to_string(), gc_after }, gc_after)
    }

    async fn replicate(&self, entry: Entry) -> usize {
        match self.policy.copies {
            Copies::Everywhere => self.replicator.replicate(self.policy.map, entry).await,
            Copies::IssuerOnly => 1,
        }
    }

    /// Turns a live entry into a tombstone, atomically (at most one caller gets the value), and returns it with the
    /// entry that tells the peers. An id this node does not hold is left alone here; only a logout may remove one
    /// (`remove_unknown`, bounded), so made-up ticket ids cannot fill the map with tombstones.
    fn tombstone(&self, id: &TicketId) -> Option<(Arc<V>, Entry)> {
        let (op, gc_after) = self.tombstone_entry(id);
        let mut held = self.slots.get_mut(id)?;
        let slot = &mut held.slot;
        if !matches!(*slot, Slot::Live(..)) {
            return None;
        }
        let before = slot.hash(id);
        match std::mem::replace(&mut *slot, Slot::Removed { gc_after }) {
            Slot::Live(v, _) => {
                self.digest.change(id.as_str(), Some(before), Some(removed_hash(id.as_str())));
                self.live.fetch_sub(1, Ordering::Relaxed);
                Some((v, op))
            }
            Slot::Removed { .. } => None,
        }
    }

    /// Removes a ticket and waits until the peers hold the tombstone (logout: invariant 3).
    async fn remove_and_replicate(&self, id: &TicketId) -> Option<Arc<V>> {
        let (value, op) = self.tombstone(id)?;
        let stored = self.record(&op);
        self.replicate(op).await;
        if let Err(e) = stored.durable().await {
            tracing::warn!(error = %e, "a removal is replicated but not stored on this node's disk");
        }
        Some(value)
    }

    /// Removes a ticket this node does not hold (a logout arriving at a node on the other side of a partition from
    /// the login): the removal is remembered and replicated, so the copies beyond the partition die when it heals
    /// (invariant 3). Only while the map is below `MAX_SLOTS_FOR_BLIND_REMOVAL`, so made-up ids cannot fill memory.
    /// A removal this node already holds is sent again: a logout that was not confirmed everywhere is retried by
    /// the user's next one. Returns the nodes that hold the removal, this one included.
    async fn remove_unknown(&self, id: &TicketId) -> usize {
        if self.slots.len() >= MAX_SLOTS_FOR_BLIND_REMOVAL {
            return 1;
        }
        let (op, gc_after) = self.tombstone_entry(id);
        let (send, stored) = match self.slots.entry(id.clone()) {
            MapEntry::Vacant(e) => {
                self.digest.change(id.as_str(), None, Some(removed_hash(id.as_str())));
                e.insert(Held::new(id.as_str(), Slot::Removed { gc_after }));
                (true, self.record(&op))
            }
            MapEntry::Occupied(e) => (matches!(e.get().slot, Slot::Removed { .. }), Pending::done()),
        };
        let copies = if send { self.replicate(op).await } else { 1 };
        if let Err(e) = stored.durable().await {
            tracing::warn!(error = %e, "a removal is replicated but not stored on this node's disk");
        }
        copies
    }

    /// Waits for what the consume of `id` must not outrun (see [`TicketMap::hold`]).
    async fn settle(&self, id: &TicketId) -> Result<(), MapError> {
        match self.holds.remove(id) {
            Some((_, pending)) => pending.durable().await,
            None => Ok(()),
        }
    }

    /// The owner's consume of a one-time ticket. The decision is the owner's alone (a peer never decides, and a
    /// restarted owner refuses its old generation), so the tombstone only tidies the peers' copies: it is sent
    /// after the answer instead of before, which saves the caller a round trip to every peer.
    fn consume_here(&self, id: &TicketId) -> Option<Arc<V>> {
        let (value, op) = self.tombstone(id)?;
        if self.policy.copies == Copies::Everywhere {
            let (replicator, map) = (self.replicator.clone(), self.policy.map);
            tokio::spawn(async move {
                replicator.replicate(map, op).await;
            });
        }
        Some(value)
    }

    /// Joins an entry from a peer or the journal into the map; whether anything changed.
    fn join(&self, entry: &Entry) -> bool {
        match entry {
            Entry::Live { id: raw, value: bytes } => {
                let (Ok(id), Some(value)) = (TicketId::parse(raw), Self::decode(bytes)) else { return false };
                match self.slots.entry(id) {
                    MapEntry::Occupied(mut e) => {
                        let Slot::Live(existing, hash) = &mut e.get_mut().slot else { return false };
                        let merged = Arc::make_mut(existing);
                        merged.merge(&value);
                        let after = live_hash(raw, &postcard::to_allocvec(&*merged).expect("tickets always serialise"));
                        self.digest.change(raw, Some(*hash), Some(after));
                        let changed = *hash != after;
                        *hash = after;
                        changed
                    }
                    MapEntry::Vacant(e) => {
                        let hash = live_hash(raw, bytes);
                        self.digest.change(raw, None, Some(hash));
                        e.insert(Held::new(raw, Slot::Live(Arc::new(value), hash)));
                        self.live.fetch_add(1, Ordering::Relaxed);
                        true
                    }
                }
            }
            Entry::Removed { id: raw, gc_after } => {
                let Ok(id) = TicketId::parse(raw) else { return false };
                match self.slots.entry(id) {
                    MapEntry::Vacant(e) => {
                        self.digest.change(raw, None, Some(removed_hash(raw)));
                        e.insert(Held::new(raw, Slot::Removed { gc_after: *gc_after }));
                        true
                    }
                    MapEntry::Occupied(mut e) => {
                        let slot = &mut e.get_mut().slot;
                        match slot {
                            Slot::Removed { gc_after: g } => {
                                *g = (*g).max(*gc_after);
                                false
                            }
                            Slot::Live(_, before) => {
                                let before = *before;
                                self.digest.change(raw, Some(before), Some(removed_hash(raw)));
                                *slot = Slot::Removed { gc_after: *gc_after };
                                self.live.fetch_sub(1, Ordering::Relaxed);
                                true
                            }
                        }
                    }
                }
            }
        }
    }

    /// Rebuilds the map from its journal at start, before any peer or client sees it. Not recorded again. False
    /// for a record that cannot be read (a ticket encoded by another version of casd), which the caller reports.
    pub fn restore(&self, entry: &Entry) -> bool {
        if let Entry::Live { value, .. } = entry
            && Self::decode(value).is_none()
        {
            return false;
        }
        if self.policy.copies == Copies::Everywhere {
            self.join(entry);
        }
        true
    }

    fn decode(bytes: &[u8]) -> Option<V> {
        postcard::from_bytes(bytes).ok()
    }
}

#[async_trait]
impl<V: Ticket> TicketMap<V> for ReplicatedMap<V> {
    async fn insert(&self, id: &TicketId, value: V) -> Result<(), MapError> {
        let (op, hash) = Self::live_entry(id, &value);
        let before = self.slots.insert(id.clone(), Held::new(id.as_str(), Slot::Live(Arc::new(value), hash)));
        if !matches!(before.as_ref().map(|b| &b.slot), Some(Slot::Live(..))) {
            self.live.fetch_add(1, Ordering::Relaxed);
        }
        // Outside the slot's lock, but each replaced state is reported exactly once, and XOR does not mind order.
        self.digest.change(id.as_str(), before.map(|b| b.slot.hash(id)), Some(hash));
        // On this node's disk and on the peers at once: the caller waits for the slower of the two.
        let stored = self.record(&op);
        let copies = self.replicate(op).await;
        let stored = stored.durable().await;
        if copies < self.policy.min_copies || stored.is_err() {
            // Too fragile to hand out: withdraw it everywhere it reached.
            self.remove_and_replicate(id).await;
            stored?;
            return Err(MapError::Unavailable { copies, needed: self.policy.min_copies });
        }
        Ok(())
    }

    async fn get(&self, id: &TicketId) -> Option<Arc<V>> {
        match self.slots.get(id).as_deref().map(|h| &h.slot) {
            Some(Slot::Live(v, _)) => Some(v.clone()),
            _ => None,
        }
    }

    async fn end(&self, id: &TicketId) -> Result<Ended<V>, MapError> {
        if self.policy.consumption != Consumption::AnyNode {
            return Ok(Ended { value: self.take(id).await?, copies: 1 });
        }
        if let Some((value, op)) = self.tombstone(id) {
            let stored = self.record(&op);
            let copies = self.replicate(op).await;
            stored.durable().await?;
            return Ok(Ended { value: Some(value), copies });
        }
        Ok(Ended { value: None, copies: self.remove_unknown(id).await })
    }

    async fn take(&self, id: &TicketId) -> Result<Option<Arc<V>>, MapError> {
        if self.policy.consumption == Consumption::AnyNode {
            return Ok(self.end(id).await?.value);
        }
        let Some(origin) = id.origin() else { return Ok(None) };
        if cfg!(feature = "unsafe-local-consume") {
            tracing::error!("built with unsafe-local-consume: consuming without the owner (chaos checker test)");
            return Ok(self.consume_here(id));
        }
        match self.replicator.owner(&origin.node, origin.generation) {
            Owner::Me => {
                let value = self.consume_here(id);
                self.settle(id).await?;
                Ok(value)
            }
            owner @ Owner::Peer { .. } => {
                let value =
                    self.replicator.forward_consume(&owner, self.policy.map, id.as_str()).await.map_err(|e| {
                        tracing::info!(ticket = %id.redacted(), error = %e, "owner could not consume; refusing");
                        MapError::OwnerUnreachable
                    })?;
                Ok(value.and_then(|bytes| Self::decode(&bytes)).map(Arc::new))
            }
            // Issued by an earlier boot of this node, or by a node that is gone: nobody may decide, so nobody does.
            Owner::Gone => Err(MapError::OwnerUnreachable),
        }
    }

    fn live_entries(&self) -> Vec<(TicketId, Arc<V>)> {
        self.slots
            .iter()
            .filter_map(|h| match &h.value().slot {
                Slot::Live(v, _) => Some((h.key().clone(), v.clone())),
                Slot::Removed { .. } => None,
            })
            .collect()
    }

    fn hold(&self, id: &TicketId, pending: Pending) {
        if pending.is_waiting() {
            self.holds.insert(id.clone(), pending);
        }
    }

    async fn change(&self, id: &TicketId, change: V::Change) -> Result<bool, MapError> {
        let (changed, stored) = self.change_deferred(id, change).await?;
        stored.durable().await?;
        Ok(changed)
    }

    async fn change_deferred(&self, id: &TicketId, change: V::Change) -> Result<(bool, Pending), MapError> {
        let op = match self.slots.get_mut(id) {
            Some(mut held) => match &mut held.slot {
                Slot::Live(v, hash) => {
                    let v = Arc::make_mut(v);
                    v.apply(&change);
                    let (op, after) = Self::live_entry(id, v);
                    self.digest.change(id.as_str(), Some(*hash), Some(after));
                    *hash = after;
                    op
                }
                Slot::Removed { .. } => return Ok((false, Pending::done())),
            },
            None => return Ok((false, Pending::done())),
        };
        let stored = self.record(&op);
        self.replicate(op).await;
        Ok((true, stored))
    }

    /// An expired ticket becomes a tombstone rather than vanishing: a peer that has not swept yet could otherwise
    /// hand it back through anti-entropy, and its expiry would be "found" (and single logout sent) twice.
    async fn sweep(&self, policy: &ExpiryPolicy, now: EpochMs) -> Vec<(TicketId, Arc<V>)> {
        let mut expired = Vec::new();
        let gc_after = now.saturating_add(self.policy.tombstone_ttl.as_millis() as u64);
        self.slots.retain(|id, held| match &mut held.slot {
            Slot::Live(v, hash) if v.is_expired(policy, now) => {
                // Recorded, not waited for: an expiry lost in a crash is found again after the restart.
                self.record_lazily(&Entry::Removed { id: id.to_string(), gc_after });
                expired.push((id.clone(), v.clone()));
                self.live.fetch_sub(1, Ordering::Relaxed);
                self.digest.change(id.as_str(), Some(*hash), Some(removed_hash(id.as_str())));
                held.slot = Slot::Removed { gc_after };
                true
            }
            Slot::Removed { gc_after } => {
                let keep = *gc_after > now;
                if !keep {
                    self.digest.change(id.as_str(), Some(removed_hash(id.as_str())), None);
                }
                keep
            }
            Slot::Live(..) => true,
        });
        // Holds of tickets that can no longer be consumed (expired, or removed) have nothing left to guard.
        if !self.holds.is_empty() {
            self.holds.retain(|id, _| self.slots.get(id).is_some_and(|h| matches!(h.slot, Slot::Live(..))));
        }
        expired
    }

    async fn remove_where(&self, doomed: &(dyn for<'v> Fn(&'v V) -> bool + Sync)) -> usize {
        let ids: Vec<TicketId> = self
            .slots
            .iter()
            .filter(|e| matches!(&e.value().slot, Slot::Live(v, _) if doomed(v)))
            .map(|e| e.key().clone())
            .collect();
        let mut removed = 0;
        for id in ids {
            removed += usize::from(self.remove_and_replicate(&id).await.is_some());
        }
        removed
    }

    fn len(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl<V: Ticket> MapReplica for ReplicatedMap<V> {
    fn pulled(&self) -> bool {
        self.policy.consumption == Consumption::AnyNode && self.policy.copies == Copies::Everywhere
    }

    fn apply(&self, entry: &Entry) {
        if self.policy.copies == Copies::IssuerOnly {
            return;
        }
        // Recorded only when it changed something, so that anti-entropy's repeats do not grow the journal; not
        // waited for (the writer of the change waits for its own disk).
        if self.join(entry) {
            self.record_lazily(entry);
        }
    }

    async fn consume_as_owner(&self, id: &str) -> Result<Option<Vec<u8>>, NotOwner> {
        let Ok(id) = TicketId::parse(id) else { return Ok(None) };
        if !id.origin().is_some_and(|o| self.replicator.owner(&o.node, o.generation) == Owner::Me) {
            return Err(NotOwner);
        }
        let value = self.consume_here(&id);
        if let Err(e) = self.settle(&id).await {
            tracing::warn!(ticket = %id.redacted(), error = %e, "consume refused: what it depends on is not on disk");
            return Ok(None);
        }
        Ok(value.map(|v| postcard::to_allocvec(&*v).expect("tickets always serialise")))
    }

    /// An issuer-only map shows peers an empty digest, so that pulls never fetch it.
    fn digest(&self) -> Vec<BucketDigest> {
        match self.policy.copies {
            Copies::Everywhere => self.digest.buckets(),
            Copies::IssuerOnly => Digest::default().buckets(),
        }
    }

    fn entries_in(&self, buckets: &[u16], after: Option<&str>, max_bytes: usize) -> (Vec<Entry>, bool) {
        let mut wanted = vec![false; digest::BUCKETS];
        for &b in buckets {
            if let Some(w) = wanted.get_mut(usize::from(b)) {
                *w = true;
            }
        }
        // Gather references first and serialise only what goes into this page.
        let mut found =
            self.gather(|id, held| wanted[usize::from(held.bucket)] && after.is_none_or(|a| id.as_str() > a));
        found.sort_unstable_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        let (mut entries, mut bytes) = (Vec::new(), 0);
        for (id, state) in found {
            let entry = Self::entry_of(&id, state);
            let size = entry.id().len() + 16 + if let Entry::Live { value, .. } = &entry { value.len() } else { 0 };
            if !entries.is_empty() && bytes + size > max_bytes {
                return (entries, true);
            }
            bytes += size;
            entries.push(entry);
        }
        (entries, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ticket::{IdGenerator, Principal, Tgt, TgtChange, TicketKind};

    fn map() -> ReplicatedMap<Tgt> {
        ReplicatedMap::new(MapPolicy::of(MapId::Tgt, &ExpiryPolicy::default(), 1), Arc::new(SingleNode))
    }

    fn tgt(created: EpochMs) -> Tgt {
        Tgt {
            principal: Principal { id: "a".into(), attributes: Default::default() },
            created,
            last_used: created,
            services: Default::default(),
            long_term: false,
        }
    }

    /// A consume waits for what its ticket is held on (the grant's sync), and fails if that write failed: a
    /// service ticket never validates before the session's record of it is on disk.
    #[tokio::test]
    async fn a_held_ticket_is_handed_out_only_once_its_hold_is_on_disk() {
        use crate::ticket::ServiceTicket;
        let st = |n: u64| ServiceTicket {
            service: "https://app/".into(),
            tgt: "TGT-x".into(),
            from_new_login: true,
            created: n,
            proxies: Vec::new(),
        };
        let m: ReplicatedMap<ServiceTicket> =
            ReplicatedMap::new(MapPolicy::of(MapId::St, &ExpiryPolicy::default(), 1), Arc::new(SingleNode));
        let ids = IdGenerator::new("n", 1, &[7; 32]);
        let (ok_id, bad_id) = (ids.mint(TicketKind::St), ids.mint(TicketKind::St));
        m.insert(&ok_id, st(1)).await.expect("insert");
        m.insert(&bad_id, st(2)).await.expect("insert");
        let (sync_ok, pending) = tokio::sync::oneshot::channel();
        m.hold(&ok_id, Pending::waiting(pending));
        let (sync_bad, pending) = tokio::sync::oneshot::channel();
        m.hold(&bad_id, Pending::waiting(pending));

        let m = Arc::new(m);
        let taking = tokio::spawn({
            let (m, id) = (m.clone(), ok_id.clone());
            async move { m.take(&id).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!taking.is_finished(), "not handed out before the sync");
        sync_ok.send(Ok(())).expect("send");
        let got = taking.await.expect("join").expect("taken");
        assert_eq!(got.map(|t| t.created), Some(1));

        sync_bad.send(Err("disk full".into())).expect("send");
        assert!(m.take(&bad_id).await.is_err(), "a failed sync refuses the consume");
        assert!(m.take(&bad_id).await.expect("second").is_none(), "and the ticket is used up all the same");
    }

    #[tokio::test]
    async fn an_expired_ticket_handed_back_by_a_peer_stays_expired() {
        let m = map();
        let id = IdGenerator::new("n", 1, &[7; 32]).mint(TicketKind::Tgt);
        m.insert(&id, tgt(0)).await.expect("insert");
        let expiry = ExpiryPolicy::default();
        let late = expiry.tgt_max_lifetime.as_millis() as u64 + 1;
        assert_eq!(m.sweep(&expiry, late).await.len(), 1, "found expired once");
        m.apply(&Entry::Live { id: id.to_string(), value: postcard::to_allocvec(&tgt(0)).expect("ser") });
        assert!(m.get(&id).await.is_none(), "a stale copy from a peer does not bring it back");
        assert!(m.sweep(&expiry, late + 1).await.is_empty(), "and it is not found expired a second time");
    }

    #[tokio::test]
    async fn removal_wins_over_any_copy_in_any_order() {
        let (a, b) = (map(), map());
        let id = IdGenerator::new("n", 1, &[7; 32]).mint(TicketKind::Tgt);
        let put = Entry::Live { id: id.to_string(), value: postcard::to_allocvec(&tgt(5)).expect("ser") };
        let remove = Entry::Removed { id: id.to_string(), gc_after: u64::MAX };
        a.apply(&put);
        a.apply(&remove);
        b.apply(&remove);
        b.apply(&put);
        assert!(a.get(&id).await.is_none() && b.get(&id).await.is_none());
        assert_eq!(
            a.entries_in(&digest::all_buckets(), None, usize::MAX).0,
            b.entries_in(&digest::all_buckets(), None, usize::MAX).0
        );
        assert_eq!(a.digest(), b.digest());
    }

    /// Pages bounded by bytes, each continuing after the last id of the one before, together give every entry once
    /// in id order; an entry larger than a page still travels, alone.
    #[tokio::test]
    async fn pages_by_bytes_cover_every_entry_once() {
        let m = map();
        let ids = IdGenerator::new("n", 1, &[7; 32]);
        for i in 0..60u64 {
            let mut t = tgt(i);
            let size = if i == 7 { 5000 } else { 100 };
            t.principal.attributes = [("a".to_owned(), vec!["x".repeat(size)])].into_iter().collect();
            m.insert(&ids.mint(TicketKind::Tgt), t).await.expect("insert");
        }
        let all = m.entries_in(&digest::all_buckets(), None, usize::MAX).0;
        let (mut paged, mut after, mut pages) = (Vec::new(), None::<String>, 0);
        loop {
            let (page, more) = m.entries_in(&digest::all_buckets(), after.as_deref(), 1000);
            pages += 1;
            let bytes: usize =
                page.iter().map(|e| if let Entry::Live { value, .. } = e { value.len() } else { 0 }).sum();
            assert!(page.len() == 1 || bytes <= 1000, "a page of {} entries holds {bytes} bytes", page.len());
            after = page.last().map(|e| e.id().to_owned());
            paged.extend(page);
            if !more {
                break;
            }
        }
        assert_eq!(paged, all, "the pages add up to the whole map, in order");
        assert!(pages > 6, "{pages} pages");
    }

    /// The digest a map keeps as it goes equals the digest of what it holds, computed afresh, after every kind of
    /// change: otherwise anti-entropy would miss differences or fetch forever.
    #[tokio::test]
    async fn the_running_digest_matches_the_contents_after_every_kind_of_change() {
        fn afresh(m: &ReplicatedMap<Tgt>) -> Vec<BucketDigest> {
            let d = Digest::default();
            for e in m.entries_in(&digest::all_buckets(), None, usize::MAX).0 {
                match &e {
                    Entry::Live { id, value } => d.change(id, None, Some(live_hash(id, value))),
                    Entry::Removed { id, .. } => d.change(id, None, Some(removed_hash(id))),
                }
            }
            d.buckets()
        }
        let m = map();
        let ids = IdGenerator::new("n", 1, &[7; 32]);
        let kept: Vec<TicketId> = (0..40).map(|_| ids.mint(TicketKind::Tgt)).collect();
        for (i, id) in kept.iter().enumerate() {
            m.insert(id, tgt(i as u64)).await.expect("insert");
        }
        assert_eq!(m.digest(), afresh(&m), "after inserts");
        let grant = TgtChange::Granted { ticket: "ST-1".into(), service: "https://a.example".into(), at: 50 };
        assert!(m.change(&kept[0], grant).await.expect("change"));
        assert_eq!(m.digest(), afresh(&m), "after a change");
        let mut other = tgt(1);
        other.apply(&TgtChange::Granted { ticket: "ST-2".into(), service: "https://b.example".into(), at: 60 });
        m.apply(&Entry::Live { id: kept[1].to_string(), value: postcard::to_allocvec(&other).expect("ser") });
        assert_eq!(m.digest(), afresh(&m), "after a merge");
        m.take(&kept[2]).await.expect("take");
        m.take(&ids.mint(TicketKind::Tgt)).await.expect("blind removal");
        m.apply(&Entry::Removed { id: kept[3].to_string(), gc_after: 10 });
        m.apply(&Entry::Removed { id: ids.mint(TicketKind::Tgt).to_string(), gc_after: 10 });
        assert_eq!(m.digest(), afresh(&m), "after removals");
        let counted = |m: &ReplicatedMap<Tgt>| {
            m.entries_in(&digest::all_buckets(), None, usize::MAX)
                .0
                .iter()
                .filter(|e| matches!(e, Entry::Live { .. }))
                .count()
        };
        assert_eq!(m.len(), counted(&m), "the live count follows inserts, merges and removals");
        let expiry = ExpiryPolicy::default();
        let late = expiry.tgt_max_lifetime.as_millis() as u64 + 100;
        assert!(!m.sweep(&expiry, late).await.is_empty());
        assert_eq!(m.digest(), afresh(&m), "after expiry");
        assert_eq!((m.len(), counted(&m)), (0, 0), "and expiry");
        // Past every tombstone's lifetime: the longest TGT lifetime (8 h) plus the margin.
        m.sweep(&expiry, now_ms() + 9 * 3_600_000).await;
        assert_eq!(m.digest(), afresh(&m), "after tombstones were collected");
        assert!(m.digest().iter().all(|d| d.entries == 0 && d.hash == 0), "an empty map has the empty digest");
    }
}
