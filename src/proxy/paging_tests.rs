//! Unit tests of `crate::proxy::paging`.

use super::*;

const UP: &str = "https://start.exactonline.nl/api/v1/";
const PROXY: &str = "http://localhost:8080/exact/";

fn json(chunks: &[&[u8]]) -> String {
    let mut s = JsonLinks::new(UP, PROXY);
    let mut out = Vec::new();
    for c in chunks {
        out.extend_from_slice(&s.push(Bytes::copy_from_slice(c)));
    }
    out.extend_from_slice(&s.finish());
    String::from_utf8(out).unwrap()
}

fn xml(chunks: &[&[u8]]) -> String {
    let mut s = XmlLinks::new(UP, PROXY);
    let mut out = Vec::new();
    for c in chunks {
        out.extend_from_slice(&s.push(Bytes::copy_from_slice(c)));
    }
    out.extend_from_slice(&s.finish());
    String::from_utf8(out).unwrap()
}

/// Every split into two chunks, and one byte at a time, gives `want`.
fn every_split(run: fn(&[&[u8]]) -> String, body: &str, want: &str) {
    let b = body.as_bytes();
    assert_eq!(run(&[b]), want);
    for i in 0..=b.len() {
        assert_eq!(run(&[&b[..i], &b[i..]]), want, "split at {i}");
    }
    let bytes: Vec<&[u8]> = b.chunks(1).collect();
    assert_eq!(run(&bytes), want, "byte by byte");
}

#[test]
fn exact_online_next_link_rewritten_metadata_kept() {
    let body = r#"{"d":{"results":[{"__metadata":{"uri":"https://start.exactonline.nl/api/v1/1/crm/Accounts(guid'1')","type":"Exact.Web.Api.Models.Account"},"Name":"next","Parent":{"__deferred":{"uri":"https://start.exactonline.nl/api/v1/1/crm/Accounts(guid'2')"}}}],"__next":"https://start.exactonline.nl/api/v1/1/crm/Accounts?$skiptoken=guid'1'"}}"#;
    let want = body.replace(
        "\"__next\":\"https://start.exactonline.nl/api/v1/",
        "\"__next\":\"http://localhost:8080/exact/",
    );
    assert_ne!(want, body);
    every_split(json, body, &want);
}

#[test]
fn the_paging_shapes_of_real_apis() {
    let cases = [
        // Microsoft Graph / OData v4, escaped slashes.
        (
            r#"{"value":[],"@odata.nextLink":"https:\/\/start.exactonline.nl\/api\/v1\/x?p=2"}"#,
            r#"{"value":[],"@odata.nextLink":"http:\/\/localhost:8080\/exact\/x?p=2"}"#,
        ),
        // HubSpot.
        (
            r#"{"results":[{"link":"https://start.exactonline.nl/api/v1/data"}],"paging":{"next":{"after":"a\"}{","link":"https://start.exactonline.nl/api/v1/x?after=2"}}}"#,
            r#"{"results":[{"link":"https://start.exactonline.nl/api/v1/data"}],"paging":{"next":{"after":"a\"}{","link":"http://localhost:8080/exact/x?after=2"}}}"#,
        ),
        // JSON:API and HAL.
        (
            r#"{"links":{"self":"https://start.exactonline.nl/api/v1/a","next":"https://start.exactonline.nl/api/v1/b"},"_links":{"next":{"href":"https://start.exactonline.nl/api/v1/c"}}}"#,
            r#"{"links":{"self":"https://start.exactonline.nl/api/v1/a","next":"http://localhost:8080/exact/b"},"_links":{"next":{"href":"http://localhost:8080/exact/c"}}}"#,
        ),
        // A paging key whose value is elsewhere, or not a string, or a near miss.
        (
            r#"{"next":"https://other.example/api/v1/x","prev":null,"first":1,"last":"https://start.exactonline.nl/api/v2/x"}"#,
            r#"{"next":"https://other.example/api/v1/x","prev":null,"first":1,"last":"https://start.exactonline.nl/api/v2/x"}"#,
        ),
        // A paging key as a value, not a key; arrays of links are data.
        (
            r#"{"kind":"next","x":"https://start.exactonline.nl/api/v1/a","next":["https://start.exactonline.nl/api/v1/b"]}"#,
            r#"{"kind":"next","x":"https://start.exactonline.nl/api/v1/a","next":["https://start.exactonline.nl/api/v1/b"]}"#,
        ),
    ];
    for (body, want) in cases {
        every_split(json, body, want);
    }
}

#[test]
fn malformed_and_deep_documents_pass_through() {
    for body in [
        "not json at all https://start.exactonline.nl/api/v1/",
        r#"{"next":"https://start.exactonline.nl/api/v"#,
        r#"}}]]{"next""#,
        "",
    ] {
        every_split(json, body, body);
    }
    let deep = format!(
        "{}{{\"next\":\"{UP}x\"}}{}",
        "[".repeat(MAX_DEPTH),
        "]".repeat(MAX_DEPTH)
    );
    assert_eq!(json(&[deep.as_bytes()]), deep);
}

#[test]
fn unchanged_chunks_are_the_same_buffer() {
    let mut s = JsonLinks::new(UP, PROXY);
    let chunk =
        Bytes::from_static(br#"{"d":{"results":[{"a":"https://start.exactonline.nl/api/v1/"}]"#);
    let out = s.push(chunk.clone());
    assert_eq!(out.as_ptr(), chunk.as_ptr());
    assert_eq!(out.len(), chunk.len());
}

#[test]
fn atom_next_links_rewritten_entries_kept() {
    let body = concat!(
        r#"<?xml version="1.0"?><feed xmlns="http://www.w3.org/2005/Atom">"#,
        r#"<entry><id>https://start.exactonline.nl/api/v1/1/crm/Accounts(guid'1')</id>"#,
        r#"<link rel="edit" title="Account" href="https://start.exactonline.nl/api/v1/1/crm/Accounts(guid'1')" /></entry>"#,
        r#"<link rel="next" href="https://start.exactonline.nl/api/v1/1/crm/Accounts?$skiptoken=guid'1'&amp;a=b" />"#,
        r#"<atom:link href='https://start.exactonline.nl/api/v1/p3' rel='last'/></feed>"#,
    );
    let want = body
        .replace(
            r#"rel="next" href="https://start.exactonline.nl/api/v1/"#,
            r#"rel="next" href="http://localhost:8080/exact/"#,
        )
        .replace(
            "href='https://start.exactonline.nl/api/v1/p3'",
            "href='http://localhost:8080/exact/p3'",
        );
    every_split(xml, body, &want);
    let long = format!(
        "<link rel=\"next\" x=\"{}<link rel='next' href='{UP}'\" href=\"{UP}\"><b>",
        "a".repeat(MAX_TAG)
    );
    every_split(xml, &long, &long);
}
