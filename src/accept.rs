//! Accepting TCP connections, the same way for every listener (HTTP, replication): until a stop, with
//! `TCP_NODELAY` (requests and replies are small), and with a pause after a failed accept, which is most likely the
//! process out of file descriptors: retrying at once spins a core while nothing can be accepted anyway.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

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
