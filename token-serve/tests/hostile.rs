//! The sidecar under hostile requests (issue 18), against a served
//! [`Sidecar`] on loopback, with raw sockets where a client library would
//! refuse to send the bad request: 401 loops, DNS rebinding, cross-site
//! browser requests, route escapes, bad `Host`, `CONNECT`, loops through
//! the sidecar itself, unsolicited `101`, transfer codings, the sidecar's
//! own headers, malformed request bodies, 503 bodies that would echo the
//! IdP, and `/readyz` for a token no header can carry.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use token_cache::{
    AccessToken, Credential, CredentialError, FailureCause, Secret, TokenCache, TokenRequest,
};
use token_serve::{ServeConfig, Sidecar};
use token_testkit::{HttpServer, Seen, Upstream};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// Issues `token-N` (or a fixed token) and counts its calls.
#[derive(Debug, Default)]
struct CountingIdp {
    calls: AtomicUsize,
    fixed: Option<&'static str>,
    /// Fail every fetch with this error instead.
    fail: Option<CredentialError>,
}

#[async_trait]
impl Credential for CountingIdp {
    fn id(&self) -> &str {
        "counting-idp"
    }

    async fn fetch(
        &self,
        _request: &TokenRequest,
        _previous: Option<&AccessToken>,
    ) -> Result<AccessToken, CredentialError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some(e) = &self.fail {
            return Err(e.clone());
        }
        let secret = self
            .fixed
            .map_or_else(|| format!("token-{n}"), str::to_owned);
        Ok(AccessToken::new(secret, SystemTime::now()).with_expires_in(Duration::from_secs(3600)))
    }
}

struct Served {
    base: String,
    addr: std::net::SocketAddr,
    cache: TokenCache,
    idp: Arc<CountingIdp>,
}

impl Served {
    fn idp_calls(&self) -> usize {
        self.idp.calls.load(Ordering::SeqCst)
    }
}

/// Serves `config` (whose routes and endpoints use profile `p`) on a free
/// loopback port; `{self}` in `config` is replaced by that port.
async fn serve(config: &str, idp: CountingIdp) -> Served {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = ServeConfig::parse(&config.replace("{self}", &addr.port().to_string())).unwrap();
    let idp = Arc::new(idp);
    let cache = TokenCache::builder(Arc::clone(&idp)).build();
    let request = TokenRequest::builder().scope("s").build();
    let sidecar = Sidecar::builder(config)
        .profile("p", &cache, &request)
        .secret(Secret::new("sidecar-secret"))
        .build()
        .unwrap();
    sidecar.prefetch().await;
    tokio::spawn(token_serve::serve(
        sidecar,
        listener,
        std::future::pending(),
        Duration::from_secs(1),
    ));
    Served {
        base: format!("http://{addr}"),
        addr,
        cache,
        idp,
    }
}

fn route(prefix: &str, upstream: &str, extra: &str) -> String {
    format!(
        "[[serve.routes]]\nprefix = \"{prefix}\"\nupstream = \"{upstream}\"\nprofile = \"p\"\n{extra}\n"
    )
}

/// Sends `raw` on a new connection and returns the status of the answer
/// (0 when the connection closed without one) and the whole text read.
async fn raw(addr: std::net::SocketAddr, raw: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(raw).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    // Read until the head and a little body arrived, or the peer closed.
    loop {
        let n = match tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk)).await {
            Ok(Ok(n)) => n,
            _ => 0,
        };
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some(head_end) = text.find("\r\n\r\n") {
            let len = text[..head_end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                })
                .unwrap_or(0);
            if buf.len() >= head_end + 4 + len {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

async fn always_401() -> Upstream {
    Upstream::start_with(|_seen: Seen| async move {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        r.headers_mut().insert(
            "www-authenticate",
            "Bearer error=\"invalid_token\"".parse().unwrap(),
        );
        r
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_requests_to_an_always_401_upstream_cost_at_most_two_idp_calls() {
    let upstream = always_401().await;
    let s = serve(&route("/up/", &upstream.url(), ""), CountingIdp::default()).await;
    let client = reqwest::Client::new();
    for _ in 0..30 {
        let r = client
            .post(format!("{}/up/x", s.base))
            .body("small body, retried once")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
    assert!(s.idp_calls() <= 2, "{} IdP calls", s.idp_calls());
    assert_eq!(
        s.cache.stats().invalidations,
        1,
        "the retry's 401 invalidates nothing"
    );
    // The first request was retried once with the new token; no other was.
    assert_eq!(upstream.seen().len(), 31);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_token_outside_a_bearer_challenge_invalidates_nothing() {
    let upstream = Upstream::start_with(|_seen: Seen| async move {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        r.headers_mut().insert(
            "www-authenticate",
            "Basic realm=\"invalid_token\", Bearer error_description=\"invalid_token\""
                .parse()
                .unwrap(),
        );
        r
    })
    .await;
    let s = serve(&route("/up/", &upstream.url(), ""), CountingIdp::default()).await;
    let r = reqwest::Client::new()
        .get(format!("{}/up/x", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(s.cache.stats().invalidations, 0);
    assert_eq!(s.idp_calls(), 1);
    assert_eq!(upstream.seen().len(), 1, "no retry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebound_host_name_gets_403_before_any_token_work() {
    let upstream = Upstream::start().await;
    let config = format!(
        "[serve]\nallowed_hosts = [\"sidecar.internal\"]\n[serve.google]\nprofile = \"p\"\n[serve.azure]\n\"https://vault.azure.net\" = \"p\"\n{}",
        route("/up/", &upstream.url(), "")
    );
    let s = serve(&config, CountingIdp::default()).await;
    let paths = [
        "/v1/token?profile=p",
        "/azure/token?resource=https://vault.azure.net&api-version=2019-08-01",
        "/computeMetadata/v1/instance/service-accounts/default/token",
        "/metrics",
        "/readyz",
        "/up/x",
    ];
    let headers =
        "Metadata: true\r\nMetadata-Flavor: Google\r\nX-Identity-Header: sidecar-secret\r\n";
    for path in paths {
        let (status, text) = raw(
            s.addr,
            format!(
                "GET {path} HTTP/1.1\r\nHost: rebind.evil.example:{}\r\n{headers}\r\n",
                s.addr.port()
            )
            .as_bytes(),
        )
        .await;
        assert_eq!(status, 403, "{path}: {text}");
        assert!(text.contains("host_not_allowed"), "{path}: {text}");
        assert!(!text.contains("token-1"), "{path}: {text}");
    }
    assert!(upstream.seen().is_empty());
    assert_eq!(s.idp_calls(), 1, "only the prefetch");
    // The names that are answered.
    for host in [
        format!("127.0.0.1:{}", s.addr.port()),
        format!("localhost:{}", s.addr.port()),
        "metadata.google.internal".to_owned(),
        "169.254.169.254".to_owned(),
        "sidecar.internal".to_owned(),
    ] {
        let (status, text) = raw(
            s.addr,
            format!(
                "GET /computeMetadata/v1/instance/service-accounts/default/token HTTP/1.1\r\nHost: {host}\r\n{headers}\r\n"
            )
            .as_bytes(),
        )
        .await;
        assert_eq!(status, 200, "{host}: {text}");
        assert!(text.contains("token-1"), "{host}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_site_browser_request_is_refused_unless_the_route_allows_its_origin() {
    let upstream = Upstream::start().await;
    let config = format!(
        "{}{}",
        route("/up/", &upstream.url(), ""),
        route(
            "/app/",
            &upstream.url(),
            "allow_browser_origins = [\"https://app.example\"]"
        )
    );
    let s = serve(&config, CountingIdp::default()).await;
    let client = reqwest::Client::new();
    let simple_post = |path: &str, origin: &'static str| {
        client
            .post(format!("{}{path}", s.base))
            .header("content-type", "text/plain")
            .header("origin", origin)
            .header("sec-fetch-site", "cross-site")
            .body("transfer all")
            .send()
    };
    let r = simple_post("/up/pay", "https://evil.example")
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = simple_post("/app/pay", "https://evil.example")
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = client
        .get(format!("{}/up/x", s.base))
        .header("sec-fetch-site", "same-site")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = client
        .get(format!("{}/v1/token?profile=p", s.base))
        .header("metadata", "true")
        .header("x-identity-header", "sidecar-secret")
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "token endpoints never answer browsers");
    assert!(upstream.seen().is_empty(), "nothing forwarded");
    let r = simple_post("/app/pay", "https://app.example")
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the route opted in for this origin");
    assert_eq!(upstream.seen().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_escapes_are_refused_and_never_reach_the_upstream() {
    let upstream = Upstream::start().await;
    let s = serve(
        &route("/up/", &format!("{}/base", upstream.url()), ""),
        CountingIdp::default(),
    )
    .await;
    for path in [
        "/up/..;/admin",
        "/up/%2e%2e;/admin",
        "/up/..%2fadmin",
        "/up/%2e%2e%2fadmin",
        "/up/..%5cadmin",
        "/up/..\\admin",
        "/up/a%2fb",
        "/up/%252e%252e/admin",
    ] {
        let (status, text) = raw(
            s.addr,
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(status, 400, "{path}: {text}");
    }
    assert!(upstream.seen().is_empty(), "{:?}", upstream.seen());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_duplicate_or_invalid_host_is_a_400_and_connect_a_405() {
    let upstream = Upstream::start().await;
    let s = serve(&route("/up/", &upstream.url(), ""), CountingIdp::default()).await;
    for (what, request) in [
        ("missing", "GET /up/x HTTP/1.1\r\n\r\n".to_owned()),
        (
            "duplicate",
            "GET /up/x HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: 127.0.0.1\r\n\r\n".to_owned(),
        ),
        (
            "userinfo",
            "GET /up/x HTTP/1.1\r\nHost: a@127.0.0.1\r\n\r\n".to_owned(),
        ),
        (
            "bad port",
            "GET /up/x HTTP/1.1\r\nHost: 127.0.0.1:99999\r\n\r\n".to_owned(),
        ),
        ("empty", "GET /up/x HTTP/1.1\r\nHost: \r\n\r\n".to_owned()),
    ] {
        let (status, text) = raw(s.addr, request.as_bytes()).await;
        assert_eq!(status, 400, "{what}: {text}");
    }
    let (status, text) = raw(s.addr, b"CONNECT /up/x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await;
    assert_eq!(status, 405, "{text}");
    let (status, text) = raw(
        s.addr,
        b"CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n",
    )
    .await;
    assert_eq!(status, 405, "{text}");
    assert!(upstream.seen().is_empty(), "{:?}", upstream.seen());
    // /healthz stays open to any probe.
    let (status, _) = raw(s.addr, b"GET /healthz HTTP/1.1\r\n\r\n").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_whose_upstream_is_the_sidecar_itself_is_a_508_not_a_hundred_hops() {
    let s = serve(
        &route("/loop/", "http://127.0.0.1:{self}/loop", ""),
        CountingIdp::default(),
    )
    .await;
    let r = reqwest::Client::new()
        .get(format!("{}/loop/x", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 508);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsolicited_101_from_the_upstream_is_a_502() {
    let upstream = HttpServer::start(|_req: hyper::Request<hyper::body::Incoming>| async move {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        r.headers_mut()
            .insert("upgrade", "websocket".parse().unwrap());
        r.headers_mut()
            .insert("connection", "upgrade".parse().unwrap());
        r
    })
    .await;
    let s = serve(&route("/up/", &upstream.url(), ""), CountingIdp::default()).await;
    let (status, text) = raw(
        s.addr,
        b"GET /up/x HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await;
    assert_eq!(status, 502, "{text}");
    assert!(text.contains("upstream_protocol_error"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_transfer_coding_is_kept_and_the_sidecar_s_own_headers_are_not_forwarded() {
    let upstream = Upstream::start().await;
    let s = serve(&route("/up/", &upstream.url(), ""), CountingIdp::default()).await;
    let (status, text) = raw(
        s.addr,
        b"POST /up/x HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: gzip, chunked\r\nX-Identity-Header: sidecar-secret\r\nMetadata: true\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let seen = upstream.seen();
    assert_eq!(seen.len(), 1);
    let te = seen[0].header("transfer-encoding").unwrap_or_default();
    assert!(te.contains("gzip"), "Transfer-Encoding upstream: {te:?}");
    assert_eq!(seen[0].header("x-identity-header"), None);
    assert_eq!(seen[0].header("metadata"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_request_body_is_the_caller_s_400_not_the_upstream_s_502() {
    let upstream = Upstream::start().await;
    let s = serve(&route("/up/", &upstream.url(), ""), CountingIdp::default()).await;
    let (status, text) = raw(
        s.addr,
        b"POST /up/x HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nZZZ-not-a-size\r\n\r\n",
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("bad_request_body"), "{text}");
    assert!(!text.contains("upstream_unreachable"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_without_a_trailing_slash_matches_whole_segments_only() {
    let upstream = Upstream::start().await;
    let s = serve(
        &route("/pay", &format!("{}/base", upstream.url()), ""),
        CountingIdp::default(),
    )
    .await;
    let client = reqwest::Client::new();
    let r = client.get(format!("{}/payX", s.base)).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = client
        .get(format!("{}/pay/x", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "ok /base/x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_and_readyz_never_quote_an_idp_body_that_echoes_the_request() {
    let echo = CredentialError::permanent(
        "93 bytes of text/plain: \"POST /token Authorization: Basic Y2xpZW50OnMzY3JldA== grant_type=client_credentials\"",
    )
    .with_cause(FailureCause::HttpStatus)
    .with_status(400)
    .with_service("the token endpoint")
    .with_endpoint("http://idp.example/token");
    let idp = CountingIdp {
        fail: Some(echo),
        ..CountingIdp::default()
    };
    let s = serve("", idp).await;
    let client = reqwest::Client::new();
    let r = client
        .get(format!("{}/v1/token?profile=p", s.base))
        .header("metadata", "true")
        .header("x-identity-header", "sidecar-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let body = r.text().await.unwrap();
    let ready = client
        .get(format!("{}/readyz", s.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for text in [&body, &ready] {
        assert!(
            !text.contains("Y2xpZW50") && !text.contains("Basic"),
            "{text}"
        );
        assert!(text.contains("400 Bad Request"), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_not_ready_when_the_token_cannot_be_put_in_a_header() {
    let idp = CountingIdp {
        fixed: Some("bad\ntoken"),
        ..CountingIdp::default()
    };
    let s = serve("", idp).await;
    let r = reqwest::Client::new()
        .get(format!("{}/readyz", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let body = r.text().await.unwrap();
    assert!(body.contains("cannot be sent in an HTTP header"), "{body}");
    assert!(!body.contains("bad\\ntoken"), "{body}");
}

#[test]
fn a_non_loopback_listen_without_a_secret_is_refused_unless_insecure_is_written() {
    let cache = TokenCache::builder(CountingIdp::default()).build();
    let request = TokenRequest::builder().scope("s").build();
    let build = |text: &str| {
        Sidecar::builder(ServeConfig::parse(text).unwrap())
            .profile("p", &cache, &request)
            .build()
    };
    let e = build("[serve]\nlisten = \"0.0.0.0:8731\"\n").unwrap_err();
    assert!(e.to_string().contains("insecure_token_endpoint"), "{e}");
    build("[serve]\nlisten = \"0.0.0.0:8731\"\ninsecure_token_endpoint = true\n").unwrap();
    build("[serve]\nlisten = \"127.0.0.1:8731\"\n").unwrap();
    Sidecar::builder(ServeConfig::parse("[serve]\nlisten = \"0.0.0.0:8731\"\n").unwrap())
        .profile("p", &cache, &request)
        .secret(Secret::new("s"))
        .build()
        .unwrap();
}
