//! The operators' view of a data directory (`casd storage inspect | export | import`): what it holds, and moving
//! it to new hardware. Never prints a ticket id.
//!
//! `inspect` reads the journal without taking the directory's lock and without cutting anything, so it works
//! beside a running node (a record being written shows as a torn tail, reported and left alone). `export` writes
//! one compacted journal (the folded state: live entries and the tombstones still needed) sealed under the same key;
//! `import` joins such a file into a directory whose node is stopped: entries are joins, so importing into a
//! directory that already holds sessions merges the two, and importing twice changes nothing.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use super::format::{HEADER_LEN, Sealer, StorageKey};
use super::{Durability, Store, StoreError, io};
use crate::clock::EpochMs;
use crate::cluster::replication::replica::{Entry, MapId};
use crate::registry::persist::Persist;
use crate::registry::replicated::{MapPolicy, ReplicatedMap, SingleNode};
use crate::ticket::{ExpiryPolicy, Pgt, Tgt};

/// One map's part of a journal.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MapSummary {
    pub live: usize,
    pub tombstones: usize,
    /// Creation times of the oldest and newest live entry.
    pub oldest: Option<EpochMs>,
    pub newest: Option<EpochMs>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub bytes: u64,
    pub records: usize,
    /// Bytes after the last good record (a torn tail, or a record being written right now).
    pub tail_bytes: u64,
    pub tgt: MapSummary,
    pub pgt: MapSummary,
}

/// The journal's records folded into maps, as a node would restore them.
struct Folded {
    tgt: ReplicatedMap<Tgt>,
    pgt: ReplicatedMap<Pgt>,
}

impl Folded {
    fn new() -> Self {
        let policy = |map| MapPolicy::of(map, &ExpiryPolicy::default(), 1);
        Self {
            tgt: ReplicatedMap::new(policy(MapId::Tgt), Arc::new(SingleNode)),
            pgt: ReplicatedMap::new(policy(MapId::Pgt), Arc::new(SingleNode)),
        }
    }

    fn join(&self, records: &[(MapId, Entry)]) {
        for (map, entry) in records {
            match map {
                MapId::Tgt => {
                    self.tgt.restore(entry);
                }
                MapId::Pgt => {
                    self.pgt.restore(entry);
                }
                MapId::St | MapId::Pt | MapId::Lt => {}
            }
        }
    }

    fn for_each(&self, f: &mut dyn FnMut(MapId, Entry)) {
        self.tgt.for_each_entry(&mut |e| f(MapId::Tgt, e));
        self.pgt.for_each_entry(&mut |e| f(MapId::Pgt, e));
    }
}

/// A journal file as read, unchanged.
struct Read {
    records: Vec<(MapId, Entry)>,
    bytes: u64,
    /// Bytes after the last good record.
    tail: u64,
}

/// Reads a journal file under `key` without changing it.
fn read(path: &Path, key: &StorageKey) -> Result<Read, StoreError> {
    let bytes = fs::read(path).map_err(io(path, "cannot read"))?;
    let mut sealer = Sealer::existing(key, &bytes)
        .map_err(|source| StoreError::Header { path: path.display().to_string(), source })?;
    let (records, good) = sealer.open_all(&bytes[HEADER_LEN..]);
    Ok(Read { records, bytes: bytes.len() as u64, tail: (bytes.len() - HEADER_LEN - good) as u64 })
}

pub fn inspect(dir: &Path, key: &StorageKey) -> Result<Summary, StoreError> {
    let Read { records, bytes, tail: tail_bytes } = read(&dir.join("journal"), key)?;
    let folded = Folded::new();
    folded.join(&records);
    let (mut tgt, mut pgt) = (MapSummary::default(), MapSummary::default());
    folded.for_each(&mut |map, entry| {
        let summary = if map == MapId::Tgt { &mut tgt } else { &mut pgt };
        let created = match &entry {
            Entry::Removed { .. } => {
                summary.tombstones += 1;
                return;
            }
            Entry::Live { value, .. } if map == MapId::Tgt => {
                postcard::from_bytes::<Tgt>(value).ok().map(|t| t.created)
            }
            Entry::Live { value, .. } => postcard::from_bytes::<Pgt>(value).ok().map(|p| p.created),
        };
        summary.live += 1;
        if let Some(at) = created {
            summary.oldest = Some(summary.oldest.map_or(at, |o| o.min(at)));
            summary.newest = Some(summary.newest.map_or(at, |n| n.max(at)));
        }
    });
    Ok(Summary { bytes, records: records.len(), tail_bytes, tgt, pgt })
}

/// Writes the directory's folded state to `out` (which must not exist yet); returns the entries written.
pub fn export(dir: &Path, key: &StorageKey, out: &Path) -> Result<usize, StoreError> {
    let records = read(&dir.join("journal"), key)?.records;
    let folded = Folded::new();
    folded.join(&records);
    let mut sealer = Sealer::new_file(key);
    let mut bytes = sealer.header().to_vec();
    let mut entries = 0;
    folded.for_each(&mut |map, entry| {
        sealer.seal(map, &entry, &mut bytes);
        entries += 1;
    });
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(out)
        .map_err(io(out, "cannot create (it must not exist)"))?;
    file.write_all(&bytes).map_err(io(out, "cannot write"))?;
    file.sync_all().map_err(io(out, "cannot sync"))?;
    Ok(entries)
}

/// Joins the entries of an exported file into `dir` (its node must be stopped); returns the entries read.
pub fn import(dir: &Path, key: &StorageKey, file: &Path) -> Result<usize, StoreError> {
    let Read { records, tail, .. } = read(file, key)?;
    if tail > 0 {
        return Err(StoreError::Io {
            path: file.display().to_string(),
            action: "refused",
            source: std::io::Error::other(format!("{tail} bytes after the last good record: not a complete export")),
        });
    }
    let (store, _) = Store::open(dir, key, Durability::Sync)?;
    for (map, entry) in &records {
        store.record_lazily(*map, entry);
    }
    store.close();
    Ok(records.len())
}
