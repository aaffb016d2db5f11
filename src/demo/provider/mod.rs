//! The fake provider's token endpoint, with the behaviours of real ones.

use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::Engine;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;

use super::serve::{FakeBody, json_resp, serve};

mod checks;
mod issue;
mod options;
mod pages;

use checks::check_client;
pub use options::{ApiAuth, ErrorStyle, ExpectAuth, ExpiresIn, Mode, ProviderOptions, VerifyKey};

/// One token request as received, for tests to inspect.
#[derive(Clone, Debug, Default)]
pub struct Received {
    pub headers: HeaderMap,
    pub form: Vec<(String, String)>,
    /// Claims of a verified `assertion` or `client_assertion`.
    pub claims: Option<Value>,
}

impl Received {
    pub fn field(&self, key: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

pub(super) struct State {
    pub opts: ProviderOptions,
    pub mode: Mode,
    pub issued: u64,
    pub last_issue: Option<Instant>,
    pub refresh_current: Option<String>,
    pub refresh_spent: HashSet<String>,
    pub chain_revoked: bool,
    pub access_current: Option<(String, Instant)>,
    pub token_requests: u64,
    pub reuse_detected: u64,
    /// Every access and refresh token ever issued, for leak checks.
    pub all_tokens: Vec<String>,
    pub last: Option<Received>,
    /// Authorization codes issued: code → (PKCE challenge, redirect URI).
    pub codes: std::collections::HashMap<String, (String, String)>,
    /// Whether the "user" approves authorization requests.
    pub consent: bool,
    /// Each rotated refresh token with when it was issued.
    pub rotations: Vec<(Instant, String)>,
    /// The simulated rate limits' counts.
    pub quotas: crate::demo::quota::SimQuotas,
}

/// The running token endpoint and API. Dropping it does not stop the servers;
/// they end with the runtime.
#[derive(Clone)]
pub struct Provider {
    pub(super) state: Arc<Mutex<State>>,
    pub(super) api_connections: Arc<AtomicU64>,
    pub(super) api_requests: Arc<AtomicU64>,
    /// Opens `…/hold` requests once it turns true ([`Provider::release_held`]).
    pub(super) held: Arc<tokio::sync::watch::Sender<bool>>,
    /// Token requests being answered right now.
    in_flight: Arc<AtomicU64>,
    /// Connections to the token endpoint still open.
    token_open: Arc<AtomicU64>,
    /// `scheme://localhost:PORT`, the issuer for discovery.
    pub issuer: String,
    /// Where `tokenproxy login` sends the browser (auto-consent, for tests).
    pub authorize_url: String,
    pub token_url: String,
    pub api_url: String,
}

impl Provider {
    pub async fn start(opts: ProviderOptions) -> std::io::Result<Provider> {
        let scheme = if opts.tls.is_some() { "https" } else { "http" };
        let tls = opts.tls.clone();
        let token_tls = opts.token_tls.clone().or_else(|| tls.clone());
        let token_listener = TcpListener::bind("127.0.0.1:0").await?;
        let api_listener = TcpListener::bind("127.0.0.1:0").await?;
        let base = |l: &TcpListener| {
            l.local_addr()
                .map(|a| format!("{scheme}://localhost:{}", a.port()))
        };
        let issuer = base(&token_listener)?;
        let provider = Provider {
            token_url: format!("{issuer}/token"),
            authorize_url: format!("{issuer}/authorize"),
            api_url: format!("{}/", base(&api_listener)?),
            issuer,
            state: Arc::new(Mutex::new(State {
                refresh_current: Some(opts.initial_refresh_token.clone()),
                all_tokens: vec![opts.initial_refresh_token.clone()],
                opts,
                mode: Mode::Normal,
                issued: 0,
                last_issue: None,
                refresh_spent: HashSet::new(),
                chain_revoked: false,
                access_current: None,
                token_requests: 0,
                reuse_detected: 0,
                last: None,
                codes: Default::default(),
                consent: true,
                rotations: Vec::new(),
                quotas: Default::default(),
            })),
            api_connections: Arc::default(),
            api_requests: Arc::default(),
            held: Arc::new(tokio::sync::watch::Sender::new(false)),
            in_flight: Arc::default(),
            token_open: Arc::default(),
        };
        let p = provider.clone();
        tokio::spawn(serve(
            token_listener,
            token_tls,
            Arc::default(),
            provider.token_open.clone(),
            move |req| {
                let p = p.clone();
                async move { p.token_endpoint(req).await }
            },
        ));
        let p = provider.clone();
        tokio::spawn(serve(
            api_listener,
            tls,
            provider.api_connections.clone(),
            Arc::default(),
            move |req| {
                let p = p.clone();
                async move { p.api(req).await }
            },
        ));
        Ok(provider)
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
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

    /// Every access and refresh token issued so far, the initial refresh token included.
    pub fn all_tokens(&self) -> Vec<String> {
        self.lock().all_tokens.clone()
    }

    /// Whether a reused refresh token revoked the whole grant.
    pub fn chain_revoked(&self) -> bool {
        self.lock().chain_revoked
    }

    pub fn current_refresh_token(&self) -> Option<String> {
        self.lock().refresh_current.clone()
    }

    /// Whether the "user" approves the next authorization requests.
    pub fn set_consent(&self, consent: bool) {
        self.lock().consent = consent;
    }

    /// Every rotation so far: when, and the refresh token issued.
    pub fn rotations(&self) -> Vec<(Instant, String)> {
        self.lock().rotations.clone()
    }

    /// The last token request received.
    pub fn last_request(&self) -> Option<Received> {
        self.lock().last.clone()
    }

    /// Token requests received but not yet answered.
    pub fn token_requests_in_flight(&self) -> u64 {
        self.in_flight.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Connections to the token endpoint not yet closed. Once a client is gone and
    /// this is zero, every request it sent has been read and answered.
    pub fn token_connections_open(&self) -> u64 {
        self.token_open.load(std::sync::atomic::Ordering::SeqCst)
    }

    async fn token_endpoint(&self, req: Request<Incoming>) -> Response<FakeBody> {
        use std::sync::atomic::Ordering;
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let answer = self.answer_token_request(req).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        answer
    }

    async fn answer_token_request(&self, req: Request<Incoming>) -> Response<FakeBody> {
        if req.uri().path().starts_with("/.well-known/") {
            return self.metadata(req.uri().path());
        }
        if req.uri().path() == "/authorize" {
            return self.authorize(req.uri());
        }
        let headers = req.headers().clone();
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let mut received = Received {
            headers,
            form: form_urlencoded::parse(&body).into_owned().collect(),
            claims: None,
        };
        let mode = {
            let mut s = self.lock();
            s.token_requests += 1;
            s.last = Some(received.clone());
            s.mode
        };
        let echoed = || {
            let headers: Vec<String> = received
                .headers
                .iter()
                .map(|(k, v)| format!("{k}: {}", String::from_utf8_lossy(v.as_bytes())))
                .collect();
            format!("{} {}", String::from_utf8_lossy(&body), headers.join("; "))
        };
        match mode {
            Mode::Normal => {}
            Mode::SlowOk(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
            Mode::Echo => {
                return json_resp(
                    StatusCode::BAD_REQUEST,
                    json!({"error": "invalid_request", "error_description": format!("cannot use {}", echoed())}),
                );
            }
            Mode::EchoAfter(n) => {
                let field = |k: &str| {
                    received
                        .form
                        .iter()
                        .find(|(name, _)| name == k)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default()
                };
                let text = format!(
                    "{}{} {}",
                    "A".repeat(n),
                    field("client_secret"),
                    field("refresh_token")
                );
                return json_resp(
                    StatusCode::BAD_REQUEST,
                    json!({"error": "invalid_request", "error_description": text}),
                );
            }
            Mode::EchoHtml => {
                let mut r = Response::new(FakeBody::full(format!(
                    "<html><body><h1>Error</h1><pre>{}</pre></body></html>",
                    echoed()
                )));
                *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                return r;
            }
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
                r.headers_mut()
                    .insert(CONTENT_TYPE, http::HeaderValue::from_static("text/html"));
                return r;
            }
            Mode::Hang => std::future::pending::<()>().await,
            Mode::InvalidGrantAfter(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                return self.error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "refresh token already used",
                );
            }
            Mode::InvalidGrant => {
                return self.error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "refresh token revoked",
                );
            }
            Mode::NoAccessToken => {
                return json_resp(StatusCode::OK, json!({"token_type": "bearer"}));
            }
            Mode::EmptyOk => return Response::new(FakeBody::full("")),
            Mode::Truncated => {
                return Response::new(FakeBody::full(r#"{"access_token": "demo-at-trunc"#));
            }
            Mode::Huge => {
                return Response::new(FakeBody::Repeat {
                    head: Some(bytes::Bytes::from_static(b"{\"padding\": \"")),
                    chunk: bytes::Bytes::from(vec![b'x'; 64 * 1024]),
                    count: 160,
                    tail: Some(bytes::Bytes::from_static(
                        b"\", \"access_token\": \"never-read\"}",
                    )),
                });
            }
            Mode::RateLimited(secs) => {
                let mut r = self.error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "slow_down",
                    "too many requests",
                );
                r.headers_mut()
                    .insert(http::header::RETRY_AFTER, secs.into());
                return r;
            }
        }
        let answer = self.issue(&mut received);
        self.lock().last = Some(received);
        answer
    }

    fn error(&self, status: StatusCode, code: &str, description: &str) -> Response<FakeBody> {
        let style = self.lock().opts.error_style;
        match style {
            ErrorStyle::OAuth => json_resp(
                status,
                json!({"error": code, "error_description": description}),
            ),
            ErrorStyle::HubSpot => {
                let status_word = if code == "invalid_grant" {
                    "BAD_REFRESH_TOKEN"
                } else {
                    "BAD_REQUEST"
                };
                json_resp(
                    status,
                    json!({"status": status_word, "message": description}),
                )
            }
            ErrorStyle::OkStatus => json_resp(StatusCode::OK, json!({"error": code})),
        }
    }
}
