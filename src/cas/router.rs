//! Every route in one place.

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::HeaderValue;
use axum::http::StatusCode;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, EXPIRES, PRAGMA, REFERRER_POLICY, RETRY_AFTER, STRICT_TRANSPORT_SECURITY,
    X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::middleware::Next;
use axum::response::IntoResponse;
use axum::response::{Redirect, Response};
use axum::routing::{get, post};

use super::{AppState, login, logout, proxy, rest, saml, validate};

/// The largest login form body: username, password and service at their [limits] defaults, with room to spare.
const LOGIN_FORM_BYTES: usize = 64 << 10;

/// The CAS endpoints under `base_path`, with `extra` (the ops endpoints) beside them.
pub fn router(app: AppState, extra: Router) -> Router {
    let base = app.base_path.clone();
    let cas = Router::new()
        .route("/", get(login::to_login))
        // A login form is a few fields within [limits]: a larger body is refused (413) before it is read whole.
        .route("/login", get(login::form).post(login::submit).layer(DefaultBodyLimit::max(LOGIN_FORM_BYTES)))
        .route("/logout", get(logout::logout).post(logout::logout))
        .route("/theme/{name}/logo", get(theme_logo))
        .route("/validate", get(validate::v1).post(validate::v1))
        .route("/serviceValidate", get(validate::v2_service).post(validate::v2_service))
        .route("/proxyValidate", get(validate::v2_proxy).post(validate::v2_proxy))
        .route("/p3/serviceValidate", get(validate::v3_service).post(validate::v3_service))
        .route("/p3/proxyValidate", get(validate::v3_proxy).post(validate::v3_proxy))
        .route("/proxy", get(proxy::proxy))
        .route("/samlValidate", post(saml::validate))
        .route("/v1/tickets", post(rest::create_tgt).layer(DefaultBodyLimit::max(LOGIN_FORM_BYTES)))
        .route(
            "/v1/tickets/{tgt}",
            post(rest::create_st)
                .get(rest::status)
                .delete(rest::destroy)
                .layer(DefaultBodyLimit::max(LOGIN_FORM_BYTES)),
        )
        .layer(axum::middleware::from_fn_with_state(app.clone(), only_when_ready))
        .with_state(app.clone())
        .merge(extra)
        .layer(axum::middleware::map_response_with_state(app, security_headers));
    let login_path = format!("{base}/login");
    Router::new().nest(&base, cas).route("/", get(move || async move { Redirect::to(&login_path) }))
}

/// A node still joining its cluster answers CAS requests with 503, so that a load balancer tries another node.
async fn only_when_ready(State(app): State<AppState>, request: Request, next: Next) -> Response {
    if (app.ready)() {
        return next.run(request).await;
    }
    (StatusCode::SERVICE_UNAVAILABLE, [(RETRY_AFTER, "1")], "this node is joining its cluster; try another node\n")
        .into_response()
}

/// No page of this server may be framed (clickjacking of the login form), sniffed into another type, or leak its
/// URL (which may carry a ticket) to other sites; over https, browsers are told to stay on https.
async fn security_headers(State(app): State<AppState>, mut response: Response) -> Response {
    let h = response.headers_mut();
    h.reserve(8);
    h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static("frame-ancestors 'none'"));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // Not no-referrer: browsers then send `Origin: null` with the login form's POST, which the CSRF check refuses.
    h.insert(REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    if app.cookie.secure {
        h.insert(STRICT_TRANSPORT_SECURITY, HeaderValue::from_static("max-age=31536000"));
    }
    // Tickets and forms must never be cached (CAS 3.0 Appendix B). In the same layer as the headers above: each
    // layer costs every request a boxed future.
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(PRAGMA, HeaderValue::from_static("no-cache"));
    h.insert(EXPIRES, HeaderValue::from_static("0"));
    response
}

/// A theme's logo (`<themes_dir>/<name>/logo.svg` or `logo.png`), read at start.
async fn theme_logo(
    axum::extract::State(app): axum::extract::State<AppState>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> axum::response::Response {
    app.pages.current().logo(&name)
}
