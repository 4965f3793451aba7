//! Load benchmark of one casd node over real HTTP on loopback, against a bare axum baseline measured in the same run.
//!
//! `cargo bench --bench load` (release build). Prints a Markdown table. Phases:
//! 1. baseline: a bare axum handler doing one DashMap lookup, hit by the same client with the same concurrency;
//! 2. `/serviceValidate`: each request consumes a distinct ST issued beforehand by SSO (not timed);
//! 3. full login cycle: GET the form, POST credentials (argon2id), validate the ST.
//!
//! Env: `CASD_BENCH_REQUESTS` (validate requests, default 20000), `CASD_BENCH_CONCURRENCY` (default 32),
//! `CASD_BENCH_LOGINS` (login cycles, default 200), `CASD_BENCH_NODES` (default 1; with 3, a loopback cluster behind
//! a round-robin "load balancer": each step of a flow goes to the next node, so every validation is forwarded to
//! the ticket's owner). Never run as a test: figures go into notes, not assertions.

#[path = "support.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use dashmap::DashMap;

const APP: &str = "http://127.0.0.1:9/app";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Sends one GET per url with `concurrency` workers; checks every body with `ok`.
async fn drive(
    client: &reqwest::Client,
    urls: Vec<String>,
    concurrency: usize,
    ok: fn(&str) -> bool,
) -> support::Stats {
    let urls = Arc::new(urls);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, urls, next) = (client.clone(), urls.clone(), next.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(url) = urls.get(i) else { break };
                    let t = Instant::now();
                    let body = client.get(url).send().await.expect("request").text().await.expect("body");
                    latencies.push(t.elapsed());
                    assert!(ok(&body), "unexpected answer: {body}");
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.expect("worker"));
    }
    support::Stats::new(all, start.elapsed())
}

async fn bare_lookup(
    State(map): State<Arc<DashMap<String, String>>>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> String {
    let user = q.get("ticket").and_then(|t| map.get(t).map(|v| v.clone())).unwrap_or_default();
    format!("<cas:user>{user}</cas:user>")
}

async fn start_bare() -> String {
    let map: Arc<DashMap<String, String>> = Arc::new(DashMap::new());
    for i in 0..1000 {
        map.insert(format!("ST-{i}"), "casuser".into());
    }
    let app = axum::Router::new().route("/lookup", axum::routing::get(bare_lookup)).with_state(map);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/lookup", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    url
}

fn header(page: &reqwest::Response, name: &str) -> Option<String> {
    page.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

fn ticket_in(location: &str) -> String {
    let url = url::Url::parse(location).expect("location");
    url.query_pairs().find(|(k, _)| k == "ticket").map(|(_, v)| v.into_owned()).expect("ticket")
}

/// One full login cycle: form, POST, validate, each step on the next node. Returns its latency.
async fn login_cycle(client: &reqwest::Client, bases: &[String], k: usize) -> Duration {
    let t = Instant::now();
    let base = &bases[k % bases.len()];
    let form = client.get(format!("{base}/login?service={APP}")).send().await.expect("form");
    let html = form.text().await.expect("html");
    let lt = html.split("name=\"lt\" value=\"").nth(1).and_then(|r| r.split('"').next()).expect("lt").to_owned();
    let fields = [("username", "casuser"), ("password", "Mellon"), ("lt", lt.as_str()), ("service", APP)];
    let base = &bases[(k + 1) % bases.len()];
    let post = client.post(format!("{base}/login")).form(&fields).send().await.expect("post");
    let st = ticket_in(&header(&post, "location").expect("redirect"));
    let base = &bases[(k + 2) % bases.len()];
    let body = client
        .get(format!("{base}/serviceValidate"))
        .query(&[("service", APP), ("ticket", &st)])
        .send()
        .await
        .expect("validate")
        .text()
        .await
        .expect("body");
    assert!(body.contains("<cas:user>casuser</cas:user>"), "{body}");
    t.elapsed()
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(run());
}

async fn run() {
    let requests = env_usize("CASD_BENCH_REQUESTS", 20_000);
    let concurrency = env_usize("CASD_BENCH_CONCURRENCY", 32);
    let logins = env_usize("CASD_BENCH_LOGINS", 200);

    let node_count = env_usize("CASD_BENCH_NODES", 1);
    let nodes = support::nodes(node_count).await;
    let bases: Vec<String> = nodes.iter().map(|n| n.base_url()).collect();
    let base = bases[0].clone();
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(concurrency)
        .build()
        .expect("client");

    // Baseline.
    let bare = start_bare().await;
    let urls = (0..requests).map(|i| format!("{bare}?ticket=ST-{}", i % 1000)).collect();
    let baseline = drive(&client, urls, concurrency, |b| b.contains("casuser")).await;

    // Issue the STs by SSO (untimed), then validate each once.
    let form = client.get(format!("{base}/login")).send().await.expect("form").text().await.expect("html");
    let lt = form.split("name=\"lt\" value=\"").nth(1).and_then(|r| r.split('"').next()).expect("lt").to_owned();
    let login = client
        .post(format!("{base}/login"))
        .form(&[("username", "casuser"), ("password", "Mellon"), ("lt", lt.as_str())])
        .send()
        .await
        .expect("login");
    let tgc = header(&login, "set-cookie").expect("cookie");
    let tgc = tgc.split(';').next().expect("cookie pair").to_owned();
    let issue_start = Instant::now();
    let mut tickets = Vec::with_capacity(requests);
    for i in 0..requests {
        let issuer = &bases[i % bases.len()];
        let r = client.get(format!("{issuer}/login?service={APP}")).header("Cookie", &tgc).send().await.expect("sso");
        tickets.push(ticket_in(&header(&r, "location").expect("redirect")));
    }
    let issue_rate = requests as f64 / issue_start.elapsed().as_secs_f64();
    let urls = tickets
        .iter()
        .enumerate()
        .map(|(i, st)| format!("{}/serviceValidate?service={APP}&ticket={st}", bases[(i + 1) % bases.len()]))
        .collect();
    let validate = drive(&client, urls, concurrency, |b| b.contains("<cas:user>casuser</cas:user>")).await;

    // Full login cycles with a few parallel browsers (argon2id dominates).
    let start = Instant::now();
    let parallel = 4.min(logins.max(1));
    let workers: Vec<_> = (0..parallel)
        .map(|w| {
            let (client, bases) = (client.clone(), bases.clone());
            tokio::spawn(async move {
                let mut l = Vec::new();
                for k in (w..logins).step_by(parallel) {
                    l.push(login_cycle(&client, &bases, k).await);
                }
                l
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for w in workers {
        latencies.extend(w.await.expect("worker"));
    }
    let cycles = support::Stats::new(latencies, start.elapsed());

    let what =
        if node_count > 1 { format!("{node_count}-node loopback cluster, round robin") } else { "single node".into() };
    println!("\n## casd load: {what} ({} cores, concurrency {concurrency})\n", num_cpus());
    println!("| phase | requests | req/s | p50 | p99 |");
    println!("|---|---:|---:|---:|---:|");
    for (name, s) in [
        ("bare axum + DashMap lookup", &baseline),
        ("/serviceValidate", &validate),
        ("login cycle (form+POST+validate, 4 browsers)", &cycles),
    ] {
        s.row(name);
    }
    println!("\nvalidate / baseline throughput: {:.1} %", 100.0 * validate.per_second() / baseline.per_second());
    println!("ST issuance by SSO (sequential, one client): {issue_rate:.0} tickets/s");
    for n in nodes {
        n.shutdown().await;
    }
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}
