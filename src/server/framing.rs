//! A second reading of each HTTP/1 request head, for what hyper repairs silently.
//!
//! hyper reads a request with both `Content-Length` and `Transfer-Encoding` by
//! dropping the length (RFC 9112 §6.3 allows that), so the service never learns the
//! framing was ambiguous. nginx refuses such requests, and so does tokenproxy: a
//! smuggling attempt is refused, not repaired. [`Framing`] sees the bytes before
//! hyper does, parses each head on its own, follows the body framing to find the
//! next head, and queues one verdict per request. The service takes the verdicts in
//! order, one per HTTP/1 request; hyper serves a connection's requests one at a time
//! and in order, so the n-th verdict belongs to the n-th request.
//!
//! It does not judge anything hyper already refuses (bad syntax, conflicting
//! lengths, a final encoding other than `chunked`): where the two readings could
//! disagree it stops reading and leaves the connection to hyper, which closes it.
//! HTTP/2 connections (the preface) are passed through.

use std::collections::VecDeque;
use std::sync::Mutex;

/// The HTTP/2 connection preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Header fields hyper accepts in one head (its default, kept: a larger limit
/// makes hyper allocate its parse arrays on the heap for every request);
/// `proxy.max_headers`, at most this, is checked after it with tokenproxy's own
/// answer. More, and hyper refuses the connection with a bare `431`.
pub const MAX_HEADERS: usize = 100;

/// What the second reading found in one request head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// `Content-Length` together with `Transfer-Encoding`.
    Ambiguous,
}

/// Verdicts waiting for their requests, shared by the reader and the service.
#[derive(Default)]
pub struct Verdicts(Mutex<VecDeque<Verdict>>);

impl Verdicts {
    fn push(&self, v: Verdict) {
        if let Ok(mut q) = self.0.lock() {
            q.push_back(v);
        }
    }

    /// The verdict of the next request; `Ok` when the reading stopped.
    pub fn next(&self) -> Verdict {
        self.take().unwrap_or(Verdict::Ok)
    }

    /// The next verdict queued, if any.
    pub fn take(&self) -> Option<Verdict> {
        self.0.lock().ok().and_then(|mut q| q.pop_front())
    }
}

#[derive(Debug)]
enum Phase {
    /// Reading a head into `head`.
    Head,
    /// `n` body bytes left.
    Fixed(u64),
    Chunked(Chunk),
    /// Not reading: HTTP/2, or something hyper will refuse.
    Off,
}

#[derive(Debug, Clone, Copy)]
enum Chunk {
    /// The hex size; `digits` read so far.
    Size {
        size: u64,
        digits: u8,
    },
    /// A chunk extension, up to the line's end.
    Ext {
        size: u64,
    },
    /// The `\n` after the size line.
    SizeLf {
        size: u64,
    },
    Data(u64),
    DataCr,
    DataLf,
    /// A trailer line of `len` bytes so far (0: the final empty line).
    Trailer {
        len: usize,
    },
    TrailerLf {
        len: usize,
    },
}

pub struct Framing {
    phase: Phase,
    head: Vec<u8>,
    /// Heads larger than this are left to hyper (which answers 431).
    max_head: usize,
    /// While undecided: how many bytes of the HTTP/2 preface have arrived.
    preface: Option<usize>,
    /// Bytes of a request head (or of empty lines before one, or of the HTTP/2
    /// preface) have arrived and the head has not ended.
    head_begun: bool,
}

impl Framing {
    pub fn new(max_head: usize) -> Framing {
        Framing {
            phase: Phase::Head,
            head: Vec::new(),
            max_head,
            preface: Some(0),
            head_begun: false,
        }
    }

    /// Whether a request head has begun to arrive and has not ended: the wait for
    /// the rest of it is bounded as a whole, not per read. Stays true past
    /// `max_head` (hyper refuses the head once it holds that much).
    pub fn mid_head(&self) -> bool {
        self.head_begun
    }

    /// Reads `bytes` as they arrive, queueing a verdict per complete head.
    pub fn feed(&mut self, bytes: &[u8], out: &Verdicts) {
        if let Some(matched) = self.preface {
            // Undecided while the bytes so far are a prefix of the HTTP/2 preface
            // (`P` may also start `POST`): the preface arrives in pieces too.
            let want = &PREFACE[matched..];
            let n = bytes.len().min(want.len());
            if bytes[..n] == want[..n] {
                if matched + n == PREFACE.len() {
                    self.preface = None;
                    self.phase = Phase::Off;
                    self.head_begun = false;
                } else {
                    self.preface = Some(matched + n);
                    self.head_begun = true;
                }
                return;
            }
            // HTTP/1 after all: read what was held back, then the rest.
            self.preface = None;
            self.read(&PREFACE[..matched], out);
        }
        self.read(bytes, out);
    }

    fn read(&mut self, mut bytes: &[u8], out: &Verdicts) {
        while !bytes.is_empty() {
            match &mut self.phase {
                Phase::Off => return,
                Phase::Head => {
                    let used = self.read_head(bytes, out);
                    bytes = &bytes[used..];
                }
                Phase::Fixed(left) => {
                    let n = (*left).min(bytes.len() as u64);
                    *left -= n;
                    bytes = &bytes[n as usize..];
                    if *left == 0 {
                        self.phase = Phase::Head;
                    }
                }
                Phase::Chunked(state) => {
                    let (used, next) = chunked(*state, bytes);
                    bytes = &bytes[used..];
                    self.phase = match next {
                        Some(Some(s)) => Phase::Chunked(s),
                        Some(None) => Phase::Head,
                        None => Phase::Off,
                    };
                }
            }
        }
    }

    /// Takes bytes into the head until it ends; returns how many it used. A head
    /// that arrives whole (the common case) is judged where it lies, without a copy.
    fn read_head(&mut self, bytes: &[u8], out: &Verdicts) -> usize {
        // Empty lines before a request line are ignored (RFC 9112 §2.2).
        let mut start = 0;
        if self.head.is_empty() {
            while start < bytes.len() && (bytes[start] == b'\r' || bytes[start] == b'\n') {
                start += 1;
            }
            if let Some(end) = find_end(&bytes[start..]) {
                self.phase = judge(&bytes[start..start + end], out);
                self.head_begun = false;
                return start + end;
            }
        }
        let before = self.head.len();
        self.head.extend_from_slice(&bytes[start..]);
        let Some(end) =
            find_end(&self.head[before.saturating_sub(3)..]).map(|e| e + before.saturating_sub(3))
        else {
            self.head_begun = true;
            if self.head.len() > self.max_head {
                self.phase = Phase::Off;
            }
            return bytes.len();
        };
        self.phase = judge(&self.head[..end], out);
        self.head_begun = false;
        self.head.clear();
        start + (end - before)
    }
}

/// The verdict on one complete head, and how its body is framed.
fn judge(head: &[u8], out: &Verdicts) -> Phase {
    // Uninitialised: nothing is written for fields the head does not have.
    let mut headers =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(head, &mut headers) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Phase::Off,
    }
    let mut length: Option<u64> = None;
    let mut te = false;
    let mut chunked = false;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            te = true;
            chunked = last_coding_is_chunked(h.value);
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let Some(n) = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
            else {
                return Phase::Off;
            };
            if length.is_some_and(|l| l != n) {
                return Phase::Off;
            }
            length = Some(n);
        }
    }
    if te && !chunked {
        return Phase::Off;
    }
    out.push(if te && length.is_some() {
        Verdict::Ambiguous
    } else {
        Verdict::Ok
    });
    if req.method == Some("CONNECT") {
        // What follows is a tunnel's bytes (read by a framing reader of their own)
        // or nothing: a refused CONNECT closes the connection.
        return Phase::Off;
    }
    match (te, length) {
        (true, _) => Phase::Chunked(Chunk::Size { size: 0, digits: 0 }),
        (false, Some(n)) if n > 0 => Phase::Fixed(n),
        _ => Phase::Head,
    }
}

fn find_end(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
}

fn last_coding_is_chunked(value: &[u8]) -> bool {
    std::str::from_utf8(value).is_ok_and(|v| {
        v.rsplit(',')
            .next()
            .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"))
    })
}

/// Follows chunked framing through `bytes`. Returns the bytes used and the next
/// state: `Some(Some(_))` still in the body, `Some(None)` body done, `None` a
/// framing error (hyper refuses it; stop reading).
fn chunked(mut state: Chunk, bytes: &[u8]) -> (usize, Option<Option<Chunk>>) {
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        state = match state {
            Chunk::Size { size, digits } => match (b as char).to_digit(16) {
                Some(d) if digits < 16 => Chunk::Size {
                    size: size * 16 + u64::from(d),
                    digits: digits + 1,
                },
                None if digits > 0 && b == b'\r' => Chunk::SizeLf { size },
                None if digits > 0 && (b == b';' || b == b' ' || b == b'\t') => Chunk::Ext { size },
                _ => return (i, None),
            },
            Chunk::Ext { size } => match b {
                b'\r' => Chunk::SizeLf { size },
                b'\n' => return (i, None),
                _ => Chunk::Ext { size },
            },
            Chunk::SizeLf { size } if b == b'\n' => {
                if size == 0 {
                    Chunk::Trailer { len: 0 }
                } else {
                    Chunk::Data(size)
                }
            }
            Chunk::Data(left) => {
                let n = (left as usize).min(bytes.len() - i);
                i += n;
                let left = left - n as u64;
                state = if left == 0 {
                    Chunk::DataCr
                } else {
                    Chunk::Data(left)
                };
                continue;
            }
            Chunk::DataCr if b == b'\r' => Chunk::DataLf,
            Chunk::DataLf if b == b'\n' => Chunk::Size { size: 0, digits: 0 },
            Chunk::Trailer { len } => match b {
                b'\r' => Chunk::TrailerLf { len },
                b'\n' => return (i, None),
                _ => Chunk::Trailer { len: len + 1 },
            },
            Chunk::TrailerLf { len } if b == b'\n' => {
                if len == 0 {
                    return (i + 1, Some(None));
                }
                Chunk::Trailer { len: 0 }
            }
            _ => return (i, None),
        };
        i += 1;
    }
    (i, Some(Some(state)))
}

#[cfg(test)]
#[path = "framing_tests.rs"]
mod tests;
