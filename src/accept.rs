//! Accepting TCP connections, the same way for every listener (HTTP, replication): until a stop, with
//! `TCP_NODELAY` (requests and replies are small), and with a pause after a failed accept, which is most likely the
//! process out of file descriptors: retrying at once spins a core while nothing can be accepted anyway.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// How long a bind keeps trying while its address is in use.
const BIND_PATIENCE: Duration = Duration::from_secs(5);

/// Binds `bind` to an address, trying again for up to `BIND_PATIENCE` while the address is in use. A node restarted
/// right after a crash (systemd's `Restart=`, a `kill -9` and start) can find its previous process's sockets still
/// being torn down: issue 13 saw 2 of 3 restarts 30 ms after `kill -9` exit with "Address already in use".
/// (tokio's listeners already set `SO_REUSEADDR`, so connections in TIME_WAIT do not block the bind.)
pub async fn bind_patiently<T, F, Fut>(mut bind: F) -> std::io::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::io::Result<T>>,
{
    let deadline = tokio::time::Instant::now() + BIND_PATIENCE;
    loop {
        match bind().await {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tokio::time::Instant::now() < deadline => {
                tracing::info!(error = %e, "address in use; trying again");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

/// The next connection, or `None` once `stop` is cancelled. `listener` names it in the log.
pub async fn next_connection(
    listener: &TcpListener,
    stop: &CancellationToken,
    name: &str,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.cancelled() => return None,
        };
        match accepted {
            Ok((stream, from)) => {
                let _ = stream.set_nodelay(true);
                return Some((stream, from));
            }
            Err(e) => {
                tracing::warn!(listener = name, error = %e, "accept failed; backing off");
                tokio::select! {
                    _ = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                    _ = stop.cancelled() => return None,
                }
            }
        }
    }
}
