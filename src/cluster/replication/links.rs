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
