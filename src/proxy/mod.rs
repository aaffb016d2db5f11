//! The proxy: one request in, the token added, one request (or two) out.
//!
//! Phases of [`Proxy::handle`], in order:
//! 1. route: match the request to a configured route, or answer 404/400/405;
//! 2. token: read the current header value lock-free; without a valid token, join
//!    (or start) the single-flight refresh, or answer 503;
//! 3. body: on routes that retry, keep a body up to the replay limit;
//! 4. send: forward with the route's header rules and timeouts (502/504 on failure);
//! 5. retry: on a `retry_on` status, refresh the generation that was sent (single
//!    flight) and resend once with the new token;
//! 6. respond: strip hop-by-hop headers, rewrite `Location`, stream the body back.

mod body;
mod headers;
mod route;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use http::header::{HOST, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

pub use body::ProxyBody;
pub use route::Router;

use crate::config::ProxySettings;
use crate::error::ProxyError;
use crate::metrics::{Metrics, RetryOutcome, RouteMetrics};
use crate::token::{TokenSource, Trigger};
use body::Prepared;
use route::{Miss, Target};

pub type HttpsClient = Client<HttpsConnector<HttpConnector>, ProxyBody>;

/// A pooled client for upstreams: HTTP/1.1, or HTTP/2 when ALPN agrees.
pub fn client(tls: rustls::ClientConfig, settings: &ProxySettings) -> HttpsClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(settings.connect_timeout));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(settings.pool_idle_timeout)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(https)
}

pub struct Proxy {
    router: Router,
    /// Indexed by `Route::token`.
    sources: Vec<Arc<TokenSource>>,
    client: HttpsClient,
    settings: ProxySettings,
    /// Indexed like the routes.
    route_metrics: Vec<RouteMetrics>,
    /// Requests that matched no route.
    unrouted: RouteMetrics,
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
        client: HttpsClient,
        settings: ProxySettings,
        metrics: &Metrics,
    ) -> Proxy {
        Proxy {
            route_metrics: router
                .routes()
                .iter()
                .map(|r| metrics.route(&r.name))
                .collect(),
            unrouted: metrics.route("none"),
            router,
            sources,
            client,
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
        let resp = match self.forward(req, &mut trace).await {
            Ok(resp) => resp,
            Err(e) => e.response(route_name(&trace)),
        };
        let elapsed = start.elapsed();
        let metrics = trace
            .route
            .map_or(&self.unrouted, |i| &self.route_metrics[i]);
        metrics.observe(resp.status(), elapsed);
        if let Some(outcome) = trace.retry {
            metrics.retry(outcome);
        }
        tracing::info!(
            method = %method,
            route = route_name(&trace).unwrap_or("-"),
            status = resp.status().as_u16(),
            duration_ms = elapsed.as_micros() as f64 / 1000.0,
            retried = trace.retry == Some(RetryOutcome::Success) || trace.retry == Some(RetryOutcome::Rejected),
            "request"
        );
        Ok(resp)
    }

    async fn forward(
        &self,
        req: Request<Incoming>,
        trace: &mut Trace,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        if req.method() == Method::CONNECT {
            return Err(ProxyError::Connect);
        }
        let (mut parts, body) = req.into_parts();
        let target = self.route(&parts.uri, &parts.headers, parts.version)?;
        trace.route = Some(target.route);
        let route = &self.router.routes()[target.route];
        let source = &self.sources[route.token];
        let inject = &source.config.injects[route.inject].header;
        headers::to_upstream(&mut parts.headers);

        let (generation, value) = token(source, route.inject).await?;

        let prepared = if route.retry_on.is_empty() {
            Prepared::Streaming(ProxyBody::Incoming(body))
        } else {
            body::prepare(body, self.settings.replay_body_limit)
                .await
                .map_err(|_| ProxyError::ClientBody)?
        };
        let (first, replay) = match prepared {
            Prepared::Replayable(bytes) => {
                let again = (bytes.clone(), parts.headers.clone());
                (ProxyBody::full(bytes), Some(again))
            }
            Prepared::Streaming(body) => (body, None),
        };
        let method = parts.method;
        let mut resp = self
            .send(
                method.clone(),
                target.uri.clone(),
                parts.headers,
                inject,
                value,
                first,
            )
            .await?;

        if route.retry_on.contains(&resp.status()) {
            // The token was refused: refresh it either way, so that the next request
            // works; resend only a request whose body was kept.
            let refreshed = source.refresh(generation, Trigger::Reactive).await;
            let value = refreshed.ok().and_then(|state| {
                let value = state.header(route.inject)?.clone();
                (state.generation() != generation).then_some(value)
            });
            trace.retry = Some(match (replay, value) {
                (_, None) => RetryOutcome::RefreshFailed,
                (None, Some(_)) => RetryOutcome::NotReplayable,
                (Some((bytes, headers)), Some(value)) => {
                    drop(resp);
                    let body = ProxyBody::full(bytes);
                    resp = self
                        .send(method, target.uri.clone(), headers, inject, value, body)
                        .await?;
                    if route.retry_on.contains(&resp.status()) {
                        RetryOutcome::Rejected
                    } else {
                        RetryOutcome::Success
                    }
                }
            });
        }

        let (mut parts, body) = resp.into_parts();
        headers::to_client(&mut parts.headers, &route.upstream.base_url, || {
            target.proxy_base.clone()
        });
        Ok(Response::from_parts(parts, ProxyBody::Incoming(body)))
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
            self.router.absolute(uri).or_else(|_| {
                let authority = uri.authority().map(|a| a.as_str()).or(host);
                self.router.origin(uri, authority)
            })
        } else if uri.scheme().is_some() {
            self.router.absolute(uri)
        } else {
            self.router.origin(uri, host)
        };
        result.map_err(|miss| match miss {
            Miss::NoRoute => ProxyError::NoRoute,
            Miss::BadPath => ProxyError::BadPath,
        })
    }

    async fn send(
        &self,
        method: Method,
        uri: Uri,
        mut headers: HeaderMap,
        inject: &HeaderName,
        value: HeaderValue,
        body: ProxyBody,
    ) -> Result<Response<Incoming>, ProxyError> {
        headers.insert(inject.clone(), value);
        let mut req = Request::new(body);
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.headers_mut() = headers;
        let timeout = self.settings.response_timeout;
        match tokio::time::timeout(timeout, self.client.request(req)).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => {
                tracing::warn!(error = %error_chain(&e), "upstream request failed");
                Err(if e.is_connect() {
                    ProxyError::UpstreamUnreachable
                } else {
                    ProxyError::UpstreamFailed
                })
            }
            Err(_) => Err(ProxyError::UpstreamTimeout(timeout)),
        }
    }
}

/// The token's generation and header value; refreshes (single flight) when there
/// is no valid token.
async fn token(source: &Arc<TokenSource>, inject: usize) -> Result<(u64, HeaderValue), ProxyError> {
    let generation = {
        let state = source.current();
        if let Some(value) = state.header(inject) {
            return Ok((state.generation(), value.clone()));
        }
        state.generation()
    };
    match source.refresh(generation, Trigger::Reactive).await {
        Ok(state) => match state.header(inject) {
            Some(value) => Ok((state.generation(), value.clone())),
            None => Err(ProxyError::NoValidToken {
                retry_after: std::time::Duration::from_secs(1),
            }),
        },
        Err(u) => Err(ProxyError::NoValidToken {
            retry_after: u.retry_after,
        }),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
