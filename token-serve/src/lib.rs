//! The token-cache sidecar as a library: hyper services that give programs
//! in any language the engine's economy.
//!
//! - **Egress gateway**: requests under a route's prefix go to its upstream
//!   with `Authorization: Bearer <token>`; one retry after `401
//!   invalid_token`; `503` with the cause when no valid token can be had.
//!   HTTP/1.1 and HTTP/2 (h2c with prior knowledge) on one listener; h2 to
//!   upstreams by ALPN or a route's `protocol = "h2c"`, one multiplexed
//!   connection per route; gRPC streams and trailers pass through, the
//!   sidecar's refusals to gRPC calls are `grpc-status` answers, and
//!   `grpc-status: 16` invalidates the token as a 401 does.
//! - **Token endpoint** `GET /v1/token?profile=NAME`, guarded against SSRF
//!   (`Metadata: true`, no forwarded requests, optional shared secret).
//! - **Vendor-compatible endpoints**: Azure App Service managed identity
//!   (`/azure/token`) and the Google metadata server (`/computeMetadata/v1/`:
//!   every path Google's SDKs probe, `?scopes=` served per scope set), so
//!   unmodified SDKs get their tokens from the sidecar.
//! - **Token parameters per route**: `scopes`, `audience`, `resource` on a
//!   route get it its own token from the profile's credential and store.
//! - `/metrics` (Prometheus), `/healthz`, `/readyz`; with `[serve]
//!   admin_listen`, also on an admin listener of their own, with the admin
//!   API (list keys, purge, refresh): see [`AdminListener`].
//! - **Forward proxy**: routes by `host` (the `Host` header, absolute-form
//!   requests from `HTTP_PROXY` clients) and, with `[serve.proxy]`,
//!   `CONNECT` tunnels to routed hosts with TLS terminated by a local CA
//!   (`HTTPS_PROXY`); any other host is refused (`403 host_not_routed`).
//! - **Request guards** before any token work: `CONNECT` refused (without
//!   `[serve.proxy]`), exactly
//!   one valid `Host` naming the sidecar (DNS rebinding; `[serve]
//!   allowed_hosts`), no browser cross-site requests unless a route opts in
//!   (`allow_browser_origins`), loops through the sidecar itself detected
//!   by `Via` (see the README's "Request guards").
//! - **Limits**: header-read and idle timeouts, a connection cap below the
//!   open-file limit with a reserve for health probes, per-route upstream
//!   timeouts, a drain on shutdown ([`serve`], [`ConnectionLimits`]).
//!   [`serve_starting`] serves `/healthz` while the sidecar is still being
//!   built.
//!
//! `tokencache serve --config PATH` runs it. Embed it in your own server
//! from a profiles file with [`FileSidecar`], which reloads the file on
//! SIGHUP or when it changes (each profile built by token-profile, as
//! `tokencache get --profile NAME` builds it):
//!
//! ```no_run
//! use token_serve::{serve, FileOptions, FileSidecar, DEFAULT_WATCH_INTERVAL};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let path = std::path::Path::new("/etc/tokencache/config.toml");
//! let sidecar = FileSidecar::open(path, FileOptions::default()).await?; // built, no token fetched
//! let _watch = sidecar.watch(DEFAULT_WATCH_INTERVAL)?; // SIGHUP and file changes
//! let listener = tokio::net::TcpListener::bind(sidecar.listen().await).await?;
//! let first = sidecar.clone();
//! tokio::spawn(async move { first.prefetch().await }); // /readyz says 503 until done
//! serve(sidecar.sidecar().clone(), listener, async { let _ = tokio::signal::ctrl_c().await; }, sidecar.limits()).await;
//! # Ok(()) }
//! ```
//!
//! Or from your own caches, by building a [`Sidecar`] and calling
//! [`Sidecar::handle`] or [`serve`].
//!
//! ```no_run
//! use token_cache::{TokenCache, TokenRequest};
//! use token_serve::{serve, ServeConfig, Sidecar};
//!
//! # async fn run(cache: TokenCache) -> Result<(), Box<dyn std::error::Error>> {
//! let config = ServeConfig::parse(
//!     r#"
//!     [[serve.routes]]
//!     prefix = "/orders/"
//!     upstream = "https://orders.internal"
//!     profile = "orders"
//!     "#,
//! )?;
//! let request = TokenRequest::builder().scope("orders.read").build();
//! let sidecar = Sidecar::builder(config.clone())
//!     .profile("orders", &cache, &request)
//!     .build()?;
//! sidecar.prefetch().await;
//! let _warm = sidecar.keep_warm()?;
//! let listener = tokio::net::TcpListener::bind(config.listen).await?;
//! serve(sidecar, listener, async { let _ = tokio::signal::ctrl_c().await; }, config.limits()).await;
//! # Ok(()) }
//! ```

mod admin;
mod config;
mod endpoints;
mod exchange;
mod gateway;
mod guard;
mod metrics;
mod pool;
mod proxy;
mod reload;
mod response;
mod server;
mod sidecar;
mod tls;
mod trace;
mod variants;
mod workers;

pub use admin::{AdminListener, AdminSettings};
pub use config::{
    ConfigError, GoogleAccount, Protocol, Route, ServeConfig, DEFAULT_ADMIN_CONNECTIONS,
    DEFAULT_DRAIN, DEFAULT_LISTEN, DEFAULT_RETRY_BODY_LIMIT,
};
pub use config::{
    ConnectionLimits, ConnectionSettings, DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_HEALTH_CONNECTIONS,
    DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_PREFETCH_CONCURRENCY, DEFAULT_UPSTREAM_TIMEOUT,
};
pub use config::{ProxyConfig, DEFAULT_TLS_HANDSHAKE_TIMEOUT};
pub use config::{DEFAULT_MAX_SCOPE_SETS, DEFAULT_UNIVERSE_DOMAIN};
pub use endpoints::SECRET_HEADER;
pub use exchange::{ExchangeSettings, RouteMode, MAX_EXCHANGE_BODY};
pub use metrics::{prometheus_builder, HTTP_BUCKETS};
pub use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
pub use pool::{
    UpstreamBody, UpstreamBodyError, CONNECT_TIMEOUT, H2_KEEPALIVE, H2_KEEPALIVE_TIMEOUT, MAX_IDLE,
    POOL_IDLE,
};
pub use reload::{FileOptions, FileSidecar, LoadError, ReloadReport, DEFAULT_WATCH_INTERVAL};
pub use response::Body;
pub use server::{
    raise_fd_limit, serve, serve_starting, serve_with_admin, Drained, H2_MAX_CONCURRENT_STREAMS,
    H2_PING_TIMEOUT, HEALTH_HEADER_READ_TIMEOUT,
};
pub use sidecar::{Readiness, Sidecar, SidecarBuilder};
pub use workers::MAX_WORKERS;
