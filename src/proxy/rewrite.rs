//! Upstream URLs in response bodies and link headers, turned back into proxy URLs.
//!
//! APIs page by returning absolute next-page URLs (OData `@odata.nextLink` and
//! `__next`, HubSpot `paging.next.link`, Atom `<link rel="next">`, `Link` headers).
//! A client that follows one would leave the proxy and lose its token. What a
//! route rewrites is its `rewrite_links`: `"pagination"` (the default) only the
//! next-page links ([`super::paging`]), `"all"` every occurrence of the route's
//! upstream base URL — as written, and JSON-escaped (`https:\/\/host\/base\/`) —
//! and `"off"` nothing. Either way the proxy base is the one the client used, only
//! JSON and XML bodies are touched, and everything else streams through byte for
//! byte.
//!
//! The rewrite streams: the matchers keep at most one pattern's length (or one XML
//! tag) of carry between chunks, so memory stays flat and a URL split across
//! chunks is still found. Compressed bodies (gzip, deflate, br) are decoded first
//! and sent on as identity, unless the client refuses identity, in which case they
//! are gzipped again. `Content-Length` is dropped (the length may change) and a
//! strong `ETag` is weakened.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use aho_corasick::AhoCorasick;
use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt, TryStreamExt};
use http::HeaderValue;
use http::header::{self, HeaderMap};
use http_body_util::BodyDataStream;
use tokio_util::io::{ReaderStream, StreamReader};

use super::paging::{JsonLinks, XmlLinks};
use crate::body::{ProxyBody, UpstreamBody};
use crate::config::RewriteLinks;

/// Replaces an upstream base URL (and its JSON-escaped form) with a proxy base.
pub struct Rewriter {
    patterns: AhoCorasick,
    replacements: [Bytes; 2],
    longest: usize,
}

impl Rewriter {
    /// `None` when the patterns cannot be built (they always can for URLs).
    pub fn new(upstream_base: &str, proxy_base: &str) -> Option<Rewriter> {
        let escape = |s: &str| s.replace('/', "\\/");
        let patterns = [upstream_base.to_owned(), escape(upstream_base)];
        let longest = patterns.iter().map(String::len).max().unwrap_or(0);
        Some(Rewriter {
            patterns: AhoCorasick::builder()
                .match_kind(aho_corasick::MatchKind::LeftmostLongest)
                .build(&patterns)
                .ok()?,
            replacements: [
                Bytes::from(proxy_base.to_owned()),
                Bytes::from(escape(proxy_base)),
            ],
            longest,
        })
    }

    /// Every occurrence replaced in a whole body (what the streaming matcher must
    /// equal, however the body is cut).
    pub fn replace_bytes(&self, body: &[u8]) -> Vec<u8> {
        let replacements: Vec<&[u8]> = self.replacements.iter().map(|b| &b[..]).collect();
        self.patterns.replace_all_bytes(body, &replacements)
    }
}

/// The streaming half: chunks in, rewritten chunks out, a bounded carry between.
struct Matcher {
    rewriter: Rewriter,
    carry: BytesMut,
}

impl Matcher {
    /// Rewrites what can be decided now; keeps back a tail that might be the start
    /// of a URL completed by the next chunk. `last` flushes everything.
    fn push(&mut self, chunk: &[u8], last: bool) -> Bytes {
        self.carry.extend_from_slice(chunk);
        let buf = &self.carry[..];
        let safe = if last {
            buf.len()
        } else {
            buf.len().saturating_sub(self.rewriter.longest - 1)
        };
        let mut out = BytesMut::with_capacity(buf.len());
        let mut pos = 0;
        for m in self.rewriter.patterns.find_iter(buf) {
            if m.start() >= safe {
                break;
            }
            out.extend_from_slice(&buf[pos..m.start()]);
            out.extend_from_slice(&self.rewriter.replacements[m.pattern().as_usize()]);
            pos = m.end();
        }
        let keep_from = pos.max(safe);
        out.extend_from_slice(&buf[pos..keep_from]);
        let _ = self.carry.split_to(keep_from);
        out.freeze()
    }
}

/// The streaming matcher over `chunks`, collected (for tests and fuzzing).
pub fn rewrite_stream(rewriter: Rewriter, chunks: &[&[u8]]) -> Vec<u8> {
    let mut m = Matcher {
        rewriter,
        carry: BytesMut::new(),
    };
    let mut out = Vec::new();
    for c in chunks {
        out.extend_from_slice(&m.push(c, false));
    }
    out.extend_from_slice(&m.push(b"", true));
    out
}

/// What rewrites one body: every occurrence, or the paging links of JSON or XML.
enum Scanner {
    All(Matcher),
    Json(JsonLinks),
    Xml(XmlLinks),
}

impl Scanner {
    fn push(&mut self, chunk: Bytes) -> Bytes {
        match self {
            Scanner::All(m) => m.push(&chunk, false),
            Scanner::Json(j) => j.push(chunk),
            Scanner::Xml(x) => x.push(chunk),
        }
    }

    fn finish(&mut self) -> Bytes {
        match self {
            Scanner::All(m) => m.push(b"", true),
            Scanner::Json(j) => j.finish(),
            Scanner::Xml(x) => x.finish(),
        }
    }
}

/// A stream of chunks passed through a [`Scanner`].
struct Rewriting<S> {
    inner: S,
    scanner: Scanner,
    done: bool,
}

impl<S: Stream<Item = io::Result<Bytes>> + Unpin> Stream for Rewriting<S> {
    type Item = io::Result<Bytes>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<io::Result<Bytes>>> {
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            let out = match self.inner.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(chunk))) => self.scanner.push(chunk),
                Poll::Ready(None) => {
                    self.done = true;
                    self.scanner.finish()
                }
            };
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(out)));
            }
        }
    }
}

/// The lower-case name before any `;parameters` (`Application/JSON; charset=x` →
/// `application/json`, `br;q=0.5` → `br`).
fn token_name(value: &str) -> String {
    value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Media {
    Json,
    Xml,
}

/// JSON or XML, by the response's media type; `None` for anything else.
fn media(headers: &HeaderMap) -> Option<Media> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())?;
    let media = token_name(ct);
    if media == "application/json" || media.ends_with("+json") {
        Some(Media::Json)
    } else if matches!(media.as_str(), "application/xml" | "text/xml") || media.ends_with("+xml") {
        Some(Media::Xml)
    } else {
        None
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Coding {
    Identity,
    Gzip,
    Deflate,
    Brotli,
}

fn coding(headers: &HeaderMap) -> Option<Coding> {
    match headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().map(|s| s.trim().to_ascii_lowercase()))
    {
        None => Some(Coding::Identity),
        Some(Ok(c)) => match c.as_str() {
            "" | "identity" => Some(Coding::Identity),
            "gzip" | "x-gzip" => Some(Coding::Gzip),
            "deflate" => Some(Coding::Deflate),
            "br" => Some(Coding::Brotli),
            _ => None,
        },
        Some(Err(_)) => None,
    }
}

/// What the upstream may send when the proxy will rewrite: the client's list, less
/// the codings the proxy cannot decode (`zstd`, `compress`).
pub fn accept_encoding_for_upstream(headers: &mut HeaderMap) {
    let Some(value) = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
    else {
        return;
    };
    let kept: Vec<&str> = value
        .split(',')
        .map(str::trim)
        .filter(|c| {
            let name = token_name(c);
            matches!(
                name.as_str(),
                "gzip" | "x-gzip" | "deflate" | "br" | "identity"
            )
        })
        .collect();
    match HeaderValue::try_from(kept.join(", ")) {
        Ok(v) if !kept.is_empty() => {
            headers.insert(header::ACCEPT_ENCODING, v);
        }
        _ => {
            headers.remove(header::ACCEPT_ENCODING);
        }
    }
}

/// Whether the client's `Accept-Encoding` rules out an identity body.
pub fn refuses_identity(accept: Option<&HeaderValue>) -> bool {
    let Some(value) = accept.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let q = |name: &str| {
        value.split(',').find_map(|part| {
            let mut it = part.split(';');
            let coding = it.next()?.trim();
            coding.eq_ignore_ascii_case(name).then(|| {
                it.find_map(|p| {
                    p.trim()
                        .strip_prefix("q=")
                        .and_then(|q| q.parse::<f32>().ok())
                })
                .unwrap_or(1.0)
            })
        })
    };
    match q("identity") {
        Some(q) => q == 0.0,
        None => q("*") == Some(0.0),
    }
}

/// Rewrites `body` (and the headers that describe it) as `mode` says, from
/// `upstream_base` to `proxy_base`, when it is JSON or XML in a coding the proxy
/// can read; otherwise returns it untouched.
pub fn body(
    headers: &mut HeaderMap,
    body: UpstreamBody,
    mode: RewriteLinks,
    (upstream_base, proxy_base): (&str, &str),
    client_refuses_identity: bool,
) -> ProxyBody {
    let (Some(media), Some(coding)) = (media(headers), coding(headers)) else {
        return ProxyBody::Upstream(body);
    };
    let scanner = match (mode, media) {
        (RewriteLinks::Off, _) => return ProxyBody::Upstream(body),
        (RewriteLinks::All, _) => match Rewriter::new(upstream_base, proxy_base) {
            Some(r) => Scanner::All(Matcher {
                rewriter: r,
                carry: BytesMut::new(),
            }),
            None => return ProxyBody::Upstream(body),
        },
        (RewriteLinks::Pagination, Media::Json) => {
            Scanner::Json(JsonLinks::new(upstream_base, proxy_base))
        }
        (RewriteLinks::Pagination, Media::Xml) => {
            Scanner::Xml(XmlLinks::new(upstream_base, proxy_base))
        }
    };
    let chunks = BodyDataStream::new(body).map_err(io::Error::other);
    let decoded: Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>> = match coding {
        // An identity body's chunks go to the scanner as they are (no copy).
        Coding::Identity => Box::pin(chunks),
        Coding::Gzip => Box::pin(ReaderStream::new(
            async_compression::tokio::bufread::GzipDecoder::new(StreamReader::new(chunks)),
        )),
        // HTTP's "deflate" is the zlib format (RFC 9110 §8.4.1.2).
        Coding::Deflate => Box::pin(ReaderStream::new(
            async_compression::tokio::bufread::ZlibDecoder::new(StreamReader::new(chunks)),
        )),
        Coding::Brotli => Box::pin(ReaderStream::new(
            async_compression::tokio::bufread::BrotliDecoder::new(StreamReader::new(chunks)),
        )),
    };
    let rewritten = Rewriting {
        inner: decoded,
        scanner,
        done: false,
    };
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::CONTENT_ENCODING);
    if let Some(etag) = headers.get(header::ETAG).and_then(|v| v.to_str().ok())
        && !etag.starts_with("W/")
        && let Ok(weak) = HeaderValue::try_from(format!("W/{etag}"))
    {
        headers.insert(header::ETAG, weak);
    }
    if client_refuses_identity {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        let gzip =
            async_compression::tokio::bufread::GzipEncoder::new(StreamReader::new(rewritten));
        return ProxyBody::Stream(Box::pin(ReaderStream::new(gzip)));
    }
    ProxyBody::Stream(Box::pin(rewritten))
}

/// `Link` header values rewritten from `upstream_base` to `proxy_base` (`Link`
/// holds navigation, never data, so every mode but `"off"` rewrites it;
/// `Location` and `Content-Location` are handled for every route by the header
/// rules).
pub fn link_headers(headers: &mut HeaderMap, upstream_base: &str, proxy_base: &str) {
    if !headers
        .get_all(header::LINK)
        .iter()
        .any(|v| v.to_str().is_ok_and(|s| s.contains(upstream_base)))
    {
        return;
    }
    let links: Vec<HeaderValue> = headers
        .get_all(header::LINK)
        .iter()
        .map(|v| match v.to_str() {
            Ok(s) if s.contains(upstream_base) => {
                HeaderValue::try_from(s.replace(upstream_base, proxy_base))
                    .unwrap_or_else(|_| v.clone())
            }
            _ => v.clone(),
        })
        .collect();
    headers.remove(header::LINK);
    for v in links {
        headers.append(header::LINK, v);
    }
}

#[cfg(test)]
#[path = "rewrite_tests.rs"]
mod tests;
