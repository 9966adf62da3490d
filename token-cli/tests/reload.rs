//! `tokencache serve` reloading its profiles file (SIGHUP, a change of the
//! file) and picking up rotated secrets, under steady traffic, as real
//! processes: the built binary, token-testkit's recording upstream and
//! oidc-provider or a counting token endpoint. Also `--check-config`, and
//! `get` and `serve` building one profile to one cache entry.

mod sidecar;
mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use sidecar::{
    fake_profile, free_addr, get_status, route, spawn_serve_cmd, start_serve_with, upstream,
    wait_ready, FakeIdp, Serve,
};
use support::{stderr, Sandbox};
use token_testkit::{redis_standalone, Idp};

/// Replaces the file at `path` in one step (as editors and Kubernetes
/// ConfigMap updates do), so the watcher never reads half a file.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

fn hup(serve: &Serve) {
    let status = Command::new("kill")
        .args(["-HUP", &serve.child.id().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(status.success());
}

/// Serve's stderr, collected line by line as it runs.
fn collect_stderr(serve: &mut Serve) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let err = serve.child.stderr.take().expect("piped stderr");
    let out = Arc::clone(&lines);
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            out.lock().expect("lock").push(line);
        }
    });
    lines
}

/// Waits (bounded) until `check` holds, polling; panics naming `what`.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn status(client: &reqwest::Client, url: &str) -> u16 {
    client
        .get(url)
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

async fn metric(client: &reqwest::Client, base: &str, line_start: &str) -> Option<u64> {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
}

/// Steady traffic: `workers` loops sending GET `url` until stopped, counting
/// requests and failures (anything but 200).
struct Traffic {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    fn start(url: String, workers: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let client = reqwest::Client::new();
        let tasks = (0..workers)
            .map(|_| {
                let (stop, sent, failed, client, url) = (
                    stop.clone(),
                    sent.clone(),
                    failed.clone(),
                    client.clone(),
                    url.clone(),
                );
                tokio::spawn(async move {
                    while !stop.load(Ordering::SeqCst) {
                        let ok = status(&client, &url).await == 200;
                        sent.fetch_add(1, Ordering::SeqCst);
                        if !ok {
                            failed.fetch_add(1, Ordering::SeqCst);
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                })
            })
            .collect();
        Self {
            stop,
            sent,
            failed,
            tasks,
        }
    }

    /// Stops the loops: (requests sent, requests failed).
    async fn finish(self) -> (usize, usize) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.expect("traffic task");
        }
        (
            self.sent.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_under_traffic_fail_no_request_and_make_no_idp_call() {
    let idp = FakeIdp::start(600).await;
    let upstream = upstream().await;
    let sandbox = Sandbox::new();
    let listen = free_addr();
    let profiles = format!(
        "{}\n{}\n",
        fake_profile("orders", &idp, "memory"),
        fake_profile("billing", &idp, "memory").replace("orders.read", "billing.read")
    );
    // The steady route, and route `/new-N/` that each version adds (the
    // previous version's goes away).
    let version = |n: usize| {
        format!(
            "{profiles}[serve]\nlisten = \"{listen}\"\n{}\n{}",
            route("/orders/", &upstream, "orders"),
            route(&format!("/new-{n}/"), &upstream, "billing")
        )
    };
    let path = sandbox.path().join("serve.toml");
    replace(&path, &version(0));
    let serve = start_serve_with(&sandbox, &path, &[], Stdio::inherit());
    let client = reqwest::Client::new();
    let base = serve.base.clone();
    assert_eq!(status(&client, &format!("{base}/new-0/x")).await, 200);
    let calls_at_start = idp.calls();
    assert_eq!(calls_at_start, 2, "one prefetch per profile");

    let traffic = Traffic::start(format!("{base}/orders/steady"), 4);
    for n in 1..=20 {
        replace(&path, &version(n));
        // Half by SIGHUP, half by the file watcher alone.
        if n % 2 == 0 {
            hup(&serve);
        }
        let new = format!("{base}/new-{n}/x");
        eventually(&format!("route /new-{n}/ answers"), || {
            let (client, new) = (client.clone(), new.clone());
            async move { status(&client, &new).await == 200 }
        })
        .await;
        assert_eq!(
            status(&client, &format!("{base}/new-{}/x", n - 1)).await,
            404,
            "the route version {n} removed still answers"
        );
    }
    let (sent, failed) = traffic.finish().await;
    assert!(sent > 100, "only {sent} requests were sent");
    assert_eq!(
        failed, 0,
        "{failed} of {sent} requests failed during reloads"
    );
    assert_eq!(idp.calls(), calls_at_start, "a reload called the IdP");
    assert_eq!(
        metric(
            &client,
            &base,
            "tokencache_config_reloads_total{result=\"success\"}"
        )
        .await,
        Some(20)
    );
    assert_eq!(
        metric(
            &client,
            &base,
            "tokencache_config_reloads_total{result=\"error\"}"
        )
        .await,
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_profile_stops_being_kept_warm_and_a_kept_one_keeps_refreshing() {
    // 2-second tokens: keep-warm refreshes each profile about every second.
    let idp = FakeIdp::start(2).await;
    let sandbox = Sandbox::new();
    let listen = free_addr();
    let keep = fake_profile("keep", &idp, "memory").replace("orders.read", "keep.read");
    let gone = fake_profile("gone", &idp, "memory").replace("orders.read", "gone.read");
    let path = sandbox.path().join("serve.toml");
    replace(
        &path,
        &format!("{keep}\n{gone}\n[serve]\nlisten = \"{listen}\"\n"),
    );
    let serve = start_serve_with(&sandbox, &path, &[], Stdio::inherit());
    eventually("both profiles were refreshed by keep-warm", || {
        let idp = idp.clone();
        async move { idp.calls_for("gone.read") >= 2 && idp.calls_for("keep.read") >= 2 }
    })
    .await;

    replace(&path, &format!("{keep}\n[serve]\nlisten = \"{listen}\"\n"));
    hup(&serve);
    let client = reqwest::Client::new();
    let gone_url = format!("{}/v1/token?profile=gone", serve.base);
    eventually("the profile is gone", || {
        let (client, url) = (client.clone(), gone_url.clone());
        async move {
            client
                .get(&url)
                .header("metadata", "true")
                .send()
                .await
                .is_ok_and(|r| r.status() == 404)
        }
    })
    .await;
    // A refresh already running at the swap may still land.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (gone_calls, keep_calls) = (idp.calls_for("gone.read"), idp.calls_for("keep.read"));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        idp.calls_for("gone.read"),
        gone_calls,
        "the removed profile is still kept warm"
    );
    assert!(
        idp.calls_for("keep.read") > keep_calls,
        "the kept profile stopped being refreshed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_file_is_refused_in_one_line_and_the_old_configuration_keeps_serving() {
    let idp = FakeIdp::start(600).await;
    let upstream = upstream().await;
    let sandbox = Sandbox::new();
    let listen = free_addr();
    let good = format!(
        "{}[serve]\nlisten = \"{listen}\"\n{}",
        fake_profile("orders", &idp, "memory"),
        route("/orders/", &upstream, "orders")
    );
    let path = sandbox.path().join("serve.toml");
    replace(&path, &good);
    let mut serve = start_serve_with(&sandbox, &path, &[], Stdio::piped());
    let log = collect_stderr(&mut serve);
    let client = reqwest::Client::new();
    let base = serve.base.clone();
    let url = format!("{base}/orders/x");
    assert_eq!(status(&client, &url).await, 200);

    // A typo: an unknown key in a profile, and a route to a profile that
    // does not exist, one at a time.
    let broken = [
        good.replace("client_id", "clientid"),
        good.replace("profile = \"orders\"", "profile = \"nope\""),
        "[profiles.orders\n".to_owned(),
    ];
    for (i, text) in broken.iter().enumerate() {
        replace(&path, text);
        hup(&serve);
        let want = (i + 1) as u64;
        eventually("the refused reload is counted", || {
            let (client, base) = (client.clone(), base.clone());
            async move {
                metric(
                    &client,
                    &base,
                    "tokencache_config_reloads_total{result=\"error\"}",
                )
                .await
                    == Some(want)
            }
        })
        .await;
        assert_eq!(status(&client, &url).await, 200, "the old config stopped");
    }
    // Each refusal is counted before its line is logged: wait for the lines.
    eventually("the refusals' log lines", || {
        let log = Arc::clone(&log);
        async move {
            log.lock()
                .expect("lock")
                .iter()
                .filter(|l| l.contains("configuration reload refused"))
                .count()
                >= 3
        }
    })
    .await;
    let refused: Vec<String> = log
        .lock()
        .expect("lock")
        .iter()
        .filter(|l| l.contains("configuration reload refused"))
        .cloned()
        .collect();
    // One line per refused file (the watcher may see a file before the
    // SIGHUP does: then the SIGHUP finds it refused again, still one line
    // per attempt), each naming the problem.
    assert!(refused.len() >= 3, "{refused:?}");
    assert!(
        refused.iter().any(|l| l.contains("clientid")),
        "{refused:?}"
    );
    assert!(refused.iter().any(|l| l.contains("nope")), "{refused:?}");
    assert!(
        refused.iter().all(|l| !l.contains(support::SECRET)),
        "{refused:?}"
    );

    // A fixed file that also moves the listen address and adds an admin
    // listener: applied, and the log line says both need a restart.
    let admin = free_addr();
    replace(
        &path,
        &good
            .replace(
                &listen,
                &format!("{}\"\nadmin_listen = \"{admin}", free_addr()),
            )
            .replace("/orders/", "/fixed/"),
    );
    hup(&serve);
    let fixed = format!("{base}/fixed/x");
    eventually("the fixed file is in force", || {
        let (client, fixed) = (client.clone(), fixed.clone());
        async move { status(&client, &fixed).await == 200 }
    })
    .await;
    // The swap comes before its log line: wait for the line too.
    eventually("the reload's log line", || {
        let log = Arc::clone(&log);
        async move {
            log.lock()
                .expect("lock")
                .iter()
                .any(|l| l.contains("configuration reloaded"))
        }
    })
    .await;
    let restart = log
        .lock()
        .expect("lock")
        .iter()
        .any(|l| l.contains("configuration reloaded") && l.contains("until a restart: listen"));
    assert!(restart, "{:?}", log.lock().expect("lock"));
    let admin_restart = log
        .lock()
        .expect("lock")
        .iter()
        .any(|l| l.contains("configuration reloaded") && l.contains("the admin listener"));
    assert!(admin_restart, "{:?}", log.lock().expect("lock"));
    assert_eq!(
        get_status(&format!("http://{admin}"), "/healthz"),
        None,
        "admin_listen takes effect at a restart only"
    );
    assert_eq!(idp.calls(), 1, "reloads made IdP calls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_shared_secret_file_is_picked_up_without_a_restart() {
    let idp = FakeIdp::start(600).await;
    let sandbox = Sandbox::new();
    let secret = sandbox.path().join("shared-secret");
    std::fs::write(&secret, "first-shared-secret\n").expect("write");
    let path = sandbox.path().join("serve.toml");
    replace(
        &path,
        &format!(
            "{}\n[serve]\nlisten = \"{}\"\nsecret_file = \"{}\"\n",
            fake_profile("orders", &idp, "memory"),
            free_addr(),
            secret.display()
        ),
    );
    let serve = start_serve_with(&sandbox, &path, &[], Stdio::inherit());
    let client = reqwest::Client::new();
    let url = format!("{}/v1/token?profile=orders", serve.base);
    let with = |secret: &'static str| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            client
                .get(&url)
                .header("metadata", "true")
                .header("x-identity-header", secret)
                .send()
                .await
                .map_or(0, |r| r.status().as_u16())
        }
    };
    assert_eq!(with("first-shared-secret").await, 200);

    // Rotated in place; the file watcher notices it (the profiles file is
    // unchanged).
    replace(&secret, "second-shared-secret\n");
    eventually("the new shared secret is accepted", || async {
        with("second-shared-secret").await == 200
    })
    .await;
    assert_eq!(with("first-shared-secret").await, 401);
    assert_eq!(idp.calls(), 1, "the rotation made an IdP call");
}

#[test]
fn check_config_exits_0_for_a_valid_file_and_3_naming_the_problem() {
    let sandbox = Sandbox::new();
    let path = sandbox.path().join("serve.toml");
    let good = format!(
        "[profiles.orders]\ntoken_url = \"http://127.0.0.1:9/token\"\nclient_id = \"c\"\nclient_secret_env = \"{}\"\nstore = \"memory\"\n\n[serve]\nlisten = \"{}\"\n[[serve.routes]]\nprefix = \"/orders/\"\nupstream = \"http://127.0.0.1:9\"\nprofile = \"orders\"\n",
        support::SECRET_ENV,
        free_addr()
    );
    replace(&path, &good);
    let out = sandbox
        .cmd()
        .args(["serve", "--check-config", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid (1 profiles, 1 routes)"));

    for (bad, names) in [
        (good.replace("client_id = \"c\"\n", ""), "client_id"),
        (good.replace("\"/orders/\"", "\"/metrics\""), "/metrics"),
        (
            good.replace(support::SECRET_ENV, "NO_SUCH_VARIABLE_SET"),
            "NO_SUCH_VARIABLE_SET",
        ),
    ] {
        replace(&path, &bad);
        let out = sandbox
            .cmd()
            .args(["serve", "--check-config", "--config"])
            .arg(&path)
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
        assert!(stderr(&out).contains(names), "{}", stderr(&out));
    }
}

/// The oidc-provider test endpoints for rotating clients.
async fn set_secrets(idp: &Idp, client: &str, secrets: &[&str]) {
    let r = reqwest::Client::new()
        .post(format!("{}/__test/client-secrets", idp.issuer()))
        .header("content-type", "application/json")
        .body(json!({ "client_id": client, "secrets": secrets }).to_string())
        .send()
        .await
        .expect("set secrets");
    assert!(r.status().is_success(), "{}", r.status());
}

async fn secret_uses(idp: &Idp, client: &str) -> serde_json::Value {
    let text = reqwest::get(format!(
        "{}/__test/secret-uses?client_id={client}",
        idp.issuer()
    ))
    .await
    .expect("uses")
    .text()
    .await
    .expect("text");
    serde_json::from_str(&text).expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_secret_rotated_under_traffic_fails_no_request_and_the_idp_sees_the_new_one() {
    let Some(idp) = Idp::shared() else { return };
    // 6-second tokens (server.js), so serve refreshes several times.
    let client_id = "rotating-short-serve";
    set_secrets(idp, client_id, &["old-secret-1"]).await;
    let upstream = upstream().await;
    let sandbox = Sandbox::new();
    let secret_file = sandbox.path().join("client-secret");
    std::fs::write(&secret_file, "old-secret-1\n").expect("write");
    let path = sandbox.path().join("serve.toml");
    replace(
        &path,
        &format!(
            "[profiles.orders]\ntoken_url = \"{}\"\nclient_id = \"{client_id}\"\nclient_secret_file = \"{}\"\nscopes = [\"orders.read\"]\nstore = \"memory\"\n\n[serve]\nlisten = \"{}\"\n{}",
            idp.token_url(),
            secret_file.display(),
            free_addr(),
            route("/orders/", &upstream, "orders")
        ),
    );
    let serve = start_serve_with(&sandbox, &path, &[], Stdio::inherit());
    let traffic = Traffic::start(format!("{}/orders/steady", serve.base), 2);
    tokio::time::sleep(Duration::from_secs(3)).await;

    // The rotation, with an overlap: the IdP accepts both, the file is
    // rewritten, then the IdP drops the old secret.
    set_secrets(idp, client_id, &["old-secret-1", "new-secret-2"]).await;
    replace(&secret_file, "new-secret-2\n");
    tokio::time::sleep(Duration::from_secs(2)).await;
    set_secrets(idp, client_id, &["new-secret-2"]).await;
    // Past the lifetime of any token obtained with the old secret.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let (sent, failed) = traffic.finish().await;

    assert!(sent > 100, "only {sent} requests were sent");
    assert_eq!(
        failed, 0,
        "{failed} of {sent} requests failed across the rotation"
    );
    let uses = secret_uses(idp, client_id).await;
    let new_uses = uses["uses"]["new-secret-2"].as_u64().unwrap_or(0);
    assert!(new_uses >= 1, "the IdP never saw the new secret: {uses}");
    assert_eq!(
        uses["refused"], 0,
        "a fetch used the revoked secret: {uses}"
    );
    // Every token the upstream got after the revocation was obtained with
    // the new secret: none was refused, and the traffic never failed.
    drop(serve);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_and_serve_build_one_profile_to_one_cache_entry_and_inspect_lists_serves_records() {
    let Some((redis_url, _server)) = redis_standalone() else {
        return;
    };
    let Some(oidc) = Idp::shared() else { return };
    let idp = FakeIdp::start(600).await;
    let sandbox = Sandbox::new();
    let key = sandbox.path().join("store.key");
    let (refresh_token, _account) = oidc.refresh_token();
    let path = sandbox.path().join("serve.toml");
    // A database of its own: `inspect` and `purge` below see this test's
    // entries only.
    let redis_url = format!("{redis_url}/9");
    // A client-credentials profile on the fake endpoint, and a
    // refresh-token grant against oidc-provider's public client, on one
    // Redis store (each run under its own key file, so its own keys).
    replace(
        &path,
        &format!(
            "{}key_file = \"{}\"\n\n[profiles.user]\ntoken_url = \"{}\"\nclient_id = \"refresh-client\"\nrefresh_token_env = \"RELOAD_TEST_REFRESH_TOKEN\"\nscopes = [\"orders.read\"]\nstore = \"{redis_url}\"\nkey_file = \"{}\"\n\n[serve]\nlisten = \"{}\"\n",
            fake_profile("orders", &idp, &redis_url),
            key.display(),
            oidc.token_url(),
            key.display(),
            free_addr()
        ),
    );
    let mut cmd = sandbox.cmd();
    cmd.env("RELOAD_TEST_REFRESH_TOKEN", &refresh_token);
    let serve = spawn_serve_cmd(cmd, &path, &[], Stdio::inherit());
    wait_ready(&serve.base);
    assert_eq!(idp.calls(), 1, "serve's prefetch");

    // `get --profile orders` finds serve's token: same key, same entry.
    let out = sandbox
        .cmd()
        .args(["get", "-v", "--profile", "orders", "--config"])
        .arg(&path)
        .output()
        .expect("get");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("served from the cache"),
        "{}",
        stderr(&out)
    );
    assert_eq!(idp.calls(), 1, "get called the IdP: another cache key");

    // inspect lists serve's entries, the refresh token's record included,
    // each once.
    let out = sandbox
        .cmd()
        .args(["inspect", "--json", "--store", &redis_url, "--key-file"])
        .arg(&key)
        .output()
        .expect("inspect");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let rows = support::json(&out);
    let rows = rows.as_array().expect("array");
    let clients: Vec<&str> = rows
        .iter()
        .map(|r| r["client_id"].as_str().expect("client"))
        .collect();
    assert_eq!(
        clients.iter().filter(|c| **c == support::CLIENT_ID).count(),
        1,
        "{rows:?}"
    );
    assert!(
        rows.iter()
            .any(|r| r["key"].as_str().expect("key").contains("refresh-token")),
        "serve's refresh-token record is not listed: {rows:?}"
    );
    // purge --client-id forgets the grant's tokens and its record.
    let out = sandbox
        .cmd()
        .args([
            "purge",
            "--client-id",
            "refresh-client",
            "--store",
            &redis_url,
            "--key-file",
        ])
        .arg(&key)
        .output()
        .expect("purge");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("removed 2"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    drop(serve);
}
