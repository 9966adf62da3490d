//! Faults: a server killed and restarted, paused, frozen; a lost reply to a
//! lease acquire; corrupt and foreign values; invalidation across instances.
//! Each test runs its own private `redis-server`.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use token_core::test_util::FakeIdp;
use token_core::{
    AccessToken, CacheKey, CacheStore, RefreshPolicy, StoreError, TokenCache, TokenRequest,
};
use token_redis::redis;
use token_redis::{RedisConfig, RedisStore, RedisStoreError};
use token_testkit::{redis_command, RedisServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// token-core's shared fake IdP, handing out `tok-<n>` that last `lifetime`.
fn counting_idp(lifetime: Duration) -> Arc<FakeIdp> {
    Arc::new(
        FakeIdp::new()
            .with_id("fault-idp")
            .with_secret_prefix("tok-")
            .with_lifetime(lifetime),
    )
}

fn token(secret: &str, lifetime: Duration) -> AccessToken {
    AccessToken::new(secret, SystemTime::now()).with_expires_in(lifetime)
}

fn fast_config(url: String, label: &str) -> RedisConfig {
    RedisConfig::new(url)
        .with_plaintext()
        .with_key_prefix(support::fresh_prefix(label))
        .with_command_timeout(Duration::from_millis(200))
        .with_connect_timeout(Duration::from_millis(200))
        .with_circuit_breaker(3, Duration::from_millis(200))
}

/// Calls `f` until it returns `Some`, at most `tries` times, 50 ms apart.
async fn eventually<T, F, Fut>(tries: usize, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..tries {
        if let Some(v) = f().await {
            return Some(v);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

fn policy() -> RefreshPolicy {
    RefreshPolicy::default()
        .with_store_timeout(Duration::from_millis(500))
        .with_store_cooldown(Duration::from_millis(300))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_recovers_after_the_server_is_killed_and_restarted() {
    let Some(mut server) = RedisServer::private() else {
        return;
    };
    let store = RedisStore::connect(fast_config(server.url(), "restart"))
        .await
        .unwrap();
    let key = CacheKey::from_raw("tc1|restart|k");
    store
        .put(&key, &token("before", Duration::from_secs(60)))
        .await
        .unwrap();

    server.kill();
    // Every call fails (never hangs, never panics); the circuit opens.
    let mut failures = 0;
    for _ in 0..10 {
        if store.get(&key).await.is_err() {
            failures += 1;
        }
    }
    assert_eq!(failures, 10, "every call must fail while Redis is down");
    assert!(
        store.circuit_open(),
        "repeated failures must open the circuit"
    );
    let err = store.get(&key).await.unwrap_err();
    assert!(err.is_transient(), "{err}");

    server.restart().unwrap();
    // The restarted server has no data (persistence off): the store answers
    // again, with a miss, by itself.
    let answered = eventually(100, || async { store.get(&key).await.ok() }).await;
    assert_eq!(answered.map(|t| t.is_some()), Some(false));
    store
        .put(&key, &token("after", Duration::from_secs(60)))
        .await
        .unwrap();
    let got = store.get(&key).await.unwrap().unwrap();
    assert!(got.same_secret(&token("after", Duration::from_secs(1))));
    assert!(!store.circuit_open());
    let lease = store
        .try_acquire_lease(&key, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(lease.is_some());
}

/// Serves a first token, then checks that `stall` makes store calls fail
/// with timeouts while the cache keeps serving that token without new IdP
/// calls, and that the store works again after `resume`.
async fn cache_rides_out_a_stalled_server(
    server: &RedisServer,
    stall: impl FnOnce(),
    resume: impl FnOnce(),
) {
    let store = RedisStore::connect(fast_config(server.url(), "stall"))
        .await
        .unwrap();
    let idp = counting_idp(Duration::from_secs(3600));
    let cache = TokenCache::builder_arc(idp.clone())
        .store(store.clone())
        .policy(policy())
        .build();
    let request = TokenRequest::builder().scope("stall").build();
    let first = cache.get_token(&request).await.unwrap().to_access_token();
    assert_eq!(idp.calls(), 1);

    stall();
    let key = cache.cache_key(&request);
    let mut timeouts = 0;
    for _ in 0..4 {
        match store.get(&key).await {
            Err(StoreError::Timeout(d)) => {
                assert_eq!(d, Duration::from_millis(200));
                timeouts += 1;
            }
            // Once the circuit is open, calls fail at once instead.
            Err(StoreError::Unavailable { message, .. }) if message.contains("circuit") => {}
            other => panic!("expected a timeout or an open circuit, got {other:?}"),
        }
    }
    assert!(timeouts >= 1, "the stalled server must cause timeouts");
    // Repeated timeouts replace the (possibly half-open) connection.
    assert!(store.connection_replacements() >= 1);
    for _ in 0..200 {
        let t = cache.get_token(&request).await.unwrap();
        assert!(t.same_secret(&first));
    }
    assert_eq!(
        idp.calls(),
        1,
        "valid tokens are served from memory, no IdP call"
    );

    resume();
    let back = eventually(200, || async { store.get(&key).await.ok() }).await;
    let back = back.expect("the store answers again after the server resumes");
    assert!(back.is_some_and(|t| t.same_secret(&first)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_pause_fails_store_calls_in_time_and_tokens_keep_being_served() {
    let Some(server) = RedisServer::private() else {
        return;
    };
    let port = server.port();
    cache_rides_out_a_stalled_server(
        &server,
        || {
            redis_command(port, &["CLIENT", "PAUSE", "3000", "ALL"]).unwrap();
        },
        // The pause ends by itself.
        || {},
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_fails_store_calls_in_time_and_tokens_keep_being_served() {
    let Some(server) = RedisServer::private() else {
        return;
    };
    cache_rides_out_a_stalled_server(&server, || server.freeze(), || server.thaw()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_and_foreign_values_are_counted_misses_and_the_cache_refetches() {
    let Some(server) = RedisServer::private() else {
        return;
    };
    let store = RedisStore::connect(fast_config(server.url(), "corrupt"))
        .await
        .unwrap();
    let key = CacheKey::from_raw("tc1|corrupt|k");
    let mut c = store.connection();

    // A value of another type under the token key: a miss, not an error.
    redis::cmd("RPUSH")
        .arg(store.token_key(&key))
        .arg("foreign")
        .query_async::<()>(&mut c)
        .await
        .unwrap();
    assert!(store.get(&key).await.unwrap().is_none());
    assert_eq!(store.stats().corrupt_reads, 1);
    // ...and a put replaces it.
    store
        .put(&key, &token("fresh", Duration::from_secs(60)))
        .await
        .unwrap();
    assert!(store.get(&key).await.unwrap().is_some());

    // Bytes from someone else's application.
    redis::cmd("SET")
        .arg(store.token_key(&key))
        .arg("hello world")
        .query_async::<()>(&mut c)
        .await
        .unwrap();
    assert!(store.get(&key).await.unwrap().is_none());
    assert_eq!(store.stats().corrupt_reads, 2);

    // A header that claims a later expiry than its (unreadable) payload
    // takes no part in newer-wins: a put replaces it.
    redis::cmd("SET")
        .arg(store.token_key(&key))
        .arg(b"9999999999999:\x01{not json".to_vec())
        .query_async::<()>(&mut c)
        .await
        .unwrap();
    let outcome = store
        .put(&key, &token("over-junk", Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(outcome, token_core::PutOutcome::Stored);
    assert!(store.get(&key).await.unwrap().is_some());

    // The engine over it: a counted miss, one IdP call, the new token stored.
    let idp = counting_idp(Duration::from_secs(3600));
    let cache = TokenCache::builder_arc(idp.clone())
        .store(store.clone())
        .policy(policy())
        .build();
    let request = TokenRequest::builder().scope("corrupt").build();
    let key = cache.cache_key(&request);
    redis::cmd("SET")
        .arg(store.token_key(&key))
        .arg(b"9999999999999:\xff\xfe garbage".to_vec())
        .query_async::<()>(&mut c)
        .await
        .unwrap();
    let got = cache.get_token(&request).await.unwrap();
    assert_eq!(idp.calls(), 1);
    assert!(cache.stats().store_corrupt_reads >= 1);
    let stored = store
        .get(&key)
        .await
        .unwrap()
        .expect("the fetched token replaced the junk");
    assert!(stored.same_secret(&got));
}

/// A loopback TCP proxy that, when armed, forwards the next request to the
/// server but drops the server's reply and closes the connection: the
/// client cannot know whether its command ran.
struct ReplyCutter {
    port: u16,
    armed: Arc<AtomicBool>,
    cuts: Arc<AtomicUsize>,
}

impl ReplyCutter {
    async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let armed = Arc::new(AtomicBool::new(false));
        let cuts = Arc::new(AtomicUsize::new(0));
        let (a, k) = (armed.clone(), cuts.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                    continue;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut cr, &mut sw).await;
                });
                let (a, k) = (a.clone(), k.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match sr.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if a.swap(false, Ordering::SeqCst) {
                            k.fetch_add(1, Ordering::SeqCst);
                            let _ = cw.shutdown().await;
                            return;
                        }
                        if cw.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self { port, armed, cuts }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_lease_acquire_reply_is_resolved_by_reading_the_lease_back() {
    let Some(server) = RedisServer::private() else {
        return;
    };
    let proxy = ReplyCutter::start(server.port()).await;
    let prefix = support::fresh_prefix("lost-reply");
    let through_proxy = RedisStore::connect(
        RedisConfig::new(format!("redis://127.0.0.1:{}", proxy.port))
            .with_plaintext()
            .with_key_prefix(prefix.clone())
            .with_invalidation_events(false),
    )
    .await
    .unwrap();
    let direct = RedisStore::connect(
        RedisConfig::new(server.url())
            .with_plaintext()
            .with_key_prefix(prefix),
    )
    .await
    .unwrap();
    // Load the script, so the acquire below is a single EVALSHA.
    let warm = CacheKey::from_raw("tc1|lost|warm");
    assert!(through_proxy
        .try_acquire_lease(&warm, Duration::from_secs(5))
        .await
        .unwrap()
        .is_some());

    let key = CacheKey::from_raw("tc1|lost|k");
    proxy.armed.store(true, Ordering::SeqCst);
    let lease = through_proxy
        .try_acquire_lease(&key, Duration::from_secs(30))
        .await
        .expect("the read-back resolves the lost reply")
        .expect("the acquire ran on the server, so the lease is ours");
    assert_eq!(
        proxy.cuts.load(Ordering::SeqCst),
        1,
        "the reply really was lost"
    );

    // The server agrees: the lease is held, by exactly this owner.
    let mut c = direct.connection();
    let owner: Option<String> = redis::cmd("GET")
        .arg(direct.lease_key(&key))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(owner.as_deref(), Some(lease.owner()));
    assert!(direct
        .try_acquire_lease(&key, Duration::from_secs(5))
        .await
        .unwrap()
        .is_none());
    assert!(through_proxy.release_lease(&key, &lease).await.unwrap());
    assert!(direct
        .try_acquire_lease(&key, Duration::from_secs(5))
        .await
        .unwrap()
        .is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_on_one_instance_drops_the_token_from_the_others_hot_slots() {
    let Some(server) = RedisServer::private() else {
        return;
    };
    let prefix = support::fresh_prefix("invalidate");
    let config = RedisConfig::new(server.url())
        .with_plaintext()
        .with_key_prefix(prefix);
    let idp = counting_idp(Duration::from_secs(3600));
    let store_a = RedisStore::connect(config.clone()).await.unwrap();
    let channel = store_a.events_channel().to_owned();
    let a = TokenCache::builder_arc(idp.clone())
        .store(store_a)
        .policy(policy())
        .build();
    let b = TokenCache::builder_arc(idp.clone())
        .store(RedisStore::connect(config).await.unwrap())
        .policy(policy())
        .build();
    let request = TokenRequest::builder().scope("invalidate").build();
    let first = a.get_token(&request).await.unwrap().to_access_token();
    let seen_by_b = b.get_token(&request).await.unwrap().to_access_token();
    assert!(
        seen_by_b.same_secret(&first),
        "b adopts a's token from Redis"
    );
    assert_eq!(idp.calls(), 1);

    // Give both listeners time to subscribe, then a resource rejects the token at a.
    let subscribed = eventually(100, || async {
        let mut c = redis::Client::open(server.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .ok()?;
        let n: Vec<(String, i64)> = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(&channel)
            .query_async(&mut c)
            .await
            .ok()?;
        (n.first().map(|(_, n)| *n) >= Some(2)).then_some(())
    })
    .await;
    assert!(
        subscribed.is_some(),
        "both stores subscribe to invalidations"
    );
    assert!(a.invalidate(&request, &first).await);

    // b drops it from its hot slot and gets a new one.
    let fresh = eventually(100, || async {
        let t = b.get_token(&request).await.unwrap();
        (!t.same_secret(&first)).then(|| t.to_access_token())
    })
    .await
    .expect("b stops serving the invalidated token");
    assert!(b.stats().invalidations >= 1);
    assert!(!fresh.same_secret(&first));
    assert_eq!(idp.calls(), 2, "one refresh for the fleet");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_users_connect_and_wrong_passwords_fail_without_showing_them() {
    let Some(server) = RedisServer::private() else {
        return;
    };
    let port = server.port();
    redis_command(
        port,
        &[
            "ACL",
            "SETUSER",
            "tokens",
            "on",
            ">acl-pass-7f3a",
            "~*",
            "&*",
            "+@all",
        ],
    )
    .unwrap();
    redis_command(port, &["CONFIG", "SET", "requirepass", "default-pass-91c2"]).unwrap();

    let ok = RedisStore::connect(
        RedisConfig::new(format!("redis://127.0.0.1:{port}"))
            .with_plaintext()
            .with_username("tokens")
            .with_password("acl-pass-7f3a")
            .with_key_prefix(support::fresh_prefix("acl")),
    )
    .await
    .expect("the ACL user connects");
    let key = CacheKey::from_raw("tc1|acl|k");
    ok.put(&key, &token("acl-token", Duration::from_secs(60)))
        .await
        .unwrap();
    assert!(ok.get(&key).await.unwrap().is_some());
    let shown = format!("{ok:?}");
    assert!(!shown.contains("acl-pass-7f3a"), "{shown}");

    // A wrong password, in the URL and in the config: a clear error at
    // start-up that shows neither password.
    for config in [
        RedisConfig::new(format!("redis://tokens:wrong-pass-5e1d@127.0.0.1:{port}"))
            .with_plaintext(),
        RedisConfig::new(format!("redis://127.0.0.1:{port}"))
            .with_plaintext()
            .with_username("tokens")
            .with_password("wrong-pass-5e1d"),
    ] {
        let shown = format!("{config:?}");
        assert!(!shown.contains("wrong-pass-5e1d"), "{shown}");
        let err = RedisStore::connect(config).await.unwrap_err();
        assert!(matches!(err, RedisStoreError::Connect { .. }), "{err:?}");
        let mut chain = format!("{err} / {err:?}");
        let mut source = std::error::Error::source(&err);
        while let Some(s) = source {
            chain.push_str(&format!(" / {s} / {s:?}"));
            source = s.source();
        }
        assert!(!chain.contains("wrong-pass-5e1d"), "{chain}");
        assert!(chain.contains("127.0.0.1"), "the error says where: {chain}");
        let as_store: StoreError = err.into();
        assert!(!as_store.to_string().contains("wrong-pass-5e1d"));
    }
}

#[cfg(feature = "encryption")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_values_are_unreadable_without_the_right_key() {
    use token_core::{EncryptionKey, Keyring};
    let Some(server) = RedisServer::private() else {
        return;
    };
    let config = RedisConfig::new(server.url()).with_key_prefix(support::fresh_prefix("enc"));
    let key_bytes = [7u8; 32];
    let writer = RedisStore::connect(
        config
            .clone()
            .with_encryption(Keyring::new(EncryptionKey::from_bytes(key_bytes))),
    )
    .await
    .unwrap();
    let same_key = RedisStore::connect(
        config
            .clone()
            .with_encryption(Keyring::new(EncryptionKey::from_bytes(key_bytes))),
    )
    .await
    .unwrap();
    let other_key = RedisStore::connect(
        config
            .clone()
            .with_encryption(Keyring::new(EncryptionKey::from_bytes([9u8; 32]))),
    )
    .await
    .unwrap();
    let plain = RedisStore::connect(config.with_plaintext()).await.unwrap();
    assert!(writer.capabilities().encrypted && !plain.capabilities().encrypted);

    let key = CacheKey::from_raw("tc1|enc|k");
    let secret = "enc-secret-4b1e9a";
    writer
        .put(
            &key,
            &token(secret, Duration::from_secs(60)).with_refresh_token("enc-refresh-77d0"),
        )
        .await
        .unwrap();
    let raw = support::Raw(writer.clone())
        .get_value(&key)
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&raw);
    assert!(
        !text.contains(secret) && !text.contains("enc-refresh-77d0"),
        "nothing readable is stored"
    );

    assert!(same_key
        .get(&key)
        .await
        .unwrap()
        .is_some_and(|t| t.same_secret(&token(secret, Duration::from_secs(1)))));
    for reader in [&other_key, &plain] {
        assert!(reader.get(&key).await.unwrap().is_none());
        assert_eq!(reader.stats().corrupt_reads, 1);
    }
    // A plain value is not readable by an encrypting store either.
    plain
        .put(&key, &token("plain-token", Duration::from_secs(120)))
        .await
        .unwrap();
    assert!(writer.get(&key).await.unwrap().is_none());
    assert_eq!(writer.stats().corrupt_reads, 1);
}
