//! The header families, each from a response as the provider sends it.

use super::*;

const NOW_S: u64 = 1_764_000_000; // 2025-11-24

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(NOW_S)
}

fn headers(lines: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in lines {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    h
}

fn reading(
    window: &str,
    limit: Option<u64>,
    remaining: u64,
    reset_in: Option<u64>,
    period: Option<u64>,
) -> Reading {
    Reading {
        window: window.into(),
        limit,
        remaining,
        reset: reset_in.map(|s| now() + Duration::from_secs(s)),
        period: period.map(Duration::from_secs),
    }
}

#[test]
fn each_family_as_its_provider_sends_it() {
    let ms = |s: u64| ((NOW_S + s) * 1000).to_string();
    let cases: Vec<(&str, StatusCode, HeaderMap, Vec<Reading>)> = vec![
        (
            "Exact Online: minutely and daily, resets in epoch ms",
            StatusCode::OK,
            headers(&[
                ("X-RateLimit-Limit", "5000"),
                ("X-RateLimit-Remaining", "4321"),
                ("X-RateLimit-Reset", &ms(36_000)),
                ("X-RateLimit-Minutely-Limit", "60"),
                ("X-RateLimit-Minutely-Remaining", "7"),
                ("X-RateLimit-Minutely-Reset", &ms(42)),
            ]),
            vec![
                reading("1m", Some(60), 7, Some(42), Some(60)),
                reading("1d", Some(5000), 4321, Some(36_000), Some(86_400)),
            ],
        ),
        (
            "GitHub-style X-RateLimit, reset in epoch seconds",
            StatusCode::OK,
            headers(&[
                ("x-ratelimit-limit", "5000"),
                ("x-ratelimit-remaining", "4999"),
                ("x-ratelimit-reset", &(NOW_S + 3600).to_string()),
                ("x-ratelimit-used", "1"),
            ]),
            vec![reading("x-ratelimit", Some(5000), 4999, Some(3600), None)],
        ),
        (
            "X-RateLimit with a reset in seconds from now",
            StatusCode::OK,
            headers(&[("X-RateLimit-Remaining", "0"), ("X-RateLimit-Reset", "17")]),
            vec![reading("x-ratelimit", None, 0, Some(17), None)],
        ),
        (
            "HubSpot: ten-second interval, secondly and daily",
            StatusCode::OK,
            headers(&[
                ("X-HubSpot-RateLimit-Daily", "250000"),
                ("X-HubSpot-RateLimit-Daily-Remaining", "249990"),
                ("X-HubSpot-RateLimit-Interval-Milliseconds", "10000"),
                ("X-HubSpot-RateLimit-Max", "100"),
                ("X-HubSpot-RateLimit-Remaining", "97"),
                ("X-HubSpot-RateLimit-Secondly", "10"),
                ("X-HubSpot-RateLimit-Secondly-Remaining", "9"),
            ]),
            vec![
                reading("10s", Some(100), 97, None, Some(10)),
                reading("1s", Some(10), 9, None, Some(1)),
                reading("1d", Some(250_000), 249_990, None, Some(86_400)),
            ],
        ),
        (
            "Salesforce: api-usage of the rolling day",
            StatusCode::OK,
            headers(&[("Sforce-Limit-Info", "api-usage=18/15000")]),
            vec![reading("1d", Some(15_000), 14_982, None, Some(86_400))],
        ),
        (
            "IETF draft 08+: structured RateLimit and RateLimit-Policy",
            StatusCode::OK,
            headers(&[
                (
                    "RateLimit-Policy",
                    "\"burst\";q=100;w=60, \"daily\";q=1000;w=86400",
                ),
                ("RateLimit", "\"burst\";r=50;t=30, \"daily\";r=900;t=7200"),
            ]),
            vec![
                reading("1m", Some(100), 50, Some(30), Some(60)),
                reading("1d", Some(1000), 900, Some(7200), Some(86_400)),
            ],
        ),
        (
            "IETF earlier drafts: separate fields, a bare policy",
            StatusCode::OK,
            headers(&[
                ("RateLimit-Limit", "10"),
                ("RateLimit-Remaining", "3"),
                ("RateLimit-Reset", "5"),
                ("RateLimit-Policy", "10;w=10"),
            ]),
            vec![reading("10s", Some(10), 3, Some(5), Some(10))],
        ),
        (
            "429 with Retry-After in seconds",
            StatusCode::TOO_MANY_REQUESTS,
            headers(&[("Retry-After", "12")]),
            vec![reading(RETRY_AFTER, None, 0, Some(12), None)],
        ),
        (
            "503 with Retry-After as a date",
            StatusCode::SERVICE_UNAVAILABLE,
            headers(&[(
                "Retry-After",
                &httpdate::fmt_http_date(now() + Duration::from_secs(90)),
            )]),
            vec![reading(RETRY_AFTER, None, 0, Some(90), None)],
        ),
        (
            "Retry-After on a 200 is not a limit",
            StatusCode::OK,
            headers(&[("Retry-After", "12")]),
            vec![],
        ),
        (
            "nothing said",
            StatusCode::OK,
            headers(&[("Content-Type", "application/json")]),
            vec![],
        ),
        (
            "garbage is ignored, not guessed",
            StatusCode::TOO_MANY_REQUESTS,
            headers(&[
                ("X-RateLimit-Remaining", "lots"),
                ("Sforce-Limit-Info", "api-usage=x/y"),
                ("RateLimit", "\"a\";r=-1"),
                ("Retry-After", "soon"),
            ]),
            vec![],
        ),
    ];
    for (what, status, h, want) in cases {
        assert_eq!(read(status, &h, now()), want, "{what}");
    }
}

#[test]
fn window_labels() {
    for (secs, text) in [
        (1, "1s"),
        (10, "10s"),
        (60, "1m"),
        (90, "90s"),
        (3600, "1h"),
        (86_400, "1d"),
    ] {
        assert_eq!(label(Duration::from_secs(secs)), text);
    }
}
