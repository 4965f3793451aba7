//! Typed configuration: a TOML file (or the embedded single-node default) parsed with unknown keys refused, then
//! resolved once ([`Config::resolve`]) into the values the node runs on: checked, with every pattern compiled and
//! every file it names read, each error naming the file, the key and the value. Sits above `cluster`, `auth` and
//! `cas`, whose settings it builds; none of them imports it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::auth::{SourceConfig, UserRecord, UsersFile};
use crate::cas::Limits;
use crate::cas::pages::{Pages, UiConfig};
use crate::cas::service_files::{ServiceError, ServiceSource};
use crate::cas::services::{ServiceDefinition, ServiceRegistry};
use crate::cluster::ClusterSettings;
use crate::cluster::discovery::MulticastSettings;
use crate::cluster::replication::Timeouts;
use crate::cluster::seal::ClusterKey;
use crate::ticket::ExpiryPolicy;

/// The single-node demo configuration `casd` runs when given no file. Also shipped as `cluster-configs/single.toml`.
pub const EMBEDDED_DEFAULT: &str = include_str!("../cluster-configs/single.toml");
/// The name used for the embedded configuration in error messages.
pub const EMBEDDED_NAME: &str = "<embedded single.toml>";

/// A configuration error that says where: the file, the key path and what was wrong with the value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read { file: String, source: std::io::Error },
    #[error("{file}: {detail}")]
    Parse { file: String, detail: String },
    #[error("{file}: {key}: {reason} (got {value:?})")]
    Invalid { file: String, key: String, value: String, reason: String },
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// True for the embedded demo configuration; set by [`Config::embedded`], never read from a file.
    #[serde(skip)]
    pub is_demo: bool,
    /// Where this configuration came from, for error messages.
    #[serde(skip)]
    pub source: String,
    pub node: NodeConfig,
    pub http: HttpConfig,
    #[serde(default)]
    pub cookie: CookieConfig,
    #[serde(default)]
    pub tickets: TicketsConfig,
    #[serde(default)]
    pub protocol: ProtocolConfig,
    #[serde(default)]
    pub throttle: ThrottleConfig,
    #[serde(default)]
    pub proxy: ProxyConfig,
    #[serde(default)]
    pub slo: SloConfig,
    /// Outgoing TLS: what casd trusts when it calls services.
    #[serde(default)]
    pub tls: OutgoingTlsSection,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub services: Vec<ServiceDefinition>,
    /// Service definitions in files (`[service_registry] dir`), beside `[[services]]`.
    #[serde(default)]
    pub service_registry: ServiceRegistryConfig,
    /// Themes and the default theme of the pages (`crate::cas::pages`).
    #[serde(default)]
    pub ui: UiConfig,
    /// Absent: a single node with no peers.
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,
    /// Where the sessions are kept on disk, and how durably (issue 14). Absent: memory only.
    #[serde(default)]
    pub storage: StorageConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub ops: OpsConfig,
    #[serde(default)]
    pub lab: LabConfig,
}

/// `[service_registry]`: a directory of service definition files, one service per file (TOML or JSON).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceRegistryConfig {
    /// Relative to the config file's folder. Absent: `[[services]]` only.
    pub dir: Option<PathBuf>,
    /// How often the directory is looked at for changed files (SIGHUP reloads at once).
    #[serde(with = "humantime_serde")]
    pub watch_interval: Duration,
}

impl Default for ServiceRegistryConfig {
    fn default() -> Self {
        Self { dir: None, watch_interval: Duration::from_secs(2) }
    }
}

/// For the chaos lab only (scripts/chaos): nothing here belongs in a production config.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LabConfig {
    /// Append one line per successful consume of a service or proxy ticket (its hashed id, this node, the time) to
    /// this file, so that the chaos checker counts the server's successes and not only those a client saw.
    pub consume_journal: Option<std::path::PathBuf>,
}

/// Who may read `/metrics`, `/cluster` and `/cluster.html`: they show addresses, boot times and counters.
/// `/health` and `/ready` are always open (load balancers probe them).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpsConfig {
    /// Required as `Authorization: Bearer <token>`.
    pub token: Option<Secret>,
    /// Serve them to anyone: for demos and labs only. Neither this nor a token: they answer 404.
    pub public: bool,
}

/// Logging. Ticket ids are always logged redacted (prefix and a short hash); cookies, passwords and keys never.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Human,
    /// One JSON object per line, for log shippers.
    Json,
}

/// `[storage]`: the node's journal of sessions, PGTs and logouts (see `crate::store`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `sync`: a login, logout or service grant is answered only once it is on this node's disk (fdatasync, group
    /// commit). `interval`: written at once, synced every `flush_interval`. `off`: memory only.
    pub durability: DurabilityMode,
    /// The data directory (relative paths from the config file's folder). Required unless `durability = "off"`.
    pub dir: Option<PathBuf>,
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// A single node's storage key (base64 of 32 bytes; `casd keygen` makes one), or a file holding it. In a
    /// cluster the journal is sealed under a key derived from the cluster key, and these must be unset.
    pub key: Option<Secret>,
    pub key_file: Option<PathBuf>,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            durability: DurabilityMode::Off,
            dir: None,
            flush_interval: Duration::from_millis(100),
            key: None,
            key_file: None,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DurabilityMode {
    Sync,
    Interval,
    #[default]
    Off,
}

/// Membership and discovery of a cluster of casd nodes.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Nodes only form a cluster with nodes of the same id (it is also bound into every sealed frame).
    pub id: String,
    /// UDP address for gossip. Must be a concrete address peers can reach, or set `gossip_advertise`.
    pub gossip_addr: SocketAddr,
    /// The gossip address peers should use, when `gossip_addr` binds a wildcard.
    #[serde(default)]
    pub gossip_advertise: Option<SocketAddr>,
    /// TCP address for replication links.
    pub replication_addr: SocketAddr,
    /// The HTTP address peers should use for this node, when `http.listen` binds a wildcard.
    #[serde(default)]
    pub http_advertise: Option<String>,
    /// Gossip addresses (`host:port`) to contact at start; host names are re-resolved every minute.
    #[serde(default)]
    pub seeds: Vec<String>,
    #[serde(default = "default_gossip_interval", with = "humantime_serde")]
    pub gossip_interval: Duration,
    /// Phi-accrual threshold: a peer is dead when phi exceeds it (phi = silence / mean heartbeat gap).
    #[serde(default = "default_phi")]
    pub phi_threshold: f64,
    /// How long a dead peer is remembered before it is forgotten.
    #[serde(default = "default_dead_grace", with = "humantime_serde")]
    pub dead_node_grace_period: Duration,
    /// The configured number of nodes; majorities count this, never the current view.
    #[serde(default = "default_expected_size")]
    pub expected_size: usize,
    /// The 32-byte cluster key, base64 (`casd keygen`). Exactly one of `key` and `key_file`.
    #[serde(default)]
    pub key: Option<Secret>,
    /// A file holding the base64 key, relative to the config file.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    #[serde(default)]
    pub multicast: MulticastSettings,
    /// How long a write waits for every peer's acknowledgement; a peer that misses it is counted out of the copies.
    #[serde(default = "default_ack_timeout", with = "humantime_serde")]
    pub ack_timeout: Duration,
    /// How long a node waits for a ticket's owner to decide a forwarded consume before refusing the ticket.
    #[serde(default = "default_forward_timeout", with = "humantime_serde")]
    pub forward_timeout: Duration,
    /// Copies (this node's included) a new SSO session must reach, or the login answers 503.
    #[serde(default = "default_min_copies")]
    pub min_copies: usize,
    /// Nodes (this one included) that must hold a logout before it is confirmed to the user; short of it, the
    /// logout page says so (202) and the node keeps sending the logout to the peers that missed it. Default: a
    /// majority of `expected_size`.
    #[serde(default)]
    pub logout_quorum: Option<usize>,
    /// How long a starting node waits to see a ready peer to copy the maps from; with none, it starts empty.
    #[serde(default = "default_join_timeout", with = "humantime_serde")]
    pub join_timeout: Duration,
    /// How often a node pulls a peer's maps to repair anything a write missed (also done whenever a peer
    /// (re)appears in the view).
    #[serde(default = "default_anti_entropy_interval", with = "humantime_serde")]
    pub anti_entropy_interval: Duration,
}

impl ClusterConfig {
    /// `logout_quorum`, or its default: a majority of the configured size.
    pub fn logout_quorum(&self) -> usize {
        self.logout_quorum.unwrap_or(self.expected_size / 2 + 1)
    }

    /// A cluster section with the documented defaults, exactly as a file giving only these four keys would read:
    /// the defaults live in the serde attributes above and nowhere else.
    pub fn new(id: &str, gossip_addr: SocketAddr, replication_addr: SocketAddr, key: &ClusterKey) -> Self {
        let mut section = toml::Table::new();
        section.insert("id".into(), id.into());
        section.insert("gossip_addr".into(), gossip_addr.to_string().into());
        section.insert("replication_addr".into(), replication_addr.to_string().into());
        section.insert("key".into(), key.to_base64().into());
        section.try_into().expect("a section of the four required keys parses")
    }
}

/// A secret string from config: deserialises as a plain string, never printed.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

fn default_gossip_interval() -> Duration {
    Duration::from_millis(200)
}

fn default_phi() -> f64 {
    8.0
}

fn default_dead_grace() -> Duration {
    Duration::from_secs(3600)
}

fn default_expected_size() -> usize {
    1
}

fn default_ack_timeout() -> Duration {
    Duration::from_millis(500)
}

fn default_forward_timeout() -> Duration {
    Duration::from_secs(1)
}

fn default_min_copies() -> usize {
    1
}

fn default_join_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_anti_entropy_interval() -> Duration {
    Duration::from_secs(30)
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Short node id, 1 to 16 ASCII letters and digits; ends every ticket id this node issues.
    pub name: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to listen on; port 0 picks a free port (tests).
    pub listen: SocketAddr,
    /// Path under which every CAS endpoint lives, e.g. `/cas`.
    #[serde(default = "default_base_path")]
    pub base_path: String,
    /// Serve and accept plain http. Only for development: it also drops `Secure` from the TGC cookie.
    #[serde(default)]
    pub allow_plain_http: bool,
    /// Serve plain http behind a proxy that terminates TLS; cookies stay `Secure`.
    #[serde(default)]
    pub tls_terminated_upstream: bool,
    /// Terminate TLS in casd.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// On a graceful stop, how long requests in flight may take to finish before their connections are dropped.
    #[serde(default = "default_drain_timeout", with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Connections served at once; past it a new one is closed at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Connections one client address may hold (throttle.trusted_proxies are exempt).
    #[serde(default = "default_max_connections_per_address")]
    pub max_connections_per_address: usize,
    /// A request head must arrive whole within this; a keep-alive connection idle this long is closed.
    #[serde(default = "default_header_timeout", with = "humantime_serde")]
    pub header_timeout: Duration,
    /// A request (its body included) must be answered within this, or it gets a 503.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
}

fn default_max_connections() -> usize {
    4096
}

fn default_max_connections_per_address() -> usize {
    256
}

fn default_header_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_drain_timeout() -> Duration {
    Duration::from_secs(10)
}

/// Certificate chain and private key (PEM), read at start and again on SIGHUP.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CookieConfig {
    pub name: String,
}

impl Default for CookieConfig {
    fn default() -> Self {
        Self { name: "TGC".into() }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TicketsConfig {
    #[serde(with = "humantime_serde")]
    pub st_ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub pt_ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub tgt_max_lifetime: Duration,
    #[serde(with = "humantime_serde")]
    pub tgt_idle_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub lt_ttl: Duration,
    /// How often expired tickets are removed (and single logout sent for expired TGTs). Expiry is checked on every
    /// read regardless.
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
    /// Offer "remember me" on the login form: such a session gets a persistent cookie and the limits below.
    pub remember_me: bool,
    #[serde(with = "humantime_serde")]
    pub remember_me_max_lifetime: Duration,
    #[serde(with = "humantime_serde")]
    pub remember_me_idle_timeout: Duration,
}

impl Default for TicketsConfig {
    fn default() -> Self {
        let p = ExpiryPolicy::default();
        Self {
            st_ttl: p.st_ttl,
            pt_ttl: p.pt_ttl,
            tgt_max_lifetime: p.tgt_max_lifetime,
            tgt_idle_timeout: p.tgt_idle_timeout,
            lt_ttl: p.lt_ttl,
            sweep_interval: Duration::from_secs(30),
            remember_me: p.remember_me,
            remember_me_max_lifetime: p.remember_me_max_lifetime,
            remember_me_idle_timeout: p.remember_me_idle_timeout,
        }
    }
}

impl TicketsConfig {
    pub fn policy(&self) -> ExpiryPolicy {
        ExpiryPolicy {
            st_ttl: self.st_ttl,
            pt_ttl: self.pt_ttl,
            tgt_max_lifetime: self.tgt_max_lifetime,
            tgt_idle_timeout: self.tgt_idle_timeout,
            lt_ttl: self.lt_ttl,
            remember_me: self.remember_me,
            remember_me_max_lifetime: self.remember_me_max_lifetime,
            remember_me_idle_timeout: self.remember_me_idle_timeout,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProtocolConfig {
    /// Release attributes on the CAS 2.0 endpoints too (Apereo's `v3-forward-compatible`).
    pub cas2_attributes: bool,
}

impl Default for ProtocolConfig {
    fn default() -> Self {
        Self { cas2_attributes: true }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThrottleConfig {
    /// Failed logins allowed per username and client address within `window` before further attempts are refused.
    pub max_failures: u32,
    /// Failed logins allowed per client address across usernames within `window` (password spraying).
    pub max_failures_per_address: u32,
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Keys (username and address pairs, and addresses) the throttle remembers at most.
    pub max_tracked: usize,
    /// Proxies (addresses or CIDR blocks) whose `X-Forwarded-For` is believed: behind a load balancer every client
    /// would otherwise be the balancer's address.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            max_failures: 10,
            max_failures_per_address: 100,
            window: Duration::from_secs(60),
            max_tracked: 100_000,
            trusted_proxies: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Timeout of the `pgtUrl` callback.
    #[serde(with = "humantime_serde")]
    pub callback_timeout: Duration,
    /// The old name of `tls.client.extra_ca_file`, still read (with a warning at start) so that old configs work.
    pub extra_ca_file: Option<PathBuf>,
}

/// `[tls.client]`: trust for every HTTPS call casd makes.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutgoingTlsSection {
    pub client: TlsClientConfig,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsClientConfig {
    /// Extra CA certificates (PEM), trusted besides the built-in web roots for pgtUrl callbacks and back-channel
    /// single logout: for services behind a private CA.
    pub extra_ca_file: Option<PathBuf>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self { callback_timeout: Duration::from_secs(5), extra_ca_file: None }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SloConfig {
    pub enabled: bool,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Back-channel requests in flight at once, across all logouts.
    pub max_concurrency: usize,
}

impl Default for SloConfig {
    fn default() -> Self {
        Self { enabled: true, timeout: Duration::from_secs(5), max_concurrency: 32 }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// A TOML users file (see `UsersFile`); relative paths are taken from the config file's folder.
    pub users_file: Option<PathBuf>,
    /// Users written inline, same form as in the users file.
    pub users: Vec<UserRecord>,
    /// Authentication sources tried in order (`[[auth.sources]]`: `type = "users" | "ldap" | "sql"`). Empty:
    /// the users file and inline users alone.
    pub sources: Vec<SourceConfig>,
    /// Password checks that may wait for a core (one runs per core at a time); past that a login is answered
    /// "busy, try again" at once instead of queueing behind seconds of work.
    pub max_waiting_checks: usize,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self { users_file: None, users: Vec::new(), sources: Vec::new(), max_waiting_checks: 32 }
    }
}

fn default_base_path() -> String {
    "/cas".into()
}

impl Config {
    /// The embedded single-node demo configuration.
    pub fn embedded() -> Self {
        let mut config = Self::parse(EMBEDDED_DEFAULT, EMBEDDED_NAME).expect("the embedded config is tested to parse");
        config.is_demo = true;
        config
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { file: file.clone(), source })?;
        Self::parse(&text, &file)
    }

    /// Parses TOML text (checked by [`Config::resolve`]); `file` names it in errors, and relative paths in it are
    /// taken from its folder.
    pub fn parse(text: &str, file: &str) -> Result<Self, ConfigError> {
        let mut config: Config =
            toml::from_str(text).map_err(|e| ConfigError::Parse { file: file.into(), detail: e.to_string() })?;
        config.source = file.into();
        if let Some(dir) = Path::new(file).parent() {
            let relative = |p: &mut Option<PathBuf>| {
                if let Some(path) = p.as_mut() {
                    *path = dir.join(&*path);
                }
            };
            relative(&mut config.auth.users_file);
            relative(&mut config.service_registry.dir);
            relative(&mut config.ui.themes_dir);
            for source in &mut config.auth.sources {
                match source {
                    SourceConfig::Ldap(l) => {
                        relative(&mut l.ca_file);
                        relative(&mut l.service_password_file);
                    }
                    SourceConfig::Sql(q) => relative(&mut q.password_file),
                    SourceConfig::Users => {}
                }
            }
            relative(&mut config.proxy.extra_ca_file);
            relative(&mut config.tls.client.extra_ca_file);
            relative(&mut config.storage.dir);
            relative(&mut config.storage.key_file);
            if let Some(tls) = config.http.tls.as_mut() {
                tls.cert_file = dir.join(&tls.cert_file);
                tls.key_file = dir.join(&tls.key_file);
            }
            if let Some(cluster) = config.cluster.as_mut() {
                relative(&mut cluster.key_file);
            }
        }
        Ok(config)
    }

    /// Checks everything and reads what the configuration names, once: what `casd check-config` reports and what a
    /// node starts from.
    pub fn resolve(self) -> Result<Resolved, ConfigError> {
        self.validate()?;
        let pages = Pages::load(&self.http.base_path, &self.ui)
            .map_err(|e| ConfigError::Parse { file: e.file, detail: e.detail })?;
        let service_source = ServiceSource {
            themes: pages.theme_names(),
            config_file: self.source.clone(),
            inline: self.services.clone(),
            dir: self.service_registry.dir.clone(),
            max_url_bytes: self.limits.max_service_url_bytes,
            max_st_ttl: self.tickets.st_ttl,
        };
        let services = service_source.load().map_err(|e| match e {
            ServiceError::Read { file, source } => ConfigError::Read { file, source },
            ServiceError::Parse { file, detail } => ConfigError::Parse { file, detail },
            ServiceError::Invalid { file, key, value, reason } => ConfigError::Invalid { file, key, value, reason },
        })?;
        let mut users = self.auth.users.clone();
        if let Some(path) = &self.auth.users_file {
            let file = path.display().to_string();
            let text =
                std::fs::read_to_string(path).map_err(|source| ConfigError::Read { file: file.clone(), source })?;
            users.extend(UsersFile::parse(&text).map_err(|e| match e {
                crate::auth::UsersFileError::Parse(detail) => ConfigError::Parse { file, detail },
                crate::auth::UsersFileError::Invalid { key, reason } => {
                    ConfigError::Invalid { file, key, value: "<hidden>".into(), reason: reason.into() }
                }
            })?);
        }
        let cluster = match &self.cluster {
            Some(c) => {
                Some(ClusterPlan { settings: c.settings(), key: self.cluster_key(c)?, min_copies: c.min_copies })
            }
            None => None,
        };
        let storage = self.storage_plan(cluster.as_ref())?;
        Ok(Resolved { config: self, services, service_source, pages, users, cluster, storage })
    }

    /// The journal's directory, mode and key: the key is derived from the cluster key in a cluster (every node
    /// reads its own journal with the key it already has), and is `storage.key` / `storage.key_file` on a single node.
    fn storage_plan(&self, cluster: Option<&ClusterPlan>) -> Result<Option<StoragePlan>, ConfigError> {
        use crate::store::{Durability, StorageKey};
        let s = &self.storage;
        let durability = match s.durability {
            DurabilityMode::Off => return Ok(None),
            DurabilityMode::Sync => Durability::Sync,
            DurabilityMode::Interval if s.flush_interval.is_zero() => {
                return Err(self.invalid("storage.flush_interval", "0s", "must be greater than zero"));
            }
            DurabilityMode::Interval => Durability::Interval(s.flush_interval),
        };
        let Some(dir) = s.dir.clone() else {
            return Err(self.invalid(
                "storage.dir",
                "unset",
                "a data directory is required unless storage.durability = \"off\"",
            ));
        };
        let key = match (cluster, &s.key, &s.key_file) {
            (Some(c), None, None) => StorageKey::new(c.key.derive("casd storage key v1")),
            (Some(_), _, _) => {
                return Err(self.invalid(
                    "storage.key",
                    "<hidden>",
                    "a cluster's journal is sealed under its cluster key; remove storage.key and storage.key_file",
                ));
            }
            (None, Some(k), None) => self.storage_key("storage.key", &k.0)?,
            (None, None, Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { file: path.display().to_string(), source })?;
                self.storage_key("storage.key_file", &text)?
            }
            (None, _, _) => {
                return Err(self.invalid(
                    "storage.key",
                    "<hidden>",
                    "set exactly one of storage.key and storage.key_file (a single node's journal is sealed under \
                     it); make one with `casd keygen`",
                ));
            }
        };
        Ok(Some(StoragePlan { dir, durability, key }))
    }

    fn storage_key(&self, name: &str, text: &str) -> Result<crate::store::StorageKey, ConfigError> {
        let key = ClusterKey::from_base64(text)
            .map_err(|e| self.invalid(name, "<hidden>", &format!("{e}; make one with `casd keygen`")))?;
        Ok(crate::store::StorageKey::new(key.derive("casd single-node storage key v1")))
    }

    /// The cluster key, from `cluster.key` or `cluster.key_file`.
    fn cluster_key(&self, c: &ClusterConfig) -> Result<ClusterKey, ConfigError> {
        let (key_name, text) = match (&c.key, &c.key_file) {
            (Some(k), None) => ("cluster.key", k.0.clone()),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { file: path.display().to_string(), source })?;
                ("cluster.key_file", text)
            }
            _ => {
                return Err(self.invalid(
                    "cluster.key",
                    "<hidden>",
                    "set exactly one of cluster.key and cluster.key_file",
                ));
            }
        };
        ClusterKey::from_base64(&text)
            .map_err(|e| self.invalid(key_name, "<hidden>", &format!("{e}; make one with `casd keygen`")))
    }

    /// The extra CAs for outgoing HTTPS: `tls.client.extra_ca_file`, or its old name `proxy.extra_ca_file`.
    pub fn outgoing_extra_ca_file(&self) -> Option<&Path> {
        self.tls.client.extra_ca_file.as_deref().or(self.proxy.extra_ca_file.as_deref())
    }

    fn invalid(&self, key: &str, value: impl ToString, reason: &str) -> ConfigError {
        ConfigError::Invalid {
            file: self.source.clone(),
            key: key.into(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let name = &self.node.name;
        if name.is_empty() || name.len() > 16 || !name.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(self.invalid("node.name", name, "must be 1 to 16 ASCII letters or digits"));
        }
        let base = &self.http.base_path;
        if !base.starts_with('/') || base.ends_with('/') || base.contains(['?', '#', ' ']) {
            return Err(self.invalid(
                "http.base_path",
                base,
                "must start with '/' and not end with '/', e.g. \"/cas\"",
            ));
        }
        let modes = [self.http.tls.is_some(), self.http.allow_plain_http, self.http.tls_terminated_upstream];
        if modes.iter().filter(|m| **m).count() != 1 {
            return Err(self.invalid(
                "http.tls",
                if self.http.tls.is_some() { "set" } else { "unset" },
                "choose exactly one of [http.tls] (casd terminates TLS), http.tls_terminated_upstream = true (a proxy \
                 does) or http.allow_plain_http = true (development only)",
            ));
        }
        if let (Some(old), Some(_)) = (&self.proxy.extra_ca_file, &self.tls.client.extra_ca_file) {
            return Err(self.invalid(
                "proxy.extra_ca_file",
                old.display(),
                "is the old name of tls.client.extra_ca_file, which is also set; keep only tls.client.extra_ca_file",
            ));
        }
        let cookie = &self.cookie.name;
        if cookie.is_empty() || !cookie.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            return Err(self.invalid("cookie.name", cookie, "must be letters, digits, '_' or '-'"));
        }
        let t = &self.tickets;
        for (key, value) in [
            ("tickets.st_ttl", t.st_ttl),
            ("tickets.pt_ttl", t.pt_ttl),
            ("tickets.tgt_max_lifetime", t.tgt_max_lifetime),
            ("tickets.tgt_idle_timeout", t.tgt_idle_timeout),
            ("tickets.lt_ttl", t.lt_ttl),
            ("tickets.sweep_interval", t.sweep_interval),
            ("tickets.remember_me_max_lifetime", t.remember_me_max_lifetime),
            ("tickets.remember_me_idle_timeout", t.remember_me_idle_timeout),
            ("throttle.window", self.throttle.window),
            ("proxy.callback_timeout", self.proxy.callback_timeout),
            ("slo.timeout", self.slo.timeout),
            ("http.drain_timeout", self.http.drain_timeout),
            ("http.header_timeout", self.http.header_timeout),
            ("http.request_timeout", self.http.request_timeout),
        ] {
            if value.is_zero() {
                return Err(self.invalid(key, humantime::format_duration(value), "must be greater than zero"));
            }
        }
        for (key, value) in [
            ("limits.max_service_url_bytes", self.limits.max_service_url_bytes),
            ("limits.max_username_bytes", self.limits.max_username_bytes),
            ("limits.max_password_bytes", self.limits.max_password_bytes),
        ] {
            if value < 16 {
                return Err(self.invalid(key, value, "must be at least 16"));
            }
        }
        if self.limits.max_sessions_per_user == 0 {
            return Err(self.invalid("limits.max_sessions_per_user", 0, "must be at least 1"));
        }
        if self.ops.token.as_ref().is_some_and(|t| t.0.len() < 16) {
            return Err(self.invalid("ops.token", "<hidden>", "must be at least 16 characters"));
        }
        if self.http.max_connections == 0 {
            return Err(self.invalid("http.max_connections", 0, "must be at least 1"));
        }
        if self.http.max_connections_per_address == 0 {
            return Err(self.invalid("http.max_connections_per_address", 0, "must be at least 1"));
        }
        if self.slo.max_concurrency == 0 {
            return Err(self.invalid("slo.max_concurrency", 0, "must be at least 1"));
        }
        for (key, value) in [
            ("throttle.max_failures", self.throttle.max_failures as usize),
            ("throttle.max_failures_per_address", self.throttle.max_failures_per_address as usize),
            ("throttle.max_tracked", self.throttle.max_tracked),
        ] {
            if value == 0 {
                return Err(self.invalid(key, 0, "must be at least 1"));
            }
        }
        let mut ids = std::collections::HashSet::new();
        for (i, s) in self.services.iter().enumerate() {
            if !ids.insert(s.id) {
                return Err(self.invalid(&format!("services[{i}].id"), s.id, "is used by another service"));
            }
        }
        if let Some(c) = &self.cluster {
            self.validate_cluster(c)?;
        }
        for (i, u) in self.auth.users.iter().enumerate() {
            if let Err(reason) = u.check() {
                return Err(self.invalid(&format!("auth.users[{i}].password_hash"), "<hidden>", reason));
            }
        }
        self.validate_sources()
    }

    fn validate_sources(&self) -> Result<(), ConfigError> {
        let sources = &self.auth.sources;
        let has_users = self.auth.users_file.is_some() || !self.auth.users.is_empty();
        if !sources.is_empty() && has_users && !sources.iter().any(|s| matches!(s, SourceConfig::Users)) {
            let reason = "users are configured (auth.users_file or auth.users) but no source is of type \"users\": \
                          add { type = \"users\" } where they should be asked";
            return Err(self.invalid("auth.sources", sources.len(), reason));
        }
        for (i, source) in sources.iter().enumerate() {
            let checked = match source {
                SourceConfig::Ldap(l) => l.check(),
                SourceConfig::Sql(q) => q.check(),
                SourceConfig::Users => Ok(()),
            };
            if let Err((key, reason)) = checked {
                let value = match (source, key) {
                    (SourceConfig::Ldap(l), "urls") => l.urls.join(" "),
                    (SourceConfig::Ldap(l), "filter") => l.filter.clone().unwrap_or_default(),
                    (SourceConfig::Ldap(l), "bind_dn") => l.bind_dn.clone().unwrap_or_default(),
                    (SourceConfig::Sql(q), "query") => q.query.clone(),
                    _ => String::new(),
                };
                return Err(self.invalid(&format!("auth.sources[{i}].{key}"), value, &reason));
            }
        }
        Ok(())
    }

    fn validate_cluster(&self, c: &ClusterConfig) -> Result<(), ConfigError> {
        if c.id.is_empty() || c.id.len() > 64 {
            return Err(self.invalid("cluster.id", &c.id, "must be 1 to 64 characters"));
        }
        let advertised = c.gossip_advertise.unwrap_or(c.gossip_addr);
        if advertised.ip().is_unspecified() || advertised.port() == 0 && c.gossip_advertise.is_some() {
            return Err(self.invalid(
                "cluster.gossip_addr",
                c.gossip_addr,
                "peers need a concrete address: bind one, or set cluster.gossip_advertise",
            ));
        }
        if c.gossip_interval.is_zero() {
            return Err(self.invalid("cluster.gossip_interval", "0s", "must be greater than zero"));
        }
        if c.phi_threshold.is_nan() || c.phi_threshold <= 0.0 {
            return Err(self.invalid("cluster.phi_threshold", c.phi_threshold, "must be greater than zero"));
        }
        for (key, value) in [
            ("cluster.ack_timeout", c.ack_timeout),
            ("cluster.forward_timeout", c.forward_timeout),
            ("cluster.anti_entropy_interval", c.anti_entropy_interval),
        ] {
            if value.is_zero() {
                return Err(self.invalid(key, humantime::format_duration(value), "must be greater than zero"));
            }
        }
        if c.min_copies == 0 || c.min_copies > c.expected_size.max(1) {
            return Err(self.invalid(
                "cluster.min_copies",
                c.min_copies,
                "must be between 1 and cluster.expected_size",
            ));
        }
        if let Some(q) = c.logout_quorum.filter(|&q| q == 0 || q > c.expected_size.max(1)) {
            return Err(self.invalid("cluster.logout_quorum", q, "must be between 1 and cluster.expected_size"));
        }
        if c.expected_size == 0 {
            return Err(self.invalid("cluster.expected_size", 0, "must be at least 1"));
        }
        if c.multicast.enabled && !c.multicast.group.is_multicast() {
            return Err(self.invalid(
                "cluster.multicast.group",
                c.multicast.group,
                "must be an IPv4 multicast address",
            ));
        }
        Ok(())
    }
}

/// A configuration resolved for a node to run on.
pub struct Resolved {
    /// The configuration as written (paths made relative to its file).
    pub config: Config,
    pub services: ServiceRegistry,
    /// Where the services were read from, for reloads.
    pub service_source: ServiceSource,
    /// The pages, with their themes loaded and checked.
    pub pages: Pages,
    /// Inline users and those of `auth.users_file`.
    pub users: Vec<UserRecord>,
    pub cluster: Option<ClusterPlan>,
    pub storage: Option<StoragePlan>,
}

/// Where and how a node keeps its journal.
pub struct StoragePlan {
    pub dir: PathBuf,
    pub durability: crate::store::Durability,
    pub key: crate::store::StorageKey,
}

/// What a clustered node needs beyond its single-node self.
pub struct ClusterPlan {
    pub settings: ClusterSettings,
    pub key: ClusterKey,
    /// Copies a new SSO session must reach (`cluster.min_copies`): the registry's business, not the cluster's.
    pub min_copies: usize,
}

impl ClusterConfig {
    fn settings(&self) -> ClusterSettings {
        ClusterSettings {
            id: self.id.clone(),
            gossip_addr: self.gossip_addr,
            gossip_advertise: self.gossip_advertise,
            replication_addr: self.replication_addr,
            seeds: self.seeds.clone(),
            gossip_interval: self.gossip_interval,
            phi_threshold: self.phi_threshold,
            dead_node_grace_period: self.dead_node_grace_period,
            expected_size: self.expected_size,
            multicast: self.multicast.clone(),
            timeouts: Timeouts { ack: self.ack_timeout, forward: self.forward_timeout },
            join_timeout: self.join_timeout,
            anti_entropy_interval: self.anti_entropy_interval,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_parses_and_is_a_demo() {
        let c = Config::embedded();
        assert!(c.is_demo);
        assert_eq!(c.http.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.http.base_path, "/cas");
        assert!(!c.services.is_empty());
        assert_eq!(c.auth.users[0].username, "casuser");
        let resolved = c.resolve().expect("the embedded config resolves");
        assert!(resolved.cluster.is_none() && !resolved.users.is_empty());
    }

    #[test]
    fn unknown_key_is_named_with_the_file() {
        let text = EMBEDDED_DEFAULT.replace("[http]", "[http]\nlisten_port = 1");
        let e = Config::parse(&text, "a.toml").and_then(Config::resolve).err().expect("refused").to_string();
        assert!(e.starts_with("a.toml: "), "{e}");
        assert!(e.contains("listen_port"), "{e}");
    }

    #[test]
    fn bad_value_names_key_and_value() {
        let text = EMBEDDED_DEFAULT.replace("st_ttl = \"10s\"", "st_ttl = \"0s\"");
        let e = Config::parse(&text, "b.toml").and_then(Config::resolve).err().expect("refused").to_string();
        assert_eq!(e, "b.toml: tickets.st_ttl: must be greater than zero (got \"0s\")");
        let text = EMBEDDED_DEFAULT.replace("name = \"casd1\"", "name = \"cas-1.example\"");
        let e = Config::parse(&text, "c.toml").and_then(Config::resolve).err().expect("refused").to_string();
        assert!(e.contains("node.name") && e.contains("cas-1.example"), "{e}");
    }

    /// `proxy.extra_ca_file` still works as the old name of `tls.client.extra_ca_file`; both at once is refused.
    #[test]
    fn outgoing_ca_file_old_and_new_names() {
        let old = EMBEDDED_DEFAULT.replace("[proxy]\n", "[proxy]\nextra_ca_file = \"ca.pem\"\n");
        let c = Config::parse(&old, "/etc/casd/o.toml").and_then(Config::resolve).expect("the old name still works");
        assert_eq!(c.config.outgoing_extra_ca_file(), Some(Path::new("/etc/casd/ca.pem")));
        let new = format!("{EMBEDDED_DEFAULT}\n[tls.client]\nextra_ca_file = \"ca2.pem\"\n");
        let c = Config::parse(&new, "/etc/casd/n.toml").and_then(Config::resolve).expect("the new name");
        assert_eq!(c.config.outgoing_extra_ca_file(), Some(Path::new("/etc/casd/ca2.pem")));
        let both = format!("{old}\n[tls.client]\nextra_ca_file = \"ca2.pem\"\n");
        let e = Config::parse(&both, "b.toml").and_then(Config::resolve).err().expect("refused").to_string();
        assert!(
            e.starts_with("b.toml: proxy.extra_ca_file: ") && e.contains("keep only tls.client.extra_ca_file"),
            "{e}"
        );
    }

    #[test]
    fn cluster_key_errors_name_the_key_and_hide_the_value() {
        let with = |cluster: &str| {
            format!(
                "{EMBEDDED_DEFAULT}\n[cluster]\nid = \"c\"\ngossip_addr = \"127.0.0.1:7001\"\nreplication_addr = \"127.0.0.1:7101\"\n{cluster}"
            )
        };
        let resolve = |text: String| Config::parse(&text, "k.toml").and_then(Config::resolve);
        let e = resolve(with("key = \"c2VjcmV0\"\n")).err().expect("refused").to_string();
        assert!(e.contains("cluster.key") && e.contains("32 bytes") && !e.contains("c2VjcmV0"), "{e}");
        let e = resolve(with("")).err().expect("refused").to_string();
        assert!(e.contains("exactly one"), "{e}");
        let key = ClusterKey::generate().to_base64();
        let c = resolve(with(&format!("key = \"{key}\"\n"))).expect("valid");
        assert_eq!(c.cluster.expect("clustered").key.to_base64(), key);
        assert!(!format!("{:?}", c.config).contains(&key), "the key never shows in Debug");
        let e = resolve(with(&format!("key = \"{key}\"\n")).replace("127.0.0.1:7001", "0.0.0.0:7001"));
        assert!(e.err().expect("refused").to_string().contains("gossip_advertise"));
    }

    /// The logout quorum defaults to a majority of the configured size, and a quorum no cluster can reach is refused.
    #[test]
    fn logout_quorum_defaults_to_a_majority_and_is_bounded() {
        let key = ClusterKey::generate().to_base64();
        let with = |extra: &str| {
            format!(
                "{EMBEDDED_DEFAULT}\n[cluster]\nid = \"c\"\ngossip_addr = \"127.0.0.1:7001\"\nreplication_addr = \"127.0.0.1:7101\"\nkey = \"{key}\"\n{extra}"
            )
        };
        let resolve = |text: String| Config::parse(&text, "q.toml").and_then(Config::resolve);
        for (size, majority) in [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3)] {
            let c = resolve(with(&format!("expected_size = {size}\n"))).expect("valid");
            assert_eq!(c.config.cluster.expect("clustered").logout_quorum(), majority, "size {size}");
        }
        let c = resolve(with("expected_size = 3\nlogout_quorum = 3\n")).expect("valid");
        assert_eq!(c.config.cluster.expect("clustered").logout_quorum(), 3);
        let e = resolve(with("expected_size = 3\nlogout_quorum = 4\n")).err().expect("refused").to_string();
        assert_eq!(e, "q.toml: cluster.logout_quorum: must be between 1 and cluster.expected_size (got \"4\")");
    }

    #[test]
    fn bad_service_pattern_is_named() {
        let text = format!("{EMBEDDED_DEFAULT}\n[[services]]\nid = 99\nname = \"x\"\npattern = \"(\"\n");
        let e = Config::parse(&text, "d.toml").and_then(Config::resolve).err().expect("refused").to_string();
        assert!(e.contains("services[1].pattern") && e.contains("\"(\""), "{e}");
    }
}
