//! Answers the peers' requests on the connections they dial: opens each sealed frame, applies or answers it, and
//! seals the reply back to its sender.
//!
//! The port is open to anyone who can reach it, so a connection spends little before it proves it holds the
//! cluster key: at most `MAX_CONNECTIONS` at once, a first frame of at most `FIRST_FRAME_BYTES` that must arrive
//! within `FIRST_FRAME_WITHIN`, every frame whole within `FRAME_WITHIN` of its first byte, memory only for bytes
//! really received, and the connection closed at the first frame that does not open.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::AsyncBufReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::Replicator;
use super::wire::{
    self, FrameError, Reply, ReplyEnvelope, Request, RequestEnvelope, append_frame, read_frame, write_batch,
};
use crate::accept::next_connection;
use crate::clock::now_ms;
use crate::cluster::seal::Purpose;

/// Replies ready together are written together, up to this much.
const BATCH_BYTES: usize = 256 << 10;
/// Connections served at once: each peer needs one (its link), and a few more come and go while peers restart.
const MAX_CONNECTIONS: usize = 64;
/// A connection's first frame is refused above this: nobody has proved to hold the key yet. A peer's link opens
/// with a small `Hello`.
const FIRST_FRAME_BYTES: usize = 4 << 10;
/// Above this, any request is refused: a write carries one ticket (a TGT with its grants and attributes).
const REQUEST_BYTES: usize = 4 << 20;
const FIRST_FRAME_WITHIN: Duration = Duration::from_secs(5);
const FRAME_WITHIN: Duration = Duration::from_secs(10);

impl Replicator {
    /// Answers the peers' requests until the node stops.
    pub(crate) async fn serve(self: Arc<Self>, listener: TcpListener) {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        while let Some((stream, from)) = next_connection(&listener, &self.stop, "replication").await {
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::warn!(%from, "replication connection refused: too many open");
                continue;
            };
            super::path::watch_path(&stream);
            let this = self.clone();
            self.tasks.spawn(async move {
                this.serve_connection(stream, from).await;
                drop(slot);
            });
        }
    }

    /// The next whole frame: waits as long as it takes for a frame to begin (a peer's link is idle between
    /// writes) once the connection is authenticated, at most `FIRST_FRAME_WITHIN` before; then at most
    /// `FRAME_WITHIN` for the rest of it.
    async fn next_frame(
        reader: &mut tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>,
        authenticated: bool,
    ) -> Result<Vec<u8>, FrameError> {
        let timed_out = || FrameError::Io(std::io::ErrorKind::TimedOut.into());
        if authenticated {
            if reader.fill_buf().await?.is_empty() {
                return Err(FrameError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            tokio::time::timeout(FRAME_WITHIN, read_frame(reader, REQUEST_BYTES)).await.map_err(|_| timed_out())?
        } else {
            tokio::time::timeout(FIRST_FRAME_WITHIN, read_frame(reader, FIRST_FRAME_BYTES))
                .await
                .map_err(|_| timed_out())?
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
        let mut authenticated = false;
        loop {
            let frame = tokio::select! {
                frame = Self::next_frame(&mut reader, authenticated) => frame,
                _ = self.stop.cancelled() => break,
            };
            let frame = match frame {
                Ok(frame) => frame,
                Err(FrameError::TooLarge(len)) => {
                    self.drops.oversize.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%from, len, "replication frame over the limit; closing");
                    break;
                }
                Err(_) => break,
            };
            // A frame that does not open ends the connection: a peer's link never sends one, and a stranger gets
            // one try per connection.
            let opened = match self.request_opener.open(&frame, now_ms()) {
                Ok(o) => o,
                Err(e) => {
                    self.drops.record(&e, from);
                    break;
                }
            };
            authenticated = true;
            let Ok(request) = postcard::from_bytes::<RequestEnvelope>(&opened.payload) else {
                self.drops.malformed.fetch_add(1, Ordering::Relaxed);
                break;
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
            Request::Buckets { map, buckets, after } => match self.map(map) {
                Some(m) => {
                    let (entries, truncated) = m.entries_in(&buckets, after.as_deref(), wire::PAGE_BYTES);
                    Reply::Entries { entries, truncated }
                }
                None => unknown(map),
            },
            Request::Hello => Reply::Applied,
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
