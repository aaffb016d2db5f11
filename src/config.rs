//! The TOML configuration: its schema, and validation into types that cannot be wrong.
//!
//! Parsing happens in two stages. `Raw*` structs mirror the file (serde,
//! `deny_unknown_fields`, defaults in one place); [`Config::parse`] then validates
//! them into [`Config`], where a [`Route`] always has a parsed upstream and the index
//! of an existing token, and every secret reference has been resolved once. Errors
//! name the file, the key and the fix. Nothing here reads global state except the
//! secret references it is asked to check.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{HeaderName, HeaderValue, StatusCode, Uri};
use serde::Deserialize;

use crate::secret::SecretRef;

/// A configuration problem: which file, which key, what is wrong, and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    listen: RawListen,
    #[serde(default)]
    tls: RawTls,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    proxy: RawProxy,
    #[serde(default)]
    tokens: BTreeMap<String, RawToken>,
    #[serde(default)]
    routes: Vec<RawRoute>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawListen {
    proxy: String,
    admin: String,
}

impl Default for RawListen {
    fn default() -> Self {
        RawListen {
            proxy: "127.0.0.1:8080".into(),
            admin: "127.0.0.1:9090".into(),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawStore {
    kind: String,
    path: PathBuf,
}

impl Default for RawStore {
    fn default() -> Self {
        RawStore {
            kind: "file".into(),
            path: "./tokenproxy-state".into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawProxy {
    #[serde(with = "humantime_serde")]
    connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    response_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pool_idle_timeout: Duration,
    #[serde(with = "humantime_serde")]
    drain_timeout: Duration,
    replay_body_limit: usize,
}

impl Default for RawProxy {
    fn default() -> Self {
        RawProxy {
            connect_timeout: Duration::from_secs(10),
            response_timeout: Duration::from_secs(300),
            pool_idle_timeout: Duration::from_secs(90),
            drain_timeout: Duration::from_secs(30),
            replay_body_limit: 1024 * 1024,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    grant: Grant,
    token_url: String,
    client_id: SecretRef,
    client_secret: Option<SecretRef>,
    #[serde(default)]
    client_auth: ClientAuth,
    refresh_token: Option<SecretRef>,
    scope: Option<String>,
    #[serde(default)]
    params: BTreeMap<String, String>,
    #[serde(default)]
    headers: BTreeMap<String, SecretRef>,
    #[serde(default, with = "humantime_serde")]
    refresh_before: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    min_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    default_lifetime: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: Option<String>,
    prefix: Option<String>,
    host: Option<String>,
    upstream: String,
    token: String,
    #[serde(default = "default_inject")]
    inject: String,
    #[serde(default = "default_retry_on")]
    retry_on: Vec<u16>,
}

fn default_inject() -> String {
    "Authorization: Bearer {token}".into()
}

fn default_retry_on() -> Vec<u16> {
    vec![401]
}

/// The OAuth grant a token source uses to obtain access tokens.
#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Grant {
    RefreshToken,
    ClientCredentials,
}

impl ClientAuth {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientAuth::Post => "post",
            ClientAuth::Basic => "basic",
        }
    }
}

impl Grant {
    pub fn as_str(self) -> &'static str {
        match self {
            Grant::RefreshToken => "refresh_token",
            Grant::ClientCredentials => "client_credentials",
        }
    }
}

/// How the client authenticates at the token endpoint (RFC 6749 §2.3.1).
#[derive(Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// `client_id` and `client_secret` in the form body.
    #[default]
    Post,
    /// HTTP Basic with the form-urlencoded id and secret.
    Basic,
}

/// The validated configuration.
#[derive(Debug)]
pub struct Config {
    /// The file it came from, for messages.
    pub file: PathBuf,
    pub listen: Listen,
    pub tls: Tls,
    pub store: StoreConfig,
    pub proxy: ProxySettings,
    pub tokens: Vec<TokenConfig>,
    pub routes: Vec<Route>,
    /// Things that are allowed but unwise (literal secrets); `check` prints them, `run` logs them.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Copy)]
pub struct Listen {
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
}

#[derive(Debug, Clone)]
pub struct Tls {
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub enum StoreConfig {
    File { path: PathBuf },
}

#[derive(Debug, Clone, Copy)]
pub struct ProxySettings {
    pub connect_timeout: Duration,
    /// Longest wait for the upstream's response headers (the body may take longer).
    pub response_timeout: Duration,
    pub pool_idle_timeout: Duration,
    /// How long shutdown waits for in-flight requests.
    pub drain_timeout: Duration,
    /// Request bodies up to this size are kept so the request can be resent after a refresh.
    pub replay_body_limit: usize,
}

#[derive(Debug)]
pub struct TokenConfig {
    pub name: String,
    pub grant: Grant,
    pub token_url: reqwest::Url,
    pub client_id: SecretRef,
    pub client_secret: Option<SecretRef>,
    pub client_auth: ClientAuth,
    pub refresh_token: Option<SecretRef>,
    pub scope: Option<String>,
    pub params: Vec<(String, String)>,
    pub headers: Vec<(HeaderName, SecretRef)>,
    pub refresh_before: Duration,
    pub min_interval: Duration,
    pub default_lifetime: Duration,
    pub timeout: Duration,
    /// The distinct injection templates of the routes that use this token; a token's
    /// state carries one pre-built header value per template, in this order.
    pub injects: Vec<Inject>,
}

/// A header built from a template such as `Authorization: Bearer {token}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inject {
    pub header: HeaderName,
    before: String,
    after: String,
    /// The template as written, for `check` output.
    text: String,
}

impl Inject {
    fn parse(template: &str) -> Result<Inject, String> {
        let (name, value) = template
            .split_once(':')
            .ok_or_else(|| format!("`{template}` has no `Header-Name:` part"))?;
        let header = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| format!("`{}` is not a valid header name", name.trim()))?;
        let value = value.trim();
        let (before, after) = value
            .split_once("{token}")
            .ok_or_else(|| format!("`{template}` does not contain {{token}}"))?;
        if after.contains("{token}") {
            return Err(format!("`{template}` contains {{token}} twice"));
        }
        let inject = Inject {
            text: format!("{}: {value}", name.trim()),
            header,
            before: before.into(),
            after: after.into(),
        };
        inject
            .render("token")
            .map_err(|_| format!("`{template}` makes an invalid header value"))?;
        Ok(inject)
    }

    /// The header value for `token`, marked sensitive so HTTP/2 never indexes it
    /// and hyper's debug output hides it.
    pub fn render(&self, token: &str) -> Result<HeaderValue, http::header::InvalidHeaderValue> {
        let mut text = String::with_capacity(self.before.len() + token.len() + self.after.len());
        text.push_str(&self.before);
        text.push_str(token);
        text.push_str(&self.after);
        let mut value = HeaderValue::try_from(text)?;
        value.set_sensitive(true);
        Ok(value)
    }
}

impl fmt::Display for Inject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[derive(Debug)]
pub struct Route {
    /// Bounded label for logs and metrics.
    pub name: String,
    /// Origin-form path prefix, always starting and ending with `/`.
    pub prefix: Option<String>,
    /// Lower-case host (with port if not the default) for absolute-form requests.
    pub host: String,
    pub upstream: Upstream,
    /// Index into [`Config::tokens`].
    pub token: usize,
    /// Index into that token's [`TokenConfig::injects`].
    pub inject: usize,
    pub retry_on: Vec<StatusCode>,
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

impl Config {
    /// Reads and validates `file`.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
            file: file.into(),
            source,
        })?;
        Config::parse(&text, file)
    }

    /// Validates `text`; `file` is used for messages and to resolve nothing else.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: file.into(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        Validator {
            file,
            warnings: Vec::new(),
        }
        .config(raw)
    }
}

struct Validator<'a> {
    file: &'a Path,
    warnings: Vec<String>,
}

impl Validator<'_> {
    fn err(
        &self,
        key: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.into(),
            key: key.into(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }

    fn config(mut self, raw: RawConfig) -> Result<Config, ConfigError> {
        let listen = Listen {
            proxy: self.addr("listen.proxy", &raw.listen.proxy)?,
            admin: self.addr("listen.admin", &raw.listen.admin)?,
        };
        if listen.proxy == listen.admin && listen.proxy.port() != 0 {
            return Err(self.err(
                "listen.admin",
                "is the same address as listen.proxy",
                "give the admin endpoints their own port",
            ));
        }
        let store = match raw.store.kind.as_str() {
            "file" => StoreConfig::File {
                path: raw.store.path,
            },
            other => {
                return Err(self.err(
                    "store.kind",
                    format!("`{other}` is not a supported store"),
                    "use kind = \"file\"",
                ));
            }
        };
        if raw.proxy.replay_body_limit > 64 * 1024 * 1024 {
            return Err(self.err(
                "proxy.replay_body_limit",
                "is over 64 MiB",
                "keep replayed bodies small; larger bodies stream and are not retried",
            ));
        }
        let proxy = ProxySettings {
            connect_timeout: raw.proxy.connect_timeout,
            response_timeout: raw.proxy.response_timeout,
            pool_idle_timeout: raw.proxy.pool_idle_timeout,
            drain_timeout: raw.proxy.drain_timeout,
            replay_body_limit: raw.proxy.replay_body_limit,
        };
        if let Some(ca) = &raw.tls.ca_file
            && !ca.is_file()
        {
            return Err(self.err(
                "tls.ca_file",
                format!("{} is not a readable file", ca.display()),
                "point it at a PEM file of CA certificates",
            ));
        }

        let mut tokens = Vec::with_capacity(raw.tokens.len());
        for (name, token) in raw.tokens {
            tokens.push(self.token(name, token)?);
        }
        if raw.routes.is_empty() {
            return Err(self.err(
                "routes",
                "no [[routes]] are configured",
                "add a [[routes]] table with prefix, upstream and token",
            ));
        }
        let mut routes = Vec::with_capacity(raw.routes.len());
        for (i, route) in raw.routes.into_iter().enumerate() {
            let route = self.route(i, route, &mut tokens)?;
            if let Some(prefix) = &route.prefix
                && routes
                    .iter()
                    .any(|r: &Route| r.prefix.as_ref() == Some(prefix))
            {
                return Err(self.err(
                    format!("routes[{i}].prefix"),
                    format!("`{prefix}` is used by two routes"),
                    "give each route its own prefix",
                ));
            }
            routes.push(route);
        }
        Ok(Config {
            file: self.file.into(),
            listen,
            tls: Tls {
                ca_file: raw.tls.ca_file,
            },
            store,
            proxy,
            tokens,
            routes,
            warnings: self.warnings,
        })
    }

    fn addr(&self, key: &str, text: &str) -> Result<SocketAddr, ConfigError> {
        text.parse().map_err(|_| {
            self.err(
                key,
                format!("`{text}` is not an IP address and port"),
                "write it as \"127.0.0.1:8080\"",
            )
        })
    }

    /// Checks that `secret` resolves now; warns about literals unless `public`.
    fn secret(&mut self, key: &str, secret: &SecretRef) -> Result<(), ConfigError> {
        self.secret_ref(key, secret, false)
    }

    fn secret_ref(
        &mut self,
        key: &str,
        secret: &SecretRef,
        public: bool,
    ) -> Result<(), ConfigError> {
        secret.resolve().map_err(|e| {
            self.err(
                key,
                e.to_string(),
                "set the variable or create the file, or point the key elsewhere",
            )
        })?;
        if secret.is_literal() && !public {
            self.warnings.push(format!(
                "{}: `{key}` is a literal secret; prefer {{ env = \"VAR\" }} or {{ file = \"PATH\" }}",
                self.file.display()
            ));
        }
        Ok(())
    }

    fn token(&mut self, name: String, raw: RawToken) -> Result<TokenConfig, ConfigError> {
        let key = |k: &str| format!("tokens.{name}.{k}");
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(self.err(
                format!("tokens.{name}"),
                "a token name may hold only letters, digits, `-` and `_`",
                "rename the table, e.g. [tokens.exact]",
            ));
        }
        let token_url: reqwest::Url = raw.token_url.parse().map_err(|e| {
            self.err(
                key("token_url"),
                format!("`{}` is not a URL: {e}", raw.token_url),
                "write the provider's full token endpoint URL",
            )
        })?;
        let loopback = url_host_is_loopback(&token_url);
        if token_url.scheme() != "https" && !(token_url.scheme() == "http" && loopback) {
            return Err(self.err(key("token_url"), "is not an https URL", "use the provider's https:// token endpoint (http:// is accepted only for 127.0.0.1/localhost)"));
        }
        // A client id identifies, it does not authenticate: a literal is fine.
        self.secret_ref(&key("client_id"), &raw.client_id, true)?;
        if let Some(s) = &raw.client_secret {
            self.secret(&key("client_secret"), s)?;
        }
        if let Some(s) = &raw.refresh_token {
            self.secret(&key("refresh_token"), s)?;
        }
        match (raw.grant, &raw.client_secret, raw.client_auth) {
            (Grant::ClientCredentials, None, _) => {
                return Err(self.err(
                    key("client_secret"),
                    "is required for grant = \"client_credentials\"",
                    "add client_secret = { env = \"VAR\" }",
                ));
            }
            (_, None, ClientAuth::Basic) => {
                return Err(self.err(
                    key("client_secret"),
                    "is required for client_auth = \"basic\"",
                    "add client_secret, or use client_auth = \"post\" for a public client",
                ));
            }
            _ => {}
        }
        if raw.grant == Grant::ClientCredentials && raw.refresh_token.is_some() {
            return Err(self.err(
                key("refresh_token"),
                "is not used by grant = \"client_credentials\"",
                "remove it, or use grant = \"refresh_token\"",
            ));
        }
        let mut headers = Vec::with_capacity(raw.headers.len());
        for (h, value) in raw.headers {
            let header = HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                self.err(
                    key("headers"),
                    format!("`{h}` is not a valid header name"),
                    "use a name such as \"X-Api-Key\"",
                )
            })?;
            self.secret(&format!("{}.{h}", key("headers")), &value)?;
            headers.push((header, value));
        }
        for p in raw.params.keys() {
            if ["grant_type", "refresh_token", "client_id", "client_secret"].contains(&p.as_str()) {
                return Err(self.err(
                    key("params"),
                    format!("`{p}` is set by tokenproxy itself"),
                    "remove it from params",
                ));
            }
        }
        let scope = raw.scope.filter(|s| !s.trim().is_empty());
        Ok(TokenConfig {
            grant: raw.grant,
            token_url,
            client_id: raw.client_id,
            client_secret: raw.client_secret,
            client_auth: raw.client_auth,
            refresh_token: raw.refresh_token,
            scope,
            params: raw.params.into_iter().collect(),
            headers,
            refresh_before: raw.refresh_before.unwrap_or(Duration::from_secs(60)),
            min_interval: raw.min_interval.unwrap_or(Duration::ZERO),
            default_lifetime: raw.default_lifetime.unwrap_or(Duration::from_secs(3600)),
            timeout: raw.timeout.unwrap_or(Duration::from_secs(30)),
            injects: Vec::new(),
            name,
        })
    }

    fn route(
        &mut self,
        i: usize,
        raw: RawRoute,
        tokens: &mut [TokenConfig],
    ) -> Result<Route, ConfigError> {
        let key = |k: &str| format!("routes[{i}].{k}");
        let upstream = self.upstream(&key("upstream"), &raw.upstream)?;
        let prefix = match raw.prefix {
            None => None,
            Some(p) if !p.starts_with('/') => {
                return Err(self.err(
                    key("prefix"),
                    format!("`{p}` does not start with `/`"),
                    format!("write it as \"/{p}\""),
                ));
            }
            Some(p) if p.contains("..") || p.contains("//") || p.contains(['?', '#', '%']) => {
                return Err(self.err(
                    key("prefix"),
                    format!("`{p}` is not a plain path"),
                    "use a path such as \"/exact/\"",
                ));
            }
            Some(p) if p.ends_with('/') => Some(p),
            Some(p) => Some(format!("{p}/")),
        };
        let host = match raw.host {
            Some(h) => {
                let a: Authority = h.parse().map_err(|_| {
                    self.err(
                        key("host"),
                        format!("`{h}` is not a host name"),
                        "write a host such as \"api.example.com\"",
                    )
                })?;
                normalise_host(a.host(), a.port_u16(), 80)
            }
            None => {
                let default = if upstream.scheme == Scheme::HTTPS {
                    443
                } else {
                    80
                };
                normalise_host(
                    upstream.authority.host(),
                    upstream.authority.port_u16(),
                    default,
                )
            }
        };
        let token = tokens
            .iter()
            .position(|t| t.name == raw.token)
            .ok_or_else(|| {
                let known: Vec<&str> = tokens.iter().map(|t| t.name.as_str()).collect();
                self.err(
                    key("token"),
                    format!("names `{}`, which is not a [tokens] table", raw.token),
                    format!("use one of {known:?} or add [tokens.{}]", raw.token),
                )
            })?;
        let inject = Inject::parse(&raw.inject).map_err(|p| {
            self.err(
                key("inject"),
                p,
                "write it as \"Authorization: Bearer {token}\"",
            )
        })?;
        let injects = &mut tokens[token].injects;
        let inject = match injects.iter().position(|x| *x == inject) {
            Some(n) => n,
            None => {
                injects.push(inject);
                injects.len() - 1
            }
        };
        let mut retry_on = Vec::with_capacity(raw.retry_on.len());
        for code in raw.retry_on {
            match StatusCode::from_u16(code) {
                Ok(s) if s.is_client_error() || s.is_server_error() => retry_on.push(s),
                _ => {
                    return Err(self.err(
                        key("retry_on"),
                        format!("{code} is not an error status"),
                        "list statuses such as [401]",
                    ));
                }
            }
        }
        let name = raw.name.unwrap_or_else(|| match &prefix {
            Some(p) if p != "/" => p.trim_matches('/').to_owned(),
            _ => host.clone(),
        });
        Ok(Route {
            name,
            prefix,
            host,
            upstream,
            token,
            inject,
            retry_on,
        })
    }

    fn upstream(&self, key: &str, text: &str) -> Result<Upstream, ConfigError> {
        let bad = |problem: String| {
            self.err(
                key,
                problem,
                "write it as \"https://api.example.com/base/\"",
            )
        };
        let uri: Uri = text
            .parse()
            .map_err(|_| bad(format!("`{text}` is not a URL")))?;
        let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
            return Err(bad(format!("`{text}` is not an absolute URL")));
        };
        let loopback = authority
            .host()
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
            || authority.host().eq_ignore_ascii_case("localhost");
        if *scheme != Scheme::HTTPS && !(*scheme == Scheme::HTTP && loopback) {
            return Err(bad(format!(
                "`{text}` is not https (http:// is accepted only for 127.0.0.1/localhost)"
            )));
        }
        if uri.query().is_some() || authority.as_str().contains('@') {
            return Err(bad(format!("`{text}` carries a query or user info")));
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
}

/// `host` lower-cased, without a trailing dot, with `:port` unless it is `default`.
pub fn normalise_host(host: &str, port: Option<u16>, default: u16) -> String {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    match port {
        Some(p) if p != default => format!("{host}:{p}"),
        _ => host,
    }
}

fn url_host_is_loopback(url: &reqwest::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}
