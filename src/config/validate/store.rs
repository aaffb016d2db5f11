//! `[store]`: which store holds the tokens, and the keys that encrypt them.

use std::time::Duration;

use super::Validator;
use crate::config::raw::RawStore;
use crate::config::{ConfigError, StoreConfig};
use crate::secret::SecretRef;

/// A shared store's lock lease when none is written.
const DEFAULT_LEASE: Duration = Duration::from_secs(60);

type StoreKeys = Option<(SecretRef, Vec<SecretRef>)>;

impl Validator<'_> {
    pub(super) fn store(&mut self, raw: RawStore) -> Result<(StoreConfig, StoreKeys), ConfigError> {
        if raw.prefix.is_some() && raw.kind != "redis" {
            return Err(self.err(
                "store.prefix",
                "prefix is for the redis store",
                "set kind = \"redis\", or remove it",
            ));
        }
        let lease = raw.lease.unwrap_or(DEFAULT_LEASE);
        let store = match raw.kind.as_str() {
            "file" => {
                if raw.url.is_some() || raw.lease.is_some() {
                    return Err(self.err(
                        "store.url",
                        "url and lease are for shared stores",
                        "set kind = \"postgres\" or \"redis\", or remove them",
                    ));
                }
                StoreConfig::File {
                    path: raw.path.clone(),
                }
            }
            "postgres" => StoreConfig::Postgres {
                url: self.shared_url(
                    &raw,
                    "postgres",
                    "postgres://user:password@host:5432/database",
                )?,
                lease,
            },
            "redis" => StoreConfig::Redis {
                prefix: self.redis_prefix(raw.prefix.as_deref())?,
                url: self.shared_url(
                    &raw,
                    "redis",
                    "redis://:password@host:6379/0 (rediss:// for TLS)",
                )?,
                lease,
            },
            other => {
                return Err(self.err(
                    "store.kind",
                    format!("`{other}` is not a supported store"),
                    "use kind = \"file\", \"postgres\" or \"redis\"",
                ));
            }
        };
        let keys = self.store_keys(raw.encryption_key, raw.previous_encryption_keys)?;
        Ok((store, keys))
    }

    fn shared_url(
        &mut self,
        raw: &RawStore,
        kind: &str,
        example: &str,
    ) -> Result<SecretRef, ConfigError> {
        let Some(url) = raw.url.clone() else {
            return Err(self.err(
                "store.url",
                format!("a {kind} store needs a URL"),
                format!("add url = {{ env = \"TOKENPROXY_STORE_URL\" }} holding {example}"),
            ));
        };
        self.secret("store.url", &url, false)?;
        Ok(url)
    }

    fn redis_prefix(&self, prefix: Option<&str>) -> Result<String, ConfigError> {
        let prefix = prefix.unwrap_or("tokenproxy:");
        if prefix.is_empty()
            || prefix.len() > 128
            || prefix.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(self.err(
                "store.prefix",
                "must be 1 to 128 characters without spaces or control characters",
                "use a prefix such as \"tokenproxy:\" or \"etl-prod:tokenproxy:\"",
            ));
        }
        Ok(prefix.to_owned())
    }

    fn store_keys(
        &mut self,
        current: Option<SecretRef>,
        previous: Vec<SecretRef>,
    ) -> Result<StoreKeys, ConfigError> {
        let Some(key) = current else {
            if previous.is_empty() {
                return Ok(None);
            }
            return Err(self.err(
                "store.previous_encryption_keys",
                "previous keys without a current store.encryption_key",
                "add encryption_key (the key that encrypts new writes)",
            ));
        };
        let all = std::iter::once(("store.encryption_key".to_owned(), &key)).chain(
            previous
                .iter()
                .enumerate()
                .map(|(i, k)| (format!("store.previous_encryption_keys[{i}]"), k)),
        );
        for (name, k) in all {
            self.secret(&name, k, false)?;
            let text = k
                .resolve()
                .map(|s| s.expose().to_owned())
                .unwrap_or_default();
            if let Err(e) = crate::store::Key::parse(&text) {
                return Err(self.err(
                    name,
                    format!("not an AES-256 key: {e}"),
                    "write 32 random bytes as 64 hex digits: openssl rand -hex 32",
                ));
            }
        }
        Ok(Some((key, previous)))
    }
}
