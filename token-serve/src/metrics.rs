//! `/metrics`: the Prometheus text rendered by metrics-exporter-prometheus,
//! fed through the `metrics` facade.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `tokencache_token_lookups_total` | counter | `profile`, `result` = `hit` \| `miss` \| `stale` |
//! | `tokencache_idp_calls_total` | counter | `profile`, `outcome` = `ok` \| `error` |
//! | `tokencache_store_errors_total` | counter | `profile` |
//! | `tokencache_token_remaining_seconds` | gauge | `profile` |
//! | `tokencache_gateway_requests_total` | counter | `route`, `status` |
//! | `tokencache_fetch_duration_seconds` | histogram | `credential`, `outcome` (from token-core's `metrics` feature) |
//!
//! The per-profile counters are the profile's [`TokenCache`] statistics,
//! published when `/metrics` is scraped; the gateway counter is counted as
//! requests complete.
//!
//! [`TokenCache`]: token_cache::TokenCache

use std::sync::Arc;

use http::StatusCode;
use metrics_exporter_prometheus::PrometheusHandle;
use token_cache::CacheStats;

pub(crate) struct Metrics {
    handle: PrometheusHandle,
}

impl Metrics {
    pub(crate) fn new(handle: PrometheusHandle) -> Self {
        Self { handle }
    }

    pub(crate) fn gateway_request(&self, route: &Arc<str>, status: StatusCode) {
        metrics::counter!(
            "tokencache_gateway_requests_total",
            "route" => Arc::clone(route),
            "status" => status.as_u16().to_string()
        )
        .increment(1);
    }

    pub(crate) fn profile(&self, name: &str, stats: &CacheStats, remaining_seconds: f64) {
        token_cache::metrics::export(name, stats);
        metrics::gauge!("tokencache_token_remaining_seconds", "profile" => name.to_owned())
            .set(remaining_seconds);
    }

    pub(crate) fn render(&self) -> String {
        // Drains expired histogram windows; without it they only grow.
        self.handle.run_upkeep();
        self.handle.render()
    }
}
