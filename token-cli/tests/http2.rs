//! `tokencache serve` over HTTP/2 (issue 19, item 1): h2c with prior
//! knowledge beside HTTP/1.1 on the listener, h2c and h2 (ALPN) to
//! upstreams, gRPC through a route with real grpcio clients and servers
//! (token-cli/tests/vendor/grpc_*.py, in the venv `cargo xtask test`
//! makes), curl with `--http2-prior-knowledge`, and the connection limits
//! for h2 clients (raw frames on a socket, where a client library would
//! not misbehave).

mod sidecar;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sidecar::{
    fake_profile, free_addr, hop, route, spawn_serve, start_serve, upstream, write_config, FakeIdp,
};
use support::Sandbox;
use token_testkit::{in_ci, skip_or_fail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The venv `cargo xtask test` creates (xtask/src/venv.rs) with grpcio, or
/// `None` after saying why (a failure under CI).
fn grpc_python() -> Option<PathBuf> {
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/vendor-venv/bin/python");
    let ok = python.exists()
        && Command::new(&python)
            .args(["-c", "import grpc, cryptography"])
            .status()
            .is_ok_and(|s| s.success());
    if ok {
        return Some(python);
    }
    skip_or_fail(format!(
        "grpcio is not installed in {}: run `cargo xtask test` (or `python3 -m venv \
         target/vendor-venv && target/vendor-venv/bin/pip install -r \
         token-cli/tests/vendor/requirements.txt`)",
        python.display()
    ))
}

fn vendor(script: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vendor")
        .join(script)
}

/// `python` with no proxy settings of the environment (grpcio honours
/// `http_proxy`).
fn python_cmd(python: &Path) -> Command {
    let mut cmd = Command::new(python);
    for var in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "http_proxy",
        "https_proxy",
        "grpc_proxy",
        "ALL_PROXY",
        "all_proxy",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost");
    cmd
}

/// The grpcio upstream (grpc_upstream.py), killed when dropped.
struct GrpcUpstream {
    child: Child,
    port: u16,
    /// With TLS: the CA that signed its certificate.
    ca: Option<PathBuf>,
}

impl Drop for GrpcUpstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl GrpcUpstream {
    fn start(python: &Path, dir: &Path, tls: bool) -> Self {
        let port_file = dir.join(if tls { "grpc-tls.port" } else { "grpc.port" });
        let mut cmd = python_cmd(python);
        cmd.arg(vendor("grpc_upstream.py")).arg(&port_file);
        if tls {
            cmd.arg("--tls").arg(dir);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .spawn()
            .expect("start grpc upstream");
        for _ in 0..400 {
            if let Ok(text) = std::fs::read_to_string(&port_file) {
                let port = text.trim().parse().expect("port");
                return Self {
                    child,
                    port,
                    ca: tls.then(|| dir.join("ca.pem")),
                };
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the grpc upstream exited: {status}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        panic!("the grpc upstream did not start within 20 s");
    }
}

/// One call's outcome as grpc_client.py prints it.
#[derive(Debug)]
struct Call {
    code: String,
    details: String,
    answers: Vec<String>,
    trailers: serde_json::Value,
}

/// Runs grpc_client.py against `target` (`host:port`, a plain channel: h2c
/// with prior knowledge) for `service` and `calls`.
fn grpc_calls(python: &Path, target: &str, service: &str, calls: &[&str]) -> Vec<Call> {
    let mut cmd = python_cmd(python);
    cmd.arg(vendor("grpc_client.py"));
    grpc_calls_with(cmd, target, service, calls)
}

/// Runs grpc_client.py as `cmd` (its script and options already given).
fn grpc_calls_with(mut cmd: Command, target: &str, service: &str, calls: &[&str]) -> Vec<Call> {
    let out = cmd
        .args([target, service])
        .args(calls)
        .output()
        .expect("run grpc client");
    assert!(
        out.status.success(),
        "grpc client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let calls: Vec<Call> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json line");
            Call {
                code: v["code"].as_str().expect("code").to_owned(),
                details: v["details"].as_str().unwrap_or_default().to_owned(),
                answers: v["answers"]
                    .as_array()
                    .expect("answers")
                    .iter()
                    .map(|a| a.as_str().expect("str").to_owned())
                    .collect(),
                trailers: v["trailers"].clone(),
            }
        })
        .collect();
    calls
}

fn grpc_route(prefix_service: &str, upstream: &str, profile: &str, extra: &str) -> String {
    format!(
        "[[serve.routes]]\nprefix = \"/{prefix_service}/\"\nupstream = \"{upstream}/{prefix_service}\"\nprofile = \"{profile}\"\n{extra}"
    )
}

fn target(base: &str) -> &str {
    base.trim_start_matches("http://")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_server_streaming_and_bidi_calls_pass_an_h2c_route_with_the_token() {
    let Some(python) = grpc_python() else { return };
    let idp = FakeIdp::start(600).await;
    let sandbox = Sandbox::new();
    let up = GrpcUpstream::start(&python, sandbox.path(), false);
    let config = write_config(
        &sandbox,
        &format!(
            "{}\n[serve]\nlisten = \"{}\"\n{}",
            fake_profile("orders", &idp, "memory"),
            free_addr(),
            grpc_route(
                "test.Echo",
                &format!("http://127.0.0.1:{}", up.port),
                "orders",
                "protocol = \"h2c\"\n"
            ),
        ),
    );
    let serve = start_serve(&sandbox, &config);
    let mut calls = grpc_calls(
        &python,
        target(&serve.base),
        "test.Echo",
        &["Unary", "ServerStream", "Bidi", "Concurrent"],
    );
    // 16 calls at once reached the upstream on one connection: multiplexed.
    let concurrent = calls.pop().expect("Concurrent");
    assert_eq!(concurrent.code, "OK", "{concurrent:?}");
    assert_eq!(concurrent.answers.len(), 16);
    let peers: std::collections::HashSet<_> = concurrent.answers.iter().collect();
    assert_eq!(peers.len(), 1, "{peers:?}");
    for c in &calls {
        assert_eq!(c.code, "OK", "{c:?}");
        // The upstream saw exactly one authorization, the sidecar's token.
        assert!(
            c.answers
                .iter()
                .all(|a| a.starts_with("auth=Bearer tok-1 ")),
            "{c:?}"
        );
        // Response trailers came through.
        assert_eq!(c.trailers["x-upstream-trailer"], "kept", "{c:?}");
    }
    assert_eq!(calls[0].answers, ["auth=Bearer tok-1 msg=hello"]);
    assert_eq!(calls[1].answers.len(), 3, "{:?}", calls[1]);
    assert_eq!(
        calls[2].answers,
        [
            "auth=Bearer tok-1 echo=one",
            "auth=Bearer tok-1 echo=two",
            "auth=Bearer tok-1 echo=three"
        ]
    );
    assert_eq!(idp.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_through_an_https_route_to_an_h2_only_tls_upstream() {
    let Some(python) = grpc_python() else { return };
    let idp = FakeIdp::start(600).await;
    let sandbox = Sandbox::new();
    let up = GrpcUpstream::start(&python, sandbox.path(), true);
    let ca = up.ca.clone().expect("ca");
    let config = write_config(
        &sandbox,
        &format!(
            "{}\n[serve]\nlisten = \"{}\"\nca_file = \"{}\"\n{}",
            fake_profile("orders", &idp, "memory"),
            free_addr(),
            ca.display(),
            // No protocol: https negotiates, and a gRPC server offers h2 only.
            grpc_route(
                "test.Echo",
                &format!("https://127.0.0.1:{}", up.port),
                "orders",
                ""
            ),
        ),
    );
    let serve = start_serve(&sandbox, &config);
    let mut calls = grpc_calls(
        &python,
        target(&serve.base),
        "test.Echo",
        &["Unary", "Bidi", "Unary", "Concurrent"],
    );
    let concurrent = calls.pop().expect("Concurrent");
    assert_eq!(concurrent.code, "OK", "{concurrent:?}");
    let peers: std::collections::HashSet<_> = concurrent.answers.iter().collect();
    assert_eq!(peers.len(), 1, "one TLS connection, multiplexed: {peers:?}");
    for c in &calls {
        assert_eq!(c.code, "OK", "{c:?}");
        assert!(
            c.answers
                .iter()
                .all(|a| a.starts_with("auth=Bearer tok-1 ")),
            "{c:?}"
        );
    }
    assert_eq!(calls[1].answers.len(), 3);
}

/// `https_proxy` pointed at the sidecar: grpcio opens a CONNECT tunnel to
/// the routed host, the sidecar terminates TLS there with a leaf of its own
/// CA (h2 by ALPN), and forwards over verified TLS (h2) to the real server
/// with the token, for unary, server-streaming and bidi calls. A host no
/// route names is refused before any TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_through_https_proxy_connect_reaches_a_tls_server_with_the_token() {
    let Some(python) = grpc_python() else { return };
    let idp = FakeIdp::start(600).await;
    let sandbox = Sandbox::new();
    let up = GrpcUpstream::start(&python, sandbox.path(), true);
    let upstream_ca = up.ca.clone().expect("ca");
    let proxy_ca = sandbox.path().join("proxy-ca.pem");
    let proxy_key = sandbox.path().join("proxy-ca.key");
    let config = write_config(
        &sandbox,
        &format!(
            "{}\n[serve]\nlisten = \"{}\"\nca_file = \"{}\"\n\
             [[serve.routes]]\nhost = \"grpc.internal\"\nupstream = \"https://127.0.0.1:{}\"\nprofile = \"orders\"\n\
             [serve.proxy]\nca_cert_file = \"{}\"\nca_key_file = \"{}\"\n",
            fake_profile("orders", &idp, "memory"),
            free_addr(),
            upstream_ca.display(),
            up.port,
            proxy_ca.display(),
            proxy_key.display(),
        ),
    );
    let serve = start_serve(&sandbox, &config);
    assert!(proxy_ca.exists(), "the sidecar created its CA");
    let through_proxy = || {
        let mut cmd = Command::new(&python);
        for var in [
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "http_proxy",
            "grpc_proxy",
            "ALL_PROXY",
            "all_proxy",
            "NO_PROXY",
            "no_proxy",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("https_proxy", &serve.base)
            .arg(vendor("grpc_client.py"))
            .arg("--tls")
            .arg(&proxy_ca);
        cmd
    };
    let calls = grpc_calls_with(
        through_proxy(),
        "grpc.internal:443",
        "test.Echo",
        &["Unary", "ServerStream", "Bidi"],
    );
    for c in &calls {
        assert_eq!(c.code, "OK", "{c:?}");
        // Exactly the sidecar's token reached the server, never the client's.
        assert!(
            c.answers
                .iter()
                .all(|a| a.starts_with("auth=Bearer tok-1 ")),
            "{c:?}"
        );
    }
    assert_eq!(calls[0].answers, ["auth=Bearer tok-1 msg=hello"]);
    assert_eq!(calls[1].answers.len(), 3, "{:?}", calls[1]);
    assert_eq!(calls[2].answers.len(), 3, "{:?}", calls[2]);
    assert_eq!(idp.calls(), 1);

    // CONNECT to a host no route names: refused (403), so the call fails
    // without reaching anything.
    let calls = grpc_calls_with(
        through_proxy(),
        "elsewhere.internal:443",
        "test.Echo",
        &["Unary"],
    );
    assert_eq!(calls[0].code, "UNAVAILABLE", "{:?}", calls[0]);
    assert!(calls[0].answers.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_call_without_a_token_gets_unavailable_naming_the_cause() {
    let Some(python) = grpc_python() else { return };
    let idp = FakeIdp::start(600).await;
    idp.down.store(true, std::sync::atomic::Ordering::SeqCst);
    let sandbox = Sandbox::new();
    let up = GrpcUpstream::start(&python, sandbox.path(), false);
    let config = write_config(
        &sandbox,
        &format!(
            "{}\n[serve]\nlisten = \"{}\"\n{}",
            fake_profile("orders", &idp, "memory"),
            free_addr(),
            grpc_route(
                "test.Echo",
                &format!("http://127.0.0.1:{}", up.port),
                "orders",
                "protocol = \"h2c\"\n"
            ),
        ),
    );
    let serve = spawn_serve(&sandbox, &config, Stdio::null());
    let calls = grpc_calls(&python, target(&serve.base), "test.Echo", &["Unary"]);
    let c = &calls[0];
    assert_eq!(c.code, "UNAVAILABLE", "{c:?}");
    assert!(c.details.contains("token"), "{c:?}");
    assert!(c.answers.is_empty(), "nothing was forwarded: {c:?}");
    // No route for a service: UNIMPLEMENTED, as gRPC says it.
    let calls = grpc_calls(&python, target(&serve.base), "test.Nowhere", &["Unary"]);
    assert_eq!(calls[0].code, "UNIMPLEMENTED", "{:?}", calls[0]);
    assert!(calls[0].details.contains("no route"), "{:?}", calls[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unauthenticated_in_the_head_or_the_trailers_gets_a_fresh_token() {
    let Some(python) = grpc_python() else { return };
    let idp = FakeIdp::start(600).await;
    let sandbox = Sandbox::new();
    let up = GrpcUpstream::start(&python, sandbox.path(), false);
    let upstream = format!("http://127.0.0.1:{}", up.port);
    let config = write_config(
        &sandbox,
        &format!(
            "{}\n{}\n[serve]\nlisten = \"{}\"\n{}\n{}",
            fake_profile("head", &idp, "memory"),
            fake_profile("trail", &idp, "memory").replace("orders.read", "trail.read"),
            free_addr(),
            grpc_route("test.Head", &upstream, "head", "protocol = \"h2c\"\n"),
            grpc_route("test.Trail", &upstream, "trail", "protocol = \"h2c\"\n"),
        ),
    );
    let serve = start_serve(&sandbox, &config);
    assert_eq!(idp.calls(), 2, "one token per profile");

    // UNAUTHENTICATED in a trailers-only answer: invalidated, and the next
    // call carries a new token.
    let calls = grpc_calls(
        &python,
        target(&serve.base),
        "test.Head",
        &["UnauthHead", "UnauthHead"],
    );
    assert_eq!(calls[0].code, "UNAUTHENTICATED", "{calls:?}");
    assert_eq!(calls[1].code, "OK", "{calls:?}");
    let first = calls[1].answers[0].clone();
    assert_eq!(idp.calls(), 3, "{calls:?}");

    // UNAUTHENTICATED in the trailers, after a message.
    let calls = grpc_calls(
        &python,
        target(&serve.base),
        "test.Trail",
        &["UnauthTrailer"],
    );
    assert_eq!(calls[0].code, "UNAUTHENTICATED", "{calls:?}");
    assert_eq!(calls[0].answers.len(), 1, "{calls:?}");
    // The invalidation runs when the trailers pass; the next call is a new
    // process and connection, so it comes after.
    let mut later = Vec::new();
    for _ in 0..50 {
        later = grpc_calls(
            &python,
            target(&serve.base),
            "test.Trail",
            &["UnauthTrailer"],
        );
        if later[0].code == "OK" {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(later[0].code, "OK", "{later:?}");
    assert_eq!(idp.calls(), 4);
    assert_ne!(later[0].answers[0], calls[0].answers[0]);
    assert!(first.starts_with("auth=Bearer tok-"), "{first}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_with_http2_prior_knowledge_goes_through_a_route() {
    let idp = FakeIdp::start(600).await;
    let upstream = upstream().await;
    let sandbox = Sandbox::new();
    let config = write_config(
        &sandbox,
        &format!(
            "{}\n[serve]\nlisten = \"{}\"\n{}",
            fake_profile("orders", &idp, "memory"),
            free_addr(),
            route("/orders/", &upstream, "orders"),
        ),
    );
    let serve = start_serve(&sandbox, &config);
    let out = match Command::new("curl")
        .args([
            "-sS",
            "--http2-prior-knowledge",
            "-H",
            "authorization: Bearer client-token-must-not-pass",
            "-w",
            "\n%{http_version}",
            &format!("{}/orders/v1/items?a=1", serve.base),
        ])
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            assert!(!in_ci(), "curl is needed under CI: {e}");
            eprintln!("*** SKIPPING: curl is not installed ({e})");
            return;
        }
    };
    assert!(out.status.success(), "curl failed: {out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "ok /base/v1/items?a=1\n2"
    );
    let seen = upstream.seen();
    let last = seen.last().expect("the upstream saw the request");
    let auth: Vec<_> = last.headers.get_all("authorization").iter().collect();
    assert_eq!(auth, ["Bearer tok-1"]);
    assert!(!hop(last));
    // HTTP/1.1 on the same listener still works.
    let out = Command::new("curl")
        .args(["-sS", "--http1.1", &format!("{}/orders/x", serve.base)])
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok /base/x");
}

// ---- Connection limits for h2 clients: raw frames ----------------------

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame.
const SETTINGS: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("len").to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A HEADERS frame for `GET path` (HPACK: static-table entries and
/// literals without indexing).
fn get_headers(stream: u32, authority: &str, path: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x86]; // :method GET, :scheme http
    block.push(0x04); // :path, literal without indexing
    block.push(u8::try_from(path.len()).expect("short"));
    block.extend_from_slice(path.as_bytes());
    block.push(0x01); // :authority
    block.push(u8::try_from(authority.len()).expect("short"));
    block.extend_from_slice(authority.as_bytes());
    // END_STREAM | END_HEADERS
    frame(1, 0x5, stream, &block)
}

/// Reads until the server closes (EOF or reset) within `within`; returns
/// whether it did and what it sent.
async fn read_until_closed(s: &mut TcpStream, within: Duration) -> (bool, Vec<u8>) {
    let until = tokio::time::Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(until, s.read(&mut buf)).await {
            Err(_) => return (false, got),
            Ok(Ok(0) | Err(_)) => return (true, got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Frame types in `bytes`, a sequence of whole frames.
fn frame_types(mut bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    while bytes.len() >= 9 {
        let len = usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
        types.push(bytes[3]);
        bytes = &bytes[(9 + len).min(bytes.len())..];
    }
    types
}

/// The parameters of the first SETTINGS frame in `bytes` (whole frames).
fn server_settings(mut bytes: &[u8]) -> std::collections::HashMap<u16, u32> {
    let mut out = std::collections::HashMap::new();
    while bytes.len() >= 9 {
        let len = usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
        let payload = &bytes[9..(9 + len).min(bytes.len())];
        if bytes[3] == 4 && bytes[4] & 1 == 0 {
            for p in payload.chunks_exact(6) {
                out.insert(
                    u16::from_be_bytes([p[0], p[1]]),
                    u32::from_be_bytes([p[2], p[3], p[4], p[5]]),
                );
            }
            return out;
        }
        bytes = &bytes[(9 + len).min(bytes.len())..];
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_client_that_sends_no_request_or_then_idles_with_pings_is_closed() {
    let idp = FakeIdp::start(600).await;
    let sandbox = Sandbox::new();
    let config = write_config(
        &sandbox,
        &format!(
            "{}\n[serve]\nlisten = \"{}\"\nheader_read_timeout_seconds = 1\nidle_timeout_seconds = 2\n",
            fake_profile("orders", &idp, "memory"),
            free_addr(),
        ),
    );
    let serve = start_serve(&sandbox, &config);
    let addr = target(&serve.base).to_owned();
    // A bound for "closed" after a 1-2 s timeout: liveness, not speed.
    let within = Duration::from_secs(15);

    // The preface and SETTINGS, then nothing: cut at the header-read
    // timeout.
    let mut s = TcpStream::connect(&addr).await.expect("connect");
    s.write_all(PREFACE).await.expect("write");
    s.write_all(&SETTINGS).await.expect("write");
    let (closed, got) = read_until_closed(&mut s, within).await;
    assert!(closed, "an h2 connection without a request stayed open");
    // The server's SETTINGS bound streams and header lists.
    let settings = server_settings(&got);
    assert_eq!(
        settings.get(&3),
        Some(&256),
        "MAX_CONCURRENT_STREAMS: {settings:?}"
    );
    assert_eq!(
        settings.get(&6),
        Some(&65536),
        "MAX_HEADER_LIST_SIZE: {settings:?}"
    );

    // A request answered, then PINGs only: PINGs are no request, and the
    // connection is cut when idle.
    let mut s = TcpStream::connect(&addr).await.expect("connect");
    s.write_all(PREFACE).await.expect("write");
    s.write_all(&SETTINGS).await.expect("write");
    s.write_all(&get_headers(1, &addr, "/healthz"))
        .await
        .expect("write");
    let (mut reader, mut writer) = s.into_split();
    let pinger = tokio::spawn(async move {
        for i in 0u64..100 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if writer
                .write_all(&frame(6, 0, 0, &i.to_be_bytes()))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let until = tokio::time::Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match tokio::time::timeout_at(until, reader.read(&mut buf)).await {
            Err(_) => break false,
            Ok(Ok(0) | Err(_)) => break true,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    };
    pinger.abort();
    assert!(closed, "an idle h2 connection kept open by PINGs");
    let types = frame_types(&got);
    assert!(types.contains(&1), "a HEADERS answer came first: {types:?}");
    assert!(types.contains(&6), "the PINGs were answered: {types:?}");

    let metrics = reqwest::get(format!("{}/metrics", serve.base))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for reason in ["header_read", "idle"] {
        assert!(
            metrics.contains(&format!(
                "tokencache_connections_timed_out_total{{reason=\"{reason}\"}}"
            )),
            "{reason}: {metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_header_list_over_max_header_bytes_is_refused() {
    let idp = FakeIdp::start(600).await;
    let sandbox = Sandbox::new();
    let config = write_config(
        &sandbox,
        &format!(
            "{}\n[serve]\nlisten = \"{}\"\nmax_header_bytes = 8192\n",
            fake_profile("orders", &idp, "memory"),
            free_addr(),
        ),
    );
    let serve = start_serve(&sandbox, &config);
    // curl sends the big header over h2c; the sidecar refuses the stream
    // (431, or a reset) rather than holding it.
    let big = format!("x-big: {}", "a".repeat(20_000));
    let out = match Command::new("curl")
        .args([
            "-sS",
            "--http2-prior-knowledge",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            &big,
            &format!("{}/healthz", serve.base),
        ])
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            assert!(!in_ci(), "curl is needed under CI: {e}");
            return;
        }
    };
    let code = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_ne!(code, "200", "a 20 kB header list was served: {out:?}");
    // A normal request still is.
    let out = Command::new("curl")
        .args([
            "-sS",
            "--http2-prior-knowledge",
            &format!("{}/healthz", serve.base),
        ])
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
}
