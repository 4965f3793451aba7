//! Shared by the benches: nodes on loopback, one alone or several in a cluster.
// Each bench uses a part of it.
#![allow(dead_code)]

use std::time::Duration;

use casd::cluster::seal::ClusterKey;
use casd::{Node, NodeHandle};

#[path = "../tests/common/test_cluster.rs"]
mod test_cluster;
pub use test_cluster::*;

/// Benches issue tickets before the timed phase: they must outlive it.
fn bench_config(config: &mut casd::Config) {
    config.tickets.st_ttl = Duration::from_secs(600);
    if let Some(c) = config.cluster.as_mut() {
        c.join_timeout = Duration::from_secs(10);
    }
}

/// A node of the demo config on an ephemeral port; clustered (seeded with `seeds`) when `key` is given.
pub async fn node(name: &str, key: Option<&ClusterKey>, seeds: Vec<String>, size: usize) -> NodeHandle {
    let mut config = loopback_config();
    config.node.name = name.into();
    if let Some(key) = key {
        join_cluster(&mut config, "casd-bench", name, key, seeds, size);
    }
    bench_config(&mut config);
    Node::start(config).await.expect("node")
}

/// `n` nodes: one plain node, or a cluster of `n` whose members all see each other ready.
pub async fn nodes(n: usize) -> Vec<NodeHandle> {
    if n <= 1 {
        return vec![node("b1", None, vec![], 1).await];
    }
    let cluster = TestCluster::start("casd-bench", "b", n, |_, c| bench_config(c)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.nodes
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

/// The demo user's principal with three attributes, as every bench's TGTs carry.
pub fn principal() -> casd::ticket::Principal {
    let attributes = [
        ("mail".to_owned(), vec!["casuser@example.org".to_owned()]),
        ("memberOf".to_owned(), vec!["staff".to_owned(), "demo".to_owned()]),
        ("displayName".to_owned(), vec!["CAS Demo User".to_owned()]),
    ]
    .into_iter()
    .collect();
    casd::ticket::Principal { id: "casuser".into(), attributes }
}
