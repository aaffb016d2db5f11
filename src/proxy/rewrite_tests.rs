//! Unit tests of `crate::proxy::rewrite`.

use super::*;

fn rewriter() -> Rewriter {
    Rewriter::new("https://api.example.com/v1/", "http://localhost:8080/ex/").unwrap()
}

fn run(chunks: &[&str]) -> String {
    let mut m = Matcher {
        rewriter: rewriter(),
        carry: BytesMut::new(),
    };
    let mut out = Vec::new();
    for c in chunks {
        out.extend_from_slice(&m.push(c.as_bytes(), false));
    }
    out.extend_from_slice(&m.push(b"", true));
    String::from_utf8(out).unwrap()
}

#[test]
fn plain_and_escaped_urls_are_rewritten_across_any_split() {
    let body = r#"{"next":"https://api.example.com/v1/items?page=2","esc":"https:\/\/api.example.com\/v1\/items?page=3","other":"https://elsewhere.example.com/v1/"}"#;
    let want = r#"{"next":"http://localhost:8080/ex/items?page=2","esc":"http:\/\/localhost:8080\/ex\/items?page=3","other":"https://elsewhere.example.com/v1/"}"#;
    assert_eq!(run(&[body]), want);
    // Every split point, and one byte at a time.
    for i in 0..body.len() {
        assert_eq!(run(&[&body[..i], &body[i..]]), want, "split at {i}");
    }
    let bytes: Vec<String> = body.chars().map(String::from).collect();
    let parts: Vec<&str> = bytes.iter().map(String::as_str).collect();
    assert_eq!(run(&parts), want);
}

#[test]
fn a_partial_url_at_the_end_is_flushed_unchanged() {
    assert_eq!(run(&["see https://api.exam"]), "see https://api.exam");
    assert_eq!(run(&[""]), "");
}

#[test]
fn media_types_and_codings() {
    let h = |ct: &str| {
        let mut m = HeaderMap::new();
        m.insert(header::CONTENT_TYPE, ct.parse().unwrap());
        m
    };
    for ct in [
        "application/json",
        "application/json; charset=utf-8",
        "application/hal+json",
        "application/atom+xml",
        "text/xml",
        "application/xml",
    ] {
        assert!(media(&h(ct)).is_some(), "{ct}");
    }
    for ct in [
        "text/plain",
        "application/octet-stream",
        "text/csv",
        "text/html",
    ] {
        assert!(media(&h(ct)).is_none(), "{ct}");
    }
    assert!(refuses_identity(Some(&HeaderValue::from_static(
        "gzip, identity;q=0"
    ))));
    assert!(refuses_identity(Some(&HeaderValue::from_static(
        "gzip, *;q=0"
    ))));
    assert!(!refuses_identity(Some(&HeaderValue::from_static(
        "gzip, deflate"
    ))));
    assert!(!refuses_identity(None));
    let mut m = HeaderMap::new();
    m.insert(
        header::ACCEPT_ENCODING,
        "gzip, zstd, br;q=0.5".parse().unwrap(),
    );
    accept_encoding_for_upstream(&mut m);
    assert_eq!(m[header::ACCEPT_ENCODING], "gzip, br;q=0.5");
    m.insert(header::ACCEPT_ENCODING, "zstd".parse().unwrap());
    accept_encoding_for_upstream(&mut m);
    assert!(!m.contains_key(header::ACCEPT_ENCODING));
}

#[test]
fn link_headers_are_rewritten() {
    let mut m = HeaderMap::new();
    m.append(
        header::LINK,
        "<https://api.example.com/v1/items?page=2>; rel=\"next\""
            .parse()
            .unwrap(),
    );
    m.append(
        header::LINK,
        "<https://docs.example.com/>; rel=\"help\"".parse().unwrap(),
    );
    link_headers(
        &mut m,
        "https://api.example.com/v1/",
        "http://localhost:8080/ex/",
    );
    let v: Vec<_> = m
        .get_all(header::LINK)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        v,
        [
            "<http://localhost:8080/ex/items?page=2>; rel=\"next\"",
            "<https://docs.example.com/>; rel=\"help\""
        ]
    );
}
