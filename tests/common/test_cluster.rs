//! Real casd nodes on ephemeral loopback ports, alone or as a cluster: the one set-up shared by the integration
//! tests (`tests/integration/support.rs`) and the benches (`benches/support.rs`), which include this file.
// Each including crate uses a part of it.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use casd::cluster::membership::MemberStatus;
use casd::cluster::seal::ClusterKey;
use casd::config::ClusterConfig;
use casd::{Config, Node, NodeHandle};

/// The embedded demo configuration on an ephemeral loopback port.
pub fn loopback_config() -> Config {
    let mut c = Config::embedded();
    c.http.listen = "127.0.0.1:0".parse().expect("addr");
    c
}

/// Makes `config` node `name` of the cluster `cluster_id` of `size` nodes, on ephemeral loopback ports, seeded
/// with `seeds` (gossip addresses).
pub fn join_cluster(
    config: &mut Config,
    cluster_id: &str,
    name: &str,
    key: &ClusterKey,
    seeds: Vec<String>,
    size: usize,
) {
    let loopback = "127.0.0.1:0".parse().expect("addr");
    let mut c = ClusterConfig::new(cluster_id, loopback, loopback, key);
    c.seeds = seeds;
    c.expected_size = size;
    config.node.name = name.into();
    config.cluster = Some(c);
}

/// The node names in `node`'s view that publish `ready`.
pub fn ready_members(node: &NodeHandle) -> Vec<String> {
    let view = node.cluster().expect("clustered").view();
    view.into_values().filter(|m| m.status == MemberStatus::Ready).map(|m| m.node).collect()
}

/// A cluster of real nodes named `{prefix}1` .. `{prefix}N`, each seeded with the first.
pub struct TestCluster {
    pub key: ClusterKey,
    pub nodes: Vec<NodeHandle>,
    id: String,
    prefix: String,
}

impl TestCluster {
    /// Starts `size` nodes, each configured by `adjust` (given its number, from 1) after it joined the cluster,
    /// and waits (at most 30 s) until every node sees every node ready.
    pub async fn start(id: &str, prefix: &str, size: usize, adjust: impl Fn(usize, &mut Config)) -> Self {
        Self::with_key(ClusterKey::generate(), id, prefix, size, adjust).await
    }

    /// As [`TestCluster::start`], under a key the caller chose.
    pub async fn with_key(
        key: ClusterKey,
        id: &str,
        prefix: &str,
        size: usize,
        adjust: impl Fn(usize, &mut Config),
    ) -> Self {
        let mut cluster = Self { key, nodes: Vec::new(), id: id.into(), prefix: prefix.into() };
        for i in 1..=size {
            let node = cluster.node(i, size, |c| adjust(i, c)).await;
            cluster.nodes.push(node);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while !cluster.nodes.iter().all(|n| ready_members(n).len() == size) {
            assert!(Instant::now() < deadline, "the cluster of {size} did not form");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        cluster
    }

    /// The gossip address of the first node, which seeds the others.
    pub fn seed(&self) -> Vec<String> {
        self.nodes.first().map(|n| n.cluster().expect("clustered").gossip_addr().to_string()).into_iter().collect()
    }

    /// Starts node number `i` of a cluster of `size` (not added to `nodes`): the first seeds nobody, the others
    /// are seeded with the first.
    pub async fn node(&self, i: usize, size: usize, adjust: impl FnOnce(&mut Config)) -> NodeHandle {
        let mut config = loopback_config();
        join_cluster(&mut config, &self.id, &format!("{}{i}", self.prefix), &self.key, self.seed(), size);
        adjust(&mut config);
        Node::start(config).await.expect("node starts")
    }

    /// Stops every node as a crash would.
    pub async fn crash_all(self) {
        for n in self.nodes {
            n.crash().await;
        }
    }
}
