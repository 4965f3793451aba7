//! Replication messages and their framing on TCP: a 4-byte big-endian length, then a sealed frame whose payload is
//! the postcard encoding of an envelope. Knows maps by their [`MapId`] and tickets only as bytes.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::replica::{BucketDigest, Entry, MapId};

/// Frames larger than this are refused before allocation: a page of entries stays far below it.
pub const MAX_FRAME_BYTES: usize = 16 << 20;
/// A page of entries holds about this much (at least one entry, however large): pages are sized by bytes, not by
/// entry count, so that sessions with many services or large attributes still fit a frame (issue 12).
pub const PAGE_BYTES: usize = 4 << 20;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Merge one entry into a map.
    Apply { map: MapId, entry: Entry },
    /// Asks the owner of a one-time ticket to consume it.
    Consume { map: MapId, id: String },
    /// The map's digest: a hash and a count per bucket of ids.
    Digest { map: MapId },
    /// The entries, tombstones included, in the given buckets of a map, in id order, from the first id after
    /// `after`, up to about `PAGE_BYTES`.
    Buckets { map: MapId, buckets: Vec<u16>, after: Option<String> },
    /// The first request on a new connection: a small frame that proves the sender holds the key before the
    /// server accepts frames of a write's size.
    Hello,
    /// "You missed some of my writes: pull my maps." Sent when the peer is back after missing acknowledgements, so a
    /// cut shorter than failure detection is repaired at once rather than at the next periodic anti-entropy.
    Repair,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    Applied,
    /// The consumed value, or none when the ticket was unknown or already used.
    Consumed(Option<Vec<u8>>),
    /// This node is not the current owner of the ticket.
    NotOwner,
    Digest(Vec<BucketDigest>),
    /// In id order; `truncated` when the page ended before the buckets did (ask again after the last id).
    Entries {
        entries: Vec<Entry>,
        truncated: bool,
    },
    Error(String),
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RequestEnvelope {
    pub id: u64,
    pub body: Request,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ReplyEnvelope {
    pub id: u64,
    pub body: Reply,
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {0} bytes is over the limit")]
    TooLarge(usize),
}

/// Appends one length-prefixed frame to `batch`, so that frames queued together leave in one write.
pub fn append_frame(batch: &mut Vec<u8>, frame: &[u8]) -> Result<(), FrameError> {
    if frame.len() > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(frame.len()));
    }
    batch.extend_from_slice(&(frame.len() as u32).to_be_bytes());
    batch.extend_from_slice(frame);
    Ok(())
}

/// Writes a batch of frames; frames queued while one write is in flight go out together in the next.
pub async fn write_batch<W: AsyncWrite + Unpin>(w: &mut W, batch: &[u8]) -> Result<(), FrameError> {
    w.write_all(batch).await?;
    Ok(())
}

/// The first length-prefixed frame in `buffered` and the bytes it takes with its prefix, or `None` while it has not
/// all arrived. A length over the limit is an error, however few bytes are in.
pub fn split_frame(buffered: &[u8]) -> Result<Option<(&[u8], usize)>, FrameError> {
    let Some(len) = buffered.first_chunk::<4>() else { return Ok(None) };
    let len = u32::from_be_bytes(*len) as usize;
    if len > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(len));
    }
    Ok(buffered.get(4..4 + len).map(|frame| (frame, 4 + len)))
}

/// Whether `buffered` starts with a whole frame, so that reading it needs no more bytes.
pub fn holds_whole_frame(buffered: &[u8]) -> bool {
    matches!(split_frame(buffered), Ok(Some(_)))
}

/// Reads one length-prefixed frame of at most `max` bytes. Room is made as bytes arrive, never for the length the
/// prefix claims: before a frame is authenticated, a sender can make this node hold only what it really sent.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, max: usize) -> Result<Vec<u8>, FrameError> {
    const STEP: usize = 64 << 10;
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max.min(MAX_FRAME_BYTES) {
        return Err(FrameError::TooLarge(len));
    }
    let mut frame = Vec::with_capacity(len.min(STEP));
    while frame.len() < len {
        let have = frame.len();
        frame.resize(have + (len - have).min(STEP), 0);
        r.read_exact(&mut frame[have..]).await?;
    }
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_oversize_is_refused() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let mut one = Vec::new();
        append_frame(&mut one, b"abc").expect("frame");
        write_batch(&mut a, &one).await.expect("write");
        assert_eq!(read_frame(&mut b, 16).await.expect("read"), b"abc");
        a.write_all(&u32::MAX.to_be_bytes()).await.expect("write");
        assert!(matches!(read_frame(&mut b, MAX_FRAME_BYTES).await, Err(FrameError::TooLarge(_))));
        a.write_all(&17u32.to_be_bytes()).await.expect("write");
        assert!(matches!(read_frame(&mut b, 16).await, Err(FrameError::TooLarge(17))), "over the caller's bound");
        let mut two = Vec::new();
        append_frame(&mut two, b"abc").expect("frame");
        append_frame(&mut two, b"defg").expect("frame");
        assert!(holds_whole_frame(&two) && holds_whole_frame(&two[7..]));
        assert!(!holds_whole_frame(&two[7..10]) && !holds_whole_frame(&two[..2]) && !holds_whole_frame(&[]));
        assert_eq!(split_frame(&two).expect("in bounds"), Some((&b"abc"[..], 7)));
        assert!(matches!(split_frame(&u32::MAX.to_be_bytes()), Err(FrameError::TooLarge(_))));
        let env = RequestEnvelope { id: 7, body: Request::Consume { map: MapId::St, id: "ST-1-n".into() } };
        let back: RequestEnvelope = postcard::from_bytes(&postcard::to_allocvec(&env).expect("ser")).expect("de");
        assert_eq!((back.id, back.body), (7, env.body));
    }
}
