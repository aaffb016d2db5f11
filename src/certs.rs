//! The proxy listener's own certificate (`listen.tls_cert`, `listen.tls_key`):
//! read from PEM, checked (the key is the certificate's, the certificate is in
//! its validity period) and made into the TLS configuration the listener serves
//! (HTTP/2 and HTTP/1.1 by ALPN). Read by `check`, at start, at each reload, and
//! every minute while running (a renewed pair is served from then on).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::secret::SecretRef;

/// A TLS configuration for the proxy listener, with when its certificate expires.
#[derive(Clone)]
pub struct Served {
    pub config: Arc<ServerConfig>,
    pub not_after: SystemTime,
    /// SHA-256 of the certificate and key as read: tells a renewed pair.
    pub digest: Vec<u8>,
}

/// What is wrong with the listener's certificate or key; names the key, never a
/// value.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot read: {0}")]
    Unreadable(&'static str, String),
    #[error("holds no PEM certificate (-----BEGIN CERTIFICATE-----)")]
    NoCertificate,
    #[error("is not an X.509 certificate: {0}")]
    BadCertificate(String),
    #[error("expired at {0}")]
    Expired(String),
    #[error("holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey,
    #[error("does not go with the certificate, or is of a kind TLS cannot use: {0}")]
    Mismatch(String),
}

impl CertError {
    /// The configuration key the problem is in.
    pub fn key(&self) -> &'static str {
        match self {
            CertError::Unreadable(key, _) => key,
            CertError::NoCertificate | CertError::BadCertificate(_) | CertError::Expired(_) => {
                "listen.tls_cert"
            }
            CertError::NoKey | CertError::Mismatch(_) => "listen.tls_key",
        }
    }
}

impl Served {
    /// Reads both (`listen.tls_cert`, `listen.tls_key`) now.
    pub fn load(cert: &SecretRef, key: &SecretRef) -> Result<Served, CertError> {
        let read = |key: &'static str, secret: &SecretRef| {
            secret
                .resolve()
                .map_err(|e| CertError::Unreadable(key, e.to_string()))
        };
        let cert = read("listen.tls_cert", cert)?;
        let key = read("listen.tls_key", key)?;
        Served::from_pem(
            cert.expose().as_bytes(),
            key.expose().as_bytes(),
            SystemTime::now(),
        )
    }

    pub fn from_pem(cert: &[u8], key: &[u8], now: SystemTime) -> Result<Served, CertError> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
            .filter_map(Result::ok)
            .collect();
        let leaf = chain.first().ok_or(CertError::NoCertificate)?;
        let (_, x509) = x509_parser::parse_x509_certificate(leaf)
            .map_err(|e| CertError::BadCertificate(e.to_string()))?;
        let not_after = SystemTime::UNIX_EPOCH
            + Duration::from_secs(x509.validity().not_after.timestamp().max(0) as u64);
        if not_after <= now {
            return Err(CertError::Expired(crate::clock::rfc3339(not_after)));
        }
        let key_der = PrivateKeyDer::from_pem_slice(key).map_err(|_| CertError::NoKey)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key_der))
            .map_err(|e| CertError::Mismatch(e.to_string()))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        digest.update(cert);
        digest.update(key);
        Ok(Served {
            config: Arc::new(config),
            not_after,
            digest: digest.finish().as_ref().to_vec(),
        })
    }
}

/// What `/status` says of the proxy listener's certificate: when the one served
/// expires and, while the files on disk do not load (a renewal gone wrong), why
/// and since when. The one in force keeps serving meanwhile; the log says so once.
#[derive(Default)]
pub struct CertificateStatus(std::sync::Mutex<Shown>);

#[derive(Default)]
struct Shown {
    expires_at: Option<SystemTime>,
    disk_error: Option<(SystemTime, String)>,
}

impl CertificateStatus {
    /// A pair was put in force (`None`: the listener serves plain HTTP).
    pub fn served(&self, expires_at: Option<SystemTime>) {
        *self.lock() = Shown {
            expires_at,
            disk_error: None,
        };
    }

    /// The files on disk load again (`None`) or do not: `error` names the key.
    /// Whether that error is new (to be logged once).
    pub fn on_disk(&self, error: Option<String>) -> bool {
        let mut shown = self.lock();
        match error {
            None => {
                shown.disk_error = None;
                false
            }
            Some(e) if shown.disk_error.as_ref().is_some_and(|(_, was)| *was == e) => false,
            Some(e) => {
                shown.disk_error = Some((SystemTime::now(), e));
                true
            }
        }
    }

    /// `/status`'s `listener_certificate`: `null` for a plain-HTTP listener.
    pub fn json(&self) -> serde_json::Value {
        let shown = self.lock();
        let Some(expires_at) = shown.expires_at else {
            return serde_json::Value::Null;
        };
        let rfc3339 = crate::clock::rfc3339;
        serde_json::json!({
            "expires_at": rfc3339(expires_at),
            "on_disk_error": shown.disk_error.as_ref().map(|(_, e)| e),
            "on_disk_error_since": shown.disk_error.as_ref().map(|(at, _)| rfc3339(*at)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shown> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![name.into()]).unwrap();
        params.not_after = (SystemTime::now() + Duration::from_secs(86400)).into();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// An error on disk is new once (logged once), shown until the pair loads or
    /// another is put in force; a plain listener shows nothing.
    #[test]
    fn the_status_shows_a_broken_pair_on_disk_once() {
        let status = CertificateStatus::default();
        assert!(status.json().is_null());
        status.served(Some(SystemTime::now() + Duration::from_secs(86400)));
        assert!(status.json()["on_disk_error"].is_null());
        assert!(status.on_disk(Some("listen.tls_key: no key".into())));
        assert!(!status.on_disk(Some("listen.tls_key: no key".into())));
        assert_eq!(status.json()["on_disk_error"], "listen.tls_key: no key");
        assert!(status.on_disk(Some("listen.tls_cert: expired".into())));
        assert!(!status.on_disk(None));
        assert!(status.json()["on_disk_error"].is_null());
        assert!(status.on_disk(Some("listen.tls_key: no key".into())));
        status.served(Some(SystemTime::now() + Duration::from_secs(86400)));
        assert!(status.json()["on_disk_error"].is_null());
        status.served(None);
        assert!(status.json().is_null());
    }

    #[test]
    fn a_certificate_and_its_key_serve_h2_and_http1() {
        let (cert, key) = pair("proxy.internal");
        let served = Served::from_pem(cert.as_bytes(), key.as_bytes(), SystemTime::now()).unwrap();
        assert_eq!(
            served.config.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        assert!(served.not_after > SystemTime::now());
    }

    #[test]
    fn a_wrong_key_an_expired_certificate_and_no_pem_are_named() {
        let (cert, _) = pair("a.internal");
        let (_, other_key) = pair("b.internal");
        let now = SystemTime::now();
        let e = Served::from_pem(cert.as_bytes(), other_key.as_bytes(), now)
            .err()
            .unwrap();
        assert_eq!(e.key(), "listen.tls_key", "{e}");
        let e = Served::from_pem(b"not pem", other_key.as_bytes(), now)
            .err()
            .unwrap();
        assert!(matches!(e, CertError::NoCertificate), "{e}");
        let (cert, key) = pair("c.internal");
        let e = Served::from_pem(cert.as_bytes(), b"nothing", now)
            .err()
            .unwrap();
        assert!(matches!(e, CertError::NoKey), "{e}");
        let later = now + Duration::from_secs(2 * 86400);
        let e = Served::from_pem(cert.as_bytes(), key.as_bytes(), later)
            .err()
            .unwrap();
        assert!(matches!(e, CertError::Expired(_)), "{e}");
        // The key's text is never part of a message.
        let e = Served::from_pem(cert.as_bytes(), other_key.as_bytes(), now)
            .err()
            .unwrap();
        assert!(!e.to_string().contains("PRIVATE KEY"), "{e}");
    }
}
