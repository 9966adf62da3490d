//! A hit through `RedisStore::get` against a raw `GET` of the same bytes on
//! the same client (the store's own connection), in one run. The store adds
//! key hashing, the circuit breaker, the command timeout and decoding; the
//! target is within 1.3x of the raw `GET`.
//!
//! Starts its own `redis-server` (token-testkit's `RedisServer`: a free
//! loopback port, persistence off, killed at the end); without
//! `redis-server` on PATH it says so and skips (benchmarks never fail for a
//! missing server, CI or not: CI only compiles them).
//!
//! Run with `cargo bench -p benches --bench redis`. After criterion's
//! numbers it prints the ratio from interleaved batches, which is robust to
//! the machine's load drifting during the run.

use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime};

use criterion::Criterion;
use token_core::{AccessToken, CacheKey, CacheStore};
use token_redis::redis;
use token_redis::{RedisConfig, RedisStore};
use token_testkit::RedisServer;

fn main() {
    let server = match RedisServer::start() {
        Ok(server) => server,
        Err(why) => {
            eprintln!("\n*** SKIPPING the redis benchmark: {why} (install redis-server)\n");
            return;
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let url = server.url();
    let store = runtime
        .block_on(RedisStore::connect(
            RedisConfig::new(url)
                .with_plaintext()
                .with_invalidation_events(false),
        ))
        .expect("connect to the private redis-server");
    let key = CacheKey::from_raw(
        "tc1|bench-client|scope=orders.read orders.write;aud=https://api.example;",
    );
    let token = AccessToken::new("eyJhbGciOiJSUzI1NiJ9.".repeat(40), SystemTime::now())
        .with_expires_in(Duration::from_secs(3600))
        .with_refresh_at(SystemTime::now() + Duration::from_secs(2700));
    runtime
        .block_on(store.put(&key, &token))
        .expect("put the token");
    let redis_key = store.token_key(&key);
    let raw_conn = store.connection();

    let store_get = |iters: u64| {
        runtime.block_on(async {
            let start = Instant::now();
            for _ in 0..iters {
                let got = store.get(&key).await.expect("store get");
                black_box(got.expect("a hit"));
            }
            start.elapsed()
        })
    };
    let raw_get = |iters: u64| {
        runtime.block_on(async {
            let mut conn = raw_conn.clone();
            let start = Instant::now();
            for _ in 0..iters {
                let got: Option<Vec<u8>> = redis::cmd("GET")
                    .arg(&redis_key)
                    .query_async(&mut conn)
                    .await
                    .expect("raw get");
                black_box(got.expect("the bytes"));
            }
            start.elapsed()
        })
    };

    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .configure_from_args();
    let mut group = c.benchmark_group("redis_hit");
    group.bench_function("raw_get_same_client", |b| b.iter_custom(raw_get));
    group.bench_function("redis_store_get", |b| b.iter_custom(store_get));
    group.finish();
    c.final_summary();

    // Interleaved batches: the ratio of medians.
    let (mut store_ns, mut raw_ns) = (Vec::new(), Vec::new());
    for _ in 0..30 {
        raw_ns.push(raw_get(500).as_nanos() as f64 / 500.0);
        store_ns.push(store_get(500).as_nanos() as f64 / 500.0);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (s, r) = (median(&mut store_ns), median(&mut raw_ns));
    println!(
        "\nredis hit: RedisStore::get {:.1} us, raw GET on the same client {:.1} us, ratio {:.3} (target <= 1.3)",
        s / 1000.0,
        r / 1000.0,
        s / r
    );
    drop(server);
}
