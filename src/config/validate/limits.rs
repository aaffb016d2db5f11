//! A route's rate-limit keys: `limits`, `max_wait`, `max_waiting`, `quota_key`.

use std::time::Duration;

use super::Validator;
use crate::config::raw::RawRoute;
use crate::config::{ConfigError, Limit, Preset, QuotaKey, RateLimits};

/// How long a request waits for room by default: long enough for a minutely
/// window, short of most clients' timeouts.
const MAX_WAIT: Duration = Duration::from_secs(30);
const MAX_WAITING: usize = 100;

impl Validator<'_> {
    pub(super) fn rate_limits(
        &self,
        key: &impl Fn(&str) -> String,
        raw: &RawRoute,
        preset: Option<&Preset>,
    ) -> Result<RateLimits, ConfigError> {
        let limits = match &raw.limits {
            Some(texts) => texts
                .iter()
                .map(|t| self.limit(&key("limits"), t))
                .collect::<Result<Vec<_>, _>>()?,
            None => preset
                .map(|p| {
                    p.limits
                        .iter()
                        .map(|&(count, secs)| Limit {
                            count,
                            period: Duration::from_secs(secs),
                        })
                        .collect()
                })
                .unwrap_or_default(),
        };
        let max_wait = raw.max_wait.unwrap_or(MAX_WAIT);
        if max_wait > Duration::from_secs(3600) {
            return Err(self.err(
                key("max_wait"),
                "is longer than an hour; a client would have given up long before",
                "write a few seconds to a few minutes, such as \"30s\"",
            ));
        }
        let max_waiting = raw.max_waiting.unwrap_or(MAX_WAITING);
        if max_waiting == 0 {
            return Err(self.err(
                key("max_waiting"),
                "is 0: no request could wait for room",
                "write at least 1 (default 100), or max_wait = \"0s\" to answer 429 at once",
            ));
        }
        let quota_key = match raw.quota_key.as_deref() {
            None => preset
                .and_then(|p| p.quota_segment)
                .map_or(QuotaKey::Route, QuotaKey::PathSegment),
            Some("route") => QuotaKey::Route,
            Some(text) => text
                .strip_prefix("path:")
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|n| (1..=16).contains(n))
                .map(QuotaKey::PathSegment)
                .ok_or_else(|| {
                    self.err(
                        key("quota_key"),
                        format!("`{text}` is not a quota key"),
                        "write \"route\" (one quota for the route) or \"path:N\" (the Nth path segment after the prefix, such as \"path:2\" for v1/{division}/...)",
                    )
                })?,
        };
        Ok(RateLimits {
            limits,
            max_wait,
            max_waiting,
            key: quota_key,
        })
    }

    /// `"60/1m"`: calls per window.
    fn limit(&self, key: &str, text: &str) -> Result<Limit, ConfigError> {
        let parsed = text.split_once('/').and_then(|(count, period)| {
            let count: u64 = count.trim().parse().ok().filter(|c| *c > 0)?;
            let period = period.trim();
            // "1m", and a bare unit ("/m", "/day") as one of it.
            let period = humantime::parse_duration(period)
                .or_else(|_| humantime::parse_duration(&format!("1{period}")))
                .ok()
                .filter(|p| *p >= Duration::from_secs(1))?;
            Some(Limit { count, period })
        });
        parsed.ok_or_else(|| {
            self.err(
                key,
                format!("`{text}` is not a limit"),
                "write calls per window, such as \"60/1m\" or \"5000/1d\" (a window of at least a second)",
            )
        })
    }
}
