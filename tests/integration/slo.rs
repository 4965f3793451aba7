//! Single logout delivered to a receiver started by the test: on `/logout` and on TGT expiry.

use std::time::Duration;

use crate::support::*;

fn session_index(body: &str) -> Option<String> {
    let decoded: String = url::form_urlencoded::parse(body.as_bytes())
        .find(|(k, _)| k == "logoutRequest")
        .map(|(_, v)| v.into_owned())?;
    assert!(body.starts_with("logoutRequest="), "mod_auth_cas needs the parameter first: {body}");
    assert!(!decoded.contains('\n'), "one line: {decoded}");
    let re = regex::Regex::new(r"<samlp:SessionIndex>([^<]+)</samlp:SessionIndex>").expect("re");
    re.captures(&decoded).map(|c| c[1].to_owned())
}

/// Logout posts a logoutRequest naming each ST to each service that got one, and does not wait for it.
#[tokio::test]
async fn logout_sends_a_logout_request_to_every_service() {
    let app_a = AppServer::start().await;
    let app_b = AppServer::start().await;
    let node = start(|_| {}).await;
    let mut b = Browser::new(&node);
    let st_a = b.login(&app_a.url).await;
    let st_b = b.sso(&app_b.url).await;
    let page = b.get("/logout").await;
    assert_eq!(page.status, 200);
    wait_until(Duration::from_secs(5), "both logout requests", || async {
        app_a.bodies().len() == 1 && app_b.bodies().len() == 1
    })
    .await;
    assert_eq!(session_index(&app_a.bodies()[0]), Some(st_a));
    assert_eq!(session_index(&app_b.bodies()[0]), Some(st_b));
    assert_eq!(app_a.seen.lock().expect("lock")[0].0, "POST");
    assert_eq!(node.slo_counts().sent, 2);
    node.shutdown().await;
}

/// A service with SLO turned off gets nothing; an unreachable one is counted as failed and logout still answers.
#[tokio::test]
async fn slo_respects_the_service_setting_and_survives_dead_services() {
    let app = AppServer::start().await;
    let node = start(|c| {
        let mut quiet = c.services[0].clone();
        quiet.id = 0;
        quiet.pattern = regex::escape(&app.url);
        quiet.slo = false;
        c.services.push(quiet);
    })
    .await;
    let mut b = Browser::new(&node);
    b.login(&app.url).await;
    b.sso("http://127.0.0.1:1/closed").await; // nothing listens on port 1
    assert_eq!(b.get("/logout").await.status, 200);
    wait_until(Duration::from_secs(5), "the failed delivery to be counted", || async { node.slo_counts().failed == 1 })
        .await;
    assert!(app.bodies().is_empty(), "SLO disabled for that service");
    node.shutdown().await;
}

/// An SSO session that expires (idle) triggers single logout from the sweeper, without any logout request.
#[tokio::test]
async fn expired_session_triggers_single_logout() {
    let app = AppServer::start().await;
    let node = start(|c| {
        c.tickets.tgt_idle_timeout = Duration::from_millis(500);
        c.tickets.sweep_interval = Duration::from_millis(100);
    })
    .await;
    let mut b = Browser::new(&node);
    let st = b.login(&app.url).await;
    wait_until(Duration::from_secs(5), "the expiry logout request", || async { app.bodies().len() == 1 }).await;
    assert_eq!(session_index(&app.bodies()[0]), Some(st));
    let page = b.get(&format!("/login?service={}", enc(&app.url))).await;
    assert!(page.body.contains("name=\"password\""), "SSO has ended");
    node.shutdown().await;
}

/// Tickets granted at the same moment for ten services all reach the session's service list: logout notifies all ten
/// (the lost update of a read-modify-write TGT is the most reported cluster bug of the incumbent server).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_grants_all_get_single_logout() {
    let mut apps = Vec::new();
    for _ in 0..10 {
        apps.push(AppServer::start().await);
    }
    let node = start(|_| {}).await;
    let mut b = Browser::new(&node);
    b.login(&apps[0].url).await;
    let tgc = b.tgc.clone().expect("tgc");
    let grants: Vec<_> = apps
        .iter()
        .map(|app| {
            let (url, tgc) = (format!("{}/login?service={}", node.base_url(), enc(&app.url)), tgc.clone());
            tokio::spawn(async move {
                let r = http().get(url).header("Cookie", format!("TGC={tgc}")).send().await.expect("sso");
                assert_eq!(r.status().as_u16(), 302);
                r.headers()["location"].to_str().expect("location").to_owned()
            })
        })
        .collect();
    let mut tickets = Vec::new();
    for g in grants {
        let location = g.await.expect("join");
        tickets.push(location.split("ticket=").nth(1).expect("ticket").to_owned());
    }
    b.get("/logout").await;
    wait_until(Duration::from_secs(5), "a logout request at every service", || async {
        apps.iter().all(|a| a.bodies().len() == 1)
    })
    .await;
    for (app, ticket) in apps.iter().zip(&tickets) {
        assert_eq!(session_index(&app.bodies()[0]).as_ref(), Some(ticket), "{}", app.url);
    }
    node.shutdown().await;
}

/// One session whose many services all hang does not hold back another user's logout notice: each logout and
/// each destination host gets a few of the shared slots, not all of them.
#[tokio::test]
async fn a_session_of_hanging_services_does_not_delay_another_users_logout() {
    // Accepts connections and never answers.
    let hanging = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let hang_port = hanging.local_addr().expect("addr").port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hanging.accept().await {
            held.push(s);
        }
    });
    let app = AppServer::start().await;
    let node = start(|c| {
        c.slo.timeout = Duration::from_secs(3);
        c.slo.max_concurrency = 8;
    })
    .await;
    let mut stuck = Browser::new(&node);
    stuck.login(&format!("http://127.0.0.1:{hang_port}/app/0")).await;
    for i in 1..24 {
        stuck.sso(&format!("http://127.0.0.1:{hang_port}/app/{i}")).await;
    }
    let mut other = Browser::new(&node);
    other.login(&app.url).await;
    assert_eq!(stuck.get("/logout").await.status, 200);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let asked = std::time::Instant::now();
    assert_eq!(other.get("/logout").await.status, 200);
    wait_until(Duration::from_secs(10), "the other user's logout notice", || async { app.bodies().len() == 1 }).await;
    assert!(asked.elapsed() < Duration::from_secs(2), "it waited {:?} behind the hanging ones", asked.elapsed());
    node.shutdown().await;
}

/// Back-channel single logout reaches an https service behind a private CA once `tls.client.extra_ca_file` names it
/// (or `proxy.extra_ca_file`, its old name); without it the delivery fails on the unknown issuer and is counted.
#[tokio::test]
async fn slo_reaches_an_https_service_under_a_private_ca() {
    let ca = TestCa::new();
    type Adjust = fn(&mut casd::Config, std::path::PathBuf);
    let trusting: [(&str, Adjust); 3] = [
        ("tls.client.extra_ca_file", |c, f| c.tls.client.extra_ca_file = Some(f)),
        ("proxy.extra_ca_file", |c, f| c.proxy.extra_ca_file = Some(f)),
        ("nothing", |_, _| {}),
    ];
    for (key, adjust) in trusting {
        let app = HttpsApp::start(200, &ca).await;
        let pem = ca.pem_file.clone();
        let node = start(move |c| adjust(c, pem)).await;
        let mut b = Browser::new(&node);
        let st = b.login(&app.url).await;
        assert_eq!(b.get("/logout").await.status, 200);
        wait_until(Duration::from_secs(5), "the https delivery to end", || async {
            let c = node.slo_counts();
            c.sent + c.failed == 1
        })
        .await;
        if key == "nothing" {
            assert_eq!(node.slo_counts().failed, 1, "an unknown CA is not trusted");
            assert!(app.seen.lock().expect("lock").is_empty(), "nothing sent over an untrusted connection");
        } else {
            assert_eq!(node.slo_counts().sent, 1, "{key}");
            let seen = app.seen.lock().expect("lock").clone();
            assert_eq!(seen.len(), 1, "{key}");
            assert_eq!(seen[0].0, "POST");
            assert_eq!(session_index(&seen[0].2), Some(st), "{key}");
        }
        node.shutdown().await;
    }
}

/// A `renew=true` login replaces the browser's session (as Apereo does): the services reached before it get their
/// single logout at once, the old cookie gives no SSO, and the old session's PGTs issue no proxy ticket. The new
/// session's own services get theirs at its logout, and the old ones no second one.
#[tokio::test]
async fn a_renewed_login_ends_the_session_it_replaces() {
    let ca = TestCa::new();
    let callback = HttpsApp::start(200, &ca).await;
    let (before, after) = (AppServer::start().await, AppServer::start().await);
    let node = start(|c| c.tls.client.extra_ca_file = Some(ca.pem_file.clone())).await;
    let mut b = Browser::new(&node);
    let st_before = b.login(&before.url).await;
    let body =
        call(&node, "/serviceValidate", &[("service", &before.url), ("ticket", &st_before), ("pgtUrl", &callback.url)])
            .await;
    assert!(body.contains("<cas:proxyGrantingTicket>"), "{body}");
    let query = callback.queries().pop().expect("the callback got the PGT");
    let pgt = url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "pgtId")
        .map(|(_, v)| v.into_owned())
        .expect("pgtId");
    let proxy = call(&node, "/proxy", &[("pgt", &pgt), ("targetService", "http://127.0.0.1:9/backend")]).await;
    assert!(proxy.contains("<cas:proxySuccess>"), "the PGT works before the renew: {proxy}");
    let old_tgc = b.tgc.clone().expect("a session");

    let page = b.login_with(Some(&after.url), "&renew=true", USER, PASSWORD).await;
    let st_after = ticket_of(&page);
    assert_ne!(b.tgc.as_deref(), Some(old_tgc.as_str()), "a new cookie");
    wait_until(Duration::from_secs(5), "the replaced session's single logout", || async { before.bodies().len() == 1 })
        .await;
    assert_eq!(session_index(&before.bodies()[0]), Some(st_before));

    let mut old = Browser { tgc: Some(old_tgc), ..Browser::new(&node) };
    let page = old.get(&format!("/login?service={}", enc(&before.url))).await;
    assert_eq!((page.status, page.location), (200, None), "the old cookie gives no SSO");
    let proxy = call(&node, "/proxy", &[("pgt", &pgt), ("targetService", "http://127.0.0.1:9/backend")]).await;
    assert_eq!(failure_code(&proxy).as_deref(), Some("INVALID_TICKET"), "the old PGT is dead: {proxy}");

    let body = call(&node, "/serviceValidate", &[("service", &after.url), ("ticket", &st_after)]).await;
    assert_eq!(user_of(&body).as_deref(), Some(USER), "{body}");
    assert_eq!(b.get("/logout").await.status, 200);
    wait_until(Duration::from_secs(5), "the new session's single logout", || async { after.bodies().len() == 1 }).await;
    assert_eq!(session_index(&after.bodies()[0]), Some(st_after));
    assert_eq!(before.bodies().len(), 1, "no second logout for the replaced session");
    node.shutdown().await;
}

/// Front-channel single logout: a service with `logout_type = "front"` gets no back-channel POST; the logout page
/// loads its URL with `logoutRequest=` the request, raw-deflated and base64-encoded (as java-cas-client reads it),
/// naming its ticket, and a `service` redirect waits behind a link meanwhile.
#[tokio::test]
async fn front_channel_logout_is_loaded_by_the_logout_page() {
    use std::io::Read;
    let back = AppServer::start().await;
    let front_url = "http://127.0.0.1:9/front";
    let node = start(|c| {
        let mut front = c.services[0].clone();
        front.id = 0;
        front.pattern = regex::escape(front_url);
        front.logout_type = casd::cas::services::LogoutType::Front;
        c.services.push(front);
    })
    .await;
    let mut b = Browser::new(&node);
    let st_back = b.login(&back.url).await;
    let st_front = b.sso(front_url).await;
    let page = b.get(&format!("/logout?service={}", enc(&back.url))).await;
    assert_eq!(page.status, 200, "the page must load, not redirect: {:?}", page.location);
    assert!(page.body.contains(&format!("href=\"{}\"", back.url)), "the redirect waits behind a link");
    let src = regex::Regex::new(r#"<iframe hidden sandbox title="single logout" src="([^"]+)""#)
        .expect("re")
        .captures(&page.body)
        .unwrap_or_else(|| panic!("no frame: {}", page.body))[1]
        .to_owned();
    let (url, query) = src.split_once('?').expect("a query");
    assert_eq!(url, front_url);
    let encoded = url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "logoutRequest")
        .map(|(_, v)| v.into_owned())
        .expect("logoutRequest");
    use base64::Engine;
    let compressed = base64::engine::general_purpose::STANDARD.decode(encoded).expect("base64");
    let mut xml = String::new();
    flate2::read::DeflateDecoder::new(&compressed[..]).read_to_string(&mut xml).expect("raw deflate");
    assert!(xml.contains(&format!("<samlp:SessionIndex>{st_front}</samlp:SessionIndex>")), "{xml}");
    wait_until(Duration::from_secs(5), "the back-channel POST", || async { back.bodies().len() == 1 }).await;
    assert_eq!(session_index(&back.bodies()[0]), Some(st_back));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(node.slo_counts().sent + node.slo_counts().failed, 1, "nothing POSTed to the front-channel service");
    node.shutdown().await;
}
