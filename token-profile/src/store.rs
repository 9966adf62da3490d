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

use crate::error::Error;
use crate::fingerprint::FingerprintKey;
use crate::key::{self, KeySource};
use crate::paths;

/// The environment variable holding the Redis password (never a flag).
pub const REDIS_PASSWORD_ENV: &str = "TOKENCACHE_REDIS_PASSWORD";

const INDEX_FILE: &str = "tokencache-index.json";
const INDEX_HASH: &str = "tokencache:index";
/// How long to wait for another tokencache process to close the sled store.
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// What `--store` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSpec {
    /// Encrypted sled in this directory (default: the user's cache dir).
    Sled(Option<PathBuf>),
    /// In-process only: nothing survives the invocation.
    Memory,
    /// A Redis server, shared by every process using it.
    Redis(String),
}

impl StoreSpec {
    /// Parses a `store` setting: `sled`, `sled:DIR`, `memory` or a
    /// `redis://` / `rediss://` URL.
    pub fn parse(text: &str) -> Result<Self, Error> {
        match text {
            "memory" => Ok(Self::Memory),
            "sled" => Ok(Self::Sled(None)),
            _ if text.starts_with("sled:") => {
                let dir = &text["sled:".len()..];
                if dir.is_empty() {
                    return Err(Error::config(
                        "--store sled: needs a directory after the colon",
                    ));
                }
                Ok(Self::Sled(Some(PathBuf::from(dir))))
            }
            _ if text.starts_with("redis://") || text.starts_with("rediss://") => {
                Ok(Self::Redis(text.to_owned()))
            }
            _ => Err(Error::config(format!(
                "unknown store `{text}`: use sled, sled:DIR, memory or a redis:// URL"
            ))),
        }
    }

    /// The sled directory this spec means.
    pub fn sled_dir(&self) -> Result<Option<PathBuf>, Error> {
        match self {
            Self::Sled(Some(dir)) => Ok(Some(dir.clone())),
            Self::Sled(None) => paths::cache_dir().map(Some),
            _ => Ok(None),
        }
    }
}

/// The non-secret description of one cached entry, as the store's index
/// keeps it for `inspect` and `purge`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct IndexEntry {
    /// The cache key.
    pub key: String,
    /// The client id (or managed identity) it was obtained with.
    pub client_id: String,
    /// The token endpoint.
    pub token_url: String,
    /// The scopes asked for.
    pub scopes: Vec<String>,
    /// The audience asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// The resource asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
}

/// An open store.
#[derive(Debug, Clone)]
pub enum OpenedStore {
    /// Encrypted sled.
    Sled(SledStore),
    /// In-process memory.
    Memory(MemoryStore),
    /// Redis (encrypted).
    Redis(RedisStore),
}

impl OpenedStore {
    /// The store as the engine takes it.
    pub fn as_dyn(&self) -> Arc<dyn CacheStore> {
        match self {
            Self::Sled(s) => Arc::new(s.clone()),
            Self::Memory(s) => Arc::new(s.clone()),
            Self::Redis(s) => Arc::new(s.clone()),
        }
    }

    /// Why the store cannot be used right now, if it cannot: a Redis store
    /// that has not reached its server yet (down at start-up; connecting
    /// in the background), or whose circuit breaker is open after repeated
    /// failures. The engine then serves from memory and the IdP: degraded,
    /// not down.
    pub fn unavailable(&self) -> Option<String> {
        match self {
            Self::Redis(s) if !s.is_connected() => Some(
                "the Redis store is unreachable; connecting in the background (tokens come from \
                 memory and the IdP meanwhile)"
                    .to_owned(),
            ),
            Self::Redis(s) if s.circuit_open() => Some(
                "the Redis store is failing (its circuit breaker is open after repeated errors or \
                 timeouts); tokens come from memory and the IdP until it answers again"
                    .to_owned(),
            ),
            _ => None,
        }
    }

    /// Reads the index. A damaged index file reads as empty (it is only a
    /// list of keys, the tokens are untouched), with a note.
    pub async fn index(&self) -> Result<BTreeMap<String, IndexEntry>, Error> {
        match self {
            Self::Memory(_) => Ok(BTreeMap::new()),
            Self::Sled(s) => {
                let path = s.path().join(INDEX_FILE);
                match std::fs::read(&path) {
                    Ok(bytes) => match serde_json::from_slice(&bytes) {
                        Ok(map) => Ok(map),
                        Err(_) => {
                            crate::error::notices().warning(format_args!(
                                "the index {} is damaged; starting a new one (cached tokens are \
                                 kept, but inspect lists only those used from now on)",
                                path.display()
                            ));
                            Ok(BTreeMap::new())
                        }
                    },
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
                    Err(e) => Err(Error::store(format!(
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
    pub async fn entries(&self) -> Result<BTreeMap<String, IndexEntry>, Error> {
        let mut map = self.index().await?;
        if let Self::Sled(s) = self {
            let keys = s
                .keys()
                .map_err(|e| Error::store(format!("cannot list the token store: {e}")))?;
            for key in keys {
                map.entry(key.as_str().to_owned())
                    .or_insert_with(|| IndexEntry {
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
    pub async fn record(&self, entry: &IndexEntry) -> Result<(), Error> {
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
                let json = serde_json::to_string(entry)
                    .map_err(|e| Error::internal(format!("cannot encode an index entry: {e}")))?;
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
    pub async fn purge(&self, keys: &[String]) -> Result<(), Error> {
        let store = self.as_dyn();
        for key in keys {
            store
                .remove(&CacheKey::from_raw(key.clone()))
                .await
                .map_err(|e| Error::store(format!("cannot remove {key}: {e}")))?;
        }
        match self {
            Self::Memory(_) => Ok(()),
            Self::Sled(s) => {
                crate::warm::remove(s.path(), keys).map_err(|e| {
                    Error::store(format!(
                        "cannot remove a warm file in {}: {e}",
                        s.path().join(crate::warm::DIR).display()
                    ))
                })?;
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
    pub async fn stored_size(&self, key: &CacheKey) -> Result<Option<usize>, Error> {
        match self {
            Self::Memory(_) => Ok(None),
            Self::Sled(s) => s
                .read_envelope(key)
                .map(|v| v.map(|v| v.len()))
                .map_err(|e| Error::store(e.to_string())),
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

fn redis_error(e: &token_redis::redis::RedisError) -> Error {
    Error::store(format!("Redis failed: {e}"))
}

fn write_index(dir: &Path, map: &BTreeMap<String, IndexEntry>) -> Result<(), Error> {
    let json = serde_json::to_vec_pretty(map)
        .map_err(|e| Error::internal(format!("cannot encode the index: {e}")))?;
    write_private(&dir.join(INDEX_FILE), &json)
        .map_err(|e| Error::store(format!("cannot write the index {e}")))
}

/// Replaces the file at `path` with `bytes`, readable by its owner only,
/// in one step (written beside it, synced, renamed over it). The error
/// names the path.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let failed = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(failed)?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(failed)?;
    std::fs::rename(&tmp, path).map_err(failed)
}

/// True when `dir` holds a sled store that has been written to.
pub fn sled_has_data(dir: &Path) -> bool {
    dir.join("sled").exists()
}

/// What opening a Redis store does when Redis cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RedisStartup {
    /// An error (exit 6 for `tokencache`): for one-shot commands such as
    /// `get`, `inspect` and `purge`, which cannot wait for Redis.
    #[default]
    FailFast,
    /// The store is returned unconnected and connects in the background
    /// (token-redis's default): for long-running processes such as
    /// `tokencache serve`, which serve from memory and the IdP meanwhile. A
    /// configuration Redis refuses (a wrong password) is an error either
    /// way.
    Background,
}

/// Opens the store `spec` names, loading (or creating) the encryption key
/// when it needs one. Waits up to 10 s (`LOCK_WAIT`) for another tokencache
/// process that has the sled store open. Also returns the key that binds
/// cache entries to the client's secret (see `fingerprint.rs`). An
/// unreachable Redis is an error ([`RedisStartup::FailFast`]; see
/// [`open_with`]).
pub async fn open(
    spec: &StoreSpec,
    key_file: Option<&Path>,
) -> Result<(OpenedStore, FingerprintKey), Error> {
    open_with(spec, key_file, RedisStartup::FailFast).await
}

/// [`open`], with what an unreachable Redis does.
pub async fn open_with(
    spec: &StoreSpec,
    key_file: Option<&Path>,
    startup: RedisStartup,
) -> Result<(OpenedStore, FingerprintKey), Error> {
    match spec {
        StoreSpec::Memory => {
            tracing::debug!("memory (nothing is kept after this invocation)");
            Ok((
                OpenedStore::Memory(MemoryStore::default()),
                FingerprintKey::random(),
            ))
        }
        StoreSpec::Sled(_) => {
            let dir = spec
                .sled_dir()?
                .ok_or_else(|| Error::internal("a sled store has a directory"))?;
            let loaded = key::load(key_file, sled_has_data(&dir))?;
            tracing::info!(dir = %dir.display(), key = %loaded.source, "sled (encrypted)");
            let store = open_sled(&dir, loaded.keyring, &loaded.source).await?;
            Ok((OpenedStore::Sled(store), loaded.fingerprint))
        }
        StoreSpec::Redis(url) => {
            let loaded = key::load(key_file, false)?;
            tracing::info!(url = %redacted_url(url), key = %loaded.source, "redis (encrypted)");
            let store = open_redis_with(url, None, loaded.keyring, startup).await?;
            Ok((OpenedStore::Redis(store), loaded.fingerprint))
        }
    }
}

/// `url` without a password it might hold (`redis://user:pw@host`).
fn redacted_url(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, _)), Some(at)) => format!("{scheme}://***@{}", &url[at + 1..]),
        _ => url.to_owned(),
    }
}

/// Why the default sled store (no state directory) cannot be used, if it
/// cannot: no home directory, or its directory or the default key file's
/// cannot be created and written (an unwritable HOME). `None`: usable.
pub(crate) fn default_sled_unusable(key_file: Option<&Path>) -> Option<String> {
    let dir = match paths::cache_dir() {
        Ok(dir) => dir,
        Err(e) => return Some(e.to_string()),
    };
    if let Err(e) = writable_dir(&dir) {
        return Some(format!("{}: {e}", dir.display()));
    }
    let key_given = key_file.is_some()
        || std::env::var_os(key::KEY_ENV).is_some()
        || std::env::var_os(key::KEY_FILE_ENV).is_some_and(|v| !v.is_empty());
    if !key_given {
        match key::key_file_path(None) {
            Ok(path) if path.exists() => {}
            Ok(path) => {
                let parent = path.parent().unwrap_or(Path::new("/"));
                if let Err(e) = writable_dir(parent) {
                    return Some(format!(
                        "the key file's directory {}: {e}",
                        parent.display()
                    ));
                }
            }
            Err(e) => return Some(e.to_string()),
        }
    }
    None
}

/// Creates `dir` (0700) if need be and checks that a file can be made in it.
fn writable_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let probe = dir.join(format!(
        ".tokencache-probe-{:016x}",
        token_core::backend::random_u128() as u64
    ));
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&probe)?;
    std::fs::remove_file(&probe)
}

/// Opens a Redis store; `prefix` overrides the default key prefix. An
/// unreachable Redis is an error ([`RedisStartup::FailFast`]).
pub async fn open_redis(
    url: &str,
    prefix: Option<&str>,
    keyring: Keyring,
) -> Result<RedisStore, Error> {
    open_redis_with(url, prefix, keyring, RedisStartup::FailFast).await
}

/// [`open_redis`], with what an unreachable Redis does.
pub async fn open_redis_with(
    url: &str,
    prefix: Option<&str>,
    keyring: Keyring,
    startup: RedisStartup,
) -> Result<RedisStore, Error> {
    // A one-shot command (FailFast) ends before another instance's event
    // could matter to it: no pub/sub connection, no SUBSCRIBE.
    let one_shot = startup == RedisStartup::FailFast;
    let mut config = RedisConfig::new(url)
        .with_encryption(keyring)
        .with_connect_at_start(one_shot)
        .with_invalidation_events(!one_shot);
    if let Some(p) = prefix {
        config = config.with_key_prefix(p);
    }
    if let Some(pw) = std::env::var_os(REDIS_PASSWORD_ENV) {
        let pw = pw
            .into_string()
            .map_err(|_| Error::config(format!("{REDIS_PASSWORD_ENV} is not valid Unicode")))?;
        config = config.with_password(pw);
    }
    RedisStore::connect(config)
        .await
        .map_err(|e| Error::store(format!("cannot use the Redis store: {e}")))
}

/// Opens the sled store at `dir`, reporting a quarantined (damaged)
/// database on stderr.
pub async fn open_sled(
    dir: &Path,
    keyring: Keyring,
    source: &KeySource,
) -> Result<SledStore, Error> {
    let keyring = Arc::new(keyring);
    let started = Instant::now();
    let store = loop {
        match SledStore::open(dir, Arc::clone(&keyring)).await {
            Ok(store) => break store,
            Err(SledError::Locked { .. }) => {
                // A running serve holds the store for as long as it runs:
                // no use waiting for it.
                if let Some(owner) = crate::owner::read(dir).filter(crate::owner::Owner::is_serve) {
                    return Err(Error::store(format!(
                        "the token store {} is in use by `tokencache serve` (pid {}), which \
                         holds it while it runs (sled allows one process at a time); ask that \
                         sidecar instead (its admin listener's GET /admin/keys, POST \
                         /admin/keys/PROFILE/purge, when [serve] admin_listen is set), stop it, \
                         or give this command another store (--store, --state-dir)",
                        dir.display(),
                        owner.pid
                    )));
                }
                if started.elapsed() >= LOCK_WAIT {
                    let by = crate::owner::read(dir)
                        .map(|o| format!(" by `tokencache {}` (pid {})", o.command, o.pid))
                        .unwrap_or_default();
                    return Err(Error::store(format!(
                        "the token store {} is in use{by}: still locked after {} s",
                        dir.display(),
                        LOCK_WAIT.as_secs()
                    )));
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            Err(SledError::WrongKey { sealed_with, .. }) => {
                return Err(Error::key(format!(
                    "wrong store key: the token store {} was written with key {sealed_with}, not \
                     the key from {source} ({}); use the right key, or start afresh with \
                     `tokencache purge --all --force`",
                    dir.display(),
                    keyring.current_key_id()
                )))
            }
            Err(e @ (SledError::Sled { .. } | SledError::Io { .. })) => {
                return Err(Error::store(format!(
                    "cannot open the token store {} (damaged or unreadable): {e}; start afresh \
                     with `tokencache purge --all --force`",
                    dir.display()
                )))
            }
            Err(e) => return Err(Error::store(format!("cannot open the token store: {e}"))),
        }
    };
    crate::owner::write(dir);
    if let Some(q) = store.quarantine() {
        crate::error::notices().warning(q);
    }
    Ok(store)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A loopback port nothing listens on.
    fn dead_redis_url() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        let port = listener.local_addr().expect("its address").port();
        drop(listener);
        format!("redis://127.0.0.1:{port}")
    }

    fn keyring() -> Keyring {
        Keyring::new(token_core::EncryptionKey::generate().expect("a random key"))
    }

    #[tokio::test]
    async fn a_dead_redis_fails_fast_unless_opened_for_background_connect() {
        let url = dead_redis_url();
        // One-shot commands (`get`): an error, which `tokencache` exits 6 on.
        let err = open_redis(&url, None, keyring()).await.unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Store, "{err}");
        // `serve`: a store that connects in the background.
        let store = open_redis_with(&url, None, keyring(), RedisStartup::Background)
            .await
            .expect("opened while Redis is down");
        assert!(!store.is_connected());
    }

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

    #[test]
    fn a_redis_password_in_the_url_is_not_logged() {
        assert_eq!(
            redacted_url("redis://user:hunter2@127.0.0.1:6379/0"),
            "redis://***@127.0.0.1:6379/0"
        );
        assert_eq!(
            redacted_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }
}
