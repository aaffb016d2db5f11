//! Trust for upstreams and token endpoints: the system roots plus `[tls] ca_file`.
//!
//! System roots come from `rustls-native-certs`, which honours `SSL_CERT_FILE` and
//! `SSL_CERT_DIR`, as corporate networks with their own CA need. One rustls client
//! configuration serves both the proxy's upstream client and the token client.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls.ca_file {path}: {detail}")]
    CaFile { path: PathBuf, detail: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

pub fn client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
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
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
