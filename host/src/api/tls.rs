//! TLS for the API (rustls, TLS 1.3 and 1.2, the ring provider): in-transit encryption
//! without a proxy. A certificate chain and its private key come from PEM files; a file
//! that is missing, unreadable or not what it claims is a clear error at start-up,
//! naming the file, never a server that silently falls back to plain HTTP.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum_server::tls_rustls::RustlsConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::{ApiState, router};

/// How long open connections get to finish when the server stops.
const GRACE: Duration = Duration::from_secs(10);

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file holds no PEM certificate, or cannot be read.
    #[error("TLS certificate {path}: {reason}")]
    Certificate {
        /// The file given.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The key file holds no PEM private key, or cannot be read.
    #[error("TLS private key {path}: {reason}")]
    Key {
        /// The file given.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the pair (e.g. the key does not match the certificate).
    #[error("TLS certificate and key do not make a server configuration: {0}")]
    Config(String),
}

/// A server's TLS identity, ready to serve with.
#[derive(Clone)]
pub struct Tls(RustlsConfig);

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls(..)")
    }
}

impl Tls {
    /// The chain in `cert` (PEM, leaf first) and the private key in `key` (PEM: PKCS#8,
    /// PKCS#1 or SEC1).
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let cert_error = |reason: String| TlsError::Certificate {
            path: cert.display().to_string(),
            reason,
        };
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .map_err(|e| cert_error(e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| cert_error(e.to_string()))?;
        if chain.is_empty() {
            return Err(cert_error("no PEM certificate in the file".into()));
        }
        let private = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
            path: key.display().to_string(),
            // The key's bytes are never part of the message, only what kind of failure.
            reason: e.to_string(),
        })?;
        Self::from_parts(chain, private)
    }

    fn from_parts(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self(RustlsConfig::from_config(Arc::new(config))))
    }
}

/// Serve `router(state)` over TLS on `listener` until `shutdown` resolves, then give open
/// connections [`GRACE`] to finish.
pub async fn serve_tls(
    listener: std::net::TcpListener,
    state: ApiState,
    tls: Tls,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let (state, shutdown) = super::releasing_waits(state, shutdown);
    let handle = axum_server::Handle::new();
    let stopper = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        stopper.graceful_shutdown(Some(GRACE));
    });
    axum_server::from_tcp_rustls(listener, tls.0)?
        .handle(handle)
        .serve(router(state).into_make_service_with_connect_info::<SocketAddr>())
        .await
}
