//! Sealing of every cluster datagram and frame with ChaCha20-Poly1305 under the cluster key. Pure: no sockets, time
//! passed in.
//!
//! Keys: HKDF-SHA256 over the 32-byte cluster key, salted with the cluster id, gives one key per (purpose, sender,
//! sender boot). A sender's boot id is 16 random bytes drawn at start, so a counter nonce is never reused under a
//! key, even across restarts. Wire format (all integers big-endian):
//!
//! ```text
//! "CS" | version 1 | purpose | sender len | sender | boot id (16) | boot ms (8) | sent ms (8) | counter (8) | ciphertext+tag
//! ```
//!
//! The whole header is associated data, so sender, boot and counter cannot be changed without failing the tag. The
//! receiver drops frames that fail the tag (wrong key, forgery), replays (a sliding window per sender boot), frames
//! from a boot older than one it has seen, and frames whose send time is too far from its clock (invariant 6).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine;
use hkdf::Hkdf;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use sha2::Sha256;

use crate::clock::EpochMs;

const MAGIC: &[u8; 2] = b"CS";
const VERSION: u8 = 1;
const TAG_LEN: usize = 16;
/// How far a frame's send time may be from the receiver's clock. Cluster clocks must agree this well (NTP).
pub const MAX_CLOCK_SKEW_MS: u64 = 30_000;
/// Out-of-order frames accepted per sender boot: enough for UDP reordering, small enough to keep state tiny.
const REPLAY_WINDOW: u64 = 128;

/// The 32-byte shared cluster key. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKey([u8; 32]);

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterKey(<redacted>)")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("not valid base64")]
    Base64,
    #[error("must decode to exactly 32 bytes (got {0})")]
    Length(usize),
}

impl ClusterKey {
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        let bytes = base64::engine::general_purpose::STANDARD.decode(text.trim()).map_err(|_| KeyError::Base64)?;
        let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| KeyError::Length(bytes.len()))?;
        Ok(Self(key))
    }

    pub fn generate() -> Self {
        let mut key = [0u8; 32];
        rand::fill(&mut key);
        Self(key)
    }

    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }
}

/// What a sealed frame is for; each purpose has its own keys, so a frame cannot be moved from one use to another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Purpose {
    Gossip = 1,
    Beacon = 2,
    /// Replication requests (writes, consumes, snapshot pulls).
    Replication = 3,
    /// Replies to replication requests: their own keys and replay window, since they travel on the other
    /// direction's connection.
    ReplicationReply = 4,
}

impl Purpose {
    fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(Self::Gossip),
            2 => Some(Self::Beacon),
            3 => Some(Self::Replication),
            4 => Some(Self::ReplicationReply),
            _ => None,
        }
    }
}

/// Why a frame was dropped. Each reason is counted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("frame is malformed")]
    Malformed,
    #[error("frame is for another purpose")]
    WrongPurpose,
    #[error("frame failed authentication (wrong cluster key or forged)")]
    BadTag,
    #[error("frame from {sender} replayed (counter {counter})")]
    Replayed { sender: String, counter: u64 },
    #[error("frame from an earlier boot of {sender}")]
    StaleBoot { sender: String },
    #[error("frame sent too far from now ({skew_ms} ms)")]
    Stale { skew_ms: u64 },
}

/// The AEAD of every frame: ChaCha20-Poly1305 (RFC 8439) as `ring` implements it. The `chacha20poly1305` crate
/// computes the same bytes (both are RFC 8439, so nodes of either build understand each other), but
/// its AVX2 Poly1305 costs about 1.4 us of set-up per message: 2.3 us against ring's 0.4 us for a 420-byte frame on
/// this project's machine, and a write replicated to two peers seals four frames and opens four.
type Cipher = LessSafeKey;

fn derive(key: &ClusterKey, cluster_id: &str, purpose: Purpose, sender: &str, boot_id: &[u8; 16]) -> Cipher {
    let hk = Hkdf::<Sha256>::new(Some(cluster_id.as_bytes()), &key.0);
    let mut info = Vec::with_capacity(32 + sender.len());
    info.extend_from_slice(b"casd seal v1");
    info.push(purpose as u8);
    info.push(sender.len() as u8);
    info.extend_from_slice(sender.as_bytes());
    info.extend_from_slice(boot_id);
    let mut okm = [0u8; 32];
    hk.expand(&info, &mut okm).expect("32 bytes is a valid HKDF-SHA256 output length");
    LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &okm).expect("a 32-byte key is a valid ChaCha20 key"))
}

/// The nonce of frame `counter`: unique under its key, since each key is one sender's in one boot and the counter
/// only rises.
fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// Seals frames sent by this node in this boot.
pub struct Sealer {
    node: String,
    boot_id: [u8; 16],
    boot_ms: EpochMs,
    counter: AtomicU64,
    ciphers: HashMap<Purpose, Cipher>,
}

impl Sealer {
    /// `node` is at most 255 bytes (config limits it to 16).
    pub fn new(key: &ClusterKey, cluster_id: &str, node: &str, boot_ms: EpochMs) -> Self {
        let mut boot_id = [0u8; 16];
        rand::fill(&mut boot_id);
        let ciphers = [Purpose::Gossip, Purpose::Beacon, Purpose::Replication, Purpose::ReplicationReply]
            .into_iter()
            .map(|p| (p, derive(key, cluster_id, p, node, &boot_id)))
            .collect();
        Self { node: node.to_owned(), boot_id, boot_ms, counter: AtomicU64::new(0), ciphers }
    }

    /// Seals a frame for every node (gossip, beacons).
    pub fn seal(&self, purpose: Purpose, payload: &[u8], now: EpochMs) -> Vec<u8> {
        self.seal_to(purpose, "", payload, now)
    }

    /// Seals a frame that only `recipient` accepts: its name is part of the associated data, so a frame captured on
    /// one link cannot be replayed to another node.
    pub fn seal_to(&self, purpose: Purpose, recipient: &str, payload: &[u8], now: EpochMs) -> Vec<u8> {
        let counter = self.counter.fetch_add(1, Ordering::Relaxed) + 1;
        let mut frame = Vec::with_capacity(45 + self.node.len() + payload.len() + TAG_LEN);
        frame.extend_from_slice(MAGIC);
        frame.push(VERSION);
        frame.push(purpose as u8);
        frame.push(self.node.len() as u8);
        frame.extend_from_slice(self.node.as_bytes());
        frame.extend_from_slice(&self.boot_id);
        frame.extend_from_slice(&self.boot_ms.to_be_bytes());
        frame.extend_from_slice(&now.to_be_bytes());
        frame.extend_from_slice(&counter.to_be_bytes());
        let cipher = &self.ciphers[&purpose];
        let aad = [frame.as_slice(), recipient.as_bytes()].concat();
        let header_len = frame.len();
        frame.extend_from_slice(payload);
        let tag = cipher
            .seal_in_place_separate_tag(nonce(counter), Aad::from(&aad), &mut frame[header_len..])
            .expect("ChaCha20-Poly1305 sealing fails only past 256 GiB per frame");
        frame.extend_from_slice(tag.as_ref());
        frame
    }
}

/// An opened frame.
#[derive(Debug, PartialEq, Eq)]
pub struct Opened {
    pub sender: String,
    pub payload: Vec<u8>,
}

struct Header<'a> {
    purpose: Purpose,
    sender: &'a str,
    boot_id: [u8; 16],
    boot_ms: u64,
    sent_ms: u64,
    counter: u64,
    len: usize,
}

fn parse_header(frame: &[u8]) -> Result<Header<'_>, SealError> {
    let take = |at: usize, n: usize| frame.get(at..at + n).ok_or(SealError::Malformed);
    if take(0, 2)? != MAGIC || take(2, 1)?[0] != VERSION {
        return Err(SealError::Malformed);
    }
    let purpose = Purpose::from_byte(take(3, 1)?[0]).ok_or(SealError::Malformed)?;
    let sender_len = take(4, 1)?[0] as usize;
    let sender = std::str::from_utf8(take(5, sender_len)?).map_err(|_| SealError::Malformed)?;
    let at = 5 + sender_len;
    let u64_at = |at: usize| -> Result<u64, SealError> {
        Ok(u64::from_be_bytes(take(at, 8)?.try_into().map_err(|_| SealError::Malformed)?))
    };
    let boot_id: [u8; 16] = take(at, 16)?.try_into().map_err(|_| SealError::Malformed)?;
    let header = Header {
        purpose,
        sender,
        boot_id,
        boot_ms: u64_at(at + 16)?,
        sent_ms: u64_at(at + 24)?,
        counter: u64_at(at + 32)?,
        len: at + 40,
    };
    if frame.len() < header.len + TAG_LEN {
        return Err(SealError::Malformed);
    }
    Ok(header)
}

/// Sliding replay window: the highest counter seen and a bitmap of the `REPLAY_WINDOW` counters below it.
#[derive(Default)]
struct ReplayWindow {
    highest: u64,
    seen: u128,
}

impl ReplayWindow {
    fn accept(&mut self, counter: u64) -> bool {
        if counter > self.highest {
            let shift = counter - self.highest;
            self.seen = if shift >= REPLAY_WINDOW { 0 } else { self.seen << shift };
            self.seen |= 1;
            self.highest = counter;
            return true;
        }
        let back = self.highest - counter;
        if back >= REPLAY_WINDOW || self.seen & (1u128 << back) != 0 {
            return false;
        }
        self.seen |= 1u128 << back;
        true
    }
}

struct PeerBoot {
    cipher: Cipher,
    window: ReplayWindow,
}

/// Opens frames of one purpose from any node of the cluster, keeping the replay state.
pub struct Opener {
    key: ClusterKey,
    cluster_id: String,
    purpose: Purpose,
    /// This node's name for frames sealed to it, empty for broadcast purposes.
    recipient: String,
    boots: HashMap<(String, [u8; 16]), PeerBoot>,
    latest_boot_ms: HashMap<String, u64>,
}

impl Opener {
    /// Opens frames sealed for every node.
    pub fn new(key: &ClusterKey, cluster_id: &str, purpose: Purpose) -> Self {
        Self::for_recipient(key, cluster_id, purpose, "")
    }

    /// Opens only frames sealed to `recipient` (this node).
    pub fn for_recipient(key: &ClusterKey, cluster_id: &str, purpose: Purpose, recipient: &str) -> Self {
        Self {
            key: key.clone(),
            cluster_id: cluster_id.to_owned(),
            purpose,
            recipient: recipient.to_owned(),
            boots: HashMap::new(),
            latest_boot_ms: HashMap::new(),
        }
    }

    pub fn open(&mut self, frame: &[u8], now: EpochMs) -> Result<Opened, SealError> {
        let h = parse_header(frame)?;
        if h.purpose != self.purpose {
            return Err(SealError::WrongPurpose);
        }
        let skew_ms = now.abs_diff(h.sent_ms);
        if skew_ms > MAX_CLOCK_SKEW_MS {
            return Err(SealError::Stale { skew_ms });
        }
        if self.latest_boot_ms.get(h.sender).is_some_and(|latest| h.boot_ms < *latest) {
            return Err(SealError::StaleBoot { sender: h.sender.to_owned() });
        }
        let id = (h.sender.to_owned(), h.boot_id);
        let (key, cluster_id, purpose) = (&self.key, &self.cluster_id, self.purpose);
        let boot = self.boots.entry(id).or_insert_with(|| PeerBoot {
            cipher: derive(key, cluster_id, purpose, h.sender, &h.boot_id),
            window: ReplayWindow::default(),
        });
        let aad = [&frame[..h.len], self.recipient.as_bytes()].concat();
        let mut payload = frame[h.len..].to_vec();
        let opened = boot.cipher.open_in_place(nonce(h.counter), Aad::from(&aad), &mut payload).map(|p| p.len());
        match opened {
            Ok(len) => payload.truncate(len),
            Err(_) => {
                // Keep no state for senders that could not prove they hold the key.
                if boot.window.highest == 0 {
                    self.boots.remove(&(h.sender.to_owned(), h.boot_id));
                }
                return Err(SealError::BadTag);
            }
        }
        // The window moves only after the tag checked out, so forged counters cannot poison it.
        if !boot.window.accept(h.counter) {
            return Err(SealError::Replayed { sender: h.sender.to_owned(), counter: h.counter });
        }
        let sender = h.sender.to_owned();
        if self.latest_boot_ms.get(&sender).is_none_or(|latest| h.boot_ms > *latest) {
            self.latest_boot_ms.insert(sender.clone(), h.boot_ms);
            let current = h.boot_id;
            self.boots.retain(|(s, b), _| s != &sender || *b == current);
        }
        Ok(Opened { sender, payload })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    fn pair() -> (ClusterKey, Sealer, Opener) {
        let key = ClusterKey::generate();
        let sealer = Sealer::new(&key, "c1", "node1", NOW - 1000);
        let opener = Opener::new(&key, "c1", Purpose::Gossip);
        (key, sealer, opener)
    }

    #[test]
    fn round_trip_names_the_sender() {
        let (_, s, mut o) = pair();
        let frame = s.seal(Purpose::Gossip, b"hello", NOW);
        assert!(!frame.windows(5).any(|w| w == b"hello"), "payload is encrypted");
        assert_eq!(o.open(&frame, NOW), Ok(Opened { sender: "node1".into(), payload: b"hello".to_vec() }));
    }

    #[test]
    fn wrong_key_wrong_cluster_and_tampering_fail_the_tag() {
        let (key, s, _) = pair();
        let frame = s.seal(Purpose::Gossip, b"x", NOW);
        assert_eq!(
            Opener::new(&ClusterKey::generate(), "c1", Purpose::Gossip).open(&frame, NOW),
            Err(SealError::BadTag)
        );
        assert_eq!(Opener::new(&key, "c2", Purpose::Gossip).open(&frame, NOW), Err(SealError::BadTag));
        let mut renamed = frame.clone();
        renamed[5] = b'N'; // the sender's name is in the associated data
        assert_eq!(Opener::new(&key, "c1", Purpose::Gossip).open(&renamed, NOW), Err(SealError::BadTag));
        let mut flipped = frame.clone();
        *flipped.last_mut().expect("non-empty") ^= 1;
        assert_eq!(Opener::new(&key, "c1", Purpose::Gossip).open(&flipped, NOW), Err(SealError::BadTag));
        assert_eq!(Opener::new(&key, "c1", Purpose::Beacon).open(&frame, NOW), Err(SealError::WrongPurpose));
    }

    #[test]
    fn replays_are_refused_and_reordering_within_the_window_is_not() {
        let (_, s, mut o) = pair();
        let frames: Vec<_> = (0..5).map(|i| s.seal(Purpose::Gossip, &[i], NOW)).collect();
        assert!(o.open(&frames[4], NOW).is_ok());
        assert!(o.open(&frames[1], NOW).is_ok(), "late but new");
        assert!(matches!(o.open(&frames[4], NOW), Err(SealError::Replayed { counter: 5, .. })));
        assert!(matches!(o.open(&frames[1], NOW), Err(SealError::Replayed { .. })));
        for _ in 0..200 {
            o.open(&s.seal(Purpose::Gossip, b"", NOW), NOW).expect("fresh");
        }
        assert!(matches!(o.open(&frames[2], NOW), Err(SealError::Replayed { .. })), "older than the window");
    }

    #[test]
    fn frames_of_an_earlier_boot_and_stale_frames_are_refused() {
        let (key, old, mut o) = pair();
        let new = Sealer::new(&key, "c1", "node1", NOW);
        let old_frame = old.seal(Purpose::Gossip, b"", NOW);
        o.open(&new.seal(Purpose::Gossip, b"", NOW), NOW).expect("new boot");
        assert_eq!(o.open(&old_frame, NOW), Err(SealError::StaleBoot { sender: "node1".into() }));
        let late = new.seal(Purpose::Gossip, b"", NOW - MAX_CLOCK_SKEW_MS - 1);
        assert!(matches!(o.open(&late, NOW), Err(SealError::Stale { .. })));
    }

    #[test]
    fn a_frame_sealed_to_one_node_is_refused_by_another() {
        let (key, s, _) = pair();
        let frame = s.seal_to(Purpose::Replication, "node2", b"put", NOW);
        let mut node2 = Opener::for_recipient(&key, "c1", Purpose::Replication, "node2");
        let mut node3 = Opener::for_recipient(&key, "c1", Purpose::Replication, "node3");
        assert_eq!(node3.open(&frame, NOW), Err(SealError::BadTag));
        assert_eq!(node2.open(&frame, NOW).map(|o| o.payload), Ok(b"put".to_vec()));
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        let (_, _, mut o) = pair();
        for junk in [&b""[..], b"CS", b"CS\x01\x01\xff", &[0u8; 100], b"CS\x01\x01\x02n1"] {
            assert_eq!(o.open(junk, NOW), Err(SealError::Malformed), "{junk:?}");
        }
    }

    #[test]
    fn key_parsing_and_redaction() {
        let k = ClusterKey::generate();
        assert_eq!(ClusterKey::from_base64(&k.to_base64()), Ok(k.clone()));
        assert_eq!(ClusterKey::from_base64("AAAA"), Err(KeyError::Length(3)));
        assert_eq!(ClusterKey::from_base64("!!"), Err(KeyError::Base64));
        assert_eq!(format!("{k:?}"), "ClusterKey(<redacted>)");
    }
}
