//! Upstream rate limits: what each route's API allows, learned from its answers
//! (`headers`) and from static `limits`, and the governor that holds a request
//! until its window has room instead of spending a call the API would refuse.
//!
//! A route's [`Governor`] keeps one [`Quota`] per quota key (the whole route, or a
//! path segment such as Exact Online's division), each a set of windows: a static
//! limit (`60/1m`) counts the requests this instance sends and starts again a
//! period after its first; a learned window takes what the API last said (its
//! remaining calls less the requests still in flight, and its reset), so tools and
//! instances that share the provider's quota are seen in its count. A request
//! takes a call from every window of its key before it is sent. When one is empty:
//! the request waits in line (first come, first served, at most `max_waiting`)
//! until the window starts again, if that is within `max_wait`; otherwise it is
//! answered `429 quota_exhausted` at once, with `Retry-After`, and the API is not
//! called. A `Retry-After` on a `429` or `503` is a window of its own, empty until
//! then.

pub mod headers;
mod window;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use http::{HeaderMap, StatusCode};
use tokio::sync::Notify;

use crate::config::{RateLimits, Route};
use crate::metrics::{Metrics, QuotaMetrics};
use window::{State, Window};

/// Why a request was not sent: its window is empty for longer than `max_wait`,
/// or too many wait already.
#[derive(Debug, PartialEq, Eq)]
pub struct Exhausted {
    pub retry_after: Duration,
}

/// The governor of one route.
pub struct Governor {
    policy: RateLimits,
    quotas: Mutex<Keys>,
    /// Nothing to govern yet: no static limit and nothing learned.
    idle: std::sync::atomic::AtomicBool,
    metrics: QuotaMetrics,
}

/// The quotas by key. Keys come from request paths, so those at rest (nothing
/// in flight or waiting, every window full) are forgotten: each time the map has
/// doubled since the last sweep, which keeps the work per new key constant and the
/// map as large as twice the keys in use. A forgotten key starts again as a new one
/// (its static windows full, the learned ones learned from the next answer), which
/// is what its windows said anyway.
struct Keys {
    map: HashMap<Box<str>, Arc<Quota>>,
    sweep_at: usize,
}

/// Keys kept before the first sweep.
const KEYS_BEFORE_SWEEP: usize = 64;

/// The windows of one quota key.
pub struct Quota {
    state: Mutex<State>,
    /// Wakes the waiters: the line moved, or a window changed.
    changed: Notify,
}

/// A request's call, taken from its windows: the answer's headers go back
/// through it, and it stops counting as in flight when dropped.
pub struct Permit {
    /// `None` while the route is idle (nothing counted), then `key` says whose
    /// windows the answer tells of.
    quota: Option<Arc<Quota>>,
    key: Option<Box<str>>,
    /// Its place in the order of sending.
    seq: u64,
    governor: Arc<Governor>,
}

impl Governor {
    pub fn new(policy: RateLimits, metrics: &Metrics, route: &str) -> Arc<Governor> {
        Arc::new(Governor {
            idle: std::sync::atomic::AtomicBool::new(policy.limits.is_empty()),
            policy,
            quotas: Mutex::new(Keys {
                map: HashMap::new(),
                sweep_at: KEYS_BEFORE_SWEEP,
            }),
            metrics: metrics.quota(route),
        })
    }

    fn quota(&self, key: &str) -> Arc<Quota> {
        let mut quotas = self.quotas.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(q) = quotas.map.get(key) {
            return Arc::clone(q);
        }
        if quotas.map.len() >= quotas.sweep_at {
            let now = Instant::now();
            // Held elsewhere (a request on its way, a waiter): not at rest.
            quotas
                .map
                .retain(|_, q| Arc::strong_count(q) > 1 || !q.lock().at_rest(now));
            quotas.sweep_at = (quotas.map.len() * 2).max(KEYS_BEFORE_SWEEP);
        }
        let windows = self
            .policy
            .limits
            .iter()
            .map(|l| Window {
                name: headers::label(l.period),
                limit: Some(l.count),
                period: Some(l.period),
                remaining: Some(l.count),
                reset: None,
                fixed: true,
            })
            .collect();
        let q = Arc::new(Quota {
            state: Mutex::new(State {
                windows,
                ..State::default()
            }),
            changed: Notify::new(),
        });
        quotas.map.insert(key.into(), Arc::clone(&q));
        q
    }

    /// Takes a call for `key`, waiting in line for room up to `max_wait`.
    pub async fn admit(self: &Arc<Self>, key: &str) -> Result<Permit, Exhausted> {
        if self.idle.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(Permit {
                quota: None,
                key: (!key.is_empty()).then(|| key.into()),
                seq: 0,
                governor: Arc::clone(self),
            });
        }
        let quota = self.quota(key);
        let arrived = Instant::now();
        let ticket = {
            let mut s = quota.lock();
            s.roll(arrived);
            if s.line.is_empty() && s.has_room() {
                let seq = s.take(arrived);
                drop(s);
                return Ok(self.permit(quota, seq));
            }
            let wait = s.room_at(arrived).saturating_duration_since(arrived);
            if wait > self.policy.max_wait || s.line.len() >= self.policy.max_waiting {
                return Err(Exhausted {
                    retry_after: wait.max(Duration::from_secs(1)),
                });
            }
            let ticket = s.next_ticket;
            s.next_ticket += 1;
            s.line.push_back(ticket);
            ticket
        };
        let mut place = InLine {
            quota: &quota,
            ticket,
            served: false,
        };
        let deadline = arrived + self.policy.max_wait;
        loop {
            let changed = quota.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let until = {
                let now = Instant::now();
                let mut s = quota.lock();
                s.roll(now);
                if s.line.front() == Some(&ticket) && s.has_room() {
                    let seq = s.take(now);
                    s.line.pop_front();
                    place.served = true;
                    drop(s);
                    quota.changed.notify_waiters();
                    self.metrics.waited(now - arrived);
                    return Ok(self.permit(Arc::clone(&quota), seq));
                }
                if now >= deadline {
                    return Err(Exhausted {
                        retry_after: s
                            .room_at(now)
                            .saturating_duration_since(now)
                            .max(Duration::from_secs(1)),
                    });
                }
                s.room_at(now).min(deadline)
            };
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep_until(until) => {}
            }
        }
    }

    fn permit(self: &Arc<Self>, quota: Arc<Quota>, seq: u64) -> Permit {
        Permit {
            quota: Some(quota),
            key: None,
            seq,
            governor: Arc::clone(self),
        }
    }

    /// The windows of every key, for `/status`.
    pub fn snapshot(&self) -> Vec<WindowView> {
        let now = Instant::now();
        let quotas = self.quotas.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for (key, q) in quotas.map.iter() {
            let mut s = q.lock();
            s.roll(now);
            for w in &s.windows {
                out.push(WindowView {
                    key: key.to_string(),
                    window: w.name.clone(),
                    limit: w.limit,
                    remaining: w.remaining,
                    reset: w
                        .reset
                        .map(|r| SystemTime::now() + r.saturating_duration_since(now)),
                    waiting: s.line.len(),
                });
            }
        }
        out.sort_by(|a, b| (&a.key, &a.window).cmp(&(&b.key, &b.window)));
        out
    }
}

/// The governors of the routes in force, kept across reloads: a route whose
/// name and policy stay the same keeps what it learned of its API.
#[derive(Default)]
pub struct Registry(Mutex<HashMap<String, Arc<Governor>>>);

impl Registry {
    /// One governor per route, in order.
    pub fn governors(&self, routes: &[Route], metrics: &Metrics) -> Vec<Arc<Governor>> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let governors: Vec<Arc<Governor>> = routes
            .iter()
            .map(|r| match map.get(&r.name) {
                Some(g) if g.policy == r.rate => Arc::clone(g),
                _ => Governor::new(r.rate.clone(), metrics, &r.name),
            })
            .collect();
        *map = routes
            .iter()
            .zip(&governors)
            .map(|(r, g)| (r.name.clone(), Arc::clone(g)))
            .collect();
        governors
    }
}

/// One window as `/status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WindowView {
    pub key: String,
    pub window: String,
    pub limit: Option<u64>,
    pub remaining: Option<u64>,
    #[serde(serialize_with = "rfc3339_opt")]
    pub reset: Option<SystemTime>,
    pub waiting: usize,
}

fn rfc3339_opt<S: serde::Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&crate::clock::rfc3339(*t)),
        None => s.serialize_none(),
    }
}

/// A waiter's place in line, given up if it leaves (its client went away, or
/// `max_wait` passed).
struct InLine<'a> {
    quota: &'a Quota,
    ticket: u64,
    served: bool,
}

impl Drop for InLine<'_> {
    fn drop(&mut self) {
        if !self.served {
            let mut s = self.quota.lock();
            s.line.retain(|t| *t != self.ticket);
            drop(s);
            self.quota.changed.notify_waiters();
        }
    }
}

impl Quota {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Permit {
    /// Learns what the answer says of the windows; returns how long a
    /// `Retry-After` (on a `429` or `503`) asks to wait, if it does.
    pub fn observe(&self, status: StatusCode, headers: &HeaderMap) -> Option<Duration> {
        let readings = headers::read(status, headers, SystemTime::now());
        if readings.is_empty() {
            return None;
        }
        let g = &self.governor;
        g.idle.store(false, std::sync::atomic::Ordering::Relaxed);
        let mut retry = readings
            .iter()
            .find(|r| r.window == headers::RETRY_AFTER)
            .and_then(|r| r.reset)
            .map(|t| t.duration_since(SystemTime::now()).unwrap_or_default());
        // A first answer on an idle route: its key's quota starts now.
        let quota = match &self.quota {
            Some(q) => Arc::clone(q),
            None => g.quota(self.key.as_deref().unwrap_or("")),
        };
        let now = Instant::now();
        let mut s = quota.lock();
        // The API counted this request and those sent before it; those sent after
        // it and still unanswered it may not have counted yet.
        let others = s.flying.range(self.seq + 1..).count() as u64;
        for r in &readings {
            s.learn(r, others, now);
            g.metrics.window(&r.window, r.remaining, r.reset);
        }
        // A 429 without Retry-After (Exact Online's): wait for the empty windows.
        if status == StatusCode::TOO_MANY_REQUESTS && retry.is_none() && !s.has_room() {
            retry = Some(s.room_at(now).saturating_duration_since(now));
        }
        drop(s);
        quota.changed.notify_waiters();
        retry
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(q) = &self.quota {
            q.lock().flying.remove(&self.seq);
        }
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
