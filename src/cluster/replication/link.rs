//! An outgoing replication link to one peer, with no task of its own on the hot path.
//!
//! A request is written from the caller's task (`try_write` on the socket), and its reply is read by whichever
//! caller is waiting: one of them at a time is the link's reader. It reads every reply that arrives, hands the
//! others to their callers, and when its own reply has come it passes the role to another waiting caller. A write
//! acknowledged by two peers thus wakes only the caller and the two peers, as a plain TCP exchange does: a writer
//! task and a reader task per link cost two more wake-ups per peer, which was most of a replicated write's time on
//! a small machine (issue 4's latency target).
//!
//! Everything a caller leaves half done stays in the link, not in its future: bytes that did not fit the socket
//! wait in `unsent` for the flusher task, and bytes read wait in `inbox` for the next reader. So a caller that
//! gives up (a timeout drops its future) loses nothing for the others, and its reader role passes on.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;

use super::wire::{Reply, ReplyEnvelope, split_frame};

/// Room made for each read: a burst of acknowledgements, or a good part of a page of entries.
const READ_CHUNK: usize = 64 << 10;
/// A peer that leaves this much unsent (beyond what the socket holds) is not taking writes: the link closes (its
/// writes then count as missed, and the peer is repaired when it is reachable again) rather than hold memory
/// without bound.
const MAX_UNSENT: usize = 32 << 20;

/// Opens a sealed reply frame and decodes it (counting what it drops); `None` for a frame to ignore.
pub type OpenReply = Box<dyn Fn(&[u8]) -> Option<ReplyEnvelope> + Send + Sync>;

/// The link broke (or was closed): every request on it has failed.
#[derive(Debug, PartialEq, Eq)]
pub struct Closed;

/// One connection to one peer, shared by every request this node sends it.
pub struct Link {
    writer: OwnedWriteHalf,
    state: Mutex<State>,
    /// Only the reader touches it.
    inbox: tokio::sync::Mutex<Inbox>,
    open: OpenReply,
    /// Wakes the flusher: bytes are waiting in `unsent`, or the link closed.
    flush: Notify,
}

#[derive(Default)]
struct State {
    /// Request bytes the socket did not take yet, in order; written by the flusher.
    unsent: Vec<u8>,
    /// Callers waiting for a reply, by request id. The reader is not among them.
    waiting: HashMap<u64, oneshot::Sender<Wake>>,
    /// The request whose caller reads for everyone, if any.
    reader: Option<u64>,
    closed: bool,
}

struct Inbox {
    from: OwnedReadHalf,
    /// Bytes read and not yet cut into frames.
    bytes: Vec<u8>,
}

enum Wake {
    Reply(Reply),
    /// You are the reader now.
    Read,
}

impl Link {
    /// A link over a connected stream. Spawns its flusher, which also closes the link when `stop` is cancelled.
    pub fn start(stream: TcpStream, open: OpenReply, stop: CancellationToken) -> Arc<Self> {
        let _ = stream.set_nodelay(true);
        let (from, writer) = stream.into_split();
        let link = Arc::new(Self {
            writer,
            state: Mutex::new(State::default()),
            inbox: tokio::sync::Mutex::new(Inbox { from, bytes: Vec::new() }),
            open,
            flush: Notify::new(),
        });
        tokio::spawn(link.clone().flusher(stop));
        link
    }

    pub fn is_closed(&self) -> bool {
        self.state().closed
    }

    /// Closes the link (its peer restarted, so a new link replaces it): waiting callers fail, the flusher ends.
    pub fn close(&self) {
        self.fail(&mut self.state());
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves nothing half-written that matters more than the link itself.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sends one request (a length-prefixed frame whose envelope carries `id`) and waits for the reply with that
    /// id. Cancel-safe: dropping the future forgets the request and passes the reader role on.
    pub async fn call(&self, id: u64, framed: &[u8]) -> Result<Reply, Closed> {
        let (tx, mut rx) = oneshot::channel();
        {
            let mut st = self.state();
            if st.closed {
                return Err(Closed);
            }
            // An idle link is written at once, from this task. On a busy one (other requests in flight) the frame
            // joins the queue, and the flusher writes all that gathered in one go: fewer, larger writes when
            // many callers share the link.
            let idle = st.waiting.is_empty() && st.reader.is_none() && st.unsent.is_empty();
            st.waiting.insert(id, tx);
            let written = if idle {
                match self.writer.try_write(framed) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                    Err(_) => {
                        self.fail(&mut st);
                        return Err(Closed);
                    }
                }
            } else {
                0
            };
            if written < framed.len() {
                if st.unsent.len() + framed.len() > MAX_UNSENT {
                    self.fail(&mut st);
                    return Err(Closed);
                }
                if st.unsent.is_empty() {
                    self.flush.notify_one();
                }
                st.unsent.extend_from_slice(&framed[written..]);
            }
        }
        let _forget = Forget { link: self, id };
        loop {
            let reading = {
                let mut st = self.state();
                // Replies are handed over under this lock, so one that came before is seen here.
                if let Ok(Wake::Reply(reply)) = rx.try_recv() {
                    return Ok(reply);
                }
                if st.closed {
                    return Err(Closed);
                }
                if st.reader.is_none() {
                    st.reader = Some(id);
                    st.waiting.remove(&id);
                }
                st.reader == Some(id)
            };
            if reading {
                return self.read_until(id).await;
            }
            match (&mut rx).await {
                Ok(Wake::Reply(reply)) => return Ok(reply),
                Ok(Wake::Read) => continue,
                Err(_) => return Err(Closed),
            }
        }
    }

    /// As the reader: reads replies, handing each to its caller, until the one for `id` arrives. Reads through
    /// tokio's `AsyncRead`, which knows a short read emptied the socket and so saves a `recv` that would only say so.
    async fn read_until(&self, id: u64) -> Result<Reply, Closed> {
        let mut inbox = self.inbox.lock().await;
        loop {
            if let Some(reply) = self.deliver(&mut inbox.bytes, id)? {
                return Ok(reply);
            }
            let Inbox { from, bytes } = &mut *inbox;
            bytes.reserve(READ_CHUNK);
            if !matches!(from.read_buf(bytes).await, Ok(n) if n > 0) {
                self.close();
                return Err(Closed);
            }
        }
    }

    /// Cuts the complete frames out of `inbox`, opens them, and hands each reply to its caller; returns the one
    /// for `id` when it is among them.
    fn deliver(&self, inbox: &mut Vec<u8>, id: u64) -> Result<Option<Reply>, Closed> {
        // Opened before the state is locked: a page of entries takes a while, and callers keep sending meanwhile.
        let mut replies = Vec::new();
        let mut at = 0;
        loop {
            match split_frame(&inbox[at..]) {
                Ok(Some((frame, taken))) => {
                    replies.extend((self.open)(frame));
                    at += taken;
                }
                Ok(None) => break,
                Err(_) => {
                    self.close();
                    return Err(Closed);
                }
            }
        }
        inbox.drain(..at);
        if replies.is_empty() {
            return Ok(None);
        }
        let mut mine = None;
        let mut st = self.state();
        for reply in replies {
            if reply.id == id {
                mine = Some(reply.body);
            } else if let Some(waiter) = st.waiting.remove(&reply.id) {
                let _ = waiter.send(Wake::Reply(reply.body));
            }
        }
        Ok(mine)
    }

    /// Writes what callers could not, as the socket takes it. Closes the link when the node stops.
    async fn flusher(self: Arc<Self>, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = self.flush.notified() => {}
                _ = stop.cancelled() => {
                    self.fail(&mut self.state());
                    return;
                }
            }
            loop {
                // A peer that takes nothing (cut off) keeps this waiting: the node's stop must still close the link.
                let writable = tokio::select! {
                    w = self.writer.writable() => w.is_ok(),
                    _ = stop.cancelled() => false,
                };
                if !writable {
                    self.fail(&mut self.state());
                    return;
                }
                let mut st = self.state();
                if st.closed {
                    return;
                }
                if st.unsent.is_empty() {
                    break;
                }
                match self.writer.try_write(&st.unsent) {
                    Ok(n) => {
                        st.unsent.drain(..n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => {
                        self.fail(&mut st);
                        return;
                    }
                }
            }
        }
    }

    /// Closes the link: every waiting caller fails at once (their senders drop), and the peer sees the connection
    /// end, as after a crash.
    fn fail(&self, st: &mut State) {
        st.closed = true;
        st.waiting.clear();
        st.reader = None;
        st.unsent.clear();
        let _ = socket2::SockRef::from(self.writer.as_ref()).shutdown(std::net::Shutdown::Both);
        self.flush.notify_one();
    }
}

/// Forgets a request when its caller is done with it, or gives up: its waiter goes, and if it was the reader,
/// another waiting caller becomes the reader.
struct Forget<'a> {
    link: &'a Link,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        let mut st = self.link.state();
        st.waiting.remove(&self.id);
        if st.reader != Some(self.id) {
            return;
        }
        st.reader = None;
        while let Some(next) = st.waiting.keys().next().copied() {
            let Some(waiter) = st.waiting.remove(&next) else { break };
            if waiter.send(Wake::Read).is_ok() {
                st.reader = Some(next);
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::cluster::replication::wire::append_frame;

    /// A request frame for the test peer: just the id.
    fn request(id: u64) -> Vec<u8> {
        let mut framed = Vec::new();
        append_frame(&mut framed, &id.to_be_bytes()).expect("small frame");
        framed
    }

    fn plain_replies() -> OpenReply {
        Box::new(|frame| postcard::from_bytes(frame).ok())
    }

    /// A peer that reads `batch` requests, then answers them in reverse order (each reply names its id in an
    /// error text, so a caller can tell its own from another's), until the connection ends.
    async fn peer(batch: usize) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            loop {
                let mut ids = Vec::new();
                for _ in 0..batch {
                    let mut frame = [0u8; 12];
                    if s.read_exact(&mut frame).await.is_err() {
                        return;
                    }
                    ids.push(u64::from_be_bytes(frame[4..].try_into().expect("8 bytes")));
                }
                let mut out = Vec::new();
                for id in ids.into_iter().rev() {
                    let reply = ReplyEnvelope { id, body: Reply::Error(format!("for {id}")) };
                    append_frame(&mut out, &postcard::to_allocvec(&reply).expect("ser")).expect("frame");
                }
                if s.write_all(&out).await.is_err() {
                    return;
                }
            }
        });
        (addr, task)
    }

    async fn link_to(addr: std::net::SocketAddr) -> (Arc<Link>, CancellationToken) {
        let stop = CancellationToken::new();
        let stream = TcpStream::connect(addr).await.expect("connect");
        (Link::start(stream, plain_replies(), stop.clone()), stop)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_each_get_their_own_reply_whoever_reads() {
        let (addr, _peer) = peer(8).await;
        let (link, _stop) = link_to(addr).await;
        for round in 0..50u64 {
            let calls: Vec<_> = (round * 8..round * 8 + 8).map(|id| (id, spawn_call(&link, id))).collect();
            for (id, call) in calls {
                assert_eq!(outcome(call).await, Ok(Reply::Error(format!("for {id}"))));
            }
        }
        assert!(!link.is_closed());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reader_that_gives_up_passes_the_role_on() {
        let (link, _stop, mut peer) = link_and_peer_end().await;
        let mut frame = [0u8; 12];
        let impatient = tokio::spawn({
            let link = link.clone();
            async move { tokio::time::timeout(Duration::from_millis(300), link.call(1, &request(1))).await }
        });
        peer.read_exact(&mut frame).await.expect("request 1");
        let patient = spawn_call(&link, 2);
        peer.read_exact(&mut frame).await.expect("request 2");
        // The reader (request 1) gives up with no reply; the waiting caller must take over reading.
        assert!(impatient.await.expect("task").is_err(), "no reply came for request 1");
        reply(&mut peer, 2).await;
        assert_eq!(outcome(patient).await, Ok(Reply::Error("for 2".into())));
        // A late reply for the caller that gave up is dropped, and the link still works.
        reply(&mut peer, 1).await;
        let third = spawn_call(&link, 3);
        peer.read_exact(&mut frame).await.expect("request 3");
        reply(&mut peer, 3).await;
        assert_eq!(outcome(third).await, Ok(Reply::Error("for 3".into())));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_peer_that_goes_away_fails_every_waiting_caller_at_once() {
        let (addr, peer) = peer(1000).await;
        let (link, _stop) = link_to(addr).await;
        let calls: Vec<_> = (0..5u64).map(|id| spawn_call(&link, id)).collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        peer.abort();
        for call in calls {
            assert_eq!(outcome(call).await, Err(Closed));
        }
        assert!(link.is_closed());
        assert_eq!(link.call(9, &request(9)).await, Err(Closed), "a closed link refuses new requests");
    }

    /// A link and the peer's end of its connection, for tests that play the peer by hand.
    async fn link_and_peer_end() -> (Arc<Link>, CancellationToken, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let (link, stop) = link_to(listener.local_addr().expect("addr")).await;
        let (accepted, _) = listener.accept().await.expect("accept");
        (link, stop, accepted)
    }

    /// Request `id` on `link` in a task of its own, as a replication caller makes it.
    fn spawn_call(link: &Arc<Link>, id: u64) -> tokio::task::JoinHandle<Result<Reply, Closed>> {
        let link = link.clone();
        tokio::spawn(async move { link.call(id, &request(id)).await })
    }

    /// What a spawned call came to, within 5 s.
    async fn outcome(call: tokio::task::JoinHandle<Result<Reply, Closed>>) -> Result<Reply, Closed> {
        tokio::time::timeout(Duration::from_secs(5), call).await.expect("in time").expect("task")
    }

    async fn reply(peer: &mut TcpStream, id: u64) {
        let mut out = Vec::new();
        let reply = ReplyEnvelope { id, body: Reply::Error(format!("for {id}")) };
        append_frame(&mut out, &postcard::to_allocvec(&reply).expect("ser")).expect("frame");
        peer.write_all(&out).await.expect("write");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reader_whose_reply_came_hands_the_role_to_a_waiting_caller() {
        let (link, _stop, mut peer) = link_and_peer_end().await;
        let mut frame = [0u8; 12];
        let first = spawn_call(&link, 1);
        peer.read_exact(&mut frame).await.expect("request 1");
        let second = spawn_call(&link, 2);
        peer.read_exact(&mut frame).await.expect("request 2");
        // The first caller is the reader; its reply alone comes, and it leaves.
        reply(&mut peer, 1).await;
        assert_eq!(outcome(first).await, Ok(Reply::Error("for 1".into())));
        // Only now the second reply: nobody reads it unless the role was handed on.
        tokio::time::sleep(Duration::from_millis(50)).await;
        reply(&mut peer, 2).await;
        assert_eq!(outcome(second).await, Ok(Reply::Error("for 2".into())));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stopping_the_node_closes_the_link_and_the_peer_sees_the_end() {
        let (link, stop, mut accepted) = link_and_peer_end().await;
        stop.cancel();
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), accepted.read(&mut byte)).await.expect("in time");
        assert_eq!(read.expect("read"), 0, "the peer reads the end of the stream");
        assert!(link.is_closed());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stopping_closes_a_link_whose_peer_takes_nothing() {
        // The peer never reads: the socket fills, the rest waits in `unsent`, and the flusher waits for room.
        let (link, stop, _peer) = link_and_peer_end().await;
        let big = {
            let mut framed = Vec::new();
            append_frame(&mut framed, &vec![0u8; 1 << 20]).expect("frame");
            framed
        };
        for id in 0..24 {
            let _ = tokio::time::timeout(Duration::from_millis(20), link.call(id, &big)).await;
        }
        assert!(!link.is_closed(), "a slow peer alone does not close the link");
        stop.cancel();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !link.is_closed() {
            assert!(tokio::time::Instant::now() < deadline, "the stop did not reach the waiting flusher");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn frames_the_opener_refuses_are_skipped() {
        let (link, _stop, mut accepted) = link_and_peer_end().await;
        let call = spawn_call(&link, 7);
        let mut frame = [0u8; 12];
        accepted.read_exact(&mut frame).await.expect("request");
        let mut out = Vec::new();
        append_frame(&mut out, b"\xff\xff not a reply").expect("frame");
        let reply = ReplyEnvelope { id: 7, body: Reply::Applied };
        append_frame(&mut out, &postcard::to_allocvec(&reply).expect("ser")).expect("frame");
        accepted.write_all(&out).await.expect("write");
        assert_eq!(outcome(call).await, Ok(Reply::Applied));
    }
}
