//! The REST protocol (Apereo's `/v1/tickets`): CAS as an authentication engine for scripts and back ends, with the
//! same password checks, throttling and service registry as the login form.
//!
//! - `POST /v1/tickets` (form: `username`, `password`, optional `service`): `201 Created`, `Location:
//!   <base>/v1/tickets/TGT-…`; `401` for wrong credentials, `400` for a missing field or an unregistered service,
//!   `415` for a body that is not a form, `429` when throttled, `503` when the password cannot be checked now.
//! - `POST /v1/tickets/TGT-…` (form: `service`): `200` with the service ticket as `text/plain`; `404` for a TGT
//!   that is unknown, expired or ended.
//! - `GET /v1/tickets/TGT-…`: `200` while the TGT lives, `404` otherwise.
//! - `DELETE /v1/tickets/TGT-…`: ends the session with single logout, as `/logout` does: `200` with the TGT id,
//!   `202` when the logout quorum has not confirmed it yet, `404` for a TGT this node does not know.
//!
//! The caller holds the TGT: no cookie is set, and a TGT id in a URL is as secret as a cookie (never logged here).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::header::{CONTENT_TYPE, HOST, LOCATION, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::login::{Refused, open_session};
use super::params::Params;
use crate::clock::now_ms;
use crate::registry::RegistryError;
use crate::ticket::TicketKind;

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (status, [(CONTENT_TYPE, "text/plain; charset=UTF-8")], body.into()).into_response()
}

/// The form in the body, or why it is refused: 415 for another media type, 403 from another site.
fn form(headers: &HeaderMap, body: &Bytes) -> Result<Params, (StatusCode, &'static str)> {
    let media = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let essence = media.split(';').next().unwrap_or_default().trim();
    if !essence.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        return Err((StatusCode::UNSUPPORTED_MEDIA_TYPE, "send an application/x-www-form-urlencoded form\n"));
    }
    if !super::origin::same_origin(headers) {
        tracing::warn!("REST request from another web site refused");
        return Err((StatusCode::FORBIDDEN, "refused: sent from another web site\n"));
    }
    Ok(Params::parse(body))
}

fn registry_error(e: &RegistryError) -> Response {
    match e {
        RegistryError::Map(_) => {
            tracing::warn!(error = %e, "REST request could not reach the registry");
            text(StatusCode::SERVICE_UNAVAILABLE, "the ticket registry is unavailable; try again\n")
        }
        _ => text(StatusCode::NOT_FOUND, "ticket-granting ticket not found\n"),
    }
}

/// `POST /v1/tickets`: a password login that hands the TGT to the caller.
#[tracing::instrument(skip_all, fields(client = %addr))]
pub async fn create_tgt(
    State(app): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let now = now_ms();
    let addr = super::client_addr::client_addr(addr.ip(), &headers, &app.trusted_proxies);
    let p = match form(&headers, &body) {
        Ok(p) => p,
        Err((status, why)) => return text(status, why),
    };
    let (Some(username), Some(password)) = (p.get("username").map(str::trim), p.get("password")) else {
        return text(StatusCode::BAD_REQUEST, "'username' and 'password' are both required\n");
    };
    if username.is_empty() || password.is_empty() {
        return text(StatusCode::BAD_REQUEST, "'username' and 'password' are both required\n");
    }
    if p.get("service").is_some_and(|s| app.services.find(s).is_none()) {
        return text(StatusCode::BAD_REQUEST, "the service is not registered\n");
    }
    if username.len() > app.limits.max_username_bytes || password.len() > app.limits.max_password_bytes {
        app.metrics.logins_failed.fetch_add(1, Ordering::Relaxed);
        return text(StatusCode::UNAUTHORIZED, "invalid credentials\n");
    }
    let tgt = match open_session(&app, username, password, addr, now, false).await {
        Ok((tgt, _)) => tgt,
        Err(Refused::Throttled(t)) => {
            let wait = t.retry_after.as_secs().max(1);
            let mut r = text(StatusCode::TOO_MANY_REQUESTS, format!("too many failed logins; retry in {wait} s\n"));
            if let Ok(v) = HeaderValue::from_str(&wait.to_string()) {
                r.headers_mut().insert(RETRY_AFTER, v);
            }
            return r;
        }
        Err(Refused::InvalidCredentials) => return text(StatusCode::UNAUTHORIZED, "invalid credentials\n"),
        Err(Refused::NotChecked(e)) => {
            tracing::warn!(error = %e, "password check not made");
            let mut r = text(StatusCode::SERVICE_UNAVAILABLE, "busy; try again\n");
            r.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("1"));
            return r;
        }
        Err(Refused::Account(problem)) => return text(StatusCode::UNAUTHORIZED, format!("{problem}\n")),
        Err(Refused::SourceUnavailable) => {
            let mut r = text(StatusCode::SERVICE_UNAVAILABLE, "the user directory is unavailable; try again\n");
            r.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("30"));
            return r;
        }
        Err(Refused::Unavailable(e)) => return registry_error(&e),
    };
    let scheme = if app.cookie.secure { "https" } else { "http" };
    let host = headers.get(HOST).and_then(|v| v.to_str().ok()).unwrap_or("localhost");
    let location = format!("{scheme}://{host}{}/v1/tickets/{}", app.base_path, tgt.as_str());
    let body = format!(
        "<!DOCTYPE html><html><head><title>201 Created</title></head><body><h1>TGT Created</h1><form action=\"{}\" \
         method=\"POST\">Service:<input type=\"text\" name=\"service\" value=\"\"><input type=\"submit\" \
         value=\"Submit\"></form></body></html>",
        super::render::xml_escape(&location)
    );
    let mut r = (StatusCode::CREATED, [(CONTENT_TYPE, "text/html; charset=UTF-8")], body).into_response();
    match HeaderValue::from_str(&location) {
        Ok(v) => {
            r.headers_mut().insert(LOCATION, v);
            r
        }
        Err(_) => text(StatusCode::BAD_REQUEST, "the Host header cannot make a URL\n"),
    }
}

/// `POST /v1/tickets/{tgt}`: a service ticket under the caller's TGT.
#[tracing::instrument(skip_all)]
pub async fn create_st(
    State(app): State<AppState>,
    Path(tgt): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let now = now_ms();
    let p = match form(&headers, &body) {
        Ok(p) => p,
        Err((status, why)) => return text(status, why),
    };
    let Some(service) = p.get("service") else {
        return text(StatusCode::BAD_REQUEST, "'service' is required\n");
    };
    let Some(registered) = app.services.find(service) else {
        return text(StatusCode::BAD_REQUEST, "the service is not registered\n");
    };
    let (id, session) = match app.registry.live_tgt(&tgt, now).await {
        Ok(live) => live,
        Err(e) => return registry_error(&e),
    };
    // The same access strategy as the login form: a disabled service, or a user it does not admit, gets no ticket.
    if !registered.enabled || !registered.admits(&session.principal) {
        return text(StatusCode::FORBIDDEN, "not authorized for this service\n");
    }
    match app.registry.grant_st(&id, service, false, now).await {
        Ok(st) => {
            app.metrics.issued(TicketKind::St);
            text(StatusCode::OK, st.as_str().to_owned())
        }
        Err(e) => registry_error(&e),
    }
}

/// `GET /v1/tickets/{tgt}`: whether the TGT still lives.
pub async fn status(State(app): State<AppState>, Path(tgt): Path<String>) -> Response {
    match app.registry.live_tgt(&tgt, now_ms()).await {
        Ok((id, _)) => text(StatusCode::OK, id.as_str().to_owned()),
        Err(e) => registry_error(&e),
    }
}

/// `DELETE /v1/tickets/{tgt}`: the REST logout, with single logout.
#[tracing::instrument(skip_all)]
pub async fn destroy(State(app): State<AppState>, Path(tgt): Path<String>) -> Response {
    match app.registry.logout(&tgt).await {
        Ok(logout) => match &logout.tgt {
            Some(session) => {
                tracing::info!(services = session.services.len(), confirmed = logout.confirmed, "REST logout");
                app.slo.notify(&app.services, session);
                let status = if logout.confirmed { StatusCode::OK } else { StatusCode::ACCEPTED };
                text(status, tgt)
            }
            None => text(StatusCode::NOT_FOUND, "ticket-granting ticket not found\n"),
        },
        Err(e) => registry_error(&e),
    }
}
