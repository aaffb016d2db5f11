//! Header rules, in both directions.
//!
//! Towards the upstream: hop-by-hop headers (RFC 9110 §7.6.1, plus those named in
//! `Connection`) go, so do the client's `Authorization` and `Proxy-Authorization`,
//! its `Host` (the client sets the upstream's), and anything that describes the
//! client (`Forwarded`, `X-Forwarded-*`, `X-Real-IP`): the third party learns
//! nothing about the caller. Towards the client: hop-by-hop headers go, and a
//! `Location` or `Content-Location` that points into the upstream is rewritten to
//! the proxy route.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

const CLIENT_IDENTITY: [&str; 6] = [
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-real-ip",
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // The names `Connection` lists are removed by `&str` lookups, not built as
    // `HeaderName`s; its values are shared, not copied (and the vector for a second
    // `Connection` header stays empty, so unallocated, in the usual case).
    let mut values = headers.get_all(header::CONNECTION).iter();
    let first = values.next().cloned();
    let more: Vec<HeaderValue> = values.cloned().collect();
    for value in first.iter().chain(&more) {
        for name in value.to_str().unwrap_or("").split(',') {
            headers.remove(name.trim());
        }
    }
    remove_where(headers, is_hop_by_hop);
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name) || name == header::UPGRADE
}

/// Removes the headers `doomed` picks, judging the names the map holds: a message
/// carries a handful of headers and the rules name seventeen, so this is cheaper
/// than looking each rule up (a hash per name). One name is found and removed at a
/// time, without collecting them: usually none or one is doomed, and at most the
/// seventeen the rules name, so the scans stay bounded.
fn remove_where(headers: &mut HeaderMap, doomed: impl Fn(&HeaderName) -> bool) {
    while let Some(name) = headers.keys().find(|n| doomed(n)).cloned() {
        headers.remove(name);
    }
}

/// Prepares the client's headers for the upstream, in place.
pub fn to_upstream(headers: &mut HeaderMap) {
    strip_hop_by_hop(headers);
    remove_where(headers, |name| {
        name == header::AUTHORIZATION
            || name == header::HOST
            // tokenproxy answered the expectation (hyper sends `100 Continue` when
            // the body is first read); the upstream gets the body without being asked.
            || name == header::EXPECT
            || CLIENT_IDENTITY.contains(&name.as_str())
    });
}

/// Prepares the upstream's headers for the client, in place. `proxy_base` is built
/// only when a `Location` needs it.
pub fn to_client(headers: &mut HeaderMap, upstream_base: &str, proxy_base: Option<&str>) {
    strip_hop_by_hop(headers);
    for name in [header::LOCATION, header::CONTENT_LOCATION] {
        let Some(rest) = headers
            .get(&name)
            .and_then(|l| l.to_str().ok())
            .and_then(|l| strip_prefix_ignore_case(l, upstream_base))
        else {
            continue;
        };
        if let Some(base) = proxy_base
            && let Ok(value) = HeaderValue::try_from(format!("{base}{rest}"))
        {
            headers.insert(name, value);
        }
    }
}

/// Scheme and host compare without case; the path part as written.
fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn upstream_gets_no_client_secrets_hops_or_identity() {
        let mut h = map(&[
            ("authorization", "Bearer client-token"),
            ("proxy-authorization", "Basic x"),
            ("connection", "keep-alive, x-custom-hop"),
            ("x-custom-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("te", "trailers"),
            ("host", "localhost:8080"),
            ("x-forwarded-for", "10.0.0.1"),
            ("forwarded", "for=10.0.0.1"),
            ("accept", "application/json"),
            ("content-type", "text/plain"),
        ]);
        to_upstream(&mut h);
        let mut names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, ["accept", "content-type"]);
    }

    #[test]
    fn every_connection_header_names_hops() {
        let mut h = map(&[
            ("connection", "x-one, bad name"),
            ("connection", " X-Two ,,"),
            ("x-one", "1"),
            ("x-two", "2"),
            ("x-kept", "3"),
        ]);
        to_upstream(&mut h);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
    }

    #[test]
    fn location_into_the_upstream_is_rewritten() {
        let base = "https://api.example.com/v1/";
        let mut h = map(&[
            ("location", "https://API.example.com/v1/items?page=2"),
            ("content-location", "https://api.example.com/v1/items/7"),
            ("connection", "close"),
        ]);
        to_client(&mut h, base, Some("http://localhost:8080/ex/"));
        assert_eq!(h["location"], "http://localhost:8080/ex/items?page=2");
        assert_eq!(h["content-location"], "http://localhost:8080/ex/items/7");
        assert!(!h.contains_key("connection"));

        let mut h = map(&[("location", "https://elsewhere.example.com/v1/x")]);
        to_client(&mut h, base, Some("http://localhost:8080/ex/"));
        assert_eq!(h["location"], "https://elsewhere.example.com/v1/x");
    }
}
