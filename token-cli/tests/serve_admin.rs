//! `[serve] admin_listen`: health, readiness and metrics on an admin port,
//! the admin API (list keys, purge, refresh) only there and guarded, and
//! never the gateway or the token endpoints. Real `tokencache serve`
//! processes, raw HTTP/1.1 clients.

mod sidecar;
mod support;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use sidecar::{fake_profile, free_addr, route, start_serve, upstream, write_config, FakeIdp};
use support::{Sandbox, SECRET};

/// One request over a new connection to `addr` (a connection to one of
/// this machine's own non-loopback addresses comes from that address);
/// returns the status and the body.
fn call(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let stream = TcpStream::connect(addr).expect("connect");
    let mut s = stream;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: 0\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        head.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    let status = out[9..12].parse().expect("status");
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    (status, body)
}

/// A non-loopback address of this machine, to call from: the admin API
/// must refuse it without a secret.
fn non_loopback_ip() -> Option<IpAddr> {
    let udp = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    // No packet is sent: connecting a UDP socket only picks a route.
    udp.connect("192.0.2.1:9").ok()?;
    let ip = udp.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

fn admin_port() -> u16 {
    token_testkit::free_port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_serves_probes_metrics_and_a_loopback_only_admin_api() {
    let idp = FakeIdp::start(3600).await;
    let upstream = upstream().await;
    let sandbox = Sandbox::new();
    let port = admin_port();
    let config = write_config(
        &sandbox,
        &format!(
            "{}{}\n[serve]\nlisten = \"{}\"\nadmin_listen = \"0.0.0.0:{port}\"\n{}[[serve.routes]]\nprefix = \"/billing/\"\nupstream = \"http://{}/b\"\nprofile = \"billing\"\n",
            fake_profile("orders", &idp, "memory"),
            fake_profile("billing", &idp, "memory").replace("orders.read", "billing.read"),
            free_addr(),
            route("/orders/", &upstream, "orders"),
            upstream.addr()
        ),
    );
    let serve = start_serve(&sandbox, &config);
    let main: SocketAddr = serve.base["http://".len()..].parse().expect("addr");
    let admin = SocketAddr::from(([127, 0, 0, 1], port));

    // Probes and scrapes on the admin port; still on the main one too.
    assert_eq!(call(admin, "GET", "/healthz", &[]).0, 200);
    let (status, ready) = call(admin, "GET", "/readyz", &[]);
    assert_eq!(status, 200, "{ready}");
    assert!(ready.contains(r#""ready":true"#), "{ready}");
    let (status, metrics) = call(admin, "GET", "/metrics", &[]);
    assert_eq!(status, 200);
    assert!(metrics.contains("tokencache_"), "{metrics}");
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(call(main, "GET", path, &[]).0, 200, "main {path}");
    }
    // A kubelet names the pod's IP in Host: the main listener's Host guard
    // does not apply to the probes here.
    assert_eq!(
        call(admin, "GET", "/healthz", &[("Host", "10.1.2.3:8732")]).0,
        200
    );

    // Never the gateway or the token endpoints.
    let before = upstream.seen().len();
    let (status, body) = call(admin, "GET", "/orders/x", &[]);
    assert_eq!(status, 404, "{body}");
    let (status, body) = call(
        admin,
        "GET",
        "/v1/token?profile=orders",
        &[("Metadata", "true")],
    );
    assert_eq!(status, 404, "{body}");
    assert!(!body.contains("tok-"), "{body}");
    assert_eq!(upstream.seen().len(), before, "nothing forwarded");

    // The admin API: keys without token material.
    let (status, keys) = call(admin, "GET", "/admin/keys", &[]);
    assert_eq!(status, 200, "{keys}");
    let v: serde_json::Value = serde_json::from_str(&keys).expect("json");
    let entry = &v["keys"][1];
    assert_eq!(entry["profile"], "orders", "{keys}");
    assert_eq!(entry["state"], "fresh", "{keys}");
    assert_eq!(entry["routes"][0], "/orders/", "{keys}");
    assert!(
        entry["key"].as_str().is_some_and(|k| !k.is_empty()),
        "{keys}"
    );
    assert!(entry["expires_at"].is_string(), "{keys}");
    assert!(!keys.contains("tok-") && !keys.contains(SECRET), "{keys}");

    // Force a refresh: one IdP call, a clear answer.
    let calls = idp.calls();
    let (status, body) = call(admin, "POST", "/admin/keys/orders/refresh", &[]);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""refreshed":true"#), "{body}");
    assert!(!body.contains("tok-"), "{body}");
    assert_eq!(idp.calls(), calls + 1);

    // Not twice within the invalidate floor.
    let (status, body) = call(admin, "POST", "/admin/keys/orders/refresh", &[]);
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("too_soon"), "{body}");
    assert_eq!(idp.calls(), calls + 1);

    // Purge: the token is dropped; the next request fetches a new one.
    let (status, body) = call(admin, "POST", "/admin/keys/billing/purge", &[]);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""purged":true"#), "{body}");
    assert_eq!(idp.calls(), calls + 1, "a purge calls nobody");
    let client = reqwest::Client::new();
    let r = client
        .get(format!("{}/billing/x", serve.base))
        .send()
        .await
        .expect("gateway");
    assert_eq!(r.status(), 200);
    assert_eq!(idp.calls(), calls + 2, "the purged token was fetched anew");

    // Errors are clear.
    assert_eq!(call(admin, "POST", "/admin/keys/nope/purge", &[]).0, 404);
    assert_eq!(call(admin, "GET", "/admin/keys/orders/purge", &[]).0, 405);
    assert_eq!(call(admin, "POST", "/admin/keys", &[]).0, 405);
    // The admin API is not on the main listener.
    assert_eq!(call(main, "GET", "/admin/keys", &[]).0, 404);

    // Guarded: a browser's cross-site request, a rebinding Host, a client
    // off loopback.
    let (status, body) = call(
        admin,
        "POST",
        "/admin/keys/orders/purge",
        &[("Origin", "http://evil.example")],
    );
    assert_eq!(status, 403, "{body}");
    let (status, body) = call(
        admin,
        "GET",
        "/admin/keys",
        &[("Host", "rebind.evil.example:8732")],
    );
    assert_eq!(status, 403, "{body}");
    match non_loopback_ip() {
        Some(ip) => {
            let to = SocketAddr::new(ip, port);
            let (status, body) = call(to, "GET", "/admin/keys", &[]);
            assert_eq!(status, 403, "{body}");
            assert!(body.contains("admin_secret_file"), "{body}");
            // Probes from off loopback are answered.
            assert_eq!(call(to, "GET", "/readyz", &[]).0, 200);
        }
        None => {
            let _: Option<()> = token_testkit::skip_or_fail(
                "this machine has no non-loopback address to call the admin API from",
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_admin_secret_file_every_admin_call_must_present_it() {
    let idp = FakeIdp::start(3600).await;
    let upstream = upstream().await;
    let sandbox = Sandbox::new();
    let secret_path = sandbox.path().join("admin-secret");
    std::fs::write(&secret_path, "admin-S3cret-value\n").expect("write secret");
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&secret_path, std::fs::Permissions::from_mode(0o600))
            .expect("chmod");
    }
    let port = admin_port();
    let config = write_config(
        &sandbox,
        &format!(
            "{}\n[serve]\nlisten = \"{}\"\nadmin_listen = \"0.0.0.0:{port}\"\nadmin_secret_file = \"{}\"\n{}",
            fake_profile("orders", &idp, "memory"),
            free_addr(),
            secret_path.display(),
            route("/orders/", &upstream, "orders")
        ),
    );
    let _serve = start_serve(&sandbox, &config);
    let admin = SocketAddr::from(([127, 0, 0, 1], port));
    let (status, body) = call(admin, "GET", "/admin/keys", &[]);
    assert_eq!(status, 401, "even from loopback: {body}");
    assert!(!body.contains("admin-S3cret"), "{body}");
    let wrong = [("Authorization", "Bearer admin-S3cret-valuX")];
    assert_eq!(call(admin, "GET", "/admin/keys", &wrong).0, 401);
    let right = [("Authorization", "Bearer admin-S3cret-value")];
    let (status, body) = call(admin, "GET", "/admin/keys", &right);
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("admin-S3cret"), "{body}");
    // With the secret, any client and any Host name.
    if let Some(ip) = non_loopback_ip() {
        let to = SocketAddr::new(ip, port);
        let mut h = right.to_vec();
        h.push(("Host", "tokencache-admin.svc:8732"));
        let (status, body) = call(to, "POST", "/admin/keys/orders/refresh", &h);
        assert_eq!(status, 200, "{body}");
    }
}
