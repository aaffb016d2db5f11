//! Pulling pages from a rate-limited API: eight clients straight at the API, each
//! fighting its 429s alone (a fixed one-second back-off, as ETL tools do), against
//! the same eight clients through tokenproxy's governor.
//!
//!     cargo build --release && cargo bench --bench quota
//!
//! The API is the in-process demo provider enforcing Exact Online's kind of limits
//! on one division: 20 calls per 1-second window, with Exact's headers and `429`s.
//! tokenproxy is a real `target/release/tokenproxy` on loopback. The component
//! measured is the quota: the API answers in microseconds and the proxy's work per
//! request is four orders of magnitude below a window, so the wall time is windows
//! waited (the table's "minimum" column says how many there must be). Prints a
//! Markdown table: wall time, the API's 429s (calls spent for nothing), client
//! retries and client-visible errors.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::Instance;
use tokenproxy::demo::{Provider, ProviderOptions, RateLimitSim};

const PAGES: usize = 400;
const CLIENTS: usize = 8;
const PER_WINDOW: u64 = 20;
const WINDOW: Duration = Duration::from_secs(1);

struct Run {
    wall: Duration,
    api_429s: u64,
    retries: u64,
    errors: u64,
}

async fn provider() -> Provider {
    Provider::start(ProviderOptions {
        lifetime: Duration::from_secs(3600),
        rate_limit: Some(RateLimitSim {
            per_window: PER_WINDOW,
            window: WINDOW,
            daily: 1_000_000,
        }),
        ..ProviderOptions::default()
    })
    .await
    .expect("provider")
}

/// `CLIENTS` clients, `PAGES` pages in all, each sent to `url(page)` with
/// `auth`; a 429 is retried after a second when `retry` (the tools' way).
async fn pull(
    url: impl Fn(usize) -> String + Clone + Send + 'static,
    auth: Option<String>,
    retry: bool,
) -> (Duration, u64, u64) {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let (client, url, auth) = (client.clone(), url.clone(), auth.clone());
        tasks.push(tokio::spawn(async move {
            let (mut retries, mut errors) = (0, 0);
            for page in (c..PAGES).step_by(CLIENTS) {
                loop {
                    let mut req = client.get(url(page));
                    if let Some(a) = &auth {
                        req = req.bearer_auth(a);
                    }
                    let status = req.send().await.map(|r| r.status().as_u16()).unwrap_or(0);
                    match status {
                        200 => break,
                        429 if retry => {
                            retries += 1;
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                        _ => {
                            errors += 1;
                            break;
                        }
                    }
                }
            }
            (retries, errors)
        }));
    }
    let (mut retries, mut errors) = (0, 0);
    for t in tasks {
        let (r, e) = t.await.unwrap();
        retries += r;
        errors += e;
    }
    (started.elapsed(), retries, errors)
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let mut rows = Vec::new();

    // Straight at the API, with the token tokenproxy vends.
    let direct = provider().await;
    let config = |p: &Provider, name: &str| {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                "[listen]\nproxy = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\n[store]\npath = \"{}\"\n\n[tokens.api]\ngrant = \"refresh_token\"\ntoken_url = \"{}\"\nclient_id = \"demo-client\"\nclient_secret = \"demo-secret\"\nrefresh_token = \"demo-refresh-0\"\nvend = true\n\n[[routes]]\nprefix = \"/api/\"\nupstream = \"{}\"\ntoken = \"api\"\nquota_key = \"path:2\"\n",
                dir.path().join(format!("{name}-state")).display(),
                p.token_url,
                p.api_url
            ),
        )
        .unwrap();
        path
    };
    let spawn = |path: &std::path::Path| {
        let mut cmd = Command::new("target/release/tokenproxy");
        cmd.args(["run", "-c"])
            .arg(path)
            .env("RUST_LOG", "warn,tokenproxy=info");
        Instance::start(cmd)
    };
    let tp = spawn(&config(&direct, "direct.toml"));
    let vended = reqwest::get(format!("{}/tokenproxy/v1/tokens/api", tp.proxy))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let vended: serde_json::Value = serde_json::from_str(&vended).unwrap();
    let token = vended["access_token"].as_str().unwrap().to_owned();
    let api = direct.api_url.clone();
    let (wall, retries, errors) = pull(
        move |p| format!("{api}v1/123/crm/Accounts?page={p}"),
        Some(token),
        true,
    )
    .await;
    rows.push((
        "8 clients straight at the API, 1 s back-off on 429",
        Run {
            wall,
            api_429s: direct.rate_limited(),
            retries,
            errors,
        },
    ));
    drop(tp);

    let governed = provider().await;
    let tp = spawn(&config(&governed, "governed.toml"));
    let base = tp.proxy.clone();
    let (wall, retries, errors) = pull(
        move |p| format!("{base}/api/v1/123/crm/Accounts?page={p}"),
        None,
        true,
    )
    .await;
    rows.push((
        "8 clients through tokenproxy",
        Run {
            wall,
            api_429s: governed.rate_limited(),
            retries,
            errors,
        },
    ));

    let minimum = (PAGES as u64).div_ceil(PER_WINDOW) - 1;
    println!(
        "{PAGES} pages, {CLIENTS} clients, the API allowing {PER_WINDOW} calls per {} s window (minimum {minimum} s: {} windows after the first)\n",
        WINDOW.as_secs(),
        minimum
    );
    println!("| | wall time | API 429s (calls refused) | client retries | client errors |");
    println!("|---|---|---|---|---|");
    for (what, r) in rows {
        println!(
            "| {what} | {:.1} s | {} | {} | {} |",
            r.wall.as_secs_f64(),
            r.api_429s,
            r.retries,
            r.errors
        );
    }
}
