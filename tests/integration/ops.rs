//! What operators rely on: metrics after real traffic, health and readiness, JSON logs without secrets.

use std::time::Duration;

use casd::cluster::seal::ClusterKey;

use crate::support::*;

const APP: &str = "http://127.0.0.1:9/app";

async fn get(url: String) -> (u16, String) {
    let r = http().get(url).send().await.expect("request");
    (r.status().as_u16(), r.text().await.expect("body"))
}

fn metric(body: &str, line_start: &str) -> Option<u64> {
    body.lines().find(|l| l.starts_with(line_start)).and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// After a login, a validation, a replay and a failed login, the counters say exactly that.
#[tokio::test]
async fn metrics_count_real_traffic() {
    let node = start(|_| {}).await;
    let mut b = Browser::new(&node);
    let st = b.login(APP).await;
    call(&node, "/serviceValidate", &[("service", APP), ("ticket", &st)]).await;
    call(&node, "/serviceValidate", &[("service", APP), ("ticket", &st)]).await;
    Browser::new(&node).login_with(Some(APP), "", USER, "wrong").await;
    let (status, body) = get(format!("{}/metrics", node.base_url())).await;
    assert_eq!(status, 200);
    assert!(body.contains("# TYPE casd_logins_total counter"), "{body}");
    for (line, want) in [
        ("casd_logins_total{outcome=\"ok\"}", 1),
        ("casd_logins_total{outcome=\"failed\"}", 1),
        ("casd_tickets_issued_total{kind=\"TGT\"}", 1),
        ("casd_tickets_issued_total{kind=\"ST\"}", 1),
        ("casd_tickets_validated_total{kind=\"ST\"}", 1),
        ("casd_tickets_rejected_total{code=\"INVALID_TICKET\"}", 1),
        ("casd_tickets_live{map=\"TGT\"}", 1),
        ("casd_tickets_live{map=\"ST\"}", 0),
    ] {
        assert_eq!(metric(&body, line), Some(want), "{line} in\n{body}");
    }
    node.shutdown().await;
}

/// Health answers while the process serves; ready turns 503 while a clustered node is leaving; the cluster
/// gauges and replication counters appear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness_follow_the_node() {
    let key = ClusterKey::generate();
    let n1 = start(|c| join_cluster(c, "ops", "casd1", &key, vec![], 1)).await;
    let seeds = vec![n1.cluster().expect("c").gossip_addr().to_string()];
    let n2 = start(|c| join_cluster(c, "ops", "casd2", &key, seeds, 1)).await;
    assert_eq!(get(format!("{}/health", n2.base_url())).await, (200, "ok\n".into()));
    wait_until(Duration::from_secs(5), "n2 ready", || async { get(format!("{}/ready", n2.base_url())).await.0 == 200 })
        .await;
    wait_until(Duration::from_secs(5), "two ready members in n1's metrics", || async {
        metric(&get(format!("{}/metrics", n1.base_url())).await.1, "casd_cluster_members{status=\"ready\"}") == Some(2)
    })
    .await;
    let mut b = Browser::new(&n1);
    b.login(APP).await;
    let body = get(format!("{}/metrics", n1.base_url())).await.1;
    assert!(metric(&body, "casd_replication_acks_total{outcome=\"ok\"}").is_some_and(|n| n >= 1), "{body}");
    assert!(metric(&body, "casd_replication_write_seconds_count").is_some_and(|n| n >= 1), "{body}");
    assert!(body.contains("casd_replication_write_seconds_sum 0."), "{body}");
    let ready_url = format!("{}/ready", n2.base_url());
    let leaving = tokio::spawn(n2.shutdown());
    wait_until(Duration::from_secs(3), "n2 not ready while leaving", || async {
        matches!(get(ready_url.clone()).await, (503, body) if body.contains("leaving"))
    })
    .await;
    leaving.await.expect("leave");
    n1.shutdown().await;
}

/// With `log.format = "json"` every line is a JSON object, and neither the TGT id (the cookie) nor the ST nor the
/// password appears in the log, though the login and logout are logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_never_show_tickets_cookies_or_passwords() {
    let dir = std::env::temp_dir().join(format!("casd-logs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("json.toml");
    let text = casd::config::EMBEDDED_DEFAULT
        .replace("listen = \"127.0.0.1:8080\"", "listen = \"127.0.0.1:0\"")
        .replace("format = \"human\"", "format = \"json\"");
    std::fs::write(&config, text).expect("write");
    let ServingBinary { mut child, lines, base } = ServingBinary::start(&config);
    let mut b = Browser { base, client: http(), tgc: None };
    let st = b.login(APP).await;
    let tgc = b.tgc.clone().expect("tgc");
    b.get("/logout").await;
    let _ = child.kill();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let _ = child.wait();
    let log = rest.join("\n");
    for line in &rest {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
    }
    assert!(log.contains("login succeeded") && log.contains("TGT-#"), "the login is logged, redacted:\n{log}");
    for secret in [tgc.as_str(), &tgc[4..20], st.as_str(), PASSWORD] {
        assert!(!log.contains(secret), "{secret} leaked into the log:\n{log}");
    }
}

/// Outside the demo, the endpoints that show a node's insides are not served to anyone on the public port: 404
/// without a token configured, 401 without the right bearer token, 200 with it. Health and readiness stay open.
#[tokio::test]
async fn metrics_and_cluster_pages_need_the_ops_token_outside_the_demo() {
    let closed = start(|c| c.is_demo = false).await;
    assert_eq!(get(format!("{}/metrics", closed.base_url())).await.0, 404);
    assert_eq!(get(format!("{}/health", closed.base_url())).await.0, 200);
    assert_eq!(get(format!("{}/ready", closed.base_url())).await.0, 200);
    closed.shutdown().await;
    let token = "an-ops-token-long-enough";
    let guarded = start(|c| {
        c.is_demo = false;
        c.ops.token = Some(casd::config::Secret(token.into()));
    })
    .await;
    let url = format!("{}/metrics", guarded.base_url());
    assert_eq!(get(url.clone()).await.0, 401);
    let wrong = http().get(&url).bearer_auth("an-ops-token-long-enougH").send().await.expect("request");
    assert_eq!(wrong.status().as_u16(), 401);
    let right = http().get(&url).bearer_auth(token).send().await.expect("request");
    assert_eq!(right.status().as_u16(), 200);
    assert!(right.text().await.expect("body").contains("casd_logins_total"));
    guarded.shutdown().await;
}
