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
    access: Access,
}

/// Who may read the endpoints that show the node's insides (`/metrics`, `/cluster`, `/cluster.html`).
pub enum Access {
    Anyone,
    /// `Authorization: Bearer <token>`.
    Token(String),
    /// Nobody: they answer 404 (no token configured and not a demo).
    Nobody,
}

impl Access {
    fn allows(&self, headers: &axum::http::HeaderMap) -> bool {
        let bearer =
            || headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ").map(str::trim);
        match self {
            Access::Anyone => true,
            Access::Token(token) => bearer().is_some_and(|given| same_secret(given, token)),
            Access::Nobody => false,
        }
    }
}

/// Compares in time independent of where the strings differ (their lengths aside).
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
    pub fn new(cas: Arc<App>, cluster: Option<&Cluster>, access: Access) -> Self {
        let pages = cluster_page::Pages::new(&cas.base_path);
        let cluster = cluster.map(|c| ClusterView {
            status: c.status(),
            readiness: c.readiness(),
            replicator: c.replicator().clone(),
        });
        Self { cas, cluster, pages, access }
    }
}

/// The ops routes, relative to the base path.
pub fn router(ops: Arc<Ops>) -> Router {
    let guarded = Router::new()
        .route("/metrics", get(metrics::metrics))
        .route("/cluster", get(cluster_page::json))
        .route("/cluster.html", get(cluster_page::html))
        .layer(axum::middleware::from_fn_with_state(ops.clone(), guard));
    Router::new().route("/health", get(health)).route("/ready", get(ready)).merge(guarded).with_state(ops)
}

async fn guard(State(ops): State<Arc<Ops>>, request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if ops.access.allows(request.headers()) {
        return next.run(request).await;
    }
    match ops.access {
        Access::Nobody => {
            (StatusCode::NOT_FOUND, "not served here: set ops.token (or ops.public for a demo)\n").into_response()
        }
        _ => (StatusCode::UNAUTHORIZED, [(axum::http::header::WWW_AUTHENTICATE, "Bearer")], "ops token required\n")
            .into_response(),
    }
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
