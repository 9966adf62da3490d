//! Routes with `mode = "exchange"` and `POST /v1/token/exchange` against
//! the real oidc-provider (`token-http/tests/idp/server.js`, client
//! `obo-client`), real hyper upstreams and a private Redis shared by two
//! sidecars. Without node, the IdP's packages or redis-server the tests
//! skip loudly; under `CI` that is a failure.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use token_cache::{EncryptionKey, Keyring, Secret, TokenCache, TokenRequest};
use token_http::OAuthCredential;
use token_redis::{RedisConfig, RedisStore};
use token_serve::{ServeConfig, Sidecar};
use token_testkit::{Idp, RedisServer, Seen, Upstream};

const AUDIENCE: &str = "https://orders.internal";

fn claims(jwt: &str) -> serde_json::Value {
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

fn credential(idp: &Idp) -> OAuthCredential {
    let client = reqwest::Client::builder()
        .pool_idle_timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    OAuthCredential::client_credentials(idp.token_url(), "obo-client")
        .client_secret("obo-secret-value")
        .http_client(client)
        .build()
        .unwrap()
}

/// Every log event of this test process, at TRACE (installed once, by the
/// first test that asks: the sidecars log on their runtimes' threads).
fn logs() -> Arc<Mutex<Vec<u8>>> {
    #[derive(Clone)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    static LOGS: std::sync::OnceLock<Arc<Mutex<Vec<u8>>>> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = Sink(Arc::clone(&buf));
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
        buf
    })
    .clone()
}

/// The process's Prometheus recorder (one per test process), which every
/// sidecar of these tests serves on `/metrics`.
fn metrics() -> token_serve::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<token_serve::PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            token_serve::prometheus_builder()
                .expect("the buckets")
                .install_recorder()
                .expect("the test process's recorder")
        })
        .clone()
}

/// Serves `config` with profile `gw` on `cache`; returns the base URL.
async fn serve(config: &str, cache: &TokenCache) -> String {
    let config = ServeConfig::parse(config).unwrap();
    let sidecar = Sidecar::builder(config)
        .metrics(metrics())
        .profile(
            "gw",
            cache,
            &TokenRequest::builder().scope("orders.read").build(),
        )
        .secret(Secret::new("sidecar-secret"))
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

/// An upstream that answers with the bearer token it got.
async fn echo() -> Upstream {
    Upstream::start_with(|seen: Seen| async move {
        Response::new(Full::new(Bytes::from(
            seen.bearer().unwrap_or_default().to_owned(),
        )))
    })
    .await
}

fn route(upstream: &Upstream, extra: &str) -> String {
    format!(
        "[[serve.routes]]\nprefix = \"/orders/\"\nupstream = \"{}\"\nprofile = \"gw\"\nmode = \"exchange\"\naudience = \"{AUDIENCE}\"\nscopes = [\"orders.read\"]\n{extra}\n",
        upstream.url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sidecars_on_one_redis_send_each_caller_their_own_token_exchanged_once() {
    let Some(idp) = Idp::shared() else { return };
    let Some(redis) = RedisServer::private() else {
        return;
    };
    const N: usize = 300;
    let logs = logs();
    let tokens = idp.subject_tokens("gw-fleet", N, 3600);
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("exchange-key");
    std::fs::write(&key_file, [5u8; 32]).unwrap();
    let upstream = echo().await;
    let config = format!(
        "[serve.exchange]\nkey_file = \"{}\"\nrate_per_second = 0\n{}",
        key_file.display(),
        route(&upstream, "")
    );
    let mut bases = Vec::new();
    for _ in 0..2 {
        let store = RedisStore::connect_lazy(
            RedisConfig::new(redis.url())
                .with_key_prefix("gw")
                .with_encryption(Keyring::new(EncryptionKey::from_bytes([3u8; 32])))
                .with_command_timeout(Duration::from_secs(5)),
        )
        .unwrap();
        let cache = TokenCache::builder(credential(idp)).store(store).build();
        bases.push(serve(&config, &cache).await);
    }
    let client = reqwest::Client::new();
    for pass in 0..2 {
        for (i, subject) in tokens.iter().enumerate() {
            let base = &bases[(i + pass) % 2];
            let r = client
                .get(format!("{base}/orders/list"))
                .bearer_auth(subject)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
            let sent = r.text().await.unwrap();
            assert_ne!(&sent, subject, "the subject token went upstream");
            let c = claims(&sent);
            assert_eq!(c["sub"], format!("gw-fleet-{i}"), "another caller's token");
            assert_eq!(c["aud"], AUDIENCE);
        }
        // Each subject exchanged once, by whichever sidecar asked first;
        // the other found it in Redis, and the second pass hit.
        assert_eq!(idp.exchange_counts("gw-fleet-").0, N as u64, "pass {pass}");
    }
    assert_eq!(idp.exchange_counts("gw-fleet-").2, 1);
    for s in upstream.seen() {
        assert!(!tokens.contains(&s.bearer().unwrap_or_default().to_owned()));
    }
    // Exchanges and hits counted by outcome; the route's requests in the
    // gateway's counters and histogram like any route's.
    let metrics = client
        .get(format!("{}/metrics", bases[0]))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("# HELP tokencache_exchanges_total"),
        "{metrics}"
    );
    for wanted in [
        "tokencache_exchanges_total{",
        "tokencache_gateway_requests_total{",
        "tokencache_gateway_request_duration_seconds_bucket{",
    ] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with(wanted) && l.contains("route=\"/orders/\"")),
            "{wanted}: {metrics}"
        );
    }
    // The exchanges' IdP calls are timed under the route's exchange cache
    // (its own name), never as an `unnamed` profile.
    assert!(
        metrics.lines().any(
            |l| l.starts_with("tokencache_idp_request_duration_seconds_count{")
                && l.contains("profile=\"gw exchange /orders/\"")
        ),
        "{metrics}"
    );
    assert!(!metrics.contains("profile=\"unnamed\""), "{metrics}");
    for outcome in ["hit", "exchanged"] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("tokencache_exchanges_total{")
                    && l.contains(&format!("outcome=\"{outcome}\""))),
            "{outcome}: {metrics}"
        );
    }
    // No subject token in any log event (the audit events and the access
    // log included).
    let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(
        text.contains("token exchange"),
        "the audit events were captured"
    );
    assert!(
        text.lines()
            .any(|l| l.contains("tokencache::access") && l.contains("/orders/")),
        "the exchange route's requests are in the access log"
    );
    for t in &tokens {
        assert!(
            !text.contains(t.rsplit('.').next().unwrap()),
            "a subject token was logged"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_subjects_get_401_and_a_garbage_storm_gets_429_with_bounded_idp_calls() {
    let Some(idp) = Idp::private() else { return };
    let upstream = echo().await;
    let cache = TokenCache::builder(credential(&idp)).build();
    let base = serve(
        &format!(
            "[serve]\n{}",
            route(&upstream, "exchange_rate_per_second = 2")
        ),
        &cache,
    )
    .await;
    let before = idp.token_requests();
    let client = reqwest::Client::new();
    let expired = idp.subject_tokens("gw-expired", 1, -60);
    for auth in [
        None,
        Some("Basic abc"),
        Some(&*format!("Bearer {}", expired[0])),
        Some("Bearer a.b.c"),
    ] {
        let mut req = client.get(format!("{base}/orders/x"));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401, "{auth:?}");
        assert_eq!(
            r.headers()["www-authenticate"],
            "Bearer error=\"invalid_token\"",
            "{auth:?}"
        );
    }
    assert_eq!(idp.token_requests(), before, "refused before any IdP call");

    let mut statuses = Vec::new();
    for i in 0..30 {
        let r = client
            .get(format!("{base}/orders/x"))
            .bearer_auth(format!("garbage-{i}"))
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            let after: u64 = r.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!(after >= 1);
        }
        statuses.push(r.status());
    }
    let rejected = statuses
        .iter()
        .filter(|s| **s == StatusCode::UNAUTHORIZED)
        .count();
    let limited = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!(rejected + limited, 30, "{statuses:?}");
    assert!(limited > 0, "{statuses:?}");
    assert_eq!(idp.exchange_counts("none").3, rejected as u64);
    assert!(upstream.seen().is_empty(), "nothing was forwarded");

    // The same rejected subject again: refused locally (negative cache).
    let calls = idp.token_requests();
    let r = client
        .get(format!("{base}/orders/x"))
        .bearer_auth("garbage-0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(idp.token_requests(), calls);

    // Outcomes are counted, with bounded labels and no subject material.
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for outcome in [
        "invalid_subject",
        "rejected",
        "rate_limited",
        "negative_cached",
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with("tokencache_exchanges_total{")
                    && l.contains("route=\"/orders/\"")
                    && l.contains(&format!("outcome=\"{outcome}\""))),
            "{outcome}: {text}"
        );
    }
    assert!(!text.contains("garbage-"), "subject material in metrics");
    assert!(!text.contains(&expired[0]), "subject material in metrics");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_401_re_exchanges_once() {
    let Some(idp) = Idp::shared() else { return };
    // Rejects the first token it sees for each user.
    let refused = Arc::new(Mutex::new(HashSet::<String>::new()));
    let upstream = Upstream::start_with(move |seen: Seen| {
        let refused = Arc::clone(&refused);
        async move {
            let token = seen.bearer().unwrap_or_default().to_owned();
            let sub = claims(&token)["sub"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            if refused.lock().unwrap().insert(sub) {
                let mut r = Response::new(Full::new(Bytes::new()));
                *r.status_mut() = StatusCode::UNAUTHORIZED;
                r.headers_mut().insert(
                    "www-authenticate",
                    "Bearer error=\"invalid_token\"".parse().unwrap(),
                );
                return r;
            }
            Response::new(Full::new(Bytes::from(token)))
        }
    })
    .await;
    let cache = TokenCache::builder(credential(idp)).build();
    let base = serve(&format!("[serve]\n{}", route(&upstream, "")), &cache).await;
    let tokens = idp.subject_tokens("gw-retry", 1, 3600);
    let r = reqwest::Client::new()
        .get(format!("{base}/orders/x"))
        .bearer_auth(&tokens[0])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = upstream.seen();
    assert_eq!(seen.len(), 2, "one retry");
    assert_ne!(seen[0].bearer(), seen[1].bearer(), "a new exchange");
    assert_eq!(idp.exchange_counts("gw-retry-").0, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exchange_endpoint_is_guarded_like_v1_token() {
    let Some(idp) = Idp::shared() else { return };
    let cache = TokenCache::builder(credential(idp)).build();
    let base = serve(
        "[serve]\n[serve.exchange]\ngrant = \"jwt-bearer\"\n",
        &cache,
    )
    .await;
    let tokens = idp.subject_tokens("gw-endpoint", 1, 3600);
    let client = reqwest::Client::new();
    let url = format!("{base}/v1/token/exchange");
    let form = format!(
        "subject_token={}&profile=gw&audience=https%3A%2F%2Fapi&scope=orders.read",
        tokens[0]
    );
    let send = |headers: &[(&str, &str)], body: String| {
        let mut req = client.post(&url).body(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send()
    };
    let good = [
        ("metadata", "true"),
        ("x-identity-header", "sidecar-secret"),
    ];
    let r = send(&good[..1], form.clone()).await.unwrap();
    assert_eq!(r.status(), 401, "no secret");
    let r = send(&good[1..], form.clone()).await.unwrap();
    assert_eq!(r.status(), 400, "no Metadata");
    let r = send(
        &[good[0], good[1], ("x-forwarded-for", "10.0.0.1")],
        form.clone(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 403, "forwarded");

    let r = send(&good, form).await.unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    let token = v["access_token"].as_str().unwrap();
    assert_eq!(claims(token)["sub"], "gw-endpoint-0");
    assert_eq!(claims(token)["aud"], "https://api");

    let json = serde_json::json!({
        "subject_token": tokens[0], "profile": "gw", "audience": "https://api", "scopes": ["orders.read"],
    });
    let r = send(
        &[good[0], good[1], ("content-type", "application/json")],
        json.to_string(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(v["access_token"].as_str().unwrap(), token, "the cached one");
    assert_eq!(v["from_cache"], true);

    let r = send(&good, "profile=gw&subject_token=expired.x.y".into())
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(idp.exchange_counts("gw-endpoint-").0, 1);

    // Counted as the token endpoints are, and by exchange outcome.
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for (family, labels) in [
        (
            "tokencache_endpoint_requests_total{",
            "endpoint=\"exchange\"",
        ),
        (
            "tokencache_exchanges_total{",
            "route=\"/v1/token/exchange\"",
        ),
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(family) && l.contains(labels)),
            "{family}{labels}: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_route_in_exchange_mode_sends_each_caller_their_own_exchanged_token() {
    let Some(idp) = Idp::shared() else { return };
    let upstream = echo().await;
    let cache = TokenCache::builder(credential(idp)).build();
    let base = serve(
        &format!(
            "[serve]\n[[serve.routes]]\nhost = \"orders.internal\"\nupstream = \"{}\"\nprofile = \"gw\"\n\
             mode = \"exchange\"\naudience = \"{AUDIENCE}\"\nscopes = [\"orders.read\"]\n",
            upstream.url()
        ),
        &cache,
    )
    .await;
    let tokens = idp.subject_tokens("gw-host", 2, 3600);
    let client = reqwest::Client::new();
    for (i, subject) in tokens.iter().enumerate() {
        let r = client
            .get(format!("{base}/list"))
            .header("host", "orders.internal")
            .bearer_auth(subject)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let sent = r.text().await.unwrap();
        assert_ne!(&sent, subject, "the subject token went upstream");
        assert_eq!(claims(&sent)["sub"], format!("gw-host-{i}"));
        assert_eq!(claims(&sent)["aud"], AUDIENCE);
    }
    // No caller token: refused before anything is forwarded.
    let r = client
        .get(format!("{base}/list"))
        .header("host", "orders.internal")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(upstream.seen().len(), 2);
    assert_eq!(idp.exchange_counts("gw-host-").0, 2);
    // The route's audience and scopes are its callers' exchanges, not a
    // token of the profile's own: nothing prefetched or reported for it.
    let ready = client
        .get(format!("{base}/readyz"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!ready.contains("routes"), "{ready}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dpop_profile_s_exchanges_are_bound_to_its_key_and_sent_with_a_proof() {
    dpop_exchange("", "gw-dpop-tx").await;
}

/// The same with Entra's on-behalf-of grant (jwt-bearer): its token request
/// carries the proof too (issue 21: every grant).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dpop_profile_s_jwt_bearer_exchanges_are_bound_to_its_key_too() {
    dpop_exchange("exchange_grant = \"jwt-bearer\"\n", "gw-dpop-obo").await;
}

async fn dpop_exchange(extra: &str, prefix: &str) {
    use token_http::{DpopAlgorithm, DpopKey};
    let Some(idp) = Idp::shared() else { return };
    // Answers with the Authorization and DPoP headers it got.
    let upstream = Upstream::start_with(|seen: Seen| async move {
        let auth = seen.header("authorization").unwrap_or_default().to_owned();
        let proof = seen.header("dpop").unwrap_or_default().to_owned();
        Response::new(Full::new(Bytes::from(format!("{auth}\n{proof}"))))
    })
    .await;
    let key = DpopKey::generate(DpopAlgorithm::Es256).unwrap();
    let client = reqwest::Client::builder()
        .pool_idle_timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let credential = OAuthCredential::client_credentials(idp.token_url(), "obo-client")
        .client_secret("obo-secret-value")
        .http_client(client)
        .dpop_key(key.clone())
        .build()
        .unwrap();
    let cache = TokenCache::builder(credential).build();
    let request = TokenRequest::builder()
        .scope("orders.read")
        .dpop_thumbprint(key.thumbprint())
        .build();
    let config = ServeConfig::parse(&format!("[serve]\n{}", route(&upstream, extra))).unwrap();
    let sidecar = Sidecar::builder(config)
        .metrics(metrics())
        .dpop_profile("gw", &cache, &request, key.clone())
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

    let tokens = idp.subject_tokens(prefix, 1, 3600);
    let r = reqwest::Client::new()
        .get(format!("{base}/orders/list"))
        .bearer_auth(&tokens[0])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    let (auth, proof) = text.split_once('\n').unwrap();
    let token = auth
        .strip_prefix("DPoP ")
        .unwrap_or_else(|| panic!("not a DPoP token: {auth}"));
    let c = claims(token);
    assert_eq!(c["sub"], format!("{prefix}-0"), "the caller's own token");
    assert_eq!(c["aud"], AUDIENCE);
    assert_eq!(
        c["cnf"]["jkt"],
        key.thumbprint(),
        "bound to the profile's key"
    );
    // A fresh proof for this token (ath) and the upstream's URL (htu).
    let p = claims(proof);
    let ath = URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA256,
        token.as_bytes(),
    ));
    assert_eq!(p["ath"], ath);
    assert_eq!(p["htm"], "GET");
    assert!(
        p["htu"].as_str().unwrap().ends_with("/list"),
        "{}",
        p["htu"]
    );
    assert_eq!(idp.exchange_counts(&format!("{prefix}-")).0, 1);
}
