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

use super::fixed::{Fixed, Frozen};
use super::tokens::{Token, replace_tokens};
use crate::admin::{Admin, View};
use crate::certs::{CertificateStatus, Served};
use crate::config::{Config, Listen, ListenAddr, ProxySettings};
use crate::proxy::{Gate, Proxy, Router, Upstreams};
use crate::reload::{ApplyError, Outcome, ReloadError, ReloadStatus, Reloaded, Request};
use crate::server::{self, Listener, Reporting};
use crate::token::TokenSource;

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
    /// The digest of the proxy listener's certificate and key in force.
    served: Option<Vec<u8>>,
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

/// How often the watcher looks while the listener has no TLS (a reload may add it).
const DEFAULT_CHECK: Duration = Duration::from_secs(60);

/// Runs configurations: the first at start, then each reload.
pub(crate) struct Wiring {
    fixed: Fixed,
    proxy: Arc<ArcSwap<Proxy>>,
    /// The proxy listener's TLS (`listen.tls_cert`): what a new connection gets.
    proxy_tls: server::ServedTls,
    /// What `/status` shows of `proxy_tls`'s certificate.
    certificate: Arc<CertificateStatus>,
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
        let certificate = Arc::new(CertificateStatus::default());
        let admin = Admin::new(
            View::default(),
            fixed.store.kind(),
            Arc::clone(&fixed.store_health),
            Arc::clone(&certificate),
            Arc::clone(&fixed.metrics),
            reload,
        );
        let wiring = Arc::new(Wiring {
            proxy: Arc::new(ArcSwap::new(Arc::clone(&built.proxy))),
            proxy_tls: server::ServedTls::default(),
            certificate,
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
        tokio::spawn(Arc::clone(&wiring).watch_certificate());
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
        self.status.record(&outcome);
        match &outcome {
            Ok(summary) => tracing::info!(summary = %summary, "configuration reloaded"),
            Err(e) => tracing::error!(
                error = %e,
                "configuration reload refused; the running configuration stays in force"
            ),
        }
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
        self.serve_tls(applied, served);
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

    /// Reads the proxy listener's certificate and key again (`listen.tls_check`), and
    /// serves a renewed pair (cert-manager renews a Secret in place); a pair that
    /// does not load keeps the one in force, and is logged once.
    async fn watch_certificate(self: Arc<Self>) {
        let every = |applied: &Applied| {
            applied
                .listen
                .as_ref()
                .and_then(|l| l.tls.as_ref())
                .map_or(DEFAULT_CHECK, |t| t.check)
        };
        let mut wait = every(&*self.applied.lock().await);
        loop {
            tokio::select! {
                _ = self.fixed.shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            let mut applied = self.applied.lock().await;
            wait = every(&applied);
            let Some(tls) = applied.listen.as_ref().and_then(|l| l.tls.clone()) else {
                continue;
            };
            match Served::load(&tls.cert, &tls.key) {
                Ok(served) if Some(&served.digest) != applied.served.as_ref() => {
                    let valid_until = served.not_after;
                    // In force (and in `/status`) before the log line says so.
                    self.serve_tls(&mut applied, Some(served));
                    tracing::info!(
                        valid_until = %crate::clock::rfc3339(valid_until),
                        "the proxy listener's certificate changed on disk; new connections get it"
                    );
                }
                Ok(_) => {
                    self.certificate.on_disk(None);
                }
                Err(e) => {
                    let text = format!("{}: {e}", e.key());
                    if self.certificate.on_disk(Some(text.clone())) {
                        tracing::warn!(error = %text, "the proxy listener's certificate on disk does not load; the one in force keeps serving");
                    }
                }
            }
        }
    }

    /// Puts `served` in force for new connections of the proxy listener.
    fn serve_tls(&self, applied: &mut Applied, served: Option<Served>) {
        self.fixed
            .metrics
            .listen_certificate("proxy", served.as_ref().map(|s| s.not_after));
        self.certificate
            .served(served.as_ref().map(|s| s.not_after));
        applied.served = served.as_ref().map(|s| s.digest.clone());
        self.proxy_tls.store(served.map(|s| s.config));
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
        for t in applied.tokens.drain(..) {
            tasks.push(t.task);
            tasks.extend(t.sink_task);
        }
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
    for t in &config.tokens {
        crate::token::sink::prepare(&t.name, &t.delivery.sinks).map_err(ApplyError::Sink)?;
    }
    let mut bound = Vec::new();
    for role in Role::ALL {
        let addr = role.addr(&config.listen);
        if applied.listen.as_ref().map(|l| role.addr(l)) != Some(addr.clone()) {
            let (listener, local) = bind(&addr, role.key()).await?;
            bound.push((role, listener, local));
        }
    }

    let mut summary = Reloaded::default();
    summary.0.extend(replace_tokens(
        fixed,
        config.tokens,
        &mut applied.tokens,
        &mut applied.retired,
    ));
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
    let view = view.with_quotas(proxy.governors());
    Ok(Built {
        listen: config.listen,
        served,
        proxy,
        view,
        bound,
        summary,
    })
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
