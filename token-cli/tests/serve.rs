//! End-to-end tests of `tokencache serve`: the built binary, a real upstream
//! (hyper) that records what it receives, reqwest and curl as clients, and
//! an IdP: oidc-provider (token-http/tests/idp, installed by `cargo xtask
//! test`) where its fixed 10-minute tokens fit, and a controllable token
//! endpoint in this process where a test needs short lifetimes or an
//! outage on cue.

mod support;

use std::collections::HashSet;
use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use support::Sandbox;

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// Serves `handler` on a free loopback port; the server lives as long as
/// the test's runtime.
async fn http_server<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// A token endpoint issuing `tok-N` tokens that live `lifetime` seconds,
/// answering 503 while `down`.
#[derive(Clone)]
struct FakeIdp {
    addr: SocketAddr,
    calls: Arc<AtomicUsize>,
    down: Arc<AtomicBool>,
}

impl FakeIdp {
    async fn start(lifetime: u64) -> Self {
        let calls = Arc::new(AtomicUsize::new(0));
        let down = Arc::new(AtomicBool::new(false));
        let (c, d) = (calls.clone(), down.clone());
        let addr = http_server(move |_req: Request<Incoming>| {
            let (c, d) = (c.clone(), d.clone());
            async move {
                let n = c.fetch_add(1, Ordering::SeqCst) + 1;
                if d.load(Ordering::SeqCst) {
                    let mut r = Response::new(Full::new(Bytes::from_static(
                        br#"{"error":"temporarily_unavailable"}"#,
                    )));
                    *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                    return r;
                }
                let body = format!(
                    r#"{{"access_token":"tok-{n}","token_type":"Bearer","expires_in":{lifetime}}}"#
                );
                let mut r = Response::new(Full::new(Bytes::from(body)));
                r.headers_mut()
                    .insert("content-type", "application/json".parse().expect("hv"));
                r
            }
        })
        .await;
        Self { addr, calls, down }
    }

    fn token_url(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

/// One request the upstream received.
#[derive(Clone, Debug)]
struct Seen {
    path_and_query: String,
    authorization: Option<String>,
    hop: bool,
    body_len: usize,
}

/// An upstream that records requests; answers 401 `invalid_token` to the
/// tokens in `rejected`, and waits a second on paths ending in `/slow`.
#[derive(Clone)]
struct Upstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    rejected: Arc<Mutex<HashSet<String>>>,
}

impl Upstream {
    async fn start() -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let rejected = Arc::new(Mutex::new(HashSet::new()));
        let (s, rj) = (seen.clone(), rejected.clone());
        let addr = http_server(move |req: Request<Incoming>| {
            let (s, rj) = (s.clone(), rj.clone());
            async move {
                let auth = req
                    .headers()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let pq = req
                    .uri()
                    .path_and_query()
                    .map(ToString::to_string)
                    .unwrap_or_default();
                let hop = req.headers().contains_key("x-hop")
                    || req.headers().contains_key("proxy-authorization");
                let slow = req.uri().path().ends_with("/slow");
                let body = req.into_body().collect().await.map(|c| c.to_bytes());
                let body_len = body.map(|b| b.len()).unwrap_or(usize::MAX);
                s.lock().expect("lock").push(Seen {
                    path_and_query: pq.clone(),
                    authorization: auth.clone(),
                    hop,
                    body_len,
                });
                if slow {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                let token = auth
                    .as_deref()
                    .and_then(|a| a.strip_prefix("Bearer "))
                    .unwrap_or("");
                if rj.lock().expect("lock").contains(token) {
                    let mut r = Response::new(Full::new(Bytes::new()));
                    *r.status_mut() = StatusCode::UNAUTHORIZED;
                    r.headers_mut().insert(
                        "www-authenticate",
                        "Bearer error=\"invalid_token\"".parse().expect("hv"),
                    );
                    return r;
                }
                let mut r = Response::new(Full::new(Bytes::from(format!("ok {pq}"))));
                r.headers_mut()
                    .insert("connection", "x-upstream-hop".parse().expect("hv"));
                r.headers_mut()
                    .insert("x-upstream-hop", "1".parse().expect("hv"));
                r
            }
        })
        .await;
        Self {
            addr,
            seen,
            rejected,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }
}

/// A running `tokencache serve`, killed when dropped.
struct Serve {
    child: Child,
    base: String,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_config(sandbox: &Sandbox, text: &str) -> PathBuf {
    let path = sandbox.path().join("serve.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// Starts `serve --config path` and waits for its `listening on` line.
fn start_serve(sandbox: &Sandbox, config: &Path) -> Serve {
    start_serve_with(sandbox, config, &[], Stdio::inherit())
}

fn start_serve_with(sandbox: &Sandbox, config: &Path, extra: &[&str], stderr: Stdio) -> Serve {
    let mut child = sandbox
        .cmd()
        .args(["serve", "--config"])
        .arg(config)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("start tokencache serve");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("read");
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| {
            let _ = child.kill();
            panic!("serve did not start; it said {line:?}")
        })
        .to_owned();
    Serve { child, base }
}

fn free_addr() -> String {
    format!("127.0.0.1:{}", support::closed_port())
}

fn fake_profile(name: &str, idp: &FakeIdp, store: &str) -> String {
    format!(
        "[profiles.{name}]\ntoken_url = \"{}\"\nclient_id = \"{}\"\nclient_secret_env = \"{}\"\nscopes = [\"orders.read\"]\nstore = \"{store}\"\n",
        idp.token_url(),
        support::CLIENT_ID,
        support::SECRET_ENV
    )
}

fn route(prefix: &str, upstream: &Upstream, profile: &str) -> String {
    format!(
        "[[serve.routes]]\nprefix = \"{prefix}\"\nupstream = \"http://{}/base\"\nprofile = \"{profile}\"\n",
        upstream.addr
    )
}

/// The oidc-provider test IdP (token-http/tests/idp), or `None` after
/// saying why (a failure under CI).
struct Oidc {
    issuer: String,
    child: Child,
    _stdin: ChildStdin,
}

impl Drop for Oidc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn oidc_provider() -> Option<Oidc> {
    let tests = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../token-http/tests");
    let dir = tests.join("idp");
    let why = if !dir.join("node_modules/oidc-provider").exists() {
        format!(
            "oidc-provider is not installed: run `cargo xtask test`, or `npm ci` in {}",
            dir.display()
        )
    } else {
        match Command::new("node")
            .arg("server.js")
            .arg(tests.join("keys"))
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
        {
            Ok(mut child) => {
                let stdin = child.stdin.take().expect("stdin");
                let mut line = String::new();
                BufReader::new(child.stdout.take().expect("stdout"))
                    .read_line(&mut line)
                    .expect("read");
                match line.trim().strip_prefix("READY ") {
                    Some(issuer) => {
                        return Some(Oidc {
                            issuer: issuer.to_owned(),
                            child,
                            _stdin: stdin,
                        })
                    }
                    None => format!("oidc-provider did not start (said {line:?})"),
                }
            }
            Err(e) => format!("cannot run node: {e}"),
        }
    };
    assert!(
        !ci(),
        "the oidc-provider test IdP is required under CI: {why}"
    );
    eprintln!("\n*** SKIPPING serve test against oidc-provider: {why}\n");
    None
}

async fn oidc_token_requests(issuer: &str) -> u64 {
    let text = reqwest::get(format!("{issuer}/__test/token-requests"))
        .await
        .expect("count")
        .text()
        .await
        .expect("text");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    v["count"].as_u64().expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_requests_through_a_route_make_one_idp_call_and_all_carry_the_token() {
    let Some(idp) = oidc_provider() else { return };
    let upstream = Upstream::start().await;
    let sandbox = Sandbox::new();
    let secret_file = sandbox.path().join("client-secret");
    std::fs::write(&secret_file, "basic:secret%+/ ok~&=\n").expect("write");
    let listen = free_addr();
    let config = write_config(
        &sandbox,
        &format!(
            "[profiles.orders]\ntoken_url = \"{}/token\"\nclient_id = \"basic-client\"\nclient_secret_file = \"{}\"\nscopes = [\"orders.read\"]\n\n[serve]\nlisten = \"{listen}\"\n{}",
            idp.issuer,
            secret_file.display(),
            route("/orders/", &upstream, "orders")
        ),
    );
    let before = oidc_token_requests(&idp.issuer).await;
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
    let first = seen[0].authorization.clone().expect("authorization");
    assert!(first.starts_with("Bearer ") && first != "Bearer caller-must-not-pass");
    assert!(seen
        .iter()
        .all(|s| s.authorization.as_ref() == Some(&first)));
    assert!(
        seen.iter().all(|s| !s.hop),
        "hop-by-hop headers were forwarded"
    );
    assert!(seen
        .iter()
        .all(|s| s.path_and_query.starts_with("/base/v1/items?n=")));
    assert_eq!(oidc_token_requests(&idp.issuer).await - before, 1);

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
            assert!(!ci(), "curl is needed under CI: {e}");
            eprintln!("*** SKIPPING the curl part: {e}");
        }
    }
    assert_eq!(oidc_token_requests(&idp.issuer).await - before, 1);
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
        "tokencache_fetch_duration_seconds",
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
    let upstream = Upstream::start().await;
    upstream
        .rejected
        .lock()
        .expect("lock")
        .insert("tok-1".to_owned());
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
        seen.iter().all(|s| s.body_len > 0),
        "retried bodies were resent"
    );
    let retried = seen
        .iter()
        .filter(|s| s.authorization.as_deref() == Some("Bearer tok-2"))
        .count();
    assert_eq!(retried, 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idp_outage_through_the_refresh_window_fails_no_request() {
    // 20 s tokens: refresh starts at ~9-10 s, the token is usable until
    // 15 s. The IdP is down from 1 s to 10.5 s, so the first refreshes fail
    // and the stale token carries the traffic until one succeeds.
    let idp = FakeIdp::start(20).await;
    let upstream = Upstream::start().await;
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
        .filter_map(|s| s.authorization)
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
    let upstream = Upstream::start().await;
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
    let upstream = Upstream::start().await;
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
        support::closed_port(),
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

/// The venv `cargo xtask test` creates (xtask/src/venv.rs), or `None` after
/// saying why (a failure under CI).
fn vendor_python() -> Option<PathBuf> {
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/vendor-venv/bin/python");
    let ok = python.exists()
        && Command::new(&python)
            .args(["-c", "import azure.identity, google.auth, requests"])
            .status()
            .is_ok_and(|s| s.success());
    if ok {
        return Some(python);
    }
    let why = format!(
        "the vendor client libraries are not installed in {}: run `cargo xtask test` (or \
         `python3 -m venv target/vendor-venv && target/vendor-venv/bin/pip install -r \
         token-cli/tests/vendor/requirements.txt`)",
        python.display()
    );
    assert!(!ci(), "{why}");
    eprintln!("\n*** SKIPPING vendor-client test: {why}\n");
    None
}

fn vendor_client(python: &Path, envs: &[(&str, String)], args: &[&str]) -> Vec<String> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vendor/clients.py");
    let mut cmd = Command::new(python);
    cmd.arg(script).args(args);
    for var in [
        "IDENTITY_ENDPOINT",
        "IDENTITY_HEADER",
        "IDENTITY_SERVER_THUMBPRINT",
        "MSI_ENDPOINT",
        "MSI_SECRET",
        "IMDS_ENDPOINT",
        "GCE_METADATA_HOST",
        "GCE_METADATA_ROOT",
        "GCE_METADATA_IP",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "http_proxy",
        "https_proxy",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("NO_PROXY", "127.0.0.1")
        .envs(envs.iter().map(|(k, v)| (*k, v)));
    let out = cmd.output().expect("run python");
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
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

/// A private redis-server, killed when dropped.
struct RedisServer(Child);

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Redis from `cargo xtask` (`TOKEN_CACHE_REDIS_URL`) or a private
/// redis-server on a free loopback port; `None` (loudly, a failure under
/// CI) without one.
fn redis() -> Option<(String, Option<RedisServer>)> {
    if let Ok(url) = std::env::var("TOKEN_CACHE_REDIS_URL") {
        return Some((url, None));
    }
    let port = support::closed_port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let child = match child {
        Ok(c) => RedisServer(c),
        Err(e) => {
            assert!(
                !ci(),
                "this test needs Redis and CI is set: cannot start redis-server: {e}"
            );
            eprintln!(
                "\n*** SKIPPING the two-sidecars-on-Redis test: cannot start redis-server ({e})\n"
            );
            return None;
        }
    };
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "redis-server did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Some((format!("redis://127.0.0.1:{port}"), Some(child)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sidecars_on_one_redis_make_one_idp_call_per_refresh_between_them() {
    let Some((url, _redis)) = redis() else { return };
    // 20 s tokens: refresh_at is ~9-10 s, and each sidecar starts at its own
    // moment in the refresh spread after it (at most half the 5 s window).
    let idp = FakeIdp::start(20).await;
    let upstream = Upstream::start().await;
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
        .filter_map(|s| s.authorization)
        .collect();
    assert_eq!(tokens.len(), 2, "{tokens:?}");
}
