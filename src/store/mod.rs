//! Where token state lives between restarts and between instances.
//!
//! A [`TokenStore`] keeps one [`StoredToken`] record per token name and offers a
//! per-token lock that spans processes: whoever refreshes a token holds the lock,
//! re-reads the record, and refreshes only if nobody did meanwhile. The store does
//! not decide anything about tokens; the token engine (`crate::token`) does.

mod file;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::secret::Secret;

pub use file::FileStore;

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

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
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
        matches!(self, StoreError::Corrupt { .. })
    }
}

/// Held while a token is being refreshed; dropping it releases the lock.
pub struct StoreLock {
    _guard: Box<dyn Send + Sync>,
}

#[async_trait::async_trait]
pub trait TokenStore: Send + Sync {
    /// `file`, `postgres` or `redis`, for status output.
    fn kind(&self) -> &'static str;
    async fn load(&self, token: &str) -> Result<Option<StoredToken>, StoreError>;
    /// Durable when it returns `Ok`.
    async fn save(&self, token: &str, record: &StoredToken) -> Result<(), StoreError>;
    /// Waits until no other process holds the lock for `token`.
    async fn lock(&self, token: &str) -> Result<StoreLock, StoreError>;
}
