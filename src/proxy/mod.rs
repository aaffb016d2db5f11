//! The proxy: one request in, the token added, one request (or two) out.
//!
//! Phases of a request (`Proxy::forward`), in order, each a function:
//! 1. route (`admit`): the request checks, then a configured route, or 404/400/405;
//! 2. token (`token`): read the current header value lock-free; without a valid
//!    token, join (or start) the single-flight refresh, or answer 503;
//! 3. body (`keep_body`): watch the client's body; on routes that retry, keep it up
//!    to the replay limit (an empty one on every route);
//! 4. send (`upstream_headers`, `send`): take a call from the route's rate-limit
//!    windows (`crate::quota`: wait in line for room, or 429), forward with the
//!    route's header rules and timeouts (502/504 on failure), and learn what the
//!    answer says of the limits;
//! 5. retry (`retry`): on a `retry_on` status, refresh the generation that was sent
//!    (single flight) and resend once with the new token; on a `429`/`503` whose
//!    wait is within `max_wait`, wait it out and resend once (`rate_limited`);
//! 6. respond (`respond`): strip hop-by-hop headers, rewrite `Location`, stream the
//!    body back (next-page links, or every upstream URL, turned into proxy URLs as
//!    the route's `rewrite_links` says).
//!
//! A `CONNECT` to a routed host, with `[intercept]` configured, is answered with
//! `200` and a tunnel whose TLS tokenproxy terminates (`crate::intercept`); plain
//! HTTP inside a tunnel (to port 80 also without `[intercept]`) is served as is.
//! The requests inside come back here marked [`Tunneled`] and go through the same
//! phases as `https://HOST/...` (or `http://HOST/...`) absolute-form requests.
//! Every other `CONNECT` is refused, and its connection closed.
//!
//! Length: a request's six phases, read in order; admission and `CONNECT` are in
//! files of their own.

mod admit;
mod connect;
mod gate;
mod headers;
mod paging;
mod rewrite;
mod route;
mod upstream;
mod vend;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::HeaderMap;
use http::{Method, Request, Response, Uri, Version};
use hyper::body::Incoming;

pub use gate::{Gate, Member};
pub use paging::{JsonLinks, XmlLinks};
pub use rewrite::{Rewriter, rewrite_stream};
pub use route::{Router, upstream_uri};
pub use upstream::{SendError, Upstreams};

use crate::body::{self, Prepared, ProxyBody, UpstreamBody};
use crate::config::{Credential, Inject, ProxySettings, RewriteLinks, Route, RouteUpstream};
use crate::error::ProxyError;
use crate::intercept::Interceptor;
use crate::logging::{RequestLine, RequestLog};
use crate::metrics::{Metrics, RetryOutcome, RouteMetrics};
use crate::quota::Governor;
use crate::token::{TokenSource, TokenState, Trigger};
use route::Target;

pub struct Proxy {
    router: Router,
    /// Indexed by `Route::token`.
    sources: Vec<Arc<TokenSource>>,
    upstreams: Upstreams,
    settings: ProxySettings,
    /// Who may use which tokens.
    gate: Gate,
    /// Indexed like `sources`: whether the token is vended.
    vending: Vec<bool>,
    /// Indexed like the routes.
    route_metrics: Vec<RouteMetrics>,
    /// Indexed like the routes.
    governors: Vec<Arc<Governor>>,
    /// Requests that matched no route.
    unrouted: RouteMetrics,
    /// Requests for vended tokens, when a token is vended (else counted as unrouted).
    vended: Option<RouteMetrics>,
    metrics: Arc<Metrics>,
    /// With `[intercept]`: terminates TLS in tunnels to routed hosts.
    interceptor: Option<Arc<Interceptor>>,
    log: RequestLog,
}

/// What the proxies of successive configurations share: the process's metrics,
/// interception CA, request log and what the routes learned of their rate limits.
#[derive(Clone)]
pub struct Lasting {
    pub metrics: Arc<Metrics>,
    pub interceptor: Option<Arc<Interceptor>>,
    pub log: RequestLog,
    /// Each route's rate-limit governor, kept while the route stays the same.
    pub quotas: Arc<crate::quota::Registry>,
}

/// What the log line of a request reports besides the response.
#[derive(Default)]
struct Trace {
    route: Option<usize>,
    /// A request for a vended token (`GET /tokenproxy/v1/tokens/NAME`).
    vending: bool,
    /// The caller, once its key was found.
    who: gate::Who,
    retry: Option<RetryOutcome>,
}

/// The `route` label and log field of vending requests.
const VENDING: &str = "vending";

impl Proxy {
    pub fn new(
        router: Router,
        sources: Vec<Arc<TokenSource>>,
        upstreams: Upstreams,
        settings: ProxySettings,
        (gate, vending): (Gate, Vec<bool>),
        lasting: Lasting,
    ) -> Proxy {
        let Lasting {
            metrics,
            interceptor,
            log,
            quotas,
        } = lasting;
        Proxy {
            governors: quotas.governors(router.routes(), &metrics),
            interceptor,
            log,
            route_metrics: router
                .routes()
                .iter()
                .map(|r| metrics.route(&r.name, gate.names()))
                .collect(),
            unrouted: metrics.route("none", gate.names()),
            vended: vending
                .contains(&true)
                .then(|| metrics.route(VENDING, gate.names())),
            gate,
            vending,
            metrics,
            router,
            sources,
            upstreams,
            settings,
        }
    }

    /// Each route's rate-limit governor, indexed like the routes.
    pub fn governors(&self) -> &[Arc<Governor>] {
        &self.governors
    }

    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let start = Instant::now();
        let method = req.method().clone();
        let mut trace = Trace::default();
        let route_name = |t: &Trace| match t.vending {
            true => Some(VENDING),
            false => t.route.map(|i| self.router.routes()[i].name.as_str()),
        };
        let refusal_closes = method == Method::CONNECT && req.version() < Version::HTTP_2;
        let (resp, error) = match self.forward(req, &mut trace).await {
            Ok(resp) => (resp, None),
            Err(e) => {
                let mut resp = e.response(route_name(&trace));
                if refusal_closes {
                    // What the client sends next is meant for a tunnel, not for us.
                    resp.headers_mut().insert(
                        http::header::CONNECTION,
                        http::HeaderValue::from_static("close"),
                    );
                }
                (resp, Some(e))
            }
        };
        let elapsed = start.elapsed();
        let metrics = match (trace.vending, trace.route) {
            (true, _) => self.vended.as_ref().unwrap_or(&self.unrouted),
            (false, Some(i)) => &self.route_metrics[i],
            (false, None) => &self.unrouted,
        };
        metrics.observe(trace.who, resp.status(), elapsed);
        if let Some(outcome) = trace.retry {
            metrics.retry(outcome);
        }
        let route = route_name(&trace).unwrap_or("none");
        if let Some(e) = &error {
            e.count(&self.metrics, route);
        }
        let line = RequestLine {
            level: error
                .as_ref()
                .map_or(tracing::Level::INFO, ProxyError::level),
            method: method.as_str(),
            route,
            caller: Some(&**self.gate.name(trace.who)).filter(|c| !c.is_empty()),
            status: resp.status().as_u16(),
            duration_ms: elapsed.as_micros() as f64 / 1000.0,
            retried: matches!(
                trace.retry,
                Some(RetryOutcome::Success | RetryOutcome::Rejected)
            ),
            error: error.as_ref().map(ProxyError::code),
        };
        self.log.write(&line);
        Ok(resp)
    }

    /// The phases of the module doc, in order: each a function below.
    async fn forward(
        &self,
        req: Request<Incoming>,
        trace: &mut Trace,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        if req.method() == Method::CONNECT {
            return self.connect(req, trace);
        }
        let (mut parts, body) = req.into_parts();
        let (target, declared) = match self.admit(&mut parts, trace)? {
            admit::Admitted::Route { target, declared } => (target, declared),
            admit::Admitted::Own => {
                trace.vending = true;
                return self.vend(&parts, trace.who).await;
            }
        };
        let target = &target;
        trace.route = Some(target.route);
        let route = &self.router.routes()[target.route];
        self.gate.allow(trace.who, route.token)?;
        let source = &self.sources[route.token];
        let refuses_identity = upstream_headers(route, &mut parts.headers);
        let state = token(source, route.inject).await?;
        let kept = self
            .keep_body(route, body, declared, &parts.headers)
            .await?;
        let out = Outgoing {
            method: &parts.method,
            uri: &parts.uri,
            target,
            route,
            source,
            governor: &self.governors[target.route],
            quota_key: route.rate.key.of(target.rest(&parts.uri)),
        };
        let sent = match self.send(&out, &state, parts.headers, kept.first).await {
            Err(_) if kept.watch.fault().is_some() => return Err(self.body_error(&kept.watch)),
            other => other?,
        };
        let (resp, base_url) = self.retry(&out, &state, sent, kept.replay, trace).await?;
        Ok(respond(&out, resp, &base_url, refuses_identity))
    }

    fn body_error(&self, watch: &body::BodyWatch) -> ProxyError {
        match watch.fault() {
            Some(body::BodyFault::TooLarge) => ProxyError::TooLarge,
            Some(body::BodyFault::Stalled) => ProxyError::ClientTimeout(self.settings.body_timeout),
            None => ProxyError::ClientBody,
        }
    }

    /// Phase 3: the client's body, watched (size, stalls); on routes that retry,
    /// kept up to the replay limit with a copy of the headers for a resend (an
    /// empty body on every route).
    async fn keep_body(
        &self,
        route: &Route,
        body: Incoming,
        declared: Option<u64>,
        headers: &HeaderMap,
    ) -> Result<KeptBody, ProxyError> {
        // A body of unknown length is counted as it streams.
        let limit = self
            .settings
            .max_request_body
            .filter(|_| declared.is_none());
        let (body, watch) = body::ClientBody::new(body, self.settings.body_timeout, limit);
        // Routes that never retry stream bodies; a request without one (a `GET`) is
        // kept all the same, for a resend after a `429` or `503`.
        let prepared = if route.retry_on.is_empty() && !hyper::body::Body::is_end_stream(&body) {
            Prepared::Streaming(ProxyBody::Client(body))
        } else {
            body::prepare(body, self.settings.replay_body_limit)
                .await
                .map_err(|_| self.body_error(&watch))?
        };
        let (first, replay) = match prepared {
            Prepared::Replayable(bytes) => {
                if self.too_large(bytes.len() as u64) {
                    return Err(ProxyError::TooLarge);
                }
                let again = (bytes.clone(), headers.clone());
                (ProxyBody::full(bytes), Some(again))
            }
            Prepared::Streaming(body) => (body, None),
        };
        Ok(KeptBody {
            first,
            replay,
            watch,
        })
    }

    /// Phase 5: on a `retry_on` status the token was refused: refresh the
    /// generation that was sent (single flight) either way, so that the next
    /// request works; resend once a request whose body was kept.
    async fn retry(
        &self,
        out: &Outgoing<'_>,
        state: &TokenState,
        sent: (Response<UpstreamBody>, String),
        replay: Option<(bytes::Bytes, HeaderMap)>,
        trace: &mut Trace,
    ) -> Result<(Response<UpstreamBody>, String), ProxyError> {
        let route = out.route;
        if !route.retry_on.contains(&sent.0.status()) {
            return self.rate_limited(out, state, sent, replay, trace).await;
        }
        let generation = state.generation();
        let fresh = out
            .source
            .refresh_for_caller(generation, Trigger::Reactive)
            .await
            .ok()
            .filter(|s| s.generation() != generation && s.credential(route.inject).is_some());
        if fresh.is_none() {
            out.source.mark_refused(generation);
        }
        let (outcome, answer) = match (replay, fresh) {
            (_, None) => (RetryOutcome::RefreshFailed, sent),
            (None, Some(_)) => (RetryOutcome::NotReplayable, sent),
            (Some((bytes, headers)), Some(fresh)) => {
                drop(sent);
                let again = self
                    .send(out, &fresh, headers, ProxyBody::full(bytes))
                    .await?;
                let outcome = if route.retry_on.contains(&again.0.status()) {
                    RetryOutcome::Rejected
                } else {
                    RetryOutcome::Success
                };
                (outcome, again)
            }
        };
        trace.retry = Some(outcome);
        Ok(answer)
    }

    /// Phase 5 for a `429` or `503` whose `Retry-After` is within the route's
    /// `max_wait`: a request whose body was kept waits it out (the governor holds
    /// it, in line with the route's other requests) and is sent once more.
    /// Anything else goes back as it came.
    async fn rate_limited(
        &self,
        out: &Outgoing<'_>,
        state: &TokenState,
        sent: (Response<UpstreamBody>, String),
        replay: Option<(bytes::Bytes, HeaderMap)>,
        trace: &mut Trace,
    ) -> Result<(Response<UpstreamBody>, String), ProxyError> {
        let wait = sent.0.extensions().get::<RetryAfter>().map(|r| r.0);
        let Some((bytes, headers)) =
            replay.filter(|_| wait.is_some_and(|w| w <= out.route.rate.max_wait))
        else {
            return Ok(sent);
        };
        drop(sent);
        let again = self
            .send(out, state, headers, ProxyBody::full(bytes))
            .await?;
        trace.retry = Some(RetryOutcome::RateLimited);
        Ok(again)
    }

    /// Sends one request with `state`'s credential to the route's upstream (which,
    /// for `{token.FIELD}` routes, `state` names). Returns the upstream's base URL too,
    /// for rewriting `Location`.
    async fn send(
        &self,
        out: &Outgoing<'_>,
        state: &TokenState,
        headers: HeaderMap,
        body: ProxyBody,
    ) -> Result<(Response<UpstreamBody>, String), ProxyError> {
        // A call taken from the route's rate-limit windows (waiting in line for
        // room), and what the answer says of them learned.
        let permit =
            out.governor
                .admit(out.quota_key)
                .await
                .map_err(|e| ProxyError::QuotaExhausted {
                    retry_after: e.retry_after,
                })?;
        let (mut resp, base_url) = self.send_now(out, state, headers, body).await?;
        if let Some(wait) = permit.observe(resp.status(), resp.headers()) {
            resp.extensions_mut().insert(RetryAfter(wait));
        }
        Ok((resp, base_url))
    }

    /// Sends one request now, its rate-limit call taken.
    async fn send_now(
        &self,
        out: &Outgoing<'_>,
        state: &TokenState,
        mut headers: HeaderMap,
        body: ProxyBody,
    ) -> Result<(Response<UpstreamBody>, String), ProxyError> {
        let upstream = match &out.route.upstream {
            RouteUpstream::Static(u) => u,
            RouteUpstream::Dynamic { index, .. } => {
                state.upstream(*index).ok_or(ProxyError::NoUpstream)?
            }
        };
        let credential = state
            .credential(out.route.inject)
            .ok_or(ProxyError::NoValidToken {
                retry_after: Duration::from_secs(1),
                cause: state.cause(),
            })?;
        let query = match (credential, &out.source.config.injects[out.route.inject]) {
            (Credential::Header(name, value), _) => {
                headers.insert(name.clone(), value.clone());
                None
            }
            (Credential::Query(pair), Inject::Query { param }) => {
                Some((param.as_str(), pair.as_str()))
            }
            (Credential::Query(_), Inject::Header { .. }) => None,
        };
        let uri = route::upstream_uri(upstream, out.target.rest(out.uri), out.uri.query(), query)
            .map_err(|_| ProxyError::BadPath)?;
        let mut req = Request::new(body);
        *req.method_mut() = out.method.clone();
        *req.uri_mut() = uri;
        *req.headers_mut() = headers;
        let timeout = self.settings.response_timeout;
        // Boxed, as hyper's client boxes its futures: a connection's request future
        // stays small while it waits (thousands of them may wait at once).
        match tokio::time::timeout(timeout, Box::pin(self.upstreams.send(req))).await {
            Ok(Ok(resp)) => Ok((resp, upstream.base_url.clone())),
            Ok(Err(e)) => {
                tracing::warn!(error = %crate::error::chain(&e), "upstream request failed");
                Err(match e {
                    SendError::Connect(_) => ProxyError::UpstreamUnreachable,
                    SendError::Http(_) => ProxyError::UpstreamFailed,
                })
            }
            Err(_) => Err(ProxyError::UpstreamTimeout(timeout)),
        }
    }
}

/// How long a `429`/`503` answer's `Retry-After` asks to wait (an extension of
/// the upstream's response, set by [`Proxy::send`]).
#[derive(Clone, Copy)]
struct RetryAfter(Duration);

/// What phase 3 made of the client's body: what to send first, a copy to resend
/// (with the headers as they were), and the watch that tells why a send failed.
struct KeptBody {
    first: ProxyBody,
    replay: Option<(bytes::Bytes, HeaderMap)>,
    watch: body::BodyWatch,
}

/// Phase 4's header rules, applied before the token is read: hop-by-hop and
/// identifying headers out, the route's static headers in, and, where bodies are
/// rewritten, only codings tokenproxy can decode asked of the upstream. Returns
/// whether the client refuses an identity body.
fn upstream_headers(route: &Route, headers: &mut HeaderMap) -> bool {
    headers::to_upstream(headers);
    let rewrites = route.rewrite_links != RewriteLinks::Off;
    let refuses_identity =
        rewrites && rewrite::refuses_identity(headers.get(http::header::ACCEPT_ENCODING));
    if rewrites {
        rewrite::accept_encoding_for_upstream(headers);
    }
    for (name, value) in &route.headers {
        headers.insert(name.clone(), value.clone());
    }
    refuses_identity
}

/// Phase 6: the upstream's answer for the client: its header rules, and links
/// turned back into proxy URLs as the route's `rewrite_links` says.
fn respond(
    out: &Outgoing<'_>,
    resp: Response<UpstreamBody>,
    base_url: &str,
    refuses_identity: bool,
) -> Response<ProxyBody> {
    let route = out.route;
    let (mut parts, body) = resp.into_parts();
    let proxy_base = out.target.proxy_base.as_deref();
    headers::to_client(&mut parts.headers, base_url, proxy_base);
    let rewrites = route.rewrite_links != RewriteLinks::Off;
    // Inside an intercepted tunnel the client's base is the upstream's own. A range
    // of a document cannot be rewritten: its offsets are the upstream's.
    let body = match proxy_base.filter(|base| rewrites && *base != base_url) {
        Some(base)
            if has_body(out.method, parts.status)
                && parts.status != http::StatusCode::PARTIAL_CONTENT =>
        {
            rewrite::link_headers(&mut parts.headers, base_url, base);
            let bases = (base_url, base);
            rewrite::body(
                &mut parts.headers,
                body,
                route.rewrite_links,
                bases,
                refuses_identity,
            )
        }
        _ => ProxyBody::Upstream(body),
    };
    Response::from_parts(parts, body)
}

struct Outgoing<'a> {
    method: &'a Method,
    uri: &'a Uri,
    target: &'a Target,
    route: &'a Route,
    source: &'a Arc<TokenSource>,
    governor: &'a Arc<Governor>,
    /// Whose rate-limit windows the request spends.
    quota_key: &'a str,
}

/// A token state with a valid credential for `inject`; refreshes (single flight)
/// when there is none.
async fn token(source: &Arc<TokenSource>, inject: usize) -> Result<Arc<TokenState>, ProxyError> {
    usable(source, |s| s.credential(inject).is_some()).await
}

/// The current token state if `ok` says it can be used, else the state after the
/// single-flight refresh; `503` when even that cannot be used.
async fn usable(
    source: &Arc<TokenSource>,
    ok: impl Fn(&TokenState) -> bool,
) -> Result<Arc<TokenState>, ProxyError> {
    let state = source.current_full();
    if ok(&state) {
        return Ok(state);
    }
    match source
        .refresh_for_caller(state.generation(), Trigger::Reactive)
        .await
    {
        Ok(state) if ok(&state) => Ok(state),
        Ok(state) => Err(ProxyError::NoValidToken {
            retry_after: Duration::from_secs(1),
            cause: state.cause(),
        }),
        Err(u) => Err(ProxyError::NoValidToken {
            retry_after: u.retry_after,
            cause: u.cause,
        }),
    }
}

/// Whether a response to `method` with `status` carries a body to rewrite.
fn has_body(method: &Method, status: http::StatusCode) -> bool {
    method != Method::HEAD
        && !status.is_informational()
        && status != http::StatusCode::NO_CONTENT
        && status != http::StatusCode::NOT_MODIFIED
}
