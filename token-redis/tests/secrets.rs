//! No secret (access token, refresh token, password) appears in any log
//! line, error or `Debug` output of the store, through normal use and
//! through failures.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use token_core::test_util::FakeIdp;
use token_core::{AccessToken, CacheKey, CacheStore, TokenCache, TokenRequest};
use token_redis::redis;
use token_redis::{RedisConfig, RedisStore};
use token_testkit::RedisServer;

const TOKEN: &str = "access-secret-3c9f1e";
const REFRESH: &str = "refresh-secret-a41d07";
const PASSWORD: &str = "redis-pass-58be2c";

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn token() -> AccessToken {
    AccessToken::new(TOKEN, SystemTime::now())
        .with_expires_in(Duration::from_secs(3600))
        .with_refresh_token(REFRESH)
}

#[tokio::test]
async fn no_secret_in_logs_errors_or_debug() {
    let Some(mut server) = RedisServer::private() else {
        return;
    };
    server
        .command(&["CONFIG", "SET", "requirepass", PASSWORD])
        .unwrap();
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let mut seen = String::new();
    let config = RedisConfig::new(format!("redis://:{PASSWORD}@127.0.0.1:{}", server.port()))
        .with_plaintext()
        .with_key_prefix(support::fresh_prefix("secrets"))
        .with_command_timeout(Duration::from_millis(200))
        .with_circuit_breaker(2, Duration::from_millis(100));
    seen.push_str(&format!("{config:?}"));
    let store = RedisStore::connect(config.clone()).await.unwrap();
    seen.push_str(&format!("{store:?}"));

    // Normal use through the engine, an invalidation, corrupt values.
    let idp = FakeIdp::new()
        .with_id("secrets-idp")
        .with_secret(TOKEN)
        .with_refresh_token(REFRESH);
    let cache = TokenCache::builder(idp).store(store.clone()).build();
    let request = TokenRequest::builder().scope("secrets").build();
    let got = cache.get_token(&request).await.unwrap();
    seen.push_str(&format!("{got:?} {cache:?}"));
    let key = cache.cache_key(&request);
    assert!(store.invalidate(&key, &token()).await.unwrap());
    let mut c = store.connection();
    let other = CacheKey::from_raw("tc1|secrets|other");
    redis::cmd("SET")
        .arg(store.token_key(&other))
        .arg(format!("99999999999999:\x01{{\"s\":\"{TOKEN}\",\"t\":5}}"))
        .query_async::<()>(&mut c)
        .await
        .unwrap();
    assert!(store.get(&other).await.unwrap().is_none());
    store.put(&other, &token()).await.unwrap();

    // Failures: wrong password, a dead server.
    let wrong = RedisStore::connect(
        RedisConfig::new(format!("redis://127.0.0.1:{}", server.port()))
            .with_plaintext()
            .with_password("not-it-e07a"),
    )
    .await
    .unwrap_err();
    seen.push_str(&format!("{wrong} {wrong:?}"));
    server.kill();
    for _ in 0..4 {
        if let Err(e) = store.put(&key, &token()).await {
            seen.push_str(&format!("{e} {e:?}"));
        }
        if let Err(e) = store.try_acquire_lease(&key, Duration::from_secs(1)).await {
            seen.push_str(&format!("{e} {e:?}"));
        }
    }
    let _ = cache.invalidate(&request, &token()).await;

    let logs = String::from_utf8_lossy(&capture.0.lock().unwrap()).into_owned();
    assert!(logs.contains("WARN"), "the failures were logged:\n{logs}");
    for secret in [TOKEN, REFRESH, PASSWORD, "not-it-e07a"] {
        assert!(!logs.contains(secret), "{secret} in the logs:\n{logs}");
        assert!(
            !seen.contains(secret),
            "{secret} in errors or Debug:\n{seen}"
        );
    }
}
