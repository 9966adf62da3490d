//! Where tokens are kept: the `CacheStore` trait, its lease and its error.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use tokio::sync::broadcast;

use crate::error::BoxError;
use crate::request::CacheKey;
use crate::token::AccessToken;

/// What a store can do. The conformance suite picks its checks from this,
/// and the engine uses it to decide whether cross-process coordination is
/// worth its round trips.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreCapabilities {
    /// Several processes (or hosts) see the same entries and leases.
    pub shared: bool,
    /// Entries survive a restart of the process.
    pub persistent: bool,
    /// Values are encrypted before they leave the process.
    pub encrypted: bool,
    /// Values are kept as bytes, so they can be corrupted and must be
    /// decoded defensively.
    pub serialized: bool,
}

impl StoreCapabilities {
    /// An in-process, non-persistent, non-encrypted store.
    pub const fn local() -> Self {
        Self {
            shared: false,
            persistent: false,
            encrypted: false,
            serialized: false,
        }
    }

    /// Sets [`shared`](Self::shared).
    pub const fn with_shared(mut self, yes: bool) -> Self {
        self.shared = yes;
        self
    }

    /// Sets [`persistent`](Self::persistent).
    pub const fn with_persistent(mut self, yes: bool) -> Self {
        self.persistent = yes;
        self
    }

    /// Sets [`encrypted`](Self::encrypted).
    pub const fn with_encrypted(mut self, yes: bool) -> Self {
        self.encrypted = yes;
        self
    }

    /// Sets [`serialized`](Self::serialized).
    pub const fn with_serialized(mut self, yes: bool) -> Self {
        self.serialized = yes;
        self
    }
}

/// Proof of holding a key's refresh lease. Only the holder can release it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Lease {
    owner: Arc<str>,
}

impl Lease {
    /// A lease with a fresh random owner value (128 bits).
    pub fn new_random() -> Self {
        Self {
            owner: format!("{:032x}", crate::rng::random_u128()).into(),
        }
    }

    /// A lease with a given owner value, for stores that read one back.
    pub fn from_owner(owner: impl Into<String>) -> Self {
        Self {
            owner: owner.into().into(),
        }
    }

    /// The owner value a store compares on release.
    pub fn owner(&self) -> &str {
        &self.owner
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Lease").field(&&*self.owner).finish()
    }
}

/// What [`CacheStore::put`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PutOutcome {
    /// The token is now the stored one.
    Stored,
    /// A token that expires later was already stored and was kept.
    KeptNewer,
}

/// Counters a store keeps about itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreStats {
    /// Values that could not be decoded or decrypted and were read as misses.
    pub corrupt_reads: u64,
}

impl StoreStats {
    /// Counters with the given number of corrupt reads.
    pub fn new(corrupt_reads: u64) -> Self {
        Self { corrupt_reads }
    }
}

/// Where tokens are kept between fetches: in memory, in Redis, on disk.
///
/// Usable as `Arc<dyn CacheStore>`. Prove an implementation with the
/// `token-conformance` crate.
///
/// # Contract
///
/// - **Expiry is data.** The engine decides freshness from a token's
///   `expires_at` and its own clock. A store must never return a token whose
///   `expires_at` is at or before the current wall-clock time; any TTL of
///   its own is garbage collection only.
/// - **Newer wins.** [`put`](Self::put) keeps whichever token expires later:
///   an instance that finishes a slow fetch can never replace a newer token
///   with an older one. A token with the same expiry replaces the stored one.
///   Tokens without `expires_at` are rejected with [`StoreError::Rejected`].
/// - **Isolation.** Different keys never see each other's entries or leases.
/// - **Corruption is a miss.** A stored value that cannot be decoded (or
///   decrypted) is returned as `Ok(None)`, counted in
///   [`stats`](Self::stats), and never causes a panic. It is never returned
///   as a token.
/// - **Lease.** [`try_acquire_lease`](Self::try_acquire_lease) succeeds for at
///   most one holder per key at a time, until the holder releases it or `ttl`
///   passes (so a holder that dies does not block others for longer than
///   `ttl`). [`release_lease`](Self::release_lease) releases only when the
///   given lease is still the current holder. A store that cannot share
///   between processes still implements the lease within its process.
/// - Errors are for the store being unable to answer (down, timed out, full),
///   never for a missing entry. Every operation is bounded in time.
#[async_trait]
pub trait CacheStore: Send + Sync + fmt::Debug {
    /// What this store can do.
    fn capabilities(&self) -> StoreCapabilities;

    /// The token under `key`, if there is an unexpired one.
    async fn get(&self, key: &CacheKey) -> Result<Option<AccessToken>, StoreError>;

    /// Stores `token` under `key` unless a later-expiring token is there.
    async fn put(&self, key: &CacheKey, token: &AccessToken) -> Result<PutOutcome, StoreError>;

    /// Removes the token under `key` (the lease is untouched).
    async fn remove(&self, key: &CacheKey) -> Result<(), StoreError>;

    /// Takes the refresh lease of `key` for `ttl` if nobody holds it.
    async fn try_acquire_lease(
        &self,
        key: &CacheKey,
        ttl: Duration,
    ) -> Result<Option<Lease>, StoreError>;

    /// Releases `lease` if it still holds `key`'s lease; says whether it did.
    async fn release_lease(&self, key: &CacheKey, lease: &Lease) -> Result<bool, StoreError>;

    /// Removes the token under `key` only if it is still `rejected` (a
    /// resource answered 401 with it), and, for a shared store, tells the
    /// other instances so they drop it from their hot slots (see
    /// [`subscribe`](Self::subscribe)). Says whether a token was removed.
    ///
    /// The provided implementation reads, compares and removes in three
    /// steps and tells nobody; shared stores should override it with an
    /// atomic compare-and-delete plus a notification.
    async fn invalidate(&self, key: &CacheKey, rejected: &AccessToken) -> Result<bool, StoreError> {
        match self.get(key).await? {
            Some(stored) if stored.same_secret(rejected) => {
                self.remove(key).await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Events from other instances sharing this store, for the engine to act
    /// on: it drops invalidated tokens from its hot slots, and a flight
    /// waiting for another instance's refresh re-reads the store when that
    /// instance's token is stored. A shared store should send
    /// [`StoreEvent::Updated`] after every [`put`](Self::put) that stored;
    /// without it such waits end at the engine's slow lease poll. `None` for
    /// a store that is not shared or cannot notify; the engine then relies on
    /// expiry and slow polling.
    fn subscribe(&self) -> Option<broadcast::Receiver<StoreEvent>> {
        None
    }

    /// The store's own counters.
    fn stats(&self) -> StoreStats {
        StoreStats::default()
    }
}

/// Identifies a token without revealing it: the SHA-256 digest of its
/// secret. Safe to send over pub/sub and to log (abbreviated).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenFingerprint([u8; 32]);

impl TokenFingerprint {
    /// The fingerprint of `token`'s secret.
    pub fn of(token: &AccessToken) -> Self {
        Self(Sha256::digest(token.secret().expose().as_bytes()).into())
    }

    /// From the 32 digest bytes (as read back from a store or a message).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The 32 digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for TokenFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenFingerprint(")?;
        for b in &self.0[..6] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "…)")
    }
}

/// Something another instance did to a shared store.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreEvent {
    /// The token under `key` with this fingerprint was rejected by a
    /// resource and invalidated; drop it if it is the one in the hot slot.
    Invalidated {
        /// The key.
        key: CacheKey,
        /// Which token.
        fingerprint: TokenFingerprint,
    },
    /// Another instance stored a new token under `key`. An instance waiting
    /// for that instance's refresh re-reads the store now instead of at its
    /// next poll; nobody else acts on it (each instance reads the new token
    /// at its own moment in the refresh window, so a fleet's reads do not
    /// come in one burst). Like every event it may be lost: waiters still
    /// poll, slowly.
    Updated {
        /// The key.
        key: CacheKey,
    },
}

macro_rules! forward_store {
    ($($ty:ty),*) => {$(
        #[async_trait]
        impl<T: CacheStore + ?Sized> CacheStore for $ty {
            fn capabilities(&self) -> StoreCapabilities {
                (**self).capabilities()
            }
            async fn get(&self, key: &CacheKey) -> Result<Option<AccessToken>, StoreError> {
                (**self).get(key).await
            }
            async fn put(&self, key: &CacheKey, token: &AccessToken) -> Result<PutOutcome, StoreError> {
                (**self).put(key, token).await
            }
            async fn remove(&self, key: &CacheKey) -> Result<(), StoreError> {
                (**self).remove(key).await
            }
            async fn try_acquire_lease(&self, key: &CacheKey, ttl: Duration) -> Result<Option<Lease>, StoreError> {
                (**self).try_acquire_lease(key, ttl).await
            }
            async fn release_lease(&self, key: &CacheKey, lease: &Lease) -> Result<bool, StoreError> {
                (**self).release_lease(key, lease).await
            }
            async fn invalidate(&self, key: &CacheKey, rejected: &AccessToken) -> Result<bool, StoreError> {
                (**self).invalidate(key, rejected).await
            }
            fn subscribe(&self) -> Option<broadcast::Receiver<StoreEvent>> {
                (**self).subscribe()
            }
            fn stats(&self) -> StoreStats {
                (**self).stats()
            }
        }
    )*};
}

forward_store!(Arc<T>, Box<T>);

/// The expiry of a token about to be stored, or the error every `put` gives
/// for a token without one (the engine always sets it).
pub fn storable_expiry(token: &AccessToken) -> Result<SystemTime, StoreError> {
    token.expires_at().ok_or_else(|| {
        StoreError::Rejected(
            "the token has no expires_at; the engine sets one before storing".into(),
        )
    })
}

/// Why a store could not answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The backend is down or unreachable.
    #[error("store unavailable: {message}")]
    Unavailable {
        /// What failed.
        message: String,
        /// The driver's error.
        #[source]
        source: Option<BoxError>,
    },
    /// The backend did not answer in time.
    #[error("store operation timed out after {0:?}")]
    Timeout(Duration),
    /// The store refuses the operation (bad input, a limit reached).
    #[error("store rejected the operation: {0}")]
    Rejected(String),
    /// Reading or writing the backing medium failed (disk full, read-only).
    #[error("store I/O failed: {message}")]
    Io {
        /// What failed.
        message: String,
        /// The I/O error.
        #[source]
        source: Option<BoxError>,
    },
}

impl StoreError {
    /// An [`Unavailable`](Self::Unavailable) error with a source.
    pub fn unavailable(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Unavailable {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// True when trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        !matches!(self, Self::Rejected(_))
    }
}
