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
mod response;
mod schedule;
mod seed;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::{Mutex, Notify};

use crate::config::{ClientAuth, Credential, Endpoint, Grant, TokenConfig, Upstream};
use crate::metrics::Metrics;
use crate::store::{RECORD_VERSION, StoreError, StoredToken, TokenStore};

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
    pub last_refresh: Option<(SystemTime, Trigger)>,
}

impl TokenState {
    pub fn generation(&self) -> u64 {
        self.record.as_ref().map_or(0, |r| r.generation)
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
}

/// No valid token can be had now; try again after `retry_after`.
#[derive(Debug, Clone, Copy)]
pub struct Unavailable {
    pub retry_after: Duration,
}

#[derive(Debug, thiserror::Error)]
enum RefreshError {
    #[error(transparent)]
    Grant(#[from] GrantError),
    #[error("token store: {0}")]
    Store(#[from] StoreError),
    #[error("no refresh token is stored or configured")]
    NeedsLogin,
}

impl RefreshError {
    fn is_terminal(&self) -> bool {
        match self {
            RefreshError::Grant(e) => e.is_terminal(),
            RefreshError::Store(e) => e.is_terminal(),
            RefreshError::NeedsLogin => true,
        }
    }
}

/// What a successful pass under the store lock produced.
enum Outcome {
    /// Another instance (or an earlier run) had stored a newer, valid token.
    Adopted(TokenState),
    /// With how long the new record took to become durable after the response.
    Refreshed(TokenState, Duration),
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
}

const BACKOFF_BASE: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

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
        })
    }

    pub fn name(&self) -> &str {
        &self.config.name
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

    /// Refreshes unless the generation moved past `seen` meanwhile, and returns the
    /// state to use. Outside `Manual`, respects backoff, terminal failures and
    /// `min_interval`.
    pub async fn refresh(
        self: &Arc<Self>,
        seen: u64,
        trigger: Trigger,
    ) -> Result<Arc<TokenState>, Unavailable> {
        let me = Arc::clone(self);
        tokio::spawn(async move { me.refresh_in_flight(seen, trigger).await })
            .await
            .unwrap_or(Err(Unavailable {
                retry_after: BACKOFF_BASE,
            }))
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
        if trigger != Trigger::Manual {
            if let Some(f) = &cur.failure
                && (f.terminal || now < f.retry_at)
            {
                let retry_after = f.retry_at.saturating_duration_since(now).max(BACKOFF_BASE);
                return Err(Unavailable { retry_after });
            }
            if let Some(rec) = &cur.record {
                let earliest =
                    system_to_instant(ms_to_time(rec.issued_at_ms) + self.config.min_interval);
                if now < earliest && cur.valid_for(Duration::ZERO) {
                    return Err(Unavailable {
                        retry_after: earliest - now,
                    });
                }
            }
        }

        let result = self.refresh_under_store_lock(&cur, trigger).await;
        let elapsed = now.elapsed();
        let state = match result {
            Ok(Outcome::Adopted(state)) => {
                tracing::info!(
                    token = self.name(),
                    generation = state.generation(),
                    "using the token stored by an earlier run or another instance"
                );
                TokenState {
                    last_refresh: cur.last_refresh,
                    ..state
                }
            }
            Ok(Outcome::Refreshed(state, persist)) => {
                self.metrics
                    .refresh(self.name(), trigger, "success", elapsed);
                let expires_at = state.record.as_ref().map_or(0, |r| r.expires_at_ms);
                tracing::info!(
                    token = self.name(),
                    trigger = trigger.as_str(),
                    generation = state.generation(),
                    expires_at = %humantime::format_rfc3339_seconds(ms_to_time(expires_at)),
                    duration_ms = elapsed.as_millis() as u64,
                    persist_us = persist.as_micros() as u64,
                    "token refreshed"
                );
                TokenState {
                    last_refresh: Some((SystemTime::now(), trigger)),
                    ..state
                }
            }
            Err(e) => {
                let result = match &e {
                    RefreshError::Grant(g) if g.is_terminal() => "invalid_grant",
                    _ => "error",
                };
                self.metrics.refresh(self.name(), trigger, result, elapsed);
                let failure = self.failure(&cur, &e);
                if failure.terminal {
                    tracing::error!(
                        token = self.name(),
                        trigger = trigger.as_str(),
                        error = %e,
                        "token refresh failed for good; no further attempts. Recover by storing a new refresh token with `tokenproxy seed {name}`; this instance resumes by itself once a new token is stored",
                        name = self.name(),
                    );
                } else {
                    tracing::warn!(
                        token = self.name(),
                        trigger = trigger.as_str(),
                        error = %e,
                        attempt = failure.attempts,
                        retry_in_ms = failure.retry_at.saturating_duration_since(now).as_millis() as u64,
                        "token refresh failed; the current token is served until it expires"
                    );
                }
                let retry_after = failure
                    .retry_at
                    .saturating_duration_since(now)
                    .max(BACKOFF_BASE);
                self.publish(TokenState {
                    record: cur.record.clone(),
                    credentials: cur.credentials.clone(),
                    upstreams: cur.upstreams.clone(),
                    valid_until: cur.valid_until,
                    failure: Some(failure),
                    unsaved: cur.unsaved,
                    last_refresh: cur.last_refresh,
                });
                return Err(Unavailable { retry_after });
            }
        };
        Ok(self.publish(state))
    }

    async fn refresh_under_store_lock(
        &self,
        cur: &TokenState,
        trigger: Trigger,
    ) -> Result<Outcome, RefreshError> {
        let name = self.name();
        let _lock = self.store.lock(name).await?;
        let stored = self.store.load(name).await?;
        let newest = match (stored, &cur.record) {
            (Some(s), Some(c)) if c.generation >= s.generation => Some(c.clone()),
            (Some(s), _) => {
                let state = self.state_from(s.clone(), false);
                if trigger != Trigger::Manual && state.valid_for(Duration::ZERO) {
                    return Ok(Outcome::Adopted(state));
                }
                Some(s)
            }
            (None, c) => c.clone(),
        };

        let refresh_token = match &self.config.grant {
            Grant::RefreshToken { initial } => {
                match newest.as_ref().and_then(|r| r.refresh_token.clone()) {
                    Some(rt) => Some(rt),
                    None => match initial {
                        Some(r) => Some(r.resolve().map_err(|e| {
                            RefreshError::Grant(GrantError::Transport(format!(
                                "cannot read refresh_token: {e}"
                            )))
                        })?),
                        None => return Err(RefreshError::NeedsLogin),
                    },
                }
            }
            _ => None,
        };
        let resp = self
            .request(Exchange::Grant(refresh_token.as_ref()))
            .await?;
        // From here until the record is durable, a crash loses a rotated token.
        let received = Instant::now();

        let now = SystemTime::now();
        let lifetime = resp.lifetime.unwrap_or(self.config.default_lifetime);
        let record = StoredToken {
            version: RECORD_VERSION,
            generation: newest.as_ref().map_or(0, |r| r.generation) + 1,
            access_token: Some(resp.access_token),
            // RFC 6749 §6: no new refresh token means the old one stays valid.
            refresh_token: resp.refresh_token.or(refresh_token),
            issued_at_ms: time_to_ms(now),
            expires_at_ms: time_to_ms(now + lifetime),
            extra: resp.extra,
        };
        let unsaved = match self.store.save(name, &record).await {
            Ok(()) => false,
            Err(e) => {
                self.metrics.store_write_error(name);
                tracing::error!(token = name, error = %e, "could not store the new token; it is kept in memory and the write is retried");
                true
            }
        };
        Ok(Outcome::Refreshed(
            self.state_from(record, unsaved),
            received.elapsed(),
        ))
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

    /// Writes a record that could not be stored earlier, unless the store moved on.
    async fn persist_again(&self) {
        let _flight = self.flight.lock().await;
        let cur = self.cell.load_full();
        let Some(record) = cur.record.clone().filter(|_| cur.unsaved) else {
            return;
        };
        let name = self.name();
        let result = async {
            let _lock = self.store.lock(name).await?;
            match self.store.load(name).await? {
                Some(s) if s.generation > record.generation => Ok(Some(s)),
                _ => self.store.save(name, &record).await.map(|()| None),
            }
        }
        .await;
        match result {
            Ok(newer) => {
                tracing::info!(
                    token = name,
                    "stored the token that could not be written before"
                );
                let record = newer.unwrap_or(record);
                let state = TokenState {
                    last_refresh: cur.last_refresh,
                    failure: cur.failure.clone(),
                    ..self.state_from(record, false)
                };
                self.publish(state);
            }
            Err(e) => {
                let e: StoreError = e;
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
        Failure {
            terminal: e.is_terminal(),
            message: e.to_string(),
            attempts,
            retry_at: Instant::now() + delay,
        }
    }

    /// One token request to the configured or discovered endpoint.
    async fn request(&self, exchange: Exchange<'_>) -> Result<response::TokenResponse, GrantError> {
        let basic = matches!(self.config.client_auth, ClientAuth::Basic(_));
        let (url, basic) = match &self.config.endpoint {
            Endpoint::Url(url) => (url, basic),
            Endpoint::Issuer(issuer) => {
                let meta = self
                    .metadata
                    .get_or_try_init(|| discovery::discover(&self.http.client, issuer))
                    .await?;
                let basic = if self.config.client_auth_explicit {
                    basic
                } else {
                    meta.prefers_basic()
                };
                (&meta.token_endpoint, basic)
            }
        };
        grant::request(&self.http, &self.config, url, basic, exchange).await
    }

    fn state_from(&self, record: StoredToken, unsaved: bool) -> TokenState {
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
            last_refresh: None,
        }
    }

    fn publish(&self, state: TokenState) -> Arc<TokenState> {
        let state = Arc::new(state);
        self.cell.store(Arc::clone(&state));
        self.changed.notify_one();
        state
    }
}

pub(crate) fn time_to_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub(crate) fn ms_to_time(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

/// Maps a wall-clock time onto the monotonic clock as seen now.
fn system_to_instant(t: SystemTime) -> Instant {
    let now = Instant::now();
    match t.duration_since(SystemTime::now()) {
        Ok(ahead) => now + ahead,
        Err(behind) => now.checked_sub(behind.duration()).unwrap_or(now),
    }
}
