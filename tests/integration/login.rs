//! `/login`: the form, password login, SSO, renew, gateway, methods, cookies, throttling and unregistered services.

use crate::support::*;

const APP: &str = "http://127.0.0.1:9/app";
const OTHER_APP: &str = "http://localhost:9/other?x=1#frag";

/// A password login sets a HttpOnly cookie on the CAS path and redirects to the service with an ST.
#[tokio::test]
async fn password_login_redirects_with_a_service_ticket_and_sets_the_tgc() {
    let node = start(|_| {}).await;
    let mut b = Browser::new(&node);
    let page = b.login_with(Some(APP), "", USER, PASSWORD).await;
    let st = ticket_of(&page);
    assert!(st.starts_with("ST-") && st.len() <= 64, "{st}");
    assert!(page.location.as_deref().unwrap_or_default().starts_with("http://127.0.0.1:9/app?ticket=ST-"));
    let cookie = page.set_cookie.iter().find(|c| c.starts_with("TGC=TGT-")).expect("TGC set");
    assert!(cookie.contains("HttpOnly") && cookie.contains("Path=/cas"), "{cookie}");
    assert!(!cookie.contains("Secure"), "the demo config allows plain http: {cookie}");
    node.shutdown().await;
}

/// Unless the config allows plain http, the TGC is `Secure`.
#[tokio::test]
async fn tgc_is_secure_unless_plain_http_is_allowed() {
    let node = start(|c| {
        c.http.allow_plain_http = false;
        c.http.tls_terminated_upstream = true;
    })
    .await;
    let mut b = Browser::new(&node);
    let page = b.login_with(Some(APP), "", USER, PASSWORD).await;
    let cookie = page.set_cookie.iter().find(|c| c.starts_with("TGC=")).expect("TGC set");
    assert!(cookie.contains("; Secure") && cookie.contains("HttpOnly"), "{cookie}");
    node.shutdown().await;
}

/// A second service gets a ticket from the TGC alone, without a form; the ticket is not "from new login".
#[tokio::test]
async fn sso_gives_a_second_service_a_ticket_without_a_password() {
    let node = start(|_| {}).await;
    let mut b = Browser::new(&node);
    b.login(APP).await;
    let page = b.get(&format!("/login?service={}", enc(OTHER_APP))).await;
    let st = ticket_of(&page);
    assert_eq!(
        page.location.as_deref(),
        Some(format!("http://localhost:9/other?x=1&ticket={st}#frag").as_str()),
        "ticket appended to the query, fragment kept last"
    );
    let body = call(&node, "/p3/serviceValidate", &[("service", OTHER_APP), ("ticket", &st)]).await;
    assert_eq!(user_of(&body).as_deref(), Some(USER), "{body}");
    assert!(body.contains("<cas:isFromNewLogin>false</cas:isFromNewLogin>"), "{body}");
    node.shutdown().await;
}

/// `renew` shows the form even with a TGC; the resulting ticket passes a `renew` validation.
#[tokio::test]
async fn renew_forces_credentials() {
    let node = start(|_| {}).await;
    let mut b = Browser::new(&node);
    b.login(APP).await;
    let page = b.get(&format!("/login?service={}&renew=true", enc(APP))).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("name=\"password\""), "form shown");
    let page = b.login_with(Some(APP), "&renew=true", USER, PASSWORD).await;
    let st = ticket_of(&page);
    let body = call(&node, "/serviceValidate", &[("service", APP), ("ticket", &st), ("renew", "true")]).await;
    assert_eq!(user_of(&body).as_deref(), Some(USER), "{body}");
    node.shutdown().await;
}

/// `gateway` without SSO goes back to the service with no ticket; with SSO it carries one.
#[tokio::test]
async fn gateway_never_shows_a_form() {
    let node = start(|_| {}).await;
    let mut b = Browser::new(&node);
    let page = b.get(&format!("/login?service={}&gateway=true", enc(APP))).await;
    assert_eq!(page.status, 302);
    assert_eq!(page.location.as_deref(), Some(APP));
    b.login(APP).await;
    let page = b.get(&format!("/login?service={}&gateway=true", enc(APP))).await;
    assert!(ticket_of(&page).starts_with("ST-"));
    node.shutdown().await;
}

/// A wrong password re-shows the form with a clear message and a fresh login ticket; no cookie is set.
#[tokio::test]
async fn wrong_password_shows_the_form_again_without_a_cookie() {
    let node = start(|_| {}).await;
    let mut b = Browser::new(&node);
    let page = b.login_with(Some(APP), "", USER, "wrong").await;
    assert_eq!(page.status, 401);
    assert!(page.body.contains("username or password you entered is incorrect"), "{}", page.body);
    assert!(page.set_cookie.is_empty());
    assert!(b.tgc.is_none());
    lt_of(&page.body);
    let page = b.login_with(Some(APP), "", "nobody", PASSWORD).await;
    assert_eq!(page.status, 401, "unknown user: same answer as a wrong password");
    node.shutdown().await;
}

/// A login ticket works once: replaying a captured form POST fails.
#[tokio::test]
async fn login_ticket_is_single_use() {
    let node = start(|_| {}).await;
    let mut b = Browser::new(&node);
    let form = b.get(&format!("/login?service={}", enc(APP))).await;
    let lt = lt_of(&form.body);
    let fields = [("username", USER), ("password", PASSWORD), ("lt", lt.as_str()), ("service", APP)];
    let first = b.post_form("/login", &fields).await;
    assert_eq!(first.status, 302);
    let mut other = Browser::new(&node);
    let replay = other.post_form("/login", &fields).await;
    assert_eq!(replay.status, 400);
    assert!(replay.body.contains("expired or was already used"), "{}", replay.body);
    assert!(other.tgc.is_none());
    let missing = other.post_form("/login", &[("username", USER), ("password", PASSWORD)]).await;
    assert_eq!(missing.status, 400, "a POST without a login ticket fails");
    node.shutdown().await;
}

/// After `max_failures` wrong passwords the account is locked for that address, even for the right password.
#[tokio::test]
async fn repeated_failures_lock_the_user_out() {
    let node = start(|c| c.throttle.max_failures = 3).await;
    let mut b = Browser::new(&node);
    for _ in 0..3 {
        assert_eq!(b.login_with(Some(APP), "", USER, "wrong").await.status, 401);
    }
    let page = b.login_with(Some(APP), "", USER, PASSWORD).await;
    assert_eq!(page.status, 429);
    assert!(page.body.contains("locked"), "{}", page.body);
    assert!(b.tgc.is_none());
    node.shutdown().await;
}

/// Forty good logins in a row from one address are not throttled (the default is loose for honest traffic).
#[tokio::test]
async fn many_successful_logins_from_one_address_are_not_throttled() {
    let node = start(|_| {}).await;
    for _ in 0..40 {
        let mut b = Browser::new(&node);
        b.login(APP).await;
    }
    node.shutdown().await;
}

/// An unregistered service gets an error page and never a redirect, with or without SSO, GET or POST.
#[tokio::test]
async fn unregistered_service_is_never_redirected_to() {
    let node = start(|_| {}).await;
    let evil = "http://unregistered.invalid/";
    let mut b = Browser::new(&node);
    let page = b.get(&format!("/login?service={}&gateway=true", enc(evil))).await;
    assert_eq!(page.status, 403);
    assert!(page.location.is_none());
    assert!(page.body.contains("not authorized"), "{}", page.body);
    b.login(APP).await;
    let page = b.get(&format!("/login?service={}", enc(evil))).await;
    assert_eq!((page.status, page.location), (403, None));
    let form = Browser::new(&node).get("/login").await;
    let lt = lt_of(&form.body);
    let page =
        b.post_form("/login", &[("username", USER), ("password", PASSWORD), ("lt", &lt), ("service", evil)]).await;
    assert_eq!((page.status, page.location), (403, None));
    node.shutdown().await;
}

/// `method=POST` answers with a form posting the ticket; `method=HEADER` with headers.
#[tokio::test]
async fn response_methods_post_and_header() {
    let node = start(|_| {}).await;
    let mut b = Browser::new(&node);
    let page = b.login_with(Some(APP), "&method=POST", USER, PASSWORD).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains(&format!("action=\"{APP}\"")), "{}", page.body);
    assert!(regex::Regex::new(r#"name="ticket" value="ST-[A-Za-z0-9-]+""#).expect("re").is_match(&page.body));
    let response = http()
        .get(format!("{}/login?service={}&method=HEADER", node.base_url(), enc(APP)))
        .header("Cookie", format!("TGC={}", b.tgc.clone().expect("tgc")))
        .send()
        .await
        .expect("request");
    let st = response.headers().get("ticket").and_then(|v| v.to_str().ok()).expect("ticket header").to_owned();
    assert!(st.starts_with("ST-"));
    node.shutdown().await;
}

/// Without a service, login shows a "logged in" page; the pages are not cacheable.
#[tokio::test]
async fn login_without_service_and_cache_headers() {
    let node = start(|_| {}).await;
    let mut b = Browser::new(&node);
    let page = b.login_with(None, "", USER, PASSWORD).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Log in successful"));
    let response = http().get(format!("{}/login", node.base_url())).send().await.expect("request");
    assert_eq!(response.headers().get("cache-control").and_then(|v| v.to_str().ok()), Some("no-store"));
    let page = b.get("/login").await;
    assert!(page.body.contains("You are logged in"), "{}", page.body);
    node.shutdown().await;
}

/// Markup in parameters is escaped on the login page.
#[tokio::test]
async fn login_page_escapes_what_the_client_sends() {
    let node = start(|_| {}).await;
    let service = enc("http://localhost:9/\"><script>x</script>");
    let raw = http().get(format!("{}/login?service={service}", node.base_url())).send().await.expect("request");
    assert_eq!(raw.status().as_u16(), 200);
    let body = raw.text().await.expect("body");
    assert!(body.contains("name=\"service\""), "the service is carried in the form: {body}");
    assert!(!body.contains("<script>x") && !body.contains("\"><"), "{body}");
    node.shutdown().await;
}

/// `warn`: a login with the box ticked sets the warn cookie, and single sign-on then stops at a page naming the
/// application, whose Continue link carries a ticket that validates. `warn=true` on one request warns once; a
/// login without the box clears the cookie.
#[tokio::test]
async fn warn_makes_single_sign_on_stop_at_a_page_naming_the_application() {
    let node = start(|_| {}).await;
    let base = node.base_url();
    let mut b = Browser::new(&node);
    let form = b.get(&format!("/login?service={}", enc(APP))).await;
    assert!(form.body.contains("name=\"warn\""), "the login form offers the box");
    let lt = lt_of(&form.body);
    let page = b
        .post_form(
            "/login",
            &[("username", USER), ("password", PASSWORD), ("lt", &lt), ("service", APP), ("warn", "true")],
        )
        .await;
    assert_eq!(page.status, 302, "the login itself is not interrupted");
    assert!(
        page.set_cookie.iter().any(|c| c.starts_with("CASPRIVACY=true;") && c.contains("HttpOnly")),
        "{:?}",
        page.set_cookie
    );
    let tgc = b.tgc.clone().expect("session");
    let sso = |cookies: String, extra: &'static str| {
        let url = format!("{base}/login?service={}{extra}", enc(APP));
        async move { http().get(url).header("Cookie", cookies).send().await.expect("sso") }
    };
    let warned = sso(format!("TGC={tgc}; CASPRIVACY=true"), "").await;
    assert_eq!(warned.status().as_u16(), 200, "no redirect while warned");
    let body = unescape_html(&warned.text().await.expect("body"));
    assert!(body.contains("You are about to log in to"), "{body}");
    let ticket =
        regex::Regex::new(r"ticket=(ST-[A-Za-z0-9-]+)").expect("re").captures(&body).expect("a link")[1].to_owned();
    let xml = call(&node, "/serviceValidate", &[("service", APP), ("ticket", &ticket)]).await;
    assert_eq!(user_of(&xml).as_deref(), Some(USER), "{xml}");

    // method=POST: the same question, and the ticket goes on by a form the user submits (no auto-submit script).
    let posted = sso(format!("TGC={tgc}; CASPRIVACY=true"), "&method=POST").await;
    assert_eq!(posted.status().as_u16(), 200);
    let body = unescape_html(&posted.text().await.expect("body"));
    assert!(body.contains("You are about to log in to") && body.contains("method=\"post\""), "{body}");
    assert!(!body.contains(".submit()"), "not sent before the user says so: {body}");
    let ticket =
        regex::Regex::new(r#"name="ticket" value="(ST-[A-Za-z0-9-]+)""#).expect("re").captures(&body).expect("a form")
            [1]
        .to_owned();
    let xml = call(&node, "/serviceValidate", &[("service", APP), ("ticket", &ticket)]).await;
    assert_eq!(user_of(&xml).as_deref(), Some(USER), "{xml}");

    assert_eq!(sso(format!("TGC={tgc}"), "").await.status().as_u16(), 302, "no cookie, no warning");
    assert_eq!(sso(format!("TGC={tgc}"), "&warn=true").await.status().as_u16(), 200, "warn on the request");
    // A login without the box clears the cookie the browser holds; a browser without one gets one Set-Cookie.
    let page = b.login_with(Some(APP), "&renew=true", USER, PASSWORD).await;
    assert_eq!(page.set_cookie.len(), 1, "only the TGC: {:?}", page.set_cookie);
    let form = http().get(format!("{base}/login?service={}&renew=true", enc(APP))).send().await.expect("form");
    let lt = lt_of(&form.text().await.expect("form"));
    let fields = [("username", USER), ("password", PASSWORD), ("lt", lt.as_str()), ("service", APP)];
    let r = http().post(format!("{base}/login")).header("Cookie", "CASPRIVACY=true").form(&fields).send().await;
    let cleared = r
        .expect("login")
        .headers()
        .get_all("set-cookie")
        .iter()
        .any(|v| v.to_str().is_ok_and(|c| c.starts_with("CASPRIVACY=;") && c.contains("Max-Age=0")));
    assert!(cleared, "the warn cookie is cleared");
    node.shutdown().await;
}

/// Remember-me, where `tickets.remember_me` allows it: the box gives a persistent cookie (it survives a browser
/// restart, a new cookie jar holding only persistent cookies) and a session with its own limits, past the usual
/// lifetime, released as `longTermAuthenticationRequestTokenUsed`. Not offered by default, and then ignored.
#[tokio::test]
async fn remember_me_outlives_the_browser_and_the_usual_lifetime() {
    let node = start(|c| {
        c.tickets.remember_me = true;
        c.tickets.tgt_max_lifetime = std::time::Duration::from_secs(2);
    })
    .await;
    let login = |remember: bool| {
        let mut b = Browser::new(&node);
        async move {
            let form = b.get(&format!("/login?service={}", enc(APP))).await;
            assert!(form.body.contains("name=\"rememberMe\""), "offered");
            let lt = lt_of(&form.body);
            let mut fields = vec![("username", USER), ("password", PASSWORD), ("lt", lt.as_str()), ("service", APP)];
            if remember {
                fields.push(("rememberMe", "true"));
            }
            let page = b.post_form("/login", &fields).await;
            (b, page)
        }
    };
    let (kept, page) = login(true).await;
    let tgc_cookie = page.set_cookie.iter().find(|c| c.starts_with("TGC=")).expect("TGC").clone();
    assert!(tgc_cookie.contains("Max-Age=1209600") && tgc_cookie.contains("HttpOnly"), "{tgc_cookie}");
    let xml = call(&node, "/p3/serviceValidate", &[("service", APP), ("ticket", &ticket_of(&page))]).await;
    assert!(xml.contains("<cas:longTermAuthenticationRequestTokenUsed>true<"), "{xml}");
    let (plain, page) = login(false).await;
    let plain_cookie = page.set_cookie.iter().find(|c| c.starts_with("TGC=")).expect("TGC").clone();
    assert!(!plain_cookie.contains("Max-Age"), "a session cookie: {plain_cookie}");
    let xml = call(&node, "/p3/serviceValidate", &[("service", APP), ("ticket", &ticket_of(&page))]).await;
    assert!(xml.contains("<cas:longTermAuthenticationRequestTokenUsed>false<"), "{xml}");

    // The browser restarts: only cookies with a lifetime of their own come back.
    let restarted = |cookie: &str, b: &Browser| Browser {
        tgc: cookie.contains("Max-Age=").then(|| b.tgc.clone()).flatten(),
        ..Browser::new(&node)
    };
    let (mut kept, mut plain_again) = (restarted(&tgc_cookie, &kept), restarted(&plain_cookie, &plain));
    assert!(plain_again.tgc.is_none(), "the session cookie is gone with the browser");
    assert_eq!(plain_again.get(&format!("/login?service={}", enc(APP))).await.status, 200);
    tokio::time::sleep(std::time::Duration::from_millis(2200)).await;
    let mut plain = plain;
    assert_eq!(plain.get(&format!("/login?service={}", enc(APP))).await.status, 200, "the usual 2 s are over");
    assert_eq!(kept.get(&format!("/login?service={}", enc(APP))).await.status, 302, "remembered: still SSO");
    node.shutdown().await;

    let node = start(|_| {}).await;
    let mut b = Browser::new(&node);
    let form = b.get(&format!("/login?service={}", enc(APP))).await;
    assert!(!form.body.contains("rememberMe"), "not offered by default");
    let lt = lt_of(&form.body);
    let fields =
        [("username", USER), ("password", PASSWORD), ("lt", lt.as_str()), ("service", APP), ("rememberMe", "true")];
    let page = b.post_form("/login", &fields).await;
    assert!(page.set_cookie.iter().all(|c| !c.contains("Max-Age=1209600")), "{:?}", page.set_cookie);
    let xml = call(&node, "/p3/serviceValidate", &[("service", APP), ("ticket", &ticket_of(&page))]).await;
    assert!(xml.contains("<cas:longTermAuthenticationRequestTokenUsed>false<"), "{xml}");
    node.shutdown().await;
}
