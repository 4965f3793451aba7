//! The HTTP listener, plain or TLS alike: accepts connections, serves each with hyper and the router (with the
//! client's address as `ConnectInfo`), and on stop lets requests in flight finish while refusing new ones.
//!
//! No client can hold the node: at most `max_connections` are served at once (past that a new connection is
//! closed at once, and the cap stays below the process's file-descriptor limit), a request head must arrive
//! whole within `header_timeout` (which also closes keep-alive connections idle that long), and a request must be
//! answered within `request_timeout`. HTTP/2 gets the same cap, a bound on concurrent streams and keep-alive pings.

use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::accept::next_connection;
use crate::tls::TlsReloader;

/// A client that has not finished its handshake by then is dropped, so slow clients cannot hold connections.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// File descriptors kept free of HTTP connections: replication links, SLO and proxy callbacks, the listeners.
const RESERVED_FDS: usize = 256;
/// Streams one HTTP/2 connection may have open at once.
const H2_MAX_STREAMS: u32 = 100;

/// How much one client may take of the listener (`[http]` in the config).
#[derive(Clone, Debug)]
pub struct HttpLimits {
    pub max_connections: usize,
    /// Connections one client address may hold at once, so that one host cannot fill `max_connections` for
    /// everyone. Trusted proxies (a load balancer speaks for many clients) are exempt.
    pub max_connections_per_address: usize,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub header_timeout: Duration,
    pub request_timeout: Duration,
}

impl HttpLimits {
    /// `max_connections`, or fewer when the process may not open that many files: a connection refused at the cap
    /// costs nothing, one refused by the kernel for want of descriptors starves everything else.
    pub fn effective_max_connections(&self) -> usize {
        match open_files_limit() {
            Some(limit) if limit < self.max_connections + RESERVED_FDS => {
                let capped = limit.saturating_sub(RESERVED_FDS).max(16);
                tracing::warn!(
                    limit,
                    capped,
                    configured = self.max_connections,
                    "the open-files limit is low for http.max_connections; raise it (LimitNOFILE)"
                );
                capped
            }
            _ => self.max_connections,
        }
    }
}

/// Connections held per client address, so that one host cannot take them all.
struct PerAddress {
    limit: usize,
    exempt: Vec<ipnet::IpNet>,
    held: dashmap::DashMap<std::net::IpAddr, usize>,
}

/// One connection counted against its address; dropping it gives the place back.
struct Held {
    table: Arc<PerAddress>,
    ip: Option<std::net::IpAddr>,
}

impl PerAddress {
    fn take(table: &Arc<PerAddress>, ip: std::net::IpAddr) -> Option<Held> {
        if table.exempt.iter().any(|net| net.contains(&ip)) {
            return Some(Held { table: table.clone(), ip: None });
        }
        let mut count = table.held.entry(ip).or_insert(0);
        if *count >= table.limit {
            return None;
        }
        *count += 1;
        Some(Held { table: table.clone(), ip: Some(ip) })
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(ip) = self.ip {
            self.table.held.remove_if_mut(&ip, |_, count| {
                *count -= 1;
                *count == 0
            });
        }
    }
}

/// The soft limit on open files, from /proc (Linux); `None` elsewhere or when unlimited.
fn open_files_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// When a listener stops: `graceful` stops accepting and lets each connection finish its request in flight;
/// `abort`, cancelled once the drain bound has passed, drops the connections still open.
#[derive(Clone)]
pub struct Stops {
    pub graceful: CancellationToken,
    pub abort: CancellationToken,
}

/// Serves `router` on `listener` until `stops.graceful` is cancelled; over TLS when `tls` is given. Each connection
/// runs on `connections`, so a stop can wait for them to drain.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<TlsReloader>>,
    limits: HttpLimits,
    stops: Stops,
    connections: TaskTracker,
) {
    let stop = stops.graceful.clone();
    let slots = Arc::new(Semaphore::new(limits.effective_max_connections()));
    let per_address = Arc::new(PerAddress {
        limit: limits.max_connections_per_address,
        exempt: limits.trusted_proxies.clone(),
        held: dashmap::DashMap::new(),
    });
    let request_timeout = limits.request_timeout;
    while let Some((stream, client)) = next_connection(&listener, &stop, "http").await {
        let Some(held) = PerAddress::take(&per_address, client.ip()) else {
            tracing::debug!(%client, "connection refused: http.max_connections_per_address reached");
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%client, "connection refused: http.max_connections reached");
            continue;
        };
        let slot = (slot, held);
        let app = ConnectionService { router: router.clone(), client, request_timeout };
        let stops = stops.clone();
        let header_timeout = limits.header_timeout;
        match &tls {
            None => {
                connections.spawn(async move {
                    serve_connection(stream, app, client, header_timeout, stops).await;
                    drop(slot);
                });
            }
            Some(tls) => {
                let Some(acceptor) = tls.acceptor() else { continue };
                connections.spawn(async move {
                    let _slot = slot;
                    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%client, error = %e, "tls handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                    serve_connection(stream, app, client, header_timeout, stops).await;
                });
            }
        }
    }
}

/// Serves one connection; on a graceful stop, the request in flight finishes and the connection closes.
async fn serve_connection<S>(
    stream: S,
    app: ConnectionService,
    client: SocketAddr,
    header_timeout: Duration,
    stops: Stops,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_STREAMS)
        .keep_alive_interval(Some(header_timeout))
        .keep_alive_timeout(Duration::from_secs(10));
    let mut connection = pin!(builder.serve_connection(TokioIo::new(stream), app));
    let outcome = tokio::select! {
        outcome = connection.as_mut() => outcome,
        _ = stops.graceful.cancelled() => {
            connection.as_mut().graceful_shutdown();
            tokio::select! {
                outcome = connection.as_mut() => outcome,
                _ = stops.abort.cancelled() => return,
            }
        }
    };
    if let Err(e) = outcome {
        tracing::debug!(%client, error = %e, "connection ended with an error");
    }
}

/// The router as one connection's hyper service: it puts the client's address into each request (as
/// `ConnectInfo`, which the handlers extract) and answers 503 when a request takes longer than `request_timeout` (a
/// body trickling in counts). Done here rather than as router layers: a layer added per connection rebuilt every
/// route at each accept, and a `from_fn` layer cost each request a boxed future and a clone of the whole router.
#[derive(Clone)]
struct ConnectionService {
    router: Router,
    client: SocketAddr,
    request_timeout: Duration,
}

impl hyper::service::Service<hyper::Request<hyper::body::Incoming>> for ConnectionService {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn call(&self, mut request: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        use axum::response::IntoResponse;
        use tower_service::Service;
        request.extensions_mut().insert(ConnectInfo::<SocketAddr>(self.client));
        let (mut router, limit) = (self.router.clone(), self.request_timeout);
        Box::pin(async move {
            match tokio::time::timeout(limit, router.call(request)).await {
                Ok(response) => response,
                Err(_) => Ok((axum::http::StatusCode::SERVICE_UNAVAILABLE, "request took too long\n").into_response()),
            }
        })
    }
}
