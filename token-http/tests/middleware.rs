//! The reqwest middleware and the tower layer against a mock IdP and a mock
//! resource server (wiremock).

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::json;
use token_core::{TokenCache, TokenRequest};
use token_http::{AddTokenLayer, OAuthCredential, TokenMiddleware};
use tower::{Layer, ServiceExt};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const OLD: &str = "old-token-1111aaaa";
const NEW: &str = "new-token-2222bbbb";

/// An IdP that hands out `OLD` first, then `NEW` forever.
async fn idp() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"access_token": OLD, "token_type": "Bearer", "expires_in": 3600}),
        ))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"access_token": NEW, "token_type": "bearer", "expires_in": 3600}),
        ))
        .mount(&server)
        .await;
    server
}

async fn token_calls(idp: &MockServer) -> usize {
    idp.received_requests().await.unwrap_or_default().len()
}

fn cache(idp: &MockServer) -> TokenCache {
    let credential = OAuthCredential::client_credentials(format!("{}/token", idp.uri()), "c")
        .client_secret("client-secret-zzz")
        .build()
        .unwrap();
    TokenCache::builder(credential).build()
}

/// A resource server that rejects `OLD` as invalid and accepts `NEW`.
async fn resource() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(header("authorization", format!("Bearer {OLD}").as_str()))
        .respond_with(ResponseTemplate::new(401).insert_header(
            "www-authenticate",
            r#"Bearer realm="orders", error="invalid_token", error_description="The access token expired""#,
        ))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(header("authorization", format!("Bearer {NEW}").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_string("orders"))
        .mount(&server)
        .await;
    server
}

fn client(cache: &TokenCache, request: &TokenRequest) -> reqwest_middleware::ClientWithMiddleware {
    reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(TokenMiddleware::new(cache, request))
        .build()
}

#[tokio::test]
async fn middleware_sets_the_authorization_header_from_the_cache() {
    let idp = idp().await;
    let api = MockServer::start().await;
    Mock::given(method("GET"))
        .and(header("authorization", format!("Bearer {OLD}").as_str()))
        .respond_with(ResponseTemplate::new(200))
        .mount(&api)
        .await;
    let cache = cache(&idp);
    let client = client(
        &cache,
        &TokenRequest::builder().scope("orders.read").build(),
    );
    for _ in 0..10 {
        let response = client
            .get(format!("{}/orders", api.uri()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    assert_eq!(token_calls(&idp).await, 1);
}

#[tokio::test]
async fn a_401_invalid_token_invalidates_the_token_and_retries_once() {
    let idp = idp().await;
    let api = resource().await;
    let cache = cache(&idp);
    let client = client(&cache, &TokenRequest::new());
    let response = client
        .get(format!("{}/orders", api.uri()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "orders");
    assert_eq!(token_calls(&idp).await, 2);
    assert_eq!(cache.stats().invalidations, 1);
    assert_eq!(api.received_requests().await.unwrap().len(), 2);
}

#[tokio::test]
async fn fifty_concurrent_401s_for_one_old_token_cause_one_refresh() {
    let idp = idp().await;
    let api = resource().await;
    let cache = cache(&idp);
    let request = TokenRequest::new();
    // Everyone starts with the old token cached.
    assert_eq!(
        cache.get_token(&request).await.unwrap().secret().expose(),
        OLD
    );
    let client = client(&cache, &request);
    let url = format!("{}/orders", api.uri());
    let calls: Vec<_> = (0..50)
        .map(|_| {
            let client = client.clone();
            let url = url.clone();
            tokio::spawn(async move { client.get(url).send().await.map(|r| r.status().as_u16()) })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap(), 200);
    }
    assert_eq!(
        token_calls(&idp).await,
        2,
        "one initial fetch and one refresh"
    );
    assert_eq!(cache.stats().invalidations, 1);
}

#[tokio::test]
async fn a_403_insufficient_scope_invalidates_nothing() {
    let idp = idp().await;
    let api = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(403).insert_header(
            "www-authenticate",
            r#"Bearer error="insufficient_scope", scope="orders.write""#,
        ))
        .mount(&api)
        .await;
    let cache = cache(&idp);
    let client = client(&cache, &TokenRequest::new());
    for _ in 0..3 {
        let response = client.get(api.uri()).send().await.unwrap();
        assert_eq!(response.status(), 403);
    }
    assert_eq!(token_calls(&idp).await, 1);
    assert_eq!(cache.stats().invalidations, 0);
    assert_eq!(
        api.received_requests().await.unwrap().len(),
        3,
        "no retries"
    );
}

#[tokio::test]
async fn a_401_without_invalid_token_or_with_an_unclonable_body_is_returned_as_is() {
    let idp = idp().await;
    let api = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(401).insert_header("www-authenticate", r#"Bearer realm="x""#),
        )
        .mount(&api)
        .await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(401)
                .insert_header("www-authenticate", r#"Bearer error="invalid_token""#),
        )
        .mount(&api)
        .await;
    let cache = cache(&idp);
    let client = client(&cache, &TokenRequest::new());
    assert_eq!(client.get(api.uri()).send().await.unwrap().status(), 401);
    assert_eq!(cache.stats().invalidations, 0);

    // A streaming body cannot be cloned: the token is still invalidated, but
    // the request is not resent.
    let stream = futures_util::stream::once(async { Ok::<_, std::io::Error>(b"payload".to_vec()) });
    let response = client
        .post(api.uri())
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(cache.stats().invalidations, 1);
    assert_eq!(api.received_requests().await.unwrap().len(), 2);
}

#[tokio::test]
async fn token_failures_are_clear_and_never_contain_secrets() {
    let idp = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(401).set_body_json(
                json!({"error": "invalid_client", "error_description": "bad secret"}),
            ),
        )
        .mount(&idp)
        .await;
    let api = MockServer::start().await;
    let cache = cache(&idp);
    let e = client(&cache, &TokenRequest::new())
        .get(api.uri())
        .send()
        .await
        .unwrap_err();
    let text = format!("{e:#} {e:?}");
    assert!(text.contains("invalid_client"), "{text}");
    assert!(!text.contains("client-secret-zzz"), "{text}");
    assert_eq!(
        api.received_requests().await.unwrap().len(),
        0,
        "nothing sent without a token"
    );
}

#[tokio::test]
async fn tower_layer_sets_a_sensitive_header_and_invalidates_rejected_tokens() {
    let idp = idp().await;
    let cache = cache(&idp);
    let seen = Arc::new(AtomicUsize::new(0));
    let inner = {
        let seen = Arc::clone(&seen);
        tower::service_fn(move |req: http::Request<String>| {
            let seen = Arc::clone(&seen);
            async move {
                seen.fetch_add(1, Ordering::SeqCst);
                let auth = req.headers().get("authorization").cloned().unwrap();
                assert!(auth.is_sensitive());
                let mut response = http::Response::new(auth.to_str().unwrap().to_owned());
                if auth == format!("Bearer {OLD}").as_str() {
                    *response.status_mut() = http::StatusCode::UNAUTHORIZED;
                    response.headers_mut().insert(
                        "www-authenticate",
                        http::HeaderValue::from_static(r#"Bearer error="invalid_token""#),
                    );
                }
                Ok::<_, Infallible>(response)
            }
        })
    };
    let service = AddTokenLayer::new(&cache, &TokenRequest::new()).layer(inner);
    let first = service
        .clone()
        .oneshot(http::Request::new(String::new()))
        .await
        .unwrap();
    assert_eq!(first.status(), 401);
    assert_eq!(cache.stats().invalidations, 1);
    let second = service
        .clone()
        .oneshot(http::Request::new(String::new()))
        .await
        .unwrap();
    assert_eq!(second.status(), 200);
    assert_eq!(second.body(), &format!("Bearer {NEW}"));
    assert_eq!(token_calls(&idp).await, 2);
    assert_eq!(seen.load(Ordering::SeqCst), 2);

    // A token failure is the service's error, and names the cause.
    let failing = MockServer::start().await;
    let service = AddTokenLayer::new(&cache_for_down(&failing), &TokenRequest::new()).layer(
        tower::service_fn(|_: http::Request<String>| async {
            Ok::<_, Infallible>(http::Response::new(()))
        }),
    );
    let e = service
        .oneshot(http::Request::new(String::new()))
        .await
        .unwrap_err();
    assert!(e.downcast_ref::<token_core::Error>().is_some(), "{e}");
}

fn cache_for_down(server: &MockServer) -> TokenCache {
    let credential = OAuthCredential::client_credentials(format!("{}/missing", server.uri()), "c")
        .client_secret("client-secret-zzz")
        .build()
        .unwrap();
    TokenCache::builder(credential).build()
}
