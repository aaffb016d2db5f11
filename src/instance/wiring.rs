//! The one place that builds what a configuration runs: token sources and their
//! schedulers, the upstream connections, the proxy and admin handlers, and the
//! listeners. The first configuration goes through it at start, every reload
//! (`SIGHUP`, `POST /reload`) after: [`Wiring::build`] against what runs now, then
//! [`Wiring::put_in_force`].
//!
//! What a reload changes: routes, tokens (added, removed, changed), the caller key,
//! the upstream settings (`[proxy]` timeouts and body limits), and the listen
//! addresses. What it cannot change, because the running process is built on it:
//! `[store]` (tokens are held under its lock), `[tls]` (the trust roots of every
//! connection), `[intercept]` (the CA clients trust) and the connection limits of
//! `[proxy]` (`drain_timeout`, `idle_timeout`, `max_connections`,
//! `max_header_line`, `max_header_size`, `max_headers`); a new file that changes
//! them is refused, naming the keys, and they apply at the next start.
//!
//! A reload is all or nothing: the file is loaded and validated, new listeners are
//! bound and the caller key read before anything changes; then the new proxy state
//! replaces the old in one swap. Requests in flight finish on the state they began
//! with; a token whose settings did not change keeps its source, its state and its
//! generation; a changed one gets a new source that takes the stored token (so
//! requests are served at once) and then refreshes under the store's lock; a
//! listener whose address changed stops accepting and drains while the new one
//! serves. A refused reload changes nothing and is logged with its reason.
//!
//! Length: the one place that builds what a configuration runs; start and reload
//! share every line of it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admin::{Admin, View};
use crate::certs::Served;
use crate::config::{
    Config, Intercept, Listen, ListenAddr, ProxySettings, StoreConfig, Tls, TokenConfig,
};
use crate::intercept::Interceptor;
use crate::metrics::Metrics;
use crate::proxy::{Gate, Lasting, Proxy, Router, Upstreams};
use crate::reload::{ApplyError, Outcome, ReloadError, ReloadStatus, Reloaded, Request};
use crate::secret::SecretRef;
use crate::server::{self, Limits, Listener, Reporting};
use crate::store::{StoreHealth, TokenStore};
use crate::token::{self, TokenHttp, TokenSource};

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
    fn changed(&self, new: &Frozen) -> Vec<&'static str> {
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

/// The two listeners.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Proxy,
    Admin,
}

impl Role {
    const ALL: [Role; 2] = [Role::Proxy, Role::Admin];

    fn name(self) -> &'static str {
        match self {
            Role::Proxy => "proxy",
            Role::Admin => "admin",
        }
    }

    /// The configuration key, for errors.
    fn key(self) -> &'static str {
        match self {
            Role::Proxy => "listen.proxy",
            Role::Admin => "listen.admin",
        }
    }

    fn addr(self, listen: &Listen) -> ListenAddr {
        match self {
            Role::Proxy => listen.proxy.clone(),
            Role::Admin => ListenAddr::Tcp(listen.admin),
        }
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
    /// As configured, to tell whether a new configuration moves it.
    addr: ListenAddr,
    /// As bound (a configured port 0 is a real one here).
    local: ListenAddr,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// What runs now: nothing before the first configuration.
#[derive(Default)]
struct Applied {
    listen: Option<Listen>,
    upstream: Option<(ProxySettings, Upstreams)>,
    tokens: Vec<Token>,
    proxy: Option<Serving>,
    admin: Option<Serving>,
    /// Tasks of replaced listeners and schedulers, still finishing.
    retired: Vec<JoinHandle<()>>,
}

impl Applied {
    fn serving(&mut self, role: Role) -> &mut Option<Serving> {
        match role {
            Role::Proxy => &mut self.proxy,
            Role::Admin => &mut self.admin,
        }
    }

    /// The sources of the tokens in force.
    fn sources(&self) -> Vec<Arc<TokenSource>> {
        self.tokens.iter().map(|t| Arc::clone(&t.source)).collect()
    }
}

/// A configuration built and ready to put in force: nothing left that can fail.
struct Built {
    listen: Listen,
    /// The proxy listener's TLS, when it has one.
    served: Option<Served>,
    proxy: Arc<Proxy>,
    view: View,
    /// Listeners bound for addresses that are new.
    bound: Vec<(Role, Listener, ListenAddr)>,
    summary: Reloaded,
}

/// Runs configurations: the first at start, then each reload.
pub(crate) struct Wiring {
    fixed: Fixed,
    proxy: Arc<ArcSwap<Proxy>>,
    /// The proxy listener's TLS (`listen.tls_cert`): what a new connection gets.
    proxy_tls: server::ServedTls,
    admin: Arc<Admin>,
    applied: tokio::sync::Mutex<Applied>,
    file: PathBuf,
    status: Arc<ReloadStatus>,
}

/// The addresses bound at start.
pub(crate) struct Bound {
    pub proxy: ListenAddr,
    pub admin: ListenAddr,
}

impl Wiring {
    /// Puts the first configuration in force: token schedulers, both listeners.
    pub async fn start(
        config: Config,
        fixed: Fixed,
        reload: crate::reload::ReloadHandle,
        status: Arc<ReloadStatus>,
    ) -> Result<(Arc<Wiring>, Bound), ApplyError> {
        let file = config.file.clone();
        let mut applied = Applied::default();
        let built = build(&fixed, config, &mut applied).await?;
        let admin = Admin::new(
            View::default(),
            fixed.store.kind(),
            Arc::clone(&fixed.store_health),
            Arc::clone(&fixed.metrics),
            reload,
        );
        let wiring = Arc::new(Wiring {
            proxy: Arc::new(ArcSwap::new(Arc::clone(&built.proxy))),
            proxy_tls: server::ServedTls::default(),
            admin: Arc::new(admin),
            applied: tokio::sync::Mutex::new(Applied::default()),
            fixed,
            file,
            status,
        });
        wiring.put_in_force(&mut applied, built);
        let local = |s: &Option<Serving>| s.as_ref().map(|s| s.local.clone());
        let (Some(proxy), Some(admin)) = (local(&applied.proxy), local(&applied.admin)) else {
            unreachable!("the first configuration binds both listeners")
        };
        *wiring.applied.lock().await = applied;
        Ok((wiring, Bound { proxy, admin }))
    }

    /// Serves reload requests until the channel closes.
    pub async fn serve(self: Arc<Self>, mut requests: mpsc::Receiver<Request>) {
        while let Some(reply) = requests.recv().await {
            let _ = reply.send(self.reload().await);
        }
    }

    /// Reads the configuration file again and applies it, or changes nothing.
    async fn reload(&self) -> Outcome {
        let file = self.file.clone();
        let outcome = match tokio::task::spawn_blocking(move || Config::load(&file)).await {
            Ok(Ok(config)) => self.apply(config).await,
            Ok(Err(e)) => Err(ReloadError::Config(Arc::new(e))),
            Err(e) => Err(ReloadError::Read(e.to_string())),
        };
        self.fixed.metrics.config_reload(outcome.is_ok());
        match &outcome {
            Ok(summary) => tracing::info!(summary = %summary, "configuration reloaded"),
            Err(e) => tracing::error!(
                error = %e,
                "configuration reload refused; the running configuration stays in force"
            ),
        }
        self.status.record(&outcome);
        outcome
    }

    async fn apply(&self, config: Config) -> Outcome {
        let mut applied = self.applied.lock().await;
        let keys = self.fixed.frozen.changed(&Frozen::of(&config));
        if !keys.is_empty() {
            return Err(ReloadError::Frozen {
                file: config.file,
                keys,
            });
        }
        for warning in &config.warnings {
            tracing::warn!("{warning}");
        }
        if let Some(interceptor) = &self.fixed.interceptor {
            interceptor.warn_uncovered(&config.routes);
        }
        let built = build(&self.fixed, config, &mut applied).await?;
        Ok(self.put_in_force(&mut applied, built))
    }

    /// Swaps the built configuration in: the proxy and admin state in one store
    /// each, then new listeners serve while the ones they replace drain.
    fn put_in_force(&self, applied: &mut Applied, built: Built) -> Reloaded {
        let Built {
            listen,
            served,
            proxy,
            view,
            bound,
            mut summary,
        } = built;
        self.admin.show(view);
        self.fixed
            .metrics
            .listen_certificate("proxy", served.as_ref().map(|s| s.not_after));
        self.proxy_tls.store(served.map(|s| s.config));
        self.proxy.store(proxy);
        for (role, listener, local) in bound {
            let serving = self.serve_listener(role, listener, role.addr(&listen), local);
            let to = serving.addr.to_string();
            if let Some(previous) = applied.serving(role).replace(serving) {
                previous.stop.cancel();
                applied.retired.push(previous.task);
                summary.0.push(format!(
                    "{} listener moved from {} to {to}",
                    role.name(),
                    previous.addr
                ));
            }
        }
        applied.listen = Some(listen);
        applied.retired.retain(|t| !t.is_finished());
        summary
    }

    fn serve_listener(
        &self,
        role: Role,
        listener: Listener,
        addr: ListenAddr,
        local: ListenAddr,
    ) -> Serving {
        let fixed = &self.fixed;
        let stop = fixed.shutdown.child_token();
        let reporting = |label| Reporting {
            metrics: Arc::clone(&fixed.metrics),
            label,
        };
        let task = match role {
            Role::Proxy => {
                let proxy = Arc::clone(&self.proxy);
                tokio::spawn(server::serve(
                    listener,
                    move |req| proxy.load_full().handle(req),
                    stop.clone(),
                    fixed.limits,
                    reporting("none"),
                    Some(Arc::clone(&self.proxy_tls)),
                ))
            }
            Role::Admin => {
                let admin = Arc::clone(&self.admin);
                tokio::spawn(server::serve(
                    listener,
                    move |req| Arc::clone(&admin).handle(req),
                    stop.clone(),
                    fixed.admin_limits,
                    reporting("admin"),
                    None,
                ))
            }
        };
        Serving {
            addr,
            local,
            stop,
            task,
        }
    }

    /// The token sources in force.
    pub async fn sources(&self) -> Vec<Arc<TokenSource>> {
        self.applied.lock().await.sources()
    }

    /// After `shutdown` was cancelled: waits for every listener (draining) and
    /// scheduler task, current and replaced.
    pub async fn finish(&self) {
        let mut applied = self.applied.lock().await;
        let applied = &mut *applied;
        let mut tasks: Vec<JoinHandle<()>> = std::mem::take(&mut applied.retired);
        tasks.extend(applied.tokens.drain(..).map(|t| t.task));
        tasks.extend(
            [applied.proxy.take(), applied.admin.take()]
                .into_iter()
                .flatten()
                .map(|s| s.task),
        );
        for task in tasks {
            let _ = task.await;
        }
    }
}

/// Builds `config` against what runs now. Everything that can fail comes first
/// (the caller key, binding listeners for new addresses) and changes nothing;
/// then token sources are kept, replaced or started, their schedulers of the
/// replaced and removed ones stopped.
async fn build(fixed: &Fixed, config: Config, applied: &mut Applied) -> Result<Built, ApplyError> {
    let gate = Gate::of(&config.listen.key_header, &config.callers)
        .map_err(|(key, problem)| ApplyError::ClientKey { key, problem })?;
    let served = match &config.listen.tls {
        Some(tls) => Some(
            Served::load(&tls.cert, &tls.key).map_err(|e| ApplyError::Tls {
                key: e.key(),
                problem: e.to_string(),
            })?,
        ),
        None => None,
    };
    let vending = config.tokens.iter().map(|t| t.delivery.vend).collect();
    let mut bound = Vec::new();
    for role in Role::ALL {
        let addr = role.addr(&config.listen);
        if applied.listen.as_ref().map(|l| role.addr(l)) != Some(addr.clone()) {
            let (listener, local) = bind(&addr, role.key()).await?;
            bound.push((role, listener, local));
        }
    }

    let mut summary = Reloaded::default();
    summary
        .0
        .extend(replace_tokens(fixed, config.tokens, applied));
    let sources = applied.sources();
    let client = match applied.upstream.take() {
        Some((settings, client)) if upstream_connections_same(&settings, &config.proxy) => client,
        previous => {
            if previous.is_some() {
                summary.0.push("new upstream connections".into());
            }
            Upstreams::new(fixed.tls.clone(), &config.proxy)
        }
    };
    applied.upstream = Some((config.proxy, client.clone()));
    summary.0.push(format!("{} routes", config.routes.len()));
    let view = View::new(sources.clone(), &config.routes, &config.listen);
    let proxy = Arc::new(Proxy::new(
        Router::new(config.routes),
        sources,
        client,
        config.proxy,
        (gate, vending),
        fixed.lasting.clone(),
    ));
    Ok(Built {
        listen: config.listen,
        served,
        proxy,
        view,
        bound,
        summary,
    })
}

/// Keeps each token whose configuration is unchanged (its source, state and
/// generation), starts a new source for each new or changed one, stops the
/// schedulers of the changed and removed ones. What changed, in words.
fn replace_tokens(fixed: &Fixed, configs: Vec<TokenConfig>, applied: &mut Applied) -> Vec<String> {
    let mut old = std::mem::take(&mut applied.tokens);
    let (mut added, mut renewed) = (Vec::new(), Vec::new());
    for t in configs {
        let name = t.name.clone();
        let token = match old.iter().position(|o| o.source.name() == name) {
            Some(i) if old[i].source.config.same_source(&t) => old.remove(i),
            Some(i) => {
                let previous = old.remove(i);
                previous.stop.cancel();
                applied.retired.push(previous.task);
                renewed.push(name);
                spawn_token(fixed, t, true)
            }
            None => {
                added.push(name);
                spawn_token(fixed, t, false)
            }
        };
        applied.tokens.push(token);
    }
    let removed: Vec<String> = old
        .into_iter()
        .map(|t| {
            t.stop.cancel();
            applied.retired.push(t.task);
            t.source.name().to_owned()
        })
        .collect();
    [("added", added), ("changed", renewed), ("removed", removed)]
        .into_iter()
        .filter(|(_, names)| !names.is_empty())
        .map(|(what, names)| format!("tokens {what}: {}", names.join(", ")))
        .collect()
}

async fn bind(addr: &ListenAddr, what: &'static str) -> Result<(Listener, ListenAddr), ApplyError> {
    let failed = |source| ApplyError::Bind {
        addr: addr.clone(),
        what,
        source: Arc::new(source),
    };
    let listener = Listener::bind(addr).await.map_err(failed)?;
    let local = listener.local().map_err(failed)?;
    Ok((listener, local))
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
