//! `OAuthCredential::from_env_with` (the variables, their precedence and
//! errors) and `ChainCredential` (order, stickiness, error report,
//! selection), with in-process fake credentials for the chain.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use token_core::test_util::{FakeIdp, Mode};
use token_core::{Credential, CredentialError, TokenCache, TokenRequest};
use token_http::env::{
    AZURE_AUTHORITY_HOST, AZURE_CLIENT_CERTIFICATE_PATH, AZURE_CLIENT_ID,
    AZURE_FEDERATED_TOKEN_FILE, AZURE_TENANT_ID, ENV_CERTIFICATE_FILE, ENV_CLIENT_ASSERTION_FILE,
    ENV_CLIENT_ID, ENV_CLIENT_SECRET_FILE, ENV_TOKEN_URL,
};
use token_http::{ChainCredential, OAuthCredential};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("token-http-env-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn keys() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/keys")
}

async fn from(vars: &[(&str, &str)]) -> Result<OAuthCredential, token_http::ConfigError> {
    let vars: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    OAuthCredential::from_env_with(|name| vars.get(name).cloned())
        .await?
        .build()
}

#[tokio::test]
async fn azure_workload_identity_variables_make_an_assertion_file_credential_for_the_tenant() {
    let token_file = temp_dir("azure").join("azure-identity-token");
    let file = token_file.display().to_string();
    let credential = from(&[
        (AZURE_CLIENT_ID, "00000000-1111-2222-3333-444444444444"),
        (AZURE_TENANT_ID, "contoso.onmicrosoft.com"),
        (AZURE_FEDERATED_TOKEN_FILE, &file),
    ])
    .await
    .unwrap();
    assert_eq!(
        credential.token_url(),
        "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
    );
    assert_eq!(
        credential.client_id(),
        "00000000-1111-2222-3333-444444444444"
    );
    assert!(
        credential
            .id()
            .ends_with(&format!("|client_assertion|assertion=file:{file}")),
        "{}",
        credential.id()
    );

    // Another cloud, and our own variables win over Azure's.
    let ours = temp_dir("azure").join("ours");
    let credential = from(&[
        (AZURE_CLIENT_ID, "azure-client"),
        (ENV_CLIENT_ID, "our-client"),
        (AZURE_TENANT_ID, "t1"),
        (AZURE_AUTHORITY_HOST, "https://login.microsoftonline.us/"),
        (AZURE_FEDERATED_TOKEN_FILE, &file),
        (ENV_CLIENT_ASSERTION_FILE, &ours.display().to_string()),
    ])
    .await
    .unwrap();
    assert_eq!(
        credential.token_url(),
        "https://login.microsoftonline.us/t1/oauth2/v2.0/token"
    );
    assert_eq!(credential.client_id(), "our-client");
    assert!(credential.id().contains(&ours.display().to_string()));
}

#[tokio::test]
async fn a_secret_file_is_read_and_never_shown() {
    let path = temp_dir("secret").join("secret");
    std::fs::write(&path, "s3cret-from-file\n").unwrap();
    let credential = from(&[
        (ENV_TOKEN_URL, "https://idp.example/token"),
        (ENV_CLIENT_ID, "c"),
        (ENV_CLIENT_SECRET_FILE, &path.display().to_string()),
    ])
    .await
    .unwrap();
    assert!(credential.id().ends_with("|c|client_secret_basic"));
    assert!(!format!("{credential:?}").contains("s3cret"));

    std::fs::write(&path, "\n").unwrap();
    let e = from(&[
        (ENV_TOKEN_URL, "https://idp.example/token"),
        (ENV_CLIENT_ID, "c"),
        (ENV_CLIENT_SECRET_FILE, &path.display().to_string()),
    ])
    .await
    .unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains(ENV_CLIENT_SECRET_FILE) && text.contains("is empty"),
        "{text}"
    );
}

#[tokio::test]
async fn a_certificate_file_makes_private_key_jwt_with_its_thumbprint() {
    // Certificate and key in one PEM, as AZURE_CLIENT_CERTIFICATE_PATH has them.
    let pem = temp_dir("cert").join("client.pem");
    let both = std::fs::read_to_string(keys().join("rsa-test-only.crt")).unwrap()
        + &std::fs::read_to_string(keys().join("rsa-test-only.pem")).unwrap();
    std::fs::write(&pem, both).unwrap();
    for var in [ENV_CERTIFICATE_FILE, AZURE_CLIENT_CERTIFICATE_PATH] {
        let credential = from(&[
            (ENV_TOKEN_URL, "https://idp.example/token"),
            (ENV_CLIENT_ID, "c"),
            (var, &pem.display().to_string()),
        ])
        .await
        .unwrap();
        assert!(
            credential.id().contains("|private_key_jwt|x5t#S256="),
            "{}",
            credential.id()
        );
        assert!(!format!("{credential:?}").contains("PRIVATE KEY"));
    }
}

#[tokio::test]
async fn missing_or_conflicting_variables_are_errors_naming_them() {
    let e = from(&[(ENV_TOKEN_URL, "https://idp.example/token")])
        .await
        .unwrap_err();
    assert!(e.to_string().contains(ENV_CLIENT_ID), "{e}");
    let e = from(&[(ENV_CLIENT_ID, "c")]).await.unwrap_err();
    assert!(
        e.to_string().contains(ENV_TOKEN_URL) && e.to_string().contains(AZURE_TENANT_ID),
        "{e}"
    );
    let e = from(&[
        (ENV_CLIENT_ID, "c"),
        (ENV_TOKEN_URL, "https://idp.example/t"),
    ])
    .await
    .unwrap_err();
    assert!(e.to_string().contains("no client authentication"), "{e}");
    let e = from(&[
        (ENV_CLIENT_ID, "c"),
        (ENV_TOKEN_URL, "https://idp.example/t"),
        (ENV_CLIENT_SECRET_FILE, "/nonexistent/secret"),
        (AZURE_FEDERATED_TOKEN_FILE, "/var/run/token"),
    ])
    .await
    .unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains(ENV_CLIENT_SECRET_FILE) && text.contains(AZURE_FEDERATED_TOKEN_FILE),
        "{text}"
    );
    let e = from(&[
        (ENV_CLIENT_ID, "c"),
        (ENV_TOKEN_URL, "https://idp.example/t"),
        (ENV_CLIENT_SECRET_FILE, "/nonexistent/secret"),
    ])
    .await
    .unwrap_err();
    assert!(e.to_string().contains("/nonexistent/secret"), "{e}");
    let e = from(&[
        (ENV_CLIENT_ID, "c"),
        (AZURE_TENANT_ID, "../evil"),
        (AZURE_FEDERATED_TOKEN_FILE, "/var/run/token"),
    ])
    .await
    .unwrap_err();
    assert!(e.to_string().contains(AZURE_TENANT_ID), "{e}");
}

/// token-core's shared fake IdP with scripted answers (the last one
/// repeats), handing out `token-of-<id>` and counting its calls.
fn scripted(id: &str, answers: Vec<Result<(), CredentialError>>) -> Arc<FakeIdp> {
    let modes = answers.into_iter().map(|answer| match answer {
        Ok(()) => Mode::Issue(Some(Duration::from_secs(3600))),
        Err(e) => Mode::Fail(e),
    });
    Arc::new(
        FakeIdp::new()
            .with_id(id)
            .with_secret(format!("token-of-{id}"))
            .with_script(modes),
    )
}

fn permanent(message: &str) -> Result<(), CredentialError> {
    Err(CredentialError::permanent(message))
}

#[tokio::test]
async fn the_chain_tries_members_in_order_and_sticks_with_the_first_that_works() {
    let env = scripted("env-id", vec![permanent("env: not configured")]);
    let workload = scripted("workload-id", vec![Ok(()), permanent("revoked"), Ok(())]);
    let developer = scripted("dev-id", vec![Ok(())]);
    let chain = ChainCredential::builder()
        .selector_var(None)
        .member_arc("env", env.clone())
        .member_arc("workload", workload.clone())
        .member_arc("developer", developer.clone())
        .build()
        .unwrap();
    assert_eq!(
        chain.id(),
        "chain(env=env-id,workload=workload-id,developer=dev-id)"
    );
    assert_eq!(chain.active(), None);
    let request = TokenRequest::new();
    let token = chain.fetch(&request, None).await.unwrap();
    assert_eq!(token.secret().expose(), "token-of-workload-id");
    assert_eq!(chain.active(), Some("workload"));

    // Stuck: the member's own error, no wandering to the developer credential.
    let e = chain.fetch(&request, None).await.unwrap_err();
    assert_eq!(e.message(), "revoked");
    let token = chain.fetch(&request, None).await.unwrap();
    assert_eq!(token.secret().expose(), "token-of-workload-id");
    assert_eq!(
        (env.calls(), workload.calls(), developer.calls()),
        (1, 3, 0)
    );
}

#[tokio::test]
async fn when_every_member_fails_the_error_reports_each_one_in_order() {
    let chain = ChainCredential::builder()
        .selector_var(None)
        .member_arc(
            "env",
            scripted("a", vec![permanent("TOKEN_CACHE_CLIENT_ID is not set")]),
        )
        .member_arc(
            "workload",
            scripted(
                "b",
                vec![Err(CredentialError::transient("connection refused")
                    .with_retry_after(Duration::from_secs(7)))],
            ),
        )
        .build()
        .unwrap();
    let e = chain.fetch(&TokenRequest::new(), None).await.unwrap_err();
    let text = e.to_string();
    let env_at = text.find("[env] ").expect(&text);
    let workload_at = text.find("[workload] ").expect(&text);
    assert!(env_at < workload_at, "{text}");
    assert!(text.contains("TOKEN_CACHE_CLIENT_ID is not set"), "{text}");
    assert!(text.contains("connection refused"), "{text}");
    // One member could recover: the cache may retry the chain.
    assert!(e.is_transient());
    assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
    assert_eq!(chain.active(), None);

    let all_permanent = ChainCredential::builder()
        .selector_var(None)
        .member_arc("a", scripted("a", vec![permanent("no")]))
        .member_arc("b", scripted("b", vec![permanent("no")]))
        .build()
        .unwrap();
    let e = all_permanent
        .fetch(&TokenRequest::new(), None)
        .await
        .unwrap_err();
    assert!(!e.is_transient(), "{e}");
}

#[tokio::test]
async fn one_environment_variable_selects_the_member_that_runs() {
    // A variable of this test's own: tests run in parallel in one process.
    let var = "TOKEN_HTTP_TEST_CHAIN_SELECTOR";
    std::env::set_var(var, "workload");
    let developer = scripted("dev-id", vec![Ok(())]);
    let workload = scripted("workload-id", vec![permanent("federation not set up")]);
    let chain = ChainCredential::builder()
        .selector_var(Some(var))
        .member_arc("developer", developer.clone())
        .member_arc("workload", workload.clone())
        .build()
        .unwrap();
    // The selected member alone: its id, and its error, not a fallback.
    assert_eq!(chain.id(), "workload-id");
    assert_eq!(chain.names().collect::<Vec<_>>(), ["workload"]);
    let e = chain.fetch(&TokenRequest::new(), None).await.unwrap_err();
    assert!(e.to_string().contains("federation not set up"), "{e}");
    assert_eq!(developer.calls(), 0);

    std::env::set_var(var, "prod");
    let e = ChainCredential::builder()
        .selector_var(Some(var))
        .member_arc("developer", developer.clone())
        .member_arc("workload", workload.clone())
        .build()
        .unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains(var) && text.contains("`prod`") && text.contains("developer, workload"),
        "{text}"
    );
    std::env::remove_var(var);
}

#[tokio::test]
async fn a_cached_chain_asks_its_stuck_member_once_per_token() {
    let env = scripted("env-id", vec![permanent("not configured")]);
    let workload = scripted("workload-id", vec![Ok(())]);
    let chain = ChainCredential::builder()
        .selector_var(None)
        .member_arc("env", env.clone())
        .member_arc("workload", workload.clone())
        .build()
        .unwrap();
    let cache = TokenCache::builder(chain).build();
    let request = TokenRequest::builder().scope("orders.read").build();
    for _ in 0..50 {
        let token = cache.get_token(&request).await.unwrap();
        assert_eq!(token.secret().expose(), "token-of-workload-id");
    }
    assert_eq!((env.calls(), workload.calls()), (1, 1));
}

#[test]
fn a_chain_needs_members_with_unique_names() {
    assert!(ChainCredential::builder().build().is_err());
    let e = ChainCredential::builder()
        .selector_var(None)
        .member_arc("a", scripted("x", vec![Ok(())]))
        .member_arc("a", scripted("y", vec![Ok(())]))
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("`a`"), "{e}");
}
