//! A local OAuth provider and API, for `tokenproxy demo` and for the tests.
//!
//! [`Provider`] runs two loopback servers that share one state:
//! - a token endpoint that behaves like strict real providers: it rotates refresh
//!   tokens, treats a reused refresh token as theft (RFC 9700 §4.14.2: the whole
//!   chain is revoked), checks client credentials in the body or in Basic auth, can
//!   send `expires_in` as a string (Exact Online), and can be switched into failure
//!   modes (5xx, HTML, hanging, `invalid_grant`, no `access_token`);
//! - an API that accepts only the current, unexpired access token and echoes what
//!   it received, with `/download?bytes=N` for large bodies, `/slow?ms=N` for
//!   requests in flight, and `/redirect` for `Location` handling.
//!
//! Counters (token requests, reuse detections, API connections) let tests assert
//! what happened on the wire. Nothing here is used by `tokenproxy run`.

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE};
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::json;
use tokio::net::TcpListener;

/// How the token endpoint answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Normal,
    /// 500 with an OAuth `temporarily_unavailable` body.
    ServerError,
    /// 502 with an HTML page, as a load balancer in front of a provider sends.
    Html,
    /// Accepts the request and never answers.
    Hang,
    /// 400 `invalid_grant`, as for a revoked refresh token.
    InvalidGrant,
    /// 200 without an `access_token`.
    NoAccessToken,
}

#[derive(Clone)]
pub struct ProviderOptions {
    pub lifetime: Duration,
    /// Send `expires_in` as a JSON string, as Exact Online does.
    pub expires_in_as_string: bool,
    /// Issue a new refresh token with every refresh and refuse the old one.
    pub rotate: bool,
    pub client_id: String,
    pub client_secret: String,
    pub initial_refresh_token: String,
    /// Serve both endpoints over TLS (with ALPN h2 and http/1.1) instead of plain HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Default for ProviderOptions {
    fn default() -> Self {
        ProviderOptions {
            lifetime: Duration::from_secs(30),
            expires_in_as_string: true,
            rotate: true,
            client_id: "demo-client".into(),
            client_secret: "demo-secret".into(),
            initial_refresh_token: "demo-refresh-0".into(),
            tls: None,
        }
    }
}

struct State {
    opts: ProviderOptions,
    mode: Mode,
    issued: u64,
    refresh_current: Option<String>,
    refresh_spent: HashSet<String>,
    chain_revoked: bool,
    access_current: Option<(String, Instant)>,
    token_requests: u64,
    reuse_detected: u64,
    /// Every access and refresh token ever issued, for leak checks.
    all_tokens: Vec<String>,
}

/// The running token endpoint and API. Dropping it does not stop the servers;
/// they end with the runtime.
#[derive(Clone)]
pub struct Provider {
    state: Arc<Mutex<State>>,
    api_connections: Arc<AtomicU64>,
    api_requests: Arc<AtomicU64>,
    pub token_url: String,
    pub api_url: String,
}

impl Provider {
    pub async fn start(opts: ProviderOptions) -> std::io::Result<Provider> {
        let scheme = if opts.tls.is_some() { "https" } else { "http" };
        let tls = opts.tls.clone();
        let token_listener = TcpListener::bind("127.0.0.1:0").await?;
        let api_listener = TcpListener::bind("127.0.0.1:0").await?;
        let host = |l: &TcpListener| {
            l.local_addr()
                .map(|a| format!("{scheme}://localhost:{}", a.port()))
        };
        let provider = Provider {
            token_url: format!("{}/token", host(&token_listener)?),
            api_url: format!("{}/", host(&api_listener)?),
            state: Arc::new(Mutex::new(State {
                refresh_current: Some(opts.initial_refresh_token.clone()),
                all_tokens: vec![opts.initial_refresh_token.clone()],
                opts,
                mode: Mode::Normal,
                issued: 0,
                refresh_spent: HashSet::new(),
                chain_revoked: false,
                access_current: None,
                token_requests: 0,
                reuse_detected: 0,
            })),
            api_connections: Arc::default(),
            api_requests: Arc::default(),
        };
        let p = provider.clone();
        tokio::spawn(serve(token_listener, tls.clone(), None, move |req| {
            let p = p.clone();
            async move { p.token(req).await }
        }));
        let p = provider.clone();
        tokio::spawn(serve(
            api_listener,
            tls,
            Some(provider.api_connections.clone()),
            move |req| {
                let p = p.clone();
                async move { p.api(req).await }
            },
        ));
        Ok(provider)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_mode(&self, mode: Mode) {
        self.lock().mode = mode;
    }

    pub fn set_lifetime(&self, lifetime: Duration) {
        self.lock().opts.lifetime = lifetime;
    }

    /// Makes the API refuse the current access token, as a provider does after a
    /// password change or an admin revocation.
    pub fn revoke_access(&self) {
        self.lock().access_current = None;
    }

    /// Replaces the refresh token chain, as a new login would.
    pub fn reset_refresh_token(&self, token: &str) {
        let mut s = self.lock();
        s.refresh_current = Some(token.into());
        s.all_tokens.push(token.into());
        s.chain_revoked = false;
    }

    pub fn token_requests(&self) -> u64 {
        self.lock().token_requests
    }

    pub fn reuse_detected(&self) -> u64 {
        self.lock().reuse_detected
    }

    pub fn tokens_issued(&self) -> u64 {
        self.lock().issued
    }

    pub fn current_access_token(&self) -> Option<String> {
        self.lock().access_current.as_ref().map(|(t, _)| t.clone())
    }

    /// Every access and refresh token issued so far, the initial refresh token included.
    pub fn all_tokens(&self) -> Vec<String> {
        self.lock().all_tokens.clone()
    }

    pub fn current_refresh_token(&self) -> Option<String> {
        self.lock().refresh_current.clone()
    }

    pub fn api_requests(&self) -> u64 {
        self.api_requests.load(Ordering::SeqCst)
    }

    pub fn api_connections(&self) -> u64 {
        self.api_connections.load(Ordering::SeqCst)
    }

    async fn token(&self, req: Request<Incoming>) -> Response<FakeBody> {
        let basic = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let form: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
        let field = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());

        let mode = {
            let mut s = self.lock();
            s.token_requests += 1;
            s.mode
        };
        match mode {
            Mode::Normal => {}
            Mode::ServerError => {
                return json_resp(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json!({"error": "temporarily_unavailable"}),
                );
            }
            Mode::Html => {
                let mut r = Response::new(FakeBody::full(
                    "<html><body><h1>502 Bad Gateway</h1></body></html>",
                ));
                *r.status_mut() = StatusCode::BAD_GATEWAY;
                r.headers_mut().insert(
                    CONTENT_TYPE,
                    "text/html"
                        .parse()
                        .unwrap_or(http::HeaderValue::from_static("text/html")),
                );
                return r;
            }
            Mode::Hang => std::future::pending::<()>().await,
            Mode::InvalidGrant => {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "refresh token revoked",
                );
            }
            Mode::NoAccessToken => {
                return json_resp(StatusCode::OK, json!({"token_type": "bearer"}));
            }
        }

        let mut s = self.lock();
        let (id, secret) = match basic.as_deref().and_then(|b| b.strip_prefix("Basic ")) {
            Some(b64) => {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .unwrap_or_default();
                let raw = String::from_utf8_lossy(&raw).into_owned();
                let (i, p) = raw.split_once(':').unwrap_or((&raw, ""));
                let dec = |x: &str| {
                    form_urlencoded::parse(format!("x={x}").as_bytes())
                        .next()
                        .map(|(_, v)| v.into_owned())
                        .unwrap_or_default()
                };
                (dec(i), Some(dec(p)))
            }
            None => (
                field("client_id").unwrap_or("").to_owned(),
                field("client_secret").map(str::to_owned),
            ),
        };
        if id != s.opts.client_id || secret.as_deref() != Some(s.opts.client_secret.as_str()) {
            return oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "client authentication failed",
            );
        }
        let mut response = serde_json::Map::new();
        match field("grant_type") {
            Some("refresh_token") => {
                let presented = field("refresh_token").unwrap_or("");
                if s.refresh_spent.contains(presented) {
                    s.reuse_detected += 1;
                    s.chain_revoked = true;
                    s.access_current = None;
                    return oauth_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_grant",
                        "refresh token reused; every token of the grant is revoked",
                    );
                }
                if s.chain_revoked || s.refresh_current.as_deref() != Some(presented) {
                    return oauth_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_grant",
                        "unknown refresh token",
                    );
                }
                if s.opts.rotate {
                    s.refresh_spent.insert(presented.to_owned());
                    let next = format!("demo-rt-{}-{:016x}", s.issued + 1, fastrand::u64(..));
                    s.refresh_current = Some(next.clone());
                    s.all_tokens.push(next.clone());
                    response.insert("refresh_token".into(), next.into());
                }
            }
            Some("client_credentials") => {}
            other => {
                let msg = format!("grant_type {other:?} is not supported here");
                return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type", &msg);
            }
        }
        s.issued += 1;
        let access = format!("demo-at-{}-{:016x}", s.issued, fastrand::u64(..));
        let lifetime = s.opts.lifetime;
        s.access_current = Some((access.clone(), Instant::now() + lifetime));
        s.all_tokens.push(access.clone());
        response.insert("access_token".into(), access.into());
        response.insert("token_type".into(), "bearer".into());
        let secs = lifetime.as_secs_f64();
        response.insert(
            "expires_in".into(),
            if s.opts.expires_in_as_string {
                secs.to_string().into()
            } else {
                json!(secs)
            },
        );
        json_resp(StatusCode::OK, serde_json::Value::Object(response))
    }

    async fn api(&self, req: Request<Incoming>) -> Response<FakeBody> {
        self.api_requests.fetch_add(1, Ordering::SeqCst);
        let authorized = {
            let s = self.lock();
            let presented = req
                .headers()
                .get(AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            matches!((&s.access_current, presented), (Some((t, until)), Some(p)) if Instant::now() < *until && p.strip_prefix("Bearer ") == Some(t.as_str()))
        };
        if !authorized {
            let mut r = json_resp(StatusCode::UNAUTHORIZED, json!({"error": "invalid_token"}));
            r.headers_mut().insert(
                WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
            return r;
        }
        let (parts, body) = req.into_parts();
        match parts.uri.path() {
            "/download" => {
                let bytes = query_number(&parts.uri, "bytes");
                let mut r = Response::new(FakeBody::Zeros(bytes));
                r.headers_mut().insert(
                    CONTENT_TYPE,
                    http::HeaderValue::from_static("application/octet-stream"),
                );
                r
            }
            "/slow" => {
                let ms = query_number(&parts.uri, "ms");
                tokio::time::sleep(Duration::from_millis(ms)).await;
                json_resp(StatusCode::OK, json!({"slept_ms": ms}))
            }
            "/redirect" => {
                let mut r = Response::new(FakeBody::full(""));
                *r.status_mut() = StatusCode::FOUND;
                if let Ok(v) = format!("{}landed?from=redirect", self.api_url).parse() {
                    r.headers_mut().insert(LOCATION, v);
                }
                r
            }
            _ => {
                let body = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let headers: serde_json::Map<String, serde_json::Value> = parts
                    .headers
                    .iter()
                    .filter(|(k, _)| *k != AUTHORIZATION)
                    .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
                    .collect();
                json_resp(
                    StatusCode::OK,
                    json!({
                        "method": parts.method.as_str(),
                        "path": parts.uri.path(),
                        "query": parts.uri.query(),
                        "version": format!("{:?}", parts.version),
                        "headers": headers,
                        "body_len": body.len(),
                        "body": String::from_utf8_lossy(&body),
                    }),
                )
            }
        }
    }
}

/// A numeric query parameter, 0 when absent.
fn query_number(uri: &http::Uri, key: &str) -> u64 {
    uri.query()
        .and_then(|q| form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == key))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

fn oauth_error(status: StatusCode, code: &str, description: &str) -> Response<FakeBody> {
    json_resp(
        status,
        json!({"error": code, "error_description": description}),
    )
}

fn json_resp(status: StatusCode, body: serde_json::Value) -> Response<FakeBody> {
    let mut r = Response::new(FakeBody::full(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// Response bodies of the fake servers: bytes, or N zero bytes generated as they go.
pub enum FakeBody {
    Full(Option<Bytes>),
    Zeros(u64),
}

impl FakeBody {
    fn full(b: impl Into<Bytes>) -> Self {
        let b = b.into();
        FakeBody::Full((!b.is_empty()).then_some(b))
    }
}

static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

impl Body for FakeBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            FakeBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            FakeBody::Zeros(0) => Poll::Ready(None),
            FakeBody::Zeros(left) => {
                let n = (*left).min(ZEROS.len() as u64);
                *left -= n;
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
                    &ZEROS[..n as usize],
                )))))
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            FakeBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            FakeBody::Zeros(n) => SizeHint::with_exact(*n),
        }
    }
}

async fn serve<F, Fut>(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    connections: Option<Arc<AtomicU64>>,
    handler: F,
) where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<FakeBody>> + Send + 'static,
{
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        if let Some(c) = &connections {
            c.fetch_add(1, Ordering::SeqCst);
        }
        let handler = handler.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let h = handler.clone();
                async move { Ok::<_, Infallible>(h(req).await) }
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            let _ = match acceptor {
                Some(a) => match a.accept(stream).await {
                    Ok(tls) => builder.serve_connection(TokioIo::new(tls), service).await,
                    Err(_) => return,
                },
                None => {
                    builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await
                }
            };
        });
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("demo servers: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Start(#[from] crate::StartError),
}

/// `tokenproxy demo`: provider, API and proxy in one process, until Ctrl-C.
pub async fn run(listen: SocketAddr) -> Result<(), DemoError> {
    let provider = Provider::start(ProviderOptions::default()).await?;
    let dir = std::env::temp_dir().join(format!("tokenproxy-demo-{}", std::process::id()));
    let text = format!(
        r#"
[listen]
proxy = "{listen}"
admin = "127.0.0.1:0"

[store]
path = "{dir}"

[tokens.demo]
grant = "refresh_token"
token_url = "{token_url}"
client_id = "demo-client"
client_secret = "demo-secret"
refresh_token = "demo-refresh-0"
refresh_before = "10s"

[[routes]]
prefix = "/demo/"
upstream = "{api_url}"
token = "demo"
"#,
        dir = dir.display(),
        token_url = provider.token_url,
        api_url = provider.api_url,
    );
    let mut config = crate::config::Config::parse(&text, "demo.toml".as_ref())?;
    // The demo's credentials are deliberately literal and fake.
    config.warnings.clear();
    let running = crate::start(config).await?;
    let (proxy, admin) = (running.proxy_addr, running.admin_addr);
    println!(
        "tokenproxy demo is running.

  token endpoint  {token_url}  (30 s access tokens, rotating refresh tokens, reuse = revocation)
  API             {api_url}  (accepts only the current access token)
  proxy           http://{proxy}/demo/  →  API, with the token added
  admin           http://{admin}/status
  state           {dir}

Try:
  curl -s http://{proxy}/demo/hello?page=1           # echoed by the API: it saw a valid token
  curl -s http://{proxy}/demo/download?bytes=10000000 | wc -c
  curl -s http://{admin}/status                       # watch the generation grow every ~20 s
  curl -s -X POST http://{admin}/tokens/demo/refresh
  curl -s http://{proxy}/nowhere                      # 404: tokenproxy is not an open proxy

Ctrl-C stops it.",
        token_url = provider.token_url,
        api_url = provider.api_url,
        dir = dir.display(),
    );
    crate::server::shutdown_signal().await;
    running.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
