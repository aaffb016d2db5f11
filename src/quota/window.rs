//! The windows of one quota key: what is left in each, when each starts again,
//! the line of waiting requests, and how an answer's readings change them.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::headers::{self, Reading};

#[derive(Default)]
pub(super) struct State {
    pub(super) windows: Vec<Window>,
    /// Tickets of the waiting requests, in arrival order.
    pub(super) line: VecDeque<u64>,
    pub(super) next_ticket: u64,
    /// The requests sent whose answer has not come, by the order they were sent.
    pub(super) flying: std::collections::BTreeSet<u64>,
    pub(super) next_seq: u64,
}

pub(super) struct Window {
    pub(super) name: String,
    pub(super) limit: Option<u64>,
    pub(super) period: Option<Duration>,
    /// Calls left; `None`: not known, so not limiting.
    pub(super) remaining: Option<u64>,
    /// When it starts again; `None` for a static window not yet begun.
    pub(super) reset: Option<Instant>,
    /// From `limits`: counted here, started by the first request.
    pub(super) fixed: bool,
}

impl State {
    /// Windows whose reset passed start again.
    pub(super) fn roll(&mut self, now: Instant) {
        self.windows.retain_mut(|w| {
            let Some(reset) = w.ready_at() else {
                return true;
            };
            if reset > now {
                return true;
            }
            let reset = w.reset.unwrap_or(reset);
            if w.name == headers::RETRY_AFTER {
                return false;
            }
            match (w.fixed, w.period) {
                (true, _) => {
                    w.remaining = w.limit;
                    w.reset = None;
                }
                (false, Some(period)) => {
                    w.remaining = w.limit;
                    // The next reset, a whole number of periods on.
                    let behind = now.duration_since(reset).as_nanos() / period.as_nanos().max(1);
                    w.reset = Some(reset + period * (behind as u32 + 1));
                }
                (false, None) => {
                    w.remaining = w.limit;
                    w.reset = None;
                }
            }
            true
        });
    }

    /// Nothing in flight or waiting, and every window as full as it started:
    /// forgetting the key loses nothing.
    pub(super) fn at_rest(&mut self, now: Instant) -> bool {
        self.roll(now);
        self.line.is_empty()
            && self.flying.is_empty()
            && self.windows.iter().all(|w| w.remaining == w.limit)
    }

    pub(super) fn has_room(&self) -> bool {
        self.windows.iter().all(|w| w.remaining != Some(0))
    }

    /// When every empty window has started again (now, if none is empty).
    pub(super) fn room_at(&self, now: Instant) -> Instant {
        self.windows
            .iter()
            .filter(|w| w.remaining == Some(0))
            .map(|w| {
                w.ready_at()
                    .unwrap_or(now + w.period.unwrap_or(UNKNOWN_RESET))
            })
            .max()
            .unwrap_or(now)
    }

    /// Takes a call from every window; returns the request's place in the
    /// order of sending.
    pub(super) fn take(&mut self, now: Instant) -> u64 {
        for w in &mut self.windows {
            if let Some(r) = &mut w.remaining {
                *r = r.saturating_sub(1);
            }
            if w.fixed && w.reset.is_none() {
                w.reset = w.period.map(|p| now + p);
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.flying.insert(seq);
        seq
    }

    pub(super) fn learn(&mut self, r: &Reading, others: u64, now: Instant) {
        let reset = r
            .reset
            .map(|t| now + t.duration_since(SystemTime::now()).unwrap_or_default())
            .or_else(|| (r.remaining == 0).then(|| now + r.period.unwrap_or(UNKNOWN_RESET)));
        let said = r.remaining.saturating_sub(others);
        match self.windows.iter_mut().find(|w| w.name == r.window) {
            Some(w) => {
                // A new window (its reset moved on) starts from what the API says;
                // within the same one, the lower count is the truer.
                let same = match (w.reset, reset) {
                    (Some(a), Some(b)) => a.max(b) - a.min(b) < Duration::from_secs(2),
                    _ => true,
                };
                w.remaining = match (w.remaining, same) {
                    (Some(mine), true) => Some(mine.min(said)),
                    _ => Some(said),
                };
                if reset.is_some() && (!w.fixed || w.reset.is_none() || !same) {
                    w.reset = reset;
                }
                w.limit = r.limit.or(w.limit);
                w.period = r.period.or(w.period);
            }
            None => self.windows.push(Window {
                name: r.window.clone(),
                limit: r.limit,
                period: r.period,
                remaining: Some(said),
                reset,
                fixed: false,
            }),
        }
    }
}

impl Window {
    /// When the window may be used again: its reset, and for one the API told of,
    /// [`RESET_GRACE`] after it, so that the first request of the new window does
    /// not arrive in the old one.
    fn ready_at(&self) -> Option<Instant> {
        let reset = self.reset?;
        if self.fixed || self.name == headers::RETRY_AFTER {
            return Some(reset);
        }
        Some(reset + RESET_GRACE)
    }
}

/// Waited past a reset the API told of: its clock against this one's, its
/// rounding, the request's way there. A request that arrives early all the same is
/// refused with a `429` and sent again once (`crate::proxy`).
const RESET_GRACE: Duration = Duration::from_millis(200);

/// How long an empty window whose API says neither its reset nor its length is
/// taken to stay empty.
const UNKNOWN_RESET: Duration = Duration::from_secs(60);
