//! The one body type the proxy sends and returns, boxed only when transformed.
//!
//! Upstream responses and most requests stream through as hyper's `Incoming`.
//! Requests that may be resent after a refresh are held as `Full` bytes (up to the
//! replay limit); a request that turned out larger than the limit continues as
//! `Prefixed`: the chunks already read, then the rest of the stream. A response
//! whose links are rewritten is a `Stream`.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;

pub enum ProxyBody {
    Full(Option<Bytes>),
    Incoming(Incoming),
    Prefixed {
        head: VecDeque<Bytes>,
        rest: Incoming,
    },
    /// A transformed response body (link rewriting, decompression).
    Stream(Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>),
    /// A request body of unknown length, cut off (and `hit` set) past `left` bytes.
    Limited {
        inner: Box<ProxyBody>,
        left: u64,
        hit: std::sync::Arc<std::sync::atomic::AtomicBool>,
    },
}

/// The error a [`ProxyBody::Limited`] body ends with.
#[derive(Debug, thiserror::Error)]
#[error("request body over the configured maximum")]
pub struct TooLarge;

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
            ProxyBody::Incoming(body) => boxed(Pin::new(body).poll_frame(cx)),
            ProxyBody::Prefixed { head, rest } => match head.pop_front() {
                Some(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
                None => boxed(Pin::new(rest).poll_frame(cx)),
            },
            ProxyBody::Stream(s) => s
                .as_mut()
                .poll_next(cx)
                .map(|o| o.map(|r| r.map(Frame::data).map_err(BoxError::from))),
            ProxyBody::Limited { inner, left, hit } => {
                let polled = Pin::new(inner.as_mut()).poll_frame(cx);
                if let Poll::Ready(Some(Ok(frame))) = &polled
                    && let Some(data) = frame.data_ref()
                {
                    let n = data.len() as u64;
                    if n > *left {
                        hit.store(true, std::sync::atomic::Ordering::Relaxed);
                        return Poll::Ready(Some(Err(Box::new(TooLarge))));
                    }
                    *left -= n;
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(bytes) => bytes.is_none(),
            ProxyBody::Incoming(body) => body.is_end_stream(),
            ProxyBody::Prefixed { head, rest } => head.is_empty() && rest.is_end_stream(),
            ProxyBody::Stream(_) => false,
            ProxyBody::Limited { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            ProxyBody::Incoming(body) => body.size_hint(),
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
            ProxyBody::Stream(_) | ProxyBody::Limited { .. } => SizeHint::new(),
        }
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
pub async fn prepare(mut body: Incoming, limit: usize) -> Result<Prepared, hyper::Error> {
    if body.is_end_stream() {
        return Ok(Prepared::Replayable(Bytes::new()));
    }
    if body.size_hint().lower() > limit as u64 {
        return Ok(Prepared::Streaming(ProxyBody::Incoming(body)));
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
