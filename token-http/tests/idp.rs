//! Against a real authorization server: panva's `oidc-provider` (npm),
//! configured by `tests/idp/server.js`, installed by `cargo xtask test`
//! (`npm ci` in `tests/idp`), started by token-testkit's `Idp` on free
//! loopback ports (HTTP, and HTTPS asking for client certificates).
//!
//! Without node or the installed package the tests skip loudly; under `CI`
//! that is a failure.

use std::path::PathBuf;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use token_core::{CacheKey, Credential, Secret, TokenCache, TokenRequest};
use token_http::{
    AssertionFn, Certificate, ClientCertificate, OAuthCredential, PrivateKey, ServerMetadata,
};
use token_testkit::Idp;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests")
}

async fn obtains_a_token(credential: OAuthCredential) {
    let request = TokenRequest::builder().scope("orders.read").build();
    let token = credential
        .fetch(&request, None)
        .await
        .unwrap_or_else(|e| panic!("{credential:?}: {e}"));
    assert!(!token.secret().is_empty());
    assert_eq!(token.token_type().as_str(), "Bearer");
    assert_eq!(token.scope(), Some("orders.read"));
    let lifetime = token
        .expires_at()
        .unwrap()
        .duration_since(token.obtained_at())
        .unwrap();
    assert!(
        lifetime <= Duration::from_secs(600) && lifetime > Duration::from_secs(500),
        "{lifetime:?}"
    );
}

#[tokio::test]
async fn client_secret_basic_obtains_a_token_from_oidc_provider() {
    let Some(idp) = Idp::shared() else { return };
    // The secret has `:`, `%`, `+`, `/`, a space, `&` and `=`: only the §2.3.1
    // encoding gets it through.
    obtains_a_token(
        OAuthCredential::client_credentials(idp.token_url(), "basic-client")
            .client_secret("basic:secret%+/ ok~&=")
            .build()
            .unwrap(),
    )
    .await;
}

#[tokio::test]
async fn client_secret_post_obtains_a_token_from_oidc_provider() {
    let Some(idp) = Idp::shared() else { return };
    obtains_a_token(
        OAuthCredential::client_credentials(idp.token_url(), "post-client")
            .client_secret_post("post-secret-value")
            .build()
            .unwrap(),
    )
    .await;
}

#[tokio::test]
async fn private_key_jwt_rs256_and_es256_obtain_tokens_from_oidc_provider() {
    let Some(idp) = Idp::shared() else { return };
    let rsa = PrivateKey::rs256_from_pem(include_str!("keys/rsa-test-only.pem"))
        .unwrap()
        .with_key_id("rsa-1");
    let rsa_pkcs1 =
        PrivateKey::rs256_from_pem(include_str!("keys/rsa-pkcs1-test-only.pem")).unwrap();
    let ec = PrivateKey::es256_from_pem(include_str!("keys/ec-test-only.pem"))
        .unwrap()
        .with_key_id("ec-1");
    for (client, key) in [
        ("jwt-rs-client", rsa),
        ("jwt-rs-client", rsa_pkcs1),
        ("jwt-es-client", ec),
    ] {
        let credential = OAuthCredential::client_credentials(idp.token_url(), client)
            .private_key_jwt(key)
            .build()
            .unwrap();
        obtains_a_token(credential).await;
    }
    // Twice with one key: each assertion has a fresh jti, which the server
    // checks for replay.
    let again = OAuthCredential::client_credentials(idp.token_url(), "jwt-es-client")
        .private_key_jwt(PrivateKey::es256_from_pem(include_str!("keys/ec-test-only.pem")).unwrap())
        .build()
        .unwrap();
    for _ in 0..2 {
        again.fetch(&TokenRequest::new(), None).await.unwrap();
    }
}

#[tokio::test]
async fn a_wrong_secret_is_a_permanent_invalid_client_error() {
    let Some(idp) = Idp::shared() else { return };
    for credential in [
        OAuthCredential::client_credentials(idp.token_url(), "basic-client")
            .client_secret("wrong-secret-123"),
        OAuthCredential::client_credentials(idp.token_url(), "post-client")
            .client_secret_post("wrong-secret-123"),
    ] {
        let credential = credential.build().unwrap();
        let e = credential
            .fetch(&TokenRequest::new(), None)
            .await
            .unwrap_err();
        assert!(!e.is_transient(), "{e}");
        assert_eq!(e.code(), Some("invalid_client"), "{e}");
        let text = format!("{e} {e:?}");
        assert!(
            text.contains("invalid_client") && text.contains("401"),
            "{text}"
        );
        assert!(!text.contains("wrong-secret-123"), "{text}");
    }
    // And through the cache: the same error, not retried in a loop.
    let cache = TokenCache::builder(
        OAuthCredential::client_credentials(idp.token_url(), "basic-client")
            .client_secret("wrong-secret-123")
            .build()
            .unwrap(),
    )
    .build();
    let e = cache.get_token(&TokenRequest::new()).await.unwrap_err();
    assert!(
        !e.is_transient() && e.to_string().contains("invalid_client"),
        "{e}"
    );
}

#[tokio::test]
async fn the_cache_makes_one_token_call_for_many_requests() {
    // A server of its own, so its count of token calls is this test's alone.
    let Some(own) = Idp::private() else { return };
    let credential = OAuthCredential::client_credentials(own.token_url(), "post-client")
        .client_secret_post("post-secret-value")
        .build()
        .unwrap();
    let cache = TokenCache::builder(credential).build();
    let request = TokenRequest::builder()
        .scopes(["orders.read", "orders.write"])
        .build();
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let cache = cache.clone();
            let request = request.clone();
            tokio::spawn(
                async move { cache.get_token(&request).await.map(|t| t.to_access_token()) },
            )
        })
        .collect();
    let mut tokens = Vec::new();
    for t in tasks {
        tokens.push(t.await.unwrap().unwrap());
    }
    for _ in 0..300 {
        tokens.push(cache.get_token(&request).await.unwrap().to_access_token());
    }
    assert!(tokens.iter().all(|t| t.same_secret(&tokens[0])));
    assert_eq!(
        own.token_requests(),
        1,
        "500 requests, one token call at the server"
    );
    assert_eq!(cache.stats().idp_calls, 1, "{:?}", cache.stats());
}

#[tokio::test]
async fn discovery_finds_oidc_providers_token_endpoint() {
    let Some(idp) = Idp::shared() else { return };
    let metadata = ServerMetadata::discover(idp.issuer()).await.unwrap();
    assert_eq!(metadata.token_endpoint(), idp.token_url());
    assert!(metadata
        .auth_methods_supported()
        .iter()
        .any(|m| m == "private_key_jwt"));
    let credential = OAuthCredential::from_metadata(
        &metadata,
        token_http::Grant::ClientCredentials,
        "post-client",
    )
    .client_secret_post("post-secret-value")
    .build()
    .unwrap();
    credential.fetch(&TokenRequest::new(), None).await.unwrap();
}

fn key_file(name: &str) -> String {
    std::fs::read_to_string(dir().join("keys").join(name)).unwrap()
}

/// A client assertion for `client_id` signed with the test EC key (`kid`
/// ec-1), minted the way an external signer would (here with `ring`).
fn es256_assertion(client_id: &str, audience: &str) -> String {
    use ring::rand::{SecureRandom, SystemRandom};
    use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    let pem = key_file("ec-test-only.pem");
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    let rng = SystemRandom::new();
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der, &rng).unwrap();
    let mut jti = [0u8; 16];
    rng.fill(&mut jti).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = serde_json::json!({ "alg": "ES256", "typ": "JWT", "kid": "ec-1" });
    let claims = serde_json::json!({
        "iss": client_id, "sub": client_id, "aud": audience,
        "jti": URL_SAFE_NO_PAD.encode(jti), "iat": now, "exp": now + 60,
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = key.sign(&rng, signing_input.as_bytes()).unwrap();
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

#[tokio::test]
async fn an_assertion_file_rotated_between_two_fetches_sends_the_new_assertion() {
    let Some(idp) = Idp::shared() else { return };
    let dir = std::env::temp_dir().join(format!("token-http-idp-assertion-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("token");
    let credential = OAuthCredential::client_credentials(idp.token_url(), "jwt-es-client")
        .client_assertion_file(&file)
        .build()
        .unwrap();
    assert!(credential.id().contains(&file.display().to_string()));

    let first = es256_assertion("jwt-es-client", &idp.token_url());
    std::fs::write(&file, format!("{first}\n")).unwrap();
    let request = TokenRequest::builder().scope("orders.read").build();
    credential.fetch(&request, None).await.unwrap();

    // The server refuses a replayed assertion (same jti): a credential that
    // read the file once would fail here.
    let replay = credential.fetch(&request, None).await.unwrap_err();
    assert_eq!(replay.code(), Some("invalid_client"), "{replay}");
    assert!(!format!("{replay} {replay:?}").contains(&first));

    // Rotated on disk: the next fetch reads and sends the new one.
    let second = es256_assertion("jwt-es-client", &idp.token_url());
    std::fs::write(&file, &second).unwrap();
    credential.fetch(&request, None).await.unwrap();

    // Gone: a clear error naming the path, the last assertion not reused.
    std::fs::remove_file(&file).unwrap();
    let e = credential.fetch(&request, None).await.unwrap_err();
    assert!(e.to_string().contains(&file.display().to_string()), "{e}");
    assert!(!e.is_transient(), "{e}");
}

#[tokio::test]
async fn an_assertion_callback_is_asked_for_every_fetch() {
    let Some(idp) = Idp::shared() else { return };
    let audience = idp.token_url();
    let credential = OAuthCredential::client_credentials(idp.token_url(), "jwt-es-client")
        .client_assertion(AssertionFn::new("test-minter", move || {
            let assertion = es256_assertion("jwt-es-client", &audience);
            async move { Ok(Secret::new(assertion)) }
        }))
        .build()
        .unwrap();
    assert!(credential
        .id()
        .ends_with("|client_assertion|assertion=fn:test-minter"));
    for _ in 0..2 {
        obtains_a_token_with(&credential).await;
    }
}

async fn obtains_a_token_with(credential: &OAuthCredential) -> token_core::AccessToken {
    let request = TokenRequest::builder().scope("orders.read").build();
    credential
        .fetch(&request, None)
        .await
        .unwrap_or_else(|e| panic!("{credential:?}: {e}"))
}

fn jwt_certificate_key() -> PrivateKey {
    PrivateKey::rs256_from_pem(&key_file("rsa-test-only.pem"))
        .unwrap()
        .with_certificate(Certificate::from_pem(&key_file("rsa-test-only.crt")).unwrap())
        .unwrap()
}

#[tokio::test]
async fn private_key_jwt_names_its_certificate_by_x5t_s256_and_sends_x5t_and_x5c_when_asked() {
    let Some(idp) = Idp::shared() else { return };
    // The server checks the header against the registered certificate.
    let credential = OAuthCredential::client_credentials(idp.token_url(), "cert-client")
        .private_key_jwt(jwt_certificate_key())
        .build()
        .unwrap();
    obtains_a_token_with(&credential).await;
    let thumbprint = jwt_certificate_key()
        .certificate()
        .unwrap()
        .thumbprint_sha256()
        .to_owned();
    assert!(credential
        .id()
        .ends_with(&format!("|private_key_jwt|x5t#S256={thumbprint}")));

    let with_chain = OAuthCredential::client_credentials(idp.token_url(), "cert-x5c-client")
        .private_key_jwt(jwt_certificate_key().with_x5t(true).with_x5c(true))
        .build()
        .unwrap();
    obtains_a_token_with(&with_chain).await;

    // Without the chain, the client that requires it is refused.
    let without = OAuthCredential::client_credentials(idp.token_url(), "cert-x5c-client")
        .private_key_jwt(jwt_certificate_key().with_x5t(true))
        .build()
        .unwrap();
    let e = without.fetch(&TokenRequest::new(), None).await.unwrap_err();
    assert_eq!(e.code(), Some("invalid_client"), "{e}");
}

#[test]
fn a_certificate_that_does_not_hold_the_key_is_refused() {
    let e = PrivateKey::es256_from_pem(&key_file("ec-test-only.pem"))
        .unwrap()
        .with_certificate(Certificate::from_pem(&key_file("rsa-test-only.crt")).unwrap())
        .unwrap_err();
    assert!(e.to_string().contains("does not hold"), "{e}");
    let e = ClientCertificate::from_pem_parts(
        &key_file("mtls-client-test-only.pem"),
        &key_file("mtls-other-test-only.pem"),
    )
    .unwrap_err();
    assert!(e.to_string().contains("does not hold"), "{e}");
}

fn mtls_credential(idp: &Idp, client_id: &str, pem_file: &str) -> OAuthCredential {
    let certificate = ClientCertificate::from_pem(&key_file(pem_file)).unwrap();
    let builder =
        OAuthCredential::client_credentials(format!("{}/token", idp.tls_base()), client_id)
            .root_certificate_pem(key_file("ca-test-only.crt"));
    let builder = if client_id == "self-signed-client" {
        builder.self_signed_tls_client_auth(certificate)
    } else {
        builder.tls_client_auth(certificate)
    };
    builder.build().unwrap()
}

#[tokio::test]
async fn mutual_tls_client_auth_obtains_tokens_bound_to_the_certificate() {
    let Some(idp) = Idp::shared() else { return };
    for (client, file) in [
        ("mtls-client", "mtls-client-test-only.pem"),
        ("self-signed-client", "self-signed-client-test-only.pem"),
    ] {
        let credential = mtls_credential(idp, client, file);
        let token = obtains_a_token_with(&credential).await;
        let thumbprint = ClientCertificate::from_pem(&key_file(file))
            .unwrap()
            .certificate()
            .thumbprint_sha256()
            .to_owned();
        let record = idp.introspect(token.secret().expose()).await;
        assert_eq!(record["active"], true, "{record}");
        assert_eq!(record["client_id"], client, "{record}");
        assert_eq!(record["cnf"]["x5t#S256"], thumbprint.as_str(), "{record}");
        assert!(credential.id().contains(&format!("x5t#S256={thumbprint}")));
        assert!(!format!("{credential:?}").contains("PRIVATE KEY"));
    }
}

#[tokio::test]
async fn mutual_tls_with_an_unregistered_certificate_is_refused() {
    let Some(idp) = Idp::shared() else { return };
    // CA-issued, but not the subject `mtls-client` registered.
    let e = mtls_credential(idp, "mtls-client", "mtls-other-test-only.pem")
        .fetch(&TokenRequest::new(), None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("invalid_client"), "{e}");
    // Self-signed, but another certificate than the registered one.
    let e = mtls_credential(idp, "self-signed-client", "mtls-client-test-only.pem")
        .fetch(&TokenRequest::new(), None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("invalid_client"), "{e}");
}

#[tokio::test]
async fn tokens_bound_to_one_certificate_never_share_a_cache_key_with_another() {
    let Some(idp) = Idp::shared() else { return };
    let a = mtls_credential(idp, "mtls-client", "mtls-client-test-only.pem");
    let b = mtls_credential(idp, "mtls-client", "mtls-other-test-only.pem");
    let request = TokenRequest::builder().scope("orders.read").build();
    assert_ne!(
        CacheKey::new(a.id(), &request),
        CacheKey::new(b.id(), &request)
    );
    // And the id is the same in every process for the same certificate.
    let again = mtls_credential(idp, "mtls-client", "mtls-client-test-only.pem");
    assert_eq!(a.id(), again.id());
}

#[tokio::test]
async fn from_env_with_an_issuer_and_a_federated_token_file_obtains_tokens() {
    let Some(idp) = Idp::shared() else { return };
    let dir = std::env::temp_dir().join(format!("token-http-idp-env-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("azure-identity-token");
    let vars = std::collections::HashMap::from([
        ("TOKEN_CACHE_ISSUER", idp.issuer().to_owned()),
        ("AZURE_CLIENT_ID", "jwt-es-client".to_owned()),
        ("AZURE_FEDERATED_TOKEN_FILE", file.display().to_string()),
    ]);
    let credential = OAuthCredential::from_env_with(|name| vars.get(name).cloned())
        .await
        .unwrap()
        .build()
        .unwrap();
    assert_eq!(credential.token_url(), idp.token_url());
    for _ in 0..2 {
        std::fs::write(&file, es256_assertion("jwt-es-client", &idp.token_url())).unwrap();
        obtains_a_token_with(&credential).await;
    }
}

#[tokio::test]
async fn discovery_sends_mtls_clients_to_the_published_mtls_endpoint() {
    let Some(idp) = Idp::shared() else { return };
    let metadata = ServerMetadata::discover(idp.issuer()).await.unwrap();
    let alias = format!("{}/token", idp.tls_base());
    assert_eq!(metadata.mtls_token_endpoint(), Some(alias.as_str()));
    let credential = OAuthCredential::from_metadata(
        &metadata,
        token_http::Grant::ClientCredentials,
        "mtls-client",
    )
    .tls_client_auth(ClientCertificate::from_pem(&key_file("mtls-client-test-only.pem")).unwrap())
    .root_certificate_pem(key_file("ca-test-only.crt"))
    .build()
    .unwrap();
    assert_eq!(credential.token_url(), alias);
    obtains_a_token_with(&credential).await;
    // Other methods keep the plain endpoint.
    let plain = OAuthCredential::from_metadata(
        &metadata,
        token_http::Grant::ClientCredentials,
        "post-client",
    )
    .client_secret_post("post-secret-value")
    .build()
    .unwrap();
    assert_eq!(plain.token_url(), idp.token_url());
}
