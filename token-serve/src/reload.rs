//! [`FileSidecar`]: a [`Sidecar`] built from a profiles file, every profile
//! as `tokencache get --profile NAME` builds it (token-profile), that
//! reloads the file on SIGHUP or when it changes.
//!
//! A reload reads the file, checks all of it, builds what changed, and only
//! then puts the new configuration in force in one atomic swap: requests in
//! flight finish on the configuration they started with, new requests see
//! the new one. A profile whose settings did not change keeps its cache,
//! handle and keep-warm timer (a reload makes no IdP call for it); a new or
//! changed profile is fetched before the swap; a removed profile stops
//! being kept warm. A route's own token (`scopes`, `audience`, `resource`)
//! is treated the same way: kept with its timer when its profile and
//! parameters are unchanged, fetched before the swap when new or changed
//! ([`ReloadReport::route_tokens`]). A file that does not load (bad TOML, an unknown key, a
//! profile the IdP refuses) is refused whole with one log line naming the
//! problem, and the configuration in force keeps serving.
//!
//! Start-up is in two steps so that the sidecar serves `/healthz` before
//! any IdP answers: [`FileSidecar::open`] checks the file and builds every
//! profile without fetching a token (the sidecar can serve from here on;
//! `/readyz` says 503 until each profile has a token), then
//! [`FileSidecar::prefetch`] fetches the first tokens, `prefetch_concurrency`
//! at a time. A reload fetches its new and changed profiles the same way,
//! concurrently, before its swap. [`FileSidecar::load`] does both steps.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use token_cache::{Error as EngineError, KeepWarm};
use token_profile::{ProfileSpec, ProfilesFile, RedisStartup, Stores};

use token_profile::Built;

use crate::config::{ConfigError, ConnectionLimits, ServeConfig};
use crate::metrics::Metrics;
use crate::sidecar::{Profile, Sidecar};

/// How often [`FileSidecar::watch`] looks at the file for a change, unless
/// told otherwise: quick enough that an edit (or a Kubernetes ConfigMap
/// update) takes effect within seconds, rare enough to cost nothing.
pub const DEFAULT_WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// Why a profiles file could not be loaded. Carries its facts, so that a
/// command chooses an exit code from them.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// A profile is invalid, or its store or key cannot be used.
    #[error("{0}")]
    Profile(token_profile::Error),
    /// The `[serve]` table is invalid.
    #[error("the profile file {path}: {error}")]
    Serve {
        /// The file.
        path: PathBuf,
        /// What is wrong with its `[serve]` table.
        error: ConfigError,
    },
    /// The IdP refused a profile's first token (`invalid_client`, ...).
    #[error("profile `{profile}`: {error}")]
    Refused {
        /// The profile.
        profile: String,
        /// Its token endpoint.
        token_url: String,
        /// What the engine said.
        error: EngineError,
    },
}

impl From<token_profile::Error> for LoadError {
    fn from(e: token_profile::Error) -> Self {
        Self::Profile(e)
    }
}

/// What a [`FileSidecar`] is built with besides its file.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct FileOptions {
    /// Laid over every profile (e.g. `--key-file` for every store).
    pub overlay: ProfileSpec,
    /// The Prometheus recorder's handle, for `/metrics`.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

impl FileOptions {
    /// Options with `key_file` laid over every profile.
    pub fn key_file(mut self, path: Option<PathBuf>) -> Self {
        self.overlay.key_file = path;
        self
    }

    /// Options serving `/metrics` from this recorder.
    pub fn metrics(mut self, handle: metrics_exporter_prometheus::PrometheusHandle) -> Self {
        self.metrics = Some(handle);
        self
    }
}

/// What a successful load or reload did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReloadReport {
    /// Profiles new in the file.
    pub added: Vec<String>,
    /// Profiles whose settings changed (rebuilt: a new cache).
    pub changed: Vec<String>,
    /// Profiles no longer in the file.
    pub removed: Vec<String>,
    /// Profiles kept as they were (their cached tokens too).
    pub kept: usize,
    /// Routes in force now.
    pub routes: usize,
    /// Settings that changed but take effect only after a restart, as
    /// `setting: old -> new`.
    pub needs_restart: Vec<String>,
    /// Profiles whose first token could not be had yet (transient); kept
    /// trying in the background.
    pub pending: Vec<(String, String)>,
    /// Whether the file's text was unchanged (nothing was rebuilt).
    pub unchanged: bool,
    /// Routes whose own token (`scopes`, `audience` or `resource`) was
    /// fetched: new, or changed in its parameters or its profile. Routes
    /// whose token was kept are not listed.
    pub route_tokens: Vec<String>,
}

/// One profile in force: its spec (to tell a change), what serves it, and
/// the timer keeping its token warm (dropped with it). `first` holds what
/// was built until the first token was fetched ([`FileSidecar::prefetch`]);
/// the timer starts then.
struct Loaded {
    spec: ProfileSpec,
    profile: Profile,
    token_url: String,
    _warm: Option<Arc<KeepWarm>>,
    first: Option<Built>,
}

struct State {
    text: String,
    /// `[serve] secret_file` and a digest of what it held when last read:
    /// a rotated shared secret is a change too (SIGHUP or the watcher).
    secret_file: Option<PathBuf>,
    secret_stamp: Option<u64>,
    profiles: BTreeMap<String, Loaded>,
    stores: Stores,
    /// First tokens fetched at once.
    prefetch_concurrency: usize,
}

/// A [`Sidecar`] built from a profiles file, which it reloads on request
/// ([`reload`](Self::reload)), on SIGHUP or on a change of the file
/// ([`watch`](Self::watch)). Cheap to clone.
#[derive(Clone)]
pub struct FileSidecar {
    sidecar: Sidecar,
    path: PathBuf,
    /// What the file loaded at start said (a reload cannot change them).
    listen: SocketAddr,
    limits: ConnectionLimits,
    /// The admin listener's settings at start (restart-only).
    admin: crate::admin::AdminSettings,
    options: Arc<FileOptions>,
    metrics: Option<Metrics>,
    state: Arc<tokio::sync::Mutex<State>>,
}

impl std::fmt::Debug for FileSidecar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSidecar")
            .field("path", &self.path)
            .field("sidecar", &self.sidecar)
            .finish_non_exhaustive()
    }
}

impl FileSidecar {
    /// Loads the profiles file at `path`: [`open`](Self::open), then
    /// [`prefetch`](Self::prefetch). A profile the IdP refuses is an error;
    /// one the IdP cannot serve right now is reported in the report's
    /// `pending` and kept trying in the background.
    pub async fn load(
        path: &Path,
        options: FileOptions,
    ) -> Result<(Self, ReloadReport), LoadError> {
        let this = Self::open(path, options).await?;
        let report = this.prefetch().await?;
        Ok((this, report))
    }

    /// Loads the profiles file at `path` and builds every profile (stores
    /// opened once each) without fetching any token: the sidecar can serve
    /// at once, its `/readyz` answering 503 until each profile has a token.
    /// Then call [`prefetch`](Self::prefetch).
    pub async fn open(path: &Path, options: FileOptions) -> Result<Self, LoadError> {
        let file = ProfilesFile::load(path)?;
        let config = serve_config(&file)?;
        let metrics = options.metrics.clone().map(Metrics::new);
        // A long-running process: an unreachable Redis is connected to in
        // the background while tokens come from memory and the IdP.
        // And the default sled store, when HOME cannot hold it and no state
        // directory is given, becomes memory with a warning (degraded, not
        // dead).
        let mut stores = Stores::new()
            .with_redis_startup(RedisStartup::Background)
            .with_memory_fallback(true);
        let mut report = ReloadReport::default();
        let profiles = build_profiles(
            &file,
            &options.overlay,
            &BTreeMap::new(),
            &mut stores,
            &mut report,
        )
        .await?;
        let inner =
            inner(&config, &profiles, metrics.clone(), None).map_err(|error| LoadError::Serve {
                path: path.to_owned(),
                error,
            })?;
        let sidecar = Sidecar::from_inner(inner);
        let state = State {
            text: file.text().to_owned(),
            secret_stamp: stamp(config.secret_file.as_deref()),
            secret_file: config.secret_file.clone(),
            profiles,
            stores,
            prefetch_concurrency: config.connections.prefetch_concurrency,
        };
        Ok(Self {
            sidecar,
            path: path.to_owned(),
            listen: config.listen,
            limits: config.limits(),
            admin: crate::admin::AdminSettings::of(&config),
            options: Arc::new(options),
            metrics,
            state: Arc::new(tokio::sync::Mutex::new(state)),
        })
    }

    /// Fetches the first token of every profile that has none yet (after
    /// [`open`](Self::open)), `prefetch_concurrency` at a time, records it in
    /// its store's index and keeps it warm. A profile the IdP refuses is an
    /// error (the others are still fetched and kept warm); one the IdP
    /// cannot serve right now is in the report's `pending` and kept trying
    /// in the background. A reload waits until it is done.
    pub async fn prefetch(&self) -> Result<ReloadReport, LoadError> {
        let mut state = self.state.lock().await;
        let concurrency = state.prefetch_concurrency;
        let mut report = ReloadReport {
            routes: self.sidecar.current().routes.len(),
            ..ReloadReport::default()
        };
        let mut refused = None;
        first_tokens(&mut state.profiles, concurrency, &mut report, &mut refused).await;
        route_tokens(
            &self.sidecar.current(),
            &state.profiles,
            concurrency,
            &mut report,
            &mut refused,
        )
        .await;
        report.kept = state.profiles.len();
        match refused {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }

    /// The sidecar, to [`serve`](crate::serve) or to call from your own
    /// server; it always answers with the configuration in force.
    pub fn sidecar(&self) -> &Sidecar {
        &self.sidecar
    }

    /// The address the configuration loaded at start listens on (a reload
    /// cannot move it).
    pub async fn listen(&self) -> SocketAddr {
        self.listen
    }

    /// The admin listener's settings of the configuration loaded at start
    /// (a reload cannot change them), for [`serve_with_admin`](crate::serve_with_admin).
    pub fn admin_settings(&self) -> crate::admin::AdminSettings {
        self.admin.clone()
    }

    /// How long a shutdown waits for requests in flight.
    pub async fn drain(&self) -> Duration {
        self.limits.drain
    }

    /// The connection limits of the configuration loaded at start (a
    /// reload cannot change them), for [`serve`](crate::serve).
    pub fn limits(&self) -> ConnectionLimits {
        self.limits
    }

    /// Reads the file again and, when it loads, puts it in force. On an
    /// error nothing changes. One reload runs at a time.
    pub async fn reload(&self) -> Result<ReloadReport, LoadError> {
        let mut state = self.state.lock().await;
        let file = ProfilesFile::load(&self.path)?;
        if file.text() == state.text
            && stamp(state.secret_file.as_deref()) == state.secret_stamp
            && state.profiles.values().all(same_dpop_key)
        {
            return Ok(ReloadReport {
                unchanged: true,
                kept: state.profiles.len(),
                ..ReloadReport::default()
            });
        }
        let config = serve_config(&file)?;
        let mut report = ReloadReport::default();
        if config.listen != self.listen {
            report
                .needs_restart
                .push(format!("listen: {} -> {}", self.listen, config.listen));
        }
        if config.drain != self.limits.drain {
            report.needs_restart.push(format!(
                "drain_seconds: {} -> {}",
                self.limits.drain.as_secs(),
                config.drain.as_secs()
            ));
        }
        if crate::admin::AdminSettings::of(&config) != self.admin {
            report.needs_restart.push(
                "the admin listener (admin_listen, admin_secret_file, admin_max_connections)"
                    .to_owned(),
            );
        }
        if config.connections != self.limits.settings {
            report
                .needs_restart
                .push("connection limits (max_connections, timeouts, ...)".to_owned());
        }
        let mut stores = state.stores.clone();
        let mut profiles = build_profiles(
            &file,
            &self.options.overlay,
            &state.profiles,
            &mut stores,
            &mut report,
        )
        .await?;
        let mut refused = None;
        first_tokens(
            &mut profiles,
            state.prefetch_concurrency,
            &mut report,
            &mut refused,
        )
        .await;
        if let Some(e) = refused {
            return Err(e);
        }
        let previous = self.sidecar.current();
        let inner =
            inner(&config, &profiles, self.metrics.clone(), Some(&previous)).map_err(|error| {
                LoadError::Serve {
                    path: self.path.clone(),
                    error,
                }
            })?;
        route_tokens(
            &inner,
            &profiles,
            state.prefetch_concurrency,
            &mut report,
            &mut refused,
        )
        .await;
        if let Some(e) = refused {
            return Err(e);
        }
        report.removed = state
            .profiles
            .keys()
            .filter(|name| !profiles.contains_key(*name))
            .cloned()
            .collect();
        report.routes = config.routes.len();
        self.sidecar.swap(inner);
        // The old profiles no longer in force stop being kept warm here;
        // requests still running on the old configuration keep theirs.
        state.profiles = profiles;
        state.stores = stores;
        state.text = file.text().to_owned();
        state.secret_stamp = stamp(config.secret_file.as_deref());
        state.secret_file = config.secret_file;
        Ok(report)
    }

    /// Reloads on SIGHUP and whenever the file's contents change (looked at
    /// every `interval`), logging each outcome in one line and counting it
    /// in `tokencache_config_reloads_total{result}`. Runs until the returned
    /// task is aborted. Needs a Tokio runtime with signals enabled.
    pub fn watch(&self, interval: Duration) -> std::io::Result<tokio::task::JoinHandle<()>> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = signal(SignalKind::hangup())?;
        let this = self.clone();
        Ok(tokio::spawn(async move {
            let mut every = tokio::time::interval(interval);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            every.tick().await;
            // What the watcher last saw refused: not tried (nor logged)
            // again until it changes; SIGHUP always tries.
            let mut refused: Option<(String, Option<u64>)> = None;
            loop {
                let trigger = tokio::select! {
                    _ = hup.recv() => "SIGHUP",
                    _ = every.tick() => {
                        let Ok(text) = tokio::fs::read_to_string(&this.path).await else {
                            // Unreadable now (mid-replace): the next look
                            // tells, or a reload on SIGHUP says why.
                            continue;
                        };
                        let state = this.state.lock().await;
                        let seen = (text, stamp(state.secret_file.as_deref()));
                        if refused.as_ref() == Some(&seen) {
                            continue;
                        }
                        match seen {
                            (text, _) if text != state.text => "file change",
                            (_, secret) if secret != state.secret_stamp => "secret_file change",
                            _ => continue,
                        }
                    }
                };
                let seen = match tokio::fs::read_to_string(&this.path).await {
                    Ok(text) => Some((text, stamp(this.state.lock().await.secret_file.as_deref()))),
                    Err(_) => None,
                };
                refused = match this.reload_and_log(trigger).await {
                    Some(_) => None,
                    None => seen,
                };
            }
        }))
    }

    /// One reload, logged and counted; `None` when it was refused.
    pub async fn reload_and_log(&self, trigger: &str) -> Option<ReloadReport> {
        let started = Instant::now();
        match self.reload().await {
            Ok(r) if r.unchanged => {
                tracing::info!(trigger, "configuration reload: the file is unchanged");
                metrics::counter!("tokencache_config_reloads_total", "result" => "unchanged")
                    .increment(1);
                Some(r)
            }
            Ok(r) => {
                let restart = if r.needs_restart.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; not applied until a restart: {}",
                        r.needs_restart.join(", ")
                    )
                };
                tracing::info!(
                    trigger,
                    added = %r.added.join(","),
                    changed = %r.changed.join(","),
                    removed = %r.removed.join(","),
                    kept = r.kept,
                    routes = r.routes,
                    route_tokens_fetched = ?r.route_tokens,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "configuration reloaded{restart}"
                );
                for (profile, cause) in &r.pending {
                    tracing::warn!(profile = %profile, cause = %cause, "no token yet for a reloaded profile; keeping on trying in the background");
                }
                metrics::counter!("tokencache_config_reloads_total", "result" => "success")
                    .increment(1);
                Some(r)
            }
            Err(e) => {
                tracing::error!(
                    trigger,
                    path = %self.path.display(),
                    "configuration reload refused, the configuration in force keeps serving: {e}"
                );
                metrics::counter!("tokencache_config_reloads_total", "result" => "error")
                    .increment(1);
                None
            }
        }
    }
}

/// A digest of what the file at `path` holds now (not a secret's hash kept
/// anywhere but in memory, and only to notice a change); `None` without a
/// file or when it cannot be read.
/// DPoP (issue 21): whether a loaded profile's `dpop_key_file` still holds
/// the key it was built with. A rotated key is a change: the profile is
/// rebuilt, its requests carry the new thumbprint (a new cache partition)
/// and the gateway signs with the new key. A file that cannot be read now
/// counts as a change too, so the reload reports it.
fn same_dpop_key(loaded: &Loaded) -> bool {
    let Some(path) = &loaded.spec.dpop_key_file else {
        return true;
    };
    let now = token_http::DpopKey::from_file(path).ok();
    match (now, &loaded.profile.dpop) {
        (Some(now), Some(was)) => now.thumbprint() == was.thumbprint(),
        _ => false,
    }
}

fn stamp(path: Option<&Path>) -> Option<u64> {
    use std::hash::{Hash as _, Hasher as _};
    let bytes = zeroize::Zeroizing::new(std::fs::read(path?).ok()?);
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    Some(h.finish())
}

fn serve_config(file: &ProfilesFile) -> Result<ServeConfig, LoadError> {
    let serve_error = |error| LoadError::Serve {
        path: file.path().to_owned(),
        error,
    };
    let config = ServeConfig::parse(file.text()).map_err(serve_error)?;
    let names = file.profiles();
    if names.is_empty() {
        return Err(serve_error(ConfigError::new(
            "it has no [profiles.NAME]: there is nothing to serve",
        )));
    }
    if let Some(missing) = config
        .profiles()
        .into_iter()
        .find(|p| !names.contains_key(p))
    {
        let known: Vec<&str> = names.keys().map(String::as_str).collect();
        return Err(serve_error(ConfigError::new(format!(
            "it has no profile [profiles.{missing}], which [serve] uses (it has: {})",
            known.join(", ")
        ))));
    }
    Ok(config)
}

/// Every profile of `file`: those whose spec equals one in `old` are kept
/// as they are; the others are built (no token fetched: see
/// [`first_tokens`]).
async fn build_profiles(
    file: &ProfilesFile,
    overlay: &ProfileSpec,
    old: &BTreeMap<String, Loaded>,
    stores: &mut Stores,
    report: &mut ReloadReport,
) -> Result<BTreeMap<String, Loaded>, LoadError> {
    let mut out = BTreeMap::new();
    for (name, spec) in file.profiles() {
        let spec = spec.clone().overlay(overlay.clone());
        if let Some(kept) = old.get(name).filter(|l| l.spec == spec && same_dpop_key(l)) {
            out.insert(
                name.clone(),
                Loaded {
                    spec,
                    profile: kept.profile.clone(),
                    token_url: kept.token_url.clone(),
                    _warm: kept._warm.clone(),
                    first: kept.first.clone(),
                },
            );
            report.kept += 1;
            continue;
        }
        if old.contains_key(name) {
            report.changed.push(name.clone());
        } else if !old.is_empty() {
            report.added.push(name.clone());
        }
        let resolved = spec
            .clone()
            .resolve(token_profile::Naming::FileKeys)
            .map_err(|e| e.in_profile(name))?;
        let built = token_profile::build(resolved, stores)
            .await
            .map_err(|e| e.in_profile(name))?;
        // The IdP call histogram's `profile` label.
        built.cache.set_metrics_name(name);
        out.insert(
            name.clone(),
            Loaded {
                spec,
                profile: Profile::new(&built.cache, &built.request)
                    .with_store(built.store.clone())
                    .with_dpop(built.resolved.dpop_key().cloned()),
                token_url: built.token_url.clone(),
                _warm: None,
                first: Some(built),
            },
        );
    }
    Ok(out)
}

/// Fetches the first token of every profile in `profiles` that has none
/// yet, `concurrency` at a time; records each in its store's index and
/// starts its keep-warm timer. A transient failure is reported in
/// `pending` (keep-warm keeps trying); the first refusal is put in
/// `refused`, the other profiles still being fetched.
async fn first_tokens(
    profiles: &mut BTreeMap<String, Loaded>,
    concurrency: usize,
    report: &mut ReloadReport,
    refused: &mut Option<LoadError>,
) {
    let gate = tokio::sync::Semaphore::new(concurrency.max(1));
    let fetches = profiles.iter().filter_map(|(name, loaded)| {
        let built = loaded.first.clone()?;
        let profile = loaded.profile.clone();
        let gate = &gate;
        Some(async move {
            let outcome = match gate.acquire().await {
                Ok(_permit) => first_token(name, &built, &profile).await,
                // Never closed.
                Err(_) => Ok(None),
            };
            (name.clone(), built, outcome)
        })
    });
    let outcomes = futures_util::future::join_all(fetches).await;
    for (name, built, outcome) in outcomes {
        match outcome {
            Ok(pending) => {
                if let Some(cause) = pending {
                    report.pending.push((name.clone(), cause));
                }
                let warm = match built.cache.keep_warm(&built.request) {
                    Ok(w) => w,
                    Err(error) => {
                        refused.get_or_insert(LoadError::Refused {
                            profile: name.clone(),
                            token_url: built.token_url.clone(),
                            error,
                        });
                        continue;
                    }
                };
                if let Some(loaded) = profiles.get_mut(&name) {
                    loaded._warm = Some(Arc::new(warm));
                    loaded.first = None;
                }
            }
            Err(e) => {
                refused.get_or_insert(e);
            }
        }
    }
}

/// One profile's first token: `Ok(None)` when fetched (and recorded in the
/// store's index), `Ok(Some(cause))` when the IdP cannot serve it now, an
/// error when the IdP refuses it.
async fn first_token(
    name: &str,
    built: &Built,
    profile: &Profile,
) -> Result<Option<String>, LoadError> {
    match profile.handle.token().await {
        Ok(_) => {
            if let Err(e) = built.record().await {
                tracing::warn!(profile = %name, error = %e, "could not record the entry in the store's index (inspect will not list it)");
            }
            Ok(None)
        }
        Err(e) if e.is_transient() => Ok(Some(e.to_string())),
        Err(error) => {
            // A discovered endpoint (from the discovery cache) that
            // answers like no token endpoint is forgotten, so the next
            // load discovers afresh.
            let wrong_endpoint =
                matches!(&error, EngineError::Credential(c) if c.endpoint_is_wrong());
            built.forget_endpoint_if_wrong(wrong_endpoint).await;
            Err(LoadError::Refused {
                profile: name.to_owned(),
                token_url: built.token_url.clone(),
                error,
            })
        }
    }
}

/// Fetches the first token of every route token of `inner` that has none
/// yet (a route's `scopes`/`audience`/`resource`: new, or changed), like
/// [`first_tokens`] for profiles, and starts its keep-warm timer. A route
/// token kept by a reload already has its timer and is not fetched.
async fn route_tokens(
    inner: &crate::sidecar::Inner,
    profiles: &BTreeMap<String, Loaded>,
    concurrency: usize,
    report: &mut ReloadReport,
    refused: &mut Option<LoadError>,
) {
    let gate = tokio::sync::Semaphore::new(concurrency.max(1));
    let fresh = inner
        .variants
        .iter()
        .filter(|v| v.warm.lock().map(|w| w.is_none()).unwrap_or(false));
    let fetches = fresh.map(|v| {
        let gate = &gate;
        async move {
            let outcome = match gate.acquire().await {
                Ok(_permit) => Some(v.profile.handle.token().await),
                Err(_) => None,
            };
            (v, outcome)
        }
    });
    for (v, outcome) in futures_util::future::join_all(fetches).await {
        let token_url = profiles
            .get(&v.profile_name)
            .map(|l| l.token_url.clone())
            .unwrap_or_default();
        match outcome {
            Some(Err(e)) if !e.is_transient() => {
                refused.get_or_insert(LoadError::Refused {
                    profile: v.label(),
                    token_url,
                    error: e,
                });
                continue;
            }
            Some(Err(e)) => report.pending.push((v.label(), e.to_string())),
            _ => {}
        }
        report.route_tokens.extend(v.routes.iter().cloned());
        match v.profile.cache.keep_warm(&v.request) {
            Ok(w) => {
                if let Ok(mut slot) = v.warm.lock() {
                    *slot = Some(w);
                }
            }
            Err(error) => {
                refused.get_or_insert(LoadError::Refused {
                    profile: v.label(),
                    token_url,
                    error,
                });
            }
        }
    }
}

fn inner(
    config: &ServeConfig,
    profiles: &BTreeMap<String, Loaded>,
    metrics: Option<Metrics>,
    previous: Option<&crate::sidecar::Inner>,
) -> Result<crate::sidecar::Inner, ConfigError> {
    let mut builder = Sidecar::builder(config.clone()).metrics_of(metrics);
    if let Some(previous) = previous {
        builder = builder.reuse_pools(previous).reuse_tokens(previous);
    }
    for (name, loaded) in profiles {
        builder = builder.profile_shared(name.clone(), loaded.profile.clone());
    }
    builder.inner()
}
