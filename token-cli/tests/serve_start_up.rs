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
    // Degraded, not unready: /readyz says 200 and why it is degraded;
    // /readyz?strict counts the store.
    let (status, body) = get_json(&first.base, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["degraded"], true, "{body}");
    assert!(
        body["profiles"]["orders"]["store"]
            .as_str()
            .is_some_and(|c| c.contains("Redis store is unreachable")),
        "{body}"
    );
    let (status, body) = get_json(&first.base, "/readyz?strict").await;
    assert_eq!(status, 503, "{body}");

    // Redis comes up: the sidecar's next refresh reaches it.
    redis.restart().expect("restart redis");
    let mut stored = false;
    for _ in 0..300 {
        // The token itself (not only the index): a second sidecar adopts it.
        if redis
            .command(&[
                "EVAL",
                "return #redis.call('KEYS', ARGV[1])",
                "0",
                "*:token",
            ])
            .is_ok_and(|n| n.trim().parse::<u64>().is_ok_and(|n| n > 0))
        {
            stored = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(stored, "the sidecar writes to Redis once it is up");
    let (status, body) = get_json(&first.base, "/readyz?strict").await;
    assert_eq!(status, 200, "no longer degraded: {body}");
    assert!(body.get("degraded").is_none(), "{body}");

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

/// The body of `GET path` on `base`, with its status.
async fn get_json(base: &str, path: &str) -> (u16, serde_json::Value) {
    let r = reqwest::get(format!("{base}{path}")).await.expect("answer");
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_starts_with_the_idp_down_is_unready_with_the_cause_and_ready_once_it_is_up() {
    // Nothing listens on the IdP's port at start: connections are refused.
    let port = token_testkit::free_port();
    let upstream = upstream().await;
    let sandbox = Sandbox::new();
    let profile = format!(
        "[profiles.orders]\ntoken_url = \"http://127.0.0.1:{port}/token\"\nclient_id = \"{}\"\nclient_secret_env = \"{}\"\nscopes = [\"orders.read\"]\nstore = \"memory\"\n",
        support::CLIENT_ID,
        support::SECRET_ENV
    );
    let admin = token_testkit::free_port();
    let config = write_config(
        &sandbox,
        &format!(
            "{profile}\n[serve]\nlisten = \"{}\"\nadmin_listen = \"127.0.0.1:{admin}\"\n{}",
            free_addr(),
            route("/orders/", &upstream, "orders")
        ),
    );
    let serve = sidecar::spawn_serve(&sandbox, &config, std::process::Stdio::inherit());
    let admin = format!("http://127.0.0.1:{admin}");

    // Alive, not ready, saying why; the gateway fails closed with 503.
    let mut unready = None;
    for _ in 0..100 {
        let (status, body) = get_json(&admin, "/readyz").await;
        if status == 503 && body["profiles"]["orders"]["cause"].is_string() {
            unready = Some(body);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let unready = unready.expect("/readyz said 503 with a cause while the IdP is down");
    assert_eq!(unready["ready"], false, "{unready}");
    assert_eq!(
        reqwest::get(format!("{admin}/healthz"))
            .await
            .expect("r")
            .status(),
        200
    );
    let r = reqwest::get(format!("{}/orders/x", serve.base))
        .await
        .expect("r");
    assert_eq!(r.status(), 503);
    assert!(
        upstream.seen().is_empty(),
        "nothing forwarded without a token"
    );

    // The IdP comes up on its port: ready without a restart (the
    // background retries with backoff reach it).
    let idp = support::Idp::start_on(3600, port);
    let mut ready = false;
    for _ in 0..300 {
        if get_json(&admin, "/readyz").await.0 == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "ready once the IdP answers");
    assert!(idp.calls() >= 1);
    let r = reqwest::get(format!("{}/orders/x", serve.base))
        .await
        .expect("r");
    assert_eq!(r.status(), 200);
}
