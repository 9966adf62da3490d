//! `tokencache serve` as a forward proxy (issue 19), against the built
//! binary with curl: `HTTP_PROXY`-style absolute-form requests and
//! `HTTPS_PROXY`-style `CONNECT` tunnels (TLS terminated with the CA the
//! sidecar creates under `[serve.proxy]`) reach the routed host's upstream
//! with the profile's token and never the client's; unlisted hosts are
//! refused; `--check-config` refuses a CA whose key is not its own.
//! (Each behaviour is tested against the library, with an HTTPS upstream,
//! HTTP/2 in the tunnel and Python `requests`, in token-serve's
//! `tests/proxy.rs`.)

mod sidecar;
mod support;

use sidecar::{fake_profile, free_addr, start_serve, write_config, FakeIdp};
use support::Sandbox;
use token_testkit::{skip_or_fail, Upstream};

/// `curl ARGS` (no proxy from the environment): exit code, stdout, stderr.
async fn curl(args: &[&str]) -> Option<(i32, String, String)> {
    let out = tokio::process::Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "20"])
        .args(args)
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("HTTPS_PROXY")
        .env_remove("ALL_PROXY")
        .env_remove("no_proxy")
        .env_remove("NO_PROXY")
        .output()
        .await;
    match out {
        Ok(o) => Some((
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )),
        Err(e) => skip_or_fail(format!(
            "curl cannot run ({e}): install it (apt-get install curl)"
        )),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_forwards_http_proxy_and_connect_requests_for_routed_hosts_only() {
    let sandbox = Sandbox::new();
    let idp = FakeIdp::start(3600).await;
    let upstream = Upstream::start().await;
    let ca = sandbox.path().join("proxy-ca.pem");
    let ca_key = sandbox.path().join("proxy-ca.key");
    let listen = free_addr();
    let config = write_config(
        &sandbox,
        &format!(
            "{}\n[serve]\nlisten = \"{listen}\"\n[[serve.routes]]\nhost = \"orders.internal\"\nupstream = \"{}\"\nprofile = \"orders\"\n[serve.proxy]\nca_cert_file = \"{}\"\nca_key_file = \"{}\"\n",
            fake_profile("orders", &idp, "memory"),
            upstream.url(),
            ca.display(),
            ca_key.display()
        ),
    );
    let serve = start_serve(&sandbox, &config);
    let proxy = serve.base.clone();
    let Some((code, body, err)) = curl(&[
        "-x",
        &proxy,
        "-H",
        "Authorization: Bearer the-client-s-own",
        "http://orders.internal/v1/a?x=1",
    ])
    .await
    else {
        return;
    };
    assert_eq!((code, body.as_str()), (0, "ok /v1/a?x=1"), "{err}");
    let ca_arg = ca.display().to_string();
    let (code, body, err) = curl(&[
        "--proxy",
        &proxy,
        "--cacert",
        &ca_arg,
        "-H",
        "Authorization: Bearer the-client-s-own",
        "https://orders.internal/v1/b",
    ])
    .await
    .expect("curl ran before");
    assert_eq!((code, body.as_str()), (0, "ok /v1/b"), "{err}");
    let seen = upstream.seen();
    assert_eq!(seen.len(), 2);
    for s in &seen {
        assert_eq!(s.headers.get_all("authorization").iter().count(), 1);
        assert_eq!(s.bearer(), Some("tok-1"));
    }
    // Hosts no route names: refused, plain and through CONNECT.
    let (_, body, _) = curl(&["-x", &proxy, "-w", " %{http_code}", "http://evil.example/"])
        .await
        .expect("curl");
    assert!(
        body.ends_with(" 403") && body.contains("host_not_routed"),
        "{body}"
    );
    let (code, _, err) = curl(&[
        "--proxy",
        &proxy,
        "--cacert",
        &ca_arg,
        "https://evil.example/",
    ])
    .await
    .expect("curl");
    assert_ne!(code, 0);
    assert!(err.contains("403"), "{err}");
    assert_eq!(upstream.seen().len(), 2, "nothing more was forwarded");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&ca_key)
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
    drop(serve);

    // A key that is not the CA's: --check-config says so (exit 3), and
    // serve does not start.
    std::fs::write(
        &ca_key,
        rcgen::KeyPair::generate().expect("key").serialize_pem(),
    )
    .expect("write");
    let out = sandbox
        .cmd()
        .args(["serve", "--check-config", "--config"])
        .arg(&config)
        .output()
        .expect("run");
    let err = support::stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("do not match"), "{err}");
}
