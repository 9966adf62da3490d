//! A small, fast, non-cryptographic random source for jitter.
//!
//! Jitter needs spread, not unpredictability, so a SplitMix64 sequence seeded
//! from the standard library's per-process random hasher keys is enough, and
//! keeps `rand` out of the dependency tree. Never use it for secrets or lease
//! owner tokens' uniqueness beyond what [`random_u128`] documents.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

static STATE: AtomicU64 = AtomicU64::new(0);

/// SplitMix64's finaliser: a bijective mix of 64 bits.
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn seed() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(std::process::id().into());
    if let Ok(d) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(d.as_nanos());
    }
    h.finish() | 1
}

/// A random 64-bit value.
pub(crate) fn next_u64() -> u64 {
    const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;
    if STATE.load(Ordering::Relaxed) == 0 {
        let _ = STATE.compare_exchange(0, seed(), Ordering::Relaxed, Ordering::Relaxed);
    }
    mix64(
        STATE
            .fetch_add(GOLDEN, Ordering::Relaxed)
            .wrapping_add(GOLDEN),
    )
}

/// A uniformly distributed value in `[0, 1)`.
pub(crate) fn unit_f64() -> f64 {
    (next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// 128 random bits, fresh per process (seeded from the OS through
/// `RandomState`): unique enough to name a lease owner, not a secret.
pub fn random_u128() -> u128 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(next_u64());
    (u128::from(h.finish()) << 64) | u128::from(next_u64())
}
