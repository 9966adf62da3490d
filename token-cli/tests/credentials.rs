//! End-to-end: `tokencache get` with a client assertion file, a
//! certificate (`private_key_jwt` with `x5t#S256`) and mutual TLS, against
//! the real authorization server of token-http's tests (panva's
//! `oidc-provider`, `token-http/tests/idp`, installed by `cargo xtask
//! test`). Without Node.js or the package the tests skip loudly; under
//! `CI` they fail.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::{json, ok, stderr, Sandbox};
use token_testkit::Idp;

/// An ES256 client assertion for `jwt-es-client` (key `ec-1`), minted by
/// `jose` from the IdP's own node_modules, as an external signer would.
fn mint_assertion(audience: &str) -> String {
    let script = "
import { SignJWT, importPKCS8 } from 'jose';
import { readFileSync } from 'node:fs';
import { randomUUID } from 'node:crypto';
const [file, aud] = process.argv.slice(1);
const key = await importPKCS8(readFileSync(file, 'utf8'), 'ES256');
process.stdout.write(await new SignJWT({}).setProtectedHeader({ alg: 'ES256', kid: 'ec-1' })
  .setIssuer('jwt-es-client').setSubject('jwt-es-client').setAudience(aud)
  .setJti(randomUUID()).setIssuedAt().setExpirationTime('60s').sign(key));
";
    let out = Command::new("node")
        .args(["--input-type=module", "-e", script])
        .arg(Idp::keys_dir().join("ec-test-only.pem"))
        .arg(audience)
        .current_dir(Idp::server_dir())
        .output()
        .expect("node runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A configuration error (exit 3), never an IdP error.
fn assert_config_error(out: &Output) {
    assert_eq!(out.status.code(), Some(3), "{}", stderr(out));
}

/// A usage error (exit 2): the command line alone is incomplete or
/// contradictory.
fn assert_usage_error(out: &Output) {
    assert_eq!(out.status.code(), Some(2), "{}", stderr(out));
}

fn get(
    sb: &Sandbox,
    token_url: &str,
    client: &str,
    args: &[&str],
    paths: &[(&str, &Path)],
) -> Output {
    let mut cmd = sb.cmd();
    cmd.args([
        "get",
        "--token-url",
        token_url,
        "--client-id",
        client,
        "--format",
        "json",
    ])
    .args(args);
    for (flag, path) in paths {
        cmd.arg(flag).arg(path);
    }
    cmd.output().expect("run tokencache")
}

#[test]
fn get_with_a_client_assertion_file_sends_the_assertion_on_disk_at_each_fetch() {
    let Some(idp) = Idp::shared() else { return };
    let sb = Sandbox::new();
    let token_url = idp.token_url();
    let file = sb.path().join("projected-token");
    let memory = ["--store", "memory"];

    let first = mint_assertion(&token_url);
    std::fs::write(&file, format!("{first}\n")).unwrap();
    let out = get(
        &sb,
        &token_url,
        "jwt-es-client",
        &memory,
        &[("--client-assertion-file", &file)],
    );
    ok(&out);
    assert_eq!(json(&out)["from_cache"], false);

    // The same assertion again is a replay the server refuses...
    let out = get(
        &sb,
        &token_url,
        "jwt-es-client",
        &memory,
        &[("--client-assertion-file", &file)],
    );
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(!stderr(&out).contains(&first));
    // ...and once rotated on disk, the new one is sent.
    std::fs::write(&file, mint_assertion(&token_url)).unwrap();
    let out = get(
        &sb,
        &token_url,
        "jwt-es-client",
        &memory,
        &[("--client-assertion-file", &file)],
    );
    ok(&out);

    std::fs::write(&file, "").unwrap();
    let out = get(
        &sb,
        &token_url,
        "jwt-es-client",
        &memory,
        &[("--client-assertion-file", &file)],
    );
    assert_config_error(&out);
    assert!(
        stderr(&out).contains(&file.display().to_string()) && stderr(&out).contains("empty"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn get_with_a_certificate_file_names_the_certificate_in_the_assertion() {
    let Some(idp) = Idp::shared() else { return };
    let sb = Sandbox::new();
    let token_url = idp.token_url();
    // Certificate chain and key in one PEM.
    let pem = sb.path().join("client.pem");
    let both = std::fs::read_to_string(Idp::keys_dir().join("rsa-test-only.crt")).unwrap()
        + &std::fs::read_to_string(Idp::keys_dir().join("rsa-test-only.pem")).unwrap();
    std::fs::write(&pem, both).unwrap();
    let memory = ["--store", "memory"];
    ok(&get(
        &sb,
        &token_url,
        "cert-client",
        &memory,
        &[("--certificate-file", &pem)],
    ));
    // The server wants x5t and x5c from this client: refused without them.
    let out = get(
        &sb,
        &token_url,
        "cert-x5c-client",
        &memory,
        &[("--certificate-file", &pem)],
    );
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let with = ["--store", "memory", "--x5t", "--x5c"];
    ok(&get(
        &sb,
        &token_url,
        "cert-x5c-client",
        &with,
        &[("--certificate-file", &pem)],
    ));
    // The key apart from the certificate works the same.
    ok(&get(
        &sb,
        &token_url,
        "cert-client",
        &memory,
        &[
            (
                "--certificate-file",
                &Idp::keys_dir().join("rsa-test-only.crt"),
            ),
            (
                "--private-key-file",
                &Idp::keys_dir().join("rsa-test-only.pem"),
            ),
        ],
    ));
    let out = String::from_utf8_lossy(
        &get(
            &sb,
            &token_url,
            "cert-client",
            &memory,
            &[("--certificate-file", &pem)],
        )
        .stdout,
    )
    .into_owned();
    assert!(!out.contains("PRIVATE KEY"));
}

#[test]
fn get_with_mutual_tls_caches_per_certificate() {
    let Some(idp) = Idp::shared() else { return };
    let sb = Sandbox::new();
    let token_url = format!("{}/token", idp.tls_base());
    let ca = Idp::keys_dir().join("ca-test-only.crt");
    let good = Idp::keys_dir().join("mtls-client-test-only.pem");
    let other = Idp::keys_dir().join("mtls-other-test-only.pem");

    let first = get(
        &sb,
        &token_url,
        "mtls-client",
        &[],
        &[("--client-certificate-file", &good), ("--ca-file", &ca)],
    );
    ok(&first);
    let again = get(
        &sb,
        &token_url,
        "mtls-client",
        &[],
        &[("--client-certificate-file", &good), ("--ca-file", &ca)],
    );
    ok(&again);
    assert_eq!(json(&again)["from_cache"], true);
    assert_eq!(json(&first)["access_token"], json(&again)["access_token"]);

    // Another certificate never gets the token bound to the first from the
    // cache: it goes to the server, which refuses it for this client.
    let out = get(
        &sb,
        &token_url,
        "mtls-client",
        &[],
        &[("--client-certificate-file", &other), ("--ca-file", &ca)],
    );
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let token = json(&first)["access_token"].as_str().unwrap().to_owned();
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&token));

    // Self-signed, registered by its JWK.
    ok(&get(
        &sb,
        &token_url,
        "self-signed-client",
        &["--auth", "self-signed-tls-client-auth"],
        &[
            (
                "--client-certificate-file",
                &Idp::keys_dir().join("self-signed-client-test-only.pem"),
            ),
            ("--ca-file", &ca),
        ],
    ));
}

#[test]
fn a_warm_cached_assertion_file_token_needs_the_file_readable_and_survives_its_rotation() {
    let Some(idp) = Idp::shared() else { return };
    let sb = Sandbox::new();
    let token_url = idp.token_url();
    let file = sb.path().join("projected-token");
    // The default sled store, so the second and third gets take the warm
    // path (no sled open).
    std::fs::write(&file, mint_assertion(&token_url)).unwrap();
    let out = get(
        &sb,
        &token_url,
        "jwt-es-client",
        &[],
        &[("--client-assertion-file", &file)],
    );
    ok(&out);
    assert_eq!(json(&out)["from_cache"], false);
    let token = json(&out)["access_token"].clone();

    // Rotated on disk: the same entry (bound by the path, not the content).
    std::fs::write(&file, mint_assertion(&token_url)).unwrap();
    let out = get(
        &sb,
        &token_url,
        "jwt-es-client",
        &["-v"],
        &[("--client-assertion-file", &file)],
    );
    ok(&out);
    assert_eq!(json(&out)["from_cache"], true);
    assert!(stderr(&out).contains("warm file"), "{}", stderr(&out));
    assert_eq!(json(&out)["access_token"], token);

    // Gone: no token, warm or not, for whoever cannot read the file.
    std::fs::remove_file(&file).unwrap();
    let out = get(
        &sb,
        &token_url,
        "jwt-es-client",
        &[],
        &[("--client-assertion-file", &file)],
    );
    assert_config_error(&out);
    assert!(out.stdout.is_empty(), "no token printed");
    assert!(
        stderr(&out).contains(&file.display().to_string()),
        "{}",
        stderr(&out)
    );
}

#[test]
fn two_client_authentications_in_a_profile_are_its_configuration_error_naming_both() {
    let sb = Sandbox::new();
    let assertion = sb.path().join("token");
    std::fs::write(&assertion, "eyJ.assertion.value\n").unwrap();
    let config = sb.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[profiles.p]\ntoken_url = \"http://127.0.0.1:1/token\"\nclient_id = \"c\"\nclient_secret_env = \"{}\"\nclient_assertion_file = \"{}\"\nstore = \"memory\"\n",
            support::SECRET_ENV,
            assertion.display()
        ),
    )
    .unwrap();
    let out = sb
        .cmd()
        .args(["get", "--profile", "p", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let text = stderr(&out);
    assert!(
        text.contains("client_assertion_file") && text.contains("choose one with auth"),
        "{text}"
    );
}

#[test]
fn two_client_authentications_at_once_are_a_usage_error_naming_both() {
    let sb = Sandbox::new();
    let out = sb
        .cmd()
        .args([
            "get",
            "--token-url",
            "http://127.0.0.1:1/token",
            "--client-id",
            "c",
        ])
        .args(["--client-secret-env", support::SECRET_ENV])
        .arg("--client-assertion-file")
        .arg(sb.path().join("token"))
        .output()
        .unwrap();
    assert_usage_error(&out);
    let text = stderr(&out);
    assert!(
        text.contains("--client-assertion-file") && text.contains("--auth"),
        "{text}"
    );
}

/// `tokencache get --from-env` with exactly `vars` (and none of the
/// ambient TOKEN_CACHE_* / AZURE_* variables).
fn get_from_env(sb: &Sandbox, vars: &[(&str, &str)], extra: &[&str]) -> Output {
    let mut cmd = sb.cmd();
    for (name, _) in std::env::vars() {
        if name.starts_with("TOKEN_CACHE_") || name.starts_with("AZURE_") {
            cmd.env_remove(name);
        }
    }
    cmd.envs(vars.iter().copied())
        .args(["get", "--from-env", "--format", "json"])
        .args(extra)
        .output()
        .expect("run tokencache")
}

#[test]
fn get_from_env_uses_the_azure_workload_identity_variables() {
    let Some(idp) = Idp::shared() else { return };
    let sb = Sandbox::new();
    let token_url = idp.token_url();
    let file = sb.path().join("azure-identity-token");
    let file_text = file.display().to_string();
    let vars = [
        ("TOKEN_CACHE_ISSUER", idp.issuer()),
        ("AZURE_CLIENT_ID", "jwt-es-client"),
        ("AZURE_FEDERATED_TOKEN_FILE", file_text.as_str()),
    ];
    std::fs::write(&file, mint_assertion(&token_url)).unwrap();
    let first = get_from_env(&sb, &vars, &["--scope", "orders.read"]);
    ok(&first);
    assert_eq!(json(&first)["from_cache"], false);
    // Cached (the default sled store) under the same key next time.
    let again = get_from_env(&sb, &vars, &["--scope", "orders.read"]);
    ok(&again);
    assert_eq!(json(&again)["from_cache"], true);

    // A secret file works the same; a missing variable is a clear error.
    let secret = sb.path().join("secret");
    std::fs::write(&secret, "basic:secret%+/ ok~&=\n").unwrap();
    let secret_text = secret.display().to_string();
    let out = get_from_env(
        &sb,
        &[
            ("TOKEN_CACHE_TOKEN_URL", token_url.as_str()),
            ("TOKEN_CACHE_CLIENT_ID", "basic-client"),
            ("TOKEN_CACHE_CLIENT_SECRET_FILE", secret_text.as_str()),
        ],
        &["--store", "memory"],
    );
    ok(&out);
    assert!(!stderr(&out).contains("basic:secret"));
    let out = get_from_env(&sb, &[("TOKEN_CACHE_TOKEN_URL", token_url.as_str())], &[]);
    assert_config_error(&out);
    assert!(
        stderr(&out).contains("TOKEN_CACHE_CLIENT_ID"),
        "{}",
        stderr(&out)
    );
}
