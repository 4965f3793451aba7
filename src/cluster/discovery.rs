//! LAN discovery: every node sends a sealed beacon (cluster id, node name, gossip address) to a multicast group at a
//! fixed interval, and hands the gossip address of every authentic beacon from another node to chitchat. Beacons
//! keep flowing, so two halves of a healed partition find each other again without seeds.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::drops::DropCounters;
use super::seal::{Opener, Purpose, Sealer};
use crate::clock::now_ms;

/// LAN discovery by sealed multicast beacons (`[cluster.multicast]` in the config file).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MulticastSettings {
    pub enabled: bool,
    pub group: Ipv4Addr,
    pub port: u16,
    pub ttl: u32,
    #[serde(with = "humantime_serde")]
    pub interval: std::time::Duration,
    /// Local interface address to send and join on; unspecified = the system's choice.
    pub interface: Ipv4Addr,
}

impl Default for MulticastSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            group: Ipv4Addr::new(239, 255, 42, 99),
            port: 7400,
            ttl: 1,
            interval: std::time::Duration::from_secs(1),
            interface: Ipv4Addr::UNSPECIFIED,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Beacon {
    pub cluster_id: String,
    pub node: String,
    pub gossip_addr: SocketAddr,
}

/// The socket: bound to the group's port on all addresses, reusable so several nodes on one host can listen, joined
/// to the group on the configured interface, with the configured TTL and loopback on.
pub fn multicast_socket(cfg: &MulticastSettings) -> std::io::Result<tokio::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    #[cfg(unix)]
    socket.set_reuse_port(true)?;
    socket.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, cfg.port).into())?;
    socket.join_multicast_v4(&cfg.group, &cfg.interface)?;
    socket.set_multicast_ttl_v4(cfg.ttl)?;
    socket.set_multicast_loop_v4(true)?;
    if !cfg.interface.is_unspecified() {
        socket.set_multicast_if_v4(&cfg.interface)?;
    }
    socket.set_nonblocking(true)?;
    tokio::net::UdpSocket::from_std(socket.into())
}

/// Sends beacons and feeds discovered peers to `found` until `stop` is cancelled.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    cfg: MulticastSettings,
    socket: tokio::net::UdpSocket,
    sealer: Arc<Sealer>,
    opener: Opener,
    me: Beacon,
    drops: Arc<DropCounters>,
    found: impl Fn(SocketAddr) + Send + Sync,
    stop: CancellationToken,
) {
    let group = SocketAddr::V4(SocketAddrV4::new(cfg.group, cfg.port));
    let beacon = postcard::to_allocvec(&me).expect("a beacon always serialises");
    let mut tick = tokio::time::interval(cfg.interval);
    let mut buf = vec![0u8; 2048];
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                let frame = sealer.seal(Purpose::Beacon, &beacon, now_ms());
                if let Err(e) = socket.send_to(&frame, group).await {
                    tracing::debug!(error = %e, "beacon not sent");
                }
            }
            received = socket.recv_from(&mut buf) => {
                let Ok((n, from)) = received else { continue };
                let opened = match opener.open(&buf[..n], now_ms()) {
                    Ok(o) => o,
                    Err(e) => {
                        drops.record(&e, from);
                        continue;
                    }
                };
                match postcard::from_bytes::<Beacon>(&opened.payload) {
                    Ok(b) if b.cluster_id == me.cluster_id && b.node != me.node && b.node == opened.sender => {
                        found(b.gossip_addr);
                    }
                    Ok(_) => {}
                    Err(_) => {
                        drops.malformed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
        }
    }
}
