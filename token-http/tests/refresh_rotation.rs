//! Refresh-token rotation against a real authorization server: panva's
//! `oidc-provider` (npm, `tests/idp/server.js`, installed by `cargo xtask
//! test`), whose `refresh-client` rotates its refresh token at every use and
//! revokes the whole grant when a rotated-away one is presented again.
//!
//! Several `TokenCache`s with their own credentials stand for processes that
//! share one store. Without node or the installed package the tests skip
//! loudly; under `CI` that is a failure.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use token_core::{
    AccessToken, CacheKey, CacheStore, Credential, Lease, PutOutcome, StoreCapabilities,
    StoreError, TokenCache, TokenRequest,
};
use token_http::{OAuthCredential, StoredRefreshToken};
use token_memory::MemoryStore;
use token_testkit::Idp;

/// A memory store whose reads or writes can be made to fail.
#[derive(Debug)]
struct Flaky {
    inner: MemoryStore,
    fail_get: AtomicBool,
    fail_put: AtomicBool,
    slow_put: AtomicBool,
}

impl Flaky {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            inner: MemoryStore::new(100),
            fail_get: AtomicBool::new(false),
            fail_put: AtomicBool::new(false),
            slow_put: AtomicBool::new(false),
        })
    }
}

fn down() -> StoreError {
    StoreError::Unavailable {
        message: "injected failure".into(),
        source: None,
    }
}

#[async_trait]
impl CacheStore for Flaky {
    fn capabilities(&self) -> StoreCapabilities {
        self.inner.capabilities()
    }
    async fn get(&self, key: &CacheKey) -> Result<Option<AccessToken>, StoreError> {
        if self.fail_get.load(Ordering::SeqCst) {
            return Err(down());
        }
        self.inner.get(key).await
    }
    async fn put(&self, key: &CacheKey, token: &AccessToken) -> Result<PutOutcome, StoreError> {
        if self.fail_put.load(Ordering::SeqCst) {
            return Err(down());
        }
        if self.slow_put.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
        self.inner.put(key, token).await
    }
    async fn remove(&self, key: &CacheKey) -> Result<(), StoreError> {
        self.inner.remove(key).await
    }
    async fn try_acquire_lease(
        &self,
        key: &CacheKey,
        ttl: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        self.inner.try_acquire_lease(key, ttl).await
    }
    async fn release_lease(&self, key: &CacheKey, lease: &Lease) -> Result<bool, StoreError> {
        self.inner.release_lease(key, lease).await
    }
}

fn oauth(idp: &Idp, rt: &str) -> OAuthCredential {
    OAuthCredential::refresh_token(idp.token_url(), "refresh-client", rt)
        .build()
        .unwrap()
}

/// One "process": its own credential (and its own in-memory idea of the
/// newest refresh token) and engine, on the shared store.
fn process(idp: &Idp, rt: &str, store: &Arc<dyn CacheStore>) -> TokenCache {
    let credential = StoredRefreshToken::new(oauth(idp, rt), Arc::clone(store));
    TokenCache::builder(credential)
        .store_arc(Arc::clone(store))
        .build()
}

fn scopes(s: &[&str]) -> TokenRequest {
    TokenRequest::builder().scopes(s).build()
}

#[tokio::test]
async fn every_process_redeems_the_newest_rotated_refresh_token() {
    let Some(idp) = Idp::shared() else { return };
    let (rt0, account) = idp.refresh_token();
    let store: Arc<dyn CacheStore> = Arc::new(MemoryStore::new(1000));

    let a = process(idp, &rt0, &store);
    let read = a.get_token(&scopes(&["orders.read"])).await.unwrap();
    let record_key = StoredRefreshToken::<OAuthCredential>::record_key_for(oauth(idp, &rt0).id());
    let rt1 = store
        .get(&record_key)
        .await
        .unwrap()
        .expect("record stored");
    assert_ne!(rt1.secret().expose(), rt0, "the server rotates");

    // Another process, started with the same (now rotated-away) refresh
    // token, asks for another scope: it must redeem the stored newest one.
    let b = process(idp, &rt0, &store);
    let write = b.get_token(&scopes(&["orders.write"])).await.unwrap();
    assert_eq!(write.scope(), Some("orders.write"));
    assert!(!write.same_secret(&read));

    // And the first process refreshes its key: again the newest, which b
    // rotated.
    a.refresh(&scopes(&["orders.read"])).await.unwrap();
    let rt3 = store.get(&record_key).await.unwrap().expect("record");
    assert_ne!(rt3.secret(), rt1.secret());

    assert_eq!(
        idp.refresh_reuse(&account),
        0,
        "a rotated-away refresh token was presented"
    );
    // The grant is intact: a third process still gets tokens.
    let c = process(idp, &rt0, &store);
    c.get_token(&TokenRequest::new()).await.unwrap();
    assert_eq!(idp.refresh_reuse(&account), 0);
}

#[tokio::test]
async fn concurrent_processes_never_present_a_refresh_token_twice() {
    let Some(idp) = Idp::shared() else { return };
    let (rt0, account) = idp.refresh_token();
    let store: Arc<dyn CacheStore> = Arc::new(MemoryStore::new(1000));
    let requests = [
        scopes(&["orders.read"]),
        scopes(&["orders.write"]),
        scopes(&["orders.read", "orders.write"]),
        TokenRequest::new(),
    ];
    // Eight processes, two per key, all starting at once from the same
    // first refresh token.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let cache = process(idp, &rt0, &store);
        let request = requests[i % requests.len()].clone();
        tasks.push(tokio::spawn(async move {
            cache.get_token(&request).await.map(|_| ())
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(
        idp.refresh_reuse(&account),
        0,
        "a rotated-away refresh token was presented"
    );
    let last = process(idp, &rt0, &store);
    last.refresh(&requests[0]).await.unwrap();
    assert_eq!(idp.refresh_reuse(&account), 0);
}

/// The control: without the stored record, a second process holds only the
/// first refresh token, the server sees it twice and revokes the grant. This
/// is what the record prevents (and proves the test IdP really detects it).
#[tokio::test]
async fn without_the_record_a_second_process_reuses_the_rotated_token() {
    let Some(idp) = Idp::shared() else { return };
    let (rt0, account) = idp.refresh_token();
    let store: Arc<dyn CacheStore> = Arc::new(MemoryStore::new(1000));
    let plain = |rt: &str| {
        TokenCache::builder(oauth(idp, rt))
            .store_arc(Arc::clone(&store))
            .build()
    };
    plain(&rt0)
        .get_token(&scopes(&["orders.read"]))
        .await
        .unwrap();
    let e = plain(&rt0)
        .get_token(&scopes(&["orders.write"]))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("invalid_grant"), "{e}");
    assert_eq!(idp.refresh_reuse(&account), 1);
}

#[tokio::test]
async fn debug_shows_no_refresh_token() {
    let Some(idp) = Idp::shared() else { return };
    let (rt0, _) = idp.refresh_token();
    let store: Arc<dyn CacheStore> = Arc::new(MemoryStore::new(10));
    let credential = StoredRefreshToken::new(oauth(idp, &rt0), Arc::clone(&store));
    let cache = TokenCache::builder(StoredRefreshToken::new(
        oauth(idp, &rt0),
        Arc::clone(&store),
    ))
    .store_arc(Arc::clone(&store))
    .build();
    let token = cache.get_token(&TokenRequest::new()).await.unwrap();
    let record = store
        .get(credential.record_key())
        .await
        .unwrap()
        .expect("record");
    let debug = format!("{credential:?} {record:?} {token:?}");
    assert!(!debug.contains(&rt0), "{debug}");
    assert!(!debug.contains(record.secret().expose()), "{debug}");
    assert!(!credential.id().contains(&rt0));
}

#[tokio::test]
async fn an_unreadable_store_stops_the_redemption_instead_of_guessing() {
    let Some(idp) = Idp::shared() else { return };
    let (rt0, account) = idp.refresh_token();
    let flaky = Flaky::new();
    let store: Arc<dyn CacheStore> = flaky.clone();
    let credential = StoredRefreshToken::new(oauth(idp, &rt0), Arc::clone(&store));
    flaky.fail_get.store(true, Ordering::SeqCst);
    let e = credential
        .fetch(&scopes(&["orders.read"]), None)
        .await
        .unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert!(e.to_string().contains("not redeeming"), "{e}");
    assert!(!e.to_string().contains(&rt0));
    // The IdP saw nothing: only the first refresh token was ever issued.
    assert_eq!(idp.refresh_tokens(&account).len(), 1);
    flaky.fail_get.store(false, Ordering::SeqCst);
    credential
        .fetch(&scopes(&["orders.read"]), None)
        .await
        .unwrap();
    assert_eq!(idp.refresh_reuse(&account), 0);
}

#[tokio::test]
async fn a_rotated_token_the_store_could_not_keep_is_the_next_one_redeemed() {
    let Some(idp) = Idp::shared() else { return };
    let (rt0, account) = idp.refresh_token();
    let flaky = Flaky::new();
    let store: Arc<dyn CacheStore> = flaky.clone();
    let credential = StoredRefreshToken::new(oauth(idp, &rt0), Arc::clone(&store));
    // The first rotation is stored; the second cannot be.
    credential
        .fetch(&scopes(&["orders.read"]), None)
        .await
        .unwrap();
    flaky.fail_put.store(true, Ordering::SeqCst);
    credential
        .fetch(&scopes(&["orders.write"]), None)
        .await
        .unwrap();
    flaky.fail_put.store(false, Ordering::SeqCst);
    // The record still holds the older one; this process redeems the newer
    // one it kept, and stores what that rotates to.
    credential.fetch(&TokenRequest::new(), None).await.unwrap();
    assert_eq!(idp.refresh_reuse(&account), 0);
    assert_eq!(idp.refresh_tokens(&account).len(), 4);
    // Another process now finds the newest in the record.
    let other = StoredRefreshToken::new(oauth(idp, &rt0), Arc::clone(&store));
    other.fetch(&scopes(&["orders.read"]), None).await.unwrap();
    assert_eq!(idp.refresh_reuse(&account), 0);
}

#[tokio::test]
async fn a_cancelled_fetch_still_stores_the_rotated_refresh_token() {
    let Some(idp) = Idp::shared() else { return };
    let (rt0, account) = idp.refresh_token();
    let flaky = Flaky::new();
    let store: Arc<dyn CacheStore> = flaky.clone();
    let credential = StoredRefreshToken::new(oauth(idp, &rt0), Arc::clone(&store));
    let record_key = credential.record_key().clone();
    // The caller gives up while the rotated token is being written (a fetch
    // timeout, a caller going away).
    flaky.slow_put.store(true, Ordering::SeqCst);
    let gave_up = tokio::time::timeout(
        Duration::from_millis(500),
        credential.fetch(&scopes(&["orders.read"]), None),
    )
    .await;
    assert!(gave_up.is_err(), "the fetch should still be writing");
    // The redemption carries on by itself and stores the new refresh token.
    let mut stored = None;
    for _ in 0..100 {
        stored = store.get(&record_key).await.unwrap();
        if stored.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(stored.is_some(), "the rotated refresh token was lost");
    flaky.slow_put.store(false, Ordering::SeqCst);
    let other = StoredRefreshToken::new(oauth(idp, &rt0), Arc::clone(&store));
    other.fetch(&scopes(&["orders.write"]), None).await.unwrap();
    assert_eq!(idp.refresh_reuse(&account), 0);
}
