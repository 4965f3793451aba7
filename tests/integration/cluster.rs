//! Cluster membership over real UDP on loopback: convergence, failure detection, rejoin with a new generation,
//! graceful leave, wrong keys, garbage and replayed datagrams.

use std::time::{Duration, Instant};

use casd::NodeHandle;
use casd::cluster::membership::MemberStatus;
use casd::cluster::seal::{ClusterKey, Purpose, Sealer};

use crate::support::*;

const GOSSIP: Duration = Duration::from_millis(200);
/// The detection bound this suite holds nodes to (gossip 200 ms, phi 8: expected about 1.6 s).
const DETECTION_BOUND: Duration = Duration::from_secs(4);

/// Node `name` of a 3-node test cluster, gossiping on `gossip_addr` (port 0: any).
async fn member(name: &str, key: &ClusterKey, gossip_addr: &str, seeds: Vec<String>) -> NodeHandle {
    start(|config| {
        join_cluster(config, "casd-test", name, key, seeds, 3);
        let c = config.cluster.as_mut().expect("clustered");
        c.gossip_addr = gossip_addr.parse().expect("addr");
        c.gossip_interval = GOSSIP;
    })
    .await
}

fn view_names(node: &NodeHandle) -> Vec<String> {
    node.cluster().expect("clustered").view().into_keys().collect()
}

fn gossip_of(node: &NodeHandle) -> String {
    node.cluster().expect("clustered").gossip_addr().to_string()
}

/// Three nodes seeded from the first converge to one view; a crashed node is dropped within the bound by both
/// survivors, and rejoins with a higher generation after a restart on the same address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_converge_detect_a_crash_and_see_the_rejoin() {
    let key = ClusterKey::generate();
    let started = Instant::now();
    let n1 = member("n1", &key, "127.0.0.1:0", vec![]).await;
    let seed = vec![gossip_of(&n1)];
    let n2 = member("n2", &key, "127.0.0.1:0", seed.clone()).await;
    let n3 = member("n3", &key, "127.0.0.1:0", seed.clone()).await;
    let all = vec!["n1".to_string(), "n2".into(), "n3".into()];
    wait_until(Duration::from_secs(10), "three nodes to share one view, all ready", || async {
        [&n1, &n2, &n3].iter().all(|n| {
            let view = n.cluster().expect("c").view();
            view.keys().eq(all.iter()) && view.values().all(|m| m.status == MemberStatus::Ready)
        })
    })
    .await;
    println!("converged: 3 nodes in {:?}", started.elapsed());

    let body =
        http().get(format!("{}/cluster", n2.base_url())).send().await.expect("status").text().await.expect("body");
    let status: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(status["node"], "n2");
    let members = status["members"].as_array().expect("members");
    assert_eq!(members.iter().filter(|m| m["alive"] == true && m["status"] == "ready").count(), 3, "{body}");
    assert!(members.iter().all(|m| m["http_addr"].as_str().is_some_and(|h| h.starts_with("http://127.0.0.1:"))));
    let page =
        http().get(format!("{}/cluster.html", n1.base_url())).send().await.expect("page").text().await.expect("body");
    assert!(page.contains("n3") && page.contains("(this node)"), "{page}");

    let n3_gossip = gossip_of(&n3);
    let n3_generation = n1.cluster().expect("c").view()["n3"].generation;
    n3.crash().await;
    let crashed = Instant::now();
    wait_until(DETECTION_BOUND, "both survivors to drop the crashed node", || async {
        [&n1, &n2].iter().all(|n| !view_names(n).contains(&"n3".to_string()))
    })
    .await;
    println!("dead node dropped from both views after {:?}", crashed.elapsed());

    let n3 = member("n3", &key, &n3_gossip, seed).await;
    wait_until(Duration::from_secs(10), "the restarted node back in every view", || async {
        [&n1, &n2, &n3].iter().all(|n| view_names(n) == all)
    })
    .await;
    let rejoined = n1.cluster().expect("c").view()["n3"].generation;
    assert!(rejoined > n3_generation, "a restart is a new generation ({rejoined} > {n3_generation})");
    for n in [n1, n2, n3] {
        n.crash().await;
    }
}

/// A node leaving gracefully is seen as `leaving` before it is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_leave_is_announced() {
    let key = ClusterKey::generate();
    let n1 = member("n1", &key, "127.0.0.1:0", vec![]).await;
    let n2 = member("n2", &key, "127.0.0.1:0", vec![gossip_of(&n1)]).await;
    wait_until(Duration::from_secs(10), "two nodes to meet", || async { view_names(&n1).len() == 2 }).await;
    let leaving = tokio::spawn(n2.shutdown());
    wait_until(Duration::from_secs(3), "n1 to see n2 leaving", || async {
        n1.cluster()
            .expect("c")
            .status()
            .borrow()
            .members
            .iter()
            .any(|m| m.node == "n2" && m.status == MemberStatus::Leaving)
    })
    .await;
    leaving.await.expect("leave");
    n1.crash().await;
}

/// A node with another key never joins and never shows up in anyone's view; its datagrams are counted as bad.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_with_the_wrong_key_stays_out() {
    let key = ClusterKey::generate();
    let n1 = member("n1", &key, "127.0.0.1:0", vec![]).await;
    let n2 = member("n2", &key, "127.0.0.1:0", vec![gossip_of(&n1)]).await;
    let intruder = member("evil", &ClusterKey::generate(), "127.0.0.1:0", vec![gossip_of(&n1), gossip_of(&n2)]).await;
    wait_until(Duration::from_secs(10), "the intruder's datagrams to be refused", || async {
        n1.cluster().expect("c").dropped().bad_tag >= 3 && view_names(&n1).len() == 2
    })
    .await;
    tokio::time::sleep(GOSSIP * 5).await;
    assert_eq!(view_names(&n1), vec!["n1", "n2"]);
    assert_eq!(view_names(&n2), vec!["n1", "n2"]);
    assert_eq!(view_names(&intruder), vec!["evil"], "it learns nothing either");
    for n in [n1, n2, intruder] {
        n.crash().await;
    }
}

/// A node that hears a cluster it cannot authenticate (here: a peer gossips to it under another key) does not start
/// as a cluster of one: it stays not ready and `/ready` says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_cannot_authenticate_its_peers_never_claims_ready() {
    let key = ClusterKey::generate();
    let (gossip, http_port) = (format!("127.0.0.1:{}", free_port()), free_port());
    // A member of the real cluster, alone, with the odd node as its seed: it gossips to it every round.
    let n1 = start(|c| {
        join_cluster(c, "casd-test", "n1", &key, vec![gossip.clone()], 3);
        let cluster = c.cluster.as_mut().expect("clustered");
        cluster.gossip_interval = GOSSIP;
        cluster.join_timeout = Duration::from_millis(500);
    })
    .await;
    let config = config(|c| {
        join_cluster(c, "casd-test", "odd", &ClusterKey::generate(), vec![gossip_of(&n1)], 3);
        c.http.listen = format!("127.0.0.1:{http_port}").parse().expect("addr");
        let cluster = c.cluster.as_mut().expect("clustered");
        cluster.gossip_addr = gossip.parse().expect("addr");
        cluster.gossip_interval = GOSSIP;
        cluster.join_timeout = Duration::from_secs(1);
    });
    let starting = tokio::spawn(casd::Node::start(config));
    let ready = format!("http://127.0.0.1:{http_port}/cas/ready");
    // Watched for 4 s from its first answer (well past its 1 s join timeout); a loaded machine may take a while to
    // get that far, so the first answer may come as late as 20 s.
    let mut last = (0, String::new());
    let (deadline, mut answering) = (Instant::now() + Duration::from_secs(20), None);
    while Instant::now() < deadline && answering.is_none_or(|since: Instant| since.elapsed() < Duration::from_secs(4)) {
        if let Ok(r) = http().get(&ready).send().await {
            last = (r.status().as_u16(), r.text().await.unwrap_or_default());
            assert_ne!(last.0, 200, "it claimed ready: {last:?}");
            answering.get_or_insert_with(Instant::now);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(last.0, 503, "never ready: {last:?}");
    assert!(last.1.contains("failed authentication"), "says why: {last:?}");
    assert!(!starting.is_finished(), "Node::start still waits for a cluster it can join");
    starting.abort();
    n1.crash().await;
}

/// Authentic gossip arriving from an address that is no member's, seed's or discovered node's (a datagram replayed
/// by a stranger, here relayed) is read, but never answered at that address: a node is no reflector. The cluster
/// still forms, over the members' own addresses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_from_a_strangers_address_is_never_answered_there() {
    let key = ClusterKey::generate();
    let n1 = member("n1", &key, "127.0.0.1:0", vec![]).await;
    let n1_addr = n1.cluster().expect("c").gossip_addr();
    let relay = std::sync::Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
    let relay_addr = relay.local_addr().expect("addr");
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let relaying = {
        let (relay, answered) = (relay.clone(), answered.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            while let Ok((n, from)) = relay.recv_from(&mut buf).await {
                if from == n1_addr {
                    answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                } else {
                    let _ = relay.send_to(&buf[..n], n1_addr).await;
                }
            }
        })
    };
    // n3 knows n1 only through the relay: n1 receives n3's gossip from the relay's address.
    let n3 = member("n3", &key, "127.0.0.1:0", vec![relay_addr.to_string()]).await;
    wait_until(Duration::from_secs(10), "n1 and n3 to see each other", || async {
        view_names(&n1).contains(&"n3".to_owned()) && view_names(&n3).contains(&"n1".to_owned())
    })
    .await;
    tokio::time::sleep(GOSSIP * 5).await;
    assert_eq!(answered.load(std::sync::atomic::Ordering::Relaxed), 0, "n1 sent gossip to the stranger's address");
    assert!(n1.cluster().expect("c").dropped().unknown_destination >= 1, "and counted what it did not send");
    relaying.abort();
    for n in [n1, n3] {
        n.crash().await;
    }
}

/// Garbage, authentic-but-undecodable and replayed datagrams are dropped and counted; the node carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_replayed_datagrams_are_dropped_and_counted() {
    let key = ClusterKey::generate();
    let n1 = member("n1", &key, "127.0.0.1:0", vec![]).await;
    let target = n1.cluster().expect("c").gossip_addr();
    let probe = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    probe.send_to(b"definitely not a sealed frame", target).await.expect("send");
    let sealer = Sealer::new(&key, "casd-test", "probe", casd::clock::now_ms());
    let frame = sealer.seal(Purpose::Gossip, b"authentic but not chitchat", casd::clock::now_ms());
    probe.send_to(&frame, target).await.expect("send");
    probe.send_to(&frame, target).await.expect("send again");
    wait_until(Duration::from_secs(5), "one malformed, one undecodable and one replayed drop", || async {
        let d = n1.cluster().expect("c").dropped();
        d.malformed >= 2 && d.replayed >= 1
    })
    .await;
    let n2 = member("n2", &key, "127.0.0.1:0", vec![target.to_string()]).await;
    wait_until(Duration::from_secs(10), "the node to keep gossiping", || async { view_names(&n1).len() == 2 }).await;
    for n in [n1, n2] {
        n.crash().await;
    }
}
