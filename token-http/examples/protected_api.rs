//! Calls a protected API through the token middleware.
//!
//! Starts two local stand-ins on loopback (an authorization server and an
//! API that wants `Authorization: Bearer <token>`), then makes 20 calls
//! through a reqwest client with [`TokenMiddleware`]. Halfway, the API
//! "revokes" the token: the middleware sees the 401 `invalid_token`,
//! invalidates the token, fetches a new one and retries.
//!
//! ```sh
//! cargo run -p token-http --example protected_api
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::json;
use token_core::{TokenCache, TokenRequest};
use token_http::{OAuthCredential, TokenMiddleware};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The authorization server: a new token on every call.
    let idp = MockServer::start().await;
    let issued = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&issued);
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .respond_with(move |_: &Request| {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            ResponseTemplate::new(200).set_body_json(json!({
                "access_token": format!("demo-token-{n}"),
                "token_type": "Bearer",
                "expires_in": 3600,
            }))
        })
        .mount(&idp)
        .await;

    // The API: accepts the current token; after call 10 it rejects token 1.
    let api = MockServer::start().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&calls);
    Mock::given(method("GET"))
        .and(path("/v1/orders"))
        .respond_with(move |request: &Request| {
            let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
            let auth = request
                .headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !auth.starts_with("Bearer demo-token-") || (n > 10 && auth == "Bearer demo-token-1")
            {
                return ResponseTemplate::new(401).insert_header(
                    "www-authenticate",
                    r#"Bearer realm="orders", error="invalid_token", error_description="revoked""#,
                );
            }
            ResponseTemplate::new(200).set_body_json(json!({"orders": [1, 2, 3]}))
        })
        .mount(&api)
        .await;

    let credential =
        OAuthCredential::client_credentials(format!("{}/oauth/token", idp.uri()), "orders-client")
            .client_secret("example-secret")
            .build()?;
    let cache = TokenCache::builder(credential).build();
    let request = TokenRequest::builder().scope("orders.read").build();
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(TokenMiddleware::new(&cache, &request))
        .build();

    for i in 1..=20 {
        let response = client
            .get(format!("{}/v1/orders", api.uri()))
            .send()
            .await?;
        let status = response.status();
        let body = response.text().await?;
        println!("call {i:>2}: {status} {body}");
        if !status.is_success() {
            return Err(format!("call {i} failed with {status}").into());
        }
    }
    let stats = cache.stats();
    println!(
        "\n20 API calls (+{} retry), {} token requests, {} invalidation; {stats:?}",
        calls.load(Ordering::SeqCst) - 20,
        issued.load(Ordering::SeqCst),
        stats.invalidations,
    );
    Ok(())
}
