//! The key map at per-user scale: 100,000 keys, one-shot users that come and
//! go, the `max_keys` bound (CLOCK), pinned keys, and eviction racing with
//! hits. Memory is measured in `keys_memory.rs`.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use token_core::*;

/// Issues, for a request with scope `s`, the token `tok-{s}-{n}` (its n-th
/// for that scope), and counts calls per scope.
#[derive(Debug)]
struct PerScope {
    clock: ManualClock,
    lifetime: Duration,
    calls: Mutex<HashMap<String, usize>>,
    total: AtomicUsize,
}

impl PerScope {
    fn new(clock: &ManualClock, lifetime: Duration) -> Arc<Self> {
        Arc::new(Self {
            clock: clock.clone(),
            lifetime,
            calls: Mutex::default(),
            total: AtomicUsize::new(0),
        })
    }

    fn calls_for(&self, scope: &str) -> usize {
        self.calls.lock().unwrap().get(scope).copied().unwrap_or(0)
    }

    fn total(&self) -> usize {
        self.total.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Credential for PerScope {
    fn id(&self) -> &str {
        "per-scope"
    }
    async fn fetch(
        &self,
        request: &TokenRequest,
        _: Option<&AccessToken>,
    ) -> Result<AccessToken, CredentialError> {
        let scope = request.scope_string();
        let n = {
            let mut calls = self.calls.lock().unwrap();
            let n = calls.entry(scope.clone()).or_default();
            *n += 1;
            *n
        };
        self.total.fetch_add(1, Ordering::SeqCst);
        let now = self.clock.now();
        Ok(AccessToken::new(format!("tok-{scope}-{n}"), now).with_expires_in(self.lifetime))
    }
}

fn user(i: usize) -> TokenRequest {
    TokenRequest::builder().scope(format!("user-{i}")).build()
}

/// Whether `token` is the `n`-th token issued for user `i`.
fn is_users(token: &AccessToken, i: usize, n: usize) -> bool {
    token.secret().expose() == format!("tok-user-{i}-{n}")
}

/// A 2-worker runtime, a manual clock, a [`PerScope`] IdP on it issuing
/// tokens that live `lifetime`, and a cache builder around both.
fn setup(
    lifetime: Duration,
) -> (
    tokio::runtime::Runtime,
    ManualClock,
    Arc<PerScope>,
    TokenCacheBuilder,
) {
    let clock = ManualClock::new();
    let idp = PerScope::new(&clock, lifetime);
    let builder = TokenCache::builder(idp.clone()).clock(clock.clone());
    (multi_thread(), clock, idp, builder)
}

fn multi_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Waits (real time, bounded) for background tasks on other threads.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..2_000 {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("{what}: not reached within 10 s");
}

#[test]
fn a_hundred_thousand_keys_fill_cold_then_hit_warm() {
    const N: usize = 100_000;
    let (rt, _clock, idp, builder) = setup(Duration::from_secs(3600));
    let cache = builder.build();
    let users: Vec<_> = (0..N).map(user).collect();
    rt.block_on(async {
        for (i, request) in users.iter().enumerate() {
            let token = cache.get_token(request).await.unwrap();
            assert!(is_users(&token, i, 1), "user {i} got {:?}", token.secret());
        }
    });
    let cold = cache.stats();
    assert_eq!(idp.total(), N);
    assert_eq!((cold.keys, cold.evictions), (N as u64, 0));
    for (i, request) in users.iter().enumerate() {
        let token = poll_once(cache.get_token(request))
            .expect("a warm key is a hit, answered without waiting")
            .unwrap();
        assert!(is_users(&token, i, 1), "user {i} got {:?}", token.secret());
    }
    let warm = cache.stats();
    assert_eq!(idp.total(), N, "a warm pass called the IdP");
    assert_eq!(warm.hits - cold.hits, N as u64);
    assert_eq!(warm.misses, cold.misses);
    assert!((0..N)
        .step_by(997)
        .all(|i| idp.calls_for(&format!("user-{i}")) == 1));
}

#[test]
fn one_shot_users_leave_after_their_tokens_expire_and_the_idle_window() {
    const ROUND: usize = 20_000;
    let (rt, clock, idp, builder) = setup(Duration::from_secs(60));
    let window = Duration::from_secs(600);
    let cache = builder.idle_window(window).build();
    for round in 0..5 {
        rt.block_on(async {
            for i in 0..ROUND {
                let i = round * ROUND + i;
                let token = cache.get_token(&user(i)).await.unwrap();
                assert!(is_users(&token, i, 1));
            }
        });
        assert_eq!(cache.stats().keys, ROUND as u64, "round {round}");
        // Past expiry and the idle window: the sweeper (on the engine's
        // clock) drops every key of the round.
        clock.advance(Duration::from_secs(7200));
        wait_until("the idle sweep", || cache.stats().keys == 0);
        assert_eq!(cache.stats().evictions, ((round + 1) * ROUND) as u64);
    }
    assert_eq!(idp.total(), 5 * ROUND);
}

#[test]
fn an_idle_key_stays_while_its_token_is_usable_or_within_the_window() {
    let (rt, clock, _idp, builder) = setup(Duration::from_secs(4 * 3600));
    let cache = builder.idle_window(Duration::from_secs(600)).build();
    let short = TokenRequest::builder().scope("short").build();
    rt.block_on(async {
        cache.get_token(&user(1)).await.unwrap();
    });
    // A key whose token lives on is never idle-evicted, however long unused.
    for _ in 0..12 {
        clock.advance(Duration::from_secs(300));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(cache.stats().keys, 1);
    assert_eq!(cache.stats().evictions, 0);
    // An expired key that was asked for within the window stays too: the
    // hit sets its reference flag and the sweep only ages it.
    let idp2 = PerScope::new(&clock, Duration::from_secs(60));
    let cache2 = TokenCache::builder(idp2.clone())
        .clock(clock.clone())
        .idle_window(Duration::from_secs(600))
        .build();
    rt.block_on(async { cache2.get_token(&short).await.unwrap() });
    clock.advance(Duration::from_secs(240));
    std::thread::sleep(Duration::from_millis(50));
    assert!(poll_once(cache2.get_token(&short)).is_some(), "still fresh");
    clock.advance(Duration::from_secs(240));
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(cache2.stats().keys, 1, "expired, but used 4 minutes ago");
    // The sweeper runs every half window of the engine's clock, and a key
    // goes at the second sweep after its last use (the first clears its
    // reference flag). The sweeper task may first run on its worker after
    // the clock has moved (the first fetch ran on this thread), so the
    // clock is stepped a half window at a time until the key is gone.
    let mut steps = 0;
    while cache2.stats().keys != 0 {
        assert!(steps < 40, "the idle sweep never evicted the expired key");
        clock.advance(Duration::from_secs(300));
        std::thread::sleep(Duration::from_millis(50));
        steps += 1;
    }
    assert_eq!(cache2.stats().evictions, 1);
}

#[test]
fn past_the_bound_the_keys_not_used_since_the_hand_passed_go_first() {
    let (rt, _clock, _idp, builder) = setup(Duration::from_secs(3600));
    let cache = builder.max_keys(100).build();
    rt.block_on(async {
        for i in 0..100 {
            cache.get_token(&user(i)).await.unwrap();
        }
        // Users 0..50 are in use; 50..100 are not.
        for i in 0..50 {
            assert!(poll_once(cache.get_token(&user(i))).is_some());
        }
        for i in 100..150 {
            cache.get_token(&user(i)).await.unwrap();
        }
    });
    let stats = cache.stats();
    assert_eq!((stats.keys, stats.evictions), (100, 50));
    // The used ones are still cached (hits, no fetch); the others went.
    for i in 0..50 {
        let token = poll_once(cache.get_token(&user(i)))
            .expect("a used key was evicted")
            .unwrap();
        assert!(is_users(&token, i, 1));
    }
    rt.block_on(async {
        for i in 50..100 {
            let token = cache.get_token(&user(i)).await.unwrap();
            assert!(is_users(&token, i, 2), "user {i} was not evicted");
        }
    });
    assert!(cache.stats().keys <= 100);
}

#[test]
fn handles_and_keep_warm_guards_pin_their_keys() {
    let (rt, clock, idp, builder) = setup(Duration::from_secs(60));
    let cache = builder
        .max_keys(8)
        .idle_window(Duration::from_secs(60))
        .build();
    let (a, b) = (user(1_000_001), user(1_000_002));
    rt.block_on(async {
        let handle = cache.handle(&a);
        let warm = cache.keep_warm(&b).unwrap();
        assert!(is_users(&handle.token().await.unwrap(), 1_000_001, 1));
        wait_until("the keep-warm fetch", || idp.calls_for("user-1000002") == 1);
        for i in 0..200 {
            cache.get_token(&user(i)).await.unwrap();
        }
        assert!(cache.stats().keys <= 8);
        assert!(cache.stats().evictions >= 190);
        // Both pinned keys survived: the handle hits, and get_token finds
        // the same slot.
        assert!(is_users(
            &poll_once(handle.token()).unwrap().unwrap(),
            1_000_001,
            1
        ));
        assert!(is_users(
            &poll_once(cache.get_token(&a)).unwrap().unwrap(),
            1_000_001,
            1
        ));
        assert!(poll_once(cache.get_token(&b)).is_some());
        // Expired and idle far past the window: still pinned, still there,
        // and the handle refetches into the same slot.
        clock.advance(Duration::from_secs(3600));
        std::thread::sleep(Duration::from_millis(50));
        assert!(is_users(&handle.token().await.unwrap(), 1_000_001, 2));
        assert!(is_users(
            &poll_once(cache.get_token(&a)).unwrap().unwrap(),
            1_000_001,
            2
        ));
        // Unpinned, the key is evictable like any other.
        drop(handle);
        drop(warm);
        for i in 200..400 {
            cache.get_token(&user(i)).await.unwrap();
        }
        let token = cache.get_token(&a).await.unwrap();
        assert!(
            is_users(&token, 1_000_001, 3),
            "the unpinned key stayed: {:?} {:?}",
            token.secret().expose(),
            cache.stats()
        );
    });
}

#[test]
fn eviction_racing_with_hits_never_hands_out_a_wrong_or_expired_token() {
    const KEYS: usize = 256;
    let (rt, clock, _idp, builder) = setup(Duration::from_secs(3600));
    let cache = builder.max_keys(64).build();
    let tasks: Vec<_> = (0..2)
        .map(|t| {
            let (cache, clock) = (cache.clone(), clock.clone());
            rt.spawn(async move {
                let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ t;
                for _ in 0..30_000 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let i = (x % KEYS as u64) as usize;
                    let token = cache.get_token(&user(i)).await.unwrap();
                    let prefix = format!("tok-user-{i}-");
                    assert!(
                        token.secret().expose().starts_with(&prefix),
                        "user {i} was handed {:?}",
                        token.secret()
                    );
                    assert!(
                        token.expires_at().unwrap() > clock.now(),
                        "an expired token"
                    );
                }
            })
        })
        .collect();
    rt.block_on(async {
        for t in tasks {
            t.await.unwrap();
        }
    });
    let stats = cache.stats();
    assert!(stats.keys <= 64 + 2, "{stats:?}");
    assert!(
        stats.evictions > 1_000,
        "the test evicted too little: {stats:?}"
    );
}

#[test]
fn a_thousand_callers_of_an_evicted_key_cause_one_fetch() {
    let (rt, _clock, idp, builder) = setup(Duration::from_secs(3600));
    let cache = builder.max_keys(1).build();
    let hot = user(7);
    rt.block_on(async {
        cache.get_token(&hot).await.unwrap();
        cache.get_token(&user(8)).await.unwrap();
    });
    assert_eq!(cache.stats().evictions, 1, "user 7 was not evicted");
    let callers: Vec<_> = (0..1_000)
        .map(|_| {
            let (cache, hot) = (cache.clone(), hot.clone());
            rt.spawn(async move { cache.get_token(&hot).await.unwrap().to_access_token() })
        })
        .collect();
    rt.block_on(async {
        for c in callers {
            assert!(is_users(&c.await.unwrap(), 7, 2));
        }
    });
    assert_eq!(
        idp.calls_for("user-7"),
        2,
        "one fetch before, one after eviction"
    );
}

#[test]
fn another_instances_invalidation_finds_its_key_among_many() {
    let rt = multi_thread();
    let clock = ManualClock::new();
    let store = Arc::new(SharedStore::default());
    let idp = PerScope::new(&clock, Duration::from_secs(3600));
    let build = || {
        TokenCache::builder(idp.clone())
            .clock(clock.clone())
            .store_arc(store.clone())
            .build()
    };
    let (here, there) = (build(), build());
    rt.block_on(async {
        for i in 0..2_000 {
            here.get_token(&user(i)).await.unwrap();
        }
        let rejected = there
            .get_token(&user(1234))
            .await
            .unwrap()
            .to_access_token();
        assert!(
            is_users(&rejected, 1234, 1),
            "the other instance adopted the stored token"
        );
        assert!(there.invalidate(&user(1234), &rejected).await);
    });
    wait_until("the event", || here.stats().invalidations == 1);
    rt.block_on(async {
        assert!(is_users(
            &here.get_token(&user(1234)).await.unwrap(),
            1234,
            2
        ));
        for i in (0..2_000).filter(|i| *i != 1234) {
            assert!(is_users(
                &poll_once(here.get_token(&user(i))).unwrap().unwrap(),
                i,
                1
            ));
        }
    });
    assert_eq!(idp.total(), 2_001);
}

#[test]
fn an_invalidated_token_is_never_adopted_back_from_the_store() {
    // A store that has not dropped the rejected token yet (another
    // instance's copy, or a slow invalidation) must not hand it back.
    let rt = multi_thread();
    let clock = ManualClock::new();
    let store = Arc::new(SharedStore::default());
    let idp = PerScope::new(&clock, Duration::from_secs(3600));
    let cache = TokenCache::builder(idp.clone())
        .clock(clock.clone())
        .store_arc(store.clone())
        .build();
    rt.block_on(async {
        let rejected = cache.get_token(&user(1)).await.unwrap().to_access_token();
        // Put it back after the invalidation, as a racing writer would.
        assert!(cache.invalidate(&user(1), &rejected).await);
        let key = cache.cache_key(&user(1));
        store
            .put(
                &key,
                &rejected
                    .clone()
                    .with_refresh_at(clock.now() + Duration::from_secs(1800)),
            )
            .await
            .unwrap();
        let next = cache.get_token(&user(1)).await.unwrap();
        assert!(
            is_users(&next, 1, 2),
            "the rejected token came back: {:?}",
            next.secret()
        );
    });
}
