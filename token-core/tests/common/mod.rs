//! Test doubles for the engine tests: token-core's shared fake IdP, simple stores,
//! and helpers to let background tasks run while a manual clock moves.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use token_core::backend::{storable_expiry, StoreEvent, TokenFingerprint};
use token_core::*;

// Not every test binary uses all three.
#[allow(unused_imports)]
pub use token_core::test_util::{FakeIdp, Mode, SECRET_PREFIX};

/// The engine tests' fake IdP: on `clock`, issuing tokens that last
/// `lifetime`, as the credential `fake-idp:client-1`.
pub fn fake_idp(clock: &ManualClock, lifetime: Duration) -> Arc<FakeIdp> {
    Arc::new(
        FakeIdp::new()
            .with_id("fake-idp:client-1")
            .with_clock(clock.clone())
            .with_lifetime(lifetime),
    )
}

/// A minimal shared in-memory store honouring the CacheStore contract, so
/// that two engines can share it like two processes share Redis.
/// Like Redis, it sends `Updated` after a put that stored (unless
/// `mute_updates` says the message is lost) and `Invalidated` after an
/// invalidation; it counts every call.
#[derive(Debug)]
pub struct SharedStore {
    tokens: Mutex<HashMap<CacheKey, AccessToken>>,
    leases: Mutex<HashMap<CacheKey, (Lease, std::time::Instant)>>,
    pub gets: AtomicUsize,
    pub puts: AtomicUsize,
    pub lease_tries: AtomicUsize,
    pub releases: AtomicUsize,
    /// `Updated` messages are lost.
    pub mute_updates: AtomicBool,
    /// Lease expiry on this clock (the real one when `None`).
    clock: Option<ManualClock>,
    /// `subscribe` answers `None`, as a store that cannot notify.
    silent: bool,
    /// After the next `get` that misses this key, the lease holder
    /// finishes: its token is stored (with its event) and its lease freed,
    /// as another process would between that read and the reader's next
    /// call.
    pub finish_after_miss: Mutex<Option<(CacheKey, AccessToken)>>,
    events: tokio::sync::broadcast::Sender<StoreEvent>,
}

impl Default for SharedStore {
    fn default() -> Self {
        Self {
            tokens: Mutex::default(),
            leases: Mutex::default(),
            gets: AtomicUsize::new(0),
            puts: AtomicUsize::new(0),
            lease_tries: AtomicUsize::new(0),
            releases: AtomicUsize::new(0),
            mute_updates: AtomicBool::new(false),
            clock: None,
            silent: false,
            finish_after_miss: Mutex::default(),
            events: tokio::sync::broadcast::channel(1024).0,
        }
    }
}

impl SharedStore {
    /// A store whose leases expire on `clock`.
    pub fn on_clock(clock: &ManualClock) -> Self {
        Self {
            clock: Some(clock.clone()),
            ..Self::default()
        }
    }

    /// A store on `clock` that offers no events at all.
    pub fn silent_on_clock(clock: &ManualClock) -> Self {
        Self {
            silent: true,
            ..Self::on_clock(clock)
        }
    }

    fn now(&self) -> std::time::Instant {
        match &self.clock {
            Some(c) => c.monotonic(),
            None => std::time::Instant::now(),
        }
    }

    /// Every call made so far.
    pub fn calls(&self) -> usize {
        [&self.gets, &self.puts, &self.lease_tries, &self.releases]
            .iter()
            .map(|c| c.load(Ordering::SeqCst))
            .sum()
    }
}

#[async_trait]
impl CacheStore for SharedStore {
    fn capabilities(&self) -> StoreCapabilities {
        StoreCapabilities::local().with_shared(true)
    }
    async fn get(&self, key: &CacheKey) -> Result<Option<AccessToken>, StoreError> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        let found = self.tokens.lock().unwrap().get(key).cloned();
        if found.is_none() {
            let mut pending = self.finish_after_miss.lock().unwrap();
            if pending.as_ref().is_some_and(|(k, _)| k == key) {
                let (key, token) = pending.take().unwrap();
                self.tokens.lock().unwrap().insert(key.clone(), token);
                self.leases.lock().unwrap().remove(&key);
                let _ = self.events.send(StoreEvent::Updated { key });
            }
        }
        Ok(found)
    }
    async fn put(&self, key: &CacheKey, token: &AccessToken) -> Result<PutOutcome, StoreError> {
        self.puts.fetch_add(1, Ordering::SeqCst);
        let exp = storable_expiry(token)?;
        let mut map = self.tokens.lock().unwrap();
        if let Some(old) = map.get(key) {
            if old.expires_at().unwrap() > exp {
                return Ok(PutOutcome::KeptNewer);
            }
        }
        map.insert(key.clone(), token.clone());
        if !self.mute_updates.load(Ordering::SeqCst) {
            let _ = self.events.send(StoreEvent::Updated { key: key.clone() });
        }
        Ok(PutOutcome::Stored)
    }
    async fn remove(&self, key: &CacheKey) -> Result<(), StoreError> {
        self.tokens.lock().unwrap().remove(key);
        Ok(())
    }
    async fn try_acquire_lease(
        &self,
        key: &CacheKey,
        ttl: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        self.lease_tries.fetch_add(1, Ordering::SeqCst);
        let mut leases = self.leases.lock().unwrap();
        let now = self.now();
        if let Some((_, until)) = leases.get(key) {
            if *until > now {
                return Ok(None);
            }
        }
        let lease = Lease::new_random();
        leases.insert(key.clone(), (lease.clone(), now + ttl));
        Ok(Some(lease))
    }
    async fn release_lease(&self, key: &CacheKey, lease: &Lease) -> Result<bool, StoreError> {
        self.releases.fetch_add(1, Ordering::SeqCst);
        let mut leases = self.leases.lock().unwrap();
        if leases.get(key).is_some_and(|(l, _)| l == lease) {
            leases.remove(key);
            return Ok(true);
        }
        Ok(false)
    }
    async fn invalidate(&self, key: &CacheKey, rejected: &AccessToken) -> Result<bool, StoreError> {
        let mut map = self.tokens.lock().unwrap();
        let removed = map.get(key).is_some_and(|t| t.same_secret(rejected));
        if removed {
            map.remove(key);
        }
        let _ = self.events.send(StoreEvent::Invalidated {
            key: key.clone(),
            fingerprint: TokenFingerprint::of(rejected),
        });
        Ok(removed)
    }
    fn subscribe(&self) -> Option<tokio::sync::broadcast::Receiver<StoreEvent>> {
        (!self.silent).then(|| self.events.subscribe())
    }
}

/// A store that fails every call, like a Redis that is down.
#[derive(Debug, Default)]
pub struct DeadStore {
    pub calls: AtomicUsize,
}

impl DeadStore {
    fn fail<T>(&self) -> Result<T, StoreError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Err(StoreError::Unavailable {
            message: "connection refused".into(),
            source: None,
        })
    }
}

#[async_trait]
impl CacheStore for DeadStore {
    fn capabilities(&self) -> StoreCapabilities {
        StoreCapabilities::local().with_shared(true)
    }
    async fn get(&self, _: &CacheKey) -> Result<Option<AccessToken>, StoreError> {
        self.fail()
    }
    async fn put(&self, _: &CacheKey, _: &AccessToken) -> Result<PutOutcome, StoreError> {
        self.fail()
    }
    async fn remove(&self, _: &CacheKey) -> Result<(), StoreError> {
        self.fail()
    }
    async fn try_acquire_lease(
        &self,
        _: &CacheKey,
        _: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        self.fail()
    }
    async fn release_lease(&self, _: &CacheKey, _: &Lease) -> Result<bool, StoreError> {
        self.fail()
    }
}

/// Lets spawned tasks run (current-thread runtime) until `cond` holds.
pub async fn settle_until(mut cond: impl FnMut() -> bool) {
    for _ in 0..10_000 {
        if cond() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("condition not reached after 10,000 yields");
}

/// Lets spawned tasks run for a while.
pub async fn settle() {
    for _ in 0..200 {
        tokio::task::yield_now().await;
    }
}

/// Advances `clock` in `step`s, letting tasks run between steps, until
/// `cond` holds (at most `max_steps`).
pub async fn advance_until(
    clock: &ManualClock,
    step: Duration,
    max_steps: usize,
    mut cond: impl FnMut() -> bool,
) {
    for _ in 0..max_steps {
        settle().await;
        if cond() {
            return;
        }
        clock.advance(step);
    }
    settle().await;
    assert!(
        cond(),
        "condition not reached after {max_steps} steps of {step:?}"
    );
}

/// Polls a future once: `Some` if it completed without waiting.
pub fn poll_once<F: std::future::Future>(fut: F) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match fut.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}

pub fn hour() -> Duration {
    Duration::from_secs(3600)
}

pub fn request(scope: &str) -> TokenRequest {
    TokenRequest::builder().scope(scope).build()
}
