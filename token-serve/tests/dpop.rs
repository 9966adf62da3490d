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
    let rs = DpopResourceServer::start(format!("{}/__test/dpop-introspect", idp.issuer())).await;
    let _ = recorder();
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
    assert_eq!(
        value("tokencache_dpop_nonce_retries_total{role=\"authorization_server\"}"),
        1.0
    );
    assert_eq!(
        value("tokencache_dpop_nonce_retries_total{role=\"resource_server\"}"),
        1.0
    );
    assert!(text.contains("# HELP tokencache_dpop_proofs_signed_total"));
}
