//! [`Sidecar`]: the profiles, routes and guards, and the dispatch of one
//! request to the endpoint that answers it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use token_cache::{
    CredentialError, Error, FailureCause, KeepWarm, Secret, Token, TokenCache, TokenHandle,
    TokenRequest,
};

use crate::config::{ConfigError, GoogleAccount, ServeConfig};
use crate::gateway::{self, BearerCache, GatewayRoute};
use crate::guard::Guards;
use crate::metrics::Metrics;
use crate::response::{self, Body};
use crate::variants::{self, ScopeSets, Variant};
use crate::{endpoints, tls};

/// How long `/readyz` and `/metrics` wait for a profile's token before
/// calling it unavailable. A token in the cache answers at once; this bounds
/// the case where a fetch is in flight.
const PEEK_TIMEOUT: Duration = Duration::from_millis(200);

/// One profile: the cache that holds its token, bound to its request.
#[derive(Clone)]
pub(crate) struct Profile {
    pub(crate) cache: TokenCache,
    pub(crate) handle: TokenHandle,
    /// The gateway's `Authorization` value for the current token.
    pub(crate) bearer: Arc<BearerCache>,
    /// The profile's store, when built from a profiles file: `/readyz`
    /// reports it degraded while it is unreachable.
    pub(crate) store: Option<token_profile::OpenedStore>,
    /// DPoP (issue 21): the key that signs a proof per forwarded request.
    pub(crate) dpop: Option<token_http::DpopKey>,
}

pub(crate) struct Inner {
    pub(crate) profiles: BTreeMap<String, Profile>,
    /// Longest prefix first.
    pub(crate) routes: Vec<GatewayRoute>,
    pub(crate) secret: Option<Secret>,
    pub(crate) azure: BTreeMap<String, String>,
    pub(crate) google: Option<GoogleAccount>,
    pub(crate) retry_body_limit: usize,
    pub(crate) metrics: Option<Metrics>,
    /// The routes' own tokens (`scopes`/`audience`/`resource`), each
    /// distinct (profile, request) once.
    pub(crate) variants: Vec<Arc<Variant>>,
    /// The Google account profile's `?scopes=` sets.
    pub(crate) scope_sets: Option<Arc<ScopeSets>>,
    /// The extra TLS roots the upstream pools were made with.
    ca_file: Option<std::path::PathBuf>,
    /// The TLS client configuration made from them.
    tls: Arc<rustls::ClientConfig>,

    // --- Request guards (issue 18) ---
    /// Host, CONNECT, loop and browser checks.
    pub(crate) guards: Guards,

    // --- Per-caller token exchange (issue 20) ---
    /// `/v1/token/exchange`'s caches, one per profile.
    pub(crate) exchanges: crate::exchange::EndpointExchanges,
    // --- Forward proxy (issue 19) ---
    /// The routes with `host`, by host.
    pub(crate) hosts: crate::proxy::HostTable,
    /// `[serve.proxy]`: CONNECT tunnels and their CA.
    pub(crate) proxy: Option<crate::proxy::ProxyState>,
}

/// The token sidecar and egress gateway as a hyper service: build it from a
/// [`ServeConfig`] and one [`TokenCache`] + [`TokenRequest`] per profile,
/// then either [`serve`](crate::serve) it or call
/// [`handle`](Sidecar::handle) from your own server.
///
/// Cloning is cheap (one `Arc`), and clones share one configuration: a
/// [`FileSidecar`](crate::FileSidecar) reload swaps it for all of them at
/// once. Each request keeps the configuration it started with.
#[derive(Clone)]
pub struct Sidecar {
    state: Arc<ArcSwap<Inner>>,
}

impl std::fmt::Debug for Sidecar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.state.load();
        f.debug_struct("Sidecar")
            .field("profiles", &inner.profiles.keys().collect::<Vec<_>>())
            .field("routes", &inner.routes.len())
            .field("secret", &inner.secret.as_ref().map(|_| "***"))
            .finish_non_exhaustive()
    }
}

/// Builds a [`Sidecar`].
pub struct SidecarBuilder {
    config: ServeConfig,
    profiles: BTreeMap<String, Profile>,
    secret: Option<Secret>,
    metrics: Option<Metrics>,
    /// Upstream pools to keep, by upstream URI (a reload's).
    pools: BTreeMap<String, Arc<crate::pool::Pool>>,
    /// The TLS client configuration to keep (a reload's, same roots).
    tls: Option<Arc<rustls::ClientConfig>>,
    /// The forward proxy's CA to keep (a reload's, same `[serve.proxy]`).
    proxy: Option<crate::proxy::ProxyState>,
    /// Route tokens and scope sets to keep (a reload's).
    previous_variants: Vec<Arc<Variant>>,
    previous_scope_sets: Option<Arc<ScopeSets>>,
}

impl std::fmt::Debug for SidecarBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SidecarBuilder")
            .field("profiles", &self.profiles.keys().collect::<Vec<_>>())
            .field("secret", &self.secret.as_ref().map(|_| "***"))
            .finish_non_exhaustive()
    }
}

impl SidecarBuilder {
    /// Serves `request`'s tokens from `cache` as profile `name`.
    pub fn profile(
        mut self,
        name: impl Into<String>,
        cache: &TokenCache,
        request: &TokenRequest,
    ) -> Self {
        let name = name.into();
        // The profile names the cache's IdP metrics, unless it has a name.
        cache.set_metrics_name(&name);
        self.profiles.insert(name, Profile::new(cache, request));
        self
    }

    /// As [`profile`](Self::profile) for tokens bound to a DPoP key (RFC
    /// 9449; `request` carries its thumbprint): the gateway sends
    /// `Authorization: DPoP <token>` and a fresh proof signed by `key` with
    /// every forwarded request.
    pub fn dpop_profile(
        mut self,
        name: impl Into<String>,
        cache: &TokenCache,
        request: &TokenRequest,
        key: token_http::DpopKey,
    ) -> Self {
        self.profiles.insert(
            name.into(),
            Profile::new(cache, request).with_dpop(Some(key)),
        );
        self
    }

    /// Serves an existing profile (a reload keeps unchanged ones as they
    /// are: their handle, and the `Authorization` value built for it).
    pub(crate) fn profile_shared(mut self, name: String, profile: Profile) -> Self {
        self.profiles.insert(name, profile);
        self
    }

    /// The shared secret token requests must carry in `X-Identity-Header`
    /// (required by the Azure endpoint, optional for `/v1/token`). Without
    /// it, [`build`](Self::build) reads the configuration's `secret_file`.
    pub fn secret(mut self, secret: Secret) -> Self {
        self.secret = Some(secret);
        self
    }

    /// Serves `/metrics` from this Prometheus recorder's handle.
    pub fn metrics(mut self, handle: metrics_exporter_prometheus::PrometheusHandle) -> Self {
        self.metrics = Some(Metrics::new(handle));
        self
    }

    pub(crate) fn metrics_of(mut self, metrics: Option<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Keeps the TLS client configuration and the upstream connection pools
    /// of `previous` for routes to the same upstreams, when the TLS roots
    /// are the same: a reload neither reloads the system roots nor drops
    /// warm connections.
    pub(crate) fn reuse_pools(mut self, previous: &Inner) -> Self {
        // The proxy CA and its leaves too, when [serve.proxy] is unchanged.
        self.proxy = previous
            .proxy
            .clone()
            .filter(|p| self.config.proxy.as_ref() == Some(&p.config));
        if previous.ca_file == self.config.ca_file {
            self.tls = Some(Arc::clone(&previous.tls));
            for r in &previous.routes {
                self.pools.insert(pool_key(&r.route), Arc::clone(&r.pool));
            }
        }
        self
    }

    /// Keeps the route tokens and Google scope sets of `previous` whose
    /// profile is kept as it was and whose parameters are the same: a
    /// reload makes no IdP call for them and keeps their keep-warm timers.
    pub(crate) fn reuse_tokens(mut self, previous: &Inner) -> Self {
        self.previous_variants = previous.variants.clone();
        self.previous_scope_sets = previous.scope_sets.clone();
        self
    }

    /// Checks that every profile the configuration names was given, reads
    /// the configuration's `secret_file` (unless [`secret`](Self::secret)
    /// gave one), and sets up the upstream client (TLS roots).
    pub fn build(self) -> Result<Sidecar, ConfigError> {
        Ok(Sidecar::from_inner(self.inner()?))
    }

    /// The configuration, checked and ready to serve.
    pub(crate) fn inner(self) -> Result<Inner, ConfigError> {
        for name in self.config.profiles() {
            if !self.profiles.contains_key(&name) {
                return Err(ConfigError::new(format!(
                    "[serve] uses profile `{name}`, which was not configured"
                )));
            }
        }
        let tls = match self.tls {
            Some(tls) => tls,
            None => Arc::new(tls::client_config(self.config.ca_file.as_deref())?),
        };
        let secret = match (self.secret, &self.config.secret_file) {
            (Some(secret), _) => Some(secret),
            (None, Some(path)) => Some(read_secret(path)?),
            (None, None) => None,
        };
        self.config
            .check_token_endpoint_exposure(secret.is_some())?;
        let subject_key = crate::exchange::subject_key(self.config.exchange_key_file.as_deref())?;
        let guards = Guards::new(&self.config);
        let mut with_profiles = Vec::with_capacity(self.config.routes.len());
        for r in self.config.routes {
            if !r.allow_plaintext && plaintext_off_loopback(&r.upstream) {
                tracing::warn!(
                    route = %r.prefix,
                    host = r.upstream.host().unwrap_or_default(),
                    "the upstream is plain http:// off loopback: its token crosses the network in clear; \
                     use https://, or write allow_plaintext = true on the route to silence this"
                );
            }
            let profile = self.profiles.get(&r.profile).cloned().ok_or_else(|| {
                ConfigError::new(format!(
                    "route {} uses profile `{}`, which was not configured",
                    r.prefix, r.profile
                ))
            })?;
            with_profiles.push((r, profile));
        }
        let (variants, route_profiles) =
            variants::for_routes(&with_profiles, &self.previous_variants);
        let mut routes = Vec::with_capacity(with_profiles.len());
        for ((r, _), profile) in with_profiles.into_iter().zip(route_profiles) {
            let pool = self.pools.get(&pool_key(&r)).cloned();
            // Per-caller token exchange (issue 20).
            let exchange = (r.mode == crate::config::RouteMode::Exchange)
                .then(|| crate::exchange::RouteExchange::new(&r, &profile, &subject_key));
            let mut route = GatewayRoute::new(r, profile, &tls, pool)?;
            route.exchange = exchange;
            routes.push(route);
        }
        let scope_sets = self.config.google.as_ref().and_then(|g| {
            let base = self.profiles.get(&g.profile)?;
            Some(ScopeSets::new(
                base,
                g.max_scope_sets,
                self.previous_scope_sets.as_ref(),
            ))
        });
        routes.sort_by_key(|r| std::cmp::Reverse(r.route.prefix.len()));
        let exchanges = crate::exchange::EndpointExchanges::new(
            self.config.exchange.clone(),
            subject_key,
            self.profiles.keys(),
        );
        let hosts = crate::proxy::HostTable::new(&routes);
        let proxy = match (self.proxy, self.config.proxy) {
            (Some(kept), _) => Some(kept),
            (None, Some(config)) => Some(crate::proxy::ProxyState {
                ca: Arc::new(crate::proxy::LocalCa::open(&config)?),
                config,
            }),
            (None, None) => None,
        };
        Ok(Inner {
            exchanges,
            profiles: self.profiles,
            routes,
            secret,
            azure: self.config.azure,
            google: self.config.google,
            retry_body_limit: self.config.retry_body_limit,
            metrics: self.metrics,
            variants,
            scope_sets,
            ca_file: self.config.ca_file,
            tls,
            guards,
            hosts,
            proxy,
        })
    }
}

/// The shared secret in `path` (a trailing newline is not part of it).
fn read_secret(path: &std::path::Path) -> Result<Secret, ConfigError> {
    read_secret_named(path, "[serve] secret_file")
}

/// The secret in `path`, the setting `what` names (a trailing newline is
/// not part of it).
pub(crate) fn read_secret_named(path: &std::path::Path, what: &str) -> Result<Secret, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map(zeroize::Zeroizing::new)
        .map_err(|e| ConfigError::new(format!("cannot read {what} {}: {e}", path.display())))?;
    let trimmed = text.trim_end_matches(['\r', '\n']);
    if trimmed.is_empty() {
        return Err(ConfigError::new(format!(
            "{what} {} is empty",
            path.display()
        )));
    }
    if let Some(warning) = token_profile::readable_by_others(path, "sidecar secret") {
        tracing::warn!("{warning}");
    }
    Ok(Secret::new(trimmed))
}

/// Whether `upstream` is a plain `http://` URL to a host off loopback (the
/// token would cross the network in clear).
fn plaintext_off_loopback(upstream: &http::Uri) -> bool {
    if upstream.scheme_str() != Some("http") {
        return false;
    }
    let host = upstream.host().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    !loopback
}

impl Profile {
    pub(crate) fn new(cache: &TokenCache, request: &TokenRequest) -> Self {
        Self {
            cache: cache.clone(),
            handle: cache.handle(request),
            bearer: Arc::default(),
            store: None,
            dpop: None,
        }
    }

    /// With its store, whose reachability `/readyz` reports.
    pub(crate) fn with_store(mut self, store: token_profile::OpenedStore) -> Self {
        self.store = Some(store);
        self
    }

    /// A token of `base`'s credential for another request (a route's
    /// parameters, a metadata scope set): the same DPoP key and store.
    pub(crate) fn with_variant_of(mut self, base: &Profile) -> Self {
        self.store = base.store.clone();
        self.dpop = base.dpop.clone();
        self
    }

    /// DPoP (issue 21): forwarded requests carry a proof signed by `key`.
    pub(crate) fn with_dpop(mut self, key: Option<token_http::DpopKey>) -> Self {
        self.dpop = key;
        self
    }
}

/// How a profile's token stands, for `/readyz` and start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Readiness {
    /// A usable token, valid until then.
    Ready {
        /// When the token expires.
        expires_at: Option<SystemTime>,
    },
    /// No usable token, and why.
    NotReady {
        /// The cause, in one sentence (never a secret).
        cause: String,
    },
}

impl Sidecar {
    /// Starts building a sidecar for `config`.
    pub fn builder(config: ServeConfig) -> SidecarBuilder {
        SidecarBuilder {
            config,
            profiles: BTreeMap::new(),
            secret: None,
            metrics: None,
            pools: BTreeMap::new(),
            tls: None,
            proxy: None,
            previous_variants: Vec::new(),
            previous_scope_sets: None,
        }
    }

    pub(crate) fn from_inner(inner: Inner) -> Self {
        Self {
            state: Arc::new(ArcSwap::from_pointee(inner)),
        }
    }

    /// The configuration now in force.
    pub(crate) fn current(&self) -> Arc<Inner> {
        self.state.load_full()
    }

    /// Puts `inner` in force for every request that starts from now on.
    pub(crate) fn swap(&self, inner: Inner) {
        self.state.store(Arc::new(inner));
    }

    /// The profile names.
    pub fn profiles(&self) -> Vec<String> {
        self.state.load().profiles.keys().cloned().collect()
    }

    /// Fetches every profile's token now (start-up prefetch), and every
    /// route's own token (a route with `scopes`, `audience` or `resource`,
    /// named `profile (route /prefix/)`), so that no first request waits for
    /// the IdP. Returns each one's outcome.
    pub async fn prefetch(&self) -> Vec<(String, Result<(), Error>)> {
        let inner = self.current();
        let mut out = Vec::with_capacity(inner.profiles.len() + inner.variants.len());
        for (name, p) in &inner.profiles {
            out.push((name.clone(), p.handle.token().await.map(|_| ())));
        }
        for v in &inner.variants {
            out.push((v.label(), v.profile.handle.token().await.map(|_| ())));
        }
        out
    }

    /// Keeps every profile's token, and every route's own token, refreshed
    /// on a timer, even with no traffic, until the guards are dropped.
    /// Needs a Tokio runtime.
    pub fn keep_warm(&self) -> Result<Vec<KeepWarm>, Error> {
        let inner = self.current();
        inner
            .profiles
            .values()
            .map(|p| p.cache.keep_warm(p.handle.request()))
            .chain(
                inner
                    .variants
                    .iter()
                    .map(|v| v.profile.cache.keep_warm(&v.request)),
            )
            .collect()
    }

    /// Each profile's readiness (`/readyz`).
    pub async fn readiness(&self) -> Vec<(String, Readiness)> {
        let inner = self.current();
        let mut out = Vec::with_capacity(inner.profiles.len());
        for (name, p) in &inner.profiles {
            out.push((name.clone(), peek(p).await));
        }
        out
    }

    /// The readiness of each route that has a token of its own (`scopes`,
    /// `audience` or `resource`), by route prefix (`/readyz`'s `routes`).
    pub async fn route_readiness(&self) -> Vec<(String, Readiness)> {
        let inner = self.current();
        let mut out = Vec::new();
        for v in &inner.variants {
            let r = peek(&v.profile).await;
            for prefix in &v.routes {
                out.push((prefix.clone(), r.clone()));
            }
        }
        out
    }

    /// Answers one request. Never fails: every problem is a response with a
    /// status and a JSON body naming the cause.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        // A gRPC client reads only grpc-status: the sidecar's own refusals
        // are said that way (gateway.rs). One `answer` future either way.
        let grpc = gateway::is_grpc(req.headers());
        let response = self.answer(req).await;
        if grpc {
            return Box::pin(gateway::grpc_error(response)).await;
        }
        response
    }

    async fn answer(&self, req: Request<Incoming>) -> Response<Body> {
        let started = Instant::now();
        // The configuration this request runs on to its end, even when a
        // reload puts another in force meanwhile.
        let current = self.current();
        let inner = &*current;
        // The forward proxy first: CONNECT tunnels, and requests for a host
        // that a route names (those never reach the sidecar's own endpoints).
        if req.method() == Method::CONNECT {
            if let Some(proxy) = &inner.proxy {
                return crate::proxy::connect(self, inner, proxy, req);
            }
        } else if !inner.hosts.is_empty() {
            match crate::proxy::lookup(inner, &req) {
                crate::proxy::Lookup::NotRouted => {}
                crate::proxy::Lookup::Route(route) => {
                    // Boxed: see the endpoints below.
                    return Box::pin(crate::proxy::forward(inner, route, req)).await;
                }
                crate::proxy::Lookup::Refused(r) => return *r,
            }
        }
        let path = req.uri().path();
        if path == "/healthz" {
            return response::text(StatusCode::OK, "text/plain", "ok\n");
        }
        // Before any routing or token work: CONNECT, Host, loops.
        if let Some(refused) = inner.guards.check(&req) {
            return refused;
        }
        // The sidecar's own endpoints are answered before any route, so a
        // route's browser origins never open them.
        // `/` with `Metadata-Flavor` is the metadata server's root (Python
        // google-auth's probe); no route may take `/`.
        let metadata_root =
            path == "/" && inner.google.is_some() && req.headers().contains_key("metadata-flavor");
        let own = matches!(
            path,
            "/readyz" | "/metrics" | "/v1/token" | "/v1/token/exchange" | "/azure/token"
        ) || path == "/computeMetadata"
            || path.starts_with("/computeMetadata/")
            || metadata_root;
        let route = if own { None } else { inner.route_for(path) };
        let origins = route.map_or(&[][..], |r| &r.route.allow_browser_origins[..]);
        if let Some(refused) = Guards::browser(req.headers(), origins) {
            if let Some(route) = route {
                route.done(inner, req.method(), &refused, started);
            }
            return refused;
        }
        // The endpoints' futures are boxed: this function's future is as
        // large as its largest branch, and the gateway's requests (the hot
        // path) pay a copy of that size each time hyper moves it.
        match path {
            "/readyz" => return Box::pin(self.readyz_with(strict(&req))).await,
            "/metrics" => return Box::pin(self.metrics(inner)).await,
            "/v1/token" => {
                let answer = Box::pin(endpoints::token(inner, &req)).await;
                return counted(inner, "token", answer);
            }
            "/v1/token/exchange" => {
                let answer = Box::pin(endpoints::token_exchange(inner, req)).await;
                return counted(inner, "exchange", answer);
            }
            "/azure/token" => {
                let answer = Box::pin(endpoints::azure(inner, &req)).await;
                return counted(inner, "azure", answer);
            }
            _ => {}
        }
        if path.starts_with("/computeMetadata/") || path == "/computeMetadata" || metadata_root {
            let answer = Box::pin(endpoints::google(inner, &req)).await;
            return counted(inner, "google", answer);
        }
        if let Some(route) = route {
            let method = req.method().clone();
            let span = crate::trace::forward_span(
                &route.route.prefix,
                &method,
                route.upstream_host(),
                req.headers(),
            );
            // Boxed as well: hyper and the functions above move this
            // function's future, and the gateway's is the largest.
            let response = Box::pin(tracing::Instrument::instrument(
                gateway::forward(inner, route, req),
                span.clone(),
            ))
            .await;
            crate::trace::record_status(&span, response.status());
            route.done(inner, &method, &response, started);
            return response;
        }
        if req.method() == Method::GET || req.method() == Method::HEAD {
            response::error(
                StatusCode::NOT_FOUND,
                "not_found",
                "no route or endpoint for this path",
            )
        } else {
            response::error(StatusCode::NOT_FOUND, "not_found", "no route for this path")
        }
    }

    /// `/readyz`: 503 while a profile has no usable token. A profile
    /// whose store is unreachable (Redis down: tokens come from memory and
    /// the IdP meanwhile) is degraded, not unready: `"degraded": true` and
    /// its `"store"` cause, still 200, unless `strict` (`/readyz?strict`),
    /// which counts it as unready.
    pub(crate) async fn readyz_with(&self, strict: bool) -> Response<Body> {
        let mut ready = true;
        let mut json = |r: Readiness| match r {
            Readiness::Ready { expires_at } => serde_json::json!({
                "ready": true,
                "expires_at": expires_at.map(response::rfc3339),
            }),
            Readiness::NotReady { cause } => {
                ready = false;
                serde_json::json!({ "ready": false, "cause": cause })
            }
        };
        let mut profiles = serde_json::Map::new();
        for (name, r) in self.readiness().await {
            profiles.insert(name, json(r));
        }
        let mut routes = serde_json::Map::new();
        for (prefix, r) in self.route_readiness().await {
            routes.insert(prefix, json(r));
        }
        // --- Degraded stores (issue 24) ---
        let mut degraded = false;
        for (name, p) in &self.current().profiles {
            let Some(cause) = p
                .store
                .as_ref()
                .and_then(token_profile::OpenedStore::unavailable)
            else {
                continue;
            };
            degraded = true;
            if let Some(v) = profiles.get_mut(name).and_then(|v| v.as_object_mut()) {
                v.insert("store".into(), cause.into());
                if strict {
                    v.insert("ready".into(), false.into());
                }
            }
        }
        if strict && degraded {
            ready = false;
        }
        if let Some(m) = &self.current().metrics {
            m.ready(ready);
        }
        let status = if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        let mut body = serde_json::json!({ "ready": ready, "profiles": profiles });
        if degraded {
            body["degraded"] = true.into();
        }
        if !routes.is_empty() {
            body["routes"] = serde_json::Value::Object(routes);
        }
        response::json(status, body.to_string())
    }

    pub(crate) async fn metrics(&self, inner: &Inner) -> Response<Body> {
        let Some(m) = &inner.metrics else {
            return response::error(
                StatusCode::NOT_FOUND,
                "not_found",
                "metrics are not enabled in this sidecar",
            );
        };
        let mut ready = true;
        for (name, p) in &inner.profiles {
            let (remaining, margin) = match peek(p).await {
                Readiness::Ready { expires_at } => (
                    expires_at
                        .and_then(|at| at.duration_since(SystemTime::now()).ok())
                        .map_or(0.0, |d| d.as_secs_f64()),
                    refresh_margin(p).await,
                ),
                Readiness::NotReady { .. } => {
                    ready = false;
                    (0.0, None)
                }
            };
            m.profile(name, &p.cache.stats(), remaining, margin);
        }
        m.ready(ready);
        response::text(StatusCode::OK, "text/plain; version=0.0.4", m.render())
    }
}

impl Inner {
    /// The route for `path`: the longest prefix that `path` starts with at a
    /// segment boundary (`/pay` matches `/pay` and `/pay/x`, never `/payX`;
    /// `/orders/` also matches `/orders`).
    fn route_for(&self, path: &str) -> Option<&GatewayRoute> {
        self.routes
            .iter()
            .filter(|g| g.route.host.is_none())
            .find(|g| gateway::prefix_matches(&g.route.prefix, path))
    }

    /// A usable (unexpired) token of `profile`, or the reason there is none.
    pub(crate) async fn token(&self, profile: &Profile) -> Result<Token, Unavailable> {
        match profile.handle.token().await {
            Ok(t) if !t.is_live_at(SystemTime::now()) => Err(Unavailable {
                code: "token_expired",
                cause: "the only token available has expired and no new one could be obtained"
                    .to_owned(),
            }),
            Ok(t) => Ok(t),
            Err(e) => Err(Unavailable::from_engine(&e)),
        }
    }

    /// True when `got` is the configured secret (constant time in the
    /// secret's length). Without a configured secret, nothing matches.
    pub(crate) fn secret_matches(&self, got: Option<&[u8]>) -> bool {
        let (Some(secret), Some(got)) = (&self.secret, got) else {
            return false;
        };
        let want = secret.expose().as_bytes();
        if want.len() != got.len() {
            return false;
        }
        want.iter().zip(got).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

/// Why no token can be had.
#[derive(Debug)]
pub(crate) struct Unavailable {
    pub(crate) code: &'static str,
    pub(crate) cause: String,
}

impl Unavailable {
    /// The 503's `error` code, chosen from the error's fields (what failed,
    /// transient or permanent), never from its text; the description is the
    /// error's sentence.
    pub(crate) fn from_engine(e: &Error) -> Self {
        let code = match e {
            Error::Credential(c) => match c.cause() {
                FailureCause::Timeout => "idp_timeout",
                FailureCause::InvalidResponse | FailureCause::BodyTooLarge if !c.is_transient() => {
                    "idp_invalid_response"
                }
                _ if c.is_transient() => "idp_unavailable",
                _ => "idp_rejected",
            },
            Error::FetchTimeout(_) => "idp_timeout",
            Error::InvalidToken(_) => "idp_token_unusable",
            _ => "token_unavailable",
        };
        Self {
            code,
            cause: safe_cause(e),
        }
    }

    pub(crate) fn response(&self, profile: &str) -> Response<Body> {
        let body = serde_json::json!({
            "error": self.code,
            "error_description": format!("no valid token for profile `{profile}`: {}", self.cause),
            "profile": profile,
        });
        self.metric_cause().mark(response::json(
            StatusCode::SERVICE_UNAVAILABLE,
            body.to_string(),
        ))
    }

    /// The `cause` label of `tokencache_unavailable_total`: the IdP said
    /// no (or answered with something unusable), or could not be had.
    pub(crate) fn metric_cause(&self) -> crate::metrics::Cause {
        use crate::metrics::Cause;
        match self.code {
            "idp_rejected" | "idp_invalid_response" | "idp_token_unusable" => Cause::IDP_REFUSED,
            "store_unavailable" => Cause::STORE_UNAVAILABLE,
            _ => Cause::IDP_UNREACHABLE,
        }
    }
}

/// `e`'s sentence for 503 bodies, `/readyz` and the sidecar's logs,
/// rendered from its fields: the IdP's own words appear only when it
/// answered in OAuth terms (an `error` code, with the `error_description`
/// that token-http already withholds when it echoes a credential). Any
/// other body the IdP answered with is not quoted at all: a server that
/// echoes the request would put the client's credentials in it.
pub(crate) fn safe_cause(e: &Error) -> String {
    let Error::Credential(c) = e else {
        return e.to_string();
    };
    let answered = matches!(
        c.cause(),
        FailureCause::HttpStatus | FailureCause::InvalidResponse
    );
    if !answered || c.code().is_some() {
        return e.to_string();
    }
    let detail = "its body is not quoted";
    let mut quiet = if c.is_transient() {
        CredentialError::transient(detail)
    } else {
        CredentialError::permanent(detail)
    }
    .with_cause(c.cause());
    if let Some(s) = c.status() {
        quiet = quiet.with_status(s);
    }
    if let Some(s) = c.service() {
        quiet = quiet.with_service(s);
    }
    if let Some(at) = c.endpoint() {
        quiet = quiet.with_endpoint(at);
    }
    if let Some(after) = c.retry_after() {
        quiet = quiet.with_retry_after(after);
    }
    Error::Credential(quiet).to_string()
}

#[cfg(test)]
#[path = "sidecar_unavailable_tests.rs"]
mod unavailable_tests;

/// Counts a token endpoint's answer (and its 503's cause) when metrics
/// are on.
fn counted(inner: &Inner, endpoint: &'static str, resp: Response<Body>) -> Response<Body> {
    if inner.metrics.is_some() {
        crate::metrics::endpoint(endpoint, resp.status());
        crate::metrics::unavailable(endpoint, &resp);
    }
    resp
}

/// The remaining lifetime at which `p`'s current token is refreshed: its
/// expiry less the refresh time the engine gave it, when both are known.
async fn refresh_margin(p: &Profile) -> Option<f64> {
    let t = tokio::time::timeout(PEEK_TIMEOUT, p.handle.token())
        .await
        .ok()?
        .ok()?;
    let (exp, at) = (t.expires_at()?, t.refresh_at()?);
    Some(exp.duration_since(at).ok()?.as_secs_f64())
}

/// Whether a `/readyz` request asks for `?strict`.
pub(crate) fn strict<B>(req: &Request<B>) -> bool {
    req.uri().query().is_some_and(|q| {
        q.split('&')
            .any(|p| p == "strict" || p == "strict=1" || p == "strict=true")
    })
}

async fn peek(p: &Profile) -> Readiness {
    match tokio::time::timeout(PEEK_TIMEOUT, p.handle.token()).await {
        Ok(Ok(t)) if t.is_live_at(SystemTime::now()) && p.bearer.for_token(&t).is_none() => {
            Readiness::NotReady {
                cause: "the token cannot be sent in an HTTP header (it has a byte a header cannot carry)"
                    .to_owned(),
            }
        }
        Ok(Ok(t)) if t.is_live_at(SystemTime::now()) => Readiness::Ready {
            expires_at: t.expires_at(),
        },
        Ok(Ok(_)) => Readiness::NotReady {
            cause: "the token has expired and no new one could be obtained".to_owned(),
        },
        Ok(Err(e)) => Readiness::NotReady {
            cause: safe_cause(&e),
        },
        Err(_) => Readiness::NotReady {
            cause: format!("a token fetch is in flight (no token within {PEEK_TIMEOUT:?})"),
        },
    }
}

/// Routes with the same key share a pool across a reload: the upstream and
/// the protocol spoken to it.
fn pool_key(route: &crate::config::Route) -> String {
    format!("{} {:?}", route.upstream, route.protocol)
}
