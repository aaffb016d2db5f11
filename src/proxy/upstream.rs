//! Upstream connections: a pool of our own, driven by the task that uses them.
//!
//! hyper's pooled client runs every connection in a task of its own: each request
//! is handed to that task through a channel, its response handed back, and a
//! further task is spawned per request to put the connection back when the body
//! ends. That is four task switches and a spawn for each request. Here an HTTP/1
//! connection is polled by whoever holds it: while the response head is awaited,
//! by the request's future; while the body streams, by the body itself
//! ([`UpstreamBody`]), which hands the connection back to the pool when it has
//! been read to the end. A connection sitting in the pool is polled by no one: it
//! is checked as it is taken out (a peer's close is seen then), and a request that
//! a stale connection could not even start to send is sent again on a new one.
//!
//! HTTP/2 (when the upstream's ALPN agrees) multiplexes one connection for all
//! requests to that upstream; its connection runs in a task of its own, as it
//! must serve every stream at once.
//!
//! Pools are kept per scheme and authority, in a short list (a proxy talks to a
//! handful of upstreams). Idle connections are closed after the pool's idle
//! timeout, by a sweeper task that holds the pool weakly.
//!
//! Length: the pool and the connection it lends are one mechanism (checkout, send,
//! return, sweep); each half needs the other's invariants.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::header::{HOST, HeaderValue};
use http::uri::{Authority, Parts, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tower_service::Service;

use crate::body::{BoxError, Pooled, ProxyBody, UpstreamBody};
use crate::config::ProxySettings;

type Stream = MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>;
type H1Conn = http1::Connection<Stream, ProxyBody>;

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be opened (refused, unresolvable, TLS handshake failed).
    #[error("connecting to the upstream: {0}")]
    Connect(#[source] BoxError),
    /// The connection failed while the request was sent or the response read.
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

/// The upstream connection pools; cheap to clone (all clones share them).
#[derive(Clone)]
pub struct Upstreams(Arc<Shared>);

struct Shared {
    connector: HttpsConnector<HttpConnector>,
    idle_timeout: Duration,
    pools: Mutex<Vec<Pool>>,
    sweeping: std::sync::Once,
}

/// The connections to one scheme and authority.
struct Pool {
    scheme: Scheme,
    authority: Authority,
    /// What HTTP/1 requests to it carry as `Host`.
    host: HeaderValue,
    /// Idle HTTP/1 connections, the most recently used last.
    idle: Vec<Idle>,
    /// The multiplexed HTTP/2 connection, once one was negotiated.
    h2: Option<http2::SendRequest<ProxyBody>>,
}

struct Idle {
    conn: Box<Lease>,
    since: Instant,
}

/// An HTTP/1 connection taken from (or opened for) a pool, returned to it by
/// [`UpstreamBody`] when its response has been read. It moves boxed, from pool to
/// request to body and back: a pointer, and the body holds it as a [`Pooled`].
struct Lease {
    send: http1::SendRequest<ProxyBody>,
    /// `None` once the connection has ended. Boxed: it is large (its buffers and
    /// state), and a lease moves from pool to request to body and back.
    conn: Option<Pin<Box<H1Conn>>>,
    /// The pool's index in `Shared::pools` (pools are never removed).
    pool: usize,
    home: Weak<Shared>,
}

impl Pooled for Lease {
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        if let Some(conn) = &mut self.conn
            && conn.as_mut().poll(cx).is_ready()
        {
            self.conn = None;
        }
        self.conn.is_some()
    }

    fn release(self: Box<Self>) {
        if self.conn.is_none() || self.send.is_closed() {
            return;
        }
        if let Some(shared) = self.home.upgrade() {
            shared.put(self);
        }
    }
}

impl Lease {
    /// Whether a connection taken from the pool can carry a request: it has not
    /// ended (a peer's close is read here) and is waiting for one.
    fn usable(&mut self, cx: &mut Context<'_>) -> bool {
        self.drive(cx) && matches!(self.send.poll_ready(cx), Poll::Ready(Ok(())))
    }
}

impl Upstreams {
    pub fn new(tls: rustls::ClientConfig, settings: &ProxySettings) -> Upstreams {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(settings.connect_timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        Upstreams(Arc::new(Shared {
            connector,
            idle_timeout: settings.pool_idle_timeout,
            pools: Mutex::new(Vec::new()),
            sweeping: std::sync::Once::new(),
        }))
    }

    /// Sends `req` (an absolute URI, no `Host` header) on a pooled connection, or
    /// on a new one.
    pub async fn send(
        &self,
        mut req: Request<ProxyBody>,
    ) -> Result<Response<UpstreamBody>, SendError> {
        let (scheme, authority) = match (req.uri().scheme(), req.uri().authority()) {
            (Some(s), Some(a)) => (s.clone(), a.clone()),
            _ => {
                return Err(SendError::Connect(
                    "the upstream URI is not absolute".into(),
                ));
            }
        };
        let (pool, host, h2) = self.0.pool(&scheme, &authority);
        if let Some(h2) = h2 {
            return over_h2(h2, req, scheme, authority).await;
        }
        let mut lease = self.checkout(pool).await;
        // A request on a connection opened for it is not sent again.
        let mut fresh = lease.is_none();
        req.headers_mut().insert(HOST, host);
        origin_form(req.uri_mut());
        loop {
            let mut conn = match lease.take() {
                Some(conn) => conn,
                None => match Box::pin(self.connect(pool, &scheme, &authority)).await? {
                    Opened::Http1(conn) => conn,
                    Opened::Http2(h2) => return over_h2(h2, req, scheme, authority).await,
                },
            };
            match exchange(&mut conn, req).await {
                Ok(resp) => return Ok(resp.map(|body| UpstreamBody::new(body, Some(conn)))),
                Err(mut e) => match e.take_message() {
                    // A pooled connection that closed before the request could be
                    // written: nothing was sent, so send it on a new connection.
                    Some(again) if !fresh => {
                        req = again;
                        fresh = true;
                    }
                    _ => return Err(e.into_error().into()),
                },
            }
        }
    }

    /// The most recently used idle connection that is still usable.
    async fn checkout(&self, pool: usize) -> Option<Box<Lease>> {
        loop {
            let mut lease = self.0.take(pool)?;
            if poll_fn(|cx| Poll::Ready(lease.usable(cx))).await {
                return Some(lease);
            }
        }
    }

    async fn connect(
        &self,
        pool: usize,
        scheme: &Scheme,
        authority: &Authority,
    ) -> Result<Opened, SendError> {
        let uri = Uri::builder()
            .scheme(scheme.clone())
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| SendError::Connect(e.into()))?;
        let mut connector = self.0.connector.clone();
        let stream = connector.call(uri).await.map_err(SendError::Connect)?;
        if stream.connected().is_negotiated_h2() {
            let (send, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(stream)
                .await?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
                }
            });
            self.0.set_h2(pool, send.clone());
            return Ok(Opened::Http2(send));
        }
        let (send, conn) = http1::Builder::new().handshake(stream).await?;
        Ok(Opened::Http1(Box::new(Lease {
            send,
            conn: Some(Box::pin(conn)),
            pool,
            home: Arc::downgrade(&self.0),
        })))
    }
}

enum Opened {
    Http1(Box<Lease>),
    Http2(http2::SendRequest<ProxyBody>),
}

/// Sends `req` over HTTP/2: the absolute URI, no `Host` (`:authority` says it).
async fn over_h2(
    mut h2: http2::SendRequest<ProxyBody>,
    mut req: Request<ProxyBody>,
    scheme: Scheme,
    authority: Authority,
) -> Result<Response<UpstreamBody>, SendError> {
    req.headers_mut().remove(HOST);
    absolute_form(req.uri_mut(), scheme, authority);
    let resp = h2.send_request(req).await?;
    Ok(resp.map(|body| UpstreamBody::new(body, None)))
}

/// Sends `req` on `lease`, driving the connection until the response head is in.
async fn exchange(
    lease: &mut Lease,
    req: Request<ProxyBody>,
) -> Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<ProxyBody>>> {
    let mut response = std::pin::pin!(lease.send.try_send_request(req));
    poll_fn(|cx| {
        // The connection writes the request and reads the response into the
        // future; once it has ended, the future holds the outcome.
        lease.drive(cx);
        response.as_mut().poll(cx)
    })
    .await
}

impl Shared {
    /// The pool for `scheme://authority` (made on first use), its `Host` value and
    /// its HTTP/2 connection if one is open.
    fn pool(
        &self,
        scheme: &Scheme,
        authority: &Authority,
    ) -> (usize, HeaderValue, Option<http2::SendRequest<ProxyBody>>) {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        let found = pools
            .iter()
            .position(|p| p.scheme == *scheme && p.authority == *authority);
        let index = found.unwrap_or_else(|| {
            pools.push(Pool {
                host: host_value(scheme, authority),
                scheme: scheme.clone(),
                authority: authority.clone(),
                idle: Vec::new(),
                h2: None,
            });
            pools.len() - 1
        });
        let pool = &mut pools[index];
        if pool.h2.as_ref().is_some_and(|h2| h2.is_closed()) {
            pool.h2 = None;
        }
        (index, pool.host.clone(), pool.h2.clone())
    }

    fn take(&self, pool: usize) -> Option<Box<Lease>> {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        let idle = &mut pools[pool].idle;
        // Those past the idle timeout are closed, not used.
        idle.drain(..stale(idle, Instant::now(), self.idle_timeout));
        idle.pop().map(|i| i.conn)
    }

    fn put(self: Arc<Self>, conn: Box<Lease>) {
        let pool = conn.pool;
        {
            let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
            pools[pool].idle.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
        self.sweeping.call_once(|| {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(sweep(Arc::downgrade(&self)));
            }
        });
    }

    fn set_h2(&self, pool: usize, send: http2::SendRequest<ProxyBody>) {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        let h2 = &mut pools[pool].h2;
        if h2.as_ref().is_none_or(|h| h.is_closed()) {
            *h2 = Some(send);
        }
    }

    /// Closes the connections idle for longer than the timeout.
    fn sweep(&self) {
        let now = Instant::now();
        let mut closed = Vec::new();
        {
            let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
            for pool in pools.iter_mut() {
                let n = stale(&pool.idle, now, self.idle_timeout);
                closed.extend(pool.idle.drain(..n));
            }
        }
        // Dropped (and so closed) outside the lock.
        drop(closed);
    }
}

/// How many of `idle` (oldest first) have been idle for `timeout` or longer.
fn stale(idle: &[Idle], now: Instant, timeout: Duration) -> usize {
    idle.iter()
        .take_while(|i| now.duration_since(i.since) >= timeout)
        .count()
}

/// Runs while the pools are in use; each round closes what has idled too long.
async fn sweep(shared: Weak<Shared>) {
    let every = match shared.upgrade() {
        Some(s) => (s.idle_timeout / 2).max(Duration::from_millis(100)),
        None => return,
    };
    loop {
        tokio::time::sleep(every).await;
        match shared.upgrade() {
            Some(s) => s.sweep(),
            None => return,
        }
    }
}

/// The `Host` an HTTP/1 request to `authority` carries: without a default port.
fn host_value(scheme: &Scheme, authority: &Authority) -> HeaderValue {
    let default = match authority.port_u16() {
        Some(443) => *scheme == Scheme::HTTPS,
        Some(80) => *scheme == Scheme::HTTP,
        _ => false,
    };
    let text = if default {
        authority.host()
    } else {
        authority.as_str()
    };
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Keeps only the path and query (moved, not cloned: cloning the `Bytes` behind a
/// freshly built URI allocates).
fn origin_form(uri: &mut Uri) {
    let mut parts = std::mem::take(uri).into_parts();
    parts.scheme = None;
    parts.authority = None;
    *uri = Uri::from_parts(parts).unwrap_or_default();
}

fn absolute_form(uri: &mut Uri, scheme: Scheme, authority: Authority) {
    let mut parts = Parts::default();
    parts.scheme = Some(scheme);
    parts.authority = Some(authority);
    parts.path_and_query = uri.path_and_query().cloned();
    if let Ok(absolute) = Uri::from_parts(parts) {
        *uri = absolute;
    }
}

#[cfg(test)]
#[path = "upstream_tests.rs"]
mod tests;
