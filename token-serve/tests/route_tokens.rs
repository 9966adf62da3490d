//! A route's own token parameters in an embedded [`Sidecar`]: the route's
//! token is its profile's request with the route's scopes (a cache key of
//! its own, on the profile's cache), prefetched and kept warm with the
//! profiles', and a `401 invalid_token` for it renews that token, not the
//! profile's. A real hyper upstream; the credential is the engine's test
//! double, naming each token after the scopes it was asked for.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use token_cache::{AccessToken, Credential, CredentialError, TokenCache, TokenRequest};
use token_serve::{ServeConfig, Sidecar};
use token_testkit::{Seen, Upstream};

/// Issues `<scopes>-<n>`, counting calls.
#[derive(Debug, Default)]
struct ScopedIdp(AtomicUsize);

#[async_trait]
impl Credential for ScopedIdp {
    fn id(&self) -> &str {
        "scoped-idp"
    }

    async fn fetch(
        &self,
        request: &TokenRequest,
        _previous: Option<&AccessToken>,
    ) -> Result<AccessToken, CredentialError> {
        let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(AccessToken::new(
            format!("{}-{n}", request.scopes().join("+")),
            SystemTime::now(),
        )
        .with_expires_in(Duration::from_secs(3600)))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routes_scopes_get_a_token_of_their_own_prefetched_kept_warm_and_renewed_on_401() {
    let upstream = Upstream::start_with(|seen: Seen| async move {
        Response::new(Full::new(Bytes::from(
            seen.authorization().unwrap_or_default().to_owned(),
        )))
    })
    .await;
    let port = upstream.addr().port();
    let config = ServeConfig::parse(&format!(
        "[[serve.routes]]\nprefix = \"/a/\"\nupstream = \"http://127.0.0.1:{port}\"\nprofile = \"p\"\nscopes = [\"inv.read\"]\n\
         [[serve.routes]]\nprefix = \"/p/\"\nupstream = \"http://127.0.0.1:{port}\"\nprofile = \"p\"\n"
    ))
    .unwrap();
    let idp = std::sync::Arc::new(ScopedIdp::default());
    let cache = TokenCache::builder(ArcIdp(idp.clone())).build();
    let request = TokenRequest::builder().scope("p.read").build();
    let sidecar = Sidecar::builder(config)
        .profile("p", &cache, &request)
        .build()
        .unwrap();

    let fetched = sidecar.prefetch().await;
    let names: Vec<&str> = fetched.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["p", "p (route /a/)"]);
    assert!(fetched.iter().all(|(_, r)| r.is_ok()));
    assert_eq!(idp.0.load(Ordering::SeqCst), 2);
    let warm = sidecar.keep_warm().unwrap();
    assert_eq!(warm.len(), 2, "the profile's and the route's");
    let ready = sidecar.route_readiness().await;
    assert_eq!(ready.len(), 1);
    assert_eq!(ready[0].0, "/a/");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(token_serve::serve(
        sidecar,
        listener,
        std::future::pending(),
        Duration::from_secs(1),
    ));
    let client = reqwest::Client::new();
    let get = |path: &'static str| {
        let (client, base) = (client.clone(), base.clone());
        async move {
            client
                .get(format!("{base}{path}"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };
    assert_eq!(get("/a/x").await, "Bearer inv.read-2");
    assert_eq!(get("/p/x").await, "Bearer p.read-1");

    // The upstream rejects the route's token: it is renewed (one call, for
    // the route's scopes) and the request retried; the profile's stays.
    upstream.reject("inv.read-2");
    assert_eq!(get("/a/x").await, "Bearer inv.read-3");
    assert_eq!(get("/p/x").await, "Bearer p.read-1");
    assert_eq!(idp.0.load(Ordering::SeqCst), 3);
    drop(warm);
}

/// The counting credential behind an `Arc`, so the test reads its count.
#[derive(Debug)]
struct ArcIdp(std::sync::Arc<ScopedIdp>);

#[async_trait]
impl Credential for ArcIdp {
    fn id(&self) -> &str {
        self.0.id()
    }

    async fn fetch(
        &self,
        request: &TokenRequest,
        previous: Option<&AccessToken>,
    ) -> Result<AccessToken, CredentialError> {
        self.0.fetch(request, previous).await
    }
}
