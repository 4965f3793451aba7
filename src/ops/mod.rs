//! The operators' endpoints, beside the CAS protocol and outside it: `/metrics` (Prometheus text), `/health` (the
//! process answers), `/ready` (this node holds its copy of the maps and is not leaving), and `/cluster`,
//! `/cluster.html` (membership as this node sees it). The only module that knows both `cas` and `cluster`.

mod cluster_page;
mod metrics;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::watch;

use crate::cas::App;
use crate::cluster::membership::MemberStatus;
use crate::cluster::replication::{Readiness, ReplicationCounts, Replicator};
use crate::cluster::{Cluster, ClusterStatus};

/// What the ops endpoints read.
pub struct Ops {
    pub(crate) cas: Arc<App>,
    /// `None` for a single node.
    pub(crate) cluster: Option<ClusterView>,
    pages: cluster_page::Pages,
}

/// The cluster as the ops endpoints see it.
pub(crate) struct ClusterView {
    pub(crate) status: watch::Receiver<ClusterStatus>,
    readiness: watch::Receiver<Readiness>,
    replicator: Arc<Replicator>,
}

impl ClusterView {
    pub(crate) fn replication(&self) -> ReplicationCounts {
        self.replicator.counts()
    }
}

impl Ops {
    pub fn new(cas: Arc<App>, cluster: Option<&Cluster>) -> Self {
        let pages = cluster_page::Pages::new(&cas.base_path);
        let cluster = cluster.map(|c| ClusterView {
            status: c.status(),
            readiness: c.readiness(),
            replicator: c.replicator().clone(),
        });
        Self { cas, cluster, pages }
    }
}

/// The ops routes, relative to the base path.
pub fn router(ops: Arc<Ops>) -> Router {
    Router::new()
        .route("/metrics", get(metrics::metrics))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/cluster", get(cluster_page::json))
        .route("/cluster.html", get(cluster_page::html))
        .with_state(ops)
}

/// Liveness: the process serves HTTP.
async fn health() -> &'static str {
    "ok\n"
}

/// Readiness: a single node is ready when it serves; a clustered one once it holds its copy of the maps, until it
/// starts leaving. A joining node says what it waits for.
async fn ready(State(ops): State<Arc<Ops>>) -> Response {
    let Some(c) = &ops.cluster else { return (StatusCode::OK, "ready\n").into_response() };
    if let Readiness::Joining { reason } = &*c.readiness.borrow() {
        let why = reason.as_deref().unwrap_or("copying the maps from a ready peer");
        return (StatusCode::SERVICE_UNAVAILABLE, format!("joining: {why}\n")).into_response();
    }
    // Ready from the join on; the gossiped status can lag it by a round, so only `leaving` is read from there.
    match c.status.borrow().own_status() {
        MemberStatus::Leaving => (StatusCode::SERVICE_UNAVAILABLE, "leaving\n").into_response(),
        _ => (StatusCode::OK, "ready\n").into_response(),
    }
}
