//! Where token state lives between restarts and between instances.
//!
//! A [`TokenStore`] keeps one [`StoredToken`] record per token name and offers a
//! per-token lock that spans processes: whoever refreshes a token holds the lock,
//! re-reads the record, and refreshes only if nobody did meanwhile; the write goes
//! through the held lock and is fenced by the generation read under it. The store
//! does not decide anything about tokens; the token engine (`crate::token`) does.
//!
//! `file`: one host, `flock`. `postgres`: any number of hosts, a row lock that is a
//! lease (see `postgres`). `redis`: any number of hosts, a key with a unique value
//! and a time to live that is a lease (see `redis`).

mod encrypted;
mod file;
#[cfg(test)]
pub(crate) mod memory;
mod observed;
mod postgres;
mod redis;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::secret::Secret;

pub use encrypted::{Encrypted, Key, Keys};
pub use file::{FileStore, ephemeral};
#[cfg(test)]
pub use memory::MemoryStore;
pub use observed::{Observed, StoreHealth};
pub use postgres::{PgStore, SCHEMA_VERSION};
pub use redis::{REDIS_SCHEMA_VERSION, RedisStore};

/// The version written by this build; older or newer records are refused, never guessed at.
pub const RECORD_VERSION: u32 = 1;

/// One token's durable state. Times are Unix milliseconds, so that test lifetimes of
/// a few seconds keep their precision.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredToken {
    pub version: u32,
    /// Increments with every refresh, across all instances sharing the store.
    pub generation: u64,
    pub access_token: Option<Secret>,
    pub refresh_token: Option<Secret>,
    pub issued_at_ms: u64,
    pub expires_at_ms: u64,
    /// Non-secret response fields such as Salesforce's `instance_url`.
    #[serde(default)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// An intent's `refresh_token_sha256`: SHA-256 of the refresh token, in hex, so a
/// record can say which token a refresh spends without holding it.
pub fn fingerprint(refresh_token: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, refresh_token.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What is wrong with the fields of a record read as JSON, naming the field and
/// never its value (a wrong-typed field may hold a token).
pub fn shape_error(value: &serde_json::Value) -> Option<String> {
    let Some(fields) = value.as_object() else {
        return Some("not a JSON object".into());
    };
    for required in ["generation", "issued_at_ms", "expires_at_ms"] {
        if !fields.contains_key(required) {
            return Some(format!("field `{required}` is missing"));
        }
    }
    for (name, v) in fields {
        let ok = match name.as_str() {
            "version" | "generation" | "issued_at_ms" | "expires_at_ms" => v.is_u64(),
            "access_token" | "refresh_token" => v.is_string() || v.is_null(),
            "extra" => v.is_object(),
            _ => {
                let shown = name.len() <= 32
                    && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                return Some(match shown {
                    true => format!("unknown field `{name}`"),
                    false => "a field with an unexpected name".into(),
                });
            }
        };
        if !ok {
            let want = match name.as_str() {
                "access_token" | "refresh_token" => "a string",
                "extra" => "an object",
                _ => "a whole number",
            };
            return Some(format!("field `{name}` is not {want}"));
        }
    }
    None
}

/// Written before a refresh token is spent, so that every other instance, and a
/// start after a crash, knows a refresh was under way: the refresh token of
/// `generation` (by its hash) was about to be presented by `owner`. Stale once the
/// record's generation is past it. With `refused`, the provider refused that refresh
/// token: nobody presents it again.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Intent {
    /// The writing process's random id: only it removes its intent.
    #[serde(default)]
    pub owner: String,
    pub generation: u64,
    /// SHA-256 of the refresh token, hex: enough to recognise it, useless to spend.
    pub refresh_token_sha256: String,
    /// When it was written, on the store's clock (set by the store).
    pub at_ms: u64,
    #[serde(default)]
    pub refused: bool,
}

impl Intent {
    /// Whether `other` is this intent as written (the compare of a compare-and-set;
    /// the time is the store's and is not compared).
    pub fn same(&self, other: &Intent) -> bool {
        self.owner == other.owner
            && self.generation == other.generation
            && self.refresh_token_sha256 == other.refresh_token_sha256
            && self.refused == other.refused
    }
}

/// A token's intent as read, with the store's clock at the reading, so that its
/// age is measured on one clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IntentRead {
    pub intent: Option<Intent>,
    pub now_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {problem}\n  fix: {fix}")]
    Unsafe {
        path: PathBuf,
        problem: String,
        fix: String,
    },
    #[error(
        "{path}: the store did not answer within {}s ({op}); is the disk or network file system hung?",
        .after.as_secs()
    )]
    Timeout {
        path: PathBuf,
        op: &'static str,
        after: std::time::Duration,
    },
    #[error("database ({op}): {detail}")]
    Database { op: &'static str, detail: String },
    #[error("database schema: {0}")]
    Schema(String),
    #[error("encryption at rest: {0}")]
    Encryption(String),
    #[error(
        "the store holds generation {stored} of token `{token}`, not {seen}: another process refreshed it meanwhile"
    )]
    Fenced {
        token: String,
        seen: u64,
        stored: u64,
    },
    #[error("the store's lock on token `{token}` is no longer this process's (its lease ended)")]
    LeaseLost { token: String },
    #[error(
        "{path}: another process held the lock for more than {}s; it may be hung refreshing the token",
        .waited.as_secs()
    )]
    LockTimeout {
        path: PathBuf,
        waited: std::time::Duration,
    },
    #[error(
        "{path} is not a valid token record ({detail}); move it aside and run `tokenproxy seed {token}` to store a refresh token again"
    )]
    Corrupt {
        path: PathBuf,
        token: String,
        detail: String,
    },
}

impl StoreError {
    /// A broken record needs a person: retrying cannot help, and guessing could spend
    /// a rotated refresh token twice.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            StoreError::Corrupt { .. }
                | StoreError::Unsafe { .. }
                | StoreError::Schema(_)
                | StoreError::Encryption(_)
        )
    }
}

/// A token's lock, held: the record is read and written through it. On a shared
/// store the lock is a lease that ends with its holder (or when it is not renewed),
/// so a write is fenced by the generation the holder saw. Release it with
/// [`Held::release`]; dropping it releases it too, as soon as the runtime runs the
/// release (not at all if the process exits first).
#[async_trait::async_trait]
pub trait Held: Send {
    /// The record as stored now, read under the lock.
    async fn load(&mut self) -> Result<Option<StoredToken>, StoreError>;
    /// Writes `record` durably (durable when it returns `Ok`). With `seen`, only if
    /// the stored generation is still `seen` (0: no record); otherwise
    /// [`StoreError::Fenced`]: another process refreshed meanwhile. `None` replaces
    /// whatever is there (`seed` and `login`, a person's deliberate act). A shared
    /// store's lock ends with a successful write.
    async fn save(&mut self, record: &StoredToken, seen: Option<u64>) -> Result<(), StoreError>;
    /// Extends the lease now and says until when, on this process's monotonic
    /// clock, it surely lasts (measured from before the store was asked). `None`:
    /// a lock that lasts as long as its holder (the file store's `flock`).
    /// [`StoreError::LeaseLost`] when the lock is no longer this holder's.
    async fn renew(&mut self) -> Result<Option<tokio::time::Instant>, StoreError>;
    /// Releases the lock and waits until the store has let go of it.
    async fn release(self: Box<Self>);
}

/// Says once, in the log, that a lock on a shared store ended before its holder
/// let go: the holder was paused (or cut off) longer than the lease, and another
/// instance may have taken the lock meanwhile.
#[derive(Clone)]
struct Lapsed {
    token: std::sync::Arc<str>,
    said: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Lapsed {
    fn new(token: &str) -> Lapsed {
        Lapsed {
            token: token.into(),
            said: Default::default(),
        }
    }

    fn report(&self) {
        if !self.said.swap(true, std::sync::atomic::Ordering::SeqCst) {
            tracing::warn!(
                token = &*self.token,
                "the store's lock on this token ended before this process let go of it (was it paused longer than store.lease?); what this refresh obtained is stored only if no other instance refreshed meanwhile"
            );
        }
    }
}

#[async_trait::async_trait]
pub trait TokenStore: Send + Sync {
    /// `file`, `postgres` or `redis`, for status output.
    fn kind(&self) -> &'static str;
    /// The record as stored now, without the lock (to pick up others' writes).
    async fn load(&self, token: &str) -> Result<Option<StoredToken>, StoreError>;
    /// Waits until no other process holds the lock for `token`, at most `wait`.
    async fn lock(
        &self,
        token: &str,
        wait: std::time::Duration,
    ) -> Result<Box<dyn Held>, StoreError>;
    /// Writes `record` if the stored generation is still `seen` (0: no record),
    /// without the lock: the generation guards writes, the lease guards token
    /// requests. For a holder whose lease ended, or a record kept in memory while
    /// the store could not be reached. Durable when it returns `Ok`;
    /// [`StoreError::Fenced`] when the store moved on. Must not be called while this
    /// process holds the token's lock.
    async fn write(&self, token: &str, record: &StoredToken, seen: u64) -> Result<(), StoreError>;
    /// The token's intent, if any, and the store's clock now.
    async fn load_intent(&self, token: &str) -> Result<IntentRead, StoreError>;
    /// Compare-and-set of the token's intent: replaces what is stored by `new`
    /// (`None`: removes it) only if what is stored is `expected` ([`Intent::same`];
    /// `None`: nothing). The store sets `at_ms` to its own clock. `Ok(false)` when
    /// what is stored is something else. Durable when it returns `Ok(true)`.
    async fn swap_intent(
        &self,
        token: &str,
        expected: Option<&Intent>,
        new: Option<&Intent>,
    ) -> Result<bool, StoreError>;
    /// How long a lock lasts without renewal; `None` when it lasts as long as its
    /// holder.
    fn lease(&self) -> Option<std::time::Duration> {
        None
    }
    /// Names of tokens another process stored a new record for, as they are
    /// written (`*`: anything may have changed, after a reconnection). `None` for a
    /// store that cannot tell; instances then see new records at their next refresh.
    fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<String>> {
        None
    }
}
