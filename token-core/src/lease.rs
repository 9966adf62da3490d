//! The in-process refresh lease: one holder per key until it releases or
//! its TTL passes.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::request::CacheKey;
use crate::store::Lease;

/// The table never prunes below this many entries: pruning a handful of
/// leases costs more than keeping them.
const MIN_PRUNE_AT: usize = 64;

/// The longest lease the table grants when the asked TTL does not fit in an
/// `Instant` (about a year; nobody means more).
const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// The refresh lease within one process, for stores that cannot share
/// leases between processes (in-memory, on-disk): the `CacheStore` contract
/// asks every store to implement the lease at least for its own process,
/// and this table is that implementation, ready to delegate
/// [`try_acquire_lease`](crate::CacheStore::try_acquire_lease) and
/// [`release_lease`](crate::CacheStore::release_lease) to.
///
/// Leases by key, behind one short-lived lock (never held across an
/// `.await`). Expired leases are dropped when their key is touched, and all
/// at once whenever the table has doubled since the last sweep, so memory
/// stays proportional to the leases that are live.
#[derive(Default)]
pub struct LocalLeases {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    held: HashMap<CacheKey, Held>,
    prune_at: usize,
}

struct Held {
    lease: Lease,
    deadline: Instant,
}

impl LocalLeases {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // No code panics while holding the lock, and the table is valid at
        // every step anyway: a poisoned lock is still safe to use.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Grants `key`'s lease for `ttl` unless a live lease holds it.
    pub fn try_acquire(&self, key: &CacheKey, ttl: Duration) -> Option<Lease> {
        let now = Instant::now();
        let mut inner = self.lock();
        if inner.held.get(key).is_some_and(|h| h.deadline > now) {
            return None;
        }
        let deadline = now
            .checked_add(ttl)
            .or_else(|| now.checked_add(MAX_TTL))
            .unwrap_or(now);
        let lease = Lease::new_random();
        inner.held.insert(
            key.clone(),
            Held {
                lease: lease.clone(),
                deadline,
            },
        );
        inner.prune(now);
        Some(lease)
    }

    /// Releases `key`'s lease if `lease` is its live holder; says whether it
    /// did. A holder whose lease expired gets `false` (and its entry is
    /// dropped); a lease that expired and was granted again belongs to the
    /// new holder.
    pub fn release(&self, key: &CacheKey, lease: &Lease) -> bool {
        let now = Instant::now();
        let mut inner = self.lock();
        match inner.held.get(key) {
            Some(h) if h.lease == *lease => {
                let live = h.deadline > now;
                inner.held.remove(key);
                live
            }
            _ => false,
        }
    }

    /// Leases in the table, expired ones not yet pruned included.
    pub fn len(&self) -> usize {
        self.lock().held.len()
    }

    /// True when the table holds no lease, live or expired.
    pub fn is_empty(&self) -> bool {
        self.lock().held.is_empty()
    }
}

impl fmt::Debug for LocalLeases {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalLeases")
            .field("held", &self.len())
            .finish()
    }
}

impl Inner {
    fn prune(&mut self, now: Instant) {
        if self.held.len() < self.prune_at.max(MIN_PRUNE_AT) {
            return;
        }
        self.held.retain(|_, h| h.deadline > now);
        self.prune_at = self.held.len() * 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: Duration = Duration::from_secs(60);

    fn key(i: usize) -> CacheKey {
        CacheKey::from_raw(format!("k{i}"))
    }

    #[test]
    fn one_holder_until_released() {
        let table = LocalLeases::default();
        let lease = table.try_acquire(&key(1), LONG).unwrap();
        assert!(table.try_acquire(&key(1), LONG).is_none());
        assert!(table.try_acquire(&key(2), LONG).is_some());
        assert!(!table.release(&key(1), &Lease::new_random()));
        assert!(table.try_acquire(&key(1), LONG).is_none());
        assert!(table.release(&key(1), &lease));
        assert!(!table.release(&key(1), &lease));
        assert!(table.try_acquire(&key(1), LONG).is_some());
    }

    #[test]
    fn an_expired_lease_is_granted_again_and_its_holder_cannot_release() {
        let table = LocalLeases::default();
        let stale = table.try_acquire(&key(1), Duration::ZERO).unwrap();
        let current = table.try_acquire(&key(1), LONG).unwrap();
        assert_ne!(stale, current);
        assert!(!table.release(&key(1), &stale));
        assert!(table.try_acquire(&key(1), LONG).is_none());
        assert!(table.release(&key(1), &current));
    }

    #[test]
    fn releasing_an_expired_own_lease_says_false_and_forgets_it() {
        let table = LocalLeases::default();
        let lease = table.try_acquire(&key(1), Duration::ZERO).unwrap();
        assert!(!table.release(&key(1), &lease));
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn absurd_ttls_do_not_panic() {
        let table = LocalLeases::default();
        assert!(table.try_acquire(&key(1), Duration::MAX).is_some());
        assert!(table.try_acquire(&key(1), LONG).is_none());
    }

    #[test]
    fn expired_leases_are_pruned_as_the_table_grows() {
        let table = LocalLeases::default();
        for i in 0..10 * MIN_PRUNE_AT {
            table.try_acquire(&key(i), Duration::ZERO).unwrap();
        }
        assert!(table.len() <= MIN_PRUNE_AT, "{} leases kept", table.len());
        let live: Vec<_> = (0..3 * MIN_PRUNE_AT)
            .map(|i| table.try_acquire(&key(100_000 + i), LONG).unwrap())
            .collect();
        assert!(table.len() >= live.len());
        assert!(table.len() <= live.len() + MIN_PRUNE_AT);
    }
}
