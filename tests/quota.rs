//! Upstream rate limits through tokenproxy, against a simulated Exact Online API
//! that enforces small windows per division and a daily cap with Exact's headers
//! and `429`s: the API's refusals are the oracle.

mod support;

use std::time::{Duration, Instant};

use support::{ProviderOptions, World, client, get, json};
use tokenproxy::demo::RateLimitSim;

fn limited(per_window: u64, window_ms: u64, daily: u64) -> ProviderOptions {
    ProviderOptions {
        rate_limit: Some(RateLimitSim {
            per_window,
            window: Duration::from_millis(window_ms),
            daily,
        }),
        ..ProviderOptions::default()
    }
}

/// The route's quota is per division (`/demo/v1/{division}/...`), as the
/// Exact Online preset sets it.
fn config(w: &World, top: &str, token_extra: &str) -> String {
    format!("{}quota_key = \"path:2\"\n", w.config(top, token_extra))
}

/// The access token, as a tool beside tokenproxy gets it.
async fn vended_token(p: &support::Proxy) -> String {
    let (_, vended) = get(&p.url("/tokenproxy/v1/tokens/demo")).await;
    json(&vended)["access_token"].as_str().unwrap().to_owned()
}

/// A window for the resend tests: 3 calls in 5 s. Another tool spends it, then
/// tokenproxy's request must fall in the same window to be refused; 5 s leaves a
/// busy machine room for those four calls (the window starts at the first).
fn spendable() -> ProviderOptions {
    limited(3, 5000, 100_000)
}

/// Another tool spends division `division`'s window of 3 calls, straight at the API.
async fn spend_window(w: &World, token: &str, division: u32) {
    for _ in 0..3 {
        let r = client()
            .get(format!("{}v1/{division}/crm/elsewhere", w.provider.api_url))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
}

/// Division `division`'s window spent elsewhere, then a GET for it through
/// tokenproxy: the status the client gets.
async fn get_after_spent_window(w: &World, p: &support::Proxy, token: &str, division: u32) -> u16 {
    spend_window(w, token, division).await;
    let r = client()
        .get(p.url(&format!("/demo/v1/{division}/crm/Accounts")))
        .send()
        .await
        .unwrap();
    r.status().as_u16()
}

/// 200 requests from 8 concurrent clients against 20 calls per second: none is
/// refused by the API (no window overrun), none reaches a client as a 429, and
/// the whole takes about what the quota allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_clients_pull_200_pages_without_a_429() {
    let w = World::new(limited(20, 1000, 100_000)).await;
    let p = w.spawn(&config(&w, "", ""));
    p.wait_ready(200, Duration::from_secs(15)).await;
    let started = Instant::now();
    let c = client();
    let mut clients = Vec::new();
    for worker in 0..8 {
        let (c, url) = (c.clone(), p.url("/demo/v1/123/crm/Accounts"));
        clients.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            for i in 0..25 {
                let r = c
                    .get(format!("{url}?w={worker}&i={i}"))
                    .send()
                    .await
                    .unwrap();
                statuses.push(r.status().as_u16());
            }
            statuses
        }));
    }
    let mut statuses = Vec::new();
    for c in clients {
        statuses.extend(c.await.unwrap());
    }
    let elapsed = started.elapsed();
    assert_eq!(statuses.len(), 200);
    let refused: Vec<_> = statuses.iter().filter(|s| **s != 200).collect();
    assert!(refused.is_empty(), "clients saw {refused:?}");
    assert_eq!(
        w.provider.rate_limited(),
        0,
        "the API refused calls over its limit"
    );
    // 200 calls at 20 per second need 9 whole windows after the first: 9 s, and
    // 0.2 s of grace after each reset: 11 s. The upper bound is loose (a busy
    // machine); what it catches is a governor that waits windows it need not
    // (twice the minimum, or the 60 s of a window it knows nothing of).
    // bench/quota.sh measures the time itself.
    assert!(elapsed >= Duration::from_secs(9), "{elapsed:?}");
    assert!(
        elapsed < Duration::from_secs(22),
        "{elapsed:?}: far slower than the quota"
    );
    eprintln!("200 pages in {elapsed:?}");
    let (_, metrics) = get(&p.admin_url("/metrics")).await;
    assert!(
        metrics.contains("tokenproxy_quota_waits_total{route=\"demo\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tokenproxy_upstream_quota_remaining{route=\"demo\",window=\"1m\"}")
            || metrics
                .contains("tokenproxy_upstream_quota_remaining{route=\"demo\",window=\"1s\"}"),
        "{metrics}"
    );
    // /status shows the division's windows.
    let (_, status) = get(&p.admin_url("/status")).await;
    let status = json(&status);
    let windows = &status["routes"][0]["rate_limits"];
    assert!(
        windows
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["key"] == "123"),
        "{status}"
    );
}

/// A daily cap used up: the next request is answered at once with 429
/// quota_exhausted and Retry-After, and the API is not called.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_used_up_daily_cap_is_answered_at_once_without_calling_the_api() {
    let w = World::new(limited(100, 1000, 5)).await;
    let p = w.spawn(&config(&w, "", ""));
    p.wait_ready(200, Duration::from_secs(15)).await;
    for i in 0..5 {
        let (status, _) = get(&p.url(&format!("/demo/v1/7/crm/Accounts?i={i}"))).await;
        assert_eq!(status, 200);
    }
    let calls = w.provider.api_requests();
    let started = Instant::now();
    let r = client()
        .get(p.url("/demo/v1/7/crm/Accounts?i=6"))
        .send()
        .await
        .unwrap();
    // Not held for max_wait (30 s): answered as soon as it came (the API not being
    // called, below, is the oracle; this bound leaves a busy machine room).
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["x-tokenproxy-error"], "quota_exhausted");
    let retry_after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after > 3600, "{retry_after}");
    assert_eq!(w.provider.api_requests(), calls, "the API was not called");
    assert_eq!(w.provider.rate_limited(), 0);
    // Another division has its own quota.
    assert_eq!(get(&p.url("/demo/v1/8/crm/Accounts")).await.0, 200);
}

/// Another tool used the window up behind tokenproxy's back: the API answers 429.
/// A GET waits for the window and is sent once more (the client sees 200); a
/// POST whose body is over replay_body_limit goes back as the 429 it got.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_is_waited_out_and_resent_once_only_when_the_request_can_be() {
    let w = World::new(spendable()).await;
    let p = w.spawn(&config(
        &w,
        "[proxy]\nreplay_body_limit = 1024\n",
        "vend = true",
    ));
    p.wait_ready(200, Duration::from_secs(15)).await;
    let token = vended_token(&p).await;
    let started = Instant::now();
    assert_eq!(
        get_after_spent_window(&w, &p, &token, 9).await,
        200,
        "waited out and sent again"
    );
    // The window's 5 s and the grace, not max_wait (30 s) nor an unknown reset's
    // 60 s; the bound leaves a busy machine room.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(w.provider.rate_limited(), 1, "one refusal, then one resend");

    spend_window(&w, &token, 10).await;
    let r = client()
        .post(p.url("/demo/v1/10/crm/Accounts"))
        .body(vec![b'x'; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        429,
        "a body that was not kept is not sent again"
    );
    assert_eq!(w.provider.rate_limited(), 2);
    let (_, metrics) = get(&p.admin_url("/metrics")).await;
    assert!(
        metrics.contains(
            "tokenproxy_upstream_retries_total{outcome=\"rate_limited\",route=\"demo\"} 1"
        ),
        "{metrics}"
    );
}

/// A route that never retries (`retry_on = []`) streams bodies and so cannot send a
/// POST again; a GET has no body to keep and is waited out and resent after a 429
/// all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_that_never_retries_still_resends_a_get_after_a_429() {
    let w = World::new(spendable()).await;
    let p = w.spawn(&format!("{}retry_on = []\n", config(&w, "", "vend = true")));
    p.wait_ready(200, Duration::from_secs(15)).await;
    let token = vended_token(&p).await;
    assert_eq!(
        get_after_spent_window(&w, &p, &token, 9).await,
        200,
        "waited out and sent again"
    );
    assert_eq!(w.provider.rate_limited(), 1, "one refusal, then one resend");

    spend_window(&w, &token, 10).await;
    let r = client()
        .post(p.url("/demo/v1/10/crm/Accounts"))
        .body("small")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429, "a streamed body is not sent again");
    assert_eq!(w.provider.rate_limited(), 2);
}
