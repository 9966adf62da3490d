//! Memory of the key map, measured with a counting global allocator:
//!
//! - bytes of engine overhead per key, beyond the token's own bytes (the
//!   `AccessToken` value and its secret; goal: at most 512);
//! - rounds of one-shot users: memory returns to the same level after each
//!   round's keys are swept;
//! - an evicted token's memory is freed (and so its secret zeroized).
//!
//! The allocator counts every thread of the process, so this test has no
//! harness: `main` runs the checks one after another, and the only other
//! thread is the runtime's worker.

use std::alloc::System;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};
use token_core::*;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Every secret in these checks is this long.
const SECRET_LEN: usize = 1024;
const CANARY: &str = "zeroize-canary-";

/// Bytes on the heap now, all threads.
fn net() -> i64 {
    let s = GLOBAL.stats();
    // stats_alloc books a realloc's growth in `bytes_allocated` and its
    // shrinking in `bytes_deallocated` already.
    s.bytes_allocated as i64 - s.bytes_deallocated as i64
}

/// Issues 1 KB tokens (`zeroize-canary-{scope}` padded to [`SECRET_LEN`])
/// that live a minute. It keeps nothing per key, so that all memory per key
/// measured is the engine's and the token's.
#[derive(Debug)]
struct KiloIdp {
    clock: ManualClock,
}

#[async_trait]
impl Credential for KiloIdp {
    fn id(&self) -> &str {
        "kilo-idp"
    }
    async fn fetch(
        &self,
        request: &TokenRequest,
        _: Option<&AccessToken>,
    ) -> Result<AccessToken, CredentialError> {
        Ok(
            AccessToken::new(secret(&request.scope_string()), self.clock.now())
                .with_expires_in(Duration::from_secs(60)),
        )
    }
}

/// A secret of exactly [`SECRET_LEN`] bytes and capacity.
fn secret(tag: &str) -> String {
    let mut s = String::with_capacity(SECRET_LEN);
    s.push_str(CANARY);
    s.push_str(tag);
    s.push('-');
    while s.len() < SECRET_LEN {
        s.push('x');
    }
    assert_eq!((s.len(), s.capacity()), (SECRET_LEN, SECRET_LEN));
    s
}

fn users(from: usize, n: usize) -> Vec<TokenRequest> {
    (from..from + n)
        .map(|i| TokenRequest::builder().scope(format!("user-{i}")).build())
        .collect()
}

struct Setup {
    rt: tokio::runtime::Runtime,
    clock: ManualClock,
    cache: TokenCache,
}

fn setup() -> Setup {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let clock = ManualClock::new();
    let idp = Arc::new(KiloIdp {
        clock: clock.clone(),
    });
    let cache = TokenCache::builder(idp)
        .clock(clock.clone())
        .idle_window(Duration::from_secs(600))
        .build();
    Setup { rt, clock, cache }
}

fn fill(s: &Setup, requests: &[TokenRequest]) {
    s.rt.block_on(async {
        for r in requests {
            s.cache.get_token(r).await.unwrap();
        }
    });
}

/// Moves past expiry and the idle window, and waits for the sweep.
fn expire_and_sweep(s: &Setup) {
    s.clock.advance(Duration::from_secs(7200));
    for _ in 0..2_000 {
        if s.cache.stats().keys == 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("the idle sweep did not run: {:?}", s.cache.stats());
}

fn main() {
    engine_overhead_is_at_most_512_bytes_per_key();
    memory_returns_to_its_level_after_each_round_of_one_shot_users();
    evicted_secrets_are_freed();
    println!("keys_memory: 3 passed, 0 failed");
}

fn engine_overhead_is_at_most_512_bytes_per_key() {
    const N: usize = 100_000;
    let s = setup();
    // Warm up per-thread state and the first table allocations.
    fill(&s, &users(0, 1_000));
    // The requests are the caller's: built before measuring.
    let requests = users(1_000, N);
    let before = net();
    fill(&s, &requests);
    let per_key = (net() - before) as f64 / N as f64;
    // The token's own bytes: the `AccessToken` value and its secret's
    // buffer (it has no other heap parts here).
    let token = std::mem::size_of::<AccessToken>() + SECRET_LEN;
    let overhead = per_key - token as f64;
    println!(
        "keys_memory: {per_key:.0} bytes per key: {token} of the token itself ({SECRET_LEN}-byte secret), {overhead:.0} of engine overhead"
    );
    assert!(
        overhead <= 512.0,
        "engine overhead {overhead:.0} bytes per key"
    );
}

fn memory_returns_to_its_level_after_each_round_of_one_shot_users() {
    const ROUND: usize = 20_000;
    let s = setup();
    let mut after = Vec::new();
    for round in 0..5 {
        let requests = users(round * ROUND, ROUND);
        fill(&s, &requests);
        drop(requests);
        assert_eq!(s.cache.stats().keys, ROUND as u64);
        expire_and_sweep(&s);
        after.push(net());
    }
    let mb = |b: i64| b as f64 / (1024.0 * 1024.0);
    println!(
        "keys_memory: heap after each round's sweep: {} MB",
        after
            .iter()
            .map(|b| format!("{:.1}", mb(*b)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    // One round of keys and tokens is about 30 MB: growth of a round's worth
    // would be plain; allow 1 MB for tables kept at their high-water mark.
    for (round, bytes) in after.iter().enumerate().skip(1) {
        assert!(
            *bytes - after[0] < 1 << 20,
            "round {round} left {:.1} MB more than round 0",
            mb(*bytes - after[0])
        );
    }
}

fn evicted_secrets_are_freed() {
    // Freed means zeroized: a token's secret (and refresh token) is a
    // `Secret`, which zeroizes its buffer when dropped. What the engine must
    // do is drop every copy of an evicted token: the heap shrinks by at least
    // the secrets' bytes.
    let s = setup();
    let requests = users(0, 2_000);
    fill(&s, &requests);
    let before = net();
    expire_and_sweep(&s);
    // Give the sweeper's thread a moment past the count it publishes.
    std::thread::sleep(Duration::from_millis(50));
    let freed = before - net();
    println!("keys_memory: evicting 2,000 keys freed {} KB", freed / 1024);
    assert!(
        freed >= (2_000 * SECRET_LEN) as i64,
        "evicting 2,000 keys of 1 KB tokens freed only {freed} bytes"
    );
}
