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
//! | `tokencache_connections_open` | gauge | `kind` = `gateway` \| `health` (the reserve for probes) |
//! | `tokencache_connections_refused_total` | counter | (none): closed at once, both caps in use |
//! | `tokencache_connections_timed_out_total` | counter | `reason` = `header_read` \| `idle` \| `write_stalled` |
//!
//! The per-profile counters are the profile's [`TokenCache`] statistics,
//! published when `/metrics` is scraped; the gateway counter is counted as
//! requests complete, through a handle per route and status registered on
//! first use (so the recorder must be installed before the sidecar is
//! built, and a recorder that drops idle metrics would lose a route's
//! counts once it dropped them).
//!
//! [`TokenCache`]: token_cache::TokenCache

use metrics_exporter_prometheus::PrometheusHandle;
use token_cache::CacheStats;

#[derive(Clone)]
pub(crate) struct Metrics {
    handle: PrometheusHandle,
}

impl Metrics {
    pub(crate) fn new(handle: PrometheusHandle) -> Self {
        Self { handle }
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
