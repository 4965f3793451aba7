//! What an anonymous client cannot do to a node (issue 12): post a login form from another site, pass credentials
//! in a URL, make a node keep huge strings, frame the login page, or hold the replication port with junk.

use std::time::Duration;

use casd::cluster::seal::ClusterKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

const APP: &str = "http://127.0.0.1:9/app";

/// A fresh login form's LT, from a new browser.
async fn fresh_lt(node: &casd::NodeHandle) -> String {
    lt_of(&Browser::new(node).get("/login").await.body)
}

async fn post_login(node: &casd::NodeHandle, query: &str, form: &[(&str, &str)], origin: Option<&str>) -> Page {
    let mut b = Browser::new(node);
    let mut req = b.client.post(format!("{}/login{query}", node.base_url())).form(form);
    if let Some(o) = origin {
        req = req.header("Origin", o);
    }
    let response = req.send().await.expect("request");
    let status = response.status().as_u16();
    let set_cookie =
        response.headers().get_all("set-cookie").iter().filter_map(|v| v.to_str().ok()).map(str::to_owned).collect();
    let location = response.headers().get("location").and_then(|v| v.to_str().ok()).map(str::to_owned);
    b.tgc = None;
    Page { status, location, set_cookie, body: response.text().await.expect("body") }
}

/// A form posted with another site's Origin logs nobody in; the same credentials from this site's page do.
#[tokio::test]
async fn a_login_form_posted_from_another_site_is_refused() {
    let node = start(|_| {}).await;
    let lt = fresh_lt(&node).await;
    let form = [("username", USER), ("password", PASSWORD), ("lt", lt.as_str()), ("service", APP)];
    let page = post_login(&node, "", &form, Some("http://evil.example")).await;
    assert_eq!(page.status, 403, "{}", page.body);
    assert!(page.set_cookie.iter().all(|c| !c.starts_with("TGC=")), "no session for a cross-site post");
    let own = format!("http://{}", node.local_addr());
    let lt = fresh_lt(&node).await;
    let form = [("username", USER), ("password", PASSWORD), ("lt", lt.as_str()), ("service", APP)];
    let page = post_login(&node, "", &form, Some(&own)).await;
    assert_eq!(page.status, 302, "{}", page.body);
    assert!(page.set_cookie.iter().any(|c| c.starts_with("TGC=")));
    node.shutdown().await;
}

/// Credentials in the query string of the POST are not read: the login fails as with no password at all.
#[tokio::test]
async fn credentials_in_the_url_are_ignored() {
    let node = start(|_| {}).await;
    let lt = fresh_lt(&node).await;
    let query = format!("?username={USER}&password={PASSWORD}");
    let page = post_login(&node, &query, &[("lt", lt.as_str())], None).await;
    assert_eq!(page.status, 401, "{}", page.body);
    assert!(page.set_cookie.iter().all(|c| !c.starts_with("TGC=")));
    node.shutdown().await;
}

/// Over-long usernames, passwords and service URLs are refused without being stored or echoed.
#[tokio::test]
async fn over_long_input_is_refused_and_not_echoed() {
    let node = start(|_| {}).await;
    let huge = "u".repeat(100_000);
    let lt = fresh_lt(&node).await;
    let page = post_login(&node, "", &[("username", &huge), ("password", PASSWORD), ("lt", lt.as_str())], None).await;
    assert_eq!(page.status, 413, "a login form that large is refused before it is read");
    let long = "u".repeat(1000);
    let lt = fresh_lt(&node).await;
    let page = post_login(&node, "", &[("username", &long), ("password", PASSWORD), ("lt", lt.as_str())], None).await;
    assert_eq!(page.status, 401, "a name over limits.max_username_bytes is refused");
    assert!(!page.body.contains(&long[..300]), "and not echoed back");
    let long_service = format!("http://localhost/{}", "x".repeat(5000));
    let page = Browser::new(&node).get(&format!("/login?service={}", enc(&long_service))).await;
    assert_eq!(page.status, 403, "a service URL over the limit matches no service");
    node.shutdown().await;
}

/// Every page carries the anti-framing and no-sniff headers; HSTS comes with https deployments.
#[tokio::test]
async fn pages_carry_the_security_headers() {
    let node = start(|_| {}).await;
    let r = http().get(format!("{}/login", node.base_url())).send().await.expect("request");
    let h = r.headers();
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["content-security-policy"], "frame-ancestors 'none'");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert!(h.get("strict-transport-security").is_none(), "plain http: no HSTS");
    node.shutdown().await;
    let node = start(|c| {
        c.http.allow_plain_http = false;
        c.http.tls_terminated_upstream = true;
    })
    .await;
    let r = http().get(format!("{}/login", node.base_url())).send().await.expect("request");
    assert_eq!(r.headers()["strict-transport-security"], "max-age=31536000");
    node.shutdown().await;
}

/// With no room to wait, logins beyond the cores get an immediate "busy, try again" (503, Retry-After), never a
/// "wrong password", and the others succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_checks_beyond_the_queue_are_told_to_retry() {
    let node = start(|c| c.auth.max_waiting_checks = 0).await;
    let mut lts = Vec::new();
    for _ in 0..16 {
        lts.push(fresh_lt(&node).await);
    }
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(lts.len()));
    let url = format!("{}/login", node.base_url());
    let tasks: Vec<_> = lts
        .into_iter()
        .map(|lt| {
            let (url, barrier) = (url.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let form = [("username", USER), ("password", PASSWORD), ("lt", lt.as_str())];
                let r = http().post(url).form(&form).send().await.expect("request");
                (r.status().as_u16(), r.headers().get("retry-after").is_some())
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.expect("join"));
    }
    let busy = outcomes.iter().filter(|(s, retry)| *s == 503 && *retry).count();
    let ok = outcomes.iter().filter(|(s, _)| *s == 200).count();
    assert!(busy >= 1, "some were told to retry: {outcomes:?}");
    assert_eq!(busy + ok, outcomes.len(), "the rest logged in, none was told its password was wrong: {outcomes:?}");
    node.shutdown().await;
}

/// The replication port closes a connection at its first frame that does not open, and refuses a frame whose
/// announced length is over the bound before receiving it.
#[tokio::test]
async fn the_replication_port_closes_junk_at_once() {
    let key = ClusterKey::generate();
    let node = start(|c| join_cluster(c, "hard", "h1", &key, vec![], 1)).await;
    let status = node.cluster().expect("clustered").status();
    let own = || status.borrow().members.iter().find(|m| m.is_self).and_then(|m| m.replication_addr.clone());
    wait_until(Duration::from_secs(5), "the node to list itself", || async { own().is_some() }).await;
    let addr = own().expect("replication address");
    let closed = |mut s: tokio::net::TcpStream| async move {
        let mut buf = [0u8; 16];
        matches!(tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await, Ok(Ok(0) | Err(_)))
    };
    let mut junk = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    junk.write_all(&[&8u32.to_be_bytes()[..], b"notsealed"].concat()).await.expect("write");
    assert!(closed(junk).await, "a frame that does not open closes the connection");
    let mut huge = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    huge.write_all(&(16u32 << 20).to_be_bytes()).await.expect("write");
    assert!(closed(huge).await, "a 16 MiB first frame is refused before it is sent");
    let dropped = node.cluster().expect("clustered").dropped();
    assert!(dropped.oversize >= 1 && dropped.malformed + dropped.bad_tag >= 1, "{dropped:?}");
    node.shutdown().await;
}

/// A request head that never completes is dropped at `http.header_timeout`, and so is a keep-alive connection
/// idle that long; new connections past `http.max_connections` are closed at once, while a legitimate client
/// is served again as soon as there is room.
#[tokio::test]
async fn slow_idle_and_surplus_connections_are_closed() {
    let node = start(|c| {
        c.http.header_timeout = Duration::from_secs(1);
        c.http.max_connections = 8;
    })
    .await;
    let addr = node.local_addr();
    let closed_within = |mut s: tokio::net::TcpStream, limit: Duration| async move {
        let mut buf = vec![0u8; 4096];
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    };
    let mut partial = tokio::net::TcpStream::connect(addr).await.expect("connect");
    partial.write_all(b"GET /cas/login HTTP/1.1\r\nHost: x\r\n").await.expect("write");
    assert!(closed_within(partial, Duration::from_secs(4)).await, "a partial head is dropped");
    let mut idle = tokio::net::TcpStream::connect(addr).await.expect("connect");
    idle.write_all(b"GET /cas/health HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    assert!(closed_within(idle, Duration::from_secs(4)).await, "an idle keep-alive connection is closed");
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let surplus = tokio::net::TcpStream::connect(addr).await.expect("the kernel still accepts");
    assert!(closed_within(surplus, Duration::from_millis(500)).await, "past the cap a connection is closed at once");
    drop(held);
    wait_until(Duration::from_secs(5), "room for a legitimate client again", || async {
        http().get(format!("{}/health", node.base_url())).send().await.is_ok_and(|r| r.status() == 200)
    })
    .await;
    node.shutdown().await;
}

/// Loading the login form and logging out with made-up cookies cost the cluster nothing: login tickets stay with
/// their issuer (a form fetched from one node still posts to another), and an id nobody minted is refused without
/// a tombstone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_requests_make_no_replicated_writes() {
    let cluster = TestCluster::start("anon", "a", 2, |_, _| {}).await;
    let (n1, n2) = (&cluster.nodes[0], &cluster.nodes[1]);
    let writes = || n1.replicator().expect("clustered").counts().writes;
    let before = writes();
    for i in 0..20 {
        let mut b = Browser::new(n1);
        assert_eq!(b.get("/login").await.status, 200);
        b.tgc = Some(format!("TGT-{}{:08}-a1000000ab", "A".repeat(22), i));
        assert_eq!(b.get("/logout").await.status, 200);
    }
    assert_eq!(writes(), before, "no replicated write for a login form or a forged cookie");
    let mut b = Browser::new(n1);
    let lt = lt_of(&b.get(&format!("/login?service={}", enc(APP))).await.body);
    b.base = n2.base_url();
    let page =
        b.post_form("/login", &[("username", USER), ("password", PASSWORD), ("lt", &lt), ("service", APP)]).await;
    assert_eq!(page.status, 302, "the form's ticket is consumed by its issuer on the other node's behalf");
    assert_eq!(n1.registry().sizes()[0].1, 1, "a real login is replicated to the other node");
    cluster.crash_all().await;
}

/// Behind a trusted proxy each client is throttled by its own address: an attacker failing a user's password
/// locks that user out from the attacker's address only, and one address spraying usernames is stopped whole.
#[tokio::test]
async fn throttling_follows_the_forwarded_client_behind_a_trusted_proxy() {
    let node = start(|c| {
        c.throttle.max_failures = 3;
        c.throttle.max_failures_per_address = 6;
        c.throttle.trusted_proxies = vec!["127.0.0.1/32".parse().expect("net")];
    })
    .await;
    let attempt = |user: &'static str, password: &'static str, client: &'static str| {
        let node_url = node.base_url();
        async move {
            let b = Browser { base: node_url.clone(), client: http(), tgc: None };
            let page = b.client.get(format!("{node_url}/login")).send().await.expect("form");
            let lt = lt_of(&unescape_html(&page.text().await.expect("body")));
            let form = [("username", user), ("password", password), ("lt", lt.as_str())];
            let r = b.client.post(format!("{node_url}/login")).header("X-Forwarded-For", client).form(&form);
            r.send().await.expect("post").status().as_u16()
        }
    };
    for _ in 0..3 {
        assert_eq!(attempt(USER, "wrong", "203.0.113.66").await, 401);
    }
    assert_eq!(attempt(USER, PASSWORD, "203.0.113.66").await, 429, "locked out from the attacker's address");
    assert_eq!(attempt(USER, PASSWORD, "198.51.100.7").await, 200, "the real user elsewhere is not");
    for user in ["a", "b", "c"] {
        assert_eq!(attempt(user, "guess", "203.0.113.99").await, 401);
        assert_eq!(attempt(user, "guess", "203.0.113.99").await, 401);
    }
    assert_eq!(attempt("d", "guess", "203.0.113.99").await, 429, "six failures over usernames stop the address");
    node.shutdown().await;
}

/// One account cannot pile up sessions: past limits.max_sessions_per_user a new login ends the user's oldest
/// session (its cookie gives no SSO any more, and its services get their single logout).
#[tokio::test]
async fn a_login_past_the_session_cap_ends_the_oldest_session() {
    let app = AppServer::start().await;
    let node = start(|c| c.limits.max_sessions_per_user = 3).await;
    let mut browsers = Vec::new();
    for _ in 0..4 {
        let mut b = Browser::new(&node);
        b.login(&app.url).await;
        browsers.push(b);
    }
    assert_eq!(node.registry().sizes()[0].1, 3, "three sessions left");
    let oldest = browsers[0].get(&format!("/login?service={}", enc(&app.url))).await;
    assert_eq!(oldest.status, 200, "the oldest cookie shows the form: its session ended");
    for b in &mut browsers[1..] {
        assert_eq!(b.get(&format!("/login?service={}", enc(&app.url))).await.status, 302, "the newer ones keep SSO");
    }
    wait_until(Duration::from_secs(5), "the ended session's single logout", || async { app.bodies().len() == 1 }).await;
    node.shutdown().await;
}
