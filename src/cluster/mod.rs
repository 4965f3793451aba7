//! The cluster layer: membership and failure detection by chitchat gossip (seeded from config, found by multicast
//! on a LAN), and replication over TCP links, every byte sealed under the cluster key. Knows bytes, members and
//! maps, never CAS and never the config file.
//!
//! [`Cluster::start`] is the cluster's whole life in one place: it binds, builds one keyring, starts gossip and the
//! replicator, and starts the join: a copy of the maps from a ready peer (state transfer), then `ready`, then
//! anti-entropy and repair until [`Cluster::stop`]. [`Cluster::wait_ready`] waits for the join; meanwhile
//! [`Cluster::readiness`] says what it waits for.

pub mod discovery;
pub mod drops;
mod gossip;
pub mod gossip_transport;
mod keyring;
pub mod membership;
pub mod replication;
pub mod seal;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::discovery::MulticastSettings;
use self::drops::{DropCounters, DropCounts};
use self::gossip::Membership;
use self::keyring::Keyring;
use self::membership::{MemberInfo, MemberStatus, View};
use self::replication::anti_entropy::AntiEntropy;
use self::replication::replica::{MapId, MapReplica, Replicas};
use self::replication::{Readiness, Replicator, StateTransfer, Timeouts};
use self::seal::ClusterKey;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot bind gossip address {addr}: {source}")]
    BindGossip { addr: SocketAddr, source: std::io::Error },
    #[error("cannot listen on replication address {addr}: {source}")]
    BindReplication { addr: SocketAddr, source: std::io::Error },
    #[error("cannot open the multicast socket on port {port}: {source}")]
    Multicast { port: u16, source: std::io::Error },
    #[error("cannot start gossip: {0}")]
    Gossip(String),
}

/// How this node takes part in its cluster (the `[cluster]` section of the config, validated).
#[derive(Clone, Debug)]
pub struct ClusterSettings {
    /// Nodes only form a cluster with nodes of the same id (it is also bound into every sealed frame).
    pub id: String,
    pub gossip_addr: SocketAddr,
    /// The gossip address peers should use, when `gossip_addr` binds a wildcard.
    pub gossip_advertise: Option<SocketAddr>,
    pub replication_addr: SocketAddr,
    pub seeds: Vec<String>,
    pub gossip_interval: Duration,
    pub phi_threshold: f64,
    pub dead_node_grace_period: Duration,
    /// The configured number of nodes; majorities count this, never the current view.
    pub expected_size: usize,
    pub multicast: MulticastSettings,
    pub timeouts: Timeouts,
    pub join_timeout: Duration,
    pub anti_entropy_interval: Duration,
}

/// Who this node is in this boot.
#[derive(Clone, Debug)]
pub struct Identity {
    pub node: String,
    /// This boot's generation: the one in every ticket id the node issues.
    pub generation: u64,
    /// The URL at which peers (and the status page) reach this node's CAS endpoints.
    pub http_url: String,
}

/// The maps a node replicates, as the replicator serves them to peers.
pub trait MapSet {
    fn replicas(&self) -> Vec<(MapId, Arc<dyn MapReplica>)>;
}

/// What this node knows of the cluster, refreshed every gossip interval.
#[derive(Clone, Debug, Serialize)]
pub struct ClusterStatus {
    pub cluster_id: String,
    pub node: String,
    pub generation: u64,
    pub gossip_addr: String,
    pub expected_size: usize,
    /// Every member chitchat knows, alive or dead, self included.
    pub members: Vec<MemberInfo>,
    /// The live view of `members`, built once per refresh: replication consults it on every write.
    #[serde(skip)]
    live: Arc<View>,
    pub dropped: DropCounts,
}

impl ClusterStatus {
    /// The live view: alive members, newest generation per node.
    pub fn view(&self) -> View {
        (*self.live).clone()
    }

    /// The live view, shared rather than copied.
    pub fn live(&self) -> Arc<View> {
        self.live.clone()
    }

    /// The status this node publishes for itself.
    pub fn own_status(&self) -> MemberStatus {
        self.members.iter().find(|m| m.is_self).map_or(MemberStatus::Joining, |m| m.status)
    }
}

/// A running cluster membership and replicator.
pub struct Cluster {
    membership: Arc<Membership>,
    replicator: Arc<Replicator>,
    drops: Arc<DropCounters>,
    gossip_interval: Duration,
    readiness: watch::Receiver<Readiness>,
    state_transfer: Arc<std::sync::OnceLock<StateTransfer>>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Cluster {
    /// Starts this node's part of the cluster: the maps that `build_maps` makes over the replicator are registered
    /// and take the peers' writes at once; they are filled from a ready peer in the background (invariant 5), and
    /// the node publishes `ready` only then ([`Cluster::wait_ready`]).
    pub async fn start<M: MapSet>(
        settings: &ClusterSettings,
        key: ClusterKey,
        identity: Identity,
        build_maps: impl FnOnce(Arc<dyn Replicas>) -> M,
    ) -> Result<(Self, M), ClusterError> {
        let addr = settings.replication_addr;
        let listener = crate::accept::bind_patiently(|| tokio::net::TcpListener::bind(addr))
            .await
            .map_err(|source| ClusterError::BindReplication { addr, source })?;
        let replication_addr =
            listener.local_addr().map_err(|source| ClusterError::BindReplication { addr, source })?;
        let keyring = Keyring::new(key, &settings.id, &identity.node, identity.generation);
        let drops = Arc::new(DropCounters::default());
        let (stop, tasks) = (CancellationToken::new(), TaskTracker::new());
        let membership = Arc::new(
            Membership::start(settings, &keyring, identity.http_url, replication_addr, drops.clone(), &stop, &tasks)
                .await?,
        );
        let replicator = Replicator::new(
            &keyring,
            settings.timeouts,
            membership.status.clone(),
            drops.clone(),
            stop.clone(),
            tasks.clone(),
        );
        let maps = build_maps(Arc::new(replicator.clone()));
        for (id, replica) in maps.replicas() {
            replicator.register(id, replica);
        }
        tasks.spawn(replicator.clone().serve(listener));
        tasks.spawn(replicator.clone().tend_links());
        let when = AntiEntropy {
            join_timeout: settings.join_timeout,
            finds_peers: !settings.seeds.is_empty() || settings.multicast.enabled,
            interval: settings.anti_entropy_interval,
        };
        let (readiness_tx, readiness) = watch::channel(Readiness::Joining { reason: None });
        let state_transfer = Arc::new(std::sync::OnceLock::new());
        let join = {
            let (replicator, membership, transfer) = (replicator.clone(), membership.clone(), state_transfer.clone());
            async move {
                if let Some(t) = replicator.transfer_state(&when, &readiness_tx).await {
                    let _ = transfer.set(t);
                }
                membership.set_status(MemberStatus::Ready).await;
                readiness_tx.send_replace(Readiness::Ready);
                replicator.anti_entropy(when.interval).await;
            }
        };
        let stopped = stop.clone();
        tasks.spawn(async move {
            tokio::select! {
                _ = join => {}
                _ = stopped.cancelled() => {}
            }
        });
        let cluster = Self {
            membership,
            replicator,
            drops,
            gossip_interval: settings.gossip_interval,
            readiness,
            state_transfer,
            stop,
            tasks,
        };
        Ok((cluster, maps))
    }

    /// Waits until this node holds its copy of the maps and publishes `ready`.
    pub async fn wait_ready(&self) {
        let _ = self.readiness.clone().wait_for(|r| *r == Readiness::Ready).await;
    }

    /// Whether the node has its copy of the maps, or what it waits for.
    pub fn readiness(&self) -> watch::Receiver<Readiness> {
        self.readiness.clone()
    }

    /// Follows the status (and so the live view) as it changes.
    pub fn status(&self) -> watch::Receiver<ClusterStatus> {
        self.membership.status.clone()
    }

    pub fn view(&self) -> View {
        self.membership.status.borrow().view()
    }

    /// The bound gossip socket address.
    pub fn gossip_addr(&self) -> SocketAddr {
        self.membership.gossip_addr
    }

    pub fn dropped(&self) -> DropCounts {
        self.drops.snapshot()
    }

    pub fn replicator(&self) -> &Arc<Replicator> {
        &self.replicator
    }

    /// The state transfer this node made when it joined: none for the first node of a cluster.
    pub fn state_transfer(&self) -> Option<&StateTransfer> {
        self.state_transfer.get()
    }

    /// Whether this node sends single logout for an expired TGT issued by `node` in boot `generation` (`None`: an
    /// id that names no issuer): exactly one live node does.
    pub fn sends_expiry_logout(&self, issuer: Option<(&str, u64)>) -> bool {
        self.replicator.sends_expiry_logout(issuer)
    }

    /// The first half of a graceful leave: publish `leaving` and give peers a few gossip rounds to hear it, while
    /// this node still serves and replicates.
    pub async fn announce_leaving(&self) {
        self.membership.set_status(MemberStatus::Leaving).await;
        tokio::time::sleep(self.gossip_interval * 3).await;
    }

    /// Stops gossip, links and every background task, and waits for them: to peers this looks like a crash
    /// unless [`Cluster::announce_leaving`] came first.
    pub async fn stop(self) {
        self.membership.stop();
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}
