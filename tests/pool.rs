//! Upstream connections: kept alive and reused, let go when the upstream closes
//! them or they idle past `pool_idle_timeout`, closed when their response is
//! abandoned halfway.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// How the test upstream ends a connection.
#[derive(Clone, Copy, PartialEq)]
enum After {
    /// Keeps it open for the next request.
    KeepAlive,
    /// Closes it after each response, without a `Connection: close` header (as a
    /// server whose keep-alive timeout ran out does).
    Close,
    /// Promises 100 bytes, sends 10, and waits.
    Partial,
}

/// An HTTP/1.1 upstream on 127.0.0.1 answering every request with its connection
/// number, the request's number on that connection and the `Host` it got.
/// Reports on `closed` each connection it closed or saw closed.
struct Upstream {
    url: String,
    accepted: Arc<AtomicUsize>,
    closed: mpsc::UnboundedReceiver<usize>,
}

async fn upstream(after: After) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://127.0.0.1:{}/",
        listener.local_addr().unwrap().port()
    );
    let accepted = Arc::new(AtomicUsize::new(0));
    let (tx, closed) = mpsc::unbounded_channel();
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let conn = count.fetch_add(1, Ordering::SeqCst) + 1;
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut served = 0;
                loop {
                    let mut chunk = [0u8; 4096];
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    // Bodiless GETs: a request is complete at its blank line.
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_string();
                        buf.drain(..end + 4);
                        served += 1;
                        let host = head
                            .lines()
                            .find_map(|l| l.strip_prefix("host: ").or(l.strip_prefix("Host: ")))
                            .unwrap_or("")
                            .to_owned();
                        let body =
                            format!(r#"{{"conn":{conn},"request":{served},"host":"{host}"}}"#);
                        let reply = match after {
                            After::Partial => {
                                "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789".into()
                            }
                            _ => format!(
                                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                                body.len()
                            ),
                        };
                        if s.write_all(reply.as_bytes()).await.is_err() {
                            break;
                        }
                        if after == After::Close {
                            // Closed before the report, so that the proxy's end has
                            // the FIN by the time the test goes on.
                            drop(s);
                            let _ = tx.send(conn);
                            return;
                        }
                    }
                }
                let _ = tx.send(conn);
            });
        }
    });
    Upstream {
        url,
        accepted,
        closed,
    }
}

fn config(w: &World, upstream: &str, idle: &str) -> String {
    w.config(&format!("[proxy]\npool_idle_timeout = \"{idle}\"\n"), "")
        .replace(&w.provider.api_url, upstream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_requests_share_one_upstream_connection() {
    let w = World::default().await;
    let up = upstream(After::KeepAlive).await;
    let p = w.spawn(&config(&w, &up.url, "90s"));
    let port = up
        .url
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned();
    for i in 1..=50 {
        let (status, body) = get(&p.url("/demo/x")).await;
        assert_eq!(status, 200, "{body}");
        let v = json(&body);
        assert_eq!(v["conn"], 1, "request {i}: {body}");
        assert_eq!(v["request"], i, "{body}");
        assert_eq!(v["host"], format!("127.0.0.1:{port}"));
    }
    assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_the_upstream_closed_are_not_reused() {
    let w = World::default().await;
    let mut up = upstream(After::Close).await;
    let p = w.spawn(&config(&w, &up.url, "90s"));
    for i in 1..=10 {
        let (status, body) = get(&p.url("/demo/x")).await;
        assert_eq!(status, 200, "request {i}: {body}");
        assert_eq!(json(&body)["conn"], i, "{body}");
        // The upstream has closed that connection; the next request must not fail
        // on it.
        assert_eq!(up.closed.recv().await, Some(i));
    }
    assert_eq!(up.accepted.load(Ordering::SeqCst), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_abandoned_halfway_closes_its_upstream_connection() {
    let w = World::default().await;
    let mut up = upstream(After::Partial).await;
    let p = w.spawn(&config(&w, &up.url, "90s"));
    for i in 1..=3 {
        let mut r = client().get(p.url("/demo/x")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.chunk().await.unwrap().unwrap(), "0123456789");
        // The client gives up on the other 90 bytes: the upstream connection, with
        // the rest of that response still due, is closed rather than pooled.
        drop(r);
        assert_eq!(up.closed.recv().await, Some(i));
    }
    assert_eq!(up.accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let w = World::default().await;
    let mut up = upstream(After::KeepAlive).await;
    let p = w.spawn(&config(&w, &up.url, "1s"));
    let (status, body) = get(&p.url("/demo/x")).await;
    assert_eq!(status, 200, "{body}");
    // The proxy closes it (the upstream never does): the upstream reads its end.
    let closed = tokio::time::timeout(Duration::from_secs(30), up.closed.recv())
        .await
        .expect("the idle connection is closed");
    assert_eq!(closed, Some(1));
    let (status, body) = get(&p.url("/demo/x")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["conn"], 2);
}
