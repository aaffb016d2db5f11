//! A store in memory, for the refresh protocol's tests: one shared state, seen by
//! several "instances" (handles with a name each), a lease on tokio's clock (so
//! paused time drives it), and a gate before every operation of every instance,
//! so that a test can freeze an instance at any step, take the store down, or make
//! it forget. Its lock behaves as PostgreSQL's: a write through a lock whose lease
//! ended fails (the session is gone). Nothing renews a lease by itself: a held
//! instance is a frozen one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

use super::{Held, Intent, IntentRead, StoreError, StoredToken, TokenStore};

/// A point an instance stops at until the test lets it go.
pub struct Gate {
    arrived: Notify,
    here: std::sync::atomic::AtomicBool,
    open: Semaphore,
}

impl Default for Gate {
    fn default() -> Gate {
        Gate {
            arrived: Notify::new(),
            here: Default::default(),
            open: Semaphore::new(0),
        }
    }
}

impl Gate {
    /// Waits until the instance has reached the gate.
    pub async fn arrived(&self) {
        loop {
            let notified = self.arrived.notified();
            if self.here.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }

    /// Lets the instance go on.
    pub fn open(&self) {
        self.open.add_permits(1);
    }

    async fn pass(&self) {
        self.here.store(true, std::sync::atomic::Ordering::SeqCst);
        self.arrived.notify_waiters();
        let _ = self.open.acquire().await.map(|p| p.forget());
    }
}

/// Gates by (instance, step), each passed once.
#[derive(Default)]
pub struct Gates(Mutex<HashMap<(String, &'static str), Arc<Gate>>>);

impl Gates {
    pub fn hold(&self, who: &str, step: &'static str) -> Arc<Gate> {
        let gate = Arc::new(Gate::default());
        self.0
            .lock()
            .unwrap()
            .insert((who.to_owned(), step), Arc::clone(&gate));
        gate
    }

    pub async fn pass(&self, who: &str, step: &'static str) {
        let gate = self.0.lock().unwrap().remove(&(who.to_owned(), step));
        if let Some(gate) = gate {
            gate.pass().await;
        }
    }
}

#[derive(Default)]
pub struct State {
    pub record: Option<StoredToken>,
    pub intent: Option<Intent>,
    /// The lock: its holder's number and the end of its lease.
    lock: Option<(u64, Instant)>,
    next: u64,
    /// Every operation fails while the store is down.
    pub down: bool,
}

struct Shared {
    state: Mutex<State>,
    gates: Gates,
    lease: Duration,
    started: Instant,
}

/// One instance's handle on the shared memory store.
#[derive(Clone)]
pub struct MemoryStore {
    shared: Arc<Shared>,
    who: String,
}

impl MemoryStore {
    pub fn new(lease: Duration) -> MemoryStore {
        MemoryStore {
            shared: Arc::new(Shared {
                state: Mutex::default(),
                gates: Gates::default(),
                lease,
                started: Instant::now(),
            }),
            who: String::new(),
        }
    }

    /// The same store, as instance `who` sees it.
    pub fn instance(&self, who: &str) -> MemoryStore {
        MemoryStore {
            shared: Arc::clone(&self.shared),
            who: who.to_owned(),
        }
    }

    /// Stops instance `who` before its next `step` (`lock`, `load`, `save`,
    /// `renew`, `write`, `load_intent`, `swap_intent`).
    pub fn hold(&self, who: &str, step: &'static str) -> Arc<Gate> {
        self.shared.gates.hold(who, step)
    }

    pub fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().unwrap()
    }

    /// The store's clock, in Unix milliseconds (any epoch would do).
    fn now_ms(&self) -> u64 {
        1_800_000_000_000 + self.shared.started.elapsed().as_millis() as u64
    }

    async fn enter(
        &self,
        step: &'static str,
    ) -> Result<std::sync::MutexGuard<'_, State>, StoreError> {
        self.shared.gates.pass(&self.who, step).await;
        let state = self.state();
        if state.down {
            return Err(StoreError::Database {
                op: step,
                detail: "the store is down".into(),
            });
        }
        Ok(state)
    }
}

fn fenced(token: &str, seen: u64, state: &State) -> StoreError {
    StoreError::Fenced {
        token: token.to_owned(),
        seen,
        stored: state.record.as_ref().map_or(0, |r| r.generation),
    }
}

fn cas(
    state: &mut State,
    token: &str,
    record: &StoredToken,
    seen: Option<u64>,
) -> Result<(), StoreError> {
    let stored = state.record.as_ref().map_or(0, |r| r.generation);
    if seen.is_some_and(|s| s != stored) {
        return Err(fenced(token, seen.unwrap_or(0), state));
    }
    state.record = Some(record.clone());
    Ok(())
}

#[async_trait::async_trait]
impl TokenStore for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn load(&self, _token: &str) -> Result<Option<StoredToken>, StoreError> {
        Ok(self.enter("load").await?.record.clone())
    }

    async fn lock(&self, token: &str, wait: Duration) -> Result<Box<dyn Held>, StoreError> {
        let deadline = Instant::now() + wait;
        loop {
            {
                let mut state = self.enter("lock").await?;
                let now = Instant::now();
                if state.lock.is_none_or(|(_, until)| until <= now) {
                    state.next += 1;
                    let id = state.next;
                    state.lock = Some((id, now + self.shared.lease));
                    return Ok(Box::new(MemoryHeld {
                        store: self.clone(),
                        id,
                        token: token.to_owned(),
                    }));
                }
            }
            if Instant::now() >= deadline {
                return Err(StoreError::LockTimeout {
                    path: "memory".into(),
                    waited: wait,
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn write(&self, token: &str, record: &StoredToken, seen: u64) -> Result<(), StoreError> {
        let mut state = self.enter("write").await?;
        cas(&mut state, token, record, Some(seen))
    }

    async fn load_intent(&self, _token: &str) -> Result<IntentRead, StoreError> {
        let state = self.enter("load_intent").await?;
        Ok(IntentRead {
            intent: state.intent.clone(),
            now_ms: self.now_ms(),
        })
    }

    async fn swap_intent(
        &self,
        _token: &str,
        expected: Option<&Intent>,
        new: Option<&Intent>,
    ) -> Result<bool, StoreError> {
        let now_ms = self.now_ms();
        let mut state = self.enter("swap_intent").await?;
        let matches = match (&state.intent, expected) {
            (None, None) => true,
            (Some(s), Some(e)) => s.same(e),
            _ => false,
        };
        if matches {
            state.intent = new.map(|n| Intent {
                at_ms: now_ms,
                ..n.clone()
            });
        }
        Ok(matches)
    }

    fn lease(&self) -> Option<Duration> {
        Some(self.shared.lease)
    }
}

struct MemoryHeld {
    store: MemoryStore,
    id: u64,
    token: String,
}

impl MemoryHeld {
    fn ours(&self, state: &State) -> bool {
        state
            .lock
            .is_some_and(|(id, until)| id == self.id && until > Instant::now())
    }
}

#[async_trait::async_trait]
impl Held for MemoryHeld {
    async fn load(&mut self) -> Result<Option<StoredToken>, StoreError> {
        Ok(self.store.enter("load").await?.record.clone())
    }

    async fn save(&mut self, record: &StoredToken, seen: Option<u64>) -> Result<(), StoreError> {
        let mut state = self.store.enter("save").await?;
        if !self.ours(&state) {
            return Err(StoreError::Database {
                op: "write",
                detail: "the locking session ended".into(),
            });
        }
        cas(&mut state, &self.token, record, seen)?;
        state.lock = None;
        Ok(())
    }

    async fn renew(&mut self) -> Result<Option<Instant>, StoreError> {
        let asked = Instant::now();
        let mut state = self.store.enter("renew").await?;
        if !self.ours(&state) {
            return Err(StoreError::LeaseLost {
                token: self.token.clone(),
            });
        }
        let until = asked + self.store.shared.lease;
        state.lock = Some((self.id, until));
        Ok(Some(until))
    }

    async fn release(self: Box<Self>) {
        let mut state = self.store.state();
        if state.lock.is_some_and(|(id, _)| id == self.id) {
            state.lock = None;
        }
    }
}
