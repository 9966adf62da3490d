//! `tokencache get --managed-identity azure-imds|app-service|gcp` end to end,
//! against a loopback server that answers as the three metadata protocols
//! document (required headers checked, error bodies as the platforms send
//! them). The endpoints are found the way the platforms' own SDKs find
//! overrides: AZURE_POD_IDENTITY_AUTHORITY_HOST, IDENTITY_ENDPOINT +
//! IDENTITY_HEADER, GCE_METADATA_HOST.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use support::{json, ok, stderr, stdout, Sandbox};

const TOKEN: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.cli-managed-identity";
const IDENTITY_HEADER: &str = "a4f2c1de-0b9a-4c3d-8e7f-identity-header";

/// A metadata server on 127.0.0.1 speaking IMDS, App Service and Google.
struct Metadata {
    addr: String,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Metadata {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&requests);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let seen = Arc::clone(&seen);
                std::thread::spawn(move || serve(stream, &seen));
            }
        });
        Self { addr, requests }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("lock").clone()
    }
}

fn serve(mut stream: std::net::TcpStream, seen: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let target = line.split_whitespace().nth(1).unwrap_or("").to_owned();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.trim().split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    seen.lock().expect("lock").push(target.clone());
    let has = |k: &str, v: &str| headers.iter().any(|(hk, hv)| hk == k && hv == v);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("time")
        .as_secs();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let (status, extra, body) = match path {
        "/metadata/identity/oauth2/token" if !has("metadata", "true") => (
            400,
            "",
            r#"{"error":"invalid_request","error_description":"Required metadata header not specified"}"#
                .to_owned(),
        ),
        "/metadata/identity/oauth2/token" if query.contains("client_id=unknown") => (
            400,
            "",
            r#"{"error":"invalid_request","error_description":"Identity not found"}"#.to_owned(),
        ),
        "/metadata/identity/oauth2/token" => (
            200,
            "",
            format!(
                r#"{{"access_token":"{TOKEN}","refresh_token":"","expires_in":"86399","expires_on":"{}","ext_expires_in":"86399","not_before":"{now}","resource":"https://vault.azure.net","token_type":"Bearer"}}"#,
                now + 86399
            ),
        ),
        "/msi/token" if !has("x-identity-header", IDENTITY_HEADER) => (
            401,
            "",
            r#"{"statusCode":401,"message":"Unauthorized"}"#.to_owned(),
        ),
        "/msi/token" => (
            200,
            "",
            format!(
                r#"{{"access_token":"{TOKEN}","expires_on":"{}","resource":"https://vault.azure.net","token_type":"Bearer","client_id":"5E29463D-71DA-4FE0-8E69-999B57DB23B0"}}"#,
                now + 86400
            ),
        ),
        "/computeMetadata/v1/instance/service-accounts/default/token"
            if has("metadata-flavor", "Google") =>
        {
            (
                200,
                "Metadata-Flavor: Google\r\n",
                format!(r#"{{"access_token":"{TOKEN}","expires_in":3599,"token_type":"Bearer"}}"#),
            )
        }
        _ => (404, "", "Not Found".to_owned()),
    };
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        _ => "Not Found",
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

fn get(sb: &Sandbox, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = sb.cmd();
    for var in [
        "AZURE_POD_IDENTITY_AUTHORITY_HOST",
        "IDENTITY_ENDPOINT",
        "IDENTITY_HEADER",
        "GCE_METADATA_HOST",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.arg("get").args(args).output().expect("run tokencache")
}

fn no_secrets(o: &Output) {
    for s in [stdout(o), stderr(o)] {
        assert!(!s.contains(IDENTITY_HEADER), "the identity header leaked");
    }
    assert!(!stderr(o).contains(TOKEN), "the token on stderr");
}

#[test]
fn azure_imds_token_is_fetched_once_without_a_proxy_and_then_served_from_the_cache() {
    let md = Metadata::start();
    let sb = Sandbox::new();
    let host = format!("http://{}", md.addr);
    // A proxy that does not exist: the IdP credentials would go through it
    // (and fail); metadata endpoints are never proxied.
    let dead_proxy = format!("http://127.0.0.1:{}", token_testkit::free_port());
    let env = [
        ("AZURE_POD_IDENTITY_AUTHORITY_HOST", host.as_str()),
        ("HTTP_PROXY", dead_proxy.as_str()),
        ("http_proxy", dead_proxy.as_str()),
        ("ALL_PROXY", dead_proxy.as_str()),
    ];
    let args = [
        "--managed-identity",
        "azure-imds",
        "--scope",
        "https://vault.azure.net/.default",
        "--format",
        "json",
    ];
    let first = get(&sb, &env, &args);
    ok(&first);
    assert_eq!(json(&first)["access_token"], TOKEN);
    assert_eq!(json(&first)["from_cache"], false);
    let second = get(&sb, &env, &args);
    ok(&second);
    assert_eq!(json(&second)["from_cache"], true);
    let requests = md.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert!(
        requests[0].contains("api-version=2018-02-01"),
        "{requests:?}"
    );
    assert!(
        requests[0].contains("resource=https%3A%2F%2Fvault.azure.net"),
        "{requests:?}"
    );
    // A day-long token: it expires in about 24 h and is not due yet.
    assert!(json(&first)["expires_in"].as_u64().unwrap() > 86_000);
}

#[test]
fn azure_imds_unknown_identity_is_reported_with_the_documented_error() {
    let md = Metadata::start();
    let sb = Sandbox::new();
    let host = format!("http://{}", md.addr);
    let out = get(
        &sb,
        &[("AZURE_POD_IDENTITY_AUTHORITY_HOST", host.as_str())],
        &[
            "--managed-identity",
            "azure-imds",
            "--identity",
            "unknown",
            "--resource",
            "https://vault.azure.net",
        ],
    );
    assert!(!out.status.success());
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("Identity not found"),
        "{}",
        stderr(&out)
    );
    assert!(md.requests()[0].contains("client_id=unknown"));
}

#[test]
fn app_service_uses_identity_endpoint_and_header_without_showing_the_header() {
    let md = Metadata::start();
    let sb = Sandbox::new();
    let endpoint = format!("http://{}/msi/token", md.addr);
    let env = [
        ("IDENTITY_ENDPOINT", endpoint.as_str()),
        ("IDENTITY_HEADER", IDENTITY_HEADER),
    ];
    let out = get(
        &sb,
        &env,
        &[
            "--managed-identity",
            "app-service",
            "--resource",
            "https://vault.azure.net",
        ],
    );
    ok(&out);
    assert_eq!(stdout(&out).trim(), TOKEN);
    no_secrets(&out);
    assert!(md.requests()[0].contains("api-version=2019-08-01"));

    let missing = get(
        &sb,
        &[],
        &[
            "--managed-identity",
            "app-service",
            "--resource",
            "https://other",
        ],
    );
    assert_eq!(missing.status.code(), Some(3), "{}", stderr(&missing));
    assert!(
        stderr(&missing).contains("IDENTITY_ENDPOINT is not set"),
        "{}",
        stderr(&missing)
    );
}

#[test]
fn gcp_metadata_server_token_with_scopes() {
    let md = Metadata::start();
    let sb = Sandbox::new();
    let out = get(
        &sb,
        &[("GCE_METADATA_HOST", md.addr.as_str())],
        &[
            "--managed-identity",
            "gcp",
            "--scope",
            "https://www.googleapis.com/auth/cloud-platform",
            "--format",
            "header",
        ],
    );
    ok(&out);
    assert_eq!(stdout(&out).trim(), format!("Bearer {TOKEN}"));
    assert!(md.requests()[0].contains("scopes=https%3A%2F%2Fwww.googleapis.com"));
}

#[test]
fn managed_identity_conflicts_with_idp_settings() {
    let sb = Sandbox::new();
    let out = get(
        &sb,
        &[],
        &[
            "--managed-identity",
            "gcp",
            "--token-url",
            "http://127.0.0.1:9/token",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot be used with"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_profile_selects_the_managed_identity_and_may_not_mix_in_idp_settings() {
    let md = Metadata::start();
    let sb = Sandbox::new();
    let config = sb.config_file();
    std::fs::create_dir_all(config.parent().expect("dir")).expect("mkdir");
    std::fs::write(
        &config,
        r#"
[profiles.vm]
managed_identity = "azure-imds"
identity = "c0ffee"
scopes = ["https://vault.azure.net/.default"]

[profiles.mixed]
managed_identity = "gcp"
token_url = "http://127.0.0.1:9/token"
"#,
    )
    .expect("write");
    let host = format!("http://{}", md.addr);
    let env = [("AZURE_POD_IDENTITY_AUTHORITY_HOST", host.as_str())];
    let out = get(&sb, &env, &["--profile", "vm"]);
    ok(&out);
    assert_eq!(stdout(&out).trim(), TOKEN);
    assert!(md.requests()[0].contains("client_id=c0ffee"));

    let mixed = get(&sb, &env, &["--profile", "mixed"]);
    assert_eq!(mixed.status.code(), Some(3), "{}", stderr(&mixed));
    assert!(
        stderr(&mixed).contains("the profile sets token_url"),
        "{}",
        stderr(&mixed)
    );
}
