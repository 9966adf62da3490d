//! The fleet tests: 8 OS processes x 50 tasks share one Redis and one key,
//! with tokens that live 4 s, for over 30 s. A fake IdP in this (parent)
//! process counts token requests; each worker counts its requests, failures
//! and tokens that were expired when received.
//!
//! - `fleet_shares_one_token_across_processes`: IdP calls stay within a few
//!   of elapsed / refresh interval (not times the number of processes), and
//!   no request gets an expired token or an error.
//! - `fleet_survives_redis_killed_mid_run`: Redis is killed for 8 s in the
//!   middle of the run: no request fails (the IdP is up), none gets an
//!   expired token, and after Redis restarts the fleet shares again (IdP
//!   calls in the last stretch are those of one instance, not eight).
//!
//! The workers are this test binary, re-run with `FLEET_WORKER=1`.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use token_conformance::libtest_mimic::{Arguments, Failed, Trial};
use token_core::{
    AccessToken, Credential, CredentialError, RefreshPolicy, TokenCache, TokenRequest,
};
use token_redis::{RedisConfig, RedisStore};
use token_testkit::RedisServer;

const PROCESSES: usize = 8;
const TASKS: usize = 50;
const LIFETIME: Duration = Duration::from_secs(4);
/// Each task sends a request this often.
const REQUEST_EVERY: Duration = Duration::from_millis(20);

/// The policy every worker uses: tokens of 4 s refresh after about half
/// their life; store calls are bounded tightly, so a dead Redis costs
/// little.
fn policy() -> RefreshPolicy {
    RefreshPolicy::default()
        .with_fetch_timeout(Duration::from_secs(2))
        .with_store_timeout(Duration::from_millis(500))
        .with_store_cooldown(Duration::from_secs(1))
}

/// The mean time between refreshes of one key, from the policy itself.
fn refresh_interval() -> Duration {
    let now = SystemTime::now();
    let t = AccessToken::new("x", now).with_expires_in(LIFETIME);
    let mean = policy().schedule(t, 0.5).expect("a valid token");
    mean.refresh_at()
        .and_then(|at| at.duration_since(now).ok())
        .unwrap_or(LIFETIME / 2)
}

// ---------------------------------------------------------------- worker

/// A credential that asks the parent's fake IdP over TCP.
#[derive(Debug)]
struct RemoteIdp {
    addr: String,
}

#[async_trait]
impl Credential for RemoteIdp {
    fn id(&self) -> &str {
        "fleet-idp"
    }

    async fn fetch(
        &self,
        _: &TokenRequest,
        _: Option<&AccessToken>,
    ) -> Result<AccessToken, CredentialError> {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        let io = |e: std::io::Error| CredentialError::transient(format!("fake IdP: {e}"));
        let mut stream = tokio::net::TcpStream::connect(&self.addr)
            .await
            .map_err(io)?;
        stream.write_all(b"FETCH\n").await.map_err(io)?;
        let mut line = String::new();
        tokio::io::BufReader::new(stream)
            .read_line(&mut line)
            .await
            .map_err(io)?;
        let mut parts = line.split_whitespace();
        let (Some(secret), Some(ms)) = (parts.next(), parts.next()) else {
            return Err(CredentialError::transient("fake IdP: bad reply"));
        };
        let ms: u64 = ms
            .parse()
            .map_err(|_| CredentialError::transient("bad expiry"))?;
        Ok(AccessToken::new(secret.to_owned(), SystemTime::now())
            .with_expires_in(Duration::from_millis(ms)))
    }
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_default()
}

/// One worker process: `TASKS` tasks request the one token until the run
/// ends, then print their counts.
fn worker() {
    let run_for = Duration::from_millis(env("FLEET_RUN_MS").parse().unwrap_or(30_000));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let (requests, failures, expired) = runtime.block_on(async move {
        let config = RedisConfig::new(env("FLEET_REDIS_URL"))
            .with_plaintext()
            .with_key_prefix(env("FLEET_PREFIX"));
        let store = RedisStore::connect_lazy(config).expect("a valid config");
        let cache = TokenCache::builder(RemoteIdp {
            addr: env("FLEET_IDP_ADDR"),
        })
        .store(store)
        .policy(policy())
        .build();
        let request = TokenRequest::builder().scope("fleet").build();
        let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
        let end = Instant::now() + run_for;
        let mut tasks = Vec::new();
        for _ in 0..TASKS {
            let (cache, request, counts) = (cache.clone(), request.clone(), counts.clone());
            tasks.push(tokio::spawn(async move {
                let handle = cache.handle(&request);
                while Instant::now() < end {
                    counts[0].fetch_add(1, Ordering::Relaxed);
                    match handle.token().await {
                        Ok(t) if !t.is_live_at(SystemTime::now()) => {
                            counts[2].fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(_) => {}
                        Err(e) => {
                            counts[1].fetch_add(1, Ordering::Relaxed);
                            eprintln!("request failed: {e}");
                        }
                    }
                    tokio::time::sleep(REQUEST_EVERY).await;
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        (
            counts[0].load(Ordering::Relaxed),
            counts[1].load(Ordering::Relaxed),
            counts[2].load(Ordering::Relaxed),
        )
    });
    println!("FLEET-RESULT {requests} {failures} {expired}");
    let _ = std::io::stdout().flush();
}

// ---------------------------------------------------------------- parent

/// The fake IdP: hands out `fleet-<n>` tokens living `LIFETIME`, counting.
struct FakeIdp {
    addr: String,
    calls: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl FakeIdp {
    fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?.to_string();
        let calls = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (calls.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut line = String::new();
                        let mut reader = BufReader::new(&stream);
                        if reader.read_line(&mut line).is_ok() && line.trim() == "FETCH" {
                            let n = c.fetch_add(1, Ordering::SeqCst) + 1;
                            let _ = writeln!(&stream, "fleet-{n} {}", LIFETIME.as_millis());
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        });
        Ok(Self { addr, calls, stop })
    }

    fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Drop for FakeIdp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Children killed (by pid) if the parent gives up on them.
struct Workers(Vec<Child>);

impl Drop for Workers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn_workers(redis_url: &str, idp: &FakeIdp, run_for: Duration) -> Result<Workers, Failed> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let prefix = support::fresh_prefix("fleet");
    let mut children = Workers(Vec::new());
    for _ in 0..PROCESSES {
        let child = Command::new(&exe)
            .env("FLEET_WORKER", "1")
            .env("FLEET_REDIS_URL", redis_url)
            .env("FLEET_IDP_ADDR", &idp.addr)
            .env("FLEET_PREFIX", &prefix)
            .env("FLEET_RUN_MS", run_for.as_millis().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start a worker: {e}"))?;
        children.0.push(child);
    }
    Ok(children)
}

#[derive(Debug, Default)]
struct Totals {
    requests: u64,
    failures: u64,
    expired: u64,
}

fn collect(mut workers: Workers) -> Result<Totals, Failed> {
    let mut totals = Totals::default();
    for child in &mut workers.0 {
        let mut out = String::new();
        if let Some(stdout) = child.stdout.take() {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                out.push_str(&line);
                out.push('\n');
            }
        }
        let status = child.wait().map_err(|e| format!("wait: {e}"))?;
        if !status.success() {
            return Err(format!("a worker failed ({status}); its output:\n{out}").into());
        }
        let line = out
            .lines()
            .find_map(|l| l.strip_prefix("FLEET-RESULT "))
            .ok_or_else(|| format!("a worker printed no result:\n{out}"))?;
        let n: Vec<u64> = line.split(' ').filter_map(|s| s.parse().ok()).collect();
        let [r, f, e] = n[..] else {
            return Err(format!("bad result line {line:?}").into());
        };
        totals.requests += r;
        totals.failures += f;
        totals.expired += e;
    }
    Ok(totals)
}

fn fleet_shares_one_token_across_processes() -> Result<(), Failed> {
    let Some(server) = RedisServer::private() else {
        return Ok(());
    };
    let idp = FakeIdp::start().map_err(|e| format!("fake IdP: {e}"))?;
    let run_for = Duration::from_secs(32);
    let started = Instant::now();
    let workers = spawn_workers(&server.url(), &idp, run_for)?;
    let totals = collect(workers)?;
    let elapsed = started.elapsed();
    let calls = idp.calls();
    let interval = refresh_interval();
    let expected = 1 + (elapsed.as_secs_f64() / interval.as_secs_f64()) as u64;
    println!(
        "fleet: {PROCESSES} processes x {TASKS} tasks, {:.1} s, token lifetime {LIFETIME:?}, refresh interval {interval:?}: \
         IdP calls {calls} (expected about {expected}), requests {}, failed {}, expired tokens received {}",
        elapsed.as_secs_f64(),
        totals.requests,
        totals.failures,
        totals.expired
    );
    if totals.expired != 0 || totals.failures != 0 {
        return Err(format!("{totals:?}: no request may fail or get an expired token").into());
    }
    if calls > expected + 3 || calls + 3 < expected {
        return Err(format!("{calls} IdP calls, expected {expected} +- 3").into());
    }
    Ok(())
}

fn fleet_survives_redis_killed_mid_run() -> Result<(), Failed> {
    let Some(mut server) = RedisServer::private() else {
        return Ok(());
    };
    let idp = FakeIdp::start().map_err(|e| format!("fake IdP: {e}"))?;
    let run_for = Duration::from_secs(40);
    let started = Instant::now();
    let workers = spawn_workers(&server.url(), &idp, run_for)?;

    let at = |secs: u64| {
        let target = started + Duration::from_secs(secs);
        std::thread::sleep(target.saturating_duration_since(Instant::now()));
    };
    at(8);
    server.kill();
    let killed_at = idp.calls();
    at(16);
    let during_outage = idp.calls() - killed_at;
    server
        .restart()
        .map_err(|e| format!("cannot restart redis-server: {e}"))?;
    // Let the stores reconnect and the fleet converge on one shared token.
    at(26);
    let window_start = (Instant::now(), idp.calls());
    let totals = collect(workers)?;
    let window = window_start.0.elapsed();
    let window_calls = idp.calls() - window_start.1;
    let interval = refresh_interval();
    let expected_window = 1 + (window.as_secs_f64() / interval.as_secs_f64()) as u64;
    println!(
        "fleet with Redis killed from 8 s to 16 s: {PROCESSES} processes x {TASKS} tasks, {:.1} s: IdP calls {} \
         ({during_outage} during the outage, every process fetching for itself), {window_calls} in the last {:.1} s \
         after the restart (one instance's share: about {expected_window}), requests {}, failed {}, expired tokens received {}",
        started.elapsed().as_secs_f64(),
        idp.calls(),
        window.as_secs_f64(),
        totals.requests,
        totals.failures,
        totals.expired
    );
    if totals.expired != 0 || totals.failures != 0 {
        return Err(format!("{totals:?}: no request may fail or get an expired token").into());
    }
    if window_calls > expected_window + 3 {
        return Err(format!(
            "{window_calls} IdP calls after Redis came back, expected about {expected_window}: the fleet is not sharing again"
        )
        .into());
    }
    Ok(())
}

fn main() {
    if std::env::var_os("FLEET_WORKER").is_some() {
        worker();
        return;
    }
    let mut args = Arguments::from_args();
    // Each fleet uses the whole machine: one at a time.
    args.test_threads = Some(1);
    let trials = vec![
        Trial::test(
            "fleet_shares_one_token_across_processes",
            fleet_shares_one_token_across_processes,
        ),
        Trial::test(
            "fleet_survives_redis_killed_mid_run",
            fleet_survives_redis_killed_mid_run,
        ),
    ];
    token_conformance::libtest_mimic::run(&args, trials).exit();
}
