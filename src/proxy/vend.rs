//! Token vending: `GET /tokenproxy/v1/tokens/NAME` on the proxy listener, for
//! tools that must hold the access token themselves (an ADF Web activity, a
//! Matillion Python Script, a shell script). Only tokens with `vend = true`, only
//! to callers that list them; never the refresh token.
//!
//! The answer is `{"token_type", "access_token", "expires_at", "expires_in"}`
//! with `Cache-Control: no-store`. A token that is not valid joins (or starts) the
//! single-flight refresh as a proxied request would, and is `503` with
//! `Retry-After` if there is still none. Each vend is a log line (caller, token,
//! generation) and `tokenproxy_tokens_vended_total{token,caller}`.

use std::time::{Duration, SystemTime};

use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue, PRAGMA};
use http::{Method, Response};

use super::Proxy;
use super::gate::Who;
use crate::body::ProxyBody;
use crate::error::ProxyError;

/// Where vended tokens are, under [`crate::config::OWN_PATHS`].
const TOKENS: &str = "/tokenproxy/v1/tokens/";

impl Proxy {
    pub(super) async fn vend(
        &self,
        parts: &http::request::Parts,
        who: Who,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let Some(name) = parts.uri.path().strip_prefix(TOKENS) else {
            return Err(ProxyError::NoRoute);
        };
        if parts.method != Method::GET {
            return Err(ProxyError::MethodNotAllowed {
                method: parts.method.as_str().chars().take(32).collect(),
                allow: "GET",
            });
        }
        let index = self
            .sources
            .iter()
            .position(|s| s.name() == name)
            .filter(|&i| self.vending[i])
            .ok_or(ProxyError::NotVended)?;
        self.gate.allow(who, index)?;
        let source = &self.sources[index];
        let state = super::usable(source, |s| s.valid_for(Duration::ZERO)).await?;
        let record = state.record.as_ref();
        let (Some(record), Some(token)) = (record, record.and_then(|r| r.access_token.as_ref()))
        else {
            return Err(ProxyError::NoValidToken {
                retry_after: Duration::from_secs(1),
                cause: state.cause(),
            });
        };
        let caller = self.gate.name(who);
        tracing::info!(
            caller = &**caller,
            token = source.name(),
            generation = record.generation,
            "token vended"
        );
        self.metrics.vended(source.name(), caller);
        let body =
            crate::token::vended_json(token.expose(), record.expires_at_ms, SystemTime::now());
        let mut resp = Response::new(ProxyBody::full(body));
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(PRAGMA, HeaderValue::from_static("no-cache"));
        Ok(resp)
    }
}
