//! `Node::start(Config)`: wires the registry, the protocol layer, the cluster and the background tasks, binds the
//! listeners and hands back a [`NodeHandle`]. Used by `main` and by the tests alike.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::auth::{Throttle, UsersFile};
use crate::cas::{self, App, cookie::TgcCookie, pages::Pages, pgt_callback::PgtCallback, slo::SloSender};
use crate::cluster::membership::{MemberInfo, MemberStatus};
use crate::cluster::replication::{Replicator, ReplicatorParts};
use crate::cluster::{ClusterHandle, ClusterStatus};
use crate::config::{ClusterConfig, Config, ConfigError};
use crate::registry::{Maps, TicketRegistry};
use crate::ticket::{IdGenerator, now_ms};
use crate::tls::TlsReloader;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("proxy callback client: {0}")]
    Callback(#[from] cas::pgt_callback::CallbackSetupError),
    #[error("single logout client: {0}")]
    Slo(String),
    #[error("service registry: {0}")]
    Services(#[from] regex::Error),
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

pub struct Node;

/// A running node. Dropping it leaves the server running; call [`NodeHandle::shutdown`] to stop it.
pub struct NodeHandle {
    addr: SocketAddr,
    base_path: String,
    app: Arc<App>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    cluster: Option<ClusterHandle>,
    replicator: Option<Arc<Replicator>>,
    tls: Option<Arc<TlsReloader>>,
    state_transfer: Option<StateTransfer>,
}

/// The state transfer a node made before it reported ready.
#[derive(Clone, Debug)]
pub struct StateTransfer {
    pub from: String,
    pub entries: u64,
    /// The pull alone, without the wait to find a ready peer.
    pub took: std::time::Duration,
}

async fn bind(addr: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr), StartError> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr, source })?;
    let bound = listener.local_addr().map_err(|source| StartError::Bind { addr, source })?;
    Ok((listener, bound))
}

impl Node {
    /// Starts a node. In a cluster, the node first copies every map from a ready peer (state transfer) and only then
    /// reports `ready` and serves HTTP (invariant 5); connections made meanwhile wait in the listen backlog.
    pub async fn start(config: Config) -> Result<NodeHandle, StartError> {
        let generation = now_ms();
        let tls = match &config.http.tls {
            Some(t) => Some(Arc::new(TlsReloader::new(&t.cert_file, &t.key_file)?)),
            None => None,
        };
        let (listener, addr) = bind(config.http.listen).await?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let (stop, stopped) = watch::channel(false);
        let mut tasks = Vec::new();
        let mut state_transfer = None;
        let (cluster, replicator, maps) = match (&config.cluster, config.cluster_key()?) {
            (Some(c), Some(key)) => {
                let (repl_listener, repl_addr) = bind(c.replication_addr).await?;
                let http =
                    c.http_advertise.clone().unwrap_or_else(|| format!("{scheme}://{addr}{}", config.http.base_path));
                let cluster = crate::cluster::start(c, &key, &config.node.name, generation, http, repl_addr).await?;
                let replicator = Replicator::new(ReplicatorParts {
                    me: config.node.name.clone(),
                    generation,
                    cluster_id: c.id.clone(),
                    key,
                    sealer: cluster.sealer(),
                    status: cluster.status(),
                    drops: cluster.drop_counters(),
                    ack_timeout: c.ack_timeout,
                    forward_timeout: c.forward_timeout,
                    stopped: stopped.clone(),
                });
                let maps = Maps::replicated(&replicator, &config.tickets.policy(), c.min_copies);
                tasks.push(tokio::spawn(replicator.clone().serve(repl_listener)));
                state_transfer = transfer_state(&cluster, &replicator, c).await;
                cluster.set_status(MemberStatus::Ready).await;
                tasks.push(tokio::spawn(anti_entropy(
                    replicator.clone(),
                    cluster.status(),
                    c.anti_entropy_interval,
                    stopped.clone(),
                )));
                (Some(cluster), Some(replicator), maps)
            }
            _ => (None, None, Maps::local()),
        };
        let mut app = build_app(&config, generation, maps)?;
        app.cluster = cluster.as_ref().map(ClusterHandle::status);
        if let Some(r) = replicator.clone() {
            app.replication = Some(Box::new(move || r.counts()));
        }
        let app = Arc::new(app);

        let server = match &tls {
            Some(tls) => {
                tokio::spawn(crate::tls::serve(listener, cas::router(app.clone()), tls.clone(), stopped.clone()))
            }
            None => {
                let router = cas::router(app.clone()).into_make_service_with_connect_info::<SocketAddr>();
                let mut on_stop = stopped.clone();
                tokio::spawn(async move {
                    let shutdown = async move {
                        let _ = on_stop.wait_for(|s| *s).await;
                    };
                    if let Err(e) = axum::serve(listener, router).with_graceful_shutdown(shutdown).await {
                        tracing::error!(error = %e, "http server failed");
                    }
                })
            }
        };
        tasks.insert(0, server);
        tasks.push(tokio::spawn(sweep_forever(
            app.clone(),
            replicator.clone(),
            config.tickets.sweep_interval,
            stopped,
        )));
        tracing::info!(%addr, base_path = %config.http.base_path, node = %config.node.name, "casd node started");
        Ok(NodeHandle {
            addr,
            base_path: config.http.base_path.clone(),
            app,
            stop,
            tasks,
            cluster,
            replicator,
            tls,
            state_transfer,
        })
    }
}

/// Waits (at most `join_timeout`) for a ready peer and copies every map from it. A node that sees no ready peer
/// is the first of its cluster and starts empty.
async fn transfer_state(
    cluster: &ClusterHandle,
    replicator: &Arc<Replicator>,
    c: &ClusterConfig,
) -> Option<StateTransfer> {
    // With no seeds and no multicast this node cannot find anyone: it is the first, others will find it.
    if c.seeds.is_empty() && !c.multicast.enabled {
        return None;
    }
    let deadline = tokio::time::Instant::now() + c.join_timeout;
    let mut status = cluster.status();
    loop {
        let ready: Vec<MemberInfo> = ready_peers(&status.borrow());
        for peer in &ready {
            let started = std::time::Instant::now();
            match replicator.pull_all(peer).await {
                Ok(entries) => {
                    let took = started.elapsed();
                    tracing::info!(from = %peer.node, entries, took_ms = took.as_millis() as u64, "state transfer done");
                    return Some(StateTransfer { from: peer.node.clone(), entries, took });
                }
                Err(e) => tracing::warn!(from = %peer.node, error = %e, "state transfer failed; trying another peer"),
            }
        }
        if tokio::time::timeout_at(deadline, status.changed()).await.is_err() {
            tracing::info!("no ready peer seen: starting as the first node of the cluster");
            return None;
        }
    }
}

fn ready_peers(status: &ClusterStatus) -> Vec<MemberInfo> {
    status.view().into_values().filter(|m| !m.is_self && m.status == MemberStatus::Ready).collect()
}

/// Repairs what synchronous writes missed (a peer that was cut off or slow): every second, asks the peers that
/// missed this node's writes to pull from it; pulls the maps of every peer that (re)appears in the view, and of one
/// peer every `every`. Joins make repeated pulls harmless.
async fn anti_entropy(
    replicator: Arc<Replicator>,
    mut status: watch::Receiver<ClusterStatus>,
    every: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    let mut known: std::collections::BTreeMap<String, u64> =
        ready_peers(&status.borrow()).into_iter().map(|m| (m.node, m.generation)).collect();
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    let mut repair = tokio::time::interval(Duration::from_secs(1));
    let mut round = 0usize;
    loop {
        let periodic = tokio::select! {
            _ = async { let _ = stopped.wait_for(|s| *s).await; } => return,
            changed = status.changed() => { if changed.is_err() { return; } false }
            _ = tick.tick() => true,
            _ = repair.tick() => {
                replicator.repair_peers().await;
                continue;
            }
        };
        let peers = ready_peers(&status.borrow());
        let mut to_pull: Vec<MemberInfo> =
            peers.iter().filter(|m| known.get(&m.node) != Some(&m.generation)).cloned().collect();
        known = peers.iter().map(|m| (m.node.clone(), m.generation)).collect();
        if periodic && !peers.is_empty() {
            round += 1;
            to_pull.push(peers[round % peers.len()].clone());
        }
        for peer in to_pull {
            match replicator.pull_all(&peer).await {
                Ok(n) => tracing::debug!(from = %peer.node, entries = n, "anti-entropy pull"),
                Err(e) => tracing::info!(from = %peer.node, error = %e, "anti-entropy pull failed"),
            }
        }
    }
}

fn build_app(config: &Config, generation: u64, maps: Maps) -> Result<App, StartError> {
    let ids = IdGenerator::new(&config.node.name, generation);
    let registry = Arc::new(TicketRegistry::new(ids, config.tickets.policy(), maps));
    let mut users = config.auth.users.clone();
    if let Some(path) = &config.auth.users_file {
        users.extend(UsersFile::read(path)?);
    }
    let slo = SloSender::new(config.slo.enabled, config.slo.timeout, config.slo.max_concurrency)
        .map_err(|e| StartError::Slo(e.to_string()))?;
    Ok(App {
        base_path: config.http.base_path.clone(),
        registry,
        services: cas::services::ServiceRegistry::new(&config.services)?,
        authenticator: Arc::new(UsersFile::new(users)),
        throttle: Throttle::new(config.throttle.max_failures, config.throttle.window),
        pages: Pages::new(&config.http.base_path),
        cookie: TgcCookie {
            name: config.cookie.name.clone(),
            path: config.http.base_path.clone(),
            secure: !config.http.allow_plain_http,
        },
        slo: Arc::new(slo),
        pgt_callback: PgtCallback::new(config.proxy.callback_timeout, config.proxy.extra_ca_file.as_deref())?,
        cas2_attributes: config.protocol.cas2_attributes,
        cluster: None,
        replication: None,
        metrics: Default::default(),
    })
}

/// Removes expired tickets and sends single logout for expired TGTs (CAS 3.0 §2.3.3 allows it on expiry; Apereo
/// deployments that skip it leave applications logged in, apereo/cas PR #417). In a cluster every node sweeps, but
/// only the TGT's owner (or its successor when the owner is gone) sends the logout, so it goes out once.
async fn sweep_forever(
    app: Arc<App>,
    replicator: Option<Arc<Replicator>>,
    every: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
        let now = now_ms();
        for (id, tgt) in app.registry.sweep(now).await {
            if replicator.as_ref().is_none_or(|r| r.sends_expiry_logout(id.origin().as_ref())) {
                tracing::info!(tgt = %id.redacted(), "sso session expired");
                app.slo.notify(&app.services, &tgt);
            }
        }
        app.throttle.sweep(now);
    }
}

impl NodeHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http(s)://<addr><base_path>`, e.g. `http://127.0.0.1:8080/cas`.
    pub fn base_url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}{}", self.addr, self.base_path)
    }

    /// Reads the TLS certificate and key again (what SIGHUP does); without TLS there is nothing to do.
    pub fn reload_tls(&self) -> Result<(), crate::tls::TlsError> {
        self.tls.as_ref().map_or(Ok(()), |t| t.reload())
    }

    pub fn registry(&self) -> &Arc<TicketRegistry> {
        &self.app.registry
    }

    /// Single-logout delivery counts since start.
    pub fn slo_counts(&self) -> cas::slo::SloCounts {
        self.app.slo.counts()
    }

    /// The cluster membership, when the node runs in a cluster.
    pub fn cluster(&self) -> Option<&ClusterHandle> {
        self.cluster.as_ref()
    }

    /// The state transfer this node made when it joined: none for a single node or the first of a cluster.
    pub fn state_transfer(&self) -> Option<&StateTransfer> {
        self.state_transfer.as_ref()
    }

    /// The replication service, when the node runs in a cluster.
    pub fn replicator(&self) -> Option<&Arc<Replicator>> {
        self.replicator.as_ref()
    }

    /// Graceful stop: leaves the cluster (peers see `leaving`), stops accepting requests, lets in-flight ones
    /// finish, and stops the background tasks.
    pub async fn shutdown(mut self) {
        if let Some(cluster) = self.cluster.take() {
            cluster.leave().await;
        }
        self.stop_tasks().await;
    }

    /// Stops as a crash would look to peers: no leave message.
    pub async fn crash(mut self) {
        if let Some(cluster) = self.cluster.take() {
            cluster.stop_now().await;
        }
        self.stop_tasks().await;
    }

    async fn stop_tasks(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }

    /// Waits until the node stops (it stops only through [`NodeHandle::shutdown`] or a fatal server error).
    pub async fn wait(&mut self) {
        if let Some(server) = self.tasks.first_mut() {
            let _ = server.await;
        }
    }
}
