//! The chaos lab's record of the one-time tickets this node handed out as valid (`lab.consume_journal`): one line
//! per successful consume, written as it happens. The chaos checker counts these, the server's own successes,
//! rather than only the ones a client saw: a validation whose client timed out may still have succeeded, and a
//! second success of the same ticket must not hide behind it (issue 13, invariant I1).
//!
//! A line is `<sha256 of the ticket id, hex> <node> <ms since the epoch>`: the checker hashes the ids it saw the
//! same way, and the file holds no ticket. Each line is one `write` to a file opened for appending, so lines from
//! restarts and from concurrent validations never interleave, and a `kill -9` loses none that was written.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::clock::EpochMs;
use crate::ticket::TicketId;

pub struct ConsumeJournal {
    file: File,
    node: String,
}

impl ConsumeJournal {
    pub fn open(path: &Path, node: &str) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self { file, node: node.to_owned() })
    }

    pub fn record(&self, id: &TicketId, now: EpochMs) {
        let hash = Sha256::digest(id.as_str().as_bytes());
        let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
        let line = format!("{hex} {} {now}\n", self.node);
        if let Err(e) = (&self.file).write_all(line.as_bytes()) {
            tracing::error!(error = %e, "could not write the consume journal");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ticket::{IdGenerator, TicketKind};

    #[test]
    fn one_line_per_consume_with_the_hashed_id() {
        let path = std::env::temp_dir().join(format!("casd-journal-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let ids = IdGenerator::new("n1", 7, &[3; 32]);
        let (a, b) = (ids.mint(TicketKind::St), ids.mint(TicketKind::St));
        let journal = ConsumeJournal::open(&path, "n1").expect("open");
        journal.record(&a, 1000);
        journal.record(&b, 1001);
        drop(journal);
        ConsumeJournal::open(&path, "n1").expect("reopen").record(&a, 1002);
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        let hash_a: String = Sha256::digest(a.as_str().as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(lines[0], format!("{hash_a} n1 1000"));
        assert_eq!(lines[2], format!("{hash_a} n1 1002"), "a reopened journal appends");
        assert!(!text.contains(a.as_str()), "no ticket id in the clear");
        let _ = std::fs::remove_file(&path);
    }
}
