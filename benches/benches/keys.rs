//! Cold fill of the key map, in one run: the cost per key of
//! `TokenCache::get_token` for N distinct requests on a fresh cache
//! (N = 1k, 100k, 1M), beside the floor it is judged against,
//! `moka_insert`: a `moka::future::Cache::insert` of the same N keys, each
//! with a freshly built token of the same secret (what any keyed cache must
//! do for a new key), on the same runtime.
//!
//! Each iteration builds a fresh cache outside the timing, fills it, and
//! drops it outside the timing; the time reported is per key. The cache is
//! built with `max_keys(N)`, so nothing is evicted during the fill.
//!
//! At the end it prints the ratios, from the medians of the fills timed in
//! this run (warm-up fills included): per-key cost at 1M / at 1k (goal: at
//! most 2x) and engine / moka at 1M (goal: within 5x).
//!
//! `cargo bench -p benches --bench keys -- --warm-up-time 1 --measurement-time 3`
//! (`cargo xtask bench` runs it too, with every bench of this crate). About
//! four minutes: each 1M row takes criterion's minimum of ten samples of one
//! fill, so its "Unable to complete 10 samples" warnings are expected.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use benches::instant_idp;
use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use token_core::{AccessToken, Credential, TokenCache, TokenRequest};

const SIZES: [usize; 3] = [1_000, 100_000, 1_000_000];

/// Per-key times of every fill, by (row, N), for the ratios at the end.
type Samples = Arc<Mutex<BTreeMap<(&'static str, usize), Vec<f64>>>>;

fn requests(n: usize) -> Vec<TokenRequest> {
    (0..n)
        .map(|i| TokenRequest::builder().scope(format!("user-{i}")).build())
        .collect()
}

/// Times `fill` on `iters` fresh states made by `make` (neither making nor
/// dropping a state is timed), records each fill's time per key, and
/// returns the total time per key.
fn fills<S>(
    iters: u64,
    n: usize,
    row: &'static str,
    samples: &Samples,
    mut make: impl FnMut() -> S,
    mut fill: impl FnMut(&S),
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let state = make();
        let start = Instant::now();
        fill(&state);
        let took = start.elapsed();
        drop(state);
        total += took;
        samples
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry((row, n))
            .or_default()
            .push(took.as_nanos() as f64 / n as f64);
    }
    total / n as u32
}

fn bench(c: &mut Criterion, samples: &Samples) {
    // Current-thread: each miss spawns its fetch and waits for it on this
    // thread, so the cost measured is the engine's, not cross-thread wakeups.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // The moka rows insert tokens with the bench IdP's secret.
    let probe = TokenRequest::builder().scope("probe").build();
    let secret = rt
        .block_on(instant_idp().fetch(&probe, None))
        .expect("probe fetch")
        .secret()
        .expose()
        .to_owned();

    let mut g = c.benchmark_group("keys");
    for n in SIZES {
        let reqs = requests(n);
        g.throughput(Throughput::Elements(1));
        if n >= 100_000 {
            // Seconds per fill at 1M: one fill per sample, ten samples.
            g.sample_size(10).sampling_mode(SamplingMode::Flat);
        } else {
            g.sample_size(30).sampling_mode(SamplingMode::Auto);
        }

        g.bench_function(BenchmarkId::new("get_token_fill", n), |b| {
            b.iter_custom(|iters| {
                fills(
                    iters,
                    n,
                    "get_token_fill",
                    samples,
                    || TokenCache::builder(instant_idp()).max_keys(n).build(),
                    |cache| {
                        rt.block_on(async {
                            for req in &reqs {
                                let t = cache.get_token(req).await.expect("token");
                                std::hint::black_box(t.secret().len());
                            }
                        });
                        let stats = cache.stats();
                        assert_eq!(stats.keys, n as u64, "every key is in memory");
                        assert_eq!(stats.evictions, 0, "nothing evicted during the fill");
                    },
                )
            })
        });

        g.bench_function(BenchmarkId::new("moka_insert", n), |b| {
            b.iter_custom(|iters| {
                fills(
                    iters,
                    n,
                    "moka_insert",
                    samples,
                    || moka::future::Cache::<TokenRequest, Arc<AccessToken>>::new(n as u64),
                    |cache| {
                        rt.block_on(async {
                            for req in &reqs {
                                let token = AccessToken::new(secret.as_str(), SystemTime::now())
                                    .with_expires_in(Duration::from_secs(3600));
                                cache.insert(req.clone(), Arc::new(token)).await;
                            }
                        });
                    },
                )
            })
        });
    }
    g.finish();
}

fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

fn report(samples: &Samples) {
    let samples = samples.lock().unwrap_or_else(PoisonError::into_inner);
    let m = |row: &'static str, n: usize| samples.get(&(row, n)).and_then(|v| median(v));
    let lo = SIZES[0];
    let hi = SIZES[SIZES.len() - 1];
    println!("\nkey-map fill, per key (median of the fills timed in this run):");
    for n in SIZES {
        let cell = |row| m(row, n).map_or("-".to_owned(), |ns| format!("{:>9.1} ns", ns));
        println!(
            "  N = {n:>9}: get_token {}   moka insert {}",
            cell("get_token_fill"),
            cell("moka_insert"),
        );
    }
    let ratio = |what: &str, num: Option<f64>, den: Option<f64>, max: Option<f64>| {
        let (Some(num), Some(den)) = (num, den) else {
            return;
        };
        let r = num / den;
        let verdict = match max {
            Some(max) if r <= max => format!("ok (target <= {max})"),
            Some(max) => format!("MISSED (target <= {max})"),
            None => "(for reference)".to_owned(),
        };
        println!("  {what:<52} {r:>6.2}x  {verdict}");
    };
    println!("\nkey-map ratios:");
    ratio(
        "get_token fill per key, 1M keys / 1k keys",
        m("get_token_fill", hi),
        m("get_token_fill", lo),
        Some(2.0),
    );
    ratio(
        "get_token fill / moka insert, 1M keys",
        m("get_token_fill", hi),
        m("moka_insert", hi),
        Some(5.0),
    );
    ratio(
        "moka insert per key, 1M keys / 1k keys",
        m("moka_insert", hi),
        m("moka_insert", lo),
        None,
    );
}

fn main() {
    let samples = Samples::default();
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    bench(&mut c, &samples);
    c.final_summary();
    report(&samples);
}
