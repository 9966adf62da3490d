//! The token-conformance suite, run on `SledStore`: a fresh database in a
//! temporary directory per check, with raw access to the stored envelopes
//! so the corruption checks can damage them.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use token_conformance::{Fixture, RawAccess};
use token_core::{
    AccessToken, CacheKey, CacheStore, EncryptionKey, Keyring, Lease, PutOutcome,
    StoreCapabilities, StoreError, StoreStats,
};
use token_sled::SledStore;

/// The store, keeping its temporary directory alive as long as it is used.
#[derive(Debug, Clone)]
struct InTempDir {
    store: SledStore,
    _dir: Arc<tempfile::TempDir>,
}

#[async_trait]
impl CacheStore for InTempDir {
    fn capabilities(&self) -> StoreCapabilities {
        self.store.capabilities()
    }
    async fn get(&self, key: &CacheKey) -> Result<Option<AccessToken>, StoreError> {
        self.store.get(key).await
    }
    async fn put(&self, key: &CacheKey, token: &AccessToken) -> Result<PutOutcome, StoreError> {
        self.store.put(key, token).await
    }
    async fn remove(&self, key: &CacheKey) -> Result<(), StoreError> {
        self.store.remove(key).await
    }
    async fn try_acquire_lease(
        &self,
        key: &CacheKey,
        ttl: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        self.store.try_acquire_lease(key, ttl).await
    }
    async fn release_lease(&self, key: &CacheKey, lease: &Lease) -> Result<bool, StoreError> {
        self.store.release_lease(key, lease).await
    }
    fn stats(&self) -> StoreStats {
        self.store.stats()
    }
}

#[async_trait]
impl RawAccess for InTempDir {
    async fn write_raw(&self, key: &CacheKey, bytes: &[u8]) -> Result<(), StoreError> {
        Ok(self.store.write_envelope(key, bytes).await?)
    }
    async fn read_raw(&self, key: &CacheKey) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.store.read_envelope(key)?)
    }
}

fn main() {
    token_conformance::run_main("sled", || async {
        let dir = Arc::new(tempfile::tempdir()?);
        let keyring = Keyring::new(EncryptionKey::generate()?);
        let store = SledStore::open(dir.path().join("tokens"), keyring).await?;
        let handle = InTempDir { store, _dir: dir };
        // A clone is a second handle on the same database, as in one process.
        Ok(Fixture::new(handle.clone())
            .with_second(handle.clone())
            .with_raw_access(handle))
    })
}
