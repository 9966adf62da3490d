//! The Google metadata server as Google's own SDKs probe it, unmodified:
//! Node's `google-auth-library` (`new GoogleAuth()`, the path of every
//! `@google-cloud/*` client; pinned in tests/vendor/node, installed by
//! `cargo xtask test`) and Python's google-auth (`google.auth.default()`
//! with scopes of its own; the vendor venv), against the built
//! `tokencache serve` and a token endpoint that records each call's scope.
//! Also every path they ask for, the bound on scope sets, and the 404 for
//! identity tokens, with reqwest.

mod sidecar;
mod support;

use std::path::PathBuf;
use std::process::Command;

use sidecar::{
    fake_profile, free_addr, start_serve, vendor_client, vendor_python, write_config, FakeIdp,
    Serve,
};
use support::Sandbox;
use token_testkit::skip_or_fail;

const EMAIL: &str = "sidecar@example.iam.gserviceaccount.com";
const CLOUD: &str = "https://www.googleapis.com/auth/cloud-platform";
const STORAGE: &str = "https://www.googleapis.com/auth/devstorage.read_only";

async fn start(extra: &str) -> (FakeIdp, Sandbox, Serve) {
    let idp = FakeIdp::start(3600).await;
    let sandbox = Sandbox::new();
    let config = write_config(
        &sandbox,
        &format!(
            "{}\n[serve]\nlisten = \"{}\"\n[serve.google]\nprofile = \"orders\"\nemail = \"{EMAIL}\"\n{extra}",
            fake_profile("orders", &idp, "memory"),
            free_addr(),
        ),
    );
    let serve = start_serve(&sandbox, &config);
    (idp, sandbox, serve)
}

/// `GET base+path` with `Metadata-Flavor: Google`: status, the response's
/// `Metadata-Flavor`, body.
async fn get(serve: &Serve, path: &str) -> (u16, Option<String>, String) {
    let r = reqwest::Client::new()
        .get(format!("{}{path}", serve.base))
        .header("metadata-flavor", "Google")
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    let flavor = r
        .headers()
        .get("metadata-flavor")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (status, flavor, r.text().await.expect("body"))
}

fn access_token(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).expect("token json");
    v["access_token"].as_str().expect("access_token").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_path_the_sdks_probe_is_served_and_scope_sets_are_bounded() {
    let (idp, _sandbox, serve) = start("project_id = \"proj-1\"\nmax_scope_sets = 2\n").await;
    assert_eq!(idp.calls(), 1);

    // Detection: Python pings `/`, Node asks for `instance`; both check
    // the answer's Metadata-Flavor.
    for path in [
        "/",
        "/computeMetadata/v1/",
        "/computeMetadata/v1/instance",
        "/computeMetadata/v1/instance/",
        "/computeMetadata/v1/instance/service-accounts/",
    ] {
        let (status, flavor, _) = get(&serve, path).await;
        assert_eq!((status, flavor.as_deref()), (200, Some("Google")), "{path}");
    }
    let (status, flavor, body) = get(&serve, "/computeMetadata/v1/project/project-id").await;
    assert_eq!(
        (status, flavor.as_deref(), body.as_str()),
        (200, Some("Google"), "proj-1")
    );
    let (status, _, body) = get(&serve, "/computeMetadata/v1/project/numeric-project-id").await;
    assert_eq!(status, 404);
    assert!(body.contains("numeric_project_id"), "{body}");
    let (status, _, body) = get(&serve, "/computeMetadata/v1/universe/universe-domain").await;
    assert_eq!((status, body.as_str()), (200, "googleapis.com"));
    let (status, _, body) = get(
        &serve,
        "/computeMetadata/v1/instance/service-accounts/default/?recursive=true",
    )
    .await;
    assert_eq!(status, 200);
    let info: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(info["email"], EMAIL);
    assert_eq!(info["scopes"], serde_json::json!(["orders.read"]));
    let (_, _, body) = get(
        &serve,
        "/computeMetadata/v1/instance/service-accounts/default/email",
    )
    .await;
    assert_eq!(body, EMAIL);

    // Identity tokens: a 404 that says so.
    let (status, flavor, body) = get(
        &serve,
        "/computeMetadata/v1/instance/service-accounts/default/identity?audience=https://x.example&format=full",
    )
    .await;
    assert_eq!((status, flavor.as_deref()), (404, Some("Google")));
    assert!(body.contains("identity tokens"), "{body}");

    // ?scopes=: each set its own token, one IdP call each, in any order.
    let token = "/computeMetadata/v1/instance/service-accounts/default/token";
    let (status, _, body) = get(&serve, &format!("{token}?scopes=s1,s2")).await;
    assert_eq!(status, 200, "{body}");
    let s12 = access_token(&body);
    let (_, _, body) = get(&serve, &format!("{token}?scopes=s2,s1,s2")).await;
    assert_eq!(access_token(&body), s12);
    let (_, _, body) = get(&serve, &format!("{token}?scopes=s3")).await;
    let s3 = access_token(&body);
    let (_, _, body) = get(&serve, token).await;
    let own = access_token(&body);
    let (_, _, body) = get(&serve, &format!("{token}?scopes=orders.read")).await;
    assert_eq!(
        access_token(&body),
        own,
        "the profile's own scopes: its own token"
    );
    let distinct: std::collections::HashSet<_> = [&s12, &s3, &own].into_iter().collect();
    assert_eq!(distinct.len(), 3);
    assert_eq!(idp.calls_for("s1 s2"), 1);
    assert_eq!(idp.calls_for("s3"), 1);
    assert_eq!(idp.calls(), 3);

    // Past max_scope_sets: a clear 400, no IdP call; known sets still served.
    let (status, _, body) = get(&serve, &format!("{token}?scopes=s4")).await;
    assert_eq!(status, 400);
    assert!(body.contains("at most 2 distinct scope sets"), "{body}");
    assert!(body.contains("max_scope_sets"), "{body}");
    let (status, _, _) = get(&serve, &format!("{token}?scopes=s3")).await;
    assert_eq!(status, 200);
    assert_eq!(idp.calls(), 3);

    // The guards stay: no Metadata-Flavor, or a forwarded request.
    let r = reqwest::Client::new()
        .get(format!("{}{token}?scopes=s1,s2", serve.base))
        .send()
        .await
        .expect("r");
    assert_eq!(r.status(), 403);
    assert!(!r.text().await.expect("t").contains("tok-"));
    let r = reqwest::Client::new()
        .get(format!("{}{token}", serve.base))
        .header("metadata-flavor", "Google")
        .header("x-forwarded-for", "10.0.0.1")
        .send()
        .await
        .expect("r");
    assert_eq!(r.status(), 403);
    assert!(!r.text().await.expect("t").contains("tok-"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_google_auth_default_credentials_get_a_token_for_their_own_scopes() {
    let Some(python) = vendor_python() else {
        return;
    };
    let (idp, sandbox, serve) = start("project_id = \"proj-1\"\n").await;
    let host = serve.base.trim_start_matches("http://").to_owned();
    let out = vendor_client(
        &python,
        &[
            // The ping goes to GCE_METADATA_IP's root, the rest to the host.
            ("GCE_METADATA_IP", host.clone()),
            ("GCE_METADATA_HOST", host),
            ("CLOUDSDK_CONFIG", sandbox.path().display().to_string()),
        ],
        &["google-default", CLOUD, STORAGE],
    );
    assert_eq!(out.len(), 3, "{out:?}");
    assert!(out[0].starts_with("tok-"), "{out:?}");
    assert_eq!(out[1], "proj-1");
    assert_eq!(out[2], EMAIL);
    assert_eq!(idp.calls_for(&format!("{CLOUD} {STORAGE}")), 1);
    assert_eq!(idp.calls(), 2, "the profile's own token and the scoped one");
}

/// `node` and the installed google-auth-library (tests/vendor/node), or
/// `None` after saying why (a failure under CI).
fn vendor_node() -> Option<(PathBuf, PathBuf)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vendor/node");
    let installed = dir
        .join("node_modules/google-auth-library/package.json")
        .exists();
    let node = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if node && installed {
        return Some((PathBuf::from("node"), dir.join("google.js")));
    }
    skip_or_fail(format!(
        "Node.js and google-auth-library are needed: {}; run `cargo xtask test` (or `apt-get install \
         nodejs npm` and `(cd {} && npm ci --no-audit --no-fund)`)",
        if node { "google-auth-library is not installed" } else { "node was not found" },
        dir.display()
    ))
}

fn node_client(
    node: &PathBuf,
    script: &PathBuf,
    sandbox: &Sandbox,
    host: &str,
    scopes: &[&str],
) -> Vec<String> {
    let mut cmd = Command::new(node);
    cmd.arg(script).args(scopes);
    for var in [
        "GCE_METADATA_HOST",
        "GCE_METADATA_IP",
        "METADATA_SERVER_DETECTION",
        "GOOGLE_APPLICATION_CREDENTIALS",
        "GOOGLE_CLOUD_PROJECT",
        "GCLOUD_PROJECT",
        "GCLOUD_PROJECT",
        "CLOUDSDK_CONFIG",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "http_proxy",
        "https_proxy",
    ] {
        cmd.env_remove(var);
    }
    // No gcloud configuration of the user's: only the metadata server.
    cmd.env("HOME", sandbox.path())
        .env("CLOUDSDK_CONFIG", sandbox.path())
        .env("NO_PROXY", "127.0.0.1")
        .env("GCE_METADATA_HOST", host);
    let out = cmd.output().expect("run node");
    assert!(
        out.status.success(),
        "node google.js {scopes:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_google_auth_library_finds_the_metadata_server_and_gets_tokens_and_the_project() {
    let Some((node, script)) = vendor_node() else {
        return;
    };
    let (idp, sandbox, serve) = start("project_id = \"proj-1\"\n").await;
    let host = serve.base.trim_start_matches("http://").to_owned();

    // `new GoogleAuth()`: no scopes, the profile's own token.
    let out = node_client(&node, &script, &sandbox, &host, &[]);
    assert_eq!(out, ["tok-1", "proj-1", EMAIL, "googleapis.com"]);
    assert_eq!(idp.calls(), 1);

    // With the scopes a Google API client passes: a token for them.
    let out = node_client(&node, &script, &sandbox, &host, &[CLOUD]);
    assert_eq!(out[0], "tok-2", "{out:?}");
    assert_eq!(out[1..], ["proj-1", EMAIL, "googleapis.com"]);
    assert_eq!(idp.calls_for(CLOUD), 1);
    // Again, from another process: the sidecar's cache answers.
    let out = node_client(&node, &script, &sandbox, &host, &[CLOUD]);
    assert_eq!(out[0], "tok-2");
    assert_eq!(idp.calls(), 2);
}
