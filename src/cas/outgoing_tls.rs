//! Trust for everything casd calls over HTTPS (pgtUrl callbacks and back-channel single logout): the built-in web
//! roots plus the PEM bundle named by `tls.client.extra_ca_file`, read once at start and given to every outgoing
//! client, so that a service behind a private CA works for proxying and single logout alike.

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("{file}: cannot read: {source}")]
    Read { file: String, source: std::io::Error },
    #[error("{file}: not a PEM certificate bundle: {detail}")]
    Pem { file: String, detail: String },
}

/// The extra trusted CA certificates (none when no file is configured).
#[derive(Clone, Default)]
pub struct ExtraRoots(Vec<reqwest::Certificate>);

impl ExtraRoots {
    pub fn load(path: Option<&Path>) -> Result<Self, TrustError> {
        let Some(path) = path else { return Ok(Self::default()) };
        let file = path.display().to_string();
        let pem = std::fs::read(path).map_err(|source| TrustError::Read { file: file.clone(), source })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| TrustError::Pem { file: file.clone(), detail: e.to_string() })?;
        if certs.is_empty() {
            return Err(TrustError::Pem { file, detail: "no certificate found".into() });
        }
        Ok(Self(certs))
    }

    /// `builder` trusting these CAs besides the built-in roots.
    pub fn apply(&self, builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
        self.0.iter().cloned().fold(builder, |b, cert| b.add_root_certificate(cert))
    }
}
