//! Several instances on one shared store behave as one: one token request per
//! lifetime, never a refresh token spent twice, a lock that ends with its holder,
//! and a table other tools can read. Against a real PostgreSQL server, whose URL
//! `.ci/services.sh` exports as `TOKENPROXY_TEST_POSTGRES_URL` (CI fails without it;
//! elsewhere these tests say so and pass).

mod support;

use std::time::{Duration, Instant};

use support::*;

/// A fresh database on the test server, for one test; `None` (after saying why)
/// outside CI when no server is configured.
async fn database() -> Option<String> {
    let Ok(base) = std::env::var("TOKENPROXY_TEST_POSTGRES_URL") else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but TOKENPROXY_TEST_POSTGRES_URL is not set: .ci/run starts PostgreSQL"
        );
        eprintln!("skipped: no TOKENPROXY_TEST_POSTGRES_URL (run `. .ci/services.sh` first)");
        return None;
    };
    let (client, conn) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
        .await
        .expect("connect to the test server");
    tokio::spawn(conn);
    let name = format!("tp_{:016x}", fastrand::u64(..));
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create database");
    let (prefix, _) = base.rsplit_once('/').expect("a URL with a database");
    Some(format!("{prefix}/{name}"))
}

async fn query_one(url: &str, sql: &str) -> Option<String> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .query_opt(sql, &[])
        .await
        .unwrap()
        .and_then(|r| r.get::<_, Option<String>>(0))
}

/// The world's config with the store on `url` (read from `TP_STORE_URL`), a 15 s
/// lease and 3 s token requests.
fn shared_config(w: &World, token_extra: &str) -> String {
    w.config("", &format!("timeout = \"3s\"\n{token_extra}"))
        .replace(
            &format!("[store]\npath = \"{}\"", w.state_dir().display()),
            "[store]\nkind = \"postgres\"\nurl = { env = \"TP_STORE_URL\" }\nlease = \"15s\"",
        )
}

fn short_lived(secs: f64) -> ProviderOptions {
    ProviderOptions {
        lifetime: Duration::from_secs_f64(secs),
        ..ProviderOptions::default()
    }
}

/// Four instances under steady load through twelve short lifetimes: every request
/// succeeds, no refresh token is presented twice, and the token endpoint sees the
/// refreshes one instance alone would make (one per lifetime less the margin), not
/// four times as many: each token request makes exactly one stored generation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_instances_refresh_as_one() {
    let Some(url) = database().await else { return };
    let lifetime = Duration::from_secs(2);
    let w = World::new(short_lived(lifetime.as_secs_f64())).await;
    // Margin 0.5 s (and up to 0.1 s of jitter): one refresh per ~1.5 s.
    let config = shared_config(&w, "refresh_before = \"500ms\"");
    let proxies: Vec<Proxy> = (0..4)
        .map(|_| w.spawn_with(&config, &[("TP_STORE_URL", url.as_str())]))
        .collect();
    let started = Instant::now();
    let deadline = started + lifetime * 12;
    let mut failures = Vec::new();
    let c = client();
    let mut sent = 0;
    while Instant::now() < deadline {
        for p in &proxies {
            let status = c
                .get(p.url("/demo/steady"))
                .send()
                .await
                .map(|r| r.status().as_u16());
            sent += 1;
            if status.as_ref().ok() != Some(&200) {
                failures.push(format!("{status:?} after {:?}", started.elapsed()));
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    assert!(sent > 100, "only {sent} requests");
    assert!(failures.is_empty(), "client-visible errors: {failures:?}");
    assert_eq!(
        w.provider.reuse_detected(),
        0,
        "a refresh token was spent twice"
    );
    let requests = w.provider.token_requests();
    let generation: u64 = query_one(
        &url,
        "SELECT generation::text FROM tokenproxy_tokens WHERE name = 'demo'",
    )
    .await
    .unwrap()
    .parse()
    .unwrap();
    // Every token request made a generation: no instance refreshed what another
    // had already refreshed.
    assert!(
        requests <= generation + 1,
        "{requests} token requests made {generation} generations"
    );
    let one_instance = (elapsed.as_secs_f64() / 1.4).ceil() as u64 + 2;
    assert!(
        requests <= one_instance,
        "{requests} token requests in {elapsed:?}; one instance alone makes at most {one_instance}"
    );
    assert!(requests >= 8, "refreshes happened: {requests}");
}

/// Another tool reads the current access token from the documented table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tool_reads_the_current_token_from_the_table() {
    let Some(url) = database().await else { return };
    let w = World::default().await;
    let p = w.spawn_with(&shared_config(&w, ""), &[("TP_STORE_URL", url.as_str())]);
    assert_eq!(get(&p.url("/demo/x")).await.0, 200);
    let access = query_one(
        &url,
        "SELECT access_token FROM tokenproxy_tokens WHERE name = 'demo' AND expires_at > now()",
    )
    .await
    .expect("a current access token in the table");
    // The API accepts it: it is the current one.
    let r = client()
        .get(format!("{}direct", w.provider.api_url))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let generation = query_one(
        &url,
        "SELECT generation::text FROM tokenproxy_tokens WHERE name = 'demo'",
    )
    .await;
    assert_eq!(generation.as_deref(), Some("1"));
}

/// A table of a layout this build does not know is refused by name at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_schema_version_is_refused() {
    let Some(url) = database().await else { return };
    let w = World::default().await;
    let p = w.spawn_with(&shared_config(&w, ""), &[("TP_STORE_URL", url.as_str())]);
    drop(p);
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .batch_execute("UPDATE tokenproxy_schema SET version = 99")
        .await
        .unwrap();
    let path = w.dir.path().join("v99.toml");
    std::fs::write(&path, shared_config(&w, "")).unwrap();
    let out = std::process::Command::new(binary())
        .args(["run", "-c"])
        .arg(&path)
        .env("TP_STORE_URL", &url)
        .env("DEMO_CLIENT_SECRET", "demo-secret")
        .env("DEMO_REFRESH_TOKEN", "demo-refresh-0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("version [99]") && err.contains("knows version 1"),
        "{err}"
    );
}

/// The lock holder is killed in the middle of a refresh: its session ends with it,
/// and another instance refreshes at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_lock_holder_does_not_block_the_others() {
    let Some(url) = database().await else { return };
    let w = World::default().await;
    let config = shared_config(&w, "");
    let env = [("TP_STORE_URL", url.as_str())];
    let a = w.spawn_with(&config, &env);
    let b = w.spawn_with(&config, &env);
    assert_eq!(get(&a.url("/demo/x")).await.0, 200);
    assert_eq!(get(&b.url("/demo/x")).await.0, 200);
    let before = w.provider.token_requests();
    // A takes the lock and its token request never comes back.
    w.provider.set_mode(Mode::Hang);
    let held = {
        let url = a.admin_url("/tokens/demo/refresh");
        tokio::spawn(async move { client().post(url).send().await })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while w.provider.token_requests() == before {
        assert!(Instant::now() < deadline, "A never asked for a token");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    a.signal("KILL");
    held.abort();
    w.provider.set_mode(Mode::Normal);
    let started = Instant::now();
    let r = force_refresh(&b, "demo").await;
    assert_eq!(r.status(), 200, "{}", b.log());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "B waited {:?} for a dead holder's lock",
        started.elapsed()
    );
    assert_eq!(w.provider.reuse_detected(), 0);
}

/// A PostgreSQL server of one test's own (it is restarted), made with the binaries
/// `.ci/services.sh` found. Stopped when dropped.
struct OwnServer {
    bin: String,
    dir: tempfile::TempDir,
    url: String,
    /// The server's options (port, socket directory, address).
    opts: String,
}

impl OwnServer {
    /// Blocking (it waits for the server): call it from `spawn_blocking`.
    #[allow(clippy::disallowed_methods)]
    fn start() -> Option<OwnServer> {
        let Ok(bin) = std::env::var("TOKENPROXY_PG_BIN") else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true but TOKENPROXY_PG_BIN is not set: .ci/run sources .ci/services.sh"
            );
            eprintln!("skipped: no TOKENPROXY_PG_BIN (run `. .ci/services.sh` first)");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .map(|l| l.local_addr().unwrap().port())
            .unwrap();
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1",
            dir.path().display()
        );
        let server = OwnServer {
            bin,
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            dir,
            opts,
        };
        assert!(
            std::process::Command::new("chown")
                .args(["postgres:"])
                .arg(server.dir.path())
                .status()
                .unwrap()
                .success()
        );
        server.pg(&[
            "initdb",
            "-D",
            &server.data(),
            "-U",
            "postgres",
            "--auth=trust",
        ]);
        let log = server.dir.path().join("log").display().to_string();
        server.pg(&[
            "pg_ctl",
            "-D",
            &server.data(),
            "-l",
            &log,
            "-o",
            &server.opts,
            "-w",
            "start",
        ]);
        Some(server)
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// Runs a PostgreSQL program as the unprivileged `postgres` user. Its output
    /// goes nowhere: a server it starts keeps what it inherits open.
    fn pg(&self, args: &[&str]) {
        let status = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(format!("{}/{}", self.bin, args[0]))
            .args(&args[1..])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        let log = std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default();
        assert!(status.success(), "{args:?} failed:\n{log}");
    }

    fn stop(&self) {
        self.pg(&["pg_ctl", "-D", &self.data(), "-m", "fast", "-w", "stop"]);
    }

    fn start_again(&self) {
        let log = self.dir.path().join("log").display().to_string();
        self.pg(&[
            "pg_ctl",
            "-D",
            &self.data(),
            "-l",
            &log,
            "-o",
            &self.opts,
            "-w",
            "start",
        ]);
    }

    fn restart(&self) {
        let log = self.dir.path().join("log").display().to_string();
        self.pg(&[
            "pg_ctl",
            "-D",
            &self.data(),
            "-l",
            &log,
            "-m",
            "fast",
            "-w",
            "restart",
        ]);
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(format!("{}/pg_ctl", self.bin))
            .args(["-D", &self.data(), "-m", "immediate", "stop"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// The store restarts in the middle of a run: requests keep succeeding on the
/// token held in memory, the next refresh reconnects, and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_restart_loses_nothing() {
    let Some(server) = tokio::task::spawn_blocking(OwnServer::start).await.unwrap() else {
        return;
    };
    let w = World::new(short_lived(6.0)).await;
    let config = shared_config(&w, "refresh_before = \"3s\"");
    let p = w.spawn_with(&config, &[("TP_STORE_URL", server.url.as_str())]);
    assert_eq!(get(&p.url("/demo/x")).await.0, 200);
    let c = client();
    let mut failures = Vec::new();
    let started = Instant::now();
    let mut restarted = false;
    // Three lifetimes, the store restarted early in the first.
    while started.elapsed() < Duration::from_secs(18) {
        if !restarted && started.elapsed() > Duration::from_millis(500) {
            let s = &server;
            tokio::task::block_in_place(|| s.restart());
            restarted = true;
        }
        match c.get(p.url("/demo/during")).send().await {
            Ok(r) if r.status() == 200 => {}
            other => failures.push(format!(
                "{:?} at {:?}",
                other.map(|r| r.status()),
                started.elapsed()
            )),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        failures.is_empty(),
        "client-visible errors: {failures:?}\n{}",
        p.log()
    );
    assert_eq!(w.provider.reuse_detected(), 0);
    assert!(
        w.provider.token_requests() >= 4,
        "refreshes went on after the restart"
    );
    let stored = query_one(
        &server.url,
        "SELECT refresh_token FROM tokenproxy_tokens WHERE name = 'demo'",
    )
    .await;
    assert_eq!(
        stored,
        w.provider.current_refresh_token(),
        "the newest refresh token is stored"
    );
}

/// While the store is down, the token in memory keeps serving; `/status` and
/// `/metrics` say the store is unreachable, and say so no more once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_store_is_reported_and_tokens_keep_serving() {
    let Some(server) = tokio::task::spawn_blocking(OwnServer::start).await.unwrap() else {
        return;
    };
    let w = World::new(short_lived(60.0)).await;
    let p = w.spawn_with(
        &shared_config(&w, ""),
        &[("TP_STORE_URL", server.url.as_str())],
    );
    assert_eq!(get(&p.url("/demo/x")).await.0, 200);
    tokio::task::block_in_place(|| server.stop());
    assert_eq!(force_refresh(&p, "demo").await.status(), 502);
    let status = json(&get(&p.admin_url("/status")).await.1);
    assert_eq!(status["store"]["up"], false, "{status}");
    assert!(status["store"]["last_error"].as_str().is_some(), "{status}");
    assert!(
        get(&p.admin_url("/metrics"))
            .await
            .1
            .contains("tokenproxy_store_up 0")
    );
    assert_eq!(
        get(&p.url("/demo/still")).await.0,
        200,
        "the token in memory serves"
    );
    p.wait_ready(200, Duration::from_secs(5)).await;
    tokio::task::block_in_place(|| server.start_again());
    let deadline = Instant::now() + Duration::from_secs(20);
    while force_refresh(&p, "demo").await.status() != 200 {
        assert!(
            Instant::now() < deadline,
            "no refresh after the store came back:\n{}",
            p.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = json(&get(&p.admin_url("/status")).await.1);
    assert_eq!(status["store"]["up"], true, "{status}");
    assert!(
        get(&p.admin_url("/metrics"))
            .await
            .1
            .contains("tokenproxy_store_up 1")
    );
    assert_eq!(w.provider.reuse_detected(), 0);
}

/// A refresh on one instance reaches the others through the store's notifications
/// at once, not at their own refresh time, and costs them no token request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_instances_pick_a_new_token_up_at_once() {
    let Some(url) = database().await else { return };
    let w = World::new(short_lived(600.0)).await;
    let config = shared_config(&w, "");
    let env = [("TP_STORE_URL", url.as_str())];
    let a = w.spawn_with(&config, &env);
    let b = w.spawn_with(&config, &env);
    assert_eq!(get(&a.url("/demo/x")).await.0, 200);
    assert_eq!(get(&b.url("/demo/x")).await.0, 200);
    let before = w.provider.token_requests();
    let generation = token_status(&a, "demo").await["generation"]
        .as_u64()
        .unwrap();
    assert_eq!(force_refresh(&a, "demo").await.status(), 200);
    let refreshed = Instant::now();
    loop {
        let seen = token_status(&b, "demo").await["generation"]
            .as_u64()
            .unwrap();
        if seen == generation + 1 {
            break;
        }
        assert!(
            refreshed.elapsed() < Duration::from_secs(10),
            "B still holds generation {seen}:\n{}",
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("picked up {:?} after the refresh", refreshed.elapsed());
    assert_eq!(
        w.provider.token_requests(),
        before + 1,
        "B made no token request"
    );
    b.wait_log("picked up the token another instance stored")
        .await;
    // B serves with the new token (the provider accepts only the current one).
    assert_eq!(get(&b.url("/demo/y")).await.0, 200);
}

/// Encrypted at rest: the raw row holds no token, and the instance works as ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_table_holds_no_token_in_clear_with_an_encryption_key() {
    let Some(url) = database().await else { return };
    let w = World::default().await;
    let config = shared_config(&w, "").replace(
        "lease = \"15s\"",
        "lease = \"15s\"\nencryption_key = { env = \"TP_KEY\" }",
    );
    let key = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    let p = w.spawn_with(&config, &[("TP_STORE_URL", url.as_str()), ("TP_KEY", key)]);
    assert_eq!(get(&p.url("/demo/x")).await.0, 200);
    assert_eq!(force_refresh(&p, "demo").await.status(), 200);
    assert_eq!(get(&p.url("/demo/y")).await.0, 200);
    let row = query_one(
        &url,
        "SELECT concat_ws(' ', access_token, refresh_token, extra::text) FROM tokenproxy_tokens WHERE name = 'demo'",
    )
    .await
    .unwrap();
    assert!(row.starts_with("enc:v1:"), "{row}");
    for token in w.provider.all_tokens() {
        assert!(!row.contains(&token), "the row holds {token} in clear");
    }
}

/// `check` connects to the store: reachable with its schema, or an error and exit 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_the_store() {
    let Some(url) = database().await else { return };
    let w = World::default().await;
    let path = w.dir.path().join("check.toml");
    std::fs::write(&path, shared_config(&w, "")).unwrap();
    let check = |url: &str| {
        std::process::Command::new(binary())
            .args(["check", "-c"])
            .arg(&path)
            .env("TP_STORE_URL", url)
            .env("DEMO_CLIENT_SECRET", "s")
            .output()
            .unwrap()
    };
    let out = check(&url);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("store check: reachable; no tokenproxy tables yet"),
        "{text}"
    );
    let p = w.spawn_with(&shared_config(&w, ""), &[("TP_STORE_URL", url.as_str())]);
    drop(p);
    let out = check(&url);
    assert!(String::from_utf8_lossy(&out.stdout).contains("schema version 1"));
    // Nobody listens there.
    let out = check("postgres://postgres@127.0.0.1:1/none");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("database (connect)"), "{err}");
}
