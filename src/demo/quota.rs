//! The fake API's rate limits, as Exact Online enforces them: per division (the
//! path's second segment, `/v1/{division}/...`), a fixed window of `per_window`
//! calls and a daily cap, told in Exact's headers (`X-RateLimit-Minutely-*`,
//! `X-RateLimit-*`, resets in epoch milliseconds) on every answer; a call past
//! either is answered `429` and counted, so a test sees every overrun.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use http::HeaderMap;

/// What the API allows each division.
#[derive(Clone, Copy, Debug)]
pub struct RateLimitSim {
    pub per_window: u64,
    pub window: Duration,
    pub daily: u64,
}

/// The calls of each division so far.
#[derive(Default)]
pub struct SimQuotas {
    divisions: HashMap<String, Division>,
    /// Calls answered `429`: each one an overrun a client (or tokenproxy) made.
    pub refused: u64,
}

struct Division {
    window_start: Instant,
    in_window: u64,
    today: u64,
    day_ends: SystemTime,
}

impl SimQuotas {
    /// Counts a call to `path`; returns the headers to answer with and whether the
    /// call is over a limit.
    pub fn call(&mut self, sim: &RateLimitSim, path: &str) -> (HeaderMap, bool) {
        let division = path
            .trim_start_matches('/')
            .split('/')
            .nth(1)
            .unwrap_or("")
            .to_owned();
        let now = Instant::now();
        let d = self.divisions.entry(division).or_insert_with(|| Division {
            window_start: now,
            in_window: 0,
            today: 0,
            day_ends: SystemTime::now() + Duration::from_secs(86_400),
        });
        if now >= d.window_start + sim.window {
            d.window_start = now;
            d.in_window = 0;
        }
        let over = d.in_window >= sim.per_window || d.today >= sim.daily;
        if over {
            self.refused += 1;
        } else {
            d.in_window += 1;
            d.today += 1;
        }
        let window_reset = SystemTime::now() + (d.window_start + sim.window - now);
        let ms = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis()
                .to_string()
        };
        let mut h = HeaderMap::new();
        let mut put = |name: &'static str, value: String| {
            if let Ok(v) = value.parse() {
                h.insert(name, v);
            }
        };
        put("x-ratelimit-minutely-limit", sim.per_window.to_string());
        put(
            "x-ratelimit-minutely-remaining",
            sim.per_window.saturating_sub(d.in_window).to_string(),
        );
        put("x-ratelimit-minutely-reset", ms(window_reset));
        put("x-ratelimit-limit", sim.daily.to_string());
        put(
            "x-ratelimit-remaining",
            sim.daily.saturating_sub(d.today).to_string(),
        );
        put("x-ratelimit-reset", ms(d.day_ends));
        (h, over)
    }
}
