//! `--store`: which `CacheStore` to use, opening it, and its index of the
//! entries tokencache wrote (for `inspect` and `purge`).
//!
//! Stores keep tokens by cache key and cannot list them (Redis keys are
//! hashes of the cache key), so tokencache records the keys it writes, with
//! their non-secret description, in an index beside the data: a file
//! `tokencache-index.json` in the sled directory, a hash
//! `<prefix>tokencache:index` in Redis. sled can also list its keys
//! (`SledStore::keys`), so entries the index lacks are still listed and
//! purged there.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use token_core::{CacheKey, CacheStore, Keyring};
use token_memory::MemoryStore;
use token_redis::{RedisConfig, RedisStore};
use token_sled::{SledError, SledStore};

use crate::error::CliError;
use crate::key::{self, KeySource};
use crate::paths;

/// The environment variable holding the Redis password (never a flag).
pub(crate) const REDIS_PASSWORD_ENV: &str = "TOKENCACHE_REDIS_PASSWORD";

const INDEX_FILE: &str = "tokencache-index.json";
const INDEX_HASH: &str = "tokencache:index";
/// How long to wait for another tokencache process to close the sled store.
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// What `--store` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StoreSpec {
    /// Encrypted sled in this directory (default: the user's cache dir).
    Sled(Option<PathBuf>),
    /// In-process only: nothing survives the invocation.
    Memory,
    /// A Redis server, shared by every process using it.
    Redis(String),
}

impl StoreSpec {
    pub(crate) fn parse(text: &str) -> Result<Self, CliError> {
        match text {
            "memory" => Ok(Self::Memory),
            "sled" => Ok(Self::Sled(None)),
            _ if text.starts_with("sled:") => {
                let dir = &text["sled:".len()..];
                if dir.is_empty() {
                    return Err(CliError::config(
                        "--store sled: needs a directory after the colon",
                    ));
                }
                Ok(Self::Sled(Some(PathBuf::from(dir))))
            }
            _ if text.starts_with("redis://") || text.starts_with("rediss://") => {
                Ok(Self::Redis(text.to_owned()))
            }
            _ => Err(CliError::config(format!(
                "unknown store `{text}`: use sled, sled:DIR, memory or a redis:// URL"
            ))),
        }
    }

    /// The sled directory this spec means.
    pub(crate) fn sled_dir(&self) -> Result<Option<PathBuf>, CliError> {
        match self {
            Self::Sled(Some(dir)) => Ok(Some(dir.clone())),
            Self::Sled(None) => paths::cache_dir().map(Some),
            _ => Ok(None),
        }
    }
}

/// The non-secret description of one cached entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) key: String,
    pub(crate) client_id: String,
    pub(crate) token_url: String,
    pub(crate) scopes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) audience: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) resource: Option<String>,
}

/// An open store.
#[derive(Debug, Clone)]
pub(crate) enum Opened {
    Sled(SledStore),
    Memory(MemoryStore),
    Redis(RedisStore),
}

impl Opened {
    pub(crate) fn as_dyn(&self) -> Arc<dyn CacheStore> {
        match self {
            Self::Sled(s) => Arc::new(s.clone()),
            Self::Memory(s) => Arc::new(s.clone()),
            Self::Redis(s) => Arc::new(s.clone()),
        }
    }

    /// Reads the index. A damaged index file reads as empty (it is only a
    /// list of keys, the tokens are untouched), with a note.
    pub(crate) async fn index(&self) -> Result<BTreeMap<String, Entry>, CliError> {
        match self {
            Self::Memory(_) => Ok(BTreeMap::new()),
            Self::Sled(s) => {
                let path = s.path().join(INDEX_FILE);
                match std::fs::read(&path) {
                    Ok(bytes) => match serde_json::from_slice(&bytes) {
                        Ok(map) => Ok(map),
                        Err(_) => {
                            eprintln!(
                                "tokencache: the index {} is damaged; starting a new one (cached \
                                 tokens are kept, but inspect lists only those used from now on)",
                                path.display()
                            );
                            Ok(BTreeMap::new())
                        }
                    },
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
                    Err(e) => Err(CliError::store(format!(
                        "cannot read the index {}: {e}",
                        path.display()
                    ))),
                }
            }
            Self::Redis(s) => {
                let mut conn = s.connection();
                let map: BTreeMap<String, String> = token_redis::redis::cmd("HGETALL")
                    .arg(index_hash(s))
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| redis_error(&e))?;
                Ok(map
                    .into_iter()
                    .filter_map(|(k, v)| serde_json::from_str(&v).ok().map(|e| (k, e)))
                    .collect())
            }
        }
    }

    /// The index, plus the entries the store holds that the index does not
    /// know (written by another program, or before the index was lost),
    /// described as unknown. Only sled can list its keys.
    pub(crate) async fn entries(&self) -> Result<BTreeMap<String, Entry>, CliError> {
        let mut map = self.index().await?;
        if let Self::Sled(s) = self {
            let keys = s
                .keys()
                .map_err(|e| CliError::store(format!("cannot list the token store: {e}")))?;
            for key in keys {
                map.entry(key.as_str().to_owned()).or_insert_with(|| Entry {
                    key: key.as_str().to_owned(),
                    client_id: "(unknown: not cached by tokencache)".to_owned(),
                    token_url: "-".to_owned(),
                    scopes: Vec::new(),
                    audience: None,
                    resource: None,
                });
            }
        }
        Ok(map)
    }

    /// Records `entry` in the index.
    pub(crate) async fn record(&self, entry: &Entry) -> Result<(), CliError> {
        match self {
            Self::Memory(_) => Ok(()),
            Self::Sled(s) => {
                let mut map = self.index().await?;
                if map.get(&entry.key) == Some(entry) {
                    return Ok(());
                }
                map.insert(entry.key.clone(), entry.clone());
                write_index(s.path(), &map)
            }
            Self::Redis(s) => {
                let json = serde_json::to_string(entry).map_err(|e| {
                    CliError::internal(format!("cannot encode an index entry: {e}"))
                })?;
                let mut conn = s.connection();
                token_redis::redis::cmd("HSET")
                    .arg(index_hash(s))
                    .arg(&entry.key)
                    .arg(json)
                    .query_async::<()>(&mut conn)
                    .await
                    .map_err(|e| redis_error(&e))
            }
        }
    }

    /// Removes `keys` from the store and the index.
    pub(crate) async fn purge(&self, keys: &[String]) -> Result<(), CliError> {
        let store = self.as_dyn();
        for key in keys {
            store
                .remove(&CacheKey::from_raw(key.clone()))
                .await
                .map_err(|e| CliError::store(format!("cannot remove {key}: {e}")))?;
        }
        match self {
            Self::Memory(_) => Ok(()),
            Self::Sled(s) => {
                let mut map = self.index().await?;
                for key in keys {
                    map.remove(key);
                }
                write_index(s.path(), &map)
            }
            Self::Redis(s) => {
                if keys.is_empty() {
                    return Ok(());
                }
                let mut conn = s.connection();
                token_redis::redis::cmd("HDEL")
                    .arg(index_hash(s))
                    .arg(keys)
                    .query_async::<()>(&mut conn)
                    .await
                    .map_err(|e| redis_error(&e))
            }
        }
    }

    /// The size in bytes of what is stored for `key` (encrypted), if any.
    pub(crate) async fn stored_size(&self, key: &CacheKey) -> Result<Option<usize>, CliError> {
        match self {
            Self::Memory(_) => Ok(None),
            Self::Sled(s) => s
                .read_envelope(key)
                .map(|v| v.map(|v| v.len()))
                .map_err(|e| CliError::store(e.to_string())),
            Self::Redis(s) => {
                let mut conn = s.connection();
                let len: usize = token_redis::redis::cmd("STRLEN")
                    .arg(s.token_key(key))
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| redis_error(&e))?;
                Ok((len > 0).then_some(len))
            }
        }
    }
}

fn index_hash(s: &RedisStore) -> String {
    format!("{}{INDEX_HASH}", s.key_prefix())
}

fn redis_error(e: &token_redis::redis::RedisError) -> CliError {
    CliError::store(format!("Redis failed: {e}"))
}

fn write_index(dir: &Path, map: &BTreeMap<String, Entry>) -> Result<(), CliError> {
    let path = dir.join(INDEX_FILE);
    let tmp = dir.join(format!("{INDEX_FILE}.tmp"));
    let failed = |e: std::io::Error| {
        CliError::store(format!("cannot write the index {}: {e}", path.display()))
    };
    let json = serde_json::to_vec_pretty(map)
        .map_err(|e| CliError::internal(format!("cannot encode the index: {e}")))?;
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(failed)?;
    f.write_all(&json)
        .and_then(|()| f.sync_all())
        .map_err(failed)?;
    std::fs::rename(&tmp, &path).map_err(failed)
}

/// True when `dir` holds a sled store that has been written to.
pub(crate) fn sled_has_data(dir: &Path) -> bool {
    dir.join("sled").exists()
}

/// Opens the store `spec` names, loading (or creating) the encryption key
/// when it needs one. Waits up to [`LOCK_WAIT`] for another tokencache
/// process that has the sled store open.
pub(crate) async fn open(spec: &StoreSpec, key_file: Option<&Path>) -> Result<Opened, CliError> {
    match spec {
        StoreSpec::Memory => Ok(Opened::Memory(MemoryStore::default())),
        StoreSpec::Sled(_) => {
            let dir = spec
                .sled_dir()?
                .ok_or_else(|| CliError::internal("a sled store has a directory"))?;
            let (keyring, source) = key::load(key_file, sled_has_data(&dir))?;
            open_sled(&dir, keyring, &source).await.map(Opened::Sled)
        }
        StoreSpec::Redis(url) => {
            let (keyring, _) = key::load(key_file, false)?;
            open_redis(url, None, keyring).await.map(Opened::Redis)
        }
    }
}

/// Opens a Redis store; `prefix` overrides the default key prefix.
pub(crate) async fn open_redis(
    url: &str,
    prefix: Option<&str>,
    keyring: Keyring,
) -> Result<RedisStore, CliError> {
    let mut config = RedisConfig::new(url).with_encryption(keyring);
    if let Some(p) = prefix {
        config = config.with_key_prefix(p);
    }
    if let Some(pw) = std::env::var_os(REDIS_PASSWORD_ENV) {
        let pw = pw
            .into_string()
            .map_err(|_| CliError::config(format!("{REDIS_PASSWORD_ENV} is not valid Unicode")))?;
        config = config.with_password(pw);
    }
    RedisStore::connect(config)
        .await
        .map_err(|e| CliError::store(format!("cannot use the Redis store: {e}")))
}

/// Opens the sled store at `dir`, reporting a quarantined (damaged)
/// database on stderr.
pub(crate) async fn open_sled(
    dir: &Path,
    keyring: Keyring,
    source: &KeySource,
) -> Result<SledStore, CliError> {
    let keyring = Arc::new(keyring);
    let started = Instant::now();
    let store = loop {
        match SledStore::open(dir, Arc::clone(&keyring)).await {
            Ok(store) => break store,
            Err(SledError::Locked { .. }) if started.elapsed() < LOCK_WAIT => {
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            Err(SledError::WrongKey { sealed_with, .. }) => {
                return Err(CliError::key(format!(
                    "wrong store key: the token store {} was written with key {sealed_with}, not \
                     the key from {source} ({}); use the right key, or start afresh with \
                     `tokencache purge --all --force`",
                    dir.display(),
                    keyring.current_key_id()
                )))
            }
            Err(e @ (SledError::Sled { .. } | SledError::Io { .. })) => {
                return Err(CliError::store(format!(
                    "cannot open the token store {} (damaged or unreadable): {e}; start afresh \
                     with `tokencache purge --all --force`",
                    dir.display()
                )))
            }
            Err(e) => return Err(CliError::store(format!("cannot open the token store: {e}"))),
        }
    };
    if let Some(q) = store.quarantine() {
        eprintln!("tokencache: warning: {q}");
    }
    Ok(store)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_store_specs() {
        assert_eq!(StoreSpec::parse("memory").ok(), Some(StoreSpec::Memory));
        assert_eq!(StoreSpec::parse("sled").ok(), Some(StoreSpec::Sled(None)));
        assert_eq!(
            StoreSpec::parse("sled:/tmp/x").ok(),
            Some(StoreSpec::Sled(Some("/tmp/x".into())))
        );
        assert!(matches!(
            StoreSpec::parse("redis://127.0.0.1:6379"),
            Ok(StoreSpec::Redis(_))
        ));
        assert!(StoreSpec::parse("sled:").is_err());
        assert!(StoreSpec::parse("postgres://x").is_err());
    }
}
