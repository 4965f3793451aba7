//! Answers the peers' requests on the connections they dial: opens each sealed frame, applies or answers it, and
//! seals the reply back to its sender.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::net::{TcpListener, TcpStream};

use super::Replicator;
use super::wire::{self, Reply, ReplyEnvelope, Request, RequestEnvelope, append_frame, read_frame, write_batch};
use crate::clock::now_ms;
use crate::cluster::seal::Purpose;

/// Replies ready together are written together, up to this much.
const BATCH_BYTES: usize = 256 << 10;

impl Replicator {
    /// Answers the peers' requests until the node stops.
    pub(crate) async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = self.stop.cancelled() => return,
            };
            let Ok((stream, from)) = accepted else { continue };
            let _ = stream.set_nodelay(true);
            self.tasks.spawn(self.clone().serve_connection(stream, from));
        }
    }

    /// Answers one peer's requests. Writes, digests and pages of entries are answered in line, in order, and their
    /// replies leave together once no further whole request is already buffered (no task hop, one write per burst):
    /// a request that has arrived only in part may be a retransmission away, and must not hold them back. A consume
    /// may wait on its own replication, so it runs beside the connection and writes its reply itself.
    async fn serve_connection(self: Arc<Self>, stream: TcpStream, from: SocketAddr) {
        let (reader, writer) = stream.into_split();
        let mut reader = tokio::io::BufReader::with_capacity(64 << 10, reader);
        let writer = Arc::new(tokio::sync::Mutex::new(writer));
        let mut replies = Vec::new();
        loop {
            let frame = tokio::select! {
                frame = read_frame(&mut reader) => frame,
                _ = self.stop.cancelled() => break,
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
                self.tasks.spawn(async move {
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
        let unknown = |map: super::replica::MapId| Reply::Error(format!("map {} is not served here", map.name()));
        match request {
            Request::Apply { map, entry } => match self.map(map) {
                Some(m) => {
                    m.apply(&entry);
                    Reply::Applied
                }
                None => unknown(map),
            },
            Request::Consume { map, id } => match self.map(map) {
                Some(m) => match m.consume_as_owner(&id).await {
                    Ok(value) => Reply::Consumed(value),
                    Err(_) => Reply::NotOwner,
                },
                None => unknown(map),
            },
            Request::Digest { map } => match self.map(map) {
                Some(m) => Reply::Digest(m.digest()),
                None => unknown(map),
            },
            Request::Buckets { map, buckets } => match self.map(map) {
                Some(m) => Reply::Entries(m.entries_in(&buckets)),
                None => unknown(map),
            },
            Request::Repair => match self.status.borrow().view().remove(from) {
                Some(peer) => {
                    let this = self.clone();
                    self.tasks.spawn(async move {
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
