//! Managed identities and metadata servers against loopback servers
//! (wiremock) that answer as the documented protocols do, error bodies
//! included: Azure IMDS, Azure App Service / Container Apps, the Google
//! metadata server. Retry delays run on a `ManualClock`, so a 93-second
//! retry sequence takes milliseconds.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;
use token_core::{
    Clock, Credential, CredentialError, FailureCause, ManualClock, TokenCache, TokenRequest,
};
use token_http::{
    AppServiceCredential, AzureImdsCredential, GcpMetadataCredential, ManagedIdentityId, RetryRules,
};
use wiremock::matchers::{header, method, path, query_param, query_param_is_missing};
use wiremock::{Mock, MockServer, ResponseTemplate};

const IMDS_PATH: &str = "/metadata/identity/oauth2/token";
const TOKEN: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.managed-identity-token";
const IDENTITY_HEADER: &str = "853b9a84-5bfa-4b22-a3f3-0b9a43d9ad8a";
const DAY: u64 = 24 * 3600;

/// Advances `clock` whenever something sleeps on it, until dropped.
struct Driver(tokio::task::JoinHandle<()>);

impl Drop for Driver {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn drive(clock: &ManualClock) -> Driver {
    let clock = clock.clone();
    Driver(tokio::spawn(async move {
        loop {
            if clock.pending_sleeps() > 0 {
                clock.advance(Duration::from_millis(100));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }))
}

fn vault() -> TokenRequest {
    TokenRequest::builder()
        .scope("https://vault.azure.net/.default")
        .build()
}

/// The documented IMDS answer (expires_in and expires_on as strings).
fn imds_ok(now: SystemTime, lifetime: u64) -> ResponseTemplate {
    let now = now.duration_since(UNIX_EPOCH).unwrap().as_secs();
    ResponseTemplate::new(200).set_body_json(json!({
        "access_token": TOKEN,
        "refresh_token": "",
        "expires_in": lifetime.to_string(),
        "expires_on": (now + lifetime).to_string(),
        "ext_expires_in": lifetime.to_string(),
        "not_before": now.to_string(),
        "resource": "https://vault.azure.net",
        "token_type": "Bearer"
    }))
}

fn imds(server: &MockServer, clock: &ManualClock) -> token_http::AzureImdsCredentialBuilder {
    AzureImdsCredential::builder()
        .endpoint(format!("{}{IMDS_PATH}", server.uri()))
        .clock_arc(Arc::new(clock.clone()))
}

fn lifetime(token: &token_core::AccessToken) -> Duration {
    token
        .expires_at()
        .unwrap()
        .duration_since(token.obtained_at())
        .unwrap()
}

#[tokio::test]
async fn imds_sends_the_documented_request_and_parses_its_answer() {
    let server = MockServer::start().await;
    let clock = ManualClock::new();
    Mock::given(method("GET"))
        .and(path(IMDS_PATH))
        .and(header("Metadata", "true"))
        .and(query_param("api-version", "2018-02-01"))
        .and(query_param("resource", "https://vault.azure.net"))
        .and(query_param("client_id", "c0ffee"))
        .respond_with(imds_ok(clock.now(), DAY))
        .expect(1)
        .mount(&server)
        .await;
    let credential = imds(&server, &clock)
        .identity(ManagedIdentityId::ClientId("c0ffee".into()))
        .build()
        .unwrap();
    assert_eq!(
        credential.id(),
        format!("azure-imds|{}{IMDS_PATH}|client_id=c0ffee", server.uri())
    );
    let token = credential.fetch(&vault(), None).await.unwrap();
    assert_eq!(token.secret().expose(), TOKEN);
    assert_eq!(token.token_type().as_str(), "Bearer");
    assert_eq!(lifetime(&token), Duration::from_secs(DAY));
    assert!(!format!("{credential:?} {token:?}").contains(TOKEN));
}

#[tokio::test]
async fn imds_object_and_resource_ids_use_their_parameter_names() {
    let server = MockServer::start().await;
    let clock = ManualClock::new();
    for (name, identity) in [
        ("object_id", ManagedIdentityId::ObjectId("obj-1".into())),
        (
            "msi_res_id",
            ManagedIdentityId::ResourceId("/subscriptions/s/rg/id".into()),
        ),
    ] {
        server.reset().await;
        Mock::given(path(IMDS_PATH))
            .and(query_param_is_missing("client_id"))
            .and(query_param(
                name,
                match &identity {
                    ManagedIdentityId::ObjectId(v) | ManagedIdentityId::ResourceId(v) => v.clone(),
                    _ => unreachable!(),
                },
            ))
            .respond_with(imds_ok(clock.now(), 3600))
            .expect(1)
            .mount(&server)
            .await;
        let credential = imds(&server, &clock).identity(identity).build().unwrap();
        credential.fetch(&vault(), None).await.unwrap();
    }
    assert!(imds(&server, &clock)
        .identity(ManagedIdentityId::ClientId(" ".into()))
        .build()
        .unwrap_err()
        .to_string()
        .contains("client id is empty"));
}

/// Answers `status` (with `body`) `times` times, then the token.
async fn failing_then_ok(
    server: &MockServer,
    clock: &ManualClock,
    status: u16,
    body: serde_json::Value,
    retry_after: Option<&str>,
    times: u64,
) {
    let mut failure = ResponseTemplate::new(status).set_body_json(body);
    if let Some(after) = retry_after {
        failure = failure.insert_header("Retry-After", after);
    }
    Mock::given(path(IMDS_PATH))
        .respond_with(failure)
        .up_to_n_times(times)
        .with_priority(1)
        .mount(server)
        .await;
    Mock::given(path(IMDS_PATH))
        .respond_with(imds_ok(clock.now(), 3600))
        .with_priority(2)
        .mount(server)
        .await;
}

async fn requests(server: &MockServer) -> usize {
    server.received_requests().await.unwrap().len()
}

#[tokio::test]
async fn imds_410_is_retried_for_more_than_70_seconds_when_the_budget_allows() {
    let server = MockServer::start().await;
    let clock = ManualClock::new();
    let _driver = drive(&clock);
    failing_then_ok(
        &server,
        &clock,
        410,
        json!({"error": "service_unavailable", "error_description": "IMDS is upgrading"}),
        None,
        5,
    )
    .await;
    let credential = imds(&server, &clock)
        .retry(RetryRules::azure_imds().with_max_elapsed(Duration::from_secs(120)))
        .build()
        .unwrap();
    let started = clock.monotonic();
    credential.fetch(&vault(), None).await.unwrap();
    let waited = clock.monotonic() - started;
    assert_eq!(requests(&server).await, 6);
    // 3 + 6 + 12 + 24 + 48 s.
    assert!(waited >= Duration::from_secs(93), "{waited:?}");
}

#[tokio::test]
async fn imds_404_and_429_and_5xx_are_retried_as_documented() {
    // 404 (IMDS updating): 0.8 s, then 1.6 s.
    let server = MockServer::start().await;
    let clock = ManualClock::new();
    let _driver = drive(&clock);
    failing_then_ok(&server, &clock, 404, json!({"error": "not_found"}), None, 2).await;
    let started = clock.monotonic();
    imds(&server, &clock)
        .build()
        .unwrap()
        .fetch(&vault(), None)
        .await
        .unwrap();
    assert_eq!(requests(&server).await, 3);
    assert!(clock.monotonic() - started >= Duration::from_millis(2400));

    // 5xx: never sooner than 1 s.
    let server = MockServer::start().await;
    failing_then_ok(
        &server,
        &clock,
        500,
        json!({"error": "server_error"}),
        None,
        1,
    )
    .await;
    let started = clock.monotonic();
    imds(&server, &clock)
        .build()
        .unwrap()
        .fetch(&vault(), None)
        .await
        .unwrap();
    assert_eq!(requests(&server).await, 2);
    assert!(clock.monotonic() - started >= Duration::from_secs(1));

    // 429: Retry-After honoured.
    let server = MockServer::start().await;
    failing_then_ok(
        &server,
        &clock,
        429,
        json!({"error": "too_many_requests"}),
        Some("5"),
        1,
    )
    .await;
    let started = clock.monotonic();
    imds(&server, &clock)
        .build()
        .unwrap()
        .fetch(&vault(), None)
        .await
        .unwrap();
    assert_eq!(requests(&server).await, 2);
    assert!(clock.monotonic() - started >= Duration::from_secs(5));
}

#[tokio::test]
async fn imds_retries_stop_within_the_default_budget_with_a_transient_error() {
    let server = MockServer::start().await;
    let clock = ManualClock::new();
    let _driver = drive(&clock);
    Mock::given(path(IMDS_PATH))
        .respond_with(ResponseTemplate::new(410).set_body_string("IMDS is upgrading"))
        .mount(&server)
        .await;
    let started = clock.monotonic();
    let e = imds(&server, &clock)
        .build()
        .unwrap()
        .fetch(&vault(), None)
        .await
        .unwrap_err();
    // 3 s, then 6 s would pass the 8 s budget: two requests, then the cache's
    // backoff takes over.
    assert!(e.is_transient(), "{e}");
    assert_eq!(e.cause(), FailureCause::HttpStatus);
    assert_eq!(e.status(), Some(410));
    assert_eq!(e.service(), Some("Azure IMDS"));
    let url = format!("{}{IMDS_PATH}", server.uri());
    assert_eq!(e.endpoint(), Some(url.as_str()));
    assert!(
        e.to_string()
            .starts_with(&format!("Azure IMDS at {url} answered 410 Gone")),
        "{e}"
    );
    assert!(!e.to_string().contains("  "), "{e}");
    assert_eq!(requests(&server).await, 2);
    assert!(clock.monotonic() - started < Duration::from_secs(8));
}

#[tokio::test]
async fn imds_identity_not_found_is_a_permanent_error_with_its_description() {
    let server = MockServer::start().await;
    let clock = ManualClock::new();
    Mock::given(path(IMDS_PATH))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({
            "error": "invalid_request",
            "error_description": "Identity not found"
        })))
        .mount(&server)
        .await;
    let e = imds(&server, &clock)
        .build()
        .unwrap()
        .fetch(&vault(), None)
        .await
        .unwrap_err();
    assert!(!e.is_transient(), "{e}");
    assert_eq!(e.code(), Some("invalid_request"));
    assert_eq!(e.status(), Some(400));
    assert_eq!(e.cause(), FailureCause::HttpStatus);
    assert_eq!(e.message(), "Identity not found");
    // The query (resource, identity) is not part of the endpoint.
    assert_eq!(
        e.endpoint(),
        Some(format!("{}{IMDS_PATH}", server.uri()).as_str())
    );
    assert!(e.to_string().contains("Identity not found"), "{e}");
    assert_eq!(requests(&server).await, 1);
}

#[tokio::test]
async fn imds_unknown_resource_is_permanent_and_the_request_must_name_one_resource() {
    let server = MockServer::start().await;
    let clock = ManualClock::new();
    Mock::given(path(IMDS_PATH))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({
            "error": "invalid_resource",
            "error_description": "AADSTS500011: The resource principal named https://nope was not found in the tenant."
        })))
        .mount(&server)
        .await;
    let credential = imds(&server, &clock).build().unwrap();
    let nope = TokenRequest::builder().resource("https://nope").build();
    let e = credential.fetch(&nope, None).await.unwrap_err();
    assert!(!e.is_transient());
    assert!(e.to_string().contains("AADSTS500011"), "{e}");
    let none = credential
        .fetch(&TokenRequest::new(), None)
        .await
        .unwrap_err();
    assert!(none.to_string().contains("needs the resource"), "{none}");
    let two = TokenRequest::builder()
        .scope("a/.default")
        .scope("b")
        .build();
    assert!(credential.fetch(&two, None).await.is_err());
    let tenant = TokenRequest::builder()
        .resource("https://x")
        .tenant("t")
        .build();
    assert!(credential
        .fetch(&tenant, None)
        .await
        .unwrap_err()
        .to_string()
        .contains("tenant"));
    assert_eq!(requests(&server).await, 1);
}

#[tokio::test]
async fn without_retries_a_passing_error_is_one_request_and_transient() {
    let server = MockServer::start().await;
    let clock = ManualClock::new();
    Mock::given(path(IMDS_PATH))
        .respond_with(ResponseTemplate::new(404).set_body_string("Not Found"))
        .mount(&server)
        .await;
    let e = imds(&server, &clock)
        .retry(RetryRules::none())
        .build()
        .unwrap()
        .fetch(&vault(), None)
        .await
        .unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert_eq!(requests(&server).await, 1);
}

#[tokio::test]
async fn imds_unreachable_is_transient_and_names_the_endpoint() {
    let clock = ManualClock::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}{IMDS_PATH}", listener.local_addr().unwrap());
    drop(listener);
    let e = AzureImdsCredential::builder()
        .endpoint(url.clone())
        .clock_arc(Arc::new(clock))
        .build()
        .unwrap()
        .fetch(&vault(), None)
        .await
        .unwrap_err();
    assert!(e.is_transient());
    assert!(e.to_string().contains(&url), "{e}");
}

fn app_service(
    server: &MockServer,
    clock: &ManualClock,
) -> token_http::AppServiceCredentialBuilder {
    AppServiceCredential::builder(format!("{}/msi/token", server.uri()), IDENTITY_HEADER)
        .clock_arc(Arc::new(clock.clone()))
}

#[tokio::test]
async fn app_service_sends_the_identity_header_and_reads_expires_on() {
    let server = MockServer::start().await;
    let clock = ManualClock::new();
    let expires_on = clock.now().duration_since(UNIX_EPOCH).unwrap().as_secs() + DAY;
    Mock::given(method("GET"))
        .and(path("/msi/token"))
        .and(header("X-IDENTITY-HEADER", IDENTITY_HEADER))
        .and(query_param("api-version", "2019-08-01"))
        .and(query_param("resource", "https://vault.azure.net"))
        .and(query_param("principal_id", "p-1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": TOKEN,
            "expires_on": expires_on.to_string(),
            "resource": "https://vault.azure.net",
            "token_type": "Bearer",
            "client_id": "5E29463D-71DA-4FE0-8E69-999B57DB23B0"
        })))
        .expect(1)
        .mount(&server)
        .await;
    let credential = app_service(&server, &clock)
        .identity(ManagedIdentityId::ObjectId("p-1".into()))
        .build()
        .unwrap();
    let token = credential.fetch(&vault(), None).await.unwrap();
    assert_eq!(
        token.expires_at(),
        Some(UNIX_EPOCH + Duration::from_secs(expires_on))
    );
    assert!(!credential.id().contains(IDENTITY_HEADER));
    assert!(!format!("{credential:?}").contains(IDENTITY_HEADER));
}

#[tokio::test]
async fn app_service_error_bodies_are_reported_and_5xx_retried() {
    let server = MockServer::start().await;
    let clock = ManualClock::new();
    let _driver = drive(&clock);
    Mock::given(path("/msi/token"))
        .and(query_param("client_id", "unknown"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({
            "statusCode": 400,
            "message": "No Managed Identity found for specified ClientId/ResourceId/PrincipalId.",
            "correlationId": "7f1c2b9e-0000-4000-8000-000000000000"
        })))
        .mount(&server)
        .await;
    let e = app_service(&server, &clock)
        .identity(ManagedIdentityId::ClientId("unknown".into()))
        .build()
        .unwrap()
        .fetch(&vault(), None)
        .await
        .unwrap_err();
    assert!(!e.is_transient(), "{e}");
    assert!(e.to_string().contains("No Managed Identity found"), "{e}");
    assert!(!format!("{e} {e:?}").contains(IDENTITY_HEADER));
    assert_eq!(e.cause(), FailureCause::HttpStatus);
    assert_eq!((e.status(), e.code()), (Some(400), None));
    assert_eq!(
        e.service(),
        Some("the App Service managed identity endpoint")
    );
    assert_eq!(
        e.endpoint(),
        Some(format!("{}/msi/token", server.uri()).as_str()),
        "no query string (resource, identity)"
    );

    let server = MockServer::start().await;
    Mock::given(path("/msi/token"))
        .respond_with(ResponseTemplate::new(503).set_body_string("Service Unavailable"))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(path("/msi/token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": TOKEN, "expires_on": "4102444800", "token_type": "Bearer"
        })))
        .with_priority(2)
        .mount(&server)
        .await;
    app_service(&server, &clock)
        .build()
        .unwrap()
        .fetch(&vault(), None)
        .await
        .unwrap();
    assert_eq!(requests(&server).await, 2);
}

#[tokio::test]
async fn app_service_from_env_names_the_missing_variable() {
    if std::env::var_os("IDENTITY_ENDPOINT").is_some() {
        eprintln!("SKIPPED: IDENTITY_ENDPOINT is set in this environment");
        return;
    }
    let e = AppServiceCredential::from_env().unwrap_err();
    assert!(e.to_string().contains("IDENTITY_ENDPOINT"), "{e}");
}

#[tokio::test]
async fn day_long_tokens_refresh_by_the_policy_or_earlier_by_refresh_in() {
    let server = MockServer::start().await;
    let clock = ManualClock::new();
    let now = clock.now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let body = |refresh_in: Option<u64>| {
        let mut b = json!({
            "access_token": TOKEN,
            "expires_on": (now + DAY).to_string(),
            "token_type": "Bearer"
        });
        if let Some(r) = refresh_in {
            b["refresh_in"] = json!(r);
        }
        ResponseTemplate::new(200).set_body_json(b)
    };
    Mock::given(path("/msi/token"))
        .and(query_param("resource", "https://hinted"))
        .respond_with(body(Some(DAY / 2)))
        .mount(&server)
        .await;
    Mock::given(path("/msi/token"))
        .and(query_param("resource", "https://plain"))
        .respond_with(body(None))
        .mount(&server)
        .await;
    let cache = TokenCache::builder(app_service(&server, &clock).build().unwrap())
        .clock(clock.clone())
        .build();
    let hinted = cache
        .get_token(&TokenRequest::builder().resource("https://hinted").build())
        .await
        .unwrap();
    let plain = cache
        .get_token(&TokenRequest::builder().resource("https://plain").build())
        .await
        .unwrap();
    let at = |t: &token_core::Token| {
        t.refresh_at()
            .unwrap()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    assert_eq!(at(&hinted), now + DAY / 2);
    // The policy: a quarter of the day ahead, minus at most 5 min jitter.
    let plain_at = at(&plain);
    assert!(
        plain_at <= now + DAY * 3 / 4 && plain_at >= now + DAY * 3 / 4 - 300,
        "{}",
        plain_at - now
    );
}

fn gcp(server: &MockServer, clock: &ManualClock) -> token_http::GcpMetadataCredentialBuilder {
    GcpMetadataCredential::builder()
        .base_url(server.uri())
        .clock_arc(Arc::new(clock.clone()))
}

const GCP_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/token";

fn gcp_ok() -> ResponseTemplate {
    ResponseTemplate::new(200)
        .insert_header("Metadata-Flavor", "Google")
        .set_body_json(json!({"access_token": TOKEN, "expires_in": 3599, "token_type": "Bearer"}))
}

#[tokio::test]
async fn gcp_sends_metadata_flavor_and_scopes() {
    let server = MockServer::start().await;
    let clock = ManualClock::new();
    Mock::given(method("GET"))
        .and(path(GCP_PATH))
        .and(header("Metadata-Flavor", "Google"))
        .and(query_param(
            "scopes",
            "https://www.googleapis.com/auth/cloud-platform,https://www.googleapis.com/auth/pubsub",
        ))
        .respond_with(gcp_ok())
        .expect(1)
        .mount(&server)
        .await;
    let credential = gcp(&server, &clock).build().unwrap();
    assert_eq!(
        credential.id(),
        format!("gcp-metadata|{}|default", server.uri())
    );
    let request = TokenRequest::builder()
        .scope("https://www.googleapis.com/auth/pubsub")
        .scope("https://www.googleapis.com/auth/cloud-platform")
        .build();
    let token = credential.fetch(&request, None).await.unwrap();
    assert_eq!(lifetime(&token), Duration::from_secs(3599));
}

#[tokio::test]
async fn gcp_refuses_an_answer_without_metadata_flavor() {
    let server = MockServer::start().await;
    let clock = ManualClock::new();
    Mock::given(path(GCP_PATH))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"access_token": TOKEN, "expires_in": 3599})),
        )
        .mount(&server)
        .await;
    let e = gcp(&server, &clock)
        .build()
        .unwrap()
        .fetch(&TokenRequest::new(), None)
        .await
        .unwrap_err();
    assert!(!e.is_transient());
    assert_eq!(e.cause(), FailureCause::InvalidResponse);
    assert_eq!(e.status(), Some(200));
    assert_eq!(e.service(), Some("the Google metadata server"));
    assert!(
        e.to_string().contains("not the Google metadata server"),
        "{e}"
    );
    assert!(!e.to_string().contains(TOKEN));
}

#[tokio::test]
async fn gcp_unknown_account_is_permanent_and_503_is_retried() {
    let server = MockServer::start().await;
    let clock = ManualClock::new();
    let _driver = drive(&clock);
    Mock::given(path(
        "/computeMetadata/v1/instance/service-accounts/nobody@p.iam.gserviceaccount.com/token",
    ))
    .respond_with(
        ResponseTemplate::new(404)
            .insert_header("Metadata-Flavor", "Google")
            .insert_header("Content-Type", "text/html; charset=UTF-8")
            .set_body_string("<!DOCTYPE html><html><body>Not Found</body></html>"),
    )
    .mount(&server)
    .await;
    let e = gcp(&server, &clock)
        .service_account("nobody@p.iam.gserviceaccount.com")
        .build()
        .unwrap()
        .fetch(&TokenRequest::new(), None)
        .await
        .unwrap_err();
    assert!(!e.is_transient(), "{e}");
    assert!(e.to_string().contains("404"), "{e}");

    Mock::given(path(GCP_PATH))
        .respond_with(
            ResponseTemplate::new(503)
                .insert_header("Metadata-Flavor", "Google")
                .set_body_string("Service Unavailable"),
        )
        .up_to_n_times(2)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(path(GCP_PATH))
        .respond_with(gcp_ok())
        .with_priority(2)
        .mount(&server)
        .await;
    let before = requests(&server).await;
    gcp(&server, &clock)
        .build()
        .unwrap()
        .fetch(&TokenRequest::new(), None)
        .await
        .unwrap();
    assert_eq!(requests(&server).await - before, 3);
}

#[tokio::test]
async fn gcp_refuses_audiences_and_bad_accounts() {
    let server = MockServer::start().await;
    let clock = ManualClock::new();
    let credential = gcp(&server, &clock).build().unwrap();
    let e: CredentialError = credential
        .fetch(&TokenRequest::builder().audience("https://x").build(), None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("audience"), "{e}");
    assert!(gcp(&server, &clock).service_account("a/b").build().is_err());
    assert_eq!(requests(&server).await, 0);
}

#[tokio::test]
async fn a_metadata_endpoint_that_is_not_there_is_a_connect_failure_naming_it() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}{IMDS_PATH}");
    let e = AzureImdsCredential::builder()
        .endpoint(&url)
        .retry(RetryRules::none())
        .build()
        .unwrap()
        .fetch(&vault(), None)
        .await
        .unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert_eq!(e.cause(), FailureCause::Connect);
    assert_eq!((e.status(), e.code()), (None, None));
    assert_eq!(e.endpoint(), Some(url.as_str()));
    assert_eq!(e.service(), Some("Azure IMDS"));
    assert_eq!(
        e.to_string(),
        format!("could not connect to Azure IMDS at {url}: connection refused")
    );
}

#[tokio::test]
async fn app_service_errors_never_echo_the_identity_header() {
    let server = MockServer::start().await;
    let clock = ManualClock::new();
    // A broken endpoint that echoes the request's header in its error page.
    Mock::given(path("/msi/token"))
        .respond_with(
            ResponseTemplate::new(401)
                .set_body_string(format!("bad X-IDENTITY-HEADER {IDENTITY_HEADER}")),
        )
        .mount(&server)
        .await;
    let e = app_service(&server, &clock)
        .build()
        .unwrap()
        .fetch(&vault(), None)
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(401));
    let text = format!("{e} {e:?}");
    assert!(!text.contains(IDENTITY_HEADER), "{text}");
    assert!(text.contains("not quoted"), "{text}");
}
