//! The `[serve]` table of the profiles file: where to listen, the gateway's
//! routes, the shared secret, and the vendor-compatible endpoints.
//!
//! ```toml
//! [serve]
//! listen = "127.0.0.1:8731"          # loopback by default; another address must be written here
//! secret_file = "/run/secrets/tokencache"   # optional for /v1/token; required by the Azure endpoint
//! drain_seconds = 10                 # how long SIGTERM waits for requests in flight
//! ca_file = "/etc/ssl/private-ca.pem"       # extra roots for upstream TLS (system roots are always used)
//! retry_body_limit = 65536           # largest request body buffered for the 401 retry
//! # Request guards:
//! allowed_hosts = ["tokencache.internal"]  # Host names answered besides the listen address,
//!                                    # loopback and the metadata names; default [] (others: 403)
//! insecure_token_endpoint = false    # allow a non-loopback listen without secret_file; default false
//!
//! # Connection limits (each optional; the defaults are the constants below)
//! header_read_timeout_seconds = 10   # a request head must be complete this long after it starts
//! idle_timeout_seconds = 60          # an idle keep-alive connection is closed after this long
//! max_connections = 4096             # open client connections (kept below the fd limit)
//! health_connections = 8             # extra connections for /healthz and /readyz only
//! max_header_bytes = 65536           # largest request head (431 beyond), at least 8192
//! prefetch_concurrency = 8           # first tokens fetched at once (start-up and reload)
//! workers = 2                        # threads serving client connections, each its own runtime;
//!                                    # default: the CPUs available; 0: the runtime serve runs on
//!
//! # Admin listener (optional; restart-only, like listen)
//! admin_listen = "0.0.0.0:8732"      # /healthz, /readyz, /metrics and the admin API (/admin/...)
//! admin_secret_file = "/run/secrets/tokencache-admin"  # required by the admin API from any client
//!                                    # once set; without it the admin API answers loopback only
//! admin_max_connections = 16         # open admin connections (same timeouts as listen)
//!
//! [[serve.routes]]
//! prefix = "/orders/"                # matches /orders/... (a prefix without `/` matches whole segments)
//! # host = "orders.internal"         # forward proxy: requests for this host (see crate::proxy); with
//! #                                  # host, prefix is optional and not stripped
//! upstream = "https://orders.internal"     # no user:password@ (refused)
//! profile = "orders"
//! allow_browser_origins = []         # origins whose browser requests may use the route; default [] (403)
//! allow_encoded_slashes = false      # forward %2f, %5c and `\` in paths; default false (400)
//! allow_plaintext = false            # silence the warning for http:// off loopback; default false
//! timeout_seconds = 30               # upstream response head deadline (504 after it)
//! protocol = "http1"                 # to an http:// upstream: "http1" (default) or "h2c" (HTTP/2
//!                                    # prior knowledge, for gRPC); https:// negotiates h2 or
//!                                    # HTTP/1.1 by ALPN
//! mode = "inject"                    # or "exchange": per-caller token exchange, with
//!                                    # the token parameters below and exchange_* (see crate::exchange;
//!                                    # [serve.exchange] holds their defaults and key_file)
//! # Token parameters (each optional; omitted = the profile's own request):
//! scopes = ["orders.read"]           # replaces the profile's scopes for this route
//! audience = "https://orders.internal"     # replaces the profile's audience
//! resource = "https://orders.internal/"    # replaces the profile's resource indicators
//!
//! [serve.proxy]                      # CONNECT to routed hosts, TLS by a local CA (created if both absent)
//! ca_cert_file = "/var/lib/tokencache/proxy-ca.pem"
//! ca_key_file = "/var/lib/tokencache/proxy-ca.key"
//! tls_handshake_timeout_seconds = 10
//!
//! [serve.azure]                      # resource -> profile (App Service managed identity)
//! "https://vault.azure.net" = "vault"
//!
//! [serve.google]                     # the metadata server's default service account
//! profile = "gcp"
//! email = "sidecar@example.iam.gserviceaccount.com"
//! project_id = "my-project"          # project/project-id (404 when not set)
//! numeric_project_id = "123456789"   # project/numeric-project-id (404 when not set)
//! universe_domain = "googleapis.com" # universe/universe-domain; default googleapis.com
//! max_scope_sets = 64                # distinct ?scopes= sets served (each its own token)
//! ```
//!
//! A route with `scopes`, `audience` or `resource` gets its own token from
//! the profile's credential and store: the profile's request with those
//! parts replaced, under its own cache key. It is fetched at start (and on
//! a reload that changes it), kept warm, and `/readyz` names the route when
//! it has none.
//!
//! Refused at load, each with one sentence: an upstream with user info
//! (its password would reach `Host`, 502 bodies and logs), an
//! `allowed_hosts` entry that is no `host[:port]`, an
//! `allow_browser_origins` entry that is no origin, a route with neither
//! `prefix` nor `host`, a route `host` that is no DNS name or IP literal
//! or that names the sidecar itself (loopback, the listen address, the
//! metadata names, `allowed_hosts`). Refused when the
//! sidecar is built: a non-loopback `listen` without a secret, unless
//! `insecure_token_endpoint = true`. Warned about: a plain `http://`
//! upstream off loopback (unless `allow_plaintext = true`), a
//! `secret_file` readable by its group or others.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::Uri;
use serde::Deserialize;

/// Where the sidecar listens unless `listen` says otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8731";
/// How long a shutdown waits for requests in flight: long enough for a
/// normal upstream call, short enough for a pod's termination grace period
/// (30 s by default in Kubernetes).
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(10);
/// The largest request body buffered so that the request can be retried
/// after an upstream `401 invalid_token`. Larger (or unsized, streamed)
/// bodies are forwarded as they arrive and are not retried.
pub const DEFAULT_RETRY_BODY_LIMIT: usize = 64 * 1024;

/// What is wrong with the configuration: one sentence naming the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub(crate) String);

impl ConfigError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// One egress route: requests whose path starts with `prefix` (and, with
/// `host`, that are for that host) go to `upstream` with a token of
/// `profile`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The path prefix, starting with `/`. On a route without `host` it is
    /// stripped before forwarding; on a route with `host` the path is
    /// forwarded as sent and the prefix only selects the route (`/` when
    /// the route has a `host` and no `prefix`).
    pub prefix: String,
    /// Scheme and authority (and optional base path) of the upstream.
    pub upstream: Uri,
    /// The profile whose token is sent.
    pub profile: String,

    // --- Request guards (issue 18) ---
    /// Browser origins (`https://app.example`, exact, or `*` for any) whose
    /// cross-site requests this route forwards. Empty by default: a request
    /// with `Sec-Fetch-Site: cross-site|same-site` or any `Origin` is
    /// refused with `403` (a web page must not send authenticated requests
    /// through the gateway).
    pub allow_browser_origins: Vec<String>,
    /// Forward paths with encoded slashes or backslashes (`%2f`, `%5c`),
    /// which upstreams may decode into separators and resolve out of the
    /// base path. `false` by default: such paths are refused with `400`.
    pub allow_encoded_slashes: bool,
    /// A plain `http://` upstream off loopback is intended (the token
    /// crosses the network in clear). `false` by default: such an upstream
    /// is accepted with a warning at load.
    pub allow_plaintext: bool,
    /// How long the upstream may take to answer (its response head) before
    /// the caller gets `504` (`timeout_seconds`; [`DEFAULT_UPSTREAM_TIMEOUT`]).
    pub timeout: Duration,

    // --- Per-caller token exchange (issue 20) ---
    /// `inject` (default: the profile's own token) or `exchange` (the
    /// caller's bearer token exchanged per caller; see the README, "Per-caller token exchange").
    pub mode: RouteMode,
    /// The exchange settings of an `exchange` route: `[serve.exchange]`
    /// overridden by the route's `exchange_*` keys.
    pub exchange: ExchangeSettings,
    // --- Forward proxy (issue 19) ---
    /// The host this route serves (`host`): a lower-cased DNS name or IP
    /// literal, with `:port` when the route names one (then only that port
    /// matches). Such a route matches requests whose `Host` (`:authority`,
    /// absolute-form target, CONNECT target) names it, and only those.
    /// `None`: the route matches requests addressed to the sidecar itself.
    pub host: Option<String>,
    // --- Token parameters (issue 19, item 4) ---
    /// Scopes that replace the profile's for this route's token; empty = the
    /// profile's own.
    pub scopes: Vec<String>,
    /// The `audience` that replaces the profile's; `None` = the profile's.
    pub audience: Option<String>,
    /// The `resource` indicator (RFC 8707) that replaces the profile's;
    /// `None` = the profile's.
    pub resource: Option<String>,
    // --- HTTP/2 (issue 19) ---
    /// How the gateway speaks to an `http://` upstream (`protocol`):
    /// HTTP/1.1 by default, or HTTP/2 with prior knowledge (`"h2c"`). An
    /// `https://` upstream is always asked for `h2` and `http/1.1` by ALPN.
    pub protocol: Protocol,
}

impl Route {
    /// Whether the route asks for a token other than its profile's own
    /// request (`scopes`, `audience` or `resource` set).
    pub fn has_token_parameters(&self) -> bool {
        !self.scopes.is_empty() || self.audience.is_some() || self.resource.is_some()
    }

    /// The request for this route's token: `base` (the profile's request)
    /// with the route's `scopes`, `audience` and `resource` put in place of
    /// its own; `base` itself when the route sets none of them.
    pub fn token_request(&self, base: &token_cache::TokenRequest) -> token_cache::TokenRequest {
        if !self.has_token_parameters() {
            return base.clone();
        }
        let mut b = base.to_builder();
        if !self.scopes.is_empty() {
            b = b.clear_scopes().scopes(&self.scopes);
        }
        if let Some(a) = &self.audience {
            b = b.audience(a);
        }
        if let Some(r) = &self.resource {
            b = b.clear_resources().resource(r);
        }
        b.build()
    }
}

/// The protocol a route speaks to its plaintext upstream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Protocol {
    /// HTTP/1.1 (`"http1"`), the default.
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge (`"h2c"`): one connection, multiplexed.
    H2c,
}

pub(crate) use crate::exchange::{ExchangeSettings, RouteMode};

/// The parsed `[serve]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServeConfig {
    /// The listening address.
    pub listen: SocketAddr,
    /// The gateway's routes, in file order.
    pub routes: Vec<Route>,
    /// A file holding the shared secret that token requests must carry.
    pub secret_file: Option<PathBuf>,
    /// How long shutdown waits for requests in flight.
    pub drain: Duration,
    /// Extra PEM roots for TLS to upstreams.
    pub ca_file: Option<PathBuf>,
    /// The largest request body buffered for the 401 retry.
    pub retry_body_limit: usize,
    /// Azure `resource` -> profile.
    pub azure: BTreeMap<String, String>,
    /// The Google metadata server's default account, if served.
    pub google: Option<GoogleAccount>,

    // --- Request guards (issue 18) ---
    /// Host names (`name` for any port, `name:port` for one) that may reach
    /// the sidecar besides its listen address, loopback (`localhost`,
    /// `127.0.0.1`, `[::1]`) and the metadata names SDKs use
    /// (`metadata.google.internal`, `metadata`, `169.254.169.254`). Any other
    /// `Host` is refused with `403` (DNS rebinding). Empty by default.
    pub allowed_hosts: Vec<String>,
    /// Start on a non-loopback `listen` without `secret_file`, so that any
    /// host that can connect gets tokens from `/v1/token`. `false` by
    /// default: the sidecar refuses to start so configured.
    pub insecure_token_endpoint: bool,
    /// Client connection limits and start-up concurrency (see
    /// [`ConnectionSettings`]); take effect at start only.
    pub connections: ConnectionSettings,

    // --- Per-caller token exchange (issue 20) ---
    /// `[serve.exchange]`: the settings of `POST /v1/token/exchange` and the
    /// defaults of `exchange` routes.
    pub exchange: ExchangeSettings,
    /// `[serve.exchange] key_file`: key material (at least 32 bytes) of the
    /// subject digests, shared by a fleet so its sidecars share exchanged
    /// tokens through a shared store. Without it, a random per-process key.
    pub exchange_key_file: Option<PathBuf>,

    // --- Forward proxy (issue 19) ---
    /// `[serve.proxy]`: HTTPS through `CONNECT` to the hosts routes name,
    /// with TLS terminated by a local CA. `None`: `CONNECT` is refused.
    pub proxy: Option<ProxyConfig>,

    // --- Admin listener (issue 24) ---
    /// `admin_listen`: a second address serving `/healthz`, `/readyz`,
    /// `/metrics` and the admin API (never the gateway or token
    /// endpoints). `None` (default): no admin listener.
    pub admin_listen: Option<SocketAddr>,
    /// `admin_secret_file`: the secret admin API calls must present
    /// (`Authorization: Bearer ...`); without it, only loopback clients may
    /// call the admin API.
    pub admin_secret_file: Option<PathBuf>,
    /// `admin_max_connections`: open admin connections
    /// ([`DEFAULT_ADMIN_CONNECTIONS`]).
    pub admin_max_connections: usize,
}

/// `[serve.proxy]`: the local CA that signs the certificates the sidecar
/// shows inside `CONNECT` tunnels.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProxyConfig {
    /// The CA certificate (PEM), which programs trust
    /// (`SSL_CERT_FILE`, `REQUESTS_CA_BUNDLE`, `NODE_EXTRA_CA_CERTS`).
    pub ca_cert_file: PathBuf,
    /// The CA's private key (PEM, mode 0600). With `ca_cert_file`, both
    /// created on first start when both are absent.
    pub ca_key_file: PathBuf,
    /// How long a client has, after the `CONNECT` is accepted, to finish
    /// the TLS handshake (`tls_handshake_timeout_seconds`;
    /// [`DEFAULT_TLS_HANDSHAKE_TIMEOUT`]).
    pub tls_handshake_timeout: Duration,
}

impl ProxyConfig {
    /// Checks the CA files without creating them: both absent (the sidecar
    /// creates them when it is built), or both there, PEM, and the key the
    /// certificate's. `tokencache serve --check-config` runs it.
    pub fn check(&self) -> Result<(), ConfigError> {
        crate::proxy::LocalCa::check(self)
    }
}

/// How long a client has to complete the TLS handshake inside a `CONNECT`
/// tunnel: ample on loopback or a pod network, short enough that a client
/// that stalls holds its connection for seconds.
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Open connections the admin listener accepts unless
/// `admin_max_connections` says otherwise: probes, a scraper and an
/// operator need a handful, and the cap keeps the admin port from taking
/// the gateway's file descriptors.
pub const DEFAULT_ADMIN_CONNECTIONS: usize = 16;

/// The account the Google metadata endpoints describe.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GoogleAccount {
    /// The profile whose token is served.
    pub profile: String,
    /// The e-mail reported for the account.
    pub email: String,
    /// `project/project-id`; 404 when `None`.
    pub project_id: Option<String>,
    /// `project/numeric-project-id`; 404 when `None`.
    pub numeric_project_id: Option<String>,
    /// `universe/universe-domain` ([`DEFAULT_UNIVERSE_DOMAIN`] unless set).
    pub universe_domain: String,
    /// How many distinct `?scopes=` sets (other than the profile's own and
    /// its routes') get a token of their own; more are refused with `400`
    /// ([`DEFAULT_MAX_SCOPE_SETS`] unless set).
    pub max_scope_sets: usize,
}

/// The universe domain the metadata server reports unless configured:
/// Google's public cloud.
pub const DEFAULT_UNIVERSE_DOMAIN: &str = "googleapis.com";
/// How many distinct scope sets the metadata endpoint serves per profile
/// unless configured: each is a token (and a cache entry, kept in memory
/// for the sidecar's life), so a caller cycling through scope lists cannot
/// make it hold (or fetch) an unbounded number; SDKs use a handful.
pub const DEFAULT_MAX_SCOPE_SETS: usize = 64;

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8731)),
            routes: Vec::new(),
            secret_file: None,
            drain: DEFAULT_DRAIN,
            ca_file: None,
            retry_body_limit: DEFAULT_RETRY_BODY_LIMIT,
            azure: BTreeMap::new(),
            google: None,
            allowed_hosts: Vec::new(),
            insecure_token_endpoint: false,
            connections: ConnectionSettings::default(),
            exchange: ExchangeSettings::default(),
            exchange_key_file: None,
            proxy: None,
            admin_listen: None,
            admin_secret_file: None,
            admin_max_connections: DEFAULT_ADMIN_CONNECTIONS,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    serve: Option<RawServe>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServe {
    listen: Option<String>,
    #[serde(default)]
    routes: Vec<RawRoute>,
    secret_file: Option<PathBuf>,
    drain_seconds: Option<u64>,
    ca_file: Option<PathBuf>,
    retry_body_limit: Option<usize>,
    #[serde(default)]
    azure: BTreeMap<String, String>,
    google: Option<RawGoogle>,

    // --- Request guards (issue 18) ---
    #[serde(default)]
    allowed_hosts: Vec<String>,
    #[serde(default)]
    insecure_token_endpoint: bool,
    // Per-caller token exchange (issue 20).
    exchange: Option<crate::exchange::RawExchange>,
    // Connection limits (see `connections`).
    header_read_timeout_seconds: Option<u64>,
    idle_timeout_seconds: Option<u64>,
    max_connections: Option<usize>,
    health_connections: Option<usize>,
    prefetch_concurrency: Option<usize>,
    max_header_bytes: Option<usize>,
    workers: Option<usize>,

    // --- Admin listener (issue 24) ---
    admin_listen: Option<String>,
    admin_secret_file: Option<PathBuf>,
    admin_max_connections: Option<usize>,
    // --- Forward proxy (issue 19) ---
    proxy: Option<RawProxy>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProxy {
    ca_cert_file: PathBuf,
    ca_key_file: PathBuf,
    tls_handshake_timeout_seconds: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    prefix: Option<String>,
    // --- Forward proxy (issue 19) ---
    host: Option<String>,
    upstream: String,
    profile: String,

    // --- Request guards (issue 18) ---
    #[serde(default)]
    allow_browser_origins: Vec<String>,
    #[serde(default)]
    allow_encoded_slashes: bool,
    #[serde(default)]
    allow_plaintext: bool,
    timeout_seconds: Option<u64>,

    // --- Token parameters (issue 19, item 4) ---
    #[serde(default)]
    scopes: Vec<String>,
    audience: Option<String>,
    resource: Option<String>,
    // --- HTTP/2 (issue 19) ---
    protocol: Option<String>,
    // --- Per-caller token exchange (issue 20) ---
    mode: Option<String>,
    exchange_grant: Option<String>,
    subject_token_type: Option<String>,
    exchange_max_subjects: Option<usize>,
    exchange_idle_seconds: Option<u64>,
    exchange_negative_seconds: Option<u64>,
    exchange_rate_per_second: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGoogle {
    profile: String,
    email: Option<String>,
    project_id: Option<String>,
    numeric_project_id: Option<String>,
    universe_domain: Option<String>,
    max_scope_sets: Option<usize>,
}

impl ServeConfig {
    /// Parses the `[serve]` table of a profiles file (`text`); every other
    /// top-level table is left to its owner, except that it must be valid
    /// TOML. A missing `[serve]` table is the default configuration.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let table: toml::Table = toml::from_str(text)
            .map_err(|e| ConfigError::new(format!("not valid TOML: {}", e.message())))?;
        let Some(serve) = table.get("serve") else {
            return Ok(Self::default());
        };
        let mut only = toml::Table::new();
        only.insert("serve".to_owned(), serve.clone());
        let raw: RawFile = only
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::new(format!("[serve]: {}", e.message())))?;
        Self::from_raw(raw.serve.unwrap_or_else(empty_raw))
    }

    fn from_raw(raw: RawServe) -> Result<Self, ConfigError> {
        let listen = match raw.listen.as_deref() {
            None => DEFAULT_LISTEN,
            Some(l) => l,
        };
        let listen: SocketAddr = listen.parse().map_err(|_| {
            ConfigError::new(format!(
                "[serve] listen = \"{listen}\" is not an IP address and port (like {DEFAULT_LISTEN})"
            ))
        })?;
        let (exchange, exchange_key_file) = crate::exchange::serve_settings(raw.exchange)?;
        let mut routes = Vec::with_capacity(raw.routes.len());
        let mut prefixes = BTreeSet::new();
        for r in raw.routes {
            routes.push(route(r, &mut prefixes, &exchange)?);
        }
        let drain = Duration::from_secs(raw.drain_seconds.unwrap_or(DEFAULT_DRAIN.as_secs()));
        for (resource, profile) in &raw.azure {
            if resource.is_empty() || profile.is_empty() {
                return Err(ConfigError::new(
                    "[serve.azure] maps a resource to a profile: neither may be empty",
                ));
            }
        }
        let google = raw.google.map(google_account).transpose()?;
        let allowed_hosts = raw
            .allowed_hosts
            .iter()
            .map(|h| allowed_host(h))
            .collect::<Result<Vec<_>, _>>()?;
        for r in &routes {
            if let Some(host) = &r.host {
                check_not_own_name(host, listen, &allowed_hosts)?;
            }
        }
        let proxy = raw.proxy.map(proxy_config).transpose()?;
        let admin_listen = match raw.admin_listen.as_deref() {
            None => None,
            Some(a) => Some(a.parse::<SocketAddr>().map_err(|_| {
                ConfigError::new(format!(
                    "[serve] admin_listen = \"{a}\" is not an IP address and port (like 0.0.0.0:8732)"
                ))
            })?),
        };
        if admin_listen.is_some_and(|a| a == listen && a.port() != 0) {
            return Err(ConfigError::new(format!(
                "[serve] admin_listen = \"{listen}\" is the same address as listen: give the admin listener its own port"
            )));
        }
        let admin_max_connections = match raw.admin_max_connections {
            Some(0) => {
                return Err(ConfigError::new(
                    "[serve] admin_max_connections must be at least 1",
                ))
            }
            Some(n) => n,
            None => DEFAULT_ADMIN_CONNECTIONS,
        };
        Ok(Self {
            admin_listen,
            admin_secret_file: raw.admin_secret_file,
            admin_max_connections,
            listen,
            routes,
            secret_file: raw.secret_file,
            drain,
            ca_file: raw.ca_file,
            retry_body_limit: raw.retry_body_limit.unwrap_or(DEFAULT_RETRY_BODY_LIMIT),
            azure: raw.azure,
            google,
            allowed_hosts,
            insecure_token_endpoint: raw.insecure_token_endpoint,
            connections: connections(&RawConnections {
                header_read_timeout_seconds: raw.header_read_timeout_seconds,
                idle_timeout_seconds: raw.idle_timeout_seconds,
                max_connections: raw.max_connections,
                health_connections: raw.health_connections,
                prefetch_concurrency: raw.prefetch_concurrency,
                max_header_bytes: raw.max_header_bytes,
                workers: raw.workers,
            })?,
            exchange,
            exchange_key_file,
            proxy,
        })
    }

    /// Refuses a token endpoint open to the network: a non-loopback
    /// `listen` with no shared secret (`secret_configured`: `secret_file`,
    /// or one an embedder gave the builder), unless
    /// `insecure_token_endpoint = true`. Any host that can connect would
    /// otherwise get tokens from `/v1/token` by sending `Metadata: true`.
    /// The sidecar's builder runs it; `tokencache serve --check-config`
    /// too.
    pub fn check_token_endpoint_exposure(
        &self,
        secret_configured: bool,
    ) -> Result<(), ConfigError> {
        if secret_configured || self.listen.ip().is_loopback() || self.insecure_token_endpoint {
            return Ok(());
        }
        Err(ConfigError::new(format!(
            "[serve] listen = \"{}\" is not loopback and no secret_file is set: any host that can \
             connect would get tokens from /v1/token; set secret_file, or write \
             insecure_token_endpoint = true to accept that",
            self.listen
        )))
    }

    /// Every profile the configuration refers to (routes, Azure, Google).
    pub fn profiles(&self) -> BTreeSet<String> {
        self.routes
            .iter()
            .map(|r| r.profile.clone())
            .chain(self.azure.values().cloned())
            .chain(self.google.iter().map(|g| g.profile.clone()))
            .collect()
    }
}

/// `[serve.google]`, checked: the values it reports are single plain
/// tokens (they are answered as text bodies).
fn google_account(g: RawGoogle) -> Result<GoogleAccount, ConfigError> {
    let plain = |key: &str, v: &Option<String>| match v {
        Some(v) if v.is_empty() || v.contains(|c: char| c.is_whitespace() || c.is_control()) => {
            Err(ConfigError::new(format!(
                "[serve.google] {key} = \"{}\" must be one word, not empty",
                v.escape_debug()
            )))
        }
        _ => Ok(()),
    };
    plain("email", &g.email)?;
    plain("project_id", &g.project_id)?;
    plain("universe_domain", &g.universe_domain)?;
    if let Some(n) = &g.numeric_project_id {
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ConfigError::new(format!(
                "[serve.google] numeric_project_id = \"{}\" must be digits only",
                n.escape_debug()
            )));
        }
    }
    if g.max_scope_sets == Some(0) {
        return Err(ConfigError::new(
            "[serve.google] max_scope_sets must be at least 1",
        ));
    }
    Ok(GoogleAccount {
        email: g.email.unwrap_or_else(|| "default".to_owned()),
        profile: g.profile,
        project_id: g.project_id,
        numeric_project_id: g.numeric_project_id,
        universe_domain: g
            .universe_domain
            .unwrap_or_else(|| DEFAULT_UNIVERSE_DOMAIN.to_owned()),
        max_scope_sets: g.max_scope_sets.unwrap_or(DEFAULT_MAX_SCOPE_SETS),
    })
}

/// A route's `scopes`, `audience` and `resource`, checked: no empty value,
/// no whitespace or control characters (a scope with a space would be two
/// scopes; a header-breaking byte never reaches the IdP's form).
fn token_parameters(
    prefix: &str,
    scopes: &[String],
    audience: &Option<String>,
    resource: &Option<String>,
) -> Result<(), ConfigError> {
    let bad = |v: &str| v.is_empty() || v.contains(|c: char| c.is_whitespace() || c.is_control());
    for s in scopes {
        if bad(s) {
            return Err(ConfigError::new(format!(
                "[[serve.routes]] prefix {prefix}: scopes entry \"{}\" is not one scope \
                 (empty, or has whitespace: write each scope as its own entry)",
                s.escape_debug()
            )));
        }
    }
    for (key, v) in [("audience", audience), ("resource", resource)] {
        if let Some(v) = v {
            if bad(v) {
                return Err(ConfigError::new(format!(
                    "[[serve.routes]] prefix {prefix}: {key} = \"{}\" is empty or has whitespace",
                    v.escape_debug()
                )));
            }
        }
    }
    if let Some(res) = resource {
        // RFC 8707: an absolute URI without a fragment.
        let absolute = res.parse::<Uri>().is_ok_and(|u| u.scheme().is_some());
        if !absolute || res.contains('#') {
            return Err(ConfigError::new(format!(
                "[[serve.routes]] prefix {prefix}: resource = \"{}\" is not an absolute URI \
                 without a fragment (RFC 8707), like \"https://api.example/\"",
                res.escape_debug()
            )));
        }
    }
    Ok(())
}

fn empty_raw() -> RawServe {
    RawServe {
        listen: None,
        routes: Vec::new(),
        secret_file: None,
        drain_seconds: None,
        ca_file: None,
        retry_body_limit: None,
        azure: BTreeMap::new(),
        google: None,
        allowed_hosts: Vec::new(),
        insecure_token_endpoint: false,
        exchange: None,
        header_read_timeout_seconds: None,
        idle_timeout_seconds: None,
        max_connections: None,
        health_connections: None,
        prefetch_concurrency: None,
        max_header_bytes: None,
        workers: None,
        proxy: None,
        admin_listen: None,
        admin_secret_file: None,
        admin_max_connections: None,
    }
}

/// An `allowed_hosts` entry, checked and lower-cased: a host name or IP
/// literal (`[::1]` for IPv6), with an optional port.
fn allowed_host(entry: &str) -> Result<String, ConfigError> {
    let bad = || {
        ConfigError::new(format!(
            "[serve] allowed_hosts entry \"{entry}\" is not a host name with an optional port (like \"sidecar.internal\" or \"sidecar:8731\")"
        ))
    };
    if entry.is_empty() || entry.contains(['@', '/', '?', '#', ' ']) {
        return Err(bad());
    }
    let a: http::uri::Authority = entry.parse().map_err(|_| bad())?;
    let after = &a.as_str()[a.host().len()..];
    if !after.is_empty()
        && after
            .strip_prefix(':')
            .and_then(|p| p.parse::<u16>().ok())
            .is_none()
    {
        return Err(bad());
    }
    Ok(entry.to_ascii_lowercase())
}

/// Paths the sidecar serves itself; a route may not shadow them.
const RESERVED: &[&str] = &[
    "/v1/",
    "/metrics",
    "/healthz",
    "/readyz",
    "/azure/",
    "/computeMetadata/",
];

fn route(
    r: RawRoute,
    prefixes: &mut BTreeSet<String>,
    exchange_defaults: &ExchangeSettings,
) -> Result<Route, ConfigError> {
    let Some(host) = r.host.as_deref() else {
        let Some(prefix) = r.prefix.clone() else {
            return Err(ConfigError::new(format!(
                "[[serve.routes]] with upstream \"{}\" has neither prefix nor host: a route needs at least one",
                r.upstream
            )));
        };
        return prefix_route(r, prefix, prefixes, exchange_defaults);
    };
    // --- Forward proxy (issue 19): a route for a host ---
    let host = route_host(host)?;
    let prefix = r.prefix.clone().unwrap_or_else(|| "/".to_owned());
    if !prefix.starts_with('/') {
        return Err(ConfigError::new(format!(
            "[[serve.routes]] host {host}: prefix \"{prefix}\" must start with /"
        )));
    }
    if !prefixes.insert(format!("{host} {prefix}")) {
        return Err(ConfigError::new(format!(
            "[[serve.routes]] host {host} with prefix {prefix} is given twice"
        )));
    }
    let what = if r.prefix.is_some() {
        format!("host {host} prefix {prefix}")
    } else {
        format!("host {host}")
    };
    finish_route(r, prefix, what, Some(host), exchange_defaults)
}

/// A route without `host`: its prefix may not take the sidecar's own paths.
fn prefix_route(
    r: RawRoute,
    prefix: String,
    prefixes: &mut BTreeSet<String>,
    exchange_defaults: &ExchangeSettings,
) -> Result<Route, ConfigError> {
    if !prefix.starts_with('/') {
        return Err(ConfigError::new(format!(
            "[[serve.routes]] prefix \"{prefix}\" must start with /"
        )));
    }
    // A prefix that would take a reserved path, also at a segment boundary
    // (`/v1` would match `/v1/token`).
    let takes = |reserved: &str| {
        prefix.starts_with(reserved)
            || reserved.strip_prefix(prefix.as_str()).is_some_and(|rest| {
                prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/')
            })
    };
    if prefix == "/" || RESERVED.iter().any(|p| takes(p)) {
        return Err(ConfigError::new(format!(
            "[[serve.routes]] prefix \"{prefix}\" would shadow the sidecar's own endpoints \
             (/v1/, /metrics, /healthz, /readyz, /azure/, /computeMetadata/)"
        )));
    }
    if !prefixes.insert(prefix.clone()) {
        return Err(ConfigError::new(format!(
            "[[serve.routes]] prefix \"{prefix}\" is given twice"
        )));
    }
    let what = format!("prefix {prefix}");
    finish_route(r, prefix, what, None, exchange_defaults)
}

/// The checks every route gets; `what` names the route in messages.
fn finish_route(
    r: RawRoute,
    prefix: String,
    what: String,
    host: Option<String>,
    exchange_defaults: &ExchangeSettings,
) -> Result<Route, ConfigError> {
    let upstream: Uri = r.upstream.parse().map_err(|e| {
        ConfigError::new(format!(
            "[[serve.routes]] upstream \"{}\" ({what}) is not a URL: {e}",
            r.upstream
        ))
    })?;
    match upstream.scheme_str() {
        Some("http" | "https") => {}
        _ => {
            return Err(ConfigError::new(format!(
                "[[serve.routes]] upstream \"{}\" ({what}) must be an http:// or https:// URL",
                r.upstream
            )))
        }
    }
    if upstream.authority().is_none_or(|a| a.host().is_empty()) {
        return Err(ConfigError::new(format!(
            "[[serve.routes]] upstream \"{}\" ({what}) has no host",
            r.upstream
        )));
    }
    if upstream
        .authority()
        .is_some_and(|a| a.as_str().contains('@'))
    {
        // The message names the host only: the user info is a password.
        let host = upstream.host().unwrap_or_default();
        return Err(ConfigError::new(format!(
            "[[serve.routes]] upstream for {what} (upstream host {host}) has user info (user:password@): \
             credentials in the URL would go upstream in Host, into 502 bodies and logs; remove them"
        )));
    }
    if upstream.query().is_some() {
        return Err(ConfigError::new(format!(
            "[[serve.routes]] upstream \"{}\" ({what}) may not have a query",
            r.upstream
        )));
    }
    if r.profile.is_empty() {
        return Err(ConfigError::new(format!(
            "[[serve.routes]] {what} has an empty profile"
        )));
    }
    for origin in &r.allow_browser_origins {
        if origin != "*" && !is_origin(origin) {
            return Err(ConfigError::new(format!(
                "[[serve.routes]] {what}: allow_browser_origins entry \"{origin}\" is not an origin \
                 (scheme://host[:port], no path) or \"*\""
            )));
        }
    }
    token_parameters(&prefix, &r.scopes, &r.audience, &r.resource)?;
    let timeout = match r.timeout_seconds {
        None => DEFAULT_UPSTREAM_TIMEOUT,
        Some(0) => {
            return Err(ConfigError::new(format!(
                "[[serve.routes]] {what}: timeout_seconds must be at least 1"
            )))
        }
        Some(s) => Duration::from_secs(s),
    };
    let protocol = match r.protocol.as_deref() {
        None | Some("http1") => Protocol::Http1,
        Some("h2c") if upstream.scheme_str() == Some("https") => {
            return Err(ConfigError::new(format!(
                "[[serve.routes]] {what}: protocol = \"h2c\" is for http:// upstreams; \
                 an https:// upstream negotiates h2 or HTTP/1.1 by ALPN (remove protocol)"
            )))
        }
        Some("h2c") => Protocol::H2c,
        Some(other) => {
            return Err(ConfigError::new(format!(
                "[[serve.routes]] {what}: protocol \"{other}\" is not \"http1\" or \"h2c\""
            )))
        }
    };
    let (mode, exchange) = crate::exchange::route_settings(
        &what,
        exchange_defaults,
        crate::exchange::RawRouteExchange {
            mode: r.mode,
            exchange_grant: r.exchange_grant,
            subject_token_type: r.subject_token_type,
            exchange_max_subjects: r.exchange_max_subjects,
            exchange_idle_seconds: r.exchange_idle_seconds,
            exchange_negative_seconds: r.exchange_negative_seconds,
            exchange_rate_per_second: r.exchange_rate_per_second,
        },
    )?;
    Ok(Route {
        mode,
        exchange,
        prefix,
        upstream,
        profile: r.profile,
        allow_browser_origins: r
            .allow_browser_origins
            .iter()
            .map(|o| o.to_ascii_lowercase())
            .collect(),
        allow_encoded_slashes: r.allow_encoded_slashes,
        allow_plaintext: r.allow_plaintext,
        timeout,
        host,
        scopes: r.scopes,
        audience: r.audience,
        resource: r.resource,
        protocol,
    })
}

// ---- Connection limits (issue 18, item 2 and item 8) ----------------------

/// How long a client has to send a complete request head, counted from the
/// connection's opening or the head's first byte: long enough for any
/// client on a loopback or pod network, short enough that a slowloris
/// client holds a connection for seconds, not forever.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a keep-alive connection may sit idle between requests before
/// it is closed: longer than most clients keep idle pooled connections
/// (so they close first), short enough that idle connections do not pile up.
/// A client that reads nothing of a response for this long is cut too.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The most client connections open at once. Always lowered to fit the
/// process's open-file limit (each forwarded request may also hold an
/// upstream connection).
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Connections kept in reserve, beyond `max_connections`, for `/healthz`
/// and `/readyz`: a saturated gateway still answers its probes. Such a
/// connection serves one request and is closed.
pub const DEFAULT_HEALTH_CONNECTIONS: usize = 8;
/// The largest request head (request line and headers) read from a
/// client, in bytes: what one connection may make the sidecar hold while
/// its head arrives. Ample for bearer tokens and cookies; hyper's own
/// default is ~400 KiB.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
/// The smallest `max_header_bytes` (hyper's minimum buffer).
const MIN_HEADER_BYTES: usize = 8192;
/// How many profiles' first tokens are fetched at once at start-up and on
/// a reload: a hanging IdP delays readiness by one fetch timeout, not one
/// per profile, without a burst of hundreds of IdP calls.
pub const DEFAULT_PREFETCH_CONCURRENCY: usize = 8;
/// How long an upstream may take to send its response head before the
/// caller gets `504 upstream_timeout` (per route: `timeout_seconds`).
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);

/// The `[serve]` settings for client connections and start-up, each with a
/// documented default. They take effect at start only (a reload that
/// changes them says so).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionSettings {
    /// `header_read_timeout_seconds`: [`DEFAULT_HEADER_READ_TIMEOUT`].
    pub header_read_timeout: Duration,
    /// `idle_timeout_seconds`: [`DEFAULT_IDLE_TIMEOUT`].
    pub idle_timeout: Duration,
    /// `max_connections`: [`DEFAULT_MAX_CONNECTIONS`].
    pub max_connections: usize,
    /// `health_connections`: [`DEFAULT_HEALTH_CONNECTIONS`].
    pub health_connections: usize,
    /// `prefetch_concurrency`: [`DEFAULT_PREFETCH_CONCURRENCY`].
    pub prefetch_concurrency: usize,
    /// `max_header_bytes`: [`DEFAULT_MAX_HEADER_BYTES`] (at least 8192).
    pub max_header_bytes: usize,
    /// `workers`: threads that serve client connections, each with its own
    /// single-threaded runtime and its own pooled upstream connections
    /// (see [`serve`](crate::serve)); at most [`MAX_WORKERS`](crate::MAX_WORKERS).
    /// 0 serves them on the runtime `serve` runs on. From a `[serve]`
    /// section the default is the number of CPUs the process may use; in
    /// `ConnectionSettings::default()` it is 0.
    pub workers: usize,
}

impl Default for ConnectionSettings {
    fn default() -> Self {
        Self {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            health_connections: DEFAULT_HEALTH_CONNECTIONS,
            prefetch_concurrency: DEFAULT_PREFETCH_CONCURRENCY,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            workers: 0,
        }
    }
}

/// What [`serve`](crate::serve) enforces on client connections: the
/// configuration's [`ConnectionSettings`] and its drain time.
/// `From<Duration>` gives the defaults with that drain time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionLimits {
    /// The connection settings.
    pub settings: ConnectionSettings,
    /// How long shutdown waits for requests in flight.
    pub drain: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self::from(DEFAULT_DRAIN)
    }
}

impl From<Duration> for ConnectionLimits {
    fn from(drain: Duration) -> Self {
        Self {
            settings: ConnectionSettings::default(),
            drain,
        }
    }
}

impl ConnectionLimits {
    /// The defaults with these settings and drain time.
    pub fn new(settings: ConnectionSettings, drain: Duration) -> Self {
        Self { settings, drain }
    }
}

impl ServeConfig {
    /// What [`serve`](crate::serve) enforces for this configuration.
    pub fn limits(&self) -> ConnectionLimits {
        ConnectionLimits::new(self.connections, self.drain)
    }
}

/// The connection settings as written (fields of `[serve]`).
struct RawConnections {
    header_read_timeout_seconds: Option<u64>,
    idle_timeout_seconds: Option<u64>,
    max_connections: Option<usize>,
    health_connections: Option<usize>,
    prefetch_concurrency: Option<usize>,
    max_header_bytes: Option<usize>,
    workers: Option<usize>,
}

fn connections(raw: &RawConnections) -> Result<ConnectionSettings, ConfigError> {
    let at_least_one = |key: &str, v: Option<u64>| match v {
        Some(0) => Err(ConfigError::new(format!(
            "[serve] {key} must be at least 1"
        ))),
        v => Ok(v),
    };
    let d = ConnectionSettings::default();
    let secs = |key, v, default: Duration| {
        at_least_one(key, v).map(|v| v.map_or(default, Duration::from_secs))
    };
    let count = |key, v: Option<usize>, default: usize| {
        at_least_one(key, v.map(|n| n as u64)).map(|_| v.unwrap_or(default))
    };
    Ok(ConnectionSettings {
        header_read_timeout: secs(
            "header_read_timeout_seconds",
            raw.header_read_timeout_seconds,
            d.header_read_timeout,
        )?,
        idle_timeout: secs(
            "idle_timeout_seconds",
            raw.idle_timeout_seconds,
            d.idle_timeout,
        )?,
        max_connections: count("max_connections", raw.max_connections, d.max_connections)?,
        // Zero is allowed: no reserve for health probes.
        health_connections: raw.health_connections.unwrap_or(d.health_connections),
        prefetch_concurrency: count(
            "prefetch_concurrency",
            raw.prefetch_concurrency,
            d.prefetch_concurrency,
        )?,
        max_header_bytes: match raw.max_header_bytes {
            None => d.max_header_bytes,
            Some(n) if n < MIN_HEADER_BYTES => {
                return Err(ConfigError::new(format!(
                    "[serve] max_header_bytes must be at least {MIN_HEADER_BYTES}"
                )))
            }
            Some(n) => n,
        },
        workers: match raw.workers {
            None => crate::workers::default_count(),
            Some(n) if n > crate::workers::MAX_WORKERS => {
                return Err(ConfigError::new(format!(
                    "[serve] workers = {n} is more than {}",
                    crate::workers::MAX_WORKERS
                )))
            }
            Some(n) => n,
        },
    })
}

/// `scheme://host[:port]` with nothing after it, as browsers send `Origin`.
fn is_origin(text: &str) -> bool {
    let Ok(uri) = text.parse::<Uri>() else {
        return false;
    };
    uri.scheme().is_some()
        && uri.authority().is_some_and(|a| !a.as_str().contains('@'))
        && !text.ends_with('/')
        && uri
            .path_and_query()
            .is_none_or(|pq| pq.as_str().is_empty() || pq.as_str() == "/")
}

// ---- Forward proxy (issue 19): route hosts and [serve.proxy] -------------

/// `[serve.proxy]`, checked.
fn proxy_config(raw: RawProxy) -> Result<ProxyConfig, ConfigError> {
    if raw.ca_cert_file == raw.ca_key_file {
        return Err(ConfigError::new(
            "[serve.proxy] ca_cert_file and ca_key_file must be two different files",
        ));
    }
    let tls_handshake_timeout = match raw.tls_handshake_timeout_seconds {
        None => DEFAULT_TLS_HANDSHAKE_TIMEOUT,
        Some(0) => {
            return Err(ConfigError::new(
                "[serve.proxy] tls_handshake_timeout_seconds must be at least 1",
            ))
        }
        Some(s) => Duration::from_secs(s),
    };
    Ok(ProxyConfig {
        ca_cert_file: raw.ca_cert_file,
        ca_key_file: raw.ca_key_file,
        tls_handshake_timeout,
    })
}

/// A route's `host`, checked and normalised: a DNS name (letters, digits
/// and `-` in labels of 1 to 63 characters, at most 253 in all; a trailing
/// `.` dropped) or an IP literal (`[::1]` for IPv6), lower-cased, with an
/// optional `:port`.
pub(crate) fn route_host(entry: &str) -> Result<String, ConfigError> {
    let bad = |why: &str| {
        ConfigError::new(format!(
            "[[serve.routes]] host \"{entry}\" {why} (like \"orders.internal\" or \"orders.internal:8443\")"
        ))
    };
    let lower = entry.to_ascii_lowercase();
    let (name, port) =
        split_host_port(&lower).ok_or_else(|| bad("is not a host with an optional port"))?;
    if let Some(p) = port {
        if p.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(bad("has a port that is not a number from 1 to 65535"));
        }
    }
    let name = if let Some(v6) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        let ip: std::net::Ipv6Addr = v6.parse().map_err(|_| bad("is not a valid IPv6 literal"))?;
        format!("[{ip}]")
    } else if let Ok(ip) = name.parse::<std::net::Ipv4Addr>() {
        ip.to_string()
    } else {
        let name = name.strip_suffix('.').unwrap_or(name);
        if !is_dns_name(name) {
            return Err(bad("is not a valid DNS name or IP address"));
        }
        name.to_owned()
    };
    Ok(match port {
        Some(p) => format!("{name}:{p}"),
        None => name,
    })
}

/// `host[:port]` split; `None` when the shape is wrong.
pub(crate) fn split_host_port(text: &str) -> Option<(&str, Option<&str>)> {
    if text.starts_with('[') {
        let end = text.find(']')?;
        let (name, rest) = text.split_at(end + 1);
        return match rest {
            "" => Some((name, None)),
            r => r.strip_prefix(':').map(|p| (name, Some(p))),
        };
    }
    match text.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') => Some((name, Some(port))),
        Some(_) => None,
        None => Some((text, None)),
    }
}

fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
        // Not all digits (`10.1`): that is no name, nor an IP literal.
        && !name.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

/// Refuses a route `host` that names the sidecar itself: its requests go
/// to the token endpoints, never to a route (see guard.rs).
fn check_not_own_name(
    host: &str,
    listen: SocketAddr,
    allowed_hosts: &[String],
) -> Result<(), ConfigError> {
    let (name, _) = split_host_port(host).unwrap_or((host, None));
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    let ip = bare.parse::<std::net::IpAddr>().ok();
    let own = name == "localhost"
        || name.ends_with(".localhost")
        || crate::guard::METADATA_HOSTS.contains(&name)
        || ip.is_some_and(|ip| ip.is_loopback() || ip.is_unspecified() || ip == listen.ip())
        || allowed_hosts
            .iter()
            .any(|a| split_host_port(a).is_some_and(|(n, _)| n.trim_end_matches('.') == name));
    if own {
        return Err(ConfigError::new(format!(
            "[[serve.routes]] host \"{host}\" names the sidecar itself (loopback, its listen address, \
             the metadata server's names or [serve] allowed_hosts): requests for it go to the sidecar's \
             own endpoints, so no route may take it"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_routes_and_defaults_to_loopback() {
        let c = ServeConfig::parse(
            r#"
            [profiles.orders]
            client_id = "x"
            [serve]
            [[serve.routes]]
            prefix = "/orders/"
            upstream = "https://orders.internal/api"
            profile = "orders"
            "#,
        )
        .expect("valid");
        assert_eq!(c.listen, "127.0.0.1:8731".parse().expect("addr"));
        assert_eq!(c.routes[0].upstream.path(), "/api");
        assert_eq!(c.profiles().into_iter().collect::<Vec<_>>(), ["orders"]);
        assert_eq!(c.retry_body_limit, DEFAULT_RETRY_BODY_LIMIT);
        assert_eq!(c.routes[0].timeout, DEFAULT_UPSTREAM_TIMEOUT);
        // From a file, connections get a worker per CPU; the library's
        // default serves them on the caller's runtime.
        assert_eq!(
            c.connections,
            ConnectionSettings {
                workers: crate::workers::default_count(),
                ..ConnectionSettings::default()
            }
        );
        assert!(c.connections.workers >= 1);
        assert_eq!(ConnectionSettings::default().workers, 0);
    }

    #[test]
    fn connection_limits_are_read_from_serve() {
        let c = ServeConfig::parse(
            "[serve]\nheader_read_timeout_seconds = 2\nidle_timeout_seconds = 3\nmax_connections = 5\nhealth_connections = 0\nprefetch_concurrency = 2\nworkers = 3\n[[serve.routes]]\nprefix = \"/a/\"\nupstream = \"http://x\"\nprofile = \"p\"\ntimeout_seconds = 7\n",
        )
        .expect("valid");
        let s = c.connections;
        assert_eq!(s.workers, 3);
        assert_eq!(s.header_read_timeout, Duration::from_secs(2));
        assert_eq!(s.idle_timeout, Duration::from_secs(3));
        assert_eq!(s.max_connections, 5);
        assert_eq!(s.health_connections, 0);
        assert_eq!(s.prefetch_concurrency, 2);
        assert_eq!(c.routes[0].timeout, Duration::from_secs(7));
        assert_eq!(c.limits().drain, DEFAULT_DRAIN);
    }

    #[test]
    fn a_file_without_serve_is_the_default() {
        assert_eq!(
            ServeConfig::parse("[profiles.a]\n").expect("valid"),
            ServeConfig::default()
        );
    }

    #[test]
    fn bad_configs_name_the_problem() {
        let cases = [
            ("[serve]\nlisten = \"nowhere\"\n", "not an IP address"),
            ("[serve]\nlisten_on = \"1\"\n", "unknown field `listen_on`"),
            ("[serve]\nworkers = 100000\n", "workers = 100000 is more than 256"),
            (
                "[[serve.routes]]\nprefix = \"/a/\"\nupstream = \"ftp://x\"\nprofile = \"p\"\n",
                "http:// or https://",
            ),
            (
                "[[serve.routes]]\nprefix = \"/a/\"\nupstream = \"http://x y\"\nprofile = \"p\"\n",
                "is not a URL",
            ),
            (
                "[[serve.routes]]\nprefix = \"a/\"\nupstream = \"http://x\"\nprofile = \"p\"\n",
                "must start with /",
            ),
            (
                "[[serve.routes]]\nprefix = \"/metrics\"\nupstream = \"http://x\"\nprofile = \"p\"\n",
                "shadow",
            ),
            (
                "[[serve.routes]]\nprefix = \"/v1\"\nupstream = \"http://x\"\nprofile = \"p\"\n",
                "shadow",
            ),
            (
                "[[serve.routes]]\nprefix = \"/azure\"\nupstream = \"http://x\"\nprofile = \"p\"\n",
                "shadow",
            ),
            (
                "[[serve.routes]]\nprefix = \"/a/\"\nupstream = \"http://x\"\nprofile = \"p\"\ncolour = 1\n",
                "unknown field `colour`",
            ),
            ("[serve\n", "not valid TOML"),
            (
                "[[serve.routes]]\nprefix = \"/a/\"\nupstream = \"https://user:hunter2@x.example\"\nprofile = \"p\"\n",
                "has user info",
            ),
            (
                "[serve]\nallowed_hosts = [\"a b\"]\n",
                "allowed_hosts entry",
            ),
            (
                "[serve]\nallowed_hosts = [\"x:99999\"]\n",
                "allowed_hosts entry",
            ),
            (
                "[[serve.routes]]\nprefix = \"/a/\"\nupstream = \"http://x\"\nprofile = \"p\"\nallow_browser_origins = [\"https://app.example/path\"]\n",
                "is not an origin",
            ),
            ("[serve]\nmax_connections = 0\n", "max_connections must be at least 1"),
            ("[serve]\nmax_header_bytes = 100\n", "max_header_bytes must be at least 8192"),
            (
                "[[serve.routes]]\nprefix = \"/a/\"\nupstream = \"http://x\"\nprofile = \"p\"\ntimeout_seconds = 0\n",
                "timeout_seconds must be at least 1",
            ),
            (
                "[[serve.routes]]\nprefix = \"/a/\"\nupstream = \"http://x\"\nprofile = \"p\"\nscopes = [\"a b\"]\n",
                "scopes entry \"a b\" is not one scope",
            ),
            (
                "[[serve.routes]]\nprefix = \"/a/\"\nupstream = \"http://x\"\nprofile = \"p\"\nscopes = \"a\"\n",
                "invalid type",
            ),
            (
                "[[serve.routes]]\nprefix = \"/a/\"\nupstream = \"http://x\"\nprofile = \"p\"\naudience = \"\"\n",
                "audience = \"\" is empty",
            ),
            (
                "[[serve.routes]]\nprefix = \"/a/\"\nupstream = \"http://x\"\nprofile = \"p\"\nresource = \"orders\"\n",
                "is not an absolute URI",
            ),
            (
                "[serve.google]\nprofile = \"p\"\nmax_scope_sets = 0\n",
                "max_scope_sets must be at least 1",
            ),
            (
                "[serve.google]\nprofile = \"p\"\nnumeric_project_id = \"12a\"\n",
                "must be digits only",
            ),
            (
                "[serve.google]\nprofile = \"p\"\nproject_id = \"my project\"\n",
                "project_id = \"my project\" must be one word",
            ),
            (
                "[[serve.routes]]\nprefix = \"/a/\"\nupstream = \"https://x\"\nprofile = \"p\"\nprotocol = \"h2c\"\n",
                "is for http:// upstreams",
            ),
            (
                "[[serve.routes]]\nprefix = \"/a/\"\nupstream = \"http://x\"\nprofile = \"p\"\nprotocol = \"h3\"\n",
                "protocol \"h3\" is not \"http1\" or \"h2c\"",
            ),
        ];
        for (text, expected) in cases {
            let e = ServeConfig::parse(text).expect_err(text);
            assert!(e.to_string().contains(expected), "{text}: {e}");
            assert!(!e.to_string().contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn a_route_s_protocol_is_http1_unless_h2c_is_asked() {
        let c = ServeConfig::parse(
            "[[serve.routes]]\nprefix = \"/a/\"\nupstream = \"http://x\"\nprofile = \"p\"\n\
             [[serve.routes]]\nprefix = \"/b/\"\nupstream = \"http://x\"\nprofile = \"p\"\nprotocol = \"h2c\"\n\
             [[serve.routes]]\nprefix = \"/c/\"\nupstream = \"https://x\"\nprofile = \"p\"\nprotocol = \"http1\"\n",
        )
        .expect("valid");
        let p: Vec<Protocol> = c.routes.iter().map(|r| r.protocol).collect();
        assert_eq!(p, [Protocol::Http1, Protocol::H2c, Protocol::Http1]);
    }

    #[test]
    fn parses_the_request_guard_settings() {
        let c = ServeConfig::parse(
            r#"
            [serve]
            allowed_hosts = ["Sidecar.Internal", "other:9000", "[::1]:1"]
            insecure_token_endpoint = true
            [[serve.routes]]
            prefix = "/a/"
            upstream = "http://x.example"
            profile = "p"
            allow_browser_origins = ["https://App.example", "*"]
            allow_encoded_slashes = true
            allow_plaintext = true
            "#,
        )
        .expect("valid");
        assert_eq!(
            c.allowed_hosts,
            ["sidecar.internal", "other:9000", "[::1]:1"]
        );
        assert!(c.insecure_token_endpoint);
        let r = &c.routes[0];
        assert_eq!(r.allow_browser_origins, ["https://app.example", "*"]);
        assert!(r.allow_encoded_slashes && r.allow_plaintext);
        let d = ServeConfig::default();
        assert!(d.allowed_hosts.is_empty() && !d.insecure_token_endpoint);
    }

    // --- Admin listener (issue 24) ---
    #[test]
    fn admin_listen_is_optional_and_checked() {
        let d = ServeConfig::parse("").expect("default");
        assert_eq!(d.admin_listen, None);
        assert_eq!(d.admin_max_connections, DEFAULT_ADMIN_CONNECTIONS);
        let c = ServeConfig::parse(
            "[serve]\nadmin_listen = \"0.0.0.0:8732\"\nadmin_secret_file = \"/s\"\nadmin_max_connections = 4\n",
        )
        .expect("parses");
        assert_eq!(c.admin_listen, Some("0.0.0.0:8732".parse().expect("addr")));
        assert_eq!(
            c.admin_secret_file.as_deref(),
            Some(std::path::Path::new("/s"))
        );
        assert_eq!(c.admin_max_connections, 4);
        for (text, says) in [
            (
                "[serve]\nadmin_listen = \"8732\"\n",
                "not an IP address and port",
            ),
            (
                "[serve]\nlisten = \"127.0.0.1:9000\"\nadmin_listen = \"127.0.0.1:9000\"\n",
                "same address as listen",
            ),
            ("[serve]\nadmin_max_connections = 0\n", "at least 1"),
        ] {
            let e = ServeConfig::parse(text).expect_err(text).to_string();
            assert!(e.contains(says), "{text}: {e}");
        }
    }

    #[test]
    fn route_token_parameters_replace_the_profiles() {
        let c = ServeConfig::parse(
            r#"
            [[serve.routes]]
            prefix = "/a/"
            upstream = "http://x"
            profile = "p"
            scopes = ["b.read", "a.read"]
            audience = "https://a.example"
            resource = "https://a.example/"
            [[serve.routes]]
            prefix = "/b/"
            upstream = "http://x"
            profile = "p"
            "#,
        )
        .expect("valid");
        let base = token_cache::TokenRequest::builder()
            .scope("p.read")
            .tenant("t")
            .audience("https://p.example")
            .resource("https://p.example/")
            .build();
        let (a, b) = (&c.routes[0], &c.routes[1]);
        assert!(a.has_token_parameters() && !b.has_token_parameters());
        let r = a.token_request(&base);
        assert_eq!(r.scopes(), ["a.read", "b.read"]);
        assert_eq!(r.audience(), Some("https://a.example"));
        assert_eq!(r.resources(), ["https://a.example/"]);
        assert_eq!(r.tenant(), Some("t"), "what the route does not set stays");
        assert_ne!(r, base);
        assert_eq!(b.token_request(&base), base);
        // Only scopes: audience and resource stay the profile's.
        let only = Route {
            audience: None,
            resource: None,
            ..a.clone()
        };
        let r = only.token_request(&base);
        assert_eq!(r.audience(), Some("https://p.example"));
        assert_eq!(r.resources(), ["https://p.example/"]);
    }

    #[test]
    fn google_settings_have_defaults() {
        let c = ServeConfig::parse("[serve.google]\nprofile = \"p\"\n").expect("valid");
        let g = c.google.expect("google");
        assert_eq!(g.email, "default");
        assert_eq!(g.universe_domain, DEFAULT_UNIVERSE_DOMAIN);
        assert_eq!(g.max_scope_sets, DEFAULT_MAX_SCOPE_SETS);
        assert_eq!(g.project_id, None);
        let c = ServeConfig::parse(
            "[serve.google]\nprofile = \"p\"\nproject_id = \"proj\"\nnumeric_project_id = \"42\"\nuniverse_domain = \"example.goog\"\nmax_scope_sets = 2\n",
        )
        .expect("valid");
        let g = c.google.expect("google");
        assert_eq!(g.project_id.as_deref(), Some("proj"));
        assert_eq!(g.numeric_project_id.as_deref(), Some("42"));
        assert_eq!(g.universe_domain, "example.goog");
        assert_eq!(g.max_scope_sets, 2);
    }
}
