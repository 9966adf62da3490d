//! Store events: what other instances sharing the store did, applied to this
//! process's slots by key. An invalidation retires the token from the hot
//! slot; a new token stored wakes this process's flight if it is waiting for
//! that instance's refresh (it then reads the store once, instead of polling).
//! Nothing else reads the store on an event: the other instances read the new
//! token at their own moments in the refresh window.

use std::sync::{Mutex, PoisonError, Weak};

use tokio::sync::broadcast::{self, error::RecvError};

use crate::engine::Inner;
use crate::stats::bump;
use crate::store::{StoreEvent, TokenFingerprint};

/// The store's event stream, until the listener takes it.
pub(crate) struct Events {
    rx: Mutex<Option<broadcast::Receiver<StoreEvent>>>,
}

impl Events {
    pub(crate) fn new(rx: Option<broadcast::Receiver<StoreEvent>>) -> Self {
        Self { rx: Mutex::new(rx) }
    }

    /// Starts the listener task on `runtime`, once.
    pub(crate) fn start(&self, weak: Weak<Inner>, runtime: &tokio::runtime::Handle) {
        let Some(rx) = self
            .rx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        else {
            return;
        };
        runtime.spawn(listen(weak, rx));
    }
}

/// Applies every event until the store closes the stream or the cache is
/// dropped.
async fn listen(weak: Weak<Inner>, mut rx: broadcast::Receiver<StoreEvent>) {
    loop {
        let event = match rx.recv().await {
            Ok(event) => event,
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "missed store events; invalidated tokens are dropped at expiry or on their next 401, and waits for other instances end at their next poll");
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        let Some(inner) = weak.upgrade() else { return };
        apply(&inner, event);
    }
}

/// Retires the token another instance invalidated, if it is still the one
/// this process serves for that key.
fn apply(inner: &Inner, event: StoreEvent) {
    match event {
        StoreEvent::Invalidated { key, fingerprint } => {
            let Some(slot) = inner.keys().by_key(&key) else {
                return;
            };
            let _st = slot.lock();
            let current = slot.hot.load();
            if inner.is_live(&current) && TokenFingerprint::of(&current.token) == fingerprint {
                inner.retire(&slot, &current);
                bump(&inner.stats().invalidations);
                tracing::info!(key = %slot.key, "token invalidated by another instance");
            }
        }
        StoreEvent::Updated { key } => {
            if let Some(slot) = inner.keys().by_key(&key) {
                if slot.wake_waiter() {
                    tracing::debug!(key = %slot.key, "another instance stored the token this one waits for");
                }
            }
        }
    }
}
