//! Entry points for the fuzz targets in `fuzz/` and the property tests: the
//! parsers and matchers that read untrusted input, each wrapped so that a caller
//! outside the crate can drive it. Not an API; nothing else uses it.

use std::time::SystemTime;

use http::{StatusCode, Uri};

use crate::config::{Config, RouteUpstream};
use bytes::Bytes;

use crate::proxy::{JsonLinks, Rewriter, Router, XmlLinks, rewrite_stream, upstream_uri};

/// The configuration parser and validator, on any text.
pub fn config(text: &str) {
    let _ = Config::parse(text, "fuzz.toml".as_ref());
}

/// The token response parser, on any status and body.
pub fn token_response(status: u16, body: &[u8]) {
    if let Ok(status) = StatusCode::from_u16(status) {
        let _ = crate::token::parse_response(status, body, None, SystemTime::now());
    }
}

const ROUTES: &str = r#"
[tokens.t]
grant = "client_credentials"
token_url = "https://id.example.com/token"
client_id = "id"
client_secret = "s"
[[routes]]
prefix = "/ex/"
upstream = "https://api.example.com/api/"
token = "t"
[[routes]]
prefix = "/"
host = "other.example.com"
upstream = "https://other.example.com/"
token = "t"
strip_prefix = false
"#;

/// The route matcher on any request target; returns the upstream URI it would use.
pub fn route(target: &str) -> Option<String> {
    let uri: Uri = target.parse().ok()?;
    let config = Config::parse(ROUTES, "routes.toml".as_ref()).ok()?;
    let router = Router::new(config.routes);
    let t = if uri.scheme().is_some() {
        router.absolute(&uri, "http").ok()?
    } else {
        router.origin(&uri, Some("localhost:8080")).ok()?
    };
    let RouteUpstream::Static(up) = &router.routes()[t.route].upstream else {
        return None;
    };
    upstream_uri(up, t.rest(&uri), uri.query(), None)
        .ok()
        .map(|u| u.to_string())
}

const BASE: &str = "https://api.example.com/v1/";
const PROXY: &str = "http://localhost:8080/ex/";

/// `body` cut at `cuts` (clamped to the body, in order).
fn cut<'a>(body: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut chunks = Vec::new();
    let mut at = 0;
    for &c in cuts {
        let c = c.min(body.len()).max(at);
        chunks.push(&body[at..c]);
        at = c;
    }
    chunks.push(&body[at..]);
    chunks
}

/// The streaming link rewriter over `body` cut at `cuts`, and the one-shot
/// replacement of the whole body; a correct matcher gives the same bytes.
pub fn rewrite(body: &[u8], cuts: &[usize]) -> (Vec<u8>, Vec<u8>) {
    let streamed = rewrite_stream(
        Rewriter::new(BASE, PROXY).expect("patterns"),
        &cut(body, cuts),
    );
    let whole = Rewriter::new(BASE, PROXY)
        .expect("patterns")
        .replace_bytes(body);
    (streamed, whole)
}

/// The paging-link scanners (JSON, then XML) over `body` cut at `cuts`, and over
/// the whole body in one piece; where a body is cut must not change the output.
pub fn paging(body: &[u8], cuts: &[usize]) -> [(Vec<u8>, Vec<u8>); 2] {
    let chunks = cut(body, cuts);
    let json = |pieces: &[&[u8]]| {
        feed(
            JsonLinks::new(BASE, PROXY),
            pieces,
            JsonLinks::push,
            JsonLinks::finish,
        )
    };
    let xml = |pieces: &[&[u8]]| {
        feed(
            XmlLinks::new(BASE, PROXY),
            pieces,
            XmlLinks::push,
            XmlLinks::finish,
        )
    };
    [(json(&chunks), json(&[body])), (xml(&chunks), xml(&[body]))]
}

/// A streaming scanner's whole output for `pieces`: each pushed, then the end.
fn feed<S>(
    mut scanner: S,
    pieces: &[&[u8]],
    push: fn(&mut S, Bytes) -> Bytes,
    finish: fn(&mut S) -> Bytes,
) -> Vec<u8> {
    let mut out: Vec<u8> = pieces
        .iter()
        .flat_map(|p| push(&mut scanner, Bytes::copy_from_slice(p)))
        .collect();
    out.extend_from_slice(&finish(&mut scanner));
    out
}

/// The HTTP/1 framing reader on any byte stream: it never panics, and where the
/// stream is cut into reads does not change its verdicts.
pub fn framing(data: &[u8]) {
    use crate::server::framing::{Framing, Verdicts};
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let read = |pieces: &[&[u8]]| {
        let out = Verdicts::default();
        let mut f = Framing::new(64 * 1024);
        for p in pieces {
            f.feed(p, &out);
        }
        std::iter::from_fn(|| out.take()).collect::<Vec<_>>()
    };
    let at = usize::from(cut).min(stream.len());
    let whole = read(&[stream]);
    let split = read(&[&stream[..at], &stream[at..]]);
    assert_eq!(whole, split, "cut at {at}");
}
