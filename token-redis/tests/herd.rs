//! A fleet of engines, each with its own `RedisStore`, keeps one key warm on
//! a private Redis (standalone, then a private 3-master cluster): the store
//! commands per instance per refresh, counted by the server itself
//! (`INFO commandstats` after `CONFIG RESETSTAT`), stay at about one, with
//! one IdP call per refresh for the whole fleet, no failed request and no
//! expired token served.
//!
//! Tokens live 4 s so that a few refreshes fit in a short test; the bound is
//! on commands, not on time.
//!
//! And a waiter whose lease holder died (no token, no message) is not
//! stranded: it takes over when the lease expires, with one IdP call.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use token_core::test_util::FakeIdp;
use token_core::{RefreshPolicy, TokenCache, TokenRequest};
use token_redis::{RedisConfig, RedisStore};

const INSTANCES: usize = 100;
const LIFETIME: Duration = Duration::from_secs(4);
const RUN_FOR: Duration = Duration::from_secs(12);
const REQUEST_EVERY: Duration = Duration::from_millis(20);

/// Runs the fleet on `config`'s servers (`ports`) and checks the bound.
fn a_fleet_makes_about_one_command_per_instance_per_refresh(config: RedisConfig, ports: &[u16]) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let idp = Arc::new(FakeIdp::new().with_lifetime(LIFETIME));
        let config = config.with_key_prefix(support::fresh_prefix("herd"));
        let request = TokenRequest::builder().scope("herd").build();
        let (failed, expired, ready) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let (mut guards, mut tasks) = (Vec::new(), Vec::new());
        for _ in 0..INSTANCES {
            let store = RedisStore::connect(config.clone()).await.expect("Redis is up");
            let cache = TokenCache::builder_arc(idp.clone())
                .store(store)
                .policy(RefreshPolicy::default())
                .build();
            guards.push(cache.keep_warm(&request).expect("a runtime"));
            let handle = cache.handle(&request);
            let (failed, expired, ready, stop) =
                (failed.clone(), expired.clone(), ready.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut first = true;
                while !stop.load(Ordering::Relaxed) {
                    match handle.token().await {
                        Ok(t) if !t.is_live_at(SystemTime::now()) => {
                            expired.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(_) if first => {
                            first = false;
                            ready.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(_) => {}
                        Err(e) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            eprintln!("request failed: {e}");
                        }
                    }
                    tokio::time::sleep(REQUEST_EVERY).await;
                }
            }));
        }
        while ready.load(Ordering::Relaxed) < INSTANCES as u64 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(idp.calls(), 1, "the cold start: one IdP call for the fleet");

        support::reset_commands(ports);
        let idp_before = idp.calls();
        tokio::time::sleep(RUN_FOR).await;
        let total = support::commands(ports);
        let refreshes = (idp.calls() - idp_before) as u64;
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.expect("a request task");
        }
        drop(guards);

        let per_instance = total as f64 / (INSTANCES as u64 * refreshes.max(1)) as f64;
        println!(
            "{INSTANCES} instances, {:?} tokens, {:?}: {refreshes} IdP calls, {total} Redis commands, \
             {per_instance:.2} per instance per refresh, {} failed, {} expired",
            LIFETIME,
            RUN_FOR,
            failed.load(Ordering::Relaxed),
            expired.load(Ordering::Relaxed)
        );
        assert_eq!(failed.load(Ordering::Relaxed), 0, "failed requests");
        assert_eq!(expired.load(Ordering::Relaxed), 0, "expired tokens served");
        // 4 s tokens refresh every 2-2.6 s (half-life less jitter, plus the
        // spread): 4 to 6 refreshes in 12 s, one IdP call each.
        assert!((3..=7).contains(&refreshes), "{refreshes} IdP calls in {RUN_FOR:?}");
        assert!(
            per_instance <= 1.5,
            "{per_instance:.2} Redis commands per instance per refresh"
        );
    });
}

#[test]
fn a_fleet_on_one_redis_makes_about_one_command_per_instance_per_refresh() {
    let Some(server) = token_testkit::RedisServer::private() else {
        return;
    };
    a_fleet_makes_about_one_command_per_instance_per_refresh(
        RedisConfig::new(server.url()).with_plaintext(),
        &[server.port()],
    );
}

#[test]
fn a_fleet_on_a_redis_cluster_makes_about_one_command_per_instance_per_refresh() {
    let cluster = match token_testkit::RedisCluster::start() {
        Ok(cluster) => cluster,
        Err(e) => {
            return token_testkit::skip_or_fail::<()>(format!(
                "no private Redis Cluster could be started: {e}"
            ))
            .unwrap_or_default();
        }
    };
    let ports = cluster.ports();
    a_fleet_makes_about_one_command_per_instance_per_refresh(
        RedisConfig::cluster(cluster.urls()).with_plaintext(),
        &ports,
    );
}

#[test]
fn a_waiter_takes_over_when_the_lease_holder_died_without_a_message() {
    let Some(server) = token_testkit::RedisServer::private() else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let config = RedisConfig::new(server.url())
            .with_plaintext()
            .with_key_prefix(support::fresh_prefix("dead"));
        let idp = Arc::new(FakeIdp::new().with_lifetime(Duration::from_secs(60)));
        let ttl = Duration::from_secs(2);
        let cache = TokenCache::builder_arc(idp.clone())
            .store(
                RedisStore::connect(config.clone())
                    .await
                    .expect("Redis is up"),
            )
            .policy(RefreshPolicy::default().with_lease_ttl(ttl))
            .build();
        let request = TokenRequest::builder().scope("dead").build();
        // Another instance took the lease and died: no token, no message.
        let other = RedisStore::connect(config).await.expect("Redis is up");
        let held =
            token_core::CacheStore::try_acquire_lease(&other, &cache.cache_key(&request), ttl)
                .await
                .expect("lease");
        assert!(held.is_some());
        let token = tokio::time::timeout(10 * ttl, cache.get_token(&request))
            .await
            .expect("the waiter is not stranded")
            .expect("a token");
        assert!(token.is_live_at(SystemTime::now()));
        assert_eq!(idp.calls(), 1, "one IdP call: the waiter's");
        assert_eq!(cache.stats().lease_waits, 1);
    });
}

#[test]
fn two_caches_on_one_store_wake_each_other_with_the_stores_own_message() {
    let Some(server) = token_testkit::RedisServer::private() else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let config = RedisConfig::new(server.url())
            .with_plaintext()
            .with_key_prefix(support::fresh_prefix("one"));
        let store = RedisStore::connect(config).await.expect("Redis is up");
        let idp = Arc::new(FakeIdp::new().with_lifetime(Duration::from_secs(60)));
        // A poll so slow that only the message can end the wait in time.
        let policy = RefreshPolicy::default().with_lease_poll(Duration::from_secs(600));
        let make = || {
            TokenCache::builder_arc(idp.clone())
                .store(store.clone())
                .policy(policy.clone())
                .build()
        };
        let (a, b) = (make(), make());
        let request = TokenRequest::builder().scope("one").build();
        // Let the listener subscribe before the message is sent.
        a.get_token(&TokenRequest::builder().scope("warm-up").build())
            .await
            .expect("a warm-up token");
        let gate = idp.gate();
        let ta = tokio::spawn({
            let (a, request) = (a.clone(), request.clone());
            async move { a.get_token(&request).await.map(|t| t.to_access_token()) }
        });
        while a.stats().waits < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let tb = tokio::spawn({
            let (b, request) = (b.clone(), request.clone());
            async move { b.get_token(&request).await.map(|t| t.to_access_token()) }
        });
        while b.stats().lease_waits < 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        idp.ungate();
        drop(gate);
        // Well inside the lease wait (17 s), after which b would fetch itself.
        let tb = tokio::time::timeout(Duration::from_secs(10), tb)
            .await
            .expect("b was woken by the store's own message")
            .expect("task")
            .expect("a token");
        let ta = ta.await.expect("task").expect("a token");
        assert!(ta.same_secret(&tb));
        assert_eq!(idp.calls(), 2, "the warm-up and one fetch for both caches");
    });
}
