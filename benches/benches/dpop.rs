//! DPoP (RFC 9449) costs, in one run:
//!
//! - `dpop/sign`: one proof (`DpopKey::proof`, header precomputed, claims
//!   serialized, signed, base64url) with ES256 and with Ed25519, and ring's
//!   signature alone for each (the floor);
//! - `dpop_gateway/throughput`: the token-serve gateway forwarding to a
//!   loopback upstream, 64 requests in flight, with a Bearer profile and
//!   with a DPoP profile (a fresh proof with `ath` per request), on the same
//!   upstream, runtimes and client;
//! - then, printed (criterion has no CPU time): the CPU time the gateway's
//!   own runtime threads spend per forwarded request, Bearer vs DPoP, read
//!   from `/proc/self/task/*/stat` (Linux) over 20,000 requests each.
//!
//! `cargo xtask bench dpop -- --warm-up-time 1 --measurement-time 3`

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use benches::listen;
use bytes::Bytes;
use criterion::{Criterion, Throughput};
use http_body_util::{BodyExt as _, Empty, Full};
use hyper::{Request, Response};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use token_core::{AccessToken, Credential, CredentialError, TokenCache, TokenRequest, TokenType};
use token_http::{DpopAlgorithm, DpopKey};
use token_serve::{ServeConfig, Sidecar};

const IN_FLIGHT: usize = 64;
/// Requests per profile for the CPU-time measurement.
const CPU_REQUESTS: usize = 20_000;
/// The gateway runtime's thread name: its threads' CPU time is the
/// gateway's.
const GATEWAY_THREAD: &str = "bench-gateway";

#[derive(Debug)]
struct StaticIdp(TokenType);

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
                .with_token_type(self.0.clone())
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

async fn call(client: &BenchClient, uri: &hyper::Uri) {
    let resp = client
        .request(
            Request::get(uri.clone())
                .body(Empty::new())
                .expect("request"),
        )
        .await
        .expect("response");
    assert!(resp.status().is_success(), "{}", resp.status());
    let _ = resp.into_body().collect().await.expect("body");
}

async fn batch(client: &BenchClient, uri: &hyper::Uri, n: usize) {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (client, uri) = (client.clone(), uri.clone());
        set.spawn(async move { call(&client, &uri).await });
    }
    while let Some(r) = set.join_next().await {
        r.expect("task");
    }
}

fn runtime(name: &'static str) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(name)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Whether criterion's filter (the first positional argument, if any)
/// could select `dpop_gateway/cpu`: the CPU measurement runs only then, so
/// `cargo xtask bench gateway/` does not pay for it.
fn cpu_part_wanted() -> bool {
    const VALUED: &[&str] = &[
        "--warm-up-time",
        "--measurement-time",
        "--sample-size",
        "--save-baseline",
        "--baseline",
        "--load-baseline",
        "--noise-threshold",
        "--confidence-level",
        "--significance-level",
        "--nresamples",
        "--output-format",
        "--color",
        "--plotting-backend",
        "--profile-time",
    ];
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if VALUED.contains(&arg.as_str()) {
            args.next();
        } else if !arg.starts_with('-') {
            return arg.contains("dpop_gateway") || "dpop_gateway/cpu".contains(arg.as_str());
        }
    }
    true
}

/// CPU seconds (user + system) spent so far by this process's threads
/// named `name` (Linux; `None` elsewhere).
fn thread_cpu_seconds(name: &str) -> Option<f64> {
    let ticks_per_second = 100.0; // USER_HZ on Linux
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let dir = task.ok()?.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if !comm.trim().starts_with(&name[..name.len().min(15)]) {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
        // Fields after the `(comm)`: state is field 3; utime 14, stime 15.
        let after = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = after.split_whitespace().collect();
        total += fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    }
    Some(total as f64 / ticks_per_second)
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("dpop/sign");
    let now = SystemTime::now();
    for (name, alg) in [
        ("es256", DpopAlgorithm::Es256),
        ("ed25519", DpopAlgorithm::EdDsa),
    ] {
        let key = DpopKey::generate(alg).expect("key");
        g.bench_function(name, |b| {
            b.iter(|| {
                key.proof(
                    "GET",
                    "https://api.example/v1/orders?page=2",
                    now,
                    Some("a-server-nonce"),
                    Some("bench-token-not-a-secret"),
                )
                .expect("proof")
            })
        });
    }
    // The floor: ring's signature alone, over a message of a proof's size.
    let rng = ring::rand::SystemRandom::new();
    let message = vec![b'a'; 400];
    let es = ring::signature::EcdsaKeyPair::generate_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &rng,
    )
    .expect("pkcs8");
    let es = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        es.as_ref(),
        &rng,
    )
    .expect("key");
    g.bench_function("es256_ring_floor", |b| {
        b.iter(|| es.sign(&rng, &message).expect("signature"))
    });
    let ed = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).expect("pkcs8");
    let ed = ring::signature::Ed25519KeyPair::from_pkcs8(ed.as_ref()).expect("key");
    g.bench_function("ed25519_ring_floor", |b| b.iter(|| ed.sign(&message)));
    g.finish();

    let upstream_rt = runtime("bench-upstream");
    let upstream = upstream_rt.block_on(listen(|_req| async {
        Response::new(Full::new(Bytes::from_static(b"ok")))
    }));
    let rt = runtime(GATEWAY_THREAD);
    let (bearer, dpop) = rt.block_on(async {
        let config = ServeConfig::parse(&format!(
            "[[serve.routes]]\nprefix = \"/bearer/\"\nupstream = \"http://{upstream}\"\nprofile = \"bearer\"\n\
             [[serve.routes]]\nprefix = \"/dpop/\"\nupstream = \"http://{upstream}\"\nprofile = \"dpop\"\n"
        ))
        .expect("config");
        let key = DpopKey::generate(DpopAlgorithm::Es256).expect("key");
        let bearer_cache = TokenCache::builder(StaticIdp(TokenType::Bearer)).build();
        let dpop_cache = TokenCache::builder(StaticIdp(TokenType::DPoP)).build();
        let request = TokenRequest::builder().scope("bench").build();
        let bound = TokenRequest::builder()
            .scope("bench")
            .dpop_thumbprint(key.thumbprint())
            .build();
        let sidecar = Sidecar::builder(config)
            .profile("bearer", &bearer_cache, &request)
            .dpop_profile("dpop", &dpop_cache, &bound, key)
            .build()
            .expect("sidecar");
        sidecar.prefetch().await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let gw = listener.local_addr().expect("addr");
        tokio::spawn(token_serve::serve(
            sidecar,
            listener,
            std::future::pending(),
            Duration::from_secs(1),
        ));
        let uri = |s: String| s.parse::<hyper::Uri>().expect("uri");
        (
            uri(format!("http://{gw}/bearer/x")),
            uri(format!("http://{gw}/dpop/x")),
        )
    });
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let client = client();

    let mut g = c.benchmark_group("dpop_gateway/throughput");
    g.throughput(Throughput::Elements(IN_FLIGHT as u64));
    for (name, uri) in [("bearer", &bearer), ("dpop", &dpop)] {
        g.bench_function(name, |b| {
            b.to_async(&client_rt)
                .iter(|| batch(&client, uri, IN_FLIGHT))
        });
    }
    g.finish();

    if !cpu_part_wanted() {
        return;
    }
    // The gateway's own CPU per forwarded request, alternated twice so a
    // change in the machine's load shows as a difference between the runs.
    let per_request = |uri: &hyper::Uri| -> Option<f64> {
        let before = thread_cpu_seconds(GATEWAY_THREAD)?;
        client_rt.block_on(async {
            for _ in 0..CPU_REQUESTS / IN_FLIGHT {
                batch(&client, uri, IN_FLIGHT).await;
            }
        });
        let after = thread_cpu_seconds(GATEWAY_THREAD)?;
        Some((after - before) / (CPU_REQUESTS / IN_FLIGHT * IN_FLIGHT) as f64 * 1e6)
    };
    let mut rows = Vec::new();
    for _ in 0..2 {
        for (name, uri) in [("bearer", &bearer), ("dpop", &dpop)] {
            if let Some(us) = per_request(uri) {
                rows.push((name, us));
            }
        }
    }
    if rows.len() == 4 {
        println!("\ngateway CPU per forwarded request (its runtime's threads, {CPU_REQUESTS} requests, 64 in flight):");
        for (name, us) in &rows {
            println!("  {name:<6} {us:>7.1} us");
        }
        let mean = |n: &str| {
            rows.iter()
                .filter(|(name, _)| *name == n)
                .map(|(_, us)| us)
                .sum::<f64>()
                / 2.0
        };
        println!(
            "  dpop / bearer: {:.2}x (goal: at most 1.5x)",
            mean("dpop") / mean("bearer")
        );
    } else {
        println!("\ngateway CPU per request: /proc/self/task not readable here; not measured");
    }
    drop(upstream_rt);
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
}
