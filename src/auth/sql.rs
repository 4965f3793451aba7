//! PostgreSQL as an authentication source (`[[auth.sources]] type = "sql"`), over `tokio-postgres` with a
//! `deadpool-postgres` pool.
//!
//! A configured query, given the typed user name as `$1`, returns at most one row: the stored hash (in any
//! [`HashFormat`](super::HashFormat)), optional flag columns (locked, disabled, password expired) and the
//! attributes, one column each (text, text[], integers and booleans; NULL is left out). No row: unknown here,
//! so a chain asks the next source. Two rows: refused (the query is wrong), never "the first one".
//!
//! Connections are made without TLS: point it at a local socket or loopback, or a network you trust.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use serde::Deserialize;
use tokio::sync::Semaphore;
use tokio_postgres::types::Type;
use tokio_postgres::{NoTls, Row};

use super::{AccountProblem, Argon2Pool, AuthError, Authenticator, verify_stored_hash};
use crate::ticket::Principal;

/// One `[[auth.sources]] type = "sql"` entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlConfig {
    pub name: Option<String>,
    /// A libpq-style URL or key=value string, without the password (`postgresql://casd@127.0.0.1:5432/users`).
    pub url: String,
    /// The database password, read from this file.
    pub password_file: Option<PathBuf>,
    /// The query; `$1` is the typed user name. E.g. `SELECT password_hash, mail, groups FROM users WHERE login = $1`.
    pub query: String,
    #[serde(default = "default_hash_column")]
    pub hash_column: String,
    /// A column whose value becomes the principal id, instead of the typed name.
    pub principal_column: Option<String>,
    /// Boolean columns that, when true, refuse the login with their reason (after the password matched).
    pub locked_column: Option<String>,
    pub disabled_column: Option<String>,
    pub expired_column: Option<String>,
    /// Renames, column -> released attribute name.
    #[serde(default)]
    pub attribute_map: BTreeMap<String, String>,
    #[serde(default = "default_pool")]
    pub pool_size: usize,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub query_timeout: Duration,
}

fn default_hash_column() -> String {
    "password_hash".into()
}
fn default_pool() -> usize {
    8
}
fn default_timeout() -> Duration {
    Duration::from_secs(3)
}

impl SqlConfig {
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("sql")
    }

    /// What can be checked without a database: the URL's syntax, `$1` in the query, the pool size.
    pub fn check(&self) -> Result<(), super::ldap::ConfigProblem> {
        tokio_postgres::Config::from_str(&self.url)
            .map_err(|e| ("url", format!("not a PostgreSQL connection string: {e}")))?;
        if !self.query.contains("$1") {
            return Err(("query", "must use $1 for the user name".into()));
        }
        if self.pool_size == 0 {
            return Err(("pool_size", "must be at least 1".into()));
        }
        Ok(())
    }
}

pub struct SqlSource {
    cfg: SqlConfig,
    pool: Pool,
    argon2: Arc<Argon2Pool>,
    cpu: Arc<Semaphore>,
}

impl SqlSource {
    pub fn new(cfg: SqlConfig, argon2: Arc<Argon2Pool>) -> Result<Self, String> {
        let mut pg = tokio_postgres::Config::from_str(&cfg.url).map_err(|e| e.to_string())?;
        if let Some(f) = &cfg.password_file {
            let text = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
            pg.password(text.trim_end_matches(['\r', '\n']));
        }
        pg.connect_timeout(cfg.connect_timeout);
        let manager = Manager::from_config(pg, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(cfg.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(cfg.connect_timeout))
            .create_timeout(Some(cfg.connect_timeout))
            .recycle_timeout(Some(cfg.connect_timeout))
            .build()
            .map_err(|e| e.to_string())?;
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Ok(Self { cfg, pool, argon2, cpu: Arc::new(Semaphore::new(cores)) })
    }

    fn unavailable(&self, e: impl std::fmt::Display) -> AuthError {
        AuthError::Unavailable(format!("{}: {e}", self.cfg.name()))
    }

    async fn row(&self, username: &str) -> Result<Option<Row>, AuthError> {
        let work = async {
            let client = self.pool.get().await.map_err(|e| self.unavailable(e))?;
            let stmt = client.prepare_cached(&self.cfg.query).await.map_err(|e| self.unavailable(e))?;
            client.query(&stmt, &[&username]).await.map_err(|e| self.unavailable(e))
        };
        let rows = tokio::time::timeout(self.cfg.query_timeout + self.cfg.connect_timeout, work)
            .await
            .map_err(|_| self.unavailable("query timed out"))??;
        match rows.len() {
            0 => Ok(None),
            1 => Ok(rows.into_iter().next()),
            n => Err(AuthError::Backend(format!("{}: the query returned {n} rows for one user", self.cfg.name()))),
        }
    }

    fn flag(&self, row: &Row, column: &Option<String>) -> bool {
        column.as_deref().is_some_and(|c| row.try_get::<_, Option<bool>>(c).ok().flatten().unwrap_or(false))
    }
}

/// A column's values as attribute strings; `None` for NULL or a type casd does not release.
fn values(row: &Row, i: usize) -> Option<Vec<String>> {
    let t = row.columns()[i].type_();
    let one = |v: Option<String>| v.map(|v| vec![v]);
    match *t {
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => one(row.try_get::<_, Option<String>>(i).ok()?),
        Type::TEXT_ARRAY | Type::VARCHAR_ARRAY => row.try_get::<_, Option<Vec<String>>>(i).ok()?,
        Type::INT2 => one(row.try_get::<_, Option<i16>>(i).ok()?.map(|v| v.to_string())),
        Type::INT4 => one(row.try_get::<_, Option<i32>>(i).ok()?.map(|v| v.to_string())),
        Type::INT8 => one(row.try_get::<_, Option<i64>>(i).ok()?.map(|v| v.to_string())),
        Type::BOOL => one(row.try_get::<_, Option<bool>>(i).ok()?.map(|v| v.to_string())),
        _ => None,
    }
}

#[async_trait]
impl Authenticator for SqlSource {
    /// Connects and prepares the query: what `casd check-config` reports (a wrong column shows here).
    async fn probe(&self) -> Result<(), AuthError> {
        let client = self.pool.get().await.map_err(|e| self.unavailable(e))?;
        let stmt = client
            .prepare_cached(&self.cfg.query)
            .await
            .map_err(|e| AuthError::Backend(format!("{}: {e}", self.cfg.name())))?;
        if !stmt.columns().iter().any(|c| c.name() == self.cfg.hash_column) {
            return Err(AuthError::Backend(format!(
                "{}: the query returns no column {:?}",
                self.cfg.name(),
                self.cfg.hash_column
            )));
        }
        Ok(())
    }

    async fn authenticate(&self, username: &str, password: &str) -> Result<Principal, AuthError> {
        if password.is_empty() {
            return Err(AuthError::InvalidCredentials);
        }
        let Some(row) = self.row(username).await? else { return Err(AuthError::UnknownUser) };
        let hash: Option<String> = row
            .try_get(self.cfg.hash_column.as_str())
            .map_err(|e| AuthError::Backend(format!("{}: column {:?}: {e}", self.cfg.name(), self.cfg.hash_column)))?;
        // A user without a password (NULL) cannot log in here.
        let Some(hash) = hash else { return Err(AuthError::InvalidCredentials) };
        if !verify_stored_hash(&self.argon2, &self.cpu, &hash, password).await? {
            return Err(AuthError::InvalidCredentials);
        }
        for (column, problem) in [
            (&self.cfg.disabled_column, AccountProblem::Disabled),
            (&self.cfg.locked_column, AccountProblem::Locked),
            (&self.cfg.expired_column, AccountProblem::PasswordExpired),
        ] {
            if self.flag(&row, column) {
                return Err(AuthError::Account(problem));
            }
        }
        let skip = |name: &str| {
            name == self.cfg.hash_column
                || [&self.cfg.locked_column, &self.cfg.disabled_column, &self.cfg.expired_column]
                    .iter()
                    .any(|c| c.as_deref() == Some(name))
        };
        let mut id = username.to_owned();
        let mut attributes = Vec::new();
        for (i, col) in row.columns().iter().enumerate() {
            let name = col.name();
            if skip(name) {
                continue;
            }
            let Some(v) = values(&row, i) else { continue };
            if self.cfg.principal_column.as_deref() == Some(name) {
                id = v.first().cloned().unwrap_or(id);
            }
            let released = self.cfg.attribute_map.get(name).cloned().unwrap_or_else(|| name.to_owned());
            attributes.push((released, v));
        }
        Ok(Principal { id, attributes: attributes.into_iter().collect() })
    }
}
