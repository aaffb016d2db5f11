//! The fake provider's API: it accepts only the current, unexpired access token,
//! in the form the options name, and echoes what it received.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http::header::{CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::json;

use super::provider::{ApiAuth, Provider};
use super::serve::{FakeBody, json_resp, query_number};

impl Provider {
    pub(super) async fn api(&self, req: Request<Incoming>) -> Response<FakeBody> {
        self.api_requests.fetch_add(1, Ordering::SeqCst);
        if !self.authorized(&req) {
            let mut r = json_resp(StatusCode::UNAUTHORIZED, json!({"error": "invalid_token"}));
            r.headers_mut().insert(
                WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
            return r;
        }
        let (parts, body) = req.into_parts();
        let path = parts.uri.path();
        if path.ends_with("/download") {
            let mut r = Response::new(FakeBody::Zeros(query_number(&parts.uri, "bytes")));
            r.headers_mut().insert(
                CONTENT_TYPE,
                http::HeaderValue::from_static("application/octet-stream"),
            );
            return r;
        }
        if path.ends_with("/slow") {
            let ms = query_number(&parts.uri, "ms");
            tokio::time::sleep(Duration::from_millis(ms)).await;
            return json_resp(StatusCode::OK, json!({"slept_ms": ms}));
        }
        if path.ends_with("/redirect") {
            let mut r = Response::new(FakeBody::full(""));
            *r.status_mut() = StatusCode::FOUND;
            if let Ok(v) = format!("{}landed?from=redirect", self.api_url).parse() {
                r.headers_mut().insert(LOCATION, v);
            }
            return r;
        }
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let auth_header = match &self.lock().opts.api_auth {
            ApiAuth::Header { name, .. } => Some(name.clone()),
            ApiAuth::Query { .. } => None,
        };
        let headers: serde_json::Map<String, serde_json::Value> = parts
            .headers
            .iter()
            .filter(|(k, _)| Some(k.as_str()) != auth_header.as_deref())
            .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
            .collect();
        json_resp(
            StatusCode::OK,
            json!({
                "method": parts.method.as_str(),
                "path": path,
                "query": parts.uri.query(),
                "version": format!("{:?}", parts.version),
                "headers": headers,
                "body_len": body.len(),
                "body": String::from_utf8_lossy(&body),
            }),
        )
    }

    fn authorized(&self, req: &Request<Incoming>) -> bool {
        let s = self.lock();
        let Some((token, until)) = &s.access_current else {
            return false;
        };
        if Instant::now() >= *until {
            return false;
        }
        match &s.opts.api_auth {
            ApiAuth::Header { name, prefix } => {
                req.headers()
                    .get(name.as_str())
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix(prefix.as_str()))
                    == Some(token.as_str())
            }
            ApiAuth::Query { param } => req.uri().query().is_some_and(|q| {
                form_urlencoded::parse(q.as_bytes())
                    .any(|(k, v)| k == param.as_str() && v == token.as_str())
            }),
        }
    }
}
