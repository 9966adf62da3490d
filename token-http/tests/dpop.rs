//! DPoP (RFC 9449) against a real authorization server: oidc-provider with
//! `features.dPoP` (nonces required, replays refused) and the client
//! `dpop-client` registered with `dpop_bound_access_tokens: true`; see
//! `tests/idp/server.js`. A resource server written here after the RFC
//! (token-testkit's `DpopResourceServer`: signature, `htm`, `htu`, `ath`,
//! `jti`, `iat`, its own nonces, the token's `cnf.jkt` from the
//! authorization server) is reached through the reqwest middleware. Servers that misbehave on purpose (a Bearer answer,
//! a nonce demanded forever) are wiremock.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};
use token_core::{Credential, TokenCache, TokenRequest, TokenType};
use token_http::{DpopAlgorithm, DpopKey, OAuthCredential, TokenMiddleware};
use token_redis::{RedisConfig, RedisStore};
use token_testkit::{DpopResourceServer, Idp, RedisServer};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const CLIENT: &str = "dpop-client";
const SECRET: &str = "dpop-secret-value";

fn credential(idp: &Idp, key: &DpopKey) -> OAuthCredential {
    OAuthCredential::client_credentials(idp.token_url(), CLIENT)
        .client_secret(SECRET)
        .dpop_key(key.clone())
        .build()
        .unwrap()
}

fn bound(key: &DpopKey) -> TokenRequest {
    TokenRequest::builder()
        .scope("orders.read")
        .dpop_thumbprint(key.thumbprint())
        .build()
}

/// A test route of the IdP: `POST path` with a form or JSON body.
async fn idp_post(idp: &Idp, path: &str, body: String, content_type: &str) -> Value {
    reqwest::Client::new()
        .post(format!("{}{path}", idp.issuer()))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .map(|b| serde_json::from_slice(&b).unwrap())
        .unwrap()
}

async fn introspect(idp: &Idp, token: &str) -> Value {
    let body = format!("token={token}");
    idp_post(
        idp,
        "/__test/dpop-introspect",
        body,
        "application/x-www-form-urlencoded",
    )
    .await
}

async fn advance_idp_clock(idp: &Idp, seconds: u64) {
    let v = idp_post(
        idp,
        "/__test/dpop-clock",
        json!({ "advance": seconds }).to_string(),
        "application/json",
    )
    .await;
    assert!(v["offset_seconds"].is_number(), "{v}");
}

async fn replays(idp: &Idp) -> u64 {
    reqwest::get(format!("{}/__test/dpop-replays", idp.issuer()))
        .await
        .unwrap()
        .bytes()
        .await
        .map(|b| serde_json::from_slice::<Value>(&b).unwrap())
        .unwrap()["count"]
        .as_u64()
        .unwrap()
}

#[tokio::test]
async fn the_token_is_bound_to_our_key_for_es256_and_ed25519() {
    let Some(idp) = Idp::private() else { return };
    for alg in [DpopAlgorithm::Es256, DpopAlgorithm::EdDsa] {
        let key = DpopKey::generate(alg).unwrap();
        let credential = credential(&idp, &key);
        let before = idp.token_requests();
        let token = credential
            .fetch(&bound(&key), None)
            .await
            .unwrap_or_else(|e| panic!("{alg}: {e}"));
        assert_eq!(*token.token_type(), TokenType::DPoP);
        // The first call of a key has no nonce: the server answers
        // use_dpop_nonce with one, and exactly one retry follows.
        assert_eq!(idp.token_requests() - before, 2, "{alg}");
        let record = introspect(&idp, token.secret().expose()).await;
        assert_eq!(record["active"], true, "{record}");
        assert_eq!(record["cnf"]["jkt"], key.thumbprint(), "{alg}: {record}");
        // The nonce is kept: the next fetch is one request.
        let before = idp.token_requests();
        credential.fetch(&bound(&key), None).await.unwrap();
        assert_eq!(idp.token_requests() - before, 1, "{alg}");
    }
}

#[tokio::test]
async fn a_request_without_a_proof_is_refused_by_the_server() {
    // The control for the test above: the registration really demands DPoP.
    let Some(idp) = Idp::shared() else { return };
    let plain = OAuthCredential::client_credentials(idp.token_url(), CLIENT)
        .client_secret(SECRET)
        .build()
        .unwrap();
    let request = TokenRequest::builder().scope("orders.read").build();
    let e = plain.fetch(&request, None).await.unwrap_err();
    assert!(!e.is_transient(), "{e}");
}

#[tokio::test]
async fn the_server_refuses_a_replayed_proof_and_we_never_send_one() {
    let Some(idp) = Idp::private() else { return };
    let key = DpopKey::generate(DpopAlgorithm::Es256).unwrap();
    let credential = credential(&idp, &key);
    // Learn the nonce, then send one proof twice by hand.
    credential.fetch(&bound(&key), None).await.unwrap();
    let nonce = key
        .nonce(token_http::DpopRole::AuthorizationServer, &idp.token_url())
        .expect("a nonce was learned");
    let proof = key
        .proof(
            "POST",
            &idp.token_url(),
            SystemTime::now(),
            Some(&nonce),
            None,
        )
        .unwrap();
    let send = || {
        reqwest::Client::new()
            .post(idp.token_url())
            .basic_auth(CLIENT, Some(SECRET))
            .header("dpop", proof.expose())
            .form(&[
                ("grant_type", "client_credentials"),
                ("scope", "orders.read"),
            ])
            .send()
    };
    assert_eq!(send().await.unwrap().status(), 200);
    let second = send().await.unwrap();
    assert_eq!(second.status(), 400);
    let body: Value = serde_json::from_slice(&second.bytes().await.unwrap()).unwrap();
    assert_eq!(body["error"], "invalid_grant", "{body}");
    let refused = replays(&idp).await;
    assert_eq!(refused, 1);
    // Ours: many fetches, concurrent too, none refused as a replay.
    let credential = Arc::new(credential);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (credential, request) = (Arc::clone(&credential), bound(&key));
        tasks.push(tokio::spawn(async move {
            credential.fetch(&request, None).await.map(|_| ())
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(replays(&idp).await, refused);
}

#[tokio::test]
async fn nonces_from_successful_answers_carry_us_across_rotations() {
    // oidc-provider rotates its nonce every 60 s and accepts one for about
    // five minutes; its clock is moved forward instead of waited for.
    let Some(idp) = Idp::private() else { return };
    let key = DpopKey::generate(DpopAlgorithm::EdDsa).unwrap();
    let credential = credential(&idp, &key);
    credential.fetch(&bound(&key), None).await.unwrap();
    let mut seen = HashSet::new();
    seen.insert(key.nonce(token_http::DpopRole::AuthorizationServer, &idp.token_url()));
    // Ten rotations, 10 minutes of server time: each fetch is one request,
    // because each 200 brings the next nonce and it is used.
    for step in 0..10 {
        advance_idp_clock(&idp, 60).await;
        let before = idp.token_requests();
        let token = credential.fetch(&bound(&key), None).await.unwrap();
        assert_eq!(*token.token_type(), TokenType::DPoP);
        assert_eq!(idp.token_requests() - before, 1, "rotation {step}");
        seen.insert(key.nonce(token_http::DpopRole::AuthorizationServer, &idp.token_url()));
    }
    assert!(seen.len() >= 10, "the nonce rotated: {}", seen.len());
    // A nonce that is too old (the process slept): one use_dpop_nonce, one
    // retry with the nonce it brings.
    advance_idp_clock(&idp, 600).await;
    let before = idp.token_requests();
    credential.fetch(&bound(&key), None).await.unwrap();
    assert_eq!(idp.token_requests() - before, 2);
}

#[tokio::test]
async fn a_rotated_key_is_a_new_partition_with_a_new_token() {
    let Some(idp) = Idp::shared() else { return };
    let old = DpopKey::generate(DpopAlgorithm::Es256).unwrap();
    let new = DpopKey::generate(DpopAlgorithm::Es256).unwrap();
    let credential = OAuthCredential::client_credentials(idp.token_url(), CLIENT)
        .client_secret(SECRET)
        .dpop_key(old.clone())
        .dpop_key(new.clone())
        .build()
        .unwrap();
    let cache = TokenCache::builder(credential).build();
    let plain = TokenRequest::builder().scope("orders.read").build();
    let keys: HashSet<_> = [&plain, &bound(&old), &bound(&new)]
        .iter()
        .map(|r| cache.cache_key(r).to_string())
        .collect();
    assert_eq!(keys.len(), 3, "Bearer, old key and new key share no key");
    let a = cache.get_token(&bound(&old)).await.unwrap();
    let b = cache.get_token(&bound(&new)).await.unwrap();
    assert!(!a.to_access_token().same_secret(&b.to_access_token()));
    assert_eq!(
        introspect(idp, a.secret().expose()).await["cnf"]["jkt"],
        old.thumbprint()
    );
    assert_eq!(
        introspect(idp, b.secret().expose()).await["cnf"]["jkt"],
        new.thumbprint()
    );
    // A DPoP credential refuses an unbound request rather than cache a
    // DPoP token under a Bearer key; a key it does not hold is refused.
    let e = cache.get_token(&plain).await.unwrap_err();
    assert!(e.to_string().contains("dpop_thumbprint"), "{e}");
    let stranger = DpopKey::generate(DpopAlgorithm::EdDsa).unwrap();
    let e = cache.get_token(&bound(&stranger)).await.unwrap_err();
    assert!(e.to_string().contains(stranger.thumbprint()), "{e}");
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "token-http-dpop-{name}-{}-{:?}",
        std::process::id(),
        SystemTime::now()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn two_processes_share_tokens_through_redis_with_one_key_file() {
    let Some(idp) = Idp::private() else { return };
    let Some(redis) = RedisServer::private() else {
        return;
    };
    let dir = temp_dir("redis");
    let key_file = dir.join("dpop.jwk");
    // A P-256 private JWK, as node's `crypto` (or `jose`) writes one.
    std::fs::write(&key_file, include_str!("keys/dpop-ec-test-only.jwk")).unwrap();
    let prefix = format!("dpop-{}", std::process::id());
    let config = || {
        RedisConfig::new(redis.url())
            .with_plaintext()
            .with_key_prefix(&prefix)
            .with_command_timeout(Duration::from_secs(2))
    };
    let instance = |store: RedisStore| {
        let key = DpopKey::from_file(&key_file).unwrap();
        let cache = TokenCache::builder(credential(&idp, &key))
            .store(store)
            .build();
        (cache, key)
    };
    let (first, key1) = instance(RedisStore::connect(config()).await.unwrap());
    let (second, key2) = instance(RedisStore::connect(config()).await.unwrap());
    assert_eq!(key1.thumbprint(), key2.thumbprint());
    let a = first.get_token(&bound(&key1)).await.unwrap();
    let before = idp.token_requests();
    let b = second.get_token(&bound(&key2)).await.unwrap();
    assert_eq!(idp.token_requests(), before, "the second one read Redis");
    assert!(a.to_access_token().same_secret(&b.to_access_token()));
    assert_eq!(
        introspect(&idp, b.secret().expose()).await["cnf"]["jkt"],
        key2.thumbprint()
    );
    // What Redis holds is the token, never the key.
    let jwk: Value = serde_json::from_str(include_str!("keys/dpop-ec-test-only.jwk")).unwrap();
    let d_text = jwk["d"].as_str().unwrap();
    let d_raw = URL_SAFE_NO_PAD.decode(d_text).unwrap();
    let client = token_redis::redis::Client::open(redis.url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = token_redis::redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(!keys.is_empty());
    for k in keys {
        let kind: String = token_redis::redis::cmd("TYPE")
            .arg(&k)
            .query_async(&mut con)
            .await
            .unwrap();
        if kind != "string" {
            continue;
        }
        let value: Vec<u8> = token_redis::redis::cmd("GET")
            .arg(&k)
            .query_async(&mut con)
            .await
            .unwrap();
        let contains = |needle: &[u8]| value.windows(needle.len()).any(|w| w == needle);
        assert!(
            !contains(d_text.as_bytes()) && !contains(&d_raw),
            "the private key is in Redis under {k}"
        );
        assert!(!k.contains(d_text));
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// A token endpoint that answers every request with `body` (and a nonce).
async fn fake_token_endpoint(status: u16, body: Value) -> (MockServer, Arc<AtomicUsize>) {
    let server = MockServer::start().await;
    let count = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&count);
    Mock::given(method("POST"))
        .respond_with(move |request: &Request| {
            let n = seen.fetch_add(1, Ordering::SeqCst);
            assert!(request.headers.contains_key("dpop"), "a proof is sent");
            ResponseTemplate::new(status)
                .insert_header("dpop-nonce", format!("nonce-{n}").as_str())
                .set_body_json(&body)
        })
        .mount(&server)
        .await;
    (server, count)
}

#[tokio::test]
async fn a_bearer_answer_to_a_dpop_request_is_an_error_not_a_downgrade() {
    let (server, _) = fake_token_endpoint(
        200,
        json!({"access_token": "bearer-token-d0wngrade", "token_type": "Bearer", "expires_in": 600}),
    )
    .await;
    let key = DpopKey::generate(DpopAlgorithm::Es256).unwrap();
    let credential = OAuthCredential::client_credentials(format!("{}/token", server.uri()), "c")
        .client_secret("s")
        .dpop_key(key.clone())
        .build()
        .unwrap();
    let e = credential.fetch(&bound(&key), None).await.unwrap_err();
    let text = format!("{e} {e:?}");
    assert!(text.contains("Bearer") && text.contains("DPoP"), "{text}");
    assert!(!text.contains("d0wngrade"), "{text}");
    assert!(!e.is_transient());
}

#[tokio::test]
async fn a_server_that_keeps_asking_for_a_nonce_gets_one_retry() {
    let (server, count) = fake_token_endpoint(
        400,
        json!({"error": "use_dpop_nonce", "error_description": "Authorization server requires nonce in DPoP proof"}),
    )
    .await;
    let key = DpopKey::generate(DpopAlgorithm::EdDsa).unwrap();
    let credential = OAuthCredential::client_credentials(format!("{}/token", server.uri()), "c")
        .client_secret("s")
        .dpop_key(key.clone())
        .build()
        .unwrap();
    let e = credential.fetch(&bound(&key), None).await.unwrap_err();
    assert_eq!(count.load(Ordering::SeqCst), 2, "one request and one retry");
    assert_eq!(e.code(), Some("use_dpop_nonce"), "{e}");
    // Every proof had its own jti, and the retry carried the nonce given.
    let requests = server.received_requests().await.unwrap();
    let claims: Vec<Value> = requests
        .iter()
        .map(|r| proof_parts(r.headers["dpop"].to_str().unwrap()).1)
        .collect();
    assert_ne!(claims[0]["jti"], claims[1]["jti"]);
    assert_eq!(claims[0].get("nonce"), None);
    assert_eq!(claims[1]["nonce"], "nonce-0");
    assert_eq!(claims[1]["htu"], format!("{}/token", server.uri()));
}

fn b64json(part: &str) -> Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

/// A proof's header and claims (unverified).
fn proof_parts(proof: &str) -> (Value, Value) {
    let mut parts = proof.split('.');
    (
        b64json(parts.next().unwrap()),
        b64json(parts.next().unwrap()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_middleware_satisfies_a_resource_server_that_demands_its_own_nonces() {
    let Some(idp) = Idp::shared() else { return };
    let rs = DpopResourceServer::start(format!("{}/__test/dpop-introspect", idp.issuer())).await;
    let key = DpopKey::generate(DpopAlgorithm::Es256).unwrap();
    let cache = TokenCache::builder(credential(idp, &key)).build();
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(TokenMiddleware::new(&cache, &bound(&key)).dpop(key.clone()))
        .build();
    // The first call: use_dpop_nonce from the resource server, one retry.
    let url = format!("{}/v1/orders?page=2#top", rs.url());
    let r = client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200, "{:?}", rs.refusals());
    assert_eq!(rs.nonce_challenges(), 1);
    // Then one request per call, each with its own proof.
    for i in 0..5 {
        let r = client
            .post(format!("{}/v1/orders/{i}", rs.url()))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{:?}", rs.refusals());
    }
    assert_eq!(rs.nonce_challenges(), 1);
    // The resource server rotates its nonce: one more retry.
    rs.rotate_nonce("rs-nonce-2");
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    assert_eq!(rs.nonce_challenges(), 2);
    assert_eq!(rs.served(), 7);
    assert!(rs.refusals().is_empty(), "{:?}", rs.refusals());
    // Nonces are kept per role: the resource server's is not offered to
    // the authorization server, and vice versa.
    assert_eq!(
        key.nonce(token_http::DpopRole::ResourceServer, &url)
            .as_deref(),
        Some("rs-nonce-2")
    );
    assert!(key
        .nonce(token_http::DpopRole::ResourceServer, &idp.token_url())
        .is_none());
    assert!(key
        .nonce(token_http::DpopRole::AuthorizationServer, &url)
        .is_none());
}

#[tokio::test]
async fn the_middleware_refuses_a_dpop_token_without_a_key() {
    let Some(idp) = Idp::shared() else { return };
    let key = DpopKey::generate(DpopAlgorithm::Es256).unwrap();
    let cache = TokenCache::builder(credential(idp, &key)).build();
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(TokenMiddleware::new(&cache, &bound(&key)))
        .build();
    let e = client
        .get("http://127.0.0.1:9/never-sent")
        .send()
        .await
        .unwrap_err();
    assert!(format!("{e:#}").contains("no DPoP key"), "{e:#}");
}

#[test]
fn key_files_load_as_pem_or_jwk_and_errors_name_the_file() {
    let keys = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/keys");
    let jwk = DpopKey::from_file(keys.join("dpop-ec-test-only.jwk")).unwrap();
    assert_eq!(jwk.algorithm(), DpopAlgorithm::Es256);
    let ed = DpopKey::from_file(keys.join("dpop-ed25519-test-only.pem")).unwrap();
    assert_eq!(ed.algorithm(), DpopAlgorithm::EdDsa);
    let sec1 = DpopKey::from_file(keys.join("dpop-ec-sec1-test-only.pem")).unwrap();
    assert_eq!(sec1.algorithm(), DpopAlgorithm::Es256);
    // The PKCS#8 P-256 key of private_key_jwt works too.
    DpopKey::from_file(keys.join("ec-test-only.pem")).unwrap();
    // The same key read twice has the same thumbprint; another key not.
    let again = DpopKey::from_file(keys.join("dpop-ec-test-only.jwk")).unwrap();
    assert_eq!(jwk.thumbprint(), again.thumbprint());
    assert_ne!(jwk.thumbprint(), sec1.thumbprint());

    let dir = temp_dir("files");
    let rsa = keys.join("rsa-test-only.pem");
    let missing = dir.join("missing.pem");
    let garbage = dir.join("garbage.jwk");
    std::fs::write(
        &garbage,
        r#"{"kty":"EC","crv":"P-256","d":"c2VjcmV0LWQtdmFsdWU"}"#,
    )
    .unwrap();
    let empty = dir.join("empty.pem");
    std::fs::write(&empty, "\n").unwrap();
    for path in [rsa, missing, garbage, empty] {
        let e = DpopKey::from_file(&path).unwrap_err();
        let text = format!("{e} {e:?}");
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(!text.contains("c2VjcmV0"), "{text}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Captures log lines, to check that no secret reaches them.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn no_key_proof_or_token_reaches_debug_errors_or_logs() {
    let Some(idp) = Idp::shared() else { return };
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let jwk_text = include_str!("keys/dpop-ec-test-only.jwk");
    let d = serde_json::from_str::<Value>(jwk_text).unwrap()["d"]
        .as_str()
        .unwrap()
        .to_owned();
    let key = DpopKey::from_jwk(jwk_text).unwrap();
    let credential = credential(idp, &key);
    let mut seen = vec![format!("{key:?} {credential:?}")];
    let token = credential.fetch(&bound(&key), None).await.unwrap();
    seen.push(format!("{token:?}"));
    // A resource server that refuses everything, quoting what it got.
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(|r: &Request| {
            let echo = format!("{:?}", r.headers);
            ResponseTemplate::new(401)
                .insert_header("www-authenticate", r#"DPoP error="invalid_token""#)
                .set_body_string(echo)
        })
        .mount(&server)
        .await;
    let cache = TokenCache::builder(credential).build();
    let middleware = TokenMiddleware::new(&cache, &bound(&key)).dpop(key.clone());
    seen.push(format!("{middleware:?}"));
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(middleware)
        .build();
    let r = client.get(server.uri()).send().await.unwrap();
    seen.push(format!("{r:?}"));
    let requests = server.received_requests().await.unwrap();
    let proofs: Vec<String> = requests
        .iter()
        .map(|r| r.headers["dpop"].to_str().unwrap().to_owned())
        .collect();
    let tokens: Vec<String> = requests
        .iter()
        .map(|r| r.headers["authorization"].to_str().unwrap()["DPoP ".len()..].to_owned())
        .collect();
    let stranger = DpopKey::generate(DpopAlgorithm::Es256).unwrap();
    let e = cache.get_token(&bound(&stranger)).await.unwrap_err();
    seen.push(format!("{e} {e:?}"));
    seen.push(String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned());
    let all = seen.join("\n");
    assert!(!proofs.is_empty() && !tokens.is_empty());
    assert!(!all.contains(&d), "the private key leaked");
    for p in &proofs {
        assert!(!all.contains(p.as_str()), "a proof leaked");
    }
    for t in tokens
        .iter()
        .chain([token.secret().expose().to_owned()].iter())
    {
        assert!(!all.contains(t.as_str()), "a token leaked");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tower_layer_sends_proofs_and_learns_the_resource_server_s_nonce() {
    use tower::{Layer as _, ServiceExt as _};
    let Some(idp) = Idp::shared() else { return };
    let rs = DpopResourceServer::start(format!("{}/__test/dpop-introspect", idp.issuer())).await;
    let key = DpopKey::generate(DpopAlgorithm::EdDsa).unwrap();
    let cache = TokenCache::builder(credential(idp, &key)).build();
    // A tower client over reqwest, standing in for hyper or tonic.
    let http = reqwest::Client::new();
    let client = tower::service_fn(move |req: http::Request<String>| {
        let http = http.clone();
        async move {
            let req = reqwest::Request::try_from(req.map(reqwest::Body::from))?;
            let resp = http.execute(req).await?;
            let mut out = http::Response::builder().status(resp.status());
            for (k, v) in resp.headers() {
                out = out.header(k, v);
            }
            Ok::<_, reqwest::Error>(out.body(()).unwrap())
        }
    });
    let layer = token_http::AddTokenLayer::new(&cache, &bound(&key)).dpop(key.clone());
    let call = |path: &str| {
        let req = http::Request::get(format!("{}{path}", rs.url()))
            .body(String::new())
            .unwrap();
        layer.layer(client.clone()).oneshot(req)
    };
    // No resend by the layer itself: the first answer is the nonce
    // challenge, whose nonce the next request carries.
    let first = call("/a").await.unwrap();
    assert_eq!(first.status(), 401);
    assert_eq!(rs.nonce_challenges(), 1);
    for path in ["/b", "/c?x=1"] {
        let r = call(path).await.unwrap();
        assert_eq!(r.status(), 200, "{:?}", rs.refusals());
    }
    assert_eq!(rs.served(), 2);
    assert!(rs.refusals().is_empty(), "{:?}", rs.refusals());
}

#[tokio::test]
async fn refresh_token_and_token_exchange_grants_carry_a_proof_too() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(|r: &Request| {
            let body = String::from_utf8_lossy(&r.body).into_owned();
            let proof = r.headers.get("dpop").and_then(|v| v.to_str().ok());
            let ok = proof.is_some_and(|p| {
                let (header, claims) = proof_parts(p);
                header["typ"] == "dpop+jwt"
                    && claims["htm"] == "POST"
                    && claims.get("ath").is_none()
            });
            if !ok {
                return ResponseTemplate::new(400)
                    .set_body_json(json!({"error": "invalid_dpop_proof"}));
            }
            ResponseTemplate::new(200).set_body_json(json!({
                "access_token": format!("at-for-{}", body.len()),
                "token_type": "DPoP",
                "expires_in": 600,
            }))
        })
        .mount(&server)
        .await;
    let key = DpopKey::generate(DpopAlgorithm::Es256).unwrap();
    let url = format!("{}/token", server.uri());
    let refresh = OAuthCredential::refresh_token(&url, "public-client", "rt-value")
        .dpop_key(key.clone())
        .build()
        .unwrap();
    let token = refresh.fetch(&bound(&key), None).await.unwrap();
    assert_eq!(*token.token_type(), TokenType::DPoP);
    let exchange = OAuthCredential::token_exchange(&url, "exchange-client")
        .client_secret("s")
        .dpop_key(key.clone())
        .build()
        .unwrap();
    let request = TokenRequest::builder()
        .scope("orders.read")
        .actor(token_core::Actor::Assertion(token_core::Secret::new(
            "subject-token",
        )))
        .dpop_thumbprint(key.thumbprint())
        .build();
    let token = exchange.fetch(&request, None).await.unwrap();
    assert_eq!(*token.token_type(), TokenType::DPoP);
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 2);
    let htus: Vec<Value> = requests
        .iter()
        .map(|r| proof_parts(r.headers["dpop"].to_str().unwrap()).1["htu"].clone())
        .collect();
    assert!(htus.iter().all(|h| *h == url.as_str()), "{htus:?}");
}

#[tokio::test]
async fn a_refresh_token_grant_gets_a_token_bound_to_our_key() {
    // oidc-provider's public `refresh-client`, its refresh token minted by
    // the test route; the redemption carries a proof (and its nonce).
    let Some(idp) = Idp::shared() else { return };
    let (refresh_token, _account) = idp.refresh_token();
    let key = DpopKey::generate(DpopAlgorithm::Es256).unwrap();
    let credential =
        OAuthCredential::refresh_token(idp.token_url(), "refresh-client", refresh_token)
            .dpop_key(key.clone())
            .build()
            .unwrap();
    let token = credential.fetch(&bound(&key), None).await.unwrap();
    assert_eq!(*token.token_type(), TokenType::DPoP);
    let record = introspect(idp, token.secret().expose()).await;
    assert_eq!(record["cnf"]["jkt"], key.thumbprint(), "{record}");
}
