//! Against a real authorization server: panva's `oidc-provider` (npm),
//! configured by `tests/idp/server.js`, installed by `cargo xtask test`
//! (`npm ci` in `tests/idp`), started here on a free loopback port.
//!
//! Without node or the installed package the tests skip loudly; under `CI`
//! that is a failure.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use token_core::{Credential, TokenCache, TokenRequest};
use token_http::{OAuthCredential, PrivateKey, ServerMetadata};

/// The running server; killed when the test process exits (it also exits by
/// itself when its standard input closes).
struct Idp {
    issuer: String,
    child: Mutex<Child>,
    _stdin: Mutex<ChildStdin>,
}

impl Drop for Idp {
    fn drop(&mut self) {
        if let Ok(mut child) = self.child.lock() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests")
}

fn start() -> Result<Idp, String> {
    let idp_dir = dir().join("idp");
    if !idp_dir.join("node_modules/oidc-provider").exists() {
        return Err(format!(
            "oidc-provider is not installed: run `cargo xtask test`, or `npm ci` in {}",
            idp_dir.display()
        ));
    }
    let mut child = Command::new("node")
        .arg("server.js")
        .arg(dir().join("keys"))
        .current_dir(&idp_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("could not start `node` (is Node.js installed?): {e}"))?;
    let stdin = child.stdin.take().ok_or("no stdin")?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .map_err(|e| format!("reading the server's ready line: {e}"))?;
    let issuer = line
        .trim()
        .strip_prefix("READY ")
        .ok_or_else(|| {
            let _ = child.kill();
            format!("the IdP did not start (said {line:?}); see its output above")
        })?
        .to_owned();
    Ok(Idp {
        issuer,
        child: Mutex::new(child),
        _stdin: Mutex::new(stdin),
    })
}

/// The shared server, or `None` (after saying why) when it cannot run here.
fn idp() -> Option<&'static Idp> {
    static IDP: OnceLock<Result<Idp, String>> = OnceLock::new();
    match IDP.get_or_init(start) {
        Ok(idp) => Some(idp),
        Err(why) => {
            if std::env::var_os("CI").is_some() {
                panic!("the oidc-provider test IdP is required under CI: {why}");
            }
            eprintln!("SKIPPED: real-IdP test, because {why}");
            None
        }
    }
}

fn token_url(idp: &Idp) -> String {
    format!("{}/token", idp.issuer)
}

async fn token_requests(idp: &Idp) -> u64 {
    let text = reqwest::get(format!("{}/__test/token-requests", idp.issuer))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let body: serde_json::Value = serde_json::from_str(&text).unwrap();
    body["count"].as_u64().unwrap()
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
    let Some(idp) = idp() else { return };
    // The secret has `:`, `%`, `+`, `/`, a space, `&` and `=`: only the §2.3.1
    // encoding gets it through.
    obtains_a_token(
        OAuthCredential::client_credentials(token_url(idp), "basic-client")
            .client_secret("basic:secret%+/ ok~&=")
            .build()
            .unwrap(),
    )
    .await;
}

#[tokio::test]
async fn client_secret_post_obtains_a_token_from_oidc_provider() {
    let Some(idp) = idp() else { return };
    obtains_a_token(
        OAuthCredential::client_credentials(token_url(idp), "post-client")
            .client_secret_post("post-secret-value")
            .build()
            .unwrap(),
    )
    .await;
}

#[tokio::test]
async fn private_key_jwt_rs256_and_es256_obtain_tokens_from_oidc_provider() {
    let Some(idp) = idp() else { return };
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
        let credential = OAuthCredential::client_credentials(token_url(idp), client)
            .private_key_jwt(key)
            .build()
            .unwrap();
        obtains_a_token(credential).await;
    }
    // Twice with one key: each assertion has a fresh jti, which the server
    // checks for replay.
    let again = OAuthCredential::client_credentials(token_url(idp), "jwt-es-client")
        .private_key_jwt(PrivateKey::es256_from_pem(include_str!("keys/ec-test-only.pem")).unwrap())
        .build()
        .unwrap();
    for _ in 0..2 {
        again.fetch(&TokenRequest::new(), None).await.unwrap();
    }
}

#[tokio::test]
async fn a_wrong_secret_is_a_permanent_invalid_client_error() {
    let Some(idp) = idp() else { return };
    for credential in [
        OAuthCredential::client_credentials(token_url(idp), "basic-client")
            .client_secret("wrong-secret-123"),
        OAuthCredential::client_credentials(token_url(idp), "post-client")
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
        OAuthCredential::client_credentials(token_url(idp), "basic-client")
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
    if idp().is_none() {
        return;
    }
    // A server of its own, so its count of token calls is this test's alone.
    let own = start().expect("a second IdP starts like the first");
    let credential = OAuthCredential::client_credentials(token_url(&own), "post-client")
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
        token_requests(&own).await,
        1,
        "500 requests, one token call at the server"
    );
    assert_eq!(cache.stats().idp_calls, 1, "{:?}", cache.stats());
}

#[tokio::test]
async fn discovery_finds_oidc_providers_token_endpoint() {
    let Some(idp) = idp() else { return };
    let metadata = ServerMetadata::discover(&idp.issuer).await.unwrap();
    assert_eq!(metadata.token_endpoint(), token_url(idp));
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
