//! A chitchat `Transport` whose every datagram is sealed (see `seal`). Opens one UDP socket, bound by the caller
//! beforehand so the advertised address is known even for port 0.
//!
//! Gossip is sealed for every node (the first datagram to a seed cannot name a node it has not met), so a datagram
//! captured on the way to one node opens at another. chitchat answers a datagram at the address it came from, so a
//! replay from a stranger's address would make a node send gossip to that stranger (issue 12): a reflector, and a
//! small amplifier. So datagrams go only to addresses this node has a reason to talk to ([`Destinations`]): its
//! seeds, the nodes its multicast beacons found, and the gossip addresses of the members it knows. A new node's
//! first datagram to a seed is answered once the seed has learned its address from that datagram (the next round).
//!
//! chitchat's traits return `anyhow::Result`, so this module does too, at that boundary only.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;
use chitchat::ChitchatEnvelope;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport};

use super::drops::DropCounters;
use super::seal::{Opener, Purpose, Sealer};
use crate::clock::now_ms;

/// The largest UDP payload; a sealed frame over it cannot be sent and is dropped (and counted).
pub const MAX_DATAGRAM: usize = 65_507;

/// The addresses gossip may be sent to. Only grows during a boot: a seed, a discovered node or a member, once
/// known, stays a legitimate destination (a few bytes each).
#[derive(Default)]
pub struct Destinations(RwLock<HashSet<SocketAddr>>);

impl Destinations {
    pub fn allow(&self, addr: SocketAddr) {
        if !self.allows(addr)
            && let Ok(mut set) = self.0.write()
        {
            set.insert(addr);
        }
    }

    pub fn allows(&self, addr: SocketAddr) -> bool {
        self.0.read().is_ok_and(|set| set.contains(&addr))
    }
}

pub struct SealedUdpTransport {
    socket: Mutex<Option<tokio::net::UdpSocket>>,
    sealer: Arc<Sealer>,
    opener: Mutex<Option<Opener>>,
    drops: Arc<DropCounters>,
    destinations: Arc<Destinations>,
}

impl SealedUdpTransport {
    pub fn new(
        socket: tokio::net::UdpSocket,
        sealer: Arc<Sealer>,
        opener: Opener,
        drops: Arc<DropCounters>,
        destinations: Arc<Destinations>,
    ) -> Self {
        Self { socket: Mutex::new(Some(socket)), sealer, opener: Mutex::new(Some(opener)), drops, destinations }
    }
}

#[async_trait]
impl Transport for SealedUdpTransport {
    async fn open(&self, _listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let (Some(socket), Some(opener)) = (take_once(&self.socket)?, take_once(&self.opener)?) else {
            anyhow::bail!("the sealed gossip transport opens only once");
        };
        Ok(Box::new(SealedSocket {
            socket,
            sealer: self.sealer.clone(),
            opener,
            drops: self.drops.clone(),
            destinations: self.destinations.clone(),
            send_buf: Vec::new(),
            recv_buf: vec![0u8; MAX_DATAGRAM],
        }))
    }
}

fn take_once<T>(slot: &Mutex<Option<T>>) -> anyhow::Result<Option<T>> {
    Ok(slot.lock().map_err(|_| anyhow::anyhow!("transport lock poisoned"))?.take())
}

struct SealedSocket {
    socket: tokio::net::UdpSocket,
    sealer: Arc<Sealer>,
    opener: Opener,
    drops: Arc<DropCounters>,
    destinations: Arc<Destinations>,
    send_buf: Vec<u8>,
    recv_buf: Vec<u8>,
}

#[async_trait]
impl Socket for SealedSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }

    async fn send(&mut self, to: SocketAddr, envelope: ChitchatEnvelope) -> anyhow::Result<SendOutcome> {
        if !self.destinations.allows(to) {
            self.drops.unknown_destination.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Ok(SendOutcome { num_bytes_sent: 0 });
        }
        self.send_buf.clear();
        envelope.serialize(&mut self.send_buf);
        let frame = self.sealer.seal(Purpose::Gossip, &self.send_buf, now_ms());
        if frame.len() > MAX_DATAGRAM {
            self.drops.oversize.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Ok(SendOutcome { num_bytes_sent: 0 });
        }
        match self.socket.send_to(&frame, to).await {
            Ok(n) => {
                self.drops.count_sent(n);
                Ok(SendOutcome { num_bytes_sent: n })
            }
            // An unreachable peer is gossip's normal weather, not a broken transport.
            Err(e) => {
                tracing::debug!(peer = %to, error = %e, "gossip send failed");
                Ok(SendOutcome { num_bytes_sent: 0 })
            }
        }
    }

    /// Cancel-safe: nothing is held across the single await.
    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            let (n, from) = match self.socket.recv_from(&mut self.recv_buf).await {
                Ok(r) => r,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset
                    ) =>
                {
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            self.drops.count_received(n);
            let opened = match self.opener.open(&self.recv_buf[..n], now_ms()) {
                Ok(o) => o,
                Err(e) => {
                    self.drops.record(&e, from);
                    continue;
                }
            };
            let mut payload = opened.payload.as_slice();
            match ChitchatEnvelope::deserialize(&mut payload) {
                Ok(envelope) => return Ok(RecvOutcome { from_addr: from, envelope, num_bytes_received: n }),
                Err(e) => {
                    // Authentic but undecodable: a peer of another version, or a bug. Never fatal.
                    self.drops.malformed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(peer = %from, sender = %opened.sender, error = %e, "undecodable gossip from a keyed peer");
                }
            }
        }
    }
}
