//! Connection workers (`[serve] workers`): a connection is served on
//! another thread as soon as it is accepted, so the sidecar must be in
//! place before the first accept.

use std::time::Duration;

use token_cache::{TokenCache, TokenRequest};
use token_serve::{ServeConfig, Sidecar};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

#[allow(dead_code)]
mod support;
use support::StaticIdp;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_already_waiting_when_serve_starts_is_answered_by_the_ready_sidecar() {
    // The request is sent before `serve` first runs, so its accept and the
    // ready sidecar are both there at its first turn. Were the connection
    // accepted (and handed to a worker) first, it would be answered
    // `503 starting` by a sidecar that is in fact ready; the order of the
    // two is random without the fix, so twenty rounds.
    for round in 0..20 {
        let config = ServeConfig::parse("[serve]\nworkers = 2\n").unwrap();
        assert_eq!(config.connections.workers, 2);
        let limits = config.limits();
        let cache = TokenCache::builder(StaticIdp("static-token")).build();
        let request = TokenRequest::builder().scope("s").build();
        let sidecar = Sidecar::builder(config)
            .profile("orders", &cache, &request)
            .build()
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = TcpStream::connect(addr).await.unwrap();
        client
            .write_all(
                b"GET /v1/token?profile=orders HTTP/1.1\r\nHost: localhost\r\nMetadata: true\r\nConnection: close\r\n\r\n",
            )
            .await
            .unwrap();
        // Time for the reactor to record the listener's readiness before
        // `serve` first looks at it.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let served = tokio::spawn(token_serve::serve(
            sidecar,
            listener,
            std::future::pending(),
            limits,
        ));
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut answer))
            .await
            .expect("an answer within 10 s")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "round {round}: {answer}"
        );
        assert!(answer.contains("static-token"), "round {round}: {answer}");
        served.abort();
    }
}
