//! `tokencache inspect` and `tokencache purge`.

use std::path::Path;
use std::time::SystemTime;

use token_core::CacheKey;

use crate::cli::{InspectArgs, PurgeArgs};
use crate::error::CliError;
use crate::time::rfc3339;
use token_profile::{OpenedStore as Opened, StoreSpec};

fn spec(store: Option<&str>) -> Result<StoreSpec, CliError> {
    let spec = match store {
        Some(s) => StoreSpec::parse(s)?,
        None => StoreSpec::Sled(None),
    };
    if spec == StoreSpec::Memory {
        return Err(CliError::config(
            "the memory store keeps nothing between invocations: inspect and purge need sled or redis",
        ));
    }
    Ok(spec)
}

/// Opens a store for inspect/purge; a sled store that does not exist yet is
/// `None` (nothing cached), and is not created.
async fn open_existing(
    spec: &StoreSpec,
    key_file: Option<&Path>,
) -> Result<Option<Opened>, CliError> {
    if let Some(dir) = spec.sled_dir()? {
        if !token_profile::sled_has_data(&dir) {
            return Ok(None);
        }
    }
    let (opened, _) = token_profile::open_store(spec, key_file).await?;
    Ok(Some(opened))
}

/// The short id `inspect` prints for `key` and `purge` accepts: the first
/// 12 hex digits of its SHA-256 (keys hold `|`, `;` and spaces, awkward to
/// type or quote).
pub(crate) fn short_id(key: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    digest.as_ref()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The shortest prefix of a short id `purge` accepts.
const MIN_ID_PREFIX: usize = 4;

/// `n` entry or entries.
fn entries(n: usize) -> String {
    if n == 1 {
        "1 entry".to_owned()
    } else {
        format!("{n} entries")
    }
}

/// One listed entry: never the token.
#[derive(serde::Serialize)]
struct Row {
    id: String,
    key: String,
    client_id: String,
    token_url: String,
    scopes: Vec<String>,
    state: &'static str,
    expires_at: Option<String>,
    refresh_at: Option<String>,
    size: Option<usize>,
}

/// Runs `inspect`.
pub(crate) async fn inspect(args: InspectArgs) -> Result<(), CliError> {
    let spec = spec(args.store.as_deref())?;
    let rows = match open_existing(&spec, args.locations.key_file.as_deref()).await? {
        None => Vec::new(),
        Some(opened) => rows(&opened).await?,
    };
    if args.json {
        let text = serde_json::to_string_pretty(&rows)
            .map_err(|e| CliError::internal(format!("cannot encode JSON: {e}")))?;
        println!("{text}");
        return Ok(());
    }
    if rows.is_empty() {
        println!("no cached entries");
        return Ok(());
    }
    for row in &rows {
        println!("{}", row.id);
        println!("  key         {}", row.key);
        println!("  client      {} at {}", row.client_id, row.token_url);
        println!(
            "  scopes      {}",
            if row.scopes.is_empty() {
                "-".to_owned()
            } else {
                row.scopes.join(" ")
            }
        );
        println!("  state       {}", row.state);
        println!("  expires_at  {}", row.expires_at.as_deref().unwrap_or("-"));
        println!("  refresh_at  {}", row.refresh_at.as_deref().unwrap_or("-"));
        println!(
            "  size        {}",
            row.size
                .map_or_else(|| "-".to_owned(), |s| format!("{s} bytes (encrypted)"))
        );
    }
    Ok(())
}

async fn rows(opened: &Opened) -> Result<Vec<Row>, CliError> {
    let index = opened.entries().await?;
    let store = opened.as_dyn();
    let now = SystemTime::now();
    let mut rows = Vec::new();
    let mut gone = Vec::new();
    for (key, entry) in index {
        let cache_key = CacheKey::from_raw(key.clone());
        let token = store
            .get(&cache_key)
            .await
            .map_err(|e| CliError::store(format!("cannot read the store: {e}")))?;
        let size = opened.stored_size(&cache_key).await?;
        let state = match (&token, size) {
            (None, None) => {
                gone.push(key.clone());
                continue;
            }
            (None, Some(_)) => "unreadable (damaged, expired, or another key)",
            (Some(t), _) if t.refresh_at().is_some_and(|at| now >= at) => "refresh due",
            (Some(_), _) => "fresh",
        };
        rows.push(Row {
            id: short_id(&key),
            key,
            client_id: entry.client_id,
            token_url: entry.token_url,
            scopes: entry.scopes,
            state,
            expires_at: token.as_ref().and_then(|t| t.expires_at()).map(rfc3339),
            refresh_at: token.as_ref().and_then(|t| t.refresh_at()).map(rfc3339),
            size,
        });
    }
    // Entries the store expired and swept: drop them from the index.
    if !gone.is_empty() {
        opened.purge(&gone).await?;
    }
    Ok(rows)
}

/// Runs `purge`.
pub(crate) async fn purge(args: PurgeArgs) -> Result<(), CliError> {
    let spec = spec(args.store.as_deref())?;
    if !args.all && args.keys.is_empty() && args.client_id.is_none() {
        return Err(CliError::usage(
            "say what to purge: entry ids or keys (as inspect prints them), --client-id ID, or \
             --all",
        ));
    }
    if args.force {
        if let Some(dir) = spec.sled_dir()? {
            return remove_sled_dir(&dir);
        }
    }
    let Some(opened) = open_existing(&spec, args.locations.key_file.as_deref()).await? else {
        println!("removed 0 entries (the store is empty)");
        return Ok(());
    };
    let index = opened.entries().await?;
    let mut keys: Vec<String> = if args.all {
        index.keys().cloned().collect()
    } else {
        let mut keys = Vec::new();
        for wanted in &args.keys {
            match resolve(&index, wanted)? {
                Some(key) => keys.push(key),
                // Already gone is what purge wants: not an error.
                None => crate::log::note(format_args!(
                    "no cached entry has the id or key {wanted}; nothing to remove for it"
                )),
            }
        }
        if let Some(client) = &args.client_id {
            keys.extend(
                index
                    .values()
                    .filter(|e| &e.client_id == client)
                    .map(|e| e.key.clone()),
            );
        }
        keys
    };
    keys.sort();
    keys.dedup();
    opened.purge(&keys).await?;
    if args.all {
        token_profile::forget_discovered_endpoints(&opened).await?;
        if let Opened::Sled(s) = &opened {
            token_profile::remove_warm_files(s.path())
                .map_err(|e| CliError::store(format!("cannot remove the warm files: {e}")))?;
        }
    }
    println!("removed {}", entries(keys.len()));
    Ok(())
}

/// The cache key `wanted` names: a full key, a short id, or a prefix of
/// one (at least [`MIN_ID_PREFIX`] digits) that only one entry has.
fn resolve(
    index: &std::collections::BTreeMap<String, token_profile::IndexEntry>,
    wanted: &str,
) -> Result<Option<String>, CliError> {
    if index.contains_key(wanted) {
        return Ok(Some(wanted.to_owned()));
    }
    let is_id = wanted.len() >= MIN_ID_PREFIX
        && wanted.len() <= 12
        && wanted.bytes().all(|b| b.is_ascii_hexdigit());
    if !is_id {
        return Ok(None);
    }
    let wanted_lower = wanted.to_ascii_lowercase();
    let matching: Vec<&String> = index
        .keys()
        .filter(|k| short_id(k).starts_with(&wanted_lower))
        .collect();
    match matching.as_slice() {
        [] => Ok(None),
        [key] => Ok(Some((*key).clone())),
        many => Err(CliError::usage(format!(
            "the id {wanted} matches {}; give more of it (see `tokencache inspect`)",
            entries(many.len())
        ))),
    }
}

fn remove_sled_dir(dir: &Path) -> Result<(), CliError> {
    if !dir.exists() {
        println!("removed nothing ({} does not exist)", dir.display());
        return Ok(());
    }
    if let Some(pid) = token_profile::held_by_serve(dir) {
        return Err(CliError::store(format!(
            "the token store {} is in use by `tokencache serve` (pid {pid}); refusing to delete \
             it under a running sidecar: stop it first, or purge through its admin API (POST \
             /admin/keys/PROFILE/purge on [serve] admin_listen)",
            dir.display()
        )));
    }
    // Only ever delete a directory that is a token-sled store.
    if !dir.join("token-sled.format").exists() && !token_profile::sled_has_data(dir) {
        return Err(CliError::config(format!(
            "{} is not a tokencache store; refusing to delete it",
            dir.display()
        )));
    }
    std::fs::remove_dir_all(dir).map_err(|e| {
        CliError::store(format!(
            "cannot delete the token store {}: {e}",
            dir.display()
        ))
    })?;
    println!("deleted the token store {}", dir.display());
    Ok(())
}
