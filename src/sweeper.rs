//! The sweeper: removes expired tickets and sends single logout for expired TGTs (CAS 3.0 §2.3.3 allows it on
//! expiry; Apereo deployments that skip it leave applications logged in, apereo/cas PR #417). In a cluster every
//! node sweeps, but only the TGT's owner (or its successor when the owner is gone) sends the logout, so it goes out
//! once.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::cas::App;
use crate::clock::now_ms;

/// Decides whether this node sends the single logout of an expired TGT issued by (node, generation); `None` is an
/// id that names no issuer.
pub type SendsExpiryLogout = Box<dyn Fn(Option<(&str, u64)>) -> bool + Send + Sync>;

pub async fn run(app: Arc<App>, sends_logout: SendsExpiryLogout, every: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let now = now_ms();
        for (id, tgt) in app.registry.sweep(now).await {
            let origin = id.origin();
            if sends_logout(origin.as_ref().map(|o| (o.node.as_str(), o.generation))) {
                tracing::info!(tgt = %id.redacted(), "sso session expired");
                app.slo.notify(&app.services, &tgt);
            }
        }
        app.throttle.sweep(now);
    }
}
