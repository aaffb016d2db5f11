//! The refresh protocol: how one instance spends a refresh token on a store that
//! others share, so that no refresh token is presented twice under the faults
//! production has — a kill, a freeze (SIGSTOP, a paused VM), a store restart, an
//! answer later than the timeout.
//!
//! In order, each step a function of this page:
//! 1. **lock** the token in the store (a lease on shared stores);
//! 2. **re-read** the record under it: a newer, valid record is adopted, not
//!    refreshed;
//! 3. **check the intent** left by earlier refreshes: a refresh token the store
//!    marks *refused* is never presented (all instances go to "needs login"); one
//!    whose refresh is *in doubt* (another holder sent it and stored no answer)
//!    blocks this instance until it has seen that intent unchanged for the grace,
//!    then `in_doubt` decides (present once, or needs login);
//! 4. **write the intent** (compare-and-set, on the store's clock), durable before
//!    anything is sent;
//! 5. **check the lease**: renewed now, it must outlive the request's timeout by a
//!    margin, else the refresh is abandoned before sending (a holder that wakes
//!    from a freeze spends nothing);
//! 6. **send and read**, however late: the answer is read until the grace ends,
//!    not only until the callers' timeout;
//! 7. **compare-and-set** the new record on the generation the refresh started
//!    from, with the lease or, when it ended, without it: the lease guards token
//!    requests, the generation guards writes;
//! 8. **clear the intent** (only its owner does).
//!
//! What it does not do: decide when to refresh (`schedule`), talk HTTP (`grant`),
//! or publish state (`TokenSource`). Its inputs are a store and an [`Endpoint`],
//! so that tests can hold or fail every step.
//!
//! Length: the refresh protocol's eight steps, each a function, in the order they
//! run.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::record::new_record;
use super::response::{GrantError, TokenResponse};
use super::state::RefreshError;
use crate::config::InDoubt;
use crate::metrics::Metrics;
use crate::secret::Secret;
use crate::store::fingerprint;
use crate::store::{Held, Intent, StoreError, StoredToken, TokenStore};

/// Lease left beyond the request's timeout before a request may be sent: one
/// store round trip and the scheduling between the check and the send.
pub const LEASE_MARGIN: Duration = Duration::from_secs(1);
/// Once woken late (a freeze, a starved runtime), how long an answer that may sit
/// in the socket is still waited for.
const LATE_WAKE: Duration = Duration::from_secs(1);
/// Longest pause before looking again at another instance's in-doubt refresh.
const IN_DOUBT_POLL: Duration = Duration::from_secs(2);

/// Where the refresh token is presented.
#[async_trait::async_trait]
pub trait Endpoint: Sync {
    /// Whatever the request needs that takes time (the issuer's discovery
    /// document), fetched before the lease is checked, so that nothing slow lies
    /// between that check and the send.
    async fn prepare(&self) -> Result<(), GrantError> {
        Ok(())
    }
    /// Presents the configured grant (with `refresh_token` for a refresh-token
    /// grant) and reads the answer until `until`.
    async fn exchange(
        &self,
        refresh_token: Option<&Secret>,
        until: Instant,
    ) -> Result<TokenResponse, GrantError>;
}

/// The rules one token's refreshes follow.
#[derive(Clone, Debug)]
pub struct Rules {
    /// How long callers wait for a token request: the lease must outlive it.
    pub timeout: Duration,
    /// How long an in-doubt refresh blocks the others, and how long its holder
    /// keeps reading a late answer: the store's lease (zero for the file store,
    /// whose lock ends only with its holder).
    pub grace: Duration,
    pub in_doubt: InDoubt,
    /// How long to wait for another holder's lock.
    pub lock_wait: Duration,
    /// The lifetime of an access token whose response names none.
    pub default_lifetime: Duration,
}

/// What a refresh produced.
#[derive(Debug)]
pub enum Outcome {
    /// The store holds a newer record (another instance's): use it.
    Adopted(StoredToken),
    /// New tokens, and whether and how they were stored.
    Refreshed {
        record: StoredToken,
        stored: Stored,
        /// From the answer to the durable write.
        persist: Duration,
    },
    /// Another instance's refresh of this refresh token is in doubt: nothing was
    /// sent; look again after `retry_after`.
    Waiting { retry_after: Duration },
}

#[derive(Debug, PartialEq, Eq)]
pub enum Stored {
    /// Written under the lease.
    Yes,
    /// Written by compare-and-set after the lease ended under the request.
    WithoutLease,
    /// Not written (the store did not answer): kept in memory, to be written over
    /// generation `seen` as soon as the store answers. The intent stays, so no
    /// other instance presents the spent refresh token meanwhile.
    No { seen: u64, intent: Option<Intent> },
}

/// What this process knows about intents beyond what the store says.
#[derive(Default)]
pub struct Watch {
    /// Another owner's in-doubt intent, and when (store clock) this process first
    /// saw it: the grace counts from then, so an intent that outlived a store
    /// outage is not mistaken for an abandoned one.
    seen: Mutex<Option<(Intent, u64, u64)>>,
    /// The last refresh presented a refresh token another refresh had left in
    /// doubt: a refusal then most likely means the provider rotated it away.
    retried: std::sync::atomic::AtomicBool,
    /// An unusable lifetime from the provider was logged.
    said_lifetime: std::sync::atomic::AtomicBool,
}

impl Watch {
    /// Milliseconds (store clock) this process has seen `intent` unchanged.
    fn observed(&self, intent: &Intent, now_ms: u64) -> u64 {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        match &*seen {
            Some((i, at, first)) if i.same(intent) && *at == intent.at_ms => {
                now_ms.saturating_sub(*first)
            }
            _ => {
                *seen = Some((intent.clone(), intent.at_ms, now_ms));
                0
            }
        }
    }

    /// An in-doubt intent this process is waiting on, with how long it has seen it
    /// (for `/status`).
    pub fn waiting_on(&self) -> Option<u64> {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.as_ref().map(|(_, _, first)| *first)
    }

    pub fn retried(&self) -> bool {
        self.retried.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn forget(&self) {
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// One refresh of one token by one instance.
pub struct Refresh<'a> {
    pub name: &'a str,
    /// This process's id in intents.
    pub owner: &'a str,
    pub store: &'a dyn TokenStore,
    pub endpoint: &'a dyn Endpoint,
    pub rules: &'a Rules,
    pub watch: &'a Watch,
    pub metrics: &'a Metrics,
}

/// What the refresh starts from.
pub struct Start<'a> {
    /// The record this process holds (possibly newer than the store's, unsaved).
    pub current: Option<&'a StoredToken>,
    /// Refresh even when the store holds a valid record (a manual refresh).
    pub force: bool,
    /// The grant spends a refresh token.
    pub rotating: bool,
    /// The configured refresh token, for when none is stored.
    pub initial: Option<&'a (dyn Fn() -> Result<Secret, GrantError> + Sync)>,
    /// Whether a stored record is usable as it is.
    pub usable: &'a (dyn Fn(&StoredToken) -> bool + Sync),
}

/// The result of the steps under the lock, before it is released.
enum Locked {
    Done(Outcome),
    /// The held write failed without a fence: try once more without the lock.
    Write {
        record: StoredToken,
        seen: u64,
        intent: Option<Intent>,
        answered: Instant,
    },
}

impl Refresh<'_> {
    /// Runs the protocol once.
    pub async fn run(&self, start: Start<'_>) -> Result<Outcome, RefreshError> {
        let mut held = self.store.lock(self.name, self.rules.lock_wait).await?;
        let locked = self.under_lock(&mut *held, &start).await;
        held.release().await;
        match locked? {
            Locked::Done(outcome) => Ok(outcome),
            Locked::Write {
                record,
                seen,
                intent,
                answered,
            } => {
                self.write_without_lock(record, seen, intent, answered)
                    .await
            }
        }
    }

    async fn under_lock(
        &self,
        held: &mut dyn Held,
        start: &Start<'_>,
    ) -> Result<Locked, RefreshError> {
        // 2. Re-read: the write below is fenced by what the store holds now.
        let stored = held.load().await?;
        let seen = stored.as_ref().map_or(0, |s| s.generation);
        let newest = match (stored, start.current) {
            (Some(s), Some(c)) if c.generation >= s.generation => Some(c.clone()),
            (Some(s), _) => {
                if !start.force && (start.usable)(&s) {
                    self.watch.forget();
                    return Ok(Locked::Done(Outcome::Adopted(s)));
                }
                Some(s)
            }
            (None, c) => c.cloned(),
        };
        let generation = newest.as_ref().map_or(0, |r| r.generation);
        let refresh_token = match start.rotating {
            false => None,
            true => match newest.as_ref().and_then(|r| r.refresh_token.clone()) {
                Some(rt) => Some(rt),
                None => match start.initial {
                    Some(read) => Some(read()?),
                    None => return Err(RefreshError::NeedsLogin),
                },
            },
        };

        // 3 and 4. The intent: refused, in doubt, or ours to write.
        let intent = match &refresh_token {
            None => None,
            Some(rt) => match self.announce(generation, rt).await? {
                Ok(intent) => intent,
                Err(retry_after) => return Ok(Locked::Done(Outcome::Waiting { retry_after })),
            },
        };
        let announced = Instant::now();
        if let Err(e) = self.endpoint.prepare().await {
            self.clear(intent.as_ref()).await;
            return Err(e.into());
        }

        // 5. No token request without a live lease.
        if let Err(e) = self.check_lease(held).await {
            self.metrics.lease_lost(self.name, "before_send");
            tracing::warn!(
                token = self.name,
                error = %e,
                "the store's lease on this token would not outlive the token request; abandoning this refresh before sending anything (was this process paused?)"
            );
            self.clear(intent.as_ref()).await;
            return Err(RefreshError::LeaseLost);
        }

        // 6. Send, and read the answer however late, within the grace.
        let sent = Instant::now();
        let until = match intent {
            Some(_) => announced + self.rules.grace.max(self.rules.timeout),
            None => sent + self.rules.timeout,
        };
        let answer = self.endpoint.exchange(refresh_token.as_ref(), until).await;
        let answered = Instant::now();
        let resp = match answer {
            Ok(resp) => resp,
            Err(e) => return self.failed(e, seen, intent.as_ref()).await,
        };
        if intent.is_some() && answered > sent + self.rules.timeout {
            self.metrics.in_doubt(self.name, "late_answer");
            tracing::warn!(
                token = self.name,
                after_ms = (answered - sent).as_millis() as u64,
                "the token endpoint answered after the request's timeout; the answer was read and is kept"
            );
        }

        if let Some(said) = &resp.unusable_lifetime
            && !self
                .watch
                .said_lifetime
                .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            tracing::warn!(
                token = self.name,
                provider_said = %said,
                default_lifetime_s = self.rules.default_lifetime.as_secs(),
                "the token endpoint gave no usable lifetime; the access token is taken to live default_lifetime (said once per process)"
            );
        }

        // 7. Compare-and-set on the generation the refresh started from.
        let record = new_record(generation, resp, refresh_token, self.rules.default_lifetime);
        match held.save(&record, Some(seen)).await {
            Ok(()) => {
                self.clear(intent.as_ref()).await;
                Ok(Locked::Done(Outcome::Refreshed {
                    record,
                    stored: Stored::Yes,
                    persist: answered.elapsed(),
                }))
            }
            Err(StoreError::Fenced { stored, .. }) => {
                self.clear(intent.as_ref()).await;
                self.fenced(held.load().await?, seen, stored)
                    .map(Locked::Done)
            }
            Err(e) => {
                tracing::warn!(token = self.name, error = %e, "could not store the new token under the lock; writing it by compare-and-set instead");
                Ok(Locked::Write {
                    record,
                    seen,
                    intent,
                    answered,
                })
            }
        }
    }

    /// Steps 3 and 4: reads the intent, refuses a refused refresh token, waits on
    /// another refresh in doubt, and writes this refresh's intent. `Err(pause)`:
    /// wait that long and look again.
    async fn announce(
        &self,
        generation: u64,
        rt: &Secret,
    ) -> Result<Result<Option<Intent>, Duration>, RefreshError> {
        let sha = fingerprint(rt.expose());
        let read = self.store.load_intent(self.name).await?;
        let mut retry = false;
        if let Some(found) = &read.intent
            && found.refresh_token_sha256 == sha
        {
            if found.refused {
                self.watch.forget();
                return Err(RefreshError::Refused);
            }
            // Ours: we know how long we listened. Another's: the grace counts from
            // when this process first saw it.
            let age = match found.owner == self.owner {
                true => read.now_ms.saturating_sub(found.at_ms),
                false => self.watch.observed(found, read.now_ms),
            };
            let grace = self.rules.grace.as_millis() as u64;
            if age < grace {
                let left = Duration::from_millis(grace - age);
                tracing::info!(
                    token = self.name,
                    generation,
                    wait_ms = left.as_millis() as u64,
                    "another refresh of this refresh token is in doubt (sent, no answer stored yet); not presenting it, waiting for its result"
                );
                return Ok(Err(left.clamp(Duration::from_millis(200), IN_DOUBT_POLL)));
            }
            self.metrics.refresh_interrupted(self.name);
            match self.rules.in_doubt {
                InDoubt::NeedsLogin => {
                    self.metrics.in_doubt(self.name, "needs_login");
                    self.watch.forget();
                    return Err(RefreshError::InDoubt);
                }
                InDoubt::Retry => {
                    retry = true;
                    self.metrics.in_doubt(self.name, "retried");
                    tracing::warn!(
                        token = self.name,
                        generation,
                        started_at = %crate::clock::rfc3339(crate::clock::ms_to_time(found.at_ms)),
                        "an earlier refresh of this token stopped in the middle: it was sent and never stored an answer (its process died or stayed frozen past the grace): the provider may already have rotated this refresh token away. Presenting it once (in_doubt = \"retry\"); a provider with a reuse grace period answers with the same new tokens"
                    );
                }
            }
        }
        self.watch.forget();
        self.watch
            .retried
            .store(retry, std::sync::atomic::Ordering::SeqCst);
        let mine = Intent {
            owner: self.owner.to_owned(),
            generation,
            refresh_token_sha256: sha,
            at_ms: 0,
            refused: false,
        };
        // A stale intent (another refresh token, an older generation) is replaced.
        match self
            .store
            .swap_intent(self.name, read.intent.as_ref(), Some(&mine))
            .await
        {
            Ok(true) => Ok(Ok(Some(mine))),
            // Someone wrote an intent between the read and the write: only a
            // holder whose lock lapsed could, and this one is that holder.
            Ok(false) => {
                self.metrics.lease_lost(self.name, "before_send");
                Err(RefreshError::LeaseLost)
            }
            // A lock that ends only with its holder (one host) needs no intent to
            // keep others off: the intent only tells the next start what
            // happened. A full disk then still refreshes, served from memory.
            Err(e) if self.rules.grace.is_zero() => {
                self.metrics.store_write_error(self.name);
                tracing::warn!(token = self.name, error = %e, "could not record the refresh about to happen; refreshing anyway (the lock ends only with this process)");
                Ok(Ok(None))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Step 5: renews the lease and checks it outlives the request.
    async fn check_lease(&self, held: &mut dyn Held) -> Result<(), StoreError> {
        match held.renew().await? {
            None => Ok(()),
            Some(until) if until >= Instant::now() + self.rules.timeout + LEASE_MARGIN => Ok(()),
            Some(_) => Err(StoreError::LeaseLost {
                token: self.name.to_owned(),
            }),
        }
    }

    /// A token request that did not bring new tokens.
    async fn failed(
        &self,
        e: GrantError,
        seen: u64,
        intent: Option<&Intent>,
    ) -> Result<Locked, RefreshError> {
        // Whatever went wrong, another instance may have stored a newer record
        // meanwhile (it refreshed while this one was frozen, or this refusal is
        // because it spent the token first): use it. Read without the lock, which
        // may have ended with a freeze.
        if let Ok(Some(s)) = self.store.load(self.name).await
            && s.generation > seen
        {
            self.clear(intent).await;
            match e.is_terminal() {
                true => tracing::info!(
                    token = self.name,
                    generation = s.generation,
                    "the token endpoint refused a refresh token that another process had already spent; using the token it stored"
                ),
                false => tracing::info!(
                    token = self.name,
                    generation = s.generation,
                    error = %e,
                    "this refresh failed, and another instance stored a newer token meanwhile; using it"
                ),
            }
            return Ok(Locked::Done(Outcome::Adopted(s)));
        }
        if e.is_terminal() {
            // Recorded, so that no instance presents it again.
            if let Some(mine) = intent {
                let refused = Intent {
                    refused: true,
                    ..mine.clone()
                };
                if let Err(e) = self
                    .store
                    .swap_intent(self.name, Some(mine), Some(&refused))
                    .await
                {
                    tracing::warn!(token = self.name, error = %e, "could not record the refusal in the store");
                }
            }
        } else if !e.in_doubt() {
            // An answer, or nothing sent: no refresh token was spent.
            self.clear(intent).await;
        }
        Err(e.into())
    }

    /// The store moved past `seen` while this refresh ran: its record is the
    /// chain's newest, and this answer is discarded.
    fn fenced(
        &self,
        newest: Option<StoredToken>,
        seen: u64,
        stored: u64,
    ) -> Result<Outcome, RefreshError> {
        tracing::warn!(
            token = self.name,
            seen,
            stored,
            "the store moved on while this refresh ran; using the stored token and discarding this one"
        );
        match newest.filter(|s| s.generation > seen) {
            Some(s) => Ok(Outcome::Adopted(s)),
            None => Err(StoreError::Fenced {
                token: self.name.to_owned(),
                seen,
                stored,
            }
            .into()),
        }
    }

    /// Step 7 without the lock: the lease ended under the request (a freeze, a
    /// store restart); the generation still guards the write.
    async fn write_without_lock(
        &self,
        record: StoredToken,
        seen: u64,
        intent: Option<Intent>,
        answered: Instant,
    ) -> Result<Outcome, RefreshError> {
        match self.store.write(self.name, &record, seen).await {
            Ok(()) => {
                self.metrics.lease_lost(self.name, "in_flight");
                self.clear(intent.as_ref()).await;
                Ok(Outcome::Refreshed {
                    record,
                    stored: Stored::WithoutLease,
                    persist: answered.elapsed(),
                })
            }
            Err(StoreError::Fenced { stored, .. }) => {
                self.clear(intent.as_ref()).await;
                let newest = self.store.load(self.name).await?;
                self.fenced(newest, seen, stored)
            }
            Err(e) => {
                self.metrics.store_write_error(self.name);
                tracing::error!(token = self.name, error = %e, "could not store the new token; it is kept in memory and written as soon as the store answers, and no other instance presents the spent refresh token meanwhile");
                Ok(Outcome::Refreshed {
                    record,
                    stored: Stored::No { seen, intent },
                    persist: answered.elapsed(),
                })
            }
        }
    }

    /// Step 8: removes this refresh's intent (only ours; a failure leaves a stale
    /// intent that the generation already marks as finished).
    async fn clear(&self, intent: Option<&Intent>) {
        if let Some(mine) = intent
            && let Err(e) = self.store.swap_intent(self.name, Some(mine), None).await
        {
            tracing::debug!(token = self.name, error = %e, "could not remove this refresh's intent");
        }
    }
}

/// Reads `answer` until `until`, and never throws away an answer that is there
/// when the time is up: the answer is polled before the timer, and a task woken late (a
/// freeze, a starved runtime: the deadline passed while it slept) gives an answer
/// that may already sit in the socket a moment more to be read. `None`: no answer.
pub async fn listen<F: Future>(until: Instant, answer: F) -> Option<F::Output> {
    tokio::pin!(answer);
    tokio::select! {
        biased;
        out = &mut answer => return Some(out),
        _ = tokio::time::sleep_until(until) => {}
    }
    if Instant::now() > until + Duration::from_millis(100) {
        return tokio::time::timeout(LATE_WAKE, answer).await.ok();
    }
    None
}

#[cfg(test)]
#[path = "refresh_tests.rs"]
mod tests;
