//! `RedisStore`: the `CacheStore` on Redis.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use redis::Value;
use token_core::backend::{
    decode_token, encode_token, storable_expiry, StoreEvent, TokenFingerprint,
};
use token_core::{
    AccessToken, CacheKey, CacheStore, Lease, PutOutcome, StoreCapabilities, StoreError, StoreStats,
};
use tokio::sync::broadcast;
use zeroize::Zeroizing;

use crate::config::RedisConfig;
use crate::error::RedisStoreError;
use crate::events::{self, Events};
use crate::layout::{self, Keys};
use crate::link::{self, Conn, Link};
use crate::scripts;

/// How many times a put retries its compare-and-set when another instance
/// keeps changing the value between its read and its write.
const MAX_PUT_ATTEMPTS: u32 = 8;

/// A [`CacheStore`] on Redis or Redis Cluster, shared by every process that
/// uses the same server and key prefix.
///
/// - **Newer wins, atomically**: a server-side script compares expiries and
///   writes in one step, so a slow instance never replaces a newer token.
///   Values carry a `PXAT` TTL: Redis drops them when the token expires.
/// - **Lease**: `SET`-if-absent with a random owner and a TTL, released by
///   a script only while the owner still holds it. When the reply to an
///   acquire is lost (a timeout, a dropped connection), the store reads the
///   lease back with the same owner instead of guessing.
/// - **Invalidation** deletes the rejected token only if it is still the
///   stored one, and publishes it on pub/sub in the same script; every other
///   store on the prefix turns that into a [`StoreEvent`] for its engine.
/// - **Updates**: a put that stores publishes "updated" (the cache key, no
///   token) in the same script, so an instance waiting for another's
///   refresh reads the new token once instead of polling for it.
/// - **Faults**: every command has a timeout; a circuit breaker fails calls
///   at once after repeated failures; a connection that keeps timing out
///   (half-open, or a frozen server) is replaced; a dropped connection is
///   re-established by the driver.
/// - **Corrupt or foreign values** read as a miss counted in
///   [`stats`](CacheStore::stats).
/// - **Encryption** (feature `encryption`): with a keyring configured, the
///   payload is sealed with token-core's AES-256-GCM envelope, bound to its
///   cache key.
///
/// Cloning is cheap and shares the connection.
///
/// # Storage format
///
/// For a cache key `k` and prefix `p`: the token under `p{h}:token`, the
/// lease under `p{h}:lease`, where `h` is the first 16 bytes of SHA-256 of
/// `k`'s text in lowercase hex (the braces are the cluster hash tag). The
/// token's value is `<expires_at as decimal ms since the epoch>:<payload>`,
/// the payload being `token_core::backend::encode_token`'s output, sealed when
/// encryption is on. Invalidations and updates are published on `p` + `events`.
///
/// Needs Redis 6.2 or later (`SET ... PXAT`).
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use token_redis::{RedisConfig, RedisStore};
///
/// let keyring = token_core::Keyring::from_env("TOKEN_CACHE_KEYS")?;
/// let config = RedisConfig::new("redis://127.0.0.1:6380").with_encryption(keyring);
/// let store = RedisStore::connect(config).await?;
/// println!("tokens live under {}", store.key_prefix());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    link: Link,
    prefix: String,
    channel: String,
    instance: String,
    corrupt_reads: AtomicU64,
    events: Option<Events>,
    #[cfg(feature = "encryption")]
    keyring: Option<Arc<token_core::Keyring>>,
}

/// A handle on the store's own connection, for running other commands on
/// the same client (it implements the driver's
/// [`ConnectionLike`](redis::aio::ConnectionLike)). Commands sent through it
/// bypass the store's timeout and circuit breaker.
#[derive(Clone)]
pub struct RedisConnection(Conn);

impl fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RedisConnection")
    }
}

impl redis::aio::ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, Value> {
        self.0.req_packed_command(cmd)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        self.0.req_packed_commands(pipeline, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.0.get_db()
    }
}

/// Why a stored value was not a token.
#[derive(Debug)]
enum Unreadable {
    Header,
    #[cfg(feature = "encryption")]
    Envelope,
    Codec(token_core::backend::DecodeError),
}

impl fmt::Display for Unreadable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Header => {
                f.write_str("not a token-cache value (no expiry header, or another type)")
            }
            #[cfg(feature = "encryption")]
            Self::Envelope => f.write_str("does not decrypt for this key with this keyring"),
            Self::Codec(e) => write!(f, "{e}"),
        }
    }
}

impl RedisStore {
    /// Connects now. A bad URL, wrong credentials or an untrusted
    /// certificate are an error here, at start-up.
    ///
    /// A server that cannot be reached (refused, timed out, unresolvable,
    /// still loading) is not, unless
    /// [`RedisConfig::with_connect_at_start`] asks for that: after one
    /// attempt (at most the connect budget) and one warning, the store is
    /// returned unconnected and connects in the background with backoff.
    /// Until then every call fails at once
    /// ([`RedisStoreError::NotConnected`]), so a `TokenCache` on it serves
    /// from memory and the IdP, counting `store_errors` and
    /// `store_bypassed`, and uses the store once it answers.
    /// [`is_connected`](Self::is_connected) says which.
    pub async fn connect(config: RedisConfig) -> Result<Self, RedisStoreError> {
        let link = Link::connect(&config).await?;
        Self::build(config, link)
    }

    /// Checks the configuration and returns at once; connects on first use
    /// (for processes that must start while Redis is down: the engine then
    /// serves from memory and the IdP until Redis answers).
    pub fn connect_lazy(config: RedisConfig) -> Result<Self, RedisStoreError> {
        let link = Link::lazy(&config)?;
        Self::build(config, link)
    }

    fn build(config: RedisConfig, link: Link) -> Result<Self, RedisStoreError> {
        let instance = format!("{:032x}", token_core::backend::random_u128());
        let channel = layout::channel(&config.key_prefix);
        let events = if config.events {
            let events = Events::new(
                link::pubsub_clients(&config)?,
                channel.clone(),
                instance.clone(),
                config.connect_timeout,
            );
            events.ensure_listening();
            Some(events)
        } else {
            None
        };
        Ok(Self {
            inner: Arc::new(Inner {
                link,
                prefix: config.key_prefix,
                channel,
                instance,
                corrupt_reads: AtomicU64::new(0),
                events,
                #[cfg(feature = "encryption")]
                keyring: config.keyring,
            }),
        })
    }

    /// False while a server that could not be reached at start-up is being
    /// connected to in the background (see [`connect`](Self::connect)).
    pub fn is_connected(&self) -> bool {
        self.inner.link.connected()
    }

    /// The key prefix.
    pub fn key_prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The Redis key `key`'s token is stored under.
    pub fn token_key(&self, key: &CacheKey) -> String {
        Keys::new(&self.inner.prefix, key).token
    }

    /// The Redis key `key`'s refresh lease is stored under (same hash slot
    /// as the token).
    pub fn lease_key(&self, key: &CacheKey) -> String {
        Keys::new(&self.inner.prefix, key).lease
    }

    /// The pub/sub channel invalidations are published on.
    pub fn events_channel(&self) -> &str {
        &self.inner.channel
    }

    /// The store's connection, for other commands on the same client.
    pub fn connection(&self) -> RedisConnection {
        RedisConnection(self.inner.link.conn())
    }

    /// True while the circuit breaker fails calls at once (or probes).
    pub fn circuit_open(&self) -> bool {
        self.inner.link.circuit_open()
    }

    /// How many times a connection that kept timing out was replaced.
    pub fn connection_replacements(&self) -> u64 {
        self.inner.link.replacements()
    }

    fn encrypted(&self) -> bool {
        #[cfg(feature = "encryption")]
        {
            self.inner.keyring.is_some()
        }
        #[cfg(not(feature = "encryption"))]
        {
            false
        }
    }

    /// Reads a stored value back into a token.
    fn decode(&self, key: &CacheKey, value: &[u8]) -> Result<AccessToken, Unreadable> {
        let (_, payload) = layout::unframe(value).ok_or(Unreadable::Header)?;
        #[cfg(feature = "encryption")]
        if let Some(keyring) = &self.inner.keyring {
            let plain = keyring
                .open(key, payload)
                .map_err(|_| Unreadable::Envelope)?;
            return decode_token(&plain).map_err(Unreadable::Codec);
        }
        let _ = key;
        decode_token(payload).map_err(Unreadable::Codec)
    }

    /// The bytes stored for `token`: header and (sealed) payload.
    fn encode(
        &self,
        key: &CacheKey,
        token: &AccessToken,
        expires_ms: u64,
    ) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        let plain = encode_token(token);
        #[cfg(feature = "encryption")]
        if let Some(keyring) = &self.inner.keyring {
            let sealed = keyring
                .seal(key, &plain)
                .map_err(|e| StoreError::Rejected(format!("cannot encrypt the token: {e}")))?;
            return Ok(Zeroizing::new(layout::frame(expires_ms, &sealed)));
        }
        let _ = key;
        Ok(Zeroizing::new(layout::frame(expires_ms, &plain)))
    }

    fn corrupt(&self, key: &CacheKey, why: &Unreadable) {
        self.inner.corrupt_reads.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(key = %key, reason = %why, "unreadable value in Redis; treated as a miss");
    }

    /// The raw value of `key`'s token. A key of another type is `Err(())`.
    async fn read(&self, keys: &Keys) -> Result<Result<Option<Vec<u8>>, ()>, StoreError> {
        let token_key = keys.token.as_str();
        let got = self
            .inner
            .link
            .call("GET", |mut c| async move {
                redis::cmd("GET")
                    .arg(token_key)
                    .query_async::<Option<Vec<u8>>>(&mut c)
                    .await
            })
            .await;
        match got {
            Ok(value) => Ok(Ok(value)),
            Err(RedisStoreError::Command { source, .. }) if source.code() == Some("WRONGTYPE") => {
                Ok(Err(()))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn acquire(
        &self,
        keys: &Keys,
        lease: &Lease,
        ttl_ms: u64,
        past_breaker: bool,
    ) -> Result<i64, RedisStoreError> {
        let (lease_key, owner) = (keys.lease.as_str(), lease.owner());
        let op = |mut c: Conn| async move {
            scripts::ACQUIRE
                .key(lease_key)
                .arg(owner)
                .arg(ttl_ms)
                .invoke_async::<i64>(&mut c)
                .await
        };
        if past_breaker {
            self.inner
                .link
                .call_past_breaker("lease read-back", op)
                .await
        } else {
            self.inner.link.call("lease acquire", op).await
        }
    }
}

#[async_trait]
impl CacheStore for RedisStore {
    fn capabilities(&self) -> StoreCapabilities {
        StoreCapabilities::local()
            .with_shared(true)
            .with_persistent(true)
            .with_serialized(true)
            .with_encrypted(self.encrypted())
    }

    async fn get(&self, key: &CacheKey) -> Result<Option<AccessToken>, StoreError> {
        let keys = Keys::new(&self.inner.prefix, key);
        let value = match self.read(&keys).await? {
            Ok(Some(value)) => value,
            Ok(None) => return Ok(None),
            Err(()) => {
                self.corrupt(key, &Unreadable::Header);
                return Ok(None);
            }
        };
        let value = Zeroizing::new(value);
        match self.decode(key, &value) {
            Ok(token) if !token.is_live_at(SystemTime::now()) => Ok(None),
            Ok(token) => Ok(Some(token)),
            Err(why) => {
                self.corrupt(key, &why);
                Ok(None)
            }
        }
    }

    async fn put(&self, key: &CacheKey, token: &AccessToken) -> Result<PutOutcome, StoreError> {
        let expires_ms = layout::to_ms(storable_expiry(token)?);
        let keys = Keys::new(&self.inner.prefix, key);
        let value = self.encode(key, token, expires_ms)?;
        let token_key = keys.token.as_str();
        let updated = events::encode_updated(&self.inner.instance, key);
        let (channel, updated) = (self.inner.channel.as_str(), updated.as_str());
        for _ in 0..MAX_PUT_ATTEMPTS {
            let new = &value[..];
            let reply = self
                .inner
                .link
                .call("put", |mut c| async move {
                    scripts::PUT
                        .key(token_key)
                        .arg(new)
                        .arg(expires_ms)
                        .arg(channel)
                        .arg(updated)
                        .invoke_async::<Value>(&mut c)
                        .await
                })
                .await?;
            let stored = match reply {
                Value::Int(1) => return Ok(PutOutcome::Stored),
                Value::BulkString(stored) => Zeroizing::new(stored),
                _ => return Err(RedisStoreError::UnexpectedReply("put").into()),
            };
            match self.decode(key, &stored) {
                Ok(current)
                    if current
                        .expires_at()
                        .is_some_and(|at| layout::to_ms(at) > expires_ms) =>
                {
                    return Ok(PutOutcome::KeptNewer);
                }
                // A corrupt value, or one whose header claims a later
                // expiry than its token has: it takes no part in
                // newer-wins. Replace it, unless it changed meanwhile.
                Ok(_) | Err(_) => {
                    let seen = &stored[..];
                    let replaced = self
                        .inner
                        .link
                        .call("put over an unreadable value", |mut c| async move {
                            scripts::REPLACE_IF
                                .key(token_key)
                                .arg(seen)
                                .arg(new)
                                .arg(expires_ms)
                                .arg(channel)
                                .arg(updated)
                                .invoke_async::<i64>(&mut c)
                                .await
                        })
                        .await?;
                    if replaced == 1 {
                        tracing::warn!(key = %key, "replaced an unreadable value in Redis");
                        return Ok(PutOutcome::Stored);
                    }
                }
            }
        }
        Err(RedisStoreError::Contention(MAX_PUT_ATTEMPTS).into())
    }

    async fn remove(&self, key: &CacheKey) -> Result<(), StoreError> {
        let keys = Keys::new(&self.inner.prefix, key);
        let token_key = keys.token.as_str();
        self.inner
            .link
            .call("DEL", |mut c| async move {
                redis::cmd("DEL")
                    .arg(token_key)
                    .query_async::<i64>(&mut c)
                    .await
            })
            .await?;
        Ok(())
    }

    async fn try_acquire_lease(
        &self,
        key: &CacheKey,
        ttl: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        let keys = Keys::new(&self.inner.prefix, key);
        let lease = Lease::new_random();
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let outcome = match self.acquire(&keys, &lease, ttl_ms, false).await {
            Ok(outcome) => outcome,
            // The script may have run and only its reply been lost: read
            // the lease back with the same owner (the script is idempotent
            // for its owner) instead of guessing either way.
            Err(e @ (RedisStoreError::Timeout { .. } | RedisStoreError::Unavailable { .. })) => {
                tracing::debug!(key = %key, error = %e, "lease acquire reply lost; reading the lease back");
                self.acquire(&keys, &lease, ttl_ms, true).await?
            }
            Err(e) => return Err(e.into()),
        };
        match outcome {
            1 | 2 => Ok(Some(lease)),
            0 => Ok(None),
            _ => Err(RedisStoreError::UnexpectedReply("lease acquire").into()),
        }
    }

    async fn release_lease(&self, key: &CacheKey, lease: &Lease) -> Result<bool, StoreError> {
        let keys = Keys::new(&self.inner.prefix, key);
        let (lease_key, owner) = (keys.lease.as_str(), lease.owner());
        let released = self
            .inner
            .link
            .call("lease release", |mut c| async move {
                scripts::RELEASE
                    .key(lease_key)
                    .arg(owner)
                    .invoke_async::<i64>(&mut c)
                    .await
            })
            .await?;
        Ok(released == 1)
    }

    async fn invalidate(&self, key: &CacheKey, rejected: &AccessToken) -> Result<bool, StoreError> {
        let keys = Keys::new(&self.inner.prefix, key);
        let Ok(Some(value)) = self.read(&keys).await? else {
            return Ok(false);
        };
        let value = Zeroizing::new(value);
        match self.decode(key, &value) {
            Ok(stored) if stored.same_secret(rejected) => {}
            _ => return Ok(false),
        }
        let message = events::encode(&self.inner.instance, &TokenFingerprint::of(rejected), key);
        let (token_key, seen, channel, message) = (
            keys.token.as_str(),
            &value[..],
            self.inner.channel.as_str(),
            message.as_str(),
        );
        let deleted = self
            .inner
            .link
            .call("invalidate", |mut c| async move {
                scripts::INVALIDATE
                    .key(token_key)
                    .arg(seen)
                    .arg(channel)
                    .arg(message)
                    .invoke_async::<i64>(&mut c)
                    .await
            })
            .await?;
        Ok(deleted == 1)
    }

    fn subscribe(&self) -> Option<broadcast::Receiver<StoreEvent>> {
        self.inner.events.as_ref().map(Events::subscribe)
    }

    fn stats(&self) -> StoreStats {
        StoreStats::new(self.inner.corrupt_reads.load(Ordering::Relaxed))
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("target", &self.inner.link.target())
            .field("key_prefix", &self.inner.prefix)
            .field("encrypted", &self.encrypted())
            .field("events", &self.inner.events.is_some())
            .field("circuit_open", &self.inner.link.circuit_open())
            .finish_non_exhaustive()
    }
}
