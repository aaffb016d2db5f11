//! Live reload: `SIGHUP` and `POST /reload` put a changed configuration in force
//! without failing a request or losing a held token; a broken or unreloadable one
//! is refused and the running configuration keeps serving.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use support::*;

/// Requests sent one after another until stopped; the failures, as text.
fn steady_load(url: String) -> (Arc<AtomicBool>, tokio::task::JoinHandle<(u64, Vec<String>)>) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let task = tokio::spawn(async move {
        let c = client();
        let (mut sent, mut failures) = (0, Vec::new());
        while !flag.load(Ordering::SeqCst) {
            sent += 1;
            match c.get(&url).send().await {
                Ok(r) if r.status() == 200 => {}
                other => failures.push(format!("{:?}", other.map(|r| r.status()))),
            }
        }
        (sent, failures)
    });
    (stop, task)
}

/// The world's config with a second route `/more/` to the same API and token.
fn with_second_route(config: &str, api_url: &str) -> String {
    format!(
        "{config}\n[[routes]]\nprefix = \"/more/\"\nupstream = \"{api_url}\"\ntoken = \"demo\"\n"
    )
}

fn metric_line(text: &str, series: &str) -> Option<String> {
    text.lines()
        .find(|l| l.starts_with(series))
        .map(str::to_owned)
}

/// `SIGHUP` with a new route, under steady load: the route works, the token is the
/// same one (same generation, no token request), and no request failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_new_route_and_keeps_the_token() {
    let w = World::default().await;
    let config = w.config("", "");
    let p = w.spawn(&config);
    assert_eq!(get(&p.url("/demo/x")).await.0, 200);
    assert_eq!(get(&p.url("/more/x")).await.0, 404);
    let generation = token_status(&p, "demo").await["generation"].clone();
    let token_requests = w.provider.token_requests();

    let (stop, load) = steady_load(p.url("/demo/steady"));
    std::fs::write(&p.config, with_second_route(&config, &w.provider.api_url)).unwrap();
    p.signal("HUP");
    p.wait_log("configuration reloaded").await;
    assert_eq!(get(&p.url("/more/x")).await.0, 200, "{}", p.log());
    // Keep the load going a little past the swap.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::SeqCst);
    let (sent, failures) = load.await.unwrap();
    assert!(sent > 10, "only {sent} requests");
    assert!(
        failures.is_empty(),
        "requests failed during the reload: {failures:?}"
    );

    assert_eq!(token_status(&p, "demo").await["generation"], generation);
    assert_eq!(
        w.provider.token_requests(),
        token_requests,
        "the token was kept"
    );
    let status = json(&get(&p.admin_url("/status")).await.1);
    assert_eq!(status["reload"]["result"], "success", "{status}");
    assert_eq!(status["routes"].as_array().unwrap().len(), 2);
    let metrics = get(&p.admin_url("/metrics")).await.1;
    assert_eq!(
        metric_line(
            &metrics,
            "tokenproxy_config_reloads_total{result=\"success\"}"
        )
        .as_deref(),
        Some("tokenproxy_config_reloads_total{result=\"success\"} 1")
    );
    // The process is still running: SIGHUP did not terminate it.
    assert_eq!(get(&p.admin_url("/healthz")).await.0, 200);
}

/// A broken file is refused with its error in the log, `/status` and `POST
/// /reload`'s answer; the running configuration keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_config_is_refused_and_the_old_one_keeps_serving() {
    let w = World::default().await;
    let config = w.config("", "");
    let p = w.spawn(&config);
    assert_eq!(get(&p.url("/demo/x")).await.0, 200);
    std::fs::write(
        &p.config,
        config.replace("prefix = \"/demo/\"", "prefix = \"demo\""),
    )
    .unwrap();
    p.signal("HUP");
    let log = p.wait_log("configuration reload refused").await;
    assert!(log.contains("routes[0].prefix"), "{log}");
    assert_eq!(
        get(&p.url("/demo/y")).await.0,
        200,
        "the old configuration serves"
    );
    let status = json(&get(&p.admin_url("/status")).await.1);
    assert_eq!(status["reload"]["result"], "error", "{status}");
    assert!(
        status["reload"]["error"]
            .as_str()
            .unwrap()
            .contains("routes[0].prefix"),
        "{status}"
    );

    std::fs::write(&p.config, "this is [not toml").unwrap();
    let r = client().post(p.admin_url("/reload")).send().await.unwrap();
    assert_eq!(r.status(), 422);
    let body = json(&r.text().await.unwrap());
    assert_eq!(body["error"], "reload_refused", "{body}");
    assert_eq!(get(&p.url("/demo/z")).await.0, 200);
    let metrics = get(&p.admin_url("/metrics")).await.1;
    assert!(
        metrics.contains("tokenproxy_config_reloads_total{result=\"error\"} 2"),
        "{metrics}"
    );
    // A good file again: in force.
    std::fs::write(&p.config, with_second_route(&config, &w.provider.api_url)).unwrap();
    let r = client().post(p.admin_url("/reload")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(get(&p.url("/more/x")).await.0, 200);
}

/// A token whose settings changed gets a new token at once, made under the store's
/// lock (one token request, the next generation); a change to `[store]` is refused
/// by name: it needs a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_token_is_refreshed_and_a_store_change_needs_a_restart() {
    let w = World::default().await;
    let config = w.config("", "");
    let p = w.spawn(&config);
    assert_eq!(get(&p.url("/demo/x")).await.0, 200);
    let generation = token_status(&p, "demo").await["generation"]
        .as_u64()
        .unwrap();
    let requests = w.provider.token_requests();
    std::fs::write(&p.config, w.config("", "scope = \"reports\"")).unwrap();
    let r = client().post(p.admin_url("/reload")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body = json(&r.text().await.unwrap());
    assert!(
        body["summary"]
            .as_str()
            .unwrap()
            .contains("tokens changed: demo"),
        "{body}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while token_status(&p, "demo").await["generation"]
        .as_u64()
        .unwrap()
        <= generation
    {
        assert!(std::time::Instant::now() < deadline, "{}", p.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(w.provider.token_requests(), requests + 1);
    assert_eq!(
        w.provider.last_request().unwrap().field("scope"),
        Some("reports"),
        "the new token was asked for with the new settings"
    );
    assert_eq!(get(&p.url("/demo/y")).await.0, 200);
    assert_eq!(w.provider.reuse_detected(), 0);

    let moved = w.config("", "scope = \"reports\"").replace(
        &format!("path = \"{}\"", w.state_dir().display()),
        &format!("path = \"{}\"", w.dir.path().join("elsewhere").display()),
    );
    std::fs::write(&p.config, moved).unwrap();
    let r = client().post(p.admin_url("/reload")).send().await.unwrap();
    assert_eq!(r.status(), 422);
    let body = json(&r.text().await.unwrap());
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("[store]") && message.contains("restart"),
        "{message}"
    );
    assert_eq!(get(&p.url("/demo/z")).await.0, 200);
}

/// A new listen address: the new port serves, the old one stops accepting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_listener_serves_on_the_new_address() {
    let w = World::default().await;
    let config = w.config("", "");
    let p = w.spawn(&config);
    assert_eq!(get(&p.url("/demo/x")).await.0, 200);
    let port = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    };
    let moved = config.replacen(
        "proxy = \"127.0.0.1:0\"",
        &format!("proxy = \"127.0.0.1:{port}\""),
        1,
    );
    std::fs::write(&p.config, moved).unwrap();
    let r = client().post(p.admin_url("/reload")).send().await.unwrap();
    let body = json(&r.text().await.unwrap());
    assert!(
        body["summary"]
            .as_str()
            .unwrap()
            .contains("proxy listener moved"),
        "{body}"
    );
    assert_eq!(get(&format!("http://127.0.0.1:{port}/demo/y")).await.0, 200);
    // The old listener is closed once it has drained (nothing was in flight).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(p.addr).await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the old port still accepts"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The new token a reload asks for is refused by a provider in trouble soon after
/// the last one was issued: the retry waits for `min_interval` (or the token's
/// expiry, if sooner) rather than at once after the backoff, where the refresh
/// would decline and the scheduler ask again in a loop. `/status` says when.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_renew_retries_no_sooner_than_min_interval() {
    let w = World::default().await;
    let extra = "min_interval = \"60s\"";
    let p = w.spawn(&w.config("", extra));
    assert_eq!(get(&p.url("/demo/x")).await.0, 200);
    w.provider.set_mode(tokenproxy::demo::Mode::ServerError);
    std::fs::write(
        &p.config,
        w.config("", &format!("{extra}\nscope = \"reports\"")),
    )
    .unwrap();
    let r = client().post(p.admin_url("/reload")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    p.wait_log("token refresh failed").await;
    let status = token_status(&p, "demo").await;
    let expires = humantime::parse_rfc3339(status["expires_at"].as_str().unwrap()).unwrap();
    let left = expires
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default()
        .as_secs();
    // The demo's tokens live 30 s, less than min_interval: the retry waits for
    // the expiry, not for the backoff's second.
    let next = status["next_attempt_in_s"].as_u64().unwrap();
    assert!(next + 1 >= left && next > 5, "{status}");
    assert_eq!(status["state"], "valid", "{status}");
    assert_eq!(get(&p.url("/demo/y")).await.0, 200);
}
