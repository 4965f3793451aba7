//! The validation endpoints: `/validate` (CAS 1.0), `/serviceValidate` and `/proxyValidate` (2.0),
//! `/p3/serviceValidate` and `/p3/proxyValidate` (3.0), with `format=JSON` and the `pgtUrl` proxy callback (2.0 and
//! 3.0 only).
//!
//! Every attempt consumes the ticket before anything is decided (§3.1.1): a second attempt is `INVALID_TICKET` even
//! when the first failed.

use std::time::{Duration, UNIX_EPOCH};

use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::{CasCode, CasFailure};
use super::params::{Params, Query};
use super::render::{self, AttrValue, Success};
use super::services::same_service;
use crate::clock::now_ms;
use crate::registry::Consumed;
use crate::ticket::{ExpiryPolicy, Pgt, TicketKind};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
    V1,
    V2Service,
    V2Proxy,
    V3Service,
    V3Proxy,
}

impl Endpoint {
    fn accepts_pt(self) -> bool {
        matches!(self, Self::V2Proxy | Self::V3Proxy)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Xml,
    Json,
}

pub async fn v1(State(app): State<AppState>, Query(p): Query) -> Response {
    let body = match validate(&app, &p, Endpoint::V1).await {
        Ok(s) => render::v1_success(&s.user),
        Err(f) => {
            app.metrics.rejected(f.code);
            render::v1_failure().to_owned()
        }
    };
    (StatusCode::OK, [(CONTENT_TYPE, "text/plain; charset=UTF-8")], body).into_response()
}

pub async fn v2_service(State(app): State<AppState>, Query(p): Query) -> Response {
    respond(&app, &p, Endpoint::V2Service).await
}

pub async fn v2_proxy(State(app): State<AppState>, Query(p): Query) -> Response {
    respond(&app, &p, Endpoint::V2Proxy).await
}

pub async fn v3_service(State(app): State<AppState>, Query(p): Query) -> Response {
    respond(&app, &p, Endpoint::V3Service).await
}

pub async fn v3_proxy(State(app): State<AppState>, Query(p): Query) -> Response {
    respond(&app, &p, Endpoint::V3Proxy).await
}

async fn respond(app: &AppState, p: &Params, endpoint: Endpoint) -> Response {
    let format = match p.get("format").map(str::to_ascii_uppercase).as_deref() {
        None | Some("XML") => Format::Xml,
        Some("JSON") => Format::Json,
        Some(_) => {
            let f = CasFailure::new(CasCode::InvalidRequest, "Unsupported format; use XML or JSON");
            app.metrics.rejected(f.code);
            return xml(render::xml_failure(&f));
        }
    };
    let outcome = validate(app, p, endpoint).await;
    if let Err(f) = &outcome {
        app.metrics.rejected(f.code);
    }
    match (format, outcome) {
        (Format::Xml, Ok(s)) => xml(render::xml_success(&s)),
        (Format::Xml, Err(f)) => xml(render::xml_failure(&f)),
        (Format::Json, Ok(s)) => json(render::json_success(&s)),
        (Format::Json, Err(f)) => json(render::json_failure(&f)),
    }
}

fn xml(body: String) -> Response {
    (StatusCode::OK, [(CONTENT_TYPE, "application/xml; charset=UTF-8")], body).into_response()
}

fn json(body: String) -> Response {
    (StatusCode::OK, [(CONTENT_TYPE, "application/json")], body).into_response()
}

#[tracing::instrument(skip_all, fields(endpoint = ?endpoint))]
async fn validate(app: &AppState, p: &Params, endpoint: Endpoint) -> Result<Success, CasFailure> {
    let (Some(service), Some(ticket)) = (p.get("service"), p.get("ticket")) else {
        return Err(CasFailure::new(CasCode::InvalidRequest, "'service' and 'ticket' parameters are both required"));
    };
    let now = now_ms();
    let consumed = app.registry.consume(ticket, endpoint.accepts_pt(), now).await.map_err(|e| {
        tracing::info!(error = %e, "validation refused");
        CasFailure::from_registry(&e, ticket)
    })?;
    let Consumed { kind, ticket: st, tgt } = consumed;
    if !same_service(&st.service, service) {
        return Err(CasFailure::new(
            CasCode::InvalidService,
            format!("Ticket '{ticket}' does not match the supplied service; it was issued for '{}'", st.service),
        ));
    }
    if p.flag("renew") && !st.from_new_login {
        return Err(CasFailure::new(
            CasCode::InvalidTicket,
            format!("Ticket '{ticket}' was not issued from a new login, as renew requires"),
        ));
    }
    let Some(registered) = app.services.find(&st.service) else {
        return Err(CasFailure::new(CasCode::InvalidService, "The service is no longer registered"));
    };
    if !registered.enabled {
        return Err(CasFailure::new(CasCode::UnauthorizedService, "The service is not allowed to use this CAS server"));
    }
    // Its access strategy, again at validation: a proxy ticket was issued without it, and a service's required
    // attributes may have changed since the ticket was issued.
    if !registered.admits(&tgt.principal) {
        return Err(CasFailure::new(CasCode::UnauthorizedService, "The user is not authorized for this service"));
    }
    // The service's own ticket lifetime (at most tickets.st_ttl, which the registry enforces for every ticket).
    if kind == TicketKind::St && registered.st_ttl.is_some_and(|ttl| ExpiryPolicy::older_than(st.created, ttl, now)) {
        return Err(CasFailure::new(CasCode::InvalidTicket, format!("Ticket '{ticket}' has expired")));
    }
    // CAS 1.0 has no proxying: `/validate` ignores a pgtUrl rather than calling it (a callback answering 404 would
    // otherwise turn a valid ticket into `no`).
    let pgt_url = p.get("pgtUrl").filter(|_| endpoint != Endpoint::V1);
    let pgt_iou = match pgt_url {
        Some(pgt_url) => {
            if !registered.may_proxy() {
                return Err(CasFailure::new(
                    CasCode::UnauthorizedServiceProxy,
                    "The service is not authorized to obtain proxy-granting tickets",
                ));
            }
            if !registered.may_proxy_to(pgt_url) {
                return Err(CasFailure::new(
                    CasCode::InvalidProxyCallback,
                    "The proxy callback URL is not allowed for this service",
                ));
            }
            let (pgt_id, iou) = app.registry.mint_pgt();
            if let Err(e) = app.pgt_callback.deliver(pgt_url, &iou, &pgt_id).await {
                tracing::info!(error = %e, "proxy callback failed; no PGT issued");
                return Err(CasFailure::new(CasCode::InvalidProxyCallback, format!("The proxy callback failed: {e}")));
            }
            let proxies = std::iter::once(pgt_url.to_owned()).chain(st.proxies.iter().cloned()).collect();
            let pgt = Pgt { tgt: st.tgt.clone(), proxies, created: now };
            app.registry.store_pgt(&pgt_id, pgt).await.map_err(|e| CasFailure::from_registry(&e, ticket))?;
            app.metrics.issued(TicketKind::Pgt);
            app.metrics.issued(TicketKind::PgtIou);
            Some(iou.to_string())
        }
        None => None,
    };
    let release = match endpoint {
        Endpoint::V3Service | Endpoint::V3Proxy => true,
        Endpoint::V2Service | Endpoint::V2Proxy => app.cas2_attributes,
        Endpoint::V1 => false,
    };
    let attributes = release.then(|| {
        let authenticated = UNIX_EPOCH + Duration::from_millis(tgt.created);
        let mut attrs = vec![
            (
                "authenticationDate".to_owned(),
                AttrValue::Text(humantime::format_rfc3339_seconds(authenticated).to_string()),
            ),
            ("longTermAuthenticationRequestTokenUsed".to_owned(), AttrValue::Bool(tgt.long_term)),
            ("isFromNewLogin".to_owned(), AttrValue::Bool(st.from_new_login)),
        ];
        attrs.extend(
            tgt.principal
                .attributes
                .iter()
                .filter(|(name, _)| registered.releases(name))
                .map(|(name, values)| (name.clone(), AttrValue::Many(values.clone()))),
        );
        attrs
    });
    let proxies = if kind == TicketKind::Pt { st.proxies.clone() } else { Vec::new() };
    app.metrics.validated(kind);
    Ok(Success { user: registered.username(&tgt.principal).to_owned(), attributes, pgt_iou, proxies })
}
