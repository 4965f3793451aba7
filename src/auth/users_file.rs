//! Users kept in TOML with argon2id password hashes: the built-in [`Authenticator`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use async_trait::async_trait;
use serde::Deserialize;

use super::Argon2Pool;
use super::{AuthError, Authenticator};
use crate::ticket::Principal;

/// One user as written in a users file or inline in the config:
///
/// ```toml
/// [[users]]
/// username = "alice"
/// password_hash = "$argon2id$v=19$m=19456,t=2,p=1$..."
/// attributes = { mail = "alice@example.org", memberOf = ["staff", "faculty"] }
/// ```
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserRecord {
    pub username: String,
    pub password_hash: String,
    #[serde(default)]
    pub attributes: BTreeMap<String, OneOrMany>,
}

impl UserRecord {
    /// Whether the hash is one `casd` can verify; the reason when it is not.
    pub fn check(&self) -> Result<(), &'static str> {
        PasswordHash::new(&self.password_hash)
            .map(|_| ())
            .map_err(|_| "is not a PHC string; make one with `casd hash-password`")
    }
}

/// What is wrong with a users file.
#[derive(Debug, thiserror::Error)]
pub enum UsersFileError {
    #[error("{0}")]
    Parse(String),
    #[error("{key}: {reason}")]
    Invalid { key: String, reason: &'static str },
}

/// An attribute written as one string or as a list of strings.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(v) => vec![v],
            Self::Many(v) => v,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFileText {
    #[serde(default)]
    users: Vec<UserRecord>,
}

struct User {
    hash: Arc<str>,
    principal: Principal,
}

/// The users of a users file and of the config, checked with argon2id.
pub struct UsersFile {
    users: HashMap<String, User>,
    /// Verified against when the user is unknown, so that an unknown name costs as much as a wrong password.
    decoy_hash: Arc<str>,
    /// Whether an unknown name costs a decoy check (see [`UsersFile::with_decoy`]).
    decoy: bool,
    argon2: Arc<Argon2Pool>,
}

impl UsersFile {
    /// The users, checked in `argon2` (shared by every source that verifies argon2 hashes).
    pub fn new(records: Vec<UserRecord>, argon2: Arc<Argon2Pool>) -> Self {
        let users = records
            .into_iter()
            .map(|r| {
                let attributes = r.attributes.into_iter().map(|(k, v)| (k, v.into_vec())).collect();
                let principal = Principal { id: r.username.clone(), attributes };
                (r.username, User { hash: r.password_hash.into(), principal })
            })
            .collect();
        let decoy_hash = hash_password("decoy password that matches nothing").expect("hashing a constant works");
        Self { users, decoy_hash: decoy_hash.into(), decoy: true, argon2 }
    }

    /// Whether an unknown name is checked against a decoy hash, so that it takes as long as a wrong password.
    /// On by default; a [`Chain`](super::Chain) turns it off where later sources follow.
    pub fn with_decoy(mut self, decoy: bool) -> Self {
        self.decoy = decoy;
        self
    }

    /// Parses the text of a users file; an error names the offending key.
    pub fn parse(text: &str) -> Result<Vec<UserRecord>, UsersFileError> {
        let parsed: UsersFileText = toml::from_str(text).map_err(|e| UsersFileError::Parse(e.to_string()))?;
        for (i, u) in parsed.users.iter().enumerate() {
            u.check().map_err(|reason| UsersFileError::Invalid { key: format!("users[{i}].password_hash"), reason })?;
        }
        Ok(parsed.users)
    }
}

#[async_trait]
impl Authenticator for UsersFile {
    async fn authenticate(&self, username: &str, password: &str) -> Result<Principal, AuthError> {
        let user = self.users.get(username);
        if user.is_none() && !self.decoy {
            return Err(AuthError::UnknownUser);
        }
        let hash = user.map_or_else(|| self.decoy_hash.clone(), |u| u.hash.clone());
        let matches = self.argon2.verify(hash, password.to_owned()).await?;
        match user {
            Some(u) if matches => Ok(u.principal.clone()),
            Some(_) => Err(AuthError::InvalidCredentials),
            None => Err(AuthError::UnknownUser),
        }
    }
}

/// Hashes a password with argon2id and the OWASP-recommended parameters (19 MiB, 2 passes, 1 lane).
pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    let params = Params::new(19 * 1024, 2, 1, None)?;
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    Ok(argon.hash_password(password.as_bytes(), &salt)?.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn right_password_gives_the_principal_with_attributes() {
        let record = UserRecord {
            username: "alice".into(),
            password_hash: hash_password("s3cret").expect("hash"),
            attributes: BTreeMap::from([("mail".into(), OneOrMany::One("a@example.org".into()))]),
        };
        let users = UsersFile::new(vec![record], Argon2Pool::new(1, 8));
        let p = users.authenticate("alice", "s3cret").await.expect("login");
        assert_eq!(p.id, "alice");
        assert_eq!(p.attributes.get("mail"), Some(&vec!["a@example.org".to_string()]));
        assert_eq!(users.authenticate("alice", "wrong").await, Err(AuthError::InvalidCredentials));
        assert_eq!(users.authenticate("bob", "s3cret").await, Err(AuthError::UnknownUser));
    }

    #[test]
    fn hashes_are_argon2id_and_salted() {
        let a = hash_password("x").expect("hash");
        let b = hash_password("x").expect("hash");
        assert!(a.starts_with("$argon2id$"));
        assert_ne!(a, b);
    }
}
