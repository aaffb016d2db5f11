//! The fake provider's token endpoint, with the behaviours of real ones.

use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;

use super::serve::{FakeBody, json_resp, serve};

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
    /// `invalid_grant` after this many milliseconds (a refusal that arrives while
    /// another process stores a newer token).
    InvalidGrantAfter(u64),
    /// A normal answer after this many milliseconds.
    SlowOk(u64),
    /// 200 without an `access_token`.
    NoAccessToken,
    /// 429 with `Retry-After`.
    RateLimited(u64),
    /// 200 with an empty body.
    EmptyOk,
    /// 200 with JSON cut off in the middle.
    Truncated,
    /// 200 with a 10 MiB body.
    Huge,
    /// 400 `invalid_request` whose `error_description` quotes the request form
    /// (refresh token and client secret included), as careless servers do.
    Echo,
    /// 500 with an HTML page that quotes the request form and headers.
    EchoHtml,
    /// 400 `invalid_request` whose `error_description` is this many `A`s, then the
    /// client secret and the refresh token the request carried: a secret across
    /// the point where a quote is cut.
    EchoAfter(usize),
}

/// How `expires_in` appears in token responses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpiresIn {
    /// `"expires_in": "600"` (Exact Online, Entra v1).
    String,
    /// `"expires_in": 600`.
    Number,
    /// Not at all (Salesforce, sometimes Zoho).
    Absent,
}

/// How the client must authenticate at the token endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpectAuth {
    /// `client_id` and `client_secret` in the form.
    Post,
    /// HTTP Basic, each part form-urlencoded (RFC 6749 §2.3.1).
    Basic,
    /// Either of the above.
    Secret,
    /// A `client_assertion` signed with `ProviderOptions::verify_key`.
    PrivateKeyJwt,
    /// Nothing: the grant authenticates (JWT bearer) or the client is public.
    Nothing,
}

/// How errors are shaped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorStyle {
    /// RFC 6749 §5.2: `{"error": …, "error_description": …}` with 400/401.
    OAuth,
    /// HubSpot: `{"status": "BAD_REFRESH_TOKEN", "message": …}`.
    HubSpot,
    /// Zoho: the OAuth body, but with HTTP 200.
    OkStatus,
}

/// A public key for checking JWT assertions: ring's algorithm and the key bytes.
#[derive(Clone)]
pub struct VerifyKey {
    pub alg: &'static dyn ring::signature::VerificationAlgorithm,
    pub public_key: Vec<u8>,
}

#[derive(Clone)]
pub struct ProviderOptions {
    pub lifetime: Duration,
    pub expires_in: ExpiresIn,
    /// The lifetime the token response states, when it is not the real one (a
    /// provider that says `expires_in: 0` of a token the API accepts for an hour).
    pub stated_lifetime: Option<Duration>,
    /// Issue a new refresh token with every refresh and refuse the old one.
    pub rotate: bool,
    /// Send back the refresh token that was used (HubSpot) when not rotating.
    pub echo_refresh_token: bool,
    pub client_id: String,
    pub client_secret: String,
    pub expect_auth: ExpectAuth,
    pub initial_refresh_token: String,
    /// For the password grant.
    pub username: String,
    pub password: String,
    /// Refuse refreshes sooner than this after the last issue (Exact Online: 570 s).
    pub min_interval: Duration,
    pub error_style: ErrorStyle,
    /// Form fields every token request must carry, such as `resource`.
    pub require: Vec<(String, String)>,
    /// Fields added to every token response; `{api}` in a string value becomes the
    /// API's base URL without its final slash (for `instance_url`, `api_domain`).
    pub extra: Map<String, Value>,
    /// Checks `assertion` (JWT bearer grant) and `client_assertion` signatures.
    pub verify_key: Option<VerifyKey>,
    /// Serve both endpoints over TLS (with ALPN h2 and http/1.1) instead of plain HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// A different TLS configuration for the token endpoint only (one that requires
    /// client certificates, for RFC 8705).
    pub token_tls: Option<Arc<rustls::ServerConfig>>,
    /// How the API expects the token: `Authorization: <prefix><token>` by default.
    pub api_auth: ApiAuth,
}

/// Where the API looks for the access token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiAuth {
    Header { name: String, prefix: String },
    Query { param: String },
}

impl Default for ProviderOptions {
    fn default() -> Self {
        ProviderOptions {
            lifetime: Duration::from_secs(30),
            expires_in: ExpiresIn::String,
            stated_lifetime: None,
            rotate: true,
            echo_refresh_token: false,
            client_id: "demo-client".into(),
            client_secret: "demo-secret".into(),
            expect_auth: ExpectAuth::Secret,
            initial_refresh_token: "demo-refresh-0".into(),
            username: "demo-user".into(),
            password: "demo-password".into(),
            min_interval: Duration::ZERO,
            error_style: ErrorStyle::OAuth,
            require: Vec::new(),
            extra: Map::new(),
            verify_key: None,
            tls: None,
            token_tls: None,
            api_auth: ApiAuth::Header {
                name: "authorization".into(),
                prefix: "Bearer ".into(),
            },
        }
    }
}

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
}

/// The running token endpoint and API. Dropping it does not stop the servers;
/// they end with the runtime.
#[derive(Clone)]
pub struct Provider {
    pub(super) state: Arc<Mutex<State>>,
    pub(super) api_connections: Arc<AtomicU64>,
    pub(super) api_requests: Arc<AtomicU64>,
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
            })),
            api_connections: Arc::default(),
            api_requests: Arc::default(),
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

    /// Checks the client and the grant, and issues tokens.
    fn issue(&self, received: &mut Received) -> Response<FakeBody> {
        let field = |k: &str| received.field(k).map(str::to_owned);
        let mut s = self.lock();
        let opts = s.opts.clone();
        for (k, v) in &opts.require {
            if field(k).as_deref() != Some(v.as_str()) {
                drop(s);
                return self.error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    &format!("{k} is required"),
                );
            }
        }
        if let Err(why) = check_client(&opts, received) {
            drop(s);
            return self.error(StatusCode::UNAUTHORIZED, "invalid_client", &why);
        }
        let mut response = Map::new();
        match field("grant_type").as_deref() {
            Some("refresh_token") => {
                let presented = field("refresh_token").unwrap_or_default();
                if s.refresh_spent.contains(&presented) {
                    s.reuse_detected += 1;
                    s.chain_revoked = true;
                    s.access_current = None;
                    drop(s);
                    return self.error(
                        StatusCode::BAD_REQUEST,
                        "invalid_grant",
                        "refresh token reused; every token of the grant is revoked",
                    );
                }
                if s.chain_revoked || s.refresh_current.as_deref() != Some(presented.as_str()) {
                    drop(s);
                    return self.error(
                        StatusCode::BAD_REQUEST,
                        "invalid_grant",
                        "unknown refresh token",
                    );
                }
                if s.last_issue
                    .is_some_and(|t| t.elapsed() < opts.min_interval)
                {
                    drop(s);
                    return self.error(
                        StatusCode::BAD_REQUEST,
                        "access_denied",
                        "Rate limit exceeded: access_token not expired",
                    );
                }
                if opts.rotate {
                    s.refresh_spent.insert(presented);
                    let next = format!("demo-rt-{}-{:016x}", s.issued + 1, fastrand::u64(..));
                    s.refresh_current = Some(next.clone());
                    s.all_tokens.push(next.clone());
                    s.rotations.push((Instant::now(), next.clone()));
                    response.insert("refresh_token".into(), next.into());
                } else if opts.echo_refresh_token {
                    response.insert("refresh_token".into(), presented.into());
                }
            }
            Some("client_credentials") => {}
            Some("authorization_code") => {
                let code = field("code").unwrap_or_default();
                let verifier = field("code_verifier").unwrap_or_default();
                let digest = ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes());
                let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest);
                match s.codes.remove(&code) {
                    Some((want, redirect))
                        if want == challenge
                            && Some(redirect.as_str()) == field("redirect_uri").as_deref() => {}
                    _ => {
                        drop(s);
                        return self.error(
                            StatusCode::BAD_REQUEST,
                            "invalid_grant",
                            "bad code, redirect_uri or code_verifier",
                        );
                    }
                }
                // A login starts a new chain.
                let rt = format!("demo-rt-login-{:016x}", fastrand::u64(..));
                s.refresh_current = Some(rt.clone());
                s.chain_revoked = false;
                s.all_tokens.push(rt.clone());
                response.insert("refresh_token".into(), rt.into());
                response.insert("scope".into(), "read write".into());
            }
            Some("password") => {
                if field("username").as_deref() != Some(opts.username.as_str())
                    || field("password").as_deref() != Some(opts.password.as_str())
                {
                    drop(s);
                    return self.error(
                        StatusCode::BAD_REQUEST,
                        "invalid_grant",
                        "wrong username or password",
                    );
                }
            }
            Some("urn:ietf:params:oauth:grant-type:jwt-bearer") => {
                match verify_jwt(&opts, field("assertion").as_deref()) {
                    Ok(claims) => received.claims = Some(claims),
                    Err(why) => {
                        drop(s);
                        return self.error(StatusCode::BAD_REQUEST, "invalid_grant", &why);
                    }
                }
            }
            other => {
                drop(s);
                return self.error(
                    StatusCode::BAD_REQUEST,
                    "unsupported_grant_type",
                    &format!("grant_type {other:?}"),
                );
            }
        }
        if opts.expect_auth == ExpectAuth::PrivateKeyJwt {
            received.claims = verify_jwt(&opts, received.field("client_assertion")).ok();
        }
        s.issued += 1;
        s.last_issue = Some(Instant::now());
        let access = format!("demo-at-{}-{:016x}", s.issued, fastrand::u64(..));
        s.access_current = Some((access.clone(), Instant::now() + opts.lifetime));
        s.all_tokens.push(access.clone());
        response.insert("access_token".into(), access.into());
        response.insert("token_type".into(), "bearer".into());
        let secs = opts.stated_lifetime.unwrap_or(opts.lifetime).as_secs_f64();
        match opts.expires_in {
            ExpiresIn::String => {
                response.insert("expires_in".into(), secs.to_string().into());
            }
            ExpiresIn::Number => {
                response.insert("expires_in".into(), json!(secs));
            }
            ExpiresIn::Absent => {}
        }
        let api_base = self.api_url.trim_end_matches('/');
        for (k, v) in &opts.extra {
            let v = match v {
                Value::String(t) => Value::String(t.replace("{api}", api_base)),
                other => other.clone(),
            };
            response.insert(k.clone(), v);
        }
        json_resp(StatusCode::OK, Value::Object(response))
    }

    /// The user's side of RFC 6749 §4.1.1, decided at once: a redirect back with a
    /// code (or `access_denied`), after checking what a real server checks.
    fn authorize(&self, uri: &http::Uri) -> Response<FakeBody> {
        let q: std::collections::HashMap<String, String> =
            form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
                .into_owned()
                .collect();
        let mut s = self.lock();
        let bad = if q.get("response_type").map(String::as_str) != Some("code") {
            Some("response_type must be code")
        } else if q.get("client_id") != Some(&s.opts.client_id) {
            Some("unknown client_id")
        } else if q.get("code_challenge_method").map(String::as_str) != Some("S256")
            || !q.contains_key("code_challenge")
        {
            Some("PKCE S256 is required")
        } else if !q.contains_key("state") {
            Some("state is required")
        } else {
            None
        };
        let Some(redirect) = q.get("redirect_uri").filter(|_| bad.is_none()) else {
            drop(s);
            return self.error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                bad.unwrap_or("redirect_uri is required"),
            );
        };
        let state = form_urlencoded::byte_serialize(q["state"].as_bytes()).collect::<String>();
        let location = if s.consent {
            let code = format!("code-{:016x}", fastrand::u64(..));
            s.codes.insert(
                code.clone(),
                (q["code_challenge"].clone(), redirect.clone()),
            );
            format!("{redirect}?code={code}&state={state}")
        } else {
            format!(
                "{redirect}?error=access_denied&error_description=The+user+denied+access&state={state}"
            )
        };
        let mut r = Response::new(FakeBody::full(""));
        *r.status_mut() = StatusCode::FOUND;
        if let Ok(v) = http::HeaderValue::try_from(location) {
            r.headers_mut().insert(http::header::LOCATION, v);
        }
        r
    }

    /// RFC 8414 metadata at the well-known location for the issuer.
    fn metadata(&self, path: &str) -> Response<FakeBody> {
        if path != "/.well-known/oauth-authorization-server" {
            return json_resp(StatusCode::NOT_FOUND, json!({"error": "not_found"}));
        }
        let methods = match self.lock().opts.expect_auth {
            ExpectAuth::Basic => vec!["client_secret_basic"],
            ExpectAuth::Post => vec!["client_secret_post"],
            ExpectAuth::PrivateKeyJwt => vec!["private_key_jwt"],
            ExpectAuth::Secret => vec!["client_secret_basic", "client_secret_post"],
            ExpectAuth::Nothing => vec!["none"],
        };
        json_resp(
            StatusCode::OK,
            json!({
                "issuer": self.issuer,
                "token_endpoint": self.token_url,
                "token_endpoint_auth_methods_supported": methods,
                "grant_types_supported": ["refresh_token", "client_credentials", "password"],
            }),
        )
    }
}

/// RFC 6749 §2.3.1 and RFC 7523 §2.2, as the options expect.
fn check_client(opts: &ProviderOptions, r: &Received) -> Result<(), String> {
    let basic = r
        .headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .map(|b64| {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap_or_default();
            let raw = String::from_utf8_lossy(&raw).into_owned();
            let (i, p) = raw.split_once(':').unwrap_or((&raw, ""));
            let dec = |x: &str| -> String {
                form_urlencoded::parse(format!("x={x}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default()
            };
            (dec(i), dec(p))
        });
    let in_form = (r.field("client_id"), r.field("client_secret"));
    let good = |id: &str, secret: &str| id == opts.client_id && secret == opts.client_secret;
    let by_basic = basic.as_ref().is_some_and(|(i, p)| good(i, p));
    let by_form = matches!(in_form, (Some(i), Some(p)) if good(i, p));
    if basic.is_some() && in_form.1.is_some() {
        return Err("two client authentication methods at once".into());
    }
    let ok = match opts.expect_auth {
        ExpectAuth::Post => by_form,
        ExpectAuth::Basic => by_basic,
        ExpectAuth::Secret => by_form || by_basic,
        ExpectAuth::Nothing => basic.is_none() && in_form.1.is_none(),
        ExpectAuth::PrivateKeyJwt => {
            r.field("client_assertion_type")
                == Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
                && verify_jwt(opts, r.field("client_assertion"))
                    .is_ok_and(|c| c["iss"] == opts.client_id && c["sub"] == opts.client_id)
        }
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "client authentication failed (expected {:?})",
            opts.expect_auth
        ))
    }
}

/// Checks an assertion's signature and times; returns its claims.
fn verify_jwt(opts: &ProviderOptions, jwt: Option<&str>) -> Result<Value, String> {
    let key = opts
        .verify_key
        .as_ref()
        .ok_or("no key to verify assertions")?;
    let jwt = jwt.ok_or("no assertion")?;
    let parts: Vec<&str> = jwt.split('.').collect();
    let [h, c, sig] = parts[..] else {
        return Err("not a JWT".into());
    };
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let sig = b64.decode(sig).map_err(|_| "bad signature encoding")?;
    ring::signature::UnparsedPublicKey::new(key.alg, &key.public_key)
        .verify(format!("{h}.{c}").as_bytes(), &sig)
        .map_err(|_| "Invalid JWT Signature.")?;
    let claims: Value = serde_json::from_slice(&b64.decode(c).map_err(|_| "bad claims")?)
        .map_err(|_| "bad claims")?;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (iat, exp) = (
        claims["iat"].as_u64().unwrap_or(0),
        claims["exp"].as_u64().unwrap_or(0),
    );
    if exp <= now || exp > iat + 3600 || iat > now + 60 {
        return Err("Invalid JWT: Token must be a short-lived token".into());
    }
    Ok(claims)
}
