//! The hit path of `TokenHandle::token` and `TokenCache::get_token`, on one
//! and two threads, side by side with the floors it is judged against:
//!
//! - `floor/arc_swap`: an `ArcSwap` load + a clock read + an expiry check,
//!   the least any lock-free cached read with an expiry can do;
//! - `floor/keyed_rwlock_map`: a `RwLock<HashMap<String, _>>` lookup by key
//!   + clock read + expiry check, the obvious keyed cache;
//! - `floor/moka_get`: a `moka::future::Cache::get` of the same key.
//!
//! Run with `cargo xtask bench`; the ratios are printed at the end and
//! recorded in docs/BENCHMARKS.md.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use benches::{instant_idp, on_threads, poll_once};
use criterion::Criterion;
use token_core::{CacheKey, TokenCache, TokenRequest};

struct Entry {
    expires: Instant,
    value: String,
}

fn entry() -> Arc<Entry> {
    Arc::new(Entry {
        expires: Instant::now() + Duration::from_secs(3600),
        value: "v".repeat(32),
    })
}

fn request() -> TokenRequest {
    TokenRequest::builder()
        .scope("orders.read")
        .scope("orders.write")
        .audience("https://api.example")
        .build()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let cache = TokenCache::builder(instant_idp()).build();
    let req = request();
    rt.block_on(async { cache.get_token(&req).await.expect("first fetch") });
    let handle = cache.handle(&req);
    let key = CacheKey::new("bench-idp", &req).as_str().to_owned();

    let swap = Arc::new(ArcSwap::new(entry()));
    let mut map = HashMap::new();
    for i in 0..16 {
        map.insert(format!("{key}-{i}"), entry());
    }
    map.insert(key.clone(), entry());
    let map = Arc::new(RwLock::new(map));
    let moka: moka::future::Cache<String, Arc<Entry>> = moka::future::Cache::new(10_000);
    rt.block_on(moka.insert(key.clone(), entry()));

    let mut g = c.benchmark_group("hit");
    for threads in [1usize, 2] {
        {
            let swap = swap.clone();
            g.bench_function(format!("floor_arc_swap/{threads}t"), move |b| {
                let swap = swap.clone();
                b.iter_custom(|iters| {
                    let swap = swap.clone();
                    on_threads(threads, iters, move || {
                        let e = swap.load();
                        black_box(Instant::now() < e.expires && !e.value.is_empty());
                    })
                })
            });
        }
        {
            let (map, key) = (map.clone(), key.clone());
            g.bench_function(format!("floor_keyed_rwlock_map/{threads}t"), move |b| {
                let (map, key) = (map.clone(), key.clone());
                b.iter_custom(|iters| {
                    let (map, key) = (map.clone(), key.clone());
                    on_threads(threads, iters, move || {
                        let m = map.read().unwrap_or_else(|e| e.into_inner());
                        if let Some(e) = m.get(black_box(key.as_str())) {
                            black_box(Instant::now() < e.expires && !e.value.is_empty());
                        }
                    })
                })
            });
        }
        {
            let (moka, key) = (moka.clone(), key.clone());
            g.bench_function(format!("floor_moka_get/{threads}t"), move |b| {
                let (moka, key) = (moka.clone(), key.clone());
                b.iter_custom(|iters| {
                    let (moka, key) = (moka.clone(), key.clone());
                    on_threads(threads, iters, move || {
                        if let Some(Some(e)) = poll_once(moka.get(black_box(key.as_str()))) {
                            black_box(Instant::now() < e.expires);
                        }
                    })
                })
            });
        }
        {
            let handle = handle.clone();
            g.bench_function(format!("handle_token/{threads}t"), move |b| {
                let handle = handle.clone();
                b.iter_custom(|iters| {
                    let handle = handle.clone();
                    on_threads(threads, iters, move || {
                        let t = poll_once(handle.token()).and_then(Result::ok);
                        black_box(t.map(|t| t.secret().len()));
                    })
                })
            });
        }
        {
            let (cache, req) = (cache.clone(), request());
            g.bench_function(format!("get_token/{threads}t"), move |b| {
                let (cache, req) = (cache.clone(), req.clone());
                b.iter_custom(|iters| {
                    let (cache, req) = (cache.clone(), req.clone());
                    on_threads(threads, iters, move || {
                        let t = poll_once(cache.get_token(black_box(&req))).and_then(Result::ok);
                        black_box(t.map(|t| t.secret().len()));
                    })
                })
            });
        }
    }
    g.finish();
    assert_eq!(cache.stats().idp_calls, 1, "every measured call was a hit");
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
        .configure_from_args();
    bench(&mut c);
    c.final_summary();
}
