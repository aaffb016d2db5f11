//! How the fake provider behaves: its modes and options.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

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
    /// Rate limits the API enforces per division, with Exact Online's headers.
    pub rate_limit: Option<crate::demo::RateLimitSim>,
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
            rate_limit: None,
        }
    }
}
