//! The proxy end to end: routing, header rules, streaming, retry after a refresh.

mod support;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_prefix_and_by_absolute_form_host() {
    let w = World::default().await;
    let p = w.spawn(&w.config("", ""));

    let (status, body) = get(&p.url("/demo/v1/items?$top=5&x=%20y")).await;
    assert_eq!(status, 200, "{body}");
    let echo = json(&body);
    assert_eq!(echo["path"], "/v1/items");
    assert_eq!(echo["query"], "$top=5&x=%20y");

    // A client using HTTP_PROXY sends absolute-form requests for the API's own host.
    let via_proxy = client_builder()
        .proxy(reqwest::Proxy::http(p.url("")).unwrap())
        .build()
        .unwrap();
    let r = via_proxy
        .get(format!("{}v2/things", w.provider.api_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(json(&r.text().await.unwrap())["path"], "/v2/things");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_and_connect_never_reach_any_upstream() {
    let w = World::default().await;
    let p = w.spawn(&w.config("", ""));

    let r = client().get(p.url("/elsewhere/x")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["x-tokenproxy-error"], "no_route");
    let body = json(&r.text().await.unwrap());
    assert_eq!(body["error"], "no_route");

    let via_proxy = client_builder()
        .proxy(reqwest::Proxy::http(p.url("")).unwrap())
        .build()
        .unwrap();
    for url in [
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        format!("http://{}/status", p.admin),
        "http://example.com/".to_owned(),
    ] {
        let r = via_proxy.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 404, "{url}");
    }

    for path in [
        "/demo/a/%2e%2e/%2e%2e/etc",
        "/demo/../other/",
        "/demo/x/.%2E/y",
    ] {
        let reply = raw(
            p.addr,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert!(reply.starts_with("HTTP/1.1 400"), "{path}: {reply}");
        assert!(reply.contains("bad_path"), "{reply}");
    }

    let reply = raw(
        p.addr,
        "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 405"), "{reply}");
    assert!(
        reply.contains("x-tokenproxy-error: connect_not_supported"),
        "{reply}"
    );
    assert!(
        reply.contains("http://"),
        "the body says what to do instead: {reply}"
    );

    assert_eq!(w.provider.api_connections(), 0, "nothing may reach the API");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_rules_protect_the_token_and_the_client() {
    let w = World::default().await;
    let p = w.spawn(&w.config("", ""));
    let r = client()
        .get(p.url("/demo/echo"))
        .header("Authorization", "Bearer client-supplied-token")
        .header("Proxy-Authorization", "Basic cHJveHk6c2VjcmV0")
        .header("X-Forwarded-For", "10.1.2.3")
        .header("Forwarded", "for=10.1.2.3")
        .header("Connection", "keep-alive, X-Hop")
        .header("X-Hop", "1")
        .header("X-Custom", "kept")
        .send()
        .await
        .unwrap();
    // 200 means the API saw the injected token, not the client's.
    assert_eq!(r.status(), 200);
    let echo = json(&r.text().await.unwrap());
    let headers = echo["headers"].as_object().unwrap();
    for gone in [
        "proxy-authorization",
        "x-forwarded-for",
        "forwarded",
        "x-hop",
        "connection",
    ] {
        assert!(
            !headers.contains_key(gone),
            "{gone} reached the upstream: {headers:?}"
        );
    }
    assert_eq!(headers["x-custom"], "kept");
    let api_host = w
        .provider
        .api_url
        .trim_start_matches("http://")
        .trim_end_matches('/');
    assert_eq!(headers["host"], api_host);

    // A redirect into the upstream comes back pointing at the proxy route.
    let r = client().get(p.url("/demo/redirect")).send().await.unwrap();
    assert_eq!(r.status(), 302);
    assert_eq!(r.headers()["location"], p.url("/demo/landed?from=redirect"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_401s_cause_exactly_one_refresh() {
    let w = World::default().await;
    let p = w.spawn(&w.config("", ""));
    assert_eq!(get(&p.url("/demo/warm")).await.0, 200);
    assert_eq!(w.provider.token_requests(), 1);

    w.provider.revoke_access();
    let c = client();
    let requests = (0..200).map(|i| {
        let c = c.clone();
        let url = p.url(&format!("/demo/item/{i}"));
        tokio::spawn(async move { c.get(url).send().await.map(|r| r.status().as_u16()) })
    });
    let mut ok = 0;
    for r in requests.collect::<Vec<_>>() {
        assert_eq!(r.await.unwrap().unwrap(), 200);
        ok += 1;
    }
    assert_eq!(ok, 200);
    assert_eq!(
        w.provider.token_requests(),
        2,
        "one refresh for 200 rejected requests"
    );
    assert_eq!(w.provider.reuse_detected(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_body_is_replayed_and_a_large_one_is_not() {
    let w = World::default().await;
    let p = w.spawn(&w.config("[proxy]\nreplay_body_limit = 1024\n", ""));
    assert_eq!(get(&p.url("/demo/warm")).await.0, 200);

    w.provider.revoke_access();
    let r = client()
        .post(p.url("/demo/orders"))
        .body("{\"qty\": 3}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let echo = json(&r.text().await.unwrap());
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["body"], "{\"qty\": 3}");
    assert_eq!(w.provider.token_requests(), 2);

    // Over the limit: streamed once, the 401 goes back as is, but the token is
    // refreshed so that the next request works.
    w.provider.revoke_access();
    let big = "x".repeat(4096);
    let r = client()
        .post(p.url("/demo/upload"))
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(w.provider.token_requests(), 3);
    let r = client()
        .post(p.url("/demo/upload"))
        .body("x".repeat(4096))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(json(&r.text().await.unwrap())["body_len"], 4096);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_download_streams_with_flat_memory() {
    let w = World::default().await;
    let p = w.spawn(&w.config("", ""));
    assert_eq!(get(&p.url("/demo/warm")).await.0, 200);
    let before = p.peak_rss_kib();

    let size: u64 = 100 * 1024 * 1024;
    let mut r = client()
        .get(p.url(&format!("/demo/download?bytes={size}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut received = 0u64;
    while let Some(chunk) = r.chunk().await.unwrap() {
        received += chunk.len() as u64;
    }
    assert_eq!(received, size);
    let growth = p.peak_rss_kib().saturating_sub(before);
    assert!(
        growth < 16 * 1024,
        "peak RSS grew by {growth} KiB for a 100 MiB download"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let w = World::default().await;
    let p = w.spawn(&w.config("", ""));
    assert_eq!(get(&p.url("/demo/warm")).await.0, 200);
    let slow = tokio::spawn(get_owned(p.url("/demo/slow?ms=1500")));
    // Wait until the slow request is at the API before signalling.
    while w.provider.api_requests() < 2 {
        tokio::task::yield_now().await;
    }
    let status = tokio::task::spawn_blocking(move || p.stop()).await.unwrap();
    assert_eq!(
        slow.await.unwrap().0,
        200,
        "the in-flight request completed"
    );
    assert!(status.success(), "exit status {status:?}");
}

async fn get_owned(url: String) -> (u16, String) {
    get(&url).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_over_tls_with_a_private_ca_and_http2() {
    let ca = tempfile::NamedTempFile::new().unwrap();
    let (server, ca_pem) = tls_server_config();
    std::fs::write(ca.path(), ca_pem).unwrap();
    let w = World::new(ProviderOptions {
        tls: Some(server),
        ..ProviderOptions::default()
    })
    .await;
    assert!(w.provider.token_url.starts_with("https://"));
    let top = format!("[tls]\nca_file = \"{}\"\n", ca.path().display());
    let p = w.spawn(&w.config(&top, ""));
    let (status, body) = get(&p.url("/demo/secure")).await;
    assert_eq!(status, 200, "{body}\n{}", p.log());
    assert_eq!(json(&body)["version"], "HTTP/2.0", "ALPN chose HTTP/2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_upstream_certificate_is_a_clear_502() {
    let (server, _) = tls_server_config();
    let w = World::new(ProviderOptions {
        tls: Some(server.clone()),
        ..ProviderOptions::default()
    })
    .await;
    // The token endpoint is trusted (plain loopback), the API's certificate is not.
    let plain = World::default().await;
    let config = w
        .config("", "")
        .replace(&w.provider.token_url, &plain.provider.token_url);
    let p = w.spawn(&config);
    let r = client().get(p.url("/demo/x")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(r.headers()["x-tokenproxy-error"], "upstream_unreachable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_headers_are_a_504() {
    let w = World::default().await;
    let p = w.spawn(&w.config("[proxy]\nresponse_timeout = \"300ms\"\n", ""));
    let r = client()
        .get(p.url("/demo/slow?ms=3000"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    assert_eq!(r.headers()["x-tokenproxy-error"], "upstream_timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_may_speak_http2_without_tls() {
    let w = World::default().await;
    let p = w.spawn(&w.config("", ""));
    let h2 = client_builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2.get(p.url("/demo/h2")).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    assert_eq!(json(&r.text().await.unwrap())["path"], "/h2");
}

/// A server config for `localhost` (ALPN h2 and http/1.1) and its CA in PEM.
fn tls_server_config() -> (std::sync::Arc<rustls::ServerConfig>, String) {
    let pki = support::pki::Pki::new();
    (
        pki.server("localhost", &[b"h2", b"http/1.1"], false),
        pki.ca_pem,
    )
}

/// With `TOKIO_WORKER_THREADS=1` the binary runs on a current-thread runtime:
/// proxying, a refresh (the file store's blocking writes), a reload and the drain
/// at SIGTERM all work on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_runs_everything_on_a_current_thread_runtime() {
    let w = World::default().await;
    let p = w.spawn_with(&w.config("", ""), &[("TOKIO_WORKER_THREADS", "1")]);
    assert_eq!(get(&p.url("/demo/a")).await.0, 200);
    assert_eq!(force_refresh(&p, "demo").await.status(), 200);
    assert_eq!(get(&p.url("/demo/b")).await.0, 200);
    let r = client().post(p.admin_url("/reload")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let slow = tokio::spawn(get_owned(p.url("/demo/slow?ms=500")));
    while w.provider.api_requests() < 3 {
        tokio::task::yield_now().await;
    }
    let status = tokio::task::spawn_blocking(move || p.stop()).await.unwrap();
    assert_eq!(
        slow.await.unwrap().0,
        200,
        "the in-flight request completed"
    );
    assert!(status.success(), "exit status {status:?}");
}
