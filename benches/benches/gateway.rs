//! The sidecar on loopback, in one run: a request straight to the upstream,
//! through a plain hyper reverse proxy without token work (the floor), and
//! through the token-serve gateway (an inject route, and an `exchange` route
//! whose caller's exchanged token is cached); and the token endpoint. Latency rows
//! send one request at a time; throughput rows keep 64 in flight. The
//! upstream, the proxy and gateway, and the client run on three runtimes,
//! as the three processes of a real deployment would.
//!
//! `cargo xtask bench gateway/ -- --warm-up-time 1 --measurement-time 3`

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use benches::listen;
use bytes::Bytes;
use criterion::{Criterion, Throughput};
use http_body_util::{BodyExt as _, Empty, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use token_core::{AccessToken, Credential, CredentialError, TokenCache, TokenRequest};
use token_serve::{ServeConfig, Sidecar};

const IN_FLIGHT: usize = 64;

#[derive(Debug)]
struct StaticIdp;

#[async_trait]
impl Credential for StaticIdp {
    fn id(&self) -> &str {
        "bench-idp"
    }

    async fn fetch(
        &self,
        _request: &TokenRequest,
        _previous: Option<&AccessToken>,
    ) -> Result<AccessToken, CredentialError> {
        Ok(
            AccessToken::new("bench-token-not-a-secret", SystemTime::now())
                .with_expires_in(Duration::from_secs(3600)),
        )
    }
}

type BenchClient = Client<HttpConnector, Empty<Bytes>>;

fn client() -> BenchClient {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(IN_FLIGHT * 2)
        .build(http)
}

/// The caller's bearer token on the `exchange` row (an opaque one: the
/// bench IdP answers any subject).
const SUBJECT: &str = "bench-caller-subject-token-0123456789";

async fn call(client: &BenchClient, uri: &hyper::Uri, metadata: bool) {
    let mut req = Request::get(uri.clone());
    if metadata {
        req = req.header("metadata", "true");
    }
    if uri.path().starts_with("/ex/") {
        req = req.header("authorization", format!("Bearer {SUBJECT}"));
    }
    let resp = client
        .request(req.body(Empty::new()).expect("request"))
        .await
        .expect("response");
    assert!(resp.status().is_success(), "{}", resp.status());
    let _ = resp.into_body().collect().await.expect("body");
}

/// A runtime like a separate server process's: `tokencache serve` and the
/// wrk script's upstream run on a multi-thread runtime with one worker per
/// core.
fn server_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn bench(c: &mut Criterion) {
    // Three runtimes, as if three processes: the upstream; the proxy and
    // the gateway (never loaded at the same time); and the load generator,
    // one thread like wrk's, driving the client on the bench thread itself.
    // On one shared runtime a request's hops would run wherever a worker is
    // free, and the rows would measure that scheduler instead.
    let upstream_rt = server_runtime();
    let upstream = upstream_rt.block_on(listen(|_req| async {
        Response::new(Full::new(Bytes::from_static(b"ok")))
    }));
    let rt = server_runtime();
    let (direct, proxy, gateway, exchange, token) = rt.block_on(async {
        // The floor: a reverse proxy that forwards with a pooled client and
        // does nothing else.
        // Same connector settings as the gateway's upstream client.
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let proxy_client: Client<HttpConnector, Incoming> =
            Client::builder(TokioExecutor::new()).build(connector);
        let proxy = listen(move |req: Request<Incoming>| {
            let client = proxy_client.clone();
            async move {
                let (mut parts, body) = req.into_parts();
                let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
                parts.uri = format!("http://{upstream}{pq}").parse().expect("uri");
                let resp = client
                    .request(Request::from_parts(parts, body))
                    .await
                    .expect("upstream");
                resp.map(|b| b.boxed())
            }
        })
        .await;
        let config = ServeConfig::parse(&format!(
            "[[serve.routes]]\nprefix = \"/up/\"\nupstream = \"http://{upstream}\"\nprofile = \"bench\"\n\
             [[serve.routes]]\nprefix = \"/ex/\"\nupstream = \"http://{upstream}\"\nprofile = \"bench\"\n\
             mode = \"exchange\"\naudience = \"https://bench\"\nexchange_rate_per_second = 0\n"
        ))
        .expect("config");
        let cache = TokenCache::builder(StaticIdp).build();
        let request = TokenRequest::builder().scope("bench").build();
        let sidecar = Sidecar::builder(config)
            .profile("bench", &cache, &request)
            .build()
            .expect("sidecar");
        sidecar.prefetch().await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let gw = listener.local_addr().expect("addr");
        tokio::spawn(token_serve::serve(
            sidecar,
            listener,
            std::future::pending(),
            Duration::from_secs(1),
        ));
        let uri = |s: String| s.parse::<hyper::Uri>().expect("uri");
        (
            uri(format!("http://{upstream}/x")),
            uri(format!("http://{proxy}/x")),
            uri(format!("http://{gw}/up/x")),
            uri(format!("http://{gw}/ex/x")),
            uri(format!("http://{gw}/v1/token?profile=bench")),
        )
    });
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let client = client();

    let mut g = c.benchmark_group("gateway/latency");
    for (name, uri, metadata) in [
        ("direct", &direct, false),
        ("plain_proxy", &proxy, false),
        ("gateway", &gateway, false),
        // A per-caller exchange route, its token cached (issue 20).
        ("exchange", &exchange, false),
        ("token_endpoint", &token, true),
    ] {
        g.bench_function(name, |b| {
            b.to_async(&client_rt).iter(|| call(&client, uri, metadata))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("gateway/throughput");
    g.throughput(Throughput::Elements(IN_FLIGHT as u64));
    for (name, uri, metadata) in [
        ("direct", &direct, false),
        ("plain_proxy", &proxy, false),
        ("gateway", &gateway, false),
        ("token_endpoint", &token, true),
    ] {
        g.bench_function(name, |b| {
            b.to_async(&client_rt).iter(|| async {
                let mut set = tokio::task::JoinSet::new();
                for _ in 0..IN_FLIGHT {
                    let (client, uri) = (client.clone(), uri.clone());
                    set.spawn(async move { call(&client, &uri, metadata).await });
                }
                while let Some(r) = set.join_next().await {
                    r.expect("task");
                }
            })
        });
    }
    g.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
}
