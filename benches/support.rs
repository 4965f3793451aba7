//! Shared by the benches: nodes on loopback, one alone or several in a cluster.

use std::time::{Duration, Instant};

use casd::cluster::seal::ClusterKey;
use casd::config::ClusterConfig;
use casd::{Config, Node, NodeHandle};

/// A node of the demo config on an ephemeral port; clustered (seeded with `seeds`) when `key` is given.
pub async fn node(name: &str, key: Option<&ClusterKey>, seeds: Vec<String>, size: usize) -> NodeHandle {
    let mut config = Config::embedded();
    config.http.listen = "127.0.0.1:0".parse().expect("addr");
    config.node.name = name.into();
    config.tickets.st_ttl = Duration::from_secs(600); // benches issue tickets before the timed phase
    if let Some(key) = key {
        let loopback = "127.0.0.1:0".parse().expect("addr");
        let mut c = ClusterConfig::new("casd-bench", loopback, loopback, key);
        c.seeds = seeds;
        c.expected_size = size;
        c.join_timeout = Duration::from_secs(10);
        config.cluster = Some(c);
    }
    Node::start(config).await.expect("node")
}

/// `n` nodes: one plain node, or a cluster of `n` whose members all see each other.
pub async fn nodes(n: usize) -> Vec<NodeHandle> {
    if n <= 1 {
        return vec![node("b1", None, vec![], 1).await];
    }
    let key = ClusterKey::generate();
    let first = node("b1", Some(&key), vec![], n).await;
    let seed = vec![first.cluster().expect("clustered").gossip_addr().to_string()];
    let mut all = vec![first];
    for i in 2..=n {
        all.push(node(&format!("b{i}"), Some(&key), seed.clone(), n).await);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while all.iter().any(|m| m.replicator().expect("replicator").peers().len() != n - 1) {
        assert!(Instant::now() < deadline, "cluster did not form");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    all
}

/// Throughput and latency percentiles of one measured phase.
pub struct Stats {
    pub ops: usize,
    pub elapsed: Duration,
    pub p50: Duration,
    pub p99: Duration,
}

impl Stats {
    pub fn new(mut latencies: Vec<Duration>, elapsed: Duration) -> Self {
        latencies.sort();
        let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
        Self { ops: latencies.len(), elapsed, p50: at(0.5), p99: at(0.99) }
    }

    pub fn per_second(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    /// One Markdown table row: name, operations, operations/s, p50, p99.
    pub fn row(&self, name: &str) {
        println!("| {name} | {} | {:.0} | {:.1?} | {:.1?} |", self.ops, self.per_second(), self.p50, self.p99);
    }
}
