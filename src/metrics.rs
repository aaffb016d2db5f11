//! Every metric tokenproxy exports, defined in one place.
//!
//! A [`Metrics`] owns its own `prometheus::Registry` (no global registry), built in
//! `lib.rs` and handed to the token sources, the proxy and the admin listener. Label
//! values are bounded: token, route and caller names from the configuration, fixed trigger,
//! result, status-class and outcome words. Never a path, a URL or a token.
//!
//! The request path does not look labels up: [`RouteMetrics`] holds the resolved
//! counters and histogram of one route, so counting a request is a few atomic adds.
//! Caller names (`[[callers]]`) are labels too: configured, bounded, never keys.
//!
//! Length: every metric in one place, as the contract asks; each is a few lines
//! of definition and one of use.

use std::time::{Duration, SystemTime};

use http::StatusCode;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Proxy latencies, from a cached loopback answer to a slow bulk export.
const REQUEST_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];
/// Token endpoint round trips.
const REFRESH_BUCKETS: &[f64] = &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

pub struct Metrics {
    registry: Registry,
    refresh_total: IntCounterVec,
    refresh_duration: HistogramVec,
    expiry: prometheus::GaugeVec,
    issued: prometheus::GaugeVec,
    valid: IntGaugeVec,
    requests_total: IntCounterVec,
    request_duration: HistogramVec,
    retries_total: IntCounterVec,
    store_write_errors: IntCounterVec,
    errors_total: IntCounterVec,
    panics_total: IntCounter,
    intercept_leaves: IntCounter,
    refresh_interrupted: IntCounterVec,
    in_doubt: IntCounterVec,
    lease_lost: IntCounterVec,
    config_reloads: IntCounterVec,
    store_up: prometheus::IntGauge,
    store_operations: IntCounterVec,
    vended: IntCounterVec,
    sink_writes: IntCounterVec,
    quota_remaining: IntGaugeVec,
    quota_reset: prometheus::GaugeVec,
    quota_waits: IntCounterVec,
    quota_wait_seconds: HistogramVec,
    listen_certificate: prometheus::GaugeVec,
}

/// How a `retry_on` answer was handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryOutcome {
    /// Refreshed and resent; the upstream accepted the new token.
    Success,
    /// Refreshed and resent; the upstream refused again.
    Rejected,
    /// The body was too large to keep: refreshed, not resent.
    NotReplayable,
    /// No new token could be had: the refusal went back to the client.
    RefreshFailed,
    /// A `429`/`503` whose `Retry-After` was within `max_wait`: waited out and
    /// resent once.
    RateLimited,
}

impl RetryOutcome {
    fn as_str(self) -> &'static str {
        match self {
            RetryOutcome::Success => "success",
            RetryOutcome::Rejected => "rejected",
            RetryOutcome::NotReplayable => "not_replayable",
            RetryOutcome::RefreshFailed => "refresh_failed",
            RetryOutcome::RateLimited => "rate_limited",
        }
    }
}

/// A route's quota metrics: its waits resolved, its windows by name.
pub struct QuotaMetrics {
    route: String,
    remaining: IntGaugeVec,
    reset: prometheus::GaugeVec,
    /// The series of the windows seen, resolved once: an API names two or three.
    windows: std::sync::Mutex<Vec<(String, prometheus::IntGauge, prometheus::Gauge)>>,
    waits: IntCounter,
    wait_seconds: Histogram,
}

impl QuotaMetrics {
    /// A request held for `waited` before it was sent.
    pub fn waited(&self, waited: Duration) {
        self.waits.inc();
        self.wait_seconds.observe(waited.as_secs_f64());
    }

    /// What the API said of window `window`.
    pub fn window(&self, window: &str, remaining: u64, reset: Option<SystemTime>) {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let at = match windows.iter().position(|(name, ..)| name == window) {
            Some(at) => at,
            None => {
                let labels = [self.route.as_str(), window];
                windows.push((
                    window.to_owned(),
                    self.remaining.with_label_values(&labels),
                    self.reset.with_label_values(&labels),
                ));
                windows.len() - 1
            }
        };
        let (_, remaining_gauge, reset_gauge) = &windows[at];
        remaining_gauge.set(i64::try_from(remaining).unwrap_or(i64::MAX));
        if let Some(reset) = reset {
            let secs = reset
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            reset_gauge.set(secs);
        }
    }
}

/// The pre-resolved metrics of one route (or of requests that matched none).
pub struct RouteMetrics {
    /// 1xx to 5xx, per caller: first no caller, then each in the order given.
    requests: Vec<[IntCounter; 5]>,
    duration: Histogram,
    retries: [IntCounter; 5],
}

impl RouteMetrics {
    /// A response to caller `who` (an index into the callers given; `None`
    /// without one).
    pub fn observe(&self, who: Option<usize>, status: StatusCode, elapsed: Duration) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        let slot = who.map_or(0, |i| i + 1).min(self.requests.len() - 1);
        self.requests[slot][class].inc();
        self.duration.observe(elapsed.as_secs_f64());
    }

    pub fn retry(&self, outcome: RetryOutcome) {
        self.retries[outcome as usize].inc();
    }
}

fn register<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
    // Names are fixed and distinct, so registration cannot collide.
    let _ = registry.register(Box::new(c.clone()));
    c
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            register(
                &registry,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: &[f64]| {
            let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
            register(
                &registry,
                HistogramVec::new(opts, labels).expect("valid metric"),
            )
        };
        let metrics = Metrics {
            refresh_total: counter(
                "tokenproxy_token_refresh_total",
                "Token refreshes by token, trigger (startup, proactive, reactive, manual) and result (success, error, invalid_grant).",
                &["token", "trigger", "result"],
            ),
            refresh_duration: histogram(
                "tokenproxy_token_refresh_duration_seconds",
                "Time to obtain and store a new token, by token.",
                &["token"],
                REFRESH_BUCKETS,
            ),
            expiry: register(
                &registry,
                prometheus::GaugeVec::new(
                    Opts::new(
                        "tokenproxy_token_expiry_timestamp_seconds",
                        "Unix time at which the current access token expires.",
                    ),
                    &["token"],
                )
                .expect("valid metric"),
            ),
            issued: register(
                &registry,
                prometheus::GaugeVec::new(
                    Opts::new(
                        "tokenproxy_token_issued_timestamp_seconds",
                        "Unix time at which the current access token was issued: the last refresh, by this instance or another sharing the store (for a provider's refresh-token idle expiry).",
                    ),
                    &["token"],
                )
                .expect("valid metric"),
            ),
            valid: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "tokenproxy_token_valid",
                        "1 while the token holds a valid access token.",
                    ),
                    &["token"],
                )
                .expect("valid metric"),
            ),
            requests_total: counter(
                "tokenproxy_requests_total",
                "Proxied requests by route (\"none\" when no route matched), caller ([[callers]] name; empty without) and status class.",
                &["route", "caller", "status_class"],
            ),
            request_duration: histogram(
                "tokenproxy_request_duration_seconds",
                "Time from request to response headers, by route.",
                &["route"],
                REQUEST_BUCKETS,
            ),
            retries_total: counter(
                "tokenproxy_upstream_retries_total",
                "Resends and their outcome, by route: after a retry_on status (success, rejected, not_replayable, refresh_failed), and after a 429/503 whose Retry-After was waited out (rate_limited).",
                &["route", "outcome"],
            ),
            store_write_errors: counter(
                "tokenproxy_store_write_errors_total",
                "Failed writes of a token record to the store, by token.",
                &["token"],
            ),
            errors_total: counter(
                "tokenproxy_errors_total",
                "Errors tokenproxy answered itself, by route (\"none\" before routing, \"admin\" on the admin listener), error code (the x-tokenproxy-error value) and source (what failed: client, route, token_endpoint, store, upstream, config, internal).",
                &["route", "error", "source"],
            ),
            panics_total: register(
                &registry,
                IntCounter::new(
                    "tokenproxy_panics_total",
                    "Panics caught while handling a request or refreshing a token (each is a defect; the log has the details).",
                )
                .expect("valid metric"),
            ),
            intercept_leaves: register(
                &registry,
                IntCounter::new(
                    "tokenproxy_intercept_leaf_certificates_total",
                    "Leaf certificates signed for intercepted hosts (one per host per renewal; a burst of tunnels signs once).",
                )
                .expect("valid metric"),
            ),
            refresh_interrupted: counter(
                "tokenproxy_refresh_interrupted_total",
                "Refreshes that found an earlier one interrupted: a process died, or an instance's lock lapsed, between announcing a refresh and storing its result.",
                &["token"],
            ),
            in_doubt: counter(
                "tokenproxy_refresh_in_doubt_total",
                "Refreshes whose outcome was in doubt (the request may have reached the provider, no answer yet) by how that ended: late_answer (read after the callers' timeout), written_after_restart (stored once the store answered again), retried (another instance's, presented once after the grace), needs_login (after the grace, with in_doubt = \"needs_login\").",
                &["token", "resolution"],
            ),
            lease_lost: counter(
                "tokenproxy_lease_lost_total",
                "Refreshes whose store lease ended under them, by phase: before_send (abandoned, nothing spent), in_flight (the answer was written by compare-and-set without the lease).",
                &["token", "phase"],
            ),
            config_reloads: counter(
                "tokenproxy_config_reloads_total",
                "Configuration reloads (SIGHUP, POST /reload) by result (success, error: refused, the old configuration stays).",
                &["result"],
            ),
            store_up: register(
                &registry,
                prometheus::IntGauge::new(
                    "tokenproxy_store_up",
                    "1 while the token store answered its last operation.",
                )
                .expect("valid metric"),
            ),
            store_operations: counter(
                "tokenproxy_store_operations_total",
                "Token store operations by op (load, lock, save, intent) and result (success, error).",
                &["op", "result"],
            ),
            vended: counter(
                "tokenproxy_tokens_vended_total",
                "Access tokens handed out by GET /tokenproxy/v1/tokens/NAME, by token and caller.",
                &["token", "caller"],
            ),
            sink_writes: counter(
                "tokenproxy_sink_writes_total",
                "Writes (and removals) of token sink files, by token and result (success, error).",
                &["token", "result"],
            ),
            quota_remaining: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "tokenproxy_upstream_quota_remaining",
                        "Calls left in an upstream rate-limit window, as the API last said (or as counted for a static limit), by route and window.",
                    ),
                    &["route", "window"],
                )
                .expect("valid metric"),
            ),
            quota_reset: register(
                &registry,
                prometheus::GaugeVec::new(
                    Opts::new(
                        "tokenproxy_upstream_quota_reset_timestamp_seconds",
                        "When an upstream rate-limit window starts again, in Unix seconds, by route and window.",
                    ),
                    &["route", "window"],
                )
                .expect("valid metric"),
            ),
            quota_waits: counter(
                "tokenproxy_quota_waits_total",
                "Requests held for an upstream rate-limit window to start again, by route.",
                &["route"],
            ),
            quota_wait_seconds: histogram(
                "tokenproxy_quota_wait_seconds",
                "How long requests were held for an upstream rate-limit window, by route.",
                &["route"],
                REQUEST_BUCKETS,
            ),
            listen_certificate: register(
                &registry,
                prometheus::GaugeVec::new(
                    Opts::new(
                        "tokenproxy_listen_certificate_expiry_timestamp_seconds",
                        "When the certificate a listener serves (listen.tls_cert) expires, in Unix seconds.",
                    ),
                    &["listener"],
                )
                .expect("valid metric"),
            ),
            registry,
        };
        for result in ["success", "error"] {
            metrics.config_reloads.with_label_values(&[result]);
        }
        for op in ["load", "lock", "save", "intent"] {
            for result in ["success", "error"] {
                metrics.store_operations.with_label_values(&[op, result]);
            }
        }
        let _ = metrics.registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::new(
                std::process::id() as i32,
                "tokenproxy",
            ),
        ));
        metrics
    }

    /// The metrics of route `name` for each of `callers`, resolved once.
    pub fn route<'a>(&self, name: &str, callers: impl Iterator<Item = &'a str>) -> RouteMetrics {
        let classes = ["1xx", "2xx", "3xx", "4xx", "5xx"];
        let outcomes = [
            RetryOutcome::Success,
            RetryOutcome::Rejected,
            RetryOutcome::NotReplayable,
            RetryOutcome::RefreshFailed,
            RetryOutcome::RateLimited,
        ];
        RouteMetrics {
            requests: std::iter::once("")
                .chain(callers)
                .map(|caller| {
                    classes.map(|c| self.requests_total.with_label_values(&[name, caller, c]))
                })
                .collect(),
            duration: self.request_duration.with_label_values(&[name]),
            retries: outcomes.map(|o| self.retries_total.with_label_values(&[name, o.as_str()])),
        }
    }

    pub fn refresh(&self, token: &str, trigger: &str, result: &str, elapsed: Duration) {
        self.refresh_total
            .with_label_values(&[token, trigger, result])
            .inc();
        self.refresh_duration
            .with_label_values(&[token])
            .observe(elapsed.as_secs_f64());
    }

    /// An error tokenproxy answered with: its `x-tokenproxy-error` code and
    /// what failed.
    pub fn error(&self, route: &str, code: &str, source: &str) {
        self.errors_total
            .with_label_values(&[route, code, source])
            .inc();
    }

    pub fn store_up(&self, up: bool) {
        self.store_up.set(i64::from(up));
    }

    pub fn store_operation(&self, op: &str, result: &str) {
        self.store_operations.with_label_values(&[op, result]).inc();
    }

    pub fn panicked(&self) {
        self.panics_total.inc();
    }

    /// The quota metrics of route `route`.
    pub fn quota(&self, route: &str) -> QuotaMetrics {
        QuotaMetrics {
            route: route.to_owned(),
            remaining: self.quota_remaining.clone(),
            reset: self.quota_reset.clone(),
            windows: std::sync::Mutex::default(),
            waits: self.quota_waits.with_label_values(&[route]),
            wait_seconds: self.quota_wait_seconds.with_label_values(&[route]),
        }
    }

    pub fn vended(&self, token: &str, caller: &str) {
        self.vended.with_label_values(&[token, caller]).inc();
    }

    pub fn sink_written(&self, token: &str, ok: bool) {
        let result = if ok { "success" } else { "error" };
        self.sink_writes.with_label_values(&[token, result]).inc();
    }

    /// The expiry of the certificate `listener` serves; `None` when it serves none.
    pub fn listen_certificate(&self, listener: &str, not_after: Option<std::time::SystemTime>) {
        match not_after {
            Some(t) => {
                let secs = t
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64());
                self.listen_certificate
                    .with_label_values(&[listener])
                    .set(secs);
            }
            None => {
                let _ = self.listen_certificate.remove_label_values(&[listener]);
            }
        }
    }

    pub fn intercept_leaf_signed(&self) {
        self.intercept_leaves.inc();
    }

    pub fn refresh_interrupted(&self, token: &str) {
        self.refresh_interrupted.with_label_values(&[token]).inc();
    }

    /// How an in-doubt refresh ended (see the metric's help).
    pub fn in_doubt(&self, token: &str, resolution: &str) {
        self.in_doubt.with_label_values(&[token, resolution]).inc();
    }

    pub fn lease_lost(&self, token: &str, phase: &str) {
        self.lease_lost.with_label_values(&[token, phase]).inc();
    }

    pub fn config_reload(&self, success: bool) {
        let result = if success { "success" } else { "error" };
        self.config_reloads.with_label_values(&[result]).inc();
    }

    pub fn store_write_error(&self, token: &str) {
        self.store_write_errors.with_label_values(&[token]).inc();
    }

    /// Makes every token's series exist from the start, at zero.
    pub fn declare_token(&self, token: &str) {
        self.store_write_errors.with_label_values(&[token]);
        self.refresh_interrupted.with_label_values(&[token]);
        for resolution in [
            "late_answer",
            "written_after_restart",
            "retried",
            "needs_login",
        ] {
            self.in_doubt.with_label_values(&[token, resolution]);
        }
        for phase in ["before_send", "in_flight"] {
            self.lease_lost.with_label_values(&[token, phase]);
        }
        self.valid.with_label_values(&[token]);
    }

    /// The Prometheus text format, with the token gauges as the tokens are now
    /// (validity changes with the clock, not only with events).
    pub fn render<'a>(&self, tokens: impl IntoIterator<Item = TokenGauges<'a>>) -> String {
        let unix = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64())
        };
        for t in tokens {
            self.valid
                .with_label_values(&[t.name])
                .set(i64::from(t.valid));
            if let Some((issued, expires)) = t.issued_expires {
                self.expiry.with_label_values(&[t.name]).set(unix(expires));
                self.issued.with_label_values(&[t.name]).set(unix(issued));
            }
        }
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// One token's gauges, read when metrics are scraped.
pub struct TokenGauges<'a> {
    pub name: &'a str,
    /// Whether it holds a usable access token now.
    pub valid: bool,
    /// When the access token held was issued and when it expires.
    pub issued_expires: Option<(SystemTime, SystemTime)>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
