//! IdP calls for N sidecars x M subjects over several refreshes (issue 20,
//! "the fleet asks once"): N `ExchangeCache` instances, each with its own
//! engine (as N sidecar processes would have), share one private Redis and
//! one subject key; every instance asks for each of M subjects' exchanged
//! tokens every 250 ms for three refresh intervals and more. The IdP is a
//! counting credential shared by the instances (it answers after 2 ms with
//! a fresh token of `LIFETIME`, and counts calls per subject): the number
//! to read is the IdP calls, which should be M per refresh interval,
//! whatever N.
//!
//! With the default `RefreshPolicy` a 10 s token is refreshed from ~5 s
//! after it was obtained (half its lifetime for short tokens, minus up to
//! 5% jitter), so a 17 s run spans the first exchange and three refreshes:
//! the ideal is 4 x M calls.
//!
//! `cargo run --release -p benches --example exchange_fleet [M] [RUN_SECONDS]`
//! (redis-server on the PATH; defaults 1000 and 17).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use futures_util::stream::{self, StreamExt as _};
use token_core::{AccessToken, Actor, Credential, CredentialError, TokenCache, TokenRequest};
use token_http::{ExchangeCache, SubjectKey};
use token_redis::{RedisConfig, RedisStore};
use token_testkit::RedisServer;

const LIFETIME: Duration = Duration::from_secs(10);
const IDP_LATENCY: Duration = Duration::from_millis(2);
const TICK: Duration = Duration::from_millis(250);
/// Requests in flight per instance during a pass over the subjects.
const IN_FLIGHT: usize = 64;

/// The IdP's calls: per subject (by the subject's keyed digest), the
/// seconds since the run's start of each.
#[derive(Debug, Default)]
struct Calls {
    per_subject: Mutex<HashMap<String, Vec<f64>>>,
}

#[derive(Debug)]
struct CountingIdp {
    calls: Arc<Calls>,
    started: Instant,
}

#[async_trait]
impl Credential for CountingIdp {
    fn id(&self) -> &str {
        // The same id in every instance: the same cache keys.
        "exchange-fleet-idp"
    }

    async fn fetch(
        &self,
        request: &TokenRequest,
        _previous: Option<&AccessToken>,
    ) -> Result<AccessToken, CredentialError> {
        let Some(Actor::Exchange(x)) = request.actor() else {
            return Err(CredentialError::permanent("not an exchange"));
        };
        tokio::time::sleep(IDP_LATENCY).await;
        self.calls
            .per_subject
            .lock()
            .unwrap()
            .entry(x.digest().to_owned())
            .or_default()
            .push(self.started.elapsed().as_secs_f64());
        let secret = format!("exchanged-{}-{}", x.digest(), rand_u64());
        Ok(AccessToken::new(secret, SystemTime::now()).with_expires_in(LIFETIME))
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish()
}

struct Row {
    n: usize,
    calls: u64,
    min: u64,
    max: u64,
    per_window: Vec<u64>,
    /// Calls for a subject less than a quarter of the lifetime after its
    /// previous one: a second exchange within one refresh interval.
    duplicates: u64,
    lease_waits: u64,
    store_hits: u64,
}

async fn run(redis: &RedisServer, n: usize, m: usize, run_for: Duration) -> Row {
    let calls = Arc::new(Calls::default());
    let started = Instant::now();
    let key = SubjectKey::from_bytes(&[7u8; 32]).expect("key");
    let instances: Vec<ExchangeCache> = (0..n)
        .map(|_| {
            let store = RedisStore::connect_lazy(
                RedisConfig::new(redis.url())
                    // A prefix per run: the runs share nothing.
                    .with_key_prefix(format!("fleet-n{n}"))
                    .with_plaintext()
                    .with_command_timeout(Duration::from_secs(5)),
            )
            .expect("store");
            let idp = CountingIdp {
                calls: Arc::clone(&calls),
                started,
            };
            ExchangeCache::builder(TokenCache::builder(idp).store(store))
                .subject_key(key.clone())
                .max_subjects(m)
                .rate_per_second(0)
                .build()
                .expect("a subject key was given")
        })
        .collect();
    let subjects: Arc<Vec<String>> = Arc::new((0..m).map(|i| format!("subject-{i}")).collect());
    let request = TokenRequest::builder()
        .audience("https://orders.internal")
        .scope("orders.read")
        .build();
    let tasks: Vec<_> = instances
        .iter()
        .cloned()
        .map(|cache| {
            let (subjects, request) = (Arc::clone(&subjects), request.clone());
            tokio::spawn(async move {
                while started.elapsed() < run_for {
                    let tick = Instant::now();
                    stream::iter(subjects.iter())
                        .for_each_concurrent(IN_FLIGHT, |s| {
                            let (cache, request) = (&cache, &request);
                            async move {
                                let t = cache.exchange(s, request).await.expect("exchange");
                                std::hint::black_box(t.secret().len());
                            }
                        })
                        .await;
                    if let Some(rest) = TICK.checked_sub(tick.elapsed()) {
                        tokio::time::sleep(rest).await;
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("instance");
    }
    let per = calls.per_subject.lock().unwrap();
    let count = |v: &Vec<f64>| v.len() as u64;
    let total: u64 = per.values().map(count).sum();
    let min = if per.len() < m {
        0
    } else {
        per.values().map(count).min().unwrap_or(0)
    };
    let max = per.values().map(count).max().unwrap_or(0);
    // IdP calls per 5 s window of the run (a refresh interval, about).
    let mut per_window = vec![0u64; run_for.as_secs().div_ceil(5) as usize + 1];
    let mut duplicates = 0;
    let close = LIFETIME.as_secs_f64() / 4.0;
    for times in per.values() {
        let mut times = times.clone();
        times.sort_by(f64::total_cmp);
        for at in &times {
            per_window[(*at / 5.0) as usize] += 1;
        }
        duplicates += times.windows(2).filter(|w| w[1] - w[0] < close).count() as u64;
    }
    while per_window.last() == Some(&0) {
        per_window.pop();
    }
    let (mut lease_waits, mut store_hits) = (0, 0);
    for i in &instances {
        let s = i.cache().stats();
        lease_waits += s.lease_waits;
        store_hits += s.store_hits;
    }
    Row {
        n,
        calls: total,
        min,
        max,
        per_window,
        duplicates,
        lease_waits,
        store_hits,
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let m: usize = args.next().map_or(1000, |a| a.parse().expect("M"));
    let run_for = Duration::from_secs(args.next().map_or(17, |a| a.parse().expect("RUN_SECONDS")));
    let redis = RedisServer::start().expect("a private redis-server (on the PATH)");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "IdP calls, N instances x M = {m} subjects, {}s tokens, every instance asks for every subject every {}ms for {}s",
        LIFETIME.as_secs(),
        TICK.as_millis(),
        run_for.as_secs()
    );
    println!("    N   IdP calls   per subject (min-max)   second calls within 2.5 s   calls per 5 s window   lease waits   store hits");
    for n in [1usize, 2, 4] {
        let row = rt.block_on(run(&redis, n, m, run_for));
        println!(
            "   {:>2}   {:>9}   {:>10}-{:<10}   {:>25}   {:<20}   {:>11}   {:>10}",
            row.n,
            row.calls,
            row.min,
            row.max,
            row.duplicates,
            format!("{:?}", row.per_window),
            row.lease_waits,
            row.store_hits
        );
    }
}
