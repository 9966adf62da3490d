//! `tokencache serve` under connection abuse and faults (issue 18, items 2
//! and 8): slowloris heads, idle keep-alive connections, more connections
//! than `max_connections`, an upstream that never answers, SIGTERM with a
//! half-sent head open, and an IdP that hangs at start-up. Raw sockets on
//! loopback where a client library would not misbehave; every test is
//! bounded in connections (tens) and time (seconds).

mod sidecar;
mod support;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use sidecar::{
    fake_profile, free_addr, get_status, route, spawn_serve, start_serve, upstream, write_config,
    FakeIdp, Serve,
};
use support::Sandbox;
use token_testkit::HttpServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A generous bound for "closed" after a 1 s timeout.
const CLOSED_WITHIN: Duration = Duration::from_secs(8);

fn addr(serve: &Serve) -> String {
    serve.base.trim_start_matches("http://").to_owned()
}

/// Whether the server closed `stream` within `within` (EOF or reset);
/// anything it sends before that is read and dropped.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let until = tokio::time::Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(until, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// Sends one keep-alive `GET path` on `stream` and reads the response head
/// and its (small) body; returns the status.
async fn get_on(stream: &mut TcpStream, path: &str) -> u16 {
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    // Our small responses have a Content-Length; read until the body is in.
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("a response within 10 s")
            .expect("read");
        assert!(n > 0, "closed before answering {path}");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().expect("length"))
                })
                .unwrap_or(0);
            if got.len() >= end + 4 + length {
                return text[9..12].parse().expect("status");
            }
        }
    }
}

fn config_with(sandbox: &Sandbox, idp: &FakeIdp, serve: &str) -> std::path::PathBuf {
    write_config(
        sandbox,
        &format!(
            "{}\n[serve]\nlisten = \"{}\"\n{serve}",
            fake_profile("orders", idp, "memory"),
            free_addr(),
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_closed_after_the_header_read_timeout() {
    let idp = FakeIdp::start(600).await;
    let sandbox = Sandbox::new();
    let config = config_with(
        &sandbox,
        &idp,
        "header_read_timeout_seconds = 1\nidle_timeout_seconds = 30\n",
    );
    let serve = start_serve(&sandbox, &config);
    let mut slow = Vec::new();
    for i in 0..20 {
        let mut s = TcpStream::connect(addr(&serve)).await.expect("connect");
        // Half a head (no blank line), or nothing at all.
        if i % 2 == 0 {
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: 1")
                .await
                .expect("write");
        }
        slow.push(s);
    }
    for (i, s) in slow.iter_mut().enumerate() {
        assert!(
            closed_within(s, CLOSED_WITHIN).await,
            "slow connection {i} still open after {CLOSED_WITHIN:?}"
        );
    }
    // A client that sends its head keeps being served, and the closings
    // are counted.
    assert_eq!(get_status(&serve.base, "/healthz"), Some(200));
    let metrics = reqwest::get(format!("{}/metrics", serve.base))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let timed_out: f64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("tokencache_connections_timed_out_total{reason=\"header_read\"} ")
        })
        .unwrap_or_else(|| panic!("no header_read timeouts counted:\n{metrics}"))
        .trim()
        .parse()
        .expect("number");
    assert!(timed_out >= 20.0, "{timed_out}");
    assert!(
        metrics.contains("tokencache_connections_open{kind=\"gateway\"}"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_trickled_past_the_header_read_timeout_is_cut() {
    let idp = FakeIdp::start(600).await;
    let sandbox = Sandbox::new();
    let config = config_with(
        &sandbox,
        &idp,
        "header_read_timeout_seconds = 1\nidle_timeout_seconds = 30\n",
    );
    let serve = start_serve(&sandbox, &config);
    let mut s = TcpStream::connect(addr(&serve)).await.expect("connect");
    s.write_all(b"GET /healthz HTTP/1.1\r\n")
        .await
        .expect("write");
    // One header byte every 200 ms: each read is activity, but the head is
    // never finished.
    let started = Instant::now();
    let mut cut = false;
    while started.elapsed() < CLOSED_WITHIN {
        if s.write_all(b"X").await.is_err() {
            cut = true;
            break;
        }
        let mut buf = [0u8; 256];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await
        {
            cut = true;
            break;
        }
    }
    assert!(cut, "a trickled head was not cut within {CLOSED_WITHIN:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_are_closed_after_the_idle_timeout() {
    let idp = FakeIdp::start(600).await;
    let sandbox = Sandbox::new();
    // A header-read timeout far longer than the idle timeout: the idle one
    // is what closes these connections.
    let config = config_with(
        &sandbox,
        &idp,
        "header_read_timeout_seconds = 30\nidle_timeout_seconds = 1\n",
    );
    let serve = start_serve(&sandbox, &config);
    let mut idle = Vec::new();
    for _ in 0..10 {
        let mut s = TcpStream::connect(addr(&serve)).await.expect("connect");
        assert_eq!(get_on(&mut s, "/healthz").await, 200);
        // Kept alive: a second request on the same connection.
        assert_eq!(get_on(&mut s, "/healthz").await, 200);
        idle.push(s);
    }
    for (i, s) in idle.iter_mut().enumerate() {
        assert!(
            closed_within(s, CLOSED_WITHIN).await,
            "idle connection {i} still open after {CLOSED_WITHIN:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_max_connections_a_connection_is_closed_while_health_probes_still_answer() {
    let idp = FakeIdp::start(600).await;
    let upstream = upstream().await;
    let sandbox = Sandbox::new();
    let config = write_config(
        &sandbox,
        &format!(
            "{}\n[serve]\nlisten = \"{}\"\nmax_connections = 5\nhealth_connections = 2\nheader_read_timeout_seconds = 30\nidle_timeout_seconds = 30\n{}",
            fake_profile("orders", &idp, "memory"),
            free_addr(),
            route("/orders/", &upstream, "orders"),
        ),
    );
    let serve = start_serve(&sandbox, &config);
    // The cap's five connections, each answered once and kept open.
    let mut held = Vec::new();
    for _ in 0..5 {
        let mut s = TcpStream::connect(addr(&serve)).await.expect("connect");
        assert_eq!(get_on(&mut s, "/orders/x").await, 200);
        held.push(s);
    }
    // Saturated: probes are still answered (on the reserve, one request a
    // connection); the gateway is not.
    assert_eq!(get_status(&serve.base, "/healthz"), Some(200));
    assert_eq!(get_status(&serve.base, "/readyz"), Some(200));
    assert_eq!(get_status(&serve.base, "/orders/x"), Some(503));
    // Four more, silent: two can take the reserve (which they lose after
    // 2 s without a request), the others are beyond both caps and closed at
    // once. (The reserve connections above may still be closing, so which
    // ones are refused is not known; that some are is, and is counted.)
    let mut extra = Vec::new();
    for _ in 0..4 {
        extra.push(TcpStream::connect(addr(&serve)).await.expect("connect"));
    }
    for (i, s) in extra.iter_mut().enumerate() {
        assert!(
            closed_within(s, CLOSED_WITHIN).await,
            "extra connection {i} is kept open"
        );
    }
    // The held ones still work, and freeing one lets a new client in.
    assert_eq!(get_on(&mut held[0], "/orders/y").await, 200);
    drop(held.pop());
    let mut fresh = None;
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        let mut s = TcpStream::connect(addr(&serve)).await.expect("connect");
        s.write_all(b"GET /orders/z HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .expect("write");
        let mut buf = [0u8; 12];
        if tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
            .await
            .is_ok_and(|r| r.is_ok())
            && &buf[9..12] == b"200"
        {
            fresh = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        fresh.is_some(),
        "a freed slot was not given to a new client"
    );
    drop(fresh);
    drop(held);
    let until = Instant::now() + Duration::from_secs(10);
    let mut metrics = String::new();
    while Instant::now() < until {
        let r = reqwest::get(format!("{}/metrics", serve.base))
            .await
            .expect("metrics");
        if r.status() == 200 {
            metrics = r.text().await.expect("text");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refused: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tokencache_connections_refused_total "))
        .unwrap_or_else(|| panic!("no refusal counted:\n{metrics}"))
        .trim()
        .parse()
        .expect("number");
    assert!(refused >= 1.0, "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_never_answers_gets_504_after_the_route_timeout() {
    let idp = FakeIdp::start(600).await;
    let hanging = HttpServer::start(|_req: Request<Incoming>| async move {
        tokio::time::sleep(Duration::from_secs(600)).await;
        Response::new(Full::new(Bytes::from_static(b"too late")))
    })
    .await;
    let sandbox = Sandbox::new();
    let config = write_config(
        &sandbox,
        &format!(
            "{}\n[serve]\nlisten = \"{}\"\n[[serve.routes]]\nprefix = \"/slow/\"\nupstream = \"{}\"\nprofile = \"orders\"\ntimeout_seconds = 1\n",
            fake_profile("orders", &idp, "memory"),
            free_addr(),
            hanging.url(),
        ),
    );
    let serve = start_serve(&sandbox, &config);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client");
    for _ in 0..3 {
        let r = client
            .get(format!("{}/slow/x", serve.base))
            .send()
            .await
            .expect("an answer, not a hang");
        assert_eq!(r.status(), 504);
        let v: serde_json::Value = serde_json::from_str(&r.text().await.expect("t")).expect("json");
        assert_eq!(v["error"], "upstream_timeout", "{v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_promptly_with_half_sent_heads_and_idle_connections_open() {
    let idp = FakeIdp::start(600).await;
    let sandbox = Sandbox::new();
    // Drain and header timeouts far longer than the bound below: only a
    // drain that closes these connections at once passes.
    let config = config_with(
        &sandbox,
        &idp,
        "drain_seconds = 60\nheader_read_timeout_seconds = 60\nidle_timeout_seconds = 60\n",
    );
    let mut serve = start_serve(&sandbox, &config);
    let mut open = Vec::new();
    for _ in 0..5 {
        let mut s = TcpStream::connect(addr(&serve)).await.expect("connect");
        s.write_all(b"POST /v1/token HTTP/1.1\r\nHost: localhost\r\nContent-")
            .await
            .expect("write");
        open.push(s);
    }
    for _ in 0..5 {
        let mut s = TcpStream::connect(addr(&serve)).await.expect("connect");
        assert_eq!(get_on(&mut s, "/healthz").await, 200);
        open.push(s);
    }
    // Let the server see every byte before the signal.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = serve.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill")
        .success());
    let until = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = serve.child.try_wait().expect("wait") {
            break Some(status);
        }
        if Instant::now() > until {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let status = status.expect("serve still draining 10 s after SIGTERM (drain_seconds = 60)");
    assert_eq!(status.code(), Some(0));
    for s in &mut open {
        assert!(closed_within(s, Duration::from_secs(2)).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_hanging_idp_healthz_answers_at_once_and_readyz_is_503_until_the_prefetch_completes()
{
    // A token endpoint that holds every request until released, counting
    // those it holds at once.
    let open = Arc::new(tokio::sync::watch::channel(false).0);
    let waiting = Arc::new(AtomicUsize::new(0));
    let (w, o) = (Arc::clone(&waiting), Arc::clone(&open));
    let idp = HttpServer::start(move |_req: Request<Incoming>| {
        let (w, mut o) = (Arc::clone(&w), o.subscribe());
        async move {
            w.fetch_add(1, Ordering::SeqCst);
            let _ = o.wait_for(|open| *open).await;
            let mut r = Response::new(Full::new(Bytes::from_static(
                br#"{"access_token":"tok-held","token_type":"Bearer","expires_in":600}"#,
            )));
            r.headers_mut()
                .insert("content-type", "application/json".parse().expect("hv"));
            r
        }
    })
    .await;
    let sandbox = Sandbox::new();
    let profile = |name: &str| {
        format!(
            "[profiles.{name}]\ntoken_url = \"{}/token\"\nclient_id = \"{}\"\nclient_secret_env = \"{}\"\nscopes = [\"{name}.read\"]\nstore = \"memory\"\n",
            idp.url(),
            support::CLIENT_ID,
            support::SECRET_ENV
        )
    };
    let config = write_config(
        &sandbox,
        &format!(
            "{}{}{}\n[serve]\nlisten = \"{}\"\nprefetch_concurrency = 3\n",
            profile("a"),
            profile("b"),
            profile("c"),
            free_addr()
        ),
    );
    let started = Instant::now();
    let serve = spawn_serve(&sandbox, &config, Stdio::inherit());
    let base = serve.base.clone();
    let status = |path: &'static str| {
        let base = base.clone();
        async move {
            tokio::task::spawn_blocking(move || get_status(&base, path))
                .await
                .expect("task")
        }
    };
    assert_eq!(status("/healthz").await, Some(200));
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "/healthz took {:?} with the IdP hanging",
        started.elapsed()
    );
    assert_eq!(status("/readyz").await, Some(503));
    // The three first tokens are fetched at once, not one after another.
    let until = Instant::now() + Duration::from_secs(5);
    while waiting.load(Ordering::SeqCst) < 3 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        waiting.load(Ordering::SeqCst) >= 3,
        "the prefetches were not concurrent"
    );
    assert_eq!(status("/readyz").await, Some(503));
    assert_eq!(status("/healthz").await, Some(200));
    open.send_replace(true);
    let until = Instant::now() + Duration::from_secs(20);
    let mut ready = false;
    while Instant::now() < until {
        if status("/readyz").await == Some(200) {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "/readyz never said ready after the IdP answered");
    drop(serve);
}

/// `serve --config path` under a hard open-file limit of `nofile` (set by
/// the shell before it becomes the sidecar), once it listens.
fn spawn_serve_with_fd_limit(sandbox: &Sandbox, config: &std::path::Path, nofile: u32) -> Serve {
    use std::io::{BufRead, BufReader};
    let template = sandbox.cmd();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("ulimit -n {nofile} && exec \"$0\" \"$@\""))
        .arg(template.get_program())
        .args(["serve", "--config"])
        .arg(config);
    for (k, v) in template.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start tokencache serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    let base = match line.trim().strip_prefix("listening on ") {
        Some(b) => b.to_owned(),
        None => {
            let _ = child.kill();
            panic!("serve did not start; it said {line:?}")
        }
    };
    Serve { child, base }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_fd_limit_of_256_three_hundred_idle_connections_leave_the_sidecar_serving() {
    let idp = FakeIdp::start(600).await;
    let upstream = upstream().await;
    let sandbox = Sandbox::new();
    // The default max_connections (4096) does not fit 256 files: it is
    // lowered, and the connections beyond it are closed, not kept.
    let config = write_config(
        &sandbox,
        &format!(
            "{}\n[serve]\nlisten = \"{}\"\n{}",
            fake_profile("orders", &idp, "memory"),
            free_addr(),
            route("/orders/", &upstream, "orders"),
        ),
    );
    let serve = spawn_serve_with_fd_limit(&sandbox, &config, 256);
    assert!(sidecar::wait_ready(&serve.base), "ready");
    let mut attackers = Vec::new();
    for _ in 0..300 {
        match TcpStream::connect(addr(&serve)).await {
            Ok(s) => attackers.push(s),
            Err(e) => panic!("connect: {e}"),
        }
    }
    // Probes get through while the idle connections stay (the reserve is
    // freed from idle holders within seconds).
    let base = serve.base.clone();
    let healthy = tokio::task::spawn_blocking(move || {
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if get_status(&base, "/healthz") == Some(200) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    })
    .await
    .expect("task");
    assert!(
        healthy,
        "/healthz did not answer with 300 idle connections open"
    );
    drop(attackers);
    // The attacker gone, the gateway serves again.
    let base = serve.base.clone();
    let served = tokio::task::spawn_blocking(move || {
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if get_status(&base, "/orders/x") == Some(200) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    })
    .await
    .expect("task");
    assert!(
        served,
        "the gateway did not recover after the connections closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_the_idp_refuses_at_start_up_still_stops_serve_with_exit_code_4() {
    let idp = HttpServer::start(|_req: Request<Incoming>| async move {
        let mut r = Response::new(Full::new(Bytes::from_static(
            br#"{"error":"invalid_client","error_description":"unknown client"}"#,
        )));
        *r.status_mut() = hyper::StatusCode::UNAUTHORIZED;
        r.headers_mut()
            .insert("content-type", "application/json".parse().expect("hv"));
        r
    })
    .await;
    let sandbox = Sandbox::new();
    let config = write_config(
        &sandbox,
        &format!(
            "[profiles.orders]\ntoken_url = \"{}/token\"\nclient_id = \"{}\"\nclient_secret_env = \"{}\"\nstore = \"memory\"\n\n[serve]\nlisten = \"{}\"\n",
            idp.url(),
            support::CLIENT_ID,
            support::SECRET_ENV,
            free_addr()
        ),
    );
    let out = tokio::task::spawn_blocking(move || {
        let out = sandbox
            .cmd()
            .args(["serve", "--config"])
            .arg(&config)
            .output()
            .expect("run");
        drop(sandbox);
        out
    });
    let out = tokio::time::timeout(Duration::from_secs(30), out)
        .await
        .expect("serve stopped within 30 s")
        .expect("task");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("invalid_client"), "{stderr}");
    assert_eq!(
        stderr.lines().filter(|l| l.starts_with("error:")).count(),
        1,
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_when_the_token_cannot_be_sent_in_a_header() {
    // A token with a byte no HTTP header may hold (DEL).
    let idp = HttpServer::start(|_req: Request<Incoming>| async move {
        let mut r = Response::new(Full::new(Bytes::from_static(
            br#"{"access_token":"tok\u007fbad","token_type":"Bearer","expires_in":600}"#,
        )));
        r.headers_mut()
            .insert("content-type", "application/json".parse().expect("hv"));
        r
    })
    .await;
    let upstream = upstream().await;
    let sandbox = Sandbox::new();
    let config = write_config(
        &sandbox,
        &format!(
            "[profiles.orders]\ntoken_url = \"{}/token\"\nclient_id = \"{}\"\nclient_secret_env = \"{}\"\nstore = \"memory\"\n\n[serve]\nlisten = \"{}\"\n{}",
            idp.url(),
            support::CLIENT_ID,
            support::SECRET_ENV,
            free_addr(),
            route("/orders/", &upstream, "orders"),
        ),
    );
    let serve = spawn_serve(&sandbox, &config, Stdio::inherit());
    let client = reqwest::Client::new();
    // Once the first token is in, the gateway refuses to send it ...
    let until = Instant::now() + Duration::from_secs(10);
    let mut gateway = None;
    while Instant::now() < until {
        let r = client
            .get(format!("{}/orders/x", serve.base))
            .send()
            .await
            .expect("r");
        let body = r.text().await.expect("t");
        if body.contains("token_unusable") || body.contains("idp_token_unusable") {
            gateway = Some(body);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        gateway.is_some(),
        "the gateway sent or waited for the token"
    );
    // ... and readiness says so instead of "ready".
    let r = client
        .get(format!("{}/readyz", serve.base))
        .send()
        .await
        .expect("r");
    assert_eq!(r.status(), 503);
    let body = r.text().await.expect("t");
    assert!(body.contains("cannot be sent"), "{body}");
    assert!(!body.contains("bad"), "the token is in /readyz: {body}");
    assert!(upstream.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_larger_than_max_header_bytes_is_refused_and_a_trickled_body_times_out() {
    let idp = FakeIdp::start(600).await;
    let upstream = upstream().await;
    let sandbox = Sandbox::new();
    let config = write_config(
        &sandbox,
        &format!(
            "{}\n[serve]\nlisten = \"{}\"\nmax_header_bytes = 16384\n[[serve.routes]]\nprefix = \"/orders/\"\nupstream = \"{}\"\nprofile = \"orders\"\ntimeout_seconds = 1\n",
            fake_profile("orders", &idp, "memory"),
            free_addr(),
            upstream.url(),
        ),
    );
    let serve = start_serve(&sandbox, &config);
    // A 64 KB head: refused (431) or cut, never buffered whole.
    let mut s = TcpStream::connect(addr(&serve)).await.expect("connect");
    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let _ = s.write_all(big.as_bytes()).await;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(CLOSED_WITHIN, s.read_to_end(&mut got)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 431"),
        "{text}"
    );
    // A body announced but trickled: 408 after the route's timeout, and
    // nothing forwarded.
    let mut s = TcpStream::connect(addr(&serve)).await.expect("connect");
    s.write_all(
        b"POST /orders/submit HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\nonly ten b",
    )
    .await
    .expect("write");
    let mut head = [0u8; 12];
    tokio::time::timeout(CLOSED_WITHIN, s.read_exact(&mut head))
        .await
        .expect("an answer within the bound")
        .expect("read");
    assert_eq!(&head[9..12], b"408");
    assert!(upstream.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_nothing_of_a_large_response_is_cut_after_the_idle_timeout() {
    const SIZE: usize = 32 << 20;
    let big = Bytes::from(vec![b'x'; SIZE]);
    let upstream = HttpServer::start(move |_req: Request<Incoming>| {
        let big = big.clone();
        async move { Response::new(Full::new(big)) }
    })
    .await;
    let idp = FakeIdp::start(600).await;
    let sandbox = Sandbox::new();
    let config = write_config(
        &sandbox,
        &format!(
            "{}\n[serve]\nlisten = \"{}\"\nidle_timeout_seconds = 1\n[[serve.routes]]\nprefix = \"/big/\"\nupstream = \"{}\"\nprofile = \"orders\"\n",
            fake_profile("orders", &idp, "memory"),
            free_addr(),
            upstream.url(),
        ),
    );
    let serve = start_serve(&sandbox, &config);
    let mut s = TcpStream::connect(addr(&serve)).await.expect("connect");
    s.write_all(b"GET /big/x HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    // Read nothing while the socket buffers fill, then everything there is.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut total = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let until = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match tokio::time::timeout_at(until, s.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => total += n,
            Err(_) => panic!("still open after 20 s ({total} bytes read)"),
        }
    }
    assert!(
        total < SIZE,
        "the whole response ({total} bytes) was written to a client that did not read"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_issuer_that_hangs_healthz_answers_while_the_profiles_are_built() {
    // Discovery and the token endpoint both hold until released.
    let open = Arc::new(tokio::sync::watch::channel(false).0);
    let o = Arc::clone(&open);
    let base = Arc::new(std::sync::OnceLock::<String>::new());
    let b = Arc::clone(&base);
    let idp = HttpServer::start(move |req: Request<Incoming>| {
        let (mut o, b) = (o.subscribe(), Arc::clone(&b));
        async move {
            let _ = o.wait_for(|open| *open).await;
            let issuer = b.get().cloned().unwrap_or_default();
            let body = if req.uri().path().contains("well-known") {
                format!(r#"{{"issuer":"{issuer}","token_endpoint":"{issuer}/token"}}"#)
            } else {
                r#"{"access_token":"tok-late","token_type":"Bearer","expires_in":600}"#.to_owned()
            };
            let mut r = Response::new(Full::new(Bytes::from(body)));
            r.headers_mut()
                .insert("content-type", "application/json".parse().expect("hv"));
            r
        }
    })
    .await;
    let _ = base.set(idp.url());
    let sandbox = Sandbox::new();
    let config = write_config(
        &sandbox,
        &format!(
            "[profiles.orders]\nissuer = \"{}\"\nclient_id = \"{}\"\nclient_secret_env = \"{}\"\nstore = \"memory\"\n\n[serve]\nlisten = \"{}\"\n",
            idp.url(),
            support::CLIENT_ID,
            support::SECRET_ENV,
            free_addr()
        ),
    );
    let started = Instant::now();
    let serve = spawn_serve(&sandbox, &config, Stdio::inherit());
    let b = serve.base.clone();
    let status = |path: &'static str| {
        let b = b.clone();
        async move {
            tokio::task::spawn_blocking(move || get_status(&b, path))
                .await
                .expect("task")
        }
    };
    assert_eq!(status("/healthz").await, Some(200));
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "/healthz took {:?} with the issuer hanging",
        started.elapsed()
    );
    assert_eq!(status("/readyz").await, Some(503));
    assert_eq!(status("/v1/token?profile=orders").await, Some(503));
    open.send_replace(true);
    let until = Instant::now() + Duration::from_secs(20);
    let mut ready = false;
    while Instant::now() < until {
        if status("/readyz").await == Some(200) {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "/readyz never said ready after the issuer answered");
}

/// The connection worker threads (`tc-conn-N`) in `serve`'s process.
fn connection_workers(serve: &Serve) -> usize {
    let tasks = std::fs::read_dir(format!("/proc/{}/task", serve.child.id())).expect("/proc");
    tasks
        .filter_map(Result::ok)
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with("tc-conn-"))
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_served_by_the_configured_connection_workers() {
    let idp = FakeIdp::start(3600).await;
    let upstream = upstream().await;
    for (setting, threads) in [("workers = 3\n", 3), ("workers = 0\n", 0), ("", 0)] {
        let sandbox = Sandbox::new();
        let serve_section = format!("{setting}{}", route("/orders/", &upstream, "orders"));
        let config = config_with(&sandbox, &idp, &serve_section);
        let serve = start_serve(&sandbox, &config);
        let expected = if setting.is_empty() {
            // The default: one per CPU this process may use.
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            threads
        };
        assert_eq!(connection_workers(&serve), expected, "{setting:?}");
        // Seven connections at once (more than there are workers), three
        // keep-alive requests each, every one forwarded with the token.
        let before = upstream.seen().len();
        let mut clients = Vec::new();
        for c in 0..7 {
            let addr = addr(&serve);
            clients.push(tokio::spawn(async move {
                let mut stream = TcpStream::connect(&addr).await.expect("connect");
                for r in 0..3 {
                    let status = get_on(&mut stream, &format!("/orders/c{c}/r{r}")).await;
                    assert_eq!(status, 200);
                }
            }));
        }
        for c in clients {
            c.await.expect("client");
        }
        let seen = upstream.seen();
        assert_eq!(seen.len() - before, 21, "{setting:?}");
        assert!(seen[before..]
            .iter()
            .all(|s| s.authorization().is_some_and(|a| a.starts_with("Bearer "))));
    }
    assert_eq!(idp.calls(), 3, "one token per sidecar");
}
