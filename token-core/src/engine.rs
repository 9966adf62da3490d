//! The engine: `TokenCache`, its builder, the pre-bound handle, and the
//! state they share.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::clock::{Clock, Epoch, SystemClock};
use crate::credential::Credential;
use crate::error::Error;
use crate::events::Events;
use crate::keys::KeyMap;
use crate::policy::{RefreshPolicy, DEFAULT_IDLE_WINDOW, DEFAULT_MAX_KEYS};
use crate::request::{CacheKey, TokenRequest};
use crate::slot::{FlightResult, Hot, Joined, Slot, Token, Want};
use crate::stats::{bump, CacheStats, Counters};
use crate::store::CacheStore;
use crate::store_gate::StoreGate;
use crate::token::AccessToken;
use crate::warm::KeepWarm;

/// How many times a caller looks a key up again after finding its slot
/// evicted under it, before fetching on the evicted slot (uncached).
const EVICTED_RETRIES: u32 = 3;

/// What a cache's handles, tasks and flights share.
pub(crate) struct Inner {
    credential: Arc<dyn Credential>,
    policy: RefreshPolicy,
    clock: Arc<dyn Clock>,
    /// `clock` is [`SystemClock`].
    system_clock: bool,
    /// Monotonic origin for the nanosecond deadlines in atomics.
    epoch: Epoch,
    keys: KeyMap,
    gate: StoreGate,
    stats: Counters,
    events: Events,
    /// The store is shared between instances: each installed token's
    /// refresh starts at a random moment within the policy's refresh spread.
    spread: bool,
    /// The store sends events: a wait for another instance's refresh is
    /// woken by them and polls slowly; without them it polls as it always
    /// did (20 ms, doubling).
    store_events: bool,
    /// The event listener and the idle sweeper are not started yet (they
    /// start on first use, when a runtime is sure to exist).
    background_pending: AtomicBool,
    /// The name metrics label this cache's IdP calls with (`profile`):
    /// set by [`TokenCacheBuilder::metrics_name`] or
    /// [`TokenCache::set_metrics_name`], else [`UNNAMED`](crate::metrics::UNNAMED).
    metrics_name: std::sync::OnceLock<Arc<str>>,
}

impl Inner {
    pub(crate) fn credential(&self) -> &Arc<dyn Credential> {
        &self.credential
    }

    /// The `profile` label of this cache's IdP call metrics.
    pub(crate) fn metrics_name(&self) -> &str {
        self.metrics_name
            .get()
            .map_or(crate::metrics::UNNAMED, |n| n)
    }

    pub(crate) fn policy(&self) -> &RefreshPolicy {
        &self.policy
    }

    pub(crate) fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    pub(crate) fn stats(&self) -> &Counters {
        &self.stats
    }

    pub(crate) fn gate(&self) -> &StoreGate {
        &self.gate
    }

    pub(crate) fn keys(&self) -> &KeyMap {
        &self.keys
    }

    /// Whether the store sends events (see [`StoreEvent`](crate::backend::StoreEvent)).
    pub(crate) fn store_events(&self) -> bool {
        self.store_events
    }

    pub(crate) fn nanos(&self, at: std::time::Instant) -> u64 {
        self.epoch.nanos(at)
    }

    /// The hit path: one atomic load, one clock read, two comparisons.
    #[inline(always)]
    fn hit(self: &Arc<Self>, slot: &Arc<Slot>) -> Option<Token> {
        let guard = slot.hot.load();
        // The system clock is read directly: no virtual call on the hit path.
        let now = if self.system_clock {
            std::time::Instant::now()
        } else {
            self.clock.monotonic()
        };
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
    fn refresh_window(self: &Arc<Self>, slot: &Arc<Slot>, hot: &Hot, now: std::time::Instant) {
        if hot.stale.load(Ordering::Relaxed) {
            bump(&self.stats.stale_served);
        }
        if slot.flying.load(Ordering::Acquire)
            || self.nanos(now) < slot.retry_at_nanos.load(Ordering::Relaxed)
        {
            return;
        }
        let _ = slot.join_or_start(self, Want::RefreshAhead, false);
    }

    /// The slow path: no usable token in the hot slot. Joins the running
    /// fetch or starts one, and waits for it. `None`: the slot was evicted,
    /// look the key up again.
    async fn slow(
        self: &Arc<Self>,
        slot: &Arc<Slot>,
        orphan_ok: bool,
    ) -> Option<Result<Token, Error>> {
        self.start_background();
        match slot.join_or_start(self, Want::Token, orphan_ok) {
            Err(e) => Some(Err(e)),
            Ok(Joined::Hit(token)) => Some(Ok(token)),
            Ok(Joined::Wait(rx)) => Some(self.wait(rx).await),
            Ok(Joined::Drive(rx, flight)) => Some(self.drive(rx, flight).await),
            Ok(Joined::Evicted | Joined::Nothing) => None,
        }
    }

    /// A token for `request`, creating its slot if needed: the slow path
    /// with its retries after evictions.
    async fn token(
        self: &Arc<Self>,
        request: &TokenRequest,
        mut slot: Arc<Slot>,
    ) -> Result<Token, Error> {
        let mut attempt = 0;
        loop {
            if let Some(result) = self.slow(&slot, attempt >= EVICTED_RETRIES).await {
                return result;
            }
            attempt += 1;
            slot = self.slot_for(request);
        }
    }

    /// Refreshes `request`'s token now, or joins the fetch already running,
    /// and waits for the result.
    async fn refresh(self: &Arc<Self>, request: &TokenRequest) -> Result<Token, Error> {
        self.start_background();
        let mut attempt = 0;
        loop {
            let slot = self.slot_for(request);
            match slot.join_or_start(self, Want::Refresh, attempt >= EVICTED_RETRIES)? {
                Joined::Hit(token) => return Ok(token),
                Joined::Wait(rx) => return self.wait(rx).await,
                Joined::Drive(rx, flight) => return self.drive(rx, flight).await,
                Joined::Evicted | Joined::Nothing => attempt += 1,
            }
        }
    }

    /// Runs a flight this caller started, then takes its result. Counted
    /// as a wait, before the flight runs, as for the callers that join it.
    async fn drive(
        &self,
        rx: watch::Receiver<FlightResult>,
        flight: crate::flight::Driven,
    ) -> Result<Token, Error> {
        bump(&self.stats.waits);
        flight.await;
        Self::result(rx).await
    }

    /// Waits for a flight's result.
    async fn wait(&self, rx: watch::Receiver<FlightResult>) -> Result<Token, Error> {
        bump(&self.stats.waits);
        Self::result(rx).await
    }

    /// A flight's result, once it is published.
    async fn result(mut rx: watch::Receiver<FlightResult>) -> Result<Token, Error> {
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

    /// Starts the store-event listener and the idle sweeper, once.
    fn start_background(self: &Arc<Self>) {
        if !self.background_pending.load(Ordering::Acquire) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.background_pending.swap(false, Ordering::AcqRel) {
            self.events.start(Arc::downgrade(self), &runtime);
            runtime.spawn(crate::keys::sweep_idle(Arc::downgrade(self)));
        }
    }

    /// Whether `hot` is the empty sentinel (no token at all).
    pub(crate) fn is_empty(&self, hot: &Arc<Hot>) -> bool {
        Arc::ptr_eq(hot, self.keys.empty())
    }

    /// Whether `hot` is a token that may still be served (not the empty
    /// sentinel, not a retired token).
    pub(crate) fn is_live(&self, hot: &Hot) -> bool {
        hot.usable_until > self.epoch.0
    }

    /// Takes a rejected token out of service; the caller holds the slot's
    /// lock. It stays in the slot as a dead entry (never served) so that the
    /// next fetch still sees it as `previous` (its refresh token is the
    /// newest this process knows) and refuses it from the store.
    pub(crate) fn retire(&self, slot: &Slot, hot: &Hot) {
        slot.hot.store(Arc::new(Hot {
            token: hot.token.clone(),
            fresh_until: self.epoch.0,
            usable_until: self.epoch.0,
            stale: AtomicBool::new(false),
        }));
    }

    /// Turns a scheduled token's wall-clock deadlines into monotonic ones.
    ///
    /// With a shared store, this instance's refresh starts at its own random
    /// moment within the policy's refresh spread after `refresh_at`, so that
    /// a fleet neither refreshes nor reads the store all at once: the
    /// earliest instance refreshes, the others find its token stored.
    pub(crate) fn make_hot(&self, token: AccessToken) -> Arc<Hot> {
        let wall = self.clock.now();
        let mono = self.clock.monotonic();
        let usable = self.policy.usable_until(&token);
        let mut refresh = token.refresh_at().unwrap_or(usable).min(usable);
        if self.spread {
            let spread = self.policy.refresh_spread(&token);
            let offset = spread.mul_f64(crate::rng::unit_f64());
            refresh = refresh.checked_add(offset).unwrap_or(usable).min(usable);
        }
        let until = |at: SystemTime| mono + at.duration_since(wall).unwrap_or_default();
        Arc::new(Hot {
            fresh_until: until(refresh),
            usable_until: until(usable),
            token,
            stale: Default::default(),
        })
    }

    fn slot_for(&self, request: &TokenRequest) -> Arc<Slot> {
        let now = self.clock.monotonic();
        self.keys.slot_for(request, now, |seen| {
            let key = CacheKey::new(self.credential.id(), request);
            Slot::new(request.clone(), key, Arc::clone(self.keys.empty()), seen)
        })
    }

    /// `request`'s slot, pinned against eviction while the returned pin
    /// lives (a handle, a keep-warm guard).
    fn pinned(&self, request: &TokenRequest) -> (Arc<Slot>, KeyPin) {
        let mut attempt = 0;
        loop {
            let slot = self.slot_for(request);
            let in_map = slot.pin();
            let pin = KeyPin(Arc::clone(&slot));
            // After repeated evictions, an evicted slot serves the handle
            // alone (it can be evicted only once).
            if in_map || attempt >= EVICTED_RETRIES {
                return (slot, pin);
            }
            attempt += 1;
        }
    }

    /// See [`TokenCache::invalidate`]. The floor is checked and set under
    /// the slot's lock, so of concurrent invalidations one wins and the
    /// others find the floor; nothing here is on the hit path.
    async fn invalidate(&self, request: &TokenRequest, rejected: &AccessToken) -> bool {
        let slot = self.keys.get(request);
        let mut dropped = false;
        if let Some(slot) = &slot {
            let mut st = slot.lock();
            // Plus one, so that 0 keeps meaning "never" at the epoch itself.
            let now = self.nanos(self.clock.monotonic()).saturating_add(1);
            let floor =
                u64::try_from(self.policy.invalidate_floor().as_nanos()).unwrap_or(u64::MAX);
            if st.invalidated_nanos != 0 && now.saturating_sub(st.invalidated_nanos) < floor {
                tracing::debug!(request = ?request, floor = ?self.policy.invalidate_floor(), "rejected token kept: the key was invalidated moments ago (invalidate floor)");
                return false;
            }
            let current = slot.hot.load();
            if self.is_live(&current) && current.token.same_secret(rejected) {
                self.retire(slot, &current);
                st.invalidated_nanos = now;
                dropped = true;
            }
        }
        if let Some(store) = self.gate.up(&self.stats) {
            let key = slot.map_or_else(
                || CacheKey::new(self.credential.id(), request),
                |s| s.key.clone(),
            );
            if let Ok(true) = self
                .gate
                .call(&self.stats, store.invalidate(&key, rejected))
                .await
            {
                dropped = true;
            }
        }
        if dropped {
            bump(&self.stats.invalidations);
            tracing::info!(request = request.canonical(), "rejected token invalidated");
        }
        dropped
    }
}

/// Keeps a key in the map (never evicted) while alive.
pub(crate) struct KeyPin(Arc<Slot>);

impl Drop for KeyPin {
    fn drop(&mut self) {
        self.0.unpin();
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
/// in the store, and fetches itself only if it does not. The store's
/// [`StoreEvent::Updated`](crate::backend::StoreEvent::Updated) wakes the wait, which
/// then reads the store once; a slow poll
/// ([`lease_poll`](RefreshPolicy::lease_poll)) covers a lost event.
///
/// With a shared store, each instance starts its refresh at its own random
/// moment within the policy's
/// [`refresh_spread`](RefreshPolicy::refresh_spread) after `refresh_at`
/// (still in the refresh window, so callers are served meanwhile): the
/// earliest instance refreshes, and the others find its token in the store,
/// so a fleet reads a refreshed key about once per instance, spread over
/// that span rather than all at once.
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

    /// Names this cache for its metrics (the `profile` label of
    /// `tokencache_idp_request_duration_seconds`), when it was built
    /// without [`TokenCacheBuilder::metrics_name`]: for a cache built by
    /// code that does not know the name (token-profile builds a profile's
    /// cache; the sidecar names it). The first name given stays; returns
    /// whether this one was taken.
    pub fn set_metrics_name(&self, name: &str) -> bool {
        self.inner.metrics_name.set(Arc::from(name)).is_ok()
    }

    /// The name this cache's metrics carry (`unnamed` until named).
    pub fn metrics_name(&self) -> &str {
        self.inner.metrics_name()
    }

    /// A token for `request`. See the type's docs for what happens when.
    #[inline]
    pub async fn get_token(&self, request: &TokenRequest) -> Result<Token, Error> {
        let inner = &self.inner;
        let found = inner.keys.with(request, |slot| {
            let slot = slot?;
            slot.touch();
            Some(inner.hit(slot).ok_or_else(|| Arc::clone(slot)))
        });
        let slot = match found {
            Some(Ok(token)) => return Ok(token),
            Some(Err(slot)) => slot,
            None => inner.slot_for(request),
        };
        inner.token(request, slot).await
    }

    /// The token for `request` if one is cached in this process and fresh
    /// (before its refresh time), without fetching or waiting; a token found
    /// counts as a hit, none counts nothing. For callers that must decide before a possible IdP call (a
    /// rate limit on cold keys, as `token_http::ExchangeCache` has).
    pub fn peek(&self, request: &TokenRequest) -> Option<Token> {
        let inner = &self.inner;
        inner
            .keys
            .with(request, |slot| slot.and_then(|slot| inner.hit(slot)))
    }

    /// A builder for another cache that shares this one's credential,
    /// store, policy and clock, with its own keys and limits: a per-caller
    /// cache next to a profile's own (the gateway's `exchange` routes).
    /// The new cache has no [metrics name](TokenCacheBuilder::metrics_name)
    /// unless given one.
    pub fn derive(&self) -> TokenCacheBuilder {
        let inner = &self.inner;
        TokenCacheBuilder {
            credential: Arc::clone(&inner.credential),
            store: inner.gate.store().cloned(),
            policy: inner.policy.clone(),
            clock: Arc::clone(&inner.clock),
            system_clock: inner.system_clock,
            max_keys: DEFAULT_MAX_KEYS,
            idle_window: DEFAULT_IDLE_WINDOW,
            // Not this cache's name: the engine's counters are published as
            // absolute values per name, and two caches under one name would
            // overwrite each other's.
            metrics_name: None,
        }
    }

    /// A handle pre-bound to `request`: the fastest way to get tokens for a
    /// fixed request.
    ///
    /// The handle's key is never evicted while the handle (or a clone of it)
    /// lives: it counts towards [`max_keys`](TokenCacheBuilder::max_keys)
    /// but is never chosen to make room.
    pub fn handle(&self, request: &TokenRequest) -> TokenHandle {
        self.inner.start_background();
        let (slot, pin) = self.inner.pinned(request);
        TokenHandle {
            inner: Arc::clone(&self.inner),
            slot,
            _pin: Arc::new(pin),
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
        self.inner.refresh(request).await
    }

    /// Drops `rejected` wherever it is cached (hot slot and store), but only
    /// if it is still the cached token for `request`: after a resource
    /// answers 401, a burst of invalidations for the same old token causes
    /// one refresh, not one per 401. Says whether anything was dropped.
    ///
    /// # Floor
    ///
    /// After an invalidation drops a key's token, further invalidations of
    /// that key drop nothing for
    /// [`RefreshPolicy::invalidate_floor`] (30 s by default): the token
    /// obtained to replace the rejected one is not forced out again moments
    /// later. A resource that rejects every token therefore costs at most
    /// one forced refresh per key per floor, however many requests retry on
    /// its 401s. The floor lives here, not in each caller, because every
    /// caller that retries on `401` (the reqwest middleware, the tower
    /// layer, the sidecar's gateway) needs the same bound. It is per
    /// process: another instance sharing the store has its own.
    pub async fn invalidate(&self, request: &TokenRequest, rejected: &AccessToken) -> bool {
        self.inner.invalidate(request, rejected).await
    }

    /// Keeps `request`'s token refreshed on a timer, even with no traffic,
    /// until the returned guard is dropped. Needs a Tokio runtime. Like a
    /// handle's, the key is never evicted while the guard lives.
    pub fn keep_warm(&self, request: &TokenRequest) -> Result<KeepWarm, Error> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        self.inner.start_background();
        let (slot, pin) = self.inner.pinned(request);
        let weak = Arc::downgrade(&self.inner);
        let task = runtime.spawn(crate::warm::keep_warm(weak, slot));
        Ok(KeepWarm::new(task, pin))
    }

    /// The key `request` is stored under.
    pub fn cache_key(&self, request: &TokenRequest) -> CacheKey {
        CacheKey::new(self.inner.credential.id(), request)
    }

    /// Counters since the cache was built, with the store's own.
    pub fn stats(&self) -> CacheStats {
        let inner = &self.inner;
        let store = inner.gate.store().map(|s| s.stats()).unwrap_or_default();
        let mut stats = inner.stats.snapshot(store);
        stats.keys = inner.keys.len() as u64;
        stats.evictions = inner.keys.evictions();
        stats
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
            .field("store", &self.inner.gate.store())
            .field("keys", &self.inner.keys.len())
            .finish_non_exhaustive()
    }
}

/// A [`TokenCache`] bound to one request.
#[derive(Clone)]
pub struct TokenHandle {
    inner: Arc<Inner>,
    slot: Arc<Slot>,
    /// Keeps the key in the map while any clone of the handle lives.
    _pin: Arc<KeyPin>,
}

impl TokenHandle {
    /// A token for the bound request.
    #[inline]
    pub async fn token(&self) -> Result<Token, Error> {
        if let Some(token) = self.inner.hit(&self.slot) {
            return Ok(token);
        }
        // A pinned slot is never evicted; if it was before the pin took
        // hold, it serves this handle alone. The slow path's future is boxed
        // so that this one stays small: the hit path then moves less.
        match Box::pin(self.inner.slow(&self.slot, true)).await {
            Some(result) => result,
            None => Err(Error::FetchCancelled),
        }
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
    system_clock: bool,
    max_keys: usize,
    idle_window: Duration,
    metrics_name: Option<String>,
}

impl fmt::Debug for TokenCacheBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCacheBuilder")
            .field("credential", &self.credential.id())
            .field("store", &self.store)
            .field("policy", &self.policy)
            .field("max_keys", &self.max_keys)
            .field("idle_window", &self.idle_window)
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
            system_clock: true,
            max_keys: DEFAULT_MAX_KEYS,
            idle_window: DEFAULT_IDLE_WINDOW,
            metrics_name: None,
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

    /// The name this cache's metrics carry as their `profile` label (a
    /// profile or service name: bounded, and never derived from a secret).
    /// Defaults to `unnamed`. See [`TokenCache::set_metrics_name`].
    pub fn metrics_name(mut self, name: impl Into<String>) -> Self {
        self.metrics_name = Some(name.into());
        self
    }

    /// Timing knobs. Defaults to [`RefreshPolicy::default`].
    pub fn policy(mut self, policy: RefreshPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The source of time. Defaults to [`SystemClock`].
    pub fn clock<C: Clock>(mut self, clock: C) -> Self {
        self.system_clock = std::any::TypeId::of::<C>() == std::any::TypeId::of::<SystemClock>();
        self.clock = Arc::new(clock);
        self
    }

    /// How many keys the cache holds in memory at most (at least 1); past
    /// it, a new key evicts the least recently used ones (CLOCK). Defaults
    /// to [`DEFAULT_MAX_KEYS`]. Keys pinned by a live [`TokenHandle`] or
    /// [`KeepWarm`] are never evicted, so with more of them than this the
    /// cache holds more.
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys;
        self
    }

    /// How long a key whose token is no longer usable stays after its last
    /// request before it is dropped (within half a window more). Defaults to
    /// [`DEFAULT_IDLE_WINDOW`].
    pub fn idle_window(mut self, window: Duration) -> Self {
        self.idle_window = window;
        self
    }

    /// Builds the cache. Needs no runtime; fetches need one.
    pub fn build(self) -> TokenCache {
        let epoch = Epoch(self.clock.monotonic());
        let empty = Arc::new(Hot {
            token: AccessToken::new("", SystemTime::UNIX_EPOCH)
                .with_expires_at(SystemTime::UNIX_EPOCH),
            fresh_until: epoch.0,
            usable_until: epoch.0,
            stale: AtomicBool::new(false),
        });
        let events = self.store.as_ref().and_then(|s| s.subscribe());
        let spread = self.store.as_ref().is_some_and(|s| s.capabilities().shared);
        let store_events = events.is_some();
        let keys = KeyMap::new(
            self.max_keys,
            self.idle_window,
            epoch,
            empty,
            events.is_some(),
        );
        let gate = StoreGate::new(
            self.store,
            Arc::clone(&self.clock),
            epoch,
            self.policy.store_timeout(),
            self.policy.store_cooldown(),
        );
        TokenCache {
            inner: Arc::new(Inner {
                credential: self.credential,
                policy: self.policy,
                clock: self.clock,
                system_clock: self.system_clock,
                epoch,
                keys,
                gate,
                stats: Counters::new(),
                events: Events::new(events),
                spread,
                store_events,
                background_pending: AtomicBool::new(true),
                metrics_name: match self.metrics_name {
                    Some(n) => std::sync::OnceLock::from(Arc::from(n)),
                    None => std::sync::OnceLock::new(),
                },
            }),
        }
    }
}
