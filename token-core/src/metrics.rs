//! Metrics through the [`metrics`](https://docs.rs/metrics) facade, with the
//! `metrics` feature: whatever recorder the program installs (Prometheus,
//! StatsD, ...) gets the engine's numbers. Without the feature the engine's
//! hooks compile to nothing.
//!
//! | metric | type | labels | from |
//! |---|---|---|---|
//! | `tokencache_idp_request_duration_seconds` | histogram (seconds) | `profile`, `outcome` = `ok` \| `error` | every IdP call, as it finishes |
//! | `tokencache_token_lookups_total` | counter | `profile`, `result` = `hit` \| `miss` \| `stale` | [`export`] |
//! | `tokencache_idp_calls_total` | counter | `profile`, `outcome` = `ok` \| `error` | [`export`] |
//! | `tokencache_store_errors_total` | counter | `profile` | [`export`] |
//!
//! The hit path stays free of locks and allocation: lookups are counted by
//! the engine's own sharded counters ([`CacheStats`]) and published by
//! [`export`], which a program calls when its metrics are scraped (or on a
//! timer).
//!
//! `profile` is the name the cache was given
//! ([`TokenCacheBuilder::metrics_name`](crate::TokenCacheBuilder::metrics_name),
//! [`TokenCache::set_metrics_name`](crate::TokenCache::set_metrics_name)),
//! [`UNNAMED`] until it has one: never the credential's id or its secret's
//! fingerprint, so the label's values stay few and say nothing about a
//! secret. The histogram is recorded as the recorder is configured: give
//! it buckets (metrics-exporter-prometheus's `set_buckets_for_metric`; the
//! sidecar uses the OpenTelemetry HTTP buckets) or it is exported as a
//! summary.

#![cfg_attr(not(feature = "metrics"), allow(unreachable_pub))]

use std::future::Future;

/// The `profile` label of a cache that was given no name.
pub const UNNAMED: &str = "unnamed";

/// The name of the IdP call histogram, for a recorder's bucket settings.
pub const IDP_REQUEST_DURATION: &str = "tokencache_idp_request_duration_seconds";

#[cfg(feature = "metrics")]
use crate::CacheStats;

/// Publishes `stats` (from [`TokenCache::stats`](crate::TokenCache::stats))
/// as counters labelled `profile = name`. Counters are set to the absolute
/// values, so calling it again is harmless.
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub fn export(name: &str, stats: &CacheStats) {
    let lookup = |result: &'static str, v: u64| {
        metrics::counter!("tokencache_token_lookups_total", "profile" => name.to_owned(), "result" => result)
            .absolute(v);
    };
    lookup("hit", stats.hits);
    lookup("miss", stats.misses);
    lookup("stale", stats.stale_served);
    let ok = stats.idp_calls.saturating_sub(stats.errors);
    metrics::counter!("tokencache_idp_calls_total", "profile" => name.to_owned(), "outcome" => "ok")
        .absolute(ok);
    metrics::counter!("tokencache_idp_calls_total", "profile" => name.to_owned(), "outcome" => "error")
        .absolute(stats.errors);
    metrics::counter!("tokencache_store_errors_total", "profile" => name.to_owned())
        .absolute(stats.store_errors);
}

/// Awaits one IdP call, recording its duration and outcome.
#[inline]
pub(crate) async fn timed_fetch<T, E>(
    profile: &str,
    fetch: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    #[cfg(feature = "metrics")]
    {
        let started = std::time::Instant::now();
        let result = fetch.await;
        let outcome = if result.is_ok() { "ok" } else { "error" };
        metrics::histogram!(
            IDP_REQUEST_DURATION,
            "profile" => profile.to_owned(),
            "outcome" => outcome
        )
        .record(started.elapsed().as_secs_f64());
        result
    }
    #[cfg(not(feature = "metrics"))]
    {
        let _ = profile;
        fetch.await
    }
}
