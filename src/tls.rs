//! Trust for upstreams and token endpoints: the system roots plus `[tls] ca_file`,
//! and client certificates for mutual TLS to a token endpoint.
//!
//! System roots come from `rustls-native-certs`, which honours `SSL_CERT_FILE` and
//! `SSL_CERT_DIR`, as corporate networks with their own CA need. One set of roots
//! serves both the proxy's upstream client and the token clients.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls.ca_file {path}: {detail}")]
    CaFile { path: PathBuf, detail: String },
    #[error("client certificate: {0}")]
    ClientCert(String),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The system roots and `ca_file`.
pub fn roots(ca_file: Option<&Path>) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        // A malformed system certificate is skipped, as every TLS client does.
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_file {
        let err = |detail: String| TlsError::CaFile {
            path: path.into(),
            detail,
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| err(e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| err(e.to_string()))?;
        if certs.is_empty() {
            return Err(err("holds no PEM certificate".into()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| err(e.to_string()))?;
        }
    }
    if roots.is_empty() {
        // Loopback http:// endpoints still work; every https:// one will fail its
        // handshake, so say why now.
        tracing::warn!(
            "no trusted CA certificates: the system has none and [tls] ca_file is not set; install ca-certificates or set ca_file"
        );
    }
    Ok(Arc::new(roots))
}

/// A client configuration trusting `roots`, presenting `client` (PEM certificate
/// chain and PEM key) when given.
pub fn client_config(
    roots: Arc<RootCertStore>,
    client: Option<(&str, &str)>,
) -> Result<rustls::ClientConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let Some((cert_pem, key_pem)) = client else {
        return Ok(builder.with_no_client_auth());
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::ClientCert(format!("client_cert is not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::ClientCert(
            "client_cert holds no certificate".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| {
        TlsError::ClientCert(format!("client_cert_key is not a PEM private key: {e}"))
    })?;
    Ok(builder.with_client_auth_cert(certs, key)?)
}
