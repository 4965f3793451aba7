//! `casd-load`: the load client of `scripts/bench`, a process of its own so that the figures are not those of a
//! client sharing the server's runtime (or a Python client's GIL).
//!
//! Keep-alive HTTP/1.1 over hyper, one connection per worker and target. Closed loop (every worker sends its next
//! request when the last one answered) or open loop (`--rate`: request i is due at start + i/rate whatever the
//! answers; its latency counts from when it was due, so a stall is not hidden by the client waiting on it).
//! Prints one JSON line per run for `scripts/bench`.
//!
//!   casd-load bare [--listen ADDR]                 a bare axum handler doing one DashMap lookup (the baseline)
//!   casd-load lookup --url URL ...                 GETs URL?ticket=ST-<i % 1000> against `bare`
//!   casd-load validate --issue URL[,URL..] ...     issues one ST per request by SSO (untimed), then validates each
//!   casd-load cycle --issue URL[,URL..] ...        SSO issue + validation, timed together

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use dashmap::DashMap;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

#[derive(Parser)]
#[command(about = "Load client for casd benches (keep-alive HTTP/1.1, closed or open loop)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the bare baseline: GET /lookup?ticket=ST-n answers with one DashMap lookup.
    Bare {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
    /// Load the bare baseline.
    Lookup {
        #[arg(long)]
        url: String,
        #[command(flatten)]
        load: Load,
    },
    /// Validate distinct service tickets, issued beforehand by SSO (not timed).
    Validate {
        #[command(flatten)]
        cas: Cas,
        #[command(flatten)]
        load: Load,
    },
    /// A password login (the login form, then the credentials): one timed cycle.
    Login {
        #[command(flatten)]
        cas: Cas,
        #[command(flatten)]
        load: Load,
    },
    /// Issue a service ticket by SSO and validate it: one timed cycle.
    Cycle {
        #[command(flatten)]
        cas: Cas,
        #[command(flatten)]
        load: Load,
    },
}

#[derive(Args, Clone)]
struct Load {
    /// Requests (cycles) in all.
    #[arg(long, default_value_t = 20_000)]
    requests: usize,
    /// Connections (workers) per target.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Open loop at this many requests per second; closed loop when absent.
    #[arg(long)]
    rate: Option<f64>,
    /// A name for the JSON line.
    #[arg(long, default_value = "run")]
    name: String,
    /// Server processes whose CPU time (user + system, from /proc) over the timed part is reported per operation.
    #[arg(long, value_delimiter = ',')]
    cpu_of: Vec<u32>,
}

/// User + system CPU time of `pids`, in clock ticks (100 per second on Linux).
fn cpu_ticks(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| {
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .sum()
}

#[derive(Args, Clone)]
struct Cas {
    /// CAS base URLs (`http://127.0.0.1:8080/cas`) where tickets are issued, one after the other per worker.
    #[arg(long, value_delimiter = ',', required = true)]
    issue: Vec<String>,
    /// Where tickets are validated; by default the URL that issued them (the owner, directly).
    #[arg(long)]
    via: Option<String>,
    #[arg(long, default_value = "http://127.0.0.1:9/app")]
    service: String,
    #[arg(long, default_value = "casuser")]
    user: String,
    #[arg(long, default_value = "Mellon")]
    password: String,
}

/// One keep-alive connection to one origin.
struct Conn {
    host: String,
    send: SendRequest<Full<Bytes>>,
}

/// Splits `http://host:port/path` into the address and the path prefix.
fn origin(url: &str) -> anyhow::Result<(String, String)> {
    let rest = url.strip_prefix("http://").ok_or_else(|| anyhow!("{url}: only http:// URLs"))?;
    let (host, path) = rest.split_once('/').map_or((rest, ""), |(h, p)| (h, p));
    Ok((host.to_owned(), format!("/{path}").trim_end_matches('/').to_owned()))
}

impl Conn {
    async fn open(host: &str) -> anyhow::Result<Self> {
        let tcp = tokio::net::TcpStream::connect(host).await.with_context(|| format!("connect {host}"))?;
        tcp.set_nodelay(true)?;
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        Ok(Self { host: host.to_owned(), send })
    }

    /// One request; the status, the headers the caller asks for, and the body.
    async fn call(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<String>,
    ) -> anyhow::Result<(u16, hyper::HeaderMap, Bytes)> {
        let mut req = hyper::Request::builder().method(method).uri(path).header("host", &self.host);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        if self.send.ready().await.is_err() {
            // The server closed the keep-alive connection (a proxy's per-connection request limit): dial again.
            *self = Self::open(&self.host).await?;
        }
        let resp = self.send.send_request(req).await?;
        let (parts, body) = resp.into_parts();
        Ok((parts.status.as_u16(), parts.headers, body.collect().await?.to_bytes()))
    }
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = text.find(start)? + start.len();
    text[from..].find(end).map(|to| &text[from..from + to])
}

impl Cas {
    /// A password login on `base`; the ticket-granting cookie value.
    async fn login(&self, base: &str) -> anyhow::Result<String> {
        Target::open(base).await?.login(self).await
    }
}

/// A worker's way to one CAS node: its connection and path prefix.
struct Target {
    conn: Conn,
    prefix: String,
}

impl Target {
    async fn open(base: &str) -> anyhow::Result<Self> {
        let (host, prefix) = origin(base)?;
        Ok(Self { conn: Conn::open(&host).await?, prefix })
    }

    /// SSO: a service ticket for `service` under the session `tgc`.
    async fn issue(&mut self, service: &str, tgc: &str) -> anyhow::Result<String> {
        let path = format!("{}/login?service={}", self.prefix, enc(service));
        let cookie = format!("TGC={tgc}");
        let (status, headers, _) = self.conn.call("GET", &path, &[("cookie", &cookie)], None).await?;
        let location = headers.get("location").and_then(|v| v.to_str().ok()).unwrap_or_default();
        let ticket = location.split("ticket=").nth(1).map(|t| t.split('&').next().unwrap_or(t));
        ticket.map(str::to_owned).ok_or_else(|| anyhow!("SSO gave no ticket ({status})"))
    }

    /// A password login on this connection: the form (for its login ticket), then the credentials. The
    /// ticket-granting cookie value.
    async fn login(&mut self, cas: &Cas) -> anyhow::Result<String> {
        let path = format!("{}/login?service={}", self.prefix, enc(&cas.service));
        let (status, _, page) = self.conn.call("GET", &path, &[], None).await?;
        let page = String::from_utf8_lossy(&page);
        let lt = between(&page, "name=\"lt\" value=\"", "\"").ok_or_else(|| anyhow!("no login form ({status})"))?;
        let form = format!(
            "username={}&password={}&lt={}&service={}",
            enc(&cas.user),
            enc(&cas.password),
            enc(lt),
            enc(&cas.service)
        );
        let headers = [("content-type", "application/x-www-form-urlencoded")];
        let (status, headers, _) =
            self.conn.call("POST", &format!("{}/login", self.prefix), &headers, Some(form)).await?;
        let cookie = headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|v| v.split(';').next()?.strip_prefix("TGC=").map(str::to_owned));
        cookie.ok_or_else(|| anyhow!("login refused ({status})"))
    }

    async fn validate(&mut self, service: &str, ticket: &str) -> anyhow::Result<()> {
        let path = format!("{}/serviceValidate?service={}&ticket={ticket}", self.prefix, enc(service));
        let (_, _, body) = self.conn.call("GET", &path, &[], None).await?;
        if body.windows(10).any(|w| w == b"<cas:user>") {
            Ok(())
        } else {
            bail!("validation failed: {}", String::from_utf8_lossy(&body))
        }
    }
}

/// Errors printed so far: the first few say what went wrong, the count says the rest.
static PRINTED: AtomicUsize = AtomicUsize::new(0);

/// When request `i` is due: at once in a closed loop, at start + i/rate in an open one.
fn due(start: Instant, rate: Option<f64>, i: usize) -> Instant {
    rate.map_or(start, |r| start + Duration::from_secs_f64(i as f64 / r))
}

/// Latencies in microseconds, errors, elapsed time: the JSON line.
fn report(load: &Load, mut latencies: Vec<u32>, errors: usize, elapsed: Duration, cpu_ticks: u64) {
    let (name, rate) = (&load.name, load.rate);
    latencies.sort_unstable();
    let pct = |p: f64| latencies.get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)));
    let line = serde_json::json!({
        "name": name,
        "ok": latencies.len(),
        "errors": errors,
        "seconds": elapsed.as_secs_f64(),
        "per_s": latencies.len() as f64 / elapsed.as_secs_f64(),
        "rate": rate,
        "p50_us": pct(0.50),
        "p99_us": pct(0.99),
        "p999_us": pct(0.999),
        "max_us": latencies.last(),
        "server_cpu_us": (cpu_ticks as f64 * 10_000.0) / latencies.len().max(1) as f64,
    });
    println!("{line}");
}

/// Runs `load.requests` calls of `step` over `workers` workers, each with its own state; returns the latencies.
async fn drive<S, F>(load: &Load, states: Vec<S>, step: F) -> (Vec<u32>, usize, Duration, u64)
where
    S: Send + 'static,
    F: for<'a> Fn(&'a mut S, usize) -> futures_util::future::BoxFuture<'a, anyhow::Result<()>> + Send + Sync + 'static,
{
    let step = Arc::new(step);
    let next = Arc::new(AtomicUsize::new(0));
    let cpu_before = cpu_ticks(&load.cpu_of);
    let start = Instant::now();
    let (total, rate) = (load.requests, load.rate);
    let workers: Vec<_> = states
        .into_iter()
        .map(|mut state| {
            let (step, next) = (step.clone(), next.clone());
            tokio::spawn(async move {
                let (mut latencies, mut errors) = (Vec::new(), 0usize);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    let at = due(start, rate, i);
                    tokio::time::sleep_until(at.into()).await;
                    let began = if rate.is_some() { at } else { Instant::now() };
                    match step(&mut state, i).await {
                        Ok(()) => latencies.push(began.elapsed().as_micros().min(u32::MAX as u128) as u32),
                        Err(e) => {
                            errors += 1;
                            if PRINTED.fetch_add(1, Ordering::Relaxed) < 3 {
                                eprintln!("casd-load: {e:#}");
                            }
                        }
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let (mut all, mut errors) = (Vec::with_capacity(total), 0);
    for w in workers {
        let (l, e) = w.await.expect("worker");
        all.extend(l);
        errors += e;
    }
    let elapsed = start.elapsed();
    (all, errors, elapsed, cpu_ticks(&load.cpu_of) - cpu_before)
}

async fn bare(listen: SocketAddr) -> anyhow::Result<()> {
    async fn lookup(
        axum::extract::State(map): axum::extract::State<Arc<DashMap<String, String>>>,
        axum::extract::Query(q): axum::extract::Query<HashMap<String, String>>,
    ) -> String {
        let user = q.get("ticket").and_then(|t| map.get(t).map(|v| v.clone())).unwrap_or_default();
        format!(
            "<cas:serviceResponse><cas:authenticationSuccess><cas:user>{user}</cas:user></cas:authenticationSuccess></cas:serviceResponse>"
        )
    }
    let map: Arc<DashMap<String, String>> =
        Arc::new((0..1000).map(|i| (format!("ST-{i}"), "casuser".into())).collect());
    let app = axum::Router::new().route("/lookup", axum::routing::get(lookup)).with_state(map);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("http://{}/lookup", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Bare { listen } => bare(listen).await,
        Command::Lookup { url, load } => {
            let (host, path) = origin(&url)?;
            let mut conns = Vec::new();
            for _ in 0..load.connections {
                conns.push((Conn::open(&host).await?, path.clone()));
            }
            let (lat, errors, elapsed, cpu) = drive(&load, conns, |(c, path), i| {
                Box::pin(async move {
                    let (_, _, body) = c.call("GET", &format!("{path}?ticket=ST-{}", i % 1000), &[], None).await?;
                    if body.windows(10).any(|w| w == b"<cas:user>") { Ok(()) } else { bail!("empty lookup") }
                })
            })
            .await;
            report(&load, lat, errors, elapsed, cpu);
            Ok(())
        }
        Command::Validate { cas, load } => {
            let tgc = cas.login(&cas.issue[0]).await?;
            // Issue every ticket first, spread over the issuing URLs, a few connections each.
            let per = load.requests.div_ceil(cas.issue.len());
            let mut issued = Vec::with_capacity(load.requests);
            for base in &cas.issue {
                let mut tasks = Vec::new();
                for w in 0..8 {
                    let (base, service, tgc) = (base.clone(), cas.service.clone(), tgc.clone());
                    let n = per / 8 + usize::from(w < per % 8);
                    tasks.push(tokio::spawn(async move {
                        let mut t = Target::open(&base).await?;
                        let mut out = Vec::with_capacity(n);
                        for _ in 0..n {
                            out.push((base.clone(), t.issue(&service, &tgc).await?));
                        }
                        anyhow::Ok(out)
                    }));
                }
                for t in tasks {
                    issued.extend(t.await??);
                }
            }
            issued.truncate(load.requests);
            let issued = Arc::new(issued);
            let mut states = Vec::new();
            for w in 0..load.connections {
                // Straight to the owner, or through the front.
                let base = cas.via.clone().unwrap_or_else(|| cas.issue[w % cas.issue.len()].clone());
                let mut owned = HashMap::new();
                if cas.via.is_none() {
                    for b in &cas.issue {
                        owned.insert(b.clone(), Target::open(b).await?);
                    }
                } else {
                    owned.insert(String::new(), Target::open(&base).await?);
                }
                states.push((owned, issued.clone(), cas.service.clone()));
            }
            let (lat, errors, elapsed, cpu) = drive(&load, states, |(owned, issued, service), i| {
                Box::pin(async move {
                    let (base, ticket) = &issued[i];
                    let target = match owned.get_mut(base) {
                        Some(t) => t,
                        None => owned.values_mut().next().ok_or_else(|| anyhow!("no target"))?,
                    };
                    target.validate(service, ticket).await
                })
            })
            .await;
            report(&load, lat, errors, elapsed, cpu);
            Ok(())
        }
        Command::Login { cas, load } => {
            let mut states = Vec::new();
            for w in 0..load.connections {
                states.push((Target::open(&cas.issue[w % cas.issue.len()]).await?, cas.clone()));
            }
            let (lat, errors, elapsed, cpu) =
                drive(&load, states, |(target, cas), _| Box::pin(async move { target.login(cas).await.map(drop) }))
                    .await;
            report(&load, lat, errors, elapsed, cpu);
            Ok(())
        }
        Command::Cycle { cas, load } => {
            let mut states = Vec::new();
            for w in 0..load.connections {
                let base = cas.issue[w % cas.issue.len()].clone();
                // One session per worker, as many users would have: grants to one session contend for its entry.
                let tgc = cas.login(&base).await?;
                let issue = Target::open(&base).await?;
                let validate = Target::open(cas.via.as_deref().unwrap_or(&base)).await?;
                states.push((issue, validate, tgc, cas.service.clone()));
            }
            let (lat, errors, elapsed, cpu) = drive(&load, states, |(issue, validate, tgc, service), _| {
                Box::pin(async move {
                    let ticket = issue.issue(service, tgc).await?;
                    validate.validate(service, &ticket).await
                })
            })
            .await;
            report(&load, lat, errors, elapsed, cpu);
            Ok(())
        }
    }
}
