//! Per-key state: the hot slot read without locks, the locked state behind
//! it, "join the running fetch or start one", and what a hit returns.

use std::fmt;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, Guard};
use tokio::sync::{watch, Notify};

use crate::engine::Inner;
use crate::error::Error;
use crate::flight::Flight;
use crate::policy::RefreshPolicy;
use crate::request::{CacheKey, TokenRequest};
use crate::stats::bump;
use crate::token::AccessToken;

/// A token as the hot path sees it: the wall-clock deadlines of the token
/// turned into monotonic ones when it was installed, so the hit path reads
/// one clock and compares two integers.
///
/// Aligned to (and so padded to a multiple of) a 64-byte cache line: every
/// thread reads it on every hit, and a small heap neighbour that another
/// thread writes would otherwise share its line and make hits from two
/// threads contend. (Two lines, 128 bytes, would also keep it off the line
/// an adjacent-line prefetcher pairs with it, at 128 more bytes per key.)
#[repr(align(64))]
pub(crate) struct Hot {
    pub(crate) token: AccessToken,
    /// Before this, the token is fresh: serve it, nothing else.
    pub(crate) fresh_until: Instant,
    /// Before this (and after `fresh_until`), serve it and refresh.
    pub(crate) usable_until: Instant,
    /// A refresh of this token failed: serving it is stale-if-error.
    pub(crate) stale: AtomicBool,
}

/// What a fetch publishes to everyone waiting on it.
pub(crate) type FlightResult = Option<Result<Arc<Hot>, Error>>;

/// Everything the engine knows about one key.
///
/// Not cache-line aligned, unlike [`Hot`]: a cache holds one slot per key,
/// up to hundreds of thousands, and padding would double its size. On a hit
/// only `hot` and `used` are read, and neither is written while the token
/// is current.
pub(crate) struct Slot {
    /// The current token; an always-expired sentinel when there is none, so
    /// the hit path has no `Option` to check.
    pub(crate) hot: ArcSwap<Hot>,
    /// Looked up by `get_token` since the key map last aged it (the CLOCK
    /// reference bit). Written only when clear, so hits from many threads
    /// read it without contending.
    used: AtomicBool,
    /// A fetch for this key is running.
    pub(crate) flying: AtomicBool,
    /// Background refreshes must not start before this (nanoseconds since the
    /// engine's monotonic epoch; 0 = no backoff). Mirrors `state.retry_at`
    /// for the lock-free check on the hit path.
    pub(crate) retry_at_nanos: AtomicU64,
    /// When the key was last asked for, as far as the key map knows
    /// (nanoseconds since the engine's epoch): set by misses, and by aging
    /// a set `used` flag.
    last_seen_nanos: AtomicU64,
    pub(crate) request: TokenRequest,
    pub(crate) key: CacheKey,
    state: Mutex<SlotState>,
}

/// The part of a slot's state that changes only under its lock.
#[derive(Default)]
pub(crate) struct SlotState {
    /// The running fetch, if any: subscribe to wait for it.
    pub(crate) flight: Option<watch::Receiver<FlightResult>>,
    /// Consecutive failed fetches.
    failures: u32,
    /// The last failure, handed to callers while backing off (boxed: most
    /// keys never have one, and every key has a slot).
    last_error: Option<Box<Error>>,
    /// No new fetch before this.
    retry_at: Option<Instant>,
    /// Live handles and keep-warm guards of this key: while any is alive,
    /// the key is never evicted.
    pins: u32,
    /// Dropped from the key map: whoever finds it so looks the key up again.
    evicted: bool,
    /// When this key's token was last invalidated (nanoseconds since the
    /// engine's monotonic epoch, plus one; 0 = never): the floor on forced
    /// refreshes.
    pub(crate) invalidated_nanos: u64,
    /// Rung when another instance stores a token for this key, while the
    /// running flight waits for that instance's refresh (set by the flight
    /// just before it tries the lease, cleared when it stops waiting).
    waiter: Option<Arc<Notify>>,
}

/// What [`SlotState::record`] made of a fetch's result.
pub(crate) enum Recorded {
    Ok,
    /// Failed; the key backs off until the given time.
    BackingOff {
        failures: u32,
        delay: Duration,
    },
    /// Failed with an error that does not back off (a cancelled fetch).
    Failed,
}

impl SlotState {
    /// Books a fetch's result: success clears the backoff; a failure that
    /// backs off counts and schedules the next attempt by the policy
    /// (exponential, jittered, honouring `Retry-After`).
    pub(crate) fn record(
        &mut self,
        result: &Result<Arc<Hot>, Error>,
        policy: &RefreshPolicy,
        now: Instant,
    ) -> Recorded {
        self.flight = None;
        match result {
            Ok(_) => {
                self.failures = 0;
                self.last_error = None;
                self.retry_at = None;
                Recorded::Ok
            }
            Err(err) if err.backs_off() => {
                self.failures = self.failures.saturating_add(1);
                let delay =
                    policy.backoff(self.failures, err.retry_after(), crate::rng::unit_f64());
                self.retry_at = Some(now + delay);
                self.last_error = Some(Box::new(err.clone()));
                Recorded::BackingOff {
                    failures: self.failures,
                    delay,
                }
            }
            Err(_) => Recorded::Failed,
        }
    }

    /// The error to answer with at once while backing off at `now`.
    fn backing_off(&self, now: Instant) -> Option<&Error> {
        match (self.retry_at, &self.last_error) {
            (Some(at), Some(err)) if now < at => Some(&**err),
            _ => None,
        }
    }

    /// When the current backoff ends.
    pub(crate) fn retry_at(&self) -> Option<Instant> {
        self.retry_at
    }
}

/// Why a caller wants a fetch, which decides what [`Slot::join_or_start`]
/// does when none is running.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Want {
    /// A hit found the token in its refresh window: start a background
    /// refresh unless one runs or the key is backing off; wait for nothing.
    RefreshAhead,
    /// A miss: a usable token now.
    Token,
    /// [`TokenCache::refresh`](crate::TokenCache::refresh): a new token now.
    Refresh,
    /// The keep-warm timer: refresh now, even while backing off (the timer
    /// waits out the backoff itself).
    Warm,
}

/// What [`Slot::join_or_start`] found or did.
pub(crate) enum Joined {
    /// A usable token appeared while the lock was taken.
    Hit(Token),
    /// Wait on this fetch (running already, or just started).
    Wait(watch::Receiver<FlightResult>),
    /// Run this fetch (just started, for this caller to drive), then read
    /// its result from the receiver.
    Drive(watch::Receiver<FlightResult>, crate::flight::Driven),
    /// Nothing to wait for (a background refresh started, or was not needed).
    Nothing,
    /// The slot left the key map: look the key up again.
    Evicted,
}

impl Slot {
    pub(crate) fn new(
        request: TokenRequest,
        key: CacheKey,
        empty: Arc<Hot>,
        seen_nanos: u64,
    ) -> Self {
        Self {
            hot: ArcSwap::new(empty),
            used: AtomicBool::new(false),
            flying: AtomicBool::new(false),
            retry_at_nanos: AtomicU64::new(0),
            last_seen_nanos: AtomicU64::new(seen_nanos),
            request,
            key,
            state: Mutex::new(SlotState::default()),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, SlotState> {
        // The state is consistent after every statement, so a panic elsewhere
        // while holding the lock leaves nothing half-done.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks the key as used (the hit path of `get_token`): a load, and a
    /// store only when the flag was cleared since.
    #[inline]
    pub(crate) fn touch(&self) {
        if !self.used.load(Ordering::Relaxed) {
            self.used.store(true, Ordering::Relaxed);
        }
    }

    /// Records a miss at `now_nanos` (exact, unlike the `used` flag).
    fn seen(&self, now_nanos: u64) {
        self.last_seen_nanos.store(now_nanos, Ordering::Relaxed);
    }

    /// CLOCK aging: clears the `used` flag, moving `last_seen` up to
    /// `now_nanos` if it was set. Says whether it was set.
    pub(crate) fn age(&self, now_nanos: u64) -> bool {
        let used = self.used.swap(false, Ordering::Relaxed);
        if used {
            self.seen(now_nanos);
        }
        used
    }

    /// When the key was last asked for, at the latest.
    pub(crate) fn last_seen_nanos(&self) -> u64 {
        self.last_seen_nanos.load(Ordering::Relaxed)
    }

    /// Pins the key against eviction (a handle or keep-warm guard); undone
    /// by [`unpin`](Self::unpin). Says whether the slot is still in the key
    /// map (not evicted before the pin).
    pub(crate) fn pin(&self) -> bool {
        let mut st = self.lock();
        st.pins += 1;
        !st.evicted
    }

    pub(crate) fn unpin(&self) {
        let mut st = self.lock();
        st.pins = st.pins.saturating_sub(1);
    }

    /// Registers (or, with `None`, clears) the running flight's wake-up for
    /// [`wake_waiter`](Self::wake_waiter).
    pub(crate) fn set_waiter(&self, waiter: Option<Arc<Notify>>) {
        self.lock().waiter = waiter;
    }

    /// Wakes the flight waiting for another instance's token, if one is
    /// registered (a wake-up that comes before the flight sleeps is kept for
    /// it). Says whether one was.
    pub(crate) fn wake_waiter(&self) -> bool {
        match &self.lock().waiter {
            Some(waiter) => {
                waiter.notify_one();
                true
            }
            None => false,
        }
    }

    /// Marks the slot evicted and drops its token and last error, unless
    /// the key is pinned or a fetch is running. The token's secret is
    /// zeroized when the last reader lets go of it (a caller holding a
    /// [`Token`] keeps a valid one).
    pub(crate) fn evict(&self, empty: &Arc<Hot>) -> bool {
        let mut st = self.lock();
        if st.evicted || st.pins > 0 || st.flight.is_some() {
            return false;
        }
        st.evicted = true;
        st.last_error = None;
        self.hot.store(Arc::clone(empty));
        true
    }

    /// Joins the running fetch for this key or starts one, as `want` asks.
    /// Every path that needs a fetch goes through here, under the slot's
    /// lock, so at most one fetch per key runs in the process.
    ///
    /// An evicted slot answers [`Joined::Evicted`], unless `orphan_ok` lets
    /// the fetch run on it anyway (after repeated evictions, or for a pinned
    /// handle's own slot): its token is then handed to its callers but is no
    /// longer in the key map.
    pub(crate) fn join_or_start(
        self: &Arc<Self>,
        inner: &Arc<Inner>,
        want: Want,
        orphan_ok: bool,
    ) -> Result<Joined, Error> {
        let now = inner.clock().monotonic();
        let mut st = self.lock();
        if st.evicted && !orphan_ok {
            return Ok(match want {
                Want::RefreshAhead => Joined::Nothing,
                _ => Joined::Evicted,
            });
        }
        let guard = self.hot.load();
        let usable = now < guard.usable_until;
        match want {
            Want::RefreshAhead => {
                if st.flight.is_some() || st.retry_at.is_some_and(|at| now < at) {
                    return Ok(Joined::Nothing);
                }
                let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                    return Ok(Joined::Nothing);
                };
                tracing::debug!(key = %self.key, "token in its refresh window; refreshing in the background");
                Flight::start(inner, self, &mut st, &runtime, true, false);
                return Ok(Joined::Nothing);
            }
            Want::Token => {
                self.seen(inner.nanos(now));
                // Checked under the lock: a fetch may have just finished.
                if usable {
                    inner.stats().hits.incr();
                    return Ok(Joined::Hit(Token::from_guard(guard)));
                }
                bump(&inner.stats().misses);
            }
            Want::Refresh => self.seen(inner.nanos(now)),
            Want::Warm => {}
        }
        if let Some(rx) = &st.flight {
            return Ok(Joined::Wait(rx.clone()));
        }
        if want != Want::Warm {
            if let Some(err) = st.backing_off(now) {
                bump(&inner.stats().backoff_rejections);
                return Err(err.clone());
            }
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let refresh = want != Want::Token && usable;
        // A caller that waits for the token anyway runs the fetch itself
        // (no spawn, no cross-thread wake-up); keep-warm's timer spawns it.
        let driven = matches!(want, Want::Token | Want::Refresh);
        Ok(
            match Flight::start(inner, self, &mut st, &runtime, refresh, driven) {
                (rx, Some(flight)) => Joined::Drive(rx, flight),
                (rx, None) => Joined::Wait(rx),
            },
        )
    }
}

/// A token handed out by the cache.
///
/// Dereferences to [`AccessToken`]. On the hit path it is a borrow of the
/// cached token, not a copy: creating it touches no shared reference count,
/// so many threads can hit the same key without contending. Keep it for the
/// duration of a request; to keep a token longer, take
/// [`to_access_token`](Self::to_access_token).
pub struct Token {
    guard: Guard<Arc<Hot>>,
}

impl Token {
    #[inline]
    pub(crate) fn from_guard(guard: Guard<Arc<Hot>>) -> Self {
        Self { guard }
    }

    pub(crate) fn from_arc(hot: Arc<Hot>) -> Self {
        Self {
            guard: Guard::from_inner(hot),
        }
    }

    /// An owned copy of the token.
    pub fn to_access_token(&self) -> AccessToken {
        self.guard.token.clone()
    }
}

impl Deref for Token {
    type Target = AccessToken;

    #[inline]
    fn deref(&self) -> &AccessToken {
        &self.guard.token
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.guard.token, f)
    }
}
