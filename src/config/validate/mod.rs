//! From the file as written to a [`Config`] that cannot be wrong.
//!
//! Each check names the key and the fix. Secrets are resolved once here, only to
//! prove they can be; their values are not kept. One file per section of the
//! file (`listen`, `store`, `proxy` with `tls`, `tokens` with their `login` and
//! `request` parts, `routes`, `intercept`); this one holds what they share and
//! the checks across sections.

mod delivery;
mod intercept;
mod limits;
mod listen;
mod login;
mod proxy;
mod request;
mod routes;
mod store;
mod tokens;

use std::path::Path;
use std::time::Duration;

use super::raw::RawConfig;
use super::{Config, ConfigError, StoreConfig, TokenConfig, is_loopback};
use crate::secret::SecretRef;

/// How much longer than a token request a shared store's lease must be (a store
/// write, a pause).
const LEASE_MARGIN: Duration = Duration::from_secs(10);

pub fn config(raw: RawConfig, file: &Path) -> Result<Config, ConfigError> {
    Validator {
        file,
        warnings: Vec::new(),
    }
    .config(raw)
}

struct Validator<'a> {
    file: &'a Path,
    warnings: Vec<String>,
}

/// Parses one of `names` (`as_str` of each value) or says which are allowed.
fn choose<T: Copy>(text: &str, all: &[T], name: impl Fn(T) -> &'static str) -> Result<T, String> {
    all.iter()
        .copied()
        .find(|v| name(*v) == text)
        .ok_or_else(|| {
            let names: Vec<&str> = all.iter().map(|v| name(*v)).collect();
            format!("`{text}` is not one of {}", names.join(", "))
        })
}

impl Validator<'_> {
    fn config(mut self, raw: RawConfig) -> Result<Config, ConfigError> {
        let listen = self.listen(&raw.listen)?;
        let (store, store_keys) = self.store(raw.store)?;
        let proxy = self.proxy(raw.proxy)?;
        let tls = self.tls(raw.tls)?;
        let mut tokens = Vec::with_capacity(raw.tokens.len());
        for (name, token) in raw.tokens {
            tokens.push(self.token(name, token)?);
        }
        let routes = self.routes(raw.routes, &mut tokens)?;
        let intercept = match raw.intercept {
            None => None,
            Some(i) => Some(self.intercept(i, &store, &routes)?),
        };
        self.lease_outlasts_requests(&store, &tokens)?;
        let callers = self.callers(&listen, &raw.listen, raw.callers, &tokens)?;
        self.sinks_apart(&tokens, &store)?;
        Ok(Config {
            file: self.file.into(),
            listen,
            tls,
            store,
            store_keys,
            proxy,
            intercept,
            callers,
            tokens,
            routes,
            warnings: self.warnings,
        })
    }

    /// A lock holder must finish its token request well inside its lease, or a
    /// second instance could spend the same refresh token.
    fn lease_outlasts_requests(
        &self,
        store: &StoreConfig,
        tokens: &[TokenConfig],
    ) -> Result<(), ConfigError> {
        let Some(lease) = store.lease() else {
            return Ok(());
        };
        match tokens.iter().find(|t| lease < t.timeout + LEASE_MARGIN) {
            None => Ok(()),
            Some(t) => Err(self.err(
                "store.lease",
                format!(
                    "{} is not longer than tokens.{}.timeout ({}) plus {}",
                    humantime::format_duration(lease),
                    t.name,
                    humantime::format_duration(t.timeout),
                    humantime::format_duration(LEASE_MARGIN)
                ),
                "raise store.lease or lower the token's timeout",
            )),
        }
    }

    fn err(
        &self,
        key: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.into(),
            key: key.into(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }

    fn warn(&mut self, text: impl std::fmt::Display) {
        self.warnings
            .push(format!("{}: {text}", self.file.display()));
    }

    fn addr(&self, key: &str, text: &str) -> Result<std::net::SocketAddr, ConfigError> {
        text.parse().map_err(|_| {
            self.err(
                key,
                format!("`{text}` is not an IP address and port"),
                "write it as \"127.0.0.1:8080\"",
            )
        })
    }

    /// Checks that `secret` resolves now; warns about a literal unless `public`.
    fn secret(&mut self, key: &str, secret: &SecretRef, public: bool) -> Result<(), ConfigError> {
        secret.resolve().map_err(|e| {
            self.err(
                key,
                e.to_string(),
                "set the variable or create the file, or point the key elsewhere",
            )
        })?;
        if secret.is_literal() && !public {
            self.warn(format_args!(
                "`{key}` is a literal secret; prefer {{ env = \"VAR\" }} or {{ file = \"PATH\" }}"
            ));
        }
        Ok(())
    }

    fn https_url(&self, key: &str, text: &str, fix: &str) -> Result<reqwest::Url, ConfigError> {
        let url: reqwest::Url = text
            .parse()
            .map_err(|e| self.err(key, format!("`{text}` is not a URL: {e}"), fix))?;
        let loopback = url.host_str().is_some_and(is_loopback);
        if url.scheme() != "https" && !(url.scheme() == "http" && loopback) {
            return Err(self.err(
                key,
                format!("`{text}` is not an https URL"),
                format!("{fix} (http:// is accepted only for 127.0.0.1/localhost)"),
            ));
        }
        Ok(url)
    }
}
