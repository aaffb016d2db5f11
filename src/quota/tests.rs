//! The governor under paused time: calls taken, requests held in line and
//! released in order, refusals when the wait is too long or the line too full.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode};
use tokio::time::Instant;

use super::*;

fn governor(limits: &[(u64, u64)], max_wait: u64, max_waiting: usize) -> Arc<Governor> {
    let metrics = Metrics::new();
    Governor::new(
        RateLimits {
            limits: limits
                .iter()
                .map(|&(count, secs)| crate::config::Limit {
                    count,
                    period: Duration::from_secs(secs),
                })
                .collect(),
            max_wait: Duration::from_secs(max_wait),
            max_waiting,
            key: crate::config::QuotaKey::Route,
        },
        &metrics,
        "r",
    )
}

fn exact(remaining: u64, reset_in: Duration) -> HeaderMap {
    let reset = SystemTime::now() + reset_in;
    let ms = reset
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let mut h = HeaderMap::new();
    h.insert("x-ratelimit-minutely-remaining", remaining.into());
    h.insert("x-ratelimit-minutely-limit", 60.into());
    h.insert(
        "x-ratelimit-minutely-reset",
        ms.to_string().parse().unwrap(),
    );
    h
}

#[tokio::test(start_paused = true)]
async fn a_static_limit_holds_the_next_request_until_its_window_starts_again() {
    let g = governor(&[(3, 10)], 30, 100);
    let start = Instant::now();
    let mut permits = Vec::new();
    for _ in 0..3 {
        permits.push(g.admit("").await.unwrap());
    }
    assert_eq!(start.elapsed(), Duration::ZERO);
    drop(permits);
    let fourth = g.admit("").await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(10));
    drop(fourth);
    // Each key has windows of its own.
    let other = Instant::now();
    for _ in 0..3 {
        let _ = g.admit("division-2").await.unwrap();
    }
    assert_eq!(other.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn waiters_are_released_in_arrival_order() {
    let g = governor(&[(1, 5)], 60, 100);
    let _first = g.admit("").await.unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..4 {
        let (g, order) = (Arc::clone(&g), Arc::clone(&order));
        tasks.push(tokio::spawn(async move {
            let _p = g.admit("").await.unwrap();
            order.lock().unwrap().push((i, Instant::now()));
        }));
        // Arrivals one after another.
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    let order = order.lock().unwrap();
    let ids: Vec<usize> = order.iter().map(|(i, _)| *i).collect();
    assert_eq!(ids, vec![0, 1, 2, 3]);
    // One per window: 5 s apart.
    for pair in order.windows(2) {
        assert!(pair[1].1 - pair[0].1 >= Duration::from_secs(5), "{pair:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_wait_longer_than_max_wait_and_a_full_line_are_refused_at_once() {
    let g = governor(&[(1, 3600)], 30, 100);
    let _p = g.admit("").await.unwrap();
    let start = Instant::now();
    let e = g.admit("").await.err().unwrap();
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert!(e.retry_after > Duration::from_secs(3500), "{e:?}");

    let g = governor(&[(1, 10)], 30, 2);
    let _p = g.admit("").await.unwrap();
    let waiting: Vec<_> = (0..2)
        .map(|_| {
            let g = Arc::clone(&g);
            tokio::spawn(async move { g.admit("").await.map(|_| ()) })
        })
        .collect();
    tokio::task::yield_now().await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert!(g.admit("").await.is_err(), "the line is full");
    for w in waiting {
        w.await.unwrap().unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn what_the_api_says_is_learned_and_held_to() {
    let g = governor(&[], 30, 100);
    // Nothing known: nothing held.
    let p = g.admit("").await.unwrap();
    assert_eq!(
        p.observe(StatusCode::OK, &exact(0, Duration::from_secs(7))),
        None
    );
    drop(p);
    let start = Instant::now();
    let p = g.admit("").await.unwrap();
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(6) && waited <= Duration::from_secs(8),
        "{waited:?}"
    );
    drop(p);
    let snapshot = g.snapshot();
    assert_eq!(snapshot.len(), 1, "{snapshot:?}");
    assert_eq!(snapshot[0].window, "1m");
}

#[tokio::test(start_paused = true)]
async fn answers_count_the_requests_still_in_flight() {
    let g = governor(&[], 30, 100);
    let first = g.admit("").await.unwrap();
    first.observe(StatusCode::OK, &exact(10, Duration::from_secs(60)));
    drop(first);
    // Eight in flight; the first sent comes back saying 9 left: the seven sent
    // after it may not have been counted yet.
    let mut flying: Vec<Permit> = Vec::new();
    for _ in 0..8 {
        flying.push(g.admit("").await.unwrap());
    }
    let answered = flying.remove(0);
    answered.observe(StatusCode::OK, &exact(9, Duration::from_secs(60)));
    drop(answered);
    // 9 less the 7 others still in flight: 2 left, not 9.
    let _a = g.admit("").await.unwrap();
    let _b = g.admit("").await.unwrap();
    let snapshot = g.snapshot();
    assert_eq!(snapshot[0].remaining, Some(0), "{snapshot:?}");
    // The window starts again in a minute, past max_wait: refused at once.
    assert!(g.admit("").await.is_err());
}

#[tokio::test(start_paused = true)]
async fn retry_after_on_a_429_holds_the_key_and_is_returned() {
    let g = governor(&[], 30, 100);
    let p = g.admit("").await.unwrap();
    let mut h = HeaderMap::new();
    h.insert(http::header::RETRY_AFTER, 12.into());
    let retry = p.observe(StatusCode::TOO_MANY_REQUESTS, &h).unwrap();
    assert!(retry <= Duration::from_secs(12) && retry >= Duration::from_secs(11));
    drop(p);
    let start = Instant::now();
    let _p = g.admit("").await.unwrap();
    assert!(
        start.elapsed() >= Duration::from_secs(11),
        "{:?}",
        start.elapsed()
    );
    // The Retry-After window is gone once over.
    assert!(g.snapshot().is_empty(), "{:?}", g.snapshot());
}

#[tokio::test(start_paused = true)]
async fn a_waiter_that_leaves_gives_its_place_up() {
    let g = governor(&[(1, 5)], 60, 100);
    let _p = g.admit("").await.unwrap();
    let leaver = {
        let g = Arc::clone(&g);
        tokio::spawn(async move { g.admit("").await.map(|_| ()) })
    };
    tokio::task::yield_now().await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    leaver.abort();
    let _ = leaver.await;
    let start = Instant::now();
    let _next = g.admit("").await.unwrap();
    assert!(
        start.elapsed() <= Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn a_waiter_behind_a_line_longer_than_max_wait_is_refused_at_its_deadline() {
    let g = governor(&[(1, 4)], 5, 100);
    let _p = g.admit("").await.unwrap();
    let first = {
        let g = Arc::clone(&g);
        tokio::spawn(async move { g.admit("").await.map(|_| Instant::now()) })
    };
    tokio::task::yield_now().await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    let start = Instant::now();
    // Its window has room in 4 s, but the one ahead takes it: 8 s, past max_wait.
    let e = g.admit("").await.err().unwrap();
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(4) && waited <= Duration::from_secs(5),
        "{waited:?}"
    );
    assert!(e.retry_after >= Duration::from_secs(1), "{e:?}");
    assert!(first.await.unwrap().is_ok());
    // The line is empty again: the next window serves the next request.
    let _next = g.admit("").await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn keys_at_rest_are_forgotten_and_keys_in_use_kept() {
    let g = governor(&[(1, 10)], 5, 100);
    let fresh_keys = |round: usize, n: usize| {
        let g = Arc::clone(&g);
        async move {
            for i in 0..n {
                drop(g.admit(&format!("division-{round}-{i}")).await.unwrap());
            }
        }
    };
    for round in 0..20 {
        fresh_keys(round, 100).await;
        tokio::time::advance(Duration::from_secs(11)).await;
    }
    // A key whose window is empty, then enough new keys for a sweep (the map at
    // most doubles between two).
    drop(g.admit("busy").await.unwrap());
    fresh_keys(20, 300).await;
    let kept = g.quotas.lock().unwrap().map.len();
    assert!(kept <= 512, "{kept} of 2,301 keys kept");
    assert_eq!(
        g.admit("busy").await.err(),
        Some(Exhausted {
            retry_after: Duration::from_secs(10)
        }),
        "the key in use kept its window"
    );
}
