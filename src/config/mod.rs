//! The TOML configuration: its schema, and validation into types that cannot be wrong.
//!
//! Parsing happens in two stages. `raw` mirrors the file (serde,
//! `deny_unknown_fields`, defaults in one place); `validate` turns it into
//! [`Config`], where a [`Route`] always has a parsed upstream and the index of an
//! existing token, a [`TokenConfig`] holds exactly what its grant and client
//! authentication need, and every secret reference has been resolved once.
//! `preset` holds the provider defaults; `token` and `route` the validated types of
//! those two tables, this file the rest. Errors name the file, the key and the fix.
//! Nothing here reads global state except the secret references it checks.

mod caller;
mod describe;
mod preset;
mod raw;
mod route;
mod token;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::secret::SecretRef;

pub use caller::{Caller, Callers, Delivery, KeyHeader, ListenTls, Sink, SinkFormat};
pub use preset::{PRESETS, Preset};
pub use raw::InDoubt;
pub use route::{
    Credential, Inject, Limit, QuotaKey, RateLimits, RewriteLinks, Route, RouteUpstream, Upstream,
};
pub use token::{
    Assertion, ClientAuth, ClientAuthKind, Endpoint, Grant, GrantKind, Login, SigningKey,
    TokenConfig,
};

/// Paths on the proxy listener that tokenproxy answers itself (token vending);
/// no route may use them.
pub const OWN_PATHS: &str = "/tokenproxy/";

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
    /// Who may use the proxy listener, and for which tokens.
    pub callers: Callers,
    pub tokens: Vec<TokenConfig>,
    pub routes: Vec<Route>,
    /// Things that are allowed but unwise (literal secrets); `check` prints them, `run` logs them.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Listen {
    pub proxy: ListenAddr,
    pub admin: SocketAddr,
    /// Where callers present their keys (`client_key` or `[[callers]]`).
    pub key_header: KeyHeader,
    /// The proxy listener speaks TLS.
    pub tls: Option<ListenTls>,
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
