//! `/logout` (CAS 3.0 §2.3): ends the SSO session, clears the cookie, starts single logout (back-channel POSTs, and
//! front-channel frames in the page for services that asked for them), and redirects only to a registered service.
//! A logout that the logout quorum (`cluster.logout_quorum`, a majority by default) did not confirm answers 202 with
//! a page that says so: the cookie is cleared all the same, and the node keeps telling the peers that missed it
//! (issue 13: a logout acknowledged by a cut-off node was undone at the heal).

use axum::extract::State;
use axum::http::header::SET_COOKIE;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;

use super::pages::Tone;
use super::params::Query;
use super::{AppState, found};

#[tracing::instrument(skip_all)]
pub async fn logout(State(app): State<AppState>, headers: HeaderMap, Query(p): Query) -> Response {
    let target = p.get("service").or(p.get("url")).and_then(|s| app.services.find(s));
    let pages = app.pages.current();
    let view = pages.view(&headers, target.as_ref().and_then(|r| r.theme.as_deref()));
    let mut confirmed = true;
    let mut front = Vec::new();
    if let Some(value) = app.cookie.read(&headers) {
        match app.registry.logout(&value).await {
            Ok(logout) => {
                if let Some(tgt) = &logout.tgt {
                    tracing::info!(services = tgt.services.len(), confirmed = logout.confirmed, "sso session ended");
                    app.slo.notify(&app.services, tgt);
                    front = super::slo::front_channel(&app.services, tgt);
                }
                confirmed = logout.confirmed;
            }
            Err(e) => {
                tracing::warn!(error = %e, "logout could not reach the registry");
                return view.message(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "message.logout_incomplete_title",
                    "message.logout_incomplete",
                    Tone::Error,
                    None,
                );
            }
        }
    }
    let registered = |key| p.get(key).filter(|s| app.services.find(s).is_some());
    let mut response = match registered("service") {
        // Not confirmed: the user is told rather than sent on as if it were done. Front-channel logouts need this
        // page loaded, so a redirect waits for them behind a link.
        Some(service) if confirmed && front.is_empty() => found(service),
        _ if !confirmed => {
            tracing::warn!("logout not confirmed by the logout quorum; the peers that missed it are retried");
            view.message_loading(
                StatusCode::ACCEPTED,
                "message.logout_unconfirmed_title",
                "message.logout_unconfirmed",
                Tone::Error,
                registered("service").or(registered("url")).map(|u| (u, "message.back_to_application".into())),
                &front,
            )
        }
        _ => view.message_loading(
            StatusCode::OK,
            "message.logout_ok_title",
            "message.logout_ok",
            Tone::Ok,
            // CAS 2.0's `url` (or a `service` waiting for the front-channel logouts): a link, and only when registered.
            registered("service").or(registered("url")).map(|u| (u, "message.back_to_application".into())),
            &front,
        ),
    };
    if let Ok(v) = HeaderValue::from_str(&app.cookie.clear()) {
        response.headers_mut().append(SET_COOKIE, v);
    }
    response
}
