//! Graceful stop: a request in flight when the node is told to stop still gets its whole answer, on plain http and
//! on TLS alike, while new connections are refused; and the drain is bounded.

use std::time::{Duration, Instant};

use crate::support::*;

const APP: &str = "https://127.0.0.1:9/app";

/// Starts a `/serviceValidate` whose pgtUrl callback answers only after `callback_delay`, then stops the node while
/// the validation waits on it. Returns the validation's body and how long the stop took.
async fn stop_during_a_validation(tls: bool, callback_delay: Duration, drain: Duration) -> (Option<String>, Duration) {
    let ca = TestCa::new();
    let callback = HttpsApp::start_slow(200, &ca, callback_delay).await;
    let dir = std::env::temp_dir().join(format!("casd-drain-{}-{tls}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let node = start(|c| {
        c.proxy.extra_ca_file = Some(ca.pem_file.clone());
        c.http.drain_timeout = drain;
        if tls {
            let (cert, key) = ca.leaf_pem();
            let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
            std::fs::write(&cert_file, cert).expect("cert");
            std::fs::write(&key_file, key).expect("key");
            c.http.allow_plain_http = false;
            c.http.tls = Some(casd::config::TlsConfig { cert_file, key_file });
        }
    })
    .await;
    let client = if tls { ca.client() } else { http() };
    let mut b = Browser { base: node.base_url(), client: client.clone(), tgc: None };
    let st = b.login(APP).await;
    let url = format!("{}/serviceValidate", node.base_url());
    let query = [("service", APP), ("ticket", st.as_str()), ("pgtUrl", callback.url.as_str())];
    let in_flight = tokio::spawn(client.get(url).query(&query).send());
    wait_until(Duration::from_secs(5), "the callback to be under way", || async {
        callback.seen.lock().expect("lock").is_empty() && started_callback(&callback)
    })
    .await;
    let stopping = Instant::now();
    let base = node.base_url();
    let stop = tokio::spawn(node.shutdown());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let refused = client.get(format!("{base}/login")).timeout(Duration::from_secs(2)).send().await;
    assert!(refused.is_err(), "a stopping node accepts no new connection");
    stop.await.expect("stop");
    let took = stopping.elapsed();
    // The stop returned: whatever the request got, it got it by now (its bytes are sent, or its connection dropped).
    let answer = match tokio::time::timeout(Duration::from_millis(200), in_flight).await {
        Ok(joined) => match joined.expect("join") {
            Ok(response) => response.text().await.ok(),
            Err(_) => None,
        },
        Err(_) => panic!("the stop returned while a request was still in flight"),
    };
    (answer, took)
}

/// The callback server has accepted the node's connection (it records a request only once it answers).
fn started_callback(callback: &HttpsApp) -> bool {
    callback.accepted.load(std::sync::atomic::Ordering::Relaxed) > 0
}

#[tokio::test]
async fn a_request_in_flight_finishes_when_a_plain_node_stops() {
    let (answer, _) = stop_during_a_validation(false, Duration::from_millis(800), Duration::from_secs(10)).await;
    let body = answer.expect("the in-flight validation got its answer");
    assert!(body.contains("<cas:proxyGrantingTicket>"), "{body}");
}

#[tokio::test]
async fn a_request_in_flight_finishes_when_a_tls_node_stops() {
    let (answer, _) = stop_during_a_validation(true, Duration::from_millis(800), Duration::from_secs(10)).await;
    let body = answer.expect("the in-flight validation got its answer");
    assert!(body.contains("<cas:proxyGrantingTicket>"), "{body}");
}

/// A request slower than `http.drain_timeout` does not hold the stop: its connection is dropped at the bound.
#[tokio::test]
async fn the_drain_is_bounded() {
    let (answer, took) = stop_during_a_validation(false, Duration::from_secs(8), Duration::from_millis(500)).await;
    assert!(answer.is_none(), "the slow request was cut off: {answer:?}");
    assert!(took < Duration::from_secs(4), "the stop waited {took:?}, past its 500 ms drain bound");
}

/// A node restarted while its address is still held (its previous process's sockets being torn down after a crash)
/// waits for the address instead of exiting, and serves once it is free.
#[tokio::test]
async fn a_restart_waits_for_its_address() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = holder.local_addr().expect("addr");
    let starting = tokio::spawn(casd::Node::start(config(|c| c.http.listen = addr)));
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!starting.is_finished(), "still waiting for the address, not failed");
    drop(holder);
    let node = tokio::time::timeout(Duration::from_secs(10), starting)
        .await
        .expect("starts once the address is free")
        .expect("task")
        .expect("node starts");
    let health = http().get(format!("http://{addr}/cas/health")).send().await.expect("request");
    assert_eq!(health.status(), 200);
    node.crash().await;
}
