//! Faults survived: a broken store, a full disk, and upstreams that misbehave in
//! every way a network can; no request hangs and nothing leaks.

mod support;

use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

async fn a_broken_state_file_stops_the_token_without_spending_the_configured_one() {
    for (content, expect) in [
        (
            "{\"version\": 1, \"generation\": 3, \"access_tok",
            "not JSON",
        ),
        ("", "not JSON"),
        (
            "{\"version\": 0, \"token\": \"old format\"}",
            "format version 0",
        ),
    ] {
        let w = World::default().await;
        std::fs::create_dir_all(w.state_dir()).unwrap();
        std::fs::write(w.state_dir().join("demo.json"), content).unwrap();
        let p = w.spawn(&w.config("", ""));
        let t = p
            .wait_token("demo", "needs_login", Duration::from_secs(5))
            .await;
        assert_eq!(get(&p.admin_url("/readyz")).await.0, 503);
        // The store failed, and every account of it says so.
        assert_eq!(t["last_error_source"], "store", "{t}");
        let (status, body) = get(&p.url("/demo/x")).await;
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (status, &body["error"], &body["source"]),
            (503, &"no_valid_token".into(), &"store".into()),
            "{body}"
        );
        let metrics = get(&p.admin_url("/metrics")).await.1;
        assert!(
            metrics.contains(
                r#"tokenproxy_errors_total{error="no_valid_token",route="demo",source="store"} 1"#
            ),
            "{metrics}"
        );
        let error = t["last_error"].as_str().unwrap();
        assert!(
            error.contains(expect) && error.contains("tokenproxy seed demo"),
            "{error}"
        );
        assert_eq!(
            w.provider.token_requests(),
            0,
            "the configured refresh token was not spent"
        );
        assert_eq!(
            std::fs::read_to_string(w.state_dir().join("demo.json")).unwrap(),
            content,
            "the file is left for a person"
        );
    }
}

async fn an_unreadable_secret_is_reported_as_the_configuration() {
    let w = World::default().await;
    let secret = w.dir.path().join("client-secret");
    std::fs::write(&secret, "demo-secret").unwrap();
    let config = w.config("", "").replace(
        r#"client_secret = { env = "DEMO_CLIENT_SECRET" }"#,
        &format!("client_secret = {{ file = \"{}\" }}", secret.display()),
    );
    // The file goes away after the check at start: the next token request cannot
    // read it, and nothing is sent.
    let p = w.spawn(&config);
    let _ = p.wait_token("demo", "valid", Duration::from_secs(5)).await;
    std::fs::remove_file(&secret).unwrap();
    let sent = w.provider.token_requests();
    let refresh = force_refresh_after_backoff(&p, "demo").await;
    assert_ne!(refresh.status(), 200);
    let t = token_status(&p, "demo").await;
    assert_eq!(t["last_error_source"], "config", "{t}");
    assert!(
        t["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot read a configured secret")),
        "{t}"
    );
    assert_eq!(w.provider.token_requests(), sent, "nothing was sent");
}

async fn a_full_disk_keeps_the_token_in_memory_until_space_returns() {
    let w = World::default().await;
    let disk = SmallDisk::mount(w.dir.path());
    let state = disk.state();
    // Fill the disk, leaving no room for a token record.
    disk.fill();
    let config = w.config("", "").replace(
        &w.state_dir().display().to_string(),
        &state.display().to_string(),
    );
    let p = w.spawn(&config);
    assert_eq!(
        get(&p.url("/demo/x")).await.0,
        200,
        "served from memory:\n{}",
        p.log()
    );
    assert_eq!(token_status(&p, "demo").await["unsaved"], true);
    let m = get(&p.admin_url("/metrics")).await.1;
    assert!(
        m.contains("tokenproxy_store_write_errors_total{token=\"demo\"}"),
        "{m}"
    );
    assert!(
        !m.contains("tokenproxy_store_write_errors_total{token=\"demo\"} 0"),
        "{m}"
    );

    disk.free();
    let deadline = Instant::now() + Duration::from_secs(10);
    while token_status(&p, "demo").await["unsaved"] == true {
        assert!(Instant::now() < deadline, "never written:\n{}", p.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stored = std::fs::read_to_string(state.join("demo.json")).unwrap();
    assert!(stored.contains(&w.provider.current_refresh_token().unwrap()));
    assert_eq!(w.provider.reuse_detected(), 0);
    drop(p);
}

/// SIGTERM while the newest token could not be stored: one last write is tried,
/// and when it fails too the exit says loudly what the store holds.
async fn shutdown_with_an_unsaved_token_writes_it_or_says_so() {
    let w = World::default().await;
    let disk = SmallDisk::mount(w.dir.path());
    let config = w.config("", "").replace(
        &w.state_dir().display().to_string(),
        &disk.state().display().to_string(),
    );
    let p = w.spawn(&config);
    assert_eq!(get(&p.url("/demo/x")).await.0, 200);
    disk.fill();
    assert_eq!(force_refresh(&p, "demo").await.status(), 200);
    assert_eq!(token_status(&p, "demo").await["unsaved"], true);
    let (status, log) = tokio::task::spawn_blocking(move || p.stop_and_log())
        .await
        .unwrap();
    assert!(status.success());
    assert!(
        log.contains("exiting with the newest token unsaved"),
        "{log}"
    );
    assert!(log.contains("tokenproxy login demo"), "{log}");
}

/// How a fault server misbehaves on every connection.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Accepts and closes without a word.
    Close,
    /// Half a status line, then closes.
    PartialHeaders,
    /// Headers and part of the promised body, then a reset.
    ResetMidBody,
    /// Headers, then the body a byte at a time, slowly.
    SlowBody,
}

/// A server on 127.0.0.1 that answers every connection with `fault`.
async fn fault_server(fault: Fault) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                match fault {
                    Fault::Close => {}
                    Fault::PartialHeaders => {
                        let _ = s.write_all(b"HTTP/1.1 200 O").await;
                    }
                    Fault::ResetMidBody => {
                        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\nContent-Type: text/plain\r\n\r\npartial").await;
                        let _ = s.set_zero_linger();
                    }
                    Fault::SlowBody => {
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
                            .await;
                        for b in b"hello" {
                            tokio::time::sleep(Duration::from_millis(300)).await;
                            let _ = s.write_all(&[*b]).await;
                        }
                    }
                }
            });
        }
    });
    format!("http://127.0.0.1:{}/", addr.port())
}

fn fault_config(w: &World, upstream: &str) -> String {
    w.config("[proxy]\nresponse_timeout = \"2s\"\n", "")
        .replace(&w.provider.api_url, upstream)
}

fn open_fds(p: &Proxy) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", p.pid()))
        .unwrap()
        .count()
}

async fn misbehaving_upstreams_get_clear_errors_and_nothing_hangs() {
    let w = World::default().await;
    for (fault, status) in [(Fault::Close, 502), (Fault::PartialHeaders, 502)] {
        let p = w.spawn(&fault_config(&w, &fault_server(fault).await));
        let started = Instant::now();
        let r = client().get(p.url("/demo/x")).send().await.unwrap();
        assert_eq!(r.status(), status, "{fault:?}");
        assert_eq!(
            r.headers()["x-tokenproxy-error"],
            "upstream_failed",
            "{fault:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{fault:?} took {:?}",
            started.elapsed()
        );
    }

    // Reset in the middle of the body: the headers went out already, so the client
    // sees its body end early, not a hang.
    let p = w.spawn(&fault_config(&w, &fault_server(Fault::ResetMidBody).await));
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        client().get(p.url("/demo/x")).send(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        tokio::time::timeout(Duration::from_secs(5), r.bytes())
            .await
            .unwrap()
            .is_err(),
        "a cut body is an error to the client"
    );

    // A slow body is streamed as it comes (the response timeout covers headers only).
    let p = w.spawn(&fault_config(&w, &fault_server(Fault::SlowBody).await));
    let r = client().get(p.url("/demo/x")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "hello");

    // A certificate for another name.
    let pki_ca = tempfile::NamedTempFile::new().unwrap();
    let (server, ca) = wrong_name_tls();
    std::fs::write(pki_ca.path(), ca).unwrap();
    let tls_upstream = tls_server(server).await;
    let config = fault_config(&w, &tls_upstream).replace(
        "[proxy]",
        &format!("[tls]\nca_file = \"{}\"\n[proxy]", pki_ca.path().display()),
    );
    let p = w.spawn(&config);
    let r = client().get(p.url("/demo/x")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(r.headers()["x-tokenproxy-error"], "upstream_unreachable");
    p.wait_log("upstream request failed").await;
    assert!(
        p.log().contains("NotValidForName") || p.log().contains("not valid for name"),
        "{}",
        p.log()
    );
}

async fn ten_thousand_failures_leak_no_file_descriptors() {
    let w = World::default().await;
    let p = w.spawn(&fault_config(&w, &fault_server(Fault::Close).await));
    let c = client();
    assert_eq!(
        c.get(p.url("/demo/warm")).send().await.unwrap().status(),
        502
    );
    let before = open_fds(&p);
    let workers: Vec<_> = (0..16)
        .map(|_| {
            let (c, url) = (c.clone(), p.url("/demo/x"));
            tokio::spawn(async move {
                for _ in 0..625 {
                    assert_eq!(c.get(&url).send().await.unwrap().status(), 502);
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    // Client connections to the proxy are kept alive by the test's pool; close them.
    drop(c);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let after = open_fds(&p);
        if after <= before + 4 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "fds: {before} before, {after} after 10,000 failures"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A TLS server config for `wrong.example.com` and the CA that signed it.
fn wrong_name_tls() -> (std::sync::Arc<rustls::ServerConfig>, String) {
    let pki = support::pki::Pki::new();
    (pki.server("wrong.example.com", &[], false), pki.ca_pem)
}

/// A TLS server on 127.0.0.1 that completes handshakes and answers nothing.
async fn tls_server(config: std::sync::Arc<rustls::ServerConfig>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = acceptor.accept(s).await;
            });
        }
    });
    format!("https://localhost:{port}/")
}

use support::harness::Needs;

harness!(
    Needs::Nothing => a_broken_state_file_stops_the_token_without_spending_the_configured_one,
    Needs::Nothing => an_unreadable_secret_is_reported_as_the_configuration,
    Needs::Root => a_full_disk_keeps_the_token_in_memory_until_space_returns,
    Needs::Root => shutdown_with_an_unsaved_token_writes_it_or_says_so,
    Needs::Nothing => misbehaving_upstreams_get_clear_errors_and_nothing_hangs,
    Needs::Nothing => ten_thousand_failures_leak_no_file_descriptors,
);
