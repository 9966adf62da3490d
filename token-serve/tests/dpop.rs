//! The gateway with a DPoP profile (RFC 9449) against the real
//! authorization server (oidc-provider, `dpop-client`) and a resource
//! server that accepts only DPoP-bound tokens and demands its own nonces
//! (token-testkit's `DpopResourceServer`): each forwarded request carries
//! `Authorization: DPoP` and a fresh proof for the upstream's URL; the
//! upstream's `use_dpop_nonce` is retried once when the body was buffered,
//! and passed on (its nonce learned for the next request) when it streamed.

use std::time::Duration;

use token_cache::{TokenCache, TokenRequest};
use token_http::{DpopAlgorithm, DpopKey, OAuthCredential};
use token_serve::{ServeConfig, Sidecar};
use token_testkit::{DpopResourceServer, Idp};

/// The process's Prometheus recorder (installed once, before any key is
/// made, so the counters' `# HELP` is recorded too).
fn recorder() -> metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .install_recorder()
                .expect("the test binary's only recorder")
        })
        .clone()
}

/// The tests of this file one at a time: they share the process's metrics
/// recorder, and the first counts by difference.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A counter's value in the recorder's rendering, 0 when not yet recorded.
fn counter(series: &str) -> f64 {
    recorder()
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

const AS_RETRIES: &str = "tokencache_dpop_nonce_retries_total{role=\"authorization_server\"}";
const RS_RETRIES: &str = "tokencache_dpop_nonce_retries_total{role=\"resource_server\"}";

async fn gateway(idp: &Idp, rs: &DpopResourceServer, key: &DpopKey) -> String {
    let config = ServeConfig::parse(&format!(
        "[serve]\nretry_body_limit = 1024\n[[serve.routes]]\nprefix = \"/api/\"\nupstream = \"{}/base\"\nprofile = \"p\"\n",
        rs.url()
    ))
    .unwrap();
    let credential = OAuthCredential::client_credentials(idp.token_url(), "dpop-client")
        .client_secret("dpop-secret-value")
        .dpop_key(key.clone())
        .build()
        .unwrap();
    let cache = TokenCache::builder(credential).build();
    let request = TokenRequest::builder()
        .scope("orders.read")
        .dpop_thumbprint(key.thumbprint())
        .build();
    let sidecar = Sidecar::builder(config)
        .dpop_profile("p", &cache, &request, key.clone())
        .metrics(recorder())
        .build()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(token_serve::serve(
        sidecar,
        listener,
        std::future::pending(),
        Duration::from_secs(1),
    ));
    base
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_forwards_with_a_fresh_proof_and_the_upstream_s_nonce() {
    let Some(idp) = Idp::shared() else { return };
    let _serial = SERIAL.lock().await;
    let rs = DpopResourceServer::start(format!("{}/__test/dpop-introspect", idp.issuer())).await;
    let _ = recorder();
    let (as_before, rs_before) = (counter(AS_RETRIES), counter(RS_RETRIES));
    let key = DpopKey::generate(DpopAlgorithm::EdDsa).unwrap();
    let base = gateway(idp, &rs, &key).await;
    let client = reqwest::Client::new();

    // The first request: the upstream asks for its nonce, the gateway
    // retries once with it; the caller sees one 200.
    let r = client
        .get(format!("{base}/api/orders?page=2"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", rs.refusals());
    assert_eq!(r.text().await.unwrap(), "ok /base/orders?page=2");
    assert_eq!(rs.nonce_challenges(), 1);
    // Then one upstream request per call, each with its own proof (the
    // resource server refuses a replayed jti), bodies too.
    for i in 0..5 {
        let r = client
            .post(format!("{base}/api/orders/{i}"))
            .body("{\"n\":1}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{:?}", rs.refusals());
    }
    assert_eq!(rs.nonce_challenges(), 1);
    assert_eq!(rs.served(), 6);

    // A body over the retry limit streams: when the nonce rotates its
    // use_dpop_nonce is the caller's answer, but the nonce is learned and
    // the next request goes through at once.
    rs.rotate_nonce("rs-nonce-2");
    let big = vec![b'x'; 4096];
    let r = client
        .post(format!("{base}/api/upload"))
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(rs.nonce_challenges(), 2);
    let r = client
        .post(format!("{base}/api/upload"))
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", rs.refusals());
    assert_eq!(rs.nonce_challenges(), 2);
    assert!(rs.refusals().is_empty(), "{:?}", rs.refusals());

    // Metrics: proofs signed (2 token requests; 9 forwarded attempts: the
    // first GET twice, 5 POSTs, 2 uploads), nonce retries by role (the token endpoint's first-call
    // nonce; the gateway's one buffered retry; the streamed 401 is none).
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{series} not in:\n{text}"))
    };
    assert_eq!(
        value("tokencache_dpop_proofs_signed_total{alg=\"EdDSA\"}"),
        11.0
    );
    assert_eq!(value(AS_RETRIES) - as_before, 1.0);
    assert_eq!(value(RS_RETRIES) - rs_before, 1.0);
    assert!(text.contains("# HELP tokencache_dpop_proofs_signed_total"));
}

/// An HTTP/2 caller (h2c with prior knowledge, hyper's client): each
/// request it sends on its one connection, streams at once, is forwarded
/// with its own proof, and the upstream's `use_dpop_nonce` is retried for a
/// buffered h2 request as for HTTP/1.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_caller_s_requests_each_get_a_fresh_proof() {
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let Some(idp) = Idp::shared() else { return };
    let _serial = SERIAL.lock().await;
    let rs = DpopResourceServer::start(format!("{}/__test/dpop-introspect", idp.issuer())).await;
    let _ = recorder();
    let key = DpopKey::generate(DpopAlgorithm::Es256).unwrap();
    let base = gateway(idp, &rs, &key).await;
    let addr = base.trim_start_matches("http://").to_owned();
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);

    let send = |method: &str, path: &str, body: &'static str| {
        let mut sender = sender.clone();
        let request = http::Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"))
            .header("content-length", body.len())
            .body(Full::new(bytes::Bytes::from_static(body.as_bytes())))
            .unwrap();
        async move {
            let r = sender.send_request(request).await.unwrap();
            let status = r.status();
            let text = r.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&text).into_owned())
        }
    };
    // The first (the upstream asks for its nonce: retried once).
    let (status, text) = send("GET", "/api/h2?x=1", "").await;
    assert_eq!(status, 200, "{:?}", rs.refusals());
    assert_eq!(text, "ok /base/h2?x=1");
    assert_eq!(rs.nonce_challenges(), 1);
    // Eight streams at once on the one connection: eight proofs, none
    // replayed (the resource server refuses a jti it saw).
    let answers = futures_util::future::join_all(
        (0..8).map(|i| send("POST", if i % 2 == 0 { "/api/a" } else { "/api/b" }, "{}")),
    )
    .await;
    for (status, _) in &answers {
        assert_eq!(*status, 200, "{:?}", rs.refusals());
    }
    assert_eq!(rs.served(), 9);
    assert_eq!(rs.nonce_challenges(), 1);
    assert!(rs.refusals().is_empty(), "{:?}", rs.refusals());
    // 12 proofs (only this test signs ES256): the token request and its
    // nonce retry, the first GET twice, the eight streams.
    assert_eq!(
        counter("tokencache_dpop_proofs_signed_total{alg=\"ES256\"}"),
        12.0
    );
}
