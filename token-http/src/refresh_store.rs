//! `StoredRefreshToken`: a refresh-token credential whose rotated refresh
//! tokens live in the cache's store, so that every process redeems the
//! newest one and an IdP with reuse detection never sees an old one twice.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use token_core::{
    AccessToken, CacheKey, CacheStore, Clock, Credential, CredentialError, FailureCause, Lease,
    Secret, SystemClock, TokenRequest,
};

/// How long a rotated refresh token is kept in the store after it was
/// obtained. Defaults to this: longer than the refresh-token lifetimes IdPs
/// commonly give idle clients (Entra ID 90 days, Okta and Auth0 up to 30
/// days inactive, Keycloak's offline tokens 30 days), so the store forgets
/// a refresh token only after the IdP would have.
pub const DEFAULT_REFRESH_TOKEN_RETENTION: Duration = Duration::from_secs(90 * 24 * 3600);

/// How long the lease on the stored refresh token lasts. Defaults to this:
/// a redemption is one token request (8 s by default) plus a few store
/// calls, so a live holder keeps it throughout, and a holder that died
/// blocks the others for at most this long.
pub const DEFAULT_REFRESH_LEASE_TTL: Duration = Duration::from_secs(30);

/// How long a fetch waits for another process's redemption before giving
/// up with a transient error (the cache's backoff tries again). Defaults to
/// this: a redemption takes milliseconds to a few seconds, and the wait
/// stays well inside the cache's 10 s fetch timeout.
pub const DEFAULT_REFRESH_LEASE_WAIT: Duration = Duration::from_secs(5);

/// Wraps a refresh-token credential (normally
/// [`OAuthCredential::refresh_token`](crate::OAuthCredential::refresh_token))
/// so that the refresh token it redeems is always the newest one, across
/// processes sharing the store.
///
/// A refresh token belongs to the grant, not to one cached access token:
/// tokens for several scopes or audiences are all minted from it, and an IdP
/// that rotates refresh tokens invalidates the old one at every use (with
/// reuse detection, presenting the old one again revokes the whole grant).
/// So this credential keeps one record per credential, under its own key in
/// the store, holding the newest refresh token, and redeems it under the
/// store's lease on that key:
///
/// 1. take the record's lease (waiting, bounded, for another process's
///    redemption to finish);
/// 2. read the newest refresh token: the record's, else the previous
///    token's, else the one configured on the inner credential;
/// 3. redeem it through the inner credential;
/// 4. store the refresh token the IdP returned (rotated or not) in the
///    record before the lease is released, then release.
///
/// The record is an [`AccessToken`] whose secret is the refresh token, so it
/// is encrypted wherever the store encrypts (sled always, Redis with a
/// keyring). It expires [`DEFAULT_REFRESH_TOKEN_RETENTION`] after it was
/// written; each record is stored to expire later than the one it replaces,
/// whatever the clocks of the writing hosts say, so the store's newer-wins
/// `put` keeps the newest.
///
/// # Cancellation
///
/// Steps 2 to 4 run in a spawned task: if the caller's future is dropped
/// (the cache's fetch timeout, a caller going away) after the IdP rotated the
/// refresh token, the task still stores the new one and releases the lease.
/// Dropping it there would lose the only valid refresh token, and the next
/// redemption would present the rotated-away one.
///
/// # Failures
///
/// If the store cannot be read or the lease taken, the fetch fails with a
/// transient error instead of redeeming a refresh token that another
/// process may already have rotated away. If the new refresh token cannot
/// be written (after a retry), the token is still returned, the refresh
/// token is kept in this process and written before its next redemption,
/// and a warning is logged: the engine's own `put` of the access token
/// (which carries it) is the second copy.
///
/// # Identity
///
/// [`id`](Credential::id) is the inner credential's, so cache keys do not
/// change when a credential is wrapped. The record's key is derived from it.
pub struct StoredRefreshToken<C> {
    shared: Arc<Shared<C>>,
    config: Config,
}

/// What a redemption shares with the task it runs in.
struct Shared<C> {
    inner: C,
    store: Arc<dyn CacheStore>,
    record_key: CacheKey,
    /// A refresh token obtained but not yet written to the store.
    unsaved: Mutex<Option<(Secret, SystemTime)>>,
}

#[derive(Clone)]
struct Config {
    clock: Arc<dyn Clock>,
    retention: Duration,
    lease_ttl: Duration,
    lease_wait: Duration,
}

impl<C: Credential + 'static> StoredRefreshToken<C> {
    /// Wraps `inner`, keeping its refresh tokens in `store` (the same store
    /// the cache uses).
    pub fn new(inner: C, store: Arc<dyn CacheStore>) -> Self {
        let record_key = Self::record_key_for(inner.id());
        Self {
            shared: Arc::new(Shared {
                inner,
                store,
                record_key,
                unsaved: Mutex::new(None),
            }),
            config: Config {
                clock: Arc::new(SystemClock),
                retention: DEFAULT_REFRESH_TOKEN_RETENTION,
                lease_ttl: DEFAULT_REFRESH_LEASE_TTL,
                lease_wait: DEFAULT_REFRESH_LEASE_WAIT,
            },
        }
    }

    /// The key of the record for a credential with identity `id`.
    pub fn record_key_for(id: &str) -> CacheKey {
        CacheKey::new(&format!("{id}|refresh-token"), &TokenRequest::new())
    }

    /// The key under which the newest refresh token is stored.
    pub fn record_key(&self) -> &CacheKey {
        &self.shared.record_key
    }

    /// The wrapped credential.
    pub fn inner(&self) -> &C {
        &self.shared.inner
    }

    /// How long a stored refresh token is kept. Defaults to
    /// [`DEFAULT_REFRESH_TOKEN_RETENTION`].
    pub fn retention(mut self, retention: Duration) -> Self {
        self.config.retention = retention;
        self
    }

    /// How long the record's lease lasts. Defaults to
    /// [`DEFAULT_REFRESH_LEASE_TTL`]; keep it above the inner credential's
    /// request timeout.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.config.lease_ttl = ttl;
        self
    }

    /// How long to wait for another process's redemption. Defaults to
    /// [`DEFAULT_REFRESH_LEASE_WAIT`].
    pub fn lease_wait(mut self, wait: Duration) -> Self {
        self.config.lease_wait = wait;
        self
    }

    /// The clock for record times and lease waits. Defaults to
    /// [`SystemClock`]; tests share a `ManualClock` with the cache.
    pub fn clock_arc(mut self, clock: Arc<dyn Clock>) -> Self {
        self.config.clock = clock;
        self
    }
}

impl<C: Credential> Shared<C> {
    fn store_failed(&self, what: &str, e: &token_core::StoreError) -> CredentialError {
        CredentialError::transient(format!(
            "the store holding the newest refresh token could not {what} ({e}); not redeeming \
             a refresh token that another process may already have rotated away"
        ))
        .with_cause(FailureCause::Store)
    }

    async fn acquire(&self, cfg: &Config) -> Result<Lease, CredentialError> {
        let deadline = cfg.clock.monotonic() + cfg.lease_wait;
        let mut delay = Duration::from_millis(10);
        loop {
            match self
                .store
                .try_acquire_lease(&self.record_key, cfg.lease_ttl)
                .await
            {
                Ok(Some(lease)) => return Ok(lease),
                Ok(None) => {}
                Err(e) => return Err(self.store_failed("be locked", &e)),
            }
            let now = cfg.clock.monotonic();
            if now >= deadline {
                return Err(CredentialError::transient(format!(
                    "another process has been redeeming the refresh token for longer than {:?}; \
                     not redeeming it concurrently",
                    cfg.lease_wait
                ))
                .with_cause(FailureCause::Store));
            }
            cfg.clock.sleep(delay.min(deadline - now)).await;
            delay = (delay * 2).min(Duration::from_millis(500));
        }
    }

    /// Writes `refresh_token` as the newest record, later-expiring than
    /// `after` (the record it replaces).
    async fn save(&self, cfg: &Config, refresh_token: &Secret, after: Option<SystemTime>) -> bool {
        let now = cfg.clock.now();
        let written = match after {
            Some(prev) if prev >= now => prev + Duration::from_millis(1),
            _ => now,
        };
        let record = AccessToken::new(refresh_token.clone(), written)
            .with_expires_at(written + cfg.retention)
            .with_refresh_at(written + cfg.retention);
        for _ in 0..2 {
            match self.store.put(&self.record_key, &record).await {
                Ok(_) => return true,
                Err(e) => {
                    tracing::warn!(key = %self.record_key, error = %e, "could not store the rotated refresh token")
                }
            }
        }
        *self.unsaved.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((refresh_token.clone(), written));
        false
    }

    async fn redeem(
        &self,
        cfg: &Config,
        request: &TokenRequest,
        previous: Option<&AccessToken>,
    ) -> Result<AccessToken, CredentialError> {
        let stored = self
            .store
            .get(&self.record_key)
            .await
            .map_err(|e| self.store_failed("be read", &e))?;
        let unsaved = self
            .unsaved
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        // The newest refresh token known: one this process obtained but could
        // not write is newer than the record it failed to replace.
        let (newest, written) = match (unsaved, stored) {
            (Some((rt, at)), _) => (Some(rt), Some(at)),
            (None, Some(record)) => (Some(record.secret().clone()), Some(record.obtained_at())),
            (None, None) => (None, None),
        };
        let now = cfg.clock.now();
        let carrier = match (&newest, previous) {
            (Some(rt), Some(p)) => Some(p.clone().with_refresh_token(rt.clone())),
            (Some(rt), None) => {
                Some(AccessToken::new(Secret::new(""), now).with_refresh_token(rt.clone()))
            }
            (None, p) => p.cloned(),
        };
        let token = self.inner.fetch(request, carrier.as_ref()).await?;
        match token.refresh_token() {
            Some(rt) => {
                let changed = newest.as_ref().is_none_or(|n| n != rt);
                let pending = self
                    .unsaved
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take();
                if (changed || pending.is_some()) && self.save(cfg, rt, written).await {
                    tracing::debug!(key = %self.record_key, rotated = changed, "stored the newest refresh token");
                }
            }
            None => tracing::debug!(
                key = %self.record_key,
                "the credential returned no refresh token; the stored one is kept"
            ),
        }
        Ok(token)
    }
}

#[async_trait]
impl<C: Credential + 'static> Credential for StoredRefreshToken<C> {
    fn id(&self) -> &str {
        self.shared.inner.id()
    }

    async fn fetch(
        &self,
        request: &TokenRequest,
        previous: Option<&AccessToken>,
    ) -> Result<AccessToken, CredentialError> {
        let shared = Arc::clone(&self.shared);
        let cfg = self.config.clone();
        let lease = shared.acquire(&cfg).await?;
        let request = request.clone();
        let previous = previous.cloned();
        // Detached from the caller: see "Cancellation" above.
        let task = tokio::spawn(async move {
            let result = shared.redeem(&cfg, &request, previous.as_ref()).await;
            if let Err(e) = shared.store.release_lease(&shared.record_key, &lease).await {
                // It expires by itself after the TTL.
                tracing::warn!(key = %shared.record_key, error = %e, "could not release the refresh-token lease");
            }
            result
        });
        match task.await {
            Ok(result) => result,
            Err(e) if e.is_panic() => Err(CredentialError::permanent(
                "the refresh-token credential panicked while redeeming; the lease expires by itself",
            )),
            Err(_) => Err(CredentialError::transient(
                "the refresh-token redemption was cancelled (the runtime is shutting down)",
            )),
        }
    }
}

impl<C: fmt::Debug> fmt::Debug for StoredRefreshToken<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.shared;
        f.debug_struct("StoredRefreshToken")
            .field("inner", &s.inner)
            .field("record_key", &s.record_key)
            .field("retention", &self.config.retention)
            .field("lease_ttl", &self.config.lease_ttl)
            .finish_non_exhaustive()
    }
}
