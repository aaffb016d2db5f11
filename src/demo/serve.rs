//! Plumbing shared by the fake servers: the response body type, JSON answers and
//! an accept loop (plain or TLS, counting connections).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// Response bodies of the fake servers, generated as they go.
pub enum FakeBody {
    Full(Option<Bytes>),
    /// N zero bytes.
    Zeros(u64),
    /// These chunks, one frame each (to split a body where a test wants it).
    Chunks(std::collections::VecDeque<Bytes>),
    /// `head`, then `chunk` `count` times, then `tail`.
    Repeat {
        head: Option<Bytes>,
        chunk: Bytes,
        count: u64,
        tail: Option<Bytes>,
    },
}

impl FakeBody {
    pub fn full(b: impl Into<Bytes>) -> Self {
        let b = b.into();
        FakeBody::Full((!b.is_empty()).then_some(b))
    }
}

static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

impl Body for FakeBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let next = match self.get_mut() {
            FakeBody::Full(b) => b.take(),
            FakeBody::Zeros(0) => None,
            FakeBody::Zeros(left) => {
                let n = (*left).min(ZEROS.len() as u64);
                *left -= n;
                Some(Bytes::from_static(&ZEROS[..n as usize]))
            }
            FakeBody::Chunks(chunks) => chunks.pop_front(),
            FakeBody::Repeat {
                head,
                chunk,
                count,
                tail,
            } => head.take().or_else(|| {
                if *count > 0 {
                    *count -= 1;
                    Some(chunk.clone())
                } else {
                    tail.take()
                }
            }),
        };
        Poll::Ready(next.map(|b| Ok(Frame::data(b))))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            FakeBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            FakeBody::Zeros(n) => SizeHint::with_exact(*n),
            FakeBody::Chunks(c) => SizeHint::with_exact(c.iter().map(|b| b.len() as u64).sum()),
            FakeBody::Repeat { .. } => SizeHint::new(),
        }
    }
}

pub fn json_resp(status: StatusCode, body: serde_json::Value) -> Response<FakeBody> {
    let mut r = Response::new(FakeBody::full(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// A numeric query parameter, 0 when absent.
pub fn query_number(uri: &http::Uri, key: &str) -> u64 {
    uri.query()
        .and_then(|q| form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == key))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

pub async fn serve<F, Fut>(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    connections: Arc<AtomicU64>,
    open: Arc<AtomicU64>,
    handler: F,
) where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<FakeBody>> + Send + 'static,
{
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        connections.fetch_add(1, Ordering::SeqCst);
        open.fetch_add(1, Ordering::SeqCst);
        let handler = handler.clone();
        let acceptor = acceptor.clone();
        let open = Arc::clone(&open);
        tokio::spawn(async move {
            // Counts the connection closed however the task ends.
            struct Open(Arc<AtomicU64>);
            impl Drop for Open {
                fn drop(&mut self) {
                    self.0.fetch_sub(1, Ordering::SeqCst);
                }
            }
            let _open = Open(open);
            let service = service_fn(move |req| {
                let h = handler.clone();
                async move { Ok::<_, Infallible>(h(req).await) }
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            let _ = match acceptor {
                Some(a) => match a.accept(stream).await {
                    Ok(tls) => builder.serve_connection(TokioIo::new(tls), service).await,
                    Err(_) => return,
                },
                None => {
                    builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await
                }
            };
        });
    }
}
