//! Engine behaviour, driven by a manual clock and a counting fake IdP.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use token_core::backend::{decode_token, encode_token};
use token_core::policy::{DEFAULT_ASSUMED_LIFETIME, DEFAULT_MAX_LIFETIME};
use token_core::*;

fn cache(idp: &Arc<FakeIdp>, policy: RefreshPolicy) -> TokenCache {
    TokenCache::builder(idp.clone())
        .clock(Arc::clone(idp.clock()))
        .policy(policy)
        .build()
}

fn no_jitter() -> RefreshPolicy {
    RefreshPolicy::default().with_jitter_fraction(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_concurrent_callers_on_a_cold_key_make_one_fetch() {
    let clock = ManualClock::new();
    let idp = fake_idp(&clock, hour());
    let gate = idp.gate();
    let cache = cache(&idp, RefreshPolicy::default());
    let req = request("orders.read");
    let tasks: Vec<_> = (0..10_000)
        .map(|_| {
            let (cache, req) = (cache.clone(), req.clone());
            tokio::spawn(async move {
                cache
                    .get_token(&req)
                    .await
                    .map(|t| t.secret().expose().to_owned())
            })
        })
        .collect();
    // Let every caller arrive while the single fetch is held at the gate.
    while cache.stats().waits < 10_000 {
        tokio::task::yield_now().await;
    }
    gate.add_permits(1);
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), format!("{SECRET_PREFIX}1"));
    }
    assert_eq!(idp.calls(), 1);
    assert_eq!(cache.stats().idp_calls, 1);
}

#[tokio::test(flavor = "current_thread")]
async fn refresh_ahead_never_blocks_callers() {
    let clock = ManualClock::new();
    let idp = fake_idp(&clock, hour());
    let cache = cache(&idp, RefreshPolicy::default());
    let req = request("a");
    cache.get_token(&req).await.unwrap(); // the one cold fetch
    let waits_after_warmup = cache.stats().waits;

    // Five token lifetimes of steady traffic, a call every 10 s of clock.
    let mut not_ready = 0;
    for _ in 0..(5 * 360) {
        clock.advance(Duration::from_secs(10));
        match poll_once(cache.get_token(&req)) {
            Some(Ok(t)) => {
                assert!(clock.monotonic() < idp.real_expiry(&t).expect("issued by the fake IdP"))
            }
            Some(Err(e)) => panic!("call failed: {e}"),
            None => not_ready += 1,
        }
        settle().await; // background refreshes run between calls
    }
    assert_eq!(not_ready, 0, "callers that had to wait");
    assert_eq!(cache.stats().waits - waits_after_warmup, 0);
    // One refresh per lifetime (at ~75% of it), not more.
    let refreshes = cache.stats().refreshes;
    assert!((5..=7).contains(&refreshes), "refreshes = {refreshes}");
    assert_eq!(idp.calls() as u64, refreshes + 1);
}

#[tokio::test(flavor = "current_thread")]
async fn transient_failures_in_the_refresh_window_cost_no_call_and_back_off() {
    let clock = ManualClock::new();
    let idp = fake_idp(&clock, hour());
    let policy = no_jitter();
    let cache = cache(&idp, policy.clone());
    let req = request("a");
    let first = cache.get_token(&req).await.unwrap().to_access_token();
    idp.set_mode(Mode::Transient(None));
    let usable_until = policy.usable_until(&first);

    // Hammer the cache every 100 ms of clock through the whole refresh window.
    let mut calls = 0u64;
    while clock.now() < usable_until - Duration::from_millis(100) {
        for _ in 0..3 {
            let t = poll_once(cache.get_token(&req))
                .expect("never waits")
                .expect("never fails while valid");
            assert!(t.same_secret(&first));
            calls += 1;
        }
        settle().await;
        clock.advance(Duration::from_millis(100));
    }
    let stats = cache.stats();
    assert!(stats.stale_served > 0, "{stats:?}");
    // At most one IdP call per backoff step: gaps between calls never
    // shorter than the smallest possible backoff for that attempt.
    let times = idp.call_times();
    let refresh_calls = &times[1..];
    assert!(
        refresh_calls.len() >= 5,
        "it kept trying: {}",
        refresh_calls.len()
    );
    for (i, pair) in refresh_calls.windows(2).enumerate() {
        let min_gap = policy.backoff(i as u32 + 1, None, 0.0);
        assert!(
            pair[1] - pair[0] >= min_gap,
            "attempt {} came after {:?} < {min_gap:?}",
            i + 2,
            pair[1] - pair[0]
        );
    }
    assert!(
        (refresh_calls.len() as u64) < calls / 100,
        "{} IdP calls for {calls} requests",
        refresh_calls.len()
    );

    // Past the real expiry the caller finally sees the (transient) error...
    clock.advance(Duration::from_secs(120));
    settle().await;
    let err = match cache.get_token(&req).await {
        Err(e) => e,
        Ok(t) => panic!("served a token past its expiry: {t:?}"),
    };
    assert!(err.is_transient(), "{err}");
    // ...and when the IdP recovers, the next attempt after backoff succeeds.
    idp.set_mode(Mode::Issue(Some(hour())));
    clock.advance(policy.backoff(60, None, 1.0));
    assert!(cache.get_token(&req).await.is_ok());
}

#[tokio::test(flavor = "current_thread")]
async fn retry_after_is_honoured() {
    let clock = ManualClock::new();
    let idp = fake_idp(&clock, hour());
    idp.set_mode(Mode::Transient(Some(Duration::from_secs(120))));
    let cache = cache(&idp, no_jitter());
    let req = request("a");
    assert!(cache.get_token(&req).await.is_err());
    for _ in 0..119 {
        clock.advance(Duration::from_secs(1));
        assert!(cache.get_token(&req).await.is_err());
    }
    assert_eq!(idp.calls(), 1, "retried before Retry-After");
    clock.advance(Duration::from_secs(2));
    idp.set_mode(Mode::Issue(Some(hour())));
    assert!(cache.get_token(&req).await.is_ok());
    assert_eq!(idp.calls(), 2);
}

#[tokio::test(flavor = "current_thread")]
async fn permanent_error_reaches_the_caller_unchanged_and_is_not_retried_in_a_loop() {
    let clock = ManualClock::new();
    let idp = fake_idp(&clock, hour());
    idp.set_mode(Mode::Permanent);
    let cache = cache(&idp, no_jitter());
    let req = request("a");
    for _ in 0..100 {
        match cache.get_token(&req).await {
            Err(Error::Credential(e)) => {
                assert_eq!(e.code(), Some("invalid_client"));
                assert!(!e.is_transient());
                assert_eq!(e.message(), "client authentication failed");
            }
            other => panic!("unexpected: {other:?}"),
        }
    }
    assert_eq!(idp.calls(), 1);
    assert_eq!(cache.stats().backoff_rejections, 99);
    // After the backoff step, exactly one more attempt.
    clock.advance(Duration::from_secs(2));
    for _ in 0..100 {
        assert!(cache.get_token(&req).await.is_err());
    }
    assert_eq!(idp.calls(), 2);
}

#[tokio::test(flavor = "current_thread")]
async fn expires_in_missing_zero_negative_and_ten_years() {
    let clock = ManualClock::new();
    let idp = fake_idp(&clock, hour());
    let cache = cache(&idp, no_jitter());

    idp.set_mode(Mode::Issue(None));
    let t = cache.get_token(&request("missing")).await.unwrap();
    assert_eq!(
        t.expires_at()
            .unwrap()
            .duration_since(t.obtained_at())
            .unwrap(),
        DEFAULT_ASSUMED_LIFETIME
    );

    idp.set_mode(Mode::Issue(Some(Duration::from_secs(10 * 365 * 24 * 3600))));
    let t = cache.get_token(&request("ten-years")).await.unwrap();
    assert_eq!(
        t.expires_at()
            .unwrap()
            .duration_since(t.obtained_at())
            .unwrap(),
        DEFAULT_MAX_LIFETIME
    );

    for (scope, secs) in [("zero", 0), ("negative", -30)] {
        idp.set_mode(Mode::IssueRaw(secs));
        let calls = idp.calls();
        let err = cache.get_token(&request(scope)).await.unwrap_err();
        assert!(matches!(err, Error::InvalidToken(_)), "{err:?}");
        assert!(err.to_string().contains("already expired"), "{err}");
        // Not cached, and not retried in a loop.
        assert!(cache.get_token(&request(scope)).await.is_err());
        assert_eq!(idp.calls(), calls + 1);
    }
}

#[tokio::test(flavor = "current_thread")]
async fn two_caches_sharing_a_store_make_one_fetch_per_refresh() {
    let clock = ManualClock::new();
    let idp = fake_idp(&clock, hour());
    let store: Arc<dyn CacheStore> = Arc::new(SharedStore::default());
    let make = || {
        TokenCache::builder(idp.clone())
            .clock(clock.clone())
            .store_arc(store.clone())
            .policy(RefreshPolicy::default())
            .build()
    };
    let (a, b) = (make(), make());
    let req = request("a");
    let gate = idp.gate();

    // Cold: both "processes" ask at once; one fetches, the other waits on the lease.
    let ta = tokio::spawn({
        let (a, req) = (a.clone(), req.clone());
        async move { a.get_token(&req).await.map(|t| t.to_access_token()) }
    });
    let tb = tokio::spawn({
        let (b, req) = (b.clone(), req.clone());
        async move { b.get_token(&req).await.map(|t| t.to_access_token()) }
    });
    settle().await;
    gate.add_permits(1);
    idp.ungate();
    advance_until(&clock, Duration::from_millis(20), 500, || {
        ta.is_finished() && tb.is_finished()
    })
    .await;
    let (ta, tb) = (ta.await.unwrap().unwrap(), tb.await.unwrap().unwrap());
    assert!(ta.same_secret(&tb));
    assert_eq!(idp.calls(), 1);

    // Steady state over four lifetimes: both serve traffic every 30 s.
    for _ in 0..(4 * 120) {
        clock.advance(Duration::from_secs(30));
        for c in [&a, &b] {
            let t = poll_once(c.get_token(&req))
                .expect("no caller waits")
                .unwrap();
            assert!(clock.monotonic() < idp.real_expiry(&t).expect("issued by the fake IdP"));
        }
        // Let refreshes (and lease waits, which poll the store) finish.
        for _ in 0..20 {
            settle().await;
            clock.advance(Duration::from_millis(50));
        }
    }
    let calls = idp.calls();
    assert!(
        (5..=7).contains(&calls),
        "IdP calls for two instances over four lifetimes: {calls}"
    );
    let (sa, sb) = (a.stats(), b.stats());
    assert!(sa.store_hits + sb.store_hits >= 4, "{sa:?} {sb:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn a_store_that_fails_every_call_still_serves_tokens() {
    let clock = ManualClock::new();
    let idp = fake_idp(&clock, hour());
    let store = Arc::new(DeadStore::default());
    let cache = TokenCache::builder(idp.clone())
        .clock(clock.clone())
        .store_arc(store.clone())
        .build();
    let req = request("a");
    for _ in 0..1000 {
        cache.get_token(&req).await.unwrap();
    }
    assert_eq!(idp.calls(), 1);
    let s = cache.stats();
    assert!(s.store_errors >= 1, "{s:?}");
    // While the store is in cooldown it is not even tried.
    assert_eq!(
        store.calls.load(std::sync::atomic::Ordering::SeqCst) as u64,
        s.store_errors
    );
    // Expiry and refresh keep working without it.
    clock.advance(Duration::from_secs(3 * 3600));
    cache.get_token(&req).await.unwrap();
    assert_eq!(idp.calls(), 2);
}

#[tokio::test(flavor = "current_thread")]
async fn a_hung_store_is_abandoned_after_its_timeout() {
    #[derive(Debug)]
    struct HungStore;
    #[async_trait::async_trait]
    impl CacheStore for HungStore {
        fn capabilities(&self) -> StoreCapabilities {
            StoreCapabilities::local()
        }
        async fn get(&self, _: &CacheKey) -> Result<Option<AccessToken>, StoreError> {
            std::future::pending().await
        }
        async fn put(&self, _: &CacheKey, _: &AccessToken) -> Result<PutOutcome, StoreError> {
            std::future::pending().await
        }
        async fn remove(&self, _: &CacheKey) -> Result<(), StoreError> {
            std::future::pending().await
        }
        async fn try_acquire_lease(
            &self,
            _: &CacheKey,
            _: Duration,
        ) -> Result<Option<Lease>, StoreError> {
            std::future::pending().await
        }
        async fn release_lease(&self, _: &CacheKey, _: &Lease) -> Result<bool, StoreError> {
            std::future::pending().await
        }
    }
    let clock = ManualClock::new();
    let idp = fake_idp(&clock, hour());
    let cache = TokenCache::builder(idp.clone())
        .clock(clock.clone())
        .store(HungStore)
        .build();
    let req = request("a");
    let task = tokio::spawn({
        let (cache, req) = (cache.clone(), req.clone());
        async move { cache.get_token(&req).await.map(|_| ()) }
    });
    advance_until(&clock, Duration::from_millis(500), 20, || {
        task.is_finished()
    })
    .await;
    task.await.unwrap().unwrap();
    assert_eq!(cache.stats().store_errors, 1);
    assert_eq!(idp.calls(), 1);
}

#[tokio::test(flavor = "current_thread")]
async fn a_caller_dropped_mid_fetch_does_not_cancel_it_for_the_others() {
    let clock = ManualClock::new();
    let idp = fake_idp(&clock, hour());
    let gate = idp.gate();
    let cache = cache(&idp, RefreshPolicy::default());
    let req = request("a");
    let starter = tokio::spawn({
        let (cache, req) = (cache.clone(), req.clone());
        async move { cache.get_token(&req).await.map(|_| ()) }
    });
    settle_until(|| idp.calls() == 1).await;
    let waiter = tokio::spawn({
        let (cache, req) = (cache.clone(), req.clone());
        async move { cache.get_token(&req).await.map(|t| t.to_access_token()) }
    });
    settle().await;
    starter.abort();
    assert!(starter.await.unwrap_err().is_cancelled());
    gate.add_permits(1);
    let token = waiter.await.unwrap().unwrap();
    assert_eq!(token.secret().expose(), format!("{SECRET_PREFIX}1"));
    assert_eq!(idp.calls(), 1);
}

#[tokio::test(flavor = "current_thread")]
async fn a_panicking_fetch_fails_its_waiters_clearly_is_not_cached_and_the_next_call_retries() {
    let clock = ManualClock::new();
    let idp = fake_idp(&clock, hour());
    idp.set_mode(Mode::Panic);
    let gate = idp.gate();
    let cache = cache(&idp, RefreshPolicy::default());
    let req = request("a");
    let waiters: Vec<_> = (0..5)
        .map(|_| {
            let (cache, req) = (cache.clone(), req.clone());
            tokio::spawn(async move { cache.get_token(&req).await.map(|_| ()) })
        })
        .collect();
    settle().await;
    gate.add_permits(1);
    for w in waiters {
        let err = w.await.unwrap().unwrap_err();
        assert!(matches!(err, Error::FetchPanicked), "{err:?}");
        assert!(err.to_string().contains("panicked"));
    }
    assert_eq!(cache.stats().panics, 1);
    idp.set_mode(Mode::Issue(Some(hour())));
    idp.ungate();
    cache
        .get_token(&req)
        .await
        .expect("next call tries again at once");
    assert_eq!(idp.calls(), 2);
}

#[tokio::test(flavor = "current_thread")]
async fn a_hung_fetch_times_out_on_its_own_clock() {
    let clock = ManualClock::new();
    let idp = fake_idp(&clock, hour());
    idp.set_mode(Mode::Hang);
    let policy = RefreshPolicy::default().with_fetch_timeout(Duration::from_secs(5));
    let cache = cache(&idp, policy);
    let req = request("a");
    let task = tokio::spawn({
        let (cache, req) = (cache.clone(), req.clone());
        async move { cache.get_token(&req).await.map(|_| ()) }
    });
    settle().await;
    clock.advance(Duration::from_secs(4));
    settle().await;
    assert!(!task.is_finished());
    clock.advance(Duration::from_secs(1));
    settle_until(|| task.is_finished()).await;
    let err = task.await.unwrap().unwrap_err();
    assert!(
        matches!(err, Error::FetchTimeout(d) if d == Duration::from_secs(5)),
        "{err:?}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn clock_jumps_never_hand_out_an_expired_token_nor_cause_a_refresh_storm() {
    let clock = ManualClock::new();
    let idp = fake_idp(&clock, hour());
    let cache = cache(&idp, RefreshPolicy::default());
    let req = request("a");
    cache.get_token(&req).await.unwrap();

    // The wall clock jumps back an hour (NTP step, operator). Real time goes on.
    clock.jump_wall(-3600);
    for _ in 0..(3 * 120) {
        clock.advance(Duration::from_secs(30));
        let t = cache.get_token(&req).await.unwrap();
        assert!(
            clock.monotonic() < idp.real_expiry(&t).expect("issued by the fake IdP"),
            "expired token handed out after a backward jump"
        );
        settle().await;
    }
    let after_back = idp.calls();
    assert!(
        after_back <= 5,
        "refresh storm after a backward jump: {after_back} calls in 3 lifetimes"
    );

    // Both clocks leap forward past expiry (a suspended VM resumes).
    clock.advance(Duration::from_secs(2 * 3600));
    for _ in 0..100 {
        let t = cache.get_token(&req).await.unwrap();
        assert!(clock.monotonic() < idp.real_expiry(&t).expect("issued by the fake IdP"));
    }
    settle().await;
    assert_eq!(
        idp.calls(),
        after_back + 1,
        "one fetch after the forward leap, not one per call"
    );

    // The wall clock alone leaps forward a day: tokens are judged by real
    // elapsed time in process, so nothing is refetched in a storm.
    clock.jump_wall(24 * 3600);
    for _ in 0..100 {
        cache.get_token(&req).await.unwrap();
    }
    settle().await;
    assert!(idp.calls() <= after_back + 2);
}

#[tokio::test(flavor = "current_thread")]
async fn refreshes_of_a_thousand_keys_are_spread_by_jitter() {
    let clock = ManualClock::new();
    let idp = fake_idp(&clock, hour());
    let cache = cache(&idp, RefreshPolicy::default());
    let requests: Vec<_> = (0..1000).map(|i| request(&format!("scope-{i}"))).collect();
    for r in &requests {
        cache.get_token(r).await.unwrap();
    }
    assert_eq!(idp.calls(), 1000);
    // Refresh-ahead for an hour token starts 15 min before expiry, moved
    // up to 3 min earlier by jitter. Skip to just before that, then walk a
    // second at a time, touching every key, and count IdP calls per second.
    clock.advance(Duration::from_secs(41 * 60));
    let mut per_second = Vec::new();
    for _ in 0..(5 * 60) {
        clock.advance(Duration::from_secs(1));
        let before = idp.calls();
        for r in &requests {
            poll_once(cache.get_token(r)).expect("no waiting").unwrap();
        }
        settle().await;
        per_second.push(idp.calls() - before);
    }
    let total: usize = per_second.iter().sum();
    assert_eq!(total, 1000, "every key refreshed once");
    let busiest = *per_second.iter().max().unwrap();
    let seconds_with_refreshes = per_second.iter().filter(|&&n| n > 0).count();
    // Jitter spans 5% of an hour = 180 s: ~5.6 refreshes per second on average.
    assert!(
        busiest <= 25,
        "busiest second had {busiest} of 1000 refreshes"
    );
    assert!(
        seconds_with_refreshes >= 120,
        "refreshes fell in only {seconds_with_refreshes} seconds"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_burst_of_invalidations_for_one_rejected_token_causes_one_refresh() {
    let clock = ManualClock::new();
    let idp = fake_idp(&clock, hour());
    let store: Arc<dyn CacheStore> = Arc::new(SharedStore::default());
    let cache = TokenCache::builder(idp.clone())
        .clock(clock.clone())
        .store_arc(store.clone())
        .build();
    let req = request("a");
    let old = cache.get_token(&req).await.unwrap().to_access_token();
    // 50 requests got 401 with the old token: each invalidates, then retries.
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (cache, req, old) = (cache.clone(), req.clone(), old.clone());
            tokio::spawn(async move {
                cache.invalidate(&req, &old).await;
                cache.get_token(&req).await.map(|t| t.to_access_token())
            })
        })
        .collect();
    for t in tasks {
        let new = t.await.unwrap().unwrap();
        assert!(!new.same_secret(&old));
    }
    assert_eq!(idp.calls(), 2);
    assert_eq!(cache.stats().invalidations, 1);
    // The store no longer holds the rejected token.
    let stored = store.get(&cache.cache_key(&req)).await.unwrap().unwrap();
    assert!(!stored.same_secret(&old));
    // Invalidating a token that is no longer cached drops nothing.
    assert!(!cache.invalidate(&req, &old).await);
}

#[tokio::test(flavor = "current_thread")]
async fn scheduled_refresh_keeps_a_key_warm_without_traffic() {
    let clock = ManualClock::new();
    let idp = fake_idp(&clock, hour());
    let cache = cache(&idp, RefreshPolicy::default());
    let req = request("a");
    let warm = cache.keep_warm(&req).unwrap();
    settle_until(|| idp.calls() == 1).await;
    for lifetime in 2..=4 {
        advance_until(&clock, Duration::from_secs(30), 200, || {
            idp.calls() == lifetime
        })
        .await;
    }
    // Traffic after hours of silence never waits.
    let t = poll_once(cache.get_token(&req)).expect("warm").unwrap();
    assert!(clock.monotonic() < idp.real_expiry(&t).expect("issued by the fake IdP"));
    drop(warm);
    settle().await;
    let calls = idp.calls();
    for _ in 0..400 {
        clock.advance(Duration::from_secs(30));
        settle().await;
    }
    assert_eq!(idp.calls(), calls, "the timer stopped with its guard");
}

#[tokio::test(flavor = "current_thread")]
async fn distinct_requests_never_share_a_token_or_a_fetch() {
    let clock = ManualClock::new();
    let idp = fake_idp(&clock, hour());
    let cache = cache(&idp, RefreshPolicy::default());
    let a = TokenRequest::builder()
        .scope("x")
        .resource("https://api-a")
        .build();
    let b = TokenRequest::builder()
        .scope("x")
        .resource("https://api-b")
        .build();
    let ta = cache.get_token(&a).await.unwrap().to_access_token();
    let tb = cache.get_token(&b).await.unwrap().to_access_token();
    assert!(!ta.same_secret(&tb));
    let a2 = TokenRequest::builder()
        .resource("https://api-a")
        .scope("x")
        .scope("x")
        .build();
    assert!(cache.get_token(&a2).await.unwrap().same_secret(&ta));
    assert_eq!(idp.calls(), 2);
}

#[tokio::test(flavor = "current_thread")]
async fn no_secret_appears_in_debug_display_or_errors() {
    let clock = ManualClock::new();
    let idp = fake_idp(&clock, hour());
    let store = Arc::new(SharedStore::default());
    let cache = TokenCache::builder(idp.clone())
        .clock(clock.clone())
        .store_arc(store.clone())
        .build();
    let req = TokenRequest::builder()
        .scope("a")
        .actor(Actor::Assertion("user-assertion-secret".into()))
        .secret_param("client_assertion", "assertion-param-secret")
        .build();
    let token = cache.get_token(&req).await.unwrap();
    let owned = token
        .to_access_token()
        .with_refresh_token("refresh-secret-value");
    let handle = cache.handle(&req);
    let texts = vec![
        format!("{token:?}"),
        format!("{owned:?}"),
        format!("{owned:#?}"),
        format!("{:?}", owned.secret()),
        format!("{}", owned.secret()),
        format!("{:?}", owned.authorization_header()),
        format!("{cache:?}"),
        format!("{handle:?}"),
        format!("{req:?}"),
        format!("{:?}", cache.cache_key(&req)),
        format!("{:?}", cache.stats()),
        format!("{store:?}"),
        Error::FetchPanicked.to_string(),
        Error::FetchTimeout(Duration::from_secs(1)).to_string(),
        Error::Credential(CredentialError::permanent("x").with_code("invalid_client")).to_string(),
        format!(
            "{:?}",
            decode_token(&encode_token(&owned)[..20]).unwrap_err()
        ),
    ];
    for text in texts {
        for secret in [
            SECRET_PREFIX,
            "refresh-secret-value",
            "user-assertion-secret",
            "assertion-param-secret",
        ] {
            assert!(!text.contains(secret), "{secret:?} leaked in {text:?}");
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn the_scheduled_refresh_survives_panics_without_spinning() {
    let clock = ManualClock::new();
    let idp = fake_idp(&clock, hour());
    idp.set_mode(Mode::Panic);
    let cache = cache(&idp, RefreshPolicy::default());
    let req = request("a");
    let _warm = cache.keep_warm(&req).unwrap();
    settle().await;
    assert_eq!(idp.calls(), 1, "no retry before any time passes");
    for _ in 0..10 {
        clock.advance(Duration::from_secs(1));
        settle().await;
    }
    assert!(idp.calls() <= 11, "{} calls in 10 s", idp.calls());
    // The loop is still alive: once the credential recovers, the key is warm.
    idp.set_mode(Mode::Issue(Some(hour())));
    advance_until(&clock, Duration::from_secs(1), 10, || {
        poll_once(cache.get_token(&req)).is_some_and(|r| r.is_ok())
    })
    .await;
}

#[tokio::test(flavor = "current_thread")]
async fn an_invalidation_on_one_instance_reaches_the_hot_slots_of_the_others() {
    let clock = ManualClock::new();
    let idp = fake_idp(&clock, hour());
    let store: Arc<dyn CacheStore> = Arc::new(SharedStore::default());
    let make = || {
        TokenCache::builder(idp.clone())
            .clock(clock.clone())
            .store_arc(store.clone())
            .build()
    };
    let (a, b) = (make(), make());
    let req = request("a");
    let old = a.get_token(&req).await.unwrap().to_access_token();
    assert!(
        b.get_token(&req).await.unwrap().same_secret(&old),
        "b adopted a's token from the store"
    );
    assert_eq!(idp.calls(), 1);

    assert!(a.invalidate(&req, &old).await);
    settle().await;
    assert_eq!(
        b.stats().invalidations,
        1,
        "b dropped the rejected token from its hot slot"
    );
    let fresh = b.get_token(&req).await.unwrap();
    assert!(!fresh.same_secret(&old));
    assert!(
        a.get_token(&req).await.unwrap().same_secret(&fresh),
        "a adopts b's new token"
    );
    assert_eq!(idp.calls(), 2);
}

#[tokio::test(flavor = "current_thread")]
async fn the_fetch_after_an_invalidation_still_sees_the_rejected_token_as_previous() {
    let cred = Arc::new(
        FakeIdp::new()
            .with_secret_prefix("at-")
            .with_refresh_token_prefix("rt-"),
    );
    let cache = TokenCache::builder(cred.clone()).build();
    let req = request("a");
    let first = cache.get_token(&req).await.unwrap().to_access_token();
    assert!(cache.invalidate(&req, &first).await);
    assert!(!cache.invalidate(&req, &first).await, "already retired");
    let second = cache.get_token(&req).await.unwrap();
    assert_eq!(second.secret().expose(), "at-2");
    let seen: Vec<Option<String>> = cred
        .previous_refresh_tokens()
        .iter()
        .map(|rt| rt.as_ref().map(|rt| rt.expose().to_owned()))
        .collect();
    assert_eq!(seen, vec![None, Some("rt-1".to_owned())]);
}

#[tokio::test(flavor = "current_thread")]
async fn refresh_fetches_now_shares_one_fetch_and_a_failure_keeps_the_token() {
    let clock = ManualClock::new();
    let idp = fake_idp(&clock, hour());
    let cache = cache(&idp, RefreshPolicy::default());
    let req = request("a");
    let first = cache.get_token(&req).await.unwrap().to_access_token();

    // Concurrent refreshes of a fresh token: one fetch, both get the new token.
    let gate = idp.gate();
    let (a, b) = (cache.clone(), cache.clone());
    let (ra, rb) = (req.clone(), req.clone());
    let ta = tokio::spawn(async move { a.refresh(&ra).await.map(|t| t.to_access_token()) });
    let tb = tokio::spawn(async move { b.refresh(&rb).await.map(|t| t.to_access_token()) });
    settle().await;
    gate.add_permits(1);
    idp.ungate();
    let (ta, tb) = (ta.await.unwrap().unwrap(), tb.await.unwrap().unwrap());
    assert!(ta.same_secret(&tb) && !ta.same_secret(&first));
    assert_eq!(idp.calls(), 2);
    assert!(cache.get_token(&req).await.unwrap().same_secret(&ta));

    // A failed refresh returns the error and leaves the token in service,
    // and a second refresh during the backoff does not call the IdP.
    idp.set_mode(Mode::Transient(None));
    assert!(cache.refresh(&req).await.unwrap_err().is_transient());
    assert!(cache.get_token(&req).await.unwrap().same_secret(&ta));
    assert!(cache.refresh(&req).await.is_err());
    assert_eq!(idp.calls(), 3);
}

/// An upstream that rejects every token: the gateway and the middleware
/// invalidate on its 401, fetch, retry, and get 401 again. The floor keeps
/// that to one forced refresh per key per floor.
#[tokio::test(flavor = "current_thread")]
async fn a_key_invalidated_moments_ago_is_not_invalidated_again_until_the_floor_passes() {
    let clock = ManualClock::new();
    let idp = fake_idp(&clock, hour());
    let cache = cache(&idp, RefreshPolicy::default());
    let req = request("a");
    let first = cache.get_token(&req).await.unwrap().to_access_token();
    assert!(cache.invalidate(&req, &first).await, "the first 401 counts");
    let second = cache.get_token(&req).await.unwrap().to_access_token();
    assert!(!second.same_secret(&first));
    // 30 more 401s within the floor: nothing dropped, nothing fetched.
    for _ in 0..30 {
        assert!(!cache.invalidate(&req, &second).await);
        let t = cache.get_token(&req).await.unwrap();
        assert!(t.same_secret(&second));
    }
    assert_eq!(idp.calls(), 2);
    assert_eq!(cache.stats().invalidations, 1);
    // Once the floor has passed, a 401 invalidates again.
    clock.advance(token_core::policy::DEFAULT_INVALIDATE_FLOOR);
    assert!(cache.invalidate(&req, &second).await);
    let third = cache.get_token(&req).await.unwrap();
    assert!(!third.same_secret(&second));
    assert_eq!(idp.calls(), 3);
}

#[tokio::test(flavor = "current_thread")]
async fn a_zero_invalidate_floor_turns_the_floor_off() {
    let clock = ManualClock::new();
    let idp = fake_idp(&clock, hour());
    let cache = cache(
        &idp,
        RefreshPolicy::default().with_invalidate_floor(Duration::ZERO),
    );
    let req = request("a");
    for _ in 0..3 {
        let t = cache.get_token(&req).await.unwrap().to_access_token();
        assert!(cache.invalidate(&req, &t).await);
    }
    assert_eq!(cache.stats().invalidations, 3);
}
