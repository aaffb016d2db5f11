//! Load: thousands of concurrent clients and a refresh in the middle of them;
//! idle client connections are closed.

mod support;

use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_connections_and_a_forced_refresh() {
    let w = World::default().await;
    let p = w.spawn(&w.config("", ""));
    assert_eq!(get(&p.url("/demo/warm")).await.0, 200);
    let c = client_builder()
        .pool_max_idle_per_host(10_000)
        .build()
        .unwrap();
    let n = 5_000;
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (c, url) = (c.clone(), p.url(&format!("/demo/slow?ms=400&i={i}")));
            tokio::spawn(async move { c.get(url).send().await.map(|r| r.status().as_u16()) })
        })
        .collect();
    // Refresh while half of them are at the upstream with the old token.
    let deadline = Instant::now() + Duration::from_secs(60);
    while w.provider.api_requests() < (n / 2) as u64 {
        assert!(
            Instant::now() < deadline,
            "only {} requests arrived",
            w.provider.api_requests()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let r = c
        .post(p.admin_url("/tokens/demo/refresh"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
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
    let rss = p.peak_rss_kib();
    assert!(rss < 256 * 1024, "peak RSS {rss} KiB with {n} connections");
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
