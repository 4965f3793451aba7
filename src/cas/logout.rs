//! `/logout` (CAS 3.0 §2.3): ends the SSO session, clears the cookie, starts single logout, and redirects only to a
//! registered service.

use axum::extract::State;
use axum::http::header::SET_COOKIE;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;

use super::pages::Tone;
use super::params::Query;
use super::{AppState, found};

#[tracing::instrument(skip_all)]
pub async fn logout(State(app): State<AppState>, headers: HeaderMap, Query(p): Query) -> Response {
    if let Some(value) = app.cookie.read(&headers) {
        match app.registry.destroy_tgt(&value).await {
            Ok(Some(tgt)) => {
                tracing::info!(services = tgt.services.len(), "sso session ended");
                app.slo.notify(&app.services, &tgt);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "logout could not reach the registry");
                return app.pages.message(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Logout incomplete",
                    "Your session could not be ended everywhere. Please try again in a moment.",
                    Tone::Error,
                    None,
                );
            }
        }
    }
    let registered = |key| p.get(key).filter(|s| app.services.find(s).is_some());
    let mut response = match registered("service") {
        Some(service) => found(service),
        None => app.pages.message(
            StatusCode::OK,
            "Logout successful",
            "You have been logged out of the single sign-on service. For security, close your browser.",
            Tone::Ok,
            // CAS 2.0's `url`: shown as a link, and only when registered.
            registered("url").map(|u| (u, "Back to the application")),
        ),
    };
    if let Ok(v) = HeaderValue::from_str(&app.cookie.clear()) {
        response.headers_mut().append(SET_COOKIE, v);
    }
    response
}
