//! What an attacker or a careless operator tried, and what now holds: strict
//! protocol reading, no secret in any echo, no panic on odd input, and bounded
//! connections.

mod support;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::*;

/// Reads whatever arrives until the peer closes; `None` if it has not closed
/// within `within`.
async fn read_until_closed(s: &mut TcpStream, within: Duration) -> Option<String> {
    let mut buf = Vec::new();
    match tokio::time::timeout(within, s.read_to_end(&mut buf)).await {
        Ok(_) => Some(String::from_utf8_lossy(&buf).into_owned()),
        Err(_) => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_is_refused_so_the_token_is_never_echoed() {
    let w = World::default().await;
    let p = w.spawn(&w.config("", ""));
    let reply = raw(
        p.addr,
        "TRACE /demo/echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 405"), "{reply}");
    assert!(
        reply.to_ascii_lowercase().contains("\r\nallow: get, head"),
        "{reply}"
    );
    assert!(reply.contains("method_not_allowed"), "{reply}");
    assert_eq!(w.provider.api_connections(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_hosts_and_dot_segments_are_refused_before_forwarding() {
    let w = World::default().await;
    let p = w.spawn(&w.config("", ""));
    let line = |n: usize| format!("X-Big: {}", "a".repeat(n));
    let cases: Vec<(String, &str)> = vec![
        // One header line over 8 KiB; a head over 64 KiB in lines under 8 KiB.
        (line(9 * 1024), "431"),
        (
            (0..10)
                .map(|_| line(7 * 1024))
                .collect::<Vec<_>>()
                .join("\r\n"),
            "431",
        ),
        // Two Host headers; a Host that is no authority (reflected into Location).
        ("Host: y".into(), "400"),
    ];
    for (extra, status) in &cases {
        let reply = raw(
            p.addr,
            &format!("GET /demo/echo HTTP/1.1\r\nHost: x\r\n{extra}\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert!(
            reply.starts_with(&format!("HTTP/1.1 {status}")),
            "{}…\n→ {reply}",
            &extra[..extra.len().min(40)]
        );
    }
    for host in ["x\"><script>", "a b", "user@x", ""] {
        let reply = raw(
            p.addr,
            &format!("GET /demo/redirect HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert!(reply.starts_with("HTTP/1.1 400"), "{host}\n→ {reply}");
        assert!(!reply.contains("<script>"), "{reply}");
    }
    for path in [
        "/demo/..;/x",
        "/demo/%2e%2e%3b/x",
        "/demo/.%00./x",
        "/demo/a%00b",
        "/demo/%252e%252e/x",
    ] {
        let reply = raw(
            p.addr,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert!(reply.starts_with("HTTP/1.1 400"), "{path}\n→ {reply}");
    }
    assert_eq!(w.provider.api_connections(), 0, "nothing was forwarded");
    // Limits are configurable: a larger line passes with a larger limit.
    let p2 = w.spawn(&w.config("[proxy]\nmax_header_line = 16384\n", ""));
    let reply = raw(
        p2.addr,
        &format!(
            "GET /demo/echo HTTP/1.1\r\nHost: x\r\n{}\r\nConnection: close\r\n\r\n",
            line(9 * 1024)
        ),
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_continue_is_answered_here_and_not_forwarded() {
    let w = World::default().await;
    let p = w.spawn(&w.config("", ""));
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(b"POST /demo/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0; 1024];
    let n = s.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 100"), "{head}");
    s.write_all(b"hello").await.unwrap();
    let rest = read_until_closed(&mut s, Duration::from_secs(10))
        .await
        .expect("answered");
    assert!(rest.contains("HTTP/1.1 200"), "{rest}");
    // The JSON echo comes chunked (the default paging-link scan streams it).
    let (head, body) = rest
        .split_once("HTTP/1.1 200")
        .unwrap()
        .1
        .split_once("\r\n\r\n")
        .unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    let echo = json(&body);
    assert_eq!(echo["body"], "hello");
    assert!(echo["headers"].get("expect").is_none(), "{echo}");
}

/// A chunked body's data (chunk sizes in hex, each chunk and size line ending in CRLF).
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).expect("a chunk size");
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}

/// A token endpoint that echoes the request (in `error_description`, or in an HTML
/// page) must not put the refresh token or the client secret anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_echoes_are_masked_everywhere() {
    use tokenproxy::demo::Mode;
    let w = World::default().await;
    let p = w.spawn(&w.config("", ""));
    assert_eq!(get(&p.url("/demo/x")).await.0, 200);
    let mut seen = String::new();
    // The first echo through a manual refresh; the second through the
    // scheduler's retry (a manual refresh now waits out the backoff, which the
    // scheduler's own failing retries keep extending).
    w.provider.set_mode(Mode::Echo);
    let r = force_refresh(&p, "demo").await;
    assert_eq!(r.status(), 502);
    let body = r.text().await.unwrap();
    assert!(
        json(&body)["last_error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{body}"
    );
    seen += &body;
    seen += &get(&p.admin_url("/status")).await.1;
    w.provider.set_mode(Mode::EchoHtml);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = get(&p.admin_url("/status")).await.1;
        if status.contains("an HTML page") {
            seen += &status;
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen.contains("invalid_request"), "{seen}");
    assert!(seen.contains("an HTML page"), "{seen}");
    w.provider.set_mode(Mode::Normal);
    let (status, log) = tokio::task::spawn_blocking(move || p.stop_and_log())
        .await
        .unwrap();
    assert!(status.success());
    assert!(
        log.contains("[redacted]"),
        "the echo was masked, not dropped: {log}"
    );
    let mut secrets = w.provider.all_tokens();
    secrets.extend(["demo-secret".into(), "demo-refresh-0".into()]);
    for secret in secrets {
        assert!(!seen.contains(&secret), "a response shows {secret}: {seen}");
        assert!(!log.contains(&secret), "the log shows {secret}");
    }
}

/// A lifetime of thousands of years once panicked the log line and `/status`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_lifetimes_are_clamped_and_everything_still_answers() {
    let mut opts = ProviderOptions::default();
    opts.extra
        .insert("expires_in".into(), serde_json::json!(300_000_000_000u64));
    let w = World::new(opts).await;
    let p = w.spawn(&w.config("", ""));
    assert_eq!(get(&p.url("/demo/x")).await.0, 200);
    let status = token_status(&p, "demo").await;
    let expires = status["expires_at"].as_str().unwrap().to_owned();
    let year: i32 = expires[..4].parse().unwrap();
    let now: i32 = tokenproxy::clock::rfc3339(std::time::SystemTime::now())[..4]
        .parse()
        .unwrap();
    assert!(
        year == now || year == now + 1,
        "clamped to a year: {expires}"
    );
    assert_eq!(get(&p.admin_url("/metrics")).await.0, 200);
    let (status, log) = tokio::task::spawn_blocking(move || p.stop_and_log())
        .await
        .unwrap();
    assert!(status.success(), "{log}");
    assert!(!log.contains("panic"), "{log}");
}

/// A record with an expiry of `u64::MAX` ms once panicked every `/status`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_times_at_the_edge_format_without_panicking() {
    let w = World::default().await;
    std::fs::create_dir_all(w.state_dir()).unwrap();
    std::fs::write(
        w.state_dir().join("demo.json"),
        format!(
            r#"{{"version":1,"generation":4,"access_token":"at-stored","refresh_token":"demo-refresh-0","issued_at_ms":0,"expires_at_ms":{}}}"#,
            u64::MAX
        ),
    )
    .unwrap();
    let p = w.spawn(&w.config("", ""));
    let status = token_status(&p, "demo").await;
    assert_eq!(status["expires_at"], "9999-12-31T23:59:59Z", "{status}");
    assert_eq!(get(&p.admin_url("/metrics")).await.0, 200);
    let (_, log) = tokio::task::spawn_blocking(move || p.stop_and_log())
        .await
        .unwrap();
    assert!(!log.contains("panic"), "{log}");
}

/// Connections that send nothing, stop in a body, stop after the HTTP/2 preface or
/// after `Expect: 100-continue` are closed within the configured time; a normal
/// request is served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_stalled_connections_are_closed() {
    let w = World::default().await;
    let p = w.spawn(&w.config(
        "[proxy]\nidle_timeout = \"1s\"\nbody_timeout = \"1s\"\n",
        "",
    ));
    let openers: [&[u8]; 5] = [
        b"",
        b"POST /demo/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\npartial",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"POST /demo/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
        b"GET /demo/x HTTP/1.1\r\nHost: x\r\n\r\n",
    ];
    let mut conns = Vec::new();
    for (i, opener) in openers.iter().enumerate() {
        for addr in [p.addr, p.admin] {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(opener).await.unwrap();
            conns.push((i, addr, s));
        }
    }
    // Served meanwhile.
    assert_eq!(get(&p.url("/demo/ok")).await.0, 200);
    for (i, addr, mut s) in conns {
        // Generous for a loaded machine; without the timers they stay open for minutes.
        let got = read_until_closed(&mut s, Duration::from_secs(15)).await;
        let got = got.unwrap_or_else(|| panic!("opener {i} to {addr} is still open"));
        // The proxy answers a stalled body with 408.
        if (i == 1 || i == 3) && addr == p.addr {
            assert!(got.contains("408"), "opener {i}: {got}");
        }
    }
    let metrics = get(&p.admin_url("/metrics")).await.1;
    assert!(
        metrics.contains(
            r#"tokenproxy_errors_total{error="client_timeout",route="demo",source="client"}"#
        ),
        "{metrics}"
    );
}

/// With every connection slot taken by silent clients, a real request still gets
/// in: the oldest idle connection makes room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_cannot_lock_out_real_clients() {
    let w = World::default().await;
    let p = w.spawn(&w.config("[proxy]\nmax_connections = 20\n", ""));
    let mut silent = Vec::new();
    for _ in 0..60 {
        silent.push(TcpStream::connect(p.addr).await.unwrap());
    }
    for _ in 0..5 {
        let (status, _) = get(&p.url("/demo/ok")).await;
        assert_eq!(status, 200);
    }
    // The first silent connections were closed to make room.
    let mut closed = 0;
    for s in silent.iter_mut().take(20) {
        if read_until_closed(s, Duration::from_secs(5)).await.is_some() {
            closed += 1;
        }
    }
    assert_eq!(closed, 20);
}

/// When every slot holds a request in flight, a newcomer gets a 503 at once and
/// the requests in flight finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_slots_refuse_newcomers_without_starving_accepted_ones() {
    let w = World::default().await;
    let p = w.spawn(&w.config("[proxy]\nmax_connections = 16\n", ""));
    let slow: Vec<_> = (0..16)
        .map(|_| {
            let url = p.url("/demo/slow?ms=8000");
            tokio::spawn(async move { get(&url).await.0 })
        })
        .collect();
    // Wait until all sixteen are in flight at the API.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while w.provider.api_requests() < 16 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slow requests never arrived"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let reply = raw(p.addr, "GET /demo/x HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.1 503"), "{reply}");
    assert!(reply.contains("overloaded"), "{reply}");
    for s in slow {
        assert_eq!(s.await.unwrap(), 200);
    }
    assert_eq!(get(&p.url("/demo/after")).await.0, 200);
}

/// Out of file descriptors: accepting pauses with a log line, and the proxy
/// serves again once the clients let go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_file_descriptors_is_survived() {
    let w = World::default().await;
    // A slot limit above what the descriptors allow, so accept() itself fails.
    let config = w.config("[proxy]\nmax_connections = 5000\n", "");
    let path = w.dir.path().join("fd.toml");
    std::fs::write(&path, &config).unwrap();
    let p = Proxy::start_wrapped(&path, &["prlimit", "--nofile=64:64", "--"], &[]);
    let mut held = Vec::new();
    for _ in 0..200 {
        match TcpStream::connect(p.addr).await {
            Ok(s) => held.push(s),
            Err(_) => break,
        }
    }
    p.wait_log("out of file descriptors").await;
    drop(held);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let ok = client()
            .get(p.url("/demo/ok"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        if ok {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never served again:\n{}",
            p.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The soft open-file limit is raised to the hard limit at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_soft_file_limit_is_raised_to_the_hard_limit() {
    let w = World::default().await;
    let path = w.dir.path().join("rl.toml");
    std::fs::write(&path, w.config("", "")).unwrap();
    let p = Proxy::start_wrapped(&path, &["prlimit", "--nofile=100:4000", "--"], &[]);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", p.pid())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let numbers: Vec<&str> = line
        .split_whitespace()
        .filter(|w| w.parse::<u64>().is_ok())
        .collect();
    assert_eq!(numbers, ["4000", "4000"], "{line}");
    assert!(p.log().contains("max_connections=1968"), "{}", p.log());
}

/// A corrupt record is named by its wrong field, never by the value in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_record_names_the_field_not_its_value() {
    let w = World::default().await;
    std::fs::create_dir_all(w.state_dir()).unwrap();
    std::fs::write(
        w.state_dir().join("demo.json"),
        r#"{"version":1,"generation":"rt-LEAKED-1234","issued_at_ms":1,"expires_at_ms":2}"#,
    )
    .unwrap();
    let p = w.spawn(&w.config("", ""));
    p.wait_token("demo", "needs_login", Duration::from_secs(10))
        .await;
    assert_eq!(get(&p.admin_url("/readyz")).await.0, 503);
    let status = get(&p.admin_url("/status")).await.1;
    assert!(status.contains("field `generation`"), "{status}");
    let (_, log) = tokio::task::spawn_blocking(move || p.stop_and_log())
        .await
        .unwrap();
    assert!(log.contains("field `generation`"), "{log}");
    assert!(
        !status.contains("LEAKED") && !log.contains("LEAKED"),
        "{status}\n{log}"
    );
}

/// A request head that trickles in (a byte at a time, each well within the idle
/// timeout) is bounded as a whole: the connection is closed once the head has
/// taken longer than the idle timeout. So is a stream of empty lines before a
/// request line, and a head trickling in after a first request on the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickling_request_heads_are_cut_off() {
    let w = World::default().await;
    let p = w.spawn(&w.config("[proxy]\nidle_timeout = \"1s\"\n", ""));
    let openers: [(&[u8], &[u8]); 3] = [
        (b"GET /demo/x HTTP/1.1\r\nHost: x\r\nX-Slow: ", b"a"),
        (b"", b"\r\n"),
        (
            b"GET /demo/x HTTP/1.1\r\nHost: x\r\n\r\nGET /demo/y HTTP/1.1\r\nX-Slow: ",
            b"a",
        ),
    ];
    let mut readers = Vec::new();
    for (i, (opener, drip)) in openers.into_iter().enumerate() {
        let (mut read, mut write) = TcpStream::connect(p.addr).await.unwrap().into_split();
        write.write_all(opener).await.unwrap();
        tokio::spawn(async move {
            // Each piece comes well within the idle timeout; stops when the proxy
            // has closed the connection.
            while write.write_all(drip).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        readers.push(tokio::spawn(async move {
            let mut got = Vec::new();
            // Generous for a loaded machine; without a bound on the whole head the
            // connection stays open as long as the client keeps dripping.
            let closed =
                tokio::time::timeout(Duration::from_secs(15), read.read_to_end(&mut got)).await;
            (
                i,
                closed.is_ok(),
                String::from_utf8_lossy(&got).into_owned(),
            )
        }));
    }
    for reader in readers {
        let (i, closed, got) = reader.await.unwrap();
        assert!(closed, "opener {i} is still open: {got}");
        if i == 2 {
            assert!(
                got.starts_with("HTTP/1.1 200"),
                "the first request was served: {got}"
            );
        }
    }
}

/// An HTTP/2 connection that goes quiet after its request is closed too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http2_connections_are_closed_after_their_requests() {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let w = World::default().await;
    let p = w.spawn(&w.config("[proxy]\nidle_timeout = \"1s\"\n", ""));
    let stream = TcpStream::connect(p.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::get(format!("http://{}/demo/h2", p.addr))
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let _ = resp.into_body().collect().await.unwrap();
    // Quiet from here on: the server ends the connection.
    let ended = tokio::time::timeout(Duration::from_secs(15), conn).await;
    assert!(ended.is_ok(), "the idle HTTP/2 connection is still open");
}

/// `check` on a FIFO, a device and an oversized file: refused at once by name
/// (exit 2), never blocked on the FIFO or reading `/dev/zero` into memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configuration_path_that_is_not_a_regular_file_is_refused() {
    let w = World::default().await;
    let fifo = w.dir.path().join("fifo.toml");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let big = w.dir.path().join("big.toml");
    std::fs::write(&big, vec![b'#'; 2 * 1024 * 1024]).unwrap();
    for (path, says) in [
        (fifo.as_path(), "not a regular file"),
        (std::path::Path::new("/dev/zero"), "not a regular file"),
        (big.as_path(), "larger than 1024 KiB"),
    ] {
        let out = tokio::time::timeout(
            Duration::from_secs(20),
            tokio::process::Command::new(binary())
                .args(["check", "-c"])
                .arg(path)
                .output(),
        )
        .await
        .expect("check hung")
        .unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", path.display());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says) && err.contains("fix:"), "{err}");
    }
}

/// A running proxy (with one worker thread, as the sidecar runs) whose
/// configuration path became a FIFO: `SIGHUP` and `POST /reload` are refused by
/// name, the proxy and the admin listener keep answering, and SIGTERM still stops
/// it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_from_a_fifo_is_refused_and_nothing_hangs() {
    let w = World::default().await;
    let config = w.config("", "");
    let p = w.spawn_with(&config, &[("TOKIO_WORKER_THREADS", "1")]);
    assert_eq!(get(&p.url("/demo/x")).await.0, 200);
    std::fs::remove_file(&p.config).unwrap();
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&p.config)
            .status()
            .unwrap()
            .success()
    );
    p.signal("HUP");
    p.wait_log("not a regular file").await;
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        client().post(p.admin_url("/reload")).send(),
    )
    .await
    .expect("POST /reload hung")
    .unwrap();
    assert_eq!(r.status(), 422);
    assert!(r.text().await.unwrap().contains("not a regular file"));
    assert_eq!(get(&p.url("/demo/y")).await.0, 200);
    let status = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || p.stop()),
    )
    .await
    .expect("SIGTERM did not stop the proxy")
    .unwrap();
    assert!(status.success(), "{status:?}");
}

/// Requests that are not well-formed proxy requests are refused before anything is
/// sent anywhere: a missing or malformed `Host`, a port that is not 1–65535, a
/// scheme other than http(s) for a routed host, TRACE or TRACK in any case, and a
/// CONNECT without a port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_targets_and_echoing_methods_are_refused() {
    let w = World::default().await;
    let config = w.config("", "").replace(
        "prefix = \"/demo/\"",
        "prefix = \"/demo/\"\nhost = \"api.example.test\"",
    );
    let p = w.spawn(&config);
    for (head, status, code) in [
        ("GET /demo/x HTTP/1.1\r\n", "400", "bad_host"),
        (
            "GET /demo/x HTTP/1.1\r\nHost: host:abc\r\n",
            "400",
            "bad_host",
        ),
        (
            "GET /demo/x HTTP/1.1\r\nHost: host:99999\r\n",
            "400",
            "bad_host",
        ),
        (
            "GET /demo/x HTTP/1.1\r\nHost: 1.2.3.4:0\r\n",
            "400",
            "bad_host",
        ),
        (
            "GET /demo/x HTTP/1.1\r\nHost: [::1]:x1\r\n",
            "400",
            "bad_host",
        ),
        (
            "GET ftp://api.example.test/x HTTP/1.1\r\nHost: api.example.test\r\n",
            "400",
            "bad_scheme",
        ),
        (
            "GET http://user@api.example.test/x HTTP/1.1\r\nHost: api.example.test\r\n",
            "400",
            "bad_host",
        ),
        (
            "trace /demo/x HTTP/1.1\r\nHost: x\r\n",
            "405",
            "method_not_allowed",
        ),
        (
            "TRACK /demo/x HTTP/1.1\r\nHost: x\r\n",
            "405",
            "method_not_allowed",
        ),
        (
            "track /demo/x HTTP/1.1\r\nHost: x\r\n",
            "405",
            "method_not_allowed",
        ),
        (
            "CONNECT api.example.test HTTP/1.1\r\nHost: api.example.test\r\n",
            "400",
            "bad_host",
        ),
    ] {
        let reply = raw(p.addr, &format!("{head}Connection: close\r\n\r\n")).await;
        assert!(
            reply.starts_with(&format!("HTTP/1.1 {status}")),
            "{head}: {reply}"
        );
        assert!(
            reply.contains(&format!("x-tokenproxy-error: {code}")),
            "{head}: {reply}"
        );
    }
    // HTTP/1.0 needs no Host.
    let reply = raw(p.addr, "GET /demo/x HTTP/1.0\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.0 200"), "{reply}");
    assert_eq!(
        w.provider.api_requests(),
        1,
        "only the HTTP/1.0 request went out"
    );
    // A refused CONNECT names its host in the log (the request line has no host).
    let reply = raw(
        p.addr,
        "CONNECT unrouted.example.test:443 HTTP/1.1\r\nHost: unrouted.example.test:443\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 405"), "{reply}");
    p.wait_log("unrouted.example.test:443").await;
}

/// HTTP/2 `:authority` with user info is refused as it is in an HTTP/1 `Host`,
/// and never reflected into a rewritten `Location`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_authority_with_user_info_is_refused() {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let w = World::default().await;
    let p = w.spawn(&w.config("", ""));
    let stream = TcpStream::connect(p.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(format!("http://{}@evil.example/demo/x", p.addr))
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.headers()["x-tokenproxy-error"], "bad_host");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(!String::from_utf8_lossy(&body).contains("evil"));
    assert_eq!(w.provider.api_requests(), 0);
}

/// More header fields than `proxy.max_headers` get tokenproxy's own `431` with its
/// JSON body and `x-tokenproxy-error`; past 100 (the HTTP library's own limit)
/// hyper's bare `431`; nothing is forwarded either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_header_fields_get_a_tokenproxy_answer() {
    let w = World::default().await;
    let p = w.spawn(&w.config("[proxy]\nmax_headers = 20\n", ""));
    let fields = |n: usize| -> String { (0..n).map(|i| format!("X-F{i}: v\r\n")).collect() };
    let ok = raw(
        p.addr,
        &format!(
            "GET /demo/x HTTP/1.1\r\nHost: x\r\n{}Connection: close\r\n\r\n",
            fields(10)
        ),
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    for n in [25, 90] {
        let reply = raw(
            p.addr,
            &format!(
                "GET /demo/x HTTP/1.1\r\nHost: x\r\n{}Connection: close\r\n\r\n",
                fields(n)
            ),
        )
        .await;
        assert!(reply.starts_with("HTTP/1.1 431"), "{n}: {reply}");
        assert!(
            reply.contains("x-tokenproxy-error: header_too_large"),
            "{n}: {reply}"
        );
        assert!(reply.contains("max_headers"), "{n}: {reply}");
    }
    let reply = raw(
        p.addr,
        &format!(
            "GET /demo/x HTTP/1.1\r\nHost: x\r\n{}Connection: close\r\n\r\n",
            fields(150)
        ),
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply}");
    assert_eq!(w.provider.api_requests(), 1);
}

/// An `error_description` whose secret (the client secret, then the refresh token
/// sent) straddles the 200-character quote: `/status`, the admin answer, `token
/// status --json` and the log show none of it, not even a piece.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_across_the_quoted_length_is_never_shown_in_part() {
    use tokenproxy::demo::Mode;
    // The client secret (11 characters) across the cut at 200: 9, 8, 7 or 4 of its
    // characters would fall inside the quote if it were masked after cutting.
    for n in [191, 192, 193, 196] {
        let w = World::default().await;
        let config = w.config("", "");
        let p = w.spawn(&config);
        p.wait_ready(200, Duration::from_secs(10)).await;
        let rt = w.provider.current_refresh_token().unwrap();
        w.provider.set_mode(Mode::EchoAfter(n));
        let mut seen = force_refresh(&p, "demo").await.text().await.unwrap();
        seen += &get(&p.admin_url("/status")).await.1;
        let path = w.operator_config(&config, &p);
        let out = tokio::process::Command::new(binary())
            .args(["token", "status", "demo", "--json", "-c"])
            .arg(&path)
            .output()
            .await
            .unwrap();
        seen += &String::from_utf8_lossy(&out.stdout);
        assert!(seen.contains("AAAA"), "the description is quoted: {seen}");
        let (_, log) = tokio::task::spawn_blocking(move || p.stop_and_log())
            .await
            .unwrap();
        seen += &log;
        for secret in ["demo-secret", rt.as_str()] {
            let chars: Vec<char> = secret.chars().collect();
            for window in chars.windows(4) {
                let piece: String = window.iter().collect();
                // Plain words ("secr", "refr") occur in the log's own text, and
                // the refresh token's random hex can repeat a port or a time
                // ("7245" in "127.0.0.1:37245") by chance.
                if piece.chars().all(|c| c.is_ascii_lowercase())
                    || piece.chars().all(|c| c.is_ascii_digit())
                {
                    continue;
                }
                assert!(
                    !seen.contains(&piece),
                    "offset {n}: `{piece}` of a secret shown:\n{seen}"
                );
            }
        }
    }
}
