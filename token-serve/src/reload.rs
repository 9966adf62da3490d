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
//! being kept warm. A file that does not load (bad TOML, an unknown key, a
//! profile the IdP refuses) is refused whole with one log line naming the
//! problem, and the configuration in force keeps serving.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use token_cache::{Error as EngineError, KeepWarm};
use token_profile::{ProfileSpec, ProfilesFile, RedisStartup, Stores};

use crate::config::{ConfigError, ServeConfig};
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
}

/// One profile in force: its spec (to tell a change), what serves it, and
/// the timer keeping its token warm (dropped with it).
struct Loaded {
    spec: ProfileSpec,
    profile: Profile,
    token_url: String,
    _warm: Arc<KeepWarm>,
}

struct State {
    text: String,
    listen: SocketAddr,
    drain: Duration,
    profiles: BTreeMap<String, Loaded>,
    stores: Stores,
}

/// A [`Sidecar`] built from a profiles file, which it reloads on request
/// ([`reload`](Self::reload)), on SIGHUP or on a change of the file
/// ([`watch`](Self::watch)). Cheap to clone.
#[derive(Clone)]
pub struct FileSidecar {
    sidecar: Sidecar,
    path: PathBuf,
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
    /// Loads the profiles file at `path`: every profile built (stores
    /// opened once each), its first token fetched, kept warm, and recorded
    /// in its store's index. A profile the IdP refuses is an error; one the
    /// IdP cannot serve right now is reported in the report's `pending` and
    /// kept trying in the background.
    pub async fn load(
        path: &Path,
        options: FileOptions,
    ) -> Result<(Self, ReloadReport), LoadError> {
        let file = ProfilesFile::load(path)?;
        let config = serve_config(&file)?;
        let metrics = options.metrics.clone().map(Metrics::new);
        // A long-running process: an unreachable Redis is connected to in
        // the background while tokens come from memory and the IdP.
        let mut stores = Stores::new().with_redis_startup(RedisStartup::Background);
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
        report.routes = config.routes.len();
        let state = State {
            text: file.text().to_owned(),
            listen: config.listen,
            drain: config.drain,
            profiles,
            stores,
        };
        Ok((
            Self {
                sidecar,
                path: path.to_owned(),
                options: Arc::new(options),
                metrics,
                state: Arc::new(tokio::sync::Mutex::new(state)),
            },
            report,
        ))
    }

    /// The sidecar, to [`serve`](crate::serve) or to call from your own
    /// server; it always answers with the configuration in force.
    pub fn sidecar(&self) -> &Sidecar {
        &self.sidecar
    }

    /// The address the configuration loaded at start listens on (a reload
    /// cannot move it).
    pub async fn listen(&self) -> SocketAddr {
        self.state.lock().await.listen
    }

    /// How long a shutdown waits for requests in flight.
    pub async fn drain(&self) -> Duration {
        self.state.lock().await.drain
    }

    /// Reads the file again and, when it loads, puts it in force. On an
    /// error nothing changes. One reload runs at a time.
    pub async fn reload(&self) -> Result<ReloadReport, LoadError> {
        let mut state = self.state.lock().await;
        let file = ProfilesFile::load(&self.path)?;
        if file.text() == state.text {
            return Ok(ReloadReport {
                unchanged: true,
                kept: state.profiles.len(),
                ..ReloadReport::default()
            });
        }
        let config = serve_config(&file)?;
        let mut report = ReloadReport::default();
        if config.listen != state.listen {
            report
                .needs_restart
                .push(format!("listen: {} -> {}", state.listen, config.listen));
        }
        if config.drain != state.drain {
            report.needs_restart.push(format!(
                "drain_seconds: {} -> {}",
                state.drain.as_secs(),
                config.drain.as_secs()
            ));
        }
        let mut stores = state.stores.clone();
        let profiles = build_profiles(
            &file,
            &self.options.overlay,
            &state.profiles,
            &mut stores,
            &mut report,
        )
        .await?;
        let previous = self.sidecar.current();
        let inner =
            inner(&config, &profiles, self.metrics.clone(), Some(&previous)).map_err(|error| {
                LoadError::Serve {
                    path: self.path.clone(),
                    error,
                }
            })?;
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
            loop {
                let trigger = tokio::select! {
                    _ = hup.recv() => "SIGHUP",
                    _ = every.tick() => {
                        match tokio::fs::read_to_string(&this.path).await {
                            Ok(text) if text != this.state.lock().await.text => "file change",
                            // Unreadable now (mid-replace): the next look
                            // tells, or a reload on SIGHUP says why.
                            _ => continue,
                        }
                    }
                };
                let _ = this.reload_and_log(trigger).await;
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
                    added = ?r.added,
                    changed = ?r.changed,
                    removed = ?r.removed,
                    kept = r.kept,
                    routes = r.routes,
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
/// as they are; the others are built, fetched (a refusal is an error) and
/// kept warm.
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
        if let Some(kept) = old.get(name).filter(|l| l.spec == spec) {
            out.insert(
                name.clone(),
                Loaded {
                    spec,
                    profile: kept.profile.clone(),
                    token_url: kept.token_url.clone(),
                    _warm: Arc::clone(&kept._warm),
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
        let profile = Profile::new(&built.cache, &built.request);
        match profile.handle.token().await {
            Ok(_) => {
                if let Err(e) = built.record().await {
                    tracing::warn!(profile = %name, error = %e, "could not record the entry in the store's index (inspect will not list it)");
                }
            }
            Err(e) if e.is_transient() => report.pending.push((name.clone(), e.to_string())),
            Err(error) => {
                // A discovered endpoint (from the discovery cache) that
                // answers like no token endpoint is forgotten, so the next
                // load discovers afresh.
                let wrong_endpoint =
                    matches!(&error, EngineError::Credential(c) if c.endpoint_is_wrong());
                built.forget_endpoint_if_wrong(wrong_endpoint).await;
                return Err(LoadError::Refused {
                    profile: name.clone(),
                    token_url: built.token_url.clone(),
                    error,
                });
            }
        }
        let warm = built
            .cache
            .keep_warm(&built.request)
            .map_err(|error| LoadError::Refused {
                profile: name.clone(),
                token_url: built.token_url.clone(),
                error,
            })?;
        out.insert(
            name.clone(),
            Loaded {
                spec,
                profile,
                token_url: built.token_url,
                _warm: Arc::new(warm),
            },
        );
    }
    Ok(out)
}

fn inner(
    config: &ServeConfig,
    profiles: &BTreeMap<String, Loaded>,
    metrics: Option<Metrics>,
    previous: Option<&crate::sidecar::Inner>,
) -> Result<crate::sidecar::Inner, ConfigError> {
    let mut builder = Sidecar::builder(config.clone()).metrics_of(metrics);
    if let Some(previous) = previous {
        builder = builder.reuse_pools(previous);
    }
    for (name, loaded) in profiles {
        builder = builder.profile_shared(name.clone(), loaded.profile.clone());
    }
    builder.inner()
}
