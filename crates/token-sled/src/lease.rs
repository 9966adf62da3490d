//! The refresh lease. A sled database is open in one process at a time, so
//! a lease held in this process's memory is exclusive for every user of the
//! database.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use token_core::{CacheKey, Lease};

/// Leases longer than this are cut to it (about a year) instead of
/// overflowing an `Instant`.
const LONGEST: Duration = Duration::from_secs(365 * 24 * 3600);

/// Live leases by key. Expired ones are dropped when their key is touched
/// and whenever the map has doubled since it was last pruned.
#[derive(Default)]
pub(crate) struct Leases {
    map: Mutex<LeaseMap>,
}

#[derive(Default)]
struct LeaseMap {
    held: HashMap<CacheKey, (Lease, Instant)>,
    prune_above: usize,
}

impl Leases {
    pub(crate) fn acquire(&self, key: &CacheKey, ttl: Duration) -> Option<Lease> {
        let now = Instant::now();
        // The map is consistent after every statement, so a poisoned lock
        // (impossible here: nothing inside can panic) is safe to reuse.
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, until)) = map.held.get(key) {
            if *until > now {
                return None;
            }
        }
        let until = now
            .checked_add(ttl.min(LONGEST))
            .unwrap_or(now + Duration::from_secs(1));
        let lease = Lease::new_random();
        map.held.insert(key.clone(), (lease.clone(), until));
        if map.held.len() > map.prune_above.max(32) {
            map.held.retain(|_, (_, until)| *until > now);
            map.prune_above = map.held.len() * 2;
        }
        Some(lease)
    }

    pub(crate) fn release(&self, key: &CacheKey, lease: &Lease) -> bool {
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        match map.held.get(key) {
            Some((holder, until)) if holder == lease => {
                let live = *until > now;
                map.held.remove(key);
                live
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_and_only_the_holder_releases() {
        let leases = Leases::default();
        let k = CacheKey::from_raw("k");
        let held = leases.acquire(&k, Duration::from_secs(60)).unwrap();
        assert!(leases.acquire(&k, Duration::from_secs(60)).is_none());
        assert!(!leases.release(&k, &Lease::new_random()));
        assert!(leases.release(&k, &held));
        assert!(!leases.release(&k, &held));
        let expired = leases.acquire(&k, Duration::ZERO).unwrap();
        let next = leases.acquire(&k, Duration::MAX).unwrap();
        assert!(!leases.release(&k, &expired));
        assert!(leases.release(&k, &next));
    }

    #[test]
    fn expired_leases_do_not_accumulate() {
        let leases = Leases::default();
        for i in 0..1000 {
            leases.acquire(&CacheKey::from_raw(format!("k{i}")), Duration::ZERO);
        }
        let len = leases.map.lock().unwrap().held.len();
        assert!(len <= 64, "{len}");
    }
}
