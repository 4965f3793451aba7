//! The HTTP listener, plain or TLS alike: accepts connections, serves each with hyper and the router (with the
//! client's address as `ConnectInfo`), and on stop lets requests in flight finish while refusing new ones.

use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::tls::TlsReloader;

/// A client that has not finished its handshake by then is dropped, so slow clients cannot hold connections.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// After a failed accept (out of file descriptors, most likely), wait this long: retrying at once spins a core
/// while nothing can be accepted anyway.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

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
    stops: Stops,
    connections: TaskTracker,
) {
    let stop = stops.graceful.clone();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.cancelled() => return,
        };
        let (stream, client) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed; backing off");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let app = router.clone().layer(axum::Extension(ConnectInfo::<SocketAddr>(client)));
        let stops = stops.clone();
        match &tls {
            None => {
                connections.spawn(serve_connection(stream, app, client, stops));
            }
            Some(tls) => {
                let Some(acceptor) = tls.acceptor() else { continue };
                connections.spawn(async move {
                    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%client, error = %e, "tls handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                    serve_connection(stream, app, client, stops).await;
                });
            }
        }
    }
}

/// Serves one connection; on a graceful stop, the request in flight finishes and the connection closes.
async fn serve_connection<S>(stream: S, app: Router, client: SocketAddr, stops: Stops)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let builder = Builder::new(TokioExecutor::new());
    let mut connection = pin!(builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app)));
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
