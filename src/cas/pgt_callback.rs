//! The proxy callback client (CAS 3.0 §2.5.4): a GET to `pgtUrl?pgtIou=...&pgtId=...` over HTTPS with certificate
//! verification. Only HTTP 200 counts as delivered; redirects are not followed.

use std::time::Duration;

use super::outgoing_tls::ExtraRoots;

#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    #[error("pgtUrl is not an https URL")]
    NotHttps,
    #[error("callback answered HTTP {0}, not 200")]
    Status(u16),
    #[error("callback could not be reached: {0}")]
    Transport(String),
}

#[derive(Debug, thiserror::Error)]
#[error("cannot build the HTTPS client for proxy callbacks: {0}")]
pub struct CallbackSetupError(String);

pub struct PgtCallback {
    client: reqwest::Client,
}

impl PgtCallback {
    /// `roots` adds CAs to the built-in ones, for services behind a private CA.
    pub fn new(timeout: Duration, roots: &ExtraRoots) -> Result<Self, CallbackSetupError> {
        let builder =
            reqwest::Client::builder().timeout(timeout).https_only(true).redirect(reqwest::redirect::Policy::none());
        let client = roots.apply(builder).build().map_err(|e| CallbackSetupError(e.to_string()))?;
        Ok(Self { client })
    }

    pub async fn deliver(&self, pgt_url: &str, iou: &impl ToString, pgt: &impl ToString) -> Result<(), CallbackError> {
        let mut url = url::Url::parse(pgt_url).map_err(|_| CallbackError::NotHttps)?;
        if url.scheme() != "https" {
            return Err(CallbackError::NotHttps);
        }
        url.query_pairs_mut().append_pair("pgtIou", &iou.to_string()).append_pair("pgtId", &pgt.to_string());
        let response = self.client.get(url).send().await.map_err(|e| {
            // The URL carries the PGT: keep it out of the message, which reaches logs and the client.
            CallbackError::Transport(error_chain(&e.without_url()))
        })?;
        match response.status().as_u16() {
            200 => Ok(()),
            other => Err(CallbackError::Status(other)),
        }
    }
}

/// reqwest's top-level error says little ("error sending request"); the cause (e.g. an unknown issuer) is below it.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
