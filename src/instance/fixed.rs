//! What a process keeps whatever a reload says, and the parts of a configuration
//! a reload may not change.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{Config, Intercept, StoreConfig, Tls};
use crate::intercept::Interceptor;
use crate::metrics::Metrics;
use crate::proxy::Lasting;
use crate::secret::SecretRef;
use crate::server::Limits;
use crate::store::{StoreHealth, TokenStore};
use crate::token::TokenHttp;

/// What stays for the life of the process, whatever a reload says.
pub(crate) struct Fixed {
    pub store: Arc<dyn TokenStore>,
    pub store_health: Arc<StoreHealth>,
    pub http: TokenHttp,
    pub metrics: Arc<Metrics>,
    pub tls: rustls::ClientConfig,
    pub shutdown: CancellationToken,
    pub limits: Limits,
    pub admin_limits: Limits,
    /// The configuration's parts a reload may not change, as they were at start.
    pub frozen: Frozen,
    /// With `[intercept]`: the CA and its leaves, kept across reloads.
    pub interceptor: Option<Arc<Interceptor>>,
    /// What every configuration's proxy shares (metrics, CA, request log).
    pub lasting: Lasting,
}

/// The parts of a configuration a reload may not change.
#[derive(PartialEq)]
pub(crate) struct Frozen {
    store: StoreConfig,
    store_keys: Option<(SecretRef, Vec<SecretRef>)>,
    tls: Tls,
    intercept: Option<Intercept>,
    drain_timeout: Duration,
    idle_timeout: Duration,
    max_connections: Option<usize>,
    max_header_line: usize,
    max_header_size: usize,
    max_headers: usize,
}

impl Frozen {
    pub fn of(config: &Config) -> Frozen {
        let p = &config.proxy;
        Frozen {
            store: config.store.clone(),
            store_keys: config.store_keys.clone(),
            tls: config.tls.clone(),
            intercept: config.intercept.clone(),
            drain_timeout: p.drain_timeout,
            idle_timeout: p.idle_timeout,
            max_connections: p.max_connections,
            max_header_line: p.max_header_line,
            max_header_size: p.max_header_size,
            max_headers: p.max_headers,
        }
    }

    /// The keys whose values differ, for the refusal.
    pub(super) fn changed(&self, new: &Frozen) -> Vec<&'static str> {
        [
            (
                "[store]",
                self.store == new.store && self.store_keys == new.store_keys,
            ),
            ("[tls]", self.tls == new.tls),
            ("[intercept]", self.intercept == new.intercept),
            (
                "proxy.drain_timeout",
                self.drain_timeout == new.drain_timeout,
            ),
            ("proxy.idle_timeout", self.idle_timeout == new.idle_timeout),
            (
                "proxy.max_connections",
                self.max_connections == new.max_connections,
            ),
            (
                "proxy.max_header_line",
                self.max_header_line == new.max_header_line,
            ),
            (
                "proxy.max_header_size",
                self.max_header_size == new.max_header_size,
            ),
            ("proxy.max_headers", self.max_headers == new.max_headers),
        ]
        .into_iter()
        .filter(|(_, same)| !same)
        .map(|(key, _)| key)
        .collect()
    }
}
