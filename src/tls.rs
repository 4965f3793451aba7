//! TLS termination with rustls: the certificate chain and key come from PEM files named in the config, and are
//! read again on SIGHUP (`NodeHandle::reload_tls`), so a renewed certificate is picked up without a restart. A
//! reload that fails keeps the certificate in use and says why.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{file}: no PEM certificate could be read: {detail}")]
    Certificates { file: String, detail: String },
    #[error("{file}: no PEM private key could be read: {detail}")]
    Key { file: String, detail: String },
    #[error("{cert} and {key} do not make a usable TLS configuration: {detail}")]
    Config { cert: String, key: String, detail: String },
}

/// The TLS configuration in use, replaceable while the server runs.
pub struct TlsReloader {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: RwLock<Arc<ServerConfig>>,
}

fn load(cert_file: &Path, key_file: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let (cert, key) = (cert_file.display().to_string(), key_file.display().to_string());
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| TlsError::Certificates { file: cert.clone(), detail: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::Certificates { file: cert, detail: "the file holds no certificate".into() });
    }
    let private_key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| TlsError::Key { file: key.clone(), detail: e.to_string() })?;
    let mut config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, private_key)
        .map_err(|e| TlsError::Config { cert, key, detail: e.to_string() })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

impl TlsReloader {
    pub fn new(cert_file: &Path, key_file: &Path) -> Result<Self, TlsError> {
        let current = RwLock::new(load(cert_file, key_file)?);
        Ok(Self { cert_file: cert_file.to_owned(), key_file: key_file.to_owned(), current })
    }

    /// Reads the files again; on failure the previous certificate stays in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = load(&self.cert_file, &self.key_file)?;
        if let Ok(mut current) = self.current.write() {
            *current = fresh;
        }
        tracing::info!(cert = %self.cert_file.display(), "tls certificate reloaded");
        Ok(())
    }

    pub(crate) fn acceptor(&self) -> Option<TlsAcceptor> {
        self.current.read().ok().map(|c| TlsAcceptor::from(c.clone()))
    }
}
