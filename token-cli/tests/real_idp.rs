//! `tokencache` against a real authorization server: panva's
//! `oidc-provider` (npm), the one token-http's tests use
//! (`token-http/tests/idp/server.js`, installed by `cargo xtask test`),
//! started by token-testkit's `Idp` on a free loopback port, one per test
//! (their token-request counts are exact). It counts the token requests it
//! receives (`GET /__test/token-requests`).
//!
//! Without node or the installed package the tests skip loudly; under `CI`
//! that is a failure naming how to install it.

mod support;

use std::process::Output;

use support::{json, ok, stderr, stdout, Sandbox};
use token_testkit::Idp;

/// The `client_secret_basic` client of server.js and its secret.
const BASIC_CLIENT: &str = "basic-client";
const BASIC_SECRET: &str = "basic:secret%+/ ok~&=";

fn get(sb: &Sandbox, endpoint: &[&str], secret: &str, extra: &[&str]) -> Output {
    sb.cmd()
        .env("REAL_IDP_SECRET", secret)
        .arg("get")
        .args(endpoint)
        .args(["--client-id", BASIC_CLIENT])
        .args(["--client-secret-env", "REAL_IDP_SECRET"])
        .args(["--scope", "orders.read", "--format", "json"])
        .args(extra)
        .output()
        .expect("run tokencache")
}

#[test]
fn against_oidc_provider_a_wrong_secret_is_refused_not_served_from_the_cache() {
    let Some(idp) = Idp::private() else { return };
    let sb = Sandbox::new();
    let url = idp.token_url();
    let endpoint = ["--token-url", url.as_str()];

    let first = get(&sb, &endpoint, BASIC_SECRET, &[]);
    ok(&first);
    assert_eq!(json(&first)["from_cache"], false);
    assert_eq!(idp.token_requests(), 1);
    let token = json(&first)["access_token"]
        .as_str()
        .expect("token")
        .to_owned();

    let second = get(&sb, &endpoint, BASIC_SECRET, &[]);
    ok(&second);
    assert_eq!(json(&second)["from_cache"], true);
    assert_eq!(idp.token_requests(), 1, "the right secret hits the cache");

    let wrong = get(&sb, &endpoint, "not-the-secret", &[]);
    assert_eq!(
        idp.token_requests(),
        2,
        "a wrong secret must be checked by the IdP"
    );
    assert_eq!(wrong.status.code(), Some(4), "{}", stderr(&wrong));
    assert!(stdout(&wrong).is_empty(), "no token for a wrong secret");
    let err = stderr(&wrong);
    assert_eq!(err.matches("invalid_client").count(), 1, "{err}");
    assert!(err.starts_with("error: "), "{err}");
    for text in [&err, &stdout(&wrong)] {
        assert!(!text.contains(&token) && !text.contains(BASIC_SECRET));
    }
}

#[test]
fn against_oidc_provider_issuer_discovery_is_cached_with_the_token() {
    let Some(idp) = Idp::private() else { return };
    let sb = Sandbox::new();
    let endpoint = ["--issuer", idp.issuer()];
    let first = get(&sb, &endpoint, BASIC_SECRET, &["-v"]);
    ok(&first);
    assert!(
        stderr(&first).contains("discovery: found the token endpoint"),
        "{}",
        stderr(&first)
    );
    let second = get(&sb, &endpoint, BASIC_SECRET, &["-vv"]);
    ok(&second);
    assert_eq!(json(&second)["from_cache"], true);
    let err = stderr(&second);
    assert!(err.contains("discovery: cached token endpoint"), "{err}");
    assert!(!err.contains("fetching the issuer's metadata"), "{err}");
    assert_eq!(idp.token_requests(), 1);
    assert!(!err.contains(BASIC_SECRET));
}

#[test]
fn against_oidc_provider_private_key_jwt_is_bound_to_its_key() {
    let Some(idp) = Idp::private() else { return };
    let sb = Sandbox::new();
    let url = idp.token_url();
    let keys = Idp::keys_dir();
    let run = |client: &str, key: &str| {
        sb.cmd()
            .args(["get", "--token-url", &url, "--client-id", client])
            .arg("--private-key-file")
            .arg(keys.join(key))
            .args(["--key-id", "rsa-1", "--scope", "orders.read"])
            .args(["--format", "json"])
            .output()
            .expect("run")
    };
    let first = run("jwt-rs-client", "rsa-test-only.pem");
    ok(&first);
    let again = run("jwt-rs-client", "rsa-test-only.pem");
    ok(&again);
    assert_eq!(json(&again)["from_cache"], true);
    assert_eq!(idp.token_requests(), 1);
    // Another key for the same client misses and is refused by the IdP.
    let other = run("jwt-rs-client", "ec-test-only.pem");
    assert_eq!(idp.token_requests(), 2);
    assert_eq!(other.status.code(), Some(4), "{}", stderr(&other));
}
