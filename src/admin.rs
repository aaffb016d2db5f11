//! The admin listener: liveness, readiness, per-token status, Prometheus metrics,
//! manual refresh, configuration reload.
//!
//! It reports state; it never shows a token, a refresh token, a client secret or a
//! full upstream URL. It does not change anything except through
//! `POST /tokens/NAME/refresh`, which takes the same single-flight path as a 401,
//! and `POST /reload`, which does what `SIGHUP` does.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{Value, json};

use crate::body::ProxyBody;
use crate::clock::{ms_to_time, rfc3339};
use crate::config::{Listen, Route, RouteUpstream};
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::secret::SecretRef;
use crate::token::{InDoubtNow, TokenSource};

pub struct Admin {
    view: arc_swap::ArcSwap<View>,
    metrics: Arc<Metrics>,
    store_kind: &'static str,
    store_health: Arc<crate::store::StoreHealth>,
    certificate: Arc<crate::certs::CertificateStatus>,
    reload: crate::reload::ReloadHandle,
}

/// What the admin endpoints report on: the tokens and routes of the configuration
/// in force, and who may use the POST endpoints; replaced whole by a reload.
#[derive(Default)]
pub struct View {
    sources: Vec<Arc<TokenSource>>,
    /// Per route: name, prefix, upstream host, token index; for `/status`.
    routes: Vec<(String, Option<String>, String, usize)>,
    /// Per route: its rate-limit governor (windows for `/status`).
    quotas: Vec<Arc<crate::quota::Governor>>,
    /// `listen.admin_key`, read at each use (a rotated Secret takes effect).
    key: Option<SecretRef>,
    /// Whether the admin listener is on loopback: without a key, the POST
    /// endpoints answer only there.
    loopback: bool,
}

impl View {
    /// The same view, with the routes' rate-limit governors to show.
    pub fn with_quotas(self, quotas: &[Arc<crate::quota::Governor>]) -> View {
        View {
            quotas: quotas.to_vec(),
            ..self
        }
    }

    pub fn new(sources: Vec<Arc<TokenSource>>, routes: &[Route], listen: &Listen) -> View {
        let routes = routes
            .iter()
            .map(|r| {
                (
                    r.name.clone(),
                    r.prefix.clone(),
                    match &r.upstream {
                        RouteUpstream::Static(u) => u.authority.host().to_owned(),
                        RouteUpstream::Dynamic { .. } => "(from the token response)".to_owned(),
                    },
                    r.token,
                )
            })
            .collect();
        View {
            sources,
            routes,
            quotas: Vec::new(),
            key: listen.admin_key.clone(),
            loopback: listen.admin.ip().is_loopback(),
        }
    }

    /// Whether `req` may use a POST endpoint: it carries the admin key
    /// (compared in constant time), or there is none and the listener is loopback.
    fn authorize(&self, req: &Request<Incoming>) -> Result<(), ProxyError> {
        let Some(key) = &self.key else {
            return match self.loopback {
                true => Ok(()),
                false => Err(ProxyError::AdminKeyRequired),
            };
        };
        let key = key.resolve().map_err(|e| {
            tracing::error!(error = %e, "cannot read listen.admin_key; refusing the admin request");
            ProxyError::AdminUnauthorized
        })?;
        let presented = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .unwrap_or_default();
        match bool::from(subtle::ConstantTimeEq::ct_eq(
            presented,
            key.expose().as_bytes(),
        )) {
            true => Ok(()),
            false => Err(ProxyError::AdminUnauthorized),
        }
    }

    /// Tokens that some route uses: those must be valid for the proxy to be ready.
    fn routed(&self) -> impl Iterator<Item = &Arc<TokenSource>> {
        self.sources
            .iter()
            .enumerate()
            .filter(|(i, _)| self.routes.iter().any(|r| r.3 == *i))
            .map(|(_, s)| s)
    }
}

impl Admin {
    pub fn new(
        view: View,
        store_kind: &'static str,
        store_health: Arc<crate::store::StoreHealth>,
        certificate: Arc<crate::certs::CertificateStatus>,
        metrics: Arc<Metrics>,
        reload: crate::reload::ReloadHandle,
    ) -> Admin {
        Admin {
            view: arc_swap::ArcSwap::from_pointee(view),
            metrics,
            reload,
            store_kind,
            store_health,
            certificate,
        }
    }

    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let endpoint = Endpoint::parse(req.uri().path());
        let method = req.method();
        let view = self.view.load_full();
        let resp = match endpoint {
            // Proxy requests (CONNECT, absolute-form) have no business here: refused,
            // and the connection closed.
            _ if method == Method::CONNECT => Err(ProxyError::AdminNotAProxy { connect: true }),
            _ if req.uri().scheme().is_some() || req.uri().authority().is_some() => {
                Err(ProxyError::AdminNotAProxy { connect: false })
            }
            Endpoint::NotFound => Err(ProxyError::AdminNotFound),
            e if method != e.method() && !(method == Method::HEAD && e.method() == Method::GET) => {
                Err(ProxyError::MethodNotAllowed {
                    method: method.as_str().chars().take(32).collect(),
                    allow: e.allow(),
                })
            }
            Endpoint::Healthz => Ok(json_response(StatusCode::OK, json!({"status": "ok"}))),
            Endpoint::Readyz => Ok(self.readyz()),
            Endpoint::Status => Ok(json_response(StatusCode::OK, self.status())),
            Endpoint::Metrics => {
                let view = self.view.load();
                let mut resp = Response::new(ProxyBody::full(
                    self.metrics.render(view.sources.iter().map(|s| s.gauges())),
                ));
                resp.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                Ok(resp)
            }
            Endpoint::Refresh(_) | Endpoint::Reload if let Err(e) = view.authorize(&req) => Err(e),
            Endpoint::Refresh(name) => self.refresh(name).await,
            Endpoint::Reload => Ok(match self.reload.reload().await {
                Ok(summary) => json_response(
                    StatusCode::OK,
                    json!({"result": "success", "summary": summary.to_string()}),
                ),
                Err(e) => return Ok(self.refused(ProxyError::ReloadRefused(e.to_string()))),
            }),
        };
        Ok(resp.unwrap_or_else(|e| self.refused(e)))
    }

    fn refused(&self, e: ProxyError) -> Response<ProxyBody> {
        e.count(&self.metrics, "admin");
        e.response(None)
    }

    /// Puts the tokens and routes of a reloaded configuration in force.
    pub fn show(&self, view: View) {
        self.view.store(Arc::new(view));
    }

    fn readyz(&self) -> Response<ProxyBody> {
        let view = self.view.load();
        let not_ready: Vec<Value> = view
            .routed()
            .filter(|s| {
                let state = s.current();
                !state.valid_for(Duration::ZERO) || state.refused
            })
            .map(|s| json!({"token": s.name(), "state": state_name(s)}))
            .collect();
        if not_ready.is_empty() {
            json_response(StatusCode::OK, json!({"status": "ready"}))
        } else {
            json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"status": "not_ready", "tokens": not_ready}),
            )
        }
    }

    fn status(&self) -> Value {
        let view = self.view.load();
        let tokens: serde_json::Map<String, Value> = view
            .sources
            .iter()
            .map(|s| (s.name().to_owned(), token_status(s, self.store_kind)))
            .collect();
        let routes: Vec<Value> = view
            .routes
            .iter()
            .enumerate()
            .map(|(i, (name, prefix, host, token))| {
                let windows = view.quotas.get(i).map(|g| g.snapshot()).unwrap_or_default();
                json!({"name": name, "prefix": prefix, "upstream_host": host, "token": view.sources[*token].name(), "rate_limits": windows})
            })
            .collect();
        let (up, last_error) = self.store_health.get();
        let store = json!({
            "kind": self.store_kind,
            "up": up,
            "last_error": last_error.as_ref().map(|(_, e)| e),
            "last_error_at": last_error.map(|(at, _)| rfc3339(at)),
        });
        json!({
            "tokens": tokens,
            "routes": routes,
            "store": store,
            "listener_certificate": self.certificate.json(),
            "reload": self.reload.status(),
        })
    }

    async fn refresh(&self, name: &str) -> Result<Response<ProxyBody>, ProxyError> {
        let view = self.view.load_full();
        let Some(source) = view.sources.iter().find(|s| s.name() == name) else {
            return Err(ProxyError::UnknownToken(name.chars().take(64).collect()));
        };
        // A person's refresh still obeys min_interval and the backoff: the admin
        // port must not be a way to spend a provider's quota or rotate the refresh
        // token at will.
        if let Some(retry_after) = source.too_soon_for_manual() {
            return Err(ProxyError::RefreshTooSoon { retry_after });
        }
        let generation = source.current().generation();
        let status = match source.refresh_for_person(generation).await {
            Ok(_) => StatusCode::OK,
            Err(_) => StatusCode::BAD_GATEWAY,
        };
        Ok(json_response(status, token_status(source, self.store_kind)))
    }
}

/// The admin endpoints, parsed from a path once.
#[derive(Debug, PartialEq, Eq)]
enum Endpoint<'a> {
    Healthz,
    Readyz,
    Status,
    Metrics,
    Refresh(&'a str),
    Reload,
    NotFound,
}

impl<'a> Endpoint<'a> {
    fn parse(path: &'a str) -> Endpoint<'a> {
        match path {
            "/healthz" => Endpoint::Healthz,
            "/readyz" => Endpoint::Readyz,
            "/status" => Endpoint::Status,
            "/metrics" => Endpoint::Metrics,
            "/reload" => Endpoint::Reload,
            _ => match path
                .strip_prefix("/tokens/")
                .and_then(|rest| rest.strip_suffix("/refresh"))
            {
                Some(name) if !name.is_empty() && !name.contains('/') => Endpoint::Refresh(name),
                _ => Endpoint::NotFound,
            },
        }
    }

    fn method(&self) -> Method {
        match self {
            Endpoint::Refresh(_) | Endpoint::Reload => Method::POST,
            _ => Method::GET,
        }
    }

    fn allow(&self) -> &'static str {
        match self {
            Endpoint::Refresh(_) | Endpoint::Reload => "POST",
            _ => "GET, HEAD",
        }
    }
}

/// `valid`, `refreshing`, `expired`, `failed` (retrying), `needs_login` (terminal),
/// `refused` (the upstream refused it and no new one could be had) or `pending`
/// (nothing obtained yet).
fn state_name(source: &TokenSource) -> &'static str {
    let s = source.current();
    match (&s.failure, s.valid_for(Duration::ZERO)) {
        (Some(f), _) if f.terminal => "needs_login",
        _ if source.is_refreshing() => "refreshing",
        _ if s.refused => "refused",
        (_, true) => "valid",
        (Some(_), false) => "failed",
        (None, false) if s.record.is_some() => "expired",
        (None, false) => "pending",
    }
}

fn token_status(source: &TokenSource, store_kind: &str) -> Value {
    let s = source.current();
    let record = s.record.as_ref();
    json!({
        "state": state_name(source),
        "grant": source.config.grant.as_str(),
        "generation": s.generation(),
        "expires_at": record.map(|r| rfc3339(ms_to_time(r.expires_at_ms))),
        "issued_at": record.map(|r| rfc3339(ms_to_time(r.issued_at_ms))),
        "last_refresh": s.last_refresh.map(|(at, trigger)| json!({"at": rfc3339(at), "trigger": trigger.as_str()})),
        "last_error": s.failure.as_ref().map(|f| f.message.clone()),
        "last_error_source": s.failure.as_ref().map(|f| f.cause.as_str()),
        "next_attempt_in_s": s.next_attempt(source.config.min_interval).map(|at| at.saturating_duration_since(std::time::Instant::now()).as_secs()),
        "unsaved": s.unsaved,
        "in_doubt": source.in_doubt().map(|d| match d {
            InDoubtNow::Own => json!({"by": "this instance", "detail": "new tokens are held in memory until the store takes them; the other instances do not present the spent refresh token meanwhile"}),
            InDoubtNow::Another(since) => json!({"by": "another instance", "seen_since": rfc3339(since), "detail": "another instance sent this refresh token and stored no answer yet; waiting for its result"}),
        }),
        "store": store_kind,
    })
}

fn json_response(status: StatusCode, body: Value) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_parses_without_panicking() {
        assert_eq!(Endpoint::parse("/tokens/a/refresh"), Endpoint::Refresh("a"));
        for p in [
            "/tokens/refresh",
            "/tokens//refresh",
            "/tokens/a/b/refresh",
            "/tokens/",
            "/tokens",
            "/",
            "",
            "/tokens/refresh/refresh/x",
        ] {
            assert_eq!(Endpoint::parse(p), Endpoint::NotFound, "{p}");
        }
    }
}
