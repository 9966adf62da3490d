//! `tokencache serve`: the sidecar (token-serve) on the profiles file.
//!
//! Every profile is built by token-profile, as `get --profile NAME` builds
//! it, and served by `/v1/token?profile=NAME`; the `[serve]` table adds the
//! listening address, the gateway's routes and the vendor-compatible
//! endpoints. Start-up stops with one sentence and an exit code at the
//! first bad setting; it then raises the open-file limit, binds, prints
//! `listening on http://ADDR` on stdout and serves at once (`/healthz`
//! answers, `/readyz` says 503) while every profile's first token is
//! fetched, `prefetch_concurrency` at a time, and kept warm. A profile the
//! IdP refuses then stops the sidecar with its exit code, as a bad setting
//! would. It serves until SIGTERM or SIGINT, when it drains requests in
//! flight (up to `[serve] drain_seconds`) and exits 0. SIGHUP, or a change
//! of the file, reloads it (token-serve's `FileSidecar`); `--check-config`
//! only checks it.

use token_profile::{Naming, ProfilesFile};
use token_serve::{
    Drained, FileOptions, FileSidecar, LoadError, PrometheusBuilder, ServeConfig,
    DEFAULT_WATCH_INTERVAL,
};

use crate::cli::ServeArgs;
use crate::error::{self, CliError, Kind};

/// Runs `serve`.
pub(crate) async fn run(args: ServeArgs) -> Result<(), CliError> {
    let path = token_profile::config_path(args.locations.config.as_deref())?;
    if args.check_config {
        return check(&path, &args);
    }
    let handle = PrometheusBuilder::new()
        .install_recorder()
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
    let sidecar = FileSidecar::open(&path, options)
        .await
        .map_err(load_error)?;
    match token_serve::raise_fd_limit() {
        Ok(limit) => tracing::debug!(?limit, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
    let listen = sidecar.listen().await;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| CliError::new(Kind::Listen, format!("cannot listen on {listen}: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| CliError::new(Kind::Listen, format!("cannot listen: {e}")))?;
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "listening on a non-loopback address, as [serve] listen says");
    }
    let watcher = sidecar
        .watch(DEFAULT_WATCH_INTERVAL)
        .map_err(|e| CliError::internal(format!("cannot handle SIGHUP: {e}")))?;

    let signal = shutdown_signal()?;
    // First tokens are fetched while the listener serves; a refusal stops
    // the sidecar with its exit code.
    tracing::info!(%addr, profiles = sidecar.sidecar().profiles().len(), "serving; fetching first tokens");
    let (fatal_tx, fatal_rx) = tokio::sync::oneshot::channel::<CliError>();
    let prefetch = {
        let sidecar = sidecar.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            match sidecar.prefetch().await {
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
                    let _ = fatal_tx.send(load_error(e));
                }
            }
        })
    };
    let fatal = std::sync::Arc::new(std::sync::Mutex::new(None));
    let shutdown = {
        let fatal = std::sync::Arc::clone(&fatal);
        async move {
            tokio::select! {
                () = signal => {}
                Ok(e) = fatal_rx => {
                    if let Ok(mut slot) = fatal.lock() {
                        *slot = Some(e);
                    }
                }
            }
        }
    };
    println!("listening on http://{addr}");
    let drained = token_serve::serve(
        sidecar.sidecar().clone(),
        listener,
        shutdown,
        sidecar.limits(),
    )
    .await;
    watcher.abort();
    prefetch.abort();
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
    let file = ProfilesFile::load(path)?;
    let config = ServeConfig::parse(file.text())
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
    println!(
        "{}: valid ({} profiles, {} routes)",
        path.display(),
        file.profiles().len(),
        config.routes.len()
    );
    Ok(())
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
