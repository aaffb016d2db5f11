//! Live reload: `SIGHUP` or `POST /reload` re-reads the configuration file and puts
//! it in force without a restart.
//!
//! What a reload changes: routes, tokens (added, removed, changed), the caller key,
//! the upstream settings (`[proxy]` timeouts and body limits), and the listen
//! addresses. What it cannot change, because the running process is built on it:
//! `[store]` (tokens are held under its lock), `[tls]` (the trust roots of every
//! connection), `[intercept]` (the CA clients trust) and the connection limits of `[proxy]` (`drain_timeout`,
//! `idle_timeout`, `max_connections`, `max_header_line`, `max_header_size`); a new
//! file that changes them is refused, naming the keys, and they apply at the next
//! start.
//!
//! A reload is all or nothing: the file is loaded and validated, new listeners are
//! bound and the caller key read before anything changes; then the new proxy state
//! replaces the old in one swap. Requests in flight finish on the state they began
//! with; a token whose settings did not change keeps its source, its state and its
//! generation; a changed one gets a new source that takes the stored token (so
//! requests are served at once) and then refreshes under the store's lock; a
//! listener whose address changed stops accepting and drains while the new one
//! serves. A refused reload changes nothing and is logged with its reason.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admin::{Admin, View};
use crate::config::{
    Config, Intercept, Listen, ListenAddr, ProxySettings, StoreConfig, Tls, TokenConfig,
};
use crate::intercept::Interceptor;
use crate::metrics::Metrics;
use crate::proxy::{self, CallerKey, Proxy, Upstreams};
use crate::secret::SecretRef;
use crate::server::{self, Limits, Listener, Reporting};
use crate::store::TokenStore;
use crate::token::{self, TokenHttp, TokenSource};

/// What stays for the life of the process, whatever a reload says.
pub(crate) struct Fixed {
    pub store: Arc<dyn TokenStore>,
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
}

/// The parts of a configuration a reload may not change.
#[derive(PartialEq)]
pub(crate) struct Frozen {
    store: StoreConfig,
    store_keys: Option<(SecretRef, Vec<SecretRef>)>,
    tls: Tls,
    intercept: Option<Intercept>,
    drain_timeout: std::time::Duration,
    idle_timeout: std::time::Duration,
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
    fn changed(&self, new: &Frozen) -> Vec<&'static str> {
        let mut keys = Vec::new();
        if self.store != new.store || self.store_keys != new.store_keys {
            keys.push("[store]");
        }
        if self.tls != new.tls {
            keys.push("[tls]");
        }
        if self.intercept != new.intercept {
            keys.push("[intercept]");
        }
        for (key, same) in [
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
        ] {
            if !same {
                keys.push(key);
            }
        }
        keys
    }
}

/// A token source with the scheduler task that refreshes it.
struct Token {
    source: Arc<TokenSource>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// A listener's serving task.
struct Serving {
    addr: ListenAddr,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// The configuration in force and what runs it.
struct Applied {
    listen: Listen,
    settings: ProxySettings,
    client: Upstreams,
    tokens: Vec<Token>,
    proxy: Serving,
    admin: Serving,
    /// Tasks of replaced listeners and schedulers, still finishing.
    retired: Vec<JoinHandle<()>>,
}

impl Applied {
    /// Puts `serving` in place of the `which` listener; the old one stops
    /// accepting and drains. What happened, for the summary.
    fn move_listener(&mut self, serving: Serving, which: &'static str) -> String {
        let to = serving.addr.to_string();
        let slot = match which {
            "proxy" => &mut self.proxy,
            _ => &mut self.admin,
        };
        let previous = std::mem::replace(slot, serving);
        previous.stop.cancel();
        self.retired.push(previous.task);
        format!("{which} listener moved from {} to {to}", previous.addr)
    }
}

/// Applies configurations: the first at start, then each reload.
pub struct Reloader {
    fixed: Fixed,
    proxy: Arc<ArcSwap<Proxy>>,
    admin: Arc<Admin>,
    applied: tokio::sync::Mutex<Applied>,
    file: std::path::PathBuf,
    pub(crate) status: Arc<ReloadStatus>,
}

/// The result of the last reload, for `/status`.
#[derive(Default)]
pub struct ReloadStatus {
    last: Mutex<Option<(SystemTime, Result<String, String>)>>,
}

/// How the admin listener and the signal handler ask for a reload.
#[derive(Clone)]
pub struct ReloadHandle {
    requests: mpsc::Sender<oneshot::Sender<Result<String, String>>>,
    status: Arc<ReloadStatus>,
}

impl ReloadHandle {
    pub(crate) fn new(
        status: Arc<ReloadStatus>,
    ) -> (
        ReloadHandle,
        mpsc::Receiver<oneshot::Sender<Result<String, String>>>,
    ) {
        let (requests, rx) = mpsc::channel(4);
        (ReloadHandle { requests, status }, rx)
    }

    /// Reloads the configuration file: what changed (`Ok`), or why nothing did.
    pub async fn reload(&self) -> Result<String, String> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(tx)
            .await
            .map_err(|_| "tokenproxy is stopping".to_owned())?;
        rx.await
            .unwrap_or_else(|_| Err("tokenproxy is stopping".into()))
    }

    /// `/status`'s `reload` field: `null` before the first reload.
    pub fn status(&self) -> serde_json::Value {
        let last = self.status.last.lock().unwrap_or_else(|e| e.into_inner());
        match &*last {
            None => serde_json::Value::Null,
            Some((at, result)) => serde_json::json!({
                "at": crate::clock::rfc3339(*at),
                "result": if result.is_ok() { "success" } else { "error" },
                "summary": result.as_ref().ok(),
                "error": result.as_ref().err(),
            }),
        }
    }
}

fn caller_key(listen: &Listen) -> Result<Option<CallerKey>, String> {
    listen
        .client_key
        .as_ref()
        .map(|k| {
            Ok(CallerKey {
                header: k.header.clone(),
                bearer: k.bearer,
                key: k
                    .key
                    .resolve()
                    .map_err(|e| format!("listen.client_key: {e}"))?,
            })
        })
        .transpose()
}

async fn bind(
    addr: &ListenAddr,
    what: &'static str,
) -> Result<(Listener, ListenAddr), crate::StartError> {
    let listener = Listener::bind(addr)
        .await
        .map_err(|source| crate::StartError::Bind {
            addr: addr.clone(),
            what,
            source,
        })?;
    let local = listener.local().map_err(|source| crate::StartError::Bind {
        addr: addr.clone(),
        what,
        source,
    })?;
    Ok((listener, local))
}

impl Reloader {
    /// Starts `config`: token schedulers, both listeners. Returns the reloader and
    /// the addresses bound.
    pub(crate) async fn start(
        config: Config,
        fixed: Fixed,
        store_health: Arc<crate::store::StoreHealth>,
        handle: ReloadHandle,
    ) -> Result<(Arc<Reloader>, ListenAddr, ListenAddr), crate::StartError> {
        let caller_key = caller_key(&config.listen).map_err(crate::StartError::ClientKey)?;
        let (proxy_listener, proxy_at) = bind(&config.listen.proxy, "listen.proxy").await?;
        let (admin_listener, admin_at) =
            bind(&ListenAddr::Tcp(config.listen.admin), "listen.admin").await?;
        let tokens: Vec<Token> = config
            .tokens
            .into_iter()
            .map(|t| spawn_token(&fixed, t, false))
            .collect();
        let sources: Vec<_> = tokens.iter().map(|t| Arc::clone(&t.source)).collect();
        let client = Upstreams::new(fixed.tls.clone(), &config.proxy);
        let admin = Arc::new(Admin::new(
            View::new(sources.clone(), &config.routes, &config.listen),
            fixed.store.kind(),
            store_health,
            Arc::clone(&fixed.metrics),
            handle.clone(),
        ));
        let proxy = Arc::new(ArcSwap::from_pointee(Proxy::new(
            proxy::Router::new(config.routes),
            sources,
            client.clone(),
            config.proxy,
            caller_key,
            Arc::clone(&fixed.metrics),
            fixed.interceptor.clone(),
        )));
        let proxy_serving =
            serve_proxy(&fixed, &proxy, proxy_listener, config.listen.proxy.clone());
        let admin_serving = serve_admin(
            &fixed,
            &admin,
            admin_listener,
            ListenAddr::Tcp(config.listen.admin),
        );
        let reloader = Arc::new(Reloader {
            applied: tokio::sync::Mutex::new(Applied {
                listen: config.listen,
                settings: config.proxy,
                client,
                tokens,
                proxy: proxy_serving,
                admin: admin_serving,
                retired: Vec::new(),
            }),
            fixed,
            proxy,
            admin,
            file: config.file,
            status: Arc::clone(&handle.status),
        });
        Ok((reloader, proxy_at, admin_at))
    }

    /// Serves reload requests until the channel closes.
    pub(crate) async fn serve(
        self: Arc<Self>,
        mut requests: mpsc::Receiver<oneshot::Sender<Result<String, String>>>,
    ) {
        while let Some(reply) = requests.recv().await {
            let _ = reply.send(self.reload().await);
        }
    }

    /// Reads the configuration file again and applies it, or changes nothing.
    async fn reload(&self) -> Result<String, String> {
        let file = self.file.clone();
        let loaded = tokio::task::spawn_blocking(move || Config::load(&file)).await;
        let result = match loaded {
            Ok(Ok(config)) => self.apply(config).await,
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(format!("reading the configuration failed: {e}")),
        };
        match &result {
            Ok(summary) => {
                self.fixed.metrics.config_reload(true);
                tracing::info!(summary = %summary, "configuration reloaded");
            }
            Err(e) => {
                self.fixed.metrics.config_reload(false);
                tracing::error!(error = %e, "configuration reload refused; the running configuration stays in force");
            }
        }
        *self.status.last.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((SystemTime::now(), result.clone()));
        result
    }

    async fn apply(&self, config: Config) -> Result<String, String> {
        let mut applied = self.applied.lock().await;
        let changed = self.fixed.frozen.changed(&Frozen::of(&config));
        if !changed.is_empty() {
            return Err(format!(
                "{}: {} changed; a reload cannot change it, restart tokenproxy to apply",
                config.file.display(),
                changed.join(", ")
            ));
        }
        for warning in &config.warnings {
            tracing::warn!("{warning}");
        }
        if let Some(interceptor) = &self.fixed.interceptor {
            interceptor.warn_uncovered(&config.routes);
        }
        // Everything that can fail, before anything changes.
        let caller_key = caller_key(&config.listen)?;
        let new_proxy_listener = match config.listen.proxy != applied.listen.proxy {
            true => Some(
                bind(&config.listen.proxy, "listen.proxy")
                    .await
                    .map_err(|e| e.to_string())?
                    .0,
            ),
            false => None,
        };
        let new_admin_listener = match config.listen.admin != applied.listen.admin {
            true => Some(
                bind(&ListenAddr::Tcp(config.listen.admin), "listen.admin")
                    .await
                    .map_err(|e| e.to_string())?
                    .0,
            ),
            false => None,
        };

        let mut summary = Vec::new();
        let mut old: Vec<Token> = std::mem::take(&mut applied.tokens);
        let mut tokens = Vec::new();
        let (mut added, mut renewed) = (Vec::new(), Vec::new());
        for t in config.tokens {
            let name = t.name.clone();
            match old.iter().position(|o| o.source.name() == name) {
                Some(i) if same_token(&old[i].source, &t) => tokens.push(old.remove(i)),
                Some(i) => {
                    let previous = old.remove(i);
                    previous.stop.cancel();
                    applied.retired.push(previous.task);
                    tokens.push(spawn_token(&self.fixed, t, true));
                    renewed.push(name);
                }
                None => {
                    tokens.push(spawn_token(&self.fixed, t, false));
                    added.push(name);
                }
            }
        }
        let removed: Vec<String> = old
            .into_iter()
            .map(|t| {
                t.stop.cancel();
                applied.retired.push(t.task);
                t.source.name().to_owned()
            })
            .collect();
        for (what, names) in [
            ("added", &added),
            ("changed", &renewed),
            ("removed", &removed),
        ] {
            if !names.is_empty() {
                summary.push(format!("tokens {what}: {}", names.join(", ")));
            }
        }
        let sources: Vec<_> = tokens.iter().map(|t| Arc::clone(&t.source)).collect();
        applied.tokens = tokens;

        let client = if upstream_connections_same(&applied.settings, &config.proxy) {
            applied.client.clone()
        } else {
            summary.push("new upstream connections".into());
            Upstreams::new(self.fixed.tls.clone(), &config.proxy)
        };
        summary.push(format!("{} routes", config.routes.len()));
        self.admin
            .show(View::new(sources.clone(), &config.routes, &config.listen));
        self.proxy.store(Arc::new(Proxy::new(
            proxy::Router::new(config.routes),
            sources,
            client.clone(),
            config.proxy,
            caller_key,
            Arc::clone(&self.fixed.metrics),
            self.fixed.interceptor.clone(),
        )));
        applied.client = client;
        applied.settings = config.proxy;

        if let Some(listener) = new_proxy_listener {
            let serving = serve_proxy(
                &self.fixed,
                &self.proxy,
                listener,
                config.listen.proxy.clone(),
            );
            summary.push(applied.move_listener(serving, "proxy"));
        }
        if let Some(listener) = new_admin_listener {
            let serving = serve_admin(
                &self.fixed,
                &self.admin,
                listener,
                ListenAddr::Tcp(config.listen.admin),
            );
            summary.push(applied.move_listener(serving, "admin"));
        }
        applied.listen = config.listen;
        applied.retired.retain(|t| !t.is_finished());
        Ok(summary.join("; "))
    }

    /// The token sources in force.
    pub(crate) async fn sources(&self) -> Vec<Arc<TokenSource>> {
        let applied = self.applied.lock().await;
        applied
            .tokens
            .iter()
            .map(|t| Arc::clone(&t.source))
            .collect()
    }

    /// After `shutdown` was cancelled: waits for every listener (draining) and
    /// scheduler task, current and replaced.
    pub(crate) async fn finish(&self) {
        let mut applied = self.applied.lock().await;
        let mut tasks: Vec<JoinHandle<()>> = std::mem::take(&mut applied.retired);
        for t in applied.tokens.iter_mut() {
            tasks.push(std::mem::replace(&mut t.task, tokio::spawn(async {})));
        }
        let applied = &mut *applied;
        for s in [&mut applied.proxy, &mut applied.admin] {
            tasks.push(std::mem::replace(&mut s.task, tokio::spawn(async {})));
        }
        for task in tasks {
            let _ = task.await;
        }
    }
}

/// Whether `new` is the configuration `source` was made from: then the source is
/// kept, with its state and generation.
fn same_token(source: &TokenSource, new: &TokenConfig) -> bool {
    source.config == *new
}

/// Whether the upstream connection pool can be kept.
fn upstream_connections_same(old: &ProxySettings, new: &ProxySettings) -> bool {
    old.connect_timeout == new.connect_timeout && old.pool_idle_timeout == new.pool_idle_timeout
}

fn spawn_token(fixed: &Fixed, config: TokenConfig, renew: bool) -> Token {
    fixed.metrics.declare_token(&config.name);
    let source = TokenSource::new(
        config,
        Arc::clone(&fixed.store),
        fixed.http.clone(),
        Arc::clone(&fixed.metrics),
    );
    let stop = fixed.shutdown.child_token();
    let task = tokio::spawn(token::run_scheduler(
        Arc::clone(&source),
        stop.clone(),
        renew,
    ));
    Token { source, stop, task }
}

fn reporting(fixed: &Fixed, label: &'static str) -> Reporting {
    Reporting {
        metrics: Arc::clone(&fixed.metrics),
        label,
    }
}

fn serve_proxy(
    fixed: &Fixed,
    proxy: &Arc<ArcSwap<Proxy>>,
    listener: Listener,
    addr: ListenAddr,
) -> Serving {
    let stop = fixed.shutdown.child_token();
    let proxy = Arc::clone(proxy);
    let task = tokio::spawn(server::serve(
        listener,
        move |req| proxy.load_full().handle(req),
        stop.clone(),
        fixed.limits,
        reporting(fixed, "none"),
    ));
    Serving { addr, stop, task }
}

fn serve_admin(fixed: &Fixed, admin: &Arc<Admin>, listener: Listener, addr: ListenAddr) -> Serving {
    let stop = fixed.shutdown.child_token();
    let admin = Arc::clone(admin);
    let task = tokio::spawn(server::serve(
        listener,
        move |req| Arc::clone(&admin).handle(req),
        stop.clone(),
        fixed.admin_limits,
        reporting(fixed, "admin"),
    ));
    Serving { addr, stop, task }
}
