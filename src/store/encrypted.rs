//! Encryption at rest of the tokens in any store: AES-256-GCM (ring) of the access
//! and refresh token, bound to the token's name and the field.
//!
//! A stored value is `enc:v1:<key id>:<base64url(nonce ‖ ciphertext ‖ tag)>`; the
//! key id (the first 8 bytes of the key's SHA-256, hex) says which key encrypted it,
//! so a key can be rotated: the new key encrypts every write, previous keys still
//! decrypt until the records have been rewritten. A plain value is read as it is (a
//! store that had no key yet) and encrypted at the next write; an encrypted value
//! without a key that opens it is an error naming the key id and the fix, never a
//! garbled token sent upstream.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use super::{Held, Intent, IntentRead, StoreError, StoredToken, TokenStore};
use crate::secret::Secret;

const PREFIX: &str = "enc:v1:";

/// One AES-256 key and its id.
pub struct Key {
    id: String,
    key: LessSafeKey,
}

impl Key {
    /// A key from its text: 32 bytes as 64 hex digits or as base64.
    pub fn parse(text: &str) -> Result<Key, String> {
        let text = text.trim();
        let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            (0..32)
                .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .map_err(|e| e.to_string())?
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text))
                .map_err(|_| "not 64 hex digits or base64".to_owned())?
        };
        if bytes.len() != 32 {
            return Err(format!(
                "{} bytes; AES-256 needs 32 (make one with: openssl rand -hex 32)",
                bytes.len()
            ));
        }
        let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
        let id = digest.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let key = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| "not a key".to_owned())?;
        Ok(Key {
            id,
            key: LessSafeKey::new(key),
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }
}

/// The key that encrypts, and older ones that still decrypt.
pub struct Keys {
    pub current: Key,
    pub previous: Vec<Key>,
}

impl Keys {
    fn seal(&self, token: &str, field: &str, value: &Secret) -> Result<Secret, StoreError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| crypto("the system's random number generator failed"))?;
        let mut data = value.expose().as_bytes().to_vec();
        let aad = aad(token, field);
        self.current
            .key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad.as_slice()),
                &mut data,
            )
            .map_err(|_| crypto("encryption failed"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Ok(Secret::new(format!(
            "{PREFIX}{}:{}",
            self.current.id,
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(out)
        )))
    }
}

/// Binds a ciphertext to its token and field: a value moved to another row or field
/// does not open.
fn aad(token: &str, field: &str) -> Vec<u8> {
    format!("tokenproxy:{token}:{field}").into_bytes()
}

fn crypto(detail: &str) -> StoreError {
    StoreError::Encryption(detail.to_owned())
}

/// Opens `value` if it is encrypted; a plain value is returned as it is.
fn open(
    keys: Option<&Keys>,
    token: &str,
    field: &str,
    value: Secret,
) -> Result<Secret, StoreError> {
    let Some(rest) = value.expose().strip_prefix(PREFIX) else {
        return Ok(value);
    };
    let Some((id, data)) = rest.split_once(':') else {
        return Err(crypto(&format!(
            "the stored {field} of `{token}` is not a valid encrypted value"
        )));
    };
    let Some(keys) = keys else {
        return Err(crypto(&format!(
            "the stored {field} of `{token}` is encrypted (key {id}); set store.encryption_key to that key"
        )));
    };
    let Some(key) = std::iter::once(&keys.current)
        .chain(&keys.previous)
        .find(|k| k.id == id)
    else {
        return Err(crypto(&format!(
            "the stored {field} of `{token}` was encrypted with key {id}, which is neither store.encryption_key ({}) nor in store.previous_encryption_keys; add it there",
            keys.current.id
        )));
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(data)
        .map_err(|_| {
            crypto(&format!(
                "the stored {field} of `{token}` is not valid base64"
            ))
        })?;
    if bytes.len() < NONCE_LEN {
        return Err(crypto(&format!(
            "the stored {field} of `{token}` is cut short"
        )));
    }
    let (nonce, sealed) = bytes.split_at(NONCE_LEN);
    let mut sealed = sealed.to_vec();
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| crypto("bad nonce"))?;
    let aad = aad(token, field);
    let plain = key
        .key
        .open_in_place(nonce, Aad::from(aad.as_slice()), &mut sealed)
        .map_err(|_| {
            crypto(&format!(
                "the stored {field} of `{token}` does not open with key {id} (altered, or moved from another token)"
            ))
        })?;
    let text = std::str::from_utf8(plain).map_err(|_| crypto("a decrypted value is not text"))?;
    Ok(Secret::new(text))
}

fn open_record(
    keys: Option<&Keys>,
    token: &str,
    record: Option<StoredToken>,
) -> Result<Option<StoredToken>, StoreError> {
    let Some(mut r) = record else {
        return Ok(None);
    };
    r.access_token = r
        .access_token
        .map(|v| open(keys, token, "access_token", v))
        .transpose()?;
    r.refresh_token = r
        .refresh_token
        .map(|v| open(keys, token, "refresh_token", v))
        .transpose()?;
    Ok(Some(r))
}

fn seal_record(
    keys: Option<&Keys>,
    token: &str,
    record: &StoredToken,
) -> Result<StoredToken, StoreError> {
    let mut r = record.clone();
    if let Some(keys) = keys {
        r.access_token = r
            .access_token
            .map(|v| keys.seal(token, "access_token", &v))
            .transpose()?;
        r.refresh_token = r
            .refresh_token
            .map(|v| keys.seal(token, "refresh_token", &v))
            .transpose()?;
    }
    Ok(r)
}

/// Any store, with the tokens encrypted on the way in and opened on the way out.
/// Without keys it only refuses encrypted values it cannot open.
pub struct Encrypted {
    inner: Arc<dyn TokenStore>,
    keys: Option<Arc<Keys>>,
}

impl Encrypted {
    pub fn new(inner: Arc<dyn TokenStore>, keys: Option<Keys>) -> Arc<Encrypted> {
        Arc::new(Encrypted {
            inner,
            keys: keys.map(Arc::new),
        })
    }
}

#[async_trait::async_trait]
impl TokenStore for Encrypted {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    async fn load(&self, token: &str) -> Result<Option<StoredToken>, StoreError> {
        let r = self.inner.load(token).await?;
        open_record(self.keys.as_deref(), token, r)
    }

    async fn lock(&self, token: &str, wait: Duration) -> Result<Box<dyn Held>, StoreError> {
        Ok(Box::new(EncryptedHeld {
            inner: self.inner.lock(token, wait).await?,
            keys: self.keys.clone(),
            token: token.to_owned(),
        }))
    }

    async fn write(&self, token: &str, record: &StoredToken, seen: u64) -> Result<(), StoreError> {
        let sealed = seal_record(self.keys.as_deref(), token, record)?;
        self.inner.write(token, &sealed, seen).await
    }

    // An intent holds a hash, never a token.
    async fn load_intent(&self, token: &str) -> Result<IntentRead, StoreError> {
        self.inner.load_intent(token).await
    }

    async fn swap_intent(
        &self,
        token: &str,
        expected: Option<&Intent>,
        new: Option<&Intent>,
    ) -> Result<bool, StoreError> {
        self.inner.swap_intent(token, expected, new).await
    }

    fn lease(&self) -> Option<Duration> {
        self.inner.lease()
    }

    fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<String>> {
        self.inner.changes()
    }
}

struct EncryptedHeld {
    inner: Box<dyn Held>,
    keys: Option<Arc<Keys>>,
    token: String,
}

#[async_trait::async_trait]
impl Held for EncryptedHeld {
    async fn load(&mut self) -> Result<Option<StoredToken>, StoreError> {
        let r = self.inner.load().await?;
        open_record(self.keys.as_deref(), &self.token, r)
    }

    async fn save(&mut self, record: &StoredToken, seen: Option<u64>) -> Result<(), StoreError> {
        let sealed = seal_record(self.keys.as_deref(), &self.token, record)?;
        self.inner.save(&sealed, seen).await
    }

    async fn renew(&mut self) -> Result<Option<tokio::time::Instant>, StoreError> {
        self.inner.renew().await
    }

    async fn release(self: Box<Self>) {
        self.inner.release().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    fn keys(current: &str, previous: &[&str]) -> Keys {
        Keys {
            current: Key::parse(current).unwrap(),
            previous: previous.iter().map(|k| Key::parse(k).unwrap()).collect(),
        }
    }

    #[test]
    fn sealed_values_open_only_with_their_key_token_and_field() {
        let k = keys(HEX, &[]);
        let sealed = k
            .seal("t", "refresh_token", &Secret::new("rt-SECRET"))
            .unwrap();
        assert!(sealed.expose().starts_with("enc:v1:") && !sealed.expose().contains("SECRET"));
        let back = open(Some(&k), "t", "refresh_token", sealed.clone()).unwrap();
        assert_eq!(back.expose(), "rt-SECRET");
        // Moved to another token or field: refused.
        assert!(open(Some(&k), "u", "refresh_token", sealed.clone()).is_err());
        assert!(open(Some(&k), "t", "access_token", sealed.clone()).is_err());
        // Without a key, or with another, refused by key id.
        let err = open(None, "t", "refresh_token", sealed.clone())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(k.current.id()) && err.contains("encryption_key"),
            "{err}"
        );
        let other = keys(&"ff".repeat(32), &[]);
        let err = open(Some(&other), "t", "refresh_token", sealed.clone())
            .unwrap_err()
            .to_string();
        assert!(err.contains("previous_encryption_keys"), "{err}");
        // A rotated key still opens what the previous one sealed.
        let rotated = keys(&"ff".repeat(32), &[HEX]);
        assert_eq!(
            open(Some(&rotated), "t", "refresh_token", sealed)
                .unwrap()
                .expose(),
            "rt-SECRET"
        );
        // Plain values (a store from before the key) are read as they are.
        assert_eq!(
            open(Some(&k), "t", "refresh_token", Secret::new("plain"))
                .unwrap()
                .expose(),
            "plain"
        );
    }

    #[test]
    fn keys_are_32_bytes_of_hex_or_base64() {
        assert!(Key::parse(HEX).is_ok());
        let b64 = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        assert!(Key::parse(&b64).is_ok());
        assert!(Key::parse("short").is_err());
        let err = Key::parse(&base64::engine::general_purpose::STANDARD.encode([7u8; 16]))
            .err()
            .unwrap();
        assert!(err.contains("32"), "{err}");
    }
}
