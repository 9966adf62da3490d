//! `SledStore`: encrypted tokens in a sled database.

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use token_core::backend::{
    decode_token, encode_token, envelope_key_id, storable_expiry, EnvelopeError, LocalLeases,
};
use token_core::{
    AccessToken, CacheKey, CacheStore, KeyId, Keyring, Lease, PutOutcome, StoreCapabilities,
    StoreError, StoreStats,
};

use crate::builder::SledStoreBuilder;
use crate::error::SledError;
use crate::open::{tighten_permissions, Quarantine};

/// How often expired entries are swept away by default.
///
/// Expired tokens are never returned whatever the interval (expiry is
/// checked on every read); sweeping only frees disk space, and a minute
/// keeps the database small without measurable work.
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// How many values one key may seal before writes are refused, by default.
///
/// NIST SP 800-38D bounds a key used with random 96-bit nonces to 2^32
/// encryptions; this stops at half of that, leaving room for other writers
/// that share the key (a Redis store) and for counts lost in a crash.
pub const DEFAULT_MAX_ENCRYPTIONS_PER_KEY: u64 = 1 << 31;

/// sled's page cache size by default: tokens are small, and a few MiB hold
/// thousands of them.
pub const DEFAULT_CACHE_CAPACITY: u64 = 16 * 1024 * 1024;

/// Encryption counts are persisted this far ahead of use, so a crash can
/// only over-count, never under-count.
const COUNT_RESERVE: u64 = 1024;

pub(crate) const TOKENS_TREE: &[u8] = b"tokens";
pub(crate) const META_TREE: &[u8] = b"meta";
const CANARY: &[u8] = b"canary";
const CANARY_PLAINTEXT: &[u8] = b"token-sled canary v1";
const SEALED_PREFIX: &[u8] = b"sealed/";

/// When a `put` (or `remove`) is on disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Durability {
    /// `put` returns once the write is flushed to disk (fsync): a crash
    /// right after never loses it. Costs one flush per write; see
    /// `docs/BENCHMARKS.md`.
    #[default]
    Flush,
    /// `put` returns once the write is in sled's memory; sled flushes every
    /// 500 ms. A crash can lose the last half second of writes (which only
    /// means fetching those tokens again).
    Background,
}

/// What [`SledStore::rekey`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RekeyReport {
    /// Entries re-encrypted under the current key.
    pub rewritten: u64,
    /// Entries already under the current key.
    pub already_current: u64,
    /// Entries removed: expired, or unreadable with every key.
    pub removed: u64,
}

/// What one sweep did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SweepReport {
    /// Entries kept.
    pub kept: u64,
    /// Entries removed: expired, or unreadable with every key.
    pub removed: u64,
}

/// A [`CacheStore`] that keeps tokens in a sled database on disk, each one
/// encrypted with AES-256-GCM, so a process that restarts finds its tokens
/// and nothing on disk is readable without the key.
///
/// - **Encrypted.** Every value is a `token_core` envelope sealed by the
///   store's [`Keyring`] and bound to its cache key; a value that fails to
///   open (altered, truncated, moved from another key, or a key no longer
///   held) is a miss counted in [`stats`](CacheStore::stats).
/// - **Durable.** With [`Durability::Flush`] (the default) `put` returns
///   after the write is on disk.
/// - **Expiry is data.** Expired tokens are never returned; a background
///   thread sweeps them away every [`DEFAULT_SWEEP_INTERVAL`].
/// - **One process.** The directory is locked while open: a second process
///   (or a second `SledStore` on the same path) gets [`SledError::Locked`].
///   The refresh lease is therefore kept in memory.
/// - **Private.** The directory is made 0700 and its files 0600.
/// - **Damage.** A database sled cannot open (sled 0.34 has known corruption
///   after abrupt stops) is moved aside with a warning naming both paths,
///   and the store starts empty; see [`quarantine`](Self::quarantine).
/// - **Key rotation.** Open with a keyring whose current key is new and
///   whose previous keys include the old one, then call
///   [`rekey`](Self::rekey). A key that has sealed
///   [`max_encryptions_per_key`](SledStoreBuilder::max_encryptions_per_key)
///   values refuses further writes with an error asking for rotation.
///
/// # Blocking
///
/// sled is a blocking library. Writes (which flush to disk), sweeps,
/// rekeys and opening never stall the async runtime: on a multi-thread
/// runtime they run under `tokio::task::block_in_place` (other tasks of
/// the worker move to another thread; other futures of the *same* task wait,
/// as they would for any blocking call), on a current-thread runtime on the
/// blocking pool. `get` runs inline: a
/// read of a token database (small, and held in sled's page cache after the
/// first read) is a memory lookup of a few microseconds, less than the hand
/// off to a blocking thread would cost.
///
/// ```no_run
/// use token_core::{EncryptionKey, Keyring, TokenCache};
/// use token_sled::SledStore;
///
/// # async fn demo(credential: impl token_core::Credential + 'static) -> Result<(), Box<dyn std::error::Error>> {
/// let keyring = Keyring::new(EncryptionKey::from_env("TOKEN_CACHE_KEY")?);
/// let store = SledStore::open("/var/lib/my-service/tokens", keyring).await?;
/// let cache = TokenCache::builder(credential).store(store).build();
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SledStore {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) path: PathBuf,
    // Dropped before `_lock`: sled closes before the directory is unlocked.
    pub(crate) db: sled::Db,
    pub(crate) tokens: sled::Tree,
    pub(crate) meta: sled::Tree,
    pub(crate) keyring: Arc<Keyring>,
    pub(crate) durability: Durability,
    pub(crate) max_encryptions: u64,
    pub(crate) sealed: Mutex<SealCount>,
    pub(crate) corrupt_reads: AtomicU64,
    pub(crate) leases: LocalLeases,
    pub(crate) quarantine: Option<Quarantine>,
    // Dropping it stops the sweeper thread.
    pub(crate) _stop_sweeper: Option<mpsc::Sender<()>>,
    pub(crate) _lock: File,
}

pub(crate) struct SealCount {
    pub(crate) key: KeyId,
    pub(crate) used: u64,
    pub(crate) reserved: u64,
}

impl SledStore {
    /// Opens (or creates) the store at `path` with the default settings.
    ///
    /// Fails with a clear [`SledError`] when another process has it open,
    /// when it was written by a newer format, or when `keyring` holds none of
    /// the keys it was written with.
    pub async fn open(
        path: impl AsRef<Path>,
        keyring: impl Into<Arc<Keyring>>,
    ) -> Result<Self, SledError> {
        Self::builder(path, keyring).open().await
    }

    /// Starts configuring a store at `path`.
    pub fn builder(path: impl AsRef<Path>, keyring: impl Into<Arc<Keyring>>) -> SledStoreBuilder {
        SledStoreBuilder {
            path: path.as_ref().to_owned(),
            keyring: keyring.into(),
            durability: Durability::default(),
            sweep_interval: Some(DEFAULT_SWEEP_INTERVAL),
            max_encryptions: DEFAULT_MAX_ENCRYPTIONS_PER_KEY,
            cache_capacity: DEFAULT_CACHE_CAPACITY,
            quarantine_damaged: true,
        }
    }

    /// The database directory.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The damaged database that was moved aside when this store opened,
    /// if there was one.
    pub fn quarantine(&self) -> Option<&Quarantine> {
        self.inner.quarantine.as_ref()
    }

    /// The keyring values are sealed and opened with.
    pub fn keyring(&self) -> &Keyring {
        &self.inner.keyring
    }

    /// How many values the current key has sealed in this database (as
    /// persisted: up to a thousand ahead of the exact count after a
    /// restart).
    pub fn encryptions(&self) -> u64 {
        self.inner.lock_count().used
    }

    /// How many entries are stored, expired and unreadable ones included
    /// until they are swept. Counts every entry: not for hot paths.
    pub fn len(&self) -> usize {
        self.inner.tokens.len()
    }

    /// True when no entry is stored.
    pub fn is_empty(&self) -> bool {
        self.inner.tokens.is_empty()
    }

    /// The cache key of every stored entry, in key order, for tools that
    /// list or purge a store (`tokencache inspect`). Expired and unreadable
    /// entries are included until they are swept; [`get`](CacheStore::get)
    /// tells which are usable. Reads keys only, never values, and keys hold
    /// no secret. Walks the whole database: not for hot paths.
    pub fn keys(&self) -> Result<Vec<CacheKey>, SledError> {
        let mut keys = Vec::new();
        for k in self.inner.tokens.iter().keys() {
            let k = k.map_err(|e| SledError::sled("scan", &self.inner.path, e))?;
            // Bytes that are not UTF-8 were not written by this store.
            if let Ok(text) = std::str::from_utf8(&k) {
                keys.push(CacheKey::from_raw(text));
            }
        }
        Ok(keys)
    }

    /// Re-encrypts every entry under the keyring's current key, and removes
    /// expired entries and entries no key can open. After it, the previous
    /// keys can be dropped from the keyring.
    pub async fn rekey(&self) -> Result<RekeyReport, SledError> {
        let inner = self.inner.clone();
        blocking("rekey", move || inner.rekey()).await
    }

    /// Removes expired and unreadable entries now (the background sweeper
    /// does the same every sweep interval).
    pub async fn sweep(&self) -> Result<SweepReport, SledError> {
        let inner = self.inner.clone();
        blocking("sweep", move || inner.sweep()).await
    }

    /// Flushes everything to disk (useful with [`Durability::Background`]).
    pub async fn flush(&self) -> Result<(), SledError> {
        let inner = self.inner.clone();
        blocking("flush", move || inner.flush()).await
    }

    /// The stored bytes (the encrypted envelope) of `key`, for tests and
    /// tools. They hold no secret in clear.
    pub fn read_envelope(&self, key: &CacheKey) -> Result<Option<Vec<u8>>, SledError> {
        self.inner
            .tokens
            .get(key.as_str().as_bytes())
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(|e| SledError::sled("read", &self.inner.path, e))
    }

    /// Replaces the stored bytes of `key` without checking them or
    /// comparing expiries, for tests and tools (restoring a backup of one
    /// entry). Bytes that are not a valid envelope for `key` read as a miss.
    pub async fn write_envelope(&self, key: &CacheKey, bytes: &[u8]) -> Result<(), SledError> {
        let inner = self.inner.clone();
        let key = key.as_str().as_bytes().to_vec();
        let bytes = bytes.to_vec();
        blocking("write", move || {
            inner
                .tokens
                .insert(key, bytes)
                .map_err(|e| SledError::sled("write", &inner.path, e))?;
            inner.flush_if_durable()
        })
        .await
    }
}

/// Runs blocking `f` without stalling the async runtime: in place on a
/// multi-thread runtime (`block_in_place` hands this worker's other tasks to
/// another thread, and saves the round trip to the blocking pool that
/// otherwise costs about 20 µs per write), on the blocking pool on a
/// current-thread runtime, and inline outside any runtime.
pub(crate) async fn blocking<T, F>(op: &'static str, f: F) -> Result<T, SledError>
where
    F: FnOnce() -> Result<T, SledError> + Send + 'static,
    T: Send + 'static,
{
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        Ok(h) => h
            .spawn_blocking(f)
            .await
            .map_err(|_| SledError::Task { op })?,
        Err(_) => f(),
    }
}

impl Inner {
    fn lock_count(&self) -> std::sync::MutexGuard<'_, SealCount> {
        // Every update leaves the count consistent: a poisoned lock is safe.
        self.sealed.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn sled_err(&self, op: &'static str) -> impl FnOnce(sled::Error) -> SledError + '_ {
        move |e| SledError::sled(op, &self.path, e)
    }

    /// Counts one encryption under the current key, persisting the count
    /// ahead of use, or refuses when the key has reached its limit.
    fn count_seal(&self) -> Result<(), SledError> {
        let mut count = self.lock_count();
        if count.used >= self.max_encryptions {
            return Err(SledError::EncryptionLimit {
                key: count.key,
                count: count.used,
                limit: self.max_encryptions,
            });
        }
        count.used += 1;
        if count.used > count.reserved {
            let reserved = count.used.saturating_add(COUNT_RESERVE - 1);
            self.meta
                .insert(sealed_key(count.key), &reserved.to_be_bytes())
                .map_err(self.sled_err("record the encryption count"))?;
            count.reserved = reserved;
        }
        Ok(())
    }

    fn seal(&self, key: &CacheKey, plaintext: &[u8]) -> Result<Vec<u8>, SledError> {
        self.count_seal()?;
        self.keyring.seal(key, plaintext).map_err(SledError::Seal)
    }

    fn open_token(&self, key: &CacheKey, bytes: &[u8]) -> Result<AccessToken, &'static str> {
        let plain = self.keyring.open(key, bytes).map_err(|e| match e {
            EnvelopeError::UnknownKeyId { .. } => "sealed with a key the keyring does not hold",
            EnvelopeError::UnsupportedVersion { .. } => "unsupported envelope version",
            EnvelopeError::AuthenticationFailed => "failed authentication",
            _ => "malformed envelope",
        })?;
        decode_token(&plain).map_err(|_| "decrypted, but not a token")
    }

    fn get(&self, key: &CacheKey) -> Result<Option<AccessToken>, SledError> {
        let Some(bytes) = self
            .tokens
            .get(key.as_str().as_bytes())
            .map_err(self.sled_err("read"))?
        else {
            return Ok(None);
        };
        match self.open_token(key, &bytes) {
            Ok(token) => Ok(Some(token).filter(|t| t.is_live_at(SystemTime::now()))),
            Err(why) => {
                self.corrupt_reads.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(key = %key, why, "token-sled: a stored value could not be read; treating it as a miss");
                Ok(None)
            }
        }
    }

    fn put(&self, key: &CacheKey, token: &AccessToken) -> Result<PutOutcome, SledError> {
        let expires_at = token.expires_at().unwrap_or(SystemTime::UNIX_EPOCH);
        let expired = !token.is_live_at(SystemTime::now());
        let k = key.as_str().as_bytes();
        let mut sealed: Option<sled::IVec> = None;
        loop {
            let current = self.tokens.get(k).map_err(self.sled_err("read"))?;
            let stored_expiry = current
                .as_ref()
                .and_then(|v| self.open_token(key, v).ok())
                .and_then(|t| t.expires_at());
            if stored_expiry.is_some_and(|at| at > expires_at) {
                return Ok(PutOutcome::KeptNewer);
            }
            let new = if expired {
                // Never stored; it only clears an even older entry.
                None
            } else if let Some(s) = &sealed {
                Some(s.clone())
            } else {
                let s = sled::IVec::from(self.seal(key, &encode_token(token))?);
                sealed = Some(s.clone());
                Some(s)
            };
            if current.is_none() && new.is_none() {
                return Ok(PutOutcome::Stored);
            }
            match self
                .tokens
                .compare_and_swap(k, current, new)
                .map_err(self.sled_err("write"))?
            {
                Ok(()) => break,
                // Another writer got there first: compare with its value.
                Err(_) => continue,
            }
        }
        self.flush_if_durable()?;
        Ok(PutOutcome::Stored)
    }

    fn remove(&self, key: &CacheKey) -> Result<(), SledError> {
        self.tokens
            .remove(key.as_str().as_bytes())
            .map_err(self.sled_err("remove"))?;
        self.flush_if_durable()
    }

    fn invalidate(&self, key: &CacheKey, rejected: &AccessToken) -> Result<bool, SledError> {
        let k = key.as_str().as_bytes();
        let Some(current) = self.tokens.get(k).map_err(self.sled_err("read"))? else {
            return Ok(false);
        };
        if !self
            .open_token(key, &current)
            .is_ok_and(|t| t.same_secret(rejected))
        {
            return Ok(false);
        }
        let swapped = self
            .tokens
            .compare_and_swap(k, Some(&current), None::<&[u8]>)
            .map_err(self.sled_err("remove"))?
            .is_ok();
        if swapped {
            self.flush_if_durable()?;
        }
        Ok(swapped)
    }

    pub(crate) fn flush(&self) -> Result<(), SledError> {
        self.db.flush().map_err(self.sled_err("flush to disk"))?;
        Ok(())
    }

    fn flush_if_durable(&self) -> Result<(), SledError> {
        match self.durability {
            Durability::Flush => self.flush(),
            Durability::Background => Ok(()),
        }
    }

    /// Visits every entry: `f` returns the new value to store (or `None` to
    /// remove it), or `Keep`. Replacements are compare-and-swap, so an entry
    /// written meanwhile is left alone.
    fn rewrite_each(
        &self,
        mut f: impl FnMut(&CacheKey, &[u8]) -> Result<Rewrite, SledError>,
    ) -> Result<u64, SledError> {
        let mut changed = 0;
        for item in self.tokens.iter() {
            let (k, v) = item.map_err(self.sled_err("scan"))?;
            let action = match std::str::from_utf8(&k) {
                Ok(text) => f(&CacheKey::from_raw(text), &v)?,
                // Not a key this store wrote.
                Err(_) => Rewrite::Replace(None),
            };
            let Rewrite::Replace(new) = action else {
                continue;
            };
            if self
                .tokens
                .compare_and_swap(&k, Some(&v), new)
                .map_err(self.sled_err("write"))?
                .is_ok()
            {
                changed += 1;
            }
        }
        if changed > 0 {
            self.flush_if_durable()?;
        }
        Ok(changed)
    }

    pub(crate) fn sweep(&self) -> Result<SweepReport, SledError> {
        let now = SystemTime::now();
        let mut kept = 0;
        let removed = self.rewrite_each(|key, bytes| {
            let live = self
                .open_token(key, bytes)
                .ok()
                .and_then(|t| t.expires_at())
                .is_some_and(|at| now < at);
            Ok(if live {
                kept += 1;
                Rewrite::Keep
            } else {
                Rewrite::Replace(None)
            })
        })?;
        tighten_permissions(&self.path);
        if removed > 0 {
            tracing::debug!(removed, kept, "token-sled: swept expired entries");
        }
        Ok(SweepReport { kept, removed })
    }

    fn rekey(&self) -> Result<RekeyReport, SledError> {
        let now = SystemTime::now();
        let current = self.keyring.current_key_id();
        let mut report = RekeyReport::default();
        self.rewrite_each(|key, bytes| {
            if envelope_key_id(bytes).ok() == Some(current) {
                report.already_current += 1;
                return Ok(Rewrite::Keep);
            }
            match self.keyring.open(key, bytes) {
                Ok(plain) if decode_token(&plain).is_ok_and(|t| t.is_live_at(now)) => {
                    report.rewritten += 1;
                    Ok(Rewrite::Replace(Some(self.seal(key, &plain)?)))
                }
                _ => {
                    report.removed += 1;
                    Ok(Rewrite::Replace(None))
                }
            }
        })?;
        self.write_canary()?;
        self.flush()?;
        Ok(report)
    }

    fn write_canary(&self) -> Result<(), SledError> {
        let sealed = self.seal(&canary_key(), CANARY_PLAINTEXT)?;
        self.meta
            .insert(CANARY, sealed)
            .map_err(self.sled_err("write the key check"))?;
        Ok(())
    }

    /// Refuses a keyring that cannot open what the database was last
    /// written with, and records the current key as the one it now is.
    pub(crate) fn check_keyring(&self) -> Result<(), SledError> {
        let stored = self
            .meta
            .get(CANARY)
            .map_err(self.sled_err("read the key check"))?;
        let Some(stored) = stored else {
            return self.write_canary();
        };
        let current = self.keyring.current_key_id();
        match self.keyring.open(&canary_key(), &stored) {
            Ok(plain) if &**plain == CANARY_PLAINTEXT => {
                if envelope_key_id(&stored).ok() == Some(current) {
                    Ok(())
                } else {
                    self.write_canary()
                }
            }
            Err(EnvelopeError::UnknownKeyId { id }) => Err(SledError::WrongKey {
                path: self.path.clone(),
                sealed_with: id,
                keyring: self.keyring.key_ids(),
            }),
            Err(EnvelopeError::AuthenticationFailed) => Err(SledError::WrongKey {
                path: self.path.clone(),
                sealed_with: envelope_key_id(&stored).unwrap_or(current),
                keyring: self.keyring.key_ids(),
            }),
            Err(EnvelopeError::UnsupportedVersion { found, .. }) => Err(SledError::FutureFormat {
                path: self.path.clone(),
                found: format!("envelope version {found}"),
                supported: crate::open::STORE_FORMAT,
            }),
            // A damaged check value: the entries themselves will tell.
            _ => self.write_canary(),
        }
    }
}

enum Rewrite {
    Keep,
    Replace(Option<Vec<u8>>),
}

fn canary_key() -> CacheKey {
    CacheKey::from_raw("token-sled/key-check")
}

fn sealed_key(id: KeyId) -> Vec<u8> {
    [SEALED_PREFIX, &id.to_bytes()[..]].concat()
}

pub(crate) fn read_count(meta: &sled::Tree, id: KeyId) -> Result<u64, sled::Error> {
    Ok(meta
        .get(sealed_key(id))?
        .and_then(|v| <[u8; 8]>::try_from(&*v).ok())
        .map_or(0, u64::from_be_bytes))
}

impl fmt::Debug for SledStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        f.debug_struct("SledStore")
            .field("path", &i.path)
            .field("keyring", &i.keyring)
            .field("durability", &i.durability)
            .field("corrupt_reads", &i.corrupt_reads.load(Ordering::Relaxed))
            .field("quarantined", &i.quarantine.as_ref().map(|q| &q.to))
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl CacheStore for SledStore {
    /// Persistent, encrypted and serialized; not shared (one process holds
    /// the database at a time).
    fn capabilities(&self) -> StoreCapabilities {
        StoreCapabilities::local()
            .with_persistent(true)
            .with_encrypted(true)
            .with_serialized(true)
    }

    async fn get(&self, key: &CacheKey) -> Result<Option<AccessToken>, StoreError> {
        Ok(self.inner.get(key)?)
    }

    /// Keeps whichever of `token` and the stored token expires later
    /// (compare-and-swap per key), then flushes to disk with
    /// [`Durability::Flush`]. A token that has already expired is accepted
    /// but not stored.
    async fn put(&self, key: &CacheKey, token: &AccessToken) -> Result<PutOutcome, StoreError> {
        storable_expiry(token)?;
        let inner = self.inner.clone();
        let (key, token) = (key.clone(), token.clone());
        Ok(blocking("put", move || inner.put(&key, &token)).await?)
    }

    async fn remove(&self, key: &CacheKey) -> Result<(), StoreError> {
        let inner = self.inner.clone();
        let key = key.clone();
        Ok(blocking("remove", move || inner.remove(&key)).await?)
    }

    async fn try_acquire_lease(
        &self,
        key: &CacheKey,
        ttl: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        Ok(self.inner.leases.try_acquire(key, ttl))
    }

    async fn release_lease(&self, key: &CacheKey, lease: &Lease) -> Result<bool, StoreError> {
        Ok(self.inner.leases.release(key, lease))
    }

    /// Compares and removes in one step (compare-and-swap on the stored
    /// bytes), so a newer token written meanwhile is never removed.
    async fn invalidate(&self, key: &CacheKey, rejected: &AccessToken) -> Result<bool, StoreError> {
        let inner = self.inner.clone();
        let (key, rejected) = (key.clone(), rejected.clone());
        Ok(blocking("invalidate", move || inner.invalidate(&key, &rejected)).await?)
    }

    fn stats(&self) -> StoreStats {
        StoreStats::new(self.inner.corrupt_reads.load(Ordering::Relaxed))
    }
}
