//! The admin listener, metrics, request logs and the `token` and `seed` commands.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

async fn admin_endpoints_answer_with_their_shapes() {
    let w = World::default().await;
    let p = w.spawn(&w.config("", ""));
    assert_eq!(get(&p.url("/demo/warm")).await.0, 200);

    let (status, body) = get(&p.admin_url("/healthz")).await;
    assert_eq!((status, json(&body)["status"].clone()), (200, "ok".into()));
    let (status, body) = get(&p.admin_url("/readyz")).await;
    assert_eq!(
        (status, json(&body)["status"].clone()),
        (200, "ready".into())
    );

    let (status, body) = get(&p.admin_url("/status")).await;
    assert_eq!(status, 200);
    let s = json(&body);
    let t = &s["tokens"]["demo"];
    assert_eq!(t["state"], "valid");
    assert_eq!(t["grant"], "refresh_token");
    assert_eq!(t["generation"], 1);
    assert_eq!(t["last_refresh"]["trigger"], "startup");
    assert!(t["expires_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(t["last_error"], serde_json::Value::Null);
    assert_eq!(t["store"], "file");
    assert_eq!(s["routes"][0]["name"], "demo");
    assert_eq!(s["routes"][0]["prefix"], "/demo/");
    assert_eq!(s["routes"][0]["upstream_host"], "localhost");
    assert_eq!(s["routes"][0]["token"], "demo");
    assert!(s["listener_certificate"].is_null(), "plain HTTP: {s}");

    let r = force_refresh(&p, "demo").await;
    assert_eq!(r.status(), 200);
    let t = json(&r.text().await.unwrap());
    assert_eq!(
        (
            t["generation"].clone(),
            t["last_refresh"]["trigger"].clone()
        ),
        (2.into(), "manual".into())
    );
    assert_eq!(w.provider.token_requests(), 2);

    let r = force_refresh(&p, "nope").await;
    assert_eq!(r.status(), 404);
    assert_eq!(json(&r.text().await.unwrap())["error"], "unknown_token");
    let r = client()
        .get(p.admin_url("/tokens/demo/refresh"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405, "refresh is POST only");
    assert_eq!(r.headers()["allow"], "POST");
    let r = client().post(p.admin_url("/status")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET, HEAD");
    assert_eq!(
        json(&r.text().await.unwrap())["error"],
        "method_not_allowed"
    );
    let (status, body) = get(&p.admin_url("/nothing")).await;
    assert_eq!(
        (status, json(&body)["error"].clone()),
        (404, "not_found".into())
    );
}

/// Paths that once panicked the admin connection (a slice of `/tokens/refresh`)
/// get a JSON answer, and a request pipelined behind them is still served.
async fn odd_admin_paths_get_json_and_keep_the_connection() {
    let w = World::default().await;
    let p = w.spawn(&w.config("", ""));
    let mut pipelined = String::new();
    for path in [
        "/tokens/refresh",
        "/tokens//refresh",
        "/tokens/a/b/refresh",
        "/tokens/",
    ] {
        pipelined += &format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
    }
    pipelined += "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let reply = raw_all(p.admin, &pipelined).await;
    assert_eq!(reply.matches("HTTP/1.1 404").count(), 4, "{reply}");
    assert_eq!(
        reply.matches("\"error\":\"not_found\"").count(),
        4,
        "{reply}"
    );
    assert!(reply.contains("HTTP/1.1 200"), "{reply}");
    let metrics = get(&p.admin_url("/metrics")).await.1;
    assert!(metrics.contains("tokenproxy_panics_total 0"), "{metrics}");
    assert!(
        metrics.contains(
            r#"tokenproxy_errors_total{error="not_found",route="admin",source="client"} 4"#
        ),
        "{metrics}"
    );
}

async fn readiness_follows_the_credential_and_seed_restores_it_without_restart() {
    let w = World::default().await;
    w.provider.set_mode(Mode::InvalidGrant);
    let config = w.config("", "");
    let p = w.spawn(&config);
    p.wait_token("demo", "needs_login", Duration::from_secs(5))
        .await;
    let (code, body) = get(&p.admin_url("/readyz")).await;
    assert_eq!(code, 503);
    let r = json(&body);
    assert_eq!(r["tokens"][0]["token"], "demo");
    assert_eq!(r["tokens"][0]["state"], "needs_login");

    // A person obtains a new refresh token and seeds it.
    w.provider.set_mode(Mode::Normal);
    w.provider.reset_refresh_token("seeded-refresh-token-1");
    let path = w.dir.path().join("seed.toml");
    std::fs::write(&path, &config).unwrap();
    let out = run_with_stdin(
        &["seed", "demo", "-c", path.to_str().unwrap()],
        &[],
        "seeded-refresh-token-1\n",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("verified") && stdout.contains("generation"),
        "{stdout}"
    );
    for token in w.provider.all_tokens() {
        assert!(!stdout.contains(&token), "seed printed a token");
    }

    p.wait_ready(200, Duration::from_secs(10)).await;
    assert_eq!(get(&p.url("/demo/after-seed")).await.0, 200);
    assert_eq!(w.provider.reuse_detected(), 0);
    p.wait_log("a new token was stored; resuming").await;

    // A token the provider refuses is not stored.
    let before = std::fs::read_to_string(w.state_dir().join("demo.json")).unwrap();
    let out = run_with_stdin(
        &["seed", "demo", "-c", path.to_str().unwrap()],
        &[],
        "not-a-valid-token",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid_grant"));
    assert_eq!(
        std::fs::read_to_string(w.state_dir().join("demo.json")).unwrap(),
        before
    );
}

/// The value of one series in Prometheus text output (labels in any order).
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut sorted = labels.to_vec();
    sorted.sort();
    let labels: Vec<String> = sorted.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    let series = if labels.is_empty() {
        name.to_owned()
    } else {
        format!("{name}{{{}}}", labels.join(","))
    };
    text.lines()
        .find_map(|l| {
            l.strip_prefix(&series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.parse().ok())
}

async fn metrics_move_with_their_events() {
    metrics_scenario().await;
}

/// The metrics of that scenario, every kind of series present, as Prometheus
/// reads them: `promtool check metrics`.
async fn the_metrics_pass_promtool() {
    promtool_check(&metrics_scenario().await);
}

/// Drives every counted event and checks each metric moved; returns the last
/// scrape.
async fn metrics_scenario() -> String {
    let w = World::default().await;
    let p = w.spawn(&w.config("", ""));
    let scrape = || async { get(&p.admin_url("/metrics")).await.1 };
    let refresh = |trigger: &'static str, result: &'static str| {
        [("token", "demo"), ("trigger", trigger), ("result", result)]
    };

    assert_eq!(get(&p.url("/demo/a")).await.0, 200);
    assert_eq!(get(&p.url("/nowhere")).await.0, 404);
    let m = scrape().await;
    assert_eq!(
        metric(
            &m,
            "tokenproxy_token_refresh_total",
            &refresh("startup", "success")
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            "tokenproxy_requests_total",
            &[("route", "demo"), ("caller", ""), ("status_class", "2xx")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            "tokenproxy_requests_total",
            &[("route", "none"), ("caller", ""), ("status_class", "4xx")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            "tokenproxy_request_duration_seconds_count",
            &[("route", "demo")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            "tokenproxy_token_refresh_duration_seconds_count",
            &[("token", "demo")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(&m, "tokenproxy_token_valid", &[("token", "demo")]),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            "tokenproxy_store_write_errors_total",
            &[("token", "demo")]
        ),
        Some(0.0)
    );
    assert!(metric(&m, "tokenproxy_process_resident_memory_bytes", &[]).unwrap() > 0.0);
    let expiry = metric(
        &m,
        "tokenproxy_token_expiry_timestamp_seconds",
        &[("token", "demo")],
    )
    .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(expiry > now && expiry < now + 60.0, "{expiry} vs {now}");
    let issued = metric(
        &m,
        "tokenproxy_token_issued_timestamp_seconds",
        &[("token", "demo")],
    )
    .unwrap();
    assert!(
        issued <= now + 1.0 && issued > now - 60.0,
        "{issued} vs {now}"
    );

    // A 401 → reactive refresh → resent: the retry and the new expiry show.
    w.provider.set_lifetime(Duration::from_secs(45));
    w.provider.revoke_access();
    assert_eq!(get(&p.url("/demo/b")).await.0, 200);
    let m = scrape().await;
    assert_eq!(
        metric(
            &m,
            "tokenproxy_token_refresh_total",
            &refresh("reactive", "success")
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            "tokenproxy_upstream_retries_total",
            &[("route", "demo"), ("outcome", "success")]
        ),
        Some(1.0)
    );
    let later = metric(
        &m,
        "tokenproxy_token_expiry_timestamp_seconds",
        &[("token", "demo")],
    )
    .unwrap();
    assert!(
        later > expiry + 10.0,
        "expiry moved from {expiry} to {later}"
    );

    // A manual refresh is counted as such (a failing store write is counted in
    // tests/faults.rs, on a full disk).
    assert_eq!(force_refresh(&p, "demo").await.status(), 200);
    let m = scrape().await;
    assert_eq!(
        metric(
            &m,
            "tokenproxy_token_refresh_total",
            &refresh("manual", "success")
        ),
        Some(1.0)
    );

    // A dead credential is counted as such, and the token stops being valid once
    // the provider has revoked it.
    w.provider.set_mode(Mode::InvalidGrant);
    assert_eq!(force_refresh(&p, "demo").await.status(), 502);
    let m = scrape().await;
    assert_eq!(
        metric(
            &m,
            "tokenproxy_token_refresh_total",
            &refresh("manual", "invalid_grant")
        ),
        Some(1.0)
    );
    m
}

/// `promtool check metrics` on `text`.
fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn token_command_reports_and_refreshes_through_the_admin_api() {
    let w = World::default().await;
    let config = w.config("", "");
    let p = w.spawn(&config);
    assert_eq!(get(&p.url("/demo/a")).await.0, 200);
    // The command finds the admin endpoint in the configuration.
    let path = w.operator_config(&config, &p);
    let cli = |args: &[&str]| cli(&path, args);

    // Blocking calls are fine here: the proxy is another process, and the provider
    // has the runtime's other worker.
    let (code, out) = cli(&["token", "status", "demo"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.starts_with("demo: valid, expires ") && out.contains("generation 1"),
        "{out}"
    );

    let (code, out) = cli(&["token", "refresh", "demo"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("generation 2") && out.contains("(manual)"),
        "{out}"
    );

    let (code, out) = cli(&["token", "status", "demo", "--json"]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(json(&out)["generation"], 2);

    let (code, out) = cli(&["token", "status", "nope"]);
    assert_eq!(code, Some(2), "{out}");

    drop(p);
    let (code, out) = cli(&["token", "status", "demo"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("cannot reach the admin endpoint"), "{out}");
}

fn cli(config: &std::path::Path, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(binary())
        .args(args)
        .arg("-c")
        .arg(config)
        .env("DEMO_CLIENT_SECRET", "x")
        .env("DEMO_REFRESH_TOKEN", "x")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

/// `tokenproxy health`, the container image's health check: exit 0 while every
/// routed token is valid, 1 once one is not (naming it) or when nothing answers;
/// `--live` asks only whether the process serves.
async fn the_health_command_follows_readiness() {
    let w = World::default().await;
    let config = w.config("", "");
    let p = w.spawn(&config);
    assert_eq!(get(&p.url("/demo/a")).await.0, 200);
    // The admin listener from the configuration, or named on the command line.
    let path = w.operator_config(&config, &p);
    let (code, out) = cli(&path, &["health"]);
    assert_eq!((code, out.as_str()), (Some(0), "ready\n"));
    let admin = p.admin.to_string();
    let (code, out) = cli(&path, &["health", "--admin", &admin]);
    assert_eq!((code, out.as_str()), (Some(0), "ready\n"));

    // The API refuses the token and the provider the refresh token: not ready.
    w.provider.set_mode(Mode::InvalidGrant);
    w.provider.revoke_access();
    assert_eq!(get(&p.url("/demo/a")).await.0, 401);
    let (code, out) = cli(&path, &["health"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.starts_with("not_ready\n  demo: "), "{out}");
    let (code, out) = cli(&path, &["health", "--live"]);
    assert_eq!(code, Some(0), "{out}");

    drop(p);
    let (code, out) = cli(&path, &["health"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("cannot reach the admin endpoint"), "{out}");

    // An address that takes the connection and never answers (a frozen process):
    // the check gives up on its own instead of hanging its runner. The minute is
    // only there to turn a hang into a failure.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let run = tokio::task::spawn_blocking(move || cli(&path, &["health", "--admin", &addr]));
    let (code, out) = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("tokenproxy health returns")
        .unwrap();
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("no answer within 5 s"), "{out}");
    drop(silent);
}

async fn one_log_line_per_request_without_query_or_headers() {
    let w = World::default().await;
    let path = w.dir.path().join("json.toml");
    std::fs::write(&path, w.config("", "")).unwrap();
    let p = Proxy::start_args(&path, &["--log-format", "json"], &[]);
    let r = client()
        .get(p.url("/demo/items?filter=private-value"))
        .header("X-Api-Key", "header-value")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    p.wait_log("\"message\":\"request\"").await;
    let log = p.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(json)
        .filter(|l| l["fields"]["message"] == "request")
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
    let f = &lines[0]["fields"];
    assert_eq!(f["method"], "GET");
    assert_eq!(f["route"], "demo");
    assert_eq!(f["status"], 200);
    assert_eq!(f["retried"], false);
    assert!(f["duration_ms"].as_f64().unwrap() > 0.0);
    assert!(
        !log.contains("private-value") && !log.contains("header-value"),
        "{log}"
    );
    let refreshed: Vec<serde_json::Value> = log
        .lines()
        .map(json)
        .filter(|l| l["fields"]["message"] == "token refreshed")
        .collect();
    assert_eq!(refreshed[0]["fields"]["trigger"], "startup");
    assert!(
        refreshed[0]["fields"]["expires_at"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
}

async fn the_text_request_line_has_every_field_and_one_line_per_request() {
    // Plain text (stderr is not a terminal here): the line tokenproxy writes without
    // tracing's formatter, in tracing's format.
    let w = World::default().await;
    let p = w.spawn(&w.config("", ""));
    assert_eq!(get(&p.url("/demo/items?filter=private-value")).await.0, 200);
    assert_eq!(get(&p.url("/nowhere")).await.0, 404);
    p.wait_log("error=\"no_route\"").await;
    let log = p.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(": request ")).collect();
    assert_eq!(lines.len(), 2, "{log}");
    let shape = |l: &str| {
        let (time, rest) = l.split_once(' ').unwrap();
        assert!(time.len() == 27 && time.ends_with('Z'), "{l}");
        rest.split("duration_ms=")
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let ok = shape(lines[0]);
    assert_eq!(
        ok[0],
        " INFO tokenproxy::proxy: request method=GET route=\"demo\" status=200 "
    );
    assert!(ok[1].ends_with(" retried=false"), "{}", lines[0]);
    let miss = shape(lines[1]);
    assert_eq!(
        miss[0],
        " INFO tokenproxy::proxy: request method=GET route=\"none\" status=404 "
    );
    assert!(
        miss[1].ends_with(" retried=false error=\"no_route\""),
        "{}",
        lines[1]
    );
    assert!(!log.contains("private-value"), "{log}");
}

/// The request line (written without tracing's formatter) is still filtered by
/// `RUST_LOG`, by its level and its target.
async fn the_request_line_follows_rust_log() {
    let w = World::default().await;
    let p = w.spawn_with(
        &w.config("[proxy]\nresponse_timeout = \"300ms\"\n", ""),
        &[("RUST_LOG", "info,tokenproxy::proxy=warn")],
    );
    assert_eq!(get(&p.url("/demo/x")).await.0, 200);
    assert_eq!(get(&p.url("/demo/slow?ms=3000")).await.0, 504);
    p.wait_log("error=\"upstream_timeout\"").await;
    let log = p.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(": request ")).collect();
    assert_eq!(lines.len(), 1, "only the warn line: {log}");
    assert!(
        lines[0].contains(" WARN tokenproxy::proxy: request method=GET route=\"demo\" status=504 "),
        "{log}"
    );
}

async fn status_shows_a_refresh_in_flight() {
    let w = World::default().await;
    let p = w.spawn(&w.config("", "timeout = \"4s\""));
    assert_eq!(get(&p.url("/demo/a")).await.0, 200);
    w.provider.set_mode(Mode::Hang);
    let refresh = tokio::spawn(client().post(p.admin_url("/tokens/demo/refresh")).send());
    loop {
        let state = json(&get(&p.admin_url("/status")).await.1)["tokens"]["demo"]["state"].clone();
        if state == "refreshing" {
            break;
        }
        // Until the hung request times out, the refresh is under way.
        assert!(!refresh.is_finished(), "state stayed {state}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The hung token request times out: the person's answer says so (it waits
    // for the refresh's outcome), and the current token still serves.
    let answer = refresh.await.unwrap().unwrap();
    assert_eq!(answer.status(), 502);
    let t = json(&answer.text().await.unwrap());
    assert_eq!(t["state"], "valid", "{t}");
    assert!(
        t["last_error"].as_str().unwrap().contains("timed out"),
        "{t}"
    );
    assert_eq!(get(&p.url("/demo/b")).await.0, 200);
}

/// With `listen.admin_key`, the POST endpoints need `Authorization: Bearer KEY`
/// (401 with `WWW-Authenticate` without it or with a wrong one); the GET
/// endpoints stay open for probes and Prometheus; the key is never logged; and
/// `tokenproxy token refresh` sends it.
async fn the_admin_key_guards_the_post_endpoints() {
    const KEY: &str = "admin-key-0123456789abcdef";
    let w = World::default().await;
    let key_file = w.dir.path().join("admin-key");
    std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
    let config = w.config("", "").replace(
        "admin = \"127.0.0.1:0\"",
        &format!(
            "admin = \"127.0.0.1:0\"\nadmin_key = {{ file = \"{}\" }}",
            key_file.display()
        ),
    );
    let p = w.spawn(&config);
    assert_eq!(get(&p.url("/demo/a")).await.0, 200);
    let c = client();
    for path in ["/tokens/demo/refresh", "/reload"] {
        for auth in [None, Some("Bearer wrong-key"), Some(KEY)] {
            let mut req = c.post(p.admin_url(path));
            if let Some(a) = auth {
                req = req.header("Authorization", a);
            }
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 401, "{path} {auth:?}");
            assert_eq!(r.headers()["x-tokenproxy-error"], "admin_unauthorized");
            assert!(r.headers().contains_key("www-authenticate"));
        }
    }
    assert_eq!(w.provider.token_requests(), 1, "no refresh without the key");
    for path in ["/healthz", "/readyz", "/status", "/metrics"] {
        assert_eq!(get(&p.admin_url(path)).await.0, 200, "{path}");
    }
    let r = c
        .post(p.admin_url("/tokens/demo/refresh"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .post(p.admin_url("/reload"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let path = w.operator_config(&config, &p);
    let (code, out) = cli(&path, &["token", "refresh", "demo"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("generation 3"), "{out}");
    let log = p.log();
    assert!(!log.contains(KEY) && !out.contains(KEY), "{log}");
}

/// An admin listener beyond loopback without a key: `check` warns, GET endpoints
/// answer, and the POST endpoints answer 403 admin_key_required and do nothing.
async fn an_exposed_admin_listener_without_a_key_refuses_changes() {
    let w = World::default().await;
    let config = w
        .config("", "")
        .replace("admin = \"127.0.0.1:0\"", "admin = \"0.0.0.0:0\"");
    let path = w.dir.path().join("exposed.toml");
    std::fs::write(&path, &config).unwrap();
    let (code, out) = cli(&path, &["check"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("listen.admin") && out.contains("admin_key"),
        "{out}"
    );
    let p = w.spawn(&config);
    let admin = format!("http://127.0.0.1:{}", p.admin.port());
    assert_eq!(get(&format!("{admin}/status")).await.0, 200);
    for path in ["/tokens/demo/refresh", "/reload"] {
        let r = client()
            .post(format!("{admin}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{path}");
        assert_eq!(r.headers()["x-tokenproxy-error"], "admin_key_required");
    }
    assert_eq!(w.provider.token_requests(), 1);
    assert!(p.log().contains("has no admin_key"), "{}", p.log());
}

/// A manual refresh obeys `min_interval` and the backoff: too soon is `429` with
/// `Retry-After`, and no token request (30 POSTs used to make 30).
async fn a_manual_refresh_obeys_min_interval() {
    let w = World::default().await;
    let p = w.spawn(&w.config("", "min_interval = \"570s\""));
    assert_eq!(get(&p.url("/demo/a")).await.0, 200);
    for _ in 0..30 {
        let r = force_refresh(&p, "demo").await;
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["x-tokenproxy-error"], "refresh_too_soon");
        let retry: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((500..=570).contains(&retry), "{retry}");
    }
    assert_eq!(w.provider.token_requests(), 1);
}

/// CONNECT and absolute-form requests to the admin listener are refused and the
/// connection closed: a request after them on the same connection is not served.
async fn the_admin_listener_is_not_a_proxy() {
    let w = World::default().await;
    let p = w.spawn(&w.config("", ""));
    p.wait_ready(200, Duration::from_secs(10)).await;
    for (head, status) in [
        (
            "CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\n",
            "405",
        ),
        (
            "GET http://example.test/status HTTP/1.1\r\nHost: example.test\r\n\r\n",
            "400",
        ),
    ] {
        let pipelined = format!(
            "{head}POST /tokens/demo/refresh HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
        );
        let reply = raw_all(p.admin, &pipelined).await;
        assert!(reply.starts_with(&format!("HTTP/1.1 {status}")), "{reply}");
        assert!(reply.contains("admin_not_a_proxy"), "{reply}");
        assert_eq!(reply.matches("HTTP/1.1 ").count(), 1, "{reply}");
    }
    assert_eq!(w.provider.token_requests(), 1);
}

/// `tokenproxy token status` needs only the admin listener from the
/// configuration: it works in a shell where the tokens' secrets are not set.
async fn the_token_command_needs_none_of_the_tokens_secrets() {
    let w = World::default().await;
    let config = w.config("", "");
    let p = w.spawn(&config);
    p.wait_ready(200, Duration::from_secs(10)).await;
    let path = w.operator_config(&config, &p);
    let out = tokio::process::Command::new(binary())
        .args(["token", "status", "demo", "-c"])
        .arg(&path)
        .env_remove("DEMO_CLIENT_SECRET")
        .env_remove("DEMO_REFRESH_TOKEN")
        .output()
        .await
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.starts_with("demo: valid"), "{text}");
}

use support::harness::Needs;

harness!(
    Needs::Nothing => admin_endpoints_answer_with_their_shapes,
    Needs::Nothing => odd_admin_paths_get_json_and_keep_the_connection,
    Needs::Nothing => readiness_follows_the_credential_and_seed_restores_it_without_restart,
    Needs::Nothing => metrics_move_with_their_events,
    Needs::Promtool => the_metrics_pass_promtool,
    Needs::Nothing => token_command_reports_and_refreshes_through_the_admin_api,
    Needs::Nothing => the_health_command_follows_readiness,
    Needs::Nothing => one_log_line_per_request_without_query_or_headers,
    Needs::Nothing => the_text_request_line_has_every_field_and_one_line_per_request,
    Needs::Nothing => the_request_line_follows_rust_log,
    Needs::Nothing => status_shows_a_refresh_in_flight,
    Needs::Nothing => the_admin_key_guards_the_post_endpoints,
    Needs::Nothing => an_exposed_admin_listener_without_a_key_refuses_changes,
    Needs::Nothing => a_manual_refresh_obeys_min_interval,
    Needs::Nothing => the_admin_listener_is_not_a_proxy,
    Needs::Nothing => the_token_command_needs_none_of_the_tokens_secrets,
);
