//! Ticket identifiers: `<PREFIX>-<random><mac>-<suffix>`.
//!
//! The random part is 22 base62 characters from a CSPRNG (about 131 bits, CAS 3.0 §3.7 asks for "secure random
//! data"). The mac is 8 base62 characters (47 bits) of an HMAC-SHA256 of the rest of the id, under a key every node
//! of the cluster derives from the cluster key: an id nobody issued is recognised without a lookup and without a
//! replicated write (a forged cookie at `/logout` used to leave a tombstone on every node, issue 12). The suffix
//! names the issuing node and its boot generation, so a cluster can route a consume to the one node allowed to
//! decide it; it is covered by the mac but still only a routing hint. Every id uses only `[A-Za-z0-9-]` (CAS 3.0
//! §3.7; mod_auth_cas and phpCAS reject anything else) and is at most 64 characters.

use std::fmt;
use std::hash::{Hash, Hasher};

use rand::Rng;

/// The longest id accepted from a client: CAS 3.0 §3.1.1 asks clients to accept up to 256 characters, so nothing we
/// issue is longer and anything longer is not ours.
pub const MAX_TICKET_ID_LEN: usize = 256;

const RANDOM_CHARS: usize = 22;
const MAC_CHARS: usize = 8;
const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// Generation is written in a fixed width so that the node name before it may end in digits.
const GENERATION_WIDTH: usize = 8;

/// The kinds of ticket CAS hands out, with the prefixes the spec asks for (CAS 3.0 §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum TicketKind {
    Tgt,
    St,
    Pt,
    Pgt,
    PgtIou,
    Lt,
}

impl TicketKind {
    pub const ALL: [TicketKind; 6] = [Self::Tgt, Self::St, Self::Pt, Self::Pgt, Self::PgtIou, Self::Lt];

    pub fn prefix(self) -> &'static str {
        match self {
            Self::Tgt => "TGT",
            Self::St => "ST",
            Self::Pt => "PT",
            Self::Pgt => "PGT",
            Self::PgtIou => "PGTIOU",
            Self::Lt => "LT",
        }
    }

    fn from_prefix(prefix: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.prefix() == prefix)
    }
}

/// Why a string is not a ticket id of ours.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TicketIdError {
    #[error("ticket id is empty")]
    Empty,
    #[error("ticket id is longer than {MAX_TICKET_ID_LEN} characters")]
    TooLong,
    #[error("ticket id holds a character outside [A-Za-z0-9-]")]
    BadCharacter,
    #[error("ticket id has no known prefix")]
    UnknownPrefix,
    #[error("ticket id is not of the form PREFIX-RANDOM-NODE")]
    Malformed,
}

/// A syntactically valid ticket id. Its `Display` is the full id (it goes on the wire); use [`TicketId::redacted`]
/// for logs.
#[derive(Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct TicketId(String);

impl TicketId {
    /// Parses an id received from a client. Only the shape is checked; whether the ticket exists is the registry's
    /// business.
    pub fn parse(s: &str) -> Result<Self, TicketIdError> {
        if s.is_empty() {
            return Err(TicketIdError::Empty);
        }
        if s.len() > MAX_TICKET_ID_LEN {
            return Err(TicketIdError::TooLong);
        }
        if !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(TicketIdError::BadCharacter);
        }
        let mut parts = s.split('-');
        let prefix = parts.next().ok_or(TicketIdError::Malformed)?;
        TicketKind::from_prefix(prefix).ok_or(TicketIdError::UnknownPrefix)?;
        let rest: Vec<&str> = parts.collect();
        if rest.len() < 2 || rest.iter().any(|p| p.is_empty()) {
            return Err(TicketIdError::Malformed);
        }
        Ok(Self(s.to_owned()))
    }

    pub fn kind(&self) -> TicketKind {
        let prefix = self.0.split('-').next().unwrap_or_default();
        TicketKind::from_prefix(prefix).expect("a TicketId is only built with a known prefix")
    }

    /// The issuing node and its boot generation, read from the suffix.
    pub fn origin(&self) -> Option<Origin> {
        let suffix = self.0.rsplit('-').next()?;
        if suffix.len() <= GENERATION_WIDTH {
            return None;
        }
        let (node, generation) = suffix.split_at(suffix.len() - GENERATION_WIDTH);
        Some(Origin { node: node.to_owned(), generation: u64::from_str_radix(generation, 36).ok()? })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The prefix plus a short hash: enough to follow one ticket through the logs, useless to an attacker.
    pub fn redacted(&self) -> String {
        redact(&self.0)
    }
}

/// Redacts any ticket-like secret (ids, cookie values) for logging.
fn redact(secret: &str) -> String {
    let prefix = secret.split('-').next().unwrap_or_default();
    let prefix = if TicketKind::from_prefix(prefix).is_some() { prefix } else { "?" };
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    secret.hash(&mut hasher);
    format!("{prefix}-#{:04x}", hasher.finish() & 0xffff)
}

impl fmt::Display for TicketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TicketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TicketId({})", self.redacted())
    }
}

/// Which node issued a ticket, and in which boot of that node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub node: String,
    pub generation: u64,
}

/// Mints ticket ids for one node in one boot, and recognises the ids of every node sharing its mac key.
#[derive(Clone)]
pub struct IdGenerator {
    suffix: String,
    mac_key: ring::hmac::Key,
}

impl fmt::Debug for IdGenerator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdGenerator").field("suffix", &self.suffix).finish_non_exhaustive()
    }
}

impl IdGenerator {
    /// `node` must be 1..=16 ASCII letters or digits (checked by config validation); `generation` must differ on
    /// every boot of the node (the boot time in milliseconds does). `mac_key` is shared by the whole cluster.
    pub fn new(node: &str, generation: u64, mac_key: &[u8; 32]) -> Self {
        Self {
            suffix: format!("{node}{}", base36_fixed(generation)),
            mac_key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, mac_key),
        }
    }

    pub fn mint(&self, kind: TicketKind) -> TicketId {
        let mut rng = rand::rng(); // ChaCha-based, seeded and reseeded from the OS: a CSPRNG.
        let random: String = (0..RANDOM_CHARS).map(|_| char::from(BASE62[rng.random_range(0..BASE62.len())])).collect();
        let mac = self.mac(kind.prefix(), &random, &self.suffix);
        TicketId(format!("{}-{random}{mac}-{}", kind.prefix(), self.suffix))
    }

    fn mac(&self, prefix: &str, random: &str, suffix: &str) -> String {
        let tag = ring::hmac::sign(&self.mac_key, format!("{prefix}-{random}-{suffix}").as_bytes());
        tag.as_ref()[..MAC_CHARS].iter().map(|b| char::from(BASE62[usize::from(*b) % BASE62.len()])).collect()
    }

    /// Whether `id` was minted by a node holding this mac key. Compared in constant time.
    pub fn recognises(&self, id: &TicketId) -> bool {
        let mut parts = id.0.split('-');
        let (Some(prefix), Some(middle), Some(suffix), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return false;
        };
        if middle.len() != RANDOM_CHARS + MAC_CHARS {
            return false;
        }
        let (random, mac) = middle.split_at(RANDOM_CHARS);
        let expected = self.mac(prefix, random, suffix);
        expected.bytes().zip(mac.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

fn base36_fixed(mut n: u64) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = vec![b'0'; GENERATION_WIDTH];
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(n % 36) as usize];
        n /= 36;
    }
    String::from_utf8(out).expect("base36 digits are ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_ids_parse_back_with_their_kind_and_origin() {
        let ids = IdGenerator::new("node1", 1_790_000_000_123, &[7; 32]);
        for kind in TicketKind::ALL {
            let id = ids.mint(kind);
            let parsed = TicketId::parse(id.as_str()).expect("own ids parse");
            assert_eq!(parsed.kind(), kind);
            assert_eq!(parsed.origin(), Some(Origin { node: "node1".into(), generation: 1_790_000_000_123 }));
            assert!(id.as_str().len() <= 64, "short enough for old clients: {id}");
            assert!(ids.recognises(&parsed));
        }
    }

    #[test]
    fn ids_are_unique_and_charset_safe() {
        let ids = IdGenerator::new("n", 7, &[7; 32]);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let id = ids.mint(TicketKind::St);
            assert!(id.as_str().bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
            assert!(seen.insert(id));
        }
    }

    /// An id with a changed character anywhere (random part, mac or suffix), or from another cluster's key, is not
    /// recognised.
    #[test]
    fn only_ids_minted_under_the_key_are_recognised() {
        let ids = IdGenerator::new("node1", 42, &[7; 32]);
        let id = ids.mint(TicketKind::Tgt);
        for at in (4..id.as_str().len()).filter(|&i| id.as_str().as_bytes()[i] != b'-') {
            let mut forged = id.as_str().as_bytes().to_vec();
            forged[at] = if forged[at] == b'a' { b'b' } else { b'a' };
            let forged = TicketId::parse(std::str::from_utf8(&forged).expect("ascii")).expect("well formed");
            assert!(!ids.recognises(&forged), "changed at {at}: {forged:?}");
        }
        assert!(!IdGenerator::new("node1", 42, &[8; 32]).recognises(&id), "another cluster's key");
        assert!(IdGenerator::new("node2", 43, &[7; 32]).recognises(&id), "any node of the cluster recognises it");
        let unmacd = TicketId::parse("TGT-AAAAAAAAAAAAAAAAAAAAAA-node10000000a").expect("well formed");
        assert!(!ids.recognises(&unmacd));
    }

    #[test]
    fn foreign_or_malformed_ids_are_refused() {
        assert_eq!(TicketId::parse(""), Err(TicketIdError::Empty));
        assert_eq!(TicketId::parse("XX-abc-node"), Err(TicketIdError::UnknownPrefix));
        assert_eq!(TicketId::parse("ST-abc_def-node"), Err(TicketIdError::BadCharacter));
        assert_eq!(TicketId::parse("ST-abc"), Err(TicketIdError::Malformed));
        assert_eq!(TicketId::parse("ST--x"), Err(TicketIdError::Malformed));
        assert_eq!(TicketId::parse(&format!("ST-{}-n", "a".repeat(300))), Err(TicketIdError::TooLong));
    }

    #[test]
    fn redaction_keeps_the_prefix_and_hides_the_secret() {
        let id = IdGenerator::new("n", 1, &[7; 32]).mint(TicketKind::Tgt);
        let shown = id.redacted();
        assert!(shown.starts_with("TGT-#"));
        assert!(!shown.contains(&id.as_str()[4..12]));
        assert!(!format!("{id:?}").contains(&id.as_str()[4..12]));
    }
}
