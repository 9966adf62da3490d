//! Runs every program of `token-cache/examples/` against the test kit's
//! IdP (oidc-provider) and Redis. Each example is a `main` that reads its
//! settings from the environment and calls `run(&Config)`; this test
//! includes the same file and calls `run` with the kit's servers, so what
//! runs here is the example's own code. Without the servers the tests skip
//! loudly; under `CI` they fail (token-testkit's `skip_or_fail`).

#[allow(dead_code, unreachable_pub)]
#[path = "../examples/client_credentials_redis.rs"]
mod client_credentials_redis;

#[allow(dead_code, unreachable_pub)]
#[path = "../examples/hyper_service.rs"]
mod hyper_service;

#[allow(dead_code, unreachable_pub)]
#[path = "../examples/on_behalf_of.rs"]
mod on_behalf_of;

use token_cache::{Credential, EncryptionKey, OAuthCredential, TokenRequest};
use token_testkit::{redis_standalone, Idp, Upstream};

/// A client of the test IdP (`token-http/tests/idp/server.js`).
const CLIENT_ID: &str = "basic-client";
const CLIENT_SECRET: &str = "basic:secret%+/ ok~&=";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_redis_example_shares_one_encrypted_token_between_instances() {
    let Some(idp) = Idp::shared() else {
        return;
    };
    let Some((redis_url, _server)) = redis_standalone() else {
        return;
    };
    let key = EncryptionKey::generate().expect("a random key");
    let config = client_credentials_redis::Config {
        token_url: idp.token_url(),
        client_id: CLIENT_ID.into(),
        client_secret: CLIENT_SECRET.into(),
        scope: "orders.read".into(),
        redis_url,
        key_prefix: format!("example:{:x}:", token_cache::backend::random_u128()),
        keys: key.to_base64().to_string(),
    };
    let outcome = client_credentials_redis::run(&config).await.unwrap();
    assert_eq!(outcome.first_idp_calls, 1, "{outcome:?}");
    assert_eq!(outcome.second_idp_calls, 0, "{outcome:?}");
    assert!(outcome.same_token, "{outcome:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hyper_service_example_calls_downstream_with_one_cached_token() {
    let Some(idp) = Idp::shared() else {
        return;
    };
    let downstream = Upstream::start().await;
    let config = hyper_service::Config {
        token_url: idp.token_url(),
        client_id: CLIENT_ID.into(),
        client_secret: CLIENT_SECRET.into(),
        scope: "orders.read".into(),
        downstream_url: downstream.url(),
        requests: 5,
    };
    let outcome = hyper_service::run(&config).await.unwrap();
    assert_eq!(outcome.statuses, vec![200; 5], "{outcome:?}");
    assert_eq!(outcome.idp_calls, 1, "{outcome:?}");
    let seen = downstream.seen();
    assert_eq!(seen.len(), 5);
    let first = seen[0].bearer().expect("a bearer token downstream");
    assert!(seen.iter().all(|s| s.bearer() == Some(first)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_behalf_of_example_exchanges_once_per_user() {
    let Some(idp) = Idp::shared() else {
        return;
    };
    // Three callers' bearer tokens, as the API would receive them.
    let users = OAuthCredential::client_credentials(idp.token_url(), CLIENT_ID)
        .client_secret(CLIENT_SECRET)
        .build()
        .unwrap();
    let mut user_tokens = Vec::new();
    for _ in 0..3 {
        let request = TokenRequest::builder().scope("orders.read").build();
        let token = users.fetch(&request, None).await.unwrap();
        user_tokens.push(token.secret().expose().to_owned());
    }
    let config = on_behalf_of::Config {
        token_url: idp.token_url(),
        client_id: "exchange-client".into(),
        client_secret: "exchange-secret-value".into(),
        scope: "orders.read".into(),
        user_tokens,
    };
    let outcome = on_behalf_of::run(&config).await.unwrap();
    assert_eq!(outcome.requests, 9, "{outcome:?}");
    assert_eq!(outcome.idp_calls, 3, "one exchange per user: {outcome:?}");
    assert!(outcome.distinct_per_user, "{outcome:?}");
}
