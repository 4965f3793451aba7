//! The wall clock, at the bottom of the house: every layer reads the time here and nothing here imports anything.
//! Pure code (expiry, sealing, the simulation) takes `now` as a value instead of calling [`now_ms`], so tests can
//! choose the time.

/// Milliseconds since the Unix epoch: the one time unit stored in tickets and stamped on cluster frames.
pub type EpochMs = u64;

/// The wall clock in milliseconds since the epoch (0 for a clock set before 1970, which then expires everything).
pub fn now_ms() -> EpochMs {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
