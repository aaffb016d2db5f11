//! Several instances on one shared store (PostgreSQL, then Redis): token requests per refresh period
//! and client-visible errors for 1, 4 and 16 instances under steady load, and the
//! time from a refresh on one instance to its pick-up by all the others.
//!
//!     cargo build --release
//!     . .ci/services.sh && cargo bench --bench shared_store
//!
//! The token server is the in-process demo provider (rotating refresh tokens with
//! reuse detection, 4-second access tokens); each instance is a real
//! `target/release/tokenproxy` process on loopback. Prints a Markdown table.

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
    std::fs::write(
        &config,
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
refresh_before = "{MARGIN}"
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
}
