//! The refresh protocol under every interleaving that production faults make, in
//! process and under paused time: two or three instances on one store in memory,
//! a provider that revokes the whole grant when a spent refresh token comes back
//! (its reuse count is the oracle), and a gate before every step of every
//! instance — a gate held is a frozen instance.
//!
//! Length: one test per fault the protocol must survive, with the fake store and
//! endpoint they share.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::time::{Instant, advance};

use super::*;
use crate::clock::time_to_ms;
use crate::config::InDoubt;
use crate::metrics::Metrics;
use crate::secret::Secret;
use crate::store::memory::{Gate, Gates};
use crate::store::{MemoryStore, RECORD_VERSION, StoredToken};
use crate::token::record::persist;
use crate::token::response::{GrantError, TokenResponse};

const LEASE: Duration = Duration::from_secs(15);
const TIMEOUT: Duration = Duration::from_secs(3);

/// A strict provider: every refresh rotates, and a spent refresh token presented
/// again revokes the grant (RFC 9700 §4.14.2).
#[derive(Default)]
struct Provider {
    state: Mutex<Grant>,
    /// `before`: the request is on its way (not yet processed); `after`: the
    /// provider rotated and the answer is on its way back.
    gates: Gates,
}

#[derive(Default)]
struct Grant {
    current: String,
    spent: HashSet<String>,
    revoked: bool,
    reuse: u64,
    requests: u64,
    issued: u64,
}

impl Provider {
    fn new() -> Arc<Provider> {
        let p = Provider::default();
        p.state.lock().unwrap().current = "rt-1".into();
        Arc::new(p)
    }

    fn grant(&self) -> std::sync::MutexGuard<'_, Grant> {
        self.state.lock().unwrap()
    }

    fn process(&self, rt: &str) -> Result<TokenResponse, GrantError> {
        let mut g = self.grant();
        g.requests += 1;
        let refused = || GrantError::Terminal {
            code: "invalid_grant".into(),
            description: None,
        };
        if g.spent.contains(rt) {
            g.reuse += 1;
            g.revoked = true;
            return Err(refused());
        }
        if g.revoked || rt != g.current {
            return Err(refused());
        }
        g.issued += 1;
        let next = format!("rt-{}", g.issued + 1);
        g.spent.insert(rt.to_owned());
        g.current = next.clone();
        Ok(TokenResponse {
            access_token: Secret::new(format!("at-{}", g.issued)),
            refresh_token: Some(Secret::new(next)),
            lifetime: Some(Duration::from_secs(600)),
            unusable_lifetime: None,
            extra: Default::default(),
        })
    }
}

struct Endpoint {
    provider: Arc<Provider>,
    who: &'static str,
}

#[async_trait::async_trait]
impl super::Endpoint for Endpoint {
    async fn exchange(
        &self,
        refresh_token: Option<&Secret>,
        until: Instant,
    ) -> Result<TokenResponse, GrantError> {
        let rt = refresh_token
            .map(|r| r.expose().to_owned())
            .unwrap_or_default();
        let answer = async {
            self.provider.gates.pass(self.who, "before").await;
            let r = self.provider.process(&rt);
            self.provider.gates.pass(self.who, "after").await;
            r
        };
        listen(until, answer)
            .await
            .unwrap_or_else(|| Err(GrantError::Transport("timed out".into())))
    }
}

/// One instance: its view of the store, its endpoint, what it holds.
struct Instance {
    who: &'static str,
    store: MemoryStore,
    endpoint: Endpoint,
    rules: Rules,
    watch: Watch,
    metrics: Metrics,
}

impl Instance {
    fn new(who: &'static str, store: &MemoryStore, provider: &Arc<Provider>) -> Arc<Instance> {
        Instance::with(who, store, provider, InDoubt::Retry)
    }

    fn with(
        who: &'static str,
        store: &MemoryStore,
        provider: &Arc<Provider>,
        in_doubt: InDoubt,
    ) -> Arc<Instance> {
        Arc::new(Instance {
            who,
            store: store.instance(who),
            endpoint: Endpoint {
                provider: Arc::clone(provider),
                who,
            },
            rules: Rules {
                timeout: TIMEOUT,
                grace: LEASE,
                in_doubt,
                lock_wait: TIMEOUT + Duration::from_secs(15),
                default_lifetime: Duration::from_secs(600),
            },
            watch: Watch::default(),
            metrics: Metrics::new(),
        })
    }

    async fn refresh(&self) -> Result<Outcome, RefreshError> {
        let usable = |s: &StoredToken| s.expires_at_ms > time_to_ms(SystemTime::now());
        Refresh {
            name: "t",
            owner: self.who,
            store: &self.store,
            endpoint: &self.endpoint,
            rules: &self.rules,
            watch: &self.watch,
            metrics: &self.metrics,
        }
        .run(Start {
            current: None,
            force: false,
            rotating: true,
            initial: None,
            usable: &usable,
        })
        .await
    }

    fn spawn(self: &Arc<Self>) -> tokio::task::JoinHandle<Result<Outcome, RefreshError>> {
        let me = Arc::clone(self);
        tokio::spawn(async move { me.refresh().await })
    }

    fn counted(&self, metric: &str) -> String {
        let text = self.metrics.render([]);
        text.lines()
            .filter(|l| l.starts_with(metric))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A store holding generation 1 with refresh token `rt-1` and an expired access
/// token, and the provider that issued it.
fn world() -> (MemoryStore, Arc<Provider>) {
    let store = MemoryStore::new(LEASE);
    store.state().record = Some(StoredToken {
        version: RECORD_VERSION,
        generation: 1,
        access_token: Some(Secret::new("at-0")),
        refresh_token: Some(Secret::new("rt-1")),
        issued_at_ms: 0,
        expires_at_ms: 0,
        extra: Default::default(),
    });
    (store, Provider::new())
}

/// The chain is whole: nothing reused, and the store holds the provider's
/// current refresh token.
fn assert_chain_whole(store: &MemoryStore, provider: &Provider) {
    let g = provider.grant();
    assert_eq!(g.reuse, 0, "a refresh token was presented twice");
    assert!(!g.revoked, "the grant was revoked");
    let stored = store.state().record.clone().unwrap();
    assert_eq!(
        stored.refresh_token.as_ref().map(Secret::expose),
        Some(g.current.as_str()),
        "the store does not hold the provider's current refresh token"
    );
}

/// Waits until an instance reaches `gate` (failing, not hanging, if it never does:
/// paused time runs ahead when nothing else can).
async fn at(gate: &Arc<Gate>) {
    tokio::time::timeout(Duration::from_secs(3600), gate.arrived())
        .await
        .expect("the instance never reached the gate");
}

fn refreshed(o: &Outcome) -> bool {
    matches!(o, Outcome::Refreshed { .. })
}

/// A holder frozen after announcing, before its lease check, past its lease:
/// another instance finds the intent and waits; the frozen one wakes, finds its
/// lease gone and abandons without sending; the other refreshes.
#[tokio::test(start_paused = true)]
async fn a_holder_frozen_before_sending_spends_nothing() {
    let (store, provider) = world();
    let (a, b) = (
        Instance::new("a", &store, &provider),
        Instance::new("b", &store, &provider),
    );
    let frozen = store.hold("a", "renew");
    let a_run = a.spawn();
    at(&frozen).await;
    advance(LEASE + Duration::from_secs(5)).await;
    // B takes the lapsed lock, sees A's intent, and does not present rt-1.
    let waiting = b.refresh().await.unwrap();
    assert!(matches!(waiting, Outcome::Waiting { .. }), "{waiting:?}");
    assert_eq!(provider.grant().requests, 0);
    frozen.open();
    assert!(matches!(a_run.await.unwrap(), Err(RefreshError::LeaseLost)));
    assert!(
        a.counted("tokenproxy_lease_lost_total")
            .contains("phase=\"before_send\",token=\"t\"} 1")
    );
    assert!(store.state().intent.is_none(), "A removed its own intent");
    assert!(refreshed(&b.refresh().await.unwrap()));
    assert_eq!(provider.grant().requests, 1);
    assert_chain_whole(&store, &provider);
}

/// Frozen while writing its intent: the write lands after another instance has
/// refreshed and cleared its own; the woken holder still checks its lease first.
#[tokio::test(start_paused = true)]
async fn a_holder_frozen_while_announcing_spends_nothing() {
    let (store, provider) = world();
    let (a, b) = (
        Instance::new("a", &store, &provider),
        Instance::new("b", &store, &provider),
    );
    let frozen = store.hold("a", "swap_intent");
    let a_run = a.spawn();
    at(&frozen).await;
    advance(LEASE + Duration::from_secs(1)).await;
    assert!(refreshed(&b.refresh().await.unwrap()));
    frozen.open();
    let a_result = a_run.await.unwrap();
    // A's lease ended: whatever it found, it sent nothing.
    assert!(
        a_result.is_err() || matches!(a_result, Ok(Outcome::Adopted(_))),
        "{a_result:?}"
    );
    assert_eq!(provider.grant().requests, 1);
    assert_chain_whole(&store, &provider);
}

/// Three instances: the holder frozen before sending for longer than the lease;
/// both others wait on its intent, not on each other's guesses; one refresh.
#[tokio::test(start_paused = true)]
async fn three_instances_wait_on_a_frozen_holder() {
    let (store, provider) = world();
    let a = Instance::new("a", &store, &provider);
    let (b, c) = (
        Instance::new("b", &store, &provider),
        Instance::new("c", &store, &provider),
    );
    let frozen = store.hold("a", "renew");
    let a_run = a.spawn();
    at(&frozen).await;
    advance(LEASE + Duration::from_secs(1)).await;
    for other in [&b, &c] {
        assert!(matches!(
            other.refresh().await.unwrap(),
            Outcome::Waiting { .. }
        ));
    }
    frozen.open();
    assert!(a_run.await.unwrap().is_err());
    assert!(refreshed(&b.refresh().await.unwrap()));
    assert!(matches!(c.refresh().await.unwrap(), Outcome::Adopted(_)));
    assert!(matches!(a.refresh().await.unwrap(), Outcome::Adopted(_)));
    assert_eq!(provider.grant().requests, 1);
    assert_chain_whole(&store, &provider);
}

/// The provider rotated, and its answer comes after the request's timeout but
/// inside the lease (the holder was frozen 7 s against a 3 s timeout): the holder
/// keeps reading, stores the answer, and counts a late answer; the waiting
/// instance adopts it.
#[tokio::test(start_paused = true)]
async fn an_answer_later_than_the_timeout_is_kept() {
    let (store, provider) = world();
    let (a, b) = (
        Instance::new("a", &store, &provider),
        Instance::new("b", &store, &provider),
    );
    let late = provider.gates.hold("a", "after");
    let a_run = a.spawn();
    at(&late).await;
    let b_run = b.spawn();
    advance(TIMEOUT + Duration::from_secs(4)).await;
    late.open();
    let a_out = a_run.await.unwrap().unwrap();
    assert!(
        matches!(
            a_out,
            Outcome::Refreshed {
                stored: Stored::Yes,
                ..
            }
        ),
        "{a_out:?}"
    );
    assert!(
        a.counted("tokenproxy_refresh_in_doubt_total")
            .contains("resolution=\"late_answer\",token=\"t\"} 1")
    );
    assert!(matches!(b_run.await.unwrap().unwrap(), Outcome::Adopted(_)));
    assert_eq!(provider.grant().requests, 1);
    assert_chain_whole(&store, &provider);
}

/// The answer comes after the lease ended (a freeze between the two): the
/// holder writes it by compare-and-set without the lease, since nobody moved the
/// generation — the other instance was held off by the intent.
#[tokio::test(start_paused = true)]
async fn an_answer_after_the_lease_is_written_without_it() {
    let (store, provider) = world();
    let (a, b) = (
        Instance::new("a", &store, &provider),
        Instance::new("b", &store, &provider),
    );
    let late = provider.gates.hold("a", "after");
    let a_run = a.spawn();
    at(&late).await;
    advance(LEASE - Duration::from_secs(1)).await;
    // The lease ran out; B takes the lock and finds A's refresh in doubt.
    advance(Duration::from_secs(2)).await;
    assert!(matches!(
        b.refresh().await.unwrap(),
        Outcome::Waiting { .. }
    ));
    late.open();
    let a_out = a_run.await.unwrap().unwrap();
    assert!(
        matches!(
            a_out,
            Outcome::Refreshed {
                stored: Stored::WithoutLease,
                ..
            }
        ),
        "{a_out:?}"
    );
    assert!(
        a.counted("tokenproxy_lease_lost_total")
            .contains("phase=\"in_flight\",token=\"t\"} 1")
    );
    assert!(matches!(b.refresh().await.unwrap(), Outcome::Adopted(_)));
    assert_eq!(provider.grant().requests, 1);
    assert_chain_whole(&store, &provider);
}

/// The store restarts while the token request is out: the holder keeps the new
/// tokens in memory; when the store is back, another instance finds the intent
/// (which outlived the outage, older than the grace by the store's clock) and
/// waits; the holder writes its result, and the other adopts it.
#[tokio::test(start_paused = true)]
async fn a_store_restart_during_a_refresh_loses_nothing() {
    let (store, provider) = world();
    let (a, b) = (
        Instance::new("a", &store, &provider),
        Instance::new("b", &store, &provider),
    );
    let late = provider.gates.hold("a", "after");
    let a_run = a.spawn();
    at(&late).await;
    store.state().down = true;
    late.open();
    let Outcome::Refreshed {
        record,
        stored: Stored::No { seen, intent },
        ..
    } = a_run.await.unwrap().unwrap()
    else {
        panic!("the new tokens are kept in memory");
    };
    // Down for longer than the grace; it comes back without its lock.
    advance(LEASE * 2).await;
    store.state().down = false;
    assert!(matches!(
        b.refresh().await.unwrap(),
        Outcome::Waiting { .. }
    ));
    advance(Duration::from_secs(2)).await;
    assert!(matches!(
        b.refresh().await.unwrap(),
        Outcome::Waiting { .. }
    ));
    assert!(persist(&store, "t", &record, seen).await.unwrap().is_none());
    assert!(store.swap_intent("t", intent.as_ref(), None).await.unwrap());
    assert!(matches!(b.refresh().await.unwrap(), Outcome::Adopted(_)));
    assert_eq!(provider.grant().requests, 1);
    assert_chain_whole(&store, &provider);
}

/// A refusal is recorded with the refresh token's hash: the other instances go
/// to "needs login" without presenting the refused token again.
#[tokio::test(start_paused = true)]
async fn a_refusal_is_shared_and_the_token_presented_once() {
    let (store, provider) = world();
    provider.grant().revoked = true;
    let instances: Vec<_> = ["a", "b", "c"]
        .into_iter()
        .map(|w| Instance::new(w, &store, &provider))
        .collect();
    assert!(matches!(
        instances[0].refresh().await,
        Err(RefreshError::Grant(GrantError::Terminal { .. }))
    ));
    for i in &instances {
        assert!(matches!(i.refresh().await, Err(RefreshError::Refused)));
    }
    assert_eq!(provider.grant().requests, 1);
    let intent = store.state().intent.clone().unwrap();
    assert!(intent.refused && intent.owner == "a");
}

/// An instance whose lock lapsed before its intent write cannot remove or
/// overwrite the intent of the instance that refreshes meanwhile.
#[tokio::test(start_paused = true)]
async fn only_the_owner_removes_its_intent() {
    let (store, provider) = world();
    let (a, b) = (
        Instance::new("a", &store, &provider),
        Instance::new("b", &store, &provider),
    );
    let frozen = store.hold("a", "swap_intent");
    let a_run = a.spawn();
    at(&frozen).await;
    advance(LEASE + Duration::from_secs(1)).await;
    let b_answer = provider.gates.hold("b", "after");
    let b_run = b.spawn();
    at(&b_answer).await;
    frozen.open();
    assert!(matches!(a_run.await.unwrap(), Err(RefreshError::LeaseLost)));
    assert_eq!(
        store.state().intent.as_ref().map(|i| i.owner.clone()),
        Some("b".into())
    );
    b_answer.open();
    assert!(refreshed(&b_run.await.unwrap().unwrap()));
    assert!(store.state().intent.is_none());
    assert_eq!(provider.grant().requests, 1);
    assert_chain_whole(&store, &provider);
}

/// The one window no client can close: the provider rotated and the holder died
/// before reading the answer. The others wait out the grace; then `needs_login`
/// stops, and `retry` presents the token once (a strict provider revokes the
/// grant; one with a retry window carries on). Both are counted.
#[tokio::test(start_paused = true)]
async fn a_holder_that_died_after_the_provider_rotated() {
    for policy in [InDoubt::NeedsLogin, InDoubt::Retry] {
        let (store, provider) = world();
        let a = Instance::new("a", &store, &provider);
        let b = Instance::with("b", &store, &provider, policy);
        let answer = provider.gates.hold("a", "after");
        let a_run = a.spawn();
        at(&answer).await;
        a_run.abort(); // killed with the answer on its way
        let _ = a_run.await;
        assert!(matches!(
            b.refresh().await.unwrap(),
            Outcome::Waiting { .. }
        ));
        advance(LEASE + Duration::from_secs(1)).await;
        let result = b.refresh().await;
        match policy {
            InDoubt::NeedsLogin => {
                assert!(matches!(result, Err(RefreshError::InDoubt)), "{result:?}");
                assert!(
                    b.counted("tokenproxy_refresh_in_doubt_total")
                        .contains("resolution=\"needs_login\",token=\"t\"} 1")
                );
                assert_eq!(provider.grant().requests, 1);
            }
            InDoubt::Retry => {
                assert!(result.is_err(), "{result:?}");
                assert!(
                    b.counted("tokenproxy_refresh_in_doubt_total")
                        .contains("resolution=\"retried\",token=\"t\"} 1")
                );
                assert_eq!(provider.grant().reuse, 1);
            }
        }
    }
}

/// A killed holder whose request never reached the provider: after the grace the
/// token is presented once and the chain goes on.
#[tokio::test(start_paused = true)]
async fn a_holder_killed_before_the_provider_answered_is_retried_once() {
    let (store, provider) = world();
    let (a, b) = (
        Instance::new("a", &store, &provider),
        Instance::new("b", &store, &provider),
    );
    let sending = provider.gates.hold("a", "before");
    let a_run = a.spawn();
    at(&sending).await;
    a_run.abort();
    let _ = a_run.await;
    assert!(matches!(
        b.refresh().await.unwrap(),
        Outcome::Waiting { .. }
    ));
    advance(LEASE + Duration::from_secs(1)).await;
    assert!(refreshed(&b.refresh().await.unwrap()));
    assert_eq!(provider.grant().requests, 1);
    assert_chain_whole(&store, &provider);
}

/// `persist` writes a record again over a store that lost it (a Redis restart
/// without persistence), and says so only once the store reads it back.
#[tokio::test(start_paused = true)]
async fn persist_writes_again_what_the_store_lost() {
    let (store, _) = world();
    let mut record = store.state().record.clone().unwrap();
    record.generation = 2;
    record.refresh_token = Some(Secret::new("rt-2"));
    store.state().record = None;
    assert!(persist(&store, "t", &record, 1).await.unwrap().is_none());
    assert_eq!(store.state().record.as_ref().unwrap().generation, 2);
    // Another instance's newer record wins.
    let mut newer = record.clone();
    newer.generation = 3;
    newer.refresh_token = Some(Secret::new("rt-3"));
    store.state().record = Some(newer);
    let adopted = persist(&store, "t", &record, 1).await.unwrap().unwrap();
    assert_eq!(adopted.generation, 3);
}

/// `listen` takes an answer that is ready when the deadline passes, and waits a
/// moment for one after a late wake-up.
#[tokio::test(start_paused = true)]
async fn listen_never_throws_away_an_answer_at_the_deadline() {
    let until = Instant::now() + Duration::from_secs(1);
    assert_eq!(listen(until, async { 7 }).await, Some(7));
    let slow = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        8
    };
    assert_eq!(
        listen(Instant::now() + Duration::from_secs(1), slow).await,
        None
    );
    // Woken after the deadline (a freeze): an answer arriving right after counts.
    let until = Instant::now() + Duration::from_secs(1);
    advance(Duration::from_secs(5)).await;
    let soon = async {
        tokio::task::yield_now().await;
        9
    };
    assert_eq!(listen(until, soon).await, Some(9));
}
