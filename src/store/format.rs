//! The journal file's format, without I/O: a header, then sealed records, each a change of one replicated map.
//!
//! ```text
//! header (48 bytes): "CASDJRNL" | format version (u32 BE) | 4 reserved | file id (16 random) | key check (16)
//! record:            ciphertext length (u32 BE) | ChaCha20-Poly1305(postcard((MapId, Entry))) with its 16-byte tag
//! ```
//!
//! Every file has its own record key, HKDF-SHA256 of the storage key with the file id as info, so the nonce can be
//! the record's position in the file (0, 1, 2, ...): never reused under a key, and a record that is moved, dropped
//! or replaced fails its tag. The length is associated data. The key check (a value derived from the storage key,
//! not the key) tells "another key" apart from "a corrupt file" at start, before any record is read.
//!
//! A reader stops at the first record that is short or fails its tag: everything before it is good, everything from
//! it on is a torn or corrupt tail, to be cut and never served.

use hkdf::Hkdf;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use sha2::Sha256;

use crate::cluster::replication::replica::{Entry, MapId};

pub const MAGIC: &[u8; 8] = b"CASDJRNL";
pub const VERSION: u32 = 1;
pub const HEADER_LEN: usize = 48;
const TAG_LEN: usize = 16;
/// No record is larger (a TGT with its attributes and services is a few KiB): a corrupt length cannot make the
/// reader allocate gigabytes.
pub const MAX_RECORD: usize = 16 << 20;

/// The 32-byte key the journal is sealed under: derived from the cluster key, or `storage.key` on a single node.
#[derive(Clone)]
pub struct StorageKey([u8; 32]);

impl StorageKey {
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// A key for another use of the storage secret (the single node's ticket-id mac, which must outlive a restart
    /// for the sessions kept on disk to be recognised), independent of the record keys.
    pub fn derive_for(&self, purpose: &str) -> [u8; 32] {
        self.derive(format!("purpose {purpose}").as_bytes())
    }

    fn derive(&self, info: &[u8]) -> [u8; 32] {
        let mut okm = [0u8; 32];
        Hkdf::<Sha256>::new(Some(b"casd storage v1"), &self.0)
            .expand(info, &mut okm)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        okm
    }

    fn check(&self) -> [u8; 16] {
        let full = self.derive(b"key check");
        full[..16].try_into().expect("16 of 32 bytes")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    #[error("not a casd journal (no header)")]
    NotAJournal,
    #[error(
        "format version {found} is newer than this casd reads ({VERSION}): run the casd that wrote it, or a newer one"
    )]
    Newer { found: u32 },
    #[error("written under another key: the cluster key (or storage.key) differs from the one that wrote it")]
    WrongKey,
}

/// One journal file's sealing state: its header and the position of the next record.
pub struct Sealer {
    key: LessSafeKey,
    header: [u8; HEADER_LEN],
    next: u64,
}

impl Sealer {
    /// A new file: a fresh random id, so a fresh record key.
    pub fn new_file(key: &StorageKey) -> Self {
        let mut id = [0u8; 16];
        rand::fill(&mut id);
        let mut header = [0u8; HEADER_LEN];
        header[..8].copy_from_slice(MAGIC);
        header[8..12].copy_from_slice(&VERSION.to_be_bytes());
        header[16..32].copy_from_slice(&id);
        header[32..48].copy_from_slice(&key.check());
        Self { key: record_key(key, &id), header, next: 0 }
    }

    /// An existing file's header, checked against `key`.
    pub fn existing(key: &StorageKey, header: &[u8]) -> Result<Self, HeaderError> {
        if header.len() < HEADER_LEN || &header[..8] != MAGIC {
            return Err(HeaderError::NotAJournal);
        }
        let version = u32::from_be_bytes(header[8..12].try_into().expect("4 bytes"));
        if version > VERSION {
            return Err(HeaderError::Newer { found: version });
        }
        if header[32..48] != key.check() {
            return Err(HeaderError::WrongKey);
        }
        let id: [u8; 16] = header[16..32].try_into().expect("16 bytes");
        let header: [u8; HEADER_LEN] = header[..HEADER_LEN].try_into().expect("header length");
        Ok(Self { key: record_key(key, &id), header, next: 0 })
    }

    pub fn header(&self) -> &[u8; HEADER_LEN] {
        &self.header
    }

    /// The position of the next record; a failed write goes back to where it was.
    pub fn position(&self) -> u64 {
        self.next
    }

    pub fn rewind(&mut self, position: u64) {
        self.next = position;
    }

    /// Appends one sealed record for `entry` of `map` to `out`.
    pub fn seal(&mut self, map: MapId, entry: &Entry, out: &mut Vec<u8>) {
        let mut body = postcard::to_allocvec(&(map, entry)).expect("entries always serialise");
        let len = u32::try_from(body.len() + TAG_LEN).expect("a record is far below 4 GiB").to_be_bytes();
        self.key
            .seal_in_place_append_tag(nonce(self.next), Aad::from(len), &mut body)
            .expect("sealing in memory cannot fail");
        self.next += 1;
        out.extend_from_slice(&len);
        out.extend_from_slice(&body);
    }

    /// Reads the records of `bytes` (the file after its header) in order. Returns the good ones and the length of
    /// the good prefix: a reader must cut the file there. The sealer then continues after the last good record.
    pub fn open_all(&mut self, bytes: &[u8]) -> (Vec<(MapId, Entry)>, usize) {
        let (mut out, mut at) = (Vec::new(), 0usize);
        let mut buf = Vec::new();
        while let Some(len_bytes) = bytes.get(at..at + 4) {
            let len = u32::from_be_bytes(len_bytes.try_into().expect("4 bytes")) as usize;
            if !(TAG_LEN..=MAX_RECORD).contains(&len) {
                break;
            }
            let Some(sealed) = bytes.get(at + 4..at + 4 + len) else { break };
            buf.clear();
            buf.extend_from_slice(sealed);
            let aad = Aad::from(len_bytes.try_into().unwrap_or([0u8; 4]));
            let Ok(plain) = self.key.open_in_place(nonce(self.next), aad, &mut buf) else { break };
            let Ok(record) = postcard::from_bytes::<(MapId, Entry)>(plain) else { break };
            out.push(record);
            self.next += 1;
            at += 4 + len;
        }
        (out, at)
    }
}

fn record_key(key: &StorageKey, file_id: &[u8; 16]) -> LessSafeKey {
    let mut info = b"records ".to_vec();
    info.extend_from_slice(file_id);
    let bytes = key.derive(&info);
    LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &bytes).expect("a 32-byte key"))
}

fn nonce(position: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&position.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(n: usize) -> Vec<(MapId, Entry)> {
        (0..n)
            .map(|i| {
                let id = format!("TGT-{i:030}-n1x");
                if i % 3 == 2 {
                    (MapId::Pgt, Entry::Removed { id, gc_after: i as u64 })
                } else {
                    (MapId::Tgt, Entry::Live { id, value: vec![i as u8; i * 7] })
                }
            })
            .collect()
    }

    fn file(key: &StorageKey, records: &[(MapId, Entry)]) -> Vec<u8> {
        let mut s = Sealer::new_file(key);
        let mut out = s.header().to_vec();
        for (map, entry) in records {
            s.seal(*map, entry, &mut out);
        }
        out
    }

    #[test]
    fn records_read_back_in_order_and_the_file_holds_no_id_in_the_clear() {
        let key = StorageKey::new([7; 32]);
        let written = entries(20);
        let bytes = file(&key, &written);
        assert!(!bytes.windows(4).any(|w| w == b"TGT-"), "ticket ids are sealed");
        let mut r = Sealer::existing(&key, &bytes).expect("header");
        let (read, good) = r.open_all(&bytes[HEADER_LEN..]);
        assert_eq!(read, written);
        assert_eq!(good, bytes.len() - HEADER_LEN);
    }

    /// Every cut inside the last record, and any flipped byte, ends the good prefix just before that record.
    #[test]
    fn a_torn_or_corrupt_tail_is_cut_at_the_last_good_record() {
        let key = StorageKey::new([7; 32]);
        let written = entries(6);
        let bytes = file(&key, &written);
        let five = file(&key, &written[..5]).len() - HEADER_LEN; // same sizes, another file id
        for cut in HEADER_LEN + five..bytes.len() {
            let mut r = Sealer::existing(&key, &bytes).expect("header");
            let (read, good) = r.open_all(&bytes[HEADER_LEN..cut]);
            assert_eq!((read.len(), good), (5, five), "cut at {cut}");
        }
        for flip in [HEADER_LEN + five, HEADER_LEN + five + 3, HEADER_LEN + five + 9, bytes.len() - 1] {
            let mut corrupt = bytes.clone();
            corrupt[flip] ^= 0x20;
            let mut r = Sealer::existing(&key, &corrupt).expect("header");
            let (read, good) = r.open_all(&corrupt[HEADER_LEN..]);
            assert_eq!((read.len(), good), (5, five), "flip at {flip}");
        }
    }

    #[test]
    fn another_key_a_newer_version_and_garbage_are_told_apart() {
        let bytes = file(&StorageKey::new([7; 32]), &entries(2));
        let other = StorageKey::new([8; 32]);
        assert_eq!(Sealer::existing(&other, &bytes).err(), Some(HeaderError::WrongKey));
        let mut newer = bytes.clone();
        newer[8..12].copy_from_slice(&2u32.to_be_bytes());
        assert_eq!(Sealer::existing(&StorageKey::new([7; 32]), &newer).err(), Some(HeaderError::Newer { found: 2 }));
        assert_eq!(Sealer::existing(&other, b"hello").err(), Some(HeaderError::NotAJournal));
    }

    /// A record copied from one file into another (same key) fails there: each file has its own record key.
    #[test]
    fn a_record_moved_between_files_fails() {
        let key = StorageKey::new([7; 32]);
        let a = file(&key, &entries(1));
        let b = file(&key, &entries(1));
        let mut spliced = b[..HEADER_LEN].to_vec();
        spliced.extend_from_slice(&a[HEADER_LEN..]);
        let mut r = Sealer::existing(&key, &spliced).expect("header");
        assert_eq!(r.open_all(&spliced[HEADER_LEN..]).0.len(), 0);
    }
}
