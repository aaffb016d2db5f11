//! Errors that tokenproxy itself answers with, mapped in one place to a status
//! code, an `x-tokenproxy-error` code and a JSON body.
//!
//! Bodies name the route and say what to do; they never carry a token, a header
//! value or a full upstream URL.

use std::time::Duration;

use http::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use http::{Response, StatusCode};

use crate::proxy::ProxyBody;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no route matches this request; tokenproxy forwards only to configured upstreams")]
    NoRoute,
    #[error(
        "the path leaves the route (a `.` or `..` segment, also percent-encoded) or is not valid"
    )]
    BadPath,
    #[error(
        "CONNECT is not supported: tokenproxy must see the request to add the token; send plain http:// URLs through it"
    )]
    Connect,
    #[error("could not read the request body from the client")]
    ClientBody,
    #[error(
        "this proxy needs a key: send it as configured in [listen] client_key (by default Proxy-Authorization: Bearer <key>)"
    )]
    ProxyAuth,
    #[error(
        "protocol upgrades (WebSocket) cannot carry an injected token; send plain HTTP requests"
    )]
    Upgrade,
    #[error("the request body is larger than proxy.max_request_body")]
    TooLarge,
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
    #[error("no valid access token is available; see the admin /status endpoint")]
    NoValidToken { retry_after: Duration },
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::BadPath | ProxyError::ClientBody | ProxyError::Upgrade => {
                StatusCode::BAD_REQUEST
            }
            ProxyError::ProxyAuth => StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            ProxyError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::Connect => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::UpstreamUnreachable
            | ProxyError::UpstreamFailed
            | ProxyError::NoUpstream => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::NoValidToken { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The `x-tokenproxy-error` value and the JSON `error` field.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::NoRoute => "no_route",
            ProxyError::BadPath => "bad_path",
            ProxyError::Connect => "connect_not_supported",
            ProxyError::ClientBody => "client_body",
            ProxyError::ProxyAuth => "proxy_auth_required",
            ProxyError::Upgrade => "upgrade_not_supported",
            ProxyError::TooLarge => "request_too_large",
            ProxyError::UpstreamUnreachable => "upstream_unreachable",
            ProxyError::UpstreamTimeout(_) => "upstream_timeout",
            ProxyError::UpstreamFailed => "upstream_failed",
            ProxyError::NoUpstream => "no_upstream",
            ProxyError::NoValidToken { .. } => "no_valid_token",
        }
    }

    pub fn response(&self, route: Option<&str>) -> Response<ProxyBody> {
        let body = serde_json::json!({
            "error": self.code(),
            "message": self.to_string(),
            "route": route,
        });
        let mut resp = Response::new(ProxyBody::full(body.to_string()));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert("x-tokenproxy-error", HeaderValue::from_static(self.code()));
        if let ProxyError::NoValidToken { retry_after } = self {
            h.insert(RETRY_AFTER, HeaderValue::from(retry_after.as_secs().max(1)));
        }
        if let ProxyError::ProxyAuth = self {
            h.insert(
                http::header::PROXY_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"tokenproxy\""),
            );
        }
        if let ProxyError::Connect = self {
            h.insert(
                http::header::ALLOW,
                HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
            );
        }
        resp
    }
}
