//! This node's outgoing links, one per peer and boot: dialled on first use, shared by every request to that peer,
//! replaced when it breaks or the peer restarts. A request is sealed to its recipient here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::OnceCell;

use super::Replicator;
use super::link::{Link, OpenReply};
use super::replica::ReplicaError;
use super::wire::{Reply, ReplyEnvelope, Request, RequestEnvelope, append_frame};
use crate::clock::now_ms;
use crate::cluster::membership::MemberInfo;
use crate::cluster::seal::Purpose;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The link to one peer in one generation, once dialled.
pub(super) struct LinkSlot {
    generation: u64,
    link: OnceCell<Arc<Link>>,
}

impl Replicator {
    /// Sends `body` to `peer` and waits at most `timeout` for its reply.
    pub(super) async fn request(
        self: &Arc<Self>,
        peer: &MemberInfo,
        body: Request,
        timeout: Duration,
    ) -> Result<Reply, ReplicaError> {
        let down = || ReplicaError::LinkDown { node: peer.node.clone() };
        let mut used = None;
        let exchange = async {
            let link = self.link(peer).await.ok_or_else(down)?;
            used = Some(link.clone());
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let payload = postcard::to_allocvec(&RequestEnvelope { id, body }).expect("requests always serialise");
            let mut framed = Vec::new();
            append_frame(&mut framed, &self.sealer.seal_to(Purpose::Replication, &peer.node, &payload, now_ms()))
                .map_err(|_| down())?;
            link.call(id, &framed).await.map_err(|_| down())
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => {
                // No reply in time: the path may be dead (a cut), and a request on this connection would wait for
                // TCP's backed-off retransmissions even after the heal. The next request dials afresh.
                if let Some(link) = used {
                    tracing::debug!(peer = %peer.node, "no reply in time; closing the link");
                    link.close();
                }
                Err(ReplicaError::Timeout { node: peer.node.clone() })
            }
        }
    }

    /// Closes each peer's link as it leaves the live view, until the node stops.
    pub(crate) async fn tend_links(self: Arc<Self>) {
        let mut status = self.status.clone();
        loop {
            tokio::select! {
                changed = status.changed() => if changed.is_err() { return },
                _ = self.stop.cancelled() => return,
            }
            self.close_links_to_absent();
        }
    }

    /// Closes the links to peers that are no longer in the live view (cut off, dead, gone): when they come back,
    /// their first request dials a new connection instead of waiting on one whose path died (see `path`).
    fn close_links_to_absent(&self) {
        let live = self.status.borrow().live();
        let Ok(mut links) = self.links.lock() else { return };
        links.retain(|node, slot| {
            let present = live.get(node).is_some_and(|m| m.generation == slot.generation);
            if !present && let Some(link) = slot.link.get() {
                tracing::debug!(peer = %node, "peer left the live view; closing its link");
                link.close();
            }
            present
        });
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
        if self.stop.is_cancelled() {
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
            let opened = opener.open(frame, now_ms()).map_err(|e| drops.record(&e, addr)).ok()?;
            let reply = postcard::from_bytes::<ReplyEnvelope>(&opened.payload);
            if reply.is_err() {
                drops.malformed.fetch_add(1, Ordering::Relaxed);
            }
            reply.ok()
        });
        super::path::watch_path(&stream);
        let link = Link::start(stream, open, self.stop.clone());
        // The server takes only small frames until one has opened: say hello before the first write.
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let payload =
            postcard::to_allocvec(&RequestEnvelope { id, body: Request::Hello }).expect("requests always serialise");
        let mut framed = Vec::new();
        append_frame(&mut framed, &self.sealer.seal_to(Purpose::Replication, node, &payload, now_ms()))
            .map_err(|_| ())?;
        match tokio::time::timeout(CONNECT_TIMEOUT, link.call(id, &framed)).await {
            Ok(Ok(Reply::Applied)) => Ok(link),
            other => {
                tracing::debug!(peer = %node, outcome = ?other.map(|r| r.err()), "replication link refused our hello");
                link.close();
                Err(())
            }
        }
    }
}
