//! Per-caller token exchange at scale, in two tables:
//!
//! 1. bytes per cached subject: 100,000 callers exchanged through one
//!    `ExchangeCache` (256-byte opaque subject tokens, 1 KB exchanged
//!    tokens), counted by a counting global allocator;
//! 2. the cold-key cost of the engine per new key, `TokenCache::get_token`
//!    for N distinct requests on a fresh cache (a credential that answers at
//!    once with a 1 KB token), on a current-thread runtime and on a 2-worker
//!    multi-thread runtime driven from outside it (as a server's request
//!    task is on another worker than the fetch it spawns), and through
//!    `ExchangeCache::exchange` on the multi-thread runtime; median of the
//!    fills.
//!
//! `cargo run --release -p benches --example exchange_scale [MAX_N]`
//! (MAX_N for table 2, default 100000; 1000000 takes a few minutes).

use std::alloc::System;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use token_core::{AccessToken, Credential, CredentialError, TokenCache, TokenRequest};
use token_http::ExchangeCache;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const SECRET_LEN: usize = 1024;
const SUBJECT_LEN: usize = 256;
const BYTES_SUBJECTS: usize = 100_000;

/// Answers at once with a fixed 1 KB token, keeping nothing.
#[derive(Debug)]
struct InstantIdp(String);

#[async_trait]
impl Credential for InstantIdp {
    fn id(&self) -> &str {
        "exchange-bench-idp"
    }

    async fn fetch(
        &self,
        _request: &TokenRequest,
        _previous: Option<&AccessToken>,
    ) -> Result<AccessToken, CredentialError> {
        Ok(AccessToken::new(self.0.as_str(), SystemTime::now())
            .with_expires_in(Duration::from_secs(3600)))
    }
}

fn idp() -> InstantIdp {
    InstantIdp("x".repeat(SECRET_LEN))
}

fn subjects(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let id = format!("subject-{i}-");
            format!("{id}{}", "s".repeat(SUBJECT_LEN - id.len()))
        })
        .collect()
}

fn exchange_cache(n: usize) -> ExchangeCache {
    ExchangeCache::builder(TokenCache::builder(idp()))
        .max_subjects(n)
        .rate_per_second(0)
        .build()
        .expect("an operating-system random source")
}

fn table1() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let subjects = subjects(BYTES_SUBJECTS);
    let request = TokenRequest::builder()
        .audience("https://orders.internal")
        .scope("orders.read")
        .build();
    let cache = exchange_cache(BYTES_SUBJECTS);
    let region = Region::new(GLOBAL);
    rt.block_on(async {
        for s in &subjects {
            let t = cache.exchange(s, &request).await.expect("exchange");
            drop(t);
        }
    });
    let stats = region.change();
    let net = stats.bytes_allocated as i64 - stats.bytes_deallocated as i64
        + stats.bytes_reallocated as i64;
    let per = net as f64 / BYTES_SUBJECTS as f64;
    // The exchanged token's own bytes: the `AccessToken` and its secret.
    let token_own = (std::mem::size_of::<AccessToken>() + SECRET_LEN) as f64;
    println!("1. bytes per cached subject, {BYTES_SUBJECTS} subjects ({SUBJECT_LEN}-byte subject tokens, {SECRET_LEN}-byte exchanged tokens)");
    println!("       total per subject          {per:>8.0} B");
    println!("       of which the token's own   {token_own:>8.0} B");
    println!(
        "       the rest (engine + key + subject copy) {:>8.0} B",
        per - token_own
    );
    assert_eq!(cache.cache().stats().keys, BYTES_SUBJECTS as u64);
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn fill_plain(rt: &tokio::runtime::Runtime, n: usize, fills: usize) -> f64 {
    let reqs: Vec<TokenRequest> = (0..n)
        .map(|i| TokenRequest::builder().scope(format!("user-{i}")).build())
        .collect();
    let mut per = Vec::new();
    for _ in 0..fills {
        let cache = TokenCache::builder(idp()).max_keys(n).build();
        let start = Instant::now();
        rt.block_on(async {
            for r in &reqs {
                std::hint::black_box(cache.get_token(r).await.expect("token").secret().len());
            }
        });
        per.push(start.elapsed().as_nanos() as f64 / n as f64 / 1000.0);
        drop(cache);
    }
    median(per)
}

fn fill_exchange(rt: &tokio::runtime::Runtime, n: usize, fills: usize) -> f64 {
    let subjects = subjects(n);
    let request = TokenRequest::builder().audience("a").build();
    let mut per = Vec::new();
    for _ in 0..fills {
        let cache = exchange_cache(n);
        let start = Instant::now();
        rt.block_on(async {
            for s in &subjects {
                std::hint::black_box(
                    cache
                        .exchange(s, &request)
                        .await
                        .expect("token")
                        .secret()
                        .len(),
                );
            }
        });
        per.push(start.elapsed().as_nanos() as f64 / n as f64 / 1000.0);
        drop(cache);
    }
    median(per)
}

fn table2(max: usize) {
    let current = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let multi = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!("2. cold key, µs per new key (median of the fills)");
    println!("       keys  fills  current-thread  2-worker  2-worker exchange");
    for n in [1_000usize, 100_000, 1_000_000] {
        if n > max {
            break;
        }
        let fills = (200_000 / n).clamp(3, 50);
        let c = fill_plain(&current, n, fills);
        let m = fill_plain(&multi, n, fills);
        let x = fill_exchange(&multi, n, fills);
        println!("   {n:>8}  {fills:>5}  {c:>14.2}  {m:>8.2}  {x:>17.2}");
    }
}

fn main() {
    let max = std::env::args()
        .nth(1)
        .map_or(100_000, |a| a.parse().expect("MAX_N"));
    table1();
    table2(max);
}
