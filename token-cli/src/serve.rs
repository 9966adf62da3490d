//! `tokencache serve`: the sidecar (token-serve) on the profiles of `get`.
//!
//! Every profile in the file is loaded exactly as `get --profile NAME` would
//! load it (same settings, credential and store code), and served by
//! `/v1/token?profile=NAME`; the `[serve]` table adds the listening address,
//! the gateway's routes and the vendor-compatible endpoints. Start-up stops
//! with one sentence and an exit code at the first bad setting; it then
//! binds, prefetches every token, keeps them warm, prints
//! `listening on http://ADDR` on stdout, and serves until SIGTERM or SIGINT,
//! when it drains requests in flight (up to `[serve] drain_seconds`) and
//! exits 0.

use std::ffi::OsString;
use std::path::Path;

use token_core::{Secret, TokenCache};
use token_serve::{Drained, PrometheusBuilder, ServeConfig, Sidecar};
use zeroize::Zeroizing;

use clap::Parser as _;

use crate::cli::{Cli, Command, GetArgs, ServeArgs};
use crate::config;
use crate::error::{self, CliError, Kind};
use crate::get;
use crate::store::Entry;

/// A `get` invocation of just `--profile NAME` (and the file locations),
/// parsed as the command line would be, so `serve` loads each profile
/// exactly as `get --profile NAME` does.
fn profile_args(name: &str, path: &Path, key_file: Option<&Path>) -> Result<GetArgs, CliError> {
    let mut argv: Vec<OsString> = vec![
        "tokencache".into(),
        "get".into(),
        "--profile".into(),
        name.into(),
        "--config".into(),
        path.into(),
    ];
    if let Some(k) = key_file {
        argv.push("--key-file".into());
        argv.push(k.into());
    }
    match Cli::try_parse_from(argv) {
        Ok(Cli {
            command: Command::Get(args),
            ..
        }) => Ok(*args),
        Ok(_) => Err(CliError::internal(
            "`get --profile` parsed as another command",
        )),
        Err(e) => Err(CliError::config(format!("profile `{name}`: {e}"))),
    }
}

fn read_secret(path: &Path) -> Result<Secret, CliError> {
    let text = std::fs::read_to_string(path)
        .map(Zeroizing::new)
        .map_err(|e| {
            CliError::config(format!(
                "cannot read [serve] secret_file {}: {e}",
                path.display()
            ))
        })?;
    let trimmed = text.trim_end_matches(['\r', '\n']);
    if trimmed.is_empty() {
        return Err(CliError::config(format!(
            "[serve] secret_file {} is empty",
            path.display()
        )));
    }
    Ok(Secret::new(trimmed))
}

/// Runs `serve`.
pub(crate) async fn run(args: ServeArgs) -> Result<(), CliError> {
    let path = config::config_path(args.locations.config.as_deref())?;
    let text = std::fs::read_to_string(&path).map_err(|e| {
        CliError::config(format!(
            "cannot read the profile file {}: {e}",
            path.display()
        ))
    })?;
    let serve = ServeConfig::parse(&text)
        .map_err(|e| CliError::config(format!("the profile file {}: {e}", path.display())))?;
    let names = config::profile_names(&path)?;
    if let Some(missing) = serve.profiles().into_iter().find(|p| !names.contains(p)) {
        return Err(CliError::config(format!(
            "the profile file {} has no profile [profiles.{missing}], which [serve] uses (it has: {})",
            path.display(),
            if names.is_empty() { "none".to_owned() } else { names.join(", ") }
        )));
    }
    if names.is_empty() {
        return Err(CliError::config(format!(
            "the profile file {} has no [profiles.NAME]: there is nothing to serve",
            path.display()
        )));
    }

    // Profiles -> credentials and stores, as `get` makes them; each
    // distinct store is opened once (sled allows one opener per process).
    let mut stores = Vec::new();
    let mut profiles = Vec::with_capacity(names.len());
    for name in &names {
        let mut s = get::settings(profile_args(
            name,
            &path,
            args.locations.key_file.as_deref(),
        )?)
        .map_err(|e| CliError::new(e.kind(), format!("profile `{name}`: {e}")))?;
        let get::Built {
            credential,
            token_url,
            store: opened,
            ..
        } = get::credential_and_store(&mut s, &mut stores)
            .await
            .map_err(|e| CliError::new(e.kind(), format!("profile `{name}`: {e}")))?;
        let request = get::token_request(&s);
        let cache = TokenCache::builder_arc(credential)
            .store_arc(opened.as_dyn())
            .build();
        let entry = Entry {
            key: cache.cache_key(&request).as_str().to_owned(),
            client_id: s.client_id.clone(),
            token_url: token_url.clone(),
            scopes: request.scopes().to_vec(),
            audience: s.audience.clone(),
            resource: s.resource.clone(),
        };
        profiles.push((name.clone(), cache, request, opened, entry, token_url));
    }

    let mut builder = Sidecar::builder(serve.clone());
    for (name, cache, request, ..) in &profiles {
        builder = builder.profile(name.clone(), cache, request);
    }
    if let Some(file) = &serve.secret_file {
        builder = builder.secret(read_secret(file)?);
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
    let sidecar = builder
        .metrics(handle)
        .build()
        .map_err(|e| CliError::config(format!("the profile file {}: {e}", path.display())))?;

    let listener = tokio::net::TcpListener::bind(serve.listen)
        .await
        .map_err(|e| {
            CliError::new(
                Kind::Listen,
                format!("cannot listen on {}: {e}", serve.listen),
            )
        })?;
    let addr = listener
        .local_addr()
        .map_err(|e| CliError::new(Kind::Listen, format!("cannot listen: {e}")))?;
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "listening on a non-loopback address, as [serve] listen says");
    }

    // Prefetch: a profile the IdP refuses is a configuration error; one
    // the IdP cannot serve right now is retried by keep-warm.
    for (name, result) in sidecar.prefetch().await {
        if let Err(e) = result {
            let (_, _, _, _, _, token_url) = profiles
                .iter()
                .find(|p| p.0 == name)
                .ok_or_else(|| CliError::internal("a prefetched profile is configured"))?;
            let err = error::from_engine(&e, token_url);
            if e.is_transient() {
                tracing::warn!(profile = %name, cause = %err, "prefetch failed; keeping on trying in the background");
            } else {
                return Err(CliError::new(
                    err.kind(),
                    format!("profile `{name}`: {err}"),
                ));
            }
        }
    }
    for (_, _, _, opened, entry, _) in &profiles {
        if let Err(e) = opened.record(entry).await {
            tracing::warn!(error = %e, "could not record the entry in the store's index (inspect will not list it)");
        }
    }
    let _warm = sidecar
        .keep_warm()
        .map_err(|e| CliError::internal(format!("cannot keep tokens warm: {e}")))?;

    let shutdown = shutdown_signal()?;
    tracing::info!(%addr, profiles = names.len(), routes = serve.routes.len(), "serving");
    println!("listening on http://{addr}");
    match token_serve::serve(sidecar, listener, shutdown, serve.drain).await {
        Drained::Complete => {}
        _ => tracing::warn!("some requests were still in flight when the drain time ran out"),
    }
    Ok(())
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
