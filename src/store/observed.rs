//! A store seen from outside: every operation counted by its result, and whether
//! the store answered last time, for `/status`, `/metrics` and the logs.
//!
//! It wraps any [`TokenStore`] and changes nothing about what the store does.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::{Held, Intent, IntentRead, StoreError, StoredToken, TokenStore};
use crate::metrics::Metrics;

/// Whether the store answered its last operation, and what failed last.
#[derive(Default)]
pub struct StoreHealth {
    state: Mutex<Health>,
}

#[derive(Default, Clone)]
struct Health {
    /// `None` until the first operation.
    up: Option<bool>,
    last_error: Option<(SystemTime, String)>,
}

impl StoreHealth {
    /// `(up, last error and when)`; `up` is true before anything failed.
    pub fn get(&self) -> (bool, Option<(SystemTime, String)>) {
        let h = self.state.lock().map(|h| h.clone()).unwrap_or_default();
        (h.up.unwrap_or(true), h.last_error)
    }
}

pub struct Observed {
    inner: Arc<dyn TokenStore>,
    metrics: Arc<Metrics>,
    health: Arc<StoreHealth>,
}

impl Observed {
    pub fn new(
        inner: Arc<dyn TokenStore>,
        metrics: Arc<Metrics>,
    ) -> (Arc<Observed>, Arc<StoreHealth>) {
        let health = Arc::new(StoreHealth::default());
        metrics.store_up(true);
        (
            Arc::new(Observed {
                inner,
                metrics,
                health: Arc::clone(&health),
            }),
            health,
        )
    }
}

/// Records one operation's outcome. A refused fence or a lock that another holder
/// kept is the store working as meant: it counts as reachable.
fn record<T>(
    metrics: &Metrics,
    health: &StoreHealth,
    op: &'static str,
    result: &Result<T, StoreError>,
) {
    let reachable = match result {
        Ok(_) => true,
        Err(e) => matches!(
            e,
            StoreError::Fenced { .. }
                | StoreError::LockTimeout { .. }
                | StoreError::LeaseLost { .. }
                | StoreError::Corrupt { .. }
        ),
    };
    metrics.store_operation(op, if result.is_ok() { "success" } else { "error" });
    let Ok(mut h) = health.state.lock() else {
        return;
    };
    if let Err(e) = result {
        h.last_error = Some((SystemTime::now(), e.to_string()));
    }
    let was = h.up.replace(reachable);
    if was != Some(reachable) {
        metrics.store_up(reachable);
        match (reachable, &h.last_error) {
            (false, Some((_, e))) => {
                tracing::error!(error = %e, "the token store cannot be reached; tokens in memory keep serving until they expire")
            }
            (true, _) if was == Some(false) => tracing::info!("the token store answers again"),
            _ => {}
        }
    }
}

#[async_trait::async_trait]
impl TokenStore for Observed {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    async fn load(&self, token: &str) -> Result<Option<StoredToken>, StoreError> {
        let r = self.inner.load(token).await;
        record(&self.metrics, &self.health, "load", &r);
        r
    }

    async fn lock(&self, token: &str, wait: Duration) -> Result<Box<dyn Held>, StoreError> {
        let r = self.inner.lock(token, wait).await;
        record(&self.metrics, &self.health, "lock", &r);
        Ok(Box::new(ObservedHeld {
            inner: r?,
            metrics: Arc::clone(&self.metrics),
            health: Arc::clone(&self.health),
        }))
    }

    async fn write(&self, token: &str, record_: &StoredToken, seen: u64) -> Result<(), StoreError> {
        let r = self.inner.write(token, record_, seen).await;
        record(&self.metrics, &self.health, "save", &r);
        r
    }

    async fn load_intent(&self, token: &str) -> Result<IntentRead, StoreError> {
        let r = self.inner.load_intent(token).await;
        record(&self.metrics, &self.health, "intent", &r);
        r
    }

    async fn swap_intent(
        &self,
        token: &str,
        expected: Option<&Intent>,
        new: Option<&Intent>,
    ) -> Result<bool, StoreError> {
        let r = self.inner.swap_intent(token, expected, new).await;
        record(&self.metrics, &self.health, "intent", &r);
        r
    }

    fn lease(&self) -> Option<Duration> {
        self.inner.lease()
    }

    fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<String>> {
        self.inner.changes()
    }
}

struct ObservedHeld {
    inner: Box<dyn Held>,
    metrics: Arc<Metrics>,
    health: Arc<StoreHealth>,
}

#[async_trait::async_trait]
impl Held for ObservedHeld {
    async fn load(&mut self) -> Result<Option<StoredToken>, StoreError> {
        let r = self.inner.load().await;
        record(&self.metrics, &self.health, "load", &r);
        r
    }

    async fn save(&mut self, record_: &StoredToken, seen: Option<u64>) -> Result<(), StoreError> {
        let r = self.inner.save(record_, seen).await;
        record(&self.metrics, &self.health, "save", &r);
        r
    }

    async fn renew(&mut self) -> Result<Option<tokio::time::Instant>, StoreError> {
        let r = self.inner.renew().await;
        record(&self.metrics, &self.health, "lock", &r);
        r
    }

    async fn release(self: Box<Self>) {
        self.inner.release().await
    }
}
