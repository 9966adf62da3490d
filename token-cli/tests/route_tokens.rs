//! Routes with token parameters of their own (`scopes`, `audience`,
//! `resource` on a `[[serve.routes]]` entry): one client registration
//! serving several APIs. The built `tokencache serve`, token-testkit's
//! recording upstream, and a counting token endpoint that records each
//! call's form, so the IdP's side of every parameter set is observed.

mod sidecar;
mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use sidecar::{
    fake_profile, free_addr, route, start_serve, upstream, write_config, FakeIdp, Serve,
};
use support::Sandbox;
use token_testkit::{Idp, Upstream};

/// The `Authorization` the upstream saw for each request made with
/// `?via=NAME`, by NAME.
fn seen_by(upstream: &Upstream, via: &str) -> Vec<String> {
    upstream
        .seen()
        .iter()
        .filter(|s| s.path_and_query.ends_with(&format!("?via={via}")))
        .map(|s| s.authorization().unwrap_or_default().to_owned())
        .collect()
}

/// Sends `n` requests through `prefix` (marked `?via=via`), each of which
/// must succeed.
async fn through(client: &reqwest::Client, serve: &Serve, prefix: &str, via: &str, n: usize) {
    for _ in 0..n {
        let r = client
            .get(format!("{}{prefix}x?via={via}", serve.base))
            .header("authorization", "Bearer caller-must-not-pass")
            .send()
            .await
            .expect("request");
        assert_eq!(
            r.status(),
            200,
            "{prefix}: {}",
            r.text().await.unwrap_or_default()
        );
    }
}

async fn readyz(client: &reqwest::Client, serve: &Serve) -> (u16, Value) {
    let r = client
        .get(format!("{}/readyz", serve.base))
        .send()
        .await
        .expect("readyz");
    let status = r.status().as_u16();
    (
        status,
        serde_json::from_str(&r.text().await.expect("body")).expect("json"),
    )
}

fn config(idp: &FakeIdp, upstream: &Upstream, listen: &str, routes: &[(&str, &str)]) -> String {
    let mut text = format!(
        "{}\n[serve]\nlisten = \"{listen}\"\n",
        fake_profile("orders", idp, "memory")
    );
    for (prefix, params) in routes {
        text.push_str(&route(prefix, upstream, "orders"));
        text.push_str(params);
        text.push('\n');
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_scopes_and_audience_get_their_own_tokens_with_one_idp_call_per_parameter_set() {
    let idp = FakeIdp::start(3600).await;
    let upstream = upstream().await;
    let sandbox = Sandbox::new();
    let path = write_config(
        &sandbox,
        &config(
            &idp,
            &upstream,
            &free_addr(),
            &[
                ("/a/", "scopes = [\"inventory.read\"]"),
                // The same parameter set as /a/: the same token.
                ("/b/", "scopes = [\"inventory.read\"]"),
                ("/c/", "audience = \"https://c.example\""),
                (
                    "/r/",
                    "scopes = [\"billing.read\", \"billing.write\"]\nresource = \"https://billing.example/\"",
                ),
                ("/d/", ""),
            ],
        ),
    );
    // Started = every token fetched (/readyz 200), the routes' too.
    let serve = start_serve(&sandbox, &path);
    assert_eq!(
        idp.calls(),
        4,
        "the profile's and three route parameter sets"
    );
    assert_eq!(idp.calls_for("inventory.read"), 1);
    assert_eq!(idp.calls_with("audience", "https://c.example"), 1);
    assert_eq!(idp.calls_for("orders.read"), 2, "the profile's and /c/'s");
    assert_eq!(idp.calls_for("billing.read billing.write"), 1);
    assert_eq!(idp.calls_with("resource", "https://billing.example/"), 1);

    let client = reqwest::Client::new();
    for (prefix, via) in [
        ("/a/", "a"),
        ("/b/", "b"),
        ("/c/", "c"),
        ("/r/", "r"),
        ("/d/", "d"),
    ] {
        through(&client, &serve, prefix, via, 10).await;
    }
    let token = |via: &str| {
        let seen = seen_by(&upstream, via);
        assert_eq!(seen.len(), 10, "{via}");
        assert!(seen.iter().all(|s| *s == seen[0]), "{via}: {seen:?}");
        assert!(seen[0].starts_with("Bearer tok-"), "{via}: {}", seen[0]);
        seen[0].clone()
    };
    let (a, b, c, r, d) = (token("a"), token("b"), token("c"), token("r"), token("d"));
    assert_eq!(a, b, "one token per parameter set");
    let distinct: std::collections::HashSet<_> = [&a, &c, &r, &d].into_iter().collect();
    assert_eq!(distinct.len(), 4, "{a} {c} {r} {d}");
    assert_eq!(idp.calls(), 4, "50 requests, no more IdP calls");

    // The profile's own token is the one routes without parameters send.
    let text = client
        .get(format!("{}/v1/token?profile=orders", serve.base))
        .header("metadata", "true")
        .send()
        .await
        .expect("token")
        .text()
        .await
        .expect("body");
    let v: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(
        format!("Bearer {}", v["access_token"].as_str().expect("s")),
        d
    );

    // /readyz lists each route with a token of its own.
    let (status, body) = readyz(&client, &serve).await;
    assert_eq!(status, 200, "{body}");
    for prefix in ["/a/", "/b/", "/c/", "/r/"] {
        assert_eq!(body["routes"][prefix]["ready"], true, "{prefix}: {body}");
    }
    assert!(body["routes"].get("/d/").is_none(), "{body}");
}

fn hup(serve: &Serve) {
    let status = Command::new("kill")
        .args(["-HUP", &serve.child.id().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(status.success());
}

fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// Polls `check` (bounded: 15 s) until it holds; panics naming `what`.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not happen within 15 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_fetches_changed_route_tokens_keeps_unchanged_ones_and_readyz_names_a_route_without_one(
) {
    let idp = FakeIdp::start(3600).await;
    let upstream = upstream().await;
    let sandbox = Sandbox::new();
    let listen = free_addr();
    let path = write_config(
        &sandbox,
        &config(
            &idp,
            &upstream,
            &listen,
            &[
                ("/a/", "scopes = [\"inventory.read\"]"),
                ("/c/", "audience = \"https://c.example\""),
            ],
        ),
    );
    let serve = start_serve(&sandbox, &path);
    assert_eq!(idp.calls(), 3);
    let client = reqwest::Client::new();
    through(&client, &serve, "/a/", "a1", 1).await;
    through(&client, &serve, "/c/", "c1", 1).await;

    // /a/ asks for other scopes now; /c/ is unchanged.
    replace(
        &path,
        &config(
            &idp,
            &upstream,
            &listen,
            &[
                ("/a/", "scopes = [\"inventory.write\"]"),
                ("/c/", "audience = \"https://c.example\""),
            ],
        ),
    );
    hup(&serve);
    eventually("the new /a/ scopes fetched", || async {
        idp.calls_for("inventory.write") == 1
    })
    .await;
    // The reload swaps right after the fetch: wait for the new token.
    let a1 = seen_by(&upstream, "a1")[0].clone();
    eventually("/a/ sending its new token", || async {
        through(&client, &serve, "/a/", "a2", 1).await;
        seen_by(&upstream, "a2").last() != Some(&a1)
    })
    .await;
    through(&client, &serve, "/c/", "c2", 1).await;
    assert_eq!(
        seen_by(&upstream, "c2"),
        seen_by(&upstream, "c1"),
        "an unchanged route keeps its token"
    );
    assert_eq!(idp.calls_with("audience", "https://c.example"), 1);
    assert_eq!(idp.calls(), 4, "only the changed parameter set was fetched");

    // A new route whose token cannot be had: the reload goes through (a
    // transient failure), /readyz names the route, the others still serve.
    idp.down.store(true, std::sync::atomic::Ordering::SeqCst);
    replace(
        &path,
        &config(
            &idp,
            &upstream,
            &listen,
            &[
                ("/a/", "scopes = [\"inventory.write\"]"),
                ("/c/", "audience = \"https://c.example\""),
                ("/e/", "scopes = [\"billing.read\"]"),
            ],
        ),
    );
    hup(&serve);
    eventually("/readyz naming /e/", || async {
        let (status, body) = readyz(&client, &serve).await;
        status == 503 && body["routes"]["/e/"]["ready"] == false
    })
    .await;
    let (_, body) = readyz(&client, &serve).await;
    assert_eq!(body["profiles"]["orders"]["ready"], true, "{body}");
    assert_eq!(body["routes"]["/a/"]["ready"], true, "{body}");
    let cause = body["routes"]["/e/"]["cause"].as_str().expect("cause");
    assert!(
        cause.contains("503") || cause.contains("temporarily_unavailable"),
        "{cause}"
    );
    let r = client
        .get(format!("{}/e/x", serve.base))
        .send()
        .await
        .expect("e");
    assert_eq!(r.status(), 503);
    through(&client, &serve, "/a/", "a3", 1).await;
    assert!(upstream
        .seen()
        .iter()
        .all(|s| !s.path_and_query.starts_with("/base/x?via=e")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_provider_issues_a_token_per_route_scope_set_to_the_one_client() {
    let Some(idp) = Idp::shared() else { return };
    let upstream = upstream().await;
    let sandbox = Sandbox::new();
    let secret_file = sandbox.path().join("client-secret");
    std::fs::write(&secret_file, "basic:secret%+/ ok~&=\n").expect("write");
    let profile = format!(
        "[profiles.orders]\ntoken_url = \"{}\"\nclient_id = \"basic-client\"\nclient_secret_file = \"{}\"\nscopes = [\"orders.read\"]\nstore = \"memory\"\n",
        idp.token_url(),
        secret_file.display()
    );
    let serve_table = |routes: &[(&str, &str)]| {
        let mut text = format!("{profile}\n[serve]\nlisten = \"{}\"\n", free_addr());
        for (prefix, params) in routes {
            text.push_str(&route(prefix, &upstream, "orders"));
            text.push_str(params);
            text.push('\n');
        }
        text
    };
    let before = idp.token_requests();
    let path = write_config(
        &sandbox,
        &serve_table(&[
            ("/r/", ""),
            ("/w/", "scopes = [\"orders.write\"]"),
            ("/rw/", "scopes = [\"orders.write\", \"orders.read\"]"),
        ]),
    );
    let serve = start_serve(&sandbox, &path);
    assert_eq!(idp.token_requests() - before, 3, "one per scope set");
    let client = reqwest::Client::new();
    for (prefix, via) in [("/r/", "r"), ("/w/", "w"), ("/rw/", "rw")] {
        through(&client, &serve, prefix, via, 5).await;
    }
    let mut tokens = std::collections::HashSet::new();
    for via in ["r", "w", "rw"] {
        let seen = seen_by(&upstream, via);
        assert!(seen.iter().all(|s| *s == seen[0]), "{via}: {seen:?}");
        let token = seen[0].strip_prefix("Bearer ").expect("bearer").to_owned();
        let record = idp.introspect(&token).await;
        assert_eq!(record["active"], true, "{via}: {record}");
        assert_eq!(record["client_id"], "basic-client");
        tokens.insert(token);
    }
    assert_eq!(tokens.len(), 3, "a token per scope set");
    assert_eq!(idp.token_requests() - before, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_scope_the_idp_refuses_stops_start_up_with_exit_4_naming_the_route() {
    let idp = FakeIdp::start(3600).await;
    let upstream = upstream().await;
    let sandbox = Sandbox::new();
    let path = write_config(
        &sandbox,
        &config(
            &idp,
            &upstream,
            &free_addr(),
            &[("/x/", "scopes = [\"refused.read\"]")],
        ),
    );
    let mut child = sandbox
        .cmd()
        .args(["serve", "--config"])
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start serve");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve did not stop on a refused route token");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("read");
    assert_eq!(status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("route /x/"), "{stderr}");
    assert!(stderr.contains("invalid_scope"), "{stderr}");
    assert_eq!(idp.calls_for("refused.read"), 1, "a refusal is not retried");
}
