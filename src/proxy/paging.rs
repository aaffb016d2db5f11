//! Next-page links, and only those, turned back into proxy URLs.
//!
//! `rewrite_links = "pagination"` (the default) rewrites a URL only where an API
//! puts the link to another page: a JSON string under a paging key (`__next`,
//! `@odata.nextLink`, `next`, `links.next`, HubSpot's `paging.next.link`, HAL's
//! `_links.next.href`, …) that starts with the route's upstream base, and the
//! `href` of an XML `<link rel="next">` (Atom, OData v2). Data stays as the
//! provider wrote it: Exact Online's `__metadata.uri`, `__deferred.uri` and Atom
//! `<id>`s are not links to follow, and a warehouse should load them unchanged.
//!
//! Both scanners stream. The JSON one follows the document's structure byte by byte
//! (a stack of containers and the key being read, nothing else) and holds back
//! only the bytes of a link value that might still turn out to start with the
//! upstream base, at most that base's length; a chunk without a link goes on as
//! the same buffer. The XML one holds back one tag at a time (tags longer than
//! [`MAX_TAG`] go on unchanged). Malformed input is never worse than passed
//! through: the scanners only ever replace a matched prefix.
//!
//! Length: two streaming scanners (JSON, XML) under one contract: the same output
//! whatever the chunk boundaries.

use bytes::{Bytes, BytesMut};

/// Keys whose string value is a link to another page of the same collection.
const PAGE_KEYS: &[&[u8]] = &[
    b"__next",
    b"@odata.nextLink",
    b"odata.nextLink",
    b"@odata.deltaLink",
    b"odata.deltaLink",
    b"nextLink",
    b"deltaLink",
    b"next",
    b"prev",
    b"previous",
    b"first",
    b"last",
    b"next_page",
    b"previous_page",
    b"prev_page",
    b"next_page_url",
    b"prev_page_url",
    b"nextPage",
    b"nextPageUrl",
    b"next_url",
    b"nextUrl",
];

/// Keys that hold a link's URL inside an object named by a paging key
/// (`"next": {"link": …}`, `"next": {"href": …}`).
const URL_KEYS: &[&[u8]] = &[b"link", b"href", b"url", b"uri"];

/// Deeper documents are passed through from that depth on, unscanned.
const MAX_DEPTH: usize = 128;

/// Longer tags are passed through unchanged.
pub const MAX_TAG: usize = 4096;

/// A key, kept only as long as a paging key can be.
#[derive(Clone, Copy, Default)]
struct Key {
    bytes: [u8; 24],
    /// `u8::MAX`: longer than any paging key.
    len: u8,
}

impl Key {
    fn push(&mut self, b: u8) {
        match self.bytes.get_mut(usize::from(self.len)) {
            Some(slot) => {
                *slot = b;
                self.len += 1;
            }
            None => self.len = u8::MAX,
        }
    }

    fn is(&self, set: &[&[u8]]) -> bool {
        let Some(k) = self.bytes.get(..usize::from(self.len)) else {
            return false;
        };
        set.contains(&k)
    }
}

#[derive(Clone, Copy)]
struct Frame {
    object: bool,
    /// The key this container is the value of (empty in an array).
    named: Key,
    /// The key whose value comes next (objects only).
    key: Key,
    expecting_key: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Lex {
    Between,
    Key,
    KeyEscape,
    Value,
    ValueEscape,
}

/// The two spellings of the upstream base (as written, and JSON-escaped) being
/// matched at the start of a link value.
#[derive(Clone, Copy)]
struct Candidate {
    matched: usize,
    alive: [bool; 2],
}

enum Step {
    Going,
    Matched(usize),
    Failed,
}

/// The from/to pairs both scanners replace.
struct Bases {
    from: [Vec<u8>; 2],
    to: [Bytes; 2],
}

impl Bases {
    fn new(upstream_base: &str, proxy_base: &str) -> Bases {
        let escape = |s: &str| s.replace('/', "\\/");
        Bases {
            from: [
                upstream_base.as_bytes().to_vec(),
                escape(upstream_base).into_bytes(),
            ],
            to: [
                Bytes::from(proxy_base.to_owned()),
                Bytes::from(escape(proxy_base)),
            ],
        }
    }

    fn step(&self, c: &mut Candidate, b: u8) -> Step {
        for (i, from) in self.from.iter().enumerate() {
            if c.alive[i] && from.get(c.matched) != Some(&b) {
                c.alive[i] = false;
            }
        }
        c.matched += 1;
        match self
            .from
            .iter()
            .enumerate()
            .find(|(i, from)| c.alive[*i] && from.len() == c.matched)
        {
            Some((i, _)) => Step::Matched(i),
            None if c.alive.iter().any(|a| *a) => Step::Going,
            None => Step::Failed,
        }
    }
}

/// Assembles a chunk's output: the chunk itself when nothing changed, else a copy.
struct Out {
    buf: BytesMut,
    copied: bool,
}

impl Out {
    fn new() -> Out {
        Out {
            buf: BytesMut::new(),
            copied: false,
        }
    }

    fn put(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        self.copied = true;
    }

    /// What the chunk gives, `chunk[from..to]` being its untouched rest.
    fn finish(mut self, chunk: &Bytes, from: usize, to: usize) -> Bytes {
        if !self.copied {
            return chunk.slice(from..to);
        }
        self.buf.extend_from_slice(&chunk[from..to]);
        self.buf.freeze()
    }
}

/// Paging links in a JSON document.
pub struct JsonLinks {
    bases: Bases,
    lex: Lex,
    stack: Vec<Frame>,
    candidate: Option<Candidate>,
    /// Bytes of the candidate from earlier chunks.
    held: BytesMut,
    /// Deeper than [`MAX_DEPTH`]: everything from there on passes through.
    gave_up: bool,
}

impl JsonLinks {
    pub fn new(upstream_base: &str, proxy_base: &str) -> JsonLinks {
        JsonLinks {
            bases: Bases::new(upstream_base, proxy_base),
            lex: Lex::Between,
            stack: Vec::new(),
            candidate: None,
            held: BytesMut::new(),
            gave_up: false,
        }
    }

    pub fn push(&mut self, chunk: Bytes) -> Bytes {
        if self.gave_up {
            return chunk;
        }
        let mut out = Out::new();
        let mut from = 0;
        // Where the current candidate's bytes in this chunk begin.
        let mut start = 0;
        let mut i = 0;
        while i < chunk.len() {
            // Inside a string value that is not a link, only its end matters.
            if self.lex == Lex::Value && self.candidate.is_none() {
                match memchr::memchr2(b'"', b'\\', &chunk[i..]) {
                    Some(at) => i += at,
                    None => break,
                }
            }
            let b = chunk[i];
            if let Some(c) = &mut self.candidate {
                match self.bases.step(c, b) {
                    Step::Going => {}
                    Step::Matched(which) => {
                        out.put(&chunk[from..start]);
                        out.put(&self.bases.to[which]);
                        self.held.clear();
                        self.candidate = None;
                        from = i + 1;
                    }
                    Step::Failed => {
                        if !self.held.is_empty() {
                            // The held bytes come before this chunk's (from is 0).
                            let held = self.held.split();
                            out.put(&held);
                        }
                        self.candidate = None;
                    }
                }
            }
            if self.lex(b) {
                self.candidate = Some(Candidate {
                    matched: 0,
                    alive: [true, true],
                });
                start = i + 1;
            }
            if self.gave_up {
                return out.finish(&chunk, from, chunk.len());
            }
            i += 1;
        }
        if self.candidate.is_some() {
            let start = start.max(from);
            self.held.extend_from_slice(&chunk[start..]);
            return out.finish(&chunk, from, start);
        }
        out.finish(&chunk, from, chunk.len())
    }

    /// The bytes still held at the end of the body.
    pub fn finish(&mut self) -> Bytes {
        self.candidate = None;
        self.held.split().freeze()
    }

    /// Advances the lexer by one byte; `true` when a link value's string opens.
    fn lex(&mut self, b: u8) -> bool {
        match self.lex {
            Lex::Key => match b {
                b'\\' => self.lex = Lex::KeyEscape,
                b'"' => self.lex = Lex::Between,
                _ => {
                    if let Some(top) = self.stack.last_mut() {
                        top.key.push(b);
                    }
                }
            },
            Lex::KeyEscape => {
                if let Some(top) = self.stack.last_mut() {
                    top.key.push(b);
                }
                self.lex = Lex::Key;
            }
            Lex::Value => match b {
                b'\\' => self.lex = Lex::ValueEscape,
                b'"' => self.lex = Lex::Between,
                _ => {}
            },
            Lex::ValueEscape => self.lex = Lex::Value,
            Lex::Between => return self.structure(b),
        }
        false
    }

    fn structure(&mut self, b: u8) -> bool {
        match b {
            b'{' | b'[' => {
                if self.stack.len() >= MAX_DEPTH {
                    self.gave_up = true;
                    return false;
                }
                let named = match self.stack.last() {
                    Some(top) if top.object => top.key,
                    _ => Key::default(),
                };
                self.stack.push(Frame {
                    object: b == b'{',
                    named,
                    key: Key::default(),
                    expecting_key: true,
                });
            }
            b'}' | b']' => {
                self.stack.pop();
            }
            b',' => {
                if let Some(top) = self.stack.last_mut().filter(|t| t.object) {
                    top.expecting_key = true;
                    top.key = Key::default();
                }
            }
            b':' => {
                if let Some(top) = self.stack.last_mut() {
                    top.expecting_key = false;
                }
            }
            b'"' => match self.stack.last() {
                Some(top) if top.object && top.expecting_key => self.lex = Lex::Key,
                top => {
                    self.lex = Lex::Value;
                    return top.is_some_and(|t| {
                        t.object
                            && (t.key.is(PAGE_KEYS)
                                || (t.key.is(URL_KEYS) && t.named.is(PAGE_KEYS)))
                    });
                }
            },
            _ => {}
        }
        false
    }
}

/// `rel="next"` (and the other paging relations) links' `href`s in XML.
pub struct XmlLinks {
    bases: Bases,
    /// The tag being read, from its `<`; empty between tags.
    tag: BytesMut,
    /// In a tag longer than [`MAX_TAG`], passed through up to its `>`.
    skipping: bool,
}

impl XmlLinks {
    pub fn new(upstream_base: &str, proxy_base: &str) -> XmlLinks {
        XmlLinks {
            bases: Bases::new(upstream_base, proxy_base),
            tag: BytesMut::new(),
            skipping: false,
        }
    }

    pub fn push(&mut self, chunk: Bytes) -> Bytes {
        let mut out = Out::new();
        let mut from = 0;
        let mut i = 0;
        while i < chunk.len() {
            if self.skipping {
                match memchr::memchr(b'>', &chunk[i..]) {
                    None => break,
                    Some(at) => {
                        i += at + 1;
                        self.skipping = false;
                    }
                }
                continue;
            }
            if self.tag.is_empty() {
                // Text: on to the next tag.
                match memchr::memchr(b'<', &chunk[i..]) {
                    None => break,
                    Some(at) => {
                        out.put(&chunk[from..i + at]);
                        i += at;
                        self.tag.extend_from_slice(b"<");
                        i += 1;
                        from = i;
                    }
                }
                continue;
            }
            let rest = &chunk[i..];
            match memchr::memchr(b'>', rest) {
                Some(at) => {
                    self.tag.extend_from_slice(&rest[..=at]);
                    i += at + 1;
                    from = i;
                    let tag = self.tag.split();
                    if tag.len() > MAX_TAG {
                        out.put(&tag);
                    } else {
                        out.put(&self.rewrite_tag(&tag));
                    }
                }
                None => {
                    self.tag.extend_from_slice(rest);
                    i = chunk.len();
                    from = i;
                    if self.tag.len() > MAX_TAG {
                        let tag = self.tag.split();
                        out.put(&tag);
                        self.skipping = true;
                    }
                }
            }
        }
        out.finish(&chunk, from, chunk.len())
    }

    pub fn finish(&mut self) -> Bytes {
        self.tag.split().freeze()
    }

    /// A `<link>` (or `<prefix:link>`) tag with a paging `rel`, its `href`'s
    /// upstream base replaced; any other tag as it is.
    fn rewrite_tag<'a>(&self, tag: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
        use std::borrow::Cow;
        let name_end = tag[1..]
            .iter()
            .position(|b| b.is_ascii_whitespace() || *b == b'/' || *b == b'>')
            .map_or(tag.len(), |p| p + 1);
        let name = &tag[1..name_end];
        let local = name.rsplit(|b| *b == b':').next().unwrap_or(name);
        if !local.eq_ignore_ascii_case(b"link") {
            return Cow::Borrowed(tag);
        }
        let paging = ["next", "prev", "previous", "first", "last"]
            .iter()
            .any(|rel| {
                attribute(tag, b"rel").is_some_and(|v| v.eq_ignore_ascii_case(rel.as_bytes()))
            });
        let Some(href) = attribute_span(tag, b"href") else {
            return Cow::Borrowed(tag);
        };
        let from = &self.bases.from[0];
        if !paging || !tag[href.clone()].starts_with(from) {
            return Cow::Borrowed(tag);
        }
        let mut out = Vec::with_capacity(tag.len() + self.bases.to[0].len());
        out.extend_from_slice(&tag[..href.start]);
        out.extend_from_slice(&self.bases.to[0]);
        out.extend_from_slice(&tag[href.start + from.len()..]);
        Cow::Owned(out)
    }
}

/// The value of attribute `name` in `tag`.
fn attribute<'a>(tag: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    attribute_span(tag, name).map(|r| &tag[r])
}

/// Where the value of attribute `name` lies in `tag` (quoted with `"` or `'`).
fn attribute_span(tag: &[u8], name: &[u8]) -> Option<std::ops::Range<usize>> {
    let mut i = 0;
    while let Some(at) = memchr::memmem::find(&tag[i..], name) {
        let start = i + at;
        i = start + name.len();
        let before_ok = start > 0 && tag[start - 1].is_ascii_whitespace();
        let mut j = i;
        while tag.get(j).is_some_and(u8::is_ascii_whitespace) {
            j += 1;
        }
        if !before_ok || tag.get(j) != Some(&b'=') {
            continue;
        }
        j += 1;
        while tag.get(j).is_some_and(u8::is_ascii_whitespace) {
            j += 1;
        }
        let quote = *tag.get(j)?;
        if quote != b'"' && quote != b'\'' {
            continue;
        }
        let open = j + 1;
        let close = open + memchr::memchr(quote, &tag[open..])?;
        return Some(open..close);
    }
    None
}

#[cfg(test)]
#[path = "paging_tests.rs"]
mod tests;
