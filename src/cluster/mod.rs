//! The cluster layer: membership and failure detection by chitchat gossip (seeded from config, found by multicast
//! on a LAN), and replication over TCP links (`replication`), every byte sealed under the cluster key. Knows bytes,
//! members and addresses, never CAS. A node publishes `joining` until `Node::start` has copied the maps from a
//! ready peer, then `ready`.

pub mod discovery;
pub mod drops;
pub mod gossip_transport;
pub mod membership;
pub mod replication;
pub mod seal;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chitchat::{ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, ProtocolVersion, spawn_chitchat};
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use self::drops::{DropCounters, DropCounts};
use self::membership::{KEY_HTTP, KEY_REPLICATION, KEY_STATUS, MemberInfo, MemberStatus, View};
use self::seal::{ClusterKey, Opener, Purpose, Sealer};
use crate::config::ClusterConfig;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot bind gossip address {addr}: {source}")]
    BindGossip { addr: SocketAddr, source: std::io::Error },
    #[error("cannot open the multicast socket on port {port}: {source}")]
    Multicast { port: u16, source: std::io::Error },
    #[error("cannot start gossip: {0}")]
    Gossip(String),
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
}

/// A running cluster membership. Call [`ClusterHandle::leave`] for a graceful exit.
pub struct ClusterHandle {
    chitchat: Arc<ChitchatHandle>,
    status: watch::Receiver<ClusterStatus>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    gossip_interval: Duration,
    gossip_addr: SocketAddr,
    drops: Arc<DropCounters>,
    sealer: Arc<Sealer>,
}

/// Starts gossip for node `node` whose HTTP endpoint peers reach at `http_addr`.
/// Starts gossip for node `node`, published as `joining` until [`ClusterHandle::set_status`] says otherwise.
/// `generation` must be this boot's (the one in every ticket id the node issues); `replication_addr` is the bound
/// replication listener.
pub async fn start(
    cfg: &ClusterConfig,
    key: &ClusterKey,
    node: &str,
    generation: u64,
    http_addr: String,
    replication_addr: SocketAddr,
) -> Result<ClusterHandle, ClusterError> {
    let socket = tokio::net::UdpSocket::bind(cfg.gossip_addr)
        .await
        .map_err(|source| ClusterError::BindGossip { addr: cfg.gossip_addr, source })?;
    let bound = socket.local_addr().map_err(|source| ClusterError::BindGossip { addr: cfg.gossip_addr, source })?;
    let advertised = cfg.gossip_advertise.unwrap_or(bound);
    let sealer = Arc::new(Sealer::new(key, &cfg.id, node, generation));
    let drops = Arc::new(DropCounters::default());
    let sealer_for_replication = sealer.clone();
    let transport = gossip_transport::SealedUdpTransport::new(
        socket,
        sealer.clone(),
        Opener::new(key, &cfg.id, Purpose::Gossip),
        drops.clone(),
    );
    let chitchat_id = ChitchatId::new(node.to_owned(), generation, advertised);
    let config = ChitchatConfig {
        chitchat_id: chitchat_id.clone(),
        cluster_id: cfg.id.clone(),
        gossip_interval: cfg.gossip_interval,
        listen_addr: bound,
        seed_nodes: cfg.seeds.clone(),
        failure_detector_config: FailureDetectorConfig {
            phi_threshold: cfg.phi_threshold,
            // The prior mean gap: without it a fresh or returning peer is judged against chitchat's 5 s default.
            initial_interval: cfg.gossip_interval,
            dead_node_grace_period: cfg.dead_node_grace_period,
            ..Default::default()
        },
        marked_for_deletion_grace_period: cfg.dead_node_grace_period,
        catchup_callback: None,
        extra_liveness_predicate: None,
        protocol_version: ProtocolVersion::V0,
    };
    let initial = vec![
        (KEY_HTTP.to_owned(), http_addr),
        (KEY_REPLICATION.to_owned(), replication_addr.to_string()),
        (KEY_STATUS.to_owned(), MemberStatus::Joining.as_str().to_owned()),
    ];
    let chitchat =
        Arc::new(spawn_chitchat(config, initial, &transport).await.map_err(|e| ClusterError::Gossip(e.to_string()))?);

    let (stop, stopped) = watch::channel(false);
    let first = ClusterStatus {
        cluster_id: cfg.id.clone(),
        node: node.to_owned(),
        generation,
        gossip_addr: advertised.to_string(),
        expected_size: cfg.expected_size,
        members: Vec::new(),
        live: Arc::default(),
        dropped: DropCounts::default(),
    };
    let (status_tx, status) = watch::channel(first);
    let mut tasks = vec![tokio::spawn(watch_members(
        chitchat.clone(),
        status_tx,
        cfg.gossip_interval,
        cfg.phi_threshold,
        drops.clone(),
        stopped.clone(),
    ))];
    if cfg.multicast.enabled {
        let socket = discovery::multicast_socket(&cfg.multicast)
            .map_err(|source| ClusterError::Multicast { port: cfg.multicast.port, source })?;
        let me = discovery::Beacon { cluster_id: cfg.id.clone(), node: node.to_owned(), gossip_addr: advertised };
        let handle = chitchat.clone();
        let found = move |addr| {
            let _ = handle.gossip(addr);
        };
        tasks.push(tokio::spawn(discovery::run(
            cfg.multicast.clone(),
            socket,
            sealer,
            Opener::new(key, &cfg.id, Purpose::Beacon),
            me,
            drops.clone(),
            found,
            stopped,
        )));
    }
    tracing::info!(cluster = %cfg.id, node, generation, gossip = %advertised, seeds = cfg.seeds.len(), multicast = cfg.multicast.enabled, "cluster membership started");
    Ok(ClusterHandle {
        chitchat,
        status,
        stop,
        tasks,
        gossip_interval: cfg.gossip_interval,
        gossip_addr: bound,
        drops,
        sealer: sealer_for_replication,
    })
}

/// Refreshes the status every gossip interval from chitchat's state, tracking when each heartbeat last rose (for
/// the status page's "last heartbeat" and phi).
async fn watch_members(
    chitchat: Arc<ChitchatHandle>,
    status: watch::Sender<ClusterStatus>,
    every: Duration,
    threshold: f64,
    drops: Arc<DropCounters>,
    mut stopped: watch::Receiver<bool>,
) {
    let self_id = chitchat.chitchat_id().clone();
    let mut last_rise: HashMap<ChitchatId, (u64, Instant)> = HashMap::new();
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = async { let _ = stopped.wait_for(|s| *s).await; } => return,
        }
        let facts = chitchat
            .with_chitchat(|c| {
                let live: HashSet<ChitchatId> = c.live_nodes().cloned().collect();
                c.node_states()
                    .iter()
                    .map(|(id, st)| {
                        let timeout = c.failure_detection_timeout(id).map(|d| d.as_millis() as u64);
                        let get = |k: &str| st.get(k).map(str::to_owned);
                        (
                            id.clone(),
                            u64::from(st.heartbeat()),
                            live.contains(id),
                            timeout,
                            get(KEY_HTTP),
                            get(KEY_REPLICATION),
                            get(KEY_STATUS),
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .await;
        let now = Instant::now();
        let members: Vec<MemberInfo> = facts
            .into_iter()
            .map(|(id, heartbeat, alive, timeout, http, repl, st)| {
                let entry = last_rise.entry(id.clone()).or_insert((heartbeat, now));
                if heartbeat != entry.0 {
                    *entry = (heartbeat, now);
                }
                let silence = now.duration_since(entry.1).as_millis() as u64;
                let is_self = id == self_id;
                MemberInfo {
                    node: id.node_id.to_string(),
                    generation: id.generation_id,
                    gossip_addr: id.gossip_advertise_addr.to_string(),
                    http_addr: http,
                    replication_addr: repl,
                    status: MemberStatus::parse(st.as_deref()),
                    alive: alive || is_self,
                    heartbeat,
                    last_heartbeat_ms: silence,
                    phi: if is_self { 0.0 } else { membership::phi(silence, timeout, threshold) },
                    is_self,
                }
            })
            .collect();
        let live = Arc::new(membership::view_of(&members));
        status.send_modify(|s| {
            s.members = members;
            s.live = live;
            s.dropped = drops.snapshot();
        });
    }
}

impl ClusterHandle {
    /// Follows the status (and so the live view) as it changes.
    pub fn status(&self) -> watch::Receiver<ClusterStatus> {
        self.status.clone()
    }

    pub fn view(&self) -> View {
        self.status.borrow().view()
    }

    /// The bound gossip socket address.
    pub fn gossip_addr(&self) -> SocketAddr {
        self.gossip_addr
    }

    pub fn dropped(&self) -> DropCounts {
        self.drops.snapshot()
    }

    /// The drop counters, shared with the replication links.
    pub fn drop_counters(&self) -> Arc<DropCounters> {
        self.drops.clone()
    }

    /// This node's sealer, shared with the replication links (one nonce counter per boot).
    pub fn sealer(&self) -> Arc<Sealer> {
        self.sealer.clone()
    }

    /// Publishes this node's status (e.g. `ready` once state transfer is done).
    pub async fn set_status(&self, status: MemberStatus) {
        self.chitchat.with_chitchat(|c| c.self_node_state().set(KEY_STATUS, status.as_str())).await;
    }

    /// Graceful leave: publish `leaving`, give peers a few gossip rounds to hear it, then stop.
    pub async fn leave(self) {
        self.set_status(MemberStatus::Leaving).await;
        tokio::time::sleep(self.gossip_interval * 3).await;
        self.stop_now().await;
    }

    /// Stops at once, as a crash would look to peers: no goodbye.
    pub async fn stop_now(self) {
        let _ = self.stop.send(true);
        let _ = self.chitchat.initiate_shutdown();
        self.chitchat.abort();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
