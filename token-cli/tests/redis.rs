//! End-to-end tests of the Redis store: `get` through Redis, `inspect` and
//! `purge` on it, and the multi-process demo. Redis comes from `cargo
//! xtask` (`TOKEN_CACHE_REDIS_URL`) or a private `redis-server` on a free
//! loopback port started by token-testkit; without one the tests skip loudly, and fail
//! under `CI`.

mod support;

use support::{json, ok, stdout, Idp, Sandbox};
use token_testkit::redis_standalone;

#[test]
fn get_inspect_and_purge_through_redis() {
    let Some((url, _server)) = redis_standalone() else {
        return;
    };
    let idp = Idp::start(3600);
    let sb = Sandbox::new();
    // A fresh key per test run: other runs on the same server use theirs.
    let key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    let scope = format!("redis.test.{}", std::process::id());
    let run = |args: &[&str]| {
        sb.cmd()
            .env("TOKENCACHE_KEY", key)
            .args(args)
            .output()
            .expect("run")
    };
    let url_t = idp.token_url();
    let get = [
        "get",
        "--token-url",
        &url_t,
        "--client-id",
        support::CLIENT_ID,
        "--client-secret-env",
        support::SECRET_ENV,
        "--scope",
        &scope,
        "--store",
        &url,
        "--format",
        "json",
    ];
    let first = run(&get);
    ok(&first);
    let second = run(&get);
    ok(&second);
    assert_eq!(idp.calls(), 1);
    assert_eq!(json(&second)["from_cache"], true);

    let out = run(&["inspect", "--json", "--store", &url]);
    ok(&out);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&stdout(&out)).expect("json");
    let mine: Vec<_> = rows
        .iter()
        .filter(|r| r["scopes"].to_string().contains(&scope))
        .collect();
    assert_eq!(mine.len(), 1, "{rows:?}");
    assert!(mine[0]["size"].as_u64().is_some_and(|n| n > 0));
    assert!(!stdout(&out).contains(&idp.tokens()[0]));

    let k = mine[0]["key"].as_str().expect("key").to_owned();
    ok(&run(&["purge", "--store", &url, &k]));
    ok(&run(&get));
    assert_eq!(idp.calls(), 2, "a purged entry is fetched again");
}

#[test]
fn demo_with_processes_shares_redis() {
    let Some((url, _server)) = redis_standalone() else {
        return;
    };
    let sb = Sandbox::new();
    let out = sb
        .cmd()
        .args([
            "demo",
            "--store",
            &url,
            "--processes",
            "2",
            "--callers",
            "4",
        ])
        .args(["--requests", "2000", "--keys", "1", "--lifetime", "30"])
        .output()
        .expect("run");
    ok(&out);
    let text = stdout(&out);
    // Fleet-wide single-flight: two processes, one key, one token lifetime:
    // one IdP call.
    assert!(
        text.contains("IdP calls (counted by the IdP)  1  (2 processes sharing one store)"),
        "{text}"
    );
    assert!(text.contains("expired tokens handed out       0"), "{text}");
}

#[test]
fn processes_need_a_shared_store() {
    let sb = Sandbox::new();
    let out = sb
        .cmd()
        .args(["demo", "--processes", "2", "--requests", "10"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn a_cached_issuer_get_through_redis_makes_no_request() {
    let Some((url, _server)) = redis_standalone() else {
        return;
    };
    let idp = Idp::start(3600);
    let sb = Sandbox::new();
    let scope = format!("redis.issuer.{}", std::process::id());
    let run = || {
        sb.cmd()
            .env(
                "TOKENCACHE_KEY",
                "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
            )
            .args([
                "get",
                "--issuer",
                &idp.base,
                "--client-id",
                support::CLIENT_ID,
            ])
            .args([
                "--client-secret-env",
                support::SECRET_ENV,
                "--scope",
                &scope,
            ])
            .args(["--store", &url, "--format", "json"])
            .output()
            .expect("run")
    };
    ok(&run());
    let after_first = idp.requests();
    assert_eq!(after_first, 2, "one discovery and one token request");
    let second = run();
    ok(&second);
    assert_eq!(json(&second)["from_cache"], true);
    assert_eq!(
        idp.requests(),
        after_first,
        "the endpoint came from Redis too"
    );
}

#[test]
fn get_on_a_dead_redis_fails_fast_with_exit_6() {
    // `get` is a one-shot command: it cannot wait for Redis to come up, so it
    // opens the store with `connect_at_start` (unlike `serve`, which connects
    // in the background).
    let dead = format!("redis://127.0.0.1:{}", token_testkit::free_port());
    let sb = Sandbox::new();
    let out = sb
        .cmd()
        .env(
            "TOKENCACHE_KEY",
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
        )
        .args(["get", "--token-url", "http://127.0.0.1:9/token"])
        .args(["--client-id", support::CLIENT_ID])
        .args(["--client-secret-env", support::SECRET_ENV])
        .args(["--scope", "dead.redis", "--store", &dead])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(6), "{out:?}");
}

/// `total_connections_received` from `INFO stats` (the query's own
/// connection counted).
fn connections_received(server: &token_testkit::RedisServer) -> u64 {
    let info = server.command(&["INFO", "stats"]).expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix("total_connections_received:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("total_connections_received")
}

#[test]
fn a_warm_get_on_redis_opens_one_connection_and_subscribes_to_nothing() {
    let Some(server) = token_testkit::RedisServer::private() else {
        return;
    };
    let idp = Idp::start(3600);
    let sb = Sandbox::new();
    let url_t = idp.token_url();
    let store = server.url();
    let get = [
        "get",
        "--token-url",
        &url_t,
        "--client-id",
        support::CLIENT_ID,
        "--client-secret-env",
        support::SECRET_ENV,
        "--store",
        &store,
        "--format",
        "json",
    ];
    ok(&sb.cmd().args(get).output().expect("run"));
    let before = connections_received(&server);
    let warm = sb.cmd().args(get).output().expect("run");
    ok(&warm);
    assert_eq!(json(&warm)["from_cache"], true);
    let after = connections_received(&server);
    // One for the get, one for this query: no pub/sub connection (a
    // one-shot command has no use for other instances' events).
    assert_eq!(after - before, 2, "connections opened by one warm get + 1");
    let stats = server
        .command(&["INFO", "commandstats"])
        .expect("INFO commandstats");
    assert!(!stats.contains("cmdstat_subscribe"), "{stats}");
    assert_eq!(idp.calls(), 1);
}
