//! How the key map scales, in three tables:
//!
//! 1. cold fill cost per key of `get_token` for 1k to 100k distinct
//!    requests with 1 KB tokens: flat, O(1) per key;
//! 2. one-shot users over rounds (a manual clock, 1-minute tokens, a
//!    10-minute idle window): each round 20,000 new users call once, the
//!    clock moves 2 hours, and the idle sweeper drops them; keys, heap and
//!    RSS come back to the same level every round instead of growing (but
//!    for the fake IdP's own log of its calls, shown apart);
//! 3. bytes per key, counted by a counting global allocator, with the
//!    token's own bytes taken out.
//!
//! `cargo run --release -p benches --example keys_scale [ROUNDS]` (ROUNDS
//! for table 2, default 3). Each table runs in a child process of its own
//! (`--table N`), on a fresh heap.
//!
//! The counting allocator (`stats_alloc`) counts every allocation of the
//! process, which is why this is an example and not a criterion bench; it
//! adds a few atomic adds to each allocation of tables 1 and 2 too.

use std::alloc::System;
use std::time::{Duration, Instant};

use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use token_core::test_util::FakeIdp;
use token_core::{AccessToken, Credential, ManualClock, TokenCache, TokenRequest};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Every token's secret: 1 KB, as a JWT with a few claims is.
const SECRET_LEN: usize = 1024;
const FILL_SIZES: [usize; 4] = [1_000, 10_000, 30_000, 100_000];
/// Keys filled per size in table 1, at least (in fills of N keys, and at
/// least 3 fills); the median fill is printed.
const FILL_KEYS: usize = 200_000;
const USERS_PER_ROUND: usize = 20_000;
const BYTES_KEYS: usize = 100_000;

fn secret() -> String {
    "x".repeat(SECRET_LEN)
}

/// The fake IdP answering at once with a fixed 1 KB secret (a fixed one: a
/// numbered secret would make the fake remember every token it issued).
fn idp() -> FakeIdp {
    FakeIdp::new().with_id("keys-idp").with_secret(secret())
}

fn requests(tag: &str, n: usize) -> Vec<TokenRequest> {
    (0..n)
        .map(|i| {
            TokenRequest::builder()
                .scope(format!("user-{tag}-{i}"))
                .build()
        })
        .collect()
}

/// The process's resident set, in MB (`VmRSS` of /proc/self/status).
fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Bytes allocated and not freed in the whole process, in MB.
fn heap_mb() -> f64 {
    let s = GLOBAL.stats();
    (s.bytes_allocated as f64 - s.bytes_deallocated as f64) / (1024.0 * 1024.0)
}

/// Net bytes allocated and not freed since `region` began.
fn net(region: &Region<'_, System>) -> i64 {
    let c = region.change();
    c.bytes_allocated as i64 - c.bytes_deallocated as i64
}

async fn fill(cache: &TokenCache, reqs: &[TokenRequest]) {
    for req in reqs {
        let t = cache.get_token(req).await.expect("token");
        assert_eq!(t.secret().len(), SECRET_LEN);
    }
}

/// Table 1: cold fill per key on a fresh cache, for growing N.
fn fill_table(rt: &tokio::runtime::Runtime) {
    println!("1. cold fill through get_token, 1 KB tokens, fresh cache per fill");
    println!("   (median fill; current-thread runtime; after one warm-up fill of 10k keys)");
    println!(
        "   {:>8}  {:>6}  {:>10}  {:>9}",
        "keys", "fills", "µs/key", "vs 1k"
    );
    let warm_up = TokenCache::builder(idp()).build();
    rt.block_on(fill(&warm_up, &requests("warm", 10_000)));
    drop(warm_up);
    let mut first = None;
    for n in FILL_SIZES {
        let reqs = requests("fill", n);
        let fills = (FILL_KEYS / n).max(3);
        let mut per_key: Vec<f64> = (0..fills)
            .map(|_| {
                let cache = TokenCache::builder(idp()).build();
                let start = Instant::now();
                rt.block_on(fill(&cache, &reqs));
                let took = start.elapsed();
                let stats = cache.stats();
                assert_eq!((stats.keys, stats.evictions), (n as u64, 0));
                took.as_secs_f64() * 1e6 / n as f64
            })
            .collect();
        per_key.sort_by(f64::total_cmp);
        let us = per_key[per_key.len() / 2];
        let base = *first.get_or_insert(us);
        println!("   {n:>8}  {fills:>6}  {us:>10.2}  {:>8.2}x", us / base);
    }
    println!();
}

/// Table 2: one-shot users, round after round, on a manual clock.
///
/// On the current-thread runtime: the idle sweeper runs while main awaits
/// its 10 ms sleeps. (On a multi-thread one, each worker's malloc arena
/// grows once, which adds a step or two to the RSS of the first rounds.)
fn rounds_table(rt: &tokio::runtime::Runtime, rounds: usize) {
    let clock = ManualClock::new();
    let idp = idp()
        .with_clock(clock.clone())
        .with_lifetime(Duration::from_secs(60));
    let cache = TokenCache::builder(idp)
        .clock(clock.clone())
        .idle_window(Duration::from_secs(600))
        .build();
    println!(
        "2. one-shot users: {USERS_PER_ROUND} new users per round, 1-minute tokens, \
         idle window 10 min, default max_keys ({})",
        token_core::policy::DEFAULT_MAX_KEYS
    );
    println!(
        "   each round: every user calls get_token once; clock +2 h; wait for the sweeper \
         (current-thread runtime)"
    );
    println!(
        "   {:>5}  {:>11}  {:>10}  {:>9}  {:>10}  {:>10}  {:>10}  {:>8}",
        "round",
        "keys filled",
        "keys swept",
        "evictions",
        "RSS filled",
        "RSS swept",
        "heap swept",
        "sweep ms"
    );
    println!(
        "   {:>5}  {:>11}  {:>10}  {:>9}  {:>10}  {:>7.1} MB  {:>7.1} MB  {:>8}",
        "start",
        "-",
        cache.stats().keys,
        cache.stats().evictions,
        "-",
        rss_mb(),
        heap_mb(),
        "-"
    );
    for round in 1..=rounds {
        let reqs = requests(&format!("r{round}"), USERS_PER_ROUND);
        rt.block_on(fill(&cache, &reqs));
        drop(reqs);
        let filled = cache.stats().keys;
        let rss_filled = rss_mb();
        clock.advance(Duration::from_secs(2 * 3600));
        let start = Instant::now();
        let swept = rt.block_on(async {
            while start.elapsed() < Duration::from_secs(10) {
                if cache.stats().keys == 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            cache.stats().keys
        });
        let took = start.elapsed();
        let note = if swept == 0 {
            ""
        } else {
            "  (sweep not done in 10 s)"
        };
        println!(
            "   {round:>5}  {filled:>11}  {swept:>10}  {:>9}  {rss_filled:>7.1} MB  {:>7.1} MB  \
             {:>7.1} MB  {:>8}{note}",
            cache.stats().evictions,
            rss_mb(),
            heap_mb(),
            took.as_millis(),
        );
    }
    println!(
        "   (heap: bytes allocated and not freed, from the counting allocator. What still\n    \
         grows is the fake IdP's log of its calls, not the cache: two Vecs of about 40 B\n    \
         a call, whose capacity doubles; RSS grows by the 0.8 MB a round they fill.)"
    );
    println!();
}

/// Table 3: bytes per key, from the counting allocator.
fn bytes_table(rt: &tokio::runtime::Runtime) {
    let n = BYTES_KEYS;
    println!("3. bytes per key: {n} keys, 1 KB tokens, counted by the global allocator");

    // The requests: built by the caller, then kept alive by the key map
    // after the caller drops them.
    let region = Region::new(GLOBAL);
    let reqs = requests("bytes", n);
    let vec_buffer = std::mem::size_of::<TokenRequest>() * reqs.capacity();
    let request_bytes = (net(&region) - vec_buffer as i64) as f64 / n as f64;

    // What the fake IdP itself keeps per call (its call log), measured
    // alone so it can be taken out.
    let probe = idp();
    let region = Region::new(GLOBAL);
    rt.block_on(async {
        for req in &reqs {
            drop(probe.fetch(req, None).await.expect("token"));
        }
    });
    let idp_bytes = net(&region) as f64 / n as f64;
    drop(probe);

    let cache = TokenCache::builder(idp()).build();
    let region = Region::new(GLOBAL);
    let rss_before = rss_mb();
    rt.block_on(fill(&cache, &reqs));
    // The caller lets go of its requests: the map's clones keep them alive.
    // (Freeing the Vec's own buffer, allocated before this region, counts
    // as -8 bytes a key; added back below.)
    drop(reqs);
    let retained = (net(&region) + vec_buffer as i64) as f64 / n as f64;
    let rss_per_key = (rss_mb() - rss_before) * 1024.0 * 1024.0 / n as f64;
    let stats = cache.stats();
    assert_eq!((stats.keys, stats.evictions), (n as u64, 0));

    let token_heap = SECRET_LEN as f64;
    let token_inline = std::mem::size_of::<AccessToken>() as f64;
    let after_fill = retained - idp_bytes;
    let overhead = after_fill - token_heap;
    println!("   allocated during the fill, still held       {retained:>8.0} B/key");
    println!("   - the fake IdP's own call log (measured)    {idp_bytes:>8.0} B/key");
    println!("   = held by the cache                         {after_fill:>8.0} B/key");
    println!(
        "   - the token's heap: its {SECRET_LEN}-byte secret      {token_heap:>8.0} B/key  \
         (Bearer, no refresh token, no scope: nothing else on the heap)"
    );
    println!("   = engine overhead beyond the token's bytes  {overhead:>8.0} B/key  (goal <= 512)");
    println!(
        "     of which the AccessToken struct inline    {token_inline:>8.0} B/key  \
         (inside the engine's hot entry; without it {:.0} B/key)",
        overhead - token_inline
    );
    println!(
        "   + the request itself, kept by the key map   {request_bytes:>8.0} B/key  \
         (built by the caller before the fill; not counted above)"
    );
    println!(
        "   RSS growth during the fill                  {rss_per_key:>8.0} B/key  \
         (what the system allocator really used)"
    );
    drop(cache);
}

/// Runs one table in this process (`--table N`), so it has a fresh heap
/// and its RSS numbers are its own.
fn table(which: &str, rounds: usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    match which {
        "1" => fill_table(&rt),
        "2" => rounds_table(&rt, rounds),
        _ => bytes_table(&rt),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (which, rest) = match args.as_slice() {
        [flag, which, rest @ ..] if flag == "--table" => (Some(which.clone()), rest),
        rest => (None, rest),
    };
    let rounds = match rest.first() {
        None => 3,
        Some(arg) => arg.parse().unwrap_or_else(|_| {
            eprintln!("usage: keys_scale [ROUNDS]  (ROUNDS: a number, default 3)");
            std::process::exit(2)
        }),
    };
    if let Some(which) = which {
        table(&which, rounds);
        return;
    }
    // Each table in a child process of its own: a heap another table has
    // grown and freed would hide RSS growth.
    let started = Instant::now();
    let exe = std::env::current_exe().expect("own path");
    for which in ["1", "2", "3"] {
        let status = std::process::Command::new(&exe)
            .args(["--table", which, &rounds.to_string()])
            .status()
            .expect("run a table");
        if !status.success() {
            eprintln!("table {which} failed: {status}");
            std::process::exit(1);
        }
    }
    println!("(total {:.1} s)", started.elapsed().as_secs_f64());
}
