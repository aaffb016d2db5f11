//! Bad input refused: tokenproxy is never an open proxy, never lets a request climb
//! out of its route, never forwards what it cannot vouch for, and lets only its
//! callers in when asked to.

mod support;

use support::*;

/// A raw HTTP/1.1 request with `Connection: close`.
fn req(head: &str) -> String {
    format!("{head}\r\nConnection: close\r\n\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_an_open_proxy() {
    let w = World::default().await;
    let p = w.spawn(&w.config("", ""));
    let api = w
        .provider
        .api_url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let cases = [
        ("GET http://127.0.0.1:22/ HTTP/1.1\r\nHost: 127.0.0.1:22".to_owned(), "404"),
        (format!("GET http://{}/metrics HTTP/1.1\r\nHost: {}", p.admin, p.admin), "404"),
        ("GET http://169.254.169.254/latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254".into(), "404"),
        ("GET http://metadata.google.internal/computeMetadata/v1/ HTTP/1.1\r\nHost: metadata.google.internal".into(), "404"),
        // The Host header cannot steer an absolute-form request elsewhere...
        (format!("GET http://example.com/ HTTP/1.1\r\nHost: {api}"), "404"),
        // ...nor user info, percent-encoding or IDN tricks in the authority.
        (format!("GET http://user:pw@{api}/x HTTP/1.1\r\nHost: {api}"), "400"),
        (format!("GET http://{}%2ecom/x HTTP/1.1\r\nHost: x", api.replace(':', "%3a")), "400"),
        ("GET http://xn--80ak6aa92e.com/ HTTP/1.1\r\nHost: xn--80ak6aa92e.com".into(), "404"),
        // An origin-form request outside every prefix.
        ("GET /admin HTTP/1.1\r\nHost: localhost".into(), "404"),
    ];
    for (head, status) in &cases {
        let reply = raw(p.addr, &req(head)).await;
        assert!(
            reply.starts_with(&format!("HTTP/1.1 {status}")),
            "{head}\n→ {reply}"
        );
    }
    assert_eq!(
        w.provider.api_connections(),
        0,
        "nothing reached any upstream"
    );

    // Case and a trailing dot name the configured host: that is the route.
    let (host, port) = api.split_once(':').unwrap();
    let reply = raw(
        p.addr,
        &req(&format!(
            "GET http://{}.:{port}/ok HTTP/1.1\r\nHost: x",
            host.to_uppercase()
        )),
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_refused_before_anything_is_sent() {
    let w = World::default().await;
    let p = w.spawn(&w.config("[proxy]\nmax_request_body = 1000\n", ""));
    let cases: &[(&str, &str)] = &[
        (
            "GET /demo/../etc/passwd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            "400",
        ),
        (
            "GET /demo/%2e%2e/%2e%2e/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            "400",
        ),
        (
            "GET /demo//evil.example.com/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            "400",
        ),
        // NUL and bare CR in the request line or a header: hyper refuses to parse.
        (
            "GET /demo/a\0b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            "400",
        ),
        (
            "GET /demo/a HTTP/1.1\r\nHost: x\r\nX-Bad: a\rb\r\nConnection: close\r\n\r\n",
            "400",
        ),
        // Smuggling: both framings at once, or two lengths.
        (
            "POST /demo/a HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\nConnection: close\r\n\r\nabcde",
            "400",
        ),
        // Over the configured maximum.
        (
            "POST /demo/a HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\nConnection: close\r\n\r\n",
            "413",
        ),
        // A WebSocket upgrade cannot carry the token.
        (
            "GET /demo/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: a\r\nSec-WebSocket-Version: 13\r\n\r\n",
            "400",
        ),
    ];
    for (request, status) in cases {
        let reply = raw(p.addr, request).await;
        assert!(
            reply.starts_with(&format!("HTTP/1.1 {status}")),
            "{request:?}\n→ {reply}"
        );
    }
    let huge = format!(
        "GET /demo/a HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let reply = raw(p.addr, &huge).await;
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply}");
    assert_eq!(
        w.provider.api_connections(),
        0,
        "nothing reached the upstream"
    );

    // Content-Length together with Transfer-Encoding, in either order: refused
    // and the connection closed, as nginx does; nothing is forwarded.
    for head in [
        "Content-Length: 3\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: chunked\r\nContent-Length: 3",
    ] {
        let reply = raw_all(
            p.addr,
            &format!("POST /demo/echo HTTP/1.1\r\nHost: x\r\n{head}\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /demo/smuggled HTTP/1.1\r\nHost: x\r\n\r\n"),
        )
        .await;
        assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
        assert!(reply.contains("ambiguous_framing"), "{reply}");
        assert_eq!(reply.matches("HTTP/1.1").count(), 1, "{reply}");
    }
    assert_eq!(
        w.provider.api_connections(),
        0,
        "nothing reached the upstream"
    );

    // A chunked body (no length) over the maximum: kept for a resend, then
    // (replay limit 100) streamed, and counted as it goes.
    let chunked = |n: usize| {
        let mut r = "POST /demo/upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_owned();
        for _ in 0..n {
            r += &format!("64\r\n{}\r\n", "x".repeat(100));
        }
        r + "0\r\n\r\n"
    };
    let reply = raw(p.addr, &chunked(20)).await;
    assert!(
        reply.starts_with("HTTP/1.1 413") && reply.contains("request_too_large"),
        "{reply}"
    );
    let q = w.spawn(&w.config(
        "[proxy]\nmax_request_body = 1000\nreplay_body_limit = 100\n",
        "",
    ));
    let reply = raw(q.addr, &chunked(20)).await;
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    let reply = raw(q.addr, &chunked(5)).await;
    assert!(
        reply.starts_with("HTTP/1.1 200") && reply.contains("\"body_len\":500"),
        "{reply}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_offers_are_ignored_and_cookies_pass_through() {
    let w = World::default().await;
    let p = w.spawn(&w.config("", ""));
    let reply = raw(
        p.addr,
        "GET /demo/cookie HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(
        reply.contains("set-cookie: session=abc123; Path=/; HttpOnly"),
        "{reply}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_key_lets_only_callers_in_and_stays_local() {
    let w = World::default().await;
    let config = w.config("", "").replacen(
        "admin = \"127.0.0.1:0\"",
        "admin = \"127.0.0.1:0\"\nclient_key = { env = \"CALLER_KEY\" }",
        1,
    );
    let p = w.spawn_with(&config, &[("CALLER_KEY", "caller-secret-1")]);
    let r = client().get(p.url("/demo/x")).send().await.unwrap();
    assert_eq!(r.status(), 407);
    assert!(r.headers().contains_key("proxy-authenticate"));
    let r = client()
        .get(p.url("/demo/x"))
        .header("Proxy-Authorization", "Bearer wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 407);
    let r = client()
        .get(p.url("/demo/x"))
        .header("Proxy-Authorization", "Bearer caller-secret-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        !r.text().await.unwrap().contains("caller-secret-1"),
        "the key is not forwarded"
    );
    let (_, log) = tokio::task::spawn_blocking(move || p.stop_and_log())
        .await
        .unwrap();
    assert!(!log.contains("caller-secret-1"));
    assert_eq!(
        w.provider.api_requests(),
        1,
        "refused callers reached nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unix_socket_listener_is_group_only() {
    use std::os::unix::fs::PermissionsExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let w = World::default().await;
    let sock = w.dir.path().join("proxy.sock");
    let config = w.config("", "").replacen(
        "proxy = \"127.0.0.1:0\"",
        &format!("proxy = \"unix:{}\"", sock.display()),
        1,
    );
    let p = w.spawn(&config);
    assert_eq!(p.socket.as_deref(), Some(sock.as_path()));
    assert_eq!(
        std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777,
        0o660
    );
    let mut s = tokio::net::UnixStream::connect(&sock).await.unwrap();
    s.write_all(b"GET /demo/over-unix HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).await.unwrap();
    assert!(
        reply.starts_with("HTTP/1.1 200") && reply.contains("/over-unix"),
        "{reply}"
    );
    assert!(p.stop().success());
    assert!(!sock.exists(), "the socket is removed on exit");
}
