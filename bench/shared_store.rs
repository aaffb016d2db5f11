//! Several instances on one shared store (PostgreSQL, then Redis): token requests per refresh period
//! and client-visible errors for 1, 4 and 16 instances under steady load, and the
//! time from a refresh on one instance to its pick-up by all the others.
//!
//!     cargo build --release
//!     . .ci/services.sh && cargo bench --bench shared_store
//!
//! The token server is the in-process demo provider (rotating refresh tokens with
//! reuse detection, 4-second access tokens); each instance is a real
//! `target/release/tokenproxy` process on loopback. Prints a Markdown table, then a
//! second one under faults: four instances through 90 s of 6-second tokens while
//! instances are frozen (SIGSTOP for 2 to 25 s, longer than the lease included) or
//! the store is restarted, with the provider's reuse detection as the oracle.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::Instance;
use tokenproxy::demo::{Provider, ProviderOptions};

const LIFETIME: Duration = Duration::from_secs(4);
/// `refresh_before`: one refresh every ~3 s (4 s less a 1 s margin and its jitter).
const MARGIN: &str = "1s";
const RUN: Duration = Duration::from_secs(40);
const PICKUPS: usize = 20;

/// How long the fault runs last, and their tokens' lifetime.
const FAULT_RUN: Duration = Duration::from_secs(90);
const FAULT_LIFETIME: Duration = Duration::from_secs(6);

fn spawn(config: &std::path::Path, store_url: &str) -> Instance {
    let mut cmd = Command::new("target/release/tokenproxy");
    cmd.args(["run", "-c"])
        .arg(config)
        .env("TP_STORE_URL", store_url)
        .env("RUST_LOG", "warn,tokenproxy=info");
    Instance::start(cmd)
}

/// The `[store]` lines and the URL of a fresh place on the server at `base`: a new
/// database (PostgreSQL) or a new key prefix (Redis).
async fn fresh_store(base: &str) -> (String, String) {
    if base.starts_with("redis") {
        let prefix = format!("bench{:08x}:", fastrand::u32(..));
        return (
            format!("kind = \"redis\"\nprefix = \"{prefix}\""),
            base.to_owned(),
        );
    }
    ("kind = \"postgres\"".to_owned(), database(base).await)
}

async fn database(base: &str) -> String {
    let (client, conn) = tokio_postgres::connect(base, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    let name = format!("bench_{:016x}", fastrand::u64(..));
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create database");
    format!("{}/{name}", base.rsplit_once('/').expect("url").0)
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted
        .get(((sorted.len() as f64 - 1.0) * q).round() as usize)
        .copied()
        .unwrap_or_default()
}

async fn generation(c: &reqwest::Client, admin: &str) -> u64 {
    let text = c
        .get(format!("{admin}/status"))
        .send()
        .await
        .expect("status")
        .text()
        .await
        .expect("body");
    serde_json::from_str::<serde_json::Value>(&text).expect("json")["tokens"]["demo"]["generation"]
        .as_u64()
        .unwrap_or(0)
}

/// Writes the instances' configuration for `provider` and the store `kind`.
fn write_config(config: &std::path::Path, provider: &Provider, kind: &str, margin: &str) {
    std::fs::write(
        config,
        format!(
            r#"
[listen]
proxy = "127.0.0.1:0"
admin = "127.0.0.1:0"
[store]
{kind}
url = {{ env = "TP_STORE_URL" }}
lease = "15s"
[tokens.demo]
grant = "refresh_token"
token_url = "{}"
client_id = "demo-client"
client_secret = "demo-secret"
refresh_token = "demo-refresh-0"
refresh_before = "{margin}"
timeout = "3s"
[[routes]]
prefix = "/demo/"
upstream = "{}"
token = "demo"
"#,
            provider.token_url, provider.api_url
        ),
    )
    .expect("config");
}

/// One row: `n` instances under load for `RUN`, then the pick-up measurement.
async fn measure(n: usize, base: &str) -> String {
    let provider = Provider::start(ProviderOptions {
        lifetime: LIFETIME,
        ..ProviderOptions::default()
    })
    .await
    .expect("provider");
    let (kind, url) = fresh_store(base).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("bench.toml");
    write_config(&config, &provider, &kind, MARGIN);
    let instances: Vec<Instance> = (0..n).map(|_| spawn(&config, &url)).collect();
    let c = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");

    // Steady load: every instance, round after round.
    let started = Instant::now();
    let (mut sent, mut errors) = (0u64, 0u64);
    while started.elapsed() < RUN {
        for i in &instances {
            sent += 1;
            let ok = c
                .get(format!("{}/demo/steady", i.proxy))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            errors += u64::from(!ok);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = started.elapsed();
    let requests = provider.token_requests();
    let periods = elapsed.as_secs_f64() / 3.0;

    // Pick-up: a forced refresh on the first instance, until all others hold it.
    let mut pickups = Vec::new();
    if n > 1 {
        for _ in 0..PICKUPS {
            let before = generation(&c, &instances[0].admin).await;
            let _ = c
                .post(format!("{}/tokens/demo/refresh", instances[0].admin))
                .send()
                .await;
            let at = Instant::now();
            'wait: loop {
                for i in &instances[1..] {
                    if generation(&c, &i.admin).await <= before {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        continue 'wait;
                    }
                }
                break;
            }
            pickups.push(at.elapsed());
        }
        pickups.sort();
    }
    let pick = if pickups.is_empty() {
        "—".to_owned()
    } else {
        format!(
            "{:.0} ms / {:.0} ms",
            percentile(&pickups, 0.5).as_secs_f64() * 1e3,
            percentile(&pickups, 0.99).as_secs_f64() * 1e3
        )
    };
    format!(
        "| {} | {n} | {sent} | {errors} | {requests} | {:.2} | {} | {pick} |",
        if base.starts_with("redis") {
            "redis"
        } else {
            "postgres"
        },
        requests as f64 / periods,
        provider.reuse_detected()
    )
}

#[derive(Clone, Copy, PartialEq)]
enum Fault {
    /// Every 8 s, one instance at random is frozen for 2 to 25 s (the lease is 15 s).
    Freezes,
    /// Every 20 s, the store server is restarted (PostgreSQL: fast; Redis: killed).
    StoreRestarts,
}

/// Sends `signal` to `pid`.
fn kill(signal: &str, pid: u32) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status();
}

/// Restarts the store server that `.ci/services.sh` started for `base`. Blocking:
/// it runs on tokio's blocking pool.
#[allow(clippy::disallowed_methods)]
fn restart_store(base: &str) {
    if base.starts_with("redis") {
        let port = base.rsplit(':').next().unwrap_or("6379");
        let dir = std::env::var("TOKENPROXY_REDIS_DIR").expect("TOKENPROXY_REDIS_DIR");
        let pid = std::fs::read_to_string(format!("{dir}/pid")).unwrap_or_default();
        kill("KILL", pid.trim().parse().unwrap_or(0));
        std::thread::sleep(Duration::from_millis(500));
        let _ = Command::new("runuser")
            .args([
                "-u",
                "nobody",
                "--",
                "redis-server",
                "--bind",
                "127.0.0.1",
                "--port",
                port,
            ])
            .args([
                "--dir",
                &dir,
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .args(["--save", "", "--daemonize", "yes"])
            .args([
                "--pidfile",
                &format!("{dir}/pid"),
                "--logfile",
                &format!("{dir}/log"),
            ])
            .status();
    } else {
        let bin = std::env::var("TOKENPROXY_PG_BIN").expect("TOKENPROXY_PG_BIN");
        let dir = std::env::var("TOKENPROXY_PG_DIR").expect("TOKENPROXY_PG_DIR");
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--", &format!("{bin}/pg_ctl"), "-D"])
            .arg(format!("{dir}/data"))
            .args(["-m", "fast", "-w", "restart"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// The sum over instances of a counter's series whose labels contain `labels`.
async fn counted(c: &reqwest::Client, instances: &[Instance], metric: &str, labels: &str) -> u64 {
    let mut total = 0;
    for i in instances {
        let Ok(r) = c.get(format!("{}/metrics", i.admin)).send().await else {
            continue;
        };
        let text = r.text().await.unwrap_or_default();
        total += text
            .lines()
            .filter(|l| l.starts_with(metric) && l.contains(labels))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64;
    }
    total
}

/// One row under `fault`: four instances through `FAULT_RUN`.
async fn under_faults(fault: Fault, base: &str) -> String {
    let provider = Provider::start(ProviderOptions {
        lifetime: FAULT_LIFETIME,
        ..ProviderOptions::default()
    })
    .await
    .expect("provider");
    let (kind, url) = fresh_store(base).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("bench.toml");
    write_config(&config, &provider, &kind, "2s");
    let instances: Vec<Instance> = (0..4).map(|_| spawn(&config, &url)).collect();
    let pids: Vec<u32> = instances.iter().map(Instance::pid).collect();
    let c = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(1))
        .build()
        .expect("client");
    let frozen = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    let started = Instant::now();
    let (faults, store_base) = (frozen.clone(), base.to_owned());
    let injector = tokio::spawn(async move {
        let mut injected = 0u32;
        while started.elapsed() + Duration::from_secs(30) < FAULT_RUN {
            match fault {
                Fault::Freezes => {
                    tokio::time::sleep(Duration::from_secs(8)).await;
                    let pid = pids[fastrand::usize(..pids.len())];
                    if !faults.lock().unwrap().insert(pid) {
                        continue;
                    }
                    injected += 1;
                    kill("STOP", pid);
                    let pause = Duration::from_millis(fastrand::u64(2_000..25_000));
                    let faults = faults.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(pause).await;
                        kill("CONT", pid);
                        faults.lock().unwrap().remove(&pid);
                    });
                }
                Fault::StoreRestarts => {
                    tokio::time::sleep(Duration::from_secs(20)).await;
                    injected += 1;
                    let base = store_base.clone();
                    let _ = tokio::task::spawn_blocking(move || restart_store(&base)).await;
                }
            }
        }
        injected
    });
    // Load on every instance not frozen right now; requests to a frozen one are
    // not counted (it cannot answer, by construction).
    let (mut sent, mut errors) = (0u64, 0u64);
    while started.elapsed() < FAULT_RUN {
        for i in &instances {
            if frozen.lock().unwrap().contains(&i.pid()) {
                continue;
            }
            let status = c
                .get(format!("{}/demo/steady", i.proxy))
                .send()
                .await
                .map(|r| r.status().as_u16());
            if frozen.lock().unwrap().contains(&i.pid()) {
                continue;
            }
            sent += 1;
            errors += u64::from(status.as_ref().ok() != Some(&200));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let injected = injector.await.unwrap_or(0);
    // Let every instance run again and settle on the provider's current token.
    for pid in instances.iter().map(Instance::pid) {
        kill("CONT", pid);
    }
    tokio::time::sleep(Duration::from_secs(20)).await;
    let c = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let mut settled = 0;
    for i in &instances {
        let ok = c
            .get(format!("{}/demo/after", i.proxy))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        settled += usize::from(ok);
    }
    let in_doubt = |r: &'static str| {
        let (c, instances) = (&c, &instances);
        async move {
            counted(
                c,
                instances,
                "tokenproxy_refresh_in_doubt_total",
                &format!("resolution=\"{r}\""),
            )
            .await
        }
    };
    let before_send = counted(
        &c,
        &instances,
        "tokenproxy_lease_lost_total",
        "phase=\"before_send\"",
    )
    .await;
    format!(
        "| {} | {} ({injected}) | {sent} | {errors} | {} | {} | {} | {} / {} / {} / {} | {before_send} | {settled} of 4 |",
        if base.starts_with("redis") {
            "redis"
        } else {
            "postgres"
        },
        match fault {
            Fault::Freezes => "instance frozen 2–25 s every 8 s",
            Fault::StoreRestarts => "store restarted every 20 s",
        },
        provider.token_requests(),
        provider.reuse_detected(),
        if provider.chain_revoked() {
            "yes"
        } else {
            "no"
        },
        in_doubt("late_answer").await,
        in_doubt("written_after_restart").await,
        in_doubt("retried").await,
        in_doubt("needs_login").await,
    )
}

fn main() {
    // `cargo bench` passes --bench; nothing else is expected.
    let servers: Vec<String> = ["TOKENPROXY_TEST_POSTGRES_URL", "TOKENPROXY_TEST_REDIS_URL"]
        .iter()
        .filter_map(|v| std::env::var(v).ok())
        .collect();
    if servers.is_empty() {
        eprintln!(
            "set TOKENPROXY_TEST_POSTGRES_URL and/or TOKENPROXY_TEST_REDIS_URL first: . .ci/services.sh"
        );
        return;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    println!(
        "| store | instances | client requests | client errors | token requests | token requests per refresh period (~3 s) | refresh tokens reused | pick-up p50 / p99 |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for base in &servers {
        for n in [1, 4, 16] {
            let row = rt.block_on(measure(n, base));
            println!("{row}");
        }
    }
    println!();
    println!(
        "| store | fault (times injected) | client requests | client errors | token requests | refresh tokens reused | grant revoked | in doubt: late answer / written after restart / retried / needs login | abandoned before sending | instances serving after |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for base in &servers {
        for fault in [Fault::Freezes, Fault::StoreRestarts] {
            let row = rt.block_on(under_faults(fault, base));
            println!("{row}");
        }
    }
}
