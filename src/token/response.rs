//! Parsing token endpoint responses, leniently where providers differ and strictly
//! where a mistake would cost a token.
//!
//! Accepted: `expires_in` as a number or a string (Entra v1, Exact Online), absent
//! (Salesforce: the caller falls back to `default_lifetime`), or `expires_on` as epoch
//! seconds or an RFC 3339 date. Errors are classified by the OAuth `error` field (or
//! HubSpot's `status`), not the HTTP status: Zoho reports errors with a 200. Error
//! texts quote the status and the start of a non-JSON body, never a token.

use std::time::{Duration, SystemTime};

use http::StatusCode;
use serde_json::{Map, Value};

use crate::secret::Secret;

/// A successful token response.
#[derive(Debug)]
pub struct TokenResponse {
    pub access_token: Secret,
    /// `None` when the server issued no new refresh token: keep the old one.
    pub refresh_token: Option<Secret>,
    /// `None` when the response says nothing about expiry.
    pub lifetime: Option<Duration>,
    /// Non-secret fields (`instance_url`, `scope`, `api_domain`, …).
    pub extra: Map<String, Value>,
}

/// Why a token request failed.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    /// The credential is dead (`invalid_grant`, `invalid_client`, `unauthorized_client`):
    /// retrying cannot help and may count against the client.
    #[error("token endpoint refused the credentials: {code}{}", describe(.description))]
    Terminal {
        code: String,
        description: Option<String>,
    },
    /// A refusal or failure that may pass (5xx, 429, `temporarily_unavailable`, …).
    #[error("token endpoint answered {status}: {code}{}", describe(.description))]
    Rejected {
        status: u16,
        code: String,
        description: Option<String>,
        retry_after: Option<Duration>,
    },
    /// The response is not a token response at all.
    #[error("token endpoint answered {status} with {detail}")]
    Malformed { status: u16, detail: String },
    /// No response: connection refused, TLS failure, timeout.
    #[error("token endpoint unreachable: {0}")]
    Transport(String),
}

fn describe(description: &Option<String>) -> String {
    description
        .as_ref()
        .map(|d| format!(" ({d})"))
        .unwrap_or_default()
}

impl GrantError {
    pub fn is_terminal(&self) -> bool {
        matches!(self, GrantError::Terminal { .. })
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            GrantError::Rejected { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

const TERMINAL_CODES: [&str; 3] = ["invalid_grant", "invalid_client", "unauthorized_client"];
/// Response fields that are secrets and must not land in `extra`.
const SECRET_FIELDS: [&str; 3] = ["access_token", "refresh_token", "id_token"];

/// Parses a token endpoint answer. `retry_after` is the response's `Retry-After`.
pub fn parse(
    status: StatusCode,
    body: &[u8],
    retry_after: Option<Duration>,
    now: SystemTime,
) -> Result<TokenResponse, GrantError> {
    let malformed = |detail: String| GrantError::Malformed {
        status: status.as_u16(),
        detail,
    };
    let text = std::str::from_utf8(body).unwrap_or("");
    if text.trim().is_empty() {
        return Err(malformed(if body.is_empty() {
            "an empty body".into()
        } else {
            "a body that is not UTF-8 text".into()
        }));
    }
    let Ok(Value::Object(mut fields)) = serde_json::from_str::<Value>(text) else {
        return Err(malformed(format!(
            "a body that is not a JSON object: {}",
            quote(text)
        )));
    };

    let string = |v: &Value| v.as_str().map(str::to_owned);
    let error = fields.get("error").and_then(string).or_else(|| {
        // HubSpot: {"status": "BAD_REFRESH_TOKEN", "message": …}
        fields
            .get("status")
            .and_then(string)
            .filter(|_| !status.is_success() || !fields.contains_key("access_token"))
    });
    if let Some(code) = error {
        let description = ["error_description", "message"]
            .iter()
            .find_map(|k| fields.get(*k).and_then(string));
        let code_lower = code.to_ascii_lowercase();
        if TERMINAL_CODES.contains(&code_lower.as_str()) || code_lower == "bad_refresh_token" {
            return Err(GrantError::Terminal { code, description });
        }
        return Err(GrantError::Rejected {
            status: status.as_u16(),
            code,
            description,
            retry_after,
        });
    }
    if !status.is_success() {
        let names: Vec<&str> = fields.keys().map(String::as_str).collect();
        return Err(GrantError::Rejected {
            status: status.as_u16(),
            code: format!("no OAuth error code (fields: {})", names.join(", ")),
            description: None,
            retry_after,
        });
    }

    let access_token = match fields.remove("access_token") {
        Some(Value::String(s)) if !s.is_empty() => Secret::new(s),
        _ => {
            let names: Vec<&str> = fields.keys().map(String::as_str).collect();
            return Err(malformed(format!(
                "no access_token (fields: {})",
                names.join(", ")
            )));
        }
    };
    let refresh_token = match fields.remove("refresh_token") {
        Some(Value::String(s)) if !s.is_empty() => Some(Secret::new(s)),
        _ => None,
    };
    let lifetime = lifetime(&fields, now);
    fields.retain(|k, _| {
        !SECRET_FIELDS.contains(&k.as_str())
            && !["expires_in", "expires_on", "token_type"].contains(&k.as_str())
    });
    Ok(TokenResponse {
        access_token,
        refresh_token,
        lifetime,
        extra: fields,
    })
}

/// `expires_in` (number or numeric string) wins; else `expires_on` (epoch seconds or
/// a date). A value that cannot be read counts as absent; zero stays zero.
fn lifetime(fields: &Map<String, Value>, now: SystemTime) -> Option<Duration> {
    if let Some(secs) = fields.get("expires_in").and_then(seconds) {
        return Some(Duration::from_secs_f64(secs));
    }
    let on = fields.get("expires_on")?;
    let at = match seconds(on) {
        Some(epoch) => SystemTime::UNIX_EPOCH + Duration::from_secs_f64(epoch),
        None => humantime::parse_rfc3339_weak(on.as_str()?.trim()).ok()?,
    };
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

fn seconds(v: &Value) -> Option<f64> {
    let n = match v {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    (0.0..1e12).contains(&n).then_some(n)
}

/// The first characters of a body, on one line, for an error message. A body that
/// may hold a token (broken JSON, a form-encoded answer) is described, not quoted.
fn quote(text: &str) -> String {
    let t = text.trim_start();
    if t.starts_with(['{', '[']) || t.to_ascii_lowercase().contains("token") {
        return format!("({} bytes, not quoted: it may hold a token)", text.len());
    }
    let mut out: String = text
        .chars()
        .take(120)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().nth(120).is_some() {
        out.push('…');
    }
    format!("\"{}\"", out.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: SystemTime = SystemTime::UNIX_EPOCH;

    fn ok(body: &str) -> TokenResponse {
        parse(StatusCode::OK, body.as_bytes(), None, NOW).unwrap()
    }

    fn err(status: u16, body: &str) -> GrantError {
        parse(
            StatusCode::from_u16(status).unwrap(),
            body.as_bytes(),
            None,
            NOW,
        )
        .unwrap_err()
    }

    #[test]
    fn expires_in_as_number_string_absent_and_zero() {
        let secs = |b: &str| ok(b).lifetime.map(|d| d.as_secs());
        assert_eq!(secs(r#"{"access_token":"a","expires_in":600}"#), Some(600));
        assert_eq!(
            secs(r#"{"access_token":"a","expires_in":"3599"}"#),
            Some(3599)
        );
        assert_eq!(secs(r#"{"access_token":"a"}"#), None);
        assert_eq!(secs(r#"{"access_token":"a","expires_in":"0"}"#), Some(0));
        assert_eq!(secs(r#"{"access_token":"a","expires_in":"soon"}"#), None);
    }

    #[test]
    fn expires_on_as_epoch_string_or_date() {
        let secs = |b: &str| ok(b).lifetime.map(|d| d.as_secs());
        assert_eq!(
            secs(r#"{"access_token":"a","expires_on":"1800"}"#),
            Some(1800)
        );
        assert_eq!(secs(r#"{"access_token":"a","expires_on":60}"#), Some(60));
        assert_eq!(
            secs(r#"{"access_token":"a","expires_on":"1970-01-01T01:00:00Z"}"#),
            Some(3600)
        );
    }

    #[test]
    fn secrets_leave_extra_and_rotation_is_optional() {
        let r = ok(
            r#"{"access_token":"a","refresh_token":"r","id_token":"i","token_type":"Bearer",
                       "instance_url":"https://x.my.salesforce.com","issued_at":"1700000000000"}"#,
        );
        assert_eq!(r.access_token.expose(), "a");
        assert_eq!(r.refresh_token.unwrap().expose(), "r");
        let keys: Vec<_> = r.extra.keys().cloned().collect();
        assert_eq!(keys, ["instance_url", "issued_at"]);
        assert!(ok(r#"{"access_token":"a"}"#).refresh_token.is_none());
    }

    #[test]
    fn oauth_errors_are_classified_by_code_not_status() {
        assert!(
            err(
                400,
                r#"{"error":"invalid_grant","error_description":"Old refresh token used"}"#
            )
            .is_terminal()
        );
        assert!(err(401, r#"{"error":"invalid_client"}"#).is_terminal());
        // Zoho: an error with a 200.
        assert!(
            err(200, r#"{"error":"invalid_code"}"#)
                .to_string()
                .contains("invalid_code")
        );
        // HubSpot's own shape.
        assert!(
            err(
                400,
                r#"{"status":"BAD_REFRESH_TOKEN","message":"missing or invalid"}"#
            )
            .is_terminal()
        );
        let e = err(
            400,
            r#"{"error":"access_denied","error_description":"Rate limit exceeded"}"#,
        );
        assert!(!e.is_terminal());
        assert!(e.to_string().contains("Rate limit exceeded"), "{e}");
        assert!(!err(503, r#"{"message":"down"}"#).is_terminal());
    }

    #[test]
    fn every_rfc_6749_error_code_is_classified() {
        // Terminal: the credential or the client is refused; retrying cannot help.
        for code in ["invalid_grant", "invalid_client", "unauthorized_client"] {
            let e = err(400, &format!(r#"{{"error":"{code}"}}"#));
            assert!(e.is_terminal(), "{code}");
        }
        // Retried with backoff: passing conditions, and request errors a provider
        // may send while it is being reconfigured.
        for code in [
            "invalid_request",
            "unsupported_grant_type",
            "invalid_scope",
            "slow_down",
            "temporarily_unavailable",
            "access_denied",
            "server_error",
        ] {
            let e = err(400, &format!(r#"{{"error":"{code}"}}"#));
            assert!(!e.is_terminal(), "{code}");
            assert!(e.to_string().contains(code));
        }
        let e = parse(
            StatusCode::TOO_MANY_REQUESTS,
            br#"{"error":"slow_down"}"#,
            Some(std::time::Duration::from_secs(30)),
            NOW,
        )
        .unwrap_err();
        assert_eq!(e.retry_after(), Some(std::time::Duration::from_secs(30)));
    }

    #[test]
    fn non_token_bodies_are_named_without_tokens() {
        let e = err(200, "").to_string();
        assert!(e.contains("200") && e.contains("empty body"), "{e}");
        let e = err(502, "<html><body>Bad Gateway</body></html>").to_string();
        assert!(
            e.contains("502") && e.contains("<html><body>Bad Gateway"),
            "{e}"
        );
        let e = err(
            200,
            r#"{"token_type":"bearer","refresh_token":"secret-rt"}"#,
        )
        .to_string();
        assert!(
            e.contains("no access_token") && !e.contains("secret-rt"),
            "{e}"
        );
        let e = err(200, r#"{"access_token": "trunc"#).to_string();
        assert!(
            e.contains("not a JSON object") && !e.contains("trunc"),
            "{e}"
        );
        let e = err(200, "access_token=form-encoded&expires=5").to_string();
        assert!(!e.contains("form-encoded"), "{e}");
        let long = "x".repeat(10_000);
        assert!(err(500, &long).to_string().len() < 300);
    }
}
