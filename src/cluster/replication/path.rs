//! Noticing a dead path between two nodes. A replication connection kept across a network cut is useless at the
//! heal: every request on it waits for the kernel's next retransmission, which backs off exponentially (issue 13
//! saw `backoff:7 rto:26112` and 21 s of stalled writes after a 30 s cut). So a link is given up as soon as
//! something says its path is dead, and a fresh one is dialled when the peer is back:
//! - the peer leaves this node's live view (gossip's failure detector): its link is closed at once;
//! - a request on the link gets no reply within its timeout: the link is closed, the next request redials;
//! - the kernel itself gives up on unacknowledged data after `USER_TIMEOUT`, and probes an idle connection
//!   (keepalive), so a connection whose peer vanished is closed on both sides even with no traffic.

use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;

/// Data unacknowledged this long aborts the connection. Well above any loopback or LAN round trip, even with a
/// peer's receive buffer full for a while; well below the minutes TCP retries by default.
const USER_TIMEOUT: Duration = Duration::from_secs(5);
/// An idle connection is probed after this long, then every `KEEPALIVE_EVERY`, and closed after
/// `KEEPALIVE_PROBES` unanswered probes: about 6 s for a link or a served connection whose peer is gone.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(3);
const KEEPALIVE_EVERY: Duration = Duration::from_secs(1);
const KEEPALIVE_PROBES: u32 = 3;

/// Sets the kernel's dead-path detection on a replication connection (either end). Failure only loses the
/// kernel's help, so it is logged, not fatal.
pub fn watch_path(stream: &TcpStream) {
    let socket = SockRef::from(stream);
    let keepalive =
        TcpKeepalive::new().with_time(KEEPALIVE_IDLE).with_interval(KEEPALIVE_EVERY).with_retries(KEEPALIVE_PROBES);
    let set = socket.set_tcp_keepalive(&keepalive).and_then(|()| socket.set_tcp_user_timeout(Some(USER_TIMEOUT)));
    if let Err(e) = set {
        tracing::debug!(error = %e, "could not set dead-path detection on a replication connection");
    }
}
