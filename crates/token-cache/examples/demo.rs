//! What the cache saves: many concurrent callers, a slow fake IdP, short
//! tokens.
//!
//! ```text
//! cargo run -p token-cache --example demo
//! cargo run -p token-cache --example demo -- --callers 500 --seconds 20 --lifetime 4 --keys 5
//! ```
//!
//! `--callers` tasks call `cache.get_token` back to back (yielding between
//! calls) for `--seconds`, spread over `--keys` distinct requests. The fake
//! IdP takes 20 ms per token and issues tokens that live `--lifetime`
//! seconds, so the run spans several refreshes. At the end a table compares
//! the IdP calls made with the ones a client without a cache would have made
//! (one per request), and checks each token handed out against the wall
//! clock: none may be expired. The process fails if one was, or if any call
//! failed. A debug build is fine; `--release` only makes the hits faster.

use std::fmt;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use token_cache::{
    async_trait, AccessToken, Credential, CredentialError, MemoryStore, RefreshPolicy, TokenCache,
    TokenRequest,
};

/// How long the fake IdP takes to answer.
const IDP_LATENCY: Duration = Duration::from_millis(20);

/// The command line.
#[derive(Debug)]
struct Options {
    callers: usize,
    seconds: f64,
    lifetime: f64,
    keys: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            callers: 200,
            seconds: 10.0,
            lifetime: 6.0,
            keys: 3,
        }
    }
}

const USAGE: &str = "usage: demo [--callers N] [--seconds S] [--lifetime S] [--keys K]
  --callers N    concurrent caller tasks (default 200)
  --seconds S    how long they call (default 10)
  --lifetime S   lifetime of each token the fake IdP issues (default 6)
  --keys K       distinct token requests the callers spread over (default 3)";

impl Options {
    fn parse(args: impl IntoIterator<Item = String>) -> Result<Self, String> {
        let mut options = Self::default();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            if arg == "-h" || arg == "--help" {
                return Err(String::new());
            }
            let (name, value) = match arg.split_once('=') {
                Some((name, value)) => (name.to_owned(), value.to_owned()),
                None => {
                    let value = args.next().ok_or_else(|| format!("{arg} needs a value"))?;
                    (arg, value)
                }
            };
            match name.as_str() {
                "--callers" => options.callers = positive(&name, &value)?,
                "--keys" => options.keys = positive(&name, &value)?,
                "--seconds" => options.seconds = positive(&name, &value)?,
                "--lifetime" => options.lifetime = positive(&name, &value)?,
                _ => return Err(format!("unknown option {name}")),
            }
        }
        Ok(options)
    }
}

fn positive<T: std::str::FromStr + PartialOrd + Default>(
    name: &str,
    value: &str,
) -> Result<T, String> {
    match value.parse::<T>() {
        Ok(v) if v > T::default() => Ok(v),
        _ => Err(format!("{name} needs a positive number, got {value:?}")),
    }
}

/// An in-process stand-in for an IdP: counts calls, answers after
/// [`IDP_LATENCY`], issues tokens that live `lifetime`.
#[derive(Debug)]
struct FakeIdp {
    calls: AtomicU64,
    lifetime: Duration,
}

#[async_trait]
impl Credential for FakeIdp {
    fn id(&self) -> &str {
        "demo-fake-idp"
    }

    async fn fetch(
        &self,
        request: &TokenRequest,
        _previous: Option<&AccessToken>,
    ) -> Result<AccessToken, CredentialError> {
        let n = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        // `obtained_at` is when the request was sent, as the contract asks.
        let sent = SystemTime::now();
        tokio::time::sleep(IDP_LATENCY).await;
        Ok(AccessToken::new(format!("demo-token-{n}"), sent)
            .with_expires_in(self.lifetime)
            .with_scope(request.scope_string()))
    }
}

/// Latencies in buckets of about 3% width: enough for percentiles without
/// keeping every sample.
struct Histogram {
    counts: Vec<u64>,
    max: Duration,
}

impl Histogram {
    /// Sub-buckets per power of two.
    const SUB: u32 = 32;

    fn new() -> Self {
        Self {
            counts: vec![0; (64 * Self::SUB) as usize],
            max: Duration::ZERO,
        }
    }

    fn bucket(nanos: u64) -> usize {
        if nanos < u64::from(Self::SUB) {
            return nanos as usize;
        }
        let exp = 63 - nanos.leading_zeros(); // >= log2(SUB)
        let shift = exp - Self::SUB.trailing_zeros();
        let sub = (nanos >> shift) - u64::from(Self::SUB); // 0..SUB
        ((shift + 1) * Self::SUB) as usize + sub as usize
    }

    /// The upper bound of a bucket, in nanoseconds.
    fn bucket_top(index: usize) -> u64 {
        let index = index as u128;
        let sub = u128::from(Self::SUB);
        if index < sub {
            return index as u64;
        }
        let shift = index / sub - 1;
        let top = ((index % sub + sub + 1) << shift) - 1;
        u64::try_from(top).unwrap_or(u64::MAX)
    }

    fn record(&mut self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.counts[Self::bucket(nanos)] += 1;
        self.max = self.max.max(d);
    }

    fn merge(&mut self, other: &Self) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.max = self.max.max(other.max);
    }

    fn percentile(&self, p: f64) -> Duration {
        let total: u64 = self.counts.iter().sum();
        let rank = ((total as f64) * p).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, &count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Duration::from_nanos(Self::bucket_top(i)).min(self.max);
            }
        }
        self.max
    }
}

/// What one caller task saw.
struct CallerReport {
    served: u64,
    errors: u64,
    expired: u64,
    closest_to_expiry: Option<Duration>,
    latency: Histogram,
}

async fn caller(
    cache: TokenCache,
    requests: Arc<Vec<TokenRequest>>,
    first: usize,
    until: Instant,
) -> CallerReport {
    let mut report = CallerReport {
        served: 0,
        errors: 0,
        expired: 0,
        closest_to_expiry: None,
        latency: Histogram::new(),
    };
    let mut i = first;
    while Instant::now() < until {
        let request = &requests[i % requests.len()];
        i += 1;
        let started = Instant::now();
        let result = cache.get_token(request).await;
        report.latency.record(started.elapsed());
        match result {
            Ok(token) => {
                report.served += 1;
                // Expired means: at or past expires_at by the wall clock now.
                let left = token
                    .expires_at()
                    .and_then(|at| at.duration_since(SystemTime::now()).ok())
                    .filter(|left| !left.is_zero());
                match left {
                    Some(left) => {
                        report.closest_to_expiry =
                            Some(report.closest_to_expiry.map_or(left, |c| c.min(left)));
                    }
                    None => report.expired += 1,
                }
            }
            Err(e) => {
                report.errors += 1;
                if report.errors == 1 {
                    eprintln!("get_token failed: {e}");
                }
            }
        }
        // A real caller does other work between calls; this one lets the
        // other callers (and the refreshes) run.
        tokio::task::yield_now().await;
    }
    report
}

/// `1234567` as `1,234,567`.
struct Thousands(u64);

impl fmt::Display for Thousands {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = self.0.to_string();
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        f.pad(&out)
    }
}

fn human(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos < 1_000 {
        format!("{nanos} ns")
    } else if nanos < 1_000_000 {
        format!("{:.1} µs", nanos as f64 / 1e3)
    } else if nanos < 1_000_000_000 {
        format!("{:.1} ms", nanos as f64 / 1e6)
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let options = match Options::parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("error: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let lifetime = Duration::from_secs_f64(options.lifetime);
    let idp = Arc::new(FakeIdp {
        calls: AtomicU64::new(0),
        lifetime,
    });
    // The defaults suit hour-long tokens (refresh 5+ minutes ahead, 60 s
    // skew); these suit tokens of a few seconds. Both are capped by the
    // policy relative to the lifetime, so any --lifetime works.
    let policy = RefreshPolicy::new()
        .expiry_skew(Duration::from_secs(1))
        .refresh_ahead_min(Duration::from_secs(1));
    let cache = TokenCache::builder(Arc::clone(&idp))
        .store(MemoryStore::default())
        .policy(policy)
        .build();
    let requests: Arc<Vec<TokenRequest>> = Arc::new(
        (0..options.keys)
            .map(|k| {
                TokenRequest::builder()
                    .scope(format!("demo.scope-{k}"))
                    .build()
            })
            .collect(),
    );

    println!(
        "token-cache demo: {} callers calling get_token back to back for {} s over {} keys;\n\
         fake IdP: {} ms per fetch, tokens live {} s. Running...",
        options.callers,
        options.seconds,
        options.keys,
        IDP_LATENCY.as_millis(),
        options.lifetime,
    );
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(options.seconds);
    let tasks: Vec<_> = (0..options.callers)
        .map(|n| tokio::spawn(caller(cache.clone(), Arc::clone(&requests), n, until)))
        .collect();

    let mut served = 0;
    let mut errors = 0;
    let mut expired = 0;
    let mut closest: Option<Duration> = None;
    let mut latency = Histogram::new();
    for task in tasks {
        match task.await {
            Ok(report) => {
                served += report.served;
                errors += report.errors;
                expired += report.expired;
                closest = match (closest, report.closest_to_expiry) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                latency.merge(&report.latency);
            }
            Err(e) => {
                eprintln!("a caller task failed: {e}");
                errors += 1;
            }
        }
    }
    let elapsed = started.elapsed();
    let stats = cache.stats();
    let idp_calls = idp.calls.load(Ordering::Relaxed);
    let reduction = served as f64 / idp_calls.max(1) as f64;

    let rows: Vec<(&str, String)> = vec![
        (
            "requests served",
            format!(
                "{}  ({}/s)",
                Thousands(served),
                Thousands((served as f64 / elapsed.as_secs_f64()) as u64)
            ),
        ),
        (
            "IdP calls with token-cache",
            Thousands(idp_calls).to_string(),
        ),
        (
            "IdP calls without a cache",
            format!("{}  (one per request)", Thousands(served)),
        ),
        (
            "reduction factor",
            format!("{}x", Thousands(reduction as u64)),
        ),
        (
            "hit ratio (cache.stats)",
            format!(
                "{:.5}%  ({} hits, {} misses)",
                stats.hit_ratio() * 100.0,
                Thousands(stats.hits),
                Thousands(stats.misses)
            ),
        ),
        (
            "background refreshes",
            Thousands(stats.refreshes).to_string(),
        ),
        ("get_token latency p50", human(latency.percentile(0.50))),
        ("get_token latency p99", human(latency.percentile(0.99))),
        ("get_token latency max", human(latency.max)),
        (
            "stale tokens served",
            Thousands(stats.stale_served).to_string(),
        ),
        ("errors", Thousands(errors).to_string()),
        (
            "expired tokens handed out",
            format!(
                "{}  (each checked against SystemTime::now())",
                Thousands(expired)
            ),
        ),
        (
            "least lifetime left on one",
            closest.map_or_else(|| "-".to_owned(), human),
        ),
    ];
    println!();
    for (name, value) in &rows {
        println!("  {name:<28} {value}");
    }

    if expired > 0 || errors > 0 {
        eprintln!("\nFAILED: {expired} expired tokens handed out, {errors} errors");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_ordered_and_tight() {
        let mut last = 0;
        for nanos in [
            0,
            1,
            31,
            32,
            33,
            63,
            64,
            100,
            1_000,
            123_456,
            10_000_000_000,
        ] {
            let b = Histogram::bucket(nanos);
            assert!(b >= last);
            last = b;
            let top = Histogram::bucket_top(b);
            assert!(
                top >= nanos && top as f64 <= nanos as f64 * 1.04 + 1.0,
                "{nanos} -> {top}"
            );
        }
    }

    #[test]
    fn percentiles_are_within_a_bucket_of_the_truth() {
        let mut h = Histogram::new();
        for micros in 1..=1000 {
            h.record(Duration::from_micros(micros));
        }
        let close = |got: Duration, want_micros: f64| {
            let got = got.as_secs_f64() * 1e6;
            assert!(
                (got - want_micros).abs() <= want_micros * 0.04,
                "{got} vs {want_micros}"
            );
        };
        close(h.percentile(0.50), 500.0);
        close(h.percentile(0.99), 990.0);
        assert_eq!(h.percentile(1.0), Duration::from_micros(1000));
    }
}
