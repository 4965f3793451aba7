//! Membership figures on loopback with real UDP and real sealing: time for 3 and 5 nodes to converge, time for the
//! survivors to drop a crashed node, and gossip bytes per second per node. `cargo bench --bench gossip`.
//! Prints a Markdown table; never run as a test.

#[path = "support.rs"]
mod support;

use std::time::{Duration, Instant};

use casd::cluster::seal::ClusterKey;
use casd::{Node, NodeHandle};

const GOSSIP: Duration = Duration::from_millis(200);
const TRIALS: usize = 3;

async fn start(name: String, key: &ClusterKey, seeds: Vec<String>, size: usize) -> NodeHandle {
    let mut config = support::loopback_config();
    support::join_cluster(&mut config, "casd-bench", &name, key, seeds, size);
    config.cluster.as_mut().expect("clustered").gossip_interval = GOSSIP;
    Node::start(config).await.expect("node")
}

fn live(n: &NodeHandle) -> usize {
    n.cluster().expect("clustered").view().len()
}

async fn until(limit: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < limit, "condition not reached within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    t.elapsed()
}

/// Starts `size` nodes at once (all seeded with the first) and returns them with the time to one full view.
async fn converge(size: usize) -> (Vec<NodeHandle>, Duration) {
    let key = ClusterKey::generate();
    let t = Instant::now();
    let first = start("n0".into(), &key, vec![], size).await;
    let seed = vec![first.cluster().expect("c").gossip_addr().to_string()];
    let mut nodes = vec![first];
    for i in 1..size {
        nodes.push(start(format!("n{i}"), &key, seed.clone(), size).await);
    }
    until(Duration::from_secs(30), || nodes.iter().all(|n| live(n) == size)).await;
    (nodes, t.elapsed())
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        println!("\n## casd membership on loopback (gossip {GOSSIP:?}, phi 8, {TRIALS} trials each)\n");
        println!("| nodes | converge (median) | dead node dropped by all survivors (median) | gossip bytes/s per node (sent) |");
        println!("|---:|---:|---:|---:|");
        for size in [3usize, 5] {
            let (mut converged, mut detected, mut rates) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..TRIALS {
                let (mut nodes, took) = converge(size).await;
                converged.push(took);
                let before: Vec<u64> = nodes.iter().map(|n| n.cluster().expect("c").dropped().bytes_sent).collect();
                let window = Duration::from_secs(5);
                tokio::time::sleep(window).await;
                let sent: u64 = nodes
                    .iter()
                    .zip(&before)
                    .map(|(n, b)| n.cluster().expect("c").dropped().bytes_sent - b)
                    .sum();
                rates.push(sent as f64 / size as f64 / window.as_secs_f64());
                let victim = nodes.pop().expect("node");
                victim.crash().await;
                detected.push(until(Duration::from_secs(30), || nodes.iter().all(|n| live(n) == size - 1)).await);
                for n in nodes {
                    n.crash().await;
                }
            }
            converged.sort();
            detected.sort();
            rates.sort_by(f64::total_cmp);
            println!(
                "| {size} | {:.2?} | {:.2?} | {:.0} |",
                converged[TRIALS / 2],
                detected[TRIALS / 2],
                rates[TRIALS / 2]
            );
        }
    });
}
