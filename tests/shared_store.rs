//! Several instances on one shared store behave as one: one token request per
//! lifetime, never a refresh token spent twice, a lock that ends with its holder
//! and a write fenced by generation, and records other tools can read. Every
//! scenario runs against a real PostgreSQL server and a real Redis server: those
//! `.ci/services.sh` exports (`TOKENPROXY_TEST_POSTGRES_URL`,
//! `TOKENPROXY_TEST_REDIS_URL`), else throwaway servers this binary starts where
//! `postgres` and `redis-server` are installed (`support::harness`). Where they are
//! not, the tests are reported as ignored, with the reason; CI fails instead.

mod support;

use std::time::{Duration, Instant};

use support::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Postgres,
    Redis,
}

/// Each scenario once per store kind (`scenario::postgres`, `scenario::redis`),
/// then the tests of one kind.
fn main() -> std::process::ExitCode {
    use support::harness::{Needs, Test};
    let mut tests = Vec::new();
    macro_rules! on_both {
        ($($scenario:ident),* $(,)?) => {$(
            tests.push(Test::new(concat!(stringify!($scenario), "::postgres"), Needs::Postgres, || $scenario(Kind::Postgres)));
            tests.push(Test::new(concat!(stringify!($scenario), "::redis"), Needs::Redis, || $scenario(Kind::Redis)));
        )*};
    }
    on_both!(
        four_instances_refresh_as_one,
        another_tool_reads_the_current_token,
        an_unknown_layout_version_is_refused,
        a_killed_lock_holder_does_not_block_the_others,
        a_frozen_lock_holder_is_taken_over_and_spends_nothing,
        a_holder_whose_lease_lapsed_cannot_overwrite_a_newer_state,
        a_store_restart_loses_nothing,
        an_unreachable_store_is_reported_and_tokens_keep_serving,
        other_instances_pick_a_new_token_up_at_once,
        the_store_holds_no_token_in_clear_with_an_encryption_key,
        check_reports_the_store,
        seed_writes_to_the_shared_store,
        a_holder_frozen_past_the_timeout_keeps_the_late_answer,
        a_refusal_is_presented_once_in_total,
        a_holder_frozen_before_its_request_spends_nothing,
        a_store_restart_during_a_refresh_keeps_the_rotated_token,
    );
    tests.extend([
        Test::new(
            "a_redis_server_that_can_lose_writes_is_warned_about",
            Needs::Redis,
            a_redis_server_that_can_lose_writes_is_warned_about,
        ),
        Test::new(
            "redis_over_tls_is_verified_against_the_configured_ca",
            Needs::Redis,
            redis_over_tls_is_verified_against_the_configured_ca,
        ),
        Test::new(
            "a_token_table_pipeline_migrates_as_the_guide_says",
            Needs::Postgres,
            a_token_table_pipeline_migrates_as_the_guide_says,
        ),
        Test::new(
            "three_instances_behind_one_address_serve_one_token_over_tls",
            Needs::Postgres,
            three_instances_behind_one_address_serve_one_token_over_tls,
        ),
        Test::new(
            "a_corrupt_redis_record_names_the_field_not_its_value",
            Needs::Redis,
            a_corrupt_redis_record_names_the_field_not_its_value,
        ),
    ]);
    support::harness::main(tests)
}

/// The run's test server of `kind` (`support::harness` found or started it).
fn server_url(kind: Kind) -> String {
    match kind {
        Kind::Postgres => support::harness::postgres().0,
        Kind::Redis => support::harness::redis(),
    }
}

/// The directory of PostgreSQL's programs (`psql`, `pg_ctl`, ...).
fn pg_bin() -> String {
    support::harness::postgres().1.display().to_string()
}

/// One test's own place on a server: a database of its own (PostgreSQL) or a key
/// prefix of its own (Redis).
struct Store {
    kind: Kind,
    url: String,
    prefix: String,
}

impl Store {
    /// A fresh place on the shared test server.
    async fn fresh(kind: Kind) -> Store {
        let base = server_url(kind);
        let url = match kind {
            Kind::Postgres => {
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
                format!("{prefix}/{name}")
            }
            Kind::Redis => base,
        };
        Store::on(kind, url)
    }

    /// A fresh place on the server at `url` (for a database, the one it names).
    fn on(kind: Kind, url: String) -> Store {
        Store {
            kind,
            url,
            prefix: format!("tp{:08x}:", fastrand::u32(..)),
        }
    }

    /// The world's config with this store (its URL read from `TP_STORE_URL`), a
    /// 15 s lease and 3 s token requests.
    fn config(&self, w: &World, token_extra: &str) -> String {
        let store = match self.kind {
            Kind::Postgres => "kind = \"postgres\"".to_owned(),
            Kind::Redis => format!("kind = \"redis\"\nprefix = \"{}\"", self.prefix),
        };
        w.config("", &format!("timeout = \"3s\"\n{token_extra}"))
            .replace(
                &format!("[store]\npath = \"{}\"", w.state_dir().display()),
                &format!("[store]\n{store}\nurl = {{ env = \"TP_STORE_URL\" }}\nlease = \"15s\""),
            )
    }

    fn env(&self) -> [(&str, &str); 1] {
        [("TP_STORE_URL", self.url.as_str())]
    }

    fn spawn(&self, w: &World, config: &str) -> Proxy {
        w.spawn_with(config, &self.env())
    }

    /// A field of token `demo` as stored (`generation`, `access_token`, …).
    async fn field(&self, field: &str) -> Option<String> {
        match self.kind {
            Kind::Postgres => {
                let (client, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                tokio::spawn(conn);
                client
                    .query_opt(
                        &format!("SELECT {field}::text FROM tokenproxy_tokens WHERE name = 'demo'"),
                        &[],
                    )
                    .await
                    .unwrap()
                    .and_then(|r| r.get::<_, Option<String>>(0))
            }
            Kind::Redis => {
                let mut conn = self.redis().await;
                redis::cmd("HGET")
                    .arg(format!("{}token:demo", self.prefix))
                    .arg(field)
                    .query_async(&mut conn)
                    .await
                    .unwrap()
            }
        }
    }

    async fn generation(&self) -> u64 {
        self.field("generation")
            .await
            .expect("a stored generation")
            .parse()
            .unwrap()
    }

    /// Everything stored for token `demo`, as text.
    async fn raw(&self) -> String {
        match self.kind {
            Kind::Postgres => {
                let (client, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                tokio::spawn(conn);
                client
                    .query_one(
                        "SELECT row_to_json(t)::text FROM tokenproxy_tokens t WHERE name = 'demo'",
                        &[],
                    )
                    .await
                    .unwrap()
                    .get(0)
            }
            Kind::Redis => {
                let mut conn = self.redis().await;
                let all: Vec<String> = redis::cmd("HGETALL")
                    .arg(format!("{}token:demo", self.prefix))
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                all.join(" ")
            }
        }
    }

    async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    /// Opens the store as tokenproxy does, with `lease`.
    async fn open(&self, lease: Duration) -> std::sync::Arc<dyn tokenproxy::store::TokenStore> {
        use tokenproxy::secret::Secret;
        let url = Secret::new(self.url.clone());
        match self.kind {
            Kind::Postgres => {
                let roots = tokenproxy::tls::roots(None).unwrap();
                let tls = tokenproxy::tls::client_config(roots, None).unwrap();
                std::sync::Arc::new(
                    tokenproxy::store::PgStore::open(&url, tls, lease, 1)
                        .await
                        .unwrap(),
                )
            }
            Kind::Redis => std::sync::Arc::new(
                tokenproxy::store::RedisStore::open(&url, None, &self.prefix, lease)
                    .await
                    .unwrap(),
            ),
        }
    }
}

/// What nearly every scenario starts from: a fresh place on the store, a token
/// server behaving as asked, and the configuration of an instance on both.
struct Scene {
    store: Store,
    w: World,
    config: String,
}

impl Scene {
    async fn new(kind: Kind, provider: ProviderOptions, token_extra: &str) -> Scene {
        let store = Store::fresh(kind).await;
        let w = World::new(provider).await;
        let config = store.config(&w, token_extra);
        Scene { store, w, config }
    }
}

fn short_lived(secs: f64) -> ProviderOptions {
    ProviderOptions {
        lifetime: Duration::from_secs_f64(secs),
        ..ProviderOptions::default()
    }
}

/// Four instances under steady load through twenty short lifetimes: every request
/// succeeds, no refresh token is presented twice, and the token endpoint sees the
/// refreshes one instance alone would make (one per lifetime less the margin), not
/// four times as many: each token request makes exactly one stored generation.
async fn four_instances_refresh_as_one(kind: Kind) {
    let lifetime = Duration::from_secs(3);
    // Margin 1 s (and up to 0.1 s of jitter): one refresh per ~2 s, each with a
    // second to spare on a busy machine.
    let Scene { store, w, config } = Scene::new(
        kind,
        short_lived(lifetime.as_secs_f64()),
        "refresh_before = \"1s\"",
    )
    .await;
    let proxies: Vec<Proxy> = (0..4).map(|_| store.spawn(&w, &config)).collect();
    let started = Instant::now();
    let deadline = started + lifetime * 20;
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
    let generation = store.generation().await;
    // Every token request made a generation: no instance refreshed what another
    // had already refreshed.
    assert!(
        requests <= generation + 1,
        "{requests} token requests made {generation} generations"
    );
    let one_instance = (elapsed.as_secs_f64() / 1.9).ceil() as u64 + 2;
    assert!(
        requests <= one_instance,
        "{requests} token requests in {elapsed:?}; one instance alone makes at most {one_instance}"
    );
    assert!(requests >= 20, "refreshes happened: {requests}");
}

/// Another tool (`psql`, `redis-cli`) reads the current access token from the
/// documented table or key, and the API accepts it.
async fn another_tool_reads_the_current_token(kind: Kind) {
    let Scene { store, w, .. } = Scene::new(kind, ProviderOptions::default(), "").await;
    let p = store.spawn(&w, &store.config(&w, ""));
    assert_eq!(get(&p.url("/demo/x")).await.0, 200);
    let out = match kind {
        Kind::Postgres => {
            let psql = format!("{}/psql", pg_bin());
            std::process::Command::new(psql)
                .arg(&store.url)
                .args(["-tAc", "SELECT access_token FROM tokenproxy_tokens WHERE name = 'demo' AND expires_at > now()"])
                .output()
                .unwrap()
        }
        Kind::Redis => std::process::Command::new("redis-cli")
            .args(["-u", &store.url, "HGET"])
            .arg(format!("{}token:demo", store.prefix))
            .arg("access_token")
            .output()
            .unwrap(),
    };
    let access = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(
        !access.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The API accepts it: it is the current one.
    let r = client()
        .get(format!("{}direct", w.provider.api_url))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(store.generation().await, 1);
    if kind == Kind::Redis {
        let expires: u64 = store.field("expires_at_ms").await.unwrap().parse().unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!(expires > now, "expires_at_ms is in Unix milliseconds");
    }
}

/// A layout this build does not know is refused by name at start.
async fn an_unknown_layout_version_is_refused(kind: Kind) {
    let Scene { store, w, .. } = Scene::new(kind, ProviderOptions::default(), "").await;
    drop(store.spawn(&w, &store.config(&w, "")));
    match kind {
        Kind::Postgres => {
            let (client, conn) = tokio_postgres::connect(&store.url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            client
                .batch_execute("UPDATE tokenproxy_schema SET version = 99")
                .await
                .unwrap();
        }
        Kind::Redis => {
            let mut conn = store.redis().await;
            let () = redis::cmd("SET")
                .arg(format!("{}schema", store.prefix))
                .arg("99")
                .query_async(&mut conn)
                .await
                .unwrap();
        }
    }
    let path = w.dir.path().join("v99.toml");
    std::fs::write(&path, store.config(&w, "")).unwrap();
    let out = std::process::Command::new(binary())
        .args(["run", "-c"])
        .arg(&path)
        .env("TP_STORE_URL", &store.url)
        .env("DEMO_CLIENT_SECRET", "demo-secret")
        .env("DEMO_REFRESH_TOKEN", "demo-refresh-0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("99") && err.contains("knows version 1"),
        "{err}"
    );
}

/// Waits until `p` holds a generation above `above`, at most `within`; how long
/// that took.
async fn wait_generation(p: &Proxy, above: u64, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let status = token_status(p, "demo").await;
        if status["generation"].as_u64().unwrap_or(0) > above {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "still at generation {} after {within:?}: {status}\n{}",
            status["generation"],
            p.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two instances A and B on a fresh store, both serving; A holds the lock with its
/// token request sent into a provider that never answers it (the provider answers
/// others again). The task is A's caller.
async fn holder_in_a_hang(kind: Kind) -> (Store, World, Proxy, Proxy, tokio::task::JoinHandle<()>) {
    let Scene { store, w, config } = Scene::new(kind, ProviderOptions::default(), "").await;
    let a = store.spawn(&w, &config);
    let b = store.spawn(&w, &config);
    assert_eq!(get(&a.url("/demo/x")).await.0, 200);
    assert_eq!(get(&b.url("/demo/x")).await.0, 200);
    let held = refresh_into_a_hang(&w, &a).await;
    (store, w, a, b, held)
}

/// Starts a refresh on `p` that takes the lock and sends its token request into a
/// provider that never answers; returns once the provider has it.
async fn refresh_into_a_hang(w: &World, p: &Proxy) -> tokio::task::JoinHandle<()> {
    let before = w.provider.token_requests();
    w.provider.set_mode(Mode::Hang);
    let url = p.admin_url("/tokens/demo/refresh");
    let held = tokio::spawn(async move {
        let _ = client().post(url).send().await;
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while w.provider.token_requests() == before {
        assert!(Instant::now() < deadline, "no token request came");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    w.provider.set_mode(Mode::Normal);
    held
}

/// The lock holder is killed in the middle of a refresh, its request unanswered:
/// its lock ends with it (PostgreSQL: with its session, at once; Redis: when its
/// lease runs out). Its refresh is in doubt — a killed holder cannot be told from
/// a frozen one — so another instance waits out the grace (the lease) on the
/// intent, then presents the refresh token once (`in_doubt = "retry"`); the
/// provider never processed the lost request, so the chain goes on.
async fn a_killed_lock_holder_does_not_block_the_others(kind: Kind) {
    let (store, w, a, b, held) = holder_in_a_hang(kind).await;
    a.signal("KILL");
    held.abort();
    let killed = Instant::now();
    // B's caller stops waiting after the token timeout; the refresh goes on.
    let _ = force_refresh(&b, "demo").await;
    let lease = Duration::from_secs(15);
    let took = killed.elapsed() + wait_generation(&b, 1, lease * 2 + Duration::from_secs(15)).await;
    let bound = match kind {
        Kind::Postgres => lease + Duration::from_secs(8),
        Kind::Redis => lease * 2 + Duration::from_secs(8),
    };
    assert!(
        took >= lease,
        "B presented the token {took:?} after the kill, inside the grace"
    );
    assert!(took < bound, "B waited {took:?} for a dead holder");
    b.wait_log("an earlier refresh of this token stopped in the middle")
        .await;
    assert_eq!(store.generation().await, 2);
    assert_eq!(w.provider.reuse_detected(), 0);
    assert_eq!(get(&b.url("/demo/after")).await.0, 200);
}

/// The lock holder is frozen (SIGSTOP) longer than its lease while its token
/// request is unanswered. The lock holds for the whole lease; then another
/// instance takes it, finds the holder's refresh in doubt and waits the grace on
/// it, then presents the token once; the frozen one, woken, finds its lease gone
/// and its answer never came, writes nothing, and serves the new token. No
/// refresh token is spent twice.
async fn a_frozen_lock_holder_is_taken_over_and_spends_nothing(kind: Kind) {
    let (store, w, a, b, held) = holder_in_a_hang(kind).await;
    let locked = Instant::now();
    a.signal("STOP");
    let _ = force_refresh(&b, "demo").await;
    let lease = Duration::from_secs(15);
    wait_generation(&b, 1, lease * 2 + Duration::from_secs(20)).await;
    assert!(
        locked.elapsed() >= lease * 2 - Duration::from_secs(1),
        "B refreshed {:?} after A took the lock, inside A's lease and the grace",
        locked.elapsed()
    );
    b.wait_log("an earlier refresh of this token stopped in the middle")
        .await;
    a.signal("CONT");
    held.abort();
    a.wait_log("ended before this process let go of it").await;
    // A adopts B's token: at once from the store's notice, or at the latest when
    // the API refuses the old one (401, refresh under the lock, adopt, retry).
    assert_eq!(get(&a.url("/demo/after")).await.0, 200, "{}", a.log());
    wait_generation(&a, 1, Duration::from_secs(10)).await;
    assert_eq!(store.generation().await, 2, "A wrote nothing over B");
    assert_eq!(
        store.field("refresh_token").await,
        w.provider.current_refresh_token()
    );
    assert_eq!(w.provider.reuse_detected(), 0);
}

/// At the store itself: a holder whose lease lapsed (its lock expired, or its
/// session was ended) cannot overwrite what the next holder wrote, and its
/// release does not free the next holder's lock.
async fn a_holder_whose_lease_lapsed_cannot_overwrite_a_newer_state(kind: Kind) {
    use tokenproxy::secret::Secret;
    use tokenproxy::store::{StoreError, StoredToken};
    let store = Store::fresh(kind).await;
    let lease = Duration::from_secs(30);
    let (one, two) = (store.open(lease).await, store.open(lease).await);
    let record = |generation: u64, access: &str| StoredToken {
        version: tokenproxy::store::RECORD_VERSION,
        generation,
        access_token: Some(Secret::new(access.to_owned())),
        refresh_token: Some(Secret::new(format!("rt-{access}"))),
        issued_at_ms: 1,
        expires_at_ms: 2,
        extra: Default::default(),
    };
    let wait = Duration::from_secs(5);
    let mut held = one.lock("demo", wait).await.unwrap();
    held.save(&record(1, "first"), None).await.unwrap();
    drop(held);

    let mut late = one.lock("demo", wait).await.unwrap();
    assert_eq!(late.load().await.unwrap().unwrap().generation, 1);
    // Its lease ends as if it had been paused longer than the lease.
    match kind {
        Kind::Postgres => {
            let (client, conn) = tokio_postgres::connect(&store.url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            client
                .batch_execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                     WHERE datname = current_database() AND state LIKE 'idle in transaction%'",
                )
                .await
                .unwrap();
        }
        Kind::Redis => {
            let mut conn = store.redis().await;
            let () = redis::cmd("DEL")
                .arg(format!("{}lock:demo", store.prefix))
                .query_async(&mut conn)
                .await
                .unwrap();
        }
    }
    let mut next = two
        .lock("demo", wait)
        .await
        .expect("the lapsed lock is free");
    next.save(&record(2, "second"), Some(1)).await.unwrap();
    let refused = late.save(&record(2, "late"), Some(1)).await;
    match (kind, &refused) {
        (_, Err(StoreError::Fenced { stored: 2, .. })) => {}
        // PostgreSQL ended the session, and the transaction that held the lock with it.
        (Kind::Postgres, Err(StoreError::Database { .. })) => {}
        other => panic!("the late write was not refused: {other:?}"),
    }
    let stored = two.load("demo").await.unwrap().unwrap();
    assert_eq!(stored.generation, 2);
    assert_eq!(
        stored.access_token.as_ref().map(Secret::expose),
        Some("second")
    );
    drop(next);
    // The late holder lets go: the lock it lost is not its to free.
    let mut third = one.lock("demo", wait).await.unwrap();
    drop(late);
    let blocked = two.lock("demo", Duration::from_secs(1)).await;
    assert!(
        matches!(blocked, Err(StoreError::LockTimeout { .. })),
        "a lapsed holder's release freed another holder's lock"
    );
    // A write over a generation that is no longer the stored one is refused.
    let fenced = third.save(&record(3, "stale"), Some(1)).await;
    assert!(
        matches!(fenced, Err(StoreError::Fenced { stored: 2, .. })),
        "{fenced:?}"
    );
}

/// A PostgreSQL server of one test's own (it is restarted), made with the binaries
/// `.ci/services.sh` found. Stopped when dropped.
struct OwnPg {
    bin: String,
    dir: tempfile::TempDir,
    url: String,
    /// The server's options (port, socket directory, address).
    opts: String,
}

impl OwnPg {
    /// Blocking (it waits for the server): call it from `spawn_blocking`.
    #[allow(clippy::disallowed_methods)]
    fn start() -> OwnPg {
        let bin = pg_bin();
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .map(|l| l.local_addr().unwrap().port())
            .unwrap();
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1",
            dir.path().display()
        );
        let server = OwnPg {
            bin,
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            dir,
            opts,
        };
        // PostgreSQL refuses to run as root: the Debian package's user runs it.
        assert!(
            !support::harness::is_root()
                || std::process::Command::new("chown")
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
        server
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// Runs a PostgreSQL program (as the unprivileged `postgres` user when this
    /// is root). Its output goes nowhere: a server it starts keeps what it inherits
    /// open.
    fn pg(&self, args: &[&str]) {
        let program = format!("{}/{}", self.bin, args[0]);
        let mut cmd = if support::harness::is_root() {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--", &program]);
            c
        } else {
            std::process::Command::new(&program)
        };
        let status = cmd
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

impl Drop for OwnPg {
    fn drop(&mut self) {
        let pg_ctl = format!("{}/pg_ctl", self.bin);
        let mut cmd = if support::harness::is_root() {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--", &pg_ctl]);
            c
        } else {
            std::process::Command::new(&pg_ctl)
        };
        let _ = cmd
            .args(["-D", &self.data(), "-m", "immediate", "stop"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// A Redis server of one test's own, with its append-only log synced at every
/// write. `restart` kills it (SIGKILL) and starts it again on the same files.
struct OwnRedis {
    dir: tempfile::TempDir,
    port: u16,
    child: std::sync::Mutex<Option<std::process::Child>>,
}

impl OwnRedis {
    /// Blocking (it waits for the server): call it from `spawn_blocking`.
    #[allow(clippy::disallowed_methods)]
    fn start() -> OwnRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .map(|l| l.local_addr().unwrap().port())
            .unwrap();
        let server = OwnRedis {
            dir: tempfile::tempdir().unwrap(),
            port,
            child: std::sync::Mutex::new(None),
        };
        server.start_again();
        server
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    #[allow(clippy::disallowed_methods)]
    fn start_again(&self) {
        let child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .arg("--dir")
            .arg(self.dir.path())
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (.ci/services.sh installs it)");
        *self.child.lock().unwrap() = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let pong = std::process::Command::new("redis-cli")
                .args(["-p", &self.port.to_string(), "ping"])
                .output()
                .is_ok_and(|o| o.stdout.starts_with(b"PONG"));
            if pong {
                return;
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn restart(&self) {
        self.stop();
        self.start_again();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A server of `kind` of the test's own.
enum OwnServer {
    Pg(OwnPg),
    Redis(OwnRedis),
}

impl OwnServer {
    async fn start(kind: Kind) -> OwnServer {
        tokio::task::spawn_blocking(move || match kind {
            Kind::Postgres => OwnServer::Pg(OwnPg::start()),
            Kind::Redis => OwnServer::Redis(OwnRedis::start()),
        })
        .await
        .unwrap()
    }

    fn store(&self) -> Store {
        match self {
            OwnServer::Pg(s) => Store::on(Kind::Postgres, s.url.clone()),
            OwnServer::Redis(s) => Store::on(Kind::Redis, s.url()),
        }
    }

    fn stop(&self) {
        tokio::task::block_in_place(|| match self {
            OwnServer::Pg(s) => s.stop(),
            OwnServer::Redis(s) => s.stop(),
        })
    }

    fn start_again(&self) {
        tokio::task::block_in_place(|| match self {
            OwnServer::Pg(s) => s.start_again(),
            OwnServer::Redis(s) => s.start_again(),
        })
    }

    fn restart(&self) {
        tokio::task::block_in_place(|| match self {
            OwnServer::Pg(s) => s.restart(),
            OwnServer::Redis(s) => s.restart(),
        })
    }
}

/// The store restarts in the middle of a run (PostgreSQL: a fast restart; Redis:
/// killed and started again on its files): requests keep succeeding on the token
/// held in memory, the next refresh reconnects, and nothing is lost.
async fn a_store_restart_loses_nothing(kind: Kind) {
    let server = OwnServer::start(kind).await;
    let store = server.store();
    let w = World::new(short_lived(6.0)).await;
    let p = store.spawn(&w, &store.config(&w, "refresh_before = \"3s\""));
    assert_eq!(get(&p.url("/demo/x")).await.0, 200);
    let c = client();
    let mut failures = Vec::new();
    let started = Instant::now();
    let mut restarted = false;
    // Three lifetimes, the store restarted early in the first.
    while started.elapsed() < Duration::from_secs(18) {
        if !restarted && started.elapsed() > Duration::from_millis(500) {
            server.restart();
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
    assert_eq!(
        store.field("refresh_token").await,
        w.provider.current_refresh_token(),
        "the newest refresh token is stored"
    );
}

/// While the store is down, the token in memory keeps serving; `/status` and
/// `/metrics` say the store is unreachable, and say so no more once it is back.
async fn an_unreachable_store_is_reported_and_tokens_keep_serving(kind: Kind) {
    let server = OwnServer::start(kind).await;
    let store = server.store();
    let w = World::new(short_lived(60.0)).await;
    let p = store.spawn(&w, &store.config(&w, ""));
    assert_eq!(get(&p.url("/demo/x")).await.0, 200);
    server.stop();
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
    server.start_again();
    let deadline = Instant::now() + Duration::from_secs(30);
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
async fn other_instances_pick_a_new_token_up_at_once(kind: Kind) {
    let Scene { store, w, config } = Scene::new(kind, short_lived(600.0), "").await;
    let a = store.spawn(&w, &config);
    let b = store.spawn(&w, &config);
    assert_eq!(get(&a.url("/demo/x")).await.0, 200);
    assert_eq!(get(&b.url("/demo/x")).await.0, 200);
    let before = w.provider.token_requests();
    let generation = token_status(&a, "demo").await["generation"]
        .as_u64()
        .unwrap();
    assert_eq!(force_refresh(&a, "demo").await.status(), 200);
    let took = wait_generation(&b, generation, Duration::from_secs(10)).await;
    eprintln!("picked up {took:?} after the refresh");
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

/// Encrypted at rest: what the server holds contains no token, and the instance
/// works as ever.
async fn the_store_holds_no_token_in_clear_with_an_encryption_key(kind: Kind) {
    let Scene { store, w, .. } = Scene::new(kind, ProviderOptions::default(), "").await;
    let config = store.config(&w, "").replace(
        "lease = \"15s\"",
        "lease = \"15s\"\nencryption_key = { env = \"TP_KEY\" }",
    );
    let key = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    let p = w.spawn_with(
        &config,
        &[("TP_STORE_URL", store.url.as_str()), ("TP_KEY", key)],
    );
    assert_eq!(get(&p.url("/demo/x")).await.0, 200);
    assert_eq!(force_refresh(&p, "demo").await.status(), 200);
    assert_eq!(get(&p.url("/demo/y")).await.0, 200);
    let access = store.field("access_token").await.unwrap();
    assert!(access.starts_with("enc:v1:"), "{access}");
    let raw = store.raw().await;
    for token in w.provider.all_tokens() {
        assert!(!raw.contains(&token), "the store holds {token} in clear");
    }
}

/// `tokenproxy check -c path` with the store at `url`.
fn check_store(path: &std::path::Path, url: &str) -> std::process::Output {
    std::process::Command::new(binary())
        .args(["check", "-c"])
        .arg(path)
        .env("TP_STORE_URL", url)
        .env("DEMO_CLIENT_SECRET", "s")
        .output()
        .unwrap()
}

/// `check` connects to the store: reachable with its layout, or an error and exit 1.
async fn check_reports_the_store(kind: Kind) {
    let Scene { store, w, .. } = Scene::new(kind, ProviderOptions::default(), "").await;
    let path = w.dir.path().join("check.toml");
    std::fs::write(&path, store.config(&w, "")).unwrap();
    let check = |url: &str| check_store(&path, url);
    let (empty, made, nobody) = match kind {
        Kind::Postgres => (
            "store check: reachable; no tokenproxy tables yet",
            "schema version 1",
            "postgres://postgres@127.0.0.1:1/none",
        ),
        Kind::Redis => (
            "store check: reachable; no keys under",
            "layout version 1",
            "redis://127.0.0.1:1",
        ),
    };
    let out = check(&store.url);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(empty), "{text}");
    drop(store.spawn(&w, &store.config(&w, "")));
    let out = check(&store.url);
    assert!(String::from_utf8_lossy(&out.stdout).contains(made));
    let out = check(nobody);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("database (connect)"), "{err}");
}

/// A Redis server that would lose an answered write at a crash or restart is
/// named by `check` and at start, with the setting that fixes it.
async fn a_redis_server_that_can_lose_writes_is_warned_about() {
    let server = OwnServer::start(Kind::Redis).await;
    let store = server.store();
    let w = World::default().await;
    let path = w.dir.path().join("check.toml");
    std::fs::write(&path, store.config(&w, "")).unwrap();
    let check = || {
        let out = check_store(&path, &store.url);
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = check();
    assert!(
        !out.contains("appendfsync") && !out.contains("in memory only"),
        "{out}"
    );
    let mut conn = store.redis().await;
    let mut set = async |name: &str, value: &str| {
        let () = redis::cmd("CONFIG")
            .arg("SET")
            .arg(name)
            .arg(value)
            .query_async(&mut conn)
            .await
            .unwrap();
    };
    set("appendfsync", "everysec").await;
    let out = check();
    assert!(
        out.contains("warning:") && out.contains("Set appendfsync always"),
        "{out}"
    );
    set("appendonly", "no").await;
    let out = check();
    assert!(
        out.contains("in memory only") && out.contains("appendonly yes"),
        "{out}"
    );
    let p = store.spawn(&w, &store.config(&w, ""));
    p.wait_log("in memory only").await;
}

/// `tokenproxy seed` writes to the configured shared store, and a running instance
/// whose refresh token was refused resumes with the seeded one, no restart.
async fn seed_writes_to_the_shared_store(kind: Kind) {
    let Scene { store, w, .. } = Scene::new(kind, ProviderOptions::default(), "").await;
    w.provider.set_mode(Mode::InvalidGrant);
    let config = store.config(&w, "");
    let p = store.spawn(&w, &config);
    p.wait_token("demo", "needs_login", Duration::from_secs(10))
        .await;
    w.provider.set_mode(Mode::Normal);
    w.provider.reset_refresh_token("seeded-refresh-token-1");
    let path = w.dir.path().join("seed.toml");
    std::fs::write(&path, &config).unwrap();
    // One worker thread, as the sidecar runs: the lock's release must not be
    // left to a task the exiting runtime never runs.
    let mut env = store.env().to_vec();
    env.push(("TOKIO_WORKER_THREADS", "1"));
    let out = run_with_stdin(
        &["seed", "demo", "-c", path.to_str().unwrap()],
        &env,
        "seeded-refresh-token-1\n",
    );
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        store.field("refresh_token").await,
        w.provider.current_refresh_token(),
        "the seeded (and verified, so rotated) refresh token is in the store"
    );
    if kind == Kind::Redis {
        let mut conn = store.redis().await;
        let held: bool = redis::cmd("EXISTS")
            .arg(format!("{}lock:demo", store.prefix))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(!held, "seed left the lock held for a whole lease");
    }
    p.wait_ready(200, Duration::from_secs(10)).await;
    assert_eq!(get(&p.url("/demo/after-seed")).await.0, 200);
    assert_eq!(w.provider.reuse_detected(), 0);
}

/// `rediss://`: the store is reached over TLS, verified against `[tls] ca_file`;
/// a server whose certificate that CA did not sign is refused.
async fn redis_over_tls_is_verified_against_the_configured_ca() {
    let server = OwnServer::start(Kind::Redis).await;
    let OwnServer::Redis(redis) = &server else {
        unreachable!()
    };
    let pki = support::pki::Pki::new();
    let (cert, key) = pki.server_pem("localhost");
    let dir = redis.dir.path();
    std::fs::write(dir.join("server.pem"), cert).unwrap();
    std::fs::write(dir.join("server.key"), key).unwrap();
    std::fs::write(dir.join("ca.pem"), &pki.ca_pem).unwrap();
    let port = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    };
    let mut conn = server.store().redis().await;
    for (name, value) in [
        ("tls-cert-file", "server.pem"),
        ("tls-key-file", "server.key"),
        ("tls-ca-cert-file", "ca.pem"),
        ("tls-auth-clients", "no"),
        ("tls-port", &port.to_string()),
    ] {
        let value = match name {
            "tls-port" | "tls-auth-clients" => value.to_owned(),
            _ => dir.join(value).display().to_string(),
        };
        let () = redis::cmd("CONFIG")
            .arg("SET")
            .arg(name)
            .arg(value)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let store = Store::on(Kind::Redis, format!("rediss://localhost:{port}"));
    let w = World::default().await;
    let ca = w.dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let config = store.config(&w, "").replacen(
        "[store]",
        &format!("[tls]\nca_file = \"{}\"\n[store]", ca.display()),
        1,
    );
    let p = store.spawn(&w, &config);
    assert_eq!(get(&p.url("/demo/x")).await.0, 200, "{}", p.log());
    let stored: Option<String> = redis::cmd("HGET")
        .arg(format!("{}token:demo", store.prefix))
        .arg("refresh_token")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(stored, w.provider.current_refresh_token());
    drop(p);
    // Another CA: the handshake fails, and `check` says the store is unusable.
    let other = w.dir.path().join("other.pem");
    std::fs::write(&other, support::pki::Pki::new().ca_pem).unwrap();
    let path = w.dir.path().join("other.toml");
    std::fs::write(
        &path,
        config.replace(&ca.display().to_string(), &other.display().to_string()),
    )
    .unwrap();
    let out = check_store(&path, &store.url);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("database (connect)"), "{err}");
}

/// The migration from a "token table" pipeline in docs/guides.md, step by step: the
/// old table's refresh token is piped from `psql` into `seed`, tokenproxy runs on
/// the same database, and a view with the old table's name serves the jobs that
/// read it a current access token.
async fn a_token_table_pipeline_migrates_as_the_guide_says() {
    let store = Store::fresh(Kind::Postgres).await;
    let psql = format!("{}/psql", pg_bin());
    let sql = |statement: &str| {
        let out = std::process::Command::new(&psql)
            .arg(&store.url)
            .args(["-v", "ON_ERROR_STOP=1", "-Atc", statement])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{statement}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    // The old pipeline's table, holding the chain's current refresh token.
    let w = World::default().await;
    sql(
        "CREATE TABLE etl_tokens (provider text PRIMARY KEY, access_token text, refresh_token text, expires_at timestamptz)",
    );
    sql(&format!(
        "INSERT INTO etl_tokens VALUES ('exact', NULL, '{}', now())",
        w.provider.current_refresh_token().unwrap()
    ));
    let config = store.config(&w, "");
    let path = w.dir.path().join("migrate.toml");
    std::fs::write(&path, &config).unwrap();
    // Step 3: psql ... | tokenproxy seed demo
    let refresh = sql("SELECT refresh_token FROM etl_tokens WHERE provider = 'exact'");
    let out = run_with_stdin(
        &["seed", "demo", "-c", path.to_str().unwrap()],
        &store.env(),
        &format!("{refresh}\n"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Step 4: tokenproxy runs on the same database.
    let p = store.spawn(&w, &config);
    assert_eq!(get(&p.url("/demo/x")).await.0, 200);
    // Step 5: the view with the old name.
    sql("ALTER TABLE etl_tokens RENAME TO etl_tokens_retired");
    sql(
        "CREATE VIEW etl_tokens AS SELECT name AS provider, access_token, expires_at, updated_at FROM tokenproxy_tokens",
    );
    let access =
        sql("SELECT access_token FROM etl_tokens WHERE provider = 'demo' AND expires_at > now()");
    let r = client()
        .get(format!("{}direct", w.provider.api_url))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the view serves a current access token");
    assert_eq!(w.provider.reuse_detected(), 0);
}

/// A Redis hash with a wrong field is a corrupt record named by its field, never
/// by its value; the token is not ready and nothing is refreshed over it.
async fn a_corrupt_redis_record_names_the_field_not_its_value() {
    let store = Store::fresh(Kind::Redis).await;
    let mut conn = store.redis().await;
    let () = redis::cmd("HSET")
        .arg(format!("{}token:demo", store.prefix))
        .arg("generation")
        .arg("rt-LEAKED-1234")
        .arg("issued_at_ms")
        .arg("1")
        .arg("expires_at_ms")
        .arg("2")
        .query_async(&mut conn)
        .await
        .unwrap();
    let w = World::default().await;
    let p = store.spawn(&w, &store.config(&w, ""));
    p.wait_token("demo", "needs_login", Duration::from_secs(10))
        .await;
    assert_eq!(get(&p.admin_url("/readyz")).await.0, 503);
    let status = get(&p.admin_url("/status")).await.1;
    assert!(status.contains("field `generation`"), "{status}");
    assert!(!status.contains("LEAKED"), "{status}");
    assert_eq!(w.provider.token_requests(), 0, "nothing refreshed over it");
}

/// Four instances; the holder is frozen (SIGSTOP) after the provider rotated, for
/// longer than the token request's timeout (3 s) and shorter than the lease (15 s): the answer
/// sits in its socket. Woken, it reads the answer (the timeout bounds callers, not
/// the holder), stores it, and no instance presents the spent refresh token: the
/// store ends with the provider's current one and the grant is never revoked.
async fn a_holder_frozen_past_the_timeout_keeps_the_late_answer(kind: Kind) {
    let Scene { store, w, config } = Scene::new(kind, ProviderOptions::default(), "").await;
    let (a, b, all) = four(&store, &w, &config).await;
    let before = w.provider.token_requests();
    w.provider.set_mode(Mode::SlowOk(1000));
    let url = a.admin_url("/tokens/demo/refresh");
    let caller = tokio::spawn(async move { client().post(url).send().await.map(|r| r.status()) });
    let deadline = Instant::now() + Duration::from_secs(10);
    while w.provider.token_requests_in_flight() == 0 {
        assert!(Instant::now() < deadline, "no token request came");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    a.signal("STOP");
    let frozen = Instant::now();
    // The provider rotates and answers into the frozen holder's socket.
    while w.provider.token_requests_in_flight() > 0 {
        assert!(Instant::now() < deadline, "the provider did not answer");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    w.provider.set_mode(Mode::Normal);
    assert_eq!(w.provider.token_requests(), before + 1);
    // Meanwhile another instance is asked to refresh: it waits for the lock.
    let b_url = b.admin_url("/tokens/demo/refresh");
    let other = tokio::spawn(async move { client().post(b_url).send().await.map(|r| r.status()) });
    // The fault itself: a freeze of 5 s against a 3 s timeout.
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(frozen.elapsed())).await;
    a.signal("CONT");
    let _ = caller.await;
    let _ = other.await;
    a.wait_log("answered after the request's timeout").await;
    wait_generation(&b, 1, Duration::from_secs(30)).await;
    wait_generation(&a, 1, Duration::from_secs(30)).await;
    assert_eq!(w.provider.reuse_detected(), 0, "{}\n{}", a.log(), b.log());
    assert_eq!(
        store.field("refresh_token").await,
        w.provider.current_refresh_token(),
        "the store holds the provider's current refresh token"
    );
    for p in [&a, &b].into_iter().chain(&all) {
        wait_generation(p, 1, Duration::from_secs(30)).await;
        assert_eq!(get(&p.url("/demo/after")).await.0, 200);
    }
    let metrics = client()
        .get(a.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            "tokenproxy_refresh_in_doubt_total{resolution=\"late_answer\",token=\"demo\"} 1"
        ),
        "{metrics}"
    );
}

/// The provider refuses the refresh token once (`invalid_grant`): the refusal is
/// recorded in the store, and of four instances asked to refresh, none presents
/// the refused token again; all say a login is needed.
async fn a_refusal_is_presented_once_in_total(kind: Kind) {
    let Scene { store, w, config } = Scene::new(kind, ProviderOptions::default(), "").await;
    let proxies: Vec<Proxy> = (0..4).map(|_| store.spawn(&w, &config)).collect();
    for p in &proxies {
        assert_eq!(get(&p.url("/demo/x")).await.0, 200);
    }
    let before = w.provider.token_requests();
    w.provider.set_mode(Mode::InvalidGrant);
    let asked = proxies.iter().map(|p| force_refresh(p, "demo"));
    futures_util::future::join_all(asked).await;
    for p in &proxies {
        p.wait_token("demo", "needs_login", Duration::from_secs(20))
            .await;
    }
    assert_eq!(
        w.provider.token_requests(),
        before + 1,
        "the refused refresh token was presented more than once"
    );
}

/// Four instances of `config`, each serving: the one a fault hits, the one asked
/// to refresh meanwhile, and two bystanders.
async fn four(store: &Store, w: &World, config: &str) -> (Proxy, Proxy, Vec<Proxy>) {
    let mut all: Vec<Proxy> = (0..4).map(|_| store.spawn(w, config)).collect();
    for p in &all {
        assert_eq!(get(&p.url("/demo/x")).await.0, 200);
    }
    let (a, b) = (all.remove(0), all.remove(0));
    (a, b, all)
}

/// Waits until `ready` says yes, at most `within`.
async fn until(what: &str, within: Duration, mut ready: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ready().await {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Four instances; a holder frozen (SIGSTOP) before its token request, for the lease
/// and 5 s more,
/// at the step where a real pause hurt (PostgreSQL: writing its intent record, the
/// write held up by a table lock so that it lands during the freeze; Redis: taking
/// the lock, the command held up by `CLIENT PAUSE … WRITE`). Another instance
/// refreshes meanwhile. Woken, the holder finds its lease gone before sending and
/// abandons: the provider sees one token request, and nothing is reused.
async fn a_holder_frozen_before_its_request_spends_nothing(kind: Kind) {
    // Hour-long tokens: no instance refreshes (writes to the store) by itself
    // while the test holds the store's writes up, so the one held up is A.
    let Scene { store, w, config } = Scene::new(kind, short_lived(3600.0), "").await;
    let (a, b, all) = four(&store, &w, &config).await;
    let before = w.provider.token_requests();
    let url = a.admin_url("/tokens/demo/refresh");
    let (pg, redis) = match kind {
        Kind::Postgres => {
            let (client, conn) = tokio_postgres::connect(&store.url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            client
                .batch_execute("BEGIN; LOCK TABLE tokenproxy_intents IN EXCLUSIVE MODE")
                .await
                .unwrap();
            (Some(client), None)
        }
        Kind::Redis => {
            let mut conn = store.redis().await;
            let () = redis::cmd("CLIENT")
                .arg("PAUSE")
                .arg(60_000)
                .arg("WRITE")
                .query_async(&mut conn)
                .await
                .unwrap();
            (None, Some(conn))
        }
    };
    let caller = tokio::spawn(async move { client().post(url).send().await.map(|r| r.status()) });
    // A's command is held up at the store.
    match kind {
        Kind::Postgres => {
            let (watch, conn) = tokio_postgres::connect(&store.url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            until(
                "A's intent write waiting on the table lock",
                Duration::from_secs(10),
                async || {
                    watch
                        .query_one(
                            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'
                         AND query LIKE '%tokenproxy_intents%' AND datname = current_database()",
                            &[],
                        )
                        .await
                        .unwrap()
                        .get::<_, i64>(0)
                        > 0
                },
            )
            .await;
        }
        Kind::Redis => {
            let mut conn = store.redis().await;
            until(
                "A's lock command paused",
                Duration::from_secs(10),
                async || {
                    let info: String = redis::cmd("INFO")
                        .arg("clients")
                        .query_async(&mut conn)
                        .await
                        .unwrap();
                    info.lines()
                        .any(|l| l.starts_with("paused_clients:") && !l.ends_with(":0"))
                        || info
                            .lines()
                            .any(|l| l.starts_with("blocked_clients:") && !l.ends_with(":0"))
                },
            )
            .await;
        }
    }
    a.signal("STOP");
    let frozen = Instant::now();
    // The held-up command lands while A is frozen.
    if let Some(client) = pg {
        client.batch_execute("COMMIT").await.unwrap();
    }
    if let Some(mut conn) = redis {
        let () = redis::cmd("CLIENT")
            .arg("UNPAUSE")
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let _ = force_refresh(&b, "demo").await;
    let lease = Duration::from_secs(15);
    // The fault: a freeze of the lease and 5 s more.
    tokio::time::sleep((lease + Duration::from_secs(5)).saturating_sub(frozen.elapsed())).await;
    a.signal("CONT");
    let _ = caller.await;
    wait_generation(&b, 1, lease * 2 + Duration::from_secs(10)).await;
    wait_generation(&a, 1, Duration::from_secs(30)).await;
    assert_eq!(w.provider.reuse_detected(), 0, "{}\n{}", a.log(), b.log());
    assert_eq!(
        w.provider.token_requests(),
        before + 1,
        "{}\n{}",
        a.log(),
        b.log()
    );
    assert_eq!(
        store.field("refresh_token").await,
        w.provider.current_refresh_token()
    );
    for p in [&a, &b].into_iter().chain(&all) {
        wait_generation(p, 1, Duration::from_secs(30)).await;
        assert_eq!(get(&p.url("/demo/after")).await.0, 200);
    }
}

/// Four instances; the store goes down while a token request is out (PostgreSQL stopped fast,
/// Redis killed), and comes back. The holder keeps the rotated tokens in memory;
/// another instance asked to refresh as the store returns finds the holder's
/// intent and does not present the spent refresh token; the holder writes its
/// result, reads it back, and both serve it.
async fn a_store_restart_during_a_refresh_keeps_the_rotated_token(kind: Kind) {
    let server = OwnServer::start(kind).await;
    let store = server.store();
    let w = World::default().await;
    let config = store.config(&w, "");
    let (a, b, all) = four(&store, &w, &config).await;
    let before = w.provider.token_requests();
    w.provider.set_mode(Mode::SlowOk(1500));
    let url = a.admin_url("/tokens/demo/refresh");
    let caller = tokio::spawn(async move { client().post(url).send().await.map(|r| r.status()) });
    until("A's token request", Duration::from_secs(10), async || {
        w.provider.token_requests_in_flight() > 0
    })
    .await;
    server.stop();
    until(
        "the provider's answer",
        Duration::from_secs(10),
        async || w.provider.token_requests_in_flight() == 0,
    )
    .await;
    w.provider.set_mode(Mode::Normal);
    a.wait_log("it is kept in memory and written as soon as the store answers")
        .await;
    // The line is written as the write fails; the state follows a moment later.
    until(
        "the unsaved token in /status",
        Duration::from_secs(10),
        async || token_status(&a, "demo").await["unsaved"] == true,
    )
    .await;
    let status = token_status(&a, "demo").await;
    assert_eq!(status["in_doubt"]["by"], "this instance", "{status}");
    assert_eq!(status["unsaved"], true, "{status}");
    server.start_again();
    // As the store returns, B is asked for a new token: A's intent holds it off.
    let _ = force_refresh(&b, "demo").await;
    a.wait_log("stored the token that could not be written before")
        .await;
    let _ = caller.await;
    wait_generation(&b, 1, Duration::from_secs(30)).await;
    assert_eq!(w.provider.reuse_detected(), 0, "{}\n{}", a.log(), b.log());
    assert_eq!(
        store.field("refresh_token").await,
        w.provider.current_refresh_token()
    );
    assert!(w.provider.token_requests() > before);
    for p in [&a, &b].into_iter().chain(&all) {
        wait_generation(p, 1, Duration::from_secs(30)).await;
        assert_eq!(get(&p.url("/demo/after")).await.0, 200);
    }
    let metrics = get(&a.admin_url("/metrics")).await.1;
    assert!(
        metrics.contains(r#"tokenproxy_refresh_in_doubt_total{resolution="written_after_restart",token="demo"} 1"#),
        "{metrics}"
    );
}

/// The token service (`deploy/kubernetes/overlays/service`): three instances on
/// PostgreSQL behind one address, TLS and a caller key, a client whose every
/// request lands on the next instance, through several short lifetimes. Every
/// proxied request succeeds, every vended token is the one in the store and is
/// accepted upstream, and the refreshes are one instance's, none spent twice.
async fn three_instances_behind_one_address_serve_one_token_over_tls() {
    let Scene { store, w, config } = Scene::new(
        Kind::Postgres,
        short_lived(3.0),
        "refresh_before = \"1s\"\nvend = true",
    )
    .await;
    let pki = support::pki::Pki::new();
    let tls = support::pki::listen_tls(&pki, w.dir.path());
    let key = "service-caller-key-0123456789";
    let config = format!(
        "{}\n[[callers]]\nname = \"adf\"\nkey = {{ env = \"TP_CALLER_KEY\" }}\ntokens = [\"demo\"]\n",
        config.replacen(
            "admin = \"127.0.0.1:0\"",
            &format!("admin = \"127.0.0.1:0\"\n{tls}"),
            1
        )
    );
    let env = [("TP_STORE_URL", store.url.as_str()), ("TP_CALLER_KEY", key)];
    let proxies: Vec<Proxy> = (0..3).map(|_| w.spawn_with(&config, &env)).collect();
    let front = round_robin(proxies.iter().map(|p| p.addr).collect()).await;
    // A new connection per request: each lands on the next instance.
    let c = support::pki::https_client(&pki.ca_pem, b"http/1.1")
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let url = |path: &str| format!("https://localhost:{}{path}", front.port());
    let started = Instant::now();
    let (mut sent, mut failures) = (0, Vec::new());
    while started.elapsed() < Duration::from_secs(10) {
        let r = c
            .get(url("/demo/service"))
            .header("Proxy-Authorization", format!("Bearer {key}"))
            .send()
            .await;
        match r.map(|r| r.status().as_u16()) {
            Ok(200) => {}
            other => failures.push(format!("{other:?} after {:?}", started.elapsed())),
        }
        let vended = c
            .get(url("/tokenproxy/v1/tokens/demo"))
            .header("Proxy-Authorization", format!("Bearer {key}"))
            .send()
            .await
            .unwrap();
        assert_eq!(vended.status(), 200);
        let body = json(&vended.text().await.unwrap());
        let token = body["access_token"].as_str().unwrap();
        assert!(
            w.provider.all_tokens().iter().any(|t| t == token),
            "a vended token the provider never issued"
        );
        sent += 2;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(failures.is_empty(), "client-visible errors: {failures:?}");
    assert!(sent > 40, "only {sent} requests");
    assert_eq!(
        w.provider.reuse_detected(),
        0,
        "a refresh token was spent twice"
    );
    let requests = w.provider.token_requests();
    let generation = store.generation().await;
    assert!(
        requests <= generation + 1,
        "{requests} token requests made {generation} generations"
    );
    assert!(requests >= 4, "refreshes happened: {requests}");
    // Each instance served some of them.
    for p in &proxies {
        let (_, metrics) = get(&p.admin_url("/metrics")).await;
        assert!(
            metrics.contains(
                "tokenproxy_requests_total{caller=\"adf\",route=\"demo\",status_class=\"2xx\"}"
            ),
            "an instance served nothing:\n{metrics}"
        );
    }
}
