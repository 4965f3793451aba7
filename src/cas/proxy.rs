//! `/proxy` (CAS 2.0 §2.7): trades a PGT for a proxy ticket to a registered target service.

use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::{CasCode, CasFailure};
use super::params::Query;
use super::render;
use crate::clock::now_ms;
use crate::registry::RegistryError;

#[tracing::instrument(skip_all)]
pub async fn proxy(State(app): State<AppState>, Query(p): Query) -> Response {
    let body = match grant(&app, p.get("pgt"), p.get("targetService")).await {
        Ok(pt) => {
            app.metrics.issued(crate::ticket::TicketKind::Pt);
            render::proxy_success(&pt)
        }
        Err(f) => {
            app.metrics.rejected(f.code);
            render::proxy_failure(&f)
        }
    };
    (StatusCode::OK, [(CONTENT_TYPE, "application/xml; charset=UTF-8")], body).into_response()
}

async fn grant(app: &AppState, pgt: Option<&str>, target: Option<&str>) -> Result<String, CasFailure> {
    let (Some(pgt), Some(target)) = (pgt, target) else {
        return Err(CasFailure::new(CasCode::InvalidRequest, "'pgt' and 'targetService' parameters are both required"));
    };
    match app.services.find(target) {
        None => return Err(CasFailure::new(CasCode::UnauthorizedService, "The target service is not registered")),
        Some(r) if !r.enabled => {
            return Err(CasFailure::new(CasCode::UnauthorizedService, "The target service is not allowed to use CAS"));
        }
        Some(_) => {}
    }
    match app.registry.grant_pt(pgt, target, now_ms()).await {
        Ok(pt) => Ok(pt.to_string()),
        Err(e @ RegistryError::Map(_)) => Err(CasFailure::from_registry(&e, pgt)),
        Err(e) => {
            tracing::info!(error = %e, "proxy ticket refused");
            Err(CasFailure::new(
                CasCode::InvalidTicket,
                format!("PGT '{}' is not valid", pgt.chars().take(64).collect::<String>()),
            ))
        }
    }
}
