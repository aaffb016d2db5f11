//! When to refresh: one task per token that sleeps until the next thing to do.
//!
//! The plan is a pure function of the token's configuration and state: refresh at
//! `expiry - margin - jitter`, where the margin is `refresh_before` but at most half
//! the token's lifetime (so short-lived tokens are not refreshed in a loop), and
//! never sooner than `min_interval` after the token was issued (Exact Online refuses
//! earlier refreshes). After a failure it waits for the backoff (and still for
//! `min_interval` while the token serves); after a terminal
//! failure it looks in the store, every few seconds, for a token a person provided.
//! The task itself never cancels a refresh: shutdown is only observed while sleeping.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use super::{TokenSource, TokenState, Trigger};
use crate::clock::ms_to_time;
use crate::config::TokenConfig;

/// Pause before writing again a record the store refused.
const PERSIST_RETRY: Duration = Duration::from_secs(2);
/// How often a token that needs a person looks for a newly stored one.
const RELOAD_POLL: Duration = Duration::from_secs(2);
/// Proactive refreshes are at least this far apart, whatever a provider says.
const MIN_SPACING: Duration = Duration::from_secs(1);

#[derive(Debug, PartialEq)]
enum Action {
    Refresh(Trigger),
    Persist,
    /// Look in the store for a token a person provided.
    Reload,
}

/// Runs until `shutdown` is cancelled. With `renew`, a token whose settings a
/// reload changed: after taking what the store holds (which keeps serving), it
/// asks for a token made with the new settings at once.
pub async fn run(source: Arc<TokenSource>, shutdown: CancellationToken, renew: bool) {
    let mut changes = source.store_changes();
    let _ = source.refresh(0, Trigger::Startup).await;
    if renew {
        let generation = source.current().generation();
        let _ = source.refresh(generation, Trigger::Manual).await;
    }
    loop {
        let state = source.current().clone();
        let (delay, action) = plan(&source.config, &state, SystemTime::now());
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = source.changed.notified() => continue,
            changed = next_change(&mut changes) => {
                // Another instance stored a new record (or, after a reconnection,
                // may have): adopt it now rather than at this instance's refresh time.
                if changed.is_none_or(|name| name == "*" || name == source.name()) {
                    source.pick_up().await;
                }
                continue;
            }
            _ = tokio::time::sleep(delay) => {}
        }
        match action {
            Action::Refresh(trigger) => {
                let _ = source.refresh(state.generation(), trigger).await;
            }
            Action::Persist => source.persist_again().await,
            Action::Reload => source.reload().await,
        }
    }
}

/// The next change the store announces: `Some(name)`, or `None` when some were
/// missed (look at everything). Never resolves for a store that cannot tell.
async fn next_change(
    changes: &mut Option<tokio::sync::broadcast::Receiver<String>>,
) -> Option<String> {
    use tokio::sync::broadcast::error::RecvError;
    let Some(rx) = changes else {
        return std::future::pending().await;
    };
    match rx.recv().await {
        Ok(name) => Some(name),
        Err(RecvError::Lagged(_)) => None,
        Err(RecvError::Closed) => {
            *changes = None;
            std::future::pending().await
        }
    }
}

/// How long to wait, and what to do then.
fn plan(cfg: &TokenConfig, state: &TokenState, now: SystemTime) -> (Duration, Action) {
    if state.unsaved {
        return (PERSIST_RETRY, Action::Persist);
    }
    let trigger = if state.record.is_some() {
        Trigger::Proactive
    } else {
        Trigger::Startup
    };
    if let Some(f) = &state.failure {
        if f.terminal {
            return (RELOAD_POLL, Action::Reload);
        }
        let wait = state
            .next_attempt(cfg.min_interval)
            .map_or(Duration::ZERO, |at| {
                at.saturating_duration_since(std::time::Instant::now())
            });
        return (wait, Action::Refresh(trigger));
    }
    let Some(rec) = state
        .record
        .as_ref()
        .filter(|_| state.valid_for(Duration::ZERO))
    else {
        return (Duration::ZERO, Action::Refresh(trigger));
    };
    let issued = ms_to_time(rec.issued_at_ms);
    let expires = ms_to_time(rec.expires_at_ms);
    let lifetime = expires.duration_since(issued).unwrap_or_default();
    let margin = cfg.refresh_before.min(lifetime / 2);
    let jitter = (margin / 5).mul_f64(fastrand::f64());
    let due = (expires - margin - jitter).max(issued + cfg.min_interval.max(MIN_SPACING));
    let wait = due.duration_since(now).unwrap_or_default();
    (wait, Action::Refresh(Trigger::Proactive))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::time_to_ms;
    use crate::config::Config;
    use crate::store::{RECORD_VERSION, StoredToken};

    /// Now, at the millisecond precision that records keep.
    fn now() -> SystemTime {
        ms_to_time(time_to_ms(SystemTime::now()))
    }

    fn config(extra: &str) -> TokenConfig {
        let text = format!(
            r#"
            [tokens.t]
            grant = "client_credentials"
            token_url = "https://id.example.com/token"
            client_id = "id"
            client_secret = "s"
            {extra}
            [[routes]]
            prefix = "/t/"
            upstream = "https://api.example.com/"
            token = "t"
            "#
        );
        Config::parse(&text, "test.toml".as_ref())
            .unwrap()
            .tokens
            .remove(0)
    }

    fn state(issued: SystemTime, lifetime: Duration) -> TokenState {
        TokenState {
            record: Some(StoredToken {
                version: RECORD_VERSION,
                generation: 1,
                access_token: Some(crate::secret::Secret::new("a")),
                refresh_token: None,
                issued_at_ms: time_to_ms(issued),
                expires_at_ms: time_to_ms(issued + lifetime),
                extra: Default::default(),
            }),
            credentials: vec![crate::config::Credential::Query("a=b".into())],
            valid_until: Some(super::super::system_to_instant(issued + lifetime)),
            ..TokenState::default()
        }
    }

    #[test]
    fn refreshes_before_expiry_within_the_margin() {
        let cfg = config(r#"refresh_before = "30s""#);
        let now = now();
        for _ in 0..100 {
            let (wait, action) = plan(&cfg, &state(now, Duration::from_secs(600)), now);
            assert_eq!(action, Action::Refresh(Trigger::Proactive));
            assert!(
                wait <= Duration::from_secs(570) && wait >= Duration::from_secs(564),
                "{wait:?}"
            );
        }
    }

    #[test]
    fn short_lifetimes_use_half_the_lifetime_as_margin() {
        let cfg = config(r#"refresh_before = "60s""#);
        let now = now();
        let (wait, _) = plan(&cfg, &state(now, Duration::from_secs(4)), now);
        assert!(
            wait >= Duration::from_millis(1600) && wait <= Duration::from_secs(2),
            "{wait:?}"
        );
    }

    #[test]
    fn never_earlier_than_min_interval_after_issue() {
        // Exact Online: 600 s tokens, refresh refused before 570 s.
        let cfg = config(
            r#"refresh_before = "120s"
            min_interval = "570s""#,
        );
        let now = now();
        for _ in 0..100 {
            let (wait, _) = plan(&cfg, &state(now, Duration::from_secs(600)), now);
            assert_eq!(wait.as_secs(), 570);
        }
    }

    #[test]
    fn zero_lifetime_does_not_spin() {
        let cfg = config("");
        let now = now();
        let mut s = state(now, Duration::from_secs(0));
        s.valid_until = Some(std::time::Instant::now() + Duration::from_secs(5));
        let (wait, _) = plan(&cfg, &s, now);
        assert!(wait >= Duration::from_millis(999));
    }

    /// A refresh a person or a reload asked for failed soon after the token was
    /// issued: the retry waits for `min_interval` (the refresh would decline sooner,
    /// and the task would ask again at once, in a loop), or for the token's expiry
    /// when that comes first.
    #[test]
    fn a_failed_refresh_retries_no_sooner_than_min_interval() {
        let cfg = config(r#"min_interval = "60s""#);
        let now = now();
        let failed = |lifetime| TokenState {
            failure: Some(super::super::Failure {
                terminal: false,
                message: "temporarily_unavailable".into(),
                attempts: 1,
                retry_at: std::time::Instant::now() + Duration::from_secs(1),
                at: std::time::Instant::now(),
                cause: crate::error::Source::TokenEndpoint,
            }),
            ..state(now, lifetime)
        };
        // The bounds tell min_interval (60 s), the expiry (30 s) and the backoff
        // (1 s) apart, with room for a test thread that a busy machine stalls.
        let (wait, action) = plan(&cfg, &failed(Duration::from_secs(600)), now);
        assert_eq!(action, Action::Refresh(Trigger::Proactive));
        assert!(
            wait > Duration::from_secs(45) && wait <= Duration::from_secs(60),
            "{wait:?}"
        );
        let (wait, _) = plan(&cfg, &failed(Duration::from_secs(30)), now);
        assert!(
            wait > Duration::from_secs(15) && wait <= Duration::from_secs(30),
            "{wait:?}"
        );
        // Past min_interval, the backoff alone.
        let (wait, _) = plan(&config(""), &failed(Duration::from_secs(600)), now);
        assert!(wait <= Duration::from_secs(1), "{wait:?}");
    }

    #[test]
    fn terminal_failure_waits_for_a_person() {
        let cfg = config("");
        let s = TokenState {
            failure: Some(super::super::Failure {
                terminal: true,
                message: "invalid_grant".into(),
                attempts: 1,
                retry_at: std::time::Instant::now(),
                at: std::time::Instant::now(),
                cause: crate::error::Source::TokenEndpoint,
            }),
            ..TokenState::default()
        };
        assert_eq!(
            plan(&cfg, &s, SystemTime::now()),
            (RELOAD_POLL, Action::Reload)
        );
        let fresh = TokenState::default();
        assert_eq!(
            plan(&cfg, &fresh, SystemTime::now()),
            (Duration::ZERO, Action::Refresh(Trigger::Startup))
        );
    }
}
