//! The demo's callers: tasks calling `get_token` back to back, checking
//! every token against the wall clock, recording latencies.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use token_core::{TokenCache, TokenRequest};

/// When the callers stop.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Until {
    /// At this instant.
    Time(Instant),
    /// When this many requests have been made in this process.
    Requests(u64),
}

/// Latencies in buckets of about 3% width: percentiles without keeping
/// every sample.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Histogram {
    counts: Vec<u64>,
    max_nanos: u64,
}

impl Histogram {
    /// Sub-buckets per power of two.
    const SUB: u32 = 32;

    pub(crate) fn new() -> Self {
        Self {
            counts: vec![0; (64 * Self::SUB) as usize],
            max_nanos: 0,
        }
    }

    fn bucket(nanos: u64) -> usize {
        if nanos < u64::from(Self::SUB) {
            return nanos as usize;
        }
        let exp = 63 - nanos.leading_zeros();
        let shift = exp - Self::SUB.trailing_zeros();
        let sub = (nanos >> shift) - u64::from(Self::SUB);
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

    pub(crate) fn record(&mut self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        if let Some(c) = self.counts.get_mut(Self::bucket(nanos)) {
            *c += 1;
        }
        self.max_nanos = self.max_nanos.max(nanos);
    }

    pub(crate) fn merge(&mut self, other: &Self) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.max_nanos = self.max_nanos.max(other.max_nanos);
    }

    pub(crate) fn percentile(&self, p: f64) -> Duration {
        let total: u64 = self.counts.iter().sum();
        let rank = ((total as f64) * p).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, &count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Duration::from_nanos(Self::bucket_top(i).min(self.max_nanos));
            }
        }
        Duration::from_nanos(self.max_nanos)
    }
}

/// What the callers of one process saw, plus that process's cache stats.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Report {
    pub(crate) served: u64,
    pub(crate) errors: u64,
    pub(crate) expired: u64,
    pub(crate) stale_served: u64,
    pub(crate) hits: u64,
    pub(crate) misses: u64,
    pub(crate) process_idp_calls: u64,
    pub(crate) latency: Histogram,
    #[serde(default)]
    pub(crate) first_error: Option<String>,
}

impl Report {
    pub(crate) fn empty() -> Self {
        Self {
            served: 0,
            errors: 0,
            expired: 0,
            stale_served: 0,
            hits: 0,
            misses: 0,
            process_idp_calls: 0,
            latency: Histogram::new(),
            first_error: None,
        }
    }

    pub(crate) fn merge(&mut self, other: &Self) {
        self.served += other.served;
        self.errors += other.errors;
        self.expired += other.expired;
        self.stale_served += other.stale_served;
        self.hits += other.hits;
        self.misses += other.misses;
        self.process_idp_calls += other.process_idp_calls;
        self.latency.merge(&other.latency);
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
    }
}

/// One caller: `get_token` back to back until `until`.
async fn caller(
    cache: TokenCache,
    requests: Arc<Vec<TokenRequest>>,
    first: usize,
    until: Until,
    made: Arc<AtomicU64>,
) -> Report {
    let mut report = Report::empty();
    let mut i = first;
    loop {
        match until {
            Until::Time(t) if Instant::now() >= t => break,
            Until::Requests(n) if made.fetch_add(1, Ordering::Relaxed) >= n => break,
            _ => {}
        }
        let request = &requests[i % requests.len()];
        i += 1;
        let started = Instant::now();
        let result = cache.get_token(request).await;
        report.latency.record(started.elapsed());
        match result {
            Ok(token) => {
                report.served += 1;
                if let Until::Time(_) = until {
                    made.fetch_add(1, Ordering::Relaxed);
                }
                // Expired: at or past expires_at by the wall clock now.
                if !token.is_live_at(SystemTime::now()) {
                    report.expired += 1;
                }
            }
            Err(e) => {
                report.errors += 1;
                if report.first_error.is_none() {
                    report.first_error = Some(e.to_string());
                }
            }
        }
        // A real caller does other work between calls; this one lets the
        // other callers (and the refreshes) run.
        tokio::task::yield_now().await;
    }
    report
}

/// Runs `callers` callers on `cache` over `requests` until `until`;
/// `made` counts requests as they are made (for the progress line).
pub(crate) async fn run(
    cache: &TokenCache,
    requests: Arc<Vec<TokenRequest>>,
    callers: usize,
    until: Until,
    made: Arc<AtomicU64>,
) -> Report {
    let tasks: Vec<_> = (0..callers)
        .map(|n| {
            tokio::spawn(caller(
                cache.clone(),
                Arc::clone(&requests),
                n,
                until,
                Arc::clone(&made),
            ))
        })
        .collect();
    let mut total = Report::empty();
    for task in tasks {
        match task.await {
            Ok(r) => total.merge(&r),
            Err(e) => {
                total.errors += 1;
                total
                    .first_error
                    .get_or_insert_with(|| format!("a caller task failed: {e}"));
            }
        }
    }
    let stats = cache.stats();
    total.stale_served = stats.stale_served;
    total.hits = stats.hits;
    total.misses = stats.misses;
    total.process_idp_calls = stats.idp_calls;
    total
}

#[cfg(test)]
mod tests {
    use super::*;

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
