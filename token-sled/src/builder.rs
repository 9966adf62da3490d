//! Configuring and opening a `SledStore`, and its background sweeper.

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use token_core::backend::LocalLeases;
use token_core::Keyring;

use crate::error::SledError;
use crate::open::open_dir;
use crate::store::{
    blocking, read_count, Durability, Inner, SealCount, SledStore, META_TREE, TOKENS_TREE,
};
#[cfg(doc)]
use crate::store::{
    DEFAULT_CACHE_CAPACITY, DEFAULT_MAX_ENCRYPTIONS_PER_KEY, DEFAULT_SWEEP_INTERVAL,
};

/// Configures and opens a [`SledStore`].
pub struct SledStoreBuilder {
    pub(crate) path: PathBuf,
    pub(crate) keyring: Arc<Keyring>,
    pub(crate) durability: Durability,
    pub(crate) sweep_interval: Option<Duration>,
    pub(crate) max_encryptions: u64,
    pub(crate) cache_capacity: u64,
    pub(crate) quarantine_damaged: bool,
}

impl fmt::Debug for SledStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The keyring's Debug shows key ids only.
        f.debug_struct("SledStoreBuilder")
            .field("path", &self.path)
            .field("keyring", &self.keyring)
            .field("durability", &self.durability)
            .field("sweep_interval", &self.sweep_interval)
            .field("max_encryptions", &self.max_encryptions)
            .field("cache_capacity", &self.cache_capacity)
            .field("quarantine_damaged", &self.quarantine_damaged)
            .finish()
    }
}

impl SledStoreBuilder {
    /// When writes are on disk. Defaults to [`Durability::Flush`].
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// How often expired entries are swept away, or `None` for never (call
    /// [`SledStore::sweep`] yourself). Defaults to
    /// [`DEFAULT_SWEEP_INTERVAL`].
    pub fn sweep_interval(mut self, every: Option<Duration>) -> Self {
        self.sweep_interval = every;
        self
    }

    /// How many values one key may seal before writes are refused with an
    /// error asking for rotation. Defaults to
    /// [`DEFAULT_MAX_ENCRYPTIONS_PER_KEY`].
    pub fn max_encryptions_per_key(mut self, limit: u64) -> Self {
        self.max_encryptions = limit;
        self
    }

    /// sled's page cache, in bytes. Defaults to [`DEFAULT_CACHE_CAPACITY`].
    pub fn cache_capacity(mut self, bytes: u64) -> Self {
        self.cache_capacity = bytes;
        self
    }

    /// Whether a database sled cannot open is moved aside (and the store
    /// starts empty) instead of failing to open. Defaults to `true`.
    pub fn quarantine_damaged(mut self, yes: bool) -> Self {
        self.quarantine_damaged = yes;
        self
    }

    /// Opens the store (on tokio's blocking pool).
    pub async fn open(self) -> Result<SledStore, SledError> {
        let sweeper = self
            .sweep_interval
            .map(|every| (every, mpsc::channel::<()>()));
        let (sweep_every, stop, stopped) = match sweeper {
            Some((every, (stop, stopped))) => (Some(every), Some(stop), Some(stopped)),
            None => (None, None, None),
        };
        let inner = blocking("open", move || self.open_blocking(stop)).await?;
        let inner = Arc::new(inner);
        if let (Some(every), Some(stopped)) = (sweep_every, stopped) {
            start_sweeper(&inner, every, stopped);
        }
        Ok(SledStore { inner })
    }

    fn open_blocking(self, stop_sweeper: Option<mpsc::Sender<()>>) -> Result<Inner, SledError> {
        let opened = open_dir(&self.path, self.cache_capacity, self.quarantine_damaged)?;
        let sled_err = |op| {
            let path = self.path.clone();
            move |e| SledError::sled(op, &path, e)
        };
        let tokens = opened
            .db
            .open_tree(TOKENS_TREE)
            .map_err(sled_err("open the tokens tree"))?;
        let meta = opened
            .db
            .open_tree(META_TREE)
            .map_err(sled_err("open the meta tree"))?;
        let current = self.keyring.current_key_id();
        let used = read_count(&meta, current).map_err(sled_err("read the encryption count"))?;
        let inner = Inner {
            path: self.path,
            db: opened.db,
            tokens,
            meta,
            keyring: self.keyring,
            durability: self.durability,
            max_encryptions: self.max_encryptions,
            sealed: Mutex::new(SealCount {
                key: current,
                used,
                reserved: used,
            }),
            corrupt_reads: AtomicU64::new(0),
            leases: LocalLeases::default(),
            quarantine: opened.quarantine,
            _stop_sweeper: stop_sweeper,
            _lock: opened.lock,
        };
        inner.check_keyring()?;
        inner.flush()?;
        Ok(inner)
    }
}

/// Sweeps every `every` on a thread of its own until the store is dropped
/// (which drops the sender of `stopped`). A thread, not a tokio task: it
/// needs no timer-enabled runtime, and the sweep blocks anyway.
fn start_sweeper(inner: &Arc<Inner>, every: Duration, stopped: mpsc::Receiver<()>) {
    let weak: Weak<Inner> = Arc::downgrade(inner);
    let spawned = std::thread::Builder::new()
        .name("token-sled-sweep".into())
        .spawn(move || loop {
            match stopped.recv_timeout(every) {
                Err(RecvTimeoutError::Timeout) => {}
                Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
            }
            let Some(inner) = weak.upgrade() else { return };
            if let Err(e) = inner.sweep() {
                tracing::warn!(error = %e, "token-sled: sweeping expired entries failed");
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "token-sled: cannot start the sweeper thread; expired entries stay until swept by hand");
    }
}
