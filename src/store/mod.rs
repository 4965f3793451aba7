//! Durable ticket maps (issue 14): each node keeps the maps every node holds (sessions, PGTs, and the tombstones
//! that keep logouts dead) in a sealed journal on its own disk, so that a restart of one node, or of every node,
//! keeps the SSO sessions.
//!
//! One file, `<dir>/journal`, written by one thread: each change of a map is appended as the entry a peer would be
//! sent (a join), so replaying the file in order rebuilds the map, and a record seen twice changes nothing. Under
//! `sync` the writer gathers every change that arrived while it was busy into one `write` and one `fdatasync`
//! (group commit) and only then wakes their callers; under `interval` callers go on at once and the file is synced
//! every `flush_interval`. When the file holds four times as many records as the maps have entries, a thread of its
//! own rewrites it from the maps (compaction) into a new file while the writer goes on appending to the old one; the
//! writer then adds what it appended meanwhile (joins, so a record the snapshot already holds changes nothing) and
//! renames the new file over the old one.
//!
//! Service, proxy and login tickets are not kept: a restarted node refuses the tickets of its earlier boot anyway
//! (the generation rule of invariant 1), so a copy on disk could never be used.

pub mod format;
pub mod tools;

use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::cluster::replication::replica::{Entry, MapId};
use crate::registry::persist::{Pending, Persist};
pub use format::StorageKey;
use format::{HEADER_LEN, HeaderError, Sealer};

/// When a change counts as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// On disk (`fdatasync`) before the caller goes on: a login is answered only once its session is on disk.
    Sync,
    /// Written at once, synced at this interval: a power failure loses up to one interval of changes.
    Interval(Duration),
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {action}: {source}")]
    Io { path: String, action: &'static str, source: std::io::Error },
    #[error("{path}: {source}")]
    Header { path: String, source: HeaderError },
    #[error("{path}: another casd process uses this data directory")]
    Locked { path: String },
}

fn io<'a>(path: &'a Path, action: &'static str) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io { path: path.display().to_string(), action, source }
}

/// An opened journal and the records read back from it, for the maps to restore from.
pub type Reopened = (Arc<Store>, Vec<(MapId, Entry)>);

/// Everything the maps hold, for a compaction: calls `f` once per entry of every kept map.
pub type Source = Arc<dyn Fn(&mut dyn FnMut(MapId, Entry)) + Send + Sync>;

enum Command {
    Append {
        map: MapId,
        entry: Entry,
        done: Option<oneshot::Sender<Result<(), String>>>,
    },
    /// Syncs what was written, then answers; with `close`, the writer then stops (a node's graceful stop).
    Flush {
        answer: Sender<()>,
        close: bool,
    },
    /// Where compactions read the maps from, and how many entries they hold now.
    Source(Source, usize),
}

/// What [`Store::open`] found on disk.
pub struct Recovered {
    pub records: Vec<(MapId, Entry)>,
    /// Bytes of a torn or corrupt tail that were cut off.
    pub cut_bytes: u64,
}

/// The journal of one node. Cheap to share; the writer thread ends when the last handle is dropped.
pub struct Store {
    /// `Sender` is `Sync`: every writer sends without a lock.
    tx: Sender<Command>,
    durability: Durability,
    path: PathBuf,
    writer: Mutex<Option<JoinHandle<()>>>,
    lock: File,
    /// Changes nobody waits for: the writer takes them every `GATHER` or when it wakes for a waited-for change, so
    /// that they cost their senders no wake-up of the writer (a futex call each, which under load cost as much CPU
    /// as the rest of a write). Records are joins, so their order against waited-for ones does not matter.
    lazy: Lazy,
}

type Lazy = Arc<Mutex<Vec<(MapId, Entry)>>>;

impl Store {
    /// Opens (or creates) the journal in `dir`, reads it back and cuts a torn tail. Errors name the path: a
    /// directory that cannot be created or written, a file of a newer format, another key, another process.
    pub fn open(dir: &Path, key: &StorageKey, durability: Durability) -> Result<(Arc<Self>, Recovered), StoreError> {
        Self::open_compacting_after(dir, key, durability, MIN_RECORDS_TO_COMPACT)
    }

    /// As [`Store::open`], compacting once the file holds more than `min_records` records (and four times the maps'
    /// entries): tests make it small.
    pub fn open_compacting_after(
        dir: &Path,
        key: &StorageKey,
        durability: Durability,
        min_records: usize,
    ) -> Result<(Arc<Self>, Recovered), StoreError> {
        fs::create_dir_all(dir).map_err(io(dir, "cannot create the data directory"))?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path, "cannot open for writing"))?;
        if lock.try_lock().is_err() {
            return Err(StoreError::Locked { path: dir.display().to_string() });
        }
        let path = dir.join("journal");
        // A compaction's file left by a stop or crash in mid-compaction: never read (the journal is whole without
        // it; the rename is the last step), so it only takes space.
        let stale = path.with_extension("new");
        if stale.exists() {
            tracing::info!(path = %stale.display(), "removing an unfinished compaction's file");
            fs::remove_file(&stale).map_err(io(&stale, "cannot remove"))?;
        }
        let (file, sealer, recovered) = match fs::read(&path) {
            Ok(bytes) if !bytes.is_empty() => {
                let mut sealer = Sealer::existing(key, &bytes)
                    .map_err(|source| StoreError::Header { path: path.display().to_string(), source })?;
                let (records, good) = sealer.open_all(&bytes[HEADER_LEN..]);
                let good_len = (HEADER_LEN + good) as u64;
                let cut_bytes = bytes.len() as u64 - good_len;
                let mut file =
                    OpenOptions::new().write(true).open(&path).map_err(io(&path, "cannot open for writing"))?;
                if cut_bytes > 0 {
                    tracing::warn!(path = %path.display(), cut_bytes, kept_records = records.len(),
                        "the journal ends in a torn or corrupt record; it is cut there");
                    file.set_len(good_len).map_err(io(&path, "cannot cut the torn tail"))?;
                    file.sync_all().map_err(io(&path, "cannot sync"))?;
                }
                file.seek(SeekFrom::End(0)).map_err(io(&path, "cannot seek"))?;
                (file, sealer, Recovered { records, cut_bytes })
            }
            Ok(_) => Self::create(dir, &path, key)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Self::create(dir, &path, key)?,
            Err(e) => return Err(io(&path, "cannot read")(e)),
        };
        let (tx, rx) = mpsc::channel();
        let lazy = Lazy::default();
        let writer = Writer {
            lazy: lazy.clone(),
            file,
            sealer,
            key: key.clone(),
            path: path.clone(),
            dir: dir.to_owned(),
            records: recovered.records.len(),
            source: None,
            entries_at_compaction: 0,
            min_records,
            compacting: None,
        };
        let thread = std::thread::Builder::new()
            .name("casd-journal".into())
            .spawn(move || writer.run(rx, durability))
            .map_err(io(&path, "cannot start the journal writer"))?;
        let store = Self { tx, durability, path, writer: Mutex::new(Some(thread)), lock, lazy };
        Ok((Arc::new(store), recovered))
    }

    fn create(dir: &Path, path: &Path, key: &StorageKey) -> Result<(File, Sealer, Recovered), StoreError> {
        let sealer = Sealer::new_file(key);
        let file = write_new(dir, path, &sealer)?;
        Ok((file, sealer, Recovered { records: Vec::new(), cut_bytes: 0 }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Gives the writer the maps to compact from; `entries` is how many they hold after the restore.
    pub fn compact_from(&self, source: Source, entries: usize) {
        self.send(Command::Source(source, entries));
    }

    /// Syncs everything written so far. Blocks until done or the writer is gone.
    pub fn flush(&self) {
        let (answer, done) = mpsc::channel();
        self.send(Command::Flush { answer, close: false });
        let _ = done.recv_timeout(Duration::from_secs(30));
    }

    /// A graceful stop: syncs, stops the writer (later changes are not stored) and unlocks the directory, so a
    /// node started again in the same process can open it.
    pub fn close(&self) {
        let (answer, done) = mpsc::channel();
        self.send(Command::Flush { answer, close: true });
        let _ = done.recv_timeout(Duration::from_secs(30));
        if let Some(thread) = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = thread.join();
        }
        let _ = self.lock.unlock();
    }

    fn send(&self, command: Command) {
        if self.tx.send(command).is_err() {
            tracing::error!(path = %self.path.display(), "the journal writer has stopped");
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // Closing the channel ends the writer after its last sync.
        let (dead, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.tx, dead));
        if let Some(thread) = self.writer.get_mut().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = thread.join();
        }
    }
}

impl Persist for Store {
    fn record(&self, map: MapId, entry: &Entry) -> Pending {
        match self.durability {
            Durability::Sync => {
                let (done, waiter) = oneshot::channel();
                self.send(Command::Append { map, entry: entry.clone(), done: Some(done) });
                Pending::waiting(waiter)
            }
            Durability::Interval(_) => {
                self.record_lazily(map, entry);
                Pending::done()
            }
        }
    }

    fn record_lazily(&self, map: MapId, entry: &Entry) {
        self.lazy.lock().unwrap_or_else(|e| e.into_inner()).push((map, entry.clone()));
    }
}

/// Writes a new, empty journal beside `path`, syncs it and renames it over `path`: a crash leaves either the old
/// file or the new one, never a mix.
fn write_new(dir: &Path, path: &Path, sealer: &Sealer) -> Result<File, StoreError> {
    let tmp = path.with_extension("new");
    let mut file =
        OpenOptions::new().create(true).truncate(true).write(true).open(&tmp).map_err(io(&tmp, "cannot create"))?;
    file.write_all(sealer.header()).map_err(io(&tmp, "cannot write"))?;
    install(dir, path, &mut file)?;
    Ok(file)
}

/// Syncs the new journal beside `path` and renames it into place.
fn install(dir: &Path, path: &Path, file: &mut File) -> Result<(), StoreError> {
    let tmp = path.with_extension("new");
    file.sync_all().map_err(io(&tmp, "cannot sync"))?;
    fs::rename(&tmp, path).map_err(io(path, "cannot rename the new journal into place"))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir, "cannot sync the directory"))
}

/// A compaction's new file, written from the maps by a thread of its own.
struct Snapshot {
    file: File,
    sealer: Sealer,
    entries: usize,
}

/// A compaction under way.
struct Compaction {
    started: Instant,
    /// The records appended to the old file since the snapshot began, for the new file before it replaces the old.
    since: Vec<(MapId, Entry)>,
    thread: JoinHandle<Result<Snapshot, StoreError>>,
}

/// Writes every entry `source` gives into a new journal file beside `path` (not yet in place).
fn snapshot(source: &Source, key: &StorageKey, path: &Path) -> Result<Snapshot, StoreError> {
    let tmp = path.with_extension("new");
    let mut file =
        OpenOptions::new().create(true).truncate(true).write(true).open(&tmp).map_err(io(&tmp, "cannot create"))?;
    let mut sealer = Sealer::new_file(key);
    let mut buf = sealer.header().to_vec();
    let (mut entries, mut failed) = (0usize, None);
    source(&mut |map, entry| {
        sealer.seal(map, &entry, &mut buf);
        entries += 1;
        if buf.len() >= 4 << 20 && failed.is_none() {
            failed = file.write_all(&buf).err();
            buf.clear();
        }
    });
    match failed {
        Some(e) => Err(io(&tmp, "cannot write")(e)),
        None => {
            file.write_all(&buf).map_err(io(&tmp, "cannot write"))?;
            Ok(Snapshot { file, sealer, entries })
        }
    }
}

struct Writer {
    lazy: Lazy,
    file: File,
    sealer: Sealer,
    key: StorageKey,
    path: PathBuf,
    dir: PathBuf,
    /// Records in the current file.
    records: usize,
    source: Option<Source>,
    entries_at_compaction: usize,
    min_records: usize,
    compacting: Option<Compaction>,
}

/// How often the writer takes the changes nobody waits for: what a crash of the process (not of the machine) can
/// lose of them at most.
const GATHER: Duration = Duration::from_millis(2);
/// Under `sync`, how soon changes nobody waits for (peers' writes joined here, expiries) are synced when no
/// waited-for change brings a sync sooner.
const LAZY_SYNC: Duration = Duration::from_millis(10);
/// At most this many changes go into one write and one sync.
const MAX_BATCH: usize = 16_384;
/// A file is compacted once it holds more than this many records and four times the maps' entries.
const MIN_RECORDS_TO_COMPACT: usize = 100_000;

impl Writer {
    fn run(mut self, rx: Receiver<Command>, durability: Durability) {
        let mut buf = Vec::with_capacity(1 << 16);
        let mut waiters = Vec::new();
        let mut flushes = Vec::new();
        let mut dirty = false;
        let mut last_sync = Instant::now();
        loop {
            let every = match durability {
                Durability::Sync => LAZY_SYNC,
                Durability::Interval(every) => every,
            };
            let (mut batch, gone) = match rx.recv_timeout(GATHER) {
                Ok(command) => (vec![command], false),
                Err(RecvTimeoutError::Timeout) => (Vec::new(), false),
                Err(RecvTimeoutError::Disconnected) => (Vec::new(), true),
            };
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(command) => batch.push(command),
                    Err(_) => break,
                }
            }
            let (position, before) = (self.sealer.position(), self.records);
            let (mut closing, mut finish) = (gone, false);
            let mut appended = Vec::new();
            let lazy = std::mem::take(&mut *self.lazy.lock().unwrap_or_else(|e| e.into_inner()));
            for (map, entry) in lazy {
                self.sealer.seal(map, &entry, &mut buf);
                self.records += 1;
                if self.compacting.is_some() {
                    appended.push((map, entry));
                }
            }
            for command in batch {
                match command {
                    Command::Append { map, entry, done } => {
                        self.sealer.seal(map, &entry, &mut buf);
                        self.records += 1;
                        waiters.extend(done);
                        if self.compacting.is_some() {
                            appended.push((map, entry));
                        }
                    }
                    Command::Flush { answer, close } => {
                        flushes.push(answer);
                        closing |= close;
                        finish |= !close;
                    }
                    Command::Source(source, entries) => {
                        self.source = Some(source);
                        self.entries_at_compaction = entries;
                    }
                }
            }
            let mut result = Ok(());
            // Where this batch starts: a failed write is cut back to exactly here. (Working back from the position
            // after the failure cut earlier, acknowledged records whenever the write had failed part-way or at
            // once: a full disk ate the sessions stored before it.)
            let start = self.file.stream_position();
            if !buf.is_empty() {
                result = self.file.write_all(&buf);
                dirty = true;
            }
            let due = !waiters.is_empty() || !flushes.is_empty() || closing || last_sync.elapsed() >= every;
            if result.is_ok() && dirty && due {
                result = self.file.sync_data();
                dirty = false;
                last_sync = Instant::now();
            }
            match &result {
                Err(e) => {
                    tracing::error!(path = %self.path.display(), error = %e, "journal write failed; the changes are not stored");
                    self.undo(start, position, before);
                }
                Ok(()) => {
                    if let Some(c) = self.compacting.as_mut() {
                        c.since.append(&mut appended);
                    }
                }
            }
            buf.clear();
            // A flush waits for a compaction under way (tests, tools); a close leaves it, and the old file stays.
            if finish || self.compacting.as_ref().is_some_and(|c| c.thread.is_finished()) {
                self.finish_compaction();
            }
            let answer = result.map_err(|e| format!("{}: {e}", self.path.display()));
            for done in waiters.drain(..) {
                let _ = done.send(answer.clone());
            }
            for tx in flushes.drain(..) {
                let _ = tx.send(());
            }
            if closing {
                return;
            }
            let grown = self.records > self.min_records && self.records > 4 * self.entries_at_compaction.max(1);
            if grown && self.compacting.is_none() {
                self.start_compaction();
            }
        }
    }

    /// A failed write may have left part of the batch in the file: cut back to before it, so that later records
    /// do not follow a torn one (which would cut them too at the next start).
    fn undo(&mut self, start: std::io::Result<u64>, position: u64, records: usize) {
        let cut = start.and_then(|keep| {
            let len = self.file.metadata()?.len().min(keep.max(HEADER_LEN as u64));
            self.file.set_len(len)?;
            self.file.seek(SeekFrom::Start(len))
        });
        if let Err(e) = cut {
            tracing::error!(path = %self.path.display(), error = %e, "cannot cut a failed write back out of the journal");
        }
        self.sealer.rewind(position);
        self.records = records;
    }

    /// Starts rewriting the journal from the maps (live entries and the tombstones still needed) on a thread of
    /// its own; the writer keeps appending to the old file meanwhile.
    fn start_compaction(&mut self) {
        let Some(source) = self.source.clone() else { return };
        let (key, path) = (self.key.clone(), self.path.clone());
        let thread =
            std::thread::Builder::new().name("casd-compaction".into()).spawn(move || snapshot(&source, &key, &path));
        match thread {
            Ok(thread) => {
                self.compacting = Some(Compaction { started: Instant::now(), since: Vec::new(), thread });
            }
            Err(e) => tracing::error!(error = %e, "cannot start a journal compaction"),
        }
    }

    /// Completes a compaction under way: waits for its snapshot, adds what was appended meanwhile, puts the new file
    /// in place of the old one and goes on with it.
    fn finish_compaction(&mut self) {
        let Some(c) = self.compacting.take() else { return };
        let before = self.records;
        let installed = c
            .thread
            .join()
            .unwrap_or_else(|_| Err(io(&self.path, "compaction")(std::io::Error::other("the thread panicked"))))
            .and_then(|mut snap| {
                let mut buf = Vec::new();
                for (map, entry) in &c.since {
                    snap.sealer.seal(*map, entry, &mut buf);
                }
                let tmp = self.path.with_extension("new");
                snap.file.write_all(&buf).map_err(io(&tmp, "cannot write"))?;
                install(&self.dir, &self.path, &mut snap.file)?;
                Ok(snap)
            });
        match installed {
            Ok(snap) => {
                self.records = snap.entries + c.since.len();
                self.entries_at_compaction = snap.entries;
                tracing::info!(path = %self.path.display(), before, after = self.records,
                    took_ms = c.started.elapsed().as_millis() as u64, "journal compacted");
                self.file = snap.file;
                self.sealer = snap.sealer;
            }
            Err(e) => {
                tracing::error!(error = %e, "journal compaction failed; the old journal stays in use");
                let _ = fs::remove_file(self.path.with_extension("new"));
                // Not again before the file has grown as much once more.
                self.entries_at_compaction = self.records;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::TicketMap;
    use crate::registry::replicated::{MapPolicy, ReplicatedMap, SingleNode};
    use crate::ticket::{ExpiryPolicy, IdGenerator, Principal, Tgt, TicketKind};

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("casd-store-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn tgt() -> Tgt {
        Tgt {
            principal: Principal { id: "u".into(), attributes: Default::default() },
            created: 1,
            last_used: 1,
            services: Default::default(),
            long_term: false,
        }
    }

    /// An unfinished compaction's file (a stop in mid-compaction) is removed at the next open, the journal kept.
    #[tokio::test]
    async fn an_unfinished_compaction_file_is_removed_at_open() {
        let d = dir("stale-new");
        let key = StorageKey::new([4; 32]);
        let (store, _) = Store::open(&d, &key, Durability::Sync).expect("open");
        store.close();
        drop(store);
        std::fs::write(d.join("journal.new"), b"half a compaction").expect("write");
        let journal = std::fs::read(d.join("journal")).expect("journal");
        let (store, _) = Store::open(&d, &key, Durability::Sync).expect("reopen");
        assert!(!d.join("journal.new").exists(), "the unfinished file is gone");
        assert_eq!(std::fs::read(d.join("journal")).expect("journal"), journal, "the journal is untouched");
        store.close();
    }

    /// A session changed over and over (a grant per service ticket) grows the file until a compaction rewrites it
    /// from the maps: afterwards it holds one record per session and tombstone, and reads back to the same map.
    #[tokio::test]
    async fn churn_is_compacted_away_and_the_rest_reads_back() {
        use crate::ticket::TgtChange;
        let d = dir("compact");
        let key = StorageKey::new([3; 32]);
        let (store, _) = Store::open_compacting_after(&d, &key, Durability::Sync, 200).expect("open");
        let map = Arc::new(ReplicatedMap::<Tgt>::new(
            MapPolicy::of(MapId::Tgt, &ExpiryPolicy::default(), 1),
            Arc::new(SingleNode),
        ));
        map.persist_to(store.clone());
        let source = map.clone();
        store.compact_from(Arc::new(move |f| source.for_each_entry(&mut |e| f(MapId::Tgt, e))), 0);
        let ids = IdGenerator::new("n", 1, &[1; 32]);
        let kept: Vec<_> = (0..20).map(|_| ids.mint(TicketKind::Tgt)).collect();
        for id in &kept {
            map.insert(id, tgt()).await.expect("insert");
        }
        let ended = ids.mint(TicketKind::Tgt);
        map.insert(&ended, tgt()).await.expect("insert");
        map.take(&ended).await.expect("logout");
        for round in 0..50u64 {
            for id in &kept {
                let grant = TgtChange::Granted {
                    ticket: format!("ST-{round}"),
                    service: "https://a.example".into(),
                    at: round,
                };
                map.change(id, grant).await.expect("grant");
            }
        }
        store.flush();
        let held = map.held();
        store.close();
        drop(store);
        let (store, recovered) = Store::open(&d, &key, Durability::Sync).expect("reopen");
        let restored =
            ReplicatedMap::<Tgt>::new(MapPolicy::of(MapId::Tgt, &ExpiryPolicy::default(), 1), Arc::new(SingleNode));
        for (_, e) in &recovered.records {
            assert!(restored.restore(e), "every record reads back");
        }
        assert_eq!((restored.len(), restored.held()), (20, held), "the live sessions and the tombstone");
        // 1,023 changes were written; compactions keep the file near the threshold, not near the history.
        let records = recovered.records.len();
        assert!((21..=260).contains(&records), "{records} records read back");
        for id in &kept {
            let tgt = restored.get(id).await.expect("kept");
            let grant = tgt.services.get("https://a.example").expect("granted");
            assert_eq!(grant.ticket, "ST-49", "the last change, made while compactions ran, is there");
        }
        store.close();
        let _ = fs::remove_dir_all(&d);
    }
}
