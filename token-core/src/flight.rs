//! Obtaining a token for a key: the single flight that store reads, the
//! lease, the IdP fetch and the backoff bookkeeping all happen in.
//!
//! One flight runs per key in a process at a time, as a spawned task, so a
//! caller that gives up (is dropped) never cancels it for the others. Every
//! caller that needs the result subscribes to the flight's watch channel.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::engine::Inner;
use crate::error::Error;
use crate::slot::{FlightResult, Hot, Slot, SlotState};
use crate::stats::bump;
use crate::store::{CacheStore, Lease, StoreError};
use crate::token::AccessToken;

/// Polls a future, turning a panic inside it into `Err(())`.
struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, ()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let fut = self.0.as_mut();
        match catch_unwind(AssertUnwindSafe(|| fut.poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => Poll::Ready(Err(())),
        }
    }
}

/// Publishes the flight's result when dropped, even when the task is
/// cancelled (runtime shutdown), so that no slot is left "flying" forever.
struct FlightGuard<'a> {
    inner: &'a Inner,
    slot: &'a Slot,
    tx: Option<watch::Sender<FlightResult>>,
}

impl FlightGuard<'_> {
    fn finish(&mut self, result: Result<Arc<Hot>, Error>) {
        let Some(tx) = self.tx.take() else { return };
        let inner = self.inner;
        let slot = self.slot;
        {
            let mut st = slot.lock();
            match &result {
                Ok(hot) => {
                    slot.hot.store(Arc::clone(hot));
                    st.failures = 0;
                    st.last_error = None;
                    st.retry_at = None;
                    slot.retry_at_nanos.store(0, Ordering::Relaxed);
                }
                Err(err) => {
                    bump(&inner.stats.errors);
                    slot.hot.load().stale.store(true, Ordering::Relaxed);
                    if err.backs_off() {
                        st.failures = st.failures.saturating_add(1);
                        let delay = inner.policy.backoff(
                            st.failures,
                            err.retry_after(),
                            crate::rng::unit_f64(),
                        );
                        let at = inner.clock.monotonic() + delay;
                        st.retry_at = Some(at);
                        st.last_error = Some(err.clone());
                        slot.retry_at_nanos
                            .store(inner.nanos(at).max(1), Ordering::Relaxed);
                        tracing::warn!(
                            key = %slot.key, error = %err, failures = st.failures,
                            retry_in_ms = delay.as_millis() as u64,
                            "token fetch failed; backing off"
                        );
                    } else {
                        tracing::warn!(key = %slot.key, error = %err, "token fetch failed");
                    }
                }
            }
            st.flight = None;
            slot.flying.store(false, Ordering::Release);
        }
        tx.send_replace(Some(result));
    }
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        if self.tx.is_some() {
            self.finish(Err(Error::FetchCancelled));
        }
    }
}

/// Whether a stored token can stand in for a fetch.
enum Adopt {
    Yes(Arc<Hot>),
    /// Not usable, but the newest we know (its refresh token may be current).
    No(Box<AccessToken>),
}

/// What waiting for another instance's refresh ended with.
enum Waited {
    Adopted(Arc<Hot>),
    Acquired(Lease),
    GaveUp,
}

impl Inner {
    /// Starts a flight for `slot`; the caller holds the slot's lock and has
    /// checked that none is running.
    pub(crate) fn start_flight(
        self: &Arc<Self>,
        slot: &Arc<Slot>,
        st: &mut SlotState,
        runtime: &tokio::runtime::Handle,
        refresh: bool,
    ) -> watch::Receiver<FlightResult> {
        let (tx, rx) = watch::channel(None);
        st.flight = Some(rx.clone());
        slot.flying.store(true, Ordering::Release);
        let inner = Arc::clone(self);
        let slot = Arc::clone(slot);
        runtime.spawn(async move {
            let mut guard = FlightGuard { inner: &inner, slot: &slot, tx: Some(tx) };
            let result = match CatchUnwind(Box::pin(inner.obtain(&slot, refresh))).await {
                Ok(result) => result,
                Err(()) => {
                    bump(&inner.stats.panics);
                    tracing::error!(key = %slot.key, "token refresh panicked; contained, next call retries");
                    Err(Error::FetchPanicked)
                }
            };
            if refresh && result.is_ok() {
                bump(&inner.stats.refreshes);
            }
            guard.finish(result);
        });
        rx
    }

    /// Gets a token for `slot`: from the store if another instance already
    /// put a good one, otherwise from the IdP under the store's lease.
    async fn obtain(&self, slot: &Slot, refresh: bool) -> Result<Arc<Hot>, Error> {
        let current = slot.hot.load_full();
        // The newest token we know, even an expired one: its refresh token
        // may still be good.
        let mut previous: Option<AccessToken> =
            (!Arc::ptr_eq(&current, &self.empty)).then(|| current.token.clone());
        let mut lease = None;

        if let Some(store) = self.store_if_up() {
            if let Ok(Some(t)) = self.store_call(store.get(&slot.key)).await {
                match self.adoptable(t, refresh) {
                    Adopt::Yes(hot) => return Ok(hot),
                    Adopt::No(t) => previous = Some(*t),
                }
            }
        }
        if let Some(store) = self.store_if_up() {
            let ttl = self.policy.lease_ttl();
            match self
                .store_call(store.try_acquire_lease(&slot.key, ttl))
                .await
            {
                Ok(Some(l)) => {
                    // Re-check: another instance may have put a token
                    // between our read and our lease.
                    if let Ok(Some(t)) = self.store_call(store.get(&slot.key)).await {
                        match self.adoptable(t, refresh) {
                            Adopt::Yes(hot) => {
                                self.release(store, slot, &l).await;
                                return Ok(hot);
                            }
                            Adopt::No(t) => previous = Some(*t),
                        }
                    }
                    lease = Some(l);
                }
                Ok(None) => match self.wait_for_other(store, slot, refresh).await {
                    Waited::Adopted(hot) => return Ok(hot),
                    Waited::Acquired(l) => lease = Some(l),
                    Waited::GaveUp => {}
                },
                Err(()) => {}
            }
        }

        let result =
            crate::metrics::timed_fetch(self.credential.id(), self.fetch(slot, previous.as_ref()))
                .await;
        if let Ok(token) = &result {
            if let Some(store) = self.store_if_up() {
                let _ = self.store_call(store.put(&slot.key, token)).await;
            }
        }
        if let (Some(l), Some(store)) = (&lease, &self.store) {
            self.release(store, slot, l).await;
        }
        result.map(|t| self.make_hot(t))
    }

    async fn release(&self, store: &Arc<dyn CacheStore>, slot: &Slot, lease: &Lease) {
        let _ = self.store_call(store.release_lease(&slot.key, lease)).await;
    }

    /// Waits, bounded by the policy's lease wait, for the instance holding
    /// the lease to put a newer token; takes the lease over if it is freed.
    async fn wait_for_other(
        &self,
        store: &Arc<dyn CacheStore>,
        slot: &Slot,
        refresh: bool,
    ) -> Waited {
        bump(&self.stats.lease_waits);
        tracing::debug!(key = %slot.key, "another instance holds the refresh lease; waiting for its token");
        let deadline = self.clock.monotonic() + self.policy.lease_wait();
        let mut delay = Duration::from_millis(20);
        loop {
            let now = self.clock.monotonic();
            if now >= deadline {
                tracing::warn!(key = %slot.key, "gave up waiting for another instance's refresh; fetching");
                return Waited::GaveUp;
            }
            self.clock.sleep(delay.min(deadline - now)).await;
            delay = (delay * 2).min(Duration::from_secs(1));
            match self.store_call(store.get(&slot.key)).await {
                Ok(Some(t)) => {
                    if let Adopt::Yes(hot) = self.adoptable(t, refresh) {
                        return Waited::Adopted(hot);
                    }
                }
                Ok(None) => {}
                Err(()) => return Waited::GaveUp,
            }
            let ttl = self.policy.lease_ttl();
            match self
                .store_call(store.try_acquire_lease(&slot.key, ttl))
                .await
            {
                Ok(Some(l)) => return Waited::Acquired(l),
                Ok(None) => {}
                Err(()) => return Waited::GaveUp,
            }
        }
    }

    /// A stored token this flight can use instead of fetching: usable now
    /// and, for a refresh, not itself due for refresh (otherwise it is the
    /// very token being refreshed). Gives the token back when unusable.
    fn adoptable(&self, token: AccessToken, refresh: bool) -> Adopt {
        let now = self.clock.now();
        let token = match token.refresh_at() {
            Some(_) => token,
            // Written by someone who did not schedule it: schedule it now.
            None => match self.policy.schedule(token.clone(), crate::rng::unit_f64()) {
                Ok(t) => t,
                Err(_) => return Adopt::No(Box::new(token)),
            },
        };
        let usable = now < self.policy.usable_until(&token);
        let fresh = token.refresh_at().is_some_and(|at| now < at);
        if usable && (fresh || !refresh) {
            bump(&self.stats.store_hits);
            Adopt::Yes(self.make_hot(token))
        } else {
            Adopt::No(Box::new(token))
        }
    }

    /// Calls the credential under the fetch timeout, containing panics, and
    /// schedules the result.
    async fn fetch(
        &self,
        slot: &Slot,
        previous: Option<&AccessToken>,
    ) -> Result<AccessToken, Error> {
        bump(&self.stats.idp_calls);
        tracing::debug!(key = %slot.key, "fetching a token from the credential");
        let timeout = self.policy.fetch_timeout();
        let fetch = CatchUnwind(Box::pin(self.credential.fetch(&slot.request, previous)));
        let sleep = self.clock.sleep(timeout);
        let outcome = tokio::select! {
            biased;
            r = fetch => r,
            () = sleep => return Err(Error::FetchTimeout(timeout)),
        };
        match outcome {
            Err(()) => {
                bump(&self.stats.panics);
                tracing::error!(key = %slot.key, "the credential panicked; contained, nothing cached");
                Err(Error::FetchPanicked)
            }
            Ok(Err(e)) => Err(Error::Credential(e)),
            Ok(Ok(token)) => {
                let token = self.policy.schedule(token, crate::rng::unit_f64())?;
                tracing::debug!(key = %slot.key, expires_at = ?token.expires_at(), refresh_at = ?token.refresh_at(), "fetched a token");
                Ok(token)
            }
        }
    }

    /// Turns a scheduled token's wall-clock deadlines into monotonic ones.
    pub(crate) fn make_hot(&self, token: AccessToken) -> Arc<Hot> {
        let wall = self.clock.now();
        let mono = self.clock.monotonic();
        let usable = self.policy.usable_until(&token);
        let refresh = token.refresh_at().unwrap_or(usable).min(usable);
        let until = |at: std::time::SystemTime| mono + at.duration_since(wall).unwrap_or_default();
        Arc::new(Hot {
            fresh_until: until(refresh),
            usable_until: until(usable),
            token,
            stale: Default::default(),
        })
    }

    /// The store, unless it failed recently (then the call is counted as
    /// bypassed and the engine works from memory and the IdP alone).
    pub(crate) fn store_if_up(&self) -> Option<&Arc<dyn CacheStore>> {
        let store = self.store.as_ref()?;
        let down_until = self.store_down_until.load(Ordering::Relaxed);
        if down_until != 0 && self.nanos(self.clock.monotonic()) < down_until {
            bump(&self.stats.store_bypassed);
            return None;
        }
        Some(store)
    }

    /// Runs one store call under the store timeout. A failure is logged,
    /// counted, and puts the store in cooldown; the caller carries on
    /// without it.
    pub(crate) async fn store_call<T>(
        &self,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, ()> {
        let timeout = self.policy.store_timeout();
        let sleep = self.clock.sleep(timeout);
        let result = tokio::select! {
            biased;
            r = call => r,
            () = sleep => Err(StoreError::Timeout(timeout)),
        };
        result.map_err(|e| {
            bump(&self.stats.store_errors);
            let until: Instant = self.clock.monotonic() + self.policy.store_cooldown();
            self.store_down_until.store(self.nanos(until).max(1), Ordering::Relaxed);
            tracing::warn!(error = %e, "token store failed; serving from memory and fetching directly for a while");
        })
    }
}
