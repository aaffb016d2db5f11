//! The one error model: every error tokenproxy answers with, on either listener,
//! and the one place that maps it to a status code, an `x-tokenproxy-error` code, a
//! log level, a metric label and a JSON body.
//!
//! Each error says where it came from ([`Source`]) and whether the same request
//! may succeed later ([`ProxyError::retryable`]), so callers ask the error instead
//! of matching on strings. Bodies name the route and say what to do; they never
//! carry a token, a header value or a full upstream URL.
//!
//! Length: the one error list and every mapping of it (status, code, source,
//! retryable, level, body), in one place by design.

use std::time::Duration;

use http::header::{ALLOW, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use http::{Response, StatusCode};

use crate::body::ProxyBody;

/// Where an error came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The request itself: fix the client or its configuration.
    Client,
    /// No route, or a route that cannot serve this request.
    Route,
    /// The token endpoint, or the token it issued.
    TokenEndpoint,
    /// The token store.
    Store,
    /// The upstream API.
    Upstream,
    /// The configuration file.
    Config,
    /// tokenproxy itself: a defect, or a limit of this process.
    Internal,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Client => "client",
            Source::Route => "route",
            Source::TokenEndpoint => "token_endpoint",
            Source::Store => "store",
            Source::Upstream => "upstream",
            Source::Config => "config",
            Source::Internal => "internal",
        }
    }
}

/// Methods a route answers; sent in `Allow` with a 405.
const PROXY_METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no route matches this request; tokenproxy forwards only to configured upstreams")]
    NoRoute,
    #[error(
        "the path leaves the route (a `.` or `..` segment, also percent-encoded or with `;` parameters), holds NUL, or is not valid"
    )]
    BadPath,
    #[error(
        "the Host header is missing a valid authority, or appears more than once; send exactly one Host"
    )]
    BadHost,
    #[error(
        "only http:// and https:// URLs are proxied; send the request with one of those schemes"
    )]
    BadScheme,
    #[error(
        "CONNECT is refused: tokenproxy opens no blind tunnels; it intercepts HTTPS only to a host a route names, with [intercept] configured. Send plain http:// URLs through it, or configure [intercept] and the route's host"
    )]
    Connect,
    #[error(
        "this host is routed, but the interception CA may not sign for it (its name constraints); recreate the CA with `tokenproxy ca init --force` and give clients the new certificate"
    )]
    ConnectOutsideCa,
    #[error(
        "this tunnel was opened for another host; send each host's requests through a CONNECT of its own"
    )]
    Misdirected,
    #[error("{method} is not allowed here; allowed: {allow}")]
    MethodNotAllowed { method: String, allow: &'static str },
    #[error(
        "the request is framed ambiguously (Content-Length with Transfer-Encoding, or conflicting lengths); send one framing"
    )]
    AmbiguousFraming,
    #[error(
        "a request header line, the request head or its number of fields is larger than the configured limit (proxy.max_header_line, proxy.max_header_size, proxy.max_headers)"
    )]
    HeaderTooLarge,
    #[error("could not read the request body from the client")]
    ClientBody,
    #[error("the client stopped sending the request body for {}s", .0.as_secs())]
    ClientTimeout(Duration),
    #[error(
        "this proxy needs a caller key: send yours as [listen] says (by default Proxy-Authorization: Bearer <key>, or as the password of the proxy URL)"
    )]
    ProxyAuth,
    #[error(
        "this caller's key does not admit it to this token; list the token in the caller's [[callers]] entry"
    )]
    CallerNotAllowed,
    #[error(
        "no token of this name is vended; vending needs tokens.NAME.vend = true (GET /tokenproxy/v1/tokens/NAME)"
    )]
    NotVended,
    #[error(
        "protocol upgrades (WebSocket) cannot carry an injected token; send plain HTTP requests"
    )]
    Upgrade,
    #[error("the request body is larger than proxy.max_request_body")]
    TooLarge,
    #[error(
        "the upstream's rate limit for this route is used up for longer than max_wait ({}s from now); retry after it, or raise the route's max_wait",
        .retry_after.as_secs().max(1)
    )]
    QuotaExhausted { retry_after: Duration },
    #[error("the upstream could not be reached (connection or TLS handshake failed)")]
    UpstreamUnreachable,
    #[error("the upstream did not send response headers within {}s", .0.as_secs())]
    UpstreamTimeout(Duration),
    #[error("the upstream connection failed before a response arrived")]
    UpstreamFailed,
    #[error(
        "the token response names no usable upstream for this route (such as instance_url); see the admin /status endpoint"
    )]
    NoUpstream,
    /// `cause`: what failed to give one (the token endpoint, the store, the
    /// configuration, or tokenproxy itself).
    #[error("no valid access token is available; see the admin /status endpoint")]
    NoValidToken {
        retry_after: Duration,
        cause: Source,
    },
    #[error("tokenproxy failed while handling this request; the failure is logged")]
    Internal,
    #[error("every connection is busy (proxy.max_connections); retry shortly")]
    Overloaded,
    #[error(
        "no such admin endpoint; admin endpoints: GET /healthz /readyz /status /metrics, POST /tokens/NAME/refresh"
    )]
    AdminNotFound,
    #[error("no token named `{0}` is configured")]
    UnknownToken(String),
    #[error(
        "this admin endpoint needs the admin key: send Authorization: Bearer <listen.admin_key>"
    )]
    AdminUnauthorized,
    #[error(
        "this admin endpoint changes state and the admin listener is reachable beyond this host without a key: set listen.admin_key, or bind listen.admin to 127.0.0.1"
    )]
    AdminKeyRequired,
    #[error(
        "the admin listener is not a proxy: send plain requests for /healthz /readyz /status /metrics, POST /tokens/NAME/refresh or /reload"
    )]
    AdminNotAProxy { connect: bool },
    #[error(
        "a token request now would come too soon (min_interval after the last issue, or the backoff after a failure); try again in {}s",
        .retry_after.as_secs().max(1)
    )]
    RefreshTooSoon { retry_after: Duration },
    /// The configuration file was not put in force; the message says why.
    #[error("{0}")]
    ReloadRefused(String),
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute
            | ProxyError::AdminNotFound
            | ProxyError::UnknownToken(_)
            | ProxyError::NotVended => StatusCode::NOT_FOUND,
            ProxyError::CallerNotAllowed => StatusCode::FORBIDDEN,
            ProxyError::AdminUnauthorized => StatusCode::UNAUTHORIZED,
            ProxyError::AdminKeyRequired => StatusCode::FORBIDDEN,
            ProxyError::AdminNotAProxy { connect: true } => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::AdminNotAProxy { connect: false } => StatusCode::BAD_REQUEST,
            ProxyError::RefreshTooSoon { .. } | ProxyError::QuotaExhausted { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ProxyError::ReloadRefused(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ProxyError::BadPath
            | ProxyError::BadHost
            | ProxyError::BadScheme
            | ProxyError::AmbiguousFraming
            | ProxyError::ClientBody
            | ProxyError::Upgrade => StatusCode::BAD_REQUEST,
            ProxyError::ClientTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ProxyError::HeaderTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::ProxyAuth => StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            ProxyError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::Connect
            | ProxyError::ConnectOutsideCa
            | ProxyError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::Misdirected => StatusCode::MISDIRECTED_REQUEST,
            ProxyError::UpstreamUnreachable
            | ProxyError::UpstreamFailed
            | ProxyError::NoUpstream => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::NoValidToken { .. } | ProxyError::Overloaded => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `x-tokenproxy-error` value, the JSON `error` field and the `error` label
    /// of `errors_total`: a fixed word per kind.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::NoRoute => "no_route",
            ProxyError::BadPath => "bad_path",
            ProxyError::BadHost => "bad_host",
            ProxyError::BadScheme => "bad_scheme",
            ProxyError::Connect => "connect_not_supported",
            ProxyError::ConnectOutsideCa => "intercept_not_permitted",
            ProxyError::Misdirected => "misdirected_request",
            ProxyError::MethodNotAllowed { .. } => "method_not_allowed",
            ProxyError::AmbiguousFraming => "ambiguous_framing",
            ProxyError::HeaderTooLarge => "header_too_large",
            ProxyError::ClientBody => "client_body",
            ProxyError::ClientTimeout(_) => "client_timeout",
            ProxyError::ProxyAuth => "proxy_auth_required",
            ProxyError::CallerNotAllowed => "caller_not_allowed",
            ProxyError::NotVended => "token_not_vended",
            ProxyError::Upgrade => "upgrade_not_supported",
            ProxyError::TooLarge => "request_too_large",
            ProxyError::QuotaExhausted { .. } => "quota_exhausted",
            ProxyError::UpstreamUnreachable => "upstream_unreachable",
            ProxyError::UpstreamTimeout(_) => "upstream_timeout",
            ProxyError::UpstreamFailed => "upstream_failed",
            ProxyError::NoUpstream => "no_upstream",
            ProxyError::NoValidToken { .. } => "no_valid_token",
            ProxyError::Internal => "internal",
            ProxyError::Overloaded => "overloaded",
            ProxyError::AdminNotFound => "not_found",
            ProxyError::UnknownToken(_) => "unknown_token",
            ProxyError::AdminUnauthorized => "admin_unauthorized",
            ProxyError::AdminKeyRequired => "admin_key_required",
            ProxyError::AdminNotAProxy { .. } => "admin_not_a_proxy",
            ProxyError::RefreshTooSoon { .. } => "refresh_too_soon",
            ProxyError::ReloadRefused(_) => "reload_refused",
        }
    }

    pub fn source(&self) -> Source {
        match self {
            ProxyError::BadPath
            | ProxyError::BadHost
            | ProxyError::BadScheme
            | ProxyError::Connect
            | ProxyError::Misdirected
            | ProxyError::MethodNotAllowed { .. }
            | ProxyError::AmbiguousFraming
            | ProxyError::HeaderTooLarge
            | ProxyError::ClientBody
            | ProxyError::ClientTimeout(_)
            | ProxyError::ProxyAuth
            | ProxyError::CallerNotAllowed
            | ProxyError::NotVended
            | ProxyError::Upgrade
            | ProxyError::TooLarge
            | ProxyError::AdminNotFound
            | ProxyError::UnknownToken(_)
            | ProxyError::AdminUnauthorized
            | ProxyError::AdminKeyRequired
            | ProxyError::AdminNotAProxy { .. }
            | ProxyError::RefreshTooSoon { .. } => Source::Client,
            ProxyError::NoRoute | ProxyError::ConnectOutsideCa => Source::Route,
            ProxyError::NoUpstream => Source::TokenEndpoint,
            ProxyError::NoValidToken { cause, .. } => *cause,
            ProxyError::UpstreamUnreachable
            | ProxyError::UpstreamTimeout(_)
            | ProxyError::UpstreamFailed
            | ProxyError::QuotaExhausted { .. } => Source::Upstream,
            ProxyError::ReloadRefused(_) => Source::Config,
            ProxyError::Internal | ProxyError::Overloaded => Source::Internal,
        }
    }

    /// Whether sending the same request again, later, may succeed.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            ProxyError::ClientTimeout(_)
                | ProxyError::UpstreamUnreachable
                | ProxyError::UpstreamTimeout(_)
                | ProxyError::UpstreamFailed
                | ProxyError::NoValidToken { .. }
                | ProxyError::NoUpstream
                | ProxyError::Internal
                | ProxyError::Overloaded
                | ProxyError::RefreshTooSoon { .. }
                | ProxyError::QuotaExhausted { .. }
        )
    }

    /// How loudly the request's log line is written: a client's mistake is routine,
    /// a failing upstream or token endpoint is worth a look, a defect is an error.
    pub fn level(&self) -> tracing::Level {
        match self.source() {
            Source::Client | Source::Route => tracing::Level::INFO,
            Source::TokenEndpoint | Source::Upstream | Source::Config => tracing::Level::WARN,
            Source::Store | Source::Internal => tracing::Level::ERROR,
        }
    }

    /// Counts this error in `errors_total`, under `route`, with its code and source.
    pub fn count(&self, metrics: &crate::metrics::Metrics, route: &str) {
        metrics.error(route, self.code(), self.source().as_str());
    }

    /// The JSON body every error is answered with.
    fn body(&self, route: Option<&str>) -> String {
        serde_json::json!({
            "error": self.code(),
            "message": self.to_string(),
            "route": route,
            "source": self.source().as_str(),
            "retryable": self.retryable(),
        })
        .to_string()
    }

    /// The response as HTTP/1.1 bytes, closing the connection: for a connection
    /// refused before any HTTP is served on it (no server to write the response).
    pub fn http1(&self) -> Vec<u8> {
        let resp = self.response(None);
        let body = self.body(None);
        let status = resp.status();
        let mut out = format!(
            "HTTP/1.1 {} {}\r\n",
            status.as_str(),
            status.canonical_reason().unwrap_or("")
        )
        .into_bytes();
        for (name, value) in resp.headers() {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(
            format!(
                "connection: close\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        out
    }

    pub fn response(&self, route: Option<&str>) -> Response<ProxyBody> {
        let mut resp = Response::new(ProxyBody::full(self.body(route)));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert("x-tokenproxy-error", HeaderValue::from_static(self.code()));
        match self {
            ProxyError::NoValidToken { retry_after, .. } => {
                h.insert(RETRY_AFTER, HeaderValue::from(retry_after.as_secs().max(1)));
            }
            ProxyError::Overloaded => {
                h.insert(RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ProxyError::RefreshTooSoon { retry_after }
            | ProxyError::QuotaExhausted { retry_after } => {
                h.insert(RETRY_AFTER, HeaderValue::from(retry_after.as_secs().max(1)));
            }
            ProxyError::AdminUnauthorized => {
                h.insert(
                    http::header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"tokenproxy-admin\""),
                );
            }
            ProxyError::ProxyAuth => {
                h.insert(
                    http::header::PROXY_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"tokenproxy\""),
                );
            }
            ProxyError::Connect | ProxyError::ConnectOutsideCa => {
                h.insert(ALLOW, HeaderValue::from_static(PROXY_METHODS));
            }
            ProxyError::MethodNotAllowed { allow, .. } => {
                h.insert(ALLOW, HeaderValue::from_static(allow));
            }
            ProxyError::AdminNotAProxy { connect: true } => {
                h.insert(ALLOW, HeaderValue::from_static("GET, HEAD, POST"));
                h.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            }
            // The connection's framing can no longer be trusted, or the client is
            // not one the admin listener serves.
            ProxyError::AdminNotAProxy { .. }
            | ProxyError::AmbiguousFraming
            | ProxyError::HeaderTooLarge
            | ProxyError::BadHost
            | ProxyError::ClientTimeout(_) => {
                h.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        resp
    }

    /// A method the proxy never forwards (`TRACE` would echo the injected token).
    pub fn proxy_method(method: &http::Method) -> ProxyError {
        ProxyError::MethodNotAllowed {
            method: method.as_str().chars().take(32).collect(),
            allow: PROXY_METHODS,
        }
    }
}

/// Logs a request's line at the level its outcome deserves.
#[macro_export]
#[doc(hidden)]
macro_rules! log_at {
    ($level:expr, $($arg:tt)+) => {
        match $level {
            tracing::Level::ERROR => tracing::error!($($arg)+),
            tracing::Level::WARN => tracing::warn!($($arg)+),
            tracing::Level::INFO => tracing::info!($($arg)+),
            tracing::Level::DEBUG => tracing::debug!($($arg)+),
            _ => tracing::trace!($($arg)+),
        }
    };
}

/// An error and its sources, `outer: inner: innermost`, for log lines (a
/// transport error's cause is several levels down).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
#[path = "error_tests.rs"]
mod tests;
