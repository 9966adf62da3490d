//! `--issuer`: the token endpoint discovered from the issuer's metadata
//! (OIDC, then RFC 8414), cached beside the tokens so that a cached `get`
//! makes no network request at all.
//!
//! The endpoint is not secret: it is kept in clear, in
//! `tokencache-endpoints.json` in the sled directory or in the hash
//! `<prefix>tokencache:endpoints` in Redis, for [`MAX_AGE`]. An older entry
//! is discovered again; when that fails transiently the older entry is used
//! with a warning. A token endpoint that turns out not to be one (a 404)
//! drops its entry, so the next `get` discovers afresh.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use token_http::ServerMetadata;
use token_redis::RedisStore;

use crate::error::{Error, ErrorKind};
use crate::store::OpenedStore;

/// How long a discovered endpoint is used before it is discovered again.
/// Token endpoints move rarely; a day bounds how long a moved one is missed.
pub(crate) const MAX_AGE: Duration = Duration::from_secs(24 * 3600);

const FILE: &str = "tokencache-endpoints.json";
const HASH: &str = "tokencache:endpoints";

/// One cached discovery.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Cached {
    token_endpoint: String,
    /// Seconds since the Unix epoch.
    discovered_at: u64,
}

/// Where a profile's token endpoint came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EndpointSource {
    /// Given (`token_url`).
    Given,
    /// Discovered just now.
    Discovered,
    /// From the discovery cache.
    Cached,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The token endpoint of `issuer`: from the cache when it is younger than
/// [`MAX_AGE`], else discovered (and cached).
pub(crate) async fn token_endpoint(
    opened: &OpenedStore,
    issuer: &str,
) -> Result<(String, EndpointSource), Error> {
    let cached = read(opened, issuer).await;
    if let Some(c) = &cached {
        let age = now_secs().saturating_sub(c.discovered_at);
        if age < MAX_AGE.as_secs() {
            tracing::debug!(issuer, token_endpoint = %c.token_endpoint, age_s = age, "cached token endpoint");
            return Ok((c.token_endpoint.clone(), EndpointSource::Cached));
        }
    }
    tracing::info!(issuer, "fetching the issuer's metadata");
    match ServerMetadata::discover(issuer).await {
        Ok(metadata) => {
            let endpoint = metadata.token_endpoint().to_owned();
            tracing::info!(issuer, token_endpoint = %endpoint, "found the token endpoint");
            let entry = Cached {
                token_endpoint: endpoint.clone(),
                discovered_at: now_secs(),
            };
            if let Err(e) = write(opened, issuer, Some(&entry)).await {
                crate::error::notices().warning(format_args!(
                    "the discovered token endpoint could not be cached ({e}); the next get \
                     discovers it again"
                ));
            }
            Ok((endpoint, EndpointSource::Discovered))
        }
        Err(e) => match cached {
            Some(c) if is_transient(&e) => {
                crate::error::notices().warning(format_args!(
                    "discovery at {issuer} failed ({e}); using the token endpoint discovered \
                     earlier, {}",
                    c.token_endpoint
                ));
                Ok((c.token_endpoint, EndpointSource::Cached))
            }
            // `e` names the issuer.
            _ if is_transient(&e) => Err(Error::new(ErrorKind::IdpUnavailable, e.to_string())),
            _ => Err(Error::config(e.to_string())),
        },
    }
}

/// Whether a discovery failure may pass: the metadata could not be had
/// (network, server), as opposed to an issuer that is not a URL.
fn is_transient(e: &token_http::ConfigError) -> bool {
    matches!(e, token_http::ConfigError::Discovery { .. })
}

/// The cached, still young token endpoint of `issuer` in the sled store
/// directory `dir`, read without opening the store (the warm path).
pub(crate) fn cached_in_dir(dir: &Path, issuer: &str) -> Option<String> {
    let c = read_file(dir).remove(issuer)?;
    let age = now_secs().saturating_sub(c.discovered_at);
    if age >= MAX_AGE.as_secs() {
        return None;
    }
    tracing::debug!(issuer, token_endpoint = %c.token_endpoint, age_s = age, "cached token endpoint");
    Some(c.token_endpoint)
}

/// Drops the cached endpoint of `issuer` (it turned out wrong).
pub(crate) async fn forget(opened: &OpenedStore, issuer: &str) {
    if let Err(e) = write(opened, issuer, None).await {
        tracing::warn!(issuer, error = %e, "cannot drop the cached token endpoint");
    }
}

/// Drops every cached endpoint (`purge --all`).
pub async fn forget_all(opened: &OpenedStore) -> Result<(), Error> {
    match opened {
        OpenedStore::Memory(_) => Ok(()),
        OpenedStore::Sled(s) => match std::fs::remove_file(s.path().join(FILE)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::store(format!(
                "cannot remove {}: {e}",
                s.path().join(FILE).display()
            ))),
            _ => Ok(()),
        },
        OpenedStore::Redis(s) => {
            let mut conn = s.connection();
            token_redis::redis::cmd("DEL")
                .arg(hash(s))
                .query_async::<()>(&mut conn)
                .await
                .map_err(|e| Error::store(format!("Redis failed: {e}")))
        }
    }
}

fn hash(s: &RedisStore) -> String {
    format!("{}{HASH}", s.key_prefix())
}

/// The cached entry, if any; an unreadable cache reads as empty (it only
/// saves a request).
async fn read(opened: &OpenedStore, issuer: &str) -> Option<Cached> {
    match opened {
        OpenedStore::Memory(_) => None,
        OpenedStore::Sled(s) => read_file(s.path()).remove(issuer),
        OpenedStore::Redis(s) => {
            let mut conn = s.connection();
            let json: Option<String> = token_redis::redis::cmd("HGET")
                .arg(hash(s))
                .arg(issuer)
                .query_async(&mut conn)
                .await
                .ok()?;
            serde_json::from_str(&json?).ok()
        }
    }
}

fn read_file(dir: &Path) -> BTreeMap<String, Cached> {
    std::fs::read(dir.join(FILE))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

/// Sets (`Some`) or removes (`None`) the entry of `issuer`.
async fn write(opened: &OpenedStore, issuer: &str, entry: Option<&Cached>) -> Result<(), Error> {
    match opened {
        OpenedStore::Memory(_) => Ok(()),
        OpenedStore::Sled(s) => {
            let dir = s.path();
            let mut map = read_file(dir);
            match entry {
                Some(e) => map.insert(issuer.to_owned(), e.clone()),
                None => map.remove(issuer),
            };
            let json = serde_json::to_vec_pretty(&map)
                .map_err(|e| Error::internal(format!("cannot encode JSON: {e}")))?;
            crate::store::write_private(&dir.join(FILE), &json)
                .map_err(|e| Error::store(format!("cannot write {e}")))
        }
        OpenedStore::Redis(s) => {
            let mut conn = s.connection();
            let cmd = match entry {
                Some(e) => {
                    let json = serde_json::to_string(e)
                        .map_err(|e| Error::internal(format!("cannot encode JSON: {e}")))?;
                    let mut c = token_redis::redis::cmd("HSET");
                    c.arg(hash(s)).arg(issuer).arg(json);
                    c
                }
                None => {
                    let mut c = token_redis::redis::cmd("HDEL");
                    c.arg(hash(s)).arg(issuer);
                    c
                }
            };
            cmd.query_async::<()>(&mut conn)
                .await
                .map_err(|e| Error::store(format!("Redis failed: {e}")))
        }
    }
}
