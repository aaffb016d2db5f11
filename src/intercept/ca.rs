//! The interception CA: made by `tokenproxy ca init` (or at the first start with
//! `ca = "auto"`), loaded at start, and signing one short-lived leaf per host.
//!
//! A CA created here carries X.509 name constraints that permit only the hosts
//! the configuration routes (each with its subdomains) and exclude every IP
//! address, and a path length of 0: a leaked key cannot mint a certificate any
//! client accepts for another site, nor a CA under it. A CA brought from elsewhere
//! is used as it is; hosts outside its constraints are not intercepted.

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    NameConstraints, PublicKeyData, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::secret::Secret;

/// How long a CA made here is valid: clients trust it once, for years.
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long a leaf is valid. It lives only in memory and is renewed at half-life.
pub const LEAF_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Validity starts this far back, for clients whose clock is behind.
const BACKDATE: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("the CA certificate is not PEM (-----BEGIN CERTIFICATE-----): {0}")]
    CertPem(String),
    #[error("the CA certificate cannot be read: {0}")]
    Cert(String),
    #[error("the certificate is not a CA (its basic constraints do not say CA:TRUE)")]
    NotCa,
    #[error(
        "the CA key cannot be read ({0}); it must be a PKCS#8 PEM key (-----BEGIN PRIVATE KEY-----), ECDSA P-256/P-384 or Ed25519"
    )]
    Key(String),
    #[error("the CA key does not belong to the CA certificate")]
    KeyMismatch,
    #[error("the CA certificate expired at {0}")]
    Expired(String),
    #[error(
        "no route names a host to intercept; add host = \"api.example.com\" to the routes whose https URLs tools use"
    )]
    NoHosts,
    #[error("cannot sign: {0}")]
    Sign(String),
}

/// A loaded CA, ready to sign leaves.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
    info: CaInfo,
}

/// A leaf certificate with its chain (leaf, CA) and key.
pub struct Leaf {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub not_after: SystemTime,
}

/// A new CA for `hosts` (route hosts without ports): PEM certificate and key.
pub fn create(hosts: &[String]) -> Result<(String, Secret), CaError> {
    if hosts.is_empty() {
        return Err(CaError::NoHosts);
    }
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| CaError::Sign(e.to_string()))?;
    let now = SystemTime::now();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "tokenproxy");
    params.distinguished_name.push(
        DnType::CommonName,
        format!("tokenproxy interception CA {}", crate::clock::rfc3339(now)),
    );
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.name_constraints = Some(NameConstraints {
        permitted_subtrees: hosts
            .iter()
            .map(|h| GeneralSubtree::DnsName(h.clone()))
            .collect(),
        excluded_subtrees: vec![
            GeneralSubtree::IpAddress(CidrSubnet::V4([0; 4], [0; 4])),
            GeneralSubtree::IpAddress(CidrSubnet::V6([0; 16], [0; 16])),
        ],
    });
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + CA_LIFETIME).into();
    params.serial_number = Some(serial()?);
    let cert = params
        .self_signed(&key)
        .map_err(|e| CaError::Sign(e.to_string()))?;
    Ok((cert.pem(), Secret::new(key.serialize_pem())))
}

/// A positive 128-bit serial number from the system's CSPRNG (CA/B Forum: serials
/// unpredictable to whoever asks for a certificate).
fn serial() -> Result<SerialNumber, CaError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| CaError::Sign("the system's random number generator failed".into()))?;
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

/// What a CA certificate says, read without its key (`ca show`, `check`).
pub struct CaInfo {
    pub der: Vec<u8>,
    /// The DNS names it may sign for; `None` when it has no DNS constraint.
    pub permitted: Option<Vec<String>>,
    pub excluded: Vec<String>,
    pub not_after: SystemTime,
    pub subject: String,
    spki: Vec<u8>,
}

impl CaInfo {
    /// Reads a PEM CA certificate: it must be a CA and still valid.
    pub fn parse(cert_pem: &str) -> Result<CaInfo, CaError> {
        let der = pem_cert(cert_pem)?;
        let (_, x509) =
            x509_parser::parse_x509_certificate(&der).map_err(|e| CaError::Cert(e.to_string()))?;
        if !x509.is_ca() {
            return Err(CaError::NotCa);
        }
        let not_after = SystemTime::UNIX_EPOCH
            + Duration::from_secs(x509.validity().not_after.timestamp().max(0) as u64);
        if not_after <= SystemTime::now() {
            return Err(CaError::Expired(crate::clock::rfc3339(not_after)));
        }
        let (permitted, excluded) = constraints(&x509)?;
        Ok(CaInfo {
            permitted,
            excluded,
            not_after,
            subject: x509.subject().to_string(),
            spki: x509.public_key().raw.to_vec(),
            der,
        })
    }

    /// Whether the name constraints let the CA sign for `host` (a DNS name).
    pub fn permits(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        !self.excluded.iter().any(|c| within(&host, c))
            && self
                .permitted
                .as_ref()
                .is_none_or(|p| p.iter().any(|c| within(&host, c)))
    }

    /// SHA-256 of the certificate, as `AB:CD:...` (what `openssl x509 -fingerprint
    /// -sha256` and browsers show).
    pub fn fingerprint(&self) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, &self.der);
        digest
            .as_ref()
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":")
    }
}

impl Ca {
    /// Reads a CA from its PEM certificate and PKCS#8 PEM key, checking that the
    /// certificate is a CA, still valid, and the key's.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Ca, CaError> {
        let info = CaInfo::parse(cert_pem)?;
        let key = KeyPair::from_pem(key_pem).map_err(|e| CaError::Key(e.to_string()))?;
        if key.subject_public_key_info() != info.spki {
            return Err(CaError::KeyMismatch);
        }
        let cert = CertificateDer::from(info.der.clone());
        let issuer =
            Issuer::from_ca_cert_der(&cert, key).map_err(|e| CaError::Cert(e.to_string()))?;
        Ok(Ca { issuer, cert, info })
    }

    /// Whether the CA's name constraints let it sign for `host` (a DNS name).
    pub fn permits(&self, host: &str) -> bool {
        self.info.permits(host)
    }

    /// A new leaf for `host`: an ECDSA P-256 key of its own, valid for
    /// [`LEAF_LIFETIME`] (never past the CA), for TLS servers only.
    pub fn leaf(&self, host: &str) -> Result<Leaf, CaError> {
        let sign = |e: rcgen::Error| CaError::Sign(e.to_string());
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(sign)?;
        let mut params = CertificateParams::new(vec![host.to_owned()]).map_err(sign)?;
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, host);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = SystemTime::now();
        let not_after = (now + LEAF_LIFETIME).min(self.info.not_after);
        params.not_before = (now - BACKDATE).into();
        params.not_after = not_after.into();
        params.serial_number = Some(serial()?);
        let cert = params.signed_by(&key, &self.issuer).map_err(sign)?;
        Ok(Leaf {
            chain: vec![cert.der().clone(), self.cert.clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            not_after,
        })
    }
}

fn pem_cert(pem: &str) -> Result<Vec<u8>, CaError> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .ok_or_else(|| CaError::CertPem("no certificate found".into()))?
        .map(|c| c.to_vec())
        .map_err(|e| CaError::CertPem(e.to_string()))
}

/// The permitted and excluded DNS subtrees. An excluded IP range is what a CA
/// made here carries; other kinds of names do not matter for server leaves.
type Subtrees = (Option<Vec<String>>, Vec<String>);

fn constraints(x509: &x509_parser::certificate::X509Certificate<'_>) -> Result<Subtrees, CaError> {
    use x509_parser::extensions::{GeneralName, GeneralSubtree};
    let dns = |trees: &Option<Vec<GeneralSubtree<'_>>>| -> Option<Vec<String>> {
        let names: Vec<String> = trees
            .iter()
            .flatten()
            .filter_map(|t| match t.base {
                GeneralName::DNSName(n) => Some(n.trim_end_matches('.').to_ascii_lowercase()),
                _ => None,
            })
            .collect();
        (!names.is_empty()).then_some(names)
    };
    let Some(ext) = x509
        .name_constraints()
        .map_err(|e| CaError::Cert(e.to_string()))?
    else {
        return Ok((None, Vec::new()));
    };
    Ok((
        dns(&ext.value.permitted_subtrees),
        dns(&ext.value.excluded_subtrees).unwrap_or_default(),
    ))
}

/// RFC 5280 §4.2.1.10: `example.com` covers itself and every subdomain;
/// `.example.com` covers subdomains only.
fn within(host: &str, constraint: &str) -> bool {
    if constraint.is_empty() {
        return true;
    }
    if let Some(suffix) = constraint.strip_prefix('.') {
        return host.len() > suffix.len() + 1 && host.ends_with(constraint);
    }
    host == constraint
        || host
            .strip_suffix(constraint)
            .is_some_and(|rest| rest.ends_with('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_ca_permits_its_hosts_and_their_subdomains_only() {
        let (cert, key) = create(&["api.hubapi.com".into(), "example.org".into()]).unwrap();
        let ca = Ca::load(&cert, key.expose()).unwrap();
        assert!(ca.permits("api.hubapi.com"));
        assert!(ca.permits("API.HubApi.com."));
        assert!(ca.permits("eu1.api.hubapi.com"));
        assert!(ca.permits("example.org"));
        assert!(!ca.permits("hubapi.com"));
        assert!(!ca.permits("evilapi.hubapi.com.attacker.net"));
        assert!(!ca.permits("xapi.hubapi.com"));
        assert!(!ca.permits("google.com"));
        assert_eq!(
            ca.info.permitted.as_deref().unwrap(),
            ["api.hubapi.com".to_owned(), "example.org".to_owned()]
        );
        assert_eq!(ca.info.fingerprint().len(), 32 * 3 - 1);
    }

    #[test]
    fn leading_dot_constraints_cover_subdomains_only() {
        assert!(within("a.example.com", ".example.com"));
        assert!(!within("example.com", ".example.com"));
        assert!(within("example.com", ""));
    }

    #[test]
    fn a_leaf_chains_to_the_ca() {
        let (cert, key) = create(&["api.hubapi.com".into()]).unwrap();
        let ca = Ca::load(&cert, key.expose()).unwrap();
        let leaf = ca.leaf("api.hubapi.com").unwrap();
        assert_eq!(leaf.chain.len(), 2);
        let (_, x509) = x509_parser::parse_x509_certificate(&leaf.chain[0]).unwrap();
        assert!(!x509.is_ca());
        let left = leaf.not_after.duration_since(SystemTime::now()).unwrap();
        assert!(left <= LEAF_LIFETIME && left > LEAF_LIFETIME - Duration::from_secs(60));
    }

    #[test]
    fn a_key_of_another_ca_is_refused() {
        let (cert, _) = create(&["a.example".into()]).unwrap();
        let (_, other) = create(&["a.example".into()]).unwrap();
        assert!(matches!(
            Ca::load(&cert, other.expose()),
            Err(CaError::KeyMismatch)
        ));
    }

    #[test]
    fn a_leaf_is_not_a_ca() {
        let (cert, key) = create(&["a.example".into()]).unwrap();
        let ca = Ca::load(&cert, key.expose()).unwrap();
        let leaf = ca.leaf("a.example").unwrap();
        let text = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &leaf.chain[0])
        );
        assert!(matches!(Ca::load(&text, key.expose()), Err(CaError::NotCa)));
    }

    #[test]
    fn unreadable_files_are_named_errors() {
        let (cert, key) = create(&["a.example".into()]).unwrap();
        assert!(matches!(
            Ca::load("not a certificate", key.expose()),
            Err(CaError::CertPem(_))
        ));
        assert!(matches!(
            Ca::load(
                &cert,
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
            ),
            Err(CaError::Key(_))
        ));
    }

    #[test]
    fn no_hosts_no_ca() {
        assert!(matches!(create(&[]), Err(CaError::NoHosts)));
    }
}
