//! One refresh at a time: the single-flight path a refresh takes once it has the
//! process's turn (backoff, the request floor, `min_interval`), the store protocol
//! it runs under (`refresh`), what it publishes and what it records of a failure.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use std::sync::atomic::Ordering;

use super::grant::{self, Exchange};
use super::response::{self, GrantError};
use super::state::{Failure, Phase, RefreshError, TokenState, Trigger, Unavailable};
use super::{TokenSource, discovery, refresh};
use crate::clock::{ms_to_time, rfc3339};
use crate::config::{ClientAuth, Endpoint, Grant};
use crate::error::Source;
use crate::secret::Secret;
use crate::store::StoredToken;

pub(super) const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Whatever a provider says about lifetimes, one token's endpoint is asked at most
/// this often by one process (outside a person's manual refresh, which has
/// `min_interval` and the backoff): a refresh due sooner waits.
pub(super) const REQUEST_FLOOR: Duration = Duration::from_secs(1);
pub(super) const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// While a token is expired and requests wait for it, a refresh is tried this
/// often even when the backoff would wait longer.
pub(super) const EXPIRED_RETRY: Duration = Duration::from_secs(5);

impl TokenSource {
    /// A refresh, one at a time: unless another one made a new token meanwhile,
    /// and if it may go now, runs under the store's protocol and publishes what it
    /// brought (a new token, another instance's, or a failure with its backoff).
    pub(super) async fn refresh_in_flight(
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
        self.may_go(&cur, trigger, now).await?;
        let result = self.refresh_under_store_lock(&cur, trigger).await;
        let elapsed = now.elapsed();
        match result {
            Ok(refresh::Outcome::Adopted(record)) => {
                tracing::info!(
                    token = self.name(),
                    generation = record.generation,
                    "using the token stored by an earlier run or another instance"
                );
                Ok(self.publish(TokenState {
                    last_refresh: cur.last_refresh,
                    ..self.state_from(record, false)
                }))
            }
            Ok(refresh::Outcome::Refreshed {
                record,
                stored,
                persist,
            }) => {
                self.metrics
                    .refresh(self.name(), trigger.as_str(), "success", elapsed);
                let (generation, expires_at_ms) = (record.generation, record.expires_at_ms);
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
                let state = self.publish(state);
                tracing::info!(
                    token = self.name(),
                    trigger = trigger.as_str(),
                    generation,
                    expires_at = %rfc3339(ms_to_time(expires_at_ms)),
                    duration_ms = elapsed.as_millis() as u64,
                    persist_us = persist.as_micros() as u64,
                    "token refreshed"
                );
                Ok(state)
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
                Err(Unavailable {
                    retry_after: retry_after.max(BACKOFF_BASE),
                    cause: Source::TokenEndpoint,
                })
            }
            Err(e) => Err(self.failed(&cur, &e, trigger, now, elapsed)),
        }
    }

    /// Whether a refresh may go now: not while closing and, outside a person's
    /// (`Manual`), not inside the backoff after a failure (sooner while clients wait
    /// on an expired token), the request floor, or `min_interval` while the token
    /// serves. `Err` says when to ask again.
    async fn may_go(
        &self,
        cur: &TokenState,
        trigger: Trigger,
        now: Instant,
    ) -> Result<(), Unavailable> {
        if self.closing.load(Ordering::SeqCst) {
            return Err(Unavailable {
                retry_after: BACKOFF_BASE,
                cause: Source::Internal,
            });
        }
        if trigger == Trigger::Manual {
            return Ok(());
        }
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
        if let Some(earliest) = cur.min_interval_ends(self.config.min_interval)
            && now < earliest
            && cur.valid_for(Duration::ZERO)
        {
            return Err(Unavailable {
                retry_after: earliest - now,
                cause: Source::TokenEndpoint,
            });
        }
        Ok(())
    }

    /// Records a failed refresh (metrics, the log line, the state with its backoff)
    /// and says when to ask again.
    fn failed(
        &self,
        cur: &TokenState,
        e: &RefreshError,
        trigger: Trigger,
        now: Instant,
        elapsed: Duration,
    ) -> Unavailable {
        let result = match e {
            RefreshError::Grant(g) if g.is_terminal() => "invalid_grant",
            _ => "error",
        };
        self.metrics
            .refresh(self.name(), trigger.as_str(), result, elapsed);
        let failure = self.failure(cur, e);
        let unavailable = Unavailable {
            retry_after: failure
                .retry_at
                .saturating_duration_since(now)
                .max(BACKOFF_BASE),
            cause: failure.cause,
        };
        // In force (and in `/status`) before the log line says so.
        self.publish(TokenState {
            failure: Some(failure.clone()),
            ..cur.copy()
        });
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
        unavailable
    }

    pub(super) fn failure(&self, cur: &TokenState, e: &RefreshError) -> Failure {
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
        // Idle again however this ends (a panic included): `/status` says
        // `refreshing` only while a refresh is under way.
        struct Underway<'a>(&'a TokenSource);
        impl Drop for Underway<'_> {
            fn drop(&mut self) {
                self.0.set_phase(Phase::Idle);
            }
        }
        self.set_phase(Phase::StoreLock);
        let _underway = Underway(self);
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
        refresh::Refresh {
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
        .await
    }

    /// One token request to the configured or discovered endpoint, its answer read
    /// until `until`.
    pub(super) async fn request(
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
