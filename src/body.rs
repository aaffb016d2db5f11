//! The one body type the proxy sends and returns, boxed only when transformed.
//!
//! Upstream responses stream through as an [`UpstreamBody`] (hyper's `Incoming`,
//! driving its HTTP/1 connection, which `proxy`'s pool lends through the
//! [`Pooled`] interface). A client's request body
//! is a [`ClientBody`]: `Incoming` with a per-read timeout (a client that stops
//! sending, also after `Expect: 100-continue`, fails its request with 408 instead of
//! holding a connection and an upstream request open) and the size limit for bodies
//! of unknown length. Requests that may be resent after a refresh are held as
//! `Full` bytes (up to the replay limit); a request that turned out larger than the
//! limit continues as `Prefixed`: the chunks already read, then the rest of the
//! stream. A response whose links are rewritten is a `Stream`.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;

pub enum ProxyBody {
    Full(Option<Bytes>),
    Upstream(UpstreamBody),
    Client(ClientBody),
    Prefixed {
        head: VecDeque<Bytes>,
        rest: ClientBody,
    },
    /// A transformed response body (link rewriting, decompression).
    Stream(Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>),
}

/// A client's request body: reads bounded in time, and in size when the length was
/// not declared up front.
pub struct ClientBody {
    inner: Incoming,
    timeout: Duration,
    /// Armed while a read waits.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Bytes still allowed, for bodies of unknown length.
    left: Option<u64>,
    ended: Arc<AtomicU8>,
}

/// How a client's body failed, for the response the client gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFault {
    TooLarge,
    Stalled,
}

/// Tells, after a failed upstream request, whether the client's body was the cause.
#[derive(Clone)]
pub struct BodyWatch(Arc<AtomicU8>);

impl BodyWatch {
    pub fn fault(&self) -> Option<BodyFault> {
        match self.0.load(Ordering::Acquire) {
            1 => Some(BodyFault::TooLarge),
            2 => Some(BodyFault::Stalled),
            _ => None,
        }
    }
}

impl ClientBody {
    pub fn new(inner: Incoming, timeout: Duration, limit: Option<u64>) -> (ClientBody, BodyWatch) {
        let ended = Arc::new(AtomicU8::new(0));
        (
            ClientBody {
                inner,
                timeout,
                sleep: None,
                left: limit,
                ended: Arc::clone(&ended),
            },
            BodyWatch(ended),
        )
    }

    fn fail(&mut self, fault: BodyFault) -> BoxError {
        let code = match fault {
            BodyFault::TooLarge => 1,
            BodyFault::Stalled => 2,
        };
        self.ended.store(code, Ordering::Release);
        Box::new(ClientBodyError(fault))
    }
}

/// The error a [`ClientBody`] ends with.
#[derive(Debug, thiserror::Error)]
#[error("request body failed: {0:?}")]
pub struct ClientBodyError(pub BodyFault);

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Polled {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => {
                let timeout = this.timeout;
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if sleep.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(Err(this.fail(BodyFault::Stalled))));
                }
                Poll::Pending
            }
            Poll::Ready(Some(Ok(frame))) => {
                this.sleep = None;
                if let (Some(left), Some(data)) = (this.left.as_mut(), frame.data_ref()) {
                    let n = data.len() as u64;
                    if n > *left {
                        return Poll::Ready(Some(Err(this.fail(BodyFault::TooLarge))));
                    }
                    *left -= n;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            other => boxed(other),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl ProxyBody {
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        ProxyBody::Full((!bytes.is_empty()).then_some(bytes))
    }
}

type Polled = Poll<Option<Result<Frame<Bytes>, BoxError>>>;

fn boxed(p: Poll<Option<Result<Frame<Bytes>, hyper::Error>>>) -> Polled {
    p.map(|o| o.map(|r| r.map_err(BoxError::from)))
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Polled {
        match self.get_mut() {
            ProxyBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Upstream(body) => boxed(Pin::new(body).poll_frame(cx)),
            ProxyBody::Client(body) => Pin::new(body).poll_frame(cx),
            ProxyBody::Prefixed { head, rest } => match head.pop_front() {
                Some(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
                None => Pin::new(rest).poll_frame(cx),
            },
            ProxyBody::Stream(s) => s
                .as_mut()
                .poll_next(cx)
                .map(|o| o.map(|r| r.map(Frame::data).map_err(BoxError::from))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(bytes) => bytes.is_none(),
            ProxyBody::Upstream(body) => body.is_end_stream(),
            ProxyBody::Client(body) => body.is_end_stream(),
            ProxyBody::Prefixed { head, rest } => head.is_empty() && rest.is_end_stream(),
            ProxyBody::Stream(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            ProxyBody::Upstream(body) => body.size_hint(),
            ProxyBody::Client(body) => body.size_hint(),
            ProxyBody::Prefixed { head, rest } => {
                let buffered: u64 = head.iter().map(|b| b.len() as u64).sum();
                let rest = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(buffered + rest.lower());
                if let Some(upper) = rest.upper() {
                    hint.set_upper(buffered + upper);
                }
                hint
            }
            ProxyBody::Stream(_) => SizeHint::new(),
        }
    }
}

/// A pooled HTTP/1 connection lent to the body of the response it carries: the
/// body drives it as it is read and gives it back once read to the end.
pub trait Pooled: Send {
    /// Drives the connection; false once it has ended.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool;
    /// The response was read to the end: the connection may carry another request.
    fn release(self: Box<Self>);
}

/// An upstream response body. Over HTTP/1 it drives its connection as it is read,
/// and returns the connection to the pool once read to the end; dropped earlier,
/// it closes the connection (the rest of the response would be in the way).
///
/// An error (the upstream cut the body short) is reported one poll late: the
/// server flushes what it has buffered when a body is pending, so the client gets
/// the head and the bytes that did arrive before its connection is cut, not a
/// connection closed without a word.
pub struct UpstreamBody {
    body: Incoming,
    lease: Option<Box<dyn Pooled>>,
    ended: bool,
    failed: Option<hyper::Error>,
}

impl UpstreamBody {
    pub fn new(body: Incoming, lease: Option<Box<dyn Pooled>>) -> UpstreamBody {
        UpstreamBody {
            body,
            lease,
            ended: false,
            failed: None,
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if let Some(lease) = self.lease.take()
            && (self.ended || self.body.is_end_stream())
        {
            lease.release();
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if let Some(e) = this.failed.take() {
            return Poll::Ready(Some(Err(e)));
        }
        if let Some(lease) = &mut this.lease
            && !lease.drive(cx)
        {
            // Ended: what it read is in the body's channel; nothing to return.
            this.lease = None;
        }
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(Some(Err(e))) => {
                this.failed = Some(e);
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Poll::Ready(None) => {
                this.ended = true;
                Poll::Ready(None)
            }
            polled => polled,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A request body made ready for sending.
pub enum Prepared {
    /// Small enough to keep: can be sent again.
    Replayable(Bytes),
    /// Streams once.
    Streaming(ProxyBody),
}

/// Reads `body` into memory if it fits in `limit`; otherwise hands it on as a stream
/// without losing what was read.
pub async fn prepare(mut body: ClientBody, limit: usize) -> Result<Prepared, BoxError> {
    if body.is_end_stream() {
        return Ok(Prepared::Replayable(Bytes::new()));
    }
    if body.size_hint().lower() > limit as u64 {
        return Ok(Prepared::Streaming(ProxyBody::Client(body)));
    }
    let mut head = VecDeque::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        // Request trailers are dropped: they cannot be replayed and almost no API uses them.
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        total += data.len();
        head.push_back(data);
        if total > limit {
            return Ok(Prepared::Streaming(ProxyBody::Prefixed {
                head,
                rest: body,
            }));
        }
    }
    Ok(Prepared::Replayable(match head.len() {
        0 => Bytes::new(),
        1 => head.pop_front().unwrap_or_default(),
        _ => {
            let mut all = Vec::with_capacity(total);
            head.iter().for_each(|b| all.extend_from_slice(b));
            Bytes::from(all)
        }
    }))
}
