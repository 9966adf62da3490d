//! How many Redis commands a fleet makes per refresh of one shared key.
//!
//! N engine instances, each with its own `RedisStore` (its own connection and
//! pub/sub listener, as N sidecars have) on one private `redis-server`, keep
//! one key warm (`keep_warm`) while each serves a request every 10 ms. The
//! IdP issues 20 s tokens and answers in 100 ms. After every instance has its
//! first token (the cold start, counted apart), `CONFIG RESETSTAT`, then for
//! the measured window the program samples `INFO commandstats` every 100 ms.
//!
//! Printed per N: IdP calls in the window (= refreshes), Redis commands (every
//! `cmdstat_*` row, so the commands scripts run count too; the sampler's own
//! `INFO`/`CONFIG` and connection set-up commands excluded), commands per
//! instance per refresh, the peak commands in one 100 ms sample, lease waits,
//! callers that waited, failed requests and expired tokens served.
//!
//! ```text
//! cargo run --release -p token-redis --example fleet_commands -- --secs 60 10 100 300
//! cargo run --release -p token-redis --example fleet_commands -- --cluster --secs 40 300
//! ```
//!
//! `--cluster`: on a private 3-master Redis Cluster instead, the commands
//! summed over its nodes.
//!
//! Uses only the public API, so the same file measures an older checkout too
//! (docs/BENCHMARKS.md: before and after in one run).

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use token_core::{
    AccessToken, Credential, CredentialError, RefreshPolicy, TokenCache, TokenRequest,
};
use token_redis::{RedisConfig, RedisStore};

const LIFETIME: Duration = Duration::from_secs(20);
const IDP_LATENCY: Duration = Duration::from_millis(100);
const REQUEST_EVERY: Duration = Duration::from_millis(10);
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// An IdP that answers in 100 ms with numbered 20 s tokens, counting calls.
#[derive(Debug)]
struct SlowIdp {
    calls: Arc<AtomicU64>,
}

#[async_trait]
impl Credential for SlowIdp {
    fn id(&self) -> &str {
        "fleet-commands-idp"
    }

    async fn fetch(
        &self,
        _: &TokenRequest,
        _: Option<&AccessToken>,
    ) -> Result<AccessToken, CredentialError> {
        tokio::time::sleep(IDP_LATENCY).await;
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(
            AccessToken::new(format!("fleet-token-{n}"), SystemTime::now())
                .with_expires_in(LIFETIME),
        )
    }
}

struct Outcome {
    cold_commands: u64,
    idp_calls: u64,
    commands: u64,
    peak: u64,
    lease_waits: u64,
    waits: u64,
    failed: u64,
    expired: u64,
}

async fn measure(base: &RedisConfig, ports: Vec<u16>, n: usize, secs: u64) -> Outcome {
    let calls = Arc::new(AtomicU64::new(0));
    let prefix = support::fresh_prefix("fleet-commands");
    let request = TokenRequest::builder().scope("fleet").build();
    let failed = Arc::new(AtomicU64::new(0));
    let expired = Arc::new(AtomicU64::new(0));
    let ready = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));

    support::reset_commands(&ports);
    let mut caches = Vec::new();
    let mut guards = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..n {
        let config = base.clone().with_key_prefix(prefix.clone());
        let store = RedisStore::connect(config).await.expect("Redis is up");
        let cache = TokenCache::builder(SlowIdp {
            calls: calls.clone(),
        })
        .store(store)
        .policy(RefreshPolicy::default())
        .build();
        guards.push(cache.keep_warm(&request).expect("a runtime"));
        let handle = cache.handle(&request);
        let (failed, expired, ready, stop) =
            (failed.clone(), expired.clone(), ready.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut first = true;
            while !stop.load(Ordering::Relaxed) {
                match handle.token().await {
                    Ok(t) if !t.is_live_at(SystemTime::now()) => {
                        expired.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {
                        if first {
                            first = false;
                            ready.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(REQUEST_EVERY).await;
            }
        }));
        caches.push(cache);
    }
    while ready.load(Ordering::Relaxed) < n as u64 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let the cold start's last commands land before counting it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cold_commands = support::commands(&ports);

    let before = |c: &TokenCache| {
        let s = c.stats();
        (s.lease_waits, s.waits)
    };
    let start: Vec<_> = caches.iter().map(before).collect();
    support::reset_commands(&ports);
    let idp_start = calls.load(Ordering::SeqCst);
    let sampler = std::thread::spawn(move || {
        let end = Instant::now() + Duration::from_secs(secs);
        let (mut last, mut peak) = (0, 0);
        let mut next = Instant::now() + SAMPLE_EVERY;
        while Instant::now() < end {
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
            next += SAMPLE_EVERY;
            let now = support::commands(&ports);
            peak = peak.max(now.saturating_sub(last));
            last = now;
        }
        (last, peak)
    });
    let (total, peak) = tokio::task::spawn_blocking(move || sampler.join().expect("sampler"))
        .await
        .expect("sampler");
    let idp_calls = calls.load(Ordering::SeqCst) - idp_start;
    let (mut lease_waits, mut waits) = (0, 0);
    for (c, (lw, w)) in caches.iter().zip(start) {
        let (lw2, w2) = before(c);
        lease_waits += lw2 - lw;
        waits += w2 - w;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    drop(guards);
    Outcome {
        cold_commands,
        idp_calls,
        commands: total,
        peak,
        lease_waits,
        waits,
        failed: failed.load(Ordering::Relaxed),
        expired: expired.load(Ordering::Relaxed),
    }
}

fn main() {
    let mut secs = 60;
    let mut sizes = Vec::new();
    let mut on_cluster = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--cluster" {
            on_cluster = true;
        } else if a == "--secs" {
            secs = args.next().and_then(|s| s.parse().ok()).unwrap_or(secs);
        } else if let Ok(n) = a.parse::<usize>() {
            sizes.push(n);
        }
    }
    if sizes.is_empty() {
        sizes = vec![10, 100, 300];
    }
    // Kept alive until the end of main.
    let (_server, _cluster, config, ports) = if on_cluster {
        let cluster = match token_testkit::RedisCluster::start() {
            Ok(cluster) => cluster,
            Err(e) => {
                eprintln!("no private Redis Cluster could be started: {e}");
                return;
            }
        };
        let ports = cluster.ports();
        let config = RedisConfig::cluster(cluster.urls()).with_plaintext();
        (None, Some(cluster), config, ports)
    } else {
        let Some(server) = token_testkit::RedisServer::private() else {
            return;
        };
        let (config, ports) = (
            RedisConfig::new(server.url()).with_plaintext(),
            vec![server.port()],
        );
        (Some(server), None, config, ports)
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    println!(
        "{}: {secs} s per row, 20 s tokens, IdP latency 100 ms, a request every 10 ms per instance",
        if on_cluster {
            "3-master Redis Cluster"
        } else {
            "standalone Redis"
        }
    );
    println!("| instances | cold-start commands per instance | IdP calls | Redis commands | per instance per refresh | peak per 100 ms | lease waits | callers that waited | failed | expired |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for n in sizes {
        let o = runtime.block_on(measure(&config, ports.clone(), n, secs));
        let per = o.commands as f64 / (n as f64 * o.idp_calls.max(1) as f64);
        println!(
            "| {n} | {:.1} | {} | {} | {per:.2} | {} | {} | {} | {} | {} |",
            o.cold_commands as f64 / n as f64,
            o.idp_calls,
            o.commands,
            o.peak,
            o.lease_waits,
            o.waits,
            o.failed,
            o.expired
        );
    }
}
