//! `/login`: the credential requestor (GET) and acceptor (POST), CAS 3.0 §2.1–2.2.
//!
//! No server-side HTTP session: the form carries a login ticket kept in the LT map, so the POST may land on any node.

use std::net::{IpAddr, SocketAddr};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::header::SET_COOKIE;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};

use super::pages::{LoginForm, Tone};
use super::params::{Params, Query};
use super::services::with_query_param;
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
    if let (Some(s), Some(r)) = (service, &registered)
        && !r.enabled
    {
        return service_disabled(&app, s);
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
        (LoginStep::UnknownService, Some(s), _) => unknown_service(&app, s),
        (LoginStep::GrantTicket, Some(s), Some((tgt, session))) => {
            if registered.as_ref().is_some_and(|r| !r.admits(&session.principal)) {
                return not_authorized(&app, s);
            }
            match app.registry.grant_st(&tgt, s, false, now).await {
                Ok(st) => {
                    app.metrics.issued(TicketKind::St);
                    // `warn` (the request's, or the browser's warn cookie): single sign-on must not be transparent.
                    if method == ResponseMethod::Get && (p.flag("warn") || app.cookie.warns(&headers)) {
                        return warn_page(&app, s, &st);
                    }
                    send_ticket(&app, s, &st, method)
                }
                Err(e) => {
                    tracing::info!(error = %e, "sso grant failed; asking for credentials");
                    show_form(&app, StatusCode::OK, &p, None, "").await
                }
            }
        }
        (LoginStep::GatewayRedirect, Some(s), _) => found(s),
        (LoginStep::AlreadyLoggedIn, _, _) => app.pages.message(
            StatusCode::OK,
            "You are logged in",
            "You have an active single sign-on session. Applications that use this service will let you in without \
             asking for your password.",
            Tone::Ok,
            Some((&format!("{}/logout", app.base_path), "Log out")),
        ),
        _ => show_form(&app, StatusCode::OK, &p, None, "").await,
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
        return app.pages.message(
            StatusCode::FORBIDDEN,
            "Login refused",
            "This login form was sent from another web site. Open the login page of this service and try again.",
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
    match (service, &registered) {
        (Some(s), None) => return unknown_service(&app, s),
        (Some(s), Some(r)) if !r.enabled => return service_disabled(&app, s),
        _ => {}
    }
    // Over the limits nothing is checked or recorded: a huge name must not sit in the throttle map.
    if username.len() > app.limits.max_username_bytes || password.len() > app.limits.max_password_bytes {
        app.metrics.logins_failed.fetch_add(1, Ordering::Relaxed);
        let msg = "The username or password you entered is incorrect.";
        return show_form(&app, StatusCode::UNAUTHORIZED, &p, Some(msg), "").await;
    }
    let lt_ok = match p.get("lt") {
        Some(lt) => app.registry.consume_lt(lt, now).await.is_ok(),
        None => false,
    };
    if !lt_ok {
        let msg = "Your login form had expired or was already used. Please enter your credentials again.";
        return show_form(&app, StatusCode::BAD_REQUEST, &p, Some(msg), username).await;
    }
    let policy = app.registry.policy();
    let remember = policy.remember_me && form.flag("rememberMe");
    let (tgt, principal) = match open_session(&app, username, password, addr, now, remember).await {
        Ok(opened) => opened,
        Err(Refused::Throttled(t)) => {
            let wait = t.retry_after.as_secs().max(1);
            let msg = if t.per_address {
                format!("Too many failed logins from your network. Please try again in {wait} seconds.")
            } else {
                format!("Too many failed attempts for this account. It is locked for {wait} more seconds.")
            };
            return show_form(&app, StatusCode::TOO_MANY_REQUESTS, &p, Some(&msg), username).await;
        }
        Err(Refused::InvalidCredentials) => {
            let msg = "The username or password you entered is incorrect.";
            return show_form(&app, StatusCode::UNAUTHORIZED, &p, Some(msg), username).await;
        }
        // Not the user's fault: neither counted against the account nor shown as a wrong password.
        Err(Refused::NotChecked(e)) => return busy(&app, &e),
        Err(Refused::Account(problem)) => {
            return show_form(&app, StatusCode::FORBIDDEN, &p, Some(account_message(problem)), username).await;
        }
        Err(Refused::SourceUnavailable) => return directory_unavailable(&app),
        Err(Refused::Unavailable(e)) => return unavailable(&app, &e),
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
        Some(s) if registered.as_ref().is_some_and(|r| !r.admits(&principal)) => not_authorized(&app, s),
        Some(s) => match app.registry.grant_st(&tgt, s, true, now).await {
            Ok(st) => {
                app.metrics.issued(TicketKind::St);
                send_ticket(&app, s, &st, ResponseMethod::parse(&p))
            }
            Err(e) => unavailable(&app, &e),
        },
        None => app.pages.message(
            StatusCode::OK,
            "Log in successful",
            "You are now logged in. For security, log out and close your browser when you are done.",
            Tone::Ok,
            Some((&format!("{}/logout", app.base_path), "Log out")),
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
fn warn_page(app: &AppState, service: &str, st: &TicketId) -> Response {
    let registered = app.services.find(service);
    let name = registered.as_ref().map_or(service, |s| s.name.as_str());
    app.pages.message(
        StatusCode::OK,
        "Continue to the application?",
        &format!(
            "You asked to be told before you are logged in to another application. You are about to log in to \
             {name}."
        ),
        Tone::Ok,
        Some((&with_query_param(service, "ticket", st.as_str()), "Continue")),
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

async fn show_form(app: &AppState, status: StatusCode, p: &Params, error: Option<&str>, username: &str) -> Response {
    let lt = match app.registry.issue_lt(now_ms()).await {
        Ok(lt) => {
            app.metrics.issued(TicketKind::Lt);
            lt
        }
        Err(e) => return unavailable(app, &e),
    };
    let service = p.get("service");
    let registered = service.and_then(|s| app.services.find(s));
    let service_name = registered.as_ref().map(|s| s.name.clone());
    let form = LoginForm {
        lt: lt.as_str(),
        service,
        service_name: service_name.as_deref(),
        method: ResponseMethod::parse(p).form_value(),
        username,
        error,
        warn: p.flag("warn"),
        remember_me: app.registry.policy().remember_me,
    };
    app.pages.login(status, &format!("{}/login", app.base_path), &form)
}

fn send_ticket(app: &AppState, service: &str, st: &TicketId, method: ResponseMethod) -> Response {
    match method {
        ResponseMethod::Get => found(&with_query_param(service, "ticket", st.as_str())),
        ResponseMethod::Post => app.pages.post_redirect(service, st.as_str()),
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
fn service_disabled(app: &AppState, service: &str) -> Response {
    tracing::info!(service = %log_prefix(service), "login for a disabled service refused");
    app.pages.message(
        StatusCode::FORBIDDEN,
        "Application not authorized",
        "The application you came from is not allowed to use this single sign-on service at the moment. Please \
         contact the application's administrator.",
        Tone::Error,
        None,
    )
}

/// The user is logged in but the service's access strategy (its required attributes) does not admit them.
fn not_authorized(app: &AppState, service: &str) -> Response {
    tracing::info!(service = %log_prefix(service), "user not authorized for the service by its access strategy");
    app.pages.message(
        StatusCode::FORBIDDEN,
        "Not authorized for this application",
        "You are logged in, but your account is not authorized to use this application. If you think it should \
         be, contact the application's administrator.",
        Tone::Error,
        None,
    )
}

fn unknown_service(app: &AppState, service: &str) -> Response {
    tracing::info!(service = %log_prefix(service), "login for an unregistered service refused");
    app.pages.message(
        StatusCode::FORBIDDEN,
        "Application not authorized",
        "The application you came from is not registered to use this single sign-on service, so you will not be \
         sent back to it. Please contact the application's administrator.",
        Tone::Error,
        None,
    )
}

/// At most the first 200 bytes of a client-chosen string, for a log line that one client cannot make huge.
fn log_prefix(s: &str) -> &str {
    let mut end = s.len().min(200);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// What the login page says when the directory refuses the account itself.
pub(super) fn account_message(problem: AccountProblem) -> &'static str {
    match problem {
        AccountProblem::Locked => "Your account is locked. Please contact your help desk.",
        AccountProblem::Disabled => "Your account is disabled. Please contact your help desk.",
        AccountProblem::PasswordExpired => "Your password has expired. Please change it before you log in.",
        AccountProblem::AccountExpired => "Your account has expired. Please contact your help desk.",
        AccountProblem::MustChangePassword => "You must change your password before you can log in.",
    }
}

/// No source that could know the user answered: not the user's fault, nothing counted against them.
fn directory_unavailable(app: &AppState) -> Response {
    let mut page = app.pages.message(
        StatusCode::SERVICE_UNAVAILABLE,
        "Service unavailable",
        "The sign-on service cannot reach the user directory right now, so it could not check your password. \
         Please try again in a few minutes.",
        Tone::Error,
        None,
    );
    page.headers_mut().insert(axum::http::header::RETRY_AFTER, HeaderValue::from_static("30"));
    page
}

/// The password check could not run now (too many waiting).
fn busy(app: &AppState, e: &AuthError) -> Response {
    tracing::warn!(error = %e, "password check not made");
    let mut page = app.pages.message(
        StatusCode::SERVICE_UNAVAILABLE,
        "Busy",
        "The sign-on service is busy and could not check your password. Please try again in a moment.",
        Tone::Error,
        None,
    );
    page.headers_mut().insert(axum::http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    page
}

fn unavailable(app: &AppState, e: &RegistryError) -> Response {
    tracing::warn!(error = %e, "login could not be completed");
    app.pages.message(
        StatusCode::SERVICE_UNAVAILABLE,
        "Temporarily unavailable",
        "The sign-on service cannot complete your login right now. Please try again in a moment.",
        Tone::Error,
        None,
    )
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
