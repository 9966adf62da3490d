//! Per-key state: the hot slot read without locks, and what a hit returns.

use std::fmt;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use arc_swap::{ArcSwap, Guard};
use tokio::sync::watch;

use crate::error::Error;
use crate::request::{CacheKey, TokenRequest};
use crate::token::AccessToken;

/// A token as the hot path sees it: the wall-clock deadlines of the token
/// turned into monotonic ones when it was installed, so the hit path reads
/// one clock and compares two integers.
///
/// Aligned to (and so padded to a multiple of) 128 bytes, two cache lines:
/// every thread reads it on every hit, and a small heap neighbour that
/// another thread writes (arc_swap's per-thread debt nodes are such
/// neighbours) would otherwise share its line and make hits from two
/// threads contend.
#[repr(align(128))]
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
/// Cache-line aligned for the same reason as [`Hot`]: its `hot` pointer is
/// read on every hit.
#[repr(align(128))]
pub(crate) struct Slot {
    pub(crate) request: TokenRequest,
    pub(crate) key: CacheKey,
    /// The current token; an always-expired sentinel when there is none, so
    /// the hit path has no `Option` to check.
    pub(crate) hot: ArcSwap<Hot>,
    /// A fetch for this key is running.
    pub(crate) flying: AtomicBool,
    /// Background refreshes must not start before this (nanoseconds since the
    /// engine's monotonic epoch; 0 = no backoff). Mirrors `state.retry_at`
    /// for the lock-free check on the hit path.
    pub(crate) retry_at_nanos: AtomicU64,
    pub(crate) state: Mutex<SlotState>,
}

#[derive(Default)]
pub(crate) struct SlotState {
    /// The running fetch, if any: subscribe to wait for it.
    pub(crate) flight: Option<watch::Receiver<FlightResult>>,
    /// Consecutive failed fetches.
    pub(crate) failures: u32,
    /// The last failure, handed to callers while backing off.
    pub(crate) last_error: Option<Error>,
    /// No new fetch before this.
    pub(crate) retry_at: Option<Instant>,
}

impl Slot {
    pub(crate) fn new(request: TokenRequest, key: CacheKey, empty: Arc<Hot>) -> Self {
        Self {
            request,
            key,
            hot: ArcSwap::new(empty),
            flying: AtomicBool::new(false),
            retry_at_nanos: AtomicU64::new(0),
            state: Mutex::new(SlotState::default()),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, SlotState> {
        // The state is consistent after every statement, so a panic elsewhere
        // while holding the lock leaves nothing half-done.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
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
