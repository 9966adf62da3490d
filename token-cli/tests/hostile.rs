//! `tokencache serve` under hostile requests and unsafe configurations
//! (issue 18), against the built binary: an always-401 upstream costs at
//! most two IdP calls; a rebound Host or a cross-site browser request gets
//! 403 before any token work; route escapes sent on raw sockets never reach
//! the upstream; unsafe configurations are refused or warned about at load.
//! (Each guard is also tested against the library in token-serve's
//! `tests/hostile.rs`.)

mod sidecar;
mod support;

use std::process::Stdio;

use sidecar::{fake_profile, free_addr, route, start_serve, write_config, FakeIdp};
use support::Sandbox;
use token_testkit::{Seen, Upstream};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// An upstream whose every answer is `401` with a Bearer `invalid_token`
/// challenge.
async fn always_401() -> Upstream {
    Upstream::start_with(|_seen: Seen| async move {
        let mut r = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::new()));
        *r.status_mut() = hyper::StatusCode::UNAUTHORIZED;
        r.headers_mut().insert(
            "www-authenticate",
            "Bearer realm=\"api\", error=\"invalid_token\""
                .parse()
                .expect("hv"),
        );
        r
    })
    .await
}

/// The status of the answer to `raw`, sent on its own connection to
/// `base` (`http://ADDR`).
async fn raw_status(base: &str, raw: &str) -> u16 {
    let addr = base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(raw.as_bytes()).await.expect("write");
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("an answer")
        .expect("read");
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_requests_to_an_always_401_upstream_make_at_most_two_idp_calls() {
    let idp = FakeIdp::start(600).await;
    let upstream = always_401().await;
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
    let client = reqwest::Client::new();
    for i in 0..30 {
        let r = client
            .post(format!("{}/orders/submit", serve.base))
            .body(format!("order {i}"))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 401);
    }
    assert!(
        idp.calls() <= 2,
        "{} IdP calls for 30 requests",
        idp.calls()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebound_host_or_a_cross_site_page_gets_403_and_escapes_never_reach_the_upstream() {
    let idp = FakeIdp::start(600).await;
    let upstream = sidecar::upstream().await;
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
    let port = serve.base.rsplit(':').next().expect("port");
    // DNS rebinding: the page's own name as Host.
    let status = raw_status(
        &serve.base,
        &format!("GET /v1/token?profile=orders HTTP/1.1\r\nHost: rebind.evil.example:{port}\r\nMetadata: true\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 403);
    // A cross-site "simple" POST through the gateway.
    let status = raw_status(
        &serve.base,
        "POST /orders/pay HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: https://evil.example\r\nSec-Fetch-Site: cross-site\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nabc",
    )
    .await;
    assert_eq!(status, 403);
    for path in [
        "/orders/..;/admin",
        "/orders/%2e%2e%2fadmin",
        "/orders/..%5cadmin",
    ] {
        let status = raw_status(
            &serve.base,
            &format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"),
        )
        .await;
        assert_eq!(status, 400, "{path}");
    }
    assert_eq!(
        raw_status(&serve.base, "GET /orders/x HTTP/1.1\r\n\r\n").await,
        400,
        "no Host"
    );
    assert!(upstream.seen().is_empty(), "{:?}", upstream.seen());
    assert_eq!(idp.calls(), 1, "only the start-up prefetch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_configurations_are_refused_or_warned_about_at_load() {
    let idp = FakeIdp::start(600).await;
    let sandbox = Sandbox::new();
    let profile = fake_profile("orders", &idp, "memory");

    // An upstream with a password in its URL: refused, the password unsaid.
    let config = write_config(
        &sandbox,
        &format!(
            "{profile}\n[serve]\nlisten = \"{}\"\n[[serve.routes]]\nprefix = \"/o/\"\nupstream = \"https://svc:hunter2-pw@orders.example\"\nprofile = \"orders\"\n",
            free_addr()
        ),
    );
    let out = sandbox
        .cmd()
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .expect("run");
    let err = support::stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("user info") && !err.contains("hunter2"),
        "{err}"
    );

    // A non-loopback listen without secret_file: refused before binding.
    let config = write_config(
        &sandbox,
        &format!("{profile}\n[serve]\nlisten = \"0.0.0.0:1\"\n"),
    );
    let out = sandbox
        .cmd()
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .expect("run");
    let err = support::stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("insecure_token_endpoint"), "{err}");
    let out = sandbox
        .cmd()
        .args(["serve", "--check-config", "--config"])
        .arg(&config)
        .output()
        .expect("run");
    let err = support::stderr(&out);
    assert_eq!(out.status.code(), Some(3), "--check-config: {err}");
    assert!(err.contains("insecure_token_endpoint"), "{err}");

    // A plain http:// upstream off loopback, and a world-readable secret
    // file: warnings, and the sidecar serves.
    let secret_file = sandbox.path().join("sidecar-secret");
    std::fs::write(&secret_file, "sidecar-shared-secret\n").expect("write");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o644))
            .expect("chmod");
    }
    let config = write_config(
        &sandbox,
        &format!(
            "{profile}\n[serve]\nlisten = \"{}\"\nsecret_file = \"{}\"\n[[serve.routes]]\nprefix = \"/o/\"\nupstream = \"http://orders.example.invalid\"\nprofile = \"orders\"\n[[serve.routes]]\nprefix = \"/quiet/\"\nupstream = \"http://quiet.example.invalid\"\nprofile = \"orders\"\nallow_plaintext = true\n",
            free_addr(),
            secret_file.display()
        ),
    );
    let log = sandbox.path().join("serve.log");
    let serve = sidecar::start_serve_with(
        &sandbox,
        &config,
        &[],
        Stdio::from(std::fs::File::create(&log).expect("log file")),
    );
    drop(serve);
    let log = std::fs::read_to_string(&log).expect("log");
    assert!(
        log.contains("plain http://") && log.contains("/o/") && !log.contains("quiet.example"),
        "{log}"
    );
    #[cfg(unix)]
    assert!(log.contains("readable by everyone"), "{log}");
    assert!(!log.contains("sidecar-shared-secret"), "{log}");
}
