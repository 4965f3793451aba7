//! TLS termination with rustls: the certificate chain and key come from PEM files named in the config, and are
//! read again on SIGHUP (`NodeHandle::reload_tls`), so a renewed certificate is picked up without a restart. A
//! reload that fails keeps the certificate in use and says why.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

/// A client that has not finished its handshake by then is dropped, so slow clients cannot hold connections.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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

    fn acceptor(&self) -> Option<TlsAcceptor> {
        self.current.read().ok().map(|c| TlsAcceptor::from(c.clone()))
    }
}

/// Serves `router` over TLS until `stopped`. Each connection does its handshake in its own task.
pub async fn serve(listener: TcpListener, router: Router, tls: Arc<TlsReloader>, mut stopped: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = async { let _ = stopped.wait_for(|s| *s).await; } => return,
        };
        let Ok((stream, addr)) = accepted else { continue };
        let Some(acceptor) = tls.acceptor() else { continue };
        let app = router.clone().layer(axum::Extension(ConnectInfo::<SocketAddr>(addr)));
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(client = %addr, error = %e, "tls handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let service = TowerToHyperService::new(app);
            if let Err(e) = Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await {
                tracing::debug!(client = %addr, error = %e, "connection ended with an error");
            }
        });
    }
}
