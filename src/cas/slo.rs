//! Back-channel single logout (CAS 3.0 §2.3.3, Appendix C): a POST of `logoutRequest=<samlp:LogoutRequest ...>` to
//! every service that got a ticket under the ended TGT.
//!
//! Fire and forget: sent from spawned tasks with a bound on requests in flight and a timeout each, so a slow
//! service never delays `/logout`. Failures are logged and counted, never retried (SLO is a notification).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use rand::Rng;
use tokio::sync::Semaphore;

use super::render::xml_escape;
use super::services::ServiceRegistry;
use crate::ticket::Tgt;

pub struct SloSender {
    enabled: bool,
    client: reqwest::Client,
    in_flight: Arc<Semaphore>,
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
    pub fn new(enabled: bool, timeout: Duration, max_concurrency: usize) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder().timeout(timeout).redirect(reqwest::redirect::Policy::none()).build()?;
        Ok(Self {
            enabled,
            client,
            in_flight: Arc::new(Semaphore::new(max_concurrency)),
            sent: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        })
    }

    pub fn counts(&self) -> SloCounts {
        SloCounts { sent: self.sent.load(Ordering::Relaxed), failed: self.failed.load(Ordering::Relaxed) }
    }

    /// Starts single logout for every ticket granted under `tgt` whose service still asks for it. Returns at once.
    pub fn notify(self: &Arc<Self>, services: &ServiceRegistry, tgt: &Tgt) {
        if !self.enabled {
            return;
        }
        for (service, grant) in &tgt.services {
            if !services.find(service).is_some_and(|s| s.slo) {
                continue;
            }
            let (this, service, body) = (self.clone(), service.clone(), form_body(&grant.ticket));
            tokio::spawn(async move {
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
            });
        }
    }
}

/// `logoutRequest=` first (mod_auth_cas checks the prefix), then the one-line XML with the literal `samlp:` prefix
/// on `SessionIndex` (phpCAS reads it with a regex).
pub fn form_body(session_index: &str) -> String {
    let xml = logout_request(session_index, SystemTime::now());
    format!("logoutRequest={}", url::form_urlencoded::byte_serialize(xml.as_bytes()).collect::<String>())
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
