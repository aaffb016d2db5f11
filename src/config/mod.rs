//! The TOML configuration: its schema, and validation into types that cannot be wrong.
//!
//! Parsing happens in two stages. `raw` mirrors the file (serde,
//! `deny_unknown_fields`, defaults in one place); `validate` turns it into
//! [`Config`], where a [`Route`] always has a parsed upstream and the index of an
//! existing token, a [`TokenConfig`] holds exactly what its grant and client
//! authentication need, and every secret reference has been resolved once.
//! `preset` holds the provider defaults. Errors name the file, the key and the fix.
//! Nothing here reads global state except the secret references it checks.

mod describe;
mod preset;
mod raw;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{HeaderName, HeaderValue, StatusCode};

use crate::secret::SecretRef;

pub use preset::{PRESETS, Preset};
pub use raw::InDoubt;

/// A configuration problem: which file, which key, what is wrong, and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{file} is not a regular file (a FIFO, a device or a directory)\n  fix: point -c (or TOKENPROXY_CONFIG) at the configuration file itself"
    )]
    NotRegular { file: PathBuf },
    #[error(
        "{file} is larger than {} KiB; a tokenproxy configuration is a few KiB\n  fix: check that -c points at the configuration file",
        MAX_CONFIG / 1024
    )]
    TooLarge { file: PathBuf },
    #[error("{file}: {message}")]
    Parse { file: PathBuf, message: String },
    #[error("{file}: `{key}`: {problem}\n  fix: {fix}")]
    Invalid {
        file: PathBuf,
        key: String,
        problem: String,
        fix: String,
    },
}

/// The validated configuration.
#[derive(Debug)]
pub struct Config {
    /// The file it came from, for messages.
    pub file: PathBuf,
    pub listen: Listen,
    pub tls: Tls,
    pub store: StoreConfig,
    /// Keys for the tokens at rest: the current one, then older ones (read at start).
    pub store_keys: Option<(SecretRef, Vec<SecretRef>)>,
    pub proxy: ProxySettings,
    /// HTTPS interception of `CONNECT` to routed hosts, when configured.
    pub intercept: Option<Intercept>,
    pub tokens: Vec<TokenConfig>,
    pub routes: Vec<Route>,
    /// Things that are allowed but unwise (literal secrets); `check` prints them, `run` logs them.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Listen {
    pub proxy: ListenAddr,
    pub admin: SocketAddr,
    pub client_key: Option<ClientKey>,
    /// Needed by the admin POST endpoints; without it they answer only on a
    /// loopback admin listener.
    pub admin_key: Option<SecretRef>,
}

/// Where the proxy listens: a TCP address, or a Unix socket (`unix:/path`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// A key callers must present to use the proxy.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientKey {
    pub header: HeaderName,
    /// `Bearer <key>` (for `Proxy-Authorization`) rather than the bare key.
    pub bearer: bool,
    pub key: SecretRef,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tls {
    pub ca_file: Option<PathBuf>,
}

/// Where the interception CA comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Intercept {
    /// A CA made beforehand (`tokenproxy ca init`, or an organisation's own): PEM
    /// certificate and PKCS#8 key. Read at start, not at validation, so that
    /// `ca init` can run on a configuration whose files do not exist yet.
    Files { cert: SecretRef, key: SecretRef },
    /// `ca.pem` and `ca.key` in this directory (the file store's), created at the
    /// first start.
    Auto { dir: PathBuf },
}

impl Intercept {
    /// The files `tokenproxy ca init` writes, when the CA lives in files.
    pub fn files(&self) -> Option<(PathBuf, PathBuf)> {
        match self {
            Intercept::Auto { dir } => Some((dir.join("ca.pem"), dir.join("ca.key"))),
            Intercept::Files {
                cert: SecretRef::File(cert),
                key: SecretRef::File(key),
            } => Some((cert.clone(), key.clone())),
            Intercept::Files { .. } => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum StoreConfig {
    File {
        path: PathBuf,
    },
    /// Shared by every instance that names the same database.
    Postgres {
        url: SecretRef,
        /// A lock holder that stops renewing loses the lock after this long; longer
        /// than any token request's deadline.
        lease: Duration,
    },
    /// Shared by every instance that names the same server and prefix.
    Redis {
        url: SecretRef,
        /// Every key starts with it (`tokenproxy:` unless set).
        prefix: String,
        lease: Duration,
    },
}

impl StoreConfig {
    /// The lock lease of a shared store.
    pub fn lease(&self) -> Option<Duration> {
        match self {
            StoreConfig::File { .. } => None,
            StoreConfig::Postgres { lease, .. } | StoreConfig::Redis { lease, .. } => Some(*lease),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProxySettings {
    pub connect_timeout: Duration,
    /// Longest wait for the upstream's response headers (the body may take longer).
    pub response_timeout: Duration,
    pub pool_idle_timeout: Duration,
    /// How long shutdown waits for in-flight requests.
    pub drain_timeout: Duration,
    /// Request bodies up to this size are kept so the request can be resent after a refresh.
    pub replay_body_limit: usize,
    /// Larger request bodies are refused with 413.
    pub max_request_body: Option<u64>,
    /// A client connection with no request in flight that sends nothing for this
    /// long (before its first request, between keep-alive requests, after the
    /// HTTP/2 preface), or whose request head is still incomplete after it, is closed.
    pub idle_timeout: Duration,
    /// Longest wait for the next piece of a request body (also after
    /// `Expect: 100-continue`); then the request fails with 408.
    pub body_timeout: Duration,
    /// Open client connections per listener; `None`: sized from the open-file limit.
    pub max_connections: Option<usize>,
    /// Longest request header line, and whole request head, in bytes (431 beyond).
    pub max_header_line: usize,
    pub max_header_size: usize,
    /// Header fields per request head at most (1..=100).
    pub max_headers: usize,
}

/// The grants, without their data (for presets and labels).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantKind {
    RefreshToken,
    ClientCredentials,
    Password,
    JwtBearer,
}

impl GrantKind {
    pub const ALL: [GrantKind; 4] = [
        GrantKind::RefreshToken,
        GrantKind::ClientCredentials,
        GrantKind::Password,
        GrantKind::JwtBearer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            GrantKind::RefreshToken => "refresh_token",
            GrantKind::ClientCredentials => "client_credentials",
            GrantKind::Password => "password",
            GrantKind::JwtBearer => "jwt_bearer",
        }
    }

    /// The `grant_type` form value.
    pub fn grant_type(self) -> &'static str {
        match self {
            GrantKind::JwtBearer => "urn:ietf:params:oauth:grant-type:jwt-bearer",
            other => other.as_str(),
        }
    }
}

/// How a token source obtains access tokens, with what each grant needs.
#[derive(Debug, PartialEq)]
pub enum Grant {
    /// `initial` is used only while the store holds no refresh token.
    RefreshToken {
        initial: Option<SecretRef>,
    },
    ClientCredentials,
    Password {
        username: SecretRef,
        password: SecretRef,
    },
    /// RFC 7523: a signed assertion for every request.
    JwtBearer(Assertion),
}

impl Grant {
    pub fn kind(&self) -> GrantKind {
        match self {
            Grant::RefreshToken { .. } => GrantKind::RefreshToken,
            Grant::ClientCredentials => GrantKind::ClientCredentials,
            Grant::Password { .. } => GrantKind::Password,
            Grant::JwtBearer(_) => GrantKind::JwtBearer,
        }
    }

    pub fn as_str(&self) -> &'static str {
        self.kind().as_str()
    }
}

/// Where the signing key and its claims come from.
#[derive(Debug, Clone, PartialEq)]
pub enum SigningKey {
    /// A PEM private key (PKCS#8, or PKCS#1 RSA, or SEC1 EC) and an optional `kid`.
    Pem {
        key: SecretRef,
        key_id: Option<String>,
    },
    /// A Google service account key file: `client_email`, `private_key`, `private_key_id`.
    ServiceAccount(SecretRef),
}

/// The claims of a JWT assertion (RFC 7523 §3). `None` means the default: issuer
/// the client id (or the service account's email), audience the token URL.
#[derive(Debug, Clone, PartialEq)]
pub struct Assertion {
    pub key: SigningKey,
    pub issuer: Option<String>,
    pub subject: Option<String>,
    pub audience: Option<String>,
    pub lifetime: Duration,
    /// Put `scope` in the claims (Google) instead of the form.
    pub scope_in_assertion: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuthKind {
    /// Public client, or a grant that authenticates by itself (JWT bearer).
    None,
    Post,
    Basic,
    PrivateKeyJwt,
    TlsClientAuth,
}

impl ClientAuthKind {
    pub const ALL: [ClientAuthKind; 5] = [
        ClientAuthKind::None,
        ClientAuthKind::Post,
        ClientAuthKind::Basic,
        ClientAuthKind::PrivateKeyJwt,
        ClientAuthKind::TlsClientAuth,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ClientAuthKind::None => "none",
            ClientAuthKind::Post => "post",
            ClientAuthKind::Basic => "basic",
            ClientAuthKind::PrivateKeyJwt => "private_key_jwt",
            ClientAuthKind::TlsClientAuth => "tls_client_auth",
        }
    }

    /// The RFC 8414 `token_endpoint_auth_methods_supported` name.
    pub fn metadata_name(self) -> &'static str {
        match self {
            ClientAuthKind::None => "none",
            ClientAuthKind::Post => "client_secret_post",
            ClientAuthKind::Basic => "client_secret_basic",
            ClientAuthKind::PrivateKeyJwt => "private_key_jwt",
            ClientAuthKind::TlsClientAuth => "tls_client_auth",
        }
    }
}

/// How the client authenticates at the token endpoint, with what it needs.
#[derive(Debug, PartialEq)]
pub enum ClientAuth {
    /// `client_id` in the form (when there is one), nothing else.
    None,
    /// `client_id` and `client_secret` in the form body.
    Post(SecretRef),
    /// HTTP Basic with the form-urlencoded id and secret (RFC 6749 §2.3.1).
    Basic(SecretRef),
    /// A signed `client_assertion` (RFC 7523 §2.2).
    PrivateKeyJwt(Assertion),
    /// The client certificate of the TLS connection (RFC 8705 §2.1).
    TlsClientAuth,
}

/// Where the token endpoint is.
#[derive(Debug, Clone, PartialEq)]
pub enum Endpoint {
    Url(reqwest::Url),
    /// Found through RFC 8414 / OpenID discovery on first use.
    Issuer(reqwest::Url),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Url(u) => write!(f, "{u}"),
            Endpoint::Issuer(u) => write!(f, "(discovered from issuer {u})"),
        }
    }
}

#[derive(Debug, PartialEq)]
pub struct TokenConfig {
    pub name: String,
    pub preset: Option<&'static Preset>,
    pub grant: Grant,
    pub endpoint: Endpoint,
    /// Absent only for a service account key, which carries its own identity.
    pub client_id: Option<SecretRef>,
    pub client_auth: ClientAuth,
    /// Whether `client_auth` was written (discovery may choose it otherwise).
    pub client_auth_explicit: bool,
    /// Certificate chain and key (PEM) for mutual TLS to the token endpoint.
    pub client_cert: Option<(SecretRef, SecretRef)>,
    /// For `tokenproxy login` (authorization code with PKCE).
    pub login: Option<Login>,
    pub scope: Option<String>,
    pub scope_on_refresh: bool,
    /// Extra form fields (`audience`, `resource` and `params`), in order.
    pub params: Vec<(String, String)>,
    pub headers: Vec<(HeaderName, SecretRef)>,
    pub refresh_before: Duration,
    pub min_interval: Duration,
    pub default_lifetime: Duration,
    pub timeout: Duration,
    pub in_doubt: InDoubt,
    /// The distinct injection templates of the routes that use this token; a token's
    /// state carries one pre-built credential per template, in this order.
    pub injects: Vec<Inject>,
    /// The token-response fields that routes take their upstream from
    /// (`{token.instance_url}`), with the path after them; in this order.
    pub dynamic_upstreams: Vec<(String, String)>,
}

/// Where `tokenproxy login` sends the browser, and where it comes back.
#[derive(Debug, Clone, PartialEq)]
pub struct Login {
    pub authorize_url: reqwest::Url,
    /// Default `http://127.0.0.1:8765/callback`; port 0 picks a free port.
    pub redirect_uri: reqwest::Url,
    pub params: Vec<(String, String)>,
}

/// How a token travels to the upstream: a header from a template such as
/// `Authorization: Bearer {token}`, or a query parameter (`?access_token={token}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inject {
    Header {
        name: HeaderName,
        before: String,
        after: String,
        /// The template as written, for `check` output.
        text: String,
    },
    Query {
        /// Already form-urlencoded.
        param: String,
    },
}

/// A token made ready for one injection template. Its `Debug` shows the shape,
/// never the token.
#[derive(Clone)]
pub enum Credential {
    /// Marked sensitive, so HTTP/2 never indexes it and debug output hides it.
    Header(HeaderName, HeaderValue),
    /// `param=value`, form-urlencoded.
    Query(String),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Header(name, _) => write!(f, "Header({name}: [redacted])"),
            Credential::Query(_) => f.write_str("Query([redacted])"),
        }
    }
}

impl Inject {
    pub fn parse(template: &str) -> Result<Inject, String> {
        let template = template.trim();
        if let Some(query) = template.strip_prefix('?') {
            let (param, value) = query
                .split_once('=')
                .ok_or_else(|| format!("`{template}` has no `=`: write ?access_token={{token}}"))?;
            if value != "{token}" || param.is_empty() {
                return Err(format!(
                    "`{template}`: a query parameter carries the bare token, as ?access_token={{token}}"
                ));
            }
            let param = form_urlencoded::byte_serialize(param.as_bytes()).collect();
            return Ok(Inject::Query { param });
        }
        let (name, value) = template
            .split_once(':')
            .ok_or_else(|| format!("`{template}` has no `Header-Name:` part"))?;
        let name_ = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| format!("`{}` is not a valid header name", name.trim()))?;
        let value = value.trim();
        let (before, after) = value
            .split_once("{token}")
            .ok_or_else(|| format!("`{template}` does not contain {{token}}"))?;
        if after.contains("{token}") {
            return Err(format!("`{template}` contains {{token}} twice"));
        }
        let inject = Inject::Header {
            text: format!("{}: {value}", name.trim()),
            name: name_,
            before: before.into(),
            after: after.into(),
        };
        inject
            .credential("token")
            .ok_or_else(|| format!("`{template}` makes an invalid header value"))?;
        Ok(inject)
    }

    /// The credential for `token`, or `None` when the token cannot travel this way.
    pub fn credential(&self, token: &str) -> Option<Credential> {
        match self {
            Inject::Header {
                name,
                before,
                after,
                ..
            } => {
                let mut text = String::with_capacity(before.len() + token.len() + after.len());
                text.push_str(before);
                text.push_str(token);
                text.push_str(after);
                let mut value = HeaderValue::try_from(text).ok()?;
                value.set_sensitive(true);
                Some(Credential::Header(name.clone(), value))
            }
            Inject::Query { param } => {
                let value: String = form_urlencoded::byte_serialize(token.as_bytes()).collect();
                Some(Credential::Query(format!("{param}={value}")))
            }
        }
    }
}

impl fmt::Display for Inject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Inject::Header { text, .. } => f.write_str(text),
            Inject::Query { param } => write!(f, "?{param}={{token}}"),
        }
    }
}

#[derive(Debug)]
pub struct Route {
    /// Bounded label for logs and metrics.
    pub name: String,
    /// Origin-form path prefix, always starting and ending with `/`.
    pub prefix: Option<String>,
    /// Lower-case host (with port if not the default) for absolute-form requests.
    pub host: Option<String>,
    pub upstream: RouteUpstream,
    /// Index into [`Config::tokens`].
    pub token: usize,
    /// Index into that token's [`TokenConfig::injects`].
    pub inject: usize,
    pub retry_on: Vec<StatusCode>,
    /// Static headers for every upstream request, resolved at start.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Which upstream URLs in JSON/XML bodies and `Link` headers become proxy URLs.
    pub rewrite_links: RewriteLinks,
    /// Whether the prefix is removed from the path sent upstream; when not, the
    /// upstream's base path is `/` and the request path goes as it is.
    pub strip_prefix: bool,
}

/// A route's `rewrite_links`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RewriteLinks {
    /// Nothing is rewritten.
    Off,
    /// Next-page links only (JSON paging keys, XML `<link rel="next">`, `Link`).
    #[default]
    Pagination,
    /// Every occurrence of the upstream base URL in JSON/XML bodies and `Link`.
    All,
}

#[derive(Debug, Clone)]
pub enum RouteUpstream {
    Static(Upstream),
    /// Resolved from each token response (Salesforce `instance_url`, Zoho
    /// `api_domain`): `index` into the token's [`TokenConfig::dynamic_upstreams`].
    Dynamic {
        index: usize,
        base_path: String,
    },
}

impl RouteUpstream {
    /// The path every upstream URL of the route starts with; ends with `/`.
    pub fn base_path(&self) -> &str {
        match self {
            RouteUpstream::Static(u) => &u.base_path,
            RouteUpstream::Dynamic { base_path, .. } => base_path,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Upstream {
    pub scheme: Scheme,
    pub authority: Authority,
    /// Always ends with `/`.
    pub base_path: String,
    /// `scheme://authority/base_path`, for recognising upstream URLs in `Location`.
    pub base_url: String,
}

impl Upstream {
    /// Parses an absolute `https://` URL (plain `http://` only on loopback) without
    /// query or user info.
    pub fn parse(text: &str) -> Result<Upstream, String> {
        let uri: http::Uri = text.parse().map_err(|_| format!("`{text}` is not a URL"))?;
        let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
            return Err(format!("`{text}` is not an absolute URL"));
        };
        if *scheme != Scheme::HTTPS && !(*scheme == Scheme::HTTP && is_loopback(authority.host())) {
            return Err(format!(
                "`{text}` is not https (http:// is accepted only for 127.0.0.1/localhost)"
            ));
        }
        if uri.query().is_some() || authority.as_str().contains('@') {
            return Err(format!("`{text}` carries a query or user info"));
        }
        let mut base_path = uri.path().to_owned();
        if !base_path.ends_with('/') {
            base_path.push('/');
        }
        Ok(Upstream {
            base_url: format!("{scheme}://{authority}{base_path}"),
            scheme: scheme.clone(),
            authority: authority.clone(),
            base_path,
        })
    }

    /// The host key absolute-form requests are matched against.
    pub fn host_key(&self) -> String {
        let default = if self.scheme == Scheme::HTTPS {
            443
        } else {
            80
        };
        normalise_host(self.authority.host(), self.authority.port_u16(), default)
    }
}

/// The largest configuration file read.
pub const MAX_CONFIG: u64 = 1024 * 1024;

/// The text of a configuration file: a regular file of at most [`MAX_CONFIG`]
/// bytes, read without blocking on a FIFO (see [`crate::secret::read_regular`]).
fn read_config(file: &Path) -> Result<String, ConfigError> {
    use crate::secret::Unreadable;
    crate::secret::read_regular(file, MAX_CONFIG).map_err(|e| match e {
        Unreadable::Io(source) => ConfigError::Read {
            file: file.into(),
            source,
        },
        Unreadable::NotRegular => ConfigError::NotRegular { file: file.into() },
        Unreadable::TooLarge => ConfigError::TooLarge { file: file.into() },
    })
}

/// What `tokenproxy token` needs of a configuration: the admin listener, its key
/// and the token names. Read without resolving any other secret, so that an
/// operator's shell, which holds none of the tokens' secrets, can ask a running
/// instance about a token.
pub struct ControlTarget {
    pub admin: SocketAddr,
    pub admin_key: Option<SecretRef>,
    pub tokens: Vec<String>,
}

impl ControlTarget {
    pub fn load(file: &Path) -> Result<ControlTarget, ConfigError> {
        let text = read_config(file)?;
        let raw: raw::RawConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            file: file.into(),
            message: parse_message(&text, &e),
        })?;
        let admin = raw.listen.admin.parse().map_err(|_| ConfigError::Invalid {
            file: file.into(),
            key: "listen.admin".into(),
            problem: format!("`{}` is not an address", raw.listen.admin),
            fix: "write it as \"127.0.0.1:9090\"".into(),
        })?;
        Ok(ControlTarget {
            admin,
            admin_key: raw.listen.admin_key,
            tokens: raw.tokens.into_keys().collect(),
        })
    }
}

impl Config {
    /// Reads and validates `file`: a regular file of at most [`MAX_CONFIG`] bytes,
    /// read without blocking on a FIFO (see [`crate::secret::read_regular`]).
    /// Blocking file work: an async caller runs it on the blocking pool.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text = read_config(file)?;
        Config::parse(&text, file)
    }

    /// Validates `text`; `file` is used for messages only.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let raw: raw::RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: file.into(),
            message: parse_message(text, &e),
        })?;
        validate::config(raw, file)
    }
}

/// A TOML error without the values it would quote: the position, the parser's
/// message with quoted strings masked, and the offending line with every string
/// literal masked (the line may hold a literal secret).
fn parse_message(text: &str, e: &toml::de::Error) -> String {
    let mut message = mask_strings(e.message().trim_end());
    let Some(span) = e.span() else {
        return message;
    };
    let start = span.start.min(text.len());
    let line_no = text[..start].matches('\n').count() + 1;
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let column = text[line_start..start].chars().count() + 1;
    message = format!(
        "line {line_no}, column {column}: {message}\n  | {}",
        mask_strings(line)
    );
    message
}

/// `text` with the inside of every `"…"` and `'…'` replaced by `…`.
fn mask_strings(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in text.chars() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' && q == '"' {
                    escaped = true;
                } else if c == q {
                    out.push('…');
                    out.push(c);
                    quote = None;
                }
            }
            None => {
                out.push(c);
                if c == '"' || c == '\'' {
                    quote = Some(c);
                }
            }
        }
    }
    if quote.is_some() {
        out.push('…');
    }
    out
}

/// `host` lower-cased, without a trailing dot, with `:port` unless it is `default`.
pub fn normalise_host(host: &str, port: Option<u16>, default: u16) -> String {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    match port {
        Some(p) if p != default => format!("{host}:{p}"),
        _ => host,
    }
}

/// Whether a route `host` (`name` or `name:port`) names a DNS name, not an IP
/// address: only those can be intercepted.
pub fn is_dns_host(host: &str) -> bool {
    let name = dns_name(host);
    !name.is_empty() && !host.starts_with('[') && name.parse::<std::net::IpAddr>().is_err()
}

/// The name of a route `host`, without its port.
pub fn dns_name(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name
        }
        _ => host,
    }
}

/// `127.0.0.0/8`, `::1` or `localhost`: where plain `http://` is acceptable.
pub fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}
