//! End-to-end tests of `tokencache serve`: the built binary, a real upstream
//! (token-testkit's recording hyper `Upstream`), reqwest and curl as
//! clients, and an IdP: oidc-provider (token-http/tests/idp, installed by `cargo xtask
//! test`) where its fixed 10-minute tokens fit, and a controllable token
//! endpoint in this process where a test needs short lifetimes or an
//! outage on cue.

mod sidecar;
mod support;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use sidecar::{
    fake_profile, free_addr, hop, route, start_serve, start_serve_with, upstream, vendor_client,
    vendor_python, write_config, FakeIdp, Serve,
};
use support::Sandbox;
use token_testkit::{free_port, in_ci, redis_standalone, Idp};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_requests_through_a_route_make_one_idp_call_and_all_carry_the_token() {
    let Some(idp) = Idp::shared() else { return };
    let upstream = upstream().await;
    let sandbox = Sandbox::new();
    let secret_file = sandbox.path().join("client-secret");
    std::fs::write(&secret_file, "basic:secret%+/ ok~&=\n").expect("write");
    let listen = free_addr();
    let config = write_config(
        &sandbox,
        &format!(
            "[profiles.orders]\ntoken_url = \"{}\"\nclient_id = \"basic-client\"\nclient_secret_file = \"{}\"\nscopes = [\"orders.read\"]\n\n[serve]\nlisten = \"{listen}\"\n{}",
            idp.token_url(),
            secret_file.display(),
            route("/orders/", &upstream, "orders")
        ),
    );
    let before = idp.token_requests();
    let serve = start_serve(&sandbox, &config);
    let client = reqwest::Client::new();

    let mut tasks = Vec::new();
    for worker in 0..20 {
        let (client, base) = (client.clone(), serve.base.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                let r = client
                    .get(format!("{base}/orders/v1/items?n={worker}-{i}"))
                    .header("authorization", "Bearer caller-must-not-pass")
                    .header("proxy-authorization", "Basic x")
                    .header("connection", "x-hop")
                    .header("x-hop", "1")
                    .send()
                    .await
                    .expect("request");
                assert_eq!(r.status(), 200);
                assert!(
                    !r.headers().contains_key("x-upstream-hop"),
                    "a hop-by-hop header of the upstream was passed on"
                );
                let text = r.text().await.expect("body");
                assert_eq!(text, format!("ok /base/v1/items?n={worker}-{i}"));
            }
        }));
    }
    for t in tasks {
        t.await.expect("worker");
    }
    let seen = upstream.seen();
    assert_eq!(seen.len(), 1000);
    let first = seen[0].authorization().expect("authorization");
    assert!(first.starts_with("Bearer ") && first != "Bearer caller-must-not-pass");
    assert!(seen.iter().all(|s| s.authorization() == Some(first)));
    assert!(
        seen.iter().all(|s| !hop(s)),
        "hop-by-hop headers were forwarded"
    );
    assert!(seen
        .iter()
        .all(|s| s.path_and_query.starts_with("/base/v1/items?n=")));
    assert_eq!(idp.token_requests() - before, 1);

    // The token endpoint hands out the same token, with its guards.
    let r = client
        .get(format!("{}/v1/token?profile=orders", serve.base))
        .header("metadata", "true")
        .send()
        .await
        .expect("token");
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = serde_json::from_str(&r.text().await.expect("t")).expect("json");
    assert_eq!(
        format!("Bearer {}", v["access_token"].as_str().expect("s")),
        first
    );
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["from_cache"], true);
    assert!(v["expires_in"].as_u64().expect("n") > 500);

    // curl through the gateway, as the README shows.
    match Command::new("curl")
        .args(["-sS", "-f", &format!("{}/orders/ping", serve.base)])
        .output()
    {
        Ok(out) => {
            assert!(out.status.success(), "curl failed: {out:?}");
            assert_eq!(String::from_utf8_lossy(&out.stdout), "ok /base/ping");
        }
        Err(e) => {
            assert!(!in_ci(), "curl is needed under CI: {e}");
            eprintln!("*** SKIPPING the curl part: {e}");
        }
    }
    assert_eq!(idp.token_requests() - before, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_requests_without_metadata_or_through_a_proxy_are_refused() {
    let idp = FakeIdp::start(600).await;
    let sandbox = Sandbox::new();
    let secret = sandbox.path().join("sidecar-secret");
    std::fs::write(&secret, "sidecar-shared-secret\n").expect("write");
    let config = write_config(
        &sandbox,
        &format!(
            "{}\n[serve]\nlisten = \"{}\"\nsecret_file = \"{}\"\n",
            fake_profile("orders", &idp, "memory"),
            free_addr(),
            secret.display()
        ),
    );
    let log = sandbox.path().join("serve.log");
    let mut serve = start_serve_with(
        &sandbox,
        &config,
        &["--log-format", "json"],
        Stdio::from(std::fs::File::create(&log).expect("log file")),
    );
    let client = reqwest::Client::new();
    let url = format!("{}/v1/token?profile=orders", serve.base);
    let get = |headers: &[(&str, &str)]| {
        let mut r = client.get(&url);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.send()
    };
    let ok = [
        ("metadata", "true"),
        ("x-identity-header", "sidecar-shared-secret"),
    ];
    let r = get(&ok[1..]).await.expect("r");
    assert_eq!(r.status(), 400);
    let body = r.text().await.expect("t");
    assert!(
        body.contains("Metadata: true") && !body.contains("tok-"),
        "{body}"
    );
    let r = get(&[ok[0], ok[1], ("x-forwarded-for", "10.0.0.1")])
        .await
        .expect("r");
    assert_eq!(r.status(), 403);
    let r = get(&ok[..1]).await.expect("r");
    assert_eq!(r.status(), 401, "no shared secret");
    let r = get(&[ok[0], ("x-identity-header", "wrong")])
        .await
        .expect("r");
    assert_eq!(r.status(), 401);
    let r = get(&ok).await.expect("r");
    assert_eq!(r.status(), 200);
    assert!(r
        .text()
        .await
        .expect("t")
        .contains("\"access_token\":\"tok-1\""));
    // Health, readiness, metrics.
    let r = client
        .get(format!("{}/healthz", serve.base))
        .send()
        .await
        .expect("r");
    assert_eq!(r.status(), 200);
    let r = client
        .get(format!("{}/readyz", serve.base))
        .send()
        .await
        .expect("r");
    assert_eq!(r.status(), 200);
    let m = client
        .get(format!("{}/metrics", serve.base))
        .send()
        .await
        .expect("r")
        .text()
        .await
        .expect("t");
    for needle in [
        "tokencache_token_lookups_total{profile=\"orders\",result=\"hit\"}",
        "tokencache_idp_calls_total{profile=\"orders\",outcome=\"ok\"} 1",
        "tokencache_token_remaining_seconds{profile=\"orders\"}",
        "tokencache_idp_request_duration_seconds_bucket{profile=\"orders\",outcome=\"ok\",le=\"0.005\"}",
        "tokencache_store_errors_total{profile=\"orders\"} 0",
    ] {
        assert!(m.contains(needle), "{needle} missing from:\n{m}");
    }
    assert!(!m.contains("tok-1") && !m.contains(support::SECRET));
    assert_eq!(idp.calls(), 1);

    // The log: JSON lines, and neither the token, the client secret nor
    // the sidecar's secret in any of them.
    let pid = serve.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill")
        .success());
    assert_eq!(serve.child.wait().expect("wait").code(), Some(0));
    let log = std::fs::read_to_string(&log).expect("log");
    assert!(log.lines().count() >= 2, "{log}");
    for line in log.lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    }
    for secret in ["tok-1", support::SECRET, "sidecar-shared-secret"] {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_storm_from_the_upstream_causes_one_refresh_and_every_request_succeeds() {
    let idp = FakeIdp::start(600).await;
    let upstream = upstream().await;
    upstream.reject("tok-1");
    let sandbox = Sandbox::new();
    let config = write_config(
        &sandbox,
        &format!(
            "{}\n[serve]\nlisten = \"{}\"\n{}",
            fake_profile("orders", &idp, "memory"),
            free_addr(),
            route("/orders/", &upstream, "orders")
        ),
    );
    let serve = start_serve(&sandbox, &config);
    assert_eq!(idp.calls(), 1, "prefetched at start-up");
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let (client, base) = (client.clone(), serve.base.clone());
        tasks.push(tokio::spawn(async move {
            client
                .post(format!("{base}/orders/submit"))
                .body(format!("order {i}"))
                .send()
                .await
                .map(|r| r.status())
                .map_err(|e| format!("{e:?}"))
        }));
    }
    for t in tasks {
        let status = t.await.expect("task");
        assert_eq!(status, Ok(reqwest::StatusCode::OK));
    }
    assert_eq!(idp.calls(), 2, "one refresh for the whole storm");
    let seen = upstream.seen();
    assert!(
        seen.iter()
            .all(|s| s.body.as_ref().is_none_or(|b| !b.is_empty())),
        "retried bodies were resent"
    );
    let retried = seen
        .iter()
        .filter(|s| s.authorization() == Some("Bearer tok-2"))
        .count();
    assert_eq!(retried, 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idp_outage_through_the_refresh_window_fails_no_request() {
    // 20 s tokens: refresh starts at ~9-10 s, the token is usable until
    // 15 s. The IdP is down from 1 s to 10.5 s, so the first refreshes fail
    // and the stale token carries the traffic until one succeeds.
    let idp = FakeIdp::start(20).await;
    let upstream = upstream().await;
    let sandbox = Sandbox::new();
    let config = write_config(
        &sandbox,
        &format!(
            "{}\n[serve]\nlisten = \"{}\"\n{}",
            fake_profile("orders", &idp, "memory"),
            free_addr(),
            route("/orders/", &upstream, "orders")
        ),
    );
    let started = Instant::now();
    let serve = start_serve(&sandbox, &config);
    let client = reqwest::Client::new();
    let mut failed = 0;
    let mut sent = 0;
    while started.elapsed() < Duration::from_secs(14) {
        let t = started.elapsed();
        idp.down.store(
            t > Duration::from_secs(1) && t < Duration::from_millis(10_500),
            Ordering::SeqCst,
        );
        let r = client
            .get(format!("{}/orders/x", serve.base))
            .send()
            .await
            .expect("request");
        sent += 1;
        if r.status() != 200 {
            failed += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(sent > 100);
    assert_eq!(failed, 0);
    assert!(idp.calls() >= 2, "a refresh happened");
    let tokens: HashSet<_> = upstream
        .seen()
        .into_iter()
        .filter_map(|s| s.authorization().map(str::to_owned))
        .collect();
    assert!(tokens.contains("Bearer tok-1"));
    assert!(
        tokens.len() >= 2,
        "the refreshed token was used: {tokens:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idp_outage_past_expiry_answers_503_with_the_cause_and_forwards_nothing() {
    // 8 s tokens are usable until 6 s (2 s skew).
    let idp = FakeIdp::start(8).await;
    let upstream = upstream().await;
    let sandbox = Sandbox::new();
    let config = write_config(
        &sandbox,
        &format!(
            "{}\n[serve]\nlisten = \"{}\"\n{}",
            fake_profile("orders", &idp, "memory"),
            free_addr(),
            route("/orders/", &upstream, "orders")
        ),
    );
    let serve = start_serve(&sandbox, &config);
    idp.down.store(true, Ordering::SeqCst);
    let client = reqwest::Client::new();
    let r = client
        .get(format!("{}/orders/x", serve.base))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    let forwarded = upstream.seen().len();
    tokio::time::sleep(Duration::from_secs(7)).await;
    for _ in 0..5 {
        let r = client
            .get(format!("{}/orders/x", serve.base))
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 503);
        let v: serde_json::Value = serde_json::from_str(&r.text().await.expect("t")).expect("json");
        assert_eq!(v["profile"], "orders");
        let code = v["error"].as_str().expect("code");
        assert!(code == "idp_unavailable" || code == "token_expired", "{v}");
        assert!(
            v["error_description"]
                .as_str()
                .expect("d")
                .contains("orders"),
            "{v}"
        );
    }
    assert_eq!(
        upstream.seen().len(),
        forwarded,
        "nothing forwarded without a valid token"
    );
    let r = client
        .get(format!("{}/readyz", serve.base))
        .send()
        .await
        .expect("r");
    assert_eq!(r.status(), 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_requests_in_flight_complete_and_exits_0() {
    let idp = FakeIdp::start(600).await;
    let upstream = upstream().await;
    let sandbox = Sandbox::new();
    let config = write_config(
        &sandbox,
        &format!(
            "{}\n[serve]\nlisten = \"{}\"\n{}",
            fake_profile("orders", &idp, "memory"),
            free_addr(),
            route("/orders/", &upstream, "orders")
        ),
    );
    let mut serve = start_serve(&sandbox, &config);
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let (client, base) = (client.clone(), serve.base.clone());
        tasks.push(tokio::spawn(async move {
            client.get(format!("{base}/orders/slow")).send().await
        }));
    }
    while upstream.seen().len() < 5 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = serve.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill")
        .success());
    for t in tasks {
        let r = t.await.expect("task").expect("request completed");
        assert_eq!(r.status(), 200);
    }
    let status = serve.child.wait().expect("wait");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn bad_configs_stop_start_up_with_one_sentence_and_their_exit_codes() {
    let sandbox = Sandbox::new();
    let profile = format!(
        "[profiles.orders]\ntoken_url = \"http://127.0.0.1:{}/token\"\nclient_id = \"c\"\nclient_secret_env = \"{}\"\nstore = \"memory\"\n",
        free_port(),
        support::SECRET_ENV
    );
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_addr = taken.local_addr().expect("addr");
    let cases = [
        (
            "[serve]\nlisen = \"127.0.0.1:1\"\n".to_owned(),
            3,
            "unknown field `lisen`",
        ),
        (
            "[[serve.routes]]\nprefix = \"/a/\"\nupstream = \"http://x\"\nprofile = \"nope\"\n"
                .to_owned(),
            3,
            "no profile [profiles.nope]",
        ),
        (
            "[[serve.routes]]\nprefix = \"/a/\"\nupstream = \"not a url\"\nprofile = \"orders\"\n"
                .to_owned(),
            3,
            "is not a URL",
        ),
        (
            format!("[serve]\nlisten = \"{taken_addr}\"\n"),
            9,
            "cannot listen on",
        ),
    ];
    for (serve, code, expected) in cases {
        let config = write_config(&sandbox, &format!("{profile}\n{serve}"));
        let out = sandbox
            .cmd()
            .args(["serve", "--config"])
            .arg(&config)
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{serve}: {stderr}");
        assert!(stderr.contains(expected), "{serve}: {stderr}");
        assert_eq!(
            stderr.lines().filter(|l| l.starts_with("error:")).count(),
            1,
            "{stderr}"
        );
    }
    drop(taken);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_identity_and_google_auth_get_their_tokens_from_the_sidecar() {
    let Some(python) = vendor_python() else {
        return;
    };
    let idp = FakeIdp::start(3600).await;
    let sandbox = Sandbox::new();
    let secret = sandbox.path().join("identity-header");
    std::fs::write(&secret, "azure-identity-header-value\n").expect("write");
    let config = write_config(
        &sandbox,
        &format!(
            "{}\n[serve]\nlisten = \"{}\"\nsecret_file = \"{}\"\n[serve.azure]\n\"https://vault.azure.net\" = \"orders\"\n[serve.google]\nprofile = \"orders\"\nemail = \"sidecar@example.iam.gserviceaccount.com\"\n",
            fake_profile("orders", &idp, "memory"),
            free_addr(),
            secret.display()
        ),
    );
    let serve = start_serve(&sandbox, &config);
    let azure = vendor_client(
        &python,
        &[
            ("IDENTITY_ENDPOINT", format!("{}/azure/token", serve.base)),
            ("IDENTITY_HEADER", "azure-identity-header-value".to_owned()),
        ],
        &["azure", "https://vault.azure.net/.default"],
    );
    assert_eq!(azure[0], "tok-1");
    let expires_on: u64 = azure[1].parse().expect("expires_on");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("now")
        .as_secs();
    assert!(
        expires_on > now + 3000 && expires_on <= now + 3600,
        "{expires_on}"
    );

    let google = vendor_client(
        &python,
        &[(
            "GCE_METADATA_HOST",
            serve.base.trim_start_matches("http://").to_owned(),
        )],
        &["google"],
    );
    assert_eq!(google, ["tok-1", "sidecar@example.iam.gserviceaccount.com"]);
    assert_eq!(idp.calls(), 1);

    // The Azure endpoint refuses a wrong identity header.
    let r = reqwest::Client::new()
        .get(format!(
            "{}/azure/token?api-version=2019-08-01&resource=https://vault.azure.net",
            serve.base
        ))
        .header("x-identity-header", "wrong")
        .send()
        .await
        .expect("r");
    assert_eq!(r.status(), 401);
    assert!(!r.text().await.expect("t").contains("tok-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sidecars_on_one_redis_make_one_idp_call_per_refresh_between_them() {
    let Some((url, _redis)) = redis_standalone() else {
        return;
    };
    // 20 s tokens: refresh_at is ~9-10 s, and each sidecar starts at its own
    // moment in the refresh spread after it (at most half the 5 s window).
    let idp = FakeIdp::start(20).await;
    let upstream = upstream().await;
    let sandbox = Sandbox::new();
    let key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    let configs: Vec<PathBuf> = (0..2)
        .map(|i| {
            let path = sandbox.path().join(format!("serve-{i}.toml"));
            let text = format!(
                "{}\n[serve]\nlisten = \"{}\"\n{}",
                fake_profile("orders", &idp, &url),
                free_addr(),
                route("/orders/", &upstream, "orders")
            );
            std::fs::write(&path, text).expect("write");
            path
        })
        .collect();
    let started = Instant::now();
    let spawn = |config: PathBuf| {
        let mut cmd = sandbox.cmd();
        cmd.env("TOKENCACHE_KEY", key)
            .args(["serve", "--config"])
            .arg(config)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        cmd.spawn().expect("start serve")
    };
    // Both start at once: their prefetches race for the refresh lease.
    let mut children: Vec<Child> = configs.into_iter().map(spawn).collect();
    let mut serves = Vec::new();
    for child in &mut children {
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read");
        serves.push(line.trim().trim_start_matches("listening on ").to_owned());
    }
    let serves: Vec<Serve> = children
        .into_iter()
        .zip(serves)
        .map(|(child, base)| Serve { child, base })
        .collect();
    for s in &serves {
        assert!(sidecar::wait_ready(&s.base), "{} became ready", s.base);
    }
    assert_eq!(idp.calls(), 1, "one IdP call for both sidecars' start-up");
    let client = reqwest::Client::new();
    for s in &serves {
        let r = client
            .get(format!("{}/orders/x", s.base))
            .send()
            .await
            .expect("r");
        assert_eq!(r.status(), 200);
    }
    // Through the refresh window: both keep their token warm, one calls (by
    // 13.5 s at the latest; the old token is usable until ~15 s).
    while started.elapsed() < Duration::from_millis(14_500) {
        for s in &serves {
            let r = client
                .get(format!("{}/orders/x", s.base))
                .send()
                .await
                .expect("r");
            assert_eq!(r.status(), 200);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        idp.calls(),
        2,
        "one IdP call for the refresh of both sidecars"
    );
    let tokens: HashSet<_> = upstream
        .seen()
        .into_iter()
        .filter_map(|s| s.authorization().map(str::to_owned))
        .collect();
    assert_eq!(tokens.len(), 2, "{tokens:?}");
}
