//! The admin listener's own limits: its connection cap (`admin_max_connections`)
//! closes connections beyond it at once without touching the gateway's
//! listener, and a connection that sends no request head is closed after
//! the header-read timeout, as on the main listener.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use token_cache::{AccessToken, Credential, CredentialError, TokenCache, TokenRequest};
use token_serve::{AdminListener, ServeConfig, Sidecar};

#[derive(Debug)]
struct Idp;

#[async_trait]
impl Credential for Idp {
    fn id(&self) -> &str {
        "admin-test-idp"
    }

    async fn fetch(
        &self,
        _request: &TokenRequest,
        _previous: Option<&AccessToken>,
    ) -> Result<AccessToken, CredentialError> {
        Ok(AccessToken::new("admin-test-token", SystemTime::now())
            .with_expires_in(Duration::from_secs(3600)))
    }
}

/// The status of `GET path` over a new connection to `addr`.
fn status(addr: std::net::SocketAddr, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.get(9..12)?.parse().ok()
}

/// Whether the server closed `s` (EOF) without answering.
fn closed(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        // No answer within the read timeout: still open.
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            false
        }
        Err(_) => true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_cap_and_timeouts_hold_without_touching_the_gateway_listener() {
    let config =
        ServeConfig::parse("[serve]\nheader_read_timeout_seconds = 1\nidle_timeout_seconds = 1\n")
            .expect("config");
    let cache = TokenCache::builder(Idp).build();
    let request = TokenRequest::builder().scope("s").build();
    let sidecar = Sidecar::builder(config.clone())
        .profile("p", &cache, &request)
        .build()
        .expect("sidecar");
    sidecar.prefetch().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let main = listener.local_addr().expect("addr");
    let admin = AdminListener::new(
        tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind"),
        None,
        1,
    );
    let admin_addr = admin.local_addr().expect("addr");
    tokio::spawn(token_serve::serve_with_admin(
        listener,
        Some(admin),
        std::future::ready(Some(sidecar)),
        std::future::pending(),
        config.limits(),
    ));
    let (main_status, admin_status) = tokio::task::spawn_blocking(move || {
        (status(main, "/readyz"), status(admin_addr, "/readyz"))
    })
    .await
    .expect("join");
    assert_eq!(main_status, Some(200));
    assert_eq!(admin_status, Some(200));

    tokio::task::spawn_blocking(move || {
        // One admin connection, holding the only place.
        let mut held = TcpStream::connect(admin_addr).expect("connect");
        std::thread::sleep(Duration::from_millis(200));
        // The second is closed at once, unanswered.
        let mut second = TcpStream::connect(admin_addr).expect("connect");
        write!(
            second,
            "GET /healthz HTTP/1.1\r\nHost: {admin_addr}\r\n\r\n"
        )
        .ok();
        assert!(closed(&mut second), "beyond admin_max_connections");
        // The gateway's listener is not affected.
        assert_eq!(status(main, "/healthz"), Some(200));
        // The held connection sends nothing: closed after the header-read
        // timeout, which frees the place.
        assert!(closed(&mut held), "header-read timeout");
        assert_eq!(status(admin_addr, "/healthz"), Some(200));
    })
    .await
    .expect("join");
}
