//! The key map: every key's [`Slot`], found without a lock, added in
//! amortized O(1), and bounded.
//!
//! # Eviction
//!
//! Two rules keep the map small:
//!
//! - **Idle:** a key whose token is no longer usable and that nobody asked
//!   for within the idle window is dropped. A sweep runs every half window
//!   (in a background task, on the engine's clock), so such a key goes
//!   between one and one and a half windows after its last use.
//! - **Bound:** past `max_keys`, the key that is inserting evicts others by
//!   CLOCK (second chance): a hand walks the keys in insertion order, a key
//!   looked up since the hand last passed has its reference flag cleared and
//!   stays, the first key without one goes. CLOCK approximates
//!   least-recently-used while the hit path only reads a flag (and writes it
//!   when it was cleared): an LRU list would need a lock or a write on every
//!   hit, which the hit path cannot afford. Keys that are no longer used lose
//!   their flag at the first pass and go first; keys in steady use stay.
//!
//! A key held by a live [`TokenHandle`](crate::TokenHandle) or
//! [`KeepWarm`](crate::KeepWarm) guard, or with a fetch running, is never
//! evicted: it counts towards `max_keys`, so the map can exceed its bound
//! when more keys than that are pinned. Evicting a key drops its token from
//! memory (the store keeps its copy): the next request for it misses and
//! fetches, from the store first. The token's secret is zeroized as its last
//! reference is dropped; a caller still holding a [`Token`](crate::Token) of
//! it keeps a valid one until it lets go.

use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use crate::clock::Epoch;
use crate::engine::Inner;
use crate::request::{CacheKey, TokenRequest};
use crate::slot::{Hot, Slot};

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

/// How many keys one step of a sweep looks at before it lets other tasks
/// run.
const SWEEP_CHUNK: usize = 1024;

pub(crate) struct KeyMap {
    by_request: papaya::HashMap<TokenRequest, Arc<Slot>, BuildHasherDefault<Prehashed>>,
    /// The same slots by cache key, for store events; only when the store
    /// sends events.
    by_key: Option<papaya::HashMap<CacheKey, Arc<Slot>>>,
    /// Every slot in insertion order, and the CLOCK hand.
    ring: Mutex<Ring>,
    len: AtomicUsize,
    evictions: AtomicU64,
    max_keys: usize,
    idle_window: Duration,
    epoch: Epoch,
    /// The always-expired token of empty and evicted slots.
    empty: Arc<Hot>,
}

#[derive(Default)]
struct Ring {
    slots: Vec<Arc<Slot>>,
    hand: usize,
}

impl Ring {
    /// Removes the slot at `at` in O(1): the last slot takes its place (and
    /// the hand follows it if it pointed there).
    fn remove(&mut self, at: usize) {
        self.slots.swap_remove(at);
        if self.hand == self.slots.len() && at < self.slots.len() {
            self.hand = at;
        }
    }
}

impl KeyMap {
    pub(crate) fn new(
        max_keys: usize,
        idle_window: Duration,
        epoch: Epoch,
        empty: Arc<Hot>,
        events: bool,
    ) -> Self {
        Self {
            by_request: papaya::HashMap::default(),
            by_key: events.then(papaya::HashMap::new),
            ring: Mutex::default(),
            len: AtomicUsize::new(0),
            evictions: AtomicU64::new(0),
            max_keys: max_keys.max(1),
            idle_window,
            epoch,
            empty,
        }
    }

    pub(crate) fn empty(&self) -> &Arc<Hot> {
        &self.empty
    }

    /// Runs `f` on `request`'s slot, if there is one, without a lock or a
    /// reference count.
    #[inline]
    pub(crate) fn with<R>(
        &self,
        request: &TokenRequest,
        f: impl FnOnce(Option<&Arc<Slot>>) -> R,
    ) -> R {
        let map = self.by_request.pin();
        f(map.get(request))
    }

    /// `request`'s slot, if there is one.
    pub(crate) fn get(&self, request: &TokenRequest) -> Option<Arc<Slot>> {
        self.with(request, |slot| slot.cloned())
    }

    /// The slot stored under `key`, for a store event.
    pub(crate) fn by_key(&self, key: &CacheKey) -> Option<Arc<Slot>> {
        self.by_key.as_ref()?.pin().get(key).cloned()
    }

    /// `request`'s slot, created (by `make`) if there is none. Past the
    /// bound, the new key makes room by evicting others.
    pub(crate) fn slot_for(
        &self,
        request: &TokenRequest,
        now: Instant,
        make: impl FnOnce(u64) -> Slot,
    ) -> Arc<Slot> {
        if let Some(slot) = self.get(request) {
            return slot;
        }
        let fresh = Arc::new(make(self.epoch.nanos(now)));
        let slot = {
            let map = self.by_request.pin();
            let slot = map.get_or_insert(request.clone(), Arc::clone(&fresh));
            if !Arc::ptr_eq(slot, &fresh) {
                // Another caller inserted it first.
                return Arc::clone(slot);
            }
            Arc::clone(slot)
        };
        if let Some(by_key) = &self.by_key {
            by_key.pin().insert(slot.key.clone(), Arc::clone(&slot));
        }
        let len = self.len.fetch_add(1, Ordering::Relaxed) + 1;
        let mut ring = self.ring();
        match (len > self.max_keys)
            .then(|| self.clock_victim(&mut ring, now))
            .flatten()
        {
            // Classic CLOCK: the new key takes the victim's place, behind
            // the hand, so it is the last the hand comes back to.
            Some(at) => ring.slots[at] = Arc::clone(&slot),
            None => ring.slots.push(Arc::clone(&slot)),
        }
        // Concurrent inserts may have left the map over its bound by more
        // than one key.
        while self.len.load(Ordering::Relaxed) > self.max_keys {
            match self.clock_victim(&mut ring, now) {
                Some(at) => ring.remove(at),
                None => break,
            }
        }
        drop(ring);
        self.flush();
        slot
    }

    /// Frees what this thread retired from the maps (evicted entries, and
    /// the old table when an insert finished a resize) as soon as no reader
    /// can see it. Without it, a thread that only inserts keeps the tables
    /// it retired until it has retired a batch of them: memory that grows
    /// with every round of keys that come and go.
    fn flush(&self) {
        use papaya::Guard as _;
        self.by_request.guard().flush();
        if let Some(by_key) = &self.by_key {
            by_key.guard().flush();
        }
    }

    /// CLOCK: advances the hand, giving keys used since it last passed a
    /// second chance, and evicts the first key without one that is not
    /// pinned or fetching. Returns its position in the ring (the hand has
    /// moved past it), or `None` if two turns found nothing evictable.
    fn clock_victim(&self, ring: &mut Ring, now: Instant) -> Option<usize> {
        let now_nanos = self.epoch.nanos(now);
        for _ in 0..2 * ring.slots.len() {
            if ring.hand >= ring.slots.len() {
                ring.hand = 0;
            }
            let at = ring.hand;
            ring.hand += 1;
            let slot = &ring.slots[at];
            if !slot.age(now_nanos) && self.evict(slot) {
                return Some(at);
            }
        }
        None
    }

    /// Drops `slot` from the maps, unless it is pinned or fetching.
    fn evict(&self, slot: &Arc<Slot>) -> bool {
        if !slot.evict(&self.empty) {
            return false;
        }
        let _ = self
            .by_request
            .pin()
            .remove_if(&slot.request, |_, v| Arc::ptr_eq(v, slot));
        if let Some(by_key) = &self.by_key {
            let _ = by_key
                .pin()
                .remove_if(&slot.key, |_, v| Arc::ptr_eq(v, slot));
        }
        self.len.fetch_sub(1, Ordering::Relaxed);
        self.evictions.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// One step of an idle sweep at `now`, over the ring from position
    /// `from`: ages each key and evicts those with no usable token that were
    /// last asked for an idle window or more ago. Returns where the next
    /// step starts, or `None` when the sweep is done.
    pub(crate) fn sweep_step(&self, now: Instant, from: usize) -> Option<usize> {
        let now_nanos = self.epoch.nanos(now);
        let window = u64::try_from(self.idle_window.as_nanos()).unwrap_or(u64::MAX);
        let mut ring = self.ring();
        let mut at = from;
        let end = from.saturating_add(SWEEP_CHUNK);
        while at < ring.slots.len() && at < end {
            let slot = &ring.slots[at];
            let idle = !slot.age(now_nanos)
                && now_nanos.saturating_sub(slot.last_seen_nanos()) >= window
                && now >= slot.hot.load().usable_until;
            if idle && self.evict(slot) {
                ring.remove(at);
            } else {
                at += 1;
            }
        }
        let next = (at < ring.slots.len()).then_some(at);
        drop(ring);
        self.flush();
        next
    }

    /// How often the idle sweep runs: every half window, at most once a
    /// millisecond.
    pub(crate) fn sweep_interval(&self) -> Duration {
        (self.idle_window / 2).max(Duration::from_millis(1))
    }

    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub(crate) fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    fn ring(&self) -> MutexGuard<'_, Ring> {
        // Every statement leaves the ring consistent.
        self.ring.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The idle sweeper: every [`KeyMap::sweep_interval`] of the engine's clock,
/// one sweep in steps, letting other tasks run between them. Holds only a
/// weak reference while sleeping, so it never keeps a dropped cache alive.
pub(crate) async fn sweep_idle(weak: Weak<Inner>) {
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let sleep = inner.clock().sleep(inner.keys().sweep_interval());
        drop(inner);
        sleep.await;
        let mut from = 0;
        loop {
            let Some(inner) = weak.upgrade() else { return };
            let before = inner.keys().evictions();
            let next = inner.keys().sweep_step(inner.clock().monotonic(), from);
            let evicted = inner.keys().evictions() - before;
            if evicted > 0 {
                tracing::debug!(
                    evicted,
                    keys = inner.keys().len(),
                    "dropped idle keys with expired tokens"
                );
            }
            drop(inner);
            match next {
                Some(at) => from = at,
                None => break,
            }
            tokio::task::yield_now().await;
        }
    }
}
