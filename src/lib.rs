//! tokenproxy: a sidecar forward proxy that injects OAuth 2.0 bearer tokens.
//!
//! The map of the house:
//! - `config`: the TOML schema and its validation into types that cannot be wrong;
//! - `secret`: secret values that never print, and references to where they live;
//! - `tls`: the trust store shared by the upstream client and the token client;
//! - `store`: durable token records (`TokenStore`: the embedded file store, the
//!   shared PostgreSQL and Redis stores, encryption at rest), each written under its
//!   lock and fenced by generation;
//! - `token`: token sources, the lock-free current token, single-flight refresh,
//!   the refresh scheduler, token endpoint requests and response parsing;
//! - `proxy`: routing, header rules, forwarding, retry after a refresh;
//! - `error`: the errors tokenproxy answers with, mapped in one place;
//! - `metrics`: every Prometheus metric, in a registry handed to the others;
//! - `admin`: health, readiness, status, metrics and manual refresh;
//! - `reload`: builds the token sources and servers from a configuration, at start
//!   and at every reload (SIGHUP, `POST /reload`), keeping what did not change;
//! - `server`: listeners, accept loop, graceful drain, tunnels;
//! - `intercept`: the local CA, leaf certificates, TLS inside `CONNECT` tunnels;
//! - `control`: `tokenproxy token status|refresh` and `tokenproxy health`, clients
//!   of the admin listener;
//! - `logging`: log lines to stderr in batches, from a thread of their own;
//! - `login`: `tokenproxy login`, the authorization code flow with PKCE;
//! - `demo`: a local token server and API for `tokenproxy demo` and the tests;
//! - `fuzzing`: the untrusted-input parsers, exposed for `fuzz/` and property tests.
//!
//! This file opens the store and the listeners and shuts everything down in the
//! reverse order; `reload` builds what runs on them.

#![forbid(unsafe_code)]

pub mod admin;
pub mod body;
pub mod clock;
pub mod config;
pub mod control;
pub mod demo;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod intercept;
pub mod logging;
pub mod login;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub mod secret;
pub mod server;
pub mod store;
pub mod tls;
pub mod token;
pub mod tunnel;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use config::{Config, ListenAddr, StoreConfig};
use store::{FileStore, StoreError, TokenStore};
use token::{TokenHttp, TokenSource};

/// Why tokenproxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("token store: {0}")]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr} ({what}): {source}; is another process using it?")]
    Bind {
        addr: ListenAddr,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("listen.client_key: {0}")]
    ClientKey(String),
    #[error("token client: {0}")]
    Http(#[from] reqwest::Error),
    #[error(transparent)]
    Intercept(#[from] intercept::InterceptError),
}

/// Makes a panic one log line in the configured format (the default hook writes
/// free text to stderr). Where a panic is caught (a request, a refresh) it is also
/// answered and counted in `tokenproxy_panics_total`. The hook is process-wide, so
/// the binary installs it once at start.
pub fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".to_owned());
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        tracing::error!(
            panic = %message,
            location = %location,
            thread = std::thread::current().name().unwrap_or("-"),
            "panic: a defect in tokenproxy; please report it with this line"
        );
    }));
}

/// A started instance: its bound addresses and the handles to reload and stop it.
pub struct Running {
    pub proxy: ListenAddr,
    pub admin_addr: SocketAddr,
    shutdown: CancellationToken,
    reloader: Arc<reload::Reloader>,
    reload: reload::ReloadHandle,
    reloads: JoinHandle<()>,
}

impl Running {
    /// Re-reads the configuration file and applies it (what `SIGHUP` does): what
    /// changed, or why nothing did.
    pub async fn reload(&self) -> Result<String, String> {
        self.reload.reload().await
    }

    /// Stops accepting and starts no refresh; drains in-flight requests (closing
    /// what is left after the drain timeout); waits for a refresh in progress to
    /// finish writing its token; writes a token held only in memory one last time.
    pub async fn shutdown(self) {
        self.reloads.abort();
        let sources = self.reloader.sources().await;
        for source in &sources {
            source.close();
        }
        self.shutdown.cancel();
        self.reloader.finish().await;
        for source in &sources {
            source.quiesce().await;
            source.persist_before_exit().await;
        }
        tracing::info!("stopped");
    }
}

/// Binds the listeners and starts every task. Token refreshes begin in the
/// background; requests that arrive first wait for them.
pub async fn start(config: Config) -> Result<Running, StartError> {
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

    let settings = config.proxy;
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
    // The admin listener serves a scraper and a probe or two.
    let admin_limits = server::Limits {
        max_connections: max_connections.min(64),
        ..limits
    };
    let shutdown = CancellationToken::new();
    let fixed = reload::Fixed {
        store,
        http,
        metrics,
        tls,
        shutdown: shutdown.clone(),
        limits,
        admin_limits,
        frozen: reload::Frozen::of(&config),
        interceptor,
    };
    let (handle, requests) = reload::ReloadHandle::new(Default::default());
    let (reloader, proxy_at, admin) =
        reload::Reloader::start(config, fixed, store_health, handle.clone()).await?;
    let ListenAddr::Tcp(admin_addr) = admin else {
        unreachable!("the admin listener is TCP")
    };
    let reloads = tokio::spawn(Arc::clone(&reloader).serve(requests));
    tracing::info!(proxy = %proxy_at, admin = %admin_addr, "tokenproxy listening");
    Ok(Running {
        proxy: proxy_at,
        admin_addr,
        shutdown,
        reloader,
        reload: handle,
        reloads,
    })
}

async fn open_store(
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

/// Why `tokenproxy seed` or `tokenproxy login` failed.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("no token named `{0}` is configured")]
    UnknownToken(String),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Seed(#[from] token::SeedError),
    #[error(transparent)]
    Login(#[from] login::LoginError),
}

/// A token source of its own, on the configured store, for a one-off command.
async fn standalone_source(
    mut config: Config,
    name: &str,
) -> Result<(Arc<TokenSource>, &'static str), BootstrapError> {
    let roots = tls::roots(config.tls.ca_file.as_deref()).map_err(StartError::from)?;
    let store = open_store(&config, &roots).await?;
    let kind = store.kind();
    let http = TokenHttp::new(roots, config.proxy.connect_timeout).map_err(StartError::from)?;
    let index = config
        .tokens
        .iter()
        .position(|t| t.name == name)
        .ok_or_else(|| BootstrapError::UnknownToken(name.into()))?;
    let token = config.tokens.swap_remove(index);
    Ok((
        TokenSource::new(token, store, http, Arc::new(metrics::Metrics::new())),
        kind,
    ))
}

/// What was stored, in words (never a token).
fn stored_summary(name: &str, kind: &str, record: &store::StoredToken) -> String {
    let expires = clock::rfc3339(clock::ms_to_time(record.expires_at_ms));
    let mut text = format!(
        "stored token `{name}` (generation {}) in the {kind} store",
        record.generation
    );
    if record.access_token.is_some() {
        text += &format!("; access token valid until {expires}");
    }
    text += if record.refresh_token.is_some() {
        "; refresh token stored"
    } else {
        "; no refresh token"
    };
    if let Some(scope) = record.extra.get("scope").and_then(|s| s.as_str()) {
        text += &format!("; scopes: {scope}");
    }
    text
}

/// `tokenproxy seed NAME`: stores `input` as token `name`'s refresh token in the
/// configured store and says what was stored.
pub async fn seed(
    config: Config,
    name: &str,
    input: &str,
    verify: bool,
) -> Result<String, BootstrapError> {
    let (source, kind) = standalone_source(config, name).await?;
    let record = source.seed(input, verify).await?;
    Ok(format!(
        "{}{}
a running instance picks it up within seconds",
        stored_summary(name, kind, &record),
        if verify {
            " (verified with one refresh)"
        } else {
            " (not verified)"
        },
    ))
}

/// `tokenproxy login NAME`: the authorization code flow, then the same storing.
pub async fn login(
    config: Config,
    name: &str,
    opts: login::LoginOptions,
) -> Result<String, BootstrapError> {
    let file = config.file.clone();
    let (source, kind) = standalone_source(config, name).await?;
    let record = login::run(&source, &opts).await?;
    Ok(format!(
        "{}
start the proxy with: tokenproxy run -c {} (a running instance picks the token up within seconds)",
        stored_summary(name, kind, &record),
        file.display()
    ))
}
