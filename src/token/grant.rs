//! One request to a token endpoint: the form, the client authentication, a bounded
//! read of the answer. It does not decide when to refresh or what to do with the
//! result; `TokenSource` does.

use std::time::{Duration, SystemTime};

use base64::Engine;
use http::header::{ACCEPT, AUTHORIZATION, RETRY_AFTER};

use super::response::{self, GrantError, TokenResponse};
use crate::config::{ClientAuth, Grant, TokenConfig};
use crate::secret::Secret;

/// Token responses are small; a larger body is cut off at this size and fails to parse.
const MAX_RESPONSE: usize = 1024 * 1024;

/// Asks the token endpoint for a new access token. `refresh_token` is required for
/// the refresh grant and ignored otherwise.
pub async fn request(
    http: &reqwest::Client,
    cfg: &TokenConfig,
    refresh_token: Option<&Secret>,
) -> Result<TokenResponse, GrantError> {
    let resolve = |r: &crate::secret::SecretRef| {
        r.resolve()
            .map_err(|e| GrantError::Transport(format!("cannot read a configured secret: {e}")))
    };
    let client_id = resolve(&cfg.client_id)?;
    let client_secret = cfg.client_secret.as_ref().map(resolve).transpose()?;

    let mut form: Vec<(&str, &str)> = vec![("grant_type", cfg.grant.as_str())];
    match cfg.grant {
        Grant::RefreshToken => {
            let rt = refresh_token.ok_or_else(|| GrantError::Terminal {
                code: "no_refresh_token".into(),
                description: Some("no refresh token is stored".into()),
            })?;
            form.push(("refresh_token", rt.expose()));
        }
        Grant::ClientCredentials => {}
    }
    if let Some(scope) = &cfg.scope {
        form.push(("scope", scope));
    }
    for (k, v) in &cfg.params {
        form.push((k, v));
    }

    let mut req = http
        .post(cfg.token_url.clone())
        .timeout(cfg.timeout)
        .header(ACCEPT, "application/json");
    match cfg.client_auth {
        ClientAuth::Post => {
            form.push(("client_id", client_id.expose()));
            if let Some(s) = &client_secret {
                form.push(("client_secret", s.expose()));
            }
        }
        ClientAuth::Basic => {
            let secret = client_secret.as_ref().map(Secret::expose).unwrap_or("");
            req = req.header(AUTHORIZATION, basic_auth(client_id.expose(), secret));
        }
    }
    for (name, value) in &cfg.headers {
        let value = resolve(value)?;
        let mut hv = http::HeaderValue::try_from(value.expose())
            .map_err(|_| GrantError::Transport(format!("header {name} has an invalid value")))?;
        hv.set_sensitive(true);
        req = req.header(name, hv);
    }

    let mut resp = req
        .form(&form)
        .send()
        .await
        .map_err(|e| GrantError::Transport(transport_detail(&e)))?;
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| GrantError::Transport(transport_detail(&e)))?
    {
        let room = MAX_RESPONSE - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= MAX_RESPONSE {
            return Err(GrantError::Malformed {
                status: status.as_u16(),
                detail: format!("a body over {MAX_RESPONSE} bytes"),
            });
        }
    }
    response::parse(status, &body, retry_after, SystemTime::now())
}

/// RFC 6749 §2.3.1: id and secret are each form-urlencoded before base64.
pub fn basic_auth(id: &str, secret: &str) -> http::HeaderValue {
    let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let raw = format!("{}:{}", enc(id), enc(secret));
    let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
    let mut value = http::HeaderValue::try_from(format!("Basic {b64}"))
        .unwrap_or_else(|_| http::HeaderValue::from_static("Basic"));
    value.set_sensitive(true);
    value
}

/// Seconds or an HTTP date.
fn parse_retry_after(text: &str) -> Option<Duration> {
    if let Ok(secs) = text.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = humantime::parse_rfc3339_weak(text)
        .ok()
        .or_else(|| httpdate(text))?;
    at.duration_since(SystemTime::now()).ok()
}

fn httpdate(text: &str) -> Option<SystemTime> {
    // "Sun, 06 Nov 1994 08:49:37 GMT" → "1994-11-06T08:49:37Z"
    let parts: Vec<&str> = text.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts[..] else {
        return None;
    };
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let m = MONTHS.iter().position(|x| *x == month)? + 1;
    humantime::parse_rfc3339(&format!("{year}-{m:02}-{day:0>2}T{time}Z")).ok()
}

/// The error chain of a failed request, without the URL's query (reqwest puts the
/// URL in its messages; token URLs carry no secrets, but keep the habit).
fn transport_detail(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    let mut detail = kind.to_owned();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        detail.push_str(": ");
        detail.push_str(&s.to_string());
        source = s.source();
    }
    detail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_form_encodes_each_part() {
        let v = basic_auth("id:with+plus", "sé cret&%");
        let b64 = v.to_str().unwrap().strip_prefix("Basic ").unwrap();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        assert_eq!(
            String::from_utf8(raw).unwrap(),
            "id%3Awith%2Bplus:s%C3%A9+cret%26%25"
        );
        assert!(v.is_sensitive());
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"), None); // in the past
        assert!(httpdate("Sun, 06 Nov 1994 08:49:37 GMT").is_some());
        assert_eq!(parse_retry_after("soon"), None);
    }
}
