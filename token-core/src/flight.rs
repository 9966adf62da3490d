//! Obtaining a token for a key: the single flight that store reads, the
//! lease and the IdP fetch happen in, and that publishes its result.
//!
//! One flight runs per key in a process at a time. A caller that needs the
//! token runs the flight it started on its own task ([`Driven`]: no spawn,
//! no cross-thread wake-up); if it gives up (is dropped) first, the rest of
//! the flight is spawned, so it is never cancelled for the others.
//! Background refreshes are spawned. Every other caller that needs the
//! result subscribes to the flight's watch channel.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{watch, Notify};

use crate::engine::Inner;
use crate::error::Error;
use crate::slot::{FlightResult, Hot, Recorded, Slot, SlotState};
use crate::stats::bump;
use crate::store::{CacheStore, Lease};
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
        let (inner, slot) = (self.inner, self.slot);
        {
            let mut st = slot.lock();
            let now = inner.clock().monotonic();
            if let Ok(hot) = &result {
                slot.hot.store(Arc::clone(hot));
            } else {
                bump(&inner.stats().errors);
                slot.hot.load().stale.store(true, Ordering::Relaxed);
            }
            let retry_at_nanos = match st.record(&result, inner.policy(), now) {
                Recorded::Ok => 0,
                Recorded::BackingOff { failures, delay } => {
                    if let Err(error) = &result {
                        tracing::warn!(
                            key = %slot.key, %error, failures,
                            retry_in_ms = delay.as_millis() as u64,
                            "token fetch failed; backing off"
                        );
                    }
                    inner.nanos(now + delay).max(1)
                }
                Recorded::Failed => {
                    if let Err(error) = &result {
                        tracing::warn!(key = %slot.key, %error, "token fetch failed");
                    }
                    slot.retry_at_nanos.load(Ordering::Relaxed)
                }
            };
            slot.retry_at_nanos.store(retry_at_nanos, Ordering::Relaxed);
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

/// The flight's wake-up for another instance's token, registered in the
/// slot while it lives (see [`Slot::wake_waiter`]).
struct Waiter<'a> {
    slot: &'a Slot,
    notify: Arc<Notify>,
}

impl<'a> Waiter<'a> {
    fn register(slot: &'a Slot) -> Self {
        let notify = Arc::new(Notify::new());
        slot.set_waiter(Some(Arc::clone(&notify)));
        Self { slot, notify }
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.slot.set_waiter(None);
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
    /// The lease is ours, with the newest (unusable) token the store held.
    Acquired(Lease, Option<Box<AccessToken>>),
    GaveUp,
}

/// A flight run by the caller that started it, on the caller's own task,
/// instead of a spawned task: a cold key then costs no cross-thread
/// wake-ups (spawning onto another worker, and that worker waking the
/// caller when the token is there), which on a multi-thread runtime were
/// most of a new key's cost. If the caller is dropped before the flight
/// ends (it gave up, timed out), the rest of the flight is spawned, so it
/// is never cancelled for the other callers waiting on it.
pub(crate) struct Driven {
    flight: Option<Pin<Box<dyn Future<Output = ()> + Send + 'static>>>,
    runtime: tokio::runtime::Handle,
}

impl Future for Driven {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(flight) = self.flight.as_mut() {
            if flight.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.flight = None;
        }
        Poll::Ready(())
    }
}

impl Drop for Driven {
    fn drop(&mut self) {
        if let Some(rest) = self.flight.take() {
            self.runtime.spawn(rest);
        }
    }
}

/// One fetch for one key: re-read the store, take the lease (or wait for
/// the instance holding it), call the IdP, store the result. Runs as a
/// spawned task started by [`Slot::join_or_start`], or on the task of the
/// caller that started it ([`Driven`]).
pub(crate) struct Flight {
    inner: Arc<Inner>,
    slot: Arc<Slot>,
    /// Refreshing a token that is still usable (so a stored token that is
    /// itself due for refresh is not adopted).
    refresh: bool,
}

impl Flight {
    /// Starts a flight for `slot`; the caller holds the slot's lock (`st`)
    /// and has checked that none is running. With `driven`, the flight is
    /// returned for the caller to run ([`Driven`]) instead of spawned.
    pub(crate) fn start(
        inner: &Arc<Inner>,
        slot: &Arc<Slot>,
        st: &mut SlotState,
        runtime: &tokio::runtime::Handle,
        refresh: bool,
        driven: bool,
    ) -> (watch::Receiver<FlightResult>, Option<Driven>) {
        let (tx, rx) = watch::channel(None);
        st.flight = Some(rx.clone());
        slot.flying.store(true, Ordering::Release);
        let flight = Self {
            inner: Arc::clone(inner),
            slot: Arc::clone(slot),
            refresh,
        };
        // The flight's span continues the caller's (a gateway request's
        // trace shows the fetch it waited for).
        let span = if refresh {
            tracing::info_span!("tokencache.refresh", profile = inner.metrics_name())
        } else {
            tracing::info_span!("tokencache.obtain", profile = inner.metrics_name())
        };
        let task = async move {
            let (inner, slot) = (&flight.inner, &flight.slot);
            let mut guard = FlightGuard {
                inner,
                slot,
                tx: Some(tx),
            };
            let result = match CatchUnwind(Box::pin(flight.obtain())).await {
                Ok(result) => result,
                Err(()) => {
                    bump(&inner.stats().panics);
                    tracing::error!(key = %slot.key, "token refresh panicked; contained, next call retries");
                    Err(Error::FetchPanicked)
                }
            };
            if refresh && result.is_ok() {
                bump(&inner.stats().refreshes);
            }
            guard.finish(result);
        };
        if driven {
            let driven = Driven {
                flight: Some(Box::pin(tracing::Instrument::instrument(task, span))),
                runtime: runtime.clone(),
            };
            return (rx, Some(driven));
        }
        runtime.spawn(tracing::Instrument::instrument(task, span));
        (rx, None)
    }

    /// Gets a token: from the store if another instance already put a good
    /// one, otherwise from the IdP under the store's lease.
    async fn obtain(&self) -> Result<Arc<Hot>, Error> {
        let (inner, slot) = (&self.inner, &self.slot);
        let gate = inner.gate();
        let stats = inner.stats();
        let current = slot.hot.load_full();
        // The newest token we know, even an expired one: its refresh token
        // may still be good.
        let mut previous: Option<AccessToken> =
            (!inner.is_empty(&current)).then(|| current.token.clone());
        // A token this process took out of service (a 401) must not come
        // back from the store, which may not have dropped it yet.
        let rejected =
            (!inner.is_empty(&current) && !inner.is_live(&current)).then(|| current.token.clone());
        let mut lease = None;

        if let Some(store) = gate.up(stats) {
            if let Ok(Some(t)) = gate.call(stats, store.get(&slot.key)).await {
                match self.adoptable(t, rejected.as_ref()) {
                    Adopt::Yes(hot) => return Ok(hot),
                    Adopt::No(t) => previous = Some(*t),
                }
            }
        }
        if let Some(store) = gate.up(stats) {
            let ttl = inner.policy().lease_ttl();
            // Registered before the lease try, so that a token the holder
            // stores between our try and our wait still wakes us.
            let waiter = Waiter::register(slot);
            match gate
                .call(stats, store.try_acquire_lease(&slot.key, ttl))
                .await
            {
                Ok(Some(l)) => match self.recheck(store, l, rejected.as_ref()).await {
                    Waited::Adopted(hot) => return Ok(hot),
                    Waited::Acquired(l, newer) => {
                        previous = newer.map(|t| *t).or(previous);
                        lease = Some(l);
                    }
                    Waited::GaveUp => {}
                },
                Ok(None) => match tracing::Instrument::instrument(
                    self.wait_for_other(store, rejected.as_ref(), &waiter),
                    tracing::info_span!("tokencache.lease_wait", profile = inner.metrics_name()),
                )
                .await
                {
                    Waited::Adopted(hot) => return Ok(hot),
                    Waited::Acquired(l, newer) => {
                        previous = newer.map(|t| *t).or(previous);
                        lease = Some(l);
                    }
                    Waited::GaveUp => {}
                },
                Err(()) => {}
            }
            drop(waiter);
        }

        let span = tracing::info_span!(
            "tokencache.fetch",
            profile = inner.metrics_name(),
            otel.status_code = tracing::field::Empty,
        );
        let result = tracing::Instrument::instrument(
            crate::metrics::timed_fetch(inner.metrics_name(), self.fetch(previous.as_ref())),
            span.clone(),
        )
        .await;
        if result.is_err() {
            span.record("otel.status_code", "ERROR");
        }
        if let Ok(token) = &result {
            if let Some(store) = gate.up(stats) {
                let _ = gate.call(stats, store.put(&slot.key, token)).await;
            }
        }
        if let (Some(l), Some(store)) = (&lease, gate.store()) {
            self.release(store, l).await;
        }
        result.map(|t| inner.make_hot(t))
    }

    async fn release(&self, store: &Arc<dyn CacheStore>, lease: &Lease) {
        let gate = self.inner.gate();
        let _ = gate
            .call(
                self.inner.stats(),
                store.release_lease(&self.slot.key, lease),
            )
            .await;
    }

    /// Waits, bounded by the policy's lease wait, for the instance holding
    /// the lease to put a newer token; takes the lease over if it is freed.
    ///
    /// The store's event for the new token wakes the wait at once, and one
    /// read adopts it. Events may be lost (pub/sub is), so the wait also
    /// re-reads the store and retries the lease every lease poll (jittered,
    /// long): a lost event costs one poll interval, and a holder that failed
    /// or died is taken over when its lease is free, or fetched around when
    /// the lease wait runs out. A store without events is polled as before
    /// events existed: after 20 ms, doubling up to the lease poll.
    async fn wait_for_other(
        &self,
        store: &Arc<dyn CacheStore>,
        rejected: Option<&AccessToken>,
        waiter: &Waiter<'_>,
    ) -> Waited {
        let (inner, slot) = (&self.inner, &self.slot);
        let (gate, stats, clock) = (inner.gate(), inner.stats(), inner.clock());
        let policy = inner.policy();
        bump(&stats.lease_waits);
        tracing::debug!(key = %slot.key, "another instance holds the refresh lease; waiting for its token");
        let deadline = clock.monotonic() + policy.lease_wait();
        let mut quick = Duration::from_millis(20);
        loop {
            let now = clock.monotonic();
            if now >= deadline {
                tracing::warn!(key = %slot.key, "gave up waiting for another instance's refresh; fetching");
                return Waited::GaveUp;
            }
            let poll = if inner.store_events() {
                policy
                    .lease_poll()
                    .mul_f64(0.5 + crate::rng::unit_f64() / 2.0)
            } else {
                let poll = quick.min(policy.lease_poll());
                quick = quick.saturating_mul(2);
                poll
            };
            let woken = tokio::select! {
                biased;
                () = waiter.notify.notified() => true,
                () = clock.sleep(poll.min(deadline - now)) => false,
            };
            match gate.call(stats, store.get(&slot.key)).await {
                Ok(Some(t)) => {
                    if let Adopt::Yes(hot) = self.adoptable(t, rejected) {
                        return Waited::Adopted(hot);
                    }
                }
                Ok(None) => {}
                Err(()) => return Waited::GaveUp,
            }
            if woken {
                // A token was stored, but not one we can use: the holder
                // still has the lease until it releases it.
                continue;
            }
            let ttl = policy.lease_ttl();
            match gate
                .call(stats, store.try_acquire_lease(&slot.key, ttl))
                .await
            {
                Ok(Some(l)) => return self.recheck(store, l, rejected).await,
                Ok(None) => {}
                Err(()) => return Waited::GaveUp,
            }
        }
    }

    /// Reads the store again once the lease is ours: the instance that
    /// held it may have stored its token and released it between our last
    /// read and our lease try, and that token is adopted (the lease given
    /// back) instead of fetching a second one. For a rotating refresh token,
    /// that second fetch would be a second redemption.
    async fn recheck(
        &self,
        store: &Arc<dyn CacheStore>,
        lease: Lease,
        rejected: Option<&AccessToken>,
    ) -> Waited {
        let (gate, stats) = (self.inner.gate(), self.inner.stats());
        match gate.call(stats, store.get(&self.slot.key)).await {
            Ok(Some(t)) => match self.adoptable(t, rejected) {
                Adopt::Yes(hot) => {
                    self.release(store, &lease).await;
                    Waited::Adopted(hot)
                }
                Adopt::No(t) => Waited::Acquired(lease, Some(t)),
            },
            Ok(None) | Err(()) => Waited::Acquired(lease, None),
        }
    }

    /// A stored token this flight can use instead of fetching: usable now,
    /// not the token this process rejected and, for a refresh, not itself
    /// due for refresh (otherwise it is the very token being refreshed).
    /// Gives the token back when unusable.
    fn adoptable(&self, token: AccessToken, rejected: Option<&AccessToken>) -> Adopt {
        let inner = &self.inner;
        let policy = inner.policy();
        let now = inner.clock().now();
        let token = match token.refresh_at() {
            Some(_) => token,
            // Written by someone who did not schedule it: schedule it now.
            None => match policy.schedule(token.clone(), crate::rng::unit_f64()) {
                Ok(t) => t,
                Err(_) => return Adopt::No(Box::new(token)),
            },
        };
        if rejected.is_some_and(|r| r.same_secret(&token)) {
            return Adopt::No(Box::new(token));
        }
        let usable = now < policy.usable_until(&token);
        let fresh = token.refresh_at().is_some_and(|at| now < at);
        if usable && (fresh || !self.refresh) {
            bump(&inner.stats().store_hits);
            Adopt::Yes(inner.make_hot(token))
        } else {
            Adopt::No(Box::new(token))
        }
    }

    /// Calls the credential under the fetch timeout, containing panics, and
    /// schedules the result.
    async fn fetch(&self, previous: Option<&AccessToken>) -> Result<AccessToken, Error> {
        let (inner, slot) = (&self.inner, &self.slot);
        bump(&inner.stats().idp_calls);
        tracing::debug!(key = %slot.key, "fetching a token from the credential");
        let timeout = inner.policy().fetch_timeout();
        let fetch = CatchUnwind(Box::pin(inner.credential().fetch(&slot.request, previous)));
        let sleep = inner.clock().sleep(timeout);
        let outcome = tokio::select! {
            biased;
            r = fetch => r,
            () = sleep => return Err(Error::FetchTimeout(timeout)),
        };
        match outcome {
            Err(()) => {
                bump(&inner.stats().panics);
                tracing::error!(key = %slot.key, "the credential panicked; contained, nothing cached");
                Err(Error::FetchPanicked)
            }
            Ok(Err(e)) => Err(Error::Credential(e)),
            Ok(Ok(token)) => {
                let token = inner.policy().schedule(token, crate::rng::unit_f64())?;
                tracing::debug!(key = %slot.key, expires_at = ?token.expires_at(), refresh_at = ?token.refresh_at(), "fetched a token");
                Ok(token)
            }
        }
    }
}
