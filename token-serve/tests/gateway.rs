//! The gateway's body handling against a real hyper upstream: a body
//! larger than the retry limit streams through whole; its `401
//! invalid_token` is passed to the caller (no retry, since the body is
//! gone) but the token is invalidated, so the next request carries a new
//! one. The `Debug` of a sidecar with a secret shows no secret.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use token_cache::{AccessToken, Credential, CredentialError, Secret, TokenCache, TokenRequest};
use token_serve::{ServeConfig, Sidecar};
use token_testkit::{Seen, Upstream};

#[derive(Debug, Default)]
struct CountingIdp(AtomicUsize);

#[async_trait]
impl Credential for CountingIdp {
    fn id(&self) -> &str {
        "counting-idp"
    }

    async fn fetch(
        &self,
        _request: &TokenRequest,
        _previous: Option<&AccessToken>,
    ) -> Result<AccessToken, CredentialError> {
        let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(AccessToken::new(format!("token-{n}"), SystemTime::now())
            .with_expires_in(Duration::from_secs(3600)))
    }
}

/// Answers `<authorization> <body length>`, or 401 invalid_token to
/// `token-1`.
async fn upstream() -> Upstream {
    let upstream = Upstream::start_with(|seen: Seen| async move {
        let auth = seen.authorization().unwrap_or_default();
        let len = seen.body.as_ref().expect("the whole body").len();
        Response::new(Full::new(Bytes::from(format!("{auth} {len}"))))
    })
    .await;
    upstream.reject("token-1");
    upstream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_retry_limit_streams_whole_and_its_401_invalidates_without_retry() {
    let upstream = upstream().await;
    let port = upstream.addr().port();
    let config = ServeConfig::parse(&format!(
        "[serve]\nretry_body_limit = 1024\n[[serve.routes]]\nprefix = \"/up/\"\nupstream = \"http://127.0.0.1:{port}\"\nprofile = \"p\"\n"
    ))
    .unwrap();
    let cache = TokenCache::builder(CountingIdp::default()).build();
    let request = TokenRequest::builder().scope("s").build();
    let sidecar = Sidecar::builder(config)
        .profile("p", &cache, &request)
        .secret(Secret::new("sidecar-secret-value"))
        .build()
        .unwrap();
    let debug = format!("{sidecar:?}");
    assert!(!debug.contains("sidecar-secret-value"), "{debug}");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(token_serve::serve(
        sidecar,
        listener,
        std::future::pending(),
        Duration::from_secs(1),
    ));
    let client = reqwest::Client::new();
    let big = vec![b'x'; 1 << 20];

    let r = client
        .post(format!("{base}/up/upload"))
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "passed through, not retried");
    assert_eq!(upstream.seen().len(), 1);

    let r = client
        .post(format!("{base}/up/upload"))
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.text().await.unwrap(),
        format!("Bearer token-2 {}", 1 << 20)
    );
    assert_eq!(cache.stats().idp_calls, 2);
}
