//! `MemoryStore`: tokens in a bounded moka cache, leases in a table.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use moka::future::Cache;
use moka::ops::compute::{CompResult, Op};
use token_core::backend::{storable_expiry, LocalLeases};
use token_core::{
    AccessToken, CacheKey, CacheStore, Lease, PutOutcome, StoreCapabilities, StoreError,
};

use crate::expiry::ExpireWithToken;

/// How many tokens a store keeps by default.
///
/// A process holds one token per (credential, request) it uses, usually a
/// handful and rarely thousands; ten thousand leaves ample room while
/// bounding memory (a typical token is a few KiB) to tens of MiB when
/// something generates keys it should not (a per-user scope, say).
pub const DEFAULT_MAX_ENTRIES: u64 = 10_000;

/// An in-process [`CacheStore`] on a [`moka`] cache.
///
/// - **Expiry is data.** Every `get` compares the token's `expires_at` with
///   the wall clock, so an expired token is never returned. Each entry also
///   expires in moka when its token does, which frees its memory without a
///   sweep.
/// - **Bounded.** At most [`max_entries`](Self::max_entries) tokens are kept
///   (by default [`DEFAULT_MAX_ENTRIES`]); beyond that moka evicts the least
///   useful ones. Evictions are applied in small batches as the store is
///   used, so the count can briefly exceed the bound.
/// - **Newer wins, atomically.** A `put` keeps whichever token expires later.
///   The comparison and the write are one step per key (moka's
///   `and_compute_with`), so concurrent puts can never let an older token
///   replace a newer one.
/// - **Lease.** The refresh lease works across the tasks and threads of this
///   process (not across processes: see
///   [`capabilities`](CacheStore::capabilities)). Only the [`Lease`] returned
///   by the acquire releases it, and it lapses after its TTL if the holder
///   never does.
///
/// Cloning is cheap, and clones share the same entries and leases.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use token_core::{AccessToken, CacheKey, CacheStore, PutOutcome};
/// use token_memory::MemoryStore;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), token_core::StoreError> {
/// let store = MemoryStore::new(1_000);
/// let key = CacheKey::from_raw("example");
/// let token = AccessToken::new("secret", SystemTime::now()).with_expires_in(Duration::from_secs(3600));
/// assert_eq!(store.put(&key, &token).await?, PutOutcome::Stored);
/// assert!(store.get(&key).await?.is_some_and(|t| t.same_secret(&token)));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct MemoryStore {
    tokens: Cache<CacheKey, Arc<AccessToken>>,
    leases: Arc<LocalLeases>,
    max_entries: u64,
}

impl MemoryStore {
    /// A store that keeps at most `max_entries` tokens. With `0` it keeps
    /// none: every `put` is accepted and every `get` misses.
    pub fn new(max_entries: u64) -> Self {
        Self::builder().max_entries(max_entries).build()
    }

    /// Starts configuring a store.
    pub fn builder() -> MemoryStoreBuilder {
        MemoryStoreBuilder::default()
    }

    /// The most tokens this store keeps.
    pub fn max_entries(&self) -> u64 {
        self.max_entries
    }

    /// The name given with [`MemoryStoreBuilder::name`], if any.
    pub fn name(&self) -> Option<&str> {
        self.tokens.name()
    }

    /// How many tokens are stored, approximately: expired and evicted
    /// entries are counted until moka's next maintenance (see
    /// [`run_pending_tasks`](Self::run_pending_tasks)).
    pub fn entry_count(&self) -> u64 {
        self.tokens.entry_count()
    }

    /// Applies pending evictions and expirations now instead of in the
    /// background of later calls. Only tests and metrics need it.
    pub async fn run_pending_tasks(&self) {
        self.tokens.run_pending_tasks().await;
    }
}

impl Default for MemoryStore {
    /// A store with [`DEFAULT_MAX_ENTRIES`].
    fn default() -> Self {
        Self::new(DEFAULT_MAX_ENTRIES)
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Counts only: never a key's token.
        f.debug_struct("MemoryStore")
            .field("name", &self.tokens.name())
            .field("entries", &self.tokens.entry_count())
            .field("max_entries", &self.max_entries)
            .field("leases", &self.leases.len())
            .finish()
    }
}

#[async_trait]
impl CacheStore for MemoryStore {
    /// In-process only: not shared, not persistent, not encrypted, and
    /// tokens are kept as values, not bytes.
    fn capabilities(&self) -> StoreCapabilities {
        StoreCapabilities::local()
    }

    async fn get(&self, key: &CacheKey) -> Result<Option<AccessToken>, StoreError> {
        let token = self.tokens.get(key).await;
        let now = SystemTime::now();
        Ok(token
            .filter(|t| t.is_live_at(now))
            .map(|t| AccessToken::clone(&t)))
    }

    /// Keeps whichever of `token` and the stored token expires later, in one
    /// atomic step per key. A token that has already expired is accepted
    /// (reported as [`PutOutcome::Stored`], as `get` treats it exactly like
    /// a stored expired token) but not kept, so it never evicts a live one.
    async fn put(&self, key: &CacheKey, token: &AccessToken) -> Result<PutOutcome, StoreError> {
        let expires_at = storable_expiry(token)?;
        let already_expired = !token.is_live_at(SystemTime::now());
        let candidate = Arc::new(token.clone());
        let result = self
            .tokens
            .entry_by_ref(key)
            .and_compute_with(|current| {
                let stored_is_newer = current.is_some_and(|e| {
                    e.value()
                        .expires_at()
                        .is_some_and(|stored| stored > expires_at)
                });
                std::future::ready(if stored_is_newer {
                    Op::Nop
                } else if already_expired {
                    // Whatever is there expired even earlier: drop it, and
                    // do not let a dead token take a live one's room.
                    Op::Remove
                } else {
                    Op::Put(candidate)
                })
            })
            .await;
        Ok(match result {
            CompResult::Unchanged(_) => PutOutcome::KeptNewer,
            _ => PutOutcome::Stored,
        })
    }

    async fn remove(&self, key: &CacheKey) -> Result<(), StoreError> {
        self.tokens.invalidate(key).await;
        Ok(())
    }

    /// Removes the token only if it is still `rejected`, comparing and
    /// removing in one atomic step per key: a newer token stored meanwhile is
    /// never dropped, and concurrent invalidations of one token report one
    /// removal. No events are sent: the store is not shared between
    /// instances ([`subscribe`](CacheStore::subscribe) is `None`).
    async fn invalidate(&self, key: &CacheKey, rejected: &AccessToken) -> Result<bool, StoreError> {
        let result = self
            .tokens
            .entry_by_ref(key)
            .and_compute_with(|current| {
                let is_rejected = current.is_some_and(|e| e.value().same_secret(rejected));
                std::future::ready(if is_rejected { Op::Remove } else { Op::Nop })
            })
            .await;
        Ok(matches!(result, CompResult::Removed(_)))
    }

    async fn try_acquire_lease(
        &self,
        key: &CacheKey,
        ttl: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        Ok(self.leases.try_acquire(key, ttl))
    }

    async fn release_lease(&self, key: &CacheKey, lease: &Lease) -> Result<bool, StoreError> {
        Ok(self.leases.release(key, lease))
    }
}

/// Configures a [`MemoryStore`].
#[derive(Clone, Debug)]
pub struct MemoryStoreBuilder {
    max_entries: u64,
    name: Option<String>,
}

impl Default for MemoryStoreBuilder {
    fn default() -> Self {
        Self {
            max_entries: DEFAULT_MAX_ENTRIES,
            name: None,
        }
    }
}

impl MemoryStoreBuilder {
    /// The most tokens the store keeps. Defaults to [`DEFAULT_MAX_ENTRIES`].
    pub fn max_entries(mut self, max_entries: u64) -> Self {
        self.max_entries = max_entries;
        self
    }

    /// A name for the store, shown in its `Debug` output. Defaults to none.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Builds the store.
    pub fn build(self) -> MemoryStore {
        let mut tokens = Cache::builder()
            .max_capacity(self.max_entries)
            .expire_after(ExpireWithToken);
        if let Some(name) = &self.name {
            tokens = tokens.name(name);
        }
        MemoryStore {
            tokens: tokens.build(),
            leases: Arc::default(),
            max_entries: self.max_entries,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: Duration = Duration::from_secs(3600);

    fn token(secret: &str, lifetime: Duration) -> AccessToken {
        AccessToken::new(secret, SystemTime::now()).with_expires_in(lifetime)
    }

    #[tokio::test]
    async fn moka_drops_an_entry_when_its_token_expires() {
        let store = MemoryStore::new(100);
        let key = CacheKey::from_raw("short");
        store
            .put(&key, &token("short", Duration::from_millis(200)))
            .await
            .unwrap();
        assert!(store.tokens.contains_key(&key));
        tokio::time::sleep(Duration::from_millis(400)).await;
        // moka itself (not only the wall-clock check in `get`) let it go.
        assert!(!store.tokens.contains_key(&key));
        // And frees it at its timer wheel's next tick (about a second).
        assert_eventually_empty(&store).await;
    }

    async fn assert_eventually_empty(store: &MemoryStore) {
        for _ in 0..50 {
            store.run_pending_tasks().await;
            if store.entry_count() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{} entries still counted after 5 s", store.entry_count());
    }

    #[tokio::test]
    async fn a_newer_token_resets_the_entrys_expiry() {
        let store = MemoryStore::new(100);
        let key = CacheKey::from_raw("k");
        store
            .put(&key, &token("short", Duration::from_millis(200)))
            .await
            .unwrap();
        assert_eq!(
            store.put(&key, &token("long", LONG)).await.unwrap(),
            PutOutcome::Stored
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(store.tokens.contains_key(&key));
        assert_eq!(
            store.get(&key).await.unwrap().unwrap().secret().expose(),
            "long"
        );
    }

    #[tokio::test]
    async fn an_older_token_leaves_the_entrys_expiry_alone() {
        let store = MemoryStore::new(100);
        let key = CacheKey::from_raw("k");
        store.put(&key, &token("long", LONG)).await.unwrap();
        assert_eq!(
            store
                .put(&key, &token("short", Duration::from_millis(100)))
                .await
                .unwrap(),
            PutOutcome::KeptNewer
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            store.get(&key).await.unwrap().unwrap().secret().expose(),
            "long"
        );
    }

    #[tokio::test]
    async fn an_expired_token_is_never_kept() {
        let store = MemoryStore::new(100);
        let key = CacheKey::from_raw("k");
        let expired = AccessToken::new("old", SystemTime::now() - LONG)
            .with_expires_at(SystemTime::now() - Duration::from_secs(1));
        store.put(&key, &expired).await.unwrap();
        assert!(store.get(&key).await.unwrap().is_none());
        store.run_pending_tasks().await;
        assert_eq!(store.entry_count(), 0);
    }

    #[tokio::test]
    async fn a_zero_bound_keeps_nothing_after_maintenance() {
        let store = MemoryStore::new(0);
        let key = CacheKey::from_raw("k");
        assert_eq!(
            store.put(&key, &token("t", LONG)).await.unwrap(),
            PutOutcome::Stored
        );
        store.run_pending_tasks().await;
        assert!(store.get(&key).await.unwrap().is_none());
        assert_eq!(store.entry_count(), 0);
    }

    #[tokio::test]
    async fn the_number_of_entries_is_bounded() {
        let store = MemoryStore::new(10);
        for i in 0..200 {
            store
                .put(&CacheKey::from_raw(format!("k{i}")), &token("t", LONG))
                .await
                .unwrap();
        }
        store.run_pending_tasks().await;
        assert!(
            store.entry_count() <= 10,
            "{} entries kept",
            store.entry_count()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn invalidate_is_one_atomic_step() {
        let store = MemoryStore::default();
        for round in 0..200 {
            let key = CacheKey::from_raw(format!("k{round}"));
            let rejected = token("rejected", LONG);
            let newer = token("newer", LONG * 2);
            store.put(&key, &rejected).await.unwrap();
            let invalidations: Vec<_> = (0..4)
                .map(|_| {
                    let (store, key, rejected) = (store.clone(), key.clone(), rejected.clone());
                    tokio::spawn(async move { store.invalidate(&key, &rejected).await.unwrap() })
                })
                .collect();
            let put = {
                let (store, key) = (store.clone(), key.clone());
                tokio::spawn(async move { store.put(&key, &newer).await.unwrap() })
            };
            let mut removals = 0;
            for task in invalidations {
                removals += usize::from(task.await.unwrap());
            }
            put.await.unwrap();
            assert!(
                removals <= 1,
                "round {round}: {removals} invalidations reported a removal"
            );
            let kept = store
                .get(&key)
                .await
                .unwrap()
                .expect("the newer token survives");
            assert_eq!(kept.secret().expose(), "newer", "round {round}");
        }
    }

    #[tokio::test]
    async fn invalidate_removes_only_the_rejected_token() {
        let store = MemoryStore::default();
        let key = CacheKey::from_raw("k");
        let stored = token("stored", LONG);
        store.put(&key, &stored).await.unwrap();
        assert!(!store.invalidate(&key, &token("other", LONG)).await.unwrap());
        assert!(store.invalidate(&key, &stored).await.unwrap());
        assert!(store.get(&key).await.unwrap().is_none());
        assert!(!store.invalidate(&key, &stored).await.unwrap());
        assert!(store.subscribe().is_none());
    }

    #[tokio::test]
    async fn clones_share_entries_and_leases() {
        let a = MemoryStore::default();
        let b = a.clone();
        let key = CacheKey::from_raw("k");
        a.put(&key, &token("t", LONG)).await.unwrap();
        assert!(b.get(&key).await.unwrap().is_some());
        let lease = b.try_acquire_lease(&key, LONG).await.unwrap().unwrap();
        assert!(a.try_acquire_lease(&key, LONG).await.unwrap().is_none());
        assert!(a.release_lease(&key, &lease).await.unwrap());
    }

    #[test]
    fn defaults_and_debug() {
        let store = MemoryStore::builder().name("tokens").build();
        assert_eq!(store.max_entries(), DEFAULT_MAX_ENTRIES);
        assert_eq!(store.name(), Some("tokens"));
        assert_eq!(MemoryStore::default().max_entries(), DEFAULT_MAX_ENTRIES);
        assert_eq!(store.capabilities(), StoreCapabilities::local());
        let debug = format!("{store:?}");
        assert!(
            debug.starts_with("MemoryStore { name: Some(\"tokens\"), entries: 0"),
            "{debug}"
        );
    }

    #[tokio::test]
    async fn debug_never_shows_a_secret() {
        let store = MemoryStore::default();
        store
            .put(&CacheKey::from_raw("k"), &token("very-secret-value", LONG))
            .await
            .unwrap();
        assert!(!format!("{store:?}").contains("very-secret-value"));
    }
}
