//! A fleet of engines on one shared store, on a manual clock: each instance
//! refreshes at its own moment, reads the store about once per refresh, and
//! learns of another instance's token from the store's event rather than by
//! polling; a lost event or a dead lease holder still cannot strand it.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use token_core::*;

const LIFETIME: Duration = Duration::from_secs(20);

fn instance(idp: &Arc<FakeIdp>, clock: &ManualClock, store: &Arc<SharedStore>) -> TokenCache {
    TokenCache::builder(idp.clone())
        .clock(clock.clone())
        .store_arc(store.clone())
        .build()
}

/// Spawns `cache.get_token(req)` and lets it run as far as it can.
async fn ask(cache: &TokenCache, req: &TokenRequest) -> tokio::task::JoinHandle<AccessToken> {
    let (cache, req) = (cache.clone(), req.clone());
    let task = tokio::spawn(async move { cache.get_token(&req).await.unwrap().to_access_token() });
    settle().await;
    task
}

#[tokio::test(flavor = "current_thread")]
async fn a_fleet_reads_the_store_about_once_per_instance_per_refresh_spread_over_the_window() {
    const N: usize = 50;
    let clock = ManualClock::new();
    let idp = fake_idp(&clock, LIFETIME);
    let store = Arc::new(SharedStore::on_clock(&clock));
    let req = request("fleet");
    let fleet: Vec<_> = (0..N).map(|_| instance(&idp, &clock, &store)).collect();
    let _warm: Vec<_> = fleet.iter().map(|c| c.keep_warm(&req).unwrap()).collect();
    let handles: Vec<_> = fleet.iter().map(|c| c.handle(&req)).collect();
    // The cold start: one IdP call for the whole fleet.
    advance_until(&clock, Duration::from_millis(50), 100, || {
        handles.iter().all(|h| poll_once(h.token()).is_some())
    })
    .await;
    assert_eq!(idp.calls(), 1, "the cold start");

    let (calls_before, idp_before) = (store.calls(), idp.calls());
    let step = Duration::from_millis(100);
    let mut peak = 0;
    // Five lifetimes, every instance serving a request every 100 ms.
    for _ in 0..(5 * LIFETIME.as_millis() / step.as_millis()) {
        let before = store.calls();
        clock.advance(step);
        settle().await;
        for h in &handles {
            let t = poll_once(h.token())
                .expect("no request waits")
                .expect("no request fails");
            assert!(
                clock.monotonic() < idp.real_expiry(&t).expect("issued by the fake IdP"),
                "an expired token was served"
            );
        }
        peak = peak.max(store.calls() - before);
    }
    let refreshes = idp.calls() - idp_before;
    let calls = store.calls() - calls_before;
    let per_instance = calls as f64 / (N * refreshes) as f64;
    println!("{N} instances, {refreshes} refreshes: {calls} store calls, {per_instance:.2} per instance per refresh, peak {peak} per 100 ms");
    // 20 s tokens refresh every ~9.5-10 s plus the spread: 8 to 10 in 100 s.
    assert!((8..=11).contains(&refreshes), "IdP calls: {refreshes}");
    assert!(
        per_instance <= 1.5,
        "{per_instance:.2} store calls per instance per refresh"
    );
    // Spread: a 100 ms slice never sees a large part of the fleet at once.
    assert!(
        peak <= N / 3,
        "peak {peak} store calls in 100 ms for {N} instances"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_waiting_instance_is_woken_by_the_store_event_not_by_polling() {
    let clock = ManualClock::new();
    let idp = fake_idp(&clock, LIFETIME);
    let gate = idp.gate();
    let store = Arc::new(SharedStore::on_clock(&clock));
    let (a, b) = (
        instance(&idp, &clock, &store),
        instance(&idp, &clock, &store),
    );
    let req = request("cold");
    let ta = ask(&a, &req).await; // holds the lease, fetch held at the gate
    let tb = ask(&b, &req).await; // finds the lease taken: waits
    assert_eq!(b.stats().lease_waits, 1);
    let gets_while_waiting = store.gets.load(Ordering::SeqCst);
    gate.add_permits(1);
    // No clock movement: only the event can wake b.
    settle_until(|| ta.is_finished() && tb.is_finished()).await;
    let (ta, tb) = (ta.await.unwrap(), tb.await.unwrap());
    assert!(ta.same_secret(&tb));
    assert_eq!(idp.calls(), 1);
    assert_eq!(
        store.gets.load(Ordering::SeqCst) - gets_while_waiting,
        1,
        "b read the store once, after the event"
    );
    assert_eq!(store.lease_tries.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "current_thread")]
async fn a_lost_update_event_costs_the_waiter_one_slow_poll() {
    let clock = ManualClock::new();
    let idp = fake_idp(&clock, LIFETIME);
    let gate = idp.gate();
    let store = Arc::new(SharedStore::on_clock(&clock));
    store.mute_updates.store(true, Ordering::SeqCst);
    let (a, b) = (
        instance(&idp, &clock, &store),
        instance(&idp, &clock, &store),
    );
    let poll = a.policy().lease_poll();
    let req = request("lost");
    let ta = ask(&a, &req).await;
    let tb = ask(&b, &req).await;
    gate.add_permits(1);
    settle_until(|| ta.is_finished()).await;
    // Polls are jittered between half and all of the interval.
    clock.advance(poll / 2 - Duration::from_millis(1));
    settle().await;
    assert!(!tb.is_finished(), "b polled before half a lease poll");
    clock.advance(poll / 2 + Duration::from_millis(1));
    settle_until(|| tb.is_finished()).await;
    assert!(ta.await.unwrap().same_secret(&tb.await.unwrap()));
    assert_eq!(idp.calls(), 1);
}

#[tokio::test(flavor = "current_thread")]
async fn without_store_events_a_waiter_polls_quickly_as_before() {
    let clock = ManualClock::new();
    let idp = fake_idp(&clock, LIFETIME);
    let gate = idp.gate();
    let store = Arc::new(SharedStore::silent_on_clock(&clock));
    let (a, b) = (
        instance(&idp, &clock, &store),
        instance(&idp, &clock, &store),
    );
    let req = request("silent");
    let ta = ask(&a, &req).await;
    let tb = ask(&b, &req).await;
    gate.add_permits(1);
    settle_until(|| ta.is_finished()).await;
    let started = clock.monotonic();
    let step = Duration::from_millis(10);
    advance_until(&clock, step, 100, || tb.is_finished()).await;
    // Polls after 20, 40, 80 ms...: well before the slow poll's earliest.
    let took = clock.monotonic() - started;
    assert!(took < a.policy().lease_poll() / 2, "{took:?}");
    assert!(ta.await.unwrap().same_secret(&tb.await.unwrap()));
    assert_eq!(idp.calls(), 1);
}

#[tokio::test(flavor = "current_thread")]
async fn a_follower_takes_over_within_the_lease_ttl_when_the_holder_dies() {
    let clock = ManualClock::new();
    let idp = fake_idp(&clock, LIFETIME);
    let store = Arc::new(SharedStore::on_clock(&clock));
    let b = instance(&idp, &clock, &store);
    let req = request("orphaned");
    let ttl = b.policy().lease_ttl();
    // An instance took the lease and died: it never stores nor releases.
    let dead = store
        .try_acquire_lease(&b.cache_key(&req), ttl)
        .await
        .unwrap();
    assert!(dead.is_some());
    let started = clock.monotonic();
    let tb = ask(&b, &req).await;
    let step = Duration::from_millis(100);
    advance_until(&clock, step, 1000, || tb.is_finished()).await;
    let took = clock.monotonic() - started;
    tb.await.unwrap();
    assert!(
        took <= ttl + step,
        "took over after {took:?}, lease TTL {ttl:?}"
    );
    assert_eq!(idp.calls(), 1);
    // Slow polls while waiting: about one read and one lease try per
    // half-to-whole lease poll, not one every few milliseconds.
    let polls_at_most = (2 * ttl.as_millis() / b.policy().lease_poll().as_millis()) as usize + 2;
    let tries = store.lease_tries.load(Ordering::SeqCst);
    assert!(
        tries <= polls_at_most + 1,
        "{tries} lease tries in {took:?}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_holder_finishing_between_the_waiters_read_and_lease_try_is_adopted_not_refetched() {
    let clock = ManualClock::new();
    let idp = fake_idp(&clock, LIFETIME);
    let store = Arc::new(SharedStore::on_clock(&clock));
    let b = instance(&idp, &clock, &store);
    let req = request("race");
    let key = b.cache_key(&req);
    // Another process holds the lease and is fetching.
    let held = store
        .try_acquire_lease(&key, b.policy().lease_ttl())
        .await
        .unwrap();
    assert!(held.is_some());
    let tb = ask(&b, &req).await;
    assert_eq!(b.stats().lease_waits, 1);
    // It stores its token and frees the lease right after b's next read
    // missed, before b's lease try (as happened between two processes
    // sharing Redis): b takes the free lease.
    let theirs =
        AccessToken::new(Secret::from("their-token"), clock.now()).with_expires_in(LIFETIME);
    *store.finish_after_miss.lock().unwrap() = Some((key, theirs.clone()));
    advance_until(&clock, Duration::from_millis(100), 1000, || {
        tb.is_finished()
    })
    .await;
    let got = tb.await.unwrap();
    assert!(
        store.finish_after_miss.lock().unwrap().is_none(),
        "the race was not staged"
    );
    assert!(got.same_secret(&theirs), "b fetched its own token");
    assert_eq!(
        idp.calls(),
        0,
        "the lease was free, but the token was there"
    );
    assert_eq!(
        store.releases.load(Ordering::SeqCst),
        1,
        "b gave back the lease it took"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn without_a_shared_store_the_refresh_starts_at_refresh_at() {
    let clock = ManualClock::new();
    let idp = fake_idp(&clock, LIFETIME);
    let cache = TokenCache::builder(idp.clone())
        .clock(clock.clone())
        .policy(RefreshPolicy::default().with_jitter_fraction(0.0))
        .build();
    let req = request("local");
    let first = cache.get_token(&req).await.unwrap().to_access_token();
    let refresh_at = first.refresh_at().unwrap();
    clock.advance(refresh_at.duration_since(clock.now()).unwrap());
    poll_once(cache.get_token(&req)).unwrap().unwrap();
    settle().await;
    assert_eq!(idp.calls(), 2, "refreshed at refresh_at, with no spread");
}
