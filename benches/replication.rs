//! Replication figures on loopback, each next to a baseline measured in the same run on the same machine:
//!
//! 1. a TCP ping-pong (64-byte request, 64-byte answer) for the round trip, 1 and 32 clients;
//! 2. replicated writes (a TGT creation acknowledged by both peers of a 3-node cluster), 1 and 32 writers;
//! 3. Redis: a primary with one replica, `SET` + `WAIT 1 0` per write, 32 writers (skipped when no
//!    `redis-server` is installed; `apt-get install redis-server`);
//! 4. state transfer of 100,000 tickets to a joiner, and memory per stored TGT with 1,000,000 TGTs.
//!
//! `cargo bench --bench replication`. Prints a Markdown table; never run as a test. Env: CASD_BENCH_WRITES
//! (default 20000), CASD_BENCH_TGTS (default 1000000), CASD_BENCH_ONE_THREAD (set: every node and client on one
//! runtime thread, so each figure is the CPU cost of the operation rather than its latency on two cores).

#[path = "support.rs"]
mod support;

/// The allocator casd itself runs with (src/main.rs), so that the figures are the server's.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use casd::NodeHandle;
use casd::clock::now_ms;
use casd::cluster::seal::{ClusterKey, Opener, Purpose, Sealer};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Runs `per_writer` operations on each of `writers` tasks; `op(writer)` makes one operation's future.
async fn run<F, Fut>(writers: usize, total: usize, op: F) -> support::Stats
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let start = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut l = Vec::with_capacity(total / writers);
                for _ in 0..total / writers {
                    let t = Instant::now();
                    op(w).await;
                    l.push(t.elapsed());
                }
                l
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    support::Stats::new(all, start.elapsed())
}

async fn echo_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                while s.read_exact(&mut buf).await.is_ok() {
                    if s.write_all(&buf).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// One 64-byte exchange with an echo server.
async fn exchange(conn: &tokio::sync::Mutex<TcpStream>) {
    let mut s = conn.lock().await;
    s.write_all(&[7u8; 64]).await.expect("write");
    let mut buf = [0u8; 64];
    s.read_exact(&mut buf).await.expect("read");
}

/// `writers` clients, each on its own connection to the echo server at `addr`.
async fn ping_pong_to(addr: &str, writers: usize, total: usize) -> support::Stats {
    let mut conns = Vec::new();
    for _ in 0..writers {
        let s = TcpStream::connect(addr).await.expect("connect");
        s.set_nodelay(true).expect("nodelay");
        conns.push(Arc::new(tokio::sync::Mutex::new(s)));
    }
    let conns = Arc::new(conns);
    run(writers, total, move |w| {
        let conns = conns.clone();
        async move { exchange(&conns[w]).await }
    })
    .await
}

async fn ping_pong(writers: usize, total: usize) -> support::Stats {
    ping_pong_to(&echo_server().await, writers, total).await
}

/// The floor under a 2-ack write with this runtime on this machine: one client sends 64 bytes to each of two
/// echo servers at once and waits for both answers. No sealing, no maps: what is left of a replicated write once
/// every cost of casd itself is taken away.
async fn fan_out(total: usize) -> support::Stats {
    let mut conns = Vec::new();
    for _ in 0..2 {
        let s = TcpStream::connect(&echo_server().await).await.expect("connect");
        s.set_nodelay(true).expect("nodelay");
        conns.push(Arc::new(tokio::sync::Mutex::new(s)));
    }
    let conns = Arc::new(conns);
    run(1, total, move |_| {
        let conns = conns.clone();
        async move {
            let spawned = |c: Arc<tokio::sync::Mutex<TcpStream>>| tokio::spawn(async move { exchange(&c).await });
            // Each exchange in its own task, as a link is: the two peers are served in parallel.
            let (a, b) = (spawned(conns[0].clone()), spawned(conns[1].clone()));
            a.await.expect("a");
            b.await.expect("b");
        }
    })
    .await
}

/// A child process killed when dropped: Redis, and the peers and echo server of the separate-process phase.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> Option<u16> {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).ok().map(|a| a.port())
}

/// Run as a child (`CASD_BENCH_ECHO_SERVER` set): the echo server in a process of its own, printing its address.
fn echo_server_process() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        println!("{}", echo_server().await);
        std::future::pending::<()>().await;
    });
}

/// The ping-pong with the echo server in another process, as the peers of the separate-process phase are.
async fn ping_pong_across_processes(total: usize) -> support::Stats {
    use std::io::BufRead;
    let exe = std::env::current_exe().expect("this bench's path");
    let mut child = Command::new(exe)
        .env("CASD_BENCH_ECHO_SERVER", "1")
        .stdout(Stdio::piped())
        .spawn()
        .expect("the echo server process");
    let mut addr = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut addr).expect("its address");
    let _server = Killed(child);
    ping_pong_to(addr.trim(), 1, total).await
}

/// A 3-node cluster whose writer is in this process and whose two peers are `casd serve` processes, as nodes of a
/// real cluster are: the peers' work is scheduled by the kernel beside the writer's instead of sharing its runtime.
async fn cluster_with_peer_processes() -> (NodeHandle, Vec<Killed>, std::path::PathBuf) {
    let key = ClusterKey::generate();
    let writer = support::node("w1", Some(&key), vec![], 3).await;
    let seed = writer.cluster().expect("clustered").gossip_addr().to_string();
    let dir = std::env::temp_dir().join(format!("casd-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let peers = (2..=3)
        .map(|i| {
            let config = format!(
                "[node]\nname = \"w{i}\"\n[http]\nlisten = \"127.0.0.1:{http}\"\nallow_plain_http = true\n\
                 [cluster]\nid = \"casd-bench\"\ngossip_addr = \"127.0.0.1:{gossip}\"\n\
                 replication_addr = \"127.0.0.1:{repl}\"\nseeds = [\"{seed}\"]\nexpected_size = 3\n\
                 join_timeout = \"10s\"\nkey = \"{key}\"\n",
                http = free_port().expect("a free port"),
                gossip = free_port().expect("a free port"),
                repl = free_port().expect("a free port"),
                key = key.to_base64(),
            );
            let path = dir.join(format!("w{i}.toml"));
            std::fs::write(&path, config).expect("peer config");
            let child = Command::new(env!("CARGO_BIN_EXE_casd"))
                .args(["serve", "--config"])
                .arg(&path)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("a casd peer process");
            Killed(child)
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let ready = |r: &casd::cluster::replication::Replicator| {
        let peers = r.peers();
        peers.len() == 2 && peers.iter().all(|m| m.status == casd::cluster::membership::MemberStatus::Ready)
    };
    while !ready(writer.replicator().expect("replicator")) {
        assert!(Instant::now() < deadline, "the peer processes did not join");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    (writer, peers, dir)
}

/// The time to seal and to open one frame of `len` bytes, the size of a replicated TGT write: a write seals and
/// opens four of them on its critical path (two requests, two acknowledgements).
fn seal_and_open(len: usize) -> (Duration, Duration) {
    let key = ClusterKey::generate();
    let sealer = Sealer::new(&key, "bench", "a", now_ms());
    let opener = Opener::for_recipient(&key, "bench", Purpose::Replication, "b");
    let payload = vec![7u8; len];
    let n = 50_000;
    let t = Instant::now();
    let frames: Vec<Vec<u8>> = (0..n).map(|_| sealer.seal_to(Purpose::Replication, "b", &payload, now_ms())).collect();
    let seal = t.elapsed() / n;
    let t = Instant::now();
    for f in &frames {
        opener.open(f, now_ms()).expect("opens");
    }
    (seal, t.elapsed() / n)
}

async fn replicated_writes(node: &NodeHandle, writers: usize, total: usize) -> support::Stats {
    let registry = node.registry().clone();
    let p = support::principal();
    run(writers, total, move |_| {
        let (registry, p) = (registry.clone(), p.clone());
        async move {
            registry.issue_tgt(p, now_ms()).await.expect("replicated write");
        }
    })
    .await
}

fn start_redis() -> Option<(Vec<Killed>, u16)> {
    let (primary, replica) = (free_port()?, free_port()?);
    // A replica's full sync writes an RDB file into the server's directory: a temporary one, never the working tree.
    let dir = std::env::temp_dir().join(format!("casd-bench-redis-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let spawn = |port: u16, extra: &[String]| {
        let mut args = vec![
            "--dir".to_owned(),
            dir.display().to_string(),
            "--port".to_owned(),
            port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            "no".into(),
        ];
        args.extend_from_slice(extra);
        Command::new("redis-server").args(&args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().ok()
    };
    let p = spawn(primary, &[])?;
    let r = spawn(replica, &["--replicaof".into(), "127.0.0.1".into(), primary.to_string()]);
    let guard: Vec<Killed> = [Some(p), r].into_iter().flatten().map(Killed).collect();
    (guard.len() == 2).then_some((guard, primary))
}

async fn resp(conn: &mut BufReader<TcpStream>, parts: &[&str]) -> String {
    let mut cmd = format!("*{}\r\n", parts.len());
    for p in parts {
        cmd.push_str(&format!("${}\r\n{p}\r\n", p.len()));
    }
    conn.get_mut().write_all(cmd.as_bytes()).await.expect("write");
    let mut line = Vec::new();
    loop {
        let b = conn.read_u8().await.expect("read");
        line.push(b);
        if line.ends_with(b"\r\n") {
            return String::from_utf8_lossy(&line).trim_end().to_owned();
        }
    }
}

async fn redis_writes(port: u16, writers: usize, total: usize) -> Option<support::Stats> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut probe = loop {
        if let Ok(s) = TcpStream::connect(("127.0.0.1", port)).await {
            break BufReader::new(s);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Wait until the replica is attached, so WAIT 1 has someone to wait for.
    while resp(&mut probe, &["WAIT", "1", "100"]).await != ":1" {
        resp(&mut probe, &["SET", "probe", "1"]).await;
        if Instant::now() > deadline {
            return None;
        }
    }
    let mut conns = Vec::new();
    for _ in 0..writers {
        let s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        s.set_nodelay(true).ok()?;
        conns.push(Arc::new(tokio::sync::Mutex::new(BufReader::new(s))));
    }
    let conns = Arc::new(conns);
    let value = "x".repeat(300); // about the size of a serialised TGT
    Some(
        run(writers, total, move |w| {
            let (conns, value) = (conns.clone(), value.clone());
            async move {
                let mut c = conns[w].lock().await;
                let key = format!("TGT-{}", rand_key());
                assert_eq!(resp(&mut c, &["SET", &key, &value]).await, "+OK");
                assert_eq!(resp(&mut c, &["WAIT", "1", "0"]).await, ":1");
            }
        })
        .await,
    )
}

fn rand_key() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    h.finish()
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0);
    pages * 4096
}

fn main() {
    if std::env::var_os("CASD_BENCH_ECHO_SERVER").is_some() {
        return echo_server_process();
    }
    // On one thread every phase runs serially, so its time is its whole CPU cost: how a write's cost compares with
    // a round trip's, apart from what two cores can overlap.
    let one_thread = std::env::var_os("CASD_BENCH_ONE_THREAD").is_some();
    let runtime = if one_thread {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
    } else {
        tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime")
    };
    runtime.block_on(async {
        let writes = env_usize("CASD_BENCH_WRITES", 20_000);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = if one_thread { "one runtime thread".to_owned() } else { format!("{cores} cores") };
        println!("\n## casd replication on loopback ({threads})\n");
        println!("| operation | ops | ops/s | p50 | p99 |");
        println!("|---|---:|---:|---:|---:|");
        let pp1 = ping_pong(1, writes / 4).await;
        pp1.row("TCP ping-pong, 1 client");
        let fan = fan_out(writes / 4).await;
        fan.row("TCP fan-out to 2 echo servers (the 2-ack floor), 1 client");
        let pp32 = ping_pong(32, writes).await;
        pp32.row("TCP ping-pong, 32 clients");

        let nodes = support::nodes(3).await;
        let w1 = replicated_writes(&nodes[0], 1, writes / 4).await;
        w1.row("replicated TGT write (2 acks), 1 writer");
        let w32 = replicated_writes(&nodes[0], 32, writes).await;
        w32.row("replicated TGT write (2 acks), 32 writers");
        let redis = match start_redis() {
            Some((guard, port)) => {
                let s = redis_writes(port, 32, writes).await;
                drop(guard);
                s
            }
            None => None,
        };
        match &redis {
            Some(s) => s.row("Redis SET + WAIT 1 0 (1 replica), 32 writers"),
            None => println!("| Redis SET + WAIT 1 0 | not measured: redis-server not installed | | | |"),
        }
        println!();
        println!("single replicated write p50 / ping-pong p50: {:.2}x (target <= 2x)", w1.p50.as_secs_f64() / pp1.p50.as_secs_f64());
        println!(
            "fan-out floor p50 / ping-pong p50: {:.2}x; replicated write p50 / fan-out floor p50: {:.2}x",
            fan.p50.as_secs_f64() / pp1.p50.as_secs_f64(),
            w1.p50.as_secs_f64() / fan.p50.as_secs_f64()
        );
        let (seal, open) = seal_and_open(420);
        println!("seal / open of one 420-byte replication frame: {seal:.1?} / {open:.1?}");
        if let Some(r) = &redis {
            println!(
                "32-writer throughput casd / Redis: {:.2}x (target >= 1x)",
                (w32.ops as f64 / w32.elapsed.as_secs_f64()) / (r.ops as f64 / r.elapsed.as_secs_f64())
            );
        }
        // A write that missed an acknowledgement waited out `ack_timeout` and reached fewer copies: it would make
        // the figures above meaningless, so say how many there were.
        let missed = nodes[0].replicator().expect("replicator").counts().ack_failures;
        println!("acknowledgements missed during the measured writes: {missed}");
        for n in nodes {
            n.crash().await;
        }

        // The same writes with the two peers in processes of their own, against a ping-pong across processes.
        println!("\n## casd replication on loopback, peers in processes of their own ({threads})\n");
        println!("| operation | ops | ops/s | p50 | p99 |");
        println!("|---|---:|---:|---:|---:|");
        let pp_procs = ping_pong_across_processes(writes / 4).await;
        pp_procs.row("TCP ping-pong, 1 client, echo server in another process");
        let (writer, peers, dir) = cluster_with_peer_processes().await;
        let wp1 = replicated_writes(&writer, 1, writes / 4).await;
        wp1.row("replicated TGT write (2 acks), 1 writer, peers in their own processes");
        let wp32 = replicated_writes(&writer, 32, writes).await;
        wp32.row("replicated TGT write (2 acks), 32 writers, peers in their own processes");
        let missed = writer.replicator().expect("replicator").counts().ack_failures;
        drop(peers);
        writer.crash().await;
        let _ = std::fs::remove_dir_all(dir);
        println!();
        println!(
            "single replicated write p50 / ping-pong p50, both across processes: {:.2}x (target <= 2x)",
            wp1.p50.as_secs_f64() / pp_procs.p50.as_secs_f64()
        );
        println!("acknowledgements missed during these writes: {missed}\n");
        println!("## casd state transfer and memory ({threads})\n");

        // State transfer of 100,000 tickets.
        let key = ClusterKey::generate();
        let first = support::node("t1", Some(&key), vec![], 3).await;
        for _ in 0..100_000 {
            first.registry().issue_tgt(support::principal(), now_ms()).await.expect("tgt");
        }
        let seed = vec![first.cluster().expect("c").gossip_addr().to_string()];
        let t = Instant::now();
        let joiner = support::node("t2", Some(&key), seed, 3).await;
        let took = t.elapsed();
        assert_eq!(joiner.registry().sizes()[0].1, 100_000);
        println!("state transfer: a joiner started and held 100,000 TGTs after {took:.2?} (includes finding the peer by gossip)");
        let transfer = joiner.state_transfer().expect("the joiner made a state transfer");
        println!(
            "state transfer alone: {} entries pulled and merged in {:.2?} (target < 2 s)",
            transfer.entries, transfer.took
        );
        let peer = joiner.replicator().expect("r").peers().into_iter().next().expect("peer");
        let t = Instant::now();
        let pulled = joiner.replicator().expect("r").pull_all(&peer).await.expect("pull");
        println!("anti-entropy between two nodes holding the same 100,000 TGTs: {pulled} entries pulled, {:.2?}", t.elapsed());
        joiner.crash().await;
        first.crash().await;

        // Memory per TGT.
        let count = env_usize("CASD_BENCH_TGTS", 1_000_000);
        let key = ClusterKey::generate();
        let lone = support::node("m1", Some(&key), vec![], 3).await;
        let before = rss_bytes();
        for _ in 0..count {
            lone.registry().issue_tgt(support::principal(), now_ms()).await.expect("tgt");
        }
        let after = rss_bytes();
        println!(
            "memory: {count} TGTs (3 attributes each, replicated map) grew RSS by {:.0} MiB = {} bytes per TGT (target < 1024)",
            (after - before) as f64 / (1 << 20) as f64,
            (after - before) / count as u64
        );
        lone.crash().await;
    });
}
