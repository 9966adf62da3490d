//! Time, injected: a system clock for production, a manual one for tests.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::oneshot;

/// A boxed future that completes after a delay.
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// The engine's source of time and of sleeping.
///
/// Two readings, because they answer different questions: wall-clock time
/// ([`now`](Self::now)) is what `expires_at` is written in, since tokens
/// cross processes and machines; monotonic time ([`monotonic`](Self::monotonic))
/// is what the in-process hot path compares against, so that the wall clock
/// jumping back an hour can never make an expired token look valid.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// Wall-clock time.
    fn now(&self) -> SystemTime;

    /// Monotonic time: never goes backwards.
    fn monotonic(&self) -> Instant;

    /// Completes once `duration` of monotonic time has passed.
    fn sleep(&self, duration: Duration) -> Sleep;
}

/// A shared clock is a clock: one [`ManualClock`] or test double can drive
/// several caches and fakes at once.
impl<C: Clock + ?Sized> Clock for std::sync::Arc<C> {
    fn now(&self) -> SystemTime {
        (**self).now()
    }

    fn monotonic(&self) -> Instant {
        (**self).monotonic()
    }

    fn sleep(&self, duration: Duration) -> Sleep {
        (**self).sleep(duration)
    }
}

/// The engine's monotonic origin: instants as nanoseconds since it, so that
/// deadlines fit in an `AtomicU64`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Epoch(pub(crate) Instant);

impl Epoch {
    /// `at` in nanoseconds since the epoch (0 for earlier instants).
    #[inline]
    pub(crate) fn nanos(self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.0).as_nanos()).unwrap_or(u64::MAX)
    }
}

/// The real clocks and `tokio::time::sleep`.
///
/// The runtime must have timers enabled (`#[tokio::main]` and
/// `Builder::enable_all` do): without them Tokio panics when a fetch timeout
/// is armed, which the engine contains and reports as
/// [`Error::FetchPanicked`](crate::Error::FetchPanicked).
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    #[inline]
    fn monotonic(&self) -> Instant {
        Instant::now()
    }

    fn sleep(&self, duration: Duration) -> Sleep {
        Box::pin(tokio::time::sleep(duration))
    }
}

/// A clock that moves only when told to, for tests.
///
/// [`advance`](Self::advance) moves both readings forward together, as real
/// time passing would, and wakes every sleeper whose deadline has come.
/// [`jump_wall`](Self::jump_wall) moves only the wall clock, the way an NTP
/// correction or an operator does.
///
/// Cloning gives another handle to the same clock.
#[derive(Clone)]
pub struct ManualClock {
    inner: Arc<ManualInner>,
}

struct ManualInner {
    base_instant: Instant,
    base_wall: SystemTime,
    mono_nanos: AtomicU64,
    wall_offset_nanos: AtomicI64,
    sleepers: Mutex<Vec<(u64, oneshot::Sender<()>)>>,
}

impl ManualClock {
    /// A clock that starts at the current real time.
    pub fn new() -> Self {
        Self::starting_at(SystemTime::now())
    }

    /// A clock whose wall time starts at `wall`.
    pub fn starting_at(wall: SystemTime) -> Self {
        Self {
            inner: Arc::new(ManualInner {
                base_instant: Instant::now(),
                base_wall: wall,
                mono_nanos: AtomicU64::new(0),
                wall_offset_nanos: AtomicI64::new(0),
                sleepers: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Moves time forward by `by` and wakes the sleepers that are due.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        let now = self
            .inner
            .mono_nanos
            .fetch_add(by, Ordering::SeqCst)
            .saturating_add(by);
        let due: Vec<_> = {
            let mut sleepers = self
                .inner
                .sleepers
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let (due, later): (Vec<_>, Vec<_>) = sleepers.drain(..).partition(|(at, _)| *at <= now);
            *sleepers = later;
            due
        };
        for (_, tx) in due {
            let _ = tx.send(());
        }
    }

    /// Moves only the wall clock, by `seconds` (negative goes back). Monotonic
    /// time and sleepers are unaffected.
    pub fn jump_wall(&self, seconds: i64) {
        self.inner
            .wall_offset_nanos
            .fetch_add(seconds.saturating_mul(1_000_000_000), Ordering::SeqCst);
    }

    /// How many sleeps are pending.
    pub fn pending_sleeps(&self) -> usize {
        self.inner
            .sleepers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    fn mono(&self) -> u64 {
        self.inner.mono_nanos.load(Ordering::SeqCst)
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualClock")
            .field("elapsed", &Duration::from_nanos(self.mono()))
            .field(
                "wall_offset_s",
                &(self.inner.wall_offset_nanos.load(Ordering::SeqCst) / 1_000_000_000),
            )
            .finish()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        let elapsed = Duration::from_nanos(self.mono());
        let offset = self.inner.wall_offset_nanos.load(Ordering::SeqCst);
        let t = self.inner.base_wall + elapsed;
        if offset >= 0 {
            t + Duration::from_nanos(offset.unsigned_abs())
        } else {
            t - Duration::from_nanos(offset.unsigned_abs())
        }
    }

    fn monotonic(&self) -> Instant {
        self.inner.base_instant + Duration::from_nanos(self.mono())
    }

    fn sleep(&self, duration: Duration) -> Sleep {
        let deadline = self
            .mono()
            .saturating_add(u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX));
        let (tx, rx) = oneshot::channel();
        {
            let mut sleepers = self
                .inner
                .sleepers
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            // Re-read under the lock so an `advance` racing with us cannot
            // leave this sleeper behind.
            if deadline <= self.mono() {
                return Box::pin(std::future::ready(()));
            }
            sleepers.push((deadline, tx));
        }
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn advance_wakes_due_sleepers_only() {
        let clock = ManualClock::new();
        let short = clock.sleep(Duration::from_secs(1));
        let long = clock.sleep(Duration::from_secs(10));
        assert_eq!(clock.pending_sleeps(), 2);
        clock.advance(Duration::from_secs(2));
        short.await;
        assert_eq!(clock.pending_sleeps(), 1);
        drop(long);
    }

    #[test]
    fn wall_jumps_leave_monotonic_alone() {
        let clock = ManualClock::new();
        let (w0, m0) = (clock.now(), clock.monotonic());
        clock.jump_wall(-3600);
        assert_eq!(
            w0.duration_since(clock.now()).unwrap(),
            Duration::from_secs(3600)
        );
        assert_eq!(clock.monotonic(), m0);
    }
}
