//! The circuit breaker: after repeated failures, fail at once instead of
//! making every request wait for a dead server's timeout.
//!
//! Closed: calls go through; `threshold` failures in a row open it. Open:
//! calls fail at once for `open_for`. Then half-open: one call (the probe)
//! goes through while the others still fail at once; its success closes the
//! circuit, its failure opens it again.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

#[derive(Debug)]
struct State {
    failures: u32,
    open_until: Option<Instant>,
    probing: bool,
}

/// A circuit breaker. Cheap: one uncontended mutex per call.
#[derive(Debug)]
pub(crate) struct Breaker {
    threshold: u32,
    open_for: Duration,
    state: Mutex<State>,
}

/// Whether a call may go ahead.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Closed: go ahead.
    Go,
    /// Half-open: go ahead as the probe.
    Probe,
    /// Open: fail at once; the next probe is this far away.
    Refuse(Duration),
}

impl Breaker {
    pub(crate) fn new(threshold: u32, open_for: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            open_for,
            state: Mutex::new(State {
                failures: 0,
                open_until: None,
                probing: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn admit(&self) -> Admit {
        let mut st = self.lock();
        let Some(until) = st.open_until else {
            return Admit::Go;
        };
        let now = Instant::now();
        if now < until {
            return Admit::Refuse(until - now);
        }
        if st.probing {
            // Another call is probing; do not pile onto a server that may
            // still be down.
            return Admit::Refuse(Duration::ZERO);
        }
        st.probing = true;
        Admit::Probe
    }

    /// The server answered (an error reply counts: it is alive).
    pub(crate) fn success(&self) {
        let mut st = self.lock();
        if st.open_until.is_some() {
            tracing::info!("Redis answered again; circuit closed");
        }
        st.failures = 0;
        st.open_until = None;
        st.probing = false;
    }

    /// The server did not answer. Says whether this opened the circuit.
    pub(crate) fn failure(&self, probe: bool) -> bool {
        let mut st = self.lock();
        st.failures = st.failures.saturating_add(1);
        if probe || st.probing && st.open_until.is_some() {
            st.probing = false;
            st.open_until = Some(Instant::now() + self.open_for);
            return true;
        }
        if st.open_until.is_none() && st.failures >= self.threshold {
            st.open_until = Some(Instant::now() + self.open_for);
            tracing::warn!(
                failures = st.failures,
                open_for_ms = self.open_for.as_millis() as u64,
                "Redis failed repeatedly; circuit open, calls fail fast"
            );
            return true;
        }
        false
    }

    /// A probe ended without an answer either way (it was cancelled).
    pub(crate) fn abandon_probe(&self) {
        self.lock().probing = false;
    }

    pub(crate) fn is_open(&self) -> bool {
        self.lock().open_until.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_probes_once() {
        let b = Breaker::new(2, Duration::from_millis(0));
        assert_eq!(b.admit(), Admit::Go);
        assert!(!b.failure(false));
        assert!(b.failure(false));
        assert!(b.is_open());
        // open_for elapsed (zero): exactly one probe.
        assert_eq!(b.admit(), Admit::Probe);
        assert!(matches!(b.admit(), Admit::Refuse(_)));
        assert!(b.failure(true));
        assert_eq!(b.admit(), Admit::Probe);
        b.success();
        assert!(!b.is_open());
        assert_eq!(b.admit(), Admit::Go);
    }

    #[test]
    fn refuses_while_open() {
        let b = Breaker::new(1, Duration::from_secs(60));
        b.failure(false);
        assert!(matches!(b.admit(), Admit::Refuse(d) if d > Duration::from_secs(50)));
    }
}
