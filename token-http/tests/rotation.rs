//! Secrets, keys and certificates that rotate on disk without a restart
//! (issue 17, item 2): against the real authorization server
//! (`tests/idp/server.js`: `rotating-*` clients whose accepted secrets the
//! test changes, and which secret each token request used), and against a
//! wiremock endpoint where a file must change while a request is in flight.
//!
//! Without node or the installed package the real-IdP tests skip loudly;
//! under `CI` that is a failure.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde_json::{json, Value};
use token_core::{Credential, TokenRequest};
use token_http::{Certificate, ConfigError, OAuthCredential, PrivateKeyFile, SigningAlgorithm};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use token_testkit::Idp;

/// The shared oidc-provider, or `None` after saying why (a failure under
/// CI).
fn idp() -> Option<&'static Idp> {
    Idp::shared()
}

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests")
}

fn token_url(idp: &Idp) -> String {
    idp.token_url()
}

fn key_file(name: &str) -> String {
    std::fs::read_to_string(dir().join("keys").join(name)).unwrap()
}

/// A fresh directory for one test's files.
fn temp_dir(test: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("token-http-rotation-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(path: &Path, contents: &str) {
    std::fs::write(path, contents).unwrap();
}

async fn post_json(idp: &Idp, path: &str, body: Value) -> Value {
    let response = reqwest::Client::new()
        .post(format!("{}{path}", idp.issuer()))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status();
    assert!(status.is_success(), "{path}: {status}");
    serde_json::from_str(&response.text().await.unwrap()).unwrap()
}

async fn get_json(url: String) -> Value {
    let text = reqwest::get(url).await.unwrap().text().await.unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Sets the secrets `client_id` (a `rotating-*` client) accepts from now on.
async fn accept_secrets(idp: &Idp, client_id: &str, secrets: &[&str]) {
    post_json(
        idp,
        "/__test/client-secrets",
        json!({ "client_id": client_id, "secrets": secrets }),
    )
    .await;
}

/// `{ "uses": { <secret>: n }, "refused": n }` for a rotating client.
async fn secret_uses(idp: &Idp, client_id: &str) -> Value {
    get_json(format!(
        "{}/__test/secret-uses?client_id={client_id}",
        idp.issuer()
    ))
    .await
}

fn scope() -> TokenRequest {
    TokenRequest::builder().scope("orders.read").build()
}

fn secret_file_credential(idp: &Idp, client_id: &str, path: &Path) -> OAuthCredential {
    OAuthCredential::client_credentials(token_url(idp), client_id)
        .client_secret_file(path)
        .build()
        .unwrap()
}

#[tokio::test]
async fn overlap_rotation_sends_the_new_secret_at_the_next_fetch_and_keeps_the_id() {
    let Some(idp) = idp() else { return };
    let client = "rotating-overlap";
    accept_secrets(idp, client, &["overlap-old-1"]).await;
    let path = temp_dir("overlap").join("secret");
    write(&path, "overlap-old-1\n");
    let credential = secret_file_credential(idp, client, &path);
    let id = credential.id().to_owned();
    credential.fetch(&scope(), None).await.unwrap();

    // The IdP accepts both, then the file is updated.
    accept_secrets(idp, client, &["overlap-old-1", "overlap-new-22"]).await;
    write(&path, "overlap-new-22\n");
    credential.fetch(&scope(), None).await.unwrap();

    assert_eq!(
        secret_uses(idp, client).await,
        json!({ "uses": { "overlap-old-1": 1, "overlap-new-22": 1 }, "refused": 0 })
    );
    assert_eq!(credential.id(), id, "the id changed with the secret");
    assert_eq!(credential.watched_files(), vec![path]);
}

#[tokio::test]
async fn after_the_idp_dropped_the_old_secret_the_next_fetch_sends_the_new_one() {
    let Some(idp) = idp() else { return };
    let client = "rotating-dropped";
    accept_secrets(idp, client, &["dropped-old"]).await;
    let path = temp_dir("dropped").join("secret");
    write(&path, "dropped-old");
    let credential = secret_file_credential(idp, client, &path);
    credential.fetch(&scope(), None).await.unwrap();

    write(&path, "dropped-new-secret");
    accept_secrets(idp, client, &["dropped-new-secret"]).await;
    credential.fetch(&scope(), None).await.unwrap();

    assert_eq!(
        secret_uses(idp, client).await,
        json!({ "uses": { "dropped-old": 1, "dropped-new-secret": 1 }, "refused": 0 })
    );
}

#[tokio::test]
async fn a_secret_rotated_while_a_request_is_in_flight_is_retried_once_after_invalid_client() {
    let Some(idp) = idp() else { return };
    let client = "rotating-in-flight";
    accept_secrets(idp, client, &["in-flight-old"]).await;
    let path = temp_dir("in-flight").join("secret");
    write(&path, "in-flight-old\n");
    let credential = Arc::new(secret_file_credential(idp, client, &path));

    // The IdP holds the next request, sent with the old secret; meanwhile
    // the file is rotated and the IdP drops the old secret.
    post_json(idp, "/__test/hold", json!({ "client_id": client })).await;
    let fetch = tokio::spawn({
        let credential = credential.clone();
        async move { credential.fetch(&scope(), None).await }
    });
    wait_until_held(idp, client).await;
    write(&path, "in-flight-new\n");
    accept_secrets(idp, client, &["in-flight-new"]).await;
    post_json(idp, "/__test/release", json!({ "client_id": client })).await;

    let token = fetch.await.unwrap();
    assert!(token.is_ok(), "{:?}", token.err());
    assert_eq!(
        secret_uses(idp, client).await,
        json!({ "uses": { "in-flight-new": 1 }, "refused": 1 })
    );
}

async fn wait_until_held(idp: &Idp, client: &str) {
    for _ in 0..1000 {
        let held: Value =
            get_json(format!("{}/__test/held?client_id={client}", idp.issuer())).await;
        if held["held"] == true {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the token request never reached the IdP");
}

#[tokio::test]
async fn invalid_client_with_the_file_unchanged_is_not_retried() {
    let Some(idp) = idp() else { return };
    let client = "rotating-unchanged";
    accept_secrets(idp, client, &["the-right-secret"]).await;
    let path = temp_dir("unchanged").join("secret");
    write(&path, "a-wrong-secret\n");
    let credential = secret_file_credential(idp, client, &path);

    let e = credential.fetch(&scope(), None).await.unwrap_err();
    assert_eq!(e.code(), Some("invalid_client"), "{e}");
    assert!(!e.is_transient(), "{e}");
    assert_eq!(
        secret_uses(idp, client).await,
        json!({ "uses": {}, "refused": 1 }),
        "exactly one token request"
    );
}

#[tokio::test]
async fn a_half_written_or_empty_file_keeps_the_last_good_secret() {
    let Some(idp) = idp() else { return };
    let client = "rotating-half-written";
    accept_secrets(idp, client, &["half-good-secret"]).await;
    let path = temp_dir("half-written").join("secret");
    write(&path, "half-good-secret\n");
    let credential = secret_file_credential(idp, client, &path);
    credential.fetch(&scope(), None).await.unwrap();

    // Truncated by `>` before the new secret is written; a file with a
    // stray second line; a missing file (deleted, not yet re-created).
    for bad in ["", "\n", "half-new\nsecr"] {
        write(&path, bad);
        credential.fetch(&scope(), None).await.unwrap();
    }
    std::fs::remove_file(&path).unwrap();
    credential.fetch(&scope(), None).await.unwrap();

    assert_eq!(
        secret_uses(idp, client).await,
        json!({ "uses": { "half-good-secret": 5 }, "refused": 0 })
    );
}

#[tokio::test]
async fn a_rotated_private_key_file_is_used_at_the_next_fetch() {
    let Some(idp) = idp() else { return };
    // `rotating-jwt-client` registers only the self-signed certificate's
    // RSA key; the file starts with another RSA key.
    let path = temp_dir("jwt-key").join("key.pem");
    write(&path, &key_file("rsa-test-only.pem"));
    let credential = OAuthCredential::client_credentials(token_url(idp), "rotating-jwt-client")
        .private_key_jwt_file(PrivateKeyFile::new(&path, SigningAlgorithm::Rs256))
        .build()
        .unwrap();
    let id = credential.id().to_owned();
    let e = credential.fetch(&scope(), None).await.unwrap_err();
    assert_eq!(e.code(), Some("invalid_client"), "{e}");

    write(&path, &key_file("self-signed-client-test-only.pem"));
    credential.fetch(&scope(), None).await.unwrap();

    assert_eq!(
        secret_uses(idp, "rotating-jwt-client").await,
        json!({ "uses": { "private_key_jwt": 1 }, "refused": 1 })
    );
    assert_eq!(credential.id(), id);
}

#[tokio::test]
async fn rotated_mtls_files_rebuild_the_identity_and_report_the_binding_change() {
    let Some(idp) = idp() else { return };
    // `mtls-client` is registered by subject CN=mtls-client; the files
    // start with the CN=other-client certificate.
    let dir = temp_dir("mtls");
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    let other = key_file("mtls-other-test-only.pem");
    write(&cert, &other);
    write(&key, &other);
    let credential =
        OAuthCredential::client_credentials(format!("{}/token", idp.tls_base()), "mtls-client")
            .root_certificate_pem(key_file("ca-test-only.crt"))
            .tls_client_auth_files(&cert, &key)
            .build()
            .unwrap();
    let id = credential.id().to_owned();
    let other_thumbprint = Certificate::from_pem(&other)
        .unwrap()
        .thumbprint_sha256()
        .to_owned();
    assert!(id.contains(&other_thumbprint), "{id}");
    assert_eq!(credential.certificate_thumbprint(), Some(other_thumbprint));
    assert!(!credential.binding_changed());
    assert_eq!(credential.watched_files(), vec![cert.clone(), key.clone()]);
    let e = credential.fetch(&scope(), None).await.unwrap_err();
    assert_eq!(e.code(), Some("invalid_client"), "{e}");

    // The certificate is written before the key: until both agree, the
    // last good pair stays (and is refused by the server).
    let mtls = key_file("mtls-client-test-only.pem");
    write(&cert, &mtls);
    assert!(credential.fetch(&scope(), None).await.is_err());
    assert!(!credential.binding_changed());
    write(&key, &mtls);
    let token = credential.fetch(&scope(), None).await.unwrap();
    assert!(!token.secret().is_empty());

    let thumbprint = Certificate::from_pem(&mtls)
        .unwrap()
        .thumbprint_sha256()
        .to_owned();
    assert_eq!(credential.certificate_thumbprint(), Some(thumbprint));
    assert!(credential.binding_changed());
    assert_eq!(
        credential.id(),
        id,
        "the id keeps the build-time thumbprint"
    );
}

// --- against wiremock: files that change while a request is in flight ---

fn form(request: &Request) -> Vec<(String, String)> {
    form_urlencoded::parse(&request.body).into_owned().collect()
}

fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn invalid_client() -> ResponseTemplate {
    ResponseTemplate::new(401).set_body_json(
        json!({"error": "invalid_client", "error_description": "client authentication failed"}),
    )
}

fn ok_token() -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({"access_token": "at-1", "expires_in": 600}))
}

#[tokio::test]
async fn a_post_secret_rotated_in_flight_is_retried_once_and_never_twice() {
    let server = MockServer::start().await;
    let path = temp_dir("mock-post").join("secret");
    write(&path, "post-old");
    let calls = Arc::new(AtomicUsize::new(0));
    let (seen, file) = (calls.clone(), path.clone());
    // Every request is refused and rotates the file again: one retry only.
    Mock::given(wiremock::matchers::method("POST"))
        .respond_with(move |request: &Request| {
            let n = seen.fetch_add(1, Ordering::SeqCst);
            let sent = field(&form(request), "client_secret").map(str::to_owned);
            assert_eq!(sent.as_deref(), Some(["post-old", "post-new-0"][n.min(1)]));
            std::fs::write(&file, format!("post-new-{n}")).unwrap();
            invalid_client()
        })
        .mount(&server)
        .await;
    let credential =
        OAuthCredential::client_credentials(format!("{}/token", server.uri()), "post-client")
            .client_secret_post_file(&path)
            .build()
            .unwrap();
    let e = credential.fetch(&scope(), None).await.unwrap_err();
    assert_eq!(e.code(), Some("invalid_client"));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn other_errors_are_never_retried_even_when_the_file_changed() {
    let server = MockServer::start().await;
    let path = temp_dir("mock-other").join("secret");
    write(&path, "scope-old");
    let calls = Arc::new(AtomicUsize::new(0));
    let (seen, file) = (calls.clone(), path.clone());
    Mock::given(wiremock::matchers::method("POST"))
        .respond_with(move |_: &Request| {
            seen.fetch_add(1, Ordering::SeqCst);
            std::fs::write(&file, "scope-new").unwrap();
            ResponseTemplate::new(400).set_body_json(json!({"error": "invalid_scope"}))
        })
        .mount(&server)
        .await;
    let credential = OAuthCredential::client_credentials(format!("{}/token", server.uri()), "c1")
        .client_secret_file(&path)
        .build()
        .unwrap();
    credential.fetch(&scope(), None).await.unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// Whether `jwt` was signed by the RSA key in `pem` (PKCS#8).
fn signed_by(jwt: &str, pem: &str) -> bool {
    use ring::signature::KeyPair as _;
    let block: String = pem
        .split("-----BEGIN PRIVATE KEY-----")
        .nth(1)
        .and_then(|rest| rest.split("-----END PRIVATE KEY-----").next())
        .unwrap()
        .split_whitespace()
        .collect();
    let der = STANDARD.decode(block).unwrap();
    let pair = ring::signature::RsaKeyPair::from_pkcs8(&der).unwrap();
    let (signed, signature) = jwt.rsplit_once('.').unwrap();
    ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        pair.public_key().as_ref(),
    )
    .verify(
        signed.as_bytes(),
        &URL_SAFE_NO_PAD.decode(signature).unwrap(),
    )
    .is_ok()
}

#[tokio::test]
async fn a_key_file_rotated_in_flight_is_retried_once_with_the_new_key_and_the_same_kid() {
    let server = MockServer::start().await;
    let path = temp_dir("mock-key").join("key.pem");
    let (old, new) = (
        key_file("rsa-test-only.pem"),
        key_file("self-signed-client-test-only.pem"),
    );
    write(&path, &old);
    let kids = Arc::new(Mutex::new(Vec::new()));
    let (seen, file, old_key, new_key) = (kids.clone(), path.clone(), old.clone(), new.clone());
    // The server knows only the new key; the first request (old key)
    // rotates the file before it is refused.
    Mock::given(wiremock::matchers::method("POST"))
        .respond_with(move |request: &Request| {
            let form = form(request);
            let jwt = field(&form, "client_assertion").unwrap();
            let header: Value = serde_json::from_slice(
                &URL_SAFE_NO_PAD
                    .decode(jwt.split('.').next().unwrap())
                    .unwrap(),
            )
            .unwrap();
            seen.lock().unwrap().push(header["kid"].clone());
            if signed_by(jwt, &new_key) {
                ok_token()
            } else {
                assert!(signed_by(jwt, &old_key));
                std::fs::write(&file, &new_key).unwrap();
                invalid_client()
            }
        })
        .mount(&server)
        .await;
    let credential =
        OAuthCredential::client_credentials(format!("{}/token", server.uri()), "jwt-client")
            .private_key_jwt_file(
                PrivateKeyFile::new(&path, SigningAlgorithm::Rs256).with_key_id("client-key"),
            )
            .build()
            .unwrap();
    credential.fetch(&scope(), None).await.unwrap();
    assert_eq!(
        *kids.lock().unwrap(),
        vec![json!("client-key"), json!("client-key")]
    );
}

#[tokio::test]
async fn a_key_and_certificate_are_replaced_only_as_a_matching_pair() {
    let server = MockServer::start().await;
    Mock::given(wiremock::matchers::method("POST"))
        .respond_with(ok_token())
        .mount(&server)
        .await;
    let dir = temp_dir("mock-key-cert");
    let (key, cert) = (dir.join("key.pem"), dir.join("cert.pem"));
    write(&key, &key_file("rsa-test-only.pem"));
    write(&cert, &key_file("rsa-test-only.crt"));
    let credential =
        OAuthCredential::client_credentials(format!("{}/token", server.uri()), "cert-client")
            .private_key_jwt_file(
                PrivateKeyFile::new(&key, SigningAlgorithm::Rs256)
                    .with_certificate_file(&cert)
                    .with_x5c(true),
            )
            .build()
            .unwrap();
    let first = credential.certificate_thumbprint().unwrap();
    // The key rotates first: it no longer matches the certificate, so the
    // old pair stays in use.
    let self_signed = key_file("self-signed-client-test-only.pem");
    write(&key, &self_signed);
    credential.fetch(&scope(), None).await.unwrap();
    assert_eq!(credential.certificate_thumbprint().unwrap(), first);
    // Then the certificate: the new pair is used.
    write(&cert, &self_signed);
    credential.fetch(&scope(), None).await.unwrap();
    let second = Certificate::from_pem(&self_signed).unwrap();
    assert_eq!(
        credential.certificate_thumbprint().as_deref(),
        Some(second.thumbprint_sha256())
    );
    // A private_key_jwt certificate is not a token binding.
    assert!(!credential.binding_changed());
    assert_eq!(credential.watched_files(), vec![key, cert]);
}

#[test]
fn missing_or_invalid_files_fail_the_build_naming_the_path() {
    let dir = temp_dir("build-errors");
    let missing = dir.join("missing");
    let bad_key = dir.join("bad-key.pem");
    write(
        &bad_key,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    );
    let empty = dir.join("empty");
    write(&empty, "\n");
    let ec = dir.join("ec.pem");
    write(&ec, &key_file("ec-test-only.pem"));
    let builder = || OAuthCredential::client_credentials("https://idp.example/token", "c1");
    let cases = [
        (builder().client_secret_file(&missing), &missing),
        (builder().client_secret_post_file(&empty), &empty),
        (
            builder().private_key_jwt_file(PrivateKeyFile::new(&bad_key, SigningAlgorithm::Rs256)),
            &bad_key,
        ),
        (
            builder().private_key_jwt_file(PrivateKeyFile::new(&ec, SigningAlgorithm::Rs256)),
            &ec,
        ),
        (builder().tls_client_auth_files(&ec, &ec), &ec),
        (
            builder().self_signed_tls_client_auth_files(&missing, &ec),
            &missing,
        ),
    ];
    for (builder, path) in cases {
        let e = builder.build().unwrap_err();
        assert!(
            matches!(&e, ConfigError::File { path: p, .. } if p == path),
            "{e:?}"
        );
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    }
}

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
async fn nothing_read_from_a_file_reaches_debug_errors_or_logs() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    const OLD: &str = "file-secret-OLD-7f3a9c";
    const NEW: &str = "file-secret-NEW-0b1d2e";
    let server = MockServer::start().await;
    // The server echoes what it got in its error description, as a careless
    // server might.
    Mock::given(wiremock::matchers::method("POST"))
        .respond_with(|request: &Request| {
            let body = String::from_utf8_lossy(&request.body).into_owned();
            ResponseTemplate::new(401).set_body_json(
                json!({"error": "invalid_client", "error_description": format!("bad: {body}")}),
            )
        })
        .mount(&server)
        .await;
    let dir = temp_dir("no-leak");
    let path = dir.join("secret");
    write(&path, OLD);
    let credential = OAuthCredential::client_credentials(format!("{}/token", server.uri()), "c1")
        .client_secret_post_file(&path)
        .build()
        .unwrap();
    let mut seen = vec![format!("{credential:?}")];
    let e = credential.fetch(&scope(), None).await.unwrap_err();
    seen.push(format!("{e} {e:?}"));
    // Rotated, then half written (a warning naming the file).
    write(&path, NEW);
    let e = credential.fetch(&scope(), None).await.unwrap_err();
    seen.push(format!("{e} {e:?}"));
    write(&path, &format!("{OLD}\n{NEW}"));
    let e = credential.fetch(&scope(), None).await.unwrap_err();
    seen.push(format!("{e} {e:?} {credential:?}"));
    // A build error for a file holding a secret on two lines.
    let e = OAuthCredential::client_credentials(format!("{}/token", server.uri()), "c1")
        .client_secret_file(&path)
        .build()
        .unwrap_err();
    seen.push(format!("{e} {e:?}"));
    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains(&path.display().to_string()),
        "the warning names the file: {logs}"
    );
    seen.push(logs);
    for text in &seen {
        for secret in [OLD, NEW] {
            assert!(!text.contains(secret), "{secret} in: {text}");
        }
    }
}

#[tokio::test]
async fn mtls_files_holding_one_pem_are_watched_once_and_rebuilt_on_change() {
    let dir = temp_dir("mock-mtls");
    let pem = dir.join("client.pem");
    write(&pem, &key_file("mtls-other-test-only.pem"));
    let credential =
        OAuthCredential::client_credentials("https://127.0.0.1:9/token", "mtls-client")
            .self_signed_tls_client_auth_files(&pem, &pem)
            .build()
            .unwrap();
    assert_eq!(credential.watched_files(), vec![pem.clone()]);
    // Nothing listens on port 9: the fetch fails in connecting, after the
    // files were checked; the new identity is in use.
    write(&pem, &key_file("mtls-client-test-only.pem"));
    let e = credential.fetch(&scope(), None).await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert!(credential.binding_changed());
}

#[tokio::test]
async fn from_env_credentials_re_read_their_secret_and_key_files() {
    use token_http::env::{
        ENV_CERTIFICATE_FILE, ENV_CLIENT_ID, ENV_CLIENT_SECRET_FILE, ENV_TOKEN_URL,
    };
    let dir = temp_dir("from-env");
    let secret = dir.join("secret");
    write(&secret, "env-secret\n");
    let pem = dir.join("client.pem");
    write(
        &pem,
        &(key_file("rsa-test-only.crt") + &key_file("rsa-test-only.pem")),
    );
    for (var, path) in [
        (ENV_CLIENT_SECRET_FILE, &secret),
        (ENV_CERTIFICATE_FILE, &pem),
    ] {
        let value = path.display().to_string();
        let credential = OAuthCredential::from_env_with(|name| match name {
            n if n == ENV_TOKEN_URL => Some("https://idp.example/token".into()),
            n if n == ENV_CLIENT_ID => Some("env-client".into()),
            n if n == var => Some(value.clone()),
            _ => None,
        })
        .await
        .unwrap()
        .build()
        .unwrap();
        assert_eq!(credential.watched_files(), vec![path.clone()], "{var}");
    }
}
