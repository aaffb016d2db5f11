//! Parsing token endpoint responses, leniently where providers differ and strictly
//! where a mistake would cost a token.
//!
//! Accepted: `expires_in` as a number or a string (Entra v1, Exact Online), absent
//! (Salesforce: the caller falls back to `default_lifetime`), or `expires_on` as epoch
//! seconds or an RFC 3339 date. Errors are classified by the OAuth `error` field (or
//! HubSpot's `status`), not the HTTP status: Zoho reports errors with a 200.
//!
//! Error texts quote only what is safe: the status, the OAuth `error` code when it
//! is a plain word, and the `error_description` cut short, without control
//! characters, and with every secret of the request masked ([`GrantError::masked`]):
//! a server that echoes the request must not put the refresh token or the client
//! secret into `/status` or a log line. Bodies that are not JSON (an HTML error
//! page may echo the request too) are described, never quoted.

use std::time::{Duration, SystemTime};

use http::StatusCode;
use serde_json::{Map, Value};

use crate::error::Source;
use crate::secret::Secret;

/// A successful token response.
#[derive(Debug)]
pub struct TokenResponse {
    pub access_token: Secret,
    /// `None` when the server issued no new refresh token: keep the old one.
    pub refresh_token: Option<Secret>,
    /// `None` when the response says nothing usable about expiry (then the token's
    /// `default_lifetime` applies).
    pub lifetime: Option<Duration>,
    /// What the provider said about expiry when it could not be used (`expires_in`
    /// zero or negative, an `expires_on` in the past), for the log; never a secret.
    pub unusable_lifetime: Option<String>,
    /// Non-secret fields (`instance_url`, `scope`, `api_domain`, …).
    pub extra: Map<String, Value>,
}

/// Why a token request failed.
#[derive(Debug, Clone, thiserror::Error)]
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
    /// No response, after the request may have left: a timeout, a connection cut
    /// after sending. Whether the provider acted on it is unknown.
    #[error("token endpoint unreachable: {0}")]
    Transport(String),
    /// The request never left: a connection that could not be made. The provider
    /// saw nothing.
    #[error("{0}")]
    Unsent(String),
    /// A configured credential (a secret, a private key, a client certificate)
    /// could not be read or used; the request never left.
    #[error("{0}")]
    Credential(String),
}

/// The description as quoted: cut to [`MAX_DESCRIPTION`] characters here, when it
/// is shown, so that masking (in [`GrantError::masked`]) always sees the whole text
/// first: a secret straddling the cut is masked whole, never shown in part.
fn describe(description: &Option<String>) -> String {
    let Some(d) = description else {
        return String::new();
    };
    let mut shown: String = d.chars().take(MAX_DESCRIPTION).collect();
    if d.chars().nth(MAX_DESCRIPTION).is_some() {
        shown.push('…');
    }
    format!(" ({shown})")
}

/// Longest `error_description` quoted.
const MAX_DESCRIPTION: usize = 200;
/// Longest `error_description` kept (to be masked, then cut when shown).
const MAX_DESCRIPTION_KEPT: usize = 64 * 1024;

/// The OAuth `error` code when it is a plain word (RFC 6749 §5.2 allows only
/// printable ASCII without `"` and `\\`; real codes are words), else a placeholder.
fn safe_code(code: &str) -> String {
    let plain = !code.is_empty()
        && code.len() <= 64
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(&b));
    if plain {
        code.to_owned()
    } else {
        "(an error code that is not a plain word, not quoted)".to_owned()
    }
}

/// A description on one line, bounded; cut to its quoted length only when shown.
fn safe_description(text: &str) -> String {
    text.chars()
        .take(MAX_DESCRIPTION_KEPT)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

impl GrantError {
    /// The same error with each of `secrets` masked wherever the server's words are
    /// quoted (see [`crate::secret::mask`]).
    pub fn masked(self, secrets: &[&str]) -> GrantError {
        let mask = |t: String| crate::secret::mask(&t, secrets);
        match self {
            GrantError::Terminal { code, description } => GrantError::Terminal {
                code: mask(code),
                description: description.map(mask),
            },
            GrantError::Rejected {
                status,
                code,
                description,
                retry_after,
            } => GrantError::Rejected {
                status,
                code: mask(code),
                description: description.map(mask),
                retry_after,
            },
            GrantError::Malformed { status, detail } => GrantError::Malformed {
                status,
                detail: mask(detail),
            },
            GrantError::Transport(detail) => GrantError::Transport(mask(detail)),
            GrantError::Unsent(detail) => GrantError::Unsent(mask(detail)),
            GrantError::Credential(detail) => GrantError::Credential(mask(detail)),
        }
    }

    /// What failed: the configured credential, or the token endpoint.
    pub fn cause(&self) -> Source {
        match self {
            GrantError::Credential(_) => Source::Config,
            _ => Source::TokenEndpoint,
        }
    }

    pub fn is_terminal(&self) -> bool {
        matches!(self, GrantError::Terminal { .. })
    }

    /// Whether the request may have reached the provider without an answer being
    /// read: a rotating refresh token may have been spent.
    pub fn in_doubt(&self) -> bool {
        matches!(self, GrantError::Transport(_))
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
        return Err(malformed(describe_body(text)));
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
            .find_map(|k| fields.get(*k).and_then(string))
            .map(|d| safe_description(&d));
        let code = safe_code(&code);
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
        return Err(GrantError::Rejected {
            status: status.as_u16(),
            code: format!("no OAuth error code (fields: {})", field_names(&fields)),
            description: None,
            retry_after,
        });
    }

    let access_token = match fields.remove("access_token") {
        Some(Value::String(s)) if !s.is_empty() => Secret::new(s),
        _ => {
            return Err(malformed(format!(
                "no access_token (fields: {})",
                field_names(&fields)
            )));
        }
    };
    let refresh_token = match fields.remove("refresh_token") {
        Some(Value::String(s)) if !s.is_empty() => Some(Secret::new(s)),
        _ => None,
    };
    let (lifetime, unusable_lifetime) = match lifetime(&fields, now) {
        Ok(lifetime) => (lifetime, None),
        Err(said) => (None, Some(said)),
    };
    fields.retain(|k, _| {
        !SECRET_FIELDS.contains(&k.as_str())
            && !["expires_in", "expires_on", "token_type"].contains(&k.as_str())
    });
    Ok(TokenResponse {
        access_token,
        refresh_token,
        lifetime,
        unusable_lifetime,
        extra: fields,
    })
}

/// The longest lifetime tokenproxy believes: a larger `expires_in` (some providers
/// send "never" as a huge number) is read as this, so the token is still refreshed
/// once a year and no time arithmetic overflows.
pub const MAX_LIFETIME: Duration = Duration::from_secs(365 * 86_400);

/// `expires_in` (number or numeric string) wins; else `expires_on` (epoch seconds or
/// a date). `Ok(None)`: neither is there. More than [`MAX_LIFETIME`] (however large)
/// is [`MAX_LIFETIME`]. `Err(what)`: a value that cannot be a lifetime — zero,
/// negative, unreadable, or an expiry not in the future: refreshing on it would
/// spin, so the caller uses `default_lifetime` and says what the provider sent.
fn lifetime(fields: &Map<String, Value>, now: SystemTime) -> Result<Option<Duration>, String> {
    let said = |name: &str, v: &Value| format!("{name}: {}", shown(v));
    if let Some(v) = fields.get("expires_in") {
        return match seconds(v) {
            Some(secs) if secs > 0.0 => Ok(Some(capped(secs).min(MAX_LIFETIME))),
            _ => Err(said("expires_in", v)),
        };
    }
    let Some(on) = fields.get("expires_on") else {
        return Ok(None);
    };
    let at = match seconds(on) {
        Some(epoch) if epoch >= 0.0 => SystemTime::UNIX_EPOCH.checked_add(capped(epoch)),
        Some(_) => None,
        None => on
            .as_str()
            .and_then(|t| humantime::parse_rfc3339_weak(t.trim()).ok()),
    };
    match at.map(|at| at.duration_since(now)) {
        Some(Ok(left)) if !left.is_zero() => Ok(Some(left.min(MAX_LIFETIME))),
        _ => Err(said("expires_on", on) + " (not in the future)"),
    }
}

/// Seconds as a duration, at most [`MAX_LIFETIME`] (an epoch as far as year 9999).
fn capped(secs: f64) -> Duration {
    const LARGEST: f64 = 253_402_300_799.0;
    Duration::from_secs_f64(secs.min(LARGEST))
}

/// A number or a numeric string, in seconds (`inf` and `NaN` are not numbers).
fn seconds(v: &Value) -> Option<f64> {
    let n = match v {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    n.is_finite().then_some(n)
}

/// A lifetime value as it may be logged: a number, or a short plain word.
fn shown(v: &Value) -> String {
    match v {
        Value::Number(n) => n.to_string(),
        Value::String(s)
            if s.len() <= 32
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+-.:/ ".contains(&b)) =>
        {
            format!("{s:?}")
        }
        _ => "(a value that is not a number, not quoted)".to_owned(),
    }
}

/// The names of a response's fields, for a message; a name that is not a short
/// plain word (a server could echo anything as a key) is not quoted.
fn field_names(fields: &Map<String, Value>) -> String {
    let names: Vec<String> = fields
        .keys()
        .take(20)
        .map(|k| match k.len() <= 32 {
            true => safe_code(k),
            false => "(a long name, not quoted)".to_owned(),
        })
        .collect();
    names.join(", ")
}

/// What a body that is not a JSON object is, without quoting it: an error page may
/// echo the request, secrets included.
fn describe_body(text: &str) -> String {
    let t = text.trim_start().to_ascii_lowercase();
    let kind = if t.starts_with("<!doctype html") || t.starts_with("<html") {
        "an HTML page"
    } else if t.starts_with('<') {
        "an XML body"
    } else if t.starts_with(['{', '[']) {
        "JSON that is not a token response object"
    } else {
        "a body that is not a JSON object"
    };
    format!("{kind} ({} bytes, not quoted)", text.len())
}

#[cfg(test)]
#[path = "response_tests.rs"]
mod tests;
