//! Every route in one place.

use axum::Router;
use axum::http::HeaderValue;
use axum::http::header::{CACHE_CONTROL, EXPIRES, PRAGMA};
use axum::response::{Redirect, Response};
use axum::routing::{get, post};

use super::{AppState, login, logout, proxy, saml, validate};

/// The CAS endpoints under `base_path`, with `extra` (the ops endpoints) beside them.
pub fn router(app: AppState, extra: Router) -> Router {
    let base = app.base_path.clone();
    let cas = Router::new()
        .route("/", get(login::to_login))
        .route("/login", get(login::form).post(login::submit))
        .route("/logout", get(logout::logout).post(logout::logout))
        .route("/validate", get(validate::v1).post(validate::v1))
        .route("/serviceValidate", get(validate::v2_service).post(validate::v2_service))
        .route("/proxyValidate", get(validate::v2_proxy).post(validate::v2_proxy))
        .route("/p3/serviceValidate", get(validate::v3_service).post(validate::v3_service))
        .route("/p3/proxyValidate", get(validate::v3_proxy).post(validate::v3_proxy))
        .route("/proxy", get(proxy::proxy))
        .route("/samlValidate", post(saml::validate))
        .with_state(app)
        .merge(extra)
        .layer(axum::middleware::map_response(no_store));
    let login_path = format!("{base}/login");
    Router::new().nest(&base, cas).route("/", get(move || async move { Redirect::to(&login_path) }))
}

/// Tickets and forms must never be cached (CAS 3.0 Appendix B).
async fn no_store(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(PRAGMA, HeaderValue::from_static("no-cache"));
    h.insert(EXPIRES, HeaderValue::from_static("0"));
    response
}
