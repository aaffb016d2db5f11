//! tokenproxy as a token service for tools on other machines: TLS on the proxy
//! listener (HTTP/1.1 and HTTP/2 by ALPN), a key per caller that admits it to its
//! tokens only, and token vending (`GET /tokenproxy/v1/tokens/NAME`).

mod support;

use std::path::Path;
use std::time::Duration;

use support::{Mode, Provider, ProviderOptions, World, client, get, json};

const KEY_A: &str = "caller-a-key-0123456789";
const KEY_B: &str = "caller-b-key-0123456789";

/// Two tokens (`demo`, vended; `cc`, not, from a provider of its own: a provider
/// holds one current access token), two callers (`a` for demo, `b` for cc), and
/// the proxy listener on TLS with a certificate for `localhost`.
fn service_config(w: &World, cc: &Provider, pki: &support::pki::Pki) -> String {
    let dir = w.dir.path();
    let tls = support::pki::listen_tls(pki, dir);
    std::fs::write(dir.join("key-a"), KEY_A).unwrap();
    std::fs::write(dir.join("key-b"), KEY_B).unwrap();
    let config = w.config("", "vend = true").replacen(
        "admin = \"127.0.0.1:0\"",
        &format!("admin = \"127.0.0.1:0\"\n{tls}"),
        1,
    );
    format!(
        r#"{config}
[tokens.cc]
grant = "client_credentials"
token_url = "{token_url}"
client_id = "demo-client"
client_secret = {{ env = "DEMO_CLIENT_SECRET" }}

[[routes]]
prefix = "/cc/"
upstream = "{api_url}"
token = "cc"

[[callers]]
name = "a"
key = {{ file = {key_a:?} }}
tokens = ["demo"]

[[callers]]
name = "b"
key = {{ file = {key_b:?} }}
tokens = ["cc"]
"#,
        token_url = cc.token_url,
        api_url = cc.api_url,
        key_a = dir.join("key-a"),
        key_b = dir.join("key-b"),
    )
}

async fn cc_provider() -> Provider {
    Provider::start(ProviderOptions::default()).await.unwrap()
}

/// A client that trusts `ca_pem` and offers `alpn`.
fn tls_client(ca_pem: &str, alpn: &[u8]) -> reqwest::Client {
    support::pki::https_client(ca_pem, alpn).build().unwrap()
}

fn https(p: &support::Proxy, path: &str) -> String {
    format!("https://localhost:{}{path}", p.addr.port())
}

async fn send(c: &reqwest::Client, url: &str, key: Option<&str>) -> reqwest::Response {
    let mut req = c.get(url);
    if let Some(key) = key {
        req = req.header("Proxy-Authorization", format!("Bearer {key}"));
    }
    req.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_reach_their_own_tokens_over_tls_in_http1_and_h2() {
    let w = World::default().await;
    let pki = support::pki::Pki::new();
    let cc = cc_provider().await;
    let p = w.spawn(&service_config(&w, &cc, &pki));
    let h1 = tls_client(&pki.ca_pem, b"http/1.1");
    let h2 = tls_client(&pki.ca_pem, b"h2");

    for (c, version) in [
        (&h1, reqwest::Version::HTTP_11),
        (&h2, reqwest::Version::HTTP_2),
    ] {
        let r = send(c, &https(&p, "/demo/a"), Some(KEY_A)).await;
        assert_eq!(r.version(), version);
        assert_eq!(r.status(), 200);
        let r = send(c, &https(&p, "/cc/b"), Some(KEY_B)).await;
        assert_eq!(r.status(), 200);
        // Each caller is kept to its tokens' routes.
        for (path, key) in [("/cc/x", KEY_A), ("/demo/x", KEY_B)] {
            let r = send(c, &https(&p, path), Some(key)).await;
            assert_eq!(r.status(), 403, "{path}");
            assert_eq!(r.headers()["x-tokenproxy-error"], "caller_not_allowed");
        }
        for key in [None, Some("caller-a-key-wrong"), Some("")] {
            let r = send(c, &https(&p, "/demo/x"), key).await;
            assert_eq!(r.status(), 407, "{key:?}");
            assert!(r.headers().contains_key("proxy-authenticate"));
        }
    }
    // The proxy URL's password is a key too (HTTPS_PROXY=https://a:KEY@host).
    let basic = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("a:{KEY_A}"),
    );
    let r = h1
        .get(https(&p, "/demo/basic"))
        .header("Proxy-Authorization", format!("Basic {basic}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Plain HTTP on the TLS port gets nothing, and is counted.
    let (status, _) = tokio::time::timeout(Duration::from_secs(10), async {
        match reqwest::Client::new().get(p.url("/demo/x")).send().await {
            Ok(r) => (r.status().as_u16(), ()),
            Err(_) => (0, ()),
        }
    })
    .await
    .unwrap();
    assert_eq!(status, 0, "a plain request is not answered");

    let (_, metrics) = get(&p.admin_url("/metrics")).await;
    for line in [
        "tokenproxy_requests_total{caller=\"a\",route=\"demo\",status_class=\"2xx\"} 3",
        "tokenproxy_requests_total{caller=\"b\",route=\"cc\",status_class=\"2xx\"} 2",
        "tokenproxy_requests_total{caller=\"a\",route=\"cc\",status_class=\"4xx\"} 2",
        "tokenproxy_errors_total{error=\"tls_handshake_failed\",route=\"none\",source=\"client\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in:\n{metrics}");
    }
    let expiry = metrics
        .lines()
        .find(|l| {
            l.starts_with(
                "tokenproxy_listen_certificate_expiry_timestamp_seconds{listener=\"proxy\"}",
            )
        })
        .expect("the certificate's expiry is exported");
    let secs: f64 = expiry.rsplit(' ').next().unwrap().parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(secs > now, "{expiry}");

    let (_, log) = tokio::task::spawn_blocking(move || p.stop_and_log())
        .await
        .unwrap();
    assert!(
        log.contains("caller=\"a\"") && log.contains("caller=\"b\""),
        "{log}"
    );
    for key in [KEY_A, KEY_B] {
        assert!(!log.contains(key), "a key reached the log");
        assert!(!metrics.contains(key), "a key reached the metrics");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vending_hands_the_token_the_upstream_accepts_to_callers_that_list_it() {
    let w = World::default().await;
    let pki = support::pki::Pki::new();
    let cc = cc_provider().await;
    let p = w.spawn(&service_config(&w, &cc, &pki));
    let c = tls_client(&pki.ca_pem, b"http/1.1");
    let r = send(&c, &https(&p, "/tokenproxy/v1/tokens/demo"), Some(KEY_A)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert_eq!(r.headers()["content-type"], "application/json");
    let body = json(&r.text().await.unwrap());
    assert_eq!(body["token_type"], "Bearer");
    let token = body["access_token"].as_str().unwrap().to_owned();
    let expires_in = body["expires_in"].as_u64().unwrap();
    assert!(expires_in > 0, "{body}");
    assert!(
        body["expires_at"].as_str().unwrap().ends_with('Z'),
        "{body}"
    );
    assert!(body.get("refresh_token").is_none(), "{body}");
    let status = token_status(&p).await;
    assert_eq!(body.as_object().unwrap().len(), 4, "{body}");
    // The upstream accepts it directly.
    let r = client()
        .get(format!("{}vended", w.provider.api_url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // b does not list demo; cc is not vended; other paths under /tokenproxy/ are not routes.
    let r = send(&c, &https(&p, "/tokenproxy/v1/tokens/demo"), Some(KEY_B)).await;
    assert_eq!(r.status(), 403);
    let r = send(&c, &https(&p, "/tokenproxy/v1/tokens/cc"), Some(KEY_B)).await;
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["x-tokenproxy-error"], "token_not_vended");
    let r = send(&c, &https(&p, "/tokenproxy/v1/tokens/demo"), None).await;
    assert_eq!(r.status(), 407);
    let r = c
        .post(https(&p, "/tokenproxy/v1/tokens/demo"))
        .header("Proxy-Authorization", format!("Bearer {KEY_A}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert!(!r.text().await.unwrap().contains(&token));

    let (_, metrics) = get(&p.admin_url("/metrics")).await;
    assert!(
        metrics.contains("tokenproxy_tokens_vended_total{caller=\"a\",token=\"demo\"}"),
        "{metrics}"
    );
    let (_, log) = tokio::task::spawn_blocking(move || p.stop_and_log())
        .await
        .unwrap();
    assert!(log.contains("token vended"), "{log}");
    assert!(!log.contains(&token), "the vended token reached the log");
    assert!(!status.contains(&token), "the vended token reached /status");
}

/// While no valid token can be had, vending answers 503 with `Retry-After`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vending_is_503_while_no_token_is_valid() {
    let w = World::default().await;
    w.provider.set_mode(Mode::ServerError);
    let pki = support::pki::Pki::new();
    let cc = cc_provider().await;
    let p = w.spawn(&service_config(&w, &cc, &pki));
    let c = tls_client(&pki.ca_pem, b"http/1.1");
    let r = send(&c, &https(&p, "/tokenproxy/v1/tokens/demo"), Some(KEY_A)).await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(r.headers()["x-tokenproxy-error"], "no_valid_token");
    w.provider.set_mode(Mode::Normal);
}

/// A pair renewed on disk (cert-manager renews a Secret in place) is served
/// without a reload; a broken one is logged and the one in force keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_without_a_reload() {
    let w = World::default().await;
    let pki = support::pki::Pki::new();
    let cc = cc_provider().await;
    let p = w.spawn(&service_config(&w, &cc, &pki));
    let dir: &Path = w.dir.path();
    let first = json(&token_status(&p).await)["listener_certificate"].clone();
    assert!(first["expires_at"].is_string(), "{first}");
    assert!(first["on_disk_error"].is_null(), "{first}");
    std::fs::write(dir.join("tls.key"), "not a key").unwrap();
    p.wait_log("does not load; the one in force keeps serving")
        .await;
    // /status says so too, while the old pair serves; the key's text never.
    let broken = json(&token_status(&p).await)["listener_certificate"].clone();
    assert_eq!(broken["expires_at"], first["expires_at"], "{broken}");
    assert!(
        broken["on_disk_error"]
            .as_str()
            .is_some_and(|e| e.starts_with("listen.tls_key: ") && !e.contains("not a key")),
        "{broken}"
    );
    assert!(broken["on_disk_error_since"].is_string(), "{broken}");
    let old = tls_client(&pki.ca_pem, b"http/1.1");
    assert_eq!(
        send(&old, &https(&p, "/demo/1"), Some(KEY_A))
            .await
            .status(),
        200
    );

    let renewed = support::pki::Pki::new();
    let (cert, key) = renewed.server_pem("localhost");
    std::fs::write(dir.join("tls.crt"), cert).unwrap();
    std::fs::write(dir.join("tls.key"), key).unwrap();
    p.wait_log("certificate changed on disk").await;
    let now = json(&token_status(&p).await)["listener_certificate"].clone();
    assert!(now["on_disk_error"].is_null(), "{now}");
    let fresh = tls_client(&renewed.ca_pem, b"h2");
    assert_eq!(
        send(&fresh, &https(&p, "/demo/2"), Some(KEY_A))
            .await
            .status(),
        200
    );
    assert!(
        tls_client(&pki.ca_pem, b"http/1.1")
            .get(https(&p, "/demo/3"))
            .send()
            .await
            .is_err()
    );
}

async fn token_status(p: &support::Proxy) -> String {
    get(&p.admin_url("/status")).await.1
}

/// A certificate replaced on disk is served after a reload; a broken one is
/// refused and the old one keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_certificate_is_read_again_at_reload() {
    let w = World::default().await;
    let pki = support::pki::Pki::new();
    let cc = cc_provider().await;
    let p = w.spawn(&service_config(&w, &cc, &pki));
    let c = tls_client(&pki.ca_pem, b"http/1.1");
    assert_eq!(
        send(&c, &https(&p, "/demo/1"), Some(KEY_A)).await.status(),
        200
    );

    let other = support::pki::Pki::new();
    let (cert, key) = other.server_pem("localhost");
    let dir: &Path = w.dir.path();
    std::fs::write(dir.join("tls.key"), "not a key").unwrap();
    let r = support::client()
        .post(p.admin_url("/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let text = r.text().await.unwrap();
    assert!(text.contains("listen.tls_key"), "{text}");
    assert_eq!(
        send(&c, &https(&p, "/demo/2"), Some(KEY_A)).await.status(),
        200
    );

    std::fs::write(dir.join("tls.crt"), cert).unwrap();
    std::fs::write(dir.join("tls.key"), key).unwrap();
    let r = support::client()
        .post(p.admin_url("/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    // New connections get the new certificate: the old CA no longer verifies it.
    let fresh_old = tls_client(&pki.ca_pem, b"http/1.1");
    assert!(fresh_old.get(https(&p, "/demo/3")).send().await.is_err());
    let fresh_new = tls_client(&other.ca_pem, b"http/1.1");
    assert_eq!(
        send(&fresh_new, &https(&p, "/demo/4"), Some(KEY_A))
            .await
            .status(),
        200
    );
}

/// Waits until `path` holds something other than `old` (or, for `None`, until it
/// is gone); the file is what is watched, with a deadline.
async fn file_change(path: &Path, old: Option<&str>, within: Duration) -> Option<String> {
    let until = tokio::time::Instant::now() + within;
    loop {
        let now = std::fs::read_to_string(path).ok();
        if now.as_deref() != old {
            return now;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "{} did not change from {old:?}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A sink file follows each refresh (written whole, with its mode), holds no
/// refresh token, and is removed once no token is valid (needs_login, then expiry).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_file_follows_refreshes_and_goes_with_the_token() {
    use std::os::unix::fs::PermissionsExt;
    let w = World::new(ProviderOptions {
        lifetime: Duration::from_secs(3),
        ..Default::default()
    })
    .await;
    let sinks = w.dir.path().join("sinks");
    let path = sinks.join("demo.token");
    let json_path = sinks.join("demo.json");
    let extra = format!(
        "refresh_before = \"1s\"\n[[tokens.demo.sinks]]\npath = {path:?}\nmode = \"0640\"\n[[tokens.demo.sinks]]\npath = {json_path:?}\nformat = \"json\"\n"
    );
    let p = w.spawn(&w.config("", &extra));
    let mut seen = Vec::new();
    let mut current = file_change(&path, None, Duration::from_secs(20)).await;
    for _ in 0..3 {
        let token = current.clone().expect("a token file");
        assert!(
            w.provider.all_tokens().contains(&token),
            "the file holds an issued access token"
        );
        seen.push(token);
        current = file_change(&path, current.as_deref(), Duration::from_secs(20)).await;
    }
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o640
    );
    let json = json(&std::fs::read_to_string(&json_path).unwrap());
    assert!(
        json["access_token"].is_string() && json["expires_in"].is_u64(),
        "{json}"
    );
    let refresh = w.provider.current_refresh_token().unwrap();
    for file in [&path, &json_path] {
        assert!(!std::fs::read_to_string(file).unwrap().contains(&refresh));
    }
    // No new token can be had: the file goes once the last one expires.
    w.provider.set_mode(Mode::InvalidGrant);
    while current.is_some() {
        current = file_change(&path, current.as_deref(), Duration::from_secs(20)).await;
    }
    p.wait_token("demo", "needs_login", Duration::from_secs(20))
        .await;
    assert!(!json_path.exists());
    let (_, metrics) = get(&p.admin_url("/metrics")).await;
    assert!(
        metrics.contains("tokenproxy_sink_writes_total{result=\"success\",token=\"demo\"}"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("result=\"error\",token=\"demo\"} 1"),
        "{metrics}"
    );
    let (_, log) = tokio::task::spawn_blocking(move || p.stop_and_log())
        .await
        .unwrap();
    for token in &seen {
        assert!(!log.contains(token.as_str()), "a token reached the log");
    }
}

/// A reload changes who may call and what is vended at once; a token whose only
/// change is `vend` keeps its source (no refresh).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_callers_and_vending_without_a_refresh() {
    let w = World::default().await;
    let pki = support::pki::Pki::new();
    let cc = cc_provider().await;
    let config = service_config(&w, &cc, &pki);
    let p = w.spawn(&config);
    let c = tls_client(&pki.ca_pem, b"http/1.1");
    let vend = https(&p, "/tokenproxy/v1/tokens/demo");
    assert_eq!(send(&c, &vend, Some(KEY_A)).await.status(), 200);
    assert_eq!(
        send(&c, &https(&p, "/cc/x"), Some(KEY_B)).await.status(),
        200
    );
    let requests = w.provider.token_requests();

    let b = config.find("[[callers]]\nname = \"b\"").unwrap();
    let changed = config[..b].replace("vend = true", "vend = false");
    std::fs::write(&p.config, changed).unwrap();
    let r = client().post(p.admin_url("/reload")).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());

    assert_eq!(
        send(&c, &https(&p, "/cc/x"), Some(KEY_B)).await.status(),
        407
    );
    let r = send(&c, &vend, Some(KEY_A)).await;
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["x-tokenproxy-error"], "token_not_vended");
    assert_eq!(
        send(&c, &https(&p, "/demo/x"), Some(KEY_A)).await.status(),
        200
    );
    assert_eq!(
        w.provider.token_requests(),
        requests,
        "the token was kept, not refreshed"
    );
}
