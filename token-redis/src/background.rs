//! Connecting in the background: when Redis cannot be reached at start-up,
//! `RedisStore::connect` returns a store whose link is not connected yet
//! (its calls fail at once, so the engine bypasses the store and serves
//! from memory and the IdP) and a task that keeps trying, with backoff,
//! until the server answers a `PING`; then the connection is installed and
//! the store is used.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use redis::{ErrorKind, RedisError};
use tokio::task::JoinHandle;

use crate::config::RedisConfig;
use crate::link::{server_answered, Conn, Factory};

/// The first retry comes this long after the failed start-up attempt
/// (jittered down to half of it): a server that is restarting is usually
/// back within a second.
const FIRST_DELAY: Duration = Duration::from_millis(200);

/// Retries back off, doubling, to one every this long (jittered down to
/// half of it): each costs one connection attempt, and the engine only
/// looks at the store again after its cooldown anyway.
const MAX_DELAY: Duration = Duration::from_secs(5);

/// The link's connection, and whether it was ever established.
pub(crate) struct Slot {
    conn: Mutex<Conn>,
    connected: AtomicBool,
}

impl Slot {
    pub(crate) fn new(conn: Conn, connected: bool) -> Self {
        Self {
            conn: Mutex::new(conn),
            connected: AtomicBool::new(connected),
        }
    }

    pub(crate) fn conn(&self) -> Conn {
        self.conn
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn replace(&self, conn: Conn) {
        *self.conn.lock().unwrap_or_else(PoisonError::into_inner) = conn;
    }

    pub(crate) fn connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    fn install(&self, conn: Conn) {
        self.replace(conn);
        self.connected.store(true, Ordering::Release);
    }
}

/// How long one connection attempt may take.
#[derive(Clone, Copy)]
pub(crate) struct Timing {
    /// Connecting (TCP, TLS, `HELLO`/`AUTH`; a cluster's nodes).
    connect: Duration,
    /// The `PING` that proves the server answers.
    ping: Duration,
}

impl Timing {
    pub(crate) fn of(config: &RedisConfig) -> Self {
        Self {
            connect: config.connect_timeout * 2 + config.command_timeout,
            ping: config.command_timeout,
        }
    }
}

/// One attempt: a connection, connected now, that answered a `PING`.
pub(crate) async fn establish(factory: &Factory, timing: Timing) -> Result<Conn, RedisError> {
    let timed_out = |what: &'static str, budget: Duration| {
        RedisError::from((ErrorKind::Io, what, format!("nothing within {budget:?}")))
    };
    let mut conn = tokio::time::timeout(timing.connect, factory.eager())
        .await
        .map_err(|_| timed_out("connecting timed out", timing.connect))??;
    tokio::time::timeout(timing.ping, redis::cmd("PING").query_async::<()>(&mut conn))
        .await
        .map_err(|_| timed_out("PING timed out", timing.ping))??;
    Ok(conn)
}

/// True when `e` says the server could not be reached (yet): refused,
/// timed out, unresolvable, dropped, loading. False when it says the server
/// refuses this configuration (authentication, a certificate it or we do
/// not trust, a bad database number): retrying would not help, and the
/// error belongs at start-up.
pub(crate) fn worth_retrying(e: &RedisError) -> bool {
    if refused_by_tls(e) {
        return false;
    }
    match e.kind() {
        ErrorKind::Io | ErrorKind::ClusterConnectionNotFound => true,
        ErrorKind::Server(_) => !server_answered(e),
        _ => false,
    }
}

/// A TLS handshake that failed on a certificate: the driver wraps rustls's
/// error in an `io::Error` of kind `InvalidData`.
fn refused_by_tls(e: &RedisError) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<Arc<dyn std::error::Error + Send + Sync>>())
        .and_then(|inner| (**inner).downcast_ref::<std::io::Error>())
        .is_some_and(|io| io.kind() == std::io::ErrorKind::InvalidData)
}

/// Keeps trying to connect, with jittered exponential backoff, until the
/// server answers (the connection is then installed in `slot`) or the link
/// is dropped.
pub(crate) fn spawn(
    factory: Arc<Factory>,
    slot: Weak<Slot>,
    config: &RedisConfig,
    target: String,
) -> JoinHandle<()> {
    let timing = Timing::of(config);
    tokio::spawn(async move {
        let mut delay = FIRST_DELAY;
        let mut warned = false;
        loop {
            tokio::time::sleep(jittered(delay)).await;
            if slot.strong_count() == 0 {
                return;
            }
            match establish(&factory, timing).await {
                Ok(conn) => {
                    if let Some(slot) = slot.upgrade() {
                        slot.install(conn);
                        tracing::info!(target_addr = %target, "Redis answers; the token store is in use");
                    }
                    return;
                }
                Err(e) if !worth_retrying(&e) && !warned => {
                    warned = true;
                    tracing::warn!(target_addr = %target, error = %e, "Redis refuses this client's configuration; still retrying");
                }
                Err(e) => {
                    tracing::debug!(target_addr = %target, error = %e, "Redis is still unreachable");
                }
            }
            delay = (delay * 2).min(MAX_DELAY);
        }
    })
}

/// `delay`, less up to half of it at random, so that a fleet started during
/// an outage does not reconnect in step.
fn jittered(delay: Duration) -> Duration {
    let half = delay / 2;
    let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX).max(1);
    let random =
        u64::try_from(token_core::backend::random_u128() % u128::from(nanos)).unwrap_or_default();
    delay - Duration::from_nanos(random)
}
