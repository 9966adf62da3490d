//! `tokencache demo`: what the cache does, in one command. A local IdP on loopback
//! (hyper) that counts its calls, many concurrent callers going through the
//! real `OAuthCredential` and `TokenCache`, a progress bar (indicatif), and a summary of
//! IdP calls made against requests served.
//!
//! With `--store redis://... --processes N` the binary re-runs itself N
//! times as hidden `__demo-worker` processes that share Redis: the IdP
//! (in this process) still sees about one call per key per refresh.

mod idp;
mod load;
mod report;

use std::io::IsTerminal as _;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use token_core::{EncryptionKey, Keyring, RefreshPolicy, Secret, TokenCache, TokenRequest};
use token_http::OAuthCredential;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::cli::{DemoArgs, WorkerArgs};
use crate::error::{CliError, Kind};
use token_profile::{KeySource, OpenedStore as Opened, StoreSpec, KEY_ENV};

pub(crate) use idp::LocalIdp;
use load::{Report, Until};

/// The demo client's id at the local IdP.
const CLIENT_ID: &str = "demo-client";
/// Passes the demo client's secret to worker processes (never as an
/// argument).
const SECRET_ENV: &str = "TOKENCACHE_DEMO_SECRET";

/// Tuned for tokens of a few seconds (the defaults suit hour-long ones):
/// refresh at about half the lifetime, one second of skew. The policy caps
/// both relative to the lifetime, so any `--lifetime` works.
fn policy() -> RefreshPolicy {
    RefreshPolicy::new()
        .with_refresh_ahead_fraction(0.5)
        .with_refresh_ahead_min(Duration::from_secs(1))
        .with_expiry_skew(Duration::from_secs(1))
        .with_store_timeout(Duration::from_millis(500))
        .with_store_cooldown(Duration::from_secs(1))
}

/// A keyring holding a copy of `key`.
fn keyring(key: &EncryptionKey) -> Result<Keyring, CliError> {
    EncryptionKey::from_base64(&key.to_base64())
        .map(Keyring::new)
        .map_err(|e| CliError::internal(format!("cannot copy the demo key: {e}")))
}

fn requests(keys: usize) -> Arc<Vec<TokenRequest>> {
    Arc::new(
        (0..keys)
            .map(|k| {
                TokenRequest::builder()
                    .scope(format!("demo.scope-{k}"))
                    .build()
            })
            .collect(),
    )
}

fn credential(token_url: &str, secret: Secret) -> Result<OAuthCredential, CliError> {
    OAuthCredential::client_credentials(token_url, CLIENT_ID)
        .client_secret(secret)
        .build()
        .map_err(|e| CliError::internal(format!("cannot build the demo credential: {e}")))
}

fn check(args: &DemoArgs) -> Result<StoreSpec, CliError> {
    if args.callers == 0 || args.keys == 0 || args.processes == 0 {
        return Err(CliError::config(
            "--callers, --keys and --processes must be at least 1",
        ));
    }
    if args.lifetime < 2 {
        return Err(CliError::config("--lifetime must be at least 2 seconds"));
    }
    if args.requests.is_none() && !(args.seconds > 0.0 && args.seconds <= 3600.0) {
        return Err(CliError::config(
            "--seconds must be more than 0 and at most 3600",
        ));
    }
    if args.requests == Some(0) {
        return Err(CliError::config("--requests must be at least 1"));
    }
    let spec = StoreSpec::parse(&args.store)?;
    if args.processes > 1 && !matches!(spec, StoreSpec::Redis(_)) {
        return Err(CliError::config(
            "--processes needs a store the processes can share: --store redis://HOST:PORT",
        ));
    }
    Ok(spec)
}

/// A temporary sled directory, removed on drop.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `demo`.
pub(crate) async fn run(args: DemoArgs) -> Result<(), CliError> {
    let spec = check(&args)?;
    let secret = format!("{:032x}", token_core::backend::random_u128());
    let idp = LocalIdp::start(CLIENT_ID, &secret, args.lifetime).await?;
    let key = EncryptionKey::generate()
        .map_err(|e| CliError::internal(format!("cannot generate a demo key: {e}")))?;
    let prefix = format!(
        "tokencache-demo:{:016x}:",
        token_core::backend::random_u128() as u64
    );

    let store_text = match &spec {
        StoreSpec::Memory => "memory".to_owned(),
        StoreSpec::Sled(_) => "sled (encrypted, on disk)".to_owned(),
        StoreSpec::Redis(url) => format!("redis {url} (encrypted)"),
    };
    let limit = match args.requests {
        Some(n) => format!("{n} requests"),
        None => format!("{} s", args.seconds),
    };
    let plural = |n: usize, one: &str, many: &str| {
        if n == 1 {
            format!("1 {one}")
        } else {
            format!("{n} {many}")
        }
    };
    println!(
        "tokencache demo: {} x {} calling get_token back to back for {limit} over {};\nlocal \
         IdP at {}: {} ms per token, tokens live {} s; store: {store_text}.",
        plural(args.callers, "caller", "callers"),
        plural(args.processes, "process", "processes"),
        plural(args.keys, "key", "keys"),
        idp.token_url(),
        idp::LATENCY.as_millis(),
        args.lifetime,
    );

    let started = Instant::now();
    let progress = Progress::start(&args, started, &idp);
    let result = if args.processes > 1 {
        let StoreSpec::Redis(url) = &spec else {
            return Err(CliError::internal("checked: processes need redis"));
        };
        fleet(&args, url, &prefix, &idp, &secret, &key, &progress).await
    } else {
        let mut _temp = None;
        let opened = match &spec {
            StoreSpec::Memory => Opened::Memory(token_memory::MemoryStore::default()),
            // The demo's own key: the user's key file is left alone.
            StoreSpec::Sled(Some(dir)) => {
                Opened::Sled(token_profile::open_sled(dir, keyring(&key)?, &KeySource::Env).await?)
            }
            StoreSpec::Sled(None) => {
                let dir = std::env::temp_dir().join(format!(
                    "tokencache-demo-{:016x}",
                    token_core::backend::random_u128() as u64
                ));
                let opened =
                    token_profile::open_sled(&dir, keyring(&key)?, &KeySource::Env).await?;
                _temp = Some(TempDir(dir));
                Opened::Sled(opened)
            }
            StoreSpec::Redis(url) => {
                Opened::Redis(token_profile::open_redis(url, Some(&prefix), keyring(&key)?).await?)
            }
        };
        let cache = TokenCache::builder(credential(&idp.token_url(), Secret::new(secret.clone()))?)
            .store_arc(opened.as_dyn())
            .policy(policy())
            .build();
        let until = match args.requests {
            Some(n) => Until::Requests(n),
            None => Until::Time(started + Duration::from_secs_f64(args.seconds)),
        };
        let made = Arc::clone(&progress.made);
        Ok(load::run(&cache, requests(args.keys), args.callers, until, made).await)
    };
    progress.stop().await;
    let report = result?;
    let elapsed = started.elapsed();
    report::print(&report, idp.calls(), elapsed, args.processes);
    if report.errors > 0 || report.expired > 0 {
        if let Some(e) = &report.first_error {
            crate::log::note(format_args!("the first error was: {e}"));
        }
        return Err(CliError::new(
            Kind::DemoFailed,
            format!(
                "the demo's checks failed: {} errors, {} expired tokens handed out",
                report.errors, report.expired
            ),
        ));
    }
    Ok(())
}

/// Runs the callers in `--processes` worker processes sharing Redis.
async fn fleet(
    args: &DemoArgs,
    url: &str,
    prefix: &str,
    idp: &LocalIdp,
    secret: &str,
    key: &EncryptionKey,
    progress: &Progress,
) -> Result<Report, CliError> {
    let exe = std::env::current_exe()
        .map_err(|e| CliError::internal(format!("cannot find this program to re-run it: {e}")))?;
    let per_process = args.requests.map(|n| n.div_ceil(args.processes as u64));
    let mut children = Vec::new();
    for _ in 0..args.processes {
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.arg("__demo-worker")
            .args(["--token-url", &idp.token_url()])
            .args(["--redis", url])
            .args(["--prefix", prefix])
            .args(["--callers", &args.callers.to_string()])
            .args(["--seconds", &args.seconds.to_string()])
            .args(["--keys", &args.keys.to_string()]);
        if let Some(n) = per_process {
            cmd.args(["--requests", &n.to_string()]);
        }
        let key_text = key.to_base64();
        cmd.env(SECRET_ENV, secret)
            .env(KEY_ENV, key_text.as_str())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .map_err(|e| CliError::internal(format!("cannot start a worker process: {e}")))?;
        children.push(child);
    }
    let mut readers = Vec::new();
    for (i, mut child) in children.into_iter().enumerate() {
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| CliError::internal("a worker has no stdout"))?;
        let made = Arc::clone(&progress.made);
        readers.push(tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            let mut report = None;
            let mut last = 0u64;
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(n) = line
                    .strip_prefix("progress ")
                    .and_then(|n| n.parse::<u64>().ok())
                {
                    made.fetch_add(n.saturating_sub(last), Ordering::Relaxed);
                    last = n;
                } else if let Some(json) = line.strip_prefix("report ") {
                    report = serde_json::from_str::<Report>(json).ok();
                }
            }
            let status = child.wait().await;
            match (status, report) {
                (Ok(s), Some(r)) if s.success() => Ok(r),
                (Ok(s), _) => Err(CliError::internal(format!(
                    "worker process {i} failed ({s})"
                ))),
                (Err(e), _) => Err(CliError::internal(format!(
                    "worker process {i} failed: {e}"
                ))),
            }
        }));
    }
    let mut total = Report::empty();
    for reader in readers {
        let report = reader
            .await
            .map_err(|e| CliError::internal(format!("a worker reader failed: {e}")))??;
        total.merge(&report);
    }
    Ok(total)
}

/// Runs `__demo-worker`: one process of a multi-process demo. Prints
/// `progress <served>` lines and a final `report <json>` line on stdout.
pub(crate) async fn worker(args: WorkerArgs) -> Result<(), CliError> {
    let secret = std::env::var(SECRET_ENV).map_err(|_| {
        CliError::config(format!(
            "{SECRET_ENV} is not set (workers are started by demo)"
        ))
    })?;
    let key =
        EncryptionKey::from_env(KEY_ENV).map_err(|e| CliError::key(format!("{KEY_ENV}: {e}")))?;
    let store =
        token_profile::open_redis(&args.redis, Some(&args.prefix), Keyring::new(key)).await?;
    let cache = TokenCache::builder(credential(&args.token_url, Secret::new(secret))?)
        .store(store)
        .policy(policy())
        .build();
    let until = match args.requests {
        Some(n) => Until::Requests(n),
        None => Until::Time(Instant::now() + Duration::from_secs_f64(args.seconds)),
    };
    let made = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let ticker = {
        let made = Arc::clone(&made);
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(200)).await;
                println!("progress {}", made.load(Ordering::Relaxed));
            }
        })
    };
    let report = load::run(&cache, requests(args.keys), args.callers, until, made).await;
    done.store(true, Ordering::Relaxed);
    let _ = ticker.await;
    let json = serde_json::to_string(&report)
        .map_err(|e| CliError::internal(format!("cannot encode the report: {e}")))?;
    println!("report {json}");
    Ok(())
}

/// The progress bar on stderr (indicatif; drawn only when stderr is a
/// terminal, and not at all with `--no-progress`).
struct Progress {
    made: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    fn start(args: &DemoArgs, started: Instant, idp: &LocalIdp) -> Self {
        let made = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let show = !args.no_progress && std::io::stderr().is_terminal();
        let task = show.then(|| {
            let made = Arc::clone(&made);
            let done = Arc::clone(&done);
            let calls = idp.calls_handle();
            // The bar counts requests when a number was asked for, else
            // milliseconds of the run.
            let (length, by_requests) = match args.requests {
                Some(total) => (total, true),
                None => ((args.seconds * 1000.0) as u64, false),
            };
            let bar = ProgressBar::with_draw_target(Some(length), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template("[{bar:30}] {elapsed:>4} {msg}")
                .map(|s| s.progress_chars("#>-"))
                .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            tokio::spawn(async move {
                loop {
                    let n = made.load(Ordering::Relaxed);
                    let position = if by_requests {
                        n
                    } else {
                        started.elapsed().as_millis() as u64
                    };
                    bar.set_position(position.min(length));
                    bar.set_message(format!(
                        "{} requests  {} IdP calls",
                        report::Thousands(n),
                        report::Thousands(calls.load(Ordering::Relaxed)),
                    ));
                    if done.load(Ordering::Relaxed) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                bar.finish_and_clear();
            })
        });
        Self { made, done, task }
    }

    async fn stop(mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}
