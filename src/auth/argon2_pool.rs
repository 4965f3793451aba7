//! argon2 verification in a fixed set of reused memory buffers.
//!
//! An argon2id check with the OWASP parameters fills 19 MiB. Allocated and freed per login, those buffers stayed
//! resident: glibc raises its mmap threshold after freeing a large mapped block, so later ones came from the heap
//! and were never returned, and RSS grew with the number of logins run at once until the OOM killer came (issue
//! 12). Here each verification borrows one of `slots` buffers, allocated once and reused, and at most `slots` run
//! at once (one per core is all the CPU there is); the others wait their turn, and past `max_waiting` waiting a
//! check is refused at once ([`AuthError::Busy`]) rather than queued behind seconds of work. Memory stays flat
//! whatever the login rate.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use argon2::password_hash::{Output, PasswordHash};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use tokio::sync::Semaphore;

use super::AuthError;

pub struct Argon2Pool {
    permits: Arc<Semaphore>,
    buffers: Mutex<Vec<Vec<Block>>>,
    /// Checks waiting for a slot, and how many may.
    waiting: AtomicUsize,
    max_waiting: usize,
}

/// Counts a check as waiting while it waits.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Argon2Pool {
    /// A pool running at most `slots` verifications at once, with at most `max_waiting` more waiting.
    pub fn new(slots: usize, max_waiting: usize) -> Arc<Self> {
        let slots = slots.max(1);
        Arc::new(Self {
            permits: Arc::new(Semaphore::new(slots)),
            buffers: Mutex::new(Vec::with_capacity(slots)),
            waiting: AtomicUsize::new(0),
            max_waiting,
        })
    }

    /// One slot per core.
    pub fn per_core(max_waiting: usize) -> Arc<Self> {
        Self::new(std::thread::available_parallelism().map_or(2, usize::from), max_waiting)
    }

    /// Whether `password` matches the PHC string `phc`, computed off the async workers in a pooled buffer.
    pub async fn verify(self: &Arc<Self>, phc: Arc<str>, password: String) -> Result<bool, AuthError> {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if self.waiting.fetch_add(1, Ordering::Relaxed) >= self.max_waiting {
                    self.waiting.fetch_sub(1, Ordering::Relaxed);
                    return Err(AuthError::Busy);
                }
                let _waiting = Waiting(&self.waiting);
                self.permits.clone().acquire_owned().await.map_err(|e| AuthError::Backend(e.to_string()))?
            }
        };
        let pool = self.clone();
        tokio::task::spawn_blocking(move || {
            // The permit lives as long as the computation, even when the login that asked has gone away: at most
            // `slots` buffers are ever in use, so the pool never grows past them.
            let _permit = permit;
            let mut memory = pool.buffers.lock().map(|mut b| b.pop()).ok().flatten().unwrap_or_default();
            let verdict = verify_in(&phc, password.as_bytes(), &mut memory);
            if let Ok(mut buffers) = pool.buffers.lock() {
                buffers.push(memory);
            }
            verdict
        })
        .await
        .map_err(|e| AuthError::Backend(e.to_string()))?
    }

    /// Buffers allocated so far (at most the number of slots).
    #[cfg(test)]
    fn buffers(&self) -> usize {
        self.buffers.lock().map_or(0, |b| b.len())
    }
}

/// Recomputes the hash of `password` with the parameters and salt of `phc`, in `memory` (grown once to the size
/// those parameters need), and compares in constant time.
fn verify_in(phc: &str, password: &[u8], memory: &mut Vec<Block>) -> Result<bool, AuthError> {
    let bad = |e: &dyn std::fmt::Display| AuthError::Backend(format!("unusable password hash: {e}"));
    let hash = PasswordHash::new(phc).map_err(|e| bad(&e))?;
    let algorithm = Algorithm::try_from(hash.algorithm).map_err(|e| bad(&e))?;
    let version = hash.version.map(Version::try_from).transpose().map_err(|e| bad(&e))?.unwrap_or_default();
    let params = Params::try_from(&hash).map_err(|e| bad(&e))?;
    let expected = hash.hash.ok_or_else(|| bad(&"no hash"))?;
    let mut salt = [0u8; 64];
    let salt = hash.salt.ok_or_else(|| bad(&"no salt"))?.decode_b64(&mut salt).map_err(|e| bad(&e))?;
    let blocks = params.block_count();
    if memory.len() < blocks {
        memory.resize(blocks, Block::default());
    }
    let mut out = vec![0u8; expected.len()];
    Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(password, salt, &mut out, &mut memory[..blocks])
        .map_err(|e| bad(&e))?;
    Ok(Output::new(&out).map_err(|e| bad(&e))? == expected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::hash_password;

    #[tokio::test]
    async fn verifies_its_own_hashes_and_refuses_wrong_passwords_in_reused_buffers() {
        let pool = Argon2Pool::new(2, 64);
        let phc: Arc<str> = hash_password("s3cret").expect("hash").into();
        for _ in 0..3 {
            assert_eq!(pool.verify(phc.clone(), "s3cret".into()).await, Ok(true));
            assert_eq!(pool.verify(phc.clone(), "s3cret!".into()).await, Ok(false));
        }
        assert_eq!(pool.buffers(), 1, "one verification at a time reuses one buffer");
        let together: Vec<_> = (0..8).map(|_| pool.verify(phc.clone(), "wrong".into())).collect();
        for verdict in futures_util::future::join_all(together).await {
            assert_eq!(verdict, Ok(false));
        }
        assert!(pool.buffers() <= 2, "eight at once never use more buffers than slots: {}", pool.buffers());
    }

    #[tokio::test]
    async fn a_broken_hash_is_an_error_not_a_match() {
        let pool = Argon2Pool::new(1, 0);
        let verdict = pool.verify(Arc::from("$argon2id$v=19$m=19456,t=2,p=1$bad"), "x".into()).await;
        assert!(matches!(verdict, Err(AuthError::Backend(_))), "{verdict:?}");
    }

    /// With one slot and one place to wait, the third of three checks at once is refused at once, not queued.
    #[tokio::test]
    async fn a_full_queue_refuses_at_once() {
        let pool = Argon2Pool::new(1, 1);
        let phc: Arc<str> = hash_password("s3cret").expect("hash").into();
        let three: Vec<_> = (0..3).map(|_| pool.verify(phc.clone(), "s3cret".into())).collect();
        let verdicts = futures_util::future::join_all(three).await;
        assert_eq!(verdicts.iter().filter(|v| **v == Ok(true)).count(), 2, "{verdicts:?}");
        assert_eq!(verdicts.iter().filter(|v| **v == Err(AuthError::Busy)).count(), 1, "{verdicts:?}");
        assert_eq!(pool.verify(phc, "s3cret".into()).await, Ok(true), "the queue drains");
    }
}
