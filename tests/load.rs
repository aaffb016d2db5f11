//! Load: thousands of concurrent clients and a refresh in the middle of them;
//! idle client connections are closed.

mod support;

use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Resident memory per client connection (with its upstream connection and the
/// request in flight on both) that stays under it. Measured with all 5,000 held at
/// once (2026-12-04, heaptrack for the parts): 45–47 KiB in the debug build, also on
/// a machine busy with other work, 41–43 KiB with `--release`; most of it hyper's
/// buffers (a head read into 8–16 KiB, 8 KiB to write one, on each side) and the
/// upstream connection's request channel (12 KiB). One more allocation per request
/// the size of hyper's heap-allocated header arrays (12 KiB) crosses it.
const KIB_PER_CONNECTION: u64 = 56;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_connections_and_a_forced_refresh() {
    let w = World::default().await;
    let p = w.spawn(&w.config("", ""));
    assert_eq!(get(&p.url("/demo/warm")).await.0, 200);
    let c = client_builder()
        .pool_max_idle_per_host(10_000)
        .build()
        .unwrap();
    let rss_idle = p.rss_kib();
    let n: u64 = 5_000;
    // Each request is held at the API until every one has arrived: then all 5,000
    // client connections and their 5,000 upstream connections are open at once.
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (c, url) = (c.clone(), p.url(&format!("/demo/hold?i={i}")));
            tokio::spawn(async move { c.get(url).send().await.map(|r| r.status().as_u16()) })
        })
        .collect();
    // Refresh while half of them are at the upstream with the old token.
    arrived(&w.provider, n / 2).await;
    let r = c
        .post(p.admin_url("/tokens/demo/refresh"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    arrived(&w.provider, n).await;
    let per_connection = p.rss_kib().saturating_sub(rss_idle) / n;
    w.provider.release_held();
    let mut failed = 0;
    for t in tasks {
        if t.await.unwrap().ok() != Some(200) {
            failed += 1;
        }
    }
    assert_eq!(failed, 0, "{failed} of {n} requests failed");
    assert_eq!(
        w.provider.token_requests(),
        2,
        "startup and the forced refresh, nothing else"
    );
    assert!(
        per_connection < KIB_PER_CONNECTION,
        "{per_connection} KiB resident per connection with {n} in flight"
    );
}

/// Waits until `k` requests after the warm-up one have reached the API.
async fn arrived(provider: &tokenproxy::demo::Provider, k: u64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while provider.api_requests() < 1 + k {
        assert!(
            Instant::now() < deadline,
            "only {} of {k} requests arrived",
            provider.api_requests() - 1
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_client_connections_are_closed() {
    let w = World::default().await;
    let p = w.spawn(&w.config("[proxy]\nidle_timeout = \"1s\"\n", ""));
    let mut s = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    s.write_all(b"GET /demo/a HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Keep-alive, then nothing: the proxy closes the connection (read returns 0).
    let started = Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "the idle connection was closed");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "not before the idle timeout"
    );
}
