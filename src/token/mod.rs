//! Token sources: the current access token of each `[tokens.NAME]`, kept fresh.
//!
//! A [`TokenSource`] holds its state in an `ArcSwap`, so a request reads the token
//! and its pre-built, sensitive header value without taking a lock. Refreshes go
//! through one path, [`TokenSource::refresh`], which is single flight: callers pass
//! the generation they saw, and whoever arrives after the refresh of that generation
//! gets the new state instead of a second token request. A refresh runs in its own
//! task, so a client hanging up cannot cancel it between the token response and the
//! durable write of a rotated refresh token.
//!
//! Refreshing takes the store's lock and re-reads the record first; a newer record
//! written by another instance is adopted instead of refreshed. The record is saved
//! before the new access token is published. Failures back off exponentially with
//! jitter; credential errors are terminal until a person acts.
//!
//! Scheduling (when to refresh) lives in `schedule`; the single-flight refresh in
//! `flight`, the protocol it follows on the store in `refresh`; talking to the
//! token endpoint in `grant`; reading its answers in `response`; what a source
//! publishes in `state`.
//!
//! Length: `TokenSource`'s whole public surface and its store watch; the refresh
//! itself is in `flight` and `refresh`.

mod discovery;
mod flight;
mod grant;
mod jwt;
mod record;
mod refresh;
mod response;
mod schedule;
mod seed;
pub mod sink;
mod state;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::{Mutex, Notify};

use crate::clock::ms_to_time;
use crate::config::{TokenConfig, Upstream};
use crate::error::Source;
use crate::metrics::{Metrics, TokenGauges};
use crate::store::{StoredToken, TokenStore};

pub use grant::{Exchange, TokenHttp, basic_auth};
pub use response::{GrantError, parse as parse_response};
pub use schedule::run as run_scheduler;
pub use seed::SeedError;
pub use sink::vended_json;
pub use state::{Failure, InDoubtNow, TokenState, Trigger, Unavailable};

use flight::{BACKOFF_BASE, BACKOFF_MAX};
use state::{Phase, system_to_instant};

pub struct TokenSource {
    pub config: TokenConfig,
    cell: ArcSwap<TokenState>,
    /// Single flight: one refresh per token at a time within this process.
    flight: Mutex<()>,
    store: Arc<dyn TokenStore>,
    http: TokenHttp,
    /// The issuer's metadata, fetched on first use when the token has `issuer`.
    metadata: tokio::sync::OnceCell<discovery::Metadata>,
    metrics: Arc<Metrics>,
    /// Wakes the scheduler when the state changes under it.
    changed: Notify,
    /// Ticks with every published state, for whoever follows the token (sinks).
    published: tokio::sync::watch::Sender<()>,
    /// What a running refresh waits for, to name it when a caller gives up.
    phase: AtomicU8,
    /// Set at shutdown: no refresh starts after it.
    closing: AtomicBool,
    /// This process's id in the store's intents.
    owner: String,
    /// Others' in-doubt intents, as this process has seen them.
    watch: refresh::Watch,
    /// When this process last sent a token request: the floor between two.
    last_sent: std::sync::Mutex<Option<Instant>>,
    /// The intent of a refresh whose result is held in memory, unsaved: removed
    /// once the result is stored.
    pending: std::sync::Mutex<Option<crate::store::Intent>>,
}

impl TokenSource {
    pub fn new(
        config: TokenConfig,
        store: Arc<dyn TokenStore>,
        http: TokenHttp,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(TokenSource {
            config,
            cell: ArcSwap::from_pointee(TokenState::default()),
            flight: Mutex::new(()),
            store,
            http,
            metadata: tokio::sync::OnceCell::new(),
            metrics,
            changed: Notify::new(),
            published: tokio::sync::watch::Sender::new(()),
            phase: AtomicU8::new(Phase::Idle as u8),
            closing: AtomicBool::new(false),
            owner: format!("{:016x}", fastrand::u64(..)),
            watch: refresh::Watch::default(),
            pending: std::sync::Mutex::new(None),
            last_sent: std::sync::Mutex::new(None),
        })
    }

    /// How long a refresh may wait for another process's lock: that holder spends at
    /// most one token request and one store write.
    fn lock_wait(&self) -> Duration {
        self.config.timeout + Duration::from_secs(15)
    }

    fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    /// [`TokenSource::refresh`] for a client request, which cannot wait long: gives
    /// up after the token request's deadline, with a log line naming what the
    /// refresh is waiting for. The refresh goes on.
    pub async fn refresh_for_caller(
        self: &Arc<Self>,
        seen: u64,
        trigger: Trigger,
    ) -> Result<Arc<TokenState>, Unavailable> {
        self.refresh_within(seen, trigger, self.config.timeout)
            .await
    }

    /// A person's refresh (the admin API, `tokenproxy token refresh`): waits for
    /// its outcome, so that the answer says what happened. Each step of a refresh
    /// has its own bound (another process's lock, the token request); past both
    /// (a store that does not answer a write), it gives up as a client request does.
    pub async fn refresh_for_person(
        self: &Arc<Self>,
        seen: u64,
    ) -> Result<Arc<TokenState>, Unavailable> {
        let wait = self.lock_wait() + self.config.timeout + Duration::from_secs(5);
        self.refresh_within(seen, Trigger::Manual, wait).await
    }

    async fn refresh_within(
        self: &Arc<Self>,
        seen: u64,
        trigger: Trigger,
        wait: Duration,
    ) -> Result<Arc<TokenState>, Unavailable> {
        match tokio::time::timeout(wait, self.refresh(seen, trigger)).await {
            Ok(result) => result,
            Err(_) => {
                let phase = self.phase.load(Ordering::Relaxed);
                tracing::warn!(
                    token = self.name(),
                    waited_s = wait.as_secs(),
                    waiting_for = Phase::describe(phase),
                    "a request stopped waiting for a token; the refresh goes on"
                );
                Err(Unavailable {
                    retry_after: Duration::from_secs(5),
                    cause: Phase::cause(phase),
                })
            }
        }
    }

    /// How long a manual refresh must wait: the backoff after a failure, or
    /// `min_interval` after the last issue. `None`: it may go now.
    pub fn too_soon_for_manual(&self) -> Option<Duration> {
        let cur = self.cell.load();
        let now = Instant::now();
        if let Some(f) = &cur.failure
            && !f.terminal
            && now < f.retry_at
        {
            return Some(f.retry_at - now);
        }
        let earliest = cur.min_interval_ends(self.config.min_interval)?;
        (now < earliest).then(|| earliest - now)
    }

    /// Stops new refreshes (shutdown); one under way finishes.
    pub fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
    }

    /// The upstream refused generation `generation` and no new token could be had:
    /// until a refresh succeeds, the token does not count as ready.
    pub fn mark_refused(&self, generation: u64) {
        let cur = self.cell.load_full();
        if cur.generation() == generation && !cur.refused {
            self.publish(TokenState {
                refused: true,
                ..cur.copy()
            });
        }
    }

    /// At shutdown: writes a token held only in memory one last time, or says
    /// plainly what the store holds and what to do.
    pub async fn persist_before_exit(&self) {
        if !self.cell.load().unsaved {
            return;
        }
        self.persist_again().await;
        let cur = self.cell.load_full();
        if cur.unsaved {
            tracing::error!(
                token = self.name(),
                generation = cur.generation(),
                "exiting with the newest token unsaved: the store still holds an older generation whose refresh token the provider may already have rotated away. If the next start fails with invalid_grant, run `tokenproxy login {name}` or `tokenproxy seed {name}`",
                name = self.name(),
            );
        }
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// A refresh in doubt, for `/status`: `Own` while this process holds new
    /// tokens the store has not taken yet (its intent holds the others off),
    /// `Another(since)` while it waits on another instance's refresh, seen first
    /// at `since` on the store's clock.
    pub fn in_doubt(&self) -> Option<InDoubtNow> {
        if self.cell.load().unsaved
            && self
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some()
        {
            return Some(InDoubtNow::Own);
        }
        self.watch
            .waiting_on()
            .map(|ms| InDoubtNow::Another(ms_to_time(ms)))
    }

    /// The current state as an owned pointer (one atomic increment), for holding
    /// across awaits.
    pub fn current_full(&self) -> Arc<TokenState> {
        self.cell.load_full()
    }

    /// The current state; cheap, lock-free.
    pub fn current(&self) -> arc_swap::Guard<Arc<TokenState>> {
        self.cell.load()
    }

    /// The token's gauges as they are now, for a scrape.
    pub fn gauges(&self) -> TokenGauges<'_> {
        let state = self.current();
        TokenGauges {
            name: self.name(),
            valid: state.valid_for(Duration::ZERO),
            issued_expires: state
                .record
                .as_ref()
                .map(|r| (ms_to_time(r.issued_at_ms), ms_to_time(r.expires_at_ms))),
        }
    }

    /// Refreshes unless the generation moved past `seen` meanwhile, and returns the
    /// state to use. Outside `Manual`, respects backoff, terminal failures and
    /// `min_interval`.
    pub async fn refresh(
        self: &Arc<Self>,
        seen: u64,
        trigger: Trigger,
    ) -> Result<Arc<TokenState>, Unavailable> {
        let me = Arc::clone(self);
        match tokio::spawn(async move { me.refresh_in_flight(seen, trigger).await }).await {
            Ok(result) => result,
            Err(e) => {
                if e.is_panic() {
                    // The panic hook has logged it.
                    self.metrics.panicked();
                }
                Err(Unavailable {
                    retry_after: BACKOFF_BASE,
                    cause: Source::Internal,
                })
            }
        }
    }

    /// Whether a refresh is under way: waiting for the store's lock, at the token
    /// endpoint or writing its answer. (Not the single-flight lock alone: the
    /// scheduler takes it briefly to learn that a backoff still holds, and a store
    /// read takes it too.)
    pub fn is_refreshing(&self) -> bool {
        self.phase.load(Ordering::Relaxed) != Phase::Idle as u8
    }

    /// Waits until no refresh is running (used at shutdown, so that a rotated refresh
    /// token being written is written).
    pub async fn quiesce(&self) {
        drop(self.flight.lock().await);
    }

    /// After a terminal failure: adopts a record that a person stored meanwhile
    /// (`tokenproxy seed`, `login`, or another instance), so no restart is needed.
    async fn reload(&self) {
        let _flight = self.flight.lock().await;
        let cur = self.cell.load_full();
        let Ok(Some(stored)) = self.store.load(self.name()).await else {
            return;
        };
        let known = cur.record.as_ref().is_some_and(|c| {
            c.generation == stored.generation && c.refresh_token == stored.refresh_token
        });
        if !known {
            let generation = stored.generation;
            self.publish(self.state_from(stored, false));
            tracing::info!(
                token = self.name(),
                generation,
                "a new token was stored; resuming"
            );
        }
    }

    /// The store's announcements of new records, where it makes them.
    pub(crate) fn store_changes(&self) -> Option<tokio::sync::broadcast::Receiver<String>> {
        self.store.changes()
    }

    /// Adopts a newer, valid record another instance stored, without the lock (a
    /// read). Skipped while a refresh runs here: it re-reads under the lock anyway.
    async fn pick_up(&self) {
        let Ok(_flight) = self.flight.try_lock() else {
            return;
        };
        let cur = self.cell.load_full();
        let Ok(Some(stored)) = self.store.load(self.name()).await else {
            return;
        };
        if stored.generation <= cur.generation() || cur.unsaved {
            return;
        }
        let state = self.state_from(stored, false);
        if !state.valid_for(Duration::ZERO) {
            return;
        }
        self.watch.forget();
        let generation = state.generation();
        self.publish(TokenState {
            last_refresh: cur.last_refresh,
            ..state
        });
        tracing::info!(
            token = self.name(),
            generation,
            "picked up the token another instance stored"
        );
    }

    /// Writes a record that could not be stored earlier, unless the store moved on,
    /// and removes the intent that kept the others from presenting its spent
    /// refresh token meanwhile.
    async fn persist_again(&self) {
        let _flight = self.flight.lock().await;
        let cur = self.cell.load_full();
        let Some(record) = cur.record.clone().filter(|_| cur.unsaved) else {
            return;
        };
        let name = self.name();
        match record::persist(&*self.store, name, &record, cur.durable).await {
            Ok(newer) => {
                let pending = self
                    .pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take();
                match &newer {
                    Some(s) => tracing::warn!(
                        token = name,
                        generation = s.generation,
                        "while this token could not be stored, another process stored generation {}; using it and discarding this one",
                        s.generation
                    ),
                    None => {
                        if pending.is_some() {
                            self.metrics.in_doubt(name, "written_after_restart");
                        }
                        tracing::info!(
                            token = name,
                            generation = record.generation,
                            "stored the token that could not be written before (read back from the store)"
                        );
                    }
                }
                if let Some(intent) = pending
                    && let Err(e) = self.store.swap_intent(name, Some(&intent), None).await
                {
                    tracing::debug!(token = name, error = %e, "could not remove this refresh's intent");
                }
                let record = newer.unwrap_or(record);
                let state = TokenState {
                    last_refresh: cur.last_refresh,
                    failure: cur.failure.clone(),
                    ..self.state_from(record, false)
                };
                self.publish(state);
            }
            Err(e) => {
                self.metrics.store_write_error(name);
                tracing::error!(token = name, error = %e, "still cannot store the token; retrying");
            }
        }
    }

    fn state_from(&self, record: StoredToken, unsaved: bool) -> TokenState {
        let generation = record.generation;
        let mut failure = None;
        let credentials = match &record.access_token {
            Some(token) => {
                let built: Option<Vec<_>> = self
                    .config
                    .injects
                    .iter()
                    .map(|i| i.credential(token.expose()))
                    .collect();
                built.unwrap_or_else(|| {
                    failure = Some(Failure {
                        terminal: true,
                        message:
                            "the access token holds characters that an HTTP header cannot carry"
                                .into(),
                        attempts: 1,
                        retry_at: Instant::now() + BACKOFF_MAX,
                        at: Instant::now(),
                        cause: Source::TokenEndpoint,
                    });
                    Vec::new()
                })
            }
            None => Vec::new(),
        };
        let upstreams = self
            .config
            .dynamic_upstreams
            .iter()
            .map(|(field, path)| {
                let base = record.extra.get(field).and_then(|v| v.as_str())?;
                let url = format!("{}{path}", base.trim_end_matches('/'));
                Upstream::parse(&url)
                    .map_err(|e| tracing::warn!(token = self.name(), field = field.as_str(), error = %e, "the token response names no usable upstream"))
                    .ok()
            })
            .collect();
        let valid_until =
            (!credentials.is_empty()).then(|| system_to_instant(ms_to_time(record.expires_at_ms)));
        TokenState {
            record: Some(record),
            credentials,
            upstreams,
            valid_until,
            failure,
            unsaved,
            durable: generation,
            last_refresh: None,
            refused: false,
        }
    }

    fn publish(&self, state: TokenState) -> Arc<TokenState> {
        let state = Arc::new(state);
        self.cell.store(Arc::clone(&state));
        self.changed.notify_one();
        self.published.send_replace(());
        state
    }

    /// Changes whenever a new state is published.
    pub fn follow(&self) -> tokio::sync::watch::Receiver<()> {
        self.published.subscribe()
    }
}

#[cfg(test)]
mod tests;
