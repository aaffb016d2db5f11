//! One connection's life: its TLS handshake, its requests, the tunnel a
//! `CONNECT` may open in it, eviction and the drain; and the registry of the open
//! connections of a listener.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::io::{ConnState, Guarded};
use super::listener::Stream;
use super::{Limits, Reporting, service};
use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::tunnel::{TunnelIo, TunnelSlot};

/// The open connections of one listener.
#[derive(Default)]
pub(super) struct Registry {
    conns: Mutex<BTreeMap<u64, Arc<ConnState>>>,
    /// Notified when the last connection closes.
    empty: Notify,
}

impl Registry {
    fn len(&self) -> usize {
        self.conns.lock().map_or(0, |c| c.len())
    }

    pub(super) fn insert(&self, state: &Arc<ConnState>) {
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

/// What every connection of one listener is served with, and the open ones.
pub(super) struct Connections<F> {
    builder: auto::Builder<TokioExecutor>,
    handler: F,
    limits: Limits,
    cx: Reporting,
    pub(super) registry: Registry,
    /// Cancelled when the drain times out: closes whatever is left.
    force: CancellationToken,
}

impl<F, Fut> Connections<F>
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<ProxyBody>, Infallible>> + Send + 'static,
{
    pub(super) fn new(handler: F, limits: Limits, cx: Reporting) -> Connections<F> {
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
        Connections {
            builder,
            handler,
            limits,
            cx,
            registry: Registry::default(),
            force: CancellationToken::new(),
        }
    }

    /// Out of file descriptors: closes an idle connection to give one back, and
    /// says how long to pause accepting (doubling `backoff`, up to a second).
    pub(super) fn out_of_fds(&self, e: &std::io::Error, backoff: Duration) -> Duration {
        self.registry.evict_idle();
        let backoff = (backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
        tracing::warn!(
            error = %e,
            open_connections = self.registry.len(),
            retry_in_ms = backoff.as_millis() as u64,
            "accept failed: out of file descriptors; raise the limit (LimitNOFILE, ulimit -n) or lower proxy.max_connections"
        );
        backoff
    }

    /// Whether there is room for one more connection, once the oldest idle one
    /// has been asked to make it; when there is not, counts the refusal and says
    /// so in the log at most once a second.
    pub(super) fn room(&self, last_log: &mut Option<tokio::time::Instant>) -> bool {
        if self.registry.len() < self.limits.max_connections || self.registry.evict_idle() {
            return true;
        }
        let e = ProxyError::Overloaded;
        e.count(&self.cx.metrics, self.cx.label);
        let now = tokio::time::Instant::now();
        if last_log.is_none_or(|t| now - t >= Duration::from_secs(1)) {
            *last_log = Some(now);
            tracing::warn!(
                max_connections = self.limits.max_connections,
                "connection refused with 503: every connection is busy (proxy.max_connections)"
            );
        }
        false
    }

    /// One connection's life: its TLS handshake, its requests, the tunnel a
    /// `CONNECT` may open in it; then out of the registry.
    pub(super) async fn connection(
        self: Arc<Self>,
        state: Arc<ConnState>,
        stream: Stream,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) {
        let slot = TunnelSlot::default();
        let svc = service(
            &state,
            &self.handler,
            self.limits,
            &self.cx,
            Some(&slot),
            None,
        );
        if let Stream::Tcp(s) = &stream {
            let _ = s.set_nodelay(true);
        }
        if let Some(io) = self.open(stream, tls, &state).await {
            let conn = self
                .builder
                .serve_connection_with_upgrades(TokioIo::new(io), svc)
                .into_owned();
            let ended = drive!(conn, state, self.force);
            if ended && let Some(handoff) = slot.take() {
                self.tunnel(handoff, &state).await;
            }
        }
        self.registry.remove(state.serial);
    }

    /// The connection's I/O under its timers and framing reader, which see what
    /// HTTP is read from: under TLS, the decrypted stream. `None`: the handshake
    /// failed.
    async fn open(
        &self,
        stream: Stream,
        tls: Option<Arc<rustls::ServerConfig>>,
        state: &Arc<ConnState>,
    ) -> Option<TunnelIo> {
        let Some(config) = tls else {
            // Plain: the socket itself under the timers, no box in between.
            return Some(match stream {
                Stream::Tcp(s) => guarded(s, state, self.limits),
                Stream::Unix(s) => guarded(s, state, self.limits),
            });
        };
        let raw: TunnelIo = match stream {
            Stream::Tcp(s) => Box::pin(s),
            Stream::Unix(s) => Box::pin(s),
        };
        let io = handshake(raw, config, state, self.limits, &self.cx).await?;
        Some(guarded(io, state, self.limits))
    }

    /// Serves the requests inside the tunnel a `CONNECT` answered with `200`.
    async fn tunnel(&self, handoff: crate::tunnel::Handoff, state: &Arc<ConnState>) {
        let opened = handoff.open(&self.cx.metrics);
        // Each read inside is bounded by the socket's idle timer (so a silent
        // client fails the handshake, and says so); this bounds a trickle.
        let opened = tokio::select! {
            o = tokio::time::timeout(self.limits.idle * 2, opened) => o.ok().flatten(),
            _ = std::future::poll_fn(|cx| state.poll_stop(cx)) => None,
        };
        let Some((io, tunneled)) = opened else {
            return;
        };
        let io = guarded(io, state, self.limits);
        let svc = service(
            state,
            &self.handler,
            self.limits,
            &self.cx,
            None,
            Some(tunneled),
        );
        let inner = self
            .builder
            .serve_connection(TokioIo::new(io), svc)
            .into_owned();
        let _ = drive!(inner, state, self.force);
    }

    /// Asks every connection to close, waits for them up to the drain timeout,
    /// then closes whatever is left.
    pub(super) async fn drain(&self) {
        self.registry.stop_all();
        let drained = async {
            loop {
                let empty = self.registry.empty.notified();
                if self.registry.len() == 0 {
                    return;
                }
                empty.await;
            }
        };
        if tokio::time::timeout(self.limits.drain, drained)
            .await
            .is_err()
        {
            tracing::warn!(
                timeout_s = self.limits.drain.as_secs(),
                open_connections = self.registry.len(),
                "drain timed out; closing the remaining connections"
            );
            self.force.cancel();
        }
    }
}

/// `io` under the connection's timers and framing reader.
fn guarded<S>(io: S, state: &Arc<ConnState>, limits: Limits) -> TunnelIo
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    Box::pin(Guarded::new(
        io,
        Arc::clone(state),
        limits.idle,
        limits.max_header_size,
    ))
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
