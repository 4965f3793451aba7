//! Everything derived from the cluster key, built once per boot: the one [`Sealer`] (one nonce counter for every
//! frame this boot sends) and the openers of each purpose. The key itself goes no further than here.

use std::sync::Arc;

use super::seal::{ClusterKey, Opener, Purpose, Sealer};

pub struct Keyring {
    key: ClusterKey,
    cluster_id: String,
    node: String,
    generation: u64,
    sealer: Arc<Sealer>,
}

impl Keyring {
    pub fn new(key: ClusterKey, cluster_id: &str, node: &str, generation: u64) -> Self {
        let sealer = Arc::new(Sealer::new(&key, cluster_id, node, generation));
        Self { key, cluster_id: cluster_id.to_owned(), node: node.to_owned(), generation, sealer }
    }

    pub fn sealer(&self) -> Arc<Sealer> {
        self.sealer.clone()
    }

    /// Opens frames sealed for every node (gossip, beacons).
    pub fn opener(&self, purpose: Purpose) -> Opener {
        Opener::new(&self.key, &self.cluster_id, purpose)
    }

    /// Opens only frames sealed to this node (replication requests and replies).
    pub fn opener_to_me(&self, purpose: Purpose) -> Opener {
        Opener::for_recipient(&self.key, &self.cluster_id, purpose, &self.node)
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }
}
