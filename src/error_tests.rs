//! Unit tests of `crate::error`.

use super::*;

#[test]
fn every_error_has_a_distinct_code_and_a_json_body() {
    let all = [
        ProxyError::NoRoute,
        ProxyError::BadPath,
        ProxyError::BadHost,
        ProxyError::BadScheme,
        ProxyError::Connect,
        ProxyError::ConnectOutsideCa,
        ProxyError::Misdirected,
        ProxyError::proxy_method(&http::Method::TRACE),
        ProxyError::AmbiguousFraming,
        ProxyError::HeaderTooLarge,
        ProxyError::ClientBody,
        ProxyError::ClientTimeout(Duration::from_secs(1)),
        ProxyError::ProxyAuth,
        ProxyError::CallerNotAllowed,
        ProxyError::NotVended,
        ProxyError::Upgrade,
        ProxyError::TooLarge,
        ProxyError::QuotaExhausted {
            retry_after: Duration::from_secs(5),
        },
        ProxyError::UpstreamUnreachable,
        ProxyError::UpstreamTimeout(Duration::from_secs(1)),
        ProxyError::UpstreamFailed,
        ProxyError::NoUpstream,
        ProxyError::NoValidToken {
            retry_after: Duration::from_secs(2),
            cause: Source::Store,
        },
        ProxyError::Internal,
        ProxyError::Overloaded,
        ProxyError::AdminNotFound,
        ProxyError::UnknownToken("x".into()),
        ProxyError::AdminUnauthorized,
        ProxyError::AdminKeyRequired,
        ProxyError::AdminNotAProxy { connect: true },
        ProxyError::RefreshTooSoon {
            retry_after: Duration::from_secs(3),
        },
        ProxyError::ReloadRefused("x".into()),
    ];
    let mut codes: Vec<_> = all.iter().map(ProxyError::code).collect();
    codes.sort_unstable();
    codes.dedup();
    assert_eq!(codes.len(), all.len());
    for e in &all {
        let resp = e.response(Some("r"));
        assert_eq!(resp.status(), e.status());
        assert_eq!(resp.headers()["x-tokenproxy-error"], e.code());
        if e.status() == StatusCode::METHOD_NOT_ALLOWED {
            assert!(resp.headers().contains_key(ALLOW), "{e:?}");
        }
    }
}

#[test]
fn a_refusal_written_raw_is_the_response_in_http1() {
    let e = ProxyError::Overloaded;
    let text = String::from_utf8(e.http1()).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(
        head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{head}"
    );
    for line in [
        "content-type: application/json",
        "x-tokenproxy-error: overloaded",
        "retry-after: 1",
        "connection: close",
    ] {
        assert!(head.contains(line), "{line} in {head}");
    }
    assert!(
        head.contains(&format!("content-length: {}", body.len())),
        "{head}"
    );
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(json["error"], "overloaded");
    assert_eq!(json["source"], "internal");
    assert_eq!(json["retryable"], true);
}
