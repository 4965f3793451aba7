//! LDAP and Active Directory as an authentication source (`[[auth.sources]] type = "ldap"`), over the `ldap3`
//! crate.
//!
//! Modes, as operators configure them:
//! - `direct`: bind as a DN made from a pattern (`uid={user},ou=people,dc=example,dc=org`);
//! - `search`: search for the user's entry (as a service account, or anonymously without one) with a filter
//!   (`(&(objectClass=person)(uid={user}))`), then bind as the DN found;
//! - `ad`: Active Directory, bind as `{user}@domain` (the userPrincipalName), then read the entry by
//!   `sAMAccountName` (or a filter of your own) for attributes.
//!
//! Operations per login, with warm pools: `search` two (the search, which also reads the attributes, and the
//! user's bind); `direct` and `ad` one, or two when attributes are wanted (the bind, then a read as that user).
//! Connections are pooled per purpose: the search pool stays bound as the service account; the bind pool's
//! connections are only ever used to bind users.
//!
//! Failover: the URLs are tried in order, at connect time and when a pooled connection breaks mid-operation
//! (once). A bind the directory answered is never retried elsewhere: a wrong password counts once against the
//! directory's own lockout policy. The user's value is escaped (RFC 4515 in filters, RFC 4514 in DNs), and an
//! empty password is refused before any bind (it would be an unauthenticated bind, which succeeds).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ldap3::controls::RawControl;
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, LdapError, Scope, SearchEntry, SearchOptions};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use zeroize::Zeroizing;

use super::ldap_policy::{PPOLICY_OID, ad_subcode, ppolicy_error};
use super::{AuthError, Authenticator};
use crate::ticket::Principal;

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LdapMode {
    Direct,
    Search,
    Ad,
}

/// One `[[auth.sources]] type = "ldap"` entry. See the module docs for the modes.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LdapConfig {
    /// The source's name in logs and in `casd test-login`; defaults to `ldap`.
    pub name: Option<String>,
    /// `ldaps://host:636` or `ldap://host:389`, tried in order.
    pub urls: Vec<String>,
    pub mode: LdapMode,
    /// Upgrade `ldap://` connections with StartTLS.
    #[serde(default)]
    pub starttls: bool,
    /// PEM CA certificates to trust for the directory (otherwise the system's roots).
    pub ca_file: Option<PathBuf>,
    /// Allow passwords over `ldap://` without StartTLS. Off: such a config is refused.
    #[serde(default)]
    pub allow_plaintext_passwords: bool,
    /// `direct`: the DN pattern, with `{user}`.
    pub bind_dn: Option<String>,
    /// `search` and `ad`: where the users' entries are.
    pub base_dn: Option<String>,
    /// `search` (required) and `ad` (default `(sAMAccountName={user})`): the filter, with `{user}`.
    pub filter: Option<String>,
    /// `search`: the account that searches; without one, the search is anonymous.
    pub service_dn: Option<String>,
    pub service_password: Option<String>,
    pub service_password_file: Option<PathBuf>,
    /// `ad`: the UPN suffix; users may type `alice` or `alice@domain`.
    pub domain: Option<String>,
    /// Attributes to read at login and keep in the session (e.g. `mail`, `memberOf`).
    #[serde(default)]
    pub attributes: Vec<String>,
    /// Renames, directory name -> released name (e.g. `memberOf = "groups"`).
    #[serde(default)]
    pub attribute_map: BTreeMap<String, String>,
    /// The attribute whose (first) value becomes the principal id, instead of the typed name.
    pub principal_attribute: Option<String>,
    /// Connections per pool (search and bind) at most; a login finding all in use waits for one.
    #[serde(default = "default_pool")]
    pub pool_size: usize,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(default = "default_operation_timeout", with = "humantime_serde")]
    pub operation_timeout: Duration,
}

fn default_pool() -> usize {
    8
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(3)
}
fn default_operation_timeout() -> Duration {
    Duration::from_secs(5)
}

/// A config problem: the key (relative to the source) and why.
pub type ConfigProblem = (&'static str, String);

impl LdapConfig {
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("ldap")
    }

    /// Checks what can be checked without a directory: modes and their keys, `{user}` placeholders, the
    /// filter's syntax, the URLs' schemes, and that passwords never go out in the clear unless allowed.
    pub fn check(&self) -> Result<(), ConfigProblem> {
        if self.urls.is_empty() {
            return Err(("urls", "at least one ldap:// or ldaps:// URL is needed".into()));
        }
        for u in &self.urls {
            match u.split_once("://").map(|(s, _)| s) {
                Some("ldaps") => {}
                Some("ldap") if self.starttls || self.allow_plaintext_passwords => {}
                Some("ldap") => {
                    return Err((
                        "urls",
                        format!(
                            "{u} would send passwords in the clear: use ldaps://, or starttls = true, or (on a \
                             trusted network only) allow_plaintext_passwords = true"
                        ),
                    ));
                }
                _ => return Err(("urls", format!("{u} is not an ldap:// or ldaps:// URL"))),
            }
        }
        let need = |key: &'static str, v: &Option<String>| match v {
            Some(s) if !s.trim().is_empty() => Ok(s.clone()),
            _ => Err((key, format!("is required in mode {:?}", self.mode).to_lowercase())),
        };
        match self.mode {
            LdapMode::Direct => {
                let dn = need("bind_dn", &self.bind_dn)?;
                if !dn.contains("{user}") {
                    return Err(("bind_dn", "must contain {user}".into()));
                }
            }
            LdapMode::Search => {
                need("base_dn", &self.base_dn)?;
                let f = need("filter", &self.filter)?;
                if !f.contains("{user}") {
                    return Err(("filter", "must contain {user}".into()));
                }
                if self.service_dn.is_some() && self.service_password.is_none() && self.service_password_file.is_none()
                {
                    return Err((
                        "service_password",
                        "service_dn needs service_password or service_password_file".into(),
                    ));
                }
            }
            LdapMode::Ad => {
                need("domain", &self.domain)?;
                if !self.attributes.is_empty() || self.principal_attribute.is_some() {
                    need("base_dn", &self.base_dn)?;
                }
            }
        }
        if let Some(f) = &self.filter {
            ldap3::parse_filter(f.replace("{user}", "x"))
                .map_err(|_| ("filter", format!("{f:?} is not an LDAP filter (RFC 4515)")))?;
        }
        if self.pool_size == 0 {
            return Err(("pool_size", "must be at least 1".into()));
        }
        Ok(())
    }
}

/// Connections for one purpose: at most `pool_size` open (a login past that waits for one), idle ones kept.
struct Pool {
    idle: Mutex<Vec<Ldap>>,
    /// One permit per connection that may exist; held with the connection while it is in use.
    permits: Arc<Semaphore>,
    /// Bound as this account when made (the search pool's service account); `None`: anonymous.
    bind_as: Option<(String, Zeroizing<String>)>,
}

/// An LDAP or Active Directory source.
pub struct LdapSource {
    cfg: LdapConfig,
    settings: LdapConnSettings,
    search_pool: Pool,
    bind_pool: Pool,
    /// The URL that answered last: the next connection tries it first (failover sticks until it fails).
    preferred: AtomicUsize,
    /// Every LDAP operation sent (binds and searches, the pools' own binds included): `casd_ldap_operations_total`.
    operations: Arc<AtomicU64>,
    /// The attributes to request (configured ones plus the principal attribute).
    wanted: Vec<String>,
}

impl LdapSource {
    /// Builds the source from a checked config (`LdapConfig::check`); reads the CA and service password files.
    pub fn new(cfg: LdapConfig, operations: Arc<AtomicU64>) -> Result<Self, String> {
        if cfg.urls.iter().any(|u| u.starts_with("ldap://")) && !cfg.starttls {
            tracing::warn!(
                source = cfg.name(),
                "LDAP PASSWORDS GO OVER THE NETWORK IN THE CLEAR (ldap:// without starttls, allow_plaintext_passwords \
                 = true): anyone on the path can read them"
            );
        }
        let tls = tls_config(cfg.ca_file.as_deref())?;
        let settings = LdapConnSettings::new()
            .set_conn_timeout(cfg.connect_timeout)
            .set_starttls(cfg.starttls)
            .set_config(Arc::new(tls));
        let service_password = match (&cfg.service_password, &cfg.service_password_file) {
            (Some(p), _) => Some(Zeroizing::new(p.clone())),
            (None, Some(f)) => {
                let text = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
                Some(Zeroizing::new(text.trim_end_matches(['\r', '\n']).to_owned()))
            }
            (None, None) => None,
        };
        let bind_as = cfg.service_dn.clone().zip(service_password);
        let mut wanted = cfg.attributes.clone();
        wanted.extend(cfg.principal_attribute.clone());
        wanted.sort();
        wanted.dedup();
        let pool =
            |bind_as| Pool { idle: Mutex::new(Vec::new()), permits: Arc::new(Semaphore::new(cfg.pool_size)), bind_as };
        Ok(Self {
            settings,
            search_pool: pool(if cfg.mode == LdapMode::Search { bind_as } else { None }),
            bind_pool: pool(None),
            preferred: AtomicUsize::new(0),
            operations,
            wanted,
            cfg,
        })
    }

    /// A fresh connection, trying the URLs from the last one that answered, bound as the pool's account.
    async fn connect(&self, pool: &Pool) -> Result<Ldap, AuthError> {
        let n = self.cfg.urls.len();
        let first = self.preferred.load(Ordering::Relaxed) % n;
        let mut failures = Vec::new();
        for i in (0..n).map(|k| (first + k) % n) {
            let url = &self.cfg.urls[i];
            let attempt = async {
                let (conn, mut ldap) = LdapConnAsync::with_settings(self.settings.clone(), url).await?;
                ldap3::drive!(conn);
                if let Some((dn, pw)) = &pool.bind_as {
                    self.operations.fetch_add(1, Ordering::Relaxed);
                    ldap.with_timeout(self.cfg.operation_timeout).simple_bind(dn, pw).await?.success()?;
                }
                Ok::<_, LdapError>(ldap)
            };
            match tokio::time::timeout(self.cfg.connect_timeout + self.cfg.operation_timeout, attempt).await {
                Ok(Ok(ldap)) => {
                    if i != first {
                        tracing::warn!(source = self.cfg.name(), url = %url, "LDAP failover: using this server");
                    }
                    self.preferred.store(i, Ordering::Relaxed);
                    return Ok(ldap);
                }
                Ok(Err(e)) => failures.push(format!("{url}: {e}")),
                Err(_) => failures.push(format!("{url}: timed out")),
            }
        }
        Err(AuthError::Unavailable(format!("no LDAP server answered ({})", failures.join("; "))))
    }

    /// A connection of `pool` and its permit: an idle one (`true`) or a new one. Waits for a permit at most the
    /// operation timeout: past it the directory is too slow to keep up, which is an outage to the user.
    async fn take(&self, pool: &Pool) -> Result<(Ldap, bool, OwnedSemaphorePermit), AuthError> {
        let permit = tokio::time::timeout(self.cfg.operation_timeout, pool.permits.clone().acquire_owned())
            .await
            .map_err(|_| AuthError::Unavailable(format!("{}: every pooled connection stayed busy", self.cfg.name())))?
            .map_err(|e| AuthError::Backend(e.to_string()))?;
        loop {
            let idle = pool.idle.lock().expect("pool lock").pop();
            match idle {
                Some(mut l) => {
                    if !l.is_closed() {
                        return Ok((l, true, permit));
                    }
                }
                None => return Ok((self.connect(pool).await?, false, permit)),
            }
        }
    }

    /// Puts a healthy connection back (its permit is dropped by the caller, after).
    fn release(&self, pool: &Pool, ldap: Ldap) {
        pool.idle.lock().expect("pool lock").push(ldap);
    }

    /// Runs `op` on a pooled connection; if a pooled (not fresh) connection fails at the transport, it is
    /// dropped and `op` runs once more on a fresh one (the server may have restarted, or failed over).
    async fn with_connection(&self, pool: &Pool, op: &Op<'_>) -> Result<Done, AuthError> {
        let (mut ldap, pooled, _permit) = self.take(pool).await?;
        match self.run(&mut ldap, op).await {
            Ok(v) => {
                self.release(pool, ldap);
                Ok(v)
            }
            Err(e) if pooled && is_transport(&e) => {
                tracing::info!(source = self.cfg.name(), error = %e, "pooled LDAP connection failed; retrying on a new one");
                let mut ldap = self.connect(pool).await?;
                let v = self.run(&mut ldap, op).await.map_err(|e| self.unavailable(e))?;
                self.release(pool, ldap);
                Ok(v)
            }
            Err(e) => Err(self.unavailable(e)),
        }
    }

    async fn run(&self, l: &mut Ldap, op: &Op<'_>) -> Result<Done, LdapError> {
        Ok(match op {
            Op::Search { base, filter } => {
                Done { entries: self.read(l, base, Scope::Subtree, filter).await?, bind: None }
            }
            Op::Bind { dn, password } => {
                Done { entries: Vec::new(), bind: Some(self.bind_user(l, dn, password).await?) }
            }
            Op::BindRead { dn, password, base, scope, filter } => {
                let res = self.bind_user(l, dn, password).await?;
                let entries = match (res.rc, base) {
                    (0, Some(base)) => self.read(l, base, *scope, filter).await?,
                    _ => Vec::new(),
                };
                Done { entries, bind: Some(res) }
            }
        })
    }

    fn unavailable(&self, e: LdapError) -> AuthError {
        AuthError::Unavailable(format!("{}: {e}", self.cfg.name()))
    }

    /// Binds as `dn` with the password policy control; the directory's verdict.
    async fn bind_user(&self, ldap: &mut Ldap, dn: &str, password: &str) -> Result<ldap3::LdapResult, LdapError> {
        self.operations.fetch_add(1, Ordering::Relaxed);
        let control = RawControl { ctype: PPOLICY_OID.into(), crit: false, val: None };
        ldap.with_timeout(self.cfg.operation_timeout).with_controls(control).simple_bind(dn, password).await
    }

    async fn read(
        &self,
        ldap: &mut Ldap,
        base: &str,
        scope: Scope,
        filter: &str,
    ) -> Result<Vec<SearchEntry>, LdapError> {
        self.operations.fetch_add(1, Ordering::Relaxed);
        let attrs: Vec<&str> =
            if self.wanted.is_empty() { vec!["1.1"] } else { self.wanted.iter().map(String::as_str).collect() };
        let (entries, _) = ldap
            .with_timeout(self.cfg.operation_timeout)
            .with_search_options(SearchOptions::new().sizelimit(2))
            .search(base, scope, filter, attrs)
            .await?
            .success()?;
        Ok(entries.into_iter().map(SearchEntry::construct).collect())
    }

    /// The principal from an entry: the principal attribute (or `typed`) and the renamed attributes.
    fn principal(&self, typed: &str, entry: Option<&SearchEntry>) -> Result<Principal, AuthError> {
        // Directories answer with their own spelling of attribute names: match case-insensitively.
        let lower: HashMap<String, &Vec<String>> =
            entry.map(|e| e.attrs.iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect()).unwrap_or_default();
        let get = |name: &str| lower.get(&name.to_ascii_lowercase()).copied();
        let id = match &self.cfg.principal_attribute {
            Some(a) => get(a).and_then(|v| v.first()).cloned().ok_or_else(|| {
                AuthError::Backend(format!("{}: the entry has no {a} attribute for the principal id", self.cfg.name()))
            })?,
            None => typed.to_owned(),
        };
        let attributes = self
            .cfg
            .attributes
            .iter()
            .filter_map(|a| {
                let values = get(a)?;
                let name = self.cfg.attribute_map.get(a).cloned().unwrap_or_else(|| a.clone());
                Some((name, values.clone()))
            })
            .collect();
        Ok(Principal { id, attributes })
    }

    async fn search_then_bind(&self, user: &str, password: &str) -> Result<Principal, AuthError> {
        let base = self.cfg.base_dn.as_deref().unwrap_or_default();
        let filter = self.cfg.filter.as_deref().unwrap_or_default().replace("{user}", &ldap3::ldap_escape(user));
        let entries = self.with_connection(&self.search_pool, &Op::Search { base, filter: &filter }).await?.entries;
        let entry = match entries.as_slice() {
            [] => return Err(AuthError::UnknownUser),
            [one] => one,
            _ => {
                tracing::warn!(source = self.cfg.name(), "the login filter matched more than one entry; refusing");
                return Err(AuthError::Backend("the login filter matched more than one entry".into()));
            }
        };
        let done = self.with_connection(&self.bind_pool, &Op::Bind { dn: &entry.dn, password }).await?;
        self.verdict(done.bind.as_ref(), false)?;
        self.principal(user, Some(entry))
    }

    /// `direct` and `ad`: bind as the user, then (when attributes are wanted) read the entry as that user.
    async fn bind_then_read(&self, user: &str, password: &str) -> Result<Principal, AuthError> {
        let (bind_dn, ad) = match self.cfg.mode {
            LdapMode::Direct => {
                (self.cfg.bind_dn.as_deref().unwrap_or_default().replace("{user}", &ldap3::dn_escape(user)), false)
            }
            _ => (format!("{user}@{}", self.cfg.domain.as_deref().unwrap_or_default()), true),
        };
        let read_entry = !self.wanted.is_empty();
        let filter = match self.cfg.mode {
            LdapMode::Direct => "(objectClass=*)".to_owned(),
            _ => self
                .cfg
                .filter
                .as_deref()
                .unwrap_or("(sAMAccountName={user})")
                .replace("{user}", &ldap3::ldap_escape(user)),
        };
        let (base, scope) = match self.cfg.mode {
            LdapMode::Direct => (bind_dn.as_str(), Scope::Base),
            _ => (self.cfg.base_dn.as_deref().unwrap_or_default(), Scope::Subtree),
        };
        let op = Op::BindRead { dn: &bind_dn, password, base: read_entry.then_some(base), scope, filter: &filter };
        let Done { entries, bind } = self.with_connection(&self.bind_pool, &op).await?;
        self.verdict(bind.as_ref(), ad)?;
        if read_entry && entries.len() != 1 {
            return Err(AuthError::Backend(format!(
                "{}: the user's entry could not be read after the bind",
                self.cfg.name()
            )));
        }
        self.principal(user, entries.first())
    }

    /// The meaning of a user bind's result.
    fn verdict(&self, res: Option<&ldap3::LdapResult>, ad: bool) -> Result<(), AuthError> {
        let Some(res) = res else { return Err(AuthError::Backend("no bind result".into())) };
        if let Some(problem) =
            res.ctrls.iter().filter(|c| c.1.ctype == PPOLICY_OID).find_map(|c| ppolicy_error(c.1.val.as_deref()?))
        {
            return Err(AuthError::Account(problem));
        }
        match res.rc {
            0 => Ok(()),
            49 => match ad_subcode(&res.text) {
                Some(Some(problem)) => Err(AuthError::Account(problem)),
                Some(None) if ad => Err(AuthError::UnknownUser),
                _ => Err(AuthError::InvalidCredentials),
            },
            // unwillingToPerform: e.g. a disabled account in some directories.
            53 => Err(AuthError::Account(super::AccountProblem::Disabled)),
            rc => Err(AuthError::Backend(format!("{}: bind answered rc={rc} ({})", self.cfg.name(), res.text))),
        }
    }
}

/// One pooled-connection job.
enum Op<'a> {
    Search {
        base: &'a str,
        filter: &'a str,
    },
    Bind {
        dn: &'a str,
        password: &'a str,
    },
    /// Bind, then (with a base, and only if the bind succeeded) read the user's entry on the same connection.
    BindRead {
        dn: &'a str,
        password: &'a str,
        base: Option<&'a str>,
        scope: Scope,
        filter: &'a str,
    },
}

struct Done {
    entries: Vec<SearchEntry>,
    bind: Option<ldap3::LdapResult>,
}

fn is_transport(e: &LdapError) -> bool {
    matches!(
        e,
        LdapError::Io { .. }
            | LdapError::EndOfStream
            | LdapError::OpSend { .. }
            | LdapError::ResultRecv { .. }
            | LdapError::Timeout { .. }
    )
}

fn tls_config(ca_file: Option<&std::path::Path>) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(|i| i.collect::<Result<_, _>>())
                .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!("ca_file {}: no certificate in it", path.display()));
            }
            for c in certs {
                roots.add(c).map_err(|e| format!("ca_file {}: {e}", path.display()))?;
            }
        }
        None => {
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(c);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[async_trait]
impl Authenticator for LdapSource {
    /// Connects to the directory (the first URL that answers) and makes the service bind.
    async fn probe(&self) -> Result<(), AuthError> {
        let (ldap, _, _permit) = self.take(&self.search_pool).await?;
        self.release(&self.search_pool, ldap);
        Ok(())
    }

    async fn authenticate(&self, username: &str, password: &str) -> Result<Principal, AuthError> {
        if password.is_empty() || username.is_empty() {
            // An empty password makes an unauthenticated bind, which directories accept (RFC 4513 §5.1.2).
            return Err(AuthError::InvalidCredentials);
        }
        match self.cfg.mode {
            LdapMode::Search => self.search_then_bind(username, password).await,
            LdapMode::Direct => self.bind_then_read(username, password).await,
            LdapMode::Ad => {
                let suffix = format!("@{}", self.cfg.domain.as_deref().unwrap_or_default());
                let user = match username.len().checked_sub(suffix.len()) {
                    Some(at) if username.is_char_boundary(at) && username[at..].eq_ignore_ascii_case(&suffix) => {
                        &username[..at]
                    }
                    _ => username,
                };
                if user.contains('@') {
                    return Err(AuthError::UnknownUser);
                }
                self.bind_then_read(user, password).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> LdapConfig {
        toml::from_str(extra).expect("parses")
    }

    #[test]
    fn passwords_in_the_clear_and_incomplete_modes_are_refused_naming_the_key() {
        let plain = config("urls = ['ldap://dir:389']\nmode = 'direct'\nbind_dn = 'uid={user},dc=x'");
        let (key, reason) = plain.check().expect_err("plain ldap refused");
        assert_eq!(key, "urls");
        assert!(reason.contains("in the clear"), "{reason}");
        let starttls =
            config("urls = ['ldap://dir:389']\nstarttls = true\nmode = 'direct'\nbind_dn = 'uid={user},dc=x'");
        assert!(starttls.check().is_ok());
        let allowed = config(
            "urls = ['ldap://dir:389']\nallow_plaintext_passwords = true\nmode = 'direct'\nbind_dn = 'uid={user},dc=x'",
        );
        assert!(allowed.check().is_ok());

        let no_placeholder = config("urls = ['ldaps://dir']\nmode = 'direct'\nbind_dn = 'uid=alice,dc=x'");
        assert_eq!(no_placeholder.check().expect_err("refused").0, "bind_dn");
        let no_filter = config("urls = ['ldaps://dir']\nmode = 'search'\nbase_dn = 'dc=x'");
        assert_eq!(no_filter.check().expect_err("refused").0, "filter");
        let bad_filter = config("urls = ['ldaps://dir']\nmode = 'search'\nbase_dn = 'dc=x'\nfilter = '(uid={user}'");
        assert_eq!(bad_filter.check().expect_err("refused").0, "filter");
        let no_secret = config(
            "urls = ['ldaps://dir']\nmode = 'search'\nbase_dn = 'dc=x'\nfilter = '(uid={user})'\nservice_dn = 'cn=casd'",
        );
        assert_eq!(no_secret.check().expect_err("refused").0, "service_password");
        let ad = config("urls = ['ldaps://dc1']\nmode = 'ad'");
        assert_eq!(ad.check().expect_err("refused").0, "domain");
        let bad_scheme = config("urls = ['http://dir']\nmode = 'ad'\ndomain = 'example.org'");
        assert_eq!(bad_scheme.check().expect_err("refused").0, "urls");
    }
}
