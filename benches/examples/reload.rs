//! What a configuration reload costs `tokencache serve`'s sidecar, in one
//! run: the time `FileSidecar::reload` takes for a profiles file of 50
//! profiles and 100 routes (routes changed, profiles kept: the common edit;
//! and every profile changed, so each is rebuilt and fetched again), and the
//! gateway's request latency (p50, p99, max) with no reloads against the
//! same load while the file is reloaded every 100 ms.
//!
//! The token endpoint, the upstream and the sidecar run in this process on
//! loopback, on separate runtimes (as separate processes would); the
//! client sends one request at a time.
//!
//! `cargo run --release -p benches --example reload`

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use benches::listen;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Full};
use hyper::{Request, Response};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use token_serve::{FileOptions, FileSidecar};

const PROFILES: usize = 50;
const ROUTES: usize = 100;
const REQUESTS: usize = 20_000;
const RELOAD_EVERY: Duration = Duration::from_millis(100);
const SECRET_ENV: &str = "RELOAD_BENCH_SECRET";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// The profiles file: `PROFILES` profiles on one memory store, `ROUTES`
/// routes over them; `variant` changes the routes' prefixes (and, with
/// `scope`, every profile's scope, so each must be rebuilt).
fn file_text(idp: SocketAddr, upstream: SocketAddr, variant: usize, scope: &str) -> String {
    let mut text = String::new();
    for p in 0..PROFILES {
        let _ = write!(
            text,
            "[profiles.p{p}]\ntoken_url = \"http://{idp}/token\"\nclient_id = \"client-{p}\"\n\
             client_secret_env = \"{SECRET_ENV}\"\nscopes = [\"{scope}\"]\nstore = \"memory\"\n\n"
        );
    }
    text.push_str("[serve]\nlisten = \"127.0.0.1:0\"\n");
    for r in 0..ROUTES {
        // Route 0 (the measured one) never changes; the others move.
        let prefix = if r == 0 {
            "/r0/".to_owned()
        } else {
            format!("/v{variant}-r{r}/")
        };
        let _ = write!(
            text,
            "\n[[serve.routes]]\nprefix = \"{prefix}\"\nupstream = \"http://{upstream}\"\nprofile = \"p{}\"\n",
            r % PROFILES
        );
    }
    text
}

fn write(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn micros(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

fn millis(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

async fn latencies(
    client: &Client<HttpConnector, Empty<Bytes>>,
    uri: &hyper::Uri,
) -> Vec<Duration> {
    let mut out = Vec::with_capacity(REQUESTS);
    for _ in 0..REQUESTS {
        let started = Instant::now();
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
        out.push(started.elapsed());
    }
    out.sort();
    out
}

fn main() {
    std::env::set_var(SECRET_ENV, "reload-bench-secret");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.toml");

    let idp_rt = runtime();
    let idp_calls = Arc::new(AtomicU64::new(0));
    let calls = Arc::clone(&idp_calls);
    let (idp, upstream) = idp_rt.block_on(async move {
        let idp = listen(move |_req| {
            let n = calls.fetch_add(1, Ordering::Relaxed);
            async move {
                Response::new(Full::new(Bytes::from(format!(
                    r#"{{"access_token":"bench-{n}","token_type":"Bearer","expires_in":3600}}"#
                ))))
            }
        })
        .await;
        let upstream =
            listen(|_req| async { Response::new(Full::new(Bytes::from_static(b"ok"))) }).await;
        (idp, upstream)
    });

    write(&path, &file_text(idp, upstream, 0, "a"));
    let rt = runtime();
    let (sidecar, gateway) = rt.block_on(async {
        let (sidecar, _) = FileSidecar::load(&path, FileOptions::default())
            .await
            .expect("load");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(token_serve::serve(
            sidecar.sidecar().clone(),
            listener,
            std::future::pending(),
            Duration::from_secs(1),
        ));
        (sidecar, addr)
    });
    println!(
        "{PROFILES} profiles, {ROUTES} routes: {} IdP calls at load",
        idp_calls.load(Ordering::Relaxed)
    );

    // Reload time, routes changed and profiles kept.
    let mut kept = Vec::new();
    for i in 1..=21 {
        write(&path, &file_text(idp, upstream, i, "a"));
        let started = Instant::now();
        let report = rt.block_on(sidecar.reload()).expect("reload");
        kept.push(started.elapsed());
        assert_eq!(report.kept, PROFILES);
    }
    kept.sort();
    let before = idp_calls.load(Ordering::Relaxed);
    // Reload time, every profile changed (rebuilt and fetched).
    let mut rebuilt = Vec::new();
    for i in 1..=5 {
        write(&path, &file_text(idp, upstream, 100 + i, &format!("s{i}")));
        let started = Instant::now();
        let report = rt.block_on(sidecar.reload()).expect("reload");
        rebuilt.push(started.elapsed());
        assert_eq!(report.changed.len(), PROFILES);
    }
    rebuilt.sort();
    let rebuild_calls = idp_calls.load(Ordering::Relaxed) - before;

    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(http);
    let uri: hyper::Uri = format!("http://{gateway}/r0/x").parse().expect("uri");

    let quiet = client_rt.block_on(latencies(&client, &uri));
    let calls_before = idp_calls.load(Ordering::Relaxed);
    let reloads = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reloader = {
        let (sidecar, path, reloads, stop) = (
            sidecar.clone(),
            path.clone(),
            Arc::clone(&reloads),
            Arc::clone(&stop),
        );
        rt.spawn(async move {
            let mut i = 1000;
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(RELOAD_EVERY).await;
                i += 1;
                write(&path, &file_text(idp, upstream, i, "s5"));
                sidecar.reload().await.expect("reload");
                reloads.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let busy = client_rt.block_on(latencies(&client, &uri));
    stop.store(true, Ordering::Relaxed);
    rt.block_on(reloader).expect("reloader");
    let reload_calls = idp_calls.load(Ordering::Relaxed) - calls_before;

    println!();
    println!("| reload of {PROFILES} profiles, {ROUTES} routes | median ms | min ms | max ms |");
    println!("|---|---|---|---|");
    println!(
        "| routes changed, profiles kept ({} runs) | {} | {} | {} |",
        kept.len(),
        millis(kept[kept.len() / 2]),
        millis(kept[0]),
        millis(kept[kept.len() - 1])
    );
    println!(
        "| every profile changed: rebuilt and fetched ({} runs, {rebuild_calls} IdP calls) | {} | {} | {} |",
        rebuilt.len(),
        millis(rebuilt[rebuilt.len() / 2]),
        millis(rebuilt[0]),
        millis(rebuilt[rebuilt.len() - 1])
    );
    println!();
    println!("| gateway, {REQUESTS} requests one at a time | p50 us | p99 us | max us |");
    println!("|---|---|---|---|");
    println!(
        "| no reloads | {} | {} | {} |",
        micros(percentile(&quiet, 0.5)),
        micros(percentile(&quiet, 0.99)),
        micros(quiet[quiet.len() - 1])
    );
    println!(
        "| a reload every {} ms ({} reloads, {reload_calls} IdP calls) | {} | {} | {} |",
        RELOAD_EVERY.as_millis(),
        reloads.load(Ordering::Relaxed),
        micros(percentile(&busy, 0.5)),
        micros(percentile(&busy, 0.99)),
        micros(busy[busy.len() - 1])
    );
}
