//! Replicated ticket maps across real nodes on loopback (real UDP gossip, real sealed TCP links, real HTTP): any
//! request may land on any node, one-time tickets stay one-time, SSO survives the issuer, logout is everywhere.

use std::time::Duration;

use casd::NodeHandle;
use casd::clock::now_ms;
use casd::cluster::replication::replica::MapId;
use casd::cluster::replication::wire::{Reply, ReplyEnvelope, Request, RequestEnvelope, append_frame, read_frame};
use casd::cluster::seal::{ClusterKey, Opener, Purpose, Sealer};
use casd::config::Config;
use casd::ticket::Principal;

use crate::support::*;

const APP: &str = "http://127.0.0.1:9/app";

/// Node `name` of the test cluster, gossiping every 100 ms so that the tests run quickly.
fn clustered(config: &mut Config, name: &str, key: &ClusterKey, seeds: Vec<String>, size: usize) {
    join_cluster(config, "casd-repl", name, key, seeds, size);
    config.cluster.as_mut().expect("clustered").gossip_interval = Duration::from_millis(100);
}

async fn node(
    name: &str,
    key: &ClusterKey,
    seeds: Vec<String>,
    size: usize,
    adjust: impl FnOnce(&mut Config),
) -> NodeHandle {
    start(|c| {
        clustered(c, name, key, seeds, size);
        adjust(c);
    })
    .await
}

/// `size` nodes seeded from the first, all ready in every view.
async fn cluster_of(size: usize, key: &ClusterKey, adjust: impl Fn(&mut Config)) -> Vec<NodeHandle> {
    let fast = |_: usize, c: &mut Config| {
        c.cluster.as_mut().expect("clustered").gossip_interval = Duration::from_millis(100);
        adjust(c);
    };
    TestCluster::with_key(key.clone(), "casd-repl", "n", size, fast).await.nodes
}

async fn stop_all(nodes: Vec<NodeHandle>) {
    for n in nodes {
        n.crash().await;
    }
}

fn on(b: &mut Browser, n: &NodeHandle) {
    b.base = n.base_url();
}

/// Log in on node 1, validate on node 2, proxy on node 3, log out on node 2: SSO is gone on all.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_browser_and_its_applications_may_use_any_node() {
    let key = ClusterKey::generate();
    let ca = TestCa::new();
    let callback = HttpsApp::start(200, &ca).await;
    let ca_file = ca.pem_file.clone();
    let nodes = cluster_of(3, &key, move |c| c.proxy.extra_ca_file = Some(ca_file.clone())).await;
    let (n1, n2, n3) = (&nodes[0], &nodes[1], &nodes[2]);
    let mut b = Browser::new(n1);
    let st = b.login(APP).await;
    let body = call(n2, "/serviceValidate", &[("service", APP), ("ticket", &st)]).await;
    assert_eq!(user_of(&body).as_deref(), Some(USER), "validated on another node: {body}");
    let body = call(n3, "/serviceValidate", &[("service", APP), ("ticket", &st)]).await;
    assert_eq!(failure_code(&body).as_deref(), Some("INVALID_TICKET"), "once only, cluster-wide: {body}");

    on(&mut b, n3);
    let st = b.sso(APP).await;
    assert!(st.contains("-n3"), "issued by node 3 without a password: {st}");
    let body = call(n1, "/serviceValidate", &[("service", APP), ("ticket", &st), ("pgtUrl", &callback.url)]).await;
    assert!(body.contains("PGTIOU-"), "{body}");
    let query = callback.queries().pop().expect("callback");
    let pgt = url::form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "pgtId").expect("pgt").1.into_owned();
    let pt_body = call(n3, "/proxy", &[("pgt", &pgt), ("targetService", "http://127.0.0.1:9/backend")]).await;
    let pt = pt_body.split("<cas:proxyTicket>").nth(1).and_then(|r| r.split('<').next()).expect("pt").to_owned();
    let body = call(n2, "/proxyValidate", &[("service", "http://127.0.0.1:9/backend"), ("ticket", &pt)]).await;
    assert_eq!(user_of(&body).as_deref(), Some(USER), "{body}");

    on(&mut b, n2);
    let tgc = b.tgc.clone();
    b.get("/logout").await;
    for n in [n1, n2, n3] {
        b.tgc = tgc.clone();
        on(&mut b, n);
        let page = b.get(&format!("/login?service={}", enc(APP))).await;
        assert_eq!(page.status, 200, "no SSO left on {}", n.base_url());
        assert!(page.body.contains("name=\"password\""));
    }
    let body = call(n1, "/proxy", &[("pgt", &pgt), ("targetService", "http://127.0.0.1:9/backend")]).await;
    assert_eq!(failure_code(&body).as_deref(), Some("INVALID_TICKET"), "the PGT died with the session: {body}");
    stop_all(nodes).await;
}

/// 16 simultaneous validations of one ST spread over 3 nodes, 200 rounds: exactly one success each round.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_validations_on_three_nodes_succeed_exactly_once() {
    let key = ClusterKey::generate();
    let nodes = cluster_of(3, &key, |_| {}).await;
    let urls: Vec<String> = nodes.iter().map(|n| format!("{}/serviceValidate", n.base_url())).collect();
    let mut b = Browser::new(&nodes[0]);
    b.login(APP).await;
    for round in 0..200 {
        on(&mut b, &nodes[round % 3]);
        let st = b.sso(APP).await;
        let wins = race_validations(&urls, &st, APP, 16).await;
        assert_eq!(wins, 1, "round {round}: {wins} successes for {st}");
    }
    stop_all(nodes).await;
}

async fn metrics_of(n: &NodeHandle) -> String {
    reqwest::get(format!("{}/metrics", n.base_url())).await.expect("metrics").text().await.expect("body")
}

fn metric(body: &str, name: &str) -> u64 {
    let line = body.lines().find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '));
    line.and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or_else(|| panic!("no {name} in {body}"))
}

/// An ST costs its issuer one replicated write (the session's service grant, for single logout) and its peers
/// nothing: they never hold a copy, and the validation on the owner sends them nothing either. A peer still
/// validates it, by forwarding the consume to the owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_service_ticket_stays_on_its_issuer_and_costs_one_replicated_write() {
    let key = ClusterKey::generate();
    let nodes = cluster_of(3, &key, |_| {}).await;
    let (n1, n2) = (&nodes[0], &nodes[1]);
    let mut b = Browser::new(n1);
    b.login(APP).await;
    let writes = |body: &str| metric(body, "casd_replication_writes_total");
    let before = writes(&metrics_of(n1).await);
    let st = b.sso(APP).await;
    assert_eq!(writes(&metrics_of(n1).await) - before, 1, "one replicated write per ST issued");
    for peer in &nodes[1..] {
        assert_eq!(metric(&metrics_of(peer).await, "casd_tickets_live{map=\"ST\"}"), 0, "no copy on a peer");
    }
    let body = call(n1, "/serviceValidate", &[("service", APP), ("ticket", &st)]).await;
    assert_eq!(user_of(&body).as_deref(), Some(USER), "{body}");
    assert_eq!(writes(&metrics_of(n1).await) - before, 1, "a validation on the owner replicates nothing");
    let st = b.sso(APP).await;
    let body = call(n2, "/serviceValidate", &[("service", APP), ("ticket", &st)]).await;
    assert_eq!(user_of(&body).as_deref(), Some(USER), "a peer validates by asking the owner: {body}");
    let body = call(n1, "/serviceValidate", &[("service", APP), ("ticket", &st)]).await;
    assert_eq!(failure_code(&body).as_deref(), Some("INVALID_TICKET"), "and only once: {body}");
    stop_all(nodes).await;
}

/// kill -9 (crash) of the node that issued the TGT: SSO continues on the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sso_survives_the_crash_of_the_issuing_node() {
    let key = ClusterKey::generate();
    let mut nodes = cluster_of(3, &key, |_| {}).await;
    let mut b = Browser::new(&nodes[0]);
    let st_on_dead = b.login(APP).await;
    let issuer = nodes.remove(0);
    issuer.crash().await;
    on(&mut b, &nodes[0]);
    let st = b.sso(APP).await;
    let body = call(&nodes[1], "/p3/serviceValidate", &[("service", APP), ("ticket", &st)]).await;
    assert_eq!(user_of(&body).as_deref(), Some(USER), "{body}");
    // The crashed node's own ST cannot be decided by anyone: refused, never accepted.
    let body = call(&nodes[1], "/serviceValidate", &[("service", APP), ("ticket", &st_on_dead)]).await;
    assert_eq!(failure_code(&body).as_deref(), Some("INVALID_TICKET"), "{body}");
    stop_all(nodes).await;
}

/// A restarted node refuses the tickets of its previous generation, and so does everyone else: the peer never held
/// a copy, and the restarted node does not pull one-time tickets at all (their issuer alone decides them, and this
/// is a new issuer).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_owner_refuses_its_previous_generations_tickets() {
    let key = ClusterKey::generate();
    let mut nodes = cluster_of(2, &key, |_| {}).await;
    let mut b = Browser::new(&nodes[1]);
    let st = b.login(APP).await;
    let old = nodes.remove(1);
    let gossip = old.cluster().expect("c").gossip_addr().to_string();
    old.crash().await;
    let seed = vec![nodes[0].cluster().expect("c").gossip_addr().to_string()];
    let restarted = node("n2", &key, seed, 2, |c| {
        c.cluster.as_mut().expect("c").gossip_addr = gossip.parse().expect("addr");
    })
    .await;
    assert_eq!(nodes[0].registry().sizes()[1].1, 0, "the peer holds no copy of the old ST");
    assert_eq!(restarted.registry().sizes()[1].1, 0, "state transfer leaves one-time tickets out");
    for n in [&nodes[0], &restarted] {
        let body = call(n, "/serviceValidate", &[("service", APP), ("ticket", &st)]).await;
        assert_eq!(failure_code(&body).as_deref(), Some("INVALID_TICKET"), "{body}");
    }
    nodes.push(restarted);
    stop_all(nodes).await;
}

/// Once /logout has answered, no node issues a ticket for that session, not even a moment later.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn logout_is_everywhere_when_it_returns() {
    let key = ClusterKey::generate();
    let nodes = cluster_of(3, &key, |_| {}).await;
    for round in 0..20 {
        let mut b = Browser::new(&nodes[round % 3]);
        let outstanding = b.login(APP).await;
        let tgc = b.tgc.clone();
        on(&mut b, &nodes[(round + 1) % 3]);
        b.get("/logout").await;
        b.tgc = tgc;
        on(&mut b, &nodes[(round + 2) % 3]);
        let page = b.get(&format!("/login?service={}", enc(APP))).await;
        assert_eq!(page.status, 200, "round {round}: SSO must be gone at once");
        let body =
            call(&nodes[(round + 2) % 3], "/serviceValidate", &[("service", APP), ("ticket", &outstanding)]).await;
        assert_eq!(failure_code(&body).as_deref(), Some("INVALID_TICKET"), "{body}");
    }
    stop_all(nodes).await;
}

/// A logout that only this node holds (its two peers are down) is not confirmed: 202, a page that says so, the
/// cookie cleared. Once a peer is back, the same logout again reaches the quorum (2 of 3) and is confirmed, and the
/// peer refuses the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_logout_is_confirmed_only_by_a_majority() {
    let key = ClusterKey::generate();
    let mut nodes = cluster_of(3, &key, |_| {}).await;
    let mut b = Browser::new(&nodes[0]);
    b.login(APP).await;
    let tgc = b.tgc.clone().expect("logged in");
    let third = nodes.pop().expect("three");
    let second = nodes.pop().expect("three");
    let gossip = second.cluster().expect("c").gossip_addr().to_string();
    third.crash().await;
    second.crash().await;

    let page = b.get("/logout").await;
    assert_eq!(page.status, 202, "{}", page.body);
    assert!(page.body.contains("not yet confirmed"), "{}", page.body);
    assert!(page.set_cookie.iter().any(|c| c.starts_with("TGC=;")), "cookie cleared: {:?}", page.set_cookie);
    let mut other = Browser::new(&nodes[0]);
    other.tgc = Some(tgc.clone());
    let sso = other.get(&format!("/login?service={}", enc(APP))).await;
    assert_eq!(sso.status, 200, "no SSO on the node that ended the session");

    let seed = vec![nodes[0].cluster().expect("c").gossip_addr().to_string()];
    let back = node("n2", &key, seed, 3, |c| {
        c.cluster.as_mut().expect("c").gossip_addr = gossip.parse().expect("addr");
    })
    .await;
    wait_until(Duration::from_secs(10), "the first node sees the restarted one ready", || async {
        ready_members(&nodes[0]).len() == 2
    })
    .await;
    b.tgc = Some(tgc.clone());
    let page = b.get("/logout").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("Logout successful"), "{}", page.body);
    let mut there = Browser::new(&back);
    there.tgc = Some(tgc);
    let sso = there.get(&format!("/login?service={}", enc(APP))).await;
    assert_eq!(sso.status, 200, "no SSO on the node that came back");
    nodes.push(back);
    stop_all(nodes).await;
}

/// A node started after 10,000 sessions were created holds all of them when it reports ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_joiner_holds_every_session_before_it_is_ready() {
    let key = ClusterKey::generate();
    let first = node("n1", &key, vec![], 2, |_| {}).await;
    let principal = Principal { id: USER.into(), attributes: Default::default() };
    for _ in 0..10_000 {
        first.registry().issue_tgt(principal.clone(), now_ms()).await.expect("tgt");
    }
    let seed = vec![first.cluster().expect("c").gossip_addr().to_string()];
    let started = std::time::Instant::now();
    let joiner = node("n2", &key, seed, 2, |_| {}).await;
    println!("joiner ready with a copy of 10,000 sessions after {:?}", started.elapsed());
    assert_eq!(joiner.registry().sizes()[0].1, 10_000, "every TGT is there when start returns (ready)");
    assert_eq!(joiner.state_transfer().map(|t| t.entries), Some(10_000), "all of it came by state transfer");
    // Anti-entropy between the two now exchanges digests and finds nothing to fetch: the digests the two nodes
    // keep as they go agree, though one built its map from logins and the other from pulled pages.
    let replicator = joiner.replicator().expect("clustered");
    let peer = replicator.peers().into_iter().find(|m| m.node == "n1").expect("n1 in the view");
    assert_eq!(replicator.pull_all(&peer).await, Ok(0), "equal maps: nothing is pulled");
    wait_until(Duration::from_secs(5), "the joiner to be published as ready", || async {
        ready_members(&first).contains(&"n2".to_string())
    })
    .await;
    stop_all(vec![first, joiner]).await;
}

/// min_copies: a login that could reach fewer copies than required answers 503 and leaves no session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_few_copies_refuse_the_login() {
    let key = ClusterKey::generate();
    let lonely = node("n1", &key, vec![], 2, |c| c.cluster.as_mut().expect("c").min_copies = 2).await;
    let mut b = Browser::new(&lonely);
    let page = b.login_with(Some(APP), "", USER, PASSWORD).await;
    assert_eq!(page.status, 503, "{}", page.body);
    assert!(b.tgc.is_none());
    assert_eq!(lonely.registry().sizes()[0].1, 0);
    lonely.crash().await;
}

/// Single logout goes out once cluster-wide: from the node that handled /logout, and for an expired session from
/// its owner only.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn single_logout_is_sent_once_cluster_wide() {
    let key = ClusterKey::generate();
    let app = AppServer::start().await;
    let nodes = cluster_of(3, &key, |c| {
        c.tickets.tgt_idle_timeout = Duration::from_millis(800);
        c.tickets.sweep_interval = Duration::from_millis(100);
    })
    .await;
    let mut b = Browser::new(&nodes[0]);
    let st = b.login(&app.url).await;
    on(&mut b, &nodes[1]);
    b.get("/logout").await;
    let mut expiring = Browser::new(&nodes[2]);
    let st_expiring = expiring.login(&app.url).await;
    wait_until(Duration::from_secs(5), "both logout requests", || async { app.bodies().len() >= 2 }).await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // room for any duplicate to arrive
    let bodies = app.bodies();
    assert_eq!(bodies.len(), 2, "one per session: {bodies:?}");
    assert_eq!(bodies.iter().filter(|b| b.contains(&st)).count(), 1);
    assert_eq!(bodies.iter().filter(|b| b.contains(&st_expiring)).count(), 1);
    stop_all(nodes).await;
}

/// Tickets granted at the same moment on three different nodes under one session all reach its service list on
/// every node: logout (on any node) notifies every service.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_grants_on_different_nodes_all_get_single_logout() {
    let key = ClusterKey::generate();
    let nodes = cluster_of(3, &key, |_| {}).await;
    let mut apps = Vec::new();
    for _ in 0..9 {
        apps.push(AppServer::start().await);
    }
    let mut b = Browser::new(&nodes[0]);
    b.login(&apps[0].url).await;
    let tgc = b.tgc.clone().expect("tgc");
    let grants: Vec<_> = apps
        .iter()
        .enumerate()
        .map(|(i, app)| {
            let url = format!("{}/login?service={}", nodes[i % 3].base_url(), enc(&app.url));
            let tgc = tgc.clone();
            tokio::spawn(async move {
                let r = http().get(url).header("Cookie", format!("TGC={tgc}")).send().await.expect("sso");
                assert_eq!(r.status().as_u16(), 302);
            })
        })
        .collect();
    for g in grants {
        g.await.expect("join");
    }
    on(&mut b, &nodes[2]);
    b.get("/logout").await;
    wait_until(Duration::from_secs(5), "a logout request at each of the nine services", || async {
        apps.iter().all(|a| a.bodies().len() == 1)
    })
    .await;
    stop_all(nodes).await;
}

async fn next_reply(link: &mut tokio::net::TcpStream, opener: &Opener) -> ReplyEnvelope {
    let frame = tokio::time::timeout(Duration::from_secs(2), read_frame(link, 16 << 20)).await;
    let opened = opener.open(&frame.expect("a reply in time").expect("a frame"), now_ms()).expect("sealed to us");
    postcard::from_bytes(&opened.payload).expect("a reply")
}

/// A request that has arrived only in part must not hold back the replies to the whole ones before it: under loss,
/// its rest may be a retransmission (hundreds of milliseconds) away. Plays a peer by hand on a real node's link.
#[tokio::test]
async fn replies_to_whole_requests_leave_before_a_partial_one_completes() {
    use tokio::io::AsyncWriteExt;
    let key = ClusterKey::generate();
    let n = node("n1", &key, vec![], 1, |_| {}).await;
    let status = n.cluster().expect("clustered").status();
    let own_addr = || status.borrow().members.iter().find(|m| m.is_self).and_then(|m| m.replication_addr.clone());
    wait_until(Duration::from_secs(5), "the node to list itself", || async { own_addr().is_some() }).await;
    let addr = own_addr().expect("its replication address");
    let sealer = Sealer::new(&key, "casd-repl", "probe", now_ms());
    let opener = Opener::for_recipient(&key, "casd-repl", Purpose::ReplicationReply, "probe");
    let request = |id| {
        let payload =
            postcard::to_allocvec(&RequestEnvelope { id, body: Request::Digest { map: MapId::Tgt } }).expect("ser");
        let mut framed = Vec::new();
        append_frame(&mut framed, &sealer.seal_to(Purpose::Replication, "n1", &payload, now_ms())).expect("frame");
        framed
    };
    let (first, second) = (request(1), request(2));
    let mut link = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    let half = second.len() / 2;
    link.write_all(&[&first[..], &second[..half]].concat()).await.expect("write");
    let reply = next_reply(&mut link, &opener).await;
    assert_eq!(reply.id, 1, "the whole request is answered while the next one is still in part");
    assert!(matches!(reply.body, Reply::Digest(_)));
    link.write_all(&second[half..]).await.expect("write");
    assert_eq!(next_reply(&mut link, &opener).await.id, 2, "and the rest completes the second");
    n.shutdown().await;
}

/// A principal whose one attribute holds `bytes` bytes: a session that large makes pages sized by entry count
/// overflow a frame.
fn heavy(bytes: usize) -> Principal {
    Principal { id: USER.into(), attributes: [("memberOf".to_owned(), vec!["g".repeat(bytes)])].into_iter().collect() }
}

/// State transfer pages by bytes: 40 sessions of 600 KB each (24 MB, more than a frame holds) all reach the joiner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_larger_than_a_frame_in_total_transfer_in_pages() {
    let key = ClusterKey::generate();
    let first = node("n1", &key, vec![], 2, |_| {}).await;
    for _ in 0..40 {
        first.registry().issue_tgt(heavy(600_000), now_ms()).await.expect("tgt");
    }
    let seed = vec![first.cluster().expect("c").gossip_addr().to_string()];
    let joiner = node("n2", &key, seed, 2, |_| {}).await;
    assert_eq!(joiner.registry().sizes()[0].1, 40, "every session arrived");
    assert_eq!(joiner.state_transfer().map(|t| t.entries), Some(40));
    stop_all(vec![first, joiner]).await;
}

/// A joiner that sees a ready peer but cannot pull from it never claims ready: `/ready` says why and CAS requests
/// get 503, until the pull succeeds. Here one session is larger than any frame; once it is gone, the join completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joiner_that_cannot_pull_stays_not_ready_and_says_why() {
    let key = ClusterKey::generate();
    let first = node("n1", &key, vec![], 2, |_| {}).await;
    let too_big = first.registry().issue_tgt(heavy(17 << 20), now_ms()).await.expect("tgt");
    let seed = vec![first.cluster().expect("c").gossip_addr().to_string()];
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}/cas");
    let joiner_key = key.clone();
    let joining = tokio::spawn(async move {
        node("n2", &joiner_key, seed, 2, move |c| {
            c.http.listen = format!("127.0.0.1:{port}").parse().expect("addr");
            c.cluster.as_mut().expect("c").join_timeout = Duration::from_millis(500);
        })
        .await
    });
    let ready = || async { http().get(format!("{base}/ready")).send().await.ok() };
    wait_until(Duration::from_secs(20), "/ready to name the failed transfer", || async {
        match ready().await {
            Some(r) if r.status() == 503 => {
                r.text().await.unwrap_or_default().contains("state transfer from n1 failed")
            }
            _ => false,
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let login = http().get(format!("{base}/login")).send().await.expect("request");
    assert_eq!(login.status().as_u16(), 503, "no CAS answers while joining, well past join_timeout");
    assert!(!joining.is_finished(), "start has not returned: the node is not ready");
    first.registry().destroy_tgt(too_big.as_str()).await.expect("destroy");
    let joiner = tokio::time::timeout(Duration::from_secs(10), joining).await.expect("ready in time").expect("join");
    assert_eq!(ready().await.map(|r| r.status().as_u16()), Some(200));
    assert_eq!(joiner.registry().sizes()[0].1, 0, "the removed session did not come along");
    stop_all(vec![first, joiner]).await;
}
