//! Signed JWT assertions (RFC 7523): for the `jwt_bearer` grant (Google service
//! accounts, Salesforce's JWT flow) and `private_key_jwt` client authentication.
//!
//! Signing uses `ring`, which rustls already brings, with RS256 for RSA keys and
//! ES256/ES384 for EC keys. Keys are PEM (PKCS#8, or PKCS#1 for RSA), or a Google
//! service account file that carries the key, its id and the client email. A new
//! assertion, with a fresh `jti`, is made for every token request.

use std::time::{Duration, SystemTime};

use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, RsaKeyPair};
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use serde_json::json;

use crate::config::{Assertion, SigningKey};
use crate::secret::{Secret, SecretError};

#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("cannot read the signing key: {0}")]
    Secret(#[from] SecretError),
    #[error("the signing key is not usable: {0}")]
    Key(String),
    #[error("the service account key file is not usable: {0}")]
    ServiceAccount(String),
}

enum KeyPair {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair, &'static str),
}

/// A loaded key with what its source says about the identity.
pub struct Signer {
    key: KeyPair,
    key_id: Option<String>,
    /// From a service account file: the client email, the assertion's issuer.
    issuer: Option<String>,
}

impl Signer {
    pub fn load(source: &SigningKey) -> Result<Signer, JwtError> {
        match source {
            SigningKey::Pem { key, key_id } => Ok(Signer {
                key: parse_pem(key.resolve()?.expose())?,
                key_id: key_id.clone(),
                issuer: None,
            }),
            SigningKey::ServiceAccount(file) => {
                let text = file.resolve()?;
                let v: serde_json::Value = serde_json::from_str(text.expose())
                    .map_err(|_| JwtError::ServiceAccount("not JSON".into()))?;
                let field = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
                let pem = field("private_key")
                    .ok_or_else(|| JwtError::ServiceAccount("no private_key".into()))?;
                Ok(Signer {
                    key: parse_pem(&pem)?,
                    key_id: field("private_key_id"),
                    issuer: Some(
                        field("client_email")
                            .ok_or_else(|| JwtError::ServiceAccount("no client_email".into()))?,
                    ),
                })
            }
        }
    }

    /// Signs an assertion. `client_id` is the default issuer (and, for client
    /// authentication, the subject); `token_url` the default audience.
    pub fn assertion(
        &self,
        spec: &Assertion,
        client_id: Option<&str>,
        token_url: &str,
        scope: Option<&str>,
        for_client_auth: bool,
    ) -> Result<Secret, JwtError> {
        let iss = spec
            .issuer
            .as_deref()
            .or(self.issuer.as_deref())
            .or(client_id)
            .ok_or_else(|| JwtError::Key("no issuer: set jwt_issuer or client_id".into()))?;
        // RFC 7523 §3: for client authentication, sub is the client id.
        let sub = spec.subject.as_deref().or(for_client_auth.then_some(iss));
        let aud = spec.audience.as_deref().unwrap_or(token_url);
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs();
        // A few seconds back, for clocks a little ahead of the provider's.
        let iat = now.saturating_sub(5);
        let mut claims = json!({
            "iss": iss,
            "aud": aud,
            "iat": iat,
            "exp": iat + spec.lifetime.as_secs(),
            "jti": format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)),
        });
        if let Some(sub) = sub {
            claims["sub"] = sub.into();
        }
        if let Some(scope) = scope.filter(|_| spec.scope_in_assertion) {
            claims["scope"] = scope.into();
        }
        let alg = match &self.key {
            KeyPair::Rsa(_) => "RS256",
            KeyPair::Ec(_, alg) => alg,
        };
        let mut header = json!({"alg": alg, "typ": "JWT"});
        if let Some(kid) = &self.key_id {
            header["kid"] = kid.as_str().into();
        }
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let signing_input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let rng = SystemRandom::new();
        let sig = match &self.key {
            KeyPair::Rsa(k) => {
                let mut sig = vec![0; k.public().modulus_len()];
                k.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &rng,
                    signing_input.as_bytes(),
                    &mut sig,
                )
                .map_err(|_| JwtError::Key("RSA signing failed".into()))?;
                sig
            }
            KeyPair::Ec(k, _) => k
                .sign(&rng, signing_input.as_bytes())
                .map_err(|_| JwtError::Key("ECDSA signing failed".into()))?
                .as_ref()
                .to_vec(),
        };
        Ok(Secret::new(format!("{signing_input}.{}", b64(&sig))))
    }
}

fn parse_pem(pem: &str) -> Result<KeyPair, JwtError> {
    let key = PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|_| JwtError::Key("not a PEM private key".into()))?;
    let rng = SystemRandom::new();
    match &key {
        PrivateKeyDer::Pkcs1(k) => RsaKeyPair::from_der(k.secret_pkcs1_der())
            .map(KeyPair::Rsa)
            .map_err(|e| JwtError::Key(format!("RSA key: {e}"))),
        PrivateKeyDer::Pkcs8(k) => {
            let der = k.secret_pkcs8_der();
            if let Ok(rsa) = RsaKeyPair::from_pkcs8(der) {
                return Ok(KeyPair::Rsa(rsa));
            }
            if let Ok(ec) =
                EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
            {
                return Ok(KeyPair::Ec(ec, "ES256"));
            }
            EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P384_SHA384_FIXED_SIGNING, der, &rng)
                .map(|ec| KeyPair::Ec(ec, "ES384"))
                .map_err(|_| {
                    JwtError::Key("a PKCS#8 key that is neither RSA nor EC P-256/P-384".into())
                })
        }
        _ => Err(JwtError::Key(
            "an EC key in SEC1 form; convert it with `openssl pkcs8 -topk8 -nocrypt`".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::SecretRef;

    fn spec(key: &str, scope_in_assertion: bool) -> Assertion {
        Assertion {
            key: SigningKey::Pem {
                key: SecretRef::Literal(Secret::new(key)),
                key_id: Some("k1".into()),
            },
            issuer: None,
            subject: None,
            audience: None,
            lifetime: Duration::from_secs(300),
            scope_in_assertion,
        }
    }

    fn decode(part: &str) -> serde_json::Value {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn ec_assertion_verifies_with_the_public_key() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let s = spec(&key.serialize_pem(), true);
        let signer = Signer::load(&s.key).unwrap();
        let jwt = signer
            .assertion(
                &s,
                Some("client-1"),
                "https://id.example.com/token",
                Some("read"),
                true,
            )
            .unwrap();
        let parts: Vec<&str> = jwt.expose().split('.').collect();
        let (header, claims) = (decode(parts[0]), decode(parts[1]));
        assert_eq!(
            (header["alg"].as_str(), header["kid"].as_str()),
            (Some("ES256"), Some("k1"))
        );
        assert_eq!(claims["iss"], "client-1");
        assert_eq!(claims["sub"], "client-1");
        assert_eq!(claims["aud"], "https://id.example.com/token");
        assert_eq!(claims["scope"], "read");
        assert_eq!(
            claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
            300
        );
        let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(parts[2])
            .unwrap();
        let public = signature::UnparsedPublicKey::new(
            &signature::ECDSA_P256_SHA256_FIXED,
            key.public_key_raw(),
        );
        public
            .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
            .unwrap();
        // A fresh jti every time.
        let again = signer
            .assertion(
                &s,
                Some("client-1"),
                "https://id.example.com/token",
                None,
                true,
            )
            .unwrap();
        let again: Vec<&str> = again.expose().split('.').collect();
        assert_ne!(decode(again[1])["jti"], claims["jti"]);
        assert!(decode(again[1]).get("scope").is_none());
    }

    #[test]
    fn bad_keys_are_named_without_their_contents() {
        for pem in [
            "not a key",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        ] {
            let e = Signer::load(&spec(pem, false).key)
                .err()
                .unwrap()
                .to_string();
            assert!(e.contains("signing key") && !e.contains("AAAA"), "{e}");
        }
    }
}
