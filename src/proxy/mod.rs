//! The proxy: one request in, the token added, one request (or two) out.
//!
//! Phases of a request (`Proxy::forward`), in order, each a function:
//! 1. route (`admit`): the request checks, then a configured route, or 404/400/405;
//! 2. token (`token`): read the current header value lock-free; without a valid
//!    token, join (or start) the single-flight refresh, or answer 503;
//! 3. body (`keep_body`): watch the client's body; on routes that retry, keep it up
//!    to the replay limit;
//! 4. send (`upstream_headers`, `send`): forward with the route's header rules and
//!    timeouts (502/504 on failure);
//! 5. retry (`retry`): on a `retry_on` status, refresh the generation that was sent
//!    (single flight) and resend once with the new token;
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

mod headers;
mod paging;
mod rewrite;
mod route;
mod upstream;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{HOST, HeaderMap};
use http::{Method, Request, Response, Uri, Version};
use hyper::body::Incoming;

pub use paging::{JsonLinks, XmlLinks};
pub use rewrite::{Rewriter, rewrite_stream};
pub use route::{Router, upstream_uri};
pub use upstream::{SendError, Upstreams};

use crate::body::{self, Prepared, ProxyBody, UpstreamBody};
use crate::config::{Credential, Inject, ProxySettings, RewriteLinks, Route, RouteUpstream};
use crate::error::ProxyError;
use crate::intercept::Interceptor;
use crate::metrics::{Metrics, RetryOutcome, RouteMetrics};
use crate::token::{TokenSource, TokenState, Trigger};
use crate::tunnel::{Handoff, TunnelSlot, Tunneled};
use route::{Miss, Target};

pub struct Proxy {
    router: Router,
    /// Indexed by `Route::token`.
    sources: Vec<Arc<TokenSource>>,
    upstreams: Upstreams,
    settings: ProxySettings,
    /// When set, callers must present this key.
    client_key: Option<CallerKey>,
    /// Indexed like the routes.
    route_metrics: Vec<RouteMetrics>,
    /// Requests that matched no route.
    unrouted: RouteMetrics,
    metrics: Arc<Metrics>,
    /// With `[intercept]`: terminates TLS in tunnels to routed hosts.
    interceptor: Option<Arc<Interceptor>>,
}

/// What the log line of a request reports besides the response.
#[derive(Default)]
struct Trace {
    route: Option<usize>,
    retry: Option<RetryOutcome>,
}

impl Proxy {
    pub fn new(
        router: Router,
        sources: Vec<Arc<TokenSource>>,
        upstreams: Upstreams,
        settings: ProxySettings,
        client_key: Option<CallerKey>,
        metrics: Arc<Metrics>,
        interceptor: Option<Arc<Interceptor>>,
    ) -> Proxy {
        Proxy {
            interceptor,
            client_key,
            route_metrics: router
                .routes()
                .iter()
                .map(|r| metrics.route(&r.name))
                .collect(),
            unrouted: metrics.route("none"),
            metrics,
            router,
            sources,
            upstreams,
            settings,
        }
    }

    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let start = Instant::now();
        let method = req.method().clone();
        let mut trace = Trace::default();
        let route_name = |t: &Trace| t.route.map(|i| self.router.routes()[i].name.as_str());
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
        let metrics = trace
            .route
            .map_or(&self.unrouted, |i| &self.route_metrics[i]);
        metrics.observe(resp.status(), elapsed);
        if let Some(outcome) = trace.retry {
            metrics.retry(outcome);
        }
        let route = route_name(&trace).unwrap_or("none");
        if let Some(e) = &error {
            self.metrics.error(route, e.code(), e.source().as_str());
        }
        let line = crate::logging::RequestLine {
            level: error
                .as_ref()
                .map_or(tracing::Level::INFO, ProxyError::level),
            method: method.as_str(),
            route,
            status: resp.status().as_u16(),
            duration_ms: elapsed.as_micros() as f64 / 1000.0,
            retried: matches!(
                trace.retry,
                Some(RetryOutcome::Success | RetryOutcome::Rejected)
            ),
            error: error.as_ref().map(ProxyError::code),
        };
        if crate::enabled_at!(line.level) && !crate::logging::request_line(&line) {
            crate::log_at!(
                line.level,
                method = %line.method,
                route = line.route,
                status = line.status,
                duration_ms = line.duration_ms,
                retried = line.retried,
                error = line.error,
                "request"
            );
        }
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
        let admitted = self.admit(&mut parts)?;
        let target = &admitted.target;
        trace.route = Some(target.route);
        let route = &self.router.routes()[target.route];
        let source = &self.sources[route.token];
        let refuses_identity = upstream_headers(route, &mut parts.headers);
        let state = token(source, route.inject).await?;
        let kept = self
            .keep_body(route, body, admitted.declared, &parts.headers)
            .await?;
        let out = Outgoing {
            method: &parts.method,
            uri: &parts.uri,
            target,
            route,
            source,
        };
        let sent = match self.send(&out, &state, parts.headers, kept.first).await {
            Err(_) if kept.watch.fault().is_some() => return Err(self.body_error(&kept.watch)),
            other => other?,
        };
        let (resp, base_url) = self.retry(&out, &state, sent, kept.replay, trace).await?;
        Ok(respond(&out, resp, &base_url, refuses_identity))
    }

    /// Phase 1: the request checks that precede routing (method, target, `Host`,
    /// caller key, upgrade, declared length), then the route.
    fn admit(&self, parts: &mut http::request::Parts) -> Result<Admitted, ProxyError> {
        // TRACE (and IIS's TRACK) echo the request, injected token included, back
        // to the caller: refused whatever their case (methods are case-sensitive,
        // but a server upstream may not be).
        let m = parts.method.as_str();
        if m.eq_ignore_ascii_case("TRACE") || m.eq_ignore_ascii_case("TRACK") {
            return Err(ProxyError::proxy_method(&parts.method));
        }
        let tunneled = parts.extensions.remove::<Tunneled>();
        check_target(&parts.uri)?;
        check_host(&parts.headers, parts.version)?;
        match (&self.client_key, &tunneled) {
            (Some(key), None) => key.check(&mut parts.headers)?,
            // The tunnel's CONNECT presented the key; a copy inside goes nowhere.
            (Some(key), Some(_)) => {
                parts.headers.remove(&key.header);
            }
            (None, _) => {}
        }
        if wants_upgrade(&parts.headers) {
            return Err(ProxyError::Upgrade);
        }
        let declared = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| self.too_large(len)) {
            return Err(ProxyError::TooLarge);
        }
        let target = match &tunneled {
            Some(t) => self.route_tunneled(&mut parts.uri, &parts.headers, t)?,
            None => self.route(&parts.uri, &parts.headers, parts.version)?,
        };
        Ok(Admitted { target, declared })
    }

    fn too_large(&self, len: u64) -> bool {
        self.settings.max_request_body.is_some_and(|max| len > max)
    }

    fn body_error(&self, watch: &body::BodyWatch) -> ProxyError {
        match watch.fault() {
            Some(body::BodyFault::TooLarge) => ProxyError::TooLarge,
            Some(body::BodyFault::Stalled) => ProxyError::ClientTimeout(self.settings.body_timeout),
            None => ProxyError::ClientBody,
        }
    }

    /// Phase 3: the client's body, watched (size, stalls); on routes that retry,
    /// kept up to the replay limit with a copy of the headers for a resend.
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
        let prepared = if route.retry_on.is_empty() {
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
            return Ok(sent);
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

    fn route(
        &self,
        uri: &Uri,
        headers: &HeaderMap,
        version: Version,
    ) -> Result<Target, ProxyError> {
        let host = headers.get(HOST).and_then(|h| h.to_str().ok());
        let result = if version == Version::HTTP_2 {
            // HTTP/2 always carries :authority; it names a route host or the proxy itself.
            self.router.absolute(uri, "http").or_else(|_| {
                let authority = uri.authority().map(|a| a.as_str()).or(host);
                self.router.origin(uri, authority)
            })
        } else if uri.scheme().is_some() {
            self.router.absolute(uri, "http")
        } else {
            self.router.origin(uri, host)
        };
        result.map_err(miss)
    }

    /// Routes a request read inside a tunnel: it must name the tunnel's host (or
    /// none), and it is then the absolute-form request `https://HOST/...` (or
    /// `http://HOST/...` for plain HTTP inside), which `uri` becomes.
    fn route_tunneled(
        &self,
        uri: &mut Uri,
        headers: &HeaderMap,
        tunnel: &Tunneled,
    ) -> Result<Target, ProxyError> {
        let named = match uri.authority() {
            Some(a) => Some(a.clone()),
            None => headers
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .and_then(|h| h.parse::<http::uri::Authority>().ok()),
        };
        let (scheme, default_port) = if tunnel.tls {
            (http::uri::Scheme::HTTPS, 443)
        } else {
            (http::uri::Scheme::HTTP, 80)
        };
        if let Some(a) = named
            && crate::config::normalise_host(a.host(), a.port_u16(), default_port)
                != tunnel.authority.as_str()
        {
            return Err(ProxyError::Misdirected);
        }
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        *uri = Uri::builder()
            .scheme(scheme.clone())
            .authority(tunnel.authority.clone())
            .path_and_query(path)
            .build()
            .map_err(|_| ProxyError::BadPath)?;
        self.router.absolute(uri, scheme.as_str()).map_err(miss)
    }

    /// `CONNECT` to a routed host: a tunnel whose TLS tokenproxy terminates (with
    /// `[intercept]`), or in which the client speaks plain HTTP (undici and Node's
    /// `NODE_USE_ENV_PROXY` tunnel `http://` URLs too: `CONNECT host:80`); the
    /// first byte inside tells which. Refused with nothing opened otherwise.
    fn connect(
        &self,
        mut req: Request<Incoming>,
        trace: &mut Trace,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        // RFC 9110 §9.3.6: the target is host:port, both there.
        let authority = req.uri().authority().cloned().ok_or(ProxyError::BadHost)?;
        let Some(port) = authority.port_u16().filter(|_| port_ok(authority.as_str())) else {
            return Err(ProxyError::BadHost);
        };
        // Plain HTTP needs no CA: a tunnel to port 80 is served without [intercept].
        if self.interceptor.is_none() && port != 80 {
            tracing::info!(host = %authority, "CONNECT refused: no [intercept] configured");
            return Err(ProxyError::Connect);
        }
        // The server offers tunnels on HTTP/1.1 connections only.
        let Some(slot) = req.extensions_mut().remove::<TunnelSlot>() else {
            return Err(ProxyError::Connect);
        };
        let host = authority.host();
        if !crate::config::is_dns_host(host) || authority.as_str().contains('@') {
            tracing::info!(host = %authority, "CONNECT refused: not a routed host name");
            return Err(ProxyError::Connect);
        }
        // A route's host is its scheme's default port: 443 inside TLS, 80 in plain HTTP.
        let tls_key = crate::config::normalise_host(host, Some(port), 443);
        let plain_key = crate::config::normalise_host(host, Some(port), 80);
        let routes = self.router.routes();
        let by_host = |key: &str| routes.iter().position(|r| r.host.as_deref() == Some(key));
        // Plain HTTP inside names the host as the route does (`host` for port 80, or
        // for port 443 when the client sends HTTP where TLS was expected).
        let (route, plain_key) = by_host(&tls_key)
            .map(|r| (r, tls_key.clone()))
            .or_else(|| by_host(&plain_key).map(|r| (r, plain_key)))
            .ok_or_else(|| {
                tracing::info!(host = %tls_key, "CONNECT refused: no route names this host");
                ProxyError::Connect
            })?;
        trace.route = Some(route);
        if let Some(caller) = &self.client_key {
            caller.check(req.headers_mut())?;
        }
        let name = crate::config::dns_name(&tls_key).to_owned();
        let tls = match &self.interceptor {
            None => None,
            Some(interceptor) if !interceptor.permits(&name) => {
                tracing::warn!(
                    host = %name,
                    "CONNECT refused: the interception CA's name constraints do not cover this routed host; recreate the CA with `tokenproxy ca init --force`"
                );
                return Err(ProxyError::ConnectOutsideCa);
            }
            Some(interceptor) => {
                let config = interceptor.tls_config(&name).map_err(|e| {
                    tracing::error!(host = %name, error = %e, "cannot sign an interception certificate");
                    ProxyError::Internal
                })?;
                let authority = tls_key.parse().map_err(|_| ProxyError::Connect)?;
                Some((authority, config))
            }
        };
        slot.open(Handoff {
            upgrade: hyper::upgrade::on(&mut req),
            route: routes[route].name.clone(),
            host: name,
            plain: plain_key.parse().map_err(|_| ProxyError::Connect)?,
            tls,
        });
        Ok(Response::new(ProxyBody::full(bytes::Bytes::new())))
    }

    /// Sends one request with `state`'s credential to the route's upstream (which,
    /// for `{token.FIELD}` routes, `state` names). Returns the upstream's base URL too,
    /// for rewriting `Location`.
    async fn send(
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

fn miss(miss: Miss) -> ProxyError {
    match miss {
        Miss::NoRoute => ProxyError::NoRoute,
        Miss::BadPath => ProxyError::BadPath,
    }
}

/// What stays the same between the first attempt and a resend.
/// What phase 1 found: the route, and the length the client declared.
struct Admitted {
    target: Target,
    declared: Option<u64>,
}

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
}

/// A token state with a valid credential for `inject`; refreshes (single flight)
/// when there is none.
async fn token(source: &Arc<TokenSource>, inject: usize) -> Result<Arc<TokenState>, ProxyError> {
    let state = source.current_full();
    if state.credential(inject).is_some() {
        return Ok(state);
    }
    match source
        .refresh_for_caller(state.generation(), Trigger::Reactive)
        .await
    {
        Ok(state) if state.credential(inject).is_some() => Ok(state),
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

/// A key callers must present (`[listen] client_key`), resolved at start.
pub struct CallerKey {
    pub header: http::HeaderName,
    pub bearer: bool,
    pub key: crate::secret::Secret,
}

impl CallerKey {
    /// Checks and removes the caller's key, so it never reaches the upstream.
    fn check(&self, headers: &mut HeaderMap) -> Result<(), ProxyError> {
        let presented = headers.remove(&self.header);
        let value = presented.as_ref().map(|v| v.as_bytes()).unwrap_or_default();
        // `Basic` is what clients send for a proxy URL with credentials
        // (`HTTPS_PROXY=http://tokenproxy:KEY@host:8080`): the password is the key.
        let basic = self
            .bearer
            .then(|| value.strip_prefix(b"Basic "))
            .flatten()
            .and_then(|b| {
                base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b.trim_ascii())
                    .ok()
            });
        let value = match &basic {
            Some(pair) => pair
                .iter()
                .position(|&b| b == b':')
                .map_or(&[][..], |i| &pair[i + 1..]),
            None if self.bearer => value.strip_prefix(b"Bearer ").unwrap_or_default(),
            None => value,
        };
        if bool::from(subtle::ConstantTimeEq::ct_eq(
            value,
            self.key.expose().as_bytes(),
        )) {
            Ok(())
        } else {
            Err(ProxyError::ProxyAuth)
        }
    }
}

/// The request target's own authority (absolute-form, HTTP/2's `:authority`) and
/// scheme: no user info (it could be reflected into a rewritten `Location`), a port
/// of 1–65535 digits, and only `http` or `https`.
fn check_target(uri: &Uri) -> Result<(), ProxyError> {
    if let Some(scheme) = uri.scheme_str()
        && !scheme.eq_ignore_ascii_case("http")
        && !scheme.eq_ignore_ascii_case("https")
    {
        return Err(ProxyError::BadScheme);
    }
    match uri.authority() {
        Some(a) if a.as_str().contains('@') || !port_ok(a.as_str()) => Err(ProxyError::BadHost),
        _ => Ok(()),
    }
}

/// Exactly one `Host` (none only before HTTP/1.1, or in HTTP/2, which carries
/// `:authority`), and one that is an authority: a second `Host` or one with other
/// characters could steer routing, or be reflected into rewritten `Location`
/// headers.
fn check_host(headers: &HeaderMap, version: Version) -> Result<(), ProxyError> {
    let mut hosts = headers.get_all(HOST).iter();
    let (Some(host), None) = (hosts.next(), hosts.next()) else {
        return match headers.contains_key(HOST) || version == Version::HTTP_11 {
            true => Err(ProxyError::BadHost),
            false => Ok(()),
        };
    };
    let valid = host.to_str().ok().is_some_and(|h| {
        !h.is_empty()
            && !h.contains('@')
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-_:[]".contains(&b))
            && port_ok(h)
            && (plain_host(h) || h.parse::<http::uri::Authority>().is_ok())
    });
    if valid {
        Ok(())
    } else {
        Err(ProxyError::BadHost)
    }
}

/// An authority's port, when it has one, is 1–65535 in digits (`host:abc`,
/// `host:99999`, `host:0` and `host:` are not).
fn port_ok(authority: &str) -> bool {
    let after_host = match authority.rfind(']') {
        Some(end) => &authority[end + 1..],
        None => authority,
    };
    match after_host.rsplit_once(':') {
        None => true,
        Some((_, port)) => {
            !port.is_empty()
                && port.len() <= 5
                && port.bytes().all(|b| b.is_ascii_digit())
                && port.parse::<u16>().is_ok_and(|p| p != 0)
        }
    }
}

/// `name` or `name:port` with a name of letters, digits, `.`, `-`, `_` and a port
/// that fits 16 bits: an authority for certain, told without parsing one (which
/// copies it).
fn plain_host(h: &str) -> bool {
    let (name, port) = match h.split_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (h, None),
    };
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_".contains(&b))
        && port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.parse::<u16>().is_ok())
}

/// A protocol upgrade other than `h2c` (which is ignored: the connection simply
/// stays HTTP/1.1, as clients that offer it expect).
fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.get_all(http::header::UPGRADE).iter().any(|v| {
        v.to_str()
            .map_or(true, |v| !v.trim().eq_ignore_ascii_case("h2c"))
    })
}

/// Whether a response to `method` with `status` carries a body to rewrite.
fn has_body(method: &Method, status: http::StatusCode) -> bool {
    method != Method::HEAD
        && !status.is_informational()
        && status != http::StatusCode::NO_CONTENT
        && status != http::StatusCode::NOT_MODIFIED
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_host_is_always_an_authority() {
        for h in [
            "api.example.com",
            "a",
            "x_y",
            "-a-",
            "a..b",
            "127.0.0.1",
            "a:1",
            "a:65535",
            "a:0",
            "a:00080",
            "A.B.C:8080",
        ] {
            assert!(plain_host(h), "{h}");
            assert!(h.parse::<http::uri::Authority>().is_ok(), "{h}");
        }
        // Left to the full parse.
        for h in [
            "", ":80", "a:", "a:65536", "a:123456", "a:b", "a:1:2", "[::1]", "[::1]:80", "a b",
        ] {
            assert!(!plain_host(h), "{h}");
        }
    }
}
