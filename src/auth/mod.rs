//! Authentication: who may log in (the [`Authenticator`] trait, its sources — the users file, LDAP / Active
//! Directory, SQL — and the [`Chain`] that tries them in order) and how often they may fail (throttling). Knows
//! nothing of tickets or HTTP.

mod argon2_pool;
mod chain;
mod hashes;
pub mod ldap;
mod ldap_policy;
pub mod sql;
mod throttle;
mod users_file;

pub use argon2_pool::Argon2Pool;
pub use chain::{Attempt, Chain, SourceConfig};
pub use hashes::{HashFormat, verify_stored_hash};
pub use throttle::{Throttle, ThrottleLimits, Throttled};
pub use users_file::{UserRecord, UsersFile, UsersFileError, hash_password};

use async_trait::async_trait;

use crate::ticket::Principal;

/// Why a login was refused, or why a source could not say.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum AuthError {
    /// The user is known and the password is wrong (or, after the whole chain, the user is known nowhere: the
    /// user is never told which).
    #[error("invalid credentials")]
    InvalidCredentials,
    /// This source does not know the user: a [`Chain`] asks the next source. Never shown to a user as such.
    #[error("unknown user")]
    UnknownUser,
    /// The directory says the account cannot log in now (locked, disabled, expired password...).
    #[error("account problem: {0}")]
    Account(AccountProblem),
    /// Too many password checks are already waiting: the login should be tried again in a moment. Not a failure
    /// of the user's, so it never counts towards throttling.
    #[error("too many password checks waiting")]
    Busy,
    /// The source could not be asked (directory or database unreachable, timed out). Not the user's fault: never
    /// counted towards throttling, shown as "service unavailable", and a [`Chain`] goes on to the next source.
    #[error("authentication source unavailable: {0}")]
    Unavailable(String),
    /// The source answered something casd cannot use (an unusable hash, a filter matching two entries).
    #[error("authentication backend failed: {0}")]
    Backend(String),
}

/// What a directory said about an account whose login it refused for a reason other than the password. From
/// the LDAP password policy response control (draft-behera-ldap-password-policy) or an Active Directory
/// sub-code (`data 775` in the diagnostic message), or from a SQL source's flag columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountProblem {
    Locked,
    Disabled,
    PasswordExpired,
    AccountExpired,
    MustChangePassword,
}

impl std::fmt::Display for AccountProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Locked => "account locked",
            Self::Disabled => "account disabled",
            Self::PasswordExpired => "password expired",
            Self::AccountExpired => "account expired",
            Self::MustChangePassword => "password must be changed",
        })
    }
}

/// Checks primary credentials. Implementations should take about the same time for an unknown user as for a
/// wrong password where they are the last source asked, so that user names cannot be enumerated by timing.
#[async_trait]
pub trait Authenticator: Send + Sync {
    async fn authenticate(&self, username: &str, password: &str) -> Result<Principal, AuthError>;

    /// Reaches the source without logging anyone in (a directory's service bind, a database's prepared query),
    /// for `casd check-config`. Sources with nothing to reach have nothing to report.
    async fn probe(&self) -> Result<(), AuthError> {
        Ok(())
    }
}
