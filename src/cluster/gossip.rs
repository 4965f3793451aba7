//! Membership by chitchat gossip over the sealed UDP transport, seeded from config and from multicast beacons.
//! Publishes this node's HTTP URL, replication address and status, and keeps a [`ClusterStatus`] fresh every
//! gossip interval.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chitchat::{ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, ProtocolVersion, spawn_chitchat};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::drops::{DropCounters, DropCounts};
use super::keyring::Keyring;
use super::membership::{self, KEY_HTTP, KEY_REPLICATION, KEY_STATUS, MemberInfo, MemberStatus};
use super::seal::Purpose;
use super::{ClusterError, ClusterSettings, ClusterStatus, discovery, gossip_transport};

/// A running membership.
pub(super) struct Membership {
    chitchat: Arc<ChitchatHandle>,
    pub(super) status: watch::Receiver<ClusterStatus>,
    pub(super) gossip_addr: SocketAddr,
}

impl Membership {
    /// Starts gossip, published as `joining` until [`Membership::set_status`] says otherwise. Its tasks run on
    /// `tasks` until `stop` is cancelled.
    pub(super) async fn start(
        settings: &ClusterSettings,
        keyring: &Keyring,
        http_url: String,
        replication_addr: SocketAddr,
        drops: Arc<DropCounters>,
        stop: &CancellationToken,
        tasks: &TaskTracker,
    ) -> Result<Self, ClusterError> {
        let bind_error = |source| ClusterError::BindGossip { addr: settings.gossip_addr, source };
        let socket = crate::accept::bind_patiently(|| tokio::net::UdpSocket::bind(settings.gossip_addr))
            .await
            .map_err(bind_error)?;
        let bound = socket.local_addr().map_err(bind_error)?;
        let advertised = settings.gossip_advertise.unwrap_or(bound);
        let destinations = Arc::new(gossip_transport::Destinations::default());
        allow_seeds(&settings.seeds, &destinations).await;
        let transport = gossip_transport::SealedUdpTransport::new(
            socket,
            keyring.sealer(),
            keyring.opener(Purpose::Gossip),
            drops.clone(),
            destinations.clone(),
        );
        let (node, generation) = (keyring.node().to_owned(), keyring.generation());
        let config = ChitchatConfig {
            chitchat_id: ChitchatId::new(node.clone(), generation, advertised),
            cluster_id: settings.id.clone(),
            gossip_interval: settings.gossip_interval,
            listen_addr: bound,
            seed_nodes: settings.seeds.clone(),
            failure_detector_config: FailureDetectorConfig {
                phi_threshold: settings.phi_threshold,
                // The prior mean gap: without it a fresh or returning peer is judged against chitchat's 5 s default.
                initial_interval: settings.gossip_interval,
                dead_node_grace_period: settings.dead_node_grace_period,
                ..Default::default()
            },
            marked_for_deletion_grace_period: settings.dead_node_grace_period,
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: ProtocolVersion::V0,
        };
        let initial = vec![
            (KEY_HTTP.to_owned(), http_url),
            (KEY_REPLICATION.to_owned(), replication_addr.to_string()),
            (KEY_STATUS.to_owned(), MemberStatus::Joining.as_str().to_owned()),
        ];
        let chitchat = Arc::new(
            spawn_chitchat(config, initial, &transport).await.map_err(|e| ClusterError::Gossip(e.to_string()))?,
        );
        let first = ClusterStatus {
            cluster_id: settings.id.clone(),
            node: node.clone(),
            generation,
            gossip_addr: advertised.to_string(),
            expected_size: settings.expected_size,
            members: Vec::new(),
            live: Arc::default(),
            dropped: DropCounts::default(),
        };
        let (status_tx, status) = watch::channel(first);
        let refresh = Refresh {
            every: settings.gossip_interval,
            threshold: settings.phi_threshold,
            seeds: settings.seeds.clone(),
            destinations: destinations.clone(),
        };
        tasks.spawn(refresh.run(chitchat.clone(), status_tx, drops.clone(), stop.clone()));
        if settings.multicast.enabled {
            let socket = discovery::multicast_socket(&settings.multicast)
                .map_err(|source| ClusterError::Multicast { port: settings.multicast.port, source })?;
            let me = discovery::Beacon { cluster_id: settings.id.clone(), node, gossip_addr: advertised };
            let handle = chitchat.clone();
            let found = move |addr| {
                destinations.allow(addr);
                let _ = handle.gossip(addr);
            };
            tasks.spawn(discovery::run(
                settings.multicast.clone(),
                socket,
                keyring.sealer(),
                keyring.opener(Purpose::Beacon),
                me,
                drops,
                found,
                stop.clone(),
            ));
        }
        tracing::info!(cluster = %settings.id, node = keyring.node(), generation, gossip = %advertised, seeds = settings.seeds.len(), multicast = settings.multicast.enabled, "cluster membership started");
        Ok(Self { chitchat, status, gossip_addr: bound })
    }

    /// Publishes this node's status (e.g. `ready` once state transfer is done).
    pub(super) async fn set_status(&self, status: MemberStatus) {
        self.chitchat.with_chitchat(|c| c.self_node_state().set(KEY_STATUS, status.as_str())).await;
    }

    /// Stops gossip at once: peers hear nothing more from this boot.
    pub(super) fn stop(&self) {
        let _ = self.chitchat.initiate_shutdown();
        self.chitchat.abort();
    }
}

/// How often seed host names are resolved again (chitchat does the same every 60 s).
const SEED_RESOLVE_EVERY: Duration = Duration::from_secs(60);

/// Lets gossip go to every address the seeds resolve to now. A seed that does not resolve is skipped (chitchat
/// logs it); it is tried again at the next resolution.
async fn allow_seeds(seeds: &[String], destinations: &gossip_transport::Destinations) {
    for seed in seeds {
        match tokio::net::lookup_host(seed.as_str()).await {
            Ok(addrs) => addrs.for_each(|a| destinations.allow(a)),
            Err(e) => tracing::debug!(%seed, error = %e, "seed does not resolve"),
        }
    }
}

/// Refreshes the status every gossip interval from chitchat's state, tracking when each heartbeat last rose (for
/// the status page's "last heartbeat" and phi), and keeps gossip's destinations up to date.
struct Refresh {
    every: Duration,
    threshold: f64,
    seeds: Vec<String>,
    destinations: Arc<gossip_transport::Destinations>,
}

impl Refresh {
    async fn run(
        self,
        chitchat: Arc<ChitchatHandle>,
        status: watch::Sender<ClusterStatus>,
        drops: Arc<DropCounters>,
        stop: CancellationToken,
    ) {
        let self_id = chitchat.chitchat_id().clone();
        let mut last_rise: HashMap<ChitchatId, (u64, Instant)> = HashMap::new();
        let mut tick = tokio::time::interval(self.every);
        let mut resolved = Instant::now();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            if resolved.elapsed() >= SEED_RESOLVE_EVERY {
                allow_seeds(&self.seeds, &self.destinations).await;
                resolved = Instant::now();
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
            for fact in &facts {
                self.destinations.allow(fact.0.gossip_advertise_addr);
            }
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
                        phi: if is_self { 0.0 } else { membership::phi(silence, timeout, self.threshold) },
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
}
