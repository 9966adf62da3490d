//! The engine: `TokenCache`, its builder and the pre-bound handle.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::clock::{Clock, SystemClock};
use crate::credential::Credential;
use crate::error::Error;
use crate::policy::RefreshPolicy;
use crate::request::{CacheKey, TokenRequest};
use crate::slot::{FlightResult, Hot, Slot, Token};
use crate::stats::{bump, CacheStats, Counters};
use crate::store::{CacheStore, StoreEvent, TokenFingerprint};
use crate::token::AccessToken;

/// `TokenRequest` hashes to its precomputed 64-bit hash; this hasher passes
/// it through instead of hashing it again.
#[derive(Default)]
pub(crate) struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type SlotMap = HashMap<TokenRequest, Arc<Slot>, BuildHasherDefault<Prehashed>>;

pub(crate) struct Inner {
    pub(crate) credential: Arc<dyn Credential>,
    pub(crate) store: Option<Arc<dyn CacheStore>>,
    pub(crate) policy: RefreshPolicy,
    pub(crate) clock: Arc<dyn Clock>,
    /// Monotonic origin for the nanosecond counters below.
    epoch: Instant,
    /// Copy-on-write map of slots: lookups are one atomic load, inserts (a new
    /// key, rare) copy the map under `slots_write`.
    slots: ArcSwap<SlotMap>,
    slots_write: Mutex<()>,
    /// The always-expired token every empty slot points at.
    pub(crate) empty: Arc<Hot>,
    pub(crate) stats: Counters,
    pub(crate) store_down_until: AtomicU64,
    /// Events from other instances, until the listener task takes them
    /// (started on first use, when a runtime is sure to exist).
    events: Mutex<Option<tokio::sync::broadcast::Receiver<StoreEvent>>>,
    events_pending: AtomicBool,
}

impl Inner {
    pub(crate) fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// The hit path: one atomic load, one clock read, two comparisons.
    #[inline]
    fn hit(self: &Arc<Self>, slot: &Arc<Slot>) -> Option<Token> {
        let guard = slot.hot.load();
        let now = self.clock.monotonic();
        if now < guard.fresh_until {
            self.stats.hits.incr();
            return Some(Token::from_guard(guard));
        }
        if now < guard.usable_until {
            self.stats.hits.incr();
            self.refresh_window(slot, &guard, now);
            return Some(Token::from_guard(guard));
        }
        None
    }

    /// In the refresh window: count stale serving and start one background
    /// refresh unless one runs or the key is backing off.
    #[cold]
    #[inline(never)]
    fn refresh_window(self: &Arc<Self>, slot: &Arc<Slot>, hot: &Hot, now: Instant) {
        if hot.stale.load(Ordering::Relaxed) {
            bump(&self.stats.stale_served);
        }
        if slot.flying.load(Ordering::Acquire)
            || self.nanos(now) < slot.retry_at_nanos.load(Ordering::Relaxed)
        {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut st = slot.lock();
        if st.flight.is_some() || st.retry_at.is_some_and(|at| now < at) {
            return;
        }
        tracing::debug!(key = %slot.key, "token in its refresh window; refreshing in the background");
        self.start_flight(slot, &mut st, &runtime, true);
    }

    /// The slow path: no usable token in the hot slot. Joins the running
    /// flight or starts one, then waits for it.
    async fn slow(self: &Arc<Self>, slot: &Arc<Slot>) -> Result<Token, Error> {
        self.start_listener();
        let rx = {
            let mut st = slot.lock();
            // Re-check after taking the lock: a flight may have just finished.
            let guard = slot.hot.load();
            if self.clock.monotonic() < guard.usable_until {
                self.stats.hits.incr();
                return Ok(Token::from_guard(guard));
            }
            bump(&self.stats.misses);
            match &st.flight {
                Some(rx) => rx.clone(),
                None => {
                    if let (Some(at), Some(err)) = (st.retry_at, &st.last_error) {
                        if self.clock.monotonic() < at {
                            bump(&self.stats.backoff_rejections);
                            return Err(err.clone());
                        }
                    }
                    let runtime =
                        tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
                    self.start_flight(slot, &mut st, &runtime, false)
                }
            }
        };
        Self::wait(self, rx).await
    }

    /// Refreshes `slot`'s token now, or joins the fetch already running,
    /// and waits for the result. Backing off, it answers with the last error
    /// at once, like the slow path.
    async fn refresh_now(self: &Arc<Self>, slot: &Arc<Slot>) -> Result<Token, Error> {
        self.start_listener();
        let rx = {
            let mut st = slot.lock();
            match &st.flight {
                Some(rx) => rx.clone(),
                None => {
                    let now = self.clock.monotonic();
                    if let (Some(at), Some(err)) = (st.retry_at, &st.last_error) {
                        if now < at {
                            bump(&self.stats.backoff_rejections);
                            return Err(err.clone());
                        }
                    }
                    let runtime =
                        tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
                    let usable = now < slot.hot.load().usable_until;
                    self.start_flight(slot, &mut st, &runtime, usable)
                }
            }
        };
        self.wait(rx).await
    }

    /// Waits for a flight's result.
    async fn wait(&self, mut rx: watch::Receiver<FlightResult>) -> Result<Token, Error> {
        bump(&self.stats.waits);
        // Bound to a local so the watch borrow ends before `rx` is dropped.
        let result = match rx.wait_for(Option::is_some).await {
            Ok(v) => match &*v {
                Some(Ok(hot)) => Ok(Token::from_arc(Arc::clone(hot))),
                Some(Err(e)) => Err(e.clone()),
                None => Err(Error::FetchCancelled),
            },
            Err(_) => Err(Error::FetchCancelled),
        };
        result
    }

    /// Starts the task that applies other instances' invalidations, once.
    fn start_listener(self: &Arc<Self>) {
        if !self.events_pending.load(Ordering::Acquire) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Some(mut rx) = self
            .events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        else {
            return;
        };
        self.events_pending.store(false, Ordering::Release);
        let weak = Arc::downgrade(self);
        runtime.spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                let event = match rx.recv().await {
                    Ok(event) => event,
                    Err(RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "missed store events; affected tokens are dropped at expiry or on their next 401");
                        continue;
                    }
                    Err(RecvError::Closed) => return,
                };
                let Some(inner) = weak.upgrade() else { return };
                inner.apply(event);
            }
        });
    }

    /// Applies an event from another instance.
    fn apply(&self, event: StoreEvent) {
        match event {
            StoreEvent::Invalidated { key, fingerprint } => {
                let map = self.slots.load();
                for slot in map.values().filter(|s| s.key == key) {
                    let _st = slot.lock();
                    let current = slot.hot.load();
                    if self.is_live(&current) && TokenFingerprint::of(&current.token) == fingerprint
                    {
                        self.retire(slot, &current);
                        bump(&self.stats.invalidations);
                        tracing::info!(key = %slot.key, "token invalidated by another instance");
                    }
                }
            }
        }
    }

    /// Whether `hot` is a token that may still be served (not the empty
    /// sentinel, not a retired token).
    fn is_live(&self, hot: &Hot) -> bool {
        hot.usable_until > self.epoch
    }

    /// Takes a rejected token out of service. It stays in the slot as a dead
    /// entry (never served) so that the next fetch still sees it as
    /// `previous`: its refresh token is the newest this process knows.
    fn retire(&self, slot: &Slot, hot: &Hot) {
        slot.hot.store(Arc::new(Hot {
            token: hot.token.clone(),
            fresh_until: self.epoch,
            usable_until: self.epoch,
            stale: AtomicBool::new(false),
        }));
    }

    fn existing_slot(&self, request: &TokenRequest) -> Option<Arc<Slot>> {
        self.slots.load().get(request).cloned()
    }

    fn slot_for(&self, request: &TokenRequest) -> Arc<Slot> {
        if let Some(slot) = self.existing_slot(request) {
            return slot;
        }
        let _w = self
            .slots_write
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let map = self.slots.load_full();
        if let Some(slot) = map.get(request) {
            return Arc::clone(slot);
        }
        let key = CacheKey::new(self.credential.id(), request);
        let slot = Arc::new(Slot::new(request.clone(), key, Arc::clone(&self.empty)));
        let mut next = SlotMap::clone(&map);
        next.insert(request.clone(), Arc::clone(&slot));
        self.slots.store(Arc::new(next));
        slot
    }

    async fn invalidate(&self, request: &TokenRequest, rejected: &AccessToken) -> bool {
        let slot = self.existing_slot(request);
        let mut dropped = false;
        if let Some(slot) = &slot {
            let _st = slot.lock();
            let current = slot.hot.load();
            if self.is_live(&current) && current.token.same_secret(rejected) {
                self.retire(slot, &current);
                dropped = true;
            }
        }
        if let Some(store) = self.store_if_up() {
            let key = slot.map_or_else(
                || CacheKey::new(self.credential.id(), request),
                |s| s.key.clone(),
            );
            if let Ok(true) = self.store_call(store.invalidate(&key, rejected)).await {
                dropped = true;
            }
        }
        if dropped {
            bump(&self.stats.invalidations);
            tracing::info!(request = ?request, "rejected token invalidated");
        }
        dropped
    }
}

/// The token cache: hands out access tokens for requests, fetching each from
/// the [`Credential`] once per lifetime and keeping it in the hot slot and
/// the [`CacheStore`].
///
/// For a token at time `now`:
///
/// | state | condition | the caller gets |
/// |---|---|---|
/// | fresh | `now < refresh_at` | the cached token at once, lock- and allocation-free |
/// | refresh window | `refresh_at <= now < expires_at - skew` | the cached token at once; one background refresh starts |
/// | expired or missing | otherwise | the result of the single in-flight fetch |
///
/// A failed refresh never replaces a still-valid token: it keeps being
/// served (stale-if-error) until its real expiry, while refreshes back off
/// exponentially with jitter and honour `Retry-After`, one IdP call per
/// step. While backing off with no usable token, callers get the last error
/// at once instead of each calling the IdP.
///
/// # Concurrent calls
///
/// Any number of concurrent calls for one key cause at most one fetch in
/// the process: the first caller that finds no usable token starts a fetch
/// in a spawned task, and every other caller, before or after, waits for
/// that task's result. The state is re-checked after taking the per-key
/// lock, so a caller that arrives as a fetch completes uses its token. A
/// caller that is dropped while waiting does not cancel the fetch.
///
/// Across processes sharing a store, the fetching task first re-reads the
/// store, then takes the key's lease; an instance that finds the lease taken
/// waits (at most the policy's lease wait) for the holder's token to appear
/// in the store, and fetches itself only if it does not.
///
/// # Example
///
/// ```
/// # use std::time::{Duration, SystemTime};
/// # use token_core::*;
/// # #[derive(Debug)] struct MyIdp;
/// # #[async_trait::async_trait] impl Credential for MyIdp {
/// #   fn id(&self) -> &str { "my-idp" }
/// #   async fn fetch(&self, _: &TokenRequest, _: Option<&AccessToken>) -> Result<AccessToken, CredentialError> {
/// #       Ok(AccessToken::new("t", SystemTime::now()).with_expires_in(Duration::from_secs(3600)))
/// #   }
/// # }
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Error> {
/// let cache = TokenCache::builder(MyIdp).build();
/// let request = TokenRequest::builder().scope("orders.read").build();
/// let token = cache.get_token(&request).await?;
/// assert_eq!(token.token_type().as_str(), "Bearer");
///
/// // For one fixed request, a handle skips the key lookup.
/// let handle = cache.handle(&request);
/// let header = handle.token().await?.authorization_header();
/// # let _ = header; Ok(()) }
/// ```
#[derive(Clone)]
pub struct TokenCache {
    inner: Arc<Inner>,
}

impl TokenCache {
    /// Starts building a cache around `credential`.
    pub fn builder(credential: impl Credential + 'static) -> TokenCacheBuilder {
        TokenCacheBuilder::new(Arc::new(credential))
    }

    /// Starts building a cache around a shared credential.
    pub fn builder_arc(credential: Arc<dyn Credential>) -> TokenCacheBuilder {
        TokenCacheBuilder::new(credential)
    }

    /// A token for `request`. See the type's docs for what happens when.
    #[inline]
    pub async fn get_token(&self, request: &TokenRequest) -> Result<Token, Error> {
        let slot = {
            let map = self.inner.slots.load();
            match map.get(request) {
                Some(slot) => {
                    if let Some(token) = self.inner.hit(slot) {
                        return Ok(token);
                    }
                    Arc::clone(slot)
                }
                None => {
                    drop(map);
                    self.inner.slot_for(request)
                }
            }
        };
        self.inner.slow(&slot).await
    }

    /// A handle pre-bound to `request`: the fastest way to get tokens for a
    /// fixed request.
    pub fn handle(&self, request: &TokenRequest) -> TokenHandle {
        self.inner.start_listener();
        TokenHandle {
            inner: Arc::clone(&self.inner),
            slot: self.inner.slot_for(request),
        }
    }

    /// Refreshes `request`'s token now and waits for the new one, joining a
    /// refresh that is already running instead of starting another. For a
    /// process that is about to exit with a token in its refresh window (a
    /// CLI), or to pick up a rotated credential at once.
    ///
    /// A failed refresh replaces nothing: the current token stays cached and
    /// keeps being served until it expires, and the error is returned here.
    /// While the key is backing off after a failure, the last error is
    /// returned at once without calling the IdP. With a shared store, another
    /// instance's fresh token is adopted instead of fetching.
    pub async fn refresh(&self, request: &TokenRequest) -> Result<Token, Error> {
        let slot = self.inner.slot_for(request);
        self.inner.refresh_now(&slot).await
    }

    /// Drops `rejected` wherever it is cached (hot slot and store), but only
    /// if it is still the cached token for `request`: after a resource
    /// answers 401, a burst of invalidations for the same old token causes
    /// one refresh, not one per 401. Says whether anything was dropped.
    pub async fn invalidate(&self, request: &TokenRequest, rejected: &AccessToken) -> bool {
        self.inner.invalidate(request, rejected).await
    }

    /// Keeps `request`'s token refreshed on a timer, even with no traffic,
    /// until the returned guard is dropped. Needs a Tokio runtime.
    pub fn keep_warm(&self, request: &TokenRequest) -> Result<KeepWarm, Error> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        self.inner.start_listener();
        let slot = self.inner.slot_for(request);
        let weak = Arc::downgrade(&self.inner);
        let task = runtime.spawn(keep_warm(weak, slot));
        Ok(KeepWarm { task })
    }

    /// The key `request` is stored under.
    pub fn cache_key(&self, request: &TokenRequest) -> CacheKey {
        CacheKey::new(self.inner.credential.id(), request)
    }

    /// Counters since the cache was built, with the store's own.
    pub fn stats(&self) -> CacheStats {
        let store = self
            .inner
            .store
            .as_ref()
            .map(|s| s.stats())
            .unwrap_or_default();
        self.inner.stats.snapshot(store)
    }

    /// The policy in force.
    pub fn policy(&self) -> &RefreshPolicy {
        &self.inner.policy
    }
}

impl fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCache")
            .field("credential", &self.inner.credential.id())
            .field("store", &self.inner.store)
            .field("keys", &self.inner.slots.load().len())
            .finish_non_exhaustive()
    }
}

/// The scheduled-refresh loop: sleeps until the token's refresh time,
/// refreshes it (or waits out the backoff), and starts over. Holds only a
/// weak reference while sleeping, so it never keeps a dropped cache alive.
async fn keep_warm(weak: Weak<Inner>, slot: Arc<Slot>) {
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let now = inner.clock.monotonic();
        let hot = slot.hot.load_full();
        let retry_at = slot.lock().retry_at;
        let wake_at = if now < hot.fresh_until {
            Some(hot.fresh_until)
        } else {
            retry_at.filter(|at| now < *at)
        };
        if let Some(at) = wake_at {
            let sleep = inner.clock.sleep(at - now);
            drop(inner);
            sleep.await;
            continue;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut rx = {
            let mut st = slot.lock();
            match &st.flight {
                Some(rx) => rx.clone(),
                None => inner.start_flight(&slot, &mut st, &runtime, now < hot.usable_until),
            }
        };
        let pause = inner.policy.backoff(1, None, crate::rng::unit_f64());
        let clock = Arc::clone(&inner.clock);
        drop(inner);
        let failed = match rx.wait_for(Option::is_some).await {
            Ok(v) => !matches!(&*v, Some(Ok(_))),
            Err(_) => true,
        };
        // A failure that set no backoff (a panic) must not spin the loop.
        if failed && slot.lock().retry_at.is_none() {
            clock.sleep(pause).await;
        }
    }
}

/// Keeps a key warm while alive; dropping it stops the timer.
#[derive(Debug)]
pub struct KeepWarm {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for KeepWarm {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A [`TokenCache`] bound to one request.
#[derive(Clone)]
pub struct TokenHandle {
    inner: Arc<Inner>,
    slot: Arc<Slot>,
}

impl TokenHandle {
    /// A token for the bound request.
    #[inline]
    pub async fn token(&self) -> Result<Token, Error> {
        if let Some(token) = self.inner.hit(&self.slot) {
            return Ok(token);
        }
        self.inner.slow(&self.slot).await
    }

    /// [`TokenCache::invalidate`] for the bound request.
    pub async fn invalidate(&self, rejected: &AccessToken) -> bool {
        self.inner.invalidate(&self.slot.request, rejected).await
    }

    /// The bound request.
    pub fn request(&self) -> &TokenRequest {
        &self.slot.request
    }

    /// The key the token is stored under.
    pub fn cache_key(&self) -> &CacheKey {
        &self.slot.key
    }
}

impl fmt::Debug for TokenHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenHandle")
            .field("key", &self.slot.key)
            .finish_non_exhaustive()
    }
}

/// Builds a [`TokenCache`].
pub struct TokenCacheBuilder {
    credential: Arc<dyn Credential>,
    store: Option<Arc<dyn CacheStore>>,
    policy: RefreshPolicy,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for TokenCacheBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCacheBuilder")
            .field("credential", &self.credential.id())
            .field("store", &self.store)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl TokenCacheBuilder {
    fn new(credential: Arc<dyn Credential>) -> Self {
        Self {
            credential,
            store: None,
            policy: RefreshPolicy::default(),
            clock: Arc::new(SystemClock),
        }
    }

    /// Where tokens are kept besides the in-process hot slots. Defaults to
    /// none: hot slots only, single-flight within the process.
    pub fn store(self, store: impl CacheStore + 'static) -> Self {
        self.store_arc(Arc::new(store))
    }

    /// [`store`](Self::store) for a store shared with other caches.
    pub fn store_arc(mut self, store: Arc<dyn CacheStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Timing knobs. Defaults to [`RefreshPolicy::default`].
    pub fn policy(mut self, policy: RefreshPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The source of time. Defaults to [`SystemClock`].
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Builds the cache. Needs no runtime; fetches need one.
    pub fn build(self) -> TokenCache {
        let epoch = self.clock.monotonic();
        let empty = Arc::new(Hot {
            token: AccessToken::new("", SystemTime::UNIX_EPOCH)
                .with_expires_at(SystemTime::UNIX_EPOCH),
            fresh_until: epoch,
            usable_until: epoch,
            stale: AtomicBool::new(false),
        });
        let events = self.store.as_ref().and_then(|s| s.subscribe());
        TokenCache {
            inner: Arc::new(Inner {
                events_pending: AtomicBool::new(events.is_some()),
                events: Mutex::new(events),
                credential: self.credential,
                store: self.store,
                policy: self.policy,
                clock: self.clock,
                epoch,
                slots: ArcSwap::from_pointee(SlotMap::default()),
                slots_write: Mutex::new(()),
                empty,
                stats: Counters::new(),
                store_down_until: AtomicU64::new(0),
            }),
        }
    }
}
