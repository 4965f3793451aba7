//! `Node::start(Config)`: wires the registry, the protocol layer and the background tasks, binds the listener and
//! hands back a [`NodeHandle`]. Used by `main` and by the tests alike.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::auth::{Throttle, UsersFile};
use crate::cas::{self, App, cookie::TgcCookie, pages::Pages, pgt_callback::PgtCallback, slo::SloSender};
use crate::cluster::ClusterHandle;
use crate::config::{Config, ConfigError};
use crate::registry::{Maps, TicketRegistry};
use crate::ticket::{IdGenerator, now_ms};

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
}

impl Node {
    pub async fn start(config: Config) -> Result<NodeHandle, StartError> {
        let listener = tokio::net::TcpListener::bind(config.http.listen)
            .await
            .map_err(|source| StartError::Bind { addr: config.http.listen, source })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind { addr: config.http.listen, source })?;
        let cluster = match (&config.cluster, config.cluster_key()?) {
            (Some(c), Some(key)) => {
                let http =
                    c.http_advertise.clone().unwrap_or_else(|| format!("http://{addr}{}", config.http.base_path));
                Some(crate::cluster::start(c, &key, &config.node.name, http).await?)
            }
            _ => None,
        };
        let mut app = build_app(&config)?;
        app.cluster = cluster.as_ref().map(ClusterHandle::status);
        let app = Arc::new(app);
        let (stop, stopped) = watch::channel(false);

        let router = cas::router(app.clone()).into_make_service_with_connect_info::<SocketAddr>();
        let mut on_stop = stopped.clone();
        let server = tokio::spawn(async move {
            let shutdown = async move {
                let _ = on_stop.wait_for(|s| *s).await;
            };
            if let Err(e) = axum::serve(listener, router).with_graceful_shutdown(shutdown).await {
                tracing::error!(error = %e, "http server failed");
            }
        });
        let sweeper = tokio::spawn(sweep_forever(app.clone(), config.tickets.sweep_interval, stopped));
        tracing::info!(%addr, base_path = %config.http.base_path, node = %config.node.name, "casd node started");
        Ok(NodeHandle {
            addr,
            base_path: config.http.base_path.clone(),
            app,
            stop,
            tasks: vec![server, sweeper],
            cluster,
        })
    }
}

fn build_app(config: &Config) -> Result<App, StartError> {
    let generation = now_ms();
    let ids = IdGenerator::new(&config.node.name, generation);
    let registry = Arc::new(TicketRegistry::new(ids, config.tickets.policy(), Maps::local()));
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
    })
}

/// Removes expired tickets and sends single logout for expired TGTs (CAS 3.0 §2.3.3 allows it on expiry; Apereo
/// deployments that skip it leave applications logged in, apereo/cas PR #417).
async fn sweep_forever(app: Arc<App>, every: std::time::Duration, mut stopped: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
        let now = now_ms();
        for (id, tgt) in app.registry.sweep(now).await {
            tracing::info!(tgt = %id.redacted(), "sso session expired");
            app.slo.notify(&app.services, &tgt);
        }
        app.throttle.sweep(now);
    }
}

impl NodeHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr><base_path>`, e.g. `http://127.0.0.1:8080/cas`.
    pub fn base_url(&self) -> String {
        format!("http://{}{}", self.addr, self.base_path)
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
