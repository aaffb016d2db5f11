//! What an upstream says about its rate limits, one parser per header family:
//!
//! - Exact Online: `X-RateLimit-Minutely-{Limit,Remaining,Reset}` (a minute) and
//!   `X-RateLimit-{Limit,Remaining,Reset}` (then its day), resets in epoch
//!   milliseconds;
//! - the common `X-RateLimit-{Limit,Remaining,Reset}` (GitHub, many others), the
//!   reset in epoch seconds, epoch milliseconds or seconds from now (told apart by
//!   size);
//! - HubSpot: `X-HubSpot-RateLimit-{Max,Remaining,Interval-Milliseconds}`,
//!   `-Secondly`, `-Secondly-Remaining`, `-Daily`, `-Daily-Remaining`;
//! - Salesforce: `Sforce-Limit-Info: api-usage=USED/MAX` (a rolling day);
//! - the IETF httpapi drafts: `RateLimit-Policy: "name";q=100;w=60` with
//!   `RateLimit: "name";r=50;t=30` (draft 08 on), and the earlier
//!   `RateLimit-{Limit,Remaining,Reset}` with `RateLimit-Policy: 100;w=60`;
//! - `Retry-After` on a `429` or `503`: nothing may be sent until then.
//!
//! Each reading names its window by its length when the family says it (`1m`,
//! `1d`, `10s`), else by the family (`x-ratelimit`); the same name as a static
//! `limits` entry is the same window.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode};

/// One window as a response reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reading {
    pub window: String,
    /// Requests the window allows, when said.
    pub limit: Option<u64>,
    pub remaining: u64,
    /// When the window starts again, when said.
    pub reset: Option<SystemTime>,
    /// The window's length, when said.
    pub period: Option<Duration>,
}

/// The window a `Retry-After` makes: nothing until then.
pub const RETRY_AFTER: &str = "retry-after";

/// Every reading in `headers` (of a response with `status`), at `now`.
pub fn read(status: StatusCode, headers: &HeaderMap, now: SystemTime) -> Vec<Reading> {
    let refused =
        status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE;
    // One pass over the names first: most answers say nothing of limits, and
    // looking each family up by name costs a hash per name.
    let mentions = headers.keys().any(|k| {
        let n = k.as_str();
        n.starts_with("x-ratelimit")
            || n.starts_with("ratelimit")
            || n.starts_with("x-hubspot-ratelimit")
            || n == "sforce-limit-info"
            || (refused && n == "retry-after")
    });
    if !mentions {
        return Vec::new();
    }
    let mut out = Vec::new();
    let minutely = exact_minutely(headers, now);
    let has_minutely = minutely.is_some();
    out.extend(minutely);
    out.extend(x_ratelimit(headers, now, has_minutely));
    out.extend(hubspot(headers));
    out.extend(salesforce(headers));
    out.extend(ietf(headers, now));
    if refused {
        out.extend(retry_after(headers, now));
    }
    out
}

fn number(headers: &HeaderMap, name: &str) -> Option<u64> {
    let text = headers.get(name)?.to_str().ok()?.trim();
    // Some send `123.0`; the whole part is what counts.
    let whole = text.split('.').next()?;
    whole.parse().ok()
}

/// A reset as APIs write it: epoch milliseconds (Exact), epoch seconds, or
/// seconds from now, told apart by size.
fn reset_at(value: u64, now: SystemTime) -> SystemTime {
    const EPOCH_MS: u64 = 100_000_000_000; // past 1973 in ms; 5138 in s
    const EPOCH_S: u64 = 1_000_000_000; // 2001 in s; 31 years from now
    match value {
        v if v >= EPOCH_MS => SystemTime::UNIX_EPOCH + Duration::from_millis(v),
        v if v >= EPOCH_S => SystemTime::UNIX_EPOCH + Duration::from_secs(v),
        v => now + Duration::from_secs(v),
    }
}

fn exact_minutely(headers: &HeaderMap, now: SystemTime) -> Option<Reading> {
    let remaining = number(headers, "x-ratelimit-minutely-remaining")?;
    Some(Reading {
        window: "1m".into(),
        limit: number(headers, "x-ratelimit-minutely-limit"),
        remaining,
        reset: number(headers, "x-ratelimit-minutely-reset").map(|v| reset_at(v, now)),
        period: Some(Duration::from_secs(60)),
    })
}

/// `X-RateLimit-*`: beside Exact's minutely headers, Exact's day.
fn x_ratelimit(headers: &HeaderMap, now: SystemTime, exact: bool) -> Option<Reading> {
    let remaining = number(headers, "x-ratelimit-remaining")?;
    let (window, period) = match exact {
        true => ("1d", Some(Duration::from_secs(86_400))),
        false => ("x-ratelimit", None),
    };
    Some(Reading {
        window: window.into(),
        limit: number(headers, "x-ratelimit-limit"),
        remaining,
        reset: number(headers, "x-ratelimit-reset").map(|v| reset_at(v, now)),
        period,
    })
}

fn hubspot(headers: &HeaderMap) -> Vec<Reading> {
    let mut out = Vec::new();
    if let Some(remaining) = number(headers, "x-hubspot-ratelimit-remaining") {
        let period =
            number(headers, "x-hubspot-ratelimit-interval-milliseconds").map(Duration::from_millis);
        out.push(Reading {
            window: period.map_or_else(|| "hubspot".into(), label),
            limit: number(headers, "x-hubspot-ratelimit-max"),
            remaining,
            reset: None,
            period,
        });
    }
    for (name, period) in [("secondly", 1), ("daily", 86_400)] {
        if let Some(remaining) = number(headers, &format!("x-hubspot-ratelimit-{name}-remaining")) {
            out.push(Reading {
                window: label(Duration::from_secs(period)),
                limit: number(headers, &format!("x-hubspot-ratelimit-{name}")),
                remaining,
                reset: None,
                period: Some(Duration::from_secs(period)),
            });
        }
    }
    out
}

/// `Sforce-Limit-Info: api-usage=18/5000`: the org's rolling 24 hours.
fn salesforce(headers: &HeaderMap) -> Option<Reading> {
    let info = headers.get("sforce-limit-info")?.to_str().ok()?;
    let usage = info
        .split(',')
        .find_map(|part| part.trim().strip_prefix("api-usage="))?;
    let (used, max) = usage.split_once('/')?;
    let (used, max): (u64, u64) = (used.trim().parse().ok()?, max.trim().parse().ok()?);
    Some(Reading {
        window: "1d".into(),
        limit: Some(max),
        remaining: max.saturating_sub(used),
        reset: None,
        period: Some(Duration::from_secs(86_400)),
    })
}

/// The IETF drafts: structured `RateLimit` with `RateLimit-Policy` (08 on), or
/// the earlier separate fields.
fn ietf(headers: &HeaderMap, now: SystemTime) -> Vec<Reading> {
    let policies: Vec<(String, Params)> = headers
        .get_all("ratelimit-policy")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(members)
        .collect();
    let policy = |name: &str| policies.iter().find(|(n, _)| n == name).map(|(_, p)| p);
    let mut out = Vec::new();
    for value in headers.get_all("ratelimit").iter() {
        let Ok(value) = value.to_str() else { continue };
        for (name, params) in members(value) {
            let Some(remaining) = params.get("r") else {
                continue;
            };
            let p = policy(&name);
            let period = p.and_then(|p| p.get("w")).map(Duration::from_secs);
            out.push(Reading {
                window: period.map_or_else(|| format!("ratelimit:{name}"), label),
                limit: p.and_then(|p| p.get("q")),
                remaining,
                reset: params.get("t").map(|t| now + Duration::from_secs(t)),
                period,
            });
        }
    }
    if out.is_empty()
        && let Some(remaining) = number(headers, "ratelimit-remaining")
    {
        let period = policies
            .first()
            .and_then(|(_, p)| p.get("w"))
            .map(Duration::from_secs);
        out.push(Reading {
            window: period.map_or_else(|| "ratelimit".into(), label),
            limit: number(headers, "ratelimit-limit"),
            remaining,
            reset: number(headers, "ratelimit-reset").map(|t| now + Duration::from_secs(t)),
            period,
        });
    }
    out
}

/// A structured field's parameters that are integers (`q=100;w=60`).
struct Params(Vec<(String, u64)>);

impl Params {
    fn get(&self, key: &str) -> Option<u64> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }
}

/// The members of a structured list: `"name";k=v;k=v, "other";k=v`, or a bare
/// `100;w=60` (earlier drafts), named by its string or by its position.
fn members(value: &str) -> Vec<(String, Params)> {
    value
        .split(',')
        .enumerate()
        .filter_map(|(i, member)| {
            let mut parts = member.trim().split(';');
            let head = parts.next()?.trim();
            let name = head
                .strip_prefix('"')
                .and_then(|h| h.strip_suffix('"'))
                .map_or_else(|| i.to_string(), str::to_owned);
            let mut params: Vec<(String, u64)> = parts
                .filter_map(|p| {
                    let (k, v) = p.trim().split_once('=')?;
                    Some((k.trim().to_owned(), v.trim().parse().ok()?))
                })
                .collect();
            // An earlier draft's bare quota: `100;w=60`.
            if let Ok(q) = head.parse::<u64>() {
                params.push(("q".into(), q));
            }
            Some((name, Params(params)))
        })
        .collect()
}

/// `Retry-After` in seconds or as an HTTP date.
fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Reading> {
    let text = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    let until = match text.parse::<u64>() {
        Ok(secs) => now + Duration::from_secs(secs),
        Err(_) => httpdate::parse_http_date(text).ok()?,
    };
    Some(Reading {
        window: RETRY_AFTER.into(),
        limit: None,
        remaining: 0,
        reset: Some(until.max(now)),
        period: None,
    })
}

/// A window's length as a label: `1s`, `10s`, `1m`, `1h`, `1d`.
pub fn label(period: Duration) -> String {
    let s = period.as_secs();
    match s {
        0 => format!("{}ms", period.as_millis()),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
#[path = "headers_tests.rs"]
mod tests;
