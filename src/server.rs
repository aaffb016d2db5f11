//! Listeners: the accept loop and graceful drain shared by the proxy and admin ports.
//!
//! Listeners are TCP, or (for the proxy) a Unix socket. Connections speak HTTP/1.1
//! or HTTP/2 (prior knowledge), chosen per connection.
//! On shutdown the loop stops accepting, in-flight requests get up to the drain
//! timeout to finish, and then whatever is left is dropped.

use std::convert::Infallible;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use tokio::net::{TcpListener, UnixListener};

use crate::config::ListenAddr;
use tokio_util::sync::CancellationToken;

use crate::proxy::ProxyBody;

/// A bound listener: TCP, or a Unix socket (created 0660, for hosts where the
/// socket's group says who may use the proxy).
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl Listener {
    pub async fn bind(addr: &ListenAddr) -> std::io::Result<Listener> {
        match addr {
            ListenAddr::Tcp(a) => TcpListener::bind(a).await.map(Listener::Tcp),
            ListenAddr::Unix(path) => {
                // A socket left by a process that died; a live one is still refused
                // below because connecting to it succeeds.
                if std::os::unix::net::UnixStream::connect(path).is_err() {
                    let _ = std::fs::remove_file(path);
                }
                let listener = UnixListener::bind(path)?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
                Ok(Listener::Unix(listener, path.clone()))
            }
        }
    }

    /// What to print and connect to.
    pub fn local(&self) -> std::io::Result<ListenAddr> {
        match self {
            Listener::Tcp(l) => l.local_addr().map(ListenAddr::Tcp),
            Listener::Unix(_, path) => Ok(ListenAddr::Unix(path.clone())),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// How a listener treats its connections.
#[derive(Clone, Copy)]
pub struct Limits {
    /// Until the in-flight requests are dropped at shutdown.
    pub drain: Duration,
    /// Until a connection without a complete request head is closed.
    pub idle: Duration,
}

pub async fn serve<F, Fut>(
    listener: Listener,
    handler: F,
    shutdown: CancellationToken,
    limits: Limits,
) where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<ProxyBody>, Infallible>> + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.idle);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = accept(&listener) => accepted,
        };
        match accepted {
            Ok(Stream::Tcp(stream)) => {
                let _ = stream.set_nodelay(true);
                let conn =
                    builder.serve_connection(TokioIo::new(stream), service_fn(handler.clone()));
                spawn_conn(graceful.watch(conn.into_owned()));
            }
            Ok(Stream::Unix(stream)) => {
                let conn =
                    builder.serve_connection(TokioIo::new(stream), service_fn(handler.clone()));
                spawn_conn(graceful.watch(conn.into_owned()));
            }
            Err(e) => {
                // Out of file descriptors and the like: pause instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(limits.drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            timeout_s = limits.drain.as_secs(),
            "drain timed out; dropping the remaining connections"
        );
    }
}

enum Stream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept(listener: &Listener) -> std::io::Result<Stream> {
    match listener {
        Listener::Tcp(l) => l.accept().await.map(|(s, _)| Stream::Tcp(s)),
        Listener::Unix(l, _) => l.accept().await.map(|(s, _)| Stream::Unix(s)),
    }
}

fn spawn_conn<C>(conn: C)
where
    C: Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    });
}

/// Resolves on SIGTERM (Kubernetes, systemd) or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops tokenproxy");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: draining"),
    }
}
