//! The forward proxy with real clients: curl `-x` (absolute-form) for
//! `http://` targets, curl `--proxy` + `--cacert` (CONNECT, TLS terminated
//! with the sidecar's CA, HTTP/1.1 and HTTP/2 by ALPN) and Python
//! `requests` with `HTTPS_PROXY` + `REQUESTS_CA_BUNDLE` for `https://`
//! targets, to upstreams on loopback (an HTTPS one with a private CA that
//! the sidecar trusts through `[serve] ca_file`). The upstream always sees
//! exactly one `Authorization`, the sidecar's, never the client's; hosts no
//! route names are refused; the DNS-rebinding guard still protects the
//! token endpoint.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use token_cache::{TokenCache, TokenRequest};
use token_serve::{ServeConfig, Sidecar};
use token_testkit::{skip_or_fail, HttpServer, Upstream};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

#[allow(dead_code)]
mod support;
use support::StaticIdp;

const TOKEN: &str = "static-token";

/// Serves `config` (every route naming profile `orders`) under the
/// configuration's own connection limits; returns `127.0.0.1:PORT`.
async fn sidecar(config: &str) -> String {
    let config = ServeConfig::parse(config).unwrap();
    let limits = config.limits();
    let cache = TokenCache::builder(StaticIdp(TOKEN)).build();
    let request = TokenRequest::builder().scope("s").build();
    let sidecar = Sidecar::builder(config)
        .profile("orders", &cache, &request)
        .build()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(token_serve::serve(
        sidecar,
        listener,
        std::future::pending(),
        limits,
    ));
    addr.to_string()
}

/// A request an HTTPS upstream received: every `Authorization` value, the
/// path, the HTTP version.
#[derive(Debug, Clone)]
struct Got {
    authorizations: Vec<String>,
    path: String,
}

/// An HTTPS upstream on 127.0.0.1 (certificate for `localhost` from a
/// private CA) recording what it receives and answering
/// `auth=<values> path=<path>`; returns its port, the CA's PEM and the
/// record.
async fn tls_upstream() -> (u16, String, Arc<Mutex<Vec<Got>>>) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let ca = Issuer::new(ca_params, ca_key);
    let server_params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server_cert = server_params.signed_by(&server_key, &ca).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![CertificateDer::from(server_cert.der().to_vec())],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
    )
    .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    let server = HttpServer::start_wrapped(
        move |tcp| {
            let accept = acceptor.accept(tcp);
            async move { accept.await.ok() }
        },
        move |req: Request<hyper::body::Incoming>| {
            let record = Arc::clone(&record);
            async move {
                let got = Got {
                    authorizations: req
                        .headers()
                        .get_all("authorization")
                        .iter()
                        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                        .collect(),
                    path: req.uri().to_string(),
                };
                let body = format!("auth={} path={}", got.authorizations.join("|"), got.path);
                record.lock().unwrap().push(got);
                Response::new(Full::new(Bytes::from(body)))
            }
        },
    )
    .await;
    (server.port(), ca_cert.pem(), seen)
}

/// `curl ARGS`: (exit code, stdout, stderr), or `None` after saying why
/// curl cannot run.
async fn curl(args: &[&str]) -> Option<(i32, String, String)> {
    let out = tokio::process::Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "20"])
        .args(args)
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("HTTPS_PROXY")
        .env_remove("ALL_PROXY")
        .env_remove("no_proxy")
        .env_remove("NO_PROXY")
        .output()
        .await;
    match out {
        Ok(o) => Some((
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )),
        Err(e) => skip_or_fail(format!(
            "curl cannot run ({e}): install it (apt-get install curl)"
        )),
    }
}

/// A `[serve.proxy]` table whose CA files (not there yet) are in `dir`.
fn proxy_table(dir: &Path) -> String {
    format!(
        "[serve.proxy]\nca_cert_file = \"{}\"\nca_key_file = \"{}\"\n",
        dir.join("ca.pem").display(),
        dir.join("ca.key").display()
    )
}

/// An HTTPS route for `orders.internal` to the TLS upstream on `port`,
/// trusting `upstream_ca` (written to `dir`), with `[serve.proxy]` in
/// `dir`.
fn https_config(dir: &Path, port: u16, upstream_ca: &str, extra: &str) -> String {
    let ca_file = dir.join("upstream-ca.pem");
    std::fs::write(&ca_file, upstream_ca).unwrap();
    format!(
        "[serve]\nca_file = \"{}\"\n{extra}\n[[serve.routes]]\nhost = \"orders.internal\"\nupstream = \"https://localhost:{port}\"\nprofile = \"orders\"\n{}",
        ca_file.display(),
        proxy_table(dir)
    )
}

/// Sends `CONNECT target` on a new connection; the status and the
/// connection (positioned after the response head).
async fn connect(addr: &str, target: &str) -> (u16, TcpStream) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).await.unwrap();
        assert!(n > 0, "closed before a response head: {head:?}");
        head.push(byte[0]);
    }
    let status = std::str::from_utf8(&head[9..12]).unwrap().parse().unwrap();
    (status, s)
}

/// A TLS client trusting only the sidecar's CA in `ca_pem_file`.
fn tls_client(ca_pem_file: &Path, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca_pem_file).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_with_http_proxy_reaches_a_routed_host_with_only_the_sidecar_s_token() {
    let upstream = Upstream::start().await;
    let addr = sidecar(&format!(
        "[[serve.routes]]\nhost = \"Orders.Internal\"\nupstream = \"{}/base\"\nprofile = \"orders\"\n",
        upstream.url()
    ))
    .await;
    let Some((code, body, err)) = curl(&[
        "-x",
        &format!("http://{addr}"),
        "-H",
        "Authorization: Bearer the-client-s-own",
        "http://orders.internal/v1/orders?id=7",
    ])
    .await
    else {
        return;
    };
    assert_eq!(code, 0, "{err}");
    // The path as the program sent it, after the upstream's base path.
    assert_eq!(body, "ok /base/v1/orders?id=7");
    let seen = upstream.seen();
    assert_eq!(seen.len(), 1);
    let auths: Vec<_> = seen[0].headers.get_all("authorization").iter().collect();
    assert_eq!(auths.len(), 1, "{auths:?}");
    assert_eq!(seen[0].bearer(), Some(TOKEN));
    // curl's own Host and Proxy-Connection do not reach the upstream.
    assert_eq!(
        seen[0].header("host"),
        Some(upstream.addr().to_string().as_str())
    );
    assert!(!seen[0].headers.contains_key("proxy-connection"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absolute_form_request_for_an_unlisted_host_is_refused_with_403() {
    let upstream = Upstream::start().await;
    let addr = sidecar(&format!(
        "[[serve.routes]]\nhost = \"orders.internal\"\nupstream = \"{}\"\nprofile = \"orders\"\n",
        upstream.url()
    ))
    .await;
    for target in [
        "http://evil.example/v1/x",
        // A routed name on a port a portless route serves is fine; an
        // unlisted one stays refused on any port.
        "http://evil.example:8080/",
    ] {
        let Some((code, body, err)) = curl(&[
            "-x",
            &format!("http://{addr}"),
            "-w",
            "\n%{http_code}",
            target,
        ])
        .await
        else {
            return;
        };
        assert_eq!(code, 0, "{err}");
        assert!(body.ends_with("\n403"), "{target}: {body}");
        assert!(body.contains("host_not_routed"), "{body}");
        assert!(!body.contains(TOKEN), "{body}");
    }
    assert!(upstream.seen().is_empty(), "nothing was forwarded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_route_takes_every_request_for_its_host_and_never_the_token_endpoint() {
    let by_host = Upstream::start().await;
    let by_host_v2 = Upstream::start().await;
    let by_prefix = Upstream::start().await;
    let addr = sidecar(&format!(
        "[[serve.routes]]\nprefix = \"/orders/\"\nupstream = \"{}\"\nprofile = \"orders\"\n\
         [[serve.routes]]\nhost = \"orders.internal\"\nupstream = \"{}\"\nprofile = \"orders\"\n\
         [[serve.routes]]\nhost = \"orders.internal\"\nprefix = \"/v2/\"\nupstream = \"{}\"\nprofile = \"orders\"\n",
        by_prefix.url(),
        by_host.url(),
        by_host_v2.url()
    ))
    .await;
    let client = reqwest::Client::new();
    let get = |host: &'static str, path: &'static str| {
        let client = client.clone();
        let url = format!("http://{addr}{path}");
        async move {
            let r = client
                .get(url)
                .header("host", host)
                .header("metadata", "true")
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    // For the routed host: the longest prefix among its routes, the path
    // unchanged; the prefix-only route never applies.
    assert_eq!(
        get("orders.internal", "/orders/x").await,
        (200, "ok /orders/x".to_owned())
    );
    assert_eq!(
        get("ORDERS.internal:80", "/v2/x").await,
        (200, "ok /v2/x".to_owned())
    );
    // Its /v1/token and /healthz are the upstream's, not the sidecar's.
    let (status, body) = get("orders.internal", "/v1/token?profile=orders").await;
    assert_eq!(
        (status, body.as_str()),
        (200, "ok /v1/token?profile=orders")
    );
    assert_eq!(
        get("orders.internal", "/healthz").await,
        (200, "ok /healthz".to_owned())
    );
    // The browser guard applies to host routes too.
    let r = client
        .get(format!("http://{addr}/x"))
        .header("host", "orders.internal")
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("browser_request_refused"));
    assert_eq!(by_host.seen().len(), 3);
    assert_eq!(by_host_v2.seen().len(), 1);
    assert!(by_prefix.seen().is_empty());
    // For the sidecar's own name: prefix routes and its own endpoints only.
    assert_eq!(
        get("localhost", "/orders/x").await,
        (200, "ok /x".to_owned())
    );
    assert_eq!(get("localhost", "/v2/x").await.0, 404);
    let (status, body) = get("127.0.0.1", "/v1/token?profile=orders").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(TOKEN), "{body}");
    // DNS rebinding: any other name still gets nothing from /v1/token.
    let (status, body) = get("rebound.example", "/v1/token?profile=orders").await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("host_not_allowed") && !body.contains(TOKEN),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_route_with_a_port_serves_that_port_only() {
    let upstream = Upstream::start().await;
    let addr = sidecar(&format!(
        "[[serve.routes]]\nhost = \"orders.internal:8080\"\nupstream = \"{}\"\nprofile = \"orders\"\n",
        upstream.url()
    ))
    .await;
    let Some((_, body, _)) = curl(&[
        "-x",
        &format!("http://{addr}"),
        "-w",
        " %{http_code}",
        "http://orders.internal:8080/a",
    ])
    .await
    else {
        return;
    };
    assert_eq!(body, "ok /a 200");
    let (_, body, _) = curl(&[
        "-x",
        &format!("http://{addr}"),
        "-w",
        " %{http_code}",
        "http://orders.internal/a",
    ])
    .await
    .unwrap();
    assert!(
        body.ends_with(" 403") && body.contains("host_not_routed"),
        "{body}"
    );
    assert_eq!(upstream.seen().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_is_refused_without_serve_proxy_and_for_unlisted_hosts_and_ports() {
    let upstream = Upstream::start().await;
    let route = format!(
        "[[serve.routes]]\nhost = \"orders.internal\"\nupstream = \"{}\"\nprofile = \"orders\"\n",
        upstream.url()
    );
    // Without [serve.proxy]: today's refusal.
    let addr = sidecar(&route).await;
    let (status, _) = connect(&addr, "orders.internal:443").await;
    assert_eq!(status, 405);
    // With it: only routed hosts, on 443.
    let dir = tempfile::tempdir().unwrap();
    let addr = sidecar(&format!("{route}{}", proxy_table(dir.path()))).await;
    for target in ["evil.example:443", "orders.internal:22", "127.0.0.1:8731"] {
        let (status, _) = connect(&addr, target).await;
        assert_eq!(status, 403, "{target}");
    }
    let (status, _) = connect(&addr, "orders.internal:443").await;
    assert_eq!(status, 200);
    // curl says the tunnel was refused, and nothing went anywhere.
    let Some((code, _, err)) = curl(&[
        "--proxy",
        &format!("http://{addr}"),
        "--cacert",
        &dir.path().join("ca.pem").display().to_string(),
        "https://evil.example/",
    ])
    .await
    else {
        return;
    };
    assert_ne!(code, 0);
    assert!(err.contains("403"), "{err}");
    assert!(upstream.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_through_connect_trusts_only_the_sidecar_ca_and_the_upstream_gets_one_authorization() {
    let (port, upstream_ca, got) = tls_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let addr = sidecar(&https_config(dir.path(), port, &upstream_ca, "")).await;
    let ca = dir.path().join("ca.pem");
    // The CA was created at start, its key readable by its owner only.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
    for (http, want) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let Some((code, body, err)) = curl(&[
            http,
            "--proxy",
            &format!("http://{addr}"),
            "--cacert",
            &ca.display().to_string(),
            "-H",
            "Authorization: Bearer the-client-s-own",
            "-w",
            "\n%{http_version}",
            "https://orders.internal/v1/x?q=1",
        ])
        .await
        else {
            return;
        };
        assert_eq!(code, 0, "{err}");
        assert_eq!(
            body,
            format!("auth=Bearer {TOKEN} path=/v1/x?q=1\n{want}"),
            "{http}"
        );
    }
    let got = got.lock().unwrap().clone();
    assert_eq!(got.len(), 2);
    for g in &got {
        assert_eq!(g.authorizations, [format!("Bearer {TOKEN}")]);
    }
    // Without the sidecar's CA, curl refuses the sidecar's certificate.
    let (code, _, err) = curl(&[
        "--proxy",
        &format!("http://{addr}"),
        "--cacert",
        &dir.path().join("upstream-ca.pem").display().to_string(),
        "https://orders.internal/v1/x",
    ])
    .await
    .unwrap();
    assert_eq!(code, 60, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_the_sidecar_cannot_verify_is_a_502_inside_the_tunnel() {
    let (port, _, got) = tls_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    // No [serve] ca_file: the upstream's private CA is not trusted.
    let addr = sidecar(&format!(
        "[[serve.routes]]\nhost = \"orders.internal\"\nupstream = \"https://localhost:{port}\"\nprofile = \"orders\"\n{}",
        proxy_table(dir.path())
    ))
    .await;
    let Some((code, body, err)) = curl(&[
        "--proxy",
        &format!("http://{addr}"),
        "--cacert",
        &dir.path().join("ca.pem").display().to_string(),
        "-w",
        "\n%{http_code}",
        "https://orders.internal/x",
    ])
    .await
    else {
        return;
    };
    assert_eq!(code, 0, "{err}");
    assert!(
        body.ends_with("\n502") && body.contains("upstream_unreachable"),
        "{body}"
    );
    assert!(!body.contains(TOKEN));
    assert!(got.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_requests_with_https_proxy_and_requests_ca_bundle() {
    let Some(python) = vendor_python() else {
        return;
    };
    let (port, upstream_ca, got) = tls_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let addr = sidecar(&https_config(dir.path(), port, &upstream_ca, "")).await;
    let script = "import requests\n\
        r = requests.get('https://orders.internal/py/x', headers={'Authorization': 'Bearer the-client-s-own'}, timeout=20)\n\
        print(r.status_code)\n\
        print(r.text)\n";
    let out = tokio::process::Command::new(&python)
        .args(["-c", script])
        .env("HTTPS_PROXY", format!("http://{addr}"))
        .env("REQUESTS_CA_BUNDLE", dir.path().join("ca.pem"))
        .env_remove("https_proxy")
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .env_remove("CURL_CA_BUNDLE")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout, format!("200\nauth=Bearer {TOKEN} path=/py/x\n"));
    assert_eq!(got.lock().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leaf_for_a_host_is_made_once_and_reused_and_other_hosts_are_misdirected() {
    let (port, upstream_ca, got) = tls_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let addr = sidecar(&https_config(dir.path(), port, &upstream_ca, "")).await;
    let connector = tls_client(&dir.path().join("ca.pem"), &[b"http/1.1"]);
    let mut leaves = Vec::new();
    for _ in 0..2 {
        let (status, tcp) = connect(&addr, "orders.internal:443").await;
        assert_eq!(status, 200);
        let name = ServerName::try_from("orders.internal").unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        let (_, conn) = tls.get_ref();
        leaves.push(conn.peer_certificates().unwrap()[0].clone());
        // A request in this tunnel for another host is misdirected.
        tls.write_all(b"GET /x HTTP/1.1\r\nHost: other.internal\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        tls.read_to_end(&mut answer).await.ok();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 421"), "{answer}");
    }
    assert_eq!(leaves[0], leaves[1], "the second tunnel reused the leaf");
    assert!(got.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_count_against_max_connections() {
    let (port, upstream_ca, _) = tls_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let addr = sidecar(&https_config(
        dir.path(),
        port,
        &upstream_ca,
        "max_connections = 2\nhealth_connections = 0",
    ))
    .await;
    let connector = tls_client(&dir.path().join("ca.pem"), &[b"http/1.1"]);
    let mut tunnels = Vec::new();
    for _ in 0..2 {
        let (status, tcp) = connect(&addr, "orders.internal:443").await;
        assert_eq!(status, 200);
        let name = ServerName::try_from("orders.internal").unwrap();
        tunnels.push(connector.connect(name, tcp).await.unwrap());
    }
    // Both permits are held by the tunnels: a third connection is closed.
    let answered = |addr: String| async move {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        let _ = s
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await;
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer).await;
        answer.starts_with(b"HTTP/1.1 200")
    };
    assert!(
        !answered(addr.clone()).await,
        "a third connection was served"
    );
    // Closing a tunnel frees its place.
    drop(tunnels.pop());
    let mut freed = false;
    for _ in 0..100 {
        if answered(addr.clone()).await {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(freed, "the closed tunnel's place was never freed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_without_a_tls_handshake_or_left_idle_is_closed() {
    let (port, upstream_ca, _) = tls_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let config = https_config(
        dir.path(),
        port,
        &upstream_ca,
        "idle_timeout_seconds = 1\nheader_read_timeout_seconds = 1",
    );
    let addr = sidecar(&format!("{config}tls_handshake_timeout_seconds = 1\n")).await;
    // The bound only keeps a broken sidecar from hanging the test; the
    // sidecar closes after about a second.
    let closed = |mut s: tokio_rustls::client::TlsStream<TcpStream>| async move {
        // The server's HTTP/2 SETTINGS come first; then the end.
        let mut buf = [0u8; 256];
        let until_end = async {
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(30), until_end)
            .await
            .is_ok()
    };
    // No handshake at all.
    let (status, mut tcp) = connect(&addr, "orders.internal:443").await;
    assert_eq!(status, 200);
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(30), tcp.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0) | Err(_))), "{read:?}");
    // A handshake, then nothing.
    let (_, tcp) = connect(&addr, "orders.internal:443").await;
    let connector = tls_client(&dir.path().join("ca.pem"), &[b"h2"]);
    let tls = connector
        .connect(ServerName::try_from("orders.internal").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    assert!(closed(tls).await, "the idle tunnel was not closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_an_idle_tunnel_and_the_drain_completes() {
    let (port, upstream_ca, _) = tls_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let config = ServeConfig::parse(&https_config(dir.path(), port, &upstream_ca, "")).unwrap();
    let cache = TokenCache::builder(StaticIdp(TOKEN)).build();
    let request = TokenRequest::builder().scope("s").build();
    let sidecar = Sidecar::builder(config)
        .profile("orders", &cache, &request)
        .build()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(token_serve::serve(
        sidecar,
        listener,
        async move {
            let _ = stopped.await;
        },
        Duration::from_secs(20),
    ));
    let (_, tcp) = connect(&addr, "orders.internal:443").await;
    let connector = tls_client(&dir.path().join("ca.pem"), &[b"http/1.1"]);
    let mut tls = connector
        .connect(ServerName::try_from("orders.internal").unwrap(), tcp)
        .await
        .unwrap();
    // One request, so the tunnel is serving; then it sits idle.
    tls.write_all(b"GET /a HTTP/1.1\r\nHost: orders.internal\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    tls.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    stop.send(()).unwrap();
    // The drain (20 s) is not waited out: the idle tunnel closes at once.
    let drained = tokio::time::timeout(Duration::from_secs(15), served)
        .await
        .expect("serve returned before its drain time")
        .unwrap();
    assert_eq!(drained, token_serve::Drained::Complete);
}

#[test]
fn the_ca_files_must_be_both_there_or_both_absent_and_match() {
    let dir = tempfile::tempdir().unwrap();
    let build = |cert: &Path, key: &Path| {
        let config = ServeConfig::parse(&format!(
            "[serve.proxy]\nca_cert_file = \"{}\"\nca_key_file = \"{}\"\n",
            cert.display(),
            key.display()
        ))
        .unwrap();
        Sidecar::builder(config)
            .build()
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let (cert, key) = (dir.path().join("ca.pem"), dir.path().join("ca.key"));
    let check = |cert: &Path, key: &Path| {
        ServeConfig::parse(&format!(
            "[serve.proxy]\nca_cert_file = \"{}\"\nca_key_file = \"{}\"\n",
            cert.display(),
            key.display()
        ))
        .unwrap()
        .proxy
        .unwrap()
        .check()
        .map_err(|e| e.to_string())
    };
    check(&cert, &key).expect("absent: to be created");
    assert!(!cert.exists() && !key.exists(), "checking creates nothing");
    build(&cert, &key).expect("created");
    check(&cert, &key).expect("created and matching");
    assert!(cert.exists() && key.exists());
    build(&cert, &key).expect("read back");
    // Only one of them.
    let other_cert = dir.path().join("other.pem");
    let e = build(&other_cert, &key).unwrap_err();
    assert!(e.contains("exists but ca_cert_file"), "{e}");
    let other_key = dir.path().join("other.key");
    let e = build(&cert, &other_key).unwrap_err();
    assert!(e.contains("exists but ca_key_file"), "{e}");
    // A key that is not the certificate's.
    std::fs::write(&other_key, KeyPair::generate().unwrap().serialize_pem()).unwrap();
    let e = build(&cert, &other_key).unwrap_err();
    assert!(e.contains("do not match"), "{e}");
    assert_eq!(check(&cert, &other_key).unwrap_err(), e);
    assert!(!e.contains("PRIVATE KEY"), "{e}");
    // A key file that is no key.
    std::fs::write(&other_key, "hello\n").unwrap();
    let e = build(&cert, &other_key).unwrap_err();
    assert!(e.contains("is not a PEM private key"), "{e}");
}

#[test]
fn route_hosts_are_checked_at_load() {
    let cases = [
        ("host = \"bad host\"", "not a valid DNS name"),
        ("host = \"a:b:c\"", "is not a host"),
        ("host = \"under_score.example\"", "not a valid DNS name"),
        ("host = \"-x.example\"", "not a valid DNS name"),
        ("host = \"x.example:0\"", "port"),
        ("host = \"x.example:70000\"", "port"),
        ("host = \"*.example\"", "not a valid DNS name"),
        ("host = \"localhost\"", "names the sidecar itself"),
        ("host = \"127.0.0.2\"", "names the sidecar itself"),
        (
            "host = \"metadata.google.internal\"",
            "names the sidecar itself",
        ),
        ("host = \"[::1]:443\"", "names the sidecar itself"),
        ("", "neither prefix nor host"),
    ];
    for (host, expected) in cases {
        let text = format!(
            "[[serve.routes]]\n{host}\nupstream = \"http://127.0.0.1:1\"\nprofile = \"orders\"\n"
        );
        let e = ServeConfig::parse(&text).expect_err(&text).to_string();
        assert!(e.contains(expected), "{text}: {e}");
    }
    let e = ServeConfig::parse(
        "[[serve.routes]]\nhost = \"a.example\"\nupstream = \"http://x\"\nprofile = \"p\"\n\
         [[serve.routes]]\nhost = \"A.example\"\nupstream = \"http://y\"\nprofile = \"p\"\n",
    )
    .unwrap_err();
    assert!(e.to_string().contains("given twice"), "{e}");
    // allowed_hosts names are the sidecar's too.
    let e = ServeConfig::parse(
        "[serve]\nallowed_hosts = [\"sidecar.internal\"]\n[[serve.routes]]\nhost = \"sidecar.internal:8443\"\nupstream = \"http://x\"\nprofile = \"p\"\n",
    )
    .unwrap_err();
    assert!(e.to_string().contains("names the sidecar itself"), "{e}");
    let c = ServeConfig::parse(
        "[[serve.routes]]\nhost = \"Orders.Internal.\"\nupstream = \"http://x\"\nprofile = \"p\"\n\
         [[serve.routes]]\nhost = \"10.1.2.3:8443\"\nprefix = \"/v1/\"\nupstream = \"http://x\"\nprofile = \"p\"\n",
    )
    .unwrap();
    assert_eq!(c.routes[0].host.as_deref(), Some("orders.internal"));
    assert_eq!(c.routes[0].prefix, "/");
    assert_eq!(c.routes[1].host.as_deref(), Some("10.1.2.3:8443"));
}

/// The venv `cargo xtask test` creates (xtask/src/venv.rs), or `None` after
/// saying why (a failure under CI).
fn vendor_python() -> Option<PathBuf> {
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/vendor-venv/bin/python");
    let ok = python.exists()
        && std::process::Command::new(&python)
            .args(["-c", "import requests"])
            .status()
            .is_ok_and(|s| s.success());
    if ok {
        return Some(python);
    }
    skip_or_fail(format!(
        "Python requests is not installed in {}: run `cargo xtask test` (or `python3 -m venv \
         target/vendor-venv && target/vendor-venv/bin/pip install -r \
         token-cli/tests/vendor/requirements.txt`)",
        python.display()
    ))
}
