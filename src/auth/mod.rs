//! Authentication: who may log in (the [`Authenticator`] trait and its users-file implementation) and how often
//! they may fail (throttling). Knows nothing of tickets or HTTP.

mod argon2_pool;
mod throttle;
mod users_file;

pub use argon2_pool::Argon2Pool;
pub use throttle::{Throttle, ThrottleLimits, Throttled};
pub use users_file::{UserRecord, UsersFile, UsersFileError, hash_password};

use async_trait::async_trait;

use crate::ticket::Principal;

/// Why a login was refused. Deliberately coarse: the user is never told whether the name or the password was wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("invalid credentials")]
    InvalidCredentials,
    /// Too many password checks are already waiting: the login should be tried again in a moment. Not a failure
    /// of the user's, so it never counts towards throttling.
    #[error("too many password checks waiting")]
    Busy,
    #[error("authentication backend failed: {0}")]
    Backend(String),
}

/// Checks primary credentials. Implementations must take about the same time for an unknown user as for a wrong
/// password, so that user names cannot be enumerated by timing.
#[async_trait]
pub trait Authenticator: Send + Sync {
    async fn authenticate(&self, username: &str, password: &str) -> Result<Principal, AuthError>;
}
