//! A running instance: what lives as long as the process (the store, the trust
//! roots, the token client, the interception CA, connection limits) is opened
//! here at start, in this order, and shut down in the reverse order; what a
//! configuration runs on it is built by [`wiring`], at start and at each reload.

mod fixed;
mod tokens;
mod wiring;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config, ListenAddr, StoreConfig};
use crate::logging::RequestLog;
use crate::reload::{ApplyError, Outcome, ReloadHandle};
use crate::store::{self, FileStore, StoreError, TokenStore};
use crate::token::TokenHttp;
use crate::{intercept, metrics, secret, server, tls};
use fixed::{Fixed, Frozen};
use wiring::Wiring;

/// Why tokenproxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("token store: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error("token client: {0}")]
    Http(#[from] reqwest::Error),
    #[error(transparent)]
    Intercept(#[from] intercept::InterceptError),
}

/// A started instance: its bound addresses and the handles to reload and stop it.
pub struct Running {
    pub proxy: ListenAddr,
    pub admin_addr: SocketAddr,
    shutdown: CancellationToken,
    wiring: Arc<Wiring>,
    reload: ReloadHandle,
    reloads: JoinHandle<()>,
}

impl Running {
    /// Re-reads the configuration file and applies it (what `SIGHUP` does): what
    /// changed, or why nothing did.
    pub async fn reload(&self) -> Outcome {
        self.reload.reload().await
    }

    /// Stops accepting and starts no refresh; drains in-flight requests (closing
    /// what is left after the drain timeout); waits for a refresh in progress to
    /// finish writing its token; writes a token held only in memory one last time.
    pub async fn shutdown(self) {
        self.reloads.abort();
        let sources = self.wiring.sources().await;
        for source in &sources {
            source.close();
        }
        self.shutdown.cancel();
        self.wiring.finish().await;
        for source in &sources {
            source.quiesce().await;
            source.persist_before_exit().await;
        }
        tracing::info!("stopped");
    }
}

/// Opens what lives as long as the process, then puts `config` in force on it;
/// each request's line goes to `request_log`. Token refreshes begin in the
/// background; requests that arrive first wait for them.
pub async fn start(config: Config, request_log: RequestLog) -> Result<Running, StartError> {
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let roots = tls::roots(config.tls.ca_file.as_deref())?;
    let tls = tls::client_config(Arc::clone(&roots), None)?;
    let metrics = Arc::new(metrics::Metrics::new());
    let (store, store_health) =
        store::Observed::new(open_store(&config, &roots).await?, Arc::clone(&metrics));
    let store: Arc<dyn TokenStore> = store;
    let http = TokenHttp::new(roots, config.proxy.connect_timeout)?;
    let interceptor = match &config.intercept {
        None => None,
        Some(intercept) => {
            let ca = intercept::load_ca(intercept, &intercept::routed_hosts(&config.routes))?;
            let interceptor = intercept::Interceptor::new(ca, Arc::clone(&metrics))?;
            interceptor.warn_uncovered(&config.routes);
            Some(Arc::new(interceptor))
        }
    };
    let (limits, admin_limits) = limits(&config.proxy);
    let shutdown = CancellationToken::new();
    let lasting = crate::proxy::Lasting {
        metrics: Arc::clone(&metrics),
        interceptor: interceptor.clone(),
        log: request_log,
        quotas: Arc::default(),
    };
    let fixed = Fixed {
        lasting,
        store,
        store_health,
        http,
        metrics,
        tls,
        shutdown: shutdown.clone(),
        limits,
        admin_limits,
        frozen: Frozen::of(&config),
        interceptor,
    };
    let (reload, status, requests) = ReloadHandle::new();
    let (wiring, bound) = Wiring::start(config, fixed, reload.clone(), status).await?;
    let ListenAddr::Tcp(admin_addr) = bound.admin else {
        unreachable!("the admin listener is TCP")
    };
    let reloads = tokio::spawn(Arc::clone(&wiring).serve(requests));
    tracing::info!(proxy = %bound.proxy, admin = %admin_addr, "tokenproxy listening");
    Ok(Running {
        proxy: bound.proxy,
        admin_addr,
        shutdown,
        wiring,
        reload,
        reloads,
    })
}

/// The connection limits of the proxy listener, and of the admin listener (which
/// serves a scraper and a probe or two).
fn limits(settings: &config::ProxySettings) -> (server::Limits, server::Limits) {
    let fd_limit = server::raise_fd_limit();
    let max_connections = settings
        .max_connections
        .unwrap_or_else(|| server::connections_for(fd_limit));
    tracing::info!(
        open_file_limit = fd_limit,
        max_connections,
        "connection limits"
    );
    let limits = server::Limits {
        drain: settings.drain_timeout,
        idle: settings.idle_timeout,
        max_connections,
        max_header_line: settings.max_header_line,
        max_header_size: settings.max_header_size,
        max_headers: settings.max_headers,
    };
    let admin = server::Limits {
        max_connections: max_connections.min(64),
        ..limits
    };
    (limits, admin)
}

pub(crate) async fn open_store(
    config: &Config,
    roots: &Arc<rustls::RootCertStore>,
) -> Result<Arc<dyn TokenStore>, StartError> {
    let keys = match &config.store_keys {
        None => None,
        Some((current, previous)) => {
            let key = |r: &secret::SecretRef| {
                r.resolve()
                    .map_err(|e| e.to_string())
                    .and_then(|s| store::Key::parse(s.expose()))
                    .map_err(|e| StoreError::Encryption(format!("{r}: {e}")))
            };
            Some(store::Keys {
                current: key(current)?,
                previous: previous.iter().map(key).collect::<Result<_, _>>()?,
            })
        }
    };
    let inner: Arc<dyn TokenStore> = match &config.store {
        StoreConfig::File { path } => {
            let store = FileStore::open(path)?;
            warn_if_ephemeral(config, path);
            Arc::new(store)
        }
        StoreConfig::Postgres { url, lease } => {
            let url = store_url(url)?;
            let tls = tls::client_config(Arc::clone(roots), None)?;
            Arc::new(store::PgStore::open(&url, tls, *lease, config.tokens.len()).await?)
        }
        StoreConfig::Redis { url, prefix, lease } => {
            let url = store_url(url)?;
            let ca = redis_roots(config)?;
            Arc::new(store::RedisStore::open(&url, ca, prefix, *lease).await?)
        }
    };
    Ok(store::Encrypted::new(inner, keys))
}

/// A refresh token that rotates is replaced at every refresh and the configured
/// copy is spent: in a directory that does not outlive the pod or container, the
/// next start would present a spent token (and a strict provider revokes the family).
fn warn_if_ephemeral(config: &Config, dir: &std::path::Path) {
    let refreshed: Vec<&str> = config
        .tokens
        .iter()
        .filter(|t| matches!(t.grant, config::Grant::RefreshToken { .. }))
        .map(|t| t.name.as_str())
        .collect();
    if refreshed.is_empty() {
        return;
    }
    if let Some(what) = store::ephemeral(dir) {
        tracing::warn!(
            path = %dir.display(),
            tokens = ?refreshed,
            "the state directory is on {what}: a refresh token that rotates (Exact Online, Xero, QuickBooks) would be lost, and the next start would present the spent one from the configuration. Put store.path on a persistent volume (a PersistentVolumeClaim, a host directory) or use a shared store"
        );
    }
}

/// For `tokenproxy check`: whether the configured store can be used, in words,
/// changing nothing (the file store's directory is checked if it exists; a
/// PostgreSQL server is connected to and its schema read).
pub async fn probe_store(config: &Config) -> Result<String, StartError> {
    match &config.store {
        StoreConfig::File { path } => Ok(if path.exists() {
            FileStore::check(path)?;
            format!("{}: usable", path.display())
        } else {
            format!("{}: created at the first start", path.display())
        }),
        StoreConfig::Postgres { url, .. } => {
            let url = store_url(url)?;
            let roots = tls::roots(config.tls.ca_file.as_deref())?;
            let tls = tls::client_config(roots, None)?;
            Ok(store::PgStore::probe(&url, tls).await?)
        }
        StoreConfig::Redis { url, prefix, .. } => {
            let url = store_url(url)?;
            Ok(store::RedisStore::probe(&url, redis_roots(config)?, prefix).await?)
        }
    }
}

fn store_url(url: &secret::SecretRef) -> Result<secret::Secret, StoreError> {
    url.resolve().map_err(|e| StoreError::Database {
        op: "configure",
        detail: format!("store.url: {e}"),
    })
}

/// `[tls] ca_file`, as the certificates a `rediss://` server is checked against
/// (the Redis client trusts either these or the system's, not both).
fn redis_roots(config: &Config) -> Result<Option<Vec<u8>>, StoreError> {
    let Some(path) = &config.tls.ca_file else {
        return Ok(None);
    };
    std::fs::read(path)
        .map(Some)
        .map_err(|source| StoreError::Io {
            path: path.clone(),
            source,
        })
}
