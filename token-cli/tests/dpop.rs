//! `tokencache get --dpop-key-file` against oidc-provider with DPoP
//! (`dpop-client` of `token-http/tests/idp/server.js`): the bound token,
//! `--format json` with `token_type`, `--format dpop-headers` for scripts,
//! a `dpop_key_file` in a profile, and key file errors that name the file;
//! `tokencache serve` forwarding for a DPoP profile to a resource server
//! that accepts only DPoP-bound tokens.

mod sidecar;
mod support;

use std::path::PathBuf;
use std::process::Output;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use support::{json, ok, stderr, stdout, Sandbox};
use token_testkit::{DpopResourceServer, Idp};

const CLIENT: &str = "dpop-client";
const SECRET: &str = "dpop-secret-value";

fn key_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../token-http/tests/keys")
        .join(name)
}

fn get(sb: &Sandbox, idp: &Idp, key: &std::path::Path, extra: &[&str]) -> Output {
    sb.cmd()
        .env("DPOP_SECRET", SECRET)
        .arg("get")
        .args(["--token-url", &idp.token_url()])
        .args(["--client-id", CLIENT, "--client-secret-env", "DPOP_SECRET"])
        .args(["--scope", "orders.read", "--store", "memory"])
        .arg("--dpop-key-file")
        .arg(key)
        .args(extra)
        .output()
        .expect("run tokencache")
}

fn b64json(part: &str) -> serde_json::Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("JSON")
}

#[test]
fn get_prints_a_dpop_bound_token_and_its_headers() {
    let Some(idp) = Idp::private() else { return };
    let sb = Sandbox::new();
    let key = key_file("dpop-ec-test-only.jwk");
    let out = get(&sb, &idp, &key, &["--format", "json"]);
    ok(&out);
    assert_eq!(json(&out)["token_type"], "DPoP");
    // First call of the key: use_dpop_nonce, then the retry.
    assert_eq!(idp.token_requests(), 2);

    let url = "https://api.example/v1/orders?page=2";
    let out = get(
        &sb,
        &idp,
        &key,
        &[
            "--format",
            "dpop-headers",
            "--method",
            "post",
            "--url",
            url,
            "--dpop-nonce",
            "rs-nonce-7",
        ],
    );
    ok(&out);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    let token = lines[0]
        .strip_prefix("Authorization: DPoP ")
        .expect("an Authorization line");
    let proof = lines[1].strip_prefix("DPoP: ").expect("a DPoP line");
    let parts: Vec<&str> = proof.split('.').collect();
    assert_eq!(parts.len(), 3);
    let (header, claims) = (b64json(parts[0]), b64json(parts[1]));
    assert_eq!(header["typ"], "dpop+jwt");
    assert_eq!(header["alg"], "ES256");
    assert_eq!(claims["htm"], "POST");
    assert_eq!(claims["htu"], "https://api.example/v1/orders");
    assert_eq!(claims["ath"], token_http::ath(token));
    assert_eq!(claims["nonce"], "rs-nonce-7");
    assert!(!stderr(&out).contains(token) && !stderr(&out).contains(proof));
}

#[test]
fn a_profile_binds_with_dpop_key_file_and_bad_key_files_are_named() {
    let Some(idp) = Idp::shared() else { return };
    let sb = Sandbox::new();
    let key = key_file("dpop-ed25519-test-only.pem");
    std::fs::create_dir_all(sb.config_file().parent().unwrap()).unwrap();
    std::fs::write(
        sb.config_file(),
        format!(
            "[profiles.orders]\ntoken_url = \"{}\"\nclient_id = \"{CLIENT}\"\nclient_secret_env = \"DPOP_SECRET\"\nscopes = [\"orders.read\"]\nstore = \"memory\"\nformat = \"json\"\ndpop_key_file = \"{}\"\n",
            idp.token_url(),
            key.display()
        ),
    )
    .unwrap();
    let out = sb
        .cmd()
        .env("DPOP_SECRET", SECRET)
        .args(["get", "--profile", "orders"])
        .output()
        .unwrap();
    ok(&out);
    assert_eq!(json(&out)["token_type"], "DPoP");

    // A key file that is not a key: a configuration error naming it.
    let bad = sb.path().join("not-a-key.pem");
    std::fs::write(&bad, "hello\n").unwrap();
    let out = get(&sb, idp, &bad, &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&bad.display().to_string()),
        "{}",
        stderr(&out)
    );
    let missing = sb.path().join("missing.jwk");
    let out = get(&sb, idp, &missing, &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains(&missing.display().to_string()));

    // dpop-headers needs a URL.
    let out = get(
        &sb,
        idp,
        &key_file("dpop-ec-test-only.jwk"),
        &["--format", "dpop-headers"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--url"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_forwards_a_dpop_profile_s_requests_with_proofs() {
    let Some(idp) = Idp::shared() else { return };
    let rs = DpopResourceServer::start(format!("{}/__test/dpop-introspect", idp.issuer())).await;
    let sb = Sandbox::new();
    let secret = sb.path().join("client-secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    // The key file the profile names, rotated below.
    let dpop_key = sb.path().join("dpop.pem");
    std::fs::copy(key_file("dpop-ec-sec1-test-only.pem"), &dpop_key).unwrap();
    let listen = sidecar::free_addr();
    let config = sidecar::write_config(
        &sb,
        &format!(
            "[profiles.orders]\ntoken_url = \"{}\"\nclient_id = \"{CLIENT}\"\nclient_secret_file = \"{}\"\nscopes = [\"orders.read\"]\nstore = \"memory\"\ndpop_key_file = \"{}\"\n\n[serve]\nlisten = \"{listen}\"\n[[serve.routes]]\nprefix = \"/api/\"\nupstream = \"{}\"\nprofile = \"orders\"\n",
            idp.token_url(),
            secret.display(),
            dpop_key.display(),
            rs.url()
        ),
    );
    let serve = sidecar::start_serve(&sb, &config);
    let client = reqwest::Client::new();
    for i in 0..3 {
        let r = client
            .get(format!("{}/api/orders/{i}?x=1", serve.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{:?}", rs.refusals());
        assert_eq!(r.text().await.unwrap(), format!("ok /orders/{i}?x=1"));
    }
    // The first forward met the upstream's nonce demand and was retried.
    assert_eq!(rs.nonce_challenges(), 1);
    assert_eq!(rs.served(), 3);
    // The token endpoint says what the token is.
    let r = client
        .get(format!("{}/v1/token?profile=orders", serve.base))
        .header("metadata", "true")
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(v["token_type"], "DPoP", "{v}");

    // The key file is rotated (to the Ed25519 key) and the sidecar told
    // (SIGHUP): a new partition, a new token bound to the new key, and the
    // gateway signs with it (the resource server checks both).
    let tmp = sb.path().join("dpop.pem.tmp");
    std::fs::copy(key_file("dpop-ed25519-test-only.pem"), &tmp).unwrap();
    std::fs::rename(&tmp, &dpop_key).unwrap();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &serve.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let old = v["access_token"].as_str().unwrap().to_owned();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let r = client
            .get(format!("{}/v1/token?profile=orders", serve.base))
            .header("metadata", "true")
            .send()
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
        if v["access_token"].as_str().is_some_and(|t| t != old) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the rotated key was not picked up: {v}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let r = client
        .get(format!("{}/api/after-rotation", serve.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", rs.refusals());
    assert!(rs.refusals().is_empty(), "{:?}", rs.refusals());
}
