//! `/login`: the credential requestor (GET) and acceptor (POST), CAS 3.0 §2.1–2.2.
//!
//! No server-side HTTP session: the form carries a login ticket kept in the LT map, so the POST may land on any node.

use std::net::{IpAddr, SocketAddr};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::header::SET_COOKIE;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};

use super::pages::{LoginForm, Text, Tone, View};
use super::params::{Params, Query};
use super::services::{RegisteredService, with_query_param};
use super::{AppState, found};
use crate::auth::Throttled;
use crate::auth::{AccountProblem, AuthError};
use crate::clock::{EpochMs, now_ms};
use crate::registry::RegistryError;
use crate::ticket::{Principal, TicketId, TicketKind};
use std::sync::atomic::Ordering;

/// What `GET /login` must do, decided from the facts of the request alone.
#[derive(Debug, PartialEq, Eq)]
pub enum LoginStep {
    /// The `service` is not registered: an error page, never a redirect (§2.2.1).
    UnknownService,
    /// SSO: grant a service ticket under the existing TGT and send the browser back.
    GrantTicket,
    /// `gateway` without SSO: back to the service with no ticket (§2.1.1).
    GatewayRedirect,
    /// SSO but no service: say so.
    AlreadyLoggedIn,
    ShowForm,
}

#[derive(Debug, Clone, Copy)]
pub struct LoginFacts {
    /// `None` without a `service` parameter; otherwise whether it is registered.
    pub service_registered: Option<bool>,
    pub has_sso: bool,
    pub renew: bool,
    pub gateway: bool,
}

pub fn decide(f: LoginFacts) -> LoginStep {
    match f.service_registered {
        Some(false) => LoginStep::UnknownService,
        _ if f.renew => LoginStep::ShowForm, // renew wins over gateway (§2.1.1)
        Some(true) if f.has_sso => LoginStep::GrantTicket,
        None if f.has_sso => LoginStep::AlreadyLoggedIn,
        Some(true) if f.gateway => LoginStep::GatewayRedirect,
        _ => LoginStep::ShowForm,
    }
}

/// How the ticket goes back to the service (`method`, CAS 3.0 §2.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResponseMethod {
    Get,
    Post,
    Header,
}

impl ResponseMethod {
    fn parse(p: &Params) -> Self {
        match p.get("method").map(str::to_ascii_uppercase).as_deref() {
            Some("POST") => Self::Post,
            Some("HEADER") => Self::Header,
            _ => Self::Get,
        }
    }

    fn form_value(self) -> Option<&'static str> {
        match self {
            Self::Get => None,
            Self::Post => Some("POST"),
            Self::Header => Some("HEADER"),
        }
    }
}

pub async fn to_login(State(app): State<AppState>) -> Redirect {
    Redirect::to(&format!("{}/login", app.base_path))
}

#[tracing::instrument(skip_all, fields(service))]
pub async fn form(State(app): State<AppState>, headers: HeaderMap, Query(p): Query) -> Response {
    let now = now_ms();
    let service = p.get("service");
    let session = match app.cookie.read(&headers) {
        Some(v) => app.registry.live_tgt(&v, now).await.ok(),
        None => None,
    };
    let registered = service.and_then(|s| app.services.find(s));
    let pages = app.pages.current();
    let view = pages.view(&headers, registered.as_ref().and_then(|r| r.theme.as_deref()));
    if let (Some(s), Some(r)) = (service, &registered)
        && !r.enabled
    {
        return service_disabled(&view, s);
    }
    let facts = LoginFacts {
        service_registered: service.map(|_| registered.is_some()),
        // A service that does not allow SSO gets the form, as with renew.
        has_sso: session.is_some() && registered.as_ref().is_none_or(|r| r.sso),
        renew: p.flag("renew"),
        gateway: p.flag("gateway"),
    };
    let method = ResponseMethod::parse(&p);
    match (decide(facts), service, session) {
        (LoginStep::UnknownService, Some(s), _) => unknown_service(&view, s),
        (LoginStep::GrantTicket, Some(s), Some((tgt, session))) => {
            if registered.as_ref().is_some_and(|r| !r.admits(&session.principal)) {
                return not_authorized(&view, s);
            }
            match app.registry.grant_st(&tgt, s, false, now).await {
                Ok(st) => {
                    app.metrics.issued(TicketKind::St);
                    // `warn` (the request's, or the browser's warn cookie): single sign-on must not be transparent.
                    // HEADER is for programs, which have no one to ask.
                    if method != ResponseMethod::Header && (p.flag("warn") || app.cookie.warns(&headers)) {
                        return warn_page(&view, registered.as_deref(), s, &st, method);
                    }
                    send_ticket(&view, s, &st, method)
                }
                Err(e) => {
                    tracing::info!(error = %e, "sso grant failed; asking for credentials");
                    show_form(&app, &view, registered.as_deref(), StatusCode::OK, &p, None, "").await
                }
            }
        }
        (LoginStep::GatewayRedirect, Some(s), _) => found(s),
        (LoginStep::AlreadyLoggedIn, _, _) => view.message(
            StatusCode::OK,
            "message.logged_in_title",
            "message.logged_in",
            Tone::Ok,
            Some((&format!("{}/logout", app.base_path), "message.log_out".into())),
        ),
        _ => show_form(&app, &view, registered.as_deref(), StatusCode::OK, &p, None, "").await,
    }
}

#[tracing::instrument(skip_all, fields(client = %addr))]
pub async fn submit(
    State(app): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(query): Query,
    body: Bytes,
) -> Response {
    let now = now_ms();
    let addr = super::client_addr::client_addr(addr.ip(), &headers, &app.trusted_proxies);
    if !super::origin::same_origin(&headers) {
        tracing::warn!("login form posted from another site refused");
        let pages = app.pages.current();
        let view = pages.view(&headers, None);
        return view.message(
            StatusCode::FORBIDDEN,
            "message.cross_site_title",
            "message.cross_site",
            Tone::Error,
            None,
        );
    }
    // Credentials come from the form body only: in a query string they would land in logs and browser history.
    let form = Params::parse(&body);
    let (username, password) =
        (form.get("username").unwrap_or_default().trim(), form.get("password").unwrap_or_default());
    // The form's fields first; a service given only in the query string still counts.
    let p = form.clone().merged(query);
    let service = p.get("service");
    let registered = service.and_then(|s| app.services.find(s));
    let pages = app.pages.current();
    let view = pages.view(&headers, registered.as_ref().and_then(|r| r.theme.as_deref()));
    match (service, &registered) {
        (Some(s), None) => return unknown_service(&view, s),
        (Some(s), Some(r)) if !r.enabled => return service_disabled(&view, s),
        _ => {}
    }
    // Over the limits nothing is checked or recorded: a huge name must not sit in the throttle map.
    if username.len() > app.limits.max_username_bytes || password.len() > app.limits.max_password_bytes {
        app.metrics.logins_failed.fetch_add(1, Ordering::Relaxed);
        let msg = Text::new("login.invalid_credentials");
        return show_form(&app, &view, registered.as_deref(), StatusCode::UNAUTHORIZED, &p, Some(msg), "").await;
    }
    let lt_ok = match p.get("lt") {
        Some(lt) => app.registry.consume_lt(lt, now).await.is_ok(),
        None => false,
    };
    if !lt_ok {
        let msg = Text::new("login.expired_form");
        return show_form(&app, &view, registered.as_deref(), StatusCode::BAD_REQUEST, &p, Some(msg), username).await;
    }
    let policy = app.registry.policy();
    let remember = policy.remember_me && form.flag("rememberMe");
    let (tgt, principal) = match open_session(&app, username, password, addr, now, remember).await {
        Ok(opened) => opened,
        Err(Refused::Throttled(t)) => {
            let wait = t.retry_after.as_secs().max(1);
            let key = if t.per_address { "login.throttled_address" } else { "login.throttled_account" };
            let msg = Text::new(key).with("seconds", wait);
            return show_form(
                &app,
                &view,
                registered.as_deref(),
                StatusCode::TOO_MANY_REQUESTS,
                &p,
                Some(msg),
                username,
            )
            .await;
        }
        Err(Refused::InvalidCredentials) => {
            let msg = Text::new("login.invalid_credentials");
            return show_form(&app, &view, registered.as_deref(), StatusCode::UNAUTHORIZED, &p, Some(msg), username)
                .await;
        }
        // Not the user's fault: neither counted against the account nor shown as a wrong password.
        Err(Refused::NotChecked(e)) => return busy(&view, &e),
        Err(Refused::Account(problem)) => {
            let msg = Text::new(account_message(problem));
            return show_form(&app, &view, registered.as_deref(), StatusCode::FORBIDDEN, &p, Some(msg), username).await;
        }
        Err(Refused::SourceUnavailable) => return directory_unavailable(&view),
        Err(Refused::Unavailable(e)) => return unavailable(&view, &e),
    };
    end_replaced_session(&app, &headers).await;
    let cookie = match remember {
        true => app.cookie.set_persistent(tgt.as_str(), policy.remember_me_max_lifetime),
        false => app.cookie.set(tgt.as_str()),
    };
    // The warn cookie is set by a ticked box and cleared by an unticked one, but only sent when it changes: a
    // login answers with the one Set-Cookie most clients expect.
    let warn = match (form.flag("warn"), app.cookie.warns(&headers)) {
        (true, _) => Some(app.cookie.warn_set()),
        (false, true) => Some(app.cookie.warn_clear()),
        (false, false) => None,
    };
    let mut response = match service {
        // Logged in, but this application is not for this user: the session stays (for other applications).
        Some(s) if registered.as_ref().is_some_and(|r| !r.admits(&principal)) => not_authorized(&view, s),
        Some(s) => match app.registry.grant_st(&tgt, s, true, now).await {
            Ok(st) => {
                app.metrics.issued(TicketKind::St);
                send_ticket(&view, s, &st, ResponseMethod::parse(&p))
            }
            Err(e) => unavailable(&view, &e),
        },
        None => view.message(
            StatusCode::OK,
            "message.login_ok_title",
            "message.login_ok",
            Tone::Ok,
            Some((&format!("{}/logout", app.base_path), "message.log_out".into())),
        ),
    };
    for c in std::iter::once(cookie).chain(warn) {
        if let Ok(v) = HeaderValue::from_str(&c) {
            response.headers_mut().append(SET_COOKIE, v);
        }
    }
    response
}

/// Why [`open_session`] opened none.
pub(super) enum Refused {
    Throttled(Throttled),
    InvalidCredentials,
    /// The password could not be checked now (too many waiting).
    NotChecked(AuthError),
    /// The directory refused the account itself (locked, disabled, password expired).
    Account(AccountProblem),
    /// No source that knows the user could be asked (directory down, database unreachable).
    SourceUnavailable,
    /// The registry could not store the session.
    Unavailable(RegistryError),
}

/// A password login, the part the login form and the REST protocol share: the throttle, the password check (a
/// failure counted against the account and address, a success clearing them), the new session, the per-user
/// session cap (with single logout of the sessions it ends) and the metrics. Input limits and the caller's own
/// checks (the form's login ticket) come before it.
pub(super) async fn open_session(
    app: &AppState,
    username: &str,
    password: &str,
    addr: IpAddr,
    now: EpochMs,
    long_term: bool,
) -> Result<(TicketId, Principal), Refused> {
    if let Err(t) = app.throttle.check(username, addr, now) {
        tracing::warn!(retry_after_s = t.retry_after.as_secs(), per_address = t.per_address, "login throttled");
        app.metrics.logins_throttled.fetch_add(1, Ordering::Relaxed);
        return Err(Refused::Throttled(t));
    }
    let principal = match app.authenticator.authenticate(username, password).await {
        Ok(principal) => principal,
        Err(AuthError::InvalidCredentials | AuthError::UnknownUser) => {
            tracing::info!("login failed: invalid credentials");
            app.throttle.record_failure(username, addr, now);
            app.metrics.logins_failed.fetch_add(1, Ordering::Relaxed);
            return Err(Refused::InvalidCredentials);
        }
        // Counted like a wrong password: probing which accounts are locked is throttled too.
        Err(AuthError::Account(problem)) => {
            tracing::info!(%problem, "login refused by the directory");
            app.throttle.record_failure(username, addr, now);
            app.metrics.logins_refused_account.fetch_add(1, Ordering::Relaxed);
            return Err(Refused::Account(problem));
        }
        Err(e @ AuthError::Busy) => return Err(Refused::NotChecked(e)),
        Err(e) => {
            tracing::warn!(error = %e, "password not checked: the authentication source is unavailable");
            app.metrics.logins_unavailable.fetch_add(1, Ordering::Relaxed);
            return Err(Refused::SourceUnavailable);
        }
    };
    app.throttle.record_success(username, addr);
    let user = principal.id.clone();
    let tgt = app.registry.issue_session(principal.clone(), now, long_term).await.map_err(Refused::Unavailable)?;
    for ended in app.registry.cap_sessions(&user, &tgt, now).await {
        app.slo.notify(&app.services, &ended);
    }
    tracing::info!(tgt = %tgt.redacted(), "login succeeded");
    app.metrics.logins_ok.fetch_add(1, Ordering::Relaxed);
    app.metrics.issued(TicketKind::Tgt);
    Ok((tgt, principal))
}

/// The `warn` interstitial (CAS 3.0 §2.1.1): the ticket is issued, but the browser goes on only if its user says
/// so. Only to a registered service, as every redirect.
fn warn_page(
    view: &View<'_>,
    registered: Option<&RegisteredService>,
    service: &str,
    st: &TicketId,
    method: ResponseMethod,
) -> Response {
    let name = registered.map_or(service, |s| s.name.as_str());
    let question = Text::new("message.warn").with("service", name);
    if method == ResponseMethod::Post {
        // The ticket goes on by POST, as asked, but only when the user presses the button.
        return view.post_redirect(service, st.as_str(), Some(&question));
    }
    view.message(
        StatusCode::OK,
        "message.warn_title",
        question,
        Tone::Ok,
        Some((&with_query_param(service, "ticket", st.as_str()), "message.continue".into())),
    )
}

/// A login from a browser that still holds a session cookie (a `renew=true` login, or a second login over SSO)
/// replaces that session, as Apereo does: the old TGT ends here, with single logout to the services it reached and
/// its PGTs made useless, rather than living on beside the new cookie until its idle or maximum limit.
async fn end_replaced_session(app: &AppState, headers: &HeaderMap) {
    let Some(old) = app.cookie.read(headers) else { return };
    match app.registry.logout(&old).await {
        Ok(ended) => {
            if let Some(tgt) = &ended.tgt {
                tracing::info!(
                    services = tgt.services.len(),
                    confirmed = ended.confirmed,
                    "replaced sso session ended"
                );
                app.slo.notify(&app.services, tgt);
            }
        }
        // The new session stands; the old one still ends at its own limits.
        Err(e) => tracing::warn!(error = %e, "the replaced sso session could not be ended"),
    }
}

async fn show_form(
    app: &AppState,
    view: &View<'_>,
    registered: Option<&RegisteredService>,
    status: StatusCode,
    p: &Params,
    error: Option<Text>,
    username: &str,
) -> Response {
    let lt = match app.registry.issue_lt(now_ms()).await {
        Ok(lt) => {
            app.metrics.issued(TicketKind::Lt);
            lt
        }
        Err(e) => return unavailable(view, &e),
    };
    let form = LoginForm {
        lt: lt.as_str(),
        service: p.get("service"),
        service_name: registered.map(|s| s.name.as_str()),
        method: ResponseMethod::parse(p).form_value(),
        username,
        error,
        warn: p.flag("warn"),
        remember_me: app.registry.policy().remember_me,
    };
    view.login(status, &format!("{}/login", app.base_path), &form)
}

fn send_ticket(view: &View<'_>, service: &str, st: &TicketId, method: ResponseMethod) -> Response {
    match method {
        ResponseMethod::Get => found(&with_query_param(service, "ticket", st.as_str())),
        ResponseMethod::Post => view.post_redirect(service, st.as_str(), None),
        ResponseMethod::Header => {
            let mut r = StatusCode::OK.into_response();
            for (name, value) in [("service", service), ("ticket", st.as_str())] {
                if let Ok(v) = HeaderValue::from_str(value) {
                    r.headers_mut().insert(HeaderName::from_static(name), v);
                }
            }
            r
        }
    }
}

/// A registered service its definition disables (`enabled = false`): known, but no tickets for it.
fn service_disabled(view: &View<'_>, service: &str) -> Response {
    tracing::info!(service = %log_prefix(service), "login for a disabled service refused");
    view.message(StatusCode::FORBIDDEN, "message.service_disabled_title", "message.service_disabled", Tone::Error, None)
}

/// The user is logged in but the service's access strategy (its required attributes) does not admit them.
fn not_authorized(view: &View<'_>, service: &str) -> Response {
    tracing::info!(service = %log_prefix(service), "user not authorized for the service by its access strategy");
    view.message(StatusCode::FORBIDDEN, "message.not_authorized_title", "message.not_authorized", Tone::Error, None)
}

fn unknown_service(view: &View<'_>, service: &str) -> Response {
    tracing::info!(service = %log_prefix(service), "login for an unregistered service refused");
    view.message(StatusCode::FORBIDDEN, "message.unknown_service_title", "message.unknown_service", Tone::Error, None)
}

/// At most the first 200 bytes of a client-chosen string, for a log line that one client cannot make huge.
fn log_prefix(s: &str) -> &str {
    let mut end = s.len().min(200);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The message key the login page shows when the directory refuses the account itself.
pub(super) fn account_message(problem: AccountProblem) -> &'static str {
    match problem {
        AccountProblem::Locked => "login.account_locked",
        AccountProblem::Disabled => "login.account_disabled",
        AccountProblem::PasswordExpired => "login.password_expired",
        AccountProblem::AccountExpired => "login.account_expired",
        AccountProblem::MustChangePassword => "login.must_change_password",
    }
}

/// No source that could know the user answered: not the user's fault, nothing counted against them.
fn directory_unavailable(view: &View<'_>) -> Response {
    let mut page = view.message(
        StatusCode::SERVICE_UNAVAILABLE,
        "message.directory_down_title",
        "message.directory_down",
        Tone::Error,
        None,
    );
    page.headers_mut().insert(axum::http::header::RETRY_AFTER, HeaderValue::from_static("30"));
    page
}

/// The password check could not run now (too many waiting).
fn busy(view: &View<'_>, e: &AuthError) -> Response {
    tracing::warn!(error = %e, "password check not made");
    let mut page =
        view.message(StatusCode::SERVICE_UNAVAILABLE, "message.busy_title", "message.busy", Tone::Error, None);
    page.headers_mut().insert(axum::http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    page
}

fn unavailable(view: &View<'_>, e: &RegistryError) -> Response {
    tracing::warn!(error = %e, "login could not be completed");
    view.message(StatusCode::SERVICE_UNAVAILABLE, "message.unavailable_title", "message.unavailable", Tone::Error, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(service_registered: Option<bool>, has_sso: bool, renew: bool, gateway: bool) -> LoginFacts {
        LoginFacts { service_registered, has_sso, renew, gateway }
    }

    #[test]
    fn login_decisions_follow_the_spec() {
        assert_eq!(decide(facts(Some(false), true, false, false)), LoginStep::UnknownService);
        assert_eq!(decide(facts(Some(false), false, false, true)), LoginStep::UnknownService);
        assert_eq!(decide(facts(Some(true), true, false, false)), LoginStep::GrantTicket);
        assert_eq!(decide(facts(Some(true), true, true, false)), LoginStep::ShowForm, "renew forces credentials");
        assert_eq!(decide(facts(Some(true), false, true, true)), LoginStep::ShowForm, "renew beats gateway");
        assert_eq!(decide(facts(Some(true), false, false, true)), LoginStep::GatewayRedirect);
        assert_eq!(decide(facts(Some(true), true, false, true)), LoginStep::GrantTicket);
        assert_eq!(decide(facts(None, false, false, true)), LoginStep::ShowForm, "gateway without service");
        assert_eq!(decide(facts(None, true, false, false)), LoginStep::AlreadyLoggedIn);
    }
}
