//! A hit allocates nothing: proved with a counting global allocator.
//!
//! The allocator counts every thread of the process, and libtest's own
//! threads allocate now and then (seen under CPU load, even with a loop that
//! calls nothing). So this test has no harness: `main` is the only thread,
//! and any allocation counted is the hit path's.

mod common;

use std::alloc::System;
use std::time::Duration;

use common::*;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use token_core::*;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn main() {
    hits_through_get_token_and_the_handle_allocate_nothing();
    println!("hit_path_alloc: 1 passed, 0 failed");
}

fn hits_through_get_token_and_the_handle_allocate_nothing() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    // The system clock: the production hit path, not the test clock.
    let idp = fake_idp(&ManualClock::new(), Duration::from_secs(3600));
    let cache = TokenCache::builder(idp.clone()).build();
    let request = TokenRequest::builder().scope("orders.read").build();
    let lookalike = TokenRequest::builder().scope("orders.read").build();
    let handle = cache.handle(&request);
    rt.block_on(async {
        cache.get_token(&request).await.unwrap();
    });
    // Warm up per-thread state (arc_swap debt slots, counter shard).
    for _ in 0..10 {
        drop(poll_once(cache.get_token(&request)));
        drop(poll_once(handle.token()));
    }

    let region = Region::new(GLOBAL);
    let mut len = 0;
    for _ in 0..10_000 {
        // An equal request built separately, so the lookup compares contents.
        let t = poll_once(cache.get_token(&lookalike))
            .expect("hit")
            .expect("token");
        len += t.secret().len();
        let t = poll_once(handle.token()).expect("hit").expect("token");
        len += t.secret().len();
    }
    let change = region.change();
    assert!(len > 0);
    assert_eq!(
        change.allocations, 0,
        "allocations on the hit path: {change:?}"
    );
    assert_eq!(change.reallocations, 0, "{change:?}");
    assert_eq!(cache.stats().idp_calls, 1);
}
