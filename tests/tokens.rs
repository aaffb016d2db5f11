//! The token lifecycle end to end: proactive refresh, persistence across restarts
//! and instances, failures of the token endpoint, and secrecy of every token.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use support::*;
use tokenproxy::demo::ExpiresIn;

fn short_lived(secs: f64) -> ProviderOptions {
    ProviderOptions {
        lifetime: Duration::from_secs_f64(secs),
        ..ProviderOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proactive_refresh_across_several_lifetimes_without_client_errors() {
    let w = World::new(short_lived(2.0)).await;
    let p = w.spawn(&w.config("", "refresh_before = \"1s\""));
    let c = client();
    let until = Instant::now() + Duration::from_secs(7);
    let mut requests = 0;
    while Instant::now() < until {
        let r = c.get(p.url("/demo/page")).send().await.unwrap();
        assert_eq!(r.status(), 200, "request {requests} failed:\n{}", p.log());
        requests += 1;
    }
    let issued = w.provider.tokens_issued();
    assert!(issued >= 4, "only {issued} tokens in 7 s of 2 s lifetimes");
    assert_eq!(
        w.provider.token_requests(),
        issued,
        "every token request succeeded"
    );
    assert_eq!(w.provider.reuse_detected(), 0);
    // The local API accepts only the newest token, so a request in flight at the
    // moment of a refresh may see a 401 and be resent; the client never sees it.
    let proactive = p
        .wait_log("trigger=\"proactive\"")
        .await
        .matches("trigger=\"proactive\"")
        .count();
    assert!(
        proactive >= 3,
        "{proactive} proactive refreshes:\n{}",
        p.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_reuses_the_stored_token_and_never_a_spent_refresh_token() {
    let w = World::default().await;
    let config = w.config("", "");
    let p = w.spawn(&config);
    assert_eq!(get(&p.url("/demo/a")).await.0, 200);
    assert!(p.stop().success());
    assert_eq!(w.provider.token_requests(), 1);

    // The stored access token is still valid: no token request at all.
    let p = w.spawn(&config);
    assert_eq!(get(&p.url("/demo/b")).await.0, 200);
    assert_eq!(w.provider.token_requests(), 1);

    // A refresh now must use the rotated refresh token from the store, not the
    // configured (spent) one, which the provider would treat as theft.
    w.provider.revoke_access();
    assert_eq!(get(&p.url("/demo/c")).await.0, 200);
    assert_eq!(w.provider.token_requests(), 2);
    assert_eq!(w.provider.reuse_detected(), 0);
    drop(p);

    let dir = w.state_dir();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("demo.json")), 0o600);
    let stored = std::fs::read_to_string(dir.join("demo.json")).unwrap();
    assert!(stored.contains(&w.provider.current_refresh_token().unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_store_refresh_once_and_share_the_result() {
    let w = World::default().await;
    let config = w.config("", "");
    let a = w.spawn(&config);
    assert_eq!(get(&a.url("/demo/a")).await.0, 200);
    let b = w.spawn(&config);
    assert_eq!(get(&b.url("/demo/b")).await.0, 200);
    assert_eq!(
        w.provider.token_requests(),
        1,
        "the second instance adopted the stored token"
    );

    w.provider.revoke_access();
    let c = client();
    let mut all = Vec::new();
    for i in 0..40 {
        let url = if i % 2 == 0 {
            a.url("/demo/x")
        } else {
            b.url("/demo/y")
        };
        let c = c.clone();
        all.push(tokio::spawn(async move {
            c.get(url).send().await.unwrap().status().as_u16()
        }));
    }
    for r in all {
        assert_eq!(r.await.unwrap(), 200);
    }
    assert_eq!(
        w.provider.token_requests(),
        2,
        "one refresh across both instances"
    );
    assert_eq!(w.provider.reuse_detected(), 0);
}

/// The current token keeps serving while the endpoint fails, then 503 with
/// Retry-After once it has expired, then recovery without a restart.
async fn endpoint_failure(mode: Mode) {
    let w = World::new(short_lived(2.0)).await;
    let p = w.spawn(&w.config("", "refresh_before = \"1s\"\ntimeout = \"500ms\""));
    // The first token, however long a busy machine took to get it (a client
    // waits only `timeout` for a refresh), and when the provider issued it.
    p.wait_ready(200, Duration::from_secs(15)).await;
    w.provider.set_mode(mode);
    let issued_at = w.provider.rotations().last().expect("a token was issued").0;
    assert_eq!(get(&p.url("/demo/a")).await.0, 200);

    // Served from the current token until it expires: an answer that came back
    // within 1.5 s of the issue (the proxy gave it sooner) must be a 200; one that
    // came later, on a busy machine, says nothing either way.
    loop {
        let status = get(&p.url("/demo/b")).await.0;
        if issued_at.elapsed() >= Duration::from_millis(1500) {
            break;
        }
        assert_eq!(status, 200, "{mode:?}:\n{}", p.log());
    }
    p.wait_ready(503, Duration::from_secs(5)).await;
    let r = client().get(p.url("/demo/c")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["x-tokenproxy-error"], "no_valid_token");
    assert!(r.headers().contains_key("retry-after"));

    // Backoff bounds the request rate: a few attempts, not one per client request.
    let before = w.provider.token_requests();
    let window = Instant::now();
    while window.elapsed() < Duration::from_secs(2) {
        assert_eq!(get(&p.url("/demo/d")).await.0, 503);
    }
    let attempts = w.provider.token_requests() - before;
    assert!(
        attempts <= 3,
        "{attempts} token requests in 2 s of failures ({mode:?})"
    );

    w.provider.set_mode(Mode::Normal);
    p.wait_ready(200, Duration::from_secs(15)).await;
    assert_eq!(get(&p.url("/demo/e")).await.0, 200);
    p.wait_log("token refresh failed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_5xx_backs_off_and_recovers() {
    endpoint_failure(Mode::ServerError).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_html_backs_off_and_recovers() {
    endpoint_failure(Mode::Html).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_timeout_backs_off_and_recovers() {
    endpoint_failure(Mode::Hang).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_without_access_token_backs_off_and_recovers() {
    endpoint_failure(Mode::NoAccessToken).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_empty_200_backs_off_and_recovers() {
    endpoint_failure(Mode::EmptyOk).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_truncated_json_backs_off_and_recovers() {
    endpoint_failure(Mode::Truncated).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_10_mib_body_is_cut_off_and_recovers() {
    endpoint_failure(Mode::Huge).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_refusing_connections_backs_off() {
    let w = World::default().await;
    // A port that was free a moment ago: connections are refused. (Binding on
    // loopback does not block.)
    #[allow(clippy::disallowed_methods)]
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = w
        .config("", "")
        .replace(&w.provider.token_url, &format!("http://{closed}/token"));
    let p = w.spawn(&config);
    let r = client().get(p.url("/demo/x")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let t = token_status(&p, "demo").await;
    assert_eq!(t["state"], "failed");
    assert!(
        t["last_error"].as_str().unwrap().contains("unreachable"),
        "{t}"
    );
    assert!(t["next_attempt_in_s"].as_u64().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_grant_is_terminal_without_a_request_storm() {
    let w = World::default().await;
    w.provider.set_mode(Mode::InvalidGrant);
    let p = w.spawn(&w.config("", ""));
    for _ in 0..50 {
        let r = client().get(p.url("/demo/x")).send().await.unwrap();
        assert_eq!(r.status(), 503);
    }
    p.wait_ready(503, Duration::from_secs(5)).await;
    assert_eq!(
        w.provider.token_requests(),
        1,
        "a dead credential is tried once"
    );
    let status = json(&get(&p.admin_url("/status")).await.1);
    assert_eq!(status["tokens"]["demo"]["state"], "needs_login");
    assert!(
        status["tokens"]["demo"]["last_error"]
            .as_str()
            .unwrap()
            .contains("invalid_grant")
    );
    // The log says how to recover.
    p.wait_log("tokenproxy seed demo").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_with_basic_auth() {
    let w = World::default().await;
    let config = w.config("", "").replace(
        "grant = \"refresh_token\"",
        "grant = \"client_credentials\"\nclient_auth = \"basic\"",
    );
    let config = config.replace("refresh_token = { env = \"DEMO_REFRESH_TOKEN\" }\n", "");
    let p = w.spawn(&config);
    let (status, body) = get(&p.url("/demo/cc")).await;
    assert_eq!(status, 200, "{body}\n{}", p.log());
    w.provider.revoke_access();
    assert_eq!(get(&p.url("/demo/cc")).await.0, 200);
    assert_eq!(w.provider.token_requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_appears_in_logs_status_or_error_bodies() {
    let w = World::new(short_lived(2.0)).await;
    let mut bodies = String::new();
    for format in ["text", "json"] {
        let config = w.config("", "refresh_before = \"1s\"");
        let path = w.dir.path().join(format!("leak-{format}.toml"));
        std::fs::write(&path, &config).unwrap();
        // Each run starts a new refresh-token chain, as after a fresh login.
        let initial = format!("demo-refresh-{format}");
        w.provider.reset_refresh_token(&initial);
        let env = [
            ("RUST_LOG", "trace"),
            ("DEMO_REFRESH_TOKEN", initial.as_str()),
        ];
        let p = Proxy::start_args(&path, &["--log-format", format], &env);
        bodies += &get(&p.url("/demo/ok")).await.1;
        w.provider.revoke_access();
        bodies += &get(&p.url("/demo/after-revoke")).await.1;
        bodies += &get(&p.url("/nowhere")).await.1;
        bodies += &get(&p.admin_url("/status")).await.1;
        bodies += &force_refresh(&p, "demo").await.text().await.unwrap();
        w.provider.set_mode(Mode::InvalidGrant);
        bodies += &force_refresh(&p, "demo").await.text().await.unwrap();
        bodies += &get(&p.admin_url("/status")).await.1;
        bodies += &get(&p.admin_url("/metrics")).await.1;
        w.provider.set_mode(Mode::Normal);
        let _ = std::fs::remove_dir_all(w.state_dir());
        p.wait_log("token refreshed").await;
        let (status, log) = tokio::task::spawn_blocking(move || p.stop_and_log())
            .await
            .unwrap();
        assert!(status.success());
        for token in w.provider.all_tokens() {
            assert!(!log.contains(&token), "{format} log leaks {token}");
            assert!(!bodies.contains(&token), "a response body leaks {token}");
        }
        // The configured client secret, too.
        assert!(!log.contains("demo-secret") && !bodies.contains("demo-secret"));
    }
}

/// A token endpoint that says a token lives no time at all (`expires_in` 0, as a
/// number or a string) does not make tokenproxy ask again and again: the token is
/// taken to live `default_lifetime`, the log names what the provider said once,
/// and client requests are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_lifetime_does_not_make_refreshes_spin() {
    for expires_in in [ExpiresIn::Number, ExpiresIn::String] {
        let w = World::new(ProviderOptions {
            lifetime: Duration::from_secs(3600),
            stated_lifetime: Some(Duration::ZERO),
            expires_in,
            ..ProviderOptions::default()
        })
        .await;
        let p = w.spawn(&w.config("", "default_lifetime = \"15m\""));
        let started = Instant::now();
        let mut statuses = Vec::new();
        // The old defect: a refresh every ~50 ms, every client request a 503.
        while started.elapsed() < Duration::from_secs(3) {
            statuses.push(get(&p.url("/demo/x")).await.0);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            statuses.iter().all(|&s| s == 200),
            "{statuses:?}\n{}",
            p.log()
        );
        assert_eq!(w.provider.token_requests(), 1, "{}", p.log());
        let log = p.wait_log("gave no usable lifetime").await;
        assert!(
            log.contains("expires_in: 0") || log.contains("expires_in: \"0\""),
            "{log}"
        );
        let status = token_status(&p, "demo").await;
        let expires = humantime::parse_rfc3339(status["expires_at"].as_str().unwrap()).unwrap();
        let left = expires
            .duration_since(std::time::SystemTime::now())
            .unwrap();
        assert!(left > Duration::from_secs(14 * 60), "{status}");
    }
}
