//! Replication between nodes: persistent TCP links carrying sealed frames, synchronous writes acknowledged by every
//! member of the view, consumption of one-time tickets forwarded to their owner, and digest-driven pulls for state
//! transfer and anti-entropy. Knows members and bytes; the typed maps live in `registry::replicated`.
//!
//! Each node dials every peer for its own requests and answers the peers' requests on the connections they dial,
//! so each direction is one ordered stream. Requests are pipelined: many in flight per link, matched by id.

pub mod digest;
mod link;
pub mod wire;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OnceCell, watch};

use self::digest::{BucketDigest, plan_pulls};
use self::link::{Link, OpenReply};
use self::wire::{Entry, Op, Reply, ReplyEnvelope, Request, RequestEnvelope, append_frame, read_frame, write_batch};
use super::ClusterStatus;
use super::drops::DropCounters;
use super::membership::{MemberInfo, MemberStatus};
use super::seal::{ClusterKey, Opener, Purpose, Sealer};
use crate::ticket::{Origin, now_ms};

/// Entries asked for in one request when pulling: large pages keep a transfer to few round trips (each costs the
/// peer one pass over its map), and a page stays far under `MAX_FRAME_BYTES` (a TGT is a few hundred bytes).
const PULL_PAGE: u32 = 10_000;
/// How long one pull request (a digest, or a page of entries) may take.
const PULL_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Replies ready together are written together, up to this much.
const BATCH_BYTES: usize = 256 << 10;

/// What replication needs from one map on this node.
#[async_trait]
pub trait MapReplica: Send + Sync {
    /// Applies a replicated change: a join, so any order and any repetition give the same result.
    fn apply(&self, op: &Op);
    /// Consumes a one-time ticket this node owns, replicating the removal before answering.
    async fn consume_as_owner(&self, id: &str) -> Reply;
    /// The running digest, one per bucket of ids.
    fn digest(&self) -> Vec<BucketDigest>;
    /// Every entry in the given buckets, tombstones included, in id order.
    fn entries_in(&self, buckets: &[u16]) -> Vec<Entry>;
}

/// What a replicated map needs from the cluster: implemented by [`Replicator`] over real links, and by the
/// simulation tests over an in-memory world they control.
#[async_trait]
pub trait Replicas: Send + Sync {
    /// Applies `op` on every reachable peer and returns the number of copies, this node's included.
    async fn replicate(&self, op: Op) -> usize;
    /// Who decides about a ticket from `origin`.
    fn owner(&self, origin: &Origin) -> Owner;
    /// Asks `owner` to consume a one-time ticket.
    async fn forward_consume(&self, owner: &MemberInfo, map: u8, id: &str) -> Result<Option<Vec<u8>>, ReplicaError>;
}

fn takes_writes(m: &MemberInfo) -> bool {
    !m.is_self
        && m.replication_addr.is_some()
        && matches!(m.status, MemberStatus::Ready | MemberStatus::Joining | MemberStatus::Leaving)
}

#[async_trait]
impl Replicas for Arc<Replicator> {
    async fn replicate(&self, op: Op) -> usize {
        Replicator::replicate(self, op).await
    }

    fn owner(&self, origin: &Origin) -> Owner {
        Replicator::owner(self, origin)
    }

    async fn forward_consume(&self, owner: &MemberInfo, map: u8, id: &str) -> Result<Option<Vec<u8>>, ReplicaError> {
        Replicator::forward_consume(self, owner, map, id).await
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReplicaError {
    #[error("{node} did not answer in time")]
    Timeout { node: String },
    #[error("link to {node} failed")]
    LinkDown { node: String },
    #[error("{node} answered {answer}")]
    Refused { node: String, answer: String },
}

/// Who decides about a ticket.
#[derive(Debug, PartialEq)]
pub enum Owner {
    Me,
    Peer(MemberInfo),
    /// The issuing node is not in the view in the generation that issued the ticket (dead, restarted, cut off).
    Gone,
}

/// Counts since start.
#[derive(Default)]
pub struct ReplicationCounters {
    pub writes: AtomicU64,
    /// Time writes spent waiting for their acknowledgements: with `writes`, the mean replication lag.
    pub ack_wait_micros: AtomicU64,
    pub acks: AtomicU64,
    pub ack_failures: AtomicU64,
    pub forwarded_consumes: AtomicU64,
    pub entries_pulled: AtomicU64,
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub struct ReplicationCounts {
    pub writes: u64,
    pub ack_wait_micros: u64,
    pub acks: u64,
    pub ack_failures: u64,
    pub forwarded_consumes: u64,
    pub entries_pulled: u64,
}

/// The link to one peer in one generation, once dialled.
struct LinkSlot {
    generation: u64,
    link: OnceCell<Arc<Link>>,
}

pub struct Replicator {
    me: String,
    generation: u64,
    sealer: Arc<Sealer>,
    status: watch::Receiver<ClusterStatus>,
    maps: OnceLock<Vec<Arc<dyn MapReplica>>>,
    links: Mutex<HashMap<String, Arc<LinkSlot>>>,
    /// Shared by every connection, so a frame replayed on a new connection is still caught.
    request_opener: Mutex<Opener>,
    reply_opener: Arc<Mutex<Opener>>,
    drops: Arc<DropCounters>,
    next_id: AtomicU64,
    ack_timeout: Duration,
    forward_timeout: Duration,
    stopped: watch::Receiver<bool>,
    /// Peers that missed an acknowledgement since they last pulled from this node.
    behind: Mutex<std::collections::BTreeSet<String>>,
    pub counters: ReplicationCounters,
}

pub struct ReplicatorParts {
    pub me: String,
    pub generation: u64,
    pub cluster_id: String,
    pub key: ClusterKey,
    pub sealer: Arc<Sealer>,
    pub status: watch::Receiver<ClusterStatus>,
    pub drops: Arc<DropCounters>,
    pub ack_timeout: Duration,
    pub forward_timeout: Duration,
    /// Turns true when the node stops: every link and connection task ends, as after a crash.
    pub stopped: watch::Receiver<bool>,
}

impl Replicator {
    pub fn new(p: ReplicatorParts) -> Arc<Self> {
        Arc::new(Self {
            request_opener: Mutex::new(Opener::for_recipient(&p.key, &p.cluster_id, Purpose::Replication, &p.me)),
            reply_opener: Arc::new(Mutex::new(Opener::for_recipient(
                &p.key,
                &p.cluster_id,
                Purpose::ReplicationReply,
                &p.me,
            ))),
            me: p.me,
            generation: p.generation,
            sealer: p.sealer,
            status: p.status,
            maps: OnceLock::new(),
            links: Mutex::new(HashMap::new()),
            drops: p.drops,
            next_id: AtomicU64::new(1),
            ack_timeout: p.ack_timeout,
            forward_timeout: p.forward_timeout,
            stopped: p.stopped,
            behind: Mutex::new(Default::default()),
            counters: ReplicationCounters::default(),
        })
    }

    /// Registers the maps, indexed by their `map` number. Done once, before serving.
    pub fn register_maps(&self, maps: Vec<Arc<dyn MapReplica>>) {
        let _ = self.maps.set(maps);
    }

    fn map(&self, index: u8) -> Option<&Arc<dyn MapReplica>> {
        self.maps.get()?.get(index as usize)
    }

    pub fn node(&self) -> &str {
        &self.me
    }

    pub fn counts(&self) -> ReplicationCounts {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ReplicationCounts {
            writes: get(&c.writes),
            ack_wait_micros: get(&c.ack_wait_micros),
            acks: get(&c.acks),
            ack_failures: get(&c.ack_failures),
            forwarded_consumes: get(&c.forwarded_consumes),
            entries_pulled: get(&c.entries_pulled),
        }
    }

    /// Live peers that take writes: every alive member but this node, joining ones included (they must not miss
    /// writes made during their state transfer).
    pub fn peers(&self) -> Vec<MemberInfo> {
        self.status.borrow().live().values().filter(|m| takes_writes(m)).cloned().collect()
    }

    pub fn owner(&self, origin: &Origin) -> Owner {
        if origin.node == self.me {
            return if origin.generation == self.generation { Owner::Me } else { Owner::Gone };
        }
        let live = self.status.borrow().live();
        match live.get(&origin.node) {
            Some(m) if m.generation == origin.generation && m.replication_addr.is_some() => Owner::Peer(m.clone()),
            _ => Owner::Gone,
        }
    }

    /// Whether this node sends single logout for an expired TGT issued by `origin`: its owner, or, when the owner is
    /// gone, the live ready node with the lowest name (a deterministic successor every node computes alike).
    pub fn sends_expiry_logout(&self, origin: Option<&Origin>) -> bool {
        match origin.map(|o| self.owner(o)) {
            Some(Owner::Me) => true,
            Some(Owner::Peer(_)) => false,
            _ => {
                let view = self.status.borrow().view();
                let successor =
                    view.values().filter(|m| m.status == MemberStatus::Ready || m.is_self).map(|m| &m.node).min();
                successor.is_none_or(|s| *s == self.me)
            }
        }
    }

    /// Sends `op` to every peer and waits for their acknowledgements, at most `ack_timeout`. Returns the number of
    /// copies that now exist, this node's included.
    pub async fn replicate(self: &Arc<Self>, op: Op) -> usize {
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
        let live = self.status.borrow().live();
        let peers: Vec<&MemberInfo> = live.values().filter(|m| takes_writes(m)).collect();
        let sends = peers.iter().map(|peer| self.request(peer, Request::Apply(op.clone()), self.ack_timeout));
        let started = std::time::Instant::now();
        let results = futures_util::future::join_all(sends).await;
        self.counters.ack_wait_micros.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        let mut copies = 1;
        for (peer, result) in peers.iter().zip(results) {
            match result {
                Ok(Reply::Applied) => {
                    copies += 1;
                    self.counters.acks.fetch_add(1, Ordering::Relaxed);
                }
                other => {
                    self.counters.ack_failures.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut behind) = self.behind.lock() {
                        behind.insert(peer.node.clone());
                    }
                    tracing::warn!(peer = %peer.node, outcome = ?other.err(), "replica did not acknowledge a write");
                }
            }
        }
        copies
    }

    /// Asks the owner to consume a one-time ticket. Fails (closed) when the owner cannot be asked.
    pub async fn forward_consume(
        self: &Arc<Self>,
        owner: &MemberInfo,
        map: u8,
        id: &str,
    ) -> Result<Option<Vec<u8>>, ReplicaError> {
        self.counters.forwarded_consumes.fetch_add(1, Ordering::Relaxed);
        match self.request(owner, Request::Consume { map, id: id.to_owned() }, self.forward_timeout).await? {
            Reply::Consumed(value) => Ok(value),
            other => Err(ReplicaError::Refused { node: owner.node.clone(), answer: format!("{other:?}") }),
        }
    }

    /// Asks every reachable peer that missed one of this node's writes to pull this node's maps. Peers that cannot
    /// be asked stay on the list for the next call.
    pub async fn repair_peers(self: &Arc<Self>) {
        let behind: Vec<String> = self.behind.lock().map(|b| b.iter().cloned().collect()).unwrap_or_default();
        if behind.is_empty() {
            return;
        }
        for peer in self.peers().into_iter().filter(|m| behind.contains(&m.node) && m.status == MemberStatus::Ready) {
            if let Ok(Reply::Applied) = self.request(&peer, Request::Repair, self.ack_timeout).await {
                tracing::info!(peer = %peer.node, "peer missed writes; asked it to pull");
                if let Ok(mut b) = self.behind.lock() {
                    b.remove(&peer.node);
                }
            }
        }
    }

    /// Pulls from `peer` what differs and merges it in: state transfer for a joiner (everything differs), and
    /// anti-entropy after a heal (only the buckets whose digests differ). Returns the number of entries merged.
    pub async fn pull_all(self: &Arc<Self>, peer: &MemberInfo) -> Result<u64, ReplicaError> {
        let maps = self.maps.get().map_or(0, Vec::len);
        let refused = |reply: Reply| ReplicaError::Refused { node: peer.node.clone(), answer: format!("{reply:?}") };
        let mut pulled = 0;
        for map in 0..maps as u8 {
            let Some(target) = self.map(map) else { continue };
            let theirs = match self.request(peer, Request::Digest { map }, PULL_TIMEOUT).await? {
                Reply::Digest(theirs) => theirs,
                other => return Err(refused(other)),
            };
            // Two pages in flight: the peer gathers the next page while this node merges the last one.
            let mut pages = futures_util::stream::iter(plan_pulls(&target.digest(), &theirs, PULL_PAGE))
                .map(|buckets| self.request(peer, Request::Buckets { map, buckets }, PULL_TIMEOUT))
                .buffered(2);
            while let Some(reply) = pages.next().await {
                let entries = match reply? {
                    Reply::Entries(entries) => entries,
                    other => return Err(refused(other)),
                };
                pulled += entries.len() as u64;
                for entry in entries {
                    target.apply(&entry.into_op(map));
                }
            }
        }
        self.counters.entries_pulled.fetch_add(pulled, Ordering::Relaxed);
        Ok(pulled)
    }

    async fn request(
        self: &Arc<Self>,
        peer: &MemberInfo,
        body: Request,
        timeout: Duration,
    ) -> Result<Reply, ReplicaError> {
        let down = || ReplicaError::LinkDown { node: peer.node.clone() };
        let exchange = async {
            let link = self.link(peer).await.ok_or_else(down)?;
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let payload = postcard::to_allocvec(&RequestEnvelope { id, body }).expect("requests always serialise");
            let mut framed = Vec::new();
            append_frame(&mut framed, &self.sealer.seal_to(Purpose::Replication, &peer.node, &payload, now_ms()))
                .map_err(|_| down())?;
            link.call(id, &framed).await.map_err(|_| down())
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or_else(|_| Err(ReplicaError::Timeout { node: peer.node.clone() }))
    }

    /// The open link to `peer`, dialling a new one when there is none, it broke, or the peer restarted. Callers
    /// that arrive while a dial is under way wait for that dial.
    async fn link(self: &Arc<Self>, peer: &MemberInfo) -> Option<Arc<Link>> {
        let addr: SocketAddr = peer.replication_addr.as_deref()?.parse().ok()?;
        let slot = {
            let mut links = self.links.lock().ok()?;
            let usable = |s: &LinkSlot| s.generation == peer.generation && !s.link.get().is_some_and(|l| l.is_closed());
            match links.get(&peer.node).filter(|s| usable(s)) {
                Some(slot) => slot.clone(),
                None => {
                    let slot = Arc::new(LinkSlot { generation: peer.generation, link: OnceCell::new() });
                    let replaced = links.insert(peer.node.clone(), slot.clone());
                    if let Some(old) = replaced.as_ref().and_then(|s| s.link.get()) {
                        old.close();
                    }
                    slot
                }
            }
        };
        slot.link.get_or_try_init(|| self.dial(&peer.node, addr)).await.ok().cloned()
    }

    async fn dial(self: &Arc<Self>, node: &str, addr: SocketAddr) -> Result<Arc<Link>, ()> {
        if *self.stopped.borrow() {
            return Err(());
        }
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            other => {
                tracing::debug!(peer = %node, %addr, outcome = ?other.map(|r| r.err()), "replication link not established");
                return Err(());
            }
        };
        let (opener, drops) = (self.reply_opener.clone(), self.drops.clone());
        let open: OpenReply = Box::new(move |frame| {
            let opened = opener
                .lock()
                .map_err(|_| ())
                .and_then(|mut o| o.open(frame, now_ms()).map_err(|e| drops.record(&e, addr)))
                .ok()?;
            let reply = postcard::from_bytes::<ReplyEnvelope>(&opened.payload);
            if reply.is_err() {
                drops.malformed.fetch_add(1, Ordering::Relaxed);
            }
            reply.ok()
        });
        Ok(Link::start(stream, open, self.stopped.clone()))
    }

    /// Answers the peers' requests until the node stops.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        let mut stopped = self.stopped.clone();
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = async { let _ = stopped.wait_for(|s| *s).await; } => return,
            };
            let Ok((stream, from)) = accepted else { continue };
            let _ = stream.set_nodelay(true);
            tokio::spawn(self.clone().serve_connection(stream, from));
        }
    }

    /// Answers one peer's requests. Writes, digests and pages of entries are answered in line, in order, and their replies
    /// leave together once no further whole request is already buffered (no task hop, one write per burst): a
    /// request that has arrived only in part may be a retransmission away, and must not hold them back. A consume
    /// may wait on its own replication, so it runs beside the connection and writes its reply itself.
    async fn serve_connection(self: Arc<Self>, stream: TcpStream, from: SocketAddr) {
        let (reader, writer) = stream.into_split();
        let mut reader = tokio::io::BufReader::with_capacity(64 << 10, reader);
        let writer = Arc::new(tokio::sync::Mutex::new(writer));
        let mut replies = Vec::new();
        let mut stopped = self.stopped.clone();
        loop {
            let frame = tokio::select! {
                frame = read_frame(&mut reader) => frame,
                _ = async { let _ = stopped.wait_for(|s| *s).await; } => break,
            };
            let Ok(frame) = frame else { break };
            let opened = match self.request_opener.lock() {
                Ok(mut o) => o.open(&frame, now_ms()),
                Err(_) => break,
            };
            let opened = match opened {
                Ok(o) => o,
                Err(e) => {
                    self.drops.record(&e, from);
                    continue;
                }
            };
            let Ok(request) = postcard::from_bytes::<RequestEnvelope>(&opened.payload) else {
                self.drops.malformed.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            if matches!(request.body, Request::Consume { .. }) {
                let (this, writer) = (self.clone(), writer.clone());
                tokio::spawn(async move {
                    let body = this.handle(request.body, &opened.sender).await;
                    let mut batch = Vec::new();
                    if append_frame(&mut batch, &this.reply_frame(request.id, body, &opened.sender)).is_ok() {
                        let _ = write_batch(&mut *writer.lock().await, &batch).await;
                    }
                });
                continue;
            }
            let body = self.handle(request.body, &opened.sender).await;
            if append_frame(&mut replies, &self.reply_frame(request.id, body, &opened.sender)).is_err() {
                break;
            }
            if !wire::holds_whole_frame(reader.buffer()) || replies.len() > BATCH_BYTES {
                if write_batch(&mut *writer.lock().await, &replies).await.is_err() {
                    break;
                }
                replies.clear();
            }
        }
    }

    fn reply_frame(&self, id: u64, body: Reply, to: &str) -> Vec<u8> {
        let payload = postcard::to_allocvec(&ReplyEnvelope { id, body }).expect("replies always serialise");
        self.sealer.seal_to(Purpose::ReplicationReply, to, &payload, now_ms())
    }

    async fn handle(self: &Arc<Self>, request: Request, from: &str) -> Reply {
        match request {
            Request::Apply(op) => {
                let map = match &op {
                    Op::Put { map, .. } | Op::Remove { map, .. } => *map,
                };
                match self.map(map) {
                    Some(m) => {
                        m.apply(&op);
                        Reply::Applied
                    }
                    None => Reply::Error(format!("no map {map}")),
                }
            }
            Request::Consume { map, id } => match self.map(map) {
                Some(m) => m.consume_as_owner(&id).await,
                None => Reply::Error(format!("no map {map}")),
            },
            Request::Digest { map } => match self.map(map) {
                Some(m) => Reply::Digest(m.digest()),
                None => Reply::Error(format!("no map {map}")),
            },
            Request::Buckets { map, buckets } => match self.map(map) {
                Some(m) => Reply::Entries(m.entries_in(&buckets)),
                None => Reply::Error(format!("no map {map}")),
            },
            Request::Repair => match self.status.borrow().view().remove(from) {
                Some(peer) => {
                    let this = self.clone();
                    tokio::spawn(async move {
                        if let Err(e) = this.pull_all(&peer).await {
                            tracing::info!(from = %peer.node, error = %e, "repair pull failed");
                        }
                    });
                    Reply::Applied
                }
                None => Reply::Error(format!("{from} is not in this node's view")),
            },
        }
    }
}
