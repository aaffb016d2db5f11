//! Every wait has a deadline, and the token lifecycle survives what used to strand
//! it: a hung lock holder or discovery document, a refusal after a lost race, a
//! crash in the middle of a refresh, a long backoff while clients wait.

mod support;

use std::fs::File;
use std::time::{Duration, Instant};

use support::*;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Writes a token record as another process would.
fn write_record(w: &World, generation: u64, access: &str, refresh: &str, valid_ms: u64) {
    std::fs::create_dir_all(w.state_dir()).unwrap();
    let now = now_ms();
    std::fs::write(
        w.state_dir().join("demo.json"),
        serde_json::json!({
            "version": 1,
            "generation": generation,
            "access_token": access,
            "refresh_token": refresh,
            "issued_at_ms": now,
            "expires_at_ms": now + valid_ms,
        })
        .to_string(),
    )
    .unwrap();
}

/// How long the provider holds its answer while a test writes "another process's"
/// record: the write takes milliseconds, the margin is for a busy machine.
const PROVIDER_DELAY_MS: u64 = 5000;

/// Forces a refresh and, once its token request is at the provider (which holds
/// the answer), runs `meanwhile`; returns the refresh's status.
async fn refresh_while(w: &World, p: &Proxy, meanwhile: impl FnOnce()) -> u16 {
    let refresh = {
        let url = p.admin_url("/tokens/demo/refresh");
        tokio::spawn(async move { client().post(url).send().await.unwrap().status() })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while w.provider.token_requests_in_flight() == 0 {
        assert!(
            Instant::now() < deadline,
            "the refresh never reached the provider"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    meanwhile();
    refresh.await.unwrap().as_u16()
}

/// Another process holds the store lock and never lets go: a request gets a 503
/// with `Retry-After` within the token timeout, and the log names the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_lock_holder_gives_clients_a_timely_503() {
    let w = World::default().await;
    std::fs::create_dir_all(w.state_dir()).unwrap();
    let held = File::create(w.state_dir().join("demo.lock")).unwrap();
    // Free, so it cannot wait.
    #[allow(clippy::disallowed_methods)]
    held.lock().unwrap();
    let p = w.spawn(&w.config("", "timeout = \"2s\""));
    let started = Instant::now();
    let r = client()
        .get(p.url("/demo/x"))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    p.wait_log("store lock").await;
    drop(held);
}

/// A discovery document that never answers: bounded by the token timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_discovery_document_gives_clients_a_timely_503() {
    let w = World::default().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let config = w.config("", "timeout = \"2s\"").replace(
        &format!("token_url = \"{}\"", w.provider.token_url),
        &format!("issuer = \"{issuer}\""),
    );
    let p = w.spawn(&config);
    let started = Instant::now();
    let r = client()
        .get(p.url("/demo/x"))
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    let status = token_status(&p, "demo").await;
    assert!(
        status["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("timed out")
            || p.log().contains("stopped waiting"),
        "{status}\n{}",
        p.log()
    );
}

/// `invalid_grant` after a lost race is not terminal: another process stored a
/// newer token meanwhile, and it is adopted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_grant_after_a_lost_race_adopts_the_winners_token() {
    let w = World::default().await;
    let p = w.spawn(&w.config("", ""));
    assert_eq!(get(&p.url("/demo/x")).await.0, 200);
    w.provider
        .set_mode(Mode::InvalidGrantAfter(PROVIDER_DELAY_MS));
    // While the refusal is on its way, "another process" stores generation 7.
    let status = refresh_while(&w, &p, || {
        write_record(&w, 7, "at-from-the-winner", "rt-from-the-winner", 60_000)
    })
    .await;
    assert_eq!(status, 200);
    let status = token_status(&p, "demo").await;
    assert_eq!(status["generation"], 7, "{status}");
    assert_eq!(status["state"], "valid", "{status}");
    p.wait_ready(200, Duration::from_secs(5)).await;
    p.wait_log("another process had already spent").await;
}

/// A write is fenced by the generation seen under the lock: a process that ignored
/// the lock and stored a newer token during this refresh is not overwritten; its
/// token is adopted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_record_stored_during_a_refresh_is_not_overwritten() {
    let w = World::default().await;
    let p = w.spawn(&w.config("", ""));
    assert_eq!(get(&p.url("/demo/x")).await.0, 200);
    w.provider.set_mode(Mode::SlowOk(PROVIDER_DELAY_MS));
    let status = refresh_while(&w, &p, || {
        write_record(&w, 9, "at-from-elsewhere", "rt-from-elsewhere", 60_000)
    })
    .await;
    assert_eq!(status, 200);
    let stored = std::fs::read_to_string(w.state_dir().join("demo.json")).unwrap();
    assert!(
        stored.contains("rt-from-elsewhere"),
        "overwritten: {stored}"
    );
    assert_eq!(token_status(&p, "demo").await["generation"], 9);
    p.wait_log("the store moved on while this refresh ran")
        .await;
}

/// A start that finds an intent for the stored refresh token knows the previous
/// process died mid-refresh: it says so, counts it, tries the token once, and
/// when that fails says why a login is needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_refresh_is_reported_at_the_next_start() {
    for provider_still_accepts in [true, false] {
        let w = World::default().await;
        write_record(&w, 3, "at-old", "demo-refresh-0", 0);
        std::fs::write(
            w.state_dir().join("demo.intent.json"),
            serde_json::json!({
                "generation": 3,
                "refresh_token_sha256": tokenproxy::store::fingerprint("demo-refresh-0"),
                "at_ms": now_ms(),
            })
            .to_string(),
        )
        .unwrap();
        if !provider_still_accepts {
            // The dead process's request reached the provider, which rotated.
            w.provider
                .reset_refresh_token("rotated-by-the-dead-process");
        }
        let p = w.spawn(&w.config("", ""));
        p.wait_log("stopped in the middle").await;
        let metrics = get(&p.admin_url("/metrics")).await.1;
        assert!(
            metrics.contains(r#"tokenproxy_refresh_interrupted_total{token="demo"} 1"#),
            "{metrics}"
        );
        if provider_still_accepts {
            p.wait_ready(200, Duration::from_secs(10)).await;
        } else {
            let status = p
                .wait_token("demo", "needs_login", Duration::from_secs(10))
                .await;
            assert_eq!(get(&p.admin_url("/readyz")).await.0, 503);
            assert!(
                status["last_error"]
                    .as_str()
                    .unwrap()
                    .contains("log in again"),
                "{status}"
            );
        }
        if provider_still_accepts {
            assert!(!w.state_dir().join("demo.intent.json").exists());
        }
    }
}

/// After a long `Retry-After`, an expired token with clients waiting is tried again
/// within seconds, and the `Retry-After` they get says when.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_clients_get_a_sooner_retry_than_a_long_backoff() {
    let w = World::default().await;
    w.provider.set_mode(Mode::RateLimited(600));
    let p = w.spawn(&w.config("", ""));
    p.wait_log("token refresh failed").await;
    let r = client().get(p.url("/demo/x")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        retry <= 5,
        "Retry-After {retry} s while a retry comes sooner"
    );
    w.provider.set_mode(Mode::Normal);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if get(&p.url("/demo/x")).await.0 == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no retry within 20 s:\n{}",
            p.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A token the upstream refuses and that cannot be refreshed is not ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_that_cannot_be_refreshed_is_not_ready() {
    let w = World::default().await;
    let p = w.spawn(&w.config("", ""));
    assert_eq!(get(&p.url("/demo/x")).await.0, 200);
    p.wait_ready(200, Duration::from_secs(5)).await;
    w.provider.set_mode(Mode::ServerError);
    w.provider.revoke_access();
    assert_eq!(get(&p.url("/demo/x")).await.0, 401);
    p.wait_token("demo", "refused", Duration::from_secs(5))
        .await;
    assert_eq!(get(&p.admin_url("/readyz")).await.0, 503);
    w.provider.set_mode(Mode::Normal);
    assert_eq!(force_refresh_after_backoff(&p, "demo").await.status(), 200);
    p.wait_ready(200, Duration::from_secs(5)).await;
}

/// A restart after the seed variable was removed works while the store holds a
/// refresh token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_variable_is_needed_only_while_the_store_is_empty() {
    let w = World::default().await;
    let config = w.config("", "");
    let p = w.spawn(&config);
    assert_eq!(get(&p.url("/demo/x")).await.0, 200);
    drop(p);
    let path = w.dir.path().join("no-seed.toml");
    std::fs::write(&path, &config).unwrap();
    let p = Proxy::start_wrapped(&path, &["env", "-u", "DEMO_REFRESH_TOKEN"], &[]);
    assert_eq!(get(&p.url("/demo/y")).await.0, 200);
    assert_eq!(w.provider.reuse_detected(), 0);
}

/// In-flight requests still open after the drain timeout are closed, and the
/// process exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_left_after_the_drain_timeout_are_closed() {
    let w = World::default().await;
    let p = w.spawn(&w.config("[proxy]\ndrain_timeout = \"1s\"\n", ""));
    assert_eq!(get(&p.url("/demo/x")).await.0, 200);
    let slow = {
        let url = p.url("/demo/slow?ms=30000");
        tokio::spawn(async move { client().get(url).send().await.map(|r| r.status()) })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while w.provider.api_requests() < 2 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = Instant::now();
    let (status, log) = tokio::task::spawn_blocking(move || p.stop_and_log())
        .await
        .unwrap();
    assert!(status.success());
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(log.contains("drain timed out"), "{log}");
    assert!(slow.await.unwrap().is_err(), "the slow request was cut off");
}

/// Once shutdown began, no refresh starts: a closed source answers without asking
/// the token endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_refresh_starts_after_shutdown_began() {
    use std::sync::Arc;
    use tokenproxy::token::{TokenHttp, TokenSource, Trigger};
    let w = World::default().await;
    let text = w.config("", "").replace(
        "client_secret = { env = \"DEMO_CLIENT_SECRET\" }\nrefresh_token = { env = \"DEMO_REFRESH_TOKEN\" }",
        "client_secret = \"demo-secret\"\nrefresh_token = \"demo-refresh-0\"",
    );
    let mut config = tokenproxy::config::Config::parse(&text, "t.toml".as_ref()).unwrap();
    let store = Arc::new(tokenproxy::store::FileStore::open(&w.state_dir()).unwrap());
    let roots = tokenproxy::tls::roots(None).unwrap();
    let http = TokenHttp::new(roots, Duration::from_secs(5)).unwrap();
    let source = TokenSource::new(
        config.tokens.remove(0),
        store,
        http,
        Arc::new(tokenproxy::metrics::Metrics::new()),
    );
    assert!(source.refresh(0, Trigger::Reactive).await.is_ok());
    assert_eq!(w.provider.token_requests(), 1);
    source.close();
    for trigger in [Trigger::Reactive, Trigger::Manual, Trigger::Proactive] {
        assert!(source.refresh(1, trigger).await.is_err());
    }
    assert_eq!(
        w.provider.token_requests(),
        1,
        "no token request after close"
    );
}

/// Shutdown asks idle keep-alive connections to close at once: they do not hold the
/// process for the drain timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_close_at_shutdown() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let w = World::default().await;
    let p = w.spawn(&w.config("[proxy]\ndrain_timeout = \"120s\"\n", ""));
    let mut s = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    s.write_all(b"GET /demo/x HTTP/1.1\r\nHost: tokenproxy\r\n\r\n")
        .await
        .unwrap();
    let mut head = vec![0; 4096];
    let n = s.read(&mut head).await.unwrap();
    assert!(
        head[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head[..n])
    );
    let stopped = tokio::task::spawn_blocking(move || p.stop_and_log());
    // Without the request to close, the connection would stay open for the drain
    // timeout (120 s); the margin is for a busy machine.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "the idle connection was not closed at shutdown"
    );
    let (status, log) = stopped.await.unwrap();
    assert!(status.success(), "{log}");
    assert!(!log.contains("drain timed out"), "{log}");
}
