//! The credentials against a local mock token endpoint (wiremock): request
//! shapes, every response shape, failures, timeouts and discovery.

use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde_json::{json, Value};
use token_core::{
    AccessToken, Actor, Credential, Error, FailureCause, ManualClock, RefreshPolicy, TokenCache,
    TokenRequest,
};
use token_http::{Grant, OAuthCredential, PrivateKey, ServerMetadata};
use wiremock::matchers::{body_string_contains, header, method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const SECRET: &str = "s3cr3t:with%odd+chars é";
const TOKEN: &str = "mock-access-token-9f8e7d6c5b4a";

fn token_url(server: &MockServer) -> String {
    format!("{}/oauth/token", server.uri())
}

fn ok_token(body: Value) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(body)
}

fn form(request: &Request) -> Vec<(String, String)> {
    form_urlencoded::parse(&request.body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

async fn token_requests(server: &MockServer) -> Vec<Request> {
    server
        .received_requests()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.url.path() == "/oauth/token")
        .collect()
}

fn basic(server: &MockServer) -> OAuthCredential {
    OAuthCredential::client_credentials(token_url(server), "client one")
        .client_secret(SECRET)
        .build()
        .expect("valid configuration")
}

#[tokio::test]
async fn client_secret_basic_form_encodes_id_and_secret_before_base64() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .respond_with(ok_token(
            json!({"access_token": TOKEN, "token_type": "bearer", "expires_in": 3600}),
        ))
        .mount(&server)
        .await;
    let credential = basic(&server);
    let token = credential.fetch(&TokenRequest::new(), None).await.unwrap();
    assert_eq!(token.secret().expose(), TOKEN);

    let sent = &token_requests(&server).await[0];
    let auth = sent.headers.get("authorization").unwrap().to_str().unwrap();
    let decoded = STANDARD
        .decode(auth.strip_prefix("Basic ").unwrap())
        .unwrap();
    assert_eq!(
        String::from_utf8(decoded).unwrap(),
        "client+one:s3cr3t%3Awith%25odd%2Bchars+%C3%A9"
    );
    let form = form(sent);
    assert_eq!(field(&form, "grant_type"), Some("client_credentials"));
    assert_eq!(field(&form, "client_secret"), None);
    assert_eq!(
        sent.headers.get("content-type").unwrap(),
        "application/x-www-form-urlencoded"
    );
}

#[tokio::test]
async fn client_secret_post_sends_id_and_secret_in_the_body() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ok_token(json!({"access_token": TOKEN})))
        .mount(&server)
        .await;
    let credential = OAuthCredential::client_credentials(token_url(&server), "c2")
        .client_secret_post(SECRET)
        .build()
        .unwrap();
    credential.fetch(&TokenRequest::new(), None).await.unwrap();
    let sent = &token_requests(&server).await[0];
    assert!(sent.headers.get("authorization").is_none());
    let form = form(sent);
    assert_eq!(field(&form, "client_id"), Some("c2"));
    assert_eq!(field(&form, "client_secret"), Some(SECRET));
}

fn jwt_parts(jwt: &str) -> (Value, Value, Vec<u8>, String) {
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3);
    let decode = |p: &str| serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).unwrap()).unwrap();
    (
        decode(parts[0]),
        decode(parts[1]),
        URL_SAFE_NO_PAD.decode(parts[2]).unwrap(),
        format!("{}.{}", parts[0], parts[1]),
    )
}

#[tokio::test]
async fn private_key_jwt_signs_a_fresh_assertion_for_the_token_endpoint() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ok_token(json!({"access_token": TOKEN})))
        .mount(&server)
        .await;
    let pem = include_str!("keys/rsa-test-only.pem");
    for (pem, alg) in [
        (pem, token_http::SigningAlgorithm::Rs256),
        (
            include_str!("keys/rsa-pkcs1-test-only.pem"),
            token_http::SigningAlgorithm::Rs256,
        ),
        (
            include_str!("keys/ec-test-only.pem"),
            token_http::SigningAlgorithm::Es256,
        ),
    ] {
        let key = PrivateKey::from_pem(pem, alg).unwrap().with_key_id("key-1");
        let credential = OAuthCredential::client_credentials(token_url(&server), "jwt-client")
            .private_key_jwt(key)
            .build()
            .unwrap();
        credential.fetch(&TokenRequest::new(), None).await.unwrap();
        credential.fetch(&TokenRequest::new(), None).await.unwrap();
    }
    let sent = token_requests(&server).await;
    assert_eq!(sent.len(), 6);
    let mut jtis = std::collections::HashSet::new();
    for (i, request) in sent.iter().enumerate() {
        let form = form(request);
        assert_eq!(
            field(&form, "client_assertion_type"),
            Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        );
        assert_eq!(field(&form, "client_id"), Some("jwt-client"));
        let (header, claims, signature, signed) =
            jwt_parts(field(&form, "client_assertion").unwrap());
        let alg = if i < 4 { "RS256" } else { "ES256" };
        assert_eq!(header["alg"], alg);
        assert_eq!(header["kid"], "key-1");
        assert_eq!(claims["iss"], "jwt-client");
        assert_eq!(claims["sub"], "jwt-client");
        assert_eq!(claims["aud"], token_url(&server));
        let iat = claims["iat"].as_u64().unwrap();
        let exp = claims["exp"].as_u64().unwrap();
        assert_eq!(exp - iat, 60);
        assert!(
            jtis.insert(claims["jti"].as_str().unwrap().to_owned()),
            "jti reused"
        );
        if alg == "RS256" {
            // Verify the signature with the key's public half.
            let der = pem_der(pem);
            let pair = ring::signature::RsaKeyPair::from_pkcs8(&der).unwrap();
            use ring::signature::KeyPair as _;
            ring::signature::UnparsedPublicKey::new(
                &ring::signature::RSA_PKCS1_2048_8192_SHA256,
                pair.public_key().as_ref(),
            )
            .verify(signed.as_bytes(), &signature)
            .expect("a valid RS256 signature");
        } else {
            assert_eq!(signature.len(), 64, "ES256 signatures are r||s");
        }
    }
}

fn pem_der(pem: &str) -> Vec<u8> {
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    STANDARD.decode(b64).unwrap()
}

#[tokio::test]
async fn request_scopes_audience_resources_and_params_are_sent() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ok_token(json!({"access_token": TOKEN})))
        .mount(&server)
        .await;
    let credential = OAuthCredential::client_credentials(token_url(&server), "c")
        .client_secret("x")
        .param("fixed", "1")
        .build()
        .unwrap();
    let request = TokenRequest::builder()
        .scopes(["b", "a"])
        .audience("https://api.example")
        .resource("https://r1.example")
        .resource("https://r2.example")
        .param("extra", "v")
        .build();
    credential.fetch(&request, None).await.unwrap();
    let form = form(&token_requests(&server).await[0]);
    assert_eq!(field(&form, "scope"), Some("a b"));
    assert_eq!(field(&form, "audience"), Some("https://api.example"));
    let resources: Vec<_> = form
        .iter()
        .filter(|(k, _)| k == "resource")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(resources, ["https://r1.example", "https://r2.example"]);
    assert_eq!(field(&form, "fixed"), Some("1"));
    assert_eq!(field(&form, "extra"), Some("v"));
    assert!(
        credential.id().ends_with("|p.fixed=1"),
        "{}",
        credential.id()
    );

    // An actor on a client credentials grant is refused, not ignored.
    let on_behalf = TokenRequest::builder()
        .actor(Actor::Subject("alice".into()))
        .build();
    let e = credential.fetch(&on_behalf, None).await.unwrap_err();
    assert!(!e.is_transient() && e.message().contains("actor"), "{e}");
}

/// A response shape, what the server sends, and what the caller should get:
/// the token's lifetime in seconds, or a piece of the error message.
type Case = (
    &'static str,
    ResponseTemplate,
    Result<Option<u64>, &'static str>,
);

/// One cache per response shape: what reaches the caller.
#[tokio::test]
async fn every_response_shape_through_the_cache() {
    let t0 = SystemTime::now();
    let cases: Vec<Case> = vec![
        ("number", ok_token(json!({"access_token": TOKEN, "expires_in": 3600})), Ok(Some(3600))),
        ("string", ok_token(json!({"access_token": TOKEN, "expires_in": "1800"})), Ok(Some(1800))),
        ("absent", ok_token(json!({"access_token": TOKEN})), Ok(Some(600))),
        ("null", ok_token(json!({"access_token": TOKEN, "expires_in": null})), Ok(Some(600))),
        ("1e20", ResponseTemplate::new(200).set_body_raw(format!(r#"{{"access_token":"{TOKEN}","expires_in":1e20}}"#), "application/json"), Ok(Some(86400))),
        ("u64::MAX", ResponseTemplate::new(200).set_body_raw(format!(r#"{{"access_token":"{TOKEN}","expires_in":{}}}"#, u64::MAX), "application/json"), Ok(Some(86400))),
        ("zero", ok_token(json!({"access_token": TOKEN, "expires_in": 0})), Err("expired")),
        ("negative", ok_token(json!({"access_token": TOKEN, "expires_in": -60})), Err("expired")),
        ("no access_token", ok_token(json!({"token_type": "Bearer"})), Err("no `access_token`")),
        ("truncated", ResponseTemplate::new(200).set_body_raw(format!(r#"{{"access_token":"{TOKEN}","expi"#), "application/json"), Err("not quoted")),
        ("html", ResponseTemplate::new(200).set_body_raw("<html><body>Sign in to the proxy</body></html>", "text/html"), Err("Sign in to the proxy")),
        ("html 502", ResponseTemplate::new(502).set_body_raw("<html>Bad Gateway</html>", "text/html"), Err("502 Bad Gateway")),
        ("oauth error", ResponseTemplate::new(400).set_body_json(json!({"error": "invalid_scope", "error_description": "orders.admin is not allowed"})), Err("invalid_scope: orders.admin is not allowed")),
        ("2 MiB", ResponseTemplate::new(200).set_body_raw(vec![b' '; 2 << 20], "application/json"), Err("over the 1048576-byte limit")),
    ];
    for (name, response, want) in cases {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(response)
            .mount(&server)
            .await;
        let cache = TokenCache::builder(basic(&server))
            .policy(RefreshPolicy::default())
            .build();
        match (cache.get_token(&TokenRequest::new()).await, want) {
            (Ok(token), Ok(lifetime)) => {
                assert_eq!(token.secret().expose(), TOKEN, "{name}");
                let got = token
                    .expires_at()
                    .unwrap()
                    .duration_since(token.obtained_at())
                    .unwrap();
                assert_eq!(Some(got.as_secs()), lifetime, "{name}");
                assert!(token.obtained_at() >= t0, "{name}");
            }
            (Err(e), Err(needle)) => {
                let text = format!("{e} {e:?}");
                assert!(text.contains(needle), "{name}: {text}");
                assert!(!text.contains(TOKEN), "{name} leaks the token: {text}");
                assert!(!text.contains(SECRET), "{name} leaks the secret: {text}");
            }
            (got, want) => panic!("{name}: got {got:?}, wanted {want:?}"),
        }
    }
}

#[tokio::test]
async fn oauth_errors_are_permanent_or_transient_as_rfc_6749_says() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(401).set_body_json(
            json!({"error": "invalid_client", "error_description": "client authentication failed"}),
        ))
        .mount(&server)
        .await;
    let e = basic(&server)
        .fetch(&TokenRequest::new(), None)
        .await
        .unwrap_err();
    assert!(!e.is_transient());
    assert_eq!(e.code(), Some("invalid_client"));
    assert_eq!(e.status(), Some(401));
    assert_eq!(e.cause(), FailureCause::HttpStatus);
    assert_eq!(e.endpoint(), Some(token_url(&server).as_str()));
    assert_eq!(e.message(), "client authentication failed");
    assert!(
        e.to_string()
            .contains("401 Unauthorized: invalid_client: client authentication failed"),
        "{e}"
    );
}

#[tokio::test]
async fn a_404_carries_its_status_and_endpoint_but_no_code() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(404).set_body_raw("<h1>Not Found</h1>", "text/html"))
        .mount(&server)
        .await;
    let e = basic(&server)
        .fetch(&TokenRequest::new(), None)
        .await
        .unwrap_err();
    assert!(!e.is_transient());
    assert_eq!(e.cause(), FailureCause::HttpStatus);
    assert_eq!((e.status(), e.code()), (Some(404), None));
    assert_eq!(e.endpoint(), Some(token_url(&server).as_str()));
    assert_eq!(e.service(), Some("the token endpoint"));
    let text = e.to_string();
    assert!(
        text.contains("answered 404 Not Found: 18 bytes of text/html"),
        "{text}"
    );
    assert!(!text.contains("  "), "{text}");
}

#[tokio::test]
async fn an_endpoint_with_a_query_string_is_reported_without_it() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({"error": "invalid_request"})))
        .mount(&server)
        .await;
    let credential = OAuthCredential::client_credentials(
        format!("{}?api-key=k3y-in-the-url", token_url(&server)),
        "c",
    )
    .client_secret(SECRET)
    .build()
    .unwrap();
    let e = credential
        .fetch(&TokenRequest::new(), None)
        .await
        .unwrap_err();
    assert_eq!(e.endpoint(), Some(token_url(&server).as_str()));
    assert_eq!(e.code(), Some("invalid_request"));
    let text = format!("{e} {e:?}");
    assert!(!text.contains("k3y-in-the-url"), "{text}");
}

#[tokio::test]
async fn malformed_json_is_an_invalid_response_with_its_status() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(
            format!(r#"{{"access_token":"{TOKEN}","expires_in":36"#),
            "application/json",
        ))
        .mount(&server)
        .await;
    let e = basic(&server)
        .fetch(&TokenRequest::new(), None)
        .await
        .unwrap_err();
    assert!(!e.is_transient());
    assert_eq!(e.cause(), FailureCause::InvalidResponse);
    assert_eq!((e.status(), e.code()), (Some(200), None));
    assert_eq!(e.endpoint(), Some(token_url(&server).as_str()));
    let text = format!("{e} {e:?}");
    assert!(!text.contains(TOKEN), "{text}");
    assert!(!e.to_string().contains("  "), "{e}");
}

#[tokio::test]
async fn a_body_over_the_limit_is_its_own_cause() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200).set_body_raw(vec![b' '; 2 << 20], "application/json"),
        )
        .mount(&server)
        .await;
    let e = basic(&server)
        .fetch(&TokenRequest::new(), None)
        .await
        .unwrap_err();
    assert_eq!(e.cause(), FailureCause::BodyTooLarge);
    assert_eq!(e.status(), Some(200));
    assert_eq!(e.endpoint(), Some(token_url(&server).as_str()));
}

#[tokio::test]
async fn rate_limit_429_is_transient_and_passes_retry_after_on() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "42"))
        .mount(&server)
        .await;
    let cache = TokenCache::builder(basic(&server)).build();
    let e = cache.get_token(&TokenRequest::new()).await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert_eq!(e.retry_after(), Some(Duration::from_secs(42)));
    // While backing off, callers get the error without another IdP call.
    for _ in 0..20 {
        assert!(cache.get_token(&TokenRequest::new()).await.is_err());
    }
    assert_eq!(token_requests(&server).await.len(), 1);

    let date = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(90));
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503).insert_header("retry-after", date.as_str()))
        .mount(&server)
        .await;
    let e = basic(&server)
        .fetch(&TokenRequest::new(), None)
        .await
        .unwrap_err();
    assert!(e.is_transient());
    assert_eq!(e.cause(), FailureCause::HttpStatus);
    assert_eq!((e.status(), e.code()), (Some(503), None));
    assert_eq!(e.endpoint(), Some(token_url(&server).as_str()));
    let after = e.retry_after().unwrap();
    assert!(
        after > Duration::from_secs(60) && after <= Duration::from_secs(90),
        "{after:?}"
    );
    assert!(!e.to_string().contains("  "), "{e}");
}

#[tokio::test]
async fn a_503_storm_keeps_the_cached_token_served_until_it_expires() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ok_token(json!({"access_token": TOKEN, "expires_in": 3600})))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(503)
                .set_body_raw("<html>Service Unavailable</html>", "text/html"),
        )
        .mount(&server)
        .await;
    let clock = ManualClock::new();
    let credential = OAuthCredential::client_credentials(token_url(&server), "c")
        .client_secret(SECRET)
        .clock(clock.clone())
        .build()
        .unwrap();
    let cache = TokenCache::builder(credential).clock(clock.clone()).build();
    let request = TokenRequest::new();
    cache.get_token(&request).await.unwrap();

    // Into the refresh window: every call is served at once while the
    // background refreshes hit the 503s.
    clock.advance(Duration::from_secs(50 * 60));
    for round in 0..40 {
        let token = cache
            .get_token(&request)
            .await
            .expect("stale-if-error serves the token");
        assert_eq!(token.secret().expose(), TOKEN);
        // Let the background refresh run; every few rounds, move past the backoff.
        tokio::time::sleep(Duration::from_millis(5)).await;
        if round % 10 == 9 {
            clock.advance(Duration::from_secs(61));
        }
    }
    let stats = cache.stats();
    assert!(stats.errors >= 1, "{stats:?}");
    assert!(stats.stale_served >= 1, "{stats:?}");
    let calls = token_requests(&server).await.len();
    // One initial fetch, then about one per backoff step: not one per call.
    assert!(
        (2..=8).contains(&calls),
        "{calls} token requests for 41 calls"
    );

    // Past the real expiry the token is no longer handed out.
    clock.advance(Duration::from_secs(3600));
    let e = cache.get_token(&request).await.unwrap_err();
    assert!(e.is_transient(), "{e}");
}

#[tokio::test]
async fn a_slow_token_endpoint_hits_the_request_timeout() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ok_token(json!({"access_token": TOKEN})).set_delay(Duration::from_secs(30)))
        .mount(&server)
        .await;
    let credential = OAuthCredential::client_credentials(token_url(&server), "c")
        .client_secret(SECRET)
        .request_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let e = credential
        .fetch(&TokenRequest::new(), None)
        .await
        .unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert_eq!(e.cause(), FailureCause::Timeout, "{e:?}");
    assert_eq!(e.status(), None);
    assert_eq!(e.endpoint(), Some(token_url(&server).as_str()));
    assert!(e.to_string().contains("did not answer in time"), "{e}");
    assert!(e.to_string().contains(&token_url(&server)), "{e}");
}

#[tokio::test]
async fn connection_refused_is_transient() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let credential =
        OAuthCredential::client_credentials(format!("http://127.0.0.1:{port}/token"), "c")
            .client_secret(SECRET)
            .build()
            .unwrap();
    let e = credential
        .fetch(&TokenRequest::new(), None)
        .await
        .unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert_eq!(e.cause(), FailureCause::Connect, "{e:?}");
    assert_eq!((e.status(), e.code()), (None, None));
    let url = format!("http://127.0.0.1:{port}/token");
    assert_eq!(e.endpoint(), Some(url.as_str()));
    assert_eq!(e.message(), "connection refused", "{e:?}");
    assert_eq!(
        e.to_string(),
        format!("could not connect to the token endpoint at {url}: connection refused")
    );
    assert!(!e.to_string().contains(SECRET));
}

#[tokio::test]
async fn refresh_grant_redeems_the_newest_refresh_token_and_keeps_rotations() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(body_string_contains("refresh_token=rt-1"))
        .respond_with(ok_token(
            json!({"access_token": "at-1", "expires_in": 60, "refresh_token": "rt-2"}),
        ))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(body_string_contains("refresh_token=rt-2"))
        .respond_with(ok_token(json!({"access_token": "at-2", "expires_in": 60})))
        .mount(&server)
        .await;
    let credential = OAuthCredential::refresh_token(token_url(&server), "app", "rt-1")
        .build()
        .unwrap();
    assert!(credential.id().starts_with(&format!(
        "refresh_token|{}|app|none|rt#",
        token_url(&server)
    )));
    assert!(!credential.id().contains("rt-1"));
    let request = TokenRequest::new();
    let first = credential.fetch(&request, None).await.unwrap();
    assert_eq!(first.secret().expose(), "at-1");
    assert_eq!(first.refresh_token().unwrap().expose(), "rt-2");
    // With the cached token as `previous`, its (rotated) refresh token is used.
    let second = credential.fetch(&request, Some(&first)).await.unwrap();
    assert_eq!(second.secret().expose(), "at-2");
    // Not rotated this time: the redeemed one stays on the token.
    assert_eq!(second.refresh_token().unwrap().expose(), "rt-2");
    // Without `previous` (the cached token was dropped), the newest seen is used, not rt-1.
    let third = credential.fetch(&request, None).await.unwrap();
    assert_eq!(third.secret().expose(), "at-2");
    let forms: Vec<_> = token_requests(&server).await.iter().map(form).collect();
    assert_eq!(field(&forms[0], "grant_type"), Some("refresh_token"));
    assert_eq!(field(&forms[0], "client_id"), Some("app"));
    assert_eq!(field(&forms[2], "refresh_token"), Some("rt-2"));
    let debug = format!("{credential:?} {first:?}");
    assert!(
        !debug.contains("rt-1") && !debug.contains("rt-2") && !debug.contains("at-1"),
        "{debug}"
    );
}

#[tokio::test]
async fn token_exchange_sends_the_actor_assertion_as_subject_token() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ok_token(json!({
            "access_token": TOKEN,
            "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
            "token_type": "N_A",
            "expires_in": 300
        })))
        .mount(&server)
        .await;
    let credential = OAuthCredential::token_exchange(token_url(&server), "gateway")
        .client_secret(SECRET)
        .build()
        .unwrap();
    let request = TokenRequest::builder()
        .actor(Actor::Assertion("incoming-user-token-abc".into()))
        .audience("orders")
        .build();
    let token = credential.fetch(&request, None).await.unwrap();
    assert_eq!(token.token_type().as_str(), "N_A");
    let form = form(&token_requests(&server).await[0]);
    assert_eq!(
        field(&form, "grant_type"),
        Some("urn:ietf:params:oauth:grant-type:token-exchange")
    );
    assert_eq!(
        field(&form, "subject_token"),
        Some("incoming-user-token-abc")
    );
    assert_eq!(
        field(&form, "subject_token_type"),
        Some("urn:ietf:params:oauth:token-type:access_token")
    );
    assert_eq!(field(&form, "audience"), Some("orders"));

    let e = credential
        .fetch(&TokenRequest::new(), None)
        .await
        .unwrap_err();
    assert!(
        !e.is_transient() && e.message().contains("Actor::Assertion"),
        "{e}"
    );

    let custom = OAuthCredential::token_exchange(token_url(&server), "gateway")
        .client_secret(SECRET)
        .grant(Grant::TokenExchange {
            subject_token_type: "urn:ietf:params:oauth:token-type:jwt".into(),
            requested_token_type: Some("urn:ietf:params:oauth:token-type:access_token".into()),
        })
        .build()
        .unwrap();
    assert!(
        custom
            .id()
            .contains("stt=urn:ietf:params:oauth:token-type:jwt"),
        "{}",
        custom.id()
    );
}

#[tokio::test]
async fn discovery_tries_oidc_then_rfc_8414_and_checks_the_issuer() {
    let server = MockServer::start().await;
    let issuer = format!("{}/tenant-a", server.uri());
    Mock::given(method("GET"))
        .and(path("/.well-known/oauth-authorization-server/tenant-a"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "issuer": issuer,
            "token_endpoint": format!("{}/tenant-a/token", server.uri()),
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "private_key_jwt"],
        })))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/tenant-a/token"))
        .respond_with(ok_token(json!({"access_token": TOKEN})))
        .mount(&server)
        .await;
    let metadata = ServerMetadata::discover(&issuer).await.unwrap();
    assert_eq!(
        metadata.token_endpoint(),
        format!("{}/tenant-a/token", server.uri())
    );
    assert_eq!(
        metadata.auth_methods_supported(),
        ["client_secret_basic", "private_key_jwt"]
    );
    let credential = OAuthCredential::discover(&issuer, Grant::ClientCredentials, "c")
        .await
        .unwrap()
        .client_secret(SECRET)
        .build()
        .unwrap();
    assert_eq!(
        credential
            .fetch(&TokenRequest::new(), None)
            .await
            .unwrap()
            .secret()
            .expose(),
        TOKEN
    );

    // An issuer whose documents are missing or name someone else fails clearly.
    let e = ServerMetadata::discover(&format!("{}/other", server.uri()))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("404"), "{e}");
    Mock::given(method("GET"))
        .and(path("/evil/.well-known/openid-configuration"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"issuer": "https://idp.example", "token_endpoint": "https://idp.example/t"}),
        ))
        .mount(&server)
        .await;
    let e = ServerMetadata::discover(&format!("{}/evil", server.uri()))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("refusing"), "{e}");
}

#[tokio::test]
async fn clock_skew_from_the_date_header_is_recorded_and_shortens_lifetimes() {
    let server = MockServer::start().await;
    let server_time = SystemTime::now() - Duration::from_secs(600);
    Mock::given(method("POST"))
        .respond_with(
            ok_token(json!({"access_token": TOKEN, "expires_in": 3600}))
                .insert_header("date", httpdate::fmt_http_date(server_time).as_str()),
        )
        .mount(&server)
        .await;
    let credential = basic(&server);
    assert_eq!(credential.clock_skew(), None);
    let token = credential.fetch(&TokenRequest::new(), None).await.unwrap();
    let skew = credential.clock_skew().expect("skew recorded");
    let ahead = skew.local_ahead_by().unwrap();
    assert!(
        ahead >= Duration::from_secs(590) && ahead <= Duration::from_secs(610),
        "{skew}"
    );
    let lifetime = token
        .expires_at()
        .unwrap()
        .duration_since(token.obtained_at())
        .unwrap();
    assert!(
        lifetime <= Duration::from_secs(3600) - ahead + Duration::from_secs(1),
        "{lifetime:?}"
    );
}

#[tokio::test]
async fn secrets_never_appear_in_debug_output_or_errors() {
    let server = MockServer::start().await;
    // A broken server that echoes the request body back in its error page.
    Mock::given(method("POST"))
        .respond_with(|request: &Request| {
            ResponseTemplate::new(400).set_body_raw(request.body.clone(), "text/plain")
        })
        .mount(&server)
        .await;
    let post = OAuthCredential::client_credentials(token_url(&server), "c")
        .client_secret_post("hunter2-post-secret")
        .build()
        .unwrap();
    let refresh = OAuthCredential::refresh_token(token_url(&server), "c", "refresh-secret-xyz")
        .client_secret_post("hunter2-post-secret")
        .build()
        .unwrap();
    let key = PrivateKey::rs256_from_pem(include_str!("keys/rsa-test-only.pem")).unwrap();
    let jwt = OAuthCredential::client_credentials(token_url(&server), "c")
        .private_key_jwt(key.clone())
        .build()
        .unwrap();
    let exchange = OAuthCredential::token_exchange(token_url(&server), "c")
        .client_secret("hunter2-basic-secret")
        .build()
        .unwrap();
    let request = TokenRequest::builder()
        .actor(Actor::Assertion("subject-token-secret".into()))
        .build();
    let mut texts = vec![
        format!("{post:?} {refresh:?} {jwt:?} {exchange:?} {key:?}"),
        format!(
            "{:?}",
            OAuthCredential::client_credentials("http://127.0.0.1:1/t", "c")
                .client_secret("hunter2-basic-secret")
        ),
    ];
    for (credential, request) in [
        (&post, TokenRequest::new()),
        (&refresh, TokenRequest::new()),
        (&jwt, TokenRequest::new()),
        (&exchange, request),
    ] {
        let e = credential.fetch(&request, None).await.unwrap_err();
        texts.push(format!("{e} {e:?}"));
        let cache = TokenCache::builder(
            OAuthCredential::client_credentials(token_url(&server), "c")
                .client_secret_post("hunter2-post-secret")
                .build()
                .unwrap(),
        )
        .build();
        let e: Error = cache.get_token(&TokenRequest::new()).await.unwrap_err();
        texts.push(format!("{e} {e:?}"));
    }
    let pem_body: String = include_str!("keys/rsa-test-only.pem")
        .lines()
        .nth(1)
        .unwrap()
        .to_owned();
    for text in &texts {
        for secret in [
            "hunter2",
            "refresh-secret-xyz",
            "subject-token-secret",
            "client_assertion=ey",
            pem_body.as_str(),
        ] {
            assert!(!text.contains(secret), "{secret} leaked in: {text}");
        }
    }
    // The echoed body was seen and withheld, with the status still named.
    assert!(
        texts[2].contains("400 Bad Request") && texts[2].contains("not quoted"),
        "{}",
        texts[2]
    );
}

#[test]
fn configuration_errors_are_clear() {
    let e = OAuthCredential::client_credentials("https://user:pw@idp.example/token", "c")
        .client_secret("x")
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("credentials in the URL"), "{e}");
    assert!(!e.to_string().contains("pw@"), "{e}");
    let e = OAuthCredential::client_credentials("https://idp.example/token", "c")
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("needs client authentication"), "{e}");
    let e = PrivateKey::es256_from_pem(include_str!("keys/rsa-test-only.pem")).unwrap_err();
    assert!(e.to_string().contains("P-256"), "{e}");
}

#[tokio::test]
async fn previous_tokens_are_only_used_for_their_refresh_token() {
    // A client credentials grant ignores `previous` entirely.
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(header("accept", "application/json"))
        .respond_with(ok_token(json!({"access_token": TOKEN})))
        .mount(&server)
        .await;
    let previous = AccessToken::new("old", SystemTime::now()).with_refresh_token("old-rt");
    basic(&server)
        .fetch(&TokenRequest::new(), Some(&previous))
        .await
        .unwrap();
    let form = form(&token_requests(&server).await[0]);
    assert_eq!(field(&form, "refresh_token"), None);
}
