//! The connection to Redis: a reconnecting connection (standalone or
//! cluster) behind a command timeout and a circuit breaker, replaced after
//! repeated timeouts.

use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, ErrorKind, IntoConnectionInfo, Pipeline, RedisError, RedisFuture, Value};

use crate::background::{self, Slot};
use crate::breaker::{Admit, Breaker};
use crate::config::{RedisConfig, Target};
use crate::error::RedisStoreError;

/// One connection: cheap to clone (both kinds are handles on a shared,
/// multiplexed connection).
#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// Makes connections.
pub(crate) enum Factory {
    Single {
        client: redis::Client,
        config: ConnectionManagerConfig,
    },
    Cluster {
        client: ClusterClient,
        config: ClusterConfig,
    },
}

impl Factory {
    fn new(config: &RedisConfig) -> Result<Self, RedisStoreError> {
        // rustls needs a process-wide crypto provider; when several are
        // compiled in (another crate may enable aws-lc-rs), it cannot pick
        // one by itself. Install ring unless the application chose already.
        #[cfg(feature = "tls")]
        let _ = rustls::crypto::ring::default_provider().install_default();
        let target = config.describe_target();
        let bad = |source: RedisError| RedisStoreError::Connect {
            target: target.clone(),
            source,
        };
        match &config.target {
            Target::Standalone(url) => {
                let client = node_client(url, config).map_err(bad)?;
                // Fail fast and let the breaker and the next call retry,
                // instead of retrying inside one call past its timeout.
                let manager = ConnectionManagerConfig::new()
                    .set_number_of_retries(1)
                    .set_min_delay(Duration::from_millis(10))
                    .set_max_delay(Duration::from_millis(100))
                    .set_connection_timeout(Some(config.connect_timeout))
                    .set_response_timeout(Some(config.command_timeout));
                Ok(Self::Single {
                    client,
                    config: manager,
                })
            }
            Target::Cluster(urls) => {
                let mut builder = ClusterClientBuilder::new(urls.iter().map(String::as_str))
                    .retries(1)
                    .min_retry_wait(10)
                    .max_retry_wait(100)
                    .connection_timeout(config.connect_timeout)
                    .response_timeout(config.command_timeout);
                if let Some(user) = &config.username {
                    builder = builder.username(user);
                }
                if let Some(password) = &config.password {
                    builder = builder.password(password.expose());
                }
                #[cfg(feature = "tls")]
                if let Some(certificates) = config.tls.certificates() {
                    builder = builder.certs(certificates);
                }
                let client = builder.build().map_err(bad)?;
                let cluster_config = ClusterConfig::new()
                    .set_connection_timeout(config.connect_timeout)
                    .set_response_timeout(config.command_timeout);
                Ok(Self::Cluster {
                    client,
                    config: cluster_config,
                })
            }
        }
    }

    /// A connection that connects on first use.
    fn lazy(&self) -> Result<Conn, RedisError> {
        match self {
            Self::Single { client, config } => Ok(Conn::Single(
                ConnectionManager::new_lazy_with_config(client.clone(), config.clone())?,
            )),
            Self::Cluster { client, config } => Ok(Conn::Cluster(
                client.get_pending_async_connection_with_config(config.clone()),
            )),
        }
    }

    /// A connection, connected now.
    pub(crate) async fn eager(&self) -> Result<Conn, RedisError> {
        match self {
            Self::Single { client, config } => Ok(Conn::Single(
                ConnectionManager::new_with_config(client.clone(), config.clone()).await?,
            )),
            Self::Cluster { client, config } => Ok(Conn::Cluster(
                client
                    .get_async_connection_with_config(config.clone())
                    .await?,
            )),
        }
    }
}

/// A plain client for one server, with the configured credentials (and TLS
/// certificates).
fn node_client(url: &str, config: &RedisConfig) -> Result<redis::Client, RedisError> {
    let mut info = url.into_connection_info()?;
    let mut settings = info.redis_settings().clone();
    if let Some(user) = &config.username {
        settings = settings.set_username(user);
    }
    if let Some(password) = &config.password {
        settings = settings.set_password(password.expose());
    }
    info = info.set_redis_settings(settings);
    #[cfg(feature = "tls")]
    if let Some(certificates) = config.tls.certificates() {
        return redis::Client::build_with_tls(info, certificates);
    }
    redis::Client::open(info)
}

/// One plain client per server (every node of a cluster), for pub/sub.
pub(crate) fn pubsub_clients(config: &RedisConfig) -> Result<Vec<redis::Client>, RedisStoreError> {
    let urls: Vec<&String> = match &config.target {
        Target::Standalone(url) => vec![url],
        Target::Cluster(urls) => urls.iter().collect(),
    };
    urls.into_iter()
        .map(|url| {
            node_client(url, config).map_err(|source| RedisStoreError::Connect {
                target: config.describe_target(),
                source,
            })
        })
        .collect()
}

/// The connection as the store uses it.
pub(crate) struct Link {
    factory: Arc<Factory>,
    /// The connection, and whether it was ever established (shared with
    /// the background connector).
    slot: Arc<Slot>,
    /// The background connector, while the server was unreachable at
    /// start-up; stopped when the link is dropped.
    connector: Option<tokio::task::JoinHandle<()>>,
    breaker: Breaker,
    timeout: Duration,
    timeouts_in_row: AtomicU32,
    replace_after: u32,
    replacements: AtomicU64,
    target: String,
}

/// Clears the breaker's probe flag if a probing call is dropped before it
/// learns anything (its caller timed out first).
struct ProbeGuard<'a> {
    breaker: &'a Breaker,
    armed: bool,
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.breaker.abandon_probe();
        }
    }
}

impl Link {
    /// Validates `config` and connects now, so a wrong URL, password or
    /// certificate is an error at start-up; the first command (a `PING`)
    /// proves the server answers and accepts the credentials. A server that
    /// cannot be reached is an error too with
    /// [`RedisConfig::with_connect_at_start`]; otherwise the link is
    /// returned unconnected and connects in the background (its calls fail
    /// at once until then).
    pub(crate) async fn connect(config: &RedisConfig) -> Result<Self, RedisStoreError> {
        config.validate()?;
        let factory = Arc::new(Factory::new(config)?);
        let target = config.describe_target();
        let source = match background::establish(&factory, background::Timing::of(config)).await {
            Ok(conn) => return Ok(Self::with_conn(config, factory, conn, target, true)),
            Err(source) => source,
        };
        if config.connect_at_start || !background::worth_retrying(&source) {
            return Err(RedisStoreError::Connect { target, source });
        }
        tracing::warn!(
            target_addr = %target,
            error = %source,
            "Redis is unreachable at start-up; connecting in the background (tokens are served from memory and the IdP meanwhile)"
        );
        let placeholder = factory.lazy().map_err(|source| RedisStoreError::Connect {
            target: target.clone(),
            source,
        })?;
        let mut link = Self::with_conn(config, Arc::clone(&factory), placeholder, target, false);
        link.connector = Some(background::spawn(
            factory,
            Arc::downgrade(&link.slot),
            config,
            link.target.clone(),
        ));
        Ok(link)
    }

    /// Validates `config` and returns at once; connects on first use.
    pub(crate) fn lazy(config: &RedisConfig) -> Result<Self, RedisStoreError> {
        config.validate()?;
        let factory = Factory::new(config)?;
        let target = config.describe_target();
        let conn = factory.lazy().map_err(|source| RedisStoreError::Connect {
            target: target.clone(),
            source,
        })?;
        Ok(Self::with_conn(
            config,
            Arc::new(factory),
            conn,
            target,
            true,
        ))
    }

    fn with_conn(
        config: &RedisConfig,
        factory: Arc<Factory>,
        conn: Conn,
        target: String,
        connected: bool,
    ) -> Self {
        Self {
            factory,
            slot: Arc::new(Slot::new(conn, connected)),
            connector: None,
            breaker: Breaker::new(config.breaker_threshold, config.breaker_open_for),
            timeout: config.command_timeout,
            timeouts_in_row: AtomicU32::new(0),
            replace_after: config.replace_after_timeouts,
            replacements: AtomicU64::new(0),
            target,
        }
    }

    /// Where this link connects, passwords hidden.
    pub(crate) fn target(&self) -> &str {
        &self.target
    }

    /// How many times the connection was replaced after timeouts.
    pub(crate) fn replacements(&self) -> u64 {
        self.replacements.load(Ordering::Relaxed)
    }

    /// False while the server, unreachable at start-up, is being connected
    /// to in the background.
    pub(crate) fn connected(&self) -> bool {
        self.slot.connected()
    }

    /// Whether the circuit is open (or half-open).
    pub(crate) fn circuit_open(&self) -> bool {
        self.breaker.is_open()
    }

    /// A handle on the current connection (for tests and benchmarks that
    /// compare against raw commands on the same client).
    pub(crate) fn conn(&self) -> Conn {
        self.slot.conn()
    }

    /// Runs one command (or script) through the breaker, under the command
    /// timeout, and classifies its failure.
    pub(crate) async fn call<T, F, Fut>(
        &self,
        what: &'static str,
        op: F,
    ) -> Result<T, RedisStoreError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        self.run(what, true, op).await
    }

    /// Like [`call`](Self::call), but goes ahead even when the circuit is
    /// open: for the one follow-up that resolves an ambiguous failure (the
    /// lease read-back), which the failure itself may have opened the
    /// circuit against.
    pub(crate) async fn call_past_breaker<T, F, Fut>(
        &self,
        what: &'static str,
        op: F,
    ) -> Result<T, RedisStoreError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        self.run(what, false, op).await
    }

    async fn run<T, F, Fut>(
        &self,
        what: &'static str,
        guarded: bool,
        op: F,
    ) -> Result<T, RedisStoreError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        if !self.slot.connected() {
            return Err(RedisStoreError::NotConnected {
                target: self.target.clone(),
            });
        }
        let probe = if guarded {
            match self.breaker.admit() {
                Admit::Go => false,
                Admit::Probe => true,
                Admit::Refuse(retry_in) => return Err(RedisStoreError::CircuitOpen { retry_in }),
            }
        } else {
            false
        };
        let mut guard = ProbeGuard {
            breaker: &self.breaker,
            armed: probe,
        };
        let outcome = tokio::time::timeout(self.timeout, op(self.conn())).await;
        guard.armed = false;
        match outcome {
            Ok(Ok(value)) => {
                self.answered();
                Ok(value)
            }
            Ok(Err(e)) if e.is_timeout() => Err(self.timed_out(what, probe)),
            Ok(Err(e)) if server_answered(&e) => {
                self.answered();
                Err(RedisStoreError::Command { what, source: e })
            }
            Ok(Err(e)) => {
                self.timeouts_in_row.store(0, Ordering::Relaxed);
                self.breaker.failure(probe);
                tracing::debug!(what, error = %e, "Redis command failed");
                Err(RedisStoreError::Unavailable { what, source: e })
            }
            Err(_elapsed) => Err(self.timed_out(what, probe)),
        }
    }

    fn answered(&self) {
        self.timeouts_in_row.store(0, Ordering::Relaxed);
        self.breaker.success();
    }

    fn timed_out(&self, what: &'static str, probe: bool) -> RedisStoreError {
        self.breaker.failure(probe);
        let n = self.timeouts_in_row.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= self.replace_after {
            self.timeouts_in_row.store(0, Ordering::Relaxed);
            self.replace();
        }
        RedisStoreError::Timeout {
            what,
            timeout: self.timeout,
        }
    }

    /// Swaps in a fresh connection (connected lazily by the next call). The
    /// old one is dropped once its in-flight calls end: a half-open or
    /// frozen connection is never reused.
    fn replace(&self) {
        match self.factory.lazy() {
            Ok(fresh) => {
                self.slot.replace(fresh);
                self.replacements.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    target_addr = %self.target,
                    "Redis timed out repeatedly; replaced the connection"
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not replace the Redis connection");
            }
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        if let Some(connector) = self.connector.take() {
            connector.abort();
        }
    }
}

/// True when `e` is an answer from a live server (an error reply), as
/// opposed to a failure to get one. Replies that say the server or cluster
/// cannot serve right now count as failures.
pub(crate) fn server_answered(e: &RedisError) -> bool {
    use redis::ServerErrorKind as S;
    match e.kind() {
        ErrorKind::Server(kind) => !matches!(
            kind,
            S::BusyLoading | S::TryAgain | S::ClusterDown | S::MasterDown
        ),
        ErrorKind::Extension | ErrorKind::UnexpectedReturnType => true,
        _ => false,
    }
}
