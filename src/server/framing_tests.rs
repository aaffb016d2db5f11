//! Unit tests of `crate::server::framing`.

use super::*;

fn verdicts(stream: &[u8], piece: usize) -> Vec<Verdict> {
    let out = Verdicts::default();
    let mut f = Framing::new(64 * 1024);
    for chunk in stream.chunks(piece) {
        f.feed(chunk, &out);
    }
    out.0.lock().unwrap().iter().copied().collect()
}

/// Whether a head is under way after each of `pieces` is fed.
fn mid_head_after(pieces: &[&[u8]]) -> Vec<bool> {
    let out = Verdicts::default();
    let mut f = Framing::new(64);
    pieces
        .iter()
        .map(|p| {
            f.feed(p, &out);
            f.mid_head()
        })
        .collect()
}

#[test]
fn knows_when_a_head_is_under_way() {
    let head: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_eq!(mid_head_after(&[head]), [false]);
    assert_eq!(
        mid_head_after(&[b"GET / HT", b"TP/1.1\r\n\r\n"]),
        [true, false]
    );
    assert_eq!(
        mid_head_after(&[b"\r\n", b"\r\n"]),
        [true, true],
        "empty lines"
    );
    assert_eq!(
        mid_head_after(&[b"PRI * HT"]),
        [true],
        "part of the preface"
    );
    assert_eq!(mid_head_after(&[PREFACE]), [false], "HTTP/2");
    assert_eq!(
        mid_head_after(&[b"GET / HTTP/1.1\r\n\r\nGET /b HT"]),
        [true],
        "a whole head and part of the next"
    );
    assert_eq!(
        mid_head_after(&[b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nab", b"cd"]),
        [false, false],
        "a body is not a head"
    );
    let long = [b'a'; 100];
    assert_eq!(
        mid_head_after(&[b"GET / HTTP/1.1\r\nX: ", &long, b"a"]),
        [true, true, true],
        "past the size the reader follows, until hyper refuses it"
    );
}

#[test]
fn follows_pipelined_requests_through_every_framing() {
    let stream = b"\r\nGET /a HTTP/1.1\r\nHost: x\r\n\r\n\
POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\n\
POST /d HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
GET /e HTTP/1.1\r\nHost: x\r\n\r\n";
    for piece in [1, 2, 3, 7, 64, stream.len()] {
        assert_eq!(
            verdicts(stream, piece),
            [
                Verdict::Ok,
                Verdict::Ok,
                Verdict::Ok,
                Verdict::Ambiguous,
                Verdict::Ok
            ],
            "in pieces of {piece}"
        );
    }
}

#[test]
fn a_method_starting_like_the_http2_preface_is_read_as_http1() {
    let stream =
        b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    for piece in [1, 2, 3, stream.len()] {
        assert_eq!(verdicts(stream, piece), [Verdict::Ambiguous], "{piece}");
    }
}

#[test]
fn either_order_of_the_two_framings_is_ambiguous() {
    let te_first =
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n";
    assert_eq!(verdicts(te_first, 5), [Verdict::Ambiguous]);
}

#[test]
fn http2_and_what_hyper_refuses_are_left_alone() {
    assert!(verdicts(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nGET / HTTP/1.1\r\n\r\n", 4).is_empty());
    // Conflicting lengths: hyper answers 400 itself.
    let two = b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab";
    assert!(verdicts(two, 100).is_empty());
    // A bad chunk size stops the reading; nothing more is judged.
    let bad = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nGET / HTTP/1.1\r\n\r\n";
    assert_eq!(verdicts(bad, 100), [Verdict::Ok]);
}
