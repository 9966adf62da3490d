//! A Redis that cannot be reached at start-up: `RedisStore::connect` returns
//! a store that connects in the background, the engine serves from memory and
//! the IdP meanwhile (one IdP call per key), and uses the store once Redis
//! answers. `with_connect_at_start(true)` keeps the fail-fast behaviour.
//! Each test runs its own private `redis-server`, started after the store.

mod support;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use token_core::test_util::FakeIdp;
use token_core::{AccessToken, CacheStore, RefreshPolicy, TokenCache, TokenRequest};
use token_redis::{RedisConfig, RedisStore, RedisStoreError};
use token_testkit::RedisServer;

fn config(url: String, prefix: &str) -> RedisConfig {
    RedisConfig::new(url)
        .with_plaintext()
        .with_key_prefix(prefix)
        .with_command_timeout(Duration::from_millis(200))
        .with_connect_timeout(Duration::from_millis(200))
}

/// A stopped server: its port is known and nothing listens on it.
fn stopped_server() -> Option<RedisServer> {
    let mut server = RedisServer::private()?;
    server.kill();
    Some(server)
}

/// Polls `done` every 50 ms, for at most 20 s.
async fn wait_until(mut done: impl FnMut() -> bool) -> bool {
    for _ in 0..400 {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    done()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_unreachable_at_start_up_is_bypassed_then_used_once_redis_answers() {
    let Some(mut server) = stopped_server() else {
        return;
    };
    let prefix = support::fresh_prefix("start-up");
    let store = RedisStore::connect(config(server.url(), &prefix))
        .await
        .expect("Redis being down does not stop the start-up");
    assert!(!store.is_connected());
    let err = store
        .get(&token_core::CacheKey::from_raw("tc1|start-up|probe"))
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");

    let cooldown = Duration::from_millis(200);
    let idp = Arc::new(
        FakeIdp::new()
            .with_id("start-up-idp")
            .with_secret_prefix("tok-")
            .with_lifetime(Duration::from_secs(600)),
    );
    let cache = TokenCache::builder_arc(idp.clone())
        .store(store.clone())
        .policy(
            RefreshPolicy::default()
                .with_store_timeout(Duration::from_millis(500))
                .with_store_cooldown(cooldown),
        )
        .build();

    // Meanwhile: tokens are served, one IdP call per key (in-process
    // single-flight), and the bypass is counted.
    for (n, scope) in ["orders.read", "billing.read"].into_iter().enumerate() {
        let request = TokenRequest::builder().scope(scope).build();
        let callers: Vec<_> = (0..16)
            .map(|_| {
                let (cache, request) = (cache.clone(), request.clone());
                tokio::spawn(async move { cache.get_token(&request).await })
            })
            .collect();
        for caller in callers {
            caller.await.unwrap().expect("served while Redis is down");
        }
        assert_eq!(idp.calls(), n + 1, "one IdP call per key");
    }
    let stats = cache.stats();
    assert!(stats.store_errors > 0, "{stats:?}");
    assert!(stats.store_bypassed > 0, "{stats:?}");

    // Redis comes up: the store connects by itself.
    server.restart().unwrap();
    assert!(
        wait_until(|| store.is_connected()).await,
        "the store connects in the background once Redis answers"
    );
    // Past the engine's cooldown, the store is used again: a token another
    // instance put is adopted instead of fetched.
    tokio::time::sleep(cooldown * 2).await;
    let other = RedisStore::connect(config(server.url(), &prefix).with_connect_at_start(true))
        .await
        .unwrap();
    let request = TokenRequest::builder().scope("shared.read").build();
    let shared = AccessToken::new("put-by-another-instance", SystemTime::now())
        .with_expires_in(Duration::from_secs(600));
    other
        .put(&cache.cache_key(&request), &shared)
        .await
        .unwrap();
    let calls = idp.calls();
    let got = cache.get_token(&request).await.unwrap();
    assert!(got.same_secret(&shared), "the stored token is adopted");
    assert_eq!(idp.calls(), calls, "no IdP call for an adopted token");

    // And what this instance fetches now reaches the store for the others.
    let request = TokenRequest::builder().scope("new.read").build();
    let fetched = cache.get_token(&request).await.unwrap();
    let seen = other.get(&cache.cache_key(&request)).await.unwrap();
    assert!(seen.is_some_and(|t| fetched.same_secret(&t)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_at_start_keeps_failing_fast_when_redis_is_down() {
    let Some(server) = stopped_server() else {
        return;
    };
    let config = config(server.url(), &support::fresh_prefix("fail-fast"));
    assert!(!config.connect_at_start(), "lazy by default");
    let err = RedisStore::connect(config.with_connect_at_start(true))
        .await
        .unwrap_err();
    assert!(matches!(err, RedisStoreError::Connect { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_dropped_before_redis_answers_stops_connecting() {
    let Some(mut server) = stopped_server() else {
        return;
    };
    let store = RedisStore::connect(config(server.url(), &support::fresh_prefix("dropped")))
        .await
        .unwrap();
    drop(store);
    // Nothing is left to connect: a server started now sees no client of
    // ours (only the `CLIENT LIST` connection itself).
    server.restart().unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let clients = server.command(&["CLIENT", "LIST"]).unwrap();
    assert_eq!(clients.lines().count(), 1, "{clients}");
}
