//! `tokencache serve` started while its Redis store is down: it starts and
//! serves (tokens from the IdP, one call per key), connects to Redis in the
//! background, and uses it once Redis is up. (`tokencache get` fails fast
//! instead: `redis.rs`.)

mod sidecar;
mod support;

use std::time::Duration;

use sidecar::{fake_profile, free_addr, route, start_serve, upstream, write_config, FakeIdp};
use support::Sandbox;
use token_testkit::RedisServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_starts_while_redis_is_down_and_shares_tokens_through_it_once_up() {
    let Some(mut redis) = RedisServer::private() else {
        return;
    };
    redis.kill();
    // 20 s tokens: the keep-warm refresh comes due after about 10 s.
    let idp = FakeIdp::start(20).await;
    let upstream = upstream().await;
    let sandbox = Sandbox::new();
    let config = write_config(
        &sandbox,
        &format!(
            "{}\n[serve]\nlisten = \"{}\"\n{}",
            fake_profile("orders", &idp, &redis.url()),
            free_addr(),
            route("/orders/", &upstream, "orders")
        ),
    );
    let first = start_serve(&sandbox, &config);
    let client = reqwest::Client::new();
    let get = |base: &str| client.get(format!("{base}/orders/x")).send();
    assert_eq!(get(&first.base).await.expect("r").status(), 200);
    assert_eq!(idp.calls(), 1, "one IdP call while Redis is down");

    // Redis comes up: the sidecar's next refresh reaches it.
    redis.restart().expect("restart redis");
    let mut stored = false;
    for _ in 0..300 {
        if redis
            .command(&["DBSIZE"])
            .is_ok_and(|n| n.parse::<u64>().is_ok_and(|n| n > 0))
        {
            stored = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(stored, "the sidecar writes to Redis once it is up");

    // A second sidecar (same key file, same Redis) adopts that token.
    let calls = idp.calls();
    let second = start_serve(
        &sandbox,
        &config_for_second(&sandbox, &idp, &redis, &upstream),
    );
    assert_eq!(get(&second.base).await.expect("r").status(), 200);
    assert_eq!(
        idp.calls(),
        calls,
        "the second sidecar found the token in Redis"
    );
    assert_eq!(get(&first.base).await.expect("r").status(), 200);
}

fn config_for_second(
    sandbox: &Sandbox,
    idp: &FakeIdp,
    redis: &RedisServer,
    upstream: &token_testkit::Upstream,
) -> std::path::PathBuf {
    let path = sandbox.path().join("serve-2.toml");
    let text = format!(
        "{}\n[serve]\nlisten = \"{}\"\n{}",
        fake_profile("orders", idp, &redis.url()),
        free_addr(),
        route("/orders/", upstream, "orders")
    );
    std::fs::write(&path, text).expect("write config");
    path
}
