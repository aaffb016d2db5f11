//! What a token source publishes: a [`TokenState`] snapshot, replaced whole on
//! every change, and why a token could not be had (to callers: [`Unavailable`];
//! within the token engine: [`RefreshError`]).

use std::time::{Duration, Instant, SystemTime};

use super::response::GrantError;
use crate::clock::ms_to_time;
use crate::config::{Credential, Upstream};
use crate::error::Source;
use crate::secret::Secret;
use crate::store::{StoreError, StoredToken};

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
    pub(super) credentials: Vec<Credential>,
    /// One per `{token.FIELD}` upstream of the token's routes; `None` when the
    /// response did not carry a usable URL there.
    pub(super) upstreams: Vec<Option<Upstream>>,
    /// When the access token stops being usable, on the monotonic clock.
    pub(super) valid_until: Option<Instant>,
    pub failure: Option<Failure>,
    /// The record is newer than what the store holds; the scheduler writes it again.
    pub unsaved: bool,
    /// The generation the store is known to hold (the record's own once saved): the
    /// fence for writing an unsaved record later.
    pub(super) durable: u64,
    pub last_refresh: Option<(SystemTime, Trigger)>,
    /// The upstream refused this token and no new one could be had.
    pub refused: bool,
}

impl TokenState {
    /// The same state, to be changed in a field or two and published.
    pub(super) fn copy(&self) -> TokenState {
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
    pub(super) fn held_tokens(&self) -> Vec<&str> {
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

    /// Whether the access token is usable for at least `margin` more.
    pub fn valid_for(&self, margin: Duration) -> bool {
        self.valid_until
            .is_some_and(|until| until > Instant::now() + margin)
    }

    /// When a refresh is tried again after a failure that needs no person: after
    /// the backoff and, while the token serves, no sooner than `min_interval` after
    /// its issue (or its expiry, if that comes first). The refresh a reload asks
    /// for (new settings) may fail inside `min_interval`; sooner than this, the next
    /// one would decline at once.
    pub fn next_attempt(&self, min_interval: Duration) -> Option<Instant> {
        let f = self.failure.as_ref().filter(|f| !f.terminal)?;
        let mut at = f.retry_at;
        if let (Some(earliest), Some(until)) =
            (self.min_interval_ends(min_interval), self.valid_until)
        {
            at = at.max(earliest.min(until));
        }
        Some(at)
    }

    /// `min_interval` after this token's issue: until then, a refresh waits while
    /// the token serves (Exact Online refuses an earlier one). `None`: no token.
    pub fn min_interval_ends(&self, min_interval: Duration) -> Option<Instant> {
        let rec = self.record.as_ref()?;
        Some(system_to_instant(
            ms_to_time(rec.issued_at_ms) + min_interval,
        ))
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

/// Maps a wall-clock time onto the monotonic clock as seen now.
pub(super) fn system_to_instant(t: SystemTime) -> Instant {
    let now = Instant::now();
    match t.duration_since(SystemTime::now()) {
        // Far enough for any token; `Instant` cannot hold every `SystemTime`.
        Ok(ahead) => now
            .checked_add(ahead.min(Duration::from_secs(100 * 365 * 86_400)))
            .unwrap_or(now),
        Err(behind) => now.checked_sub(behind.duration()).unwrap_or(now),
    }
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
    pub(super) fn cause(&self) -> Source {
        match self {
            RefreshError::Grant(e) => e.cause(),
            RefreshError::Store(_) | RefreshError::LeaseLost => Source::Store,
            RefreshError::NeedsLogin => Source::Config,
            RefreshError::Refused | RefreshError::InDoubt => Source::TokenEndpoint,
        }
    }

    pub(super) fn is_terminal(&self) -> bool {
        match self {
            RefreshError::Grant(e) => e.is_terminal(),
            RefreshError::Store(e) => e.is_terminal(),
            RefreshError::NeedsLogin | RefreshError::Refused | RefreshError::InDoubt => true,
            RefreshError::LeaseLost => false,
        }
    }
}

/// What a refresh is doing: for `/status` (`refreshing`) and the log line of a
/// caller that stopped waiting.
#[derive(Clone, Copy)]
#[repr(u8)]
pub(super) enum Phase {
    Idle,
    StoreLock,
    TokenEndpoint,
    StoreWrite,
}

impl Phase {
    /// What a refresh in this phase waits on.
    pub(super) fn cause(v: u8) -> Source {
        match v {
            x if x == Phase::StoreLock as u8 || x == Phase::StoreWrite as u8 => Source::Store,
            x if x == Phase::TokenEndpoint as u8 => Source::TokenEndpoint,
            _ => Source::Internal,
        }
    }

    pub(super) fn describe(v: u8) -> &'static str {
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
