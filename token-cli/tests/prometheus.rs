//! A real Prometheus scraping a running `tokencache serve` and evaluating
//! the project's alert rules (`deploy/prometheus/alerts.yml`) on what it
//! scraped: the exposition parses, the names and labels the rules use are
//! the ones serve exports, and a rule fires when its condition happens
//! (IdP errors, stale tokens served, a token expired and not replaced, a
//! refused reload).
//!
//! Prometheus is Debian's, unpacked into `target/prometheus` by `cargo
//! xtask test` (xtask/src/deploy.rs), run here on a free loopback port with
//! a temporary data directory. The rules' `for:` durations are set to 0 in
//! the copy it loads (waiting minutes proves nothing more); promtool's unit
//! tests (`tests/deploy.rs`) cover the durations.

mod sidecar;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sidecar::{fake_profile, free_addr, route, start_serve_with, upstream, FakeIdp};
use support::Sandbox;
use token_testkit::{free_port, skip_or_fail};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A Prometheus server, killed when dropped.
struct Prometheus {
    child: Child,
    base: String,
    log: PathBuf,
    _data: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts Prometheus scraping `target` (`host:port`) as job
    /// `tokencache` every second, with `rules` loaded.
    fn start(binary: &Path, target: &str, rules: &str) -> Self {
        let data = tempfile::tempdir().expect("tempdir");
        let rules_file = data.path().join("alerts.yml");
        std::fs::write(&rules_file, rules).expect("write rules");
        let config = data.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: tokencache\n    static_configs:\n      - targets: [\"{target}\"]\n",
                rules_file.display()
            ),
        )
        .expect("write config");
        let listen = format!("127.0.0.1:{}", free_port());
        let log = data.path().join("prometheus.log");
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                data.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={listen}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start prometheus");
        Self {
            child,
            base: format!("http://{listen}"),
            log,
            _data: data,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET /api/v1/<path>`'s `data`, or `None` while it does not answer.
    async fn api(&self, client: &reqwest::Client, path: &str) -> Option<Value> {
        let r = client
            .get(format!("{}/api/v1/{path}", self.base))
            .send()
            .await
            .ok()?;
        let v: Value = serde_json::from_str(&r.text().await.ok()?).ok()?;
        (v["status"] == "success").then(|| v["data"].clone())
    }

    /// The instant vector of `query`.
    async fn query(&self, client: &reqwest::Client, query: &str) -> Vec<Value> {
        let q: String = form_urlencoded::byte_serialize(query.as_bytes()).collect();
        self.api(client, &format!("query?query={q}"))
            .await
            .and_then(|d| d["result"].as_array().cloned())
            .unwrap_or_default()
    }

    /// The alerts in state `firing` named `name`.
    async fn firing(&self, client: &reqwest::Client, name: &str) -> Vec<Value> {
        self.api(client, "alerts")
            .await
            .and_then(|d| d["alerts"].as_array().cloned())
            .unwrap_or_default()
            .into_iter()
            .filter(|a| a["labels"]["alertname"] == name && a["state"] == "firing")
            .collect()
    }

    /// Polls `check` (bounded: 60 s) until it returns `Some`; panics naming
    /// `what`, with Prometheus' log.
    async fn eventually<T, F, Fut>(&self, what: &str, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(v) = check().await {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{what} did not happen within 60 s; Prometheus said:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// The project's rules with every `for:` set to 0.
fn rules_without_durations() -> String {
    let rules =
        std::fs::read_to_string(root().join("deploy/prometheus/alerts.yml")).expect("alerts.yml");
    let mut changed = 0;
    let out: String = rules
        .lines()
        .map(|l| {
            let body = l.trim_start();
            if body.starts_with("for: ") {
                changed += 1;
                format!("{}for: 0s\n", &l[..l.len() - body.len()])
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    assert!(changed > 5, "no `for:` found in alerts.yml");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_serve_and_the_alert_rules_fire_on_its_metrics() {
    let prometheus_bin = root().join("target/prometheus/usr/bin/prometheus");
    if !prometheus_bin.is_file() {
        skip_or_fail::<()>(format!(
            "{} is missing: run `cargo xtask test` once (xtask/src/deploy.rs unpacks Debian's prometheus package there)",
            prometheus_bin.display()
        ));
        return;
    }
    // Tokens live 2 s, so the IdP is called again and again.
    let idp = FakeIdp::start(2).await;
    let upstream = upstream().await;
    let sandbox = Sandbox::new();
    let listen = free_addr();
    let admin = free_addr();
    let profiles = fake_profile("orders", &idp, "memory");
    let routes = route("/orders", &upstream, "orders");
    let gateway_only = format!("{profiles}\n[serve]\nlisten = \"{listen}\"\n{routes}");
    let with_admin =
        format!("{profiles}\n[serve]\nlisten = \"{listen}\"\nadmin_listen = \"{admin}\"\n{routes}");
    // Scrape the admin listener where this build has one (`[serve]
    // admin_listen`), else the gateway's own /metrics.
    let config = sandbox.path().join("serve.toml");
    std::fs::write(&config, &with_admin).expect("write");
    let has_admin = sandbox
        .cmd()
        .args(["serve", "--check-config", "--config"])
        .arg(&config)
        .output()
        .expect("check-config")
        .status
        .success();
    let (text, target) = if has_admin {
        (with_admin, admin.clone())
    } else {
        (gateway_only, listen.clone())
    };
    std::fs::write(&config, &text).expect("write");
    let serve = start_serve_with(&sandbox, &config, &[], Stdio::null());

    let prometheus = Prometheus::start(&prometheus_bin, &target, &rules_without_durations());
    let client = reqwest::Client::new();

    // Scraped: up, and serve's own series with their labels.
    prometheus
        .eventually("the scrape (up == 1)", || async {
            let up = prometheus.query(&client, "up{job=\"tokencache\"}").await;
            (up.len() == 1 && up[0]["value"][1] == "1").then_some(())
        })
        .await;
    let ok_calls = prometheus
        .eventually("tokencache_idp_calls_total{profile=\"orders\"}", || async {
            let v = prometheus
                .query(
                    &client,
                    "tokencache_idp_calls_total{job=\"tokencache\", profile=\"orders\", outcome=\"ok\"}",
                )
                .await;
            v.first().cloned()
        })
        .await;
    assert!(
        ok_calls["value"][1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(|v| v >= 1.0),
        "{ok_calls}"
    );
    // Every rule loaded and evaluates without error.
    let groups = prometheus
        .eventually("the rules loaded and evaluated", || async {
            let data = prometheus.api(&client, "rules").await?;
            let groups = data["groups"].as_array()?.clone();
            let evaluated = groups.iter().all(|g| {
                g["rules"].as_array().is_some_and(|r| {
                    r.iter()
                        .all(|r| r["lastEvaluation"] != "0001-01-01T00:00:00Z")
                })
            });
            (!groups.is_empty() && evaluated).then_some(groups)
        })
        .await;
    let rules: Vec<&Value> = groups
        .iter()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .collect();
    assert!(rules.len() >= 10, "{groups:?}");
    for rule in &rules {
        assert_eq!(rule["health"], "ok", "{rule}");
    }
    assert!(prometheus
        .firing(&client, "TokencacheIdpErrorRatioHigh")
        .await
        .is_empty());
    assert!(prometheus
        .firing(&client, "TokencacheConfigReloadFailed")
        .await
        .is_empty());

    // The IdP fails: token requests make serve call it and fail, and the
    // IdP error ratio alert fires for the profile.
    idp.down.store(true, std::sync::atomic::Ordering::SeqCst);
    let firing = prometheus
        .eventually("TokencacheIdpErrorRatioHigh firing", || async {
            // Each call past the token's expiry makes serve try the IdP.
            let _ = client
                .get(format!("{}/v1/token?profile=orders", serve.base))
                .header("metadata", "true")
                .send()
                .await;
            let firing = prometheus
                .firing(&client, "TokencacheIdpErrorRatioHigh")
                .await;
            (!firing.is_empty()).then_some(firing)
        })
        .await;
    assert_eq!(firing.len(), 1, "{firing:?}");
    assert_eq!(firing[0]["labels"]["profile"], "orders", "{firing:?}");
    assert_eq!(firing[0]["labels"]["job"], "tokencache", "{firing:?}");
    assert_eq!(firing[0]["labels"]["severity"], "warning", "{firing:?}");

    // Past its refresh time the token was still handed out (stale-if-error).
    let firing = prometheus
        .eventually("TokencacheServingStaleTokens firing", || async {
            let firing = prometheus
                .firing(&client, "TokencacheServingStaleTokens")
                .await;
            (!firing.is_empty()).then_some(firing)
        })
        .await;
    assert_eq!(firing[0]["labels"]["profile"], "orders", "{firing:?}");

    // The 2-second token runs out and none replaces it.
    let firing = prometheus
        .eventually("TokencacheTokenExpired firing", || async {
            let firing = prometheus.firing(&client, "TokencacheTokenExpired").await;
            (!firing.is_empty()).then_some(firing)
        })
        .await;
    assert_eq!(firing[0]["labels"]["profile"], "orders", "{firing:?}");
    assert_eq!(firing[0]["labels"]["severity"], "critical", "{firing:?}");

    // A refused reload fires the reload alert (the error counter is born at
    // 1 with the first refusal).
    std::fs::write(&config, format!("{text}\n[serve.broken\n")).expect("write");
    let hup = Command::new("kill")
        .args(["-HUP", &serve.child.id().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(hup.success());
    let firing = prometheus
        .eventually("TokencacheConfigReloadFailed firing", || async {
            let firing = prometheus
                .firing(&client, "TokencacheConfigReloadFailed")
                .await;
            (!firing.is_empty()).then_some(firing)
        })
        .await;
    assert_eq!(firing[0]["labels"]["result"], "error", "{firing:?}");
    // serve itself was never down.
    assert!(prometheus
        .firing(&client, "TokencacheDown")
        .await
        .is_empty());
}
