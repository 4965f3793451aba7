//! Back-channel single logout (CAS 3.0 §2.3.3, Appendix C): a POST of `logoutRequest=<samlp:LogoutRequest ...>` to
//! every service that got a ticket under the ended TGT.
//!
//! Fire and forget: sent from spawned tasks with a bound on requests in flight and a timeout each, so a slow
//! service never delays `/logout`. Failures are logged and counted, never retried (SLO is a notification).
//!
//! Fair: one logout has at most `PER_LOGOUT` requests in flight, and one destination (host and port) at most
//! `PER_DESTINATION`, so a session with hundreds of hanging services, or one dead application, cannot hold the
//! shared slots while other users' logouts wait (a FIFO of 32 once delayed another user's notice by 40 s).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use dashmap::DashMap;
use rand::Rng;
use tokio::sync::Semaphore;

use super::outgoing_tls::ExtraRoots;
use super::render::xml_escape;
use super::services::{LiveServices, LogoutType, with_query_param};
use crate::ticket::Tgt;

/// Requests one logout may have in flight at once.
const PER_LOGOUT: usize = 4;
/// Requests one destination host may have in flight at once.
const PER_DESTINATION: usize = 4;

pub struct SloSender {
    enabled: bool,
    client: reqwest::Client,
    in_flight: Arc<Semaphore>,
    /// Per destination host; an entry lives while some request for that host holds or waits for it.
    destinations: DashMap<String, Arc<Semaphore>>,
    sent: AtomicU64,
    failed: AtomicU64,
}

/// Counts since start, for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SloCounts {
    pub sent: u64,
    pub failed: u64,
}

impl SloSender {
    /// `roots` adds CAs to the built-in ones, for https services behind a private CA (`tls.client.extra_ca_file`).
    pub fn new(
        enabled: bool,
        timeout: Duration,
        max_concurrency: usize,
        roots: &ExtraRoots,
    ) -> Result<Self, reqwest::Error> {
        let builder = reqwest::Client::builder().timeout(timeout).redirect(reqwest::redirect::Policy::none());
        let client = roots.apply(builder).build()?;
        Ok(Self {
            enabled,
            client,
            in_flight: Arc::new(Semaphore::new(max_concurrency)),
            destinations: DashMap::new(),
            sent: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        })
    }

    pub fn counts(&self) -> SloCounts {
        SloCounts { sent: self.sent.load(Ordering::Relaxed), failed: self.failed.load(Ordering::Relaxed) }
    }

    /// Starts single logout for every ticket granted under `tgt` whose service still asks for it. Returns at once.
    pub fn notify(self: &Arc<Self>, services: &LiveServices, tgt: &Tgt) {
        if !self.enabled {
            return;
        }
        let logout = Arc::new(Semaphore::new(PER_LOGOUT));
        for (service, grant) in &tgt.services {
            // Front-channel services are told by the user's browser, from the logout page (`front_channel`).
            if !services.find(service).is_some_and(|s| s.logout == LogoutType::Back) {
                continue;
            }
            let (this, service, body) = (self.clone(), service.clone(), form_body(&grant.ticket));
            let logout = logout.clone();
            tokio::spawn(async move {
                let Ok(_mine) = logout.acquire_owned().await else { return };
                let destination = this.destination(&service);
                let Ok(_host) = destination.clone().acquire_owned().await else { return };
                let Ok(_permit) = this.in_flight.clone().acquire_owned().await else { return };
                let result = this
                    .client
                    .post(&service)
                    .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(body)
                    .send()
                    .await
                    .and_then(|r| r.error_for_status());
                match result {
                    Ok(_) => {
                        this.sent.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        this.failed.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%service, error = %e, "single logout not delivered");
                    }
                }
                drop(_host);
                this.release(&service, destination);
            });
        }
    }

    /// The destination: host and port (two applications on one host are two destinations).
    fn host(service: &str) -> String {
        url::Url::parse(service)
            .ok()
            .and_then(|u| Some(format!("{}:{}", u.host_str()?, u.port_or_known_default()?)))
            .unwrap_or_default()
    }

    fn destination(&self, service: &str) -> Arc<Semaphore> {
        self.destinations
            .entry(Self::host(service))
            .or_insert_with(|| Arc::new(Semaphore::new(PER_DESTINATION)))
            .clone()
    }

    /// Forgets a destination nobody else holds or waits for, so the table stays as small as the hosts in use.
    fn release(&self, service: &str, destination: Arc<Semaphore>) {
        drop(destination);
        self.destinations.remove_if(&Self::host(service), |_, s| Arc::strong_count(s) == 1);
    }
}

/// `logoutRequest=` first (mod_auth_cas checks the prefix), then the one-line XML with the literal `samlp:` prefix
/// on `SessionIndex` (phpCAS reads it with a regex).
pub fn form_body(session_index: &str) -> String {
    let xml = logout_request(session_index, SystemTime::now());
    format!("logoutRequest={}", url::form_urlencoded::byte_serialize(xml.as_bytes()).collect::<String>())
}

/// Front-channel single logout (Apereo's, which java-cas-client reads): for each service of the ended session that
/// asked for it, its URL with `logoutRequest=` the logout request, raw-deflated and base64-encoded, for the logout
/// page to load in the user's browser.
pub fn front_channel(services: &LiveServices, tgt: &Tgt) -> Vec<String> {
    use base64::Engine;
    use std::io::Write;
    tgt.services
        .iter()
        .filter(|(service, _)| services.find(service).is_some_and(|s| s.logout == LogoutType::Front))
        .map(|(service, grant)| {
            let xml = logout_request(&grant.ticket, SystemTime::now());
            let mut deflate = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
            let compressed = deflate.write_all(xml.as_bytes()).and_then(|()| deflate.finish()).unwrap_or_default();
            let encoded = base64::engine::general_purpose::STANDARD.encode(compressed);
            with_query_param(service, "logoutRequest", &encoded)
        })
        .collect()
}

pub fn logout_request(session_index: &str, now: SystemTime) -> String {
    let id: String = {
        let mut rng = rand::rng();
        (0..20).map(|_| char::from(b'a' + rng.random_range(0..26))).collect()
    };
    format!(
        "<samlp:LogoutRequest xmlns:samlp=\"urn:oasis:names:tc:SAML:2.0:protocol\" ID=\"LR-{id}\" Version=\"2.0\" IssueInstant=\"{}\"><saml:NameID xmlns:saml=\"urn:oasis:names:tc:SAML:2.0:assertion\">@NOT_USED@</saml:NameID><samlp:SessionIndex>{}</samlp:SessionIndex></samlp:LogoutRequest>",
        humantime::format_rfc3339_seconds(now),
        xml_escape(session_index)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logout_request_is_one_line_with_the_session_index() {
        let xml = logout_request("ST-abc-n", SystemTime::UNIX_EPOCH);
        assert!(!xml.contains('\n'));
        assert!(xml.contains("<samlp:SessionIndex>ST-abc-n</samlp:SessionIndex>"));
        assert!(xml.contains("IssueInstant=\"1970-01-01T00:00:00Z\""));
        assert!(form_body("ST-1-n").starts_with("logoutRequest=%3Csamlp%3ALogoutRequest"));
    }
}
