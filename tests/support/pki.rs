//! A throwaway CA for the TLS tests: server certificates for any name, client
//! certificates, and rustls server configurations.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

pub struct Pki {
    /// The CA certificate, PEM, for `[tls] ca_file`.
    pub ca_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    pub fn new() -> Pki {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_pem = params.self_signed(&key).unwrap().pem();
        Pki {
            ca_pem,
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A server configuration for `name`, offering `alpn`; with `client_auth`, it
    /// requires client certificates from this CA.
    pub fn server(
        &self,
        name: &str,
        alpn: &[&[u8]],
        client_auth: bool,
    ) -> Arc<rustls::ServerConfig> {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if client_auth {
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(CertificateDer::from_pem_slice(self.ca_pem.as_bytes()).unwrap())
                .unwrap();
            builder.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .unwrap(),
            )
        } else {
            builder.with_no_client_auth()
        };
        let mut config = builder
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    /// A server certificate for `name` and its key, PEM, for servers that read
    /// files (Redis, PostgreSQL).
    pub fn server_pem(&self, name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
        // A subject of its own: OpenSSL takes a leaf whose subject is its issuer's
        // (rcgen's default for both) for a self-signed certificate.
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A client certificate and its key, PEM.
    pub fn client(&self, common_name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// An HTTPS client that trusts `ca_pem` only and offers `alpn` (`b"h2"`: HTTP/2
/// only, with prior knowledge; else HTTP/1.1 only).
pub fn https_client(ca_pem: &str, alpn: &[u8]) -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let builder = reqwest::Client::builder()
        .no_proxy()
        .tls_backend_preconfigured(config);
    if alpn == b"h2" {
        builder.http2_prior_knowledge()
    } else {
        builder.http1_only()
    }
}

/// Writes a certificate for `localhost` and its key as `tls.crt` and `tls.key` in
/// `dir`, and returns the `[listen]` lines that serve them.
pub fn listen_tls(pki: &Pki, dir: &std::path::Path) -> String {
    let (cert, key) = pki.server_pem("localhost");
    std::fs::write(dir.join("tls.crt"), cert).unwrap();
    std::fs::write(dir.join("tls.key"), key).unwrap();
    format!(
        "tls_cert = {{ file = {:?} }}\ntls_key = {{ file = {:?} }}\ntls_check = \"1s\"",
        dir.join("tls.crt"),
        dir.join("tls.key")
    )
}
