//! A panic while handling a request is answered with a 500 for that request alone,
//! counted, and logged as one structured line; the connection's other requests go
//! on. The server layer is driven in-process with a handler that panics on demand
//! (tokenproxy's own handlers have no known panic left to trigger).

use std::convert::Infallible;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use tokenproxy::body::ProxyBody;
use tokenproxy::config::ListenAddr;
use tokenproxy::metrics::Metrics;
use tokenproxy::server::{self, Limits, Listener, Reporting};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn handler(req: Request<Incoming>) -> Result<Response<ProxyBody>, Infallible> {
    if req.uri().path() == "/panic" {
        panic!("on purpose");
    }
    Ok(Response::new(ProxyBody::full("fine")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_request_is_answered_counted_logged_and_isolated() {
    let log = Captured::default();
    let sink = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_writer(move || sink.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();
    tokenproxy::log_panics();

    let listener = Listener::bind(&ListenAddr::Tcp("127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap();
    let ListenAddr::Tcp(addr) = listener.local().unwrap() else {
        unreachable!()
    };
    let metrics = Arc::new(Metrics::new());
    let limits = Limits {
        drain: Duration::from_secs(5),
        idle: Duration::from_secs(30),
        max_connections: 16,
        max_header_line: 8192,
        max_header_size: 65536,
        max_headers: 100,
    };
    let shutdown = CancellationToken::new();
    let served = tokio::spawn(server::serve(
        listener,
        handler,
        shutdown.clone(),
        limits,
        Reporting {
            metrics: Arc::clone(&metrics),
            label: "none",
        },
        None,
    ));

    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /panic HTTP/1.1\r\nHost: x\r\n\r\nGET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut reply = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert!(reply.starts_with("HTTP/1.1 500"), "{reply}");
    assert!(reply.contains("\"error\":\"internal\""), "{reply}");
    assert!(
        reply.contains("HTTP/1.1 200") && reply.ends_with("fine"),
        "{reply}"
    );

    let text = metrics.render([]);
    assert!(text.contains("tokenproxy_panics_total 1"), "{text}");
    assert!(
        text.contains(
            r#"tokenproxy_errors_total{error="internal",route="none",source="internal"} 1"#
        ),
        "{text}"
    );
    let logged = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = logged
        .lines()
        .filter(|l| l.contains("on purpose"))
        .collect();
    assert_eq!(lines.len(), 1, "{logged}");
    let line: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(line["level"], "ERROR");
    assert!(
        line["fields"]["location"]
            .as_str()
            .unwrap()
            .contains("panics.rs")
    );

    shutdown.cancel();
    served.await.unwrap();
}
