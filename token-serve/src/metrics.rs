//! `/metrics`: the Prometheus text rendered by metrics-exporter-prometheus,
//! fed through the `metrics` facade.
//!
//! Install the recorder with [`prometheus_builder`] (it sets the histogram
//! buckets) before the sidecar is built; every family below then has its
//! `# HELP` and `# TYPE` lines. Histograms are in seconds with the
//! OpenTelemetry HTTP semantic-convention buckets ([`HTTP_BUCKETS`]: 0.005,
//! 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10), so
//! they aggregate across pods and read nothing, not 0, when idle.
//!
//! | name | type | labels |
//! |---|---|---|
//! | `tokencache_idp_request_duration_seconds` | histogram | `profile`, `outcome` = `ok` \| `error` |
//! | `tokencache_idp_calls_total` | counter | `profile`, `outcome` = `ok` \| `error` |
//! | `tokencache_token_lookups_total` | counter | `profile`, `result` = `hit` \| `miss` \| `stale` (stale: an expiring token served on an IdP error) |
//! | `tokencache_store_errors_total` | counter | `profile` |
//! | `tokencache_token_remaining_seconds` | gauge | `profile` |
//! | `tokencache_token_refresh_margin_seconds` | gauge | `profile`: the remaining lifetime at which the refresh starts |
//! | `tokencache_gateway_request_duration_seconds` | histogram | `route`, `method`, `status_class` = `1xx` \| `2xx` \| `3xx` \| `4xx` \| `5xx` |
//! | `tokencache_gateway_requests_total` | counter | `route`, `status` |
//! | `tokencache_endpoint_requests_total` | counter | `endpoint` = `token` \| `azure` \| `google` \| `exchange`, `result` = `ok` \| `refused` \| `unavailable` \| `bad_request` |
//! | `tokencache_exchanges_total` | counter | `route` (prefix, or `/v1/token/exchange`), `profile`, `outcome` = `hit` \| `exchanged` \| `invalid_subject` \| `rejected` \| `negative_cached` \| `rate_limited` \| `failed` (per-caller exchange) |
//! | `tokencache_unavailable_total` | counter | `source` (the route's prefix or the endpoint), `cause` = `idp_unreachable` \| `idp_refused` \| `store_unavailable` \| `starting` \| `upstream_unreachable` \| `upstream_timeout` |
//! | `tokencache_config_reloads_total` | counter | `result` = `success` \| `error` \| `unchanged` |
//! | `tokencache_connections_open` | gauge | `kind` = `gateway` \| `health` (the reserve for probes) |
//! | `tokencache_connections_refused_total` | counter | (none): closed at once, both caps in use |
//! | `tokencache_connections_timed_out_total` | counter | `reason` = `header_read` \| `idle` \| `write_stalled` |
//! | `tokencache_build_info` | gauge = 1 | `version`, `commit` (`TOKENCACHE_BUILD_COMMIT` at build time, else `unknown`) |
//! | `tokencache_ready` | gauge 0/1 | (none): what `/readyz` answers |
//! | `process_resident_memory_bytes`, `process_virtual_memory_bytes`, `process_open_fds`, `process_max_fds`, `process_cpu_seconds_total`, `process_start_time_seconds` | the standard process metrics | (none); Linux (`/proc`) only |
//!
//! No label carries a value derived from a secret (a credential id, a
//! secret's fingerprint, a cache key) or a raw path: `route` is the
//! configured prefix, `method` one of the standard methods or `other`.
//!
//! The per-profile counters are the profile's [`TokenCache`] statistics,
//! published when `/metrics` is scraped, as are the process metrics and
//! `tokencache_ready`; the gateway metrics are recorded as requests
//! complete, through handles per route registered on first use (so the
//! recorder must be installed before the sidecar is built, and a recorder
//! that drops idle metrics would lose a route's counts once it dropped
//! them).
//!
//! [`TokenCache`]: token_cache::TokenCache

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::{Method, Response, StatusCode};
use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use token_cache::CacheStats;

/// The OpenTelemetry HTTP semantic-convention histogram buckets, seconds.
pub const HTTP_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

const IDP_DURATION: &str = token_cache::metrics::IDP_REQUEST_DURATION;
const GATEWAY_DURATION: &str = "tokencache_gateway_request_duration_seconds";
const ENDPOINT_REQUESTS: &str = "tokencache_endpoint_requests_total";
const UNAVAILABLE: &str = "tokencache_unavailable_total";

/// A Prometheus recorder builder with [`HTTP_BUCKETS`] for the sidecar's
/// histograms (without them metrics-exporter-prometheus renders
/// summaries). Install it (`install_recorder`) and pass the handle to
/// [`SidecarBuilder::metrics`](crate::SidecarBuilder::metrics) or
/// [`FileOptions::metrics`](crate::FileOptions::metrics).
pub fn prometheus_builder() -> Result<PrometheusBuilder, BuildError> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(IDP_DURATION.to_owned()), &HTTP_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(GATEWAY_DURATION.to_owned()), &HTTP_BUCKETS)
}

/// Why a response is a 503 (or a 502/504 for the upstream), for
/// `tokencache_unavailable_total`: put in the response's extensions by
/// whoever makes it, counted by the dispatch that knows the route or
/// endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cause(pub(crate) &'static str);

impl Cause {
    pub(crate) const IDP_UNREACHABLE: Self = Self("idp_unreachable");
    pub(crate) const IDP_REFUSED: Self = Self("idp_refused");
    pub(crate) const STORE_UNAVAILABLE: Self = Self("store_unavailable");
    pub(crate) const STARTING: Self = Self("starting");
    pub(crate) const UPSTREAM_UNREACHABLE: Self = Self("upstream_unreachable");
    pub(crate) const UPSTREAM_TIMEOUT: Self = Self("upstream_timeout");

    /// `resp` marked with this cause.
    pub(crate) fn mark<B>(self, mut resp: Response<B>) -> Response<B> {
        resp.extensions_mut().insert(self);
        resp
    }
}

#[derive(Clone)]
pub(crate) struct Metrics {
    handle: PrometheusHandle,
}

impl Metrics {
    pub(crate) fn new(handle: PrometheusHandle) -> Self {
        describe();
        metrics::gauge!(
            "tokencache_build_info",
            "version" => env!("CARGO_PKG_VERSION"),
            "commit" => option_env!("TOKENCACHE_BUILD_COMMIT").unwrap_or("unknown")
        )
        .set(1.0);
        Self { handle }
    }

    pub(crate) fn profile(
        &self,
        name: &str,
        stats: &CacheStats,
        remaining_seconds: f64,
        refresh_margin_seconds: Option<f64>,
    ) {
        token_cache::metrics::export(name, stats);
        metrics::gauge!("tokencache_token_remaining_seconds", "profile" => name.to_owned())
            .set(remaining_seconds);
        if let Some(margin) = refresh_margin_seconds {
            metrics::gauge!("tokencache_token_refresh_margin_seconds", "profile" => name.to_owned())
                .set(margin);
        }
    }

    pub(crate) fn ready(&self, ready: bool) {
        metrics::gauge!("tokencache_ready").set(if ready { 1.0 } else { 0.0 });
    }

    pub(crate) fn render(&self) -> String {
        process::publish();
        // Drains expired histogram windows; without it they only grow.
        self.handle.run_upkeep();
        self.handle.render()
    }
}

/// Counts one answer of a token endpoint (`token`, `azure`, `google`,
/// `exchange`) by its status: 2xx `ok`, 401/403 `refused`, 5xx
/// `unavailable`, any other `bad_request`.
pub(crate) fn endpoint(endpoint: &'static str, status: StatusCode) {
    let result = match status.as_u16() {
        200..=299 => "ok",
        401 | 403 => "refused",
        500..=599 => "unavailable",
        _ => "bad_request",
    };
    metrics::counter!(ENDPOINT_REQUESTS, "endpoint" => endpoint, "result" => result).increment(1);
}

/// Counts `resp` in `tokencache_unavailable_total{source}` when it carries
/// a [`Cause`].
pub(crate) fn unavailable<B>(source: impl Into<metrics::SharedString>, resp: &Response<B>) {
    if let Some(Cause(cause)) = resp.extensions().get::<Cause>() {
        metrics::counter!(UNAVAILABLE, "source" => source.into(), "cause" => *cause).increment(1);
    }
}

/// Counts a 503 answered while the sidecar starts (no route known yet).
pub(crate) fn starting() {
    metrics::counter!(UNAVAILABLE, "source" => "sidecar", "cause" => Cause::STARTING.0)
        .increment(1);
}

/// The methods that get their own `method` label; any other is `other`.
const METHODS: [Method; 9] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::PATCH,
    Method::OPTIONS,
    Method::TRACE,
    Method::CONNECT,
];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// A route's `tokencache_gateway_request_duration_seconds` handles, by
/// method and status class, registered on first use.
pub(crate) struct RouteDurations {
    route: Arc<str>,
    slots: Box<[OnceLock<metrics::Histogram>]>,
}

impl RouteDurations {
    pub(crate) fn new(route: Arc<str>) -> Self {
        Self {
            route,
            slots: (0..(METHODS.len() + 1) * CLASSES.len())
                .map(|_| OnceLock::new())
                .collect(),
        }
    }

    /// Records one request of `method` answered with `status` after
    /// `elapsed`.
    pub(crate) fn record(&self, method: &Method, status: StatusCode, elapsed: Duration) {
        let m = METHODS
            .iter()
            .position(|x| x == method)
            .unwrap_or(METHODS.len());
        let c = usize::from(status.as_u16() / 100)
            .saturating_sub(1)
            .min(CLASSES.len() - 1);
        let Some(slot) = self.slots.get(m * CLASSES.len() + c) else {
            return;
        };
        slot.get_or_init(|| {
            let method = METHODS.get(m).map_or("other", Method::as_str);
            metrics::histogram!(
                GATEWAY_DURATION,
                "route" => Arc::clone(&self.route),
                "method" => method,
                "status_class" => CLASSES[c]
            )
        })
        .record(elapsed.as_secs_f64());
    }
}

/// `# HELP` (and the unit) of every family the sidecar exports.
fn describe() {
    describe_histogram!(
        IDP_DURATION,
        Unit::Seconds,
        "Duration of token requests to the identity provider, by profile and outcome."
    );
    describe_counter!(
        "tokencache_idp_calls_total",
        "Token requests made to the identity provider, by profile and outcome."
    );
    describe_counter!(
        "tokencache_token_lookups_total",
        "Token lookups by profile and result: hit, miss, or stale (an expiring token served because the identity provider failed)."
    );
    describe_counter!(
        "tokencache_store_errors_total",
        "Token store operations that failed, by profile."
    );
    describe_gauge!(
        "tokencache_token_remaining_seconds",
        Unit::Seconds,
        "Remaining lifetime of the profile's current token (0 when it has none)."
    );
    describe_gauge!(
        "tokencache_token_refresh_margin_seconds",
        Unit::Seconds,
        "Remaining lifetime at which the profile's current token is refreshed."
    );
    describe_histogram!(
        GATEWAY_DURATION,
        Unit::Seconds,
        "Duration of gateway requests, by route prefix, method and status class."
    );
    describe_counter!(
        "tokencache_gateway_requests_total",
        "Gateway requests answered, by route prefix and status code."
    );
    describe_counter!(
        ENDPOINT_REQUESTS,
        "Requests to the token endpoints (token, azure, google, exchange), by result."
    );
    describe_counter!(
        "tokencache_exchanges_total",
        "Per-caller token exchanges, by route (or /v1/token/exchange), profile and outcome: hit (the caller's cached token), exchanged, invalid_subject, rejected, negative_cached (refused locally after a rejection), rate_limited, failed."
    );
    describe_counter!(
        UNAVAILABLE,
        "Requests answered 503 (or 502/504 for an upstream), by route or endpoint (source) and cause."
    );
    describe_counter!(
        "tokencache_config_reloads_total",
        "Configuration reloads, by result."
    );
    describe_gauge!(
        "tokencache_connections_open",
        "Open connections, by kind (gateway, or health: the reserve for probes)."
    );
    describe_counter!(
        "tokencache_connections_refused_total",
        "Connections closed at once because every connection slot was in use."
    );
    describe_counter!(
        "tokencache_connections_timed_out_total",
        "Connections closed by a timeout, by reason."
    );
    describe_gauge!(
        "tokencache_build_info",
        "Always 1; the labels say which build of tokencache runs."
    );
    describe_gauge!(
        "tokencache_ready",
        "1 when /readyz answers ready (every profile has a valid token), else 0."
    );
    process::describe();
}

/// The standard process metrics, read from `/proc` on Linux (the
/// `metrics-process` crate would bring procfs and its dependencies for six
/// numbers).
mod process {
    use metrics::{describe_counter, describe_gauge, Unit};

    pub(super) fn describe() {
        describe_gauge!(
            "process_resident_memory_bytes",
            Unit::Bytes,
            "Resident memory size in bytes."
        );
        describe_gauge!(
            "process_virtual_memory_bytes",
            Unit::Bytes,
            "Virtual memory size in bytes."
        );
        describe_gauge!("process_open_fds", "Number of open file descriptors.");
        describe_gauge!(
            "process_max_fds",
            "Maximum number of open file descriptors."
        );
        describe_counter!(
            "process_cpu_seconds_total",
            Unit::Seconds,
            "Total user and system CPU time spent in seconds."
        );
        describe_gauge!(
            "process_start_time_seconds",
            Unit::Seconds,
            "Start time of the process since unix epoch in seconds."
        );
    }

    /// Sets the process metrics from `/proc/self`; what cannot be read is
    /// left out.
    pub(super) fn publish() {
        if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
            for (field, name) in [
                ("VmRSS:", "process_resident_memory_bytes"),
                ("VmSize:", "process_virtual_memory_bytes"),
            ] {
                if let Some(kb) = kib(&status, field) {
                    metrics::gauge!(name).set(kb as f64 * 1024.0);
                }
            }
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            // The directory's own descriptor is one of them.
            let open = dir.count().saturating_sub(1);
            metrics::gauge!("process_open_fds").set(open as f64);
        }
        if let Some(max) = rustix::process::getrlimit(rustix::process::Resource::Nofile).current {
            metrics::gauge!("process_max_fds").set(max as f64);
        }
        let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
            return;
        };
        let Some(fields) = stat_fields(&stat) else {
            return;
        };
        let ticks = rustix::param::clock_ticks_per_second() as f64;
        if ticks <= 0.0 {
            return;
        }
        // Fields after `(comm)`: state is field 3; utime 14, stime 15,
        // starttime 22 (proc(5)), so indices 11, 12 and 19 here.
        let field = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
        if let (Some(utime), Some(stime)) = (field(11), field(12)) {
            metrics::counter!("process_cpu_seconds_total")
                .absolute(((utime + stime) as f64 / ticks) as u64);
        }
        if let (Some(start), Some(boot)) = (field(19), boot_time()) {
            metrics::gauge!("process_start_time_seconds").set(boot as f64 + start as f64 / ticks);
        }
    }

    /// The value in KiB of `field` (`VmRSS:`) in `/proc/self/status`.
    fn kib(status: &str, field: &str) -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(field))?;
        line[field.len()..].split_whitespace().next()?.parse().ok()
    }

    /// The fields of `/proc/self/stat` after the command name (which may
    /// hold spaces and parentheses: it ends at the last `)`).
    fn stat_fields(stat: &str) -> Option<Vec<&str>> {
        let after = &stat[stat.rfind(')')? + 1..];
        Some(after.split_whitespace().collect())
    }

    /// The system's boot time, seconds since the epoch (`btime`).
    fn boot_time() -> Option<u64> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let line = stat.lines().find(|l| l.starts_with("btime "))?;
        line["btime ".len()..].trim().parse().ok()
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn stat_fields_start_after_a_command_name_with_spaces_and_parentheses() {
            let stat = "42 (a (b) c) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20";
            let f = super::stat_fields(stat).expect("fields");
            assert_eq!(f[0], "S");
            assert_eq!(f[11], "11");
            assert_eq!(f[19], "19");
        }

        #[test]
        fn kib_reads_the_number_of_a_status_field() {
            let status = "Name:\tx\nVmSize:\t  1234 kB\nVmRSS:\t   56 kB\n";
            assert_eq!(super::kib(status, "VmRSS:"), Some(56));
            assert_eq!(super::kib(status, "VmSize:"), Some(1234));
            assert_eq!(super::kib(status, "VmPeak:"), None);
        }
    }
}
