//! The configuration file as written: serde structs with `deny_unknown_fields` and
//! every default in one place. Nothing here is validated; `validate` does that.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::secret::SecretRef;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub listen: RawListen,
    #[serde(default)]
    pub tls: RawTls,
    #[serde(default)]
    pub store: RawStore,
    #[serde(default)]
    pub proxy: RawProxy,
    pub intercept: Option<RawIntercept>,
    #[serde(default)]
    pub callers: Vec<RawCaller>,
    #[serde(default)]
    pub tokens: BTreeMap<String, RawToken>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawListen {
    pub proxy: String,
    pub admin: String,
    /// A key callers must present, for hosts where several users share localhost.
    pub client_key: Option<SecretRef>,
    /// Where callers present it (default `Proxy-Authorization: Bearer <key>`).
    pub client_key_header: Option<String>,
    /// The key the admin listener's POST endpoints need (`Authorization: Bearer`).
    pub admin_key: Option<SecretRef>,
    /// The proxy listener speaks TLS with this certificate chain and key (PEM).
    pub tls_cert: Option<SecretRef>,
    pub tls_key: Option<SecretRef>,
    /// How often the certificate files are read again.
    #[serde(with = "humantime_serde")]
    pub tls_check: Duration,
    /// A proxy listener beyond loopback without TLS or keys, written on purpose.
    pub insecure_listen: bool,
}

impl Default for RawListen {
    fn default() -> Self {
        RawListen {
            proxy: "127.0.0.1:8080".into(),
            admin: "127.0.0.1:9090".into(),
            client_key: None,
            client_key_header: None,
            admin_key: None,
            tls_cert: None,
            tls_key: None,
            tls_check: Duration::from_secs(60),
            insecure_listen: false,
        }
    }
}

/// `[[callers]]`: who may use which tokens.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCaller {
    pub name: String,
    pub key: SecretRef,
    pub tokens: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub ca_file: Option<PathBuf>,
}

/// HTTPS interception of `CONNECT` to routed hosts; present means enabled.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawIntercept {
    /// `"auto"`: a CA created in the state directory at the first start.
    pub ca: Option<String>,
    pub ca_cert: Option<SecretRef>,
    pub ca_key: Option<SecretRef>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawStore {
    pub kind: String,
    pub path: PathBuf,
    /// Shared stores: where the server is.
    pub url: Option<SecretRef>,
    /// Shared stores: how long a lock outlives a holder that stopped renewing it.
    #[serde(with = "humantime_serde")]
    pub lease: Option<Duration>,
    /// Redis: the start of every key.
    pub prefix: Option<String>,
    /// AES-256 key (64 hex digits or base64) for the tokens at rest, any store kind.
    pub encryption_key: Option<SecretRef>,
    /// Keys that encrypted earlier records, still accepted for reading.
    pub previous_encryption_keys: Vec<SecretRef>,
}

impl Default for RawStore {
    fn default() -> Self {
        RawStore {
            kind: "file".into(),
            path: "./tokenproxy-state".into(),
            url: None,
            lease: None,
            prefix: None,
            encryption_key: None,
            previous_encryption_keys: Vec::new(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawProxy {
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub response_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub pool_idle_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    pub replay_body_limit: usize,
    /// Request bodies larger than this are refused with 413 (0: no limit).
    pub max_request_body: u64,
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// Open client connections per listener at most (0: sized from the open-file limit).
    pub max_connections: usize,
    pub max_header_line: usize,
    pub max_header_size: usize,
    /// Header fields in one request head at most.
    pub max_headers: usize,
}

impl Default for RawProxy {
    fn default() -> Self {
        RawProxy {
            connect_timeout: Duration::from_secs(10),
            response_timeout: Duration::from_secs(300),
            pool_idle_timeout: Duration::from_secs(90),
            drain_timeout: Duration::from_secs(30),
            replay_body_limit: 1024 * 1024,
            max_request_body: 0,
            idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(60),
            max_connections: 0,
            max_header_line: 8 * 1024,
            max_header_size: 64 * 1024,
            max_headers: 100,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawToken {
    /// Provider defaults; see `preset`.
    pub preset: Option<String>,
    /// Fills `{region}` in a preset's token URL (Exact Online country, Zoho data centre).
    pub region: Option<String>,
    /// Fills `{tenant}` in a preset's token URL (Microsoft Entra).
    pub tenant: Option<String>,

    pub grant: Option<String>,
    pub token_url: Option<String>,
    /// RFC 8414 / OpenID discovery instead of `token_url`.
    pub issuer: Option<String>,

    pub client_id: Option<SecretRef>,
    pub client_secret: Option<SecretRef>,
    pub client_auth: Option<String>,
    pub refresh_token: Option<SecretRef>,
    pub username: Option<SecretRef>,
    pub password: Option<SecretRef>,

    /// PEM private key for `jwt_bearer` assertions and `private_key_jwt` client auth.
    pub private_key: Option<SecretRef>,
    pub key_id: Option<String>,
    /// A Google service account key (JSON): client email, private key and key id in one.
    pub service_account: Option<SecretRef>,
    pub jwt_issuer: Option<String>,
    pub jwt_subject: Option<String>,
    pub jwt_audience: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub jwt_lifetime: Option<Duration>,
    pub scope_in_assertion: Option<bool>,

    /// Mutual TLS to the token endpoint (RFC 8705): PEM certificate chain and key.
    pub client_cert: Option<SecretRef>,
    pub client_cert_key: Option<SecretRef>,

    /// For `tokenproxy login`: the provider's authorization endpoint, where the
    /// browser goes, and where it comes back.
    pub authorize_url: Option<String>,
    pub redirect_uri: Option<String>,
    #[serde(default)]
    pub authorize_params: BTreeMap<String, String>,

    pub scope: Option<String>,
    pub scope_on_refresh: Option<bool>,
    pub audience: Option<String>,
    pub resource: Option<String>,
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    #[serde(default)]
    pub headers: BTreeMap<String, SecretRef>,
    #[serde(default, with = "humantime_serde")]
    pub refresh_before: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub min_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub default_lifetime: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Shared stores: what to do with a refresh token whose refresh stayed in
    /// doubt for the whole grace.
    pub in_doubt: Option<InDoubt>,
    /// `GET /tokenproxy/v1/tokens/NAME` answers callers that list the token.
    #[serde(default)]
    pub vend: bool,
    /// Files that hold the current access token.
    #[serde(default)]
    pub sinks: Vec<RawSink>,
}

/// `[[tokens.NAME.sinks]]`: a file that holds the current access token.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSink {
    pub path: PathBuf,
    pub format: Option<String>,
    /// Octal, as a string (`"0640"`).
    pub mode: Option<String>,
}

/// What an instance does with a refresh token another refresh may already have
/// spent (its request was sent, no answer was ever stored), once the grace ended.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum InDoubt {
    /// Present it once, logged and counted: providers that did not process the
    /// lost request, or that allow a retry of the last one (Xero), carry on.
    #[default]
    Retry,
    /// Stop and wait for a person (`tokenproxy login` or `seed`): for providers
    /// where a second presentation revokes the whole grant.
    NeedsLogin,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: Option<String>,
    pub prefix: Option<String>,
    pub host: Option<String>,
    pub upstream: String,
    pub token: String,
    /// Default: the token's preset format, else `Authorization: Bearer {token}`.
    pub inject: Option<String>,
    #[serde(default = "default_retry_on")]
    pub retry_on: Vec<u16>,
    /// `"pagination"` (default), `"all"` or `"off"`; `true`/`false` mean `"all"`/`"off"`.
    pub rewrite_links: Option<RawRewriteLinks>,
    /// `false`: the request path goes upstream whole (for APIs whose links are
    /// absolute paths, such as Salesforce's `nextRecordsUrl`).
    #[serde(default = "yes")]
    pub strip_prefix: bool,
    /// Static headers added to every upstream request (e.g. `Xero-Tenant-Id`).
    #[serde(default)]
    pub headers: BTreeMap<String, SecretRef>,
    /// Static rate limits (`"60/1m"`); default: the preset's.
    pub limits: Option<Vec<String>>,
    /// Longest a request waits for room in a rate-limit window.
    #[serde(default, with = "humantime_serde")]
    pub max_wait: Option<Duration>,
    /// Requests waiting for room at most, per quota key.
    pub max_waiting: Option<usize>,
    /// `"route"` or `"path:N"`; default: the preset's.
    pub quota_key: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub enum RawRewriteLinks {
    Flag(bool),
    Mode(String),
}

fn yes() -> bool {
    true
}

fn default_retry_on() -> Vec<u16> {
    vec![401]
}
