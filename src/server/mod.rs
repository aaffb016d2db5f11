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
//! This file holds the accept loop and what each request goes through;
//! `connection` holds one connection's life and the registry of open ones.

mod connection;
pub(crate) mod framing;
mod io;
mod listener;
mod signals;

use std::convert::Infallible;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use http::{Method, Request, Response, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::service_fn;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::tunnel::{TunnelSlot, Tunneled};
use connection::Connections;
use framing::Verdict;
use io::{ConnState, InFlight};
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

/// The TLS a listener serves new connections with (`None`: plain), swapped by a
/// reload.
pub type ServedTls = Arc<arc_swap::ArcSwapOption<rustls::ServerConfig>>;

/// Accepts connections on `listener` and serves each with `handler` until
/// `shutdown`; then drains them (see the module documentation).
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
    let conns = Arc::new(Connections::new(handler, limits, cx));
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
                backoff = conns.out_of_fds(&e, backoff);
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
        if !conns.room(&mut last_refusal_log) {
            tokio::spawn(refuse(stream));
            continue;
        }
        serial += 1;
        let state = ConnState::new(serial);
        // Registered before its task starts, so that the drain asks every one.
        conns.registry.insert(&state);
        let tls = tls.as_ref().and_then(|t| t.load_full());
        tokio::spawn(Arc::clone(&conns).connection(state, stream, tls));
    }
    drop(listener);
    conns.drain().await;
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
