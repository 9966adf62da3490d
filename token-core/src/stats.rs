//! Counters the engine keeps, and the snapshot users read.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::store::StoreStats;

const SHARDS: usize = 32;

/// One counter per cache line, so that threads counting hits at the same
/// time do not fight over one line.
#[repr(align(128))]
#[derive(Default)]
struct Padded(AtomicU64);

/// A counter incremented on the hit path from many threads: each thread adds
/// to its own shard (threads are numbered as they first count), and a read
/// sums the shards.
pub(crate) struct ShardedCounter {
    shards: [Padded; SHARDS],
}

thread_local! {
    static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}

static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

#[inline]
fn shard_index() -> usize {
    SHARD.with(|s| {
        let i = s.get();
        if i != usize::MAX {
            return i;
        }
        let i = NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS;
        s.set(i);
        i
    })
}

impl ShardedCounter {
    pub(crate) fn new() -> Self {
        Self {
            shards: Default::default(),
        }
    }

    #[inline]
    pub(crate) fn incr(&self) {
        self.shards[shard_index()].0.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn sum(&self) -> u64 {
        self.shards
            .iter()
            .map(|p| p.0.load(Ordering::Relaxed))
            .sum()
    }
}

/// The engine's live counters.
pub(crate) struct Counters {
    pub(crate) hits: ShardedCounter,
    pub(crate) misses: AtomicU64,
    pub(crate) waits: AtomicU64,
    pub(crate) refreshes: AtomicU64,
    pub(crate) idp_calls: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) panics: AtomicU64,
    pub(crate) stale_served: AtomicU64,
    pub(crate) store_hits: AtomicU64,
    pub(crate) store_errors: AtomicU64,
    pub(crate) store_bypassed: AtomicU64,
    pub(crate) lease_waits: AtomicU64,
    pub(crate) invalidations: AtomicU64,
    pub(crate) backoff_rejections: AtomicU64,
}

impl Counters {
    pub(crate) fn new() -> Self {
        Self {
            hits: ShardedCounter::new(),
            misses: AtomicU64::new(0),
            waits: AtomicU64::new(0),
            refreshes: AtomicU64::new(0),
            idp_calls: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            panics: AtomicU64::new(0),
            stale_served: AtomicU64::new(0),
            store_hits: AtomicU64::new(0),
            store_errors: AtomicU64::new(0),
            store_bypassed: AtomicU64::new(0),
            lease_waits: AtomicU64::new(0),
            invalidations: AtomicU64::new(0),
            backoff_rejections: AtomicU64::new(0),
        }
    }

    pub(crate) fn snapshot(&self, store: StoreStats) -> CacheStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CacheStats {
            hits: self.hits.sum(),
            misses: get(&self.misses),
            waits: get(&self.waits),
            refreshes: get(&self.refreshes),
            idp_calls: get(&self.idp_calls),
            errors: get(&self.errors),
            panics: get(&self.panics),
            stale_served: get(&self.stale_served),
            store_hits: get(&self.store_hits),
            store_errors: get(&self.store_errors),
            store_bypassed: get(&self.store_bypassed),
            lease_waits: get(&self.lease_waits),
            invalidations: get(&self.invalidations),
            backoff_rejections: get(&self.backoff_rejections),
            store_corrupt_reads: store.corrupt_reads,
            keys: 0,
            evictions: 0,
        }
    }
}

#[inline]
pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A snapshot of a [`TokenCache`](crate::TokenCache)'s counters since it was
/// built. Counters only grow, except `keys`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Calls answered from the in-process hot slot without waiting.
    pub hits: u64,
    /// Calls that found no usable token in the hot slot.
    pub misses: u64,
    /// Calls that waited for a fetch (their own or another caller's).
    pub waits: u64,
    /// Successful refreshes of a token that was still usable (refresh-ahead,
    /// scheduled refresh).
    pub refreshes: u64,
    /// Calls to [`Credential::fetch`](crate::Credential::fetch).
    pub idp_calls: u64,
    /// Fetches that failed (errors, timeouts, panics, unusable tokens).
    pub errors: u64,
    /// Fetches that panicked (also counted in `errors`).
    pub panics: u64,
    /// Tokens served after a refresh of them had failed (stale-if-error).
    pub stale_served: u64,
    /// Fetches avoided because the store had a token another instance put.
    pub store_hits: u64,
    /// Store calls that failed or timed out.
    pub store_errors: u64,
    /// Store calls skipped because the store failed recently.
    pub store_bypassed: u64,
    /// Times this process waited for another instance holding the lease.
    pub lease_waits: u64,
    /// Tokens dropped by [`invalidate`](crate::TokenCache::invalidate).
    pub invalidations: u64,
    /// Calls answered with the previous error because the key is backing off.
    pub backoff_rejections: u64,
    /// Stored values the store could not decode or decrypt (read as misses).
    pub store_corrupt_reads: u64,
    /// Keys in memory now (the only counter that also shrinks).
    pub keys: u64,
    /// Keys dropped from memory: idle with an expired token, or to stay
    /// within `max_keys`.
    pub evictions: u64,
}

impl CacheStats {
    /// `hits / (hits + misses)`, or 0 when there were no calls.
    pub fn hit_ratio(&self) -> f64 {
        let total = self.hits + self.misses;
        if total == 0 {
            0.0
        } else {
            self.hits as f64 / total as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// More threads than shards, so that threads share shards and add to
    /// them at once: not one increment may be lost.
    #[test]
    fn a_sharded_count_is_exact_with_more_threads_than_shards() {
        let counter = std::sync::Arc::new(ShardedCounter::new());
        let threads = SHARDS + SHARDS / 2;
        let per_thread = 20_000;
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(threads));
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let (counter, barrier) = (counter.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    for _ in 0..per_thread {
                        counter.incr();
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        assert_eq!(counter.sum(), (threads * per_thread) as u64);
    }
}
