//! The CAS protocol layer: HTTP endpoints, response rendering, the login page, the service registry, single logout
//! and the proxy callback client. Knows tickets and the [`TicketRegistry`], never the cluster: the operators'
//! endpoints live in `crate::ops`.

pub mod client_addr;
pub mod cookie;
pub mod error;
pub mod login;
mod logout;
pub mod metrics;
mod origin;
pub mod outgoing_tls;
pub mod pages;
pub mod params;
pub mod pgt_callback;
mod proxy;
pub mod render;
mod rest;
mod router;
mod saml;
pub mod service_files;
pub mod services;
pub mod slo;
mod validate;

use std::sync::Arc;

pub use router::router;

use crate::auth::{Authenticator, Throttle};
use crate::registry::TicketRegistry;

/// Everything a request handler may use.
pub struct App {
    pub base_path: String,
    pub registry: Arc<TicketRegistry>,
    pub services: services::LiveServices,
    pub authenticator: Arc<dyn Authenticator>,
    pub throttle: Throttle,
    pub pages: pages::LivePages,
    pub cookie: cookie::TgcCookie,
    pub slo: Arc<slo::SloSender>,
    pub pgt_callback: pgt_callback::PgtCallback,
    /// Release attributes on the CAS 2.0 validation endpoints too.
    pub cas2_attributes: bool,
    /// What one request may carry.
    pub limits: Limits,
    /// Proxies whose `X-Forwarded-For` names the client (throttling).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Whether this node may answer CAS requests: a clustered node that has not its copy of the maps yet would
    /// call live tickets unknown.
    pub ready: Box<dyn Fn() -> bool + Send + Sync>,
    pub metrics: metrics::Metrics,
}

pub type AppState = Arc<App>;

/// Bounds on what one client can make a node hold: over them a request is refused before anything is stored.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// A longer service URL matches no service (so it is never redirected to, stored in a ticket, or logged whole).
    pub max_service_url_bytes: usize,
    /// A longer username is refused at login without a password check or a throttling record.
    pub max_username_bytes: usize,
    /// A longer password is refused at login without a password check.
    pub max_password_bytes: usize,
    /// SSO sessions one user may hold opened on one node; a new login past it ends the user's oldest session.
    pub max_sessions_per_user: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_service_url_bytes: 4096,
            max_username_bytes: 256,
            max_password_bytes: 1024,
            max_sessions_per_user: 64,
        }
    }
}

/// A `302 Found` redirect: what CAS clients and the reference server use (axum's `Redirect::to` is a 303).
pub(crate) fn found(location: &str) -> axum::response::Response {
    use axum::response::IntoResponse;
    match axum::http::HeaderValue::from_str(location) {
        Ok(v) => (axum::http::StatusCode::FOUND, [(axum::http::header::LOCATION, v)]).into_response(),
        Err(_) => axum::http::StatusCode::BAD_REQUEST.into_response(),
    }
}
