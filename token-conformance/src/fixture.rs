//! What a backend hands the suite: the store under test, optional extra
//! handles, and the factory that makes a fresh one per check.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use token_core::{BoxError, CacheKey, CacheStore, StoreCapabilities, StoreError};

use crate::failure::CheckFailure;

/// Direct access to the bytes a serialized store keeps for a key, so the
/// suite can corrupt them.
///
/// Only stores whose capabilities say [`serialized`](StoreCapabilities::serialized)
/// need it; the corruption checks are skipped (and say so) without it.
///
/// # Contract
///
/// - [`read_raw`](Self::read_raw) returns exactly the bytes that
///   [`CacheStore::get`] decodes for `key` (the encrypted envelope for an
///   encrypted store), or `None` when nothing is stored.
/// - [`write_raw`](Self::write_raw) replaces those bytes, and keeps whatever
///   else the store needs for the entry to be read by `get` (for example a
///   server-side TTL long enough to outlive the check). It does not validate
///   the bytes.
/// - Both address the same entry `get` reads for `key`, under the same
///   isolation (key prefix) as the store in the same [`Fixture`]. The suite
///   verifies this before it trusts any corruption check.
#[async_trait]
pub trait RawAccess: Send + Sync {
    /// Replaces the stored bytes of `key` with `bytes`.
    async fn write_raw(&self, key: &CacheKey, bytes: &[u8]) -> Result<(), StoreError>;

    /// The stored bytes of `key`, if any.
    async fn read_raw(&self, key: &CacheKey) -> Result<Option<Vec<u8>>, StoreError>;
}

/// One store under test, as the factory gives it to a single check.
///
/// - [`store`](Self::store): the store itself, fresh and isolated from every
///   other fixture (a new instance, or a random key prefix on a shared
///   server), so checks can run in parallel.
/// - [`second`](Self::second): optionally, another handle on the *same* data
///   (for a shared store, a second client or connection pool, as another
///   process would have; for an in-process store, a clone that shares its
///   entries). Enables the cross-instance checks.
/// - [`raw_access`](Self::raw_access): optionally, a [`RawAccess`] hook for
///   serialized stores. Enables the corruption checks.
///
/// ```
/// # use std::sync::Arc;
/// # use token_conformance::Fixture;
/// # fn connect() -> Arc<dyn token_core::CacheStore> { unimplemented!() }
/// # fn build() -> Fixture {
/// let fixture = Fixture::from_arc(connect()).with_second_arc(connect());
/// # fixture }
/// ```
#[derive(Clone)]
pub struct Fixture {
    store: Arc<dyn CacheStore>,
    second: Option<Arc<dyn CacheStore>>,
    raw: Option<Arc<dyn RawAccess>>,
}

impl Fixture {
    /// A fixture for `store`, with no second handle and no raw access.
    pub fn new(store: impl CacheStore + 'static) -> Self {
        Self::from_arc(Arc::new(store))
    }

    /// Like [`new`](Self::new), for a store already behind an `Arc`.
    pub fn from_arc(store: Arc<dyn CacheStore>) -> Self {
        Self {
            store,
            second: None,
            raw: None,
        }
    }

    /// Adds a second handle on the same data as the store.
    pub fn with_second(self, second: impl CacheStore + 'static) -> Self {
        self.with_second_arc(Arc::new(second))
    }

    /// Like [`with_second`](Self::with_second), for a handle behind an `Arc`.
    pub fn with_second_arc(mut self, second: Arc<dyn CacheStore>) -> Self {
        self.second = Some(second);
        self
    }

    /// Adds raw access to the store's bytes.
    pub fn with_raw_access(self, raw: impl RawAccess + 'static) -> Self {
        self.with_raw_access_arc(Arc::new(raw))
    }

    /// Like [`with_raw_access`](Self::with_raw_access), for a hook behind an
    /// `Arc`.
    pub fn with_raw_access_arc(mut self, raw: Arc<dyn RawAccess>) -> Self {
        self.raw = Some(raw);
        self
    }

    /// The store under test.
    pub fn store(&self) -> &Arc<dyn CacheStore> {
        &self.store
    }

    /// The second handle on the same data, if the fixture has one.
    pub fn second(&self) -> Option<&Arc<dyn CacheStore>> {
        self.second.as_ref()
    }

    /// The raw-access hook, if the fixture has one.
    pub fn raw_access(&self) -> Option<&Arc<dyn RawAccess>> {
        self.raw.as_ref()
    }

    /// The store's capabilities.
    pub fn capabilities(&self) -> StoreCapabilities {
        self.store.capabilities()
    }

    /// The second handle, or a skip that says why the check needs one.
    pub(crate) fn require_second(&self) -> Result<&Arc<dyn CacheStore>, CheckFailure> {
        match &self.second {
            Some(second) => Ok(second),
            None if self.capabilities().shared => Err(CheckFailure::skipped(
                "the store is shared, but the fixture gives no second handle on the same data \
                 (Fixture::with_second), so cross-instance behaviour cannot be checked",
            )),
            None => Err(CheckFailure::skipped(
                "the fixture gives no second handle on the same data (Fixture::with_second)",
            )),
        }
    }

    /// A skip unless the store is shared, saying why `check` needs that.
    pub(crate) fn require_shared(&self, why: &str) -> Result<(), CheckFailure> {
        if self.capabilities().shared {
            Ok(())
        } else {
            Err(CheckFailure::skipped(format!(
                "the store is not shared (capabilities().shared is false): {why}"
            )))
        }
    }

    /// The raw hook of a serialized store, or a skip that says why the check
    /// does not apply.
    pub(crate) fn require_serialized(&self) -> Result<&dyn RawAccess, CheckFailure> {
        if !self.capabilities().serialized {
            return Err(CheckFailure::skipped(
                "the store is not serialized (capabilities().serialized is false): it keeps no \
                 bytes that could be corrupted",
            ));
        }
        match &self.raw {
            Some(raw) => Ok(&**raw),
            None => Err(CheckFailure::skipped(
                "the store is serialized, but the fixture gives no raw access to its bytes \
                 (Fixture::with_raw_access)",
            )),
        }
    }

    /// The raw hook of an encrypted store, or a skip that says why the check
    /// does not apply.
    pub(crate) fn require_encrypted(&self) -> Result<&dyn RawAccess, CheckFailure> {
        if !self.capabilities().encrypted {
            return Err(CheckFailure::skipped(
                "the store is not encrypted (capabilities().encrypted is false)",
            ));
        }
        match &self.raw {
            Some(raw) => Ok(&**raw),
            None => Err(CheckFailure::skipped(
                "the store is encrypted, but the fixture gives no raw access to its bytes \
                 (Fixture::with_raw_access)",
            )),
        }
    }
}

impl fmt::Debug for Fixture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fixture")
            .field("store", &self.store)
            .field("second", &self.second)
            .field("raw_access", &self.raw.is_some())
            .finish()
    }
}

/// The future a [`FixtureFactory`] returns.
pub type FixtureFuture = Pin<Box<dyn Future<Output = Result<Fixture, BoxError>> + Send>>;

/// Makes a fresh, isolated [`Fixture`] for each check.
///
/// Implemented for every `Fn() -> impl Future<Output = Result<Fixture,
/// BoxError>>` closure that is `Send + Sync + 'static`, so a factory is
/// usually written inline:
///
/// ```
/// # use std::sync::Arc;
/// use token_conformance::{Fixture, FixtureFactory};
/// # fn connect(prefix: &str) -> Result<Arc<dyn token_core::CacheStore>, std::io::Error> { unimplemented!() }
///
/// fn factory() -> impl FixtureFactory {
///     || async {
///         // `?` works on any error type; each call gets its own key prefix.
///         let prefix = format!("conformance:{:x}:", token_core::backend::random_u128());
///         Ok(Fixture::from_arc(connect(&prefix)?))
///     }
/// }
/// ```
///
/// A factory that cannot build a fixture (a server is missing) returns an
/// error; every check that needs the fixture then fails with it.
pub trait FixtureFactory: Send + Sync + 'static {
    /// Starts making a fresh fixture.
    fn make(&self) -> FixtureFuture;
}

impl<F, Fut> FixtureFactory for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Fixture, BoxError>> + Send + 'static,
{
    fn make(&self) -> FixtureFuture {
        Box::pin(self())
    }
}
