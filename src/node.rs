//! `Node::start(Config)`: resolves the configuration, binds the HTTP listener, starts the cluster (when configured)
//! with the registry's maps, and serves the CAS and ops endpoints; hands back a [`NodeHandle`]. Only wiring: the
//! cluster's life is `cluster::Cluster`'s, the sweep is `sweeper`'s. Used by `main` and by the tests alike.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{Argon2Pool, Chain, Throttle, ThrottleLimits};
use crate::cas::outgoing_tls::ExtraRoots;
use crate::cas::{self, App, cookie::TgcCookie, pages::Pages, pgt_callback::PgtCallback, slo::SloSender};
use crate::clock::now_ms;
use crate::cluster::replication::{Readiness, Replicator, StateTransfer};
use crate::cluster::{Cluster, Identity};
use crate::config::{Config, ConfigError, Resolved};
use crate::http::{HttpLimits, Stops};
use crate::ops::{self, Access, Ops};
use crate::registry::journal::ConsumeJournal;
use crate::registry::replicated::SingleNode;
use crate::registry::{Maps, TicketRegistry};
use crate::store::Store;
use crate::sweeper::{self, SendsExpiryLogout};
use crate::ticket::IdGenerator;
use crate::tls::TlsReloader;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("proxy callback client: {0}")]
    Callback(#[from] cas::pgt_callback::CallbackSetupError),
    #[error("tls.client.extra_ca_file: {0}")]
    Trust(#[from] cas::outgoing_tls::TrustError),
    #[error("single logout client: {0}")]
    Slo(String),
    #[error("lab.consume_journal: cannot open {0}")]
    Journal(String),
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("authentication source: {0}")]
    Auth(String),
    #[error("storage: {0}")]
    Store(#[from] crate::store::StoreError),
}

pub struct Node;

/// A running node. Dropping it leaves the server running; call [`NodeHandle::shutdown`] to stop it.
pub struct NodeHandle {
    addr: SocketAddr,
    base_path: String,
    app: Arc<App>,
    stops: Stops,
    /// The accept loop and the sweeper.
    tasks: TaskTracker,
    /// One task per HTTP connection: drained on a graceful stop.
    connections: TaskTracker,
    drain_timeout: Duration,
    /// Cancelled when the accept loop ends, whatever the reason.
    server_down: CancellationToken,
    cluster: Option<Cluster>,
    tls: Option<Arc<TlsReloader>>,
    /// The journal, closed (synced and unlocked) when the node stops.
    store: Option<Arc<Store>>,
}

impl Node {
    /// Starts a node and returns once it is ready. In a cluster, the node first copies every map from a ready peer
    /// (state transfer) and only then reports `ready` and answers CAS requests (invariant 5); meanwhile `/ready`
    /// says what it waits for and CAS endpoints answer 503.
    pub async fn start(config: Config) -> Result<NodeHandle, StartError> {
        let Resolved { config, services, service_source, pages, users, cluster: plan, storage } = config.resolve()?;
        let services =
            cas::services::LiveServices::new(services, service_source.dir.is_some().then_some(service_source));
        // Read back before anything else runs: the maps start from it, and it must not depend on a peer.
        let journal = match &storage {
            Some(s) => {
                let started = std::time::Instant::now();
                let (store, recovered) = Store::open(&s.dir, &s.key, s.durability)?;
                tracing::info!(path = %store.path().display(), records = recovered.records.len(),
                    cut_bytes = recovered.cut_bytes, took_ms = started.elapsed().as_millis() as u64,
                    "journal read back");
                Some((store, recovered.records))
            }
            None => None,
        };
        let store = journal.as_ref().map(|(s, _)| s.clone());
        let generation = now_ms();
        // Every node of a cluster must recognise every node's ticket ids; a single node's ids live in its memory
        // only, so a key of its own boot does, unless its journal keeps sessions over restarts.
        let id_mac_key = match (&plan, &storage) {
            (Some(plan), _) => plan.key.derive("casd ticket id mac v1"),
            (None, Some(s)) => s.key.derive_for("ticket id mac v1"),
            (None, None) => rand::random(),
        };
        let ids = IdGenerator::new(&config.node.name, generation, &id_mac_key);
        let tls = match &config.http.tls {
            Some(t) => Some(Arc::new(TlsReloader::new(&t.cert_file, &t.key_file)?)),
            None => None,
        };
        let listen = config.http.listen;
        let listener = crate::accept::bind_patiently(|| tokio::net::TcpListener::bind(listen))
            .await
            .map_err(|source| StartError::Bind { addr: listen, source })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind { addr: listen, source })?;
        let (cluster, maps) = match plan {
            Some(plan) => {
                let scheme = if tls.is_some() { "https" } else { "http" };
                let advertised = config.cluster.as_ref().and_then(|c| c.http_advertise.clone());
                let http_url = advertised.unwrap_or_else(|| format!("{scheme}://{addr}{}", config.http.base_path));
                let identity = Identity { node: config.node.name.clone(), generation, http_url };
                let expiry = config.tickets.policy();
                let (cluster, maps) = Cluster::start(&plan.settings, plan.key, identity, |replicas| {
                    Maps::replicated_with(replicas, &expiry, plan.min_copies, journal)
                })
                .await?;
                (Some(cluster), maps)
            }
            // A single node keeps its maps in memory only, unless it has a journal.
            None if journal.is_some() => {
                (None, Maps::replicated_with(Arc::new(SingleNode), &config.tickets.policy(), 1, journal))
            }
            None => (None, Maps::local()),
        };
        let ready: Box<dyn Fn() -> bool + Send + Sync> = match &cluster {
            Some(c) => {
                let readiness = c.readiness();
                Box::new(move || *readiness.borrow() == Readiness::Ready)
            }
            None => Box::new(|| true),
        };
        let app = Arc::new(build_app(&config, ids, maps, (services, pages), users, ready)?);
        let access = match (&config.ops.token, config.ops.public || config.is_demo) {
            (Some(token), _) => Access::Token(token.0.clone()),
            (None, true) => Access::Anyone,
            (None, false) => Access::Nobody,
        };
        let ops = Ops::new(app.clone(), cluster.as_ref(), access);
        let router = cas::router(app.clone(), ops::router(Arc::new(ops)));

        let stops = Stops { graceful: CancellationToken::new(), abort: CancellationToken::new() };
        let (tasks, connections, server_down) = (TaskTracker::new(), TaskTracker::new(), CancellationToken::new());
        let limits = HttpLimits {
            max_connections: config.http.max_connections,
            max_connections_per_address: config.http.max_connections_per_address,
            trusted_proxies: config.throttle.trusted_proxies.clone(),
            header_timeout: config.http.header_timeout,
            request_timeout: config.http.request_timeout,
        };
        let serving = crate::http::serve(listener, router, tls.clone(), limits, stops.clone(), connections.clone());
        let down = server_down.clone().drop_guard();
        tasks.spawn(async move {
            serving.await;
            drop(down);
        });
        let sends_logout: SendsExpiryLogout = match &cluster {
            Some(c) => {
                let replicator = c.replicator().clone();
                Box::new(move |issuer| replicator.sends_expiry_logout(issuer))
            }
            None => Box::new(|_| true),
        };
        if storage.is_some() {
            // Off the start path (1M sessions take a moment): the cap is exact again within it.
            let (registry, node) = (app.registry.clone(), config.node.name.clone());
            tasks.spawn_blocking(move || {
                let restored = registry.rebuild_session_counts(&node, crate::clock::now_ms());
                tracing::info!(sessions = restored, "per-user session counts rebuilt from the journal");
            });
        }
        tasks.spawn(sweeper::run(app.clone(), sends_logout, config.tickets.sweep_interval, stops.graceful.clone()));
        if app.services.source().is_some() {
            tasks.spawn(watch_services(app.clone(), config.service_registry.watch_interval, stops.graceful.clone()));
        }
        // Meanwhile the ops endpoints answer (`/ready` says what the join waits for) and CAS requests get 503.
        if let Some(c) = &cluster {
            c.wait_ready().await;
        }
        tracing::info!(%addr, base_path = %config.http.base_path, node = %config.node.name, "casd node started");
        Ok(NodeHandle {
            addr,
            base_path: config.http.base_path.clone(),
            app,
            stops,
            tasks,
            connections,
            drain_timeout: config.http.drain_timeout,
            server_down,
            cluster,
            tls,
            store,
        })
    }
}

fn build_app(
    config: &Config,
    ids: IdGenerator,
    maps: Maps,
    (services, pages): (cas::services::LiveServices, Pages),
    users: Vec<crate::auth::UserRecord>,
    ready: Box<dyn Fn() -> bool + Send + Sync>,
) -> Result<App, StartError> {
    let logout_quorum = config.cluster.as_ref().map_or(1, |c| c.logout_quorum());
    let journal = match &config.lab.consume_journal {
        Some(path) => Some(
            ConsumeJournal::open(path, &config.node.name)
                .map_err(|e| StartError::Journal(format!("{}: {e}", path.display())))?,
        ),
        None => None,
    };
    let registry = Arc::new(
        TicketRegistry::with_session_cap(ids, config.tickets.policy(), maps, config.limits.max_sessions_per_user)
            .with_logout_quorum(logout_quorum)
            .with_journal(journal),
    );
    if config.proxy.extra_ca_file.is_some() {
        tracing::warn!(
            "proxy.extra_ca_file is read as tls.client.extra_ca_file, its new name, and now also applies to single logout"
        );
    }
    let roots = ExtraRoots::load(config.outgoing_extra_ca_file())?;
    let metrics = crate::cas::metrics::Metrics::default();
    let argon2 = Argon2Pool::per_core(config.auth.max_waiting_checks);
    let chain =
        Chain::build(&config.auth.sources, users, argon2, metrics.ldap_operations.clone()).map_err(StartError::Auth)?;
    let authenticator = Arc::new(chain);
    let slo = SloSender::new(config.slo.enabled, config.slo.timeout, config.slo.max_concurrency, &roots)
        .map_err(|e| StartError::Slo(e.to_string()))?;
    Ok(App {
        base_path: config.http.base_path.clone(),
        registry,
        services,
        authenticator,
        limits: config.limits.clone(),
        ready,
        throttle: Throttle::new(ThrottleLimits {
            max_failures: config.throttle.max_failures,
            max_failures_per_address: config.throttle.max_failures_per_address,
            window: config.throttle.window,
            max_tracked: config.throttle.max_tracked,
        }),
        trusted_proxies: config.throttle.trusted_proxies.clone(),
        pages: cas::pages::LivePages::new(pages, &config.http.base_path, &config.ui),
        cookie: TgcCookie {
            name: config.cookie.name.clone(),
            path: config.http.base_path.clone(),
            secure: !config.http.allow_plain_http,
        },
        slo: Arc::new(slo),
        pgt_callback: PgtCallback::new(config.proxy.callback_timeout, &roots)?,
        cas2_attributes: config.protocol.cas2_attributes,
        metrics,
    })
}

/// Reloads the services whenever a file in their directory changes (polled every `interval`). A bad file is
/// logged once per change, naming file, key and reason; the registry in force stays until the files are fixed.
async fn watch_services(app: Arc<cas::App>, interval: std::time::Duration, stop: CancellationToken) {
    let Some(source) = app.services.source() else { return };
    let mut seen = source.fingerprint();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let now = source.fingerprint();
        if now == seen {
            continue;
        }
        seen = now;
        match app.services.reload() {
            Ok(n) => tracing::info!(services = n.unwrap_or(0), "service files changed; registry reloaded"),
            Err(e) => tracing::error!(error = %e, "service files changed but not loaded; the previous registry stays"),
        }
    }
}

/// Syncs and closes the journal once nothing writes to it any more (HTTP drained, replication stopped), and unlocks
/// its directory.
async fn close(store: Option<Arc<Store>>) {
    if let Some(store) = store {
        let _ = tokio::task::spawn_blocking(move || store.close()).await;
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

    /// Reads the service definition files again (what SIGHUP does, beside the TLS certificate). On an error the
    /// registry in force stays.
    pub fn reload_services(&self) -> Result<Option<usize>, cas::service_files::ServiceError> {
        let r = self.app.services.reload();
        match &r {
            Ok(Some(n)) => tracing::info!(services = n, "service registry reloaded"),
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "service registry not reloaded; the previous one stays in force"),
        }
        r
    }

    /// Reads the themes again (what SIGHUP does); on an error the pages in force stay.
    pub fn reload_pages(&self) -> Result<bool, cas::pages::ThemeError> {
        let r = self.app.pages.reload();
        match &r {
            Ok(true) => tracing::info!("themes reloaded"),
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e, "themes not reloaded; the previous ones stay in force"),
        }
        r
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

    /// The cluster, when the node runs in one.
    pub fn cluster(&self) -> Option<&Cluster> {
        self.cluster.as_ref()
    }

    /// The state transfer this node made when it joined: none for a single node or the first of a cluster.
    pub fn state_transfer(&self) -> Option<&StateTransfer> {
        self.cluster.as_ref()?.state_transfer()
    }

    /// The replication service, when the node runs in a cluster.
    pub fn replicator(&self) -> Option<&Arc<Replicator>> {
        self.cluster.as_ref().map(Cluster::replicator)
    }

    /// Graceful stop: tells the peers it is leaving (while still serving), stops accepting requests, lets those in
    /// flight finish (at most `http.drain_timeout`), then stops the cluster and every background task.
    pub async fn shutdown(mut self) {
        if let Some(cluster) = &self.cluster {
            cluster.announce_leaving().await;
        }
        let (cluster, store) = (self.cluster.take(), self.store.take());
        self.stop_serving().await;
        if let Some(cluster) = cluster {
            cluster.stop().await;
        }
        close(store).await;
    }

    /// Stops as a crash would look to peers: no leave message, the cluster gone before the HTTP side.
    pub async fn crash(mut self) {
        if let Some(cluster) = self.cluster.take() {
            cluster.stop().await;
        }
        let store = self.store.take();
        self.stop_serving().await;
        close(store).await;
    }

    async fn stop_serving(self) {
        self.stops.graceful.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        self.connections.close();
        if tokio::time::timeout(self.drain_timeout, self.connections.wait()).await.is_err() {
            tracing::warn!(
                open = self.connections.len(),
                "requests still in flight after the drain timeout; dropping their connections"
            );
            self.stops.abort.cancel();
            self.connections.wait().await;
        }
    }

    /// Waits until the HTTP server stops (only through [`NodeHandle::shutdown`] or a fatal server error).
    pub async fn wait(&self) {
        self.server_down.cancelled().await;
    }
}
