//! Keep-warm: a key refreshed on a timer, with or without traffic.

use std::fmt;
use std::sync::{Arc, Weak};

use crate::engine::{Inner, KeyPin};
use crate::slot::{Joined, Slot, Want};

/// The scheduled-refresh loop: sleeps until the token's refresh time,
/// refreshes it (or waits out the backoff), and starts over. Holds only a
/// weak reference while sleeping, so it never keeps a dropped cache alive.
pub(crate) async fn keep_warm(weak: Weak<Inner>, slot: Arc<Slot>) {
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let clock = Arc::clone(inner.clock());
        let now = clock.monotonic();
        let hot = slot.hot.load_full();
        let retry_at = slot.lock().retry_at();
        let wake_at = if now < hot.fresh_until {
            Some(hot.fresh_until)
        } else {
            retry_at.filter(|at| now < *at)
        };
        if let Some(at) = wake_at {
            let sleep = clock.sleep(at - now);
            drop(inner);
            sleep.await;
            continue;
        }
        let pause = inner.policy().backoff(1, None, crate::rng::unit_f64());
        // The slot is pinned, so it is never evicted: orphan_ok only says so.
        let joined = slot.join_or_start(&inner, Want::Warm, true);
        drop(inner);
        let failed = match joined {
            Ok(Joined::Drive(mut rx, flight)) => {
                flight.await;
                match rx.wait_for(Option::is_some).await {
                    Ok(v) => !matches!(&*v, Some(Ok(_))),
                    Err(_) => true,
                }
            }
            Ok(Joined::Wait(mut rx)) => match rx.wait_for(Option::is_some).await {
                Ok(v) => !matches!(&*v, Some(Ok(_))),
                Err(_) => true,
            },
            Ok(Joined::Hit(_) | Joined::Nothing | Joined::Evicted) => false,
            // No runtime: nothing can be refreshed from here on.
            Err(crate::Error::NoRuntime) => return,
            Err(_) => true,
        };
        // A failure that set no backoff (a panic) must not spin the loop.
        if failed && slot.lock().retry_at().is_none() {
            clock.sleep(pause).await;
        }
    }
}

/// Keeps a key warm while alive; dropping it stops the timer. The key is
/// never evicted while the guard lives.
pub struct KeepWarm {
    task: tokio::task::JoinHandle<()>,
    _pin: KeyPin,
}

impl KeepWarm {
    pub(crate) fn new(task: tokio::task::JoinHandle<()>, pin: KeyPin) -> Self {
        Self { task, _pin: pin }
    }
}

impl fmt::Debug for KeepWarm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeepWarm").finish_non_exhaustive()
    }
}

impl Drop for KeepWarm {
    fn drop(&mut self) {
        self.task.abort();
    }
}
