//! Listeners: the accept loop, each connection's lifecycle, and graceful drain,
//! shared by the proxy and admin ports.
//!
//! Listeners are TCP, or (for the proxy) a Unix socket. Connections speak HTTP/1.1
//! or HTTP/2 (prior knowledge), chosen per connection. Every phase of a connection
//! has a bound: a connection with nothing in flight that sends nothing or trickles
//! its next head in, and a client that stops reading (`io`), a
//! request body that stalls (the proxy's body timeout). At most `max_connections`
//! are open per listener; past that the oldest idle connection is closed to make
//! room, and when none is idle the newcomer gets a 503. Running out of file
//! descriptors pauses accepting with a backoff instead of spinning.
//!
//! Each request is checked before its handler sees it (ambiguous framing, header
//! sizes) and runs under `catch_unwind`: a panic becomes a 500 for that request
//! alone, is counted, and the connection's other requests go on.
//! On shutdown the loop stops accepting, in-flight requests get up to the drain
//! timeout to finish, and then whatever is left is closed.
//!
//! A handler may turn an HTTP/1 `CONNECT` into a tunnel: it answers `200` and
//! leaves a [`Handoff`](crate::tunnel::Handoff) in the request's [`TunnelSlot`].
//! Once the response is sent, the connection's task opens it (bounded by the idle
//! timeout) and serves the requests inside it with the same handler, limits and
//! checks, each marked [`Tunneled`]. The tunnel stays the same connection: it
//! counts against `max_connections`, is evicted and drained like any other.
//!
//! Length: a connection's life (accept, limits, eviction, checks, tunnels, drain)
//! is one state machine.

pub(crate) mod framing;
mod io;
mod listener;
mod signals;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use http::{Method, Request, Response, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::tunnel::{TunnelIo, TunnelSlot, Tunneled};
use framing::Verdict;
use io::{ConnState, Guarded, InFlight};
pub use listener::{Listener, connections_for, raise_fd_limit};
use listener::{Stream, accept, is_out_of_fds};
pub use signals::{hangups, shutdown_signal};

/// How a listener treats its connections.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Until the in-flight requests are dropped at shutdown.
    pub drain: Duration,
    /// A connection with nothing in flight that sends nothing for this long is
    /// closed; so is one whose request head is still incomplete after it, and one
    /// whose client has not taken any of its response for it.
    pub idle: Duration,
    /// Open connections at most; see the module documentation.
    pub max_connections: usize,
    /// One header line (name, `: ` and value) at most, in bytes.
    pub max_header_line: usize,
    /// The whole request head at most, in bytes.
    pub max_header_size: usize,
    /// Header fields in one request head at most; refused with tokenproxy's own
    /// `431` up to [`framing::MAX_HEADERS`], past which hyper refuses by itself.
    pub max_headers: usize,
}

/// What `serve` reports to and how it labels its errors.
#[derive(Clone)]
pub struct Reporting {
    pub metrics: Arc<Metrics>,
    /// The `route` label of errors this layer answers (`none` or `admin`).
    pub label: &'static str,
}

/// The open connections of one listener.
#[derive(Default)]
struct Registry {
    conns: Mutex<BTreeMap<u64, Arc<ConnState>>>,
    /// Notified when the last connection closes.
    empty: Notify,
}

impl Registry {
    fn len(&self) -> usize {
        self.conns.lock().map_or(0, |c| c.len())
    }

    fn insert(&self, state: &Arc<ConnState>) {
        if let Ok(mut c) = self.conns.lock() {
            c.insert(state.serial, Arc::clone(state));
        }
    }

    fn remove(&self, serial: u64) {
        if let Ok(mut c) = self.conns.lock() {
            c.remove(&serial);
            if c.is_empty() {
                self.empty.notify_waiters();
            }
        }
    }

    /// Asks the oldest connection with nothing in flight (and not already asked) to
    /// close. Returns whether there was one.
    fn evict_idle(&self) -> bool {
        let Ok(c) = self.conns.lock() else {
            return false;
        };
        match c.values().find(|s| s.is_idle() && !s.is_stopping()) {
            Some(s) => {
                s.stop();
                true
            }
            None => false,
        }
    }

    /// Asks every connection to close gracefully (shutdown).
    fn stop_all(&self) {
        if let Ok(c) = self.conns.lock() {
            for s in c.values() {
                s.stop();
            }
        }
    }
}

/// Drives a connection until it ends, or is asked to stop (evicted, or shutdown;
/// then gracefully, until the drain is over). Evaluates to whether it ended by
/// itself, without an error. (A macro: the two kinds of hyper connection share
/// no trait.)
macro_rules! drive {
    ($conn:expr, $state:expr, $force:expr) => {{
        let conn = $conn;
        tokio::pin!(conn);
        let ended = tokio::select! {
            r = conn.as_mut() => Some(r),
            _ = std::future::poll_fn(|cx| $state.poll_stop(cx)) => None,
        };
        let (by_itself, result) = match ended {
            Some(r) => (true, Some(r)),
            None => {
                conn.as_mut().graceful_shutdown();
                tokio::select! {
                    r = conn.as_mut() => (false, Some(r)),
                    _ = $force.cancelled() => (false, None),
                }
            }
        };
        if let Some(Err(e)) = &result {
            tracing::debug!(error = %e, "connection ended with an error");
        }
        by_itself && matches!(result, Some(Ok(())))
    }};
}

/// The TLS a listener serves new connections with (`None`: plain), swapped by a
/// reload.
pub type ServedTls = Arc<arc_swap::ArcSwapOption<rustls::ServerConfig>>;

pub async fn serve<F, Fut>(
    listener: Listener,
    handler: F,
    shutdown: CancellationToken,
    limits: Limits,
    cx: Reporting,
    tls: Option<ServedTls>,
) where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<ProxyBody>, Infallible>> + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // No header timer in hyper: the socket's read timer (`io::Guarded`) bounds a
    // head as a whole, without the timer hyper would allocate for every request.
    builder
        .http1()
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_size.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_size).unwrap_or(u32::MAX));
    let registry = Arc::new(Registry::default());
    let force = CancellationToken::new();
    let mut serial = 0u64;
    let mut backoff = Duration::ZERO;
    let mut last_refusal_log: Option<tokio::time::Instant> = None;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = accept(&listener) => accepted,
        };
        let stream = match accepted {
            Ok(stream) => {
                backoff = Duration::ZERO;
                stream
            }
            Err(e) if is_out_of_fds(&e) => {
                // Closing an idle connection gives a descriptor back.
                registry.evict_idle();
                backoff = (backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
                tracing::warn!(
                    error = %e,
                    open_connections = registry.len(),
                    retry_in_ms = backoff.as_millis() as u64,
                    "accept failed: out of file descriptors; raise the limit (LimitNOFILE, ulimit -n) or lower proxy.max_connections"
                );
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => continue,
                }
            }
            Err(e) => {
                // A connection that went away while queued, and the like.
                tracing::debug!(error = %e, "accept failed");
                continue;
            }
        };
        if registry.len() >= limits.max_connections && !registry.evict_idle() {
            let e = ProxyError::Overloaded;
            e.count(&cx.metrics, cx.label);
            let now = tokio::time::Instant::now();
            if last_refusal_log.is_none_or(|t| now - t >= Duration::from_secs(1)) {
                last_refusal_log = Some(now);
                tracing::warn!(
                    max_connections = limits.max_connections,
                    "connection refused with 503: every connection is busy (proxy.max_connections)"
                );
            }
            tokio::spawn(refuse(stream));
            continue;
        }
        serial += 1;
        let state = ConnState::new(serial);
        registry.insert(&state);
        let slot = TunnelSlot::default();
        let svc = service(&state, &handler, limits, &cx, Some(&slot), None);
        if let Stream::Tcp(s) = &stream {
            let _ = s.set_nodelay(true);
        }
        let tls = tls.as_ref().and_then(|t| t.load_full());
        let (registry, force) = (Arc::clone(&registry), force.clone());
        let (builder, handler, cx) = (builder.clone(), handler.clone(), cx.clone());
        tokio::spawn(async move {
            // The socket's timers and framing reader see what HTTP is read from:
            // under TLS, the decrypted stream.
            let guarded = |io| {
                let io = Guarded::new(io, Arc::clone(&state), limits.idle, limits.max_header_size);
                Box::pin(io) as TunnelIo
            };
            let io = match (tls, stream) {
                (None, Stream::Tcp(s)) => Some(Box::pin(Guarded::new(
                    s,
                    Arc::clone(&state),
                    limits.idle,
                    limits.max_header_size,
                )) as TunnelIo),
                (None, Stream::Unix(s)) => Some(Box::pin(Guarded::new(
                    s,
                    Arc::clone(&state),
                    limits.idle,
                    limits.max_header_size,
                )) as TunnelIo),
                (Some(config), stream) => {
                    let raw: TunnelIo = match stream {
                        Stream::Tcp(s) => Box::pin(s),
                        Stream::Unix(s) => Box::pin(s),
                    };
                    handshake(raw, config, &state, limits, &cx)
                        .await
                        .map(guarded)
                }
            };
            let Some(io) = io else {
                registry.remove(state.serial);
                return;
            };
            let conn = builder
                .serve_connection_with_upgrades(TokioIo::new(io), svc)
                .into_owned();
            let ended = drive!(conn, state, force);
            if ended && let Some(handoff) = slot.take() {
                let opened = handoff.open(&cx.metrics);
                // Each read inside is bounded by the socket's idle timer (so a silent
                // client fails the handshake, and says so); this bounds a trickle.
                let opened = tokio::select! {
                    o = tokio::time::timeout(limits.idle * 2, opened) => o.ok().flatten(),
                    _ = std::future::poll_fn(|cx| state.poll_stop(cx)) => None,
                };
                if let Some((io, tunneled)) = opened {
                    let io =
                        Guarded::new(io, Arc::clone(&state), limits.idle, limits.max_header_size);
                    let svc = service(&state, &handler, limits, &cx, None, Some(tunneled));
                    let inner = builder
                        .serve_connection(TokioIo::new(Box::pin(io) as TunnelIo), svc)
                        .into_owned();
                    let _ = drive!(inner, state, force);
                }
            }
            registry.remove(state.serial);
        });
    }
    drop(listener);
    // Every connection was registered before its task started, so each is asked.
    registry.stop_all();
    let drained = async {
        loop {
            let empty = registry.empty.notified();
            if registry.len() == 0 {
                return;
            }
            empty.await;
        }
    };
    if tokio::time::timeout(limits.drain, drained).await.is_err() {
        tracing::warn!(
            timeout_s = limits.drain.as_secs(),
            open_connections = registry.len(),
            "drain timed out; closing the remaining connections"
        );
        force.cancel();
    }
}

/// The service of one connection (or of the tunnel inside it): each request is
/// marked in flight, given its framing verdict, and handled.
fn service<F, Fut>(
    state: &Arc<ConnState>,
    handler: &F,
    limits: Limits,
    cx: &Reporting,
    slot: Option<&TunnelSlot>,
    tunneled: Option<Tunneled>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Tracked>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Tracked>, Infallible>> + Send + 'static,
> + Clone
+ Send
+ 'static
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<ProxyBody>, Infallible>> + Send + 'static,
{
    let state = Arc::clone(state);
    let (handler, cx, slot) = (handler.clone(), cx.clone(), slot.cloned());
    service_fn(move |mut req: Request<Incoming>| {
        // Taken now, in request order: hyper calls this once per request, in turn.
        let guard = state.begin();
        let verdict = if req.version() == Version::HTTP_2 {
            Verdict::Ok
        } else {
            state.verdicts.next()
        };
        if let Some(t) = &tunneled {
            req.extensions_mut().insert(t.clone());
        } else if let Some(slot) = &slot
            && req.method() == Method::CONNECT
            && req.version() < Version::HTTP_2
        {
            req.extensions_mut().insert(slot.clone());
        }
        handle(req, guard, verdict, handler.clone(), limits, cx.clone())
    })
}

/// One request: checked, then handled under `catch_unwind`, its response body
/// holding the connection's in-flight mark until it has been sent.
async fn handle<F, Fut>(
    req: Request<Incoming>,
    guard: InFlight,
    verdict: Verdict,
    handler: F,
    limits: Limits,
    cx: Reporting,
) -> Result<Response<Tracked>, Infallible>
where
    F: Fn(Request<Incoming>) -> Fut,
    Fut: Future<Output = Result<Response<ProxyBody>, Infallible>>,
{
    let resp = match check_head(&req, verdict, &limits) {
        Err(e) => {
            e.count(&cx.metrics, cx.label);
            crate::log_at!(
                e.level(),
                method = %req.method(),
                status = e.status().as_u16(),
                error = e.code(),
                "request refused"
            );
            e.response(None)
        }
        Ok(()) => match AssertUnwindSafe(handler(req)).catch_unwind().await {
            Ok(Ok(resp)) => resp,
            Err(_) => {
                // The panic hook has logged it.
                cx.metrics.panicked();
                let e = ProxyError::Internal;
                e.count(&cx.metrics, cx.label);
                ProxyError::Internal.response(None)
            }
        },
    };
    Ok(resp.map(|body| Tracked {
        body,
        _guard: guard,
        metrics: cx.metrics,
    }))
}

/// What hyper lets through but tokenproxy refuses before a handler sees it.
fn check_head(
    req: &Request<Incoming>,
    verdict: Verdict,
    limits: &Limits,
) -> Result<(), ProxyError> {
    if verdict == Verdict::Ambiguous {
        return Err(ProxyError::AmbiguousFraming);
    }
    if req.headers().len() > limits.max_headers {
        return Err(ProxyError::HeaderTooLarge);
    }
    let mut total = 0;
    for (name, value) in req.headers() {
        let line = name.as_str().len() + 2 + value.len();
        if line > limits.max_header_line {
            return Err(ProxyError::HeaderTooLarge);
        }
        total += line + 2;
    }
    if total > limits.max_header_size {
        return Err(ProxyError::HeaderTooLarge);
    }
    Ok(())
}

/// A response body that ends the request's in-flight mark when it is dropped and
/// turns a panic while producing it into an error for this response alone.
pub struct Tracked {
    body: ProxyBody,
    _guard: InFlight,
    metrics: Arc<Metrics>,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = crate::body::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match std::panic::catch_unwind(AssertUnwindSafe(|| Pin::new(&mut this.body).poll_frame(cx)))
        {
            Ok(polled) => polled,
            Err(_) => {
                this.metrics.panicked();
                this.body = ProxyBody::full(Bytes::new());
                Poll::Ready(Some(Err("response body failed".into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The TLS handshake of a connection to a listener with `listen.tls_cert`,
/// bounded like a request head; `None` (counted, and logged when the client
/// refused the certificate) when it failed.
async fn handshake(
    io: TunnelIo,
    config: Arc<rustls::ServerConfig>,
    state: &Arc<ConnState>,
    limits: Limits,
    cx: &Reporting,
) -> Option<TunnelIo> {
    let accept = tokio_rustls::TlsAcceptor::from(config).accept(io);
    let result = tokio::select! {
        r = tokio::time::timeout(limits.idle * 2, accept) => r,
        _ = std::future::poll_fn(|c| state.poll_stop(c)) => return None,
    };
    let e = match result {
        Ok(Ok(tls)) => return Some(Box::pin(tls)),
        Ok(Err(e)) => e,
        Err(_) => std::io::ErrorKind::TimedOut.into(),
    };
    cx.metrics.error(cx.label, "tls_handshake_failed", "client");
    if crate::tunnel::classify(&e) == crate::tunnel::HandshakeFailure::Distrusted {
        tracing::warn!(
            error = %e,
            "a client refused the proxy listener's certificate (listen.tls_cert): give it the CA that signed it, and connect with a name the certificate holds"
        );
    } else {
        tracing::debug!(error = %e, "TLS handshake on the proxy listener failed");
    }
    None
}

/// Answers a connection there is no room for, without reading from it.
async fn refuse(stream: Stream) {
    let text = ProxyError::Overloaded.http1();
    let write = async move {
        match stream {
            Stream::Tcp(mut s) => s.write_all(&text).await,
            Stream::Unix(mut s) => s.write_all(&text).await,
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
}
