//! Durable storage (issue 14), each figure beside its baseline in one run, on this machine's disk (target/, not a
//! tmpfs):
//! - replicated TGT writes on a 3-node cluster in each durability mode (off = today's in-memory baseline);
//! - the two storage candidates measured for the choice: casd's journal (append + group-committed fdatasync) and
//!   redb (a B-tree, one write transaction per group), with the same sealed TGT records and the same writers;
//! - 1,000,000 TGTs: bytes on disk per TGT, and the time a node (or redb) needs to hold them again after a restart.
//!
//! `CASD_BENCH_WRITES` (default 20,000) and `CASD_BENCH_TGTS` (default 1,000,000) size it.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use casd::clock::now_ms;
use casd::cluster::replication::replica::{Entry, MapId};
use casd::config::DurabilityMode;
use casd::registry::persist::Persist;
use casd::registry::replicated::{MapPolicy, ReplicatedMap, SingleNode};
use casd::store::format::{Sealer, StorageKey};
use casd::store::{Durability, Store};
use casd::ticket::{ExpiryPolicy, IdGenerator, Tgt, TicketKind};
use casd::{Config, Node};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn tgt_entry(ids: &IdGenerator) -> Entry {
    let now = now_ms();
    let tgt = Tgt {
        principal: support::principal(),
        created: now,
        last_used: now,
        services: Default::default(),
        long_term: false,
    };
    Entry::Live { id: ids.mint(TicketKind::Tgt).to_string(), value: postcard::to_allocvec(&tgt).expect("ser") }
}

fn fresh_dir(root: &Path, name: &str) -> PathBuf {
    let dir = root.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// `total` operations from `writers` concurrent tasks; each operation's latency.
async fn run<F, Fut>(writers: usize, total: usize, op: F) -> support::Stats
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let op = op.clone();
            let n = total / writers + usize::from(w < total % writers);
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(n);
                for _ in 0..n {
                    let t = Instant::now();
                    op().await;
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::with_capacity(total);
    for t in tasks {
        all.extend(t.await.expect("writer"));
    }
    support::Stats::new(all, started.elapsed())
}

/// redb as the second candidate: one table of sealed records, one writer thread that commits each group of
/// writes (all that queued while the last commit ran) in one `Durability::Immediate` transaction.
mod redb_candidate {
    use super::*;
    use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

    pub const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("tickets");

    type Job = (String, Vec<u8>, tokio::sync::oneshot::Sender<()>);

    pub struct Redb {
        tx: std::sync::Mutex<std::sync::mpsc::Sender<Job>>,
    }

    impl Redb {
        pub fn open(path: &Path, key: &StorageKey) -> Arc<Self> {
            let db = Database::create(path).expect("redb");
            let (tx, rx) = std::sync::mpsc::channel::<Job>();
            let key = key.clone();
            std::thread::spawn(move || {
                let mut sealer = Sealer::new_file(&key);
                while let Ok(first) = rx.recv() {
                    let mut group = vec![first];
                    while let Ok(more) = rx.try_recv() {
                        group.push(more);
                    }
                    let txn = db.begin_write().expect("txn");
                    {
                        let mut table = txn.open_table(TABLE).expect("table");
                        let mut sealed = Vec::new();
                        for (id, value, _) in &group {
                            sealed.clear();
                            // Position 0 for every value, so each opens on its own (a bench shortcut: a real
                            // store would need a nonce per record).
                            sealer.rewind(0);
                            let entry = Entry::Live { id: id.clone(), value: value.clone() };
                            sealer.seal(MapId::Tgt, &entry, &mut sealed);
                            table.insert(id.as_str(), sealed.as_slice()).expect("insert");
                        }
                    }
                    txn.commit().expect("commit");
                    for (_, _, done) in group {
                        let _ = done.send(());
                    }
                }
            });
            Arc::new(Self { tx: std::sync::Mutex::new(tx) })
        }

        pub async fn write(&self, entry: Entry) {
            let Entry::Live { id, value } = entry else { return };
            let (done, wait) = tokio::sync::oneshot::channel();
            self.tx.lock().expect("lock").send((id, value, done)).expect("writer");
            wait.await.expect("committed");
        }
    }

    /// Reads every record back into a map, as a restart would.
    pub fn restore(path: &Path, key: &StorageKey, map: &ReplicatedMap<Tgt>, sealer_header: &[u8]) -> usize {
        let db = Database::create(path).expect("redb");
        let read = db.begin_read().expect("read");
        let table = read.open_table(TABLE).expect("table");
        let mut n = 0;
        for row in table.iter().expect("iter") {
            let (_, value) = row.expect("row");
            // Each value is one sealed record at position 0 of its own sequence (the bench's simplification).
            let mut opener = Sealer::existing(key, sealer_header).expect("header");
            let (records, _) = opener.open_all(value.value());
            for (_, entry) in records {
                assert!(map.restore(&entry));
                n += 1;
            }
        }
        n
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("target").join("bench-storage");
    std::fs::create_dir_all(&root).expect("bench dir");
    let writes = env_usize("CASD_BENCH_WRITES", 20_000);
    let tgts = env_usize("CASD_BENCH_TGTS", 1_000_000);
    runtime.block_on(async {
        println!("\n## Durability modes: replicated TGT writes, 3 nodes on loopback, journals on this disk\n");
        println!("| mode | writers | ops | ops/s | p50 | p99 |");
        println!("|---|---:|---:|---:|---:|---:|");
        let mut by_mode = Vec::new();
        for (mode, name) in
            [(DurabilityMode::Off, "off"), (DurabilityMode::Interval, "interval (100 ms)"), (DurabilityMode::Sync, "sync")]
        {
            let dirs: Vec<PathBuf> = (1..=3).map(|i| fresh_dir(&root, &format!("mode-{name}-{i}"))).collect();
            let cluster = support::TestCluster::start("casd-bench-storage", "s", 3, |i, c: &mut Config| {
                c.storage.durability = mode;
                c.storage.dir = Some(dirs[i - 1].clone());
            })
            .await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let registry = cluster.nodes[0].registry().clone();
            let write = move || {
                let registry = registry.clone();
                async move {
                    registry.issue_tgt(support::principal(), now_ms()).await.expect("write");
                }
            };
            let one = run(1, writes / 4, write.clone()).await;
            let many = run(32, writes, write).await;
            for (writers, s) in [(1, &one), (32, &many)] {
                println!("| {name} | {writers} | {} | {:.0} | {:.1?} | {:.1?} |", s.ops, s.per_second(), s.p50, s.p99);
            }
            by_mode.push((name, many.per_second()));
            for n in cluster.nodes {
                n.shutdown().await;
            }
            for d in dirs {
                let _ = std::fs::remove_dir_all(d);
            }
        }
        let off = by_mode[0].1;
        for (name, per_s) in &by_mode[1..] {
            println!("\n32-writer replicated TGT writes, {name} / off: {:.2}x", per_s / off);
        }

        println!("\n## Storage candidates: sealed TGT records group-committed (fdatasync per group)\n");
        println!("| candidate | writers | ops | ops/s | p50 | p99 |");
        println!("|---|---:|---:|---:|---:|---:|");
        let key = StorageKey::new([7; 32]);
        let ids = Arc::new(IdGenerator::new("b1", 1, &[9; 32]));
        {
            let (store, _) = Store::open(&fresh_dir(&root, "journal"), &key, Durability::Sync).expect("journal");
            let write = {
                let (store, ids) = (store.clone(), ids.clone());
                move || {
                    let (store, ids) = (store.clone(), ids.clone());
                    async move { store.record(MapId::Tgt, &tgt_entry(&ids)).durable().await.expect("stored") }
                }
            };
            for writers in [1, 32] {
                let s = run(writers, if writers == 1 { writes / 4 } else { writes }, write.clone()).await;
                println!("| casd journal | {writers} | {} | {:.0} | {:.1?} | {:.1?} |", s.ops, s.per_second(), s.p50, s.p99);
            }
            store.close();
        }
        {
            let db = redb_candidate::Redb::open(&fresh_dir(&root, "redb").with_extension("redb"), &key);
            let write = {
                let ids = ids.clone();
                move || {
                    let (db, ids) = (db.clone(), ids.clone());
                    async move { db.write(tgt_entry(&ids)).await }
                }
            };
            for writers in [1, 32] {
                let s = run(writers, if writers == 1 { writes / 4 } else { writes }, write.clone()).await;
                println!("| redb 4 | {writers} | {} | {:.0} | {:.1?} | {:.1?} |", s.ops, s.per_second(), s.p50, s.p99);
            }
        }

        println!("\n## {tgts} TGTs: size on disk and restart\n");
        // casd: a real node fills its journal, stops, and is timed from start to ready on it.
        let dir = fresh_dir(&root, "million");
        let durable = |c: &mut Config| {
            c.storage.durability = DurabilityMode::Interval;
            c.storage.dir = Some(dir.clone());
            c.storage.key = Some(casd::config::Secret("9V6uaeOXRhIrrvwhidEp8f3qh1qSGaJjn3xrVijg7hQ=".into()));
            c.limits.max_sessions_per_user = usize::MAX;
        };
        let mut config = support::loopback_config();
        durable(&mut config);
        let node = Node::start(config).await.expect("node");
        let registry = node.registry().clone();
        let filled = Instant::now();
        let per_task = tgts / 4;
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let registry = registry.clone();
                tokio::spawn(async move {
                    for _ in 0..per_task {
                        registry.issue_tgt(support::principal(), now_ms()).await.expect("tgt");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("filler");
        }
        let fill_took = filled.elapsed();
        drop(registry);
        node.shutdown().await;
        let bytes = std::fs::metadata(dir.join("journal")).expect("journal").len();
        let mut config = support::loopback_config();
        durable(&mut config);
        let started = Instant::now();
        let node = Node::start(config).await.expect("restart");
        let restart = started.elapsed();
        let held = node.registry().sizes()[0].1;
        node.shutdown().await;
        let _ = std::fs::remove_dir_all(&dir);
        println!("| store | TGTs held after restart | bytes on disk | bytes per TGT | restart to ready |");
        println!("|---|---:|---:|---:|---:|");
        println!(
            "| casd journal (a real node: read, cut, restore into the maps, serve) | {held} | {bytes} | {:.0} | {restart:.2?} |",
            bytes as f64 / held.max(1) as f64
        );

        // redb: the same records, written in groups of 10,000, then read back into a map as a restart would.
        let path = fresh_dir(&root, "million-redb").with_extension("redb");
        {
            use redb::Database;
            let db = Database::create(&path).expect("redb");
            let mut sealer = Sealer::new_file(&key);
            let mut sealed = Vec::new();
            for chunk in 0..tgts.div_ceil(10_000) {
                let txn = db.begin_write().expect("txn");
                {
                    let mut table = txn.open_table(redb_candidate::TABLE).expect("table");
                    for _ in 0..10_000.min(tgts - chunk * 10_000) {
                        let entry = tgt_entry(&ids);
                        sealed.clear();
                        sealer.rewind(0);
                        sealer.seal(MapId::Tgt, &entry, &mut sealed);
                        table.insert(entry.id(), sealed.as_slice()).expect("insert");
                    }
                }
                txn.commit().expect("commit");
            }
            let header = sealer.header().to_vec();
            drop(db);
            let redb_bytes = std::fs::metadata(&path).expect("redb file").len();
            let map = ReplicatedMap::<Tgt>::new(
                MapPolicy::of(MapId::Tgt, &ExpiryPolicy::default(), 1),
                Arc::new(SingleNode),
            );
            let started = Instant::now();
            let n = redb_candidate::restore(&path, &key, &map, &header);
            let took = started.elapsed();
            println!(
                "| redb 4 (open, read every row, open its seal, restore into a map; no HTTP) | {n} | {redb_bytes} | {:.0} | {took:.2?} |",
                redb_bytes as f64 / n.max(1) as f64
            );
        }
        let _ = std::fs::remove_file(&path);
        println!("\nfilling the casd journal with {tgts} TGTs through the registry took {fill_took:.2?}");
        println!("restart with {tgts} TGTs: {restart:.2?} (target < 5 s)");
    });
}
