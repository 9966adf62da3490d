//! The engine's door to its store: every store call runs under the store
//! timeout, and a failure closes the door for the cooldown, during which the
//! engine works from memory and the IdP alone (the store is bypassed).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::clock::{Clock, Epoch};
use crate::stats::{bump, Counters};
use crate::store::{CacheStore, StoreError};

pub(crate) struct StoreGate {
    store: Option<Arc<dyn CacheStore>>,
    clock: Arc<dyn Clock>,
    epoch: Epoch,
    timeout: Duration,
    cooldown: Duration,
    /// Store calls are bypassed until this (nanoseconds since `epoch`; 0 =
    /// the store is up).
    down_until: AtomicU64,
}

impl StoreGate {
    pub(crate) fn new(
        store: Option<Arc<dyn CacheStore>>,
        clock: Arc<dyn Clock>,
        epoch: Epoch,
        timeout: Duration,
        cooldown: Duration,
    ) -> Self {
        Self {
            store,
            clock,
            epoch,
            timeout,
            cooldown,
            down_until: AtomicU64::new(0),
        }
    }

    /// The store, whether or not it is cooling down (for its stats, and to
    /// release a lease taken while it was up).
    pub(crate) fn store(&self) -> Option<&Arc<dyn CacheStore>> {
        self.store.as_ref()
    }

    /// The store, unless it failed within the cooldown (then the call is
    /// counted as bypassed).
    pub(crate) fn up(&self, stats: &Counters) -> Option<&Arc<dyn CacheStore>> {
        let store = self.store.as_ref()?;
        let down_until = self.down_until.load(Ordering::Relaxed);
        if down_until != 0 && self.epoch.nanos(self.clock.monotonic()) < down_until {
            bump(&stats.store_bypassed);
            return None;
        }
        Some(store)
    }

    /// Runs one store call under the store timeout. A failure is logged,
    /// counted, and starts the cooldown; the caller carries on without the
    /// store.
    pub(crate) async fn call<T>(
        &self,
        stats: &Counters,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, ()> {
        let sleep = self.clock.sleep(self.timeout);
        let result = tokio::select! {
            biased;
            r = call => r,
            () = sleep => Err(StoreError::Timeout(self.timeout)),
        };
        result.map_err(|e| {
            bump(&stats.store_errors);
            let until = self.clock.monotonic() + self.cooldown;
            self.down_until
                .store(self.epoch.nanos(until).max(1), Ordering::Relaxed);
            tracing::warn!(error = %e, "token store failed; serving from memory and fetching directly for a while");
        })
    }
}
