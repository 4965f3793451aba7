//! The service registry: which applications may use this CAS server, what they may do, and what they are told.
//! Services come from the config's `[[services]]` and, optionally, a directory of one file per service
//! (`service_files`), reloaded while casd runs ([`LiveServices`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use regex::Regex;
use serde::Deserialize;

use crate::ticket::Principal;

/// One `[[services]]` entry as the config file writes it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceDefinition {
    /// Unique id; when several patterns match, the lowest id wins.
    pub id: u32,
    pub name: String,
    /// Regular expression matched against the whole service URL.
    pub pattern: String,
    /// Regular expression for the `pgtUrl`s this service may use; absent = this service may not proxy.
    #[serde(default)]
    pub proxy_callback_pattern: Option<String>,
    /// Single logout for this service at all (`false` = none, whatever `logout_type` says).
    #[serde(default = "yes")]
    pub slo: bool,
    /// How single logout reaches it: `back` (casd POSTs to it), `front` (the user's browser loads it from the logout
    /// page, for applications casd cannot reach) or `none`.
    #[serde(default)]
    pub logout_type: LogoutType,
    /// Attributes released to this service; `["*"]` releases all.
    #[serde(default)]
    pub release: Vec<String>,
    /// Evaluation order: lower first, then lower id (Apereo's `evaluationOrder`).
    #[serde(default)]
    pub order: i32,
    /// A disabled service is known but refused: "not authorized to use this sign-on service", no tickets.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Single sign-on allowed; `false`: the user types their password for this service every time.
    #[serde(default = "yes")]
    pub sso: bool,
    /// Who may use it: every named attribute must hold at least one of the listed values (an empty list: any
    /// value). Others get "not authorized for this application" and no ticket.
    #[serde(default)]
    pub required_attributes: BTreeMap<String, Vec<String>>,
    /// Its service tickets' lifetime, at most `tickets.st_ttl` (which is every ticket's upper bound).
    #[serde(default, with = "humantime_serde")]
    pub st_ttl: Option<Duration>,
    /// The user name it receives: this attribute's first value instead of the principal id (Apereo's
    /// `usernameAttributeProvider`); the principal id when the user has no such attribute.
    #[serde(default)]
    pub username_attribute: Option<String>,
    /// The theme of the pages shown for it (a folder of `ui.themes_dir`).
    #[serde(default)]
    pub theme: Option<String>,
}

fn yes() -> bool {
    true
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogoutType {
    #[default]
    Back,
    Front,
    None,
}

/// A pattern that does not compile: which service (by position) and which field.
#[derive(Debug, thiserror::Error)]
#[error("services[{index}].{field}: {source}")]
pub struct PatternError {
    pub index: usize,
    pub field: &'static str,
    pub pattern: String,
    pub source: regex::Error,
}

/// A registered service, compiled from config.
#[derive(Debug)]
pub struct RegisteredService {
    pub id: u32,
    pub name: String,
    pattern: Regex,
    proxy_callback: Option<Regex>,
    /// How single logout reaches this service (`LogoutType::None` when `slo = false`).
    pub logout: LogoutType,
    release: Vec<String>,
    pub order: i32,
    pub enabled: bool,
    pub sso: bool,
    required_attributes: BTreeMap<String, Vec<String>>,
    pub st_ttl: Option<Duration>,
    username_attribute: Option<String>,
    pub theme: Option<String>,
}

impl RegisteredService {
    /// Whether this service may obtain proxy-granting tickets at all.
    pub fn may_proxy(&self) -> bool {
        self.proxy_callback.is_some()
    }

    /// Whether this service may obtain a PGT by calling back `pgt_url`.
    pub fn may_proxy_to(&self, pgt_url: &str) -> bool {
        self.proxy_callback.as_ref().is_some_and(|p| p.is_match(pgt_url))
    }

    pub fn releases(&self, attribute: &str) -> bool {
        self.release.iter().any(|r| r == "*" || r == attribute)
    }

    /// Whether this principal may use the service (its required attributes).
    pub fn admits(&self, principal: &Principal) -> bool {
        self.required_attributes.iter().all(|(name, wanted)| match principal.attributes.get(name) {
            Some(values) => wanted.is_empty() || values.iter().any(|v| wanted.contains(v)),
            None => false,
        })
    }

    /// The user name this service receives for `principal`.
    pub fn username<'a>(&self, principal: &'a Principal) -> &'a str {
        self.username_attribute
            .as_deref()
            .and_then(|a| principal.attributes.get(a))
            .and_then(|v| v.first())
            .map_or(principal.id.as_str(), String::as_str)
    }

    /// Compiles one definition; on error, the field and the pattern that failed.
    pub fn compile(c: &ServiceDefinition) -> Result<Self, (&'static str, String, regex::Error)> {
        let compile = |field, pattern: &str| anchored(pattern).map_err(|e| (field, pattern.to_owned(), e));
        Ok(RegisteredService {
            id: c.id,
            name: c.name.clone(),
            pattern: compile("pattern", &c.pattern)?,
            proxy_callback: c
                .proxy_callback_pattern
                .as_deref()
                .map(|p| compile("proxy_callback_pattern", p))
                .transpose()?,
            logout: if c.slo { c.logout_type } else { LogoutType::None },
            release: c.release.clone(),
            order: c.order,
            enabled: c.enabled,
            sso: c.sso,
            required_attributes: c.required_attributes.clone(),
            st_ttl: c.st_ttl,
            username_attribute: c.username_attribute.clone(),
            theme: c.theme.clone(),
        })
    }
}

/// Services in evaluation order (lowest id first).
#[derive(Debug)]
pub struct ServiceRegistry {
    services: Vec<Arc<RegisteredService>>,
    /// Longer service URLs match no service: a ticket, a log line or a session's service list never carries one.
    max_url_bytes: usize,
}

impl ServiceRegistry {
    /// Compiles the configured services, once. Patterns are anchored so that a pattern always matches the whole URL
    /// (Apereo's default full-regex matching).
    pub fn new(definitions: &[ServiceDefinition], max_url_bytes: usize) -> Result<Self, PatternError> {
        let services = definitions
            .iter()
            .enumerate()
            .map(|(index, c)| {
                RegisteredService::compile(c).map_err(|(field, pattern, source)| PatternError {
                    index,
                    field,
                    pattern,
                    source,
                })
            })
            .collect::<Result<Vec<_>, PatternError>>()?;
        Ok(Self::from_compiled(services, max_url_bytes))
    }

    /// Orders compiled services for evaluation: by `order`, then by id.
    pub fn from_compiled(mut services: Vec<RegisteredService>, max_url_bytes: usize) -> Self {
        services.sort_by_key(|s| (s.order, s.id));
        Self { services: services.into_iter().map(Arc::new).collect(), max_url_bytes }
    }

    pub fn len(&self) -> usize {
        self.services.len()
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// The service a URL belongs to, if any. Only absolute http(s) URLs can be services.
    pub fn find(&self, service_url: &str) -> Option<&RegisteredService> {
        self.position(service_url).map(|i| &*self.services[i])
    }

    /// As [`ServiceRegistry::find`], a handle that outlives this registry (a reload may replace it).
    pub fn find_shared(&self, service_url: &str) -> Option<Arc<RegisteredService>> {
        self.position(service_url).map(|i| self.services[i].clone())
    }

    fn position(&self, service_url: &str) -> Option<usize> {
        if service_url.len() > self.max_url_bytes {
            return None;
        }
        let parsed = url::Url::parse(service_url).ok()?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return None;
        }
        self.services.iter().position(|s| s.pattern.is_match(service_url))
    }
}

/// The registry in force, swapped whole when the service files change or on SIGHUP. A request takes one
/// snapshot ([`LiveServices::current`]) and sees one registry throughout.
pub struct LiveServices {
    current: ArcSwap<ServiceRegistry>,
    /// Where a reload reads from; `None`: the config's `[[services]]` only, nothing to reload.
    source: Option<super::service_files::ServiceSource>,
}

impl LiveServices {
    pub fn new(registry: ServiceRegistry, source: Option<super::service_files::ServiceSource>) -> Self {
        Self { current: ArcSwap::from_pointee(registry), source }
    }

    pub fn current(&self) -> Arc<ServiceRegistry> {
        self.current.load_full()
    }

    /// The service a URL belongs to in the registry now in force.
    pub fn find(&self, service_url: &str) -> Option<Arc<RegisteredService>> {
        self.current.load().find_shared(service_url)
    }

    /// Reads the services again. A bad file leaves the registry in force as it was and is reported (file, key,
    /// reason); `Ok(None)` when nothing changed.
    pub fn reload(&self) -> Result<Option<usize>, super::service_files::ServiceError> {
        let Some(source) = &self.source else { return Ok(None) };
        let registry = source.load()?;
        let n = registry.len();
        self.current.store(Arc::new(registry));
        Ok(Some(n))
    }

    pub fn source(&self) -> Option<&super::service_files::ServiceSource> {
        self.source.as_ref()
    }
}

fn anchored(pattern: &str) -> Result<Regex, regex::Error> {
    Regex::new(&format!("^(?:{pattern})$"))
}

/// Whether the service given at validation is the one the ticket was issued for (CAS 3.0 §3.1.1). As Apereo does,
/// the `#fragment` and any `;jsessionid=` are ignored. Scheme and host compare case-insensitively (they are, in
/// URLs); path and query exactly, as the registry's patterns see them: `/App` and `/app` are different services.
pub fn same_service(issued_for: &str, presented: &str) -> bool {
    let (a, b) = (normalise(issued_for), normalise(presented));
    let (a_origin, a_rest) = a.split_at(origin_end(&a));
    let (b_origin, b_rest) = b.split_at(origin_end(&b));
    a_origin.eq_ignore_ascii_case(b_origin) && a_rest == b_rest
}

/// Where `scheme://authority` ends: at the first `/`, `?` or `;` after `://`, else the end.
fn origin_end(url: &str) -> usize {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    url[after_scheme..].find(['/', '?', ';']).map_or(url.len(), |i| after_scheme + i)
}

fn normalise(service: &str) -> String {
    let without_fragment = service.split('#').next().unwrap_or_default();
    match without_fragment.to_ascii_lowercase().find(";jsessionid=") {
        Some(start) => {
            let rest = &without_fragment[start + 1..];
            let end = rest.find(['?', ';']).map_or(without_fragment.len(), |e| start + 1 + e);
            format!("{}{}", &without_fragment[..start], &without_fragment[end..])
        }
        None => without_fragment.to_owned(),
    }
}

/// Appends a query parameter the way CAS clients expect: `?` or `&` as needed, any `#fragment` kept last.
pub fn with_query_param(url: &str, name: &str, value: &str) -> String {
    let (base, fragment) = match url.split_once('#') {
        Some((b, f)) => (b, Some(f)),
        None => (url, None),
    };
    let sep = if base.contains('?') { '&' } else { '?' };
    let encoded: String = url::form_urlencoded::byte_serialize(value.as_bytes()).collect();
    let mut out = format!("{base}{sep}{name}={encoded}");
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> ServiceRegistry {
        let svc = |id, pattern: &str, proxy: Option<&str>| ServiceDefinition {
            id,
            name: format!("s{id}"),
            pattern: pattern.into(),
            proxy_callback_pattern: proxy.map(Into::into),
            slo: true,
            logout_type: LogoutType::Back,
            release: vec!["mail".into()],
            order: 0,
            enabled: true,
            sso: true,
            required_attributes: Default::default(),
            st_ttl: None,
            username_attribute: None,
            theme: None,
        };
        ServiceRegistry::new(
            &[
                svc(2, r"https://app\.example\.org/.*", None),
                svc(1, r"https://app\.example\.org/admin/.*", Some(r"https://app\.example\.org/cb")),
            ],
            100,
        )
        .expect("patterns compile")
    }

    #[test]
    fn lowest_id_wins_and_patterns_are_anchored() {
        let r = registry();
        assert_eq!(r.find("https://app.example.org/admin/x").map(|s| s.id), Some(1));
        assert_eq!(r.find("https://app.example.org/home").map(|s| s.id), Some(2));
        let long = format!("https://app.example.org/{}", "x".repeat(100));
        assert!(r.find(&long).is_none(), "a URL over the length limit matches no service");
        assert!(r.find("https://evil.example/?https://app.example.org/x").is_none());
        assert!(r.find("javascript:alert(1)").is_none());
    }

    #[test]
    fn proxy_policy_and_release() {
        let r = registry();
        let admin = r.find("https://app.example.org/admin/x").expect("registered");
        assert!(admin.may_proxy_to("https://app.example.org/cb"));
        assert!(!admin.may_proxy_to("https://app.example.org/cb/other"));
        assert!(admin.releases("mail") && !admin.releases("memberOf"));
        assert!(!r.find("https://app.example.org/x").expect("registered").may_proxy_to("https://app.example.org/cb"));
    }

    #[test]
    fn service_match_ignores_fragment_case_and_jsessionid() {
        assert!(same_service("https://App.example.org/a?x=1", "https://app.example.org/a?x=1#top"));
        assert!(same_service("https://a/x;jsessionid=ABC?y=1", "https://a/x?y=1"));
        assert!(!same_service("https://a/x", "https://a/x/"));
        assert!(!same_service("https://a/x?y=1", "https://a/x?y=2"));
        assert!(same_service("HTTPS://A.example/x?y=1", "https://a.EXAMPLE/x?y=1"), "scheme and host ignore case");
        assert!(!same_service("https://a/App", "https://a/app"), "the path does not");
        assert!(!same_service("https://a/x?Y=1", "https://a/x?y=1"), "nor does the query");
    }

    #[test]
    fn ticket_is_appended_before_the_fragment() {
        assert_eq!(with_query_param("https://a/p", "ticket", "ST-1"), "https://a/p?ticket=ST-1");
        assert_eq!(with_query_param("https://a/p?x=1#f", "ticket", "ST-1"), "https://a/p?x=1&ticket=ST-1#f");
    }
}
