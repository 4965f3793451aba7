//! The chain of authentication sources, tried in order (`[[auth.sources]]`).
//!
//! How an answer moves the chain on:
//! - **unknown here** ([`AuthError::UnknownUser`]): the next source is asked. A users file beside a directory
//!   serves break-glass accounts this way.
//! - **wrong password, or an account problem** (locked, expired): the chain stops there. A name the directory
//!   knows is never tried against a later source, so a stale copy of a user elsewhere cannot log in with an old
//!   password.
//! - **unreachable** ([`AuthError::Unavailable`], [`AuthError::Busy`], [`AuthError::Backend`]): the next source
//!   is asked (so a break-glass account works while the directory is down); if none knows the user, the login
//!   is answered with that outage, not with "invalid credentials", and nothing is counted against the user.

use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;

use std::sync::atomic::AtomicU64;

use super::ldap::{LdapConfig, LdapSource};
use super::sql::{SqlConfig, SqlSource};
use super::{Argon2Pool, AuthError, Authenticator, UserRecord, UsersFile};
use crate::ticket::Principal;

/// One `[[auth.sources]]` entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceConfig {
    /// The users of `auth.users_file` and `auth.users`.
    Users,
    Ldap(LdapConfig),
    Sql(SqlConfig),
}

impl SourceConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Users => "users",
            Self::Ldap(_) => "ldap",
            Self::Sql(_) => "sql",
        }
    }
}

/// One source's answer, as `casd test-login` shows it.
pub struct Attempt {
    pub source: String,
    pub result: Result<Principal, AuthError>,
}

/// Named sources asked in order.
pub struct Chain {
    sources: Vec<(String, Arc<dyn Authenticator>)>,
}

impl Chain {
    /// The sources of `[[auth.sources]]` (the users file alone when there are none). `ldap_operations` counts
    /// every LDAP operation for the metrics. A users file that is not the last source skips its decoy hash for
    /// unknown names: the later sources' time hides whether it knew the name, and a directory login should not
    /// pay for an argon2 check it does not need.
    pub fn build(
        configs: &[SourceConfig],
        users: Vec<UserRecord>,
        argon2: Arc<Argon2Pool>,
        ldap_operations: Arc<AtomicU64>,
    ) -> Result<Self, String> {
        let only_users = [SourceConfig::Users];
        let configs = if configs.is_empty() { &only_users[..] } else { configs };
        let mut sources = Vec::new();
        for (i, c) in configs.iter().enumerate() {
            let last = i + 1 == configs.len();
            let (name, source): (String, Arc<dyn Authenticator>) = match c {
                SourceConfig::Users => {
                    ("users".into(), Arc::new(UsersFile::new(users.clone(), argon2.clone()).with_decoy(last)))
                }
                SourceConfig::Ldap(l) => {
                    let s = LdapSource::new(l.clone(), ldap_operations.clone())
                        .map_err(|e| format!("auth.sources[{i}] ({}): {e}", l.name()))?;
                    (l.name().into(), Arc::new(s))
                }
                SourceConfig::Sql(q) => {
                    let s = SqlSource::new(q.clone(), argon2.clone())
                        .map_err(|e| format!("auth.sources[{i}] ({}): {e}", q.name()))?;
                    (q.name().into(), Arc::new(s))
                }
            };
            sources.push((name, source));
        }
        Ok(Self { sources })
    }

    /// Reaches every source (connect, service bind, prepare the query): `casd check-config`'s report.
    pub async fn probe(&self) -> Vec<(String, Result<(), AuthError>)> {
        let mut out = Vec::new();
        for (name, s) in &self.sources {
            out.push((name.clone(), s.probe().await));
        }
        out
    }

    pub fn new(sources: Vec<(String, Arc<dyn Authenticator>)>) -> Self {
        Self { sources }
    }

    /// The sources' names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.sources.iter().map(|(n, _)| n.as_str())
    }

    /// Asks the sources in order and returns every answer taken, the deciding one last, and the verdict.
    pub async fn explain(&self, username: &str, password: &str) -> (Vec<Attempt>, Result<Principal, AuthError>) {
        let mut attempts = Vec::new();
        let mut outage = None;
        for (name, source) in &self.sources {
            let result = source.authenticate(username, password).await;
            let verdict = match &result {
                Ok(p) => Some(Ok(p.clone())),
                Err(AuthError::UnknownUser) => None,
                Err(e @ (AuthError::Unavailable(_) | AuthError::Busy | AuthError::Backend(_))) => {
                    tracing::warn!(source = %name, error = %e, "authentication source could not answer");
                    outage.get_or_insert(e.clone());
                    None
                }
                Err(e) => Some(Err(e.clone())),
            };
            attempts.push(Attempt { source: name.clone(), result });
            if let Some(v) = verdict {
                if v.is_ok() {
                    tracing::debug!(source = %name, "authenticated");
                }
                return (attempts, v);
            }
        }
        (attempts, Err(outage.unwrap_or(AuthError::InvalidCredentials)))
    }
}

#[async_trait]
impl Authenticator for Chain {
    async fn authenticate(&self, username: &str, password: &str) -> Result<Principal, AuthError> {
        self.explain(username, password).await.1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Result<Principal, AuthError>);

    #[async_trait]
    impl Authenticator for Fixed {
        async fn authenticate(&self, _: &str, _: &str) -> Result<Principal, AuthError> {
            self.0.clone()
        }
    }

    fn chain(answers: Vec<Result<Principal, AuthError>>) -> Chain {
        Chain::new(
            answers
                .into_iter()
                .enumerate()
                .map(|(i, a)| (format!("s{i}"), Arc::new(Fixed(a)) as Arc<dyn Authenticator>))
                .collect(),
        )
    }

    fn alice() -> Principal {
        Principal { id: "alice".into(), attributes: Default::default() }
    }

    #[tokio::test]
    async fn unknown_moves_on_wrong_password_stops_outage_moves_on_but_is_reported() {
        let c = chain(vec![Err(AuthError::UnknownUser), Ok(alice())]);
        assert_eq!(c.authenticate("a", "p").await.map(|p| p.id), Ok("alice".into()));

        let c = chain(vec![Err(AuthError::InvalidCredentials), Ok(alice())]);
        assert_eq!(c.authenticate("a", "p").await, Err(AuthError::InvalidCredentials));

        let down = AuthError::Unavailable("ldap down".into());
        let c = chain(vec![Err(down.clone()), Ok(alice())]);
        assert!(c.authenticate("a", "p").await.is_ok(), "break-glass works while the directory is down");

        let c = chain(vec![Err(down.clone()), Err(AuthError::UnknownUser)]);
        assert_eq!(c.authenticate("a", "p").await, Err(down));

        let c = chain(vec![Err(AuthError::UnknownUser), Err(AuthError::UnknownUser)]);
        assert_eq!(c.authenticate("a", "p").await, Err(AuthError::InvalidCredentials));
    }
}
