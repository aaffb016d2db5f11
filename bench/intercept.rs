//! The intercepting path against the http:// path, through one real
//! `target/release/tokenproxy` process with one worker pinned to core 0:
//! requests/s and the proxy's CPU per request with keep-alive (64 connections,
//! each a tunnel for the intercepting path), and the proxy's CPU per new tunnel
//! (CONNECT, TLS handshake with the leaf cached, one request), with full and with
//! resumed handshakes.
//!
//!     cargo build --release
//!     taskset -c 1 cargo bench --bench intercept
//!
//! The load generator and the upstream (the in-process demo API, plain HTTP on
//! loopback) share core 1; the proxy's CPU comes from its own /proc/PID/stat, so
//! it is its cost whether or not core 0 is saturated (the table says how busy it
//! was). Prints a Markdown table.

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::Instance;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;
use tokenproxy::demo::{Provider, ProviderOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HOST: &str = "api.bench.test";
const CONNECTIONS: usize = 64;
const RUN: Duration = Duration::from_secs(10);
const TUNNELS: u64 = 2000;

/// The proxy's CPU time so far (user + system), from /proc/PID/stat.
fn cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    // Fields 14 and 15 (utime, stime), counted after the command's closing paren.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

fn start(dir: &std::path::Path, provider: &Provider) -> Instance {
    let config = dir.join("tokenproxy.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[listen]
proxy = "127.0.0.1:0"
admin = "127.0.0.1:0"

[intercept]
ca_cert = {{ file = "{dir}/ca.pem" }}
ca_key = {{ file = "{dir}/ca.key" }}

[store]
path = "{dir}/state"

[tokens.demo]
grant = "refresh_token"
token_url = "{token_url}"
client_id = "demo-client"
client_secret = {{ env = "DEMO_CLIENT_SECRET" }}
refresh_token = {{ env = "DEMO_REFRESH_TOKEN" }}

[[routes]]
host = "{HOST}"
upstream = "{api}"
token = "demo"
"#,
            dir = dir.display(),
            token_url = provider.token_url,
            api = provider.api_url,
        ),
    )
    .unwrap();
    let status = Command::new("target/release/tokenproxy")
        .args(["ca", "init", "-c"])
        .arg(&config)
        .env("DEMO_CLIENT_SECRET", "demo-secret")
        .env("DEMO_REFRESH_TOKEN", "demo-refresh-0")
        .stdout(Stdio::null())
        .status()
        .expect("target/release/tokenproxy (cargo build --release first)");
    assert!(status.success());
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", "0", "target/release/tokenproxy", "run", "-c"])
        .arg(&config)
        .env("TOKIO_WORKER_THREADS", "1")
        .env("DEMO_CLIENT_SECRET", "demo-secret")
        .env("DEMO_REFRESH_TOKEN", "demo-refresh-0")
        .env("RUST_LOG", "warn,tokenproxy=info");
    Instance::start(cmd)
}

fn tls_config(ca: &std::path::Path, resume: bool) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    if !resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Arc::new(config)
}

/// A connection to the proxy: plain (absolute-form requests) or a tunnel.
async fn open(
    addr: &str,
    tls: Option<&tokio_rustls::TlsConnector>,
) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let Some(tls) = tls else {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        return sender;
    };
    tcp.write_all(format!("CONNECT {HOST}:443 HTTP/1.1\r\nHost: {HOST}:443\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(tcp.read(&mut byte).await.unwrap(), 1, "CONNECT answered");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let stream = tls
        .connect(ServerName::try_from(HOST).unwrap(), tcp)
        .await
        .unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

fn request(plain: bool) -> http::Request<Empty<Bytes>> {
    let uri = if plain {
        format!("http://{HOST}/v1/items?page=1")
    } else {
        "/v1/items?page=1".to_owned()
    };
    http::Request::get(uri)
        .header(http::header::HOST, HOST)
        .body(Empty::new())
        .unwrap()
}

/// Keep-alive load: `CONNECTIONS` connections sending one request after another
/// for `RUN`. Requests/s, proxy CPU µs per request, proxy core busy %.
async fn keep_alive(p: &Instance, tls: Option<tokio_rustls::TlsConnector>) -> (f64, f64, f64) {
    let done = Arc::new(AtomicU64::new(0));
    let mut senders = Vec::new();
    for _ in 0..CONNECTIONS {
        senders.push(open(p.proxy_addr(), tls.as_ref()).await);
    }
    let (cpu0, t0) = (cpu(p.pid()), Instant::now());
    let deadline = t0 + RUN;
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|mut sender| {
            let (done, plain) = (Arc::clone(&done), tls.is_none());
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    let resp = sender.send_request(request(plain)).await.unwrap();
                    assert_eq!(resp.status(), 200);
                    resp.into_body().collect().await.unwrap();
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let (elapsed, used) = (t0.elapsed(), cpu(p.pid()) - cpu0);
    let n = done.load(Ordering::Relaxed) as f64;
    (
        n / elapsed.as_secs_f64(),
        used.as_secs_f64() * 1e6 / n,
        100.0 * used.as_secs_f64() / elapsed.as_secs_f64(),
    )
}

/// New tunnels, 16 at a time: CONNECT, handshake, one request, close. Proxy CPU
/// µs per tunnel and tunnels/s.
async fn new_tunnels(p: &Instance, tls: tokio_rustls::TlsConnector) -> (f64, f64) {
    let next = Arc::new(AtomicU64::new(0));
    let (cpu0, t0) = (cpu(p.pid()), Instant::now());
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (next, tls, addr) = (Arc::clone(&next), tls.clone(), p.proxy_addr().to_owned());
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < TUNNELS {
                    let mut sender = open(&addr, Some(&tls)).await;
                    let resp = sender.send_request(request(false)).await.unwrap();
                    assert_eq!(resp.status(), 200);
                    resp.into_body().collect().await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let (elapsed, used) = (t0.elapsed(), cpu(p.pid()) - cpu0);
    (
        used.as_secs_f64() * 1e6 / TUNNELS as f64,
        TUNNELS as f64 / elapsed.as_secs_f64(),
    )
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let provider = Provider::start(ProviderOptions {
            lifetime: Duration::from_secs(3600),
            ..ProviderOptions::default()
        })
        .await
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = start(dir.path(), &provider);
        let ca = dir.path().join("ca.pem");
        let tunnel = tokio_rustls::TlsConnector::from(tls_config(&ca, false));
        // Warm up: the token, the leaf, the upstream pool.
        keep_alive_warmup(&p, &tunnel).await;

        println!("| path | requests/s | proxy CPU µs/request | proxy core busy |");
        println!("|---|---|---|---|");
        for (name, tls) in [("http:// (absolute-form)", None), ("intercepted (keep-alive in the tunnel)", Some(tunnel.clone()))] {
            let (rps, us, busy) = keep_alive(&p, tls).await;
            println!("| {name}, {CONNECTIONS} connections | {rps:.0} | {us:.1} | {busy:.0} % |");
        }
        println!();
        println!("| new tunnel (CONNECT + handshake + 1 request), leaf cached | proxy CPU µs/tunnel | tunnels/s |");
        println!("|---|---|---|");
        for (name, resume) in [("full handshake (TLS 1.3, ECDSA P-256)", false), ("resumed handshake", true)] {
            let tls = tokio_rustls::TlsConnector::from(tls_config(&ca, resume));
            let (us, per_s) = new_tunnels(&p, tls).await;
            println!("| {name} | {us:.0} | {per_s:.0} |");
        }
    });
}

async fn keep_alive_warmup(p: &Instance, tls: &tokio_rustls::TlsConnector) {
    for tls in [None, Some(tls)] {
        let mut sender = open(p.proxy_addr(), tls).await;
        for _ in 0..100 {
            let resp = sender.send_request(request(tls.is_none())).await.unwrap();
            assert_eq!(resp.status(), 200, "warm-up");
            resp.into_body().collect().await.unwrap();
        }
    }
}
