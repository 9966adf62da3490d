//! `tokencache serve`: the sidecar (token-serve) on the profiles file.
//!
//! Every profile is built by token-profile, as `get --profile NAME` builds
//! it, and served by `/v1/token?profile=NAME`; the `[serve]` table adds the
//! listening address, the gateway's routes and the vendor-compatible
//! endpoints. Start-up stops with one sentence and an exit code at the
//! first bad setting (every profile resolved and checked, as
//! `--check-config` does); it then raises the open-file limit, binds,
//! prints `listening on http://ADDR` on stdout (under `--log-format json` a
//! JSON line with the address in `fields.address`) and serves at once:
//! `/healthz` answers and `/readyz` says 503 while the profiles are built
//! (stores opened, issuers discovered) and their first tokens fetched,
//! `prefetch_concurrency` at a time, and kept warm. A store that cannot be
//! opened or a profile the IdP refuses then stops the sidecar with its exit
//! code, as a bad setting would. It serves until SIGTERM or SIGINT, when it
//! drains requests in flight (up to `[serve] drain_seconds`) and exits 0.
//! SIGHUP, or a change of the file, reloads it (token-serve's
//! `FileSidecar`); `--check-config` only checks it.
//!
//! With `[serve] admin_listen`, a second listener (bound with the first,
//! before `listening on` is printed) serves `/healthz`, `/readyz`,
//! `/metrics` and the admin API (token-serve's `AdminListener`). An IdP or
//! a Redis store that is down at start does not stop the sidecar: it is
//! unready (IdP) or degraded (Redis) until they answer. `--state-dir` /
//! `TOKENCACHE_STATE_DIR` hold the default sled store and key; without
//! them and without a writable HOME, that store is kept in memory with a
//! warning.

use std::sync::{Arc, Mutex};

use token_profile::{Naming, ProfilesFile};
use token_serve::{
    Drained, FileOptions, FileSidecar, LoadError, ServeConfig, DEFAULT_WATCH_INTERVAL,
};

use crate::cli::ServeArgs;
use crate::error::{self, CliError, Kind};

/// Runs `serve`.
pub(crate) async fn run(args: ServeArgs) -> Result<(), CliError> {
    let path = token_profile::config_path(args.locations.config.as_deref())?;
    if args.check_config {
        return check(&path, &args);
    }
    // Every setting is checked before anything starts (as --check-config
    // checks them); what needs the network (stores, discovery, tokens)
    // comes after the listener serves.
    let (_, config) = validate(&path, &args)?;
    let handle = token_serve::prometheus_builder()
        .and_then(|b| b.install_recorder())
        .map_err(|e| CliError::internal(format!("cannot set up metrics: {e}")))?;
    // The recorder's histograms need upkeep even when nobody scrapes.
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    let options = FileOptions::default()
        .key_file(args.locations.key_file.clone())
        .metrics(handle);
    match token_serve::raise_fd_limit() {
        Ok(Some(limit)) => tracing::debug!(limit, "open-file limit"),
        Ok(None) => tracing::debug!("open-file limit: unlimited"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
    let listen = config.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| CliError::new(Kind::Listen, format!("cannot listen on {listen}: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| CliError::new(Kind::Listen, format!("cannot listen: {e}")))?;
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "listening on a non-loopback address, as [serve] listen says");
    }
    // The admin listener (health, readiness, metrics, admin API), bound
    // before anything is announced: a port in use is a start-up error.
    let admin = token_serve::AdminListener::bind(&token_serve::AdminSettings::of(&config))
        .await
        .map_err(|e| CliError::new(Kind::Listen, e.to_string()))?;
    let admin_addr = admin.as_ref().and_then(|a| a.local_addr().ok());
    // SIGHUP before the watcher is up (start-up) must not end the process.
    let early_hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| CliError::internal(format!("cannot handle SIGHUP: {e}")))?;
    let signal = shutdown_signal()?;

    // A start-up failure after the listener serves (a store that cannot be
    // opened, a profile the IdP refuses) stops the sidecar with its exit
    // code, as a bad setting would.
    let fatal: Arc<Mutex<Option<CliError>>> = Arc::new(Mutex::new(None));
    let set_fatal = {
        let fatal = Arc::clone(&fatal);
        move |e: CliError| {
            if let Ok(mut slot) = fatal.lock() {
                slot.get_or_insert(e);
            }
        }
    };
    let (refused_tx, refused_rx) = tokio::sync::oneshot::channel::<CliError>();
    let watcher: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>> = Arc::default();
    let starting = {
        let (set_fatal, watcher) = (set_fatal.clone(), Arc::clone(&watcher));
        async move {
            let sidecar = match FileSidecar::open(&path, options).await {
                Ok(s) => s,
                Err(e) => {
                    set_fatal(load_error(e));
                    return None;
                }
            };
            match sidecar.watch(DEFAULT_WATCH_INTERVAL) {
                Ok(w) => {
                    if let Ok(mut slot) = watcher.lock() {
                        *slot = Some(w);
                    }
                }
                Err(e) => {
                    set_fatal(CliError::internal(format!("cannot handle SIGHUP: {e}")));
                    return None;
                }
            }
            drop(early_hup);
            tracing::info!(
                profiles = sidecar.sidecar().profiles().len(),
                "profiles built; fetching first tokens"
            );
            // First tokens are fetched while the sidecar serves.
            let first = sidecar.clone();
            tokio::spawn(async move {
                let started = std::time::Instant::now();
                match first.prefetch().await {
                    Ok(report) => {
                        for (profile, cause) in &report.pending {
                            tracing::warn!(profile = %profile, cause = %cause, "prefetch failed; keeping on trying in the background");
                        }
                        tracing::info!(
                            profiles = report.kept,
                            pending = report.pending.len(),
                            elapsed_ms = started.elapsed().as_millis() as u64,
                            "start-up prefetch done"
                        );
                    }
                    Err(e) => {
                        let _ = refused_tx.send(load_error(e));
                    }
                }
            });
            Some(sidecar.sidecar().clone())
        }
    };
    let shutdown = async move {
        tokio::select! {
            () = signal => {}
            Ok(e) = refused_rx => set_fatal(e),
        }
    };
    tracing::info!(
        %addr,
        workers = config.connections.workers,
        "serving; building profiles"
    );
    crate::log::listening(addr);
    if let Some(a) = admin_addr {
        // Not on stdout: scripts read its first line only.
        tracing::info!(addr = %a, "admin listener: /healthz, /readyz, /metrics, /admin/keys");
    }
    // Built on its own task: a store that blocks while it opens does not
    // hold up the accept loop.
    let starting = tokio::spawn(starting);
    let built = async move { starting.await.ok().flatten() };
    let drained =
        token_serve::serve_with_admin(listener, admin, built, shutdown, config.limits()).await;
    if let Some(w) = watcher.lock().ok().and_then(|mut slot| slot.take()) {
        w.abort();
    }
    if drained != Drained::Complete {
        tracing::warn!("some requests were still in flight when the drain time ran out");
    }
    let fatal = fatal.lock().ok().and_then(|mut slot| slot.take());
    match fatal {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// `--check-config`: the whole file checked (every profile resolved, its
/// secrets and key files read; the `[serve]` table), nothing started.
fn check(path: &std::path::Path, args: &ServeArgs) -> Result<(), CliError> {
    let (file, config) = validate(path, args)?;
    crate::log::result(&format!(
        "{}: valid ({} profiles, {} routes)",
        path.display(),
        file.profiles().len(),
        config.routes.len()
    ));
    Ok(())
}

/// Every profile resolved (its secrets and key files read) and the
/// `[serve]` table checked, without opening a store or calling anyone.
fn validate(
    path: &std::path::Path,
    args: &ServeArgs,
) -> Result<(ProfilesFile, ServeConfig), CliError> {
    let file = ProfilesFile::load(path)?;
    let config = ServeConfig::parse(file.text())
        .and_then(|c| {
            c.check_token_endpoint_exposure(c.secret_file.is_some())
                .map(|()| c)
        })
        // The forward proxy's CA files: both there and matching, or both
        // absent (created at start).
        .and_then(|c| c.proxy.as_ref().map_or(Ok(()), |p| p.check()).map(|()| c))
        .map_err(|e| CliError::config(format!("the profile file {}: {e}", path.display())))?;
    let mut overlay = token_profile::ProfileSpec::default();
    overlay.key_file.clone_from(&args.locations.key_file);
    for (name, spec) in file.profiles() {
        let resolved = spec
            .clone()
            .overlay(overlay.clone())
            .resolve(Naming::FileKeys)
            .map_err(|e| e.in_profile(name))?;
        token_profile::check(&resolved).map_err(|e| e.in_profile(name))?;
    }
    if file.profiles().is_empty() {
        return Err(CliError::config(format!(
            "the profile file {} has no [profiles.NAME]: there is nothing to serve",
            path.display()
        )));
    }
    if let Some(missing) = config
        .profiles()
        .into_iter()
        .find(|p| !file.profiles().contains_key(p))
    {
        return Err(CliError::config(format!(
            "the profile file {} has no profile [profiles.{missing}], which [serve] uses",
            path.display()
        )));
    }
    Ok((file, config))
}

fn load_error(e: LoadError) -> CliError {
    match e {
        LoadError::Profile(e) => e.into(),
        LoadError::Refused {
            profile,
            token_url,
            error,
        } => {
            let err = error::from_engine(&error, &token_url);
            CliError::new(err.kind(), format!("profile `{profile}`: {err}"))
        }
        e => CliError::config(e.to_string()),
    }
}

fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, CliError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| CliError::internal(format!("cannot handle SIGTERM: {e}")))?;
    let mut int = signal(SignalKind::interrupt())
        .map_err(|e| CliError::internal(format!("cannot handle SIGINT: {e}")))?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM"),
            _ = int.recv() => tracing::info!("SIGINT"),
        }
    })
}
