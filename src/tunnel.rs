//! The hand-off of a `CONNECT` tunnel, from the handler that answered it to the
//! server that owns the connection.
//!
//! The proxy decides what a tunnel is (which route, which host names, whether TLS
//! inside is terminated and with which certificate) and leaves that as a
//! [`Handoff`] in the request's [`TunnelSlot`]. Once the `200` is sent, the server
//! [opens](Handoff::open) it: reads the first bytes to tell TLS from plain HTTP,
//! terminates TLS with the interceptor's configuration, and serves the requests
//! inside marked [`Tunneled`]. Both sides depend on this module, not on each other.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use http::uri::Authority;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::metrics::Metrics;

/// What a handler decided for a `CONNECT` it answered with `200`.
pub struct Handoff {
    pub upgrade: OnUpgrade,
    /// The route the tunnel serves, for the metrics and logs of a failed handshake.
    pub route: String,
    /// The host name the client asked for, without port.
    pub host: String,
    /// What requests in plain HTTP inside are marked with.
    pub plain: Authority,
    /// With `[intercept]`: what requests inside TLS are marked with, and the TLS
    /// configuration that terminates it. Without, TLS inside is refused.
    pub tls: Option<(Authority, Arc<ServerConfig>)>,
    /// The caller whose key the `CONNECT` presented (`[[callers]]` name; empty for
    /// the one `client_key`), `None` on an open listener.
    pub caller: Option<Arc<str>>,
}

/// A connection's byte stream: a socket, or what a tunnel carries.
pub trait IoStream: AsyncRead + AsyncWrite + Send {}
impl<T: AsyncRead + AsyncWrite + Send> IoStream for T {}

pub type TunnelIo = Pin<Box<dyn IoStream>>;

/// Where a handler leaves the [`Handoff`] of a `CONNECT` (an extension of
/// `CONNECT` requests on HTTP/1 connections only).
#[derive(Clone, Default)]
pub struct TunnelSlot(Arc<Mutex<Option<Handoff>>>);

impl TunnelSlot {
    pub fn open(&self, handoff: Handoff) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(handoff);
    }

    pub fn take(&self) -> Option<Handoff> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// An extension of each request read inside a tunnel: the `CONNECT` authority,
/// and whether tokenproxy terminated TLS inside (else the client spoke plain HTTP).
#[derive(Clone, Debug)]
pub struct Tunneled {
    pub authority: Authority,
    pub tls: bool,
    /// As the `CONNECT`'s [`Handoff::caller`].
    pub caller: Option<Arc<str>>,
}

impl Handoff {
    /// The stream the requests inside are read from, once the client's first
    /// bytes said what it speaks; `None` (counted and logged) when that failed.
    pub async fn open(self, metrics: &Metrics) -> Option<(TunnelIo, Tunneled)> {
        let upgraded = TokioIo::new(self.upgrade.await.ok()?);
        let failed = |failure: HandshakeFailure, e: &dyn std::fmt::Display| {
            metrics.error(&self.route, failure.code(), "client");
            match failure {
                HandshakeFailure::Distrusted => tracing::warn!(
                    host = %self.host,
                    route = %self.route,
                    error = %e,
                    "the client refused tokenproxy's certificate: it does not trust the interception CA; give it the CA certificate (`tokenproxy ca show`)"
                ),
                HandshakeFailure::Failed => tracing::info!(
                    host = %self.host,
                    route = %self.route,
                    error = %e,
                    "TLS handshake in a CONNECT tunnel failed"
                ),
            }
        };
        let io = match Peeked::new(upgraded).await {
            Ok(io) => io,
            Err(e) => {
                failed(HandshakeFailure::Failed, &e);
                return None;
            }
        };
        if !io.is_tls() {
            let tunneled = Tunneled {
                authority: self.plain,
                tls: false,
                caller: self.caller,
            };
            return Some((Box::pin(io), tunneled));
        }
        let Some((authority, config)) = self.tls else {
            failed(
                HandshakeFailure::Failed,
                &"TLS inside a CONNECT to port 80, and no [intercept] to terminate it",
            );
            return None;
        };
        match tokio_rustls::TlsAcceptor::from(config).accept(io).await {
            Ok(tls) => Some((
                Box::pin(tls),
                Tunneled {
                    authority,
                    tls: true,
                    caller: self.caller,
                },
            )),
            Err(e) => {
                failed(classify(&e), &e);
                None
            }
        }
    }
}

/// How a TLS handshake inside a tunnel failed.
#[derive(Debug, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The client refused the leaf: it does not trust the CA (or the CA may not
    /// sign for the host it asked for).
    Distrusted,
    /// Anything else: not TLS, no common version, the client went away.
    Failed,
}

impl HandshakeFailure {
    pub fn code(&self) -> &'static str {
        match self {
            HandshakeFailure::Distrusted => "intercept_certificate_rejected",
            HandshakeFailure::Failed => "intercept_handshake_failed",
        }
    }
}

/// A client that does not trust the certificate says so with an alert.
pub fn classify(e: &io::Error) -> HandshakeFailure {
    use rustls::AlertDescription as A;
    let alert = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .and_then(|e| match e {
            rustls::Error::AlertReceived(a) => Some(*a),
            _ => None,
        });
    match alert {
        Some(
            A::UnknownCA
            | A::BadCertificate
            | A::CertificateUnknown
            | A::UnsupportedCertificate
            | A::CertificateExpired
            | A::AccessDenied,
        ) => HandshakeFailure::Distrusted,
        _ => HandshakeFailure::Failed,
    }
}

/// A stream whose first bytes were read to see what protocol they start, and are
/// read again by whoever reads it next (a TLS acceptor or an HTTP server).
struct Peeked<S> {
    head: bytes::Bytes,
    inner: S,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Peeked<S> {
    /// Reads until at least one byte has come; an end of stream is an error.
    async fn new(mut inner: S) -> io::Result<Peeked<S>> {
        let mut buf = [0u8; 16];
        let n = tokio::io::AsyncReadExt::read(&mut inner, &mut buf).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(Peeked {
            head: bytes::Bytes::copy_from_slice(&buf[..n]),
            inner,
        })
    }

    /// Whether the stream starts as TLS does: a handshake record (content type 22).
    fn is_tls(&self) -> bool {
        self.head.first() == Some(&0x16)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Peeked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.head.is_empty() {
            let n = self.head.len().min(buf.remaining());
            let head = self.head.split_to(n);
            buf.put_slice(&head);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Peeked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
