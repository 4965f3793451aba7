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
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use argon2::password_hash::{Output, PasswordHash};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use tokio::sync::{Semaphore, oneshot};

use super::AuthError;

/// How much less CPU share a password check gets than a request: nice 10 weighs about a tenth of nice 0, so a
/// validation that wakes while every core is hashing runs at once instead of waiting for a time slice.
const CHECK_NICENESS: i32 = 10;

type Job = Box<dyn FnOnce(&mut Vec<Block>) + Send>;

pub struct Argon2Pool {
    permits: Arc<Semaphore>,
    jobs: Mutex<mpsc::Sender<Job>>,
    /// Checks waiting for a slot, and how many may.
    waiting: AtomicUsize,
    max_waiting: usize,
    /// Buffers grown so far (at most one per thread); read by the tests.
    #[cfg_attr(not(test), allow(dead_code))]
    grown: Arc<AtomicUsize>,
}

/// Counts a check as waiting while it waits.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Argon2Pool {
    /// A pool running at most `slots` verifications at once, each on a thread of its own that keeps its buffer,
    /// with at most `max_waiting` more waiting. The threads run at a lower priority than the async workers
    /// ([`CHECK_NICENESS`]): a burst of logins must not delay other users' validations (issue 12 measured p99
    /// 0.5 ms → 18.5 s before the bound, and tens of ms with the bound but equal priority on two cores). They end
    /// when the pool is dropped.
    pub fn new(slots: usize, max_waiting: usize) -> Arc<Self> {
        let slots = slots.max(1);
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        let grown = Arc::new(AtomicUsize::new(0));
        for i in 0..slots {
            let queue = queue.clone();
            let grown = grown.clone();
            let spawned = std::thread::Builder::new().name(format!("casd-argon2-{i}")).spawn(move || {
                lower_priority();
                let mut memory = Vec::new();
                loop {
                    let job = match queue.lock() {
                        Ok(queue) => queue.recv(),
                        Err(_) => return,
                    };
                    let Ok(job) = job else { return };
                    let had = memory.capacity();
                    job(&mut memory);
                    if had == 0 && memory.capacity() > 0 {
                        grown.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "could not start a password-check thread");
            }
        }
        Arc::new(Self {
            permits: Arc::new(Semaphore::new(slots)),
            jobs: Mutex::new(jobs),
            waiting: AtomicUsize::new(0),
            max_waiting,
            grown,
        })
    }

    /// One slot per core.
    pub fn per_core(max_waiting: usize) -> Arc<Self> {
        Self::new(std::thread::available_parallelism().map_or(2, usize::from), max_waiting)
    }

    /// Whether `password` matches the PHC string `phc`, computed on one of the pool's threads in its buffer.
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
        let (reply, verdict) = oneshot::channel();
        let job: Job = Box::new(move |memory| {
            // The permit lives as long as the computation, even when the login that asked has gone away: at most
            // `slots` checks are ever queued to the threads, so one is always free to take this one.
            let _permit = permit;
            let _ = reply.send(verify_in(&phc, password.as_bytes(), memory));
        });
        let sent = self.jobs.lock().map_err(|_| AuthError::Backend("password-check pool poisoned".into()))?.send(job);
        sent.map_err(|_| AuthError::Backend("no password-check thread is running".into()))?;
        verdict.await.map_err(|_| AuthError::Backend("a password-check thread ended mid-check".into()))?
    }

    /// Buffers allocated so far (at most the number of slots).
    #[cfg(test)]
    fn buffers(&self) -> usize {
        self.grown.load(Ordering::Relaxed)
    }
}

/// Gives the calling thread (Linux schedules threads, so `setpriority` on its id touches only it) a lower CPU
/// priority. Failure costs only latency, so it is logged, not fatal.
fn lower_priority() {
    let tid = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(tid), CHECK_NICENESS) {
        tracing::warn!(error = %e, "could not lower the password-check thread's priority");
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
        assert!(pool.buffers() <= 2, "one verification at a time reuses the threads' buffers: {}", pool.buffers());
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

    /// The check threads run below the async workers' priority, so a login burst yields the CPU to validations.
    #[test]
    fn check_threads_run_at_a_lower_priority() {
        let _pool = Argon2Pool::new(2, 0);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let mut niceness = Vec::new();
            for task in std::fs::read_dir("/proc/self/task").expect("tasks") {
                let dir = task.expect("task").path();
                let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
                if name.starts_with("casd-argon2") {
                    let stat = std::fs::read_to_string(dir.join("stat")).unwrap_or_default();
                    // Fields after the parenthesised name: state is field 3, nice is field 19.
                    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
                    niceness.push(after.split_whitespace().nth(16).unwrap_or("").to_owned());
                }
            }
            if niceness.len() >= 2 && niceness.iter().all(|n| *n == CHECK_NICENESS.to_string()) {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "check threads' niceness: {niceness:?}");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}
