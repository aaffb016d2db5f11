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
//! Scheduling (when to refresh) lives in `schedule`; talking to the token endpoint
//! in `grant`; reading its answers in `response`.

mod discovery;
mod grant;
mod jwt;
mod refresh;
mod response;
mod schedule;
mod seed;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::{Mutex, Notify};

use crate::clock::{ms_to_time, rfc3339};
use crate::config::{ClientAuth, Credential, Endpoint, Grant, TokenConfig, Upstream};
use crate::error::Source;
use crate::metrics::{Metrics, TokenGauges};
use crate::secret::Secret;
use crate::store::{StoreError, StoredToken, TokenStore};

pub use grant::{Exchange, TokenHttp, basic_auth};
pub use response::{GrantError, parse as parse_response};
pub use schedule::run as run_scheduler;
pub use seed::SeedError;

/// Why a refresh happened, as logged and counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    Startup,
    Proactive,
    Reactive,
    Manual,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Startup => "startup",
            Trigger::Proactive => "proactive",
            Trigger::Reactive => "reactive",
            Trigger::Manual => "manual",
        }
    }
}

/// A snapshot of one token's state. Replaced whole, never mutated.
#[derive(Debug, Default)]
pub struct TokenState {
    pub record: Option<StoredToken>,
    /// One credential per injection template of the token's routes; empty when unusable.
    credentials: Vec<Credential>,
    /// One per `{token.FIELD}` upstream of the token's routes; `None` when the
    /// response did not carry a usable URL there.
    upstreams: Vec<Option<Upstream>>,
    /// When the access token stops being usable, on the monotonic clock.
    valid_until: Option<Instant>,
    pub failure: Option<Failure>,
    /// The record is newer than what the store holds; the scheduler writes it again.
    pub unsaved: bool,
    /// The generation the store is known to hold (the record's own once saved): the
    /// fence for writing an unsaved record later.
    durable: u64,
    pub last_refresh: Option<(SystemTime, Trigger)>,
    /// The upstream refused this token and no new one could be had.
    pub refused: bool,
}

impl TokenState {
    /// The same state, to be changed in a field or two and published.
    fn copy(&self) -> TokenState {
        TokenState {
            record: self.record.clone(),
            credentials: self.credentials.clone(),
            upstreams: self.upstreams.clone(),
            valid_until: self.valid_until,
            failure: self.failure.clone(),
            unsaved: self.unsaved,
            durable: self.durable,
            last_refresh: self.last_refresh,
            refused: self.refused,
        }
    }

    pub fn generation(&self) -> u64 {
        self.record.as_ref().map_or(0, |r| r.generation)
    }

    /// The access and refresh tokens held, to mask in text quoted from elsewhere.
    fn held_tokens(&self) -> Vec<&str> {
        self.record
            .iter()
            .flat_map(|r| [&r.access_token, &r.refresh_token])
            .flatten()
            .map(Secret::expose)
            .collect()
    }

    /// The credential for injection template `inject`, while the token is valid.
    pub fn credential(&self, inject: usize) -> Option<&Credential> {
        self.valid_for(Duration::ZERO)
            .then(|| self.credentials.get(inject))?
    }

    /// Whether the access token is usable for at least `margin` more.
    /// The upstream of `{token.FIELD}` template `index`, from the token response.
    pub fn upstream(&self, index: usize) -> Option<&Upstream> {
        self.upstreams.get(index)?.as_ref()
    }

    /// Why this state holds no usable token: its last failure's cause, else the
    /// token endpoint (nothing was issued yet).
    pub fn cause(&self) -> Source {
        self.failure
            .as_ref()
            .map_or(Source::TokenEndpoint, |f| f.cause)
    }

    pub fn valid_for(&self, margin: Duration) -> bool {
        self.valid_until
            .is_some_and(|until| until > Instant::now() + margin)
    }
}

/// The last failed refresh, kept until a refresh succeeds.
#[derive(Clone, Debug)]
pub struct Failure {
    /// Needs a person: the credential was refused, or the store is unreadable.
    pub terminal: bool,
    pub message: String,
    pub attempts: u32,
    pub retry_at: Instant,
    /// When this failure happened, for the sooner retry of an expired token.
    pub at: Instant,
    /// What failed: the token endpoint, the store, the configured credential.
    pub cause: Source,
}

/// See [`TokenSource::in_doubt`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InDoubtNow {
    Own,
    Another(SystemTime),
}

/// No valid token can be had now; try again after `retry_after`.
#[derive(Debug, Clone, Copy)]
pub struct Unavailable {
    pub retry_after: Duration,
    /// What stands in the way (what failed, or what a refresh is waiting for).
    pub cause: Source,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum RefreshError {
    #[error(transparent)]
    Grant(#[from] GrantError),
    #[error("token store: {0}")]
    Store(#[from] StoreError),
    #[error("no refresh token is stored or configured")]
    NeedsLogin,
    #[error(
        "the token endpoint refused this refresh token before (the store records the refusal); it is not presented again"
    )]
    Refused,
    #[error(
        "an earlier refresh spent this refresh token and never stored an answer (in_doubt = \"needs_login\"); the provider has most likely rotated it away"
    )]
    InDoubt,
    #[error("the store's lease ended before the token request could be sent; nothing was sent")]
    LeaseLost,
}

impl RefreshError {
    fn cause(&self) -> Source {
        match self {
            RefreshError::Grant(e) => e.cause(),
            RefreshError::Store(_) | RefreshError::LeaseLost => Source::Store,
            RefreshError::NeedsLogin => Source::Config,
            RefreshError::Refused | RefreshError::InDoubt => Source::TokenEndpoint,
        }
    }

    fn is_terminal(&self) -> bool {
        match self {
            RefreshError::Grant(e) => e.is_terminal(),
            RefreshError::Store(e) => e.is_terminal(),
            RefreshError::NeedsLogin | RefreshError::Refused | RefreshError::InDoubt => true,
            RefreshError::LeaseLost => false,
        }
    }
}

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

/// What a refresh is doing, for the log line of a caller that stopped waiting.
#[derive(Clone, Copy)]
#[repr(u8)]
enum Phase {
    Idle,
    StoreLock,
    TokenEndpoint,
    StoreWrite,
}

impl Phase {
    /// What a refresh in this phase waits on.
    fn cause(v: u8) -> Source {
        match v {
            x if x == Phase::StoreLock as u8 || x == Phase::StoreWrite as u8 => Source::Store,
            x if x == Phase::TokenEndpoint as u8 => Source::TokenEndpoint,
            _ => Source::Internal,
        }
    }

    fn describe(v: u8) -> &'static str {
        match v {
            x if x == Phase::StoreLock as u8 => "the store lock (another process holds it)",
            x if x == Phase::TokenEndpoint as u8 => {
                "the token endpoint (or its discovery document)"
            }
            x if x == Phase::StoreWrite as u8 => "the store write",
            _ => "its turn",
        }
    }
}

const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Whatever a provider says about lifetimes, one token's endpoint is asked at most
/// this often by one process (outside a person's manual refresh, which has
/// `min_interval` and the backoff): a refresh due sooner waits.
const REQUEST_FLOOR: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// While a token is expired and requests wait for it, a refresh is tried this
/// often even when the backoff would wait longer.
const EXPIRED_RETRY: Duration = Duration::from_secs(5);

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

    /// [`TokenSource::refresh`] for a caller that cannot wait long (a client
    /// request, the admin API): gives up after the token request's deadline, with a
    /// log line naming what the refresh is waiting for. The refresh goes on.
    pub async fn refresh_for_caller(
        self: &Arc<Self>,
        seen: u64,
        trigger: Trigger,
    ) -> Result<Arc<TokenState>, Unavailable> {
        let wait = self.config.timeout;
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
        let rec = cur.record.as_ref()?;
        let earliest = system_to_instant(ms_to_time(rec.issued_at_ms) + self.config.min_interval);
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

    /// Whether a refresh (or a store read or write of this token) is under way.
    pub fn is_refreshing(&self) -> bool {
        self.flight.try_lock().is_err()
    }

    /// Waits until no refresh is running (used at shutdown, so that a rotated refresh
    /// token being written is written).
    pub async fn quiesce(&self) {
        drop(self.flight.lock().await);
    }

    async fn refresh_in_flight(
        &self,
        seen: u64,
        trigger: Trigger,
    ) -> Result<Arc<TokenState>, Unavailable> {
        let _flight = self.flight.lock().await;
        let cur = self.cell.load_full();
        if cur.generation() != seen && cur.valid_for(Duration::ZERO) {
            return Ok(cur);
        }
        let now = Instant::now();
        if self.closing.load(Ordering::SeqCst) {
            return Err(Unavailable {
                retry_after: BACKOFF_BASE,
                cause: Source::Internal,
            });
        }
        if trigger != Trigger::Manual {
            if let Some(f) = &cur.failure
                && (f.terminal || now < f.retry_at)
            {
                // Clients are waiting on an expired token: try again sooner than the
                // backoff says, at most once per EXPIRED_RETRY.
                let sooner = f.at + EXPIRED_RETRY;
                let expired = !cur.valid_for(Duration::ZERO);
                let waiting = trigger == Trigger::Reactive && expired && !f.terminal;
                if !(waiting && now >= sooner) {
                    let next = if waiting {
                        sooner.min(f.retry_at)
                    } else {
                        f.retry_at
                    };
                    let retry_after = next.saturating_duration_since(now).max(BACKOFF_BASE);
                    return Err(Unavailable {
                        retry_after,
                        cause: f.cause,
                    });
                }
            }
            // The floor: a refresh that comes too soon after the last token
            // request waits for it (under the single-flight lock, so others wait
            // behind it) rather than fail a 401's retry.
            let last = *self.last_sent.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(sent) = last
                && now < sent + REQUEST_FLOOR
            {
                tokio::time::sleep(sent + REQUEST_FLOOR - now).await;
            }
            if let Some(rec) = &cur.record {
                let earliest =
                    system_to_instant(ms_to_time(rec.issued_at_ms) + self.config.min_interval);
                if now < earliest && cur.valid_for(Duration::ZERO) {
                    return Err(Unavailable {
                        retry_after: earliest - now,
                        cause: Source::TokenEndpoint,
                    });
                }
            }
        }

        let result = self.refresh_under_store_lock(&cur, trigger).await;
        let elapsed = now.elapsed();
        let state = match result {
            Ok(refresh::Outcome::Adopted(record)) => {
                tracing::info!(
                    token = self.name(),
                    generation = record.generation,
                    "using the token stored by an earlier run or another instance"
                );
                TokenState {
                    last_refresh: cur.last_refresh,
                    ..self.state_from(record, false)
                }
            }
            Ok(refresh::Outcome::Refreshed {
                record,
                stored,
                persist,
            }) => {
                self.metrics
                    .refresh(self.name(), trigger.as_str(), "success", elapsed);
                tracing::info!(
                    token = self.name(),
                    trigger = trigger.as_str(),
                    generation = record.generation,
                    expires_at = %rfc3339(ms_to_time(record.expires_at_ms)),
                    duration_ms = elapsed.as_millis() as u64,
                    persist_us = persist.as_micros() as u64,
                    "token refreshed"
                );
                let mut state = match stored {
                    refresh::Stored::No { seen, intent } => {
                        *self.pending.lock().unwrap_or_else(|e| e.into_inner()) = intent;
                        TokenState {
                            durable: seen,
                            ..self.state_from(record, true)
                        }
                    }
                    _ => self.state_from(record, false),
                };
                state.last_refresh = Some((SystemTime::now(), trigger));
                state
            }
            Ok(refresh::Outcome::Waiting { retry_after }) => {
                // Not a failure of this instance: the backoff does not grow.
                let failure = Failure {
                    terminal: false,
                    message: "another instance's refresh of this refresh token is in doubt (sent, no answer stored yet); waiting for its result instead of presenting the token again".into(),
                    attempts: cur.failure.as_ref().map_or(0, |f| f.attempts),
                    retry_at: now + retry_after,
                    at: now,
                    cause: Source::TokenEndpoint,
                };
                self.publish(TokenState {
                    failure: Some(failure),
                    ..cur.copy()
                });
                return Err(Unavailable {
                    retry_after: retry_after.max(BACKOFF_BASE),
                    cause: Source::TokenEndpoint,
                });
            }
            Err(e) => {
                let result = match &e {
                    RefreshError::Grant(g) if g.is_terminal() => "invalid_grant",
                    _ => "error",
                };
                self.metrics
                    .refresh(self.name(), trigger.as_str(), result, elapsed);
                let failure = self.failure(&cur, &e);
                let message = &failure.message;
                if failure.terminal {
                    tracing::error!(
                        token = self.name(),
                        trigger = trigger.as_str(),
                        error = %message,
                        "token refresh failed for good; no further attempts. Recover by storing a new refresh token with `tokenproxy seed {name}`; this instance resumes by itself once a new token is stored",
                        name = self.name(),
                    );
                } else {
                    tracing::warn!(
                        token = self.name(),
                        trigger = trigger.as_str(),
                        error = %message,
                        attempt = failure.attempts,
                        retry_in_ms = failure.retry_at.saturating_duration_since(now).as_millis() as u64,
                        "token refresh failed; the current token is served until it expires"
                    );
                }
                let unavailable = Unavailable {
                    retry_after: failure
                        .retry_at
                        .saturating_duration_since(now)
                        .max(BACKOFF_BASE),
                    cause: failure.cause,
                };
                self.publish(TokenState {
                    failure: Some(failure),
                    ..cur.copy()
                });
                return Err(unavailable);
            }
        };
        Ok(self.publish(state))
    }

    /// The rules this token's refreshes follow on its store.
    fn rules(&self) -> refresh::Rules {
        refresh::Rules {
            timeout: self.config.timeout,
            grace: self.store.lease().unwrap_or(Duration::ZERO),
            in_doubt: self.config.in_doubt,
            lock_wait: self.lock_wait(),
            default_lifetime: self.config.default_lifetime,
        }
    }

    async fn refresh_under_store_lock(
        &self,
        cur: &TokenState,
        trigger: Trigger,
    ) -> Result<refresh::Outcome, RefreshError> {
        self.set_phase(Phase::StoreLock);
        let rules = self.rules();
        let read_initial;
        let initial: Option<&(dyn Fn() -> Result<Secret, GrantError> + Sync)> =
            match &self.config.grant {
                Grant::RefreshToken { initial: Some(r) } => {
                    read_initial = move || {
                        r.resolve().map_err(|e| {
                            GrantError::Credential(format!("cannot read refresh_token: {e}"))
                        })
                    };
                    Some(&read_initial)
                }
                _ => None,
            };
        let usable = |s: &StoredToken| self.state_from(s.clone(), false).valid_for(Duration::ZERO);
        let result = refresh::Refresh {
            name: self.name(),
            owner: &self.owner,
            store: &*self.store,
            endpoint: self,
            rules: &rules,
            watch: &self.watch,
            metrics: &self.metrics,
        }
        .run(refresh::Start {
            current: cur.record.as_ref(),
            force: trigger == Trigger::Manual,
            rotating: matches!(self.config.grant, Grant::RefreshToken { .. }),
            initial,
            usable: &usable,
        })
        .await;
        self.set_phase(Phase::Idle);
        result
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
            tracing::info!(
                token = self.name(),
                generation = stored.generation,
                "a new token was stored; resuming"
            );
            self.publish(self.state_from(stored, false));
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
        tracing::info!(
            token = self.name(),
            generation = state.generation(),
            "picked up the token another instance stored"
        );
        self.publish(TokenState {
            last_refresh: cur.last_refresh,
            ..state
        });
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
        match refresh::persist(&*self.store, name, &record, cur.durable).await {
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

    fn failure(&self, cur: &TokenState, e: &RefreshError) -> Failure {
        let attempts = cur.failure.as_ref().map_or(0, |f| f.attempts) + 1;
        let exp = BACKOFF_BASE
            .saturating_mul(1 << (attempts - 1).min(16))
            .min(BACKOFF_MAX);
        // Jitter in [exp/2, exp]: instances that failed together do not retry together.
        let mut delay = exp / 2 + exp.mul_f64(fastrand::f64() / 2.0);
        if let RefreshError::Grant(g) = e
            && let Some(ra) = g.retry_after()
        {
            delay = delay.max(ra.min(Duration::from_secs(3600)));
        }
        // The grant masked what its request carried; mask the tokens held too, on
        // the whole text before any of it is cut.
        let held = cur.held_tokens();
        let mut message = match e {
            RefreshError::Grant(g) => g.clone().masked(&held).to_string(),
            other => crate::secret::mask(&other.to_string(), &held),
        };
        if e.is_terminal() && self.watch.retried() {
            message += "; an earlier refresh stopped while spending this refresh token, so the provider has most likely rotated it away: log in again";
        }
        Failure {
            terminal: e.is_terminal(),
            message,
            attempts,
            retry_at: Instant::now() + delay,
            at: Instant::now(),
            cause: e.cause(),
        }
    }

    /// One token request to the configured or discovered endpoint, its answer read
    /// until `until`.
    async fn request(
        &self,
        exchange: Exchange<'_>,
        until: tokio::time::Instant,
    ) -> Result<response::TokenResponse, GrantError> {
        let basic = matches!(self.config.client_auth, ClientAuth::Basic(_));
        let (url, basic) = match &self.config.endpoint {
            Endpoint::Url(url) => (url, basic),
            Endpoint::Issuer(issuer) => {
                let meta = self
                    .metadata
                    .get_or_try_init(|| {
                        discovery::discover(&self.http.client, issuer, self.config.timeout)
                    })
                    .await?;
                let basic = if self.config.client_auth_explicit {
                    basic
                } else {
                    meta.prefers_basic()
                };
                (&meta.token_endpoint, basic)
            }
        };
        grant::request(&self.http, &self.config, url, basic, exchange, until).await
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
        state
    }
}

#[async_trait::async_trait]
impl refresh::Endpoint for TokenSource {
    async fn prepare(&self) -> Result<(), GrantError> {
        if let Endpoint::Issuer(issuer) = &self.config.endpoint {
            self.metadata
                .get_or_try_init(|| {
                    discovery::discover(&self.http.client, issuer, self.config.timeout)
                })
                .await?;
        }
        Ok(())
    }

    async fn exchange(
        &self,
        refresh_token: Option<&Secret>,
        until: tokio::time::Instant,
    ) -> Result<response::TokenResponse, GrantError> {
        self.set_phase(Phase::TokenEndpoint);
        *self.last_sent.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        // Whatever the provider quotes back, the tokens this process holds are
        // masked in it (the request's own secrets already are).
        let cur = self.cell.load_full();
        let held = cur.held_tokens();
        let answer = self
            .request(Exchange::Grant(refresh_token), until)
            .await
            .map_err(|e| e.masked(&held));
        self.set_phase(Phase::StoreWrite);
        answer
    }
}

/// SHA-256 of `text`, hex: recognises a refresh token without holding it.
fn sha256_hex(text: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, text.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Maps a wall-clock time onto the monotonic clock as seen now.
fn system_to_instant(t: SystemTime) -> Instant {
    let now = Instant::now();
    match t.duration_since(SystemTime::now()) {
        // Far enough for any token; `Instant` cannot hold every `SystemTime`.
        Ok(ahead) => now
            .checked_add(ahead.min(Duration::from_secs(100 * 365 * 86_400)))
            .unwrap_or(now),
        Err(behind) => now.checked_sub(behind.duration()).unwrap_or(now),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RECORD_VERSION;

    /// Every type that holds a token prints `[redacted]` in its place.
    #[test]
    fn debug_and_display_never_show_a_token() {
        const AT: &str = "at-SECRET-1234";
        const RT: &str = "rt-SECRET-5678";
        let inject_header = crate::config::Inject::parse("Authorization: Bearer {token}").unwrap();
        let inject_query = crate::config::Inject::parse("?access_token={token}").unwrap();
        let record = StoredToken {
            version: RECORD_VERSION,
            generation: 1,
            access_token: Some(Secret::new(AT)),
            refresh_token: Some(Secret::new(RT)),
            issued_at_ms: 0,
            expires_at_ms: u64::MAX,
            extra: Default::default(),
        };
        let state = TokenState {
            record: Some(record.clone()),
            credentials: vec![
                inject_header.credential(AT).unwrap(),
                inject_query.credential(AT).unwrap(),
            ],
            failure: Some(Failure {
                terminal: false,
                message: "x".into(),
                attempts: 1,
                retry_at: Instant::now(),
                at: Instant::now(),
                cause: Source::Store,
            }),
            ..TokenState::default()
        };
        let response = parse_response(
            http::StatusCode::OK,
            format!(r#"{{"access_token":"{AT}","refresh_token":"{RT}"}}"#).as_bytes(),
            None,
            SystemTime::now(),
        )
        .unwrap();
        let printed = [
            format!("{state:?}"),
            format!("{record:?}"),
            format!("{response:?}"),
            format!("{:?} {}", Secret::new(AT), Secret::new(AT)),
            format!("{:?}", state.credentials),
        ];
        for text in printed {
            assert!(!text.contains("SECRET"), "{text}");
            assert!(text.contains("[redacted]"), "{text}");
        }
    }

    #[test]
    fn any_stored_time_formats_and_converts() {
        for ms in [0, 1, u64::MAX / 2, u64::MAX] {
            let _ = system_to_instant(ms_to_time(ms));
        }
    }
}
